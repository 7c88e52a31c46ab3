//! The boundary between the trainer and a compute device: buffers, and the ops over them.
//!
//! Every op is named the same in three places: the WGSL entry point (`shaders/*.wgsl`), the
//! CPU function (`src/cpu/*.rs`) and the GPU launcher (`src/gpu/kernels/*.rs`). Ops only enqueue
//! work: a GPU backend records them into a command buffer and runs many training steps per
//! submit; nothing comes back to the host until `download`. Signatures put outputs first,
//! then inputs, then sizes. `n` is the number of examples in the batch (at most the capacity
//! the buffers were allocated for); lengths are in elements.
//!
//! Conventions shared by both backends (and checked by the parity tests):
//! - Activations are NCHW (or N x features), f32.
//! - Parameters, their gradients and the optimizer state are flat buffers laid out by
//!   `model::Arch`; layers find their tensors by offset.
//! - Backward ops overwrite gradients (no accumulation), so nothing needs zeroing.
//! - Loss ops write, for batch `slot` and member k, `stats[2*(slot*members + k)]` = the
//!   batch's summed loss and the next word its number of correct predictions (argmax, first
//!   maximum wins).
//!
//! Members: a network may hold `members` models of one architecture trained side by side
//! (seeds, sweeps; `network::members`). Their activations share each example's row,
//! member-major: layer outputs are (n, members x per-member features), so a later conv or
//! dense layer is a grouped one (a group per member) and batch norm and pooling stay per
//! channel. What differs by member besides the weights (dropout masks and rates, learning
//! rates, weight decay, averaging) the ops read from the member table, a u32 buffer the
//! network fills (`MemberTable`): `seed32` of member k at word k, everything else at the
//! offsets the ops' arguments give. One model is the array of one.

use crate::data::augment::Augment;
use crate::error::Result;
use crate::model::{Act, AvgPool, BatchNorm, Conv2d, Dense, Pool};

/// The most input channels an image may have (grayscale, gray + alpha, RGB, RGBA).
pub const MAX_CHANNELS: usize = 4;

/// Arguments of `gather_batch`: which examples, and how to turn bytes into inputs.
#[derive(Debug, Clone, Copy)]
pub struct Gather {
    /// First position in the permutation.
    pub start: usize,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Per channel (the first `channels` entries): inputs are (pixel/255 - mean) / std.
    pub mean: [f32; MAX_CHANNELS],
    pub std: [f32; MAX_CHANNELS],
    /// Augmentation and the key of this batch's draws (see `data::augment`).
    pub augment: Option<(Augment, u32)>,
    /// The examples the `images` buffer holds: data-set indices `first..first + count`. A data
    /// set too large for one buffer is split over several (`network::DeviceData`), and each
    /// gather over one of them writes only the batch's examples that it holds.
    pub first: usize,
    pub count: usize,
}

/// Inverted dropout over a batch buffer of `members` models, each member's mask the one a
/// model of its own would draw. Element i of the buffer is element `j` of member `k`'s own
/// batch buffer (`locate`), kept when `rng::draw(key_k, j) >= p_k` and then scaled by
/// 1 / (1 - p_k), where key_k = `rng::op_key` of member k's seed, `stream` and `step` (its
/// `seed32` is word k of the member table) and p_k, 1 / (1 - p_k) are the f32 bits at words
/// `at + k` and `at + members + k`. The mask is recomputed from the keys in the backward,
/// never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropout {
    pub members: usize,
    /// Elements per example and member (the layer's per-member output size).
    pub len: usize,
    /// The layer's random stream (`rng::STREAM_DROPOUT` + layer index).
    pub stream: u32,
    /// The training step (the third input of `rng::op_key`).
    pub step: u32,
    /// Where the layer's p and scale per member start in the member table.
    pub at: usize,
}

impl Dropout {
    /// (member, index in that member's own batch buffer) of element i of the shared buffer.
    pub fn locate(&self, i: usize) -> (usize, usize) {
        let (len, k) = (self.len.max(1), self.members.max(1));
        ((i / len) % k, (i / (len * k)) * len + i % len)
    }

    /// Member k's key, p and scale.
    pub fn member(&self, table: &[u32], k: usize) -> (u32, f32, f32) {
        let key = crate::rng::mix32(crate::rng::mix32(table[k] ^ self.stream) ^ self.step);
        (key, f32::from_bits(table[self.at + k]), f32::from_bits(table[self.at + self.members + k]))
    }
}

