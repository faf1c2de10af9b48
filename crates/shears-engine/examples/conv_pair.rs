//! Times a residual block's two 3x3 convolutions (padding 1), `C > C_MID > C`, and its identity
//! shortcut, single-threaded: as two separate convs with the algorithms the engine picks (the
//! shortcut added in the second one's epilogue), and as one chained residual pair with both
//! transposed (the middle map stays channel-major), its input and output channels-last or, as
//! between two chained blocks of a stage, padded channel-major planes; runs alternating:
//! `cargo run --release -p shears-engine --example conv_pair -- C C_MID HW BATCH [THREADS]`
//! (one thread by default).
//! Prints the best of 200 runs of each, in milliseconds.

use std::time::Instant;

use shears_engine::kernels::conv::{chain_planes_len, ChainIo, ConvAlgo, ConvGeom};
use shears_engine::{Backend, CpuBackend};
use shears_ir::Conv2d;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (&[c, mid, hw, n], threads) = (&args[..4.min(args.len())], args.get(4).copied()) else {
        return Err("usage: conv_pair C C_MID HW BATCH [THREADS]".into());
    };
    let threads = threads.unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let be = CpuBackend;
    let g1 = ConvGeom::new(&Conv2d::new(c, mid, 3).with_padding(1), hw, hw).ok_or("geometry")?;
    let g2 = ConvGeom::new(&Conv2d::new(mid, c, 3).with_padding(1), hw, hw).ok_or("geometry")?;
    let t1 = g1
        .clone()
        .with_algo(ConvAlgo::ShiftedT)
        .ok_or("transposed")?;
    let t2 = g2
        .clone()
        .with_algo(ConvAlgo::ShiftedT)
        .ok_or("transposed")?;
    let data = |len: usize, m: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * m) % 1999) as f32 / 1000.0 - 1.0)
            .collect()
    };
    let x = data(n * g1.in_len(), 7919);
    let (w1, w2) = (data(g1.weight_len(), 104729), data(g2.weight_len(), 7907));
    let b1 = data(mid, 31);
    let (p1, p2) = (be.pack_conv(&g1, &w1), be.pack_conv(&g2, &w2));
    let mut h = vec![0.0f32; n * g1.out_len()];
    let (mut ya, mut yb) = (
        vec![0.0f32; n * g2.out_len()],
        vec![0.0f32; n * g2.out_len()],
    );
    let res = ChainIo {
        residual: true,
        ..ChainIo::default()
    };
    let planes = ChainIo {
        x_planes: true,
        y_planes: true,
        ..res
    };
    let plen = chain_planes_len(&t1, &t2).ok_or("no planes for this pair")?;
    // The block's input as planes (a previous chained block's output).
    let mut xp = vec![0.0f32; n * plen];
    let mut yp = vec![0.0f32; n * plen];
    be.conv2d_chain_forward(
        &t1,
        &t2,
        n,
        &x,
        &p1,
        &b1,
        &p2,
        None,
        true,
        ChainIo {
            y_planes: true,
            ..res
        },
        &mut xp,
    );
    let mut best = [f64::INFINITY; 3];
    // One pool entry for all runs: a pool hand-over per call would cost as much as a small
    // conv at batch 1.
    pool.install(|| {
        for _ in 0..200 {
            let t0 = Instant::now();
            be.conv2d_forward(&g1, n, &x, &p1, Some(&b1), true, &mut h);
            be.conv2d_forward_add(&g2, n, &h, &p2, None, &x, true, &mut ya);
            best[0] = best[0].min(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            be.conv2d_chain_forward(&t1, &t2, n, &x, &p1, &b1, &p2, None, true, res, &mut yb);
            best[1] = best[1].min(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            be.conv2d_chain_forward(&t1, &t2, n, &xp, &p1, &b1, &p2, None, true, planes, &mut yp);
            best[2] = best[2].min(t0.elapsed().as_secs_f64() * 1e3);
        }
    });
    let diff = ya
        .iter()
        .zip(&yb)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{c}>{mid}>{c} {hw}x{hw} batch {n}, {threads} threads: separate ({:?}, {:?}) {:.4} ms, chained transposed \
         {:.4} ms (max diff {diff:.1e}), chained planes to planes {:.4} ms ({:.1} GMAC/s)",
        g1.algo,
        g2.algo,
        best[0],
        best[1],
        best[2],
        (2 * n * hw * hw * c * mid * 9) as f64 / best[2] / 1e6
    );
    Ok(())
}
