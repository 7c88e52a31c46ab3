//! Optimizers over the whole flat parameter buffer, element-wise, as torch.optim does them;
//! each run of elements of one member (`backend::Segments::runs`) with that member's rates.

use rayon::prelude::*;

use super::real::Real;
use crate::backend::{AdamStep, EmaStep, SgdStep, table_f32};

const PAR_CHUNK: usize = 1 << 14;

pub fn adam_step<T: Real>(
    params: &mut [T],
    grads: &[T],
    m: &mut [T],
    v: &mut [T],
    table: &[u32],
    len: usize,
    a: &AdamStep,
) {
    let (c1, c2) = a.corrections();
    let inv_sqrt_c2 = T::of(1.0 / c2.sqrt());
    let (b1, b2, eps) = (T::of(a.beta1), T::of(a.beta2), T::of(a.eps));
    let one = T::one();
    for (r, k) in a.segments.runs(table, len) {
        let (lr, wd) = (table_f32(table, a.lr_at + k), table_f32(table, a.wd_at + k));
        let step = T::of(lr / c1);
        let decay = T::of(1.0 - lr * wd);
        params[r.clone()]
            .par_chunks_mut(PAR_CHUNK)
            .zip(grads[r.clone()].par_chunks(PAR_CHUNK))
            .zip(m[r.clone()].par_chunks_mut(PAR_CHUNK))
            .zip(v[r].par_chunks_mut(PAR_CHUNK))
            .for_each(|(((p, g), m), v)| {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = b1 * *m + (one - b1) * g;
                    *v = b2 * *v + (one - b2) * g * g;
                    let denom = v.sqrt() * inv_sqrt_c2 + eps;
                    *p = *p * decay - step * *m / denom;
                }
            });
    }
}

pub fn sgd_step<T: Real>(params: &mut [T], grads: &[T], velocity: &mut [T], table: &[u32], len: usize, s: &SgdStep) {
    for (r, k) in s.segments.runs(table, len) {
        let (lr, momentum) = (table_f32(table, s.lr_at + k), table_f32(table, s.momentum_at + k));
        let wd = table_f32(table, s.wd_at + k);
        let (lr_t, momentum_t, wd_t) = (T::of(lr), T::of(momentum), T::of(wd));
        let chunks = params[r.clone()].par_chunks_mut(PAR_CHUNK).zip(grads[r.clone()].par_chunks(PAR_CHUNK));
        // torch.optim.SGD: g += wd p (coupled decay); b = momentum b + g; the step is lr b, or
        // with Nesterov lr (g + momentum b). Without decay g stays the gradient bit for bit.
        let grad = |p: T, g: T| if wd == 0.0 { g } else { g + wd_t * p };
        if momentum > 0.0 {
            chunks.zip(velocity[r].par_chunks_mut(PAR_CHUNK)).for_each(|((p, g), b)| {
                for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                    let g = grad(*p, g);
                    *b = momentum_t * *b + g;
                    *p -= lr_t * if s.nesterov { g + momentum_t * *b } else { *b };
                }
            });
        } else {
            chunks.for_each(|(p, g)| p.iter_mut().zip(g).for_each(|(p, &g)| *p -= lr_t * grad(*p, g)));
        }
    }
}

/// Exponential moving average of a buffer: `avg = decay * avg + (1 - decay) * src` over the
/// first `len` elements (weight averaging, as torch's `AveragedModel` with an EMA function).
pub fn ema_update<T: Real>(avg: &mut [T], src: &[T], table: &[u32], len: usize, e: &EmaStep) {
    for (r, k) in e.segments.runs(table, len) {
        let decay = table_f32(table, e.decay_at + k);
        let (d, w) = (T::of(decay), T::of(1.0 - decay));
        avg[r.clone()].par_chunks_mut(PAR_CHUNK).zip(src[r].par_chunks(PAR_CHUNK)).for_each(|(a, s)| {
            for (a, &s) in a.iter_mut().zip(s) {
                *a = d * *a + w * s;
            }
        });
    }
}
