//! The scheduler: epochs of seeded shuffles and batches, the learning-rate schedule, test
//! evaluation each epoch, early stopping, checkpoints, progress output and divergence checks.
//!
//! `train` reads as its steps: `Trainer::new` checks the data against the model and puts
//! both on the device (or picks up a checkpoint), then each epoch is `run_epoch` (the step
//! loop, which `bench` drives too), `evaluate` (test and validation figures, printed and
//! logged), `early_stop` and `checkpoint`; `finish` keeps each model's best epoch if asked
//! and saves the models.
//!
//! One model or an array of them trained side by side (seeds, sweeps: `network::Members`)
//! run through the same steps: every figure is per member, early stopping and divergence
//! freeze one member at a time (`Network::freeze`), and the run ends when every member has
//! ended or the epochs run out. A model of its own is the array of one, written as before
//! (its file at `out`); an array writes a file per member, a manifest and its own log
//! (`outputs`).
//!
//! Everything random derives from (seed, epoch, step) (see `rng`): the batch order and
//! augmentation from the data seed, which all members share, initialisation and dropout from
//! each member's seed. So a member trains exactly as a run of its own with that seed and
//! data seed would, the same seed on the same backend gives the same result bit for bit, and
//! `--resume` continues a run exactly.

pub mod host;
pub mod outputs;
pub mod schedule;
pub mod shard;

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use web_time::Instant;

use crate::backend::Backend;
use crate::data::augment::Augment;
use crate::data::{DataInfo, Dataset};
use crate::error::{Error, Result};
use crate::model::Arch;
use crate::model::spec::{EarlyStopping, Monitor, Normalize, Recipe, Schedule};
use crate::modelfile::{self, ArrayState, Loaded, MemberProgress, Progress, Status, TrainState};
use crate::network::{DeviceData, EvalResult, Member, Members, Network, StepArgs};
use crate::rng;

pub use host::{BoardRun, FileHost, Host};
pub use outputs::member_file;

/// Batches of this many examples (or the training batch, if larger) for evaluation.
pub const EVAL_BATCH: usize = 256;

/// How many training steps are enqueued between flushes (GPU submits).
pub const STEPS_PER_FLUSH: usize = 64;

pub struct TrainConfig {
    /// The models to train, each with its seed and recipe: one, or an array's members
    /// (differing only in what `network::Members::new` allows).
    pub members: Vec<Member>,
    /// What each member's file name adds after its seed: the swept keys with their values as
    /// given (`outputs::member_file`).
    pub tags: Vec<Vec<(String, String)>>,
    /// An array (a file per member, a manifest) rather than one model (its file at `out`).
    pub array: bool,
    /// The seed of the batch order, augmentation and validation split, shared by all members.
    pub data_seed: u64,
    /// The model file (an array: the base of its members' names, its manifest and log).
    pub out: PathBuf,
    /// Continue from this checkpoint.
    pub resume: Option<Loaded>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Write a checkpoint after every epoch.
    pub checkpoints: bool,
    /// Free text recorded in the model's metadata (backend, device, command).
    pub run_info: HashMap<String, String>,
    /// Where the data came from, recorded in the model file (class names, resize rule).
    pub data: DataInfo,
    /// Keep the training set in host memory and stream it to the device (see
    /// `network::Stream`); also chosen when uploading it runs out of device memory.
    pub stream: bool,
    /// A model of its own may start from these (parameters, state) instead of its seed's
    /// initialisation (a model loaded to train on).
    pub start_from: Option<(Vec<f32>, Vec<f32>)>,
    /// Also write TensorBoard event files, a folder per run under this one (`FileHost`).
    pub tensorboard: Option<PathBuf>,
    /// An array that is one part of a sweep (`--shard`): `members` are that part's, and its
    /// manifest, log and checkpoint are named after the part (`shard`).
    pub shard: Option<shard::Part>,
}

impl TrainConfig {
    /// A model of its own with the given seed (which also orders the batches).
    pub fn single(arch: Arch, seed: u64, out: PathBuf) -> TrainConfig {
        TrainConfig {
            members: vec![Member { seed, spec: arch.spec }],
            tags: vec![Vec::new()],
            array: false,
            data_seed: seed,
            out,
            resume: None,
            progress: false,
            checkpoints: true,
            run_info: HashMap::new(),
            data: DataInfo::default(),
            stream: false,
            start_from: None,
            tensorboard: None,
            shard: None,
        }
    }

    /// What an array's manifest, log and checkpoint are named from: `out`, or for a part of a
    /// sweep `DIR/NAME.shard-I-of-N.safetensors`.
    pub fn array_out(&self) -> PathBuf {
        match &self.shard {
            Some(p) => shard::part_out(&self.out, p.index, p.count),
            None => self.out.clone(),
        }
    }
}

/// Bytes of pictures one streaming window holds (at least one batch's): small next to any
/// device's memory and within every adapter's 128 MB per binding.
const STREAM_WINDOW_BYTES: usize = 64 << 20;

fn out_of_memory(e: &Error) -> bool {
    matches!(e, Error::Gpu(m) if m.to_lowercase().contains("out of memory"))
}

/// One epoch's figures of one model, as printed and logged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    pub test_loss: f64,
    pub test_acc: f64,
    pub lr: f32,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// One epoch of a run: each member's report (None for a member that had ended before it)
/// and the ensemble's test figures (an array's members that did not diverge).
#[derive(Debug, Clone)]
pub struct EpochReports {
    pub members: Vec<Option<EpochReport>>,
    pub ensemble: EvalResult,
}

