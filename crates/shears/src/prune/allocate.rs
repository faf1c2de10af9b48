//! Allocation: how many (and which) channels each group loses.
//!
//! **Ratios are fractions of a group's channels that are REMOVED.** `ratio 0.3` on a group of
//! 64 channels removes `floor(0.3 * 64) = 19` and keeps 45. Parameters and MACs fall faster
//! than channels (a conv loses both input and output channels: removing 30% of every group
//! keeps about 49% of a plain CNN's MACs).
//!
//! **Targets are fractions KEPT.** `TargetMacs { keep_fraction: 0.47 }` keeps 47% of the MACs
//! (a 2.13x reduction); `--speedup X` on the command line is `keep_fraction = 1 / X`. A target
//! is solved by bisection, over one uniform ratio (local) or over a global score threshold
//! (global), until the pruned graph's exact MACs or parameters ([`super::Cost`]) are as close
//! to the target as the channel granularity allows; the achieved value is reported, and a
//! target that the constraints cannot reach within the tolerance is an error naming the best
//! achievable value.
//!
//! Constraints, in order, for a group of `n` channels asked to lose `k`:
//! 1. at most `floor(max_ratio * n)` channels are removed, and at least `min_channels` (and
//!    at least 1) are kept: a group never loses all its channels;
//! 2. with `round_to = q`, the kept count is rounded UP to a multiple of `q` (or to `n` if that
//!    exceeds `n`), so rounding never removes more than asked;
//! 3. a channel whose removal would leave some node with no channels at all is skipped and
//!    the next one in order goes instead (a node can hold only some of a group's channels,
//!    e.g. a ShuffleNet split half; in graphs without channel ranges this never applies).
//!
//! Within a group the lowest-scored channels go first (ties: lower index first). Groups that
//! are not prunable (graph inputs, the logits) or that hold an `ignore`d node as a producer,
//! batch norm or shortcut are never pruned; `ignore` does not stop a node's *input* channels
//! from shrinking when the layer feeding it is pruned.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::cost::{Cost, CostModel};
use super::depgraph::{DepGraph, Group, Role};
use super::error::{PruneError, Result};
use super::importance::{Importance, Normalizer, ScoreContext};
use super::mask::{check_weights, Constants, FoldMode};
use super::plan::Removal;

/// What to allocate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    /// Every group loses `floor(ratio * n)` of its `n` channels (with
    /// [`AllocConfig::global`], the same as [`Strategy::Global`]).
    Uniform {
        /// Fraction of each group's channels removed, in `[0, 1]`.
        ratio: f32,
    },
    /// Per-group ratios, keyed by the group's root node name; unlisted groups keep all their
    /// channels.
    PerGroup {
        /// Root name → fraction removed, in `[0, 1]`.
        ratios: BTreeMap<String, f32>,
    },
    /// Rank all channels of all prunable groups together (scores normalised per group with
    /// [`AllocConfig::normalizer`]) and remove the lowest `floor(ratio * total)`, subject to
    /// the per-group constraints (which may leave fewer removed).
    Global {
        /// Fraction of all prunable channels removed, in `[0, 1]`.
        ratio: f32,
    },
    /// Keep this fraction of the MACs, in `(0, 1]`.
    TargetMacs {
        /// MACs kept / MACs before.
        keep_fraction: f64,
    },
    /// Keep this fraction of the trainable parameters, in `(0, 1]`.
    TargetParams {
        /// Parameters kept / parameters before.
        keep_fraction: f64,
    },
}

/// Allocation settings. Start from [`AllocConfig::new`] and change fields with `with_*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocConfig {
    /// What to allocate.
    pub strategy: Strategy,
    /// Targets: bisect over a global score threshold instead of one uniform ratio. With
    /// [`Strategy::Uniform`]: rank globally (the same as [`Strategy::Global`]). Ignored by
    /// [`Strategy::PerGroup`]. Default false.
    pub global: bool,
    /// Largest fraction of any group's channels removed, in `[0, 1]`. Default 1 (only
    /// `min_channels` limits).
    pub max_ratio: f32,
    /// Round each group's kept channels up to a multiple of this. Default none.
    pub round_to: Option<usize>,
    /// Node names whose groups are not pruned (see the module docs). Default empty.
    pub ignore: Vec<String>,
    /// Fewest channels a group keeps; at least 1. Default 1.
    pub min_channels: usize,
    /// Per-group score normalisation for global ranking. Default mean.
    pub normalizer: Normalizer,
    /// Relative tolerance of MACs / parameter targets. Default 0.02.
    pub tolerance: f64,
    /// How surgery will fold constants (recorded in the plan; it decides which consumers get
    /// a bias, so parameter counts depend on it). Default [`FoldMode::Exact`].
    #[serde(default)]
    pub fold: FoldMode,
}

