//! Conv pairs run as one step: two transposed convs whose middle map stays channel-major,
//! a residual block with its identity shortcut, and blocks handing their maps over as planes.

use rayon::prelude::*;

use crate::kernels::gemm::fast_segs;
use crate::kernels::scratch::with_scratch;
use crate::kernels::transpose::{planes_to_rows, rows_to_planes};

use super::epilogue::{add_bias_and, BlockEnd, Epilogue};
use super::mask_plan::{mask_plan, MaskPlan};
use super::shift_plan::ShiftPlan;
use super::transposed::{transposed_products, transposed_segs};
use super::{ConvAlgo, ConvGeom, PackedConv};

/// Whether `g1`'s output can feed `g2` channel-major in [`forward_chain`]: both run as
/// [`ConvAlgo::ShiftedT`] and `g2` reads exactly the map `g1` writes.
pub fn chainable(g1: &ConvGeom, g2: &ConvGeom) -> bool {
    g1.algo == ConvAlgo::ShiftedT
        && g2.algo == ConvAlgo::ShiftedT
        && g2.c_in == g1.c_out
        && (g2.h, g2.w) == (g1.oh, g1.ow)
}

/// Whether a [`chainable`] pair can also add its own input to its output
/// ([`ChainIo::residual`], a residual block with an identity shortcut): the second conv
/// gives back the first one's input shape.
pub fn residual_chainable(g1: &ConvGeom, g2: &ConvGeom) -> bool {
    if !chainable(g1, g2) || g2.c_out != g1.c_in || (g2.oh, g2.ow) != (g1.h, g1.w) {
        return false;
    }
    if MaskPlan::fits(g1) && MaskPlan::fits(g2) {
        return true;
    }
    // The result over the padded width lines up with the input planes from pixel (0, 0) on.
    let (p1, p2) = (ShiftPlan::forward(g1), ShiftPlan::forward(g2));
    p1.wp == p2.wp && p1.pt * p1.wp + p1.pl + p2.m() <= p1.plen
}

/// The geometries a residual block's two convs run with as one chain with its shortcut
/// ([`ChainIo::residual`]), both transposed, where they can be (one group, stride 1,
/// same-size maps of at most 32x32, AVX-512), even where one conv alone would rather run
/// untransposed: measured (`examples/conv_pair.rs`, one thread, batch 16), the chained block
/// handing its planes on is as fast as the two convs apart at full lanes (16>16>16 on 32x32:
/// 1.471 against 1.481 ms; 32>32>32 on 16x16: 1.403 against 1.436) and 15-19% faster where
/// one conv is ragged (15>9>15 on 32x32: 0.798 against 0.939; 15>5>15: 0.492 against 0.609).
pub fn residual_pair(g1: &ConvGeom, g2: &ConvGeom) -> Option<(ConvGeom, ConvGeom)> {
    if !fast_segs() || !MaskPlan::fits(g1) || !MaskPlan::fits(g2) {
        return None;
    }
    let t1 = g1.clone().with_algo(ConvAlgo::ShiftedT)?;
    let t2 = g2.clone().with_algo(ConvAlgo::ShiftedT)?;
    residual_chainable(&t1, &t2).then_some((t1, t2))
}

/// How a chained pair ([`forward_chain`]) meets its neighbours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainIo {
    /// Add the chain's input `x` to the second conv's result (after its bias, before its
    /// ReLU): a residual block with an identity shortcut. Needs [`residual_chainable`].
    pub residual: bool,
    /// `x` arrives as the first conv's channel-major planes (zero-padded, or masked on maps of
    /// at most 32x32; [`chain_planes_len`] floats per image), written by a previous chain's
    /// `y_planes`.
    pub x_planes: bool,
    /// Write `y` as such planes for a following chain that reads them with `x_planes`
    /// ([`planes_link`]); only with `residual`.
    pub y_planes: bool,
}

/// Floats per image of the channel-major planes (zero-padded, or masked on maps that run
/// over masked planes) that a residual chain of `g1` and `g2` reads and writes with
/// [`ChainIo::x_planes`] and [`ChainIo::y_planes`], or `None` where it cannot (not
/// [`residual_chainable`], or its two convs would lay their planes out differently).
pub fn chain_planes_len(g1: &ConvGeom, g2: &ConvGeom) -> Option<usize> {
    if !residual_chainable(g1, g2) {
        return None;
    }
    match (MaskPlan::fits(g1), MaskPlan::fits(g2)) {
        (true, true) => {
            let (p1, p2) = (mask_plan(g1), mask_plan(g2));
            p1.same_layout(&p2).then_some(p1.len(g1.c_in))
        }
        (false, false) => {
            let (p1, p2) = (ShiftPlan::forward(g1), ShiftPlan::forward(g2));
            (p1 == p2).then_some(p1.plen * g1.c_in)
        }
        _ => None,
    }
}

