//! Element-wise activations. The backward uses the activation's output y:
//! relu' = [y > 0], sigmoid' = y (1 - y), tanh' = 1 - y^2.

use rayon::prelude::*;

use super::real::Real;
use crate::model::Act;

const PAR_CHUNK: usize = 1 << 14;

#[inline]
pub fn act_scalar<T: Real>(x: T, a: Act) -> T {
    let one = T::one();
    match a {
        Act::Relu => x.max(T::zero()),
        Act::Sigmoid => {
            // Both branches stay finite for any x.
            if x >= T::zero() {
                one / (one + (-x).exp())
            } else {
                let e = x.exp();
                e / (one + e)
            }
        }
        Act::Tanh => x.tanh(),
    }
}

#[inline]
pub fn act_grad_from_output<T: Real>(y: T, a: Act) -> T {
    let one = T::one();
    match a {
        Act::Relu => {
            if y > T::zero() {
                one
            } else {
                T::zero()
            }
        }
        Act::Sigmoid => y * (one - y),
        Act::Tanh => one - y * y,
    }
}

/// Applies `a` in place (used by the fused conv/dense epilogues).
pub fn act_forward_slice<T: Real>(v: &mut [T], a: Act) {
    v.iter_mut().for_each(|x| *x = act_scalar(*x, a));
}

pub fn activation_forward<T: Real>(out: &mut [T], inp: &[T], len: usize, a: Act) {
    out[..len]
        .par_chunks_mut(PAR_CHUNK)
        .zip(inp[..len].par_chunks(PAR_CHUNK))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &x)| *o = act_scalar(x, a)));
}

pub fn activation_backward<T: Real>(dinp: &mut [T], dout: &[T], out: &[T], len: usize, a: Act) {
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
