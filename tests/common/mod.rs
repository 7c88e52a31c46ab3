//! Helpers shared by the integration tests: seeded random data, finite differences,
//! tolerance checks that report the worst element, and paths to the shipped data.
#![allow(dead_code)]

use std::path::PathBuf;

use gpu_train::rng;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn mnist_dir() -> PathBuf {
    repo().join("data/mnist")
}

/// `n` uniform values in [lo, hi), from a seeded stream.
pub fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = rng::stream(seed, 0xdead, 0);
    (0..n).map(|_| lo + (hi - lo) * rng::unit_f64(&mut r) as f32).collect()
}

/// Values of magnitude in [0.1, 1) with random signs: away from relu's kink at 0.
pub fn away_from_zero(seed: u64, n: usize) -> Vec<f32> {
    uniform(seed, n, 0.1, 1.0)
        .into_iter()
        .zip(uniform(seed + 1, n, 0.0, 1.0))
        .map(|(m, s)| if s < 0.5 { -m } else { m })
        .collect()
}

/// Distinct values (a shuffled ramp with gaps of `gap`): no ties for max-pooling.
pub fn distinct(seed: u64, n: usize, gap: f32) -> Vec<f32> {
    let p = rng::epoch_permutation(seed, 0, n);
    p.iter().map(|&i| (i as f32 - n as f32 / 2.0) * gap).collect()
}

/// Asserts |got - want| <= atol + rtol |want| elementwise; on failure names the worst index.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.1 || !g.is_finite() && w.is_finite() {
            worst = (i, excess.max(f32::MIN_POSITIVE));
        }
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        let max_err = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        panic!(
            "{what}: index {i}: got {}, want {} (atol {atol}, rtol {rtol}; max abs error {max_err} over {} values)",
            got[i],
            want[i],
            got.len()
        );
    }
}

/// Central finite differences of a scalar function at `x`, for the indices in `which`.
pub fn numeric_grad(x: &[f32], which: &[usize], eps: f32, mut f: impl FnMut(&[f32]) -> f64) -> Vec<f32> {
    let mut x = x.to_vec();
    which
        .iter()
        .map(|&i| {
            let orig = x[i];
            x[i] = orig + eps;
            let plus = f(&x);
            x[i] = orig - eps;
            let minus = f(&x);
            x[i] = orig;
            ((plus - minus) / (2.0 * eps as f64)) as f32
        })
        .collect()
}

/// Up to `k` indices spread over 0..n (all of them when n <= k).
pub fn sample_indices(n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    let p = rng::epoch_permutation(99, n, n);
    p[..k].iter().map(|&i| i as usize).collect()
}

/// sum_i r_i y_i in f64: a scalar "loss" whose gradient with respect to y is r.
pub fn dot(r: &[f32], y: &[f32]) -> f64 {
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Whether this is CI (`CI=true`), where a missing tool fails a test instead of skipping it.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A Python interpreter that imports `modules` (comma-separated), or None (skip, with a
/// message) outside CI; `GPU_TRAIN_PYTHON` names another interpreter.
pub fn python_with(modules: &str, install: &str) -> Option<String> {
    let py = std::env::var("GPU_TRAIN_PYTHON").unwrap_or_else(|_| "python3".into());
    let why = match std::process::Command::new(&py).args(["-c", &format!("import {modules}")]).output() {
        Ok(o) if o.status.success() => return Some(py),
        Ok(o) => String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").to_string(),
        Err(e) => e.to_string(),
    };
    let msg = format!("{py} cannot import {modules} ({why}); {install}");
    assert!(!ci(), "CI=true but {msg}");
    eprintln!("skipping: {msg}");
    None
}

/// A path as the &str a command line takes.
pub fn p(path: &std::path::Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs gpu-train with `args`, which must fail as a user should see it: a non-zero exit, no
/// panic or backtrace, and exactly one "error: ..." line on stderr, which comes back.
pub fn one_line_error(args: &[&str]) -> String {
    let (code, out, err) = gpu_train_cmd(args);
    assert_ne!(code, 0, "{args:?} should fail: {out}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {err}");
    lines[0].to_string()
}

/// Runs the gpu-train binary from the repository root: (exit code, stdout, stderr).
pub fn gpu_train_cmd(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-train"))
        .args(args)
        .current_dir(repo())
        .env("CI", "")
        .output()
        .expect("run gpu-train");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
