// Losses with their gradients, fused (src/cpu/loss.rs), one per member: the logits are rows
// (example, member) of `classes`, row r = i * members + k against example i's label. One
// workgroup handles one member's whole batch: each thread takes examples lid, lid + 256, ...;
// the member's summed loss and correct count are then reduced in a fixed tree order
// (deterministic, no atomics) into stats[2 * (slot * members + k)] and the next word.

struct Params {
    n: u32,
    classes: u32,
    slot: u32,
    // forward-backward: gradient scale (1 / batch); forward: first example's row in probs
    scale: f32,
    probs_at: u32,
    members: u32,
    // forward-backward of the cross-entropy: where each member's label smoothing is in the
    // member table (members.wgsl)
    smoothing_at: u32,
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

fn reduce_and_store(k: u32, lid: u32, loss: f32, hits: f32) {
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
        stats[2u * (prm.slot * prm.members + k)] = red_loss[0];
        stats[2u * (prm.slot * prm.members + k) + 1u] = red_hits[0];
    }
}

// Softmax of row r into out[dst..], returning -log softmax[label]; with `grad`, the gradient
// (softmax - target) * scale instead, target = (1 - s) onehot + s / classes, and the smoothed
// loss (1 - s) (-log p[label]) + s mean_j(-log p[j]) (src/cpu/loss.rs).
fn softmax_row(r: u32, dst: u32, grad: bool, s: f32) -> f32 {
    let base = r * prm.classes;
    let best = row_argmax(base);
    let mx = logits[base + best];
    var sum = 0.0;
    for (var j = 0u; j < prm.classes; j++) {
        let e = exp(logits[base + j] - mx);
        out[dst + j] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    let y = labels[r / prm.members];
    let keep = 1.0 - s;
    let spread = s / f32(prm.classes);
    var zsum = 0.0;
    for (var j = 0u; j < prm.classes; j++) {
        var p = out[dst + j] * inv;
        if grad {
            p = (p - select(spread, keep + spread, j == y)) * prm.scale;
        }
        out[dst + j] = p;
        zsum += logits[base + j] - mx;
    }
    let nll = log(sum) - (logits[base + y] - mx);
    if s == 0.0 {
        return nll;
    }
    return keep * nll + s * (log(sum) - zsum / f32(prm.classes));
}

// The member of this workgroup (one per member, the grid folded past 65,535).
fn member(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// out = dlogits = (softmax - onehot) * scale
@compute @workgroup_size(256)
fn softmax_xent_forward_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let k = member(wid, nwg);
    if k >= prm.members {
        return;
    }
    let s = member_f32(prm.smoothing_at + k);
    var loss = 0.0;
    var hits = 0.0;
    for (var i = lid; i < prm.n; i += WG) {
        let r = i * prm.members + k;
        loss += softmax_row(r, r * prm.classes, true, s);
        hits += select(0.0, 1.0, row_argmax(r * prm.classes) == labels[i]);
    }
    reduce_and_store(k, lid, loss, hits);
}

// out = probabilities, from example probs_at on
@compute @workgroup_size(256)
fn softmax_xent_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let k = member(wid, nwg);
    if k >= prm.members {
        return;
    }
    var loss = 0.0;
    var hits = 0.0;
    for (var i = lid; i < prm.n; i += WG) {
        let r = i * prm.members + k;
        loss += softmax_row(r, (prm.probs_at * prm.members + r) * prm.classes, false, 0.0);
        hits += select(0.0, 1.0, row_argmax(r * prm.classes) == labels[i]);
    }
    reduce_and_store(k, lid, loss, hits);
}

// Mean over classes of (y - onehot)^2 for row r; writes the gradient or a copy of the row.
fn mse_row(r: u32, dst: u32, grad: bool) -> f32 {
    let base = r * prm.classes;
    let y = labels[r / prm.members];
    var sq = 0.0;
    for (var j = 0u; j < prm.classes; j++) {
        let d = logits[base + j] - select(0.0, 1.0, j == y);
        sq += d * d;
        out[dst + j] = select(logits[base + j], 2.0 * d / f32(prm.classes) * prm.scale, grad);
    }
    return sq / f32(prm.classes);
}

