//! The scheduler: epochs of seeded shuffles and batches, the learning-rate schedule, test
//! evaluation each epoch, early stopping, checkpoints, progress output and divergence checks.
//!
//! `train` reads as its steps: `Trainer::new` checks the data against the model and puts
//! both on the device (or picks up a checkpoint), then each epoch is `run_epoch` (the step
//! loop, which `bench` drives too), `evaluate` (test and validation figures, printed and
//! logged), `early_stop` and `checkpoint`; `finish` restores the best epoch if asked and
//! saves the model.
//!
//! Everything random derives from (seed, epoch, step) (see `rng`), so the same seed on the
//! same backend gives the same result bit for bit, and `--resume` continues a run exactly.

pub mod schedule;

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::Backend;
use crate::data::augment::Augment;
use crate::data::{DataInfo, Dataset};
use crate::error::{Error, Result};
use crate::model::Arch;
use crate::model::spec::{EarlyStopping, Monitor, Normalize, Recipe};
use crate::modelfile::{self, Loaded, Progress, TrainState};
use crate::network::{DeviceData, EvalResult, Network, StepArgs};
use crate::rng;

/// Batches of this many examples (or the training batch, if larger) for evaluation.
pub const EVAL_BATCH: usize = 256;

/// How many training steps are enqueued between flushes (GPU submits).
pub const STEPS_PER_FLUSH: usize = 64;

pub struct TrainConfig {
    /// The architecture, with the recipe as it will be used (CLI overrides applied).
    pub arch: Arch,
    pub seed: u64,
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
}

/// Bytes of pictures one streaming window holds (at least one batch's): small next to any
/// device's memory and within every adapter's 128 MB per binding.
const STREAM_WINDOW_BYTES: usize = 64 << 20;

fn out_of_memory(e: &Error) -> bool {
    matches!(e, Error::Gpu(m) if m.to_lowercase().contains("out of memory"))
}

/// One epoch's figures, as printed and logged.
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

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub final_test: EvalResult,
    pub history: Vec<EpochReport>,
    pub seconds: f64,
    pub stopped_early: bool,
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
    /// The epoch's learning rate (its first step's, for a step-wise schedule).
    pub lr: f32,
    /// Step-wise schedule: (schedule, base rate, epochs); None: `lr` for every step.
    pub stepwise: Option<(crate::model::spec::Schedule, f32, usize)>,
    pub seed: u64,
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
            lr: match self.stepwise {
                Some((s, base, epochs)) => schedule::lr_at_step(&s, base, self.index, epochs, step, self.steps()),
                None => self.lr,
            },
            seed: self.seed,
            augment: self.augment,
        }
    }
}

