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

// Rows too wide for one thread (WIDE_CLASSES and more classes: tens of thousands): one
// workgroup per row, its threads striding over the classes with tree reductions in a fixed
// order. Each row's loss and hit go to part[2 i], part[2 i + 1]; loss_rows_sum then adds the
// rows in order into the batch's stats. (One thread looping over 65,536 classes is also
// what Mesa's llvmpipe, which stops any loop after 65,535 iterations, cannot run.)
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

var<workgroup> red_i: array<u32, 256>;

const NONE: u32 = 0xffffffffu;

// The row's first maximum, by all threads: (value, index) in red_loss[0], red_i[0].
fn wide_argmax(base: u32, lid: u32) {
    var mx = 0.0;
    var best = NONE;
    for (var j = lid; j < prm.classes; j += WG) {
        let v = logits[base + j];
        if best == NONE || v > mx {
            mx = v;
            best = j;
        }
    }
    red_loss[lid] = mx;
    red_i[lid] = best;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s {
            let ov = red_loss[lid + s];
            let oi = red_i[lid + s];
            let mine = red_i[lid];
            if oi != NONE && (mine == NONE || ov > red_loss[lid] || (ov == red_loss[lid] && oi < mine)) {
                red_loss[lid] = ov;
                red_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
}

// The sum of `v` over the workgroup, in a fixed tree order, returned to every thread.
fn wide_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    red_hits[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s {
            red_hits[lid] += red_hits[lid + s];
        }
        workgroupBarrier();
    }
    return red_hits[0];
}

fn wide_row(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, softmax: bool, grad: bool) {
    let i = wid.x + wid.y * nwg.x;
    if i >= prm.n {
        return;
    }
    let base = i * prm.classes;
    let dst = select(prm.probs_at + i, i, grad) * prm.classes;
    let y = labels[i];
    wide_argmax(base, lid);
    let mx = red_loss[0];
    let hit = select(0.0, 1.0, red_i[0] == y);
    var loss = 0.0;
    if softmax {
        var s = 0.0;
        for (var j = lid; j < prm.classes; j += WG) {
            s += exp(logits[base + j] - mx);
        }
        let sum = wide_sum(lid, s);
        let inv = 1.0 / sum;
        for (var j = lid; j < prm.classes; j += WG) {
            var p = exp(logits[base + j] - mx) * inv;
            if grad {
                p = (p - select(0.0, 1.0, j == y)) * prm.scale;
            }
            out[dst + j] = p;
        }
        loss = log(sum) - (logits[base + y] - mx);
    } else {
        var sq = 0.0;
        for (var j = lid; j < prm.classes; j += WG) {
            let d = logits[base + j] - select(0.0, 1.0, j == y);
            sq += d * d;
            out[dst + j] = select(logits[base + j], 2.0 * d / f32(prm.classes) * prm.scale, grad);
        }
        loss = wide_sum(lid, sq) / f32(prm.classes);
    }
    if lid == 0u {
        part[2u * i] = loss;
        part[2u * i + 1u] = hit;
    }
}

@compute @workgroup_size(256)
fn softmax_xent_rows_forward_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    wide_row(wid, nwg, lid3.x, true, true);
}

@compute @workgroup_size(256)
fn softmax_xent_rows_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    wide_row(wid, nwg, lid3.x, true, false);
}

@compute @workgroup_size(256)
fn mse_rows_forward_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    wide_row(wid, nwg, lid3.x, false, true);
}

@compute @workgroup_size(256)
fn mse_rows_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    wide_row(wid, nwg, lid3.x, false, false);
}

// stats[slot] = the rows' summed loss and hits, added in order (part: (loss, hit) per row).
@compute @workgroup_size(256)
fn loss_rows_sum(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var loss = 0.0;
    var hits = 0.0;
    for (var i = lid; i < prm.n; i += WG) {
        loss += part[2u * i];
        hits += part[2u * i + 1u];
    }
    reduce_and_store(lid, loss, hits);
}
