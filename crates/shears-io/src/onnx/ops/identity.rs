//! `Identity` and `Dropout` (inference), to and from [`Op::Identity`] and [`Op::Dropout`].

use shears_ir::{Node, Op};

use super::super::context::{Ctx, Value};
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::registry::OpSpec;
use super::super::ImportError;

/// `Identity(X)`; of a constant it is that constant.
pub(crate) const IDENTITY: OpSpec = OpSpec {
    op_type: "Identity",
    min_opset: 1,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: convert_identity,
};

/// `Dropout(X[, ratio[, training_mode]])` in inference mode; the mask must be unused.
pub(crate) const DROPOUT: OpSpec = OpSpec {
    op_type: "Dropout",
    min_opset: 1,
    inputs: (1, 3),
    outputs: (1, 2),
    convert: convert_dropout,
};

fn convert_identity(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    if ctx.is_constant(node, 0) {
        let c = ctx.constant(node, 0)?;
        return ctx.define(node, 0, Value::Const(c));
    }
    let x = ctx.act(node, 0)?;
    let idx = ctx.push(node, None, Op::Identity, &[x.node], Vec::new())?;
    ctx.define_act(node, idx, x.dims)
}

fn convert_dropout(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    ctx.require_unused_output(node, 1)?;
    let p = if node.opset >= 12 {
        if let Some(t) = ctx.opt_constant(node, 2)? {
            if t.i64s("Dropout training_mode")?.iter().any(|&v| v != 0) {
                return Err(node.unsupported("training_mode=true"));
            }
        }
        match ctx.opt_constant(node, 1)? {
            Some(t) => t.scalar_f32("Dropout ratio")?,
            None => 0.5,
        }
    } else {
        node.attr_float("ratio", 0.5)?
    };
    if !(0.0..1.0).contains(&p) {
        return Err(node.corrupt(format!("ratio {p} is not in [0, 1)")));
    }
    let x = ctx.act(node, 0)?;
    let idx = ctx.push(node, None, Op::Dropout { p }, &[x.node], Vec::new())?;
    ctx.define_act(node, idx, x.dims)
}

/// Writes `Identity`.
pub(crate) fn export_identity(cx: &mut ExportCtx, node: &Node, inputs: &[String], out: &str) {
    cx.node(
        "Identity",
        &node.name,
        vec![inputs[0].clone()],
        out,
        Vec::new(),
    );
}

/// Writes `Dropout` with its ratio as a scalar initializer and no training mode, which every
/// runtime evaluates as the identity.
pub(crate) fn export_dropout(
    cx: &mut ExportCtx,
    node: &Node,
    p: f32,
    inputs: &[String],
    out: &str,
) {
    let ratio = cx.const_f32_scalar(&format!("{}::ratio", node.name), p);
    cx.node(
        "Dropout",
        &node.name,
        vec![inputs[0].clone(), ratio],
        out,
        Vec::new(),
    );
}
