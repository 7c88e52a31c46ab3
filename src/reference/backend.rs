//! The reference definitions behind the `Backend` trait: flat f64 buffers in, the layer's
//! tensors viewed at their offsets as ndarray arrays, the definition called, the result
//! written back. Fused epilogues are unfused here (bias, then activation, then dropout), as
//! the definitions compose them.

use ndarray::{Array1, ArrayView1, ArrayView2, ArrayView3, ArrayView4, ArrayViewMut1};

use super::*;
use crate::backend::{AdamStep, Backend, Dropout, EmaStep, Epilogue, Gather, SgdStep, Xent, table_f32};
use crate::cpu::data::packed_byte;
use crate::data::augment::{batch_altered, image_flipped, image_shift};
use crate::error::Result;
use crate::model::{AvgPool, BatchNorm, Conv2d, Dense, Pool};

/// The reference as a backend: every op is the definition in `reference`, in f64.
#[derive(Debug, Default)]
pub struct Reference;

impl Reference {
    pub fn new() -> Self {
        Reference
    }
}

// Shapes are right by construction (the layer structs come from `model::Arch`, the lengths
// from the caller's buffers), so a view that does not fit is a bug in the caller.
fn view4<'a>(v: &'a [f64], at: usize, shape: (usize, usize, usize, usize)) -> ArrayView4<'a, f64> {
    let len = shape.0 * shape.1 * shape.2 * shape.3;
    ArrayView4::from_shape(shape, &v[at..at + len]).expect("buffer holds the tensor")
}

fn view2<'a>(v: &'a [f64], at: usize, shape: (usize, usize)) -> ArrayView2<'a, f64> {
    ArrayView2::from_shape(shape, &v[at..at + shape.0 * shape.1]).expect("buffer holds the tensor")
}

fn view3<'a>(v: &'a [f64], shape: (usize, usize, usize)) -> ArrayView3<'a, f64> {
    ArrayView3::from_shape(shape, &v[..shape.0 * shape.1 * shape.2]).expect("buffer holds the tensor")
}

fn view1(v: &[f64], at: usize, len: usize) -> ArrayView1<'_, f64> {
    ArrayView1::from(&v[at..at + len])
}

/// Writes `src` (any shape, in its logical order) at `at`.
fn put<'a>(dst: &mut [f64], at: usize, src: impl IntoIterator<Item = &'a f64>) {
    for (d, &s) in dst[at..].iter_mut().zip(src) {
        *d = s;
    }
}

/// Activation and dropout after a conv, dense or batch-norm forward, over the batch's flat
/// output.
fn epilogue(y: &mut [f64], table: &[u32], epi: Epilogue) {
    if let Some(a) = epi.act {
        let v = activation_forward(ArrayView1::from(&*y), a);
        put(y, 0, &v);
    }
    if let Some(d) = epi.dropout {
        let v = dropout_forward(ArrayView1::from(&*y), table, &d);
        put(y, 0, &v);
    }
}

fn conv_shape(l: &Conv2d, n: usize) -> [(usize, usize, usize, usize); 3] {
    [(n, l.c_in, l.h_in, l.w_in), (l.c_out, l.group_in(), l.kh, l.kw), (n, l.c_out, l.h_out, l.w_out)]
}

/// Writes the per-example losses and hits of `members` models, rows (example, member), as
/// batch `slot`'s stats of each member.
fn write_stats(stats: &mut [f64], slot: usize, members: usize, loss: &Array1<f64>, correct: &[bool]) {
    for k in 0..members {
        let at = 2 * (slot * members + k);
        stats[at] = loss.iter().skip(k).step_by(members).sum();
        stats[at + 1] = correct.iter().skip(k).step_by(members).filter(|&&c| c).count() as f64;
    }
}

/// The labels of rows (example, member): each example's label once per member.
fn member_labels(labels: &[u32], n: usize, members: usize) -> Vec<u32> {
    labels[..n].iter().flat_map(|&y| std::iter::repeat_n(y, members)).collect()
}

fn flat(v: &mut [f64], len: usize) -> ArrayViewMut1<'_, f64> {
    ArrayViewMut1::from(&mut v[..len])
}

impl Backend for Reference {
    type Buf = Vec<f64>;
    type IBuf = Vec<u32>;

