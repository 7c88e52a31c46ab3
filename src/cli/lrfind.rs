//! `gpu-train lr-find`: the learning-rate range test, its plot and a suggested rate (the last
//! line, `suggested lr: <value>`, for scripts).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use super::{DataArgs, DeviceArgs, choose_backend, file_stem};
use gpu_train::backend::Backend;
use gpu_train::lrfind::{self, Rule, Settings, Stop, short};
use gpu_train::model::{Arch, presets};
use gpu_train::plot;

#[derive(Args)]
pub struct LrFindArgs {
    /// Architecture: a preset (`gpu-train presets`) or a model file (.toml); its recipe's
    /// optimizer, initialisation, augmentation and batch size are used
    #[arg(long)]
    arch: String,
    /// Steps of the test (the rate rises exponentially from --start-lr to --end-lr)
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// The rate of the first step
    #[arg(long, default_value_t = 1e-7, value_name = "LR")]
    start_lr: f64,
    /// The rate of the last step (the test stops sooner if the loss diverges)
    #[arg(long, default_value_t = 10.0, value_name = "LR")]
    end_lr: f64,
    /// Batch size (default: the recipe's)
    #[arg(long)]
    batch: Option<usize>,
    /// The rule that suggests the rate: minimum (a tenth of the rate at the smoothed loss's
    /// minimum) or steep (where it falls fastest)
    #[arg(long, value_enum, default_value_t = Rule::Minimum)]
    rule: Rule,
    /// Seed for the initialisation, shuffling, dropout and augmentation
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use only the first N training images
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// The plot to write [default: runs/<arch>.lr-find.svg]
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Write a copy of the model file (TOML) with the suggested rate as its learning rate
    #[arg(long, value_name = "FILE.toml")]
    write: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    data: DataArgs,
}

pub fn run(a: LrFindArgs) -> Result<()> {
    super::init_threads(a.device.threads)?;
    let spec = presets::load(&a.arch)?;
    let mut arch = Arch::new(spec)?;
    if let Some(bs) = a.batch {
        arch.spec.train.batch = bs;
    }
    let s = Settings {
        start: a.start_lr,
        end: a.end_lr,
        steps: a.steps,
        batch: arch.recipe().batch,
        seed: a.seed,
        ..Settings::new(arch.recipe().batch, a.seed)
    };
    s.validate()?;
    if s.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let plot_path = a.plot.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{}.lr-find.svg", file_stem(&a.arch))));
    let splits = a.data.load(arch.spec.input, a.seed)?;
    let train = match a.limit {
        Some(n) => splits.train.take(n),
        None => splits.train,
    };
    if s.batch < 8 {
        println!(
            "note: with batch {} each step's loss is that of {} picture(s), and {} steps see few pictures: the curve \
             is mostly noise; raise --steps or --batch",
            s.batch, s.batch, s.steps
        );
    }
    let chosen = choose_backend(&a.device)?;
    let outcome = crate::with_backend!(chosen, b => {
        println!(
            "lr-find: {} on {} | {} training images, batch {} | {} steps, rate {} to {} (exponential), loss smoothed \
             with beta {}, stopped when it passes {}x its minimum",
            arch.name(), b.name(), train.len(), s.batch, s.steps, short(s.start), short(s.end), s.beta, s.diverge
        );
        println!("{:>6}  {:>9}  {:>9}  {:>9}", "step", "lr", "loss", "smoothed");
        let every = (s.steps / 15).max(1);
        pollster::block_on(lrfind::run(b, &arch, &train, &s, |p| {
            if p.step % every == 0 {
                println!("{:>6}  {:>9}  {:>9.4}  {:>9.4}", p.step, short(p.lr), p.loss, p.smoothed);
            }
        }))?
    });
    let last = outcome.points.last().ok_or_else(|| anyhow!("the loss was not finite from the first step"))?;
    match outcome.stop {
        Stop::Finished => println!("ran all {} steps without the loss diverging", s.steps),
        Stop::Diverged(i) => println!(
            "stopped at step {i} (lr {}): the smoothed loss {:.4} passed {}x its minimum",
            short(s.lr_at(i)),
            last.smoothed,
            s.diverge
        ),
        Stop::NotFinite(i) => {
            println!("stopped at step {i} (lr {}): the loss became NaN or infinite", short(s.lr_at(i)))
        }
    }
    let rules = [a.rule, if a.rule == Rule::Minimum { Rule::Steep } else { Rule::Minimum }];
    let found: Vec<_> = rules.iter().filter_map(|&r| lrfind::suggest(&outcome.points, s.steps, r)).collect();
    let Some(chosen) = found.iter().find(|f| f.rule == a.rule).copied() else {
        bail!(
            "the test stopped after {} steps, too few to read a rate from; start lower (--start-lr) or take more \
             steps (--steps)",
            outcome.points.len()
        );
    };
    for f in &found {
        let tag = if f.rule == a.rule { "rule" } else { "other rule" };
        println!("{tag} {}: {}", f.rule.describe(), short(f.lr));
    }
    let title = format!("Learning-rate range test: {}", arch.name());
    let svg = plot::line_chart(&lrfind::chart(&title, &outcome, &found))?;
    if let Some(dir) = plot_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&plot_path, svg).with_context(|| format!("cannot write {}", plot_path.display()))?;
    println!("plot: {}", plot_path.display());
    if let Some(path) = &a.write {
        let source = match presets::find(&a.arch) {
            Some(p) => p.source.to_string(),
            None => std::fs::read_to_string(&a.arch).with_context(|| format!("cannot read {}", a.arch))?,
        };
        let text = lrfind::with_lr(&source, &a.arch, chosen.lr as f32, a.batch)?;
        let head = format!(
            "# gpu-train lr-find (seed {}, {} steps) suggested lr {} by its {} rule.\n",
            a.seed,
            s.steps,
            short(chosen.lr),
            match chosen.rule {
                Rule::Minimum => "minimum/10",
                Rule::Steep => "steepest-descent",
            }
        );
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, head + &text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("model file with lr {}: {}", short(chosen.lr), path.display());
    }
    println!("suggested lr: {}", short(chosen.lr));
    Ok(())
}
