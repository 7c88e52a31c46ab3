//! The `gpu-train` command line: train (the default), eval, predict, export, bench, presets,
//! devices, selftest. Errors end as one line on stderr and a non-zero exit.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use gpu_train::backend::Backend;
use gpu_train::cpu::CpuBackend;
use gpu_train::data::{self, Dataset, DatasetKind};
use gpu_train::evaluate;
use gpu_train::export;
use gpu_train::gpu::{GpuBackend, device};
use gpu_train::model::{Arch, presets};
use gpu_train::modelfile::{self, Loaded};
use gpu_train::network::{DeviceData, Network};
use gpu_train::{bench, predict, train};

#[derive(Parser)]
#[command(
    name = "gpu-train",
    version,
    about = "Train small image classifiers (MLPs, CNNs) on any GPU through WGSL compute shaders, or on the CPU",
    long_about = "Train small image classifiers (MLPs, CNNs) on any GPU through WGSL compute shaders, or on the CPU.\n\n\
                  `gpu-train --arch cnn4` trains seed B's best model on the shipped MNIST data; `gpu-train presets` lists \
                  the built-in architectures.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a model (the default command)
    Train(TrainArgs),
    /// Evaluate saved models on the test set (several models: their ensemble too)
    Eval(EvalArgs),
    /// Classify image files with a saved model
    Predict(PredictArgs),
    /// Write a saved model as ONNX (opset 13), for onnxruntime, OpenCV, TensorRT, browsers
    Export(ExportArgs),
    /// Time training steps and print one JSON line
    Bench(BenchArgs),
    /// List the built-in architectures, or print one as a model file
    Presets {
        /// Print this preset's model file (TOML), to copy and edit
        name: Option<String>,
    },
    /// List the GPU adapters wgpu can see
    Devices,
    /// Check every GPU kernel against the CPU reference on this machine's adapter
    Selftest(SelftestArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum BackendChoice {
    /// A real GPU if there is one, else the CPU
    Auto,
    Cpu,
    Gpu,
}

#[derive(Args, Clone)]
struct DeviceArgs {
    /// Where to compute
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// GPU adapter index (see `gpu-train devices`)
    #[arg(long)]
    adapter: Option<usize>,
    /// CPU threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Directory with the four IDX files (train-images-idx3-ubyte[.gz], ...)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Which standard data set, when --data-dir is not given
    #[arg(long, value_enum, default_value_t = DatasetKind::Mnist)]
    dataset: DatasetKind,
}

impl DataArgs {
    fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| self.dataset.default_dir())
    }

    fn load(&self) -> Result<(Dataset, Dataset)> {
        let dir = self.dir();
        let hint = if self.data_dir.is_none() && self.dataset == DatasetKind::FashionMnist {
            " (install Debian's dataset-fashion-mnist, or pass --data-dir)"
        } else {
            ""
        };
        data::load_dir(&dir).with_context(|| format!("cannot load the data set{hint}"))
    }
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// Architecture: a preset (`gpu-train presets`) or a model file (.toml)
    #[arg(long, required = true)]
    arch: Option<String>,
    /// Epochs (default: the recipe's)
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (default: the recipe's)
    #[arg(long)]
    batch: Option<usize>,
    /// Base learning rate (default: the recipe's)
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Keep an exponential moving average of the weights with this decay per step (e.g.
    /// 0.999), evaluate it and save it (default: the recipe's, usually none)
    #[arg(long, value_name = "DECAY", allow_negative_numbers = true)]
    ema: Option<f32>,
    /// Seed for initialisation, shuffling, dropout and augmentation
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Train on the first N training images only
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Model file to write (default: runs/<arch>.safetensors); a checkpoint goes beside it
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run whose checkpoint is beside --out (runs/<arch>.ckpt.safetensors)
    #[arg(long)]
    resume: bool,
    /// Continue from this checkpoint file instead
    #[arg(long, value_name = "CHECKPOINT")]
    resume_from: Option<PathBuf>,
    /// Do not write a checkpoint after each epoch
    #[arg(long)]
    no_checkpoint: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Model file(s); with several, their ensemble (averaged probabilities) is scored too
    #[arg(long = "model", required = true, value_name = "FILE")]
    models: Vec<PathBuf>,
    /// Architecture of files that do not record one (e.g. saved from PyTorch)
    #[arg(long)]
    arch: Option<String>,
    /// Print only the summary, without the confusion matrix
    #[arg(long)]
    brief: bool,
    /// Test-time augmentation: score each model on every image and its four one-pixel shifts
    /// and average the five (takes 5x as long)
    #[arg(long)]
    tta: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct PredictArgs {
    /// Model file
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Architecture, for files that do not record one
    #[arg(long)]
    arch: Option<String>,
    /// Image files (PNG, JPEG, BMP)
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Only grayscale, invert if needed and resize: no cropping or centring
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct ExportArgs {
    /// Model file (safetensors)
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// ONNX file to write
    #[arg(long, value_name = "OUT")]
    onnx: PathBuf,
    /// Output class probabilities (a final softmax) instead of logits
    #[arg(long)]
    softmax: bool,
    /// Architecture, for files that do not record one
    #[arg(long)]
    arch: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// Architecture: a preset or a model file
    #[arg(long, default_value = "cnn4")]
    arch: String,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed steps (after the warm-up)
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Untimed steps first
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Include the recipe's data augmentation
    #[arg(long)]
    augment: bool,
    /// GPU: also report the time of each kernel (timestamp queries)
    #[arg(long)]
    profile: bool,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct SelftestArgs {
    /// GPU adapter index (see `gpu-train devices`)
    #[arg(long)]
    adapter: Option<usize>,
    /// Only the cases whose family contains this (e.g. conv2d)
    filter: Option<String>,
}

fn main() -> ExitCode {
    // Mesa's Vulkan device-select layer only reorders adapters (we rank them ourselves) and,
    // on a machine without a display, prints XDG_RUNTIME_DIR complaints: switch it off.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: the process is still single-threaded here.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
    // Like any Unix filter: `gpu-train presets | head` ends quietly when the reader closes the
    // pipe, instead of panicking in println! on the broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version print as usual; a usage error becomes one line (clap's message without
/// its usage block), exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.render().to_string();
    let msg: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let msg = msg.join(" ");
    eprintln!("{} (see gpu-train --help)", msg.trim_end_matches('.'));
    ExitCode::from(2)
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        None => cmd_train(cli.train),
        Some(Cmd::Train(a)) => cmd_train(a),
        Some(Cmd::Eval(a)) => cmd_eval(a),
        Some(Cmd::Predict(a)) => cmd_predict(a),
        Some(Cmd::Export(a)) => cmd_export(a),
        Some(Cmd::Bench(a)) => cmd_bench(a),
        Some(Cmd::Presets { name }) => cmd_presets(name),
        Some(Cmd::Devices) => cmd_devices(),
        Some(Cmd::Selftest(a)) => cmd_selftest(a),
    }
}

/// Sets up the CPU thread pool (once per process).
fn init_threads(threads: Option<usize>) -> Result<()> {
    if let Some(t) = threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| anyhow!("cannot start {t} threads: {e}"))?;
    }
    Ok(())
}

/// Which backend a command runs on, after resolving `auto`.
enum Chosen {
    Cpu(CpuBackend),
    Gpu(Box<GpuBackend>),
}

/// `auto`: the best adapter if it is a real GPU; with only a software adapter (llvmpipe,
/// far slower than the CPU backend) or none, the CPU, saying why in one line.
fn choose_backend(d: &DeviceArgs) -> Result<Chosen> {
    init_threads(d.threads)?;
    match d.backend {
        BackendChoice::Cpu => Ok(Chosen::Cpu(CpuBackend::new())),
        BackendChoice::Gpu => Ok(Chosen::Gpu(Box::new(GpuBackend::new(d.adapter)?))),
        BackendChoice::Auto => {
            let adapter = match device::pick(d.adapter) {
                Ok(a) => a,
                Err(e) if d.adapter.is_none() => {
                    eprintln!("note: no GPU adapter found, training on the CPU backend ({e})");
                    return Ok(Chosen::Cpu(CpuBackend::new()));
                }
                Err(e) => return Err(e.into()),
            };
            let info = adapter.get_info();
            if device::is_software(&info) && d.adapter.is_none() {
                eprintln!(
                    "note: the only GPU adapter is a software renderer ({}, {:?}), slower than the CPU backend here; \
                     using the CPU (--backend gpu forces it)",
                    info.name, info.backend
                );
                return Ok(Chosen::Cpu(CpuBackend::new()));
            }
            Ok(Chosen::Gpu(Box::new(GpuBackend::from_adapter(&adapter)?)))
        }
    }
}

/// Runs `$body` with `$b` bound to the chosen backend (generic code, one copy per backend).
macro_rules! with_backend {
    ($chosen:expr, $b:ident => $body:expr) => {
        match $chosen {
            Chosen::Cpu(mut $b) => {
                let $b = &mut $b;
                $body
            }
            Chosen::Gpu(mut $b) => {
                let $b = &mut *$b;
                $body
            }
        }
    };
}

fn backend_label(c: &Chosen) -> &'static str {
    match c {
        Chosen::Cpu(_) => "cpu",
        Chosen::Gpu(_) => "gpu",
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let arch_name = a.arch.clone().ok_or_else(|| anyhow!("--arch is required"))?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{}.safetensors", file_stem(&arch_name))));
    let resume_path = match (&a.resume_from, a.resume) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(modelfile::checkpoint_path(&out)),
        (None, false) => None,
    };
    let resume = match resume_path {
        None => None,
        Some(path) => {
            if !path.exists() {
                bail!(
                    "no checkpoint to resume from at {} (it is written beside --out after each epoch)",
                    path.display()
                );
            }
            let ck = modelfile::load(&path, None).with_context(|| "cannot resume")?;
            if ck.train.is_none() {
                bail!(
                    "{} is a finished model, not a checkpoint; resume from the .ckpt.safetensors file",
                    path.display()
                );
            }
            Some(ck)
        }
    };
    // The spec: the checkpoint's when resuming (only --epochs may change), else the preset.
    let mut spec = match &resume {
        Some(ck) => ck.arch.spec.clone(),
        None => presets::load(&arch_name)?,
    };
    if let Some(e) = a.epochs {
        spec.train.epochs = e;
    }
    if resume.is_none() {
        if let Some(bs) = a.batch {
            spec.train.batch = bs;
        }
        if let Some(lr) = a.lr {
            spec.train.optimizer.set_lr(lr);
        }
        if let Some(d) = a.ema {
            spec.train.ema = Some(d);
        }
    } else if a.batch.is_some() || a.lr.is_some() || a.ema.is_some() {
        eprintln!("note: resuming keeps the checkpoint's batch size, learning rate and weight averaging");
    }
    spec.train.validate().map_err(|e| anyhow!("invalid setting: {e}"))?;
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let arch = Arch::new(spec)?;
    let (train_ds, test_ds) = a.data.load()?;
    let train_ds = match a.limit {
        Some(n) => train_ds.take(n),
        None => train_ds,
    };
    let chosen = choose_backend(&a.device)?;
    let backend = backend_label(&chosen);
    let seed = resume.as_ref().and_then(|c| c.train.as_ref()).map_or(a.seed, |t| t.progress.seed);
    let mut run_info = HashMap::new();
    run_info.insert(
        "run".into(),
        serde_json::json!({ "backend": backend, "seed": seed, "train_images": train_ds.len() }).to_string(),
    );
    with_backend!(chosen, b => {
        let r = arch.recipe();
        println!(
            "gpu-train: {} on {} | {} training / {} test images | {} epochs, batch {}, {} | seed {seed}",
            arch.name(), b.name(), train_ds.len(), test_ds.len(), r.epochs, r.batch,
            describe_optimizer(&r.optimizer),
        );
        print!("{}", arch.summary());
        if let Some(d) = r.ema {
            println!("weight average: decay {d} per step; the test figures and the saved model are the average's");
        }
        if let Some(ck) = &resume {
            let p = &ck.train.as_ref().expect("checked above").progress;
            println!("resuming after epoch {} (step {})", p.epoch, p.global_step);
        }
        let mut info = run_info;
        info.insert("device".into(), b.name());
        let cfg = train::TrainConfig {
            arch: arch.clone(),
            seed,
            out: out.clone(),
            resume,
            progress: std::io::stderr().is_terminal(),
            checkpoints: !a.no_checkpoint,
            run_info: info,
        };
        let s = train::train(b, cfg, train_ds, &test_ds)?;
        println!(
            "done: {} epochs in {:.1}s; test accuracy {:.2}% (error {:.2}%), loss {:.4}; model saved to {}",
            s.epochs_run,
            s.seconds,
            100.0 * s.final_test.accuracy(),
            100.0 * (1.0 - s.final_test.accuracy()),
            s.final_test.loss,
            out.display()
        );
    });
    Ok(())
}

