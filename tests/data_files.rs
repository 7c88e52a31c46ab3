//! The shipped MNIST files and our IDX reader: checksums, a byte-for-byte cross-check
//! against the `mnist` crate, both file-name spellings, and typed errors on bad files.

use std::io::Read;
use std::path::Path;

use crate::common::*;
use gpu_train::data::{self, idx};
use sha2::{Digest, Sha256};

const FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn shipped_files_match_their_checksums() {
    let dir = mnist_dir();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let mut checked = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line.split_once("  ").expect("sha256sum format");
        let bytes = match name.strip_suffix(".gz") {
            Some(_) => std::fs::read(dir.join(name)).unwrap(),
            None => gunzip(&dir.join(format!("{name}.gz"))),
        };
        assert_eq!(hex(&bytes), sum, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 8, "four .gz files and their four decompressed contents");
}

#[test]
fn reader_agrees_byte_for_byte_with_the_mnist_crate() {
    let tmp = tempfile::tempdir().unwrap();
    for f in FILES {
        std::fs::write(tmp.path().join(f), gunzip(&mnist_dir().join(format!("{f}.gz")))).unwrap();
    }
    let base = tmp.path().to_str().unwrap().to_string() + "/";
    let theirs = mnist::MnistBuilder::new().base_path(&base).label_format_digit().finalize();
    let (train, test) = data::load_dir(&mnist_dir()).unwrap();
    assert_eq!((train.height, train.width, train.len(), test.len()), (28, 28, 60_000, 10_000));
    assert!(train.images == theirs.trn_img, "training images differ");
    let widen = |v: &[u8]| v.iter().map(|&l| l as u32).collect::<Vec<u32>>();
    assert!(train.labels == widen(&theirs.trn_lbl), "training labels differ");
    assert!(test.images == theirs.tst_img, "test images differ");
    assert!(test.labels == widen(&theirs.tst_lbl), "test labels differ");
    // The raw files read the same as the gzip ones.
    let raw = data::load_dir(tmp.path()).unwrap();
    assert!(raw.0.images == train.images && raw.1.labels == test.labels);
    let mut counts = [0usize; 10];
    train.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
}

#[test]
fn dotted_file_names_and_any_image_count_load() {
    let tmp = tempfile::tempdir().unwrap();
    let header = |magic: u32, dims: &[u32]| {
        let mut v = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
        v
    };
    for (split, n) in [("train", 5u32), ("t10k", 3)] {
        let mut img = header(0x803, &[n, 4, 3]);
        img.extend((0..n * 12).map(|i| i as u8));
        let mut lbl = header(0x801, &[n]);
        lbl.extend((0..n).map(|i| (i % 10) as u8));
        std::fs::write(tmp.path().join(format!("{split}-images.idx3-ubyte")), img).unwrap();
        std::fs::write(tmp.path().join(format!("{split}-labels.idx1-ubyte")), lbl).unwrap();
    }
    let (train, test) = data::load_dir(tmp.path()).unwrap();
    assert_eq!((train.len(), test.len(), train.height, train.width), (5, 3, 4, 3));
    assert_eq!(train.image(1), &(12..24).map(|i| i as u8).collect::<Vec<_>>()[..]);
}

#[test]
fn bad_data_gives_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // Missing directory and missing files.
    let e = data::load_dir(&tmp.path().join("nope")).unwrap_err().to_string();
    assert!(e.contains("does not exist") && e.contains("--data-dir"), "{e}");
    let e = data::load_dir(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    // A truncated copy of the real gzip file.
    let gz = std::fs::read(mnist_dir().join("t10k-images-idx3-ubyte.gz")).unwrap();
    let cut = tmp.path().join("cut.gz");
    std::fs::write(&cut, &gz[..gz.len() / 3]).unwrap();
    let e = idx::read_images(&cut).unwrap_err().to_string();
    assert!(e.contains("truncated") || e.contains("corrupt"), "{e}");
    // Labels read as images: wrong magic.
    let e = idx::read_images(&mnist_dir().join("t10k-labels-idx1-ubyte.gz")).unwrap_err().to_string();
    assert!(e.contains("magic"), "{e}");
    // Images and labels of different counts.
    for f in FILES {
        let src = if f.starts_with("t10k-labels") { "train-labels-idx1-ubyte" } else { f };
        std::fs::copy(mnist_dir().join(format!("{src}.gz")), tmp.path().join(format!("{f}.gz"))).unwrap();
    }
    let e = data::load_dir(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("10000 images but 60000 labels"), "{e}");
}

#[test]
fn shifted_moves_whole_pixels_and_fills_with_zero() {
    // Two 2x3 images (rows of 3).
    let ds = data::Dataset {
        images: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        labels: vec![3, 4],
        channels: 1,
        height: 2,
        width: 3,
        classes: data::numbered_classes(5),
    };
    assert_eq!(ds.shifted(0, 0).images, ds.images);
    assert_eq!(ds.shifted(1, 0).images, [0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11], "right");
    assert_eq!(ds.shifted(-1, 0).images, [2, 3, 0, 5, 6, 0, 8, 9, 0, 11, 12, 0], "left");
    assert_eq!(ds.shifted(0, 1).images, [0, 0, 0, 1, 2, 3, 0, 0, 0, 7, 8, 9], "down");
    assert_eq!(ds.shifted(0, -1).images, [4, 5, 6, 0, 0, 0, 10, 11, 12, 0, 0, 0], "up");
    assert_eq!(ds.shifted(-2, 1).images, [0, 0, 0, 3, 0, 0, 0, 0, 0, 9, 0, 0], "two left, one down");
    assert_eq!(ds.shifted(3, 0).images, [0; 12], "all the way out");
    let s = ds.shifted(1, -1);
    assert_eq!((s.labels, s.height, s.width), (ds.labels, 2, 3));
}
