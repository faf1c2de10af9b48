//! `shears analyze sweep`: per-group prune-and-evaluate sweeps from cached prefix activations.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};
use shears::analyze::plot::LineChart;
use shears::analyze::sweep::{
    group_start, ratios_for_loss, ratios_for_macs, sweep, write_atomic, EvalSet, SweepConfig,
    SweepResult,
};
use shears::progress::Verbosity;
use shears::prune::{Criterion, DepGraph, FoldMode, Reduction};
use shears_data::Split;
use shears_ir::{Graph, Weights};

use crate::args::{DataOpts, MacsBudgetOpts, ModelOpts};
use crate::commands::{bad, data_dir, open_model_for_data, parse_dataset};
use crate::output::{print_json, Table};
use crate::shard_cmd::{run_sweep_shard, SweepShardRun};
use crate::shard_opts::ShardOpts;

/// `shears analyze sweep` arguments.
///
/// For every prunable group and every ratio, removes that fraction of the group's channels
/// (chosen by --criterion) from the group alone and measures top-1 accuracy and loss on a
/// class-balanced subset; each probe runs only the network after the damaged layer, from
/// cached activations. Finished probes go to a cache file at once, so an interrupted sweep
/// resumes. Writes sweep.json, sweep.csv and SVG plots to --out, and ratio files for
/// `shears prune --ratios-from` when --max-loss-increase or --target-macs/--speedup is given.
#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelOpts,
    #[command(flatten)]
    /// The evaluation subset.
    pub subset: SubsetOpts,
    /// Ratios (fraction of a group's channels REMOVED), comma-separated, each in (0, 1).
    #[arg(
        long,
        value_name = "R,..",
        value_delimiter = ',',
        default_value = "0.1,0.3,0.5,0.7,0.9"
    )]
    pub ratios: Vec<f32>,
    /// Within-group criterion (l1, l2, bn_scale, fpgm, random).
    #[arg(long, default_value = "l1")]
    pub criterion: String,
    /// Seed of the random criterion.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only these group roots (comma-separated; default every prunable group).
    #[arg(long, value_name = "ROOTS", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Cache file of finished probes (default OUT/sweep_cache.json); a rerun resumes from it.
    #[arg(long, value_name = "FILE")]
    pub cache: Option<PathBuf>,
    /// Run every probe through the whole network instead of from cached prefix activations.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Time the sweep with and without prefix caching in this process (no cache file): after an
    /// untimed warm-up of both on the first group, with, without, then with again (see
    /// --time-runs), so that a drift of the machine's speed hits both alike; the speed-up is the
    /// mean time without over the mean time with. Checks that the results agree and reports
    /// the largest difference, and each run's time and the hypervisor's steal time over it.
    #[arg(long, conflicts_with = "no_prefix_cache")]
    pub time_both: bool,
    /// With --time-both: how many timed runs without prefix caching, interleaved with one
    /// more run with it (with, without, with, ..., with); both speeds are means over their
    /// runs.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "time_both",
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub time_runs: u32,
    /// Write ratios_loss.json: per group the largest ratio whose interpolated loss increase
    /// stays at or below this.
    #[arg(long, value_name = "X")]
    pub max_loss_increase: Option<f64>,
    #[command(flatten)]
    /// Write ratios_macs.json: the loss threshold bisected so that the ratios meet
    /// --target-macs F or --speedup X.
    pub macs: MacsBudgetOpts,
    /// Images per forward batch.
    #[arg(long, default_value_t = 250)]
    pub batch: usize,
    #[command(flatten)]
    /// Which shard of the probes to compute.
    pub shard: ShardOpts,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Loads the class-balanced evaluation subset for a model.
