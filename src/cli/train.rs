//! `gpu-train train` (the default command).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use super::array::ArrayArgs;
use super::{Chosen, DataArgs, DeviceArgs, KernelArgs, Precision, choose_backend_for, file_stem};
use gpu_train::backend::Backend;
use gpu_train::model::spec::{BiasCorrection, Optimizer};
use gpu_train::model::{Arch, presets};
use gpu_train::modelfile::{self, Status};
use gpu_train::network::Member;
use gpu_train::train;

#[derive(Args, Clone)]
pub struct TrainArgs {
    /// Architecture: a preset (`gpu-train presets`) or a model file (.toml)
    #[arg(long, required = true)]
    pub arch: Option<String>,
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
    /// Seed for initialisation, shuffling, dropout, augmentation and --val-split
    #[arg(long, default_value_t = 1, conflicts_with = "seeds")]
    seed: u64,
    #[command(flatten)]
    array: ArrayArgs,
    /// Train on the first N training images only
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Model file to write (default: runs/<arch>.safetensors); a checkpoint goes beside it.
    /// An array (--seeds, --sweep) writes one file per member beside it, named from it
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
    /// Also write TensorBoard event files under DIR: a folder per run (the model file's name;
    /// an array: one per member, with its seed and swept values for the HPARAMS tab, and the
    /// ensemble), each epoch's figures and the training loss per step, as they happen
    #[arg(long, value_name = "DIR")]
    tensorboard: Option<PathBuf>,
    /// Keep the training set in host memory and copy each stretch of batches to the GPU as
    /// training reaches it, for data sets larger than the GPU's memory (chosen on its own
    /// when uploading the training set runs out of device memory)
    #[arg(long)]
    stream: bool,
    /// Arithmetic of the GEMMs: f32, mixed (cooperative matrices; `gpu-train devices`) or auto (f32 for now)
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    precision: Precision,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    kernels: KernelArgs,
    #[command(flatten)]
    data: DataArgs,
}

