// Losses with their gradients, fused (src/cpu/loss.rs). One workgroup handles the whole
// batch: each thread takes examples lid, lid + 256, ...; the batch's summed loss and correct
// count are then reduced in a fixed tree order (deterministic, no atomics) into
// stats[2 * slot] and stats[2 * slot + 1].

struct Params {
    n: u32,
    classes: u32,
    slot: u32,
    // forward-backward: gradient scale (1 / batch); forward: first example's row in probs
    scale: f32,
    probs_at: u32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> logits: array<f32>;     // (n, classes)
@group(0) @binding(1) var<storage, read> labels: array<u32>;     // (n)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // dlogits, or probs
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;

var<workgroup> red_loss: array<f32, 256>;
var<workgroup> red_hits: array<f32, 256>;

// Index of the row's first maximum.
fn row_argmax(base: u32) -> u32 {
    var best = 0u;
    for (var j = 1u; j < prm.classes; j++) {
        if logits[base + j] > logits[base + best] {
            best = j;
        }
    }
    return best;
}

fn reduce_and_store(lid: u32, loss: f32, hits: f32) {
    red_loss[lid] = loss;
    red_hits[lid] = hits;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s {
            red_loss[lid] += red_loss[lid + s];
            red_hits[lid] += red_hits[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        stats[2u * prm.slot] = red_loss[0];
        stats[2u * prm.slot + 1u] = red_hits[0];
    }
}

// Softmax of row i into out[dst..], returning -log softmax[label].
fn softmax_row(i: u32, dst: u32, grad: bool) -> f32 {
    let base = i * prm.classes;
    let best = row_argmax(base);
    let mx = logits[base + best];
    var sum = 0.0;
    for (var j = 0u; j < prm.classes; j++) {
        let e = exp(logits[base + j] - mx);
        out[dst + j] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    let y = labels[i];
    for (var j = 0u; j < prm.classes; j++) {
        var p = out[dst + j] * inv;
        if grad {
            p = (p - select(0.0, 1.0, j == y)) * prm.scale;
        }
        out[dst + j] = p;
    }
    return log(sum) - (logits[base + y] - mx);
}

// out = dlogits = (softmax - onehot) * scale
@compute @workgroup_size(256)
fn softmax_xent_forward_backward(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var loss = 0.0;
    var hits = 0.0;
    for (var i = lid; i < prm.n; i += WG) {
        loss += softmax_row(i, i * prm.classes, true);
        hits += select(0.0, 1.0, row_argmax(i * prm.classes) == labels[i]);
    }
    reduce_and_store(lid, loss, hits);
}

// out = probabilities, from row probs_at on
@compute @workgroup_size(256)
fn softmax_xent_forward(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var loss = 0.0;
    var hits = 0.0;
    for (var i = lid; i < prm.n; i += WG) {
        loss += softmax_row(i, (prm.probs_at + i) * prm.classes, false);
        hits += select(0.0, 1.0, row_argmax(i * prm.classes) == labels[i]);
    }
    reduce_and_store(lid, loss, hits);
}

// Mean over classes of (y - onehot)^2 for row i; writes the gradient or a copy of the row.
fn mse_row(i: u32, dst: u32, grad: bool) -> f32 {
    let base = i * prm.classes;
    let y = labels[i];
    var sq = 0.0;
    for (var j = 0u; j < prm.classes; j++) {
        let d = logits[base + j] - select(0.0, 1.0, j == y);
        sq += d * d;
        out[dst + j] = select(logits[base + j], 2.0 * d / f32(prm.classes) * prm.scale, grad);
    }
    return sq / f32(prm.classes);
}

@compute @workgroup_size(256)
fn mse_forward_backward(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var loss = 0.0;
    var hits = 0.0;
    for (var i = lid; i < prm.n; i += WG) {
        loss += mse_row(i, i * prm.classes, true);
        hits += select(0.0, 1.0, row_argmax(i * prm.classes) == labels[i]);
    }
    reduce_and_store(lid, loss, hits);
}

@compute @workgroup_size(256)
fn mse_forward(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var loss = 0.0;
    var hits = 0.0;
    for (var i = lid; i < prm.n; i += WG) {
        loss += mse_row(i, (prm.probs_at + i) * prm.classes, false);
        hits += select(0.0, 1.0, row_argmax(i * prm.classes) == labels[i]);
    }
    reduce_and_store(lid, loss, hits);
}
