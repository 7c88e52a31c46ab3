//! The cooperative-matrix kernel through naga, without a GPU that has tensor cores: every
//! configuration `gpu::coop` can generate parses and validates with the capabilities wgpu
//! grants when the feature is on, and is written as SPIR-V the way wgpu's Vulkan backend asks
//! for it (and, where `spirv-val` is on PATH, passes the Khronos validator for Vulkan 1.3), and
//! as MSL 2.3. Its parameter block is gemm.wgsl's, member by member.

use gpu_train::gpu::coop::{self, CoopConfig, Operand};
use gpu_train::gpu::shaders;
use naga::back::{msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};

fn parse(cfg: &CoopConfig) -> (naga::Module, ModuleInfo) {
    let src = coop::shader_source(cfg);
    let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{cfg:?}: {}", e.emit_to_string(&src)));
    // What wgpu-naga-bridge grants for EXPERIMENTAL_COOPERATIVE_MATRIX and SHADER_F16.
    let caps = Capabilities::COOPERATIVE_MATRIX | Capabilities::SHADER_FLOAT16;
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{cfg:?}: {}", e.emit_to_string(&src)));
    (module, info)
}

/// wgpu 30's Vulkan options for a Vulkan 1.3 device (wgpu-hal `vulkan/adapter.rs`).
fn vulkan_options() -> spv::Options<'static> {
    spv::Options {
        lang_version: (1, 6),
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: naga::proc::BoundsCheckPolicy::Restrict,
            buffer: naga::proc::BoundsCheckPolicy::Restrict,
            image_load: naga::proc::BoundsCheckPolicy::Restrict,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::Polyfill,
        force_loop_bounding: true,
        // NVIDIA does not offer storageInputOutput16; wgpu asks for it only where offered.
        use_storage_input_output_16: false,
        ..Default::default()
    }
}

