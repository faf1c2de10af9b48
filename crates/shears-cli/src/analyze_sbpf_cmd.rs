//! `shears analyze sbpf`: damage-based layer sensitiveness and inverse-sensitiveness ratios
//! (methods §2).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};
use shears::analyze::plot::BarChart;
use shears::analyze::sbpf::{
    allocate_inverse, analyze, multi_step, rank_stability, Budget, Damage, MultiStepConfig,
    SbpfAllocation, SbpfConfig, SbpfReport,
};
use shears::analyze::sweep::write_atomic;
use shears::model::{save_model_as, Model};
use shears::progress::Verbosity;
use shears::prune::Criterion;
use shears::recover::{finetune, BnRecalConfig};
use shears::train::{CheckpointConfig, TrainConfig};
use shears_data::Split;
use shears_engine::Network;
use shears_ir::{Graph, Weights};

use crate::analyze_sweep_cmd::{eval_set, uptime, SubsetOpts};
use crate::args::{MacsBudgetOpts, ModelOpts};
use crate::commands::{bad, data_dir, open_model, open_model_for_data, parse_arch, parse_dataset};
use crate::output::{print_json, Table};
use crate::shard_cmd::{run_sbpf_shard, SbpfShardRun};
use crate::shard_opts::ShardOpts;

/// `shears analyze sbpf` arguments.
///
/// Damages each prunable group alone (zeroing a random fraction delta of its filters by
/// default), measures the accuracy drop s on a class-balanced subset, and, given a budget,
/// allocates per-group ratios r = min(r_max, c / s) with c bisected to meet it. Writes
/// sbpf.json, sbpf.csv, sensitivity.svg and (with a budget) ratios.json, the format of
/// `shears prune --ratios-from`. With --steps T and -o, prunes in T steps, re-analysing and
/// recalibrating batch norms between steps.
#[derive(Args, Debug)]
pub struct SbpfArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelOpts,
    #[command(flatten)]
    /// The evaluation subset.
    pub subset: SubsetOpts,
    /// Damage operator: drop-random, gauss-noise or drop-l1.
    #[arg(long, default_value = "drop-random")]
    pub damage: String,
    /// Damage levels, comma-separated (fraction of filters for drop-*, noise scale for
    /// gauss-noise); s is averaged over them.
    #[arg(
        long,
        value_name = "D,..",
        value_delimiter = ',',
        default_value = "0.5"
    )]
    pub delta: Vec<f32>,
    /// Damage repetitions (seeds) per level.
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Base seed of the damage.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Budget: remove this fraction of the analysed groups' filters.
    #[arg(long, value_name = "R", conflicts_with_all = ["target_macs", "speedup"])]
    pub filters: Option<f64>,
    #[command(flatten)]
    /// Budget: --target-macs F or --speedup X.
    pub macs: MacsBudgetOpts,
    /// Largest ratio of any group.
    #[arg(long, default_value_t = 0.9)]
    pub r_max: f64,
    /// Multi-step pruning in T steps (needs a budget and -o).
    #[arg(long, value_name = "T")]
    pub steps: Option<usize>,
    /// Within-group criterion of multi-step pruning (l1, l2, bn_scale, fpgm, random).
    #[arg(long, default_value = "l1")]
    pub criterion: String,
    /// Training images for BN recalibration between steps (0: none).
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub recal_images: usize,
    /// Fine-tune for S seconds after each step's pruning and BN recalibration (SGD with
    /// momentum, cosine over the budget, distillation from the unpruned model, pad-crop and
    /// flip for CIFAR); 0: no fine-tuning.
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    pub finetune_seconds: f64,
    /// Peak learning rate of the fine-tuning between steps.
    #[arg(long, value_name = "LR", default_value_t = 0.01)]
    pub finetune_lr: f32,
    /// Where multi-step pruning writes the pruned model.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// A second checkpoint of the same architecture: analyse it too and report the Spearman
    /// rank correlation of the two sensitiveness vectors.
    #[arg(long, value_name = "MODEL")]
    pub compare: Option<PathBuf>,
    /// Architecture of --compare when its file carries no graph.
    #[arg(long, value_name = "NAME")]
    pub compare_arch: Option<String>,
    /// Run every probe through the whole network instead of from cached prefix activations.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Images per forward batch.
    #[arg(long, default_value_t = 250)]
    pub batch: usize,
    #[command(flatten)]
    /// Which shard of the damage probes to compute (not with --steps or --compare).
    pub shard: ShardOpts,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

