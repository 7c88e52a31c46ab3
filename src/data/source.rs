//! `--data PATH`: any image-classification data set, recognised by what is there.
//!
//! In order: the four IDX files of MNIST and its kin; CIFAR-10 or CIFAR-100 binary batch
//! files (`cifar`); Hugging Face Parquet or WebDataset tar shards, one file or a folder of
//! them (`records`); a folder per class, either split (`PATH/train/<class>/*` and
//! `PATH/test/<class>/*`, or `val/` or `validation/`) or not (`PATH/<class>/*`, of which
//! `--val-split` holds out a share as the test set, drawn with the run's seed). Whatever the
//! source, images are brought to the model's input shape: channels converted and, when the
//! size differs, resized by `--resize`. Folders of pictures are decoded once and cached
//! (`cache`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::cache::{self, Header, Packed};
use super::folder::{self, Listing};
#[cfg(not(target_arch = "wasm32"))]
use super::records;
use super::{DataInfo, Dataset, Resize, cifar};
use crate::error::{Error, Result};
use crate::rng;

/// The share of a single folder of classes held out as the test set when `--val-split` is
/// not given.
pub const DEFAULT_VAL_SPLIT: f32 = 0.2;

/// How to load a data set for a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The model's input (channels, height, width).
    pub shape: [usize; 3],
    pub resize: Resize,
    /// A single folder of classes: the share held out as the test set.
    pub val_split: Option<f32>,
    /// The run's seed (draws that split).
    pub seed: u64,
    /// Leave pictures that do not decode out (listed) instead of stopping.
    pub skip_bad: bool,
    /// Read and write the packed cache of decoded pictures.
    pub cache: bool,
    pub cache_dir: Option<PathBuf>,
    /// Show a progress bar while decoding (on a terminal).
    pub progress: bool,
}

impl LoadOptions {
    pub fn new(shape: [usize; 3]) -> LoadOptions {
        LoadOptions {
            shape,
            resize: Resize::default(),
            val_split: None,
            seed: 1,
            skip_bad: false,
            cache: true,
            cache_dir: None,
            progress: false,
        }
    }
}

/// A loaded data set: both splits, where they came from, and what loading it found worth
/// saying (decoding time, the cache, ignored and skipped files), for the caller to print.
#[derive(Debug, Clone)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
    pub info: DataInfo,
    pub notes: Vec<String>,
}

/// Loads the data set at `path` for a model whose input is `o.shape`.
pub fn load(path: &Path, o: &LoadOptions) -> Result<Splits> {
    let mut notes = Vec::new();
    let mut s = load_noting(path, o, &mut notes)?;
    s.notes = notes;
    Ok(s)
}

