//! `Backend` for the GPU: buffers and transfers here, every op a call to its launcher in
//! `kernels/<family>.rs` (named like the op).

use super::kernels::{activation, batchnorm, conv2d, data, dropout, gemm, loss, optim, pool, residual};
use super::{GpuBackend, GpuBuf};
use crate::backend::{AdamStep, Backend, Dropout, EmaStep, Epilogue, Gather, SgdStep, Xent};
use crate::error::Result;
use crate::model::{Act, AvgPool, BatchNorm, Conv2d, Dense, Pool};

impl Backend for GpuBackend {
    type Buf = GpuBuf;
    type IBuf = GpuBuf;

    fn name(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    fn host_counters(&self) -> Option<(u64, f64)> {
        Some((self.dispatches, self.host_seconds))
    }

    fn max_buffer_len(&self) -> usize {
        (self.limits.max_buffer_size.min(self.limits.max_storage_buffer_binding_size) / 4) as usize
    }

    fn alloc(&mut self, len: usize) -> Result<GpuBuf> {
        self.new_buffer(len)
    }

    fn alloc_u32(&mut self, len: usize) -> Result<GpuBuf> {
        self.new_buffer(len)
    }

    fn upload(&mut self, dst: &mut GpuBuf, data: &[f32]) -> Result<()> {
        self.write(dst, bytemuck::cast_slice(data))
    }

    fn upload_u32(&mut self, dst: &mut GpuBuf, data: &[u32]) -> Result<()> {
        self.write(dst, bytemuck::cast_slice(data))
    }

    async fn download(&mut self, src: &GpuBuf, len: usize) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_back(src, len).await?))
    }

    async fn download_u32(&mut self, src: &GpuBuf, len: usize) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_back(src, len).await?))
    }

    fn flush(&mut self) -> Result<()> {
        self.submit()
    }

    fn gather_batch(
        &mut self,
        x: &mut GpuBuf,
        y: &mut GpuBuf,
        images: &GpuBuf,
        labels: &GpuBuf,
        perm: &GpuBuf,
        g: &Gather,
    ) {
        data::gather_batch(self, x, y, images, labels, perm, g)
    }

    fn conv2d_forward(
        &mut self,
        out: &mut GpuBuf,
        inp: &GpuBuf,
        params: &GpuBuf,
        table: &GpuBuf,
        l: &Conv2d,
        n: usize,
        epi: Epilogue,
    ) {
        conv2d::conv2d_forward(self, out, inp, params, table, l, n, epi)
    }

    fn conv2d_backward_input(&mut self, dinp: &mut GpuBuf, dout: &GpuBuf, params: &GpuBuf, l: &Conv2d, n: usize) {
        conv2d::conv2d_backward_input(self, dinp, dout, params, l, n)
    }

    fn conv2d_backward_weight(&mut self, grads: &mut GpuBuf, dout: &GpuBuf, inp: &GpuBuf, l: &Conv2d, n: usize) {
        conv2d::conv2d_backward_weight(self, grads, dout, inp, l, n)
    }

    fn dense_forward(
        &mut self,
        out: &mut GpuBuf,
        inp: &GpuBuf,
        params: &GpuBuf,
        table: &GpuBuf,
        l: &Dense,
        n: usize,
        epi: Epilogue,
    ) {
        gemm::dense_forward(self, out, inp, params, table, l, n, epi)
    }

    fn dense_backward_input(&mut self, dinp: &mut GpuBuf, dout: &GpuBuf, params: &GpuBuf, l: &Dense, n: usize) {
        gemm::dense_backward_input(self, dinp, dout, params, l, n)
    }

    fn dense_backward_weight(&mut self, grads: &mut GpuBuf, dout: &GpuBuf, inp: &GpuBuf, l: &Dense, n: usize) {
        gemm::dense_backward_weight(self, grads, dout, inp, l, n)
    }

    fn activation_forward(&mut self, out: &mut GpuBuf, inp: &GpuBuf, len: usize, act: Act) {
        activation::activation_forward(self, out, inp, len, act)
    }

    fn activation_backward(
        &mut self,
        dinp: &mut GpuBuf,
        dout: &GpuBuf,
        out: &GpuBuf,
        table: &GpuBuf,
        len: usize,
        act: Act,
        dropout: Option<Dropout>,
    ) {
        activation::activation_backward(self, dinp, dout, out, table, len, act, dropout)
    }

    fn residual_add(&mut self, out: &mut GpuBuf, a: &GpuBuf, b: &GpuBuf, len: usize) {
        residual::residual_add(self, out, a, b, len)
    }

    fn avgpool_forward(&mut self, out: &mut GpuBuf, inp: &GpuBuf, l: &AvgPool, n: usize) {
        pool::avgpool_forward(self, out, inp, l, n)
    }

    fn avgpool_backward(&mut self, dinp: &mut GpuBuf, dout: &GpuBuf, l: &AvgPool, n: usize) {
        pool::avgpool_backward(self, dinp, dout, l, n)
    }

    fn maxpool_forward(&mut self, out: &mut GpuBuf, argmax: &mut GpuBuf, inp: &GpuBuf, l: &Pool, n: usize) {
        pool::maxpool_forward(self, out, argmax, inp, l, n)
    }

    fn maxpool_backward(&mut self, dinp: &mut GpuBuf, dout: &GpuBuf, argmax: &GpuBuf, l: &Pool, n: usize) {
        pool::maxpool_backward(self, dinp, dout, argmax, l, n)
    }

    fn dropout_forward(&mut self, out: &mut GpuBuf, inp: &GpuBuf, table: &GpuBuf, len: usize, d: &Dropout) {
        dropout::dropout_forward(self, out, inp, table, len, d)
    }

    fn dropout_backward(&mut self, dinp: &mut GpuBuf, dout: &GpuBuf, table: &GpuBuf, len: usize, d: &Dropout) {
        dropout::dropout_backward(self, dinp, dout, table, len, d)
    }

    fn batchnorm_forward(
        &mut self,
        out: &mut GpuBuf,
        saved: &mut GpuBuf,
        state: &mut GpuBuf,
        inp: &GpuBuf,
        params: &GpuBuf,
        table: &GpuBuf,
        l: &BatchNorm,
        n: usize,
        train: bool,
        epi: Epilogue,
    ) {
        batchnorm::batchnorm_forward(self, out, saved, state, inp, params, table, l, n, train, epi)
    }

    fn batchnorm_backward(
        &mut self,
        dinp: &mut GpuBuf,
        grads: &mut GpuBuf,
        dout: &GpuBuf,
        inp: &GpuBuf,
        out: &GpuBuf,
        saved: &GpuBuf,
        params: &GpuBuf,
        table: &GpuBuf,
        l: &BatchNorm,
        n: usize,
        epi: Epilogue,
    ) {
        batchnorm::batchnorm_backward(self, dinp, grads, dout, inp, out, saved, params, table, l, n, epi)
    }

    fn softmax_xent_forward_backward(
        &mut self,
        dlogits: &mut GpuBuf,
        stats: &mut GpuBuf,
        slot: usize,
        logits: &GpuBuf,
        labels: &GpuBuf,
        table: &GpuBuf,
        n: usize,
        x: &Xent,
    ) {
        loss::softmax_xent_forward_backward(self, dlogits, stats, slot, logits, labels, table, n, x)
    }

    fn softmax_xent_forward(
        &mut self,
        probs: &mut GpuBuf,
        probs_at: usize,
        stats: &mut GpuBuf,
        slot: usize,
        logits: &GpuBuf,
        labels: &GpuBuf,
        n: usize,
        members: usize,
        classes: usize,
    ) {
        loss::softmax_xent_forward(self, probs, probs_at, stats, slot, logits, labels, n, members, classes)
    }

    fn mse_forward_backward(
        &mut self,
        dout: &mut GpuBuf,
        stats: &mut GpuBuf,
        slot: usize,
        outputs: &GpuBuf,
        labels: &GpuBuf,
        n: usize,
        members: usize,
        classes: usize,
        scale: f32,
    ) {
        loss::mse_forward_backward(self, dout, stats, slot, outputs, labels, n, members, classes, scale)
    }

    fn mse_forward(
        &mut self,
        probs: &mut GpuBuf,
        probs_at: usize,
        stats: &mut GpuBuf,
        slot: usize,
        outputs: &GpuBuf,
        labels: &GpuBuf,
        n: usize,
        members: usize,
        classes: usize,
    ) {
        loss::mse_forward(self, probs, probs_at, stats, slot, outputs, labels, n, members, classes)
    }

    fn adam_step(
        &mut self,
        params: &mut GpuBuf,
        grads: &GpuBuf,
        m: &mut GpuBuf,
        v: &mut GpuBuf,
        table: &GpuBuf,
        len: usize,
        a: &AdamStep,
    ) {
        optim::adam_step(self, params, grads, m, v, table, len, a)
    }

    fn sgd_step(
        &mut self,
        params: &mut GpuBuf,
        grads: &GpuBuf,
        velocity: &mut GpuBuf,
        table: &GpuBuf,
        len: usize,
        s: &SgdStep,
    ) {
        optim::sgd_step(self, params, grads, velocity, table, len, s)
    }

    fn ema_update(&mut self, avg: &mut GpuBuf, src: &GpuBuf, table: &GpuBuf, len: usize, e: &EmaStep) {
        optim::ema_update(self, avg, src, table, len, e)
    }
}
