//! shaders/gemm.wgsl: the dense layers as strided, batched GEMMs C = A B (+ bias, activation
//! and dropout fused into the forward's epilogue), a grouped layer's groups as the batches of
//! one dispatch: tiles (64x64 by default), or one workgroup per output (by default when the
//! product has few rows or columns and a long K), as the op's `Choice` (`gpu::variants`)
//! says.

use super::{act_code, dropout_fields, reduce};
use crate::backend::Epilogue;
use crate::gpu::variants::{Choice, GemmOp, Layer, OpKey, Tile};
use crate::gpu::{GpuBackend, GpuBuf};
use crate::model::Dense;

params! {
    /// Element (i, j) of A is a[a_off + z * a_bs + i * a_rs + j * a_cs] in batch z; likewise
    /// B; C is row-major from c_off + z * c_bs with row stride c_rs.
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
        tiles_m: u32,
        batches: u32,
        a_bs: u32,
        b_bs: u32,
        c_bs: u32,
        bias_bs: u32,
        /// dense_forward: dropout after the activation (members.wgsl's epilogue)
        has_dropout: u32,
        drop_members: u32,
        drop_len: u32,
        drop_stream: u32,
        drop_step: u32,
        drop_at: u32,
    }
}

#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn dense_forward(
    gpu: &mut GpuBackend,
    out: &mut GpuBuf,
    inp: &GpuBuf,
    params: &GpuBuf,
    table: &GpuBuf,
    l: &Dense,
    n: usize,
    epi: Epilogue,
) {
    chosen(gpu, GemmOp::DenseForward, [inp, params, out, table], l, n, epi);
}

pub(in crate::gpu) fn dense_backward_input(
    gpu: &mut GpuBackend,
    dinp: &mut GpuBuf,
    dout: &GpuBuf,
    params: &GpuBuf,
    l: &Dense,
    n: usize,
) {
    let table = gpu.no_table();
    chosen(gpu, GemmOp::DenseBackwardInput, [dout, params, dinp, &table], l, n, Epilogue::default());
}

pub(in crate::gpu) fn dense_backward_weight(
    gpu: &mut GpuBackend,
    grads: &mut GpuBuf,
    dout: &GpuBuf,
    inp: &GpuBuf,
    l: &Dense,
    n: usize,
) {
    let table = gpu.no_table();
    chosen(gpu, GemmOp::DenseBackwardWeight, [dout, inp, grads, &table], l, n, Epilogue::default());
    if let Some(b) = l.b_off {
        reduce::bias_backward(gpu, grads, dout, n, l.n_out, 1, b);
    }
}

/// Runs dense op `op` with the variant chosen for its shape (recording it for tuning if
/// asked); under --precision mixed on the cooperative kernel, which has no variants.
fn chosen(gpu: &mut GpuBackend, op: GemmOp, bufs: [&GpuBuf; 4], l: &Dense, n: usize, epi: Epilogue) {
    let choice = if gpu.coop.is_some() {
        Choice { tile: Tile::T64x64, splits: 0 }
    } else {
        gpu.choose(OpKey::dense(op, l, n), Layer::Dense(*l), n, epi, bufs)
    };
    gemm(gpu, op, choice, bufs, l, n, epi);
}

/// Dense op `op` (one of the three Dense*) in `choice`'s tile, or one workgroup per output
/// (Skinny), with `bufs` at bindings 0, 1, 2 (the output), 7.
pub(in crate::gpu) fn gemm(
    gpu: &mut GpuBackend,
    op: GemmOp,
    choice: Choice,
    bufs: [&GpuBuf; 4],
    l: &Dense,
    n: usize,
    epi: Epilogue,
) {
    let mut prm = dense_params(op, l, n, epi);
    if gpu.coop.is_some() {
        // --precision mixed: every dense product on the cooperative-matrix kernel
        // (src/gpu/coop.rs), which takes this parameter block as it is.
        gpu.coop_dispatch(bufs, prm.m, prm.n, prm.batches, &prm);
        return;
    }
    let Some(shape) = choice.tile.shape() else {
        let grid = gpu.tile_grid((prm.m * prm.n * prm.batches) as usize, 1);
        gpu.dispatch("gemm_skinny", &bufs, &prm, grid);
        return;
    };
    let (rows, cols) = choice.tile.dims();
    let tiles_n = prm.n.div_ceil(cols);
    let tiles_m = prm.m.div_ceil(rows);
    prm.tiles_n = tiles_n;
    prm.tiles_m = tiles_m;
    let grid = gpu.tile_grid(tiles_n as usize, (tiles_m * prm.batches) as usize);
    gpu.dispatch_tiled(op.entry(), shape, &bufs, &prm, grid);
}

/// The parameter block of dense op `op` on `l` at batch `n` (the tile counts are the
/// dispatch's).
fn dense_params(op: GemmOp, l: &Dense, n: usize, epi: Epilogue) -> GemmParams {
    let (ni, no) = (l.group_in(), l.group_out());
    match op {
        GemmOp::DenseBackwardInput => {
            // dinp_g (n, ni) = dout_g (n, no) * W_g (no, ni)
            GemmParams {
                m: n as u32,
                n: ni as u32,
                k: no as u32,
                a_rs: l.n_out as u32,
                a_cs: 1,
                a_bs: no as u32,
                b_off: l.w_off as u32,
                b_rs: ni as u32,
                b_cs: 1,
                b_bs: (no * ni) as u32,
                c_rs: l.n_in as u32,
                c_bs: ni as u32,
                batches: l.groups as u32,
                drop_members: 1,
                drop_len: 1,
                ..Default::default()
            }
        }
        GemmOp::DenseBackwardWeight => {
            // dW_g (no, ni) = dout_g^T (no, n) * inp_g (n, ni)
            GemmParams {
                m: no as u32,
                n: ni as u32,
                k: n as u32,
                a_rs: 1,
                a_cs: l.n_out as u32,
                a_bs: no as u32,
                b_rs: l.n_in as u32,
                b_cs: 1,
                b_bs: ni as u32,
                c_off: l.w_off as u32,
                c_rs: ni as u32,
                c_bs: (no * ni) as u32,
                batches: l.groups as u32,
                drop_members: 1,
                drop_len: 1,
                ..Default::default()
            }
        }
        _ => {
            // out_g (n, no) = inp_g (n, ni) * W_g^T: B(k = i, j = o) = W[w_off + g no ni + o * ni + i].
            let d = dropout_fields(epi.dropout.as_ref());
            GemmParams {
                m: n as u32,
                n: no as u32,
                k: ni as u32,
                a_rs: l.n_in as u32,
                a_cs: 1,
                a_bs: ni as u32,
                b_off: l.w_off as u32,
                b_rs: 1,
                b_cs: ni as u32,
                b_bs: (no * ni) as u32,
                c_rs: l.n_out as u32,
                c_bs: no as u32,
                bias_off: l.b_off.unwrap_or(0) as u32,
                bias_bs: no as u32,
                has_bias: l.b_off.is_some() as u32,
                act: act_code(epi.act),
                batches: l.groups as u32,
                has_dropout: d.has,
                drop_members: d.members,
                drop_len: d.len,
                drop_stream: d.stream,
                drop_step: d.step,
                drop_at: d.at,
                ..Default::default()
            }
        }
    }
}
