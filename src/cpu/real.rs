//! The element type of the CPU backend. Training uses f32 (what the GPU computes in); the
//! same ops in f64 let the tests check whole-model gradients by finite differences without
//! f32 rounding drowning the difference quotients.

use std::cell::RefCell;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

pub trait Real:
    num_traits::Float + Default + Debug + Sum + AddAssign + SubAssign + MulAssign + Send + Sync + 'static
{
    fn of(v: f32) -> Self;
    fn of64(v: f64) -> Self;
    fn to64(self) -> f64;
    fn to32(self) -> f32;
    /// The error function (libm's).
    fn erf(self) -> Self;
    /// Runs `f` with this thread's scratch slice of `len` elements (contents unspecified).
    /// Not re-entrant: `f` must not call `with_scratch` for the same type.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

thread_local! {
    static SCRATCH32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

fn scratch<T: Copy + Default, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, T::default());
        }
        f(&mut s[..len])
    })
}

impl Real for f32 {
    fn of(v: f32) -> Self {
        v
    }
    fn of64(v: f64) -> Self {
        v as f32
    }
    fn to64(self) -> f64 {
        self as f64
    }
    fn to32(self) -> f32 {
        self
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        scratch(&SCRATCH32, len, f)
    }
}

impl Real for f64 {
    fn of(v: f32) -> Self {
        v as f64
    }
    fn of64(v: f64) -> Self {
        v
    }
    fn to64(self) -> f64 {
        self
    }
    fn to32(self) -> f32 {
        self as f32
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        scratch(&SCRATCH64, len, f)
    }
}
