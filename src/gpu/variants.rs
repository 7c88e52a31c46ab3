//! Kernel variants of the GEMM-shaped ops, and which one runs per op shape.
//!
//! The six GEMM-shaped ops (a conv's forward, backward-input and backward-weight, a dense
//! layer's the same) each have one kernel body whose output tile is a compile-time choice
//! (tile.wgsl: TY x TX threads of 4 x 4 outputs): 64 x 64 fills a GPU with large layers but
//! leaves most of a tile idle on a small one (cnn4's first conv has 16 filters, its weight
//! gradient 25 columns). A conv's weight gradient also chooses how many chunks its long sum is
//! split into (partials added in order by reduce.wgsl); a dense product with few rows or
//! columns may run on `gemm_skinny` instead. `candidates` lists what is valid for an op's
//! shape, `default_choice` is what ran before there were variants (and runs unless
//! `GpuBackend::set_choice` says otherwise).
//!
//! Tuning: `record_ops(true)` keeps the first dispatch of each op shape (its buffers and
//! layer), then `time_op` and `validate_op` replay it with any candidate into a buffer of
//! their own: the recorded output is never written again.
//!
//! What stays bit for bit: every tile shape adds each output's terms in the same order (K
//! chunks of 16 ascending, each chunk's 16 in order, one fma each), so a choice that changes
//! only the tile gives exactly the default's numbers (`same_order`). A different split count
//! or skinny against tiled adds in another order: within the usual f32 rounding, not equal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use web_time::Instant;

use super::kernels::{conv2d, gemm};
use super::shaders::TileShape;
use super::{GpuBackend, GpuBuf};
use crate::backend::Epilogue;
use crate::error::{Error, Result};
use crate::model::{Conv2d, Dense};

/// Bumped whenever a kernel's code or the candidate list changes (tuning results keyed by an
/// older version are stale).
pub const KERNEL_SET_VERSION: u32 = 2;

/// K step of every tile shape; split-K chunks are multiples of it.
const TK: u32 = 16;
/// Most chunks a weight gradient's sum is split into, and most scratch the partials may take
/// (elements).
const MAX_SPLITS: u32 = 256;
const MAX_PARTIALS: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GemmOp {
    ConvForward,
    ConvBackwardInput,
    ConvBackwardWeight,
    DenseForward,
    DenseBackwardInput,
    DenseBackwardWeight,
}

impl GemmOp {
    pub const ALL: [GemmOp; 6] = [
        GemmOp::ConvForward,
        GemmOp::ConvBackwardInput,
        GemmOp::ConvBackwardWeight,
        GemmOp::DenseForward,
        GemmOp::DenseBackwardInput,
        GemmOp::DenseBackwardWeight,
    ];

    /// The op's name: its WGSL entry point, CPU function and launcher.
    pub fn entry(self) -> &'static str {
        match self {
            GemmOp::ConvForward => "conv2d_forward",
            GemmOp::ConvBackwardInput => "conv2d_backward_input",
            GemmOp::ConvBackwardWeight => "conv2d_backward_weight",
            GemmOp::DenseForward => "dense_forward",
            GemmOp::DenseBackwardInput => "dense_backward_input",
            GemmOp::DenseBackwardWeight => "dense_backward_weight",
        }
    }

    pub fn is_conv(self) -> bool {
        matches!(self, GemmOp::ConvForward | GemmOp::ConvBackwardInput | GemmOp::ConvBackwardWeight)
    }
}

/// A dispatch's shape, as tuning keys it (everything that changes which kernel is fastest or
/// its validity): one group's product C (m x n) = A (m x k) B (k x n), `batches` groups per
/// dispatch. A conv's `geometry` is [n, c_in, h_in, w_in, c_out, h_out, w_out, kh, kw,
/// stride, pad_h, pad_w, groups, in_groups] (n: the batch); a dense layer's is empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpKey {
    pub op: GemmOp,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batches: u32,
    pub geometry: Vec<u32>,
}

