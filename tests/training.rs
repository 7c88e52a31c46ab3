//! The scheduler and whole models on the CPU backend: whole-model gradients against finite
//! differences, bit-for-bit repeatability, exact resume, early stopping, odd batch sizes and
//! model files.

use std::path::Path;

use crate::common::*;
use gpu_train::backend::Backend;
use gpu_train::cpu::CpuBackend;
use gpu_train::data::{self, Dataset};
use gpu_train::model::spec::ModelSpec;
use gpu_train::model::{Arch, presets};
use gpu_train::modelfile;
use gpu_train::network::{DeviceData, Network};
use gpu_train::train::{self, TrainConfig, TrainSummary};

fn mnist(n_train: usize, n_test: usize) -> (Dataset, Dataset) {
    let (tr, te) = data::load_dir(&mnist_dir()).unwrap();
    (tr.take(n_train), te.take(n_test))
}

fn spec(name: &str) -> ModelSpec {
    presets::load(name).unwrap()
}

fn run(spec: ModelSpec, seed: u64, out: &Path, resume: Option<&Path>, data: &(Dataset, Dataset)) -> TrainSummary {
    let resume = resume.map(|p| modelfile::load(p, None).unwrap());
    let cfg = TrainConfig { resume, ..TrainConfig::single(Arch::new(spec).unwrap(), seed, out.to_path_buf()) };
    train::train(&mut CpuBackend::new(), cfg, data.0.clone(), &data.1).unwrap()
}

fn params_of(path: &Path) -> Vec<f32> {
    modelfile::load(path, None).unwrap().params
}

/// Mean loss of f64 logits, as the model's loss function defines it.
fn host_loss(logits: &[f64], labels: &[u32], classes: usize, mse: bool) -> f64 {
    let mut total = 0.0;
    for (z, &y) in logits.chunks(classes).zip(labels) {
        if mse {
            total += z.iter().enumerate().map(|(j, &v)| (v - (j == y as usize) as u8 as f64).powi(2)).sum::<f64>()
                / classes as f64;
        } else {
            let max = z.iter().cloned().fold(f64::MIN, f64::max);
            total += max + z.iter().map(|&v| (v - max).exp()).sum::<f64>().ln() - z[y as usize];
        }
    }
    total / labels.len() as f64
}

/// Whole-model gradients of every preset against central finite differences, in f64: the
/// same ops and plan as training, on `Cpu<f64>`. For each parameter tensor, a random
/// direction d within it: (L(p + eps d) - L(p - eps d)) / 2 eps must equal g . d. This checks
/// the wiring (which buffers each op reads and writes, fused activations, flatten, dropout
/// masks, max-pool positions, batch norm, the loss), tensor by tensor.
///
/// In f64 with eps = 1e-7 the rounding error of the quotient is ~1e-8 and the truncation
/// error ~eps^2; relu and max-pool kinks are crossed only if an input lies within ~1e-6 of
/// one, which noise images (no exact-zero background) make unlikely (at eps = 1e-6 one
/// cnn4 tensor did cross one). Hence rtol 1e-5.
#[test]
fn whole_model_gradients_match_finite_differences() {
    type Cpu64 = gpu_train::cpu::Cpu<f64>;
    let bn = "name = 'bn'\nlayers = [\n{ type = 'conv2d', filters = 3, kernel = 3, padding = 1, bias = false },\n{ type = 'batch_norm' },\n\
              { type = 'relu' },\n{ type = 'max_pool2d' },\n{ type = 'flatten' },\n{ type = 'dense', units = 12, bias = false },\n\
              { type = 'batch_norm' },\n{ type = 'tanh' },\n{ type = 'dense', units = 10 }]\n";
    let mut specs: Vec<ModelSpec> =
        ["mlp", "cnn-a", "fc-b", "cnn2", "cnn3", "cnn4", "cnn6", "b2", "a-cnn6"].iter().map(|n| spec(n)).collect();
    specs.push(presets::parse(bn, "bn").unwrap());
    // Residual blocks of every wiring, with gelu, silu, leaky relu and average pooling.
    let mut res = presets::load(repo().join("tests/fixtures/residual_small.toml").to_str().unwrap()).unwrap();
    res.train.label_smoothing = 0.0;
    specs.push(res);
    let data = Dataset {
        images: uniform(77, 3 * 784, 1.0, 256.0).iter().map(|&v| v as u8).collect(),
        labels: vec![3, 1, 4],
        channels: 1,
        height: 28,
        width: 28,
        classes: gpu_train::data::numbered_classes(10),
    };
    for spec in specs {
        let name = spec.name.clone();
        let mse = spec.train.loss == gpu_train::model::spec::Loss::Mse;
        let arch = Arch::new(spec).unwrap();
        let classes = arch.classes();
        let (params, state) = arch.init(arch.recipe().init, 3);
        let params: Vec<f64> = params.iter().map(|&v| v as f64).collect();
        let b = &mut Cpu64::new();
        let dev = DeviceData::upload(b, &data).unwrap();
        let mut net = Network::new(b, arch.clone(), 3, &[], &state).unwrap();
        let mut stats = b.alloc(2).unwrap();
        let order = dev.order.clone();
        let mut loss_at = |b: &mut Cpu64, net: &mut Network<Cpu64>, p: &[f64]| {
            net.params.copy_from_slice(p);
            net.load_batch(b, &dev, &order, 0, 3, None);
            net.forward_backward(b, &mut stats, 3, 0, 7);
            host_loss(&net.logits()[..3 * classes], &data.labels, classes, mse)
        };
        loss_at(b, &mut net, &params);
        let g = net.grads.clone();
        let eps = 1e-7;
        for t in &arch.params {
            let mut d = vec![0f64; params.len()];
            for (d, u) in d[t.range()].iter_mut().zip(uniform(t.offset as u64, t.len(), -1.0, 1.0)) {
                *d = u as f64;
            }
            let shifted = |s: f64| params.iter().zip(&d).map(|(p, d)| p + s * eps * d).collect::<Vec<f64>>();
            let numeric = (loss_at(b, &mut net, &shifted(1.0)) - loss_at(b, &mut net, &shifted(-1.0))) / (2.0 * eps);
            let analytic: f64 = g.iter().zip(&d).map(|(g, d)| g * d).sum();
            assert!(analytic.abs() > 1e-4, "{name} {}: gradient suspiciously small ({analytic})", t.name);
            assert!(
                (numeric - analytic).abs() <= 1e-9 + 1e-5 * analytic.abs(),
                "{name} {}: numeric {numeric} vs analytic {analytic}",
                t.name
            );
        }
    }
}