/// How a run ended, per member.
#[derive(Debug, Clone)]
pub struct MemberSummary {
    pub seed: u64,
    pub tags: Vec<(String, String)>,
    /// Where its model was saved.
    pub file: PathBuf,
    pub status: Status,
    pub best_epoch: usize,
    pub final_test: EvalResult,
    pub history: Vec<EpochReport>,
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub epochs_run: usize,
    pub best_epoch: usize,
    /// The first (or only) member's final test figures.
    pub final_test: EvalResult,
    pub history: Vec<EpochReport>,
    pub seconds: f64,
    pub stopped_early: bool,
    pub members: Vec<MemberSummary>,
    /// The ensemble of the members that did not diverge, on the test set.
    pub ensemble_test: EvalResult,
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// The steps of one epoch: what every step of it shares.
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    /// 0-based.
    pub index: usize,
    /// Training examples (the last batch may be partial).
    pub n: usize,
    pub batch: usize,
    /// Whether each step has its own row of learning rates (a step-wise schedule) rather than
    /// the epoch's one row.
    pub stepwise: bool,
    /// The seed of the batch order and augmentation.
    pub data_seed: u64,
    pub augment: Option<Augment>,
    /// Steps taken in the whole run before this epoch's first.
    pub first_step: u32,
}

impl Epoch {
    pub fn steps(&self) -> usize {
        self.n.div_ceil(self.batch)
    }

    fn args(&self, step: usize) -> StepArgs {
        let start = step * self.batch;
        StepArgs {
            start,
            n: self.batch.min(self.n - start),
            slot: step,
            global_step: self.first_step + step as u32,
            epoch: self.index as u32 + 1,
            row: if self.stepwise { step } else { 0 },
            data_seed: self.data_seed,
            augment: self.augment,
        }
    }
}

/// The learning-rate rows of epoch `index` (`Network::set_rates`): each member's rate for the
/// epoch, or for every step of it under a step-wise schedule.
pub fn epoch_rates(members: &Members, recipe: &Recipe, index: usize, steps: usize) -> Vec<Vec<f32>> {
    let epochs = recipe.epochs;
    let base = |k: usize| members.lr(k);
    if stepwise(&recipe.schedule) {
        (0..steps)
            .map(|s| {
                (0..members.len())
                    .map(|k| schedule::lr_at_step(&recipe.schedule, base(k), index, epochs, s, steps))
                    .collect()
            })
            .collect()
    } else {
        vec![(0..members.len()).map(|k| schedule::lr_at(&recipe.schedule, base(k), index, epochs)).collect()]
    }
}

fn stepwise(s: &Schedule) -> bool {
    matches!(s, Schedule::OneCycle { .. })
}

/// Enqueues steps `steps` of epoch `e` over the permutation `perm` (each step's loss and hits
/// per member into its stats slot), submitting every `STEPS_PER_FLUSH` steps. Training and
/// `bench` both run their steps through here.
pub fn run_steps<B: Backend>(
    b: &mut B,
    net: &mut Network<B>,
    data: &DeviceData<B>,
    perm: &B::IBuf,
    stats: &mut B::Buf,
    e: &Epoch,
    steps: Range<usize>,
) -> Result<()> {
    for step in steps {
        net.train_step(b, data, perm, stats, &e.args(step));
        if (step + 1) % STEPS_PER_FLUSH == 0 {
            b.flush()?;
        }
    }
    Ok(())
}

/// Checks that a data set fits a model: image shape, class count, label range.
pub fn check_data(arch: &Arch, ds: &Dataset, what: &str) -> Result<()> {
    if ds.shape() != arch.spec.input {
        return Err(Error::Data(format!(
            "{what} images are {}x{}x{} (channels x height x width), the model '{}' expects {:?}",
            ds.channels,
            ds.height,
            ds.width,
            arch.name(),
            arch.spec.input
        )));
    }
    let classes = arch.classes();
    if !ds.classes.is_empty() && ds.classes.len() != classes {
        let names = ds.classes.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        let more = if ds.classes.len() > 8 { ", ..." } else { "" };
        return Err(Error::Data(format!(
            "the {what} set has {} classes ({names}{more}) but the model '{}' gives {classes} outputs; \
             its last layer must have one unit per class: set units = {} (`gpu-train presets NAME > my.toml`, edit, \
             then --arch my.toml)",
            ds.classes.len(),
            arch.name(),
            ds.classes.len()
        )));
    }
    if let Some(max) = ds.max_label().filter(|&m| m as usize >= classes) {
        return Err(Error::Data(format!(
            "{what} set has label {max}, but the model '{}' has {classes} outputs",
            arch.name()
        )));
    }
    Ok(())
}

/// Each member's state in a run: who it is and where its early stopping stands.
type Progresses = Vec<MemberProgress>;

/// A training run in progress: the network and data on the device and the scheduler's state.
pub struct Trainer<B: Backend> {
    recipe: Recipe,
    cfg: TrainConfig,
    net: Network<B>,
    train: DeviceData<B>,
    test: DeviceData<B>,
    val: Option<DeviceData<B>>,
    n: usize,
    stats: B::Buf,
    perm: B::IBuf,
    progress: Progress,
    members: Progresses,
    /// The weights each member keeps (fused layout): its best epoch's while early stopping
    /// restores them, and for a member that has ended, what it ended with.
    kept: Option<(Vec<f32>, Vec<f32>)>,
    /// The weights to keep at the end of the last epoch (an array's snapshot, which a member
    /// that diverges in the next epoch keeps).
    last: Option<(Vec<f32>, Vec<f32>)>,
    history: Vec<Vec<EpochReport>>,
    /// The epoch in progress: its plan, shuffle, next step and the time it started.
    current: Option<EpochRun>,
    /// The last epoch's steps, for TensorBoard: (global step, wall time, each member's mean
    /// loss on that step's batch).
    step_losses: Vec<(i64, f64, Vec<f64>)>,
}