impl OpKey {
    /// The key of conv op `op` (one of the three Conv*) on layer `l` at batch `n`.
    pub fn conv(op: GemmOp, l: &Conv2d, n: usize) -> OpKey {
        let (m, cols, k) = conv_dims(op, l, n);
        let geometry = [
            n,
            l.c_in,
            l.h_in,
            l.w_in,
            l.c_out,
            l.h_out,
            l.w_out,
            l.kh,
            l.kw,
            l.stride,
            l.pad_h,
            l.pad_w,
            l.groups,
            l.in_groups,
        ];
        OpKey {
            op,
            m: m as u32,
            n: cols as u32,
            k: k as u32,
            batches: l.groups as u32,
            geometry: geometry.iter().map(|&v| v as u32).collect(),
        }
    }

    /// The key of dense op `op` (one of the three Dense*) on layer `l` at batch `n`.
    pub fn dense(op: GemmOp, l: &Dense, n: usize) -> OpKey {
        let (ni, no) = (l.group_in(), l.group_out());
        let (m, cols, k) = match op {
            GemmOp::DenseBackwardInput => (n, ni, no),
            GemmOp::DenseBackwardWeight => (no, ni, n),
            _ => (n, no, ni),
        };
        OpKey { op, m: m as u32, n: cols as u32, k: k as u32, batches: l.groups as u32, geometry: Vec::new() }
    }

    /// "conv2d_forward 16x12544x25" (m x n x k), with "x3" for 3 batches.
    pub fn describe(&self) -> String {
        let b = if self.batches > 1 { format!(" x{}", self.batches) } else { String::new() };
        format!("{} {}x{}x{}{b}", self.op.entry(), self.m, self.n, self.k)
    }
}

/// One group's (M, N, K) of conv op `op` on `l` at batch `n` (conv2d.wgsl's dims()).
pub(super) fn conv_dims(op: GemmOp, l: &Conv2d, n: usize) -> (usize, usize, usize) {
    let (cg, fg, khw) = (l.group_in(), l.group_out(), l.kh * l.kw);
    match op {
        GemmOp::ConvBackwardInput => (cg, n * l.h_in * l.w_in, fg * khw),
        GemmOp::ConvBackwardWeight => (fg, cg * khw, n * l.h_out * l.w_out),
        _ => (fg, n * l.h_out * l.w_out, cg * khw),
    }
}

/// A kernel's output tile (rows x columns of C per workgroup), or one workgroup per output
/// (`Skinny`: dense only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Tile {
    /// 256 threads of 16 x 16 (the default).
    T64x64,
    /// Few rows (small M): 64 threads of 4 x 16.
    T16x64,
    /// Few columns (small N): 64 threads of 16 x 4.
    T64x16,
    /// 64 threads of 8 x 8.
    T32x32,
    /// gemm_skinny: 64 threads per output, striding over K.
    Skinny,
}

impl Tile {
    /// The tiled shapes.
    pub const TILED: [Tile; 4] = [Tile::T64x64, Tile::T16x64, Tile::T64x16, Tile::T32x32];

    /// tile.wgsl's TY x TX, or None for Skinny.
    pub fn shape(self) -> Option<TileShape> {
        let (ty, tx) = match self {
            Tile::T64x64 => (16, 16),
            Tile::T16x64 => (4, 16),
            Tile::T64x16 => (16, 4),
            Tile::T32x32 => (8, 8),
            Tile::Skinny => return None,
        };
        Some(TileShape { ty, tx })
    }

    /// Output rows and columns per workgroup (1 x 1 for Skinny).
    pub fn dims(self) -> (u32, u32) {
        self.shape().map_or((1, 1), |s| (4 * s.ty, 4 * s.tx))
    }

    pub fn name(self) -> &'static str {
        match self {
            Tile::T64x64 => "t64x64",
            Tile::T16x64 => "t16x64",
            Tile::T64x16 => "t64x16",
            Tile::T32x32 => "t32x32",
            Tile::Skinny => "skinny",
        }
    }
}

