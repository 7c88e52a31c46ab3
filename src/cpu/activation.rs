//! Element-wise activations. The backward uses the activation's output y:
//! relu' = [y > 0], sigmoid' = y (1 - y), tanh' = 1 - y^2.

use rayon::prelude::*;

use crate::model::Act;

const PAR_CHUNK: usize = 1 << 14;

#[inline]
pub fn act_scalar(x: f32, a: Act) -> f32 {
    match a {
        Act::Relu => x.max(0.0),
        Act::Sigmoid => {
            // Both branches stay finite for any x.
            if x >= 0.0 {
                1.0 / (1.0 + (-x).exp())
            } else {
                let e = x.exp();
                e / (1.0 + e)
            }
        }
        Act::Tanh => x.tanh(),
    }
}

#[inline]
pub fn act_grad_from_output(y: f32, a: Act) -> f32 {
    match a {
        Act::Relu => {
            if y > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Act::Sigmoid => y * (1.0 - y),
        Act::Tanh => 1.0 - y * y,
    }
}

/// Applies `a` in place (used by the fused conv/dense epilogues).
pub fn act_forward_slice(v: &mut [f32], a: Act) {
    match a {
        Act::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        _ => v.iter_mut().for_each(|x| *x = act_scalar(*x, a)),
    }
}

pub fn activation_forward(out: &mut [f32], inp: &[f32], len: usize, a: Act) {
    out[..len]
        .par_chunks_mut(PAR_CHUNK)
        .zip(inp[..len].par_chunks(PAR_CHUNK))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &x)| *o = act_scalar(x, a)));
}

pub fn activation_backward(dinp: &mut [f32], dout: &[f32], out: &[f32], len: usize, a: Act) {
    dinp[..len]
        .par_chunks_mut(PAR_CHUNK)
        .zip(dout[..len].par_chunks(PAR_CHUNK))
        .zip(out[..len].par_chunks(PAR_CHUNK))
        .for_each(|((d, g), y)| {
            for ((d, &g), &y) in d.iter_mut().zip(g).zip(y) {
                *d = g * act_grad_from_output(y, a);
            }
        });
}
