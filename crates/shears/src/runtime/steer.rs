//! `--target-latency` closed on measurement: the latency tables say *where* to cut (which
//! groups, onto which of the runtime's fast widths), the runtime itself says *how much*.
//!
//! One-layer tables do not add up to a whole model's latency: a runtime fuses, reorders
//! layouts once per network rather than per layer, and overlaps work, so a model allocated to
//! a tabled estimate of half the latency can measure anywhere from 0.4 to 1.0 of it. The
//! steering loop therefore treats the tables' keep fraction `k` as a knob: it allocates for
//! `k`, prunes, times the pruned model against the original in alternating blocks at each
//! batch size, and moves `k` until the measured fraction (the geometric mean over the batch
//! sizes) is within a tolerance of the target: first proportionally (`k * target / measured`),
//! then by interpolating between the closest measured points on either side. It returns the
//! step whose measurement came closest, with every step recorded for the report.
//!
//! The same loop steers the baselines to the same measured latency ([`SteerBy`]): a uniform
//! ratio, or a MACs target (rounded to multiples of 16, say), so that accuracy is compared at
//! equal measured latency.

use serde::Serialize;
use shears_ir::{Graph, Weights};

use super::{compare, Budget, LatencyAllocation, LatencyTables, Runtime};
use crate::prune::{
    self, AllocConfig, DepGraph, Importance, Plan, PruneError, ScoreContext, Strategy,
};
use crate::Error;

/// The knobs of [`steer_latency`].
#[derive(Clone, Debug, PartialEq)]
pub struct SteerConfig {
    /// Fraction of the original latency to keep, in (0, 1].
    pub keep: f64,
    /// Accepted relative error of the measured fraction (0.05: within 5% of `keep`).
    pub tolerance: f64,
    /// At most this many allocate-prune-measure steps.
    pub max_steps: usize,
    /// Batch sizes measured at each step (their geometric mean is steered).
    pub batches: Vec<usize>,
}

impl SteerConfig {
    /// Steering to `keep` within 5% in at most 6 steps, measured at batch 1 and `batch`.
    pub fn new(keep: f64, batch: usize) -> SteerConfig {
        let mut batches = vec![1, batch];
        batches.dedup();
        SteerConfig {
            keep,
            tolerance: 0.05,
            max_steps: 6,
            batches,
        }
    }

    fn met(&self, fraction: f64) -> bool {
        (fraction / self.keep - 1.0).abs() <= self.tolerance
    }
}

/// One allocate-prune-measure step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SteerStep {
    /// The knob's value (see [`SteerBy`]): the tables' keep fraction, the channels kept, or
    /// the MACs kept.
    pub knob: f64,
    /// The tables' estimate of the latency kept (steering by tables).
    pub predicted: Option<f64>,
    /// Measured latency kept (after / before, medians) at each batch size: `(batch, fraction)`.
    pub measured: Vec<(usize, f64)>,
    /// Geometric mean of the measured fractions: what is steered.
    pub fraction: f64,
    /// Kept channels per group (steering by tables).
    pub kept: Option<Vec<usize>>,
}

/// What the loop did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Steering {
    /// What the knob was: `tables`, `uniform` or `macs`.
    pub by: &'static str,
    /// The target fraction.
    pub keep: f64,
    /// The accepted relative error.
    pub tolerance: f64,
    /// Every step, in order.
    pub steps: Vec<SteerStep>,
    /// Index of the step returned (the closest measurement).
    pub chosen: usize,
    /// Whether the chosen step is within the tolerance.
    pub met: bool,
    /// Why the loop stopped.
    pub stopped: String,
}

