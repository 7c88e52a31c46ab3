//! The reference definitions (`gpu_train::reference`, ndarray in f64) and what they judge.
//!
//! 1. Every backward of the reference against central finite differences of its own forward,
//!    element by element: the first link of the chain finite differences -> reference ->
//!    backends. Each output y is reduced to L = sum r_i y_i (r random), so the backward with
//!    dy = r must equal dL/dx. In f64 with step 1e-6 a central difference carries a truncation
//!    error of order 1e-12 |f'''| and a rounding error of order 1e-16 |L| / 1e-6 = 1e-10 |L|:
//!    atol 1e-7 + rtol 1e-6 leaves room for both and for nothing else. Inputs avoid relu's kink
//!    and max-pooling's ties, where the derivative is not defined.
//! 2. A few ops on cases computed by hand.
//! 3. The fast CPU backend against the reference on the selftest's awkward shapes
//!    (`gpu_train::selftest`; the GPU half runs in tests/gpu_parity.rs), and whole models: the
//!    same forward and backward on the CPU backend and on the reference backend.

use crate::common::*;
use gpu_train::backend::{AdamStep, Backend, Dropout, TableBuilder};
use gpu_train::cpu::CpuBackend;
use gpu_train::data;
use gpu_train::model::spec::{ModelSpec, Normalize};
use gpu_train::model::{Act, Arch, presets};
use gpu_train::network::{DeviceData, Member, Members, Network};
use gpu_train::reference::{self as r, Reference};
use gpu_train::selftest;
use ndarray::{Array, Array1, ArrayView1, Dimension, ShapeBuilder, array};

const EPS: f64 = 1e-6;
const ATOL: f64 = 1e-7;
const RTOL: f64 = 1e-6;

/// `values` as an f64 array of `shape` (row-major).
fn filled<Sh: ShapeBuilder>(shape: Sh, values: Vec<f32>) -> Array<f64, Sh::Dim> {
    let mut a = Array::zeros(shape);
    assert_eq!(a.len(), values.len());
    a.iter_mut().zip(values).for_each(|(a, v)| *a = f64::from(v));
    a
}

/// Seeded uniform values in [lo, hi) as an f64 array of `shape`.
fn arr<Sh: ShapeBuilder>(seed: u64, shape: Sh, lo: f32, hi: f32) -> Array<f64, Sh::Dim> {
    let mut a = Array::zeros(shape);
    let values = uniform(seed, a.len(), lo, hi);
    a.iter_mut().zip(values).for_each(|(a, v)| *a = f64::from(v));
    a
}

/// Values of magnitude in [0.1, 1) with random signs (away from relu's kink) as an array.
fn away(seed: u64, n: usize) -> Array1<f64> {
    filled(n, away_from_zero(seed, n))
}

/// Checks `analytic` (the backward's gradient of x) against central differences of
/// L(x) = sum r * f(x), at every element of x.
fn check<D: Dimension, E: Dimension>(
    what: &str,
    x: &Array<f64, D>,
    r: &Array<f64, E>,
    analytic: &Array<f64, D>,
    f: impl Fn(&Array<f64, D>) -> Array<f64, E>,
) {
    assert_eq!(x.shape(), analytic.shape(), "{what}: gradient shape");
    let loss = |x: &Array<f64, D>| -> f64 { (&f(x) * r).sum() };
    let mut x = x.clone();
    for (i, (xi, ai)) in x.clone().iter().zip(analytic.iter()).enumerate() {
        let at = |v: f64, x: &mut Array<f64, D>| {
            *x.as_slice_mut().unwrap().get_mut(i).unwrap() = v;
        };
        at(xi + EPS, &mut x);
        let plus = loss(&x);
        at(xi - EPS, &mut x);
        let minus = loss(&x);
        at(*xi, &mut x);
        let num = (plus - minus) / (2.0 * EPS);
        assert!(
            (num - ai).abs() <= ATOL + RTOL * num.abs(),
            "{what}: element {i}: backward {ai}, finite differences {num} (difference {:e})",
            (num - ai).abs()
        );
    }
}

