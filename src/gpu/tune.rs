//! Every GEMM-shaped layer on its fastest kernel, found on the device the run is on (as
//! cuDNN's benchmark mode, Triton's autotune, MIOpen's find-db and CubeCL's autotune do).
//!
//! Before the first step, one training step of the model is run with every op recorded
//! (`GpuBackend::record_ops`); each distinct op shape (`OpKey`) then times its candidates
//! (`variants::candidates`: tile shapes, split-K of the weight gradients, the skinny GEMM)
//! by replaying the recorded dispatch (`time_op`: GPU timestamps where the adapter has them,
//! else wall clock around a submitted batch). The default is a candidate, and a challenger
//! must beat it by more than 2% to be chosen, so tuning never makes a layer slower than the
//! measurement can tell. A winner is checked against the default on the same inputs
//! (`validate_op`) before it is used.
//!
//! Tuning is bounded (`budget`: shapes left when it runs out keep the default, and the line
//! says so), shown (one line: how long, how many shapes, what won), and skipped when cached:
//! winners are kept in a file keyed by the adapter's name, vendor and device ids, driver,
//! backend and the kernel set's version, and the shape. A cached winner is validated again
//! and falls back to the default on any failure (a stale winner must not crash a launch, as
//! it did in CubeCL, whose cache keys only the device slot).
//!
//! The choice changes results (a different split of a sum adds in another order), so it is
//! recorded: `KernelSet` goes into the model file's metadata and the metrics log, and
//! `--kernels FILE` (that model file, or the JSON `gpu-train tune --save` writes) repeats a run
//! with exactly those kernels.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use web_time::Instant;

use super::GpuBackend;
use super::variants::{self, Choice, KERNEL_SET_VERSION, OpKey};
use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::network::{DeviceData, Members, Network};
use crate::train::{Epoch, run_steps};

/// A challenger must take at most this share of the default's time to be chosen.
const MARGIN: f64 = 0.98;
/// Largest difference a winner may show against the default, relative to the output's
/// largest value (a reordered sum in f32 stays far below it; a wrong kernel does not).
const TOLERANCE: f64 = 1e-4;
/// Each candidate is replayed until it has run this long (and at least `MIN_REPS` times).
const MIN_TIME: f64 = 0.02;
const MIN_REPS: usize = 2;
const MAX_REPS: usize = 50;

/// The device a choice was measured on: what the cache and a kernel set are keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceKey {
    pub adapter: String,
    pub vendor: u32,
    pub device: u32,
    pub driver: String,
    pub backend: String,
}

impl DeviceKey {
    pub fn of(gpu: &GpuBackend) -> DeviceKey {
        let i = gpu.adapter_info();
        DeviceKey {
            adapter: i.name.clone(),
            vendor: i.vendor,
            device: i.device,
            driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
            backend: format!("{:?}", i.backend),
        }
    }
}

/// One op shape's kernel, with what tuning measured (seconds per run; absent when the
/// choice came from a file or the default was kept without timing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    pub key: OpKey,
    pub choice: Choice,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_seconds: Option<f64>,
}

/// The kernels a run used: what `--kernels FILE` reads and a model file records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelSet {
    pub format: String,
    pub kernel_set: u32,
    pub device: DeviceKey,
    /// "tuned", "default" or the file it came from.
    pub source: String,
    pub choices: Vec<Chosen>,
}

const FORMAT: &str = "gpu-train kernels 1";

impl KernelSet {
    /// Reads a kernel set: the JSON `tune --save` writes, or a model file (.safetensors) that
    /// recorded one.
    pub fn read(path: &Path) -> Result<KernelSet> {
        let text = if path.extension().is_some_and(|e| e == "safetensors") {
            let meta = crate::modelfile::load(path, None)?.metadata;
            meta.get("kernels").cloned().ok_or_else(|| {
                Error::Config(format!(
                    "{}: the model file records no GPU kernels (trained on the CPU?)",
                    path.display()
                ))
            })?
        } else {
            std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?
        };
        let set: KernelSet = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: not a kernel set ({e})", path.display())))?;
        if set.format != FORMAT {
            return Err(Error::Config(format!("{}: format '{}', expected '{FORMAT}'", path.display(), set.format)));
        }
        Ok(set)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `--kernels`: what each op shape runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Kernels {
    /// Tuned on this device (cached), the default.
    Tuned,
    /// Today's kernels everywhere, untuned.
    Default,
    /// Exactly the choices of a kernel set file.
    File(PathBuf),
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Kernels, String> {
        Ok(match s {
            "tuned" => Kernels::Tuned,
            "default" => Kernels::Default,
            f => Kernels::File(PathBuf::from(f)),
        })
    }
}

/// How to tune.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    /// Tuning stops timing new shapes after this long (they keep the default).
    pub budget: Duration,
    /// The cache file; None: no cache (the browser keeps its own for the page session).
    pub cache: Option<PathBuf>,
    /// Time every shape anew, even where the cache has it.
    pub fresh: bool,
}

impl Default for TuneOptions {
    fn default() -> TuneOptions {
        TuneOptions { budget: Duration::from_secs(30), cache: default_cache(), fresh: false }
    }
}

/// `GPU_TRAIN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/gpu-train/kernels.json` (or under
/// `~/.cache`).
pub fn default_cache() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GPU_TRAIN_KERNEL_CACHE") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("gpu-train").join("kernels.json"))
}

