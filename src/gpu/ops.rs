//! The GPU launchers: one per op, named like the op, its WGSL entry point and its CPU twin.
//! Each fills its kernel's parameter block (a struct mirroring the shader's `Params`, field
//! for field), computes the grid and records the dispatch.

use bytemuck::{Pod, Zeroable};

use super::{GpuBackend, GpuBuf};
use crate::backend::{AdamStep, Backend, Epilogue, Gather, SgdStep};
use crate::error::Result;
use crate::model::{Act, BatchNorm, Conv2d, Dense, Pool};

fn act_code(act: Option<Act>) -> u32 {
    act.map_or(0, |a| a as u32)
}

/// shaders/activation.wgsl
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ActParams {
    len: u32,
    act: u32,
    scale: f32,
}

/// shaders/dropout.wgsl
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DropoutParams {
    len: u32,
    key: u32,
    p: f32,
    scale: f32,
}

/// shaders/optim.wgsl
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct OptimParams {
    len: u32,
    step: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    inv_sqrt_c2: f32,
    decay: f32,
    momentum: f32,
}

/// shaders/loss.wgsl
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LossParams {
    n: u32,
    classes: u32,
    slot: u32,
    scale: f32,
    probs_at: u32,
}

/// shaders/pool.wgsl
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PoolParams {
    planes: u32,
    h_in: u32,
    w_in: u32,
    h_out: u32,
    w_out: u32,
    size: u32,
    stride: u32,
}

/// shaders/data.wgsl
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DataParams {
    mean: [f32; 4],
    std_dev: [f32; 4],
    start: u32,
    n: u32,
    channels: u32,
    height: u32,
    width: u32,
    augment: u32,
    key: u32,
    chance: f32,
    zoom_lo: f32,
    zoom_hi: f32,
    rotate: f32,
    shift: f32,
    flip: u32,
    first: u32,
    count: u32,
}

/// shaders/batchnorm.wgsl
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BnParams {
    n: u32,
    c: u32,
    hw: u32,
    eps: f32,
    momentum: f32,
    gamma_off: u32,
    beta_off: u32,
    mean_off: u32,
    var_off: u32,
    train: u32,
}

/// shaders/gemm.wgsl
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct GemmParams {
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
    has_dropout: u32,
    drop_key: u32,
    drop_p: f32,
    drop_scale: f32,
}

/// shaders/conv2d.wgsl
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ConvParams {
    n: u32,
    c_in: u32,
    h_in: u32,
    w_in: u32,
    c_out: u32,
    h_out: u32,
    w_out: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad_h: u32,
    pad_w: u32,
    w_off: u32,
    b_off: u32,
    has_bias: u32,
    act: u32,
    tiles_n: u32,
    tiles_m: u32,
    split_len: u32,
    c_off: u32,
    has_dropout: u32,
    drop_key: u32,
    drop_p: f32,
    drop_scale: f32,
}

/// shaders/reduce.wgsl
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReduceParams {
    n: u32,
    c: u32,
    p: u32,
    len: u32,
    dst_off: u32,
}

/// Output tile edge of the GEMM kernels (TM = TN in gemm.wgsl and conv2d.wgsl).
const TILE: usize = 64;
/// K step of the GEMM kernels; split-K chunks are multiples of it.
const TK: usize = 16;

/// (has_dropout, key, p, scale) of an epilogue, as the shaders take them.
fn dropout_fields(epi: &Epilogue) -> (u32, u32, f32, f32) {
    epi.dropout.map_or((0, 0, 0.0, 1.0), |(p, key)| (1, key, p, 1.0 / (1.0 - p)))
}

