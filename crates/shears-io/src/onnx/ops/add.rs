//! `Add` and `Sum`, to and from the n-ary [`Op::Add`].
//!
//! An `Add` of two computed values of equal shape is an [`Op::Add`]; the `Add` of a constant
//! vector after a `MatMul` becomes that linear layer's bias (or, in a channels-last region, the
//! bias of the 1x1 conv the `MatMul` became); any other `Add` (broadcasting, or
//! of a constant) is a broadcasting [`Op::Binary`] ([`super::binary`]). `Sum` adds values of
//! equal shape only.

use shears_ir::{BinaryKind, Node, Op};

use super::super::channels_last;
use super::super::context::Ctx;
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::registry::OpSpec;
use super::super::ImportError;
use super::{activation, binary, linear};

/// `Add(A, B)` of two computed values of equal shape, or a linear bias.
pub(crate) const ADD: OpSpec = OpSpec {
    op_type: "Add",
    min_opset: 1,
    inputs: (2, 2),
    outputs: (1, 1),
    convert: convert_add,
};

/// `Sum(X1, ..., Xn)` of computed values of equal shape.
pub(crate) const SUM: OpSpec = OpSpec {
    op_type: "Sum",
    min_opset: 1,
    inputs: (1, usize::MAX),
    outputs: (1, 1),
    convert: convert_sum,
};

fn add_values(ctx: &mut Ctx, node: NodeView<'_>, n: usize) -> Result<(), ImportError> {
    let mut acts = Vec::with_capacity(n);
    for i in 0..n {
        acts.push(ctx.act(node, i)?);
    }
    if let Some(a) = acts.iter().find(|a| a.dims != acts[0].dims) {
        return Err(node.unsupported(format!(
            "broadcasting add of per-sample dims {:?} and {:?}",
            acts[0].dims, a.dims
        )));
    }
    let inputs: Vec<usize> = acts.iter().map(|a| a.node).collect();
    let op = if n == 1 { Op::Identity } else { Op::Add };
    let idx = ctx.push(node, None, op, &inputs, Vec::new())?;
    ctx.define_act(node, idx, acts.swap_remove(0).dims)
}

fn convert_add(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let constant = [ctx.is_constant(node, 0), ctx.is_constant(node, 1)];
    match constant {
        [false, false] => {
            let (a, b) = (ctx.act(node, 0)?, ctx.act(node, 1)?);
            if a.dims == b.dims {
                add_values(ctx, node, 2)
            } else {
                binary::convert(ctx, node, BinaryKind::Add)
            }
        }
        [true, true] => Err(node.unsupported("adding two constants")),
        _ => {
            let (xi, ci) = if constant[1] { (0, 1) } else { (1, 0) };
            let x = ctx.act(node, xi)?;
            let c = ctx.constant(node, ci)?;
            let x_name = node.input(xi).expect("act() found it");
            if activation::fold_add(ctx, node, &x, x_name, &c)? {
                return Ok(());
            }
            if linear::fuse_bias(ctx, node, &x, x_name, &c)?
                || channels_last::fuse_bias(ctx, node, &x, x_name, &c)?
            {
                Ok(())
            } else {
                binary::convert(ctx, node, BinaryKind::Add)
            }
        }
    }
}

fn convert_sum(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    add_values(ctx, node, node.n_inputs())
}

/// Writes `Add` for two inputs, `Sum` for more.
pub(crate) fn export(cx: &mut ExportCtx, node: &Node, inputs: &[String], out: &str) {
    let op_type = if inputs.len() == 2 { "Add" } else { "Sum" };
    cx.node(op_type, &node.name, inputs.to_vec(), out, Vec::new());
}
