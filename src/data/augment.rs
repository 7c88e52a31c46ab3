//! Data augmentation: seed B's, as one affine resampling per image, a left-right mirror, and a
//! whole-pixel random translation (torchvision's pad-and-crop).
//!
//! Seed B alters a whole batch with probability `chance`; each image in it then gets a random
//! zoom (about the centre), a rotation about the centre and a horizontal and vertical shift,
//! sampled bilinearly with zero fill. We compose the three into one affine map and sample once
//! (the seed interpolated after each step, blurring three times; one resampling keeps the
//! digit sharper and costs a third). The draws come from `rng::draw`, so the CPU op and the
//! WGSL `gather_batch` (shaders/data.wgsl, which mirrors this file) alter the same images the
//! same way.

use serde::{Deserialize, Serialize};

use crate::rng::draw;

/// Augmentation settings of a recipe (`augment = { chance = 0.8 }` in a model file).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Probability that a batch gets the zoom, rotation and shift (seed B's per-batch draw).
    #[serde(default = "one")]
    pub chance: f32,
    /// Zoom factor range (>1 enlarges the digit).
    #[serde(default = "default_zoom")]
    pub zoom: [f32; 2],
    /// Largest rotation, degrees, either way.
    #[serde(default = "default_rotate")]
    pub rotate: f32,
    /// Largest shift as a fraction of the width (x) and height (y), either way.
    #[serde(default = "default_shift")]
    pub shift: f32,
    /// Mirror each image left to right with probability 1/2, drawn per image whether or not
    /// its batch gets the rest (off for digits, whose mirror images are other glyphs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flip: bool,
    /// Shift each image by a whole number of pixels drawn uniformly from -translate..=translate
    /// in x and in y, the uncovered border zero-filled (pixel 0): torchvision's
    /// `RandomCrop(size, padding = translate)`, pad-4-and-crop for 32x32 pictures. Drawn per
    /// image for every batch, whether or not the batch gets the affine part (`chance = 0`
    /// leaves only the flip and the translation).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub translate: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn one() -> f32 {
    1.0
}

fn default_zoom() -> [f32; 2] {
    [0.8, 1.2]
}
fn default_rotate() -> f32 {
    25.0
}
fn default_shift() -> f32 {
    0.2
}

impl Augment {
    pub fn validate(&self) -> Result<(), String> {
        let ok = (0.0..=1.0).contains(&self.chance)
            && self.zoom[0] > 0.0
            && self.zoom[0] <= self.zoom[1]
            && self.zoom[1].is_finite()
            && (0.0..=180.0).contains(&self.rotate)
            && (0.0..=1.0).contains(&self.shift)
            && self.translate <= crate::model::MAX_SIDE;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "augment needs 0 <= chance <= 1, 0 < zoom[0] <= zoom[1], 0 <= rotate <= 180, 0 <= shift <= 1, translate <= {}; got {self:?}",
                crate::model::MAX_SIDE
            ))
        }
    }
}

/// Inverse map of one image: output pixel (x, y) samples the source at
/// (cx + a*dx + b*dy, cy - b*dx + a*dy) with dx = x - cx - tx, dy = y - cy - ty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    pub a: f32,
    pub b: f32,
    pub tx: f32,
    pub ty: f32,
}

/// Whether the batch drawn under `key` is altered.
pub fn batch_altered(key: u32, chance: f32) -> bool {
    draw(key, 0) < chance
}

/// The transform of image `j` of the batch drawn under `key`.
pub fn image_transform(key: u32, j: u32, aug: &Augment, h: usize, w: usize) -> Transform {
    let u = |k: u32| draw(key, 4 * j + k + 1);
    let zoom = aug.zoom[0] + u(0) * (aug.zoom[1] - aug.zoom[0]);
    let theta = (2.0 * u(1) - 1.0) * aug.rotate.to_radians();
    let tx = (2.0 * u(2) - 1.0) * aug.shift * w as f32;
    let ty = (2.0 * u(3) - 1.0) * aug.shift * h as f32;
    Transform { a: theta.cos() / zoom, b: theta.sin() / zoom, tx, ty }
}

/// Draws 0x8000_0000 + j decide the mirroring of image j, apart from the affine draws 4j + k.
const FLIP_DRAWS: u32 = 0x8000_0000;

/// Whether image `j` of the batch drawn under `key` is mirrored (when the recipe flips).
pub fn image_flipped(key: u32, j: u32) -> bool {
    draw(key, FLIP_DRAWS + j) < 0.5
}

/// Draws 0x4000_0000 + 2j and + 2j + 1 give image j's whole-pixel shift, apart from the affine
/// draws (below 4j + 5) and the flip draws (from 0x8000_0000 on) for any batch under 2^28.
const TRANSLATE_DRAWS: u32 = 0x4000_0000;

