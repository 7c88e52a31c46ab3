//! `gpu-train gather`: a sweep trained in parts (`train --shard`, one per job of a Slurm job
//! array or a Kubernetes Indexed Job) put back together: the whole sweep's manifest, exactly
//! as the unsharded array writes it (each member's entry, the ensemble of all members from
//! the parts' saved test scores), and its report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser};

use gpu_train::train::shard;

#[derive(Args)]
pub struct GatherArgs {
    /// The --out every part was trained with (DIR/NAME.safetensors): the parts' manifests
    /// DIR/NAME.shard-I-of-N.members.json are read, DIR/NAME.members.json is written
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The report to write from the whole sweep's manifest (curves and each member's
    /// figures; `gpu-train report` evaluates on the test set too) [default: DIR/NAME.report.html]
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Write the manifest only
    #[arg(long, conflicts_with = "report")]
    no_report: bool,
}

/// `report`'s own arguments, to write the sweep's report through it.
#[derive(Parser)]
struct Report {
    #[command(flatten)]
    args: super::report::ReportArgs,
}

pub fn run(a: GatherArgs) -> Result<()> {
    let g = shard::gather(&a.out).with_context(|| "cannot gather the sweep")?;
    gpu_train::modelfile::write_atomic(&g.manifest_path, g.manifest.as_bytes())
        .with_context(|| format!("cannot write {}", g.manifest_path.display()))?;
    println!(
        "gathered {} members from {} parts; ensemble of {} (probabilities averaged): test accuracy {:.2}% (error {:.2}%), loss {:.4}; manifest {}",
        g.members,
        g.parts,
        serde_json::from_str::<serde_json::Value>(&g.manifest)
            .ok()
            .and_then(|v| v["ensemble_members"].as_u64())
            .unwrap_or(g.members as u64),
        100.0 * g.ensemble.accuracy(),
        100.0 * (1.0 - g.ensemble.accuracy()),
        g.ensemble.loss,
        g.manifest_path.display()
    );
    if a.no_report {
        return Ok(());
    }
    let html = a.report.unwrap_or_else(|| a.out.with_extension("report.html"));
    let argv =
        ["report".into(), g.manifest_path.into_os_string(), "--out".into(), html.into_os_string(), "--no-eval".into()];
    let r = Report::try_parse_from(argv).context("cannot write the report")?;
    super::report::run(r.args)
}
