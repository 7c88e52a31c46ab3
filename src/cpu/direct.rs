//! Direct convolution for stride-1 layers on x86-64 CPUs with AVX-512 or AVX2 + FMA (detected
//! at run time); everything else uses the im2col + GEMM path in `conv2d.rs`, which stays the
//! reference these kernels are tested against.
//!
//! Each example's input is copied once into a zero-padded plane stack (C, Hp, Wp), so the
//! input values a kernel tap needs for 16 neighbouring output columns are 16 consecutive
//! floats: no column matrix is built. An output tile is 8 channels x 32 columns (one row of
//! up to 32 columns, or two rows of up to 16). With AVX-512 it is held in 16 zmm accumulators
//! and per kernel tap the tile loads two input vectors and broadcasts 8 weights (16 FMAs);
//! with AVX2 (16 ymm registers) the tile is done as four 8-channel x 8-column quarters, each
//! in 8 accumulators.
//!
//! - forward: out = W * x_pad (+ bias, activation)
//! - backward-input: the forward of dout padded by k-1-pad with W transposed and flipped
//! - backward-weight: dW[co][tap] = sum over examples, rows and 16-column chunks of
//!   dout[co] . x_pad shifted by the tap, as lane-wise FMAs in a 4 x 4 (channel x tap) tile
//!   (AVX2: two 4 x 2 halves, the two 8-lane halves of a chunk into the same lanes), summed
//!   across lanes at the end.
//!
//! Work is split by example (forward, backward-input) or by output tile (backward-weight);
//! each output is produced by one task in a fixed order, so results do not depend on the
//! number of threads (they do on the instruction set: the sums run in another order).

use rayon::prelude::*;

use super::activation::{Epi, apply_epilogue};
use super::conv2d::{group_input, group_output};
use crate::model::Conv2d;

/// Output channels per tile.
const MR: usize = 8;
/// Lanes of a zmm register: the width of a column chunk on every instruction set.
const L: usize = 16;
/// Output channels per pass over a unit's tiles (a multiple of MR).
const FCHUNK: usize = 32;

/// The vector instruction sets the kernels here are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
        }
    }
}

/// Every instruction set of `Isa` this CPU runs, best first.
pub fn isas() -> Vec<Isa> {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("fma") {
            if std::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
            if std::is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
        }
    }
    v
}

/// The instruction set the CPU backend's convolutions use, if the direct path runs here.
pub fn best() -> Option<Isa> {
    static BEST: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| isas().first().copied())
}

/// Layers the direct path handles (on a CPU with one of `isas()`): stride 1 (and, for the
/// backward-input, padding below the kernel size, so the transposed convolution's padding is
/// not negative).
pub fn supports(l: &Conv2d) -> bool {
    l.stride == 1 && l.pad_h < l.kh && l.pad_w < l.kw
}

/// Geometry of a padded plane stack and the offset of each kernel tap in it.
struct Padded {
    c: usize,
    h: usize,
    w: usize,
    hp: usize,
    wp: usize,
    pad_h: usize,
    pad_w: usize,
}

impl Padded {
    fn len(&self) -> usize {
        // Tail room: a tile may read up to two rows and 32 columns past the last plane.
        self.c * self.hp * self.wp + 2 * self.wp + 2 * L + 16
    }

    /// Copies one example (c, h, w) into `dst` with zeros around it, writing every element of
    /// `dst` once (so `dst` may hold anything before).
    fn fill(&self, dst: &mut [f32], src: &[f32]) {
        let (wp, pw) = (self.wp, self.pad_w);
        for ci in 0..self.c {
            let plane = &mut dst[ci * self.hp * wp..(ci + 1) * self.hp * wp];
            plane[..self.pad_h * wp].fill(0.0);
            plane[(self.pad_h + self.h) * wp..].fill(0.0);
            for y in 0..self.h {
                let row = &mut plane[(y + self.pad_h) * wp..(y + self.pad_h + 1) * wp];
                row[..pw].fill(0.0);
                row[pw..pw + self.w].copy_from_slice(&src[(ci * self.h + y) * self.w..][..self.w]);
                row[pw + self.w..].fill(0.0);
            }
        }
        dst[self.c * self.hp * wp..self.len()].fill(0.0);
    }

