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
use super::real::Real;
use crate::backend::{Dropout, Epilogue};
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

/// Per channel: f summed over every example's plane.
fn per_channel(l: &BatchNorm, n: usize, f: impl Fn(usize, usize) -> f64 + Sync) -> Vec<f64> {
    (0..l.c).into_par_iter().map(|c| (0..n).map(|s| f(s, c)).sum()).collect()
}

/// (mean, biased variance) per channel of the batch, in f64.
fn moments<T: Real>(inp: &[T], l: &BatchNorm, n: usize) -> Vec<(f64, f64)> {
    let m = (n * l.hw) as f64;
    let means = per_channel(l, n, |s, c| lane_sum(plane(inp, l, s, c), |x| x));
    let means: Vec<f64> = means.iter().map(|s| s / m).collect();
    let vars = per_channel(l, n, |s, c| {
        let mean = means[c];
        lane_sum(plane(inp, l, s, c), |x| (x - mean) * (x - mean))
    });
    means.into_iter().zip(vars).map(|(mean, q)| (mean, q / m)).collect()
}

/// y = x * a + b per channel, with a = gamma / std, b = beta - mean * a.
fn coefficients<T: Real>(moments: &[(f64, f64)], params: &[T], l: &BatchNorm) -> Vec<(T, T)> {
    moments
        .iter()
        .enumerate()
        .map(|(c, &(mean, var))| {
            let a = params[l.gamma_off + c].to64() / (var + l.eps as f64).sqrt();
            (T::of64(a), T::of64(params[l.beta_off + c].to64() - mean * a))
        })
        .collect()
}

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
    // (mean, biased variance) per channel
    let moments: Vec<(f64, f64)> = if train {
        moments(inp, l, n)
    } else {
        (0..l.c).map(|c| (state[l.mean_off + c].to64(), state[l.var_off + c].to64())).collect()
    };
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
    let ab = coefficients(&moments, params, l);
    let epi = Epi::new(table, &epi);
    out[..n * l.c * l.hw].par_chunks_mut(l.hw).zip(inp[..n * l.c * l.hw].par_chunks(l.hw)).enumerate().for_each(
        |(p, (y, x))| {
            let (a, b) = ab[p % l.c];
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * a + b);
            activation::apply_act(y, p * l.hw, &epi);
        },
    );
}

/// The output's gradient through a fused activation (and dropout) into `dinp`: dout *
/// act'(.) (* the dropout scale), act' from the output `out`, or for gelu and silu from the
/// normalised input, recomputed as the forward computed it.
#[allow(clippy::too_many_arguments)]
fn epilogue_backward<T: Real>(
    dinp: &mut [T],
    dout: &[T],
    inp: &[T],
    out: &[T],
    params: &[T],
    table: &[u32],
    l: &BatchNorm,
    n: usize,
    act: crate::model::Act,
    dropout: Option<&Dropout>,
) {
    let len = n * l.c * l.hw;
    if act.grad_from_output() {
        activation::activation_backward(dinp, dout, out, table, len, act, dropout);
        return;
    }
    let ab = coefficients(&moments(inp, l, n), params, l);
    dinp[..len]
        .par_chunks_mut(l.hw)
        .zip(dout[..len].par_chunks(l.hw))
        .zip(inp[..len].par_chunks(l.hw))
        .enumerate()
        .for_each(|(p, ((d, g), x))| {
            let (a, b) = ab[p % l.c];
            for ((d, &g), &x) in d.iter_mut().zip(g).zip(x) {
                *d = g * act_grad_from_input(x * a + b, act);
            }
        });
}

/// dinp and the parameters' gradients from dout, the gradient of the output `out`; with an
/// epilogue, of the epilogue's output (see the module comment).
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
    let fused =
        epi.act.map(|act| epilogue_backward(dinp, dout, inp, out, params, table, l, n, act, epi.dropout.as_ref()));
    let m = (n * l.hw) as f64;
    // dbeta = sum dy; dgamma = sum dy * xhat = invstd * (sum dy x - mean sum dy)
    let (db, dyx) = {
        let dy: &[T] = if fused.is_some() { dinp } else { dout };
        let db = per_channel(l, n, |s, c| lane_sum(plane(dy, l, s, c), |g| g));
        let dyx = per_channel(l, n, |s, c| lane_sum2(plane(dy, l, s, c), plane(inp, l, s, c), |g, x| g * x));
        (db, dyx)
    };
    let dg: Vec<f64> = (0..l.c)
        .map(|c| {
            let (mean, invstd) = (saved[2 * c].to64(), saved[2 * c + 1].to64());
            invstd * (dyx[c] - mean * db[c])
        })
        .collect();
    for c in 0..l.c {
        grads[l.gamma_off + c] = T::of64(dg[c]);
        grads[l.beta_off + c] = T::of64(db[c]);
    }
    // dx = gamma invstd / m (m dy - dbeta - xhat dgamma) = p dy + q x + r per channel
    let pqr: Vec<(T, T, T)> = (0..l.c)
        .map(|c| {
            let (mean, invstd) = (saved[2 * c].to64(), saved[2 * c + 1].to64());
            let k = params[l.gamma_off + c].to64() * invstd / m;
            let q = -k * invstd * dg[c];
            (T::of64(k * m), T::of64(q), T::of64(-k * db[c] - q * mean))
        })
        .collect();
    let len = n * l.c * l.hw;
    let planes = dinp[..len].par_chunks_mut(l.hw).zip(inp[..len].par_chunks(l.hw)).enumerate();
    if fused.is_some() {
        // dy is in dinp already.
        planes.for_each(|(p, (dx, x))| {
            let (a, q, r) = pqr[p % l.c];
            for (dx, &x) in dx.iter_mut().zip(x) {
                *dx = a * *dx + q * x + r;
            }
        });
    } else {
        planes.zip(dout[..len].par_chunks(l.hw)).for_each(|((p, (dx, x)), dy)| {
            let (a, q, r) = pqr[p % l.c];
            for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                *dx = a * dy + q * x + r;
            }
        });
    }
}
