//! shaders/activation.wgsl: an activation on its own (when it cannot be fused into the
//! producing GEMM's epilogue) and its gradient.

use crate::backend::Dropout;
use crate::gpu::{GpuBackend, GpuBuf};
use crate::model::Act;

params! {
    #[derive(Default)]
    pub(super) struct ActParams {
        len: u32,
        act: u32,
        /// leaky relu
        slope: f32,
        /// backward after a fused relu + dropout: each element's gradient times its member's
        /// dropout scale (members.wgsl)
        has_dropout: u32,
        drop_members: u32,
        drop_len: u32,
        drop_at: u32,
    }
}

/// out = act(inp), `len` elements.
pub(in crate::gpu) fn activation_forward(gpu: &mut GpuBackend, out: &mut GpuBuf, inp: &GpuBuf, len: usize, act: Act) {
    let grid = gpu.grid(len);
    let prm = ActParams { len: len as u32, act: act.code(), slope: act.slope(), ..Default::default() };
    gpu.dispatch("activation_forward", &[inp, out], &prm, grid);
}

/// dinp = dout * act'(.) (times the dropout scale of the element's member), `len` elements,
/// act' from `saved`: the output, or gelu's and silu's input.
#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn activation_backward(
    gpu: &mut GpuBackend,
    dinp: &mut GpuBuf,
    dout: &GpuBuf,
    saved: &GpuBuf,
    table: &GpuBuf,
    len: usize,
    act: Act,
    dropout: Option<Dropout>,
) {
    let grid = gpu.grid(len);
    let d = super::dropout_fields(dropout.as_ref());
    let prm = ActParams {
        len: len as u32,
        act: act.code(),
        slope: act.slope(),
        has_dropout: d.has,
        drop_members: d.members,
        drop_len: d.len,
        drop_at: d.at,
    };
    gpu.dispatch("activation_backward", &[dout, saved, dinp, table], &prm, grid);
}
