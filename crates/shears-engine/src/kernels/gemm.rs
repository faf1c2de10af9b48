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

/// A register-blocked AVX-512 product for the engine's shapes (narrow `n` = output channels,
/// any `m`, rows of `rhs` contiguous). The `gemm` crate only ships its AVX-512 kernels behind a
/// nightly-only feature; on stable it runs AVX2, half the width this machine class offers.
///
/// Each tile keeps `MR x NV` vectors of 16 columns in registers over a block of `KC` steps of
/// the reduction, broadcasting one `lhs` element per row and loading one `rhs` row per step.
/// Summation order depends only on the shape, so results are deterministic.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::PASS_STEPS as KC;

    /// Whether the CPU runs AVX-512F (the detection is cached by `std`).
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// One output tile's operands.
    #[derive(Clone, Copy)]
    struct Tile {
        /// `(offset into a, steps)` per segment of the reduction; `b`'s rows run on across them.
        segs: *const (usize, usize),
        n_segs: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        b_rs: usize,
        d: *mut f32,
        d_rs: usize,
        load: bool,
        mask: __mmask16,
    }

    /// `MR` rows by `NV` vectors of 16 columns; the last vector's columns are `t.mask`.
    /// Segments shift `a` (and `b`'s rows run on across them), or with `SHIFT_B` they shift
    /// `b` (and `a`'s columns run on).
    #[target_feature(enable = "avx512f")]
    unsafe fn micro<const MR: usize, const NV: usize, const SHIFT_B: bool>(t: Tile) {
        // SAFETY: the caller guarantees every address below is inside the checked views;
        // masked loads and stores never touch the masked-off columns.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            if t.load {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (v, a) in row.iter_mut().enumerate() {
                        let p = t.d.add(r * t.d_rs + v * 16);
                        *a = if v + 1 == NV {
                            _mm512_maskz_loadu_ps(t.mask, p)
                        } else {
                            _mm512_loadu_ps(p)
                        };
                    }
                }
            }
            let mut bp = t.b;
            let mut ap = t.a;
            for s in 0..t.n_segs {
                let (off, k) = *t.segs.add(s);
                if SHIFT_B {
                    bp = t.b.add(off);
                } else {
                    ap = t.a.add(off);
                }
                for _ in 0..k {
                    let mut bv = [_mm512_setzero_ps(); NV];
                    for (v, b) in bv.iter_mut().enumerate() {
                        *b = if v + 1 == NV {
                            _mm512_maskz_loadu_ps(t.mask, bp.add(v * 16))
                        } else {
                            _mm512_loadu_ps(bp.add(v * 16))
                        };
                    }
                    rank_one_update(&mut acc, ap, t.a_rs, &bv);
                    ap = ap.add(t.a_cs);
                    bp = bp.add(t.b_rs);
                }
            }
            store_tile(&acc, t);
        }
    }

    /// One reduction step of a tile: `acc[r][v] += a[r * a_rs] * bv[v]` (one broadcast per
    /// row, `NV` fused multiply-adds).
    ///
    /// # Safety
    /// AVX-512F; `a` addresses `MR` elements `a_rs` apart inside the caller's checked view.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rank_one_update<const MR: usize, const NV: usize>(
        acc: &mut [[__m512; NV]; MR],
        a: *const f32,
        a_rs: usize,
        bv: &[__m512; NV],
    ) {
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: forwarded contract.
            let x = _mm512_set1_ps(unsafe { *a.add(r * a_rs) });
            for (v, acc) in row.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(x, bv[v], *acc);
            }
        }
    }

    /// Stores a tile's accumulators to `t.d`, the last vector of each row masked by `t.mask`.
    ///
    /// # Safety
    /// AVX-512F; the tile's kept lanes are inside the caller's checked view of `d`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_tile<const MR: usize, const NV: usize>(acc: &[[__m512; NV]; MR], t: Tile) {
        for (r, row) in acc.iter().enumerate() {
            for (v, a) in row.iter().enumerate() {
                // SAFETY: forwarded contract.
                unsafe {
                    let p = t.d.add(r * t.d_rs + v * 16);
                    if v + 1 == NV {
                        _mm512_mask_storeu_ps(p, t.mask, *a);
                    } else {
                        _mm512_storeu_ps(p, *a);
                    }
                }
            }
        }
    }

    /// The output tiles of an `m x n` product whose origin tile is `base`: blocks of up to 64
    /// columns (`nv` vectors, the last one's lanes masked), each cut into as few row tiles as
    /// the register budget allows, of near-equal height so that no short tail tile runs
    /// latency-bound. Calls `f(tile, rows, nv, j0)` with the tile's operands moved to it.
    fn for_each_tile(m: usize, n: usize, base: Tile, mut f: impl FnMut(Tile, usize, usize, usize)) {
        if m == 0 {
            return;
        }
        for j0 in (0..n).step_by(64) {
            let nb = 64.min(n - j0);
            let nv = nb.div_ceil(16);
            let tail = nb - (nv - 1) * 16;
            let mask: __mmask16 = if tail == 16 {
                0xffff
            } else {
                (1u16 << tail) - 1
            };
            let tiles = m.div_ceil(tile_rows(nv));
            let (base_rows, extra) = (m / tiles, m % tiles);
            let mut i0 = 0;
            for ti in 0..tiles {
                let rows = base_rows + usize::from(ti < extra);
                let t = Tile {
                    a: base.a.wrapping_add(i0 * base.a_rs),
                    b: base.b.wrapping_add(j0),
                    d: base.d.wrapping_add(i0 * base.d_rs + j0),
                    mask,
                    ..base
                };
                f(t, rows, nv, j0);
                i0 += rows;
            }
        }
    }

    /// Rows per tile for `nv` vectors of columns (accumulators stay within 24 registers).
    fn tile_rows(nv: usize) -> usize {
        match nv {
            1 => 14,
            2 => 12,
            3 => 8,
            _ => 6,
        }
    }

    macro_rules! run_tile {
        ($rows:expr, $nv:literal, $sb:expr, $t:expr, [$($r:literal),*]) => {
            match $rows {
                $($r => micro::<$r, $nv, $sb>($t),)*
                _ => unreachable!("tile rows are at most tile_rows(nv)"),
            }
        };
    }

    /// `d[m x n] (+)= a[m x k] * b[k x n]` with `a(r, c) = a[r * a_rs + c * a_cs]`,
    /// `b(r, c) = b[r * b_rs + c]`, `d(r, c) = d[r * d_rs + c]`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and every addressed element must be in bounds, with `d`
    /// not aliasing `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        d: *mut f32,
        d_rs: usize,
        accumulate: bool,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        b_rs: usize,
    ) {
        for k0 in (0..k).step_by(KC) {
            let seg = [(k0 * a_cs, KC.min(k - k0))];
            // SAFETY: forwarded contract; this segment is part of the checked `a`.
            unsafe {
                gemm_segs::<false>(
                    m,
                    n,
                    d,
                    d_rs,
                    accumulate || k0 > 0,
                    a,
                    a_rs,
                    a_cs,
                    &seg,
                    b.add(k0 * b_rs),
                    b_rs,
                );
            }
        }
    }

    /// `d[m x n] (+)= sum_s a_s[m x k_s] * b_s[k_s x n]` where segment `s = (off, k_s)` reads
    /// `a_s(r, c) = a[off + r * a_rs + c * a_cs]` and the `b_s` are consecutive row blocks of
    /// `b(r, c) = b[r * b_rs + c]`. The sum stays in registers across segments.
    ///
    /// With `SHIFT_B` the roles swap: segment `s` reads `b_s(r, c) = b[off + r * b_rs + c]`
    /// and the `a_s` are consecutive column blocks of `a(r, c) = a[r * a_rs + c * a_cs]`.
    ///
    /// # Safety
    /// As [`gemm`].
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_segs<const SHIFT_B: bool>(
        m: usize,
        n: usize,
        d: *mut f32,
        d_rs: usize,
        accumulate: bool,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        segs: &[(usize, usize)],
        b: *const f32,
        b_rs: usize,
    ) {
        let base = Tile {
            segs: segs.as_ptr(),
            n_segs: segs.len(),
            a,
            a_rs,
            a_cs,
            b,
            b_rs,
            d,
            d_rs,
            load: accumulate,
            mask: 0xffff,
        };
        for_each_tile(m, n, base, |t, rows, nv, _| {
            // SAFETY: AVX-512F is available (the caller's contract), the tile is in bounds.
            unsafe {
                match nv {
                    1 => run_tile!(
                        rows,
                        1,
                        SHIFT_B,
                        t,
                        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
                    ),
                    2 => run_tile!(rows, 2, SHIFT_B, t, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
                    3 => run_tile!(rows, 3, SHIFT_B, t, [1, 2, 3, 4, 5, 6, 7, 8]),
                    _ => run_tile!(rows, 4, SHIFT_B, t, [1, 2, 3, 4, 5, 6]),
                }
            }
        });
    }

    /// One tile of [`gemm_masked`]: `MR` rows by `NV` vectors of 16 columns, overwritten;
    /// `masks[s * mstride + v]` masks vector `v` of segment `s` (already offset to the tile's
    /// first vector), and `t.mask` the tile's last vector as well.
    #[target_feature(enable = "avx512f")]
    unsafe fn micro_masked<const MR: usize, const NV: usize>(
        t: Tile,
        masks: *const u16,
        mstride: usize,
    ) {
        // SAFETY: the caller guarantees every address below is inside the checked views for
        // the lanes its masks keep; masked-off lanes are neither loaded nor stored.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            let mut ap = t.a;
            for s in 0..t.n_segs {
                let (off, k) = *t.segs.add(s);
                let mut bp = t.b.add(off);
                let mut mk = [0u16; NV];
                for (v, m) in mk.iter_mut().enumerate() {
                    *m = *masks.add(s * mstride + v);
                    if v + 1 == NV {
                        *m &= t.mask;
                    }
                }
                for _ in 0..k {
                    let mut bv = [_mm512_setzero_ps(); NV];
                    for (v, b) in bv.iter_mut().enumerate() {
                        *b = _mm512_maskz_loadu_ps(mk[v], bp.add(v * 16));
                    }
                    rank_one_update(&mut acc, ap, t.a_rs, &bv);
                    ap = ap.add(t.a_cs);
                    bp = bp.add(t.b_rs);
                }
            }
            store_tile(&acc, t);
        }
    }

    macro_rules! run_masked {
        ($rows:expr, $nv:literal, $t:expr, $m:expr, $ms:expr, [$($r:literal),*]) => {
            match $rows {
                $($r => micro_masked::<$r, $nv>($t, $m, $ms),)*
                _ => unreachable!("tile rows are at most tile_rows(nv)"),
            }
        };
    }

    /// `d[m x n] = sum_s a_s[m x k_s] * (mask_s . b_s)[k_s x n]` where segment `s = (off, k_s)`
    /// reads `b_s(r, c) = b[off + r * b_rs + c]`, the `a_s` are consecutive column blocks of
    /// `a(r, c) = a[r * a_rs + c * a_cs]`, and `masks[s * n.div_ceil(16) + c / 16]` keeps
    /// column `c` of segment `s`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and every element a kept lane addresses must be in
    /// bounds, with `d` not aliasing `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_masked(
        m: usize,
        n: usize,
        d: *mut f32,
        d_rs: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        segs: &[(usize, usize)],
        masks: &[u16],
        b: *const f32,
        b_rs: usize,
    ) {
        let mstride = n.div_ceil(16);
        let base = Tile {
            segs: segs.as_ptr(),
            n_segs: segs.len(),
            a,
            a_rs,
            a_cs,
            b,
            b_rs,
            d,
            d_rs,
            load: false,
            mask: 0xffff,
        };
        for_each_tile(m, n, base, |t, rows, nv, j0| {
            let mp = masks[j0 / 16..].as_ptr();
            // SAFETY: AVX-512F is available (the caller's contract), the tile is in bounds
            // for its kept lanes.
            unsafe {
                match nv {
                    1 => run_masked!(
                        rows,
                        1,
                        t,
                        mp,
                        mstride,
                        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
                    ),
                    2 => run_masked!(
                        rows,
                        2,
                        t,
                        mp,
                        mstride,
                        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
                    ),
                    3 => run_masked!(rows, 3, t, mp, mstride, [1, 2, 3, 4, 5, 6, 7, 8]),
                    _ => run_masked!(rows, 4, t, mp, mstride, [1, 2, 3, 4, 5, 6]),
                }
            }
        });
    }
}

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