/// The class-balanced evaluation subset a probe is measured on (shared by `analyze sweep` and
/// `analyze sbpf`).
#[derive(Args, Debug)]
pub struct SubsetOpts {
    /// Dataset (mnist, fashion-mnist, cifar10, cifar100).
    #[arg(long, value_name = "NAME")]
    pub data: String,
    #[command(flatten)]
    /// Where datasets live.
    pub data_opts: DataOpts,
    /// Split the evaluation subset is drawn from: `val` (the hold-out of the training files,
    /// the default: what selects must not be the test split), `train`, `test` or `train-all`.
    #[arg(long, default_value = "val", value_name = "val|train|test|train-all")]
    pub split: Split,
    /// Class-balanced images per probe.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub images: usize,
    /// Seed of the class-balanced subset.
    #[arg(long, default_value_t = 0)]
    pub subset_seed: u64,
}

/// Loads the class-balanced evaluation subset described by `o`, shaped for `model`.
pub(crate) fn eval_set(o: &SubsetOpts, model: &shears::model::Model) -> Result<EvalSet> {
    let name = parse_dataset(&o.data)?;
    let split = o.split;
    if o.images == 0 {
        return Err(bad(
            "--images 0: the evaluation subset needs at least one image",
        ));
    }
    let ds = shears_data::load(&data_dir(&o.data_opts), name, split)?;
    let input = model.graph.shape(model.graph.inputs()[0]).to_vec();
    let mut s = EvalSet::balanced(&ds, o.images, o.subset_seed, &model.preprocess, &input)?;
    s.description = format!("{} ({split} split)", s.description);
    s.split = Some(split);
    Ok(s)
}

