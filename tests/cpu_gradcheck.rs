//! Every backward of the CPU reference against central finite differences.
//!
//! Each op's output y is reduced to L = sum r_i y_i (r random, summed in f64), so the
//! backward with dout = r must match dL/dx numerically. Tolerances: the ops run in f32, so a
//! central difference with step eps carries a rounding error of about 1e-7 |y| / eps; with
//! eps = 1e-2 and outputs of order 1 that is ~1e-5, well inside atol 1e-3 + rtol 1e-2.
//! Inputs avoid relu's kink and max-pooling's ties, where the derivative is not defined.

use crate::common::*;
use gpu_train::backend::{Dropout, Epilogue, TableBuilder, Xent};
use gpu_train::cpu::{activation, batchnorm, conv2d, dense, dropout, loss, pool};
use gpu_train::model::{Act, AvgPool, BatchNorm, Conv2d, Dense, Pool};

const EPS: f32 = 1e-2;
const ATOL: f32 = 1e-3;
const RTOL: f32 = 1e-2;

fn conv(
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
) -> Conv2d {
    Conv2d::new(c_in, (h, w), c_out, k, stride, pad, 3, Some(3 + c_out * c_in * k.0 * k.1 + 5))
}

fn conv_cases() -> Vec<Conv2d> {
    vec![
        conv(3, 7, 6, 4, (3, 3), 1, (1, 1)),
        conv(2, 9, 8, 3, (3, 2), 2, (0, 1)),
        conv(1, 8, 8, 5, (5, 5), 1, (2, 2)),
        conv(4, 5, 5, 2, (1, 1), 1, (0, 0)),
        conv(3, 6, 7, 2, (3, 3), 3, (2, 1)),
        // Grouped: two groups (stride 2: the im2col path), three groups of odd sizes (an
        // array of three after its first layer), depthwise.
        conv(4, 7, 7, 6, (3, 3), 2, (1, 1)).grouped(2, 2),
        conv(6, 6, 5, 9, (3, 3), 1, (1, 1)).grouped(3, 3),
        conv(5, 6, 6, 5, (3, 3), 1, (1, 1)).grouped(5, 5),
    ]
}

#[test]
fn conv2d_backward_input_matches_finite_differences() {
    for (ci, l) in conv_cases().into_iter().enumerate() {
        let n = 2;
        let params = uniform(ci as u64, l.b_off.unwrap() + l.c_out + 3, -1.0, 1.0);
        let x = uniform(10 + ci as u64, n * l.in_len(), -1.0, 1.0);
        let r = uniform(20 + ci as u64, n * l.out_len(), -1.0, 1.0);
        let f = |x: &[f32]| {
            let mut y = vec![0.0; n * l.out_len()];
            conv2d::conv2d_forward(&mut y, x, &params, &[], &l, n, Epilogue::default());
            dot(&r, &y)
        };
        let mut dx = vec![0.0; x.len()];
        conv2d::conv2d_backward_input(&mut dx, &r, &params, &l, n);
        let idx = sample_indices(x.len(), 60);
        let num = numeric_grad(&x, &idx, EPS, f);
        let ana: Vec<f32> = idx.iter().map(|&i| dx[i]).collect();
        assert_close(&format!("conv case {ci} dx"), &ana, &num, ATOL, RTOL);
    }
}

#[test]
fn conv2d_backward_weight_matches_finite_differences() {
    for (ci, l) in conv_cases().into_iter().enumerate() {
        let n = 3;
        let params = uniform(ci as u64, l.b_off.unwrap() + l.c_out + 3, -1.0, 1.0);
        let x = uniform(10 + ci as u64, n * l.in_len(), -1.0, 1.0);
        let r = uniform(20 + ci as u64, n * l.out_len(), -1.0, 1.0);
        let f = |p: &[f32]| {
            let mut y = vec![0.0; n * l.out_len()];
            conv2d::conv2d_forward(&mut y, &x, p, &[], &l, n, Epilogue::default());
            dot(&r, &y)
        };
        let mut g = vec![f32::NAN; params.len()];
        conv2d::conv2d_backward_weight(&mut g, &r, &x, &l, n);
        let b = l.b_off.unwrap();
        let mut idx = sample_indices(l.weight_len(), 40).into_iter().map(|i| i + l.w_off).collect::<Vec<_>>();
        idx.extend(b..b + l.c_out);
        let num = numeric_grad(&params, &idx, EPS, f);
        let ana: Vec<f32> = idx.iter().map(|&i| g[i]).collect();
        assert_close(&format!("conv case {ci} dW/db"), &ana, &num, ATOL, RTOL);
        // Only the layer's own tensors are written.
        assert!(g[..l.w_off].iter().all(|v| v.is_nan()) && g[b + l.c_out..].iter().all(|v| v.is_nan()));
        assert!(g[l.w_off + l.weight_len()..b].iter().all(|v| v.is_nan()));
    }
}

