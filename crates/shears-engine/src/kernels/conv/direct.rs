//! Plain loops (`ConvAlgo::Direct`) for grouped convs with tiny groups (depthwise).

use super::epilogue::Epilogue;
use super::im2col::in_coord;
use super::{per_image, per_image_backward, ConvGeom, PackedConv};

/// Forward of every image with plain loops, then the epilogue applied in place.
pub(super) fn forward(
    g: &ConvGeom,
    x: &[f32],
    w: &PackedConv,
    ep_all: Epilogue<'_>,
    y: &mut [f32],
) {
    per_image(g, x, ep_all, y, |xi, ep, yi| {
        direct_forward(g, xi, &w.w, yi);
        ep.in_place(yi, g.c_out);
    });
}

/// Backward data of every image with plain loops.
pub(super) fn backward_data(
    g: &ConvGeom,
    dy: &[f32],
    w: &PackedConv,
    dx: &mut [f32],
    accumulate: bool,
) {
    per_image_backward(g, dy, dx, |dyi, dxi| {
        if !accumulate {
            dxi.fill(0.0);
        }
        direct_backward_data(g, dyi, &w.w, dxi);
    });
}

/// Visits every (output pixel, kernel offset, input pixel) triple inside the image.
#[inline]
fn for_each_tap(g: &ConvGeom, mut f: impl FnMut(usize, usize, usize)) {
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let p = oy * g.ow + ox;
            for k in 0..g.kk() {
                if let (Some(iy), Some(ix)) = (
                    in_coord(oy, k / g.kw, g.stride[0], g.dil[0], g.pad[0], g.h),
                    in_coord(ox, k % g.kw, g.stride[1], g.dil[1], g.pad[1], g.w),
                ) {
                    f(p, k, iy * g.w + ix);
                }
            }
        }
    }
}

fn direct_forward(g: &ConvGeom, xi: &[f32], w: &[f32], yi: &mut [f32]) {
    yi.fill(0.0);
    let (cig, cog) = (g.cig(), g.cog());
    for_each_tap(g, |p, k, q| {
        let xr = &xi[q * g.c_in..(q + 1) * g.c_in];
        let yr = &mut yi[p * g.c_out..(p + 1) * g.c_out];
        for gi in 0..g.groups {
            for ci in 0..cig {
                let xv = xr[gi * cig + ci];
                let wr = &w[g.packed(gi, k, ci, 0)..g.packed(gi, k, ci, 0) + cog];
                for (yv, wv) in yr[gi * cog..(gi + 1) * cog].iter_mut().zip(wr) {
                    *yv += xv * *wv;
                }
            }
        }
    });
}

fn direct_backward_data(g: &ConvGeom, dyi: &[f32], w: &[f32], dxi: &mut [f32]) {
    let (cig, cog) = (g.cig(), g.cog());
    for_each_tap(g, |p, k, q| {
        let dyr = &dyi[p * g.c_out..(p + 1) * g.c_out];
        let dxr = &mut dxi[q * g.c_in..(q + 1) * g.c_in];
        for gi in 0..g.groups {
            for ci in 0..cig {
                let wr = &w[g.packed(gi, k, ci, 0)..g.packed(gi, k, ci, 0) + cog];
                let mut acc = 0.0;
                for (dv, wv) in dyr[gi * cog..(gi + 1) * cog].iter().zip(wr) {
                    acc += *dv * *wv;
                }
                dxr[gi * cig + ci] += acc;
            }
        }
    });
}

pub(super) fn direct_weight_grad(g: &ConvGeom, xi: &[f32], dyi: &[f32], pw: &mut [f32]) {
    let (cig, cog) = (g.cig(), g.cog());
    for_each_tap(g, |p, k, q| {
        let dyr = &dyi[p * g.c_out..(p + 1) * g.c_out];
        let xr = &xi[q * g.c_in..(q + 1) * g.c_in];
        for gi in 0..g.groups {
            for ci in 0..cig {
                let xv = xr[gi * cig + ci];
                let o = g.packed(gi, k, ci, 0);
                for (wv, dv) in pw[o..o + cog]
                    .iter_mut()
                    .zip(&dyr[gi * cog..(gi + 1) * cog])
                {
                    *wv += xv * *dv;
                }
            }
        }
    });
}