impl AllocConfig {
    /// Defaults for everything but the strategy.
    pub fn new(strategy: Strategy) -> Self {
        AllocConfig {
            strategy,
            global: false,
            max_ratio: 1.0,
            round_to: None,
            ignore: Vec::new(),
            min_channels: 1,
            normalizer: Normalizer::Mean,
            tolerance: 0.02,
            fold: FoldMode::Exact,
        }
    }

    /// Sets the fold mode.
    pub fn with_fold(mut self, fold: FoldMode) -> Self {
        self.fold = fold;
        self
    }

    /// Ranks globally (see [`AllocConfig::global`]).
    pub fn with_global_ranking(mut self) -> Self {
        self.global = true;
        self
    }

    /// Sets `max_ratio`.
    pub fn with_max_ratio(mut self, r: f32) -> Self {
        self.max_ratio = r;
        self
    }

    /// Sets `round_to`.
    pub fn with_round_to(mut self, q: usize) -> Self {
        self.round_to = Some(q);
        self
    }

    /// Sets the ignored node names.
    pub fn with_ignore(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.ignore = names.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `min_channels`.
    pub fn with_min_channels(mut self, n: usize) -> Self {
        self.min_channels = n;
        self
    }

    /// Sets the normaliser.
    pub fn with_normalizer(mut self, n: Normalizer) -> Self {
        self.normalizer = n;
        self
    }

    /// Sets the target tolerance.
    pub fn with_tolerance(mut self, t: f64) -> Self {
        self.tolerance = t;
        self
    }

    fn validate(&self) -> Result<()> {
        let ratio_ok = |what: &str, r: f32| -> Result<()> {
            if !(0.0..=1.0).contains(&r) {
                return Err(PruneError::Invalid(format!(
                    "{what} {r} must be in [0, 1] (the fraction of channels removed)"
                )));
            }
            Ok(())
        };
        match &self.strategy {
            Strategy::Uniform { ratio } | Strategy::Global { ratio } => ratio_ok("ratio", *ratio)?,
            Strategy::PerGroup { ratios } => {
                for (name, r) in ratios {
                    ratio_ok(&format!("ratio of group {name:?}"), *r)?;
                }
            }
            Strategy::TargetMacs { keep_fraction } | Strategy::TargetParams { keep_fraction } => {
                if !(*keep_fraction > 0.0 && *keep_fraction <= 1.0) {
                    return Err(PruneError::Invalid(format!(
                        "target keep fraction {keep_fraction} must be in (0, 1] (the fraction \
                         of MACs or parameters kept: 0.5 halves them)"
                    )));
                }
            }
        }
        ratio_ok("max_ratio", self.max_ratio)?;
        if self.round_to == Some(0) {
            return Err(PruneError::Invalid("round_to must be at least 1".into()));
        }
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            return Err(PruneError::Invalid(format!(
                "tolerance {} must be a non-negative number",
                self.tolerance
            )));
        }
        Ok(())
    }

    /// How many of `n` channels a group loses when asked to lose `want` (module docs).
    pub fn n_removed(&self, n: usize, want: usize) -> usize {
        let min_keep = self.min_channels.max(1);
        let by_ratio = (f64::from(self.max_ratio) * n as f64 + 1e-6).floor() as usize;
        let cap = by_ratio.min(n.saturating_sub(min_keep));
        let r = want.min(cap);
        match self.round_to {
            Some(q) if q > 1 => {
                let kept = (n - r).div_ceil(q) * q;
                n.saturating_sub(kept)
            }
            _ => r,
        }
    }
}

/// `floor(ratio * n)`, robust to f32 rounding (`0.7 * 10` is 7).
/// Per group and channel, the nodes holding it and how many of their slots it holds.
fn slot_holders(graph: &shears_ir::Graph, dg: &DepGraph) -> Vec<Vec<Vec<(usize, usize)>>> {
    let mut h: Vec<Vec<Vec<(usize, usize)>>> = dg
        .groups()
        .iter()
        .map(|g| vec![Vec::new(); g.size])
        .collect();
    for id in graph.ids() {
        for ch in dg.channels(id) {
            let v = &mut h[ch.group][ch.idx];
            match v.last_mut() {
                Some((node, n)) if *node == id.0 => *n += 1,
                _ => v.push((id.0, 1)),
            }
        }
    }
    h
}

fn ratio_count(ratio: f32, n: usize) -> usize {
    ((f64::from(ratio) * n as f64) + 1e-6).floor() as usize
}

/// The result of [`allocate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// `(group id, removed root indices, sorted)` for each group that loses channels.
    pub removed: Vec<(usize, Vec<usize>)>,
    /// MACs and parameters before.
    pub before: Cost,
    /// MACs and parameters after (exact, including biases added by constant folding).
    pub after: Cost,
    /// What a user should know about the result, e.g. a target overshot (more removed than
    /// asked) because `round_to` or the groups' channel steps could not land closer.
    #[serde(default)]
    pub warnings: Vec<String>,
}