    fn name(&self) -> String {
        "reference (ndarray, f64)".into()
    }

    fn allocates_on_host(&self) -> bool {
        true
    }

    fn alloc(&mut self, len: usize) -> Result<Vec<f64>> {
        Ok(vec![0.0; len])
    }

    fn alloc_u32(&mut self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }

    fn upload(&mut self, dst: &mut Vec<f64>, data: &[f32]) -> Result<()> {
        dst.iter_mut().zip(data).for_each(|(d, &v)| *d = v as f64);
        Ok(())
    }

    fn upload_u32(&mut self, dst: &mut Vec<u32>, data: &[u32]) -> Result<()> {
        dst[..data.len()].copy_from_slice(data);
        Ok(())
    }

    async fn download(&mut self, src: &Vec<f64>, len: usize) -> Result<Vec<f32>> {
        Ok(src[..len].iter().map(|&v| v as f32).collect())
    }

    async fn download_u32(&mut self, src: &Vec<u32>, len: usize) -> Result<Vec<u32>> {
        Ok(src[..len].to_vec())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn gather_batch(
        &mut self,
        x: &mut Vec<f64>,
        y: &mut Vec<u32>,
        images: &Vec<u32>,
        labels: &Vec<u32>,
        perm: &Vec<u32>,
        g: &Gather,
    ) {
        let (c, h, w) = (g.channels, g.height, g.width);
        let altered = g.augment.filter(|&(a, key)| batch_altered(key, a.chance));
        for j in 0..g.n {
            let idx = perm[g.start + j] as usize;
            if !(g.first..g.first + g.count).contains(&idx) {
                continue;
            }
            let at = (idx - g.first) * c * h * w;
            let img = ndarray::Array3::from_shape_fn((c, h, w), |(ch, r, col)| {
                packed_byte(images, at + (ch * h + r) * w + col)
            });
            let affine = altered.map(|(a, key)| Affine::draw(key, j as u32, &a, h, w));
            let flip = g.augment.is_some_and(|(a, key)| a.flip && image_flipped(key, j as u32));
            let moved = g.augment.map_or((0, 0), |(a, key)| image_shift(key, j as u32, a.translate));
            let v = sample_image(img.view(), affine.as_ref(), flip, moved, &g.mean, &g.std);
            put(x, j * c * h * w, &v);
            y[j] = labels[idx];
        }
    }

    fn conv2d_forward(
        &mut self,
        out: &mut Vec<f64>,
        inp: &Vec<f64>,
        params: &Vec<f64>,
        table: &Vec<u32>,
        l: &Conv2d,
        n: usize,
        epi: Epilogue,
    ) {
        let [xs, ws, _] = conv_shape(l, n);
        let b = l.b_off.map(|at| view1(params, at, l.c_out));
        let (x, w, pad) = (view4(inp, 0, xs), view4(params, l.w_off, ws), (l.pad_h, l.pad_w));
        let y = conv2d_forward(x, w, b, l.stride, pad, (l.groups, l.in_groups));
        put(out, 0, &y);
        epilogue(&mut out[..y.len()], table, epi);
    }

    fn conv2d_backward_input(&mut self, dinp: &mut Vec<f64>, dout: &Vec<f64>, params: &Vec<f64>, l: &Conv2d, n: usize) {
        let [_, ws, ys] = conv_shape(l, n);
        let dx = conv2d_backward_input(
            view4(dout, 0, ys),
            view4(params, l.w_off, ws),
            (l.c_in, l.h_in, l.w_in),
            l.stride,
            (l.pad_h, l.pad_w),
            (l.groups, l.in_groups),
        );
        put(dinp, 0, &dx);
    }

    fn conv2d_backward_weight(&mut self, grads: &mut Vec<f64>, dout: &Vec<f64>, inp: &Vec<f64>, l: &Conv2d, n: usize) {
        let [xs, _, ys] = conv_shape(l, n);
        let (dw, db) = conv2d_backward_weight(
            view4(dout, 0, ys),
            view4(inp, 0, xs),
            (l.group_in(), l.kh, l.kw),
            l.stride,
            (l.pad_h, l.pad_w),
            (l.groups, l.in_groups),
        );
        put(grads, l.w_off, &dw);
        if let Some(at) = l.b_off {
            put(grads, at, &db);
        }
    }

    fn dense_forward(
        &mut self,
        out: &mut Vec<f64>,
        inp: &Vec<f64>,
        params: &Vec<f64>,
        table: &Vec<u32>,
        l: &Dense,
        n: usize,
        epi: Epilogue,
    ) {
        let b = l.b_off.map(|at| view1(params, at, l.n_out));
        let w = view2(params, l.w_off, (l.n_out, l.group_in()));
        let y = dense_forward(view2(inp, 0, (n, l.n_in)), w, b, l.groups);
        put(out, 0, &y);
        epilogue(&mut out[..y.len()], table, epi);
    }

    fn dense_backward_input(&mut self, dinp: &mut Vec<f64>, dout: &Vec<f64>, params: &Vec<f64>, l: &Dense, n: usize) {
        let w = view2(params, l.w_off, (l.n_out, l.group_in()));
        let dx = dense_backward_input(view2(dout, 0, (n, l.n_out)), w, l.groups);
        put(dinp, 0, &dx);
    }

    fn dense_backward_weight(&mut self, grads: &mut Vec<f64>, dout: &Vec<f64>, inp: &Vec<f64>, l: &Dense, n: usize) {
        let (dw, db) = dense_backward_weight(view2(dout, 0, (n, l.n_out)), view2(inp, 0, (n, l.n_in)), l.groups);
        put(grads, l.w_off, &dw);
        if let Some(at) = l.b_off {
            put(grads, at, &db);
        }
    }

    fn activation_forward(&mut self, out: &mut Vec<f64>, inp: &Vec<f64>, len: usize, act: Act) {
        put(out, 0, &activation_forward(view1(inp, 0, len), act));
    }

    fn activation_backward(
        &mut self,
        dinp: &mut Vec<f64>,
        dout: &Vec<f64>,
        out: &Vec<f64>,
        table: &Vec<u32>,
        len: usize,
        act: Act,
        dropout: Option<Dropout>,
    ) {
        let scale = match dropout {
            Some(d) => dropout_scale(len, table, &d),
            None => Array1::ones(len),
        };
        put(dinp, 0, &activation_backward(view1(dout, 0, len), view1(out, 0, len), act, scale.view()));
    }

    fn residual_add(&mut self, out: &mut Vec<f64>, a: &Vec<f64>, b: &Vec<f64>, len: usize) {
        put(out, 0, &residual_add(view1(a, 0, len), view1(b, 0, len)));
    }

    fn avgpool_forward(&mut self, out: &mut Vec<f64>, inp: &Vec<f64>, l: &AvgPool, n: usize) {
        put(out, 0, &avgpool_forward(view4(inp, 0, (n, l.c, l.h_in, l.w_in)), (l.kh, l.kw), l.stride));
    }

    fn avgpool_backward(&mut self, dinp: &mut Vec<f64>, dout: &Vec<f64>, l: &AvgPool, n: usize) {
        let dy = view4(dout, 0, (n, l.c, l.h_out, l.w_out));
        put(dinp, 0, &avgpool_backward(dy, (l.h_in, l.w_in), (l.kh, l.kw), l.stride));
    }

    fn maxpool_forward(&mut self, out: &mut Vec<f64>, argmax: &mut Vec<u32>, inp: &Vec<f64>, l: &Pool, n: usize) {
        let (y, arg) = maxpool_forward(view4(inp, 0, (n, l.c, l.h_in, l.w_in)), l.size, l.stride);
        put(out, 0, &y);
        for (d, &a) in argmax.iter_mut().zip(&arg) {
            *d = a;
        }
    }

    fn maxpool_backward(&mut self, dinp: &mut Vec<f64>, dout: &Vec<f64>, argmax: &Vec<u32>, l: &Pool, n: usize) {
        let shape = (n, l.c, l.h_out, l.w_out);
        let arg = ArrayView4::from_shape(shape, &argmax[..l.out_len() * n]).expect("buffer holds the positions");
        put(dinp, 0, &maxpool_backward(view4(dout, 0, shape), arg, (l.h_in, l.w_in)));
    }

    fn dropout_forward(&mut self, out: &mut Vec<f64>, inp: &Vec<f64>, table: &Vec<u32>, len: usize, d: &Dropout) {
        put(out, 0, &dropout_forward(view1(inp, 0, len), table, d));
    }

    fn dropout_backward(&mut self, dinp: &mut Vec<f64>, dout: &Vec<f64>, table: &Vec<u32>, len: usize, d: &Dropout) {
        // The mask is a constant factor: its backward is the forward applied to dout.
        put(dinp, 0, &dropout_forward(view1(dout, 0, len), table, d));
    }

    fn batchnorm_forward(
        &mut self,
        out: &mut Vec<f64>,
        saved: &mut Vec<f64>,
        state: &mut Vec<f64>,
        inp: &Vec<f64>,
        params: &Vec<f64>,
        table: &Vec<u32>,
        l: &BatchNorm,
        n: usize,
        train: bool,
        epi: Epilogue,
    ) {
        let x = view3(inp, (n, l.c, l.hw));
        let (gamma, beta) = (view1(params, l.gamma_off, l.c), view1(params, l.beta_off, l.c));
        let (mean, var) = if train {
            channel_moments(x)
        } else {
            (view1(state, l.mean_off, l.c).to_owned(), view1(state, l.var_off, l.c).to_owned())
        };
        put(out, 0, &batchnorm_forward(x, gamma, beta, mean.view(), var.view(), l.eps as f64));
        epilogue(&mut out[..n * l.c * l.hw], table, epi);
        if train {
            for c in 0..l.c {
                saved[2 * c] = mean[c];
                saved[2 * c + 1] = 1.0 / (var[c] + l.eps as f64).sqrt();
            }
            let running = (view1(state, l.mean_off, l.c), view1(state, l.var_off, l.c));
            let (rm, rv) = batchnorm_running(running, (mean.view(), var.view()), n * l.hw, l.momentum as f64);
            put(state, l.mean_off, &rm);
            put(state, l.var_off, &rv);
        }
    }

    fn batchnorm_backward(
        &mut self,
        dinp: &mut Vec<f64>,
        grads: &mut Vec<f64>,
        dout: &Vec<f64>,
        inp: &Vec<f64>,
        out: &Vec<f64>,
        _saved: &Vec<f64>,
        params: &Vec<f64>,
        table: &Vec<u32>,
        l: &BatchNorm,
        n: usize,
        epi: Epilogue,
    ) {
        // The definition recomputes the batch statistics from the input instead of trusting
        // the forward's saved copy (and, for gelu and silu, the normalised input).
        let shape = (n, l.c, l.hw);
        let len = n * l.c * l.hw;
        let (x, gamma) = (view3(inp, shape), view1(params, l.gamma_off, l.c));
        let dy = match epi.act {
            None => view1(dout, 0, len).to_owned(),
            Some(a) => {
                let scale = match epi.dropout {
                    Some(d) => dropout_scale(len, table, &d),
                    None => Array1::ones(len),
                };
                let saved = if a.grad_from_output() {
                    view1(out, 0, len).to_owned()
                } else {
                    let (mean, var) = channel_moments(x);
                    let beta = view1(params, l.beta_off, l.c);
                    let y = batchnorm_forward(x, gamma, beta, mean.view(), var.view(), l.eps as f64);
                    Array1::from_iter(y.iter().copied())
                };
                activation_backward(view1(dout, 0, len), saved.view(), a, scale.view())
            }
        };
        let dy = ArrayView3::from_shape(shape, dy.as_slice().expect("contiguous")).expect("buffer holds the tensor");
        let (dx, dgamma, dbeta) = batchnorm_backward(dy, x, gamma, l.eps as f64);
        put(dinp, 0, &dx);
        put(grads, l.gamma_off, &dgamma);
        put(grads, l.beta_off, &dbeta);
    }

    fn softmax_xent_forward_backward(
        &mut self,
        dlogits: &mut Vec<f64>,
        stats: &mut Vec<f64>,
        slot: usize,
        logits: &Vec<f64>,
        labels: &Vec<u32>,
        table: &Vec<u32>,
        n: usize,
        x: &Xent,
    ) {
        let (members, classes) = (x.members, x.classes);
        let y = member_labels(labels, n, members);
        let z = view2(logits, 0, (n * members, classes));
        let (p, _, correct) = softmax_xent(z, &y);
        // Row (example, member)'s smoothing is its member's.
        let s = Array1::from_shape_fn(n * members, |r| table_f32(table, x.smoothing_at + r % members) as f64);
        put(dlogits, 0, &smoothed_xent_backward(p.view(), &y, s.view(), x.scale as f64));
        write_stats(stats, slot, members, &smoothed_xent(z, &y, s.view()), &correct);
    }

    fn softmax_xent_forward(
        &mut self,
        probs: &mut Vec<f64>,
        probs_at: usize,
        stats: &mut Vec<f64>,
        slot: usize,
        logits: &Vec<f64>,
        labels: &Vec<u32>,
        n: usize,
        members: usize,
        classes: usize,
    ) {
        let y = member_labels(labels, n, members);
        let (p, loss, correct) = softmax_xent(view2(logits, 0, (n * members, classes)), &y);
        put(probs, probs_at * members * classes, &p);
        write_stats(stats, slot, members, &loss, &correct);
    }

    fn mse_forward_backward(
        &mut self,
        dout: &mut Vec<f64>,
        stats: &mut Vec<f64>,
        slot: usize,
        outputs: &Vec<f64>,
        labels: &Vec<u32>,
        n: usize,
        members: usize,
        classes: usize,
        scale: f32,
    ) {
        let y = member_labels(labels, n, members);
        let z = view2(outputs, 0, (n * members, classes));
        let (loss, correct) = mse(z, &y);
        put(dout, 0, &mse_backward(z, &y, scale as f64));
        write_stats(stats, slot, members, &loss, &correct);
    }

    fn mse_forward(
        &mut self,
        probs: &mut Vec<f64>,
        probs_at: usize,
        stats: &mut Vec<f64>,
        slot: usize,
        outputs: &Vec<f64>,
        labels: &Vec<u32>,
        n: usize,
        members: usize,
        classes: usize,
    ) {
        let y = member_labels(labels, n, members);
        let z = view2(outputs, 0, (n * members, classes));
        let (loss, correct) = mse(z, &y);
        put(probs, probs_at * members * classes, z);
        write_stats(stats, slot, members, &loss, &correct);
    }

    fn adam_step(
        &mut self,
        params: &mut Vec<f64>,
        grads: &Vec<f64>,
        m: &mut Vec<f64>,
        v: &mut Vec<f64>,
        table: &Vec<u32>,
        len: usize,
        a: &AdamStep,
    ) {
        let (mut p1, mut m1, mut v1) = (flat(params, len).to_owned(), flat(m, len).to_owned(), flat(v, len).to_owned());
        let lr = per_member(table, &a.segments, a.lr_at, len);
        let wd = per_member(table, &a.segments, a.wd_at, len);
        adam_step(&mut p1, view1(grads, 0, len), &mut m1, &mut v1, lr.view(), wd.view(), a);
        put(params, 0, &p1);
        put(m, 0, &m1);
        put(v, 0, &v1);
    }

    fn sgd_step(
        &mut self,
        params: &mut Vec<f64>,
        grads: &Vec<f64>,
        velocity: &mut Vec<f64>,
        table: &Vec<u32>,
        len: usize,
        s: &SgdStep,
    ) {
        let lr = per_member(table, &s.segments, s.lr_at, len);
        let momentum = per_member(table, &s.segments, s.momentum_at, len);
        let wd = per_member(table, &s.segments, s.wd_at, len);
        let mut p1 = flat(params, len).to_owned();
        // Velocity is only allocated (and touched) where some member has momentum.
        let with_velocity = momentum.iter().any(|&m| m > 0.0);
        let mut b1 = if with_velocity { flat(velocity, len).to_owned() } else { Array1::zeros(len) };
        sgd_step(&mut p1, view1(grads, 0, len), &mut b1, lr.view(), momentum.view(), wd.view(), s.nesterov);
        put(params, 0, &p1);
        if with_velocity {
            put(velocity, 0, &b1);
        }
    }

    fn ema_update(&mut self, avg: &mut Vec<f64>, src: &Vec<f64>, table: &Vec<u32>, len: usize, e: &EmaStep) {
        let decay = per_member(table, &e.segments, e.decay_at, len);
        let mut a1 = flat(avg, len).to_owned();
        ema_update(&mut a1, view1(src, 0, len), decay.view());
        put(avg, 0, &a1);
    }
}
