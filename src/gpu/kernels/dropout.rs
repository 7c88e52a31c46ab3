//! shaders/dropout.wgsl: dropout on its own (when it follows no GEMM epilogue); the backward
//! draws the same mask from the same keys.

use crate::backend::Dropout;
use crate::gpu::{GpuBackend, GpuBuf};

params! {
    pub(super) struct DropoutParams {
        len: u32,
        members: u32,
        member_len: u32,
        stream: u32,
        step: u32,
        at: u32,
    }
}

fn dropout_params(len: usize, d: &Dropout) -> DropoutParams {
    DropoutParams {
        len: len as u32,
        members: d.members as u32,
        member_len: d.len as u32,
        stream: d.stream,
        step: d.step,
        at: d.at as u32,
    }
}

/// out = inp * mask / (1 - p), `len` elements, each member's mask from its key.
pub(in crate::gpu) fn dropout_forward(
    gpu: &mut GpuBackend,
    out: &mut GpuBuf,
    inp: &GpuBuf,
    table: &GpuBuf,
    len: usize,
    d: &Dropout,
) {
    let grid = gpu.grid(len);
    gpu.dispatch("dropout_forward", &[inp, out, table], &dropout_params(len, d), grid);
}

/// dinp = dout * mask / (1 - p), with the forward's mask.
pub(in crate::gpu) fn dropout_backward(
    gpu: &mut GpuBackend,
    dinp: &mut GpuBuf,
    dout: &GpuBuf,
    table: &GpuBuf,
    len: usize,
    d: &Dropout,
) {
    let grid = gpu.grid(len);
    gpu.dispatch("dropout_backward", &[dout, dinp, table], &dropout_params(len, d), grid);
}
