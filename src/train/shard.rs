//! A sweep split over a job scheduler's tasks (`--shard I/N`, Slurm job arrays, Kubernetes
//! Indexed Jobs): each task trains one part of the array's members as one fused array, and
//! `gather` puts the parts back together as the whole sweep's manifest.
//!
//! The members (seeds x swept values, in the order the unsharded array has them) are cut
//! into `N` consecutive parts of near-equal size; part `I` (0-based) is
//! `I*K/N .. (I+1)*K/N`. Every part keeps the whole sweep's data seed, so a member trained in
//! a part is its member of the unsharded array (bit for bit on the CPU, where the array's
//! members are bit for bit runs of their own).
//!
//! For `--out DIR/NAME.safetensors`, part `I` of `N` writes its members' model files under
//! their usual names (`DIR/NAME-s<seed>....safetensors`), and, named `DIR/NAME.shard-I-of-N`:
//! its manifest (`.members.json`, with the whole sweep's member list), array log
//! (`.metrics.jsonl`), checkpoint and the test-set probabilities of its members
//! (`.scores.safetensors`), from which `gather` computes the whole ensemble exactly as the
//! unsharded array would.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::model::spec::Loss;
use crate::network::{EvalResult, ensemble_of};

/// Which part of a sweep this run trains, and the whole sweep's members (seed and swept
/// values, in order) for its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub index: usize,
    pub count: usize,
    pub all: Vec<(u64, Vec<(String, String)>)>,
}

impl Part {
    /// The members (indices into `all`) this part trains.
    pub fn members(&self) -> Range<usize> {
        part(self.index, self.count, self.all.len())
    }
}

/// Part `index` of `count` of `total` members: consecutive, sizes differing by at most one.
pub fn part(index: usize, count: usize, total: usize) -> Range<usize> {
    index * total / count..(index + 1) * total / count
}

/// `DIR/NAME.shard-I-of-N.safetensors` for `out` = `DIR/NAME.safetensors`: what the part's
/// manifest, log, checkpoint and scores are named from.
pub fn part_out(out: &Path, index: usize, count: usize) -> PathBuf {
    let stem = super::outputs::out_stem(out);
    out.with_file_name(format!("{stem}.shard-{index}-of-{count}.safetensors"))
}

/// `DIR/NAME.shard-I-of-N.scores.safetensors`.
pub fn scores_path(part_out: &Path) -> PathBuf {
    part_out.with_extension("scores.safetensors")
}

/// The part's manifest: the array's own (`outputs::manifest`) with a `shard` record of which
/// part it is and the whole sweep's members.
pub fn part_manifest(manifest: &str, shard: &Part, members: &[String]) -> Result<String> {
    let mut v: Value = serde_json::from_str(manifest).map_err(|e| Error::Config(e.to_string()))?;
    let sweep: Vec<Value> = shard
        .all
        .iter()
        .zip(members)
        .map(|((seed, tags), file)| {
            let mut o = Map::new();
            o.insert("file".into(), json!(file));
            o.insert("seed".into(), json!(seed));
            for (k, t) in tags {
                o.insert(k.clone(), json!(t));
            }
            Value::Object(o)
        })
        .collect();
    v["shard"] = json!({ "index": shard.index, "count": shard.count, "sweep": sweep });
    let text = serde_json::to_string_pretty(&v).map_err(|e| Error::Config(e.to_string()))?;
    Ok(format!("{text}\n"))
}