    /// Offset of tap (ci, ky, kx) relative to an output position's top-left source.
    fn taps(&self, kh: usize, kw: usize) -> Vec<u32> {
        let mut t = Vec::with_capacity(self.c * kh * kw);
        for ci in 0..self.c {
            for ky in 0..kh {
                for kx in 0..kw {
                    t.push(((ci * self.hp + ky) * self.wp + kx) as u32);
                }
            }
        }
        t
    }
}

/// Weights packed as [channel block][tap][MR], zero rows past the last channel.
fn pack_weights(rows: usize, taps: usize, get: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let blocks = rows.div_ceil(MR);
    let mut a = vec![0f32; blocks * taps * MR];
    for r in 0..rows {
        let (b, i) = (r / MR, r % MR);
        for k in 0..taps {
            a[(b * taps + k) * MR + i] = get(r, k);
        }
    }
    a
}

/// One "convolution" y (m, ho, wo) = A (m, taps) * x_pad over taps, per unit (an example, or
/// one group of one example: `units` slabs of `out_len` in `out`), for the forward and
/// backward-input; `input(u)` is unit u's input and `a(u)` its packed weights. Once a unit's
/// outputs are all written, `epilogue(unit, channel, plane)` finishes each channel's plane in
/// place.
#[allow(clippy::too_many_arguments)]
fn convolve<'x, I, P, E>(
    isa: Isa,
    out: &mut [f32],
    out_len: usize,
    units: usize,
    input: I,
    pad: &Padded,
    taps: &[u32],
    a: P,
    m: usize,
    ho: usize,
    wo: usize,
    epilogue: E,
) where
    I: Fn(usize) -> &'x [f32] + Sync,
    P: Fn(usize) -> &'x [f32] + Sync,
    E: Fn(usize, usize, &mut [f32]) + Sync,
{
    let k = taps.len();
    out[..units * out_len].par_chunks_mut(out_len).enumerate().for_each_init(
        || vec![0f32; pad.len()],
        |xp, (s, y)| {
            pad.fill(xp, input(s));
            let a = a(s);
            // Tiles: one row of up to 32 columns, or two rows of up to 16; the output channels
            // FCHUNK at a time, so a tile's results go to at most FCHUNK planes and those
            // planes are still in cache for the epilogue (an array's first layer is K times as
            // wide as one model's: 192 planes written tile by tile ran at half the speed).
            let two_rows = wo <= L;
            for f0 in (0..m).step_by(FCHUNK) {
                let f1 = (f0 + FCHUNK).min(m);
                let mut oy = 0;
                while oy < ho {
                    let mut ox = 0;
                    while ox < wo {
                        let (b0, b1) = if two_rows {
                            (oy * pad.wp, (oy + 1) * pad.wp)
                        } else {
                            (oy * pad.wp + ox, oy * pad.wp + ox + L)
                        };
                        for blk in f0 / MR..f1.div_ceil(MR) {
                            let mut acc = [[0f32; L]; 2 * MR];
                            // SAFETY: the caller's `isa` runs on this CPU; the padded buffer has
                            // room for every load (see `Padded::len`), and `a` holds `k` taps of MR.
                            unsafe {
                                kernel(
                                    isa,
                                    a[blk * k * MR..].as_ptr(),
                                    xp.as_ptr().add(b0),
                                    xp.as_ptr().add(b1),
                                    taps,
                                    &mut acc,
                                )
                            };
                            for i in 0..MR.min(m - blk * MR) {
                                let co = blk * MR + i;
                                let plane = &mut y[co * ho * wo..(co + 1) * ho * wo];
                                // (accumulator half, destination start, count)
                                let parts = if two_rows {
                                    [(0, oy * wo, wo), (1, (oy + 1) * wo, if oy + 1 < ho { wo } else { 0 })]
                                } else {
                                    let cnt = (wo - ox).min(2 * L);
                                    [(0, oy * wo + ox, cnt.min(L)), (1, oy * wo + ox + L, cnt.saturating_sub(L))]
                                };
                                for (h, at, cnt) in parts.into_iter().filter(|p| p.2 > 0) {
                                    plane[at..at + cnt].copy_from_slice(&acc[2 * i + h][..cnt]);
                                }
                            }
                        }
                        ox += if two_rows { wo } else { 2 * L };
                    }
                    oy += if two_rows { 2 } else { 1 };
                }
                // The epilogue over whole planes: long runs vectorize; 16-wide ones did not pay.
                for (co, plane) in y.chunks_mut(ho * wo).enumerate().take(f1).skip(f0) {
                    epilogue(s, co, plane);
                }
            }
        },
    );
}

