//! Times the forward pass of one 3x3 convolution under each shifted algorithm, single-threaded,
//! for a range of output-channel counts (the ragged counts pruning leaves):
//! `cargo run --release -p shears-engine --example conv_algos -- [C_IN] [HW] [BATCH]`.
//! Prints the best of 60 timed runs per algorithm (runs alternate) and their ratio.

use std::time::Instant;

use shears_engine::kernels::conv::{ConvAlgo, ConvGeom};
use shears_engine::{Backend, CpuBackend};
use shears_ir::Conv2d;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer arguments: C_IN HW BATCH"))
        .collect();
    let c_in = args.first().copied().unwrap_or(16);
    let hw = args.get(1).copied().unwrap_or(32);
    let n = args.get(2).copied().unwrap_or(8);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    let be = CpuBackend;
    println!("c_in {c_in}, {hw}x{hw}, batch {n}, one thread; best of 60 runs, ms");
    println!("c_out  default    shifted  shifted_t  t/plain  GMAC/s(plain)  GMAC/s(t)");
    let max_out = (c_in * 2).max(16);
    for c_out in (1..=max_out).filter(|c| *c % 4 == 0 || *c < 16 || c % 16 == 11) {
        let conv = Conv2d::new(c_in, c_out, 3).with_padding(1);
        let base = ConvGeom::new(&conv, hw, hw).expect("geometry");
        let x: Vec<f32> = (0..n * base.in_len())
            .map(|i| ((i * 7919) % 1999) as f32 / 1000.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..base.weight_len())
            .map(|i| ((i * 104729) % 997) as f32 / 500.0 - 1.0)
            .collect();
        let mut y = vec![0.0f32; n * base.out_len()];
        // Runs alternate between the algorithms, so a change of machine load hits both.
        let algos = [ConvAlgo::Shifted, ConvAlgo::ShiftedT];
        let setups: Vec<_> = algos
            .iter()
            .map(|&algo| {
                let g = base.clone().with_algo(algo).expect("stride 1");
                let p = be.pack_conv(&g, &w);
                (g, p)
            })
            .collect();
        let mut best = vec![f64::INFINITY; algos.len()];
        for _ in 0..60 {
            for ((g, p), b) in setups.iter().zip(best.iter_mut()) {
                let t0 = Instant::now();
                pool.install(|| be.conv2d_forward(g, n, &x, p, None, true, &mut y));
                *b = b.min(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let macs = (n * hw * hw * c_in * c_out * 9) as f64;
        println!(
            "{c_out:5}  {:9}  {:8.3}  {:9.3}  {:7.2}  {:13.1}  {:9.1}",
            format!("{:?}", base.algo),
            best[0],
            best[1],
            best[1] / best[0],
            macs / best[0] / 1e6,
            macs / best[1] / 1e6
        );
    }
}