/// Writes the part's members' test-set probabilities (each `n * classes`, as the final
/// evaluation kept them) and the labels, for `gather`.
pub fn encode_scores(
    path: &Path,
    members: &[&EvalResult],
    labels: &[u32],
    classes: usize,
    loss: Loss,
) -> Result<Vec<u8>> {
    let n = labels.len();
    let mut scores: Vec<u8> = Vec::with_capacity(members.len() * n * classes * 4);
    for m in members {
        if m.scores.len() != n * classes {
            return Err(Error::Config(format!(
                "{}: a member kept {} scores for {n} examples of {classes} classes",
                path.display(),
                m.scores.len()
            )));
        }
        scores.extend(bytemuck::cast_slice::<f32, u8>(&m.scores));
    }
    let labels: &[u8] = bytemuck::cast_slice(labels);
    let views = vec![
        ("scores".to_string(), TensorView::new(Dtype::F32, vec![members.len(), n, classes], &scores)),
        ("labels".to_string(), TensorView::new(Dtype::U32, vec![n], labels)),
    ];
    let views = views
        .into_iter()
        .map(|(k, v)| v.map(|v| (k, v)).map_err(|e| Error::model(path, e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    let loss = serde_json::to_value(loss).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let meta = HashMap::from([("loss".to_string(), loss), ("format".to_string(), "gpu-train shard scores 1".into())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::model(path, e.to_string()))
}

/// A part's scores: per member `n * classes` probabilities, the labels, the loss.
struct Scores {
    members: Vec<Vec<f32>>,
    labels: Vec<u32>,
    classes: usize,
    loss: Loss,
}

fn read_scores(path: &Path) -> Result<Scores> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |why: String| Error::model(path, why);
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let loss = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("loss"))
        .and_then(|l| serde_json::from_value::<Loss>(Value::String(l.clone())).ok())
        .ok_or_else(|| bad("no loss recorded: not a shard's scores file".into()))?;
    let scores = st.tensor("scores").map_err(|e| bad(e.to_string()))?;
    let labels = st.tensor("labels").map_err(|e| bad(e.to_string()))?;
    let (&[k, n, classes], &[nl]) = (scores.shape(), labels.shape()) else {
        return Err(bad("scores or labels of the wrong rank".into()));
    };
    if n != nl || scores.dtype() != Dtype::F32 || labels.dtype() != Dtype::U32 {
        return Err(bad("scores and labels do not match".into()));
    }
    let all: Vec<f32> = scores.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let labels = labels.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let members =
        if n * classes == 0 { vec![Vec::new(); k] } else { all.chunks(n * classes).map(<[f32]>::to_vec).collect() };
    Ok(Scores { members, labels, classes, loss })
}

/// The whole sweep put back together from its parts.
#[derive(Debug, Clone)]
pub struct Gathered {
    /// The whole sweep's manifest (JSON text), as the unsharded array writes it.
    pub manifest: String,
    pub manifest_path: PathBuf,
    pub ensemble: EvalResult,
    pub members: usize,
    pub parts: usize,
}

/// The parts' manifests beside `out` (`NAME.shard-I-of-N.members.json`), by part count.
fn find_parts(out: &Path) -> Result<Vec<(usize, usize, PathBuf)>> {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = format!("{}.shard-", super::outputs::out_stem(out));
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(rest) = name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".members.json")) else { continue };
        if let Some((i, n)) = rest.split_once("-of-")
            && let (Ok(i), Ok(n)) = (i.parse::<usize>(), n.parse::<usize>())
        {
            found.push((i, n, p.clone()));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads every part of the sweep `out` names, checks that none is missing and that they are
/// parts of one sweep, and builds the whole sweep's manifest and ensemble. A part missing
/// (not run, still running, or failed) is named with its members and, if it left one, how far
/// its checkpoint got.
pub fn gather(out: &Path) -> Result<Gathered> {
    let found = find_parts(out)?;
    let stem = super::outputs::out_stem(out);
    if found.is_empty() {
        return Err(Error::Sweep(format!(
            "no part of a sweep beside {}: expected {stem}.shard-I-of-N.members.json, written by `train --shard` with this --out",
            out.display()
        )));
    }
    let count = found[0].1;
    if let Some((_, n, p)) = found.iter().find(|(_, n, _)| *n != count) {
        return Err(Error::Sweep(format!(
            "{} is a part of {n}, but {} is a part of {count}: parts of two different splits of the sweep are beside {}; remove the stale ones",
            p.display(),
            found[0].2.display(),
            out.display()
        )));
    }
    let mut manifests: Vec<Option<(PathBuf, Value)>> = vec![None; count];
    for (i, _, p) in &found {
        if *i >= count {
            return Err(Error::Sweep(format!("{}: part {i} of {count} does not exist", p.display())));
        }
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Sweep(format!("{}: not a sweep part's manifest ({e})", p.display())))?;
        manifests[*i] = Some((p.clone(), v));
    }
    // The whole sweep's member list, as every part recorded it.
    let (first_path, first) = manifests.iter().flatten().next().expect("found is not empty");
    let sweep = first["shard"]["sweep"]
        .as_array()
        .ok_or_else(|| Error::Sweep(format!("{}: no `shard` record (not written by --shard)", first_path.display())))?
        .clone();
    for (p, v) in manifests.iter().flatten() {
        if v["shard"]["sweep"].as_array() != Some(&sweep) {
            return Err(Error::Sweep(format!(
                "{} and {} are parts of different sweeps (their member lists differ)",
                first_path.display(),
                p.display()
            )));
        }
    }
    let total = sweep.len();
    let name = |m: &Value| m["file"].as_str().unwrap_or("?").trim_end_matches(".safetensors").to_string();
    let mut missing = Vec::new();
    for (i, m) in manifests.iter().enumerate() {
        if m.is_none() {
            let r = part(i, count, total);
            let names: Vec<String> = sweep[r.clone()].iter().map(name).collect();
            let ckpt = crate::modelfile::checkpoint_path(&part_out(out, i, count));
            let how_far = match crate::modelfile::load(&ckpt, None) {
                Ok(l) => l.train.map_or_else(String::new, |t| {
                    format!("; its checkpoint {} reached epoch {}", ckpt.display(), t.progress.epoch)
                }),
                Err(_) => "; no checkpoint either".to_string(),
            };
            missing.push(format!(
                "part {i} of {count} ({} member(s): {}): no {}.shard-{i}-of-{count}.members.json (not run, still running, or failed){how_far}",
                r.len(),
                names.join(", "),
                stem
            ));
        }
    }
    if !missing.is_empty() {
        return Err(Error::Sweep(format!(
            "{} of {count} parts of the sweep {} are missing:\n  {}",
            missing.len(),
            out.display(),
            missing.join("\n  ")
        )));
    }
    // Members in the sweep's order, each part's scores beside them.
    let mut entries: Vec<Value> = Vec::new();
    let mut scores: Vec<Vec<f32>> = Vec::new();
    let mut labels: Option<(Vec<u32>, usize, Loss)> = None;
    for (i, m) in manifests.iter().enumerate() {
        let (p, v) = m.as_ref().expect("checked above");
        let members = v["members"].as_array().cloned().unwrap_or_default();
        let want = &sweep[part(i, count, total)];
        let files: Vec<&Value> = members.iter().map(|m| &m["file"]).collect();
        if files != want.iter().map(|m| &m["file"]).collect::<Vec<_>>() {
            return Err(Error::Sweep(format!(
                "{}: its members are not part {i} of {count} of the sweep (expected {})",
                p.display(),
                want.iter().map(name).collect::<Vec<_>>().join(", ")
            )));
        }
        let sp = scores_path(&part_out(out, i, count));
        let s = read_scores(&sp)?;
        if s.members.len() != members.len() {
            return Err(Error::Sweep(format!(
                "{}: {} members' scores for {} members",
                sp.display(),
                s.members.len(),
                members.len()
            )));
        }
        match &labels {
            None => labels = Some((s.labels.clone(), s.classes, s.loss)),
            Some((l, c, loss)) if *l == s.labels && *c == s.classes && *loss == s.loss => {}
            Some(_) => {
                return Err(Error::Sweep(format!(
                    "{}: tested on other pictures than part 0 (different labels, classes or loss): the parts did not train on the same data",
                    sp.display()
                )));
            }
        }
        entries.extend(members);
        scores.extend(s.members);
    }
    let (labels, classes, loss) = labels.expect("at least one part");
    let include: Vec<bool> = entries.iter().map(|m| m["status"].as_str() != Some("diverged")).collect();
    let refs: Vec<&[f32]> = scores.iter().map(Vec::as_slice).collect();
    let ensemble = ensemble_of(&refs, &include, &labels, classes, loss);
    let manifest = super::outputs::manifest_of(entries, &ensemble)?;
    Ok(Gathered { manifest, manifest_path: super::outputs::manifest_path(out), ensemble, members: total, parts: count })
}
