//! `--data` as shards of records: Hugging Face's Parquet files (`parquet`) and WebDataset's
//! tar files (`webdataset`), a single file or a folder of them (searched recursively).
//!
//! A shard's split is its name's: the first of its file name and its folders below `--data`
//! (nearest first) that starts with `train` is training, with `test`, `validation`, `valid` or
//! `val` a test set (test preferred when both are there), with anything else another split,
//! ignored with a note. With no split names at all (or a single file, or only training
//! shards), every record forms one set of which `--val-split` holds out a share, as for one
//! folder of classes.
//!
//! Shards are read one at a time, in path order, and each shard's pictures are decoded on all
//! cores before the next is read: at most one shard's encoded pictures are in memory. The
//! decoded set is cached as a folder's is (`cache`), keyed by the shards' paths, sizes and
//! modification times and those of any picture files the records name instead of holding.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::cache::Packed;
use super::folder::{self, Decoded};
use super::source::{self, LoadOptions, Splits};
use super::{DataInfo, Dataset, numbered_classes, parquet, webdataset};
use crate::error::{Error, Result};
use crate::rng;

/// The two kinds of shard files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Parquet,
    WebDataset,
}

impl Kind {
    /// What `DataInfo.source` records.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Parquet => "parquet",
            Kind::WebDataset => "webdataset",
        }
    }

    fn of(path: &Path) -> Option<Kind> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".parquet") {
            Some(Kind::Parquet)
        } else if name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Kind::WebDataset)
        } else {
            None
        }
    }
}

/// A picture as a record has it: its encoded bytes, or the file it names.
pub enum Picture {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// One record of a shard, as read.
pub struct Record {
    /// How messages name it: `data/train-00000.parquet#12`, `train-000000.tar:cat_0001`.
    pub name: String,
    /// The picture and label, or why the record has none (a bad record: an error, or left out
    /// with --skip-bad).
    pub item: std::result::Result<(Picture, u32), String>,
}

/// What a kind of shard says about itself before its records are read.
pub trait Shards {
    /// Class names in label order; None: "0", "1", ... up to the largest label seen.
    fn classes(&self) -> Option<&[String]>;
    /// Lines for the cache key beyond each shard's own stat: files that records name, files
    /// of class names.
    fn key_lines(&self) -> Result<Vec<String>>;
    /// Reads one shard's records, in order.
    fn read(&self, shard: &Path) -> Result<Vec<Record>>;
}

/// The shard files at `path`, if it is one or holds some: a `.parquet`, `.tar`, `.tar.gz` or
/// `.tgz` file, or a folder with shard files of one kind below it. Folders holding pictures
/// are not searched (a folder of classes is not read twice over).
pub fn detect(path: &Path) -> Result<Option<(Kind, Vec<PathBuf>)>> {
    if path.is_file() {
        return Ok(Kind::of(path).map(|k| (k, vec![path.to_path_buf()])));
    }
    let mut found = Vec::new();
    find(path, &mut found, 0)?;
    found.sort();
    let kinds: Vec<Kind> = found.iter().filter_map(|p| Kind::of(p)).collect();
    match kinds.first() {
        None => Ok(None),
        Some(&k) if kinds.iter().all(|&x| x == k) => Ok(Some((k, found))),
        Some(_) => Err(Error::Data(format!(
            "{}: holds both Parquet and tar shards; point --data at the folder of one kind",
            path.display()
        ))),
    }
}

/// Collects the shard files under `dir` (unsorted). A folder below it with a picture in it is
/// a class folder: it is left at its first picture, not read to the end nor searched below.
/// (`--data` itself may hold a picture beside the shards' folders: a data set's preview.)
fn find(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 8 {
        return Ok(());
    }
    let (mut dirs, mut shards) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|err| Error::io(dir, err))?;
        let p = e.path();
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        let is_dir = match e.file_type() {
            Ok(t) if !t.is_symlink() => t.is_dir(),
            _ => p.is_dir(),
        };
        if is_dir {
            dirs.push(p);
        } else if depth > 0 && folder::is_picture(&p) {
            return Ok(());
        } else if Kind::of(&p).is_some() {
            shards.push(p);
        }
    }
    out.extend(shards);
    dirs.iter().try_for_each(|d| find(d, out, depth + 1))
}

/// Which split a shard's name puts it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    Train,
    Test,
    Val,
    Other,
}