/// An epoch between `begin_epoch` and `end_epoch`.
struct EpochRun {
    e: Epoch,
    perm: Vec<u32>,
    next: usize,
    started: Instant,
}

impl<B: Backend> Trainer<B> {
    /// Checks the recipe and data, holds out the validation share, resolves `normalize =
    /// "auto"` from the training images, uploads everything and starts fresh or from the
    /// checkpoint in `cfg.resume`.
    pub async fn new(
        b: &mut B,
        host: &mut impl Host,
        mut cfg: TrainConfig,
        train: Dataset,
        test: &Dataset,
    ) -> Result<Self> {
        if let Some((ck, ts)) = cfg.resume.as_ref().and_then(|c| Some((c, c.train.as_ref()?))) {
            // A checkpoint says who trains and on which batches; only the epochs may change.
            let epochs = cfg.members.first().map(|m| m.spec.train.epochs);
            let (members, tags): (Vec<Member>, Vec<_>) = match &ts.array {
                Some(a) => {
                    a.members.iter().map(|m| (Member { seed: m.seed, spec: m.spec.clone() }, m.tags.clone())).unzip()
                }
                None => (vec![Member { seed: ts.progress.seed, spec: ck.arch.spec.clone() }], vec![Vec::new()]),
            };
            cfg.members = members;
            cfg.tags = tags;
            cfg.array = ts.array.is_some();
            cfg.data_seed = ts.progress.data_seed.unwrap_or(ts.progress.seed);
            for m in &mut cfg.members {
                m.spec.train.epochs = epochs.unwrap_or(m.spec.train.epochs);
            }
        }
        let Some(first) = cfg.members.first() else {
            return Err(Error::Config("nothing to train: no members".into()));
        };
        first.spec.train.validate().map_err(Error::Config)?;
        let lone = Arch::new(first.spec.clone())?;
        check_data(&lone, &train, "training")?;
        check_data(&lone, test, "test")?;
        let recipe = lone.recipe().clone();
        let val_count = (recipe.validation as f64 * train.len() as f64).round() as usize;
        let (train, val) = train.split_tail(val_count);
        if train.is_empty() {
            return Err(Error::Data("no training examples left (check --limit and validation)".into()));
        }
        if recipe.normalize.is_auto() {
            let (mean, std) = train.channel_stats();
            host.say(&format!("normalize auto: per-channel mean {mean:.4?}, std {std:.4?} over the training images"));
            for m in &mut cfg.members {
                m.spec.train.normalize = Normalize::values(mean.clone(), std.clone());
            }
        }
        let members = Members::new(cfg.members.clone())?;
        let recipe = members.lone.recipe().clone();

        crate::network::check_array(b, &members, recipe.batch.max(EVAL_BATCH))?;
        let n = train.len();
        // A streamed training set moves into the stream (host memory), without a copy.
        let streamed = |b: &mut B, train: Dataset| {
            let steps = (STREAM_WINDOW_BYTES / (recipe.batch * train.image_len()).max(1)).clamp(1, STEPS_PER_FLUSH);
            DeviceData::upload_streamed(b, train, steps * recipe.batch)
        };
        let train_dev = if cfg.stream {
            streamed(b, train)?
        } else {
            match DeviceData::upload(b, &train) {
                Ok(d) => d,
                Err(e) if out_of_memory(&e) => {
                    host.say(&format!(
                        "note: the training set ({} MB) does not fit in the device's memory; streaming it from host memory",
                        train.images.len() >> 20
                    ));
                    streamed(b, train)?
                }
                Err(e) => return Err(e),
            }
        };
        let test_dev = DeviceData::upload(b, test)?;
        let val = if val.is_empty() { None } else { Some(DeviceData::upload(b, &val)?) };

        let fresh_member = |m: &Member, k: usize| MemberProgress {
            seed: m.seed,
            spec: m.spec.clone(),
            tags: cfg.tags.get(k).cloned().unwrap_or_default(),
            best_value: None,
            best_epoch: 0,
            wait: 0,
            status: Status::Training,
            ended: 0,
        };
        let (params, state, progress, mut progresses, kept) = match &cfg.resume {
            Some(ck) => {
                let ts = ck
                    .train
                    .as_ref()
                    .ok_or_else(|| Error::Config("the resume file is a model, not a checkpoint".into()))?;
                let p = &ts.progress;
                let progresses = match &ts.array {
                    Some(a) => a.members.clone(),
                    None => vec![MemberProgress {
                        best_value: p.best_value,
                        best_epoch: p.best_epoch,
                        wait: p.wait,
                        ..fresh_member(&cfg.members[0], 0)
                    }],
                };
                (ck.params.clone(), ck.state.clone(), p.clone(), progresses, ts.best.clone())
            }
            None => {
                let (p, s) = match cfg.start_from.take() {
                    Some(w) if members.len() == 1 => w,
                    _ => members.init(),
                };
                let progress = Progress {
                    epoch: 0,
                    global_step: 0,
                    seed: members.list[0].seed,
                    best_value: None,
                    best_epoch: 0,
                    wait: 0,
                    seconds: 0.0,
                    data_seed: Some(cfg.data_seed),
                };
                let progresses = cfg.members.iter().enumerate().map(|(k, m)| fresh_member(m, k)).collect();
                (p, s, progress, progresses, None)
            }
        };
        // A resumed run's epochs may change (`--epochs`): members that ran out of epochs may
        // train on.
        for m in &mut progresses {
            m.spec.train.epochs = recipe.epochs;
        }
        let mut net = Network::array(b, members, recipe.batch.max(EVAL_BATCH), &params, &state)?;
        if let Some(ts) = cfg.resume.as_ref().and_then(|c| c.train.as_ref()) {
            net.set_opt_state(b, &ts.m, &ts.v)?;
            if let Some((ap, as_)) = &ts.average {
                net.set_average(b, ap, as_)?;
            }
        }
        for (k, m) in progresses.iter().enumerate() {
            if m.status == Status::StoppedEarly || m.status == Status::Diverged {
                net.freeze(b, k)?;
            }
        }
        let stats = b.alloc(2 * n.div_ceil(recipe.batch) * net.len())?;
        let perm = b.alloc_u32(n)?;
        let keep = cfg.resume.is_some();
        for k in 0..net.len() {
            host.log_start(&modelfile::metrics_path(&member_path(&cfg, k)), keep)?;
        }
        if cfg.array {
            host.log_start(&modelfile::metrics_path(&cfg.array_out()), keep)?;
        }
        // The GPU kernels each layer shape runs change the arithmetic: a fresh log starts with
        // them (`--kernels`; a resumed run appends to the log that has them).
        if let (Some(k), false) = (cfg.run_info.get("kernels"), keep) {
            let line = format!("{{\"kernels\":{k}}}");
            for k in 0..net.len() {
                host.log(&modelfile::metrics_path(&member_path(&cfg, k)), &line)?;
            }
            if cfg.array {
                host.log(&modelfile::metrics_path(&cfg.array_out()), &line)?;
            }
        }
        host.board_start(&board_runs(&cfg, &progresses), keep)?;
        let history = vec![Vec::new(); net.len()];
        // An array keeps the weights of the last epoch that ended, for a member that diverges
        // in the next (before the first epoch: where it starts).
        let last = match cfg.array {
            true => Some(net.kept_params(b).await?),
            false => None,
        };
        Ok(Trainer {
            recipe,
            cfg,
            net,
            train: train_dev,
            test: test_dev,
            val,
            n,
            stats,
            perm,
            progress,
            members: progresses,
            kept,
            last,
            history,
            current: None,
            step_losses: Vec::new(),
        })
    }

