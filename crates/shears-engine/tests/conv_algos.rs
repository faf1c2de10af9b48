//! Every convolution algorithm (shifted GEMMs, im2col, direct) forced onto many geometries,
//! against plain f64 loops: forward, backward data (overwrite and accumulate) and backward
//! weight and bias. The network picks one algorithm per geometry; this makes sure each one is
//! right everywhere it can run.

mod common;

use common::{assert_close, Rng};
use shears_engine::kernels::conv::{ConvAlgo, ConvGeom};
use shears_engine::{Backend, CpuBackend};
use shears_ir::Conv2d;

/// Visits `(output index, input index, weight index)` of every tap that lands inside the
/// input (NHWC activations, OIHW weight).
fn taps(g: &ConvGeom, n: usize, mut f: impl FnMut(usize, usize, usize)) {
    let (cig, cog) = (g.c_in / g.groups, g.c_out / g.groups);
    for b in 0..n {
        for o in 0..g.c_out {
            let gi = o / cog;
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for i in 0..cig {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy =
                                    (oy * g.stride[0] + ky * g.dil[0]) as isize - g.pad[0] as isize;
                                let ix =
                                    (ox * g.stride[1] + kx * g.dil[1]) as isize - g.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                    continue;
                                }
                                let yo = ((b * g.oh + oy) * g.ow + ox) * g.c_out + o;
                                let xi = ((b * g.h + iy as usize) * g.w + ix as usize) * g.c_in
                                    + gi * cig
                                    + i;
                                let wi = ((o * cig + i) * g.kh + ky) * g.kw + kx;
                                f(yo, xi, wi);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn check(conv: Conv2d, h: usize, w: usize, n: usize) {
    let base = ConvGeom::new(&conv, h, w).unwrap();
    let mut rng = Rng(h as u64 * 31 + w as u64);
    let x = rng.vec(n * base.in_len());
    let wt = rng.vec(base.weight_len());
    let bias = rng.vec(base.c_out);
    let dy = rng.vec(n * base.out_len());
    let prior = rng.vec(n * base.in_len());
    // References in f64.
    let mut y = vec![0.0f64; n * base.out_len()];
    for (k, v) in y.iter_mut().enumerate() {
        *v = bias[k % base.c_out] as f64;
    }
    let mut dx = vec![0.0f64; n * base.in_len()];
    let mut dw = vec![0.0f64; base.weight_len()];
    taps(&base, n, |yo, xi, wi| {
        y[yo] += wt[wi] as f64 * x[xi] as f64;
        dx[xi] += wt[wi] as f64 * dy[yo] as f64;
        dw[wi] += x[xi] as f64 * dy[yo] as f64;
    });
    let mut db = vec![0.0f64; base.c_out];
    for (k, v) in dy.iter().enumerate() {
        db[k % base.c_out] += *v as f64;
    }
    let relu_y: Vec<f64> = y.iter().map(|v| v.max(0.0)).collect();
    let dx_acc: Vec<f64> = dx.iter().zip(&prior).map(|(a, b)| a + *b as f64).collect();
    let be = CpuBackend;
    let mut ran = 0;
    for algo in [
        ConvAlgo::Shifted,
        ConvAlgo::ShiftedT,
        ConvAlgo::Im2col,
        ConvAlgo::Direct,
        ConvAlgo::Depthwise,
        ConvAlgo::Pointwise,
    ] {
        let Some(g) = base.clone().with_algo(algo) else {
            continue;
        };
        ran += 1;
        let what = format!("{conv:?} on {h}x{w}, {algo:?}");
        let p = be.pack_conv(&g, &wt);
        let mut out = vec![f32::NAN; n * g.out_len()];
        be.conv2d_forward(&g, n, &x, &p, Some(&bias), false, &mut out);
        assert_close(&format!("forward {what}"), &out, &y, 1e-5, 1e-5);
        be.conv2d_forward(&g, n, &x, &p, Some(&bias), true, &mut out);
        assert_close(&format!("forward+relu {what}"), &out, &relu_y, 1e-5, 1e-5);
        let mut gx = vec![f32::NAN; n * g.in_len()];
        be.conv2d_backward_data(&g, n, &dy, &p, &mut gx, false);
        assert_close(&format!("backward data {what}"), &gx, &dx, 1e-5, 1e-5);
        let mut gx = prior.clone();
        be.conv2d_backward_data(&g, n, &dy, &p, &mut gx, true);
        assert_close(
            &format!("backward data accumulate {what}"),
            &gx,
            &dx_acc,
            1e-5,
            1e-5,
        );
        let mut gwp = vec![f32::NAN; g.weight_len()];
        let mut gb = vec![f32::NAN; g.c_out];
        be.conv2d_backward_weight(&g, n, &x, &dy, &mut gwp, Some(&mut gb));
        let mut gw = vec![0.0; g.weight_len()];
        be.unpack_conv(&g, &gwp, &mut gw);
        assert_close(&format!("backward weight {what}"), &gw, &dw, 1e-4, 1e-5);
        assert_close(&format!("backward bias {what}"), &gb, &db, 1e-4, 1e-5);
    }
    assert!(ran >= 2, "at least two algorithms ran on {conv:?}");
}

#[test]
fn stride1_3x3_same() {
    check(Conv2d::new(8, 6, 3).with_padding(1), 7, 6, 5);
}

#[test]
fn stride1_3x3_valid() {
    check(Conv2d::new(5, 4, 3), 6, 7, 3);
}

#[test]
fn stride1_few_channels() {
    check(Conv2d::new(3, 4, 3).with_padding(1), 9, 8, 3);
}

#[test]
fn one_by_one_plain_and_padded() {
    check(Conv2d::new(8, 4, 1), 5, 6, 19);
    check(Conv2d::new(8, 4, 1).with_padding(1), 4, 3, 3);
    // Issue 16: many channels on tiny maps (one product over the batch's pixels).
    check(Conv2d::new(40, 24, 1), 2, 2, 21);
    check(Conv2d::new(33, 17, 1), 1, 1, 5);
}

#[test]
fn dilated_asymmetric_padding() {
    check(
        Conv2d::new(8, 8, 3)
            .with_dilation(2)
            .with_padding4([1, 0, 2, 3]),
        7,
        8,
        3,
    );
}

#[test]
fn dilation_only_in_height() {
    let mut c = Conv2d::new(6, 4, 3).with_padding(2);
    c.dilation = [2, 1];
    check(c, 6, 6, 2);
}

#[test]
fn grouped() {
    check(Conv2d::new(8, 8, 3).with_padding(1).with_groups(2), 6, 5, 3);
    check(
        Conv2d::new(12, 6, 3).with_padding(1).with_groups(3),
        5,
        5,
        2,
    );
}

#[test]
fn depthwise_and_multiplier() {
    check(Conv2d::new(6, 6, 3).with_padding(1).with_groups(6), 6, 7, 3);
    check(Conv2d::new(4, 8, 3).with_padding(1).with_groups(4), 5, 5, 2);
    // Issue 16: MobileNet/MnasNet shapes (channel tails of 8 lanes, 5x5, stride 2).
    check(
        Conv2d::new(40, 40, 5).with_padding(2).with_groups(40),
        7,
        7,
        3,
    );
    check(
        Conv2d::new(24, 24, 3)
            .with_padding(1)
            .with_stride(2)
            .with_groups(24),
        9,
        8,
        3,
    );
}

#[test]
fn large_kernels() {
    check(Conv2d::new(8, 4, 5).with_padding(2), 7, 6, 2);
    let mut c = Conv2d::new(4, 4, 1).with_padding4([1, 0, 1, 0]);
    c.kernel = [3, 1];
    check(c, 5, 4, 2);
    let mut c = Conv2d::new(4, 4, 1).with_padding4([0, 2, 0, 1]);
    c.kernel = [1, 4];
    check(c, 3, 6, 2);
}

#[test]
fn padding_wider_than_kernel() {
    check(Conv2d::new(4, 4, 3).with_padding(3), 4, 4, 2);
}

#[test]
fn strided() {
    check(Conv2d::new(8, 4, 3).with_stride(2).with_padding(1), 7, 8, 3);
    let mut c = Conv2d::new(8, 4, 3)
        .with_padding4([2, 1, 0, 1])
        .with_dilation(2);
    c.stride = [2, 1];
    check(c, 9, 6, 2);
}

#[test]
fn larger_batch_and_map() {
    // Several fixed chunks and multi-image weight-gradient groups.
    check(Conv2d::new(16, 16, 3).with_padding(1), 12, 12, 37);
    check(Conv2d::new(16, 8, 3).with_padding(1), 4, 4, 40);
}

#[test]
fn im2col_blocks_over_the_batch_and_dead_taps() {
    // Issue 16: maps smaller than one im2col block run blocks over the batch's pixels, which
    // end mid-image (37 images of 2x2 pixels), and skip the taps that only read padding (a
    // 3x3 conv on a 1x1 map reads its centre tap; on a 2x2 map with padding 2 the corner taps
    // of some rows and columns).
    check(Conv2d::new(40, 24, 3).with_padding(1), 2, 2, 37);
    check(Conv2d::new(40, 24, 3).with_padding(1), 1, 1, 21);
    check(Conv2d::new(24, 20, 3).with_padding(2), 2, 2, 5);
    check(
        Conv2d::new(40, 24, 3).with_stride(2).with_padding(1),
        3,
        3,
        19,
    );
    // One image whose rows fit one block: split by output channels (blocks of 64, ragged).
    check(Conv2d::new(24, 136, 3).with_padding(1), 2, 2, 1);
    check(Conv2d::new(16, 130, 3).with_padding(1), 1, 1, 2);
    // No tap reads the image: the output is the bias alone.
    check(Conv2d::new(4, 3, 1).with_stride(3).with_padding(1), 1, 1, 3);
}

#[test]
fn im2col_blocks_split_rows_and_taps() {
    // 48 x 9 = 432 reduction steps: im2col blocks of 151 pixels end mid-row on a 13x13 map,
    // and the product's 128-step passes end mid-tap (128 is not a multiple of 48).
    check(Conv2d::new(48, 20, 3).with_padding(1), 13, 13, 2);
    // The same with stride 2 (one copy per pixel) and with padding wider than the taps reach.
    check(
        Conv2d::new(48, 20, 3).with_stride(2).with_padding(1),
        25,
        26,
        2,
    );
    check(Conv2d::new(48, 20, 3).with_padding(2), 13, 13, 1);
}

#[test]
fn chained_transposed_convs_equal_two_convs() {
    // Same-size maps (masked planes) and a valid conv first (padded planes), ragged channels.
    let be = CpuBackend;
    for (c1, c2, pad1, hw) in [
        (Conv2d::new(9, 11, 3), Conv2d::new(11, 7, 3), 1, 10),
        (Conv2d::new(12, 13, 3), Conv2d::new(13, 5, 3), 0, 9),
    ] {
        let c1 = c1.with_padding(pad1);
        let c2 = c2.with_padding(1);
        let g1 = ConvGeom::new(&c1, hw, hw)
            .unwrap()
            .with_algo(ConvAlgo::ShiftedT)
            .unwrap();
        let g2 = ConvGeom::new(&c2, g1.oh, g1.ow)
            .unwrap()
            .with_algo(ConvAlgo::ShiftedT)
            .unwrap();
        let n = 3;
        let mut rng = Rng(hw as u64 + pad1 as u64);
        let x = rng.vec(n * g1.in_len());
        let (w1, w2) = (rng.vec(g1.weight_len()), rng.vec(g2.weight_len()));
        let (b1, b2) = (rng.vec(g1.c_out), rng.vec(g2.c_out));
        let (p1, p2) = (be.pack_conv(&g1, &w1), be.pack_conv(&g2, &w2));
        let mut mid = vec![0.0; n * g1.out_len()];
        be.conv2d_forward(&g1, n, &x, &p1, Some(&b1), true, &mut mid);
        let mut want = vec![0.0; n * g2.out_len()];
        be.conv2d_forward(&g2, n, &mid, &p2, Some(&b2), true, &mut want);
        let mut got = vec![f32::NAN; n * g2.out_len()];
        be.conv2d_chain_forward(
            &g1,
            &g2,
            n,
            &x,
            &p1,
            &b1,
            &p2,
            Some(&b2),
            true,
            Default::default(),
            &mut got,
        );
        let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        assert_close(&format!("chain {c1:?} -> {c2:?}"), &got, &want, 1e-5, 1e-5);
    }
}

/// Residual chains (`y = relu(conv2(relu(conv1(x) + b1)) + b2 + x)`) equal two convs and a
/// separate add, bit for bit; two of them in a row handing their map over as padded planes
/// equal the same two run channels-last.
#[test]
fn residual_chains_and_planes_equal_separate_convs_and_adds() {
    use shears_engine::kernels::conv::{chain_planes_len, residual_chainable, ChainIo};
    let be = CpuBackend;
    // Masked planes (8x8), padded planes at several widths, a 1x1 pair, a 5x5 pair.
    for (c, mid, k, pad, hw) in [
        (11, 7, 3, 1, 8),
        (11, 9, 3, 1, 16),
        (13, 10, 3, 1, 12),
        (9, 12, 3, 1, 20),
        (12, 11, 1, 0, 14),
        (10, 9, 5, 2, 11),
    ] {
        let geo = |ci: usize, co: usize| {
            ConvGeom::new(&Conv2d::new(ci, co, k).with_padding(pad), hw, hw)
                .unwrap()
                .with_algo(ConvAlgo::ShiftedT)
                .unwrap()
        };
        let (g1, g2) = (geo(c, mid), geo(mid, c));
        assert!(
            residual_chainable(&g1, &g2),
            "{c}>{mid} {k}x{k} on {hw}x{hw}"
        );
        let n = 3;
        let mut rng = Rng(hw as u64 * 31 + mid as u64);
        let x = rng.vec(n * g1.in_len());
        let (w1, w2) = (rng.vec(g1.weight_len()), rng.vec(g2.weight_len()));
        let (b1, b2) = (rng.vec(mid), rng.vec(c));
        let (p1, p2) = (be.pack_conv(&g1, &w1), be.pack_conv(&g2, &w2));
        // Two blocks apart: conv, conv, add, ReLU; twice.
        let block = |x: &[f32]| {
            let mut m = vec![0.0; n * g1.out_len()];
            be.conv2d_forward(&g1, n, x, &p1, Some(&b1), true, &mut m);
            let mut y = vec![0.0; n * g2.out_len()];
            be.conv2d_forward(&g2, n, &m, &p2, Some(&b2), false, &mut y);
            y.iter_mut()
                .zip(x)
                .for_each(|(y, x)| *y = (*y + x).max(0.0));
            y
        };
        let want1 = block(&x);
        let want2 = block(&want1);
        let chain = |x: &[f32], io: ChainIo, len: usize| {
            let mut y = vec![f32::NAN; n * len];
            be.conv2d_chain_forward(&g1, &g2, n, x, &p1, &b1, &p2, Some(&b2), true, io, &mut y);
            y
        };
        let res = ChainIo {
            residual: true,
            ..ChainIo::default()
        };
        let got1 = chain(&x, res, g2.out_len());
        assert!(
            got1 == want1,
            "residual chain {c}>{mid}>{c} {k}x{k} on {hw}x{hw}"
        );
        let plen = chain_planes_len(&g1, &g2).expect("same-size residual chains hand over planes");
        let out = ChainIo {
            y_planes: true,
            ..res
        };
        let planes = chain(&x, out, plen);
        let into = ChainIo {
            x_planes: true,
            ..res
        };
        let got2 = chain(&planes, into, g2.out_len());
        assert!(
            got2 == want2,
            "planes hand-over {c}>{mid}>{c} {k}x{k} on {hw}x{hw}"
        );
        // Planes in and out: the second block writes planes, a third reads them.
        let both = ChainIo {
            y_planes: true,
            ..into
        };
        let planes2 = chain(&planes, both, plen);
        let got3 = chain(&planes2, into, g2.out_len());
        assert!(
            got3 == block(&want2),
            "two hand-overs {c}>{mid}>{c} {k}x{k}"
        );
    }
}

/// A conv with the residual in its epilogue equals the conv followed by a separate add and
/// ReLU, bit for bit, with every algorithm.
#[test]
fn residual_epilogue_equals_conv_then_add() {
    let be = CpuBackend;
    for (conv, hw) in [
        (Conv2d::new(16, 16, 3).with_padding(1), 12),
        (Conv2d::new(11, 13, 3).with_padding(1), 8),
        (Conv2d::new(11, 13, 3).with_padding(1), 16),
        (Conv2d::new(8, 20, 3).with_stride(2).with_padding(1), 15),
        (Conv2d::new(12, 12, 3).with_padding(1).with_groups(12), 9),
        (Conv2d::new(24, 40, 1), 7),
    ] {
        for algo in [
            ConvAlgo::Shifted,
            ConvAlgo::ShiftedT,
            ConvAlgo::Im2col,
            ConvAlgo::Direct,
            ConvAlgo::Depthwise,
            ConvAlgo::Pointwise,
        ] {
            let Some(g) = ConvGeom::new(&conv, hw, hw).unwrap().with_algo(algo) else {
                continue;
            };
            let n = 3;
            let mut rng = Rng(hw as u64 * 7 + g.c_out as u64);
            let x = rng.vec(n * g.in_len());
            let w = be.pack_conv(&g, &rng.vec(g.weight_len()));
            let (b, r) = (rng.vec(g.c_out), rng.vec(n * g.out_len()));
            for relu in [false, true] {
                let mut want = vec![0.0; n * g.out_len()];
                be.conv2d_forward(&g, n, &x, &w, Some(&b), false, &mut want);
                for (v, r) in want.iter_mut().zip(&r) {
                    *v += r;
                    if relu {
                        *v = v.max(0.0);
                    }
                }
                let mut got = vec![f32::NAN; n * g.out_len()];
                be.conv2d_forward_add(&g, n, &x, &w, Some(&b), &r, relu, &mut got);
                assert!(
                    got == want,
                    "{conv:?} on {hw}x{hw} with {algo:?}, relu {relu}"
                );
            }
        }
    }
}