fn split_of(root: &Path, shard: &Path) -> Split {
    let rel = shard.strip_prefix(root).unwrap_or(shard);
    let mut names: Vec<String> =
        rel.components().map(|c| c.as_os_str().to_string_lossy().to_ascii_lowercase()).collect();
    names.reverse();
    for n in names {
        if n.starts_with("train") {
            return Split::Train;
        }
        if n.starts_with("test") {
            return Split::Test;
        }
        // val, val-0000.tar, valid, validation; not value or valley.
        if n.starts_with("valid") || n.starts_with("val") && !n[3..].starts_with(|c: char| c.is_alphabetic()) {
            return Split::Val;
        }
    }
    Split::Other
}

/// A list of shards for a note: how many, and the first few paths below `root`.
fn named(root: &Path, shards: &[PathBuf]) -> String {
    let rel = |p: &PathBuf| match p.strip_prefix(root) {
        Ok(r) if !r.as_os_str().is_empty() => r.display().to_string(),
        _ => p.display().to_string(),
    };
    let mut v: Vec<String> = shards.iter().take(3).map(rel).collect();
    if shards.len() > 3 {
        v.push(format!("... {}", rel(&shards[shards.len() - 1])));
    }
    format!("{} file(s): {}", shards.len(), v.join(", "))
}

/// Training and test shards (test empty: one set, to be split by --val-split), with a note
/// saying which files went where.
fn assign(
    root: &Path,
    kind: Kind,
    shards: Vec<PathBuf>,
    notes: &mut Vec<String>,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let of = |s: Split| -> Vec<PathBuf> { shards.iter().filter(|p| split_of(root, p) == s).cloned().collect() };
    let (train, test, val) = (of(Split::Train), of(Split::Test), of(Split::Val));
    let what = kind.name();
    if root.is_file() {
        notes.push(format!("data: {what}: one set, a single file ({})", root.display()));
        return Ok((shards, Vec::new()));
    }
    if train.is_empty() && test.is_empty() && val.is_empty() {
        notes.push(format!("data: {what}: one set, no split names ({})", named(root, &shards)));
        return Ok((shards, Vec::new()));
    }
    if train.is_empty() {
        return Err(Error::Data(format!(
            "{}: {what} shards of a test split but none whose name or folder starts with 'train'",
            root.display()
        )));
    }
    let mut note = format!("data: {what}: training {}", named(root, &train));
    let test = if test.is_empty() { val } else { test };
    if !test.is_empty() {
        note += &format!("; test {}", named(root, &test));
    }
    let ignored: Vec<PathBuf> = shards.iter().filter(|p| !train.contains(p) && !test.contains(p)).cloned().collect();
    if !ignored.is_empty() {
        note += &format!("; not used (other splits) {}", named(root, &ignored));
    }
    notes.push(note);
    Ok((train, test))
}

/// Loads a data set of `kind` from `shards` found at `root`.
pub fn load(root: &Path, kind: Kind, shards: Vec<PathBuf>, o: &LoadOptions, notes: &mut Vec<String>) -> Result<Splits> {
    let (train, test) = assign(root, kind, shards, notes)?;
    let all: Vec<PathBuf> = train.iter().chain(&test).cloned().collect();
    let reader: Box<dyn Shards> = match kind {
        Kind::Parquet => Box::new(parquet::open(&all, notes)?),
        Kind::WebDataset => Box::new(webdataset::open(root, &all)?),
    };
    // One set: the share held out, checked before any decoding.
    let share = o.val_split.unwrap_or(source::DEFAULT_VAL_SPLIT);
    if test.is_empty() && !(share > 0.0 && share < 1.0) {
        return Err(Error::Config(format!("--val-split must be a fraction in (0, 1), got {share}")));
    }
    let key = if o.cache {
        let mut lines = vec![format!("{}\n", kind.name())];
        for (split, files) in [("train", &train), ("test", &test)] {
            for f in files {
                lines.push(format!("{split}\t{}\n", super::cache::stat_line(root, f)?));
            }
        }
        lines.extend(reader.key_lines()?);
        Some(super::cache::key_of(root, &lines, o.shape, o.resize))
    } else {
        None
    };
    let (packed, classes) = source::cached(root, key, o, notes, || decode(&*reader, &train, &test, o))?;
    let make = |split| Dataset::of_shape(split, o.shape, classes.clone());
    let (train_set, test_set) = (make(packed.train), make(packed.test));
    let (train_set, test_set) = if test.is_empty() {
        if o.val_split.is_none() {
            notes.push(format!("data: no test split: holding out {:.0}% as the test set (--val-split)", 100.0 * share));
        }
        source::split_by_seed(train_set, share, o.seed, root)?
    } else {
        // As for folders: a fixed shuffle, so that --limit and the recipe's validation share
        // draw from every class whatever order the shards are in.
        let perm = rng::epoch_permutation(0, 0, train_set.len());
        (train_set.select(&perm.iter().map(|&i| i as usize).collect::<Vec<_>>()), test_set)
    };
    let info = DataInfo {
        source: kind.name().into(),
        path: root.display().to_string(),
        classes,
        resize: Some(o.resize),
        digits: false,
    };
    Ok(Splits { train: train_set, test: test_set, info, notes: Vec::new() })
}

