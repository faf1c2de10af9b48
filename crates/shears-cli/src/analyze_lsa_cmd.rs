//! `shears analyze lsa`: the LSA feature-pruning study (methods §1) on a frozen backbone.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;
use shears::analyze::lsa::{
    cache_features, classifier_input, curve, find_node, run_study, study_csv, HeadConfig,
    OutputAgg, Outputs, PNorm, Selection, StudyConfig, StudyResult,
};
use shears::analyze::plot::{BarChart, LineChart};
use shears::progress::Verbosity;
use shears_data::Split;

use crate::args::{DataOpts, ModelOpts};
use crate::commands::{bad, data_dir, network, open_model_for_data, parse_dataset};
use crate::output::{print_json, Table};
use crate::shard_cmd::{run_lsa_shard, LsaShardRun};
use crate::shard_opts::ShardOpts;

/// `shears analyze lsa` arguments.
///
/// Caches the backbone's features (the classifier input by default) for a class-balanced
/// subset of the target dataset once, trains a new head on them, ranks the features by LSA
/// sensitivity for every p, removes the least sensitive fraction r, retrains the head and
/// evaluates it; the same with magnitude and random selection. Writes `lsa_grid.csv`,
/// `lsa_summary.csv`, `lsa.json` and SVG plots to --out.
#[derive(Args, Debug)]
pub struct LsaArgs {
    #[command(flatten)]
    /// The backbone.
    pub model: ModelOpts,
    /// Target dataset (mnist, fashion-mnist, cifar10, cifar100); grey images are padded and
    /// repeated to the backbone's input as needed.
    #[arg(long, value_name = "NAME")]
    pub data: String,
    #[command(flatten)]
    /// Where datasets live.
    pub data_opts: DataOpts,
    /// Feature node (default: the classifier input, i.e. the flatten or global-pool output).
    #[arg(long, value_name = "NODE")]
    pub target: Option<String>,
    /// Class-balanced training images whose features train the heads.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub train_images: usize,
    /// Class-balanced validation images (held out of the training files) that choose the best
    /// `(p, r)`.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub val_images: usize,
    /// Class-balanced test images the heads are reported on (they select nothing).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub test_images: usize,
    /// Training samples the sensitivities are aggregated over.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub lsa_samples: usize,
    /// p-norms over samples, comma-separated (numbers >= 1 or inf).
    #[arg(
        long,
        value_name = "P,..",
        value_delimiter = ',',
        default_value = "1,2,3,4,inf"
    )]
    pub p: Vec<String>,
    /// Reduction levels (fraction of features removed), comma-separated, each in [0, 1).
    #[arg(
        long,
        value_name = "R,..",
        value_delimiter = ',',
        default_value = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
    )]
    pub ratios: Vec<f64>,
    /// Number of seeds (0, 1, ..., N-1).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub seeds: u64,
    /// Width of one hidden dense layer in the head (default: a single linear layer).
    #[arg(long, value_name = "H")]
    pub hidden: Option<usize>,
    /// Head training epochs.
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Head training batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Head Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Sensitivities of the softmax probabilities or of the logits.
    #[arg(long, default_value = "softmax", value_name = "softmax|logits")]
    pub outputs: String,
    /// Aggregation over outputs.
    #[arg(long, default_value = "max", value_name = "max|sum|pnorm")]
    pub output_agg: String,
    /// Skip the magnitude and random baselines.
    #[arg(long)]
    pub no_baselines: bool,
    /// Seed of the image subsets.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// Output directory (created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    /// Which shard of the grid's heads to train.
    pub shard: ShardOpts,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

fn write(path: &Path, text: &str) -> Result<()> {
    shears_io::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
    Ok(())
}

fn summary_csv(res: &StudyResult) -> String {
    let mut s = String::from(
        "method,runs,mean,std,seed_std,best_p,best_ratio,best_val_accuracy,best_accuracy,max_ratio_within_1pt\n",
    );
    for m in &res.summary {
        s.push_str(&format!(
            "{},{},{:.4},{:.4},{:.4},{},{},{:.4},{:.4},{}\n",
            m.method,
            m.runs,
            m.mean,
            m.std,
            m.seed_std,
            m.best_p.map(|p| p.to_string()).unwrap_or_default(),
            m.best_ratio,
            m.best_val_accuracy,
            m.best_accuracy,
            m.max_ratio_within_1pt
                .map(|r| r.to_string())
                .unwrap_or_default()
        ));
    }
    s
}

