//! The scheduler: epochs of seeded shuffles and batches, the learning-rate schedule, test
//! evaluation each epoch, early stopping, checkpoints, progress output and divergence checks.
//!
//! Everything random derives from (seed, epoch, step) (see `rng`), so the same seed on the
//! same backend gives the same result bit for bit, and `--resume` continues a run exactly.

pub mod schedule;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Arch;
use crate::model::spec::Monitor;
use crate::modelfile::{self, Loaded, Progress, TrainState};
use crate::network::{DeviceData, EvalResult, Network, StepArgs};
use crate::rng;

/// Batches of this many examples (or the training batch, if larger) for evaluation.
pub const EVAL_BATCH: usize = 256;

/// How many training steps are enqueued between flushes (GPU submits).
const STEPS_PER_FLUSH: usize = 64;

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

/// Trains `cfg.arch` on `train` (after holding out the recipe's validation share), testing on
/// `test` after every epoch; saves the model to `cfg.out` and returns the summary.
pub fn train<B: Backend>(b: &mut B, cfg: TrainConfig, train: Dataset, test: &Dataset) -> Result<TrainSummary> {
    let arch = cfg.arch.clone();
    let recipe = arch.recipe().clone();
    recipe.validate().map_err(Error::Config)?;
    let classes = arch.classes();
    for (what, ds) in [("training", &train), ("test", test)] {
        if let Some(max) = ds.max_label().filter(|&m| m as usize >= classes) {
            return Err(Error::Data(format!(
                "{what} set has label {max}, but the model '{}' has {classes} outputs",
                arch.name()
            )));
        }
        if [1, ds.height, ds.width] != arch.spec.input {
            return Err(Error::Data(format!(
                "{what} images are 1x{}x{}, the model expects {:?}",
                ds.height, ds.width, arch.spec.input
            )));
        }
    }
    let val_count = (recipe.validation as f64 * train.len() as f64).round() as usize;
    let (train, val) = train.split_tail(val_count);
    if train.is_empty() {
        return Err(Error::Data("no training examples left (check --limit and validation)".into()));
    }
    let n = train.len();
    let batch = recipe.batch;
    let steps = n.div_ceil(batch);

    let train_dev = DeviceData::upload(b, &train)?;
    let test_dev = DeviceData::upload(b, test)?;
    let val_dev = if val.is_empty() { None } else { Some(DeviceData::upload(b, &val)?) };

    // Fresh start or resume.
    let (params, state, mut progress, best_init) = match cfg.resume {
        Some(ref ck) => {
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
    let seed = progress.seed;
    let mut net = Network::new(b, arch.clone(), batch.max(EVAL_BATCH), &params, &state)?;
    if let Some(ts) = cfg.resume.as_ref().and_then(|c| c.train.as_ref()) {
        net.set_opt_state(b, &ts.m, &ts.v)?;
        if let Some((ap, as_)) = &ts.average {
            net.set_average(b, ap, as_)?;
        }
    }
    let mut best = best_init;

    let mut stats = b.alloc(2 * steps)?;
    let mut perm = b.alloc_u32(n)?;
    let metrics_path = modelfile::metrics_path(&cfg.out);
    let ckpt_path = modelfile::checkpoint_path(&cfg.out);
    let mut metrics_log = open_metrics(&metrics_path, cfg.resume.is_some())?;
    let mut history = Vec::new();
    let mut stopped_early = false;
    let base_lr = recipe.optimizer.lr();
    let es = recipe.early_stopping;

    for epoch in progress.epoch..recipe.epochs {
        let lr = schedule::lr_at(&recipe.schedule, base_lr, epoch, recipe.epochs);
        b.upload_u32(&mut perm, &rng::epoch_permutation(seed, epoch, n))?;
        let bar = progress_bar(cfg.progress, steps, epoch, recipe.epochs);
        let t0 = Instant::now();
        let mut last_peek = Instant::now();
        for step in 0..steps {
            let start = step * batch;
            let args = StepArgs {
                start,
                n: batch.min(n - start),
                slot: step,
                global_step: progress.global_step,
                epoch: epoch as u32 + 1,
                lr,
                seed,
                augment: recipe.augment,
            };
            net.train_step(b, &train_dev, &perm, &mut stats, &args);
            progress.global_step += 1;
            if (step + 1) % STEPS_PER_FLUSH == 0 {
                b.flush()?;
                bar.set_position(step as u64 + 1);
                // Every few seconds, look at the running loss: for the bar, and to stop a
                // diverging run early rather than at the end of the epoch.
                if last_peek.elapsed() > Duration::from_secs(3) {
                    last_peek = Instant::now();
                    let s = b.download(&stats, 2 * (step + 1))?;
                    let seen = (step + 1).min(steps) * batch;
                    let loss = s.iter().step_by(2).map(|&v| v as f64).sum::<f64>() / seen as f64;
                    if !loss.is_finite() {
                        bar.finish_and_clear();
                        return Err(diverged(epoch, &progress, &ckpt_path, cfg.checkpoints));
                    }
                    bar.set_message(format!("loss {loss:.4}"));
                }
            }
        }
        let s = b.download(&stats, 2 * steps)?;
        let seconds = t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let train_loss = s.iter().step_by(2).map(|&v| v as f64).sum::<f64>() / n as f64;
        let train_acc = s.iter().skip(1).step_by(2).map(|&v| v as f64).sum::<f64>() / n as f64;
        if !train_loss.is_finite() {
            return Err(diverged(epoch, &progress, &ckpt_path, cfg.checkpoints));
        }
        progress.epoch = epoch + 1;
        progress.seconds += seconds;
        // With weight averaging (`ema`), the average is what is evaluated, kept and saved.
        net.swap_average();
        let test_res = net.evaluate(b, &test_dev)?;
        let val_res = match &val_dev {
            Some(v) => Some(net.evaluate(b, v)?),
            None => None,
        };
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss,
            train_acc,
            val_loss: val_res.as_ref().map(|r| r.loss),
            val_acc: val_res.as_ref().map(|r| r.accuracy()),
            test_loss: test_res.loss,
            test_acc: test_res.accuracy(),
            lr,
            seconds,
            images_per_second: n as f64 / seconds,
        };
        println!("{}", epoch_line(&report, recipe.epochs));
        if let Some(f) = metrics_log.as_mut() {
            let line = serde_json::to_string(&report).unwrap_or_default();
            writeln!(f, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
        }
        history.push(report);

        // Early stopping (seed B: relative improvement of the monitored loss).
        let mut stop = false;
        if let Some(es) = es {
            let value = match es.monitor {
                Monitor::TrainLoss => train_loss,
                Monitor::ValLoss => val_res.as_ref().map_or(train_loss, |r| r.loss),
            };
            let improved = progress.best_value.is_none_or(|b| value < b * (1.0 - es.min_delta as f64));
            if improved {
                progress.best_value = Some(value);
                progress.best_epoch = epoch + 1;
                progress.wait = 0;
                if es.restore_best {
                    best = Some(net.get_params(b)?);
                }
            } else {
                progress.wait += 1;
                stop = progress.wait >= es.patience;
            }
        }
        // The live weights back in place, for the next epoch and the checkpoint.
        net.swap_average();
        if cfg.checkpoints {
            let (p, s) = net.get_params(b)?;
            let (m, v) = net.get_opt_state(b)?;
            let average = net.get_average(b)?;
            let ts = TrainState { progress: progress.clone(), m, v, best: best.clone(), average };
            modelfile::save(&ckpt_path, &arch, &p, &s, cfg.run_info.clone(), Some(&ts))?;
        }
        if stop {
            println!(
                "early stopping: no {}% improvement of the {} in {} epochs; best was epoch {}",
                es.map_or(0.0, |e| e.min_delta * 100.0),
                if es.is_some_and(|e| e.monitor == Monitor::ValLoss) { "validation loss" } else { "training loss" },
                progress.wait,
                progress.best_epoch
            );
            stopped_early = true;
            break;
        }
    }

    // The final model: the best epoch's weights if early stopping keeps them, else the last
    // epoch's (their average, with `ema`).
    net.swap_average();
    let mut final_test = None;
    if let (Some(es), Some((p, s))) = (es, best.as_ref())
        && es.restore_best
        && progress.best_epoch != progress.epoch
    {
        net.set_params(b, p, s)?;
        let r = net.evaluate(b, &test_dev)?;
        println!(
            "restored the weights of epoch {} (best {}): test acc {}",
            progress.best_epoch,
            if es.monitor == Monitor::ValLoss { "validation loss" } else { "training loss" },
            pct(r.accuracy())
        );
        final_test = Some(r);
    }
    let final_test = match final_test {
        Some(r) => r,
        None => net.evaluate(b, &test_dev)?,
    };
    let (p, s) = net.get_params(b)?;
    let metrics = serde_json::json!({
        "test_accuracy": final_test.accuracy(),
        "test_error": 1.0 - final_test.accuracy(),
        "test_loss": final_test.loss,
        "test_count": final_test.count,
        "epochs": progress.epoch,
        "best_epoch": progress.best_epoch,
        "train_seconds": progress.seconds,
        "seed": seed,
    });
    let mut meta = cfg.run_info.clone();
    meta.insert("metrics".into(), metrics.to_string());
    meta.insert(
        "normalization".into(),
        serde_json::json!({ "input": "pixel / 255", "mean": recipe.normalize.mean, "std": recipe.normalize.std })
            .to_string(),
    );
    modelfile::save(&cfg.out, &arch, &p, &s, meta, None)?;
    Ok(TrainSummary {
        epochs_run: progress.epoch,
        best_epoch: progress.best_epoch,
        final_test,
        history,
        seconds: progress.seconds,
        stopped_early,
    })
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

fn open_metrics(path: &Path, append: bool) -> Result<Option<std::fs::File>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    Ok(Some(f))
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
