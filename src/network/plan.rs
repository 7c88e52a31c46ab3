//! The plan: which op runs for which layer, reading and writing which buffer, and for
//! training the backward as a list of steps over a few gradient buffers.
//!
//! Activation buffers are indexed by layer boundary (`model::Arch`): boundary k + 1 holds the
//! output of flat layer k, boundary 0 the batch. An activation right after a conv or dense
//! layer is fused into it (written straight to the activation's output) when nothing else
//! reads the conv's output, and so is a dropout after a relu in training. Batch norm fuses
//! any activation after it the same way (and a dropout after a relu), forward and backward:
//! its backward takes the activation's output gradient itself, so no epilogue step runs
//! for it. A batch norm whose output another layer also reads (or that an `Add` follows, as
//! in a residual block's body) stays unfused, and so does the activation after that `Add`.
//! Flatten needs no
//! buffer (NCHW is already C, H, W order) and in evaluation dropout is skipped, so a boundary
//! may live in another's buffer (`buf`), and a plan records which buffers each op reads.
//!
//! A residual block makes the layers a small graph: its input is read by the body and by the
//! shortcut (or by the `Add`, for an identity shortcut), and the `Add` reads both branches.
//! The backward runs the ops in reverse; a value read by two ops gets a gradient from each,
//! summed by a `Step::Sum`; the `Add` hands its output's gradient to both branches as it is.
//! Gradient buffers ("slots") are handed out as values come to life and taken back after
//! their last reader, so a plain stack needs three (an op's output gradient, its input's and
//! a fused activation's pre-activation gradient), as before, and a residual net a few more.

use crate::model::{Act, Arch, Layer};

/// One op of a plan: layer `layer` reads buffer `inp` (and an `Add` also `other`) and writes
/// buffer `out`. A conv, dense or batch-norm op may carry the activation after it (`fused`) and, in
/// training, a dropout after a relu (`dropout`, that layer's index); `pre` is then the
/// boundary of its pre-activation output (which no buffer holds). `need_dx` (`need_dother`):
/// whether the gradient of `inp` (`other`) is needed, i.e. whether a layer with parameters
/// comes before it (the input itself, and an array's shared layers before its first conv or
/// dense layer, need none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    pub layer: usize,
    pub inp: usize,
    pub other: usize,
    pub out: usize,
    pub pre: usize,
    pub fused: Option<Act>,
    pub dropout: Option<usize>,
    pub need_dx: bool,
    pub need_dother: bool,
}

/// A forward plan: the ops in order and the buffer holding the model's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub nodes: Vec<Node>,
    pub out: usize,
}

impl Plan {
    /// Every buffer an op reads or writes (and the batch's).
    pub fn buffers(&self) -> impl Iterator<Item = usize> + '_ {
        self.nodes.iter().flat_map(|n| [n.inp, n.other, n.out]).chain([0])
    }
}

/// One step of the backward, over gradient slots (`Backward::slots`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Node `node`'s fused activation (and dropout) after a conv or dense op: slot `to` = the
    /// pre-activation gradient from the output gradient in slot `from` (batch norm's backward
    /// takes its activation's output gradient itself).
    Epilogue { node: usize, from: usize, to: usize },
    /// Node `node`'s own backward from its output gradient in slot `dy`: its parameters'
    /// gradients, and its input's gradient into slot `dx` when given.
    Layer { node: usize, dy: usize, dx: Option<usize> },
    /// Slot `to` = slot `a` + slot `b` over `len` values per example: the two gradients of a
    /// value that two ops read.
    Sum { to: usize, a: usize, b: usize, len: usize },
}

/// The training plan's backward: its steps, the length per example of each gradient slot,
/// and the slot the loss writes its gradient into.
#[derive(Debug, Clone, PartialEq)]
pub struct Backward {
    pub steps: Vec<Step>,
    pub slots: Vec<usize>,
    pub loss: usize,
}

/// The training (or evaluation) plan.
pub fn plan(arch: &Arch, train: bool) -> Plan {
    let layers = &arch.layers;
    let nb = layers.len() + 1;
    // How many layers read each boundary (the loss reads the last).
    let mut uses = vec![0usize; nb];
    for (k, l) in layers.iter().enumerate() {
        uses[arch.inputs[k]] += 1;
        if let Layer::Add { other } = l {
            uses[*other] += 1;
        }
    }
    uses[nb - 1] += 1;
    // Whether a layer with parameters lies before each boundary (its gradient is needed).
    let mut need = vec![false; nb];
    for (k, l) in layers.iter().enumerate() {
        let other = matches!(l, Layer::Add { other } if need[*other]);
        need[k + 1] = l.has_params() || need[arch.inputs[k]] || other;
    }
    // Layer j is the only reader of boundary b.
    let sole = |j: usize, b: usize| j < layers.len() && arch.inputs[j] == b && uses[b] == 1;
    let mut buf: Vec<usize> = (0..nb).collect();
    let mut absorbed = vec![false; layers.len()];
    let mut nodes = Vec::new();
    for k in 0..layers.len() {
        if absorbed[k] {
            continue;
        }
        let inp = buf[arch.inputs[k]];
        match layers[k] {
            Layer::Flatten => {
                buf[k + 1] = inp;
                continue;
            }
            Layer::Dropout { .. } if !train => {
                buf[k + 1] = inp;
                continue;
            }
            _ => {}
        }
        let mut node = Node {
            layer: k,
            inp,
            other: inp,
            out: k + 1,
            pre: k + 1,
            fused: None,
            dropout: None,
            need_dx: need[arch.inputs[k]],
            need_dother: false,
        };
        if let Layer::Add { other } = layers[k] {
            node.other = buf[other];
            node.need_dother = need[other];
        }
        // Conv and dense epilogues take the activations that need no argument; batch norm's
        // takes any (`backend::Epilogue`).
        let epilogue = |a: Act| match layers[k] {
            Layer::Conv2d(_) | Layer::Dense(_) => a.fuses(),
            Layer::BatchNorm(_) => true,
            _ => false,
        };
        if sole(k + 1, k + 1)
            && let Layer::Act(a) = layers[k + 1]
            && epilogue(a)
        {
            node.fused = Some(a);
            node.out = k + 2;
            absorbed[k + 1] = true;
            if train && a == Act::Relu && sole(k + 2, k + 2) && matches!(layers[k + 2], Layer::Dropout { .. }) {
                node.dropout = Some(k + 2);
                node.out = k + 3;
                absorbed[k + 2] = true;
            }
        }
        if !train {
            // Evaluation skips dropout: write straight into the buffer the training plan
            // writes after it, so both plans share their buffers.
            while sole(node.out, node.out) && matches!(layers[node.out], Layer::Dropout { .. }) {
                absorbed[node.out] = true;
                node.out += 1;
            }
        }
        for b in buf.iter_mut().take(node.out + 1).skip(k + 1) {
            *b = node.out;
        }
        nodes.push(node);
    }
    Plan { out: buf[nb - 1], nodes }
}

