//! `--target-latency`: choose each group's kept width to keep the most importance while the
//! model's estimated latency in a runtime, from its [latency tables](super::table), falls to a
//! fraction of the original.
//!
//! The estimate is the sum of the model's tabled layers (each conv and linear at its input and
//! output widths); the rest of the model (normalisation, activations, pooling, sums) is
//! assumed to scale with it, so the target is `sum(pruned) <= keep * sum(original)`. The
//! search is greedy from full width: at each step, of every group's moves to a smaller
//! measured width, take the one that loses the least importance per millisecond saved (scores
//! normalised by the group's mean, lowest channels removed first), until the target is met.
//! Because the moves go to measured widths and a move must save time, widths land on the
//! runtime's fast steps. The result is a per-group [`Strategy::PerGroup`] allocation; the
//! caller measures the pruned model to check it.

use std::collections::BTreeMap;

use serde::Serialize;
use shears_ir::Graph;

use super::table::{LatencyTables, LayerShape, LayerTable};
use crate::prune::{DepGraph, Importance, PruneError, Role, ScoreContext, Strategy};
use crate::Error;

/// One prunable group as the allocator sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct AllocGroup {
    /// Channels.
    pub size: usize,
    /// Importance of the channels in the order they are removed (ascending), normalised.
    pub scores: Vec<f64>,
    /// Kept widths it may take, ascending, ending at `size`.
    pub widths: Vec<usize>,
}

/// One tabled layer: how its widths follow from the groups' kept widths.
#[derive(Clone, Debug, PartialEq)]
pub struct AllocLayer {
    /// Its latency table.
    pub table: LayerTable,
    /// `(group, slots per channel)` of the groups that feed its input channels.
    pub in_terms: Vec<(usize, f64)>,
    /// `(group, slots per channel)` of the groups that own its output channels.
    pub out_terms: Vec<(usize, f64)>,
}

impl AllocLayer {
    /// Estimated milliseconds with `kept` channels in each group.
    fn ms(&self, groups: &[AllocGroup], kept: &[usize]) -> f64 {
        let width = |full: usize, terms: &[(usize, f64)]| {
            let cut: f64 = terms
                .iter()
                .map(|&(g, per)| (groups[g].size - kept[g]) as f64 * per)
                .sum();
            ((full as f64 - cut).round().max(1.0)) as usize
        };
        let s = &self.table.shape;
        self.table.ms(
            width(s.in_channels, &self.in_terms),
            width(s.out_channels, &self.out_terms),
        )
    }

    fn touches(&self, g: usize) -> bool {
        self.in_terms
            .iter()
            .chain(&self.out_terms)
            .any(|t| t.0 == g)
    }
}

/// The allocator's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyAllocation {
    /// Kept channels per group.
    pub kept: Vec<usize>,
    /// Estimated tabled milliseconds before.
    pub full_ms: f64,
    /// Estimated tabled milliseconds after.
    pub predicted_ms: f64,
}

impl LatencyAllocation {
    /// Estimated latency kept (after / before).
    pub fn predicted_fraction(&self) -> f64 {
        if self.full_ms > 0.0 {
            self.predicted_ms / self.full_ms
        } else {
            1.0
        }
    }
}

fn total(groups: &[AllocGroup], layers: &[AllocLayer], kept: &[usize]) -> f64 {
    layers.iter().map(|l| l.ms(groups, kept)).sum()
}

