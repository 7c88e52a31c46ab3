//! Model files and checkpoints: safetensors, named like `torch.nn.Sequential`.
//!
//! Each layer-list entry takes the next index, parameterless ones included, and a layer's
//! tensors are `{index}.weight` / `{index}.bias` (batch norm adds `running_mean`,
//! `running_var` and torch's `num_batches_tracked`). Conv weights are (out, in, kh, kw), dense
//! weights (out, in), inputs pixel/255. So a `torch.nn.Sequential` of the same layers loads
//! our files with `strict=True`, and we load its `save_file(model.state_dict())`.
//!
//! The metadata carries the model file (architecture and recipe, TOML), the normalisation,
//! the final metrics and how the run went. A checkpoint adds the optimizer state, the best
//! weights so far, the weight average if the recipe keeps one, and the scheduler's position
//! (`optimizer.m.*`, `optimizer.v.*`, `best.*`, `average.*`, `checkpoint` metadata). Files are
//! written to a temporary name and renamed into place, so a killed run never leaves a
//! half-written file. An array's checkpoint (models trained side by side) holds the network
//! they make (`Arch::fused`: its tensors K times as long) and each member's seed, recipe and
//! progress (`array` metadata).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::spec::ModelSpec;
use crate::model::{Arch, TensorInfo, presets};

pub const FORMAT: &str = "gpu-train/1";

/// Where the scheduler stood after a completed epoch: enough to continue the run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub global_step: u32,
    pub seed: u64,
    /// Early stopping: best monitored value, its epoch (1-based) and epochs since.
    pub best_value: Option<f64>,
    pub best_epoch: usize,
    pub wait: usize,
    /// Seconds of training so far (for time-to-accuracy across resumed runs).
    pub seconds: f64,
    /// The seed of the batch order and augmentation (absent in older files: `seed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_seed: Option<u64>,
}

/// How a member of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Training,
    /// Ran every epoch.
    Finished,
    /// Early stopping's patience ran out.
    StoppedEarly,
    /// Its loss became NaN or infinite.
    Diverged,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Training => "training",
            Status::Finished => "finished",
            Status::StoppedEarly => "stopped_early",
            Status::Diverged => "diverged",
        }
    }
}

/// One member of a run: who it is (seed, recipe, the swept values its file name carries) and
/// where its early stopping stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberProgress {
    pub seed: u64,
    pub spec: ModelSpec,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
    pub best_value: Option<f64>,
    pub best_epoch: usize,
    pub wait: usize,
    pub status: Status,
    /// The epoch (1-based) it stopped training in, if it has.
    #[serde(default)]
    pub ended: usize,
}

/// An array's checkpoint metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrayState {
    pub members: Vec<MemberProgress>,
}

/// Everything in a checkpoint beyond the model itself.
#[derive(Debug, Clone)]
pub struct TrainState {
    pub progress: Progress,
    /// An array's members (None: a model of its own, whose early stopping is in `progress`).
    pub array: Option<ArrayState>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// The weights each model keeps (its best epoch's, or an array member's last finite ones).
    pub best: Option<(Vec<f32>, Vec<f32>)>,
    /// The recipe's weight average (`ema`): parameters and batch-norm statistics.
    pub average: Option<(Vec<f32>, Vec<f32>)>,
}

/// A model read from a file.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub arch: Arch,
    pub params: Vec<f32>,
    pub state: Vec<f32>,
    pub metadata: HashMap<String, String>,
    pub train: Option<TrainState>,
}

impl Loaded {
    /// The metrics recorded at save time, if any.
    pub fn metrics(&self) -> Option<serde_json::Value> {
        self.metadata.get("metrics").and_then(|m| serde_json::from_str(m).ok())
    }

