//! L1 / L2 magnitude of every member's slice (Li et al., "Pruning Filters for Efficient
//! ConvNets"; Torch-Pruning's `GroupMagnitudeImportance`).

use serde::{Deserialize, Serialize};
use shears_ir::ParamKind;

use super::{for_member, weight_axis, Importance, Reducer, Reduction, ScoreContext};
use crate::prune::depgraph::{Group, Role};
use crate::prune::error::{PruneError, Result};

/// Which norm of a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    /// Sum of absolute values.
    L1,
    /// Square root of the sum of squares.
    L2,
}

/// Which members of a group contribute to a magnitude score. Default: all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSet {
    /// Producer filters ([`Role::OutChannels`] and [`Role::Depthwise`]: weight axis 0).
    pub out_channels: bool,
    /// Consumer input slices ([`Role::InChannels`]: weight axis 1).
    pub in_channels: bool,
    /// Batch-norm scales `gamma` ([`Role::BnChannels`]).
    pub batch_norm: bool,
}

impl Default for MemberSet {
    fn default() -> Self {
        MemberSet {
            out_channels: true,
            in_channels: true,
            batch_norm: true,
        }
    }
}

impl MemberSet {
    fn includes(&self, role: Role) -> bool {
        match role {
            Role::OutChannels | Role::Depthwise => self.out_channels,
            Role::InChannels => self.in_channels,
            Role::BnChannels => self.batch_norm,
            Role::ShortcutPad | Role::Operand | Role::SliceInput => false,
        }
    }
}

/// Magnitude criterion: for each member in [`MemberSet`], the L1 or L2 norm of the weights
/// that hold channel `r` (a filter, a consumer's input slice over all its filters, or one BN
/// scale), reduced over members. Biases are not counted.
///
/// ```
/// use shears::prune::{DepGraph, Importance, Magnitude, Norm, ScoreContext};
/// use shears::zoo::{build, init_weights, Arch};
/// let g = build(Arch::LeNet5, &Arch::LeNet5.default_config()).unwrap();
/// let w = init_weights(&g, Some(Arch::LeNet5), 0);
/// let dg = DepGraph::build(&g).unwrap();
/// let group = &dg.groups()[1]; // conv1's 32 channels
/// let scores = Magnitude::new(Norm::L1).score(&ScoreContext::new(&g, &w), group).unwrap();
/// assert_eq!(scores.len(), 32);
/// assert!(scores.iter().all(|&s| s > 0.0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Magnitude {
    /// L1 or L2.
    pub norm: Norm,
    /// How members are combined; default mean.
    pub reduction: Reduction,
    /// Which members count; default all.
    pub members: MemberSet,
}

impl Magnitude {
    /// Magnitude with `norm`, mean reduction, all members.
    pub fn new(norm: Norm) -> Self {
        Magnitude {
            norm,
            reduction: Reduction::Mean,
            members: MemberSet::default(),
        }
    }

    /// Sets the reduction.
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Sets which members count.
    pub fn with_members(mut self, members: MemberSet) -> Self {
        self.members = members;
        self
    }
}

impl Importance for Magnitude {
    fn name(&self) -> &str {
        match self.norm {
            Norm::L1 => "l1",
            Norm::L2 => "l2",
        }
    }

    fn score(&self, ctx: &ScoreContext, group: &Group) -> Result<Vec<f32>> {
        let mut red = Reducer::new(self.reduction, group.size);
        for m in group
            .members
            .iter()
            .filter(|m| self.members.includes(m.role))
        {
            let Some(axis) = weight_axis(m.role) else {
                continue;
            };
            let t = ctx.tensor(m.node, ParamKind::Weight)?;
            let mut acc = vec![0.0f64; group.size];
            for_member(t, axis, m, |r, x| {
                let x = f64::from(x);
                acc[r] += match self.norm {
                    Norm::L1 => x.abs(),
                    Norm::L2 => x * x,
                };
            });
            for (r, idxs) in m.idxs.iter().enumerate() {
                if !idxs.is_empty() {
                    red.add(
                        r,
                        match self.norm {
                            Norm::L1 => acc[r],
                            Norm::L2 => acc[r].sqrt(),
                        },
                    );
                }
            }
        }
        if red.is_empty() {
            return Err(PruneError::Unscorable {
                criterion: self.name().into(),
                group: group.id,
                root: ctx.graph.node(group.root).name.clone(),
                why: "no member of the selected kinds holds its channels".into(),
            });
        }
        Ok(red.finish())
    }
}
