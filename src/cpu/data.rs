//! Batch gathering on the CPU: bytes to normalised floats, with the batch's augmentation.

use rayon::prelude::*;

use super::real::Real;
use crate::backend::Gather;
use crate::data::augment::{batch_altered, image_flipped, image_shift, image_transform, sample_image};

/// Byte `i` of a buffer of bytes packed four to a u32, little-endian.
#[inline]
pub fn packed_byte(words: &[u32], i: usize) -> u8 {
    (words[i / 4] >> ((i % 4) * 8)) as u8
}

pub fn gather_batch<T: Real>(x: &mut [T], y: &mut [u32], images: &[u32], labels: &[u32], perm: &[u32], g: &Gather) {
    let len = g.channels * g.height * g.width;
    let shape = (g.channels, g.height, g.width);
    let altered = g.augment.filter(|&(a, key)| batch_altered(key, a.chance));
    let held = |j: usize| (g.first..g.first + g.count).contains(&(perm[g.start + j] as usize));
    x[..g.n * len].par_chunks_mut(len).enumerate().filter(|(j, _)| held(*j)).for_each(|(j, out)| {
        let idx = perm[g.start + j] as usize - g.first;
        let img: Vec<u8> = (idx * len..(idx + 1) * len).map(|i| packed_byte(images, i)).collect();
        let tf = altered.map(|(a, key)| image_transform(key, j as u32, &a, g.height, g.width));
        let flip = g.augment.is_some_and(|(a, key)| a.flip && image_flipped(key, j as u32));
        let moved = g.augment.map_or((0, 0), |(a, key)| image_shift(key, j as u32, a.translate));
        let mut px = vec![0f32; len];
        sample_image(&mut px, &img, shape, tf, flip, moved, &g.mean, &g.std);
        out.iter_mut().zip(&px).for_each(|(o, &v)| *o = T::of(v));
    });
    for j in (0..g.n).filter(|&j| held(j)) {
        y[j] = labels[perm[g.start + j] as usize];
    }
}
