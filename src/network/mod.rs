//! A network on a backend: its buffers, and the forward, backward and optimizer step as
//! sequences of backend ops. Generic over `Backend`, so the CPU and GPU run the same plan.
//!
//! A network holds one model or an array of K models of one architecture trained side by side
//! (`members`): the same plan over wider layers (`model::Arch::fused`), its per-member values
//! in the member table. Split by concern: `plan` (which op reads and writes which buffer),
//! `fits` (what fits before allocating), `data` (the data set on the device, resident or
//! streamed), `members` (the models and their table), `step` (forward, backward, optimizer)
//! and `eval` (evaluation and the ensemble); here the network's buffers and their contents.

mod data;
mod eval;
mod fits;
mod members;
pub mod plan;
mod step;
mod traffic;

pub use data::{DeviceData, Shard, Stream, pack};
pub use eval::{EvalResult, Evaluation, ensemble_of};
pub use fits::{check_array, check_fits, largest_array};
pub use members::{Member, MemberTable, Members};
pub use step::{Activations, StepArgs};

use crate::backend::{Backend, MAX_CHANNELS};
use crate::error::{Error, Result};
use crate::model::spec::{Loss, Optimizer};
use crate::model::{Arch, Layer};
use plan::{Backward, Plan};

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
    train_plan: Plan,
    eval_plan: Plan,
    backward: Backward,
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
        let train_plan = plan::plan(&arch, true);
        let eval_plan = plan::plan(&arch, false);
        let backward = plan::backward(&arch, &train_plan);
        let nb = arch.layers.len() + 1;
        let mut need_act = vec![false; nb];
        for b in train_plan.buffers().chain(eval_plan.buffers()) {
            need_act[b] = true;
        }
        let acts = need_act
            .iter()
            .zip(&arch.shapes)
            .map(|(&need, shape)| b.alloc(if need { cap * shape.len() } else { 0 }))
            .collect::<Result<Vec<_>>>()?;
        let grad = backward.slots.iter().map(|&len| b.alloc(cap * len)).collect::<Result<Vec<_>>>()?;
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
        let with_m = with_v || members.list.iter().any(|m| m.spec.train.optimizer.momentum() > 0.0);
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
            eval_plan,
            backward,
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
            self.train_plan.buffers().chain(self.eval_plan.buffers()).collect();
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
        self.members.list.iter().any(|m| m.spec.train.optimizer.momentum() > 0.0)
    }

    pub fn has_v(&self) -> bool {
        matches!(self.optimizer, Optimizer::Adam { .. })
    }
}
