//! `Relu` and [`Op::Relu`](shears_ir::Op::Relu).

use shears_ir::{Node, Op};

use super::super::context::Ctx;
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::registry::OpSpec;
use super::super::ImportError;

/// `Relu(X)`.
pub(crate) const RELU: OpSpec = OpSpec {
    op_type: "Relu",
    min_opset: 1,
    inputs: (1, 1),
    outputs: (1, 1),
    convert,
};

fn convert(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let x = ctx.act(node, 0)?;
    let idx = ctx.push(node, None, Op::Relu, &[x.node], Vec::new())?;
    ctx.define_act(node, idx, x.dims)
}

/// Writes `Relu`.
pub(crate) fn export(cx: &mut ExportCtx, node: &Node, inputs: &[String], out: &str) {
    cx.node("Relu", &node.name, vec![inputs[0].clone()], out, Vec::new());
}
