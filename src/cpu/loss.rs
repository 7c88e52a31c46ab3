//! Losses with their gradients, fused: softmax + cross-entropy, and MSE against one-hot
//! targets. Per example and member (rows (n x members, classes), each member's row against
//! the example's label): loss and whether argmax (first maximum) equals the label.

use rayon::prelude::*;

use super::real::Real;
use crate::backend::{Xent, table_f32};

/// (argmax, max) of a row; the first maximum wins.
fn argmax<T: Real>(row: &[T]) -> (usize, T) {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    (best, row[best])
}

/// Writes softmax(z) into p; returns (log of the sum of exp(z - max), max, argmax).
fn softmax<T: Real>(p: &mut [T], z: &[T]) -> (T, T, usize) {
    let (best, max) = argmax(z);
    let mut sum = T::zero();
    for (p, &z) in p.iter_mut().zip(z) {
        *p = (z - max).exp();
        sum += *p;
    }
    let inv = T::one() / sum;
    p.iter_mut().for_each(|p| *p *= inv);
    (sum.ln(), max, best)
}

/// Writes softmax(z) into p and returns (loss, correct) for label y.
fn softmax_row<T: Real>(p: &mut [T], z: &[T], y: usize) -> (T, bool) {
    let (log_sum, max, best) = softmax(p, z);
    // -log softmax[y] = log(sum) - (z[y] - max)
    (log_sum - (z[y] - max), best == y)
}

/// Each member's summed loss and hits over its rows (every `members`-th, from its own), in
/// example order, into batch `slot`'s stats.
fn write_stats<T: Real>(stats: &mut [T], slot: usize, members: usize, rows: &[(T, bool)]) {
    for k in 0..members {
        let mine = || rows.iter().skip(k).step_by(members);
        stats[2 * (slot * members + k)] = mine().map(|r| r.0).sum();
        stats[2 * (slot * members + k) + 1] = T::of(mine().filter(|r| r.1).count() as f32);
    }
}

/// dlogits = (softmax - target) * scale, target = (1 - s) onehot + s / classes with each
/// member's label smoothing s (`Xent`); the stats hold the smoothed loss (1 - s) (-log
/// p[label]) + s mean_j(-log p[j]), where -log p[j] = log(sum) - (z[j] - max).
#[allow(clippy::too_many_arguments)]
pub fn softmax_xent_forward_backward<T: Real>(
    dlogits: &mut [T],
    stats: &mut [T],
    slot: usize,
    logits: &[T],
    labels: &[u32],
    table: &[u32],
    n: usize,
    x: &Xent,
) {
    let (members, classes) = (x.members, x.classes);
    let scale = T::of(x.scale);
    let len = n * members * classes;
    let rows: Vec<(T, bool)> = dlogits[..len]
        .par_chunks_mut(classes)
        .zip(logits[..len].par_chunks(classes))
        .enumerate()
        .map(|(r, (d, z))| {
            let y = labels[r / members] as usize;
            let s = table_f32(table, x.smoothing_at + r % members);
            let (keep, spread) = (T::of(1.0 - s), T::of(s / classes as f32));
            let (log_sum, max, best) = softmax(d, z);
            for (j, v) in d.iter_mut().enumerate() {
                let target = if j == y { keep + spread } else { spread };
                *v = (*v - target) * scale;
            }
            let nll = log_sum - (z[y] - max);
            let loss = if s == 0.0 {
                nll
            } else {
                let mean = z.iter().map(|&v| v - max).sum::<T>() / T::of(classes as f32);
                keep * nll + T::of(s) * (log_sum - mean)
            };
            (loss, best == y)
        })
        .collect();
    write_stats(stats, slot, members, &rows);
}

#[allow(clippy::too_many_arguments)]
pub fn softmax_xent_forward<T: Real>(
    probs: &mut [T],
    probs_at: usize,
    stats: &mut [T],
    slot: usize,
    logits: &[T],
    labels: &[u32],
    n: usize,
    members: usize,
    classes: usize,
) {
    let width = members * classes;
    let rows: Vec<(T, bool)> = probs[probs_at * width..(probs_at + n) * width]
        .par_chunks_mut(classes)
        .zip(logits[..n * width].par_chunks(classes))
        .enumerate()
        .map(|(r, (p, z))| softmax_row(p, z, labels[r / members] as usize))
        .collect();
    write_stats(stats, slot, members, &rows);
}

fn onehot<T: Real>(j: usize, y: usize) -> T {
    if j == y { T::one() } else { T::zero() }
}

/// (mean over classes of (y - onehot)^2, correct) of one row.
pub fn mse_row<T: Real>(z: &[T], y: usize) -> (T, bool) {
    let sq: T = z.iter().enumerate().map(|(j, &v)| (v - onehot::<T>(j, y)).powi(2)).sum();
    (sq / T::of(z.len() as f32), argmax(z).0 == y)
}

#[allow(clippy::too_many_arguments)]
pub fn mse_forward_backward<T: Real>(
    dout: &mut [T],
    stats: &mut [T],
    slot: usize,
    outputs: &[T],
    labels: &[u32],
    n: usize,
    members: usize,
    classes: usize,
    scale: f32,
) {
    let k = T::of(2.0 * scale / classes as f32);
    let len = n * members * classes;
    let rows: Vec<(T, bool)> = dout[..len]
        .chunks_mut(classes)
        .zip(outputs[..len].chunks(classes))
        .enumerate()
        .map(|(r, (d, z))| {
            let y = labels[r / members] as usize;
            for (j, (d, &v)) in d.iter_mut().zip(z).enumerate() {
                *d = k * (v - onehot::<T>(j, y));
            }
            mse_row(z, y)
        })
        .collect();
    write_stats(stats, slot, members, &rows);
}

#[allow(clippy::too_many_arguments)]
pub fn mse_forward<T: Real>(
    probs: &mut [T],
    probs_at: usize,
    stats: &mut [T],
    slot: usize,
    outputs: &[T],
    labels: &[u32],
    n: usize,
    members: usize,
    classes: usize,
) {
    let width = members * classes;
    probs[probs_at * width..(probs_at + n) * width].copy_from_slice(&outputs[..n * width]);
    let rows: Vec<(T, bool)> = outputs[..n * width]
        .chunks(classes)
        .enumerate()
        .map(|(r, z)| mse_row(z, labels[r / members] as usize))
        .collect();
    write_stats(stats, slot, members, &rows);
}
