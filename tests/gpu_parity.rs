//! The GPU backend against the reference definitions and the CPU backend, on whatever adapter
//! wgpu finds (in CI, lavapipe through Vulkan; with CI=true a missing adapter fails instead of
//! skipping): every kernel against both (the selftest suite), a grid past 65,535 workgroups, whole models (logits,
//! loss, every gradient, parameters after three Adam steps with dropout and augmentation on,
//! a weight average), and training on the GPU then evaluating on both backends.

use crate::common::*;
use gpu_train::backend::Backend;
use gpu_train::cpu::CpuBackend;
use gpu_train::data::{self, Dataset};
use gpu_train::gpu::GpuBackend;
use gpu_train::model::spec::{ModelSpec, Optimizer};
use gpu_train::model::{Act, Arch, presets};
use gpu_train::network::{DeviceData, Member, Members, Network, StepArgs};
use gpu_train::selftest;

fn gpu() -> Option<GpuBackend> {
    match GpuBackend::new(None) {
        Ok(g) => Some(g),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true but no GPU adapter: {e}"),
        Err(e) => {
            eprintln!("skipping GPU test: {e}");
            None
        }
    }
}

#[test]
fn every_kernel_matches_the_reference_and_the_cpu() {
    let Some(mut g) = gpu() else { return };
    let results = pollster::block_on(selftest::run(Some(&mut g), ""));
    let failed: Vec<String> = results.iter().filter(|r| !r.passed()).map(|r| r.line()).collect();
    assert!(results.len() > 100, "only {} cases ran", results.len());
    assert!(
        failed.is_empty(),
        "{} of {} cases failed on {}:\n{}",
        failed.len(),
        results.len(),
        g.name(),
        failed.join("\n")
    );
}

#[test]
fn a_grid_past_65535_workgroups_covers_every_element() {
    let Some(mut g) = gpu() else { return };
    // 65,536 workgroups of 256 and then some: the grid must fold into a second dimension.
    let len = 65_536 * 256 + 777;
    let x: Vec<f32> = (0..len).map(|i| ((i % 1001) as f32 - 500.0) * 1e-3).collect();
    let mut gx = g.alloc(len).unwrap();
    g.upload(&mut gx, &x).unwrap();
    let mut gy = g.alloc(len).unwrap();
    g.activation_forward(&mut gy, &gx, len, Act::Relu);
    let got = g.read(&gy, len).unwrap();
    let mut want = vec![0.0; len];
    CpuBackend::new().activation_forward(&mut want, &x, len, Act::Relu);
    let bad = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(bad.is_none(), "element {:?} differs", bad);
}

fn mnist(n: usize) -> Dataset {
    data::load_dir(&mnist_dir()).unwrap().0.take(n)
}

/// `n` random RGB 32x32 pictures with labels below `classes`.
fn rgb(n: usize, classes: usize) -> Dataset {
    let len = 3 * 32 * 32;
    Dataset {
        images: uniform(5, n * len, 0.0, 256.0).iter().map(|&v| v as u8).collect(),
        labels: (0..n as u32).map(|i| i * 7 % classes as u32).collect(),
        channels: 3,
        height: 32,
        width: 32,
        classes: data::numbered_classes(classes),
    }
}

