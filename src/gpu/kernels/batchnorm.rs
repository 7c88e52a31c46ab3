//! shaders/batchnorm.wgsl: per-channel statistics (one workgroup per channel), then an
//! elementwise pass; the backward likewise reduces, then applies.

use crate::gpu::{GpuBackend, GpuBuf};
use crate::model::BatchNorm;

params! {
    pub(super) struct BnParams {
        n: u32,
        c: u32,
        hw: u32,
        eps: f32,
        momentum: f32,
        gamma_off: u32,
        beta_off: u32,
        mean_off: u32,
        var_off: u32,
        train: u32,
    }
}

fn bn_params(l: &BatchNorm, n: usize, train: bool) -> BnParams {
    BnParams {
        n: n as u32,
        c: l.c as u32,
        hw: l.hw as u32,
        eps: l.eps,
        momentum: l.momentum,
        gamma_off: l.gamma_off as u32,
        beta_off: l.beta_off as u32,
        mean_off: l.mean_off as u32,
        var_off: l.var_off as u32,
        train: train as u32,
    }
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn batchnorm_forward(
    gpu: &mut GpuBackend,
    out: &mut GpuBuf,
    saved: &mut GpuBuf,
    state: &mut GpuBuf,
    inp: &GpuBuf,
    params: &GpuBuf,
    l: &BatchNorm,
    n: usize,
    train: bool,
) {
    let prm = bn_params(l, n, train);
    if train {
        let grid = gpu.tile_grid(l.c, 1);
        gpu.dispatch("batchnorm_stats", &[inp, saved, state], &prm, grid);
    }
    let grid = gpu.grid(n * l.c * l.hw);
    gpu.dispatch("batchnorm_forward", &[inp, params, saved, state, out], &prm, grid);
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn batchnorm_backward(
    gpu: &mut GpuBackend,
    dinp: &mut GpuBuf,
    grads: &mut GpuBuf,
    dout: &GpuBuf,
    inp: &GpuBuf,
    saved: &GpuBuf,
    params: &GpuBuf,
    l: &BatchNorm,
    n: usize,
) {
    let prm = bn_params(l, n, true);
    let grid = gpu.tile_grid(l.c, 1);
    gpu.dispatch("batchnorm_backward_reduce", &[dout, inp, saved, grads], &prm, grid);
    let grid = gpu.grid(n * l.c * l.hw);
    gpu.dispatch("batchnorm_backward", &[dout, inp, saved, grads, dinp, params], &prm, grid);
}
