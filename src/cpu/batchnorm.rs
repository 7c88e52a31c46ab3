//! Batch normalisation per channel, statistics over (n, h, w), as torch's BatchNorm1d/2d:
//! biased variance to normalise, unbiased variance into the running estimate. Sums in f64.

use rayon::prelude::*;

use super::real::Real;
use crate::model::BatchNorm;

/// Visits channel `c`'s values of every example.
fn channel<'a, T>(x: &'a [T], l: &BatchNorm, n: usize, c: usize) -> impl Iterator<Item = &'a T> {
    (0..n).flat_map(move |s| {
        let at = (s * l.c + c) * l.hw;
        x[at..at + l.hw].iter()
    })
}

#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward<T: Real>(
    out: &mut [T],
    saved: &mut [T],
    state: &mut [T],
    inp: &[T],
    params: &[T],
    l: &BatchNorm,
    n: usize,
    train: bool,
) {
    let m = (n * l.hw) as f64;
    // (mean, biased variance) per channel
    let moments: Vec<(f64, f64)> = (0..l.c)
        .into_par_iter()
        .map(|c| {
            if train {
                let mean = channel(inp, l, n, c).map(|&v| v.to64()).sum::<f64>() / m;
                let var = channel(inp, l, n, c).map(|&v| (v.to64() - mean).powi(2)).sum::<f64>() / m;
                (mean, var)
            } else {
                (state[l.mean_off + c].to64(), state[l.var_off + c].to64())
            }
        })
        .collect();
    let stats: Vec<(T, T)> =
        moments.iter().map(|&(mean, var)| (T::of64(mean), T::of64(1.0 / (var + l.eps as f64).sqrt()))).collect();
    if train {
        for (c, (&(mean, var), &(mean32, invstd))) in moments.iter().zip(&stats).enumerate() {
            saved[2 * c] = mean32;
            saved[2 * c + 1] = invstd;
            let unbiased = if m > 1.0 { var * m / (m - 1.0) } else { var };
            let mom = l.momentum as f64;
            state[l.mean_off + c] = T::of64((1.0 - mom) * state[l.mean_off + c].to64() + mom * mean);
            state[l.var_off + c] = T::of64((1.0 - mom) * state[l.var_off + c].to64() + mom * unbiased);
        }
    }
    out[..n * l.c * l.hw].par_chunks_mut(l.hw).zip(inp[..n * l.c * l.hw].par_chunks(l.hw)).enumerate().for_each(
        |(plane, (y, x))| {
            let c = plane % l.c;
            let (mean, invstd) = stats[c];
            let (g, b) = (params[l.gamma_off + c], params[l.beta_off + c]);
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x - mean) * invstd * g + b;
            }
        },
    );
}

#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward<T: Real>(
    dinp: &mut [T],
    grads: &mut [T],
    dout: &[T],
    inp: &[T],
    saved: &[T],
    params: &[T],
    l: &BatchNorm,
    n: usize,
) {
    let m = (n * l.hw) as f64;
    // (dgamma, dbeta) per channel: sum dy * xhat, sum dy
    let sums: Vec<(f64, f64)> = (0..l.c)
        .into_par_iter()
        .map(|c| {
            let (mean, invstd) = (saved[2 * c].to64(), saved[2 * c + 1].to64());
            channel(dout, l, n, c)
                .zip(channel(inp, l, n, c))
                .fold((0.0, 0.0), |(dg, db), (&dy, &x)| (dg + dy.to64() * (x.to64() - mean) * invstd, db + dy.to64()))
        })
        .collect();
    for (c, &(dg, db)) in sums.iter().enumerate() {
        grads[l.gamma_off + c] = T::of64(dg);
        grads[l.beta_off + c] = T::of64(db);
    }
    dinp[..n * l.c * l.hw]
        .par_chunks_mut(l.hw)
        .zip(dout[..n * l.c * l.hw].par_chunks(l.hw))
        .zip(inp[..n * l.c * l.hw].par_chunks(l.hw))
        .enumerate()
        .for_each(|(plane, ((dx, dy), x))| {
            let c = plane % l.c;
            let (mean, invstd) = (saved[2 * c].to64(), saved[2 * c + 1].to64());
            let (dg, db) = sums[c];
            let k = params[l.gamma_off + c].to64() * invstd / m;
            for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                let xhat = (x.to64() - mean) * invstd;
                *dx = T::of64(k * (m * dy.to64() - db - xhat * dg));
            }
        });
}
