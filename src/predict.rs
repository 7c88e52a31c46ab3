//! Turning an arbitrary picture into a model's input. Digit models (one channel, trained on
//! MNIST-style data) get what MNIST was made with: grayscale, light digit on a dark
//! background, the digit scaled to fit a 20x20 box (keeping its aspect ratio) and placed so
//! its centre of mass is at the centre of the 28x28 frame. Every other model gets the picture
//! as its training data was prepared: channels converted and resized by the model's rule.

use std::path::Path;

use crate::error::{Error, Result};

/// How a picture becomes an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Prep {
    /// MNIST's making: invert if dark on light, crop to the ink, fit 20x20, centre by mass.
    Digits,
    /// Grayscale, inverted if dark on light, resized to the frame.
    Raw,
    /// Channels converted and resized by the model's rule, as its training pictures were.
    Plain,
}

impl Prep {
    /// What a model takes: digits for one-channel square models trained on MNIST-style
    /// data (or on data the file does not describe, as older files of MNIST models), else
    /// plain.
    pub fn for_model(shape: [usize; 3], info: Option<&crate::data::DataInfo>) -> Prep {
        let digit_shape = shape[0] == 1 && shape[1] == shape[2];
        if digit_shape && info.is_none_or(|d| d.digits) { Prep::Digits } else { Prep::Plain }
    }
}

/// Picture `path` as input bytes (c, h, w) for a model taking `shape`.
pub fn prepare(path: &Path, shape: [usize; 3], prep: Prep, resize: crate::data::Resize) -> Result<Vec<u8>> {
    let [c, h, w] = shape;
    if prep != Prep::Plain && (c != 1 || h != w) {
        return Err(Error::Config(format!(
            "MNIST-style preparation needs a one-channel square model; this one takes {shape:?} (use plain)"
        )));
    }
    match prep {
        Prep::Digits | Prep::Raw => {
            let (iw, ih, px) = load_gray(path)?;
            Ok(mnist_like(iw, ih, &px, w, prep == Prep::Raw))
        }
        Prep::Plain => crate::data::folder::decode_file(path, shape, resize)
            .map_err(|reason| Error::Image { path: path.to_path_buf(), reason }),
    }
}

/// Loads an image file (PNG, JPEG, BMP) as 8-bit grayscale: (width, height, pixels).
pub fn load_gray(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let img = image::open(path).map_err(|e| Error::Image { path: path.to_path_buf(), reason: e.to_string() })?;
    let g = img.to_luma8();
    let (w, h) = g.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Image { path: path.to_path_buf(), reason: "empty image".into() });
    }
    Ok((w as usize, h as usize, g.into_raw()))
}

