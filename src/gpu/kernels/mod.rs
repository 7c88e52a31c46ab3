//! The GPU launchers, one module per kernel family (`shaders/<family>.wgsl`): the family's
//! parameter block (its Rust twin of the WGSL `Params` struct) and one launcher per op, named
//! like the op, its WGSL entry point and its CPU twin. A launcher fills the parameter block,
//! computes the grid and records the dispatch; `impl Backend for GpuBackend` (`../ops.rs`)
//! only calls them. The binding rows stay in `shaders::KERNELS`, the one list that pipelines
//! are built from.
//!
//! `PARAMS` lists every family's parameter block with its WGSL struct; `tests/shaders_naga.rs`
//! checks each field by field against the shader, and each kernel's binding rows against the
//! globals its entry point uses.

#[macro_use]
pub mod layout;

pub(super) mod activation;
pub(super) mod batchnorm;
pub(super) mod conv2d;
pub(super) mod data;
pub(super) mod dropout;
pub(super) mod gemm;
pub(super) mod loss;
pub(super) mod optim;
pub(super) mod pool;
pub(super) mod reduce;
pub(super) mod residual;

use crate::backend::Dropout;
use crate::model::Act;
use layout::ParamsLayout;

/// A family's uniform block: the WGSL struct bound at `@group(1) @binding(0)` in
/// `shaders/<family>.wgsl`, and the Rust struct its launchers fill.
#[derive(Debug, Clone, Copy)]
pub struct FamilyParams {
    pub family: &'static str,
    pub wgsl: &'static str,
    pub rust: ParamsLayout,
}

const fn family(family: &'static str, wgsl: &'static str, rust: ParamsLayout) -> FamilyParams {
    FamilyParams { family, wgsl, rust }
}

/// Every family's parameter block (one each: the ops of a family share it).
pub const PARAMS: &[FamilyParams] = &[
    family("activation", "Params", activation::ActParams::LAYOUT),
    family("batchnorm", "Params", batchnorm::BnParams::LAYOUT),
    family("conv2d", "Params", conv2d::ConvParams::LAYOUT),
    family("data", "Params", data::DataParams::LAYOUT),
    family("dropout", "Params", dropout::DropoutParams::LAYOUT),
    family("gemm", "Params", gemm::GemmParams::LAYOUT),
    family("loss", "Params", loss::LossParams::LAYOUT),
    family("optim", "Params", optim::OptimParams::LAYOUT),
    family("pool", "Params", pool::PoolParams::LAYOUT),
    family("reduce", "Params", reduce::ReduceParams::LAYOUT),
    family("residual", "Params", residual::ResidualParams::LAYOUT),
];

/// The shaders' activation code (0: none) of an epilogue's activation (`Act::fuses`).
fn act_code(act: Option<Act>) -> u32 {
    act.map_or(0, |a| a.code())
}

/// An epilogue's dropout as the shaders take it (members.wgsl): has_dropout, members,
/// per-member length, stream, step, table offset.
#[derive(Debug, Clone, Copy, Default)]
struct DropFields {
    has: u32,
    members: u32,
    len: u32,
    stream: u32,
    step: u32,
    at: u32,
}

fn dropout_fields(d: Option<&Dropout>) -> DropFields {
    d.map_or(DropFields { members: 1, len: 1, ..Default::default() }, |d| DropFields {
        has: 1,
        members: d.members as u32,
        len: d.len as u32,
        stream: d.stream,
        step: d.step,
        at: d.at as u32,
    })
}