#[test]
fn same_seed_same_result_bit_for_bit() {
    let data = mnist(300, 100);
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec("cnn2");
    s.train.epochs = 2;
    s.train.augment.as_mut().unwrap().chance = 0.5;
    let a = run(s.clone(), 5, &tmp.path().join("a.safetensors"), None, &data);
    let b = run(s.clone(), 5, &tmp.path().join("b.safetensors"), None, &data);
    let c = run(s, 6, &tmp.path().join("c.safetensors"), None, &data);
    let (pa, pb, pc) = (
        params_of(&tmp.path().join("a.safetensors")),
        params_of(&tmp.path().join("b.safetensors")),
        params_of(&tmp.path().join("c.safetensors")),
    );
    assert!(pa == pb, "two runs with seed 5 differ");
    assert!(pa != pc, "seeds 5 and 6 gave the same weights");
    assert_eq!(a.history[1].train_loss.to_bits(), b.history[1].train_loss.to_bits());
    assert_ne!(a.history[1].train_loss, c.history[1].train_loss);
}

#[test]
fn resume_continues_exactly() {
    let data = mnist(200, 50);
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec("fc-b");
    s.train.epochs = 3;
    let full = tmp.path().join("full.safetensors");
    run(s.clone(), 9, &full, None, &data);
    // Stop after one epoch, then resume to three.
    let part = tmp.path().join("part.safetensors");
    let mut s1 = s.clone();
    s1.train.epochs = 1;
    run(s1, 9, &part, None, &data);
    let ck = modelfile::checkpoint_path(&part);
    let loaded = modelfile::load(&ck, None).unwrap();
    assert_eq!(loaded.train.as_ref().unwrap().progress.epoch, 1);
    let mut s3 = loaded.arch.spec.clone();
    s3.train.epochs = 3;
    let r = run(s3, 0, &part, Some(&ck), &data);
    assert_eq!(r.epochs_run, 3);
    assert!(params_of(&full) == params_of(&part), "resumed run differs from the uninterrupted one");
    let log = std::fs::read_to_string(modelfile::metrics_path(&part)).unwrap();
    assert_eq!(log.lines().count(), 3, "one metrics line per epoch across the resume");
}

