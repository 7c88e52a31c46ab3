//! The per-kernel parity suite: every GPU op against the CPU reference on seeded random
//! inputs of awkward shapes (batch 1, odd sizes, channel counts that are not multiples of the
//! tile, grids folded past the per-dimension workgroup limit). `gpu-train selftest` prints it
//! as a table; `tests/gpu_parity.rs` asserts it.
//!
//! Agreement is |gpu - cpu| <= atol + rtol |cpu| elementwise. Tolerances, set per case:
//! - exact (0, 0): data movement, masks and max selection, which involve no rounding choices.
//! - 1e-6 + 1e-5 rel: one transcendental per element (exp, tanh) or a short sum; WGSL's
//!   exp/sqrt may differ from the host's by a few ulps.
//! - 1e-4 + 1e-4 rel: products summed over up to ~3000 terms in a different order (GPU tiles
//!   vs. CPU GEMM blocks); the f32 rounding difference grows with the term count.
//! - batch norm 1e-4 + 1e-4 rel: the CPU sums in f64, the GPU in f32 trees.
//! - augmented gather 2e-2 absolute: WGSL's sin/cos are only required to be accurate to
//!   about 2^-11, which moves a sampling point by up to ~0.01 pixel.

use super::GpuBackend;
use crate::backend::{AdamStep, Backend, Epilogue, Gather, SgdStep};
use crate::cpu::CpuBackend;
use crate::data::augment::Augment;
use crate::error::Result;
use crate::model::{Act, BatchNorm, Conv2d, Dense, Pool};
use crate::rng;

/// One case's outcome.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub values: usize,
    pub max_abs_err: f32,
    /// Worst element (index, gpu, cpu) when the case failed.
    pub worst: Option<(usize, f32, f32)>,
    pub error: Option<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.worst.is_none() && self.error.is_none()
    }

    pub fn line(&self) -> String {
        let status = if self.passed() { "pass" } else { "FAIL" };
        let detail = match (&self.error, self.worst) {
            (Some(e), _) => format!("  {e}"),
            (None, Some((i, g, c))) => format!("  worst [{i}]: gpu {g} cpu {c}"),
            _ => String::new(),
        };
        format!("{status}  {:<44} {:>8} values  max |err| {:.2e}{detail}", self.name, self.values, self.max_abs_err)
    }
}

fn compare(name: &str, gpu: &[f32], cpu: &[f32], atol: f32, rtol: f32) -> CaseResult {
    let mut max_abs_err = 0f32;
    let mut worst: Option<(usize, f32, f32, f32)> = None;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = (g - c).abs();
        // NaN on both sides agrees; NaN on one side never does.
        let within = err <= atol + rtol * c.abs();
        let bad = !(within || g.is_nan() && c.is_nan());
        if err.is_finite() {
            max_abs_err = max_abs_err.max(err);
        }
        if bad && worst.is_none_or(|w| err > w.3 || err.is_nan()) {
            worst = Some((i, g, c, err));
        }
    }
    let error = (gpu.len() != cpu.len()).then(|| format!("gpu gave {} values, cpu {}", gpu.len(), cpu.len()));
    CaseResult {
        name: name.to_string(),
        values: cpu.len(),
        max_abs_err,
        worst: worst.map(|(i, g, c, _)| (i, g, c)),
        error,
    }
}

fn random(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = rng::stream(seed, 0x5e1f, n as u64);
    (0..n).map(|_| lo + (hi - lo) * rng::unit_f64(&mut r) as f32).collect()
}

fn conv(
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
) -> Conv2d {
    Conv2d::new(c_in, (h, w), c_out, k, stride, pad, 64, Some(64 + (c_out * c_in * k.0 * k.1).div_ceil(64) * 64))
}

/// Runs the same op on both backends over buffers made from the same host data; `read`
/// names which buffers to compare.
struct Pair<'a> {
    g: &'a mut GpuBackend,
    c: CpuBackend,
}

type GBuf = super::GpuBuf;

