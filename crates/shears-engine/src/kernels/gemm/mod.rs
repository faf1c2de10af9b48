//! A bounds-checked wrapper over `gemm::gemm` for row-major f32 matrices given by strides.
//!
//! On CPUs with AVX-512F the products run the engine's own register-blocked kernels
//! (`avx512.rs`, whose functions the safe wrappers here call after their bounds checks);
//! elsewhere they run `gemm::gemm`.

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
    #[cfg(target_arch = "x86_64")]
    if rhs.cs == 1 && avx512::available() {
        // SAFETY: as below (bounds checked above, `dst` unique); AVX-512F was detected.
        unsafe {
            avx512::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr().add(dst_off),
                dst_rs,
                accumulate,
                lhs.data.as_ptr().add(lhs.off),
                lhs.rs,
                lhs.cs,
                rhs.data.as_ptr().add(rhs.off),
                rhs.rs,
            );
        }
        return;
    }
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

/// Whether [`sgemm_segs`] runs its own register-blocked kernel (cheap to call on short rows)
/// rather than one `gemm` call per segment.
pub(crate) fn fast_segs() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[m x n] (+)= sum_s lhs_s[m x k_s] * rhs_s[k_s x n]`: one product whose reduction runs
/// over several shifted views of `lhs` (segment `s = (off, k_s)` is `lhs` moved by `off`
/// elements) against consecutive row blocks of `rhs`. With AVX-512 the partial sums stay in
/// registers across segments, so `dst` is written once; otherwise it runs one [`sgemm`] per
/// segment.
pub(crate) fn sgemm_segs(
    m: usize,
    n: usize,
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    accumulate: bool,
    lhs: MatRef<'_>,
    segs: &[(usize, usize)],
    rhs: MatRef<'_>,
) {
    segs_product::<false>(m, n, dst, dst_off, dst_rs, accumulate, lhs, segs, rhs);
}

/// `dst[m x n] (+)= sum_s lhs_s[m x k_s] * rhs_s[k_s x n]` with the shifts on the right:
/// segment `s = (off, k_s)` is `rhs` moved by `off` elements, and the `lhs_s` are consecutive
/// column blocks of `lhs`. This is the transposed form of a shifted convolution (output
/// channels as rows, pixels as columns): the vectors run over pixels, so a channel count that
/// is not a multiple of the vector width wastes no lanes.
pub(crate) fn sgemm_segs_rhs(
    m: usize,
    n: usize,
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    accumulate: bool,
    lhs: MatRef<'_>,
    segs: &[(usize, usize)],
    rhs: MatRef<'_>,
) {
    segs_product::<true>(m, n, dst, dst_off, dst_rs, accumulate, lhs, segs, rhs);
}

/// The operands of segment `(off, k)` that starts `at` steps into the reduction: the shifted
/// side moves by `off`, the other runs on by `at` steps.
fn seg_views<'a, const SHIFT_RHS: bool>(
    lhs: MatRef<'a>,
    rhs: MatRef<'a>,
    at: usize,
    off: usize,
) -> (MatRef<'a>, MatRef<'a>) {
    if SHIFT_RHS {
        (
            MatRef {
                off: lhs.off + at * lhs.cs,
                ..lhs
            },
            MatRef {
                off: rhs.off + off,
                ..rhs
            },
        )
    } else {
        (
            MatRef {
                off: lhs.off + off,
                ..lhs
            },
            MatRef {
                off: rhs.off + at * rhs.rs,
                ..rhs
            },
        )
    }
}

/// [`sgemm_segs`] (shifts on the left) or [`sgemm_segs_rhs`] (shifts on the right).
fn segs_product<const SHIFT_RHS: bool>(
    m: usize,
    n: usize,
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    accumulate: bool,
    lhs: MatRef<'_>,
    segs: &[(usize, usize)],
    rhs: MatRef<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if rhs.cs == 1 && avx512::available() && m > 0 && n > 0 && !segs.is_empty() {
        let last = dst_off + (m - 1) * dst_rs + (n - 1);
        assert!(
            last < dst.len(),
            "gemm dst out of bounds: last index {last} >= {} (kernel geometry bug)",
            dst.len()
        );
        let mut at = 0;
        for &(off, k) in segs {
            let (l, r) = seg_views::<SHIFT_RHS>(lhs, rhs, at, off);
            l.check(m, k, "lhs segment");
            r.check(k, n, "rhs segment");
            at += k;
        }
        // SAFETY: every segment of `lhs` and `rhs` and the `dst` block were bounds-checked
        // above; `dst` is a unique borrow; AVX-512F was detected.
        unsafe {
            avx512::gemm_segs::<SHIFT_RHS>(
                m,
                n,
                dst.as_mut_ptr().add(dst_off),
                dst_rs,
                accumulate,
                lhs.data.as_ptr().add(lhs.off),
                lhs.rs,
                lhs.cs,
                segs,
                rhs.data.as_ptr().add(rhs.off),
                rhs.rs,
            );
        }
        return;
    }
    segs_generic::<SHIFT_RHS>(m, n, dst, dst_off, dst_rs, accumulate, lhs, segs, rhs);
}

/// [`segs_product`] as one [`sgemm`] per segment (bounds-checked there).
fn segs_generic<const SHIFT_RHS: bool>(
    m: usize,
    n: usize,
    dst: &mut [f32],
    dst_off: usize,
    dst_rs: usize,
    accumulate: bool,
    lhs: MatRef<'_>,
    segs: &[(usize, usize)],
    rhs: MatRef<'_>,
) {
    if segs.is_empty() {
        sgemm(m, n, 0, dst, dst_off, dst_rs, accumulate, lhs, rhs);
    }
    let mut at = 0;
    for (s, &(off, k)) in segs.iter().enumerate() {
        let (l, r) = seg_views::<SHIFT_RHS>(lhs, rhs, at, off);
        sgemm(m, n, k, dst, dst_off, dst_rs, accumulate || s > 0, l, r);
        at += k;
    }
}

/// `dst[m x n] = sum_s lhs_s[m x k_s] * (mask_s . rhs_s)[k_s x n]`: [`sgemm_segs_rhs`] (the
/// shifts on the right, `lhs_s` consecutive column blocks) where column `c` of segment `s`
/// counts only if bit `c % 16` of `masks[s * n.div_ceil(16) + c / 16]` is set; a masked-off
/// element is never read, so a shifted view may reach past its plane there. This is a
/// transposed convolution over unpadded channel-major planes: a kernel tap is a shifted view,
/// and the masks drop the pixels whose tap falls outside the image.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_masked_rhs(
    m: usize,
    n: usize,
    dst: &mut [f32],
    dst_rs: usize,
    lhs: MatRef<'_>,
    segs: &[(usize, usize)],
    masks: &[u16],
    rhs: MatRef<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    let nvec = n.div_ceil(16);
    assert_eq!(
        masks.len(),
        segs.len() * nvec,
        "one mask per segment and vector"
    );
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "gemm dst out of bounds (kernel geometry bug)"
    );
    let mut at = 0;
    for &(off, k) in segs {
        let (l, r) = seg_views::<true>(lhs, rhs, at, off);
        l.check(m, k, "lhs segment");
        r.check(k, n, "rhs segment");
        at += k;
    }
    #[cfg(target_arch = "x86_64")]
    if rhs.cs == 1 && avx512::available() && !segs.is_empty() {
        // SAFETY: every segment's views and the `dst` block were bounds-checked above; `dst`
        // is a unique borrow; AVX-512F was detected.
        unsafe {
            avx512::gemm_masked(
                m,
                n,
                dst.as_mut_ptr(),
                dst_rs,
                lhs.data.as_ptr().add(lhs.off),
                lhs.rs,
                lhs.cs,
                segs,
                masks,
                rhs.data.as_ptr().add(rhs.off),
                rhs.rs,
            );
        }
        return;
    }
    for r in 0..m {
        dst[r * dst_rs..r * dst_rs + n].fill(0.0);
    }
    let mut at = 0;
    for (s, &(off, k)) in segs.iter().enumerate() {
        let (l, rv) = seg_views::<true>(lhs, rhs, at, off);
        for c in 0..n {
            if masks[s * nvec + c / 16] & (1 << (c % 16)) == 0 {
                continue;
            }
            for r in 0..m {
                let mut acc = 0.0f32;
                for t in 0..k {
                    acc += l.data[l.off + r * l.rs + t * l.cs]
                        * rv.data[rv.off + t * rv.rs + c * rv.cs];
                }
                dst[r * dst_rs + c] += acc;
            }
        }
        at += k;
    }
}

/// Reduction steps per pass over an output tile of the AVX-512 products (and of callers that
/// split a segmented reduction themselves): a pass reads at most `PASS_STEPS x 64` floats of
/// the right-hand side (32 KiB), which stay in a 48 KiB L1 (256 steps spilled to L2 at 64
/// columns: 8% slower on a 64-channel 8x8 conv).
pub(crate) const PASS_STEPS: usize = 128;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104729) % 1999) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// `dst (+)= sum_s lhs_s * rhs_s` computed naively in f64.
    fn naive(
        m: usize,
        n: usize,
        dst: &mut [f32],
        dst_rs: usize,
        accumulate: bool,
        lhs: MatRef<'_>,
        segs: &[(usize, usize)],
        rhs: MatRef<'_>,
    ) {
        for r in 0..m {
            for c in 0..n {
                let mut acc = if accumulate {
                    dst[r * dst_rs + c] as f64
                } else {
                    0.0
                };
                let mut row = 0;
                for &(off, k) in segs {
                    for t in 0..k {
                        let a = lhs.data[lhs.off + off + r * lhs.rs + t * lhs.cs];
                        let b = rhs.data[rhs.off + (row + t) * rhs.rs + c * rhs.cs];
                        acc += a as f64 * b as f64;
                    }
                    row += k;
                }
                dst[r * dst_rs + c] = acc as f32;
            }
        }
    }

    #[test]
    fn products_match_naive_on_ragged_shapes() {
        // Rows past every tile height, columns past every vector tail and 64-column block,
        // reductions past one k block; row- and column-major left operands.
        for &(m, n, k) in &[
            (1, 1, 1),
            (13, 17, 5),
            (29, 33, 300),
            (7, 70, 520),
            (50, 64, 9),
        ] {
            for &(col_major, accumulate) in &[(false, false), (true, true), (false, true)] {
                let a = data(m * k + 3, 1);
                let b = data(k * (n + 2), 2);
                let lhs = if col_major {
                    MatRef::cols(&a, 3, m)
                } else {
                    MatRef::rows(&a, 3, k)
                };
                let rhs = MatRef::rows(&b, 1, n + 2);
                let mut got = data(m * (n + 1), 3);
                let mut want = got.clone();
                sgemm(m, n, k, &mut got, 0, n + 1, accumulate, lhs, rhs);
                naive(m, n, &mut want, n + 1, accumulate, lhs, &[(0, k)], rhs);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}x{n}x{k}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn segmented_products_match_naive_and_the_generic_path() {
        // Three overlapping shifted views of one buffer, as a 3x3 conv's kernel rows.
        let (m, n, kin, ld) = (37, 21, 12, 4);
        let a = data(m * ld + 3 * 40 + kin, 4);
        let segs = [(0, kin), (40, kin), (80, kin)];
        let lhs = MatRef::rows(&a, 2, ld);
        let b = data(3 * kin * n, 5);
        let rhs = MatRef::rows(&b, 0, n);
        for accumulate in [false, true] {
            let mut fast = data(m * n, 6);
            let mut generic = fast.clone();
            let mut want = fast.clone();
            sgemm_segs(m, n, &mut fast, 0, n, accumulate, lhs, &segs, rhs);
            segs_generic::<false>(m, n, &mut generic, 0, n, accumulate, lhs, &segs, rhs);
            naive(m, n, &mut want, n, accumulate, lhs, &segs, rhs);
            for ((f, g), w) in fast.iter().zip(&generic).zip(&want) {
                assert!((f - w).abs() <= 1e-4 * (1.0 + w.abs()), "fast {f} vs {w}");
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "generic {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn right_shifted_products_match_naive() {
        // Output channels as rows (ragged counts), pixels as columns, three shifted views of a
        // channel-major buffer as the reduction's segments.
        for &(m, n, kin) in &[(11, 70, 5), (1, 16, 3), (27, 33, 12), (6, 129, 1)] {
            let ld = n + 90;
            let segs = [(0, kin), (40, kin), (87, kin)];
            let k: usize = segs.iter().map(|s| s.1).sum();
            let a = data(k * m + 2, 7);
            let b = data(kin * ld + 90, 8);
            let lhs = MatRef::cols(&a, 2, m);
            let rhs = MatRef::rows(&b, 0, ld);
            for accumulate in [false, true] {
                let mut got = data(m * (n + 3), 9);
                let mut want: Vec<f64> = got.iter().map(|&v| v as f64).collect();
                sgemm_segs_rhs(m, n, &mut got, 0, n + 3, accumulate, lhs, &segs, rhs);
                for r in 0..m {
                    for c in 0..n {
                        let mut acc = if accumulate {
                            want[r * (n + 3) + c]
                        } else {
                            0.0
                        };
                        let mut col = 0;
                        for &(off, ks) in &segs {
                            for t in 0..ks {
                                let x = a[2 + r + (col + t) * m] as f64;
                                let y = b[off + t * ld + c] as f64;
                                acc += x * y;
                            }
                            col += ks;
                        }
                        want[r * (n + 3) + c] = acc;
                    }
                }
                for r in 0..m {
                    for c in 0..n {
                        let (g, w) = (got[r * (n + 3) + c], want[r * (n + 3) + c]);
                        assert!(
                            (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{m}x{n}: ({r}, {c}) {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
