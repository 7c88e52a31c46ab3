//! The op-by-op judge: every op of the fast CPU backend and every GPU kernel against the
//! definitions in `reference` (ndarray, f64), and the GPU against the CPU as before, on
//! seeded random inputs of awkward shapes (batch 1, odd sizes, channel counts that are not
//! multiples of the tile, grids folded past the per-dimension workgroup limit).
//! `gpu-train selftest` prints it as a table; `tests/reference.rs` (CPU) and
//! `tests/gpu_parity.rs` (GPU) assert it.
//!
//! Each case is written once, generic over `Backend`, and run on the reference, the CPU and
//! (when there is one) the GPU; their outputs are compared elementwise as
//! |x - want| <= atol + rtol |want|. Tolerances, set per output:
//!
//! Backend against backend (GPU against CPU):
//! - exact (0, 0): data movement, masks and max selection, which involve no rounding choices.
//! - 1e-6 + 1e-5 rel: one transcendental per element (exp, tanh) or a short sum; WGSL's
//!   exp/sqrt may differ from the host's by a few ulps.
//! - 1e-4 + 1e-4 rel: products summed over up to ~3000 terms in a different order (GPU tiles
//!   vs. CPU GEMM blocks); the f32 rounding difference grows with the term count.
//! - batch norm 1e-4 + 1e-4 rel: the CPU sums in f64, the GPU in f32 trees.
//! - augmented gather 2e-2 absolute: WGSL's sin/cos are only required to be accurate to
//!   about 2^-11, which moves a sampling point by up to ~0.01 pixel.
//!
//! The CPU against the reference (f64, rounded once to f32 when read back): the same bounds,
//! since a backend's distance from the exact value is at most what it may differ from another
//! backend, except where the reference makes one more rounding than the backend or one less,
//! or computes more exactly than the GPU is allowed to:
//! - data movement that also scales (dropout's x / (1 - p)): 2.4e-7 relative, two f32
//!   roundings, where backend against backend is exact (both round alike).
//! - the CPU's augmented gather 1e-4 absolute: it computes the sampling point in f32, the
//!   reference in f64; at coordinates up to ~30 pixels that moves a point by ~1e-5 pixel
//!   (7e-6 measured).
//!
//! The GPU against the reference: the looser of the two bounds, element by element (a GPU may
//! be as far from the exact value as it may be from the CPU, e.g. its sin/cos).
//!
//! Kernel variants (`gpu::variants`, the "variants" family, GPU only): every candidate of the
//! six GEMM-shaped ops on small awkward shapes against the reference (1e-4 + 1e-4 rel, as any
//! GEMM), and each one that adds in the default's order (`same_order`: another tile, same
//! split) against the default exactly.

use crate::backend::{AdamStep, Backend, Dropout, EmaStep, Epilogue, Gather, SgdStep, TableBuilder, Xent};
use crate::cpu::CpuBackend;
use crate::data::augment::Augment;
use crate::error::Result;
use crate::gpu::variants::same_order;
use crate::gpu::{GemmOp, GpuBackend, OpKey, candidates};
use crate::model::{Act, AvgPool, BatchNorm, Conv2d, Dense, Pool};
use crate::reference::Reference;
use crate::rng;

/// atol, rtol.
type Tol = (f32, f32);

const EXACT: Tol = (0.0, 0.0);
const ULP_TOL: Tol = (1e-6, 1e-5);
const GEMM_TOL: Tol = (1e-4, 1e-4);
/// Two f32 roundings of the same product (see the module comment).
const ROUNDED: Tol = (0.0, 2.4e-7);

/// One output of a case, as read back from one backend.
struct Out {
    name: String,
    values: Vec<f32>,
    /// Between two fast backends (GPU against CPU).
    pair: Tol,
    /// The CPU against the reference (the GPU gets the looser of this and `pair`).
    reference: Tol,
}

impl Out {
    fn new(name: impl Into<String>, values: Vec<f32>, pair: Tol, reference: Tol) -> Out {
        Out { name: name.into(), values, pair, reference }
    }

    fn labels(name: impl Into<String>, values: Vec<u32>) -> Out {
        Out::new(name, values.into_iter().map(|v| v as f32).collect(), EXACT, EXACT)
    }
}

/// One comparison of a case: `who` ("gpu~ref", "cpu~ref", "gpu~cpu").
#[derive(Debug, Clone)]
pub struct Check {
    pub who: &'static str,
    pub max_abs_err: f32,
    /// Worst element outside the tolerance (index, got, want).
    pub worst: Option<(usize, f32, f32)>,
}

/// One output's outcome over every comparison made for it.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub values: usize,
    pub checks: Vec<Check>,
    pub error: Option<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(|c| c.worst.is_none())
    }

    pub fn line(&self) -> String {
        let status = if self.passed() { "pass" } else { "FAIL" };
        let mut detail = String::new();
        for c in &self.checks {
            detail.push_str(&format!("  {} {:.1e}", c.who, c.max_abs_err));
        }
        if let Some(e) = &self.error {
            detail.push_str(&format!("  {e}"));
        }
        for c in &self.checks {
            if let Some((i, got, want)) = c.worst {
                detail.push_str(&format!("  {} worst [{i}]: {got} vs {want}", c.who));
            }
        }
        format!("{status}  {:<52} {:>8} values {detail}", self.name, self.values)
    }
}