fn describe_optimizer(o: &gpu_train::model::spec::Optimizer) -> String {
    use gpu_train::model::spec::{BiasCorrection, Optimizer};
    match *o {
        Optimizer::Adam { lr, weight_decay, .. } if weight_decay > 0.0 => format!("adamw lr {lr} wd {weight_decay}"),
        Optimizer::Adam { lr, bias_correction: BiasCorrection::Epoch, .. } => {
            format!("adam lr {lr} (bias correction per epoch, as seed B)")
        }
        Optimizer::Adam { lr, .. } => format!("adam lr {lr}"),
        Optimizer::Sgd { lr, momentum } if momentum > 0.0 => format!("sgd lr {lr} momentum {momentum}"),
        Optimizer::Sgd { lr, .. } => format!("sgd lr {lr}"),
    }
}

fn file_stem(arch: &str) -> String {
    Path::new(arch).file_stem().map_or_else(|| arch.to_string(), |s| s.to_string_lossy().into_owned())
}

fn load_model(path: &Path, arch: Option<&str>) -> Result<Loaded> {
    let spec = arch.map(presets::load).transpose()?;
    Ok(modelfile::load(path, spec)?)
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let models = a.models.iter().map(|p| load_model(p, a.arch.as_deref())).collect::<Result<Vec<_>>>()?;
    let (_, test) = a.data.load()?;
    let chosen = choose_backend(&a.device)?;
    with_backend!(chosen, b => {
        let views = if a.tta { format!(", {} views each (--tta)", evaluate::TTA_SHIFTS.len()) } else { String::new() };
        println!("evaluating on {} test images{views} from {} ({})", test.len(), a.data.dir().display(), b.name());
        let mut scored = Vec::new();
        for (m, path) in models.iter().zip(&a.models) {
            let name = path.display().to_string();
            let s = if a.tta { evaluate::score_tta(b, m, &name, &test)? } else { evaluate::score(b, m, &name, &test)? };
            let acc = s.accuracy(&test.labels);
            let recorded = m.metrics().and_then(|v| v["test_accuracy"].as_f64());
            let rec = recorded.map_or(String::new(), |r| format!(" (recorded at save: {:.2}%)", 100.0 * r));
            println!(
                "{}: {} | accuracy {:.2}%  error {:.2}%  {} loss {:.4}{rec}",
                s.name, m.arch.name(), 100.0 * acc, 100.0 * (1.0 - acc),
                evaluate::loss_name(m.arch.recipe().loss), s.loss,
            );
            scored.push(s);
        }
        let shown = if scored.len() > 1 {
            let e = evaluate::ensemble(&scored, &test.labels)?;
            let acc = e.accuracy(&test.labels);
            println!("{}: accuracy {:.2}%  error {:.2}%  loss {:.4}", e.name, 100.0 * acc, 100.0 * (1.0 - acc), e.loss);
            e
        } else {
            scored.remove(0)
        };
        if !a.brief {
            print!("{}", evaluate::report(&shown, &test.labels));
        }
    });
    Ok(())
}