#[test]
fn conv2d_backward_matches_finite_differences() {
    // (c_in, h, w, c_out, kh, kw, stride, pad, (groups, in_groups)): odd sizes, rectangular
    // kernels and padding, strides that skip inputs, a kernel as large as the padded input;
    // grouped, depthwise, and groups that share input groups (an array's first layer: the
    // input's gradient collects from every group that read it).
    let cases = [
        (3, 7, 6, 4, 3, 3, 1, (1, 1), (1, 1)),
        (2, 9, 8, 3, 3, 2, 2, (0, 1), (1, 1)),
        (1, 6, 6, 2, 5, 5, 1, (2, 2), (1, 1)),
        (3, 6, 7, 2, 3, 3, 3, (2, 1), (1, 1)),
        (2, 4, 4, 3, 6, 6, 1, (1, 1), (1, 1)),
        (4, 6, 5, 6, 3, 3, 1, (1, 1), (2, 2)),
        (3, 5, 5, 3, 3, 2, 2, (1, 0), (3, 3)),
        (2, 5, 6, 6, 3, 3, 1, (1, 1), (6, 2)),
    ];
    for (i, &(ci, h, w, co, kh, kw, stride, pad, groups)) in cases.iter().enumerate() {
        let s = 10 * i as u64;
        let n = 2;
        let cg = ci / groups.1;
        let x = arr(s, (n, ci, h, w), -1.0, 1.0);
        let wt = arr(s + 1, (co, cg, kh, kw), -1.0, 1.0);
        let b = arr(s + 2, co, -1.0, 1.0);
        let y = r::conv2d_forward(x.view(), wt.view(), Some(b.view()), stride, pad, groups);
        let dy = arr(s + 3, y.raw_dim(), -1.0, 1.0);
        let dx = r::conv2d_backward_input(dy.view(), wt.view(), (ci, h, w), stride, pad, groups);
        let (dw, db) = r::conv2d_backward_weight(dy.view(), x.view(), (cg, kh, kw), stride, pad, groups);
        let tag = format!("conv case {i}");
        check(&format!("{tag} dx"), &x, &dy, &dx, |x| {
            r::conv2d_forward(x.view(), wt.view(), Some(b.view()), stride, pad, groups)
        });
        check(&format!("{tag} dw"), &wt, &dy, &dw, |w| {
            r::conv2d_forward(x.view(), w.view(), Some(b.view()), stride, pad, groups)
        });
        check(&format!("{tag} db"), &b, &dy, &db, |b| {
            r::conv2d_forward(x.view(), wt.view(), Some(b.view()), stride, pad, groups)
        });
    }
}

#[test]
fn dense_backward_matches_finite_differences() {
    // (n, n_in, n_out, groups): ungrouped, and grouped as an array's later layers.
    for (i, &(n, ni, no, g)) in
        [(1, 5, 3, 1), (4, 13, 7, 1), (3, 2, 9, 1), (3, 15, 6, 3), (1, 4, 10, 2)].iter().enumerate()
    {
        let s = 100 + 10 * i as u64;
        let x = arr(s, (n, ni), -1.0, 1.0);
        let w = arr(s + 1, (no, ni / g), -1.0, 1.0);
        let b = arr(s + 2, no, -1.0, 1.0);
        let dy = arr(s + 3, (n, no), -1.0, 1.0);
        let dx = r::dense_backward_input(dy.view(), w.view(), g);
        let (dw, db) = r::dense_backward_weight(dy.view(), x.view(), g);
        let tag = format!("dense case {i}");
        check(&format!("{tag} dx"), &x, &dy, &dx, |x| r::dense_forward(x.view(), w.view(), Some(b.view()), g));
        check(&format!("{tag} dw"), &w, &dy, &dw, |w| r::dense_forward(x.view(), w.view(), Some(b.view()), g));
        check(&format!("{tag} db"), &b, &dy, &db, |b| r::dense_forward(x.view(), w.view(), Some(b.view()), g));
    }
}

