//! Batch normalisation per channel, statistics over (n, h, w), as torch's BatchNorm1d/2d:
//! biased variance to normalise, unbiased variance into the running estimate. Sums in f64.

use rayon::prelude::*;

use crate::model::BatchNorm;

/// Visits channel `c`'s values of every example.
fn channel<'a>(x: &'a [f32], l: &BatchNorm, n: usize, c: usize) -> impl Iterator<Item = &'a f32> {
    (0..n).flat_map(move |s| {
        let at = (s * l.c + c) * l.hw;
        x[at..at + l.hw].iter()
    })
}

#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward(
    out: &mut [f32],
    saved: &mut [f32],
    state: &mut [f32],
    inp: &[f32],
    params: &[f32],
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
                let mean = channel(inp, l, n, c).map(|&v| v as f64).sum::<f64>() / m;
                let var = channel(inp, l, n, c).map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m;
                (mean, var)
            } else {
                (state[l.mean_off + c] as f64, state[l.var_off + c] as f64)
            }
        })
        .collect();
    let stats: Vec<(f32, f32)> =
        moments.iter().map(|&(mean, var)| (mean as f32, (1.0 / (var + l.eps as f64).sqrt()) as f32)).collect();
    if train {
        for (c, (&(mean, var), &(mean32, invstd))) in moments.iter().zip(&stats).enumerate() {
            saved[2 * c] = mean32;
            saved[2 * c + 1] = invstd;
            let unbiased = if m > 1.0 { var * m / (m - 1.0) } else { var };
            let mom = l.momentum as f64;
            state[l.mean_off + c] = ((1.0 - mom) * state[l.mean_off + c] as f64 + mom * mean) as f32;
            state[l.var_off + c] = ((1.0 - mom) * state[l.var_off + c] as f64 + mom * unbiased) as f32;
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
pub fn batchnorm_backward(
    dinp: &mut [f32],
    grads: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    saved: &[f32],
    params: &[f32],
    l: &BatchNorm,
    n: usize,
) {
    let m = (n * l.hw) as f64;
    // (dgamma, dbeta) per channel: sum dy * xhat, sum dy
    let sums: Vec<(f64, f64)> = (0..l.c)
        .into_par_iter()
        .map(|c| {
            let (mean, invstd) = (saved[2 * c] as f64, saved[2 * c + 1] as f64);
            channel(dout, l, n, c)
                .zip(channel(inp, l, n, c))
                .fold((0.0, 0.0), |(dg, db), (&dy, &x)| (dg + dy as f64 * (x as f64 - mean) * invstd, db + dy as f64))
        })
        .collect();
    for (c, &(dg, db)) in sums.iter().enumerate() {
        grads[l.gamma_off + c] = dg as f32;
        grads[l.beta_off + c] = db as f32;
    }
    dinp[..n * l.c * l.hw]
        .par_chunks_mut(l.hw)
        .zip(dout[..n * l.c * l.hw].par_chunks(l.hw))
        .zip(inp[..n * l.c * l.hw].par_chunks(l.hw))
        .enumerate()
        .for_each(|(plane, ((dx, dy), x))| {
            let c = plane % l.c;
            let (mean, invstd) = (saved[2 * c] as f64, saved[2 * c + 1] as f64);
            let (dg, db) = sums[c];
            let k = params[l.gamma_off + c] as f64 * invstd / m;
            for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                let xhat = (x as f64 - mean) * invstd;
                *dx = (k * (m * dy as f64 - db - xhat * dg)) as f32;
            }
        });
}