/// Enqueues steps `steps` of epoch `e` over the permutation `perm` (each step's loss and hits
/// into `stats[step]`), submitting every `STEPS_PER_FLUSH` steps and calling `after_flush`
/// with the number of steps done and the stats. Training and `bench` both run their steps
/// through here.
#[allow(clippy::too_many_arguments)]
pub fn run_steps<B: Backend>(
    b: &mut B,
    net: &mut Network<B>,
    data: &DeviceData<B>,
    perm: &B::IBuf,
    stats: &mut B::Buf,
    e: &Epoch,
    steps: Range<usize>,
    mut after_flush: impl FnMut(&mut B, usize, &B::Buf) -> Result<()>,
) -> Result<()> {
    for step in steps {
        net.train_step(b, data, perm, stats, &e.args(step));
        if (step + 1) % STEPS_PER_FLUSH == 0 {
            b.flush()?;
            after_flush(b, step + 1, stats)?;
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

/// A training run in progress: the network and data on the device and the scheduler's state.
pub struct Trainer<B: Backend> {
    arch: Arch,
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
    /// Early stopping's best weights so far (when it restores them).
    best: Option<(Vec<f32>, Vec<f32>)>,
    metrics_log: std::fs::File,
    history: Vec<EpochReport>,
}

impl<B: Backend> Trainer<B> {
    /// Checks the recipe and data, holds out the validation share, resolves `normalize =
    /// "auto"` from the training images, uploads everything and starts fresh or from the
    /// checkpoint in `cfg.resume`.
    pub fn new(b: &mut B, mut cfg: TrainConfig, train: Dataset, test: &Dataset) -> Result<Self> {
        cfg.arch.spec.train.validate().map_err(Error::Config)?;
        check_data(&cfg.arch, &train, "training")?;
        check_data(&cfg.arch, test, "test")?;
        let recipe = cfg.arch.recipe().clone();
        let val_count = (recipe.validation as f64 * train.len() as f64).round() as usize;
        let (train, val) = train.split_tail(val_count);
        if train.is_empty() {
            return Err(Error::Data("no training examples left (check --limit and validation)".into()));
        }
        if recipe.normalize.is_auto() {
            let (mean, std) = train.channel_stats();
            println!("normalize auto: per-channel mean {mean:.4?}, std {std:.4?} over the training images");
            cfg.arch.spec.train.normalize = Normalize::values(mean, std);
        }
        let arch = cfg.arch.clone();
        let recipe = arch.recipe().clone();

        crate::network::check_fits(b, &arch, recipe.batch.max(EVAL_BATCH))?;
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
                    println!(
                        "note: the training set ({} MB) does not fit in the device's memory; streaming it from host memory",
                        train.images.len() >> 20
                    );
                    streamed(b, train)?
                }
                Err(e) => return Err(e),
            }
        };
        let test_dev = DeviceData::upload(b, test)?;
        let val = if val.is_empty() { None } else { Some(DeviceData::upload(b, &val)?) };

        let (params, state, progress, best) = match &cfg.resume {
            Some(ck) => {
                let ts = ck
                    .train
                    .as_ref()
                    .ok_or_else(|| Error::Config("the resume file is a model, not a checkpoint".into()))?;
                (ck.params.clone(), ck.state.clone(), ts.progress.clone(), ts.best.clone())
            }
            None => {
                let (p, s) = arch.init(recipe.init, cfg.seed);
                let progress = Progress {
                    epoch: 0,
                    global_step: 0,
                    seed: cfg.seed,
                    best_value: None,
                    best_epoch: 0,
                    wait: 0,
                    seconds: 0.0,
                };
                (p, s, progress, None)
            }
        };
        let mut net = Network::new(b, arch.clone(), recipe.batch.max(EVAL_BATCH), &params, &state)?;
        if let Some(ts) = cfg.resume.as_ref().and_then(|c| c.train.as_ref()) {
            net.set_opt_state(b, &ts.m, &ts.v)?;
            if let Some((ap, as_)) = &ts.average {
                net.set_average(b, ap, as_)?;
            }
        }
        let stats = b.alloc(2 * n.div_ceil(recipe.batch))?;
        let perm = b.alloc_u32(n)?;
        let metrics_log = open_metrics(&modelfile::metrics_path(&cfg.out), cfg.resume.is_some())?;
        Ok(Trainer {
            arch,
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
            best,
            metrics_log,
            history: Vec::new(),
        })
    }

    /// The epochs still to run (0-based).
    pub fn epochs(&self) -> Range<usize> {
        self.progress.epoch..self.recipe.epochs
    }

    fn epoch_plan(&self, index: usize) -> Epoch {
        Epoch {
            index,
            n: self.n,
            batch: self.recipe.batch,
            lr: schedule::lr_at(&self.recipe.schedule, self.recipe.optimizer.lr(), index, self.recipe.epochs),
            stepwise: matches!(self.recipe.schedule, crate::model::spec::Schedule::OneCycle { .. })
                .then(|| (self.recipe.schedule, self.recipe.optimizer.lr(), self.recipe.epochs)),
            seed: self.progress.seed,
            augment: self.recipe.augment,
            first_step: self.progress.global_step,
        }
    }

    /// Every step of epoch `index` over a fresh shuffle, with a progress bar and a look at
    /// the running loss every few seconds (a diverging run stops there, not at the epoch's
    /// end). Returns the epoch's mean training loss and accuracy and its seconds.
    pub fn run_epoch(&mut self, b: &mut B, index: usize) -> Result<(f64, f64, f64, f32)> {
        let e = self.epoch_plan(index);
        let steps = e.steps();
        let perm = rng::epoch_permutation(e.seed, index, self.n);
        b.upload_u32(&mut self.perm, &perm)?;
        let bar = progress_bar(self.cfg.progress, steps, index, self.recipe.epochs);
        let t0 = Instant::now();
        let mut last_peek = Instant::now();
        let (batch, ckpt, checkpoints) = (e.batch, modelfile::checkpoint_path(&self.cfg.out), self.cfg.checkpoints);
        let progress = &self.progress;
        let mut peek = |b: &mut B, done: usize, stats: &B::Buf| -> Result<()> {
            bar.set_position(done as u64);
            if last_peek.elapsed() > Duration::from_secs(3) {
                last_peek = Instant::now();
                let s = b.download(stats, 2 * done)?;
                let loss = s.iter().step_by(2).map(|&v| v as f64).sum::<f64>() / (done * batch) as f64;
                if !loss.is_finite() {
                    bar.finish_and_clear();
                    return Err(diverged(index, progress, &ckpt, checkpoints));
                }
                bar.set_message(format!("loss {loss:.4}"));
            }
            Ok(())
        };
        // Resident data: one stretch. Streamed: as many steps as the window holds batches,
        // each stretch's examples staged before its steps are recorded.
        let stretch = self.train.stream.as_ref().map_or(steps, |st| (st.capacity / batch).max(1));
        let mut first = 0;
        while first < steps {
            let end = (first + stretch).min(steps);
            self.train.stage(b, &perm, first * batch, (end * batch).min(self.n) - first * batch)?;
            run_steps(b, &mut self.net, &self.train, &self.perm, &mut self.stats, &e, first..end, &mut peek)?;
            first = end;
        }
        let s = b.download(&self.stats, 2 * steps)?;
        let seconds = t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let loss = s.iter().step_by(2).map(|&v| v as f64).sum::<f64>() / self.n as f64;
        let acc = s.iter().skip(1).step_by(2).map(|&v| v as f64).sum::<f64>() / self.n as f64;
        if !loss.is_finite() {
            return Err(diverged(index, &self.progress, &ckpt, checkpoints));
        }
        self.progress.epoch = index + 1;
        self.progress.global_step += steps as u32;
        self.progress.seconds += seconds;
        Ok((loss, acc, seconds, e.lr))
    }

    /// Test (and validation) figures of the weights to keep (the average's, with `ema`),
    /// printed as one line and appended to the metrics log; the live weights stay in place.
    pub fn evaluate(&mut self, b: &mut B, (loss, acc, seconds, lr): (f64, f64, f64, f32)) -> Result<EpochReport> {
        self.net.swap_average();
        let test = self.net.evaluate_figures(b, &self.test);
        let val = match &self.val {
            Some(v) => self.net.evaluate_figures(b, v).map(Some),
            None => Ok(None),
        };
        self.net.swap_average();
        let (test, val) = (test?, val?);
        let report = EpochReport {
            epoch: self.progress.epoch,
            train_loss: loss,
            train_acc: acc,
            val_loss: val.as_ref().map(|r| r.loss),
            val_acc: val.as_ref().map(|r| r.accuracy()),
            test_loss: test.loss,
            test_acc: test.accuracy(),
            lr,
            seconds,
            images_per_second: self.n as f64 / seconds,
        };
        println!("{}", epoch_line(&report, self.recipe.epochs));
        let line = serde_json::to_string(&report).unwrap_or_default();
        let path = modelfile::metrics_path(&self.cfg.out);
        writeln!(self.metrics_log, "{line}").map_err(|e| Error::io(&path, e))?;
        self.history.push(report.clone());
        Ok(report)
    }

    /// Seed B's early stopping: the relative improvement of the monitored loss. Keeps the
    /// best weights when they are to be restored; true when patience has run out.
    pub fn early_stop(&mut self, b: &mut B, r: &EpochReport) -> Result<bool> {
        let Some(es) = self.recipe.early_stopping else { return Ok(false) };
        let value = match es.monitor {
            Monitor::TrainLoss => r.train_loss,
            Monitor::ValLoss => r.val_loss.unwrap_or(r.train_loss),
        };
        let p = &mut self.progress;
        if p.best_value.is_none_or(|best| value < best * (1.0 - es.min_delta as f64)) {
            p.best_value = Some(value);
            p.best_epoch = r.epoch;
            p.wait = 0;
            if es.restore_best {
                self.net.swap_average();
                let kept = self.net.get_params(b);
                self.net.swap_average();
                self.best = Some(kept?);
            }
            return Ok(false);
        }
        p.wait += 1;
        if p.wait < es.patience {
            return Ok(false);
        }
        println!(
            "early stopping: no {}% improvement of the {} in {} epochs; best was epoch {}",
            es.min_delta * 100.0,
            monitored(&es),
            p.wait,
            p.best_epoch
        );
        Ok(true)
    }

    /// Writes the checkpoint (weights, optimizer state, scheduler position, best weights,
    /// average) atomically, when the run keeps them.
    pub fn checkpoint(&mut self, b: &mut B) -> Result<()> {
        if !self.cfg.checkpoints {
            return Ok(());
        }
        let (p, s) = self.net.get_params(b)?;
        let (m, v) = self.net.get_opt_state(b)?;
        let average = self.net.get_average(b)?;
        let ts = TrainState { progress: self.progress.clone(), m, v, best: self.best.clone(), average };
        let path = modelfile::checkpoint_path(&self.cfg.out);
        modelfile::save(&path, &self.arch, &p, &s, self.cfg.run_info.clone(), Some(&ts))
    }

    /// The final model: the best epoch's weights if early stopping keeps them, else the last
    /// epoch's (their average, with `ema`); evaluated on the test set and saved.
    pub fn finish(mut self, b: &mut B, stopped_early: bool) -> Result<TrainSummary> {
        self.net.swap_average();
        let es = self.recipe.early_stopping;
        let mut final_test = None;
        if let (Some(es), Some((p, s))) = (es, self.best.as_ref())
            && es.restore_best
            && self.progress.best_epoch != self.progress.epoch
        {
            self.net.set_params(b, p, s)?;
            let r = self.net.evaluate_figures(b, &self.test)?;
            println!(
                "restored the weights of epoch {} (best {}): test acc {}",
                self.progress.best_epoch,
                monitored(&es),
                pct(r.accuracy())
            );
            final_test = Some(r);
        }
        let final_test = match final_test {
            Some(r) => r,
            None => self.net.evaluate_figures(b, &self.test)?,
        };
        let (p, s) = self.net.get_params(b)?;
        let metrics = serde_json::json!({
            "test_accuracy": final_test.accuracy(),
            "test_error": 1.0 - final_test.accuracy(),
            "test_loss": final_test.loss,
            "test_count": final_test.count,
            "epochs": self.progress.epoch,
            "best_epoch": self.progress.best_epoch,
            "train_seconds": self.progress.seconds,
            "seed": self.progress.seed,
        });
        let mut meta = self.cfg.run_info.clone();
        meta.insert("metrics".into(), metrics.to_string());
        let (mean, std) = self.recipe.normalize.per_channel(self.arch.spec.input[0]);
        meta.insert(
            "normalization".into(),
            serde_json::json!({ "input": "pixel / 255", "mean": mean, "std": std }).to_string(),
        );
        self.cfg.data.record(&mut meta);
        modelfile::save(&self.cfg.out, &self.arch, &p, &s, meta, None)?;
        Ok(TrainSummary {
            epochs_run: self.progress.epoch,
            best_epoch: self.progress.best_epoch,
            final_test,
            history: self.history,
            seconds: self.progress.seconds,
            stopped_early,
        })
    }
}

fn monitored(es: &EarlyStopping) -> &'static str {
    if es.monitor == Monitor::ValLoss { "validation loss" } else { "training loss" }
}

/// Trains `cfg.arch` on `train` (after holding out the recipe's validation share), testing on
/// `test` after every epoch; saves the model to `cfg.out` and returns the summary.
pub fn train<B: Backend>(b: &mut B, cfg: TrainConfig, train: Dataset, test: &Dataset) -> Result<TrainSummary> {
    let mut t = Trainer::new(b, cfg, train, test)?;
    let mut stopped_early = false;
    for epoch in t.epochs() {
        let figures = t.run_epoch(b, epoch)?;
        let report = t.evaluate(b, figures)?;
        let stop = t.early_stop(b, &report)?;
        t.checkpoint(b)?;
        if stop {
            stopped_early = true;
            break;
        }
    }
    t.finish(b, stopped_early)
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

fn open_metrics(path: &Path, append: bool) -> Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn progress_bar(enabled: bool, steps: usize, epoch: usize, epochs: usize) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    // Drawn on stderr only when it is a terminal (indicatif hides it otherwise).
    let bar = ProgressBar::new(steps as u64);
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps, {per_sec}, ETA {eta} {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
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
