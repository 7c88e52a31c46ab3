// Element-wise activations (src/cpu/activation.rs), every code of common.wgsl's act_any.

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

// dst = act(src)
@compute @workgroup_size(256)
fn activation_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i < prm.len {
        dst[i] = act_any(src[i], prm.act, prm.slope);
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
        dst[i] = src[i] * act_any_grad(y[i], prm.act, prm.slope) * scale;
    }
}
