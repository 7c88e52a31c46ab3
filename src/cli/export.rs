//! `gpu-train export`: a saved model as an ONNX file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::load_model;
use gpu_train::{export, modelfile};

#[derive(Args)]
pub struct ExportArgs {
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

pub fn run(a: ExportArgs) -> Result<()> {
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
