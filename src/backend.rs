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
//! - Loss ops write, for batch `slot`, `stats[2*slot]` = the batch's summed loss and
//!   `stats[2*slot+1]` = its number of correct predictions (argmax, first maximum wins).

use crate::data::augment::Augment;
use crate::error::Result;
use crate::model::{Act, BatchNorm, Conv2d, Dense, Pool};

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

/// What `conv2d_forward` and `dense_forward` apply to each output after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Epilogue {
    pub act: Option<Act>,
    /// Inverted dropout (p, key) after a relu, with exactly `dropout_forward`'s mask (element
    /// i of the batch's output buffer). After relu the backward needs only the dropped-out
    /// output z: dpre = dz * scale * [z > 0] (`activation_backward` with `scale`).
    pub dropout: Option<(f32, u32)>,
}

impl Epilogue {
    pub fn act(act: Option<Act>) -> Self {
        Epilogue { act, dropout: None }
    }
}

/// One Adam step over the whole flat parameter buffer; `t` counts steps from 1.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub t: u32,
}

impl AdamStep {
    /// Bias corrections 1 - beta^t, computed the same way on every backend (f64 on the host,
    /// then rounded), so the kernels only multiply.
    pub fn corrections(&self) -> (f32, f32) {
        let c1 = 1.0 - (self.beta1 as f64).powi(self.t as i32);
        let c2 = 1.0 - (self.beta2 as f64).powi(self.t as i32);
        (c1 as f32, c2 as f32)
    }
}

/// One SGD step (with optional heavy-ball momentum, as torch.optim.SGD).
#[derive(Debug, Clone, Copy)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
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
    /// Runs everything enqueued and reads the first `len` elements back.
    fn download(&mut self, src: &Self::Buf, len: usize) -> Result<Vec<f32>>;
    fn download_u32(&mut self, src: &Self::IBuf, len: usize) -> Result<Vec<u32>>;
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

    /// out (n, c_out, h_out, w_out) = epilogue(conv(inp (n, c_in, h_in, w_in), W) + b).
    fn conv2d_forward(
        &mut self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        params: &Self::Buf,
        l: &Conv2d,
        n: usize,
        epi: Epilogue,
    );
    /// dinp (n, c_in, h_in, w_in) from dout (n, c_out, h_out, w_out).
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

    /// out (n, n_out) = epilogue(inp (n, n_in) W^T + b).
    fn dense_forward(
        &mut self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        params: &Self::Buf,
        l: &Dense,
        n: usize,
        epi: Epilogue,
    );
    /// dinp (n, n_in) = dout (n, n_out) W.
    fn dense_backward_input(&mut self, dinp: &mut Self::Buf, dout: &Self::Buf, params: &Self::Buf, l: &Dense, n: usize);
    /// dW (n_out, n_in) = dout^T inp, db = column sums of dout.
    fn dense_backward_weight(&mut self, grads: &mut Self::Buf, dout: &Self::Buf, inp: &Self::Buf, l: &Dense, n: usize);

    /// out = act(inp), element-wise over `len` elements.
    fn activation_forward(&mut self, out: &mut Self::Buf, inp: &Self::Buf, len: usize, act: Act);
    /// dinp = dout * act'(.) * scale, computed from the activation's output `out` (scale is 1,
    /// or the dropout scale after a fused relu + dropout).
    fn activation_backward(
        &mut self,
        dinp: &mut Self::Buf,
        dout: &Self::Buf,
        out: &Self::Buf,
        len: usize,
        act: Act,
        scale: f32,
    );

    /// out (n, c, h_out, w_out) = window maxima; `argmax` keeps each maximum's position
    /// (y * w_in + x within its plane) for the backward.
    fn maxpool_forward(&mut self, out: &mut Self::Buf, argmax: &mut Self::IBuf, inp: &Self::Buf, l: &Pool, n: usize);
    fn maxpool_backward(&mut self, dinp: &mut Self::Buf, dout: &Self::Buf, argmax: &Self::IBuf, l: &Pool, n: usize);

    /// Inverted dropout: element i is kept when `rng::draw(key, i) >= p` and scaled by
    /// 1/(1-p). The mask is recomputed from `key` in the backward, never stored.
    fn dropout_forward(&mut self, out: &mut Self::Buf, inp: &Self::Buf, len: usize, p: f32, key: u32);
    fn dropout_backward(&mut self, dinp: &mut Self::Buf, dout: &Self::Buf, len: usize, p: f32, key: u32);

    /// Batch norm. Training: normalise by the batch's statistics, save (mean, 1/std) per
    /// channel in `saved` (2c) and update the running statistics in `state`. Evaluation:
    /// normalise by the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_forward(
        &mut self,
        out: &mut Self::Buf,
        saved: &mut Self::Buf,
        state: &mut Self::Buf,
        inp: &Self::Buf,
        params: &Self::Buf,
        l: &BatchNorm,
        n: usize,
        train: bool,
    );
    #[allow(clippy::too_many_arguments)]
    fn batchnorm_backward(
        &mut self,
        dinp: &mut Self::Buf,
        grads: &mut Self::Buf,
        dout: &Self::Buf,
        inp: &Self::Buf,
        saved: &Self::Buf,
        params: &Self::Buf,
        l: &BatchNorm,
        n: usize,
    );

    /// Softmax + cross-entropy, fused: writes dlogits = (softmax - onehot) * scale and the
    /// batch's stats. `scale` is 1/(examples in the batch) for a mean loss.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent_forward_backward(
        &mut self,
        dlogits: &mut Self::Buf,
        stats: &mut Self::Buf,
        slot: usize,
        logits: &Self::Buf,
        labels: &Self::IBuf,
        n: usize,
        classes: usize,
        scale: f32,
    );
    /// Evaluation: probabilities into `probs` from example `probs_at` on, and the stats.
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
        classes: usize,
    );
    /// Mean squared error against one-hot targets: per example mean over classes of
    /// (y - t)^2; dy = 2 (y - t) / classes * scale.
    #[allow(clippy::too_many_arguments)]
    fn mse_forward_backward(
        &mut self,
        dout: &mut Self::Buf,
        stats: &mut Self::Buf,
        slot: usize,
        outputs: &Self::Buf,
        labels: &Self::IBuf,
        n: usize,
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
        classes: usize,
    );

    /// Adam (or AdamW with weight decay) over the first `len` elements of the flat buffers.
    fn adam_step(
        &mut self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        len: usize,
        a: &AdamStep,
    );
    /// SGD; `velocity` is only touched when momentum > 0.
    fn sgd_step(
        &mut self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        velocity: &mut Self::Buf,
        len: usize,
        s: &SgdStep,
    );
    /// Weight averaging: `avg = decay * avg + (1 - decay) * src` over the first `len` elements.
    fn ema_update(&mut self, avg: &mut Self::Buf, src: &Self::Buf, len: usize, decay: f32);
}
