// Max and average pooling (src/cpu/pool.rs). Max pooling's forward keeps each maximum's
// position within its plane; the backwards gather, for each input element, the gradients of
// the windows it is in (max: those whose maximum it was), windows in row order (no atomics,
// deterministic, overlapping windows allowed).

struct Params {
    planes: u32,   // n * c
    h_in: u32,
    w_in: u32,
    h_out: u32,
    w_out: u32,
    size: u32,      // window height (max pooling: and width)
    stride: u32,
    size_w: u32,    // average pooling: window width
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> src: array<f32>;          // forward: inp; backward: dout
@group(0) @binding(1) var<storage, read_write> argmax: array<u32>;  // read-only in the backward
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;     // forward: out; backward: dinp

@compute @workgroup_size(256)
fn maxpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let pout = prm.h_out * prm.w_out;
    if i >= prm.planes * pout {
        return;
    }
    let plane = i / pout;
    let o = i % pout;
    let y0 = (o / prm.w_out) * prm.stride;
    let x0 = (o % prm.w_out) * prm.stride;
    let base = plane * prm.h_in * prm.w_in;
    var best = y0 * prm.w_in + x0;
    for (var ky = 0u; ky < prm.size; ky++) {
        for (var kx = 0u; kx < prm.size; kx++) {
            let k = (y0 + ky) * prm.w_in + x0 + kx;
            // Strictly greater: the first maximum wins, as on the CPU.
            if src[base + k] > src[base + best] {
                best = k;
            }
        }
    }
    dst[i] = src[base + best];
    argmax[i] = best;
}

@compute @workgroup_size(256)
fn maxpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let pin = prm.h_in * prm.w_in;
    if i >= prm.planes * pin {
        return;
    }
    let plane = i / pin;
    let k = i % pin;
    let iy = k / prm.w_in;
    let ix = k % prm.w_in;
    // Windows oy with oy*stride <= iy < oy*stride + size.
    let oy_lo = select(0u, (iy + prm.stride - prm.size) / prm.stride, iy + 1u > prm.size);
    let ox_lo = select(0u, (ix + prm.stride - prm.size) / prm.stride, ix + 1u > prm.size);
    let oy_hi = min(iy / prm.stride, prm.h_out - 1u);
    let ox_hi = min(ix / prm.stride, prm.w_out - 1u);
    var g = 0.0;
    for (var oy = oy_lo; oy <= oy_hi; oy++) {
        for (var ox = ox_lo; ox <= ox_hi; ox++) {
            let o = plane * prm.h_out * prm.w_out + oy * prm.w_out + ox;
            if argmax[o] == k {
                g += src[o];
            }
        }
    }
    dst[i] = g;
}

// The mean of each size x size_w window.
@compute @workgroup_size(256)
fn avgpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let pout = prm.h_out * prm.w_out;
    if i >= prm.planes * pout {
        return;
    }
    let o = i % pout;
    let base = (i / pout) * prm.h_in * prm.w_in + (o / prm.w_out) * prm.stride * prm.w_in + (o % prm.w_out) * prm.stride;
    var sum = 0.0;
    for (var ky = 0u; ky < prm.size; ky++) {
        for (var kx = 0u; kx < prm.size_w; kx++) {
            sum += src[base + ky * prm.w_in + kx];
        }
    }
    dst[i] = sum / f32(prm.size * prm.size_w);
}

// dinp: dout / area of every window the element is in, windows in row order.
@compute @workgroup_size(256)
fn avgpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let pin = prm.h_in * prm.w_in;
    if i >= prm.planes * pin {
        return;
    }
    let plane = i / pin;
    let k = i % pin;
    let iy = k / prm.w_in;
    let ix = k % prm.w_in;
    // Windows oy with oy*stride <= iy < oy*stride + size (likewise x), none past the last.
    let oy_lo = select(0u, (iy + prm.stride - prm.size) / prm.stride, iy + 1u > prm.size);
    let ox_lo = select(0u, (ix + prm.stride - prm.size_w) / prm.stride, ix + 1u > prm.size_w);
    let oy_hi = min(iy / prm.stride, prm.h_out - 1u);
    let ox_hi = min(ix / prm.stride, prm.w_out - 1u);
    let area = f32(prm.size * prm.size_w);
    var g = 0.0;
    for (var oy = oy_lo; oy <= oy_hi; oy++) {
        for (var ox = ox_lo; ox <= ox_hi; ox++) {
            g += src[plane * prm.h_out * prm.w_out + oy * prm.w_out + ox] / area;
        }
    }
    dst[i] = g;
}