/// Weight averaging (`ema`): it leaves training alone, the saved model is the average of
/// the live weights and statistics after each step (here recomputed on the host from runs
/// without it, one step per epoch), and a resumed run continues it exactly.
#[test]
fn weight_average_is_saved_leaves_training_alone_and_resumes() {
    let data = mnist(64, 30);
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec("cnn5");
    s.train.batch = 64; // one step per epoch
    let decay = 0.7f32;
    let live: Vec<_> = (1..=3)
        .map(|e| {
            let mut s = s.clone();
            s.train.epochs = e;
            let out = tmp.path().join(format!("live{e}.safetensors"));
            run(s, 8, &out, None, &data);
            let m = modelfile::load(&out, None).unwrap();
            (m.params, m.state)
        })
        .collect();
    let mut se = s.clone();
    se.train.epochs = 3;
    se.train.ema = Some(decay);
    let full = tmp.path().join("ema.safetensors");
    run(se.clone(), 8, &full, None, &data);
    // Training itself is untouched: the checkpoint's live weights are the plain run's.
    let ck = modelfile::load(&modelfile::checkpoint_path(&full), None).unwrap();
    assert!(ck.params == live[2].0 && ck.state == live[2].1, "the average changed the training");
    // The model saved is the average: a0 = initial, a_t = d a_(t-1) + (1 - d) w_t.
    let (p0, s0) = Arch::new(se.clone()).unwrap().init(se.train.init, 8);
    let (mut ap, mut as_): (Vec<f64>, Vec<f64>) =
        (p0.iter().map(|&x| x as f64).collect(), s0.iter().map(|&x| x as f64).collect());
    let d = decay as f64;
    for (p, st) in &live {
        ap.iter_mut().zip(p).for_each(|(a, &w)| *a = d * *a + (1.0 - d) * w as f64);
        as_.iter_mut().zip(st).for_each(|(a, &w)| *a = d * *a + (1.0 - d) * w as f64);
    }
    let saved = modelfile::load(&full, None).unwrap();
    let want = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    assert_close("averaged parameters", &saved.params, &want(&ap), 1e-6, 1e-5);
    assert_close("averaged batch-norm statistics", &saved.state, &want(&as_), 1e-6, 1e-5);
    assert!(saved.params != live[2].0, "the saved model is the last step's, not the average");
    assert_eq!(ck.train.as_ref().unwrap().average.as_ref().unwrap().0, saved.params);
    // Stop after one epoch, resume to three: the same average.
    let part = tmp.path().join("part.safetensors");
    let mut s1 = se.clone();
    s1.train.epochs = 1;
    run(s1, 8, &part, None, &data);
    let ckp = modelfile::checkpoint_path(&part);
    let mut s3 = modelfile::load(&ckp, None).unwrap().arch.spec;
    s3.train.epochs = 3;
    run(s3, 0, &part, Some(&ckp), &data);
    let resumed = modelfile::load(&part, None).unwrap();
    assert!(resumed.params == saved.params && resumed.state == saved.state, "resumed average differs");
}

#[test]
fn early_stopping_stops_and_restores_the_best_epoch() {
    let data = mnist(200, 50);
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec("fc-b");
    s.train.epochs = 10;
    // Demand a 90% improvement per epoch: epoch 2 cannot deliver, so it stops after it.
    let es = s.train.early_stopping.as_mut().unwrap();
    (es.patience, es.min_delta) = (1, 0.9);
    let out = tmp.path().join("es.safetensors");
    let r = run(s.clone(), 3, &out, None, &data);
    assert!(r.stopped_early);
    assert_eq!((r.epochs_run, r.best_epoch), (2, 1));
    // The saved weights are epoch 1's: the same as a one-epoch run with the same seed.
    let one = tmp.path().join("one.safetensors");
    s.train.epochs = 1;
    run(s, 3, &one, None, &data);
    assert!(params_of(&out) == params_of(&one));
}

#[test]
fn odd_batches_and_batch_one_train() {
    let data = mnist(37, 20);
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec("cnn-a");
    s.train.epochs = 1;
    let r = run(s.clone(), 1, &tmp.path().join("b1.safetensors"), None, &data);
    assert!(r.history[0].train_loss.is_finite());
    s.train.batch = 16; // 16 + 16 + 5
    let r = run(s, 1, &tmp.path().join("b16.safetensors"), None, &data);
    assert!(r.history[0].train_loss.is_finite());
}

#[test]
fn validation_split_is_held_out() {
    let data = mnist(100, 20);
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec("fc-b");
    s.train.epochs = 1;
    s.train.validation = 0.2;
    let r = run(s, 1, &tmp.path().join("v.safetensors"), None, &data);
    assert!(r.history[0].val_loss.is_some() && r.history[0].val_acc.is_some());
    assert!((r.history[0].images_per_second * r.history[0].seconds - 80.0).abs() < 1e-6);
}