impl Pair<'_> {
    fn f32s(&mut self, data: &[f32]) -> Result<(GBuf, Vec<f32>)> {
        let mut b = self.g.alloc(data.len())?;
        self.g.upload(&mut b, data)?;
        Ok((b, data.to_vec()))
    }

    fn u32s(&mut self, data: &[u32]) -> Result<(GBuf, Vec<u32>)> {
        let mut b = self.g.alloc_u32(data.len())?;
        self.g.upload_u32(&mut b, data)?;
        Ok((b, data.to_vec()))
    }

    fn zeros(&mut self, len: usize) -> Result<(GBuf, Vec<f32>)> {
        Ok((self.g.alloc(len)?, vec![0.0; len]))
    }

    fn check(&mut self, name: &str, g: &GBuf, c: &[f32], atol: f32, rtol: f32) -> Result<CaseResult> {
        let got = self.g.download(g, c.len())?;
        Ok(compare(name, &got, c, atol, rtol))
    }

    fn check_u32(&mut self, name: &str, g: &GBuf, c: &[u32]) -> Result<CaseResult> {
        let got: Vec<f32> = self.g.download_u32(g, c.len())?.iter().map(|&v| v as f32).collect();
        let want: Vec<f32> = c.iter().map(|&v| v as f32).collect();
        Ok(compare(name, &got, &want, 0.0, 0.0))
    }
}

const GEMM_TOL: (f32, f32) = (1e-4, 1e-4);
const ULP_TOL: (f32, f32) = (1e-6, 1e-5);

/// Runs every case whose name contains `filter` (all if empty).
pub fn run(g: &mut GpuBackend, filter: &str) -> Vec<CaseResult> {
    let mut out = Vec::new();
    let mut p = Pair { g, c: CpuBackend::new() };
    type Case = fn(&mut Pair) -> Result<Vec<CaseResult>>;
    let cases: &[(&str, Case)] = &[
        ("gather_batch", gather_cases),
        ("conv2d", conv_cases),
        ("dense", dense_cases),
        ("activation", activation_cases),
        ("maxpool", pool_cases),
        ("dropout", dropout_cases),
        ("batchnorm", batchnorm_cases),
        ("loss", loss_cases),
        ("optim", optim_cases),
        ("large grid", folded_grid_cases),
    ];
    for (family, case) in cases {
        if !filter.is_empty() && !family.contains(filter) {
            continue;
        }
        match case(&mut p) {
            Ok(results) => out.extend(results),
            Err(e) => out.push(CaseResult {
                name: family.to_string(),
                values: 0,
                max_abs_err: 0.0,
                worst: None,
                error: Some(e.to_string()),
            }),
        }
    }
    out
}

fn gather_cases(p: &mut Pair) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    for (n, h, w, n_images) in [(3usize, 28usize, 28usize, 5usize), (1, 5, 7, 2), (17, 6, 9, 20)] {
        let bytes: Vec<u8> = random(n as u64, n_images * h * w, 0.0, 256.0).iter().map(|&v| v as u8).collect();
        let packed: Vec<u32> =
            bytes.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |a, (i, &b)| a | (b as u32) << (8 * i))).collect();
        let labels: Vec<u32> = (0..n_images as u32).map(|i| i % 10).collect();
        let perm: Vec<u32> = rng::epoch_permutation(3, 0, n_images).into_iter().collect();
        let (gi, ci) = p.u32s(&packed)?;
        let (gl, cl) = p.u32s(&labels)?;
        let (gp, cp) = p.u32s(&perm)?;
        for aug in [None, Some(Augment { chance: 1.0, zoom: [0.8, 1.2], rotate: 25.0, shift: 0.2 })] {
            let (mut gx, mut cx) = p.zeros(n * h * w)?;
            let (mut gy, mut cy) = (p.g.alloc_u32(n)?, vec![0u32; n]);
            let start = n_images - n;
            let ga = Gather { start, n, height: h, width: w, mean: 0.1307, std: 0.3081, augment: aug.map(|a| (a, 77)) };
            p.g.gather_batch(&mut gx, &mut gy, &gi, &gl, &gp, &ga);
            p.c.gather_batch(&mut cx, &mut cy, &ci, &cl, &cp, &ga);
            let (name, atol) = match aug {
                None => (format!("gather_batch n={n} {h}x{w}"), 1e-6),
                Some(_) => (format!("gather_batch n={n} {h}x{w} augmented"), 2e-2 / 0.3081),
            };
            out.push(p.check(&name, &gx, &cx, atol, 1e-6)?);
            out.push(p.check_u32(&format!("{name} labels"), &gy, &cy)?);
        }
    }
    Ok(out)
}

