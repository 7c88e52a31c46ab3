//! CPU ops on hand-computed cases, and the fast convolution against its definition
//! (`reference::conv2d_forward`, an ndarray loop nest in f64) on awkward random shapes.

use crate::common::*;
use gpu_train::backend::{AdamStep, Dropout, EmaStep, Epilogue, Gather, SgdStep, TableBuilder, Xent};
use gpu_train::cpu::{batchnorm, conv2d, data, dense, dropout, loss, optim, pool};
use gpu_train::data::augment::Augment;
use gpu_train::model::{BatchNorm, Conv2d, Dense, Pool};
use gpu_train::reference;
use ndarray::{ArrayView1, ArrayView4};

fn conv(
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
) -> Conv2d {
    Conv2d::new(c_in, (h, w), c_out, k, stride, pad, 0, Some(c_out * c_in * k.0 * k.1))
}

#[test]
fn conv2d_hand_cases() {
    // 3x3 input 1..9, 2x2 kernel [[1, 0], [0, -1]], bias 0.5: every output is a - e + 0.5 = -3.5.
    let l = conv(1, 3, 3, 1, (2, 2), 1, (0, 0));
    let params = [1.0, 0.0, 0.0, -1.0, 0.5];
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let mut y = vec![0.0; 4];
    conv2d::conv2d_forward(&mut y, &x, &params, &[], &l, 1, Epilogue::default());
    assert_eq!(y, vec![-3.5; 4]);
    // 2x2 input, 3x3 kernel of ones, padding 1: each output sums the inputs its window covers.
    let l = conv(1, 2, 2, 1, (3, 3), 1, (1, 1));
    let mut params = vec![1.0; 9];
    params.push(0.0);
    let mut y = vec![0.0; 4];
    conv2d::conv2d_forward(&mut y, &[1.0, 2.0, 3.0, 4.0], &params, &[], &l, 1, Epilogue::default());
    assert_eq!(y, vec![10.0; 4]);
    // Stride 2 picks every other window: 4x4 ramp, 1x1 kernel of 2.
    let l = conv(1, 4, 4, 1, (1, 1), 2, (0, 0));
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let mut y = vec![0.0; 4];
    conv2d::conv2d_forward(&mut y, &x, &[2.0, 0.0], &[], &l, 1, Epilogue::default());
    assert_eq!(y, vec![0.0, 4.0, 16.0, 20.0]);
}

#[test]
fn conv2d_matches_direct_convolution_on_awkward_shapes() {
    let cases = [
        (1, conv(1, 28, 28, 16, (5, 5), 1, (2, 2))),
        (3, conv(3, 7, 5, 5, (3, 3), 2, (1, 0))),
        (2, conv(5, 9, 11, 7, (2, 4), 1, (1, 3))),
        (4, conv(2, 6, 6, 3, (6, 6), 1, (0, 0))),
        (1, conv(3, 10, 10, 2, (3, 3), 3, (2, 2))),
    ];
    for (ci, (n, l)) in cases.into_iter().enumerate() {
        let params = uniform(ci as u64, l.b_off.unwrap() + l.c_out, -1.0, 1.0);
        let x = uniform(100 + ci as u64, n * l.in_len(), -1.0, 1.0);
        let mut y = vec![0.0; n * l.out_len()];
        conv2d::conv2d_forward(&mut y, &x, &params, &[], &l, n, Epilogue::default());
        let (x64, p64): (Vec<f64>, Vec<f64>) =
            (x.iter().map(|&v| v as f64).collect(), params.iter().map(|&v| v as f64).collect());
        let xv = ArrayView4::from_shape((n, l.c_in, l.h_in, l.w_in), &x64).unwrap();
        let wv = ArrayView4::from_shape((l.c_out, l.c_in, l.kh, l.kw), &p64[..l.weight_len()]).unwrap();
        let bv = ArrayView1::from(&p64[l.b_off.unwrap()..]);
        let want = reference::conv2d_forward(xv, wv, Some(bv), l.stride, (l.pad_h, l.pad_w), (1, 1));
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        assert_close(&format!("conv case {ci}"), &y, &want, 1e-5, 1e-5);
    }
}

