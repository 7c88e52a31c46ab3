//! Every shader through naga, without a GPU: parse and validate each module, then translate
//! it to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL), entry point by entry point
//! where a backend needs that. A shader that another vendor's backend would reject fails here.

use gpu_train::gpu::shaders::{self, FAMILIES, KERNELS};
use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};

fn parse(family: &str) -> (naga::Module, ModuleInfo) {
    let src = shaders::module_source(family).unwrap();
    let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{family}: {}", e.emit_to_string(&src)));
    // Default capabilities only: nothing beyond what every backend has.
    let info = Validator::new(ValidationFlags::all(), Capabilities::default())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{family}: {}", e.emit_to_string(&src)));
    (module, info)
}

#[test]
fn every_shader_file_is_registered_and_every_kernel_exists() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // coop_gemm.wgsl is generated per adapter configuration (tests/coop_naga.rs).
        .filter(|n| n.ends_with(".wgsl") && n != "common.wgsl" && n != "tile.wgsl" && n != "coop_gemm.wgsl")
        .collect();
    files.sort();
    let registered: Vec<String> = FAMILIES.iter().map(|(f, _)| format!("{f}.wgsl")).collect();
    assert_eq!(files, registered);
    for k in KERNELS {
        let (module, _) = parse(k.family);
        assert!(module.entry_points.iter().any(|e| e.name == k.entry), "{} missing from {}.wgsl", k.entry, k.family);
    }
    for (family, _) in FAMILIES {
        let (module, _) = parse(family);
        for e in &module.entry_points {
            assert!(shaders::kernel(&e.name).is_some(), "entry point {} of {family}.wgsl is not registered", e.name);
        }
    }
}

#[test]
fn shaders_translate_to_spirv_msl_hlsl_and_glsl() {
    for (family, _) in FAMILIES {
        let (module, info) = parse(family);
        spv::write_vec(&module, &info, &spv::Options::default(), None)
            .unwrap_or_else(|e| panic!("{family} SPIR-V: {e}"));
        let msl_opts = msl::Options { lang_version: (2, 1), fake_missing_bindings: true, ..Default::default() };
        msl::write_string(&module, &info, &msl_opts, &msl::PipelineOptions::default())
            .unwrap_or_else(|e| panic!("{family} MSL: {e}"));
        let hlsl_opts =
            hlsl::Options { shader_model: hlsl::ShaderModel::V6_0, fake_missing_bindings: true, ..Default::default() };
        let mut out = String::new();
        hlsl::Writer::new(&mut out, &hlsl_opts, &hlsl::PipelineOptions::default())
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{family} HLSL: {e}"));
        for ep in &module.entry_points {
            let opts = glsl::Options { version: glsl::Version::Desktop(430), ..Default::default() };
            let pipe = glsl::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: ep.name.clone(),
                multiview: None,
            };
            let mut out = String::new();
            glsl::Writer::new(&mut out, &module, &info, &opts, &pipe, Default::default())
                .and_then(|mut w| w.write())
                .unwrap_or_else(|e| panic!("{family}::{} GLSL: {e}", ep.name));
            assert!(out.contains("void main()"));
        }
    }
}

/// `GPU_TRAIN_SHADER_DIR`: a file in the directory replaces its built-in copy, the others stay.
#[test]
fn a_shader_directory_overrides_only_the_files_it_holds() {
    let dir = std::env::temp_dir().join(format!("gpu-train-shader-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tile.wgsl"), "// tile under test\n").unwrap();
    let conv = shaders::module_source_overridden("conv2d", &dir).unwrap();
    assert!(conv.contains("// tile under test"));
    assert!(!conv.contains("fn tile_multiply"));
    assert!(conv.contains("fn conv2d_forward") && conv.contains("fn mix32"));
    // Families without the tile, and an empty directory, give the built-in source.
    assert_eq!(shaders::module_source_overridden("activation", &dir), shaders::module_source("activation"));
    std::fs::remove_file(dir.join("tile.wgsl")).unwrap();
    assert_eq!(shaders::module_source_overridden("conv2d", &dir), shaders::module_source("conv2d"));
    assert_eq!(shaders::module_source_overridden("no-such-family", &dir), None);
    std::fs::remove_dir(&dir).unwrap();
}
