// Batch gathering on the device (src/cpu/data.rs, src/data/augment.rs): one thread per
// output value (example, channel, row, column). Images stay in device memory as bytes packed
// four to a u32 (c, h, w per example); each batch reads examples perm[start..start+n], turns
// bytes into (pixel/255 - mean[c]) / std[c], mirrors an image left to right if its flip draw
// says so, shifts it by its whole-pixel offsets (translate > 0; zero fill), and, if the batch is altered (draw(key, 0) < chance), resamples each image
// through its own zoom-rotate-shift map (one bilinear sample, zero fill), with the same
// draws as the CPU. A data set split over several buffers is gathered once per buffer:
// `images` then holds examples first..first+count, and the other examples are skipped.

struct Params {
    mean: vec4<f32>,
    std_dev: vec4<f32>,
    start: u32,
    n: u32,
    channels: u32,
    height: u32,
    width: u32,
    augment: u32,   // 0: none; 1: augment this batch if its draw says so
    key: u32,
    chance: f32,
    zoom_lo: f32,
    zoom_hi: f32,
    rotate: f32,    // radians
    shift: f32,
    flip: u32,      // 1: mirror each image whose draw 0x80000000 + j is below 1/2
    first: u32,
    count: u32,
    translate: u32, // largest whole-pixel shift either way (0: none)
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> images: array<u32>;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read> perm: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<u32>;

// One whole number in -t..=t from a draw in [0, 1) (augment::image_shift).
fn shift_offset(u: f32, t: u32) -> i32 {
    return min(i32(u * f32(2u * t + 1u)), i32(2u * t)) - i32(t);
}

fn pixel(plane: u32, px: i32, py: i32) -> f32 {
    if px < 0 || py < 0 || px >= i32(prm.width) || py >= i32(prm.height) {
        return 0.0;
    }
    let i = plane + u32(py) * prm.width + u32(px);
    return f32((images[i / 4u] >> ((i % 4u) * 8u)) & 0xffu);
}

@compute @workgroup_size(256)
fn gather_batch(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let hw = prm.height * prm.width;
    let len = prm.channels * hw;
    if i >= prm.n * len {
        return;
    }
    let j = i / len;
    let c = (i % len) / hw;
    let p = i % hw;
    let idx = perm[prm.start + j];
    if idx < prm.first || idx - prm.first >= prm.count {
        return;
    }
    if i % len == 0u {
        y[j] = labels[idx];
    }
    let plane = (idx - prm.first) * len + c * hw;
    var ox = p % prm.width;
    let oy = p / prm.width;
    if prm.flip == 1u && draw(prm.key, 0x80000000u + j) < 0.5 {
        ox = prm.width - 1u - ox;
    }
    // The shifted image shows pixel (ox - dx, oy - dy) of the (resampled) image.
    var sx = i32(ox);
    var sy = i32(oy);
    if prm.translate > 0u {
        sx -= shift_offset(draw(prm.key, 0x40000000u + 2u * j), prm.translate);
        sy -= shift_offset(draw(prm.key, 0x40000000u + 2u * j + 1u), prm.translate);
    }
    var v = 0.0;
    if sx < 0 || sy < 0 || sx >= i32(prm.width) || sy >= i32(prm.height) {
        v = 0.0;
    } else if prm.augment == 1u && draw(prm.key, 0u) < prm.chance {
        let zoom = prm.zoom_lo + draw(prm.key, 4u * j + 1u) * (prm.zoom_hi - prm.zoom_lo);
        let theta = (2.0 * draw(prm.key, 4u * j + 2u) - 1.0) * prm.rotate;
        let tx = (2.0 * draw(prm.key, 4u * j + 3u) - 1.0) * prm.shift * f32(prm.width);
        let ty = (2.0 * draw(prm.key, 4u * j + 4u) - 1.0) * prm.shift * f32(prm.height);
        let a = cos(theta) / zoom;
        let b = sin(theta) / zoom;
        let cx = (f32(prm.width) - 1.0) * 0.5;
        let cy = (f32(prm.height) - 1.0) * 0.5;
        let dx = f32(sx) - cx - tx;
        let dy = f32(sy) - cy - ty;
        let px = cx + a * dx + b * dy;
        let py = cy - b * dx + a * dy;
        let fx0 = floor(px);
        let fy0 = floor(py);
        let fx = px - fx0;
        let fy = py - fy0;
        let x0 = i32(fx0);
        let y0 = i32(fy0);
        let top = pixel(plane, x0, y0) * (1.0 - fx) + pixel(plane, x0 + 1, y0) * fx;
        let bottom = pixel(plane, x0, y0 + 1) * (1.0 - fx) + pixel(plane, x0 + 1, y0 + 1) * fx;
        v = top * (1.0 - fy) + bottom * fy;
    } else {
        v = pixel(plane, sx, sy);
    }
    x[i] = v * (1.0 / (255.0 * prm.std_dev[c])) - prm.mean[c] / prm.std_dev[c];
}