#[test]
fn dense_hand_case() {
    // W = [[1, 2, 3], [4, 5, 6]], b = [0.5, -1], x = [1, 0, -1] -> [-1.5, -3]
    let l = Dense::new(3, 2, 0, Some(6));
    let params = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, -1.0];
    let mut y = vec![0.0; 2];
    dense::dense_forward(&mut y, &[1.0, 0.0, -1.0], &params, &[], &l, 1, Epilogue::default());
    assert_eq!(y, vec![-1.5, -3.0]);
}

#[test]
fn maxpool_hand_case_first_maximum_wins() {
    let l = Pool { c: 1, h_in: 4, w_in: 4, h_out: 2, w_out: 2, size: 2, stride: 2 };
    #[rustfmt::skip]
    let x = [1.0, 3.0, 2.0, 2.0,
             3.0, 0.0, 1.0, 0.0,
             0.0, 0.0, 5.0, 6.0,
             0.0, -1.0, 7.0, 1.0];
    let (mut y, mut am) = (vec![0.0; 4], vec![0; 4]);
    pool::maxpool_forward(&mut y, &mut am, &x, &l, 1);
    assert_eq!(y, vec![3.0, 2.0, 0.0, 7.0]);
    assert_eq!(am, vec![1, 2, 8, 14]);
    let mut dx = vec![9.0; 16];
    pool::maxpool_backward(&mut dx, &[1.0, 2.0, 3.0, 4.0], &am, &l, 1);
    let mut want = vec![0.0; 16];
    (want[1], want[2], want[8], want[14]) = (1.0, 2.0, 3.0, 4.0);
    assert_eq!(dx, want);
}

#[test]
fn softmax_xent_hand_case_and_stability() {
    // logits ln 1, ln 2, ln 3: probabilities 1/6, 2/6, 3/6; label 2: loss ln 2.
    let z = [0.0, 2f32.ln(), 3f32.ln()];
    let (mut p, mut s) = (vec![0.0; 3], vec![0.0; 2]);
    loss::softmax_xent_forward(&mut p, 0, &mut s, 0, &z, &[2], 1, 1, 3);
    assert_close("probs", &p, &[1.0 / 6.0, 2.0 / 6.0, 0.5], 1e-6, 1e-6);
    assert!((s[0] - 2f32.ln()).abs() < 1e-6 && s[1] == 1.0);
    let mut d = vec![0.0; 3];
    let mut t = TableBuilder::new(&[1]);
    let (none, smooth) = (t.values(&[0.0]), t.values(&[0.3]));
    let x = Xent { members: 1, classes: 3, scale: 1.0, smoothing_at: none };
    loss::softmax_xent_forward_backward(&mut d, &mut s, 0, &z, &[0], &t.words, 1, &x);
    assert_close("dlogits", &d, &[1.0 / 6.0 - 1.0, 2.0 / 6.0, 0.5], 1e-6, 1e-6);
    assert_eq!(s[1], 0.0);
    // Smoothed by 0.3: the target is (0.8, 0.1, 0.1); the loss 0.7 ln 6 + 0.3 (ln 6 + ln 3 +
    // ln 2) / 3.
    let xs = Xent { smoothing_at: smooth, ..x };
    loss::softmax_xent_forward_backward(&mut d, &mut s, 0, &z, &[0], &t.words, 1, &xs);
    assert_close("smoothed dlogits", &d, &[1.0 / 6.0 - 0.8, 2.0 / 6.0 - 0.1, 0.4], 1e-6, 1e-6);
    let want = 0.7 * 6f32.ln() + 0.1 * (6f32.ln() + 3f32.ln() + 2f32.ln());
    assert!((s[0] - want).abs() < 1e-6, "{} vs {want}", s[0]);
    // Huge logits stay finite.
    loss::softmax_xent_forward_backward(&mut d, &mut s, 0, &[1000.0, 0.0, -1000.0], &[1], &t.words, 1, &x);
    assert!((s[0] - 1000.0).abs() < 1e-3 && d.iter().all(|v| v.is_finite()));
}

#[test]
fn mse_hand_case() {
    // outputs [0.5, -0.5], label 0: ((0.5 - 1)^2 + 0.25) / 2 = 0.25; grad 2 (y - t) / 2.
    let (mut d, mut s) = (vec![0.0; 2], vec![0.0; 2]);
    loss::mse_forward_backward(&mut d, &mut s, 0, &[0.5, -0.5], &[0], 1, 1, 2, 1.0);
    assert_eq!(s, vec![0.25, 1.0]);
    assert_eq!(d, vec![-0.5, -0.5]);
}