/// The cache: winners by device, kernel-set version and shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cache {
    pub entries: Vec<CacheEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub device: DeviceKey,
    pub kernel_set: u32,
    pub chosen: Chosen,
}

impl Cache {
    /// The cache file's entries; a missing or unreadable file is an empty cache (tuning
    /// rebuilds it).
    pub fn load(path: &Path) -> Cache {
        std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }

    pub fn get(&self, device: &DeviceKey, key: &OpKey) -> Option<&Chosen> {
        self.entries
            .iter()
            .find(|e| e.kernel_set == KERNEL_SET_VERSION && &e.device == device && &e.chosen.key == key)
            .map(|e| &e.chosen)
    }

    pub fn put(&mut self, device: &DeviceKey, chosen: Chosen) {
        self.entries
            .retain(|e| !(e.kernel_set == KERNEL_SET_VERSION && &e.device == device && e.chosen.key == chosen.key));
        self.entries.push(CacheEntry { device: device.clone(), kernel_set: KERNEL_SET_VERSION, chosen });
    }

    pub fn forget(&mut self, device: &DeviceKey, key: &OpKey) {
        self.entries.retain(|e| !(e.kernel_set == KERNEL_SET_VERSION && &e.device == device && &e.chosen.key == key));
    }

    /// Written whole through a temporary file, so concurrent runs never read half a file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        crate::modelfile::write_atomic(path, text.as_bytes())
    }
}

/// What tuning did, for the line it prints and the run's record.
#[derive(Debug, Clone)]
pub struct TuneReport {
    pub set: KernelSet,
    /// How each of `set.choices` was made: "timed", "cached", "budget spent", ...
    pub how: Vec<&'static str>,
    pub seconds: f64,
    /// Shapes timed now, taken from the cache, and left on the default when the budget ran out.
    pub timed: usize,
    pub cached: usize,
    pub over_budget: usize,
    /// Cached or timed winners that failed validation and fell back to the default.
    pub rejected: Vec<String>,
}

impl TuneReport {
    /// One line: how long, how many shapes, what won where.
    pub fn line(&self) -> String {
        let changed: Vec<String> = self
            .set
            .choices
            .iter()
            .filter(|c| c.choice != variants::default_choice(&c.key))
            .map(|c| {
                let ratio = match (c.seconds, c.default_seconds) {
                    (Some(s), Some(d)) if d > 0.0 => format!(" {:.2}x", s / d),
                    _ => String::new(),
                };
                format!("{} {}{ratio}", describe(&c.key), c.choice.name())
            })
            .collect();
        let mut line = format!(
            "kernels: tuned {} op shapes in {:.2}s ({} timed, {} from the cache{}): ",
            self.set.choices.len(),
            self.seconds,
            self.timed,
            self.cached,
            if self.over_budget > 0 {
                format!(", {} left on the default: budget spent", self.over_budget)
            } else {
                String::new()
            }
        );
        if changed.is_empty() {
            line.push_str("the default kernel won everywhere");
        } else {
            line.push_str(&changed.join("; "));
        }
        for r in &self.rejected {
            line.push_str(&format!("; {r}"));
        }
        line
    }
}

/// "conv fwd 16x12544x25": an op shape in a few characters.
pub fn describe(key: &OpKey) -> String {
    let op = format!("{:?}", key.op)
        .replace("Conv", "conv ")
        .replace("Dense", "dense ")
        .replace("Forward", "fwd")
        .replace("BackwardInput", "bwd-input")
        .replace("BackwardWeight", "bwd-weight");
    let groups = if key.batches > 1 { format!("x{}", key.batches) } else { String::new() };
    format!("{op} {}x{}x{}{groups}", key.m, key.n, key.k)
}

