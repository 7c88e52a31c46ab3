//! Cooperative matrices (tensor cores) for the dense layers' GEMMs: `--precision mixed`.
//!
//! What wgpu 30.0.1 / naga 30.0.1 offer (read in their sources; the WGSL spellings checked by
//! `tests/coop_naga.rs`):
//! - Feature `wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX` (native only), listed in
//!   `Features::all_experimental_mask()`: `request_device` refuses it unless
//!   `DeviceDescriptor::experimental_features` is `unsafe { ExperimentalFeatures::enabled() }`
//!   (wgpu-core `instance.rs`). f16 operands also need `Features::SHADER_F16`.
//! - `Adapter::cooperative_matrix_properties() -> Vec<wgpu::CooperativeMatrixProperties>`,
//!   fields `m_size, n_size, k_size: u32`, `ab_type, cr_type: wgpu::CooperativeScalarType`
//!   (`F32 | F16 | I32 | U32`), `saturating_accumulation: bool`. Vulkan
//!   (`VK_KHR_cooperative_matrix`, wgpu-hal `vulkan/adapter.rs`) lists only subgroup-scope
//!   entries with M, N, K in {8, 16}, A = B and C = result types; the feature itself is
//!   offered when that list is non-empty and the device has `vulkanMemoryModel` with device
//!   scope. The list is filled whether or not the feature is: check both. Metal offers 8x8
//!   simdgroup matrices (MSL 2.3, Apple7+/Mac2).
//! - WGSL (naga `front/wgsl`): `enable wgpu_cooperative_matrix;` (and `enable f16;`); types
//!   `coop_mat8x8<T, R>` and `coop_mat16x16<T, R>` only (square: usable entries have
//!   M = N = K), T = f16 or f32 (the validator allows nothing else), role R = A, B or C.
//!   `coopLoad<coop_matNxN<T, R>>(p, stride)` reads column-major, `coopLoadT` row-major
//!   (SPIR-V `RowMajorKHR`: element (r, c) at p[r * stride + c]); p is a pointer to one
//!   scalar element (`&tile[i]`, storage or workgroup), the stride counts elements, and the
//!   matrix takes its scalar type from p (not from the template). `coopStore(m, p, stride)` /
//!   `coopStoreT`: the scalar types of m and p must match. `coopMultiplyAdd(a, b, c)` returns
//!   c's type, so f16 A and B with an f32 C accumulate in f32. Every coop op must sit in
//!   workgroup-uniform control flow (naga's uniformity analysis: builtins other than
//!   workgroup_id / num_workgroups count as non-uniform).
//! - Backends: SPIR-V (`CooperativeMatrixKHR`, and the module switches to the Vulkan memory
//!   model; only modules that use coop types do, so the f32 kernels compile as before), MSL
//!   2.3+ (simdgroup matrices). HLSL and GLSL do not implement it (`unimplemented!`).
//! - Known gap (gfx-rs/wgpu#8805, open): such a module declares the Vulkan memory model, but
//!   naga 30 still writes plain loads and stores (formally "private") and barriers without
//!   availability/visibility operands, so workgroup memory shared across a barrier, as this
//!   kernel's staging does, is formally unordered there. Drivers behave as under the GLSL450
//!   model (the model formalises what they already do, wgpu#1545); the probe checks this
//!   staging on awkward sizes before `--precision mixed` is trusted on an adapter.
//!
//! Design: one kernel (shaders/coop_gemm.wgsl), specialised per configuration by a generated
//! head; a workgroup is exactly one subgroup (the adapter must report one fixed subgroup size,
//! 32 on NVIDIA), so naga's workgroup-uniform rule and the hardware's subgroup scope agree
//! without subgroup builtins. The feature is requested only for `--precision mixed`: with
//! `f32` the device is opened exactly as before.

#[cfg(not(target_arch = "wasm32"))]
pub mod probe;

use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use wgpu::CooperativeScalarType as Scalar;

use super::shaders::{Access, COMMON, DEFAULT_TILE, Kernel, MEMBERS};
use super::{GpuBackend, GpuBuf};
use crate::error::{Error, Result};