fn conv_cases(p: &mut Pair) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    let relu_dropout = Epilogue { act: Some(Act::Relu), dropout: Some((0.3, 99)) };
    let cases = [
        (1, conv(1, 28, 28, 16, (5, 5), 1, (2, 2)), Epilogue::act(Some(Act::Relu))),
        (3, conv(3, 7, 5, 5, (3, 3), 2, (1, 1)), Epilogue::act(Some(Act::Tanh))),
        (2, conv(5, 9, 11, 70, (2, 4), 1, (1, 3)), Epilogue::act(Some(Act::Sigmoid))),
        (4, conv(3, 14, 14, 7, (5, 5), 1, (2, 2)), relu_dropout),
        (2, conv(2, 6, 6, 3, (6, 6), 1, (0, 0)), Epilogue::default()),
    ];
    for (i, (n, l, epi)) in cases.into_iter().enumerate() {
        let plen = l.b_off.unwrap() + l.c_out + 7;
        let tag = format!(
            "n={n} {}x{}x{}->{} k{}x{} s{} p{},{}",
            l.c_in, l.h_in, l.w_in, l.c_out, l.kh, l.kw, l.stride, l.pad_h, l.pad_w
        );
        let (gw, cw) = p.f32s(&random(10 + i as u64, plen, -0.5, 0.5))?;
        let (gx, cx) = p.f32s(&random(20 + i as u64, n * l.in_len(), -1.0, 1.0))?;
        let (mut gy, mut cy) = p.zeros(n * l.out_len())?;
        p.g.conv2d_forward(&mut gy, &gx, &gw, &l, n, epi);
        p.c.conv2d_forward(&mut cy, &cx, &cw, &l, n, epi);
        out.push(p.check(&format!("conv2d_forward {tag}"), &gy, &cy, GEMM_TOL.0, GEMM_TOL.1)?);
        let (gd, cd) = p.f32s(&random(30 + i as u64, n * l.out_len(), -1.0, 1.0))?;
        let (mut gdx, mut cdx) = p.zeros(n * l.in_len())?;
        p.g.conv2d_backward_input(&mut gdx, &gd, &gw, &l, n);
        p.c.conv2d_backward_input(&mut cdx, &cd, &cw, &l, n);
        out.push(p.check(&format!("conv2d_backward_input {tag}"), &gdx, &cdx, GEMM_TOL.0, GEMM_TOL.1)?);
        let (mut gg, mut cg) = p.f32s(&vec![7.0; plen])?;
        p.g.conv2d_backward_weight(&mut gg, &gd, &gx, &l, n);
        p.c.conv2d_backward_weight(&mut cg, &cd, &cx, &l, n);
        out.push(p.check(&format!("conv2d_backward_weight {tag}"), &gg, &cg, GEMM_TOL.0, GEMM_TOL.1)?);
    }
    Ok(out)
}

