//! A bounds-checked wrapper over `gemm::gemm` for row-major f32 matrices given by strides.

/// A read-only strided matrix view: element `(r, c)` is `data[off + r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A view with row stride `rs` and unit column stride.
    pub fn rows(data: &'a [f32], off: usize, rs: usize) -> Self {
        MatRef {
            data,
            off,
            rs,
            cs: 1,
        }
    }

    /// A transposed view: element `(r, c)` is `data[off + c * ld + r]`.
    pub fn cols(data: &'a [f32], off: usize, ld: usize) -> Self {
        MatRef {
            data,
            off,
            rs: 1,
            cs: ld,
        }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = self.off + (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "gemm {what} view out of bounds: last index {last} >= {} (kernel geometry bug)",
                self.data.len()
            );
        }
    }
}

/// `dst[m x n] (row stride dst_rs, unit column stride) (+)= lhs[m x k] * rhs[k x n]`.
///
/// With `accumulate` the product is added to `dst`, otherwise it overwrites it. Always
/// single-threaded: the engine parallelises over images, never inside one product.
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = dst_off + (m - 1) * dst_rs + (n - 1);
    assert!(
        last < dst.len(),
        "gemm dst out of bounds: last index {last} >= {} (kernel geometry bug)",
        dst.len()
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[dst_off + r * dst_rs..dst_off + r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    lhs.check(m, k, "lhs");
    rhs.check(k, n, "rhs");
    // SAFETY: every index the product touches was bounds-checked above against the slices'
    // lengths; `dst` is a unique borrow so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_off),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.off),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.off),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
