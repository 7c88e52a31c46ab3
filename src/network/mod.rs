//! A model on a backend: its buffers, and the forward, backward and optimizer step as
//! sequences of backend ops. Generic over `Backend`, so the CPU and GPU run the same plan.
//!
//! Activation buffers are indexed by layer boundary: `acts[k]` holds the input of layer k
//! (acts[0] is the batch). An activation right after a conv or dense layer is fused into it
//! (written straight to the activation's output), and so is a dropout after a relu in
//! training. Flatten needs no buffer (NCHW is already C, H, W order), and in evaluation
//! dropout is skipped, so a plan records which boundary each op reads.
//!
//! Gradients need far less: the backward of op k reads the gradient of its output and writes
//! that of its input (op k-1's output), with a pre-activation gradient in between for fused
//! activations. So three buffers serve them all: op k's output gradient is `grad[k % 2]`,
//! its input's `grad[(k + 1) % 2]`, the pre-activation's `grad[2]`.

use crate::backend::{AdamStep, Backend, Epilogue, Gather, MAX_CHANNELS, SgdStep};
use crate::data::augment::Augment;
use crate::error::{Error, Result};
use crate::model::spec::{BiasCorrection, Loss, Optimizer};
use crate::model::{Act, Arch, Layer};
use crate::rng;

/// One op of a plan: layer `layer` reads boundary `inp` and writes boundary `out`. A conv or
/// dense op may carry the activation after it (`fused`) and, in training, a dropout after a
/// relu (`dropout`, that layer's index); its pre-activation gradient then goes to `pre`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    layer: usize,
    inp: usize,
    out: usize,
    pre: usize,
    fused: Option<Act>,
    dropout: Option<usize>,
}

fn plan(arch: &Arch, train: bool) -> (Vec<Node>, usize) {
    let layers = &arch.layers;
    let mut nodes = Vec::new();
    let mut cur = 0;
    let mut i = 0;
    while i < layers.len() {
        let mut node = Node { layer: i, inp: cur, out: i + 1, pre: i + 1, fused: None, dropout: None };
        match layers[i] {
            Layer::Flatten => {
                i += 1;
                continue;
            }
            Layer::Dropout { .. } if !train => {
                i += 1;
                continue;
            }
            Layer::Conv2d(_) | Layer::Dense(_) => {
                if let Some(&Layer::Act(a)) = layers.get(i + 1) {
                    node.fused = Some(a);
                    node.out = i + 2;
                    if train && a == Act::Relu && matches!(layers.get(i + 2), Some(Layer::Dropout { .. })) {
                        node.dropout = Some(i + 2);
                        node.out = i + 3;
                    }
                }
            }
            _ => {}
        }
        i = node.out;
        if !train {
            // Evaluation skips dropout: write straight into the buffer the training plan
            // writes after it, so both plans share their buffers.
            while matches!(layers.get(node.out), Some(Layer::Dropout { .. })) {
                node.out += 1;
            }
        }
        nodes.push(node);
        cur = node.out;
    }
    (nodes, cur)
}

/// Fails, before anything is allocated, when a model with batches of up to `cap` examples
/// cannot fit: its parameters with their gradients, optimizer state and average (and a host
/// copy), and, on a backend in host memory, every activation and gradient buffer of a batch,
/// against the host's available memory. (A GPU's per-buffer limit is checked by
/// `Network::new`; its total memory is not something wgpu reports, and running out of it is
/// reported by wgpu as one error.)
pub fn check_fits<B: Backend>(b: &B, arch: &Arch, cap: usize) -> Result<()> {
    // Parameters: values, gradients, Adam's two moments and an average in the backend's
    // buffers, and the host copies made at initialisation and saving: at most seven copies on
    // the host with a CPU backend, three with a GPU.
    let copies = if b.allocates_on_host() { 7 } else { 3 };
    let params = 4 * copies * (arch.n_params as u64 + arch.n_state as u64);
    crate::memory::check_host(
        &format!("the model's {} parameters with their gradients and optimizer state", arch.param_count()),
        params,
        "use fewer filters or units",
    )?;
    if b.allocates_on_host() {
        // Every layer boundary's activations, and three gradient buffers of the largest.
        let per_example: u64 = arch.shapes.iter().map(|s| s.len() as u64).sum::<u64>()
            + 3 * arch.shapes.iter().map(|s| s.len() as u64).max().unwrap_or(0);
        let (widest, at) = arch.shapes.iter().enumerate().map(|(i, s)| (s.len(), i)).max().unwrap_or((0, 0));
        crate::memory::check_host(
            &format!(
                "the activations of a batch of {cap} ({} values per example; the widest, after layer {}, {})",
                per_example,
                at.saturating_sub(1),
                arch.shapes[at]
            ),
            4 * per_example.saturating_mul(cap as u64) + params,
            &format!(
                "use a smaller --batch or fewer filters (the widest layer alone holds {widest} values per example)"
            ),
        )?;
    }
    Ok(())
}