/// Run `shears analyze sweep`.
pub fn run(a: SweepArgs) -> Result<()> {
    let model = open_model_for_data(&a.model)?;
    let criterion: Criterion = a.criterion.parse().map_err(|e| bad(format!("{e}")))?;
    for &r in &a.ratios {
        if !(r > 0.0 && r < 1.0) {
            return Err(bad(format!(
                "--ratios: {r} is outside (0, 1) (the fraction of a group's channels removed)"
            )));
        }
    }
    if a.batch == 0 {
        return Err(bad("--batch 0: use at least 1"));
    }
    let keep = a.macs.keep_fraction().map_err(bad)?;
    if let Some(x) = a.max_loss_increase {
        if !(x.is_finite() && x >= 0.0) {
            return Err(bad(format!(
                "--max-loss-increase {x} must be a non-negative number"
            )));
        }
    }
    let choice = a.shard.choice()?;
    if choice.is_some() && a.time_both {
        return Err(bad(
            "--time-both runs the whole sweep in one process; it cannot run as a shard",
        ));
    }
    if let (Some(c), Some(cache)) = (&choice, &a.cache) {
        return Err(bad(format!(
            "--cache {}: a shard keeps its cache in its own directory (OUT/{}/sweep_cache.json), \
             so that shards never share one",
            cache.display(),
            c.shard.dir_name()
        )));
    }
    let data = eval_set(&a.subset, &model)?;
    crate::commands::create_out_dir("--out", &a.out)?;
    let verbosity = if a.json {
        Verbosity::Quiet
    } else {
        Verbosity::Normal
    };
    let mut cfg = SweepConfig::new(a.ratios.clone());
    cfg.criterion = criterion;
    cfg.reduction = Reduction::Mean;
    cfg.seed = a.seed;
    cfg.fold = FoldMode::Exact;
    cfg.batch = a.batch;
    cfg.verbosity = verbosity;
    cfg.only = (!a.only.is_empty()).then(|| a.only.clone());
    if let Some(choice) = choice {
        cfg.prefix_cache = !a.no_prefix_cache;
        let run = SweepShardRun {
            model_opts: &a.model,
            out: &a.out,
            max_loss_increase: a.max_loss_increase,
            keep_fraction: keep,
            json: a.json,
        };
        return run_sweep_shard(&run, &model, &data, cfg, choice);
    }
    let mut timing = None;
    let result = if a.time_both {
        // Untimed warm-up of both modes on the first group: the process's first large
        // allocations and first touches of memory are not the sweep's cost.
        let dg = DepGraph::build(&model.graph)?;
        let first = dg
            .prunable()
            .filter(|g| g.size > 1)
            .filter(|g| {
                cfg.only
                    .as_ref()
                    .is_none_or(|o| o.contains(&model.graph.node(g.root).name))
            })
            .min_by_key(|g| (group_start(g), g.id))
            .map(|g| model.graph.node(g.root).name.clone());
        if let Some(root) = first {
            let mut warm = cfg.clone();
            warm.only = Some(vec![root]);
            warm.cache_file = None;
            warm.verbosity = Verbosity::Quiet;
            for on in [true, false] {
                warm.prefix_cache = on;
                sweep(&model.graph, &model.weights, &data, &warm)?;
            }
        }
        let load = uptime();
        cfg.cache_file = None;
        // Runs alternate, starting and ending with the cached mode: a drift of the machine's
        // speed hits both alike. Each run records the hypervisor's steal time over it.
        let mut cached_runs: Vec<(SweepResult, Option<f64>)> = Vec::new();
        let mut full_runs: Vec<(SweepResult, Option<f64>)> = Vec::new();
        for k in 0..(2 * a.time_runs + 1) {
            cfg.prefix_cache = k % 2 == 0;
            let steal0 = steal_seconds();
            let r = sweep(&model.graph, &model.weights, &data, &cfg)?;
            let stolen = steal0.zip(steal_seconds()).map(|(a, b)| b - a);
            if cfg.prefix_cache {
                cached_runs.push((r, stolen));
            } else {
                full_runs.push((r, stolen));
            }
        }
        let seconds = |runs: &[(SweepResult, Option<f64>)]| -> Vec<f64> {
            runs.iter().map(|r| r.0.seconds).collect()
        };
        let steal = |runs: &[(SweepResult, Option<f64>)]| -> Vec<Option<f64>> {
            runs.iter().map(|r| r.1).collect()
        };
        let (cached_secs, full_secs) = (seconds(&cached_runs), seconds(&full_runs));
        let (cached_steal, full_steal) = (steal(&cached_runs), steal(&full_runs));
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (cached_s, full_s) = (mean(&cached_secs), mean(&full_secs));
        let repeat_identical = cached_runs
            .iter()
            .all(|r| r.0.groups == cached_runs[0].0.groups)
            && full_runs
                .iter()
                .all(|r| r.0.groups == full_runs[0].0.groups);
        let cached = cached_runs.swap_remove(0).0;
        let full = full_runs.swap_remove(0).0;
        let same = cached.groups == full.groups
            && cached.baseline_accuracy == full.baseline_accuracy
            && cached.baseline_loss == full.baseline_loss;
        let points = |r: &SweepResult| -> Vec<(f64, f64)> {
            r.groups
                .iter()
                .flat_map(|g| g.points.iter().map(|p| (p.accuracy, p.loss)))
                .collect()
        };
        let (pc, pf) = (points(&cached), points(&full));
        let max_loss_diff = pc
            .iter()
            .zip(&pf)
            .map(|(x, y)| (x.1 - y.1).abs())
            .fold(0.0f64, f64::max);
        let max_acc_diff = pc
            .iter()
            .zip(&pf)
            .map(|(x, y)| (x.0 - y.0).abs())
            .fold(0.0f64, f64::max);
        timing = Some(json!({
            "prefix_cache_seconds": cached_s,
            "prefix_cache_seconds_runs": cached_secs,
            "prefix_cache_steal_seconds_runs": cached_steal,
            "no_prefix_cache_seconds": full_s,
            "no_prefix_cache_seconds_runs": full_secs,
            "no_prefix_cache_steal_seconds_runs": full_steal,
            "speedup": full_s / cached_s,
            "probes_skipping_the_damaged_conv": cached.stats.skipped,
            "macs_per_image_cached": cached.stats.total_macs(),
            "macs_per_image_uncached": full.stats.total_macs(),
            "macs_ratio": full.stats.total_macs() as f64 / cached.stats.total_macs() as f64,
            "stats_cached": cached.stats,
            "stats_uncached": full.stats,
            "identical_results": same,
            "repeat_identical": repeat_identical,
            "max_abs_difference_accuracy": max_acc_diff,
            "max_abs_difference_loss": max_loss_diff,
            "load_average_before": load,
            "load_average_after": uptime(),
        }));
        cached
    } else {
        cfg.prefix_cache = !a.no_prefix_cache;
        cfg.cache_file = Some(
            a.cache
                .clone()
                .unwrap_or_else(|| a.out.join("sweep_cache.json")),
        );
        sweep(&model.graph, &model.weights, &data, &cfg)?
    };

    let ctx = SweepReport {
        model_path: &a.model.model,
        data: &data.description,
        split: data.split,
        config: &cfg,
        max_loss_increase: a.max_loss_increase,
        keep_fraction: keep,
        graph: &model.graph,
        weights: &model.weights,
        out: &a.out,
    };
    let (report, files) = write_report(&ctx, &result, timing)?;
    print_report(&ctx, report, files, &result, a.json, a.time_runs);
    Ok(())
}