/// Tolerances of the whole-model comparison. Logits and the loss go through up to four
/// convolutions whose sums run in a different order on each backend: ~1e-6 relative
/// differences per layer. Gradients compound them through the backward and, where a
/// max-pool window holds two nearly equal values, may route a gradient to a different
/// position; 1e-3 relative plus an absolute floor at 1e-3 of the largest gradient covers
/// both. After three Adam steps each parameter has moved by at most 3 lr (3e-3); Adam divides
/// by sqrt(v), so a gradient that is nearly zero on both sides (relu edges) can still move by
/// up to ~lr in different directions: atol 2e-4 with lr = 1e-4 bounds that. (A bias right
/// before batch norm has an exactly-zero gradient, pure rounding noise on both sides, so the
/// batch-norm model here has none.)
#[test]
fn whole_models_match_the_cpu_reference() {
    let Some(mut g) = gpu() else { return };
    let bn = "name = 'bn'\nlayers = [{ type = 'conv2d', filters = 3, kernel = 3, padding = 1, bias = false }, { type = 'batch_norm' }, \
              { type = 'relu' }, { type = 'max_pool2d' }, { type = 'dropout', p = 0.3 }, { type = 'flatten' }, \
              { type = 'dense', units = 12, bias = false }, { type = 'batch_norm' }, { type = 'tanh' }, { type = 'dense', units = 10 }]\n\
              [train]\naugment = { chance = 1.0 }\nema = 0.5\n";
    let n = 3;
    let digits = mnist(2 * n);
    let mut specs: Vec<(ModelSpec, Dataset)> = ["mlp", "cnn-a", "fc-b", "cnn2", "cnn3", "cnn4", "cnn6", "b2"]
        .iter()
        .map(|n| (presets::load(n).unwrap(), digits.clone()))
        .collect();
    specs.push((presets::parse(bn, "bn").unwrap(), digits.clone()));
    // Batch norm with relu + dropout, gelu and leaky relu fused after it.
    let bn_act = "name = 'bn-act'\nlayers = [{ type = 'conv2d', filters = 3, kernel = 3, bias = false }, { type = 'batch_norm' }, \
                  { type = 'relu' }, { type = 'dropout', p = 0.3 }, { type = 'conv2d', filters = 3, kernel = 3, bias = false }, \
                  { type = 'batch_norm' }, { type = 'gelu' }, { type = 'conv2d', filters = 3, kernel = 3, bias = false }, \
                  { type = 'batch_norm' }, { type = 'leaky_relu', slope = 0.1 }, { type = 'flatten' }, { type = 'dense', units = 10 }]\n";
    specs.push((presets::parse(bn_act, "bn-act").unwrap(), digits.clone()));
    // RGB: the VGG-style preset on random 32x32 colour pictures, flipped and shifted.
    let mut vgg = presets::load("vgg").unwrap();
    vgg.train.normalize = gpu_train::model::spec::Normalize::values(vec![0.49, 0.48, 0.45], vec![0.25, 0.24, 0.26]);
    specs.push((vgg, rgb(2 * n, 10)));
    // Residual blocks of every wiring, trained by its recipe: SGD with Nesterov momentum and
    // weight decay, label smoothing, flips and whole-pixel shifts.
    let res = presets::load(repo().join("tests/fixtures/residual_small.toml").to_str().unwrap()).unwrap();
    specs.push((res, digits.clone()));
    for (mut spec, data) in specs {
        if matches!(spec.train.optimizer, Optimizer::Adam { .. }) {
            spec.train.optimizer = Optimizer::Adam {
                lr: 1e-4,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                bias_correction: Default::default(),
            };
        }
        let name = spec.name.clone();
        let arch = Arch::new(spec).unwrap();
        let (params, state) = arch.init(arch.recipe().init, 4);
        let mut c = CpuBackend::new();
        let cdev = DeviceData::upload(&mut c, &data).unwrap();
        let gdev = DeviceData::upload(&mut g, &data).unwrap();
        let mut cnet = Network::array(&mut c, Members::one(arch.clone(), 9), n, &params, &state).unwrap();
        let mut gnet = Network::array(&mut g, Members::one(arch.clone(), 9), n, &params, &state).unwrap();
        let (mut cstats, mut gstats) = (c.alloc(2).unwrap(), g.alloc(2).unwrap());
        let (cperm, gperm) = (cdev.order.clone(), {
            let mut p = g.alloc_u32(data.len()).unwrap();
            g.upload_u32(&mut p, &(0..data.len() as u32).collect::<Vec<_>>()).unwrap();
            p
        });

        // One forward and backward, dropout on.
        cnet.load_batch(&mut c, &cdev, &cperm, 0, n, None);
        gnet.load_batch(&mut g, &gdev, &gperm, 0, n, None);
        cnet.forward_backward(&mut c, &mut cstats, n, 0, 5);
        gnet.forward_backward(&mut g, &mut gstats, n, 0, 5);
        let classes = arch.classes();
        let logits = (g.read(gnet.logits(), n * classes).unwrap(), c.read(cnet.logits(), n * classes).unwrap());
        assert_close(&format!("{name} logits"), &logits.0, &logits.1, 1e-4, 1e-3);
        let loss = (g.read(&gstats, 2).unwrap(), c.read(&cstats, 2).unwrap());
        assert_close(&format!("{name} loss and hits"), &loss.0, &loss.1, 1e-5, 1e-4);
        let grads = (g.read(&gnet.grads, arch.n_params).unwrap(), c.read(&cnet.grads, arch.n_params).unwrap());
        let scale = grads.1.iter().fold(0f32, |m, v| m.max(v.abs()));
        for t in &arch.params {
            let r = t.range();
            assert_close(&format!("{name} gradient {}", t.name), &grads.0[r.clone()], &grads.1[r], 1e-3 * scale, 1e-3);
        }

        // Three optimizer steps with dropout and the recipe's augmentation (if any) on.
        for step in 0..3u32 {
            let args = StepArgs {
                start: (step as usize % 2) * n,
                n,
                slot: 0,
                global_step: step,
                epoch: 1,
                row: 0,
                data_seed: 21,
                augment: arch.recipe().augment,
            };
            cnet.train_step(&mut c, &cdev, &cperm, &mut cstats, &args);
            gnet.train_step(&mut g, &gdev, &gperm, &mut gstats, &args);
        }
        let (gp, gs) = pollster::block_on(gnet.get_params(&mut g)).unwrap();
        let (cp, cs) = pollster::block_on(cnet.get_params(&mut c)).unwrap();
        assert_close(&format!("{name} parameters after 3 steps"), &gp, &cp, 2e-4, 1e-3);
        assert_close(&format!("{name} batch-norm running statistics"), &gs, &cs, 1e-4, 1e-3);
        // The weight average ('bn' keeps one): parameters and statistics.
        assert_eq!(gnet.has_average(), name == "bn");
        if let (Some((gp, gs)), Some((cp, cs))) = (
            pollster::block_on(gnet.get_average(&mut g)).unwrap(),
            pollster::block_on(cnet.get_average(&mut c)).unwrap(),
        ) {
            assert_close(&format!("{name} averaged parameters"), &gp, &cp, 2e-4, 1e-3);
            assert_close(&format!("{name} averaged statistics"), &gs, &cs, 1e-4, 1e-3);
        }
    }
}

