//! Losses with their gradients, fused: softmax + cross-entropy, and MSE against one-hot
//! targets. Per example: loss and whether argmax (first maximum) equals the label.

use rayon::prelude::*;

use super::real::Real;

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

/// Writes softmax(z) into p and returns (loss, correct) for label y.
fn softmax_row<T: Real>(p: &mut [T], z: &[T], y: usize) -> (T, bool) {
    let (best, max) = argmax(z);
    let mut sum = T::zero();
    for (p, &z) in p.iter_mut().zip(z) {
        *p = (z - max).exp();
        sum += *p;
    }
    let inv = T::one() / sum;
    p.iter_mut().for_each(|p| *p *= inv);
    // -log softmax[y] = log(sum) - (z[y] - max)
    (sum.ln() - (z[y] - max), best == y)
}

fn write_stats<T: Real>(stats: &mut [T], slot: usize, per_example: &[(T, bool)]) {
    stats[2 * slot] = per_example.iter().map(|r| r.0).sum();
    stats[2 * slot + 1] = T::of(per_example.iter().filter(|r| r.1).count() as f32);
}

#[allow(clippy::too_many_arguments)]
pub fn softmax_xent_forward_backward<T: Real>(
    dlogits: &mut [T],
    stats: &mut [T],
    slot: usize,
    logits: &[T],
    labels: &[u32],
    n: usize,
    classes: usize,
    scale: f32,
) {
    let scale = T::of(scale);
    let rows: Vec<(T, bool)> = dlogits[..n * classes]
        .par_chunks_mut(classes)
        .zip(logits[..n * classes].par_chunks(classes))
        .zip(&labels[..n])
        .map(|((d, z), &y)| {
            let r = softmax_row(d, z, y as usize);
            d[y as usize] -= T::one();
            d.iter_mut().for_each(|v| *v *= scale);
            r
        })
        .collect();
    write_stats(stats, slot, &rows);
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
    classes: usize,
) {
    let rows: Vec<(T, bool)> = probs[probs_at * classes..(probs_at + n) * classes]
        .par_chunks_mut(classes)
        .zip(logits[..n * classes].par_chunks(classes))
        .zip(&labels[..n])
        .map(|((p, z), &y)| softmax_row(p, z, y as usize))
        .collect();
    write_stats(stats, slot, &rows);
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
    classes: usize,
    scale: f32,
) {
    let k = T::of(2.0 * scale / classes as f32);
    let rows: Vec<(T, bool)> = dout[..n * classes]
        .chunks_mut(classes)
        .zip(outputs[..n * classes].chunks(classes))
        .zip(&labels[..n])
        .map(|((d, z), &y)| {
            for (j, (d, &v)) in d.iter_mut().zip(z).enumerate() {
                *d = k * (v - onehot::<T>(j, y as usize));
            }
            mse_row(z, y as usize)
        })
        .collect();
    write_stats(stats, slot, &rows);
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
    classes: usize,
) {
    probs[probs_at * classes..(probs_at + n) * classes].copy_from_slice(&outputs[..n * classes]);
    let rows: Vec<(T, bool)> =
        outputs[..n * classes].chunks(classes).zip(&labels[..n]).map(|(z, &y)| mse_row(z, y as usize)).collect();
    write_stats(stats, slot, &rows);
}
