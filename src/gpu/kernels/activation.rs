//! shaders/activation.wgsl: an activation on its own (when it cannot be fused into the
//! producing GEMM's epilogue) and its gradient.

use crate::gpu::{GpuBackend, GpuBuf};
use crate::model::Act;

params! {
    pub(super) struct ActParams {
        len: u32,
        act: u32,
        /// backward: multiplies the gradient (the dropout scale after a fused relu + dropout)
        scale: f32,
    }
}

/// out = act(inp), `len` elements.
pub(in crate::gpu) fn activation_forward(gpu: &mut GpuBackend, out: &mut GpuBuf, inp: &GpuBuf, len: usize, act: Act) {
    let grid = gpu.grid(len);
    let prm = ActParams { len: len as u32, act: act as u32, scale: 1.0 };
    gpu.dispatch("activation_forward", &[inp, out], &prm, grid);
}

/// dinp = dout * act'(out) * scale, `len` elements.
pub(in crate::gpu) fn activation_backward(
    gpu: &mut GpuBackend,
    dinp: &mut GpuBuf,
    dout: &GpuBuf,
    out: &GpuBuf,
    len: usize,
    act: Act,
    scale: f32,
) {
    let grid = gpu.grid(len);
    let prm = ActParams { len: len as u32, act: act as u32, scale };
    gpu.dispatch("activation_backward", &[dout, out, dinp], &prm, grid);
}