/// `(&mut v[a], &v[b])` for a != b.
fn split<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &T) {
    assert_ne!(a, b, "an op cannot write the buffer it reads");
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &lo[b])
    }
}

/// Images `first..first + count` of a data set, in one device buffer.
pub struct Shard<B: Backend> {
    pub images: B::IBuf,
    pub first: usize,
    pub count: usize,
}

/// The data set on the device: image bytes (packed four to a u32, in as many buffers as the
/// device's per-buffer limit needs), labels, and the identity order used for evaluation; or,
/// streamed, a window that training fills as it reaches each stretch of an epoch.
pub struct DeviceData<B: Backend> {
    pub shards: Vec<Shard<B>>,
    pub labels: B::IBuf,
    pub order: B::IBuf,
    pub len: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub stream: Option<Stream<B>>,
}

/// A data set kept in host memory, for one too large for the device: before a stretch of
/// steps the examples they will read (in the epoch's order) are copied to a window on the
/// device, in the same command stream as the steps (an upload is ordered after the work
/// recorded before it and does not wait for it), and the steps gather from the window.
pub struct Stream<B: Backend> {
    images: Vec<u8>,
    labels: Vec<u32>,
    window: Shard<B>,
    window_labels: B::IBuf,
    window_order: B::IBuf,
    /// Examples the window holds.
    pub capacity: usize,
    /// Permutation positions staged: start..start + len.
    staged: (usize, usize),
}

/// Bytes packed four to a u32, little-endian (the last word zero-padded): how images sit in
/// device buffers.
pub fn pack(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &byte)| w | (byte as u32) << (8 * i))).collect()
}

impl<B: Backend> DeviceData<B> {
    /// Uploads a data set once; training then only uploads a permutation per epoch. A data
    /// set larger than one buffer may be (128 MB per storage binding on many GPUs) is split
    /// into shards of whole images, each gathered from separately.
    pub fn upload(b: &mut B, ds: &crate::data::Dataset) -> Result<Self> {
        let max_words = b.max_buffer_len();
        let image_len = ds.image_len().max(1);
        let per_shard = (max_words.saturating_mul(4) / image_len).min(ds.len().max(1));
        if per_shard == 0 {
            return Err(Error::Data(format!(
                "one image ({} bytes) exceeds this device's {} MB per buffer",
                image_len,
                (max_words * 4) >> 20
            )));
        }
        if ds.len() > max_words {
            return Err(Error::Data(format!(
                "the data set's {} labels exceed this device's {} MB per buffer; use --limit",
                ds.len(),
                (max_words * 4) >> 20
            )));
        }
        let mut shards = Vec::new();
        let mut first = 0;
        while first < ds.len() || shards.is_empty() {
            let count = per_shard.min(ds.len() - first);
            let packed = pack(&ds.images[first * image_len..(first + count) * image_len]);
            let mut images = b.alloc_u32(packed.len().max(1))?;
            b.upload_u32(&mut images, &packed)?;
            shards.push(Shard { images, first, count });
            first += count;
        }
        let mut labels = b.alloc_u32(ds.len().max(1))?;
        b.upload_u32(&mut labels, &ds.labels)?;
        let mut order = b.alloc_u32(ds.len().max(1))?;
        b.upload_u32(&mut order, &(0..ds.len() as u32).collect::<Vec<_>>())?;
        Ok(DeviceData {
            shards,
            labels,
            order,
            len: ds.len(),
            channels: ds.channels,
            height: ds.height,
            width: ds.width,
            stream: None,
        })
    }