fn dense_cases(p: &mut Pair) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    let relu_dropout = Epilogue { act: Some(Act::Relu), dropout: Some((0.2, 7)) };
    for (i, (n, ni, no, epi)) in [
        (1, 13, 7, Epilogue::act(Some(Act::Sigmoid))),
        (5, 70, 130, relu_dropout),
        (33, 784, 10, Epilogue::default()),
        (3, 3136, 10, Epilogue::act(Some(Act::Tanh))),
        (9, 100, 37, relu_dropout),
    ]
    .into_iter()
    .enumerate()
    {
        let l = Dense { n_in: ni, n_out: no, w_off: 64, b_off: Some(64 + (ni * no).div_ceil(64) * 64) };
        let plen = l.b_off.unwrap() + no + 3;
        let tag = format!("n={n} {ni}->{no}{}", if epi.dropout.is_some() { " +relu+dropout" } else { "" });
        let (gw, cw) = p.f32s(&random(40 + i as u64, plen, -0.5, 0.5))?;
        let (gx, cx) = p.f32s(&random(50 + i as u64, n * ni, -1.0, 1.0))?;
        let (mut gy, mut cy) = p.zeros(n * no)?;
        p.g.dense_forward(&mut gy, &gx, &gw, &l, n, epi);
        p.c.dense_forward(&mut cy, &cx, &cw, &l, n, epi);
        out.push(p.check(&format!("dense_forward {tag}"), &gy, &cy, GEMM_TOL.0, GEMM_TOL.1)?);
        let (gd, cd) = p.f32s(&random(60 + i as u64, n * no, -1.0, 1.0))?;
        let (mut gdx, mut cdx) = p.zeros(n * ni)?;
        p.g.dense_backward_input(&mut gdx, &gd, &gw, &l, n);
        p.c.dense_backward_input(&mut cdx, &cd, &cw, &l, n);
        out.push(p.check(&format!("dense_backward_input {tag}"), &gdx, &cdx, GEMM_TOL.0, GEMM_TOL.1)?);
        let (mut gg, mut cg) = p.f32s(&vec![7.0; plen])?;
        p.g.dense_backward_weight(&mut gg, &gd, &gx, &l, n);
        p.c.dense_backward_weight(&mut cg, &cd, &cx, &l, n);
        out.push(p.check(&format!("dense_backward_weight {tag}"), &gg, &cg, GEMM_TOL.0, GEMM_TOL.1)?);
    }
    Ok(out)
}

fn activation_cases(p: &mut Pair) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    let len = 1001;
    let mut x = random(70, len, -6.0, 6.0);
    x[0] = 0.0;
    x[1] = 90.0;
    x[2] = -90.0;
    for act in [Act::Relu, Act::Sigmoid, Act::Tanh] {
        let (gx, cx) = p.f32s(&x)?;
        let (mut gy, mut cy) = p.zeros(len)?;
        p.g.activation_forward(&mut gy, &gx, len, act);
        p.c.activation_forward(&mut cy, &cx, len, act);
        out.push(p.check(&format!("activation_forward {act:?} len={len}"), &gy, &cy, ULP_TOL.0, ULP_TOL.1)?);
        // The backward from the CPU's outputs on both sides.
        let (gyc, _) = p.f32s(&cy)?;
        let (gd, cd) = p.f32s(&random(71, len, -1.0, 1.0))?;
        let (mut gdx, mut cdx) = p.zeros(len)?;
        p.g.activation_backward(&mut gdx, &gd, &gyc, len, act, 1.25);
        p.c.activation_backward(&mut cdx, &cd, &cy, len, act, 1.25);
        out.push(p.check(&format!("activation_backward {act:?} len={len}"), &gdx, &cdx, ULP_TOL.0, ULP_TOL.1)?);
    }
    Ok(out)
}

