//! The state that import converters read and extend: ONNX values, and the shears nodes made
//! so far ("pending" until the graph is built).
//!
//! Every ONNX value is either a constant (an initializer or a `Constant` output), a graph input
//! not referenced yet, or an activation computed by a pending node. An activation carries its
//! ONNX per-sample dims, which differ from the shears shape of its node in one case only: a
//! keep-dims global pool that a flatten, reshape or squeeze turned into a shears global pool
//! (`[C]`, where ONNX still holds `[C, 1, 1]` for the pool's own output name).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use shears_ir::{Op, ParamKind, Tensor};

use super::node::NodeView;
use super::tensor::{ConstTensor, MAX_NUMEL};
use super::ImportError;

/// An activation: the pending node computing it and its ONNX per-sample dims.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Act {
    /// Index of the producing pending node.
    pub node: usize,
    /// ONNX dims without the batch axis.
    pub dims: Vec<usize>,
}

/// What an ONNX value name stands for.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    /// A constant tensor.
    Const(Rc<ConstTensor>),
    /// A graph input with these per-sample dims; becomes an `Input` node when first used.
    Input(Vec<usize>),
    /// A computed activation.
    Act(Act),
    /// A computed activation that ONNX holds channels-last (`[N, H, W, C]`, after a
    /// `Transpose(0, 2, 3, 1)`) while its shears node stays NCHW; [`Act::dims`] are the NCHW
    /// dims. Only the converters of [`super::channels_last`] read it; [`Ctx::act`] refuses it.
    ChannelsLast(Act),
}

/// How a pending node may still absorb the node that consumes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fusion {
    /// Final.
    None,
    /// A `MatMul`-made linear layer without bias: a following `Add` of a constant vector
    /// becomes its bias.
    LinearBias,
    /// Made by `Slice`: rows and columns kept every `sh`-th and `sw`-th so far. A further
    /// `Slice`, or a channel `Pad` once `sh == sw`, folds into it (the option-A shortcut).
    Shortcut {
        /// Row step.
        sh: usize,
        /// Column step.
        sw: usize,
    },
    /// A channel shuffle read so far up to its `Reshape [N, g, C/g, H, W]` (and its
    /// `Transpose` when `transposed`); the `Reshape` back to `[N, C, H, W]` completes it.
    Shuffle {
        /// Whether the transpose has been read.
        transposed: bool,
    },
    /// A placeholder (an identity of `x`) standing for a prefix of the Erf GELU pattern of
    /// activation `x` (a pending-node index); the pattern's next node folds into it, and one
    /// left at the end of the import is refused.
    Gelu {
        /// The activation the GELU applies to.
        x: usize,
        /// How much of the pattern has been read.
        stage: GeluStage,
    },
}

/// How much of the Erf GELU pattern `Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)` a
/// placeholder stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GeluStage {
    /// `x / sqrt 2`.
    Scaled,
    /// `erf(x / sqrt 2)`.
    Erf,
    /// `1 + erf(x / sqrt 2)`.
    PlusOne,
    /// `x * (1 + erf(x / sqrt 2))`.
    Doubled,
}

/// A shears node under construction.
#[derive(Clone, Debug)]
pub(crate) struct PendingNode {
    /// Unique shears name.
    pub name: String,
    /// The op.
    pub op: Op,
    /// Producers, as pending-node indices.
    pub inputs: Vec<usize>,
    /// Per-sample shears output shape.
    pub shape: Vec<usize>,
    /// Parameters in the order of `op.params()`.
    pub params: Vec<(ParamKind, Tensor)>,
    /// Whether a consumer may still fold into this node.
    pub fusion: Fusion,
    /// The ONNX node it came from, for messages.
    pub origin: String,
}

