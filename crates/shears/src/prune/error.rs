//! The typed error of [`crate::prune`].

use shears_ir::IrError;

/// Errors of dependency analysis, scoring, allocation, plans and surgery.
///
/// Messages are lowercase, name the group, node, tensor or value at fault, and say what was
/// expected.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The IR rejected a graph or a patch.
    #[error(transparent)]
    Ir(#[from] IrError),
    /// A tensor the graph needs is not in the weights.
    #[error("weights have no tensor {name:?}")]
    MissingTensor {
        /// The tensor name (`<node>.<kind>`).
        name: String,
    },
    /// A tensor has the wrong shape for its node.
    #[error("tensor {name:?} has shape {found:?}, the graph needs {expected:?}")]
    TensorShape {
        /// The tensor name.
        name: String,
        /// The shape the graph needs.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A plan was made for another graph.
    #[error(
        "plan was made for graph {plan} but this graph is {graph}: replay a plan only on the \
         graph it was made for"
    )]
    FingerprintMismatch {
        /// The fingerprint stored in the plan.
        plan: String,
        /// The fingerprint of the graph it was applied to.
        graph: String,
    },
    /// A plan is inconsistent with the graph's groups (bad group id, root, or indices).
    #[error("invalid plan: {0}")]
    Plan(String),
    /// A configuration value is out of range or names something that does not exist.
    #[error("{0}")]
    Invalid(String),
    /// A MACs or parameter target cannot be reached under the constraints.
    #[error(
        "{what} target keep fraction {target} is unreachable: the best achievable is {best:.4} \
         ({why})"
    )]
    Unreachable {
        /// `"macs"` or `"params"`.
        what: &'static str,
        /// The requested keep fraction.
        target: f64,
        /// The smallest keep fraction reachable under the constraints.
        best: f64,
        /// Which constraints limit it.
        why: String,
    },
    /// A criterion cannot score a group.
    #[error("criterion {criterion} cannot score group {group} ({root}): {why}")]
    Unscorable {
        /// The criterion name.
        criterion: String,
        /// The group id.
        group: usize,
        /// The group's root node name.
        root: String,
        /// Why not (and what to do about it).
        why: String,
    },
    /// A criterion returned scores that cannot be ranked.
    #[error("criterion {criterion} returned {found} scores for group {group} of {expected} channels{detail}")]
    BadScores {
        /// The criterion name.
        criterion: String,
        /// The group id.
        group: usize,
        /// Channels in the group.
        expected: usize,
        /// Scores returned.
        found: usize,
        /// Extra detail (e.g. a non-finite score).
        detail: String,
    },
    /// The forward pass used by verification failed.
    #[error("verification forward pass of the {which} model failed: {msg}")]
    Forward {
        /// `"masked"` or `"pruned"`.
        which: &'static str,
        /// The error of the forward function.
        msg: String,
    },
    /// The pruned model does not reproduce the masked model.
    #[error(
        "verification failed: pruned and masked outputs differ by up to {max_abs_diff:e} \
         (tolerance {tolerance:e}){note}"
    )]
    Verification {
        /// Largest absolute difference over all outputs.
        max_abs_diff: f64,
        /// The tolerance.
        tolerance: f64,
        /// A note on approximations the surgery reported, if any.
        note: String,
    },
}

/// Result with [`PruneError`].
pub type Result<T, E = PruneError> = std::result::Result<T, E>;
