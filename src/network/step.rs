//! The training step: gathering a batch, the plan's forward ops and backward steps, and the
//! optimizer's update of every member at once.
//!
//! Gradients need fewer buffers than activations: a value's gradient lives from the backward
//! of the op that reads it to that of the op that wrote it, so a few gradient buffers
//! ("slots", handed out by `plan::backward`) serve them all.

use super::plan::Step;
use super::{DeviceData, Network};
use crate::backend::{AdamStep, Backend, EmaStep, Epilogue, Gather, SgdStep, Xent};
use crate::data::augment::Augment;
use crate::error::Result;
use crate::model::Layer;
use crate::model::spec::{BiasCorrection, Loss, Optimizer};
use crate::rng;

/// `(&mut v[a], &v[b])` for a != b.
fn split<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &T) {
    let (out, x, _) = split3(v, a, b, b);
    (out, x)
}

/// `(&mut v[out], &v[a], &v[b])` for out != a, b (a and b may be the same).
fn split3<T>(v: &mut [T], out: usize, a: usize, b: usize) -> (&mut T, &T, &T) {
    assert!(out != a && out != b, "an op cannot write the buffer it reads");
    let (lo, hi) = v.split_at_mut(out);
    let (o, hi) = hi.split_first_mut().expect("index in range");
    let at = |i: usize| if i < out { &lo[i] } else { &hi[i - out - 1] };
    (o, at(a), at(b))
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

impl<B: Backend> Network<B> {
    pub(super) fn gather(
        &self,
        start: usize,
        n: usize,
        data: &DeviceData<B>,
        augment: Option<(Augment, u32)>,
    ) -> Gather {
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
    pub(super) fn forward(&mut self, b: &mut B, n: usize, train: bool, global_step: u32) {
        let plan = if train { &self.train_plan } else { &self.eval_plan };
        for node in &plan.nodes {
            let (out, inp, other) = split3(&mut self.acts, node.out, node.inp, node.other);
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
                Layer::AvgPool2d(l) => b.avgpool_forward(out, inp, &l, n),
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
                    &self.table,
                    &l,
                    n,
                    train,
                    epi,
                ),
                Layer::Add { .. } => b.residual_add(out, inp, other, n * shape_len),
                Layer::Flatten => unreachable!("flatten has no op"),
            }
        }
    }

    /// Backward through the training plan, from the loss gradient in its slot.
    fn backward(&mut self, b: &mut B, n: usize, global_step: u32) {
        for &step in &self.backward.steps {
            let (node, dy, dx) = match step {
                Step::Sum { to, a, b: other, len } => {
                    let (to, x, y) = split3(&mut self.grad, to, a, other);
                    b.residual_add(to, x, y, n * len);
                    continue;
                }
                Step::Epilogue { node, from, to } => {
                    // After relu + dropout, the output is zero where either zeroed it, so the
                    // relu test on it applies both masks; the dropout scale remains.
                    let node = self.train_plan.nodes[node];
                    let dropout = node.dropout.map(|d| self.dropout(d, global_step));
                    let (dpre, dpost) = split(&mut self.grad, to, from);
                    let len = n * self.arch.shapes[node.out].len();
                    let act = node.fused.expect("an epilogue step has an activation");
                    b.activation_backward(dpre, dpost, &self.acts[node.out], &self.table, len, act, dropout);
                    continue;
                }
                Step::Layer { node, dy, dx } => (self.train_plan.nodes[node], dy, dx),
            };
            let inp = &self.acts[node.inp];
            let len = n * self.arch.shapes[node.inp].len();
            match (self.arch.layers[node.layer], dx) {
                (Layer::Conv2d(l), _) => {
                    b.conv2d_backward_weight(&mut self.grads, &self.grad[dy], inp, &l, n);
                    if let Some(dx) = dx {
                        let (dx, dy) = split(&mut self.grad, dx, dy);
                        b.conv2d_backward_input(dx, dy, &self.params, &l, n);
                    }
                }
                (Layer::Dense(l), _) => {
                    b.dense_backward_weight(&mut self.grads, &self.grad[dy], inp, &l, n);
                    if let Some(dx) = dx {
                        let (dx, dy) = split(&mut self.grad, dx, dy);
                        b.dense_backward_input(dx, dy, &self.params, &l, n);
                    }
                }
                (Layer::BatchNorm(l), Some(dx)) => {
                    // dy is the gradient of node.out: after a fused activation, of its output.
                    let dropout = node.dropout.map(|d| self.dropout(d, global_step));
                    let epi = Epilogue { act: node.fused, dropout };
                    let (dx, dy) = split(&mut self.grad, dx, dy);
                    let (out, saved) = (&self.acts[node.out], &self.saved[node.layer]);
                    b.batchnorm_backward(
                        dx,
                        &mut self.grads,
                        dy,
                        inp,
                        out,
                        saved,
                        &self.params,
                        &self.table,
                        &l,
                        n,
                        epi,
                    );
                }
                (_, None) => {}
                (Layer::Act(a), Some(dx)) => {
                    // What the derivative is computed from: the output, or for gelu and silu
                    // the input.
                    let saved = if a.grad_from_output() { &self.acts[node.out] } else { inp };
                    let (dx, dy) = split(&mut self.grad, dx, dy);
                    b.activation_backward(dx, dy, saved, &self.table, len, a, None);
                }
                (Layer::MaxPool2d(l), Some(dx)) => {
                    let (dx, dy) = split(&mut self.grad, dx, dy);
                    b.maxpool_backward(dx, dy, &self.argmax[node.layer], &l, n);
                }
                (Layer::AvgPool2d(l), Some(dx)) => {
                    let (dx, dy) = split(&mut self.grad, dx, dy);
                    b.avgpool_backward(dx, dy, &l, n);
                }
                (Layer::Dropout { .. }, Some(dx)) => {
                    let d = self.dropout(node.layer, global_step);
                    let (dx, dy) = split(&mut self.grad, dx, dy);
                    b.dropout_backward(dx, dy, &self.table, len, &d);
                }
                (Layer::Add { .. } | Layer::Flatten, Some(_)) => unreachable!("no backward op"),
            }
        }
    }

    /// Forward and backward of one batch already gathered into acts[0] and labels: leaves the
    /// gradients in `grads` and the batch's loss and correct count per member in the stats of
    /// `slot`.
    pub fn forward_backward(&mut self, b: &mut B, stats: &mut B::Buf, n: usize, slot: usize, global_step: u32) {
        self.forward(b, n, true, global_step);
        let (members, classes) = (self.len(), self.arch.classes());
        let scale = 1.0 / n as f32;
        let (dlogits, logits) = (&mut self.grad[self.backward.loss], &self.acts[self.train_plan.out]);
        match self.loss {
            Loss::CrossEntropy => {
                let xent = Xent { members, classes, scale, smoothing_at: self.layout.smoothing_at };
                b.softmax_xent_forward_backward(dlogits, stats, slot, logits, &self.labels, &self.table, n, &xent)
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
        &self.acts[self.train_plan.out]
    }

    /// Every activation buffer at every layer boundary, and the max-pool positions, for the
    /// first `n` examples (empty where a boundary has no buffer). For tests and debugging.
    pub async fn debug_activations(&mut self, b: &mut B, n: usize) -> Result<Activations> {
        let mut acts = Vec::new();
        for (k, shape) in self.arch.shapes.iter().enumerate() {
            let used = self.train_plan.buffers().any(|b| b == k);
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
                let a = AdamStep { beta1, beta2, eps, t, segments: params, lr_at, wd_at: self.layout.wd_at };
                b.adam_step(&mut self.params, &self.grads, &mut self.opt_m, &mut self.opt_v, &self.table, len, &a);
            }
            Optimizer::Sgd { nesterov, .. } => {
                let (momentum_at, wd_at) = (self.layout.momentum_at, self.layout.wd_at);
                let s = SgdStep { segments: params, lr_at, momentum_at, wd_at, nesterov };
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
}