/// The kernel's WGSL body; see its head comment.
pub const SOURCE: &str = include_str!("../../shaders/coop_gemm.wgsl");

/// Its entry point and bindings (the same as gemm.wgsl's kernels).
pub static KERNEL: Kernel = Kernel {
    entry: "coop_gemm",
    family: "coop_gemm",
    bindings: &[(0, Access::Read), (1, Access::Read), (2, Access::ReadWrite), (7, Access::Read)],
};

/// `KERNEL` by entry name (the dispatcher's fallback after `shaders::kernel`).
pub fn kernel(entry: &str) -> Option<&'static Kernel> {
    (entry == KERNEL.entry).then_some(&KERNEL)
}

/// The operand type of a configuration (the accumulator is always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    F16,
    F32,
}

impl Operand {
    pub fn wgsl(self) -> &'static str {
        match self {
            Operand::F16 => "f16",
            Operand::F32 => "f32",
        }
    }
}

/// What the kernel is generated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoopConfig {
    /// Edge of the square matrices: M = N = K = 8 or 16.
    pub size: u32,
    pub operand: Operand,
    /// Invocations per workgroup: the adapter's subgroup size (one subgroup per workgroup).
    pub subgroup: u32,
}

impl CoopConfig {
    /// The path as `bench` reports it, e.g. "coop 16x16x16 f16->f32".
    pub fn describe(&self) -> String {
        let s = self.size;
        format!("coop {s}x{s}x{s} {}->f32", self.operand.wgsl())
    }

    /// Output tile edge of one workgroup (2 x 2 matrices).
    pub fn tile(&self) -> u32 {
        2 * self.size
    }

    /// Device features the kernel needs.
    pub fn features(&self) -> wgpu::Features {
        let f16 = if self.operand == Operand::F16 { wgpu::Features::SHADER_F16 } else { wgpu::Features::empty() };
        wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | f16
    }
}

/// Every configuration `choose` can return, for the naga tests: both sizes and operand
/// types, at the subgroup sizes of NVIDIA (32) and AMD GCN (64).
pub fn all_configs() -> Vec<CoopConfig> {
    let mut v = Vec::new();
    for size in [16, 8] {
        for operand in [Operand::F16, Operand::F32] {
            for subgroup in [32, 64] {
                v.push(CoopConfig { size, operand, subgroup });
            }
        }
    }
    v
}

fn scalar_name(s: Scalar) -> &'static str {
    match s {
        Scalar::F32 => "f32",
        Scalar::F16 => "f16",
        Scalar::I32 => "i32",
        Scalar::U32 => "u32",
    }
}

/// One offered configuration as `devices` and `probe` print it.
pub fn describe_property(p: &wgpu::CooperativeMatrixProperties) -> String {
    format!(
        "{}x{}x{} (M x N x K), A/B {}, C/result {}, subgroup scope{}",
        p.m_size,
        p.n_size,
        p.k_size,
        scalar_name(p.ab_type),
        scalar_name(p.cr_type),
        if p.saturating_accumulation { ", saturating" } else { "" }
    )
}

/// What an adapter offers: whether the feature is there, and its configurations.
pub fn offered(adapter: &wgpu::Adapter) -> (bool, Vec<wgpu::CooperativeMatrixProperties>) {
    let feature = adapter.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
    (feature, adapter.cooperative_matrix_properties())
}

