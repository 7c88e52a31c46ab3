//! Every WGSL source in one place, and every kernel (entry point) with its bindings.
//!
//! A kernel's module is `shaders/common.wgsl` (and `tile.wgsl` for the GEMM families, after
//! the consts that pick its tile shape) followed by its family's file. The binding
//! lists here are the pipelines' explicit layouts; `tests/shaders_naga.rs` checks each against
//! the globals its entry point uses (and each family's `Params` against its Rust twin in
//! `gpu::kernels`), and compiles every module for every backend.

/// The helpers every module starts with.
pub const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// The tiled inner product, put after COMMON in the families that use it.
pub const TILE: &str = include_str!("../../shaders/tile.wgsl");
const TILED: &[&str] = &["conv2d", "gemm"];

/// The tile shape of tile.wgsl: TY x TX threads, each a 4 x 4 block of outputs (powers of
/// two from 4 to 16). `gpu::variants::Tile` names the ones built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileShape {
    pub ty: u32,
    pub tx: u32,
}

/// The 64 x 64 tile every GEMM kernel ran before there were variants (`module_source`).
pub const DEFAULT_TILE: TileShape = TileShape { ty: 16, tx: 16 };

impl TileShape {
    /// The consts that pick this shape, put in front of tile.wgsl.
    fn consts(self) -> String {
        format!("const TY: u32 = {}u;\nconst TX: u32 = {}u;\n", self.ty, self.tx)
    }
}

/// Whether a family's kernels are built per tile shape.
pub fn is_tiled(family: &str) -> bool {
    TILED.contains(&family)
}

/// The member table (binding 7) and what reads it, put after COMMON in the families whose
/// kernels take per-member values: dropout masks and rates, learning rates.
pub const MEMBERS: &str = include_str!("../../shaders/members.wgsl");
const WITH_MEMBERS: &[&str] = &["activation", "batchnorm", "conv2d", "dropout", "gemm", "loss", "optim"];

/// The binding of the member table in the families that have it.
pub const MEMBER_TABLE: u32 = 7;

