//! The executor: runs a [`Graph`] with its parameters, records the tape, runs backward and
//! applies optimizer steps with hooks.

use std::collections::HashMap;
use std::sync::Arc;

use shears_ir::{Graph, NodeId, Op, ParamKind, Tensor, Weights};

use crate::backend::{Backend, CpuBackend};
use crate::error::{EngineError, Result};
use crate::kernels::bn::{BnBackward, BnDx};
use crate::kernels::conv::{self, ChainIo, ConvGeom, PackedConv};
use crate::kernels::elementwise::ShortcutGeom;
use crate::kernels::pool::PoolGeom;
use crate::optim::Optimizer;
use crate::params::ParamStore;
use crate::pool::BufferPool;

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

/// A value during a forward pass: a buffer of the pass, or a caller's channels-last feed read
/// where it lies.
enum Val<'a> {
    Own(Vec<f32>),
    Ref(&'a [f32]),
}

impl Val<'_> {
    fn as_slice(&self) -> &[f32] {
        match self {
            Val::Own(b) => b,
            Val::Ref(r) => r,
        }
    }
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
    /// [`Network::per_sample_shape`]).
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
    /// Whether to keep what [`Network::backward`] needs (the tape). Default false.
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

/// The result of [`Network::run`].
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

/// Identifies a registered hook, for [`Network::remove_hook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HookId(u64);

/// A hook over the whole parameter and gradient set, run by [`Network::step`].
pub trait StepHook: Send {
    /// Runs after backward and before the optimizer; may change gradients and parameters.
    fn before_step(&mut self, params: &mut ParamStore, grads: &mut Gradients) {
        let _ = (params, grads);
    }

    /// Runs right after the optimizer has updated the network's parameters, before any
    /// `after_step`: lets a hook update parameters it owns outside the graph (e.g. a filter
    /// skeleton multiplied into a kernel) with the same optimizer, learning rate and settings,
    /// under names of its own (they must not collide with the network's parameter names).
    fn update_own(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        let _ = opt;
        Ok(())
    }

    /// Runs after the optimizer has updated the parameters (e.g. to re-apply masks).
    fn after_step(&mut self, params: &mut ParamStore) {
        let _ = params;
    }
}

/// The signature of a per-parameter gradient hook: `(name, grad, param)`.
pub type GradHookFn = dyn FnMut(&str, &mut [f32], &mut [f32]) + Send;

enum Hook {
    Grad(Box<GradHookFn>),
    Step(Box<dyn StepHook>),
}

/// The state of the dropout random stream, for checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// The seed set with [`Network::set_seed`].
    pub seed: u64,
    /// Training forward passes run since the seed was set.
    pub counter: u64,
}

/// Per-node geometry, computed once from the graph.
#[derive(Clone, Debug)]
enum Geo {
    Plain,
    Conv(ConvGeom),
    Pool(PoolGeom),
    Shortcut(ShortcutGeom),
}

struct PackCache {
    version: u64,
    packed: PackedConv,
}

struct FusedCache {
    versions: [u64; 6],
    packed: PackedConv,
    bias: Vec<f32>,
}

/// One unit of execution: a node, or a fused chain of nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Op(NodeId),
    /// Batch norm followed by its only consumer, a ReLU; the BN output is never stored.
    BnRelu {
        bn: NodeId,
        relu: NodeId,
    },
    /// Add followed by its only consumer, a ReLU; the sum is never stored.
    AddRelu {
        add: NodeId,
        relu: NodeId,
    },
    /// Batch norm whose only consumer is a two-input add (with `other`), whose only consumer
    /// is a ReLU: the end of a residual block, one pass; neither the BN output nor the sum is
    /// stored.
    BnAddRelu {
        bn: NodeId,
        add: NodeId,
        relu: NodeId,
        other: NodeId,
    },
    /// Inference only: conv whose only consumer is a BN (whose only consumer may be a ReLU),
    /// run as one conv with folded weights. With `add = Some((add, other))` the BN's only
    /// consumer is a two-input add of `other` (a value computed earlier) whose only consumer
    /// is the ReLU `relu`: the end of a residual block, the sum in the conv's epilogue.
    ConvBn {
        conv: NodeId,
        bn: NodeId,
        relu: Option<NodeId>,
        add: Option<(NodeId, NodeId)>,
    },
    /// Inference only: conv + BN + ReLU whose only consumer is a conv + BN (+ ReLU), both
    /// transposed (`conv::chainable`): the middle map never leaves the kernels' channel-major
    /// layout. With `res`, the second BN's only consumer is an add of the chain's own input
    /// whose only consumer is a ReLU (a residual block with an identity shortcut, `(add,
    /// relu)`): the sum is part of the step. `io` says whether the input and output are kept
    /// as padded channel-major planes between two such blocks (`conv::ChainIo`).
    ConvChain {
        conv: NodeId,
        bn: NodeId,
        relu: NodeId,
        conv2: NodeId,
        bn2: NodeId,
        relu2: Option<NodeId>,
        res: Option<(NodeId, NodeId)>,
        io: ChainIo,
    },
}

impl Step {
    /// The node whose inputs are the step's inputs.
    fn first(&self) -> NodeId {
        match *self {
            Step::Op(id) => id,
            Step::BnRelu { bn, .. } | Step::BnAddRelu { bn, .. } => bn,
            Step::AddRelu { add, .. } => add,
            Step::ConvBn { conv, .. } | Step::ConvChain { conv, .. } => conv,
        }
    }

    /// The nodes fused away inside the step (never materialised).
    fn absorbed(&self) -> Vec<NodeId> {
        match *self {
            Step::BnRelu { bn, .. } => vec![bn],
            Step::AddRelu { add, .. } => vec![add],
            Step::BnAddRelu { bn, add, .. } => vec![bn, add],
            Step::ConvBn {
                conv,
                bn,
                relu,
                add,
            } => match (relu, add) {
                (_, Some((add, _))) => vec![conv, bn, add],
                (Some(_), None) => vec![conv, bn],
                (None, None) => vec![conv],
            },
            Step::ConvChain {
                conv,
                bn,
                relu,
                conv2,
                bn2,
                relu2,
                res,
                ..
            } => {
                let mut v = vec![conv, bn, relu, conv2];
                if relu2.is_some() || res.is_some() {
                    v.push(bn2);
                }
                v.extend(res.map(|(add, _)| add));
                v
            }
            Step::Op(_) => Vec::new(),
        }
    }

    /// The values the step reads.
    fn inputs(&self, g: &Graph) -> Vec<NodeId> {
        match *self {
            Step::BnAddRelu { bn, other, .. } => vec![g.node(bn).inputs[0], other],
            Step::ConvBn {
                conv,
                add: Some((_, other)),
                ..
            } => vec![g.node(conv).inputs[0], other],
            _ => g.node(self.first()).inputs.clone(),
        }
    }

    /// The node whose value the step produces.
    fn out(&self) -> NodeId {
        match *self {
            Step::Op(id) => id,
            Step::BnRelu { relu, .. }
            | Step::AddRelu { relu, .. }
            | Step::BnAddRelu { relu, .. } => relu,
            Step::ConvBn { bn, relu, .. } => relu.unwrap_or(bn),
            Step::ConvChain {
                bn2, relu2, res, ..
            } => res.map_or(relu2.unwrap_or(bn2), |(_, r)| r),
        }
    }
}

/// The planner's "the only consumer of this value, if it satisfies this predicate".
type OnlyConsumer<'a> = &'a dyn Fn(NodeId, &dyn Fn(&Op) -> bool) -> Option<NodeId>;

/// What a pass's steps are planned from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PlanKey {
    needed: Vec<bool>,
    fed: Vec<bool>,
    keep_out: Vec<bool>,
    mode: Mode,
    record: bool,
    chain_convs: bool,
    fuse_residuals: bool,
}

#[derive(Clone, Debug, Default)]
struct BnSaved {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

#[derive(Debug, Default)]
enum Saved {
    #[default]
    None,
    Bn(BnSaved),
    Argmax(Vec<u32>),
    Dropout(u64),
}

/// What a recorded forward pass keeps for backward.
struct Tape {
    n: usize,
    mode: Mode,
    steps: Vec<Step>,
    vals: Vec<Option<Vec<f32>>>,
    saved: Vec<Saved>,
    computed: Vec<bool>,
    absorbed: Vec<bool>,
    fed: Vec<bool>,
    release_after: Vec<Vec<NodeId>>,
    grad_slots: Vec<bool>,
}

/// Batch-norm running statistics to apply after a training forward: `(node, mean, unbiased var)`.
type BnUpdate = (NodeId, Vec<f32>, Vec<f32>);

/// A graph with its parameters, ready to run forward and backward.
///
/// See the crate documentation for layout, threading, the tape, hooks and fusion.
pub struct Network {
    graph: Graph,
    consumers: Vec<Vec<NodeId>>,
    geo: Vec<Geo>,
    /// Per node `(c, s)`: channels (first per-sample axis) and the product of the others.
    cs: Vec<(usize, usize)>,
    params: ParamStore,
    packs: Vec<Option<PackCache>>,
    fused: Vec<Option<FusedCache>>,
    backend: Arc<dyn Backend>,
    pool: BufferPool,
    threads: Option<Arc<rayon::ThreadPool>>,
    rng: RngState,
    hooks: Vec<(HookId, Hook)>,
    next_hook: u64,
    tape: Option<Tape>,
    profile: Option<Profile>,
    /// Profile entries per step (named by node) rather than per step type.
    profile_steps: bool,
    /// Run chainable transposed conv pairs as one step (inference; on by default).
    chain_convs: bool,
    /// Add residual sums inside conv steps (inference; on by default).
    fuse_residuals: bool,
    /// Per conv of a residual block's pair: the geometry it runs with when the pair runs as
    /// one chain with its shortcut (`conv::residual_pair`; inference only).
    chain_geo: Vec<Option<ConvGeom>>,
    /// The last pass's steps and what they were planned for (a repeated request, such as
    /// every batch of an evaluation, is not planned again).
    plan_cache: Option<(PlanKey, Vec<Step>)>,
}

/// Time spent per op type and direction, collected when profiling is on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// `(label, seconds, calls)` per label such as `"forward conv2d"`, in first-seen order.
    pub entries: Vec<(String, f64, usize)>,
}

impl Profile {
    fn add(&mut self, label: String, secs: f64) {
        match self.entries.iter_mut().find(|e| e.0 == label) {
            Some(e) => {
                e.1 += secs;
                e.2 += 1;
            }
            None => self.entries.push((label, secs, 1)),
        }
    }
}