fn pool_cases(p: &mut Pair) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    let cases = [
        (2, Pool { c: 3, h_in: 6, w_in: 8, h_out: 3, w_out: 4, size: 2, stride: 2 }),
        (1, Pool { c: 2, h_in: 7, w_in: 5, h_out: 3, w_out: 2, size: 2, stride: 2 }),
        (3, Pool { c: 5, h_in: 7, w_in: 7, h_out: 3, w_out: 3, size: 3, stride: 2 }),
    ];
    for (i, (n, l)) in cases.into_iter().enumerate() {
        let tag = format!("n={n} c={} {}x{} size {} stride {}", l.c, l.h_in, l.w_in, l.size, l.stride);
        // Rounded values make ties, which both sides must break the same way.
        let x: Vec<f32> = random(80 + i as u64, n * l.in_len(), -2.0, 2.0).iter().map(|v| (v * 4.0).round()).collect();
        let (gx, cx) = p.f32s(&x)?;
        let (mut gy, mut cy) = p.zeros(n * l.out_len())?;
        let (mut ga, mut ca) = (p.g.alloc_u32(n * l.out_len())?, vec![0u32; n * l.out_len()]);
        p.g.maxpool_forward(&mut gy, &mut ga, &gx, &l, n);
        p.c.maxpool_forward(&mut cy, &mut ca, &cx, &l, n);
        out.push(p.check(&format!("maxpool_forward {tag}"), &gy, &cy, 0.0, 0.0)?);
        out.push(p.check_u32(&format!("maxpool_forward {tag} argmax"), &ga, &ca)?);
        let (gd, cd) = p.f32s(&random(90 + i as u64, n * l.out_len(), -1.0, 1.0))?;
        let (mut gdx, mut cdx) = p.zeros(n * l.in_len())?;
        p.g.maxpool_backward(&mut gdx, &gd, &ga, &l, n);
        p.c.maxpool_backward(&mut cdx, &cd, &ca, &l, n);
        out.push(p.check(&format!("maxpool_backward {tag}"), &gdx, &cdx, ULP_TOL.0, ULP_TOL.1)?);
    }
    Ok(out)
}

fn dropout_cases(p: &mut Pair) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    for (len, prob, key) in [(1001usize, 0.3f32, 5u32), (7, 0.5, 9), (4096, 0.2, 0xdead_beef)] {
        let (gx, cx) = p.f32s(&random(100, len, -1.0, 1.0))?;
        let (mut gy, mut cy) = p.zeros(len)?;
        p.g.dropout_forward(&mut gy, &gx, len, prob, key);
        p.c.dropout_forward(&mut cy, &cx, len, prob, key);
        out.push(p.check(&format!("dropout_forward len={len} p={prob}"), &gy, &cy, 0.0, 0.0)?);
        let (mut gdx, mut cdx) = p.zeros(len)?;
        p.g.dropout_backward(&mut gdx, &gx, len, prob, key);
        p.c.dropout_backward(&mut cdx, &cx, len, prob, key);
        out.push(p.check(&format!("dropout_backward len={len} p={prob}"), &gdx, &cdx, 0.0, 0.0)?);
    }
    Ok(out)
}