    /// The network being trained (for predictions between chunks of steps).
    pub fn network(&mut self) -> &mut Network<B> {
        &mut self.net
    }

    /// Epochs completed.
    pub fn epochs_done(&self) -> usize {
        self.progress.epoch
    }

    /// The epochs the recipe asks for.
    pub fn epochs_total(&self) -> usize {
        self.recipe.epochs
    }

    /// The epoch in progress: (0-based index, steps done, steps).
    pub fn position(&self) -> Option<(usize, usize, usize)> {
        self.current.as_ref().map(|c| (c.e.index, c.next, c.e.steps()))
    }

    /// The epochs still to run (0-based).
    pub fn epochs(&self) -> Range<usize> {
        self.progress.epoch..self.recipe.epochs
    }

    fn data_seed(&self) -> u64 {
        self.progress.data_seed.unwrap_or(self.progress.seed)
    }

    fn epoch_plan(&self, index: usize) -> Epoch {
        Epoch {
            index,
            n: self.n,
            batch: self.recipe.batch,
            stepwise: stepwise(&self.recipe.schedule),
            data_seed: self.data_seed(),
            augment: self.recipe.augment,
            first_step: self.progress.global_step,
        }
    }

    fn active(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().enumerate().filter(|(_, m)| m.status == Status::Training).map(|(k, _)| k)
    }

    /// Starts epoch `index`: its shuffle and learning rates on the device, its clock.
    pub fn begin_epoch(&mut self, b: &mut B, index: usize) -> Result<()> {
        let e = self.epoch_plan(index);
        let perm = rng::epoch_permutation(e.data_seed, index, self.n);
        b.upload_u32(&mut self.perm, &perm)?;
        self.net.set_rates(b, epoch_rates(&self.net.members, &self.recipe, index, e.steps()))?;
        self.current = Some(EpochRun { e, perm, next: 0, started: Instant::now() });
        Ok(())
    }

    /// Records (and submits) the next stretch of the epoch's steps: up to the next multiple of
    /// `STEPS_PER_FLUSH`, or, for a streamed training set, one window's worth (its examples
    /// staged first). True once every step of the epoch is recorded. Between stretches a host
    /// may do anything (a browser: draw, take a prediction, pause).
    pub fn run_chunk(&mut self, b: &mut B) -> Result<bool> {
        self.run_steps(b, usize::MAX)
    }

    /// `run_chunk`, at most `most` steps (at least one): a host that must hear back often (a
    /// page on a slow adapter) sizes its chunks by the time they take.
    pub fn run_steps(&mut self, b: &mut B, most: usize) -> Result<bool> {
        let Some(c) = self.current.as_mut() else {
            return Err(Error::Config("no epoch in progress (begin_epoch first)".into()));
        };
        let (steps, batch) = (c.e.steps(), c.e.batch);
        let most = c.next.saturating_add(most.max(1));
        let end = match self.train.stream.as_ref() {
            Some(st) => {
                let end = (c.next + (st.capacity / batch).max(1)).min(steps).min(most);
                self.train.stage(b, &c.perm, c.next * batch, (end * batch).min(self.n) - c.next * batch)?;
                end
            }
            None => ((c.next / STEPS_PER_FLUSH + 1) * STEPS_PER_FLUSH).min(steps).min(most),
        };
        run_steps(b, &mut self.net, &self.train, &self.perm, &mut self.stats, &c.e, c.next..end)?;
        c.next = end;
        Ok(end == steps)
    }