fn conv_params(l: &Conv2d, n: usize, epi: Epilogue, tiles_n: usize, tiles_m: usize) -> ConvParams {
    let (has_dropout, drop_key, drop_p, drop_scale) = dropout_fields(&epi);
    ConvParams {
        n: n as u32,
        c_in: l.c_in as u32,
        h_in: l.h_in as u32,
        w_in: l.w_in as u32,
        c_out: l.c_out as u32,
        h_out: l.h_out as u32,
        w_out: l.w_out as u32,
        kh: l.kh as u32,
        kw: l.kw as u32,
        stride: l.stride as u32,
        pad_h: l.pad_h as u32,
        pad_w: l.pad_w as u32,
        w_off: l.w_off as u32,
        b_off: l.b_off.unwrap_or(0) as u32,
        has_bias: l.b_off.is_some() as u32,
        act: act_code(epi.act),
        tiles_n: tiles_n as u32,
        tiles_m: tiles_m as u32,
        split_len: 0,
        c_off: 0,
        has_dropout,
        drop_key,
        drop_p,
        drop_scale,
    }
}

impl GpuBackend {
    fn bias_backward(&mut self, grads: &GpuBuf, dout: &GpuBuf, n: usize, c: usize, p: usize, dst_off: usize) {
        let prm = ReduceParams { n: n as u32, c: c as u32, p: p as u32, len: 0, dst_off: dst_off as u32 };
        self.dispatch("bias_backward", &[dout, grads], &prm, [c as u32, 1, 1]);
    }

