//! `gpu-train eval`: saved models on a test set, alone and as an ensemble.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::{DataArgs, DeviceArgs, choose_backend, load_model};
use gpu_train::backend::Backend;
use gpu_train::data::DataInfo;
use gpu_train::evaluate;

#[derive(Args)]
pub struct EvalArgs {
    /// Model file(s); with several, their ensemble (averaged probabilities) is scored too
    #[arg(long = "model", required = true, value_name = "FILE")]
    models: Vec<PathBuf>,
    /// Architecture of files that do not record one (e.g. saved from PyTorch)
    #[arg(long)]
    arch: Option<String>,
    /// Print only the summary, without the confusion matrix
    #[arg(long)]
    brief: bool,
    /// Test-time augmentation: score each model on every image and its four one-pixel shifts
    /// and average the five (takes 5x as long)
    #[arg(long)]
    tta: bool,
    /// The seed that drew a --val-split test set [default: the first model's training seed]
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    data: DataArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    super::init_threads(a.device.threads)?;
    let models = a.models.iter().map(|p| load_model(p, a.arch.as_deref())).collect::<Result<Vec<_>>>()?;
    let shape = models[0].arch.spec.input;
    if let Some((m, p)) = models.iter().zip(&a.models).find(|(m, _)| m.arch.spec.input != shape) {
        bail!(
            "{} takes {:?} inputs but the first model takes {shape:?}; an ensemble needs one input shape",
            p.display(),
            m.arch.spec.input
        );
    }
    let seed = a.seed.or_else(|| models[0].metrics().and_then(|v| v["seed"].as_u64())).unwrap_or(1);
    let splits = a.data.load(shape, seed)?;
    let test = splits.test;
    // A model trained on named classes must meet the same classes in the same order.
    for (m, p) in models.iter().zip(&a.models) {
        let recorded = DataInfo::recorded(&m.metadata).map(|d| d.classes).filter(|c| !c.is_empty());
        if let Some(names) = recorded
            && names != test.classes
        {
            bail!(
                "{} was trained on the classes [{}] but the data set has [{}]",
                p.display(),
                names.join(", "),
                test.classes.join(", ")
            );
        }
    }
    let chosen = choose_backend(&a.device)?;
    crate::with_backend!(chosen, b => {
        let views = if a.tta { format!(", {} views each (--tta)", evaluate::TTA_SHIFTS.len()) } else { String::new() };
        println!("evaluating on {} test images{views} from {} ({})", test.len(), a.data.path().display(), b.name());
        let mut scored = Vec::new();
        for (m, path) in models.iter().zip(&a.models) {
            let name = path.display().to_string();
            let s = if a.tta {
                pollster::block_on(evaluate::score_tta(b, m, &name, &test))?
            } else {
                pollster::block_on(evaluate::score(b, m, &name, &test))?
            };
            let acc = s.accuracy(&test.labels);
            let recorded = m.metrics().and_then(|v| v["test_accuracy"].as_f64());
            let rec = recorded.map_or(String::new(), |r| format!(" (recorded at save: {:.2}%)", 100.0 * r));
            println!(
                "{}: {} | accuracy {:.2}%  error {:.2}%  {} loss {:.4}{rec}",
                s.name, m.arch.name(), 100.0 * acc, 100.0 * (1.0 - acc),
                evaluate::loss_name(m.arch.recipe().loss), s.loss,
            );
            scored.push(s);
        }
        let shown = if scored.len() > 1 {
            let e = evaluate::ensemble(&scored, &test.labels)?;
            let acc = e.accuracy(&test.labels);
            println!("{}: accuracy {:.2}%  error {:.2}%  loss {:.4}", e.name, 100.0 * acc, 100.0 * (1.0 - acc), e.loss);
            e
        } else {
            scored.remove(0)
        };
        if !a.brief {
            print!("{}", evaluate::report(&shown, &test.labels, &test.classes));
        }
    });
    Ok(())
}