/// Arrays, whole, on the GPU against the CPU with the tolerances above: a dense model of 3
/// members, a conv + pool + dropout model of 2 members with a sweep of their dropout rates
/// and learning rates, a batch-norm model of 2 with weight averaging, a residual model of 2
/// with its own SGD rates, momenta, weight decays, label smoothing and dropout: logits, each
/// member's loss, every gradient, and the parameters after three steps with per-member rates.
#[test]
fn whole_arrays_match_the_cpu() {
    let Some(mut g) = gpu() else { return };
    let n = 3;
    let digits = mnist(2 * n);
    let residual = repo().join("tests/fixtures/residual_small.toml");
    for (name, k, dropout) in [
        ("fc-b", 3, None),
        ("cnn4", 2, Some([0.1f32, 0.4])),
        ("cnn6", 2, None),
        (residual.to_str().unwrap(), 2, Some([0.0, 0.3])),
    ] {
        let spec = presets::load(name).unwrap();
        let name = spec.name.as_str();
        let list: Vec<Member> = (0..k)
            .map(|i| {
                let mut spec = spec.clone();
                spec.train.optimizer = match spec.train.optimizer {
                    // The residual model keeps SGD: each member its own rate, momentum, weight
                    // decay and label smoothing.
                    Optimizer::Sgd { nesterov, .. } => {
                        spec.train.label_smoothing = 0.2 * i as f32;
                        let (lr, momentum, weight_decay) =
                            (0.01 * (i + 1) as f32, 0.5 + 0.4 * i as f32, 0.01 * i as f32);
                        Optimizer::Sgd { lr, momentum, nesterov, weight_decay }
                    }
                    Optimizer::Adam { .. } => Optimizer::Adam {
                        lr: 1e-4 * (i + 1) as f32,
                        beta1: 0.9,
                        beta2: 0.999,
                        eps: 1e-8,
                        weight_decay: 0.01 * i as f32,
                        bias_correction: Default::default(),
                    },
                };
                if name == "cnn6" {
                    spec.train.ema = Some(0.5 + 0.2 * i as f32);
                }
                if let Some(p) = dropout {
                    gpu_train::model::spec::for_each_mut(&mut spec.layers, &mut |l| {
                        if let gpu_train::model::LayerSpec::Dropout { p: q } = l {
                            *q = p[i];
                        }
                    });
                }
                Member { seed: 30 + i as u64, spec }
            })
            .collect();
        let members = Members::new(list).unwrap();
        let arch = members.fused.clone();
        let (params, state) = members.init();
        let mut c = CpuBackend::new();
        let cdev = DeviceData::upload(&mut c, &digits).unwrap();
        let gdev = DeviceData::upload(&mut g, &digits).unwrap();
        let mut cnet = Network::array(&mut c, members.clone(), n, &params, &state).unwrap();
        let mut gnet = Network::array(&mut g, members, n, &params, &state).unwrap();
        let (mut cstats, mut gstats) = (c.alloc(2 * k).unwrap(), g.alloc(2 * k).unwrap());
        cnet.load_batch(&mut c, &cdev, &cdev.order, 0, n, None);
        gnet.load_batch(&mut g, &gdev, &gdev.order, 0, n, None);
        cnet.forward_backward(&mut c, &mut cstats, n, 0, 5);
        gnet.forward_backward(&mut g, &mut gstats, n, 0, 5);
        let width = arch.output().len();
        let logits = (g.read(gnet.logits(), n * width).unwrap(), c.read(cnet.logits(), n * width).unwrap());
        let tag = format!("{name} x{k}");
        assert_close(&format!("{tag} logits"), &logits.0, &logits.1, 1e-4, 1e-3);
        let loss = (g.read(&gstats, 2 * k).unwrap(), c.read(&cstats, 2 * k).unwrap());
        assert_close(&format!("{tag} loss and hits"), &loss.0, &loss.1, 1e-5, 1e-4);
        let grads = (g.read(&gnet.grads, arch.n_params).unwrap(), c.read(&cnet.grads, arch.n_params).unwrap());
        let scale = grads.1.iter().fold(0f32, |m, v| m.max(v.abs()));
        for t in &arch.params {
            let r = t.range();
            assert_close(&format!("{tag} gradient {}", t.name), &grads.0[r.clone()], &grads.1[r], 1e-3 * scale, 1e-3);
        }
        for step in 0..3u32 {
            let args = StepArgs {
                start: (step as usize % 2) * n,
                n,
                slot: 0,
                global_step: step,
                epoch: 1,
                row: 0,
                data_seed: 21,
                augment: None,
            };
            cnet.train_step(&mut c, &cdev, &cdev.order, &mut cstats, &args);
            gnet.train_step(&mut g, &gdev, &gdev.order, &mut gstats, &args);
        }
        let (gp, gs) = pollster::block_on(gnet.get_params(&mut g)).unwrap();
        let (cp, cs) = pollster::block_on(cnet.get_params(&mut c)).unwrap();
        assert_close(&format!("{tag} parameters after 3 steps"), &gp, &cp, 2e-4, 1e-3);
        assert_close(&format!("{tag} batch-norm running statistics"), &gs, &cs, 1e-4, 1e-3);
        if let (Some((gp, _)), Some((cp, _))) = (
            pollster::block_on(gnet.get_average(&mut g)).unwrap(),
            pollster::block_on(cnet.get_average(&mut c)).unwrap(),
        ) {
            assert_close(&format!("{tag} averaged parameters"), &gp, &cp, 2e-4, 1e-3);
        }
    }
}

