//! Randomness, derived entirely from the run's seed so that a run can be repeated bit for bit
//! and resumed at any epoch boundary without saving generator state beyond (seed, epoch, step).
//!
//! Two kinds:
//! - A counter-based hash (`mix32`) for per-element randomness inside ops (dropout masks,
//!   augmentation). The same u32 arithmetic is in `shaders/common.wgsl`, so the CPU and GPU
//!   draw identical numbers and masks are reproducible on both.
//! - ChaCha8 streams (host only) for the per-epoch shuffle and weight initialisation, with our
//!   own Fisher-Yates and Box-Muller so results do not change with `rand` versions.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// Stream ids: each consumer of randomness gets its own.
pub const STREAM_DROPOUT: u32 = 0x0100;
pub const STREAM_AUGMENT: u32 = 0x0200;
pub const STREAM_SHUFFLE: u32 = 0x0300;
pub const STREAM_INIT: u32 = 0x0400;
pub const STREAM_SPLIT: u32 = 0x0500;

/// "lowbias32" integer hash (Chris Wellons): a bijection on u32 with good avalanche.
#[inline]
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The 32-bit seed the ops see.
pub fn seed32(seed: u64) -> u32 {
    mix32(seed as u32 ^ mix32((seed >> 32) as u32))
}

/// Key of one (stream, step) pair: passed to an op, which draws `draw(key, i)` per element.
pub fn op_key(seed: u64, stream: u32, step: u32) -> u32 {
    mix32(mix32(seed32(seed) ^ stream) ^ step)
}

/// The i-th uniform draw in [0, 1) under `key`: 24 random bits, exact in f32.
#[inline]
pub fn draw(key: u32, i: u32) -> f32 {
    (mix32(key ^ mix32(i)) >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// A ChaCha8 generator for one stream and index (e.g. the shuffle of epoch 7).
pub fn stream(seed: u64, stream: u32, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..12].copy_from_slice(&stream.to_le_bytes());
    key[12..20].copy_from_slice(&index.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// Uniform integer in [0, n) without modulo bias (Lemire's method with rejection).
pub fn below(rng: &mut ChaCha8Rng, n: u32) -> u32 {
    debug_assert!(n > 0);
    loop {
        let m = rng.next_u32() as u64 * n as u64;
        let low = m as u32;
        if low >= n || low >= n.wrapping_neg() % n {
            return (m >> 32) as u32;
        }
    }
}

/// Uniform f64 in [0, 1) with 53 random bits.
pub fn unit_f64(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal by Box-Muller (one value per call; simple and version-stable).
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - unit_f64(rng); // (0, 1]: ln is finite
    let u2 = unit_f64(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The permutation of `0..n` used for epoch `epoch` (Fisher-Yates).
pub fn epoch_permutation(seed: u64, epoch: usize, n: usize) -> Vec<u32> {
    let mut rng = stream(seed, STREAM_SHUFFLE, epoch as u64);
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u32 + 1) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_depends_on_epoch() {
        let a = epoch_permutation(1, 0, 1000);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
        assert_eq!(a, epoch_permutation(1, 0, 1000));
        assert_ne!(a, epoch_permutation(1, 1, 1000));
        assert_ne!(a, epoch_permutation(2, 0, 1000));
    }

    #[test]
    fn draws_are_uniform_enough() {
        let key = op_key(42, STREAM_DROPOUT, 3);
        let n = 100_000;
        let mean: f64 = (0..n).map(|i| draw(key, i) as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        let below_02 = (0..n).filter(|&i| draw(key, i) < 0.2).count() as f64 / n as f64;
        assert!((below_02 - 0.2).abs() < 0.005, "{below_02}");
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = stream(7, STREAM_INIT, 0);
        let xs: Vec<f64> = (0..50_000).map(|_| normal(&mut r)).collect();
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64;
        assert!(m.abs() < 0.02 && (v - 1.0).abs() < 0.03, "mean {m} var {v}");
    }
}
