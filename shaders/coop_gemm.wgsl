// The dense-layer GEMM on cooperative matrices (tensor cores): C (M x N, f32) = A (M x K) *
// B (K x N), the operands read through (offset, row stride, column stride) exactly as in
// gemm.wgsl, whose Params, batches and epilogue (bias, activation, dropout) this kernel
// shares, so `--precision mixed` routes the three dense products here unchanged.
//
// Not a family of its own: src/gpu/coop.rs puts a generated head in front of common.wgsl and
// this file, naming the adapter's configuration:
//   enable f16; enable wgpu_cooperative_matrix;   (f16 only for f16 operands)
//   CS   the edge of the square cooperative matrices (8 or 16; M = N = K)
//   CWG  invocations per workgroup = the adapter's (fixed) subgroup size: a workgroup is
//        exactly one subgroup, so the workgroup-uniform control flow naga demands around
//        every coop op is also the subgroup-uniform flow the hardware needs, whatever the
//        subgroup size, and no subgroup builtins are needed
//   AB   the operand scalar (f16, or f32 for f32 configurations)
//   MatA, MatB, MatC  the three matrix types (roles A, B, C; C always f32)
//
// One workgroup computes a CT x CT output tile (CT = 2 CS) as 2 x 2 accumulators, K in steps
// of CT. Each step stages the A (CT x CT) and B (CT x CT) tiles in workgroup memory,
// converted to AB and zero-padded past M, N and K, so sizes need not be multiples of
// anything and the coop loads never read outside the tiles. The accumulators go through a
// workgroup f32 tile at the end so the store to c is guarded and gets the epilogue.
//
// Layouts: every tile is row-major with row stride CT, read with coopLoadT (naga: `T` =
// row-major, SPIR-V CooperativeMatrixLayout RowMajorKHR: element (r, c) at p[r * stride + c]).
// Vulkan wants each coop load/store pointer and stride aligned to min(16 bytes, one row)
// (VUID-RuntimeSpirv-OpCooperativeMatrixLoadKHR-08986): every offset used below is a
// multiple of CS elements (16 or 32 bytes for f16, 32 or 64 for f32), each tile's size is a
// multiple of 16 bytes, and these are the module's only workgroup variables, so the bases
// are 16-byte aligned however the driver packs them from an aligned start.

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
    has_dropout: u32,
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

const CT: u32 = 2u * CS;

var<workgroup> a_tile: array<AB, CT * CT>;    // [CT rows of A][CT k]
var<workgroup> b_tile: array<AB, CT * CT>;    // [CT k][CT columns of B]
var<workgroup> c_tile: array<f32, CT * CT>;   // [CT rows][CT columns]: zeros, then the sums

@compute @workgroup_size(CWG)
fn coop_gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    // Workgroup-uniform: every invocation returns or none does.
    let tile_n = wid.x + wid.y * nwg.x;
    if tile_n >= prm.tiles_n {
        return;
    }
    let batch = wid.z / prm.tiles_m;
    let m0 = (wid.z % prm.tiles_m) * CT;
    let n0 = tile_n * CT;
    let a_off = prm.a_off + batch * prm.a_bs;
    let b_off = prm.b_off + batch * prm.b_bs;

    for (var e = lid; e < CT * CT; e += CWG) {
        c_tile[e] = 0.0;
    }
    workgroupBarrier();
    var acc00 = coopLoadT<MatC>(&c_tile[0], CT);
    var acc01 = coopLoadT<MatC>(&c_tile[CS], CT);
    var acc10 = coopLoadT<MatC>(&c_tile[CS * CT], CT);
    var acc11 = coopLoadT<MatC>(&c_tile[CS * CT + CS], CT);

    for (var k0 = 0u; k0 < prm.k; k0 += CT) {
        for (var e = lid; e < CT * CT; e += CWG) {
            // Walk each operand along whichever axis is contiguous in memory.
            let a_along_k = prm.a_cs == 1u;
            let r = select(e % CT, e / CT, a_along_k);
            let ka = select(e / CT, e % CT, a_along_k);
            var av = 0.0;
            if m0 + r < prm.m && k0 + ka < prm.k {
                av = a[a_off + (m0 + r) * prm.a_rs + (k0 + ka) * prm.a_cs];
            }
            a_tile[r * CT + ka] = AB(av);
            let b_along_k = prm.b_rs == 1u;
            let col = select(e % CT, e / CT, b_along_k);
            let kb = select(e / CT, e % CT, b_along_k);
            var bv = 0.0;
            if n0 + col < prm.n && k0 + kb < prm.k {
                bv = b[b_off + (k0 + kb) * prm.b_rs + (n0 + col) * prm.b_cs];
            }
            b_tile[kb * CT + col] = AB(bv);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < CT; kk += CS) {
            let a0 = coopLoadT<MatA>(&a_tile[kk], CT);
            let a1 = coopLoadT<MatA>(&a_tile[CS * CT + kk], CT);
            let b0 = coopLoadT<MatB>(&b_tile[kk * CT], CT);
            let b1 = coopLoadT<MatB>(&b_tile[kk * CT + CS], CT);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
        }
        // The next step's staging overwrites the tiles these loads read.
        workgroupBarrier();
    }

    coopStoreT(acc00, &c_tile[0], CT);
    coopStoreT(acc01, &c_tile[CS], CT);
    coopStoreT(acc10, &c_tile[CS * CT], CT);
    coopStoreT(acc11, &c_tile[CS * CT + CS], CT);
    workgroupBarrier();
    for (var e = lid; e < CT * CT; e += CWG) {
        let row = m0 + e / CT;
        let col = n0 + e % CT;
        if row < prm.m && col < prm.n {
            var v = c_tile[e];
            if prm.has_bias == 1u {
                v += b[prm.bias_off + batch * prm.bias_bs + col];
            }
            let idx = batch * prm.c_bs + row * prm.c_rs + col;
            c[prm.c_off + idx] = epilogue(v, prm.act, idx, prm.has_dropout, prm.drop_members, prm.drop_len, prm.drop_stream, prm.drop_step, prm.drop_at);
        }
    }
}
