//! Times every convolution of two models (an original and its pruned copy) layer by layer with
//! the engine's kernels, single-threaded, runs interleaved, and prints per-layer MACs and time
//! ratios: where a pruned model's measured speed-up falls short of its MACs reduction.
//! `cargo run --release -p shears --example conv_profile -- ORIGINAL PRUNED [BATCH]`.

use std::path::Path;
use std::time::Instant;

use shears::model::load_model;
use shears_engine::kernels::conv::ConvGeom;
use shears_engine::{Backend, CpuBackend};
use shears_ir::Op;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: conv_profile ORIGINAL PRUNED [BATCH]".into());
    }
    let a = load_model(Path::new(&args[0]), Some(shears::zoo::Arch::ResNet56))
        .or_else(|_| load_model(Path::new(&args[0]), None))?;
    let b = load_model(Path::new(&args[1]), None)?;
    let n: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let be = CpuBackend;
    println!("batch {n}, one thread, best of 20 interleaved runs");
    println!(
        "{:<18} {:>14} {:>14} {:>8} {:>10} {:>10} {:>8} {:>7}",
        "layer", "geometry a", "geometry b", "algo b", "ms a", "ms b", "time", "MACs"
    );
    let (mut ta, mut tb, mut ma, mut mb) = (0.0, 0.0, 0u64, 0u64);
    for id in b.graph.ids() {
        let node = b.graph.node(id);
        let Op::Conv2d(cb) = &node.op else { continue };
        let Some(ia) = a.graph.find(&node.name) else {
            continue;
        };
        let Op::Conv2d(ca) = &a.graph.node(ia).op else {
            continue;
        };
        let (sa, sb) = (
            a.graph.shape(a.graph.node(ia).inputs[0]).to_vec(),
            b.graph.shape(node.inputs[0]).to_vec(),
        );
        let ga = ConvGeom::new(ca, sa[1], sa[2]).ok_or("geometry")?;
        let gb = ConvGeom::new(cb, sb[1], sb[2]).ok_or("geometry")?;
        let mut best = [f64::INFINITY; 2];
        let setups: Vec<_> = [&ga, &gb]
            .iter()
            .map(|g| {
                let x: Vec<f32> = (0..n * g.in_len())
                    .map(|i| ((i * 7919) % 1999) as f32 / 1000.0 - 1.0)
                    .collect();
                let w: Vec<f32> = (0..g.weight_len())
                    .map(|i| ((i * 104729) % 997) as f32 / 500.0 - 1.0)
                    .collect();
                let p = be.pack_conv(g, &w);
                let y = vec![0.0f32; n * g.out_len()];
                (x, p, y)
            })
            .collect::<Vec<_>>();
        let mut setups = setups;
        for _ in 0..20 {
            for (k, (g, (x, p, y))) in [&ga, &gb].iter().zip(setups.iter_mut()).enumerate() {
                let t0 = Instant::now();
                pool.install(|| be.conv2d_forward(g, n, x, p, None, true, y));
                best[k] = best[k].min(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let macs = |g: &ConvGeom| (g.oh * g.ow * g.c_out * g.cig() * g.kk()) as u64;
        let geo = |g: &ConvGeom| format!("{}>{} {}x{}", g.c_in, g.c_out, g.h, g.w);
        println!(
            "{:<18} {:>14} {:>14} {:>8} {:>10.3} {:>10.3} {:>8.2} {:>7.2}",
            node.name,
            geo(&ga),
            geo(&gb),
            format!("{:?}", gb.algo),
            best[0],
            best[1],
            best[0] / best[1],
            macs(&ga) as f64 / macs(&gb) as f64
        );
        ta += best[0];
        tb += best[1];
        ma += macs(&ga);
        mb += macs(&gb);
    }
    println!(
        "total convs: {ta:.3} ms -> {tb:.3} ms, speed-up {:.2}, MACs reduction {:.2}, ratio {:.2}",
        ta / tb,
        ma as f64 / mb as f64,
        (ta / tb) / (ma as f64 / mb as f64)
    );
    Ok(())
}
