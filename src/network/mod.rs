//! A network on a backend: its buffers, and the forward, backward and optimizer step as
//! sequences of backend ops. Generic over `Backend`, so the CPU and GPU run the same plan.
//!
//! A network holds one model or an array of K models of one architecture trained side by side
//! (`members`): the same plan over wider layers (`model::Arch::fused`), its per-member values
//! in the member table. Split by concern: `plan` (which op reads and writes which buffer),
//! `data` (the data set on the device, resident or streamed), `members` (the models and their
//! table); here the buffers, the step and evaluation.
//!
//! Gradients need fewer buffers than activations: the backward of op k reads the gradient of
//! its output and writes that of its input (op k-1's output), with a pre-activation gradient
//! in between for fused activations. So three buffers serve them all: op k's output gradient
//! is `grad[k % 2]`, its input's `grad[(k + 1) % 2]`, the pre-activation's `grad[2]`.

mod data;
mod members;
mod plan;

pub use data::{DeviceData, Shard, Stream, pack};
pub use members::{Member, MemberTable, Members};

use crate::backend::{AdamStep, Backend, EmaStep, Epilogue, Gather, MAX_CHANNELS, SgdStep};
use crate::data::augment::Augment;
use crate::error::{Error, Result};
use crate::model::spec::{BiasCorrection, Loss, Optimizer};
use crate::model::{Arch, Layer};
use crate::rng;
use plan::Node;

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

/// `check_fits` and the device's per-buffer limit for `members` as one network; for an array
/// that does not fit, the error names the most members that would.
pub fn check_array<B: Backend>(b: &B, members: &Members, cap: usize) -> Result<()> {
    let r = check_fits(b, &members.fused, cap).and_then(|_| fits_buffers(b, &members.fused, cap));
    let k = members.len();
    match r {
        Err(Error::Memory(m)) if k > 1 => Err(Error::Memory(format!("{m}{}", largest_note(b, members, cap)))),
        Err(Error::Config(m)) if k > 1 => Err(Error::Config(format!("{m}{}", largest_note(b, members, cap)))),
        r => r,
    }
}

fn largest_note<B: Backend>(b: &B, members: &Members, cap: usize) -> String {
    let k = largest_array(b, &members.lone.spec, cap, members.len() - 1);
    format!(
        " (an array of {} models of {}; at most {k} fit here: use fewer --seeds or --sweep values)",
        members.len(),
        members.lone.name()
    )
}

