//! The trained models in models/: each evaluates (CPU backend, all 10,000 test images) to
//! exactly the accuracy recorded in its metadata, the cnn5 ensemble to what the README
//! states, and, where a GPU adapter exists, the GPU backend agrees with the CPU on them.

mod common;

use common::*;
use gpu_train::cpu::CpuBackend;
use gpu_train::data;
use gpu_train::evaluate;
use gpu_train::modelfile;

/// The trained models the README's results table reports.
const SHIPPED: &[&str] = &["mlp", "cnn-a", "fc-b", "cnn2", "cnn4"];

fn shipped() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(repo().join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    v.sort();
    v
}

#[test]
fn shipped_models_evaluate_to_their_recorded_accuracy() {
    let test = data::load_dir(&mnist_dir()).unwrap().1;
    let models = shipped();
    for name in SHIPPED {
        let want = repo().join("models").join(format!("{name}.safetensors"));
        assert!(models.contains(&want), "{} is missing", want.display());
    }
    let mut cnn5 = Vec::new();
    for path in &models {
        let m = modelfile::load(path, None).unwrap();
        let recorded = m.metrics().unwrap()["test_accuracy"].as_f64().unwrap();
        let s = evaluate::score(&mut CpuBackend::new(), &m, "m", &test).unwrap();
        let acc = s.accuracy(&test.labels);
        assert!((acc - recorded).abs() < 1e-9, "{}: evaluates to {acc}, recorded {recorded}", path.display());
        if m.arch.name() == "cnn5" {
            cnn5.push(s);
        }
    }
    if cnn5.len() > 1 {
        let e = evaluate::ensemble(&cnn5, &test.labels).unwrap();
        let err = 1.0 - e.accuracy(&test.labels);
        assert!(err <= 0.0025 + 1e-9, "the cnn5 ensemble's test error is {:.2}%", 100.0 * err);
    }
}

/// GPU (if any) against CPU on the first 200 test images of cnn4 and one cnn5: at most one
/// prediction may differ (a near-tie flipped by a different summation order).
#[test]
fn shipped_models_agree_on_the_gpu() {
    let g = gpu_train::gpu::GpuBackend::new(None);
    let mut g = match g {
        Ok(g) => g,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true but no GPU adapter: {e}"),
        Err(e) => return eprintln!("skipping: {e}"),
    };
    let test = data::load_dir(&mnist_dir()).unwrap().1.take(200);
    for name in ["cnn4", "cnn5-s1"] {
        let path = repo().join("models").join(format!("{name}.safetensors"));
        if !path.exists() {
            continue;
        }
        let m = modelfile::load(&path, None).unwrap();
        let on_gpu = evaluate::score(&mut g, &m, name, &test).unwrap().predictions();
        let on_cpu = evaluate::score(&mut CpuBackend::new(), &m, name, &test).unwrap().predictions();
        let differ = on_gpu.iter().zip(&on_cpu).filter(|(a, b)| a != b).count();
        assert!(differ <= 1, "{name}: {differ} of 200 predictions differ between GPU and CPU");
    }
}
