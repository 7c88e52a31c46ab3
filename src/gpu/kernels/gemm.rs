//! shaders/gemm.wgsl: the dense layers as strided GEMMs C = A B (+ bias, activation and
//! dropout fused into the forward's epilogue): 64x64 tiles, or one workgroup per output when
//! the product has few rows or columns and a long K.

use super::{TILE, act_code, dropout_fields, reduce};
use crate::backend::Epilogue;
use crate::gpu::{GpuBackend, GpuBuf};
use crate::model::Dense;

params! {
    /// Element (i, j) of A is a[a_off + i * a_rs + j * a_cs]; likewise B; C is row-major
    /// from c_off with row stride c_rs.
    #[derive(Default)]
    pub(super) struct GemmParams {
        m: u32,
        n: u32,
        k: u32,
        tiles_n: u32,
        a_off: u32,
        a_rs: u32,
        a_cs: u32,
        b_off: u32,
        b_rs: u32,
        b_cs: u32,
        c_off: u32,
        c_rs: u32,
        bias_off: u32,
        has_bias: u32,
        act: u32,
        /// dense_forward: dropout after the activation (common.wgsl's epilogue)
        has_dropout: u32,
        drop_key: u32,
        drop_p: f32,
        drop_scale: f32,
    }
}

/// A dense-layer product: tiled, or (few rows or columns, long K) one workgroup per output.
fn gemm(gpu: &mut GpuBackend, entry: &'static str, bufs: [&GpuBuf; 3], mut prm: GemmParams) {
    if gpu.coop.is_some() {
        // --precision mixed: every dense product on the cooperative-matrix kernel
        // (src/gpu/coop.rs), which takes this parameter block as it is.
        gpu.coop_dispatch(bufs, prm.m, prm.n, &prm);
        return;
    }
    if prm.m.min(prm.n) < 16 && prm.k >= 64 {
        let grid = gpu.tile_grid((prm.m * prm.n) as usize, 1);
        gpu.dispatch("gemm_skinny", &bufs, &prm, grid);
        return;
    }
    let tiles_n = (prm.n as usize).div_ceil(TILE);
    prm.tiles_n = tiles_n as u32;
    let grid = gpu.tile_grid(tiles_n, (prm.m as usize).div_ceil(TILE));
    gpu.dispatch(entry, &bufs, &prm, grid);
}

pub(in crate::gpu) fn dense_forward(
    gpu: &mut GpuBackend,
    out: &mut GpuBuf,
    inp: &GpuBuf,
    params: &GpuBuf,
    l: &Dense,
    n: usize,
    epi: Epilogue,
) {
    // out (n, n_out) = inp (n, n_in) * W^T: B(k = i, j = o) = W[o * n_in + i].
    let (has_dropout, drop_key, drop_p, drop_scale) = dropout_fields(&epi);
    let prm = GemmParams {
        m: n as u32,
        n: l.n_out as u32,
        k: l.n_in as u32,
        a_rs: l.n_in as u32,
        a_cs: 1,
        b_off: l.w_off as u32,
        b_rs: 1,
        b_cs: l.n_in as u32,
        c_rs: l.n_out as u32,
        bias_off: l.b_off.unwrap_or(0) as u32,
        has_bias: l.b_off.is_some() as u32,
        act: act_code(epi.act),
        has_dropout,
        drop_key,
        drop_p,
        drop_scale,
        ..Default::default()
    };
    gemm(gpu, "dense_forward", [inp, params, out], prm);
}

pub(in crate::gpu) fn dense_backward_input(
    gpu: &mut GpuBackend,
    dinp: &mut GpuBuf,
    dout: &GpuBuf,
    params: &GpuBuf,
    l: &Dense,
    n: usize,
) {
    // dinp (n, n_in) = dout (n, n_out) * W (n_out, n_in)
    let prm = GemmParams {
        m: n as u32,
        n: l.n_in as u32,
        k: l.n_out as u32,
        a_rs: l.n_out as u32,
        a_cs: 1,
        b_off: l.w_off as u32,
        b_rs: l.n_in as u32,
        b_cs: 1,
        c_rs: l.n_in as u32,
        ..Default::default()
    };
    gemm(gpu, "dense_backward_input", [dout, params, dinp], prm);
}

pub(in crate::gpu) fn dense_backward_weight(
    gpu: &mut GpuBackend,
    grads: &mut GpuBuf,
    dout: &GpuBuf,
    inp: &GpuBuf,
    l: &Dense,
    n: usize,
) {
    // dW (n_out, n_in) = dout^T (n_out, n) * inp (n, n_in)
    let prm = GemmParams {
        m: l.n_out as u32,
        n: l.n_in as u32,
        k: n as u32,
        a_rs: 1,
        a_cs: l.n_out as u32,
        b_rs: l.n_in as u32,
        b_cs: 1,
        c_off: l.w_off as u32,
        c_rs: l.n_in as u32,
        ..Default::default()
    };
    gemm(gpu, "dense_backward_weight", [dout, inp, grads], prm);
    if let Some(b) = l.b_off {
        reduce::bias_backward(gpu, grads, dout, n, l.n_out, 1, b);
    }
}