    /// Each member's mean training loss and accuracy over the steps done so far this epoch
    /// (reads them back).
    pub async fn running_figures(&mut self, b: &mut B) -> Result<Vec<(f64, f64)>> {
        let Some(c) = self.current.as_ref() else { return Ok(Vec::new()) };
        let (k, done) = (self.net.len(), c.next);
        let count = (done * c.e.batch).min(self.n).max(1) as f64;
        b.flush()?;
        let s = b.download(&self.stats, 2 * done * k).await?;
        Ok(member_means(&s, k, done, count))
    }

    /// Ends the epoch whose steps are all recorded: each member's mean training loss and
    /// accuracy and the seconds it took. Every member diverged: the run's error.
    pub async fn end_epoch(&mut self, b: &mut B) -> Result<(Vec<(f64, f64)>, f64)> {
        let c = match self.current.take() {
            Some(c) if c.next == c.e.steps() => c,
            other => {
                self.current = other;
                return Err(Error::Config("the epoch's steps are not all recorded (run_chunk)".into()));
            }
        };
        let (steps, k) = (c.e.steps(), self.net.len());
        let s = b.download(&self.stats, 2 * steps * k).await?;
        let seconds = c.started.elapsed().as_secs_f64();
        let figures = member_means(&s, k, steps, self.n as f64);
        // Each step's loss (its batch's mean), its global step and a wall time spread evenly
        // over the epoch (the steps' own times are not read back).
        let end = crate::tensorboard::now();
        let first = self.progress.global_step as i64;
        self.step_losses = (0..steps)
            .map(|i| {
                let rows = c.e.batch.min(self.n - i * c.e.batch).max(1) as f64;
                let wall = end - seconds * (steps - 1 - i) as f64 / steps as f64;
                (first + i as i64 + 1, wall, (0..k).map(|m| s[2 * (i * k + m)] as f64 / rows).collect())
            })
            .collect();
        // Every member diverged: the run has nothing left to keep training or to save.
        if figures.iter().all(|f| !f.0.is_finite()) {
            return Err(self.diverged(c.e.index));
        }
        self.progress.epoch = c.e.index + 1;
        self.progress.global_step += steps as u32;
        self.progress.seconds += seconds;
        Ok((figures, seconds))
    }

    fn diverged(&self, index: usize) -> Error {
        diverged(index, &self.progress, &modelfile::checkpoint_path(&self.cfg.array_out()), self.cfg.checkpoints)
    }

    /// Every step of epoch `index` over a fresh shuffle, with progress shown by the host and
    /// a look at the running loss every few seconds (a run whose every member diverges stops
    /// there, not at the epoch's end). Returns each member's mean training loss and accuracy,
    /// and the seconds.
    pub async fn run_epoch(&mut self, b: &mut B, host: &mut impl Host, index: usize) -> Result<(Vec<(f64, f64)>, f64)> {
        self.begin_epoch(b, index)?;
        let mut last_peek = Instant::now();
        let epochs = self.recipe.epochs;
        loop {
            let done = self.run_chunk(b)?;
            let Some((_, at, steps)) = self.position() else { break };
            let mut loss = None;
            if !done && last_peek.elapsed() > Duration::from_secs(3) {
                last_peek = Instant::now();
                let figures = self.running_figures(b).await?;
                if figures.iter().all(|f| !f.0.is_finite()) {
                    host.progress_done();
                    return Err(self.diverged(index));
                }
                loss = figures.iter().map(|f| f.0).find(|l| l.is_finite());
            }
            host.progress(index, epochs, at, steps, loss);
            if done {
                break;
            }
        }
        host.progress_done();
        self.end_epoch(b).await
    }

    /// Test (and validation) figures of the weights to keep (the average's, with `ema`) for
    /// every member that was training, and the ensemble's; printed and appended to the
    /// metrics logs. A member whose training loss became NaN is frozen here (it keeps its
    /// last finite epoch's weights). The live weights stay in place.
    pub async fn evaluate(
        &mut self,
        b: &mut B,
        host: &mut impl Host,
        (figures, seconds): (Vec<(f64, f64)>, f64),
    ) -> Result<EpochReports> {
        let index = self.progress.epoch - 1;
        let include: Vec<bool> = self.members.iter().map(|m| m.status != Status::Diverged).collect();
        let test = self.net.evaluate_kept(b, &self.test, false, &include).await?;
        let val = match &self.val {
            Some(v) => Some(self.net.evaluate_kept(b, v, false, &include).await?),
            None => None,
        };
        let rates = epoch_rates(&self.net.members, &self.recipe, index, 1);
        let mut reports = Vec::new();
        for k in 0..self.net.len() {
            if self.members[k].status != Status::Training {
                reports.push(None);
                continue;
            }
            let (loss, acc) = figures[k];
            let report = EpochReport {
                epoch: self.progress.epoch,
                train_loss: loss,
                train_acc: acc,
                val_loss: val.as_ref().map(|v| v.members[k].loss),
                val_acc: val.as_ref().map(|v| v.members[k].accuracy()),
                test_loss: test.members[k].loss,
                test_acc: test.members[k].accuracy(),
                lr: rates[0][k],
                seconds,
                images_per_second: self.n as f64 / seconds,
            };
            let line = serde_json::to_string(&report).unwrap_or_default();
            host.log(&modelfile::metrics_path(&member_path(&self.cfg, k)), &line)?;
            self.board_epoch(host, k, &report)?;
            self.history[k].push(report.clone());
            reports.push(Some(report));
        }
        let reports = EpochReports { members: reports, ensemble: test.ensemble };
        if self.cfg.array {
            for line in outputs::epoch_lines(&reports, &self.members, self.recipe.epochs, seconds, self.n) {
                host.say(&line);
            }
        } else if let Some(r) = &reports.members[0] {
            host.say(&epoch_line(r, self.recipe.epochs));
        }
        // Members whose loss became NaN stop here, keeping their last finite weights.
        for k in 0..self.net.len() {
            if reports.members[k].as_ref().is_some_and(|r| !r.train_loss.is_finite()) {
                self.end_member(b, k, Status::Diverged).await?;
                host.say(&format!(
                    "member {}: the training loss became NaN or infinite in epoch {}; it stops with the weights of epoch {}",
                    outputs::member_name(&self.members[k]),
                    self.progress.epoch,
                    self.progress.epoch - 1
                ));
            }
        }
        if self.cfg.array {
            let line = outputs::array_log_line(&reports, &self.members, &self.cfg);
            host.log(&modelfile::metrics_path(&self.cfg.array_out()), &line)?;
            let e = &reports.ensemble;
            let values = [("loss/test", e.loss), ("accuracy/test", e.accuracy())];
            host.board_scalars(self.net.len(), self.progress.epoch as i64, crate::tensorboard::now(), &values)?;
        }
        Ok(reports)
    }