fn compare(who: &'static str, got: &[f32], want: &[f32], (atol, rtol): Tol) -> Check {
    let mut max_abs_err = 0f32;
    let mut worst: Option<(usize, f32, f32, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        // NaN on both sides agrees; NaN on one side never does.
        let within = err <= atol + rtol * w.abs();
        let bad = !(within || g.is_nan() && w.is_nan());
        if err.is_finite() {
            max_abs_err = max_abs_err.max(err);
        }
        if bad && worst.is_none_or(|x| err > x.3 || err.is_nan()) {
            worst = Some((i, g, w, err));
        }
    }
    Check { who, max_abs_err, worst: worst.map(|(i, g, w, _)| (i, g, w)) }
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

fn up<B: Backend>(b: &mut B, data: &[f32]) -> Result<B::Buf> {
    let mut buf = b.alloc(data.len())?;
    b.upload(&mut buf, data)?;
    Ok(buf)
}

fn up_u32<B: Backend>(b: &mut B, data: &[u32]) -> Result<B::IBuf> {
    let mut buf = b.alloc_u32(data.len())?;
    b.upload_u32(&mut buf, data)?;
    Ok(buf)
}

/// A member table of `k` members (seeds 11, 12, ...), uploaded.
fn test_table(k: usize) -> TableBuilder {
    TableBuilder::new(&(0..k as u64).map(|i| 11 + i).collect::<Vec<_>>())
}

async fn gather_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    let mean = [0.1307, 0.5, 0.25, 0.75];
    let std = [0.3081, 0.5, 0.25, 0.4];
    let shape_aug = Augment { chance: 1.0, zoom: [0.8, 1.2], rotate: 25.0, shift: 0.2, flip: false, translate: 0 };
    let flip_only = Augment { chance: 0.0, flip: true, ..shape_aug };
    let both = Augment { flip: true, ..shape_aug };
    // Pad-and-crop with a flip (no affine part), and every augmentation at once.
    let crop = Augment { chance: 0.0, flip: true, translate: 3, ..shape_aug };
    let all = Augment { flip: true, translate: 2, ..shape_aug };
    // (batch, channels, height, width, images, shard): with a shard (first, count), the
    // images buffer holds only those examples, as one buffer of a data set split over
    // several does; the batch's other examples must be left untouched.
    let cases = [
        (3usize, 1usize, 28usize, 28usize, 5usize, None),
        (1, 1, 5, 7, 2, None),
        (17, 1, 6, 9, 20, None),
        (5, 3, 8, 6, 9, None),
        (4, 4, 5, 5, 6, None),
        (7, 2, 3, 4, 11, None),
        (9, 3, 7, 5, 16, Some((4usize, 7usize))),
    ];
    for (n, c, h, w, n_images, shard) in cases {
        let len = c * h * w;
        let bytes: Vec<u8> = random((n * c) as u64, n_images * len, 0.0, 256.0).iter().map(|&v| v as u8).collect();
        let (first, count) = shard.unwrap_or((0, n_images));
        let packed = crate::network::pack(&bytes[first * len..(first + count) * len]);
        let labels: Vec<u32> = (0..n_images as u32).map(|i| i % 10).collect();
        let perm: Vec<u32> = rng::epoch_permutation(3, 0, n_images).into_iter().collect();
        let (images, labels, perm) = (up_u32(b, &packed)?, up_u32(b, &labels)?, up_u32(b, &perm)?);
        let shard_tag = shard.map_or(String::new(), |(f, k)| format!(" shard {f}..{}", f + k));
        for aug in [None, Some(shape_aug), Some(flip_only), Some(both), Some(crop), Some(all)] {
            // Sentinels show what a gather left untouched.
            let mut x = up(b, &vec![7.0; n * len])?;
            let mut y = up_u32(b, &vec![999; n])?;
            let start = n_images - n;
            let g = Gather {
                start,
                n,
                channels: c,
                height: h,
                width: w,
                mean,
                std,
                augment: aug.map(|a| (a, 77)),
                first,
                count,
            };
            b.gather_batch(&mut x, &mut y, &images, &labels, &perm, &g);
            let what = match aug {
                None => "",
                Some(a) if a.chance == 0.0 && a.translate > 0 => " translated+flipped",
                Some(a) if a.chance == 0.0 => " flipped",
                Some(a) if a.translate > 0 => " augmented+translated+flipped",
                Some(a) if a.flip => " augmented+flipped",
                Some(_) => " augmented",
            };
            let name = format!("gather_batch n={n} {c}x{h}x{w}{what}{shard_tag}");
            // Resampled: WGSL's sin/cos (module comment), over the smallest std.
            let (pair, reference) = if aug.is_some_and(|a| a.chance > 0.0) {
                ((2e-2 / 0.25, 1e-6), (1e-4, 1e-6))
            } else {
                ((1e-6, 1e-6), (1e-6, 1e-6))
            };
            out.push(Out::new(&name, b.download(&x, n * len).await?, pair, reference));
            out.push(Out::labels(format!("{name} labels"), b.download_u32(&y, n).await?));
        }
    }
    Ok(out)
}

/// Conv layers with their channels in groups: (groups, in_groups) applied to `conv`'s shape,
/// the weight offsets kept.
fn grouped(l: Conv2d, groups: usize, in_groups: usize) -> Conv2d {
    let l = l.grouped(groups, in_groups);
    Conv2d { b_off: l.b_off.map(|_| 64 + l.weight_len().div_ceil(64) * 64), ..l }
}

async fn conv_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    // Dropout in a buffer of 3 members with rates of their own (and of one member).
    let mut t = test_table(3);
    let at3 = t.dropout(&[0.3, 0.1, 0.6]);
    let table3 = up_u32(b, &t.words)?;
    let mut t = test_table(1);
    let at1 = t.dropout(&[0.3]);
    let table1 = up_u32(b, &t.words)?;
    let drop = |members: usize, len: usize, at: usize| Epilogue {
        act: Some(Act::Relu),
        dropout: Some(Dropout { members, len, stream: 0x100 + 4, step: 99, at }),
    };
    let cases = [
        (1, conv(1, 28, 28, 16, (5, 5), 1, (2, 2)), Epilogue::act(Some(Act::Relu))),
        (3, conv(3, 7, 5, 5, (3, 3), 2, (1, 1)), Epilogue::act(Some(Act::Tanh))),
        (2, conv(5, 9, 11, 70, (2, 4), 1, (1, 3)), Epilogue::act(Some(Act::Sigmoid))),
        (4, conv(3, 14, 14, 7, (5, 5), 1, (2, 2)), drop(1, 7 * 14 * 14, at1)),
        (2, conv(2, 6, 6, 3, (6, 6), 1, (0, 0)), Epilogue::default()),
        // A residual block's projection shortcut: 1x1, stride 2, odd sides, batch 1.
        (1, conv(6, 9, 7, 10, (1, 1), 2, (0, 0)), Epilogue::default()),
        // Grouped: 3 groups of odd sizes (an array of 3 after its first layer, with each
        // member's dropout); depthwise; batch 1; 2 groups strided.
        (2, grouped(conv(6, 9, 7, 9, (3, 3), 1, (1, 1)), 3, 3), drop(3, 3 * 9 * 7, at3)),
        (3, grouped(conv(5, 8, 8, 5, (3, 3), 1, (1, 1)), 5, 5), Epilogue::act(Some(Act::Relu))),
        (1, grouped(conv(4, 11, 9, 6, (5, 3), 1, (2, 1)), 2, 2), Epilogue::act(Some(Act::Tanh))),
        (2, grouped(conv(4, 9, 9, 70, (3, 3), 2, (1, 1)), 2, 2), Epilogue::default()),
        // An array's first layer over a shared input: 3 members of 2 groups each read input
        // groups 0 and 1 (no input gradient: nothing reads the input's).
        (3, grouped(conv(4, 7, 7, 12, (3, 3), 1, (1, 1)), 6, 2), drop(3, 4 * 7 * 7, at3)),
    ];
    for (i, (n, l, epi)) in cases.into_iter().enumerate() {
        let plen = l.b_off.unwrap_or(0) + l.c_out + 7;
        let groups = if l.groups > 1 { format!(" g{}/{}", l.groups, l.in_groups) } else { String::new() };
        let members = epi.dropout.map_or(String::new(), |d| format!(" +relu+dropout x{}", d.members));
        let tag = format!(
            "n={n} {}x{}x{}->{} k{}x{} s{} p{},{}{groups}{members}",
            l.c_in, l.h_in, l.w_in, l.c_out, l.kh, l.kw, l.stride, l.pad_h, l.pad_w
        );
        let table = if epi.dropout.is_some_and(|d| d.members == 3) { &table3 } else { &table1 };
        let w = up(b, &random(10 + i as u64, plen, -0.5, 0.5))?;
        let x = up(b, &random(20 + i as u64, n * l.in_len(), -1.0, 1.0))?;
        let mut y = b.alloc(n * l.out_len())?;
        b.conv2d_forward(&mut y, &x, &w, table, &l, n, epi);
        out.push(Out::new(format!("conv2d_forward {tag}"), b.download(&y, n * l.out_len()).await?, GEMM_TOL, GEMM_TOL));
        let d = up(b, &random(30 + i as u64, n * l.out_len(), -1.0, 1.0))?;
        if l.groups == l.in_groups {
            let mut dx = b.alloc(n * l.in_len())?;
            b.conv2d_backward_input(&mut dx, &d, &w, &l, n);
            let dx = b.download(&dx, n * l.in_len()).await?;
            out.push(Out::new(format!("conv2d_backward_input {tag}"), dx, GEMM_TOL, GEMM_TOL));
        }
        let mut g = up(b, &vec![7.0; plen])?;
        b.conv2d_backward_weight(&mut g, &d, &x, &l, n);
        out.push(Out::new(format!("conv2d_backward_weight {tag}"), b.download(&g, plen).await?, GEMM_TOL, GEMM_TOL));
    }
    Ok(out)
}