/// The configuration for this adapter, or why there is none (one line). Prefers 16x16x16
/// f16 -> f32 (NVIDIA's and AMD's tensor-core shape), then 8x8x8 f16 -> f32, then f32
/// operands (Metal's 8x8); entries with an f16 accumulator are never taken (the sums stay f32).
pub fn choose(adapter: &wgpu::Adapter) -> std::result::Result<CoopConfig, String> {
    let info = adapter.get_info();
    let (feature, props) = offered(adapter);
    if !feature {
        return Err(format!("{} offers no cooperative matrices", info.name));
    }
    let f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
    let has = |size: u32, ab: Scalar| {
        props.iter().any(|p| {
            p.m_size == size && p.n_size == size && p.k_size == size && p.ab_type == ab && p.cr_type == Scalar::F32
        })
    };
    let pick = [(16, Operand::F16), (8, Operand::F16), (8, Operand::F32), (16, Operand::F32)].into_iter().find(
        |&(size, op)| match op {
            Operand::F16 => f16 && has(size, Scalar::F16),
            Operand::F32 => has(size, Scalar::F32),
        },
    );
    let Some((size, operand)) = pick else {
        return Err(format!(
            "{} offers cooperative matrices, but none square with f32 accumulation{} (offered: {})",
            info.name,
            if f16 { "" } else { " and f32 operands (no SHADER_F16 for f16 ones)" },
            props.iter().map(describe_property).collect::<Vec<_>>().join("; ")
        ));
    };
    if info.subgroup_min_size != info.subgroup_max_size {
        return Err(format!(
            "{} runs subgroups of {} to {} invocations; the cooperative kernel needs one fixed size",
            info.name, info.subgroup_min_size, info.subgroup_max_size
        ));
    }
    Ok(CoopConfig { size, operand, subgroup: info.subgroup_min_size })
}

/// The complete module for a configuration: the generated head, common.wgsl, the kernel.
pub fn shader_source(cfg: &CoopConfig) -> String {
    let (s, ab) = (cfg.size, cfg.operand.wgsl());
    let f16 = if cfg.operand == Operand::F16 { "enable f16;\n" } else { "" };
    format!(
        "{f16}enable wgpu_cooperative_matrix;\n\
         // Generated by src/gpu/coop.rs for {}.\n\
         const CS: u32 = {s}u;\n\
         const CWG: u32 = {}u;\n\
         alias AB = {ab};\n\
         alias MatA = coop_mat{s}x{s}<{ab}, A>;\n\
         alias MatB = coop_mat{s}x{s}<{ab}, B>;\n\
         alias MatC = coop_mat{s}x{s}<f32, C>;\n\n{COMMON}\n{MEMBERS}\n{SOURCE}",
        cfg.describe(),
        cfg.subgroup
    )
}

