//! shaders/loss.wgsl: a loss over the whole batch in one workgroup, its sum and the correct
//! count written to `stats[2 * slot]` and `stats[2 * slot + 1]`; the training kernels also
//! write the gradient, the evaluation kernels the outputs from row `probs_at` on.

use crate::gpu::{GpuBackend, GpuBuf};

params! {
    pub(super) struct LossParams {
        n: u32,
        classes: u32,
        slot: u32,
        /// forward-backward: gradient scale (1 / batch)
        scale: f32,
        /// forward: first example's row in probs
        probs_at: u32,
    }
}

fn loss_params(n: usize, classes: usize, slot: usize, scale: f32, probs_at: usize) -> LossParams {
    LossParams { n: n as u32, classes: classes as u32, slot: slot as u32, scale, probs_at: probs_at as u32 }
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn softmax_xent_forward_backward(
    gpu: &mut GpuBackend,
    dlogits: &mut GpuBuf,
    stats: &mut GpuBuf,
    slot: usize,
    logits: &GpuBuf,
    labels: &GpuBuf,
    n: usize,
    classes: usize,
    scale: f32,
) {
    let prm = loss_params(n, classes, slot, scale, 0);
    gpu.dispatch("softmax_xent_forward_backward", &[logits, labels, dlogits, stats], &prm, [1, 1, 1]);
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn softmax_xent_forward(
    gpu: &mut GpuBackend,
    probs: &mut GpuBuf,
    probs_at: usize,
    stats: &mut GpuBuf,
    slot: usize,
    logits: &GpuBuf,
    labels: &GpuBuf,
    n: usize,
    classes: usize,
) {
    let prm = loss_params(n, classes, slot, 1.0, probs_at);
    gpu.dispatch("softmax_xent_forward", &[logits, labels, probs, stats], &prm, [1, 1, 1]);
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn mse_forward_backward(
    gpu: &mut GpuBackend,
    dout: &mut GpuBuf,
    stats: &mut GpuBuf,
    slot: usize,
    outputs: &GpuBuf,
    labels: &GpuBuf,
    n: usize,
    classes: usize,
    scale: f32,
) {
    let prm = loss_params(n, classes, slot, scale, 0);
    gpu.dispatch("mse_forward_backward", &[outputs, labels, dout, stats], &prm, [1, 1, 1]);
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn mse_forward(
    gpu: &mut GpuBackend,
    probs: &mut GpuBuf,
    probs_at: usize,
    stats: &mut GpuBuf,
    slot: usize,
    outputs: &GpuBuf,
    labels: &GpuBuf,
    n: usize,
    classes: usize,
) {
    let prm = loss_params(n, classes, slot, 1.0, probs_at);
    gpu.dispatch("mse_forward", &[outputs, labels, probs, stats], &prm, [1, 1, 1]);
}
