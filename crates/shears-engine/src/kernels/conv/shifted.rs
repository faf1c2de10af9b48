//! The shifted products (`ConvAlgo::Shifted`): stride-1 convs as one GEMM per kernel tap (or kernel
//! row) over a zero-padded copy of the image, forward, backward data and backward weight.

use crate::kernels::gemm::{fast_segs, sgemm, sgemm_segs, MatRef};
use crate::kernels::scratch::with_scratch;

use super::epilogue::Epilogue;
use super::shift_plan::ShiftPlan;
use super::{per_image, per_image_backward, ConvGeom, PackedConv};

/// Forward of every image: its shifted products over its zero-padded copy (or the image
/// itself where it needs no padding), stored with the epilogue.
pub(super) fn forward(
    g: &ConvGeom,
    x: &[f32],
    w: &PackedConv,
    ep_all: Epilogue<'_>,
    y: &mut [f32],
) {
    let plan = ShiftPlan::forward(g);
    let p_len = if plan.direct_src {
        0
    } else {
        plan.plen * g.c_in
    };
    let rows_direct = merge_rows(g) && fast_segs();
    let d_len = if plan.direct_dst || rows_direct {
        0
    } else {
        plan.m() * g.c_out
    };
    per_image(g, x, ep_all, y, |xi, ep, yi| {
        with_scratch([p_len, d_len, 0], |p, d, _| {
            let src: &[f32] = if plan.direct_src {
                xi
            } else {
                plan.fill(xi, g.c_in, p);
                p
            };
            if rows_direct {
                shifted_rows(g, &plan, src, &w.w, Dir::Forward, yi, false);
                ep.in_place(yi, g.c_out);
            } else if plan.direct_dst {
                shifted_products(g, &plan, src, &w.w, Dir::Forward, yi);
                ep.in_place(yi, g.c_out);
            } else {
                shifted_products(g, &plan, src, &w.w, Dir::Forward, d);
                plan.store(d, g.c_out, yi, ep);
            }
        });
    });
}

/// Backward data of every image: the shifted products of its padded output gradient with
/// the offsets negated and `W^T`, written or accumulated into `dx`.
pub(super) fn backward_data(
    g: &ConvGeom,
    dy: &[f32],
    w: &PackedConv,
    dx: &mut [f32],
    accumulate: bool,
) {
    let ep = Epilogue {
        accumulate,
        ..Epilogue::PLAIN
    };
    let plan = ShiftPlan::backward_data(g);
    let p_len = if plan.direct_src {
        0
    } else {
        plan.plen * g.c_out
    };
    let direct_dst = plan.direct_dst && ep.is_plain();
    let rows_direct = merge_rows(g) && fast_segs();
    let d_len = if direct_dst || rows_direct {
        0
    } else {
        plan.m() * g.c_in
    };
    per_image_backward(g, dy, dx, |dyi, dxi| {
        with_scratch([p_len, d_len, 0], |p, d, _| {
            let src: &[f32] = if plan.direct_src {
                dyi
            } else {
                plan.fill(dyi, g.c_out, p);
                p
            };
            if rows_direct {
                shifted_rows(g, &plan, src, &w.wt, Dir::BackwardData, dxi, accumulate);
            } else if direct_dst {
                shifted_products(g, &plan, src, &w.wt, Dir::BackwardData, dxi);
            } else {
                shifted_products(g, &plan, src, &w.wt, Dir::BackwardData, d);
                plan.store(d, g.c_in, dxi, ep);
            }
        });
    });
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Forward,
    BackwardData,
}

/// Whether the taps of one kernel row can be merged into one product: with one group and unit
/// horizontal dilation the `kw` taps of a kernel row read adjacent pixels of the padded
/// buffer, so the rows of a shifted view over `kw * c` channels overlap into an implicit
/// im2col along the width (no copy).
fn merge_rows(g: &ConvGeom) -> bool {
    g.groups == 1 && g.dil[1] == 1
}

/// Output pixels per GEMM block: keeps the block of the output and of each shifted view in L2.
fn block_rows(c_in: usize, c_out: usize) -> usize {
    (32768 / c_in.max(c_out).max(1)).clamp(64, 4096)
}

