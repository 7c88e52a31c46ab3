// The element-wise sum of two buffers (src/cpu/residual.rs): a residual block's body plus its
// shortcut, and in the backward the two gradients of a value that two ops read.

struct Params {
    len: u32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn residual_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i < prm.len {
        out[i] = a[i] + b[i];
    }
}
