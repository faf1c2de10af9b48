//! The transposed shifted products (`ConvAlgo::ShiftedT`, forward only): pixels in the vector
//! lanes, over masked unpadded planes or zero-padded ones.

use crate::kernels::gemm::{sgemm_segs_rhs, MatRef};
use crate::kernels::scratch::with_scratch;
use crate::kernels::transpose::{planes_to_rows, rows_to_planes};

use super::epilogue::Epilogue;
use super::mask_plan::mask_plan;
use super::shift_plan::ShiftPlan;
use super::{per_image, ConvGeom, PackedConv};

/// Forward of every image over masked unpadded planes (`MaskPlan`).
pub(super) fn forward_masked(
    g: &ConvGeom,
    x: &[f32],
    w: &PackedConv,
    ep_all: Epilogue<'_>,
    y: &mut [f32],
) {
    let mp = mask_plan(g);
    per_image(g, x, ep_all, y, |xi, ep, yi| {
        with_scratch([mp.len(g.c_in), mp.out_len(g.c_out), 0], |p, d, _| {
            rows_to_planes(xi, g.c_in, mp.npix, p, mp.lead, mp.stride);
            mp.products(g, p, &w.w, d);
            planes_to_rows(
                d,
                0,
                mp.stride,
                g.c_out,
                mp.npix,
                yi,
                ep.bias,
                ep.residual,
                ep.relu,
            );
        });
    });
}

/// Forward of every image over zero-padded channel-major planes ([`ShiftPlan`]).
pub(super) fn forward_padded(
    g: &ConvGeom,
    x: &[f32],
    w: &PackedConv,
    ep_all: Epilogue<'_>,
    y: &mut [f32],
) {
    let plan = ShiftPlan::forward(g);
    let segs = transposed_segs(g, &plan);
    let m = plan.m();
    per_image(g, x, ep_all, y, |xi, ep, yi| {
        with_scratch([plan.plen * g.c_in, m * g.c_out, 0], |p, d, _| {
            plan.fill_channel_major(xi, g.c_in, p);
            transposed_products(g, &plan, &segs, p, &w.w, d);
            plan.store_channel_major(d, g.c_out, yi, ep);
        });
    });
}

/// The shifted products of one image transposed: `d[co][pixel]` over the padded width
/// (`c_out` rows of [`ShiftPlan::m`] pixels) from the channel-major padded input `p`. Each kernel
/// offset is one segment of the reduction, reading all input planes shifted by that offset.
/// `segs` is [`transposed_segs`] of the same geometry.
pub(super) fn transposed_products(
    g: &ConvGeom,
    plan: &ShiftPlan,
    segs: &[(usize, usize)],
    p: &[f32],
    w: &[f32],
    d: &mut [f32],
) {
    sgemm_segs_rhs(
        g.c_out,
        plan.m(),
        d,
        0,
        plan.m(),
        false,
        MatRef::cols(w, 0, g.c_out),
        segs,
        MatRef::rows(p, 0, plan.plen),
    );
}

/// The reduction segments of [`transposed_products`]: one per kernel offset, all input planes.
pub(super) fn transposed_segs(g: &ConvGeom, plan: &ShiftPlan) -> Vec<(usize, usize)> {
    plan.offs.iter().map(|&o| (o, g.c_in)).collect()
}