/// acc[2i + v] = sum over taps t of a[t][i] * x[b_v + taps[t] .. +16], for i < MR, v < 2.
///
/// # Safety
/// `isa` must run on this CPU; `a` must hold `taps.len() * MR` floats, and every
/// `b_v + taps[t] + 15` must be inside the buffer `b0` and `b1` point into.
unsafe fn kernel(isa: Isa, a: *const f32, b0: *const f32, b1: *const f32, taps: &[u32], acc: &mut [[f32; L]; 2 * MR]) {
    // SAFETY: passed on from the caller.
    unsafe {
        match isa {
            Isa::Avx512 => x86::kernel_avx512(a, b0, b1, taps, acc),
            Isa::Avx2 => x86::kernel_avx2(a, b0, b1, taps, acc),
        }
    }
}

pub fn conv2d_forward(isa: Isa, out: &mut [f32], inp: &[f32], params: &[f32], l: &Conv2d, n: usize, epi: &Epi) {
    let (cg, fg, groups) = (l.group_in(), l.group_out(), l.groups);
    let pad = Padded {
        c: cg,
        h: l.h_in,
        w: l.w_in,
        hp: l.h_in + 2 * l.pad_h,
        wp: l.w_in + 2 * l.pad_w,
        pad_h: l.pad_h,
        pad_w: l.pad_w,
    };
    let taps = pad.taps(l.kh, l.kw);
    let k = taps.len();
    let packs: Vec<Vec<f32>> = (0..groups)
        .map(|g| {
            let w_off = l.group(g).w_off;
            pack_weights(fg, k, |co, t| params[w_off + co * k + t])
        })
        .collect();
    let bias: Vec<f32> = (0..l.c_out).map(|co| l.b_off.map_or(0.0, |b| params[b + co])).collect();
    let (plane, len) = (l.h_out * l.w_out, l.out_len());
    let epilogue = |u: usize, co: usize, v: &mut [f32]| {
        let (s, c) = (u / groups, (u % groups) * fg + co);
        apply_epilogue(v, s * len + c * plane, bias[c], epi)
    };
    let input = |u: usize| group_input(inp, l, u / groups, u % groups);
    let a = |u: usize| packs[u % groups].as_slice();
    convolve(isa, out, fg * plane, n * groups, input, &pad, &taps, a, fg, l.h_out, l.w_out, epilogue);
}

pub fn conv2d_backward_input(isa: Isa, dinp: &mut [f32], dout: &[f32], params: &[f32], l: &Conv2d, n: usize) {
    // dx = dout padded by (k - 1 - pad), convolved with W[co][ci] flipped, channels swapped;
    // per group (each group's input channels are its own: in_groups == groups).
    let (cg, fg, groups) = (l.group_in(), l.group_out(), l.groups);
    let (ph, pw) = (l.kh - 1 - l.pad_h, l.kw - 1 - l.pad_w);
    let pad =
        Padded { c: fg, h: l.h_out, w: l.w_out, hp: l.h_out + 2 * ph, wp: l.w_out + 2 * pw, pad_h: ph, pad_w: pw };
    let taps = pad.taps(l.kh, l.kw);
    let khw = l.kh * l.kw;
    let packs: Vec<Vec<f32>> = (0..groups)
        .map(|g| {
            let w_off = l.group(g).w_off;
            pack_weights(cg, taps.len(), |ci, t| {
                let (co, r) = (t / khw, t % khw);
                let (ky, kx) = (r / l.kw, r % l.kw);
                params[w_off + ((co * cg + ci) * l.kh + (l.kh - 1 - ky)) * l.kw + (l.kw - 1 - kx)]
            })
        })
        .collect();
    let input = |u: usize| group_output(dout, l, u / groups, u % groups);
    let a = |u: usize| packs[u % groups].as_slice();
    let slab = cg * l.h_in * l.w_in;
    convolve(isa, dinp, slab, n * groups, input, &pad, &taps, a, cg, l.h_in, l.w_in, |_, _, _| {});
}