/// Run `shears analyze lsa`.
pub fn run(a: LsaArgs) -> Result<()> {
    let ps: Vec<PNorm> =
        a.p.iter()
            .map(|s| s.parse::<PNorm>().map_err(|e| bad(format!("--p: {e}"))))
            .collect::<Result<_>>()?;
    let outputs: Outputs = a
        .outputs
        .parse()
        .map_err(|e| bad(format!("--outputs: {e}")))?;
    let output_agg: OutputAgg = a
        .output_agg
        .parse()
        .map_err(|e| bad(format!("--output-agg: {e}")))?;
    for &r in &a.ratios {
        if !(0.0..1.0).contains(&r) {
            return Err(bad(format!("--ratios: {r} is not in [0, 1)")));
        }
    }
    if a.seeds == 0 || a.train_images == 0 || a.val_images == 0 || a.test_images == 0 {
        return Err(bad(
            "--seeds, --train-images and --test-images must be at least 1",
        ));
    }
    let verbosity = if a.json {
        Verbosity::Quiet
    } else {
        Verbosity::Normal
    };
    let choice = a.shard.choice()?;
    let model = open_model_for_data(&a.model)?;
    let target = match &a.target {
        Some(name) => find_node(&model.graph, name).map_err(|e| bad(e.to_string()))?,
        None => classifier_input(&model.graph).map_err(|e| bad(e.to_string()))?,
    };
    let target_name = model.graph.node(target).name.clone();
    let name = parse_dataset(&a.data)?;
    let dir = data_dir(&a.data_opts);
    let subset =
        |ds: shears_data::Dataset, n: usize| ds.class_balanced_subset(n.min(ds.len()), a.data_seed);
    let (train_all, val_all) = shears_data::load_train_val(&dir, name)?;
    let train_ds = subset(train_all, a.train_images);
    let val_ds = subset(val_all, a.val_images);
    let test_ds = subset(shears_data::load(&dir, name, Split::Test)?, a.test_images);
    crate::commands::create_out_dir("--out", &a.out)?;

    let mut net = network(&model, a.threads)?;
    let t0 = Instant::now();
    let train = cache_features(
        &mut net,
        &train_ds,
        &model.preprocess,
        target,
        250,
        verbosity,
    )?;
    let val = cache_features(&mut net, &val_ds, &model.preprocess, target, 250, verbosity)?;
    let test = cache_features(
        &mut net,
        &test_ds,
        &model.preprocess,
        target,
        250,
        verbosity,
    )?;
    let feature_s = t0.elapsed().as_secs_f64();
    drop(net);

    let cfg = StudyConfig {
        ps: ps.clone(),
        ratios: a.ratios.clone(),
        seeds: (0..a.seeds).collect(),
        lsa_samples: a.lsa_samples,
        outputs,
        output_agg,
        head: HeadConfig {
            hidden: a.hidden,
            epochs: a.epochs,
            batch: a.batch_size,
            lr: a.lr,
            weight_decay: 0.0,
        },
        baselines: !a.no_baselines,
        shard: None,
        verbosity,
    };
    if let Some(choice) = choice {
        let run = LsaShardRun {
            model_opts: &a.model,
            out: &a.out,
            dataset: &name.to_string(),
            target: &target_name,
            feature_seconds: feature_s,
            json: a.json,
        };
        return run_lsa_shard(&run, &model, [&train, &val, &test], cfg, choice);
    }
    let res = run_study(&train, &val, &test, &cfg)?;
    let ctx = LsaFiles {
        model_path: &a.model.model,
        dataset: &name.to_string(),
        target: &target_name,
        n: (train.n, val.n, test.n),
        feature_seconds: feature_s,
        out: &a.out,
    };
    let report = write_lsa(&ctx, &cfg, &res)?;
    print_lsa(&ctx, &cfg, &res, report, a.json);
    Ok(())
}

/// What the files of an LSA study are made of besides its result (shared by a one-machine run
/// and `analyze merge`, so that both write the same files).
pub(crate) struct LsaFiles<'a> {
    /// The backbone file as given.
    pub model_path: &'a Path,
    /// The dataset's name.
    pub dataset: &'a str,
    /// The feature node.
    pub target: &'a str,
    /// Training, validation and test samples.
    pub n: (usize, usize, usize),
    /// Seconds of the feature caching.
    pub feature_seconds: f64,
    /// The output directory.
    pub out: &'a Path,
}