fn batchnorm_cases(p: &mut Pair) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    for (i, (n, c, hw)) in [(4usize, 3usize, 10usize), (1, 5, 49), (7, 300, 1)].into_iter().enumerate() {
        let l = BatchNorm { c, hw, eps: 1e-5, momentum: 0.1, gamma_off: 0, beta_off: 320, mean_off: 0, var_off: 320 };
        let tag = format!("n={n} c={c} hw={hw}");
        let mut params = random(110 + i as u64, 640, 0.5, 1.5);
        params[320..].copy_from_slice(&random(111 + i as u64, 320, -0.5, 0.5));
        let (gp, cp) = p.f32s(&params)?;
        let (gx, cx) = p.f32s(&random(112 + i as u64, n * c * hw, -2.0, 3.0))?;
        let mut state0 = vec![0.0f32; 640];
        state0[320..].fill(1.0);
        let (mut gs, mut cs) = p.f32s(&state0)?;
        let (mut gsv, mut csv) = p.zeros(2 * c)?;
        let (mut gy, mut cy) = p.zeros(n * c * hw)?;
        for train in [true, false] {
            p.g.batchnorm_forward(&mut gy, &mut gsv, &mut gs, &gx, &gp, &l, n, train);
            p.c.batchnorm_forward(&mut cy, &mut csv, &mut cs, &cx, &cp, &l, n, train);
            let mode = if train { "train" } else { "eval" };
            out.push(p.check(&format!("batchnorm_forward {mode} {tag}"), &gy, &cy, 1e-4, 1e-4)?);
        }
        out.push(p.check(&format!("batchnorm_forward {tag} running stats"), &gs, &cs, 1e-5, 1e-4)?);
        // Backward, from the training forward's saved statistics.
        p.g.batchnorm_forward(&mut gy, &mut gsv, &mut gs, &gx, &gp, &l, n, true);
        p.c.batchnorm_forward(&mut cy, &mut csv, &mut cs, &cx, &cp, &l, n, true);
        let (gd, cd) = p.f32s(&random(113 + i as u64, n * c * hw, -1.0, 1.0))?;
        let (mut gdx, mut cdx) = p.zeros(n * c * hw)?;
        let (mut gg, mut cg) = p.zeros(640)?;
        p.g.batchnorm_backward(&mut gdx, &mut gg, &gd, &gx, &gsv, &gp, &l, n);
        p.c.batchnorm_backward(&mut cdx, &mut cg, &cd, &cx, &csv, &cp, &l, n);
        out.push(p.check(&format!("batchnorm_backward {tag} dx"), &gdx, &cdx, 1e-4, 1e-4)?);
        out.push(p.check(&format!("batchnorm_backward {tag} dgamma/dbeta"), &gg, &cg, 1e-4, 1e-4)?);
    }
    Ok(out)
}

fn loss_cases(p: &mut Pair) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    for (i, (n, classes)) in [(1usize, 10usize), (300, 10), (37, 7)].into_iter().enumerate() {
        let tag = format!("n={n} classes={classes}");
        let mut z = random(120 + i as u64, n * classes, -4.0, 4.0);
        z[0] = 80.0; // a large logit stays finite
        let labels: Vec<u32> = (0..n as u32).map(|j| (j * 7 + 3) % classes as u32).collect();
        let (gz, cz) = p.f32s(&z)?;
        let (gl, cl) = p.u32s(&labels)?;
        let slot = 2;
        let (mut gs, mut cs) = p.zeros(2 * (slot + 1))?;
        let (mut gd, mut cd) = p.zeros(n * classes)?;
        let scale = 1.0 / n as f32;
        p.g.softmax_xent_forward_backward(&mut gd, &mut gs, slot, &gz, &gl, n, classes, scale);
        p.c.softmax_xent_forward_backward(&mut cd, &mut cs, slot, &cz, &cl, n, classes, scale);
        out.push(p.check(&format!("softmax_xent_forward_backward {tag}"), &gd, &cd, ULP_TOL.0, ULP_TOL.1)?);
        out.push(p.check(&format!("softmax_xent_forward_backward {tag} stats"), &gs, &cs, 1e-5, 1e-5)?);
        let at = 3;
        let (mut gpb, mut cpb) = p.zeros((n + at) * classes)?;
        p.g.softmax_xent_forward(&mut gpb, at, &mut gs, slot, &gz, &gl, n, classes);
        p.c.softmax_xent_forward(&mut cpb, at, &mut cs, slot, &cz, &cl, n, classes);
        out.push(p.check(&format!("softmax_xent_forward {tag}"), &gpb, &cpb, ULP_TOL.0, ULP_TOL.1)?);
        out.push(p.check(&format!("softmax_xent_forward {tag} stats"), &gs, &cs, 1e-5, 1e-5)?);
        let zt: Vec<f32> = z.iter().map(|v| (v / 4.0).tanh()).collect();
        let (gzt, czt) = p.f32s(&zt)?;
        p.g.mse_forward_backward(&mut gd, &mut gs, slot, &gzt, &gl, n, classes, scale);
        p.c.mse_forward_backward(&mut cd, &mut cs, slot, &czt, &cl, n, classes, scale);
        out.push(p.check(&format!("mse_forward_backward {tag}"), &gd, &cd, ULP_TOL.0, ULP_TOL.1)?);
        out.push(p.check(&format!("mse_forward_backward {tag} stats"), &gs, &cs, 1e-5, 1e-5)?);
        p.g.mse_forward(&mut gpb, at, &mut gs, slot, &gzt, &gl, n, classes);
        p.c.mse_forward(&mut cpb, at, &mut cs, slot, &czt, &cl, n, classes);
        out.push(p.check(&format!("mse_forward {tag}"), &gpb, &cpb, 0.0, 0.0)?);
        out.push(p.check(&format!("mse_forward {tag} stats"), &gs, &cs, 1e-5, 1e-5)?);
    }
    Ok(out)
}

