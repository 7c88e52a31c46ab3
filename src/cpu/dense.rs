//! Fully connected layer on the CPU: three GEMMs. W is (n_out, n_in), as in torch.

use super::activation::apply_epilogue;
use super::gemm::{rows, sgemm, transposed};
use super::real::Real;
use crate::backend::Epilogue;
use crate::model::Dense;

/// Let the GEMM use all threads from about this many multiply-adds.
const PAR_MACS: usize = 1 << 18;

pub fn dense_forward<T: Real>(out: &mut [T], inp: &[T], params: &[T], l: &Dense, n: usize, epi: Epilogue) {
    let (ni, no) = (l.n_in, l.n_out);
    let w = &params[l.w_off..l.w_off + no * ni];
    let y = &mut out[..n * no];
    // out (n, no) = inp (n, ni) * W^T (ni, no)
    sgemm(n, no, ni, y, no, false, rows(&inp[..n * ni], ni), transposed(w, ni), n * no * ni >= PAR_MACS);
    for (s, row) in y.chunks_mut(no).enumerate() {
        if let Some(b) = l.b_off {
            row.iter_mut().zip(&params[b..b + no]).for_each(|(v, &b)| *v += b);
        }
        apply_epilogue(row, s * no, T::zero(), &epi);
    }
}

pub fn dense_backward_input<T: Real>(dinp: &mut [T], dout: &[T], params: &[T], l: &Dense, n: usize) {
    let (ni, no) = (l.n_in, l.n_out);
    let w = &params[l.w_off..l.w_off + no * ni];
    // dinp (n, ni) = dout (n, no) * W (no, ni)
    sgemm(n, ni, no, &mut dinp[..n * ni], ni, false, rows(&dout[..n * no], no), rows(w, ni), n * no * ni >= PAR_MACS);
}

pub fn dense_backward_weight<T: Real>(grads: &mut [T], dout: &[T], inp: &[T], l: &Dense, n: usize) {
    let (ni, no) = (l.n_in, l.n_out);
    let dy = &dout[..n * no];
    // dW (no, ni) = dout^T (no, n) * inp (n, ni)
    let dw = &mut grads[l.w_off..l.w_off + no * ni];
    sgemm(no, ni, n, dw, ni, false, transposed(dy, no), rows(&inp[..n * ni], ni), n * no * ni >= PAR_MACS);
    if let Some(b) = l.b_off {
        let db = &mut grads[b..b + no];
        db.fill(T::zero());
        for row in dy.chunks(no) {
            db.iter_mut().zip(row).for_each(|(g, &v)| *g += v);
        }
    }
}
