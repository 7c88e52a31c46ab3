//! What the page does, apart from the page: a data set held in memory, a training run driven a
//! chunk of steps at a time, a finished or loaded model to predict with, and the pictures of
//! the run. Nothing here is browser-specific (the GPU is whatever `GpuBackend` was opened), so
//! the same session also runs natively; `lib.rs` binds it to JavaScript.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gpu_train::data::source::{self, LoadOptions, Splits};
use gpu_train::data::{DataInfo, Dataset, Resize, folder, idx};
use gpu_train::gpu::GpuBackend;
use gpu_train::model::{Arch, ModelSpec, presets};
use gpu_train::modelfile::{self, Loaded};
use gpu_train::network::{DeviceData, Network};
use gpu_train::plot::{self, LineChart, Series, Stroke};
use gpu_train::predict::{self, Prep};
use gpu_train::train::{EVAL_BATCH, EpochReport, Host, TrainConfig, Trainer};
use gpu_train::{Error, Result};
use serde::{Deserialize, Serialize};
use web_time::Instant;

/// The file name a model trained in the page is saved (and downloaded) as.
pub const MODEL_FILE: &str = "model.safetensors";

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
}

/// A run's start, for the page.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    /// The model's name (its file's `name`).
    pub arch: String,
    pub train_images: usize,
    pub test_images: usize,
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
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub train_loss: Option<f64>,
    pub seconds: f64,
    pub stopped_early: bool,
    /// Lines to show (a restored best epoch, say).
    pub lines: Vec<String>,
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
}

impl Session {
    pub fn new(gpu: GpuBackend) -> Session {
        Session { gpu, data: None, run: None, model: None, history: (Vec::new(), Vec::new()) }
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
        let mut host = PageHost::default();
        let train_len = train.len();
        let trainer = Trainer::new(&mut self.gpu, &mut host, cfg, train, &splits.test).await?;
        lines.append(&mut host.lines);
        let started = Started { arch: arch_name, train_images: train_len, test_images: splits.test.len(), lines };
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
        });
        Ok(started)
    }

    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// Records the next chunk of steps (starting an epoch if none is in progress) and reads
    /// the running figures back; at an epoch's end tests the model, and at the run's end
    /// saves it (ready to download and predict with).
    pub async fn step(&mut self) -> Result<StepReport> {
        let run = self.run.as_mut().ok_or_else(|| Error::Config("no run in progress (start one)".into()))?;
        let t = &mut run.trainer;
        if t.position().is_none() {
            let next = t.epochs_done();
            t.begin_epoch(&mut self.gpu, next)?;
        }
        let ended = t.run_chunk(&mut self.gpu)?;
        let (index, step, steps) = t.position().unwrap_or((0, 0, 1));
        let figures = t.running_figures(&mut self.gpu).await?;
        let (loss, acc) = figures.first().copied().unwrap_or((f64::NAN, 0.0));
        let elapsed = run.started.elapsed().as_secs_f64().max(1e-9);
        let seen = (step * run.batch).min(run.train_len);
        let mut report = StepReport {
            epoch: index + 1,
            epochs: t.epochs_total(),
            step,
            steps,
            running_loss: loss,
            running_acc: acc,
            images_per_second: seen as f64 / elapsed,
            epoch_report: None,
            finished: None,
            lines: Vec::new(),
        };
        run.loss_points.push((index as f64 + step as f64 / steps as f64, loss));
        if ended {
            let figures = t.end_epoch(&mut self.gpu).await?;
            let reports = t.evaluate(&mut self.gpu, &mut run.host, figures).await?;
            let stop = t.early_stop(&mut self.gpu, &mut run.host, &reports).await?;
            report.epoch_report = reports.members.first().cloned().flatten();
            if let Some(r) = &report.epoch_report {
                run.reports.push(r.clone());
            }
            run.started = Instant::now();
            run.stopped_early = stop;
            if stop || t.epochs_done() >= t.epochs_total() {
                report.lines.append(&mut run.host.lines);
                report.finished = Some(self.finish().await?);
                return Ok(report);
            }
        }
        report.lines.append(&mut run.host.lines);
        Ok(report)
    }

    /// Ends the run now (mid-epoch: with the weights as they are), saves the model and makes
    /// it the one to predict with.
    pub async fn finish(&mut self) -> Result<Finished> {
        let mut run = self.run.take().ok_or_else(|| Error::Config("no run in progress".into()))?;
        let train_loss = run.reports.last().map(|r| r.train_loss);
        let summary = run.trainer.finish(&mut self.gpu, &mut run.host, run.stopped_early).await?;
        let bytes = run
            .host
            .files
            .remove(Path::new(MODEL_FILE))
            .ok_or_else(|| Error::Config("the trainer saved no model".into()))?;
        self.history = (run.loss_points, run.reports);
        self.use_model(bytes, MODEL_FILE)?;
        Ok(Finished {
            lines: std::mem::take(&mut run.host.lines),
            epochs_run: summary.epochs_run,
            test_accuracy: summary.final_test.accuracy(),
            test_loss: summary.final_test.loss,
            train_loss,
            seconds: summary.seconds,
            stopped_early: summary.stopped_early,
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
