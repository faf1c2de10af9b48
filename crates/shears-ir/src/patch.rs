//! `Patch`: the one checked way to edit a graph.
//!
//! A patch records edits against an existing graph (replace an op, add nodes, re-wire inputs,
//! redirect consumers, remove nodes) and [`Patch::apply`] produces a new, re-validated graph in
//! topological order. The original graph is never mutated. Every patch carries a label naming the
//! group or rule that made it; errors from applying it carry that label.

use std::collections::BTreeSet;

use crate::graph::{Graph, Node, NodeId};
use crate::ops::Op;
use crate::IrError;

/// A reference to a value inside a patch: an existing node of the base graph, or a node the
/// patch adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// A node of the base graph.
    Old(NodeId),
    /// The `n`-th node added by this patch.
    New(usize),
}

impl From<NodeId> for Wire {
    fn from(id: NodeId) -> Self {
        Wire::Old(id)
    }
}

#[derive(Clone, Debug)]
enum Edit {
    ReplaceOp(NodeId, Op),
    SetInputs(NodeId, Vec<Wire>),
    Shunt(NodeId, Wire),
    Remove(NodeId),
    Rename(NodeId, String),
}

/// A set of edits against one graph.
#[derive(Clone, Debug)]
pub struct Patch {
    context: String,
    added: Vec<(String, Op, Vec<Wire>)>,
    edits: Vec<Edit>,
}

/// The result of applying a patch.
#[derive(Clone, Debug)]
pub struct Patched {
    /// The new graph.
    pub graph: Graph,
    /// For each node of the base graph, its id in the new graph (`None` if removed).
    pub old_to_new: Vec<Option<NodeId>>,
    /// For each node the patch added, its id in the new graph.
    pub added: Vec<NodeId>,
}

impl Patch {
    /// An empty patch labelled `context` (e.g. `"prune group 3 (layer1.0.conv1)"`).
    pub fn new(context: impl Into<String>) -> Self {
        Patch {
            context: context.into(),
            added: Vec::new(),
            edits: Vec::new(),
        }
    }

