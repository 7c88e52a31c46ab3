// The register-blocked inner product shared by the tiled GEMM kernels (gemm.wgsl,
// conv2d.wgsl): a 64 x 64 output tile per 256-thread workgroup, K in steps of 16 through
// workgroup memory, each thread a 4 x 4 block of rows ty + 16 i and columns tx + 16 j (16
// apart, so neighbouring threads touch neighbouring addresses). The loader puts this file
// after common.wgsl in front of those two families. (examples/shader_checks.rs counts what
// wgpu's runtime checks add here.)

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// The tiles hold, for each k, a thread's four rows (or columns) side by side: element (k, m)
// of the A tile is component m / 16 of a_tile[k * 16 + m % 16], so the four values a thread
// multiplies (rows ty, ty + 16, ty + 32, ty + 48) are one vec4 load. Store one with
// `tile_put`.
var<workgroup> a_tile: array<vec4<f32>, 256>;   // [TK][16] x 4 rows
var<workgroup> b_tile: array<vec4<f32>, 256>;   // [TK][16] x 4 columns

// Where element (k, i) (i < 64) of a tile is: component i / 16 of this entry.
fn tile_index(k: u32, i: u32) -> u32 {
    return (k * 16u + (i & 15u)) & 255u;
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

// One k of the product. The `& 255u` keeps each index visibly inside the tile, so the
// clamp wgpu's bounds checks put around it (min(i, 255)) folds away in the driver's
// compiler; the constant k makes every address a fixed offset.
fn tile_step(k: u32, tx: u32, ty: u32, c: ptr<function, Acc>) {
    let av = a_tile[(k * 16u + ty) & 255u];
    let bv = b_tile[(k * 16u + tx) & 255u];
    (*c).r0 = fma(vec4(av.x), bv, (*c).r0);
    (*c).r1 = fma(vec4(av.y), bv, (*c).r1);
    (*c).r2 = fma(vec4(av.z), bv, (*c).r2);
    (*c).r3 = fma(vec4(av.w), bv, (*c).r3);
}

// acc += a_tile (rows of this thread) x b_tile (columns of this thread), over TK = 16, written
// out step by step: no loop, so wgpu's loop bounding (a 64-bit counter on every loop, which
// also keeps a compiler from unrolling it) has nothing to bound here.
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