fn cmd_predict(a: PredictArgs) -> Result<()> {
    let model = load_model(&a.model, a.arch.as_deref())?;
    let [c, h, w] = model.arch.spec.input;
    if c != 1 {
        bail!("predict supports single-channel models; this one takes {c} channels");
    }
    if h != w {
        bail!("predict supports square inputs; this model takes {h}x{w}");
    }
    let mut images = Vec::new();
    for p in &a.images {
        let (iw, ih, px) = predict::load_gray(p)?;
        images.extend(predict::mnist_like(iw, ih, &px, w, a.raw));
    }
    let ds = Dataset { images, labels: vec![0; a.images.len()], height: h, width: w };
    let chosen = choose_backend(&a.device)?;
    with_backend!(chosen, b => {
        let dev = DeviceData::upload(b, &ds)?;
        let mut net = Network::new(b, model.arch.clone(), ds.len(), &model.params, &model.state)?;
        let r = net.evaluate(b, &dev)?;
        let classes = model.arch.classes();
        for (path, scores) in a.images.iter().zip(r.scores.chunks(classes)) {
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
            let top: Vec<String> = order.iter().take(3).map(|&k| format!("{k} ({:.1}%)", 100.0 * scores[k])).collect();
            println!("{}: {}  [top 3: {}]", path.display(), order[0], top.join(", "));
        }
    });
    Ok(())
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    let model = load_model(&a.model, a.arch.as_deref())?;
    let e = export::export(&model, a.softmax)?;
    modelfile::write_atomic(&a.onnx, &e.bytes).context("cannot write the ONNX file")?;
    let [c, h, w] = model.arch.spec.input;
    println!(
        "wrote {}: ONNX opset {}, {} nodes, {:.1} kB; input (N, {c}, {h}, {w}) pixel/255, output {} (N, {})",
        a.onnx.display(),
        export::OPSET,
        e.nodes,
        e.bytes.len() as f64 / 1e3,
        e.output,
        model.arch.classes()
    );
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let arch = Arch::new(presets::load(&a.arch)?)?;
    let (train_ds, _) = a.data.load()?;
    let chosen = choose_backend(&a.device)?;
    let label = backend_label(&chosen);
    let mut r = match chosen {
        Chosen::Cpu(mut c) => {
            if a.profile {
                c.enable_profiling();
            }
            let r = bench::bench(&mut c, label, arch, &train_ds, a.batch, a.steps, a.warmup, a.augment)?;
            let mut v = serde_json::to_value(&r)?;
            if a.profile {
                let report = c.profile_report();
                print_profile("CPU time per training step by op", &report, a.steps + a.warmup, r.seconds_per_step);
                v["op_seconds_per_step"] = per_step(&report, a.steps + a.warmup);
            }
            v
        }
        Chosen::Gpu(mut g) => {
            let compile = g.compile_all()?;
            if a.profile {
                g.enable_profiling()?;
            }
            let r = bench::bench(&mut *g, label, arch, &train_ds, a.batch, a.steps, a.warmup, a.augment)?;
            let mut v = serde_json::to_value(&r)?;
            v["shader_compile_seconds"] = compile.into();
            let peak = g.memory().1;
            v["device_memory_peak_bytes"] = peak.into();
            v["device_memory_over_footprint"] = (peak as f64 / r.footprint.total_bytes as f64).into();
            if a.profile {
                // Warm-up and timed steps are both profiled: report per step over all of them.
                let steps = (a.steps + a.warmup) as f64;
                let report = g.profile_report()?;
                let total: f64 = report.iter().map(|k| k.1).sum();
                eprintln!("GPU time per training step by kernel ({} steps, timestamp queries):", a.steps + a.warmup);
                for (name, secs, n) in &report {
                    eprintln!(
                        "  {name:<32} {:>9.1} us  {:>5.1}%  {:>5.1} dispatches/step",
                        1e6 * secs / steps,
                        100.0 * secs / total,
                        *n as f64 / steps
                    );
                }
                eprintln!(
                    "  {:<32} {:>9.1} us (kernels alone; the step took {:.1} us)",
                    "total",
                    1e6 * total / steps,
                    1e6 * r.seconds_per_step
                );
                v["kernel_seconds_per_step"] = serde_json::Value::Object(
                    report.iter().map(|(k, secs, _)| (k.clone(), (secs / steps).into())).collect(),
                );
            }
            v
        }
    };
    if let Some(o) = r.as_object_mut() {
        o.insert("command".into(), std::env::args().collect::<Vec<_>>().join(" ").into());
    }
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// Warm-up and timed steps are both profiled: times are per step over all of them.
fn print_profile(title: &str, report: &[(String, f64, u64)], steps: usize, step_seconds: f64) {
    let total: f64 = report.iter().map(|k| k.1).sum();
    let steps = steps as f64;
    eprintln!("{title}, {steps} steps:");
    for (name, secs, n) in report {
        eprintln!(
            "  {name:<44} {:>9.1} us  {:>5.1}%  {:>4.1} calls/step",
            1e6 * secs / steps,
            100.0 * secs / total.max(1e-30),
            *n as f64 / steps
        );
    }
    eprintln!(
        "  {:<44} {:>9.1} us (ops alone; a timed step took {:.1} us)",
        "total",
        1e6 * total / steps,
        1e6 * step_seconds
    );
}

fn per_step(report: &[(String, f64, u64)], steps: usize) -> serde_json::Value {
    serde_json::Value::Object(report.iter().map(|(k, secs, _)| (k.clone(), (secs / steps as f64).into())).collect())
}

fn cmd_presets(name: Option<String>) -> Result<()> {
    match name {
        Some(n) => {
            let p = presets::find(&n).ok_or_else(|| {
                anyhow!(gpu_train::Error::UnknownPreset {
                    name: n.clone(),
                    known: presets::PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
                })
            })?;
            print!("{}", p.source);
        }
        None => {
            for p in presets::PRESETS {
                let spec = presets::parse(p.source, p.name)?;
                let alias = p.alias.map_or(String::new(), |a| format!(" ({a})"));
                println!("{:<14} {}", format!("{}{alias}", p.name), spec.description);
            }
        }
    }
    Ok(())
}

fn cmd_devices() -> Result<()> {
    let adapters = device::adapters();
    if adapters.is_empty() {
        println!("no GPU adapters found (on Linux: a Vulkan driver and libvulkan1; WGPU_BACKEND narrows the search)");
        return Ok(());
    }
    for (i, a) in adapters.iter().enumerate() {
        let s = device::summary(i, a);
        let soft = if device::is_software(&a.get_info()) { "  [software]" } else { "" };
        println!("[{}] {} | {} | {}{soft}", s.index, s.name, s.backend, s.device_type);
        println!("    driver: {}", if s.driver.is_empty() { "-" } else { &s.driver });
        println!(
            "    limits: buffer {} MB, storage binding {} MB, {} workgroups per dimension, {} invocations per workgroup, \
             {} KB workgroup memory; timestamp queries: {}",
            s.max_buffer_mb,
            s.max_storage_binding_mb,
            s.max_workgroups_per_dim,
            s.max_invocations_per_workgroup,
            s.max_workgroup_storage_kb,
            if s.timestamps { "yes" } else { "no" }
        );
    }
    if adapters.len() > 1 {
        println!("`--backend gpu` uses [0]; `--adapter N` picks another.");
    }
    Ok(())
}

fn cmd_selftest(a: SelftestArgs) -> Result<()> {
    let mut g = GpuBackend::new(a.adapter)?;
    println!("selftest on {}: every GPU kernel against the CPU reference", g.name());
    let compile = g.compile_all()?;
    println!("built {} pipelines in {compile:.2}s", gpu_train::gpu::shaders::KERNELS.len());
    let results = gpu_train::gpu::selftest::run(&mut g, a.filter.as_deref().unwrap_or(""));
    for r in &results {
        println!("{}", r.line());
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    println!("{} of {} cases passed", results.len() - failed, results.len());
    if failed > 0 {
        bail!("{failed} case(s) failed on {}", g.name());
    }
    Ok(())
}