#[test]
fn adam_matches_the_formula_over_three_steps() {
    let (lr, b1, b2, eps) = (0.1f64, 0.9f64, 0.999f64, 1e-8f64);
    let grads = [[0.5f32, -2.0, 0.0], [0.25, 1.0, 0.0], [-1.0, 0.5, 3.0]];
    let mut p = vec![1.0f32, -1.0, 0.5];
    let (mut m, mut v) = (vec![0.0f32; 3], vec![0.0f32; 3]);
    let (mut pw, mut mw, mut vw) = ([1.0f64, -1.0, 0.5], [0.0f64; 3], [0.0f64; 3]);
    let mut table = TableBuilder::new(&[1]);
    let (lr_at, wd_at) = (table.values(&[lr as f32]), table.values(&[0.0]));
    let segments = table.segments(&[(0, 3)]);
    for (t, g) in grads.iter().enumerate() {
        let t = t as u32 + 1;
        let a = AdamStep { beta1: b1 as f32, beta2: b2 as f32, eps: eps as f32, t, segments, lr_at, wd_at };
        optim::adam_step(&mut p, g, &mut m, &mut v, &table.words, 3, &a);
        for i in 0..3 {
            mw[i] = b1 * mw[i] + (1.0 - b1) * g[i] as f64;
            vw[i] = b2 * vw[i] + (1.0 - b2) * (g[i] as f64).powi(2);
            let mh = mw[i] / (1.0 - b1.powi(t as i32));
            let vh = vw[i] / (1.0 - b2.powi(t as i32));
            pw[i] -= lr * mh / (vh.sqrt() + eps);
        }
    }
    let want: Vec<f32> = pw.iter().map(|&x| x as f32).collect();
    assert_close("adam", &p, &want, 1e-6, 1e-5);
}

#[test]
fn ema_update_averages_the_first_len_elements() {
    let mut table = TableBuilder::new(&[1]);
    let (decay_at, half_at) = (table.values(&[0.75]), table.values(&[0.5]));
    let segments = table.segments(&[(0, 3)]);
    let mut avg = vec![1.0f32, -2.0, 7.0];
    optim::ema_update(&mut avg, &[3.0, 2.0, 0.0], &table.words, 2, &EmaStep { segments, decay_at });
    // 0.75 * 1 + 0.25 * 3 = 1.5; 0.75 * -2 + 0.25 * 2 = -1; the third is past len
    assert_eq!(avg, vec![1.5, -1.0, 7.0]);
    let mut avg = vec![0.5f32];
    for _ in 0..3 {
        optim::ema_update(&mut avg, &[2.5], &table.words, 1, &EmaStep { segments, decay_at: half_at });
    }
    // the distance to the source halves each step: 2, 1, 0.5, 0.25
    assert!((avg[0] - 2.25).abs() < 1e-7, "{}", avg[0]);
}

#[test]
fn sgd_with_and_without_momentum() {
    let mut table = TableBuilder::new(&[1]);
    let (lr_at, none, some) = (table.values(&[0.1]), table.values(&[0.0]), table.values(&[0.9]));
    let segments = table.segments(&[(0, 1)]);
    let mut p = vec![1.0f32];
    let mut vel = vec![0.0f32];
    let plain = SgdStep { segments, lr_at, momentum_at: none, wd_at: none, nesterov: false };
    optim::sgd_step(&mut p, &[2.0], &mut vel, &table.words, 1, &plain);
    assert!((p[0] - 0.8).abs() < 1e-7);
    let mut p = vec![1.0f32];
    for _ in 0..2 {
        optim::sgd_step(&mut p, &[1.0], &mut vel, &table.words, 1, &SgdStep { momentum_at: some, ..plain });
    }
    // buf = 1, then 0.9 + 1 = 1.9: p = 1 - 0.1 - 0.19
    assert!((p[0] - 0.71).abs() < 1e-6, "{}", p[0]);
    // torch's weight decay adds wd p to the gradient: 2 + 0.5 * 1 = 2.5, p = 1 - 0.25.
    let half = table.values(&[0.5]);
    let (mut p, mut vel) = (vec![1.0f32], vec![0.0f32]);
    optim::sgd_step(&mut p, &[2.0], &mut vel, &table.words, 1, &SgdStep { wd_at: half, ..plain });
    assert!((p[0] - 0.75).abs() < 1e-7, "{}", p[0]);
    // Nesterov: b = 1, step lr (g + 0.9 b) = 0.19; then b = 1.9, step 0.1 (1 + 1.71) = 0.271.
    let (mut p, mut vel) = (vec![1.0f32], vec![0.0f32]);
    for _ in 0..2 {
        let s = SgdStep { momentum_at: some, nesterov: true, ..plain };
        optim::sgd_step(&mut p, &[1.0], &mut vel, &table.words, 1, &s);
    }
    assert!((p[0] - (1.0 - 0.19 - 0.271)).abs() < 1e-6, "{}", p[0]);
}

