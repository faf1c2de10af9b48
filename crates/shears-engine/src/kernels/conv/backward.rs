//! The backward entry points: backward data and backward weight of `n` images, per algorithm.

use rayon::prelude::*;

use crate::kernels::par::{chunk_len, reduce_partials};

use super::mask_plan::MaskPlan;
use super::shift_plan::ShiftPlan;
use super::{direct, im2col, shifted, ConvAlgo, ConvGeom, PackedConv};

/// The algorithm of the backward passes: a transposed conv on small maps (at most 100 pixels,
/// where the untransposed pick is im2col too) runs them as im2col, which suits small maps
/// better than the shifted products; on larger maps they run shifted.
fn backward_algo(g: &ConvGeom) -> ConvAlgo {
    if g.algo == ConvAlgo::ShiftedT && MaskPlan::fits(g) && g.h * g.w <= 100 {
        ConvAlgo::Im2col
    } else {
        g.algo
    }
}

/// Backward data of `n` images: `dx (+)= conv^T(dy, w)`.
pub fn backward_data(
    g: &ConvGeom,
    n: usize,
    dy: &[f32],
    w: &PackedConv,
    dx: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(dy.len(), n * g.out_len(), "conv output gradient length");
    assert_eq!(dx.len(), n * g.in_len(), "conv input gradient length");
    if n == 0 {
        return;
    }
    match backward_algo(g) {
        ConvAlgo::Shifted | ConvAlgo::ShiftedT => shifted::backward_data(g, dy, w, dx, accumulate),
        ConvAlgo::Im2col => im2col::backward_data(g, dy, w, dx, accumulate),
        ConvAlgo::Direct => direct::backward_data(g, dy, w, dx, accumulate),
    }
}

/// Backward weight of `n` images: `dw = sum_images x^T * dy` in the packed layout, and
/// `db = sum dy` when asked. Both overwrite their outputs.
pub fn backward_weight(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    assert_eq!(x.len(), n * g.in_len(), "conv input length");
    assert_eq!(dy.len(), n * g.out_len(), "conv output gradient length");
    assert_eq!(dw.len(), g.weight_len(), "conv weight gradient length");
    let wl = g.weight_len();
    let bl = if db.is_some() { g.c_out } else { 0 };
    let part = wl + bl;
    let per = chunk_len(n);
    let n_chunks = n.div_ceil(per);
    let mut partials = vec![0.0f32; n_chunks * part];
    let algo = backward_algo(g);
    let plan = algo.is_shifted().then(|| ShiftPlan::forward(g));
    partials
        .par_chunks_mut(part)
        .enumerate()
        .for_each(|(ci, pw)| {
            pw.fill(0.0);
            let (pw, pb) = pw.split_at_mut(wl);
            let (i0, i1) = (ci * per, ((ci + 1) * per).min(n));
            if let Some(plan) = plan.as_ref() {
                // Several small images per product: their padded buffers laid end to end make one
                // longer reduction (rows between images carry a zero gradient).
                let group = (2048 / plan.plen.max(1)).clamp(1, 16);
                for j0 in (i0..i1).step_by(group) {
                    let j1 = (j0 + group).min(i1);
                    shifted::shifted_weight_grad(
                        g,
                        plan,
                        &x[j0 * g.in_len()..j1 * g.in_len()],
                        &dy[j0 * g.out_len()..j1 * g.out_len()],
                        j1 - j0,
                        pw,
                    );
                }
            }
            for i in i0..i1 {
                let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
                let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
                match algo {
                    ConvAlgo::Shifted | ConvAlgo::ShiftedT => {}
                    ConvAlgo::Im2col => im2col::im2col_weight_grad(g, xi, dyi, pw),
                    ConvAlgo::Direct => direct::direct_weight_grad(g, xi, dyi, pw),
                }
                if bl > 0 {
                    for r in dyi.chunks_exact(g.c_out) {
                        for (b, v) in pb.iter_mut().zip(r) {
                            *b += *v;
                        }
                    }
                }
            }
        });
    if n_chunks == 0 {
        dw.fill(0.0);
        if let Some(db) = db {
            db.fill(0.0);
        }
        return;
    }
    // Reduce the weight and bias parts separately, each in chunk order.
    let mut wparts = Vec::with_capacity(n_chunks * wl);
    for c in 0..n_chunks {
        wparts.extend_from_slice(&partials[c * part..c * part + wl]);
    }
    reduce_partials(&wparts, wl, dw, false);
    if let Some(db) = db {
        db.fill(0.0);
        for c in 0..n_chunks {
            for (b, v) in db.iter_mut().zip(&partials[c * part + wl..(c + 1) * part]) {
                *b += *v;
            }
        }
    }
}