/// Orders op shapes for tuning: first those whose default 64 x 64 output tile is idlest
/// (few rows or columns: a small layer, a weight gradient of few filters), where the other
/// candidates gain most; shapes that fill the tile last. Timing a shape costs about as many of
/// its own runs as it has candidates whatever its size, so when the budget runs out (a large
/// batch on a slow adapter) it has gone where it saves the most per second spent. Ties keep
/// their order.
pub fn by_idle_share(keys: &mut [OpKey]) {
    let tile = 4 * super::shaders::DEFAULT_TILE.ty;
    let used = |d: u32| d as f64 / (d.div_ceil(tile).max(1) * tile) as f64;
    let idle = |k: &OpKey| 1.0 - used(k.m) * used(k.n);
    keys.sort_by(|a, b| idle(b).total_cmp(&idle(a)));
}

/// The op shapes one training step of `members` at `batch` dispatches, recorded on a copy of
/// the network (its own buffers; the real one is untouched) for `time_op` to replay.
async fn record_step(
    gpu: &mut GpuBackend,
    members: &Members,
    data: &Dataset,
    batch: usize,
) -> Result<Network<GpuBackend>> {
    let n = batch.min(data.len()).max(1);
    let sample = data.select(&(0..n).collect::<Vec<_>>());
    let (params, state) = members.init();
    let dev = DeviceData::upload(gpu, &sample)?;
    let mut net = Network::array(gpu, members.clone(), n, &params, &state)?;
    let mut stats = gpu.alloc(2 * members.len())?;
    let mut perm = gpu.alloc_u32(n)?;
    gpu.upload_u32(&mut perm, &(0..n as u32).collect::<Vec<_>>())?;
    let e = Epoch { index: 0, n, batch: n, stepwise: false, data_seed: 1, augment: None, first_step: 0 };
    gpu.record_ops(true);
    let r = run_steps(gpu, &mut net, &dev, &perm, &mut stats, &e, 0..1);
    gpu.record_ops(false);
    r?;
    let _ = gpu.download(&stats, 1).await?;
    Ok(net)
}

/// Seconds per run of `choice` on `key`: one run after `time_op`'s warm-up (which also builds
/// the pipeline); where that took less than `MIN_TIME`, the better of it and the mean of
/// enough runs to fill `MIN_TIME`. A slow op (a software adapter's large layer) costs two
/// runs, and a candidate already 1.5 times the best so far is not timed further.
async fn time(gpu: &mut GpuBackend, key: &OpKey, choice: Choice, best: Option<f64>) -> Result<f64> {
    let once = gpu.time_op(key, choice, 1).await?;
    if once >= MIN_TIME || best.is_some_and(|b| once > 1.5 * b) {
        return Ok(once);
    }
    let reps = ((MIN_TIME / once.max(1e-7)).ceil() as usize).clamp(MIN_REPS, MAX_REPS);
    Ok(once.min(gpu.time_op(key, choice, reps).await?))
}

/// `tune` with the cache file `o.cache` read before and written after.
pub async fn tune(
    gpu: &mut GpuBackend,
    members: &Members,
    data: &Dataset,
    batch: usize,
    o: &TuneOptions,
) -> Result<TuneReport> {
    let mut cache = o.cache.as_deref().map(Cache::load).unwrap_or_default();
    let mut r = tune_with(gpu, members, data, batch, o.budget, o.fresh, &mut cache).await?;
    if let Some(path) = &o.cache
        && r.timed + r.rejected.len() > 0
        && let Err(e) = cache.save(path)
    {
        r.rejected.push(format!("the cache {} could not be written ({e})", path.display()));
    }
    Ok(r)
}