fn optim_cases(p: &mut Pair) -> Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    let len = 1000;
    let (mut gp, mut cp) = p.f32s(&random(130, len, -1.0, 1.0))?;
    let (mut gm, mut cm) = p.zeros(len)?;
    let (mut gv, mut cv) = p.zeros(len)?;
    for t in 1..=3 {
        let (gg, cg) = p.f32s(&random(130 + t as u64, len, -1.0, 1.0))?;
        let a = AdamStep {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: if t == 3 { 0.01 } else { 0.0 },
            t,
        };
        p.g.adam_step(&mut gp, &gg, &mut gm, &mut gv, len, &a);
        p.c.adam_step(&mut cp, &cg, &mut cm, &mut cv, len, &a);
    }
    out.push(p.check(&format!("adam_step len={len} x3"), &gp, &cp, ULP_TOL.0, ULP_TOL.1)?);
    out.push(p.check(&format!("adam_step len={len} x3 v"), &gv, &cv, 1e-9, ULP_TOL.1)?);
    for momentum in [0.0, 0.9] {
        let (mut gp, mut cp) = p.f32s(&random(140, len, -1.0, 1.0))?;
        let (mut gvel, mut cvel) = p.zeros(len)?;
        for t in 0..2 {
            let (gg, cg) = p.f32s(&random(141 + t, len, -1.0, 1.0))?;
            let s = SgdStep { lr: 0.05, momentum };
            p.g.sgd_step(&mut gp, &gg, &mut gvel, len, &s);
            p.c.sgd_step(&mut cp, &cg, &mut cvel, len, &s);
        }
        out.push(p.check(&format!("sgd_step len={len} momentum {momentum} x2"), &gp, &cp, ULP_TOL.0, ULP_TOL.1)?);
    }
    // An odd length, not a multiple of the workgroup; only the first `len` elements move.
    let (len, cap) = (777, 800);
    let (mut ga, mut ca) = p.f32s(&random(150, cap, -1.0, 1.0))?;
    for t in 0..3 {
        let (gs, cs) = p.f32s(&random(151 + t, cap, -1.0, 1.0))?;
        p.g.ema_update(&mut ga, &gs, len, 0.9);
        p.c.ema_update(&mut ca, &cs, len, 0.9);
    }
    out.push(p.check(&format!("ema_update len={len} of {cap} x3"), &ga, &ca, ULP_TOL.0, ULP_TOL.1)?);
    Ok(out)
}

/// The launchers fold grids wider than the per-dimension workgroup limit into two dimensions.
/// With the limit lowered to 3, small ops already need folding: every kernel family's index
/// arithmetic for folded grids is exercised without huge buffers.
fn folded_grid_cases(p: &mut Pair) -> Result<Vec<CaseResult>> {
    let saved = p.g.max_groups;
    p.g.max_groups = 3;
    let mut results = Vec::new();
    let r = (|| -> Result<()> {
        for mut c in activation_cases(p)?.into_iter().chain(conv_cases(p)?).chain(dense_cases(p)?).chain(pool_cases(p)?)
        {
            c.name = format!("{} (grid folded at 3)", c.name);
            results.push(c);
        }
        Ok(())
    })();
    p.g.max_groups = saved;
    r.map(|_| results)
}
