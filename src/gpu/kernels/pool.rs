//! shaders/pool.wgsl: max and average pooling, one thread per output (forward) or input
//! (backward).

use crate::gpu::{GpuBackend, GpuBuf};
use crate::model::{AvgPool, Pool};

params! {
    pub(super) struct PoolParams {
        /// n * c
        planes: u32,
        h_in: u32,
        w_in: u32,
        h_out: u32,
        w_out: u32,
        /// window height (max pooling: and width)
        size: u32,
        stride: u32,
        /// average pooling: window width
        size_w: u32,
    }
}

fn pool_params(l: &Pool, n: usize) -> PoolParams {
    PoolParams {
        planes: (n * l.c) as u32,
        h_in: l.h_in as u32,
        w_in: l.w_in as u32,
        h_out: l.h_out as u32,
        w_out: l.w_out as u32,
        size: l.size as u32,
        stride: l.stride as u32,
        size_w: l.size as u32,
    }
}

fn avgpool_params(l: &AvgPool, n: usize) -> PoolParams {
    PoolParams {
        planes: (n * l.c) as u32,
        h_in: l.h_in as u32,
        w_in: l.w_in as u32,
        h_out: l.h_out as u32,
        w_out: l.w_out as u32,
        size: l.kh as u32,
        stride: l.stride as u32,
        size_w: l.kw as u32,
    }
}

pub(in crate::gpu) fn avgpool_forward(gpu: &mut GpuBackend, out: &mut GpuBuf, inp: &GpuBuf, l: &AvgPool, n: usize) {
    let grid = gpu.grid(n * l.out_len());
    gpu.dispatch("avgpool_forward", &[inp, out], &avgpool_params(l, n), grid);
}

pub(in crate::gpu) fn avgpool_backward(gpu: &mut GpuBackend, dinp: &mut GpuBuf, dout: &GpuBuf, l: &AvgPool, n: usize) {
    let grid = gpu.grid(n * l.in_len());
    gpu.dispatch("avgpool_backward", &[dout, dinp], &avgpool_params(l, n), grid);
}

pub(in crate::gpu) fn maxpool_forward(
    gpu: &mut GpuBackend,
    out: &mut GpuBuf,
    argmax: &mut GpuBuf,
    inp: &GpuBuf,
    l: &Pool,
    n: usize,
) {
    let prm = pool_params(l, n);
    let grid = gpu.grid(n * l.out_len());
    gpu.dispatch("maxpool_forward", &[inp, argmax, out], &prm, grid);
}

pub(in crate::gpu) fn maxpool_backward(
    gpu: &mut GpuBackend,
    dinp: &mut GpuBuf,
    dout: &GpuBuf,
    argmax: &GpuBuf,
    l: &Pool,
    n: usize,
) {
    let prm = pool_params(l, n);
    let grid = gpu.grid(n * l.in_len());
    gpu.dispatch("maxpool_backward", &[dout, argmax, dinp], &prm, grid);
}
