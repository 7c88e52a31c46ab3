//! Optimizers over the whole flat parameter buffer, element-wise, as torch.optim does them.

use rayon::prelude::*;

use crate::backend::{AdamStep, SgdStep};

const PAR_CHUNK: usize = 1 << 14;

pub fn adam_step(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], len: usize, a: &AdamStep) {
    let (c1, c2) = a.corrections();
    let step = a.lr / c1;
    let inv_sqrt_c2 = 1.0 / c2.sqrt();
    let decay = 1.0 - a.lr * a.weight_decay;
    params[..len]
        .par_chunks_mut(PAR_CHUNK)
        .zip(grads[..len].par_chunks(PAR_CHUNK))
        .zip(m[..len].par_chunks_mut(PAR_CHUNK))
        .zip(v[..len].par_chunks_mut(PAR_CHUNK))
        .for_each(|(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = a.beta1 * *m + (1.0 - a.beta1) * g;
                *v = a.beta2 * *v + (1.0 - a.beta2) * g * g;
                let denom = v.sqrt() * inv_sqrt_c2 + a.eps;
                *p = *p * decay - step * *m / denom;
            }
        });
}

pub fn sgd_step(params: &mut [f32], grads: &[f32], velocity: &mut [f32], len: usize, s: &SgdStep) {
    let chunks = params[..len].par_chunks_mut(PAR_CHUNK).zip(grads[..len].par_chunks(PAR_CHUNK));
    if s.momentum > 0.0 {
        chunks.zip(velocity[..len].par_chunks_mut(PAR_CHUNK)).for_each(|((p, g), b)| {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                *b = s.momentum * *b + g;
                *p -= s.lr * *b;
            }
        });
    } else {
        chunks.for_each(|(p, g)| p.iter_mut().zip(g).for_each(|(p, &g)| *p -= s.lr * g));
    }
}
