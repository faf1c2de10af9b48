//! `Concat` along the channel axis, to and from [`Op::Concat`].

use shears_ir::{Node, Op};

use super::super::context::Ctx;
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::proto::AttributeProto;
use super::super::registry::OpSpec;
use super::super::ImportError;
use super::axis;

/// `Concat(X1, ..., Xn)` with `axis = 1`.
pub(crate) const CONCAT: OpSpec = OpSpec {
    op_type: "Concat",
    min_opset: 4,
    inputs: (1, usize::MAX),
    outputs: (1, 1),
    convert,
};

fn convert(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let n = node.n_inputs();
    let mut acts = Vec::with_capacity(n);
    for i in 0..n {
        acts.push(ctx.act(node, i)?);
    }
    let rank = acts[0].dims.len() + 1;
    let a = node.attr_int("axis", i64::MIN)?;
    if a == i64::MIN {
        return Err(node.corrupt("axis is required"));
    }
    if axis(node, a, rank)? != 1 {
        return Err(node.unsupported(format!(
            "concatenation along axis {a}; only the channel axis (1) is supported"
        )));
    }
    let held_as_given = acts.iter().all(|x| x.dims == ctx.shape(x.node));
    let pooled = acts
        .iter()
        .all(|x| x.dims.len() == 3 && x.dims[1..] == [1, 1] && ctx.shape(x.node).len() == 1);
    if !held_as_given && !pooled {
        return Err(node.unsupported("concatenating globally pooled and other values"));
    }
    if n == 1 {
        let idx = ctx.push(node, None, Op::Identity, &[acts[0].node], Vec::new())?;
        return ctx.define_act(node, idx, acts.swap_remove(0).dims);
    }
    let inputs: Vec<usize> = acts.iter().map(|x| x.node).collect();
    let idx = ctx.push(node, None, Op::Concat, &inputs, Vec::new())?;
    let mut dims = acts.swap_remove(0).dims;
    dims[0] = ctx.shape(idx)[0];
    ctx.define_act(node, idx, dims)
}

/// Writes `Concat` with `axis = 1`.
pub(crate) fn export(cx: &mut ExportCtx, node: &Node, inputs: &[String], out: &str) {
    cx.node(
        "Concat",
        &node.name,
        inputs.to_vec(),
        out,
        vec![AttributeProto::int("axis", 1)],
    );
}