#[test]
fn activation_and_dropout_backward_match_finite_differences() {
    let x = away(200, 57).mapv(|v| 3.0 * v);
    let dy = arr(201, 57, -1.0, 1.0);
    for a in [Act::Relu, Act::Sigmoid, Act::Tanh, Act::LeakyRelu(0.2), Act::Gelu, Act::Silu] {
        // The backward reads the output, or gelu's and silu's input.
        let y = r::activation_forward(x.view(), a);
        let saved = if a.grad_from_output() { &y } else { &x };
        let dx = r::activation_backward(dy.view(), saved.view(), a, Array1::ones(57).view());
        check(&format!("{a:?}"), &x, &dy, &dx, |x| r::activation_forward(x.view(), a));
    }
    // The sum of two values: each gets the whole gradient.
    let other = arr(202, 57, -1.0, 1.0);
    check("residual_add", &x, &dy, &dy, |x| r::residual_add(x.view(), other.view()));
    // One model, and three members of 19 elements per example with rates of their own.
    for (seeds, p, len) in
        [(&[5u64][..], &[0.3f32][..], 57), (&[7][..], &[0.5][..], 57), (&[1, 2, 3][..], &[0.3, 0.5, 0.1][..], 19)]
    {
        let mut t = TableBuilder::new(seeds);
        let at = t.dropout(p);
        let d = Dropout { members: seeds.len(), len, stream: 0x100, step: 4, at };
        let dx = r::dropout_forward(dy.view(), &t.words, &d);
        check(&format!("dropout p={p:?}"), &x, &dy, &dx, |x| r::dropout_forward(x.view(), &t.words, &d));
    }
}

#[test]
fn maxpool_backward_matches_finite_differences() {
    for (i, &(c, h, w, size, stride)) in
        [(2, 6, 8, 2, 2), (1, 7, 5, 2, 2), (3, 7, 7, 3, 2), (1, 5, 5, 2, 1)].iter().enumerate()
    {
        let n = 2;
        // Distinct values 0.05 apart: no ties, and a 1e-6 step never reorders a window.
        let x = filled((n, c, h, w), distinct(300 + i as u64, n * c * h * w, 0.05));
        let (y, arg) = r::maxpool_forward(x.view(), size, stride);
        let dy = arr(310 + i as u64, y.raw_dim(), -1.0, 1.0);
        let dx = r::maxpool_backward(dy.view(), arg.view(), (h, w));
        check(&format!("maxpool case {i}"), &x, &dy, &dx, |x| r::maxpool_forward(x.view(), size, stride).0);
    }
}

#[test]
fn avgpool_backward_matches_finite_differences() {
    // (c, h, w, window, stride): non-overlapping with rows and columns in no window,
    // overlapping, and global pooling of a non-square map.
    for (i, &(c, h, w, (kh, kw), stride)) in
        [(2, 7, 5, (2, 2), 2), (3, 7, 7, (3, 3), 2), (1, 6, 5, (3, 3), 1), (2, 5, 3, (5, 3), 1)].iter().enumerate()
    {
        let n = 2;
        let x = arr(320 + i as u64, (n, c, h, w), -2.0, 2.0);
        let y = r::avgpool_forward(x.view(), (kh, kw), stride);
        let dy = arr(330 + i as u64, y.raw_dim(), -1.0, 1.0);
        let dx = r::avgpool_backward(dy.view(), (h, w), (kh, kw), stride);
        check(&format!("avgpool case {i}"), &x, &dy, &dx, |x| r::avgpool_forward(x.view(), (kh, kw), stride));
    }
}

#[test]
fn batchnorm_backward_matches_finite_differences() {
    for (i, &(n, c, hw)) in [(4, 3, 5), (1, 2, 9), (7, 4, 1)].iter().enumerate() {
        let s = 400 + 10 * i as u64;
        let x = arr(s, (n, c, hw), -2.0, 3.0);
        let gamma = arr(s + 1, c, 0.5, 1.5);
        let beta = arr(s + 2, c, -0.5, 0.5);
        let eps = 1e-5;
        let train = |x: &ndarray::Array3<f64>, gamma: &Array1<f64>, beta: &Array1<f64>| {
            let (mean, var) = r::channel_moments(x.view());
            r::batchnorm_forward(x.view(), gamma.view(), beta.view(), mean.view(), var.view(), eps)
        };
        let dy = arr(s + 3, (n, c, hw), -1.0, 1.0);
        let (dx, dgamma, dbeta) = r::batchnorm_backward(dy.view(), x.view(), gamma.view(), eps);
        check(&format!("batchnorm case {i} dx"), &x, &dy, &dx, |x| train(x, &gamma, &beta));
        check(&format!("batchnorm case {i} dgamma"), &gamma, &dy, &dgamma, |g| train(&x, g, &beta));
        check(&format!("batchnorm case {i} dbeta"), &beta, &dy, &dbeta, |b| train(&x, &gamma, b));
    }
}