/// What `conv2d_forward` and `dense_forward` apply to each output after the bias (an
/// activation whose `Act::fuses` holds), and `batchnorm_forward` after normalising (any).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Epilogue {
    pub act: Option<Act>,
    /// Inverted dropout after a relu, with exactly `dropout_forward`'s mask. After relu the
    /// backward needs only the dropped-out output z: dpre = dz * scale * [z > 0]
    /// (`activation_backward` with the same `Dropout`).
    pub dropout: Option<Dropout>,
}

impl Epilogue {
    pub fn act(act: Option<Act>) -> Self {
        Epilogue { act, dropout: None }
    }
}

/// Where an optimizer finds, in the member table, which member each element of a flat
/// buffer belongs to: at word `segments`, a count S, then S pairs (start, per-member length)
/// sorted by start, one per tensor: elements start + k * len .. + len belong to member k
/// (the tensors of K members laid side by side, `model::Arch::fused`); an element belongs to
/// the last segment starting at or before it, and past its K-th slice (alignment padding) to
/// member K - 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub members: usize,
    pub at: usize,
}

impl Segments {
    /// The member element i belongs to.
    pub fn member_of(&self, table: &[u32], i: usize) -> usize {
        let count = table[self.at] as usize;
        let (mut lo, mut hi) = (0, count);
        // The last segment whose start is <= i.
        while lo < hi {
            let mid = (lo + hi) / 2;
            if table[self.at + 1 + 2 * mid] as usize <= i {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return 0;
        }
        let (start, len) = (table[self.at + 2 * lo - 1] as usize, table[self.at + 2 * lo] as usize);
        ((i - start) / len.max(1)).min(self.members.max(1) - 1)
    }

    /// Elements `0..len` as runs of one member each: (range, member), in order.
    pub fn runs(&self, table: &[u32], len: usize) -> Vec<(std::ops::Range<usize>, usize)> {
        let count = table[self.at] as usize;
        let k = self.members.max(1);
        let seg = |j: usize| (table[self.at + 1 + 2 * j] as usize, table[self.at + 2 + 2 * j] as usize);
        let mut runs = Vec::new();
        let mut push = |r: std::ops::Range<usize>, m: usize| {
            let r = r.start.min(len)..r.end.min(len);
            if !r.is_empty() {
                runs.push((r, m));
            }
        };
        let first = if count == 0 { len } else { seg(0).0 };
        push(0..first, 0);
        for j in 0..count {
            let (start, l) = seg(j);
            let end = if j + 1 < count { seg(j + 1).0 } else { len };
            for m in 0..k {
                let from = start + m * l.max(1);
                let to = if m + 1 == k { end } else { (start + (m + 1) * l.max(1)).min(end) };
                if from < to {
                    push(from..to, m);
                }
            }
        }
        runs
    }
}

/// One Adam step over the whole flat parameter buffer; `t` counts steps from 1. Member k's
/// learning rate is the f32 at word `lr_at + k` of the member table and its (decoupled)
/// weight decay the one at `wd_at + k`.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub t: u32,
    pub segments: Segments,
    pub lr_at: usize,
    pub wd_at: usize,
}

impl AdamStep {
    /// Bias corrections 1 - beta^t, computed the same way on every backend (f64 on the host,
    /// then rounded).
    pub fn corrections(&self) -> (f32, f32) {
        let c1 = 1.0 - (self.beta1 as f64).powi(self.t as i32);
        let c2 = 1.0 - (self.beta2 as f64).powi(self.t as i32);
        (c1 as f32, c2 as f32)
    }
}

/// One SGD step as torch.optim.SGD: member k's learning rate at word `lr_at + k` of the
/// member table, its momentum at `momentum_at + k` and its (coupled) weight decay at
/// `wd_at + k`. With g = grad + wd p: with momentum, b <- momentum b + g and p <- p - lr b,
/// or with `nesterov` p <- p - lr (g + momentum b); without, p <- p - lr g (b untouched).
#[derive(Debug, Clone, Copy)]
pub struct SgdStep {
    pub segments: Segments,
    pub lr_at: usize,
    pub momentum_at: usize,
    pub wd_at: usize,
    pub nesterov: bool,
}

/// What the fused softmax + cross-entropy needs besides its buffers: logits (n, members,
/// classes), the gradient scale (1 / examples in the batch for a mean loss), and where member
/// k's label smoothing s_k is in the member table (word `smoothing_at + k`, f32 bits): the
/// target is (1 - s) onehot + s / classes, the loss (1 - s) (-log p[label]) + s mean_c(-log
/// p[c]), torch's `CrossEntropyLoss(label_smoothing = s)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Xent {
    pub members: usize,
    pub classes: usize,
    pub scale: f32,
    pub smoothing_at: usize,
}

