// Batch normalisation per channel over (n, h, w) (src/cpu/batchnorm.rs). Statistics and
// the backward's sums use one workgroup per channel with a fixed-order tree reduction.
// saved holds (mean, 1/sqrt(var + eps)) per channel for the backward; state holds the
// running mean and variance (unbiased, as torch) at their offsets.

struct Params {
    n: u32,
    c: u32,
    hw: u32,
    eps: f32,
    momentum: f32,
    gamma_off: u32,
    beta_off: u32,
    mean_off: u32,
    var_off: u32,
    train: u32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> src: array<f32>;          // inp (forward), dout (backward)
@group(0) @binding(1) var<storage, read> aux: array<f32>;          // params (forward), inp (backward)
@group(0) @binding(2) var<storage, read_write> saved: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;  // running stats; grads in the backward
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@group(0) @binding(5) var<storage, read> params: array<f32>;

var<workgroup> red_a: array<f32, 256>;
var<workgroup> red_b: array<f32, 256>;

fn at(k: u32, c: u32) -> u32 {
    // k-th element of channel c, k in 0..n*hw
    return ((k / prm.hw) * prm.c + c) * prm.hw + k % prm.hw;
}

fn reduce2(lid: u32, a: f32, b: f32) {
    red_a[lid] = a;
    red_b[lid] = b;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s {
            red_a[lid] += red_a[lid + s];
            red_b[lid] += red_b[lid + s];
        }
        workgroupBarrier();
    }
}

// One workgroup per channel: mean and biased variance (two passes), saved stats, running stats.
@compute @workgroup_size(256)
fn batchnorm_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    // One workgroup per channel, the grid folded into two dimensions past 65,535 channels.
    let c = wid.x + wid.y * nwg.x;
    if c >= prm.c {
        return;
    }
    let lid = lid3.x;
    let m = prm.n * prm.hw;
    var s = 0.0;
    for (var k = lid; k < m; k += WG) {
        s += src[at(k, c)];
    }
    reduce2(lid, s, 0.0);
    let mean = red_a[0] / f32(m);
    workgroupBarrier();
    var q = 0.0;
    for (var k = lid; k < m; k += WG) {
        let d = src[at(k, c)] - mean;
        q += d * d;
    }
    reduce2(lid, q, 0.0);
    if lid == 0u {
        let var_b = red_a[0] / f32(m);
        saved[2u * c] = mean;
        saved[2u * c + 1u] = 1.0 / sqrt(var_b + prm.eps);
        let unbiased = select(var_b, var_b * f32(m) / f32(m - 1u), m > 1u);
        state[prm.mean_off + c] = (1.0 - prm.momentum) * state[prm.mean_off + c] + prm.momentum * mean;
        state[prm.var_off + c] = (1.0 - prm.momentum) * state[prm.var_off + c] + prm.momentum * unbiased;
    }
}

// dst = (src - mean) * invstd * gamma + beta, with the batch's (train) or running statistics.
@compute @workgroup_size(256)
fn batchnorm_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i >= prm.n * prm.c * prm.hw {
        return;
    }
    let c = (i / prm.hw) % prm.c;
    var mean: f32;
    var invstd: f32;
    if prm.train == 1u {
        mean = saved[2u * c];
        invstd = saved[2u * c + 1u];
    } else {
        mean = state[prm.mean_off + c];
        invstd = 1.0 / sqrt(state[prm.var_off + c] + prm.eps);
    }
    dst[i] = (src[i] - mean) * invstd * aux[prm.gamma_off + c] + aux[prm.beta_off + c];
}

// One workgroup per channel: dgamma = sum dy * xhat, dbeta = sum dy, into the gradients.
@compute @workgroup_size(256)
fn batchnorm_backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    // One workgroup per channel, the grid folded into two dimensions past 65,535 channels.
    let c = wid.x + wid.y * nwg.x;
    if c >= prm.c {
        return;
    }
    let lid = lid3.x;
    let m = prm.n * prm.hw;
    let mean = saved[2u * c];
    let invstd = saved[2u * c + 1u];
    var dg = 0.0;
    var db = 0.0;
    for (var k = lid; k < m; k += WG) {
        let j = at(k, c);
        dg += src[j] * (aux[j] - mean) * invstd;
        db += src[j];
    }
    reduce2(lid, dg, db);
    if lid == 0u {
        state[prm.gamma_off + c] = red_a[0];
        state[prm.beta_off + c] = red_b[0];
    }
}

// dx = gamma * invstd / m * (m dy - dbeta - xhat dgamma)
@compute @workgroup_size(256)
fn batchnorm_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i >= prm.n * prm.c * prm.hw {
        return;
    }
    let c = (i / prm.hw) % prm.c;
    let m = f32(prm.n * prm.hw);
    let mean = saved[2u * c];
    let invstd = saved[2u * c + 1u];
    let xhat = (aux[i] - mean) * invstd;
    let dg = state[prm.gamma_off + c];
    let db = state[prm.beta_off + c];
    dst[i] = params[prm.gamma_off + c] * invstd / m * (m * src[i] - db - xhat * dg);
}