#[test]
fn loss_backward_matches_finite_differences() {
    for (i, &(n, classes)) in [(1, 10), (5, 7), (3, 2)].iter().enumerate() {
        let z = arr(500 + i as u64, (n, classes), -4.0, 4.0);
        let labels: Vec<u32> = (0..n as u32).map(|j| (j * 3 + 1) % classes as u32).collect();
        let scale = 1.0 / n as f64;
        // The loss is a scalar: r = 1 over the per-example losses times scale.
        let ones = Array1::from_elem(n, scale);
        let (p, _, _) = r::softmax_xent(z.view(), &labels);
        let dz = r::softmax_xent_backward(p.view(), &labels, scale);
        check("softmax cross-entropy", &z, &ones, &dz, |z| r::softmax_xent(z.view(), &labels).1);
        let dz = r::mse_backward(z.view(), &labels, scale);
        check("mse", &z, &ones, &dz, |z| r::mse(z.view(), &labels).0);
        // Label smoothing, a different amount per row.
        let s = Array1::from_shape_fn(n, |j| [0.1, 0.0, 0.35][j % 3]);
        let dz = r::smoothed_xent_backward(p.view(), &labels, s.view(), scale);
        check("smoothed cross-entropy", &z, &ones, &dz, |z| r::smoothed_xent(z.view(), &labels, s.view()));
    }
}