fn load_noting(path: &Path, o: &LoadOptions, notes: &mut Vec<String>) -> Result<Splits> {
    if !path.exists() {
        return Err(Error::Data(format!("{}: no such file or folder", path.display())));
    }
    #[cfg(not(target_arch = "wasm32"))]
    if path.is_file()
        && let Some((kind, shards)) = records::detect(path)?
    {
        return records::load(path, kind, shards, o, notes);
    }
    if !path.is_dir() {
        return Err(Error::Data(format!(
            "{}: --data takes a folder (of IDX files, CIFAR batch files, Parquet or WebDataset shards, or a folder per class), a .parquet file or a .tar file",
            path.display()
        )));
    }
    let info = |source: &str, classes: &[String], digits| DataInfo {
        source: source.into(),
        path: path.display().to_string(),
        classes: classes.to_vec(),
        resize: None,
        digits,
    };
    if super::has_idx(path) {
        let (train, test) = super::load_dir(path)?;
        let info = info("idx", &train.classes, true);
        return adapt(train, test, o, info);
    }
    if let Some(layout) = cifar::detect(path) {
        let (train, test) = cifar::load(&layout)?;
        let info = info(layout.name(), &train.classes, false);
        return adapt(train, test, o, info);
    }
    #[cfg(not(target_arch = "wasm32"))]
    if let Some((kind, shards)) = records::detect(path)? {
        return records::load(path, kind, shards, o, notes);
    }
    let test_dir = ["test", "val", "validation"].iter().map(|d| path.join(d)).find(|d| d.is_dir());
    let (train, test) = match (path.join("train"), test_dir) {
        (train, Some(test)) if train.is_dir() => {
            let (tr, te) = (folder::list(&train)?, folder::list(&test)?);
            same_classes(&tr, &te, &train, &test)?;
            let (mut train, test) = decode_cached(path, &tr, Some(&te), o, notes)?;
            // Class folders come in order; a fixed shuffle makes `--limit` and the recipe's
            // validation share draw from every class.
            let perm = rng::epoch_permutation(0, 0, train.len());
            train = train.select(&perm.iter().map(|&i| i as usize).collect::<Vec<_>>());
            (train, test)
        }
        (train, None) if train.is_dir() => {
            return Err(Error::Data(format!(
                "{}: has a train/ folder but no test/, val/ or validation/ beside it; add one, or point --data at train/ and use --val-split",
                path.display()
            )));
        }
        _ => {
            let listing = folder::list(path)?;
            let split = o.val_split.unwrap_or(DEFAULT_VAL_SPLIT);
            if !(split > 0.0 && split < 1.0) {
                return Err(Error::Config(format!("--val-split must be a fraction in (0, 1), got {split}")));
            }
            if o.val_split.is_none() {
                notes.push(format!(
                    "data: one folder per class and no test/ folder: holding out {:.0}% as the test set (--val-split)",
                    100.0 * split
                ));
            }
            let (all, _) = decode_cached(path, &listing, None, o, notes)?;
            split_by_seed(all, split, o.seed, path)?
        }
    };
    // Pictures of any size went through the resize rule (those of the input's size unchanged).
    let mut info = info("folder", &train.classes, false);
    info.resize = Some(o.resize);
    Ok(Splits { train, test, info, notes: Vec::new() })
}