async fn dense_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    let mut t = test_table(3);
    let at3 = t.dropout(&[0.2, 0.5, 0.05]);
    let table3 = up_u32(b, &t.words)?;
    let mut t = test_table(1);
    let at1 = t.dropout(&[0.2]);
    let table1 = up_u32(b, &t.words)?;
    let drop = |members: usize, len: usize, at: usize| Epilogue {
        act: Some(Act::Relu),
        dropout: Some(Dropout { members, len, stream: 0x100 + 2, step: 7, at }),
    };
    // (n, n_in, n_out, groups, epilogue)
    for (i, (n, ni, no, groups, epi)) in [
        (1, 13, 7, 1, Epilogue::act(Some(Act::Sigmoid))),
        (5, 70, 130, 1, drop(1, 130, at1)),
        (33, 784, 10, 1, Epilogue::default()),
        (3, 3136, 10, 1, Epilogue::act(Some(Act::Tanh))),
        (9, 100, 37, 1, drop(1, 37, at1)),
        // Past 65,535 outputs: grids fold into two dimensions (65,536 classes).
        (3, 4, 65_536, 1, Epilogue::default()),
        // Grouped (an array's later layers, one group per member): tiled, skinny, batch 1.
        (17, 3 * 13, 3 * 70, 3, drop(3, 70, at3)),
        (5, 3 * 100, 3 * 10, 3, drop(3, 10, at3)),
        (1, 2 * 9, 2 * 5, 2, Epilogue::act(Some(Act::Tanh))),
        // An array's first layer: one wider layer over the shared input, each member's dropout.
        (4, 20, 3 * 11, 1, drop(3, 11, at3)),
    ]
    .into_iter()
    .enumerate()
    {
        let l =
            Dense { n_in: ni, n_out: no, groups, w_off: 64, b_off: Some(64 + (ni / groups * no).div_ceil(64) * 64) };
        let plen = l.b_off.unwrap_or(0) + no + 3;
        let members = epi.dropout.map_or(String::new(), |d| format!(" +relu+dropout x{}", d.members));
        let g = if groups > 1 { format!(" g{groups}") } else { String::new() };
        let tag = format!("n={n} {ni}->{no}{g}{members}");
        let table = if epi.dropout.is_some_and(|d| d.members == 3) { &table3 } else { &table1 };
        let w = up(b, &random(40 + i as u64, plen, -0.5, 0.5))?;
        let x = up(b, &random(50 + i as u64, n * ni, -1.0, 1.0))?;
        let mut y = b.alloc(n * no)?;
        b.dense_forward(&mut y, &x, &w, table, &l, n, epi);
        out.push(Out::new(format!("dense_forward {tag}"), b.download(&y, n * no).await?, GEMM_TOL, GEMM_TOL));
        let d = up(b, &random(60 + i as u64, n * no, -1.0, 1.0))?;
        let mut dx = b.alloc(n * ni)?;
        b.dense_backward_input(&mut dx, &d, &w, &l, n);
        out.push(Out::new(format!("dense_backward_input {tag}"), b.download(&dx, n * ni).await?, GEMM_TOL, GEMM_TOL));
        let mut g = up(b, &vec![7.0; plen])?;
        b.dense_backward_weight(&mut g, &d, &x, &l, n);
        out.push(Out::new(format!("dense_backward_weight {tag}"), b.download(&g, plen).await?, GEMM_TOL, GEMM_TOL));
    }
    Ok(out)
}