/// Writes lsa_grid.csv, lsa_summary.csv, the two plots and lsa.json; returns the report.
pub(crate) fn write_lsa(
    ctx: &LsaFiles<'_>,
    cfg: &StudyConfig,
    res: &StudyResult,
) -> Result<serde_json::Value> {
    let (ps, name, target_name) = (&cfg.ps, ctx.dataset, ctx.target);

    let grid = ctx.out.join("lsa_grid.csv");
    let summ = ctx.out.join("lsa_summary.csv");
    let js = ctx.out.join("lsa.json");
    let svg = ctx.out.join("lsa_accuracy.svg");
    let vol = ctx.out.join("lsa_volatility.svg");
    write(&grid, &study_csv(res))?;
    write(&summ, &summary_csv(res))?;
    let model_label = ctx
        .model_path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let title = format!(
        "LSA feature pruning: {model_label} features ({target_name}, d = {}) on {name}",
        res.d
    );
    let mut chart = LineChart::new(&title, "reduction level r", "test accuracy (%)");
    for &p in ps {
        chart = chart.series(&format!("LSA p={p}"), curve(res, Selection::Lsa(p)));
    }
    if cfg.baselines {
        chart = chart
            .series("magnitude", curve(res, Selection::Magnitude))
            .series("random", curve(res, Selection::Random));
    }
    chart.save(&svg)?;
    BarChart::new(
        &format!("Volatility (std of accuracy over p, r, seeds): {model_label} on {name}"),
        "std of accuracy (points)",
    )
    .bars(
        res.summary
            .iter()
            .map(|m| (m.method.clone(), m.std))
            .collect(),
    )
    .save(&vol)?;
    let report = json!({
        "model": ctx.model_path,
        "dataset": name.to_string(),
        "target": target_name,
        "features": res.d,
        "train_images": ctx.n.0,
        "val_images": ctx.n.1,
        "test_images": ctx.n.2,
        "split": Split::Test,
        "selection_split": Split::Val,
        "feature_seconds": ctx.feature_seconds,
        "config": cfg,
        "result": res,
        "files": [grid, summ, js.clone(), svg, vol],
    });
    write(
        &js,
        &serde_json::to_string_pretty(&report).expect("reports serialise: plain data"),
    )?;
    Ok(report)
}

/// Prints an LSA study: one JSON object or tables.
pub(crate) fn print_lsa(
    ctx: &LsaFiles<'_>,
    cfg: &StudyConfig,
    res: &StudyResult,
    report: serde_json::Value,
    as_json: bool,
) {
    if as_json {
        print_json(&report);
        return;
    }
    let (ps, name, target_name) = (&cfg.ps, ctx.dataset, ctx.target);
    let (feature_s, seeds) = (ctx.feature_seconds, cfg.seeds.len());
    let (train_n, val_n, test_n) = ctx.n;
    let model_label = ctx
        .model_path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();

    println!(
        "{} features at {target_name} ({} each), {} train / {} val / {} test images of {name}; \
         features cached in {feature_s:.1} s, grid in {:.1} s",
        model_label, res.d, train_n, val_n, test_n, res.seconds
    );
    let base: Vec<String> = res
        .base
        .iter()
        .map(|(s, acc)| format!("seed {s}: {acc:.2}%"))
        .collect();
    println!("unpruned head: {}", base.join(", "));
    let mut header = vec!["selection".to_string()];
    header.extend(cfg.ratios.iter().map(|r| format!("r={r}")));
    let hdr: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&hdr);
    let mut sels: Vec<Selection> = ps.iter().map(|&p| Selection::Lsa(p)).collect();
    if cfg.baselines {
        sels.extend([Selection::Magnitude, Selection::Random]);
    }
    for s in sels {
        let pts = curve(res, s);
        let mut row = vec![s.label()];
        row.extend(pts.iter().skip(1).map(|(_, acc)| format!("{acc:.2}")));
        t.row(row);
    }
    println!("mean test accuracy (%) over {seeds} seeds:");
    print!("{}", t.render());
    let mut t = Table::new(&[
        "method",
        "mean",
        "std",
        "seed std",
        "best (p, r) on val",
        "its val acc",
        "its test acc",
    ]);
    for m in &res.summary {
        t.row(vec![
            m.method.clone(),
            format!("{:.2}", m.mean),
            format!("{:.2}", m.std),
            format!("{:.2}", m.seed_std),
            match m.best_p {
                Some(p) => format!("p={p}, r={}", m.best_ratio),
                None => format!("r={}", m.best_ratio),
            },
            format!("{:.2}", m.best_val_accuracy),
            format!("{:.2}", m.best_accuracy),
        ]);
    }
    print!("{}", t.render());
    println!("wrote {}", ctx.out.display());
}
