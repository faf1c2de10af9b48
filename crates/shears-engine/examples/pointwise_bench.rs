//! Times the 1x1 convolutions of MobileNetV2 at 32x32 inputs: the per-image products (what
//! `ConvGeom::default_algo` picks, or im2col where it now picks `ConvAlgo::Pointwise`) against
//! one product over the batch's rows (`kernels/conv/pointwise.rs`), forward, backward data and backward weight, side by side in one
//! process with the runs alternating:
//! `cargo run --release -p shears-engine --example pointwise_bench -- [THREADS] [BATCH...]`
//! (defaults: 2 threads, batches 1 and 128). Prints one JSON object per layer, batch and pass
//! with the median and the minimum of the timed runs in milliseconds.

use std::time::Instant;

use shears_engine::kernels::conv::{self, pointwise, ConvAlgo, ConvGeom};
use shears_ir::Conv2d;

/// `(c_in, c_out, map side)`.
const LAYERS: [(usize, usize, usize); 12] = [
    (32, 16, 16),
    (16, 96, 16),
    (144, 24, 8),
    (144, 32, 4),
    (192, 32, 4),
    (192, 64, 2),
    (384, 64, 2),
    (384, 96, 2),
    (576, 96, 2),
    (576, 160, 1),
    (960, 160, 1),
    (320, 1280, 1),
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
        for &(ci, co, hw) in &LAYERS {
            let g = ConvGeom::new(&Conv2d::new(ci, co, 1), hw, hw).expect("geometry");
            let g_old = match g.algo {
                ConvAlgo::Pointwise => g.clone().with_algo(ConvAlgo::Im2col).expect("im2col"),
                _ => g.clone(),
            };
            let x: Vec<f32> = (0..n * g.in_len())
                .map(|i| ((i * 7919) % 1999) as f32 / 1000.0 - 1.0)
                .collect();
            let dy: Vec<f32> = (0..n * g.out_len())
                .map(|i| ((i * 6007) % 1997) as f32 / 1000.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..g.weight_len())
                .map(|i| ((i * 104729) % 997) as f32 / 500.0 - 1.0)
                .collect();
            let bias = vec![0.1f32; co];
            let p = conv::pack_weight(&g, &w);
            let (mut y, mut dx) = (vec![0.0f32; n * g.out_len()], vec![0.0f32; n * g.in_len()]);
            let (mut dw, mut db) = (vec![0.0f32; g.weight_len()], vec![0.0f32; co]);
            let runs = if n * (g.in_len() + g.out_len()) > 400_000 {
                15
            } else {
                61
            };
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
                            pointwise::forward(&g, n, &x, &p, Some(&bias), None, true, &mut y);
                        } else {
                            conv::forward(&g_old, n, &x, &p, Some(&bias), true, &mut y);
                        }
                    });
                    let d = time(&mut || {
                        if new {
                            pointwise::backward_data(&g, n, &dy, &p, &mut dx, false);
                        } else {
                            conv::backward_data(&g_old, n, &dy, &p, &mut dx, false);
                        }
                    });
                    let wg = time(&mut || {
                        if new {
                            pointwise::backward_weight(&g, n, &x, &dy, &mut dw, Some(&mut db));
                        } else {
                            conv::backward_weight(&g_old, n, &x, &dy, &mut dw, Some(&mut db));
                        }
                    });
                    for (k, v) in [f, d, wg].into_iter().enumerate() {
                        t[k][new as usize].push(v);
                    }
                }
            }
            let macs = n * g.out_len() * ci;
            for (k, name) in ["forward", "backward_data", "backward_weight"]
                .iter()
                .enumerate()
            {
                let ((old, old_min), (new, new_min)) =
                    (stats(t[k][0].clone()), stats(t[k][1].clone()));
                println!(
                    "{{\"layer\": \"pw{ci}_{co}_{hw}x{hw}\", \"old_algo\": \"{:?}\", \"batch\": {n}, \"threads\": {threads}, \"pass\": \"{name}\", \"old_ms\": {old:.4}, \"new_ms\": {new:.4}, \"old_min_ms\": {old_min:.4}, \"new_min_ms\": {new_min:.4}, \"speedup\": {:.2}, \"speedup_min\": {:.2}, \"new_gmacs_min\": {:.2}, \"runs\": {runs}}}",
                    g_old.algo,
                    old / new,
                    old_min / new_min,
                    macs as f64 / new_min / 1e6
                );
            }
        }
    }
}
