//! Losses with their gradients, fused: softmax + cross-entropy, and MSE against one-hot
//! targets. Per example and member (rows (n x members, classes), each member's row against
//! the example's label): loss and whether argmax (first maximum) equals the label.

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

/// Each member's summed loss and hits over its rows (every `members`-th, from its own), in
/// example order, into batch `slot`'s stats.
fn write_stats<T: Real>(stats: &mut [T], slot: usize, members: usize, rows: &[(T, bool)]) {
    for k in 0..members {
        let mine = || rows.iter().skip(k).step_by(members);
        stats[2 * (slot * members + k)] = mine().map(|r| r.0).sum();
        stats[2 * (slot * members + k) + 1] = T::of(mine().filter(|r| r.1).count() as f32);
    }
}

#[allow(clippy::too_many_arguments)]
pub fn softmax_xent_forward_backward<T: Real>(
    dlogits: &mut [T],
    stats: &mut [T],
    slot: usize,
    logits: &[T],
    labels: &[u32],
    n: usize,
    members: usize,
    classes: usize,
    scale: f32,
) {
    let scale = T::of(scale);
    let len = n * members * classes;
    let rows: Vec<(T, bool)> = dlogits[..len]
        .par_chunks_mut(classes)
        .zip(logits[..len].par_chunks(classes))
        .enumerate()
        .map(|(r, (d, z))| {
            let y = labels[r / members] as usize;
            let out = softmax_row(d, z, y);
            d[y] -= T::one();
            d.iter_mut().for_each(|v| *v *= scale);
            out
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
