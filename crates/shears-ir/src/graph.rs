//! The graph: an arena of named nodes in topological order, with inferred shapes.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ops::{node_err, Op, ParamKind, ParamSpec};
use crate::IrError;

/// Index of a node in its graph's arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub usize);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One operation in the graph. Every node has exactly one output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name; parameters are stored as `<name>.<kind>` (e.g. `layer1.0.conv1.weight`).
    pub name: String,
    /// The operation.
    #[serde(flatten)]
    pub op: Op,
    /// Producers of this node's inputs, in order.
    #[serde(default)]
    pub inputs: Vec<NodeId>,
}

impl Node {
    /// The name of this node's parameter of the given kind.
    pub fn param_name(&self, kind: ParamKind) -> String {
        format!("{}.{}", self.name, kind.suffix())
    }
}

/// A validated computation graph: nodes in topological order (every input of node `i` has an
/// index below `i`), unique names, arities and shapes checked.
///
/// Build one with [`GraphBuilder`], from JSON with [`Graph::from_json`], or from another graph
/// with a [`crate::Patch`]. The fields are private so that every graph in existence is valid.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    nodes: Vec<Node>,
    outputs: Vec<NodeId>,
    shapes: Vec<Vec<usize>>,
}

#[derive(Serialize, Deserialize)]
struct GraphJson {
    format: String,
    nodes: Vec<Node>,
    outputs: Vec<NodeId>,
}

/// The `format` tag of a graph's JSON form.
pub const GRAPH_FORMAT: &str = "shears-graph/1";

impl Graph {
    /// Validates `nodes` and `outputs` and builds the graph. Errors name the offending node.
    pub fn new(nodes: Vec<Node>, outputs: Vec<NodeId>) -> Result<Self, IrError> {
        let mut names = HashSet::new();
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            if n.name.is_empty() {
                return Err(IrError::Node {
                    node: format!("#{i}"),
                    op: n.op.type_name(),
                    msg: "node name is empty".into(),
                });
            }
            if !names.insert(n.name.as_str()) {
                return Err(node_err(&n.name, &n.op, "duplicate node name".into()));
            }
            for inp in &n.inputs {
                if inp.0 >= i {
                    return Err(node_err(
                        &n.name,
                        &n.op,
                        format!(
                            "input {inp} is not an earlier node (graph must be in topological order)"
                        ),
                    ));
                }
            }
            let in_shapes: Vec<&[usize]> =
                n.inputs.iter().map(|x| shapes[x.0].as_slice()).collect();
            let s =
                n.op.output_shape(&in_shapes)
                    .map_err(|m| node_err(&n.name, &n.op, m))?;
            shapes.push(s);
        }
        if outputs.is_empty() {
            return Err(IrError::Graph("graph has no outputs".into()));
        }
        for o in &outputs {
            if o.0 >= nodes.len() {
                return Err(IrError::Graph(format!("output {o} does not exist")));
            }
        }
        if !nodes.iter().any(|n| matches!(n.op, Op::Input { .. })) {
            return Err(IrError::Graph("graph has no input node".into()));
        }
        Ok(Graph {
            nodes,
            outputs,
            shapes,
        })
    }

    /// The nodes in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with id `id`.
    ///
    /// # Panics
    /// If `id` is not a node of this graph (ids come from the graph itself).
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph has no nodes (never true for a valid graph).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node ids in topological order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len()).map(NodeId)
    }

    /// The graph outputs.
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// The input nodes, in order.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.ids()
            .filter(|&i| matches!(self.nodes[i.0].op, Op::Input { .. }))
            .collect()
    }

    /// Per-sample output shape of node `id`.
    pub fn shape(&self, id: NodeId) -> &[usize] {
        &self.shapes[id.0]
    }

    /// Input shapes of node `id`.
    pub fn input_shapes(&self, id: NodeId) -> Vec<&[usize]> {
        self.nodes[id.0]
            .inputs
            .iter()
            .map(|i| self.shapes[i.0].as_slice())
            .collect()
    }

    /// Finds a node by name.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name).map(NodeId)
    }

    /// For each node, the nodes that consume its output (in topological order).
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut c = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for inp in &n.inputs {
                if !c[inp.0].contains(&NodeId(i)) {
                    c[inp.0].push(NodeId(i));
                }
            }
        }
        c
    }

    /// Every parameter and buffer the graph expects: `(node, full tensor name, spec)`.
    pub fn param_specs(&self) -> Vec<(NodeId, String, ParamSpec)> {
        let mut v = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for spec in n.op.params() {
                v.push((NodeId(i), n.param_name(spec.kind), spec));
            }
        }
        v
    }

    /// Number of trainable parameter elements (weights, biases, BN affine).
    pub fn n_params(&self) -> u64 {
        self.param_specs()
            .iter()
            .filter(|(_, _, s)| s.kind.is_trainable())
            .map(|(_, _, s)| s.shape.iter().product::<usize>() as u64)
            .sum()
    }

    /// Number of buffer elements (BN running statistics).
    pub fn n_buffers(&self) -> u64 {
        self.param_specs()
            .iter()
            .filter(|(_, _, s)| !s.kind.is_trainable())
            .map(|(_, _, s)| s.shape.iter().product::<usize>() as u64)
            .sum()
    }

    /// Multiply-accumulates per sample of node `id` (conv and linear only).
    pub fn node_macs(&self, id: NodeId) -> u64 {
        self.nodes[id.0].op.macs(&self.shapes[id.0])
    }

    /// Multiply-accumulates per sample over all conv and linear layers.
    pub fn macs(&self) -> u64 {
        self.ids().map(|i| self.node_macs(i)).sum()
    }

    /// The JSON form (`{"format": "shears-graph/1", "nodes": [...], "outputs": [...]}`).
    pub fn to_json(&self) -> String {
        let j = GraphJson {
            format: GRAPH_FORMAT.to_string(),
            nodes: self.nodes.clone(),
            outputs: self.outputs.clone(),
        };
        serde_json::to_string(&j).expect("graph serialisation cannot fail: plain data")
    }

    /// Pretty JSON form.
    pub fn to_json_pretty(&self) -> String {
        let j = GraphJson {
            format: GRAPH_FORMAT.to_string(),
            nodes: self.nodes.clone(),
            outputs: self.outputs.clone(),
        };
        serde_json::to_string_pretty(&j).expect("graph serialisation cannot fail: plain data")
    }

    /// Parses and validates the JSON form.
    pub fn from_json(s: &str) -> Result<Self, IrError> {
        let j: GraphJson = serde_json::from_str(s).map_err(|e| IrError::Json(e.to_string()))?;
        if j.format != GRAPH_FORMAT {
            return Err(IrError::Json(format!(
                "unknown graph format {:?} (expected {GRAPH_FORMAT:?})",
                j.format
            )));
        }
        Graph::new(j.nodes, j.outputs)
    }

    /// Consumes the graph, returning its nodes and outputs (to build a modified copy).
    pub fn into_parts(self) -> (Vec<Node>, Vec<NodeId>) {
        (self.nodes, self.outputs)
    }

    /// A map from node name to id.
    pub fn name_map(&self) -> HashMap<&str, NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), NodeId(i)))
            .collect()
    }
}

