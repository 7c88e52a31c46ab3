//! Every shader through naga, without a GPU: parse and validate each module, then translate
//! it to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL), entry point by entry point
//! where a backend needs that. A shader that another vendor's backend would reject fails here.
//!
//! A kernel's interface is written three times: the WGSL `Params` struct, its Rust twin in
//! `src/gpu/kernels/<family>.rs` and the binding rows in `shaders::KERNELS`. The reflection
//! tests below read the first from naga's IR and hold the other two against it, so a field
//! renamed, moved or retyped on one side only, or a binding missing from the rows, fails
//! here rather than as wrong numbers in a parity run.

use gpu_train::gpu::SLOT;
use gpu_train::gpu::kernels::PARAMS;
use gpu_train::gpu::kernels::layout::{Kind, Scalar};
use gpu_train::gpu::shaders::{self, Access, FAMILIES, KERNELS};
use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, ArraySize, ScalarKind, StorageAccess, TypeInner, VectorSize};

fn parse(family: &str) -> (naga::Module, ModuleInfo) {
    parse_source(family, &shaders::module_source(family).unwrap())
}

fn parse_source(family: &str, src: &str) -> (naga::Module, ModuleInfo) {
    let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{family}: {}", e.emit_to_string(src)));
    // Default capabilities only: nothing beyond what every backend has.
    let info = Validator::new(ValidationFlags::all(), Capabilities::default())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{family}: {}", e.emit_to_string(src)));
    (module, info)
}

#[test]
fn every_shader_file_is_registered_and_every_kernel_exists() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // coop_gemm.wgsl is generated per adapter configuration (tests/coop_naga.rs); common,
        // tile and members are put in front of the families.
        .filter(|n| {
            n.ends_with(".wgsl")
                && !["common.wgsl", "tile.wgsl", "members.wgsl", "coop_gemm.wgsl"].contains(&n.as_str())
        })
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
        translate(family, &module, &info);
    }
}

/// The GEMM families in every tile shape (`gpu::variants::Tile`) validate and translate
/// like the default, and their tiled kernels run TY x TX threads.
#[test]
fn every_tile_shape_translates() {
    use gpu_train::gpu::Tile;
    for tile in Tile::TILED {
        let shape = tile.shape().unwrap();
        for family in ["conv2d", "gemm"] {
            let name = format!("{family} {}", tile.name());
            let (module, info) = parse_source(&name, &shaders::module_source_tiled(family, shape).unwrap());
            translate(&name, &module, &info);
            for ep in &module.entry_points {
                let threads = if ep.name == "gemm_skinny" { 64 } else { shape.ty * shape.tx };
                assert_eq!(ep.workgroup_size, [threads, 1, 1], "{name}::{}", ep.name);
            }
        }
    }
}

