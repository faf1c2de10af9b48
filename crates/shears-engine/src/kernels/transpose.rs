//! Layout changes between channels-last rows and channel-major planes, for the transposed
//! convolution products: with AVX-512 in 16x16 register tiles, otherwise plain loops.

/// Scatters `npix` channels-last pixels (`src[p * c + ci]`) into `c` planes:
/// `dst[ci * plane + off + p] = src[p * c + ci]`.
pub(crate) fn rows_to_planes(
    src: &[f32],
    c: usize,
    npix: usize,
    dst: &mut [f32],
    off: usize,
    plane: usize,
) {
    if c == 0 || npix == 0 {
        return;
    }
    assert!(src.len() >= npix * c, "transpose source too short");
    assert!(
        (c - 1) * plane + off + npix <= dst.len(),
        "transpose destination too short"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the bounds were checked above; AVX-512F was detected.
        unsafe { avx512::rows_to_planes(src.as_ptr(), c, npix, dst.as_mut_ptr(), off, plane) };
        return;
    }
    for ci in 0..c {
        let d = &mut dst[ci * plane + off..ci * plane + off + npix];
        for (p, v) in d.iter_mut().enumerate() {
            *v = src[p * c + ci];
        }
    }
}

/// Gathers `npix` pixels of `c` planes back into channels-last rows, adding `bias[ci]` and
/// a residual laid out like `dst` and applying ReLU:
/// `dst[p * c + ci] = f((src[ci * plane + off + p] + bias[ci]) + residual[p * c + ci])`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn planes_to_rows(
    src: &[f32],
    off: usize,
    plane: usize,
    c: usize,
    npix: usize,
    dst: &mut [f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
) {
    if c == 0 || npix == 0 {
        return;
    }
    assert!(
        (c - 1) * plane + off + npix <= src.len(),
        "transpose source too short"
    );
    assert!(dst.len() >= npix * c, "transpose destination too short");
    if let Some(b) = bias {
        assert!(b.len() >= c, "bias shorter than the channels");
    }
    if let Some(r) = residual {
        assert!(r.len() >= npix * c, "residual shorter than the destination");
    }
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the bounds were checked above; AVX-512F was detected.
        unsafe {
            avx512::planes_to_rows(
                src.as_ptr(),
                off,
                plane,
                c,
                npix,
                dst.as_mut_ptr(),
                bias.map(|b| b.as_ptr()),
                residual.map(|r| r.as_ptr()),
                relu,
            )
        };
        return;
    }
    for (p, row) in dst[..npix * c].chunks_exact_mut(c).enumerate() {
        for (ci, d) in row.iter_mut().enumerate() {
            let mut v = src[ci * plane + off + p] + bias.map_or(0.0, |b| b[ci]);
            if let Some(r) = residual {
                v += r[p * c + ci];
            }
            *d = if relu { v.max(0.0) } else { v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    /// Lane indices of the four transpose stages (`d` = 8, 4, 2, 1): for the row pair
    /// `(i, i + d)`, `LO` builds the new row `i` and `HI` the new row `i + d` with
    /// `_mm512_permutex2var_ps(row_i, idx, row_i_plus_d)`.
    const fn stage_indices() -> ([[i32; 16]; 4], [[i32; 16]; 4]) {
        let mut lo = [[0i32; 16]; 4];
        let mut hi = [[0i32; 16]; 4];
        let mut s = 0;
        while s < 4 {
            let d = 8 >> s;
            let mut j = 0;
            while j < 16 {
                if j & d == 0 {
                    lo[s][j] = j as i32;
                    hi[s][j] = (j + d) as i32;
                } else {
                    lo[s][j] = (16 + j - d) as i32;
                    hi[s][j] = (16 + j) as i32;
                }
                j += 1;
            }
            s += 1;
        }
        (lo, hi)
    }
    const STAGES: ([[i32; 16]; 4], [[i32; 16]; 4]) = stage_indices();

    /// Transposes 16 vectors in place: `r[i][j]` becomes `r[j][i]`. Four stages; stage `d`
    /// swaps bit `d` of the row index with bit `d` of the lane index.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(r: &mut [__m512; 16]) {
        for s in 0..4 {
            let d = 8 >> s;
            // SAFETY: loads of two constant 16-lane arrays.
            let (lo, hi) = unsafe {
                (
                    _mm512_loadu_si512(STAGES.0[s].as_ptr().cast()),
                    _mm512_loadu_si512(STAGES.1[s].as_ptr().cast()),
                )
            };
            for i in 0..16 {
                if i & d == 0 {
                    let (a, b) = (r[i], r[i + d]);
                    r[i] = _mm512_permutex2var_ps(a, lo, b);
                    r[i + d] = _mm512_permutex2var_ps(a, hi, b);
                }
            }
        }
    }

    /// See [`super::rows_to_planes`].
    ///
    /// # Safety
    /// AVX-512F; `src` holds `npix * c` elements and `dst` `(c - 1) * plane + off + npix`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows_to_planes(
        src: *const f32,
        c: usize,
        npix: usize,
        dst: *mut f32,
        off: usize,
        plane: usize,
    ) {
        let mut r = [_mm512_setzero_ps(); 16];
        for p0 in (0..npix).step_by(16) {
            let np = 16.min(npix - p0);
            for c0 in (0..c).step_by(16) {
                let nc = 16.min(c - c0);
                let cm = mask(nc);
                for (j, v) in r.iter_mut().enumerate() {
                    *v = if j < np {
                        // SAFETY: pixel p0 + j < npix, channels c0..c0 + nc <= c (masked).
                        unsafe { _mm512_maskz_loadu_ps(cm, src.add((p0 + j) * c + c0)) }
                    } else {
                        _mm512_setzero_ps()
                    };
                }
                // SAFETY: AVX-512F (this function's contract).
                unsafe { transpose16(&mut r) };
                let pm = mask(np);
                for (ci, v) in r.iter().enumerate().take(nc) {
                    // SAFETY: plane c0 + ci < c, pixels p0..p0 + np <= npix (masked).
                    unsafe { _mm512_mask_storeu_ps(dst.add((c0 + ci) * plane + off + p0), pm, *v) };
                }
            }
        }
    }

    /// See [`super::planes_to_rows`].
    ///
    /// # Safety
    /// AVX-512F; `src` holds `(c - 1) * plane + off + npix` elements, `dst` and `residual`
    /// (if any) `npix * c`, `bias` (if any) `c`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn planes_to_rows(
        src: *const f32,
        off: usize,
        plane: usize,
        c: usize,
        npix: usize,
        dst: *mut f32,
        bias: Option<*const f32>,
        residual: Option<*const f32>,
        relu: bool,
    ) {
        // With a residual the ReLU waits until it is added (after the transpose).
        let relu_early = relu && residual.is_none();
        let zero = _mm512_setzero_ps();
        let mut r = [zero; 16];
        for p0 in (0..npix).step_by(16) {
            let np = 16.min(npix - p0);
            let pm = mask(np);
            for c0 in (0..c).step_by(16) {
                let nc = 16.min(c - c0);
                for (ci, v) in r.iter_mut().enumerate() {
                    *v = if ci < nc {
                        // SAFETY: plane c0 + ci < c, pixels p0..p0 + np <= npix (masked);
                        // bias has c elements.
                        unsafe {
                            let mut x =
                                _mm512_maskz_loadu_ps(pm, src.add((c0 + ci) * plane + off + p0));
                            if let Some(b) = bias {
                                x = _mm512_add_ps(x, _mm512_set1_ps(*b.add(c0 + ci)));
                            }
                            if relu_early {
                                x = _mm512_max_ps(x, zero);
                            }
                            x
                        }
                    } else {
                        zero
                    };
                }
                // SAFETY: AVX-512F (this function's contract).
                unsafe { transpose16(&mut r) };
                let cm = mask(nc);
                for (j, v) in r.iter().enumerate().take(np) {
                    let at = (p0 + j) * c + c0;
                    let mut v = *v;
                    if let Some(res) = residual {
                        // SAFETY: as the store below; the residual is laid out like `dst`.
                        v = _mm512_add_ps(v, unsafe { _mm512_maskz_loadu_ps(cm, res.add(at)) });
                        if relu {
                            v = _mm512_max_ps(v, zero);
                        }
                    }
                    // SAFETY: pixel p0 + j < npix, channels c0..c0 + nc <= c (masked).
                    unsafe { _mm512_mask_storeu_ps(dst.add(at), cm, v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_plain_loops() {
        for &(c, npix) in &[(1, 1), (11, 32), (16, 16), (27, 45), (40, 7), (3, 100)] {
            let src: Vec<f32> = (0..npix * c).map(|i| i as f32 - 50.0).collect();
            let (off, plane) = (5, npix + 9);
            let mut planes = vec![f32::NAN; (c - 1) * plane + off + npix];
            rows_to_planes(&src, c, npix, &mut planes, off, plane);
            for p in 0..npix {
                for ci in 0..c {
                    assert_eq!(planes[ci * plane + off + p], src[p * c + ci], "{c}x{npix}");
                }
            }
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.5 - 3.0).collect();
            let res: Vec<f32> = (0..npix * c).map(|i| (i % 7) as f32 - 3.5).collect();
            for (relu, with_res) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut back = vec![f32::NAN; npix * c];
                let r = with_res.then_some(&res[..]);
                planes_to_rows(
                    &planes,
                    off,
                    plane,
                    c,
                    npix,
                    &mut back,
                    Some(&bias),
                    r,
                    relu,
                );
                for p in 0..npix {
                    for ci in 0..c {
                        let mut v = src[p * c + ci] + bias[ci];
                        if with_res {
                            v += res[p * c + ci];
                        }
                        let want = if relu { v.max(0.0) } else { v };
                        assert_eq!(back[p * c + ci], want, "{c}x{npix} relu {relu} {with_res}");
                    }
                }
            }
        }
    }
}