#[test]
fn model_files_round_trip_and_reject_mismatches() {
    let data = mnist(64, 100);
    let tmp = tempfile::tempdir().unwrap();
    let mut s = spec("cnn2");
    s.train.epochs = 1;
    let out = tmp.path().join("m.safetensors");
    let r = run(s, 2, &out, None, &data);
    let m = modelfile::load(&out, None).unwrap();
    assert_eq!(m.arch.name(), "cnn2");
    let metrics = m.metrics().unwrap();
    assert_eq!(metrics["test_accuracy"].as_f64().unwrap(), r.final_test.accuracy());
    assert!(m.metadata.contains_key("normalization") && m.metadata.contains_key("model"));
    assert!(m.train.is_none());
    // The saved model evaluates to the accuracy training reported.
    let b = &mut CpuBackend::new();
    let s = pollster::block_on(gpu_train::evaluate::score(b, &m, "m", &data.1)).unwrap();
    assert_eq!(s.accuracy(&data.1.labels), r.final_test.accuracy());
    // No temporary files are left behind.
    let names: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    // The wrong architecture is refused, naming the tensor.
    let e = modelfile::load(&out, Some(spec("cnn4"))).unwrap_err().to_string();
    assert!(e.contains("shape") || e.contains("missing"), "{e}");
    let e = modelfile::load(&out, Some(spec("mlp"))).unwrap_err().to_string();
    assert!(e.contains("does not match"), "{e}");
    // Corrupt and truncated files.
    let bytes = std::fs::read(&out).unwrap();
    let bad = tmp.path().join("bad.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() - 10]).unwrap();
    assert!(modelfile::load(&bad, None).unwrap_err().to_string().contains("not a valid safetensors"));
    std::fs::write(&bad, b"hello, this is not a model at all").unwrap();
    assert!(modelfile::load(&bad, None).unwrap_err().to_string().contains("not a valid safetensors"));
}

/// Seed B's Adam (`bias_correction = "epoch"`) takes t from the epoch: a step in epoch 3 is
/// the paper's step 3 whatever the step count, and not the paper's step 8.
#[test]
fn epoch_bias_correction_takes_t_from_the_epoch() {
    use gpu_train::model::spec::{BiasCorrection, Optimizer};
    let after = |bias_correction, step: u32, epoch: u32| -> Vec<f32> {
        let mut s = spec("mlp");
        s.train.optimizer =
            Optimizer::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, bias_correction };
        let arch = Arch::new(s).unwrap();
        let b = &mut CpuBackend::new();
        let (p, st) = arch.init(arch.recipe().init, 1);
        let mut net = Network::new(b, arch.clone(), 1, &p, &st).unwrap();
        for (i, g) in net.grads.iter_mut().enumerate() {
            *g = ((i % 7) as f32 - 3.0) * 1e-3;
        }
        net.update(b, step, epoch, 0);
        net.params.clone()
    };
    let epoch3 = after(BiasCorrection::Epoch, 8, 3);
    assert!(epoch3 == after(BiasCorrection::Step, 3, 1), "t is not the epoch");
    assert!(epoch3 != after(BiasCorrection::Step, 8, 3), "t did not change the step");
}

