//! The members of a network: K models of one architecture trained side by side as one
//! network (`model::Arch::fused`), for seeds and sweeps; and the member table, the u32 buffer
//! through which the ops learn what differs between members besides their weights (see
//! `backend`: seeds, dropout rates, learning rates, weight decay or momentum, averaging).
//!
//! A model of its own is the array of one: the same plan, the same ops, a table of one.

use crate::backend::{Dropout, Segments, TableBuilder};
use crate::error::{Error, Result};
use crate::model::spec::{self, Optimizer};
use crate::model::{Arch, Layer, LayerSpec, ModelSpec, TensorInfo};
use crate::rng;

/// One model of an array: its seed (initialisation and dropout) and its model file, with the
/// values swept for it in its recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub seed: u64,
    pub spec: ModelSpec,
}

/// The members of a network, and the network they make.
#[derive(Debug, Clone)]
pub struct Members {
    /// One member's architecture (with the first member's recipe).
    pub lone: Arch,
    /// All of them as one network.
    pub fused: Arch,
    pub list: Vec<Member>,
}

/// A spec with every value a member may have of its own set to one value, so that members
/// compare equal exactly when they differ in those alone.
fn shared_part(spec: &ModelSpec) -> ModelSpec {
    let mut s = spec.clone();
    s.train.optimizer.set_lr(1.0);
    match &mut s.train.optimizer {
        Optimizer::Adam { weight_decay, .. } => *weight_decay = 0.0,
        Optimizer::Sgd { momentum, weight_decay, .. } => (*momentum, *weight_decay) = (0.0, 0.0),
    }
    s.train.label_smoothing = 0.0;
    s.train.ema = s.train.ema.map(|_| 0.5);
    spec::for_each_mut(&mut s.layers, &mut |l| {
        if let LayerSpec::Dropout { p } = l {
            *p = 0.0;
        }
    });
    s
}

impl Members {
    /// A model of its own.
    pub fn one(arch: Arch, seed: u64) -> Members {
        let list = vec![Member { seed, spec: arch.spec.clone() }];
        Members { fused: arch.clone(), lone: arch, list }
    }

