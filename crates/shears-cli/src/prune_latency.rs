//! The latency parts of `shears prune`: the never-slower guard of MACs and parameter targets
//! in ONNX Runtime, `--target-latency` (tables and steering), and the before/after timing.

use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};
use shears::prune::{self, AllocConfig, DepGraph, Plan, ScoreContext, Strategy};
use shears::report::Latency;
use shears::runtime::{self as rt, Budget, Runtime};
use shears_ir::Graph;

use crate::args::PruneArgs;
use crate::prune_cmd::ratio;
use crate::runtime_opts::LatencyViaArg;

/// One batch size's latency before and after pruning.
#[derive(Serialize)]
pub(crate) struct LatencyPair {
    /// The batch size.
    pub(crate) batch: usize,
    /// The original model.
    pub(crate) before: Latency,
    /// The pruned model.
    pub(crate) after: Latency,
    /// before / after median.
    pub(crate) speedup: f64,
}

/// MLAS (ONNX Runtime's CPU kernels) blocks channels by up to 16.
const ORT_CHANNEL_BLOCK: usize = 16;

/// The guard of MACs and parameter targets in ONNX Runtime: never slower than the original,
/// and the fastest of the widths as solved and rounded to MLAS's channel blocks.
pub(crate) struct Guard<'a> {
    pub(crate) runtime: &'a Runtime,
    pub(crate) ctx: &'a ScoreContext<'a>,
    pub(crate) dg: &'a DepGraph,
    pub(crate) criterion: &'a dyn prune::Importance,
    pub(crate) batches: [usize; 2],
    pub(crate) budget: &'a Budget,
}