struct Ranked<'a> {
    group: &'a Group,
    /// Channel indices, lowest score first.
    order: Vec<usize>,
    /// Scores (normalised when ranking globally).
    scores: Vec<f32>,
}

/// Scores the eligible groups with `criterion` and allocates removals under `cfg`.
pub fn allocate(
    ctx: &ScoreContext,
    dg: &DepGraph,
    criterion: &dyn Importance,
    cfg: &AllocConfig,
) -> Result<Allocation> {
    cfg.validate()?;
    check_weights(ctx.graph, ctx.weights)?;
    let graph = ctx.graph;
    let names: BTreeSet<&str> = graph.nodes().iter().map(|n| n.name.as_str()).collect();
    if let Some(bad) = cfg.ignore.iter().find(|n| !names.contains(n.as_str())) {
        return Err(PruneError::Invalid(format!(
            "ignored layer {bad:?} is not a node of the graph"
        )));
    }
    let ignored: BTreeSet<&str> = cfg.ignore.iter().map(String::as_str).collect();
    let is_ignored = |g: &Group| {
        ignored.contains(graph.node(g.root).name.as_str())
            || g.members.iter().any(|m| {
                m.role != Role::InChannels && ignored.contains(graph.node(m.node).name.as_str())
            })
    };
    let min_keep = cfg.min_channels.max(1);
    let eligible: Vec<&Group> = dg
        .prunable()
        .filter(|g| g.size > min_keep && !is_ignored(g))
        .collect();
    if let Strategy::PerGroup { ratios } = &cfg.strategy {
        for name in ratios.keys() {
            let Some(g) = dg.find_root(graph, name).next() else {
                let roots: Vec<&str> = dg
                    .prunable()
                    .map(|g| graph.node(g.root).name.as_str())
                    .collect();
                return Err(PruneError::Invalid(format!(
                    "no group has root {name:?} (prunable group roots: {})",
                    roots.join(", ")
                )));
            };
            if !g.prunable {
                return Err(PruneError::Invalid(format!(
                    "group {} ({name}) is not prunable: {}",
                    g.id,
                    g.why_not.as_deref().unwrap_or("unknown reason")
                )));
            }
        }
    }
    let needs_scores = |g: &Group| match &cfg.strategy {
        Strategy::PerGroup { ratios } => ratios
            .get(&graph.node(g.root).name)
            .is_some_and(|&r| ratio_count(r, g.size) > 0),
        _ => true,
    };
    let global = matches!(cfg.strategy, Strategy::Global { .. })
        || (cfg.global
            && matches!(
                cfg.strategy,
                Strategy::Uniform { .. }
                    | Strategy::TargetMacs { .. }
                    | Strategy::TargetParams { .. }
            ));
    let mut ranked: Vec<Ranked> = Vec::with_capacity(eligible.len());
    {
        for &g in eligible.iter().filter(|g| needs_scores(g)) {
            let mut scores = criterion.score(ctx, g)?;
            if scores.len() != g.size {
                return Err(PruneError::BadScores {
                    criterion: criterion.name().into(),
                    group: g.id,
                    expected: g.size,
                    found: scores.len(),
                    detail: String::new(),
                });
            }
            if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
                return Err(PruneError::BadScores {
                    criterion: criterion.name().into(),
                    group: g.id,
                    expected: g.size,
                    found: scores.len(),
                    detail: format!(" (channel {i} scores {})", scores[i]),
                });
            }
            if global {
                cfg.normalizer.apply(&mut scores);
            }
            let mut order: Vec<usize> = (0..g.size).collect();
            order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
            ranked.push(Ranked {
                group: g,
                order,
                scores,
            });
        }
    }

    let consts = Constants::compute(graph, ctx.weights, dg, cfg.fold);
    let model = CostModel::new(graph, dg, &consts);
    let before = Cost {
        macs: graph.macs(),
        params: graph.n_params(),
    };
    let holders = slot_holders(graph, dg);
    let build = |counts: &dyn Fn(&Ranked) -> usize| -> Removal {
        let mut rem = Removal::none(dg);
        let mut left: Vec<usize> = graph.ids().map(|id| dg.channels(id).len()).collect();
        for r in &ranked {
            let k = cfg.n_removed(r.group.size, counts(r));
            let mut taken = 0;
            for &i in &r.order {
                if taken == k {
                    break;
                }
                let h = &holders[r.group.id][i];
                if h.iter().any(|&(node, n)| left[node] <= n) {
                    continue;
                }
                for &(node, n) in h {
                    left[node] -= n;
                }
                rem.removed[r.group.id][i] = true;
                taken += 1;
            }
        }
        rem
    };
    let pooled = || -> Vec<(f32, usize, usize)> {
        let mut v: Vec<(f32, usize, usize)> = ranked
            .iter()
            .enumerate()
            .flat_map(|(gi, r)| r.scores.iter().enumerate().map(move |(i, &s)| (s, gi, i)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        v
    };
    // Removal when the `k` globally lowest channels are asked for.
    let global_k = |pool: &[(f32, usize, usize)], k: usize| -> Removal {
        let mut want = vec![0usize; ranked.len()];
        for &(_, gi, _) in &pool[..k] {
            want[gi] += 1;
        }
        let idx_of: BTreeMap<usize, usize> = ranked
            .iter()
            .enumerate()
            .map(|(gi, r)| (r.group.id, gi))
            .collect();
        build(&|r: &Ranked| want[idx_of[&r.group.id]])
    };

    let mut warnings = Vec::new();
    let removal = match &cfg.strategy {
        Strategy::Uniform { ratio } if !global => {
            build(&|r: &Ranked| ratio_count(*ratio, r.group.size))
        }
        Strategy::Uniform { ratio } | Strategy::Global { ratio } => {
            let pool = pooled();
            global_k(&pool, ratio_count(*ratio, pool.len()))
        }
        Strategy::PerGroup { ratios } => build(&|r: &Ranked| {
            ratios
                .get(&graph.node(r.group.root).name)
                .map_or(0, |&x| ratio_count(x, r.group.size))
        }),
        Strategy::TargetMacs { keep_fraction } | Strategy::TargetParams { keep_fraction } => {
            let (what, metric): (&'static str, fn(&Cost) -> u64) =
                if matches!(cfg.strategy, Strategy::TargetMacs { .. }) {
                    ("macs", |c| c.macs)
                } else {
                    ("params", |c| c.params)
                };
            let base = metric(&before) as f64;
            let target = keep_fraction * base;
            let eval = |rem: &Removal| metric(&model.cost(rem)) as f64;
            let (lo, hi) = if *keep_fraction >= 1.0 {
                (Removal::none(dg), Removal::none(dg))
            } else if global {
                let pool = pooled();
                // Smallest k whose cost is at most the target.
                let (mut a, mut b) = (0usize, pool.len());
                if eval(&global_k(&pool, b)) > target {
                    a = b;
                }
                while a < b {
                    let mid = (a + b) / 2;
                    if eval(&global_k(&pool, mid)) <= target {
                        b = mid;
                    } else {
                        a = mid + 1;
                    }
                }
                (global_k(&pool, a.saturating_sub(1)), global_k(&pool, a))
            } else {
                let at = |rho: f64| {
                    build(&|r: &Ranked| ((rho * r.group.size as f64) + 1e-9).floor() as usize)
                };
                let (mut a, mut b) = (0.0f64, 1.0f64);
                if eval(&at(b)) > target {
                    a = b;
                }
                for _ in 0..60 {
                    if b - a < 1e-9 {
                        break;
                    }
                    let mid = 0.5 * (a + b);
                    if eval(&at(mid)) <= target {
                        b = mid;
                    } else {
                        a = mid;
                    }
                }
                (at(a), at(b))
            };
            let (c_lo, c_hi) = (eval(&lo), eval(&hi));
            let best = if (c_lo - target).abs() <= (c_hi - target).abs() {
                (lo, c_lo)
            } else {
                (hi, c_hi)
            };
            if best.1 > target * (1.0 + cfg.tolerance) {
                let mut why = vec![format!("max_ratio {}", cfg.max_ratio)];
                why.push(format!("min_channels {min_keep}"));
                if let Some(q) = cfg.round_to {
                    why.push(format!("round_to {q}"));
                }
                if !cfg.ignore.is_empty() {
                    why.push(format!("{} ignored layers", cfg.ignore.len()));
                }
                why.push(format!("{} prunable groups", ranked.len()));
                return Err(PruneError::Unreachable {
                    what,
                    target: *keep_fraction,
                    best: best.1 / base,
                    why: why.join(", "),
                });
            }
            if best.1 < target * (1.0 - cfg.tolerance) {
                warnings.push(format!(
                    "{what} target {keep_fraction} overshot: {:.4} kept (more removed than asked, \
                     beyond the {} tolerance); the nearest allocation above the target keeps {:.4}",
                    best.1 / base,
                    cfg.tolerance,
                    c_lo.max(c_hi) / base
                ));
            }
            best.0
        }
    };
    let after = model.cost(&removal);
    let removed = dg
        .groups()
        .iter()
        .map(|g| (g.id, removal.of(g.id)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    Ok(Allocation {
        removed,
        before,
        after,
        warnings,
    })
}
