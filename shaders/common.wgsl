// Shared by every shader: the loader (src/gpu/shaders.rs) puts this file in front of each
// op family's file. Counter-based random numbers identical to src/rng.rs, activations as in
// src/cpu/activation.rs, and the index helper for 1-D kernels run on a 2-D grid.

const WG: u32 = 256u;

// "lowbias32" integer hash: the same bijection as rng::mix32.
fn mix32(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// The i-th uniform draw in [0, 1) under `key`: 24 bits, exact in f32 (rng::draw).
fn draw(key: u32, i: u32) -> f32 {
    return f32(mix32(key ^ mix32(i)) >> 8u) * (1.0 / 16777216.0);
}

// Activation codes as model::Act: 0 none, 1 relu, 2 sigmoid, 3 tanh. Sigmoid and tanh are
// written with exp of a non-positive argument, so they stay finite for any input.
fn act_apply(x: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return max(x, 0.0); }
        case 2u: {
            if x >= 0.0 {
                return 1.0 / (1.0 + exp(-x));
            }
            let e = exp(x);
            return e / (1.0 + e);
        }
        case 3u: {
            let e = exp(-2.0 * abs(x));
            return sign(x) * (1.0 - e) / (1.0 + e);
        }
        default: { return x; }
    }
}

// Derivative from the activation's output y.
fn act_grad(y: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return select(0.0, 1.0, y > 0.0); }
        case 2u: { return y * (1.0 - y); }
        case 3u: { return 1.0 - y * y; }
        default: { return 1.0; }
    }
}

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

// Every activation code: act_apply's and 4 leaky relu (with its slope), 5 gelu, 6 silu (the
// activation op and batch norm's fused epilogue).
fn act_any(x: f32, act: u32, slope: f32) -> f32 {
    switch act {
        case 4u: { return select(slope * x, x, x > 0.0); }
        case 5u: { return x * normal_cdf(x); }
        case 6u: { return x * sigmoid(x); }
        default: { return act_apply(x, act); }
    }
}

// The derivative from the output y, or for gelu and silu from the input x (in `v`).
fn act_any_grad(v: f32, act: u32, slope: f32) -> f32 {
    switch act {
        case 4u: { return select(slope, 1.0, v > 0.0); }
        case 5u: { return normal_cdf(v) + v * exp(-0.5 * v * v) * 0.39894228040143268; }
        case 6u: {
            let s = sigmoid(v);
            return s * (1.0 + v * (1.0 - s));
        }
        default: { return act_grad(v, act); }
    }
}

// 1-D kernels are dispatched as (min(groups, limit), ceil(groups / limit), 1) workgroups of
// WG threads, so more than 65,535 groups fit; this is the flat invocation index.
fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}
