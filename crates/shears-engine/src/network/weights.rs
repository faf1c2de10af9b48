//! Reading, replacing, freezing and unfreezing the parameters.

use shears_ir::{NodeId, ParamKind, Weights};

use crate::error::{EngineError, Result};

use super::Network;

impl Network {
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
}
