//! Direct convolution for stride-1 layers on x86-64 CPUs with AVX-512 or AVX2 + FMA (detected
//! at run time, or named by `GPU_TRAIN_CPU_ISA`); everything else uses the im2col + GEMM path
//! in `conv2d.rs`, which stays the reference these kernels are tested against.
//!
//! Each example's input is copied once into a zero-padded plane stack (C, Hp, Wp), so a kernel
//! tap of any output position is one fixed offset away: no column matrix is built.
//!
//! AVX-512 (32 zmm registers): an output tile is 8 channels x 32 columns (one row of up to 32
//! columns, or two rows of up to 16), in 16 accumulators; per tap it loads two input vectors
//! and broadcasts 8 weights. The weight gradient sums dout[co] . x_pad shifted by the tap
//! lane-wise in a 4 x 4 (channel x tap) tile and across lanes at the end.
//!
//! AVX2 (16 ymm registers) works in outer products with the channels in the lanes, so no lane
//! is spent on padding columns whatever the plane's width:
//! - forward and backward-input: a tile is 16 output channels (two registers of packed
//!   weights per tap) x 6 output positions (one broadcast input value each), 12 sums in
//!   registers, 256 taps at a time so that the weights and the input rows they read stay in L1;
//! - backward-weight: a tile is 16 output channels (two registers of the output gradient,
//!   packed [position][16]) x 6 taps (one broadcast input value each), over chunks of 256
//!   positions that stay in L1 while a group of tiles runs over them.
//!
//! - forward: out = W * x_pad (+ bias, activation)
//! - backward-input: the forward of dout padded by k-1-pad with W transposed and flipped
//! - backward-weight: dW[co][tap] = sum over examples and positions of dout[co] * x_pad at the
//!   position shifted by the tap
//!
//! Work is split by example (forward, backward-input) or by output tile (backward-weight);
//! each output is produced by one task in a fixed order, so results do not depend on the
//! number of threads (they do on the instruction set: the weight gradient's sums run in
//! another order; forward and backward-input sum each output's taps in order from zero on
//! both).

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

/// The instruction set the CPU backend's convolutions use, if the direct path runs here: the
/// best of `isas()`, or the one `GPU_TRAIN_CPU_ISA` names (`avx2` on an AVX-512 machine
/// measures the AVX2 kernels there; `gemm` turns the direct path off). A name this CPU cannot
/// run, or an unknown one, is refused with a message and the best is used.
pub fn best() -> Option<Isa> {
    static BEST: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| {
        let have = isas();
        let Ok(want) = std::env::var("GPU_TRAIN_CPU_ISA") else {
            return have.first().copied();
        };
        match want.to_ascii_lowercase().as_str() {
            "gemm" | "none" => None,
            name => match have.iter().find(|i| i.name() == name) {
                Some(&isa) => Some(isa),
                None => {
                    let ran: Vec<&str> = have.iter().map(|i| i.name()).collect();
                    eprintln!(
                        "warning: GPU_TRAIN_CPU_ISA={want}: this CPU runs {} (or gemm); using {}",
                        if ran.is_empty() { "none of the direct kernels".to_string() } else { ran.join(", ") },
                        have.first().map_or("gemm", |i| i.name())
                    );
                    have.first().copied()
                }
            },
        }
    })
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
    /// A group's input channels of layer `l`, padded by the layer's padding.
    fn input(l: &Conv2d) -> Padded {
        Padded {
            c: l.group_in(),
            h: l.h_in,
            w: l.w_in,
            hp: l.h_in + 2 * l.pad_h,
            wp: l.w_in + 2 * l.pad_w,
            pad_h: l.pad_h,
            pad_w: l.pad_w,
        }
    }

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
    fn tap(&self, ci: usize, ky: usize, kx: usize) -> u32 {
        ((ci * self.hp + ky) * self.wp + kx) as u32
    }

    /// Every tap's offset, channel, then kernel row, then column.
    fn taps(&self, kh: usize, kw: usize) -> Vec<u32> {
        let mut t = Vec::with_capacity(self.c * kh * kw);
        for ci in 0..self.c {
            for ky in 0..kh {
                for kx in 0..kw {
                    t.push(self.tap(ci, ky, kx));
                }
            }
        }
        t
    }
}

