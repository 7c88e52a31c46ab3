//! A model saved by PyTorch (tests/fixtures, made by make_torch_fixture.py from a
//! torch.nn.Sequential with conv, batch norm, relu, pool, dropout, flatten, dense and tanh)
//! loads with the same layer list and gives PyTorch's eval-mode outputs. The other direction
//! (our files into torch with strict=True) is checked by bench/torch_compat.py, which needs
//! torch.

mod common;

use common::*;
use gpu_train::cpu::CpuBackend;
use gpu_train::data;
use gpu_train::evaluate;
use gpu_train::model::presets;
use gpu_train::modelfile;

#[test]
fn pytorch_state_dict_loads_and_gives_the_same_outputs() {
    let dir = repo().join("tests/fixtures");
    let spec = presets::load(dir.join("torch_small.toml").to_str().unwrap()).unwrap();
    let model = modelfile::load(&dir.join("torch_small.safetensors"), Some(spec)).unwrap();
    let test = data::load_dir(&mnist_dir()).unwrap().1.take(4);
    let ours = pollster::block_on(evaluate::score(&mut CpuBackend::new(), &model, "torch", &test)).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("torch_small.json")).unwrap()).unwrap();
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
    assert_close("probabilities of the PyTorch model", &ours.scores, &probs, 1e-5, 1e-4);
    // A file with one tensor too many is refused, as torch's strict loading would.
    let spec = presets::load("mlp").unwrap();
    let err = modelfile::load(&dir.join("torch_small.safetensors"), Some(spec)).unwrap_err().to_string();
    assert!(err.contains("does not match") || err.contains("shape"), "{err}");
}