async fn activation_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    let len = 1001;
    // The gradient of a relu + dropout of 3 members (7 elements each per example): each
    // element's member's scale.
    let mut t = test_table(3);
    let at = t.dropout(&[0.2, 0.5, 0.75]);
    let table = up_u32(b, &t.words)?;
    let mut x = random(70, len, -6.0, 6.0);
    x[0] = 0.0;
    x[1] = 90.0;
    x[2] = -90.0;
    for act in [Act::Relu, Act::Sigmoid, Act::Tanh, Act::LeakyRelu(0.1), Act::LeakyRelu(0.0), Act::Gelu, Act::Silu] {
        let gx = up(b, &x)?;
        let mut y = b.alloc(len)?;
        b.activation_forward(&mut y, &gx, len, act);
        out.push(Out::new(
            format!("activation_forward {act:?} len={len}"),
            b.download(&y, len).await?,
            ULP_TOL,
            ULP_TOL,
        ));
        // The backward from the same outputs (the CPU's) on every side, or for gelu and silu
        // from the inputs.
        let mut y_host = vec![0f32; len];
        crate::cpu::activation::activation_forward(&mut y_host, &x, len, act);
        let y = up(b, if act.grad_from_output() { &y_host } else { &x })?;
        let d = up(b, &random(71, len, -1.0, 1.0))?;
        let mut dx = b.alloc(len)?;
        b.activation_backward(&mut dx, &d, &y, &table, len, act, None);
        out.push(Out::new(
            format!("activation_backward {act:?} len={len}"),
            b.download(&dx, len).await?,
            ULP_TOL,
            ULP_TOL,
        ));
        if act == Act::Relu {
            let d3 = Dropout { members: 3, len: 7, stream: 0x105, step: 3, at };
            b.activation_backward(&mut dx, &d, &y, &table, len, act, Some(d3));
            let name = format!("activation_backward Relu+dropout x3 len={len}");
            out.push(Out::new(name, b.download(&dx, len).await?, ULP_TOL, ULP_TOL));
        }
    }
    Ok(out)
}

async fn pool_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    let cases = [
        (2, Pool { c: 3, h_in: 6, w_in: 8, h_out: 3, w_out: 4, size: 2, stride: 2 }),
        (1, Pool { c: 2, h_in: 7, w_in: 5, h_out: 3, w_out: 2, size: 2, stride: 2 }),
        (3, Pool { c: 5, h_in: 7, w_in: 7, h_out: 3, w_out: 3, size: 3, stride: 2 }),
    ];
    for (i, (n, l)) in cases.into_iter().enumerate() {
        let tag = format!("n={n} c={} {}x{} size {} stride {}", l.c, l.h_in, l.w_in, l.size, l.stride);
        // Rounded values make ties, which every side must break the same way.
        let x: Vec<f32> = random(80 + i as u64, n * l.in_len(), -2.0, 2.0).iter().map(|v| (v * 4.0).round()).collect();
        let x = up(b, &x)?;
        let (mut y, mut arg) = (b.alloc(n * l.out_len())?, b.alloc_u32(n * l.out_len())?);
        b.maxpool_forward(&mut y, &mut arg, &x, &l, n);
        out.push(Out::new(format!("maxpool_forward {tag}"), b.download(&y, n * l.out_len()).await?, EXACT, EXACT));
        out.push(Out::labels(format!("maxpool_forward {tag} argmax"), b.download_u32(&arg, n * l.out_len()).await?));
        let d = up(b, &random(90 + i as u64, n * l.out_len(), -1.0, 1.0))?;
        let mut dx = b.alloc(n * l.in_len())?;
        b.maxpool_backward(&mut dx, &d, &arg, &l, n);
        out.push(Out::new(format!("maxpool_backward {tag}"), b.download(&dx, n * l.in_len()).await?, ULP_TOL, ULP_TOL));
    }
    // Average pooling: 2x2/2 on odd sides (the last row and column in no window), an
    // overlapping 3x3/2, a 3x3/1, and global pooling of a non-square map (batch 1, and a
    // ResNet's 8x8 of 64 channels).
    let avg = |c, (h_in, w_in), (kh, kw), stride| {
        let (h_out, w_out) = ((h_in - kh) / stride + 1, (w_in - kw) / stride + 1);
        AvgPool { c, h_in, w_in, h_out, w_out, kh, kw, stride }
    };
    let cases = [
        (2, avg(3, (7, 5), (2, 2), 2)),
        (3, avg(5, (7, 7), (3, 3), 2)),
        (1, avg(2, (6, 5), (3, 3), 1)),
        (1, avg(3, (7, 5), (7, 5), 1)),
        (5, avg(64, (8, 8), (8, 8), 1)),
    ];
    for (i, (n, l)) in cases.into_iter().enumerate() {
        let tag = format!("n={n} c={} {}x{} window {}x{} stride {}", l.c, l.h_in, l.w_in, l.kh, l.kw, l.stride);
        let x = up(b, &random(85 + i as u64, n * l.in_len(), -2.0, 2.0))?;
        let mut y = b.alloc(n * l.out_len())?;
        b.avgpool_forward(&mut y, &x, &l, n);
        out.push(Out::new(format!("avgpool_forward {tag}"), b.download(&y, n * l.out_len()).await?, ULP_TOL, ULP_TOL));
        let d = up(b, &random(95 + i as u64, n * l.out_len(), -1.0, 1.0))?;
        let mut dx = up(b, &vec![7.0; n * l.in_len()])?;
        b.avgpool_backward(&mut dx, &d, &l, n);
        out.push(Out::new(format!("avgpool_backward {tag}"), b.download(&dx, n * l.in_len()).await?, ULP_TOL, ULP_TOL));
    }
    Ok(out)
}

async fn residual_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    // Odd lengths, one past the workgroup, one element; then a value added to itself.
    for (i, len) in [1001usize, 257, 1].into_iter().enumerate() {
        let x = up(b, &random(160 + i as u64, len, -3.0, 3.0))?;
        let y = up(b, &random(170 + i as u64, len, -3.0, 3.0))?;
        let mut z = up(b, &vec![7.0; len + 3])?;
        b.residual_add(&mut z, &x, &y, len);
        out.push(Out::new(format!("residual_add len={len}"), b.download(&z, len + 3).await?, EXACT, ROUNDED));
        b.residual_add(&mut z, &x, &x, len);
        out.push(Out::new(format!("residual_add len={len} x + x"), b.download(&z, len + 3).await?, EXACT, EXACT));
    }
    Ok(out)
}

async fn dropout_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    // (len, rates per member, elements per example and member, step)
    let cases: [(usize, &[f32], usize, u32); 5] = [
        (1001, &[0.3], 1001, 5),
        (7, &[0.5], 7, 9),
        (4096, &[0.2], 256, 0xdead_beef),
        // 3 members of 13 elements per example, 5 examples: each member's own mask and rate.
        (195, &[0.2, 0.5, 0.05], 13, 4),
        // 2 members, batch 1, a length past the CPU's parallel chunk.
        (2 * 9000, &[0.4, 0.1], 9000, 11),
    ];
    for (len, p, member_len, step) in cases {
        let mut t = test_table(p.len());
        let at = t.dropout(p);
        let table = up_u32(b, &t.words)?;
        let d = Dropout { members: p.len(), len: member_len, stream: 0x103, step, at };
        let x = up(b, &random(100, len, -1.0, 1.0))?;
        let mut y = b.alloc(len)?;
        b.dropout_forward(&mut y, &x, &table, len, &d);
        let tag = format!("len={len} p={p:?} x{}", p.len());
        out.push(Out::new(format!("dropout_forward {tag}"), b.download(&y, len).await?, EXACT, ROUNDED));
        let mut dx = b.alloc(len)?;
        b.dropout_backward(&mut dx, &x, &table, len, &d);
        out.push(Out::new(format!("dropout_backward {tag}"), b.download(&dx, len).await?, EXACT, ROUNDED));
    }
    Ok(out)
}

