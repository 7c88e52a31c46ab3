//! What the commands share: the device and data options, choosing a backend, loading
//! models. One file per command beside this one.

pub mod array;
pub mod bench;
pub mod eval;
pub mod export;
pub mod gather;
pub mod info;
pub mod lrfind;
pub mod predict;
pub mod probe;
pub mod report;
pub mod train;
pub mod tune;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};

use gpu_train::cpu::CpuBackend;
use gpu_train::data::source::{self, LoadOptions, Splits};
use gpu_train::data::{DatasetKind, Resize};
use gpu_train::gpu::{GpuBackend, device};
use gpu_train::model::{Arch, Layer, presets};
use gpu_train::modelfile::{self, Loaded};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum BackendChoice {
    /// A real GPU if there is one, else the CPU
    Auto,
    Cpu,
    Gpu,
}

/// `--precision` of train and bench.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Precision {
    /// f32, until the mixed path has been measured on a GPU with tensor cores (it has not been
    /// run on one yet); `mixed` asks for it explicitly
    Auto,
    /// Every kernel in f32, as always
    F32,
    /// The dense layers' GEMMs on cooperative matrices (tensor cores): f16 operands, f32 sums;
    /// master weights, Adam state and loss stay f32. Needs an adapter that offers them (see
    /// `gpu-train devices`); conv2d layers have no cooperative kernel yet
    Mixed,
}

#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// Where to compute
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// GPU adapter index (see `gpu-train devices`)
    #[arg(long)]
    pub adapter: Option<usize>,
    /// CPU threads (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args, Clone)]
pub struct DataArgs {
    /// A data set: a folder of IDX files, of CIFAR-10/100 binary files, or of pictures, one
    /// folder per class (PATH/train/<class>/ and PATH/test/<class>/, or PATH/<class>/ with
    /// --val-split); Hugging Face Parquet or WebDataset tar shards (a .parquet or .tar file, or
    /// a folder of them, split by their names: train-*, test-*); default: the shipped MNIST
    #[arg(long, value_name = "PATH", conflicts_with_all = ["data_dir", "dataset"])]
    pub data: Option<PathBuf>,
    /// Directory with the four IDX files (train-images-idx3-ubyte[.gz], ...)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Which standard data set, when neither --data nor --data-dir is given
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetKind>,
    /// How pictures of another size are brought to the model's input size
    #[arg(long, value_enum, default_value_t = Resize::Stretch)]
    pub resize: Resize,
    /// With a single folder of classes (or Parquet/WebDataset shards without a test split):
    /// the share of its pictures held out as the test set, drawn with the run's seed
    /// [default: 0.2]
    #[arg(long, value_name = "F")]
    pub val_split: Option<f32>,
    /// Leave out pictures that cannot be decoded (and list them) instead of stopping
    #[arg(long)]
    pub skip_bad: bool,
    /// Neither read nor write the cache of decoded pictures
    #[arg(long)]
    pub no_cache: bool,
    /// Where caches of decoded pictures go [default: a hidden folder in the data folder, or
    /// ~/.cache/gpu-train when that cannot be written]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl DataArgs {
    /// The path the data comes from.
    pub fn path(&self) -> PathBuf {
        self.data
            .clone()
            .or_else(|| self.data_dir.clone())
            .unwrap_or_else(|| self.dataset.unwrap_or(DatasetKind::Mnist).default_dir())
    }

    /// Loads the data set for a model taking `shape` (channels, height, width), printing what
    /// the loader noted on stdout.
    pub fn load(&self, shape: [usize; 3], seed: u64) -> Result<Splits> {
        let s = self.load_quietly(shape, seed)?;
        s.notes.iter().for_each(|n| println!("{n}"));
        Ok(s)
    }

    /// Loads the data set, leaving its notes to the caller.
    pub fn load_quietly(&self, shape: [usize; 3], seed: u64) -> Result<Splits> {
        let o = LoadOptions {
            resize: self.resize,
            val_split: self.val_split,
            seed,
            skip_bad: self.skip_bad,
            cache: !self.no_cache,
            cache_dir: self.cache_dir.clone(),
            progress: std::io::stderr().is_terminal(),
            ..LoadOptions::new(shape)
        };
        if let Some(p) = &self.data {
            return source::load(p, &o).with_context(|| "cannot load the data set");
        }
        // --data-dir and --dataset name IDX files, as before --data existed.
        let dir = self.path();
        let hint = if self.data_dir.is_none() && self.dataset == Some(DatasetKind::FashionMnist) {
            " (install Debian's dataset-fashion-mnist, or pass --data-dir)"
        } else {
            ""
        };
        let (train, test) =
            gpu_train::data::load_dir(&dir).with_context(|| format!("cannot load the data set{hint}"))?;
        let digits = self.dataset != Some(DatasetKind::FashionMnist);
        source::from_idx(train, test, &dir, digits, &o).with_context(|| "cannot load the data set")
    }
}

