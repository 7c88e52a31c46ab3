//! Matrix multiply (f32 or f64) for the CPU backend, through the `gemm` crate (packed
//! AVX2/AVX-512/NEON micro-kernels), behind a bounds-checked wrapper.

use super::real::Real;

/// A strided read-only matrix view: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// Row-major view of a `rows x cols` matrix.
pub fn rows<T>(data: &[T], cols: usize) -> MatRef<'_, T> {
    MatRef { data, rs: cols, cs: 1 }
}

/// Transposed view of a row-major matrix with `cols` columns.
pub fn transposed<T>(data: &[T], cols: usize) -> MatRef<'_, T> {
    MatRef { data, rs: 1, cs: cols }
}

fn check(len: usize, r: usize, c: usize, rs: usize, cs: usize, what: &str) {
    if r > 0 && c > 0 {
        let last = (r - 1) * rs + (c - 1) * cs;
        assert!(last < len, "gemm: {what} ({r}x{c}, strides {rs},{cs}) exceeds its slice of {len}");
    }
}

/// C (m x n, row-major with row stride `ldc`) = A (m x k) * B (k x n), plus C if `accumulate`.
/// `parallel` lets the multiply use the rayon pool (worth it from about a million FLOPs).
#[allow(clippy::too_many_arguments)]
pub fn sgemm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
    a: MatRef<T>,
    b: MatRef<T>,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    check(c.len(), m, n, ldc, 1, "C");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(T::zero());
            }
        }
        return;
    }
    check(a.data.len(), m, k, a.rs, a.cs, "A");
    check(b.data.len(), k, n, b.rs, b.cs, "B");
    let par = if parallel && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the checks above keep every element the strides reach inside its slice; C is
    // borrowed mutably and A, B shared, so they do not alias.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: MatRef<f32>, b: MatRef<f32>) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn matches_naive_for_all_layouts() {
        let (m, n, k) = (7, 13, 5);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        for (av, bv) in [
            (rows(&a, k), rows(&b, n)),
            (transposed(&a, m), rows(&b, n)),
            (rows(&a, k), transposed(&b, k)),
            (transposed(&a, m), transposed(&b, k)),
        ] {
            let want = naive(m, n, k, av, bv);
            let mut c = vec![1.0f32; m * n];
            sgemm(m, n, k, &mut c, n, false, av, bv, false);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5);
            }
            sgemm(m, n, k, &mut c, n, true, av, bv, true);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 2.0 * y).abs() < 1e-5);
            }
        }
    }
}
