//! Importance criteria: one score per channel of a group, higher = more important.
//!
//! A criterion implements [`Importance`]. The built-in ones score each member of a group
//! (its conv filters, the consumers' input slices, the BN scales, ...) and reduce the
//! members' scores per channel with a [`Reduction`]:
//!
//! | criterion | file | score of channel `r` |
//! |---|---|---|
//! | [`Magnitude`] L1 / L2 | `magnitude.rs` | norm of each member's slice for `r`, reduced |
//! | [`BnScale`] | `bn_scale.rs` | `|gamma|` of each BN member, reduced |
//! | [`Fpgm`] | `fpgm.rs` | sum of Euclidean distances of `r`'s filter to the group's other filters, reduced over producers |
//! | [`RandomImportance`] | `random.rs` | uniform in `[0, 1)`, seeded per group |
//! | [`Taylor`] | `taylor.rs` | `|sum(w * grad)|` over each member's slice, reduced; needs gradients |
//!
//! Other criteria (LSA, damage-based scores) plug in through the trait. [`Criterion`] is the
//! closed set of built-ins, for the command line.

mod bn_scale;
mod fpgm;
mod magnitude;
mod random;
mod taylor;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use shears_ir::{Graph, NodeId, ParamKind, Tensor, Weights};

pub use bn_scale::BnScale;
pub use fpgm::Fpgm;
pub use magnitude::{Magnitude, MemberSet, Norm};
pub use random::RandomImportance;
pub use taylor::Taylor;

use super::depgraph::{Group, Member, Role};
use super::error::{PruneError, Result};

/// What a criterion may read: the graph, its weights, and data-derived statistics that a
/// caller computed by running the engine.
#[derive(Clone, Copy, Debug)]
pub struct ScoreContext<'a> {
    /// The graph.
    pub graph: &'a Graph,
    /// Its weights.
    pub weights: &'a Weights,
    /// Gradients of the loss with respect to each parameter, accumulated over a few batches,
    /// keyed like the weights (needed by [`Taylor`]).
    pub grads: Option<&'a Weights>,
}

impl<'a> ScoreContext<'a> {
    /// A context without data statistics.
    pub fn new(graph: &'a Graph, weights: &'a Weights) -> Self {
        ScoreContext {
            graph,
            weights,
            grads: None,
        }
    }

    /// Adds accumulated gradients.
    pub fn with_grads(mut self, grads: &'a Weights) -> Self {
        self.grads = Some(grads);
        self
    }

    /// The weight tensor `kind` of `node`, or an error naming it.
    pub fn tensor(&self, node: NodeId, kind: ParamKind) -> Result<&'a Tensor> {
        let name = self.graph.node(node).param_name(kind);
        self.weights
            .get(&name)
            .ok_or(PruneError::MissingTensor { name })
    }
}

/// A channel-importance criterion.
pub trait Importance {
    /// A short name, recorded in plans (`"l1"`, `"fpgm"`, ...).
    fn name(&self) -> &str;

    /// One score per channel of `group` (`group.size` values, indexed by root index); higher
    /// means more important. An error names the group when the criterion cannot score it.
    fn score(&self, ctx: &ScoreContext, group: &Group) -> Result<Vec<f32>>;
}

/// How member scores are combined into one score per channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Mean over the members that hold the channel (default).
    #[default]
    Mean,
    /// Sum over the members.
    Sum,
    /// Maximum over the members.
    Max,
}

/// How a group's scores are rescaled before they are ranked against other groups' (global
/// ranking only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalizer {
    /// Raw scores.
    None,
    /// Divide by the group's mean score (default, as Torch-Pruning).
    #[default]
    Mean,
    /// Divide by the group's largest score.
    Max,
    /// Divide by the sum of the group's scores.
    Sum,
}

impl Normalizer {
    /// Rescales `scores` in place; a zero denominator leaves them unchanged.
    pub fn apply(self, scores: &mut [f32]) {
        let n = scores.len().max(1) as f64;
        let denom = match self {
            Normalizer::None => return,
            Normalizer::Mean => scores.iter().map(|&x| f64::from(x)).sum::<f64>() / n,
            Normalizer::Max => scores.iter().fold(0.0f64, |a, &x| a.max(f64::from(x))),
            Normalizer::Sum => scores.iter().map(|&x| f64::from(x)).sum::<f64>(),
        };
        if denom > 0.0 && denom.is_finite() {
            for s in scores {
                *s = (f64::from(*s) / denom) as f32;
            }
        }
    }
}

/// The built-in criteria, for the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// L1 norm of every member's slice ([`Magnitude`]).
    L1,
    /// L2 norm of every member's slice ([`Magnitude`]).
    L2,
    /// `|gamma|` of the batch norms ([`BnScale`], Network Slimming).
    BnScale,
    /// Distance to the other filters ([`Fpgm`]).
    Fpgm,
    /// Seeded random scores ([`RandomImportance`]).
    Random,
    /// First-order Taylor `|sum(w * grad)|` ([`Taylor`]); needs gradients.
    Taylor,
}

