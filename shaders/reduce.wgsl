// Reductions shared by the conv and dense backwards, in a fixed order (deterministic, no
// atomics).

struct Params {
    n: u32,        // bias_backward: examples; sum_partials: number of partials
    c: u32,        // bias_backward: channels
    p: u32,        // bias_backward: positions per channel (h*w; 1 for dense)
    len: u32,      // sum_partials: length of one partial
    dst_off: u32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

var<workgroup> red: array<f32, 64>;

// db[c] = sum over examples and positions of dout (n, c, p): one 64-thread workgroup per
// channel (the grid folded into two dimensions past 65,535 channels).
@compute @workgroup_size(64)
fn bias_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if c >= prm.c {
        return;
    }
    let m = prm.n * prm.p;
    var s = 0.0;
    for (var k = lid; k < m; k += 64u) {
        s += src[((k / prm.p) * prm.c + c) * prm.p + k % prm.p];
    }
    red[lid] = s;
    workgroupBarrier();
    for (var h = 32u; h > 0u; h >>= 1u) {
        if lid < h {
            red[lid] += red[lid + h];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        dst[prm.dst_off + c] = red[0];
    }
}

// dst[dst_off + i] = sum over k < n of src[k * len + i]: the split-K partials of a weight
// gradient, added in split order.
@compute @workgroup_size(256)
fn sum_partials(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if i >= prm.len {
        return;
    }
    var s = 0.0;
    for (var k = 0u; k < prm.n; k++) {
        s += src[k * prm.len + i];
    }
    dst[prm.dst_off + i] = s;
}
