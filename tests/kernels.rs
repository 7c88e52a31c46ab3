//! Tuning the GPU kernels on the device (`--kernels`, `gpu-train tune`, src/gpu/tune.rs), on
//! lavapipe: tuning times every op shape of a small conv net and caches the winners under
//! this adapter; a second run takes them from the cache; a cached winner that no longer
//! validates (here: a kernel that is not one for its shape) falls back to the default and
//! says so; a spent budget leaves shapes on the default; the choice is recorded in the model
//! file and the metrics log, and `--kernels FILE` (the saved set, or that model file) repeats
//! the run bit for bit.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use gpu_train::modelfile;
use serde_json::Value;

// A 4x4 average pool first keeps lavapipe's convolutions (and testing on 10,000 pictures)
// short: what is tested is the tuning's bookkeeping, not the kernels' speed.
const MODEL: &str = "name = 'tiny'\ninput = [1, 28, 28]\nlayers = [{ type = 'avg_pool2d', size = 4, stride = 4 }, \
                     { type = 'conv2d', filters = 4, kernel = 3 }, \
                     { type = 'relu' }, { type = 'max_pool2d', size = 2 }, { type = 'flatten' }, { type = 'dense', units = 10 }]\n\
                     [train]\nepochs = 1\nbatch = 8\n";

/// gpu-train with the kernel cache at `cache`: (exit code, stdout, stderr).
fn run(cache: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_gpu-train"))
        .args(args)
        .current_dir(repo())
        .env("GPU_TRAIN_KERNEL_CACHE", cache)
        .env("NODEVICE_SELECT", "1")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn ok(cache: &Path, args: &[&str]) -> String {
    let (code, out, err) = run(cache, args);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

#[test]
fn kernels_are_tuned_cached_revalidated_recorded_and_repeated() {
    if gpu_train::gpu::GpuBackend::new(None).is_err() {
        assert!(!ci(), "CI=true but no GPU adapter (install mesa-vulkan-drivers)");
        eprintln!("skipping: no GPU adapter");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cache, model, set) =
        (tmp.path().join("cache.json"), tmp.path().join("tiny.toml"), tmp.path().join("set.json"));
    std::fs::write(&model, MODEL).unwrap();
    let tune = ["tune", "--arch", p(&model), "--batch", "8", "--tune-budget", "60"];
    let out = ok(&cache, &[&tune[..], &["--save", p(&set)]].concat());
    let line = out.lines().find(|l| l.starts_with("kernels: tuned")).unwrap_or_else(|| panic!("{out}"));
    // The forward and backwards of the conv and dense layers, each shape timed.
    let shapes: usize = line["kernels: tuned ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(shapes >= 5 && line.contains(&format!("{shapes} timed, 0 from the cache")), "{line}");
    let cached: Value = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    let entries = cached["entries"].as_array().unwrap();
    assert_eq!(entries.len(), shapes, "{cached}");
    assert!(
        entries.iter().all(|e| e["device"]["backend"] == "Vulkan" && e["kernel_set"].as_u64().is_some()),
        "{cached}"
    );

    // Again: every shape from the cache, each validated again.
    let out = ok(&cache, &tune);
    assert!(out.contains(&format!("0 timed, {shapes} from the cache")), "{out}");

    // A cached winner that is not a kernel for its shape (a stale cache) falls back.
    let mut stale = cached.clone();
    let conv = stale["entries"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["chosen"]["key"]["op"] == "ConvForward")
        .unwrap();
    conv["chosen"]["choice"] = serde_json::json!({ "tile": "Skinny", "splits": 0 });
    std::fs::write(&cache, stale.to_string()).unwrap();
    let out = ok(&cache, &tune);
    assert!(out.contains("cached skinny for conv fwd") && out.contains("failed"), "{out}");
    assert!(out.contains(&format!("{} from the cache", shapes - 1)), "{out}");

    // No budget: every shape keeps the default, and says why.
    let out = ok(&tmp.path().join("none.json"), &["tune", "--arch", p(&model), "--batch", "8", "--tune-budget", "0"]);
    assert!(out.contains("0 timed") && out.contains(&format!("{shapes} left on the default: budget spent")), "{out}");

    // Training records the kernels it ran; the set file and that model file repeat the run.
    let train = |kernels: &str, out: &Path| {
        let args = ["--arch", p(&model), "--backend", "gpu", "--limit", "64", "--no-checkpoint"];
        ok(&cache, &[&args[..], &["--kernels", kernels, "--out", p(out)]].concat())
    };
    let (first, again, from_model) =
        (tmp.path().join("a.safetensors"), tmp.path().join("b.safetensors"), tmp.path().join("c.safetensors"));
    let out = train(p(&set), &first);
    assert!(out.contains(&format!("kernels: {shapes} op shape(s) as chosen in")), "{out}");
    let a = modelfile::load(&first, None).unwrap();
    let recorded: Value = serde_json::from_str(&a.metadata["kernels"]).unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&set).unwrap()).unwrap();
    assert_eq!(recorded["choices"], saved["choices"], "the model file records the kernels it ran");
    let log = std::fs::read_to_string(first.with_extension("metrics.jsonl")).unwrap();
    let head: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(head["kernels"]["choices"], saved["choices"], "the metrics log starts with them");
    train(p(&first), &again);
    train("default", &from_model);
    let (b, c) = (modelfile::load(&again, None).unwrap(), modelfile::load(&from_model, None).unwrap());
    assert!(a.params == b.params, "--kernels MODEL.safetensors repeats the run bit for bit");
    assert_eq!(serde_json::from_str::<Value>(&c.metadata["kernels"]).unwrap()["source"], "default");
    // The report reads a log that begins with the kernels.
    ok(&cache, &["report", p(&first), "--no-eval", "--out", p(&tmp.path().join("r.html"))]);

    let (code, _, err) = run(&cache, &["--arch", p(&model), "--backend", "gpu", "--kernels", "/nonexistent/k.json"]);
    assert!(code != 0 && err.lines().count() == 1 && err.contains("--kernels"), "{err}");
}

/// Under a budget, tuning reaches first the op shapes whose default 64 x 64 tile is idlest:
/// cnn4's first convolution (16 filters: 16 of 64 rows) before its 64-filter layers.
#[test]
fn tuning_reaches_the_idlest_tiles_first() {
    use gpu_train::gpu::variants::{GemmOp, OpKey};
    let key = |op, m, n, k| OpKey { op, m, n, k, batches: 1, geometry: Vec::new() };
    let mut keys = vec![
        key(GemmOp::ConvForward, 64, 4096, 576),        // fills the tile
        key(GemmOp::ConvBackwardWeight, 64, 576, 4096), // 576 = 9 tiles: fills it
        key(GemmOp::DenseForward, 128, 10, 1024),       // 10 of 64 columns
        key(GemmOp::ConvForward, 16, 100352, 25),       // 16 of 64 rows (and 100352 = 1568 x 64)
        key(GemmOp::ConvForward, 32, 4096, 400),        // half the rows
        key(GemmOp::DenseBackwardWeight, 10, 50, 16),   // 10 x 50 of 64 x 64
    ];
    gpu_train::gpu::tune::by_idle_share(&mut keys);
    let order: Vec<(u32, u32)> = keys.iter().map(|k| (k.m, k.n)).collect();
    assert_eq!(order, [(10, 50), (128, 10), (16, 100352), (32, 4096), (64, 4096), (64, 576)]);
}
