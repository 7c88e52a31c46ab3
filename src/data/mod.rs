//! Data sets, loaded into memory as bytes: IDX files (MNIST, Fashion-MNIST), and (see
//! `source`) folders of pictures, CIFAR binary files, and Parquet and WebDataset shards.
//!
//! Images stay as u8 (channels, height, width) until a batch is gathered (on the device),
//! where they become `pixel / 255`, normalised per channel and augmented (`gather_batch`).

pub mod augment;
pub mod cache;
pub mod cifar;
pub mod folder;
pub mod idx;
#[cfg(not(target_arch = "wasm32"))]
pub mod parquet;
#[cfg(not(target_arch = "wasm32"))]
pub mod records;
pub mod source;
#[cfg(not(target_arch = "wasm32"))]
pub mod webdataset;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A set of labelled images, all of one shape (channels, height, width), as bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub images: Vec<u8>,  // (n, c, h, w)
    pub labels: Vec<u32>, // (n,), each below classes.len()
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// The class names in label order (folder names, CIFAR's label files; "0", "1", ... for
    /// IDX files). Their count is the data set's number of classes.
    pub classes: Vec<String>,
}

/// "0", "1", ... "k-1": the names of classes known only by number.
pub fn numbered_classes(k: usize) -> Vec<String> {
    (0..k).map(|i| i.to_string()).collect()
}

impl Dataset {
    /// Pictures of `shape` (channels, height, width) decoded into one buffer, with their labels
    /// and the class names.
    pub fn of_shape((images, labels): (Vec<u8>, Vec<u32>), [c, h, w]: [usize; 3], classes: Vec<String>) -> Dataset {
        Dataset { images, labels, channels: c, height: h, width: w, classes }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// (channels, height, width).
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
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
            ..self.empty_like()
        };
        (self, tail)
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset { images, labels: indices.iter().map(|&i| self.labels[i]).collect(), ..self.empty_like() }
    }

    /// A data set of the same shape and classes with no examples.
    pub fn empty_like(&self) -> Dataset {
        Dataset {
            images: Vec::new(),
            labels: Vec::new(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes.clone(),
        }
    }

    pub fn max_label(&self) -> Option<u32> {
        self.labels.iter().copied().max()
    }

    /// Every image moved `dx` pixels right and `dy` pixels down (negative: left, up), with
    /// zero filling what comes in from outside. Exact (whole pixels), for test-time
    /// augmentation.
    pub fn shifted(&self, dx: isize, dy: isize) -> Dataset {
        let (h, w) = (self.height as isize, self.width as isize);
        let plane = self.height * self.width;
        let mut images = vec![0u8; self.images.len()];
        for (out, img) in images.chunks_mut(plane).zip(self.images.chunks(plane)) {
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
        Dataset { images, labels: self.labels.clone(), ..self.empty_like() }
    }

    /// Per-channel mean and standard deviation of pixel/255 over every image: what
    /// `normalize = "auto"` uses.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let plane = self.height * self.width;
        let mut sum = vec![0f64; self.channels];
        let mut sq = vec![0f64; self.channels];
        // Sums of bytes as integers first (exact), per channel plane.
        for img in self.images.chunks(self.image_len().max(1)) {
            for (c, p) in img.chunks(plane.max(1)).enumerate() {
                let (s, q) = p.iter().fold((0u64, 0u64), |(s, q), &v| (s + v as u64, q + (v as u64) * (v as u64)));
                sum[c] += s as f64;
                sq[c] += q as f64;
            }
        }
        let count = (self.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count / 255.0).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / count / 65025.0 - m * m).max(0.0).sqrt() as f32).max(1e-3))
            .collect();
        (mean.iter().map(|&m| m as f32).collect(), std)
    }

    /// Builds a data set from IDX images and labels, checking they belong together.
    pub fn from_idx(images: idx::IdxImages, labels: Vec<u8>, what: &str) -> Result<Dataset> {
        if images.count != labels.len() {
            return Err(Error::Data(format!("{what}: {} images but {} labels", images.count, labels.len())));
        }
        let labels: Vec<u32> = labels.into_iter().map(u32::from).collect();
        let classes = numbered_classes(labels.iter().max().map_or(0, |&m| m as usize + 1));
        Ok(Dataset { images: images.pixels, labels, channels: 1, height: images.rows, width: images.cols, classes })
    }
}

/// How pictures of another size are brought to the model's input size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Scale to exactly the input's height and width, ignoring the aspect ratio (Keras'
    /// `image_dataset_from_directory` default).
    #[default]
    Stretch,
    /// Scale so the picture covers the input, keeping the aspect ratio, and cut the middle.
    Crop,
    /// Scale so the picture fits inside the input, keeping the aspect ratio, and pad with
    /// black around it.
    Pad,
}

/// Where a data set came from and how its pictures were prepared: recorded in model files,
/// so `eval` and `predict` can name the classes and prepare new pictures the same way.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataInfo {
    /// "idx", "cifar-10", "cifar-100", "folder", "parquet" or "webdataset" (empty when not
    /// known).
    pub source: String,
    /// The path the data came from, as given.
    pub path: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The resize rule pictures went through (None: every picture already had the size).
    pub resize: Option<Resize>,
    /// MNIST-style digits: `predict` crops, scales and centres pictures as MNIST was made.
    pub digits: bool,
}

impl DataInfo {
    /// Writes the `classes` (a JSON list) and `data` (this, as JSON) metadata entries.
    pub fn record(&self, meta: &mut std::collections::HashMap<String, String>) {
        if !self.classes.is_empty() {
            meta.insert("classes".into(), serde_json::to_string(&self.classes).unwrap_or_default());
        }
        meta.insert("data".into(), serde_json::to_string(self).unwrap_or_default());
    }

    /// What a model file recorded, if it did.
    pub fn recorded(meta: &std::collections::HashMap<String, String>) -> Option<DataInfo> {
        meta.get("data").and_then(|d| serde_json::from_str(d).ok())
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

/// Whether `dir` holds IDX files with the standard names.
pub fn has_idx(dir: &Path) -> bool {
    find_file(dir, "train-images", "idx3-ubyte").is_ok()
}

/// Loads one split ("train" or "t10k") from `dir`.
pub fn load_split(dir: &Path, stem: &str) -> Result<Dataset> {
    let images = idx::read_images(&find_file(dir, &format!("{stem}-images"), "idx3-ubyte")?)?;
    let labels = idx::read_labels(&find_file(dir, &format!("{stem}-labels"), "idx1-ubyte")?)?;
    Dataset::from_idx(images, labels, &format!("{} ({stem})", dir.display()))
}

/// Loads the training and test sets from a directory of standard-named IDX files.
pub fn load_dir(dir: &Path) -> Result<(Dataset, Dataset)> {
    let mut train = load_split(dir, "train")?;
    let mut test = load_split(dir, "t10k")?;
    // Both splits name the classes seen in either.
    let k = train.classes.len().max(test.classes.len());
    train.classes = numbered_classes(k);
    test.classes = numbered_classes(k);
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