fn budget_of(a: &SbpfArgs) -> Result<Option<Budget>> {
    Ok(if let Some(r) = a.filters {
        if !(0.0..1.0).contains(&r) {
            return Err(bad(format!(
                "--filters {r} is outside [0, 1): it is the fraction of filters REMOVED"
            )));
        }
        Some(Budget::Filters { ratio: r })
    } else {
        a.macs
            .keep_fraction()
            .map_err(bad)?
            .map(|f| Budget::Macs { keep_fraction: f })
    })
}

/// Run `shears analyze sbpf`.
pub fn run(a: SbpfArgs) -> Result<()> {
    if let Some(o) = &a.output {
        crate::commands::check_model_out(o, &[&a.model.model])?;
    }
    let model = open_model_for_data(&a.model)?;
    let damage: Damage = a
        .damage
        .parse()
        .map_err(|e| bad(format!("--damage: {e}")))?;
    let budget = budget_of(&a)?;
    if !(0.0..=1.0).contains(&a.r_max) {
        return Err(bad(format!("--r-max {} is outside [0, 1]", a.r_max)));
    }
    if a.batch == 0 {
        return Err(bad("--batch 0: use at least 1"));
    }
    if !(a.finetune_seconds.is_finite() && a.finetune_seconds >= 0.0) {
        return Err(bad(format!(
            "--finetune-seconds {}: give a non-negative number of seconds",
            a.finetune_seconds
        )));
    }
    if a.steps.is_some() && (budget.is_none() || a.output.is_none()) {
        return Err(bad(
            "--steps needs a budget (--filters, --target-macs or --speedup) and -o FILE",
        ));
    }
    let criterion: Criterion = a.criterion.parse().map_err(|e| bad(format!("{e}")))?;
    let choice = a.shard.choice()?;
    if choice.is_some() && (a.steps.is_some() || a.compare.is_some()) {
        return Err(bad(
            "--steps and --compare run in one process; they cannot run as a shard",
        ));
    }
    let data = eval_set(&a.subset, &model)?;
    crate::commands::create_out_dir("--out", &a.out)?;
    let cfg = SbpfConfig {
        damage,
        deltas: a.delta.clone(),
        seeds: a.seeds,
        seed: a.seed,
        batch: a.batch,
        prefix_cache: !a.no_prefix_cache,
        shard: None,
        verbosity: if a.json {
            Verbosity::Quiet
        } else {
            Verbosity::Normal
        },
    };
    if let Some(choice) = choice {
        let run = SbpfShardRun {
            model_opts: &a.model,
            out: &a.out,
            budget,
            r_max: a.r_max,
            json: a.json,
        };
        return run_sbpf_shard(&run, &model, &data, cfg, choice);
    }
    let load = uptime();
    let report = analyze(&model.graph, &model.weights, &data, &cfg)?;
    let alloc = match budget {
        Some(b) => Some(allocate_inverse(
            &model.graph,
            &model.weights,
            &report.groups,
            b,
            a.r_max,
        )?),
        None => None,
    };
    let ctx = SbpfFiles {
        model_path: &a.model.model,
        data: &data.description,
        split: data.split,
        config: &cfg,
        out: &a.out,
    };
    let (mut out, mut files) = write_head(&ctx, load, &report, alloc.as_ref())?;
    // Rank stability against a second checkpoint.
    if let Some(path) = &a.compare {
        let arch = a.compare_arch.as_deref().or(a.model.arch.as_deref());
        let other = open_model(&ModelOpts {
            model: path.clone(),
            arch: arch.map(str::to_string),
            ..Default::default()
        })?;
        if let Some(s) = arch {
            parse_arch(s)?;
        }
        let rep2 = analyze(&other.graph, &other.weights, &data, &cfg)?;
        let (rho, n) = rank_stability(&report, &rep2)?;
        out["compare"] = json!({
            "model": path,
            "analysis": rep2,
            "spearman_rho": rho,
            "groups_compared": n,
        });
        let bars: Vec<(String, f64)> = rep2
            .groups
            .iter()
            .map(|g| (g.root.clone(), 100.0 * g.sensitiveness))
            .collect();
        let p = a.out.join("sensitivity_compare.svg");
        BarChart::new(
            &format!(
                "SBPF sensitiveness of {} (Spearman rho {rho:.3} against {})",
                path.display(),
                a.model.model.display()
            ),
            "accuracy drop (points)",
        )
        .bars(bars)
        .save(&p)?;
        files.push(p);
    }
    // Multi-step pruning.
    if let (Some(steps), Some(b), Some(o)) = (a.steps, budget, &a.output) {
        let name = parse_dataset(&a.subset.data)?;
        let train = if a.recal_images > 0 || a.finetune_seconds > 0.0 {
            Some(shears_data::load(
                &data_dir(&a.subset.data_opts),
                name,
                Split::Train,
            )?)
        } else {
            None
        };
        let ms = MultiStepConfig {
            steps,
            budget: b,
            r_max: a.r_max,
            criterion,
            sbpf: cfg.clone(),
            bn_recal: (a.recal_images > 0).then(|| {
                let mut c = BnRecalConfig::new(a.recal_images, a.batch);
                c.seed = a.seed;
                // The CIFAR models were trained with pad-crop 4 and flips; recalibrate on the
                // same distribution (see BnRecalConfig::augment_pad).
                if name.as_str().starts_with("cifar") {
                    c.augment_pad = Some(4);
                    c.augment_flip = true;
                }
                c
            }),
        };
        let mut teacher = Network::new(model.graph.clone(), &model.weights)?;
        let is_cifar = name.as_str().starts_with("cifar");
        let mut tune = |step: usize, g: &Graph, w: &mut Weights| -> Result<(), shears::Error> {
            let train = train.as_ref().expect("loaded for fine-tuning");
            let mut student = Network::new(g.clone(), w)?;
            let cfg = TrainConfig {
                lr: a.finetune_lr,
                augment_pad: is_cifar.then_some(4),
                augment_flip: is_cifar,
                seed: a.seed ^ step as u64,
                time_budget: Some(a.finetune_seconds),
                eval_at_start: false,
                ..TrainConfig::finetune(1000)
            };
            let verbosity = if a.json {
                Verbosity::Quiet
            } else {
                Verbosity::Normal
            };
            finetune(
                &mut student,
                Some(&mut teacher),
                train,
                None,
                &model.preprocess,
                &cfg,
                &CheckpointConfig::default(),
                verbosity,
            )?;
            *w = student.weights();
            Ok(())
        };
        let hook: Option<&mut shears::analyze::sbpf::FinetuneHook<'_>> =
            (a.finetune_seconds > 0.0).then_some(&mut tune as _);
        let res = multi_step(
            &model.graph,
            &model.weights,
            &data,
            train.as_ref().map(|d| (d, &model.preprocess)),
            &ms,
            hook,
        )?;
        let records = res.steps;
        let mut pruned = Model {
            graph: res.graph,
            weights: res.weights,
            preprocess: model.preprocess.clone(),
            preprocess_origin: model.preprocess_origin,
            arch: None,
            metadata: model.metadata.clone(),
            report: Default::default(),
        };
        pruned.metadata.remove("shears.graph");
        pruned.metadata.insert(
            shears::recover::META_CHANNELS.to_string(),
            serde_json::to_string(&res.kept_channels).expect("plain data"),
        );
        save_model_as(o, &pruned)?;
        let steps_json: Vec<Value> = records
            .iter()
            .map(|r| {
                json!({
                    "step": r.step,
                    "macs": r.macs,
                    "accuracy_pruned": r.accuracy_pruned,
                    "accuracy_recovered": r.accuracy_recovered,
                    "ratios": r.allocation.ratios,
                    "sensitiveness": r.analysis.sensitiveness(),
                })
            })
            .collect();
        out["multi_step"] = json!({
            "output": o,
            "finetune_seconds_per_step": a.finetune_seconds,
            "finetune_lr": a.finetune_lr,
            "macs_before": model.graph.macs(),
            "macs_after": pruned.graph.macs(),
            "steps": steps_json,
        });
        files.push(o.clone());
    }
    write_tail(&ctx, &report, alloc.as_ref(), &out, &mut files)?;
    print_sbpf(&ctx, &report, alloc.as_ref(), out, files, a.json);
    Ok(())
}

