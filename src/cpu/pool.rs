//! Max pooling on the CPU, one (example, channel) plane per task.

use rayon::prelude::*;

use super::real::Real;
use crate::model::Pool;

pub fn maxpool_forward<T: Real>(out: &mut [T], argmax: &mut [u32], inp: &[T], l: &Pool, n: usize) {
    let (pin, pout) = (l.h_in * l.w_in, l.h_out * l.w_out);
    let planes = n * l.c;
    out[..planes * pout]
        .par_chunks_mut(pout)
        .zip(argmax[..planes * pout].par_chunks_mut(pout))
        .zip(inp[..planes * pin].par_chunks(pin))
        .for_each(|((y, am), x)| {
            for oy in 0..l.h_out {
                for ox in 0..l.w_out {
                    let (y0, x0) = (oy * l.stride, ox * l.stride);
                    let mut best = y0 * l.w_in + x0;
                    for ky in 0..l.size {
                        for kx in 0..l.size {
                            let i = (y0 + ky) * l.w_in + x0 + kx;
                            // Strictly greater: the first maximum wins, on every backend.
                            if x[i] > x[best] {
                                best = i;
                            }
                        }
                    }
                    y[oy * l.w_out + ox] = x[best];
                    am[oy * l.w_out + ox] = best as u32;
                }
            }
        });
}

pub fn maxpool_backward<T: Real>(dinp: &mut [T], dout: &[T], argmax: &[u32], l: &Pool, n: usize) {
    let (pin, pout) = (l.h_in * l.w_in, l.h_out * l.w_out);
    let planes = n * l.c;
    dinp[..planes * pin]
        .par_chunks_mut(pin)
        .zip(dout[..planes * pout].par_chunks(pout))
        .zip(argmax[..planes * pout].par_chunks(pout))
        .for_each(|((dx, dy), am)| {
            dx.fill(T::zero());
            for (&g, &i) in dy.iter().zip(am) {
                dx[i as usize] += g;
            }
        });
}
