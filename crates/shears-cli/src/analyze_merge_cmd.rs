//! `shears analyze merge`: the shards of a sharded `analyze sweep`, `analyze sbpf` or `analyze lsa` combined
//! into the files the one-machine run writes.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use shears::analyze::merge::{
    check_set, find_records, merge_lsa, merge_sbpf, merge_sweep, read_record, ShardPayload,
    ShardRecord, RECORD_FILE,
};
use shears::analyze::sbpf::allocate_inverse;
use shears::analyze::sweep::weights_hash;
use shears::prune::fingerprint;

use crate::analyze_lsa_cmd::{print_lsa, write_lsa, LsaFiles};
use crate::analyze_sbpf_cmd::{print_sbpf, write_head, write_tail, SbpfFiles};
use crate::analyze_sweep_cmd::{print_report, write_report, SweepReport};
use crate::args::ModelOpts;
use crate::commands::{bad, open_model};

/// `shears analyze merge` arguments.
///
/// Reads the shard files (`shard.json`) of a sharded analysis, checks that they form one
/// complete set (same analysis, shard count, model, evaluation set and settings; every shard
/// exactly once, each finished) and writes what the same analysis run on one machine writes:
/// for a sweep sweep.json, sweep.csv, the plots and the ratio files; for SBPF sbpf.json,
/// sbpf.csv, the plots and ratios.json; for LSA lsa.json, lsa_grid.csv, lsa_summary.csv and
/// the plots. Reopens the model the shards name (its graph and weights
/// must be unchanged) for the MACs budgets.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Shard directories (holding shard.json), or directories the shards wrote into with
    /// --out (their shard-*-of-* subdirectories are read).
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where to write the merged files (default: the one DIR given, when it holds the shards'
    /// directories).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Run `shears analyze merge`.
pub fn run(a: MergeArgs) -> Result<()> {
    let out =
        match (&a.out, a.dirs.as_slice()) {
            (Some(o), _) => o.clone(),
            (None, [d]) if !d.join(RECORD_FILE).is_file() => d.clone(),
            _ => return Err(bad(
                "analyze merge: give --out DIR (the default, the one DIR given, applies only to \
                 a directory holding the shards' shard-*-of-* directories)",
            )),
        };
    let shard_err = |e: shears::analyze::shard::ShardError| bad(e.to_string());
    let searched = a
        .dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut records: Vec<(PathBuf, ShardRecord)> = Vec::new();
    for p in find_records(&a.dirs).map_err(shard_err)? {
        let r = read_record(&p).map_err(shard_err)?;
        records.push((p, r));
    }
    let records = check_set(records, &searched).map_err(shard_err)?;
    let (p0, r0) = records[0].clone();
    let model = open_model(&ModelOpts {
        model: r0.model.path.clone(),
        arch: r0.model.arch.clone(),
        input_shape: r0.model.input_shape.clone(),
        ..Default::default()
    })?;
    let (g, w) = (fingerprint(&model.graph), weights_hash(&model.weights));
    if g != r0.fingerprint.graph || w != r0.fingerprint.weights {
        return Err(bad(format!(
            "{}: the model changed since the shards ran (graph {g}, weights {w}; {} says \
             graph {}, weights {})",
            r0.model.path.display(),
            p0.display(),
            r0.fingerprint.graph,
            r0.fingerprint.weights
        )));
    }
    crate::commands::create_out_dir("--out", &out)?;
    if !a.json {
        println!(
            "merging {} {} shards from {searched} into {}",
            records.len(),
            r0.payload.name(),
            out.display()
        );
    }
    match &r0.payload {
        ShardPayload::Sweep(s0) => {
            let shards: Vec<_> = records
                .iter()
                .filter_map(|(p, r)| match &r.payload {
                    ShardPayload::Sweep(s) => Some((p.clone(), s.clone())),
                    _ => None,
                })
                .collect();
            let (config, result) = merge_sweep(&shards).map_err(shard_err)?;
            let ctx = SweepReport {
                model_path: &r0.model.path,
                data: &r0.data,
                split: r0.split,
                config: &config,
                max_loss_increase: s0.max_loss_increase_bits.map(f64::from_bits),
                keep_fraction: s0.keep_fraction_bits.map(f64::from_bits),
                graph: &model.graph,
                weights: &model.weights,
                out: &out,
            };
            let (report, files) = write_report(&ctx, &result, None)?;
            print_report(&ctx, report, files, &result, a.json, 0);
        }
        ShardPayload::Sbpf(s0) => {
            let shards: Vec<_> = records
                .iter()
                .filter_map(|(p, r)| match &r.payload {
                    ShardPayload::Sbpf(s) => Some((p.clone(), s.clone())),
                    _ => None,
                })
                .collect();
            let probes = merge_sbpf(&shards).map_err(shard_err)?;
            let config = s0.exact_config();
            let report = probes.report(&config)?;
            let r_max = f64::from_bits(s0.r_max_bits);
            let alloc = match s0.exact_budget() {
                Some(b) => Some(allocate_inverse(
                    &model.graph,
                    &model.weights,
                    &report.groups,
                    b,
                    r_max,
                )?),
                None => None,
            };
            let ctx = SbpfFiles {
                model_path: &r0.model.path,
                data: &r0.data,
                split: r0.split,
                config: &config,
                out: &out,
            };
            let (value, mut files) = write_head(&ctx, None, &report, alloc.as_ref())?;
            write_tail(&ctx, &report, alloc.as_ref(), &value, &mut files)?;
            print_sbpf(&ctx, &report, alloc.as_ref(), value, files, a.json);
        }
        ShardPayload::Lsa(s0) => {
            let shards: Vec<_> = records
                .iter()
                .filter_map(|(p, r)| match &r.payload {
                    ShardPayload::Lsa(s) => Some((p.clone(), s.clone())),
                    _ => None,
                })
                .collect();
            let (config, result) = merge_lsa(&shards).map_err(shard_err)?;
            let ctx = LsaFiles {
                model_path: &r0.model.path,
                dataset: &s0.dataset,
                target: &s0.target,
                n: s0.n,
                feature_seconds: shards.iter().map(|(_, s)| s.feature_seconds).sum(),
                out: &out,
            };
            let report = write_lsa(&ctx, &config, &result)?;
            print_lsa(&ctx, &config, &result, report, a.json);
        }
    }
    Ok(())
}
