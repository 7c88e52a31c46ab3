//! Arrays of models trained side by side (`--seeds`, `--sweep`; `network::Members`): each
//! member is exactly the model a run of its own with its seed and the shared data seed trains,
//! bit for bit on the CPU (the fused ops compute each member's part with the arithmetic of the
//! model alone: the same GEMM shapes per group, the same per-channel sums, the same dropout
//! draws from the member's own key and index), within the GPU parity tolerances on the GPU;
//! members stop on their own (early stopping, a NaN loss) while the rest train on; the
//! outputs (member files, manifest, logs) and the command line.

use std::path::{Path, PathBuf};

use crate::common::*;
use gpu_train::cpu::CpuBackend;
use gpu_train::data::{self, Dataset};
use gpu_train::model::spec::{EarlyStopping, ModelSpec, Monitor, Optimizer};
use gpu_train::model::{Arch, LayerSpec, presets};
use gpu_train::modelfile::{self, Status};
use gpu_train::network::Member;
use gpu_train::train::{self, TrainConfig, TrainSummary};

fn mnist(n_train: usize, n_test: usize) -> (Dataset, Dataset) {
    let (tr, te) = data::load_dir(&mnist_dir()).unwrap();
    (tr.take(n_train), te.take(n_test))
}

/// A member with the swept values its file name carries.
type Tagged = (Member, Vec<(String, String)>);

/// An array's training configuration: members with their swept values' tags.
fn array_cfg(members: Vec<Tagged>, data_seed: u64, out: PathBuf) -> TrainConfig {
    let (members, tags): (Vec<Member>, Vec<_>) = members.into_iter().unzip();
    let first = Arch::new(members[0].spec.clone()).unwrap();
    TrainConfig { members, tags, array: true, data_seed, checkpoints: false, ..TrainConfig::single(first, 0, out) }
}

fn with_dropout(mut spec: ModelSpec, p: f32) -> ModelSpec {
    gpu_train::model::spec::for_each_mut(&mut spec.layers, &mut |l| {
        if let LayerSpec::Dropout { p: q } = l {
            *q = p;
        }
    });
    spec
}

fn with_lr(mut spec: ModelSpec, lr: f32) -> ModelSpec {
    spec.train.optimizer.set_lr(lr);
    spec
}

/// A small batch-norm model (conv, batch norm, relu, pool; dense, batch norm) with weight
/// averaging.
fn bn_spec() -> ModelSpec {
    let text = "name = 'bn'\nlayers = [{ type = 'conv2d', filters = 6, kernel = 5, padding = 'valid', bias = false }, \
                { type = 'batch_norm' }, { type = 'relu' }, { type = 'max_pool2d' }, { type = 'flatten' }, \
                { type = 'dense', units = 10, bias = false }, { type = 'batch_norm' }]\n\
                [train]\nbatch = 32\nema = 0.9\noptimizer = { type = 'adam', lr = 0.002 }\n\
                augment = { chance = 1.0, zoom = [0.9, 1.1], rotate = 10.0, shift = 0.1 }\n";
    presets::parse(text, "bn").unwrap()
}

/// Trains `members` as an array and each member as a run of its own (same seed and data
/// seed) on `backend`; returns each member's ((params, state), losses) from both.
type Trained = ((Vec<f32>, Vec<f32>), Vec<f64>);

fn array_and_alone<B: gpu_train::backend::Backend>(
    b: &mut B,
    members: Vec<Tagged>,
    data_seed: u64,
    data: &(Dataset, Dataset),
    dir: &Path,
) -> Vec<(Trained, Trained)> {
    let out = dir.join("arr.safetensors");
    let s = train::train(b, array_cfg(members.clone(), data_seed, out), data.0.clone(), &data.1).unwrap();
    let mut pairs = Vec::new();
    for (k, (m, _)) in members.into_iter().enumerate() {
        let array_file = modelfile::load(&s.members[k].file, None).unwrap();
        let array_losses: Vec<f64> = s.members[k].history.iter().map(|h| h.train_loss).collect();
        let lone_out = dir.join(format!("alone-{k}.safetensors"));
        let arch = Arch::new(m.spec.clone()).unwrap();
        let cfg = TrainConfig { data_seed, checkpoints: false, ..TrainConfig::single(arch, m.seed, lone_out.clone()) };
        let lone: TrainSummary = train::train(b, cfg, data.0.clone(), &data.1).unwrap();
        let lone_file = modelfile::load(&lone_out, None).unwrap();
        let lone_losses: Vec<f64> = lone.history.iter().map(|h| h.train_loss).collect();
        pairs.push((
            ((array_file.params, array_file.state), array_losses),
            ((lone_file.params, lone_file.state), lone_losses),
        ));
    }
    pairs
}