/// Training on the GPU, then evaluating the saved model on both backends: the accuracies
/// agree within 0.02 points (2 of 10,000 test images).
#[test]
fn gpu_trained_model_evaluates_the_same_on_both_backends() {
    if gpu().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mlp-gpu.safetensors");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-train"))
            .args(args)
            .current_dir(repo())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(o.status.success(), "{args:?}: {}{}", text, String::from_utf8_lossy(&o.stderr));
        text
    };
    let o = out.to_str().unwrap();
    let trained = run(&["--arch", "mlp", "--backend", "gpu", "--epochs", "1", "--limit", "300", "--out", o]);
    assert!(trained.contains("test accuracy"), "{trained}");
    let accuracy = |text: &str| -> f64 {
        text.split("accuracy ").nth(1).and_then(|s| s.split('%').next()).unwrap().trim().parse().unwrap()
    };
    let on_gpu = accuracy(&run(&["eval", "--backend", "gpu", "--brief", "--model", o]));
    let on_cpu = accuracy(&run(&["eval", "--backend", "cpu", "--brief", "--model", o]));
    assert!((on_gpu - on_cpu).abs() <= 0.02 + 1e-9, "gpu {on_gpu}% vs cpu {on_cpu}%");
    assert!((accuracy(&trained) - on_gpu).abs() <= 1e-9, "train reported {trained}, eval {on_gpu}");
}

/// GPU training repeats bit for bit with the same seed (no float atomics, fixed reduction
/// orders), dropout and augmentation included.
#[test]
fn gpu_training_is_reproducible() {
    let Some(mut g) = gpu() else { return };
    let data = mnist(64);
    let mut spec = presets::load("cnn2").unwrap();
    spec.train.augment.as_mut().unwrap().chance = 1.0;
    let arch = Arch::new(spec).unwrap();
    let (params, state) = arch.init(arch.recipe().init, 8);
    let mut run = || {
        let dev = DeviceData::upload(&mut g, &data).unwrap();
        let mut net = Network::array(&mut g, Members::one(arch.clone(), 3), 16, &params, &state).unwrap();
        net.set_lr(&mut g, 1e-3).unwrap();
        let mut stats = g.alloc(8).unwrap();
        for step in 0..4u32 {
            let args = StepArgs {
                start: 16 * step as usize,
                n: 16,
                slot: step as usize,
                global_step: step,
                epoch: 1,
                row: 0,
                data_seed: 3,
                augment: arch.recipe().augment,
            };
            net.train_step(&mut g, &dev, &dev.order, &mut stats, &args);
        }
        (pollster::block_on(net.get_params(&mut g)).unwrap().0, g.read(&stats, 8).unwrap())
    };
    let (a, b) = (run(), run());
    assert!(a.0 == b.0, "parameters differ between two identical GPU runs");
    assert!(a.1 == b.1, "losses differ between two identical GPU runs");
}

/// A data set larger than one storage binding (128 MB on lavapipe and many GPUs) is split
/// into shards of whole pictures: every example gathers the same on the GPU as on the CPU,
/// whichever shard holds it, and an epoch of training runs on the GPU.
#[test]
fn a_data_set_larger_than_one_binding_trains_on_the_gpu() {
    let Some(mut g) = gpu() else { return };
    let limit = 4 * g.max_buffer_len();
    if limit > 512 << 20 {
        return eprintln!("skipping: this adapter binds {} MB at once; the test needs a small limit", limit >> 20);
    }
    // 1x128x128 pictures, a few hundred past the limit.
    let (side, classes) = (128, 10);
    let len = side * side;
    let n = limit / len + 300;
    let images: Vec<u8> = (0..n * len).map(|i| ((i / len) * 31 + (i % len) * 7 % 253) as u8).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % classes as u32).collect();
    let ds =
        Dataset { images, labels, channels: 1, height: side, width: side, classes: data::numbered_classes(classes) };
    assert!(ds.images.len() > limit, "{} bytes against a {limit}-byte binding", ds.images.len());
    let dev = DeviceData::upload(&mut g, &ds).unwrap();
    assert!(dev.shards.len() >= 2, "{} shard(s)", dev.shards.len());
    let mut c = CpuBackend::new();
    let cdev = DeviceData::upload(&mut c, &ds).unwrap();
    // A batch from both ends and across the shard boundary.
    let edge = dev.shards[1].first;
    let picks: Vec<u32> = [0, n - 1, edge, edge - 1, 7, edge + 3, n / 2].iter().map(|&i| i as u32).collect();
    let mut perm = g.alloc_u32(picks.len()).unwrap();
    g.upload_u32(&mut perm, &picks).unwrap();
    let gather = gpu_train::backend::Gather {
        start: 0,
        n: picks.len(),
        channels: 1,
        height: side,
        width: side,
        mean: [0.2; 4],
        std: [0.5; 4],
        augment: None,
        first: 0,
        count: n,
    };
    let (mut gx, mut gy) = (g.alloc(picks.len() * len).unwrap(), g.alloc_u32(picks.len()).unwrap());
    dev.gather(&mut g, &mut gx, &mut gy, &perm, &gather);
    let (mut cx, mut cy) = (vec![0f32; picks.len() * len], vec![0u32; picks.len()]);
    cdev.gather(&mut c, &mut cx, &mut cy, &picks, &gather);
    assert_close("gathered across shards", &g.read(&gx, picks.len() * len).unwrap(), &cx, 1e-6, 1e-6);
    assert_eq!(g.read_u32(&gy, picks.len()).unwrap(), cy);
    // One epoch of a small model over all of it.
    // (An 8x8 average pool, not a convolution, brings the pictures down: what is tested is the
    // data's path through training, and lavapipe's convolution of 4 filters took 74 s here.)
    let spec = "name = 'wide'\ninput = [1, 128, 128]\nlayers = [{ type = 'avg_pool2d', size = 8, stride = 8 }, \
                { type = 'flatten' }, { type = 'dense', units = 10 }]\n[train]\nepochs = 1\nbatch = 256\n";
    let arch = Arch::new(presets::parse(spec, "wide").unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = gpu_train::train::TrainConfig {
        checkpoints: false,
        ..gpu_train::train::TrainConfig::single(arch, 1, tmp.path().join("wide.safetensors"))
    };
    let test = ds.select(&(0..100).collect::<Vec<_>>());
    drop(dev);
    let s = gpu_train::train::train(&mut g, cfg, ds, &test).unwrap();
    assert_eq!(s.epochs_run, 1);
    assert!(s.history[0].train_loss.is_finite() && s.final_test.count == 100);
}

