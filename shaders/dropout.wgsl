// Inverted dropout with a counter-based mask (src/cpu/dropout.rs): element i is element j of
// its member's own batch buffer, kept when draw(key, j) >= p under the member's key and p
// (members.wgsl), so the backward recomputes the mask. Forward and backward are the same map
// (src is inp or dout, dst is out or dinp).

struct Params {
    len: u32,
    members: u32,
    member_len: u32,
    stream: u32,
    step: u32,
    at: u32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;

fn apply(i: u32) {
    if i < prm.len {
        dst[i] = member_dropout(src[i], i, prm.members, prm.member_len, prm.stream, prm.step, prm.at);
    }
}

@compute @workgroup_size(256)
fn dropout_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    apply(flat_id(gid, nwg));
}

@compute @workgroup_size(256)
fn dropout_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    apply(flat_id(gid, nwg));
}
