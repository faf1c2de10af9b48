//! Times the depthwise convolutions of MobileNetV2 (and two MnasNet 5x5 ones) at 32x32 inputs:
//! the old direct loops (`ConvAlgo::Direct`, `kernels/conv/direct.rs`) against the vectorised
//! kernels (`ConvAlgo::Depthwise`, `kernels/conv/depthwise.rs`, the default for these
//! geometries), forward, backward data and backward weight, side by side
//! in one process with the runs alternating, so a change of machine load hits both:
//! `cargo run --release -p shears-engine --example dwconv_bench -- [THREADS] [BATCH...]`
//! (defaults: 2 threads, batches 1 and 128). Prints one JSON object per layer, batch and pass
//! with the median and the minimum of the timed runs in milliseconds (on a loaded machine the
//! minimum is the run least disturbed by other processes).

use std::time::Instant;

use shears_engine::kernels::conv::{self, ConvAlgo, ConvGeom};
use shears_ir::Conv2d;

/// `(channels, input side, kernel, stride)` of each distinct depthwise layer.
const LAYERS: [(usize, usize, usize, usize); 12] = [
    (32, 16, 3, 1),
    (96, 16, 3, 2),
    (144, 8, 3, 1),
    (144, 8, 3, 2),
    (192, 4, 3, 1),
    (192, 4, 3, 2),
    (384, 2, 3, 1),
    (576, 2, 3, 1),
    (576, 2, 3, 2),
    (960, 1, 3, 1),
    (72, 8, 5, 2),
    (120, 4, 5, 1),
];

/// `(median, minimum)`.
fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0])
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer arguments: THREADS BATCH..."))
        .collect();
    let threads = args.first().copied().unwrap_or(2);
    let batches = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![1, 128]
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    for &n in &batches {
        for &(c, hw, k, s) in &LAYERS {
            let conv = Conv2d::new(c, c, k)
                .with_groups(c)
                .with_padding(k / 2)
                .with_stride(s);
            let g_new = ConvGeom::new(&conv, hw, hw).expect("geometry");
            assert_eq!(
                g_new.algo,
                ConvAlgo::Depthwise,
                "the default for depthwise convs"
            );
            let g = g_new
                .clone()
                .with_algo(ConvAlgo::Direct)
                .expect("direct runs every geometry");
            let x: Vec<f32> = (0..n * g.in_len())
                .map(|i| ((i * 7919) % 1999) as f32 / 1000.0 - 1.0)
                .collect();
            let dy: Vec<f32> = (0..n * g.out_len())
                .map(|i| ((i * 6007) % 1997) as f32 / 1000.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..g.weight_len())
                .map(|i| ((i * 104729) % 997) as f32 / 500.0 - 1.0)
                .collect();
            let bias = vec![0.1f32; c];
            let packed = conv::pack_weight(&g, &w);
            let (mut y, mut dx) = (vec![0.0f32; n * g.out_len()], vec![0.0f32; n * g.in_len()]);
            let (mut dw, mut db) = (vec![0.0f32; g.weight_len()], vec![0.0f32; c]);
            let runs = if n * g.out_len() > 100_000 { 15 } else { 61 };
            // [pass][old, new] samples.
            let mut t = vec![[Vec::new(), Vec::new()]; 3];
            for _ in 0..runs {
                for new in [false, true] {
                    let time = |f: &mut (dyn FnMut() + Send)| {
                        let t0 = Instant::now();
                        pool.install(&mut *f);
                        t0.elapsed().as_secs_f64() * 1e3
                    };
                    let f = time(&mut || {
                        if new {
                            conv::forward(&g_new, n, &x, &packed, Some(&bias), true, &mut y);
                        } else {
                            conv::forward(&g, n, &x, &packed, Some(&bias), true, &mut y);
                        }
                    });
                    let d = time(&mut || {
                        if new {
                            conv::backward_data(&g_new, n, &dy, &packed, &mut dx, false);
                        } else {
                            conv::backward_data(&g, n, &dy, &packed, &mut dx, false);
                        }
                    });
                    let wg = time(&mut || {
                        if new {
                            conv::backward_weight(&g_new, n, &x, &dy, &mut dw, Some(&mut db));
                        } else {
                            conv::backward_weight(&g, n, &x, &dy, &mut dw, Some(&mut db));
                        }
                    });
                    for (p, v) in [f, d, wg].into_iter().enumerate() {
                        t[p][new as usize].push(v);
                    }
                }
            }
            let macs = n * g.out_len() * k * k;
            for (p, name) in ["forward", "backward_data", "backward_weight"]
                .iter()
                .enumerate()
            {
                let ((old, old_min), (new, new_min)) =
                    (stats(t[p][0].clone()), stats(t[p][1].clone()));
                println!(
                    "{{\"layer\": \"dw{c}_{hw}x{hw}_k{k}_s{s}\", \"batch\": {n}, \"threads\": {threads}, \"pass\": \"{name}\", \"old_ms\": {old:.4}, \"new_ms\": {new:.4}, \"old_min_ms\": {old_min:.4}, \"new_min_ms\": {new_min:.4}, \"speedup\": {:.2}, \"speedup_min\": {:.2}, \"new_gmacs_min\": {:.2}, \"runs\": {runs}}}",
                    old / new,
                    old_min / new_min,
                    macs as f64 / new_min / 1e6
                );
            }
        }
    }
}