/// Sets up the CPU thread pool: first thing in a command, before loading data uses it.
pub fn init_threads(threads: Option<usize>) -> Result<()> {
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
pub enum Chosen {
    Cpu(CpuBackend),
    Gpu(Box<GpuBackend>),
}

impl Chosen {
    pub fn label(&self) -> &'static str {
        match self {
            Chosen::Cpu(_) => "cpu",
            Chosen::Gpu(_) => "gpu",
        }
    }
}

/// `auto`: the best adapter if it is a real GPU; with only a software adapter (llvmpipe,
/// far slower than the CPU backend) or none, the CPU, saying why in one line.
pub fn choose_backend(d: &DeviceArgs) -> Result<Chosen> {
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

/// `choose_backend`, or for `--precision mixed` the adapter opened with cooperative matrices,
/// failing in one line where it offers none or the model has layers the cooperative kernel
/// does not cover.
pub fn choose_backend_for(d: &DeviceArgs, precision: Precision, arch: &Arch) -> Result<Chosen> {
    if precision != Precision::Mixed {
        return choose_backend(d);
    }
    if d.backend == BackendChoice::Cpu {
        bail!("--precision mixed runs on a GPU's cooperative matrices; the CPU backend computes in f32");
    }
    let gpu = GpuBackend::open_mixed(&device::pick(d.adapter)?)?;
    if arch.layers.iter().any(|l| matches!(l, Layer::Conv2d(_))) {
        bail!(
            "--precision mixed: {} has conv2d layers, and the conv2d GEMMs have no cooperative-matrix kernel yet \
             (only the dense layers' GEMMs do); use --precision f32",
            arch.name()
        );
    }
    Ok(Chosen::Gpu(Box::new(gpu)))
}

/// Runs `$body` with `$b` bound to the chosen backend (generic code, one copy per backend).
#[macro_export]
macro_rules! with_backend {
    ($chosen:expr, $b:ident => $body:expr) => {
        match $chosen {
            $crate::cli::Chosen::Cpu(mut $b) => {
                let $b = &mut $b;
                $body
            }
            $crate::cli::Chosen::Gpu(mut $b) => {
                let $b = &mut *$b;
                $body
            }
        }
    };
}

pub fn file_stem(arch: &str) -> String {
    Path::new(arch).file_stem().map_or_else(|| arch.to_string(), |s| s.to_string_lossy().into_owned())
}

/// A model file, with `arch` naming the architecture of files that do not record one.
pub fn load_model(path: &Path, arch: Option<&str>) -> Result<Loaded> {
    let spec = arch.map(presets::load).transpose()?;
    Ok(modelfile::load(path, spec)?)
}

/// `--kernels` and `--tune-budget` of train and bench: which GPU kernel each layer shape
/// runs (`gpu_train::gpu::tune`).
#[derive(Args, Clone)]
pub struct KernelArgs {
    /// GPU kernels per layer shape: `tuned` (timed on this device before the first step,
    /// cached), `default` (one tiling everywhere), or FILE to repeat a run's kernels exactly
    /// (a model file that recorded them, or `gpu-train tune --save`'s JSON)
    #[arg(long, value_name = "tuned|default|FILE", default_value = "tuned")]
    pub kernels: String,
    /// Seconds tuning may spend timing kernels; shapes left when it runs out keep the default
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub tune_budget: f64,
}

impl KernelArgs {
    /// Sets the kernels of every op shape of `members` at `batch` on `g` as asked, prints what
    /// was chosen, and returns the kernel set for the run's record (JSON).
    pub fn prepare(
        &self,
        g: &mut GpuBackend,
        members: &gpu_train::network::Members,
        data: &gpu_train::data::Dataset,
        batch: usize,
        say: &dyn Fn(&str),
    ) -> Result<String> {
        use gpu_train::gpu::tune::{self, KernelSet, Kernels, TuneOptions};
        let kernels: Kernels = self.kernels.parse().map_err(|e: String| anyhow!(e))?;
        let set = match kernels {
            Kernels::Default => {
                g.clear_choices();
                say("kernels: the default tiling for every layer (--kernels default)");
                tune::defaults(g)
            }
            Kernels::File(path) => {
                let set = KernelSet::read(&path).with_context(|| "--kernels")?;
                for n in tune::apply(g, &set)? {
                    eprintln!("{n}");
                }
                say(&format!("kernels: {} op shape(s) as chosen in {}", set.choices.len(), path.display()));
                tune::from_file(set, &path)
            }
            Kernels::Tuned => {
                if !(self.tune_budget >= 0.0 && self.tune_budget.is_finite()) {
                    bail!("--tune-budget must be a number of seconds, at least 0");
                }
                let o = TuneOptions {
                    budget: std::time::Duration::from_secs_f64(self.tune_budget),
                    ..TuneOptions::default()
                };
                let r = pollster::block_on(tune::tune(g, members, data, batch, &o))
                    .with_context(|| "tuning the kernels")?;
                say(&r.line());
                r.set
            }
        };
        Ok(set.to_json())
    }
}
