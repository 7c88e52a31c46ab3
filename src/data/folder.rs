//! Folders of pictures, one folder per class, as torchvision's `ImageFolder` and Keras'
//! `image_dataset_from_directory` read them: the class folders sorted by name give the labels
//! 0, 1, ...; each class folder is searched recursively (in sorted order) for pictures by
//! extension; other files are ignored and counted.
//!
//! Pictures are decoded on all cores (rayon) by the `image` crate, converted to the model's
//! channels (1: grayscale by Rec. 709 luma, 2: grayscale + alpha, 3: RGB, 4: RGBA; alpha is
//! dropped for 1 and 3 channels; palettes and 16-bit samples are converted to 8-bit) and,
//! when their size differs from the model's input, resized by the chosen rule with a
//! triangle (bilinear) filter that widens to average when shrinking.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits};
use rayon::prelude::*;

use super::Resize;
use crate::error::{Error, Result};

/// Picture files by extension (compared without case).
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];

/// The largest picture decoded: 16384 pixels a side and 512 MiB of decoder memory. A file
/// claiming more (a corrupt or hostile header) is refused before anything is allocated.
const MAX_SIDE: u32 = 16_384;
const MAX_DECODE_BYTES: u64 = 512 << 20;

/// The pictures of a folder of class folders.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub classes: Vec<String>,
    /// (file, label), classes in order, files sorted within each.
    pub files: Vec<(PathBuf, u32)>,
    /// Files that are not pictures (by extension), ignored.
    pub ignored: Vec<PathBuf>,
}

pub(super) fn is_picture(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// The entries of a directory, sorted by name (hidden ones left out), each with whether it
/// is a directory (from the entry's type, so no extra stat except for symbolic links).
fn sorted_entries(dir: &Path) -> Result<Vec<(PathBuf, bool)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|err| Error::io(dir, err))?;
        let path = e.path();
        if is_hidden(&path) {
            continue;
        }
        let is_dir = match e.file_type() {
            Ok(t) if t.is_symlink() => path.is_dir(),
            Ok(t) => t.is_dir(),
            Err(_) => path.is_dir(),
        };
        v.push((path, is_dir));
    }
    v.sort();
    Ok(v)
}

/// Every picture under `dir` (recursively, sorted); other files into `ignored`.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, ignored: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 32 {
        return Err(Error::Data(format!("{}: folders nested more than 32 deep (a link loop?)", dir.display())));
    }
    for (p, is_dir) in sorted_entries(dir)? {
        if is_dir {
            walk(&p, out, ignored, depth + 1)?;
        } else if is_picture(&p) {
            out.push(p);
        } else {
            ignored.push(p);
        }
    }
    Ok(())
}

/// Lists `root`'s class folders (every subfolder) and their pictures. A class folder without
/// pictures, or a root without class folders, is an error naming the folder.
pub fn list(root: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    let mut class_dirs = Vec::new();
    for (p, is_dir) in sorted_entries(root)? {
        if is_dir {
            class_dirs.push(p);
        } else {
            listing.ignored.push(p);
        }
    }
    if class_dirs.is_empty() {
        return Err(Error::Data(format!(
            "{}: no class folders (expected one folder of pictures per class, e.g. {}/cat/1.png)",
            root.display(),
            root.display()
        )));
    }
    for (label, dir) in class_dirs.iter().enumerate() {
        let mut files = Vec::new();
        walk(dir, &mut files, &mut listing.ignored, 0)?;
        if files.is_empty() {
            return Err(Error::Data(format!(
                "{}: no pictures in this class folder (looked for {})",
                dir.display(),
                EXTENSIONS.join(", ")
            )));
        }
        let name = dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        listing.classes.push(name);
        listing.files.extend(files.into_iter().map(|f| (f, label as u32)));
    }
    if listing.classes.len() > u32::MAX as usize {
        return Err(Error::Data(format!("{}: too many class folders", root.display())));
    }
    Ok(listing)
}

/// Decodes one picture file (format guessed from its content, whatever its extension) and
/// brings it to the input shape (channels, height, width), as planar bytes (c, h, w).
pub fn decode_file(path: &Path, shape: [usize; 3], resize: Resize) -> std::result::Result<Vec<u8>, String> {
    let reader =
        ImageReader::open(path).map_err(|e| e.to_string())?.with_guessed_format().map_err(|e| e.to_string())?;
    decode(reader, shape, resize)
}