/// `--precision mixed`: the dense layers' three products on the cooperative-matrix kernel,
/// against the CPU. Where the adapter offers cooperative matrices, the real kernel; anywhere
/// else (lavapipe in CI) the same kernel with its cooperative ops emulated in plain WGSL
/// (`coop::emulated_source`), which checks the routing from the dense launchers, the tiling,
/// the zero padding, the strided operands and the epilogue, but not the tensor cores.
///
/// Tolerance per element, for a product over K terms with S = sum |a b| (the CPU's product of
/// the absolute values, bias included): (2u + u^2 + K 2^-21) S, u = 2^-10, the bound derived
/// in src/gpu/coop/probe.rs (operands rounded to f16 by either neighbour, f32 sums in any
/// order), times the dropout scale (the activations do not stretch differences), plus 1e-6.
#[test]
fn dense_products_on_the_cooperative_kernel_match_the_cpu() {
    use gpu_train::backend::Epilogue;
    use gpu_train::gpu::coop::{self, CoopConfig, Operand};
    use gpu_train::model::Dense;
    let adapter = match gpu_train::gpu::device::pick(None) {
        Ok(a) => a,
        Err(e) if ci() => panic!("CI=true but no GPU adapter: {e}"),
        Err(e) => return eprintln!("skipping GPU test: {e}"),
    };
    let f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
    let backends: Vec<(GpuBackend, String)> = match coop::choose(&adapter) {
        Ok(cfg) => vec![(GpuBackend::open_mixed(&adapter).unwrap(), cfg.describe())],
        Err(why) => {
            eprintln!("{why}: checking the kernel with its cooperative ops emulated");
            let operand = if f16 { Operand::F16 } else { Operand::F32 };
            [
                CoopConfig { size: 16, operand, subgroup: 32 },
                CoopConfig { size: 8, operand: Operand::F32, subgroup: 32 },
            ]
            .into_iter()
            .map(|cfg| (GpuBackend::open_emulated(&adapter, cfg).unwrap(), format!("emulated {}", cfg.describe())))
            .collect()
        }
    };
    let mut cpu = CpuBackend::new();
    let mut t = gpu_train::backend::TableBuilder::new(&[7]);
    let at = t.dropout(&[0.2]);
    let table = t.words.clone();
    let relu_dropout = |no: usize| Epilogue {
        act: Some(Act::Relu),
        dropout: Some(gpu_train::backend::Dropout { members: 1, len: no, stream: 0x100, step: 7, at }),
    };
    for (mut g, what) in backends {
        let gt = {
            let mut b = g.alloc_u32(table.len()).unwrap();
            g.upload_u32(&mut b, &table).unwrap();
            b
        };
        for (i, (n, ni, no, epi)) in [
            (1, 13, 7, Epilogue::act(Some(Act::Sigmoid))),
            (5, 70, 130, relu_dropout(130)),
            (33, 784, 10, Epilogue::default()),
            (3, 300, 10, Epilogue::act(Some(Act::Tanh))),
            (40, 100, 37, relu_dropout(37)),
        ]
        .into_iter()
        .enumerate()
        {
            let l = Dense::new(ni, no, 64, Some(64 + (ni * no).div_ceil(64) * 64));
            let plen = l.b_off.unwrap_or(0) + no + 3;
            let w = uniform(40 + i as u64, plen, -0.5, 0.5);
            let x = uniform(50 + i as u64, n * ni, -1.0, 1.0);
            let d = uniform(60 + i as u64, n * no, -1.0, 1.0);
            let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
            let scale = if epi.dropout.is_some() { 1.0 / (1.0 - 0.2) } else { 1.0 };
            let tag = format!("{what}, n={n} {ni}->{no}");
            let check = |name: &str, got: &[f32], want: &[f32], mag: &[f32], k: usize, scale: f32| {
                let u = 2f32.powi(-10);
                let rel = 2.0 * u + u * u + k as f32 * 2f32.powi(-21);
                let worst = (0..want.len())
                    .map(|j| ((got[j] - want[j]).abs() / (rel * mag[j] * scale + 1e-6), j))
                    .fold((0.0f32, 0), |a, b| if b.0 > a.0 || b.0.is_nan() { b } else { a });
                let j = worst.1;
                assert!(
                    worst.0 <= 1.0,
                    "{name} {tag}: element {j}: gpu {} cpu {} (S {}), {:.2} of the tolerance",
                    got[j],
                    want[j],
                    mag[j],
                    worst.0
                );
            };
            // Forward: K = n_in.
            let (gx, gw) = (up(&mut g, &x), up(&mut g, &w));
            let mut gy = g.alloc(n * no).unwrap();
            g.dense_forward(&mut gy, &gx, &gw, &gt, &l, n, epi);
            let got = g.read(&gy, n * no).unwrap();
            let (mut want, mut mag) = (vec![0.0; n * no], vec![0.0; n * no]);
            cpu.dense_forward(&mut want, &x, &w, &table, &l, n, epi);
            cpu.dense_forward(&mut mag, &abs(&x), &abs(&w), &table, &l, n, Epilogue::default());
            check("dense_forward", &got, &want, &mag, ni, scale);
            // Backward to the input: K = n_out.
            let gd = up(&mut g, &d);
            let mut gdx = g.alloc(n * ni).unwrap();
            g.dense_backward_input(&mut gdx, &gd, &gw, &l, n);
            let got = g.read(&gdx, n * ni).unwrap();
            let (mut want, mut mag) = (vec![0.0; n * ni], vec![0.0; n * ni]);
            cpu.dense_backward_input(&mut want, &d, &w, &l, n);
            cpu.dense_backward_input(&mut mag, &abs(&d), &abs(&w), &l, n);
            check("dense_backward_input", &got, &want, &mag, no, 1.0);
            // Backward to the weights (and the f32 bias gradient beside them): K = n.
            let mut gg = up(&mut g, &vec![7.0; plen]);
            g.dense_backward_weight(&mut gg, &gd, &gx, &l, n);
            let got = g.read(&gg, plen).unwrap();
            let (mut want, mut mag) = (vec![7.0; plen], vec![7.0; plen]);
            cpu.dense_backward_weight(&mut want, &d, &x, &l, n);
            cpu.dense_backward_weight(&mut mag, &abs(&d), &abs(&x), &l, n);
            check("dense_backward_weight", &got, &want, &mag, n, 1.0);
        }
        eprintln!("dense products on {what}: all within the f16 bound");
    }
}