/// Converter state: values by name, pending nodes, names taken.
pub(crate) struct Ctx {
    values: HashMap<String, Value>,
    uses: HashMap<String, usize>,
    nodes: Vec<PendingNode>,
    names: HashSet<String>,
    /// The batch size when every graph input fixes the same one (`Reshape` may spell it).
    pub batch: Option<usize>,
}

/// The element count of `shape` if it is at most [`MAX_NUMEL`].
pub(crate) fn bounded_numel(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_NUMEL)
}

impl Ctx {
    /// A context holding the constants and graph inputs, with use counts of every value
    /// (node inputs and graph outputs).
    pub fn new(
        values: HashMap<String, Value>,
        uses: HashMap<String, usize>,
        batch: Option<usize>,
    ) -> Self {
        Ctx {
            values,
            uses,
            nodes: Vec::new(),
            names: HashSet::new(),
            batch,
        }
    }

    /// How many times value `name` is used.
    pub fn uses(&self, name: &str) -> usize {
        self.uses.get(name).copied().unwrap_or(0)
    }

    /// The pending nodes.
    pub fn nodes(&self) -> &[PendingNode] {
        &self.nodes
    }

    /// Consumes the context.
    pub fn into_nodes(self) -> Vec<PendingNode> {
        self.nodes
    }

    /// A pending node, to fold a consumer into it.
    pub fn node_mut(&mut self, idx: usize) -> &mut PendingNode {
        &mut self.nodes[idx]
    }

    /// The shears shape of pending node `idx`.
    pub fn shape(&self, idx: usize) -> &[usize] {
        &self.nodes[idx].shape
    }

