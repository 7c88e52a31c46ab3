//! `gpu-train bench`: the time of training steps, as one JSON line.

use anyhow::Result;
use clap::Args;

use super::array::ArrayArgs;
use super::{Chosen, DataArgs, DeviceArgs, KernelArgs, Precision, choose_backend_for};
use gpu_train::bench;
use gpu_train::data::{Dataset, numbered_classes};
use gpu_train::model::{Arch, presets};
use gpu_train::network::Members;
use gpu_train::rng;

#[derive(Args)]
pub struct BenchArgs {
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
    /// Also report the time of each op (CPU) or kernel (GPU, timestamp queries)
    #[arg(long)]
    profile: bool,
    /// Arithmetic of the GEMMs: f32, mixed (cooperative matrices; `gpu-train devices`) or auto (f32 for now)
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    precision: Precision,
    /// Time an array of models trained side by side (see `gpu-train train --seeds`, `--sweep`):
    /// the figures per member-step are what compares with training them one by one
    #[command(flatten)]
    array: ArrayArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    kernels: KernelArgs,
    #[command(flatten)]
    data: DataArgs,
}

/// Random images of `shape`: enough for 32 batches (at most 256 MB), seeded.
pub(super) fn synthetic(shape: [usize; 3], classes: usize, batch: usize) -> Dataset {
    let len = shape.iter().product::<usize>();
    let n = (batch * 32).max(1024).min((256 << 20) / len.max(1)).max(batch);
    let mut r = rng::stream(7, 0xbe7c, 0);
    let images = (0..n * len).map(|_| rng::below(&mut r, 256) as u8).collect();
    let labels = (0..n).map(|_| rng::below(&mut r, classes as u32)).collect();
    Dataset {
        images,
        labels,
        channels: shape[0],
        height: shape[1],
        width: shape[2],
        classes: numbered_classes(classes),
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    super::init_threads(a.device.threads)?;
    let arch = Arch::new(presets::load(&a.arch)?)?;
    let shape = arch.spec.input;
    // The shipped MNIST unless the model takes another shape or --data says otherwise; the
    // time of a step does not depend on the pixels, so other shapes get random ones.
    let given = a.data.data.is_some() || a.data.data_dir.is_some() || a.data.dataset.is_some();
    let (train_ds, data_kind) = if given || shape == [1, 28, 28] {
        // The loader's notes on stderr: stdout is the one JSON line.
        let s = a.data.load_quietly(shape, 1)?;
        s.notes.iter().for_each(|n| eprintln!("{n}"));
        (s.train, "real")
    } else {
        (synthetic(shape, arch.classes(), a.batch), "synthetic")
    };
    let plan = a.array.plan(&arch.spec, 1)?;
    let members = Members::new(plan.members)?;
    let chosen = choose_backend_for(&a.device, a.precision, &arch)?;
    let label = chosen.label();
    let mut r = match chosen {
        Chosen::Cpu(mut c) => {
            if a.profile {
                c.enable_profiling();
            }
            let r = pollster::block_on(bench::bench(
                &mut c, label, members, &train_ds, a.batch, a.steps, a.warmup, a.augment,
            ))?;
            let mut v = serde_json::to_value(&r)?;
            v["precision"] = "f32".into();
            v["path"] = "cpu f32".into();
            if a.profile {
                let report = c.profile_report();
                print_profile("CPU time per training step by op", &report, a.steps + a.warmup, r.seconds_per_step);
                v["op_seconds_per_step"] = per_step(&report, a.steps + a.warmup);
            }
            v
        }
        Chosen::Gpu(mut g) => {
            let compile = g.compile_all()?;
            let (precision, path) = (if g.coop_config().is_some() { "mixed" } else { "f32" }, g.gemm_path());
            // The kernels, chosen before the clock starts and the profiler (stdout is the one JSON line).
            let t = std::time::Instant::now();
            let kernels = a.kernels.prepare(&mut g, &members, &train_ds, a.batch, &|l| eprintln!("{l}"))?;
            let tune_seconds = t.elapsed().as_secs_f64();
            if a.profile {
                g.enable_profiling()?;
            }
            let flops = bench::gemm_flops_per_step(&members.fused, a.batch);
            let r = pollster::block_on(bench::bench(
                &mut *g, label, members, &train_ds, a.batch, a.steps, a.warmup, a.augment,
            ))?;
            let mut v = serde_json::to_value(&r)?;
            v["shader_compile_seconds"] = compile.into();
            v["kernel_choice_seconds"] = tune_seconds.into();
            v["kernels"] = serde_json::from_str::<serde_json::Value>(&kernels).unwrap_or_default();
            v["precision"] = precision.into();
            v["path"] = path.into();
            let peak = g.memory().1;
            v["device_memory_peak_bytes"] = peak.into();
            v["device_memory_over_footprint"] = (peak as f64 / r.footprint.total_bytes as f64).into();
            if a.profile {
                // Warm-up and timed steps are both profiled: report per step over all of them.
                let steps = (a.steps + a.warmup) as f64;
                let report = g.profile_report()?;
                let total: f64 = report.iter().map(|k| k.1).sum();
                eprintln!("GPU time per training step by kernel ({} steps, timestamp queries):", a.steps + a.warmup);
                let mut rates = serde_json::Map::new();
                for (name, secs, n) in &report {
                    // The GEMM kernels' achieved rate: their FLOPs per step over their time.
                    let rate = flops.iter().find(|f| f.0 == name).map(|f| f.1 / (secs / steps));
                    if let Some(r) = rate {
                        rates.insert(name.clone(), (r / 1e12).into());
                    }
                    eprintln!(
                        "  {name:<32} {:>9.1} us  {:>5.1}%  {:>5.1} dispatches/step{}",
                        1e6 * secs / steps,
                        100.0 * secs / total,
                        *n as f64 / steps,
                        rate.map_or(String::new(), |r| format!("  {:.2} TFLOP/s", r / 1e12))
                    );
                }
                v["kernel_tflops"] = serde_json::Value::Object(rates);
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
        o.insert("data".into(), data_kind.into());
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
