//! A register-blocked AVX-512 product for the engine's shapes (narrow `n` = output channels,
//! any `m`, rows of `rhs` contiguous). The `gemm` crate only ships its AVX-512 kernels behind a
//! nightly-only feature; on stable it runs AVX2, half the width this machine class offers.
//!
//! Each tile keeps `MR x NV` vectors of 16 columns in registers over a block of `KC` steps of
//! the reduction, broadcasting one `lhs` element per row and loading one `rhs` row per step.
//! Summation order depends only on the shape, so results are deterministic.

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