/// MNIST-style preprocessing of a grayscale image into `size x size` bytes.
/// With `raw`, the image is only inverted if needed and resized to the frame.
pub fn mnist_like(w: usize, h: usize, px: &[u8], size: usize, raw: bool) -> Vec<u8> {
    // Light background (judged by the border) means a dark digit: invert.
    let border: Vec<u8> = (0..w)
        .flat_map(|x| [px[x], px[(h - 1) * w + x]])
        .chain((0..h).flat_map(|y| [px[y * w], px[y * w + w - 1]]))
        .collect();
    let border_mean = border.iter().map(|&v| v as f64).sum::<f64>() / border.len() as f64;
    let img: Vec<f32> = px.iter().map(|&v| if border_mean > 127.0 { 255.0 - v as f32 } else { v as f32 }).collect();
    if raw {
        return resize(&img, w, h, size, size).iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect();
    }
    // Bounding box of the ink (above a fifth of the brightest pixel).
    let max = img.iter().cloned().fold(0.0f32, f32::max);
    if max <= 0.0 {
        return vec![0; size * size];
    }
    let ink = |x: usize, y: usize| img[y * w + x] > 0.2 * max;
    let (mut x0, mut x1, mut y0, mut y1) = (w, 0, h, 0);
    for y in 0..h {
        for x in 0..w {
            if ink(x, y) {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
        }
    }
    let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
    let crop: Vec<f32> = (y0..=y1).flat_map(|y| (x0..=x1).map(move |x| (x, y))).map(|(x, y)| img[y * w + x]).collect();
    // Fit the longer side into 20/28 of the frame.
    let inner = (size as f64 * 20.0 / 28.0).round() as usize;
    let scale = inner as f64 / bw.max(bh) as f64;
    let (nw, nh) = (((bw as f64 * scale).round() as usize).max(1), ((bh as f64 * scale).round() as usize).max(1));
    let digit = resize(&crop, bw, bh, nw, nh);
    // Centre of mass to the frame's centre.
    let mass: f64 = digit.iter().map(|&v| v as f64).sum();
    let (mut cx, mut cy) = (0.0, 0.0);
    for y in 0..nh {
        for x in 0..nw {
            let v = digit[y * nw + x] as f64;
            cx += v * x as f64;
            cy += v * y as f64;
        }
    }
    let (cx, cy) = if mass > 0.0 { (cx / mass, cy / mass) } else { (nw as f64 / 2.0, nh as f64 / 2.0) };
    let ox = ((size as f64 - 1.0) / 2.0 - cx).round() as isize;
    let oy = ((size as f64 - 1.0) / 2.0 - cy).round() as isize;
    let mut out = vec![0u8; size * size];
    for y in 0..nh {
        for x in 0..nw {
            let (tx, ty) = (x as isize + ox, y as isize + oy);
            if tx >= 0 && ty >= 0 && (tx as usize) < size && (ty as usize) < size {
                out[ty as usize * size + tx as usize] = digit[y * nw + x].round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Area-averaging resize (box filter), good for shrinking photos to 28 pixels.
fn resize(src: &[f32], w: usize, h: usize, nw: usize, nh: usize) -> Vec<f32> {
    let mut out = vec![0f32; nw * nh];
    let (sx, sy) = (w as f64 / nw as f64, h as f64 / nh as f64);
    for oy in 0..nh {
        for ox in 0..nw {
            let (fx0, fx1) = (ox as f64 * sx, (ox + 1) as f64 * sx);
            let (fy0, fy1) = (oy as f64 * sy, (oy + 1) as f64 * sy);
            let (mut acc, mut area) = (0.0, 0.0);
            let mut y = fy0.floor() as usize;
            while (y as f64) < fy1 && y < h {
                let wy = (fy1.min(y as f64 + 1.0) - fy0.max(y as f64)).max(0.0);
                let mut x = fx0.floor() as usize;
                while (x as f64) < fx1 && x < w {
                    let wx = (fx1.min(x as f64 + 1.0) - fx0.max(x as f64)).max(0.0);
                    acc += src[y * w + x] as f64 * wx * wy;
                    area += wx * wy;
                    x += 1;
                }
                y += 1;
            }
            out[oy * nw + ox] = if area > 0.0 { (acc / area) as f32 } else { 0.0 };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dark_digit_on_white_is_inverted_and_centred() {
        // A 60x40 white picture with a black bar off to the left.
        let (w, h) = (60, 40);
        let mut px = vec![255u8; w * h];
        for y in 5..35 {
            for x in 5..11 {
                px[y * w + x] = 0;
            }
        }
        let out = mnist_like(w, h, &px, 28, false);
        assert_eq!(out.len(), 784);
        // Background is black, the bar is bright, and its mass is centred.
        assert_eq!(out[0], 0);
        let mass: f64 = out.iter().map(|&v| v as f64).sum();
        let cx: f64 = out.iter().enumerate().map(|(i, &v)| v as f64 * (i % 28) as f64).sum::<f64>() / mass;
        let cy: f64 = out.iter().enumerate().map(|(i, &v)| v as f64 * (i / 28) as f64).sum::<f64>() / mass;
        assert!((cx - 13.5).abs() <= 1.0 && (cy - 13.5).abs() <= 1.0, "centre ({cx}, {cy})");
        // The bar's long side is scaled to 20 pixels.
        let rows = (0..28).filter(|y| (0..28).any(|x| out[y * 28 + x] > 100)).count();
        assert!((19..=21).contains(&rows), "{rows} rows");
    }

    #[test]
    fn blank_image_gives_blank_input() {
        assert!(mnist_like(10, 10, &[0; 100], 28, false).iter().all(|&v| v == 0));
    }
}
