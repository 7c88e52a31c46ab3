//! shaders/batchnorm.wgsl: per-channel statistics (one workgroup per channel), then an
//! elementwise pass; the backward likewise reduces, then applies. An epilogue (activation,
//! dropout after relu) is fused into the elementwise forward pass, and its backward into
//! both backward passes.

use crate::backend::Epilogue;
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
        /// the fused epilogue: activation code (0: none), leaky relu's slope, dropout
        act: u32,
        slope: f32,
        has_dropout: u32,
        drop_members: u32,
        drop_len: u32,
        drop_stream: u32,
        drop_step: u32,
        drop_at: u32,
    }
}

fn bn_params(l: &BatchNorm, n: usize, train: bool, epi: Epilogue) -> BnParams {
    let d = super::dropout_fields(epi.dropout.as_ref());
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
        act: super::act_code(epi.act),
        slope: epi.act.map_or(0.0, |a| a.slope()),
        has_dropout: d.has,
        drop_members: d.members,
        drop_len: d.len,
        drop_stream: d.stream,
        drop_step: d.step,
        drop_at: d.at,
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
    table: &GpuBuf,
    l: &BatchNorm,
    n: usize,
    train: bool,
    epi: Epilogue,
) {
    let prm = bn_params(l, n, train, epi);
    if train {
        let grid = gpu.tile_grid(l.c, 1);
        gpu.dispatch("batchnorm_stats", &[inp, saved, state], &prm, grid);
    }
    let grid = gpu.grid(n * l.c * l.hw);
    gpu.dispatch("batchnorm_forward", &[inp, params, saved, state, out, table], &prm, grid);
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn batchnorm_backward(
    gpu: &mut GpuBackend,
    dinp: &mut GpuBuf,
    grads: &mut GpuBuf,
    dout: &GpuBuf,
    inp: &GpuBuf,
    out: &GpuBuf,
    saved: &GpuBuf,
    params: &GpuBuf,
    table: &GpuBuf,
    l: &BatchNorm,
    n: usize,
    epi: Epilogue,
) {
    let prm = bn_params(l, n, true, epi);
    let grid = gpu.tile_grid(l.c, 1);
    gpu.dispatch("batchnorm_backward_reduce", &[dout, inp, saved, grads, params, out, table], &prm, grid);
    let grid = gpu.grid(n * l.c * l.hw);
    gpu.dispatch("batchnorm_backward", &[dout, inp, saved, grads, dinp, params, out, table], &prm, grid);
}