#[test]
fn batchnorm_normalises_and_tracks_running_statistics_like_torch() {
    let l = BatchNorm { c: 1, hw: 2, eps: 0.0, momentum: 0.1, gamma_off: 0, beta_off: 1, mean_off: 0, var_off: 1 };
    let x = [1.0, 3.0, 5.0, 7.0]; // mean 4, biased var 5, unbiased 20/3
    let params = [2.0, 1.0];
    let (mut y, mut saved, mut state) = (vec![0.0; 4], vec![0.0; 2], vec![0.0, 1.0]);
    batchnorm::batchnorm_forward(&mut y, &mut saved, &mut state, &x, &params, &[], &l, 2, true, Default::default());
    let s = 5f32.sqrt();
    assert_close("bn train", &y, &[-6.0 / s + 1.0, -2.0 / s + 1.0, 2.0 / s + 1.0, 6.0 / s + 1.0], 1e-5, 1e-5);
    assert_close("running", &state, &[0.4, 0.9 + 0.1 * 20.0 / 3.0], 1e-6, 1e-6);
    // Evaluation uses the running statistics.
    let mut ye = vec![0.0; 4];
    batchnorm::batchnorm_forward(&mut ye, &mut saved, &mut state, &x, &params, &[], &l, 2, false, Default::default());
    let sd = state[1].sqrt();
    assert!((ye[0] - (2.0 * (1.0 - state[0]) / sd + 1.0)).abs() < 1e-5);
}

#[test]
fn dropout_is_reproducible_and_identity_at_p_zero() {
    let mut table = TableBuilder::new(&[5]);
    let (half, zero) = (table.dropout(&[0.5]), table.dropout(&[0.0]));
    let d = |step: u32, at: usize| Dropout { members: 1, len: 1000, stream: 0x100, step, at };
    let x = uniform(1, 1000, -1.0, 1.0);
    let (mut a, mut b, mut c) = (vec![0.0; 1000], vec![0.0; 1000], vec![0.0; 1000]);
    dropout::dropout_forward(&mut a, &x, &table.words, 1000, &d(7, half));
    dropout::dropout_forward(&mut b, &x, &table.words, 1000, &d(7, half));
    dropout::dropout_forward(&mut c, &x, &table.words, 1000, &d(8, half));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().zip(&x).all(|(&y, &x)| y == 0.0 || y == 2.0 * x));
    // The mask is rng::draw under the member's key: op_key(seed, stream, step).
    let key = gpu_train::rng::op_key(5, 0x100, 7);
    assert!(a.iter().enumerate().all(|(i, &y)| (y != 0.0) == (gpu_train::rng::draw(key, i as u32) >= 0.5)));
    dropout::dropout_forward(&mut a, &x, &table.words, 1000, &d(7, zero));
    assert_eq!(a, x);
}

/// Members sharing a buffer each draw their own mask: member k's slice of each example is
/// exactly what a model of its own (its seed, its rate) draws over its own buffer.
#[test]
fn dropout_members_draw_their_own_masks() {
    let (k, len, n) = (3usize, 17usize, 4usize);
    let p = [0.2f32, 0.5, 0.7];
    let mut table = TableBuilder::new(&[11, 12, 13]);
    let at = table.dropout(&p);
    let x = uniform(2, n * k * len, -1.0, 1.0);
    let mut y = vec![0.0; n * k * len];
    let d = Dropout { members: k, len, stream: 0x104, step: 9, at };
    dropout::dropout_forward(&mut y, &x, &table.words, n * k * len, &d);
    for m in 0..k {
        let mut own = TableBuilder::new(&[11 + m as u64]);
        let own_at = own.dropout(&[p[m]]);
        let xm: Vec<f32> = (0..n).flat_map(|s| x[(s * k + m) * len..][..len].to_vec()).collect();
        let mut ym = vec![0.0; n * len];
        let dm = Dropout { members: 1, len, stream: 0x104, step: 9, at: own_at };
        dropout::dropout_forward(&mut ym, &xm, &own.words, n * len, &dm);
        let got: Vec<f32> = (0..n).flat_map(|s| y[(s * k + m) * len..][..len].to_vec()).collect();
        assert_eq!(got, ym, "member {m}");
    }
}