/// `decode_file` of a picture held in memory (a browser's file).
pub fn decode_bytes(bytes: &[u8], shape: [usize; 3], resize: Resize) -> std::result::Result<Vec<u8>, String> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    decode(reader, shape, resize)
}

fn decode<R: std::io::BufRead + std::io::Seek>(
    mut reader: ImageReader<R>,
    shape: [usize; 3],
    resize: Resize,
) -> std::result::Result<Vec<u8>, String> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => {
            format!("too large to decode safely (at most {MAX_SIDE} pixels a side and {} MiB)", MAX_DECODE_BYTES >> 20)
        }
        e => e.to_string(),
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err("the picture has no pixels".into());
    }
    Ok(to_input(&img, shape, resize))
}

/// A decoded picture as input bytes (c, h, w): channels converted, then resized by `resize`
/// if its size differs.
pub fn to_input(img: &DynamicImage, [c, h, w]: [usize; 3], resize: Resize) -> Vec<u8> {
    let converted = match c {
        1 => DynamicImage::ImageLuma8(img.to_luma8()),
        2 => DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
        3 => DynamicImage::ImageRgb8(img.to_rgb8()),
        _ => DynamicImage::ImageRgba8(img.to_rgba8()),
    };
    let (w32, h32) = (w as u32, h as u32);
    let sized = if (converted.width(), converted.height()) == (w32, h32) {
        converted
    } else {
        match resize {
            Resize::Stretch => converted.resize_exact(w32, h32, FilterType::Triangle),
            Resize::Crop => converted.resize_to_fill(w32, h32, FilterType::Triangle),
            Resize::Pad => {
                let inner = converted.resize(w32, h32, FilterType::Triangle);
                let mut canvas = DynamicImage::new(w32, h32, converted.color());
                let (x, y) = ((w32 - inner.width()) / 2, (h32 - inner.height()) / 2);
                image::imageops::overlay(&mut canvas, &inner, x as i64, y as i64);
                canvas
            }
        }
    };
    // Interleaved (h, w, c) to planar (c, h, w).
    let bytes = sized.as_bytes();
    let mut out = vec![0u8; c * h * w];
    for (i, px) in bytes.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * h * w + i] = v;
        }
    }
    out
}

/// Pictures decoded in order, with the files that could not be (with `skip_bad`).
#[derive(Debug, Default)]
pub struct Decoded {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    /// (file, why) of each picture left out.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Decodes `files` on all cores, in order, showing a progress bar on a terminal. A file that
/// does not decode ends the load with an error naming it, unless `skip_bad`, where it is left
/// out and listed.
pub fn decode_all(
    files: &[(PathBuf, u32)],
    shape: [usize; 3],
    resize: Resize,
    skip_bad: bool,
    bar: &indicatif::ProgressBar,
) -> Result<Decoded> {
    let stop = AtomicBool::new(false);
    let results: Vec<std::result::Result<Vec<u8>, String>> = files
        .par_iter()
        .map(|(path, _)| {
            // After the first bad file without --skip-bad, the rest need not be decoded.
            if stop.load(Ordering::Relaxed) {
                return Err(String::new());
            }
            let r = decode_file(path, shape, resize);
            if r.is_err() && !skip_bad {
                stop.store(true, Ordering::Relaxed);
            }
            bar.inc(1);
            r
        })
        .collect();
    let mut out = Decoded::default();
    let len = shape.iter().product::<usize>();
    out.images.reserve(files.len() * len);
    for ((path, label), r) in files.iter().zip(results) {
        match r {
            Ok(px) => {
                out.images.extend_from_slice(&px);
                out.labels.push(*label);
            }
            Err(why) if !skip_bad && !why.is_empty() => {
                return Err(Error::Image {
                    path: path.clone(),
                    reason: format!("{why} (pass --skip-bad to leave unreadable pictures out)"),
                });
            }
            Err(why) if skip_bad => out.skipped.push((path.clone(), why)),
            Err(_) => {}
        }
    }
    Ok(out)
}
