// The register-blocked inner product shared by the tiled GEMM kernels (gemm.wgsl,
// conv2d.wgsl): a 64 x 64 output tile per 256-thread workgroup, K in steps of 16 through
// workgroup memory, each thread a 4 x 4 block of rows ty + 16 i and columns tx + 16 j (16
// apart, so neighbouring threads touch neighbouring addresses). The loader puts this file
// after common.wgsl in front of those two families.

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>;   // [TK][TM]
var<workgroup> b_tile: array<f32, 1024>;   // [TK][TN]

// A thread's 4 x 4 accumulators: row i of its block is r<i>, column j its component j.
// Named vectors, not an array: nothing is indexed at run time, so the whole block stays in
// registers whatever the shader compiler unrolls.
struct Acc {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// acc += a_tile (rows of this thread) x b_tile (columns of this thread), over TK.
fn tile_multiply(tx: u32, ty: u32, acc: ptr<function, Acc>) {
    var c = *acc;
    for (var kk = 0u; kk < TK; kk++) {
        let ao = kk * TM + ty;
        let bo = kk * TN + tx;
        let bv = vec4(b_tile[bo], b_tile[bo + 16u], b_tile[bo + 32u], b_tile[bo + 48u]);
        c.r0 = fma(vec4(a_tile[ao]), bv, c.r0);
        c.r1 = fma(vec4(a_tile[ao + 16u]), bv, c.r1);
        c.r2 = fma(vec4(a_tile[ao + 32u]), bv, c.r2);
        c.r3 = fma(vec4(a_tile[ao + 48u]), bv, c.r3);
    }
    *acc = c;
}

// Row i of a thread's block (for the epilogues, once per output).
fn acc_row(acc: Acc, i: u32) -> vec4<f32> {
    switch i {
        case 0u: { return acc.r0; }
        case 1u: { return acc.r1; }
        case 2u: { return acc.r2; }
        default: { return acc.r3; }
    }
}