@compute @workgroup_size(256)
fn mse_forward_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let k = member(wid, nwg);
    if k >= prm.members {
        return;
    }
    var loss = 0.0;
    var hits = 0.0;
    for (var i = lid; i < prm.n; i += WG) {
        let r = i * prm.members + k;
        loss += mse_row(r, r * prm.classes, true);
        hits += select(0.0, 1.0, row_argmax(r * prm.classes) == labels[i]);
    }
    reduce_and_store(k, lid, loss, hits);
}

@compute @workgroup_size(256)
fn mse_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let k = member(wid, nwg);
    if k >= prm.members {
        return;
    }
    var loss = 0.0;
    var hits = 0.0;
    for (var i = lid; i < prm.n; i += WG) {
        let r = i * prm.members + k;
        loss += mse_row(r, (prm.probs_at * prm.members + r) * prm.classes, false);
        hits += select(0.0, 1.0, row_argmax(r * prm.classes) == labels[i]);
    }
    reduce_and_store(k, lid, loss, hits);
}

// Rows too wide for one thread (WIDE_CLASSES and more classes: tens of thousands): one
// workgroup per row (example, member), its threads striding over the classes with tree
// reductions in a fixed order. Row r's loss and hit go to part[2 r], part[2 r + 1];
// loss_rows_sum then adds each member's rows in order into the batch's stats. (One thread looping over 65,536 classes is also
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

fn wide_row(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, softmax: bool, grad: bool, s: f32) {
    let i = wid.x + wid.y * nwg.x;
    if i >= prm.n * prm.members {
        return;
    }
    let base = i * prm.classes;
    let dst = select(prm.probs_at * prm.members + i, i, grad) * prm.classes;
    let y = labels[i / prm.members];
    wide_argmax(base, lid);
    let mx = red_loss[0];
    let hit = select(0.0, 1.0, red_i[0] == y);
    var loss = 0.0;
    if softmax {
        var e = 0.0;
        for (var j = lid; j < prm.classes; j += WG) {
            e += exp(logits[base + j] - mx);
        }
        let sum = wide_sum(lid, e);
        let inv = 1.0 / sum;
        let keep = 1.0 - s;
        let spread = s / f32(prm.classes);
        var z = 0.0;
        for (var j = lid; j < prm.classes; j += WG) {
            var p = exp(logits[base + j] - mx) * inv;
            if grad {
                p = (p - select(spread, keep + spread, j == y)) * prm.scale;
            }
            out[dst + j] = p;
            z += logits[base + j] - mx;
        }
        let zsum = wide_sum(lid, z);
        loss = log(sum) - (logits[base + y] - mx);
        if s != 0.0 {
            loss = keep * loss + s * (log(sum) - zsum / f32(prm.classes));
        }
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
    let s = member_f32(prm.smoothing_at + (wid.x + wid.y * nwg.x) % prm.members);
    wide_row(wid, nwg, lid3.x, true, true, s);
}

@compute @workgroup_size(256)
fn softmax_xent_rows_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    wide_row(wid, nwg, lid3.x, true, false, 0.0);
}

@compute @workgroup_size(256)
fn mse_rows_forward_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    wide_row(wid, nwg, lid3.x, false, true, 0.0);
}

@compute @workgroup_size(256)
fn mse_rows_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    wide_row(wid, nwg, lid3.x, false, false, 0.0);
}

// stats of (slot, member) = the member's rows' summed loss and hits, added in order (part:
// (loss, hit) per row), one workgroup per member.
@compute @workgroup_size(256)
fn loss_rows_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    let k = member(wid, nwg);
    if k >= prm.members {
        return;
    }
    var loss = 0.0;
    var hits = 0.0;
    for (var i = lid; i < prm.n; i += WG) {
        let r = i * prm.members + k;
        loss += part[2u * r];
        hits += part[2u * r + 1u];
    }
    reduce_and_store(k, lid, loss, hits);
}
