//! The CPU backend: the reference every GPU kernel is checked against, and a usable trainer.
//!
//! Buffers are plain vectors; ops run immediately, using all cores through rayon (examples or
//! planes in parallel, GEMMs from the `gemm` crate). Reductions over the batch are split into
//! fixed chunks, so results do not depend on the number of threads.

pub mod activation;
pub mod batchnorm;
pub mod conv2d;
pub mod data;
pub mod dense;
pub mod direct;
pub mod dropout;
pub mod gemm;
pub mod loss;
pub mod optim;
pub mod pool;
pub mod real;
pub mod residual;

use crate::backend::{AdamStep, Backend, Dropout, EmaStep, Epilogue, Gather, SgdStep, Xent};
use crate::error::Result;
use crate::model::{Act, AvgPool, BatchNorm, Conv2d, Dense, Pool};

use real::Real;

/// The CPU backend over elements of type `T` (f32 to train; f64 for precise gradient checks).
#[derive(Debug, Default)]
pub struct Cpu<T> {
    /// Seconds and calls per op (and shape), when profiling.
    profile: Option<std::collections::HashMap<String, (f64, u64)>>,
    _t: std::marker::PhantomData<T>,
}

/// The trainer's CPU backend.
pub type CpuBackend = Cpu<f32>;

impl<T: Real> Cpu<T> {
    pub fn new() -> Self {
        Cpu { profile: None, _t: std::marker::PhantomData }
    }

    /// Starts timing every op (`bench --profile`).
    pub fn enable_profiling(&mut self) {
        self.profile = Some(Default::default());
    }

    /// (op and shape, total seconds, calls), slowest first.
    pub fn profile_report(&self) -> Vec<(String, f64, u64)> {
        let mut v: Vec<(String, f64, u64)> =
            self.profile.iter().flatten().map(|(k, &(s, n))| (k.clone(), s, n)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// Runs `f`, adding its time to `what()` when profiling.
    fn timed<R>(&mut self, what: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
        let Some(p) = self.profile.as_mut() else { return f() };
        let t = std::time::Instant::now();
        let r = f();
        let e = p.entry(what()).or_insert((0.0, 0));
        e.0 += t.elapsed().as_secs_f64();
        e.1 += 1;
        r
    }
}

fn conv_tag(op: &str, l: &Conv2d) -> String {
    let g = if l.groups > 1 { format!(" g{}", l.groups) } else { String::new() };
    format!("{op} {}->{} {}x{} k{}{g}", l.c_in, l.c_out, l.h_in, l.w_in, l.kh)
}

fn dense_tag(op: &str, l: &Dense) -> String {
    let g = if l.groups > 1 { format!(" g{}", l.groups) } else { String::new() };
    format!("{op} {}->{}{g}", l.n_in, l.n_out)
}

impl<T: Real> Backend for Cpu<T> {
    type Buf = Vec<T>;
    type IBuf = Vec<u32>;

    fn name(&self) -> String {
        let t = rayon::current_num_threads();
        let p = if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f64>() {
            ", f64".to_string()
        } else {
            // The convolution kernels this CPU runs.
            direct::best().map_or(String::new(), |isa| format!(", {}", isa.name()))
        };
        format!("cpu ({t} thread{}{p})", if t == 1 { "" } else { "s" })
    }

    fn allocates_on_host(&self) -> bool {
        true
    }

    fn alloc(&mut self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::zero(); len])
    }

    fn alloc_u32(&mut self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }

    fn upload(&mut self, dst: &mut Vec<T>, data: &[f32]) -> Result<()> {
        dst[..data.len()].iter_mut().zip(data).for_each(|(d, &v)| *d = T::of(v));
        Ok(())
    }

    fn upload_u32(&mut self, dst: &mut Vec<u32>, data: &[u32]) -> Result<()> {
        dst[..data.len()].copy_from_slice(data);
        Ok(())
    }

    async fn download(&mut self, src: &Vec<T>, len: usize) -> Result<Vec<f32>> {
        Ok(src[..len].iter().map(|v| v.to32()).collect())
    }

