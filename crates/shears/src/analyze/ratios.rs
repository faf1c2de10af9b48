//! Per-group ratios from a sweep's curves: the largest ratio under a loss-increase threshold
//! ([`ratios_for_loss`], PaddleSlim's `get_ratios_by_loss`) and the threshold bisected to meet a
//! MACs target ([`ratios_for_macs`]). Both return `{group root: ratio}`, the format of
//! `shears prune --ratios-from FILE`. Re-exported by [`super::sweep`].

use std::collections::BTreeMap;

use serde::Serialize;
use shears_ir::{Graph, Weights};

use super::sweep::{ratio_count, ratio_for_count, GroupCurve, SweepResult};
use crate::prune::{predict_cost, DepGraph, Plan, PlanGroup};
use crate::Error;

/// The largest ratio of `curve` whose loss increase over `base_loss`, linearly interpolated
/// between measured points (the curve starts at (0, `base_loss`)), stays at or below
/// `max_increase`. Points are taken in increasing ratio; the first crossing decides.
pub fn max_ratio_for_loss(curve: &GroupCurve, base_loss: f64, max_increase: f64) -> f64 {
    let mut pts: Vec<(f64, f64)> = curve
        .points
        .iter()
        .map(|p| (f64::from(p.ratio), p.loss - base_loss))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut r0, mut d0) = (0.0f64, 0.0f64);
    for (r, d) in pts {
        if d > max_increase {
            if d0 >= max_increase || d <= d0 {
                return r0;
            }
            return r0 + (r - r0) * (max_increase - d0) / (d - d0);
        }
        (r0, d0) = (r, d);
    }
    r0
}

/// Per-group ratios for a loss-increase threshold (see [`max_ratio_for_loss`]), as exact
/// channel counts: `{root: ratio}` with `floor(ratio * size)` the channels removed (at least
/// one kept), the `--ratios-from` format. Groups that get no channel removed are omitted.
pub fn ratios_for_loss(result: &SweepResult, max_increase: f64) -> BTreeMap<String, f32> {
    let mut out = BTreeMap::new();
    for c in &result.groups {
        let r = max_ratio_for_loss(c, result.baseline_loss, max_increase);
        let k = ((r * c.size as f64) + 1e-9).floor() as usize;
        let k = k.min(c.size.saturating_sub(1));
        if k > 0 {
            out.insert(c.root.clone(), ratio_for_count(k, c.size));
        }
    }
    out
}

/// Ratios chosen by [`ratios_for_macs`].
#[derive(Clone, Debug, Serialize)]
pub struct MacsSelection {
    /// `{root: ratio}` for `--ratios-from`.
    pub ratios: BTreeMap<String, f32>,
    /// The loss-increase threshold found.
    pub threshold: f64,
    /// MACs before.
    pub macs_before: u64,
    /// MACs after (exact, from the cost model).
    pub macs_after: u64,
}

/// The MACs `shears prune --ratios-from` would leave with these ratios (channel choice does not
/// change MACs; the first `k` channels stand in).
pub fn macs_with_ratios(
    graph: &Graph,
    weights: &Weights,
    dg: &DepGraph,
    ratios: &BTreeMap<String, f32>,
) -> Result<u64, Error> {
    let mut plan = Plan::empty(graph);
    for g in dg.prunable() {
        let name = &graph.node(g.root).name;
        if let Some(&r) = ratios.get(name) {
            let k = ratio_count(r, g.size).min(g.size.saturating_sub(1));
            if k > 0 {
                plan.groups.push(PlanGroup {
                    group_id: g.id,
                    root: name.clone(),
                    removed: (0..k).collect(),
                });
            }
        }
    }
    Ok(predict_cost(graph, weights, dg, &plan)?.macs)
}

/// Bisects the loss-increase threshold so that [`ratios_for_loss`] keeps at most
/// `keep_fraction` of the MACs (PaddleSlim's `get_ratios_by_sensitivity`). The largest
/// ratio a group can get is its largest swept ratio; a target below what that allows is an
/// error naming the best achievable fraction.
pub fn ratios_for_macs(
    graph: &Graph,
    weights: &Weights,
    result: &SweepResult,
    keep_fraction: f64,
) -> Result<MacsSelection, Error> {
    if !(keep_fraction > 0.0 && keep_fraction <= 1.0) {
        return Err(Error::invalid(format!(
            "MACs keep fraction {keep_fraction} must be in (0, 1] (0.5 halves the MACs)"
        )));
    }
    let dg = DepGraph::build(graph)?;
    let before = graph.macs();
    let target = keep_fraction * before as f64;
    let eval = |t: f64| -> Result<(BTreeMap<String, f32>, u64), Error> {
        let r = ratios_for_loss(result, t);
        let m = macs_with_ratios(graph, weights, &dg, &r)?;
        Ok((r, m))
    };
    let hi_t = result
        .groups
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.loss - result.baseline_loss))
        .fold(0.0f64, f64::max)
        + 1.0;
    let (_, m_hi) = eval(hi_t)?;
    if (m_hi as f64) > target {
        return Err(Error::invalid(format!(
            "a MACs keep fraction of {keep_fraction} is out of reach of the swept ratios: \
             pruning every group at its largest swept ratio keeps {:.4}; sweep larger ratios",
            m_hi as f64 / before as f64
        )));
    }
    let (mut lo, mut hi) = (0.0f64, hi_t);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if (eval(mid)?.1 as f64) <= target {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi - lo < 1e-12 {
            break;
        }
    }
    let (ratios, after) = eval(hi)?;
    Ok(MacsSelection {
        ratios,
        threshold: hi,
        macs_before: before,
        macs_after: after,
    })
}
