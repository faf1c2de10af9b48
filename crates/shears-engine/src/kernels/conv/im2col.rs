//! im2col (`ConvAlgo::Im2col`) in blocks of output pixels: forward (tap-major blocks),
//! backward data and backward weight (pixel-major blocks).

use crate::kernels::gemm::{sgemm, sgemm_segs, MatRef, PASS_STEPS};
use crate::kernels::scratch::with_scratch;

use super::epilogue::Epilogue;
use super::{per_image, per_image_backward, ConvGeom, PackedConv};

/// Forward of every image in blocks of output pixels: each block's tap-major im2col copy
/// multiplied by the weight, then the epilogue applied in place.
pub(super) fn forward(
    g: &ConvGeom,
    x: &[f32],
    w: &PackedConv,
    ep_all: Epilogue<'_>,
    y: &mut [f32],
) {
    let (nb, kkc) = im2col_block(g);
    per_image(g, x, ep_all, y, |xi, ep, yi| {
        with_scratch([nb * kkc, 0, 0], |col, _, _| {
            let npix = g.oh * g.ow;
            let mut segs = Vec::new();
            for p0 in (0..npix).step_by(nb) {
                let m = nb.min(npix - p0);
                for gi in 0..g.groups {
                    im2col_taps(g, xi, gi, p0, m, col);
                    taps_product(g, m, col, &w.w, gi, yi, p0, &mut segs);
                }
                let (a, b) = (p0 * g.c_out, (p0 + m) * g.c_out);
                ep.part(a, b).in_place(&mut yi[a..b], g.c_out);
            }
        });
    });
}

/// Backward data of every image in blocks of output pixels: each block's output gradient
/// times the transposed weight, scattered back with col2im.
pub(super) fn backward_data(
    g: &ConvGeom,
    dy: &[f32],
    w: &PackedConv,
    dx: &mut [f32],
    accumulate: bool,
) {
    let (nb, kkc) = im2col_block(g);
    per_image_backward(g, dy, dx, |dyi, dxi| {
        if !accumulate {
            dxi.fill(0.0);
        }
        with_scratch([nb * kkc, 0, 0], |col, _, _| {
            let npix = g.oh * g.ow;
            for p0 in (0..npix).step_by(nb) {
                let m = nb.min(npix - p0);
                for gi in 0..g.groups {
                    sgemm(
                        m,
                        kkc,
                        g.cog(),
                        col,
                        0,
                        kkc,
                        false,
                        MatRef::rows(dyi, p0 * g.c_out + gi * g.cog(), g.c_out),
                        MatRef::rows(&w.wc, gi * g.cog() * kkc, kkc),
                    );
                    col2im(g, col, gi, p0, m, dxi);
                }
            }
        });
    });
}

/// Pixels per im2col block and the block's row length (`kh * kw * c_in / groups`).
fn im2col_block(g: &ConvGeom) -> (usize, usize) {
    let kkc = g.kk() * g.cig();
    let nb = (65536 / kkc.max(1)).clamp(16, 1024).min(g.oh * g.ow).max(1);
    (nb, kkc)
}

/// Input coordinate of output coordinate `o` at kernel tap `t`, if inside the image.
#[inline]
pub(super) fn in_coord(
    o: usize,
    t: usize,
    stride: usize,
    dil: usize,
    pad: usize,
    size: usize,
) -> Option<usize> {
    let v = (o * stride + t * dil) as isize - pad as isize;
    (v >= 0 && (v as usize) < size).then_some(v as usize)
}

fn im2col(g: &ConvGeom, xi: &[f32], gi: usize, p0: usize, m: usize, col: &mut [f32]) {
    let (cig, kk) = (g.cig(), g.kk());
    let kkc = kk * cig;
    for r in 0..m {
        let p = p0 + r;
        let (oy, ox) = (p / g.ow, p % g.ow);
        let row = &mut col[r * kkc..(r + 1) * kkc];
        for k in 0..kk {
            let dst = &mut row[k * cig..(k + 1) * cig];
            match (
                in_coord(oy, k / g.kw, g.stride[0], g.dil[0], g.pad[0], g.h),
                in_coord(ox, k % g.kw, g.stride[1], g.dil[1], g.pad[1], g.w),
            ) {
                (Some(iy), Some(ix)) => {
                    let s = (iy * g.w + ix) * g.c_in + gi * cig;
                    dst.copy_from_slice(&xi[s..s + cig]);
                }
                _ => dst.fill(0.0),
            }
        }
    }
}