/// Whether the planes a residual chain starting with `from` writes are the planes a residual
/// chain starting with `to` reads (same map, kernel, padding and channels, same kind of
/// planes).
pub fn planes_link(from: &ConvGeom, to: &ConvGeom) -> bool {
    if from.c_in != to.c_in {
        return false;
    }
    match (MaskPlan::fits(from), MaskPlan::fits(to)) {
        (true, true) => mask_plan(from).same_layout(&mask_plan(to)),
        (false, false) => ShiftPlan::forward(from) == ShiftPlan::forward(to),
        _ => false,
    }
}

/// Two convolutions in a row, `y = conv2(relu(conv1(x) + b1)) (+ b2) (+ x) (then ReLU)`,
/// where the middle map feeds nothing else: it stays channel-major between the two transposed
/// products (written straight into the second conv's padded planes, with the bias and ReLU),
/// so the two layout copies around it are skipped. With [`ChainIo::residual`] the input is
/// added before the final ReLU (the end of a residual block, no separate pass), and with
/// [`ChainIo::x_planes`] / [`ChainIo::y_planes`] consecutive blocks hand their maps over as
/// planes, skipping the layout copies around the blocks as well. Same sums, in the same
/// order, as [`forward`](super::forward) calls and a separate add. Needs [`chainable`]
/// geometries.
#[allow(clippy::too_many_arguments)]
pub fn forward_chain(
    g1: &ConvGeom,
    g2: &ConvGeom,
    n: usize,
    x: &[f32],
    w1: &PackedConv,
    b1: &[f32],
    w2: &PackedConv,
    b2: Option<&[f32]>,
    relu2: bool,
    io: ChainIo,
    y: &mut [f32],
) {
    assert!(
        chainable(g1, g2),
        "forward_chain needs chainable geometries"
    );
    assert!(
        !io.residual || residual_chainable(g1, g2),
        "a residual chain gives back its input's shape"
    );
    let planes = chain_planes_len(g1, g2);
    assert!(
        !(io.x_planes || io.y_planes) || (io.residual && planes.is_some()),
        "planes in or out need a residual chain whose convs share a planes layout"
    );
    let x_len = match (io.x_planes, planes) {
        (true, Some(l)) => l,
        _ => g1.in_len(),
    };
    let y_len = match (io.y_planes, planes) {
        (true, Some(l)) => l,
        _ => g2.out_len(),
    };
    assert_eq!(x.len(), n * x_len, "conv input length");
    assert_eq!(y.len(), n * y_len, "conv output length");
    assert_eq!(b1.len(), g1.c_out, "first bias length");
    assert_eq!(w1.w.len(), g1.weight_len(), "packed conv weight length");
    assert_eq!(w2.w.len(), g2.weight_len(), "packed conv weight length");
    if let Some(b) = b2 {
        assert_eq!(b.len(), g2.c_out, "second bias length");
    }
    if n == 0 {
        return;
    }
    let chain = Chain {
        g1,
        g2,
        w1,
        b1,
        w2,
        b2,
        relu2,
        io,
        x_len,
        y_len,
    };
    if MaskPlan::fits(g1) && MaskPlan::fits(g2) {
        chain_masked(&chain, x, y);
    } else {
        chain_padded(&chain, x, y);
    }
}

/// The arguments of a checked [`forward_chain`] call, and the floats per image of its input
/// and output.
#[derive(Clone, Copy)]
struct Chain<'a> {
    g1: &'a ConvGeom,
    g2: &'a ConvGeom,
    w1: &'a PackedConv,
    b1: &'a [f32],
    w2: &'a PackedConv,
    b2: Option<&'a [f32]>,
    relu2: bool,
    io: ChainIo,
    x_len: usize,
    y_len: usize,
}

