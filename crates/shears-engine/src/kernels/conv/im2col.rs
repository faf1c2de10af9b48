//! im2col (`ConvAlgo::Im2col`) in blocks of output pixels: forward (tap-major blocks),
//! backward data and backward weight (pixel-major blocks).

use rayon::prelude::*;

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
    let taps = live_taps(g);
    if g.oh * g.ow < block_target(kkc) {
        return forward_batched(g, &taps, x, w, ep_all, y);
    }
    per_image(g, x, ep_all, y, |xi, ep, yi| {
        with_scratch([nb * kkc, 0, 0], |col, _, _| {
            let npix = g.oh * g.ow;
            let mut segs = Vec::new();
            for p0 in (0..npix).step_by(nb) {
                let m = nb.min(npix - p0);
                for gi in 0..g.groups {
                    im2col_taps(g, &taps, xi, gi, p0, m, (m, 0), col);
                    taps_product(g, &taps, m, col, &w.w, gi, yi, p0, &mut segs);
                }
                let (a, b) = (p0 * g.c_out, (p0 + m) * g.c_out);
                ep.part(a, b).in_place(&mut yi[a..b], g.c_out);
            }
        });
    });
}

/// Forward over the batch's output pixels in blocks that may span several images, for maps
/// smaller than one block (`oh * ow < block_target`): per image they would run products of a
/// few rows (4x4 down to 1x1 maps: 16 to 1), each reading the whole weight. Every output row
/// is computed by exactly one block whose size depends only on the geometry and the batch.
fn forward_batched(
    g: &ConvGeom,
    taps: &[usize],
    x: &[f32],
    w: &PackedConv,
    ep_all: Epilogue<'_>,
    y: &mut [f32],
) {
    let kkc = g.kk() * g.cig();
    let npix = g.oh * g.ow;
    let rows = y.len() / g.c_out;
    // About a block's worth of rows, at least 4 blocks where the batch allows (2 threads),
    // and never fewer than 16 rows.
    let nb = block_target(kkc).min(rows.div_ceil(4)).max(16).min(rows);
    if nb == rows && g.groups == 1 && g.c_out >= 2 * COL_BLOCK {
        return forward_cols(g, taps, x, w, ep_all, y);
    }
    y.par_chunks_mut(nb * g.c_out)
        .enumerate()
        .for_each(|(b, yb)| {
            let r0 = b * nb;
            let m = yb.len() / g.c_out;
            with_scratch([m * kkc, 0, 0], |col, _, _| {
                let mut segs = Vec::new();
                for gi in 0..g.groups {
                    // The block's rows image by image: `[q, q_end)` of image `q / npix`.
                    let mut q = r0;
                    while q < r0 + m {
                        let (img, p) = (q / npix, q % npix);
                        let len = (npix - p).min(r0 + m - q);
                        let xi = &x[img * g.in_len()..(img + 1) * g.in_len()];
                        im2col_taps(g, taps, xi, gi, p, len, (m, q - r0), col);
                        q += len;
                    }
                    taps_product(g, taps, m, col, &w.w, gi, yb, 0, &mut segs);
                }
                let (a, b) = (r0 * g.c_out, (r0 + m) * g.c_out);
                ep_all.part(a, b).in_place(yb, g.c_out);
            });
        });
}

/// Output channels per product of [`forward_cols`].
const COL_BLOCK: usize = 64;

/// The batch's rows in one block (batch 1 on a small map), split by output channels instead
/// into fixed blocks of [`COL_BLOCK`], one product each, so that the threads share a layer
/// that one product of rows would leave to one thread. Every output element still comes from
/// one product over the same reduction, whatever the thread count.
fn forward_cols(
    g: &ConvGeom,
    taps: &[usize],
    x: &[f32],
    w: &PackedConv,
    ep_all: Epilogue<'_>,
    y: &mut [f32],
) {
    let kkc = g.kk() * g.cig();
    let npix = g.oh * g.ow;
    let m = y.len() / g.c_out;
    let starts: Vec<usize> = (0..g.c_out).step_by(COL_BLOCK).collect();
    let parts: Vec<Vec<f32>> = starts
        .par_iter()
        .map(|&c0| {
            let n = COL_BLOCK.min(g.c_out - c0);
            let mut part = vec![0.0f32; m * n];
            with_scratch([m * kkc, 0, 0], |col, _, _| {
                let mut q = 0;
                while q < m {
                    let (img, p) = (q / npix, q % npix);
                    let len = (npix - p).min(m - q);
                    let xi = &x[img * g.in_len()..(img + 1) * g.in_len()];
                    im2col_taps(g, taps, xi, 0, p, len, (m, q), col);
                    q += len;
                }
                let out = Cols {
                    c0,
                    n,
                    off: 0,
                    rs: n,
                };
                taps_product_cols(g, taps, m, col, &w.w, 0, &mut part, out, &mut Vec::new());
            });
            part
        })
        .collect();
    for (&c0, part) in starts.iter().zip(&parts) {
        let n = part.len() / m;
        for (r, row) in part.chunks_exact(n).enumerate() {
            y[r * g.c_out + c0..r * g.c_out + c0 + n].copy_from_slice(row);
        }
    }
    ep_all.in_place(y, g.c_out);
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
    let nb = block_target(kkc).min(g.oh * g.ow).max(1);
    (nb, kkc)
}