impl Criterion {
    /// Every built-in criterion.
    pub fn all() -> &'static [Criterion] {
        &[
            Criterion::L1,
            Criterion::L2,
            Criterion::BnScale,
            Criterion::Fpgm,
            Criterion::Random,
            Criterion::Taylor,
        ]
    }

    /// The canonical name (`l1`, `l2`, `bn_scale`, `fpgm`, `random`, `taylor`).
    pub fn name(self) -> &'static str {
        match self {
            Criterion::L1 => "l1",
            Criterion::L2 => "l2",
            Criterion::BnScale => "bn_scale",
            Criterion::Fpgm => "fpgm",
            Criterion::Random => "random",
            Criterion::Taylor => "taylor",
        }
    }

    /// The criterion with the given member reduction (and `seed` for [`Criterion::Random`]).
    pub fn build(self, reduction: Reduction, seed: u64) -> Box<dyn Importance + Send + Sync> {
        match self {
            Criterion::L1 => Box::new(Magnitude::new(Norm::L1).with_reduction(reduction)),
            Criterion::L2 => Box::new(Magnitude::new(Norm::L2).with_reduction(reduction)),
            Criterion::BnScale => Box::new(BnScale { reduction }),
            Criterion::Fpgm => Box::new(Fpgm { reduction }),
            Criterion::Random => Box::new(RandomImportance { seed }),
            Criterion::Taylor => Box::new(Taylor { reduction }),
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Criterion {
    type Err = PruneError;

    /// Accepts the canonical names and `bn`, `slim`, `geometric_median`, `rand`, ignoring case
    /// and `-` versus `_`.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase().replace('-', "_");
        Ok(match t.as_str() {
            "l1" | "magnitude" => Criterion::L1,
            "l2" => Criterion::L2,
            "bn_scale" | "bn" | "slim" => Criterion::BnScale,
            "fpgm" | "geometric_median" => Criterion::Fpgm,
            "random" | "rand" => Criterion::Random,
            "taylor" => Criterion::Taylor,
            _ => {
                return Err(PruneError::Invalid(format!(
                    "unknown criterion {s:?} (valid: l1, l2, bn_scale, fpgm, random, taylor)"
                )))
            }
        })
    }
}

impl FromStr for Reduction {
    type Err = PruneError;

    /// `mean`, `sum` or `max`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            "max" => Ok(Reduction::Max),
            _ => Err(PruneError::Invalid(format!(
                "unknown reduction {s:?} (valid: mean, sum, max)"
            ))),
        }
    }
}

impl FromStr for Normalizer {
    type Err = PruneError;

    /// `none`, `mean`, `max` or `sum`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Normalizer::None),
            "mean" => Ok(Normalizer::Mean),
            "max" => Ok(Normalizer::Max),
            "sum" => Ok(Normalizer::Sum),
            _ => Err(PruneError::Invalid(format!(
                "unknown normalizer {s:?} (valid: none, mean, max, sum)"
            ))),
        }
    }
}

/// Per-channel accumulator of member scores.
pub(crate) struct Reducer {
    reduction: Reduction,
    acc: Vec<f64>,
    count: Vec<u32>,
}

impl Reducer {
    pub(crate) fn new(reduction: Reduction, n: usize) -> Self {
        Reducer {
            reduction,
            acc: vec![
                match reduction {
                    Reduction::Max => f64::NEG_INFINITY,
                    _ => 0.0,
                };
                n
            ],
            count: vec![0; n],
        }
    }

    /// Adds one member's score for channel `r`.
    pub(crate) fn add(&mut self, r: usize, v: f64) {
        match self.reduction {
            Reduction::Max => self.acc[r] = self.acc[r].max(v),
            Reduction::Mean | Reduction::Sum => self.acc[r] += v,
        }
        self.count[r] += 1;
    }

    /// Whether any member contributed.
    pub(crate) fn is_empty(&self) -> bool {
        self.count.iter().all(|&c| c == 0)
    }

    /// The scores; channels no member holds score 0.
    pub(crate) fn finish(self) -> Vec<f32> {
        self.acc
            .iter()
            .zip(&self.count)
            .map(|(&a, &c)| match (c, self.reduction) {
                (0, _) => 0.0,
                (c, Reduction::Mean) => (a / f64::from(c)) as f32,
                _ => a as f32,
            })
            .collect()
    }
}

/// The weight tensor and axis a member's channels live on, for roles that have weights:
/// out-channels and depthwise filters (axis 0), consumer input slices (axis 1), BN scale.
pub(crate) fn weight_axis(role: Role) -> Option<usize> {
    match role {
        Role::OutChannels | Role::Depthwise | Role::BnChannels => Some(0),
        Role::InChannels => Some(1),
        Role::ShortcutPad | Role::Operand | Role::SliceInput => None,
    }
}

/// Calls `f(r, i)` for the flat index `i` of every element of `member`'s slices of a tensor of
/// `shape` (on `axis`), for each channel `r` the member holds.
pub(crate) fn for_member_flat(
    shape: &[usize],
    axis: usize,
    member: &Member,
    mut f: impl FnMut(usize, usize),
) {
    let outer: usize = shape[..axis].iter().product();
    let dim = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    for (r, idxs) in member.idxs.iter().enumerate() {
        for &k in idxs {
            for o in 0..outer {
                let start = (o * dim + k) * inner;
                for i in start..start + inner {
                    f(r, i);
                }
            }
        }
    }
}

/// Calls `f(r, x)` for every element `x` of `member`'s slices of tensor `t` (on `axis`), for
/// each channel `r` the member holds.
pub(crate) fn for_member(t: &Tensor, axis: usize, member: &Member, mut f: impl FnMut(usize, f32)) {
    let data = t.data();
    for_member_flat(t.shape(), axis, member, |r, i| f(r, data[i]));
}
