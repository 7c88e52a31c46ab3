//! The `gpu-train` command line: train (the default), eval, predict, export, report, gather, lr-find, tune, bench,
//! presets, devices, probe, selftest; one file per command in `cli/`. Errors end as one line on stderr and a
//! non-zero exit.

mod cli;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    train: cli::train::TrainArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a model (the default command)
    Train(cli::train::TrainArgs),
    /// Evaluate saved models on the test set (several models: their ensemble too)
    Eval(cli::eval::EvalArgs),
    /// Classify image files with a saved model
    Predict(cli::predict::PredictArgs),
    /// Write a saved model as ONNX (opset 13), for onnxruntime, OpenCV, TensorRT, browsers
    Export(cli::export::ExportArgs),
    /// Show runs as pictures: curves, confusion matrix, worst mistakes, in one HTML file
    Report(cli::report::ReportArgs),
    /// The learning-rate range test: a plot and a suggested rate
    LrFind(cli::lrfind::LrFindArgs),
    /// Put a sweep trained in parts (`train --shard`, a cluster's job array) back together:
    /// the whole sweep's manifest, its ensemble and report
    Gather(cli::gather::GatherArgs),
    /// Time each layer shape's GPU kernel candidates on this device and cache the fastest
    /// (what train does before its first step)
    Tune(cli::tune::TuneArgs),
    /// Time training steps and print one JSON line
    Bench(cli::bench::BenchArgs),
    /// List the built-in architectures, or print one as a model file
    Presets {
        /// Print this preset's model file (TOML), to copy and edit
        name: Option<String>,
    },
    /// List the GPU adapters wgpu can see
    Devices,
    /// Show the adapters' cooperative-matrix (tensor-core) configurations and check the
    /// cooperative GEMM against the CPU where one is offered
    Probe(cli::probe::ProbeArgs),
    /// Check every CPU op and GPU kernel against the reference definitions (ndarray, f64)
    Selftest(cli::info::SelftestArgs),
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
        None => cli::train::run(cli.train),
        Some(Cmd::Train(a)) => cli::train::run(a),
        Some(Cmd::Eval(a)) => cli::eval::run(a),
        Some(Cmd::Predict(a)) => cli::predict::run(a),
        Some(Cmd::Export(a)) => cli::export::run(a),
        Some(Cmd::Report(a)) => cli::report::run(a),
        Some(Cmd::LrFind(a)) => cli::lrfind::run(a),
        Some(Cmd::Gather(a)) => cli::gather::run(a),
        Some(Cmd::Tune(a)) => cli::tune::run(a),
        Some(Cmd::Bench(a)) => cli::bench::run(a),
        Some(Cmd::Presets { name }) => cli::info::presets(name),
        Some(Cmd::Devices) => cli::info::devices(),
        Some(Cmd::Probe(a)) => cli::probe::run(a),
        Some(Cmd::Selftest(a)) => cli::info::selftest(a),
    }
}