/// Weight averaging: member k's decay per step at word `decay_at + k` of the member table.
#[derive(Debug, Clone, Copy)]
pub struct EmaStep {
    pub segments: Segments,
    pub decay_at: usize,
}

/// The f32 at word `at` of a member table.
pub fn table_f32(table: &[u32], at: usize) -> f32 {
    f32::from_bits(table[at])
}

/// Writes a member table: each member's `rng::seed32` first, then what is added, each part's
/// offset returned for the ops' arguments (`network::MemberTable` builds a network's with
/// it; tests and tools calling ops directly build theirs).
#[derive(Debug, Clone)]
pub struct TableBuilder {
    pub words: Vec<u32>,
    members: usize,
}

impl TableBuilder {
    pub fn new(seeds: &[u64]) -> TableBuilder {
        TableBuilder { words: seeds.iter().map(|&s| crate::rng::seed32(s)).collect(), members: seeds.len() }
    }

    /// A dropout's rates, one per member, and their scales 1 / (1 - p): its `Dropout::at`.
    pub fn dropout(&mut self, p: &[f32]) -> usize {
        let at = self.words.len();
        self.words.extend(p.iter().map(|p| p.to_bits()));
        self.words.extend(p.iter().map(|p| (1.0 / (1.0 - p)).to_bits()));
        at
    }

    /// One f32 per member (learning rates, weight decays, ...): where they start.
    pub fn values(&mut self, v: &[f32]) -> usize {
        let at = self.words.len();
        self.words.extend(v.iter().map(|v| v.to_bits()));
        at
    }

    /// A segment list of (start, per-member length), sorted by start.
    pub fn segments(&mut self, segs: &[(usize, usize)]) -> Segments {
        let at = self.words.len();
        self.words.push(segs.len() as u32);
        for &(start, len) in segs {
            self.words.extend([start as u32, len as u32]);
        }
        Segments { members: self.members, at }
    }
}

pub trait Backend {
    /// A device buffer of f32.
    type Buf;
    /// A device buffer of u32 (labels, indices, packed image bytes).
    type IBuf;

    /// What the backend runs on, for logs ("cpu, 2 threads", "NVIDIA H100 (Vulkan)").
    fn name(&self) -> String;

    /// The most elements one buffer may hold (a GPU's binding limit).
    fn max_buffer_len(&self) -> usize {
        usize::MAX
    }

    /// (dispatches recorded, host seconds spent recording and submitting them) so far, for
    /// backends that record work for a device (see `bench`); None for those that compute
    /// as they are called.
    fn host_counters(&self) -> Option<(u64, f64)> {
        None
    }

    /// Whether buffers live in host memory (the CPU backends), so that what a model needs is
    /// checked against the host's memory before allocating.
    fn allocates_on_host(&self) -> bool {
        false
    }

    /// A zero-filled buffer of `len` elements.
    fn alloc(&mut self, len: usize) -> Result<Self::Buf>;
    fn alloc_u32(&mut self, len: usize) -> Result<Self::IBuf>;
    /// Writes `data` at the start of `dst`, ordered after all work enqueued so far.
    fn upload(&mut self, dst: &mut Self::Buf, data: &[f32]) -> Result<()>;
    fn upload_u32(&mut self, dst: &mut Self::IBuf, data: &[u32]) -> Result<()>;
    /// Runs everything enqueued and reads the first `len` elements back. A GPU waits for its
    /// queue: in a browser the wait is awaited (the page's event loop delivers the mapping);
    /// native code blocks on it (`read`).
    fn download(&mut self, src: &Self::Buf, len: usize) -> impl Future<Output = Result<Vec<f32>>>;
    fn download_u32(&mut self, src: &Self::IBuf, len: usize) -> impl Future<Output = Result<Vec<u32>>>;

