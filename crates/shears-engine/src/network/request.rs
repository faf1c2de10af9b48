//! The public request and response types of forward and backward passes.

use std::collections::HashMap;

use shears_ir::{NodeId, Tensor, Weights};

/// Whether a forward pass runs in inference or training mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Inference: batch norm uses its running statistics, dropout is the identity, and
    /// conv + BN (+ ReLU) chains run as one fused convolution when no tape is recorded.
    Eval,
    /// Training: batch norm normalises with batch statistics and updates its running
    /// statistics; dropout is active.
    Train,
}

/// The memory layout of the tensors a forward pass is given and returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// PyTorch's layout: `[N, C, ...]` (channels first). The default.
    #[default]
    ChannelsFirst,
    /// The engine's own layout: `[N, ..., C]` (for a `[C, H, W]` node, `[N, H, W, C]`; vectors
    /// are the same in both). Feeding and returning it skips two layout conversions per
    /// tensor, for callers that cache activations and feed them back (see
    /// [`Network::per_sample_shape`](crate::Network::per_sample_shape)).
    ChannelsLast,
}

/// What a forward pass is given and asked for. Build with [`ForwardRequest::new`] and the
/// `with_*` methods.
#[derive(Clone, Debug)]
pub struct ForwardRequest<'a> {
    /// Inference or training mode.
    pub mode: Mode,
    /// Layout of the fed, captured and output tensors. Default channels first.
    pub layout: Layout,
    /// Whether the graph outputs are computed and returned (default true). Without them the
    /// pass computes only the captured nodes and what they need, and
    /// [`ForwardOutput::outputs`] is empty: a prefix of the network, without building another.
    pub outputs: bool,
    /// Values given to nodes, as NCHW batches (`[N, ...per-sample shape]`). Every graph input
    /// that the requested outputs depend on must be fed; feeding any other node makes the pass
    /// start there (its ancestors are not computed), e.g. to train a head on cached features.
    pub feeds: Vec<(NodeId, &'a Tensor)>,
    /// Nodes whose activations are returned (NCHW, or `[N, F]` for vectors).
    pub capture: Vec<NodeId>,
    /// Whether to keep what [`Network::backward`](crate::Network::backward) needs (the tape).
    /// Default false.
    pub record: bool,
}

impl<'a> ForwardRequest<'a> {
    /// A request in `mode` with no feeds, no captures and no tape.
    pub fn new(mode: Mode) -> Self {
        ForwardRequest {
            mode,
            layout: Layout::ChannelsFirst,
            outputs: true,
            feeds: Vec::new(),
            capture: Vec::new(),
            record: false,
        }
    }

    /// Feeds `value` to `node`.
    pub fn with_feed(mut self, node: NodeId, value: &'a Tensor) -> Self {
        self.feeds.push((node, value));
        self
    }

    /// Computes only the captured nodes (and what they need), not the graph outputs.
    pub fn captures_only(mut self) -> Self {
        self.outputs = false;
        self
    }

    /// Feeds, captures and returns tensors in `layout`.
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Also returns the activations of `nodes`.
    pub fn with_capture(mut self, nodes: &[NodeId]) -> Self {
        self.capture.extend_from_slice(nodes);
        self
    }

    /// Records the tape for a following backward pass.
    pub fn recording(mut self) -> Self {
        self.record = true;
        self
    }
}

/// The result of [`Network::run`](crate::Network::run).
#[derive(Clone, Debug, Default)]
pub struct ForwardOutput {
    /// The graph outputs, in the graph's order (NCHW or `[N, F]`).
    pub outputs: Vec<Tensor>,
    /// The captured activations.
    pub captured: HashMap<NodeId, Tensor>,
}

/// What a backward pass computes besides the gradients of the trainable parameters.
#[derive(Clone, Debug)]
pub struct BackwardOptions {
    /// Nodes whose activation gradients (d loss / d activation) are returned. An input node
    /// gives the gradient with respect to the network input.
    pub activations: Vec<NodeId>,
    /// Whether to compute the gradients of the trainable, unfrozen parameters. Default true.
    pub param_grads: bool,
}

impl Default for BackwardOptions {
    fn default() -> Self {
        BackwardOptions {
            activations: Vec::new(),
            param_grads: true,
        }
    }
}

impl BackwardOptions {
    /// Parameter gradients only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also returns the gradients of the activations of `nodes`.
    pub fn with_activations(mut self, nodes: &[NodeId]) -> Self {
        self.activations.extend_from_slice(nodes);
        self
    }

    /// Skips parameter gradients (e.g. for sensitivity analysis).
    pub fn without_param_grads(mut self) -> Self {
        self.param_grads = false;
        self
    }
}

/// Gradients from a backward pass, in PyTorch layout.
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    /// Gradient of every trainable, unfrozen parameter reached by the backward pass, keyed by
    /// the parameter's name.
    pub params: Weights,
    /// Gradients of the requested activations (NCHW or `[N, F]`).
    pub activations: HashMap<NodeId, Tensor>,
}