async fn batchnorm_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    let bn_tol = (1e-4, 1e-4);
    let table = up_u32(b, &test_table(1).words)?;
    for (i, (n, c, hw)) in [(4usize, 3usize, 10usize), (1, 5, 49), (7, 300, 1)].into_iter().enumerate() {
        let l = BatchNorm { c, hw, eps: 1e-5, momentum: 0.1, gamma_off: 0, beta_off: 320, mean_off: 0, var_off: 320 };
        let tag = format!("n={n} c={c} hw={hw}");
        let mut params = random(110 + i as u64, 640, 0.5, 1.5);
        params[320..].copy_from_slice(&random(111 + i as u64, 320, -0.5, 0.5));
        let p = up(b, &params)?;
        let x = up(b, &random(112 + i as u64, n * c * hw, -2.0, 3.0))?;
        let mut state0 = vec![0.0f32; 640];
        state0[320..].fill(1.0);
        let mut state = up(b, &state0)?;
        let mut saved = b.alloc(2 * c)?;
        let mut y = b.alloc(n * c * hw)?;
        let none = Epilogue::default();
        for train in [true, false] {
            b.batchnorm_forward(&mut y, &mut saved, &mut state, &x, &p, &table, &l, n, train, none);
            let mode = if train { "train" } else { "eval" };
            out.push(Out::new(
                format!("batchnorm_forward {mode} {tag}"),
                b.download(&y, n * c * hw).await?,
                bn_tol,
                bn_tol,
            ));
        }
        let stats = b.download(&state, 640).await?;
        out.push(Out::new(format!("batchnorm_forward {tag} running stats"), stats, (1e-5, 1e-4), (1e-5, 1e-4)));
        // Backward, from the training forward's saved statistics.
        b.batchnorm_forward(&mut y, &mut saved, &mut state, &x, &p, &table, &l, n, true, none);
        let d = up(b, &random(113 + i as u64, n * c * hw, -1.0, 1.0))?;
        let mut dx = b.alloc(n * c * hw)?;
        let mut g = b.alloc(640)?;
        b.batchnorm_backward(&mut dx, &mut g, &d, &x, &y, &saved, &p, &table, &l, n, none);
        out.push(Out::new(format!("batchnorm_backward {tag} dx"), b.download(&dx, n * c * hw).await?, bn_tol, bn_tol));
        out.push(Out::new(
            format!("batchnorm_backward {tag} dgamma/dbeta"),
            b.download(&g, 640).await?,
            bn_tol,
            bn_tol,
        ));
    }
    out.extend(batchnorm_epilogue_cases(b).await?);
    Ok(out)
}

/// Batch norm with every activation fused after it (and relu + dropout, over 2 members), on
/// batch 1 and on odd sizes: the training forward, and the backward from the output's
/// gradient. The backward reads the fused output (the derivative of relu, sigmoid, tanh and
/// leaky relu comes from it), so every side gets the CPU's, as in `activation_cases`: a
/// value within rounding of a relu's kink would otherwise flip the derivative on one side.
async fn batchnorm_epilogue_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    let bn_tol = (1e-4, 1e-4);
    let mut t = test_table(2);
    let at = t.dropout(&[0.3, 0.6]);
    let table = up_u32(b, &t.words)?;
    let acts = [Act::Relu, Act::Sigmoid, Act::Tanh, Act::LeakyRelu(0.1), Act::Gelu, Act::Silu];
    for (i, (n, c, hw)) in [(1usize, 6usize, 49usize), (3, 6, 13)].into_iter().enumerate() {
        let l = BatchNorm { c, hw, eps: 1e-5, momentum: 0.1, gamma_off: 0, beta_off: c, mean_off: 0, var_off: c };
        let len = n * c * hw;
        let mut params = random(120 + i as u64, 2 * c, 0.5, 1.5);
        params[c..].copy_from_slice(&random(121 + i as u64, c, -0.5, 0.5));
        let x_host = random(122 + i as u64, len, -2.0, 3.0);
        let d_host = random(123 + i as u64, len, -1.0, 1.0);
        let (p, x, d) = (up(b, &params)?, up(b, &x_host)?, up(b, &d_host)?);
        let dropout = Dropout { members: 2, len: c / 2 * hw, stream: 0x107, step: 5, at };
        let epilogues = acts.iter().map(|&a| Epilogue::act(Some(a)));
        for epi in epilogues.chain([Epilogue { act: Some(Act::Relu), dropout: Some(dropout) }]) {
            let act = epi.act.map_or(String::new(), |a| format!("{a:?}"));
            let tag = format!("+{act}{} n={n} c={c} hw={hw}", if epi.dropout.is_some() { "+dropout x2" } else { "" });
            // running mean 0, variance 1
            let state0: Vec<f32> = (0..2 * c).map(|k| if k < c { 0.0 } else { 1.0 }).collect();
            let mut state = up(b, &state0)?;
            let (mut saved, mut y) = (b.alloc(2 * c)?, b.alloc(len)?);
            b.batchnorm_forward(&mut y, &mut saved, &mut state, &x, &p, &table, &l, n, true, epi);
            out.push(Out::new(format!("batchnorm_forward {tag}"), b.download(&y, len).await?, bn_tol, bn_tol));
            let mut z = vec![0f32; len];
            let (mut s_host, mut st_host) = (vec![0f32; 2 * c], vec![0f32; 2 * c]);
            let host = crate::cpu::batchnorm::batchnorm_forward;
            host(&mut z, &mut s_host, &mut st_host, &x_host, &params, &t.words, &l, n, true, epi);
            let z = up(b, &z)?;
            let (mut dx, mut g) = (b.alloc(len)?, b.alloc(2 * c)?);
            b.batchnorm_backward(&mut dx, &mut g, &d, &x, &z, &saved, &p, &table, &l, n, epi);
            out.push(Out::new(format!("batchnorm_backward {tag} dx"), b.download(&dx, len).await?, bn_tol, bn_tol));
            let name = format!("batchnorm_backward {tag} dgamma/dbeta");
            out.push(Out::new(name, b.download(&g, 2 * c).await?, bn_tol, bn_tol));
        }
    }
    Ok(out)
}