/// On the CPU, bit for bit: a dense model with dropout and augmentation (two seeds), a conv,
/// pool and dropout model with a sweep of dropout rates and learning rates (four members),
/// a batch-norm model with weight averaging and a sweep of its decay, and a residual model
/// (SGD, Nesterov, flips and shifts) with a sweep of label smoothing, weight decay and
/// dropout.
#[test]
fn members_train_bit_for_bit_as_runs_of_their_own_on_the_cpu() {
    let data = mnist(300, 100);
    let tmp = tempfile::tempdir().unwrap();
    let tag = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    let mut fc = presets::load("fc-b").unwrap();
    fc.train.epochs = 2;
    fc.train.augment.as_mut().unwrap().chance = 1.0;
    let mut cnn = presets::load("cnn2").unwrap();
    (cnn.train.epochs, cnn.train.batch) = (2, 16);
    let mut bn = bn_spec();
    bn.train.epochs = 2;
    let res = presets::load(repo().join("tests/fixtures/residual_small.toml").to_str().unwrap()).unwrap();
    let res_member = |seed: u64, smoothing: f32, wd: f32, p: f32| {
        let mut spec = with_dropout(res.clone(), p);
        spec.train.epochs = 2;
        spec.train.label_smoothing = smoothing;
        if let Optimizer::Sgd { weight_decay, .. } = &mut spec.train.optimizer {
            *weight_decay = wd;
        }
        let tags = [tag("label_smoothing", &smoothing.to_string()), tag("weight_decay", &wd.to_string())].concat();
        (Member { seed, spec }, [tags, tag("dropout", &p.to_string())].concat())
    };
    let cases: Vec<(&str, Vec<Tagged>, u64)> = vec![
        ("fc-b", vec![(Member { seed: 3, spec: fc.clone() }, vec![]), (Member { seed: 4, spec: fc }, vec![])], 7),
        (
            "cnn2",
            [(0.1f32, 1e-3f32), (0.4, 1e-3), (0.1, 3e-3), (0.4, 3e-3)]
                .iter()
                .enumerate()
                .map(|(i, &(p, lr))| {
                    let spec = with_lr(with_dropout(cnn.clone(), p), lr);
                    (
                        Member { seed: 1 + i as u64 % 2, spec },
                        [tag("dropout", &p.to_string()), tag("lr", &lr.to_string())].concat(),
                    )
                })
                .collect(),
            5,
        ),
        (
            "bn",
            [0.9f32, 0.99]
                .iter()
                .map(|&d| {
                    let mut spec = bn.clone();
                    spec.train.ema = Some(d);
                    (Member { seed: 2, spec }, tag("ema", &d.to_string()))
                })
                .collect(),
            2,
        ),
        (
            "residual",
            vec![res_member(1, 0.1, 5e-4, 0.2), res_member(2, 0.0, 0.0, 0.2), res_member(1, 0.2, 1e-3, 0.4)],
            3,
        ),
    ];
    for (name, members, data_seed) in cases {
        let dir = tmp.path().join(name);
        for (k, (array, alone)) in
            array_and_alone(&mut CpuBackend::new(), members, data_seed, &data, &dir).into_iter().enumerate()
        {
            assert!(array.1 == alone.1, "{name} member {k}: losses {:?} alone {:?}", array.1, alone.1);
            assert!(array.0.0 == alone.0.0, "{name} member {k}: parameters differ from the run of its own");
            assert!(array.0.1 == alone.0.1, "{name} member {k}: batch-norm statistics differ from the run of its own");
        }
    }
}

