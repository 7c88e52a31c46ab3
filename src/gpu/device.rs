//! Adapters: listing them, choosing one, and telling real GPUs from software rasterizers.
//! `WGPU_BACKEND` (vulkan, metal, dx12, gl) narrows the search as in any wgpu program.

#[cfg(not(target_arch = "wasm32"))]
use crate::error::{Error, Result};

/// What `gpu-train devices` prints for one adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub max_buffer_mb: u64,
    pub max_storage_binding_mb: u64,
    pub max_workgroups_per_dim: u32,
    pub max_invocations_per_workgroup: u32,
    pub max_workgroup_storage_kb: u32,
    pub timestamps: bool,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub subgroup_sizes: (u32, u32),
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX` offered.
    pub cooperative_matrix: bool,
    /// The configurations the adapter lists (see `gpu::coop::describe_property`).
    pub cooperative_configs: Vec<String>,
    /// What `--precision mixed` would run on here, or why it cannot.
    pub mixed: std::result::Result<String, String>,
}

pub(crate) fn instance_for(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter, best first (native only: a browser offers one, `GpuBackend::browser`): discrete, integrated, virtual, other, then software. Indices
/// into this order are what `--adapter N` means. The backends are those `WGPU_BACKEND` names;
/// without it, the native APIs (Vulkan, Metal, DX12), and GL only where none of them has an
/// adapter (starting GL on a headless machine is slow and prints EGL complaints).
#[cfg(not(target_arch = "wasm32"))]
pub fn adapters() -> Vec<wgpu::Adapter> {
    let mut all = match wgpu::Backends::from_env() {
        Some(b) => pollster::block_on(instance_for(b).enumerate_adapters(b)),
        None => {
            let native =
                pollster::block_on(instance_for(wgpu::Backends::PRIMARY).enumerate_adapters(wgpu::Backends::PRIMARY));
            if native.is_empty() {
                pollster::block_on(instance_for(wgpu::Backends::GL).enumerate_adapters(wgpu::Backends::GL))
            } else {
                native
            }
        }
    };
    all.sort_by_key(|a| rank(&a.get_info()));
    all
}

#[cfg(not(target_arch = "wasm32"))]
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let api = if info.backend == wgpu::Backend::Gl { 1 } else { 0 };
    (ty, api)
}

/// A software adapter (llvmpipe, lavapipe, WARP): correct but far slower than the CPU backend.
pub fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
        || info.name.contains("llvmpipe")
        || info.name.contains("lavapipe")
        || info.name.contains("SwiftShader")
}

pub fn summary(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let l = a.limits();
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        max_buffer_mb: l.max_buffer_size >> 20,
        max_storage_binding_mb: l.max_storage_buffer_binding_size >> 20,
        max_workgroups_per_dim: l.max_compute_workgroups_per_dimension,
        max_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_workgroup_storage_kb: l.max_compute_workgroup_storage_size >> 10,
        timestamps: a.features().contains(wgpu::Features::TIMESTAMP_QUERY),
        shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
        subgroups: a.features().contains(wgpu::Features::SUBGROUP),
        subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
        cooperative_matrix: super::coop::offered(a).0,
        cooperative_configs: super::coop::offered(a).1.iter().map(super::coop::describe_property).collect(),
        mixed: super::coop::choose(a).map(|c| c.describe()),
    }
}

/// The adapter `--adapter N` names, or the best one.
#[cfg(not(target_arch = "wasm32"))]
pub fn pick(index: Option<usize>) -> Result<wgpu::Adapter> {
    let mut all = adapters();
    if all.is_empty() {
        return Err(Error::Gpu(
            "no GPU adapter found (on Linux: install a Vulkan driver, e.g. mesa-vulkan-drivers, and libvulkan1; \
             check with `gpu-train devices`)"
                .into(),
        ));
    }
    match index {
        None => Ok(all.remove(0)),
        Some(i) if i < all.len() => Ok(all.remove(i)),
        Some(i) => Err(Error::Gpu(format!(
            "no adapter {i}: there {} {} (see `gpu-train devices`)",
            if all.len() == 1 { "is" } else { "are" },
            all.len()
        ))),
    }
}
