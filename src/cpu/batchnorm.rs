//! Batch normalisation per channel, statistics over (n, h, w), as torch's BatchNorm1d/2d:
//! biased variance to normalise, unbiased variance into the running estimate. Sums in f64,
//! in 8 interleaved lanes (so they vectorize) added in a fixed order.
//!
//! An activation after the normalisation (and a dropout after a relu) may be fused in
//! (`backend::Epilogue`): the forward applies it to each plane as it is written, and the
//! backward takes the output's gradient through it (into `dinp`, as `activation_backward`
//! computes it) before batch norm's own backward, which then runs in place.

use rayon::prelude::*;

use super::activation::{self, Epi, act_grad_from_input};
use super::dropout::Masks;
use super::real::Real;
use crate::backend::Epilogue;
use crate::model::BatchNorm;

const LANES: usize = 8;

/// Sum over `v` of f(x) in f64, lane-interleaved.
#[inline(always)]
fn lane_sum<T: Real>(v: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x.to64());
        }
    }
    chunks.remainder().iter().map(|&x| f(x.to64())).sum::<f64>() + acc.iter().sum::<f64>()
}

/// Sum over `a`, `b` pairs of f(a, b) in f64, lane-interleaved.
#[inline(always)]
fn lane_sum2<T: Real>(a: &[T], b: &[T], f: impl Fn(f64, f64) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += f(x.to64(), y.to64());
        }
    }
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x.to64(), y.to64())).sum();
    tail + acc.iter().sum::<f64>()
}

/// Channel c's plane of example s.
fn plane<'a, T>(x: &'a [T], l: &BatchNorm, s: usize, c: usize) -> &'a [T] {
    &x[(s * l.c + c) * l.hw..][..l.hw]
}

/// Channel planes of a (n, c, h, w) buffer written by one task per channel: each (example,
/// channel) plane belongs to its channel's task alone.
struct ChannelPlanes<T> {
    ptr: *mut T,
    l: BatchNorm,
}

// SAFETY: tasks only reach the planes of their own channel (see `plane`).
unsafe impl<T: Send> Send for ChannelPlanes<T> {}
unsafe impl<T: Send> Sync for ChannelPlanes<T> {}

impl<T> ChannelPlanes<T> {
    fn new(buf: &mut [T], l: &BatchNorm, n: usize) -> Self {
        assert!(buf.len() >= n * l.c * l.hw, "batch norm buffer too short");
        ChannelPlanes { ptr: buf.as_mut_ptr(), l: *l }
    }

    /// Channel c's plane of example s.
    ///
    /// # Safety
    /// Only the task of channel c may call this with c, once per plane at a time, and `s`
    /// must be below the `n` the buffer was checked for.
    #[allow(clippy::mut_from_ref)]
    unsafe fn plane(&self, s: usize, c: usize) -> &mut [T] {
        // SAFETY: inside the buffer (checked in `new`) and used by one task (the caller's).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add((s * self.l.c + c) * self.l.hw), self.l.hw) }
    }
}

/// Channel c's (mean, biased variance) over the batch, in f64, the variance from the mean in a
/// second pass.
fn channel_moments<T: Real>(inp: &[T], l: &BatchNorm, n: usize, c: usize) -> (f64, f64) {
    let m = (n * l.hw) as f64;
    let mean = (0..n).map(|s| lane_sum(plane(inp, l, s, c), |x| x)).sum::<f64>() / m;
    let q: f64 = (0..n).map(|s| lane_sum(plane(inp, l, s, c), |x| (x - mean) * (x - mean))).sum();
    (mean, q / m)
}

/// One task per channel runs every pass over that channel's planes (statistics, then the
/// normalisation and its activation), while they are still in cache from the pass before: a
/// channel of a batch is at most a few hundred KiB, where the whole layer's output is many
/// MiB (an array of 8 speedrun models: 115 MB).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward<T: Real>(
    out: &mut [T],
    saved: &mut [T],
    state: &mut [T],
    inp: &[T],
    params: &[T],
    table: &[u32],
    l: &BatchNorm,
    n: usize,
    train: bool,
    epi: Epilogue,
) {
    let m = (n * l.hw) as f64;
    let epi = Epi::new(table, &epi);
    let outs = ChannelPlanes::new(out, l, n);
    let running: Vec<(f64, f64)> =
        (0..l.c).map(|c| (state[l.mean_off + c].to64(), state[l.var_off + c].to64())).collect();
    // (mean, biased variance) per channel
    let moments: Vec<(f64, f64)> = (0..l.c)
        .into_par_iter()
        .map(|c| {
            let (mean, var) = if train { channel_moments(inp, l, n, c) } else { running[c] };
            let a = params[l.gamma_off + c].to64() / (var + l.eps as f64).sqrt();
            let (a, b) = (T::of64(a), T::of64(params[l.beta_off + c].to64() - mean * a));
            for s in 0..n {
                // SAFETY: this task is channel c's.
                let y = unsafe { outs.plane(s, c) };
                y.iter_mut().zip(plane(inp, l, s, c)).for_each(|(y, &x)| *y = x * a + b);
                activation::apply_act(y, (s * l.c + c) * l.hw, &epi);
            }
            (mean, var)
        })
        .collect();
    if train {
        for (c, &(mean, var)) in moments.iter().enumerate() {
            saved[2 * c] = T::of64(mean);
            saved[2 * c + 1] = T::of64(1.0 / (var + l.eps as f64).sqrt());
            let unbiased = if m > 1.0 { var * m / (m - 1.0) } else { var };
            let mom = l.momentum as f64;
            state[l.mean_off + c] = T::of64((1.0 - mom) * state[l.mean_off + c].to64() + mom * mean);
            state[l.var_off + c] = T::of64((1.0 - mom) * state[l.var_off + c].to64() + mom * unbiased);
        }
    }
}

