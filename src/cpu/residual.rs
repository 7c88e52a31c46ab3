//! The sum of two buffers: a residual block's body and shortcut, and in the backward the two
//! gradients of a value that two ops read.

use rayon::prelude::*;

use super::real::Real;

const PAR_CHUNK: usize = 1 << 14;

/// out = a + b over the first `len` elements.
pub fn residual_add<T: Real>(out: &mut [T], a: &[T], b: &[T], len: usize) {
    out[..len]
        .par_chunks_mut(PAR_CHUNK)
        .zip(a[..len].par_chunks(PAR_CHUNK))
        .zip(b[..len].par_chunks(PAR_CHUNK))
        .for_each(|((o, a), b)| add_chunk(o, a, b));
}

/// One chunk in a function of its own, so that it vectorizes.
#[inline(never)]
fn add_chunk<T: Real>(o: &mut [T], a: &[T], b: &[T]) {
    let n = o.len().min(a.len()).min(b.len());
    let (o, a, b) = (&mut o[..n], &a[..n], &b[..n]);
    (0..n).for_each(|i| o[i] = a[i] + b[i]);
}