    /// Member k's epoch for TensorBoard: its steps' losses at a stride (about a hundred points
    /// an epoch), then the epoch's figures at the epoch's number, as the metrics log has them.
    fn board_epoch(&self, host: &mut impl Host, k: usize, r: &EpochReport) -> Result<()> {
        let stride = self.step_losses.len().div_ceil(100).max(1);
        for (step, wall, losses) in self.step_losses.iter().skip(stride - 1).step_by(stride) {
            host.board_scalars(k, *step, *wall, &[("train_step/loss", losses[k])])?;
        }
        let mut values = vec![
            ("loss/train", r.train_loss),
            ("accuracy/train", r.train_acc),
            ("loss/test", r.test_loss),
            ("accuracy/test", r.test_acc),
            ("learning_rate", r.lr as f64),
            ("images_per_second", r.images_per_second),
        ];
        if let (Some(l), Some(a)) = (r.val_loss, r.val_acc) {
            values.extend([("loss/val", l), ("accuracy/val", a)]);
        }
        host.board_scalars(k, r.epoch as i64, crate::tensorboard::now(), &values)
    }

    /// Ends member k's training: frozen from now on, keeping what `kept` or `last` holds for
    /// it (or, if it has nothing yet, its weights now).
    async fn end_member(&mut self, b: &mut B, k: usize, status: Status) -> Result<()> {
        let m = &mut self.members[k];
        m.status = status;
        m.ended = self.progress.epoch;
        self.net.freeze(b, k)?;
        let keeps_best = self.recipe.early_stopping.is_some_and(|es| es.restore_best) && m.best_epoch > 0;
        if !keeps_best {
            let source = match (status, &self.last) {
                (Status::Diverged, Some(last)) => last.clone(),
                _ => self.net.kept_params(b).await?,
            };
            self.keep(k, &source);
        }
        Ok(())
    }

    /// Makes member k's kept weights its part of `weights` (fused).
    fn keep(&mut self, k: usize, weights: &(Vec<f32>, Vec<f32>)) {
        let ms = &self.net.members;
        let kept = self.kept.get_or_insert_with(|| (vec![0f32; ms.fused.n_params], vec![0f32; ms.fused.n_state]));
        let (p, s) = ms.member(k, &weights.0, &weights.1);
        ms.put(k, &mut kept.0, &p, &mut kept.1, &s);
    }

    /// Seed B's early stopping, per member: the relative improvement of the monitored loss.
    /// Keeps each member's best weights when they are to be restored; a member whose
    /// patience runs out stops (frozen). True when no member trains on.
    pub async fn early_stop(&mut self, b: &mut B, host: &mut impl Host, r: &EpochReports) -> Result<bool> {
        let snapshot = self.cfg.array || self.recipe.early_stopping.is_some_and(|es| es.restore_best);
        let weights = match snapshot && self.active().next().is_some() {
            true => Some(self.net.kept_params(b).await?),
            false => None,
        };
        if let Some(es) = self.recipe.early_stopping {
            for k in 0..self.net.len() {
                let Some(report) = &r.members[k] else { continue };
                if self.members[k].status != Status::Training {
                    continue;
                }
                let value = match es.monitor {
                    Monitor::TrainLoss => report.train_loss,
                    Monitor::ValLoss => report.val_loss.unwrap_or(report.train_loss),
                };
                let m = &mut self.members[k];
                if m.best_value.is_none_or(|best| value < best * (1.0 - es.min_delta as f64)) {
                    m.best_value = Some(value);
                    m.best_epoch = report.epoch;
                    m.wait = 0;
                    if es.restore_best
                        && let Some(w) = &weights
                    {
                        self.keep(k, w);
                    }
                    continue;
                }
                m.wait += 1;
                if m.wait < es.patience {
                    continue;
                }
                let (wait, best) = (m.wait, m.best_epoch);
                let who = if self.cfg.array { format!("member {}: ", outputs::member_name(m)) } else { String::new() };
                host.say(&format!(
                    "{who}early stopping: no {}% improvement of the {} in {wait} epochs; best was epoch {best}",
                    es.min_delta * 100.0,
                    monitored(&es),
                ));
                self.end_member(b, k, Status::StoppedEarly).await?;
            }
        }
        if self.cfg.array {
            self.last = weights;
        }
        Ok(self.active().next().is_none())
    }

