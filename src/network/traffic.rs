//! Bytes moved per training step, estimated from the plan (`bench`'s `bytes_per_step`).
//!
//! Each op is counted as the GPU launchers dispatch it: per dispatch, every operand it reads
//! and every one it writes once, at the length the op covers (n examples of the boundary's
//! size, a layer's parameter tensors, the whole flat buffers for the optimizer), 4 bytes an
//! element (f32, or u32 labels and max-pool positions), the packed images 1 byte a pixel.
//! Not counted: re-reads inside a dispatch (batch-norm statistics' second pass, GEMM tiles
//! loading the same input again, caches), split-K partial sums, the member table and
//! per-channel scalars (batch norm's saved statistics). It is what a kernel must at least
//! move, so fusion (fewer full tensors written and read back) shows in it.

use super::Network;
use super::plan::Step;
use crate::backend::Backend;
use crate::model::spec::Optimizer;
use crate::model::{Conv2d, Dense, Layer};

/// A running sum of elements moved.
#[derive(Default)]
struct Sum(u64);

impl Sum {
    fn add(&mut self, elems: usize) {
        self.0 += elems as u64;
    }
}

fn conv_params(l: &Conv2d) -> usize {
    l.weight_len() + l.b_off.map_or(0, |_| l.c_out)
}

fn dense_params(l: &Dense) -> usize {
    l.weight_len() + l.b_off.map_or(0, |_| l.n_out)
}

impl<B: Backend> Network<B> {
    /// Bytes one training step of `n` examples moves (see the module comment): gather,
    /// forward, loss, backward, optimizer (and weight average).
    pub fn bytes_per_step(&self, n: usize) -> u64 {
        let a = &self.arch;
        let size = |b: usize| n * a.shapes[b].len();
        let mut e = Sum::default();
        // gather: images (bytes, counted in quarters of an element), order, labels -> x, y
        e.add(size(0).div_ceil(4) + 2 * n + size(0) + n);
        for node in &self.train_plan.nodes {
            let (inp, out) = (size(node.inp), size(node.out));
            match a.layers[node.layer] {
                Layer::Conv2d(l) => e.add(inp + conv_params(&l) + out),
                Layer::Dense(l) => e.add(inp + dense_params(&l) + out),
                // statistics (reads x), then the normalising pass (x -> out)
                Layer::BatchNorm(_) => e.add(inp + inp + out),
                Layer::MaxPool2d(_) => e.add(inp + 2 * out),
                Layer::Add { .. } => e.add(3 * out),
                Layer::Act(_) | Layer::AvgPool2d(_) | Layer::Dropout { .. } => e.add(inp + out),
                Layer::Flatten => {}
            }
        }
        // the loss: logits and labels -> their gradient (and a few stats)
        let logits = size(self.train_plan.out);
        e.add(2 * logits + n);
        for step in &self.backward.steps {
            let (node, dx) = match *step {
                Step::Sum { len, .. } => {
                    e.add(3 * n * len);
                    continue;
                }
                // dz and z -> dpre
                Step::Epilogue { node, .. } => {
                    e.add(3 * size(self.train_plan.nodes[node].out));
                    continue;
                }
                Step::Layer { node, dx, .. } => (self.train_plan.nodes[node], dx.is_some()),
            };
            let (inp, out) = (size(node.inp), size(node.out));
            match a.layers[node.layer] {
                Layer::Conv2d(l) => {
                    // weight gradient (dout, x -> dW), the bias's reduction, input gradient
                    e.add(out + inp + l.weight_len());
                    if l.b_off.is_some() {
                        e.add(out + l.c_out);
                    }
                    if dx {
                        e.add(out + l.weight_len() + inp);
                    }
                }
                Layer::Dense(l) => {
                    e.add(out + inp + l.weight_len());
                    if l.b_off.is_some() {
                        e.add(out + l.n_out);
                    }
                    if dx {
                        e.add(out + l.weight_len() + inp);
                    }
                }
                // the reduction (dy, x), then dx from dy and x; with an activation fused,
                // dy is the activation's output gradient and each pass also reads that output
                // (gelu and silu recompute their input from x instead)
                Layer::BatchNorm(_) => {
                    let post = node.fused.is_some_and(|a| a.grad_from_output());
                    e.add(2 * out + 3 * inp + if post { 2 * out } else { 0 });
                }
                Layer::MaxPool2d(_) => e.add(2 * out + inp),
                // dy and the saved output (gelu, silu: the input) -> dx
                Layer::Act(_) => e.add(2 * out + inp),
                Layer::AvgPool2d(_) | Layer::Dropout { .. } => e.add(out + inp),
                Layer::Add { .. } | Layer::Flatten => {}
            }
        }
        let (p, s) = (a.n_params, a.n_state);
        e.add(match self.optimizer {
            // grads, params, m, v -> params, m, v
            Optimizer::Adam { .. } => 7 * p,
            // grads, params (velocity) -> params (velocity)
            Optimizer::Sgd { .. } => (3 + 2 * self.has_m() as usize) * p,
        });
        if self.has_average() {
            e.add(3 * p + 3 * s);
        }
        4 * e.0
    }
}
