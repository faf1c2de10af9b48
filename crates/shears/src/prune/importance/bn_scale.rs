//! Batch-norm scale `|gamma|` (Liu et al., "Learning Efficient Convolutional Networks through
//! Network Slimming").

use serde::{Deserialize, Serialize};
use shears_ir::ParamKind;

use super::{Importance, Reducer, Reduction, ScoreContext};
use crate::prune::depgraph::{Group, Role};
use crate::prune::error::{PruneError, Result};

/// `|gamma|` of every batch norm that holds the channel, reduced over those batch norms.
/// A group without a batch norm cannot be scored: ignore it (`--ignore <root>`) or use
/// another criterion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BnScale {
    /// How BN members are combined; default mean.
    pub reduction: Reduction,
}

impl Importance for BnScale {
    fn name(&self) -> &str {
        "bn_scale"
    }

    fn score(&self, ctx: &ScoreContext, group: &Group) -> Result<Vec<f32>> {
        let mut red = Reducer::new(self.reduction, group.size);
        for m in group.members_with(Role::BnChannels) {
            let gamma = ctx.tensor(m.node, ParamKind::Weight)?.data();
            for (r, idxs) in m.idxs.iter().enumerate() {
                for &i in idxs {
                    red.add(r, f64::from(gamma[i].abs()));
                }
            }
        }
        if red.is_empty() {
            return Err(PruneError::Unscorable {
                criterion: self.name().into(),
                group: group.id,
                root: ctx.graph.node(group.root).name.clone(),
                why: "the group has no batch norm; ignore it or use another criterion".into(),
            });
        }
        Ok(red.finish())
    }
}
