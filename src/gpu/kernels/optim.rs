//! shaders/optim.wgsl: one dispatch over the whole flat parameter buffer per update, each
//! element with its member's rates from the member table.

use crate::backend::{AdamStep, EmaStep, SgdStep};
use crate::gpu::{GpuBackend, GpuBuf};

params! {
    #[derive(Default)]
    pub(super) struct OptimParams {
        len: u32,
        members: u32,
        segs: u32,
        lr_at: u32,
        /// adam: weight decays; sgd: momenta; ema: decays
        rate_at: u32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        /// adam: 1 - beta1^t
        c1: f32,
        /// adam: 1 / sqrt(1 - beta2^t)
        inv_sqrt_c2: f32,
        /// sgd: weight decays
        wd_at: u32,
        /// sgd: 1 for Nesterov momentum
        nesterov: u32,
    }
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn adam_step(
    gpu: &mut GpuBackend,
    params: &mut GpuBuf,
    grads: &GpuBuf,
    m: &mut GpuBuf,
    v: &mut GpuBuf,
    table: &GpuBuf,
    len: usize,
    a: &AdamStep,
) {
    let (c1, c2) = a.corrections();
    let prm = OptimParams {
        len: len as u32,
        members: a.segments.members as u32,
        segs: a.segments.at as u32,
        lr_at: a.lr_at as u32,
        rate_at: a.wd_at as u32,
        beta1: a.beta1,
        beta2: a.beta2,
        eps: a.eps,
        c1,
        inv_sqrt_c2: 1.0 / c2.sqrt(),
        ..Default::default()
    };
    let grid = gpu.grid(len);
    gpu.dispatch("adam_step", &[grads, params, m, v, table], &prm, grid);
}

pub(in crate::gpu) fn sgd_step(
    gpu: &mut GpuBackend,
    params: &mut GpuBuf,
    grads: &GpuBuf,
    velocity: &mut GpuBuf,
    table: &GpuBuf,
    len: usize,
    s: &SgdStep,
) {
    let prm = OptimParams {
        len: len as u32,
        members: s.segments.members as u32,
        segs: s.segments.at as u32,
        lr_at: s.lr_at as u32,
        rate_at: s.momentum_at as u32,
        wd_at: s.wd_at as u32,
        nesterov: s.nesterov as u32,
        ..Default::default()
    };
    let grid = gpu.grid(len);
    gpu.dispatch("sgd_step", &[grads, params, velocity, table], &prm, grid);
}

/// avg = decay * avg + (1 - decay) * src, each element with its member's decay.
pub(in crate::gpu) fn ema_update(
    gpu: &mut GpuBackend,
    avg: &mut GpuBuf,
    src: &GpuBuf,
    table: &GpuBuf,
    len: usize,
    e: &EmaStep,
) {
    let prm = OptimParams {
        len: len as u32,
        members: e.segments.members as u32,
        segs: e.segments.at as u32,
        rate_at: e.decay_at as u32,
        ..Default::default()
    };
    let grid = gpu.grid(len);
    gpu.dispatch("ema_update", &[src, avg, table], &prm, grid);
}
