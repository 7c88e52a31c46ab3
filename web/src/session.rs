//! What the page does, apart from the page: a data set held in memory, a training run driven a
//! chunk of steps at a time, a finished or loaded model to predict with, and the pictures of
//! the run. Nothing here is browser-specific (the GPU is whatever `GpuBackend` was opened), so
//! the same session also runs natively; `lib.rs` binds it to JavaScript.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gpu_train::data::source::{self, LoadOptions, Splits};
use gpu_train::data::{DataInfo, Dataset, Resize, folder, idx};
use gpu_train::gpu::{GpuBackend, tune};
use gpu_train::model::{Arch, ModelSpec, presets};
use gpu_train::modelfile::{self, Loaded};
use gpu_train::network::{DeviceData, Member, Members, Network};
use gpu_train::plot::{self, LineChart, Series, Stroke};
use gpu_train::predict::{self, Prep};
use gpu_train::train::{EVAL_BATCH, EpochReport, Host, TrainConfig, Trainer};
use gpu_train::{Error, Result};
use serde::{Deserialize, Serialize};
use web_time::Instant;

/// The file name a model trained in the page is saved (and downloaded) as.
pub const MODEL_FILE: &str = "model.safetensors";

/// The most test pictures an epoch's test takes in the page: a larger test set is sampled
/// (fixed by the run's seed) for the epochs and tested whole at the end, so that a slow
/// adapter does not spend minutes after every epoch. The command line tests every epoch on
/// the whole set.
pub const EPOCH_TEST: usize = 1000;

/// About how long one call into the session takes (seconds): the page hears back, and can
/// pause, at least this often. Training chunks are sized to it.
const CALL_SECONDS: f64 = 0.5;

/// Where the trainer's output goes in a page: lines to show, files kept in memory.
#[derive(Default)]
pub struct PageHost {
    /// Lines not yet shown.
    pub lines: Vec<String>,
    /// Files saved by the trainer (the model), by path.
    pub files: HashMap<PathBuf, Vec<u8>>,
    /// Each log's lines (the metrics log, one JSON object per epoch), by path.
    pub logs: HashMap<PathBuf, Vec<String>>,
}

impl Host for PageHost {
    fn say(&mut self, line: &str) {
        self.lines.push(line.to_string());
    }

    fn log_start(&mut self, path: &Path, keep: bool) -> Result<()> {
        let log = self.logs.entry(path.to_path_buf()).or_default();
        if !keep {
            log.clear();
        }
        Ok(())
    }

    fn log(&mut self, path: &Path, line: &str) -> Result<()> {
        self.logs.entry(path.to_path_buf()).or_default().push(line.to_string());
        Ok(())
    }

    fn save(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.files.insert(path.to_path_buf(), bytes.to_vec());
        Ok(())
    }
}

/// A data set as the page holds it until a model says what shape its pictures take.
enum Source {
    /// IDX images (MNIST and its kin): brought to the model's input when a run starts.
    Idx { train: Dataset, test: Dataset, digits: bool },
    /// A folder of pictures (path relative to the chosen folder, bytes): decoded when a run
    /// starts, at the model's input size.
    Files(Vec<(String, Vec<u8>)>),
}

struct PageData {
    name: String,
    source: Source,
}

/// What a run is asked for: the model (a preset or a model file's text) and what overrides
/// its recipe. Missing fields keep the recipe's values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// A preset name.
    pub arch: Option<String>,
    /// A model file's text (TOML), instead of a preset.
    pub toml: Option<String>,
    /// Train the loaded model further rather than a fresh one.
    #[serde(default)]
    pub from_loaded: bool,
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    pub lr: Option<f32>,
    /// Train on the first this many training examples.
    pub limit: Option<usize>,
    pub seed: Option<u64>,
    /// How pictures of another size are brought to the model's input.
    pub resize: Option<Resize>,
    /// A folder of classes without train/ and test/: the share held out as the test set.
    pub val_split: Option<f32>,
    /// GPU kernels per layer shape: "tuned" (the default: timed on this adapter before the
    /// first step, kept for the page session) or "default".
    pub kernels: Option<String>,
    /// Seconds tuning may take (default 10); shapes left keep the default kernel.
    pub tune_budget: Option<f64>,
    /// Time every kernel of the training steps with timestamp queries (the adapter must
    /// offer them): the run's end reports GPU seconds per step by kernel, as `gpu-train
    /// bench --profile` does natively, to compare the page with the command line.
    pub profile: Option<bool>,
}

/// A run's start, for the page.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    /// The model's name (its file's `name`).
    pub arch: String,
    pub train_images: usize,
    pub test_images: usize,
    /// Test pictures each epoch's test takes (all of them, or `EPOCH_TEST`).
    pub epoch_test_images: usize,
    /// Steps in an epoch, and epochs.
    pub steps: usize,
    pub epochs: usize,
    /// Lines to show (the model's layers, notes on the data).
    pub lines: Vec<String>,
}