async fn loss_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    let stats_tol = (1e-5, 1e-5);
    // (examples, members, classes): rows (example, member) of one softmax each.
    for (i, (n, k, classes)) in
        [(1usize, 1usize, 10usize), (300, 1, 10), (37, 1, 7), (3, 1, 65_536), (5, 3, 7), (2, 2, 1500)]
            .into_iter()
            .enumerate()
    {
        let m = if k > 1 { format!(" x{k}") } else { String::new() };
        let tag = format!("n={n} classes={classes}{m}");
        let width = k * classes;
        let mut z = random(120 + i as u64, n * width, -4.0, 4.0);
        z[0] = 80.0; // a large logit stays finite
        let labels: Vec<u32> = (0..n as u32).map(|j| (j * 7 + 3) % classes as u32).collect();
        let (gz, gl) = (up(b, &z)?, up_u32(b, &labels)?);
        let slot = 2;
        let stats_len = 2 * (slot + 1) * k;
        let mut stats = b.alloc(stats_len)?;
        let mut d = b.alloc(n * width)?;
        let scale = 1.0 / n as f32;
        // Label smoothing per member: none, then each member its own (one of them none).
        let mut t = test_table(k);
        let plain = t.values(&vec![0.0; k]);
        let smoothing: Vec<f32> = (0..k).map(|m| [0.1, 0.0, 0.3][m % 3]).collect();
        let smooth = t.values(&smoothing);
        let table = up_u32(b, &t.words)?;
        for (at, what) in [(plain, String::new()), (smooth, format!(" smoothing {smoothing:?}"))] {
            let name = format!("softmax_xent_forward_backward {tag}{what}");
            let x = Xent { members: k, classes, scale, smoothing_at: at };
            b.softmax_xent_forward_backward(&mut d, &mut stats, slot, &gz, &gl, &table, n, &x);
            out.push(Out::new(&name, b.download(&d, n * width).await?, ULP_TOL, ULP_TOL));
            out.push(Out::new(format!("{name} stats"), b.download(&stats, stats_len).await?, stats_tol, stats_tol));
        }
        let at = 3;
        let mut probs = b.alloc((n + at) * width)?;
        b.softmax_xent_forward(&mut probs, at, &mut stats, slot, &gz, &gl, n, k, classes);
        let name = format!("softmax_xent_forward {tag}");
        out.push(Out::new(&name, b.download(&probs, (n + at) * width).await?, ULP_TOL, ULP_TOL));
        out.push(Out::new(format!("{name} stats"), b.download(&stats, stats_len).await?, stats_tol, stats_tol));
        let zt: Vec<f32> = z.iter().map(|v| (v / 4.0).tanh()).collect();
        let gzt = up(b, &zt)?;
        b.mse_forward_backward(&mut d, &mut stats, slot, &gzt, &gl, n, k, classes, scale);
        let name = format!("mse_forward_backward {tag}");
        out.push(Out::new(&name, b.download(&d, n * width).await?, ULP_TOL, ULP_TOL));
        out.push(Out::new(format!("{name} stats"), b.download(&stats, stats_len).await?, stats_tol, stats_tol));
        b.mse_forward(&mut probs, at, &mut stats, slot, &gzt, &gl, n, k, classes);
        let name = format!("mse_forward {tag}");
        out.push(Out::new(&name, b.download(&probs, (n + at) * width).await?, EXACT, EXACT));
        out.push(Out::new(format!("{name} stats"), b.download(&stats, stats_len).await?, stats_tol, stats_tol));
    }
    Ok(out)
}

async fn optim_cases<B: Backend>(b: &mut B) -> Result<Vec<Out>> {
    let mut out = Vec::new();
    // One model: one segment over the whole buffer. Two members: three tensors of 2 x 100,
    // 2 x 37 and 2 x 150 elements with alignment padding between them, each member with its
    // own learning rate, weight decay, momentum (one without) and averaging decay.
    let len = 1000;
    let one_segs: &[(usize, usize)] = &[(0, 1000)];
    let two_segs: &[(usize, usize)] = &[(0, 100), (256, 37), (384, 150)];
    for (k, segs, lrs, wds, momenta, decays) in [
        (1, one_segs, &[0.01f32][..], &[0.01f32][..], &[0.9f32][..], &[0.9f32][..]),
        (2, two_segs, &[0.01, 0.003][..], &[0.0, 0.05][..], &[0.9, 0.0][..], &[0.9, 0.5][..]),
    ] {
        let mut t = test_table(k);
        let lr_at = t.values(lrs);
        let wd_at = t.values(wds);
        let momentum_at = t.values(momenta);
        let decay_at = t.values(decays);
        let segments = t.segments(segs);
        let table = up_u32(b, &t.words)?;
        let tag = if k > 1 { format!(" x{k} in {} segments", segs.len()) } else { String::new() };
        let mut p = up(b, &random(130, len, -1.0, 1.0))?;
        let (mut m, mut v) = (b.alloc(len)?, b.alloc(len)?);
        for t in 1..=3 {
            let g = up(b, &random(130 + t as u64, len, -1.0, 1.0))?;
            let a = AdamStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, t, segments, lr_at, wd_at };
            b.adam_step(&mut p, &g, &mut m, &mut v, &table, len, &a);
        }
        out.push(Out::new(format!("adam_step len={len} x3{tag}"), b.download(&p, len).await?, ULP_TOL, ULP_TOL));
        let v_tol = (1e-9, ULP_TOL.1);
        out.push(Out::new(format!("adam_step len={len} x3{tag} v"), b.download(&v, len).await?, v_tol, v_tol));
        // Plain, then with each member's weight decay (coupled) and Nesterov momentum.
        for (wd_at, nesterov, what) in [(None, false, ""), (Some(wd_at), true, " weight decay, nesterov")] {
            let mut t = t.clone();
            let wd_at = wd_at.unwrap_or_else(|| t.values(&vec![0.0; k]));
            let table = up_u32(b, &t.words)?;
            let mut p = up(b, &random(140, len, -1.0, 1.0))?;
            let mut vel = b.alloc(len)?;
            for step in 0..2 {
                let g = up(b, &random(141 + step, len, -1.0, 1.0))?;
                let s = SgdStep { segments, lr_at, momentum_at, wd_at, nesterov };
                b.sgd_step(&mut p, &g, &mut vel, &table, len, &s);
            }
            let name = format!("sgd_step len={len} momentum {momenta:?}{what} x2{tag}");
            out.push(Out::new(name, b.download(&p, len).await?, ULP_TOL, ULP_TOL));
        }
        // An odd length, not a multiple of the workgroup; only the first `len` elements move.
        let (len, cap) = (777, 800);
        let mut avg = up(b, &random(150, cap, -1.0, 1.0))?;
        for t in 0..3 {
            let src = up(b, &random(151 + t, cap, -1.0, 1.0))?;
            b.ema_update(&mut avg, &src, &table, len, &EmaStep { segments, decay_at });
        }
        let name = format!("ema_update len={len} of {cap} x3{tag}");
        out.push(Out::new(name, b.download(&avg, cap).await?, ULP_TOL, ULP_TOL));
    }
    Ok(out)
}

