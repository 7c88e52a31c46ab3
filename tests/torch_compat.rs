//! Models saved by PyTorch (tests/fixtures, made by make_torch_fixture.py from a
//! torch.nn.Sequential with conv, batch norm, relu, pool, dropout, flatten, dense and tanh,
//! and from one with residual blocks, gelu, silu, leaky relu and average pooling) load with the
//! same layer list and give PyTorch's eval-mode outputs; the files gpu-train writes for those
//! layer lists hold exactly the tensors, by name and shape, of PyTorch's state dict, which is
//! what `load_state_dict(strict=True)` holds a file to. bench/torch_compat.py runs both
//! directions through torch itself (it needs torch, which CI does not install).

use crate::common::*;
use gpu_train::cpu::CpuBackend;
use gpu_train::data;
use gpu_train::evaluate;
use gpu_train::model::presets;
use gpu_train::modelfile;

/// The fixture `name`'s (model file, PyTorch's JSON record).
fn fixture(name: &str, toml: &str) -> (gpu_train::modelfile::Loaded, serde_json::Value) {
    let dir = repo().join("tests/fixtures");
    let spec = presets::load(dir.join(toml).to_str().unwrap()).unwrap();
    let model = modelfile::load(&dir.join(format!("{name}.safetensors")), Some(spec)).unwrap();
    let expected = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    (model, expected)
}

/// PyTorch's logits for the first four MNIST test images against our probabilities for them.
fn same_outputs(what: &str, model: &gpu_train::modelfile::Loaded, expected: &serde_json::Value) {
    let test = data::load_dir(&mnist_dir()).unwrap().1.take(4);
    let ours = pollster::block_on(evaluate::score(&mut CpuBackend::new(), model, "torch", &test)).unwrap();
    let logits: Vec<f64> = expected["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // PyTorch's logits through a softmax, row by row, to compare with our probabilities.
    let probs: Vec<f32> = logits
        .chunks(10)
        .flat_map(|z| {
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / s) as f32)
        })
        .collect();
    assert_close(&format!("probabilities of the PyTorch model {what}"), &ours.scores, &probs, 1e-5, 1e-4);
}

/// What gpu-train writes for `model`'s layers: (name, shape) per tensor, as PyTorch's state
/// dict lists them.
fn written(model: &gpu_train::modelfile::Loaded) -> std::collections::BTreeMap<String, Vec<usize>> {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ours.safetensors");
    let m = model;
    modelfile::save(&path, &m.arch, &m.params, &m.state, Default::default(), None).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(name, t)| (name, t.shape().to_vec())).collect()
}

fn torch_state_dict(expected: &serde_json::Value) -> std::collections::BTreeMap<String, Vec<usize>> {
    let sd = expected["state_dict"].as_object().unwrap();
    sd.iter()
        .map(|(k, v)| (k.clone(), v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
        .collect()
}

#[test]
fn pytorch_state_dict_loads_and_gives_the_same_outputs() {
    let (model, expected) = fixture("torch_small", "torch_small.toml");
    same_outputs("torch_small", &model, &expected);
    assert_eq!(written(&model), torch_state_dict(&expected), "our tensors are PyTorch's state dict's");
    let dir = repo().join("tests/fixtures");
    // A file with one tensor too many is refused, as torch's strict loading would.
    let spec = presets::load("mlp").unwrap();
    let err = modelfile::load(&dir.join("torch_small.safetensors"), Some(spec)).unwrap_err().to_string();
    assert!(err.contains("does not match") || err.contains("shape"), "{err}");
}

/// Residual blocks: PyTorch's `Residual(body, shortcut)` modules (nested too) name their
/// tensors `{i}.body.{j}.*` and `{i}.shortcut.{j}.*`, an identity shortcut none; its state dict
/// loads and gives PyTorch's outputs (gelu, silu, leaky relu, average and global pooling), and
/// ours are exactly its names and shapes.
#[test]
fn pytorch_residual_modules_load_both_ways() {
    let (model, expected) = fixture("torch_residual", "residual_small.toml");
    same_outputs("with residual blocks", &model, &expected);
    let ours = written(&model);
    assert!(ours.contains_key("3.body.0.weight") && ours.contains_key("5.shortcut.1.running_var"), "{ours:?}");
    assert!(ours.contains_key("5.body.2.body.0.bias"), "a nested block's names: {ours:?}");
    assert_eq!(ours, torch_state_dict(&expected), "our tensors are PyTorch's state dict's");
    // Against a layer list whose shortcut has no batch norm, the file has tensors too many: it
    // is refused, as strict loading would.
    let dir = repo().join("tests/fixtures");
    let mut spec = presets::load(dir.join("residual_small.toml").to_str().unwrap()).unwrap();
    let gpu_train::model::LayerSpec::Residual { shortcut, .. } = &mut spec.layers[5] else { panic!("layer 5") };
    shortcut.truncate(1);
    let err = modelfile::load(&dir.join("torch_residual.safetensors"), Some(spec)).unwrap_err().to_string();
    assert!(err.contains("5.shortcut.1") || err.contains("does not match"), "{err}");
}
