//! Tests of the depthwise kernels against a direct reference.

use shears_ir::Conv2d;

use super::*;
use crate::kernels::conv::{self, ConvAlgo};

/// Relative tolerance between algorithms: different summation orders and fused
/// multiply-adds, not bit-exact.
const ALGO_TOL: f32 = 1e-5;
/// Relative tolerance of central differences: the convolution is linear in `x` and `w`,
/// so the difference quotient is exact up to f32 rounding of the sums.
const FD_TOL: f32 = 2e-3;

fn rand_vec(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f32, |a, v| a.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * scale,
            "{what}: element {i}: {a} vs {b} (scale {scale})"
        );
    }
}

/// Depthwise geometries: MobileNet-like shapes at small maps, ragged channel counts
/// (tails of 8 and 3 lanes), 5x5 kernels, stride 2, odd and asymmetric padding, dilation
/// and a channel multiplier.
fn cases() -> Vec<(Conv2d, usize, usize)> {
    let dw = |c: usize, k: usize| Conv2d::new(c, c, k).with_groups(c);
    vec![
        (dw(16, 3).with_padding(1), 8, 8),
        (dw(24, 3).with_padding(1).with_stride(2), 9, 7),
        (dw(96, 3).with_padding(1).with_stride(2), 16, 16),
        (dw(144, 3).with_padding(1), 4, 4),
        (dw(160, 3).with_padding(1), 1, 1),
        (dw(67, 5).with_padding(2), 6, 5),
        (dw(40, 5).with_padding(2).with_stride(2), 7, 7),
        (dw(32, 3).with_padding4([0, 1, 1, 0]).with_stride(2), 6, 6),
        (dw(35, 3).with_padding(2).with_dilation(2), 5, 6),
        (dw(19, 3), 5, 5),
        (Conv2d::new(8, 24, 3).with_groups(8).with_padding(1), 5, 4),
        (Conv2d::new(5, 10, 3).with_groups(5).with_stride(2), 7, 7),
    ]
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Portable];
    if Isa::detect() != Isa::Portable {
        v.push(Isa::detect());
    }
    v
}

#[test]
fn matches_direct_loops() {
    let mut seed = 7;
    for (conv, h, w) in cases() {
        let g = ConvGeom::new(&conv, h, w)
            .unwrap()
            .with_algo(ConvAlgo::Direct)
            .unwrap();
        let n = 3;
        let x = rand_vec(&mut seed, n * g.in_len());
        let oihw = rand_vec(&mut seed, g.weight_len());
        let bias = rand_vec(&mut seed, g.c_out);
        let res = rand_vec(&mut seed, n * g.out_len());
        let dy = rand_vec(&mut seed, n * g.out_len());
        let prior = rand_vec(&mut seed, n * g.in_len());
        let packed = conv::pack_weight(&g, &oihw);
        let taps = taps_from_packed(&g, &packed.w);

        let mut want_y = vec![0.0; n * g.out_len()];
        conv::forward_add(
            &g,
            n,
            &x,
            &packed,
            Some(&bias),
            Some(&res),
            true,
            &mut want_y,
        );
        let mut want_dx = prior.clone();
        conv::backward_data(&g, n, &dy, &packed, &mut want_dx, true);
        let (mut want_dw, mut want_db) = (vec![0.0; g.weight_len()], vec![0.0; g.c_out]);
        conv::backward_weight(&g, n, &x, &dy, &mut want_dw, Some(&mut want_db));

        for isa in isas() {
            let what = format!("{conv:?} at {h}x{w}, {isa:?}");
            let mut y = vec![f32::NAN; n * g.out_len()];
            forward_isa(isa, &g, n, &x, &taps, Some(&bias), Some(&res), true, &mut y);
            assert_close(&format!("forward {what}"), &y, &want_y, ALGO_TOL);

            let mut dx = prior.clone();
            backward_data_isa(isa, &g, n, &dy, &taps, &mut dx, true);
            assert_close(&format!("dx (+) {what}"), &dx, &want_dx, ALGO_TOL);
            let mut dx = vec![f32::NAN; n * g.in_len()];
            backward_data_isa(isa, &g, n, &dy, &taps, &mut dx, false);
            let want: Vec<f32> = want_dx.iter().zip(&prior).map(|(a, b)| a - b).collect();
            assert_close(&format!("dx {what}"), &dx, &want, ALGO_TOL);

            let (mut dw, mut db) = (vec![f32::NAN; g.weight_len()], vec![f32::NAN; g.c_out]);
            backward_weight_isa(isa, &g, n, &x, &dy, &mut dw, Some(&mut db));
            assert_close(&format!("dw {what}"), &dw, &want_dw, ALGO_TOL);
            assert_close(&format!("db {what}"), &db, &want_db, ALGO_TOL);
        }
    }
}