    fn lookup<'n>(&self, node: NodeView<'n>, i: usize) -> Result<(&'n str, &Value), ImportError> {
        let name = node
            .input(i)
            .ok_or_else(|| node.corrupt(format!("required input {i} is missing")))?;
        let v = self.values.get(name).ok_or_else(|| {
            node.corrupt(format!(
                "input {name:?} is not produced by an earlier node (graph not in topological order?)"
            ))
        })?;
        Ok((name, v))
    }

    /// Resolves value `name` to an activation, creating the `Input` node of a graph input on
    /// first use.
    pub fn resolve_act(&mut self, name: &str) -> Option<Result<Act, Rc<ConstTensor>>> {
        match self.values.get(name)? {
            Value::Act(a) => Some(Ok(a.clone())),
            Value::Const(c) => Some(Err(c.clone())),
            // Read through `channels_last` only: never mistaken for an NCHW activation.
            Value::ChannelsLast(_) => None,
            Value::Input(dims) => {
                let dims = dims.clone();
                let name = name.to_string();
                let idx = self.nodes.len();
                self.names.insert(name.clone());
                self.nodes.push(PendingNode {
                    name: name.clone(),
                    op: Op::Input {
                        shape: dims.clone(),
                    },
                    inputs: Vec::new(),
                    shape: dims.clone(),
                    params: Vec::new(),
                    fusion: Fusion::None,
                    origin: format!("graph input {name:?}"),
                });
                let act = Act { node: idx, dims };
                self.values.insert(name, Value::Act(act.clone()));
                Some(Ok(act))
            }
        }
    }

    /// Input `i` of `node`, which must be a computed value (not a constant) in NCHW.
    pub fn act(&mut self, node: NodeView<'_>, i: usize) -> Result<Act, ImportError> {
        let name = self.lookup(node, i)?.0.to_string();
        if self.channels_last(&name).is_some() {
            return Err(node.unsupported(format!(
                "input {i} ({name:?}) is channels-last (NHWC, after a Transpose(0, 2, 3, 1)); \
                 this op is not translated to NCHW there"
            )));
        }
        match self.resolve_act(&name).expect("lookup found it") {
            Ok(a) => Ok(a),
            Err(_) => Err(node.unsupported(format!(
                "input {i} ({name:?}) is a constant; shears needs a computed value there"
            ))),
        }
    }

    /// Input `i` of `node`, which must be a `[C, H, W]` feature map.
    pub fn feature_map(&mut self, node: NodeView<'_>, i: usize) -> Result<Act, ImportError> {
        let a = self.act(node, i)?;
        if a.dims.len() != 3 || a.dims != self.nodes[a.node].shape {
            return Err(node.unsupported(format!(
                "expects a 4-D NCHW input, got per-sample dims {:?}",
                a.dims
            )));
        }
        Ok(a)
    }

    /// Input `i` of `node`, which must be a constant.
    pub fn constant(&self, node: NodeView<'_>, i: usize) -> Result<Rc<ConstTensor>, ImportError> {
        match self.lookup(node, i)? {
            (_, Value::Const(c)) => Ok(c.clone()),
            (name, _) => Err(node.unsupported(format!(
                "input {i} ({name:?}) must be a constant (an initializer or a Constant node)"
            ))),
        }
    }

    /// Input `i` of `node` if present; it must then be a constant.
    pub fn opt_constant(
        &self,
        node: NodeView<'_>,
        i: usize,
    ) -> Result<Option<Rc<ConstTensor>>, ImportError> {
        match node.input(i) {
            None => Ok(None),
            Some(_) => self.constant(node, i).map(Some),
        }
    }

    /// The NCHW activation behind value `name` if ONNX holds it channels-last.
    pub fn channels_last(&self, name: &str) -> Option<&Act> {
        match self.values.get(name) {
            Some(Value::ChannelsLast(a)) => Some(a),
            _ => None,
        }
    }

    /// Binds an internal name (an NCHW alias of a channels-last value), replacing any earlier
    /// binding, with `uses` uses.
    pub fn bind_alias(&mut self, name: String, value: Value, uses: usize) {
        self.uses.insert(name.clone(), uses);
        self.values.insert(name, value);
    }

    /// Sets the use count of an internal name (an NCHW alias about to be defined).
    pub fn set_uses(&mut self, name: String, uses: usize) {
        self.uses.insert(name, uses);
    }

    /// What value `name` stands for, without creating anything.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// Whether input `i` of `node` is a constant.
    pub fn is_constant(&self, node: NodeView<'_>, i: usize) -> bool {
        matches!(
            node.input(i).and_then(|n| self.values.get(n)),
            Some(Value::Const(_))
        )
    }

    /// Binds output `i` of `node` to `value`.
    pub fn define(
        &mut self,
        node: NodeView<'_>,
        i: usize,
        value: Value,
    ) -> Result<(), ImportError> {
        let name = node
            .output(i)
            .ok_or_else(|| node.corrupt(format!("output {i} is missing")))?;
        if self.values.contains_key(name) {
            return Err(node.corrupt(format!("value {name:?} is defined twice")));
        }
        self.values.insert(name.to_string(), value);
        Ok(())
    }

    /// Binds output 0 of `node` to pending node `idx` with ONNX dims `dims`.
    pub fn define_act(
        &mut self,
        node: NodeView<'_>,
        idx: usize,
        dims: Vec<usize>,
    ) -> Result<(), ImportError> {
        self.define(node, 0, Value::Act(Act { node: idx, dims }))
    }

    /// Fails unless output `i` of `node` is omitted or unused (optional outputs shears cannot
    /// compute: pooling indices, dropout masks, batch statistics).
    pub fn require_unused_output(&self, node: NodeView<'_>, i: usize) -> Result<(), ImportError> {
        match node.output(i) {
            Some(name) if self.uses(name) > 0 => Err(node.unsupported(format!(
                "output {i} ({name:?}) is used; shears computes only the main output"
            ))),
            _ => Ok(()),
        }
    }

    /// A unique shears name for a node made from `node`: the prefix of its weight
    /// initializer when that is named `<prefix>.weight` (as PyTorch names parameters), else
    /// the ONNX node name, else its first output.
    fn fresh_name(&mut self, node: NodeView<'_>, weight: Option<&str>) -> String {
        let base = weight
            .and_then(|w| w.strip_suffix(".weight"))
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| node.name());
        let base = if base.is_empty() { "node" } else { base };
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) || self.values_shadow(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Whether `name` is a graph input not yet turned into a node (whose node will take
    /// that name).
    fn values_shadow(&self, name: &str) -> bool {
        matches!(self.values.get(name), Some(Value::Input(_)))
    }

    /// Adds a shears node made from ONNX `node`, inferring its shape. `weight` is the name of
    /// the weight initializer, if any, used to name the node. `params` must match
    /// `op.params()` in order and shape.
    pub fn push(
        &mut self,
        node: NodeView<'_>,
        weight: Option<&str>,
        op: Op,
        inputs: &[usize],
        params: Vec<(ParamKind, Tensor)>,
    ) -> Result<usize, ImportError> {
        let shape = self.infer(node, &op, inputs, &params)?;
        let name = self.fresh_name(node, weight);
        self.nodes.push(PendingNode {
            name,
            op,
            inputs: inputs.to_vec(),
            shape,
            params,
            fusion: Fusion::None,
            origin: node.name().to_string(),
        });
        Ok(self.nodes.len() - 1)
    }

    /// Replaces the op and parameters of pending node `idx` (a fusion) and re-infers its
    /// shape.
    pub fn refit(
        &mut self,
        node: NodeView<'_>,
        idx: usize,
        op: Op,
        params: Vec<(ParamKind, Tensor)>,
    ) -> Result<(), ImportError> {
        let inputs = self.nodes[idx].inputs.clone();
        let shape = self.infer(node, &op, &inputs, &params)?;
        let n = &mut self.nodes[idx];
        n.op = op;
        n.params = params;
        n.shape = shape;
        Ok(())
    }

    fn infer(
        &self,
        node: NodeView<'_>,
        op: &Op,
        inputs: &[usize],
        params: &[(ParamKind, Tensor)],
    ) -> Result<Vec<usize>, ImportError> {
        let in_shapes: Vec<&[usize]> = inputs
            .iter()
            .map(|&i| self.nodes[i].shape.as_slice())
            .collect();
        let shape = op.output_shape(&in_shapes).map_err(|m| node.corrupt(m))?;
        if bounded_numel(&shape).is_none() {
            return Err(node.unsupported(format!("activation of shape {shape:?} is too large")));
        }
        let specs = op.params();
        let ok = specs.len() == params.len()
            && specs
                .iter()
                .zip(params)
                .all(|(s, (k, t))| s.kind == *k && s.shape == t.shape());
        if !ok {
            let found: Vec<_> = params
                .iter()
                .map(|(k, t)| (k.suffix(), t.shape()))
                .collect();
            return Err(node.corrupt(format!(
                "parameters {found:?} do not fit a {} (expected {:?})",
                op.type_name(),
                specs
                    .iter()
                    .map(|s| (s.kind.suffix(), &s.shape))
                    .collect::<Vec<_>>()
            )));
        }
        Ok(shape)
    }

    /// Sets the shape of a pending node directly, for a partial fusion state whose op is not
    /// final yet.
    pub fn set_partial_shape(&mut self, idx: usize, shape: Vec<usize>) {
        self.nodes[idx].shape = shape;
    }

    /// Adds a pending node whose op is a placeholder (a fusion in progress), with an explicit
    /// shape.
    pub fn push_partial(
        &mut self,
        node: NodeView<'_>,
        op: Op,
        input: usize,
        shape: Vec<usize>,
        fusion: Fusion,
    ) -> usize {
        let name = self.fresh_name(node, None);
        self.nodes.push(PendingNode {
            name,
            op,
            inputs: vec![input],
            shape,
            params: Vec::new(),
            fusion,
            origin: node.name().to_string(),
        });
        self.nodes.len() - 1
    }
}
