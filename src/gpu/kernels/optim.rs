//! shaders/optim.wgsl: one dispatch over the whole flat parameter buffer per update.

use crate::backend::{AdamStep, SgdStep};
use crate::gpu::{GpuBackend, GpuBuf};

params! {
    pub(super) struct OptimParams {
        len: u32,
        /// adam: lr / (1 - beta1^t); sgd: lr
        step: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        /// adam: 1 / sqrt(1 - beta2^t)
        inv_sqrt_c2: f32,
        /// 1 - lr * weight_decay (AdamW)
        decay: f32,
        momentum: f32,
    }
}

pub(in crate::gpu) fn adam_step(
    gpu: &mut GpuBackend,
    params: &mut GpuBuf,
    grads: &GpuBuf,
    m: &mut GpuBuf,
    v: &mut GpuBuf,
    len: usize,
    a: &AdamStep,
) {
    let (c1, c2) = a.corrections();
    let prm = OptimParams {
        len: len as u32,
        step: a.lr / c1,
        beta1: a.beta1,
        beta2: a.beta2,
        eps: a.eps,
        inv_sqrt_c2: 1.0 / c2.sqrt(),
        decay: 1.0 - a.lr * a.weight_decay,
        momentum: 0.0,
    };
    let grid = gpu.grid(len);
    gpu.dispatch("adam_step", &[grads, params, m, v], &prm, grid);
}

pub(in crate::gpu) fn sgd_step(
    gpu: &mut GpuBackend,
    params: &mut GpuBuf,
    grads: &GpuBuf,
    velocity: &mut GpuBuf,
    len: usize,
    s: &SgdStep,
) {
    let prm = OptimParams {
        len: len as u32,
        step: s.lr,
        beta1: 0.0,
        beta2: 0.0,
        eps: 0.0,
        inv_sqrt_c2: 0.0,
        decay: 1.0,
        momentum: s.momentum,
    };
    let grid = gpu.grid(len);
    gpu.dispatch("sgd_step", &[grads, params, velocity], &prm, grid);
}

/// avg = decay * avg + (1 - decay) * src (the decay travels as beta1).
pub(in crate::gpu) fn ema_update(gpu: &mut GpuBackend, avg: &mut GpuBuf, src: &GpuBuf, len: usize, decay: f32) {
    let prm = OptimParams {
        len: len as u32,
        step: 0.0,
        beta1: decay,
        beta2: 0.0,
        eps: 0.0,
        inv_sqrt_c2: 0.0,
        decay: 1.0,
        momentum: 0.0,
    };
    let grid = gpu.grid(len);
    gpu.dispatch("ema_update", &[src, avg], &prm, grid);
}
