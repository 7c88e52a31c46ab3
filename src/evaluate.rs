//! Evaluating saved models on a data set: accuracy, loss, confusion matrix, per-class
//! accuracy, and ensembles (the average of several models' probabilities).

use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::spec::Loss;
use crate::modelfile::Loaded;
use crate::network::{DeviceData, Network};
use crate::train::EVAL_BATCH;

/// Scores of every example under one model (or the ensemble average).
#[derive(Debug, Clone)]
pub struct Scored {
    pub name: String,
    /// (count, classes): probabilities for cross-entropy models, outputs for MSE ones.
    pub scores: Vec<f32>,
    pub classes: usize,
    /// Mean loss as the model's own loss function defines it.
    pub loss: f64,
}

impl Scored {
    pub fn predictions(&self) -> Vec<usize> {
        self.scores.chunks(self.classes).map(argmax).collect()
    }

    pub fn accuracy(&self, labels: &[u32]) -> f64 {
        let hits = self.predictions().iter().zip(labels).filter(|&(&p, &y)| p == y as usize).count();
        hits as f64 / labels.len().max(1) as f64
    }
}

/// Index of the first maximum.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = j;
        }
    }
    best
}

fn check_input(model: &Loaded, name: &str, data: &Dataset) -> Result<()> {
    if data.shape() != model.arch.spec.input {
        return Err(Error::Data(format!(
            "images are {}x{}x{}, model {name} expects {:?}",
            data.channels, data.height, data.width, model.arch.spec.input
        )));
    }
    Ok(())
}

/// Runs one model over a data set on backend `b`.
pub async fn score<B: Backend>(b: &mut B, model: &Loaded, name: &str, data: &Dataset) -> Result<Scored> {
    check_input(model, name, data)?;
    let arch = model.arch.clone();
    let classes = arch.classes();
    if let Some(m) = data.max_label().filter(|&m| m as usize >= classes) {
        return Err(Error::Data(format!("label {m} is out of range for model {name} with {classes} outputs")));
    }
    let dev = DeviceData::upload(b, data)?;
    let mut net = Network::new(b, arch, EVAL_BATCH, &model.params, &model.state)?;
    let r = net.evaluate(b, &dev).await?;
    Ok(Scored { name: name.to_string(), scores: r.scores, classes, loss: r.loss })
}

/// The final layer's outputs of one model for every example, (count, classes): logits for a
/// cross-entropy model (what `score` turns into probabilities), the scores of an MSE one.
pub async fn logits<B: Backend>(b: &mut B, model: &Loaded, name: &str, data: &Dataset) -> Result<Vec<f32>> {
    check_input(model, name, data)?;
    let dev = DeviceData::upload(b, data)?;
    let mut net = Network::new(b, model.arch.clone(), EVAL_BATCH, &model.params, &model.state)?;
    net.outputs(b, &dev).await
}

/// The views of test-time augmentation (`eval --tta`): the image itself and its four
/// one-pixel shifts, as (dx, dy).
pub const TTA_SHIFTS: [(isize, isize); 5] = [(0, 0), (0, -1), (0, 1), (-1, 0), (1, 0)];

/// Runs one model over every view in `TTA_SHIFTS` of a data set and averages its scores
/// (probabilities, or outputs for an MSE model); the loss is the model's own loss of that
/// average.
pub async fn score_tta<B: Backend>(b: &mut B, model: &Loaded, name: &str, data: &Dataset) -> Result<Scored> {
    let mut views = Vec::new();
    for &(dx, dy) in &TTA_SHIFTS {
        views.push(score(b, model, name, &data.shifted(dx, dy)).await?);
    }
    let mut avg = average(&views, &data.labels, model.arch.recipe().loss)?;
    avg.name = format!("{name} (tta x{})", views.len());
    Ok(avg)
}

