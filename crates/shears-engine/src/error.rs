//! The engine's error type.

use shears_ir::NodeId;

/// Everything that can go wrong in the engine when driven by user input.
///
/// Internal invariants (indices the engine validated itself) panic with a message instead.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A parameter or buffer the graph needs is absent from the weights.
    #[error("missing weight {name:?} (expected shape {expected:?})")]
    MissingWeight {
        /// Full tensor name, e.g. `layer1.0.conv1.weight`.
        name: String,
        /// Shape the graph expects.
        expected: Vec<usize>,
    },
    /// Tensors in the weights that the graph does not know.
    #[error("unexpected weight(s) {names:?}: the graph has no such parameters")]
    UnexpectedWeights {
        /// Their names.
        names: Vec<String>,
    },
    /// A weight tensor has the wrong shape.
    #[error("weight {name:?} has shape {found:?}, expected {expected:?}")]
    WeightShape {
        /// Full tensor name.
        name: String,
        /// Shape the graph expects.
        expected: Vec<usize>,
        /// Shape given.
        found: Vec<usize>,
    },
    /// A tensor fed to a node has the wrong shape.
    #[error(
        "node {node:?} expects a batch of shape [N, {}], got {found:?}",
        join(expected)
    )]
    BadInput {
        /// Name of the node fed.
        node: String,
        /// Per-sample shape the node has.
        expected: Vec<usize>,
        /// Shape of the tensor given.
        found: Vec<usize>,
    },
    /// Two tensors that must share a batch size do not.
    #[error("batch size mismatch: {what} has batch {found}, expected {expected}")]
    BatchMismatch {
        /// What was checked.
        what: String,
        /// Expected batch size.
        expected: usize,
        /// Batch size given.
        found: usize,
    },
    /// A graph input needed by the requested outputs was not given.
    #[error("no value given for input node {node:?}")]
    MissingInput {
        /// Name of the input node.
        node: String,
    },
    /// A node id that is not part of this network's graph.
    #[error("node {0} is not in the graph")]
    UnknownNode(NodeId),
    /// A parameter name that the network does not have.
    #[error("unknown parameter {0:?}")]
    UnknownParam(String),
    /// A gradient seed of the wrong shape.
    #[error("gradient for node {node:?} has shape {found:?}, expected {expected:?}")]
    GradShape {
        /// Node name.
        node: String,
        /// Expected batch shape (NCHW).
        expected: Vec<usize>,
        /// Shape given.
        found: Vec<usize>,
    },
    /// A gradient was seeded at a node the recorded forward pass did not compute.
    #[error("node {node:?} was not computed by the recorded forward pass")]
    NotRecorded {
        /// Node name.
        node: String,
    },
    /// `backward` was called without a recorded forward pass.
    #[error(
        "no recorded forward pass: run a recording forward (e.g. forward_train) before backward"
    )]
    NoTape,
    /// A configuration the engine does not support (the node is named).
    #[error("node {node:?}: {msg}")]
    Unsupported {
        /// Node name.
        node: String,
        /// What is not supported.
        msg: String,
    },
    /// Batch norm in training mode with a single value per channel.
    #[error(
        "batch norm {node:?} in training mode needs more than one value per channel, got {count}"
    )]
    BatchNormSingleValue {
        /// Node name.
        node: String,
        /// Values per channel (batch times spatial size).
        count: usize,
    },
    /// Two tensors given to a loss or helper disagree in shape.
    #[error("{what}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// What was checked.
        what: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Shape given.
        found: Vec<usize>,
    },
    /// A class label is out of range.
    #[error("label {label} at index {index} is out of range for {classes} classes")]
    BadLabel {
        /// Position in the batch.
        index: usize,
        /// The label.
        label: usize,
        /// Number of classes.
        classes: usize,
    },
    /// An invalid numeric configuration (learning rate, temperature, thread count, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Optimizer state that does not fit the parameter it is keyed to.
    #[error("optimizer state for {name:?} has {found} elements, the parameter has {expected}")]
    OptimizerState {
        /// Parameter name.
        name: String,
        /// Parameter size.
        expected: usize,
        /// State size.
        found: usize,
    },
    /// An activation too large to allocate (a huge but valid input shape, or batch), refused
    /// before anything is allocated.
    #[error(
        "node {node:?} needs an activation of shape {shape:?}: {bytes} bytes of f32, over the \
         limit of {limit} bytes per activation (check the model's input shape and the batch size)"
    )]
    ActivationTooLarge {
        /// The node.
        node: String,
        /// Its batch shape (batch first).
        shape: Vec<usize>,
        /// The bytes it needs.
        bytes: u128,
        /// The limit ([`crate::MAX_ACTIVATION_BYTES`]).
        limit: u64,
    },
    /// An error from the IR (e.g. building a tensor).
    #[error(transparent)]
    Ir(#[from] shears_ir::IrError),
}

impl EngineError {
    /// Whether the error comes from what the user gave (a model or batch too large), rather
    /// than from running the model.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, EngineError::ActivationTooLarge { .. })
    }
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Result alias of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