/// Weights packed as [channel block][tap][mr], zero rows past the last channel.
fn pack_weights(rows: usize, taps: usize, mr: usize, get: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let blocks = rows.div_ceil(mr);
    let mut a = vec![0f32; blocks * taps * mr];
    for r in 0..rows {
        let (b, i) = (r / mr, r % mr);
        for k in 0..taps {
            a[(b * taps + k) * mr + i] = get(r, k);
        }
    }
    a
}

/// The channels of a packed weight block on `isa`: 8 for the AVX-512 tiles, 16 (two ymm
/// registers) for AVX2's outer products.
fn block_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => MR,
        Isa::Avx2 => OCO,
    }
}

/// Output positions per AVX2 forward/backward-input tile.
const OP: usize = 6;
/// Taps per pass of the AVX2 forward/backward-input tiles: 16 KiB of packed weights.
const KC: usize = 256;

/// `convolve` for AVX2, as outer products: a tile is 16 output channels (two ymm registers of
/// packed weights per tap) x 6 output positions (each an x value broadcast per tap), its 12
/// sums in registers over every tap. Positions run through the output plane in order, so no
/// lane is spent on padding columns whatever the width (a 14-wide row used 14 of 16 lanes, a
/// 20-wide one 20 of 32). Each output is the sum over taps in order from zero, as in the
/// AVX-512 tile, and the epilogue runs on each block's 16 planes once they are written.
#[allow(clippy::too_many_arguments)]
fn convolve_outer<'x, I, P, E>(
    out: &mut [f32],
    out_len: usize,
    units: usize,
    input: I,
    pad: &Padded,
    (kh, kw): (usize, usize),
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
    let (k, plane) = (pad.c * kh * kw, ho * wo);
    let tiles = plane.div_ceil(OP);
    // Each tile's positions in the padded plane; a last tile short of positions repeats its
    // last one.
    let offs: Vec<[usize; OP]> = (0..tiles)
        .map(|t| {
            std::array::from_fn(|j| {
                let p = (t * OP + j).min(plane - 1);
                (p / wo) * pad.wp + p % wo
            })
        })
        .collect();
    // Kernel rows whose input rows are all padding for every output row of a tile add only
    // zeros: each tile runs the kernel rows [lo, hi) that reach its rows' input, channel by
    // channel (a "valid" layer's backward-input pads by k - 1: a third of its taps hit zeros).
    // Leaving out products with zero changes no sum. One tap list per distinct range: (offset
    // in the padded stack, the tap's packed weights).
    let rows = |t: usize| {
        let (r0, r1) = ((t * OP) / wo, ((t * OP + OP).min(plane) - 1) / wo);
        let lo = pad.pad_h.saturating_sub(r1).min(kh);
        (lo, (pad.pad_h + pad.h).saturating_sub(r0).clamp(lo, kh))
    };
    let list = |(lo, hi): (usize, usize)| -> Vec<[u32; 2]> {
        let mut v = Vec::with_capacity(pad.c * (hi - lo) * kw);
        for ci in 0..pad.c {
            for ky in lo..hi {
                for kx in 0..kw {
                    v.push([pad.tap(ci, ky, kx), (((ci * kh + ky) * kw + kx) * OCO) as u32]);
                }
            }
        }
        v
    };
    let ranges: Vec<(usize, usize)> = (0..tiles).map(rows).collect();
    let mut distinct = ranges.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let lists: Vec<Vec<[u32; 2]>> = distinct.iter().map(|&r| list(r)).collect();
    let tile_list: Vec<(&[[u32; 2]], usize)> = ranges
        .iter()
        .map(|r| {
            let at = distinct.binary_search(r).expect("every range is listed");
            (lists[at].as_slice(), (r.1 - r.0) * kw)
        })
        .collect();
    // Input channels per pass: about KC taps, whose packed weights (16 KiB) and the input rows
    // they read stay in L1 while every tile runs over them. Each sum carries on from one pass
    // to the next in tap order, so the passes change no bit of the result.
    let cpass = (KC / (kh * kw)).max(1);
    out[..units * out_len].par_chunks_mut(out_len).enumerate().for_each_init(
        || (vec![0f32; pad.len()], vec![[[0f32; OCO]; OP]; tiles]),
        |(xp, acc), (s, y)| {
            pad.fill(xp, input(s));
            let a = a(s);
            for cb in 0..m.div_ceil(OCO) {
                let chans = cb * OCO..((cb + 1) * OCO).min(m);
                acc.iter_mut().for_each(|t| *t = [[0.0; OCO]; OP]);
                let ab = &a[cb * k * OCO..][..k * OCO];
                for c0 in (0..pad.c).step_by(cpass) {
                    let c1 = (c0 + cpass).min(pad.c);
                    for ((o, t), &(taps, per)) in offs.iter().zip(acc.iter_mut()).zip(&tile_list) {
                        // SAFETY: Isa::Avx2 runs on this CPU (the caller's choice); every
                        // weight index is inside `ab` (k taps of 16) and every position plus
                        // tap offset inside the padded stack `xp`.
                        unsafe { x86::conv_outer_avx2(ab.as_ptr(), xp.as_ptr(), o, &taps[c0 * per..c1 * per], t) };
                    }
                }
                for co in chans.clone() {
                    let i = co - cb * OCO;
                    for (p, v) in y[co * plane..][..plane].iter_mut().enumerate() {
                        *v = acc[p / OP][p % OP][i];
                    }
                }
                for co in chans {
                    epilogue(s, co, &mut y[co * plane..][..plane]);
                }
            }
        },
    );
}

