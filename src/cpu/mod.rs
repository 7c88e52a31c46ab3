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
pub mod dropout;
pub mod gemm;
pub mod loss;
pub mod optim;
pub mod pool;
pub mod real;

use crate::backend::{AdamStep, Backend, Gather, SgdStep};
use crate::error::Result;
use crate::model::{Act, BatchNorm, Conv2d, Dense, Pool};

use real::Real;

/// The CPU backend over elements of type `T` (f32 to train; f64 for precise gradient checks).
#[derive(Debug, Default)]
pub struct Cpu<T>(std::marker::PhantomData<T>);

/// The trainer's CPU backend.
pub type CpuBackend = Cpu<f32>;

impl<T: Real> Cpu<T> {
    pub fn new() -> Self {
        Cpu(std::marker::PhantomData)
    }
}

impl<T: Real> Backend for Cpu<T> {
    type Buf = Vec<T>;
    type IBuf = Vec<u32>;

    fn name(&self) -> String {
        let t = rayon::current_num_threads();
        let p = if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f64>() { ", f64" } else { "" };
        format!("cpu ({t} thread{}{p})", if t == 1 { "" } else { "s" })
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

    fn download(&mut self, src: &Vec<T>, len: usize) -> Result<Vec<f32>> {
        Ok(src[..len].iter().map(|v| v.to32()).collect())
    }

    fn download_u32(&mut self, src: &Vec<u32>, len: usize) -> Result<Vec<u32>> {
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
        data::gather_batch(x, y, images, labels, perm, g)
    }

    fn conv2d_forward(
        &mut self,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        params: &Vec<T>,
        l: &Conv2d,
        n: usize,
        act: Option<Act>,
    ) {
        conv2d::conv2d_forward(out, inp, params, l, n, act)
    }

    fn conv2d_backward_input(&mut self, dinp: &mut Vec<T>, dout: &Vec<T>, params: &Vec<T>, l: &Conv2d, n: usize) {
        conv2d::conv2d_backward_input(dinp, dout, params, l, n)
    }

    fn conv2d_backward_weight(&mut self, grads: &mut Vec<T>, dout: &Vec<T>, inp: &Vec<T>, l: &Conv2d, n: usize) {
        conv2d::conv2d_backward_weight(grads, dout, inp, l, n)
    }

    fn dense_forward(
        &mut self,
        out: &mut Vec<T>,
        inp: &Vec<T>,
        params: &Vec<T>,
        l: &Dense,
        n: usize,
        act: Option<Act>,
    ) {
        dense::dense_forward(out, inp, params, l, n, act)
    }

    fn dense_backward_input(&mut self, dinp: &mut Vec<T>, dout: &Vec<T>, params: &Vec<T>, l: &Dense, n: usize) {
        dense::dense_backward_input(dinp, dout, params, l, n)
    }

    fn dense_backward_weight(&mut self, grads: &mut Vec<T>, dout: &Vec<T>, inp: &Vec<T>, l: &Dense, n: usize) {
        dense::dense_backward_weight(grads, dout, inp, l, n)
    }

    fn activation_forward(&mut self, out: &mut Vec<T>, inp: &Vec<T>, len: usize, act: Act) {
        activation::activation_forward(out, inp, len, act)
    }

    fn activation_backward(&mut self, dinp: &mut Vec<T>, dout: &Vec<T>, out: &Vec<T>, len: usize, act: Act) {
        activation::activation_backward(dinp, dout, out, len, act)
    }

    fn maxpool_forward(&mut self, out: &mut Vec<T>, argmax: &mut Vec<u32>, inp: &Vec<T>, l: &Pool, n: usize) {
        pool::maxpool_forward(out, argmax, inp, l, n)
    }

    fn maxpool_backward(&mut self, dinp: &mut Vec<T>, dout: &Vec<T>, argmax: &Vec<u32>, l: &Pool, n: usize) {
        pool::maxpool_backward(dinp, dout, argmax, l, n)
    }

    fn dropout_forward(&mut self, out: &mut Vec<T>, inp: &Vec<T>, len: usize, p: f32, key: u32) {
        dropout::dropout_forward(out, inp, len, p, key)
    }

    fn dropout_backward(&mut self, dinp: &mut Vec<T>, dout: &Vec<T>, len: usize, p: f32, key: u32) {
        dropout::dropout_backward(dinp, dout, len, p, key)
    }

    fn batchnorm_forward(
        &mut self,
        out: &mut Vec<T>,
        saved: &mut Vec<T>,
        state: &mut Vec<T>,
        inp: &Vec<T>,
        params: &Vec<T>,
        l: &BatchNorm,
        n: usize,
        train: bool,
    ) {
        batchnorm::batchnorm_forward(out, saved, state, inp, params, l, n, train)
    }

    fn batchnorm_backward(
        &mut self,
        dinp: &mut Vec<T>,
        grads: &mut Vec<T>,
        dout: &Vec<T>,
        inp: &Vec<T>,
        saved: &Vec<T>,
        params: &Vec<T>,
        l: &BatchNorm,
        n: usize,
    ) {
        batchnorm::batchnorm_backward(dinp, grads, dout, inp, saved, params, l, n)
    }

    fn softmax_xent_forward_backward(
        &mut self,
        dlogits: &mut Vec<T>,
        stats: &mut Vec<T>,
        slot: usize,
        logits: &Vec<T>,
        labels: &Vec<u32>,
        n: usize,
        classes: usize,
        scale: f32,
    ) {
        loss::softmax_xent_forward_backward(dlogits, stats, slot, logits, labels, n, classes, scale)
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
        classes: usize,
    ) {
        loss::softmax_xent_forward(probs, probs_at, stats, slot, logits, labels, n, classes)
    }

    fn mse_forward_backward(
        &mut self,
        dout: &mut Vec<T>,
        stats: &mut Vec<T>,
        slot: usize,
        outputs: &Vec<T>,
        labels: &Vec<u32>,
        n: usize,
        classes: usize,
        scale: f32,
    ) {
        loss::mse_forward_backward(dout, stats, slot, outputs, labels, n, classes, scale)
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
        classes: usize,
    ) {
        loss::mse_forward(probs, probs_at, stats, slot, outputs, labels, n, classes)
    }

    fn adam_step(
        &mut self,
        params: &mut Vec<T>,
        grads: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        len: usize,
        a: &AdamStep,
    ) {
        optim::adam_step(params, grads, m, v, len, a)
    }

    fn sgd_step(&mut self, params: &mut Vec<T>, grads: &Vec<T>, velocity: &mut Vec<T>, len: usize, s: &SgdStep) {
        optim::sgd_step(params, grads, velocity, len, s)
    }
}
