//! Losses with their gradients, fused: softmax + cross-entropy, and MSE against one-hot
//! targets. Per example: loss and whether argmax (first maximum) equals the label.

use rayon::prelude::*;

/// (argmax, max) of a row; the first maximum wins.
fn argmax(row: &[f32]) -> (usize, f32) {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    (best, row[best])
}

/// Writes softmax(z) into p and returns (loss, correct) for label y.
fn softmax_row(p: &mut [f32], z: &[f32], y: usize) -> (f32, bool) {
    let (best, max) = argmax(z);
    let mut sum = 0f32;
    for (p, &z) in p.iter_mut().zip(z) {
        *p = (z - max).exp();
        sum += *p;
    }
    let inv = 1.0 / sum;
    p.iter_mut().for_each(|p| *p *= inv);
    // -log softmax[y] = log(sum) - (z[y] - max)
    (sum.ln() - (z[y] - max), best == y)
}

fn write_stats(stats: &mut [f32], slot: usize, per_example: &[(f32, bool)]) {
    stats[2 * slot] = per_example.iter().map(|r| r.0).sum();
    stats[2 * slot + 1] = per_example.iter().filter(|r| r.1).count() as f32;
}

#[allow(clippy::too_many_arguments)]
pub fn softmax_xent_forward_backward(
    dlogits: &mut [f32],
    stats: &mut [f32],
    slot: usize,
    logits: &[f32],
    labels: &[u32],
    n: usize,
    classes: usize,
    scale: f32,
) {
    let rows: Vec<(f32, bool)> = dlogits[..n * classes]
        .par_chunks_mut(classes)
        .zip(logits[..n * classes].par_chunks(classes))
        .zip(&labels[..n])
        .map(|((d, z), &y)| {
            let r = softmax_row(d, z, y as usize);
            d[y as usize] -= 1.0;
            d.iter_mut().for_each(|v| *v *= scale);
            r
        })
        .collect();
    write_stats(stats, slot, &rows);
}

#[allow(clippy::too_many_arguments)]
pub fn softmax_xent_forward(
    probs: &mut [f32],
    probs_at: usize,
    stats: &mut [f32],
    slot: usize,
    logits: &[f32],
    labels: &[u32],
    n: usize,
    classes: usize,
) {
    let rows: Vec<(f32, bool)> = probs[probs_at * classes..(probs_at + n) * classes]
        .par_chunks_mut(classes)
        .zip(logits[..n * classes].par_chunks(classes))
        .zip(&labels[..n])
        .map(|((p, z), &y)| softmax_row(p, z, y as usize))
        .collect();
    write_stats(stats, slot, &rows);
}

/// (mean over classes of (y - onehot)^2, correct) of one row.
fn mse_row(z: &[f32], y: usize) -> (f32, bool) {
    let sq: f32 = z.iter().enumerate().map(|(j, &v)| (v - (j == y) as u32 as f32).powi(2)).sum();
    (sq / z.len() as f32, argmax(z).0 == y)
}

#[allow(clippy::too_many_arguments)]
pub fn mse_forward_backward(
    dout: &mut [f32],
    stats: &mut [f32],
    slot: usize,
    outputs: &[f32],
    labels: &[u32],
    n: usize,
    classes: usize,
    scale: f32,
) {
    let k = 2.0 * scale / classes as f32;
    let rows: Vec<(f32, bool)> = dout[..n * classes]
        .chunks_mut(classes)
        .zip(outputs[..n * classes].chunks(classes))
        .zip(&labels[..n])
        .map(|((d, z), &y)| {
            for (j, (d, &v)) in d.iter_mut().zip(z).enumerate() {
                *d = k * (v - (j == y as usize) as u32 as f32);
            }
            mse_row(z, y as usize)
        })
        .collect();
    write_stats(stats, slot, &rows);
}

#[allow(clippy::too_many_arguments)]
pub fn mse_forward(
    probs: &mut [f32],
    probs_at: usize,
    stats: &mut [f32],
    slot: usize,
    outputs: &[f32],
    labels: &[u32],
    n: usize,
    classes: usize,
) {
    probs[probs_at * classes..(probs_at + n) * classes].copy_from_slice(&outputs[..n * classes]);
    let rows: Vec<(f32, bool)> =
        outputs[..n * classes].chunks(classes).zip(&labels[..n]).map(|(z, &y)| mse_row(z, y as usize)).collect();
    write_stats(stats, slot, &rows);
}