/// `sum(conv(x, w) * r)` in f64 over the depthwise forward kernel.
fn loss(g: &ConvGeom, n: usize, x: &[f32], taps: &[f32], r: &[f32]) -> f64 {
    let mut y = vec![0.0; n * g.out_len()];
    forward(g, n, x, taps, None, None, false, &mut y);
    y.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}

#[test]
fn backward_matches_finite_differences() {
    let mut seed = 11;
    for (conv, h, w) in cases() {
        let g = ConvGeom::new(&conv, h, w).unwrap();
        let n = 2;
        let x = rand_vec(&mut seed, n * g.in_len());
        let taps = rand_vec(&mut seed, g.weight_len());
        let r = rand_vec(&mut seed, n * g.out_len());
        let mut dx = vec![0.0; x.len()];
        backward_data(&g, n, &r, &taps, &mut dx, false);
        let mut dw_packed = vec![0.0; g.weight_len()];
        backward_weight(&g, n, &x, &r, &mut dw_packed, None);
        let dw = taps_from_packed(&g, &dw_packed);
        let eps = 0.05f32;
        let fd = |i: usize, of_x: bool| {
            let (mut xp, mut tp) = (x.clone(), taps.clone());
            let v = if of_x { &mut xp[i] } else { &mut tp[i] };
            *v += eps;
            let up = loss(&g, n, &xp, &tp, &r);
            let v = if of_x { &mut xp[i] } else { &mut tp[i] };
            *v -= 2.0 * eps;
            let down = loss(&g, n, &xp, &tp, &r);
            ((up - down) / (2.0 * eps as f64)) as f32
        };
        let scale_x = dx.iter().fold(1.0f32, |a, v| a.max(v.abs()));
        for i in (0..x.len()).step_by(x.len().div_ceil(40)) {
            let want = fd(i, true);
            assert!(
                (dx[i] - want).abs() <= FD_TOL * scale_x,
                "{conv:?} at {h}x{w}: dx[{i}] {} vs finite difference {want}",
                dx[i]
            );
        }
        let scale_w = dw.iter().fold(1.0f32, |a, v| a.max(v.abs()));
        for i in (0..dw.len()).step_by(dw.len().div_ceil(40)) {
            let want = fd(i, false);
            assert!(
                (dw[i] - want).abs() <= FD_TOL * scale_w,
                "{conv:?} at {h}x{w}: dw[{i}] {} vs finite difference {want}",
                dw[i]
            );
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let conv = Conv2d::new(48, 48, 3).with_groups(48).with_padding(1);
    let g = ConvGeom::new(&conv, 6, 6).unwrap();
    let n = 37;
    let mut seed = 3;
    let x = rand_vec(&mut seed, n * g.in_len());
    let taps = rand_vec(&mut seed, g.weight_len());
    let dy = rand_vec(&mut seed, n * g.out_len());
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut y = vec![0.0; n * g.out_len()];
            forward(&g, n, &x, &taps, None, None, false, &mut y);
            let mut dx = vec![0.0; n * g.in_len()];
            backward_data(&g, n, &dy, &taps, &mut dx, false);
            let (mut dw, mut db) = (vec![0.0; g.weight_len()], vec![0.0; g.c_out]);
            backward_weight(&g, n, &x, &dy, &mut dw, Some(&mut db));
            (y, dx, dw, db)
        })
    };
    let one = run(1);
    for t in [2, 3] {
        let other = run(t);
        assert!(one == other, "{t} threads differ from one thread");
    }
}

#[test]
fn weight_layouts_round_trip() {
    let conv = Conv2d::new(6, 12, 3).with_groups(6);
    let g = ConvGeom::new(&conv, 4, 4).unwrap();
    let packed: Vec<f32> = (0..g.weight_len()).map(|i| i as f32).collect();
    let taps = taps_from_packed(&g, &packed);
    // Tap 1 of output channel 3 (group 1, second copy): packed (1 * 9 + 1) * 2 + 1.
    assert_eq!(taps[12 + 3], ((9 + 1) * 2 + 1) as f32);
    let mut back = vec![0.0; packed.len()];
    packed_from_taps(&g, &taps, &mut back);
    assert_eq!(back, packed);
    let oihw: Vec<f32> = (0..g.weight_len()).map(|i| (i * 7 % 11) as f32).collect();
    let via_packed = taps_from_packed(&g, &conv::pack_weight(&g, &oihw).w);
    assert_eq!(pack_taps(&g, &oihw), via_packed);
}