    /// Writes the checkpoint (weights, optimizer state, scheduler position, kept weights,
    /// average, an array's members) atomically, when the run keeps them.
    pub async fn checkpoint(&mut self, b: &mut B, host: &mut impl Host) -> Result<()> {
        if !self.cfg.checkpoints {
            return Ok(());
        }
        let (p, s) = self.net.get_params(b).await?;
        let (m, v) = self.net.get_opt_state(b).await?;
        let average = self.net.get_average(b).await?;
        let first = &self.members[0];
        let progress = Progress {
            best_value: first.best_value,
            best_epoch: first.best_epoch,
            wait: first.wait,
            ..self.progress.clone()
        };
        let array = self.cfg.array.then(|| ArrayState { members: self.members.clone() });
        let ts = TrainState { progress, array, m, v, best: self.kept.clone(), average };
        let path = modelfile::checkpoint_path(&self.cfg.array_out());
        let bytes = modelfile::encode(&path, &self.net.arch, &p, &s, self.cfg.run_info.clone(), Some(&ts))?;
        host.save(&path, &bytes)
    }

    /// The final models: each member's kept weights where it has them (its best epoch's, or
    /// what it ended with), else its last epoch's (their average, with `ema`); evaluated on
    /// the test set and saved (an array: with its manifest).
    pub async fn finish(mut self, b: &mut B, host: &mut impl Host, stopped_early: bool) -> Result<TrainSummary> {
        for m in &mut self.members {
            if m.status == Status::Training {
                m.status = Status::Finished;
                m.ended = self.progress.epoch;
            }
        }
        let (live_p, live_s) = self.net.kept_params(b).await?;
        let members = self.net.members.clone();
        let es = self.recipe.early_stopping.filter(|es| es.restore_best);
        let mut each = Vec::new();
        let mut restored = Vec::new();
        for (k, m) in self.members.iter().enumerate() {
            let restore = es.is_some() && m.best_epoch > 0 && m.best_epoch != m.ended;
            let from_kept = m.status == Status::Diverged || m.status == Status::StoppedEarly || restore;
            let weights = match (&self.kept, from_kept) {
                (Some((kp, ks)), true) => members.member(k, kp, ks),
                _ => members.member(k, &live_p, &live_s),
            };
            if restore {
                restored.push(k);
            }
            each.push(weights);
        }
        let (fp, fs) = members.join(&each);
        let include: Vec<bool> = self.members.iter().map(|m| m.status != Status::Diverged).collect();
        // The final weights go where the kept ones are read from (the average, with `ema`).
        let final_eval = {
            self.net.set_kept(b, &fp, &fs)?;
            // A part of a sweep keeps every example's scores, for `shard::gather`'s ensemble.
            self.net.evaluate_kept(b, &self.test, self.cfg.shard.is_some(), &include).await?
        };
        if let Some(es) = es {
            for k in restored {
                let m = &self.members[k];
                let who = if self.cfg.array { format!("member {}: ", outputs::member_name(m)) } else { String::new() };
                host.say(&format!(
                    "{who}restored the weights of epoch {} (best {}): test acc {}",
                    m.best_epoch,
                    monitored(&es),
                    pct(final_eval.members[k].accuracy())
                ));
            }
        }
        for (k, m) in self.members.iter().enumerate() {
            host.board_end(k, m.status != Status::Diverged)?;
        }
        let mut summaries = Vec::new();
        for (k, m) in self.members.iter().enumerate() {
            let test = &final_eval.members[k];
            let file = member_path(&self.cfg, k);
            let metrics = serde_json::json!({
                "test_accuracy": test.accuracy(),
                "test_error": 1.0 - test.accuracy(),
                "test_loss": test.loss,
                "test_count": test.count,
                "epochs": m.ended,
                "best_epoch": m.best_epoch,
                "train_seconds": self.progress.seconds,
                "seed": m.seed,
                "data_seed": self.data_seed(),
                "status": m.status.name(),
            });
            let mut meta = self.cfg.run_info.clone();
            meta.insert("metrics".into(), metrics.to_string());
            let (mean, std) = m.spec.train.normalize.per_channel(m.spec.input[0]);
            meta.insert(
                "normalization".into(),
                serde_json::json!({ "input": "pixel / 255", "mean": mean, "std": std }).to_string(),
            );
            if self.cfg.array {
                // The array this member was trained in (the manifest's file name).
                let manifest = outputs::manifest_path(&self.cfg.array_out());
                meta.insert("manifest".into(), manifest.file_name().unwrap_or_default().to_string_lossy().into_owned());
            }
            self.cfg.data.record(&mut meta);
            let arch = Arch::new(m.spec.clone())?;
            host.save(&file, &modelfile::encode(&file, &arch, &each[k].0, &each[k].1, meta, None)?)?;
            summaries.push(MemberSummary {
                seed: m.seed,
                tags: m.tags.clone(),
                file,
                status: m.status,
                best_epoch: m.best_epoch,
                final_test: test.clone(),
                history: self.history[k].clone(),
            });
        }
        if self.cfg.array {
            let mut manifest = outputs::manifest(&summaries, &final_eval.ensemble)?;
            let array_out = self.cfg.array_out();
            if let Some(part) = &self.cfg.shard {
                let path = shard::scores_path(&array_out);
                let members: Vec<&EvalResult> = final_eval.members.iter().collect();
                let labels = self.test.host_labels();
                let classes = self.net.arch.classes();
                host.save(&path, &shard::encode_scores(&path, &members, labels, classes, self.recipe.loss)?)?;
                let files: Vec<String> = part
                    .all
                    .iter()
                    .map(|(seed, tags)| {
                        let f = member_file(&self.cfg.out, *seed, tags);
                        f.file_name().unwrap_or_default().to_string_lossy().into_owned()
                    })
                    .collect();
                manifest = shard::part_manifest(&manifest, part, &files)?;
            }
            host.save(&outputs::manifest_path(&array_out), manifest.as_bytes())?;
        }
        Ok(TrainSummary {
            epochs_run: self.progress.epoch,
            best_epoch: self.members[0].best_epoch,
            final_test: final_eval.members[0].clone(),
            history: self.history[0].clone(),
            seconds: self.progress.seconds,
            stopped_early,
            ensemble_test: final_eval.ensemble,
            members: summaries,
        })
    }
}

