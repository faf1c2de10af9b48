//! Structural pruning: remove whole channels and neurons, leaving a smaller dense model.
//!
//! The pipeline is data in, data out, and never runs the model:
//!
//! 1. [`DepGraph::build`] derives the **groups**, the sets of channel axes that must be cut
//!    together, by walking each op's channel map ([`depgraph`]);
//! 2. an [`Importance`] criterion scores each group's channels ([`mod@importance`]);
//! 3. [`allocate()`] decides how many channels each group loses under an [`AllocConfig`]
//!    (uniform, per-group, global, or a MACs / parameter target solved by bisection);
//! 4. the result is a [`Plan`]: JSON, replayable to bit-identical weights ([`mod@plan`]);
//! 5. [`prune()`] applies it: one [`shears_ir::Patch`] per group, tensors sliced, the constant
//!    contribution of each removed channel folded into its consumers' biases ([`surgery`]).
//!
//! [`mask_weights`] builds the masked reference model the pruned one must reproduce, and
//! [`verify()`] checks that on real inputs with the engine ([`verify_with`]: any forward
//! function). [`mod@data`] computes what needs data and the engine: Taylor gradients
//! ([`taylor_grads`]) and real input batches ([`input_batch`]).
//!
//! **Exactness.** A removed channel is a constant in the masked model (its bias, or its batch
//! norm's shift through ReLU). Folding that constant into a consumer's bias is exact for linear
//! layers and unpadded convs, but only interior-exact for a zero-padded conv. The plan's
//! [`FoldMode`] decides: [`FoldMode::Exact`] (the default) folds only where exact and forces
//! the other removed channels to exactly zero in the masked model (producer weights and bias,
//! BN `gamma` and `beta`), so the pruned model equals the masked model for every plan and
//! `verify` passes within 1e-4 of the output scale on any correct surgery;
//! [`FoldMode::Interior`] folds everywhere and reports the border deviation
//! ([`SurgeryReport::approximations`]). See [`mask`].
//!
//! ```
//! use shears::prune::{self, AllocConfig, Criterion, Reduction, ScoreContext, Strategy};
//! use shears::zoo::{build, init_weights, Arch};
//! let g = build(Arch::ResNet20, &Arch::ResNet20.default_config()).unwrap();
//! let w = init_weights(&g, Some(Arch::ResNet20), 0);
//! let l1 = Criterion::L1.build(Reduction::Mean, 0);
//! let cfg = AllocConfig::new(Strategy::TargetMacs { keep_fraction: 0.5 }).with_global_ranking();
//! let plan = prune::plan(&ScoreContext::new(&g, &w), l1.as_ref(), &cfg).unwrap();
//! let pruned = prune::prune(&g, &w, &plan).unwrap();
//! let kept = pruned.graph.macs() as f64 / g.macs() as f64;
//! assert!((kept - 0.5).abs() <= 0.5 * 0.02);
//! assert!(pruned.report.is_exact()); // fresh BN layers fold to zero constants
//! ```

pub mod allocate;
pub mod cost;
pub mod data;
pub mod depgraph;
pub mod error;
pub mod forced_zero;
pub mod importance;
pub mod mask;
pub mod plan;
pub mod surgery;
pub mod verify;

use shears_ir::{Graph, Weights};

pub use allocate::{allocate, AllocConfig, Allocation, Strategy};
pub use cost::{predict_cost, Cost};
pub use data::{input_batch, taylor_grads, GradConfig};
pub use depgraph::{Channel, DepGraph, Group, Member, Role};
pub use error::{PruneError, Result};
pub use importance::{
    BnScale, Criterion, Fpgm, Importance, Magnitude, MemberSet, Norm, Normalizer, RandomImportance,
    Reduction, ScoreContext, Taylor,
};
pub use mask::{mask_weights, mask_weights_with, FoldMode};
pub use plan::{fingerprint, Plan, PlanGroup, PLAN_VERSION};
pub use surgery::{
    apply_plan, apply_plan_with, ApproxKind, Approximation, Fold, GroupChange, SurgeryReport,
};
pub use verify::{verify, verify_with, Verification, VERIFY_TOLERANCE};

/// A physically pruned model.
#[derive(Clone, Debug)]
pub struct Pruned {
    /// The smaller graph.
    pub graph: Graph,
    /// Its weights.
    pub weights: Weights,
    /// What surgery did, including folds and approximations.
    pub report: SurgeryReport,
}

/// Scores, allocates and returns a plan for `ctx.graph` (see [`allocate()`]). The plan records
/// the criterion name, the configuration, and the MACs and parameters before and after.
pub fn plan(ctx: &ScoreContext, criterion: &dyn Importance, cfg: &AllocConfig) -> Result<Plan> {
    let dg = DepGraph::build(ctx.graph)?;
    plan_with(ctx, &dg, criterion, cfg)
}

/// [`plan()`] with a dependency graph already built for `ctx.graph`.
pub fn plan_with(
    ctx: &ScoreContext,
    dg: &DepGraph,
    criterion: &dyn Importance,
    cfg: &AllocConfig,
) -> Result<Plan> {
    let alloc = allocate(ctx, dg, criterion, cfg)?;
    let groups = alloc
        .removed
        .iter()
        .map(|(id, removed)| PlanGroup {
            group_id: *id,
            root: ctx.graph.node(dg.groups()[*id].root).name.clone(),
            removed: removed.clone(),
        })
        .collect();
    Ok(Plan {
        version: PLAN_VERSION,
        graph_fingerprint: fingerprint(ctx.graph),
        criterion: criterion.name().to_string(),
        fold: cfg.fold,
        config: serde_json::json!({
            "alloc": cfg,
            "before": alloc.before,
            "after": alloc.after,
            "warnings": alloc.warnings,
        }),
        groups,
    })
}

/// Applies `plan` (see [`surgery`]).
pub fn prune(graph: &Graph, weights: &Weights, plan: &Plan) -> Result<Pruned> {
    let (graph, weights, report) = apply_plan(graph, weights, plan)?;
    Ok(Pruned {
        graph,
        weights,
        report,
    })
}