fn up(g: &mut GpuBackend, data: &[f32]) -> gpu_train::gpu::GpuBuf {
    let mut b = g.alloc(data.len()).unwrap();
    g.upload(&mut b, data).unwrap();
    b
}

/// Streaming the training set through a window on the GPU trains bit for bit as the resident
/// copy does (300 examples in batches of 4: 75 steps, the window refilled after 64).
#[test]
fn streamed_training_on_the_gpu_matches_the_resident_copy() {
    let Some(mut g) = gpu() else { return };
    let data = mnist(300);
    let test = data.select(&(0..50).collect::<Vec<_>>());
    // mlp's dense layers with cnn2's augmentation (the gather from the window with and without
    // it): the streamed path is the data's, and cnn2's convolutions took 75 s on lavapipe.
    let mut spec = presets::load("mlp").unwrap();
    spec.train.augment = presets::load("cnn2").unwrap().train.augment;
    spec.train.epochs = 1;
    spec.train.batch = 4;
    let tmp = tempfile::tempdir().unwrap();
    let mut weights = Vec::new();
    for stream in [false, true] {
        let out = tmp.path().join(format!("s{stream}.safetensors"));
        let cfg = gpu_train::train::TrainConfig {
            checkpoints: false,
            stream,
            ..gpu_train::train::TrainConfig::single(Arch::new(spec.clone()).unwrap(), 5, out.clone())
        };
        gpu_train::train::train(&mut g, cfg, data.clone(), &test).unwrap();
        weights.push(gpu_train::modelfile::load(&out, None).unwrap().params);
    }
    assert!(weights[0] == weights[1], "streamed GPU training gave other weights");
}