/// One "convolution" y (m, ho, wo) = A (m, taps) * x_pad over taps, per unit (an example, or
/// one group of one example: `units` slabs of `out_len` in `out`), for the forward and
/// backward-input; `input(u)` is unit u's input and `a(u)` its packed weights. Once a unit's
/// outputs are all written, `epilogue(unit, channel, plane)` finishes each channel's plane in
/// place.
#[allow(clippy::too_many_arguments)]
fn convolve<'x, I, P, E>(
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
                            // SAFETY: the caller checked that AVX-512 runs on this CPU; the padded
                            // buffer has room for every load (see `Padded::len`), and `a` holds `k`
                            // taps of MR.
                            unsafe {
                                x86::kernel_avx512(
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

pub fn conv2d_forward(isa: Isa, out: &mut [f32], inp: &[f32], params: &[f32], l: &Conv2d, n: usize, epi: &Epi) {
    let (fg, groups) = (l.group_out(), l.groups);
    let pad = Padded::input(l);
    let k = pad.c * l.kh * l.kw;
    let packs: Vec<Vec<f32>> = (0..groups)
        .map(|g| {
            let w_off = l.group(g).w_off;
            pack_weights(fg, k, block_rows(isa), |co, t| params[w_off + co * k + t])
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
    match isa {
        Isa::Avx2 => {
            let kernel = (l.kh, l.kw);
            convolve_outer(out, fg * plane, n * groups, input, &pad, kernel, a, fg, l.h_out, l.w_out, epilogue)
        }
        Isa::Avx512 => {
            let taps = pad.taps(l.kh, l.kw);
            convolve(out, fg * plane, n * groups, input, &pad, &taps, a, fg, l.h_out, l.w_out, epilogue)
        }
    }
}

pub fn conv2d_backward_input(isa: Isa, dinp: &mut [f32], dout: &[f32], params: &[f32], l: &Conv2d, n: usize) {
    // dx = dout padded by (k - 1 - pad), convolved with W[co][ci] flipped, channels swapped;
    // per group (each group's input channels are its own: in_groups == groups).
    let (cg, fg, groups) = (l.group_in(), l.group_out(), l.groups);
    let (ph, pw) = (l.kh - 1 - l.pad_h, l.kw - 1 - l.pad_w);
    let pad =
        Padded { c: fg, h: l.h_out, w: l.w_out, hp: l.h_out + 2 * ph, wp: l.w_out + 2 * pw, pad_h: ph, pad_w: pw };
    let khw = l.kh * l.kw;
    let packs: Vec<Vec<f32>> = (0..groups)
        .map(|g| {
            let w_off = l.group(g).w_off;
            pack_weights(cg, fg * khw, block_rows(isa), |ci, t| {
                let (co, r) = (t / khw, t % khw);
                let (ky, kx) = (r / l.kw, r % l.kw);
                params[w_off + ((co * cg + ci) * l.kh + (l.kh - 1 - ky)) * l.kw + (l.kw - 1 - kx)]
            })
        })
        .collect();
    let input = |u: usize| group_output(dout, l, u / groups, u % groups);
    let a = |u: usize| packs[u % groups].as_slice();
    let slab = cg * l.h_in * l.w_in;
    let (h, w) = (l.h_in, l.w_in);
    match isa {
        Isa::Avx2 => convolve_outer(dinp, slab, n * groups, input, &pad, (l.kh, l.kw), a, cg, h, w, |_, _, _| {}),
        Isa::Avx512 => {
            let taps = pad.taps(l.kh, l.kw);
            convolve(dinp, slab, n * groups, input, &pad, &taps, a, cg, h, w, |_, _, _| {})
        }
    }
}

/// Channels and taps per backward-weight tile.
const WM: usize = 4;
const WN: usize = 4;
/// Examples per pass over the tiles (their padded inputs stay in cache together).
const WCHUNK: usize = 16;

pub fn conv2d_backward_weight(isa: Isa, grads: &mut [f32], dout: &[f32], inp: &[f32], l: &Conv2d, n: usize) {
    for g in 0..l.groups {
        match isa {
            Isa::Avx2 => group_backward_weight_outer(grads, dout, inp, l, g, n),
            Isa::Avx512 => group_backward_weight(grads, dout, inp, l, g, n),
        }
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

/// dW of group g's filters with AVX-512.
fn group_backward_weight(grads: &mut [f32], dout: &[f32], inp: &[f32], l: &Conv2d, g: usize, n: usize) {
    let fg = l.group_out();
    let pad = Padded::input(l);
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
            // SAFETY: the caller checked that AVX-512 runs on this CPU; all reads are inside xs
            // and ds (the padded buffers have tail room), rows and taps past the layer's are
            // skipped.
            unsafe { wgrad_kernel(&xs, xlen, &ds, dlen, cnt, &pad, &taps, tm * WM, tn * WN, fg, ho, wq, &mut sums) };
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

/// Output channels (two ymm registers) and taps per AVX2 backward-weight tile.
const OCO: usize = 16;
const OT: usize = 6;
/// Positions of a chunk (whole output rows of one example) whose packed gradient, 16 channels
/// of each, stays in L1 while the tiles run over it: 256 positions are 16 KiB.
const OCHUNK: usize = 256;
/// The examples are cut into at most this many fixed parts, each summing its own partial
/// weight gradient; the partials are then added in part order (as in the GEMM path's
/// `WEIGHT_GRAD_CHUNKS`), so the result does not depend on the number of threads.
const OPARTS: usize = 8;

/// dW of group g's filters with AVX2, as outer products: a tile is 16 output channels x 6
/// taps, its 12 sums in registers over a chunk of positions (no sums across lanes, no padding
/// columns: each position is one x value broadcast against 16 channels' gradients). A task is
/// one channel block and one part of the examples: for each chunk of its examples' positions
/// it packs the block's output gradient ([position][16], in L1) and runs every tap tile over
/// it, so the gradient is read from memory once whatever the number of taps (a first layer of
/// one input channel has 5 tiles to a wide layer's 200).
fn group_backward_weight_outer(grads: &mut [f32], dout: &[f32], inp: &[f32], l: &Conv2d, g: usize, n: usize) {
    let fg = l.group_out();
    let pad = Padded::input(l);
    let taps = pad.taps(l.kh, l.kw);
    let k = taps.len();
    let (ho, wo) = (l.h_out, l.w_out);
    let plane = ho * wo;
    let (cblocks, tblocks) = (fg.div_ceil(OCO), k.div_ceil(OT));
    let parts = OPARTS.min(n).max(1);
    let xlen = pad.len();
    let mut xs = vec![0f32; n * xlen];
    xs.par_chunks_mut(xlen).enumerate().for_each(|(s, xp)| pad.fill(xp, group_input(inp, l, s, g)));
    // Taps past the layer's read tap 0; their sums are not results.
    let tap: Vec<[usize; OT]> =
        (0..tblocks).map(|tb| std::array::from_fn(|j| taps.get(tb * OT + j).map_or(0, |&v| v as usize))).collect();
    let rows = (OCHUNK / wo).clamp(1, ho);
    let tile = OT * OCO;
    // Partial sums [part][block][tap tile][tile], one task per (part, block).
    let mut acc = vec![0f32; parts * cblocks * tblocks * tile];
    acc.par_chunks_mut(tblocks * tile).enumerate().for_each_init(
        || vec![0f32; rows * wo * OCO],
        |dp, (w, a)| {
            let (part, cb) = (w / cblocks, w % cblocks);
            for s in part * n / parts..(part + 1) * n / parts {
                let dy = group_output(dout, l, s, g);
                for r0 in (0..ho).step_by(rows) {
                    let r1 = (r0 + rows).min(ho);
                    let (p0, np) = (r0 * wo, (r1 - r0) * wo);
                    for i in 0..OCO {
                        let co = cb * OCO + i;
                        if co < fg {
                            for (p, &v) in dy[co * plane + p0..][..np].iter().enumerate() {
                                dp[p * OCO + i] = v;
                            }
                        } else {
                            (0..np).for_each(|p| dp[p * OCO + i] = 0.0);
                        }
                    }
                    let geo = OGeometry { x: s * xlen, rows: r0..r1, wo, wp: pad.wp };
                    for (t, a) in tap.iter().zip(a.chunks_mut(tile)) {
                        // SAFETY: the caller picked Isa::Avx2, which runs on this CPU; every
                        // read is inside xs (positions inside the padded planes plus taps
                        // inside the stack) and dp (the chunk's positions, asserted).
                        unsafe { x86::wgrad_outer_avx2(&xs, &dp[..np * OCO], &geo, t, a) };
                    }
                }
            }
        },
    );
    let w_off = l.group(g).w_off;
    let dst = &mut grads[w_off..w_off + fg * k];
    let stride = cblocks * tblocks * tile;
    for co in 0..fg {
        for t in 0..k {
            let at = ((co / OCO) * tblocks + t / OT) * tile + (t % OT) * OCO + co % OCO;
            dst[co * k + t] = (1..parts).fold(acc[at], |sum, part| sum + acc[part * stride + at]);
        }
    }
}

/// One AVX2 backward-weight tile's chunk (see `group_backward_weight_outer`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct OGeometry {
    /// The example's padded input in xs.
    x: usize,
    /// Output rows of the chunk.
    rows: std::ops::Range<usize>,
    wo: usize,
    wp: usize,
}

/// sums[i * WN + j] (lane-wise) += sum over examples, rows and chunks of
/// dout[co0 + i][row][chunk] * x_pad[row + tap(t0 + j)][chunk].
///
/// # Safety
/// AVX-512 must run on this CPU and the buffers be laid out as `group_backward_weight` makes
/// them.
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
    let mi = WM.min(c_out - co0);
    let nj = WN.min(taps.len() - t0);
    // Rows and taps past the layer's read row/tap 0 and are multiplied by zero.
    let mut tap = [0usize; WN];
    for (j, t) in tap.iter_mut().enumerate().take(nj) {
        *t = taps[t0 + j] as usize;
    }
    let g = WGeometry { xlen, dlen, cnt, wp: pad.wp, co0, mi, ho, wq };
    // SAFETY: passed on from the caller.
    unsafe { x86::wgrad_avx512(xs, ds, &g, &tap, sums) };
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
    use super::{L, MR, OCO, OGeometry, OP, OT, WGeometry, WM, WN};
    use std::arch::x86_64::*;

    /// See `convolve_outer`: acc[j][i] += sum over the listed taps [offset, weights] of
    /// a[weights + i] * x[offs[j] + offset], in list order.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn conv_outer_avx2(
        a: *const f32,
        x: *const f32,
        offs: &[usize; OP],
        taps: &[[u32; 2]],
        acc: &mut [[f32; OCO]; OP],
    ) {
        // SAFETY: the caller guarantees every read; acc rows hold 16 floats.
        unsafe {
            let mut c = [[_mm256_setzero_ps(); 2]; OP];
            for (cj, src) in c.iter_mut().zip(acc.iter()) {
                cj[0] = _mm256_loadu_ps(src.as_ptr());
                cj[1] = _mm256_loadu_ps(src.as_ptr().add(8));
            }
            let ptr: [*const f32; OP] = std::array::from_fn(|j| x.add(offs[j]));
            for &[off, w] in taps {
                let w = a.add(w as usize);
                let w0 = _mm256_loadu_ps(w);
                let w1 = _mm256_loadu_ps(w.add(8));
                for j in 0..OP {
                    let b = _mm256_broadcast_ss(&*ptr[j].add(off as usize));
                    c[j][0] = _mm256_fmadd_ps(w0, b, c[j][0]);
                    c[j][1] = _mm256_fmadd_ps(w1, b, c[j][1]);
                }
            }
            for (dst, cj) in acc.iter_mut().zip(c) {
                _mm256_storeu_ps(dst.as_mut_ptr(), cj[0]);
                _mm256_storeu_ps(dst.as_mut_ptr().add(8), cj[1]);
            }
        }
    }

    /// See `group_backward_weight_outer`: acc[j * 16 + i] += sum over the chunk's positions p
    /// of ds[p][i] (channel i's gradient) * x_pad[p + tap j], in position order.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn wgrad_outer_avx2(xs: &[f32], ds: &[f32], g: &OGeometry, tap: &[usize; OT], acc: &mut [f32]) {
        assert!(acc.len() >= OT * OCO && g.rows.len() * g.wo * OCO <= ds.len());
        // SAFETY: acc and the chunk's gradient are asserted above; xs as the caller guarantees.
        unsafe {
            let mut c = [[_mm256_setzero_ps(); 2]; OT];
            for (j, cj) in c.iter_mut().enumerate() {
                cj[0] = _mm256_loadu_ps(acc.as_ptr().add(j * OCO));
                cj[1] = _mm256_loadu_ps(acc.as_ptr().add(j * OCO + 8));
            }
            let x = xs.as_ptr().add(g.x);
            let mut d = ds.as_ptr();
            for oy in g.rows.clone() {
                let row = x.add(oy * g.wp);
                let ptr: [*const f32; OT] = std::array::from_fn(|j| row.add(tap[j]));
                for ox in 0..g.wo {
                    let d0 = _mm256_loadu_ps(d);
                    let d1 = _mm256_loadu_ps(d.add(8));
                    d = d.add(OCO);
                    for j in 0..OT {
                        let b = _mm256_broadcast_ss(&*ptr[j].add(ox));
                        c[j][0] = _mm256_fmadd_ps(d0, b, c[j][0]);
                        c[j][1] = _mm256_fmadd_ps(d1, b, c[j][1]);
                    }
                }
            }
            for (j, cj) in c.iter().enumerate() {
                _mm256_storeu_ps(acc.as_mut_ptr().add(j * OCO), cj[0]);
                _mm256_storeu_ps(acc.as_mut_ptr().add(j * OCO + 8), cj[1]);
            }
        }
    }

    /// acc[2i + v] = sum over taps t of a[t][i] * x[b_v + taps[t] .. +16], for i < MR, v < 2.
    ///
    /// # Safety
    /// AVX-512 must run on this CPU; `a` must hold `taps.len() * MR` floats, and every
    /// `b_v + taps[t] + 15` must be inside the buffer `b0` and `b1` point into.
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
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    //! No direct kernels off x86-64: `isas()` is empty there, so none of these is called.
    use super::{L, MR, OCO, OGeometry, OP, OT, WGeometry, WM, WN};
    pub unsafe fn conv_outer_avx2(
        _: *const f32,
        _: *const f32,
        _: &[usize; OP],
        _: &[[u32; 2]],
        _: &mut [[f32; OCO]; OP],
    ) {
        unreachable!()
    }
    pub unsafe fn wgrad_outer_avx2(_: &[f32], _: &[f32], _: &OGeometry, _: &[usize; OT], _: &mut [f32]) {
        unreachable!()
    }
    pub unsafe fn kernel_avx512(_: *const f32, _: *const f32, _: *const f32, _: &[u32], _: &mut [[f32; L]; 2 * MR]) {
        unreachable!()
    }
    pub unsafe fn wgrad_avx512(_: &[f32], _: &[f32], _: &WGeometry, _: &[usize; WN], _: &mut [[f32; L]; WM * WN]) {
        unreachable!()
    }
}