/// Channels and taps per backward-weight tile.
const WM: usize = 4;
const WN: usize = 4;
/// Examples per pass over the tiles (their padded inputs stay in cache together).
const WCHUNK: usize = 16;

pub fn conv2d_backward_weight(isa: Isa, grads: &mut [f32], dout: &[f32], inp: &[f32], l: &Conv2d, n: usize) {
    for g in 0..l.groups {
        group_backward_weight(isa, grads, dout, inp, l, g, n);
    }
    if let Some(b) = l.b_off {
        let (ho, wo) = (l.h_out, l.w_out);
        let db: Vec<f32> = (0..l.c_out)
            .into_par_iter()
            .map(|co| (0..n).map(|s| dout[(s * l.c_out + co) * ho * wo..][..ho * wo].iter().sum::<f32>()).sum())
            .collect();
        grads[b..b + l.c_out].copy_from_slice(&db);
    }
}

/// dW of group g's filters.
fn group_backward_weight(isa: Isa, grads: &mut [f32], dout: &[f32], inp: &[f32], l: &Conv2d, g: usize, n: usize) {
    let (cg, fg) = (l.group_in(), l.group_out());
    let pad = Padded {
        c: cg,
        h: l.h_in,
        w: l.w_in,
        hp: l.h_in + 2 * l.pad_h,
        wp: l.w_in + 2 * l.pad_w,
        pad_h: l.pad_h,
        pad_w: l.pad_w,
    };
    let taps = pad.taps(l.kh, l.kw);
    let k = taps.len();
    let (ho, wo) = (l.h_out, l.w_out);
    let chunks = wo.div_ceil(L);
    let wq = chunks * L; // dout rows padded to whole vectors with zeros
    let tiles_m = fg.div_ceil(WM);
    let tiles_n = k.div_ceil(WN);
    // Per tile (channel block, tap block): its WM x WN sums, accumulated over example chunks
    // in order (each chunk's 16 lanes added in a fixed order first).
    let mut dw = vec![0f32; tiles_m * tiles_n * WM * WN];
    let xlen = pad.len();
    let dlen = fg * ho * wq + L;
    // Made once: each chunk overwrites the padded inputs whole and the dout rows' first wo
    // columns; the columns past wo stay zero.
    let mut xs = vec![0f32; WCHUNK.min(n) * xlen];
    let mut ds = vec![0f32; WCHUNK.min(n) * dlen];
    for s0 in (0..n).step_by(WCHUNK) {
        let cnt = WCHUNK.min(n - s0);
        xs[..cnt * xlen].par_chunks_mut(xlen).zip(ds[..cnt * dlen].par_chunks_mut(dlen)).enumerate().for_each(
            |(j, (xp, dp))| {
                let s = s0 + j;
                pad.fill(xp, group_input(inp, l, s, g));
                let dy = group_output(dout, l, s, g);
                for co in 0..fg {
                    for oy in 0..ho {
                        let src = &dy[(co * ho + oy) * wo..][..wo];
                        dp[(co * ho + oy) * wq..][..wo].copy_from_slice(src);
                    }
                }
            },
        );
        dw.par_chunks_mut(WM * WN).enumerate().for_each(|(t, acc)| {
            let (tm, tn) = (t / tiles_n, t % tiles_n);
            let mut sums = [[0f32; L]; WM * WN];
            // SAFETY: the caller's `isa` runs on this CPU; all reads are inside xs and ds (the
            // padded buffers have tail room), rows and taps past the layer's are skipped.
            unsafe {
                wgrad_kernel(isa, &xs, xlen, &ds, dlen, cnt, &pad, &taps, tm * WM, tn * WN, fg, ho, wq, &mut sums)
            };
            for (a, s) in acc.iter_mut().zip(&sums) {
                *a += s.iter().sum::<f32>();
            }
        });
    }
    let w_off = l.group(g).w_off;
    let dst = &mut grads[w_off..w_off + fg * k];
    for co in 0..fg {
        for t in 0..k {
            let (tm, tn) = (co / WM, t / WN);
            dst[co * k + t] = dw[(tm * tiles_n + tn) * WM * WN + (co % WM) * WN + t % WN];
        }
    }
}

