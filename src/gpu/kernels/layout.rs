//! How a Rust parameter block describes itself to the shader check.
//!
//! Each family's uniform block is written twice, as WGSL `struct Params` and as its Rust twin
//! filled by the launchers. `params!` defines the twin (`#[repr(C)]`, `Pod`) together with a
//! description of it: every field's name, WGSL kind, byte offset and size, taken from the
//! struct itself (`offset_of!`, `size_of`). `tests/shaders_naga.rs` holds each description
//! against the shader's struct as naga lays it out, so the two cannot drift apart.

/// A WGSL scalar type (4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    U32,
    I32,
    F32,
}

/// The WGSL type a Rust field stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Scalar(Scalar),
    /// `vecN<T>`: a Rust `[T; N]`, N in 2..=4.
    Vector {
        lanes: u32,
        scalar: Scalar,
    },
    /// `array<vecL<T>, len>`: a Rust `[[T; L]; len]`; `stride` is the element's size in bytes
    /// (a uniform array's must be a multiple of 16, so L = 4).
    Array {
        len: u32,
        lanes: u32,
        scalar: Scalar,
        stride: u32,
    },
}

/// A Rust type that has a WGSL counterpart of the same bytes.
pub trait WgslType {
    const KIND: Kind;
}

/// The scalars, and the element types of vectors.
pub trait WgslScalar {
    const SCALAR: Scalar;
}

impl WgslScalar for u32 {
    const SCALAR: Scalar = Scalar::U32;
}
impl WgslScalar for i32 {
    const SCALAR: Scalar = Scalar::I32;
}
impl WgslScalar for f32 {
    const SCALAR: Scalar = Scalar::F32;
}

impl<T: WgslScalar> WgslType for T {
    const KIND: Kind = Kind::Scalar(T::SCALAR);
}

/// `[T; N]` is `vecN<T>` (N in 2..=4; other lengths do not compile).
impl<T: WgslScalar, const N: usize> WgslType for [T; N] {
    const KIND: Kind = {
        assert!(N >= 2 && N <= 4, "a Rust [T; N] stands for vecN<T>, N in 2..=4");
        Kind::Vector { lanes: N as u32, scalar: T::SCALAR }
    };
}

/// `[[T; L]; N]` is `array<vecL<T>, N>`.
impl<T: WgslScalar, const L: usize, const N: usize> WgslType for [[T; L]; N] {
    const KIND: Kind = Kind::Array { len: N as u32, lanes: L as u32, scalar: T::SCALAR, stride: (L * 4) as u32 };
}

/// One field of a Rust parameter block.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// Bytes from the start of the struct.
    pub offset: usize,
    pub size: usize,
}

/// A Rust parameter block, field by field.
#[derive(Debug, Clone, Copy)]
pub struct ParamsLayout {
    pub rust: &'static str,
    /// `size_of` the struct: the bytes a launcher writes into the uniform slot.
    pub size: usize,
    pub fields: &'static [Field],
}

/// Defines a kernel family's parameter block: a `#[repr(C)]` `Pod` struct whose fields mirror
/// the WGSL `Params` struct in order, and its `LAYOUT` for the shader check.
macro_rules! params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$field_meta])* $field: $ty,)*
        }

        impl $name {
            /// This struct as the WGSL side sees it (checked in `tests/shaders_naga.rs`).
            pub(in crate::gpu) const LAYOUT: $crate::gpu::kernels::layout::ParamsLayout =
                $crate::gpu::kernels::layout::ParamsLayout {
                    rust: stringify!($name),
                    size: ::std::mem::size_of::<$name>(),
                    fields: &[$($crate::gpu::kernels::layout::Field {
                        name: stringify!($field),
                        kind: <$ty as $crate::gpu::kernels::layout::WgslType>::KIND,
                        offset: ::std::mem::offset_of!($name, $field),
                        size: ::std::mem::size_of::<$ty>(),
                    }),*],
                };
        }
    };
}