#[test]
fn reference_ops_on_hand_computed_cases() {
    // A 3x3 image, 2x2 kernel of ones with bias 0.5, stride 1, no padding: window sums + 0.5.
    let x = Array::from_shape_vec((1, 1, 3, 3), (1..=9).map(f64::from).collect()).unwrap();
    let w = Array::from_elem((1, 1, 2, 2), 1.0);
    let y = r::conv2d_forward(x.view(), w.view(), Some(array![0.5].view()), 1, (0, 0), (1, 1));
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![12.5, 16.5, 24.5, 28.5]);
    // Padding 1 and stride 2 on the same image: corners of the padded image.
    let y = r::conv2d_forward(x.view(), w.view(), None, 2, (1, 1), (1, 1));
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![1.0, 5.0, 11.0, 28.0]);
    // Max pooling: the first of two equal maxima wins.
    let x = Array::from_shape_vec((1, 1, 2, 2), vec![3.0, 3.0, 1.0, 2.0]).unwrap();
    let (y, arg) = r::maxpool_forward(x.view(), 2, 2);
    assert_eq!((y[[0, 0, 0, 0]], arg[[0, 0, 0, 0]]), (3.0, 0));
    // Softmax of (0, ln 3): probabilities 1/4, 3/4; the loss for label 0 is ln 4.
    let (p, loss, correct) = r::softmax_xent(array![[0.0, 3f64.ln()]].view(), &[0]);
    assert!((p[[0, 0]] - 0.25).abs() < 1e-15 && (p[[0, 1]] - 0.75).abs() < 1e-15);
    assert!((loss[0] - 4f64.ln()).abs() < 1e-15 && !correct[0]);
    // Batch norm of 1, 2, 3, 4 (one channel): mean 2.5, variance 1.25.
    let x = Array::from_shape_vec((4, 1, 1), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let (mean, var) = r::channel_moments(x.view());
    assert_eq!((mean[0], var[0]), (2.5, 1.25));
    // Adam's first step moves every parameter by lr against the sign of its gradient
    // (m_hat = g, v_hat = g^2), up to eps.
    let mut p = array![1.0, -2.0];
    let (mut m, mut v) = (Array1::zeros(2), Array1::zeros(2));
    let mut t = TableBuilder::new(&[1]);
    let (lr_at, wd_at) = (t.values(&[0.1]), t.values(&[0.0]));
    let segments = t.segments(&[(0, 2)]);
    let a = AdamStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, t: 1, segments, lr_at, wd_at };
    let (lr, wd) = (Array1::from_elem(2, 0.1), Array1::zeros(2));
    r::adam_step(&mut p, array![0.5, -3.0].view(), &mut m, &mut v, lr.view(), wd.view(), &a);
    assert!((p[0] - 0.9).abs() < 1e-7 && (p[1] + 1.9).abs() < 1e-7, "{p}");
    // Dropout keeps exactly the elements whose draw under op_key(seed, stream, step) is at
    // least p, scaled by 1 / (1 - p).
    let mut t = TableBuilder::new(&[3]);
    let at = t.dropout(&[0.25]);
    let mask = r::dropout_mask(1000, &t.words, &Dropout { members: 1, len: 1000, stream: 0x100, step: 2, at });
    let key = gpu_train::rng::op_key(3, 0x100, 2);
    for (i, &m) in mask.iter().enumerate() {
        let kept = gpu_train::rng::draw(key, i as u32) >= 0.25;
        assert_eq!(m, if kept { 4.0 / 3.0 } else { 0.0 });
    }
    let ones: ArrayView1<f64> = ArrayView1::from(&[1.0, 1.0][..]);
    let scale = Array1::ones(2);
    assert_eq!(r::activation_backward(ones, array![0.0, 2.0].view(), Act::Relu, scale.view()), array![0.0, 1.0]);
    // Leaky relu, gelu and silu at known points: gelu(1) = Phi(1) = 0.8413447460685429,
    // silu(1) = 1 / (1 + e^-1) = 0.7310585786300049, gelu'(0) = silu'(0) = 1/2.
    assert_eq!(r::act(-2.0, Act::LeakyRelu(0.5)), -1.0);
    assert!((r::act(1.0, Act::Gelu) - 0.8413447460685429).abs() < 1e-15);
    assert!((r::act(-1.0, Act::Gelu) - 0.8413447460685429 + 1.0).abs() < 1e-15);
    assert!((r::act(1.0, Act::Silu) - 0.7310585786300049).abs() < 1e-15);
    assert_eq!((r::act_grad_input(0.0, Act::Gelu), r::act_grad_input(0.0, Act::Silu)), (0.5, 0.5));
    // Average pooling of 1..16 (4x4) in 2x2 windows: the windows' means; globally 8.5.
    let x = Array::from_shape_vec((1, 1, 4, 4), (1..=16).map(f64::from).collect()).unwrap();
    assert_eq!(r::avgpool_forward(x.view(), (2, 2), 2).iter().copied().collect::<Vec<_>>(), vec![3.5, 5.5, 11.5, 13.5]);
    assert_eq!(r::avgpool_forward(x.view(), (4, 4), 1)[[0, 0, 0, 0]], 8.5);
    // Label smoothing 0.3 over 2 classes with logits (0, ln 3): target (0.85, 0.15) for label
    // 0; loss 0.7 ln 4 + 0.3 (ln 4 + ln 4/3) / 2.
    let s = array![0.3];
    let loss = r::smoothed_xent(array![[0.0, 3f64.ln()]].view(), &[0], s.view());
    assert!((loss[0] - (0.7 * 4f64.ln() + 0.15 * (4f64.ln() + (4.0f64 / 3.0).ln()))).abs() < 1e-15);
    let dz = r::smoothed_xent_backward(array![[0.25, 0.75]].view(), &[0], s.view(), 1.0);
    assert!((dz[[0, 0]] + 0.6).abs() < 1e-15 && (dz[[0, 1]] - 0.6).abs() < 1e-15, "{dz}");
    // SGD with weight decay 0.5 and Nesterov momentum 0.9, lr 0.1, from p = 2, grad 1:
    // g = 1 + 0.5 * 2 = 2; b = 2; step 0.1 (2 + 0.9 * 2) = 0.38.
    let (mut p, mut b) = (array![2.0], array![0.0]);
    let one = |v: f64| array![v];
    r::sgd_step(&mut p, one(1.0).view(), &mut b, one(0.1).view(), one(0.9).view(), one(0.5).view(), true);
    assert!((p[0] - 1.62).abs() < 1e-15 && b[0] == 2.0, "{p} {b}");
    // A grouped convolution is its groups side by side: 2 groups of 1 channel each.
    let x = Array::from_shape_vec((1, 2, 1, 2), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let w = Array::from_shape_vec((2, 1, 1, 1), vec![10.0, -1.0]).unwrap();
    let y = r::conv2d_forward(x.view(), w.view(), None, 1, (0, 0), (2, 2));
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![10.0, 20.0, -3.0, -4.0]);
    // Sharing one input group (an array's first layer), both groups read channel 0 only.
    let x1 = x.slice(ndarray::s![.., 0..1, .., ..]).to_owned();
    let y = r::conv2d_forward(x1.view(), w.view(), None, 1, (0, 0), (2, 1));
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![10.0, 20.0, -1.0, -2.0]);
}

