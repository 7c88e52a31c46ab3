//! 2-D convolution on the CPU: im2col per example, then one GEMM, examples in parallel.
//!
//! Shapes: inp (n, c_in, h_in, w_in), out (n, c_out, h_out, w_out), W (c_out, c_in, kh, kw),
//! b (c_out). The column matrix of one example is (K = c_in*kh*kw, P = h_out*w_out), small
//! enough to stay in cache, and its row order matches W's, so out = W (c_out x K) * col.

use rayon::prelude::*;

use super::activation::{Epi, apply_epilogue};
use super::direct;
use super::gemm::{rows, sgemm, transposed};
use super::real::Real;
use crate::backend::Epilogue;
use crate::model::Conv2d;

/// col (K, P) of one example `x` (c_in, h_in, w_in); zero where the window hangs over the edge.
pub fn im2col<T: Real>(col: &mut [T], x: &[T], l: &Conv2d) {
    let p = l.h_out * l.w_out;
    for ci in 0..l.c_in {
        let plane = &x[ci * l.h_in * l.w_in..(ci + 1) * l.h_in * l.w_in];
        for ky in 0..l.kh {
            for kx in 0..l.kw {
                let row = (ci * l.kh + ky) * l.kw + kx;
                let dst = &mut col[row * p..(row + 1) * p];
                for oy in 0..l.h_out {
                    let iy = (oy * l.stride + ky) as isize - l.pad_h as isize;
                    let d = &mut dst[oy * l.w_out..(oy + 1) * l.w_out];
                    if iy < 0 || iy >= l.h_in as isize {
                        d.fill(T::zero());
                        continue;
                    }
                    let src = &plane[iy as usize * l.w_in..(iy as usize + 1) * l.w_in];
                    if l.stride == 1 {
                        // Contiguous run: the valid ox are those with 0 <= ox + kx - pad < w_in.
                        let lo = l.pad_w.saturating_sub(kx).min(l.w_out);
                        let hi = (l.w_in + l.pad_w).saturating_sub(kx).min(l.w_out).max(lo);
                        d[..lo].fill(T::zero());
                        d[hi..].fill(T::zero());
                        let start = lo + kx - l.pad_w;
                        d[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else {
                        for (ox, v) in d.iter_mut().enumerate() {
                            let ix = (ox * l.stride + kx) as isize - l.pad_w as isize;
                            *v = if ix >= 0 && ix < l.w_in as isize { src[ix as usize] } else { T::zero() };
                        }
                    }
                }
            }
        }
    }
}

/// Adds col (K, P) back into the image dx (c_in, h_in, w_in): the adjoint of `im2col`.
pub fn col2im<T: Real>(dx: &mut [T], col: &[T], l: &Conv2d) {
    let p = l.h_out * l.w_out;
    dx.fill(T::zero());
    for ci in 0..l.c_in {
        let plane = &mut dx[ci * l.h_in * l.w_in..(ci + 1) * l.h_in * l.w_in];
        for ky in 0..l.kh {
            for kx in 0..l.kw {
                let row = (ci * l.kh + ky) * l.kw + kx;
                let src = &col[row * p..(row + 1) * p];
                for oy in 0..l.h_out {
                    let iy = (oy * l.stride + ky) as isize - l.pad_h as isize;
                    if iy < 0 || iy >= l.h_in as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * l.w_in..(iy as usize + 1) * l.w_in];
                    let s = &src[oy * l.w_out..(oy + 1) * l.w_out];
                    for (ox, &v) in s.iter().enumerate() {
                        let ix = (ox * l.stride + kx) as isize - l.pad_w as isize;
                        if ix >= 0 && ix < l.w_in as isize {
                            dst[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

fn k_len(l: &Conv2d) -> usize {
    l.c_in * l.kh * l.kw
}

/// The slice as f32, when T is f32 (the direct kernels are f32 only).
fn f32s<T: 'static>(s: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32, so the slice's layout is that of a [f32].
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { &*(s as *const [T] as *const [f32]) })
}

fn f32s_mut<T: 'static>(s: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: as in f32s.
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { &mut *(s as *mut [T] as *mut [f32]) })
}

/// An op's instruction set, output and two inputs on the direct path.
type DirectArgs<'a> = (direct::Isa, &'a mut [f32], &'a [f32], &'a [f32]);

/// The instruction set and f32 views for the direct path, if this layer and CPU can take it.
fn direct<'a, T: 'static>(l: &Conv2d, out: &'a mut [T], a: &'a [T], b: &'a [T]) -> Option<DirectArgs<'a>> {
    if !direct::supports(l) {
        return None;
    }
    Some((direct::best()?, f32s_mut(out)?, f32s(a)?, f32s(b)?))
}

/// Group g's share of example s: its input channels (c_in of `l.group(g)`, h_in, w_in).
pub(super) fn group_input<'a, T>(inp: &'a [T], l: &Conv2d, s: usize, g: usize) -> &'a [T] {
    let plane = l.h_in * l.w_in;
    &inp[s * l.in_len() + l.group_input(g) * plane..][..l.group_in() * plane]
}

/// Group g's share of example s of an output (or output gradient): (c_out of `l.group(g)`,
/// h_out, w_out).
pub(super) fn group_output<'a, T>(out: &'a [T], l: &Conv2d, s: usize, g: usize) -> &'a [T] {
    let slab = l.group_out() * l.h_out * l.w_out;
    &out[s * l.out_len() + g * slab..][..slab]
}

/// Each group of each example is a convolution of its own (`Conv2d::group`); the buffers are
/// cut into (example, group) units, examples outer, so one group is one example of an
/// ungrouped layer and the arithmetic is that layer's.
pub fn conv2d_forward<T: Real>(
    out: &mut [T],
    inp: &[T],
    params: &[T],
    table: &[u32],
    l: &Conv2d,
    n: usize,
    epi: Epilogue,
) {
    let epi = Epi::new(table, &epi);
    if let Some((isa, out, inp, params)) = direct(l, out, inp, params) {
        return direct::conv2d_forward(isa, out, inp, params, l, n, &epi);
    }
    conv2d_forward_gemm(out, inp, params, l, n, &epi)
}

/// The im2col + GEMM path: any stride, any element type; the reference for `direct`.
pub fn conv2d_forward_gemm<T: Real>(out: &mut [T], inp: &[T], params: &[T], l: &Conv2d, n: usize, epi: &Epi) {
    let (fg, groups) = (l.group_out(), l.groups);
    let sub = l.group(0);
    let (k, p) = (k_len(&sub), l.h_out * l.w_out);
    out[..n * l.out_len()].par_chunks_mut(fg * p).enumerate().for_each(|(u, y)| {
        let (s, g) = (u / groups, u % groups);
        let lg = l.group(g);
        let w = &params[lg.w_off..lg.w_off + fg * k];
        T::with_scratch(k * p, |col| {
            im2col(col, group_input(inp, l, s, g), &lg);
            sgemm(fg, p, k, y, p, false, rows(w, k), rows(col, p), false);
        });
        for (co, plane) in y.chunks_mut(p).enumerate() {
            let bias = lg.b_off.map_or(T::zero(), |b| params[b + co]);
            apply_epilogue(plane, s * l.out_len() + (g * fg + co) * p, bias, epi);
        }
    });
}

pub fn conv2d_backward_input<T: Real>(dinp: &mut [T], dout: &[T], params: &[T], l: &Conv2d, n: usize) {
    debug_assert_eq!(l.groups, l.in_groups, "an input channel read by several groups has no backward-input here");
    if let Some((isa, dinp, dout, params)) = direct(l, dinp, dout, params) {
        return direct::conv2d_backward_input(isa, dinp, dout, params, l, n);
    }
    conv2d_backward_input_gemm(dinp, dout, params, l, n)
}

/// The im2col + GEMM path: any stride, any element type; the reference for `direct`.
pub fn conv2d_backward_input_gemm<T: Real>(dinp: &mut [T], dout: &[T], params: &[T], l: &Conv2d, n: usize) {
    let (fg, cg, groups) = (l.group_out(), l.group_in(), l.groups);
    let sub = l.group(0);
    let (k, p) = (k_len(&sub), l.h_out * l.w_out);
    dinp[..n * l.in_len()].par_chunks_mut(cg * l.h_in * l.w_in).enumerate().for_each(|(u, dx)| {
        let (s, g) = (u / groups, u % groups);
        let lg = l.group(g);
        let w = &params[lg.w_off..lg.w_off + fg * k];
        T::with_scratch(k * p, |dcol| {
            // dcol (K, P) = W^T (K, c_out) * dy (c_out, P)
            sgemm(k, p, fg, dcol, p, false, transposed(w, k), rows(group_output(dout, l, s, g), p), false);
            col2im(dx, dcol, &lg);
        });
    });
}

/// Examples are split into at most this many fixed chunks, each summing its own partial
/// gradient; the partials are then added in chunk order. The result does not depend on the
/// number of threads, so training is bit-for-bit repeatable on any machine.
pub const WEIGHT_GRAD_CHUNKS: usize = 8;

pub fn conv2d_backward_weight<T: Real>(grads: &mut [T], dout: &[T], inp: &[T], l: &Conv2d, n: usize) {
    if let Some((isa, grads, dout, inp)) = direct(l, grads, dout, inp) {
        return direct::conv2d_backward_weight(isa, grads, dout, inp, l, n);
    }
    conv2d_backward_weight_gemm(grads, dout, inp, l, n)
}

/// The im2col + GEMM path: any stride, any element type; the reference for `direct`.
pub fn conv2d_backward_weight_gemm<T: Real>(grads: &mut [T], dout: &[T], inp: &[T], l: &Conv2d, n: usize) {
    let (fg, groups) = (l.group_out(), l.groups);
    let sub = l.group(0);
    let (k, p) = (k_len(&sub), l.h_out * l.w_out);
    let wlen = fg * k;
    let chunk = n.div_ceil(WEIGHT_GRAD_CHUNKS).max(1);
    let chunks = n.div_ceil(chunk);
    // Each partial, per (group, chunk of examples): the group's dW (fg, K) then db (fg).
    let partials: Vec<Vec<T>> = (0..groups * chunks)
        .into_par_iter()
        .map(|u| {
            let (g, ci) = (u / chunks, u % chunks);
            let lg = l.group(g);
            let mut part = vec![T::zero(); wlen + fg];
            let (dw, db) = part.split_at_mut(wlen);
            for s in ci * chunk..((ci + 1) * chunk).min(n) {
                let dy = group_output(dout, l, s, g);
                T::with_scratch(k * p, |col| {
                    im2col(col, group_input(inp, l, s, g), &lg);
                    // dW (c_out, K) += dy (c_out, P) * col^T (P, K)
                    sgemm(fg, k, p, dw, k, true, rows(dy, p), transposed(col, p), false);
                });
                for (co, plane) in dy.chunks(p).enumerate() {
                    db[co] += plane.iter().copied().sum::<T>();
                }
            }
            part
        })
        .collect();
    for (g, parts) in partials.chunks(chunks).enumerate() {
        let lg = l.group(g);
        let dw = &mut grads[lg.w_off..lg.w_off + wlen];
        dw.fill(T::zero());
        for part in parts {
            dw.iter_mut().zip(&part[..wlen]).for_each(|(g, &v)| *g += v);
        }
        if let Some(b) = lg.b_off {
            let dbias = &mut grads[b..b + fg];
            dbias.fill(T::zero());
            for part in parts {
                dbias.iter_mut().zip(&part[wlen..]).for_each(|(g, &v)| *g += v);
            }
        }
    }
}