#[test]
fn every_configuration_validates_and_translates_to_spirv_and_msl() {
    let spirv_val = which("spirv-val");
    for cfg in coop::all_configs() {
        let (module, info) = parse(&cfg);
        assert!(module.entry_points.iter().any(|e| e.name == coop::KERNEL.entry));
        let words =
            spv::write_vec(&module, &info, &vulkan_options(), None).unwrap_or_else(|e| panic!("{cfg:?} SPIR-V: {e}"));
        // OpCapability CooperativeMatrixKHR (6022), and the Vulkan memory model it needs.
        assert!(words.windows(2).any(|w| w == [(2 << 16) | 17, 6022]), "{cfg:?}: no CooperativeMatrixKHR capability");
        assert!(words.windows(3).any(|w| w == [(3 << 16) | 14, 0, 3]), "{cfg:?}: not the Vulkan memory model");
        if let Some(val) = &spirv_val {
            let path =
                std::env::temp_dir().join(format!("coop-{}-{}-{}.spv", cfg.size, cfg.operand.wgsl(), cfg.subgroup));
            let words = without_workgroup_array_strides(&words);
            std::fs::write(&path, words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
            let out = std::process::Command::new(val).args(["--target-env", "vulkan1.3"]).arg(&path).output().unwrap();
            assert!(out.status.success(), "{cfg:?}: spirv-val: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::remove_file(&path).ok();
        }
        let msl_opts = msl::Options { lang_version: (2, 3), fake_missing_bindings: true, ..Default::default() };
        let (text, _) = msl::write_string(&module, &info, &msl_opts, &msl::PipelineOptions::default())
            .unwrap_or_else(|e| panic!("{cfg:?} MSL: {e}"));
        assert!(text.contains("simdgroup_multiply_accumulate"), "{cfg:?}: no simdgroup product in the MSL");
    }
    if spirv_val.is_none() {
        eprintln!("spirv-val not on PATH: SPIR-V written but not run through the Khronos validator");
    }
}

#[test]
fn the_kernel_needs_the_feature_and_f16_operands_need_shader_f16() {
    let f16 = CoopConfig { size: 16, operand: Operand::F16, subgroup: 32 };
    let f32 = CoopConfig { size: 8, operand: Operand::F32, subgroup: 32 };
    for (cfg, without) in [(f16, Capabilities::COOPERATIVE_MATRIX), (f32, Capabilities::empty())] {
        let src = coop::shader_source(&cfg);
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        assert!(Validator::new(ValidationFlags::all(), without).validate(&module).is_err(), "{cfg:?}");
    }
    assert!(f16.features().contains(wgpu::Features::SHADER_F16 | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX));
    assert!(!f32.features().contains(wgpu::Features::SHADER_F16));
    assert_eq!(f16.describe(), "coop 16x16x16 f16->f32");
    assert_eq!(f32.describe(), "coop 8x8x8 f32->f32");
}

/// The dense launchers hand their gemm.wgsl parameter block to the coop kernel unchanged.
#[test]
fn the_parameter_block_is_gemm_wgsl_s() {
    let params = |module: &naga::Module| {
        let (_, ty) = module.types.iter().find(|(_, t)| t.name.as_deref() == Some("Params")).unwrap();
        let naga::TypeInner::Struct { members, span } = &ty.inner else { panic!("Params is not a struct") };
        let m: Vec<(String, u32, String)> = members
            .iter()
            .map(|m| (m.name.clone().unwrap(), m.offset, format!("{:?}", module.types[m.ty].inner)))
            .collect();
        (m, *span)
    };
    let gemm_src = shaders::module_source("gemm").unwrap();
    let gemm = naga::front::wgsl::parse_str(&gemm_src).unwrap();
    let (coop_module, _) = parse(&coop::all_configs()[0]);
    let (want, span) = params(&gemm);
    assert_eq!(params(&coop_module), (want, span));
    assert_eq!(span as usize, std::mem::size_of::<coop::CoopParams>());
}

/// naga 30 puts an ArrayStride on every array type, workgroup arrays too, which the 2025 rule
/// VUID-StandaloneSpirv-None-10684 forbids; gemm.wgsl's f32 tiles, which run on every GPU the
/// project has met, carry the same decoration. It is taken off the workgroup-only array types
/// so that spirv-val goes on to judge everything else (the cooperative-matrix rules among it).
fn without_workgroup_array_strides(words: &[u32]) -> Vec<u32> {
    let mut insts = Vec::new();
    let mut i = 5;
    while i < words.len() {
        let count = (words[i] >> 16) as usize;
        insts.push(&words[i..i + count]);
        i += count;
    }
    // OpTypePointer (32): result, storage class (4 = Workgroup), pointee.
    let pointees = |workgroup: bool| -> Vec<u32> {
        insts.iter().filter(|w| w[0] & 0xffff == 32 && (w[2] == 4) == workgroup).map(|w| w[3]).collect()
    };
    let (workgroup, elsewhere) = (pointees(true), pointees(false));
    let mut out = words[..5].to_vec();
    for w in insts {
        // OpDecorate (71) target ArrayStride (6).
        let strip = w[0] & 0xffff == 71 && w[2] == 6 && workgroup.contains(&w[1]) && !elsewhere.contains(&w[1]);
        if !strip {
            out.extend_from_slice(w);
        }
    }
    out
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The stand-in that runs the kernel's tiling on adapters without cooperative matrices
/// (tests/gpu_parity.rs) needs nothing beyond f16.
#[test]
fn the_emulated_kernel_needs_no_cooperative_matrices() {
    for cfg in coop::all_configs() {
        let src = coop::emulated_source(&cfg);
        let module =
            naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{cfg:?}: {}", e.emit_to_string(&src)));
        Validator::new(ValidationFlags::all(), Capabilities::SHADER_FLOAT16)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{cfg:?}: {}", e.emit_to_string(&src)));
        assert!(module.entry_points.iter().any(|e| e.name == coop::KERNEL.entry));
    }
}