/// Tunes every op shape one training step of `members` at `batch` dispatches, sets the
/// winners on `gpu` and returns what was chosen; `cache` gives winners measured before on
/// this device and takes the new ones (the browser keeps one for the page session). `data`
/// gives the step its pictures (the time of a step does not depend on them).
pub async fn tune_with(
    gpu: &mut GpuBackend,
    members: &Members,
    data: &Dataset,
    batch: usize,
    budget: Duration,
    fresh: bool,
    cache: &mut Cache,
) -> Result<TuneReport> {
    let t0 = Instant::now();
    let device = DeviceKey::of(gpu);
    gpu.clear_choices();
    let net = record_step(gpu, members, data, batch).await?;
    let mut keys = gpu.recorded_ops();
    keys.sort();
    keys.dedup();
    by_idle_share(&mut keys);
    let (mut timed, mut cached, mut over_budget) = (0, 0, 0);
    let mut rejected = Vec::new();
    let mut choices = Vec::new();
    let mut how = Vec::new();
    for key in keys {
        let default = variants::default_choice(&key);
        let candidates = variants::candidates(&key);
        if candidates.len() < 2 {
            how.push("one candidate");
            choices.push(Chosen { key, choice: default, seconds: None, default_seconds: None });
            continue;
        }
        if !fresh && let Some(c) = cache.get(&device, &key).cloned() {
            // A cached winner runs only after it checks out again on this run's inputs (the
            // default needs no check: it is what runs anyway).
            let verdict = if c.choice == default { Ok(()) } else { check(gpu, &key, c.choice).await };
            match verdict {
                Ok(()) => {
                    cached += 1;
                    gpu.set_choice(key.clone(), c.choice);
                    how.push("cached");
                    choices.push(c);
                    continue;
                }
                Err(why) => {
                    rejected.push(format!("cached {} for {} failed ({why}): default", c.choice.name(), describe(&key)));
                    cache.forget(&device, &key);
                    how.push("cached, rejected");
                    choices.push(Chosen { key, choice: default, seconds: None, default_seconds: None });
                    continue;
                }
            }
        }
        if t0.elapsed() > budget {
            over_budget += 1;
            how.push("budget spent");
            choices.push(Chosen { key, choice: default, seconds: None, default_seconds: None });
            continue;
        }
        timed += 1;
        let base = time(gpu, &key, default, None).await?;
        let mut best = (default, base);
        for &c in &candidates[1..] {
            // The budget ends a shape's search too: the best so far wins.
            if t0.elapsed() > budget {
                break;
            }
            // A candidate that does not build or run on this device is no candidate.
            if let Ok(s) = time(gpu, &key, c, Some(best.1)).await
                && s < best.1
            {
                best = (c, s);
            }
        }
        let mut chosen = Chosen { key: key.clone(), choice: default, seconds: Some(base), default_seconds: Some(base) };
        if best.0 != default && best.1 <= MARGIN * base {
            match check(gpu, &key, best.0).await {
                Ok(()) => {
                    chosen.choice = best.0;
                    chosen.seconds = Some(best.1);
                }
                Err(why) => rejected.push(format!("{} for {} failed ({why}): default", best.0.name(), describe(&key))),
            }
        }
        if chosen.choice != default {
            gpu.set_choice(key, chosen.choice);
        }
        cache.put(&device, chosen.clone());
        how.push("timed");
        choices.push(chosen);
    }
    drop(net);
    let set =
        KernelSet { format: FORMAT.into(), kernel_set: KERNEL_SET_VERSION, device, source: "tuned".into(), choices };
    Ok(TuneReport { set, how, seconds: t0.elapsed().as_secs_f64(), timed, cached, over_budget, rejected })
}

/// A winner agrees with the default on the recorded inputs.
async fn check(gpu: &mut GpuBackend, key: &OpKey, choice: Choice) -> std::result::Result<(), String> {
    match gpu.validate_op(key, choice).await {
        Ok(d) if d <= TOLERANCE => Ok(()),
        Ok(d) => Err(format!("differs from the default by {d:.1e} of the output's largest value")),
        Err(e) => Err(e.to_string()),
    }
}

/// Sets exactly the choices of `set` (`--kernels FILE`): each must run on this device, or
/// the run stops (it asked to repeat those kernels). Returns notes to print.
pub fn apply(gpu: &mut GpuBackend, set: &KernelSet) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let here = DeviceKey::of(gpu);
    if set.device != here {
        notes.push(format!(
            "note: these kernels were chosen on {} ({}, {}), this is {} ({}, {}): results may differ from that run's",
            set.device.adapter, set.device.backend, set.device.driver, here.adapter, here.backend, here.driver
        ));
    }
    if set.kernel_set != KERNEL_SET_VERSION {
        return Err(Error::Config(format!(
            "the kernel set was written by kernel-set version {}, this program has version {KERNEL_SET_VERSION}; its kernels are not these",
            set.kernel_set
        )));
    }
    gpu.clear_choices();
    for c in &set.choices {
        if !variants::candidates(&c.key).contains(&c.choice) {
            return Err(Error::Config(format!("{} is not a kernel for {}", c.choice.name(), describe(&c.key))));
        }
        gpu.set_choice(c.key.clone(), c.choice);
    }
    Ok(notes)
}

/// The kernel set of the defaults, for a run with `--kernels default` (recorded too: the
/// run says which kernels it used).
pub fn defaults(gpu: &GpuBackend) -> KernelSet {
    KernelSet {
        format: FORMAT.into(),
        kernel_set: KERNEL_SET_VERSION,
        device: DeviceKey::of(gpu),
        source: "default".into(),
        choices: Vec::new(),
    }
}

/// The set `apply` was given, as the run records it.
pub fn from_file(set: KernelSet, path: &Path) -> KernelSet {
    KernelSet { source: path.display().to_string(), ..set }
}