/// Runs the shifted products of one image into `d` (over the padded width), in blocks of
/// output rows so that the block stays in cache across the kernel offsets.
fn shifted_products(
    g: &ConvGeom,
    plan: &ShiftPlan,
    src: &[f32],
    w: &[f32],
    dir: Dir,
    d: &mut [f32],
) {
    let (cs, cd, kin, kout) = match dir {
        Dir::Forward => (g.c_in, g.c_out, g.cig(), g.cog()),
        Dir::BackwardData => (g.c_out, g.c_in, g.cog(), g.cig()),
    };
    let m_total = plan.m();
    let blk = block_rows(cs, cd);
    let kk = g.kk();
    for m0 in (0..m_total).step_by(blk) {
        let m = blk.min(m_total - m0);
        if merge_rows(g) {
            // One product per kernel row; backward data's taps run right to left, so its row
            // starts at the last tap (the weights are stored with kw reversed to match).
            // All kernel rows run as segments of one product, so the block is written once.
            let segs: Vec<(usize, usize)> = (0..g.kh)
                .map(|ky| {
                    let first = match dir {
                        Dir::Forward => ky * g.kw,
                        Dir::BackwardData => ky * g.kw + g.kw - 1,
                    };
                    ((m0 + plan.offs[first]) * cs, g.kw * kin)
                })
                .collect();
            sgemm_segs(
                m,
                kout,
                d,
                m0 * cd,
                cd,
                false,
                MatRef::rows(src, 0, cs),
                &segs,
                MatRef::rows(w, 0, kout),
            );
            continue;
        }
        for gi in 0..g.groups {
            for k in 0..kk {
                // Backward data reads the weights with kw reversed.
                let kw_idx = match dir {
                    Dir::Forward => k,
                    Dir::BackwardData => (k / g.kw) * g.kw + (g.kw - 1 - k % g.kw),
                };
                sgemm(
                    m,
                    kout,
                    kin,
                    d,
                    m0 * cd + gi * kout,
                    cd,
                    k > 0,
                    MatRef::rows(src, (m0 + plan.offs[k]) * cs + gi * kin, cs),
                    MatRef::rows(w, (gi * kk + kw_idx) * kin * kout, kout),
                );
            }
        }
    }
}

/// The merged-row shifted products of one image computed one destination row at a time
/// straight into `dst` (`hd x wd x cd`, overwritten or accumulated): no staging buffer over the
/// padded width and no copy out. Same sums in the same order as [`shifted_products`].
fn shifted_rows(
    g: &ConvGeom,
    plan: &ShiftPlan,
    src: &[f32],
    w: &[f32],
    dir: Dir,
    dst: &mut [f32],
    accumulate: bool,
) {
    let (cs, cd, kin, kout) = match dir {
        Dir::Forward => (g.c_in, g.c_out, g.cig(), g.cog()),
        Dir::BackwardData => (g.c_out, g.c_in, g.cog(), g.cig()),
    };
    let first: Vec<usize> = (0..g.kh)
        .map(|ky| match dir {
            Dir::Forward => plan.offs[ky * g.kw],
            Dir::BackwardData => plan.offs[ky * g.kw + g.kw - 1],
        })
        .collect();
    let mut segs = vec![(0usize, g.kw * kin); g.kh];
    for y in 0..plan.hd {
        for (s, f) in segs.iter_mut().zip(&first) {
            s.0 = (y * plan.wp + f) * cs;
        }
        sgemm_segs(
            plan.wd,
            kout,
            dst,
            y * plan.wd * cd,
            cd,
            accumulate,
            MatRef::rows(src, 0, cs),
            &segs,
            MatRef::rows(w, 0, kout),
        );
    }
}

/// Adds the weight gradient of `imgs` consecutive images to `pw`.
pub(super) fn shifted_weight_grad(
    g: &ConvGeom,
    plan: &ShiftPlan,
    x: &[f32],
    dy: &[f32],
    imgs: usize,
    pw: &mut [f32],
) {
    // Unpadded 1x1-like geometries: the images are already laid end to end.
    let direct = plan.direct_src && plan.direct_dst && plan.plen == plan.m();
    // Per image: `plen` pixels of padded input, and its gradient spread over the same rows.
    let stride = plan.plen;
    let max_off = *plan
        .offs
        .iter()
        .max()
        .expect("kernel has at least one offset");
    let p_len = if direct {
        0
    } else {
        (imgs * stride + max_off) * g.c_in
    };
    let d_len = if direct { 0 } else { imgs * stride * g.c_out };
    with_scratch([p_len, d_len, 0], |p, d, _| {
        let (src, dys, k): (&[f32], &[f32], usize) = if direct {
            (x, dy, imgs * plan.m())
        } else {
            p[imgs * stride * g.c_in..].fill(0.0);
            for i in 0..imgs {
                let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
                plan.fill(xi, g.c_in, &mut p[i * stride * g.c_in..]);
                let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
                let di = &mut d[i * stride * g.c_out..(i + 1) * stride * g.c_out];
                plan.spread(dyi, g.c_out, di);
                di[plan.m() * g.c_out..].fill(0.0);
            }
            // The last image's rows past `m` carry zero gradient: stop the reduction there.
            (&*p, &*d, (imgs - 1) * stride + plan.m())
        };
        let (cig, cog, kk) = (g.cig(), g.cog(), g.kk());
        if merge_rows(g) {
            for ky in 0..g.kh {
                sgemm(
                    g.kw * cig,
                    cog,
                    k,
                    pw,
                    ky * g.kw * cig * cog,
                    cog,
                    true,
                    MatRef::cols(src, plan.offs[ky * g.kw] * g.c_in, g.c_in),
                    MatRef::rows(dys, 0, g.c_out),
                );
            }
            return;
        }
        for gi in 0..g.groups {
            for kx in 0..kk {
                sgemm(
                    cig,
                    cog,
                    k,
                    pw,
                    (gi * kk + kx) * cig * cog,
                    cog,
                    true,
                    MatRef::cols(src, plan.offs[kx] * g.c_in + gi * cig, g.c_in),
                    MatRef::rows(dys, gi * cog, g.c_out),
                );
            }
        }
    });
}
