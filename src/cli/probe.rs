//! `gpu-train probe`: each adapter's cooperative-matrix configurations and, where one suits
//! the kernel, a few awkward products on it against an f64 host product (`gpu::coop::probe`).
//!
//! A command of its own rather than only a selftest case: it opens a second device with an
//! experimental wgpu feature, which `selftest` and training never do unless asked, and it is
//! the one check to run first on a GPU that has tensor cores (seconds, no data). Where nothing
//! is offered it says so and succeeds; `selftest` runs it too, after the f32 kernels.

use anyhow::{Result, anyhow, bail};
use clap::Args;

use gpu_train::gpu::coop::probe;
use gpu_train::gpu::device;

#[derive(Args)]
pub struct ProbeArgs {
    /// Only this adapter (see `gpu-train devices`); default: every adapter
    #[arg(long)]
    adapter: Option<usize>,
}

pub fn run(a: ProbeArgs) -> Result<()> {
    let adapters = device::adapters();
    if adapters.is_empty() {
        println!("no GPU adapter found: no cooperative matrices to probe");
        return Ok(());
    }
    let chosen: Vec<(usize, &wgpu::Adapter)> = match a.adapter {
        Some(i) => vec![(i, adapters.get(i).ok_or_else(|| anyhow!("no adapter {i} (see `gpu-train devices`)"))?)],
        None => adapters.iter().enumerate().collect(),
    };
    let mut failed = Vec::new();
    for (i, adapter) in chosen {
        let report = probe::run(adapter);
        println!("[{i}] {}", report.lines().join("\n"));
        if !report.passed() {
            failed.push(format!("[{i}] {}", report.adapter));
        }
    }
    if !failed.is_empty() {
        bail!("the cooperative-matrix probe failed on {}", failed.join(", "));
    }
    Ok(())
}