/// Test support: the kernel with each cooperative op replaced by plain WGSL, so its tiling,
/// padding, strides and epilogue run on any adapter (lavapipe in CI) against the CPU. A
/// matrix value becomes a slot in workgroup memory (A and B: two each, reused every step; C:
/// the four accumulators), shared by the workgroup's invocations, which split each load,
/// product and store between them with a barrier after each, products in f32 from AB
/// operands. What it cannot check is the hardware's own load/store layout, which
/// tests/coop_naga.rs (SPIR-V `RowMajorKHR`) and `gpu-train probe` do.
#[doc(hidden)]
pub fn emulated_source(cfg: &CoopConfig) -> String {
    let (s, ab) = (cfg.size, cfg.operand.wgsl());
    let f16 = if cfg.operand == Operand::F16 { "enable f16;\n" } else { "" };
    // emu_load_<tile>(offset, stride) -> slot: the CS x CS block at tile[offset], row-major.
    let load = |tile: &str, slots: &str, count: &str, n: u32| {
        format!(
            "fn emu_load_{tile}(o: u32, stride: u32) -> u32 {{\n\
             \x20   let slot = {count} % {n}u;\n    {count} += 1u;\n\
             \x20   for (var i = emu_lid; i < CS * CS; i += CWG) {{ {slots}[slot * CS * CS + i] = {tile}[o + i / CS * stride + i % CS]; }}\n\
             \x20   workgroupBarrier();\n    return slot;\n}}\n"
        )
    };
    let head = format!(
        "{f16}// Emulated (src/gpu/coop.rs) for {}.\n\
         const CS: u32 = {s}u;\nconst CWG: u32 = {}u;\nalias AB = {ab};\n\
         alias MatA = u32;\nalias MatB = u32;\nalias MatC = u32;\n\
         var<workgroup> emu_a: array<{ab}, {}>;\nvar<workgroup> emu_b: array<{ab}, {}>;\nvar<workgroup> emu_c: array<f32, {}>;\n\
         var<private> emu_lid: u32;\nvar<private> emu_na: u32;\nvar<private> emu_nb: u32;\nvar<private> emu_nc: u32;\n\
         {}{}{}\
         // c = a * b + c in place (the kernel always assigns the product to c).\n\
         fn emu_mma(a: u32, b: u32, c: u32) -> u32 {{\n\
         \x20   for (var i = emu_lid; i < CS * CS; i += CWG) {{\n\
         \x20       var d = emu_c[c * CS * CS + i];\n\
         \x20       for (var k = 0u; k < CS; k++) {{\n\
         \x20           d = fma(f32(emu_a[a * CS * CS + i / CS * CS + k]), f32(emu_b[b * CS * CS + k * CS + i % CS]), d);\n\
         \x20       }}\n\
         \x20       emu_c[c * CS * CS + i] = d;\n    }}\n    workgroupBarrier();\n    return c;\n}}\n\
         fn emu_store_c_tile(m: u32, o: u32, stride: u32) {{\n\
         \x20   for (var i = emu_lid; i < CS * CS; i += CWG) {{ c_tile[o + i / CS * stride + i % CS] = emu_c[m * CS * CS + i]; }}\n}}\n",
        cfg.describe(),
        cfg.subgroup,
        2 * s * s,
        2 * s * s,
        4 * s * s,
        load("a_tile", "emu_a", "emu_na", 2),
        load("b_tile", "emu_b", "emu_nb", 2),
        load("c_tile", "emu_c", "emu_nc", 4),
    );
    let mut body = SOURCE.replace("coopMultiplyAdd(", "emu_mma(").replace("coopStoreT(", "emu_store_c_tile(").replace(
        "    let tile_n = wid.x + wid.y * nwg.x;",
        "    emu_lid = lid;\n    let tile_n = wid.x + wid.y * nwg.x;",
    );
    for tile in ["a_tile", "b_tile", "c_tile"] {
        for mat in ["MatA", "MatB", "MatC"] {
            body = body.replace(&format!("coopLoadT<{mat}>(&{tile}["), &format!("emu_load_{tile}(("));
        }
        body = body.replace(&format!(", &{tile}["), ", (");
    }
    // `emu_load_x((offset], CT)` -> `emu_load_x((offset), CT)`.
    let body = body.replace("], CT)", "), CT)");
    format!("{head}\n{COMMON}\n{MEMBERS}\n{body}")
}

/// shaders/coop_gemm.wgsl's Params: the same fields, in the same order, as gemm.wgsl's (a
/// naga test compares the two structs member by member), so the dense launchers' parameter
/// block is passed on unchanged.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default, Debug)]
pub struct CoopParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub tiles_n: u32,
    pub a_off: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub b_off: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub c_off: u32,
    pub c_rs: u32,
    pub bias_off: u32,
    pub has_bias: u32,
    pub act: u32,
    pub tiles_m: u32,
    pub batches: u32,
    pub a_bs: u32,
    pub b_bs: u32,
    pub c_bs: u32,
    pub bias_bs: u32,
    pub has_dropout: u32,
    pub drop_members: u32,
    pub drop_len: u32,
    pub drop_stream: u32,
    pub drop_step: u32,
    pub drop_at: u32,
}

impl GpuBackend {
    /// Opens `adapter` for `--precision mixed`: with cooperative matrices (and f16 where the
    /// configuration has f16 operands) and the kernel built; an error naming the adapter
    /// where it offers none.
    pub fn open_mixed(adapter: &wgpu::Adapter) -> Result<Self> {
        let cfg =
            choose(adapter).map_err(|why| Error::Gpu(format!("--precision mixed: {why} (see `gpu-train devices`)")))?;
        let mut g = pollster::block_on(Self::open(adapter, cfg.features()))?;
        g.build_coop(cfg, shader_source(&cfg))?;
        Ok(g)
    }

