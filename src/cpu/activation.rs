//! Element-wise activations. The backward uses the activation's output y where it can:
//! relu' = [y > 0], sigmoid' = y (1 - y), tanh' = 1 - y^2, leaky relu' = 1 or the slope by
//! the sign of y; gelu's and silu's derivatives need the input x: gelu' = Phi(x) + x phi(x),
//! silu' = s (1 + x (1 - s)) with s = sigmoid(x).

use rayon::prelude::*;

use super::dropout::Masks;
use super::real::Real;
use crate::backend::{Dropout, Epilogue};
use crate::model::Act;
use crate::rng::mix32;

/// An epilogue with its dropout's masks resolved from the member table.
#[derive(Debug, Clone)]
pub struct Epi {
    pub act: Option<Act>,
    pub masks: Option<Masks>,
}

impl Epi {
    pub fn new(table: &[u32], epi: &Epilogue) -> Epi {
        Epi { act: epi.act, masks: epi.dropout.map(|d| Masks::new(table, &d)) }
    }
}

const PAR_CHUNK: usize = 1 << 14;

/// sigmoid(x), finite for any x (both branches exponentiate a non-positive number).
#[inline]
fn sigmoid<T: Real>(x: T) -> T {
    let one = T::one();
    if x >= T::zero() {
        one / (one + (-x).exp())
    } else {
        let e = x.exp();
        e / (one + e)
    }
}

/// Phi(x), the standard normal CDF: (1 + erf(x / sqrt 2)) / 2.
#[inline]
fn normal_cdf<T: Real>(x: T) -> T {
    T::of(0.5) * (T::one() + (x * T::of64(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

#[inline]
pub fn act_scalar<T: Real>(x: T, a: Act) -> T {
    match a {
        Act::Relu => x.max(T::zero()),
        Act::Sigmoid => sigmoid(x),
        Act::Tanh => x.tanh(),
        Act::LeakyRelu(s) => {
            if x > T::zero() {
                x
            } else {
                x * T::of(s)
            }
        }
        Act::Gelu => x * normal_cdf(x),
        Act::Silu => x * sigmoid(x),
    }
}

/// The derivative at input x (every activation).
#[inline]
pub fn act_grad_from_input<T: Real>(x: T, a: Act) -> T {
    let one = T::one();
    match a {
        Act::Gelu => {
            // phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
            let phi = (-(x * x) * T::of(0.5)).exp()
                * T::of64(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
            normal_cdf(x) + x * phi
        }
        Act::Silu => {
            let s = sigmoid(x);
            s * (one + x * (one - s))
        }
        _ => act_grad_from_output(act_scalar(x, a), a),
    }
}

/// The derivative from the output y (the activations whose `grad_from_output` holds).
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
        Act::LeakyRelu(s) => {
            if y > T::zero() {
                one
            } else {
                T::of(s)
            }
        }
        Act::Gelu | Act::Silu => unreachable!("gelu and silu take their derivative from the input"),
    }
}

/// v = epilogue(v + bias), in place, for outputs `base..base + v.len()` of a batch buffer
/// (the base places dropout's draws); one loop per case so each vectorizes.
#[inline(never)]
pub fn apply_epilogue<T: Real>(v: &mut [T], base: usize, bias: T, epi: &Epi) {
    let n = v.len();
    match (epi.act, &epi.masks) {
        (None, _) => (0..n).for_each(|i| v[i] += bias),
        (Some(Act::Relu), None) => (0..n).for_each(|i| v[i] = (v[i] + bias).max(T::zero())),
        (Some(Act::Relu), Some(masks)) => {
            for (at, count, r) in masks.runs(base, n) {
                let scale = T::of(r.scale);
                for (i, x) in v[at..at + count].iter_mut().enumerate() {
                    let y = (*x + bias).max(T::zero()) * scale;
                    let h = mix32(r.key ^ mix32(r.first + i as u32)) >> 8;
                    *x = if h >= r.threshold { y } else { T::zero() };
                }
            }
        }
        (Some(a), _) => (0..n).for_each(|i| v[i] = act_scalar(v[i] + bias, a)),
    }
}

/// v = epilogue(v), in place, for outputs `base..base + v.len()` of a batch buffer: batch
/// norm's fused activation (any) and dropout (after relu), with `activation_forward`'s and
/// `dropout_forward`'s arithmetic exactly.
#[inline(never)]
pub fn apply_act<T: Real>(v: &mut [T], base: usize, epi: &Epi) {
    match (epi.act, &epi.masks) {
        (None, _) => {}
        (Some(a), None) => v.iter_mut().for_each(|x| *x = act_scalar(*x, a)),
        (Some(a), Some(masks)) => {
            for (at, count, r) in masks.runs(base, v.len()) {
                let scale = T::of(r.scale);
                for (i, x) in v[at..at + count].iter_mut().enumerate() {
                    let y = act_scalar(*x, a) * scale;
                    let h = mix32(r.key ^ mix32(r.first + i as u32)) >> 8;
                    *x = if h >= r.threshold { y } else { T::zero() };
                }
            }
        }
    }
}

/// Dropout's keep test in integers, and its scale: draw(key, i) = (h >> 8) / 2^24 >= p
/// exactly when (h >> 8) >= ceil(p * 2^24).
pub fn dropout_threshold(p: f32) -> (u32, f32) {
    ((p as f64 * 16_777_216.0).ceil() as u32, 1.0 / (1.0 - p))
}

pub fn activation_forward<T: Real>(out: &mut [T], inp: &[T], len: usize, a: Act) {
    out[..len]
        .par_chunks_mut(PAR_CHUNK)
        .zip(inp[..len].par_chunks(PAR_CHUNK))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &x)| *o = act_scalar(x, a)));
}