/// One way to run an op: its tile and (a conv's weight gradient only; 0 elsewhere) the number
/// of chunks its sum is split into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Choice {
    pub tile: Tile,
    pub splits: u32,
}

impl Choice {
    /// "t16x64", "t64x64/split8", "skinny".
    pub fn name(&self) -> String {
        match self.splits {
            0 => self.tile.name().to_string(),
            s => format!("{}/split{s}", self.tile.name()),
        }
    }
}

/// A weight gradient's sum of `reduction` terms in about `splits` chunks, each a multiple of
/// TK long: (chunk length, chunks).
pub(super) fn split_k(reduction: u32, splits: u32) -> (u32, u32) {
    let len = reduction.div_ceil(splits.max(1)).div_ceil(TK).max(1) * TK;
    (len, reduction.div_ceil(len).max(1))
}

/// The split count a conv weight gradient in `tile` starts from (the one there was before
/// variants, for 64 x 64): about 256 workgroups in all, chunks of at least 256 terms, at most
/// 64 of them.
fn heuristic_splits(key: &OpKey, tile: Tile) -> u32 {
    let (rows, cols) = tile.dims();
    let tiles = (key.n.div_ceil(cols) * key.m.div_ceil(rows) * key.batches).max(1);
    (256 / tiles).clamp(1, key.k.div_ceil(256).max(1)).min(64)
}

/// Whether `gemm_skinny` is the default for a dense product: few rows or columns, long K.
fn skinny_by_default(key: &OpKey) -> bool {
    key.m.min(key.n) < 16 && key.k >= 64
}

/// Exactly what ran before there were variants: 64 x 64 tiles; a conv weight gradient split
/// by `heuristic_splits`; a dense product with few rows or columns and a long K on
/// gemm_skinny.
pub fn default_choice(key: &OpKey) -> Choice {
    match key.op {
        GemmOp::ConvBackwardWeight => {
            Choice { tile: Tile::T64x64, splits: split_k(key.k, heuristic_splits(key, Tile::T64x64)).1 }
        }
        GemmOp::DenseForward | GemmOp::DenseBackwardInput | GemmOp::DenseBackwardWeight if skinny_by_default(key) => {
            Choice { tile: Tile::Skinny, splits: 0 }
        }
        _ => Choice { tile: Tile::T64x64, splits: 0 },
    }
}

/// Every choice valid for `key`, the default first: each tile shape; for a conv weight
/// gradient each with the heuristic's split count for that shape, no split, and 2x and 4x
/// the heuristic's (as many chunks as those come to, at most MAX_SPLITS and MAX_PARTIALS
/// elements of partials); for a dense product gemm_skinny too where it has few rows or
/// columns.
pub fn candidates(key: &OpKey) -> Vec<Choice> {
    let mut out = vec![default_choice(key)];
    let mut add = |c: Choice| {
        if !out.contains(&c) {
            out.push(c);
        }
    };
    match key.op {
        GemmOp::ConvForward | GemmOp::ConvBackwardInput => {
            Tile::TILED.iter().for_each(|&tile| add(Choice { tile, splits: 0 }))
        }
        GemmOp::ConvBackwardWeight => {
            let weights = key.m as u64 * key.n as u64 * key.batches as u64;
            let most = (MAX_PARTIALS / weights.max(1)).clamp(1, MAX_SPLITS as u64) as u32;
            for tile in Tile::TILED {
                let h = heuristic_splits(key, tile);
                for s in [h, 1, 2 * h, 4 * h] {
                    add(Choice { tile, splits: split_k(key.k, s.min(most)).1 });
                }
            }
        }
        GemmOp::DenseForward | GemmOp::DenseBackwardInput | GemmOp::DenseBackwardWeight => {
            Tile::TILED.iter().for_each(|&tile| add(Choice { tile, splits: 0 }));
            if key.m.min(key.n) < 16 {
                add(Choice { tile: Tile::Skinny, splits: 0 });
            }
        }
    }
    out
}