    /// Test support: the dense GEMMs on `emulated_source` (no cooperative matrices needed;
    /// f16 operands need SHADER_F16).
    #[doc(hidden)]
    pub fn open_emulated(adapter: &wgpu::Adapter, cfg: CoopConfig) -> Result<Self> {
        let f16 = if cfg.operand == Operand::F16 { wgpu::Features::SHADER_F16 } else { wgpu::Features::empty() };
        let mut g = pollster::block_on(Self::open(adapter, f16))?;
        g.build_coop(cfg, emulated_source(&cfg))?;
        Ok(g)
    }

    /// The configuration the dense GEMMs run on, if `--precision mixed`.
    pub fn coop_config(&self) -> Option<CoopConfig> {
        self.coop
    }

    /// The GEMM path as `bench` reports it ("f32 tiled 64x64, 3 op shapes chosen" where
    /// `set_choice` picked variants).
    pub fn gemm_path(&self) -> String {
        match (self.coop, self.choices().len()) {
            (Some(c), _) => c.describe(),
            (None, 0) => "f32 tiled 64x64".to_string(),
            (None, k) => format!("f32 tiled 64x64, {k} op shape{} chosen", if k == 1 { "" } else { "s" }),
        }
    }

    fn build_coop(&mut self, cfg: CoopConfig, source: String) -> Result<()> {
        let t = Instant::now();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(KERNEL.entry),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let entries = super::storage_layout(KERNEL.bindings);
        let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(KERNEL.entry),
            entries: &entries,
        });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(KERNEL.entry),
            bind_group_layouts: &[Some(&layout), Some(&self.params_layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(KERNEL.entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(KERNEL.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("the cooperative-matrix kernel ({}) does not build: {e}", cfg.describe())));
        }
        self.layouts.insert(KERNEL.entry, layout);
        self.pipelines.insert((KERNEL.entry, DEFAULT_TILE), pipeline);
        self.coop = Some(cfg);
        self.compile_seconds += t.elapsed().as_secs_f64();
        self.check_errors()
    }

    /// Records one product on the cooperative kernel: `prm` is gemm.wgsl's parameter block
    /// (`CoopParams` or the dense launchers' twin of it); `tiles_n` is set here. Does nothing
    /// without `--precision mixed` but note an error.
    pub(super) fn coop_dispatch<P: Pod>(&mut self, bufs: [&GpuBuf; 4], m: u32, n: u32, batches: u32, prm: &P) {
        let Some(cfg) = self.coop else {
            self.fail("the cooperative-matrix kernel was not built (not --precision mixed)".into());
            return;
        };
        let tiles_n = n.div_ceil(cfg.tile());
        let mut block = [0u8; std::mem::size_of::<CoopParams>()];
        let bytes = bytemuck::bytes_of(prm);
        if bytes.len() != block.len() {
            self.fail(format!("coop_gemm: a parameter block of {} bytes, not {}", bytes.len(), block.len()));
            return;
        }
        block.copy_from_slice(bytes);
        let mut p: CoopParams = bytemuck::cast(block);
        p.tiles_n = tiles_n;
        p.tiles_m = m.div_ceil(cfg.tile());
        let grid = self.tile_grid(tiles_n as usize, (p.tiles_m * batches.max(1)) as usize);
        self.dispatch(KERNEL.entry, &bufs, &p, grid);
    }

    /// C (m x n) = A (m x k) * B (k x n), all row-major from offset 0, on the cooperative
    /// kernel (the probe's product; the dense layers go through their launchers).
    pub fn coop_gemm(&mut self, c: &mut GpuBuf, a: &GpuBuf, b: &GpuBuf, m: usize, n: usize, k: usize) {
        let prm = CoopParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            a_rs: k as u32,
            a_cs: 1,
            b_rs: n as u32,
            b_cs: 1,
            c_rs: n as u32,
            batches: 1,
            drop_members: 1,
            drop_len: 1,
            ..Default::default()
        };
        let table = self.no_table();
        self.coop_dispatch([a, b, c, &table], m as u32, n as u32, 1, &prm);
    }
}