    /// A dense-layer product: tiled, or (few rows or columns, long K) one workgroup per output.
    fn gemm(&mut self, entry: &'static str, bufs: [&GpuBuf; 3], mut prm: GemmParams) {
        if self.coop.is_some() {
            // --precision mixed: every dense product on the cooperative-matrix kernel
            // (src/gpu/coop.rs), which takes this parameter block as it is.
            self.coop_dispatch(bufs, prm.m, prm.n, &prm);
            return;
        }
        if prm.m.min(prm.n) < 16 && prm.k >= 64 {
            let grid = self.tile_grid((prm.m * prm.n) as usize, 1);
            self.dispatch("gemm_skinny", &bufs, &prm, grid);
            return;
        }
        let tiles_n = (prm.n as usize).div_ceil(TILE);
        prm.tiles_n = tiles_n as u32;
        let grid = self.tile_grid(tiles_n, (prm.m as usize).div_ceil(TILE));
        self.dispatch(entry, &bufs, &prm, grid);
    }
}

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

    fn download(&mut self, src: &GpuBuf, len: usize) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_back(src, len)?))
    }

    fn download_u32(&mut self, src: &GpuBuf, len: usize) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_back(src, len)?))
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
        let (aug, key) = match g.augment {
            Some((a, key)) => (Some(a), key),
            None => (None, 0),
        };
        let prm = DataParams {
            mean: g.mean,
            std_dev: g.std,
            start: g.start as u32,
            n: g.n as u32,
            channels: g.channels as u32,
            height: g.height as u32,
            width: g.width as u32,
            augment: aug.is_some() as u32,
            key,
            chance: aug.map_or(0.0, |a| a.chance),
            zoom_lo: aug.map_or(1.0, |a| a.zoom[0]),
            zoom_hi: aug.map_or(1.0, |a| a.zoom[1]),
            rotate: aug.map_or(0.0, |a| a.rotate.to_radians()),
            shift: aug.map_or(0.0, |a| a.shift),
            flip: aug.is_some_and(|a| a.flip) as u32,
            first: g.first as u32,
            count: g.count as u32,
        };
        let grid = self.grid(g.n * g.channels * g.height * g.width);
        self.dispatch("gather_batch", &[images, labels, perm, x, y], &prm, grid);
    }

    fn conv2d_forward(&mut self, out: &mut GpuBuf, inp: &GpuBuf, params: &GpuBuf, l: &Conv2d, n: usize, epi: Epilogue) {
        let tiles_n = (n * l.h_out * l.w_out).div_ceil(TILE);
        let tiles_m = l.c_out.div_ceil(TILE);
        let prm = conv_params(l, n, epi, tiles_n, tiles_m);
        let grid = self.tile_grid(tiles_n, tiles_m);
        self.dispatch("conv2d_forward", &[params, inp, out], &prm, grid);
    }

    fn conv2d_backward_input(&mut self, dinp: &mut GpuBuf, dout: &GpuBuf, params: &GpuBuf, l: &Conv2d, n: usize) {
        let tiles_n = (n * l.h_in * l.w_in).div_ceil(TILE);
        let tiles_m = l.c_in.div_ceil(TILE);
        let prm = conv_params(l, n, Epilogue::default(), tiles_n, tiles_m);
        let grid = self.tile_grid(tiles_n, tiles_m);
        self.dispatch("conv2d_backward_input", &[params, dout, dinp], &prm, grid);
    }

    fn conv2d_backward_weight(&mut self, grads: &mut GpuBuf, dout: &GpuBuf, inp: &GpuBuf, l: &Conv2d, n: usize) {
        // dW (c_out, K) sums over n * h_out * w_out positions. Few output tiles and a long
        // sum: split the sum into chunks whose partials are added in order afterwards.
        let (m, k) = (l.c_out, l.c_in * l.kh * l.kw);
        let reduction = n * l.h_out * l.w_out;
        let tiles_n = k.div_ceil(TILE);
        let tiles_m = m.div_ceil(TILE);
        let tiles = tiles_n * tiles_m;
        let splits = (256 / tiles).clamp(1, reduction.div_ceil(256).max(1)).min(64);
        let split_len = reduction.div_ceil(splits).div_ceil(TK) * TK;
        let splits = reduction.div_ceil(split_len);
        let mut prm = conv_params(l, n, Epilogue::default(), tiles_n, tiles_m);
        prm.split_len = split_len as u32;
        let grid = self.tile_grid(tiles_n, tiles_m * splits);
        if splits == 1 {
            prm.c_off = l.w_off as u32;
            self.dispatch("conv2d_backward_weight", &[dout, inp, grads], &prm, grid);
        } else {
            let Some(scratch) = self.scratch(splits * m * k) else { return };
            // The scratch buffer lives in self; its handle is cloned to record the dispatches.
            let scratch = GpuBuf { buf: scratch.buf.clone(), len: scratch.len, id: scratch.id, mem: None };
            self.dispatch("conv2d_backward_weight", &[dout, inp, &scratch], &prm, grid);
            let red = ReduceParams { n: splits as u32, c: 0, p: 0, len: (m * k) as u32, dst_off: l.w_off as u32 };
            let grid = self.grid(m * k);
            self.dispatch("sum_partials", &[&scratch, grads], &red, grid);
        }
        if let Some(b) = l.b_off {
            self.bias_backward(grads, dout, n, l.c_out, l.h_out * l.w_out, b);
        }
    }

    fn dense_forward(&mut self, out: &mut GpuBuf, inp: &GpuBuf, params: &GpuBuf, l: &Dense, n: usize, epi: Epilogue) {
        // out (n, n_out) = inp (n, n_in) * W^T: B(k = i, j = o) = W[o * n_in + i].
        let (has_dropout, drop_key, drop_p, drop_scale) = dropout_fields(&epi);
        let prm = GemmParams {
            m: n as u32,
            n: l.n_out as u32,
            k: l.n_in as u32,
            a_rs: l.n_in as u32,
            a_cs: 1,
            b_off: l.w_off as u32,
            b_rs: 1,
            b_cs: l.n_in as u32,
            c_rs: l.n_out as u32,
            bias_off: l.b_off.unwrap_or(0) as u32,
            has_bias: l.b_off.is_some() as u32,
            act: act_code(epi.act),
            has_dropout,
            drop_key,
            drop_p,
            drop_scale,
            ..Default::default()
        };
        self.gemm("dense_forward", [inp, params, out], prm);
    }

    fn dense_backward_input(&mut self, dinp: &mut GpuBuf, dout: &GpuBuf, params: &GpuBuf, l: &Dense, n: usize) {
        // dinp (n, n_in) = dout (n, n_out) * W (n_out, n_in)
        let prm = GemmParams {
            m: n as u32,
            n: l.n_in as u32,
            k: l.n_out as u32,
            a_rs: l.n_out as u32,
            a_cs: 1,
            b_off: l.w_off as u32,
            b_rs: l.n_in as u32,
            b_cs: 1,
            c_rs: l.n_in as u32,
            ..Default::default()
        };
        self.gemm("dense_backward_input", [dout, params, dinp], prm);
    }

    fn dense_backward_weight(&mut self, grads: &mut GpuBuf, dout: &GpuBuf, inp: &GpuBuf, l: &Dense, n: usize) {
        // dW (n_out, n_in) = dout^T (n_out, n) * inp (n, n_in)
        let prm = GemmParams {
            m: l.n_out as u32,
            n: l.n_in as u32,
            k: n as u32,
            a_rs: 1,
            a_cs: l.n_out as u32,
            b_rs: l.n_in as u32,
            b_cs: 1,
            c_off: l.w_off as u32,
            c_rs: l.n_in as u32,
            ..Default::default()
        };
        self.gemm("dense_backward_weight", [dout, inp, grads], prm);
        if let Some(b) = l.b_off {
            self.bias_backward(grads, dout, n, l.n_out, 1, b);
        }
    }

    fn activation_forward(&mut self, out: &mut GpuBuf, inp: &GpuBuf, len: usize, act: Act) {
        let grid = self.grid(len);
        let prm = ActParams { len: len as u32, act: act as u32, scale: 1.0 };
        self.dispatch("activation_forward", &[inp, out], &prm, grid);
    }

    fn activation_backward(
        &mut self,
        dinp: &mut GpuBuf,
        dout: &GpuBuf,
        out: &GpuBuf,
        len: usize,
        act: Act,
        scale: f32,
    ) {
        let grid = self.grid(len);
        let prm = ActParams { len: len as u32, act: act as u32, scale };
        self.dispatch("activation_backward", &[dout, out, dinp], &prm, grid);
    }

    fn maxpool_forward(&mut self, out: &mut GpuBuf, argmax: &mut GpuBuf, inp: &GpuBuf, l: &Pool, n: usize) {
        let prm = pool_params(l, n);
        let grid = self.grid(n * l.out_len());
        self.dispatch("maxpool_forward", &[inp, argmax, out], &prm, grid);
    }

    fn maxpool_backward(&mut self, dinp: &mut GpuBuf, dout: &GpuBuf, argmax: &GpuBuf, l: &Pool, n: usize) {
        let prm = pool_params(l, n);
        let grid = self.grid(n * l.in_len());
        self.dispatch("maxpool_backward", &[dout, argmax, dinp], &prm, grid);
    }

    fn dropout_forward(&mut self, out: &mut GpuBuf, inp: &GpuBuf, len: usize, p: f32, key: u32) {
        let prm = DropoutParams { len: len as u32, key, p, scale: 1.0 / (1.0 - p) };
        let grid = self.grid(len);
        self.dispatch("dropout_forward", &[inp, out], &prm, grid);
    }

    fn dropout_backward(&mut self, dinp: &mut GpuBuf, dout: &GpuBuf, len: usize, p: f32, key: u32) {
        let prm = DropoutParams { len: len as u32, key, p, scale: 1.0 / (1.0 - p) };
        let grid = self.grid(len);
        self.dispatch("dropout_backward", &[dout, dinp], &prm, grid);
    }

    fn batchnorm_forward(
        &mut self,
        out: &mut GpuBuf,
        saved: &mut GpuBuf,
        state: &mut GpuBuf,
        inp: &GpuBuf,
        params: &GpuBuf,
        l: &BatchNorm,
        n: usize,
        train: bool,
    ) {
        let prm = bn_params(l, n, train);
        if train {
            self.dispatch("batchnorm_stats", &[inp, saved, state], &prm, [l.c as u32, 1, 1]);
        }
        let grid = self.grid(n * l.c * l.hw);
        self.dispatch("batchnorm_forward", &[inp, params, saved, state, out], &prm, grid);
    }

    fn batchnorm_backward(
        &mut self,
        dinp: &mut GpuBuf,
        grads: &mut GpuBuf,
        dout: &GpuBuf,
        inp: &GpuBuf,
        saved: &GpuBuf,
        params: &GpuBuf,
        l: &BatchNorm,
        n: usize,
    ) {
        let prm = bn_params(l, n, true);
        self.dispatch("batchnorm_backward_reduce", &[dout, inp, saved, grads], &prm, [l.c as u32, 1, 1]);
        let grid = self.grid(n * l.c * l.hw);
        self.dispatch("batchnorm_backward", &[dout, inp, saved, grads, dinp, params], &prm, grid);
    }

    fn softmax_xent_forward_backward(
        &mut self,
        dlogits: &mut GpuBuf,
        stats: &mut GpuBuf,
        slot: usize,
        logits: &GpuBuf,
        labels: &GpuBuf,
        n: usize,
        classes: usize,
        scale: f32,
    ) {
        let prm = LossParams { n: n as u32, classes: classes as u32, slot: slot as u32, scale, probs_at: 0 };
        self.dispatch("softmax_xent_forward_backward", &[logits, labels, dlogits, stats], &prm, [1, 1, 1]);
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
        classes: usize,
    ) {
        let prm = LossParams {
            n: n as u32,
            classes: classes as u32,
            slot: slot as u32,
            scale: 1.0,
            probs_at: probs_at as u32,
        };
        self.dispatch("softmax_xent_forward", &[logits, labels, probs, stats], &prm, [1, 1, 1]);
    }

    fn mse_forward_backward(
        &mut self,
        dout: &mut GpuBuf,
        stats: &mut GpuBuf,
        slot: usize,
        outputs: &GpuBuf,
        labels: &GpuBuf,
        n: usize,
        classes: usize,
        scale: f32,
    ) {
        let prm = LossParams { n: n as u32, classes: classes as u32, slot: slot as u32, scale, probs_at: 0 };
        self.dispatch("mse_forward_backward", &[outputs, labels, dout, stats], &prm, [1, 1, 1]);
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
        classes: usize,
    ) {
        let prm = LossParams {
            n: n as u32,
            classes: classes as u32,
            slot: slot as u32,
            scale: 1.0,
            probs_at: probs_at as u32,
        };
        self.dispatch("mse_forward", &[outputs, labels, probs, stats], &prm, [1, 1, 1]);
    }

    fn adam_step(
        &mut self,
        params: &mut GpuBuf,
        grads: &GpuBuf,
        m: &mut GpuBuf,
        v: &mut GpuBuf,
        len: usize,
        a: &AdamStep,
    ) {
        let (c1, c2) = a.corrections();
        let prm = OptimParams {
            len: len as u32,
            step: a.lr / c1,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.eps,
            inv_sqrt_c2: 1.0 / c2.sqrt(),
            decay: 1.0 - a.lr * a.weight_decay,
            momentum: 0.0,
        };
        let grid = self.grid(len);
        self.dispatch("adam_step", &[grads, params, m, v], &prm, grid);
    }

    fn sgd_step(&mut self, params: &mut GpuBuf, grads: &GpuBuf, velocity: &mut GpuBuf, len: usize, s: &SgdStep) {
        let prm = OptimParams {
            len: len as u32,
            step: s.lr,
            beta1: 0.0,
            beta2: 0.0,
            eps: 0.0,
            inv_sqrt_c2: 0.0,
            decay: 1.0,
            momentum: s.momentum,
        };
        let grid = self.grid(len);
        self.dispatch("sgd_step", &[grads, params, velocity], &prm, grid);
    }

    fn ema_update(&mut self, avg: &mut GpuBuf, src: &GpuBuf, len: usize, decay: f32) {
        let prm = OptimParams {
            len: len as u32,
            step: 0.0,
            beta1: decay,
            beta2: 0.0,
            eps: 0.0,
            inv_sqrt_c2: 0.0,
            decay: 1.0,
            momentum: 0.0,
        };
        let grid = self.grid(len);
        self.dispatch("ema_update", &[src, avg], &prm, grid);
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
    }
}

fn bn_params(l: &BatchNorm, n: usize, train: bool) -> BnParams {
    BnParams {
        n: n as u32,
        c: l.c as u32,
        hw: l.hw as u32,
        eps: l.eps,
        momentum: l.momentum,
        gamma_off: l.gamma_off as u32,
        beta_off: l.beta_off as u32,
        mean_off: l.mean_off as u32,
        var_off: l.var_off as u32,
        train: train as u32,
    }
}