/// A folder of pictures held in memory: files by their path relative to the folder chosen
/// (a browser's folder picker gives `photos/train/cat/1.png`; a folder of the same name at the
/// top of every path is taken to be the chosen one), under the same rules as a folder on disk:
/// `train/` and `test/` (or `val/`, `validation/`) of class folders, or class folders alone
/// of which `o.val_split` is held out by `o.seed`; hidden files ignored, pictures by extension.
pub fn load_files(files: &[(String, Vec<u8>)], name: &str, o: &LoadOptions) -> Result<Splits> {
    let mut paths: Vec<(Vec<&str>, usize)> = files
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (p.split('/').filter(|c| !c.is_empty()).collect::<Vec<_>>(), i))
        .filter(|(c, _)| !c.is_empty() && !c.iter().any(|c| c.starts_with('.')))
        .collect();
    if paths.is_empty() {
        return Err(Error::Data(format!("{name}: no files")));
    }
    let first = paths[0].0[0];
    if paths.iter().all(|(c, _)| c.len() > 2 && c[0] == first)
        && !["train", "test", "val", "validation"].contains(&first)
    {
        paths.iter_mut().for_each(|(c, _)| {
            c.remove(0);
        });
    }
    // The class folders under `root` (a path prefix) and their pictures.
    // Class names, and each picture as (file index, label).
    type Classes = (Vec<String>, Vec<(usize, u32)>);
    let listing = |root: &[&str]| -> Result<Classes> {
        let under: Vec<&(Vec<&str>, usize)> =
            paths.iter().filter(|(c, _)| c.len() > root.len() + 1 && c.starts_with(root)).collect();
        let mut classes: Vec<String> = under.iter().map(|(c, _)| c[root.len()].to_string()).collect();
        classes.sort();
        classes.dedup();
        if classes.is_empty() {
            return Err(Error::Data(format!(
                "{name}/{}: no class folders (expected one folder of pictures per class)",
                root.join("/")
            )));
        }
        let mut picked: Vec<(String, usize, u32)> = under
            .iter()
            .filter(|(c, _)| folder::is_picture(Path::new(c[c.len() - 1])))
            .map(|(c, i)| (c.join("/"), *i, classes.binary_search(&c[root.len()].to_string()).unwrap_or(0) as u32))
            .collect();
        picked.sort();
        for (k, class) in classes.iter().enumerate() {
            if !picked.iter().any(|p| p.2 == k as u32) {
                return Err(Error::Data(format!(
                    "{name}/{}: no pictures in this class folder",
                    [root, &[class]].concat().join("/")
                )));
            }
        }
        Ok((classes, picked.into_iter().map(|(_, i, l)| (i, l)).collect()))
    };
    let decode = |list: &[(usize, u32)]| -> Result<Dataset> {
        let mut images = Vec::with_capacity(list.len() * o.shape.iter().product::<usize>());
        let mut labels = Vec::with_capacity(list.len());
        for &(i, label) in list {
            match folder::decode_bytes(&files[i].1, o.shape, o.resize) {
                Ok(px) => {
                    images.extend_from_slice(&px);
                    labels.push(label);
                }
                Err(_) if o.skip_bad => {}
                Err(why) => return Err(Error::Image { path: files[i].0.clone().into(), reason: why }),
            }
        }
        let [c, h, w] = o.shape;
        Ok(Dataset { images, labels, channels: c, height: h, width: w, classes: Vec::new() })
    };
    let has = |d: &str| paths.iter().any(|(c, _)| c.len() > 2 && c[0] == d);
    let test_dir = ["test", "val", "validation"].into_iter().find(|d| has(d));
    let (mut train, mut test, classes) = match test_dir {
        Some(t) if has("train") => {
            let ((tr_classes, tr), (te_classes, te)) = (listing(&["train"])?, listing(&[t])?);
            if tr_classes != te_classes {
                return Err(Error::Data(format!("{name}: the class folders of train/ and {t}/ differ")));
            }
            let mut train = decode(&tr)?;
            // As on disk: a fixed shuffle, so that a limit and validation draw from every class.
            let perm = rng::epoch_permutation(0, 0, train.len());
            train = train.select(&perm.iter().map(|&i| i as usize).collect::<Vec<_>>());
            (train, decode(&te)?, tr_classes)
        }
        _ => {
            let (classes, all) = listing(&[])?;
            let split = o.val_split.unwrap_or(DEFAULT_VAL_SPLIT);
            if !(split > 0.0 && split < 1.0) {
                return Err(Error::Config(format!("the held-out share must be a fraction in (0, 1), got {split}")));
            }
            let (train, test) = split_by_seed(decode(&all)?, split, o.seed, Path::new(name))?;
            (train, test, classes)
        }
    };
    train.classes = classes.clone();
    test.classes = classes.clone();
    let info = DataInfo { source: "folder".into(), path: name.into(), classes, resize: Some(o.resize), digits: false };
    Ok(Splits { train, test, info, notes: Vec::new() })
}

/// Train and test class folders must name the same classes.
fn same_classes(tr: &Listing, te: &Listing, train: &Path, test: &Path) -> Result<()> {
    if tr.classes == te.classes {
        return Ok(());
    }
    let only = |a: &Listing, b: &Listing| -> String {
        let v: Vec<&str> = a.classes.iter().filter(|c| !b.classes.contains(c)).map(String::as_str).take(10).collect();
        if v.is_empty() { "-".into() } else { v.join(", ") }
    };
    Err(Error::Data(format!(
        "the class folders of {} and {} differ (only in the first: {}; only in the second: {}); both need the same classes",
        train.display(),
        test.display(),
        only(tr, te),
        only(te, tr)
    )))
}

/// A single folder's pictures split into training and test sets by a permutation drawn from
/// the run's seed.
pub(super) fn split_by_seed(all: Dataset, share: f32, seed: u64, root: &Path) -> Result<(Dataset, Dataset)> {
    if all.len() < 2 {
        return Err(Error::Data(format!(
            "{}: at least two pictures are needed to hold some out as a test set",
            root.display()
        )));
    }
    let perm: Vec<usize> = rng::epoch_permutation(seed, 0x5b1, all.len()).iter().map(|&i| i as usize).collect();
    let test_len = ((all.len() as f64 * share as f64).round() as usize).clamp(1, all.len() - 1);
    let cut = all.len() - test_len;
    Ok((all.select(&perm[..cut]), all.select(&perm[cut..])))
}

