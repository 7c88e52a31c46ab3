//! What `report` is given, read: model files, metrics logs and model arrays' manifests, each
//! resolved to the runs it holds (a model and the log beside it; an array's members and its
//! ensemble curve).
//!
//! File layout, as the trainer writes it: `X.safetensors` with `X.metrics.jsonl` beside it
//! (the shipped models keep theirs in `logs/` beside them); an array `DIR/NAME` has a
//! manifest `NAME.members.json` naming member files relative to its folder, each an ordinary
//! model with its own log, and an array log `NAME.metrics.jsonl` whose lines carry every
//! member's figures and the ensemble's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::modelfile;

/// One epoch of a metrics log. Every figure is optional: older logs lack some, a run without
/// a validation share writes its figures as null, and a NaN is written as null too.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct EpochLine {
    pub epoch: usize,
    pub train_loss: Option<f64>,
    pub train_acc: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_acc: Option<f64>,
    pub lr: Option<f64>,
    pub seconds: Option<f64>,
    pub images_per_second: Option<f64>,
}

/// One epoch of an array's log: the ensemble's test figures and each member's.
#[derive(Debug, Clone, Deserialize)]
pub struct ArrayLine {
    pub epoch: usize,
    pub ensemble_test_acc: Option<f64>,
    pub ensemble_test_loss: Option<f64>,
    #[serde(default)]
    pub members: Vec<MemberLine>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemberLine {
    pub file: Option<String>,
    pub seed: Option<u64>,
    #[serde(flatten)]
    pub figures: EpochFigures,
}

/// An epoch's figures without the epoch number (how an array log's member entries hold them).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct EpochFigures {
    pub train_loss: Option<f64>,
    pub train_acc: Option<f64>,
    pub test_loss: Option<f64>,
    pub test_acc: Option<f64>,
    pub lr: Option<f64>,
}

/// A metrics log: one run's epochs, or an array's.
#[derive(Debug, Clone)]
pub enum Log {
    Run(Vec<EpochLine>),
    Array(Vec<ArrayLine>),
}

/// An array's manifest, `NAME.members.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub members: Vec<MemberEntry>,
    pub ensemble_test_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemberEntry {
    /// Relative to the manifest's folder.
    pub file: String,
    pub seed: Option<u64>,
    pub best_epoch: Option<usize>,
    pub test_accuracy: Option<f64>,
    pub status: Option<String>,
    /// The swept settings (`lr`, `batch`, ...): every other key.
    #[serde(flatten)]
    pub swept: BTreeMap<String, Value>,
}

impl MemberEntry {
    /// "s1 lr=0.001": the seed and the swept values, to tell members apart in a legend.
    pub fn label(&self) -> String {
        let mut parts: Vec<String> = self.seed.map(|s| format!("s{s}")).into_iter().collect();
        parts.extend(
            self.swept.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), String::from))),
        );
        if parts.is_empty() { stem(Path::new(&self.file)) } else { parts.join(" ") }
    }
}

/// One training run as the report shows it.
#[derive(Debug, Clone)]
pub struct Run {
    /// The legend's name for it.
    pub label: String,
    pub model: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub epochs: Vec<EpochLine>,
}

/// What one path given to `report` resolves to.
#[derive(Debug, Clone)]
pub struct Group {
    pub title: String,
    pub source: PathBuf,
    /// One run, or an array's members in manifest order.
    pub runs: Vec<Run>,
    /// An array's manifest, if the group is one.
    pub manifest: Option<Manifest>,
    /// An array's ensemble per epoch: (epoch, test accuracy, test loss).
    pub ensemble: Vec<(usize, Option<f64>, Option<f64>)>,
    /// What could not be shown and why, for the page.
    pub notes: Vec<String>,
}

impl Group {
    /// The model files the group's evaluation needs (an array's members, or the one model).
    pub fn models(&self) -> Vec<&Path> {
        self.runs.iter().filter_map(|r| r.model.as_deref()).collect()
    }
}