/// Gradient slots: each holds one value's gradient at a time, shared by reference count (an
/// `Add` hands one gradient to both branches), and grows to the largest value it holds.
#[derive(Default)]
struct Slots {
    lens: Vec<usize>,
    refs: Vec<usize>,
}

impl Slots {
    /// A free slot for a value of `len` per example: the smallest free one that holds it,
    /// else the largest free one (grown), else a new one.
    fn take(&mut self, len: usize) -> usize {
        let free = || (0..self.lens.len()).filter(|&s| self.refs[s] == 0);
        let fits = free().filter(|&s| self.lens[s] >= len).min_by_key(|&s| self.lens[s]);
        let s = match fits.or_else(|| free().max_by_key(|&s| self.lens[s])) {
            Some(s) => s,
            None => {
                self.lens.push(0);
                self.refs.push(0);
                self.lens.len() - 1
            }
        };
        self.lens[s] = self.lens[s].max(len);
        self.refs[s] = 1;
        s
    }

    fn share(&mut self, s: usize) {
        self.refs[s] += 1;
    }

    fn release(&mut self, s: usize) {
        self.refs[s] -= 1;
    }
}

/// The backward under construction: the steps so far, the slots, and the slot holding each
/// buffer's gradient so far.
struct Builder<'a> {
    arch: &'a Arch,
    slots: Slots,
    steps: Vec<Step>,
    held: std::collections::HashMap<usize, usize>,
}

impl Builder<'_> {
    fn len(&self, b: usize) -> usize {
        self.arch.shapes[b].len()
    }

    /// Hands gradient slot `s` (one reference, the caller's) to buffer `b`, summed with what
    /// `b` holds already.
    fn contribute(&mut self, b: usize, s: usize) {
        if let Some(prev) = self.held.insert(b, s) {
            let len = self.len(b);
            let to = self.slots.take(len);
            self.steps.push(Step::Sum { to, a: prev, b: s, len });
            self.slots.release(prev);
            self.slots.release(s);
            self.held.insert(b, to);
        }
    }
}

/// The backward of a training plan (see the module comment).
pub fn backward(arch: &Arch, plan: &Plan) -> Backward {
    let mut w = Builder { arch, slots: Slots::default(), steps: Vec::new(), held: Default::default() };
    let out_len = w.len(plan.out);
    let loss = w.slots.take(out_len);
    w.held.insert(plan.out, loss);
    for (i, node) in plan.nodes.iter().enumerate().rev() {
        // Every op's output reaches the loss, so its gradient is complete by now.
        let Some(mut dy) = w.held.remove(&node.out) else { continue };
        let layer = &arch.layers[node.layer];
        // Batch norm's backward takes its fused activation's output gradient itself.
        if node.fused.is_some() && !matches!(layer, Layer::BatchNorm(_)) {
            let pre_len = w.len(node.pre);
            let pre = w.slots.take(pre_len);
            w.steps.push(Step::Epilogue { node: i, from: dy, to: pre });
            w.slots.release(dy);
            dy = pre;
        }
        if let Layer::Add { .. } = layer {
            // d(body + shortcut) is dy for each branch: both read the same slot.
            for (b, needed) in [(node.inp, node.need_dx), (node.other, node.need_dother)] {
                if needed {
                    w.slots.share(dy);
                    w.contribute(b, dy);
                }
            }
        } else if layer.has_params() || node.need_dx {
            // Batch norm writes its input gradient even where nothing reads it (its
            // parameters' gradients come from the same op).
            let writes_dx = node.need_dx || matches!(layer, Layer::BatchNorm(_));
            let in_len = w.len(node.inp);
            let dx = writes_dx.then(|| w.slots.take(in_len));
            w.steps.push(Step::Layer { node: i, dy, dx });
            match dx {
                Some(dx) if node.need_dx => w.contribute(node.inp, dx),
                Some(dx) => w.slots.release(dx),
                None => {}
            }
        }
        w.slots.release(dy);
    }
    Backward { steps: w.steps, slots: w.slots.lens, loss }
}