/// What the files of an SBPF analysis are made of besides its report (shared by a one-machine
/// run and `analyze merge`, so that both write the same files).
pub(crate) struct SbpfFiles<'a> {
    /// The model file as given.
    pub model_path: &'a Path,
    /// The evaluation set's description.
    pub data: &'a str,
    /// Its split.
    pub split: Option<Split>,
    /// The analysis settings.
    pub config: &'a SbpfConfig,
    /// The output directory.
    pub out: &'a Path,
}

/// The report object of sbpf.json (before any comparison or multi-step part) and ratios.json
/// when there is an allocation; returns the object and the files written.
pub(crate) fn write_head(
    ctx: &SbpfFiles<'_>,
    load: Option<String>,
    report: &SbpfReport,
    alloc: Option<&SbpfAllocation>,
) -> Result<(Value, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let out = json!({
        "model": ctx.model_path,
        "data": ctx.data,
        "split": ctx.split,
        "load_average": load,
        "analysis": report,
        "allocation": alloc,
    });
    if let Some(al) = alloc {
        let p = ctx.out.join("ratios.json");
        write_atomic(&p, &serde_json::to_string_pretty(&al.ratios)?)?;
        files.push(p);
    }
    Ok((out, files))
}

/// Writes sbpf.csv, sensitivity.svg, sbpf_ratios.svg (with an allocation) and sbpf.json.
pub(crate) fn write_tail(
    ctx: &SbpfFiles<'_>,
    report: &SbpfReport,
    alloc: Option<&SbpfAllocation>,
    out: &Value,
    files: &mut Vec<PathBuf>,
) -> Result<()> {
    let p = ctx.out.join("sbpf.csv");
    write_atomic(&p, &sbpf_csv(report, alloc))?;
    files.push(p);
    let p = ctx.out.join("sensitivity.svg");
    BarChart::new(
        &format!(
            "SBPF sensitiveness ({}, delta {:?}, {} seeds, {} images)",
            ctx.config.damage, ctx.config.deltas, ctx.config.seeds, report.images
        ),
        "accuracy drop (points)",
    )
    .bars(
        report
            .groups
            .iter()
            .map(|g| (g.root.clone(), 100.0 * g.sensitiveness))
            .collect(),
    )
    .save(&p)?;
    files.push(p);
    if let Some(al) = alloc {
        let p = ctx.out.join("sbpf_ratios.svg");
        BarChart::new("SBPF ratios (fraction of each group removed)", "ratio")
            .bars(
                al.groups
                    .iter()
                    .map(|g| (g.root.clone(), g.removed as f64 / g.size as f64))
                    .collect(),
            )
            .save(&p)?;
        files.push(p);
    }
    let p = ctx.out.join("sbpf.json");
    write_atomic(&p, &serde_json::to_string_pretty(out)?)?;
    files.push(p);
    Ok(())
}