/// What `sweep.json` and the other files of a sweep are made of besides the result (shared by a
/// one-machine run and `analyze merge`, so that both write the same files).
pub(crate) struct SweepReport<'a> {
    /// The model file as given.
    pub model_path: &'a Path,
    /// The evaluation set's description.
    pub data: &'a str,
    /// Its split.
    pub split: Option<Split>,
    /// The sweep's settings.
    pub config: &'a SweepConfig,
    /// `--max-loss-increase`.
    pub max_loss_increase: Option<f64>,
    /// The MACs keep fraction of `--target-macs`/`--speedup`.
    pub keep_fraction: Option<f64>,
    /// The model's graph.
    pub graph: &'a Graph,
    /// Its weights.
    pub weights: &'a Weights,
    /// The output directory.
    pub out: &'a Path,
}

/// Writes the ratio files, sweep.json, sweep.csv and the plots; returns the report and the
/// files written.
pub(crate) fn write_report(
    ctx: &SweepReport<'_>,
    result: &SweepResult,
    timing: Option<Value>,
) -> Result<(Value, Vec<PathBuf>)> {
    let mut files = vec![];
    let mut extra = serde_json::Map::new();
    if let Some(x) = ctx.max_loss_increase {
        let r = ratios_for_loss(result, x);
        let p = ctx.out.join("ratios_loss.json");
        write_atomic(&p, &serde_json::to_string_pretty(&r)?)?;
        files.push(p);
        extra.insert(
            "ratios_loss".into(),
            json!({"max_loss_increase": x, "ratios": r}),
        );
    }
    if let Some(f) = ctx.keep_fraction {
        let sel = ratios_for_macs(ctx.graph, ctx.weights, result, f)?;
        let p = ctx.out.join("ratios_macs.json");
        write_atomic(&p, &serde_json::to_string_pretty(&sel.ratios)?)?;
        files.push(p);
        extra.insert("ratios_macs".into(), serde_json::to_value(&sel)?);
    }
    let report = json!({
        "model": ctx.model_path,
        "data": ctx.data,
        "split": ctx.split,
        "config": ctx.config,
        "result": result,
        "timing": timing,
        "selection": extra,
    });
    let p = ctx.out.join("sweep.json");
    write_atomic(&p, &serde_json::to_string_pretty(&report)?)?;
    files.push(p);
    let p = ctx.out.join("sweep.csv");
    write_atomic(&p, &sweep_csv(result))?;
    files.push(p);
    files.extend(plots(result, ctx.out)?);
    Ok((report, files))
}