    async fn download_u32(&mut self, src: &Vec<u32>, len: usize) -> Result<Vec<u32>> {
        Ok(src[..len].to_vec())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn gather_batch(
        &mut self,
        x: &mut Vec<T>,
        y: &mut Vec<u32>,
        images: &Vec<u32>,
        labels: &Vec<u32>,
        perm: &Vec<u32>,
        g: &Gather,
    ) {
        self.timed(|| "gather_batch".to_string(), || data::gather_batch(x, y, images, labels, perm, g))
    }

    fn conv2d_forward(
        &mut self,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        params: &Vec<T>,
        table: &Vec<u32>,
        l: &Conv2d,
        n: usize,
        epi: Epilogue,
    ) {
        self.timed(|| conv_tag("conv2d_forward", l), || conv2d::conv2d_forward(out, inp, params, table, l, n, epi))
    }

    fn conv2d_backward_input(&mut self, dinp: &mut Vec<T>, dout: &Vec<T>, params: &Vec<T>, l: &Conv2d, n: usize) {
        self.timed(|| conv_tag("conv2d_backward_input", l), || conv2d::conv2d_backward_input(dinp, dout, params, l, n))
    }

    fn conv2d_backward_weight(&mut self, grads: &mut Vec<T>, dout: &Vec<T>, inp: &Vec<T>, l: &Conv2d, n: usize) {
        self.timed(|| conv_tag("conv2d_backward_weight", l), || conv2d::conv2d_backward_weight(grads, dout, inp, l, n))
    }

    fn dense_forward(
        &mut self,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        params: &Vec<T>,
        table: &Vec<u32>,
        l: &Dense,
        n: usize,
        epi: Epilogue,
    ) {
        self.timed(|| dense_tag("dense_forward", l), || dense::dense_forward(out, inp, params, table, l, n, epi))
    }

    fn dense_backward_input(&mut self, dinp: &mut Vec<T>, dout: &Vec<T>, params: &Vec<T>, l: &Dense, n: usize) {
        self.timed(|| dense_tag("dense_backward_input", l), || dense::dense_backward_input(dinp, dout, params, l, n))
    }

    fn dense_backward_weight(&mut self, grads: &mut Vec<T>, dout: &Vec<T>, inp: &Vec<T>, l: &Dense, n: usize) {
        self.timed(|| dense_tag("dense_backward_weight", l), || dense::dense_backward_weight(grads, dout, inp, l, n))
    }

    fn activation_forward(&mut self, out: &mut Vec<T>, inp: &Vec<T>, len: usize, act: Act) {
        self.timed(|| "activation_forward".to_string(), || activation::activation_forward(out, inp, len, act))
    }

    fn activation_backward(
        &mut self,
        dinp: &mut Vec<T>,
        dout: &Vec<T>,
        out: &Vec<T>,
        table: &Vec<u32>,
        len: usize,
        act: Act,
        dropout: Option<Dropout>,
    ) {
        self.timed(
            || "activation_backward".to_string(),
            || activation::activation_backward(dinp, dout, out, table, len, act, dropout.as_ref()),
        )
    }

    fn residual_add(&mut self, out: &mut Vec<T>, a: &Vec<T>, b: &Vec<T>, len: usize) {
        self.timed(|| "residual_add".to_string(), || residual::residual_add(out, a, b, len))
    }

    fn avgpool_forward(&mut self, out: &mut Vec<T>, inp: &Vec<T>, l: &AvgPool, n: usize) {
        self.timed(|| "avgpool_forward".to_string(), || pool::avgpool_forward(out, inp, l, n))
    }

    fn avgpool_backward(&mut self, dinp: &mut Vec<T>, dout: &Vec<T>, l: &AvgPool, n: usize) {
        self.timed(|| "avgpool_backward".to_string(), || pool::avgpool_backward(dinp, dout, l, n))
    }

    fn maxpool_forward(&mut self, out: &mut Vec<T>, argmax: &mut Vec<u32>, inp: &Vec<T>, l: &Pool, n: usize) {
        self.timed(|| "maxpool_forward".to_string(), || pool::maxpool_forward(out, argmax, inp, l, n))
    }

    fn maxpool_backward(&mut self, dinp: &mut Vec<T>, dout: &Vec<T>, argmax: &Vec<u32>, l: &Pool, n: usize) {
        self.timed(|| "maxpool_backward".to_string(), || pool::maxpool_backward(dinp, dout, argmax, l, n))
    }

    fn dropout_forward(&mut self, out: &mut Vec<T>, inp: &Vec<T>, table: &Vec<u32>, len: usize, d: &Dropout) {
        self.timed(|| "dropout_forward".to_string(), || dropout::dropout_forward(out, inp, table, len, d))
    }

    fn dropout_backward(&mut self, dinp: &mut Vec<T>, dout: &Vec<T>, table: &Vec<u32>, len: usize, d: &Dropout) {
        self.timed(|| "dropout_backward".to_string(), || dropout::dropout_backward(dinp, dout, table, len, d))
    }

    fn batchnorm_forward(
        &mut self,
        out: &mut Vec<T>,
        saved: &mut Vec<T>,
        state: &mut Vec<T>,
        inp: &Vec<T>,
        params: &Vec<T>,
        table: &Vec<u32>,
        l: &BatchNorm,
        n: usize,
        train: bool,
        epi: Epilogue,
    ) {
        self.timed(
            || "batchnorm_forward".to_string(),
            || batchnorm::batchnorm_forward(out, saved, state, inp, params, table, l, n, train, epi),
        )
    }

    fn batchnorm_backward(
        &mut self,
        dinp: &mut Vec<T>,
        grads: &mut Vec<T>,
        dout: &Vec<T>,
        inp: &Vec<T>,
        out: &Vec<T>,
        saved: &Vec<T>,
        params: &Vec<T>,
        table: &Vec<u32>,
        l: &BatchNorm,
        n: usize,
        epi: Epilogue,
    ) {
        self.timed(
            || "batchnorm_backward".to_string(),
            || batchnorm::batchnorm_backward(dinp, grads, dout, inp, out, saved, params, table, l, n, epi),
        )
    }

    fn softmax_xent_forward_backward(
        &mut self,
        dlogits: &mut Vec<T>,
        stats: &mut Vec<T>,
        slot: usize,
        logits: &Vec<T>,
        labels: &Vec<u32>,
        table: &Vec<u32>,
        n: usize,
        x: &Xent,
    ) {
        self.timed(
            || "softmax_xent_forward_backward".to_string(),
            || loss::softmax_xent_forward_backward(dlogits, stats, slot, logits, labels, table, n, x),
        )
    }

    fn softmax_xent_forward(
        &mut self,
        probs: &mut Vec<T>,
        probs_at: usize,
        stats: &mut Vec<T>,
        slot: usize,
        logits: &Vec<T>,
        labels: &Vec<u32>,
        n: usize,
        members: usize,
        classes: usize,
    ) {
        self.timed(
            || "softmax_xent_forward".to_string(),
            || loss::softmax_xent_forward(probs, probs_at, stats, slot, logits, labels, n, members, classes),
        )
    }

    fn mse_forward_backward(
        &mut self,
        dout: &mut Vec<T>,
        stats: &mut Vec<T>,
        slot: usize,
        outputs: &Vec<T>,
        labels: &Vec<u32>,
        n: usize,
        members: usize,
        classes: usize,
        scale: f32,
    ) {
        self.timed(
            || "mse_forward_backward".to_string(),
            || loss::mse_forward_backward(dout, stats, slot, outputs, labels, n, members, classes, scale),
        )
    }

    fn mse_forward(
        &mut self,
        probs: &mut Vec<T>,
        probs_at: usize,
        stats: &mut Vec<T>,
        slot: usize,
        outputs: &Vec<T>,
        labels: &Vec<u32>,
        n: usize,
        members: usize,
        classes: usize,
    ) {
        self.timed(
            || "mse_forward".to_string(),
            || loss::mse_forward(probs, probs_at, stats, slot, outputs, labels, n, members, classes),
        )
    }

    fn adam_step(
        &mut self,
        params: &mut Vec<T>,
        grads: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        table: &Vec<u32>,
        len: usize,
        a: &AdamStep,
    ) {
        self.timed(|| "adam_step".to_string(), || optim::adam_step(params, grads, m, v, table, len, a))
    }

    fn sgd_step(
        &mut self,
        params: &mut Vec<T>,
        grads: &Vec<T>,
        velocity: &mut Vec<T>,
        table: &Vec<u32>,
        len: usize,
        s: &SgdStep,
    ) {
        self.timed(|| "sgd_step".to_string(), || optim::sgd_step(params, grads, velocity, table, len, s))
    }

    fn ema_update(&mut self, avg: &mut Vec<T>, src: &Vec<T>, table: &Vec<u32>, len: usize, e: &EmaStep) {
        self.timed(|| "ema_update".to_string(), || optim::ema_update(avg, src, table, len, e))
    }
}