/// The runs TensorBoard shows: a model of its own as the model file's name; an array's
/// members as `NAME-<member>` with their seed and swept values, and `NAME-ensemble`.
fn board_runs(cfg: &TrainConfig, members: &[MemberProgress]) -> Vec<BoardRun> {
    let stem = outputs::out_stem(&cfg.out);
    if !cfg.array {
        return vec![BoardRun { name: stem, hparams: Vec::new() }];
    }
    let mut runs: Vec<BoardRun> = members
        .iter()
        .map(|m| {
            let mut hparams = vec![("seed".to_string(), m.seed.to_string())];
            hparams.extend(m.tags.iter().cloned());
            BoardRun { name: format!("{stem}-{}", outputs::member_name(m)), hparams }
        })
        .collect();
    // A part of a sweep's ensemble is of its members only: named after the part.
    let ensemble = outputs::out_stem(&cfg.array_out());
    runs.push(BoardRun { name: format!("{ensemble}-ensemble"), hparams: Vec::new() });
    runs
}

/// Where member k's model goes: `out` for a model of its own, else its name beside `out`.
fn member_path(cfg: &TrainConfig, k: usize) -> PathBuf {
    if cfg.array { member_file(&cfg.out, cfg.members[k].seed, &cfg.tags[k]) } else { cfg.out.clone() }
}

/// Each member's mean loss and accuracy over `steps` steps' stats (slot-major, then member),
/// divided by `count` examples.
fn member_means(s: &[f32], members: usize, steps: usize, count: f64) -> Vec<(f64, f64)> {
    (0..members)
        .map(|k| {
            let loss: f64 = (0..steps).map(|i| s[2 * (i * members + k)] as f64).sum();
            let hits: f64 = (0..steps).map(|i| s[2 * (i * members + k) + 1] as f64).sum();
            (loss / count, hits / count)
        })
        .collect()
}

fn monitored(es: &EarlyStopping) -> &'static str {
    if es.monitor == Monitor::ValLoss { "validation loss" } else { "training loss" }
}

/// Trains `cfg.members` on `train` (after holding out the recipe's validation share), testing
/// on `test` after every epoch; saves the models through `host` and returns the summary.
pub async fn train_on<B: Backend>(
    b: &mut B,
    host: &mut impl Host,
    cfg: TrainConfig,
    train: Dataset,
    test: &Dataset,
) -> Result<TrainSummary> {
    let mut t = Trainer::new(b, host, cfg, train, test).await?;
    let mut stopped_early = false;
    for epoch in t.epochs() {
        let figures = t.run_epoch(b, host, epoch).await?;
        let reports = t.evaluate(b, host, figures).await?;
        let stop = t.early_stop(b, host, &reports).await?;
        t.checkpoint(b, host).await?;
        if stop {
            stopped_early = true;
            break;
        }
    }
    t.finish(b, host, stopped_early).await
}

/// `train_on` with the terminal and files (`FileHost`; a progress bar if `cfg.progress`),
/// blocking until it is done.
#[cfg(not(target_arch = "wasm32"))]
pub fn train<B: Backend>(b: &mut B, cfg: TrainConfig, train: Dataset, test: &Dataset) -> Result<TrainSummary> {
    let mut host = FileHost::new(cfg.progress).with_tensorboard(cfg.tensorboard.clone());
    pollster::block_on(train_on(b, &mut host, cfg, train, test))
}

fn diverged(epoch: usize, progress: &Progress, ckpt: &Path, checkpoints: bool) -> Error {
    let kept = if progress.epoch > 0 && checkpoints {
        format!("the last good checkpoint (epoch {}) is kept at {}", progress.epoch, ckpt.display())
    } else {
        "no checkpoint was written before it".to_string()
    };
    Error::Diverged(format!(
        "training diverged in epoch {} (the loss became NaN or infinite); stopped, {kept}; try a lower --lr",
        epoch + 1
    ))
}

/// The one plain line printed per epoch.
pub fn epoch_line(r: &EpochReport, epochs: usize) -> String {
    let w = epochs.to_string().len();
    let val = match (r.val_loss, r.val_acc) {
        (Some(l), Some(a)) => format!("  val loss {l:.4} acc {}", pct(a)),
        _ => String::new(),
    };
    format!(
        "epoch {:>w$}/{epochs}  train loss {:.4} acc {}{val}  test loss {:.4} acc {}  lr {:.3e}  {:.1}s  {:.0} img/s",
        r.epoch,
        r.train_loss,
        pct(r.train_acc),
        r.test_loss,
        pct(r.test_acc),
        r.lr,
        r.seconds,
        r.images_per_second,
    )
}
