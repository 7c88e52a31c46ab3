// The register-blocked inner product shared by the tiled GEMM kernels (gemm.wgsl,
// conv2d.wgsl): a TM x TN output tile per workgroup of TILE_WG = TY x TX threads, K in steps
// of 16 through workgroup memory, each thread a 4 x 4 block of rows ty + TY i and columns
// tx + TX j (TY and TX apart, so neighbouring threads touch neighbouring addresses). The
// loader (src/gpu/shaders.rs) puts this file after common.wgsl in front of those two
// families, preceded by the two consts that pick the shape, `const TY: u32 = 16u;` and
// `const TX: u32 = 16u;` for the default 64 x 64 (the others: gpu::variants::Tile). TY and
// TX are powers of two from 4 to 16. (examples/shader_checks.rs counts what wgpu's runtime
// checks add here.)

const TM: u32 = 4u * TY;
const TN: u32 = 4u * TX;
const TK: u32 = 16u;
const TILE_WG: u32 = TY * TX;
// Elements of the A tile (TM x TK) and of the B tile (TK x TN) each thread loads per K step:
// 4 and 4 at 64 x 64, 4 and 16 at 16 x 64.
const A_LOADS: u32 = TM * TK / TILE_WG;
const B_LOADS: u32 = TN * TK / TILE_WG;
const A_LEN: u32 = TK * TY;
const B_LEN: u32 = TK * TX;

// The tiles hold, for each k, a thread's four rows (or columns) side by side: element (k, m)
// of the A tile is component m / TY of a_tile[k * TY + m % TY], so the four values a thread
// multiplies (rows ty, ty + TY, ty + 2 TY, ty + 3 TY) are one vec4 load; likewise B with TX.
// Store with `a_put` and `b_put`.
var<workgroup> a_tile: array<vec4<f32>, A_LEN>;   // [TK][TY] x 4 rows
var<workgroup> b_tile: array<vec4<f32>, B_LEN>;   // [TK][TX] x 4 columns

// Element (k, m) (m < TM) of the A tile; element (k, n) (n < TN) of the B tile.
fn a_put(k: u32, m: u32, v: f32) {
    a_tile[(k * TY + m % TY) & (A_LEN - 1u)][m / TY] = v;
}

fn b_put(k: u32, n: u32, v: f32) {
    b_tile[(k * TX + n % TX) & (B_LEN - 1u)][n / TX] = v;
}

// A thread's 4 x 4 accumulators: row i of its block is r<i>, column j its component j.
// Named vectors, not an array: nothing is indexed at run time, so the whole block stays in
// registers whatever the shader compiler unrolls.
struct Acc {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// One k of the product. The masks keep each index visibly inside the tile (the lengths are
// powers of two), so the clamp wgpu's bounds checks put around it folds away in the driver's
// compiler; the constant k makes every address a fixed offset.
fn tile_step(k: u32, tx: u32, ty: u32, c: ptr<function, Acc>) {
    let av = a_tile[(k * TY + ty) & (A_LEN - 1u)];
    let bv = b_tile[(k * TX + tx) & (B_LEN - 1u)];
    (*c).r0 = fma(vec4(av.x), bv, (*c).r0);
    (*c).r1 = fma(vec4(av.y), bv, (*c).r1);
    (*c).r2 = fma(vec4(av.z), bv, (*c).r2);
    (*c).r3 = fma(vec4(av.w), bv, (*c).r3);
}

// acc += a_tile (rows of this thread) x b_tile (columns of this thread), over TK = 16, written
// out step by step: no loop, so wgpu's loop bounding (a 64-bit counter on every loop, which
// also keeps a compiler from unrolling it) has nothing to bound here. Every output adds its
// 16 terms in k order whatever the tile shape: shapes differ in who computes an output, not
// in how.
fn tile_multiply(tx: u32, ty: u32, acc: ptr<function, Acc>) {
    var c = *acc;
    tile_step(0u, tx, ty, &c);
    tile_step(1u, tx, ty, &c);
    tile_step(2u, tx, ty, &c);
    tile_step(3u, tx, ty, &c);
    tile_step(4u, tx, ty, &c);
    tile_step(5u, tx, ty, &c);
    tile_step(6u, tx, ty, &c);
    tile_step(7u, tx, ty, &c);
    tile_step(8u, tx, ty, &c);
    tile_step(9u, tx, ty, &c);
    tile_step(10u, tx, ty, &c);
    tile_step(11u, tx, ty, &c);
    tile_step(12u, tx, ty, &c);
    tile_step(13u, tx, ty, &c);
    tile_step(14u, tx, ty, &c);
    tile_step(15u, tx, ty, &c);
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
