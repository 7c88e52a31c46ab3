// Batch normalisation per channel over (n, h, w) (src/cpu/batchnorm.rs). Statistics and
// the backward's sums use one workgroup per channel with a fixed-order tree reduction.
// saved holds (mean, 1/sqrt(var + eps)) per channel for the backward; state holds the
// running mean and variance (unbiased, as torch) at their offsets.
//
// An activation after the normalisation (any act_any code; a dropout too after a relu) is
// fused in: the forward writes act(y) (dropped out) instead of y, and the backward takes the
// gradient of that output through the activation as activation_backward does, in each of its
// two passes, so neither y nor its gradient is ever written.

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
    // the fused epilogue: activation code (0: none), leaky relu's slope, dropout after relu
    act: u32,
    slope: f32,
    has_dropout: u32,
    drop_members: u32,
    drop_len: u32,
    drop_stream: u32,
    drop_step: u32,
    drop_at: u32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> src: array<f32>;          // inp (forward), dout (backward)
@group(0) @binding(1) var<storage, read> aux: array<f32>;          // params (forward), inp (backward)
@group(0) @binding(2) var<storage, read_write> saved: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;  // running stats; grads in the backward
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@group(0) @binding(5) var<storage, read> params: array<f32>;       // backward
@group(0) @binding(6) var<storage, read> post: array<f32>;         // backward: the epilogue's output

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

// The forward's epilogue on the normalised value y of element i (members.wgsl's dropout).
fn epilogue_forward(y: f32, i: u32) -> f32 {
    let z = act_any(y, prm.act, prm.slope);
    if prm.has_dropout == 1u {
        return member_dropout(z, i, prm.drop_members, prm.drop_len, prm.drop_stream, prm.drop_step, prm.drop_at);
    }
    return z;
}

// The gradient of the normalised value y of element j of channel c: the output's gradient
// (src), through the epilogue where there is one, act' from its output (post), or for gelu
// and silu from y, recomputed from the input (aux) as batchnorm_forward computed it.
fn dy_at(j: u32, c: u32, mean: f32, invstd: f32) -> f32 {
    if prm.act == 0u {
        return src[j];
    }
    var scale = 1.0;
    if prm.has_dropout == 1u {
        scale = member_dropout_scale(j, prm.drop_members, prm.drop_len, prm.drop_at);
    }
    var v = post[j];
    if prm.act == 5u || prm.act == 6u {
        v = (aux[j] - mean) * invstd * params[prm.gamma_off + c] + params[prm.beta_off + c];
    }
    return src[j] * act_any_grad(v, prm.act, prm.slope) * scale;
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
    dst[i] = epilogue_forward((src[i] - mean) * invstd * aux[prm.gamma_off + c] + aux[prm.beta_off + c], i);
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
        let dy = dy_at(j, c, mean, invstd);
        dg += dy * (aux[j] - mean) * invstd;
        db += dy;
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
    dst[i] = params[prm.gamma_off + c] * invstd / m * (m * dy_at(i, c, mean, invstd) - db - xhat * dg);
}
