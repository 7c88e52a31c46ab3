//! shaders/conv2d.wgsl: 2-D convolution as an implicit GEMM, one kernel body for the forward
//! and both backwards, every group of a grouped layer in the same dispatch; the weight
//! gradient's long sum is split into chunks whose partials `reduce::sum_partials` adds in
//! order.

use super::{TILE, TK, act_code, dropout_fields, reduce};
use crate::backend::Epilogue;
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
    let tiles_n = (n * l.h_out * l.w_out).div_ceil(TILE);
    let tiles_m = l.group_out().div_ceil(TILE);
    let prm = conv_params(l, n, epi, tiles_n, tiles_m);
    let grid = gpu.tile_grid(tiles_n, tiles_m * l.groups);
    gpu.dispatch("conv2d_forward", &[params, inp, out, table], &prm, grid);
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
    let tiles_n = (n * l.h_in * l.w_in).div_ceil(TILE);
    let tiles_m = l.group_in().div_ceil(TILE);
    let prm = conv_params(l, n, Epilogue::default(), tiles_n, tiles_m);
    let grid = gpu.tile_grid(tiles_n, tiles_m * l.groups);
    let table = gpu.no_table();
    gpu.dispatch("conv2d_backward_input", &[params, dout, dinp, &table], &prm, grid);
}

pub(in crate::gpu) fn conv2d_backward_weight(
    gpu: &mut GpuBackend,
    grads: &mut GpuBuf,
    dout: &GpuBuf,
    inp: &GpuBuf,
    l: &Conv2d,
    n: usize,
) {
    // dW (c_out, K) sums over n * h_out * w_out positions, K = cg * kh * kw per group. Few
    // output tiles and a long sum: split the sum into chunks whose partials are added in
    // order afterwards.
    let (m, k) = (l.group_out(), l.group_in() * l.kh * l.kw);
    let reduction = n * l.h_out * l.w_out;
    let tiles_n = k.div_ceil(TILE);
    let tiles_m = m.div_ceil(TILE);
    let tiles = tiles_n * tiles_m * l.groups;
    let splits = (256 / tiles).clamp(1, reduction.div_ceil(256).max(1)).min(64);
    let split_len = reduction.div_ceil(splits).div_ceil(TK) * TK;
    let splits = reduction.div_ceil(split_len);
    let mut prm = conv_params(l, n, Epilogue::default(), tiles_n, tiles_m);
    prm.split_len = split_len as u32;
    let grid = gpu.tile_grid(tiles_n, tiles_m * l.groups * splits);
    let table = gpu.no_table();
    let len = l.weight_len();
    if splits == 1 {
        prm.c_off = l.w_off as u32;
        gpu.dispatch("conv2d_backward_weight", &[dout, inp, grads, &table], &prm, grid);
    } else {
        let Some(scratch) = gpu.scratch(splits * len) else { return };
        gpu.dispatch("conv2d_backward_weight", &[dout, inp, &scratch, &table], &prm, grid);
        reduce::sum_partials(gpu, grads, &scratch, splits, len, l.w_off);
    }
    if let Some(b) = l.b_off {
        reduce::bias_backward(gpu, grads, dout, n, l.c_out, l.h_out * l.w_out, b);
    }
}