/// Greedy allocation (see the module docs): kept widths whose estimated latency is at most
/// `keep` times the original's. Errors when even the narrowest widths cannot reach it.
pub fn allocate_latency(
    groups: &[AllocGroup],
    layers: &[AllocLayer],
    keep: f64,
) -> Result<LatencyAllocation, PruneError> {
    if !(keep > 0.0 && keep <= 1.0) {
        return Err(PruneError::Invalid(format!(
            "target latency keep fraction {keep} must be in (0, 1] (0.5 halves the latency)"
        )));
    }
    let mut kept: Vec<usize> = groups.iter().map(|g| g.size).collect();
    let full_ms = total(groups, layers, &kept);
    let target = keep * full_ms;
    // Prefix sums of the scores in removal order: importance lost by keeping w of n is
    // prefix[n - w].
    let prefix: Vec<Vec<f64>> = groups
        .iter()
        .map(|g| {
            std::iter::once(0.0)
                .chain(g.scores.iter().scan(0.0, |s, &x| {
                    *s += x;
                    Some(*s)
                }))
                .collect()
        })
        .collect();
    let by_group: Vec<Vec<usize>> = (0..groups.len())
        .map(|g| {
            (0..layers.len())
                .filter(|&l| layers[l].touches(g))
                .collect()
        })
        .collect();
    let mut now = full_ms;
    while now > target {
        let mut best: Option<(f64, usize, usize, f64)> = None;
        for (g, grp) in groups.iter().enumerate() {
            let here: f64 = by_group[g]
                .iter()
                .map(|&l| layers[l].ms(groups, &kept))
                .sum();
            let lost_now = prefix[g][grp.size - kept[g]];
            for &w in grp.widths.iter().filter(|&&w| w < kept[g]) {
                let mut trial = kept.clone();
                trial[g] = w;
                let there: f64 = by_group[g]
                    .iter()
                    .map(|&l| layers[l].ms(groups, &trial))
                    .sum();
                let saved = here - there;
                if saved <= 0.0 {
                    continue;
                }
                let cost = (prefix[g][grp.size - w] - lost_now) / saved;
                if best.is_none_or(|b| cost < b.0) {
                    best = Some((cost, g, w, saved));
                }
            }
        }
        let Some((_, g, w, saved)) = best else {
            return Err(PruneError::Unreachable {
                what: "latency",
                target: keep,
                best: now / full_ms,
                why: "no group can shrink further and save time".into(),
            });
        };
        kept[g] = w;
        now -= saved;
    }
    let predicted_ms = total(groups, layers, &kept);
    Ok(LatencyAllocation {
        kept,
        full_ms,
        predicted_ms,
    })
}

/// Builds the allocator's view of `ctx.graph` (its prunable groups scored by `criterion`, its
/// tabled layers) and allocates for `keep`; returns the per-group strategy that prunes to the
/// chosen widths, and the allocation. Groups holding a node of `ignore` are not pruned;
/// layers missing from `tables` are left out of the estimate.
pub fn latency_strategy(
    ctx: &ScoreContext,
    dg: &DepGraph,
    criterion: &dyn Importance,
    tables: &LatencyTables,
    keep: f64,
    ignore: &[String],
) -> Result<(Strategy, LatencyAllocation), Error> {
    let graph: &Graph = ctx.graph;
    let is_ignored = |g: &crate::prune::Group| {
        g.members
            .iter()
            .any(|m| m.role != Role::InChannels && ignore.contains(&graph.node(m.node).name))
    };
    let eligible: Vec<&crate::prune::Group> = dg
        .prunable()
        .filter(|g| g.size > 1 && !is_ignored(g))
        .collect();
    let mut groups = Vec::with_capacity(eligible.len());
    for g in &eligible {
        let raw = criterion.score(ctx, g)?;
        let mean = raw.iter().map(|&s| f64::from(s)).sum::<f64>() / raw.len() as f64;
        let mut scores: Vec<f64> = raw
            .iter()
            .map(|&s| if mean > 0.0 { f64::from(s) / mean } else { 1.0 })
            .collect();
        scores.sort_by(f64::total_cmp);
        groups.push(AllocGroup {
            size: g.size,
            scores,
            widths: Vec::new(),
        });
    }
    let mut layers: Vec<AllocLayer> = Vec::new();
    for id in graph.ids() {
        let Some(shape) = LayerShape::of(graph, id) else {
            continue;
        };
        let Some(table) = tables.get(&shape) else {
            continue;
        };
        let mut layer = AllocLayer {
            table: table.clone(),
            in_terms: Vec::new(),
            out_terms: Vec::new(),
        };
        for (gi, g) in eligible.iter().enumerate() {
            for m in g.members.iter().filter(|m| m.node == id) {
                let per = m.n_idxs() as f64 / g.size as f64;
                match m.role {
                    Role::InChannels => layer.in_terms.push((gi, per)),
                    Role::OutChannels => layer.out_terms.push((gi, per)),
                    _ => {}
                }
            }
        }
        // A group's allowed widths: the measured widths of its layers' curves, scaled from
        // layer slots back to group channels.
        for (terms, curve, full) in [
            (&layer.in_terms, &table.by_in, shape.in_channels),
            (&layer.out_terms, &table.by_out, shape.out_channels),
        ] {
            if let [(gi, per)] = terms.as_slice() {
                let size = groups[*gi].size;
                for &w in &curve.widths {
                    let cut = ((full - w.min(full)) as f64 / per).round() as usize;
                    if cut < size {
                        groups[*gi].widths.push(size - cut);
                    }
                }
            }
        }
        layers.push(layer);
    }
    for g in &mut groups {
        g.widths.push(g.size);
        g.widths.sort_unstable();
        g.widths.dedup();
    }
    let alloc = allocate_latency(&groups, &layers, keep)?;
    let ratios: BTreeMap<String, f32> = eligible
        .iter()
        .zip(&alloc.kept)
        .filter(|(g, &k)| k < g.size)
        // Half a channel over the count, so that floor(ratio * size) is the count exactly.
        .map(|(g, &k)| {
            let r = ((g.size - k) as f64 + 0.5) / g.size as f64;
            (graph.node(g.root).name.clone(), r as f32)
        })
        .collect();
    Ok((Strategy::PerGroup { ratios }, alloc))
}