/// Seed B's initialisation as its code draws it: conv weights normal with std
/// sqrt(2 / (C*H*W of the input)) and zero bias, dense weights and biases uniform in
/// [-0.5, 0.5).
#[test]
fn seed_b_init_follows_the_seeds_formulas() {
    use gpu_train::model::Layer;
    use gpu_train::model::spec::Init;
    let arch = Arch::new(spec("cnn4")).unwrap();
    assert_eq!(arch.recipe().init, Init::SeedB);
    let (p, _) = arch.init(Init::SeedB, 4);
    let moments = |x: &[f32]| {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        (mean, (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt())
    };
    let (mut convs, mut denses) = (0, 0);
    for layer in &arch.layers {
        match *layer {
            Layer::Conv2d(c) => {
                let (_, std) = moments(&p[c.w_off..c.w_off + c.weight_len()]);
                let want = (2.0 / (c.c_in * c.h_in * c.w_in) as f64).sqrt();
                assert!((std / want - 1.0).abs() < 0.12, "conv {}->{}: std {std}, want {want}", c.c_in, c.c_out);
                assert!(p[c.b_off.unwrap()..][..c.c_out].iter().all(|&v| v == 0.0));
                convs += 1;
            }
            Layer::Dense(d) => {
                let w = &p[d.w_off..d.w_off + d.n_in * d.n_out];
                let b = &p[d.b_off.unwrap()..][..d.n_out];
                assert!(w.iter().chain(b).all(|v| (-0.5..0.5).contains(v)));
                let (mean, std) = moments(w);
                assert!(mean.abs() < 0.01 && (std - 12f64.sqrt().recip()).abs() < 0.01, "dense: {mean}, {std}");
                assert!(b.iter().any(|&v| v != 0.0));
                denses += 1;
            }
            _ => {}
        }
    }
    assert_eq!((convs, denses), (4, 1));
}

/// Labels up to 65,535 (65,536 classes): training, evaluation and the per-class report work
/// on the CPU and, where there is an adapter, the GPU, without a classes x classes matrix or
/// a test-set x classes buffer.
#[test]
fn sixty_five_thousand_classes_train_and_evaluate() {
    let classes = 65_536usize;
    let make = |n: usize, seed: u64| Dataset {
        images: uniform(seed, n * 4, 0.0, 256.0).iter().map(|&v| v as u8).collect(),
        labels: (0..n as u32).map(|i| (i * 7919 + seed as u32) % classes as u32).collect(),
        channels: 1,
        height: 2,
        width: 2,
        classes: gpu_train::data::numbered_classes(classes),
    };
    let (train_ds, test_ds) = (make(96, 1), make(40, 2));
    let spec = format!(
        "name = 'wide'\ninput = [1, 2, 2]\nlayers = [{{ type = 'flatten' }}, {{ type = 'dense', units = {classes} }}]\n\
         [train]\nepochs = 1\nbatch = 32\n"
    );
    let arch = Arch::new(presets::parse(&spec, "wide").unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut backends: Vec<Box<dyn FnMut(TrainConfig) -> TrainSummary>> =
        vec![Box::new(|cfg| train::train(&mut CpuBackend::new(), cfg, train_ds.clone(), &test_ds).unwrap())];
    if let Ok(mut g) = gpu_train::gpu::GpuBackend::new(None) {
        let (tr, te) = (train_ds.clone(), test_ds.clone());
        backends.push(Box::new(move |cfg| train::train(&mut g, cfg, tr.clone(), &te).unwrap()));
    }
    for (i, run) in backends.iter_mut().enumerate() {
        let out = tmp.path().join(format!("wide-{i}.safetensors"));
        let cfg = TrainConfig { checkpoints: false, ..TrainConfig::single(arch.clone(), 1, out) };
        let s = run(cfg);
        assert_eq!(s.final_test.count, 40);
        assert!(s.history[0].train_loss.is_finite() && s.history[0].train_loss > 10.0, "{:?}", s.history[0]);
    }
    // The report of a 65,536-class model lists classes without a matrix.
    let m = modelfile::load(&tmp.path().join("wide-0.safetensors"), None).unwrap();
    let scored = pollster::block_on(gpu_train::evaluate::score(&mut CpuBackend::new(), &m, "wide", &test_ds)).unwrap();
    let text = gpu_train::evaluate::report(&scored, &test_ds.labels, &test_ds.classes);
    assert!(text.starts_with("accuracy per class") && text.lines().count() <= 41, "{}", &text[..200.min(text.len())]);
}

/// Streaming the training set from host memory (`--stream`, or when it does not fit on the
/// device) trains exactly as the resident copy does: the same examples reach every step in
/// the same order, through a window refilled every 64 steps (1000 examples in batches of 8:
/// 125 steps, two stretches, the last batch partial). Augmentation and dropout are on.
#[test]
fn streaming_the_training_set_trains_bit_for_bit_as_the_resident_copy() {
    let data = mnist(1003, 200);
    let mut spec = spec("cnn2");
    spec.train.epochs = 2;
    spec.train.batch = 8;
    let tmp = tempfile::tempdir().unwrap();
    let mut trained = Vec::new();
    for stream in [false, true] {
        let out = tmp.path().join(format!("s{stream}.safetensors"));
        let cfg = TrainConfig {
            checkpoints: false,
            stream,
            ..TrainConfig::single(Arch::new(spec.clone()).unwrap(), 3, out.clone())
        };
        let s = train::train(&mut CpuBackend::new(), cfg, data.0.clone(), &data.1).unwrap();
        trained.push((params_of(&out), s.history.iter().map(|h| h.train_loss).collect::<Vec<_>>()));
    }
    assert!(trained[0].1 == trained[1].1, "training losses differ: {:?} vs {:?}", trained[0].1, trained[1].1);
    assert!(trained[0].0 == trained[1].0, "streamed training gave other weights");
}
