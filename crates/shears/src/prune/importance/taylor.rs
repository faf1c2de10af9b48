//! First-order Taylor expansion of the loss (Molchanov et al., "Importance Estimation for
//! Neural Network Pruning").

use serde::{Deserialize, Serialize};
use shears_ir::{ParamKind, Tensor};

use super::{for_member_flat, weight_axis, Importance, Reducer, Reduction, ScoreContext};
use crate::prune::depgraph::{Group, Role};
use crate::prune::error::{PruneError, Result};

/// `|sum(w * grad)|` over each member's slice, reduced over members: for producers the filter
/// and its bias, for consumers their input slice, for batch norms `gamma` and `beta`.
/// Needs [`ScoreContext::grads`] (gradients accumulated over a few batches by the caller).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taylor {
    /// How members are combined; default mean.
    pub reduction: Reduction,
}

impl Importance for Taylor {
    fn name(&self) -> &str {
        "taylor"
    }

    fn score(&self, ctx: &ScoreContext, group: &Group) -> Result<Vec<f32>> {
        let root = || ctx.graph.node(group.root).name.clone();
        let Some(grads) = ctx.grads else {
            return Err(PruneError::Unscorable {
                criterion: self.name().into(),
                group: group.id,
                root: root(),
                why: "taylor needs gradients; compute them on data first".into(),
            });
        };
        let grad = |node, kind| -> Result<&Tensor> {
            let name = ctx.graph.node(node).param_name(kind);
            let w = ctx.tensor(node, kind)?;
            let g = grads.get(&name).ok_or_else(|| PruneError::Unscorable {
                criterion: "taylor".into(),
                group: group.id,
                root: root(),
                why: format!("no gradient for {name}"),
            })?;
            if g.shape() != w.shape() {
                return Err(PruneError::TensorShape {
                    name: format!("gradient of {name}"),
                    expected: w.shape().to_vec(),
                    found: g.shape().to_vec(),
                });
            }
            Ok(g)
        };
        let mut red = Reducer::new(self.reduction, group.size);
        for m in &group.members {
            let Some(axis) = weight_axis(m.role) else {
                continue;
            };
            let mut kinds = vec![ParamKind::Weight];
            let has_bias = matches!(
                m.role,
                Role::OutChannels | Role::Depthwise | Role::BnChannels
            ) && ctx
                .weights
                .contains(&ctx.graph.node(m.node).param_name(ParamKind::Bias));
            if has_bias {
                kinds.push(ParamKind::Bias);
            }
            let mut acc = vec![0.0f64; group.size];
            for kind in kinds {
                let w = ctx.tensor(m.node, kind)?;
                let g = grad(m.node, kind)?;
                let (wd, gd) = (w.data(), g.data());
                let kind_axis = if kind == ParamKind::Bias { 0 } else { axis };
                for_member_flat(w.shape(), kind_axis, m, |r, i| {
                    acc[r] += f64::from(wd[i]) * f64::from(gd[i]);
                });
            }
            for (r, idxs) in m.idxs.iter().enumerate() {
                if !idxs.is_empty() {
                    red.add(r, acc[r].abs());
                }
            }
        }
        Ok(red.finish())
    }
}
