//! `Gemm`, and `MatMul` followed by `Add`, to and from [`Linear`].
//!
//! shears keeps PyTorch's `[out, in]` weight, which is `Gemm` with `transB = 1`; a `MatMul`
//! weight is `[in, out]` and is transposed on import.

use shears_ir::{Linear, Node, Op, ParamKind, Tensor};

use super::super::context::{Act, Ctx, Fusion};
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::proto::AttributeProto;
use super::super::registry::OpSpec;
use super::super::tensor::ConstTensor;
use super::super::ImportError;

/// `Gemm(A, B[, C])` with `alpha = beta = 1`, `transA = 0` and constant `B` and `C`.
pub(crate) const GEMM: OpSpec = OpSpec {
    op_type: "Gemm",
    min_opset: 1,
    inputs: (2, 3),
    outputs: (1, 1),
    convert: convert_gemm,
};

/// `MatMul(A, B)` with a constant 2-D `B`; a following `Add` of a constant vector becomes the
/// bias.
pub(crate) const MAT_MUL: OpSpec = OpSpec {
    op_type: "MatMul",
    min_opset: 1,
    inputs: (2, 2),
    outputs: (1, 1),
    convert: convert_mat_mul,
};

fn vector_input(ctx: &mut Ctx, node: NodeView<'_>) -> Result<Act, ImportError> {
    let a = ctx.act(node, 0)?;
    if a.dims.len() != 1 {
        return Err(node.unsupported(format!(
            "input must be a 2-D [N, F] matrix, got per-sample dims {:?}",
            a.dims
        )));
    }
    Ok(a)
}

/// `[rows, cols]` data transposed to `[cols, rows]`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    t
}

/// The `[out, in]` weight from a 2-D constant stored `[out, in]` (`out_first`) or `[in, out]`.
fn weight(
    node: NodeView<'_>,
    b: &ConstTensor,
    in_features: usize,
    out_first: bool,
) -> Result<(usize, Tensor), ImportError> {
    let &[r, c] = b.dims.as_slice() else {
        return Err(node.unsupported(format!("weight of shape {:?} is not 2-D", b.dims)));
    };
    let data = b.f32s("linear weight")?;
    let (out, inp, w) = if out_first {
        (r, c, data.to_vec())
    } else {
        (c, r, transpose(data, r, c))
    };
    if inp != in_features {
        return Err(node.corrupt(format!(
            "weight {:?} does not fit {in_features} input features",
            b.dims
        )));
    }
    let t = Tensor::new(vec![out, inp], w).map_err(|e| node.corrupt(e))?;
    Ok((out, t))
}

/// A bias of `out` values from a constant of shape `[out]`, `[1, out]` or one broadcast value.
fn bias(node: NodeView<'_>, c: &ConstTensor, out: usize) -> Result<Option<Tensor>, ImportError> {
    let v = c.f32s("linear bias")?;
    let fits = matches!(c.dims.as_slice(), [n] | [1, n] if *n == out);
    if fits {
        Ok(Some(
            Tensor::new(vec![out], v.to_vec()).map_err(|e| node.corrupt(e))?,
        ))
    } else if v.len() == 1 && c.dims.len() <= 2 {
        Ok(Some(Tensor::full(&[out], v[0])))
    } else {
        Ok(None)
    }
}

fn convert_gemm(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let a = vector_input(ctx, node)?;
    if node.attr_int("transA", 0)? != 0 {
        return Err(node.unsupported("transA=1"));
    }
    let alpha = node.attr_float("alpha", 1.0)?;
    let beta = node.attr_float("beta", 1.0)?;
    let b = ctx.constant(node, 1)?;
    let c = ctx.opt_constant(node, 2)?;
    if alpha != 1.0 || (c.is_some() && beta != 1.0) {
        return Err(node.unsupported(format!("alpha {alpha} and beta {beta} (only 1 and 1)")));
    }
    let trans_b = node.attr_int("transB", 0)? != 0;
    let (out, w) = weight(node, &b, a.dims[0], trans_b)?;
    let mut params = vec![(ParamKind::Weight, w)];
    if let Some(c) = &c {
        let t = bias(node, c, out)?.ok_or_else(|| {
            node.unsupported(format!("bias of shape {:?} for {out} outputs", c.dims))
        })?;
        params.push((ParamKind::Bias, t));
    }
    let op = Linear {
        in_features: a.dims[0],
        out_features: out,
        bias: c.is_some(),
    };
    let idx = ctx.push(node, node.input(1), op.into(), &[a.node], params)?;
    ctx.define_act(node, idx, vec![out])
}

fn convert_mat_mul(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let a = vector_input(ctx, node)?;
    let b = ctx.constant(node, 1)?;
    let (out, w) = weight(node, &b, a.dims[0], false)?;
    let op = Linear {
        in_features: a.dims[0],
        out_features: out,
        bias: false,
    };
    let idx = ctx.push(
        node,
        node.input(1),
        op.into(),
        &[a.node],
        vec![(ParamKind::Weight, w)],
    )?;
    ctx.node_mut(idx).fusion = Fusion::LinearBias;
    ctx.define_act(node, idx, vec![out])
}

/// Folds `Add(x, c)` into the bias-less linear layer computing `x` when `x` has no other use
/// and `c` is a vector of its width. Returns whether it did.
pub(crate) fn fuse_bias(
    ctx: &mut Ctx,
    node: NodeView<'_>,
    x: &Act,
    x_name: &str,
    c: &ConstTensor,
) -> Result<bool, ImportError> {
    let pending = &ctx.nodes()[x.node];
    let Op::Linear(l) = &pending.op else {
        return Ok(false);
    };
    if pending.fusion != Fusion::LinearBias || ctx.uses(x_name) != 1 {
        return Ok(false);
    }
    let Some(b) = bias(node, c, l.out_features)? else {
        return Ok(false);
    };
    let op = Linear {
        bias: true,
        ..l.clone()
    };
    let mut params = pending.params.clone();
    params.push((ParamKind::Bias, b));
    ctx.refit(node, x.node, op.into(), params)?;
    ctx.node_mut(x.node).fusion = Fusion::None;
    ctx.define_act(node, x.node, x.dims.clone())?;
    Ok(true)
}

/// Writes `Gemm` with `transB = 1`.
pub(crate) fn export(cx: &mut ExportCtx, node: &Node, l: &Linear, inputs: &[String], out: &str) {
    let mut ins = vec![inputs[0].clone(), node.param_name(ParamKind::Weight)];
    if l.bias {
        ins.push(node.param_name(ParamKind::Bias));
    }
    cx.node(
        "Gemm",
        &node.name,
        ins,
        out,
        vec![AttributeProto::int("transB", 1)],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_swaps_axes() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}