/// Prints a sweep's report: one JSON object (with the files) or tables.
pub(crate) fn print_report(
    ctx: &SweepReport<'_>,
    report: Value,
    files: Vec<PathBuf>,
    result: &SweepResult,
    as_json: bool,
    time_runs: u32,
) {
    if as_json {
        let mut r = report;
        r["files"] = json!(files);
        print_json(&r);
        return;
    }
    let timing = &report["timing"];
    println!(
        "{}: {}, baseline top-1 {:.2}%, loss {:.4}",
        ctx.model_path.display(),
        ctx.data,
        100.0 * result.baseline_accuracy,
        result.baseline_loss
    );
    print_curves(&ctx.config.ratios, result);
    println!(
        "{} probes computed, {} reused from the cache, {:.1}s{}",
        result.computed,
        result.reused,
        result.seconds,
        if result.complete { "" } else { " (incomplete)" }
    );
    if !timing.is_null() {
        let t = timing;
        println!(
            "prefix cache {:.1}s (mean of {} runs), no prefix cache {:.1}s (mean of {}): {:.2}x faster, \
             {:.2}x fewer MACs (identical results: {}; largest difference: accuracy {:.1e}, loss {:.1e})",
            t["prefix_cache_seconds"].as_f64().unwrap_or(0.0),
            time_runs + 1,
            t["no_prefix_cache_seconds"].as_f64().unwrap_or(0.0),
            time_runs,
            t["speedup"].as_f64().unwrap_or(0.0),
            t["macs_ratio"].as_f64().unwrap_or(0.0),
            t["identical_results"],
            t["max_abs_difference_accuracy"].as_f64().unwrap_or(0.0),
            t["max_abs_difference_loss"].as_f64().unwrap_or(0.0),
        );
    }
    for f in files {
        println!("wrote {}", f.display());
    }
}

/// The table of accuracies per group and ratio.
pub(crate) fn print_curves(ratios: &[f32], result: &SweepResult) {
    let mut header = vec!["group".to_string(), "root".to_string(), "n".to_string()];
    header.extend(ratios.iter().map(|r| format!("acc@{r}")));
    let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&hdr);
    for c in &result.groups {
        let mut row = vec![c.group.to_string(), c.root.clone(), c.size.to_string()];
        row.extend(
            c.points
                .iter()
                .map(|p| format!("{:.2}", 100.0 * p.accuracy)),
        );
        t.row(row);
    }
    print!("{}", t.render());
}

/// Seconds the hypervisor has taken from this machine's CPUs since boot (the `steal` column of
/// `/proc/stat`, in the kernel's 100 Hz user ticks); `None` where it cannot be read.
fn steal_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?;
    let ticks: f64 = cpu.split_whitespace().nth(8)?.parse().ok()?;
    Some(ticks / 100.0)
}

/// The 1-, 5- and 15-minute load averages from /proc/loadavg, if readable.
pub(crate) fn uptime() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn sweep_csv(r: &SweepResult) -> String {
    let mut s = String::from("group,root,size,ratio,removed,accuracy,loss\n");
    let _ = writeln!(
        s,
        "-1,baseline,0,0,0,{:.6},{:.6}",
        r.baseline_accuracy, r.baseline_loss
    );
    for c in &r.groups {
        for p in &c.points {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{:.6},{:.6}",
                c.group, c.root, c.size, p.ratio, p.removed, p.accuracy, p.loss
            );
        }
    }
    s
}

/// Accuracy and loss against ratio, at most 10 groups per chart.
fn plots(r: &SweepResult, out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let chunks: Vec<_> = r.groups.chunks(10).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let suffix = if chunks.len() > 1 {
            format!("_{}", i + 1)
        } else {
            String::new()
        };
        let part = if chunks.len() > 1 {
            format!(" ({}/{})", i + 1, chunks.len())
        } else {
            String::new()
        };
        let mut acc = LineChart::new(
            &format!("Top-1 accuracy with one group pruned{part}"),
            "ratio of the group's channels removed",
            "top-1 accuracy (%)",
        );
        let mut loss = LineChart::new(
            &format!("Loss with one group pruned{part}"),
            "ratio of the group's channels removed",
            "cross-entropy",
        );
        for c in chunk.iter() {
            let mut pa = vec![(0.0, 100.0 * r.baseline_accuracy)];
            let mut pl = vec![(0.0, r.baseline_loss)];
            pa.extend(
                c.points
                    .iter()
                    .map(|p| (f64::from(p.ratio), 100.0 * p.accuracy)),
            );
            pl.extend(c.points.iter().map(|p| (f64::from(p.ratio), p.loss)));
            acc = acc.series(&c.root, pa);
            loss = loss.series(&c.root, pl);
        }
        let p = out.join(format!("sweep_accuracy{suffix}.svg"));
        acc.save(&p)?;
        files.push(p);
        let p = out.join(format!("sweep_loss{suffix}.svg"));
        loss.save(&p)?;
        files.push(p);
    }
    Ok(files)
}