fn translate(family: &str, module: &naga::Module, info: &ModuleInfo) {
    spv::write_vec(module, info, &spv::Options::default(), None).unwrap_or_else(|e| panic!("{family} SPIR-V: {e}"));
    let msl_opts = msl::Options { lang_version: (2, 1), fake_missing_bindings: true, ..Default::default() };
    msl::write_string(module, info, &msl_opts, &msl::PipelineOptions::default())
        .unwrap_or_else(|e| panic!("{family} MSL: {e}"));
    let hlsl_opts =
        hlsl::Options { shader_model: hlsl::ShaderModel::V6_0, fake_missing_bindings: true, ..Default::default() };
    let mut out = String::new();
    hlsl::Writer::new(&mut out, &hlsl_opts, &hlsl::PipelineOptions::default())
        .write(module, info, None)
        .unwrap_or_else(|e| panic!("{family} HLSL: {e}"));
    for ep in &module.entry_points {
        let opts = glsl::Options { version: glsl::Version::Desktop(430), ..Default::default() };
        let pipe = glsl::PipelineOptions {
            shader_stage: naga::ShaderStage::Compute,
            entry_point: ep.name.clone(),
            multiview: None,
        };
        let mut out = String::new();
        glsl::Writer::new(&mut out, module, info, &opts, &pipe, Default::default())
            .and_then(|mut w| w.write())
            .unwrap_or_else(|e| panic!("{family}::{} GLSL: {e}", ep.name));
        assert!(out.contains("void main()"));
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

/// The kind of a WGSL type, in the terms the Rust twins describe themselves in.
fn wgsl_kind(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Result<Kind, String> {
    fn scalar(s: naga::Scalar) -> Result<Scalar, String> {
        match (s.kind, s.width) {
            (ScalarKind::Uint, 4) => Ok(Scalar::U32),
            (ScalarKind::Sint, 4) => Ok(Scalar::I32),
            (ScalarKind::Float, 4) => Ok(Scalar::F32),
            other => Err(format!("scalar {other:?} has no Rust twin kind")),
        }
    }
    fn lanes(size: VectorSize) -> u32 {
        size as u32
    }
    match &module.types[ty].inner {
        TypeInner::Scalar(s) => Ok(Kind::Scalar(scalar(*s)?)),
        TypeInner::Vector { size, scalar: s } => Ok(Kind::Vector { lanes: lanes(*size), scalar: scalar(*s)? }),
        TypeInner::Array { base, size: ArraySize::Constant(len), stride } => match &module.types[*base].inner {
            TypeInner::Vector { size, scalar: s } => {
                Ok(Kind::Array { len: len.get(), lanes: lanes(*size), scalar: scalar(*s)?, stride: *stride })
            }
            other => Err(format!("array of {other:?} has no Rust twin kind")),
        },
        other => Err(format!("{other:?} has no Rust twin kind")),
    }
}

/// Each family's uniform block against its Rust twin (`gpu::kernels::PARAMS`), field by field:
/// the same names in the same order, at the same offsets, of the same kind and size.
///
/// Sizes: the launcher writes `size_of` its struct into a slot of `SLOT` bytes and the arena
/// fills the rest of the slot with zeros; the shader reads `span` bytes of it. So the rule is
/// rust size <= span <= SLOT; with the fields matched, every WGSL member then lies inside the
/// Rust struct. A shorter Rust struct is then short only by the
/// struct's tail padding (the span is rounded up to the struct's alignment: data's `Params`
/// holds vec4s, so its span is 96 bytes for 92 of fields), which the shader never reads and
/// which is zero anyway. A longer one would write bytes the shader has no field for.
#[test]
fn every_params_struct_matches_its_rust_twin_field_by_field() {
    let mut listed: Vec<&str> = PARAMS.iter().map(|p| p.family).collect();
    listed.sort();
    let families: Vec<&str> = FAMILIES.iter().map(|(f, _)| *f).collect();
    assert_eq!(listed, families, "gpu::kernels::PARAMS must list every shader family once");

    let mut errors = Vec::new();
    for p in PARAMS {
        let (module, _) = parse(p.family);
        let rust = &p.rust;
        let here = format!("{}.wgsl `{}` / Rust `{}`", p.family, p.wgsl, rust.rust);
        // The uniform every kernel reads its parameters from: group 1, binding 0.
        let uniforms: Vec<_> =
            module.global_variables.iter().filter(|(_, g)| g.space == AddressSpace::Uniform).map(|(_, g)| g).collect();
        let [uniform] = uniforms[..] else {
            errors.push(format!("{here}: {} uniform globals, expected one", uniforms.len()));
            continue;
        };
        let binding = uniform.binding.as_ref().map(|b| (b.group, b.binding));
        if binding != Some((1, 0)) {
            errors.push(format!("{here}: the uniform is bound at {binding:?}, the backend binds (1, 0)"));
        }
        let ty = &module.types[uniform.ty];
        let TypeInner::Struct { members, span } = &ty.inner else {
            errors.push(format!("{here}: the uniform is not a struct"));
            continue;
        };
        if ty.name.as_deref() != Some(p.wgsl) {
            errors.push(format!("{here}: the uniform's type is {:?}", ty.name));
        }
        // (name, kind, offset, size) of each WGSL member, as the Rust side describes its fields.
        let wgsl: Vec<(&str, Kind, usize, usize)> = match members
            .iter()
            .map(|m| {
                let name = m.name.as_deref().unwrap_or("?");
                let kind = wgsl_kind(&module, m.ty).map_err(|e| format!("{here}: field {name}: {e}"))?;
                Ok((name, kind, m.offset as usize, module.types[m.ty].inner.size(module.to_ctx()) as usize))
            })
            .collect::<Result<_, String>>()
        {
            Ok(w) => w,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let rust_fields: Vec<(&str, Kind, usize, usize)> =
            rust.fields.iter().map(|f| (f.name, f.kind, f.offset, f.size)).collect();
        for i in 0..wgsl.len().max(rust_fields.len()) {
            match (wgsl.get(i), rust_fields.get(i)) {
                (Some(w), Some(r)) if w == r => {}
                (w, r) => errors.push(format!("{here}: field {i}: WGSL {w:?}, Rust {r:?} (name, kind, offset, size)")),
            }
        }
        let span = *span as usize;
        if !(rust.size <= span && span <= SLOT) {
            errors.push(format!(
                "{here}: sizes: Rust {} bytes, WGSL span {span}, slot {SLOT}; need Rust <= span <= slot",
                rust.size
            ));
        }
    }
    assert!(errors.is_empty(), "parameter blocks differ from their shaders:\n{}", errors.join("\n"));
}

/// Each kernel's binding rows (`shaders::KERNELS`) against the group-0 globals its entry point
/// uses (directly or through the functions it calls), in binding order, each with the access
/// the WGSL declares (`read` or `read_write`). The pipeline layouts are built from the rows;
/// wgpu only rejects a row the shader needs but lacks (or a read row for a read_write
/// variable) when a GPU builds the pipeline, and never a row the shader does not use.
#[test]
fn every_kernels_binding_rows_match_the_globals_its_entry_point_uses() {
    let mut errors = Vec::new();
    for (family, _) in FAMILIES {
        let (module, info) = parse(family);
        for (g, var) in module.global_variables.iter() {
            let name = var.name.as_deref().unwrap_or("?");
            match (var.space, var.binding.as_ref().map(|b| b.group)) {
                (AddressSpace::Storage { .. }, Some(0)) | (AddressSpace::Uniform, Some(1)) => {}
                (AddressSpace::WorkGroup | AddressSpace::Private, None) => {}
                (space, group) => errors.push(format!(
                    "{family}.wgsl `{name}` ({g:?}): {space:?} in group {group:?}; the backend binds storage \
                     buffers in group 0 and the parameters in group 1"
                )),
            }
        }
        for (i, ep) in module.entry_points.iter().enumerate() {
            let Some(kernel) = shaders::kernel(&ep.name) else { continue };
            let uses = info.get_entry_point(i);
            let wgsl: Vec<(u32, Access)> = module
                .global_variables
                .iter()
                .filter(|(h, _)| !uses[*h].is_empty())
                .filter_map(|(_, var)| match (var.space, &var.binding) {
                    (AddressSpace::Storage { access }, Some(b)) if b.group == 0 => {
                        let access =
                            if access.contains(StorageAccess::STORE) { Access::ReadWrite } else { Access::Read };
                        Some((b.binding, access))
                    }
                    _ => None,
                })
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect();
            if kernel.bindings != wgsl.as_slice() {
                errors.push(format!(
                    "{family}::{}: the rows are {:?}, the shader uses {:?}",
                    ep.name, kernel.bindings, wgsl
                ));
            }
        }
    }
    assert!(errors.is_empty(), "binding rows differ from their shaders:\n{}", errors.join("\n"));
}