/// Builds a graph node by node, inferring shapes as it goes so that an error names the node
/// where it arises.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<Node>,
    shapes: Vec<Vec<usize>>,
    names: HashSet<String>,
}

impl GraphBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node and returns its id.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        op: impl Into<Op>,
        inputs: &[NodeId],
    ) -> Result<NodeId, IrError> {
        let name = name.into();
        let op = op.into();
        if name.is_empty() {
            return Err(node_err("<empty>", &op, "node name is empty".into()));
        }
        if self.names.contains(&name) {
            return Err(node_err(&name, &op, "duplicate node name".into()));
        }
        for i in inputs {
            if i.0 >= self.nodes.len() {
                return Err(node_err(&name, &op, format!("input {i} does not exist")));
            }
        }
        let in_shapes: Vec<&[usize]> = inputs.iter().map(|i| self.shapes[i.0].as_slice()).collect();
        let shape = op
            .output_shape(&in_shapes)
            .map_err(|m| node_err(&name, &op, m))?;
        self.names.insert(name.clone());
        self.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
        });
        self.shapes.push(shape);
        Ok(NodeId(self.nodes.len() - 1))
    }

    /// Adds an input node with per-sample shape `shape`.
    pub fn input(&mut self, name: impl Into<String>, shape: &[usize]) -> Result<NodeId, IrError> {
        self.add(
            name,
            Op::Input {
                shape: shape.to_vec(),
            },
            &[],
        )
    }

    /// Per-sample shape of an already added node.
    ///
    /// # Panics
    /// If `id` was not returned by this builder.
    pub fn shape(&self, id: NodeId) -> &[usize] {
        &self.shapes[id.0]
    }

    /// Finishes the graph with the given outputs.
    pub fn finish(self, outputs: &[NodeId]) -> Result<Graph, IrError> {
        Graph::new(self.nodes, outputs.to_vec())
    }
}