/// One uniform whole number in -t..=t from a draw in [0, 1).
fn offset(u: f32, t: usize) -> i32 {
    ((u * (2 * t + 1) as f32) as i32).min(2 * t as i32) - t as i32
}

/// The whole-pixel shift (dx, dy) of image `j` of the batch drawn under `key`, each in
/// -t..=t: output pixel (x, y) shows the image's pixel (x - dx, y - dy), zero outside it.
pub fn image_shift(key: u32, j: u32, t: usize) -> (i32, i32) {
    if t == 0 {
        return (0, 0);
    }
    (offset(draw(key, TRANSLATE_DRAWS + 2 * j), t), offset(draw(key, TRANSLATE_DRAWS + 2 * j + 1), t))
}

/// Writes one image of `c` planes of `h x w` bytes as f32 `(pixel/255 - mean[c]) / std[c]`,
/// mirrored left to right if `flip`, shifted by the whole pixels `moved` (`image_shift`),
/// resampled through `tf` if given (the same map for every channel).
#[allow(clippy::too_many_arguments)]
pub fn sample_image(
    out: &mut [f32],
    img: &[u8],
    (c, h, w): (usize, usize, usize),
    tf: Option<Transform>,
    flip: bool,
    moved: (i32, i32),
    mean: &[f32],
    std: &[f32],
) {
    for ch in 0..c {
        let plane = &img[ch * h * w..(ch + 1) * h * w];
        let o = &mut out[ch * h * w..(ch + 1) * h * w];
        sample_plane(o, plane, h, w, tf, flip, moved, mean[ch], std[ch]);
    }
}