/// One chunk's news for the page.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The epoch in progress or just ended (1-based) and the epochs asked for.
    pub epoch: usize,
    pub epochs: usize,
    /// Steps done of the epoch's steps.
    pub step: usize,
    pub steps: usize,
    /// Mean training loss and accuracy over the epoch's steps so far.
    pub running_loss: f64,
    pub running_acc: f64,
    /// Training images per second over the epoch so far.
    pub images_per_second: f64,
    /// Training images done this epoch, of `images`.
    pub images_done: usize,
    pub images: usize,
    /// Seconds left in this epoch's steps, and in the whole run (its tests included), from
    /// the time taken so far; None until there is a time to go by.
    pub epoch_seconds_left: Option<f64>,
    pub seconds_left: Option<f64>,
    /// Steps this call took (sized so that a call takes about `CALL_SECONDS`).
    pub chunk: usize,
    /// The epoch's figures, when this chunk ended it.
    pub epoch_report: Option<EpochReport>,
    /// The run's end, when this chunk ended it (the model is then ready to download).
    pub finished: Option<Finished>,
    /// Lines to show (epoch lines, early stopping, notes).
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    pub epochs_run: usize,
    /// On the whole test set.
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub test_images: usize,
    /// The last epoch's test, on the epochs' sample (`EPOCH_TEST`) when the set is larger.
    pub epoch_test_accuracy: f64,
    pub epoch_test_images: usize,
    pub train_loss: Option<f64>,
    pub seconds: f64,
    /// The training steps' mean wall time (recording, submitting, and waiting for each
    /// chunk's read-back; the tests between epochs apart): `gpu-train bench`'s figure.
    pub seconds_per_step: f64,
    pub stopped_early: bool,
    /// Lines to show (a restored best epoch, say).
    pub lines: Vec<String>,
    /// With `profile`: the training steps' time per step, on the GPU by kernel and in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
}

/// GPU seconds per training step by kernel (timestamp queries) beside the step's wall time
/// in the page (recording, submitting and waiting for the chunk's read-back).
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub steps: usize,
    pub seconds_per_step: f64,
    pub kernel_seconds_per_step: f64,
    /// (kernel, seconds per step, dispatches per step), slowest first.
    pub kernels: Vec<(String, f64, f64)>,
    /// Dispatches left untimed (every query in use before the page read them).
    pub untimed: u64,
}

/// A run in progress.
struct Run {
    trainer: Trainer<GpuBackend>,
    host: PageHost,
    info: DataInfo,
    train_len: usize,
    batch: usize,
    /// The running loss at each chunk: (fractional epoch, loss).
    loss_points: Vec<(f64, f64)>,
    reports: Vec<EpochReport>,
    stopped_early: bool,
    started: Instant,
    /// Steps per call, grown or shrunk so that a call takes about `CALL_SECONDS`.
    chunk: usize,
    /// The whole test set, when the epochs test a sample of it (tested whole at the end).
    full_test: Option<Dataset>,
    epoch_test_images: usize,
    /// Seconds of training steps and of tests so far, and steps taken: the time left.
    step_seconds: f64,
    steps_done: usize,
    test_seconds: f64,
    tests_done: usize,
}

/// A time per epoch measured on a few steps (`Session::estimate`).
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub arch: String,
    pub seconds_per_step: f64,
    pub steps_per_epoch: usize,
    /// The epoch's steps, and its test (the sample the page takes).
    pub train_seconds: f64,
    pub test_seconds: f64,
    pub seconds_per_epoch: f64,
    /// Steps timed (after one untimed), of batch `batch`.
    pub timed_steps: usize,
    pub batch: usize,
}

/// Waits for the work recorded so far (a read-back of `stats`).
async fn sync(gpu: &mut GpuBackend, stats: &gpu_train::gpu::GpuBuf) -> Result<()> {
    gpu_train::backend::Backend::flush(gpu)?;
    gpu_train::backend::Backend::download(gpu, stats, 2).await.map(|_| ())
}

/// The most steps one call takes, whatever the pace (a step's statistics slot per step).
const STEPS_CAP: usize = 64;

