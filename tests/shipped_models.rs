//! The trained models in models/: each evaluates (CPU backend, all 10,000 test images) to
//! exactly the accuracy recorded in its metadata, the ensembles the README reports to their
//! stated accuracy, and, where a GPU adapter exists, the GPU backend agrees with the CPU.

mod common;

use common::*;
use gpu_train::cpu::CpuBackend;
use gpu_train::data;
use gpu_train::evaluate;
use gpu_train::modelfile;

/// The trained models the README's results table reports.
const SHIPPED: &[&str] = &[
    "mlp",
    "cnn-a",
    "fc-b",
    "cnn2",
    "cnn3",
    "cnn4",
    "cnn5-s1",
    "cnn5-s2",
    "cnn5-s3",
    "cnn5-s4",
    "cnn5-s5",
    "cnn5-e60-s6",
    "cnn5-e60-ema-s6",
    "cnn5-ema-s1",
];

/// The ensembles the README reports (`gpu-train eval --model A --model B ...`): members and
/// the test accuracy of their averaged probabilities.
const ENSEMBLES: &[(&[&str], f64)] = &[
    (&["cnn4", "cnn5-s1"], 0.9970),
    (&["cnn5-s1", "cnn5-s2", "cnn5-s3", "cnn5-s4", "cnn5-s5"], 0.9969),
    (&["cnn4", "cnn5-s1", "cnn5-s2", "cnn5-s3", "cnn5-s4", "cnn5-s5"], 0.9971),
    (&["cnn5-s1", "cnn5-s2", "cnn5-s3", "cnn5-s4", "cnn5-s5", "cnn5-e60-s6"], 0.9967),
    (&["cnn4", "cnn5-s1", "cnn5-s2", "cnn5-s3", "cnn5-s4", "cnn5-s5", "cnn5-e60-s6"], 0.9971),
    (&["cnn5-s1", "cnn5-s2", "cnn5-s3", "cnn5-s4", "cnn5-s5", "cnn5-e60-ema-s6"], 0.9968),
    (&["cnn4", "cnn5-s1", "cnn5-s2", "cnn5-s3", "cnn5-s4", "cnn5-s5", "cnn5-e60-ema-s6"], 0.9971),
    (&["cnn5-ema-s1", "cnn5-s2", "cnn5-s3", "cnn5-s4", "cnn5-s5", "cnn5-e60-ema-s6"], 0.9969),
    (&["cnn4", "cnn5-ema-s1", "cnn5-s2", "cnn5-s3", "cnn5-s4", "cnn5-s5", "cnn5-e60-ema-s6"], 0.9970),
];

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
    let mut scores = std::collections::HashMap::new();
    for path in &models {
        let m = modelfile::load(path, None).unwrap();
        let recorded = m.metrics().unwrap()["test_accuracy"].as_f64().unwrap();
        let s = evaluate::score(&mut CpuBackend::new(), &m, "m", &test).unwrap();
        let acc = s.accuracy(&test.labels);
        assert!((acc - recorded).abs() < 1e-9, "{}: evaluates to {acc}, recorded {recorded}", path.display());
        scores.insert(path.file_stem().unwrap().to_string_lossy().into_owned(), s);
    }
    for (members, stated) in ENSEMBLES {
        let s: Vec<_> = members.iter().map(|m| scores[*m].clone()).collect();
        let acc = evaluate::ensemble(&s, &test.labels).unwrap().accuracy(&test.labels);
        assert!((acc - stated).abs() < 1e-9, "ensemble {members:?}: accuracy {acc}, the README states {stated}");
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
