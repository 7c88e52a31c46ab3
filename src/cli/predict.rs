//! `gpu-train predict`: the class of each picture file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{DeviceArgs, choose_backend, load_model};
use gpu_train::data::{DataInfo, Dataset};
use gpu_train::network::{DeviceData, Network};
use gpu_train::predict::{self, Prep};

#[derive(Args)]
pub struct PredictArgs {
    /// Model file
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Architecture, for files that do not record one
    #[arg(long)]
    arch: Option<String>,
    /// Picture files (PNG, JPEG, BMP, GIF, WebP, TIFF)
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// How pictures become inputs [default: digits for one-channel models trained on
    /// MNIST-style data, plain (as the model's training pictures were prepared) otherwise]
    #[arg(long, value_enum)]
    prep: Option<Prep>,
    /// Same as --prep raw: grayscale, invert if needed and resize, no cropping or centring
    #[arg(long, conflicts_with = "prep")]
    raw: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(a: PredictArgs) -> Result<()> {
    super::init_threads(a.device.threads)?;
    let model = load_model(&a.model, a.arch.as_deref())?;
    let shape = model.arch.spec.input;
    let info = DataInfo::recorded(&model.metadata);
    let prep = if a.raw { Prep::Raw } else { a.prep.unwrap_or_else(|| Prep::for_model(shape, info.as_ref())) };
    let resize = info.as_ref().and_then(|d| d.resize).unwrap_or_default();
    let mut images = Vec::new();
    for p in &a.images {
        images.extend(predict::prepare(p, shape, prep, resize)?);
    }
    let names = model.class_names();
    let ds = Dataset {
        images,
        labels: vec![0; a.images.len()],
        channels: shape[0],
        height: shape[1],
        width: shape[2],
        classes: names.clone(),
    };
    let chosen = choose_backend(&a.device)?;
    crate::with_backend!(chosen, b => {
        let dev = DeviceData::upload(b, &ds)?;
        let mut net = Network::new(b, model.arch.clone(), ds.len(), &model.params, &model.state)?;
        let r = pollster::block_on(net.evaluate(b, &dev))?;
        let classes = model.arch.classes();
        for (path, scores) in a.images.iter().zip(r.scores.chunks(classes)) {
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
            let top: Vec<String> =
                order.iter().take(3).map(|&k| format!("{} ({:.1}%)", names[k], 100.0 * scores[k])).collect();
            println!("{}: {}  [top 3: {}]", path.display(), names[order[0]], top.join(", "));
        }
    });
    Ok(())
}
