//! `shears prune` and `shears info --groups`.
//!
//! `prune` turns its arguments into a [`shears::prune::AllocConfig`] (or reads a plan), calls
//! the library to score, allocate and cut, then verifies, evaluates, measures and saves. Every
//! number it prints comes from the library: costs from the graphs, latency from
//! [`shears::runtime::compare()`] (before and after in alternating warm blocks under a time
//! budget, in shears' engine or ONNX Runtime), accuracy from [`shears::eval::evaluate`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use shears::analyze::lsa::{LsaImportance, OutputAgg, PNorm};
use shears::eval::{evaluate, EvalConfig, EvalReport};
use shears::model::{save_model_as, Model};
use shears::progress::Verbosity;
use shears::prune::{
    self, input_batch, taylor_grads, verify, AllocConfig, Criterion, DepGraph, FoldMode,
    GradConfig, Plan, Reduction, ScoreContext, Strategy, Verification, VERIFY_TOLERANCE,
};
use shears::report::{random_inputs, summarize};
use shears::runtime::{Runtime, RuntimeKind};
use shears_data::{Dataset, Split};
use shears_ir::Graph;

use crate::args::{CriterionArg, FoldArg, PruneArgs, ReductionArg};
use crate::commands::{bad, data_dir, network, open_model, parse_dataset};
use crate::output::{print_json, thousands, Table};
use crate::prune_latency::{
    latency_pairs, latency_target, runtime_json, Guard, LatencyPair, LatencyTarget,
};

/// Metadata key under which a pruned model records how it was made.
const META_PRUNE: &str = "shears.prune";

/// `shears info MODEL --groups`.
pub fn info_groups(path: &Path, model: &Model, as_json: bool) -> Result<()> {
    let g = &model.graph;
    let dg = DepGraph::build(g)?;
    if !as_json {
        print!("{}", dg.describe(g));
        return Ok(());
    }
    let groups: Vec<Value> = dg
        .groups()
        .iter()
        .map(|grp| {
            let members: Vec<Value> = grp
                .members
                .iter()
                .map(|m| {
                    json!({
                        "node": g.node(m.node).name,
                        "op": g.node(m.node).op.type_name(),
                        "role": m.role.name(),
                        "n_idxs": m.n_idxs(),
                        "idxs": m.idxs,
                    })
                })
                .collect();
            json!({
                "id": grp.id,
                "root": g.node(grp.root).name,
                "size": grp.size,
                "prunable": grp.prunable,
                "why_not": grp.why_not,
                "members": members,
            })
        })
        .collect();
    print_json(&json!({
        "model": path,
        "arch": model.arch.map(|x| x.to_string()),
        "n_groups": dg.groups().len(),
        "n_prunable": dg.prunable().count(),
        "prunable_channels": dg.prunable().map(|x| x.size).sum::<usize>(),
        "groups": groups,
    }));
    Ok(())
}

/// The built-in criterion of `c`; `None` for LSA, which is built from data by the analysis.
fn criterion_of(c: CriterionArg) -> Option<Criterion> {
    Some(match c {
        CriterionArg::L1 => Criterion::L1,
        CriterionArg::L2 => Criterion::L2,
        CriterionArg::Bn => Criterion::BnScale,
        CriterionArg::Taylor => Criterion::Taylor,
        CriterionArg::Fpgm => Criterion::Fpgm,
        CriterionArg::Random => Criterion::Random,
        CriterionArg::Lsa => return None,
    })
}

fn fold_of(f: FoldArg) -> FoldMode {
    match f {
        FoldArg::Exact => FoldMode::Exact,
        FoldArg::Interior => FoldMode::Interior,
    }
}

