//! `gpu-train probe`: what cooperative-matrix configurations an adapter offers and, where one
//! suits the kernel, a few awkward products on it against an f64 host product.
//!
//! Tolerance, per output element c_ij = sum_k a_ik b_kj with S_ij = sum_k |a_ik b_kj|:
//! - each operand is rounded to the operand type once: |a' - a| <= u |a|, u = 2^-10 (one f16
//!   ulp relative: WGSL leaves the rounding of f32 -> f16 to the implementation, so either
//!   neighbour is allowed, not only the nearest at 2^-11). The same u is allowed for f32
//!   operands, in case the unit multiplies them at TF32-like precision (10-bit mantissa);
//! - so each product is off by at most (2u + u^2) |a b| (f16 x f16 is exact in f32);
//! - the K products are summed in f32 in an order and with internal alignment the hardware
//!   chooses (tensor cores may truncate): allowed K * 2^-21 S, i.e. two f32 ulps of S per
//!   term, which also covers the final rounding.
//!
//! |gpu - exact| <= (2u + u^2 + K 2^-21) S_ij, plus the smallest normal f32 for S_ij = 0.
//! For K = 300 that is 2.1e-3 S: rounding alone (random signs) stays near u sqrt(K) |a b|, far
//! below; a wrong layout, stride or padding errs by O(S). The inputs lie in +-[0.25, 1), full
//! f32 mantissas (so the rounding happens) and no f16 subnormals. Each case also reports its
//! distance from the product of the operands rounded to nearest f16 on the host, relative to
//! S: near 1e-7 when the device rounds to nearest and sums in f32.

use super::{CoopParams, choose, describe_property, offered};
use crate::backend::Backend;
use crate::gpu::{GpuBackend, GpuBuf};
use crate::rng;

/// One product: its shape, how its operands are stored, and how far it came out.
#[derive(Debug, Clone)]
pub struct Case {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A stored as its transpose (K x M) and B as its transpose (N x K): the strided reads
    /// of the dense layers' forward and weight-gradient products.
    pub transposed: bool,
    pub max_err: f64,
    /// Largest |gpu - exact| / tolerance (passes at <= 1).
    pub worst_ratio: f64,
    /// Largest |gpu - f16-rounded product| / S.
    pub vs_rounded: f64,
    /// Worst element: (index, gpu, exact, tolerance).
    pub worst: (usize, f32, f64, f64),
    pub error: Option<String>,
}

impl Case {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.worst_ratio <= 1.0
    }

    pub fn line(&self) -> String {
        let shape = format!(
            "{}x{}x{}{}",
            self.m,
            self.n,
            self.k,
            if self.transposed { " (A, B stored transposed)" } else { "" }
        );
        if let Some(e) = &self.error {
            return format!("  FAIL {shape:<34} {e}");
        }
        let (i, got, want, tol) = self.worst;
        format!(
            "  {} {shape:<34} max |gpu-exact| {:.2e}, {:.2} of the tolerance (worst [{i}] {got} vs {want:.7}, tol {tol:.1e}); \
             vs f16-rounded operands {:.1e} S",
            if self.passed() { "ok  " } else { "FAIL" },
            self.max_err,
            self.worst_ratio,
            self.vs_rounded
        )
    }
}

#[derive(Debug, Clone)]
pub enum Outcome {
    /// Nothing to run (the reason, one line): not a failure.
    NotOffered(String),
    /// Offered, but the device or kernel could not be set up.
    Failed(String),
    /// The path used, and each case.
    Ran(String, Vec<Case>),
}

#[derive(Debug, Clone)]
pub struct Report {
    pub adapter: String,
    pub feature: bool,
    pub shader_f16: bool,
    pub subgroup: (u32, u32),
    pub configurations: Vec<String>,
    pub outcome: Outcome,
}

impl Report {
    pub fn passed(&self) -> bool {
        match &self.outcome {
            Outcome::NotOffered(_) => true,
            Outcome::Failed(_) => false,
            Outcome::Ran(_, cases) => cases.iter().all(Case::passed),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut v = vec![format!(
            "cooperative matrices on {}: feature {}, SHADER_F16 {}, subgroup size {}..{}",
            self.adapter,
            yes(self.feature),
            yes(self.shader_f16),
            self.subgroup.0,
            self.subgroup.1
        )];
        if self.configurations.is_empty() {
            v.push("  configurations: none".into());
        }
        v.extend(self.configurations.iter().map(|c| format!("  configuration: {c}")));
        match &self.outcome {
            Outcome::NotOffered(why) => v.push(format!("  not probed: {why}; --precision mixed is unavailable here")),
            Outcome::Failed(why) => v.push(format!("  FAIL: {why}")),
            Outcome::Ran(path, cases) => {
                v.push(format!(
                    "  kernel: {path}, f32 inputs converted on load, f32 sums; against an f64 host product"
                ));
                v.extend(cases.iter().map(Case::line));
                let ok = cases.iter().filter(|c| c.passed()).count();
                v.push(format!("  {ok} of {} cooperative GEMM cases passed", cases.len()));
            }
        }
        v
    }
}

/// (m, n, k, transposed): multiples of the tile, sizes that are not, one row with a long K,
/// and the strided layouts.
const CASES: &[(usize, usize, usize, bool)] =
    &[(64, 64, 64, false), (33, 17, 70, false), (1, 16, 300, false), (37, 29, 45, true), (130, 70, 200, true)];

/// Probes `adapter`: never panics, and succeeds where nothing is offered.
pub fn run(adapter: &wgpu::Adapter) -> Report {
    let info = adapter.get_info();
    let (feature, props) = offered(adapter);
    let mut report = Report {
        adapter: format!("{} ({:?})", info.name, info.backend),
        feature,
        shader_f16: adapter.features().contains(wgpu::Features::SHADER_F16),
        subgroup: (info.subgroup_min_size, info.subgroup_max_size),
        configurations: props.iter().map(describe_property).collect(),
        outcome: Outcome::NotOffered(String::new()),
    };
    if let Err(why) = choose(adapter) {
        report.outcome = Outcome::NotOffered(why);
        return report;
    }
    // The experimental feature is young: whatever wgpu or the driver does, the probe reports
    // instead of taking the process down.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut g = GpuBackend::open_mixed(adapter).map_err(|e| e.to_string())?;
        let path = g.gemm_path();
        let cases = CASES.iter().enumerate().map(|(i, &shape)| run_case(&mut g, i as u64, shape)).collect();
        Ok::<_, String>(Outcome::Ran(path, cases))
    }));
    report.outcome = match run {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed("wgpu panicked while setting up or running the kernel".into()),
    };
    report
}