/// The next knob value to try after `steps` (`(knob, measured fraction)`, ordered as made),
/// or `None` when no untried value is left. `floor` is the smallest reachable knob value
/// (allocations below it failed), if known. The measured fraction rises with the knob.
pub fn next_knob(keep: f64, steps: &[(f64, f64)], floor: Option<f64>) -> Option<f64> {
    let (last_k, last_m) = *steps.last()?;
    let below = steps
        .iter()
        .filter(|s| s.1 < keep)
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let above = steps
        .iter()
        .filter(|s| s.1 >= keep)
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let lo = floor.unwrap_or(1e-3).max(1e-3);
    let new = |k: f64| {
        let k = k.clamp(lo, 1.0);
        (!steps.iter().any(|s| (s.0 - k).abs() < 1e-3)).then_some(k)
    };
    match (below, above) {
        // Bracketed: interpolate, else bisect (measurements are noisy: a non-monotone pair,
        // or an interpolation that lands on a tried value, bisects).
        (Some(&(ka, ma)), Some(&(kb, mb))) => {
            let mid = 0.5 * (ka + kb);
            let k = if ka < kb && mb > ma {
                let t = ((keep - ma) / (mb - ma)).clamp(0.1, 0.9);
                ka + t * (kb - ka)
            } else {
                mid
            };
            new(k).or_else(|| new(mid))
        }
        // One side only: a secant through the last two steps when they rise with the knob;
        // else the measured latency is taken to scale with the knob (proportional step).
        _ => {
            let prop = last_k * (keep / last_m.max(1e-6)).clamp(0.25, 4.0);
            let k = match steps {
                [.., (k1, m1), (k2, m2)] if (k2 - k1) * (m2 - m1) > 0.0 => {
                    let sec = k2 + (keep - m2) * (k2 - k1) / (m2 - m1);
                    sec.clamp(0.25 * last_k, 4.0 * last_k)
                }
                _ => prop,
            };
            new(k)
        }
    }
}

/// How a step turns the steered knob `k` into a plan.
#[derive(Clone, Copy, Debug)]
pub enum SteerBy<'a> {
    /// `k` is the tables' keep fraction: [`super::latency_strategy`] on these tables (the
    /// default: widths land on the runtime's measured fast steps).
    Tables(&'a LatencyTables),
    /// `k` is the fraction of each group's channels kept (uniform ratio `1 - k`): the baseline
    /// that spends the same measured latency evenly.
    Uniform,
    /// `k` is the MACs keep fraction, allocated as the [`AllocConfig`] says (global or not,
    /// rounded or not): the MACs-driven allocation steered to a measured latency.
    Macs,
}

impl SteerBy<'_> {
    /// The knob's first value for a target of `keep`.
    fn start(&self, keep: f64) -> f64 {
        match self {
            // A uniform cut keeps about k^2 of a conv's work.
            SteerBy::Uniform => keep.sqrt(),
            SteerBy::Tables(_) | SteerBy::Macs => keep,
        }
    }

    /// The name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            SteerBy::Tables(_) => "tables",
            SteerBy::Uniform => "uniform",
            SteerBy::Macs => "macs",
        }
    }
}

/// The original model in `ctx`, how to allocate, and the allocation settings.
pub struct SteerInputs<'a> {
    /// The model and its scores' context.
    pub ctx: &'a ScoreContext<'a>,
    /// Its dependency groups.
    pub dg: &'a DepGraph,
    /// The importance criterion.
    pub criterion: &'a dyn Importance,
    /// How the knob becomes a plan.
    pub by: SteerBy<'a>,
    /// The allocation settings (strategy replaced per step; fold, ignore and the rest kept).
    pub alloc: &'a AllocConfig,
    /// Node names never pruned (for the tables' allocator).
    pub ignore: &'a [String],
}

/// A step's plan, its strategy and (with tables) its allocation.
type StepPlan = (Plan, Strategy, Option<LatencyAllocation>);

