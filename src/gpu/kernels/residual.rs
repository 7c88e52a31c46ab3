//! shaders/residual.wgsl: the element-wise sum of two buffers (a residual block's body and
//! shortcut; the two gradients of a value two ops read).

use crate::gpu::{GpuBackend, GpuBuf};

params! {
    pub(super) struct ResidualParams {
        len: u32,
    }
}

/// out = a + b, `len` elements.
pub(in crate::gpu) fn residual_add(gpu: &mut GpuBackend, out: &mut GpuBuf, a: &GpuBuf, b: &GpuBuf, len: usize) {
    let grid = gpu.grid(len);
    gpu.dispatch("residual_add", &[a, b, out], &ResidualParams { len: len as u32 }, grid);
}
