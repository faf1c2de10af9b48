//! Times every convolution of two models (an original and its pruned copy) layer by layer with
//! the engine's kernels, single-threaded, runs interleaved, and prints per-layer MACs and time
//! ratios: where a pruned model's measured speed-up falls short of its MACs reduction.
//! `cargo run --release -p shears --example conv_profile -- ORIGINAL PRUNED [BATCH]`.

use std::path::Path;
use std::time::Instant;

use shears::model::load_model;
use shears_engine::kernels::conv::ConvGeom;
use shears_engine::{Backend, CpuBackend};
use shears_engine::{Mode, Network};
use shears_ir::{Op, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: conv_profile ORIGINAL PRUNED [BATCH]".into());
    }
    let a = load_model(Path::new(&args[0]), Some(shears::zoo::Arch::ResNet56))
        .or_else(|_| load_model(Path::new(&args[0]), None))?;
    let b = load_model(Path::new(&args[1]), None)
        .or_else(|_| load_model(Path::new(&args[1]), Some(shears::zoo::Arch::ResNet56)))?;
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
    // Whole networks, two threads: original, pruned, pruned without conv chaining.
    let mut nets = [
        Network::new(a.graph.clone(), &a.weights)?,
        Network::new(b.graph.clone(), &b.weights)?,
        Network::new(b.graph.clone(), &b.weights)?,
    ];
    nets[2].set_conv_chains(false);
    for batch in [1usize, 64] {
        let mut shape = vec![batch];
        shape.extend_from_slice(a.graph.shape(a.graph.inputs()[0]));
        let numel: usize = shape.iter().product();
        let x = Tensor::new(
            shape,
            (0..numel).map(|i| (i % 255) as f32 / 255.0).collect(),
        )?;
        let mut times = vec![Vec::new(); nets.len()];
        let pool2 = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
        for it in 0..(if batch == 1 { 200 } else { 20 }) {
            for (k, net) in nets.iter_mut().enumerate() {
                let t0 = Instant::now();
                pool2.install(|| net.forward(&x, Mode::Eval))?;
                if it >= 3 {
                    times[k].push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let med: Vec<f64> = times
            .iter_mut()
            .map(|t| {
                t.sort_by(f64::total_cmp);
                t[t.len() / 2]
            })
            .collect();
        println!(
            "batch {batch}: original {:.3} ms, pruned {:.3} ms ({:.2}x), pruned without chaining {:.3} ms ({:.2}x)",
            med[0],
            med[1],
            med[0] / med[1],
            med[2],
            med[0] / med[2]
        );
    }
    // Time per step type at batch 64 (profiling on; one thread pool of 2).
    for (name, k) in [("original", 0usize), ("pruned", 1)] {
        let mut shape = vec![64usize];
        shape.extend_from_slice(a.graph.shape(a.graph.inputs()[0]));
        let numel: usize = shape.iter().product();
        let x = Tensor::new(shape, vec![0.5; numel])?;
        let pool2 = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
        nets[k].set_profiling(true);
        for _ in 0..10 {
            pool2.install(|| nets[k].forward(&x, Mode::Eval))?;
        }
        let p = nets[k].profile().cloned().unwrap_or_default();
        let total: f64 = p.entries.iter().map(|e| e.1).sum();
        println!("{name}, batch 64, 10 runs: {:.1} ms per run", total * 100.0);
        for (label, secs, calls) in &p.entries {
            println!(
                "  {label:<40} {:>8.2} ms per run  ({calls} calls)",
                secs * 100.0
            );
        }
    }
    Ok(())
}