pub fn run(a: TrainArgs) -> Result<()> {
    super::init_threads(a.device.threads)?;
    let arch_name = a.arch.clone().ok_or_else(|| anyhow!("--arch is required"))?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{}.safetensors", file_stem(&arch_name))));
    // A part of a sweep (--shard) keeps its checkpoint under the part's name.
    let array_out = match &a.array.shard {
        Some(s) => {
            let (i, n, _) = super::array::parse_shard(s, &|k| std::env::var(k).ok())?;
            train::shard::part_out(&out, i, n)
        }
        None => out.clone(),
    };
    let resume_path = match (&a.resume_from, a.resume) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(modelfile::checkpoint_path(&array_out)),
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
    // Who trains: the checkpoint's members when resuming, else --seed, or --seeds and --sweep.
    let ts = resume.as_ref().and_then(|c| c.train.as_ref());
    let plan = match ts {
        Some(ts) => {
            if a.array.is_array() && a.array.shard.is_none() {
                eprintln!("note: resuming keeps the checkpoint's members (--seeds and --sweep are not used)");
            }
            let data_seed = ts.progress.data_seed.unwrap_or(ts.progress.seed);
            let (members, tags) = match &ts.array {
                Some(st) => st
                    .members
                    .iter()
                    .map(|m| {
                        let mut spec = m.spec.clone();
                        spec.train.epochs = arch.recipe().epochs;
                        (Member { seed: m.seed, spec }, m.tags.clone())
                    })
                    .unzip(),
                None => (vec![Member { seed: ts.progress.seed, spec: arch.spec.clone() }], vec![Vec::new()]),
            };
            // A part of a sweep: the whole sweep from --seeds and --sweep, which must give
            // this part the checkpoint's members.
            let shard = match &a.array.shard {
                Some(_) => {
                    let whole = a.array.plan(&arch.spec, a.seed)?;
                    let same = whole.members.iter().map(|m| m.seed).eq(members.iter().map(|m: &Member| m.seed))
                        && whole.tags == tags
                        && whole.data_seed == data_seed;
                    if !same {
                        bail!(
                            "the checkpoint's members are not this part of the sweep that --seeds, --sweep, --data-seed and --shard give; resume with the command that started it"
                        );
                    }
                    whole.shard
                }
                None => None,
            };
            super::array::Plan { members, tags, array: ts.array.is_some(), data_seed, shard }
        }
        None => a.array.plan(&arch.spec, a.seed)?,
    };
    let seed = plan.data_seed;
    let splits = a.data.load(arch.spec.input, seed)?;
    let (train_ds, test_ds) = match a.limit {
        Some(n) => (splits.train.take(n), splits.test),
        None => (splits.train, splits.test),
    };
    train::check_data(&arch, &train_ds, "training")?;
    train::check_data(&arch, &test_ds, "test")?;
    let mut chosen = choose_backend_for(&a.device, a.precision, &arch)?;
    let coop = match &chosen {
        Chosen::Gpu(g) => g.coop_config(),
        Chosen::Cpu(_) => None,
    };
    // Every GPU pipeline is built before the first step, so training time is training alone.
    let mut compile_seconds = None;
    if let Chosen::Gpu(g) = &mut chosen {
        let t = g.compile_all()?;
        println!(
            "built {} GPU pipelines in {t:.2}s (not counted as training time)",
            gpu_train::gpu::shaders::KERNELS.len()
        );
        compile_seconds = Some(t);
    }
    // Each layer shape's kernel: tuned on this device (cached), the default, or a file's.
    let mut kernels = None;
    if let Chosen::Gpu(g) = &mut chosen {
        let members = gpu_train::network::Members::new(plan.members.clone())?;
        kernels = Some(a.kernels.prepare(g, &members, &train_ds, arch.recipe().batch, &|l| println!("{l}"))?);
    }
    let mut run_info = HashMap::new();
    run_info.insert(
        "run".into(),
        serde_json::json!({
            "backend": chosen.label(), "data_seed": seed, "train_images": train_ds.len(),
            "shader_compile_seconds": compile_seconds,
            "precision": if coop.is_some() { "mixed" } else { "f32" },
            "members": plan.members.len(),
        })
        .to_string(),
    );
    if let Some(k) = kernels {
        run_info.insert("kernels".into(), k);
    }
    let k = plan.members.len();
    let mut distinct: Vec<u64> = Vec::new();
    for m in &plan.members {
        if !distinct.contains(&m.seed) {
            distinct.push(m.seed);
        }
    }
    let seeds = distinct.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    crate::with_backend!(chosen, b => {
        let r = arch.recipe();
        let what = if plan.array { format!("an array of {k} (seeds {seeds}, data seed {seed})") } else { format!("seed {seeds}") };
        println!(
            "gpu-train: {} on {} | {} training / {} test images in {} classes | {} epochs, batch {}, {} | {what}",
            arch.name(), b.name(), train_ds.len(), test_ds.len(), train_ds.classes.len(), r.epochs, r.batch,
            describe_optimizer(&r.optimizer),
        );
        print!("{}", arch.summary());
        if plan.array {
            println!(
                "      trained as one network of {k} members: {} parameters in all; swept: {}",
                arch.param_count() * k,
                describe_sweep(&plan.tags)
            );
        }
        if let Some(c) = coop {
            println!(
                "precision: mixed, the dense layers' GEMMs on {} (f32 sums; master weights, Adam and loss in f32)",
                c.describe()
            );
        }
        if let Some(d) = r.ema {
            println!("weight average: decay {d} per step; the test figures and the saved model are the average's");
        }
        if let Some(ck) = &resume {
            let p = &ck.train.as_ref().expect("checked above").progress;
            println!("resuming after epoch {} (step {})", p.epoch, p.global_step);
        }
        let mut info = run_info;
        info.insert("device".into(), b.name());
        let array = plan.array;
        let part = plan.shard.as_ref().map(|p| (p.index, p.count));
        let cfg = train::TrainConfig {
            members: plan.members,
            tags: plan.tags,
            array,
            data_seed: seed,
            out: out.clone(),
            resume,
            progress: std::io::stderr().is_terminal(),
            checkpoints: !a.no_checkpoint,
            run_info: info,
            data: splits.info.clone(),
            stream: a.stream,
            start_from: None,
            tensorboard: a.tensorboard.clone(),
            shard: plan.shard,
        };
        let s = train::train(b, cfg, train_ds, &test_ds)?;
        if array {
            println!("done: {} epochs in {:.1}s, {k} members:", s.epochs_run, s.seconds);
            for m in &s.members {
                let status = match m.status {
                    Status::Finished => String::new(),
                    st => format!(" ({})", st.name().replace('_', " ")),
                };
                // best_epoch is 0 where no early stopping chose one: the last epoch's weights.
                let best = if m.best_epoch > 0 { format!(", best epoch {}", m.best_epoch) } else { String::new() };
                println!(
                    "  {}  test accuracy {:.2}% (error {:.2}%){best}{status}",
                    m.file.display(),
                    100.0 * m.final_test.accuracy(),
                    100.0 * (1.0 - m.final_test.accuracy()),
                );
            }
            println!(
                "ensemble of {} (probabilities averaged): test accuracy {:.2}% (error {:.2}%); manifest {}",
                s.members.iter().filter(|m| m.status != Status::Diverged).count(),
                100.0 * s.ensemble_test.accuracy(),
                100.0 * (1.0 - s.ensemble_test.accuracy()),
                train::outputs::manifest_path(&array_out).display()
            );
            if let Some((i, n)) = part {
                println!(
                    "this is part {i} of {n} of the sweep: when every part has finished, `gpu-train gather --out {}` writes the whole sweep's manifest",
                    out.display()
                );
            }
        } else {
            println!(
                "done: {} epochs in {:.1}s; test accuracy {:.2}% (error {:.2}%), loss {:.4}; model saved to {}",
                s.epochs_run,
                s.seconds,
                100.0 * s.final_test.accuracy(),
                100.0 * (1.0 - s.final_test.accuracy()),
                s.final_test.loss,
                out.display()
            );
        }
    });
    Ok(())
}