/// (family, source) of each op family's file.
pub const FAMILIES: &[(&str, &str)] = &[
    ("activation", include_str!("../../shaders/activation.wgsl")),
    ("batchnorm", include_str!("../../shaders/batchnorm.wgsl")),
    ("conv2d", include_str!("../../shaders/conv2d.wgsl")),
    ("data", include_str!("../../shaders/data.wgsl")),
    ("dropout", include_str!("../../shaders/dropout.wgsl")),
    ("gemm", include_str!("../../shaders/gemm.wgsl")),
    ("loss", include_str!("../../shaders/loss.wgsl")),
    ("optim", include_str!("../../shaders/optim.wgsl")),
    ("pool", include_str!("../../shaders/pool.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("residual", include_str!("../../shaders/residual.wgsl")),
];

/// How a kernel uses a storage binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

use Access::{Read as R, ReadWrite as W};

/// One entry point: its family file and its group-0 storage bindings (binding, access).
#[derive(Debug)]
pub struct Kernel {
    pub entry: &'static str,
    pub family: &'static str,
    pub bindings: &'static [(u32, Access)],
}

const fn k(entry: &'static str, family: &'static str, bindings: &'static [(u32, Access)]) -> Kernel {
    Kernel { entry, family, bindings }
}

pub const KERNELS: &[Kernel] = &[
    k("activation_forward", "activation", &[(0, R), (2, W)]),
    k("activation_backward", "activation", &[(0, R), (1, R), (2, W), (7, R)]),
    k("batchnorm_stats", "batchnorm", &[(0, R), (2, W), (3, W)]),
    k("batchnorm_forward", "batchnorm", &[(0, R), (1, R), (2, W), (3, W), (4, W), (7, R)]),
    k("batchnorm_backward_reduce", "batchnorm", &[(0, R), (1, R), (2, W), (3, W), (5, R), (6, R), (7, R)]),
    k("batchnorm_backward", "batchnorm", &[(0, R), (1, R), (2, W), (3, W), (4, W), (5, R), (6, R), (7, R)]),
    k("conv2d_forward", "conv2d", &[(0, R), (1, R), (2, W), (7, R)]),
    k("conv2d_backward_input", "conv2d", &[(0, R), (1, R), (2, W), (7, R)]),
    k("conv2d_backward_weight", "conv2d", &[(0, R), (1, R), (2, W), (7, R)]),
    k("gather_batch", "data", &[(0, R), (1, R), (2, R), (3, W), (4, W)]),
    k("dropout_forward", "dropout", &[(0, R), (1, W), (7, R)]),
    k("dropout_backward", "dropout", &[(0, R), (1, W), (7, R)]),
    k("dense_forward", "gemm", &[(0, R), (1, R), (2, W), (7, R)]),
    k("dense_backward_input", "gemm", &[(0, R), (1, R), (2, W), (7, R)]),
    k("dense_backward_weight", "gemm", &[(0, R), (1, R), (2, W), (7, R)]),
    k("gemm_skinny", "gemm", &[(0, R), (1, R), (2, W), (7, R)]),
    k("softmax_xent_forward_backward", "loss", &[(0, R), (1, R), (2, W), (3, W), (7, R)]),
    k("softmax_xent_forward", "loss", &[(0, R), (1, R), (2, W), (3, W)]),
    k("mse_forward_backward", "loss", &[(0, R), (1, R), (2, W), (3, W)]),
    k("mse_forward", "loss", &[(0, R), (1, R), (2, W), (3, W)]),
    k("softmax_xent_rows_forward_backward", "loss", &[(0, R), (1, R), (2, W), (4, W), (7, R)]),
    k("softmax_xent_rows_forward", "loss", &[(0, R), (1, R), (2, W), (4, W)]),
    k("mse_rows_forward_backward", "loss", &[(0, R), (1, R), (2, W), (4, W)]),
    k("mse_rows_forward", "loss", &[(0, R), (1, R), (2, W), (4, W)]),
    k("loss_rows_sum", "loss", &[(3, W), (4, W)]),
    k("adam_step", "optim", &[(0, R), (1, W), (2, W), (3, W), (7, R)]),
    k("sgd_step", "optim", &[(0, R), (1, W), (2, W), (7, R)]),
    k("ema_update", "optim", &[(0, R), (2, W), (7, R)]),
    k("maxpool_forward", "pool", &[(0, R), (1, W), (2, W)]),
    k("maxpool_backward", "pool", &[(0, R), (1, W), (2, W)]),
    k("avgpool_forward", "pool", &[(0, R), (2, W)]),
    k("avgpool_backward", "pool", &[(0, R), (2, W)]),
    k("bias_backward", "reduce", &[(0, R), (2, W)]),
    k("sum_partials", "reduce", &[(0, R), (2, W)]),
    k("residual_add", "residual", &[(0, R), (1, R), (2, W)]),
];

/// The complete module source of a family: common helpers (and, for the GEMM families, the
/// default tile; for the families with per-member values, the member table), then the
/// family's file.
pub fn module_source(family: &str) -> Option<String> {
    module_source_tiled(family, DEFAULT_TILE)
}

/// module_source with the GEMM families' tile in `shape` (other families ignore it).
pub fn module_source_tiled(family: &str, shape: TileShape) -> Option<String> {
    compose(family, shape, |_, builtin| builtin.to_string())
}

/// common, members and tile (where the family has them, the tile after the consts of
/// `shape`) and the family's file, each as `file(name, built-in)` gives it.
fn compose(family: &str, shape: TileShape, file: impl Fn(&str, &str) -> String) -> Option<String> {
    let (_, src) = FAMILIES.iter().find(|(f, _)| *f == family)?;
    let tile = if is_tiled(family) { format!("{}{}", shape.consts(), file("tile", TILE)) } else { String::new() };
    let members = if WITH_MEMBERS.contains(&family) { file("members", MEMBERS) } else { String::new() };
    Some(format!("{}\n{members}\n{tile}\n{}", file("common", COMMON), file(family, src)))
}

/// For kernel work: with `GPU_TRAIN_SHADER_DIR` set, the GPU backend reads each file from
/// that directory where it has one (`common.wgsl`, `tile.wgsl`, `<family>.wgsl`) instead of
/// the built-in copy, so a shader can be edited and measured without rebuilding.
pub fn module_source_from_env(family: &str, shape: TileShape) -> Option<String> {
    match std::env::var_os("GPU_TRAIN_SHADER_DIR") {
        Some(dir) => module_source_overridden_tiled(family, shape, std::path::Path::new(&dir)),
        None => module_source_tiled(family, shape),
    }
}

/// module_source, with each file that `dir` holds in place of the built-in one.
pub fn module_source_overridden(family: &str, dir: &std::path::Path) -> Option<String> {
    module_source_overridden_tiled(family, DEFAULT_TILE, dir)
}

fn module_source_overridden_tiled(family: &str, shape: TileShape, dir: &std::path::Path) -> Option<String> {
    compose(family, shape, |name, builtin| {
        std::fs::read_to_string(dir.join(format!("{name}.wgsl"))).unwrap_or_else(|_| builtin.to_string())
    })
}

pub fn kernel(entry: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.entry == entry)
}