#[test]
fn every_cpu_op_matches_the_reference() {
    let results = pollster::block_on(selftest::run(None, ""));
    let failed: Vec<String> = results.iter().filter(|r| !r.passed()).map(|r| r.line()).collect();
    assert!(results.len() > 100, "only {} cases ran", results.len());
    assert!(results.iter().all(|r| r.checks.len() == 1), "without a GPU, each case is one comparison");
    assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), results.len(), failed.join("\n"));
}

/// The same forward and backward of whole models on the CPU backend (f32) and the reference
/// (f64): logits, loss and every gradient, with the tolerances the GPU-against-CPU model test
/// uses and explains (tests/gpu_parity.rs): the fast backend's f32 sums against exact ones.
#[test]
fn whole_models_match_the_reference() {
    let bn = "name = 'bn'\nlayers = [{ type = 'conv2d', filters = 3, kernel = 3, padding = 1, bias = false }, { type = 'batch_norm' }, \
              { type = 'relu' }, { type = 'max_pool2d' }, { type = 'dropout', p = 0.3 }, { type = 'flatten' }, \
              { type = 'dense', units = 12, bias = false }, { type = 'batch_norm' }, { type = 'tanh' }, { type = 'dense', units = 10 }]\n";
    let mut specs: Vec<ModelSpec> =
        ["mlp", "cnn-a", "cnn2", "cnn4", "cnn6", "b2"].iter().map(|n| presets::load(n).unwrap()).collect();
    specs.push(presets::parse(bn, "bn").unwrap());
    specs.push(presets::load("vgg").unwrap());
    specs.push(presets::load(repo().join("tests/fixtures/residual_small.toml").to_str().unwrap()).unwrap());
    let n = 3;
    let digits = data::load_dir(&mnist_dir()).unwrap().0.take(n);
    // RGB pictures for the VGG-style preset, normalised per channel.
    let colour = data::Dataset {
        images: uniform(8, n * 3 * 32 * 32, 0.0, 256.0).iter().map(|&v| v as u8).collect(),
        labels: vec![3, 1, 4],
        channels: 3,
        height: 32,
        width: 32,
        classes: data::numbered_classes(10),
    };
    for mut spec in specs {
        let data = if spec.input[0] == 3 { &colour } else { &digits };
        if spec.input[0] == 3 {
            spec.train.normalize = Normalize::values(vec![0.49, 0.48, 0.45], vec![0.25, 0.24, 0.26]);
        }
        let name = spec.name.clone();
        let arch = Arch::new(spec).unwrap();
        let (params, state) = arch.init(arch.recipe().init, 4);
        let mut c = CpuBackend::new();
        let mut r = Reference::new();
        let cdev = DeviceData::upload(&mut c, data).unwrap();
        let rdev = DeviceData::upload(&mut r, data).unwrap();
        let mut cnet = Network::array(&mut c, Members::one(arch.clone(), 9), n, &params, &state).unwrap();
        let mut rnet = Network::array(&mut r, Members::one(arch.clone(), 9), n, &params, &state).unwrap();
        let (mut cstats, mut rstats) = (c.alloc(2).unwrap(), r.alloc(2).unwrap());
        cnet.load_batch(&mut c, &cdev, &cdev.order, 0, n, None);
        rnet.load_batch(&mut r, &rdev, &rdev.order, 0, n, None);
        cnet.forward_backward(&mut c, &mut cstats, n, 0, 5);
        rnet.forward_backward(&mut r, &mut rstats, n, 0, 5);
        let classes = arch.classes();
        let logits = (c.read(cnet.logits(), n * classes).unwrap(), r.read(rnet.logits(), n * classes).unwrap());
        assert_close(&format!("{name} logits"), &logits.0, &logits.1, 1e-4, 1e-3);
        let loss = (c.read(&cstats, 2).unwrap(), r.read(&rstats, 2).unwrap());
        assert_close(&format!("{name} loss and hits"), &loss.0, &loss.1, 1e-5, 1e-4);
        let grads = (c.read(&cnet.grads, arch.n_params).unwrap(), r.read(&rnet.grads, arch.n_params).unwrap());
        let scale = grads.1.iter().fold(0f32, |m, v| m.max(v.abs()));
        for t in &arch.params {
            let range = t.range();
            let what = format!("{name} gradient {}", t.name);
            assert_close(&what, &grads.0[range.clone()], &grads.1[range], 1e-3 * scale, 1e-3);
        }
    }
}

