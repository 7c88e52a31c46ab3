// Optimizers over the whole flat parameter buffer: one dispatch per step (src/cpu/optim.rs).
// Each element takes its member's rates from the member table (members.wgsl): the element's
// member by the segment list at `segs`, its learning rate at `lr_at` + member, its weight
// decay (adam), momentum (sgd) or decay (ema) at `rate_at` + member, sgd's weight decay at
// `wd_at` + member.

struct Params {
    len: u32,
    members: u32,
    segs: u32,
    lr_at: u32,
    rate_at: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    // adam: 1 - beta1^t and 1 / sqrt(1 - beta2^t)
    c1: f32,
    inv_sqrt_c2: f32,
    // sgd: the (coupled) weight decays, and 1 for Nesterov momentum
    wd_at: u32,
    nesterov: u32,
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
    let k = member_of(i, prm.segs, prm.members);
    let lr = member_f32(prm.lr_at + k);
    let step = lr / prm.c1;
    let decay = 1.0 - lr * member_f32(prm.rate_at + k);
    let g = grads[i];
    let mi = prm.beta1 * m[i] + (1.0 - prm.beta1) * g;
    let vi = prm.beta2 * v[i] + (1.0 - prm.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] = params[i] * decay - step * mi / (sqrt(vi) * prm.inv_sqrt_c2 + prm.eps);
}

@compute @workgroup_size(256)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i >= prm.len {
        return;
    }
    let k = member_of(i, prm.segs, prm.members);
    let momentum = member_f32(prm.rate_at + k);
    let wd = member_f32(prm.wd_at + k);
    // torch.optim.SGD: g += wd p; b = momentum b + g; a step of lr b, or lr (g + momentum b).
    var g = grads[i];
    if wd != 0.0 {
        g = g + wd * params[i];
    }
    var d = g;
    if momentum > 0.0 {
        let b = momentum * m[i] + g;
        m[i] = b;
        d = select(b, g + momentum * b, prm.nesterov == 1u);
    }
    params[i] = params[i] - member_f32(prm.lr_at + k) * d;
}

// Weight averaging: m = decay * m + (1 - decay) * grads, over len elements (the averaged
// copy in `m`, the live values in `grads`; `params` and `v` unused).
@compute @workgroup_size(256)
fn ema_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i >= prm.len {
        return;
    }
    let decay = member_f32(prm.rate_at + member_of(i, prm.segs, prm.members));
    m[i] = decay * m[i] + (1.0 - decay) * grads[i];
}
