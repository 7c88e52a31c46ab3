//! The definition of every op: the plain reference that judges both backends.
//!
//! One function per op and direction, written the obvious way in f64 on `ndarray` arrays: a
//! loop nest or an array expression straight from the op's definition. No fusion, no
//! intrinsics, no threads, no blocking; slow, and meant to be read. The chain of trust is
//! finite differences -> these functions (`tests/reference.rs` checks every backward here
//! numerically) -> the fast CPU backend and every GPU kernel (`gpu-train selftest`,
//! `tests/reference.rs`, `tests/gpu_parity.rs`), as llm.c keeps its naive CPU reference beside
//! every optimised kernel.
//!
//! `Reference` (in `backend.rs`) runs these behind the `Backend` trait, so the judge calls
//! all three implementations through one interface, and whole models can run on it too.

mod backend;

pub use backend::Reference;

use ndarray::{Array1, Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView3, ArrayView4, Axis};

use crate::backend::{AdamStep, Dropout, Segments};
use crate::model::Act;
use crate::rng::draw;

/// The input position that output position `o` reads through kernel tap `k`, if it lies
/// inside the unpadded input of length `size` (zero padding everywhere else).
fn tap(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// Channel groups of a convolution: (groups, in_groups). Output channel o of c_out is in
/// group g = o / (c_out / groups) and reads the cg = w.dim().1 input channels from
/// (g % in_groups) cg on; (1, 1) is an ordinary convolution.
pub type Groups = (usize, usize);

/// The first input channel output channel `o` reads.
fn in_base(o: usize, c_out: usize, cg: usize, (groups, in_groups): Groups) -> usize {
    ((o / (c_out / groups)) % in_groups) * cg
}

/// y (n, c_out, h_out, w_out) = b[o] + sum over (ci, ky, kx) of x (n, c_in, h, w) at the tap
/// (channel in_base(o) + ci) times w (c_out, cg, kh, kw); h_out = (h + 2 pad_h - kh) /
/// stride + 1, likewise w_out.
pub fn conv2d_forward(
    x: ArrayView4<f64>,
    w: ArrayView4<f64>,
    b: Option<ArrayView1<f64>>,
    stride: usize,
    (pad_h, pad_w): (usize, usize),
    groups: Groups,
) -> Array4<f64> {
    let (n, _, h, wd) = x.dim();
    let (c_out, cg, kh, kw) = w.dim();
    let (h_out, w_out) = ((h + 2 * pad_h - kh) / stride + 1, (wd + 2 * pad_w - kw) / stride + 1);
    let mut y = Array4::zeros((n, c_out, h_out, w_out));
    for ((s, o, oy, ox), v) in y.indexed_iter_mut() {
        let mut sum = b.map_or(0.0, |b| b[o]);
        let base = in_base(o, c_out, cg, groups);
        for ci in 0..cg {
            for ky in 0..kh {
                for kx in 0..kw {
                    if let (Some(iy), Some(ix)) = (tap(oy, ky, stride, pad_h, h), tap(ox, kx, stride, pad_w, wd)) {
                        sum += x[[s, base + ci, iy, ix]] * w[[o, ci, ky, kx]];
                    }
                }
            }
        }
        *v = sum;
    }
    y
}

/// dx (n, c_in, h, w): every input position collects dy (n, c_out, h_out, w_out) times the
/// weight of each tap that read it (the forward's loop nest, transposed; an input channel
/// read by several groups collects from all of them).
pub fn conv2d_backward_input(
    dy: ArrayView4<f64>,
    w: ArrayView4<f64>,
    (c_in, h, wd): (usize, usize, usize),
    stride: usize,
    (pad_h, pad_w): (usize, usize),
    groups: Groups,
) -> Array4<f64> {
    let (n, c_out, h_out, w_out) = dy.dim();
    let (_, cg, kh, kw) = w.dim();
    let mut dx = Array4::zeros((n, c_in, h, wd));
    for s in 0..n {
        for o in 0..c_out {
            let base = in_base(o, c_out, cg, groups);
            for oy in 0..h_out {
                for ox in 0..w_out {
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (Some(iy), Some(ix)) =
                                    (tap(oy, ky, stride, pad_h, h), tap(ox, kx, stride, pad_w, wd))
                                else {
                                    continue;
                                };
                                dx[[s, base + ci, iy, ix]] += dy[[s, o, oy, ox]] * w[[o, ci, ky, kx]];
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

/// dw (c_out, cg, kh, kw) = sum over (n, oy, ox) of dy times the input at the tap;
/// db (c_out) = sum of dy over (n, oy, ox).
pub fn conv2d_backward_weight(
    dy: ArrayView4<f64>,
    x: ArrayView4<f64>,
    (cg, kh, kw): (usize, usize, usize),
    stride: usize,
    (pad_h, pad_w): (usize, usize),
    groups: Groups,
) -> (Array4<f64>, Array1<f64>) {
    let (n, c_out, h_out, w_out) = dy.dim();
    let (_, _, h, wd) = x.dim();
    let mut dw = Array4::zeros((c_out, cg, kh, kw));
    for ((o, ci, ky, kx), v) in dw.indexed_iter_mut() {
        let base = in_base(o, c_out, cg, groups);
        for s in 0..n {
            for oy in 0..h_out {
                for ox in 0..w_out {
                    if let (Some(iy), Some(ix)) = (tap(oy, ky, stride, pad_h, h), tap(ox, kx, stride, pad_w, wd)) {
                        *v += dy[[s, o, oy, ox]] * x[[s, base + ci, iy, ix]];
                    }
                }
            }
        }
    }
    let db = dy.sum_axis(Axis(3)).sum_axis(Axis(2)).sum_axis(Axis(0));
    (dw, db)
}

/// Column block g of `groups` equal blocks of a matrix.
fn block(m: ArrayView2<f64>, g: usize, groups: usize) -> ArrayView2<f64> {
    let w = m.ncols() / groups;
    m.slice_move(ndarray::s![.., g * w..(g + 1) * w])
}

/// Row block g of `groups` equal blocks.
fn row_block(m: ArrayView2<f64>, g: usize, groups: usize) -> ArrayView2<f64> {
    let h = m.nrows() / groups;
    m.slice_move(ndarray::s![g * h..(g + 1) * h, ..])
}

/// y (n, n_out) = x (n, n_in) w^T + b (n_out), per group g of `groups`: output block g =
/// input block g times row block g of w (n_out, n_in / groups), transposed.
pub fn dense_forward(x: ArrayView2<f64>, w: ArrayView2<f64>, b: Option<ArrayView1<f64>>, groups: usize) -> Array2<f64> {
    let blocks: Vec<Array2<f64>> = (0..groups).map(|g| block(x, g, groups).dot(&row_block(w, g, groups).t())).collect();
    let views: Vec<ArrayView2<f64>> = blocks.iter().map(|b| b.view()).collect();
    let y = ndarray::concatenate(Axis(1), &views).expect("blocks of one height");
    match b {
        Some(b) => y + b,
        None => y,
    }
}

/// dx (n, n_in) = dy (n, n_out) w, per group.
pub fn dense_backward_input(dy: ArrayView2<f64>, w: ArrayView2<f64>, groups: usize) -> Array2<f64> {
    let blocks: Vec<Array2<f64>> = (0..groups).map(|g| block(dy, g, groups).dot(&row_block(w, g, groups))).collect();
    let views: Vec<ArrayView2<f64>> = blocks.iter().map(|b| b.view()).collect();
    ndarray::concatenate(Axis(1), &views).expect("blocks of one height")
}

/// dw (n_out, n_in / groups) = dy^T x per group (row block g from dy's and x's column block
/// g); db (n_out) = column sums of dy.
pub fn dense_backward_weight(dy: ArrayView2<f64>, x: ArrayView2<f64>, groups: usize) -> (Array2<f64>, Array1<f64>) {
    let blocks: Vec<Array2<f64>> = (0..groups).map(|g| block(dy, g, groups).t().dot(&block(x, g, groups))).collect();
    let views: Vec<ArrayView2<f64>> = blocks.iter().map(|b| b.view()).collect();
    (ndarray::concatenate(Axis(0), &views).expect("blocks of one width"), dy.sum_axis(Axis(0)))
}

/// Phi(x), the standard normal CDF.
fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// act(x), one element: relu max(x, 0), sigmoid 1 / (1 + e^-x), tanh, leaky relu x or
/// slope x by the sign of x, gelu x Phi(x), silu x sigmoid(x).
pub fn act(x: f64, a: Act) -> f64 {
    match a {
        Act::Relu => x.max(0.0),
        Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Act::Tanh => x.tanh(),
        Act::LeakyRelu(s) => {
            if x > 0.0 {
                x
            } else {
                s as f64 * x
            }
        }
        Act::Gelu => x * normal_cdf(x),
        Act::Silu => x / (1.0 + (-x).exp()),
    }
}

/// act'(x) written in terms of the output y = act(x), which is what the backward keeps where
/// it can: relu [y > 0], sigmoid y (1 - y), tanh 1 - y^2, leaky relu 1 or the slope by the
/// sign of y.
pub fn act_grad(y: f64, a: Act) -> f64 {
    match a {
        Act::Relu => f64::from(u8::from(y > 0.0)),
        Act::Sigmoid => y * (1.0 - y),
        Act::Tanh => 1.0 - y * y,
        Act::LeakyRelu(s) => {
            if y > 0.0 {
                1.0
            } else {
                s as f64
            }
        }
        Act::Gelu | Act::Silu => act_grad_input(y, a),
    }
}

/// act'(x) from the input x, for gelu, Phi(x) + x phi(x) (phi the normal density), and silu,
/// s (1 + x (1 - s)) with s = sigmoid(x).
pub fn act_grad_input(x: f64, a: Act) -> f64 {
    match a {
        Act::Gelu => normal_cdf(x) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt(),
        Act::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 + x * (1.0 - s))
        }
        _ => act_grad(act(x, a), a),
    }
}

/// y = act(x), element-wise (any shape, flattened).
pub fn activation_forward(x: ArrayView1<f64>, a: Act) -> Array1<f64> {
    x.mapv(|v| act(v, a))
}

/// dx = dy * act'(.) * scale, from `saved`: the forward's output y (or, for gelu and silu,
/// its input x); scale per element.
pub fn activation_backward(dy: ArrayView1<f64>, saved: ArrayView1<f64>, a: Act, scale: ArrayView1<f64>) -> Array1<f64> {
    let grad = |v: f64| if a.grad_from_output() { act_grad(v, a) } else { act_grad_input(v, a) };
    &dy * &(saved.mapv(grad) * scale)
}

/// y = a + b (a residual block's body and shortcut; the two gradients of one value).
pub fn residual_add(a: ArrayView1<f64>, b: ArrayView1<f64>) -> Array1<f64> {
    &a + &b
}

/// y (n, c, h_out, w_out) = the mean of each kh x kw window of x (n, c, h, w) at stride steps
/// (no padding, floor mode).
pub fn avgpool_forward(x: ArrayView4<f64>, (kh, kw): (usize, usize), stride: usize) -> Array4<f64> {
    let (n, c, h, w) = x.dim();
    let mut y = Array4::zeros((n, c, (h - kh) / stride + 1, (w - kw) / stride + 1));
    for ((s, ch, oy, ox), v) in y.indexed_iter_mut() {
        let window = x.slice(ndarray::s![s, ch, oy * stride..oy * stride + kh, ox * stride..ox * stride + kw]);
        *v = window.sum() / (kh * kw) as f64;
    }
    y
}

/// dx (n, c, h, w): each window's gradient dy (n, c, h_out, w_out) spread evenly over it.
pub fn avgpool_backward(
    dy: ArrayView4<f64>,
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
) -> Array4<f64> {
    let (n, c, _, _) = dy.dim();
    let mut dx = Array4::zeros((n, c, h, w));
    for ((s, ch, oy, ox), &g) in dy.indexed_iter() {
        let mut window = dx.slice_mut(ndarray::s![s, ch, oy * stride..oy * stride + kh, ox * stride..ox * stride + kw]);
        window += g / (kh * kw) as f64;
    }
    dx
}

/// The inverted-dropout multiplier of element i of a batch buffer of `d.members` models:
/// with (k, j) = `d.locate(i)` (member, index in its own buffer), kept (1 / (1 - p_k)) when
/// the j-th draw under member k's key is at least p_k, else dropped (0).
pub fn dropout_mask(len: usize, table: &[u32], d: &Dropout) -> Array1<f64> {
    Array1::from_shape_fn(len, |i| {
        let (k, j) = d.locate(i);
        let (key, p, _) = d.member(table, k);
        if draw(key, j as u32) >= p { 1.0 / (1.0 - p as f64) } else { 0.0 }
    })
}

/// The scale 1 / (1 - p_k) of every element's member (what a relu + dropout's backward
/// multiplies by where the element was kept).
pub fn dropout_scale(len: usize, table: &[u32], d: &Dropout) -> Array1<f64> {
    Array1::from_shape_fn(len, |i| 1.0 / (1.0 - d.member(table, d.locate(i).0).1 as f64))
}

/// y = x * mask (and, the mask being a constant, dx = dy * mask).
pub fn dropout_forward(x: ArrayView1<f64>, table: &[u32], d: &Dropout) -> Array1<f64> {
    &x * &dropout_mask(x.len(), table, d)
}

/// y (n, c, h_out, w_out) = maximum of each size x size window of x (n, c, h, w) at stride
/// steps (no padding, floor mode); argmax (same shape) = the first maximum's position in its
/// plane, y * w + x, windows scanned row by row.
pub fn maxpool_forward(x: ArrayView4<f64>, size: usize, stride: usize) -> (Array4<f64>, Array4<u32>) {
    let (n, c, h, w) = x.dim();
    let shape = (n, c, (h - size) / stride + 1, (w - size) / stride + 1);
    let mut y = Array4::zeros(shape);
    let mut arg = Array4::zeros(shape);
    for ((s, ch, oy, ox), v) in y.indexed_iter_mut() {
        let (mut best, mut at) = (f64::NEG_INFINITY, 0);
        for ky in 0..size {
            for kx in 0..size {
                let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                if x[[s, ch, iy, ix]] > best || (ky, kx) == (0, 0) {
                    (best, at) = (x[[s, ch, iy, ix]], iy * w + ix);
                }
            }
        }
        *v = best;
        arg[[s, ch, oy, ox]] = at as u32;
    }
    (y, arg)
}

/// dx (n, c, h, w): each window's gradient dy (n, c, h_out, w_out) goes to its maximum.
pub fn maxpool_backward(dy: ArrayView4<f64>, argmax: ArrayView4<u32>, (h, w): (usize, usize)) -> Array4<f64> {
    let (n, c, _, _) = dy.dim();
    let mut dx = Array4::zeros((n, c, h, w));
    for ((s, ch, oy, ox), &g) in dy.indexed_iter() {
        let at = argmax[[s, ch, oy, ox]] as usize;
        dx[[s, ch, at / w, at % w]] += g;
    }
    dx
}

/// Per-channel mean and biased variance of x (n, c, hw) over n and hw.
pub fn channel_moments(x: ArrayView3<f64>) -> (Array1<f64>, Array1<f64>) {
    let m = (x.len_of(Axis(0)) * x.len_of(Axis(2))) as f64;
    let mean = x.sum_axis(Axis(2)).sum_axis(Axis(0)) / m;
    let centred = &x - &mean.view().insert_axis(Axis(1));
    let var = centred.mapv(|v| v * v).sum_axis(Axis(2)).sum_axis(Axis(0)) / m;
    (mean, var)
}

/// y (n, c, hw) = gamma (x - mean) / sqrt(var + eps) + beta, per channel, with the given
/// statistics (the batch's in training, the running ones in evaluation).
pub fn batchnorm_forward(
    x: ArrayView3<f64>,
    gamma: ArrayView1<f64>,
    beta: ArrayView1<f64>,
    mean: ArrayView1<f64>,
    var: ArrayView1<f64>,
    eps: f64,
) -> Array3<f64> {
    let mut y = x.to_owned();
    for ((_, c, _), v) in y.indexed_iter_mut() {
        *v = gamma[c] * (*v - mean[c]) / (var[c] + eps).sqrt() + beta[c];
    }
    y
}

/// The running statistics after one training batch: an exponential average with weight
/// `momentum` of the batch mean and the unbiased batch variance (var m / (m - 1), m = n hw).
pub fn batchnorm_running(
    running: (ArrayView1<f64>, ArrayView1<f64>),
    batch: (ArrayView1<f64>, ArrayView1<f64>),
    m: usize,
    momentum: f64,
) -> (Array1<f64>, Array1<f64>) {
    let unbiased = if m > 1 { &batch.1 * (m as f64 / (m - 1) as f64) } else { batch.1.to_owned() };
    let mean = &running.0 * (1.0 - momentum) + &batch.0 * momentum;
    let var = &running.1 * (1.0 - momentum) + unbiased * momentum;
    (mean, var)
}

/// Training-mode batch norm backward, with xhat = (x - mean) / sqrt(var + eps) and m = n hw:
/// dbeta = sum dy, dgamma = sum dy xhat, dx = gamma / (m sqrt(var + eps)) (m dy - dbeta -
/// xhat dgamma), per channel; x and dy (n, c, hw).
pub fn batchnorm_backward(
    dy: ArrayView3<f64>,
    x: ArrayView3<f64>,
    gamma: ArrayView1<f64>,
    eps: f64,
) -> (Array3<f64>, Array1<f64>, Array1<f64>) {
    let (mean, var) = channel_moments(x);
    let m = (x.len_of(Axis(0)) * x.len_of(Axis(2))) as f64;
    let mut xhat = x.to_owned();
    for ((_, c, _), v) in xhat.indexed_iter_mut() {
        *v = (*v - mean[c]) / (var[c] + eps).sqrt();
    }
    let dbeta = dy.sum_axis(Axis(2)).sum_axis(Axis(0));
    let dgamma = (&dy * &xhat).sum_axis(Axis(2)).sum_axis(Axis(0));
    let mut dx = dy.to_owned();
    for ((s, c, i), v) in dx.indexed_iter_mut() {
        let k = gamma[c] / (m * (var[c] + eps).sqrt());
        *v = k * (m * dy[[s, c, i]] - dbeta[c] - xhat[[s, c, i]] * dgamma[c]);
    }
    (dx, dgamma, dbeta)
}

/// The index of a row's first maximum (the predicted class).
pub fn argmax(row: ArrayView1<f64>) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

/// Per example of z (n, classes): softmax probabilities (n, classes), the cross-entropy
/// -log p[label] (n) and whether the first maximum is the label.
pub fn softmax_xent(z: ArrayView2<f64>, labels: &[u32]) -> (Array2<f64>, Array1<f64>, Vec<bool>) {
    let mut p = z.to_owned();
    let mut loss = Array1::zeros(z.nrows());
    let mut correct = Vec::new();
    for (s, mut row) in p.rows_mut().into_iter().enumerate() {
        let max = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let log_sum = row.mapv(|v| (v - max).exp()).sum().ln() + max;
        let y = labels[s] as usize;
        loss[s] = log_sum - row[y];
        correct.push(argmax(row.view()) == y);
        row.mapv_inplace(|v| (v - log_sum).exp());
    }
    (p, loss, correct)
}

/// The one-hot targets (n, classes) of `labels`.
pub fn onehot(labels: &[u32], classes: usize) -> Array2<f64> {
    Array2::from_shape_fn((labels.len(), classes), |(s, j)| f64::from(u8::from(labels[s] as usize == j)))
}

/// d(scale * sum of the cross-entropies) / dz = (softmax - onehot) * scale, (n, classes).
pub fn softmax_xent_backward(p: ArrayView2<f64>, labels: &[u32], scale: f64) -> Array2<f64> {
    (&p - &onehot(labels, p.ncols())) * scale
}

/// The label-smoothed cross-entropy of z (n, classes) with smoothing s per row: (1 - s)
/// (-log p[label]) + s mean_j(-log p[j]) (n), torch's `CrossEntropyLoss(label_smoothing)`.
pub fn smoothed_xent(z: ArrayView2<f64>, labels: &[u32], s: ArrayView1<f64>) -> Array1<f64> {
    let (p, nll, _) = softmax_xent(z, labels);
    let mean_neg_log = p.mapv(|v| -v.ln()).mean_axis(Axis(1)).expect("rows have classes");
    &nll * &(1.0 - &s) + &mean_neg_log * &s
}

/// Its gradient times scale: (softmax - ((1 - s) onehot + s / classes)) * scale.
pub fn smoothed_xent_backward(p: ArrayView2<f64>, labels: &[u32], s: ArrayView1<f64>, scale: f64) -> Array2<f64> {
    let classes = p.ncols() as f64;
    let s = s.view().insert_axis(Axis(1));
    let target = &onehot(labels, p.ncols()) * &(1.0 - &s) + &s / classes;
    (&p - &target) * scale
}

/// Per example of z (n, classes): the mean over classes of (z - onehot)^2 (n), and whether
/// the first maximum is the label.
pub fn mse(z: ArrayView2<f64>, labels: &[u32]) -> (Array1<f64>, Vec<bool>) {
    let d = &z - &onehot(labels, z.ncols());
    let loss = d.mapv(|v| v * v).mean_axis(Axis(1)).unwrap_or_else(|| Array1::zeros(z.nrows()));
    let correct = z.rows().into_iter().zip(labels).map(|(r, &y)| argmax(r) == y as usize).collect();
    (loss, correct)
}

/// d(scale * sum of the per-example losses) / dz = 2 (z - onehot) / classes * scale.
pub fn mse_backward(z: ArrayView2<f64>, labels: &[u32], scale: f64) -> Array2<f64> {
    (&z - &onehot(labels, z.ncols())) * (2.0 * scale / z.ncols() as f64)
}

/// One step of Adam (Kingma & Ba) with decoupled weight decay (AdamW): m and v are the
/// moment averages, m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t), and
/// p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps), with the learning rate lr and weight
/// decay wd of each element's member (per element here).
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    p: &mut Array1<f64>,
    g: ArrayView1<f64>,
    m: &mut Array1<f64>,
    v: &mut Array1<f64>,
    lr: ArrayView1<f64>,
    wd: ArrayView1<f64>,
    a: &AdamStep,
) {
    let (b1, b2, eps) = (a.beta1 as f64, a.beta2 as f64, a.eps as f64);
    *m = &*m * b1 + &g * (1.0 - b1);
    *v = &*v * b2 + &g.mapv(|g| g * g) * (1.0 - b2);
    let m_hat = &*m / (1.0 - b1.powi(a.t as i32));
    let v_hat = &*v / (1.0 - b2.powi(a.t as i32));
    *p = &*p * (1.0 - &lr * &wd) - m_hat / (v_hat.mapv(f64::sqrt) + eps) * lr;
}

/// One step of SGD as torch.optim.SGD, per element with its member's lr, momentum and weight
/// decay wd: g = grad + wd p; with momentum, b <- momentum b + g and p <- p - lr b (Nesterov:
/// p <- p - lr (g + momentum b)); without, p <- p - lr g (b untouched).
#[allow(clippy::too_many_arguments)]
pub fn sgd_step(
    p: &mut Array1<f64>,
    grad: ArrayView1<f64>,
    b: &mut Array1<f64>,
    lr: ArrayView1<f64>,
    momentum: ArrayView1<f64>,
    wd: ArrayView1<f64>,
    nesterov: bool,
) {
    for i in 0..p.len() {
        let g = grad[i] + wd[i] * p[i];
        if momentum[i] > 0.0 {
            b[i] = b[i] * momentum[i] + g;
            p[i] -= lr[i] * if nesterov { g + momentum[i] * b[i] } else { b[i] };
        } else {
            p[i] -= g * lr[i];
        }
    }
}

/// avg <- decay avg + (1 - decay) src, per element with its member's decay.
pub fn ema_update(avg: &mut Array1<f64>, src: ArrayView1<f64>, decay: ArrayView1<f64>) {
    *avg = &*avg * &decay + &src * &(1.0 - &decay);
}

/// Per element of a flat buffer of `len`, its member's value at word `at + member` of the
/// member table.
pub fn per_member(table: &[u32], seg: &Segments, at: usize, len: usize) -> Array1<f64> {
    Array1::from_shape_fn(len, |i| crate::backend::table_f32(table, at + seg.member_of(table, i)) as f64)
}

/// One augmentation draw: zoom in [lo, hi], rotation theta in [-rotate, rotate] (radians),
/// shift (tx, ty) in [-shift, shift] times (w, h), from the draws 4j + 1 ... 4j + 4 of the
/// batch's key for image j (`data::augment` documents the map).
pub struct Affine {
    pub zoom: f64,
    pub theta: f64,
    pub tx: f64,
    pub ty: f64,
}

impl Affine {
    pub fn draw(key: u32, j: u32, aug: &crate::data::augment::Augment, h: usize, w: usize) -> Affine {
        let u = |k: u32| draw(key, 4 * j + k + 1) as f64;
        Affine {
            zoom: aug.zoom[0] as f64 + u(0) * (aug.zoom[1] - aug.zoom[0]) as f64,
            theta: (2.0 * u(1) - 1.0) * (aug.rotate as f64).to_radians(),
            tx: (2.0 * u(2) - 1.0) * aug.shift as f64 * w as f64,
            ty: (2.0 * u(3) - 1.0) * aug.shift as f64 * h as f64,
        }
    }

    /// Where output pixel (x, y) samples the source: the image zoomed by `zoom` and rotated
    /// by `theta` about its centre (cx, cy), then shifted by (tx, ty); so the source point is
    /// the centre plus R(-theta) / zoom applied to (x - cx - tx, y - cy - ty).
    fn source(&self, x: f64, y: f64, cx: f64, cy: f64) -> (f64, f64) {
        let (dx, dy) = (x - cx - self.tx, y - cy - self.ty);
        let (c, s) = (self.theta.cos() / self.zoom, self.theta.sin() / self.zoom);
        (cx + c * dx + s * dy, cy - s * dx + c * dy)
    }
}

/// One image (c, h, w) of bytes as model input: (pixel/255 - mean[c]) / std[c], mirrored left
/// to right when `flip` (output column x shows column w - 1 - x), shifted by the whole pixels
/// `moved` = (dx, dy) (then showing pixel (x - dx, y - dy), zero outside the image), and
/// sampled bilinearly (zero outside the image) through `affine` when the image is augmented.
pub fn sample_image(
    img: ArrayView3<u8>,
    affine: Option<&Affine>,
    flip: bool,
    moved: (i32, i32),
    mean: &[f32],
    std: &[f32],
) -> Array3<f64> {
    let (_, h, w) = img.dim();
    let px = |c: usize, x: f64, y: f64| -> f64 {
        if x < 0.0 || y < 0.0 || x >= w as f64 || y >= h as f64 { 0.0 } else { img[[c, y as usize, x as usize]] as f64 }
    };
    Array3::from_shape_fn(img.dim(), |(c, y, x)| {
        let x = if flip { w - 1 - x } else { x } as i64 - moved.0 as i64;
        let y = y as i64 - moved.1 as i64;
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            return -(mean[c] as f64) / std[c] as f64;
        }
        let (x, y) = (x as usize, y as usize);
        let v = match affine {
            None => img[[c, y, x]] as f64,
            Some(a) => {
                let (sx, sy) = a.source(x as f64, y as f64, (w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = (sx - x0, sy - y0);
                let top = px(c, x0, y0) * (1.0 - fx) + px(c, x0 + 1.0, y0) * fx;
                let bottom = px(c, x0, y0 + 1.0) * (1.0 - fx) + px(c, x0 + 1.0, y0 + 1.0) * fx;
                top * (1.0 - fy) + bottom * fy
            }
        };
        (v / 255.0 - mean[c] as f64) / std[c] as f64
    })
}
