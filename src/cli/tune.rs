//! `gpu-train tune`: fills the kernel cache for a model and batch ahead of time (what `train`
//! and `bench` otherwise do before their first step), and with `--save` writes the chosen
//! kernels as a file `--kernels FILE` repeats.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::array::ArrayArgs;
use super::{BackendChoice, Chosen, DeviceArgs, choose_backend};
use gpu_train::gpu::tune::{self, TuneOptions};
use gpu_train::model::{Arch, presets};
use gpu_train::network::Members;

#[derive(Args)]
pub struct TuneArgs {
    /// Architecture: a preset (`gpu-train presets`) or a model file (.toml)
    #[arg(long)]
    arch: String,
    /// Batch size (default: the recipe's)
    #[arg(long)]
    batch: Option<usize>,
    #[command(flatten)]
    array: ArrayArgs,
    /// GPU adapter index (see `gpu-train devices`)
    #[arg(long)]
    adapter: Option<usize>,
    /// Seconds tuning may spend timing kernels; shapes left when it runs out keep the default
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0)]
    tune_budget: f64,
    /// Time every shape anew, replacing what the cache holds for this device
    #[arg(long)]
    fresh: bool,
    /// Also write the chosen kernels to this JSON file (for `--kernels FILE`)
    #[arg(long, value_name = "FILE.json")]
    save: Option<PathBuf>,
}

pub fn run(a: TuneArgs) -> Result<()> {
    if !(a.tune_budget >= 0.0 && a.tune_budget.is_finite()) {
        bail!("--tune-budget must be a number of seconds, at least 0");
    }
    let arch = Arch::new(presets::load(&a.arch)?)?;
    let batch = a.batch.unwrap_or(arch.recipe().batch);
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let plan = a.array.plan(&arch.spec, 1)?;
    let members = Members::new(plan.members)?;
    let device = DeviceArgs { backend: BackendChoice::Gpu, adapter: a.adapter, threads: None };
    let Chosen::Gpu(mut g) = choose_backend(&device)? else { bail!("tune needs a GPU adapter") };
    let data = super::bench::synthetic(arch.spec.input, arch.classes(), batch);
    let compile = g.compile_all()?;
    let cache = tune::default_cache();
    let o = TuneOptions { budget: Duration::from_secs_f64(a.tune_budget), cache: cache.clone(), fresh: a.fresh };
    println!(
        "tuning {} at batch {batch}{} on {} (pipelines built in {compile:.2}s)",
        arch.name(),
        if members.len() > 1 { format!(", {} members", members.len()) } else { String::new() },
        g.adapter_info().name
    );
    let r = pollster::block_on(tune::tune(&mut g, &members, &data, batch, &o)).context("tuning the kernels")?;
    println!("{}", r.line());
    for (c, how) in r.set.choices.iter().zip(&r.how) {
        let times = match (c.seconds, c.default_seconds) {
            (Some(s), Some(d)) => format!("{:>9.1} us (default {:>9.1} us, {:.2}x), {how}", 1e6 * s, 1e6 * d, s / d),
            _ => how.to_string(),
        };
        println!("  {:<36} {:<16} {times}", tune::describe(&c.key), c.choice.name());
    }
    match &cache {
        Some(p) => println!("cache: {}", p.display()),
        None => println!("cache: none (set GPU_TRAIN_KERNEL_CACHE or HOME)"),
    }
    if let Some(path) = &a.save {
        let text = serde_json::to_string_pretty(&r.set)?;
        gpu_train::modelfile::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {} (use it with --kernels {})", path.display(), path.display());
    }
    Ok(())
}