#[test]
fn gather_batch_normalises_permutes_and_augments() {
    // Three 2x2 images with bytes (i, 2i, 3i, 255), packed four to a u32.
    let bytes: Vec<u8> = (0..3u8).flat_map(|i| [i, 2 * i, 3 * i, 255]).collect();
    let images: Vec<u32> = bytes.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let labels = [7u32, 8, 9];
    let perm = [2u32, 0, 1];
    let (mut x, mut y) = (vec![0.0; 8], vec![0; 2]);
    let g = Gather {
        start: 1,
        n: 2,
        channels: 1,
        height: 2,
        width: 2,
        mean: [0.5; 4],
        std: [0.5; 4],
        augment: None,
        first: 0,
        count: 3,
    };
    data::gather_batch(&mut x, &mut y, &images, &labels, &perm, &g);
    assert_eq!(y, vec![7, 8]);
    let want: Vec<f32> = [0u8, 0, 0, 255, 1, 2, 3, 255].iter().map(|&b| (b as f32 / 255.0 - 0.5) / 0.5).collect();
    assert_close("gather", &x, &want, 1e-6, 1e-6);
    // Chance 0 never alters a batch; chance 1 always does (and the same key repeats).
    let aug = Augment { chance: 0.0, zoom: [0.8, 1.2], rotate: 25.0, shift: 0.2, flip: false, translate: 0 };
    let mut xa = vec![0.0; 8];
    data::gather_batch(&mut xa, &mut y, &images, &labels, &perm, &Gather { augment: Some((aug, 3)), ..g });
    assert_eq!(xa, x);
    let aug = Augment { chance: 1.0, ..aug };
    let (mut x1, mut x2) = (vec![0.0; 8], vec![0.0; 8]);
    data::gather_batch(&mut x1, &mut y, &images, &labels, &perm, &Gather { augment: Some((aug, 3)), ..g });
    data::gather_batch(&mut x2, &mut y, &images, &labels, &perm, &Gather { augment: Some((aug, 3)), ..g });
    assert_ne!(x1, x);
    assert_eq!(x1, x2);
    // Two RGB 1x2 images, each channel normalised by its own statistics; the second is
    // mirrored when flipping (image 1 of the batch under key 3: whichever its draw says).
    let rgb: Vec<u8> = vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120];
    let images: Vec<u32> = rgb.chunks(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let (mean, std) = ([0.1, 0.2, 0.3, 0.0], [0.5, 0.25, 0.125, 1.0]);
    let g = Gather { start: 0, n: 2, channels: 3, height: 1, width: 2, mean, std, augment: None, first: 0, count: 2 };
    let (mut x, mut y) = (vec![0.0; 12], vec![0; 2]);
    data::gather_batch(&mut x, &mut y, &images, &[4, 5], &[0, 1], &g);
    let want: Vec<f32> =
        rgb.iter().enumerate().map(|(i, &b)| (b as f32 / 255.0 - mean[i / 2 % 3]) / std[i / 2 % 3]).collect();
    assert_close("rgb gather", &x, &want, 1e-6, 1e-6);
    let flip = Augment { chance: 0.0, flip: true, ..aug };
    let mut xf = vec![0.0; 12];
    data::gather_batch(&mut xf, &mut y, &images, &[4, 5], &[0, 1], &Gather { augment: Some((flip, 3)), ..g });
    for j in 0..2u32 {
        let flipped = gpu_train::data::augment::image_flipped(3, j);
        for v in 0..6 {
            let src = if flipped { v ^ 1 } else { v };
            assert_eq!(xf[6 * j as usize + v], x[6 * j as usize + src], "image {j} value {v} (flipped: {flipped})");
        }
    }
}