/// [`forward_chain`] over masked unpadded planes (both convs fit a `MaskPlan`).
fn chain_masked(chain: &Chain<'_>, x: &[f32], y: &mut [f32]) {
    let Chain {
        g1,
        g2,
        w1,
        b1,
        w2,
        b2,
        relu2,
        io,
        x_len,
        y_len,
    } = *chain;
    let (mp1, mp2) = (mask_plan(g1), mask_plan(g2));
    // Buffer A holds the first conv's planes, then the second's (in C for a residual
    // chain, which keeps its input for the sum at the end); B the first product, then the
    // second.
    let a_len = if io.x_planes { 0 } else { mp1.len(g1.c_in) };
    let a_len = if io.residual {
        a_len
    } else {
        a_len.max(mp2.len(g2.c_in))
    };
    let b_len = mp1.out_len(g1.c_out).max(mp2.out_len(g2.c_out));
    let c_len = if io.residual { mp2.len(g2.c_in) } else { 0 };
    // The middle map goes straight into the second conv's planes.
    let hand_over = |b: &[f32], mid: &mut [f32]| {
        let planes = &mut mid[mp2.lead..mp2.lead + mp2.stride * g2.c_in];
        for ((dst, src), &bias) in planes
            .chunks_exact_mut(mp2.stride)
            .zip(b.chunks_exact(mp1.stride))
            .zip(b1)
        {
            for (o, v) in dst[..mp2.npix].iter_mut().zip(&src[..mp1.npix]) {
                *o = (v + bias).max(0.0);
            }
        }
    };
    y.par_chunks_mut(y_len).enumerate().for_each(|(i, yi)| {
        let xi = &x[i * x_len..(i + 1) * x_len];
        with_scratch([a_len, b_len, c_len], |a, b, c| {
            if !io.residual {
                rows_to_planes(xi, g1.c_in, mp1.npix, a, mp1.lead, mp1.stride);
                mp1.products(g1, a, &w1.w, b);
                hand_over(b, a);
                mp2.products(g2, a, &w2.w, b);
                planes_to_rows(b, 0, mp2.stride, g2.c_out, mp2.npix, yi, b2, None, relu2);
                return;
            }
            let p_in: &[f32] = if io.x_planes {
                xi
            } else {
                rows_to_planes(xi, g1.c_in, mp1.npix, a, mp1.lead, mp1.stride);
                a
            };
            mp1.products(g1, p_in, &w1.w, b);
            hand_over(b, c);
            mp2.products(g2, c, &w2.w, b);
            let r = &p_in[mp1.lead..];
            let d = &mut b[..mp2.out_len(g2.c_out)];
            if io.y_planes {
                let end = BlockEnd {
                    bias: b2,
                    residual: r,
                    stride: mp1.stride,
                    relu: relu2,
                };
                mp2.store_planes(d, g2.c_out, end, yi);
            } else {
                add_bias_and(d, mp2.stride, mp2.npix, b2, r, mp1.stride);
                planes_to_rows(d, 0, mp2.stride, g2.c_out, mp2.npix, yi, None, None, relu2);
            }
        });
    });
}

/// [`forward_chain`] over zero-padded channel-major planes.
fn chain_padded(chain: &Chain<'_>, x: &[f32], y: &mut [f32]) {
    let Chain {
        g1,
        g2,
        w1,
        b1,
        w2,
        b2,
        relu2,
        io,
        x_len,
        y_len,
    } = *chain;
    let (plan1, plan2) = (ShiftPlan::forward(g1), ShiftPlan::forward(g2));
    let (segs1, segs2) = (transposed_segs(g1, &plan1), transposed_segs(g2, &plan2));
    // Buffer A holds the first conv's planes, then the second's (in C for a residual chain,
    // which keeps its input for the sum at the end); B the first product, then the second.
    let a_len = if io.x_planes { 0 } else { plan1.plen * g1.c_in };
    let a_len = if io.residual {
        a_len
    } else {
        a_len.max(plan2.plen * g2.c_in)
    };
    let b_len = (plan1.m() * g1.c_out).max(plan2.m() * g2.c_out);
    let c_len = if io.residual { plan2.plen * g2.c_in } else { 0 };
    let ep = Epilogue {
        bias: b2,
        relu: relu2,
        accumulate: false,
        residual: None,
    };
    // Offset of pixel (0, 0) in the padded planes.
    let origin = plan1.pt * plan1.wp + plan1.pl;
    y.par_chunks_mut(y_len).enumerate().for_each(|(i, yi)| {
        let xi = &x[i * x_len..(i + 1) * x_len];
        with_scratch([a_len, b_len, c_len], |a, b, c| {
            if !io.residual {
                plan1.fill_channel_major(xi, g1.c_in, a);
                transposed_products(g1, &plan1, &segs1, a, &w1.w, b);
                plan2.fill_from_planes(&b[..plan1.m() * g1.c_out], &plan1, b1, a);
                transposed_products(g2, &plan2, &segs2, a, &w2.w, b);
                plan2.store_channel_major(b, g2.c_out, yi, ep);
                return;
            }
            let p_in: &[f32] = if io.x_planes {
                xi
            } else {
                plan1.fill_channel_major(xi, g1.c_in, a);
                a
            };
            transposed_products(g1, &plan1, &segs1, p_in, &w1.w, b);
            plan2.fill_from_planes(&b[..plan1.m() * g1.c_out], &plan1, b1, c);
            transposed_products(g2, &plan2, &segs2, c, &w2.w, b);
            let m = plan2.m();
            let d = &mut b[..m * g2.c_out];
            // The residual: the input planes from pixel (0, 0) on, rows `wp` apart like the
            // result's over the padded width.
            let r = &p_in[origin..];
            if io.y_planes {
                let end = BlockEnd {
                    bias: b2,
                    residual: r,
                    stride: plan1.plen,
                    relu: relu2,
                };
                plan2.store_planes(d, g2.c_out, end, yi);
            } else {
                add_bias_and(d, m, m, b2, r, plan1.plen);
                let ep = Epilogue { bias: None, ..ep };
                plan2.store_channel_major(d, g2.c_out, yi, ep);
            }
        });
    });
}
