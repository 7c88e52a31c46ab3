//! `gpu-train report`: one self-contained HTML page (or SVG files) that shows runs as
//! pictures: their curves overlaid, the confusion matrix as a heat map, the most confidently
//! wrong test pictures, and what the model files record (summary, recipe, device, times).
//!
//! Reading what was given is `runs`; the charts are `figures` (drawn by `crate::plot`); the
//! page is `html`. Evaluating models is the caller's (it owns the backend): it hands over an
//! `Evaluation` per group, built here from `evaluate::Scored`.

pub mod figures;
pub mod html;
pub mod runs;

use std::io::Cursor;

use base64::Engine;
use image::{ExtendedColorType, ImageEncoder};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::evaluate::{self, Scored};
use crate::modelfile::Loaded;

/// How many classes a confusion matrix is drawn for; past that, per-class accuracy only (as
/// `eval` prints it).
pub const MAX_MATRIX_CLASSES: usize = 20;

/// A test picture the model got wrong, with how sure it was.
#[derive(Debug, Clone)]
pub struct Mistake {
    pub index: usize,
    pub label: usize,
    pub predicted: usize,
    /// The score of the predicted class (a probability for a cross-entropy model).
    pub confidence: f64,
    /// The score of the true class.
    pub true_score: f64,
    /// The picture as a PNG file.
    pub png: Vec<u8>,
}

impl Mistake {
    /// The picture as a `data:` URI, for an `<img>` that needs no other file.
    pub fn data_uri(&self) -> String {
        format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&self.png))
    }
}

/// What evaluating a group's model (or its members' ensemble) on the test set gave.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// "models/cnn4.safetensors", or "ensemble of 5".
    pub what: String,
    pub data: String,
    pub backend: String,
    pub count: usize,
    pub accuracy: f64,
    pub loss: f64,
    pub loss_name: &'static str,
    pub classes: Vec<String>,
    /// counts[true][predicted]; empty past `MAX_MATRIX_CLASSES`.
    pub confusion: Vec<Vec<usize>>,
    /// Per class: (correct, images).
    pub per_class: Vec<(usize, usize)>,
    /// Most confident first.
    pub mistakes: Vec<Mistake>,
    /// An array's members, each alone: (label, accuracy).
    pub members: Vec<(String, f64)>,
    pub seconds: f64,
}

impl Evaluation {
    /// The figures of `scored` (one model's scores or an ensemble's) on `test`, with the
    /// `mistakes` most confidently wrong pictures.
    pub fn new(scored: &Scored, test: &Dataset, classes: &[String], mistakes: usize) -> Result<Evaluation> {
        let pred = scored.predictions();
        let k = scored.classes;
        let mut per_class = vec![(0usize, 0usize); k];
        for (&p, &y) in pred.iter().zip(&test.labels) {
            let c = &mut per_class[y as usize];
            c.0 += usize::from(p == y as usize);
            c.1 += 1;
        }
        let confusion = if k <= MAX_MATRIX_CLASSES { evaluate::confusion(&pred, &test.labels, k) } else { Vec::new() };
        Ok(Evaluation {
            what: scored.name.clone(),
            data: String::new(),
            backend: String::new(),
            count: test.len(),
            accuracy: scored.accuracy(&test.labels),
            loss: scored.loss,
            loss_name: "cross-entropy",
            classes: classes.to_vec(),
            confusion,
            per_class,
            mistakes: worst_mistakes(scored, &pred, test, mistakes)?,
            members: Vec::new(),
            seconds: 0.0,
        })
    }
}

/// The `n` wrong predictions with the highest score for the class predicted (ties: the
/// earlier picture first), with their pictures.
fn worst_mistakes(scored: &Scored, pred: &[usize], test: &Dataset, n: usize) -> Result<Vec<Mistake>> {
    let k = scored.classes;
    let mut wrong: Vec<(usize, f64)> = pred
        .iter()
        .zip(&test.labels)
        .enumerate()
        .filter(|(_, (p, y))| **p != **y as usize)
        .map(|(i, (&p, _))| (i, scored.scores[i * k + p] as f64))
        .collect();
    wrong.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    wrong
        .into_iter()
        .take(n)
        .map(|(i, confidence)| {
            let label = test.labels[i] as usize;
            Ok(Mistake {
                index: i,
                label,
                predicted: pred[i],
                confidence,
                true_score: scored.scores[i * k + label] as f64,
                png: png(test, i)?,
            })
        })
        .collect()
}

/// Picture `i` of a data set as PNG: gray for one channel, RGB for three, the first channel
/// of any other count.
pub fn png(ds: &Dataset, i: usize) -> Result<Vec<u8>> {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let img = ds.image(i); // (c, h, w)
    let (pixels, color) = if c == 3 {
        let hw = h * w;
        ((0..hw).flat_map(|p| [img[p], img[hw + p], img[2 * hw + p]]).collect::<Vec<u8>>(), ExtendedColorType::Rgb8)
    } else {
        (img[..h * w].to_vec(), ExtendedColorType::L8)
    };
    let mut out = Cursor::new(Vec::new());
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&pixels, w as u32, h as u32, color)
        .map_err(|e| Error::Data(format!("cannot encode test picture {i} as PNG: {e}")))?;
    Ok(out.into_inner())
}

/// What a model file records about itself, for the page.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    pub arch: String,
    pub description: String,
    pub params: usize,
    /// `Arch::summary`: layers, shapes, parameter counts.
    pub summary: String,
    /// The `[train]` table as TOML.
    pub recipe: String,
    /// The `metrics` metadata: test_accuracy, test_loss, epochs, best_epoch, train_seconds, seed.
    pub metrics: serde_json::Value,
    /// The `run` metadata: backend, seed, train_images, ...
    pub run: serde_json::Value,
    pub device: String,
    /// Where the training data came from.
    pub data: String,
}

impl ModelInfo {
    pub fn of(m: &Loaded) -> ModelInfo {
        let json = |k: &str| m.metadata.get(k).and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default();
        let data = crate::data::DataInfo::recorded(&m.metadata)
            .map(|d| if d.source.is_empty() { d.path } else { format!("{} ({})", d.path, d.source) })
            .unwrap_or_default();
        ModelInfo {
            arch: m.arch.name().to_string(),
            description: m.arch.spec.description.clone(),
            params: m.arch.param_count(),
            summary: m.arch.summary(),
            recipe: toml::to_string(&m.arch.spec.train).unwrap_or_default(),
            metrics: json("metrics"),
            run: json("run"),
            device: m.metadata.get("device").cloned().unwrap_or_default(),
            data,
        }
    }
}
