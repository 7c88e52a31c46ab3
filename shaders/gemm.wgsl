// Dense layers as one tiled GEMM (src/cpu/dense.rs): C (M x N) = A (M x K) * B (K x N),
// each operand read through (offset, row stride, column stride), so the three products of a
// dense layer (forward, backward-input, backward-weight) are the same kernel with different
// strides. 64 x 64 output tiles, 256 threads each computing a 4 x 4 block, K in steps of 16
// through workgroup memory. Rows and columns a thread owns are 16 apart, so neighbouring
// threads touch neighbouring addresses in memory and in the tiles.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    c_rs: u32,
    bias_off: u32,
    has_bias: u32,
    act: u32,
    has_dropout: u32,   // dense_forward: dropout after the activation (common.wgsl's epilogue)
    drop_key: u32,
    drop_p: f32,
    drop_scale: f32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;   // also holds the bias (forward)
@group(0) @binding(2) var<storage, read_write> c: array<f32>;



fn gemm_tile(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let tile_n = wid.x + wid.y * nwg.x;
    if tile_n >= prm.tiles_n {
        return;
    }
    let m0 = wid.z * TM;
    let n0 = tile_n * TN;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: Acc;
    for (var k0 = 0u; k0 < prm.k; k0 += TK) {
        for (var r = 0u; r < 4u; r++) {
            let e = lid + r * WG;
            // Walk the operand along whichever axis is contiguous in memory.
            var mm: u32;
            var ka: u32;
            if prm.a_cs == 1u {
                mm = e / TK;
                ka = e % TK;
            } else {
                mm = e % TM;
                ka = e / TM;
            }
            var av = 0.0;
            if m0 + mm < prm.m && k0 + ka < prm.k {
                av = a[prm.a_off + (m0 + mm) * prm.a_rs + (k0 + ka) * prm.a_cs];
            }
            a_tile[tile_index(ka, mm)][mm >> 4u] = av;
            var nn: u32;
            var kb: u32;
            if prm.b_rs == 1u {
                nn = e / TK;
                kb = e % TK;
            } else {
                nn = e % TN;
                kb = e / TN;
            }
            var bv = 0.0;
            if n0 + nn < prm.n && k0 + kb < prm.k {
                bv = b[prm.b_off + (k0 + kb) * prm.b_rs + (n0 + nn) * prm.b_cs];
            }
            b_tile[tile_index(kb, nn)][nn >> 4u] = bv;
        }
        workgroupBarrier();
        tile_multiply(tx, ty, &acc);
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + ty + 16u * i;
        let accs = acc_row(acc, i);
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + tx + 16u * j;
            if row < prm.m && col < prm.n {
                var v = accs[j];
                if prm.has_bias == 1u {
                    v += b[prm.bias_off + col];
                }
                let idx = row * prm.c_rs + col;
                c[prm.c_off + idx] = epilogue(v, prm.act, idx, prm.has_dropout, prm.drop_key, prm.drop_p, prm.drop_scale);
            }
        }
    }
}

// Skinny products (few rows or columns, long K: a dense layer at batch 1..16) waste most of
// a 64 x 64 tile; here one 64-thread workgroup computes one output, striding over K and
// adding the strided partial sums in a fixed tree. Same operands and epilogue as gemm_tile.
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn gemm_skinny(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let o = wid.x + wid.y * nwg.x;
    if o >= prm.m * prm.n {
        return;
    }
    let row = o / prm.n;
    let col = o % prm.n;
    var s = 0.0;
    for (var k = lid; k < prm.k; k += 64u) {
        s = fma(a[prm.a_off + row * prm.a_rs + k * prm.a_cs], b[prm.b_off + k * prm.b_rs + col * prm.b_cs], s);
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
        var v = red[0];
        if prm.has_bias == 1u {
            v += b[prm.bias_off + col];
        }
        let idx = row * prm.c_rs + col;
        c[prm.c_off + idx] = epilogue(v, prm.act, idx, prm.has_dropout, prm.drop_key, prm.drop_p, prm.drop_scale);
    }
}

// out (n, n_out) = epilogue(inp (n, n_in) * W^T + b): a = inp, b = params.
@compute @workgroup_size(256)
fn dense_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    gemm_tile(wid, nwg, lid);
}

// dinp (n, n_in) = dout (n, n_out) * W: a = dout, b = params.
@compute @workgroup_size(256)
fn dense_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    gemm_tile(wid, nwg, lid);
}

// dW (n_out, n_in) = dout^T * inp: a = dout, b = inp, c = grads.
@compute @workgroup_size(256)
fn dense_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    gemm_tile(wid, nwg, lid);
}
