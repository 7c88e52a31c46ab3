//! shaders/data.wgsl: a batch gathered on the device from the packed data set through the
//! epoch's permutation, normalised and (when asked) augmented.

use crate::backend::Gather;
use crate::gpu::{GpuBackend, GpuBuf};

params! {
    pub(super) struct DataParams {
        mean: [f32; 4],
        std_dev: [f32; 4],
        start: u32,
        n: u32,
        channels: u32,
        height: u32,
        width: u32,
        /// 0: none; 1: augment this batch if its draw says so
        augment: u32,
        key: u32,
        chance: f32,
        zoom_lo: f32,
        zoom_hi: f32,
        /// radians
        rotate: f32,
        shift: f32,
        /// 1: mirror each image whose draw 0x80000000 + j is below 1/2
        flip: u32,
        first: u32,
        count: u32,
        /// largest whole-pixel shift either way (0: none), drawn per image from draws
        /// 0x40000000 + 2j and + 2j + 1
        translate: u32,
    }
}

pub(in crate::gpu) fn gather_batch(
    gpu: &mut GpuBackend,
    x: &mut GpuBuf,
    y: &mut GpuBuf,
    images: &GpuBuf,
    labels: &GpuBuf,
    perm: &GpuBuf,
    g: &Gather,
) {
    let (aug, key) = match g.augment {
        Some((a, key)) => (Some(a), key),
        None => (None, 0),
    };
    let prm = DataParams {
        mean: g.mean,
        std_dev: g.std,
        start: g.start as u32,
        n: g.n as u32,
        channels: g.channels as u32,
        height: g.height as u32,
        width: g.width as u32,
        augment: aug.is_some() as u32,
        key,
        chance: aug.map_or(0.0, |a| a.chance),
        zoom_lo: aug.map_or(1.0, |a| a.zoom[0]),
        zoom_hi: aug.map_or(1.0, |a| a.zoom[1]),
        rotate: aug.map_or(0.0, |a| a.rotate.to_radians()),
        shift: aug.map_or(0.0, |a| a.shift),
        flip: aug.is_some_and(|a| a.flip) as u32,
        first: g.first as u32,
        count: g.count as u32,
        translate: aug.map_or(0, |a| a.translate as u32),
    };
    let grid = gpu.grid(g.n * g.channels * g.height * g.width);
    gpu.dispatch("gather_batch", &[images, labels, perm, x, y], &prm, grid);
}
