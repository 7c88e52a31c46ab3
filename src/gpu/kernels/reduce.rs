//! shaders/reduce.wgsl: the sums the GEMM families leave over: bias gradients, and the
//! split-K partials of a weight gradient added in order.

use crate::gpu::{GpuBackend, GpuBuf};

params! {
    pub(super) struct ReduceParams {
        /// bias_backward: examples; sum_partials: number of partials
        n: u32,
        /// bias_backward: channels
        c: u32,
        /// bias_backward: positions per channel (h*w; 1 for dense)
        p: u32,
        /// sum_partials: length of one partial
        len: u32,
        dst_off: u32,
    }
}

/// grads[dst_off + c] = sum of dout (n, c, p) over examples and positions.
pub(super) fn bias_backward(
    gpu: &mut GpuBackend,
    grads: &GpuBuf,
    dout: &GpuBuf,
    n: usize,
    c: usize,
    p: usize,
    dst_off: usize,
) {
    let prm = ReduceParams { n: n as u32, c: c as u32, p: p as u32, len: 0, dst_off: dst_off as u32 };
    let grid = gpu.tile_grid(c, 1);
    gpu.dispatch("bias_backward", &[dout, grads], &prm, grid);
}

/// grads[dst_off..][..len] = the sum of the `partials` consecutive partials of `len` in
/// `scratch`, added in order.
pub(super) fn sum_partials(
    gpu: &mut GpuBackend,
    grads: &GpuBuf,
    scratch: &GpuBuf,
    partials: usize,
    len: usize,
    dst_off: usize,
) {
    let prm = ReduceParams { n: partials as u32, c: 0, p: 0, len: len as u32, dst_off: dst_off as u32 };
    let grid = gpu.grid(len);
    gpu.dispatch("sum_partials", &[scratch, grads], &prm, grid);
}