/// A saved model's bytes with its recorded test figures replaced by `test`'s (the whole test
/// set's, where the epochs tested a sample).
fn with_test_figures(loaded: Loaded, test: &gpu_train::network::EvalResult) -> Result<Vec<u8>> {
    let mut meta = loaded.metadata;
    let mut metrics: serde_json::Value =
        meta.get("metrics").and_then(|m| serde_json::from_str(m).ok()).unwrap_or_else(|| serde_json::json!({}));
    metrics["test_accuracy"] = serde_json::json!(test.accuracy());
    metrics["test_error"] = serde_json::json!(1.0 - test.accuracy());
    metrics["test_loss"] = serde_json::json!(test.loss);
    metrics["test_count"] = serde_json::json!(test.count);
    meta.insert("metrics".into(), metrics.to_string());
    modelfile::encode(Path::new(MODEL_FILE), &loaded.arch, &loaded.params, &loaded.state, meta, None)
}

/// `n` examples of `ds` drawn without replacement (in their order in `ds`), fixed by `seed`.
fn sample(ds: &Dataset, n: usize, seed: u64) -> Dataset {
    let mut keep: Vec<usize> =
        gpu_train::rng::epoch_permutation(seed, 0, ds.len()).into_iter().take(n).map(|i| i as usize).collect();
    keep.sort_unstable();
    ds.select(&keep)
}

/// A model to predict with: trained here or loaded.
struct Ready {
    loaded: Loaded,
    net: Network<GpuBackend>,
    bytes: Vec<u8>,
    name: String,
}

/// One class of a prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Guess {
    pub class: usize,
    pub name: String,
    pub probability: f32,
}

pub struct Session {
    pub gpu: GpuBackend,
    data: Option<PageData>,
    run: Option<Run>,
    model: Option<Ready>,
    /// The last run's pictures' data, kept after it finishes.
    history: (Vec<(f64, f64)>, Vec<EpochReport>),
    /// The kernels tuning chose on this adapter, for the page session (the command line
    /// keeps them in a file).
    kernel_cache: tune::Cache,
}

impl Session {
    pub fn new(gpu: GpuBackend) -> Session {
        Session {
            gpu,
            data: None,
            run: None,
            model: None,
            history: (Vec::new(), Vec::new()),
            kernel_cache: tune::Cache::default(),
        }
    }

