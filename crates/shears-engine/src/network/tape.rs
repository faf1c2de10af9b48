//! The tape: what a recorded forward pass keeps for backward.

use shears_ir::{NodeId, Op, ParamKind};

use super::forward::{Pass, Val};
use super::step::Step;
use super::{Mode, Network};
use crate::kernels::binary;

/// A batch norm's statistics and affine factors, per channel, as its forward used them.
#[derive(Clone, Debug, Default)]
pub(super) struct BnSaved {
    pub(super) mean: Vec<f32>,
    pub(super) invstd: Vec<f32>,
    pub(super) scale: Vec<f32>,
    pub(super) shift: Vec<f32>,
}

/// What a node's backward needs besides values.
#[derive(Debug, Default)]
pub(super) enum Saved {
    #[default]
    None,
    Bn(BnSaved),
    Argmax(Vec<u32>),
    Dropout(u64),
}

/// What a recorded forward pass keeps for backward.
pub(super) struct Tape {
    pub(super) n: usize,
    pub(super) mode: Mode,
    pub(super) steps: Vec<Step>,
    pub(super) vals: Vec<Option<Vec<f32>>>,
    pub(super) saved: Vec<Saved>,
    pub(super) computed: Vec<bool>,
    pub(super) absorbed: Vec<bool>,
    pub(super) fed: Vec<bool>,
    pub(super) release_after: Vec<Vec<NodeId>>,
    pub(super) grad_slots: Vec<bool>,
}

impl Network {
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

    /// The values that backward of `steps` reads (per node), and per step the values that
    /// backward no longer needs once it has run that step (values are released after their
    /// first reader, backward running the steps in reverse).
    pub(super) fn tape_release(&self, steps: &[Step]) -> (Vec<bool>, Vec<Vec<NodeId>>) {
        let nn = self.graph.len();
        let mut keep = vec![false; nn];
        let mut release_after: Vec<Vec<NodeId>> = vec![Vec::new(); steps.len()];
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
                (Op::BatchNorm2d(_) | Op::Act(_) | Op::LayerNorm(_), _) => inp,
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
            if matches!(&node.op, Op::Binary(b) if binary::reads_operands(b.kind)) {
                for &v in &node.inputs {
                    keep[v.0] = true;
                    first_user[v.0] = first_user[v.0].min(si);
                }
            }
        }
        for (v, &si) in first_user.iter().enumerate() {
            if si != usize::MAX {
                release_after[si].push(NodeId(v));
            }
        }
        (keep, release_after)
    }

    /// The tape of a finished recording pass.
    pub(super) fn make_tape(
        &self,
        pass: Pass<'_>,
        steps: Vec<Step>,
        fed: Vec<bool>,
        release_after: Vec<Vec<NodeId>>,
    ) -> Tape {
        let nn = self.graph.len();
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
        let vals = pass
            .vals
            .into_iter()
            .map(|v| {
                v.map(|v| match v {
                    Val::Own(b) => b,
                    Val::Ref(r) => r.to_vec(),
                })
            })
            .collect();
        Tape {
            n: pass.n,
            mode: pass.mode,
            steps,
            vals,
            saved: pass.saved,
            computed,
            absorbed,
            fed,
            release_after,
            grad_slots,
        }
    }
}
