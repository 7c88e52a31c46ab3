//! Max and average pooling on the CPU, one (example, channel) plane per task.

use rayon::prelude::*;

use super::real::Real;
use crate::model::{AvgPool, Pool};

pub fn maxpool_forward<T: Real>(out: &mut [T], argmax: &mut [u32], inp: &[T], l: &Pool, n: usize) {
    let (pin, pout) = (l.h_in * l.w_in, l.h_out * l.w_out);
    let planes = n * l.c;
    out[..planes * pout]
        .par_chunks_mut(pout)
        .zip(argmax[..planes * pout].par_chunks_mut(pout))
        .zip(inp[..planes * pin].par_chunks(pin))
        .for_each(|((y, am), x)| {
            if l.size == 2 && l.stride == 2 {
                return pool2x2(y, am, x, l);
            }
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

/// The common 2x2, stride-2 window, unrolled (same first-maximum rule).
fn pool2x2<T: Real>(y: &mut [T], am: &mut [u32], x: &[T], l: &Pool) {
    let w = l.w_in;
    for oy in 0..l.h_out {
        let r0 = 2 * oy * w;
        let (top, bottom) = (&x[r0..r0 + w], &x[r0 + w..r0 + 2 * w]);
        let (yr, ar) = (&mut y[oy * l.w_out..][..l.w_out], &mut am[oy * l.w_out..][..l.w_out]);
        for ox in 0..l.w_out {
            let c = 2 * ox;
            let (mut best, mut at) = (top[c], r0 + c);
            if top[c + 1] > best {
                (best, at) = (top[c + 1], r0 + c + 1);
            }
            if bottom[c] > best {
                (best, at) = (bottom[c], r0 + w + c);
            }
            if bottom[c + 1] > best {
                (best, at) = (bottom[c + 1], r0 + w + c + 1);
            }
            yr[ox] = best;
            ar[ox] = at as u32;
        }
    }
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

/// Average pooling, one (example, channel) plane per task: each output the sum of its window,
/// row by row, divided by the window's area.
pub fn avgpool_forward<T: Real>(out: &mut [T], inp: &[T], l: &AvgPool, n: usize) {
    let (pin, pout) = (l.h_in * l.w_in, l.h_out * l.w_out);
    let area = T::of((l.kh * l.kw) as f32);
    out[..n * l.c * pout].par_chunks_mut(pout).zip(inp[..n * l.c * pin].par_chunks(pin)).for_each(|(y, x)| {
        for oy in 0..l.h_out {
            for ox in 0..l.w_out {
                let (y0, x0) = (oy * l.stride, ox * l.stride);
                let mut sum = T::zero();
                for ky in 0..l.kh {
                    for &v in &x[(y0 + ky) * l.w_in + x0..][..l.kw] {
                        sum += v;
                    }
                }
                y[oy * l.w_out + ox] = sum / area;
            }
        }
    });
}

/// dinp: each input element collects dout / area of every window it lies in, windows in row
/// order (the GPU's gather adds them in the same order).
pub fn avgpool_backward<T: Real>(dinp: &mut [T], dout: &[T], l: &AvgPool, n: usize) {
    let (pin, pout) = (l.h_in * l.w_in, l.h_out * l.w_out);
    let area = T::of((l.kh * l.kw) as f32);
    dinp[..n * l.c * pin].par_chunks_mut(pin).zip(dout[..n * l.c * pout].par_chunks(pout)).for_each(|(dx, dy)| {
        dx.fill(T::zero());
        for oy in 0..l.h_out {
            for ox in 0..l.w_out {
                let g = dy[oy * l.w_out + ox] / area;
                let (y0, x0) = (oy * l.stride, ox * l.stride);
                for ky in 0..l.kh {
                    for d in &mut dx[(y0 + ky) * l.w_in + x0..][..l.kw] {
                        *d += g;
                    }
                }
            }
        }
    });
}
