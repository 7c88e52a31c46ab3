//! ONNX export checked by runtimes no one here wrote: onnx's checker (full_check, which infers
//! every shape) and onnxruntime, both from PyPI, run by tests/onnx_check.py. Every preset's
//! export, logits and `--softmax`, agrees with gpu-train's CPU backend on 100 MNIST test
//! images (shipped weights where models/ has a file for the preset, else a seeded
//! initialisation); so do a model with non-trivial input normalisation, one with awkward
//! convolutions and batch norm after a conv and after a dense layer, and PyTorch's own fixture
//! model (against PyTorch's logits too). The files declare opset 13, a dynamic batch and the
//! metadata; `gpu-train export` of a shipped model scores its recorded accuracy on all 10,000
//! test images under bench/onnx_eval.py; bad input ends in one line.
//!
//! Without python3 and its numpy, onnx and onnxruntime (`pip install onnx onnxruntime numpy`,
//! as .ci/run does; GPU_TRAIN_PYTHON names another interpreter) the runtime checks skip,
//! unless CI=true, where they fail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use gpu_train::cpu::CpuBackend;
use gpu_train::data::{self, Dataset};
use gpu_train::evaluate;
use gpu_train::export;
use gpu_train::model::spec::Loss;
use gpu_train::model::spec::Normalize;
use gpu_train::model::{Arch, Layer, presets};
use gpu_train::modelfile::{self, Loaded};
use serde_json::Value;

/// |onnxruntime - ours| <= ATOL + RTOL |ours|, element by element. Both sides compute in f32
/// but sum in different orders (onnxruntime's convolution and GEMM kernels, our direct and
/// im2col ones), and onnxruntime's graph optimisations may fold a batch norm into the
/// convolution before it: rounding differences of ~1e-7 relative per sum, compounded through
/// up to seven layers. The largest logits here are about 40 (80 for cnn4 fed normalised
/// inputs it was not trained on) and the largest difference measured 1.9e-5 (cnn2's logits;
/// 1.2e-6 for probabilities): 1e-4 leaves a margin of 5x and still catches small slips
/// (batch norm's default epsilon 1e-5 in place of the awkward model's 1e-3 moves its logits
/// by 5e-4; swapped paddings already fail onnx's shape check).
const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-5;
/// Test images per model.
const IMAGES: usize = 100;
/// The first images run again on their own: the batch dimension is dynamic.
const SMALL: usize = 3;

/// The Python interpreter with numpy, onnx and onnxruntime, or None (skip) outside CI.
fn python() -> Option<String> {
    python_with("numpy, onnx, onnxruntime", "pip install onnx onnxruntime numpy")
}