impl SteerInputs<'_> {
    fn plan(&self, k: f64) -> Result<StepPlan, Error> {
        let (strategy, alloc) = match self.by {
            SteerBy::Tables(t) => {
                let (s, a) =
                    super::latency_strategy(self.ctx, self.dg, self.criterion, t, k, self.ignore)?;
                (s, Some(a))
            }
            SteerBy::Uniform => (
                Strategy::Uniform {
                    ratio: (1.0 - k).clamp(0.0, 0.999) as f32,
                },
                None,
            ),
            SteerBy::Macs => (Strategy::TargetMacs { keep_fraction: k }, None),
        };
        let cfg = AllocConfig {
            strategy: strategy.clone(),
            ..self.alloc.clone()
        };
        let plan = prune::plan_with(self.ctx, self.dg, self.criterion, &cfg)?;
        Ok((plan, strategy, alloc))
    }
}

/// The result of [`steer_latency`]: the closest step's plan and how it was reached.
pub struct Steered {
    /// The plan of the chosen step.
    pub plan: Plan,
    /// Its strategy.
    pub strategy: Strategy,
    /// Its allocation on the tables (steering by tables only).
    pub allocation: Option<LatencyAllocation>,
    /// Every step.
    pub steering: Steering,
}

/// Steers the knob of `inp.by` until the pruned model measures `cfg.keep` of the original's
/// latency in `runtime` (see the module docs). Returns the closest step. `progress` is told
/// each step.
pub fn steer_latency(
    inp: &SteerInputs,
    runtime: &Runtime,
    budget: &Budget,
    cfg: &SteerConfig,
    progress: &dyn Fn(&SteerStep),
) -> Result<Steered, Error> {
    let (graph, weights) = (inp.ctx.graph, inp.ctx.weights);
    let mut original = runtime.prepare(graph, weights)?;
    let mut steps: Vec<SteerStep> = Vec::new();
    let mut plans: Vec<StepPlan> = Vec::new();
    let mut floor: Option<f64> = None;
    let mut k = inp.by.start(cfg.keep);
    let stopped = loop {
        let (plan, strategy, alloc) = match inp.plan(k) {
            Ok(x) => x,
            Err(Error::Prune(PruneError::Unreachable { best, .. })) if best < 1.0 => {
                let f = floor.map_or(best, |f: f64| f.max(best)).max(k + 1e-3);
                floor = Some(f);
                if steps.is_empty() {
                    // The first value is out of reach: start at the smallest reachable one.
                    k = (f + 1e-3).min(1.0);
                    continue;
                }
                match next_knob(cfg.keep, &pairs(&steps), floor) {
                    Some(next) => {
                        k = next;
                        continue;
                    }
                    None => break format!("cannot go below {best:.3}"),
                }
            }
            Err(e) => return Err(e),
        };
        let measured = latency_kept(
            runtime,
            &mut original,
            (graph, weights),
            &plan,
            &cfg.batches,
            budget,
        )?;
        let fraction = geometric_mean(measured.iter().map(|m| m.1));
        let step = SteerStep {
            knob: k,
            predicted: alloc.as_ref().map(LatencyAllocation::predicted_fraction),
            measured,
            fraction,
            kept: alloc.as_ref().map(|a| a.kept.clone()),
        };
        progress(&step);
        steps.push(step);
        plans.push((plan, strategy, alloc));
        if cfg.met(fraction) {
            break "within tolerance".to_string();
        }
        if steps.len() >= cfg.max_steps {
            break format!("{} steps", cfg.max_steps);
        }
        match next_knob(cfg.keep, &pairs(&steps), floor) {
            Some(next) => k = next,
            None => break "no untried knob value left".to_string(),
        }
    };
    let chosen = (0..steps.len())
        .min_by(|&a, &b| {
            let err = |i: usize| (steps[i].fraction / cfg.keep - 1.0).abs();
            err(a).total_cmp(&err(b))
        })
        .ok_or_else(|| Error::invalid("latency steering made no step"))?;
    let met = cfg.met(steps[chosen].fraction);
    let (plan, strategy, allocation) = plans.swap_remove(chosen);
    let steering = Steering {
        by: inp.by.name(),
        keep: cfg.keep,
        tolerance: cfg.tolerance,
        steps,
        chosen,
        met,
        stopped,
    };
    Ok(Steered {
        plan,
        strategy,
        allocation,
        steering,
    })
}

