//! Direct convolution for stride-1 layers with AVX-512 (x86-64 CPUs that have it, detected at
//! run time); everything else uses the im2col + GEMM path in `conv2d.rs`, which stays the
//! reference these kernels are tested against.
//!
//! Each example's input is copied once into a zero-padded plane stack (C, Hp, Wp), so the
//! input values a kernel tap needs for 16 neighbouring output columns are 16 consecutive
//! floats: no column matrix is built. An output tile is 8 channels x 32 columns (one row of
//! up to 32 columns, or two rows of up to 16), held in 16 zmm accumulators; per kernel tap
//! the tile loads two input vectors and broadcasts 8 weights (16 FMAs).
//!
//! - forward: out = W * x_pad (+ bias, activation)
//! - backward-input: the forward of dout padded by k-1-pad with W transposed and flipped
//! - backward-weight: dW[co][tap] = sum over examples, rows and 16-column chunks of
//!   dout[co] . x_pad shifted by the tap, as lane-wise FMAs in a 4 x 4 (channel x tap) tile,
//!   summed across lanes at the end.
//!
//! Work is split by example (forward, backward-input) or by output tile (backward-weight);
//! each output is produced by one task in a fixed order, so results do not depend on the
//! number of threads.

use rayon::prelude::*;

use super::activation::apply_epilogue;
use crate::backend::Epilogue;
use crate::model::Conv2d;

/// Output channels per tile.
const MR: usize = 8;
/// Lanes of a zmm register.
const L: usize = 16;