    /// `download`, blocking until it is done: for native code and tests (a browser cannot
    /// block; there the read-back is awaited).
    #[cfg(not(target_arch = "wasm32"))]
    fn read(&mut self, src: &Self::Buf, len: usize) -> Result<Vec<f32>> {
        pollster::block_on(self.download(src, len))
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn read_u32(&mut self, src: &Self::IBuf, len: usize) -> Result<Vec<u32>> {
        pollster::block_on(self.download_u32(src, len))
    }
    /// Starts the work enqueued so far (a GPU submit) without waiting for it.
    fn flush(&mut self) -> Result<()>;

    /// x (n, c, h, w) and y (n) from the data set's examples `perm[start..start+n]`:
    /// `(pixel/255 - mean[c]) / std[c]`, resampled by the batch's augmentation if it has one.
    /// `images` holds examples `g.first..g.first + g.count` as bytes (c, h, w per example)
    /// packed four to a u32, little-endian; examples outside that range are left as they are.
    #[allow(clippy::too_many_arguments)]
    fn gather_batch(
        &mut self,
        x: &mut Self::Buf,
        y: &mut Self::IBuf,
        images: &Self::IBuf,
        labels: &Self::IBuf,
        perm: &Self::IBuf,
        g: &Gather,
    );

    /// out (n, c_out, h_out, w_out) = epilogue(conv(inp (n, c_in, h_in, w_in), W) + b), the
    /// output channels in `l.groups` groups, group g reading input group g % `l.in_groups`
    /// (see `model::Conv2d`); `table` is the member table (for the epilogue's dropout).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_forward(
        &mut self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        params: &Self::Buf,
        table: &Self::IBuf,
        l: &Conv2d,
        n: usize,
        epi: Epilogue,
    );
    /// dinp (n, c_in, h_in, w_in) from dout (n, c_out, h_out, w_out); needs in_groups ==
    /// groups (no input group read by several output groups: an array's shared input, which
    /// needs no gradient).
    fn conv2d_backward_input(
        &mut self,
        dinp: &mut Self::Buf,
        dout: &Self::Buf,
        params: &Self::Buf,
        l: &Conv2d,
        n: usize,
    );
    /// dW and db (written into `grads` at the layer's offsets) from dout and the layer input.
    fn conv2d_backward_weight(
        &mut self,
        grads: &mut Self::Buf,
        dout: &Self::Buf,
        inp: &Self::Buf,
        l: &Conv2d,
        n: usize,
    );

    /// out (n, n_out) = epilogue(inp (n, n_in) W^T + b), per group g of `l.groups`: outputs
    /// g * n_out/groups.. from inputs g * n_in/groups.. with W (n_out, n_in/groups) row block g.
    #[allow(clippy::too_many_arguments)]
    fn dense_forward(
        &mut self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        params: &Self::Buf,
        table: &Self::IBuf,
        l: &Dense,
        n: usize,
        epi: Epilogue,
    );
    /// dinp (n, n_in) = dout (n, n_out) W, per group.
    fn dense_backward_input(&mut self, dinp: &mut Self::Buf, dout: &Self::Buf, params: &Self::Buf, l: &Dense, n: usize);
    /// dW (n_out, n_in/groups) = dout^T inp per group, db = column sums of dout.
    fn dense_backward_weight(&mut self, grads: &mut Self::Buf, dout: &Self::Buf, inp: &Self::Buf, l: &Dense, n: usize);

    /// out = act(inp), element-wise over `len` elements.
    fn activation_forward(&mut self, out: &mut Self::Buf, inp: &Self::Buf, len: usize, act: Act);
    /// dinp = dout * act'(.) * scale, computed from `saved`: the activation's output where
    /// `act.grad_from_output()` (relu, sigmoid, tanh, leaky relu), else its input (gelu,
    /// silu); scale is 1, or after a fused relu + dropout the dropout's scale of the element's
    /// member.
    #[allow(clippy::too_many_arguments)]
    fn activation_backward(
        &mut self,
        dinp: &mut Self::Buf,
        dout: &Self::Buf,
        saved: &Self::Buf,
        table: &Self::IBuf,
        len: usize,
        act: Act,
        dropout: Option<Dropout>,
    );

    /// out = a + b, element-wise over `len` elements: a residual block's output (body plus
    /// shortcut) and, in the backward, the sum of a value's gradients from the two branches
    /// that read it.
    fn residual_add(&mut self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, len: usize);

    /// out (n, c, h_out, w_out) = the mean of each kh x kw window at stride steps.
    fn avgpool_forward(&mut self, out: &mut Self::Buf, inp: &Self::Buf, l: &AvgPool, n: usize);
    /// dinp (n, c, h_in, w_in): every input element gets dout / (kh kw) of each window it is in.
    fn avgpool_backward(&mut self, dinp: &mut Self::Buf, dout: &Self::Buf, l: &AvgPool, n: usize);

    /// out (n, c, h_out, w_out) = window maxima; `argmax` keeps each maximum's position
    /// (y * w_in + x within its plane) for the backward.
    fn maxpool_forward(&mut self, out: &mut Self::Buf, argmax: &mut Self::IBuf, inp: &Self::Buf, l: &Pool, n: usize);
    fn maxpool_backward(&mut self, dinp: &mut Self::Buf, dout: &Self::Buf, argmax: &Self::IBuf, l: &Pool, n: usize);