/// One exported model and what onnxruntime must give: `want` for all images, and optionally
/// rows from elsewhere (PyTorch) for the first few.
struct Case {
    name: String,
    model: Loaded,
    softmax: bool,
    want: Vec<f32>,
    also: Option<(&'static str, Vec<f32>)>,
}

fn mnist_test(n: usize) -> Dataset {
    data::load_dir(&mnist_dir()).unwrap().1.take(n)
}

fn loaded(arch: Arch, params: Vec<f32>, state: Vec<f32>) -> Loaded {
    Loaded { arch, params, state, metadata: HashMap::new(), train: None }
}

/// The shipped model of a preset (models/NAME.safetensors, or its seed 1), else a seeded
/// initialisation with every batch norm's statistics and affine made non-trivial.
fn preset_model(name: &str) -> Loaded {
    let models = repo().join("models");
    for file in [format!("{name}.safetensors"), format!("{name}-s1.safetensors")] {
        if models.join(&file).is_file() {
            return modelfile::load(&models.join(file), None).unwrap();
        }
    }
    let arch = Arch::new(presets::load(name).unwrap()).unwrap();
    let (params, state) = arch.init(arch.recipe().init, 7);
    let mut m = loaded(arch, params, state);
    randomize_batch_norm(&mut m, 11);
    m
}

/// gamma in [0.5, 1.5), beta and running mean in [-0.5, 0.5), running variance in [0.5, 2):
/// batch norm then moves every value, so a wrong input order or epsilon shows.
fn randomize_batch_norm(m: &mut Loaded, seed: u64) {
    for (i, layer) in m.arch.layers.iter().enumerate() {
        if let Layer::BatchNorm(bn) = layer {
            let s = seed + 10 * i as u64;
            m.params[bn.gamma_off..][..bn.c].copy_from_slice(&uniform(s, bn.c, 0.5, 1.5));
            m.params[bn.beta_off..][..bn.c].copy_from_slice(&uniform(s + 1, bn.c, -0.5, 0.5));
            m.state[bn.mean_off..][..bn.c].copy_from_slice(&uniform(s + 2, bn.c, -0.5, 0.5));
            m.state[bn.var_off..][..bn.c].copy_from_slice(&uniform(s + 3, bn.c, 0.5, 2.0));
        }
    }
}

/// gpu-train's logits and, for cross-entropy models, its probabilities, as two cases.
fn cases_for(name: &str, model: Loaded, images: &Dataset) -> Vec<Case> {
    let mut cpu = CpuBackend::new();
    let logits = pollster::block_on(evaluate::logits(&mut cpu, &model, name, images)).unwrap();
    let mut cases = Vec::new();
    if model.arch.recipe().loss == Loss::CrossEntropy {
        let probs = pollster::block_on(evaluate::score(&mut cpu, &model, name, images)).unwrap().scores;
        cases.push(Case {
            name: format!("{name}.softmax"),
            model: model.clone(),
            softmax: true,
            want: probs,
            also: None,
        });
    } else {
        let err = export::export(&model, true).unwrap_err().to_string();
        assert!(err.contains("mse") && err.contains("--softmax"), "{name}: {err}");
    }
    cases.push(Case { name: name.to_string(), model, softmax: false, want: logits, also: None });
    cases
}

/// Exports every case into `dir`, runs them all through tests/onnx_check.py in one Python
/// process, and compares onnxruntime's outputs with ours; returns what each file declares.
fn check_with_onnxruntime(py: &str, dir: &Path, images: &Dataset, cases: &[Case]) -> HashMap<String, Value> {
    let x: Vec<u8> = images.images.iter().flat_map(|&p| (p as f32 / 255.0).to_le_bytes()).collect();
    let input = dir.join("input.f32");
    std::fs::write(&input, x).unwrap();
    let shape = [images.len(), images.channels, images.height, images.width];
    let mut manifest = Vec::new();
    for case in cases {
        let model = dir.join(format!("{}.onnx", case.name));
        export::write(&case.model, &model, case.softmax).unwrap();
        manifest.push(serde_json::json!({
            "name": case.name, "model": model, "input": input, "shape": shape,
            "output": dir.join(format!("{}.out.f32", case.name)), "small": SMALL,
        }));
    }
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::json!({ "cases": manifest }).to_string()).unwrap();
    let out = Command::new(py).arg(repo().join("tests/onnx_check.py")).arg(&manifest_path).output().unwrap();
    assert!(out.status.success(), "onnx_check.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let results: HashMap<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.result.json")).unwrap()).unwrap();
    let read = |p: PathBuf| -> Vec<f32> {
        std::fs::read(p).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    for case in cases {
        let r = &results[&case.name];
        assert!(r["error"].is_null(), "{}: {}", case.name, r["error"]);
        let k = case.model.arch.classes();
        let output = if case.softmax { "probabilities" } else { "logits" };
        assert_eq!(
            r["inputs"],
            serde_json::json!([{ "name": "input", "shape": ["N", images.channels, images.height, images.width], "type": "tensor(float)" }])
        );
        assert_eq!(r["outputs"], serde_json::json!([{ "name": output, "shape": ["N", k], "type": "tensor(float)" }]));
        assert_eq!(r["opset"], serde_json::json!([["", 13]]), "{}", case.name);
        assert_eq!(r["ir_version"], 7, "{}", case.name);
        let got = read(dir.join(format!("{}.out.f32", case.name)));
        let max_err = got.iter().zip(&case.want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        let max_want = case.want.iter().map(|w| w.abs()).fold(0f32, f32::max);
        let ops = r["ops"].as_array().map_or(0, Vec::len);
        eprintln!(
            "{:<24} {ops:>2} ops, largest |output| {max_want:>8.3}, max |onnxruntime - gpu-train| {max_err:.2e}",
            case.name
        );
        assert_close(&format!("{}: onnxruntime against gpu-train", case.name), &got, &case.want, ATOL, RTOL);
        let small = read(dir.join(format!("{}.out.f32.small", case.name)));
        assert_close(
            &format!("{}: batch of {SMALL} against batch of {}", case.name, images.len()),
            &small,
            &got[..SMALL * k],
            ATOL,
            RTOL,
        );
        if let Some((what, rows)) = &case.also {
            assert_close(&format!("{}: onnxruntime against {what}", case.name), &got[..rows.len()], rows, ATOL, RTOL);
        }
    }
    results
}

#[test]
fn every_preset_agrees_with_onnxruntime() {
    let Some(py) = python() else { return };
    let images = mnist_test(IMAGES);
    let mut cases = Vec::new();
    let mut colour = Vec::new();
    for p in presets::PRESETS {
        let mut m = preset_model(p.name);
        if m.arch.spec.input == [1, 28, 28] {
            cases.extend(cases_for(p.name, m, &images));
        } else {
            // Colour presets (normalize = "auto" is resolved when training): per-channel
            // values, so the Sub and Div constants are checked channel by channel.
            m.arch.spec.train.normalize = Normalize::values(vec![0.49, 0.48, 0.45], vec![0.25, 0.24, 0.26]);
            colour.push((p.name, m));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let results = check_with_onnxruntime(&py, tmp.path(), &images, &cases);
    assert!(!colour.is_empty(), "the RGB presets");
    for (name, m) in colour {
        let [c, h, w] = m.arch.spec.input;
        let pictures = Dataset {
            images: uniform(3, IMAGES * c * h * w, 0.0, 256.0).iter().map(|&v| v as u8).collect(),
            labels: (0..IMAGES as u32).map(|i| i % 10).collect(),
            channels: c,
            height: h,
            width: w,
            classes: data::numbered_classes(m.arch.classes()),
        };
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        check_with_onnxruntime(&py, &dir, &pictures, &cases_for(name, m, &pictures));
    }
    // The shipped cnn4 carries its class names, shape, normalisation, metrics and model file.
    let r = &results["cnn4"];
    let cnn4 = modelfile::load(&repo().join("models/cnn4.safetensors"), None).unwrap();
    let meta = &r["metadata"];
    assert_eq!(meta["classes"], r#"["0","1","2","3","4","5","6","7","8","9"]"#);
    assert_eq!(meta["input_shape"], "[1,28,28]");
    assert_eq!(meta["output"], "logits");
    assert_eq!(meta["metrics"].as_str(), cnn4.metadata.get("metrics").map(String::as_str));
    let norm: Value = serde_json::from_str(meta["normalization"].as_str().unwrap()).unwrap();
    assert_eq!((&norm["mean"], &norm["std"]), (&serde_json::json!([0.0]), &serde_json::json!([1.0])));
    assert_eq!(presets::parse(meta["model"].as_str().unwrap(), "metadata").unwrap(), cnn4.arch.spec);
    assert_eq!(r["producer"], serde_json::json!(["gpu-train", env!("CARGO_PKG_VERSION")]));
    assert!(r["doc"].as_str().unwrap().contains("pixel values / 255"), "{}", r["doc"]);
    // No normalisation nodes where there is nothing to normalise; dropout leaves no node.
    assert_eq!(r["ops"].as_array().unwrap()[0], "Conv");
    assert!(!r["ops"].as_array().unwrap().iter().any(|op| op == "Dropout"));
}

/// A model with awkward convolutions: a 5x3 kernel with stride 2, padding 2 rows and 1 column
/// and no bias; a 2x4 one with padding only in width, its channels in two groups (ONNX Conv's
/// `group`); a pool with stride 2 over 3x3 windows;
/// batch norm after a conv and after a dense layer; every activation; and the input
/// normalised with mean 0.1307, std 0.3081.
const AWKWARD: &str = r#"
name = "awkward"
input = [1, 28, 28]
layers = [
  { type = "conv2d", filters = 6, kernel = [5, 3], stride = 2, padding = [2, 1], bias = false },
  { type = "batch_norm", eps = 1e-3 },
  { type = "relu" },
  { type = "max_pool2d", size = 3, stride = 2 },
  { type = "conv2d", filters = 8, kernel = [2, 4], padding = [0, 2], groups = 2 },
  { type = "sigmoid" },
  { type = "dropout", p = 0.3 },
  { type = "flatten" },
  { type = "dense", units = 24, bias = false },
  { type = "batch_norm" },
  { type = "tanh" },
  { type = "dense", units = 10 },
]
[train]
normalize = { mean = 0.1307, std = 0.3081 }
"#;

#[test]
fn normalisation_awkward_convolutions_and_a_pytorch_model_agree_with_onnxruntime() {
    let Some(py) = python() else { return };
    let images = mnist_test(IMAGES);
    let mut cases = Vec::new();
    // The shipped cnn4's weights with its inputs normalised: Sub and Div nodes in the graph.
    let mut cnn4 = modelfile::load(&repo().join("models/cnn4.safetensors"), None).unwrap();
    cnn4.arch.spec.train.normalize = gpu_train::model::spec::Normalize::values(vec![0.1307], vec![0.3081]);
    cases.extend(cases_for("cnn4-normalized", cnn4, &images));
    let arch = Arch::new(presets::parse(AWKWARD, "awkward").unwrap()).unwrap();
    let (params, state) = arch.init(arch.recipe().init, 3);
    let mut awkward = loaded(arch, params, state);
    randomize_batch_norm(&mut awkward, 5);
    cases.extend(cases_for("awkward", awkward, &images));
    // PyTorch's fixtures (tests/torch_compat.rs): onnxruntime against PyTorch's logits as
    // well, for plain layers and for residual blocks with gelu, silu, leaky relu and pooling.
    let dir = repo().join("tests/fixtures");
    for (name, toml, fixture) in [
        ("torch-small", "torch_small.toml", "torch_small"),
        ("torch-residual", "residual_small.toml", "torch_residual"),
    ] {
        let spec = presets::load(dir.join(toml).to_str().unwrap()).unwrap();
        let torch = modelfile::load(&dir.join(format!("{fixture}.safetensors")), Some(spec)).unwrap();
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{fixture}.json"))).unwrap()).unwrap();
        let torch_logits = expected["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let mut torch_cases = cases_for(name, torch, &images);
        let logits = torch_cases.iter_mut().find(|c| !c.softmax).unwrap();
        logits.also = Some(("PyTorch", torch_logits));
        cases.extend(torch_cases);
    }
    let tmp = tempfile::tempdir().unwrap();
    let results = check_with_onnxruntime(&py, tmp.path(), &images, &cases);
    let ops = |name: &str| {
        results[name]["ops"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(ops("cnn4-normalized")[..3], ["Sub", "Div", "Conv"]);
    assert_eq!(
        ops("awkward.softmax"),
        [
            "Sub",
            "Div",
            "Conv",
            "BatchNormalization",
            "Relu",
            "MaxPool",
            "Conv",
            "Sigmoid",
            "Flatten",
            "Gemm",
            "BatchNormalization",
            "Tanh",
            "Gemm",
            "Softmax"
        ]
    );
    // Residual blocks: each block's ops, then an Add; gelu in opset 13 terms, silu as x
    // sigmoid(x).
    let res = ops("torch-residual");
    for op in ["Add", "AveragePool", "GlobalAveragePool", "Erf", "LeakyRelu", "Sigmoid", "Mul", "Div"] {
        assert!(res.iter().any(|o| o == op), "no {op} in {res:?}");
    }
    assert_eq!(res.iter().filter(|o| *o == "Add").count(), 5 + 1, "five blocks' sums and gelu's 1 + erf: {res:?}");
    let norm: Value = serde_json::from_str(results["awkward"]["metadata"]["normalization"].as_str().unwrap()).unwrap();
    assert_eq!(norm["mean"][0].as_f64().unwrap() as f32, 0.1307);
    assert_eq!(norm["std"][0].as_f64().unwrap() as f32, 0.3081);
}

/// Runs the binary from the repository root: (exit code, stdout, stderr).
fn gpu_train(args: &[&str]) -> (i32, String, String) {
    gpu_train_cmd(args)
}

#[test]
fn cli_export_of_a_shipped_model_scores_its_recorded_accuracy_in_onnxruntime() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cnn6-s1.onnx");
    let (code, stdout, stderr) = gpu_train(&["export", "--model", "models/cnn6-s1.safetensors", "--onnx", p(&out)]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with(&format!("wrote {}: ONNX opset 13, 18 nodes", out.display())), "{stdout}");
    // Written under a temporary name and renamed: nothing else is left beside it.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [out.file_name().unwrap()]);
    let Some(py) = python() else { return };
    let run = Command::new(py).arg(repo().join("bench/onnx_eval.py")).arg(&out).output().unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{text}{}", String::from_utf8_lossy(&run.stderr));
    assert!(text.contains("accuracy 99.70% (9970/10000") && text.contains("matches"), "{text}");
}

/// Asserts a failure reported as exactly one "error: ..." line containing `want`.
fn fails_with(args: &[&str], want: &str) {
    let line = one_line_error(args);
    assert!(line.contains(want), "{args:?}: expected '{want}' in: {line}");
}

#[test]
fn bad_input_gives_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.onnx");
    let export = |model: &Path, extra: &[&str], want: &str| {
        let mut args = vec!["export", "--model", p(model), "--onnx", p(&out)];
        args.extend(extra);
        fails_with(&args, want);
    };
    // Not a model file of ours: missing, not safetensors, PyTorch's without --arch.
    export(&tmp.path().join("none.safetensors"), &[], "none.safetensors");
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    export(&junk, &[], "not a valid safetensors file");
    let torch = repo().join("tests/fixtures/torch_small.safetensors");
    export(&torch, &[], "pass --arch");
    export(&torch, &["--arch", "mlp"], "architecture 'mlp' needs");
    // --softmax on a model trained with mse: its outputs are not logits.
    let arch = Arch::new(presets::load("b1").unwrap()).unwrap();
    let (params, state) = arch.init(arch.recipe().init, 1);
    let b1 = tmp.path().join("b1.safetensors");
    modelfile::save(&b1, &arch, &params, &state, HashMap::new(), None).unwrap();
    export(&b1, &["--softmax"], "cannot export b1 to ONNX");
    assert!(!out.exists());
    // Unwritable output: under a regular file, or a directory.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let model = repo().join("models/mlp.safetensors");
    fails_with(&["export", "--model", p(&model), "--onnx", p(&file.join("out.onnx"))], "cannot write the ONNX file");
    fails_with(&["export", "--model", p(&model), "--onnx", p(tmp.path())], p(tmp.path()));
    fails_with(&["export", "--model", p(&model)], "--onnx");
    // With --arch, PyTorch's file exports.
    let arch = repo().join("tests/fixtures/torch_small.toml");
    let (code, _, err) = gpu_train(&["export", "--model", p(&torch), "--arch", p(&arch), "--onnx", p(&out)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_file());
}