#[test]
fn conv2d_fused_activation_equals_separate_ops() {
    let l = conv(3, 7, 6, 4, (3, 3), 1, (1, 1));
    let n = 2;
    let params = uniform(1, l.b_off.unwrap() + l.c_out, -1.0, 1.0);
    let x = uniform(2, n * l.in_len(), -1.0, 1.0);
    for act in [Act::Relu, Act::Sigmoid, Act::Tanh] {
        let mut fused = vec![0.0; n * l.out_len()];
        conv2d::conv2d_forward(&mut fused, &x, &params, &[], &l, n, Epilogue::act(Some(act)));
        let mut pre = vec![0.0; n * l.out_len()];
        conv2d::conv2d_forward(&mut pre, &x, &params, &[], &l, n, Epilogue::default());
        let mut post = vec![0.0; pre.len()];
        activation::activation_forward(&mut post, &pre, pre.len(), act);
        assert_close(&format!("fused {act:?}"), &fused, &post, 1e-6, 1e-6);
    }
}

/// relu + dropout fused into the conv's epilogue equals the three ops one after another, and
/// the fused backward (from the dropped-out output, with the dropout scale) equals dropout's
/// backward followed by relu's.
#[test]
fn fused_relu_dropout_equals_separate_ops() {
    let l = conv(3, 7, 6, 4, (3, 3), 1, (1, 1));
    let n = 3;
    let params = uniform(1, l.b_off.unwrap() + l.c_out, -1.0, 1.0);
    let x = uniform(2, n * l.in_len(), -1.0, 1.0);
    let len = n * l.out_len();
    let mut table = TableBuilder::new(&[4242]);
    let at = table.dropout(&[0.3]);
    let t = &table.words;
    let d = Dropout { members: 1, len: l.out_len(), stream: 0x103, step: 8, at };
    let mut fused = vec![0.0; len];
    conv2d::conv2d_forward(&mut fused, &x, &params, t, &l, n, Epilogue { act: Some(Act::Relu), dropout: Some(d) });
    let mut y = vec![0.0; len];
    conv2d::conv2d_forward(&mut y, &x, &params, t, &l, n, Epilogue::act(Some(Act::Relu)));
    let mut z = vec![0.0; len];
    dropout::dropout_forward(&mut z, &y, t, len, &d);
    assert_close("fused forward", &fused, &z, 1e-6, 1e-6);
    let dz = uniform(3, len, -1.0, 1.0);
    let mut d_fused = vec![0.0; len];
    activation::activation_backward(&mut d_fused, &dz, &fused, t, len, Act::Relu, Some(&d));
    let (mut dy, mut dpre) = (vec![0.0; len], vec![0.0; len]);
    dropout::dropout_backward(&mut dy, &dz, t, len, &d);
    activation::activation_backward(&mut dpre, &dy, &y, t, len, Act::Relu, None);
    assert_close("fused backward", &d_fused, &dpre, 1e-6, 1e-6);
    // Dense too.
    let (dl, plen) = dense_case(1);
    let d = Dropout { len: dl.n_out, ..d };
    let dp = uniform(5, plen, -1.0, 1.0);
    let dx = uniform(6, 4 * dl.n_in, -1.0, 1.0);
    let mut f = vec![0.0; 4 * dl.n_out];
    dense::dense_forward(&mut f, &dx, &dp, t, &dl, 4, Epilogue { act: Some(Act::Relu), dropout: Some(d) });
    let mut y = vec![0.0; 4 * dl.n_out];
    dense::dense_forward(&mut y, &dx, &dp, t, &dl, 4, Epilogue::act(Some(Act::Relu)));
    let mut z = vec![0.0; y.len()];
    dropout::dropout_forward(&mut z, &y, t, y.len(), &d);
    assert_close("fused dense forward", &f, &z, 1e-6, 1e-6);
}

