//! shaders/conv2d.wgsl: 2-D convolution as an implicit GEMM, one kernel body for the forward
//! and both backwards, every group of a grouped layer in the same dispatch; the weight
//! gradient's long sum is split into chunks whose partials `reduce::sum_partials` adds in
//! order. The tile shape and the split count are the op's `Choice` (`gpu::variants`): the
//! default unless one was set for its shape.

use super::{act_code, dropout_fields, reduce};
use crate::backend::Epilogue;
use crate::gpu::variants::{Choice, GemmOp, Layer, OpKey, conv_dims, split_k};
use crate::gpu::{GpuBackend, GpuBuf};
use crate::model::Conv2d;

params! {
    pub(super) struct ConvParams {
        n: u32,
        c_in: u32,
        h_in: u32,
        w_in: u32,
        c_out: u32,
        h_out: u32,
        w_out: u32,
        kh: u32,
        kw: u32,
        stride: u32,
        pad_h: u32,
        pad_w: u32,
        w_off: u32,
        b_off: u32,
        has_bias: u32,
        act: u32,
        tiles_n: u32,
        /// row tiles of one group
        tiles_m: u32,
        /// backward_weight: length of one split of K
        split_len: u32,
        /// where C starts in c
        c_off: u32,
        groups: u32,
        in_groups: u32,
        /// forward: dropout after the activation (members.wgsl's epilogue)
        has_dropout: u32,
        drop_members: u32,
        drop_len: u32,
        drop_stream: u32,
        drop_step: u32,
        drop_at: u32,
    }
}

fn conv_params(l: &Conv2d, n: usize, epi: Epilogue, tiles_n: usize, tiles_m: usize) -> ConvParams {
    let d = dropout_fields(epi.dropout.as_ref());
    ConvParams {
        n: n as u32,
        c_in: l.c_in as u32,
        h_in: l.h_in as u32,
        w_in: l.w_in as u32,
        c_out: l.c_out as u32,
        h_out: l.h_out as u32,
        w_out: l.w_out as u32,
        kh: l.kh as u32,
        kw: l.kw as u32,
        stride: l.stride as u32,
        pad_h: l.pad_h as u32,
        pad_w: l.pad_w as u32,
        w_off: l.w_off as u32,
        b_off: l.b_off.unwrap_or(0) as u32,
        has_bias: l.b_off.is_some() as u32,
        act: act_code(epi.act),
        tiles_n: tiles_n as u32,
        tiles_m: tiles_m as u32,
        split_len: 0,
        c_off: 0,
        groups: l.groups as u32,
        in_groups: l.in_groups as u32,
        has_dropout: d.has,
        drop_members: d.members,
        drop_len: d.len,
        drop_stream: d.stream,
        drop_step: d.step,
        drop_at: d.at,
    }
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn conv2d_forward(
    gpu: &mut GpuBackend,
    out: &mut GpuBuf,
    inp: &GpuBuf,
    params: &GpuBuf,
    table: &GpuBuf,
    l: &Conv2d,
    n: usize,
    epi: Epilogue,
) {
    chosen(gpu, GemmOp::ConvForward, [params, inp, out, table], l, n, epi);
}

pub(in crate::gpu) fn conv2d_backward_input(
    gpu: &mut GpuBackend,
    dinp: &mut GpuBuf,
    dout: &GpuBuf,
    params: &GpuBuf,
    l: &Conv2d,
    n: usize,
) {
    debug_assert_eq!(l.groups, l.in_groups, "an input channel read by several groups has no backward-input here");
    let table = gpu.no_table();
    chosen(gpu, GemmOp::ConvBackwardInput, [params, dout, dinp, &table], l, n, Epilogue::default());
}

pub(in crate::gpu) fn conv2d_backward_weight(
    gpu: &mut GpuBackend,
    grads: &mut GpuBuf,
    dout: &GpuBuf,
    inp: &GpuBuf,
    l: &Conv2d,
    n: usize,
) {
    let table = gpu.no_table();
    chosen(gpu, GemmOp::ConvBackwardWeight, [dout, inp, grads, &table], l, n, Epilogue::default());
    if let Some(b) = l.b_off {
        reduce::bias_backward(gpu, grads, dout, n, l.c_out, l.h_out * l.w_out, b);
    }
}

/// Runs conv op `op` with the variant chosen for its shape (recording it for tuning if asked).
fn chosen(gpu: &mut GpuBackend, op: GemmOp, bufs: [&GpuBuf; 4], l: &Conv2d, n: usize, epi: Epilogue) {
    let choice = gpu.choose(OpKey::conv(op, l, n), Layer::Conv(*l), n, epi, bufs);
    conv2d(gpu, op, choice, bufs, l, n, epi);
}

/// Conv op `op` (one of the three Conv*) in `choice`'s tile, with `bufs` at bindings 0, 1,
/// 2 (the output), 7. The weight gradient's sum of n * h_out * w_out terms per weight is
/// split into `choice.splits` chunks (as many as `split_k` makes of them) whose partials go
/// to scratch and are added in order afterwards; one chunk writes dW directly.
pub(in crate::gpu) fn conv2d(
    gpu: &mut GpuBackend,
    op: GemmOp,
    choice: Choice,
    bufs: [&GpuBuf; 4],
    l: &Conv2d,
    n: usize,
    epi: Epilogue,
) {
    let Some(shape) = choice.tile.shape() else {
        gpu.fail(format!("{}: no {} kernel", op.entry(), choice.name()));
        return;
    };
    let (rows, cols) = choice.tile.dims();
    let (m, cols_total, k) = conv_dims(op, l, n);
    let tiles_n = cols_total.div_ceil(cols as usize);
    let tiles_m = m.div_ceil(rows as usize);
    let mut prm = conv_params(l, n, epi, tiles_n, tiles_m);
    if op != GemmOp::ConvBackwardWeight {
        let grid = gpu.tile_grid(tiles_n, tiles_m * l.groups);
        gpu.dispatch_tiled(op.entry(), shape, &bufs, &prm, grid);
        return;
    }
    let (split_len, splits) = split_k(k as u32, choice.splits);
    prm.split_len = split_len;
    let grid = gpu.tile_grid(tiles_n, tiles_m * l.groups * splits as usize);
    let [dout, inp, grads, table] = bufs;
    let len = l.weight_len();
    if splits == 1 {
        prm.c_off = l.w_off as u32;
        gpu.dispatch_tiled(op.entry(), shape, &bufs, &prm, grid);
    } else {
        let Some(scratch) = gpu.scratch(splits as usize * len) else { return };
        gpu.dispatch_tiled(op.entry(), shape, &[dout, inp, &scratch, table], &prm, grid);
        reduce::sum_partials(gpu, grads, &scratch, splits as usize, len, l.w_off);
    }
}
