//! Broadcasting binary ops ([`Op::Binary`]) in the executor: forward, and the gradients of both
//! operands (a computed input's, or the constant operand's `weight`).

use shears_ir::{NodeId, Op, ParamKind};

use super::backward::{kept, BwdCtx};
use super::Gradients;
use super::Network;
use crate::kernels::binary::{self, BinaryGeom, Side};

impl Network {
    /// The geometry of binary node `id` and its constant operand, channels last, if it has one.
    fn binary_parts(&self, id: NodeId) -> (BinaryGeom, Option<Vec<f32>>) {
        let Op::Binary(op) = &self.graph.node(id).op else {
            unreachable!("a binary node")
        };
        let g = BinaryGeom::new(op, &self.graph.input_shapes(id), self.graph.shape(id));
        let k = op.constant.as_ref().map(|c| {
            let w = self
                .params
                .data(id, ParamKind::Weight)
                .expect("a constant operand is the node's weight");
            binary::to_channels_last(&c.shape, w)
        });
        (g, k)
    }

    /// `y = a op b` for binary node `id` over `n` images; `xs` are its computed inputs.
    pub(super) fn binary_forward(&self, id: NodeId, n: usize, xs: &[&[f32]], y: &mut [f32]) {
        let Op::Binary(op) = &self.graph.node(id).op else {
            unreachable!("a binary node")
        };
        let (g, k) = self.binary_parts(id);
        let (a, b) = binary::operands(op, xs, k.as_deref());
        self.backend.binary_forward(&g, n, a, b, y);
    }

    /// Gradients of binary node `id` from its output gradient `dy`: each computed input's
    /// where needed, the constant operand's where wanted.
    pub(super) fn binary_backward(
        &mut self,
        id: NodeId,
        bw: &BwdCtx<'_>,
        dy: &[f32],
        grads: &mut [Option<Vec<f32>>],
        out: &mut Gradients,
    ) {
        let n = bw.n;
        let Op::Binary(op) = self.graph.node(id).op.clone() else {
            unreachable!("a binary node")
        };
        let inputs = self.graph.node(id).inputs.clone();
        let (g, k) = self.binary_parts(id);
        let reads = binary::reads_operands(op.kind);
        let xs: Vec<&[f32]> = inputs
            .iter()
            .map(|&j| if reads { kept(bw, j) } else { &[][..] })
            .collect();
        let k_read = k.as_deref().map(|k| if reads { k } else { &[][..] });
        let (a, b) = binary::operands(&op, &xs, k_read);
        let backend = self.backend.clone();
        // The computed inputs in operand order, then the constant's side.
        let (sides, k_side): (Vec<(Side, NodeId)>, Option<Side>) = match &op.constant {
            Some(c) if c.left => (vec![(Side::Right, inputs[0])], Some(Side::Left)),
            Some(_) => (vec![(Side::Left, inputs[0])], Some(Side::Right)),
            None => (
                vec![(Side::Left, inputs[0]), (Side::Right, inputs[1])],
                None,
            ),
        };
        for (side, j) in sides {
            if bw.needg[j.0] {
                let (mut dx, acc) = self.grad_dst(grads, n, j);
                backend.binary_backward(&g, side, n, a, b, dy, &mut dx, acc);
                grads[j.0] = Some(dx);
            }
        }
        if let (Some(side), Some(c), true) = (k_side, &op.constant, bw.pw[id.0][0]) {
            let len: usize = c.shape.iter().product();
            let mut dk = vec![0.0; len];
            backend.binary_backward(&g, side, n, a, b, dy, &mut dk, false);
            let dk = binary::to_channels_first(&c.shape, &dk);
            self.insert_grad(out, id, ParamKind::Weight, dk);
        }
    }
}