/// A dense layer of 13 -> 7 per group (three groups: an array of three after its first
/// layer), and the length of a parameter buffer holding it with room around it.
fn dense_case(groups: usize) -> (Dense, usize) {
    let (ni, no) = (13 * groups, 7 * groups);
    let w = no * 13;
    (Dense { n_in: ni, n_out: no, groups, w_off: 5, b_off: Some(5 + w + 2) }, 5 + w + 2 + no + 1)
}

#[test]
fn dense_backward_matches_finite_differences() {
    for (groups, n) in [(1, 1), (1, 4), (3, 1), (3, 4)] {
        let (l, plen) = dense_case(groups);
        let params = uniform(3, plen, -1.0, 1.0);
        let x = uniform(4, n * l.n_in, -1.0, 1.0);
        let r = uniform(5, n * l.n_out, -1.0, 1.0);
        let fwd = |x: &[f32], p: &[f32]| {
            let mut y = vec![0.0; n * l.n_out];
            dense::dense_forward(&mut y, x, p, &[], &l, n, Epilogue::default());
            dot(&r, &y)
        };
        let mut dx = vec![0.0; x.len()];
        dense::dense_backward_input(&mut dx, &r, &params, &l, n);
        let idx: Vec<usize> = (0..x.len()).collect();
        let tag = format!("dense g{groups} n={n}");
        assert_close(&format!("{tag} dx"), &dx, &numeric_grad(&x, &idx, EPS, |x| fwd(x, &params)), ATOL, RTOL);
        let mut g = vec![0.0; plen];
        dense::dense_backward_weight(&mut g, &r, &x, &l, n);
        let w_end = l.w_off + l.weight_len();
        let idx: Vec<usize> =
            (l.w_off..l.b_off.unwrap() + l.n_out).filter(|&i| i < w_end || i >= l.b_off.unwrap()).collect();
        let ana: Vec<f32> = idx.iter().map(|&i| g[i]).collect();
        assert_close(&format!("{tag} dW/db"), &ana, &numeric_grad(&params, &idx, EPS, |p| fwd(&x, p)), ATOL, RTOL);
    }
}

#[test]
fn activation_backward_matches_finite_differences() {
    let x = away_from_zero(6, 50);
    let r = uniform(7, 50, -1.0, 1.0);
    for act in [Act::Relu, Act::Sigmoid, Act::Tanh, Act::LeakyRelu(0.2), Act::Gelu, Act::Silu] {
        let f = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            activation::activation_forward(&mut y, x, x.len(), act);
            dot(&r, &y)
        };
        let mut y = vec![0.0; x.len()];
        activation::activation_forward(&mut y, &x, x.len(), act);
        let mut dx = vec![0.0; x.len()];
        let saved = if act.grad_from_output() { &y } else { &x };
        activation::activation_backward(&mut dx, &r, saved, &[], x.len(), act, None);
        let idx: Vec<usize> = (0..x.len()).collect();
        assert_close(&format!("{act:?}"), &dx, &numeric_grad(&x, &idx, 1e-3, f), ATOL, RTOL);
    }
}