/// Prints an SBPF report: one JSON object (with the files) or tables.
pub(crate) fn print_sbpf(
    ctx: &SbpfFiles<'_>,
    report: &SbpfReport,
    alloc: Option<&SbpfAllocation>,
    mut out: Value,
    files: Vec<PathBuf>,
    as_json: bool,
) {
    if as_json {
        out["files"] = json!(files);
        print_json(&out);
        return;
    }
    println!(
        "{}: {}, baseline top-1 {:.2}%, {} damage delta {:?} x {} seeds, {:.1}s",
        ctx.model_path.display(),
        ctx.data,
        100.0 * report.baseline_accuracy,
        ctx.config.damage,
        ctx.config.deltas,
        ctx.config.seeds,
        report.seconds
    );
    let mut t = Table::new(&["group", "root", "n", "damaged top-1", "s (points)", "ratio"]);
    for (i, g) in report.groups.iter().enumerate() {
        let r = alloc.map_or(String::from("-"), |al| {
            format!("{}/{}", al.groups[i].removed, al.groups[i].size)
        });
        t.row(vec![
            g.group.to_string(),
            g.root.clone(),
            g.size.to_string(),
            format!("{:.2}%", 100.0 * g.damaged_accuracy),
            format!("{:.2}", 100.0 * g.sensitiveness),
            r,
        ]);
    }
    print!("{}", t.render());
    if let Some(al) = alloc {
        println!(
            "allocation: {} of {} filters removed, MACs {} -> {} ({:.3} kept)",
            al.filters_removed,
            al.filters_total,
            al.macs_before,
            al.macs_after,
            al.macs_after as f64 / al.macs_before as f64
        );
    }
    if let Some(c) = out.get("compare") {
        println!(
            "rank stability against {}: Spearman rho {:.4} over {} groups",
            c["model"], c["spearman_rho"], c["groups_compared"]
        );
    }
    if let Some(m) = out.get("multi_step") {
        println!(
            "multi-step: MACs {} -> {}",
            m["macs_before"], m["macs_after"]
        );
    }
    for f in files {
        println!("wrote {}", f.display());
    }
}

fn sbpf_csv(r: &SbpfReport, al: Option<&SbpfAllocation>) -> String {
    let mut s =
        String::from("group,root,size,damaged_accuracy,damaged_loss,sensitiveness,ratio,removed\n");
    for (i, g) in r.groups.iter().enumerate() {
        let (ratio, removed) = al.map_or((String::new(), String::new()), |al| {
            (
                format!("{:.6}", al.groups[i].ratio),
                al.groups[i].removed.to_string(),
            )
        });
        let _ = writeln!(
            s,
            "{},{},{},{:.6},{:.6},{:.6},{},{}",
            g.group,
            g.root,
            g.size,
            g.damaged_accuracy,
            g.damaged_loss,
            g.sensitiveness,
            ratio,
            removed
        );
    }
    s
}
