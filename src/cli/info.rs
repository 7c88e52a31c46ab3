//! `gpu-train presets`, `devices` and `selftest`: what is built in, what the machine has,
//! and whether its backends compute what the reference definitions say.

use anyhow::{Result, anyhow, bail};
use clap::Args;

use super::BackendChoice;
use gpu_train::backend::Backend;
use gpu_train::gpu::{GpuBackend, device};
use gpu_train::model::presets;

#[derive(Args)]
pub struct SelftestArgs {
    /// `auto`: the GPU too if wgpu finds any adapter (software ones included); `cpu`: the CPU
    /// backend alone; `gpu`: fail without an adapter
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// GPU adapter index (see `gpu-train devices`)
    #[arg(long)]
    adapter: Option<usize>,
    /// Only the cases whose family contains this (e.g. conv2d)
    filter: Option<String>,
}

pub fn presets(name: Option<String>) -> Result<()> {
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

pub fn devices() -> Result<()> {
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
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!(
            "    shader features: f16 {}, subgroups {} (subgroup size {}..{})",
            yes(s.shader_f16),
            yes(s.subgroups),
            s.subgroup_sizes.0,
            s.subgroup_sizes.1
        );
        if s.cooperative_configs.is_empty() {
            println!("    cooperative matrices: none");
        } else {
            println!("    cooperative matrices (feature offered: {}):", yes(s.cooperative_matrix));
            for c in &s.cooperative_configs {
                println!("      {c}");
            }
        }
        match &s.mixed {
            Ok(path) => println!("    --precision mixed: {path} (check it with `gpu-train probe`)"),
            Err(why) => println!("    --precision mixed: unavailable ({why})"),
        }
    }
    if adapters.len() > 1 {
        println!("`--backend gpu` uses [0]; `--adapter N` picks another.");
    }
    Ok(())
}

pub fn selftest(a: SelftestArgs) -> Result<()> {
    let mut gpu = match a.backend {
        BackendChoice::Cpu => None,
        BackendChoice::Gpu => Some(GpuBackend::new(a.adapter)?),
        BackendChoice::Auto => match GpuBackend::new(a.adapter) {
            Ok(g) => Some(g),
            Err(e) => {
                println!("no GPU adapter ({e}): judging the CPU backend alone");
                None
            }
        },
    };
    let filter = a.filter.as_deref().unwrap_or("");
    let what = match &gpu {
        Some(g) => format!("every GPU kernel on {} and every CPU op", g.name()),
        None => "every CPU op".to_string(),
    };
    println!("selftest: {what} against the reference (ndarray, f64) on awkward shapes");
    if let Some(g) = gpu.as_mut() {
        let compile = g.compile_all()?;
        println!("built {} pipelines in {compile:.2}s", gpu_train::gpu::shaders::KERNELS.len());
    }
    let results = pollster::block_on(gpu_train::selftest::run(gpu.as_mut(), filter));
    for r in &results {
        println!("{}", r.line());
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    println!("{} of {} cases passed", results.len() - failed, results.len());
    // The cooperative-matrix kernel (`gpu-train probe`): on its own device, after the rest.
    let coop_ok = match (&gpu, a.filter.is_none()) {
        (Some(_), true) => {
            let report = gpu_train::gpu::coop::probe::run(&device::pick(a.adapter)?);
            println!("{}", report.lines().join("\n"));
            report.passed()
        }
        _ => true,
    };
    if failed > 0 {
        bail!("{failed} case(s) failed");
    }
    if !coop_ok {
        bail!("the cooperative-matrix probe failed");
    }
    Ok(())
}
