//! The network's parameters and buffers, in PyTorch layout, with change tracking.

use std::collections::HashMap;

use shears_ir::{Graph, NodeId, ParamKind, Tensor, Weights};

use crate::error::{EngineError, Result};

/// One parameter or buffer.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub name: String,
    pub kind: ParamKind,
    pub tensor: Tensor,
    pub frozen: bool,
    /// Bumped whenever the tensor may have changed; caches compare it.
    pub version: u64,
}

/// The parameters and buffers of a [`crate::Network`], keyed by name, in PyTorch layout.
///
/// Hooks receive it mutably: changing a tensor through [`ParamStore::get_mut`] invalidates the
/// network's packed and fused weight caches.
#[derive(Clone, Debug)]
pub struct ParamStore {
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    /// Per node, the slot of each [`ParamKind`] (weight, bias, running mean, running var).
    by_node: Vec<[Option<usize>; 4]>,
    clock: u64,
}

fn kind_idx(kind: ParamKind) -> usize {
    match kind {
        ParamKind::Weight => 0,
        ParamKind::Bias => 1,
        ParamKind::RunningMean => 2,
        ParamKind::RunningVar => 3,
    }
}

impl ParamStore {
    /// Builds the store, checking `weights` strictly against `graph.param_specs()`.
    pub(crate) fn new(graph: &Graph, weights: &Weights) -> Result<Self> {
        let specs = graph.param_specs();
        let mut slots = Vec::with_capacity(specs.len());
        let mut index = HashMap::new();
        let mut by_node = vec![[None; 4]; graph.len()];
        for (node, name, spec) in specs {
            let t = weights
                .get(&name)
                .ok_or_else(|| EngineError::MissingWeight {
                    name: name.clone(),
                    expected: spec.shape.clone(),
                })?;
            if t.shape() != spec.shape.as_slice() {
                return Err(EngineError::WeightShape {
                    name,
                    expected: spec.shape,
                    found: t.shape().to_vec(),
                });
            }
            by_node[node.0][kind_idx(spec.kind)] = Some(slots.len());
            index.insert(name.clone(), slots.len());
            slots.push(Slot {
                name,
                kind: spec.kind,
                tensor: t.clone(),
                frozen: false,
                version: 0,
            });
        }
        let extra: Vec<String> = weights
            .names()
            .filter(|n| !index.contains_key(*n))
            .cloned()
            .collect();
        if !extra.is_empty() {
            return Err(EngineError::UnexpectedWeights { names: extra });
        }
        Ok(ParamStore {
            slots,
            index,
            by_node,
            clock: 1,
        })
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.slots[i].tensor)
    }

    /// Mutable access to the tensor named `name`; marks it changed.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        let i = *self.index.get(name)?;
        Some(self.slot_mut(i))
    }

    /// Names of all parameters and buffers, in graph order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the network has no parameters.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether `name` is trained by gradient descent (a weight or bias, not frozen).
    pub fn is_trainable(&self, name: &str) -> bool {
        self.index
            .get(name)
            .is_some_and(|&i| self.slots[i].kind.is_trainable() && !self.slots[i].frozen)
    }

    /// Whether `name` is frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        self.index.get(name).is_some_and(|&i| self.slots[i].frozen)
    }

    /// All tensors as a [`Weights`] map (PyTorch layout).
    pub fn to_weights(&self) -> Weights {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.tensor.clone()))
            .collect()
    }

    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub(crate) fn slot_mut(&mut self, i: usize) -> &mut Tensor {
        self.clock += 1;
        self.slots[i].version = self.clock;
        &mut self.slots[i].tensor
    }

    pub(crate) fn set_frozen(&mut self, i: usize, frozen: bool) {
        self.slots[i].frozen = frozen;
    }

    /// Slot index of `node`'s parameter of `kind`.
    pub(crate) fn slot_of(&self, node: NodeId, kind: ParamKind) -> Option<usize> {
        self.by_node[node.0][kind_idx(kind)]
    }

    /// Data of `node`'s parameter of `kind`.
    pub(crate) fn data(&self, node: NodeId, kind: ParamKind) -> Option<&[f32]> {
        self.slot_of(node, kind)
            .map(|i| self.slots[i].tensor.data())
    }

    /// Version of `node`'s parameter of `kind` (0 if absent).
    pub(crate) fn version(&self, node: NodeId, kind: ParamKind) -> u64 {
        self.slot_of(node, kind)
            .map_or(0, |i| self.slots[i].version)
    }

    /// Whether `node`'s parameter of `kind` exists, is trainable and is not frozen.
    pub(crate) fn wants_grad(&self, node: NodeId, kind: ParamKind) -> bool {
        self.slot_of(node, kind)
            .is_some_and(|i| kind.is_trainable() && !self.slots[i].frozen)
    }
}
