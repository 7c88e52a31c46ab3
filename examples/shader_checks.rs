//! What wgpu's shader runtime checks add to our kernels, read from the SPIR-V naga emits.
//!
//! wgpu 30 on Vulkan hands naga these options (wgpu-hal `vulkan/adapter.rs`): index checks
//! `Restrict` (an index into a fixed-size array, workgroup tiles included, is clamped with
//! `min`), buffer checks `Unchecked` on drivers with robustBufferAccess2 (NVIDIA's; the driver
//! bounds storage accesses itself) else `Restrict`, `force_loop_bounding` (every loop gets a
//! 64-bit countdown emulated in a vec2<u32>, so a driver cannot assume it terminates) and
//! integer-division checks (a divisor of 0 becomes 1). `ShaderRuntimeChecks::unchecked()`
//! turns all of them off. This prints, for every shader family, how many SPIR-V instructions
//! each check adds to the whole module and to the hot function (`tile_multiply`, the inner
//! product of every conv and dense GEMM), and what they are.
//!
//!     cargo run --release --example shader_checks

use gpu_train::gpu::shaders::{self, FAMILIES};
use naga::back::spv;
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// One configuration: (name, index and buffer policies, loop bounding, division checks).
type Variant = (&'static str, BoundsCheckPolicy, BoundsCheckPolicy, bool, bool);

const R: BoundsCheckPolicy = BoundsCheckPolicy::Restrict;
const U: BoundsCheckPolicy = BoundsCheckPolicy::Unchecked;

const VARIANTS: &[Variant] = &[
    ("checked (NVIDIA: buffers bounded by the driver)", R, U, true, true),
    ("  without loop bounding", R, U, false, true),
    ("  without division checks", R, U, true, false),
    ("  without index clamps", U, U, true, true),
    ("unchecked", U, U, false, false),
    ("checked, no robustBufferAccess2 (buffers clamped)", R, R, true, true),
];

/// Instruction counts of a SPIR-V module: total, per function (by debug name), and of the
/// opcodes the checks emit.
#[derive(Default)]
struct Counts {
    total: usize,
    functions: Vec<(String, usize, usize, usize)>, // (name, instructions, clamps, loops)
}

const OP_NAME: u32 = 5;
const OP_EXT_INST: u32 = 12;
const OP_FUNCTION: u32 = 54;
const OP_FUNCTION_END: u32 = 56;
const OP_LOOP_MERGE: u32 = 246;
const GLSL_UMIN: u32 = 38;

fn count(words: &[u32]) -> Counts {
    let mut names = std::collections::HashMap::new();
    let mut c = Counts::default();
    let mut i = 5; // after the header
    let mut current: Option<(String, usize, usize, usize)> = None;
    while i < words.len() {
        let (len, op) = ((words[i] >> 16) as usize, words[i] & 0xffff);
        let inst = &words[i..i + len.max(1)];
        c.total += 1;
        if op == OP_NAME {
            let bytes: Vec<u8> = inst[2..].iter().flat_map(|w| w.to_le_bytes()).take_while(|&b| b != 0).collect();
            names.insert(inst[1], String::from_utf8_lossy(&bytes).into_owned());
        }
        if op == OP_FUNCTION {
            current = Some((names.get(&inst[2]).cloned().unwrap_or_default(), 0, 0, 0));
        }
        if let Some(f) = current.as_mut() {
            f.1 += 1;
            if op == OP_EXT_INST && inst.get(4) == Some(&GLSL_UMIN) {
                f.2 += 1;
            }
            if op == OP_LOOP_MERGE {
                f.3 += 1;
            }
        }
        if op == OP_FUNCTION_END
            && let Some(f) = current.take()
        {
            c.functions.push(f);
        }
        i += len.max(1);
    }
    c
}

fn main() {
    println!("SPIR-V instructions naga 30 emits per shader module, by check (wgpu's Vulkan options)");
    println!("(tile_multiply: instructions / min() clamps / loops in one 16-deep inner product of the GEMMs,");
    println!(" counting a called tile_step once per call)\n");
    print!("{:<52}", "variant");
    for (family, _) in FAMILIES {
        print!("{family:>11}");
    }
    println!("{:>22}", "tile_multiply");
    for &(name, index, buffer, loops, divs) in VARIANTS {
        print!("{name:<52}");
        let mut tile = None;
        for (family, _) in FAMILIES {
            let src = shaders::module_source(family).expect("registered family");
            let module = naga::front::wgsl::parse_str(&src).expect("shaders parse (tests/shaders_naga.rs)");
            let info =
                Validator::new(ValidationFlags::all(), Capabilities::default()).validate(&module).expect("valid");
            let options = spv::Options {
                bounds_check_policies: BoundsCheckPolicies { index, buffer, image_load: U, binding_array: U },
                force_loop_bounding: loops,
                emit_int_div_checks: divs,
                flags: spv::WriterFlags::DEBUG,
                ..Default::default()
            };
            let words = spv::write_vec(&module, &info, &options, None).expect("SPIR-V");
            let c = count(&words);
            print!("{:>11}", c.total);
            // The inner product: tile_multiply and the steps it calls (if written as such).
            let mut inner = (0, 0, 0);
            for f in c.functions.iter().filter(|f| f.0 == "tile_multiply" || f.0 == "tile_step") {
                let calls = if f.0 == "tile_step" { 16 } else { 1 };
                inner = (inner.0 + calls * f.1, inner.1 + calls * f.2, inner.2 + calls * f.3);
            }
            if inner.0 > 0 {
                tile = Some(inner);
            }
        }
        match tile {
            Some((n, clamps, loops)) => println!("{:>12} / {clamps:>2} / {loops}", n),
            None => println!(),
        }
    }
}