/// The file name without its `.safetensors`, `.metrics.jsonl` or `.members.json` ending.
pub fn stem(p: &Path) -> String {
    let name = p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());
    for end in [".members.json", ".metrics.jsonl", ".ckpt.safetensors", ".safetensors"] {
        if let Some(s) = name.strip_suffix(end) {
            return s.to_string();
        }
    }
    name
}

fn with_name(p: &Path, name: String) -> PathBuf {
    p.with_file_name(name)
}

/// Reads a metrics log. A last line without its newline (a run killed while writing it) is
/// left out; any other line that is not a log line is an error naming its number.
pub fn read_log(path: &Path) -> Result<Log> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let complete =
        if text.ends_with('\n') { text.as_str() } else { text.rsplit_once('\n').map_or("", |(done, _)| done) };
    let mut values = Vec::new();
    for (i, line) in complete.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| Error::Data(format!("{} line {}: not JSON ({e})", path.display(), i + 1)))?;
        // A run's record of its GPU kernels (the first line of a GPU run's log) is no epoch.
        if v.get("kernels").is_some() && v.get("epoch").is_none() {
            continue;
        }
        values.push((i + 1, v));
    }
    let bad =
        |n: usize, e: serde_json::Error| Error::Data(format!("{} line {n}: not a metrics line ({e})", path.display()));
    if values.first().is_some_and(|(_, v)| v.get("members").is_some()) {
        let lines = values
            .into_iter()
            .map(|(n, v)| serde_json::from_value::<ArrayLine>(v).map_err(|e| bad(n, e)))
            .collect::<Result<_>>()?;
        return Ok(Log::Array(lines));
    }
    let lines = values
        .into_iter()
        .map(|(n, v)| serde_json::from_value::<EpochLine>(v).map_err(|e| bad(n, e)))
        .collect::<Result<_>>()?;
    Ok(Log::Run(lines))
}

pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Data(format!("{}: not a model array's manifest ({e})", path.display())))
}

/// The metrics log of a model file: beside it, or in `logs/` beside it (how `models/` ships).
pub fn log_of(model: &Path) -> Option<PathBuf> {
    let beside = modelfile::metrics_path(model);
    let shipped = model.parent().map(|d| d.join("logs").join(format!("{}.metrics.jsonl", stem(model))));
    std::iter::once(beside).chain(shipped).find(|p| p.is_file())
}

/// Resolves one path given to `report`.
pub fn resolve(path: &Path) -> Result<Group> {
    if !path.exists() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.ends_with(".members.json") {
        return array(path, read_manifest(path)?);
    }
    if name.ends_with(".metrics.jsonl") {
        return match read_log(path)? {
            Log::Array(lines) => {
                let manifest = with_name(path, format!("{}.members.json", stem(path)));
                if manifest.is_file() {
                    return array(&manifest, read_manifest(&manifest)?);
                }
                Ok(array_from_log(path, lines))
            }
            Log::Run(epochs) => {
                let model = with_name(path, format!("{}.safetensors", stem(path)));
                let model = model.is_file().then_some(model);
                let mut g = single(path, model, Some(path.to_path_buf()), epochs);
                if g.runs[0].model.is_none() {
                    g.notes.push(format!(
                        "{}: a metrics log without its model file ({}.safetensors beside it): the confusion matrix, \
                         the mistakes and the model summary need the model file",
                        path.display(),
                        stem(path)
                    ));
                }
                Ok(g)
            }
        };
    }
    let log = log_of(path);
    let epochs = match &log {
        Some(l) => match read_log(l)? {
            Log::Run(e) => e,
            Log::Array(_) => Vec::new(),
        },
        None => Vec::new(),
    };
    let mut g = single(path, Some(path.to_path_buf()), log.clone(), epochs);
    if log.is_none() {
        g.notes.push(format!(
            "{}: no metrics log beside it ({}), so no curves",
            path.display(),
            modelfile::metrics_path(path).display()
        ));
    }
    Ok(g)
}

