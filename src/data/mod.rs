//! Data sets: MNIST-style IDX files on disk, loaded into memory as bytes.
//!
//! Images stay as u8 until a batch is gathered (on the device), where they become
//! `pixel / 255`, optionally normalised and augmented (`gather_batch`).

pub mod augment;
pub mod idx;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A set of labelled single-channel images (all of one size).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub images: Vec<u8>, // (n, h, w)
    pub labels: Vec<u8>, // (n,)
    pub height: usize,
    pub width: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        self.height * self.width
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The first `n` examples (or all, if there are fewer).
    pub fn take(mut self, n: usize) -> Dataset {
        let n = n.min(self.len());
        self.images.truncate(n * self.image_len());
        self.labels.truncate(n);
        self
    }

    /// Splits off the last `count` examples (e.g. a validation set).
    pub fn split_tail(mut self, count: usize) -> (Dataset, Dataset) {
        let keep = self.len() - count.min(self.len());
        let tail = Dataset {
            images: self.images.split_off(keep * self.image_len()),
            labels: self.labels.split_off(keep),
            height: self.height,
            width: self.width,
        };
        (self, tail)
    }

    pub fn max_label(&self) -> Option<u8> {
        self.labels.iter().copied().max()
    }

    /// Every image moved `dx` pixels right and `dy` pixels down (negative: left, up), with
    /// zero filling what comes in from outside. Exact (whole pixels), for test-time
    /// augmentation.
    pub fn shifted(&self, dx: isize, dy: isize) -> Dataset {
        let (h, w) = (self.height as isize, self.width as isize);
        let mut images = vec![0u8; self.images.len()];
        for (out, img) in images.chunks_mut(self.image_len()).zip(self.images.chunks(self.image_len())) {
            for y in 0..h {
                let sy = y - dy;
                if !(0..h).contains(&sy) {
                    continue;
                }
                for x in 0..w {
                    let sx = x - dx;
                    if (0..w).contains(&sx) {
                        out[(y * w + x) as usize] = img[(sy * w + sx) as usize];
                    }
                }
            }
        }
        Dataset { images, labels: self.labels.clone(), height: self.height, width: self.width }
    }

    /// Builds a data set from IDX images and labels, checking they belong together.
    pub fn from_idx(images: idx::IdxImages, labels: Vec<u8>, what: &str) -> Result<Dataset> {
        if images.count != labels.len() {
            return Err(Error::Data(format!("{what}: {} images but {} labels", images.count, labels.len())));
        }
        Ok(Dataset { images: images.pixels, labels, height: images.rows, width: images.cols })
    }
}

/// Which standard data set `--dataset` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
}

impl DatasetKind {
    /// Where the data set lives when `--data-dir` is not given.
    pub fn default_dir(self) -> PathBuf {
        match self {
            DatasetKind::Mnist => {
                // The shipped copy: relative to the working directory (the usual
                // `cargo run` from the repository), else the source tree the binary came from.
                let local = PathBuf::from("data/mnist");
                if local.is_dir() { local } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist") }
            }
            DatasetKind::FashionMnist => PathBuf::from("/usr/share/datasets/fashion-mnist"),
        }
    }
}

/// Finds `{stem}-{kind}` or `{stem}.{kind}` in `dir`, raw or `.gz`.
fn find_file(dir: &Path, stem: &str, kind: &str) -> Result<PathBuf> {
    let mut tried = Vec::new();
    for sep in ['-', '.'] {
        for ext in ["", ".gz"] {
            let p = dir.join(format!("{stem}{sep}{kind}{ext}"));
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p.file_name().unwrap_or_default().to_string_lossy().into_owned());
        }
    }
    let hint = if dir.is_dir() {
        format!("no {} in {}", tried.join(", "), dir.display())
    } else {
        format!("directory {} does not exist", dir.display())
    };
    Err(Error::Data(format!("{hint} (expected the four IDX files with the standard names; pass --data-dir DIR)")))
}

/// Loads one split ("train" or "t10k") from `dir`.
pub fn load_split(dir: &Path, stem: &str) -> Result<Dataset> {
    let images = idx::read_images(&find_file(dir, &format!("{stem}-images"), "idx3-ubyte")?)?;
    let labels = idx::read_labels(&find_file(dir, &format!("{stem}-labels"), "idx1-ubyte")?)?;
    Dataset::from_idx(images, labels, &format!("{} ({stem})", dir.display()))
}

/// Loads the training and test sets from a directory of standard-named IDX files.
pub fn load_dir(dir: &Path) -> Result<(Dataset, Dataset)> {
    let train = load_split(dir, "train")?;
    let test = load_split(dir, "t10k")?;
    if (train.height, train.width) != (test.height, test.width) {
        return Err(Error::Data(format!(
            "{}: training images are {}x{} but test images are {}x{}",
            dir.display(),
            train.height,
            train.width,
            test.height,
            test.width
        )));
    }
    Ok((train, test))
}