/// A family's cases on one backend, as a future (the GPU's read-backs are awaited).
type CaseFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Out>>> + 'a>>;
type Cases<B> = for<'a> fn(&'a mut B) -> CaseFuture<'a>;

/// One family of cases, instantiated for each backend.
struct Family {
    name: &'static str,
    reference: Cases<Reference>,
    cpu: Cases<CpuBackend>,
    gpu: Cases<GpuBackend>,
    /// Also run on the GPU with grids folded at 3 workgroups per dimension.
    fold: bool,
}

macro_rules! family {
    ($name:literal, $f:ident, $fold:literal) => {
        Family {
            name: $name,
            reference: |b: &mut Reference| -> CaseFuture<'_> { Box::pin($f::<Reference>(b)) },
            cpu: |b: &mut CpuBackend| -> CaseFuture<'_> { Box::pin($f::<CpuBackend>(b)) },
            gpu: |b: &mut GpuBackend| -> CaseFuture<'_> { Box::pin($f::<GpuBackend>(b)) },
            fold: $fold,
        }
    };
}

const FAMILIES: &[Family] = &[
    family!("gather_batch", gather_cases, false),
    family!("conv2d", conv_cases, true),
    family!("dense", dense_cases, true),
    family!("activation", activation_cases, true),
    family!("pool", pool_cases, true),
    family!("residual", residual_cases, true),
    family!("dropout", dropout_cases, false),
    family!("batchnorm", batchnorm_cases, false),
    family!("loss", loss_cases, false),
    family!("optim", optim_cases, false),
];

/// A layer of the variant cases.
#[derive(Clone, Copy)]
enum GemmLayer {
    Conv(Conv2d),
    Dense(Dense),
}

impl GemmLayer {
    /// Its ops (no input gradient where several groups read one input group).
    fn ops(&self) -> Vec<GemmOp> {
        match self {
            GemmLayer::Conv(l) if l.groups != l.in_groups => vec![GemmOp::ConvForward, GemmOp::ConvBackwardWeight],
            GemmLayer::Conv(_) => vec![GemmOp::ConvForward, GemmOp::ConvBackwardInput, GemmOp::ConvBackwardWeight],
            GemmLayer::Dense(_) => vec![GemmOp::DenseForward, GemmOp::DenseBackwardInput, GemmOp::DenseBackwardWeight],
        }
    }

    fn key(&self, op: GemmOp, n: usize) -> OpKey {
        match self {
            GemmLayer::Conv(l) => OpKey::conv(op, l, n),
            GemmLayer::Dense(l) => OpKey::dense(op, l, n),
        }
    }

    /// Elements of the parameter buffer (weights, bias, a few past the end).
    fn params_len(&self) -> usize {
        match self {
            GemmLayer::Conv(l) => l.b_off.unwrap_or(0) + l.c_out + 7,
            GemmLayer::Dense(l) => l.b_off.unwrap_or(0) + l.n_out + 3,
        }
    }

    /// (input, output) elements per example.
    fn lens(&self) -> (usize, usize) {
        match self {
            GemmLayer::Conv(l) => (l.in_len(), l.out_len()),
            GemmLayer::Dense(l) => (l.n_in, l.n_out),
        }
    }
}

/// Op `op` of `layer` at batch `n` on seeded inputs (a relu after the forward): its output,
/// the whole parameter buffer for a weight gradient (7 where it writes nothing; its bias
/// gradient included).
async fn gemm_op<B: Backend>(b: &mut B, op: GemmOp, layer: GemmLayer, n: usize, seed: u64) -> Result<Vec<f32>> {
    let plen = layer.params_len();
    let (in_len, out_len) = layer.lens();
    let w = up(b, &random(seed, plen, -0.5, 0.5))?;
    let x = up(b, &random(seed + 1, n * in_len, -1.0, 1.0))?;
    let d = up(b, &random(seed + 2, n * out_len, -1.0, 1.0))?;
    let table = up_u32(b, &test_table(1).words)?;
    let relu = Epilogue::act(Some(Act::Relu));
    let (mut y, len) = match op {
        GemmOp::ConvForward | GemmOp::DenseForward => (b.alloc(n * out_len)?, n * out_len),
        GemmOp::ConvBackwardInput | GemmOp::DenseBackwardInput => (b.alloc(n * in_len)?, n * in_len),
        _ => (up(b, &vec![7.0; plen])?, plen),
    };
    match (op, layer) {
        (GemmOp::ConvForward, GemmLayer::Conv(l)) => b.conv2d_forward(&mut y, &x, &w, &table, &l, n, relu),
        (GemmOp::ConvBackwardInput, GemmLayer::Conv(l)) => b.conv2d_backward_input(&mut y, &d, &w, &l, n),
        (GemmOp::ConvBackwardWeight, GemmLayer::Conv(l)) => b.conv2d_backward_weight(&mut y, &d, &x, &l, n),
        (GemmOp::DenseForward, GemmLayer::Dense(l)) => b.dense_forward(&mut y, &x, &w, &table, &l, n, relu),
        (GemmOp::DenseBackwardInput, GemmLayer::Dense(l)) => b.dense_backward_input(&mut y, &d, &w, &l, n),
        (GemmOp::DenseBackwardWeight, GemmLayer::Dense(l)) => b.dense_backward_weight(&mut y, &d, &x, &l, n),
        _ => return Err(crate::Error::Config(format!("{} is not an op of this layer", op.entry()))),
    }
    b.download(&y, len).await
}