fn step_label(g: &Graph, s: Step) -> &'static str {
    match s {
        Step::Op(id) => g.node(id).op.type_name(),
        Step::BnRelu { .. } => "batch_norm2d+relu",
        Step::AddRelu { .. } => "add+relu",
        Step::BnAddRelu { .. } => "batch_norm2d+add+relu",
        Step::ConvBn { add: Some(_), .. } => "conv2d+bn+add+relu",
        Step::ConvBn { relu: Some(_), .. } => "conv2d+bn+relu",
        Step::ConvBn { relu: None, .. } => "conv2d+bn",
        Step::ConvChain {
            res: Some(_), io, ..
        } => match (io.x_planes, io.y_planes) {
            (false, false) => "conv2d+bn+relu+conv2d+bn+add+relu",
            (true, false) => "planes>conv2d+bn+relu+conv2d+bn+add+relu",
            (false, true) => "conv2d+bn+relu+conv2d+bn+add+relu>planes",
            (true, true) => "planes>conv2d+bn+relu+conv2d+bn+add+relu>planes",
        },
        Step::ConvChain { relu2: Some(_), .. } => "conv2d+bn+relu+conv2d+bn+relu",
        Step::ConvChain { relu2: None, .. } => "conv2d+bn+relu+conv2d+bn",
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("nodes", &self.graph.len())
            .field("params", &self.params.len())
            .field("backend", &self.backend.name())
            .field("hooks", &self.hooks.len())
            .field("recorded", &self.tape.is_some())
            .finish()
    }
}

