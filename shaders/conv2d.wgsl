// 2-D convolution as implicit GEMM (src/cpu/conv2d.rs): the column matrix of im2col is
// never stored; each tile load computes which input element it stands for. Same tiling as
// gemm.wgsl: TM x TN output tiles (64 x 64 by default), TILE_WG threads of 4 x 4 outputs, K
// in steps of 16.
//
// Grouped (model::Conv2d): each of `groups` groups is a GEMM of its own, with cg = c_in /
// in_groups input and fg = c_out / groups output channels; group g's output channels start
// at g fg, its input channels at (g % in_groups) cg, its weights at w_off + g fg cg kh kw.
// The grid's z runs over (split, group, row tile), row tile fastest.
//
//   forward          out (n, co, p)   M = fg, N = n * h_out * w_out, K = cg * kh * kw
//   backward_input   dinp (n, ci, q)  M = cg, N = n * h_in * w_in,   K = fg * kh * kw
//   backward_weight  dW (co, k)       M = fg, N = cg * kh * kw,      K = n * h_out * w_out,
//                    the K range split into `splits` chunks whose partial sums land in
//                    separate slices of c and are added in order by reduce.wgsl.

struct Params {
    n: u32,
    c_in: u32,
    h_in: u32,
    w_in: u32,
    c_out: u32,
    h_out: u32,
    w_out: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad_h: u32,
    pad_w: u32,
    w_off: u32,
    b_off: u32,
    has_bias: u32,
    act: u32,
    tiles_n: u32,
    tiles_m: u32,     // row tiles of one group
    split_len: u32,   // backward_weight: length of one split of K
    c_off: u32,       // where C starts in c
    groups: u32,
    in_groups: u32,
    has_dropout: u32, // forward: dropout after the activation (members.wgsl's epilogue)
    drop_members: u32,
    drop_len: u32,
    drop_stream: u32,
    drop_step: u32,
    drop_at: u32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

const FORWARD: u32 = 0u;
const BACKWARD_INPUT: u32 = 1u;
const BACKWARD_WEIGHT: u32 = 2u;


// Index arithmetic, not multiply-adds, is what limits a naive implicit GEMM: decoding a
// column or a K index into (image, channel, y, x) takes integer divisions by run-time sizes,
// tens of instructions each. So each thread decodes the one B column it loads once, before
// the K loop (col_decode), and each K step's 16 reduction indices are decoded once per
// workgroup into `ktab` (k_decode); a tile load is then a few adds and compares.
var<workgroup> ktab: array<vec4<i32>, 16>;

// The loaders' strides: the rows one thread loads into the A tile are A_STEP apart, the K
// offsets it loads into the B tile B_STEP apart.
const A_STEP: u32 = TILE_WG / TK;
const B_STEP: u32 = TILE_WG / TN;

// This workgroup's group: its input channels (cg, from in_base), output channels (fg, from
// out_base) and weights (from w_base). Set once at the start of conv_tile.
var<private> cg: u32;
var<private> fg: u32;
var<private> in_base: u32;
var<private> out_base: u32;
var<private> w_base: u32;

// (i / (h w), i / w % h, i % w): an index over (outer, row, column) of an h x w grid split
// into its three parts, e.g. (ci, ky, kx) of a kernel or (s, oy, ox) of the output.
fn split3(i: u32, h: u32, w: u32) -> vec3<u32> {
    let o = i / (h * w);
    let r = i - o * h * w;
    let y = r / w;
    return vec3(o, y, r - y * w);
}

// What a thread's B column stands for, per mode:
//   forward          col = (s, oy, ox): (offset of image s's group input, oy*stride - pad_h, ox*stride - pad_w, 0)
//   backward_input   col = (s, iy, ix): (offset of dout image s's group, iy + pad_h, ix + pad_w, 0)
//   backward_weight  col = (ci, ky, kx): (offset of the group's channel ci, ky - pad_h, kx - pad_w, 0)
fn col_decode(mode: u32, col: u32) -> vec4<i32> {
    let pp = prm.h_out * prm.w_out;
    let q = prm.h_in * prm.w_in;
    switch mode {
        case FORWARD: {
            let d = split3(col, prm.h_out, prm.w_out);
            return vec4(i32((d.x * prm.c_in + in_base) * q), i32(d.y * prm.stride) - i32(prm.pad_h), i32(d.z * prm.stride) - i32(prm.pad_w), 0);
        }
        case BACKWARD_INPUT: {
            let d = split3(col, prm.h_in, prm.w_in);
            return vec4(i32((d.x * prm.c_out + out_base) * pp), i32(d.y + prm.pad_h), i32(d.z + prm.pad_w), 0);
        }
        default: {
            let d = split3(col, prm.kh, prm.kw);
            return vec4(i32((in_base + d.x) * q), i32(d.y) - i32(prm.pad_h), i32(d.z) - i32(prm.pad_w), 0);
        }
    }
}

// What reduction index k stands for, per mode:
//   forward          k = (ci, ky, kx): (offset of (ci, ky, kx) in an input image, ky, kx, 0)
//   backward_input   k = (co, ky, kx): (offset of W[co, 0, ky, kx], offset of channel co in a dout image, ky, kx)
//   backward_weight  k = (s, oy, ox):  (offset of dout[s, 0, oy, ox], offset of input image s, oy, ox)
fn k_decode(mode: u32, k: u32) -> vec4<i32> {
    let pp = prm.h_out * prm.w_out;
    switch mode {
        case FORWARD: {
            let d = split3(k, prm.kh, prm.kw);
            return vec4(i32((d.x * prm.h_in + d.y) * prm.w_in + d.z), i32(d.y), i32(d.z), 0);
        }
        case BACKWARD_INPUT: {
            let d = split3(k, prm.kh, prm.kw);
            return vec4(i32((d.x * cg * prm.kh + d.y) * prm.kw + d.z), i32(d.x * pp), i32(d.y), i32(d.z));
        }
        default: {
            let d = split3(k, prm.h_out, prm.w_out);
            return vec4(i32((d.x * prm.c_out * prm.h_out + d.y) * prm.w_out + d.z), i32(d.x * prm.c_in * prm.h_in * prm.w_in), i32(d.y), i32(d.z));
        }
    }
}

// One group's (M, N, K).
// Computed from the uniforms alone (not the private cg and fg, which WGSL's uniformity
// analysis counts as non-uniform): the K loop's bounds, and so its barriers, must be uniform.
fn dims(mode: u32) -> vec3<u32> {
    let khw = prm.kh * prm.kw;
    let c_group = prm.c_in / prm.in_groups;
    let f_group = prm.c_out / prm.groups;
    switch mode {
        case FORWARD: { return vec3(f_group, prm.n * prm.h_out * prm.w_out, c_group * khw); }
        case BACKWARD_INPUT: { return vec3(c_group, prm.n * prm.h_in * prm.w_in, f_group * khw); }
        default: { return vec3(f_group, c_group * khw, prm.n * prm.h_out * prm.w_out); }
    }
}

// Element (row, k) of A, with kt = k_decode(k); rows count within the group.
fn load_a(mode: u32, row: u32, k: u32, kt: vec4<i32>) -> f32 {
    switch mode {
        case FORWARD: {
            // W (fg, cg*kh*kw) of the group
            return a[w_base + row * cg * prm.kh * prm.kw + k];
        }
        case BACKWARD_INPUT: {
            // W[co, ci = row, ky, kx] of the group
            return a[w_base + u32(kt.x) + row * prm.kh * prm.kw];
        }
        default: {
            // dout[s, co = out_base + row, oy, ox]
            return a[u32(kt.x) + (out_base + row) * prm.h_out * prm.w_out];
        }
    }
}

// Element (k, col) of B, with cb = col_decode(col) and kt = k_decode(k); 0 in the padding.
fn load_b(mode: u32, cb: vec4<i32>, kt: vec4<i32>) -> f32 {
    switch mode {
        case FORWARD: {
            // inp[s, ci, oy*stride + ky - pad_h, ox*stride + kx - pad_w]
            let iy = cb.y + kt.y;
            let ix = cb.z + kt.z;
            if iy < 0 || ix < 0 || iy >= i32(prm.h_in) || ix >= i32(prm.w_in) {
                return 0.0;
            }
            return b[u32(cb.x + kt.x + cb.y * i32(prm.w_in) + cb.z)];
        }
        case BACKWARD_INPUT: {
            // dout[s, co, oy, ox] where oy*stride = iy + pad_h - ky, ox*stride = ix + pad_w - kx
            var oy = cb.y - kt.z;
            var ox = cb.z - kt.w;
            if oy < 0 || ox < 0 {
                return 0.0;
            }
            if prm.stride != 1u {
                let st = i32(prm.stride);
                if oy % st != 0 || ox % st != 0 {
                    return 0.0;
                }
                oy /= st;
                ox /= st;
            }
            if oy >= i32(prm.h_out) || ox >= i32(prm.w_out) {
                return 0.0;
            }
            return b[u32(cb.x + kt.y + oy * i32(prm.w_out) + ox)];
        }
        default: {
            // inp[s, ci, oy*stride + ky - pad_h, ox*stride + kx - pad_w]
            let iy = kt.z * i32(prm.stride) + cb.y;
            let ix = kt.w * i32(prm.stride) + cb.z;
            if iy < 0 || ix < 0 || iy >= i32(prm.h_in) || ix >= i32(prm.w_in) {
                return 0.0;
            }
            return b[u32(kt.y + cb.x + iy * i32(prm.w_in) + ix)];
        }
    }
}

fn conv_tile(mode: u32, wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let tile_n = wid.x + wid.y * nwg.x;
    if tile_n >= prm.tiles_n {
        return;
    }
    let tile_m = wid.z % prm.tiles_m;
    let group = (wid.z / prm.tiles_m) % prm.groups;
    let split = wid.z / (prm.tiles_m * prm.groups);
    cg = prm.c_in / prm.in_groups;
    fg = prm.c_out / prm.groups;
    in_base = (group % prm.in_groups) * cg;
    out_base = group * fg;
    w_base = prm.w_off + group * fg * cg * prm.kh * prm.kw;
    let d = dims(mode);
    var k_begin = 0u;
    var k_end = d.z;
    if mode == BACKWARD_WEIGHT {
        k_begin = split * prm.split_len;
        k_end = min(d.z, k_begin + prm.split_len);
    }
    let m0 = tile_m * TM;
    let n0 = tile_n * TN;
    let tx = lid % TX;
    let ty = lid / TX;
    // A tile: this thread loads rows m0 + am + A_STEP r (r < A_LOADS) at K offset ka, along
    // K (contiguous for W and dout). B tile: column n0 + bn at K offsets bk + B_STEP r
    // (r < B_LOADS), along the column (contiguous pixels): one column per thread, decoded
    // once.
    let ka = lid % TK;
    let am = lid / TK;
    let bn = lid % TN;
    let bk = lid / TN;
    let col_ok = n0 + bn < d.y;
    var cb = vec4(0);
    if col_ok {
        cb = col_decode(mode, n0 + bn);
    }
    var acc: Acc;
    // Two barriers per K step, one on the last: the next step's K table is written while
    // the tiles are multiplied (nothing reads it then), and the barrier after the multiply
    // both frees the tiles and publishes it. On CPU adapters (SwiftShader, llvmpipe) every
    // barrier switches each of a workgroup's invocations out and back, so they count.
    if lid < TK {
        ktab[lid] = k_decode(mode, k_begin + lid);
    }
    workgroupBarrier();
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        let a_ok = k0 + ka < k_end;
        let kta = ktab[ka];
        for (var r = 0u; r < A_LOADS; r++) {
            let mm = am + A_STEP * r;
            var av = 0.0;
            if a_ok && m0 + mm < d.x {
                av = load_a(mode, m0 + mm, k0 + ka, kta);
            }
            a_put(ka, mm, av);
        }
        for (var r = 0u; r < B_LOADS; r++) {
            let kb = bk + B_STEP * r;
            var bv = 0.0;
            if col_ok && k0 + kb < k_end {
                bv = load_b(mode, cb, ktab[kb]);
            }
            b_put(kb, bn, bv);
        }
        workgroupBarrier();
        let more = k0 + TK < k_end;
        if more && lid < TK {
            ktab[lid] = k_decode(mode, k0 + TK + lid);
        }
        tile_multiply(tx, ty, &acc);
        if more {
            workgroupBarrier();
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + ty + TY * i;
        let accs = acc_row(acc, i);
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + tx + TX * j;
            if row >= d.x || col >= d.y {
                continue;
            }
            let v = accs[j];
            switch mode {
                case FORWARD: {
                    let pp = prm.h_out * prm.w_out;
                    var y = v;
                    if prm.has_bias == 1u {
                        y += a[prm.b_off + out_base + row];
                    }
                    let idx = ((col / pp) * prm.c_out + out_base + row) * pp + col % pp;
                    c[prm.c_off + idx] = epilogue(y, prm.act, idx, prm.has_dropout, prm.drop_members, prm.drop_len, prm.drop_stream, prm.drop_step, prm.drop_at);
                }
                case BACKWARD_INPUT: {
                    let q = prm.h_in * prm.w_in;
                    c[prm.c_off + ((col / q) * prm.c_in + in_base + row) * q + col % q] = v;
                }
                default: {
                    // Partial `split` of dW (c_out, cg kh kw): the group's rows from out_base.
                    c[prm.c_off + (split * prm.c_out + out_base + row) * d.y + col] = v;
                }
            }
        }
    }
}

// out = epilogue(conv(inp, W) + b): a = params, b = inp, c = out.
@compute @workgroup_size(TILE_WG)
fn conv2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    conv_tile(FORWARD, wid, nwg, lid);
}

// dinp from dout: a = params, b = dout, c = dinp.
@compute @workgroup_size(TILE_WG)
fn conv2d_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    conv_tile(BACKWARD_INPUT, wid, nwg, lid);
}

// dW (or its split partials) from dout and the input: a = dout, b = inp, c = grads or scratch.
// (Every conv kernel binds the member table, which the forward's epilogue reads.)
@compute @workgroup_size(TILE_WG)
fn conv2d_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    conv_tile(BACKWARD_WEIGHT, wid, nwg, lid);
}