/// The tuning API (`gpu::variants`) on a small conv and a small dense layer, each recorded
/// from its launchers: every candidate replays; those that add in the default's order
/// (`same_order`: another tile, the same split) validate bit for bit (validate_op == 0.0),
/// the other split counts and gemm_skinny within 1e-4 of the output's largest value (two
/// orders of f32 sums of at most 297 terms; 5e-7 measured); the replays leave the recorded
/// outputs alone; time_op measures; a key not recorded or a choice not among the key's
/// candidates is an error; set_choice keeps candidates only, and the launchers run what it
/// set (the profiler names each dispatch's kernel and tile).
#[test]
fn kernel_variants_replay_validate_and_time() {
    use gpu_train::gpu::variants::same_order;
    use gpu_train::gpu::{Choice, GemmOp, OpKey, Tile, candidates, default_choice};
    use gpu_train::model::{Conv2d, Dense};
    let Some(mut g) = gpu() else { return };
    let n = 3;
    // 20 filters of 3x3x3 over 9x11 pictures: the weight gradient sums 297 terms, in 2 chunks
    // by default.
    let conv = Conv2d::new(3, (9, 11), 20, (3, 3), 1, (1, 1), 0, Some(20 * 27));
    let dense = Dense::new(70, 37, 0, Some(70 * 37));
    let (cw, dw) = (up(&mut g, &uniform(1, 20 * 28, -0.5, 0.5)), up(&mut g, &uniform(2, 71 * 37, -0.5, 0.5)));
    let (cx, dx) = (up(&mut g, &uniform(3, n * conv.in_len(), -1.0, 1.0)), up(&mut g, &uniform(4, n * 70, -1.0, 1.0)));
    let (cd, dd) = (up(&mut g, &uniform(5, n * conv.out_len(), -1.0, 1.0)), up(&mut g, &uniform(6, n * 37, -1.0, 1.0)));
    let table = {
        let mut b = g.alloc_u32(16).unwrap();
        g.upload_u32(&mut b, &[0; 16]).unwrap();
        b
    };
    // The six ops into new outputs: the conv's weight gradient and the dense forward's.
    let run = |g: &mut GpuBackend| {
        let relu = gpu_train::backend::Epilogue::act(Some(Act::Relu));
        let mut alloc = |len| g.alloc(len).unwrap();
        let (mut cy, mut cdx, mut cg) = (alloc(n * conv.out_len()), alloc(n * conv.in_len()), alloc(20 * 28));
        let (mut dy, mut ddx, mut dg) = (alloc(n * 37), alloc(n * 70), alloc(71 * 37));
        g.conv2d_forward(&mut cy, &cx, &cw, &table, &conv, n, relu);
        g.conv2d_backward_input(&mut cdx, &cd, &cw, &conv, n);
        g.conv2d_backward_weight(&mut cg, &cd, &cx, &conv, n);
        g.dense_forward(&mut dy, &dx, &dw, &table, &dense, n, relu);
        g.dense_backward_input(&mut ddx, &dd, &dw, &dense, n);
        g.dense_backward_weight(&mut dg, &dd, &dx, &dense, n);
        (cg, dy)
    };
    g.record_ops(true);
    let (cg, dy) = run(&mut g);
    g.record_ops(false);
    let before = (g.read(&cg, 20 * 28).unwrap(), g.read(&dy, n * 37).unwrap());
    let keys = g.recorded_ops();
    let want: Vec<OpKey> = [GemmOp::ConvForward, GemmOp::ConvBackwardInput, GemmOp::ConvBackwardWeight]
        .into_iter()
        .map(|op| OpKey::conv(op, &conv, n))
        .chain(
            [GemmOp::DenseForward, GemmOp::DenseBackwardInput, GemmOp::DenseBackwardWeight]
                .into_iter()
                .map(|op| OpKey::dense(op, &dense, n)),
        )
        .collect();
    assert_eq!(keys, want);
    assert_eq!(default_choice(&keys[2]), Choice { tile: Tile::T64x64, splits: 2 });
    for key in &keys {
        let list = candidates(key);
        assert_eq!(list[0], default_choice(key));
        for c in list {
            let v = pollster::block_on(g.validate_op(key, c)).unwrap();
            let what = format!("{} {}: {v:e}", key.describe(), c.name());
            if same_order(key, c) {
                assert_eq!(v, 0.0, "{what}");
            } else {
                assert!(v <= 1e-4, "{what}");
            }
        }
        let t = pollster::block_on(g.time_op(key, default_choice(key), 2)).unwrap();
        assert!(t > 0.0 && t.is_finite(), "{} takes {t} s", key.describe());
    }
    assert!(g.read(&cg, 20 * 28).unwrap() == before.0 && g.read(&dy, n * 37).unwrap() == before.1);
    let skinny = Choice { tile: Tile::Skinny, splits: 0 };
    let err = pollster::block_on(g.time_op(&keys[0], skinny, 1)).unwrap_err().to_string();
    assert!(err.contains("not a candidate"), "{err}");
    let other = OpKey::dense(GemmOp::DenseForward, &dense, 99);
    let err = pollster::block_on(g.validate_op(&other, default_choice(&other))).unwrap_err().to_string();
    assert!(err.contains("not recorded"), "{err}");

    g.set_choice(keys[0].clone(), skinny);
    assert!(g.choices().is_empty());
    if g.enable_profiling().is_err() {
        return eprintln!("no timestamp queries: the dispatched variants are not checked");
    }
    g.set_choice(keys[0].clone(), Choice { tile: Tile::T16x64, splits: 0 });
    g.set_choice(keys[2].clone(), Choice { tile: Tile::T32x32, splits: 1 });
    // The dense forward (3 rows, K = 70) is skinny by default; its input gradient (K = 37) is not.
    g.set_choice(keys[3].clone(), Choice { tile: Tile::T16x64, splits: 0 });
    g.set_choice(keys[4].clone(), skinny);
    assert_eq!(g.choices().len(), 4);
    run(&mut g);
    let ran: Vec<String> = g.profile_report().unwrap().into_iter().map(|r| r.0).collect();
    let names = ["conv2d_forward t16x64", "conv2d_backward_weight t32x32", "dense_forward t16x64", "gemm_skinny"];
    for name in names.iter().chain(&["conv2d_backward_input", "dense_backward_weight"]) {
        assert!(ran.contains(&name.to_string()), "{name} not among {ran:?}");
    }
    let defaults = ["conv2d_forward", "sum_partials", "dense_forward", "dense_backward_input"];
    assert!(!ran.iter().any(|r| defaults.contains(&r.as_str())), "{ran:?}");
    g.clear_choices();
    assert!(g.choices().is_empty());
}