#[allow(clippy::too_many_arguments)]
fn sample_plane(
    out: &mut [f32],
    img: &[u8],
    h: usize,
    w: usize,
    tf: Option<Transform>,
    flip: bool,
    (mx, my): (i32, i32),
    mean: f32,
    std: f32,
) {
    let scale = 1.0 / (255.0 * std);
    let shift = mean / std;
    let px = |x: i32, y: i32| -> f32 {
        if x < 0 || y < 0 || x >= w as i32 || y >= h as i32 { 0.0 } else { img[y as usize * w + x as usize] as f32 }
    };
    let (cx, cy) = ((w as f32 - 1.0) * 0.5, (h as f32 - 1.0) * 0.5);
    // The pixel value (0..255) of the transformed image at whole pixel (x, y): bilinear, zero
    // outside the source.
    let value = |x: i32, y: i32| -> f32 {
        let Some(t) = tf else { return px(x, y) };
        let dx = x as f32 - cx - t.tx;
        let dy = y as f32 - cy - t.ty;
        let sx = cx + t.a * dx + t.b * dy;
        let sy = cy - t.b * dx + t.a * dy;
        let x0 = sx.floor();
        let y0 = sy.floor();
        let fx = sx - x0;
        let fy = sy - y0;
        let (x0, y0) = (x0 as i32, y0 as i32);
        let top = px(x0, y0) * (1.0 - fx) + px(x0 + 1, y0) * fx;
        let bottom = px(x0, y0 + 1) * (1.0 - fx) + px(x0 + 1, y0 + 1) * fx;
        top * (1.0 - fy) + bottom * fy
    };
    for y in 0..h {
        for x in 0..w {
            // Output column x shows column x' = mirror(x) of the shifted image, which shows the
            // transformed image's pixel (x' - mx, y - my), zero (pixel 0) outside it.
            let sx = if flip { w - 1 - x } else { x } as i32 - mx;
            let sy = y as i32 - my;
            let inside = sx >= 0 && sy >= 0 && sx < w as i32 && sy < h as i32;
            out[y * w + x] = if inside { value(sx, sy) } else { 0.0 } * scale - shift;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_transform_reproduces_the_image() {
        let img: Vec<u8> = (0..20).map(|i| (i * 13) as u8).collect();
        let mut a = vec![0.0; 20];
        let mut b = vec![0.0; 20];
        let id = Transform { a: 1.0, b: 0.0, tx: 0.0, ty: 0.0 };
        sample_image(&mut a, &img, (1, 4, 5), None, false, (0, 0), &[0.0], &[1.0]);
        sample_image(&mut b, &img, (1, 4, 5), Some(id), false, (0, 0), &[0.0], &[1.0]);
        assert_eq!(a, b);
        assert!((a[3] - 39.0 / 255.0).abs() < 1e-7);
    }

    #[test]
    fn shift_by_one_pixel_moves_the_image() {
        // 3x3 image with one lit pixel at the centre; shift right by 1 px.
        let mut img = vec![0u8; 9];
        img[4] = 255;
        let mut out = vec![0.0; 9];
        let t = Transform { a: 1.0, b: 0.0, tx: 1.0, ty: 0.0 };
        sample_image(&mut out, &img, (1, 3, 3), Some(t), false, (0, 0), &[0.0], &[1.0]);
        assert_eq!(out, vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn rotation_by_90_degrees_about_the_centre() {
        // Lit pixel right of centre in a 3x3 image; +90 degrees (y down) moves it below.
        let mut img = vec![0u8; 9];
        img[5] = 255;
        let mut out = vec![0.0; 9];
        let th = std::f32::consts::FRAC_PI_2;
        let t = Transform { a: th.cos(), b: th.sin(), tx: 0.0, ty: 0.0 };
        sample_image(&mut out, &img, (1, 3, 3), Some(t), false, (0, 0), &[0.0], &[1.0]);
        assert!((out[7] - 1.0).abs() < 1e-5, "{out:?}");
        assert!(out.iter().sum::<f32>() - 1.0 < 1e-5);
    }

    #[test]
    fn transforms_stay_in_range() {
        let aug = Augment { chance: 1.0, zoom: [0.8, 1.2], rotate: 25.0, shift: 0.2, flip: false, translate: 0 };
        for j in 0..1000 {
            let t = image_transform(12345, j, &aug, 28, 28);
            let zoom = 1.0 / (t.a * t.a + t.b * t.b).sqrt();
            assert!((0.8 - 1e-5..=1.2 + 1e-5).contains(&zoom));
            assert!(t.b.atan2(t.a).abs() <= 25f32.to_radians() + 1e-5);
            assert!(t.tx.abs() <= 5.6 + 1e-5 && t.ty.abs() <= 5.6 + 1e-5);
        }
    }

    #[test]
    fn flip_mirrors_each_channel_and_normalises_it_by_its_own_statistics() {
        // Two channels of 2x3: a ramp and its double.
        let img: Vec<u8> = vec![0, 10, 20, 30, 40, 50, 0, 20, 40, 60, 80, 100];
        let mut out = vec![0.0; 12];
        sample_image(&mut out, &img, (2, 2, 3), None, true, (0, 0), &[0.0, 0.5], &[1.0, 2.0]);
        let want: Vec<f32> = [20, 10, 0, 50, 40, 30]
            .iter()
            .map(|&v| v as f32 / 255.0)
            .chain([40, 20, 0, 100, 80, 60].iter().map(|&v| (v as f32 / 255.0 - 0.5) / 2.0))
            .collect();
        for (o, w) in out.iter().zip(&want) {
            assert!((o - w).abs() < 1e-6, "{out:?} vs {want:?}");
        }
        // An identity transform with the flip gives the same mirror.
        let mut t = vec![0.0; 12];
        let id = Transform { a: 1.0, b: 0.0, tx: 0.0, ty: 0.0 };
        sample_image(&mut t, &img, (2, 2, 3), Some(id), true, (0, 0), &[0.0, 0.5], &[1.0, 2.0]);
        assert_eq!(out, t);
    }

    #[test]
    fn a_whole_pixel_shift_moves_the_picture_and_fills_with_black() {
        // 3x4 ramp, shifted right 1 and up 1: pixel (x, y) shows (x - 1, y + 1), zero where
        // that lies outside; normalised, zero is -mean/std.
        let img: Vec<u8> = (1..=12).collect();
        let mut out = vec![0.0; 12];
        sample_image(&mut out, &img, (1, 3, 4), None, false, (1, -1), &[0.5], &[0.5]);
        let raw = [0, 5, 6, 7, 0, 9, 10, 11, 0, 0, 0, 0];
        for (o, &r) in out.iter().zip(&raw) {
            assert!((o - (r as f32 / 255.0 - 0.5) / 0.5).abs() < 1e-6, "{out:?}");
        }
        // With a flip, the shifted image is mirrored: column x shows column (3 - x) - 1.
        sample_image(&mut out, &img, (1, 3, 4), None, true, (1, 0), &[0.0], &[1.0]);
        let raw = [3, 2, 1, 0, 7, 6, 5, 0, 11, 10, 9, 0];
        for (o, &r) in out.iter().zip(&raw) {
            assert!((o - r as f32 / 255.0).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn shifts_cover_every_whole_offset_evenly() {
        let mut counts = [[0usize; 9]; 2];
        for j in 0..9000 {
            let (dx, dy) = image_shift(5, j, 4);
            counts[0][(dx + 4) as usize] += 1;
            counts[1][(dy + 4) as usize] += 1;
        }
        for c in counts.iter().flatten() {
            assert!((900..1100).contains(c), "{counts:?}");
        }
        assert_eq!(image_shift(5, 0, 0), (0, 0));
    }

    #[test]
    fn about_half_the_images_are_flipped() {
        let flipped = (0..10_000).filter(|&j| image_flipped(99, j)).count();
        assert!((4800..5200).contains(&flipped), "{flipped}");
    }
}
