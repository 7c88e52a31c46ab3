// Batch gathering on the device (src/cpu/data.rs, src/data/augment.rs): one thread per
// output pixel. Images stay in device memory as bytes packed four to a u32; each batch
// reads examples perm[start..start+n], turns bytes into (pixel/255 - mean) / std, and, if
// the batch is altered (draw(key, 0) < chance), resamples each image through its own
// zoom-rotate-shift map (one bilinear sample, zero fill), with the same draws as the CPU.

struct Params {
    start: u32,
    n: u32,
    height: u32,
    width: u32,
    mean: f32,
    std_dev: f32,
    augment: u32,   // 0: none; 1: augment this batch if its draw says so
    key: u32,
    chance: f32,
    zoom_lo: f32,
    zoom_hi: f32,
    rotate: f32,    // radians
    shift: f32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> images: array<u32>;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read> perm: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<u32>;

fn pixel(img: u32, px: i32, py: i32) -> f32 {
    if px < 0 || py < 0 || px >= i32(prm.width) || py >= i32(prm.height) {
        return 0.0;
    }
    let i = img + u32(py) * prm.width + u32(px);
    return f32((images[i / 4u] >> ((i % 4u) * 8u)) & 0xffu);
}

@compute @workgroup_size(256)
fn gather_batch(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    let len = prm.height * prm.width;
    if i >= prm.n * len {
        return;
    }
    let j = i / len;
    let p = i % len;
    let idx = perm[prm.start + j];
    if p == 0u {
        y[j] = labels[idx];
    }
    let img = idx * len;
    let ox = p % prm.width;
    let oy = p / prm.width;
    var v: f32;
    if prm.augment == 1u && draw(prm.key, 0u) < prm.chance {
        let zoom = prm.zoom_lo + draw(prm.key, 4u * j + 1u) * (prm.zoom_hi - prm.zoom_lo);
        let theta = (2.0 * draw(prm.key, 4u * j + 2u) - 1.0) * prm.rotate;
        let tx = (2.0 * draw(prm.key, 4u * j + 3u) - 1.0) * prm.shift * f32(prm.width);
        let ty = (2.0 * draw(prm.key, 4u * j + 4u) - 1.0) * prm.shift * f32(prm.height);
        let a = cos(theta) / zoom;
        let b = sin(theta) / zoom;
        let cx = (f32(prm.width) - 1.0) * 0.5;
        let cy = (f32(prm.height) - 1.0) * 0.5;
        let dx = f32(ox) - cx - tx;
        let dy = f32(oy) - cy - ty;
        let sx = cx + a * dx + b * dy;
        let sy = cy - b * dx + a * dy;
        let fx0 = floor(sx);
        let fy0 = floor(sy);
        let fx = sx - fx0;
        let fy = sy - fy0;
        let x0 = i32(fx0);
        let y0 = i32(fy0);
        let top = pixel(img, x0, y0) * (1.0 - fx) + pixel(img, x0 + 1, y0) * fx;
        let bottom = pixel(img, x0, y0 + 1) * (1.0 - fx) + pixel(img, x0 + 1, y0 + 1) * fx;
        v = top * (1.0 - fy) + bottom * fy;
    } else {
        v = pixel(img, i32(ox), i32(oy));
    }
    x[i] = v * (1.0 / (255.0 * prm.std_dev)) - prm.mean / prm.std_dev;
}