impl Guard<'_> {
    /// `plan`'s measured speed-up over the original at each batch.
    fn speedups(&self, plan: &Plan) -> Result<Vec<(usize, f64)>> {
        let (g, w) = (self.ctx.graph, self.ctx.weights);
        let mut before = self.runtime.prepare(g, w)?;
        let kept = rt::latency_kept(
            self.runtime,
            &mut before,
            (g, w),
            plan,
            &self.batches,
            self.budget,
        )?;
        Ok(kept
            .into_iter()
            .map(|(b, f)| (b, 1.0 / f.max(1e-12)))
            .collect())
    }

    /// The fastest of `plan` and the same target solved with kept widths rounded up to
    /// multiples of 8 and of [`ORT_CHANNEL_BLOCK`] (MLAS's channel blocks; only roundings
    /// coarser than the one asked for), each measured against the original at every batch:
    /// the candidate with the best geometric-mean speed-up among those not slower than the
    /// original at any batch; else the empty plan (the original model). The note gives every
    /// candidate's measured speed-ups and the choice.
    pub(crate) fn fastest(
        &self,
        plan: Plan,
        cfg: &AllocConfig,
        say: &dyn Fn(&str),
    ) -> Result<(Plan, Option<String>)> {
        let mut candidates: Vec<(String, Plan)> = vec![(
            cfg.round_to
                .map_or("as solved".to_string(), |q| format!("rounded to {q}")),
            plan.clone(),
        )];
        let mut notes = Vec::new();
        for q in [ORT_CHANNEL_BLOCK / 2, ORT_CHANNEL_BLOCK] {
            if cfg.round_to.is_some_and(|r| r >= q) {
                continue;
            }
            let rounded = AllocConfig {
                round_to: Some(q),
                ..cfg.clone()
            };
            match prune::plan_with(self.ctx, self.dg, self.criterion, &rounded) {
                Ok(p) => candidates.push((format!("rounded to {q}"), p)),
                Err(e @ prune::PruneError::Unreachable { .. }) => {
                    notes.push(format!("rounded to {q}: {e}"))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut best: Option<(f64, usize)> = None;
        for (i, (name, p)) in candidates.iter().enumerate() {
            say(&format!(
                "latency guard: timing the plan {name} against the original in onnxruntime"
            ));
            let sp = self.speedups(p)?;
            let at: Vec<String> = sp
                .iter()
                .map(|(b, x)| format!("{x:.2}x at batch {b}"))
                .collect();
            notes.push(format!("{name}: {}", at.join(", ")));
            let gm = (sp.iter().map(|s| s.1.ln()).sum::<f64>() / sp.len().max(1) as f64).exp();
            if sp.iter().all(|s| s.1 >= 1.0) && best.is_none_or(|b| gm > b.0) {
                best = Some((gm, i));
            }
        }
        let chosen = match best {
            Some((_, i)) => {
                notes.push(format!("chose the plan {}", candidates[i].0));
                candidates.swap_remove(i).1
            }
            None => {
                notes
                    .push("every plan was slower: kept the original model (nothing pruned)".into());
                let mut empty = Plan::empty(self.ctx.graph);
                empty.criterion = plan.criterion.clone();
                empty.fold = plan.fold;
                empty
            }
        };
        Ok((chosen, Some(notes.join("; "))))
    }
}

/// What `--target-latency` decided, for the report.
#[derive(Serialize)]
pub(crate) struct LatencyTarget {
    /// Fraction of the latency asked to be kept.
    pub(crate) keep: f64,
    /// The larger batch measured (and the tables' batch).
    pub(crate) batch: usize,
    /// Layer shapes in the tables (steering by tables).
    pub(crate) layer_shapes: Option<usize>,
    /// The cache file of the tables (steering by tables).
    pub(crate) cache: Option<std::path::PathBuf>,
    /// Widths chosen and the tables' estimate, of the chosen step (steering by tables).
    pub(crate) allocation: Option<rt::LatencyAllocation>,
    /// The measured steering steps.
    pub(crate) steering: rt::Steering,
}

/// `--target-latency KEEP`: with `--latency-via tables`, the runtime's latency tables of the
/// model (from the cache, the missing shapes timed) choose the per-group widths that keep the
/// most importance; whichever allocation, its amount is steered on measurements of the pruned
/// model until it keeps KEEP of the latency.
pub(crate) fn latency_target(
    a: &PruneArgs,
    runtime: &Runtime,
    (ctx, dg, criterion): (&ScoreContext, &DepGraph, &dyn prune::Importance),
    alloc: &AllocConfig,
    keep: f64,
    budget: &Budget,
    say: &dyn Fn(&str),
) -> Result<(Plan, Strategy, LatencyTarget)> {
    let batch = a.runtime.latency_batch;
    let dir = a.runtime.cache_dir();
    let tables = if a.runtime.latency_via == LatencyViaArg::Tables {
        let table_budget = a.runtime.table_budget()?;
        let progress = |s: &rt::LayerShape| {
            say(&format!(
                "latency table: {} {}x{} in {}x{} at batch {batch} in {}",
                if s.linear { "linear" } else { "conv" },
                s.in_channels,
                s.out_channels,
                s.in_hw[0],
                s.in_hw[1],
                runtime.kind()
            ))
        };
        Some(rt::tables_for(
            runtime,
            ctx.graph,
            batch,
            &table_budget,
            Some(&dir),
            &progress,
        )?)
    } else {
        None
    };
    let by = match (&tables, a.runtime.latency_via) {
        (Some(t), _) => rt::SteerBy::Tables(t),
        (None, LatencyViaArg::Uniform) => rt::SteerBy::Uniform,
        (None, _) => rt::SteerBy::Macs,
    };
    let inputs = rt::SteerInputs {
        ctx,
        dg,
        criterion,
        by,
        alloc,
        ignore: &a.ignore,
    };
    let mut cfg = rt::SteerConfig::new(keep, batch);
    cfg.tolerance = a.runtime.latency_tolerance;
    cfg.max_steps = a.runtime.latency_steps;
    let step = |s: &rt::SteerStep| {
        let at: Vec<String> = s
            .measured
            .iter()
            .map(|(b, f)| format!("{f:.3} at batch {b}"))
            .collect();
        let predicted = s
            .predicted
            .map(|p| format!(" (tables predict {p:.3})"))
            .unwrap_or_default();
        say(&format!(
            "latency steering ({}): knob {:.3}{predicted}, measured {} in {}",
            by.name(),
            s.knob,
            at.join(", "),
            runtime.kind()
        ))
    };
    let steered = rt::steer_latency(&inputs, runtime, budget, &cfg, &step)?;
    if !steered.steering.met {
        eprintln!(
            "warning: --target-latency {keep}: the closest measured fraction is {:.3} \
             (tolerance {:.0}%; stopped: {})",
            steered.steering.steps[steered.steering.chosen].fraction,
            100.0 * cfg.tolerance,
            steered.steering.stopped
        );
    }
    Ok((
        steered.plan,
        steered.strategy,
        LatencyTarget {
            keep,
            batch,
            layer_shapes: tables.as_ref().map(|t| t.layers.len()),
            cache: tables.as_ref().map(|t| dir.join(t.key.file_name())),
            allocation: steered.allocation,
            steering: steered.steering,
        },
    ))
}

/// Times the model before and after pruning in `runtime` at each of `batches`.
pub(crate) fn latency_pairs(
    runtime: &Runtime,
    before: (&Graph, &shears_ir::Weights),
    after: (&Graph, &shears_ir::Weights),
    batches: &[usize],
    budget: &Budget,
    say: &dyn Fn(&str),
) -> Result<Vec<LatencyPair>> {
    let mut b = runtime.prepare(before.0, before.1)?;
    let mut p = runtime.prepare(after.0, after.1)?;
    let mut v = Vec::new();
    for &batch in batches {
        say(&format!(
            "latency: {} batch {batch}, about {} s per model",
            runtime.kind(),
            budget.seconds
        ));
        let (before, after) = rt::compare(&mut b, &mut p, before.0, batch, budget)?;
        v.push(LatencyPair {
            batch,
            speedup: ratio(before.median_ms, after.median_ms),
            before,
            after,
        });
    }
    Ok(v)
}

/// The runtime latency was measured in, for the JSON report.
pub(crate) fn runtime_json(r: &Runtime) -> Value {
    json!({
        "name": r.kind(),
        "version": r.version(),
        "threads": r.threads(),
        "library": r.library().map(|l| &l.path),
    })
}
