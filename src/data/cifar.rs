//! The CIFAR-10 and CIFAR-100 binary formats (https://www.cs.toronto.edu/~kriz/cifar.html).
//!
//! CIFAR-10: `data_batch_1.bin` ... `data_batch_5.bin` and `test_batch.bin`, records of one
//! label byte and 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each 32x32 row by row:
//! already our planar (c, h, w) order); class names one per line in `batches.meta.txt`.
//! CIFAR-100: `train.bin` and `test.bin`, records of a coarse label byte, a fine label byte
//! (the one used: 100 classes) and the same 3072 bytes; names in `fine_label_names.txt`.
//! The folders the archives unpack to (`cifar-10-batches-bin`, `cifar-100-binary`) are found
//! inside the given path too.

use std::path::{Path, PathBuf};

use super::{Dataset, numbered_classes};
use crate::error::{Error, Result};

const PIXELS: usize = 3 * 32 * 32;

/// Which of the two formats, and the files of each split.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub hundred: bool,
    pub train: Vec<PathBuf>,
    pub test: PathBuf,
    pub names: Option<PathBuf>,
}

impl Layout {
    pub fn name(&self) -> &'static str {
        if self.hundred { "cifar-100" } else { "cifar-10" }
    }
}

/// The CIFAR files in `path` (or in the folder its archive unpacks to), if there are any.
pub fn detect(path: &Path) -> Option<Layout> {
    for dir in [path.to_path_buf(), path.join("cifar-10-batches-bin"), path.join("cifar-100-binary")] {
        let test = dir.join("test_batch.bin");
        if test.is_file() {
            let mut train: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter_map(|p| {
                    let n = p.file_name()?.to_str()?.strip_prefix("data_batch_")?.strip_suffix(".bin")?.parse().ok()?;
                    Some((n, p))
                })
                .collect();
            train.sort();
            let names = Some(dir.join("batches.meta.txt")).filter(|p| p.is_file());
            return Some(Layout { hundred: false, train: train.into_iter().map(|t| t.1).collect(), test, names });
        }
        if dir.join("train.bin").is_file() && dir.join("test.bin").is_file() {
            let names = Some(dir.join("fine_label_names.txt")).filter(|p| p.is_file());
            return Some(Layout {
                hundred: true,
                train: vec![dir.join("train.bin")],
                test: dir.join("test.bin"),
                names,
            });
        }
    }
    None
}

/// Reads the records of one batch file into `ds`.
fn read_batch(path: &Path, hundred: bool, classes: usize, ds: &mut Dataset) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let record = PIXELS + if hundred { 2 } else { 1 };
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(Error::Data(format!(
            "{}: {} bytes is not a whole number of {record}-byte CIFAR records (truncated or not a CIFAR batch file)",
            path.display(),
            bytes.len()
        )));
    }
    for (i, r) in bytes.chunks_exact(record).enumerate() {
        let label = r[record - PIXELS - 1] as usize;
        if label >= classes {
            return Err(Error::Data(format!(
                "{}: record {i} has label {label}, but {} has {classes} classes (not a CIFAR batch file?)",
                path.display(),
                if hundred { "CIFAR-100" } else { "CIFAR-10" }
            )));
        }
        ds.labels.push(label as u32);
        ds.images.extend_from_slice(&r[record - PIXELS..]);
    }
    Ok(())
}

/// Loads the training and test splits.
pub fn load(layout: &Layout) -> Result<(Dataset, Dataset)> {
    let classes = if layout.hundred { 100 } else { 10 };
    if layout.train.is_empty() {
        return Err(Error::Data(format!(
            "{}: test_batch.bin but no data_batch_*.bin beside it",
            layout.test.parent().unwrap_or(Path::new(".")).display()
        )));
    }
    let names = match &layout.names {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if names.len() == classes { names } else { numbered_classes(classes) }
        }
        None => numbered_classes(classes),
    };
    let empty = Dataset { images: Vec::new(), labels: Vec::new(), channels: 3, height: 32, width: 32, classes: names };
    let mut train = empty.clone();
    for p in &layout.train {
        read_batch(p, layout.hundred, classes, &mut train)?;
    }
    let mut test = empty;
    read_batch(&layout.test, layout.hundred, classes, &mut test)?;
    Ok((train, test))
}