    /// The adapter, in words.
    pub fn adapter(&self) -> String {
        let i = self.gpu.adapter_info();
        // A browser's WebGPU names no adapter to wgpu (the page asks it for what it tells).
        match i.name.is_empty() {
            true => format!("WebGPU ({:?})", i.device_type),
            false => format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type),
        }
    }

    /// MNIST-style data from the four IDX files' bytes (raw or gzip). `digits`: pictures of
    /// digits, which `predict` prepares as MNIST was made.
    pub fn load_idx(&mut self, name: &str, files: [&[u8]; 4], digits: bool) -> Result<String> {
        let read = |images: &[u8], labels: &[u8], what: &str| -> Result<Dataset> {
            let p = PathBuf::from(format!("{name}/{what}"));
            let (dims, pixels) = idx::parse_idx(images, 3, &p.join("images"))?;
            let images = idx::IdxImages { count: dims[0], rows: dims[1], cols: dims[2], pixels };
            let (_, labels) = idx::parse_idx(labels, 1, &p.join("labels"))?;
            Dataset::from_idx(images, labels, &p.display().to_string())
        };
        let train = read(files[0], files[1], "train")?;
        let test = read(files[2], files[3], "test")?;
        let line = format!(
            "{name}: {} training and {} test images of {}x{}, {} classes",
            train.len(),
            test.len(),
            train.width,
            train.height,
            train.classes.len()
        );
        self.data = Some(PageData { name: name.into(), source: Source::Idx { train, test, digits } });
        Ok(line)
    }

    /// A folder of pictures: (path relative to the chosen folder, bytes) for each file. Checked
    /// now (class folders, pictures in each) by decoding at a small size; decoded at the
    /// model's input size when a run starts.
    pub fn load_files(&mut self, name: &str, files: Vec<(String, Vec<u8>)>) -> Result<String> {
        let mut o = LoadOptions::new([1, 4, 4]);
        o.cache = false;
        o.skip_bad = true;
        let s = source::load_files(&files, name, &o)?;
        let line = format!(
            "{name}: {} training and {} test pictures in {} classes ({})",
            s.train.len(),
            s.test.len(),
            s.info.classes.len(),
            s.info.classes.iter().take(12).cloned().collect::<Vec<_>>().join(", ")
        );
        self.data = Some(PageData { name: name.into(), source: Source::Files(files) });
        Ok(line)
    }

    pub fn has_data(&self) -> bool {
        self.data.is_some()
    }

    /// The data brought to `shape`.
    fn splits(&self, shape: [usize; 3], seed: u64, o: &RunOptions) -> Result<Splits> {
        let data = self.data.as_ref().ok_or_else(|| Error::Data("no data loaded".into()))?;
        let mut lo = LoadOptions::new(shape);
        lo.seed = seed;
        lo.cache = false;
        lo.skip_bad = true;
        lo.val_split = o.val_split;
        if let Some(r) = o.resize {
            lo.resize = r;
        }
        match &data.source {
            Source::Idx { train, test, digits } => {
                source::from_idx(train.clone(), test.clone(), Path::new(&data.name), *digits, &lo)
            }
            Source::Files(files) => source::load_files(files, &data.name, &lo),
        }
    }

    /// The model a run asks for, with its overrides applied.
    fn spec(&self, o: &RunOptions) -> Result<(ModelSpec, Option<&Ready>)> {
        let (mut spec, from) = if o.from_loaded {
            let m = self.model.as_ref().ok_or_else(|| Error::Config("no model loaded to train on".into()))?;
            (m.loaded.arch.spec.clone(), Some(m))
        } else if let Some(text) = &o.toml {
            (presets::parse(text, "the model text")?, None)
        } else {
            (presets::load(o.arch.as_deref().unwrap_or("mlp"))?, None)
        };
        if let Some(e) = o.epochs {
            spec.train.epochs = e;
        }
        if let Some(b) = o.batch {
            spec.train.batch = b;
        }
        if let Some(lr) = o.lr {
            spec.train.optimizer.set_lr(lr);
        }
        spec.train.validate().map_err(|e| Error::Config(format!("invalid setting: {e}")))?;
        Ok((spec, from))
    }

    /// Starts a run (any run in progress is dropped).
    pub async fn start(&mut self, o: &RunOptions) -> Result<Started> {
        self.run = None;
        if o.limit == Some(0) {
            return Err(Error::Config("the limit must be at least 1".into()));
        }
        let (spec, from) = self.spec(o)?;
        let start_from = from.map(|m| (m.loaded.params.clone(), m.loaded.state.clone()));
        let arch = Arch::new(spec)?;
        let seed = o.seed.unwrap_or(1);
        let splits = self.splits(arch.spec.input, seed, o)?;
        let train = match o.limit {
            Some(n) => splits.train.take(n),
            None => splits.train,
        };
        gpu_train::train::check_data(&arch, &train, "training")?;
        gpu_train::train::check_data(&arch, &splits.test, "test")?;
        let r = arch.recipe().clone();
        let mut lines = splits.notes.clone();
        let (epoch_test, full_test) = match splits.test.len() > EPOCH_TEST {
            true => {
                lines.push(format!(
                    "each epoch is tested on a fixed sample of {EPOCH_TEST} of the {} test pictures (seed {seed}); \
                     the whole test set at the end",
                    splits.test.len()
                ));
                (sample(&splits.test, EPOCH_TEST, seed), Some(splits.test.clone()))
            }
            false => (splits.test.clone(), None),
        };
        lines.push(format!(
            "{} on {} | {} training / {} test images in {} classes | {} epochs, batch {}",
            arch.name(),
            self.adapter(),
            train.len(),
            splits.test.len(),
            train.classes.len(),
            r.epochs,
            r.batch
        ));
        lines.extend(arch.summary().lines().map(str::to_string));
        let arch_name = arch.name().to_string();
        let mut cfg = TrainConfig::single(arch, seed, PathBuf::from(MODEL_FILE));
        cfg.checkpoints = false;
        cfg.data = splits.info.clone();
        cfg.start_from = start_from;
        cfg.run_info.insert(
            "run".into(),
            serde_json::json!({ "backend": "webgpu", "data_seed": seed, "train_images": train.len(), "members": 1 })
                .to_string(),
        );
        cfg.run_info.insert("device".into(), self.adapter());
        // Each layer shape's kernel, tuned on this adapter as the command line does (bounded,
        // shown, kept for the session) and recorded with the model.
        let kernels = match o.kernels.as_deref().unwrap_or("tuned") {
            "default" => {
                self.gpu.clear_choices();
                lines.push("kernels: the default tiling for every layer".into());
                tune::defaults(&self.gpu)
            }
            "tuned" => {
                gpu_train::progress::stage("tuning the kernels");
                let members = Members::new(vec![Member { seed, spec: cfg.members[0].spec.clone() }])?;
                let budget = o.tune_budget.unwrap_or(10.0);
                if !(budget >= 0.0 && budget.is_finite()) {
                    return Err(Error::Config(format!("the tuning budget must be seconds, at least 0 (got {budget})")));
                }
                let budget = std::time::Duration::from_secs_f64(budget);
                let t =
                    tune::tune_with(&mut self.gpu, &members, &train, r.batch, budget, false, &mut self.kernel_cache)
                        .await?;
                lines.push(t.line());
                t.set
            }
            other => return Err(Error::Config(format!("kernels: '{other}' is neither 'tuned' nor 'default'"))),
        };
        cfg.run_info.insert("kernels".into(), kernels.to_json());
        if o.profile == Some(true) {
            self.gpu.enable_profiling()?;
        }
        let mut host = PageHost::default();
        let train_len = train.len();
        gpu_train::progress::stage("preparing the run");
        let trainer = Trainer::new(&mut self.gpu, &mut host, cfg, train, &epoch_test).await?;
        lines.append(&mut host.lines);
        let started = Started {
            arch: arch_name,
            train_images: train_len,
            test_images: splits.test.len(),
            epoch_test_images: epoch_test.len(),
            steps: train_len.div_ceil(r.batch),
            epochs: r.epochs,
            lines,
        };
        self.history = (Vec::new(), Vec::new());
        self.run = Some(Run {
            trainer,
            host,
            info: splits.info,
            train_len,
            batch: r.batch,
            loss_points: Vec::new(),
            reports: Vec::new(),
            stopped_early: false,
            started: Instant::now(),
            chunk: 1,
            full_test,
            epoch_test_images: epoch_test.len(),
            step_seconds: 0.0,
            steps_done: 0,
            test_seconds: 0.0,
            tests_done: 0,
        });
        Ok(started)
    }

    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// Records the next chunk of steps (starting an epoch if none is in progress) and reads
    /// the running figures back; at an epoch's end tests the model, and at the run's end
    /// saves it (ready to download and predict with) and tests it on the whole test set. A
    /// chunk is as many steps as take about `CALL_SECONDS` (one, to begin with), so the page
    /// hears back that often however slow its adapter.
    pub async fn step(&mut self) -> Result<StepReport> {
        let run = self.run.as_mut().ok_or_else(|| Error::Config("no run in progress (start one)".into()))?;
        let t = &mut run.trainer;
        if t.position().is_none() {
            let next = t.epochs_done();
            t.begin_epoch(&mut self.gpu, next)?;
        }
        let (_, before, _) = t.position().unwrap_or((0, 0, 1));
        gpu_train::progress::stage("training");
        let clock = Instant::now();
        let ended = t.run_steps(&mut self.gpu, run.chunk)?;
        let (index, step, steps) = t.position().unwrap_or((0, 0, 1));
        // The read-back waits for the chunk's steps: the clock then holds their time.
        let figures = t.running_figures(&mut self.gpu).await?;
        let took = clock.elapsed().as_secs_f64();
        // Profiling: the chunk's kernel timings, read now that its steps are done.
        self.gpu.read_profile().await?;
        let did = step.saturating_sub(before).max(1);
        run.step_seconds += took;
        run.steps_done += did;
        // Next chunk: the steps that fit the call's time at this chunk's pace, at most four
        // times as many as this one (a first step may be slow: pipelines built on first use).
        run.chunk = ((did as f64 * CALL_SECONDS / took.max(1e-6)) as usize).clamp(1, 4 * did).min(STEPS_CAP);
        let (loss, acc) = figures.first().copied().unwrap_or((f64::NAN, 0.0));
        let elapsed = run.started.elapsed().as_secs_f64().max(1e-9);
        let seen = (step * run.batch).min(run.train_len);
        let epochs = t.epochs_total();
        let per_step = run.step_seconds / run.steps_done as f64;
        let per_test = match run.tests_done {
            0 => None,
            n => Some(run.test_seconds / n as f64),
        };
        let epoch_left = (steps - step) as f64 * per_step;
        let later_epochs = epochs.saturating_sub(index + 1) as f64;
        // The tests still to come: this epoch's and the later ones' (each about as long as
        // those so far; before the first, a guess of a third of the steps' time per picture),
        // and the final test of the whole set.
        let test_guess = per_test.unwrap_or(per_step * run.epoch_test_images as f64 / run.batch as f64 / 3.0);
        let final_test =
            run.full_test.as_ref().map_or(0.0, |f| test_guess * f.len() as f64 / run.epoch_test_images.max(1) as f64);
        let run_left =
            epoch_left + later_epochs * steps as f64 * per_step + (later_epochs + 1.0) * test_guess + final_test;
        let mut report = StepReport {
            epoch: index + 1,
            epochs,
            step,
            steps,
            running_loss: loss,
            running_acc: acc,
            images_per_second: seen as f64 / elapsed,
            images_done: seen,
            images: run.train_len,
            epoch_seconds_left: Some(epoch_left),
            seconds_left: Some(run_left),
            chunk: did,
            epoch_report: None,
            finished: None,
            lines: Vec::new(),
        };
        run.loss_points.push((index as f64 + step as f64 / steps as f64, loss));
        if ended {
            // The epoch's test is not a training step: left out of the profile.
            let profiler = self.gpu.pause_profiling();
            let figures = t.end_epoch(&mut self.gpu).await?;
            gpu_train::progress::stage(&format!("testing epoch {} on {} pictures", index + 1, run.epoch_test_images));
            let clock = Instant::now();
            let reports = t.evaluate(&mut self.gpu, &mut run.host, figures).await?;
            run.test_seconds += clock.elapsed().as_secs_f64();
            run.tests_done += 1;
            let stop = t.early_stop(&mut self.gpu, &mut run.host, &reports).await?;
            self.gpu.resume_profiling(profiler);
            report.epoch_report = reports.members.first().cloned().flatten();
            if let Some(r) = &report.epoch_report {
                run.reports.push(r.clone());
            }
            run.started = Instant::now();
            run.stopped_early = stop;
            if stop || t.epochs_done() >= t.epochs_total() {
                report.lines.append(&mut run.host.lines);
                report.finished = Some(self.finish().await?);
                report.seconds_left = Some(0.0);
                return Ok(report);
            }
        }
        gpu_train::progress::clear();
        report.lines.append(&mut run.host.lines);
        Ok(report)
    }

    /// Ends the run now (mid-epoch: with the weights as they are), saves the model and makes
    /// it the one to predict with; where the epochs tested a sample, tests it on the whole
    /// test set (the model file records those figures).
    pub async fn finish(&mut self) -> Result<Finished> {
        let mut run = self.run.take().ok_or_else(|| Error::Config("no run in progress".into()))?;
        let train_loss = run.reports.last().map(|r| r.train_loss);
        let steps = run.steps_done.max(1);
        let per = |x: f64| x / steps as f64;
        let seconds_per_step = per(run.step_seconds);
        let profile = if self.gpu.profiling() {
            self.gpu.read_profile().await?;
            let kernels: Vec<(String, f64, f64)> =
                self.gpu.profile_report()?.into_iter().map(|(k, s, n)| (k, per(s), per(n as f64))).collect();
            let untimed = self.gpu.profile_untimed();
            drop(self.gpu.pause_profiling());
            Some(Profile {
                steps,
                seconds_per_step,
                kernel_seconds_per_step: kernels.iter().map(|k| k.1).sum(),
                kernels,
                untimed,
            })
        } else {
            None
        };
        gpu_train::progress::stage(&format!("testing the final model on {} pictures", run.epoch_test_images));
        let summary = run.trainer.finish(&mut self.gpu, &mut run.host, run.stopped_early).await?;
        let mut bytes = run
            .host
            .files
            .remove(Path::new(MODEL_FILE))
            .ok_or_else(|| Error::Config("the trainer saved no model".into()))?;
        let mut lines = std::mem::take(&mut run.host.lines);
        let sampled = summary.final_test.clone();
        let mut test = sampled.clone();
        if let Some(full) = &run.full_test {
            gpu_train::progress::stage(&format!("testing the final model on all {} test pictures", full.len()));
            let loaded = modelfile::decode(&bytes, Path::new(MODEL_FILE), None)?;
            let mut net = Network::new(&mut self.gpu, loaded.arch.clone(), EVAL_BATCH, &loaded.params, &loaded.state)?;
            let dev = DeviceData::upload(&mut self.gpu, full)?;
            test = net.evaluate(&mut self.gpu, &dev).await?;
            test.scores = Vec::new();
            bytes = with_test_figures(loaded, &test)?;
            lines.push(format!(
                "test (all {} pictures): accuracy {:.2}%, loss {:.4} (the epochs' sample of {}: {:.2}%)",
                test.count,
                100.0 * test.accuracy(),
                test.loss,
                sampled.count,
                100.0 * sampled.accuracy()
            ));
        }
        gpu_train::progress::clear();
        self.history = (run.loss_points, run.reports);
        self.use_model(bytes, MODEL_FILE)?;
        Ok(Finished {
            lines,
            epochs_run: summary.epochs_run,
            test_accuracy: test.accuracy(),
            test_loss: test.loss,
            test_images: test.count,
            epoch_test_accuracy: sampled.accuracy(),
            epoch_test_images: sampled.count,
            train_loss,
            seconds: summary.seconds,
            seconds_per_step,
            stopped_early: summary.stopped_early,
            profile,
        })
    }

    /// The time an epoch of the model `o` asks for takes on this adapter, measured: one step
    /// of a batch of the loaded data untimed (pipelines are built on first use), then steps
    /// timed until about a second has passed (at most three), and a test of that batch.
    pub async fn estimate(&mut self, o: &RunOptions) -> Result<Estimate> {
        if self.run.is_some() {
            return Err(Error::Config("a run is in progress".into()));
        }
        let (spec, _) = self.spec(o)?;
        let arch = Arch::new(spec)?;
        let seed = o.seed.unwrap_or(1);
        let splits = self.splits(arch.spec.input, seed, o)?;
        let train_len = o.limit.map_or(splits.train.len(), |n| n.min(splits.train.len()));
        let batch = arch.recipe().batch.min(train_len.max(1));
        let one = splits.train.take(batch);
        gpu_train::train::check_data(&arch, &one, "training")?;
        let members = gpu_train::network::Members::one(arch.clone(), seed);
        let (params, state) = members.init();
        let mut net = Network::array(&mut self.gpu, members, batch, &params, &state)?;
        let dev = DeviceData::upload(&mut self.gpu, &one)?;
        let mut stats = gpu_train::backend::Backend::alloc(&mut self.gpu, 2)?;
        let args = gpu_train::network::StepArgs {
            start: 0,
            n: batch,
            slot: 0,
            global_step: 0,
            epoch: 1,
            row: 0,
            data_seed: seed,
            augment: arch.recipe().augment,
        };
        gpu_train::progress::stage("measuring the time per epoch");
        gpu_train::progress::set("steps", 0, 4);
        net.train_step(&mut self.gpu, &dev, &dev.order, &mut stats, &args);
        sync(&mut self.gpu, &stats).await?;
        let clock = Instant::now();
        let mut timed = 0;
        while timed < 3 && (timed == 0 || clock.elapsed().as_secs_f64() < 1.0) {
            net.train_step(&mut self.gpu, &dev, &dev.order, &mut stats, &args);
            sync(&mut self.gpu, &stats).await?;
            timed += 1;
            gpu_train::progress::set("steps", timed + 1, 4);
        }
        let per_step = clock.elapsed().as_secs_f64() / timed as f64;
        let clock = Instant::now();
        net.evaluate(&mut self.gpu, &dev).await?;
        let per_picture = clock.elapsed().as_secs_f64() / one.len().max(1) as f64;
        gpu_train::progress::clear();
        let steps = train_len.div_ceil(batch.max(1));
        let test_seconds = per_picture * splits.test.len().min(EPOCH_TEST) as f64;
        Ok(Estimate {
            arch: arch.name().to_string(),
            seconds_per_step: per_step,
            steps_per_epoch: steps,
            train_seconds: per_step * steps as f64,
            test_seconds,
            seconds_per_epoch: per_step * steps as f64 + test_seconds,
            timed_steps: timed,
            batch,
        })
    }

    /// A model file's bytes (safetensors, as `gpu-train` saves them) to predict with, test or
    /// train on. Returns a line describing it.
    pub fn load_model(&mut self, bytes: Vec<u8>, name: &str) -> Result<String> {
        self.use_model(bytes, name)?;
        let m = self.model.as_ref().expect("just set");
        let metrics = m.loaded.metrics();
        let acc = metrics
            .as_ref()
            .and_then(|v| v.get("test_accuracy")?.as_f64())
            .map(|a| format!(", test accuracy {:.2}% when saved", 100.0 * a))
            .unwrap_or_default();
        Ok(format!(
            "{name}: {} ({} parameters, input {:?}, {} classes){acc}",
            m.loaded.arch.name(),
            m.loaded.arch.param_count(),
            m.loaded.arch.spec.input,
            m.loaded.arch.classes()
        ))
    }

    fn use_model(&mut self, bytes: Vec<u8>, name: &str) -> Result<()> {
        let loaded = modelfile::decode(&bytes, Path::new(name), None)?;
        let net = Network::new(&mut self.gpu, loaded.arch.clone(), EVAL_BATCH, &loaded.params, &loaded.state)?;
        self.model = Some(Ready { loaded, net, bytes, name: name.into() });
        Ok(())
    }

    /// The model to download: the finished or loaded one, or, during a run, its weights now.
    pub async fn model_bytes(&mut self) -> Result<(String, Vec<u8>)> {
        if let Some(run) = self.run.as_mut() {
            let net = run.trainer.network();
            let (p, s) = net.kept_params(&mut self.gpu).await?;
            let arch = net.arch.clone();
            let mut meta = HashMap::new();
            run.info.record(&mut meta);
            let bytes = modelfile::encode(Path::new(MODEL_FILE), &arch, &p, &s, meta, None)?;
            return Ok((MODEL_FILE.into(), bytes));
        }
        let m = self.model.as_ref().ok_or_else(|| Error::Config("no model yet: train or load one".into()))?;
        Ok((m.name.clone(), m.bytes.clone()))
    }

    /// The model's test accuracy and loss on the loaded data's test split.
    pub async fn evaluate(&mut self) -> Result<(f64, f64, usize)> {
        let shape = self.model.as_ref().ok_or_else(|| Error::Config("no model to test".into()))?.loaded.arch.spec.input;
        let o = RunOptions::default();
        let splits = self.splits(shape, 1, &o)?;
        let m = self.model.as_mut().expect("checked above");
        let classes = m.loaded.arch.classes();
        if let Some(l) = splits.test.max_label().filter(|&l| l as usize >= classes) {
            return Err(Error::Data(format!("label {l} is out of range for a model with {classes} outputs")));
        }
        let dev = DeviceData::upload(&mut self.gpu, &splits.test)?;
        let r = m.net.evaluate_kept(&mut self.gpu, &dev, false, &[true]).await?;
        let e = &r.members[0];
        Ok((e.accuracy(), e.loss, e.count))
    }

    /// The top `top` classes for a picture (RGBA, `w` x `h`), under the running model during
    /// a run, else the finished or loaded one. Digit models get MNIST's preparation (an
    /// opaque picture: alpha is dropped, as `gpu-train predict` drops it).
    pub async fn predict(&mut self, rgba: &[u8], w: usize, h: usize, top: usize) -> Result<Vec<Guess>> {
        if w == 0 || h == 0 || rgba.len() != w * h * 4 {
            return Err(Error::Config(format!(
                "a picture of {w}x{h} needs {} RGBA bytes, got {}",
                w * h * 4,
                rgba.len()
            )));
        }
        let (net, info, names) = match (self.run.as_mut(), self.model.as_mut()) {
            (Some(run), _) => {
                let names = run.info.classes.clone();
                (run.trainer.network(), Some(run.info.clone()), names)
            }
            (None, Some(m)) => {
                let info = DataInfo::recorded(&m.loaded.metadata);
                (&mut m.net, info, m.loaded.class_names())
            }
            (None, None) => return Err(Error::Config("no model yet: train or load one".into())),
        };
        let shape = net.arch.spec.input;
        let img = image::RgbaImage::from_raw(w as u32, h as u32, rgba.to_vec())
            .map(image::DynamicImage::ImageRgba8)
            .ok_or_else(|| Error::Config("bad picture".into()))?;
        let pixels = match Prep::for_model(shape, info.as_ref()) {
            Prep::Plain => {
                let resize = info.as_ref().and_then(|i| i.resize).unwrap_or_default();
                folder::to_input(&img, shape, resize)
            }
            // As `gpu-train predict` prepares a picture file: grayscale by the image crate.
            _ => predict::mnist_like(w, h, img.to_luma8().as_raw(), shape[1], false),
        };
        let ds = Dataset {
            images: pixels,
            labels: vec![0],
            channels: shape[0],
            height: shape[1],
            width: shape[2],
            classes: names.clone(),
        };
        let dev = DeviceData::upload(&mut self.gpu, &ds)?;
        let r = net.evaluate_kept(&mut self.gpu, &dev, true, &[true]).await?;
        let scores = &r.members[0].scores;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        Ok(order
            .into_iter()
            .take(top)
            .map(|c| Guess {
                class: c,
                name: names.get(c).cloned().unwrap_or_else(|| c.to_string()),
                probability: scores[c],
            })
            .collect())
    }

    /// The run's curves as SVG: (loss, accuracy). The running training loss at every chunk,
    /// each epoch's training and test figures.
    pub fn charts(&self, width: u32, height: u32) -> Result<(String, String)> {
        let (points, reports) = match &self.run {
            Some(r) => (&r.loss_points, &r.reports),
            None => (&self.history.0, &self.history.1),
        };
        let each = |f: &dyn Fn(&EpochReport) -> f64| -> Vec<(f64, f64)> {
            reports.iter().map(|r| (r.epoch as f64, f(r))).collect()
        };
        let series = |label: &str, points: Vec<(f64, f64)>, color: usize, stroke: Stroke| Series {
            label: Some(label.into()),
            points,
            color: plot::palette(color),
            stroke,
        };
        let mut loss = LineChart::new("Loss", "epoch", "loss (log scale)");
        loss.y_log = true;
        loss.size = (width, height);
        loss.series = vec![
            series("training, running", points.clone(), 0, Stroke::Faint),
            series("training, per epoch", each(&|r| r.train_loss), 0, Stroke::Bold),
            series("test", each(&|r| r.test_loss), 1, Stroke::Bold),
        ];
        let mut acc = LineChart::new("Accuracy", "epoch", "accuracy (%)");
        acc.size = (width, height);
        acc.series = vec![
            series("training", each(&|r| 100.0 * r.train_acc), 0, Stroke::Bold),
            series("test", each(&|r| 100.0 * r.test_acc), 1, Stroke::Bold),
        ];
        let draw =
            |c: &LineChart| plot::line_chart(c).map_err(|e| Error::Config(format!("cannot draw {}: {e}", c.title)));
        Ok((draw(&loss)?, draw(&acc)?))
    }

    /// Every preset: (name, its model file's text).
    pub fn presets() -> Vec<(&'static str, &'static str)> {
        presets::PRESETS.iter().map(|p| (p.name, p.source)).collect()
    }
}