    /// A data set streamed from host memory through a window of `capacity` examples (at
    /// least one batch; see `Stream`). The stream keeps the data set's bytes: it is taken,
    /// not copied, since a set too large for the device may be most of the host's memory.
    pub fn upload_streamed(b: &mut B, ds: crate::data::Dataset, capacity: usize) -> Result<Self> {
        let image_len = ds.image_len().max(1);
        let capacity = capacity.clamp(1, ds.len().max(1));
        if (capacity * image_len).div_ceil(4) > b.max_buffer_len() {
            return Err(Error::Data(format!(
                "a streaming window of {capacity} pictures of {image_len} bytes exceeds this device's {} MB per buffer; use a smaller --batch",
                (b.max_buffer_len() * 4) >> 20
            )));
        }
        let window = Shard { images: b.alloc_u32((capacity * image_len).div_ceil(4))?, first: 0, count: 0 };
        let window_labels = b.alloc_u32(capacity)?;
        let mut window_order = b.alloc_u32(capacity)?;
        b.upload_u32(&mut window_order, &(0..capacity as u32).collect::<Vec<_>>())?;
        let (labels, order) = (b.alloc_u32(1)?, b.alloc_u32(1)?);
        let (len, channels, height, width) = (ds.len(), ds.channels, ds.height, ds.width);
        let stream = Stream {
            images: ds.images,
            labels: ds.labels,
            window,
            window_labels,
            window_order,
            capacity,
            staged: (0, 0),
        };
        Ok(DeviceData { shards: Vec::new(), labels, order, len, channels, height, width, stream: Some(stream) })
    }

    /// Streamed data: copies the examples at permutation positions `start..start + count`
    /// (`perm` on the host) to the window, in that order. Resident data: nothing to do.
    pub fn stage(&mut self, b: &mut B, perm: &[u32], start: usize, count: usize) -> Result<()> {
        let Some(st) = self.stream.as_mut() else { return Ok(()) };
        let count = count.min(st.capacity);
        let image_len = self.channels * self.height * self.width;
        let mut bytes = Vec::with_capacity(count * image_len);
        let mut labels = Vec::with_capacity(count);
        for &idx in &perm[start..start + count] {
            let idx = idx as usize;
            bytes.extend_from_slice(&st.images[idx * image_len..(idx + 1) * image_len]);
            labels.push(st.labels[idx]);
        }
        b.upload_u32(&mut st.window.images, &pack(&bytes))?;
        b.upload_u32(&mut st.window_labels, &labels)?;
        st.window.count = count;
        st.staged = (start, count);
        Ok(())
    }

    /// Gathers examples `perm[g.start..g.start + g.n]` into `x` and `y`, from every shard (or,
    /// streamed, from the window, which `stage` must have filled with those positions).
    pub fn gather(&self, b: &mut B, x: &mut B::Buf, y: &mut B::IBuf, perm: &B::IBuf, g: &Gather) {
        if let Some(st) = &self.stream {
            let (from, len) = st.staged;
            debug_assert!(g.start >= from && g.start + g.n <= from + len, "gather outside the staged window");
            let g = Gather { start: g.start - from, first: 0, count: len, ..*g };
            b.gather_batch(x, y, &st.window.images, &st.window_labels, &st.window_order, &g);
            return;
        }
        for s in &self.shards {
            let g = Gather { first: s.first, count: s.count, ..*g };
            b.gather_batch(x, y, &s.images, &self.labels, perm, &g);
        }
    }
}

/// Every boundary's activations and every max-pool's positions (see `debug_activations`).
pub type Activations = (Vec<Vec<f32>>, Vec<Vec<u32>>);

/// What one training step needs besides the buffers.
#[derive(Debug, Clone, Copy)]
pub struct StepArgs {
    /// First position of this batch in the epoch's permutation.
    pub start: usize,
    pub n: usize,
    /// Batch index within the epoch (its stats slot).
    pub slot: usize,
    /// Steps taken before this one in the whole run (drives Adam's t and the RNG keys).
    pub global_step: u32,
    /// The 1-based epoch this step belongs to (Adam's t under `bias_correction = "epoch"`).
    pub epoch: u32,
    pub lr: f32,
    pub seed: u64,
    pub augment: Option<Augment>,
}

/// Loss, accuracy and per-example scores of an evaluation.
#[derive(Debug, Clone)]
pub struct EvalResult {
    pub loss: f64,
    pub correct: usize,
    pub count: usize,
    /// (count, classes): softmax probabilities (cross-entropy) or raw outputs (MSE).
    pub scores: Vec<f32>,
}

impl EvalResult {
    pub fn accuracy(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.correct as f64 / self.count as f64 }
    }
}

