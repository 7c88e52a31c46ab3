//! Inverted dropout with a counter-based mask: element i is kept when
//! `draw(key, i) >= p`, so the backward recomputes the mask instead of storing it.

use rayon::prelude::*;

use super::activation::dropout_threshold;
use super::real::Real;
use crate::rng::mix32;

const PAR_CHUNK: usize = 1 << 14;

pub fn dropout_forward<T: Real>(out: &mut [T], inp: &[T], len: usize, p: f32, key: u32) {
    dropout_apply(out, inp, len, p, key);
}

pub fn dropout_backward<T: Real>(dinp: &mut [T], dout: &[T], len: usize, p: f32, key: u32) {
    dropout_apply(dinp, dout, len, p, key);
}

/// The same mask and scale serve both directions.
fn dropout_apply<T: Real>(dst: &mut [T], src: &[T], len: usize, p: f32, key: u32) {
    let (threshold, scale) = dropout_threshold(p);
    let scale = T::of(scale);
    dst[..len]
        .par_chunks_mut(PAR_CHUNK)
        .zip(src[..len].par_chunks(PAR_CHUNK))
        .enumerate()
        .for_each(|(c, (d, s))| dropout_chunk(d, s, (c * PAR_CHUNK) as u32, key, threshold, scale));
}

/// One chunk, in a function of its own: inlined into rayon's closure the loop stays scalar.
#[inline(never)]
fn dropout_chunk<T: Real>(d: &mut [T], s: &[T], base: u32, key: u32, threshold: u32, scale: T) {
    let n = d.len().min(s.len());
    let (d, s) = (&mut d[..n], &s[..n]);
    for i in 0..n {
        let h = mix32(key ^ mix32(base + i as u32)) >> 8;
        let v = s[i] * scale;
        d[i] = if h >= threshold { v } else { T::zero() };
    }
}

#[cfg(test)]
mod tests {
    use super::dropout_threshold;

    #[test]
    fn integer_threshold_is_the_float_test() {
        for p in [0.0f32, 0.2, 0.3, 0.5, 0.8, 0.999, 1e-7] {
            let t = dropout_threshold(p).0;
            for h in [0u32, 1, 3355443, 3355444, 5033164, 5033165, 8388607, 8388608, 16777215, t.saturating_sub(1), t] {
                let f = h as f32 * (1.0 / 16_777_216.0);
                assert_eq!(h >= t, f >= p, "p {p} h {h}");
            }
        }
    }
}
