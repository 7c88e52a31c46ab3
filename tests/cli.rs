//! The command line as a user meets it: bad input ends in one line on stderr and a non-zero
//! exit (never a panic), a trained model evaluates to the accuracy training reported, and
//! predict, bench and presets work.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn gpu_train(args: &[&str]) -> (i32, String, String) {
    gpu_train_cmd(args)
}

/// Asserts a failure reported as exactly one "error: ..." line containing `want` (in any case).
fn fails_with(args: &[&str], want: &str) {
    let line = one_line_error(args);
    assert!(line.to_lowercase().contains(&want.to_lowercase()), "{args:?}: expected '{want}' in: {line}");
}

#[test]
fn bad_settings_and_files_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.safetensors");
    let base = ["--backend", "cpu", "--out", p(&out)];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().map(|s| s.to_string()).chain(extra.iter().map(|s| s.to_string())).collect()
    };
    let check = |args: Vec<String>, want: &str| fails_with(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), want);
    check(with(&["--arch", "no-such-net"]), "unknown preset");
    check(with(&["--arch", "mlp", "--batch", "0"]), "batch size");
    check(with(&["--arch", "mlp", "--lr", "-0.1"]), "learning rate");
    check(with(&["--arch", "mlp", "--lr", "NaN"]), "learning rate");
    check(with(&["--arch", "mlp", "--lr", "inf"]), "learning rate");
    check(with(&["--arch", "mlp", "--epochs", "0"]), "epochs");
    check(with(&["--arch", "mlp", "--ema", "1"]), "averaging decay");
    check(with(&["--arch", "mlp", "--ema", "-0.5"]), "averaging decay");
    check(with(&["--arch", "mlp", "--limit", "0"]), "limit");
    check(with(&["--arch", "mlp", "--threads", "0"]), "threads");
    check(with(&["--arch", "mlp", "--resume"]), "no checkpoint");
    check(with(&["--arch", "mlp", "--data-dir", "/nonexistent/mnist"]), "does not exist");
    // A malformed architecture file.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "name = 'bad'\nlayers = [{ type = 'dense', units = 10 }]\n").unwrap();
    check(with(&["--arch", p(&bad)]), "flatten");
    std::fs::write(&bad, "name = 'bad'\nlayers = [[[\n").unwrap();
    check(with(&["--arch", p(&bad)]), "bad.toml");
    // A model far too large for the machine: refused before anything is allocated.
    let big = tmp.path().join("big.toml");
    std::fs::write(
        &big,
        "name = 'big'\nlayers = [{ type = 'conv2d', filters = 2000000, kernel = 5, padding = 2 }, { type = 'relu' }, \
         { type = 'flatten' }, { type = 'dense', units = 10 }]\n",
    )
    .unwrap();
    check(with(&["--arch", p(&big)]), "too large");
    check(with(&["--arch", "mlp", "--batch", "100000000"]), "too large");
    // A truncated data file.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    {
        let bytes = std::fs::read(mnist_dir().join(format!("{f}.gz"))).unwrap();
        let keep = if f.starts_with("train-images") { bytes.len() / 2 } else { bytes.len() };
        std::fs::write(data.join(format!("{f}.gz")), &bytes[..keep]).unwrap();
    }
    check(with(&["--arch", "mlp", "--data-dir", p(&data)]), "train-images");
    // Model files: missing, corrupt, of another architecture.
    let none = tmp.path().join("none.safetensors");
    fails_with(&["eval", "--backend", "cpu", "--model", p(&none)], "none.safetensors");
    let (_, _, err) = gpu_train(&["eval", "--backend", "cpu", "--model", p(&none)]);
    assert_eq!(err.matches("os error").count(), 1, "the cause is said once: {err}");
    std::fs::write(tmp.path().join("junk.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    fails_with(&["eval", "--backend", "cpu", "--model", p(&tmp.path().join("junk.safetensors"))], "safetensors");
    fails_with(&["predict", "--model", p(&tmp.path().join("none.safetensors")), "x.png"], "none.safetensors");
    fails_with(&["presets", "nope"], "unknown preset");
    // Usage errors are one line too.
    fails_with(&["--arch", "mlp", "--batch", "many"], "--batch");
    fails_with(&["--arch", "mlp", "--backend", "tpu"], "tpu");
    fails_with(&["--epochs", "3"], "--arch");
    fails_with(&["eval"], "--model");
}

#[test]
fn train_then_eval_agree_and_predict_works() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("mlp.safetensors");
    let (code, stdout, err) =
        gpu_train(&["--arch", "mlp", "--backend", "cpu", "--epochs", "1", "--limit", "2000", "--out", p(&out)]);
    assert_eq!(code, 0, "{stdout}\n{err}");
    assert!(stdout.contains("epoch 1/1  train loss"), "{stdout}");
    // "done: ... test accuracy 91.23% ..."
    let acc = stdout.split("test accuracy ").nth(1).and_then(|s| s.split('%').next()).unwrap().to_string();
    assert!(out.exists() && modelfile_beside(&out, "ckpt.safetensors") && modelfile_beside(&out, "metrics.jsonl"));
    let (code, eval_out, err) = gpu_train(&["eval", "--backend", "cpu", "--model", p(&out)]);
    assert_eq!(code, 0, "{err}");
    assert!(eval_out.contains(&format!("accuracy {acc}%")), "train said {acc}%, eval said: {eval_out}");
    assert!(eval_out.contains("confusion matrix"), "{eval_out}");
    // Two models: the ensemble line too.
    let (code, ens, _) = gpu_train(&["eval", "--backend", "cpu", "--brief", "--model", p(&out), "--model", p(&out)]);
    assert_eq!(code, 0);
    assert!(ens.contains("ensemble of 2: accuracy"), "{ens}");
    let (code, tta, err) = gpu_train(&["eval", "--backend", "cpu", "--brief", "--tta", "--model", p(&out)]);
    assert_eq!(code, 0, "{err}");
    assert!(tta.contains("5 views each (--tta)") && tta.contains("(tta x5): mlp | accuracy"), "{tta}");
    // A test digit drawn dark on a light, larger canvas: predict's top class is the label
    // the model gives the original image.
    let (_, test) = gpu_train::data::load_dir(&mnist_dir()).unwrap();
    let label = test.labels[0];
    let img =
        image::GrayImage::from_fn(56, 56, |x, y| image::Luma([255 - test.image(0)[(y / 2 * 28 + x / 2) as usize]]));
    let png = tmp.path().join("digit.png");
    img.save(&png).unwrap();
    let (code, pred, err) = gpu_train(&["predict", "--backend", "cpu", "--model", p(&out), p(&png)]);
    assert_eq!(code, 0, "{err}");
    assert!(pred.contains("top 3:") && pred.contains(&format!("digit.png: {label}")), "label {label}: {pred}");
}

