//! Filter pruning via geometric median (He et al., "Filter Pruning via Geometric Median for
//! Deep Convolutional Neural Networks Acceleration").

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use shears_ir::ParamKind;

use super::{Importance, Reducer, Reduction, ScoreContext};
use crate::prune::depgraph::{Group, Role};
use crate::prune::error::{PruneError, Result};

/// For each producer of the group (conv / linear filters, depthwise filters), the sum of
/// Euclidean distances from channel `r`'s filter to the filters of the group's other channels
/// in that producer; reduced over producers. A filter close to all others lies near their
/// geometric median and is redundant: a small score means prune first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fpgm {
    /// How producers are combined; default mean.
    pub reduction: Reduction,
}

impl Importance for Fpgm {
    fn name(&self) -> &str {
        "fpgm"
    }

    fn score(&self, ctx: &ScoreContext, group: &Group) -> Result<Vec<f32>> {
        let mut red = Reducer::new(self.reduction, group.size);
        for m in &group.members {
            if !matches!(m.role, Role::OutChannels | Role::Depthwise) {
                continue;
            }
            let t = ctx.tensor(m.node, ParamKind::Weight)?;
            let row: usize = t.shape()[1..].iter().product();
            let filters: Vec<(usize, Vec<f64>)> = m
                .idxs
                .iter()
                .enumerate()
                .filter(|(_, idxs)| !idxs.is_empty())
                .map(|(r, idxs)| {
                    let f = idxs
                        .iter()
                        .flat_map(|&o| {
                            t.data()[o * row..(o + 1) * row]
                                .iter()
                                .map(|&x| f64::from(x))
                        })
                        .collect();
                    (r, f)
                })
                .collect();
            let dists: Vec<f64> = filters
                .par_iter()
                .map(|(_, a)| {
                    filters
                        .iter()
                        .map(|(_, b)| {
                            a.iter()
                                .zip(b)
                                .map(|(x, y)| (x - y) * (x - y))
                                .sum::<f64>()
                                .sqrt()
                        })
                        .sum()
                })
                .collect();
            for ((r, _), d) in filters.iter().zip(dists) {
                red.add(*r, d);
            }
        }
        if red.is_empty() {
            return Err(PruneError::Unscorable {
                criterion: self.name().into(),
                group: group.id,
                root: ctx.graph.node(group.root).name.clone(),
                why: "the group has no conv or linear producing its channels".into(),
            });
        }
        Ok(red.finish())
    }
}