/// The direct convolution (stride 1; used when the CPU has AVX-512 or AVX2), with every
/// instruction set this CPU has, against the im2col + GEMM path on awkward shapes: widths
/// below, at and above 8, 16 and 32, odd channel counts, batch 1, every padding up to k - 1.
/// Summation orders differ, hence 1e-4.
#[test]
fn direct_convolution_matches_the_gemm_path() {
    use gpu_train::cpu::direct;
    let isas = direct::isas();
    if isas.is_empty() {
        eprintln!("neither AVX-512 nor AVX2 here: the direct path is not used on this CPU");
        return;
    }
    for isa in isas {
        direct_matches_gemm(isa);
    }
}

fn direct_matches_gemm(isa: gpu_train::cpu::direct::Isa) {
    use gpu_train::cpu::activation::Epi;
    use gpu_train::cpu::direct;
    use gpu_train::model::Act;
    // (n, c_in, h, w, c_out, k, pad, groups)
    let shapes = [
        (1, 1, 28, 28, 16, 5, 2, 1),
        (2, 16, 28, 28, 32, 5, 2, 1),
        (3, 5, 14, 14, 9, 5, 2, 1),
        (1, 3, 7, 5, 70, 3, 1, 1),
        (2, 2, 33, 17, 3, 3, 0, 1),
        (4, 7, 16, 16, 8, 1, 0, 1),
        (1, 4, 40, 3, 5, 3, 2, 1),
        (3, 6, 9, 31, 12, 4, 3, 1),
        (2, 1, 2, 2, 3, 2, 1, 1),
        (2, 3, 6, 8, 10, 3, 1, 1),
        (1, 2, 5, 9, 4, 3, 2, 1),
        // More than 32 output channels forward (70) and input channels backward (40): the
        // channels go 32 at a time.
        (2, 40, 6, 7, 4, 3, 1, 1),
        // Grouped: two groups, depthwise, and an array of 3 after its first layer.
        (2, 4, 9, 11, 6, 3, 1, 2),
        (3, 5, 8, 8, 5, 3, 1, 5),
        (1, 48, 14, 14, 96, 5, 2, 3),
    ];
    for (i, &(n, c_in, h, w, c_out, k, pad, groups)) in shapes.iter().enumerate() {
        let l = conv(c_in, h, w, c_out, (k, k), 1, (pad, pad)).grouped(groups, groups);
        let l = Conv2d { b_off: Some(l.weight_len()), ..l };
        assert!(direct::supports(&l));
        let plen = l.b_off.unwrap() + c_out;
        let params = uniform(200 + i as u64, plen, -0.5, 0.5);
        let x = uniform(300 + i as u64, n * l.in_len(), -1.0, 1.0);
        let dy = uniform(400 + i as u64, n * l.out_len(), -1.0, 1.0);
        let tag = format!("{isa:?} n={n} {c_in}x{h}x{w}->{c_out} k{k} p{pad} g{groups}");
        let mut table = TableBuilder::new(&[i as u64]);
        let at = table.dropout(&[0.25]);
        let dropout = Dropout { members: 1, len: l.out_len(), stream: 0x100, step: i as u32, at };
        let epi = Epi::new(&table.words, &Epilogue { act: Some(Act::Relu), dropout: Some(dropout) });
        let (mut a, mut b) = (vec![0.0; n * l.out_len()], vec![0.0; n * l.out_len()]);
        direct::conv2d_forward(isa, &mut a, &x, &params, &l, n, &epi);
        conv2d::conv2d_forward_gemm(&mut b, &x, &params, &l, n, &epi);
        assert_close(&format!("forward {tag}"), &a, &b, 1e-4, 1e-4);
        let (mut a, mut b) = (vec![0.0; n * l.in_len()], vec![0.0; n * l.in_len()]);
        direct::conv2d_backward_input(isa, &mut a, &dy, &params, &l, n);
        conv2d::conv2d_backward_input_gemm(&mut b, &dy, &params, &l, n);
        assert_close(&format!("backward input {tag}"), &a, &b, 1e-4, 1e-4);
        let (mut a, mut b) = (vec![9.0; plen], vec![9.0; plen]);
        direct::conv2d_backward_weight(isa, &mut a, &dy, &x, &l, n);
        conv2d::conv2d_backward_weight_gemm(&mut b, &dy, &x, &l, n);
        assert_close(&format!("backward weight {tag}"), &a, &b, 1e-4, 1e-4);
    }
}