pub struct Network<B: Backend> {
    pub arch: Arch,
    /// Largest batch the buffers hold.
    pub cap: usize,
    pub params: B::Buf,
    pub grads: B::Buf,
    pub state: B::Buf,
    /// Adam's m and v, or SGD's velocity (in `opt_m`).
    pub opt_m: B::Buf,
    pub opt_v: B::Buf,
    /// The recipe's weight averaging (`ema`): decay per step, and the averaged parameters and
    /// batch-norm statistics (empty without it). `swap_average` trades them with the live ones.
    ema: Option<f32>,
    avg_params: B::Buf,
    avg_state: B::Buf,
    averaged: bool,
    acts: Vec<B::Buf>,
    grad: Vec<B::Buf>,
    argmax: Vec<B::IBuf>,
    saved: Vec<B::Buf>,
    labels: B::IBuf,
    train_plan: Vec<Node>,
    train_out: usize,
    eval_plan: Vec<Node>,
    eval_out: usize,
    loss: Loss,
    /// Per input channel: inputs are (pixel/255 - mean) / std.
    mean: [f32; MAX_CHANNELS],
    std: [f32; MAX_CHANNELS],
    optimizer: Optimizer,
}

impl<B: Backend> Network<B> {
    /// Allocates every buffer for batches of up to `cap` examples and uploads the parameters.
    pub fn new(b: &mut B, arch: Arch, cap: usize, params: &[f32], state: &[f32]) -> Result<Self> {
        if cap == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        check_fits(b, &arch, cap)?;
        let (train_plan, train_out) = plan(&arch, true);
        let (eval_plan, eval_out) = plan(&arch, false);
        let nb = arch.layers.len() + 1;
        let mut need_act = vec![false; nb];
        need_act[0] = true;
        for node in train_plan.iter().chain(&eval_plan) {
            need_act[node.inp] = true;
            need_act[node.out] = true;
        }
        // Per example, the largest gradient each of the three gradient buffers holds.
        let mut grad_len = [0usize; 3];
        for (k, node) in train_plan.iter().enumerate() {
            grad_len[k % 2] = grad_len[k % 2].max(arch.shapes[node.out].len());
            if node.inp != 0 {
                grad_len[(k + 1) % 2] = grad_len[(k + 1) % 2].max(arch.shapes[node.inp].len());
            }
            if node.fused.is_some() {
                grad_len[2] = grad_len[2].max(arch.shapes[node.pre].len());
            }
        }
        // Check the device's per-buffer limit before allocating anything.
        let max = b.max_buffer_len();
        for k in (0..nb).filter(|&k| need_act[k]) {
            let len = cap * arch.shapes[k].len();
            if len > max {
                return Err(Error::Config(format!(
                    "batch {cap} needs {} MB for the activations after layer {k} ({} per example), more than the {} MB \
                     this device allows per buffer; use a smaller --batch (at most {})",
                    (len * 4) >> 20,
                    arch.shapes[k],
                    (max * 4) >> 20,
                    max / arch.shapes[k].len()
                )));
            }
        }
        if arch.n_params > max {
            return Err(Error::Config(format!(
                "the model's {} parameters exceed this device's {} MB per buffer",
                arch.n_params,
                (max * 4) >> 20
            )));
        }
        let acts = need_act
            .iter()
            .zip(&arch.shapes)
            .map(|(&need, shape)| b.alloc(if need { cap * shape.len() } else { 0 }))
            .collect::<Result<Vec<_>>>()?;
        let grad = grad_len.iter().map(|&len| b.alloc(cap * len)).collect::<Result<Vec<_>>>()?;
        let mut argmax = Vec::new();
        let mut saved = Vec::new();
        for layer in &arch.layers {
            argmax.push(b.alloc_u32(match layer {
                Layer::MaxPool2d(p) => cap * p.out_len(),
                _ => 0,
            })?);
            saved.push(b.alloc(match layer {
                Layer::BatchNorm(bn) => 2 * bn.c,
                _ => 0,
            })?);
        }
        let n_params = arch.n_params;
        let recipe = arch.recipe().clone();
        let (mut mean, mut std) = ([0f32; MAX_CHANNELS], [1f32; MAX_CHANNELS]);
        let (m, sd) = recipe.normalize.per_channel(arch.spec.input[0]);
        for (c, (m, sd)) in m.into_iter().zip(sd).enumerate().take(MAX_CHANNELS) {
            (mean[c], std[c]) = (m, sd);
        }
        let with_v = matches!(recipe.optimizer, Optimizer::Adam { .. });
        let with_m = with_v || matches!(recipe.optimizer, Optimizer::Sgd { momentum, .. } if momentum > 0.0);
        let mut net = Network {
            cap,
            params: b.alloc(n_params)?,
            grads: b.alloc(n_params)?,
            state: b.alloc(arch.n_state.max(1))?,
            opt_m: b.alloc(if with_m { n_params } else { 0 })?,
            opt_v: b.alloc(if with_v { n_params } else { 0 })?,
            ema: recipe.ema,
            avg_params: b.alloc(if recipe.ema.is_some() { n_params } else { 0 })?,
            avg_state: b.alloc(if recipe.ema.is_some() { arch.n_state.max(1) } else { 0 })?,
            averaged: false,
            acts,
            grad,
            argmax,
            saved,
            labels: b.alloc_u32(cap)?,
            train_plan,
            train_out,
            eval_plan,
            eval_out,
            loss: recipe.loss,
            mean,
            std,
            optimizer: recipe.optimizer,
            arch,
        };
        net.set_params(b, params, state)?;
        if net.ema.is_some() {
            net.set_average(b, params, state)?;
        }
        Ok(net)
    }