/// The mean of several score sets over the same examples, with `loss` computed from it.
fn average(members: &[Scored], labels: &[u32], loss: Loss) -> Result<Scored> {
    let classes = members[0].classes;
    if members.iter().any(|m| m.classes != classes) {
        return Err(Error::Config("ensemble members must have the same number of classes".into()));
    }
    let mut scores = vec![0f32; members[0].scores.len()];
    for m in members {
        scores.iter_mut().zip(&m.scores).for_each(|(a, &s)| *a += s / members.len() as f32);
    }
    let per_example = |(p, &y): (&[f32], &u32)| match loss {
        Loss::CrossEntropy => -(p[y as usize].max(1e-12) as f64).ln(),
        Loss::Mse => crate::cpu::loss::mse_row(&p.iter().map(|&v| v as f64).collect::<Vec<_>>(), y as usize).0,
    };
    let loss = scores.chunks(classes).zip(labels).map(per_example).sum::<f64>() / labels.len().max(1) as f64;
    Ok(Scored { name: format!("ensemble of {}", members.len()), scores, classes, loss })
}

/// The ensemble of several models: their scores averaged, scored by cross-entropy.
pub fn ensemble(members: &[Scored], labels: &[u32]) -> Result<Scored> {
    average(members, labels, Loss::CrossEntropy)
}

/// counts[true][predicted]
pub fn confusion(pred: &[usize], labels: &[u32], classes: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; classes]; classes];
    for (&p, &y) in pred.iter().zip(labels) {
        m[y as usize][p] += 1;
    }
    m
}

/// The confusion matrix (up to 20 classes) and the accuracy of each class as text, classes
/// named by `names` (in label order).
pub fn report(s: &Scored, labels: &[u32], names: &[String]) -> String {
    let pred = s.predictions();
    let name = |c: usize| names.get(c).cloned().unwrap_or_else(|| c.to_string());
    let mut out = String::new();
    if s.classes > 20 {
        // No matrix: with many classes it would not fit (65,536 classes: 4 billion cells).
        let (mut hits, mut seen) = (vec![0usize; s.classes], vec![0usize; s.classes]);
        for (&p, &y) in pred.iter().zip(labels) {
            seen[y as usize] += 1;
            hits[y as usize] += usize::from(p == y as usize);
        }
        out.push_str("accuracy per class (true class: correct / images)\n");
        for c in (0..s.classes).filter(|&c| seen[c] > 0) {
            let pct = 100.0 * hits[c] as f64 / seen[c] as f64;
            out.push_str(&format!("  {:<24} {pct:>6.2}%  {} / {}\n", name(c), hits[c], seen[c]));
        }
        return out;
    }
    let m = confusion(&pred, labels, s.classes);
    let acc = |c: usize, row: &[usize]| {
        let total: usize = row.iter().sum();
        if total == 0 { 0.0 } else { 100.0 * row[c] as f64 / total as f64 }
    };
    // Columns as wide as the longest class name (at least 6), names cut at 12 characters.
    let short = |c: usize| name(c).chars().take(12).collect::<String>();
    let w = (0..s.classes).map(|c| short(c).chars().count() + 1).max().unwrap_or(6).max(6);
    out.push_str("confusion matrix (rows: true class, columns: predicted)\n");
    out.push_str(&" ".repeat(w));
    for c in 0..s.classes {
        out.push_str(&format!("{:>w$}", short(c)));
    }
    out.push_str("   acc\n");
    for (c, row) in m.iter().enumerate() {
        out.push_str(&format!("{:>w$}", short(c)));
        for v in row {
            out.push_str(&format!("{v:>w$}"));
        }
        out.push_str(&format!("  {:>6.2}%\n", acc(c, row)));
    }
    out
}

/// The loss name for a model's loss function.
pub fn loss_name(loss: Loss) -> &'static str {
    match loss {
        Loss::CrossEntropy => "cross-entropy",
        Loss::Mse => "mse",
    }
}