/// Whether this CPU runs the kernels here.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Layers the direct path handles: stride 1 (and, for the backward-input, padding below the
/// kernel size, so the transposed convolution's padding is not negative).
pub fn supports(l: &Conv2d) -> bool {
    l.stride == 1 && l.pad_h < l.kh && l.pad_w < l.kw && available()
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

/// One "convolution" y (m, ho, wo) = A (m, taps) * x_pad over taps, per example, for the
/// forward and backward-input; once an example's outputs are all written,
/// `epilogue(example, channel, plane)` finishes each channel's plane in place.
#[allow(clippy::too_many_arguments)]
fn convolve<E: Fn(usize, usize, &mut [f32]) + Sync>(
    out: &mut [f32],
    out_len: usize,
    inp: &[f32],
    in_len: usize,
    n: usize,
    pad: &Padded,
    taps: &[u32],
    a: &[f32],
    m: usize,
    ho: usize,
    wo: usize,
    epilogue: E,
) {
    let k = taps.len();
    let examples = out[..n * out_len].par_chunks_mut(out_len).zip(inp[..n * in_len].par_chunks(in_len)).enumerate();
    examples.for_each_init(
        || vec![0f32; pad.len()],
        |xp, (s, (y, x))| {
            pad.fill(xp, x);
            // Tiles: one row of up to 32 columns, or two rows of up to 16.
            let two_rows = wo <= L;
            let mut oy = 0;
            while oy < ho {
                let mut ox = 0;
                while ox < wo {
                    let (b0, b1) = if two_rows {
                        (oy * pad.wp, (oy + 1) * pad.wp)
                    } else {
                        (oy * pad.wp + ox, oy * pad.wp + ox + L)
                    };
                    for blk in 0..m.div_ceil(MR) {
                        let mut acc = [[0f32; L]; 2 * MR];
                        // SAFETY: `available()` was checked by `supports`; the padded buffer has
                        // room for every load (see `Padded::len`), and `a` holds `k` taps of MR.
                        unsafe {
                            kernel(
                                k,
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
            for (co, plane) in y.chunks_mut(ho * wo).enumerate() {
                epilogue(s, co, plane);
            }
        },
    );
}

/// acc[2i + v] = sum over taps t of a[t][i] * x[b_v + taps[t] .. +16], for i < MR, v < 2.
///
/// # Safety
/// AVX-512F and FMA must be available; `a` must hold `k * MR` floats, and every
/// `b_v + taps[t] + 15` must be inside the buffer `b0` and `b1` point into.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn kernel(k: usize, a: *const f32, b0: *const f32, b1: *const f32, taps: &[u32], acc: &mut [[f32; L]; 2 * MR]) {
    use std::arch::x86_64::*;
    let mut c = [_mm512_setzero_ps(); 2 * MR];
    for (t, &off) in taps.iter().enumerate().take(k) {
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

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: usize, _: *const f32, _: *const f32, _: *const f32, _: &[u32], _: &mut [[f32; L]; 2 * MR]) {
    unreachable!("direct kernels run only where available() holds")
}

pub fn conv2d_forward(out: &mut [f32], inp: &[f32], params: &[f32], l: &Conv2d, n: usize, epi: Epilogue) {
    let pad = Padded {
        c: l.c_in,
        h: l.h_in,
        w: l.w_in,
        hp: l.h_in + 2 * l.pad_h,
        wp: l.w_in + 2 * l.pad_w,
        pad_h: l.pad_h,
        pad_w: l.pad_w,
    };
    let taps = pad.taps(l.kh, l.kw);
    let k = taps.len();
    let a = pack_weights(l.c_out, k, |co, t| params[l.w_off + co * k + t]);
    let bias: Vec<f32> = (0..l.c_out).map(|co| l.b_off.map_or(0.0, |b| params[b + co])).collect();
    let (plane, len) = (l.h_out * l.w_out, l.out_len());
    let epilogue = |s: usize, co: usize, v: &mut [f32]| apply_epilogue(v, s * len + co * plane, bias[co], &epi);
    convolve(out, l.out_len(), inp, l.in_len(), n, &pad, &taps, &a, l.c_out, l.h_out, l.w_out, epilogue);
}

pub fn conv2d_backward_input(dinp: &mut [f32], dout: &[f32], params: &[f32], l: &Conv2d, n: usize) {
    // dx = dout padded by (k - 1 - pad), convolved with W[co][ci] flipped, channels swapped.
    let (ph, pw) = (l.kh - 1 - l.pad_h, l.kw - 1 - l.pad_w);
    let pad =
        Padded { c: l.c_out, h: l.h_out, w: l.w_out, hp: l.h_out + 2 * ph, wp: l.w_out + 2 * pw, pad_h: ph, pad_w: pw };
    let taps = pad.taps(l.kh, l.kw);
    let khw = l.kh * l.kw;
    let a = pack_weights(l.c_in, taps.len(), |ci, t| {
        let (co, r) = (t / khw, t % khw);
        let (ky, kx) = (r / l.kw, r % l.kw);
        params[l.w_off + ((co * l.c_in + ci) * l.kh + (l.kh - 1 - ky)) * l.kw + (l.kw - 1 - kx)]
    });
    convolve(dinp, l.in_len(), dout, l.out_len(), n, &pad, &taps, &a, l.c_in, l.h_in, l.w_in, |_, _, _| {});
}

/// Channels and taps per backward-weight tile.
const WM: usize = 4;
const WN: usize = 4;
/// Examples per pass over the tiles (their padded inputs stay in cache together).
const WCHUNK: usize = 16;

pub fn conv2d_backward_weight(grads: &mut [f32], dout: &[f32], inp: &[f32], l: &Conv2d, n: usize) {
    let pad = Padded {
        c: l.c_in,
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
    let tiles_m = l.c_out.div_ceil(WM);
    let tiles_n = k.div_ceil(WN);
    // Per tile (channel block, tap block): its WM x WN sums, accumulated over example chunks
    // in order (each chunk's 16 lanes added in a fixed order first).
    let mut dw = vec![0f32; tiles_m * tiles_n * WM * WN];
    let xlen = pad.len();
    let dlen = l.c_out * ho * wq + L;
    // Made once: each chunk overwrites the padded inputs whole and the dout rows' first wo
    // columns; the columns past wo stay zero.
    let mut xs = vec![0f32; WCHUNK.min(n) * xlen];
    let mut ds = vec![0f32; WCHUNK.min(n) * dlen];
    for s0 in (0..n).step_by(WCHUNK) {
        let cnt = WCHUNK.min(n - s0);
        xs[..cnt * xlen].par_chunks_mut(xlen).zip(ds[..cnt * dlen].par_chunks_mut(dlen)).enumerate().for_each(
            |(j, (xp, dp))| {
                let s = s0 + j;
                pad.fill(xp, &inp[s * l.in_len()..(s + 1) * l.in_len()]);
                for co in 0..l.c_out {
                    for oy in 0..ho {
                        let src = &dout[((s * l.c_out + co) * ho + oy) * wo..][..wo];
                        dp[(co * ho + oy) * wq..][..wo].copy_from_slice(src);
                    }
                }
            },
        );
        dw.par_chunks_mut(WM * WN).enumerate().for_each(|(t, acc)| {
            let (tm, tn) = (t / tiles_n, t % tiles_n);
            let mut sums = [[0f32; L]; WM * WN];
            // SAFETY: available() checked by supports(); all reads are inside xs and ds (the
            // padded buffers have tail room), rows and taps past the layer's are skipped.
            unsafe {
                wgrad_kernel(&xs, xlen, &ds, dlen, cnt, &pad, &taps, tm * WM, tn * WN, l.c_out, ho, wq, &mut sums)
            };
            for (a, s) in acc.iter_mut().zip(&sums) {
                *a += s.iter().sum::<f32>();
            }
        });
    }
    let dst = &mut grads[l.w_off..l.w_off + l.c_out * k];
    for co in 0..l.c_out {
        for t in 0..k {
            let (tm, tn) = (co / WM, t / WN);
            dst[co * k + t] = dw[(tm * tiles_n + tn) * WM * WN + (co % WM) * WN + t % WN];
        }
    }
    if let Some(b) = l.b_off {
        let db: Vec<f32> = (0..l.c_out)
            .into_par_iter()
            .map(|co| (0..n).map(|s| dout[(s * l.c_out + co) * ho * wo..][..ho * wo].iter().sum::<f32>()).sum())
            .collect();
        grads[b..b + l.c_out].copy_from_slice(&db);
    }
}

/// sums[i * WN + j] (lane-wise) += sum over examples, rows and chunks of
/// dout[co0 + i][row][chunk] * x_pad[row + tap(t0 + j)][chunk].
///
/// # Safety
/// AVX-512F and FMA must be available and the buffers laid out as `conv2d_backward_weight`
/// makes them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_kernel(
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
    use std::arch::x86_64::*;
    let mut c = [_mm512_setzero_ps(); WM * WN];
    let mi = WM.min(c_out - co0);
    let nj = WN.min(taps.len() - t0);
    // Rows and taps past the layer's read row/tap 0 and are multiplied by zero.
    let mut tap = [0usize; WN];
    for (j, t) in tap.iter_mut().enumerate().take(nj) {
        *t = taps[t0 + j] as usize;
    }
    for s in 0..cnt {
        let x = xs[s * xlen..].as_ptr();
        let d = ds[s * dlen..].as_ptr();
        for oy in 0..ho {
            for ch in (0..wq).step_by(L) {
                // SAFETY: see the function's contract.
                unsafe {
                    let mut dv = [_mm512_setzero_ps(); WM];
                    for (i, v) in dv.iter_mut().enumerate().take(mi) {
                        *v = _mm512_loadu_ps(d.add(((co0 + i) * ho + oy) * wq + ch));
                    }
                    let base = x.add(oy * pad.wp + ch);
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
    for (idx, v) in c.iter().enumerate() {
        let (i, j) = (idx / WN, idx % WN);
        if i < mi && j < nj {
            // SAFETY: sums[idx] holds 16 floats.
            unsafe { _mm512_storeu_ps(sums[idx].as_mut_ptr(), *v) };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_kernel(
    _: &[f32],
    _: usize,
    _: &[f32],
    _: usize,
    _: usize,
    _: &Padded,
    _: &[u32],
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: &mut [[f32; L]; WM * WN],
) {
    unreachable!("direct kernels run only where available() holds")
}