/// dinp = dout * act'(.), from `saved` (the output, or gelu's and silu's input), times the
/// dropout scale of each element's member after a fused relu + dropout.
#[allow(clippy::too_many_arguments)]
pub fn activation_backward<T: Real>(
    dinp: &mut [T],
    dout: &[T],
    out: &[T],
    table: &[u32],
    len: usize,
    a: Act,
    dropout: Option<&Dropout>,
) {
    let masks = dropout.map(|d| Masks::new(table, d));
    dinp[..len]
        .par_chunks_mut(PAR_CHUNK)
        .zip(dout[..len].par_chunks(PAR_CHUNK))
        .zip(out[..len].par_chunks(PAR_CHUNK))
        .enumerate()
        .for_each(|(c, ((d, g), y))| backward_span(d, g, y, c * PAR_CHUNK, a, masks.as_ref()));
}

/// `activation_backward` on elements `base..base + d.len()` of the buffers (the base places
/// dropout's draws).
pub fn backward_span<T: Real>(d: &mut [T], g: &[T], y: &[T], base: usize, a: Act, masks: Option<&Masks>) {
    match masks {
        None => backward_chunk(d, g, y, a, T::one()),
        Some(m) => {
            for (at, count, r) in m.runs(base, d.len()) {
                let r2 = at..at + count;
                backward_chunk(&mut d[r2.clone()], &g[r2.clone()], &y[r2], a, T::of(r.scale));
            }
        }
    }
}

/// One chunk, one loop per activation, in a function of its own so that each vectorizes
/// (inlined into rayon's closure the loops stay scalar).
#[inline(never)]
fn backward_chunk<T: Real>(d: &mut [T], g: &[T], y: &[T], a: Act, scale: T) {
    let n = d.len().min(g.len()).min(y.len());
    let (d, g, y) = (&mut d[..n], &g[..n], &y[..n]);
    let one = T::one();
    match a {
        Act::Relu => (0..n).for_each(|i| {
            let v = g[i] * scale;
            d[i] = if y[i] > T::zero() { v } else { T::zero() }
        }),
        Act::Sigmoid => (0..n).for_each(|i| d[i] = g[i] * (y[i] * (one - y[i])) * scale),
        Act::Tanh => (0..n).for_each(|i| d[i] = g[i] * (one - y[i] * y[i]) * scale),
        Act::LeakyRelu(_) => (0..n).for_each(|i| d[i] = g[i] * act_grad_from_output(y[i], a) * scale),
        // `y` holds the input here.
        Act::Gelu | Act::Silu => (0..n).for_each(|i| d[i] = g[i] * act_grad_from_input(y[i], a) * scale),
    }
}
