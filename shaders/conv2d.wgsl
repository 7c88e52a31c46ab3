// 2-D convolution as implicit GEMM (src/cpu/conv2d.rs): the column matrix of im2col is
// never stored; each tile load computes which input element it stands for. Same tiling as
// gemm.wgsl: 64 x 64 output tiles, 256 threads of 4 x 4 outputs, K in steps of 16.
//
//   forward          out (n, co, p)   M = c_out, N = n * h_out * w_out, K = c_in * kh * kw
//   backward_input   dinp (n, ci, q)  M = c_in,  N = n * h_in * w_in,   K = c_out * kh * kw
//   backward_weight  dW (co, k)       M = c_out, N = c_in * kh * kw,    K = n * h_out * w_out,
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
    tiles_m: u32,
    split_len: u32,   // backward_weight: length of one split of K
    c_off: u32,       // where C starts in c
    has_dropout: u32, // forward: dropout after the activation (see common.wgsl's epilogue)
    drop_key: u32,
    drop_p: f32,
    drop_scale: f32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

const FORWARD: u32 = 0u;
const BACKWARD_INPUT: u32 = 1u;
const BACKWARD_WEIGHT: u32 = 2u;


// Input element (s, ci, oy*stride + ky - pad, ox*stride + kx - pad) of b, or 0 in the padding.
fn im2col(s: u32, ci: u32, ky: u32, kx: u32, p: u32) -> f32 {
    let iy = i32((p / prm.w_out) * prm.stride + ky) - i32(prm.pad_h);
    let ix = i32((p % prm.w_out) * prm.stride + kx) - i32(prm.pad_w);
    if iy < 0 || ix < 0 || iy >= i32(prm.h_in) || ix >= i32(prm.w_in) {
        return 0.0;
    }
    return b[((s * prm.c_in + ci) * prm.h_in + u32(iy)) * prm.w_in + u32(ix)];
}

fn dims(mode: u32) -> vec3<u32> {
    let khw = prm.kh * prm.kw;
    switch mode {
        case FORWARD: { return vec3(prm.c_out, prm.n * prm.h_out * prm.w_out, prm.c_in * khw); }
        case BACKWARD_INPUT: { return vec3(prm.c_in, prm.n * prm.h_in * prm.w_in, prm.c_out * khw); }
        default: { return vec3(prm.c_out, prm.c_in * khw, prm.n * prm.h_out * prm.w_out); }
    }
}

fn load_a(mode: u32, row: u32, k: u32) -> f32 {
    let khw = prm.kh * prm.kw;
    switch mode {
        case FORWARD: {
            // W (c_out, c_in*kh*kw)
            return a[prm.w_off + row * prm.c_in * khw + k];
        }
        case BACKWARD_INPUT: {
            // W[co, ci = row, ky, kx] with k = (co, ky, kx)
            let co = k / khw;
            let r = k % khw;
            return a[prm.w_off + (co * prm.c_in + row) * khw + r];
        }
        default: {
            // dout[s, co = row, p] with k = (s, p)
            let pp = prm.h_out * prm.w_out;
            return a[((k / pp) * prm.c_out + row) * pp + k % pp];
        }
    }
}

fn load_b(mode: u32, k: u32, col: u32) -> f32 {
    let khw = prm.kh * prm.kw;
    switch mode {
        case FORWARD: {
            // col = (s, p), k = (ci, ky, kx)
            let pp = prm.h_out * prm.w_out;
            let r = k % khw;
            return im2col(col / pp, k / khw, r / prm.kw, r % prm.kw, col % pp);
        }
        case BACKWARD_INPUT: {
            // dout[s, co, oy, ox] with iy = oy*stride + ky - pad; col = (s, iy, ix), k = (co, ky, kx)
            let q = prm.h_in * prm.w_in;
            let s = col / q;
            let iy = (col % q) / prm.w_in + prm.pad_h;
            let ix = col % prm.w_in + prm.pad_w;
            let co = k / khw;
            let ky = (k % khw) / prm.kw;
            let kx = k % prm.kw;
            if iy < ky || ix < kx {
                return 0.0;
            }
            let ty = iy - ky;
            let tx = ix - kx;
            let oy = ty / prm.stride;
            let ox = tx / prm.stride;
            if ty % prm.stride != 0u || tx % prm.stride != 0u || oy >= prm.h_out || ox >= prm.w_out {
                return 0.0;
            }
            return b[((s * prm.c_out + co) * prm.h_out + oy) * prm.w_out + ox];
        }
        default: {
            // im2col of the input: k = (s, p), col = (ci, ky, kx)
            let pp = prm.h_out * prm.w_out;
            let r = col % khw;
            return im2col(k / pp, col / khw, r / prm.kw, r % prm.kw, k % pp);
        }
    }
}

fn conv_tile(mode: u32, wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let tile_n = wid.x + wid.y * nwg.x;
    if tile_n >= prm.tiles_n {
        return;
    }
    let d = dims(mode);
    let tile_m = wid.z % prm.tiles_m;
    let split = wid.z / prm.tiles_m;
    var k_begin = 0u;
    var k_end = d.z;
    if mode == BACKWARD_WEIGHT {
        k_begin = split * prm.split_len;
        k_end = min(d.z, k_begin + prm.split_len);
    }
    let m0 = tile_m * TM;
    let n0 = tile_n * TN;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<f32, 16>;
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        for (var r = 0u; r < 4u; r++) {
            let e = lid + r * WG;
            // A: along k (contiguous for W and dout); B: along the column (contiguous pixels).
            let mm = e / TK;
            let ka = e % TK;
            var av = 0.0;
            if m0 + mm < d.x && k0 + ka < k_end {
                av = load_a(mode, m0 + mm, k0 + ka);
            }
            a_tile[ka * TM + mm] = av;
            let nn = e % TN;
            let kb = e / TN;
            var bv = 0.0;
            if n0 + nn < d.y && k0 + kb < k_end {
                bv = load_b(mode, k0 + kb, n0 + nn);
            }
            b_tile[kb * TN + nn] = bv;
        }
        workgroupBarrier();
        tile_multiply(tx, ty, &acc);
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + tx + 16u * j;
            if row >= d.x || col >= d.y {
                continue;
            }
            let v = acc[i * 4u + j];
            switch mode {
                case FORWARD: {
                    let pp = prm.h_out * prm.w_out;
                    var y = v;
                    if prm.has_bias == 1u {
                        y += a[prm.b_off + row];
                    }
                    let idx = ((col / pp) * prm.c_out + row) * pp + col % pp;
                    c[prm.c_off + idx] = epilogue(y, prm.act, idx, prm.has_dropout, prm.drop_key, prm.drop_p, prm.drop_scale);
                }
                case BACKWARD_INPUT: {
                    let q = prm.h_in * prm.w_in;
                    c[prm.c_off + ((col / q) * prm.c_in + row) * q + col % q] = v;
                }
                default: {
                    c[prm.c_off + (split * d.x + row) * d.y + col] = v;
                }
            }
        }
    }
}

// out = epilogue(conv(inp, W) + b): a = params, b = inp, c = out.
@compute @workgroup_size(256)
fn conv2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    conv_tile(FORWARD, wid, nwg, lid);
}

// dinp from dout: a = params, b = dout, c = dinp.
@compute @workgroup_size(256)
fn conv2d_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    conv_tile(BACKWARD_INPUT, wid, nwg, lid);
}

// dW (or its split partials) from dout and the input: a = dout, b = inp, c = grads or scratch.
@compute @workgroup_size(256)
fn conv2d_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    conv_tile(BACKWARD_WEIGHT, wid, nwg, lid);
}