/// The inference geometries of residual blocks' conv pairs (conv, BN, ReLU, conv, BN, add of
/// the first conv's input, ReLU; each feeding only the next) that can run as one chain.
fn residual_pair_geos(
    graph: &Graph,
    consumers: &[Vec<NodeId>],
    geo: &[Geo],
) -> Vec<Option<ConvGeom>> {
    let mut out: Vec<Option<ConvGeom>> = vec![None; graph.len()];
    let only = |id: NodeId, pred: &dyn Fn(&Op) -> bool| match consumers[id.0].as_slice() {
        [c] if pred(&graph.node(*c).op) => Some(*c),
        _ => None,
    };
    let is = |want: fn(&Op) -> bool| move |op: &Op| want(op);
    for c1 in graph.ids() {
        let pair = (|| {
            let bn1 = only(c1, &is(|op| matches!(op, Op::BatchNorm2d(_))))?;
            let r1 = only(bn1, &is(|op| matches!(op, Op::Relu)))?;
            let c2 = only(r1, &is(|op| matches!(op, Op::Conv2d(_))))?;
            let bn2 = only(c2, &is(|op| matches!(op, Op::BatchNorm2d(_))))?;
            let add = only(bn2, &is(|op| matches!(op, Op::Add)))?;
            only(add, &is(|op| matches!(op, Op::Relu)))?;
            let x = graph.node(c1).inputs[0];
            let ins = &graph.node(add).inputs;
            (ins.len() == 2 && ins.contains(&x) && ins.contains(&bn2)).then_some(c2)
        })();
        let Some(c2) = pair else { continue };
        if let (Geo::Conv(g1), Geo::Conv(g2)) = (&geo[c1.0], &geo[c2.0]) {
            if let Some((t1, t2)) = conv::residual_pair(g1, g2) {
                out[c1.0] = Some(t1);
                out[c2.0] = Some(t2);
            }
        }
    }
    out
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Network {
    /// Builds a network on the CPU backend. `weights` must hold exactly the tensors of
    /// `graph.param_specs()` with their shapes; errors name the tensor at fault.
    pub fn new(graph: Graph, weights: &Weights) -> Result<Self> {
        Self::with_backend(graph, weights, Arc::new(CpuBackend))
    }

    /// Builds a network on the given backend.
    pub fn with_backend(
        graph: Graph,
        weights: &Weights,
        backend: Arc<dyn Backend>,
    ) -> Result<Self> {
        let params = ParamStore::new(&graph, weights)?;
        let consumers = graph.consumers();
        let mut geo = Vec::with_capacity(graph.len());
        let mut cs = Vec::with_capacity(graph.len());
        for id in graph.ids() {
            let shape = graph.shape(id);
            cs.push((shape[0], shape[1..].iter().product::<usize>()));
            let node = graph.node(id);
            let in_shape = graph.input_shapes(id).first().map(|s| s.to_vec());
            let chw = || {
                let s = in_shape
                    .as_ref()
                    .expect("op with spatial geometry has an input");
                (s[0], s[1], s[2])
            };
            geo.push(match &node.op {
                Op::Conv2d(c) => {
                    let (_, h, w) = chw();
                    Geo::Conv(ConvGeom::new(c, h, w).expect("conv shape validated by the graph"))
                }
                Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                    let (c, h, w) = chw();
                    Geo::Pool(PoolGeom::new(p, c, h, w).expect("pool shape validated by the graph"))
                }
                Op::ShortcutA(s) => {
                    let (c, h, w) = chw();
                    Geo::Shortcut(ShortcutGeom {
                        c,
                        h,
                        w,
                        stride: s.stride,
                        pad_before: s.pad_before,
                        pad_after: s.pad_after,
                    })
                }
                _ => Geo::Plain,
            });
        }
        let nn = graph.len();
        let chain_geo = residual_pair_geos(&graph, &consumers, &geo);
        Ok(Network {
            graph,
            consumers,
            geo,
            chain_geo,
            cs,
            params,
            packs: (0..nn).map(|_| None).collect(),
            fused: (0..nn).map(|_| None).collect(),
            backend,
            pool: BufferPool::default(),
            threads: None,
            chain_convs: true,
            fuse_residuals: true,
            plan_cache: None,
            rng: RngState {
                seed: 0,
                counter: 0,
            },
            hooks: Vec::new(),
            next_hook: 0,
            tape: None,
            profile: None,
            profile_steps: false,
        })
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The parameters and buffers.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// Mutable access to the parameters and buffers (changes invalidate the weight caches).
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    /// All parameters and buffers in PyTorch layout (bit-exact copies).
    pub fn weights(&self) -> Weights {
        self.params.to_weights()
    }

    /// Replaces the tensors present in `weights` (any subset of the network's names); every
    /// name must be known and every shape right, else nothing is changed.
    pub fn set_weights(&mut self, weights: &Weights) -> Result<()> {
        let mut unknown = Vec::new();
        for (name, t) in weights.iter() {
            match self.params.get(name) {
                None => unknown.push(name.clone()),
                Some(cur) if cur.shape() != t.shape() => {
                    return Err(EngineError::WeightShape {
                        name: name.clone(),
                        expected: cur.shape().to_vec(),
                        found: t.shape().to_vec(),
                    })
                }
                Some(_) => {}
            }
        }
        if !unknown.is_empty() {
            return Err(EngineError::UnexpectedWeights { names: unknown });
        }
        for (name, t) in weights.iter() {
            let i = self.params.index_of(name).expect("checked above");
            self.params.slot_mut(i).data_mut().copy_from_slice(t.data());
        }
        Ok(())
    }

    /// Freezes the named parameters: optimizers never update them and backward computes no
    /// gradient for them (input gradients still flow through their layers).
    pub fn freeze<'s>(&mut self, names: impl IntoIterator<Item = &'s str>) -> Result<()> {
        self.set_frozen(names, true)
    }

    /// Unfreezes the named parameters.
    pub fn unfreeze<'s>(&mut self, names: impl IntoIterator<Item = &'s str>) -> Result<()> {
        self.set_frozen(names, false)
    }

    /// Freezes every parameter of `node`.
    pub fn freeze_node(&mut self, node: NodeId) -> Result<()> {
        self.check_node(node)?;
        for kind in [ParamKind::Weight, ParamKind::Bias] {
            if let Some(i) = self.params.slot_of(node, kind) {
                self.params.set_frozen(i, true);
            }
        }
        Ok(())
    }

    /// Freezes every parameter of every node that the given nodes depend on, the nodes
    /// themselves included (e.g. a whole feature extractor).
    pub fn freeze_upstream_of(&mut self, nodes: &[NodeId]) -> Result<()> {
        let mut mark = vec![false; self.graph.len()];
        for &n in nodes {
            self.check_node(n)?;
            mark[n.0] = true;
        }
        for i in (0..self.graph.len()).rev() {
            if mark[i] {
                for inp in &self.graph.nodes()[i].inputs {
                    mark[inp.0] = true;
                }
            }
        }
        for (i, m) in mark.iter().enumerate() {
            if *m {
                self.freeze_node(NodeId(i))?;
            }
        }
        Ok(())
    }

    /// Names of the frozen parameters.
    pub fn frozen(&self) -> Vec<String> {
        self.params
            .slots()
            .iter()
            .filter(|s| s.frozen)
            .map(|s| s.name.clone())
            .collect()
    }

    fn set_frozen<'s>(
        &mut self,
        names: impl IntoIterator<Item = &'s str>,
        frozen: bool,
    ) -> Result<()> {
        let mut idx = Vec::new();
        for name in names {
            idx.push(
                self.params
                    .index_of(name)
                    .ok_or_else(|| EngineError::UnknownParam(name.to_string()))?,
            );
        }
        for i in idx {
            self.params.set_frozen(i, frozen);
        }
        Ok(())
    }

    /// Seeds the dropout random stream (and resets its counter).
    pub fn set_seed(&mut self, seed: u64) {
        self.rng = RngState { seed, counter: 0 };
    }

    /// The dropout random stream's state, for checkpoints.
    pub fn rng_state(&self) -> RngState {
        self.rng
    }

    /// Restores the dropout random stream's state.
    pub fn set_rng_state(&mut self, state: RngState) {
        self.rng = state;
    }

    /// Runs the kernels on a private pool of `threads` threads, or on rayon's global pool
    /// (which honours `RAYON_NUM_THREADS`) with `None`.
    pub fn set_threads(&mut self, threads: Option<usize>) -> Result<()> {
        self.threads = match threads {
            None => None,
            Some(0) => return Err(EngineError::Config("thread count must be positive".into())),
            Some(t) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .map_err(|e| EngineError::Config(format!("thread pool: {e}")))?,
            )),
        };
        Ok(())
    }

    /// The number of threads the kernels run on.
    pub fn num_threads(&self) -> usize {
        self.threads
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    /// Turns the chaining of transposed conv pairs in inference on (the default) or off. Both
    /// give the same sums; off is for measuring what chaining saves and testing it.
    pub fn set_conv_chains(&mut self, on: bool) {
        self.chain_convs = on;
    }

    /// Turns on (the default) or off the residual sums inside conv steps in inference: a
    /// conv + BN whose result is added to an earlier value and rectified runs as one step,
    /// and chained residual blocks hand their maps over as channel-major planes. Both give the same
    /// sums; off is for measuring what the fusion saves and testing it.
    pub fn set_residual_fusion(&mut self, on: bool) {
        self.fuse_residuals = on;
    }

    /// Turns per-op timing on (resetting it) or off.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(Profile::default);
        self.profile_steps = false;
    }

    /// Turns per-step timing on (resetting it) or off: like [`Network::set_profiling`], but
    /// every forward step is its own entry, labelled with its type and its first node's name.
    pub fn set_profiling_per_step(&mut self, on: bool) {
        self.profile = on.then(Profile::default);
        self.profile_steps = on;
    }

    /// The timings collected since profiling was turned on.
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }

    /// Drops cached buffers and weight caches, returning their memory.
    pub fn release_memory(&mut self) {
        self.tape = None;
        self.pool = BufferPool::default();
        self.packs.iter_mut().for_each(|p| *p = None);
        self.fused.iter_mut().for_each(|p| *p = None);
    }

    /// Registers a per-parameter hook `f(name, grad, param)`, run by [`Network::step`] for
    /// every trainable parameter with a gradient, before the optimizer. It may change both
    /// the gradient and the parameter.
    pub fn add_grad_hook(
        &mut self,
        f: impl FnMut(&str, &mut [f32], &mut [f32]) + Send + 'static,
    ) -> HookId {
        self.push_hook(Hook::Grad(Box::new(f)))
    }

    /// Registers a hook over the whole parameter and gradient set.
    pub fn add_step_hook(&mut self, hook: impl StepHook + 'static) -> HookId {
        self.push_hook(Hook::Step(Box::new(hook)))
    }

    /// Removes a hook; returns whether it was registered.
    pub fn remove_hook(&mut self, id: HookId) -> bool {
        let before = self.hooks.len();
        self.hooks.retain(|(h, _)| *h != id);
        self.hooks.len() != before
    }

    fn push_hook(&mut self, hook: Hook) -> HookId {
        let id = HookId(self.next_hook);
        self.next_hook += 1;
        self.hooks.push((id, hook));
        id
    }

    /// Runs the hooks (in registration order), then `opt` on every trainable, unfrozen
    /// parameter that has a gradient in `grads`, then the hooks' `update_own` (parameters
    /// they keep outside the graph), then their `after_step`. BN running statistics are never
    /// touched.
    pub fn step(&mut self, opt: &mut dyn Optimizer, grads: &mut Gradients) -> Result<()> {
        for (name, g) in grads.params.iter() {
            let i = self
                .params
                .index_of(name)
                .ok_or_else(|| EngineError::UnknownParam(name.clone()))?;
            let p = &self.params.slots()[i].tensor;
            if p.shape() != g.shape() {
                return Err(EngineError::ShapeMismatch {
                    what: format!("gradient of {name}"),
                    expected: p.shape().to_vec(),
                    found: g.shape().to_vec(),
                });
            }
        }
        for (_, hook) in &mut self.hooks {
            match hook {
                Hook::Grad(f) => {
                    for (name, g) in grads.params.iter_mut() {
                        if !self.params.is_trainable(name) {
                            continue;
                        }
                        let i = self.params.index_of(name).expect("checked above");
                        f(name, g.data_mut(), self.params.slot_mut(i).data_mut());
                    }
                }
                Hook::Step(h) => h.before_step(&mut self.params, grads),
            }
        }
        opt.begin_step();
        for (name, g) in grads.params.iter() {
            if !self.params.is_trainable(name) {
                continue;
            }
            let i = self
                .params
                .index_of(name)
                .ok_or_else(|| EngineError::UnknownParam(name.clone()))?;
            if g.shape() != self.params.slots()[i].tensor.shape() {
                return Err(EngineError::ShapeMismatch {
                    what: format!("gradient of {name}"),
                    expected: self.params.slots()[i].tensor.shape().to_vec(),
                    found: g.shape().to_vec(),
                });
            }
            opt.update(name, self.params.slot_mut(i).data_mut(), g.data())?;
        }
        for (_, hook) in &mut self.hooks {
            if let Hook::Step(h) = hook {
                h.update_own(opt)?;
            }
        }
        for (_, hook) in &mut self.hooks {
            if let Hook::Step(h) = hook {
                h.after_step(&mut self.params);
            }
        }
        Ok(())
    }

    fn check_node(&self, id: NodeId) -> Result<()> {
        if id.0 < self.graph.len() {
            Ok(())
        } else {
            Err(EngineError::UnknownNode(id))
        }
    }

    fn first_input(&self) -> Result<NodeId> {
        self.graph
            .inputs()
            .first()
            .copied()
            .ok_or_else(|| EngineError::Config("graph has no input".into()))
    }

    /// Runs the graph on `x` (an NCHW batch for the first input node) and returns the first
    /// output. No tape is recorded.
    pub fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let input = self.first_input()?;
        let out = self.run(&ForwardRequest::new(mode).with_feed(input, x))?;
        Ok(out
            .outputs
            .into_iter()
            .next()
            .expect("a graph has at least one output"))
    }

    /// Runs the graph on `x` and also returns the activations of `capture`.
    pub fn forward_capture(
        &mut self,
        x: &Tensor,
        mode: Mode,
        capture: &[NodeId],
    ) -> Result<(Vec<Tensor>, HashMap<NodeId, Tensor>)> {
        let input = self.first_input()?;
        let out = self.run(
            &ForwardRequest::new(mode)
                .with_feed(input, x)
                .with_capture(capture),
        )?;
        Ok((out.outputs, out.captured))
    }

    /// A training-mode forward that records the tape; returns the first output.
    pub fn forward_train(&mut self, x: &Tensor) -> Result<Tensor> {
        self.forward_recorded(x, Mode::Train)
    }

    /// A forward in `mode` that records the tape (e.g. `Mode::Eval` for sensitivity analysis);
    /// returns the first output.
    pub fn forward_recorded(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let input = self.first_input()?;
        let out = self.run(&ForwardRequest::new(mode).with_feed(input, x).recording())?;
        Ok(out
            .outputs
            .into_iter()
            .next()
            .expect("a graph has at least one output"))
    }

    /// Runs a forward pass as described by `req`. A tape left by an earlier recording pass
    /// that was never backpropagated is dropped first.
    pub fn run(&mut self, req: &ForwardRequest<'_>) -> Result<ForwardOutput> {
        let threads = self.threads.clone();
        match threads {
            Some(p) => p.install(|| self.run_inner(req)),
            None => self.run_inner(req),
        }
    }

    /// Backpropagates `grad_output` (the gradient of the loss with respect to the first graph
    /// output, NCHW) through the recorded forward pass. Consumes the tape.
    pub fn backward(&mut self, grad_output: &Tensor, opts: &BackwardOptions) -> Result<Gradients> {
        let out = self.graph.outputs()[0];
        self.backward_from(&[(out, grad_output)], opts)
    }

    /// Backpropagates gradients seeded at any nodes of the recorded forward pass that were
    /// outputs or captured (several seeds, or seeds at inner nodes, when the loss is computed
    /// outside). Seeds at the same node add up. Consumes the tape.
    pub fn backward_from(
        &mut self,
        seeds: &[(NodeId, &Tensor)],
        opts: &BackwardOptions,
    ) -> Result<Gradients> {
        let tape = self.tape.take().ok_or(EngineError::NoTape)?;
        if let Err(e) = self.check_backward(&tape, seeds, opts) {
            self.tape = Some(tape);
            return Err(e);
        }
        let threads = self.threads.clone();
        match threads {
            Some(p) => p.install(|| self.backward_inner(tape, seeds, opts)),
            None => self.backward_inner(tape, seeds, opts),
        }
    }

    /// Whether a recorded forward pass is waiting for backward.
    pub fn has_tape(&self) -> bool {
        self.tape.is_some()
    }

    /// Drops the recorded tape, returning its buffers to the workspace.
    pub fn discard_tape(&mut self) {
        if let Some(t) = self.tape.take() {
            self.recycle(t.vals);
        }
    }

    fn recycle(&mut self, vals: Vec<Option<Vec<f32>>>) {
        for v in vals.into_iter().flatten() {
            self.pool.give(v);
        }
    }

    fn batch_shape(&self, n: usize, id: NodeId) -> Vec<usize> {
        let mut s = vec![n];
        s.extend_from_slice(self.graph.shape(id));
        s
    }

    /// The per-sample shape of node `id`'s tensors in `layout`: the graph's shape for channels
    /// first; the channel axis moved last for channels last.
    pub fn per_sample_shape(&self, id: NodeId, layout: Layout) -> Vec<usize> {
        let shape = self.graph.shape(id);
        match layout {
            Layout::ChannelsFirst => shape.to_vec(),
            Layout::ChannelsLast => {
                let mut v = shape.get(1..).unwrap_or(&[]).to_vec();
                v.extend(shape.first().copied());
                v
            }
        }
    }

    /// Node `id`'s channels-last buffer as a tensor in `layout`.
    fn to_tensor_in(&self, n: usize, id: NodeId, buf: &[f32], layout: Layout) -> Tensor {
        match layout {
            Layout::ChannelsFirst => self.to_tensor(n, id, buf),
            Layout::ChannelsLast => {
                let mut shape = vec![n];
                shape.extend(self.per_sample_shape(id, layout));
                Tensor::new(shape, buf.to_vec()).expect("shape and length agree by construction")
            }
        }
    }

    fn numel(&self, n: usize, id: NodeId) -> usize {
        let (c, s) = self.cs[id.0];
        n * c * s
    }

    /// Converts a channels-last buffer of node `id` to a PyTorch-layout tensor.
    fn to_tensor(&self, n: usize, id: NodeId, buf: &[f32]) -> Tensor {
        let (c, s) = self.cs[id.0];
        let mut data = vec![0.0; n * c * s];
        self.backend
            .to_channels_first(n, s, c, buf, &mut data, false);
        Tensor::new(self.batch_shape(n, id), data).expect("shape and length agree by construction")
    }

    fn ensure_pack(&mut self, id: NodeId) {
        let ver = self.params.version(id, ParamKind::Weight);
        if matches!(&self.packs[id.0], Some(p) if p.version == ver) {
            return;
        }
        let Geo::Conv(g) = &self.geo[id.0] else {
            panic!("ensure_pack on a non-conv node")
        };
        let w = self
            .params
            .data(id, ParamKind::Weight)
            .expect("conv nodes have a weight");
        self.packs[id.0] = Some(PackCache {
            version: ver,
            packed: self.backend.pack_conv(g, w),
        });
    }

    fn ensure_fused(&mut self, conv: NodeId, bn: NodeId) {
        let p = &self.params;
        let versions = [
            p.version(conv, ParamKind::Weight),
            p.version(conv, ParamKind::Bias),
            p.version(bn, ParamKind::Weight),
            p.version(bn, ParamKind::Bias),
            p.version(bn, ParamKind::RunningMean),
            p.version(bn, ParamKind::RunningVar),
        ];
        if matches!(&self.fused[conv.0], Some(f) if f.versions == versions) {
            return;
        }
        let Geo::Conv(g) = &self.geo[conv.0] else {
            panic!("ensure_fused on a non-conv node")
        };
        let Op::BatchNorm2d(b) = &self.graph.node(bn).op else {
            panic!("ensure_fused on a non-BN node")
        };
        let w = p.data(conv, ParamKind::Weight).expect("conv has a weight");
        let cb = p.data(conv, ParamKind::Bias);
        let gamma = p.data(bn, ParamKind::Weight).expect("bn has a weight");
        let beta = p.data(bn, ParamKind::Bias).expect("bn has a bias");
        let rm = p
            .data(bn, ParamKind::RunningMean)
            .expect("bn has a running mean");
        let rv = p
            .data(bn, ParamKind::RunningVar)
            .expect("bn has a running var");
        let per = w.len() / g.c_out;
        let mut wf = vec![0.0f32; w.len()];
        let mut bias = vec![0.0f32; g.c_out];
        for o in 0..g.c_out {
            let s = gamma[o] as f64 / (rv[o] as f64 + b.eps as f64).sqrt();
            for (d, v) in wf[o * per..(o + 1) * per]
                .iter_mut()
                .zip(&w[o * per..(o + 1) * per])
            {
                *d = (*v as f64 * s) as f32;
            }
            let b0 = cb.map_or(0.0, |cb| cb[o] as f64);
            bias[o] = ((b0 - rm[o] as f64) * s + beta[o] as f64) as f32;
        }
        let packed = self.backend.pack_conv(g, &wf);
        self.fused[conv.0] = Some(FusedCache {
            versions,
            packed,
            bias,
        });
    }

    /// Splits the needed nodes into steps, fusing where allowed. Steps stay in an order where
    /// every value is produced before it is read.
    fn plan(
        &self,
        needed: &[bool],
        fed: &[bool],
        keep_out: &[bool],
        mode: Mode,
        record: bool,
    ) -> Vec<Step> {
        let g = &self.graph;
        let nn = g.len();
        let mut absorbed = vec![false; nn];
        // Values that an earlier step computes.
        let mut produced = vec![false; nn];
        let mut steps: Vec<Step> = Vec::new();
        // Fused residual-block ends waiting for their other addend: (addend, step).
        let mut pending: Vec<(NodeId, Step)> = Vec::new();
        let only_consumer =
            |id: NodeId, absorbed: &[bool], pred: &dyn Fn(&Op) -> bool| -> Option<NodeId> {
                match self.consumers[id.0].as_slice() {
                    [c] if needed[c.0]
                        && !fed[c.0]
                        && !absorbed[c.0]
                        && !keep_out[id.0]
                        && pred(&g.node(*c).op) =>
                    {
                        Some(*c)
                    }
                    _ => None,
                }
            };
        let is_bn = |op: &Op| matches!(op, Op::BatchNorm2d(_));
        let is_conv = |op: &Op| matches!(op, Op::Conv2d(_));
        let is_relu = |op: &Op| matches!(op, Op::Relu);
        let is_add = |op: &Op| matches!(op, Op::Add);
        for i in 0..nn {
            let id = NodeId(i);
            if !needed[i] || fed[i] || absorbed[i] {
                continue;
            }
            let step = match &g.node(id).op {
                Op::Conv2d(_) if mode == Mode::Eval && !record => {
                    match only_consumer(id, &absorbed, &is_bn) {
                        Some(bn) => {
                            let relu = only_consumer(bn, &absorbed, &is_relu);
                            absorbed[bn.0] = true;
                            if let Some(r) = relu {
                                absorbed[r.0] = true;
                            }
                            // A transposed conv feeding only another one: chain them. A
                            // residual block's pair chains with its shortcut (in the
                            // geometries of `conv::residual_pair`), else only where both
                            // convs run transposed by themselves.
                            let chain = relu.filter(|_| self.chain_convs).and_then(|r| {
                                let c2 = only_consumer(r, &absorbed, &is_conv)?;
                                let b2 = only_consumer(c2, &absorbed, &is_bn)?;
                                let relu2 = only_consumer(b2, &absorbed, &is_relu);
                                let res = if relu2.is_none() && self.fuse_residuals {
                                    self.chain_residual(id, c2, b2, &|v, p| {
                                        only_consumer(v, &absorbed, p)
                                    })
                                } else {
                                    None
                                };
                                let own = match (&self.geo[id.0], &self.geo[c2.0]) {
                                    (Geo::Conv(g1), Geo::Conv(g2)) => conv::chainable(g1, g2),
                                    _ => false,
                                };
                                (own || res.is_some()).then_some((r, c2, b2, relu2, res))
                            });
                            match chain {
                                Some((r, c2, b2, relu2, res)) => {
                                    let fused = [c2, b2]
                                        .into_iter()
                                        .chain(relu2)
                                        .chain(res.into_iter().flat_map(|(a, r)| [a, r]));
                                    for a in fused {
                                        absorbed[a.0] = true;
                                    }
                                    Step::ConvChain {
                                        conv: id,
                                        bn,
                                        relu: r,
                                        conv2: c2,
                                        bn2: b2,
                                        relu2,
                                        res,
                                        io: ChainIo::default(),
                                    }
                                }
                                None => {
                                    let add = if relu.is_none() && self.fuse_residuals {
                                        self.conv_residual(
                                            bn,
                                            &|v| produced[v.0] || fed[v.0],
                                            &|v, p| only_consumer(v, &absorbed, p),
                                        )
                                    } else {
                                        None
                                    };
                                    let relu = match add {
                                        Some((a, _, r)) => {
                                            absorbed[a.0] = true;
                                            absorbed[r.0] = true;
                                            Some(r)
                                        }
                                        None => relu,
                                    };
                                    Step::ConvBn {
                                        conv: id,
                                        bn,
                                        relu,
                                        add: add.map(|(a, o, _)| (a, o)),
                                    }
                                }
                            }
                        }
                        None => Step::Op(id),
                    }
                }
                Op::BatchNorm2d(_) => {
                    let block_end = only_consumer(id, &absorbed, &is_add).and_then(|add| {
                        let ins = &g.node(add).inputs;
                        if ins.len() != 2 || ins.iter().filter(|j| **j == id).count() != 1 {
                            return None;
                        }
                        let other = if ins[0] == id { ins[1] } else { ins[0] };
                        only_consumer(add, &absorbed, &is_relu).map(|r| (add, r, other))
                    });
                    if let Some(r) = only_consumer(id, &absorbed, &is_relu) {
                        absorbed[r.0] = true;
                        Step::BnRelu { bn: id, relu: r }
                    } else if let Some((add, relu, other)) = block_end {
                        absorbed[add.0] = true;
                        absorbed[relu.0] = true;
                        let st = Step::BnAddRelu {
                            bn: id,
                            add,
                            relu,
                            other,
                        };
                        if other.0 > i && !fed[other.0] {
                            pending.push((other, st));
                            continue;
                        }
                        st
                    } else {
                        Step::Op(id)
                    }
                }
                Op::Add => match only_consumer(id, &absorbed, &is_relu) {
                    Some(r) => {
                        absorbed[r.0] = true;
                        Step::AddRelu { add: id, relu: r }
                    }
                    None => Step::Op(id),
                },
                _ => Step::Op(id),
            };
            steps.push(step);
            // Release the fused steps that were waiting for this value (and, in turn, theirs).
            let mut k = steps.len() - 1;
            while k < steps.len() {
                let out = steps[k].out();
                produced[out.0] = true;
                while let Some(pos) = pending.iter().position(|(t, _)| *t == out) {
                    steps.push(pending.remove(pos).1);
                }
                k += 1;
            }
        }
        assert!(
            pending.is_empty(),
            "every fused step's addend is produced by some step"
        );
        self.link_planes(&mut steps, needed, keep_out);
        steps
    }

    /// The identity-shortcut residual end of a chain of `conv` and `conv2` (`conv2`'s BN
    /// `bn2` feeding only an add of `conv`'s own input, feeding only a ReLU): `(add, relu)`.
    fn chain_residual(
        &self,
        conv: NodeId,
        conv2: NodeId,
        bn2: NodeId,
        only_consumer: OnlyConsumer<'_>,
    ) -> Option<(NodeId, NodeId)> {
        let (Some(g1), Some(g2)) = (self.chain_geom(conv), self.chain_geom(conv2)) else {
            return None;
        };
        if !conv::residual_chainable(g1, g2) {
            return None;
        }
        let add = only_consumer(bn2, &|op| matches!(op, Op::Add))?;
        let x = self.graph.node(conv).inputs[0];
        let ins = &self.graph.node(add).inputs;
        let pair = ins.len() == 2 && (ins[..] == [bn2, x] || ins[..] == [x, bn2]);
        if !pair {
            return None;
        }
        let relu = only_consumer(add, &|op| matches!(op, Op::Relu))?;
        Some((add, relu))
    }

    /// The residual end of a conv + BN (`bn` feeding only a two-input add of a value that
    /// is `ready`, the add feeding only a ReLU): `(add, other addend, relu)`.
    fn conv_residual(
        &self,
        bn: NodeId,
        ready: &dyn Fn(NodeId) -> bool,
        only_consumer: OnlyConsumer<'_>,
    ) -> Option<(NodeId, NodeId, NodeId)> {
        let add = only_consumer(bn, &|op| matches!(op, Op::Add))?;
        let ins = &self.graph.node(add).inputs;
        if ins.len() != 2 || ins[0] == ins[1] {
            return None;
        }
        let other = if ins[0] == bn { ins[1] } else { ins[0] };
        if !ready(other) || self.cs[other.0] != self.cs[bn.0] {
            return None;
        }
        let relu = only_consumer(add, &|op| matches!(op, Op::Relu))?;
        Some((add, other, relu))
    }

    /// Marks consecutive residual chains that hand their map over as padded channel-major
    /// planes: a chain's output whose every consumer is inside the next chain (its first conv
    /// and its add), on the same planes, and that nobody captures.
    fn link_planes(&self, steps: &mut [Step], needed: &[bool], keep_out: &[bool]) {
        let geo = |id: NodeId| self.chain_geom(id).expect("conv geometry");
        // The residual chain (step index) that each conv starts, if any.
        let mut chain_at: Vec<Option<usize>> = vec![None; self.graph.len()];
        for (i, s) in steps.iter().enumerate() {
            if let Step::ConvChain {
                conv, res: Some(_), ..
            } = *s
            {
                chain_at[conv.0] = Some(i);
            }
        }
        for si in 0..steps.len() {
            let Step::ConvChain {
                conv,
                conv2,
                res: Some(_),
                ..
            } = steps[si]
            else {
                continue;
            };
            let out = steps[si].out();
            if keep_out[out.0] || conv::chain_planes_len(geo(conv), geo(conv2)).is_none() {
                continue;
            }
            let users: Vec<NodeId> = self.consumers[out.0]
                .iter()
                .copied()
                .filter(|u| needed[u.0])
                .collect();
            // The next chain reads `out` with its first conv and its add, and nothing else does.
            let next = users.iter().find_map(|u| chain_at[u.0]).filter(|&ti| {
                let Step::ConvChain {
                    conv: c,
                    conv2: c2,
                    res: Some((add, _)),
                    ..
                } = steps[ti]
                else {
                    unreachable!("chain_at holds residual chains")
                };
                users.iter().all(|u| *u == c || *u == add)
                    && conv::chain_planes_len(geo(c), geo(c2)).is_some()
                    && conv::planes_link(geo(conv), geo(c))
            });
            if let Some(ti) = next {
                if let Step::ConvChain { io, .. } = &mut steps[si] {
                    io.y_planes = true;
                }
                if let Step::ConvChain { io, .. } = &mut steps[ti] {
                    io.x_planes = true;
                }
            }
        }
    }

    /// The geometry conv `id` runs with inside a chain: its residual-pair geometry where it
    /// has one, else its own.
    fn chain_geom(&self, id: NodeId) -> Option<&ConvGeom> {
        match (&self.chain_geo[id.0], &self.geo[id.0]) {
            (Some(g), _) | (None, Geo::Conv(g)) => Some(g),
            _ => None,
        }
    }

    /// Floats of step `s`'s output for `n` images: its planes when it writes planes.
    fn step_out_len(&self, n: usize, s: Step) -> usize {
        match s {
            Step::ConvChain {
                conv, conv2, io, ..
            } if io.y_planes => {
                let (Some(g1), Some(g2)) = (self.chain_geom(conv), self.chain_geom(conv2)) else {
                    unreachable!("conv geometry")
                };
                n * conv::chain_planes_len(g1, g2).expect("planes are linked only where they fit")
            }
            _ => self.numel(n, s.out()),
        }
    }

    fn run_inner(&mut self, req: &ForwardRequest<'_>) -> Result<ForwardOutput> {
        self.discard_tape();
        if req.record && !req.outputs {
            return Err(EngineError::Config(
                "a pass that records the tape must compute the graph outputs".into(),
            ));
        }
        let nn = self.graph.len();
        // Feeds.
        let mut fed = vec![false; nn];
        let mut n_batch: Option<usize> = None;
        for &(id, t) in &req.feeds {
            self.check_node(id)?;
            if fed[id.0] {
                return Err(EngineError::Config(format!(
                    "node {:?} is fed twice",
                    self.graph.node(id).name
                )));
            }
            fed[id.0] = true;
            let per = self.per_sample_shape(id, req.layout);
            let s = t.shape();
            if s.len() != per.len() + 1 || s[1..] != per[..] || s[0] == 0 {
                return Err(EngineError::BadInput {
                    node: self.graph.node(id).name.clone(),
                    expected: per,
                    found: s.to_vec(),
                });
            }
            match n_batch {
                None => n_batch = Some(s[0]),
                Some(n) if n != s[0] => {
                    return Err(EngineError::BatchMismatch {
                        what: format!("value fed to {:?}", self.graph.node(id).name),
                        expected: n,
                        found: s[0],
                    })
                }
                Some(_) => {}
            }
        }
        for &c in &req.capture {
            self.check_node(c)?;
        }
        // Needed nodes.
        let mut needed = vec![false; nn];
        let mut keep_out = vec![false; nn];
        let mut stack: Vec<NodeId> = if req.outputs {
            self.graph.outputs().to_vec()
        } else {
            Vec::new()
        };
        stack.extend_from_slice(&req.capture);
        for v in &stack {
            keep_out[v.0] = true;
        }
        while let Some(v) = stack.pop() {
            if needed[v.0] {
                continue;
            }
            needed[v.0] = true;
            if fed[v.0] {
                continue;
            }
            let node = self.graph.node(v);
            if matches!(node.op, Op::Input { .. }) {
                return Err(EngineError::MissingInput {
                    node: node.name.clone(),
                });
            }
            stack.extend_from_slice(&node.inputs);
        }
        let n = n_batch.ok_or_else(|| EngineError::MissingInput {
            node: self
                .graph
                .inputs()
                .first()
                .map_or_else(String::new, |i| self.graph.node(*i).name.clone()),
        })?;
        let mode = req.mode;
        let record = req.record;
        let key = PlanKey {
            needed,
            fed: fed.clone(),
            keep_out,
            mode,
            record,
            chain_convs: self.chain_convs,
            fuse_residuals: self.fuse_residuals,
        };
        let steps = match self.plan_cache.take() {
            Some((k, steps)) if k == key => steps,
            _ => self.plan(&key.needed, &key.fed, &key.keep_out, mode, record),
        };
        let needed = &key.needed;
        // Weight caches.
        for s in &steps {
            match *s {
                Step::Op(id) if matches!(self.graph.node(id).op, Op::Conv2d(_)) => {
                    self.ensure_pack(id)
                }
                Step::ConvBn { conv, bn, .. } => self.ensure_fused(conv, bn),
                Step::ConvChain {
                    conv,
                    bn,
                    conv2,
                    bn2,
                    ..
                } => {
                    self.ensure_fused(conv, bn);
                    self.ensure_fused(conv2, bn2);
                }
                _ => {}
            }
        }
        // What backward keeps, and when it can release it.
        let mut keep = vec![false; nn];
        let mut release_after: Vec<Vec<NodeId>> = vec![Vec::new(); steps.len()];
        if record {
            let mut first_user = vec![usize::MAX; nn];
            for (si, s) in steps.iter().enumerate() {
                let first = s.first();
                let node = self.graph.node(first);
                let inp = node.inputs.first().copied();
                let kept = match (&node.op, *s) {
                    (Op::Conv2d(_) | Op::Linear(_), _) => {
                        if self.params.wants_grad(first, ParamKind::Weight) {
                            inp
                        } else {
                            None
                        }
                    }
                    (Op::BatchNorm2d(_) | Op::Act(_), _) => inp,
                    (Op::Relu, Step::Op(id)) => Some(id),
                    (Op::Add, Step::AddRelu { relu, .. }) => Some(relu),
                    _ => None,
                };
                if let Step::BnAddRelu { relu, .. } = *s {
                    keep[relu.0] = true;
                    first_user[relu.0] = first_user[relu.0].min(si);
                }
                if let Some(v) = kept {
                    keep[v.0] = true;
                    first_user[v.0] = first_user[v.0].min(si);
                }
            }
            for (v, &si) in first_user.iter().enumerate() {
                if si != usize::MAX {
                    release_after[si].push(NodeId(v));
                }
            }
        }
        // Channels-last captures keep their buffer to the end of the pass and are handed out
        // without a copy.
        let mut hold = vec![false; nn];
        if req.layout == Layout::ChannelsLast {
            for c in &req.capture {
                if !fed[c.0] {
                    hold[c.0] = true;
                }
            }
        }
        // Remaining forward consumers of each value.
        let mut remaining = vec![0usize; nn];
        for s in &steps {
            let mut ins = s.inputs(&self.graph);
            ins.sort();
            ins.dedup();
            for i in ins {
                remaining[i.0] += 1;
            }
        }
        let dropout_base = if mode == Mode::Train {
            self.rng.counter += 1;
            mix(self.rng.seed, self.rng.counter)
        } else {
            0
        };
        let mut vals: Vec<Option<Val<'_>>> = (0..nn).map(|_| None).collect();
        let mut saved: Vec<Saved> = (0..nn).map(|_| Saved::None).collect();
        let mut out = ForwardOutput {
            outputs: Vec::with_capacity(self.graph.outputs().len()),
            captured: HashMap::new(),
        };
        let mut out_slots: Vec<Option<Tensor>> = vec![None; self.graph.outputs().len()];
        for &(id, t) in &req.feeds {
            if !needed[id.0] {
                continue;
            }
            let (c, s) = self.cs[id.0];
            // Steps only read their inputs, so a channels-last feed is read where it lies
            // (the tape of a recorded pass owns its values, so those are copied).
            vals[id.0] = Some(match (req.layout, record) {
                (Layout::ChannelsLast, false) => Val::Ref(t.data()),
                (Layout::ChannelsLast, true) => {
                    let mut buf = self.pool.take(n * c * s);
                    buf.copy_from_slice(t.data());
                    Val::Own(buf)
                }
                (Layout::ChannelsFirst, _) => {
                    let mut buf = self.pool.take(n * c * s);
                    self.backend
                        .to_channels_last(n, s, c, t.data(), &mut buf, false);
                    Val::Own(buf)
                }
            });
            if req.capture.contains(&id) {
                out.captured.insert(id, t.clone());
            }
            for (k, o) in self.graph.outputs().iter().enumerate() {
                if *o == id {
                    out_slots[k] = Some(t.clone());
                }
            }
        }
        let mut bn_updates: Vec<BnUpdate> = Vec::new();
        for s in &steps {
            let t0 = self.profile.is_some().then(std::time::Instant::now);
            let y = self.exec_step(
                *s,
                n,
                mode,
                record,
                dropout_base,
                &vals,
                &mut saved,
                &mut bn_updates,
            )?;
            if let (Some(p), Some(t0)) = (self.profile.as_mut(), t0) {
                let label = step_label(&self.graph, *s);
                let label = if self.profile_steps {
                    format!("forward {label} {}", self.graph.node(s.first()).name)
                } else {
                    format!("forward {label}")
                };
                p.add(label, t0.elapsed().as_secs_f64());
            }
            let o = s.out();
            if req.capture.contains(&o) && !hold[o.0] {
                out.captured
                    .insert(o, self.to_tensor_in(n, o, &y, req.layout));
            }
            for (k, oo) in self.graph.outputs().iter().enumerate() {
                if *oo == o && req.outputs {
                    out_slots[k] = Some(self.to_tensor_in(n, o, &y, req.layout));
                }
            }
            vals[o.0] = Some(Val::Own(y));
            let mut ins = s.inputs(&self.graph);
            ins.sort();
            ins.dedup();
            for i in ins {
                remaining[i.0] -= 1;
                if remaining[i.0] == 0 && !keep[i.0] && !hold[i.0] {
                    if let Some(Val::Own(b)) = vals[i.0].take() {
                        self.pool.give(b);
                    }
                }
            }
            if remaining[o.0] == 0 && !keep[o.0] && !hold[o.0] {
                if let Some(Val::Own(b)) = vals[o.0].take() {
                    self.pool.give(b);
                }
            }
        }
        // Running statistics change only after the pass, which never reads them in training.
        for (id, mean, var) in bn_updates {
            let Op::BatchNorm2d(b) = &self.graph.node(id).op else {
                unreachable!("bn update on a BN node")
            };
            let m = b.momentum;
            let im = self
                .params
                .slot_of(id, ParamKind::RunningMean)
                .expect("bn has a running mean");
            for (r, v) in self.params.slot_mut(im).data_mut().iter_mut().zip(&mean) {
                *r = (1.0 - m) * *r + m * *v;
            }
            let iv = self
                .params
                .slot_of(id, ParamKind::RunningVar)
                .expect("bn has a running var");
            for (r, v) in self.params.slot_mut(iv).data_mut().iter_mut().zip(&var) {
                *r = (1.0 - m) * *r + m * *v;
            }
        }
        for c in &req.capture {
            if hold[c.0] {
                let Some(Val::Own(buf)) = vals[c.0].take() else {
                    unreachable!("held captures are computed and stay to the end of the pass")
                };
                let mut shape = vec![n];
                shape.extend(self.per_sample_shape(*c, req.layout));
                let t = Tensor::new(shape, buf).expect("shape and length agree by construction");
                out.captured.insert(*c, t);
            }
        }
        out.outputs = out_slots
            .into_iter()
            .filter(|_| req.outputs)
            .map(|t| t.expect("every output is computed or fed"))
            .collect();
        if record {
            let mut computed = fed.clone();
            let mut absorbed = vec![false; nn];
            for s in &steps {
                computed[s.out().0] = true;
                for a in s.absorbed() {
                    absorbed[a.0] = true;
                }
            }
            let grad_slots = self
                .params
                .slots()
                .iter()
                .map(|s| s.kind.is_trainable() && !s.frozen)
                .collect();
            let vals = vals
                .into_iter()
                .map(|v| {
                    v.map(|v| match v {
                        Val::Own(b) => b,
                        Val::Ref(r) => r.to_vec(),
                    })
                })
                .collect();
            self.tape = Some(Tape {
                n,
                mode,
                steps,
                vals,
                saved,
                computed,
                absorbed,
                fed,
                release_after,
                grad_slots,
            });
        } else {
            self.recycle(
                vals.into_iter()
                    .map(|v| match v {
                        Some(Val::Own(b)) => Some(b),
                        _ => None,
                    })
                    .collect(),
            );
            self.plan_cache = Some((key, steps));
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn exec_step(
        &mut self,
        step: Step,
        n: usize,
        mode: Mode,
        record: bool,
        dropout_base: u64,
        vals: &[Option<Val<'_>>],
        saved: &mut [Saved],
        bn_updates: &mut Vec<BnUpdate>,
    ) -> Result<Vec<f32>> {
        let first = step.first();
        let node = self.graph.node(first);
        let val = |i: usize| -> &[f32] {
            vals[node.inputs[i].0]
                .as_ref()
                .expect("inputs are computed before their consumers")
                .as_slice()
        };
        let be = &*self.backend;
        let len = self.step_out_len(n, step);
        let mut y = self.pool.take(len);
        match step {
            Step::ConvChain {
                conv,
                conv2,
                relu2,
                res,
                io,
                ..
            } => {
                let (Some(g1), Some(g2)) = (self.chain_geom(conv), self.chain_geom(conv2)) else {
                    unreachable!("conv geometry")
                };
                let f1 = self.fused[conv.0].as_ref().expect("fused cache prepared");
                let f2 = self.fused[conv2.0].as_ref().expect("fused cache prepared");
                be.conv2d_chain_forward(
                    g1,
                    g2,
                    n,
                    val(0),
                    &f1.packed,
                    &f1.bias,
                    &f2.packed,
                    Some(&f2.bias),
                    relu2.is_some() || res.is_some(),
                    ChainIo {
                        residual: res.is_some(),
                        ..io
                    },
                    &mut y,
                );
            }
            Step::ConvBn {
                conv, relu, add, ..
            } => {
                let Geo::Conv(g) = &self.geo[conv.0] else {
                    unreachable!("conv geometry")
                };
                let f = self.fused[conv.0].as_ref().expect("fused cache prepared");
                match add {
                    Some((_, other)) => {
                        let r = vals[other.0]
                            .as_ref()
                            .expect("addend computed before the conv")
                            .as_slice();
                        be.conv2d_forward_add(
                            g,
                            n,
                            val(0),
                            &f.packed,
                            Some(&f.bias),
                            r,
                            relu.is_some(),
                            &mut y,
                        );
                    }
                    None => be.conv2d_forward(
                        g,
                        n,
                        val(0),
                        &f.packed,
                        Some(&f.bias),
                        relu.is_some(),
                        &mut y,
                    ),
                }
            }
            Step::BnRelu { bn, relu: _ } => {
                self.bn_forward(
                    bn,
                    n,
                    mode,
                    record,
                    val(0),
                    None,
                    true,
                    &mut y,
                    saved,
                    bn_updates,
                )?;
            }
            Step::BnAddRelu { bn, other, .. } => {
                let r = vals[other.0]
                    .as_ref()
                    .expect("addend computed before the add")
                    .as_slice();
                self.bn_forward(
                    bn,
                    n,
                    mode,
                    record,
                    val(0),
                    Some(r),
                    true,
                    &mut y,
                    saved,
                    bn_updates,
                )?;
            }
            Step::AddRelu { .. } => {
                let xs: Vec<&[f32]> = (0..node.inputs.len()).map(val).collect();
                be.add_forward(&xs, true, &mut y);
            }
            Step::Op(id) => match &node.op {
                Op::Input { .. } => unreachable!("input nodes are fed, never executed"),
                Op::Conv2d(_) => {
                    let Geo::Conv(g) = &self.geo[id.0] else {
                        unreachable!("conv geometry")
                    };
                    let p = &self.packs[id.0]
                        .as_ref()
                        .expect("pack cache prepared")
                        .packed;
                    be.conv2d_forward(
                        g,
                        n,
                        val(0),
                        p,
                        self.params.data(id, ParamKind::Bias),
                        false,
                        &mut y,
                    );
                }
                Op::BatchNorm2d(_) => {
                    self.bn_forward(
                        id,
                        n,
                        mode,
                        record,
                        val(0),
                        None,
                        false,
                        &mut y,
                        saved,
                        bn_updates,
                    )?;
                }
                Op::Relu => be.relu_forward(val(0), &mut y),
                Op::Act(a) => be.act_forward(*a, val(0), &mut y),
                Op::MaxPool2d(_) => {
                    let Geo::Pool(g) = &self.geo[id.0] else {
                        unreachable!("pool geometry")
                    };
                    if record {
                        let mut am = vec![0u32; n * g.out_len()];
                        be.max_pool_forward(g, n, val(0), &mut y, Some(&mut am));
                        saved[id.0] = Saved::Argmax(am);
                    } else {
                        be.max_pool_forward(g, n, val(0), &mut y, None);
                    }
                }
                Op::AvgPool2d(_) => {
                    let Geo::Pool(g) = &self.geo[id.0] else {
                        unreachable!("pool geometry")
                    };
                    be.avg_pool_forward(g, n, val(0), &mut y);
                }
                Op::GlobalAvgPool => {
                    let (c, s) = self.cs[node.inputs[0].0];
                    be.global_avg_pool_forward(n, s, c, val(0), &mut y);
                }
                Op::Linear(l) => {
                    let w = self
                        .params
                        .data(id, ParamKind::Weight)
                        .expect("linear has a weight");
                    let b = self.params.data(id, ParamKind::Bias);
                    be.linear_forward(n, l.in_features, l.out_features, val(0), w, b, &mut y);
                }
                Op::Flatten => {
                    let (c, s) = self.cs[node.inputs[0].0];
                    be.to_channels_first(n, s, c, val(0), &mut y, false);
                }
                Op::Add => {
                    let xs: Vec<&[f32]> = (0..node.inputs.len()).map(val).collect();
                    be.add_forward(&xs, false, &mut y);
                }
                Op::Concat => {
                    let parts: Vec<(&[f32], usize)> = node
                        .inputs
                        .iter()
                        .enumerate()
                        .map(|(k, i)| (val(k), self.cs[i.0].0))
                        .collect();
                    be.concat_forward(&parts, &mut y);
                }
                Op::Dropout { p } => {
                    if mode == Mode::Train && *p > 0.0 {
                        let key = mix(dropout_base, id.0 as u64);
                        be.dropout(key, *p, val(0), &mut y, false);
                        saved[id.0] = Saved::Dropout(key);
                    } else {
                        be.copy_or_add(val(0), &mut y, false);
                    }
                }
                Op::ShortcutA(_) => {
                    let Geo::Shortcut(g) = &self.geo[id.0] else {
                        unreachable!("shortcut geometry")
                    };
                    be.shortcut_forward(g, n, val(0), &mut y);
                }
                Op::Identity => be.copy_or_add(val(0), &mut y, false),
            },
        }
        Ok(y)
    }

    #[allow(clippy::too_many_arguments)]
    fn bn_forward(
        &self,
        id: NodeId,
        n: usize,
        mode: Mode,
        record: bool,
        x: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
        saved: &mut [Saved],
        bn_updates: &mut Vec<BnUpdate>,
    ) -> Result<()> {
        let Op::BatchNorm2d(b) = &self.graph.node(id).op else {
            unreachable!("bn_forward on a BN node")
        };
        let (c, s) = self.cs[id.0];
        let gamma = self
            .params
            .data(id, ParamKind::Weight)
            .expect("bn has a weight");
        let beta = self
            .params
            .data(id, ParamKind::Bias)
            .expect("bn has a bias");
        let (mean, var): (Vec<f64>, Vec<f64>) = match mode {
            Mode::Train => {
                let count = n * s;
                if count <= 1 {
                    return Err(EngineError::BatchNormSingleValue {
                        node: self.graph.node(id).name.clone(),
                        count,
                    });
                }
                let (m, v) = self.backend.channel_stats(x, c);
                let unbiased = count as f64 / (count - 1) as f64;
                bn_updates.push((
                    id,
                    m.iter().map(|v| *v as f32).collect(),
                    v.iter().map(|v| (*v * unbiased) as f32).collect(),
                ));
                (m, v)
            }
            Mode::Eval => {
                let rm = self
                    .params
                    .data(id, ParamKind::RunningMean)
                    .expect("bn has a running mean");
                let rv = self
                    .params
                    .data(id, ParamKind::RunningVar)
                    .expect("bn has a running var");
                (
                    rm.iter().map(|v| *v as f64).collect(),
                    rv.iter().map(|v| *v as f64).collect(),
                )
            }
        };
        let mut sv = BnSaved {
            mean: Vec::with_capacity(c),
            invstd: Vec::with_capacity(c),
            scale: Vec::with_capacity(c),
            shift: Vec::with_capacity(c),
        };
        for j in 0..c {
            let inv = 1.0 / (var[j] + b.eps as f64).sqrt();
            let sc = gamma[j] as f64 * inv;
            sv.mean.push(mean[j] as f32);
            sv.invstd.push(inv as f32);
            sv.scale.push(sc as f32);
            sv.shift.push((beta[j] as f64 - mean[j] * sc) as f32);
        }
        self.backend
            .scale_shift(x, c, &sv.scale, &sv.shift, residual, relu, y);
        if record {
            saved[id.0] = Saved::Bn(sv);
        }
        Ok(())
    }

    fn check_backward(
        &self,
        tape: &Tape,
        seeds: &[(NodeId, &Tensor)],
        opts: &BackwardOptions,
    ) -> Result<()> {
        if seeds.is_empty() {
            return Err(EngineError::Config(
                "backward needs at least one gradient seed".into(),
            ));
        }
        for &(id, t) in seeds {
            self.check_node(id)?;
            let name = &self.graph.node(id).name;
            if !tape.computed[id.0] {
                return Err(EngineError::NotRecorded { node: name.clone() });
            }
            let expected = self.batch_shape(tape.n, id);
            if t.shape() != expected.as_slice() {
                return Err(EngineError::GradShape {
                    node: name.clone(),
                    expected,
                    found: t.shape().to_vec(),
                });
            }
        }
        for &id in &opts.activations {
            self.check_node(id)?;
            if !tape.computed[id.0] && !tape.absorbed[id.0] {
                return Err(EngineError::NotRecorded {
                    node: self.graph.node(id).name.clone(),
                });
            }
        }
        Ok(())
    }

    fn backward_inner(
        &mut self,
        tape: Tape,
        seeds: &[(NodeId, &Tensor)],
        opts: &BackwardOptions,
    ) -> Result<Gradients> {
        let Tape {
            n,
            mode,
            steps,
            mut vals,
            saved,
            fed,
            release_after,
            grad_slots,
            ..
        } = tape;
        let nn = self.graph.len();
        let pw: Vec<[bool; 2]> = (0..nn)
            .map(|i| {
                let w = |kind| {
                    opts.param_grads
                        && self
                            .params
                            .slot_of(NodeId(i), kind)
                            .is_some_and(|s| grad_slots[s])
                };
                [w(ParamKind::Weight), w(ParamKind::Bias)]
            })
            .collect();
        let mut req = vec![false; nn];
        for a in &opts.activations {
            req[a.0] = true;
        }
        // Which nodes need their output gradient: upstream of something wanted and downstream
        // (in the reverse sense) of a seed.
        let mut up = vec![false; nn];
        for i in 0..nn {
            let id = NodeId(i);
            let own = req[i] || pw[i][0] || pw[i][1];
            up[i] = own || (!fed[i] && self.graph.node(id).inputs.iter().any(|j| up[j.0]));
        }
        let mut anc = vec![false; nn];
        for (id, _) in seeds {
            anc[id.0] = true;
        }
        for i in (0..nn).rev() {
            if anc[i] && !fed[i] {
                for j in &self.graph.nodes()[i].inputs {
                    anc[j.0] = true;
                }
            }
        }
        let needg: Vec<bool> = (0..nn).map(|i| up[i] && anc[i]).collect();
        for s in &steps {
            if let Step::Op(id) = s {
                if matches!(self.graph.node(*id).op, Op::Conv2d(_)) {
                    self.ensure_pack(*id);
                }
            }
        }
        let mut grads: Vec<Option<Vec<f32>>> = (0..nn).map(|_| None).collect();
        for &(id, t) in seeds {
            let (c, s) = self.cs[id.0];
            match grads[id.0].as_mut() {
                Some(g) => self.backend.to_channels_last(n, s, c, t.data(), g, true),
                None => {
                    let mut g = self.pool.take(n * c * s);
                    self.backend
                        .to_channels_last(n, s, c, t.data(), &mut g, false);
                    grads[id.0] = Some(g);
                }
            }
        }
        let mut out = Gradients::default();
        for (si, step) in steps.iter().enumerate().rev() {
            let o = step.out();
            if let Some(dy) = grads[o.0].take() {
                if req[o.0] {
                    out.activations.insert(o, self.to_tensor(n, o, &dy));
                }
                let bctx = BwdCtx {
                    n,
                    mode,
                    vals: &vals,
                    saved: &saved,
                    needg: &needg,
                    req: &req,
                    pw: &pw,
                };
                let t0 = self.profile.is_some().then(std::time::Instant::now);
                let rest = self.step_backward(*step, &bctx, dy, &mut grads, &mut out)?;
                if let (Some(p), Some(t0)) = (self.profile.as_mut(), t0) {
                    p.add(
                        format!("backward {}", step_label(&self.graph, *step)),
                        t0.elapsed().as_secs_f64(),
                    );
                }
                if let Some(dy) = rest {
                    self.pool.give(dy);
                }
            } else {
                if req[o.0] {
                    out.activations
                        .insert(o, Tensor::zeros(&self.batch_shape(n, o)));
                }
                for a in step.absorbed() {
                    if req[a.0] {
                        out.activations
                            .insert(a, Tensor::zeros(&self.batch_shape(n, a)));
                    }
                }
            }
            for v in &release_after[si] {
                if let Some(b) = vals[v.0].take() {
                    self.pool.give(b);
                }
            }
        }
        for i in 0..nn {
            if fed[i] && req[i] {
                let t = match &grads[i] {
                    Some(g) => self.to_tensor(n, NodeId(i), g),
                    None => Tensor::zeros(&self.batch_shape(n, NodeId(i))),
                };
                out.activations.insert(NodeId(i), t);
            }
        }
        for g in grads.into_iter().flatten() {
            self.pool.give(g);
        }
        self.recycle(vals);
        Ok(out)
    }

    /// Takes the gradient buffer of node `j` to write into: the existing one (accumulate) or
    /// a fresh one (overwrite).
    fn grad_dst(
        &mut self,
        grads: &mut [Option<Vec<f32>>],
        n: usize,
        j: NodeId,
    ) -> (Vec<f32>, bool) {
        match grads[j.0].take() {
            Some(g) => (g, true),
            None => (self.pool.take(self.numel(n, j)), false),
        }
    }

    fn insert_grad(&self, out: &mut Gradients, id: NodeId, kind: ParamKind, data: Vec<f32>) {
        let i = self
            .params
            .slot_of(id, kind)
            .expect("gradient of an existing parameter");
        let slot = &self.params.slots()[i];
        let t = Tensor::new(slot.tensor.shape().to_vec(), data)
            .expect("gradient has the parameter's size");
        out.params.insert(slot.name.clone(), t);
    }

    /// Hands `g` to the gradient slots of `targets` (the inputs that need it, duplicates
    /// included): added where a slot exists, copied or, for the last one, moved where not.
    /// Returns `g` if it was not moved.
    fn distribute(
        &mut self,
        g: Vec<f32>,
        targets: &[NodeId],
        grads: &mut [Option<Vec<f32>>],
    ) -> Option<Vec<f32>> {
        // Slots that already exist first, so the buffer can move into an empty one last.
        let mut order: Vec<NodeId> = targets
            .iter()
            .copied()
            .filter(|j| grads[j.0].is_some())
            .collect();
        order.extend(targets.iter().copied().filter(|j| grads[j.0].is_none()));
        let mut g = Some(g);
        for (k, &j) in order.iter().enumerate() {
            let src = g.as_ref().expect("moved only at the last target");
            match grads[j.0].as_mut() {
                Some(d) => self.backend.copy_or_add(src, d, true),
                None if k + 1 == order.len() => grads[j.0] = g.take(),
                None => {
                    let mut d = self.pool.take(src.len());
                    self.backend.copy_or_add(src, &mut d, false);
                    grads[j.0] = Some(d);
                }
            }
        }
        g
    }

    /// Backward of one step from its output gradient `dy`; returns `dy` if it was not reused
    /// as an input gradient.
    fn step_backward(
        &mut self,
        step: Step,
        b: &BwdCtx<'_>,
        mut dy: Vec<f32>,
        grads: &mut [Option<Vec<f32>>],
        out: &mut Gradients,
    ) -> Result<Option<Vec<f32>>> {
        let n = b.n;
        let first = step.first();
        let inputs = self.graph.node(first).inputs.clone();
        let val =
            |v: NodeId| -> &[f32] { b.vals[v.0].as_deref().expect("value kept for backward") };
        let backend = self.backend.clone();
        let be = &*backend;
        let in0 = inputs[0];
        let need0 = b.needg[in0.0];
        match step {
            Step::ConvBn { .. } | Step::ConvChain { .. } => {
                unreachable!("fused inference steps are never recorded")
            }
            Step::BnRelu { bn, .. } => {
                return self.bn_backward(bn, b, dy, true, false, in0, grads, out)
            }
            Step::BnAddRelu {
                bn,
                add,
                relu,
                other,
            } => {
                be.relu_mask_in_place(val(relu), &mut dy);
                for a in [add, bn] {
                    if b.req[a.0] {
                        out.activations.insert(a, self.to_tensor(n, a, &dy));
                    }
                }
                if !b.needg[other.0] {
                    return self.bn_backward(bn, b, dy, false, false, in0, grads, out);
                }
                let dy = self
                    .bn_backward(bn, b, dy, false, true, in0, grads, out)?
                    .expect("bn_backward keeps dy when asked to");
                return Ok(self.distribute(dy, &[other], grads));
            }
            Step::AddRelu { add, relu } => {
                be.relu_mask_in_place(val(relu), &mut dy);
                if b.req[add.0] {
                    out.activations.insert(add, self.to_tensor(n, add, &dy));
                }
                let targets: Vec<NodeId> =
                    inputs.iter().copied().filter(|j| b.needg[j.0]).collect();
                return Ok(self.distribute(dy, &targets, grads));
            }
            Step::Op(id) => {
                let op = self.graph.node(id).op.clone();
                match &op {
                    Op::Input { .. } => {}
                    Op::Conv2d(c) => {
                        let Geo::Conv(g) = self.geo[id.0].clone() else {
                            unreachable!("conv geometry")
                        };
                        let [want_w, want_b] = b.pw[id.0];
                        if want_w {
                            let mut dwp = vec![0.0; g.weight_len()];
                            let mut db = want_b.then(|| vec![0.0; c.out_channels]);
                            be.conv2d_backward_weight(
                                &g,
                                n,
                                val(in0),
                                &dy,
                                &mut dwp,
                                db.as_deref_mut(),
                            );
                            let mut oihw = vec![0.0; g.weight_len()];
                            be.unpack_conv(&g, &dwp, &mut oihw);
                            self.insert_grad(out, id, ParamKind::Weight, oihw);
                            if let Some(db) = db {
                                self.insert_grad(out, id, ParamKind::Bias, db);
                            }
                        } else if want_b {
                            self.insert_grad(
                                out,
                                id,
                                ParamKind::Bias,
                                column_sums(&dy, c.out_channels),
                            );
                        }
                        if need0 {
                            let (mut dx, acc) = self.grad_dst(grads, n, in0);
                            let p = &self.packs[id.0]
                                .as_ref()
                                .expect("pack cache prepared")
                                .packed;
                            be.conv2d_backward_data(&g, n, &dy, p, &mut dx, acc);
                            grads[in0.0] = Some(dx);
                        }
                    }
                    Op::BatchNorm2d(_) => {
                        return self.bn_backward(id, b, dy, false, false, in0, grads, out)
                    }
                    Op::Relu => {
                        if need0 {
                            if grads[in0.0].is_none() {
                                be.relu_mask_in_place(val(id), &mut dy);
                                grads[in0.0] = Some(dy);
                                return Ok(None);
                            }
                            let (mut dx, acc) = self.grad_dst(grads, n, in0);
                            be.relu_backward(val(id), &dy, &mut dx, acc);
                            grads[in0.0] = Some(dx);
                        }
                    }
                    Op::Act(a) => {
                        if need0 {
                            let (mut dx, acc) = self.grad_dst(grads, n, in0);
                            be.act_backward(*a, val(in0), &dy, &mut dx, acc);
                            grads[in0.0] = Some(dx);
                        }
                    }
                    Op::MaxPool2d(_) => {
                        if need0 {
                            let Geo::Pool(g) = self.geo[id.0].clone() else {
                                unreachable!("pool geometry")
                            };
                            let Saved::Argmax(am) = &b.saved[id.0] else {
                                unreachable!("argmax recorded")
                            };
                            let (mut dx, acc) = self.grad_dst(grads, n, in0);
                            be.max_pool_backward(&g, n, am, &dy, &mut dx, acc);
                            grads[in0.0] = Some(dx);
                        }
                    }
                    Op::AvgPool2d(_) => {
                        if need0 {
                            let Geo::Pool(g) = self.geo[id.0].clone() else {
                                unreachable!("pool geometry")
                            };
                            let (mut dx, acc) = self.grad_dst(grads, n, in0);
                            be.avg_pool_backward(&g, n, &dy, &mut dx, acc);
                            grads[in0.0] = Some(dx);
                        }
                    }
                    Op::GlobalAvgPool => {
                        if need0 {
                            let (c, s) = self.cs[in0.0];
                            let (mut dx, acc) = self.grad_dst(grads, n, in0);
                            be.global_avg_pool_backward(n, s, c, &dy, &mut dx, acc);
                            grads[in0.0] = Some(dx);
                        }
                    }
                    Op::Linear(l) => {
                        let (i, o) = (l.in_features, l.out_features);
                        let [want_w, want_b] = b.pw[id.0];
                        if want_w {
                            let mut dw = vec![0.0; i * o];
                            let mut db = want_b.then(|| vec![0.0; o]);
                            be.linear_backward_weight(
                                n,
                                i,
                                o,
                                val(in0),
                                &dy,
                                &mut dw,
                                db.as_deref_mut(),
                            );
                            self.insert_grad(out, id, ParamKind::Weight, dw);
                            if let Some(db) = db {
                                self.insert_grad(out, id, ParamKind::Bias, db);
                            }
                        } else if want_b {
                            self.insert_grad(out, id, ParamKind::Bias, column_sums(&dy, o));
                        }
                        if need0 {
                            let (mut dx, acc) = self.grad_dst(grads, n, in0);
                            let w = self
                                .params
                                .data(id, ParamKind::Weight)
                                .expect("linear has a weight");
                            be.linear_backward_data(n, i, o, &dy, w, &mut dx, acc);
                            grads[in0.0] = Some(dx);
                        }
                    }
                    Op::Flatten => {
                        if need0 {
                            let (c, s) = self.cs[in0.0];
                            let (mut dx, acc) = self.grad_dst(grads, n, in0);
                            be.to_channels_last(n, s, c, &dy, &mut dx, acc);
                            grads[in0.0] = Some(dx);
                        }
                    }
                    Op::Add | Op::Identity => {
                        let targets: Vec<NodeId> =
                            inputs.iter().copied().filter(|j| b.needg[j.0]).collect();
                        return Ok(self.distribute(dy, &targets, grads));
                    }
                    Op::Concat => {
                        let ct = self.cs[id.0].0;
                        let mut off = 0;
                        for &j in &inputs {
                            let c = self.cs[j.0].0;
                            if b.needg[j.0] {
                                let (mut dx, acc) = self.grad_dst(grads, n, j);
                                be.concat_backward(&dy, ct, off, c, &mut dx, acc);
                                grads[j.0] = Some(dx);
                            }
                            off += c;
                        }
                    }
                    Op::Dropout { p } => {
                        if need0 {
                            let (mut dx, acc) = self.grad_dst(grads, n, in0);
                            match &b.saved[id.0] {
                                Saved::Dropout(key) => be.dropout(*key, *p, &dy, &mut dx, acc),
                                _ => be.copy_or_add(&dy, &mut dx, acc),
                            }
                            grads[in0.0] = Some(dx);
                        }
                    }
                    Op::ShortcutA(_) => {
                        if need0 {
                            let Geo::Shortcut(g) = self.geo[id.0].clone() else {
                                unreachable!("shortcut geometry")
                            };
                            let (mut dx, acc) = self.grad_dst(grads, n, in0);
                            be.shortcut_backward(&g, n, &dy, &mut dx, acc);
                            grads[in0.0] = Some(dx);
                        }
                    }
                }
            }
        }
        Ok(Some(dy))
    }

    /// Backward of batch norm (with its ReLU when `relu`); the input gradient is computed in
    /// place of `dy` when the input has no gradient yet, unless `keep_dy`. Returns `dy` if it
    /// was not reused.
    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        &mut self,
        bn: NodeId,
        b: &BwdCtx<'_>,
        mut dy: Vec<f32>,
        relu: bool,
        keep_dy: bool,
        input: NodeId,
        grads: &mut [Option<Vec<f32>>],
        out: &mut Gradients,
    ) -> Result<Option<Vec<f32>>> {
        let n = b.n;
        let Saved::Bn(sv) = &b.saved[bn.0] else {
            unreachable!("bn statistics recorded")
        };
        let x = b.vals[input.0]
            .as_deref()
            .expect("bn input kept for backward");
        let (c, _) = self.cs[bn.0];
        let args = BnBackward {
            x,
            c,
            mean: &sv.mean,
            invstd: &sv.invstd,
            scale: &sv.scale,
            shift: &sv.shift,
            relu,
            batch_stats: b.mode == Mode::Train,
        };
        let mut dmid = (relu && b.req[bn.0]).then(|| vec![0.0; x.len()]);
        let backend = self.backend.clone();
        let mut rest = None;
        let (dgamma, dbeta) = if !b.needg[input.0] {
            let r = backend.batch_norm_backward(&args, &mut dy, BnDx::Skip, dmid.as_deref_mut());
            rest = Some(dy);
            r
        } else if let Some(mut dx) = grads[input.0].take() {
            let r = backend.batch_norm_backward(
                &args,
                &mut dy,
                BnDx::Accumulate(&mut dx),
                dmid.as_deref_mut(),
            );
            grads[input.0] = Some(dx);
            rest = Some(dy);
            r
        } else if keep_dy {
            let mut dx = self.pool.take(dy.len());
            let r = backend.batch_norm_backward(
                &args,
                &mut dy,
                BnDx::Overwrite(&mut dx),
                dmid.as_deref_mut(),
            );
            grads[input.0] = Some(dx);
            rest = Some(dy);
            r
        } else {
            let r = backend.batch_norm_backward(&args, &mut dy, BnDx::InPlace, dmid.as_deref_mut());
            grads[input.0] = Some(dy);
            r
        };
        if let Some(dm) = dmid {
            out.activations.insert(bn, self.to_tensor(n, bn, &dm));
        }
        if b.pw[bn.0][0] {
            self.insert_grad(out, bn, ParamKind::Weight, dgamma);
        }
        if b.pw[bn.0][1] {
            self.insert_grad(out, bn, ParamKind::Bias, dbeta);
        }
        Ok(rest)
    }
}

/// What every step's backward reads from the tape.
struct BwdCtx<'a> {
    n: usize,
    mode: Mode,
    vals: &'a [Option<Vec<f32>>],
    saved: &'a [Saved],
    needg: &'a [bool],
    req: &'a [bool],
    /// Per node, whether the weight and the bias want gradients.
    pw: &'a [[bool; 2]],
}

/// Sums of the rows of a `[rows, c]` matrix, in row order.
fn column_sums(x: &[f32], c: usize) -> Vec<f32> {
    let mut s = vec![0.0f32; c];
    for r in x.chunks_exact(c) {
        s.iter_mut().zip(r).for_each(|(a, b)| *a += *b);
    }
    s
}
