//! Times the forward pass of one 3x3 convolution (padding 1) run as im2col, as transposed
//! products (pixels in the vector lanes) and with the algorithm the engine picks for its
//! geometry, single-threaded, runs alternating:
//! `cargo run --release -p shears-engine --example conv_im2col -- C_IN C_OUT HW BATCH`.
//! Prints the best of 200 runs of each, in milliseconds, and MACs per second. A fifth argument
//! (0 im2col, 1 transposed, 2 picked) runs only that one, for a profiler.

use std::time::Instant;

use shears_engine::kernels::conv::{ConvAlgo, ConvGeom};
use shears_engine::{Backend, CpuBackend};
use shears_ir::Conv2d;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (&[c_in, c_out, hw, n], only) = (&args[..4.min(args.len())], args.get(4)) else {
        return Err("usage: conv_im2col C_IN C_OUT HW BATCH [ONLY]".into());
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let be = CpuBackend;
    let conv = Conv2d::new(c_in, c_out, 3).with_padding(1);
    let picked = ConvGeom::new(&conv, hw, hw).ok_or("geometry")?;
    let im2col = picked.clone().with_algo(ConvAlgo::Im2col).ok_or("im2col")?;
    let x: Vec<f32> = (0..n * picked.in_len())
        .map(|i| ((i * 7919) % 1999) as f32 / 1000.0 - 1.0)
        .collect();
    let w: Vec<f32> = (0..picked.weight_len())
        .map(|i| ((i * 104729) % 997) as f32 / 500.0 - 1.0)
        .collect();
    let mut y = vec![0.0f32; n * picked.out_len()];
    let transposed = picked
        .clone()
        .with_algo(ConvAlgo::ShiftedT)
        .ok_or("transposed")?;
    let setups = [&im2col, &transposed, &picked].map(|g| (g, be.pack_conv(g, &w)));
    let mut best = [f64::INFINITY; 3];
    for _ in 0..200 {
        for (k, ((g, p), b)) in setups.iter().zip(best.iter_mut()).enumerate() {
            if only.is_some_and(|&o| o != k) {
                continue;
            }
            let t0 = Instant::now();
            pool.install(|| be.conv2d_forward(g, n, &x, p, None, true, &mut y));
            *b = b.min(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let macs = (n * hw * hw * c_in * c_out * 9) as f64;
    println!(
        "{c_in}>{c_out} {hw}x{hw} batch {n}: im2col {:.3} ms ({:.1} GMAC/s), transposed {:.3} ms \
         ({:.1} GMAC/s), picked {:?} {:.3} ms",
        best[0],
        macs / best[0] / 1e6,
        best[1],
        macs / best[1] / 1e6,
        picked.algo,
        best[2]
    );
    Ok(())
}