/// dinp and the parameters' gradients from dout, the gradient of the output `out`; with an
/// epilogue, of the epilogue's output (see the module comment). One task per channel, as the
/// forward: the gradient through the epilogue (into dinp) and the two sums in one pass over
/// the channel's planes, then dinp from the planes still in cache.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<T: Real>(
    dinp: &mut [T],
    grads: &mut [T],
    dout: &[T],
    inp: &[T],
    out: &[T],
    saved: &[T],
    params: &[T],
    table: &[u32],
    l: &BatchNorm,
    n: usize,
    epi: Epilogue,
) {
    let m = (n * l.hw) as f64;
    let masks = epi.dropout.as_ref().map(|d| Masks::new(table, d));
    let dxs = ChannelPlanes::new(dinp, l, n);
    let sums: Vec<(f64, f64)> = (0..l.c)
        .into_par_iter()
        .map(|c| {
            // The output's gradient through the epilogue, into dinp; for gelu and silu from
            // the normalised input, recomputed as the forward computed it.
            let from_input = epi.act.filter(|a| !a.grad_from_output()).map(|act| {
                let (mean, var) = channel_moments(inp, l, n, c);
                let a = params[l.gamma_off + c].to64() / (var + l.eps as f64).sqrt();
                (act, T::of64(a), T::of64(params[l.beta_off + c].to64() - mean * a))
            });
            let mut db = 0f64;
            let mut dyx = 0f64;
            for s in 0..n {
                let (x, at) = (plane(inp, l, s, c), (s * l.c + c) * l.hw);
                let dy: &[T] = match (epi.act, from_input) {
                    (None, _) => plane(dout, l, s, c),
                    (Some(_), Some((act, a, b))) => {
                        // SAFETY: this task is channel c's.
                        let d = unsafe { dxs.plane(s, c) };
                        for ((d, &g), &x) in d.iter_mut().zip(plane(dout, l, s, c)).zip(x) {
                            *d = g * act_grad_from_input(x * a + b, act);
                        }
                        d
                    }
                    (Some(act), None) => {
                        // SAFETY: this task is channel c's.
                        let d = unsafe { dxs.plane(s, c) };
                        let (g, y) = (plane(dout, l, s, c), plane(out, l, s, c));
                        activation::backward_span(d, g, y, at, act, masks.as_ref());
                        d
                    }
                };
                // dbeta = sum dy; dgamma = sum dy * xhat = invstd * (sum dy x - mean sum dy)
                db += lane_sum(dy, |g| g);
                dyx += lane_sum2(dy, x, |g, x| g * x);
            }
            let (mean, invstd) = (saved[2 * c].to64(), saved[2 * c + 1].to64());
            let dg = invstd * (dyx - mean * db);
            // dx = gamma invstd / m (m dy - dbeta - xhat dgamma) = p dy + q x + r
            let k = params[l.gamma_off + c].to64() * invstd / m;
            let q = -k * invstd * dg;
            let (a, q, r) = (T::of64(k * m), T::of64(q), T::of64(-k * db - q * mean));
            for s in 0..n {
                let x = plane(inp, l, s, c);
                // SAFETY: this task is channel c's.
                let dx = unsafe { dxs.plane(s, c) };
                if epi.act.is_some() {
                    // dy is in dinp already.
                    dx.iter_mut().zip(x).for_each(|(dx, &x)| *dx = a * *dx + q * x + r);
                } else {
                    let dy = plane(dout, l, s, c);
                    dx.iter_mut().zip(dy).zip(x).for_each(|((dx, &dy), &x)| *dx = a * dy + q * x + r);
                }
            }
            (dg, db)
        })
        .collect();
    for (c, &(dg, db)) in sums.iter().enumerate() {
        grads[l.gamma_off + c] = T::of64(dg);
        grads[l.beta_off + c] = T::of64(db);
    }
}
