//! The cost model of a sharded sensitivity sweep for a zoo architecture or a model file: the
//! swept groups, the full forward pass, the grid's summed probe MACs per image (each probe runs
//! the network from its group's first damaged node) and, for each shard count, the largest
//! shard's share after the partition `analyze sweep --shard` uses. The numbers behind
//! `docs/scale-out.md`.
//!
//! `cargo run --release -p shears --example sweep_grid_cost -- resnet50 5 1,8,64`
//! (ARCH_OR_FILE, ratios per group, shard counts).

use std::path::Path;

use shears::analyze::shard::Shard;
use shears::analyze::sweep::{group_start, sweep_assignment};
use shears::model::{load_model, Model};
use shears::prune::DepGraph;
use shears::zoo::Arch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args
        .first()
        .ok_or("usage: sweep_grid_cost ARCH_OR_FILE [RATIOS] [N,..]")?;
    let n_ratios: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let counts: Vec<usize> = args
        .get(2)
        .map_or("1,8,64", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let model: Model = match what.parse::<Arch>() {
        Ok(arch) => Model::fresh(arch, &arch.default_config(), 0)?,
        Err(_) => load_model(Path::new(what), None)?,
    };
    let g = &model.graph;
    let dg = DepGraph::build(g)?;
    let mut groups: Vec<_> = dg.prunable().filter(|x| x.size > 1).collect();
    groups.sort_by_key(|x| (group_start(x), x.id));
    let full = g.macs();
    let all = sweep_assignment(g, &groups, n_ratios, None);
    println!(
        "model {what}: {} swept groups, {n_ratios} ratios each, {} probes",
        groups.len(),
        all.total()
    );
    println!("full forward pass: {full} MACs per image");
    println!(
        "grid: {} probe MACs per image in all, {:.2} full passes per probe on average",
        all.total_cost,
        all.total_cost as f64 / (all.total() as f64 * full as f64)
    );
    for n in counts {
        let loads: Vec<u64> = (0..n)
            .map(|i| {
                sweep_assignment(g, &groups, n_ratios, Some(Shard { index: i, count: n })).cost
            })
            .collect();
        let max = *loads.iter().max().unwrap_or(&0);
        let min = *loads.iter().min().unwrap_or(&0);
        println!(
            "{n} shards: largest {max} MACs per image ({:.4} of the grid; ideal {:.4}), smallest {min}",
            max as f64 / all.total_cost as f64,
            1.0 / n as f64
        );
    }
    Ok(())
}