/// The allocation configuration the arguments ask for; every out-of-range value is a bad-input
/// error naming the flag.
fn alloc_config(a: &PruneArgs, graph: &Graph) -> Result<AllocConfig> {
    let keep = |flag: &str, f: f64| -> Result<f64> {
        if !(f > 0.0 && f <= 1.0) {
            return Err(bad(format!(
                "{flag} {f} is outside (0, 1]: it is the fraction KEPT (0.5 keeps half; for a \
                 2x reduction use --speedup 2)"
            )));
        }
        Ok(f)
    };
    let strategy = if let Some(r) = a.ratio {
        if !(0.0..1.0).contains(&r) {
            return Err(bad(format!(
                "--ratio {r} is outside [0, 1): it is the fraction of each group's channels \
                 REMOVED (0.3 removes 30%)"
            )));
        }
        if a.global {
            Strategy::Global { ratio: r }
        } else {
            Strategy::Uniform { ratio: r }
        }
    } else if let Some(f) = a.target_macs {
        Strategy::TargetMacs {
            keep_fraction: keep("--target-macs", f)?,
        }
    } else if let Some(f) = a.target_params {
        Strategy::TargetParams {
            keep_fraction: keep("--target-params", f)?,
        }
    } else if let Some(x) = a.speedup {
        if !(x.is_finite() && x >= 1.0) {
            return Err(bad(format!(
                "--speedup {x} must be a number >= 1 (the factor by which MACs shrink)"
            )));
        }
        Strategy::TargetMacs {
            keep_fraction: 1.0 / x,
        }
    } else if a.runtime.target_latency.is_some() {
        // Replaced by the latency allocation once the groups are scored.
        Strategy::PerGroup {
            ratios: BTreeMap::new(),
        }
    } else if let Some(path) = &a.ratios_from {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("--ratios-from {}: {e}", path.display())))?;
        let ratios: BTreeMap<String, f32> = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "--ratios-from {}: expected a JSON object {{\"<group root>\": ratio}}: {e}",
                path.display()
            ))
        })?;
        for (name, r) in &ratios {
            if !(0.0..1.0).contains(r) {
                return Err(bad(format!(
                    "--ratios-from {}: ratio {r} of group {name:?} is outside [0, 1) (the \
                     fraction REMOVED)",
                    path.display()
                )));
            }
        }
        Strategy::PerGroup { ratios }
    } else {
        return Err(bad(
            "say how much to prune: --ratio R, --target-macs F, --target-params F, --speedup X \
             or --ratios-from FILE (or replay a plan with --plan-in FILE)",
        ));
    };
    let mut cfg = AllocConfig::new(strategy);
    cfg.global = a.global;
    if let Some(m) = a.max_ratio {
        if !(0.0..=1.0).contains(&m) {
            return Err(bad(format!(
                "--max-ratio {m} is outside [0, 1] (the largest fraction of a group removed)"
            )));
        }
        cfg.max_ratio = m;
    }
    if let Some(q) = a.round_to {
        if q == 0 {
            return Err(bad("--round-to 0: round to a multiple of at least 1"));
        }
        cfg.round_to = Some(q);
    }
    let names: BTreeSet<&str> = graph.nodes().iter().map(|n| n.name.as_str()).collect();
    for n in &a.ignore {
        if !names.contains(n.as_str()) {
            return Err(bad(format!(
                "--ignore: unknown layer {n:?} (not a node of this graph; `shears info MODEL` \
                 lists the layers)"
            )));
        }
    }
    cfg.ignore = a.ignore.clone();
    cfg.fold = a.fold.map(fold_of).unwrap_or_default();
    Ok(cfg)
}

/// Parameters and MACs of one conv or linear layer before and after.
#[derive(Serialize)]
struct LayerCost {
    name: String,
    op: String,
    params_before: u64,
    params_after: u64,
    macs_before: u64,
    macs_after: u64,
    out_before: usize,
    out_after: usize,
}

fn layer_costs(before: &Graph, after: &Graph) -> Vec<LayerCost> {
    let a = summarize(before);
    let b = summarize(after);
    a.layers
        .iter()
        .zip(&b.layers)
        .filter(|(x, _)| x.op == "conv2d" || x.op == "linear" || x.macs > 0)
        .map(|(x, y)| LayerCost {
            name: x.name.clone(),
            op: x.op.clone(),
            params_before: x.params,
            params_after: y.params,
            macs_before: x.macs,
            macs_after: y.macs,
            out_before: x.output[0],
            out_after: y.output[0],
        })
        .collect()
}

