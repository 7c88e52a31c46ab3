// Element-wise activations (src/cpu/activation.rs): the codes of common.wgsl and those only
// an activation on its own applies (4 leaky relu with its slope, 5 gelu, 6 silu).

struct Params {
    len: u32,
    act: u32,
    slope: f32,     // leaky relu
    // backward after a fused relu + dropout: the gradient is multiplied by the dropout scale
    // of the element's member (members.wgsl)
    has_dropout: u32,
    drop_members: u32,
    drop_len: u32,
    drop_at: u32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> src: array<f32>;   // forward: inp; backward: dout
@group(0) @binding(1) var<storage, read> y: array<f32>;     // backward: the forward output (gelu, silu: input)
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// erf(x) by Abramowitz and Stegun 7.1.26, |error| < 1.5e-7 (WGSL has no erf), odd in x.
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t;
    return sign(x) * (1.0 - poly * exp(-a * a));
}

// Phi(x), the standard normal CDF.
fn normal_cdf(x: f32) -> f32 {
    return 0.5 * (1.0 + erf_approx(x * 0.70710678118654752));
}

// sigmoid(x), finite for any x.
fn sigmoid(x: f32) -> f32 {
    return act_apply(x, 2u);
}

fn act_any(x: f32) -> f32 {
    switch prm.act {
        case 4u: { return select(prm.slope * x, x, x > 0.0); }
        case 5u: { return x * normal_cdf(x); }
        case 6u: { return x * sigmoid(x); }
        default: { return act_apply(x, prm.act); }
    }
}

// The derivative from the output y, or for gelu and silu from the input x (in `v`).
fn act_any_grad(v: f32) -> f32 {
    switch prm.act {
        case 4u: { return select(prm.slope, 1.0, v > 0.0); }
        case 5u: { return normal_cdf(v) + v * exp(-0.5 * v * v) * 0.39894228040143268; }
        case 6u: {
            let s = sigmoid(v);
            return s * (1.0 + v * (1.0 - s));
        }
        default: { return act_grad(v, prm.act); }
    }
}

// dst = act(src)
@compute @workgroup_size(256)
fn activation_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i < prm.len {
        dst[i] = act_any(src[i]);
    }
}

// dst = src * act'(.) * scale, act' from y
@compute @workgroup_size(256)
fn activation_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i < prm.len {
        var scale = 1.0;
        if prm.has_dropout == 1u {
            scale = member_dropout_scale(i, prm.drop_members, prm.drop_len, prm.drop_at);
        }
        dst[i] = src[i] * act_any_grad(y[i]) * scale;
    }
}
