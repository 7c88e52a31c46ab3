//! `gpu-train bench`: the time of training steps, warm-up excluded, as one JSON line.
//!
//! Steps run exactly as in training (gather, forward, loss, backward, optimizer, dropout on)
//! on the real training images, without augmentation unless asked for, so the figure is
//! comparable with `bench/pytorch_bench.py`, which does the same in PyTorch. With several
//! members (`--seeds`), a step trains all of them at once (`network::Members`), and the
//! figures per member-step are what compares with training them one by one.

use web_time::Instant;

use serde::Serialize;

use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Arch;
use crate::network::{DeviceData, Members, Network};
use crate::rng;
use crate::train::{Epoch, run_steps};

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub arch: String,
    pub backend: String,
    pub device: String,
    pub batch: usize,
    /// Models trained side by side in each step.
    pub members: usize,
    pub steps: usize,
    pub warmup_steps: usize,
    /// Allocation, upload and (GPU) pipeline creation.
    pub setup_seconds: f64,
    pub warmup_seconds: f64,
    pub seconds_per_step: f64,
    /// `seconds_per_step` / members: the time one model's step costs.
    pub seconds_per_member_step: f64,
    /// `seconds_per_step` times the steps of a 60,000-image epoch.
    pub seconds_per_epoch: f64,
    pub images_per_second: f64,
    pub augment: bool,
    /// GPU: dispatches recorded per timed step, and the host's seconds per step recording
    /// and submitting them (the CPU cost of a step apart from waiting for the GPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatches_per_step: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_seconds_per_step: Option<f64>,
    /// GPU: bytes one step moves, estimated from the plan as the launchers dispatch it: per
    /// dispatch, each operand it reads and each it writes counted once at the length it
    /// covers (4 bytes an element, packed images 1 a pixel), without re-reads inside a
    /// dispatch, split-K partials or per-channel scalars (`Network::bytes_per_step`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_step: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatches_per_member_step: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_seconds_per_member_step: Option<f64>,
    /// What training needs at the least: the data set, parameters with their gradients and
    /// optimizer state, and one batch's forward activations (bytes).
    pub footprint: Footprint,
}

#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub dataset_bytes: usize,
    pub parameter_state_bytes: usize,
    pub activation_bytes: usize,
    pub total_bytes: usize,
}

pub const EPOCH_IMAGES: usize = 60_000;

#[allow(clippy::too_many_arguments)]
pub async fn bench<B: Backend>(
    b: &mut B,
    backend: &str,
    members: Members,
    data: &Dataset,
    batch: usize,
    steps: usize,
    warmup: usize,
    augment: bool,
) -> Result<BenchResult> {
    if batch == 0 || steps == 0 {
        return Err(Error::Config("bench needs --batch and --steps of at least 1".into()));
    }
    if data.len() < batch {
        return Err(Error::Config(format!("bench needs at least {batch} training images, found {}", data.len())));
    }
    let t0 = Instant::now();
    let recipe = members.lone.recipe().clone();
    crate::network::check_array(b, &members, batch)?;
    let (params, state) = members.init();
    let name = members.lone.name().to_string();
    let k = members.len();
    let dev = DeviceData::upload(b, data)?;
    let mut net = Network::array(b, members, batch, &params, &state)?;
    let batches = data.len() / batch;
    let mut stats = b.alloc(2 * batches * k)?;
    let mut perm = b.alloc_u32(data.len())?;
    b.upload_u32(&mut perm, &rng::epoch_permutation(1, 0, data.len()))?;
    let _ = b.download(&stats, 1).await?;
    let setup_seconds = t0.elapsed().as_secs_f64();

    let dataset_bytes = data.images.len().div_ceil(4) * 4 + 8 * data.len();
    let (parameter_state_bytes, activation_bytes) = (net.parameter_state_bytes(), net.activation_bytes());
    let footprint = Footprint {
        dataset_bytes,
        parameter_state_bytes,
        activation_bytes,
        total_bytes: dataset_bytes + parameter_state_bytes + activation_bytes,
    };
    let ctx = Timed {
        dev: &dev,
        perm: &perm,
        batch,
        batches,
        members: k,
        augment: augment.then_some(recipe.augment).flatten(),
    };
    let warmup_seconds = ctx.run(b, &mut net, &mut stats, warmup, 0).await?;
    let before = b.host_counters();
    let seconds = ctx.run(b, &mut net, &mut stats, steps, warmup).await?;
    let per_step = |after: (u64, f64), before: (u64, f64)| {
        ((after.0 - before.0) as f64 / steps as f64, (after.1 - before.1) / steps as f64)
    };
    let host = before.zip(b.host_counters()).map(|(b0, b1)| per_step(b1, b0));
    let per_step = seconds / steps as f64;
    Ok(BenchResult {
        arch: name,
        backend: backend.to_string(),
        device: b.name(),
        batch,
        members: k,
        steps,
        warmup_steps: warmup,
        setup_seconds,
        warmup_seconds,
        seconds_per_step: per_step,
        seconds_per_member_step: per_step / k as f64,
        seconds_per_epoch: per_step * EPOCH_IMAGES.div_ceil(batch) as f64,
        images_per_second: batch as f64 / per_step,
        augment,
        dispatches_per_step: host.map(|h| h.0),
        host_seconds_per_step: host.map(|h| h.1),
        bytes_per_step: host.map(|_| net.bytes_per_step(batch)),
        dispatches_per_member_step: host.map(|h| h.0 / k as f64),
        host_seconds_per_member_step: host.map(|h| h.1 / k as f64),
        footprint,
    })
}