    /// The label.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Whether the patch holds no edit.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.edits.is_empty()
    }

    /// Replaces the op of `node` (its inputs are kept).
    pub fn replace_op(&mut self, node: NodeId, op: impl Into<Op>) -> &mut Self {
        self.edits.push(Edit::ReplaceOp(node, op.into()));
        self
    }

    /// Adds a node; returns a wire to it.
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: impl Into<Op>,
        inputs: &[Wire],
    ) -> Wire {
        self.added.push((name.into(), op.into(), inputs.to_vec()));
        Wire::New(self.added.len() - 1)
    }

    /// Sets the inputs of an existing node.
    pub fn set_inputs(&mut self, node: NodeId, inputs: &[Wire]) -> &mut Self {
        self.edits.push(Edit::SetInputs(node, inputs.to_vec()));
        self
    }

    /// Makes every consumer of `from` (and the graph outputs) use `to` instead. Shapes are
    /// re-checked when the patch is applied.
    pub fn shunt(&mut self, from: NodeId, to: impl Into<Wire>) -> &mut Self {
        self.edits.push(Edit::Shunt(from, to.into()));
        self
    }

    /// Removes a node. Applying fails if anything still consumes it.
    pub fn remove(&mut self, node: NodeId) -> &mut Self {
        self.edits.push(Edit::Remove(node));
        self
    }

    /// Renames a node.
    pub fn rename(&mut self, node: NodeId, name: impl Into<String>) -> &mut Self {
        self.edits.push(Edit::Rename(node, name.into()));
        self
    }

    /// Applies the patch to `base`, returning a new validated graph. Errors carry the patch label
    /// and name the node at fault.
    pub fn apply(&self, base: &Graph) -> Result<Patched, IrError> {
        self.apply_inner(base).map_err(|e| IrError::Patch {
            context: self.context.clone(),
            source: Box::new(e),
        })
    }

    fn apply_inner(&self, base: &Graph) -> Result<Patched, IrError> {
        let n_old = base.len();
        let n_all = n_old + self.added.len();
        // Unified index space: 0..n_old are old nodes, n_old.. are added nodes.
        let idx = |w: Wire| -> Result<usize, IrError> {
            match w {
                Wire::Old(id) if id.0 < n_old => Ok(id.0),
                Wire::New(k) if k < self.added.len() => Ok(n_old + k),
                w => Err(IrError::Graph(format!(
                    "patch refers to a missing node {w:?}"
                ))),
            }
        };
        let mut names: Vec<String> = base.nodes().iter().map(|n| n.name.clone()).collect();
        let mut ops: Vec<Op> = base.nodes().iter().map(|n| n.op.clone()).collect();
        let mut inputs: Vec<Vec<usize>> = base
            .nodes()
            .iter()
            .map(|n| n.inputs.iter().map(|i| i.0).collect())
            .collect();
        for (name, op, ins) in &self.added {
            names.push(name.clone());
            ops.push(op.clone());
            inputs.push(ins.iter().map(|&w| idx(w)).collect::<Result<_, _>>()?);
        }
        let mut outputs: Vec<usize> = base.outputs().iter().map(|o| o.0).collect();
        let mut removed = BTreeSet::new();
        for e in &self.edits {
            match e {
                Edit::ReplaceOp(n, op) => ops[idx(Wire::Old(*n))?] = op.clone(),
                Edit::SetInputs(n, ins) => {
                    let i = idx(Wire::Old(*n))?;
                    inputs[i] = ins.iter().map(|&w| idx(w)).collect::<Result<_, _>>()?;
                }
                Edit::Shunt(from, to) => {
                    let f = idx(Wire::Old(*from))?;
                    let t = idx(*to)?;
                    for (k, ins) in inputs.iter_mut().enumerate() {
                        if k == t {
                            continue;
                        }
                        for x in ins.iter_mut() {
                            if *x == f {
                                *x = t;
                            }
                        }
                    }
                    for o in outputs.iter_mut() {
                        if *o == f {
                            *o = t;
                        }
                    }
                }
                Edit::Remove(n) => {
                    removed.insert(idx(Wire::Old(*n))?);
                }
                Edit::Rename(n, name) => names[idx(Wire::Old(*n))?] = name.clone(),
            }
        }
        for (k, ins) in inputs.iter().enumerate() {
            if removed.contains(&k) {
                continue;
            }
            for x in ins {
                if removed.contains(x) {
                    return Err(IrError::Node {
                        node: names[k].clone(),
                        op: ops[k].type_name(),
                        msg: format!("consumes removed node {:?}", names[*x]),
                    });
                }
            }
        }
        if let Some(o) = outputs.iter().find(|o| removed.contains(o)) {
            return Err(IrError::Graph(format!(
                "graph output {:?} was removed",
                names[*o]
            )));
        }
        // Stable topological sort: repeatedly take the lowest-index ready node, where old nodes
        // keep their order and added nodes come right after the last of their inputs.
        let order_key = |k: usize| -> (usize, usize) {
            if k < n_old {
                (k, 0)
            } else {
                let after = inputs[k].iter().map(|&i| i.min(n_old)).max().unwrap_or(0);
                (after, 1 + k)
            }
        };
        let mut indeg = vec![0usize; n_all];
        let mut cons: Vec<Vec<usize>> = vec![Vec::new(); n_all];
        for k in 0..n_all {
            if removed.contains(&k) {
                continue;
            }
            for &i in &inputs[k] {
                indeg[k] += 1;
                cons[i].push(k);
            }
        }
        let mut ready: BTreeSet<((usize, usize), usize)> = (0..n_all)
            .filter(|k| !removed.contains(k) && indeg[*k] == 0)
            .map(|k| (order_key(k), k))
            .collect();
        let mut order = Vec::with_capacity(n_all);
        while let Some(first) = ready.iter().next().copied() {
            ready.remove(&first);
            let k = first.1;
            order.push(k);
            for &c in &cons[k] {
                indeg[c] -= 1;
                if indeg[c] == 0 {
                    ready.insert((order_key(c), c));
                }
            }
        }
        if order.len() != n_all - removed.len() {
            return Err(IrError::Graph("patch creates a cycle".into()));
        }
        let mut new_id = vec![None; n_all];
        for (pos, &k) in order.iter().enumerate() {
            new_id[k] = Some(NodeId(pos));
        }
        let nodes: Vec<Node> = order
            .iter()
            .map(|&k| Node {
                name: names[k].clone(),
                op: ops[k].clone(),
                inputs: inputs[k]
                    .iter()
                    .map(|&i| new_id[i].expect("inputs are not removed"))
                    .collect(),
            })
            .collect();
        let outs: Vec<NodeId> = outputs
            .iter()
            .map(|&o| new_id[o].expect("outputs are not removed"))
            .collect();
        let graph = Graph::new(nodes, outs)?;
        Ok(Patched {
            graph,
            old_to_new: new_id[..n_old].to_vec(),
            added: new_id[n_old..]
                .iter()
                .map(|x| x.expect("added nodes are kept"))
                .collect(),
        })
    }
}