/// Reads and decodes every shard, a shard at a time: both splits' pictures, the class names
/// and the records left out.
fn decode(reader: &dyn Shards, train: &[PathBuf], test: &[PathBuf], o: &LoadOptions) -> Result<source::DecodedSet> {
    let progress = source::bar(o.progress, 0);
    let len = o.shape.iter().product::<usize>();
    let mut done = 0usize;
    let mut split = |shards: &[PathBuf]| -> Result<Decoded> {
        let mut out = Decoded::default();
        for shard in shards {
            let records = reader.read(shard)?;
            done += records.len();
            crate::memory::check_host(
                &format!("the {done} decoded pictures ({}x{}x{} bytes each)", o.shape[0], o.shape[1], o.shape[2]),
                (done * len) as u64,
                "use a smaller input size in the model file or fewer pictures",
            )?;
            progress.inc_length(records.len() as u64);
            let mut d = decode_records(records, o, &progress)?;
            out.images.append(&mut d.images);
            out.labels.append(&mut d.labels);
            out.skipped.append(&mut d.skipped);
        }
        Ok(out)
    };
    let (tr, te) = (split(train)?, split(test)?);
    progress.finish_and_clear();
    if tr.labels.is_empty() || (!test.is_empty() && te.labels.is_empty()) {
        let which = if tr.labels.is_empty() { train } else { test };
        return Err(Error::Data(format!(
            "{}: no picture could be decoded",
            which.first().map_or_else(String::new, |p| p.display().to_string())
        )));
    }
    let classes = match reader.classes() {
        Some(c) => c.to_vec(),
        None => numbered_classes(tr.labels.iter().chain(&te.labels).max().map_or(0, |&m| m as usize + 1)),
    };
    let skipped = tr.skipped.into_iter().chain(te.skipped).collect();
    Ok((Packed { train: (tr.images, tr.labels), test: (te.images, te.labels) }, classes, skipped))
}

/// Decodes one shard's records on all cores, in order; a bad record ends the load with an
/// error naming it, unless --skip-bad, where it is left out and listed.
fn decode_records(records: Vec<Record>, o: &LoadOptions, bar: &indicatif::ProgressBar) -> Result<Decoded> {
    let stop = AtomicBool::new(false);
    let results: Vec<std::result::Result<Vec<u8>, String>> = records
        .par_iter()
        .map(|r| {
            if stop.load(Ordering::Relaxed) {
                return Err(String::new());
            }
            let px = match &r.item {
                Ok((Picture::Bytes(b), _)) => folder::decode_bytes(b, o.shape, o.resize),
                Ok((Picture::File(p), _)) => {
                    folder::decode_file(p, o.shape, o.resize).map_err(|e| format!("{}: {e}", p.display()))
                }
                Err(why) => Err(why.clone()),
            };
            if px.is_err() && !o.skip_bad {
                stop.store(true, Ordering::Relaxed);
            }
            bar.inc(1);
            px
        })
        .collect();
    let mut out = Decoded::default();
    out.images.reserve(records.len() * o.shape.iter().product::<usize>());
    for (r, px) in records.into_iter().zip(results) {
        match (px, r.item) {
            (Ok(px), Ok((_, label))) => {
                out.images.extend_from_slice(&px);
                out.labels.push(label);
            }
            (Err(why), _) if !o.skip_bad && !why.is_empty() => {
                return Err(Error::Image {
                    path: r.name.into(),
                    reason: format!("{why} (pass --skip-bad to leave bad records out)"),
                });
            }
            (Err(why), _) if o.skip_bad => out.skipped.push((r.name.into(), why)),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{Split, split_of};
    use std::path::Path;

    #[test]
    fn splits_come_from_the_file_name_then_its_folders() {
        let root = Path::new("/d");
        for (path, want) in [
            ("/d/data/train-00000-of-00004.parquet", Split::Train),
            ("/d/data/test-00000-of-00001.parquet", Split::Test),
            ("/d/plain_text/train/0000.parquet", Split::Train),
            ("/d/validation/0000.parquet", Split::Val),
            ("/d/val-000001.tar", Split::Val),
            ("/d/valid.parquet", Split::Val),
            ("/d/value.parquet", Split::Other),
            ("/d/data/unsupervised-00000-of-00001.parquet", Split::Other),
            ("/d/train/test-0.tar", Split::Test),
        ] {
            assert_eq!(split_of(root, Path::new(path)), want, "{path}");
        }
    }
}