fn single(source: &Path, model: Option<PathBuf>, log: Option<PathBuf>, epochs: Vec<EpochLine>) -> Group {
    let label = stem(source);
    Group {
        title: label.clone(),
        source: source.to_path_buf(),
        runs: vec![Run { label, model, log, epochs }],
        manifest: None,
        ensemble: Vec::new(),
        notes: Vec::new(),
    }
}

/// An array from its manifest: each member's model and log beside it (or, lacking that log,
/// its figures from the array log), and the ensemble's curve from the array log.
fn array(manifest_path: &Path, manifest: Manifest) -> Result<Group> {
    let dir = manifest_path.parent().unwrap_or(Path::new(""));
    let array_log = with_name(manifest_path, format!("{}.metrics.jsonl", stem(manifest_path)));
    let lines = match array_log.is_file().then(|| read_log(&array_log)).transpose()? {
        Some(Log::Array(lines)) => lines,
        _ => Vec::new(),
    };
    let mut notes = Vec::new();
    if lines.is_empty() {
        notes.push(format!("{}: no array log, so no ensemble curve", array_log.display()));
    }
    let mut runs = Vec::new();
    for m in &manifest.members {
        let file = dir.join(&m.file);
        let model = file.is_file().then(|| file.clone());
        if model.is_none() {
            notes.push(format!("member {}: model file missing, left out of the evaluation", file.display()));
        }
        let log = modelfile::metrics_path(&file);
        let (log, epochs) = match log.is_file() {
            true => match read_log(&log)? {
                Log::Run(e) => (Some(log), e),
                Log::Array(_) => (None, Vec::new()),
            },
            false => (None, member_epochs(&lines, &m.file, m.seed)),
        };
        runs.push(Run { label: m.label(), model, log, epochs });
    }
    Ok(Group {
        title: stem(manifest_path),
        source: manifest_path.to_path_buf(),
        runs,
        ensemble: lines.iter().map(|l| (l.epoch, l.ensemble_test_acc, l.ensemble_test_loss)).collect(),
        manifest: Some(manifest),
        notes,
    })
}

/// An array known only from its log: members by the files (or seeds) its lines name.
fn array_from_log(path: &Path, lines: Vec<ArrayLine>) -> Group {
    let mut keys: Vec<(Option<String>, Option<u64>)> = Vec::new();
    for m in lines.iter().flat_map(|l| &l.members) {
        let key = (m.file.clone(), m.seed);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let runs = keys
        .into_iter()
        .map(|(file, seed)| {
            let label = match (&file, seed) {
                (_, Some(s)) => format!("s{s}"),
                (Some(f), None) => stem(Path::new(f)),
                (None, None) => "member".into(),
            };
            let epochs = member_epochs(&lines, file.as_deref().unwrap_or(""), seed);
            Run { label, model: None, log: Some(path.to_path_buf()), epochs }
        })
        .collect();
    Group {
        title: stem(path),
        source: path.to_path_buf(),
        runs,
        manifest: None,
        ensemble: lines.iter().map(|l| (l.epoch, l.ensemble_test_acc, l.ensemble_test_loss)).collect(),
        notes: vec![format!(
            "{}: an array log without its manifest ({}.members.json): curves only",
            path.display(),
            stem(path)
        )],
    }
}

/// One member's epochs out of an array log, found by file name, else by seed.
fn member_epochs(lines: &[ArrayLine], file: &str, seed: Option<u64>) -> Vec<EpochLine> {
    lines
        .iter()
        .filter_map(|l| {
            let m = l
                .members
                .iter()
                .find(|m| m.file.as_deref() == Some(file))
                .or_else(|| l.members.iter().find(|m| m.file.is_none() && seed.is_some() && m.seed == seed))?;
            let f = &m.figures;
            Some(EpochLine {
                epoch: l.epoch,
                train_loss: f.train_loss,
                train_acc: f.train_acc,
                test_loss: f.test_loss,
                test_acc: f.test_acc,
                lr: f.lr,
                ..EpochLine::default()
            })
        })
        .collect()
}