fn pairs(steps: &[SteerStep]) -> Vec<(f64, f64)> {
    steps.iter().map(|s| (s.knob, s.fraction)).collect()
}

fn geometric_mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x.max(1e-12).ln(), n + 1));
    if n == 0 {
        1.0
    } else {
        (sum / n as f64).exp()
    }
}

/// Prunes `graph` by `plan` and times the result against `original` (prepared from `graph`)
/// in alternating blocks at each of `batches`: the latency kept (after / before, medians) per
/// batch. Shared by the steering loop and the ONNX Runtime guard of MACs targets.
pub fn latency_kept(
    runtime: &Runtime,
    original: &mut super::Prepared,
    (graph, weights): (&Graph, &Weights),
    plan: &Plan,
    batches: &[usize],
    budget: &Budget,
) -> Result<Vec<(usize, f64)>, Error> {
    let p = prune::prune(graph, weights, plan)?;
    let mut after = runtime.prepare(&p.graph, &p.weights)?;
    let mut out = Vec::with_capacity(batches.len());
    for &batch in batches {
        let (b, a) = compare(original, &mut after, graph, batch, budget)?;
        out.push((batch, a.median_ms / b.median_ms.max(1e-12)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up runtime whose measured fraction is `0.3 + 0.5 * k` (tables too optimistic).
    fn measured(k: f64) -> f64 {
        0.3 + 0.5 * k
    }

    #[test]
    fn converges_on_a_biased_linear_runtime() {
        let keep = 0.5;
        let mut steps = vec![(keep, measured(keep))];
        while let Some(k) = next_knob(keep, &steps, None) {
            steps.push((k, measured(k)));
            if (steps.last().unwrap().1 / keep - 1.0).abs() < 0.01 || steps.len() > 8 {
                break;
            }
        }
        let (_, m) = *steps.last().unwrap();
        assert!((m / keep - 1.0).abs() < 0.05, "{steps:?}");
        assert!(steps.len() <= 5, "{steps:?}");
    }

    #[test]
    fn proportional_first_then_bracketed() {
        // Measured 0.8 at k = 0.5: try 0.5 * 0.5 / 0.8.
        let k = next_knob(0.5, &[(0.5, 0.8)], None).unwrap();
        assert!((k - 0.3125).abs() < 1e-9);
        // Bracketed between (0.3, 0.4) and (0.5, 0.8): interpolate at 0.25 of the way.
        let k = next_knob(0.5, &[(0.5, 0.8), (0.3, 0.4)], None).unwrap();
        assert!((k - 0.35).abs() < 1e-9, "{k}");
        // Noise (higher k measured lower): bisect.
        let k = next_knob(0.5, &[(0.5, 0.45), (0.3, 0.6)], None).unwrap();
        assert!((k - 0.4).abs() < 1e-9, "{k}");
    }

    #[test]
    fn respects_the_floor_and_stops_when_nothing_is_new() {
        let k = next_knob(0.2, &[(0.5, 0.8)], Some(0.3)).unwrap();
        assert!((k - 0.3).abs() < 1e-9);
        assert_eq!(next_knob(0.2, &[(0.5, 0.8), (0.3, 0.7)], Some(0.3)), None);
        assert_eq!(next_knob(0.5, &[], None), None);
        // Never above 1.
        let k = next_knob(0.9, &[(0.9, 0.5)], None).unwrap();
        assert_eq!(k, 1.0);
    }

    #[test]
    fn geometric_mean_of_fractions() {
        assert!((geometric_mean([0.25, 1.0].into_iter()) - 0.5).abs() < 1e-12);
        assert_eq!(geometric_mean(std::iter::empty()), 1.0);
    }
}
