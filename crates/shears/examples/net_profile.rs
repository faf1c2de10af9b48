//! Times whole forward passes of an original and a pruned model step by step (the engine's
//! profiler), runs interleaved, and prints where the pruned model's time goes; then the total
//! of each model with the engine's residual fusion off as well (the same four networks'
//! runs interleaved), to show what the fusion saves:
//! `cargo run --release -p shears --example net_profile -- ORIGINAL PRUNED [BATCH] [THREADS]
//! [RUNS]`.

use std::collections::BTreeMap;
use std::path::Path;

use shears::model::load_model;
use shears_engine::{Mode, Network};
use shears_ir::Tensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: net_profile ORIGINAL PRUNED [BATCH] [THREADS] [RUNS]".into());
    }
    let a = load_model(Path::new(&args[0]), Some(shears::zoo::Arch::ResNet56))
        .or_else(|_| load_model(Path::new(&args[0]), None))?;
    let b = load_model(Path::new(&args[1]), None)
        .or_else(|_| load_model(Path::new(&args[1]), Some(shears::zoo::Arch::ResNet56)))?;
    let n: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let threads: usize = args.get(3).map_or(Ok(2), |s| s.parse())?;
    let runs: usize = args.get(4).map_or(Ok(20), |s| s.parse())?;
    let mut nets = [
        Network::new(a.graph.clone(), &a.weights)?,
        Network::new(b.graph.clone(), &b.weights)?,
        Network::new(a.graph.clone(), &a.weights)?,
        Network::new(b.graph.clone(), &b.weights)?,
        Network::new(a.graph.clone(), &a.weights)?,
        Network::new(b.graph.clone(), &b.weights)?,
    ];
    nets[4].set_residual_fusion(false);
    nets[5].set_residual_fusion(false);
    let x = Tensor::new(
        vec![n, 3, 32, 32],
        (0..n * 3 * 32 * 32)
            .map(|i| ((i * 7919) % 1999) as f32 / 1000.0 - 1.0)
            .collect(),
    )?;
    let mut tables: [BTreeMap<String, Vec<f64>>; 2] = Default::default();
    let mut totals: [Vec<f64>; 6] = Default::default();
    for net in nets.iter_mut() {
        net.set_threads(Some(threads))?;
        for _ in 0..3 {
            net.forward(&x, Mode::Eval)?;
        }
    }
    for _ in 0..runs {
        for (k, net) in nets.iter_mut().enumerate() {
            // The first two are profiled step by step; the others time plain passes.
            let profiled = k < 2;
            if profiled {
                net.set_profiling_per_step(true);
            }
            let t0 = std::time::Instant::now();
            net.forward(&x, Mode::Eval)?;
            totals[k].push(t0.elapsed().as_secs_f64() * 1e3);
            if profiled {
                for (label, secs, _) in &net.profile().expect("profiling on").entries {
                    tables[k].entry(label.clone()).or_default().push(secs * 1e3);
                }
                net.set_profiling(false);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("batch {n}, {threads} threads, median of {runs} interleaved runs (ms)");
    println!("{:<34} {:>9} {:>9} {:>7}", "step", "a", "b", "a/b");
    let mut labels: Vec<String> = tables[0].keys().chain(tables[1].keys()).cloned().collect();
    labels.sort();
    labels.dedup();
    for l in labels {
        let ta = tables[0].get_mut(&l).map_or(0.0, median);
        let tb = tables[1].get_mut(&l).map_or(0.0, median);
        println!("{l:<34} {ta:>9.3} {tb:>9.3} {:>7.2}", ta / tb);
    }
    for (label, k) in [
        ("total, profiled", 0),
        ("total, not profiled", 2),
        ("total, residual fusion off", 4),
    ] {
        let (ta, tb) = (median(&mut totals[k]), median(&mut totals[k + 1]));
        println!("{label:<34} {ta:>9.3} {tb:>9.3} {:>7.2}", ta / tb);
    }
    Ok(())
}