/// Values in +-[0.25, 1) with full f32 mantissas.
fn operand(seed: u64, len: usize) -> Vec<f32> {
    let mut r = rng::stream(seed, 0xc00b, len as u64);
    (0..len)
        .map(|_| {
            let v = 0.25 + 0.75 * rng::unit_f64(&mut r) as f32;
            if rng::below(&mut r, 2) == 0 { v } else { -v }
        })
        .collect()
}

/// x rounded to the nearest f16 (ties to even), for x in f16's normal range.
fn round_f16(x: f32) -> f32 {
    let bits = x.to_bits();
    let lsb = (bits >> 13) & 1;
    f32::from_bits((bits + 0x0fff + lsb) & !0x1fff)
}

fn run_case(g: &mut GpuBackend, seed: u64, (m, n, k, transposed): (usize, usize, usize, bool)) -> Case {
    let a = operand(2 * seed + 1, m * k);
    let b = operand(2 * seed + 2, k * n);
    // Logical A (i, kk) and B (kk, j), wherever they are stored.
    let a_at = |i: usize, kk: usize| if transposed { a[kk * m + i] } else { a[i * k + kk] };
    let b_at = |kk: usize, j: usize| if transposed { b[j * k + kk] } else { b[kk * n + j] };
    let mut case = Case {
        m,
        n,
        k,
        transposed,
        max_err: 0.0,
        worst_ratio: 0.0,
        vs_rounded: 0.0,
        worst: (0, 0.0, 0.0, 0.0),
        error: None,
    };
    let got = match gpu_product(g, &a, &b, (m, n, k, transposed)) {
        Ok(v) => v,
        Err(e) => {
            case.error = Some(e);
            return case;
        }
    };
    let u = 2f64.powi(-10);
    let rel = 2.0 * u + u * u + k as f64 * 2f64.powi(-21);
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut mag, mut rounded) = (0f64, 0f64, 0f64);
            for kk in 0..k {
                let (x, y) = (a_at(i, kk), b_at(kk, j));
                exact += x as f64 * y as f64;
                mag += (x as f64 * y as f64).abs();
                rounded += round_f16(x) as f64 * round_f16(y) as f64;
            }
            let idx = i * n + j;
            let v = got[idx] as f64;
            let tol = rel * mag + f32::MIN_POSITIVE as f64;
            let err = (v - exact).abs();
            // NaN counts as the worst possible.
            let ratio = if err.is_nan() { f64::INFINITY } else { err / tol };
            case.max_err = case.max_err.max(if err.is_nan() { f64::INFINITY } else { err });
            if ratio > case.worst_ratio || idx == 0 {
                case.worst_ratio = case.worst_ratio.max(ratio);
                case.worst = (idx, got[idx], exact, tol);
            }
            case.vs_rounded = case.vs_rounded.max((v - rounded).abs() / mag.max(f64::MIN_POSITIVE));
        }
    }
    case
}

fn gpu_product(
    g: &mut GpuBackend,
    a: &[f32],
    b: &[f32],
    (m, n, k, transposed): (usize, usize, usize, bool),
) -> Result<Vec<f32>, String> {
    let ga = up(g, a)?;
    let gb = up(g, b)?;
    // NaN where the kernel writes nothing.
    let mut gc = up(g, &vec![f32::NAN; m * n])?;
    if transposed {
        // A (k x m) and B (n x k) in memory, as dense_backward_weight and dense_forward read them.
        let prm = CoopParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            a_rs: 1,
            a_cs: m as u32,
            b_rs: 1,
            b_cs: k as u32,
            c_rs: n as u32,
            batches: 1,
            drop_members: 1,
            drop_len: 1,
            ..Default::default()
        };
        let table = g.no_table();
        g.coop_dispatch([&ga, &gb, &gc, &table], m as u32, n as u32, 1, &prm);
    } else {
        g.coop_gemm(&mut gc, &ga, &gb, m, n, k);
    }
    g.read(&gc, m * n).map_err(|e| e.to_string())
}

fn up(g: &mut GpuBackend, data: &[f32]) -> Result<GpuBuf, String> {
    let mut buf = g.alloc(data.len()).map_err(|e| e.to_string())?;
    g.upload(&mut buf, data).map_err(|e| e.to_string())?;
    Ok(buf)
}