fn modelfile_beside(model: &Path, ext: &str) -> bool {
    model.with_extension(ext).exists()
}

#[test]
fn diverging_training_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    // A sane first epoch, then a learning rate 1e30 times larger.
    let spec = "name = 'boom'\nlayers = [{ type = 'flatten' }, { type = 'dense', units = 32 }, { type = 'relu' }, \
                { type = 'dense', units = 10 }]\n[train]\nbatch = 16\noptimizer = { type = 'adam', lr = 0.001 }\n\
                schedule = { type = 'step', every = 1, factor = 1e30 }\n";
    let arch = tmp.path().join("boom.toml");
    std::fs::write(&arch, spec).unwrap();
    let out = tmp.path().join("boom.safetensors");
    let args = ["--arch", p(&arch), "--backend", "cpu", "--epochs", "3", "--limit", "500", "--out", p(&out)];
    let (code, stdout, err) = gpu_train(&args);
    assert_ne!(code, 0, "{stdout}");
    assert!(err.contains("diverged in epoch 2") && err.contains("last good checkpoint (epoch 1)"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let ck = gpu_train::modelfile::load(&out.with_extension("ckpt.safetensors"), None).unwrap();
    assert_eq!(ck.train.unwrap().progress.epoch, 1);
    assert!(ck.params.iter().all(|v| v.is_finite()));
}

#[test]
fn bench_prints_one_json_line_and_presets_list() {
    let (code, out, err) =
        gpu_train(&["bench", "--arch", "cnn2", "--batch", "4", "--steps", "3", "--warmup", "1", "--backend", "cpu"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["seconds_per_epoch"].as_f64().unwrap() > 0.0 && v["batch"] == 4);
    let (code, out, _) = gpu_train(&["presets"]);
    assert_eq!(code, 0);
    assert!(out.contains("cnn4 (b12)") && out.contains("a-fc7"));
    let (_, out, _) = gpu_train(&["presets", "cnn4"]);
    assert!(out.contains("name = \"cnn4\""));
    // A model for RGB 32x32 without a data set to match: random pictures, said so.
    let (code, out, err) =
        gpu_train(&["bench", "--arch", "vgg", "--batch", "2", "--steps", "2", "--warmup", "1", "--backend", "cpu"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["data"], "synthetic");
    // The selftest judges the CPU alone when asked.
    let (code, out, err) = gpu_train(&["selftest", "--backend", "cpu", "dense"]);
    assert_eq!(code, 0, "{out}{err}");
    let last = out.lines().last().unwrap_or_default();
    let counts: Vec<usize> = last.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(last.ends_with("cases passed") && counts.len() == 2 && counts[0] == counts[1] && counts[0] >= 15, "{out}");
    assert!(out.contains("cpu~ref") && !out.contains("gpu~"), "{out}");
}

/// `gpu-train presets | head -1`: when the reader goes away, gpu-train stops without a panic
/// message (it dies of SIGPIPE, as Unix filters do). The read end is closed before gpu-train
/// has written anything, so its first write meets the broken pipe. (A process another test
/// thread forks at that moment holds a copy of the read end until it execs, and then the
/// write succeeds: up to three tries, each of which must end quietly.)
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gpu-train"))
            .args(["presets"])
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gpu-train");
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
        if out.status.signal() == Some(libc::SIGPIPE) {
            return;
        }
        statuses.push(out.status);
    }
    panic!("gpu-train never died of SIGPIPE on a closed pipe: {statuses:?}");
}

/// Cooperative matrices (tensor cores): `devices` lists what each adapter offers, `probe` says
/// plainly when nothing is offered and succeeds, `--precision mixed` without them is one line,
/// and bench reports the precision and GEMM path it ran.
#[test]
fn precision_devices_and_probe_without_cooperative_matrices() {
    let (code, out, err) = gpu_train(&["devices"]);
    assert_eq!(code, 0, "{err}");
    let adapters = !out.starts_with("no GPU adapters found");
    if adapters {
        assert!(out.contains("    limits: buffer "), "{out}");
        assert!(out.contains("    shader features: f16 "), "{out}");
        assert!(out.contains("    cooperative matrices"), "{out}");
        assert!(out.contains("    --precision mixed: "), "{out}");
    }
    let (code, out, err) = gpu_train(&["probe"]);
    assert_eq!(code, 0, "{out}{err}");
    let offered = out.contains("cooperative GEMM cases passed");
    if adapters && !offered {
        assert!(out.contains("configurations: none") || out.contains("not probed: "), "{out}");
        assert!(out.contains("--precision mixed is unavailable here"), "{out}");
    }
    if !offered {
        let want = if adapters { "offers no cooperative matrices" } else { "no GPU adapter" };
        fails_with(&["bench", "--arch", "mlp", "--steps", "1", "--warmup", "0", "--precision", "mixed"], want);
        fails_with(&["--arch", "mlp", "--epochs", "1", "--limit", "16", "--precision", "mixed"], want);
    }
    fails_with(
        &["bench", "--arch", "mlp", "--precision", "mixed", "--backend", "cpu"],
        "the CPU backend computes in f32",
    );
    fails_with(&["bench", "--arch", "mlp", "--precision", "half"], "invalid value 'half'");
    let (code, out, err) =
        gpu_train(&["bench", "--arch", "mlp", "--batch", "4", "--steps", "2", "--warmup", "1", "--backend", "cpu"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["precision"].as_str(), v["path"].as_str()), (Some("f32"), Some("cpu f32")), "{out}");
}