    /// An array: every member the same model but for its seed, learning rate, weight decay,
    /// momentum, label smoothing, weight-averaging decay and dropout rates (all averaging or
    /// none).
    pub fn new(list: Vec<Member>) -> Result<Members> {
        let Some(first) = list.first() else {
            return Err(Error::Config("an array needs at least one member".into()));
        };
        let lone = Arch::new(first.spec.clone())?;
        let shared = shared_part(&first.spec);
        for m in &list {
            m.spec.train.validate().map_err(Error::Config)?;
            if shared_part(&m.spec) != shared || m.spec.train.ema.is_some() != first.spec.train.ema.is_some() {
                return Err(Error::Config(format!(
                    "the member with seed {} differs from the first in more than its seed, learning rate, weight \
                     decay, momentum, label smoothing, ema and dropout",
                    m.seed
                )));
            }
        }
        let fused = Arch::fused(first.spec.clone(), list.len())?;
        Ok(Members { lone, fused, list })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Fresh parameters and state of every member, each drawn from its own seed as a model of
    /// its own would be, in the fused layout.
    pub fn init(&self) -> (Vec<f32>, Vec<f32>) {
        let init = self.lone.recipe().init;
        let each: Vec<_> = self.list.iter().map(|m| self.lone.init(init, m.seed)).collect();
        self.join(&each)
    }

    /// Member models' (parameters, state) in the fused layout.
    pub fn join(&self, each: &[(Vec<f32>, Vec<f32>)]) -> (Vec<f32>, Vec<f32>) {
        let mut p = vec![0f32; self.fused.n_params];
        let mut s = vec![0f32; self.fused.n_state];
        for (k, (mp, ms)) in each.iter().enumerate() {
            self.put(k, &mut p, mp, &mut s, ms);
        }
        (p, s)
    }

    /// Member k's (parameters, state), as a model of its own lays them out, from fused
    /// buffers.
    pub fn member(&self, k: usize, params: &[f32], state: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut p = vec![0f32; self.lone.n_params];
        let mut s = vec![0f32; self.lone.n_state];
        move_tensors(&self.lone.params, &self.fused.params, k, |l, f| p[l].copy_from_slice(&params[f]));
        move_tensors(&self.lone.state, &self.fused.state, k, |l, f| s[l].copy_from_slice(&state[f]));
        (p, s)
    }

    /// Writes member k's own (parameters, state) into fused buffers.
    pub fn put(&self, k: usize, params: &mut [f32], mp: &[f32], state: &mut [f32], ms: &[f32]) {
        move_tensors(&self.lone.params, &self.fused.params, k, |l, f| params[f].copy_from_slice(&mp[l]));
        move_tensors(&self.lone.state, &self.fused.state, k, |l, f| state[f].copy_from_slice(&ms[l]));
    }

    /// Member k's base learning rate.
    pub fn lr(&self, k: usize) -> f32 {
        self.list[k].spec.train.optimizer.lr()
    }
}

/// For each tensor: (its range in a member's own buffer, member k's range in the fused one).
fn move_tensors(
    lone: &[TensorInfo],
    fused: &[TensorInfo],
    k: usize,
    mut f: impl FnMut(std::ops::Range<usize>, std::ops::Range<usize>),
) {
    for (l, t) in lone.iter().zip(fused) {
        let at = t.offset + k * l.len();
        f(l.range(), at..at + l.len());
    }
}

/// The member table's layout (`backend`): each member's seed32 at words 0..K, then what the
/// network's ops read, then the learning-rate rows (row r's K rates at `lr_at + r K`), which
/// change every epoch (or step) and are written with the rest.
#[derive(Debug, Clone)]
pub struct MemberTable {
    pub members: usize,
    /// Everything before the rows.
    words: Vec<u32>,
    /// Per layer: where its dropout's p and scale per member start (dropout layers only).
    dropout_at: Vec<Option<usize>>,
    /// Per member: Adam's (decoupled) or SGD's (coupled) weight decay.
    pub wd_at: usize,
    /// Per member: SGD's momentum (0 with Adam).
    pub momentum_at: usize,
    /// Per member: the cross-entropy's label smoothing.
    pub smoothing_at: usize,
    /// Per member: the weight average's decay per step (1 for none).
    pub ema_at: usize,
    pub params: Segments,
    pub state: Segments,
    pub lr_at: usize,
}

fn f32_word(v: f32) -> u32 {
    v.to_bits()
}

/// A flat buffer's tensors as segments: (start, per-member length) each.
fn segments(t: &mut TableBuilder, tensors: &[TensorInfo], members: usize) -> Segments {
    let segs: Vec<(usize, usize)> = tensors.iter().map(|x| (x.offset, x.len() / members)).collect();
    t.segments(&segs)
}

impl MemberTable {
    pub fn new(m: &Members) -> MemberTable {
        let k = m.len();
        let seeds: Vec<u64> = m.list.iter().map(|x| x.seed).collect();
        let mut t = TableBuilder::new(&seeds);
        let mut dropout_at = vec![None; m.fused.layers.len()];
        let flat: Vec<Vec<&LayerSpec>> = m.list.iter().map(|x| spec::flat(&x.spec.layers)).collect();
        for (i, layer) in m.fused.layers.iter().enumerate() {
            if matches!(layer, Layer::Dropout { .. }) {
                let p: Vec<f32> = flat
                    .iter()
                    .map(|layers| match layers.get(i) {
                        Some(&&LayerSpec::Dropout { p }) => p,
                        _ => 0.0,
                    })
                    .collect();
                dropout_at[i] = Some(t.dropout(&p));
            }
        }
        let each = |f: &dyn Fn(&ModelSpec) -> f32| -> Vec<f32> { m.list.iter().map(|x| f(&x.spec)).collect() };
        let wd_at = t.values(&each(&|s| s.train.optimizer.weight_decay()));
        let momentum_at = t.values(&each(&|s| s.train.optimizer.momentum()));
        let smoothing_at = t.values(&each(&|s| s.train.label_smoothing));
        let decays: Vec<f32> = m.list.iter().map(|x| x.spec.train.ema.unwrap_or(1.0)).collect();
        let ema_at = t.values(&decays);
        let params = segments(&mut t, &m.fused.params, k);
        let state = segments(&mut t, &m.fused.state, k);
        let words = t.words;
        let lr_at = words.len();
        MemberTable { members: k, words, dropout_at, wd_at, momentum_at, smoothing_at, ema_at, params, state, lr_at }
    }

    /// The table with learning-rate rows `rows` (each K rates), a frozen member's rates 0 and
    /// its average's decay 1 (it stays as it is).
    pub fn words(&self, rows: &[Vec<f32>], frozen: &[bool]) -> Vec<u32> {
        let mut w = self.words.clone();
        for (k, _) in frozen.iter().enumerate().filter(|f| *f.1) {
            w[self.ema_at + k] = f32_word(1.0);
        }
        for row in rows {
            w.extend(row.iter().enumerate().map(|(k, &lr)| f32_word(if frozen[k] { 0.0 } else { lr })));
        }
        w
    }

    /// The dropout of layer `layer` (a dropout layer) at training step `step`, over outputs of
    /// `len` elements per example and member.
    pub fn dropout(&self, layer: usize, len: usize, step: u32) -> Dropout {
        Dropout {
            members: self.members,
            len,
            stream: rng::STREAM_DROPOUT + layer as u32,
            step,
            at: self.dropout_at[layer].unwrap_or(0),
        }
    }

    /// The first word of learning-rate row `row`.
    pub fn row_at(&self, row: usize) -> usize {
        self.lr_at + row * self.members
    }
}
