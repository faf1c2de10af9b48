//! The unit of execution: a node, or a fused chain of nodes.

use shears_ir::{Graph, NodeId};

use crate::kernels::conv::ChainIo;

/// One unit of execution: a node, or a fused chain of nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
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
    /// Inference only: conv with no BN (ONNX exports fold BN into the conv) whose only
    /// consumer is a ReLU, or with `add = Some((add, other))` a two-input add of `other`
    /// (computed earlier) whose only consumer is the ReLU `relu`: the activation (and the
    /// residual sum) in the conv's epilogue.
    ConvAct {
        conv: NodeId,
        relu: NodeId,
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
    pub(super) fn first(&self) -> NodeId {
        match *self {
            Step::Op(id) => id,
            Step::BnRelu { bn, .. } | Step::BnAddRelu { bn, .. } => bn,
            Step::AddRelu { add, .. } => add,
            Step::ConvBn { conv, .. }
            | Step::ConvChain { conv, .. }
            | Step::ConvAct { conv, .. } => conv,
        }
    }

    /// The nodes fused away inside the step (never materialised).
    pub(super) fn absorbed(&self) -> Vec<NodeId> {
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
            Step::ConvAct { conv, add, .. } => {
                let mut v = vec![conv];
                v.extend(add.map(|(a, _)| a));
                v
            }
            Step::Op(_) => Vec::new(),
        }
    }

    /// The values the step reads.
    pub(super) fn inputs(&self, g: &Graph) -> Vec<NodeId> {
        match *self {
            Step::BnAddRelu { bn, other, .. } => vec![g.node(bn).inputs[0], other],
            Step::ConvBn {
                conv,
                add: Some((_, other)),
                ..
            }
            | Step::ConvAct {
                conv,
                add: Some((_, other)),
                ..
            } => vec![g.node(conv).inputs[0], other],
            _ => g.node(self.first()).inputs.clone(),
        }
    }

    /// The node whose value the step produces.
    pub(super) fn out(&self) -> NodeId {
        match *self {
            Step::Op(id) => id,
            Step::BnRelu { relu, .. }
            | Step::AddRelu { relu, .. }
            | Step::BnAddRelu { relu, .. } => relu,
            Step::ConvBn { bn, relu, .. } => relu.unwrap_or(bn),
            Step::ConvAct { relu, .. } => relu,
            Step::ConvChain {
                bn2, relu2, res, ..
            } => res.map_or(relu2.unwrap_or(bn2), |(_, r)| r),
        }
    }
}

pub(super) fn step_label(g: &Graph, s: Step) -> &'static str {
    match s {
        Step::Op(id) => g.node(id).op.type_name(),
        Step::BnRelu { .. } => "batch_norm2d+relu",
        Step::AddRelu { .. } => "add+relu",
        Step::BnAddRelu { .. } => "batch_norm2d+add+relu",
        Step::ConvBn { add: Some(_), .. } => "conv2d+bn+add+relu",
        Step::ConvBn { relu: Some(_), .. } => "conv2d+bn+relu",
        Step::ConvBn { relu: None, .. } => "conv2d+bn",
        Step::ConvAct { add: Some(_), .. } => "conv2d+add+relu",
        Step::ConvAct { add: None, .. } => "conv2d+relu",
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