    /// The names of the model's classes, in output order: the `classes` metadata (a JSON list
    /// of strings, written when the model was trained on a data set with named classes), else
    /// "0", "1", ...
    pub fn class_names(&self) -> Vec<String> {
        let k = self.arch.classes();
        self.metadata
            .get("classes")
            .and_then(|c| serde_json::from_str::<Vec<String>>(c).ok())
            .filter(|names| names.len() == k)
            .unwrap_or_else(|| (0..k).map(|i| i.to_string()).collect())
    }
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tensors of one flat buffer, each as (name, shape, little-endian bytes).
fn named(prefix: &str, infos: &[TensorInfo], flat: &[f32], out: &mut Vec<(String, Vec<usize>, Dtype, Vec<u8>)>) {
    for t in infos {
        out.push((format!("{prefix}{}", t.name), t.shape.clone(), Dtype::F32, bytes_of(&flat[t.range()])));
    }
}

/// Writes a model (and, for a checkpoint, its training state) atomically.
pub fn save(
    path: &Path,
    arch: &Arch,
    params: &[f32],
    state: &[f32],
    metadata: HashMap<String, String>,
    train: Option<&TrainState>,
) -> Result<()> {
    write_atomic(path, &encode(path, arch, params, state, metadata, train)?)
}

/// A model (and, for a checkpoint, its training state) as the bytes of a safetensors file;
/// `path` names it in errors.
pub fn encode(
    path: &Path,
    arch: &Arch,
    params: &[f32],
    state: &[f32],
    mut metadata: HashMap<String, String>,
    train: Option<&TrainState>,
) -> Result<Vec<u8>> {
    let mut tensors = Vec::new();
    named("", &arch.params, params, &mut tensors);
    named("", &arch.state, state, &mut tensors);
    for t in &arch.state {
        if t.name.ends_with(".running_mean") {
            let name = t.name.replace(".running_mean", ".num_batches_tracked");
            tensors.push((name, vec![], Dtype::I64, 0i64.to_le_bytes().to_vec()));
        }
    }
    if let Some(ts) = train {
        if !ts.m.is_empty() {
            named("optimizer.m.", &arch.params, &ts.m, &mut tensors);
        }
        if !ts.v.is_empty() {
            named("optimizer.v.", &arch.params, &ts.v, &mut tensors);
        }
        if let Some((bp, bs)) = &ts.best {
            named("best.", &arch.params, bp, &mut tensors);
            named("best.", &arch.state, bs, &mut tensors);
        }
        if let Some((ap, as_)) = &ts.average {
            named("average.", &arch.params, ap, &mut tensors);
            named("average.", &arch.state, as_, &mut tensors);
        }
        let progress = serde_json::to_string(&ts.progress).map_err(|e| Error::model(path, e.to_string()))?;
        metadata.insert("checkpoint".into(), progress);
        if let Some(a) = &ts.array {
            let array = serde_json::to_string(a).map_err(|e| Error::model(path, e.to_string()))?;
            metadata.insert("array".into(), array);
        }
    }
    metadata.insert("format".into(), FORMAT.into());
    let spec =
        toml::to_string(&arch.spec).map_err(|e| Error::model(path, format!("cannot encode the architecture: {e}")))?;
    metadata.insert("model".into(), spec);
    let views = tensors
        .iter()
        .map(|(name, shape, dtype, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::model(path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::model(path, e.to_string()))
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Reads a model file. Without `arch`, the architecture comes from the file's metadata (files
/// we wrote); a file from elsewhere (e.g. PyTorch) needs it given.
pub fn load(path: &Path, arch: Option<ModelSpec>) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, path, arch)
}

/// A model file's bytes (`load`, from memory: a browser's file); `path` names it in errors.
pub fn decode(bytes: &[u8], path: &Path, arch: Option<ModelSpec>) -> Result<Loaded> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::model(path, format!("not a valid safetensors file ({e})")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| Error::model(path, e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let spec = match arch {
        Some(spec) => spec,
        None => match metadata.get("model") {
            Some(text) => presets::parse(text, &path.display().to_string())?,
            None => {
                return Err(Error::model(
                    path,
                    "no architecture in its metadata (not written by gpu-train?); pass --arch to say what it holds",
                ));
            }
        },
    };
    let array: Option<ArrayState> = match metadata.get("array") {
        Some(text) => {
            Some(serde_json::from_str(text).map_err(|e| Error::model(path, format!("bad array metadata: {e}")))?)
        }
        None => None,
    };
    let arch = match &array {
        Some(a) => Arch::fused(spec, a.members.len())?,
        None => Arch::new(spec)?,
    };
    let get = |prefix: &str, infos: &[TensorInfo], len: usize, required: bool| -> Result<Option<Vec<f32>>> {
        let mut flat = vec![0f32; len];
        for t in infos {
            let name = format!("{prefix}{}", t.name);
            let view = match st.tensor(&name) {
                Ok(v) => v,
                Err(_) if !required => return Ok(None),
                Err(_) => {
                    return Err(Error::model(
                        path,
                        format!(
                            "tensor '{name}' (shape {:?}) is missing: the file does not match architecture '{}'",
                            t.shape,
                            arch.name()
                        ),
                    ));
                }
            };
            if view.shape() != t.shape.as_slice() {
                return Err(Error::model(
                    path,
                    format!(
                        "tensor '{name}' has shape {:?}, architecture '{}' needs {:?}",
                        view.shape(),
                        arch.name(),
                        t.shape
                    ),
                ));
            }
            if view.dtype() != Dtype::F32 {
                return Err(Error::model(
                    path,
                    format!("tensor '{name}' is {:?}; only F32 is supported", view.dtype()),
                ));
            }
            for (dst, src) in flat[t.range()].iter_mut().zip(view.data().chunks_exact(4)) {
                *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            }
        }
        Ok(Some(flat))
    };
    let params = get("", &arch.params, arch.n_params, true)?.unwrap_or_default();
    let state = get("", &arch.state, arch.n_state, true)?.unwrap_or_default();
    // Strict, like torch's load_state_dict: a tensor we do not expect means a mismatch.
    let known: std::collections::HashSet<&str> =
        arch.params.iter().chain(&arch.state).map(|t| t.name.as_str()).collect();
    for name in st.names() {
        let ours = known.contains(name)
            || name.ends_with(".num_batches_tracked")
            || name.starts_with("optimizer.")
            || name.starts_with("best.")
            || name.starts_with("average.");
        if !ours {
            return Err(Error::model(
                path,
                format!("unexpected tensor '{name}': the file does not match architecture '{}'", arch.name()),
            ));
        }
    }
    let train = match metadata.get("checkpoint") {
        Some(text) => {
            let progress: Progress =
                serde_json::from_str(text).map_err(|e| Error::model(path, format!("bad checkpoint metadata: {e}")))?;
            let m = get("optimizer.m.", &arch.params, arch.n_params, false)?.unwrap_or_default();
            let v = get("optimizer.v.", &arch.params, arch.n_params, false)?.unwrap_or_default();
            // A full model under a prefix (best epoch, weight average): parameters and statistics.
            let model_at = |prefix: &str| -> Result<Option<(Vec<f32>, Vec<f32>)>> {
                Ok(
                    match (
                        get(prefix, &arch.params, arch.n_params, false)?,
                        get(prefix, &arch.state, arch.n_state, false)?,
                    ) {
                        (Some(p), Some(s)) => Some((p, s)),
                        _ => None,
                    },
                )
            };
            let (best, average) = (model_at("best.")?, model_at("average.")?);
            Some(TrainState { progress, array, m, v, best, average })
        }
        None => None,
    };
    Ok(Loaded { arch, params, state, metadata, train })
}

/// The checkpoint that goes with a model file: `runs/cnn4.safetensors` ->
/// `runs/cnn4.ckpt.safetensors`.
pub fn checkpoint_path(model: &Path) -> PathBuf {
    model.with_extension("ckpt.safetensors")
}

/// The metrics log beside a model file: `runs/cnn4.metrics.jsonl`.
pub fn metrics_path(model: &Path) -> PathBuf {
    model.with_extension("metrics.jsonl")
}