#[test]
fn maxpool_backward_matches_finite_differences() {
    let cases = [
        Pool { c: 3, h_in: 6, w_in: 8, h_out: 3, w_out: 4, size: 2, stride: 2 },
        Pool { c: 2, h_in: 7, w_in: 5, h_out: 3, w_out: 2, size: 2, stride: 2 },
        Pool { c: 2, h_in: 7, w_in: 7, h_out: 3, w_out: 3, size: 3, stride: 2 },
    ];
    for (ci, l) in cases.into_iter().enumerate() {
        let n = 2;
        let x = distinct(ci as u64, n * l.in_len(), 0.05);
        let r = uniform(8, n * l.out_len(), -1.0, 1.0);
        let f = |x: &[f32]| {
            let mut y = vec![0.0; n * l.out_len()];
            let mut am = vec![0; n * l.out_len()];
            pool::maxpool_forward(&mut y, &mut am, x, &l, n);
            dot(&r, &y)
        };
        let mut y = vec![0.0; n * l.out_len()];
        let mut am = vec![0; n * l.out_len()];
        pool::maxpool_forward(&mut y, &mut am, &x, &l, n);
        let mut dx = vec![0.0; x.len()];
        pool::maxpool_backward(&mut dx, &r, &am, &l, n);
        let idx: Vec<usize> = (0..x.len()).collect();
        assert_close(&format!("maxpool case {ci}"), &dx, &numeric_grad(&x, &idx, 1e-3, f), ATOL, RTOL);
    }
}

#[test]
fn avgpool_backward_matches_finite_differences() {
    let avg = |c, (h_in, w_in): (usize, usize), (kh, kw): (usize, usize), stride| AvgPool {
        c,
        h_in,
        w_in,
        h_out: (h_in - kh) / stride + 1,
        w_out: (w_in - kw) / stride + 1,
        kh,
        kw,
        stride,
    };
    for (ci, l) in
        [avg(3, (7, 5), (2, 2), 2), avg(2, (7, 7), (3, 3), 2), avg(4, (5, 3), (5, 3), 1)].into_iter().enumerate()
    {
        let n = 2;
        let x = uniform(30 + ci as u64, n * l.in_len(), -1.0, 1.0);
        let r = uniform(40 + ci as u64, n * l.out_len(), -1.0, 1.0);
        let f = |x: &[f32]| {
            let mut y = vec![0.0; n * l.out_len()];
            pool::avgpool_forward(&mut y, x, &l, n);
            dot(&r, &y)
        };
        let mut dx = vec![0.0; x.len()];
        pool::avgpool_backward(&mut dx, &r, &l, n);
        let idx: Vec<usize> = (0..x.len()).collect();
        assert_close(&format!("avgpool case {ci}"), &dx, &numeric_grad(&x, &idx, 1e-3, f), ATOL, RTOL);
    }
}

#[test]
fn dropout_backward_matches_finite_differences_and_drops_about_p() {
    let x = uniform(9, 4000, -1.0, 1.0);
    let r = uniform(10, 4000, -1.0, 1.0);
    // One model, and two members of 500 elements per example with rates of their own.
    for (seeds, ps, len) in [(&[12345u64][..], &[0.3f32][..], 4000), (&[1, 2][..], &[0.3, 0.6][..], 500)] {
        let mut table = TableBuilder::new(seeds);
        let at = table.dropout(ps);
        let t = &table.words;
        let d = Dropout { members: seeds.len(), len, stream: 0x100, step: 3, at };
        let mut y = vec![0.0; x.len()];
        dropout::dropout_forward(&mut y, &x, t, x.len(), &d);
        let mean_p = ps.iter().sum::<f32>() / ps.len() as f32;
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f32 / y.len() as f32;
        assert!((dropped - mean_p).abs() < 0.03, "dropped {dropped}");
        let f = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            dropout::dropout_forward(&mut y, x, t, x.len(), &d);
            dot(&r, &y)
        };
        let mut dx = vec![0.0; x.len()];
        dropout::dropout_backward(&mut dx, &r, t, x.len(), &d);
        let idx = sample_indices(x.len(), 200);
        let ana: Vec<f32> = idx.iter().map(|&i| dx[i]).collect();
        assert_close("dropout", &ana, &numeric_grad(&x, &idx, EPS, f), ATOL, RTOL);
    }
}