#[derive(Serialize)]
struct Accuracy {
    dataset: String,
    images: usize,
    before_top1: Option<f64>,
    after_top1: f64,
    before_top5: Option<f64>,
    after_top5: f64,
    before_loss: Option<f64>,
    after_loss: f64,
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::INFINITY
    }
}

/// Runs `shears prune`.
pub fn run(a: PruneArgs) -> Result<()> {
    let quiet = a.json;
    let say = |s: &str| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    if a.verify_images == 0 {
        return Err(bad(
            "--verify-images 0: verification needs at least one image",
        ));
    }
    if a.latency_iters == Some(0) {
        return Err(bad("--latency-iters 0: measure at least one run"));
    }
    let budget = a.runtime.budget(a.latency_iters)?;
    let mut inputs = vec![a.model.model.as_path()];
    inputs.extend(a.plan_in.as_deref());
    crate::commands::check_model_out(&a.output, &inputs)?;
    if let Some(p) = &a.plan_out {
        inputs.push(&a.output);
        crate::commands::check_out(p, &inputs)?;
    }
    let model = open_model(&a.model)?;
    shears::model::require_finite(&model, &a.model.model)?;
    if a.data.is_some() || matches!(a.criterion, Some(CriterionArg::Taylor | CriterionArg::Lsa)) {
        crate::commands::note_default_preprocess(&a.model.model, &model);
    }
    let graph = &model.graph;
    if graph.inputs().len() != 1 || graph.outputs().len() != 1 {
        return Err(bad(format!(
            "{}: pruning reports need a model with one input and one output (this one has {} \
             and {})",
            a.model.model.display(),
            graph.inputs().len(),
            graph.outputs().len()
        )));
    }
    if a.from_skeleton {
        return from_skeleton(&a, &model);
    }
    // Opened first, so that a missing runtime fails before any work.
    let target_latency = a.runtime.target_latency()?;
    let runtime = if a.no_latency && target_latency.is_none() {
        None
    } else {
        Some(a.runtime.open(a.threads)?)
    };
    let mut latency_alloc: Option<LatencyTarget> = None;
    let mut guard_note: Option<String> = None;
    let dataset = a.data.as_deref().map(parse_dataset).transpose()?;
    let dir = data_dir(&a.data_opts);
    let test_set: Option<Dataset> = match dataset {
        Some(name) => Some(shears_data::load(&dir, name, Split::Test)?),
        None => None,
    };
    let dg = DepGraph::build(graph)?;

    // The plan: replayed, or scored and allocated.
    let mut grad_seconds = None;
    let (plan, plan_seconds, alloc) = if let Some(path) = &a.plan_in {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("--plan-in {}: {e}", path.display())))?;
        let mut plan =
            Plan::from_json(&text).with_context(|| format!("--plan-in {}", path.display()))?;
        if let Some(f) = a.fold {
            plan.fold = fold_of(f);
        }
        plan.check(graph, &dg)
            .with_context(|| format!("--plan-in {}", path.display()))?;
        (plan, 0.0, None)
    } else {
        let crit = criterion_of(
            a.criterion
                .expect("clap requires --criterion without --plan-in"),
        );
        let mut cfg = alloc_config(&a, graph)?;
        let reduction = match a.reduction {
            ReductionArg::Mean => Reduction::Mean,
            ReductionArg::Sum => Reduction::Sum,
            ReductionArg::Max => Reduction::Max,
        };
        let criterion: Box<dyn prune::Importance> = match crit {
            Some(c) => c.build(reduction, a.seed),
            None => {
                let p: PNorm = a.p.parse().map_err(|e| bad(format!("--p: {e}")))?;
                let Some(name) = dataset else {
                    return Err(bad(format!(
                        "--criterion lsa needs data: give --data NAME (sensitivities are taken \
                         on {} training images)",
                        a.lsa_images
                    )));
                };
                let train = shears_data::load(&dir, name, Split::Train)?;
                say(&format!(
                    "lsa: p = {p} sensitivities on {} {name} training images",
                    a.lsa_images.min(train.len())
                ));
                let t = Instant::now();
                let mut net = network(&model, a.threads)?;
                let imp = LsaImportance::on_dataset(
                    &mut net,
                    &train,
                    &model.preprocess,
                    a.lsa_images,
                    p,
                    OutputAgg::Max,
                    a.seed,
                )?;
                grad_seconds = Some(t.elapsed().as_secs_f64());
                Box::new(imp)
            }
        };
        let grads = if crit == Some(Criterion::Taylor) {
            let Some(name) = dataset else {
                return Err(bad(format!(
                    "--criterion taylor needs data: give --data NAME (gradients are taken on \
                     {} training images)",
                    a.taylor_images
                )));
            };
            let train = shears_data::load(&dir, name, Split::Train)?;
            say(&format!(
                "taylor: gradients on {} {name} training images",
                a.taylor_images.min(train.len())
            ));
            let t = Instant::now();
            let mut net = network(&model, a.threads)?;
            let g = taylor_grads(
                &mut net,
                &train,
                &model.preprocess,
                &GradConfig {
                    n_images: a.taylor_images,
                    seed: a.seed,
                    ..Default::default()
                },
            )?;
            grad_seconds = Some(t.elapsed().as_secs_f64());
            Some(g)
        } else {
            None
        };
        let mut ctx = ScoreContext::new(graph, &model.weights);
        if let Some(g) = &grads {
            ctx = ctx.with_grads(g);
        }
        let t = Instant::now();
        let mut plan = if let (Some(keep), Some(rt)) = (target_latency, &runtime) {
            let (plan, strategy, target) = latency_target(
                &a,
                rt,
                (&ctx, &dg, criterion.as_ref()),
                &cfg,
                keep,
                &budget,
                &say,
            )?;
            cfg.strategy = strategy;
            latency_alloc = Some(target);
            plan
        } else {
            prune::plan_with(&ctx, &dg, criterion.as_ref(), &cfg)?
        };
        let target = matches!(
            cfg.strategy,
            Strategy::TargetMacs { .. } | Strategy::TargetParams { .. }
        );
        if let Some(rt) = runtime
            .as_ref()
            .filter(|r| target && r.kind() == RuntimeKind::OnnxRuntime)
        {
            let g = Guard {
                runtime: rt,
                ctx: &ctx,
                dg: &dg,
                criterion: criterion.as_ref(),
                batches: [1, a.runtime.latency_batch],
                budget: &budget,
            };
            let (p, note) = g.fastest(plan, &cfg, &say)?;
            plan = p;
            guard_note = note;
        }
        (plan, t.elapsed().as_secs_f64(), Some(cfg))
    };
    if let Some(ws) = plan.config.get("warnings").and_then(Value::as_array) {
        for w in ws.iter().filter_map(Value::as_str) {
            eprintln!("warning: {w}");
        }
    }
    let t = Instant::now();
    let pruned = prune::prune(graph, &model.weights, &plan)?;
    let surgery_seconds = t.elapsed().as_secs_f64();
    // Time to prune: gradients (Taylor), scoring and allocation, surgery; not file or dataset
    // loading.
    let prune_seconds = grad_seconds.unwrap_or(0.0) + plan_seconds + surgery_seconds;
    if let Some(p) = &a.plan_out {
        let text = plan.to_json();
        shears_io::write_atomic(p, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("writing the plan to {}", p.display()))?;
    }

    // Verification on real inputs (or seeded random ones).
    let verification: Option<(Verification, String)> = if a.verify {
        let (x, what) = match &test_set {
            Some(ds) => {
                let input = graph.shape(graph.inputs()[0]).to_vec();
                let x = input_batch(ds, &model.preprocess, &input, a.verify_images)?;
                let n = x.shape()[0];
                (x, format!("{n} images of {}", ds.name))
            }
            None => (
                random_inputs(graph, a.verify_images, a.seed),
                format!("{} random inputs in [-1, 1)", a.verify_images),
            ),
        };
        let v = verify(graph, &model.weights, &plan, &pruned, &x, VERIFY_TOLERANCE)?;
        Some((v, what))
    } else {
        None
    };

    let mut before_net = network(&model, a.threads)?;
    let after_model = Model {
        graph: pruned.graph.clone(),
        weights: pruned.weights.clone(),
        preprocess: model.preprocess.clone(),
        preprocess_origin: model.preprocess_origin,
        arch: model.arch,
        metadata: model.metadata.clone(),
        report: Default::default(),
    };
    let mut after_net = network(&after_model, a.threads)?;

    // Accuracy before and right after pruning.
    let accuracy: Option<Accuracy> = match &test_set {
        Some(ds) => {
            let cfg = EvalConfig {
                batch_size: 250,
                limit: a.eval_limit,
                verbosity: if quiet {
                    Verbosity::Quiet
                } else {
                    Verbosity::Normal
                },
            };
            let b: Option<EvalReport> = if a.skip_before_eval {
                None
            } else {
                Some(evaluate(&mut before_net, ds, &model.preprocess, &cfg)?)
            };
            let p: EvalReport = evaluate(&mut after_net, ds, &model.preprocess, &cfg)?;
            Some(Accuracy {
                dataset: ds.name.clone(),
                images: p.images,
                before_top1: b.as_ref().map(|r| r.top1),
                after_top1: p.top1,
                before_top5: b.as_ref().map(|r| r.top5),
                after_top5: p.top5,
                before_loss: b.as_ref().map(|r| r.loss),
                after_loss: p.loss,
            })
        }
        None => None,
    };

    // Latency, before and after in alternating blocks at each batch size.
    let latency: Vec<LatencyPair> = match &runtime {
        None => Vec::new(),
        Some(r) => latency_pairs(
            r,
            (graph, &model.weights),
            (&pruned.graph, &pruned.weights),
            &[1, a.runtime.latency_batch],
            &budget,
            &say,
        )?,
    };
    let threads = runtime
        .as_ref()
        .map_or_else(|| before_net.num_threads(), Runtime::threads);

    // Save the pruned model, self-describing.
    let mut out_model = after_model;
    let record = json!({
        "source": a.model.model,
        "criterion": plan.criterion,
        "fold": plan.fold,
        "groups_pruned": pruned.report.groups.len(),
        "channels_removed": plan.n_removed(),
        "macs_before": pruned.report.before.macs,
        "macs_after": pruned.report.after.macs,
        "params_before": pruned.report.before.params,
        "params_after": pruned.report.after.params,
    });
    out_model
        .metadata
        .insert(META_PRUNE.to_string(), record.to_string());
    // The kept original channels, for recovery after the kept weights have changed.
    let kept =
        shears::recover::kept_channels(graph, &model.weights, &pruned.graph, &pruned.weights);
    out_model.metadata.insert(
        shears::recover::META_CHANNELS.to_string(),
        serde_json::to_string(&kept).expect("plain data"),
    );
    if let Some(name) = dataset {
        out_model
            .metadata
            .entry(shears::model::META_DATASET.to_string())
            .or_insert_with(|| name.to_string());
    }
    save_model_as(&a.output, &out_model)?;

    let before = pruned.report.before;
    let after = pruned.report.after;
    let macs_kept = ratio(after.macs as f64, before.macs as f64);
    let params_kept = ratio(after.params as f64, before.params as f64);
    let groups: Vec<Value> = pruned
        .report
        .groups
        .iter()
        .map(|g| {
            json!({
                "group_id": g.group_id,
                "root": g.root,
                "before": g.size,
                "after": g.size - g.removed,
                "removed": g.removed,
            })
        })
        .collect();
    let n_prunable = dg.prunable().count();
    if a.json {
        print_json(&json!({
            "model": a.model.model,
            "arch": model.arch.map(|x| x.to_string()),
            "output": a.output,
            "criterion": plan.criterion,
            "fold": plan.fold,
            "alloc": alloc,
            "plan_in": a.plan_in,
            "plan_out": a.plan_out,
            "groups": groups,
            "prunable_groups": n_prunable,
            "channels_removed": plan.n_removed(),
            "params": {"before": before.params, "after": after.params, "kept": params_kept,
                       "reduction": ratio(before.params as f64, after.params as f64)},
            "macs": {"before": before.macs, "after": after.macs, "kept": macs_kept,
                     "reduction": ratio(before.macs as f64, after.macs as f64)},
            "layers": layer_costs(graph, &pruned.graph),
            "latency": latency,
            "runtime": runtime.as_ref().map(runtime_json),
            "latency_target": latency_alloc,
            "latency_guard": guard_note,
            "threads": threads,
            "timing": {
                "taylor_grads_s": grad_seconds,
                "plan_s": plan_seconds,
                "surgery_s": surgery_seconds,
                "prune_s": prune_seconds,
            },
            "accuracy": accuracy,
            "split": accuracy.as_ref().map(|_| Split::Test),
            "verification": verification.as_ref().map(|(v, what)| json!({
                "passed": true,
                "inputs": what,
                "result": v,
            })),
            "surgery": pruned.report,
        }));
        return Ok(());
    }

    // Human output.
    let how = match &alloc {
        Some(cfg) => describe_alloc(cfg),
        None => format!(
            "plan {}",
            a.plan_in.as_ref().expect("no alloc means a plan").display()
        ),
    };
    println!(
        "pruned {} with {} ({how}, fold {}) in {:.3} s",
        a.model.model.display(),
        plan.criterion,
        plan.fold,
        prune_seconds
    );
    if let Some(s) = grad_seconds {
        println!("  (of which taylor gradients {s:.2} s)");
    }
    println!(
        "{} of {} prunable groups pruned, {} channels removed",
        pruned.report.groups.len(),
        n_prunable,
        plan.n_removed()
    );
    println!();
    let mut t = Table::new(&["group", "root", "channels", "removed"]);
    for g in &pruned.report.groups {
        t.row(vec![
            g.group_id.to_string(),
            g.root.clone(),
            format!("{} -> {}", g.size, g.size - g.removed),
            g.removed.to_string(),
        ]);
    }
    print!("{}", t.render());
    println!();
    let mut t = Table::new(&["", "before", "after", "kept", "reduction"]);
    t.row(vec![
        "parameters".into(),
        thousands(before.params),
        thousands(after.params),
        format!("{:.4}", params_kept),
        format!("{:.2}x", 1.0 / params_kept),
    ]);
    t.row(vec![
        "MACs / image".into(),
        thousands(before.macs),
        thousands(after.macs),
        format!("{:.4}", macs_kept),
        format!("{:.2}x", 1.0 / macs_kept),
    ]);
    for l in &latency {
        t.row(vec![
            format!("latency b{} (ms)", l.batch),
            format!("{:.3}", l.before.median_ms),
            format!("{:.3}", l.after.median_ms),
            format!("{:.4}", 1.0 / l.speedup),
            format!("{:.2}x", l.speedup),
        ]);
    }
    if let Some(acc) = &accuracy {
        t.row(vec![
            "top-1 (%)".into(),
            acc.before_top1
                .map_or("-".to_string(), |x| format!("{x:.2}")),
            format!("{:.2}", acc.after_top1),
            String::new(),
            String::new(),
        ]);
    }
    print!("{}", t.render());
    if let Some(r) = runtime.as_ref().filter(|_| !latency.is_empty()) {
        let runs: Vec<String> = latency
            .iter()
            .map(|l| format!("{} (batch {})", l.before.iters, l.batch))
            .collect();
        println!(
            "latency: {} {}, {threads} threads; median of {} timed runs ({} s budget per model \
             and batch) after {} warm-up runs, before and after in alternating blocks (each \
             warmed by one untimed run)",
            r.kind(),
            r.version(),
            runs.join(" and "),
            budget.seconds,
            budget.warmup
        );
    }
    if let Some(n) = &guard_note {
        println!("latency guard: {n}");
    }
    if let Some(t) = &latency_alloc {
        let st = &t.steering;
        let chosen = &st.steps[st.chosen];
        let tables = match (t.layer_shapes, &t.cache, &t.allocation) {
            (Some(n), Some(c), Some(al)) => format!(
                "; the tables ({n} layer shapes, {}) predicted {:.4}",
                c.display(),
                al.predicted_fraction()
            ),
            _ => String::new(),
        };
        println!(
            "latency target: keep {} of the latency (geometric mean over batch 1 and {}), \
             steered by {}: {} steps, measured {:.4} ({}){tables}",
            t.keep,
            t.batch,
            st.by,
            st.steps.len(),
            chosen.fraction,
            if st.met {
                format!("within {:.0}%", 100.0 * st.tolerance)
            } else {
                format!("NOT within {:.0}%: {}", 100.0 * st.tolerance, st.stopped)
            }
        );
    }
    if let Some(acc) = &accuracy {
        println!(
            "accuracy: {} test images of {}, right after pruning (no fine-tuning)",
            acc.images, acc.dataset
        );
    }
    let r = &pruned.report;
    println!(
        "surgery: {} constant folds; {} removed channels forced to zero (largest constant \
         {:.3e}); {}",
        r.folds.len(),
        r.zeroed_channels,
        r.max_zeroed_constant,
        if r.is_exact() {
            "exact".to_string()
        } else {
            format!(
                "{} border approximations, largest {:.3e}",
                r.approximations.len(),
                r.max_deviation()
            )
        }
    );
    if let Some((v, what)) = &verification {
        println!(
            "verify: ok, max |masked - pruned| = {:.3e} on {what} (tolerance {:.1e})",
            v.max_abs_diff, v.tolerance
        );
        if let Some(n) = &v.note {
            println!("        {n}");
        }
    }
    if let Some(p) = &a.plan_out {
        println!("plan: {}", p.display());
    }
    println!("wrote {}", a.output.display());
    Ok(())
}