/// Whether `choice` adds each output's terms in the default's order, so that its results are
/// the default's bit for bit: a tiled choice with the default's split count, where the
/// default is tiled too.
pub fn same_order(key: &OpKey, choice: Choice) -> bool {
    let d = default_choice(key);
    choice.tile != Tile::Skinny && d.tile != Tile::Skinny && choice.splits == d.splits
}

/// An op as recorded for replay: the layer and batch its launcher was called with, and its
/// buffers in binding order (binding 2, index 2, is the output).
struct Recorded {
    key: OpKey,
    layer: Layer,
    n: usize,
    epi: Epilogue,
    bufs: [GpuBuf; 4],
}

#[derive(Clone, Copy)]
pub(super) enum Layer {
    Conv(Conv2d),
    Dense(Dense),
}

/// The backend's variant state: the choices set, and the ops recorded.
#[derive(Default)]
pub(super) struct Variants {
    choices: BTreeMap<OpKey, Choice>,
    recording: bool,
    recorded: Vec<Recorded>,
}

impl GpuBackend {
    /// Runs `choice` for every dispatch of `key` from now on (until `clear_choices` or
    /// another `set_choice` of the key). A choice that is not among `candidates(&key)` is not
    /// kept: the key runs its default.
    pub fn set_choice(&mut self, key: OpKey, choice: Choice) {
        if candidates(&key).contains(&choice) {
            self.variants.choices.insert(key, choice);
        } else {
            self.variants.choices.remove(&key);
        }
    }

    /// Every op back on its default.
    pub fn clear_choices(&mut self) {
        self.variants.choices.clear();
    }

    pub fn choices(&self) -> &BTreeMap<OpKey, Choice> {
        &self.variants.choices
    }

    /// While on, each GEMM-shaped dispatch is also recorded (its key, buffers and
    /// parameters; first occurrence per key) so it can be replayed. Turning it on forgets
    /// what was recorded before (and so lets go of those buffers); turning it off keeps it.
    /// Dense products under `--precision mixed` (the cooperative kernel) are not recorded.
    pub fn record_ops(&mut self, on: bool) {
        if on {
            self.variants.recorded.clear();
        }
        self.variants.recording = on;
    }

    /// The keys recorded, in the order they were first dispatched.
    pub fn recorded_ops(&self) -> Vec<OpKey> {
        self.variants.recorded.iter().map(|r| r.key.clone()).collect()
    }

