//! Optimizers over the whole flat parameter buffer, element-wise, as torch.optim does them.

use rayon::prelude::*;

use super::real::Real;
use crate::backend::{AdamStep, SgdStep};

const PAR_CHUNK: usize = 1 << 14;

pub fn adam_step<T: Real>(params: &mut [T], grads: &[T], m: &mut [T], v: &mut [T], len: usize, a: &AdamStep) {
    let (c1, c2) = a.corrections();
    let step = T::of(a.lr / c1);
    let inv_sqrt_c2 = T::of(1.0 / c2.sqrt());
    let decay = T::of(1.0 - a.lr * a.weight_decay);
    let (b1, b2, eps) = (T::of(a.beta1), T::of(a.beta2), T::of(a.eps));
    let one = T::one();
    params[..len]
        .par_chunks_mut(PAR_CHUNK)
        .zip(grads[..len].par_chunks(PAR_CHUNK))
        .zip(m[..len].par_chunks_mut(PAR_CHUNK))
        .zip(v[..len].par_chunks_mut(PAR_CHUNK))
        .for_each(|(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = b1 * *m + (one - b1) * g;
                *v = b2 * *v + (one - b2) * g * g;
                let denom = v.sqrt() * inv_sqrt_c2 + eps;
                *p = *p * decay - step * *m / denom;
            }
        });
}

pub fn sgd_step<T: Real>(params: &mut [T], grads: &[T], velocity: &mut [T], len: usize, s: &SgdStep) {
    let (lr, momentum) = (T::of(s.lr), T::of(s.momentum));
    let chunks = params[..len].par_chunks_mut(PAR_CHUNK).zip(grads[..len].par_chunks(PAR_CHUNK));
    if s.momentum > 0.0 {
        chunks.zip(velocity[..len].par_chunks_mut(PAR_CHUNK)).for_each(|((p, g), b)| {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                *b = momentum * *b + g;
                *p -= lr * *b;
            }
        });
    } else {
        chunks.for_each(|(p, g)| p.iter_mut().zip(g).for_each(|(p, &g)| *p -= lr * g));
    }
}

/// Exponential moving average of a buffer: `avg = decay * avg + (1 - decay) * src` over the
/// first `len` elements (weight averaging, as torch's `AveragedModel` with an EMA function).
pub fn ema_update<T: Real>(avg: &mut [T], src: &[T], len: usize, decay: f32) {
    let (d, e) = (T::of(decay), T::of(1.0 - decay));
    avg[..len].par_chunks_mut(PAR_CHUNK).zip(src[..len].par_chunks(PAR_CHUNK)).for_each(|(a, s)| {
        for (a, &s) in a.iter_mut().zip(s) {
            *a = d * *a + e * s;
        }
    });
}