/// The variant cases' shapes (batch, layer), small for lavapipe's sake; each has more than
/// one tile of some candidate in each direction:
/// - a conv at batch 3, odd sides: M = 20 filters (two 16-row tiles), N = 297 positions, a
///   weight gradient over 297 terms that the default splits in 2 (the candidates 1, 4, 7);
/// - a grouped conv (2 groups), stride 2, batch 2;
/// - an array's first conv (6 groups over 2 input groups), batch 1;
/// - dense at batch 1 (gemm_skinny a candidate, not the default); grouped (3 groups) at
///   batch 5, whose forward is skinny by default; 33 x 70 -> 37, several tiles each way.
fn variant_shapes() -> Vec<(usize, GemmLayer)> {
    let dense = |ni: usize, no: usize, groups: usize| {
        GemmLayer::Dense(Dense {
            n_in: ni,
            n_out: no,
            groups,
            w_off: 64,
            b_off: Some(64 + (ni / groups * no).div_ceil(64) * 64),
        })
    };
    vec![
        (3, GemmLayer::Conv(conv(3, 9, 11, 20, (3, 3), 1, (1, 1)))),
        (2, GemmLayer::Conv(grouped(conv(4, 7, 5, 6, (3, 3), 2, (1, 1)), 2, 2))),
        (1, GemmLayer::Conv(grouped(conv(4, 6, 5, 12, (3, 3), 1, (1, 1)), 6, 2))),
        (1, dense(13, 7, 1)),
        (5, dense(3 * 100, 3 * 10, 3)),
        (33, dense(70, 37, 1)),
    ]
}

/// The "variants" family (GPU only): every candidate of every op of `variant_shapes`, run
/// through the launchers with `set_choice`, against the reference; those that keep the
/// default's order of sums also against the default, exactly. The backend's choices are put
/// back afterwards.
pub async fn variant_cases(g: &mut GpuBackend) -> Vec<CaseResult> {
    let saved = g.choices().clone();
    let mut r = Reference::new();
    let mut out = Vec::new();
    for (i, (n, layer)) in variant_shapes().into_iter().enumerate() {
        let tag = match layer {
            GemmLayer::Conv(l) => format!(
                "n={n} {}x{}x{}->{} k{}x{} s{} p{},{} g{}/{}",
                l.c_in, l.h_in, l.w_in, l.c_out, l.kh, l.kw, l.stride, l.pad_h, l.pad_w, l.groups, l.in_groups
            ),
            GemmLayer::Dense(l) => format!("n={n} {}->{} g{}", l.n_in, l.n_out, l.groups),
        };
        for op in layer.ops() {
            let seed = 200 + 10 * i as u64;
            let name = format!("{} {tag}", op.entry());
            let want = match gemm_op(&mut r, op, layer, n, seed).await {
                Ok(v) => v,
                Err(e) => {
                    out.push(failed(name, e));
                    continue;
                }
            };
            let key = layer.key(op, n);
            // The first candidate is the default.
            let mut default: Option<Vec<f32>> = None;
            for choice in candidates(&key) {
                g.clear_choices();
                g.set_choice(key.clone(), choice);
                let mut res = CaseResult {
                    name: format!("{name} [{}]", choice.name()),
                    values: want.len(),
                    checks: Vec::new(),
                    error: None,
                };
                match gemm_op(g, op, layer, n, seed).await {
                    Ok(got) => {
                        res.checks.push(compare("gpu~ref", &got, &want, GEMM_TOL));
                        match &default {
                            Some(d) if same_order(&key, choice) => {
                                res.checks.push(compare("gpu~default", &got, d, EXACT))
                            }
                            Some(_) => {}
                            None => default = Some(got),
                        }
                    }
                    Err(e) => res.error = Some(e.to_string()),
                }
                out.push(res);
            }
        }
    }
    g.clear_choices();
    for (key, choice) in saved {
        g.set_choice(key, choice);
    }
    out
}

fn failed(name: String, e: impl std::fmt::Display) -> CaseResult {
    CaseResult { name, values: 0, checks: Vec::new(), error: Some(e.to_string()) }
}

/// Judges one family: the CPU against the reference and, given a GPU run, the GPU against
/// both.
fn judge(reference: &[Out], cpu: &[Out], gpu: Option<&[Out]>, suffix: &str) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for (k, r) in reference.iter().enumerate() {
        let mut res =
            CaseResult { name: format!("{}{suffix}", r.name), values: r.values.len(), checks: Vec::new(), error: None };
        let mut check = |who, got: Option<&Out>, want: &Out, tol: Tol| match got {
            Some(o) if o.name == want.name && o.values.len() == want.values.len() => {
                res.checks.push(compare(who, &o.values, &want.values, tol))
            }
            _ => res.error = Some(format!("{who}: outputs do not line up")),
        };
        match gpu {
            Some(g) => {
                let loosest = (r.reference.0.max(r.pair.0), r.reference.1.max(r.pair.1));
                check("gpu~ref", g.get(k), r, loosest);
                check("cpu~ref", cpu.get(k), r, r.reference);
                if let Some(c) = cpu.get(k) {
                    check("gpu~cpu", g.get(k), c, c.pair);
                }
            }
            None => check("cpu~ref", cpu.get(k), r, r.reference),
        }
        results.push(res);
    }
    results
}

/// Runs every case whose family contains `filter` (all if empty): the CPU against the
/// reference, and the GPU against both when `gpu` is given (also with folded grids), then
/// on the GPU the kernel variants ("variants").
pub async fn run(mut gpu: Option<&mut GpuBackend>, filter: &str) -> Vec<CaseResult> {
    let mut out = Vec::new();
    let (mut r, mut c) = (Reference::new(), CpuBackend::new());
    for f in FAMILIES.iter().filter(|f| filter.is_empty() || f.name.contains(filter)) {
        let (want, cpu) = match ((f.reference)(&mut r).await, (f.cpu)(&mut c).await) {
            (Ok(want), Ok(cpu)) => (want, cpu),
            (Err(e), _) | (_, Err(e)) => {
                out.push(failed(f.name.to_string(), e));
                continue;
            }
        };
        let Some(g) = gpu.as_deref_mut() else {
            out.extend(judge(&want, &cpu, None, ""));
            continue;
        };
        match (f.gpu)(g).await {
            Ok(got) => out.extend(judge(&want, &cpu, Some(&got), "")),
            Err(e) => out.push(failed(f.name.to_string(), e)),
        }
        if f.fold {
            // The launchers fold grids wider than the per-dimension workgroup limit into two
            // dimensions. With the limit lowered to 3, small ops already need folding: every
            // kernel family's index arithmetic for folded grids runs without huge buffers.
            let saved = g.max_groups;
            g.max_groups = 3;
            let folded = (f.gpu)(g).await;
            g.max_groups = saved;
            match folded {
                Ok(got) => out.extend(judge(&want, &cpu, Some(&got), " (grid folded at 3)")),
                Err(e) => out.push(failed(format!("{} (grid folded at 3)", f.name), e)),
            }
        }
    }
    if let Some(g) = gpu
        && "variants".contains(filter)
    {
        out.extend(variant_cases(g).await);
    }
    out
}