    /// Inverted dropout over `len` elements (see `Dropout`).
    fn dropout_forward(&mut self, out: &mut Self::Buf, inp: &Self::Buf, table: &Self::IBuf, len: usize, d: &Dropout);
    fn dropout_backward(&mut self, dinp: &mut Self::Buf, dout: &Self::Buf, table: &Self::IBuf, len: usize, d: &Dropout);

    /// Batch norm. Training: normalise by the batch's statistics, save (mean, 1/std) per
    /// channel in `saved` (2c) and update the running statistics in `state`. Evaluation:
    /// normalise by the running statistics. Then `epi`: any activation, and after a relu a
    /// dropout (`table` is the member table, for its mask), as the separate ops compute them.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward(
        &mut self,
        out: &mut Self::Buf,
        saved: &mut Self::Buf,
        state: &mut Self::Buf,
        inp: &Self::Buf,
        params: &Self::Buf,
        table: &Self::IBuf,
        l: &BatchNorm,
        n: usize,
        train: bool,
        epi: Epilogue,
    );
    /// dinp (n, c, h, w) and dgamma, dbeta (into `grads`) from dout, the gradient of the
    /// forward's output `out`. With an epilogue, dout is that of the epilogue's output and
    /// is first taken through it as `activation_backward` would (dout * act'(.) * the dropout
    /// scale, act' from `out`, or for gelu and silu from the normalised input, recomputed
    /// from `inp` as the forward computed it) without writing that gradient out; without
    /// one, `out` is not read.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward(
        &mut self,
        dinp: &mut Self::Buf,
        grads: &mut Self::Buf,
        dout: &Self::Buf,
        inp: &Self::Buf,
        out: &Self::Buf,
        saved: &Self::Buf,
        params: &Self::Buf,
        table: &Self::IBuf,
        l: &BatchNorm,
        n: usize,
        epi: Epilogue,
    );

    /// Softmax + cross-entropy, fused, one per member: logits (n, members, classes), each
    /// member's row against the example's label; writes dlogits = (softmax - target) * scale
    /// with each member's smoothed target (`Xent`), and the batch's stats per member (the
    /// smoothed loss).
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent_forward_backward(
        &mut self,
        dlogits: &mut Self::Buf,
        stats: &mut Self::Buf,
        slot: usize,
        logits: &Self::Buf,
        labels: &Self::IBuf,
        table: &Self::IBuf,
        n: usize,
        x: &Xent,
    );
    /// Evaluation: probabilities into `probs` (rows of members x classes) from example
    /// `probs_at` on, and the stats.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent_forward(
        &mut self,
        probs: &mut Self::Buf,
        probs_at: usize,
        stats: &mut Self::Buf,
        slot: usize,
        logits: &Self::Buf,
        labels: &Self::IBuf,
        n: usize,
        members: usize,
        classes: usize,
    );
    /// Mean squared error against one-hot targets, one per member: per example mean over
    /// classes of (y - t)^2; dy = 2 (y - t) / classes * scale.
    #[allow(clippy::too_many_arguments)]
    fn mse_forward_backward(
        &mut self,
        dout: &mut Self::Buf,
        stats: &mut Self::Buf,
        slot: usize,
        outputs: &Self::Buf,
        labels: &Self::IBuf,
        n: usize,
        members: usize,
        classes: usize,
        scale: f32,
    );
    /// Evaluation: copies the outputs into `probs` (as scores) and writes the stats.
    #[allow(clippy::too_many_arguments)]
    fn mse_forward(
        &mut self,
        probs: &mut Self::Buf,
        probs_at: usize,
        stats: &mut Self::Buf,
        slot: usize,
        outputs: &Self::Buf,
        labels: &Self::IBuf,
        n: usize,
        members: usize,
        classes: usize,
    );

    /// Adam (or AdamW with weight decay) over the first `len` elements of the flat buffers,
    /// each element with its member's learning rate and weight decay.
    #[allow(clippy::too_many_arguments)]
    fn adam_step(
        &mut self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        table: &Self::IBuf,
        len: usize,
        a: &AdamStep,
    );
    /// SGD (see `SgdStep`); `velocity` is only touched where the member's momentum is > 0.
    fn sgd_step(
        &mut self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        velocity: &mut Self::Buf,
        table: &Self::IBuf,
        len: usize,
        s: &SgdStep,
    );
    /// Weight averaging: `avg = decay * avg + (1 - decay) * src` over the first `len`
    /// elements, with the element's member's decay.
    fn ema_update(&mut self, avg: &mut Self::Buf, src: &Self::Buf, table: &Self::IBuf, len: usize, e: &EmaStep);
}