/// Rows of an im2col block with rows of `kkc` values: about 64k floats, 16 to 1024 rows.
fn block_target(kkc: usize) -> usize {
    (65536 / kkc.max(1)).clamp(16, 1024)
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

/// [`im2col`] in tap-major order over the taps `taps` (ascending): the value at
/// `(j * rows + row0 + r) * cig + c` of `col` is input channel `c` of group `gi` seen by kernel
/// tap `taps[j]` from output pixel `p0 + r` (`r < m`), zero outside the image, for a block of
/// `rows` rows of which these are `row0..row0 + m`. With stride 1 and one group, the output
/// pixels of one row read consecutive input pixels, so each (tap, row) is one contiguous copy
/// instead of one copy per pixel.
#[allow(clippy::too_many_arguments)]
fn im2col_taps(
    g: &ConvGeom,
    taps: &[usize],
    xi: &[f32],
    gi: usize,
    p0: usize,
    m: usize,
    (rows, row0): (usize, usize),
    col: &mut [f32],
) {
    let cig = g.cig();
    let runs = g.stride[1] == 1 && g.groups == 1;
    for (j, &t) in taps.iter().enumerate() {
        let (ky, kx) = (t / g.kw, t % g.kw);
        let at = (j * rows + row0) * cig;
        let tap = &mut col[at..at + m * cig];
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

/// `y[p0.., group gi] = col x W_gi` for a tap-major [`im2col_taps`] block of `m` pixels over
/// the taps `taps`: each run of consecutive taps is one reduction, run as segments of one
/// product in passes of [`PASS_STEPS`] steps (as the plain products split theirs), the runs
/// accumulated in order. `segs` is reused scratch.
#[allow(clippy::too_many_arguments)]
fn taps_product(
    g: &ConvGeom,
    taps: &[usize],
    m: usize,
    col: &[f32],
    w: &[f32],
    gi: usize,
    yi: &mut [f32],
    p0: usize,
    segs: &mut Vec<(usize, usize)>,
) {
    let at = p0 * g.c_out + gi * g.cog();
    let out = Cols {
        c0: 0,
        n: g.cog(),
        off: at,
        rs: g.c_out,
    };
    taps_product_cols(g, taps, m, col, w, gi, yi, out, segs);
}

/// Output channels `c0..c0 + n` of a group, written to rows of stride `rs` from `off`.
#[derive(Clone, Copy)]
struct Cols {
    c0: usize,
    n: usize,
    off: usize,
    rs: usize,
}

/// [`taps_product`] for the output channels `out.c0..out.c0 + out.n` of group `gi` only.
#[allow(clippy::too_many_arguments)]
fn taps_product_cols(
    g: &ConvGeom,
    taps: &[usize],
    m: usize,
    col: &[f32],
    w: &[f32],
    gi: usize,
    yi: &mut [f32],
    out: Cols,
    segs: &mut Vec<(usize, usize)>,
) {
    let (cig, cog) = (g.cig(), g.cog());
    let wg = gi * g.kk() * cig * cog + out.c0;
    let mut first = true;
    let mut j0 = 0;
    while j0 < taps.len() {
        // Taps `taps[j0..j1]` are consecutive kernel taps: consecutive weight rows.
        let mut j1 = j0 + 1;
        while j1 < taps.len() && taps[j1] == taps[j1 - 1] + 1 {
            j1 += 1;
        }
        let total = (j1 - j0) * cig;
        let mut q = 0;
        while q < total {
            let end = (q + PASS_STEPS).min(total);
            segs.clear();
            let mut s = q;
            while s < end {
                let (t, c0) = (j0 + s / cig, s % cig);
                let len = (cig - c0).min(end - s);
                segs.push((t * m * cig + c0, len));
                s += len;
            }
            sgemm_segs(
                m,
                out.n,
                yi,
                out.off,
                out.rs,
                !first,
                MatRef::rows(col, 0, cig),
                segs,
                MatRef::rows(w, wg + (taps[j0] * cig + q) * cog, cog),
            );
            first = false;
            q = end;
        }
        j0 = j1;
    }
    if first {
        // No tap sees the image (padding only): the product is zero.
        for r in 0..m {
            let at = out.off + r * out.rs;
            yi[at..at + out.n].fill(0.0);
        }
    }
}

/// The kernel taps that read inside the image for at least one output pixel, ascending; the
/// others only ever read padding, so their products are zero and are skipped (a 3x3 conv on
/// a 1x1 map reads only its centre tap).
fn live_taps(g: &ConvGeom) -> Vec<usize> {
    let live = |k: usize, o: usize, stride: usize, dil: usize, pad: usize, size: usize| {
        (0..o).any(|v| in_coord(v, k, stride, dil, pad, size).is_some())
    };
    (0..g.kk())
        .filter(|&t| {
            live(t / g.kw, g.oh, g.stride[0], g.dil[0], g.pad[0], g.h)
                && live(t % g.kw, g.ow, g.stride[1], g.dil[1], g.pad[1], g.w)
        })
        .collect()
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