/// Batch norm with an activation fused after it against batch norm, the activation and (after
/// relu) dropout as separate ops, as the unfused plan ran them (the backward: dropout's, the
/// activation's from its output, or gelu's and silu's from its input, then batch norm's), on
/// `b`: 3 examples of 2 members x 3 channels of 13. Returns the mismatches. The forward must
/// agree bit for bit; the backward as numbers: where dropout dropped an element, the separate
/// ops' gradient is +0 and the fused one dout * 0, which is -0 for a negative dout.
fn fused_batchnorm_mismatches<B: Backend>(b: &mut B) -> Vec<String> {
    use gpu_train::backend::{Dropout, Epilogue, TableBuilder};
    use gpu_train::model::BatchNorm;
    let (n, c, hw) = (3, 6, 13);
    let len = n * c * hw;
    let l = BatchNorm { c, hw, eps: 1e-5, momentum: 0.1, gamma_off: 0, beta_off: c, mean_off: 0, var_off: c };
    let mut t = TableBuilder::new(&[3, 4]);
    let at = t.dropout(&[0.3, 0.6]);
    let mut up = |v: &[f32]| {
        let mut x = b.alloc(v.len()).unwrap();
        b.upload(&mut x, v).unwrap();
        x
    };
    let (x, p, dout) =
        (up(&uniform(1, len, -2.0, 3.0)), up(&uniform(2, 2 * c, 0.5, 1.5)), up(&uniform(3, len, -1.0, 1.0)));
    let mut table = b.alloc_u32(t.words.len()).unwrap();
    b.upload_u32(&mut table, &t.words).unwrap();
    let d = Dropout { members: 2, len: 3 * hw, stream: 0x109, step: 2, at };
    let acts = [Act::Relu, Act::Sigmoid, Act::Tanh, Act::LeakyRelu(0.1), Act::Gelu, Act::Silu];
    let cases =
        acts.map(|a| Epilogue::act(Some(a))).into_iter().chain([Epilogue { act: Some(Act::Relu), dropout: Some(d) }]);
    let mut bad = Vec::new();
    for epi in cases {
        let a = epi.act.unwrap();
        let mut buf = || b.alloc(len).unwrap();
        let (mut y, mut z, mut w, mut fused, mut dz, mut dy, mut dx, mut dx_fused) =
            (buf(), buf(), buf(), buf(), buf(), buf(), buf(), buf());
        let (mut saved, mut state, mut g, mut g_fused) =
            (b.alloc(2 * c).unwrap(), b.alloc(2 * c).unwrap(), b.alloc(2 * c).unwrap(), b.alloc(2 * c).unwrap());
        // Separate ops.
        b.batchnorm_forward(&mut y, &mut saved, &mut state, &x, &p, &table, &l, n, true, Epilogue::default());
        b.activation_forward(&mut z, &y, len, a);
        let out = match epi.dropout {
            Some(d) => {
                b.dropout_forward(&mut w, &z, &table, len, &d);
                b.dropout_backward(&mut dz, &dout, &table, len, &d);
                &w
            }
            None => &z,
        };
        let dz_in = if epi.dropout.is_some() { &dz } else { &dout };
        b.activation_backward(&mut dy, dz_in, if a.grad_from_output() { &z } else { &y }, &table, len, a, None);
        b.batchnorm_backward(&mut dx, &mut g, &dy, &x, &y, &saved, &p, &table, &l, n, Epilogue::default());
        // Fused.
        b.batchnorm_forward(&mut fused, &mut saved, &mut state, &x, &p, &table, &l, n, true, epi);
        b.batchnorm_backward(&mut dx_fused, &mut g_fused, &dout, &x, &fused, &saved, &p, &table, &l, n, epi);
        let mut read = |v: &B::Buf, k: usize| pollster::block_on(b.download(v, k)).unwrap();
        let tag = format!("{a:?}{}", if epi.dropout.is_some() { "+dropout" } else { "" });
        let (f, s) = (read(&fused, len), read(out, len));
        if f.iter().zip(&s).any(|(f, s)| f.to_bits() != s.to_bits()) {
            bad.push(format!("{tag} forward"));
        }
        for (what, f, s) in
            [("dx", read(&dx_fused, len), read(&dx, len)), ("dgamma/dbeta", read(&g_fused, 2 * c), read(&g, 2 * c))]
        {
            if let Some(i) = (0..f.len()).find(|&i| f[i] != s[i]) {
                bad.push(format!("{tag} {what}: [{i}] fused {} separate {}", f[i], s[i]));
            }
        }
    }
    bad
}

/// Fusing batch norm with its activation (and dropout) changes no result: the fused ops
/// against the separate ones, on the CPU and on the GPU (`fused_batchnorm_mismatches`).
#[test]
fn fused_batchnorm_equals_the_separate_ops() {
    let cpu = fused_batchnorm_mismatches(&mut CpuBackend::new());
    assert!(cpu.is_empty(), "cpu: {cpu:?}");
    let Some(mut g) = gpu() else { return };
    let gpu = fused_batchnorm_mismatches(&mut g);
    assert!(gpu.is_empty(), "gpu: {gpu:?}");
}