/// sums[i * WN + j] (lane-wise) += sum over examples, rows and chunks of
/// dout[co0 + i][row][chunk] * x_pad[row + tap(t0 + j)][chunk].
///
/// # Safety
/// `isa` must run on this CPU and the buffers be laid out as `conv2d_backward_weight` makes
/// them.
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_kernel(
    isa: Isa,
    xs: &[f32],
    xlen: usize,
    ds: &[f32],
    dlen: usize,
    cnt: usize,
    pad: &Padded,
    taps: &[u32],
    co0: usize,
    t0: usize,
    c_out: usize,
    ho: usize,
    wq: usize,
    sums: &mut [[f32; L]; WM * WN],
) {
    let mi = WM.min(c_out - co0);
    let nj = WN.min(taps.len() - t0);
    // Rows and taps past the layer's read row/tap 0 and are multiplied by zero.
    let mut tap = [0usize; WN];
    for (j, t) in tap.iter_mut().enumerate().take(nj) {
        *t = taps[t0 + j] as usize;
    }
    let g = WGeometry { xlen, dlen, cnt, wp: pad.wp, co0, mi, ho, wq };
    // SAFETY: passed on from the caller.
    unsafe {
        match isa {
            Isa::Avx512 => x86::wgrad_avx512(xs, ds, &g, &tap, sums),
            Isa::Avx2 => x86::wgrad_avx2(xs, ds, &g, &tap, sums),
        }
    }
    // Rows and taps past the layer's are not results.
    for (idx, v) in sums.iter_mut().enumerate() {
        if idx / WN >= mi || idx % WN >= nj {
            *v = [0.0; L];
        }
    }
}