    /// Replays the recorded op `reps` times with `choice` and returns seconds per run (GPU
    /// timestamp queries where the adapter has TIMESTAMP_QUERY and `bench --profile` is not
    /// timing every dispatch, else wall clock around a submit + wait). A run is the op's
    /// GEMM and, for a split weight gradient, the sum of its partials (not the bias
    /// gradient, which no choice changes). One run first, untimed, builds the pipeline. At
    /// most 1024 runs are timed. Errors (not panics) for a key not recorded, a choice not
    /// among its candidates, a pipeline that does not build or a device error.
    pub async fn time_op(&mut self, key: &OpKey, choice: Choice, reps: usize) -> Result<f64> {
        let rec = self.replayable(key, choice)?;
        let out = self.new_buffer(rec.bufs[2].len)?;
        self.replay(&rec, &out, choice);
        self.read_back(&out, 1).await?;
        let reps = reps.clamp(1, 1024);
        if !self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) || self.profiler.is_some() {
            let t = Instant::now();
            for _ in 0..reps {
                self.replay(&rec, &out, choice);
            }
            self.read_back(&out, 1).await?;
            return Ok(t.elapsed().as_secs_f64() / reps as f64);
        }
        // One compute pass of `reps` runs, timed at its start and end. Each run records at
        // most two dispatches, far from the arena's flush (which would end the pass).
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("time_op"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let buffer = |usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("time_op"),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolve = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let readback = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        self.submit()?;
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("time_op") });
        self.pass = Some(
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("time_op"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            })
            .forget_lifetime(),
        );
        self.encoder = Some(enc);
        for _ in 0..reps {
            self.replay(&rec, &out, choice);
        }
        self.pass = None;
        if let Some(enc) = self.encoder.as_mut() {
            enc.resolve_query_set(&queries, 0..2, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &readback, 0, 16);
        }
        self.submit()?;
        let bytes = self.read_mapped(&readback, 16).await?;
        let ticks: &[u64] = bytemuck::cast_slice(&bytes);
        let ns = ticks[1].saturating_sub(ticks[0]) as f64 * self.queue.get_timestamp_period() as f64;
        Ok(ns * 1e-9 / reps as f64)
    }

    /// Runs the recorded op with `choice` and with the default on the same inputs; returns
    /// the largest |difference| relative to the output's max |value| (0.0 = bit for bit, or
    /// for +0 against -0; infinite where only one side is NaN or the default is all zeros
    /// and the choice is not). Errors as `time_op`.
    pub async fn validate_op(&mut self, key: &OpKey, choice: Choice) -> Result<f64> {
        let rec = self.replayable(key, choice)?;
        let len = rec.bufs[2].len;
        let (want, got) = (self.new_buffer(len)?, self.new_buffer(len)?);
        self.replay(&rec, &want, default_choice(key));
        self.replay(&rec, &got, choice);
        let want: Vec<f32> = bytemuck::pod_collect_to_vec(&self.read_back(&want, len).await?);
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(&self.read_back(&got, len).await?);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        let mut diff = 0f64;
        for (&g, &w) in got.iter().zip(&want) {
            let d = (g as f64 - w as f64).abs();
            diff = diff.max(if d.is_nan() && !(g.is_nan() && w.is_nan()) { f64::INFINITY } else { d });
        }
        Ok(if diff == 0.0 {
            0.0
        } else if scale == 0.0 {
            f64::INFINITY
        } else {
            diff / scale
        })
    }

    /// The choice for an op about to be dispatched (the one set for its key, or the
    /// default), recording the op (layer `layer` at batch `n`, `bufs` in binding order)
    /// where recording is on and its key is new.
    pub(super) fn choose(&mut self, key: OpKey, layer: Layer, n: usize, epi: Epilogue, bufs: [&GpuBuf; 4]) -> Choice {
        if self.variants.recording && !self.variants.recorded.iter().any(|r| r.key == key) {
            let bufs = bufs.map(GpuBuf::handle);
            self.variants.recorded.push(Recorded { key: key.clone(), layer, n, epi, bufs });
        }
        self.variants.choices.get(&key).copied().unwrap_or_else(|| default_choice(&key))
    }

    /// The recorded op of `key` (a copy of its handles), if `choice` is one of its candidates.
    fn replayable(&self, key: &OpKey, choice: Choice) -> Result<Recorded> {
        let Some(r) = self.variants.recorded.iter().find(|r| &r.key == key) else {
            return Err(Error::Gpu(format!("{} was not recorded (record_ops)", key.describe())));
        };
        if !candidates(key).contains(&choice) {
            return Err(Error::Gpu(format!("{} is not a candidate for {}", choice.name(), key.describe())));
        }
        Ok(Recorded {
            key: r.key.clone(),
            layer: r.layer,
            n: r.n,
            epi: r.epi,
            bufs: r.bufs.each_ref().map(GpuBuf::handle),
        })
    }

    /// Records `rec`'s GEMM with `choice`, its output into `out`.
    fn replay(&mut self, rec: &Recorded, out: &GpuBuf, choice: Choice) {
        let [a, b, _, table] = &rec.bufs;
        let bufs = [a, b, out, table];
        match &rec.layer {
            Layer::Conv(l) => conv2d::conv2d(self, rec.key.op, choice, bufs, l, rec.n, rec.epi),
            Layer::Dense(l) => gemm::gemm(self, rec.key.op, choice, bufs, l, rec.n, rec.epi),
        }
    }
}
