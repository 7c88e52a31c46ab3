// Optimizers over the whole flat parameter buffer: one dispatch per step (src/cpu/optim.rs).

struct Params {
    len: u32,
    // adam: lr / (1 - beta1^t); sgd: lr
    step: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    // adam: 1 / sqrt(1 - beta2^t)
    inv_sqrt_c2: f32,
    // 1 - lr * weight_decay (AdamW)
    decay: f32,
    momentum: f32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> grads: array<f32>;
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;   // adam m; sgd velocity
@group(0) @binding(3) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn adam_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i >= prm.len {
        return;
    }
    let g = grads[i];
    let mi = prm.beta1 * m[i] + (1.0 - prm.beta1) * g;
    let vi = prm.beta2 * v[i] + (1.0 - prm.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] = params[i] * prm.decay - prm.step * mi / (sqrt(vi) * prm.inv_sqrt_c2 + prm.eps);
}

@compute @workgroup_size(256)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i >= prm.len {
        return;
    }
    var d = grads[i];
    if prm.momentum > 0.0 {
        d = prm.momentum * m[i] + d;
        m[i] = d;
    }
    params[i] = params[i] - prm.step * d;
}

// Weight averaging: m = beta1 * m + (1 - beta1) * grads, over len elements (the averaged
// copy in `m`, the live values in `grads`; `params` and `v` unused).
@compute @workgroup_size(256)
fn ema_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i >= prm.len {
        return;
    }
    m[i] = prm.beta1 * m[i] + (1.0 - prm.beta1) * grads[i];
}