/// What the timed stretches of `bench` share.
struct Timed<'a, B: Backend> {
    dev: &'a DeviceData<B>,
    perm: &'a B::IBuf,
    batch: usize,
    /// Whole batches per pass over the data.
    batches: usize,
    members: usize,
    augment: Option<crate::data::augment::Augment>,
}

impl<B: Backend> Timed<'_, B> {
    /// Seconds of steps `first..first + count` of a run over the same shuffle every epoch,
    /// through the trainer's own step loop, read back at the end (a NaN loss is an error).
    async fn run(
        &self,
        b: &mut B,
        net: &mut Network<B>,
        stats: &mut B::Buf,
        count: usize,
        first: usize,
    ) -> Result<f64> {
        let t = Instant::now();
        let mut i = first;
        while i < first + count {
            let (epoch, step) = (i / self.batches, i % self.batches);
            let e = Epoch {
                index: epoch,
                n: self.batches * self.batch,
                batch: self.batch,
                stepwise: false,
                data_seed: 1,
                augment: self.augment,
                first_step: (epoch * self.batches) as u32,
            };
            let end = (step + first + count - i).min(self.batches);
            run_steps(b, net, self.dev, self.perm, stats, &e, step..end)?;
            i += end - step;
        }
        let s = b.download(stats, 2 * self.members).await?;
        if s.iter().step_by(2).any(|l| !l.is_finite()) {
            return Err(Error::Diverged("the loss became NaN during the benchmark".into()));
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

/// Floating-point operations (2 per multiply-add) per training step of the conv and dense
/// GEMM kernels, by kernel name, for batches of `batch`: what `bench --profile` divides by
/// each kernel's time to give its achieved FLOP/s. The first layer computes no input
/// gradient (the network's input needs none).
pub fn gemm_flops_per_step(arch: &Arch, batch: usize) -> Vec<(&'static str, f64)> {
    use crate::model::Layer;
    let mut totals: Vec<(&'static str, f64)> = Vec::new();
    let mut add = |name: &'static str, flops: f64| match totals.iter_mut().find(|t| t.0 == name) {
        Some(t) => t.1 += flops,
        None => totals.push((name, flops)),
    };
    let first = arch.layers.iter().position(|l| matches!(l, Layer::Conv2d(_) | Layer::Dense(_)));
    for (i, layer) in arch.layers.iter().enumerate() {
        let (macs, ops) = match layer {
            Layer::Conv2d(c) => (
                (batch * c.out_len() * c.group_in() * c.kh * c.kw) as f64,
                ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"],
            ),
            Layer::Dense(d) => (
                (batch * d.group_in() * d.n_out) as f64,
                ["dense_forward", "dense_backward_input", "dense_backward_weight"],
            ),
            _ => continue,
        };
        for (k, op) in ops.into_iter().enumerate() {
            if k == 1 && Some(i) == first {
                continue;
            }
            add(op, 2.0 * macs);
        }
    }
    totals
}
