//! What an array of models writes besides each member's own model file and metrics log: the
//! member files' names, one line per member each epoch with the ensemble's figures, the
//! array's log and its manifest.
//!
//! For `--out DIR/NAME.safetensors`: member files `DIR/NAME-s<seed>[-<key><value>...]
//! .safetensors` (each an ordinary model file, with `NAME-....metrics.jsonl` beside it), the
//! manifest `DIR/NAME.members.json` and the array log `DIR/NAME.metrics.jsonl`, one line per
//! epoch: `{"epoch", "ensemble_test_acc", "ensemble_test_loss", "members": [{"file", "seed",
//! <swept keys>, "train_loss", "train_acc", "test_loss", "test_acc", "lr", "status"}...]}`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::{EpochReports, MemberSummary, TrainConfig, pct};
use crate::error::{Error, Result};
use crate::modelfile::{MemberProgress, Status};
use crate::network::EvalResult;

/// A member's name: `s<seed>` and each swept key with its value, as given.
pub fn member_name_of(seed: u64, tags: &[(String, String)]) -> String {
    let mut name = format!("s{seed}");
    for (k, v) in tags {
        name.push_str(&format!("-{k}{v}"));
    }
    name
}

pub fn member_name(m: &MemberProgress) -> String {
    member_name_of(m.seed, &m.tags)
}

/// `NAME` for `out` = `DIR/NAME.safetensors` ("model" if it has none): what members' files and
/// TensorBoard's run folders are named from.
pub fn out_stem(out: &Path) -> String {
    out.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
}

/// `DIR/NAME-s<seed>[-<key><value>...].safetensors` for `out` = `DIR/NAME.safetensors`.
pub fn member_file(out: &Path, seed: u64, tags: &[(String, String)]) -> PathBuf {
    let stem = out_stem(out);
    out.with_file_name(format!("{stem}-{}.safetensors", member_name_of(seed, tags)))
}

/// `DIR/NAME.members.json`.
pub fn manifest_path(out: &Path) -> PathBuf {
    out.with_extension("members.json")
}

/// A swept value as JSON: a number where it reads as one.
fn value(v: &str) -> Value {
    v.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or_else(|| Value::String(v.into()), Value::Number)
}

fn tags_into(map: &mut Map<String, Value>, tags: &[(String, String)]) {
    for (k, v) in tags {
        map.insert(k.clone(), value(v));
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned())
}

/// One epoch of an array: a line with the ensemble's test accuracy, then a line per member.
pub fn epoch_lines(
    r: &EpochReports,
    members: &[MemberProgress],
    epochs: usize,
    seconds: f64,
    images: usize,
) -> Vec<String> {
    let w = epochs.to_string().len();
    let epoch = r.members.iter().flatten().map(|m| m.epoch).next().unwrap_or(0);
    let training = members.iter().filter(|m| m.status == Status::Training).count();
    let mut lines = vec![format!(
        "epoch {epoch:>w$}/{epochs}  ensemble test acc {} loss {:.4}  {training} of {} members training  {seconds:.1}s  {:.0} img/s x {}",
        pct(r.ensemble.accuracy()),
        r.ensemble.loss,
        members.len(),
        images as f64 / seconds,
        members.len()
    )];
    let width = members.iter().map(|m| member_name(m).len()).max().unwrap_or(0);
    for (m, rep) in members.iter().zip(&r.members) {
        let name = member_name(m);
        match rep {
            Some(x) => {
                let val = match (x.val_loss, x.val_acc) {
                    (Some(l), Some(a)) => format!("  val loss {l:.4} acc {}", pct(a)),
                    _ => String::new(),
                };
                lines.push(format!(
                    "  {name:<width$}  train loss {:.4} acc {}{val}  test loss {:.4} acc {}  lr {:.3e}",
                    x.train_loss,
                    pct(x.train_acc),
                    x.test_loss,
                    pct(x.test_acc),
                    x.lr
                ));
            }
            None => lines.push(format!("  {name:<width$}  {} in epoch {}", m.status.name().replace('_', " "), m.ended)),
        }
    }
    lines
}

/// The array log's line for one epoch.
pub fn array_log_line(r: &EpochReports, members: &[MemberProgress], cfg: &TrainConfig) -> String {
    let epoch = r.members.iter().flatten().map(|m| m.epoch).next().unwrap_or(0);
    let list: Vec<Value> = members
        .iter()
        .zip(&r.members)
        .enumerate()
        .map(|(k, (m, rep))| {
            let mut o = Map::new();
            o.insert("file".into(), json!(file_name(&super::member_path(cfg, k))));
            o.insert("seed".into(), json!(m.seed));
            tags_into(&mut o, &m.tags);
            if let Some(x) = rep {
                o.insert("train_loss".into(), json!(x.train_loss));
                o.insert("train_acc".into(), json!(x.train_acc));
                o.insert("val_loss".into(), json!(x.val_loss));
                o.insert("val_acc".into(), json!(x.val_acc));
                o.insert("test_loss".into(), json!(x.test_loss));
                o.insert("test_acc".into(), json!(x.test_acc));
                o.insert("lr".into(), json!(x.lr));
            }
            o.insert("status".into(), json!(m.status.name()));
            Value::Object(o)
        })
        .collect();
    json!({
        "epoch": epoch,
        "ensemble_test_acc": r.ensemble.accuracy(),
        "ensemble_test_loss": r.ensemble.loss,
        "members": list,
    })
    .to_string()
}

/// The manifest: every member's file, seed, swept values, best epoch, test accuracy and
/// status, and the ensemble's test accuracy (JSON).
pub fn manifest(members: &[MemberSummary], ensemble: &EvalResult) -> Result<String> {
    let list: Vec<Value> = members
        .iter()
        .map(|m| {
            let mut o = Map::new();
            o.insert("file".into(), json!(file_name(&m.file)));
            o.insert("seed".into(), json!(m.seed));
            tags_into(&mut o, &m.tags);
            o.insert("best_epoch".into(), json!(m.best_epoch));
            o.insert("test_accuracy".into(), json!(m.final_test.accuracy()));
            o.insert("status".into(), json!(m.status.name()));
            Value::Object(o)
        })
        .collect();
    manifest_of(list, ensemble)
}

/// The manifest of members' entries (as `manifest` makes them; `shard::gather` puts those of
/// a sweep's parts together) and their ensemble.
pub fn manifest_of(list: Vec<Value>, ensemble: &EvalResult) -> Result<String> {
    // Every key of a member besides file, seed, best_epoch, test_accuracy and status is a
    // swept value; `swept` names them.
    const FIXED: [&str; 5] = ["file", "seed", "best_epoch", "test_accuracy", "status"];
    let mut swept: Vec<&str> = Vec::new();
    for k in list.iter().filter_map(Value::as_object).flat_map(|o| o.keys()) {
        if !FIXED.contains(&k.as_str()) && !swept.contains(&k.as_str()) {
            swept.push(k);
        }
    }
    let ensemble_members = list.iter().filter(|m| m["status"].as_str() != Some(Status::Diverged.name())).count();
    let manifest = json!({
        "members": list,
        "swept": swept,
        "ensemble_test_accuracy": ensemble.accuracy(),
        "ensemble_test_loss": ensemble.loss,
        "ensemble_members": ensemble_members,
    });
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Config(e.to_string()))?;
    Ok(format!("{text}\n"))
}
