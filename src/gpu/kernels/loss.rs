//! shaders/loss.wgsl: a loss over the whole batch in one workgroup per member, its sum and
//! the correct count written to the (slot, member) stats; the training kernels also write the
//! gradient, the evaluation kernels the outputs from example `probs_at` on. With
//! `WIDE_CLASSES` or more classes a row is one workgroup's work instead of one thread's
//! (`*_rows_*`), its (loss, hit) written to scratch and summed in order by `loss_rows_sum`.

use crate::backend::Xent;
use crate::gpu::{GpuBackend, GpuBuf};

/// From this many classes on, a row gets a workgroup: one thread looping over tens of
/// thousands of classes four times per row is slow (and past 65,535 iterations, beyond what
/// Mesa's llvmpipe runs); below it, one workgroup for the batch needs one dispatch, not two.
pub(in crate::gpu) const WIDE_CLASSES: usize = 1024;

/// The `entry` (a `*_rows_*` kernel) over rows (example, member) with one workgroup each,
/// then each member's per-row figures summed into its stats; `table`, the member table, for
/// the kernels that read it.
fn wide(
    gpu: &mut GpuBackend,
    entry: &'static str,
    bufs: [&GpuBuf; 3],
    table: Option<&GpuBuf>,
    stats: &mut GpuBuf,
    prm: &LossParams,
) {
    let rows = (prm.n * prm.members) as usize;
    let Some(part) = gpu.scratch(2 * rows.max(1)) else { return };
    let grid = gpu.tile_grid(rows, 1);
    match table {
        Some(t) => gpu.dispatch(entry, &[bufs[0], bufs[1], bufs[2], &part, t], prm, grid),
        None => gpu.dispatch(entry, &[bufs[0], bufs[1], bufs[2], &part], prm, grid),
    }
    let grid = gpu.tile_grid(prm.members as usize, 1);
    gpu.dispatch("loss_rows_sum", &[stats, &part], prm, grid);
}

/// One workgroup per member.
fn per_member(gpu: &mut GpuBackend, entry: &'static str, bufs: &[&GpuBuf], prm: &LossParams) {
    let grid = gpu.tile_grid(prm.members as usize, 1);
    gpu.dispatch(entry, bufs, prm, grid);
}

params! {
    pub(super) struct LossParams {
        n: u32,
        classes: u32,
        slot: u32,
        /// forward-backward: gradient scale (1 / batch)
        scale: f32,
        /// forward: first example's row in probs
        probs_at: u32,
        members: u32,
        /// forward-backward of the cross-entropy: each member's label smoothing in the member
        /// table
        smoothing_at: u32,
    }
}

fn loss_params(n: usize, members: usize, classes: usize, slot: usize, scale: f32, probs_at: usize) -> LossParams {
    LossParams {
        n: n as u32,
        classes: classes as u32,
        slot: slot as u32,
        scale,
        probs_at: probs_at as u32,
        members: members as u32,
        smoothing_at: 0,
    }
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn softmax_xent_forward_backward(
    gpu: &mut GpuBackend,
    dlogits: &mut GpuBuf,
    stats: &mut GpuBuf,
    slot: usize,
    logits: &GpuBuf,
    labels: &GpuBuf,
    table: &GpuBuf,
    n: usize,
    x: &Xent,
) {
    let prm =
        LossParams { smoothing_at: x.smoothing_at as u32, ..loss_params(n, x.members, x.classes, slot, x.scale, 0) };
    if x.classes >= WIDE_CLASSES {
        return wide(gpu, "softmax_xent_rows_forward_backward", [logits, labels, dlogits], Some(table), stats, &prm);
    }
    per_member(gpu, "softmax_xent_forward_backward", &[logits, labels, dlogits, stats, table], &prm);
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
    members: usize,
    classes: usize,
) {
    let prm = loss_params(n, members, classes, slot, 1.0, probs_at);
    if classes >= WIDE_CLASSES {
        return wide(gpu, "softmax_xent_rows_forward", [logits, labels, probs], None, stats, &prm);
    }
    per_member(gpu, "softmax_xent_forward", &[logits, labels, probs, stats], &prm);
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
    members: usize,
    classes: usize,
    scale: f32,
) {
    let prm = loss_params(n, members, classes, slot, scale, 0);
    if classes >= WIDE_CLASSES {
        return wide(gpu, "mse_rows_forward_backward", [outputs, labels, dout], None, stats, &prm);
    }
    per_member(gpu, "mse_forward_backward", &[outputs, labels, dout, stats], &prm);
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
    members: usize,
    classes: usize,
) {
    let prm = loss_params(n, members, classes, slot, 1.0, probs_at);
    if classes >= WIDE_CLASSES {
        return wide(gpu, "mse_rows_forward", [outputs, labels, probs], None, stats, &prm);
    }
    per_member(gpu, "mse_forward", &[outputs, labels, probs, stats], &prm);
}