/// The swept keys and their values, as given.
fn describe_sweep(tags: &[Vec<(String, String)>]) -> String {
    let mut keys: Vec<(String, Vec<String>)> = Vec::new();
    for t in tags {
        for (k, v) in t {
            match keys.iter_mut().find(|e| &e.0 == k) {
                Some(e) if !e.1.contains(v) => e.1.push(v.clone()),
                Some(_) => {}
                None => keys.push((k.clone(), vec![v.clone()])),
            }
        }
    }
    if keys.is_empty() {
        return "seeds only".into();
    }
    keys.iter().map(|(k, v)| format!("{k} = {}", v.join(", "))).collect::<Vec<_>>().join("; ")
}

fn describe_optimizer(o: &Optimizer) -> String {
    match *o {
        Optimizer::Adam { lr, weight_decay, .. } if weight_decay > 0.0 => format!("adamw lr {lr} wd {weight_decay}"),
        Optimizer::Adam { lr, bias_correction: BiasCorrection::Epoch, .. } => {
            format!("adam lr {lr} (bias correction per epoch, as seed B)")
        }
        Optimizer::Adam { lr, .. } => format!("adam lr {lr}"),
        Optimizer::Sgd { lr, momentum, nesterov, weight_decay } => {
            let mut s = format!("sgd lr {lr}");
            if momentum > 0.0 {
                s += &format!(" {}momentum {momentum}", if nesterov { "nesterov " } else { "" });
            }
            if weight_decay > 0.0 {
                s += &format!(" wd {weight_decay}");
            }
            s
        }
    }
}
