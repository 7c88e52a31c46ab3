//! shaders/dropout.wgsl: dropout on its own (when it follows no GEMM epilogue); the backward
//! draws the same mask from the same key.

use crate::gpu::{GpuBackend, GpuBuf};

params! {
    pub(super) struct DropoutParams {
        len: u32,
        key: u32,
        p: f32,
        scale: f32,
    }
}

/// out = inp * mask / (1 - p), `len` elements; the mask comes from `key`.
pub(in crate::gpu) fn dropout_forward(
    gpu: &mut GpuBackend,
    out: &mut GpuBuf,
    inp: &GpuBuf,
    len: usize,
    p: f32,
    key: u32,
) {
    let prm = DropoutParams { len: len as u32, key, p, scale: 1.0 / (1.0 - p) };
    let grid = gpu.grid(len);
    gpu.dispatch("dropout_forward", &[inp, out], &prm, grid);
}

/// dinp = dout * mask / (1 - p), with the forward's mask.
pub(in crate::gpu) fn dropout_backward(
    gpu: &mut GpuBackend,
    dinp: &mut GpuBuf,
    dout: &GpuBuf,
    len: usize,
    p: f32,
    key: u32,
) {
    let prm = DropoutParams { len: len as u32, key, p, scale: 1.0 / (1.0 - p) };
    let grid = gpu.grid(len);
    gpu.dispatch("dropout_backward", &[dout, dinp], &prm, grid);
}
