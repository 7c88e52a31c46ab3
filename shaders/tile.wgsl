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

// acc += a_tile (rows of this thread) x b_tile (columns of this thread), over TK.
fn tile_multiply(tx: u32, ty: u32, acc: ptr<function, array<f32, 16>>) {
    for (var kk = 0u; kk < TK; kk++) {
        var av: array<f32, 4>;
        var bv: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) {
            av[i] = a_tile[kk * TM + ty + 16u * i];
            bv[i] = b_tile[kk * TN + tx + 16u * i];
        }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) {
                (*acc)[i * 4u + j] = fma(av[i], bv[j], (*acc)[i * 4u + j]);
            }
        }
    }
}