/// Arrays of models, whole: the fused network (a wider first layer, grouped layers after it,
/// each member's dropout and loss) on the CPU against the reference, for a dense model, a
/// conv + pool + dropout model with a sweep of its dropout rates, and a batch-norm model.
#[test]
fn whole_arrays_match_the_reference() {
    let n = 3;
    let digits = data::load_dir(&mnist_dir()).unwrap().0.take(n);
    let residual = repo().join("tests/fixtures/residual_small.toml");
    for (name, k, dropout) in [
        ("fc-b", 3, None),
        ("cnn4", 2, Some([0.1f32, 0.4])),
        ("cnn6", 2, None),
        (residual.to_str().unwrap(), 2, Some([0.0, 0.3])),
    ] {
        let spec = presets::load(name).unwrap();
        let list: Vec<Member> = (0..k)
            .map(|i| {
                let mut spec = spec.clone();
                spec.train.label_smoothing *= i as f32;
                if let Some(p) = dropout {
                    gpu_train::model::spec::for_each_mut(&mut spec.layers, &mut |l| {
                        if let gpu_train::model::LayerSpec::Dropout { p: q } = l {
                            *q = p[i];
                        }
                    });
                }
                Member { seed: 20 + i as u64, spec }
            })
            .collect();
        let members = Members::new(list).unwrap();
        let arch = members.fused.clone();
        let (params, state) = members.init();
        let mut c = CpuBackend::new();
        let mut r = Reference::new();
        let cdev = DeviceData::upload(&mut c, &digits).unwrap();
        let rdev = DeviceData::upload(&mut r, &digits).unwrap();
        let mut cnet = Network::array(&mut c, members.clone(), n, &params, &state).unwrap();
        let mut rnet = Network::array(&mut r, members, n, &params, &state).unwrap();
        let (mut cstats, mut rstats) = (c.alloc(2 * k).unwrap(), r.alloc(2 * k).unwrap());
        cnet.load_batch(&mut c, &cdev, &cdev.order, 0, n, None);
        rnet.load_batch(&mut r, &rdev, &rdev.order, 0, n, None);
        cnet.forward_backward(&mut c, &mut cstats, n, 0, 5);
        rnet.forward_backward(&mut r, &mut rstats, n, 0, 5);
        let width = arch.output().len();
        let logits = (c.read(cnet.logits(), n * width).unwrap(), r.read(rnet.logits(), n * width).unwrap());
        assert_close(&format!("{name} x{k} logits"), &logits.0, &logits.1, 1e-4, 1e-3);
        let loss = (c.read(&cstats, 2 * k).unwrap(), r.read(&rstats, 2 * k).unwrap());
        assert_close(&format!("{name} x{k} loss and hits"), &loss.0, &loss.1, 1e-5, 1e-4);
        let grads = (c.read(&cnet.grads, arch.n_params).unwrap(), r.read(&rnet.grads, arch.n_params).unwrap());
        let scale = grads.1.iter().fold(0f32, |m, v| m.max(v.abs()));
        for t in &arch.params {
            let range = t.range();
            let what = format!("{name} x{k} gradient {}", t.name);
            assert_close(&what, &grads.0[range.clone()], &grads.1[range], 1e-3 * scale, 1e-3);
        }
    }
}