/// The most members of `spec` that fit with batches of up to `cap` (see `check_fits`), or 0
/// when not even one does: what an error about an array too large names.
pub fn largest_array<B: Backend>(b: &B, spec: &crate::model::ModelSpec, cap: usize, upto: usize) -> usize {
    let fits = |k: usize| {
        Arch::fused(spec.clone(), k).is_ok_and(|a| check_fits(b, &a, cap).is_ok() && fits_buffers(b, &a, cap).is_ok())
    };
    let (mut lo, mut hi) = (0, upto);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// Checks the device's per-buffer limit against every buffer a network of `arch` with
/// batches of `cap` allocates, before allocating any.
fn fits_buffers<B: Backend>(b: &B, arch: &Arch, cap: usize) -> Result<()> {
    let max = b.max_buffer_len();
    let (train_plan, _) = plan::plan(arch, true);
    let (eval_plan, _) = plan::plan(arch, false);
    for node in train_plan.iter().chain(&eval_plan) {
        for k in [node.inp, node.out] {
            let len = cap.saturating_mul(arch.shapes[k].len());
            if len > max {
                return Err(Error::Config(format!(
                    "batch {cap} needs {} MB for the activations after layer {k} ({} per example), more than the {} \
                     MB this device allows per buffer; use a smaller --batch (at most {})",
                    (len * 4) >> 20,
                    arch.shapes[k],
                    (max * 4) >> 20,
                    max / arch.shapes[k].len()
                )));
            }
        }
    }
    if arch.n_params > max {
        return Err(Error::Config(format!(
            "the model's {} parameters exceed this device's {} MB per buffer",
            arch.n_params,
            (max * 4) >> 20
        )));
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
    /// The row of learning rates this step uses (see `Network::set_rates`).
    pub row: usize,
    /// The seed of the batch order and augmentation, which all members share.
    pub data_seed: u64,
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

/// An evaluation of every member of a network, and of their ensemble (the average of their
/// probabilities, or outputs for an MSE model); for one model, the ensemble is the model.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub members: Vec<EvalResult>,
    pub ensemble: EvalResult,
}

/// The weight average of the recipe's `ema`: averaged parameters and batch-norm statistics,
/// traded with the live ones while `with_average` runs.
struct Average<B: Backend> {
    params: B::Buf,
    state: B::Buf,
}

pub struct Network<B: Backend> {
    /// The network's architecture (for an array, its members as one: `Arch::fused`).
    pub arch: Arch,
    pub members: Members,
    /// Largest batch the buffers hold.
    pub cap: usize,
    pub params: B::Buf,
    pub grads: B::Buf,
    pub state: B::Buf,
    /// Adam's m and v, or SGD's velocity (in `opt_m`).
    pub opt_m: B::Buf,
    pub opt_v: B::Buf,
    average: Option<Average<B>>,
    /// Whether `params`/`state` hold the average's values (inside `with_average`).
    averaged: bool,
    acts: Vec<B::Buf>,
    grad: Vec<B::Buf>,
    argmax: Vec<B::IBuf>,
    saved: Vec<B::Buf>,
    labels: B::IBuf,
    /// The member table on the device, its layout, the learning-rate rows it holds and which
    /// members are frozen (`freeze`).
    table: B::IBuf,
    /// Words the table's buffer holds.
    table_cap: usize,
    layout: MemberTable,
    rows: Vec<Vec<f32>>,
    frozen: Vec<bool>,
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
    /// A model of its own (seed 0: what evaluation needs; training sets its seed through
    /// `array` with `Members::one`), with buffers for batches of up to `cap` examples.
    pub fn new(b: &mut B, arch: Arch, cap: usize, params: &[f32], state: &[f32]) -> Result<Self> {
        Self::array(b, Members::one(arch, 0), cap, params, state)
    }

    /// Allocates every buffer of `members` as one network for batches of up to `cap`
    /// examples and uploads the parameters (fused layout), the member table with each
    /// member's base learning rate as its one row.
    pub fn array(b: &mut B, members: Members, cap: usize, params: &[f32], state: &[f32]) -> Result<Self> {
        if cap == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        let arch = members.fused.clone();
        check_array(b, &members, cap)?;
        let (train_plan, train_out) = plan::plan(&arch, true);
        let (eval_plan, eval_out) = plan::plan(&arch, false);
        let nb = arch.layers.len() + 1;
        let mut need_act = vec![false; nb];
        need_act[0] = true;
        for node in train_plan.iter().chain(&eval_plan) {
            need_act[node.inp] = true;
            need_act[node.out] = true;
        }
        let grad_len = plan::gradient_lengths(&arch, &train_plan);
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
        let with_m = with_v
            || members
                .list
                .iter()
                .any(|m| matches!(m.spec.train.optimizer, Optimizer::Sgd { momentum, .. } if momentum > 0.0));
        let average = match recipe.ema {
            Some(_) => Some(Average { params: b.alloc(n_params)?, state: b.alloc(arch.n_state.max(1))? }),
            None => None,
        };
        let layout = MemberTable::new(&members);
        let rows = vec![(0..members.len()).map(|k| members.lr(k)).collect()];
        let frozen = vec![false; members.len()];
        let mut net = Network {
            cap,
            params: b.alloc(n_params)?,
            grads: b.alloc(n_params)?,
            state: b.alloc(arch.n_state.max(1))?,
            opt_m: b.alloc(if with_m { n_params } else { 0 })?,
            opt_v: b.alloc(if with_v { n_params } else { 0 })?,
            average,
            averaged: false,
            acts,
            grad,
            argmax,
            saved,
            labels: b.alloc_u32(cap)?,
            table: b.alloc_u32(1)?,
            table_cap: 1,
            layout,
            rows: Vec::new(),
            frozen,
            train_plan,
            train_out,
            eval_plan,
            eval_out,
            loss: recipe.loss,
            mean,
            std,
            optimizer: recipe.optimizer,
            arch,
            members,
        };
        net.set_rates(b, rows)?;
        net.set_params(b, params, state)?;
        if net.has_average() {
            net.set_average(b, params, state)?;
        }
        Ok(net)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Sets the learning-rate rows (row r: each member's rate; a step takes the row its
    /// `StepArgs::row` names) and writes the member table.
    pub fn set_rates(&mut self, b: &mut B, rows: Vec<Vec<f32>>) -> Result<()> {
        let words = self.layout.words(&rows, &self.frozen);
        if words.len() > self.table_cap {
            self.table_cap = words.len().next_power_of_two();
            self.table = b.alloc_u32(self.table_cap)?;
        }
        b.upload_u32(&mut self.table, &words)?;
        self.rows = rows;
        Ok(())
    }

    /// One learning rate for every member, for every step.
    pub fn set_lr(&mut self, b: &mut B, lr: f32) -> Result<()> {
        self.set_rates(b, vec![vec![lr; self.len()]])
    }

    /// Freezes member k: its learning rate is 0 from now on and its weight average stays as
    /// it is (an early-stopped or diverged member; the others train on).
    pub fn freeze(&mut self, b: &mut B, k: usize) -> Result<()> {
        self.frozen[k] = true;
        let rows = std::mem::take(&mut self.rows);
        self.set_rates(b, rows)
    }

    pub fn is_frozen(&self, k: usize) -> bool {
        self.frozen[k]
    }

    /// Whether the recipe keeps an average of the weights.
    pub fn has_average(&self) -> bool {
        self.average.is_some()
    }

    /// Trades the averaged weights and statistics with the live ones (a no-op without `ema`).
    fn swap_average(&mut self) {
        if let Some(avg) = self.average.as_mut() {
            std::mem::swap(&mut self.params, &mut avg.params);
            std::mem::swap(&mut self.state, &mut avg.state);
            self.averaged = !self.averaged;
        }
    }

    /// Runs `f` with the weights to keep in place: the average's, with `ema` (so `evaluate`
    /// and `get_params` inside see them), else the live ones; the live ones are back after.
    pub fn with_average<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        self.swap_average();
        let r = f(self);
        self.swap_average();
        r
    }

    /// The averaged parameters and statistics, when the recipe keeps them.
    pub async fn get_average(&mut self, b: &mut B) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        if !self.has_average() {
            return Ok(None);
        }
        self.kept_params(b).await.map(Some)
    }

    /// The weights to keep: the average's with `ema` (and its statistics), else the live ones.
    pub async fn kept_params(&mut self, b: &mut B) -> Result<(Vec<f32>, Vec<f32>)> {
        self.swap_average();
        let r = self.get_params(b).await;
        self.swap_average();
        r
    }

    /// Writes the weights to keep (see `kept_params`).
    pub fn set_kept(&mut self, b: &mut B, params: &[f32], state: &[f32]) -> Result<()> {
        self.with_average(|net| net.set_params(b, params, state))
    }

    /// `evaluate_all` of the weights to keep (see `kept_params`).
    pub async fn evaluate_kept(
        &mut self,
        b: &mut B,
        data: &DeviceData<B>,
        keep: bool,
        include: &[bool],
    ) -> Result<Evaluation> {
        self.swap_average();
        let r = self.evaluate_all(b, data, keep, include).await;
        self.swap_average();
        r
    }

    pub fn set_average(&mut self, b: &mut B, params: &[f32], state: &[f32]) -> Result<()> {
        self.with_average(|net| net.set_params(b, params, state))
    }

    pub fn set_params(&mut self, b: &mut B, params: &[f32], state: &[f32]) -> Result<()> {
        b.upload(&mut self.params, params)?;
        if !state.is_empty() {
            b.upload(&mut self.state, state)?;
        }
        Ok(())
    }

    pub async fn get_params(&mut self, b: &mut B) -> Result<(Vec<f32>, Vec<f32>)> {
        let p = b.download(&self.params, self.arch.n_params).await?;
        let s = b.download(&self.state, self.arch.n_state).await?;
        Ok((p, s))
    }

    /// Optimizer state (m, v) as flat vectors (empty where the optimizer has none).
    pub async fn get_opt_state(&mut self, b: &mut B) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = self.arch.n_params;
        let m = if self.has_m() { b.download(&self.opt_m, n).await? } else { Vec::new() };
        let v = if self.has_v() { b.download(&self.opt_v, n).await? } else { Vec::new() };
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
        let avg = self.has_average() as usize;
        4 * self.arch.n_params * (2 + self.has_m() as usize + self.has_v() as usize + avg)
            + 4 * self.arch.n_state * (1 + avg)
    }

    pub fn has_m(&self) -> bool {
        match self.optimizer {
            Optimizer::Adam { .. } => true,
            Optimizer::Sgd { .. } => self.layout_has_momentum(),
        }
    }

    fn layout_has_momentum(&self) -> bool {
        self.members
            .list
            .iter()
            .any(|m| matches!(m.spec.train.optimizer, Optimizer::Sgd { momentum, .. } if momentum > 0.0))
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

    /// The dropout of layer `d` at step `step`.
    fn dropout(&self, d: usize, step: u32) -> crate::backend::Dropout {
        self.layout.dropout(d, self.arch.shapes[d + 1].len() / self.len(), step)
    }

    /// Runs the plan's forward ops on `n` examples already in acts[0].
    fn forward(&mut self, b: &mut B, n: usize, train: bool, global_step: u32) {
        let plan = if train { &self.train_plan } else { &self.eval_plan };
        for node in plan {
            let (out, inp) = split(&mut self.acts, node.out, node.inp);
            let shape_len = self.arch.shapes[node.inp].len();
            let dropout = node
                .dropout
                .map(|d| self.layout.dropout(d, self.arch.shapes[d + 1].len() / self.members.len(), global_step));
            let epi = Epilogue { act: node.fused, dropout };
            match self.arch.layers[node.layer] {
                Layer::Conv2d(l) => b.conv2d_forward(out, inp, &self.params, &self.table, &l, n, epi),
                Layer::Dense(l) => b.dense_forward(out, inp, &self.params, &self.table, &l, n, epi),
                Layer::Act(a) => b.activation_forward(out, inp, n * shape_len, a),
                Layer::MaxPool2d(l) => b.maxpool_forward(out, &mut self.argmax[node.layer], inp, &l, n),
                Layer::Dropout { .. } => {
                    let d = self.layout.dropout(node.layer, shape_len / self.members.len(), global_step);
                    b.dropout_forward(out, inp, &self.table, n * shape_len, &d)
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
    fn backward(&mut self, b: &mut B, n: usize, global_step: u32) {
        for (k, node) in self.train_plan.iter().enumerate().rev() {
            // grad indices: this op's output gradient, its input's, the pre-activation's.
            let (d_out, d_in) = (k % 2, (k + 1) % 2);
            let mut dy = d_out;
            if let Some(a) = node.fused {
                // After relu + dropout, the output is zero where either zeroed it, so the
                // relu test on it applies both masks; the dropout scale remains.
                let dropout = node.dropout.map(|d| self.dropout(d, global_step));
                let (dpre, dpost) = split(&mut self.grad, 2, d_out);
                let len = n * self.arch.shapes[node.out].len();
                b.activation_backward(dpre, dpost, &self.acts[node.out], &self.table, len, a, dropout);
                dy = 2;
            }
            let need_dx = node.need_dx;
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
                Layer::BatchNorm(l) => {
                    let (dx, dy) = split(&mut self.grad, d_in, dy);
                    b.batchnorm_backward(dx, &mut self.grads, dy, inp, &self.saved[node.layer], &self.params, &l, n);
                }
                _ if !need_dx => {}
                Layer::Act(a) => {
                    let (dx, dy) = split(&mut self.grad, d_in, dy);
                    b.activation_backward(dx, dy, &self.acts[node.out], &self.table, len, a, None);
                }
                Layer::MaxPool2d(l) => {
                    let (dx, dy) = split(&mut self.grad, d_in, dy);
                    b.maxpool_backward(dx, dy, &self.argmax[node.layer], &l, n);
                }
                Layer::Dropout { .. } => {
                    let d = self.dropout(node.layer, global_step);
                    let (dx, dy) = split(&mut self.grad, d_in, dy);
                    b.dropout_backward(dx, dy, &self.table, len, &d);
                }
                Layer::Flatten => unreachable!("flatten has no op"),
            }
        }
    }

    /// Forward and backward of one batch already gathered into acts[0] and labels: leaves the
    /// gradients in `grads` and the batch's loss and correct count per member in the stats of
    /// `slot`.
    pub fn forward_backward(&mut self, b: &mut B, stats: &mut B::Buf, n: usize, slot: usize, global_step: u32) {
        self.forward(b, n, true, global_step);
        let (members, classes) = (self.len(), self.arch.classes());
        let (out, scale) = (self.train_out, 1.0 / n as f32);
        let last = (self.train_plan.len() + 1) % 2; // (len - 1) % 2 without underflow
        let (dlogits, logits) = (&mut self.grad[last], &self.acts[out]);
        match self.loss {
            Loss::CrossEntropy => {
                b.softmax_xent_forward_backward(dlogits, stats, slot, logits, &self.labels, n, members, classes, scale)
            }
            Loss::Mse => b.mse_forward_backward(dlogits, stats, slot, logits, &self.labels, n, members, classes, scale),
        }
        self.backward(b, n, global_step);
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

    /// The buffer holding the model's output (logits, (n, members x classes)) after a
    /// training forward.
    pub fn logits(&self) -> &B::Buf {
        &self.acts[self.train_out]
    }

    /// Every activation buffer at every layer boundary, and the max-pool positions, for the
    /// first `n` examples (empty where a boundary has no buffer). For tests and debugging.
    pub async fn debug_activations(&mut self, b: &mut B, n: usize) -> Result<Activations> {
        let mut acts = Vec::new();
        for (k, shape) in self.arch.shapes.iter().enumerate() {
            let used = self.train_plan.iter().any(|node| node.out == k || node.inp == k);
            acts.push(if used { b.download(&self.acts[k], n * shape.len()).await? } else { Vec::new() });
        }
        let mut argmax = Vec::new();
        for (i, layer) in self.arch.layers.iter().enumerate() {
            argmax.push(match layer {
                Layer::MaxPool2d(p) => b.download_u32(&self.argmax[i], n * p.out_len()).await?,
                _ => Vec::new(),
            });
        }
        Ok((acts, argmax))
    }

    /// One training step: gather, forward, loss, backward, optimizer update.
    pub fn train_step(&mut self, b: &mut B, data: &DeviceData<B>, perm: &B::IBuf, stats: &mut B::Buf, s: &StepArgs) {
        let augment = s.augment.map(|a| (a, rng::op_key(s.data_seed, rng::STREAM_AUGMENT, s.global_step)));
        self.load_batch(b, data, perm, s.start, s.n, augment);
        self.forward_backward(b, stats, s.n, s.slot, s.global_step);
        self.update(b, s.global_step + 1, s.epoch, s.row);
    }

    /// Applies the optimizer to the gradients in `grads` with learning-rate row `row`; `step`
    /// counts steps from 1 and `epoch` epochs from 1 (Adam's bias corrections use one or the
    /// other).
    pub fn update(&mut self, b: &mut B, step: u32, epoch: u32, row: usize) {
        let len = self.arch.n_params;
        let lr_at = self.layout.row_at(row.min(self.rows.len().saturating_sub(1)));
        let (params, state) = (self.layout.params, self.layout.state);
        match self.optimizer {
            Optimizer::Adam { beta1, beta2, eps, bias_correction, .. } => {
                let t = match bias_correction {
                    BiasCorrection::Step => step,
                    BiasCorrection::Epoch => epoch.max(1),
                };
                let a = AdamStep { beta1, beta2, eps, t, segments: params, lr_at, wd_at: self.layout.rate_at };
                b.adam_step(&mut self.params, &self.grads, &mut self.opt_m, &mut self.opt_v, &self.table, len, &a);
            }
            Optimizer::Sgd { .. } => {
                let s = SgdStep { segments: params, lr_at, momentum_at: self.layout.rate_at };
                b.sgd_step(&mut self.params, &self.grads, &mut self.opt_m, &self.table, len, &s);
            }
        }
        if let Some(avg) = self.average.as_mut() {
            debug_assert!(!self.averaged, "a training step with the averaged weights in place");
            let decay_at = self.layout.ema_at;
            b.ema_update(&mut avg.params, &self.params, &self.table, len, &EmaStep { segments: params, decay_at });
            let e = EmaStep { segments: state, decay_at };
            b.ema_update(&mut avg.state, &self.state, &self.table, self.arch.n_state, &e);
        }
    }

    /// Runs examples `start..start + n` of `data` through the evaluation plan (no dropout,
    /// batch-norm running statistics), leaving their outputs (n, members x classes) in
    /// `acts[eval_out]`.
    fn forward_eval(&mut self, b: &mut B, data: &DeviceData<B>, start: usize, n: usize) {
        let g = self.gather(start, n, data, None);
        data.gather(b, &mut self.acts[0], &mut self.labels, &data.order, &g);
        self.forward(b, n, false, 0);
    }

    /// The final layer's outputs for a whole data set, (count, members x classes), in
    /// evaluation mode: the logits of a cross-entropy model, which `evaluate` turns into
    /// probabilities. Reads back once per batch.
    pub async fn outputs(&mut self, b: &mut B, data: &DeviceData<B>) -> Result<Vec<f32>> {
        let width = self.arch.output().len();
        let mut out = Vec::with_capacity(data.len * width);
        for start in (0..data.len).step_by(self.cap) {
            let n = self.cap.min(data.len - start);
            self.forward_eval(b, data, start, n);
            out.extend(b.download(&self.acts[self.eval_out], n * width).await?);
        }
        Ok(out)
    }

    /// Evaluates the first (or only) member on a whole data set (no dropout, batch-norm
    /// running statistics): loss, accuracy and every example's scores.
    pub async fn evaluate(&mut self, b: &mut B, data: &DeviceData<B>) -> Result<EvalResult> {
        let all = vec![true; self.len()];
        Ok(self.evaluate_all(b, data, true, &all).await?.members.swap_remove(0))
    }

    /// Every member and the ensemble of those `include` names on a whole data set, in batches
    /// of the buffers' capacity; with `keep`, every example's scores too. One model reads back
    /// once at the end; an array reads each batch's probabilities back for the ensemble (in
    /// memory for one batch of them, however many classes).
    pub async fn evaluate_all(
        &mut self,
        b: &mut B,
        data: &DeviceData<B>,
        keep: bool,
        include: &[bool],
    ) -> Result<Evaluation> {
        let (k, classes) = (self.len(), self.arch.classes());
        let width = k * classes;
        let batches = data.len.div_ceil(self.cap);
        let per_batch = k > 1;
        let rows = if keep && !per_batch { data.len } else { self.cap.min(data.len) };
        crate::memory::check_host(
            &format!("the scores of {rows} examples of {classes} classes"),
            4 * (rows * width) as u64 * if keep && per_batch { data.len.div_ceil(rows.max(1)) as u64 } else { 1 },
            "evaluate fewer examples at once",
        )?;
        let mut probs = b.alloc((rows * width).max(1))?;
        let mut stats = b.alloc((2 * batches * k).max(1))?;
        let mut ensemble = Ensemble::new(classes, self.loss, keep);
        let mut kept = vec![Vec::new(); if keep && per_batch { k } else { 0 }];
        for i in 0..batches {
            let start = i * self.cap;
            let n = self.cap.min(data.len - start);
            self.forward_eval(b, data, start, n);
            let logits = &self.acts[self.eval_out];
            let at = if keep && !per_batch { start } else { 0 };
            match self.loss {
                Loss::CrossEntropy => {
                    b.softmax_xent_forward(&mut probs, at, &mut stats, i, logits, &self.labels, n, k, classes)
                }
                Loss::Mse => b.mse_forward(&mut probs, at, &mut stats, i, logits, &self.labels, n, k, classes),
            }
            if per_batch {
                let p = b.download(&probs, n * width).await?;
                ensemble.add(&p, include, &data.host_labels()[start..start + n]);
                for (m, scores) in kept.iter_mut().enumerate() {
                    scores.extend(p.chunks(classes).skip(m).step_by(k).flatten());
                }
            }
        }
        let stats = b.download(&stats, 2 * batches * k).await?;
        if keep && !per_batch {
            kept.push(b.download(&probs, data.len * classes).await?);
        }
        let mut kept = kept.into_iter();
        let members: Vec<EvalResult> = (0..k)
            .map(|m| {
                let loss: f64 = (0..batches).map(|i| stats[2 * (i * k + m)] as f64).sum();
                let correct: f64 = (0..batches).map(|i| stats[2 * (i * k + m) + 1] as f64).sum();
                EvalResult {
                    loss: if data.len == 0 { 0.0 } else { loss / data.len as f64 },
                    correct: correct.round() as usize,
                    count: data.len,
                    scores: kept.next().unwrap_or_default(),
                }
            })
            .collect();
        let ensemble = if per_batch { ensemble.result() } else { members[0].clone() };
        Ok(Evaluation { members, ensemble })
    }
}

/// The ensemble of an array's members, example by example: the average of their
/// probabilities (or outputs, for MSE), its loss as the model's loss function defines it
/// (cross-entropy of the average), and whether its first maximum is the label.
struct Ensemble {
    classes: usize,
    loss_kind: Loss,
    keep: bool,
    loss: f64,
    correct: usize,
    count: usize,
    scores: Vec<f32>,
}

impl Ensemble {
    fn new(classes: usize, loss_kind: Loss, keep: bool) -> Ensemble {
        Ensemble { classes, loss_kind, keep, loss: 0.0, correct: 0, count: 0, scores: Vec::new() }
    }

    /// One batch: `p` (n, members, classes); the members `include` names are averaged.
    fn add(&mut self, p: &[f32], include: &[bool], labels: &[u32]) {
        let c = self.classes;
        let count = include.iter().filter(|&&i| i).count().max(1);
        for (row, &y) in p.chunks(include.len() * c).zip(labels) {
            let mut avg = vec![0f64; c];
            for (m, _) in row.chunks(c).zip(include).filter(|x| *x.1) {
                avg.iter_mut().zip(m).for_each(|(a, &v)| *a += v as f64);
            }
            avg.iter_mut().for_each(|a| *a /= count as f64);
            let y = y as usize;
            self.loss += match self.loss_kind {
                Loss::CrossEntropy => -avg[y].max(f64::MIN_POSITIVE).ln(),
                Loss::Mse => {
                    avg.iter().enumerate().map(|(j, &a)| (a - f64::from(u8::from(j == y))).powi(2)).sum::<f64>()
                        / c as f64
                }
            };
            let best = avg.iter().enumerate().fold(0, |b, (j, &v)| if v > avg[b] { j } else { b });
            self.correct += usize::from(best == y);
            self.count += 1;
            if self.keep {
                self.scores.extend(avg.iter().map(|&a| a as f32));
            }
        }
    }

    fn result(self) -> EvalResult {
        EvalResult {
            loss: if self.count == 0 { 0.0 } else { self.loss / self.count as f64 },
            correct: self.correct,
            count: self.count,
            scores: self.scores,
        }
    }
}