/// [`im2col`] in tap-major order: `col[(t * m + r) * cig + c]` is input channel `c` of group
/// `gi` seen by kernel tap `t` from output pixel `p0 + r`, zero outside the image. With
/// stride 1 and one group, the output pixels of one row read consecutive input pixels, so
/// each (tap, row) is one contiguous copy instead of one copy per pixel.
fn im2col_taps(g: &ConvGeom, xi: &[f32], gi: usize, p0: usize, m: usize, col: &mut [f32]) {
    let (cig, kk) = (g.cig(), g.kk());
    let runs = g.stride[1] == 1 && g.groups == 1;
    for t in 0..kk {
        let (ky, kx) = (t / g.kw, t % g.kw);
        let tap = &mut col[t * m * cig..(t + 1) * m * cig];
        let mut r = 0;
        while r < m {
            let p = p0 + r;
            let (oy, ox) = (p / g.ow, p % g.ow);
            let run = (g.ow - ox).min(m - r);
            let dst = &mut tap[r * cig..(r + run) * cig];
            match in_coord(oy, ky, g.stride[0], g.dil[0], g.pad[0], g.h) {
                None => dst.fill(0.0),
                Some(iy) if runs => {
                    // Input column of output column `o` is `o + shift`; keep `[lo, hi)`.
                    let shift = (kx * g.dil[1]) as isize - g.pad[1] as isize;
                    let end = (ox + run) as isize;
                    let lo = (ox as isize).max(-shift).min(end);
                    let hi = end.min(g.w as isize - shift).max(lo);
                    let (a, b) = ((lo - ox as isize) as usize, (hi - ox as isize) as usize);
                    dst[..a * cig].fill(0.0);
                    if b > a {
                        let s = (iy * g.w + (lo + shift) as usize) * g.c_in;
                        dst[a * cig..b * cig].copy_from_slice(&xi[s..s + (b - a) * cig]);
                    }
                    dst[b * cig..].fill(0.0);
                }
                Some(iy) => {
                    for (j, d) in dst.chunks_exact_mut(cig).enumerate() {
                        match in_coord(ox + j, kx, g.stride[1], g.dil[1], g.pad[1], g.w) {
                            Some(ix) => {
                                let s = (iy * g.w + ix) * g.c_in + gi * cig;
                                d.copy_from_slice(&xi[s..s + cig]);
                            }
                            None => d.fill(0.0),
                        }
                    }
                }
            }
            r += run;
        }
    }
}

/// `y[p0.., group gi] = col x W_gi` for a tap-major [`im2col_taps`] block of `m` pixels: the
/// reduction runs over the taps' blocks as segments of one product, in passes of
/// [`PASS_STEPS`] steps (as the plain products split theirs). `segs` is reused scratch.
#[allow(clippy::too_many_arguments)]
fn taps_product(
    g: &ConvGeom,
    m: usize,
    col: &[f32],
    w: &[f32],
    gi: usize,
    yi: &mut [f32],
    p0: usize,
    segs: &mut Vec<(usize, usize)>,
) {
    let (cig, cog) = (g.cig(), g.cog());
    let total = g.kk() * cig;
    let mut q = 0;
    while q < total {
        let end = (q + PASS_STEPS).min(total);
        segs.clear();
        let mut s = q;
        while s < end {
            let (t, c0) = (s / cig, s % cig);
            let len = (cig - c0).min(end - s);
            segs.push((t * m * cig + c0, len));
            s += len;
        }
        sgemm_segs(
            m,
            cog,
            yi,
            p0 * g.c_out + gi * cog,
            g.c_out,
            q > 0,
            MatRef::rows(col, 0, cig),
            segs,
            MatRef::rows(w, gi * total * cog + q * cog, cog),
        );
        q = end;
    }
}

fn col2im(g: &ConvGeom, col: &[f32], gi: usize, p0: usize, m: usize, dxi: &mut [f32]) {
    let (cig, kk) = (g.cig(), g.kk());
    let kkc = kk * cig;
    for r in 0..m {
        let p = p0 + r;
        let (oy, ox) = (p / g.ow, p % g.ow);
        let row = &col[r * kkc..(r + 1) * kkc];
        for k in 0..kk {
            if let (Some(iy), Some(ix)) = (
                in_coord(oy, k / g.kw, g.stride[0], g.dil[0], g.pad[0], g.h),
                in_coord(ox, k % g.kw, g.stride[1], g.dil[1], g.pad[1], g.w),
            ) {
                let s = (iy * g.w + ix) * g.c_in + gi * cig;
                for (d, v) in dxi[s..s + cig].iter_mut().zip(&row[k * cig..(k + 1) * cig]) {
                    *d += *v;
                }
            }
        }
    }
}

pub(super) fn im2col_weight_grad(g: &ConvGeom, xi: &[f32], dyi: &[f32], pw: &mut [f32]) {
    let (nb, kkc) = im2col_block(g);
    with_scratch([nb * kkc, 0, 0], |col, _, _| {
        let npix = g.oh * g.ow;
        for p0 in (0..npix).step_by(nb) {
            let m = nb.min(npix - p0);
            for gi in 0..g.groups {
                im2col(g, xi, gi, p0, m, col);
                sgemm(
                    kkc,
                    g.cog(),
                    m,
                    pw,
                    gi * kkc * g.cog(),
                    g.cog(),
                    true,
                    MatRef::cols(col, 0, kkc),
                    MatRef::rows(dyi, p0 * g.c_out + gi * g.cog(), g.c_out),
                );
            }
        }
    });
}