/// On the GPU (lavapipe in CI: small), within the parity tolerances of tests/gpu_parity.rs
/// (one epoch of a conv + pool + dropout model, two members with their own learning rates).
#[test]
fn members_train_as_runs_of_their_own_on_the_gpu() {
    let mut g = match gpu_train::gpu::GpuBackend::new(None) {
        Ok(g) => g,
        Err(e) if ci() => panic!("CI=true but no GPU adapter: {e}"),
        Err(e) => return eprintln!("skipping GPU test: {e}"),
    };
    let data = mnist(64, 32);
    let mut cnn = presets::load("cnn2").unwrap();
    (cnn.train.epochs, cnn.train.batch) = (1, 16);
    let members = [1e-3f32, 3e-3]
        .iter()
        .enumerate()
        .map(|(i, &lr)| {
            (Member { seed: 7 + i as u64, spec: with_lr(cnn.clone(), lr) }, vec![("lr".into(), lr.to_string())])
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    for (k, (array, alone)) in array_and_alone(&mut g, members, 3, &data, tmp.path()).into_iter().enumerate() {
        assert_close(&format!("member {k} parameters"), &array.0.0, &alone.0.0, 2e-4, 1e-3);
        let (a, b): (Vec<f32>, Vec<f32>) =
            (array.1.iter().map(|&v| v as f32).collect(), alone.1.iter().map(|&v| v as f32).collect());
        assert_close(&format!("member {k} losses"), &a, &b, 1e-5, 1e-4);
    }
}

/// Early stopping and divergence end one member at a time: a member whose rate is far too
/// large diverges (NaN) and keeps its last finite weights, one whose rate is tiny stops
/// early, one trains every epoch; each that ends as a run of its own would is that run bit
/// for bit, and the manifest says how each ended.
#[test]
fn members_stop_on_their_own() {
    let data = mnist(200, 100);
    let mut spec = presets::load("fc-b").unwrap();
    spec.train.epochs = 4;
    spec.train.augment = None;
    spec.train.early_stopping =
        Some(EarlyStopping { patience: 1, min_delta: 0.02, restore_best: true, monitor: Monitor::TrainLoss });
    let lrs = ["1e-3", "1e-12", "1e38"];
    let members: Vec<_> = lrs
        .iter()
        .map(|lr| {
            (Member { seed: 1, spec: with_lr(spec.clone(), lr.parse().unwrap()) }, vec![("lr".into(), lr.to_string())])
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("arr.safetensors");
    let s = train::train(&mut CpuBackend::new(), array_cfg(members, 1, out.clone()), data.0.clone(), &data.1).unwrap();
    let status: Vec<Status> = s.members.iter().map(|m| m.status).collect();
    assert_eq!(status, vec![Status::Finished, Status::StoppedEarly, Status::Diverged], "{status:?}");
    // The diverged member keeps finite weights (its last finite epoch's) and is left out of
    // the ensemble; the manifest lists every member with how it ended.
    let diverged = modelfile::load(&s.members[2].file, None).unwrap();
    assert!(diverged.params.iter().all(|v| v.is_finite()));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("arr.members.json")).unwrap()).unwrap();
    let listed: Vec<&str> =
        manifest["members"].as_array().unwrap().iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(listed, vec!["finished", "stopped_early", "diverged"]);
    assert_eq!(manifest["ensemble_members"], 2);
    assert_eq!(manifest["members"][1]["lr"], 1e-12);
    let e = manifest["ensemble_test_accuracy"].as_f64().unwrap();
    assert!((e - s.ensemble_test.accuracy()).abs() < 1e-12);
    // The members that ended well are their runs of their own, bit for bit.
    for k in [0, 1] {
        let alone = tmp.path().join(format!("alone-{k}.safetensors"));
        let arch = Arch::new(with_lr(spec.clone(), lrs[k].parse().unwrap())).unwrap();
        let cfg = TrainConfig { checkpoints: false, ..TrainConfig::single(arch, 1, alone.clone()) };
        let lone = train::train(&mut CpuBackend::new(), cfg, data.0.clone(), &data.1).unwrap();
        assert_eq!(lone.stopped_early, k == 1);
        let (a, b) = (modelfile::load(&s.members[k].file, None).unwrap(), modelfile::load(&alone, None).unwrap());
        assert!(a.params == b.params, "member {k} differs from its run of its own");
    }
    // Every member diverging ends the run with the one-line error a single run gives.
    let bad = (0..2).map(|i| (Member { seed: i, spec: with_lr(spec.clone(), 1e38) }, vec![])).collect();
    let e =
        train::train(&mut CpuBackend::new(), array_cfg(bad, 1, tmp.path().join("bad.safetensors")), data.0, &data.1)
            .err()
            .unwrap();
    assert!(e.to_string().contains("diverged"), "{e}");
}

/// Member files are ordinary model files (evaluated and exported as any), the logs hold every
/// member's epochs and the ensemble's, and `--resume` continues the whole array exactly.
#[test]
fn array_outputs_and_resume_through_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let common =
        ["--arch", "fc-b", "--backend", "cpu", "--limit", "300", "--seeds", "1..2", "--sweep", "lr=0.001,0.003"];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = common.iter().chain(extra).copied().collect();
        let (code, out, err) = gpu_train_cmd(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    let straight = d.join("straight.safetensors");
    let text = run(&["--epochs", "2", "--out", p(&straight)]);
    assert!(text.contains("ensemble of 4"), "{text}");
    assert!(text.contains("s2-lr0.003"), "{text}");
    let parted = d.join("parted.safetensors");
    run(&["--epochs", "1", "--out", p(&parted)]);
    run(&["--epochs", "2", "--resume", "--out", p(&parted)]);
    for name in ["s1-lr0.001", "s2-lr0.001", "s1-lr0.003", "s2-lr0.003"] {
        let a = modelfile::load(&d.join(format!("straight-{name}.safetensors")), None).unwrap();
        let b = modelfile::load(&d.join(format!("parted-{name}.safetensors")), None).unwrap();
        assert!(a.params == b.params, "{name}: a resumed array differs from one trained straight through");
        // The member's own log has both epochs, its file its own learning rate.
        let log = std::fs::read_to_string(d.join(format!("straight-{name}.metrics.jsonl"))).unwrap();
        assert_eq!(log.lines().count(), 2, "{log}");
        let lr = a.arch.recipe().optimizer.lr();
        assert_eq!(lr, if name.ends_with("0.001") { 0.001 } else { 0.003 });
        assert!(matches!(a.arch.recipe().optimizer, Optimizer::Adam { .. }));
    }
    let array_log = std::fs::read_to_string(d.join("straight.metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(array_log.lines().last().unwrap()).unwrap();
    assert_eq!(last["members"].as_array().unwrap().len(), 4);
    assert!(last["ensemble_test_acc"].as_f64().unwrap() > 0.5);
    // A member file is a model like any other: eval reports what the manifest recorded.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("straight.members.json")).unwrap()).unwrap();
    let first = &manifest["members"][0];
    let file = d.join(first["file"].as_str().unwrap());
    let (code, out, err) = gpu_train_cmd(&["eval", "--backend", "cpu", "--brief", "--model", p(&file)]);
    assert_eq!(code, 0, "{out}{err}");
    let acc = 100.0 * first["test_accuracy"].as_f64().unwrap();
    assert!(out.contains(&format!("{acc:.2}%")), "eval says {out}, the manifest {acc:.2}%");
    let onnx = d.join("member.onnx");
    let (code, out, err) = gpu_train_cmd(&["export", "--model", p(&file), "--onnx", p(&onnx)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1000);
}

#[test]
fn bad_seeds_and_sweeps_give_one_line_errors() {
    let base = ["--arch", "fc-b", "--backend", "cpu", "--epochs", "1", "--limit", "100"];
    let check = |extra: &[&str], want: &str| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let line = one_line_error(&args);
        assert!(line.to_lowercase().contains(want), "{args:?}: expected '{want}' in: {line}");
    };
    check(&["--sweep", "beta=0.1,0.2"], "unknown key 'beta'");
    check(&["--sweep", "lr=0.1,,0.2"], "empty value");
    check(&["--sweep", "lr=0.1,0.1"], "given twice");
    check(&["--sweep", "lr"], "key=v1,v2");
    check(&["--sweep", "lr=fast"], "not a number");
    check(&["--sweep", "lr=0.1", "--sweep", "lr=0.2"], "given twice");
    check(&["--sweep", "lr=-1"], "learning rate");
    check(&["--sweep", "momentum=0.9"], "adam");
    check(&["--sweep", "dropout=1.5"], "[0, 1)");
    check(&["--sweep", "label_smoothing=0.1,1"], "label_smoothing");
    check(&["--sweep", "wd=-0.1"], "weight_decay");
    check(&["--seeds", "1,2,1"], "seed 1 is given twice");
    check(&["--seeds", "8..1"], "ends before it starts");
    check(&["--seeds", "1..x"], "not a seed");
    check(&["--seeds", "1..100000000"], "more than");
    let line = one_line_error(&["--arch", "mlp", "--backend", "cpu", "--seeds", "1..2", "--sweep", "dropout=0.1,0.2"]);
    assert!(line.contains("no dropout layer"), "{line}");
    // Label smoothing is the cross-entropy's (b1 trains with mse); Nesterov needs momentum.
    let line = one_line_error(&["--arch", "b1", "--backend", "cpu", "--sweep", "smoothing=0,0.1"]);
    assert!(line.contains("mse"), "{line}");
    let line = one_line_error(&["--arch", "resnet20-gray", "--backend", "cpu", "--sweep", "momentum=0,0.9"]);
    assert!(line.contains("nesterov"), "{line}");
    // Too many members for this machine: refused before allocating, naming how many fit.
    let line = one_line_error(&[&base[..], &["--seeds", "1..60000"][..]].concat());
    assert!(line.contains("too large") && line.contains("at most"), "{line}");
}