#[cfg(test)]
mod tests {
    use super::super::table::Curve;
    use super::*;

    fn conv_table(n_in: usize, n_out: usize, fast: &[usize]) -> LayerTable {
        // A runtime that is fast at the widths in `fast` and slow (2x per channel) elsewhere.
        let cost = |w: usize| {
            if fast.contains(&w) {
                w as f64
            } else {
                2.0 * w as f64
            }
        };
        let curve = |n: usize| {
            let widths: Vec<usize> = (1..=n).collect();
            let ms = widths.iter().map(|&w| cost(w)).collect();
            Curve { widths, ms }
        };
        let shape = LayerShape {
            linear: false,
            in_channels: n_in,
            out_channels: n_out,
            in_hw: [8, 8],
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1; 4],
            dilation: [1, 1],
            bias: false,
        };
        let by_in = curve(n_in);
        let by_out = curve(n_out);
        let full_ms = by_in.at(n_in);
        LayerTable {
            shape,
            full_ms,
            by_in,
            by_out: Curve {
                ms: by_out
                    .ms
                    .iter()
                    .map(|x| x * full_ms / by_out.at(n_out))
                    .collect(),
                ..by_out
            },
        }
    }

    #[test]
    fn meets_the_budget_on_fast_widths_keeping_the_important_group() {
        // Two groups of 16 feeding one layer each; group 1's channels matter 10x more.
        let groups = vec![
            AllocGroup {
                size: 16,
                scores: vec![1.0; 16],
                widths: (1..=16).collect(),
            },
            AllocGroup {
                size: 16,
                scores: vec![10.0; 16],
                widths: (1..=16).collect(),
            },
        ];
        let layers = vec![
            AllocLayer {
                table: conv_table(16, 16, &[4, 8, 16]),
                in_terms: vec![],
                out_terms: vec![(0, 1.0)],
            },
            AllocLayer {
                table: conv_table(16, 16, &[4, 8, 16]),
                in_terms: vec![],
                out_terms: vec![(1, 1.0)],
            },
        ];
        let a = allocate_latency(&groups, &layers, 0.7).unwrap();
        assert!(a.predicted_ms <= 0.7 * a.full_ms + 1e-9, "{a:?}");
        assert!(a.predicted_fraction() <= 0.7);
        // The cheap group is cut, onto a fast width; the important one stays whole.
        assert_eq!(a.kept[1], 16);
        assert!([4, 8].contains(&a.kept[0]), "{a:?}");
        // Every budget is met, and a smaller budget never keeps more.
        let mut last = f64::INFINITY;
        for keep in [0.9, 0.6, 0.4, 0.3] {
            let a = allocate_latency(&groups, &layers, keep).unwrap();
            assert!(a.predicted_fraction() <= keep + 1e-9, "{keep}: {a:?}");
            assert!(a.predicted_ms <= last);
            last = a.predicted_ms;
        }
        assert!(matches!(
            allocate_latency(&groups, &layers, 0.01),
            Err(PruneError::Unreachable { .. })
        ));
    }
}
