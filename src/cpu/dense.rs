//! Fully connected layer on the CPU: three GEMMs per group. W is (n_out, n_in / groups), as in
//! torch; group g's inputs, outputs and weight rows are column (row) block g of each buffer,
//! read and written in place through strided views, so a group computes exactly what an
//! ungrouped layer of its size does.

use super::activation::{Epi, apply_epilogue};
use super::gemm::{MatRef, rows, sgemm, transposed};
use super::real::Real;
use crate::backend::Epilogue;
use crate::model::Dense;

/// Let the GEMM use all threads from about this many multiply-adds.
const PAR_MACS: usize = 1 << 18;

/// Column block `g` (of width `width`) of a row-major matrix with `cols` columns.
fn columns<T>(data: &[T], cols: usize, g: usize, width: usize) -> MatRef<'_, T> {
    MatRef { data: &data[g * width..], rs: cols, cs: 1 }
}

pub fn dense_forward<T: Real>(
    out: &mut [T],
    inp: &[T],
    params: &[T],
    table: &[u32],
    l: &Dense,
    n: usize,
    epi: Epilogue,
) {
    let (ni, no) = (l.group_in(), l.group_out());
    let par = n * no * ni >= PAR_MACS;
    for g in 0..l.groups {
        let lg = l.group(g);
        let w = &params[lg.w_off..lg.w_off + no * ni];
        // out_g (n, no) = inp_g (n, ni) * W_g^T (ni, no)
        let y = &mut out[g * no..n * l.n_out];
        sgemm(n, no, ni, y, l.n_out, false, columns(&inp[..n * l.n_in], l.n_in, g, ni), transposed(w, ni), par);
    }
    let epi = Epi::new(table, &epi);
    for (s, row) in out[..n * l.n_out].chunks_mut(l.n_out).enumerate() {
        if let Some(b) = l.b_off {
            row.iter_mut().zip(&params[b..b + l.n_out]).for_each(|(v, &b)| *v += b);
        }
        apply_epilogue(row, s * l.n_out, T::zero(), &epi);
    }
}

pub fn dense_backward_input<T: Real>(dinp: &mut [T], dout: &[T], params: &[T], l: &Dense, n: usize) {
    let (ni, no) = (l.group_in(), l.group_out());
    for g in 0..l.groups {
        let lg = l.group(g);
        let w = &params[lg.w_off..lg.w_off + no * ni];
        // dinp_g (n, ni) = dout_g (n, no) * W_g (no, ni)
        let dy = columns(&dout[..n * l.n_out], l.n_out, g, no);
        sgemm(n, ni, no, &mut dinp[g * ni..n * l.n_in], l.n_in, false, dy, rows(w, ni), n * no * ni >= PAR_MACS);
    }
}

pub fn dense_backward_weight<T: Real>(grads: &mut [T], dout: &[T], inp: &[T], l: &Dense, n: usize) {
    let (ni, no) = (l.group_in(), l.group_out());
    let dy = &dout[..n * l.n_out];
    for g in 0..l.groups {
        let lg = l.group(g);
        // dW_g (no, ni) = dout_g^T (no, n) * inp_g (n, ni)
        let dw = &mut grads[lg.w_off..lg.w_off + no * ni];
        let dyt = MatRef { data: &dy[g * no..], rs: 1, cs: l.n_out };
        let x = columns(&inp[..n * l.n_in], l.n_in, g, ni);
        sgemm(no, ni, n, dw, ni, false, dyt, x, n * no * ni >= PAR_MACS);
    }
    if let Some(b) = l.b_off {
        let db = &mut grads[b..b + l.n_out];
        db.fill(T::zero());
        for row in dy.chunks(l.n_out) {
            db.iter_mut().zip(row).for_each(|(g, &v)| *g += v);
        }
    }
}