/// Batch norm's backward, on its own and with an activation fused after it (the fused
/// backward takes the activation's output gradient: gelu's derivative from the normalised
/// input it recomputes, tanh's from the output).
#[test]
fn batchnorm_backward_matches_finite_differences() {
    let epilogues = [None, Some(Act::Gelu), Some(Act::Tanh)].map(Epilogue::act);
    for ((c, hw, n), epi) in [(3, 10, 4), (5, 1, 6)].into_iter().flat_map(|s| epilogues.map(|e| (s, e))) {
        let l = BatchNorm { c, hw, eps: 1e-5, momentum: 0.1, gamma_off: 0, beta_off: 8, mean_off: 0, var_off: 8 };
        let mut params = uniform(11, 16, 0.5, 1.5);
        params[8..].copy_from_slice(&uniform(12, 8, -0.5, 0.5));
        let x = uniform(13, n * c * hw, -2.0, 2.0);
        let r = uniform(14, n * c * hw, -1.0, 1.0);
        let fwd = |x: &[f32], p: &[f32]| {
            let mut y = vec![0.0; x.len()];
            let (mut saved, mut state) = (vec![0.0; 2 * c], vec![0.0; 16]);
            batchnorm::batchnorm_forward(&mut y, &mut saved, &mut state, x, p, &[], &l, n, true, epi);
            dot(&r, &y)
        };
        let mut y = vec![0.0; x.len()];
        let (mut saved, mut state) = (vec![0.0; 2 * c], vec![0.0; 16]);
        batchnorm::batchnorm_forward(&mut y, &mut saved, &mut state, &x, &params, &[], &l, n, true, epi);
        let mut dx = vec![0.0; x.len()];
        let mut g = vec![0.0; 16];
        batchnorm::batchnorm_backward(&mut dx, &mut g, &r, &x, &y, &saved, &params, &[], &l, n, epi);
        let tag = format!("batchnorm {:?}", epi.act);
        let idx: Vec<usize> = (0..x.len()).collect();
        assert_close(&format!("{tag} dx"), &dx, &numeric_grad(&x, &idx, EPS, |x| fwd(x, &params)), ATOL, RTOL);
        let pidx: Vec<usize> = (0..c).chain(8..8 + c).collect();
        let ana: Vec<f32> = pidx.iter().map(|&i| g[i]).collect();
        let num = numeric_grad(&params, &pidx, EPS, |p| fwd(&x, p));
        assert_close(&format!("{tag} dgamma/dbeta"), &ana, &num, ATOL, RTOL);
    }
}

/// A fused loss: (dlogits, stats, logits).
type Fused<'a> = dyn Fn(&mut [f32], &mut [f32], &[f32]) + 'a;

#[test]
fn softmax_xent_and_mse_gradients_match_finite_differences() {
    // One model, and three members (each row of the logits its own loss; the sum of the
    // members' losses is what the gradient is of), without label smoothing and with each
    // member's own (one of them none).
    for (members, smoothing) in
        [(1, &[0.0f32][..]), (3, &[0.0, 0.0, 0.0][..]), (1, &[0.2][..]), (3, &[0.1, 0.0, 0.3][..])]
    {
        let (n, classes) = (5, 7);
        let z = uniform(15, n * members * classes, -3.0, 3.0);
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 3) % classes as u32).collect();
        let scale = 1.0 / n as f32;
        let mut t = TableBuilder::new(&vec![1; members]);
        let x = Xent { members, classes, scale, smoothing_at: t.values(smoothing) };
        let xent = |d: &mut [f32], s: &mut [f32], z: &[f32]| {
            loss::softmax_xent_forward_backward(d, s, 0, z, &labels, &t.words, n, &x)
        };
        let mse = |d: &mut [f32], s: &mut [f32], z: &[f32]| {
            loss::mse_forward_backward(d, s, 0, z, &labels, n, members, classes, scale)
        };
        let fused: [(&str, &Fused); 2] = [("softmax_xent", &xent), ("mse", &mse)];
        for (name, op) in fused {
            let f = |z: &[f32]| {
                let (mut d, mut s) = (vec![0.0; z.len()], vec![0.0; 2 * members]);
                op(&mut d, &mut s, z);
                s.iter().step_by(2).map(|&v| v as f64).sum::<f64>() * scale as f64
            };
            let (mut d, mut s) = (vec![0.0; z.len()], vec![0.0; 2 * members]);
            op(&mut d, &mut s, &z);
            let idx: Vec<usize> = (0..z.len()).collect();
            let what = format!("{name} x{members} smoothing {smoothing:?}");
            assert_close(&what, &d, &numeric_grad(&z, &idx, 1e-2, f), 1e-3, 1e-2);
        }
    }
}
