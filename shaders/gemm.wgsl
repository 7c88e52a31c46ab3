// Dense layers as one tiled GEMM (src/cpu/dense.rs): C (M x N) = A (M x K) * B (K x N),
// each operand read through (offset, row stride, column stride), so the three products of a
// dense layer (forward, backward-input, backward-weight) are the same kernel with different
// strides. Batched: `batches` such products (a grouped layer's groups) in one dispatch, batch
// z's operands `z * a_bs`, `z * b_bs`, `z * c_bs` (and its bias `z * bias_bs`) further on;
// the grid's z runs over (batch, row tile). TM x TN output tiles (64 x 64 by default; the
// shape is tile.wgsl's), TILE_WG threads each computing a 4 x 4 block, K in steps of 16
// through workgroup memory. Rows and columns a thread owns are TY and TX apart, so
// neighbouring threads touch neighbouring addresses in memory and in the tiles.

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
    tiles_m: u32,
    batches: u32,
    a_bs: u32,
    b_bs: u32,
    c_bs: u32,
    bias_bs: u32,
    has_dropout: u32,   // dense_forward: dropout after the activation (members.wgsl's epilogue)
    drop_members: u32,
    drop_len: u32,
    drop_stream: u32,
    drop_step: u32,
    drop_at: u32,
}

@group(1) @binding(0) var<uniform> prm: Params;
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;   // also holds the bias (forward)
@group(0) @binding(2) var<storage, read_write> c: array<f32>;



// C[row, col] of batch `batch` = epilogue(v + bias): element `idx` of the output buffer
// (from c_off), which places dropout's draws.
fn store(batch: u32, row: u32, col: u32, v: f32) {
    var y = v;
    if prm.has_bias == 1u {
        y += b[prm.bias_off + batch * prm.bias_bs + col];
    }
    let idx = batch * prm.c_bs + row * prm.c_rs + col;
    c[prm.c_off + idx] = epilogue(y, prm.act, idx, prm.has_dropout, prm.drop_members, prm.drop_len, prm.drop_stream, prm.drop_step, prm.drop_at);
}

fn gemm_tile(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let tile_n = wid.x + wid.y * nwg.x;
    if tile_n >= prm.tiles_n {
        return;
    }
    let batch = wid.z / prm.tiles_m;
    let m0 = (wid.z % prm.tiles_m) * TM;
    let n0 = tile_n * TN;
    let tx = lid % TX;
    let ty = lid / TX;
    let a_off = prm.a_off + batch * prm.a_bs;
    let b_off = prm.b_off + batch * prm.b_bs;
    var acc: Acc;
    for (var k0 = 0u; k0 < prm.k; k0 += TK) {
        // Walk each operand along whichever axis is contiguous in memory.
        for (var r = 0u; r < A_LOADS; r++) {
            let e = lid + r * TILE_WG;
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
                av = a[a_off + (m0 + mm) * prm.a_rs + (k0 + ka) * prm.a_cs];
            }
            a_put(ka, mm, av);
        }
        for (var r = 0u; r < B_LOADS; r++) {
            let e = lid + r * TILE_WG;
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
                bv = b[b_off + (k0 + kb) * prm.b_rs + (n0 + nn) * prm.b_cs];
            }
            b_put(kb, nn, bv);
        }
        workgroupBarrier();
        tile_multiply(tx, ty, &acc);
        // The tiles are refilled only if there is another K step (uniform: the same for
        // the whole workgroup): a barrier fewer per workgroup, which CPU adapters feel.
        if k0 + TK < prm.k {
            workgroupBarrier();
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + ty + TY * i;
        let accs = acc_row(acc, i);
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + tx + TX * j;
            if row < prm.m && col < prm.n {
                store(batch, row, col, accs[j]);
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
    if o >= prm.m * prm.n * prm.batches {
        return;
    }
    let batch = o / (prm.m * prm.n);
    let row = (o / prm.n) % prm.m;
    let col = o % prm.n;
    let a_off = prm.a_off + batch * prm.a_bs;
    let b_off = prm.b_off + batch * prm.b_bs;
    var s = 0.0;
    for (var k = lid; k < prm.k; k += 64u) {
        s = fma(a[a_off + row * prm.a_rs + k * prm.a_cs], b[b_off + k * prm.b_rs + col * prm.b_cs], s);
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
        store(batch, row, col, red[0]);
    }
}

// out (n, n_out) = epilogue(inp (n, n_in) * W^T + b): a = inp, b = params.
@compute @workgroup_size(TILE_WG)
fn dense_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    gemm_tile(wid, nwg, lid);
}

// dinp (n, n_in) = dout (n, n_out) * W: a = dout, b = params.
@compute @workgroup_size(TILE_WG)
fn dense_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    gemm_tile(wid, nwg, lid);
}

// dW (n_out, n_in) = dout^T * inp: a = dout, b = inp, c = grads.
@compute @workgroup_size(TILE_WG)
fn dense_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    gemm_tile(wid, nwg, lid);
}
