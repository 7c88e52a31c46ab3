//! Inverted dropout with a counter-based mask: element j of a member's own batch buffer is
//! kept when `draw(key, j) >= p`, so the backward recomputes the mask instead of storing it.
//! In a buffer shared by several members (`backend::Dropout`), the buffer is cut into runs
//! that each lie inside one member's slice, and each run draws with its member's key from
//! the run's index in that member's own buffer.

use rayon::prelude::*;

use super::activation::dropout_threshold;
use super::real::Real;
use crate::backend::Dropout;
use crate::rng::mix32;

const PAR_CHUNK: usize = 1 << 14;

/// A dropout's masks as the CPU draws them: each member's key, integer threshold and scale.
#[derive(Debug, Clone)]
pub struct Masks {
    d: Dropout,
    members: Vec<(u32, u32, f32)>,
}

/// One run of elements inside one member's slice: its key, threshold and scale, and the index
/// of its first element in the member's own buffer.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub key: u32,
    pub threshold: u32,
    pub scale: f32,
    pub first: u32,
}

impl Masks {
    pub fn new(table: &[u32], d: &Dropout) -> Masks {
        let members = (0..d.members.max(1))
            .map(|k| {
                let (key, p, scale) = d.member(table, k);
                (key, dropout_threshold(p).0, scale)
            })
            .collect();
        Masks { d: *d, members }
    }

    /// Splits elements `start..start + len` of the shared buffer into runs inside one member's
    /// slice each: (offset from `start`, length, run).
    pub fn runs(&self, start: usize, len: usize) -> impl Iterator<Item = (usize, usize, Run)> + '_ {
        let slice = self.d.len.max(1);
        let mut at = 0;
        std::iter::from_fn(move || {
            if at >= len {
                return None;
            }
            let i = start + at;
            let count = (slice - i % slice).min(len - at);
            let (k, j) = self.d.locate(i);
            let (key, threshold, scale) = self.members[k];
            let item = (at, count, Run { key, threshold, scale, first: j as u32 });
            at += count;
            Some(item)
        })
    }
}

pub fn dropout_forward<T: Real>(out: &mut [T], inp: &[T], table: &[u32], len: usize, d: &Dropout) {
    dropout_apply(out, inp, len, &Masks::new(table, d));
}

pub fn dropout_backward<T: Real>(dinp: &mut [T], dout: &[T], table: &[u32], len: usize, d: &Dropout) {
    dropout_apply(dinp, dout, len, &Masks::new(table, d));
}

/// The same mask and scale serve both directions.
fn dropout_apply<T: Real>(dst: &mut [T], src: &[T], len: usize, masks: &Masks) {
    dst[..len].par_chunks_mut(PAR_CHUNK).zip(src[..len].par_chunks(PAR_CHUNK)).enumerate().for_each(|(c, (d, s))| {
        for (at, count, r) in masks.runs(c * PAR_CHUNK, d.len()) {
            let (d, s) = (&mut d[at..at + count], &s[at..at + count]);
            dropout_chunk(d, s, r.first, r.key, r.threshold, T::of(r.scale));
        }
    });
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
