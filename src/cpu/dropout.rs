//! Inverted dropout with a counter-based mask: element i is kept when
//! `draw(key, i) >= p`, so the backward recomputes the mask instead of storing it.

use rayon::prelude::*;

use super::real::Real;
use crate::rng::draw;

const PAR_CHUNK: usize = 1 << 14;

pub fn dropout_forward<T: Real>(out: &mut [T], inp: &[T], len: usize, p: f32, key: u32) {
    dropout_apply(out, inp, len, p, key);
}

pub fn dropout_backward<T: Real>(dinp: &mut [T], dout: &[T], len: usize, p: f32, key: u32) {
    dropout_apply(dinp, dout, len, p, key);
}

/// The same mask and scale serve both directions.
fn dropout_apply<T: Real>(dst: &mut [T], src: &[T], len: usize, p: f32, key: u32) {
    let scale = T::of(1.0 / (1.0 - p));
    dst[..len].par_chunks_mut(PAR_CHUNK).zip(src[..len].par_chunks(PAR_CHUNK)).enumerate().for_each(|(c, (d, s))| {
        let base = (c * PAR_CHUNK) as u32;
        for (i, (d, &s)) in d.iter_mut().zip(s).enumerate() {
            *d = if draw(key, base + i as u32) >= p { s * scale } else { T::zero() };
        }
    });
}