fn describe_alloc(cfg: &AllocConfig) -> String {
    let scope = if cfg.global { "global" } else { "uniform" };
    let mut s = match &cfg.strategy {
        Strategy::Uniform { ratio } => format!("uniform ratio {ratio} removed"),
        Strategy::Global { ratio } => format!("global ratio {ratio} removed"),
        Strategy::PerGroup { ratios } => format!("per-group ratios for {} groups", ratios.len()),
        Strategy::TargetMacs { keep_fraction } => {
            format!("{scope}, MACs target {keep_fraction:.4} kept")
        }
        Strategy::TargetParams { keep_fraction } => {
            format!("{scope}, params target {keep_fraction:.4} kept")
        }
    };
    if cfg.max_ratio < 1.0 {
        s.push_str(&format!(", max ratio {}", cfg.max_ratio));
    }
    if let Some(q) = cfg.round_to {
        s.push_str(&format!(", round to {q}"));
    }
    if !cfg.ignore.is_empty() {
        s.push_str(&format!(", ignoring {}", cfg.ignore.join(",")));
    }
    s
}

/// `shears prune --from-skeleton`: the final static-threshold prune of a sparse-trained model.
fn from_skeleton(a: &PruneArgs, model: &Model) -> Result<()> {
    use shears::sparse::{prune_from_skeleton, Skeleton, META_SKELETON};
    let path = a.model.model.display().to_string();
    let quiet = a.json;
    let text = model.metadata.get(META_SKELETON).ok_or_else(|| {
        bad(format!(
            "{path}: no filter skeleton in the metadata ({META_SKELETON}); train it with \
             `shears train --cdp PROP --dtc TAU`"
        ))
    })?;
    let sk = Skeleton::from_json(text).map_err(|e| bad(format!("{path}: {e}")))?;
    let tau = a.skeleton_tau.or(sk.tau).ok_or_else(|| {
        bad(format!(
            "{path}: the model was trained without --dtc; give the threshold with --skeleton-tau"
        ))
    })?;
    let t0 = Instant::now();
    let pr = prune_from_skeleton(&model.graph, &model.weights, &sk, tau)
        .map_err(|e| bad(format!("{path}: {e}")))?;
    let prune_seconds = t0.elapsed().as_secs_f64();
    let masked_model = Model {
        weights: pr.masked.clone(),
        ..model.clone()
    };
    let mut meta = model.metadata.clone();
    meta.remove(META_SKELETON);
    let r = &pr.report;
    meta.insert(
        META_PRUNE.to_string(),
        json!({"method": "cdp-dtc skeleton", "tau": tau, "report": r}).to_string(),
    );
    // The kept channels, matched against the masked weights the surgery started from.
    let kept = shears::recover::kept_channels(&model.graph, &pr.masked, &pr.graph, &pr.weights);
    meta.insert(
        shears::recover::META_CHANNELS.to_string(),
        serde_json::to_string(&kept).expect("plain data"),
    );
    let out_model = Model {
        graph: pr.graph.clone(),
        weights: pr.weights.clone(),
        preprocess: model.preprocess.clone(),
        preprocess_origin: model.preprocess_origin,
        arch: model.arch,
        metadata: meta,
        report: Default::default(),
    };
    let mut masked_net = network(&masked_model, a.threads)?;
    let mut pruned_net = network(&out_model, a.threads)?;
    let dataset = a.data.as_deref().map(parse_dataset).transpose()?;
    let test_set: Option<Dataset> = match dataset {
        Some(name) => Some(shears_data::load(
            &data_dir(&a.data_opts),
            name,
            Split::Test,
        )?),
        None => None,
    };
    let verification = if a.verify {
        let input = model.graph.shape(model.graph.inputs()[0]).to_vec();
        let x = match &test_set {
            Some(ds) => input_batch(ds, &model.preprocess, &input, a.verify_images)?,
            None => random_inputs(&model.graph, a.verify_images, a.seed),
        };
        let m = masked_net.forward(&x, shears_engine::Mode::Eval)?;
        let p = pruned_net.forward(&x, shears_engine::Mode::Eval)?;
        let d = m
            .data()
            .iter()
            .zip(p.data())
            .fold(0f64, |acc, (u, v)| acc.max(f64::from((u - v).abs())));
        if d > VERIFY_TOLERANCE {
            anyhow::bail!(
                "verification failed: the pruned model differs from the masked skeleton \
                 network by {d:e} (tolerance {VERIFY_TOLERANCE:e})"
            );
        }
        Some(d)
    } else {
        None
    };
    let accuracy = match &test_set {
        Some(ds) => {
            let cfg = EvalConfig {
                batch_size: 250,
                limit: a.eval_limit,
                verbosity: Verbosity::Quiet,
            };
            let trained = if a.skip_before_eval {
                None
            } else {
                let mut net = network(model, a.threads)?;
                Some(evaluate(&mut net, ds, &model.preprocess, &cfg)?.top1)
            };
            let pruned = evaluate(&mut pruned_net, ds, &model.preprocess, &cfg)?;
            Some(json!({
                "dataset": ds.name,
                "images": pruned.images,
                "trained_top1": trained,
                "pruned_top1": pruned.top1,
            }))
        }
        None => None,
    };
    save_model_as(&a.output, &out_model)?;
    let pct = |x: usize, n: usize| 100.0 * x as f64 / n.max(1) as f64;
    if a.json {
        print_json(&json!({
            "model": a.model.model,
            "output": a.output,
            "tau": tau,
            "report": r,
            "filter_sparsity": pct(r.dead_filters, r.filters) / 100.0,
            "stripe_sparsity": pct(r.dead_stripes, r.stripes) / 100.0,
            "verify_max_abs_diff": verification,
            "accuracy": accuracy,
            "prune_seconds": prune_seconds,
        }));
        return Ok(());
    }
    let _ = quiet;
    println!(
        "static tau {tau}: {}/{} filters dead ({:.2}%), {} removed ({} kept on residual sums); \
         {}/{} stripes dead ({:.2}%)",
        r.dead_filters,
        r.filters,
        pct(r.dead_filters, r.filters),
        r.removed_filters,
        r.kept_dead_filters,
        r.dead_stripes,
        r.stripes,
        pct(r.dead_stripes, r.stripes)
    );
    for b in &r.collapsed {
        println!(
            "collapsed {} into its shortcut (removed {}; branch constant max |{:e}| kept as {})",
            b.add,
            b.removed.join(", "),
            b.max_abs_shift,
            b.shift_node.as_deref().unwrap_or("nothing (zero)")
        );
    }
    println!(
        "params {} -> {}; MACs {} -> {} (stripe-wise {})",
        thousands(r.params_before),
        thousands(r.params_after),
        thousands(r.macs_before),
        thousands(r.macs_after),
        thousands(r.stripe_macs_after)
    );
    if let Some(d) = verification {
        println!("verify: max |masked - pruned| = {d:e}");
    }
    if let Some(acc) = &accuracy {
        println!("accuracy: {acc}");
    }
    println!("saved {}", a.output.display());
    Ok(())
}