/// The shape of a backward-weight tile's sums (see `conv2d_backward_weight`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct WGeometry {
    xlen: usize,
    dlen: usize,
    cnt: usize,
    wp: usize,
    co0: usize,
    /// Channels of the tile inside the layer.
    mi: usize,
    ho: usize,
    wq: usize,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{L, MR, WGeometry, WM, WN};
    use std::arch::x86_64::*;

    /// See `kernel`.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn kernel_avx512(
        a: *const f32,
        b0: *const f32,
        b1: *const f32,
        taps: &[u32],
        acc: &mut [[f32; L]; 2 * MR],
    ) {
        let mut c = [_mm512_setzero_ps(); 2 * MR];
        for (t, &off) in taps.iter().enumerate() {
            // SAFETY: the caller guarantees these reads are in bounds.
            unsafe {
                let x0 = _mm512_loadu_ps(b0.add(off as usize));
                let x1 = _mm512_loadu_ps(b1.add(off as usize));
                let w = a.add(t * MR);
                for i in 0..MR {
                    let wi = _mm512_set1_ps(*w.add(i));
                    c[2 * i] = _mm512_fmadd_ps(wi, x0, c[2 * i]);
                    c[2 * i + 1] = _mm512_fmadd_ps(wi, x1, c[2 * i + 1]);
                }
            }
        }
        for (dst, v) in acc.iter_mut().zip(c) {
            // SAFETY: dst holds 16 floats.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
        }
    }

    /// See `kernel`: the tile as four quarters (b0 or b1, low or high 8 columns), each 8
    /// channels in 8 ymm accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_avx2(
        a: *const f32,
        b0: *const f32,
        b1: *const f32,
        taps: &[u32],
        acc: &mut [[f32; L]; 2 * MR],
    ) {
        for q in 0..4 {
            let (v, half) = (q / 2, q % 2);
            // SAFETY: inside the 16 floats at b_v + tap that the caller guarantees.
            let base = unsafe { if v == 0 { b0 } else { b1 }.add(8 * half) };
            let mut c = [_mm256_setzero_ps(); MR];
            for (t, &off) in taps.iter().enumerate() {
                // SAFETY: as above.
                unsafe {
                    let x = _mm256_loadu_ps(base.add(off as usize));
                    let w = a.add(t * MR);
                    for (i, ci) in c.iter_mut().enumerate() {
                        *ci = _mm256_fmadd_ps(_mm256_set1_ps(*w.add(i)), x, *ci);
                    }
                }
            }
            for (i, ci) in c.iter().enumerate() {
                // SAFETY: the row holds 16 floats.
                unsafe { _mm256_storeu_ps(acc[2 * i + v][8 * half..].as_mut_ptr(), *ci) };
            }
        }
    }

    /// See `wgrad_kernel`.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn wgrad_avx512(
        xs: &[f32],
        ds: &[f32],
        g: &WGeometry,
        tap: &[usize; WN],
        sums: &mut [[f32; L]; WM * WN],
    ) {
        let mut c = [_mm512_setzero_ps(); WM * WN];
        for s in 0..g.cnt {
            let x = xs[s * g.xlen..].as_ptr();
            let d = ds[s * g.dlen..].as_ptr();
            for oy in 0..g.ho {
                for ch in (0..g.wq).step_by(L) {
                    // SAFETY: inside xs and ds (see `conv2d_backward_weight`).
                    unsafe {
                        let mut dv = [_mm512_setzero_ps(); WM];
                        for (i, v) in dv.iter_mut().enumerate().take(g.mi) {
                            *v = _mm512_loadu_ps(d.add(((g.co0 + i) * g.ho + oy) * g.wq + ch));
                        }
                        let base = x.add(oy * g.wp + ch);
                        for (j, &tj) in tap.iter().enumerate() {
                            let xv = _mm512_loadu_ps(base.add(tj));
                            for i in 0..WM {
                                c[i * WN + j] = _mm512_fmadd_ps(dv[i], xv, c[i * WN + j]);
                            }
                        }
                    }
                }
            }
        }
        for (dst, v) in sums.iter_mut().zip(c) {
            // SAFETY: dst holds 16 floats.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
        }
    }

    /// See `wgrad_kernel`: two passes of 2 taps (4 x 2 ymm accumulators); both 8-lane halves
    /// of a chunk add into lanes 0-7, lanes 8-15 stay zero.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn wgrad_avx2(xs: &[f32], ds: &[f32], g: &WGeometry, tap: &[usize; WN], sums: &mut [[f32; L]; WM * WN]) {
        for jp in 0..WN / 2 {
            let mut c = [_mm256_setzero_ps(); WM * 2];
            for s in 0..g.cnt {
                let x = xs[s * g.xlen..].as_ptr();
                let d = ds[s * g.dlen..].as_ptr();
                for oy in 0..g.ho {
                    for col in (0..g.wq).step_by(8) {
                        // SAFETY: inside xs and ds (see `conv2d_backward_weight`).
                        unsafe {
                            let mut dv = [_mm256_setzero_ps(); WM];
                            for (i, v) in dv.iter_mut().enumerate().take(g.mi) {
                                *v = _mm256_loadu_ps(d.add(((g.co0 + i) * g.ho + oy) * g.wq + col));
                            }
                            let base = x.add(oy * g.wp + col);
                            for jj in 0..2 {
                                let xv = _mm256_loadu_ps(base.add(tap[2 * jp + jj]));
                                for i in 0..WM {
                                    c[i * 2 + jj] = _mm256_fmadd_ps(dv[i], xv, c[i * 2 + jj]);
                                }
                            }
                        }
                    }
                }
            }
            for (idx, v) in c.iter().enumerate() {
                let (i, jj) = (idx / 2, idx % 2);
                let dst = &mut sums[i * WN + 2 * jp + jj];
                // SAFETY: dst holds 16 floats.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), *v) };
                dst[8..].fill(0.0);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    //! No direct kernels off x86-64: `isas()` is empty there, so none of these is called.
    use super::{L, MR, WGeometry, WM, WN};
    pub unsafe fn kernel_avx512(_: *const f32, _: *const f32, _: *const f32, _: &[u32], _: &mut [[f32; L]; 2 * MR]) {
        unreachable!()
    }
    pub use kernel_avx512 as kernel_avx2;
    pub unsafe fn wgrad_avx512(_: &[f32], _: &[f32], _: &WGeometry, _: &[usize; WN], _: &mut [[f32; L]; WM * WN]) {
        unreachable!()
    }
    pub use wgrad_avx512 as wgrad_avx2;
}