    /// Whether the recipe keeps an average of the weights.
    pub fn has_average(&self) -> bool {
        self.ema.is_some()
    }

    /// Trades the averaged weights and statistics with the live ones (a no-op without `ema`):
    /// after one swap, `params`/`state` (and so `evaluate`, `get_params`) are the average's;
    /// a second swap brings the live ones back. Training steps need the live ones in place.
    pub fn swap_average(&mut self) {
        if self.ema.is_some() {
            std::mem::swap(&mut self.params, &mut self.avg_params);
            std::mem::swap(&mut self.state, &mut self.avg_state);
            self.averaged = !self.averaged;
        }
    }

    /// The averaged parameters and statistics, when the recipe keeps them.
    pub fn get_average(&mut self, b: &mut B) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        if self.ema.is_none() {
            return Ok(None);
        }
        self.swap_average();
        let r = self.get_params(b);
        self.swap_average();
        r.map(Some)
    }

    pub fn set_average(&mut self, b: &mut B, params: &[f32], state: &[f32]) -> Result<()> {
        self.swap_average();
        let r = self.set_params(b, params, state);
        self.swap_average();
        r
    }

    pub fn set_params(&mut self, b: &mut B, params: &[f32], state: &[f32]) -> Result<()> {
        b.upload(&mut self.params, params)?;
        if !state.is_empty() {
            b.upload(&mut self.state, state)?;
        }
        Ok(())
    }

    pub fn get_params(&mut self, b: &mut B) -> Result<(Vec<f32>, Vec<f32>)> {
        let p = b.download(&self.params, self.arch.n_params)?;
        let s = b.download(&self.state, self.arch.n_state)?;
        Ok((p, s))
    }

    /// Optimizer state (m, v) as flat vectors (empty where the optimizer has none).
    pub fn get_opt_state(&mut self, b: &mut B) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = self.arch.n_params;
        let m = if self.has_m() { b.download(&self.opt_m, n)? } else { Vec::new() };
        let v = if self.has_v() { b.download(&self.opt_v, n)? } else { Vec::new() };
        Ok((m, v))
    }

    pub fn set_opt_state(&mut self, b: &mut B, m: &[f32], v: &[f32]) -> Result<()> {
        if self.has_m() {
            b.upload(&mut self.opt_m, m)?;
        }
        if self.has_v() {
            b.upload(&mut self.opt_v, v)?;
        }
        Ok(())
    }

    /// Bytes of the forward activations of one full batch (the input included), as allocated.
    pub fn activation_bytes(&self) -> usize {
        let used: std::collections::BTreeSet<usize> =
            self.train_plan.iter().chain(&self.eval_plan).flat_map(|n| [n.inp, n.out]).chain([0]).collect();
        used.iter().map(|&k| 4 * self.cap * self.arch.shapes[k].len()).sum()
    }

    /// Bytes of parameters, gradients and optimizer state.
    pub fn parameter_state_bytes(&self) -> usize {
        let avg = self.ema.is_some() as usize;
        4 * self.arch.n_params * (2 + self.has_m() as usize + self.has_v() as usize + avg)
            + 4 * self.arch.n_state * (1 + avg)
    }

    pub fn has_m(&self) -> bool {
        match self.optimizer {
            Optimizer::Adam { .. } => true,
            Optimizer::Sgd { momentum, .. } => momentum > 0.0,
        }
    }

    pub fn has_v(&self) -> bool {
        matches!(self.optimizer, Optimizer::Adam { .. })
    }

    fn gather(&self, start: usize, n: usize, data: &DeviceData<B>, augment: Option<(Augment, u32)>) -> Gather {
        Gather {
            start,
            n,
            channels: data.channels,
            height: data.height,
            width: data.width,
            mean: self.mean,
            std: self.std,
            augment,
            first: 0,
            count: data.len,
        }
    }

    /// Runs the plan's forward ops on `n` examples already in acts[0].
    fn forward(&mut self, b: &mut B, n: usize, train: bool, global_step: u32, seed: u64) {
        let plan = if train { &self.train_plan } else { &self.eval_plan };
        for node in plan {
            let (out, inp) = split(&mut self.acts, node.out, node.inp);
            let shape_len = self.arch.shapes[node.inp].len();
            let dropout = |d: usize| {
                let Layer::Dropout { p } = self.arch.layers[d] else { unreachable!("plan fuses dropout layers only") };
                (p, rng::op_key(seed, rng::STREAM_DROPOUT + d as u32, global_step))
            };
            let epi = Epilogue { act: node.fused, dropout: node.dropout.map(dropout) };
            match self.arch.layers[node.layer] {
                Layer::Conv2d(l) => b.conv2d_forward(out, inp, &self.params, &l, n, epi),
                Layer::Dense(l) => b.dense_forward(out, inp, &self.params, &l, n, epi),
                Layer::Act(a) => b.activation_forward(out, inp, n * shape_len, a),
                Layer::MaxPool2d(l) => b.maxpool_forward(out, &mut self.argmax[node.layer], inp, &l, n),
                Layer::Dropout { p } => {
                    let key = rng::op_key(seed, rng::STREAM_DROPOUT + node.layer as u32, global_step);
                    b.dropout_forward(out, inp, n * shape_len, p, key)
                }
                Layer::BatchNorm(l) => b.batchnorm_forward(
                    out,
                    &mut self.saved[node.layer],
                    &mut self.state,
                    inp,
                    &self.params,
                    &l,
                    n,
                    train,
                ),
                Layer::Flatten => unreachable!("flatten has no op"),
            }
        }
    }

    /// Backward through the training plan, from the loss gradient in the last op's output
    /// gradient buffer.
    fn backward(&mut self, b: &mut B, n: usize, global_step: u32, seed: u64) {
        for (k, node) in self.train_plan.iter().enumerate().rev() {
            // grad indices: this op's output gradient, its input's, the pre-activation's.
            let (d_out, d_in) = (k % 2, (k + 1) % 2);
            let mut dy = d_out;
            if let Some(a) = node.fused {
                // After relu + dropout, the output is zero where either zeroed it, so the
                // relu test on it applies both masks; the dropout scale remains.
                let scale = node.dropout.map_or(1.0, |d| match self.arch.layers[d] {
                    Layer::Dropout { p } => 1.0 / (1.0 - p),
                    _ => 1.0,
                });
                let (dpre, dpost) = split(&mut self.grad, 2, d_out);
                b.activation_backward(
                    dpre,
                    dpost,
                    &self.acts[node.out],
                    n * self.arch.shapes[node.out].len(),
                    a,
                    scale,
                );
                dy = 2;
            }
            let need_dx = node.inp != 0;
            let inp = &self.acts[node.inp];
            let len = n * self.arch.shapes[node.inp].len();
            match self.arch.layers[node.layer] {
                Layer::Conv2d(l) => {
                    b.conv2d_backward_weight(&mut self.grads, &self.grad[dy], inp, &l, n);
                    if need_dx {
                        let (dx, dy) = split(&mut self.grad, d_in, dy);
                        b.conv2d_backward_input(dx, dy, &self.params, &l, n);
                    }
                }
                Layer::Dense(l) => {
                    b.dense_backward_weight(&mut self.grads, &self.grad[dy], inp, &l, n);
                    if need_dx {
                        let (dx, dy) = split(&mut self.grad, d_in, dy);
                        b.dense_backward_input(dx, dy, &self.params, &l, n);
                    }
                }
                _ if !need_dx => {}
                Layer::Act(a) => {
                    let (dx, dy) = split(&mut self.grad, d_in, dy);
                    b.activation_backward(dx, dy, &self.acts[node.out], len, a, 1.0);
                }
                Layer::MaxPool2d(l) => {
                    let (dx, dy) = split(&mut self.grad, d_in, dy);
                    b.maxpool_backward(dx, dy, &self.argmax[node.layer], &l, n);
                }
                Layer::Dropout { p } => {
                    let key = rng::op_key(seed, rng::STREAM_DROPOUT + node.layer as u32, global_step);
                    let (dx, dy) = split(&mut self.grad, d_in, dy);
                    b.dropout_backward(dx, dy, len, p, key);
                }
                Layer::BatchNorm(l) => {
                    let (dx, dy) = split(&mut self.grad, d_in, dy);
                    b.batchnorm_backward(dx, &mut self.grads, dy, inp, &self.saved[node.layer], &self.params, &l, n);
                }
                Layer::Flatten => unreachable!("flatten has no op"),
            }
        }
    }

    /// Forward and backward of one batch already gathered into acts[0] and labels: leaves the
    /// gradients in `grads` and the batch's loss and correct count in `stats[slot]`.
    pub fn forward_backward(
        &mut self,
        b: &mut B,
        stats: &mut B::Buf,
        n: usize,
        slot: usize,
        global_step: u32,
        seed: u64,
    ) {
        self.forward(b, n, true, global_step, seed);
        let classes = self.arch.classes();
        let (out, scale) = (self.train_out, 1.0 / n as f32);
        let last = (self.train_plan.len() + 1) % 2; // (len - 1) % 2 without underflow
        let (dlogits, logits) = (&mut self.grad[last], &self.acts[out]);
        match self.loss {
            Loss::CrossEntropy => {
                b.softmax_xent_forward_backward(dlogits, stats, slot, logits, &self.labels, n, classes, scale)
            }
            Loss::Mse => b.mse_forward_backward(dlogits, stats, slot, logits, &self.labels, n, classes, scale),
        }
        self.backward(b, n, global_step, seed);
    }

    /// Gathers examples `perm[start..start+n]` into the input buffer and labels.
    pub fn load_batch(
        &mut self,
        b: &mut B,
        data: &DeviceData<B>,
        perm: &B::IBuf,
        start: usize,
        n: usize,
        augment: Option<(Augment, u32)>,
    ) {
        let g = self.gather(start, n, data, augment);
        data.gather(b, &mut self.acts[0], &mut self.labels, perm, &g);
    }

    /// The buffer holding the model's output (logits) after a training forward.
    pub fn logits(&self) -> &B::Buf {
        &self.acts[self.train_out]
    }

    /// The input batch buffer.
    pub fn input(&self) -> &B::Buf {
        &self.acts[0]
    }

    /// Every activation buffer at every layer boundary, and the max-pool positions, for the
    /// first `n` examples (empty where a boundary has no buffer). For tests and debugging.
    pub fn debug_activations(&mut self, b: &mut B, n: usize) -> Result<Activations> {
        let mut acts = Vec::new();
        for (k, shape) in self.arch.shapes.iter().enumerate() {
            let used = self.train_plan.iter().any(|node| node.out == k || node.inp == k);
            acts.push(if used { b.download(&self.acts[k], n * shape.len())? } else { Vec::new() });
        }
        let mut argmax = Vec::new();
        for (i, layer) in self.arch.layers.iter().enumerate() {
            argmax.push(match layer {
                Layer::MaxPool2d(p) => b.download_u32(&self.argmax[i], n * p.out_len())?,
                _ => Vec::new(),
            });
        }
        Ok((acts, argmax))
    }

    /// One training step: gather, forward, loss, backward, optimizer update.
    pub fn train_step(&mut self, b: &mut B, data: &DeviceData<B>, perm: &B::IBuf, stats: &mut B::Buf, s: &StepArgs) {
        let augment = s.augment.map(|a| (a, rng::op_key(s.seed, rng::STREAM_AUGMENT, s.global_step)));
        self.load_batch(b, data, perm, s.start, s.n, augment);
        self.forward_backward(b, stats, s.n, s.slot, s.global_step, s.seed);
        self.update(b, s.lr, s.global_step + 1, s.epoch);
    }

    /// Applies the optimizer to the gradients in `grads`; `step` counts steps from 1 and
    /// `epoch` epochs from 1 (Adam's bias corrections use one or the other).
    pub fn update(&mut self, b: &mut B, lr: f32, step: u32, epoch: u32) {
        let len = self.arch.n_params;
        match self.optimizer {
            Optimizer::Adam { beta1, beta2, eps, weight_decay, bias_correction, .. } => {
                let t = match bias_correction {
                    BiasCorrection::Step => step,
                    BiasCorrection::Epoch => epoch.max(1),
                };
                let a = AdamStep { lr, beta1, beta2, eps, weight_decay, t };
                b.adam_step(&mut self.params, &self.grads, &mut self.opt_m, &mut self.opt_v, len, &a);
            }
            Optimizer::Sgd { momentum, .. } => {
                b.sgd_step(&mut self.params, &self.grads, &mut self.opt_m, len, &SgdStep { lr, momentum });
            }
        }
        if let Some(decay) = self.ema {
            debug_assert!(!self.averaged, "a training step with the averaged weights in place");
            b.ema_update(&mut self.avg_params, &self.params, len, decay);
            b.ema_update(&mut self.avg_state, &self.state, self.arch.n_state, decay);
        }
    }

    /// Runs examples `start..start + n` of `data` through the evaluation plan (no dropout,
    /// batch-norm running statistics), leaving their outputs (n, classes) in
    /// `acts[eval_out]`.
    fn forward_eval(&mut self, b: &mut B, data: &DeviceData<B>, start: usize, n: usize) {
        let g = self.gather(start, n, data, None);
        data.gather(b, &mut self.acts[0], &mut self.labels, &data.order, &g);
        self.forward(b, n, false, 0, 0);
    }

    /// The final layer's outputs for a whole data set, (count, classes), in evaluation mode:
    /// the logits of a cross-entropy model, which `evaluate` turns into probabilities. Reads
    /// back once per batch.
    pub fn outputs(&mut self, b: &mut B, data: &DeviceData<B>) -> Result<Vec<f32>> {
        let classes = self.arch.classes();
        let mut out = Vec::with_capacity(data.len * classes);
        for start in (0..data.len).step_by(self.cap) {
            let n = self.cap.min(data.len - start);
            self.forward_eval(b, data, start, n);
            out.extend(b.download(&self.acts[self.eval_out], n * classes)?);
        }
        Ok(out)
    }

    /// Evaluates on a whole data set (no dropout, batch-norm running statistics), in batches
    /// of the buffers' capacity, reading back once at the end: loss, accuracy and every
    /// example's scores.
    pub fn evaluate(&mut self, b: &mut B, data: &DeviceData<B>) -> Result<EvalResult> {
        self.evaluate_keeping(b, data, true)
    }

    /// `evaluate` without the per-example scores (`scores` is empty): what training needs
    /// each epoch, in memory for one batch of scores rather than the whole set's (which,
    /// with tens of thousands of classes, would not fit).
    pub fn evaluate_figures(&mut self, b: &mut B, data: &DeviceData<B>) -> Result<EvalResult> {
        self.evaluate_keeping(b, data, false)
    }

    fn evaluate_keeping(&mut self, b: &mut B, data: &DeviceData<B>, keep: bool) -> Result<EvalResult> {
        let classes = self.arch.classes();
        let batches = data.len.div_ceil(self.cap);
        let rows = if keep { data.len } else { self.cap.min(data.len) };
        crate::memory::check_host(
            &format!("the scores of {rows} examples of {classes} classes"),
            4 * (rows * classes) as u64,
            "evaluate fewer examples at once",
        )?;
        let mut probs = b.alloc((rows * classes).max(1))?;
        let mut stats = b.alloc((2 * batches).max(1))?;
        for i in 0..batches {
            let start = i * self.cap;
            let n = self.cap.min(data.len - start);
            self.forward_eval(b, data, start, n);
            let logits = &self.acts[self.eval_out];
            let at = if keep { start } else { 0 };
            match self.loss {
                Loss::CrossEntropy => {
                    b.softmax_xent_forward(&mut probs, at, &mut stats, i, logits, &self.labels, n, classes)
                }
                Loss::Mse => b.mse_forward(&mut probs, at, &mut stats, i, logits, &self.labels, n, classes),
            }
        }
        let stats = b.download(&stats, 2 * batches)?;
        let scores = if keep { b.download(&probs, data.len * classes)? } else { Vec::new() };
        let loss: f64 = stats.iter().step_by(2).map(|&v| v as f64).sum();
        let correct: f64 = stats.iter().skip(1).step_by(2).map(|&v| v as f64).sum();
        Ok(EvalResult {
            loss: if data.len == 0 { 0.0 } else { loss / data.len as f64 },
            correct: correct.round() as usize,
            count: data.len,
            scores,
        })
    }
}