pub(super) fn bar(enabled: bool, len: usize) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("decoding [{bar:30}] {pos}/{len} pictures, {per_sec}, ETA {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Decodes a folder listing (and, for a split layout, the test listing), or reads it from the
/// cache when the pictures have not changed since it was written.
fn decode_cached(
    root: &Path,
    train: &Listing,
    test: Option<&Listing>,
    o: &LoadOptions,
    notes: &mut Vec<String>,
) -> Result<(Dataset, Dataset)> {
    let files: Vec<&(PathBuf, u32)> = train.files.iter().chain(test.iter().flat_map(|t| t.files.iter())).collect();
    let ignored = train.ignored.len() + test.map_or(0, |t| t.ignored.len());
    if ignored > 0 {
        let first = train.ignored.iter().chain(test.iter().flat_map(|t| t.ignored.iter())).next();
        notes.push(format!(
            "note: ignored {ignored} file(s) that are not pictures by their extension (e.g. {})",
            first.map_or_else(String::new, |p| p.display().to_string())
        ));
    }
    let len = o.shape.iter().product::<usize>();
    crate::memory::check_host(
        &format!("the {} decoded pictures ({}x{}x{} bytes each)", files.len(), o.shape[0], o.shape[1], o.shape[2]),
        (files.len() * len) as u64,
        "use a smaller input size in the model file or fewer pictures",
    )?;
    let key = if o.cache { Some(cache::key(root, &files, o.shape, o.resize)?) } else { None };
    let (packed, classes) = cached(root, key, o, notes, || {
        let progress = bar(o.progress, files.len());
        let tr = folder::decode_all(&train.files, o.shape, o.resize, o.skip_bad, &progress)?;
        let te = match test {
            Some(t) => folder::decode_all(&t.files, o.shape, o.resize, o.skip_bad, &progress)?,
            None => folder::Decoded::default(),
        };
        progress.finish_and_clear();
        if tr.labels.is_empty() || (test.is_some() && te.labels.is_empty()) {
            return Err(Error::Data(format!("{}: no picture could be decoded", root.display())));
        }
        let skipped = tr.skipped.into_iter().chain(te.skipped).collect();
        Ok((Packed { train: (tr.images, tr.labels), test: (te.images, te.labels) }, train.classes.clone(), skipped))
    })?;
    let make = |split| Dataset::of_shape(split, o.shape, classes.clone());
    Ok((make(packed.train), make(packed.test)))
}

/// What decoding a data set gives: both splits' pictures, the class names, and the pictures
/// left out (file or record, why).
pub(super) type DecodedSet = (Packed, Vec<String>, Vec<(PathBuf, String)>);

/// Both splits' decoded pictures and the class names: read from `root`'s cache written under
/// `key` (None: no cache) or, when there is none that matches, made by `decode` (which also
/// gives the pictures it left out) and cached. Says which in `notes`.
pub(super) fn cached(
    root: &Path,
    key: Option<String>,
    o: &LoadOptions,
    notes: &mut Vec<String>,
    decode: impl FnOnce() -> Result<DecodedSet>,
) -> Result<(Packed, Vec<String>)> {
    // A single file's cache goes beside it, named after it.
    let dir = if root.is_file() { root.parent().unwrap_or(Path::new(".")) } else { root };
    let cache_file = key
        .and_then(|key| cache::location(dir, o.cache_dir.as_deref()).map(|loc| (cache::file(&loc, root, &key), key)));
    if let Some(((path, _), key)) = &cache_file {
        let t = Instant::now();
        match cache::read(path, key) {
            Ok(Some((header, packed))) => {
                report_skipped(&header.skipped, o.skip_bad, true, notes)?;
                notes.push(format!(
                    "data: {} pictures in {} classes from {}, read from the cache {} in {:.2}s",
                    header.train + header.test,
                    header.classes.len(),
                    root.display(),
                    path.display(),
                    t.elapsed().as_secs_f64()
                ));
                return Ok((packed, header.classes));
            }
            Ok(None) => {}
            Err(why) => {
                notes.push(format!("note: the cache {} does not match its data ({why}); rebuilding it", path.display()))
            }
        }
    }
    let t = Instant::now();
    let (packed, classes, skipped) = decode()?;
    report_skipped(&skipped, o.skip_bad, false, notes)?;
    let mut where_cached = String::new();
    if let Some(((path, prefix), key)) = &cache_file {
        let header = Header {
            key: key.clone(),
            shape: o.shape,
            train: packed.train.1.len(),
            test: packed.test.1.len(),
            classes: classes.clone(),
            skipped,
            crc32: 0,
        };
        match cache::write(path, prefix, header, &packed) {
            Ok(()) => where_cached = format!("; cached in {}", path.display()),
            Err(e) => notes.push(format!("note: could not write the cache ({e}); the next run decodes again")),
        }
    }
    notes.push(format!(
        "data: decoded {} pictures in {} classes from {} in {:.1}s on {} thread(s){where_cached}",
        packed.train.1.len() + packed.test.1.len(),
        classes.len(),
        root.display(),
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    ));
    Ok((packed, classes))
}

/// Lists the pictures left out with --skip-bad; without it, a cached record of a bad picture
/// is the same error as decoding it.
fn report_skipped(skipped: &[(PathBuf, String)], skip_bad: bool, cached: bool, notes: &mut Vec<String>) -> Result<()> {
    let Some((first, why)) = skipped.first() else { return Ok(()) };
    if !skip_bad {
        return Err(Error::Image {
            path: first.clone(),
            reason: format!("{why} (pass --skip-bad to leave unreadable pictures out)"),
        });
    }
    let from = if cached { " (as recorded in the cache)" } else { "" };
    notes.push(format!("note: skipped {} picture(s) that could not be decoded{from}:", skipped.len()));
    for (p, why) in skipped {
        notes.push(format!("  {}: {why}", p.display()));
    }
    Ok(())
}

/// IDX splits (as `--data-dir` names them) brought to the model's input shape.
pub fn from_idx(train: Dataset, test: Dataset, dir: &Path, digits: bool, o: &LoadOptions) -> Result<Splits> {
    let info = DataInfo {
        source: "idx".into(),
        path: dir.display().to_string(),
        classes: train.classes.clone(),
        resize: None,
        digits,
    };
    adapt(train, test, o, info)
}

/// IDX or CIFAR images brought to the model's input shape, if theirs differs.
fn adapt(train: Dataset, test: Dataset, o: &LoadOptions, mut info: DataInfo) -> Result<Splits> {
    let convert = |ds: Dataset| -> Result<Dataset> {
        if ds.shape() == o.shape {
            return Ok(ds);
        }
        crate::memory::check_host(
            &format!("{} images converted to {:?}", ds.len(), o.shape),
            (ds.len() * o.shape.iter().product::<usize>()) as u64,
            "use a smaller input size in the model file",
        )?;
        let images: Vec<u8> = (0..ds.len())
            .into_par_iter()
            .flat_map_iter(|i| folder::to_input(&as_picture(&ds, i), o.shape, o.resize))
            .collect();
        Ok(Dataset { images, channels: o.shape[0], height: o.shape[1], width: o.shape[2], ..ds })
    };
    if (train.height, train.width) != (o.shape[1], o.shape[2]) {
        info.resize = Some(o.resize);
    }
    Ok(Splits { train: convert(train)?, test: convert(test)?, info, notes: Vec::new() })
}

/// Image `i` of a data set as a picture (planar bytes to the image crate's interleaved ones).
fn as_picture(ds: &Dataset, i: usize) -> image::DynamicImage {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let img = ds.image(i);
    let mut px = vec![0u8; c * h * w];
    for ch in 0..c {
        for p in 0..h * w {
            px[p * c + ch] = img[ch * h * w + p];
        }
    }
    let (w, h) = (w as u32, h as u32);
    let pic = match c {
        1 => image::GrayImage::from_raw(w, h, px).map(image::DynamicImage::ImageLuma8),
        2 => image::GrayAlphaImage::from_raw(w, h, px).map(image::DynamicImage::ImageLumaA8),
        3 => image::RgbImage::from_raw(w, h, px).map(image::DynamicImage::ImageRgb8),
        _ => image::RgbaImage::from_raw(w, h, px).map(image::DynamicImage::ImageRgba8),
    };
    pic.unwrap_or_else(|| image::DynamicImage::new_luma8(w, h))
}
