//! The plan: which op runs for which layer, reading and writing which layer boundary.
//!
//! Activation buffers are indexed by layer boundary: `acts[k]` holds the input of layer k
//! (acts[0] is the batch). An activation right after a conv or dense layer is fused into it
//! (written straight to the activation's output), and so is a dropout after a relu in
//! training. Flatten needs no buffer (NCHW is already C, H, W order), and in evaluation
//! dropout is skipped, so a plan records which boundary each op reads.

use crate::model::{Act, Arch, Layer};

/// One op of a plan: layer `layer` reads boundary `inp` and writes boundary `out`. A conv or
/// dense op may carry the activation after it (`fused`) and, in training, a dropout after a
/// relu (`dropout`, that layer's index); its pre-activation gradient then goes to `pre`.
/// `need_dx`: whether a layer with parameters comes before it, so that the gradient of its
/// input is needed (the input itself, and an array's shared layers before its first conv or
/// dense layer, need none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    pub layer: usize,
    pub inp: usize,
    pub out: usize,
    pub pre: usize,
    pub fused: Option<Act>,
    pub dropout: Option<usize>,
    pub need_dx: bool,
}

fn has_params(l: &Layer) -> bool {
    matches!(l, Layer::Conv2d(_) | Layer::Dense(_) | Layer::BatchNorm(_))
}

/// The training (or evaluation) plan and the boundary holding the model's output.
pub fn plan(arch: &Arch, train: bool) -> (Vec<Node>, usize) {
    let layers = &arch.layers;
    let mut nodes = Vec::new();
    let mut cur = 0;
    let mut i = 0;
    while i < layers.len() {
        let need_dx = layers[..i].iter().any(has_params);
        let mut node = Node { layer: i, inp: cur, out: i + 1, pre: i + 1, fused: None, dropout: None, need_dx };
        match layers[i] {
            Layer::Flatten => {
                i += 1;
                continue;
            }
            Layer::Dropout { .. } if !train => {
                i += 1;
                continue;
            }
            Layer::Conv2d(_) | Layer::Dense(_) => {
                if let Some(&Layer::Act(a)) = layers.get(i + 1) {
                    node.fused = Some(a);
                    node.out = i + 2;
                    if train && a == Act::Relu && matches!(layers.get(i + 2), Some(Layer::Dropout { .. })) {
                        node.dropout = Some(i + 2);
                        node.out = i + 3;
                    }
                }
            }
            _ => {}
        }
        i = node.out;
        if !train {
            // Evaluation skips dropout: write straight into the buffer the training plan
            // writes after it, so both plans share their buffers.
            while matches!(layers.get(node.out), Some(Layer::Dropout { .. })) {
                node.out += 1;
            }
        }
        nodes.push(node);
        cur = node.out;
    }
    (nodes, cur)
}

/// Per example, the largest gradient each of the three gradient buffers holds (see
/// `Network::backward`): op k's output gradient is `grad[k % 2]`, its input's
/// `grad[(k + 1) % 2]`, the pre-activation's `grad[2]`.
pub fn gradient_lengths(arch: &Arch, plan: &[Node]) -> [usize; 3] {
    let mut len = [0usize; 3];
    for (k, node) in plan.iter().enumerate() {
        len[k % 2] = len[k % 2].max(arch.shapes[node.out].len());
        // Batch norm writes its input gradient even where nothing reads it (its parameters'
        // gradients come from the same op).
        if node.need_dx || matches!(arch.layers[node.layer], Layer::BatchNorm(_)) {
            len[(k + 1) % 2] = len[(k + 1) % 2].max(arch.shapes[node.inp].len());
        }
        if node.fused.is_some() {
            len[2] = len[2].max(arch.shapes[node.pre].len());
        }
    }
    len
}
