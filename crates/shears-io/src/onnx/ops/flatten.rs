//! `Flatten`, `Reshape` to `[N, features]` and `Squeeze`, to and from [`Op::Flatten`].
//!
//! Flattening the keep-dims global pool it alone consumes turns that pool into a shears global
//! pool and makes no node (see [`super::pool`]), as does flattening a value that is already a
//! vector in shears; flattening a feature map, or a vector that ONNX also holds as one, makes a
//! shears `Flatten`.

use shears_ir::{Node, Op};

use super::super::context::{Act, Ctx};
use super::super::export::ExportCtx;
use super::super::fold;
use super::super::node::NodeView;
use super::super::proto::AttributeProto;
use super::super::registry::OpSpec;
use super::super::ImportError;
use super::{axis, pool, shuffle};

/// `Flatten(X)` with `axis = 1`.
pub(crate) const FLATTEN: OpSpec = OpSpec {
    op_type: "Flatten",
    min_opset: 1,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: convert_flatten,
};

/// `Reshape(X, shape)` to `[N, features]` with a constant shape.
pub(crate) const RESHAPE: OpSpec = OpSpec {
    op_type: "Reshape",
    min_opset: 1,
    inputs: (1, 2),
    outputs: (1, 1),
    convert: convert_reshape,
};

/// `Squeeze(X[, axes])` of the unit spatial axes left by a global pool.
pub(crate) const SQUEEZE: OpSpec = OpSpec {
    op_type: "Squeeze",
    min_opset: 1,
    inputs: (1, 2),
    outputs: (1, 1),
    convert: convert_squeeze,
};

/// Binds the output of `node` to `x` flattened to `[N, features]`.
fn to_vector(ctx: &mut Ctx, node: NodeView<'_>, x: Act) -> Result<(), ImportError> {
    let numel: usize = x.dims.iter().product();
    let name = node.input(0).expect("the converter resolved input 0");
    if let Some(idx) = pool::collapse_keepdims(ctx, node, &x, name)? {
        ctx.define_act(node, idx, vec![numel])
    } else if x.dims == ctx.shape(x.node) {
        let idx = ctx.push(node, None, Op::Flatten, &[x.node], Vec::new())?;
        ctx.define_act(node, idx, vec![numel])
    } else if ctx.shape(x.node) == [numel] {
        ctx.define_act(node, x.node, vec![numel])
    } else {
        Err(node.unsupported(format!(
            "flattening per-sample dims {:?} held as shape {:?}",
            x.dims,
            ctx.shape(x.node)
        )))
    }
}

fn convert_flatten(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let x = ctx.act(node, 0)?;
    let rank = x.dims.len() + 1;
    let a = node.attr_int("axis", 1)?;
    let a = if a == rank as i64 {
        rank
    } else {
        axis(node, a, rank)?
    };
    if a != 1 {
        return Err(node.unsupported(format!(
            "axis {a}; only flattening to [N, features] (axis 1) is supported"
        )));
    }
    to_vector(ctx, node, x)
}

fn convert_reshape(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let target: Vec<i64> = if node.opset < 5 {
        node.attr_ints("shape")?
            .ok_or_else(|| node.corrupt("no shape"))?
            .to_vec()
    } else {
        ctx.constant(node, 1)?.i64s("Reshape shape")?.to_vec()
    };
    let x = ctx.act(node, 0)?;
    let allow_zero = node.attr_int("allowzero", 0)? != 0;
    let numel = x.dims.iter().product::<usize>() as i64;
    let copy = |i: usize| -> Option<i64> {
        if allow_zero {
            None
        } else if i == 0 {
            Some(BATCH)
        } else {
            x.dims.get(i - 1).map(|&d| d as i64)
        }
    };
    // Marks "the batch size, whatever it is"; no valid target entry is this negative.
    const BATCH: i64 = i64::MIN;
    let resolve = |i: usize, v: i64| -> Option<i64> {
        match v {
            0 => copy(i),
            v if i == 0 && ctx.batch.is_some_and(|b| b as i64 == v) => Some(BATCH),
            fold::BATCH_DIM if i == 0 => Some(BATCH),
            v => Some(v),
        }
    };
    let flattening = match target.as_slice() {
        &[a, b] => match (resolve(0, a), resolve(1, b)) {
            (Some(BATCH), Some(b)) => b == -1 || b == numel,
            (Some(-1), Some(b)) => b == numel,
            _ => false,
        },
        _ => false,
    };
    if !flattening {
        return shuffle::convert_reshape(ctx, node, x, &target);
    }
    to_vector(ctx, node, x)
}

fn convert_squeeze(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let x = ctx.act(node, 0)?;
    let rank = x.dims.len() + 1;
    let axes: Option<Vec<i64>> = if node.opset >= 13 {
        ctx.opt_constant(node, 1)?
            .map(|t| t.i64s("Squeeze axes").map(<[i64]>::to_vec))
            .transpose()?
    } else {
        node.attr_ints("axes")?.map(<[i64]>::to_vec)
    };
    let drop: Vec<usize> = match axes {
        Some(axes) => axes
            .iter()
            .map(|&a| axis(node, a, rank))
            .collect::<Result<_, _>>()?,
        None => (1..rank).filter(|&a| x.dims[a - 1] == 1).collect(),
    };
    if drop.contains(&0) {
        return Err(node.unsupported("squeezing the batch axis"));
    }
    if drop.iter().any(|&a| x.dims[a - 1] != 1) {
        return Err(node.corrupt(format!(
            "squeezing axes {drop:?} of per-sample dims {:?} that are not 1",
            x.dims
        )));
    }
    let dims: Vec<usize> = (1..rank)
        .filter(|a| !drop.contains(a))
        .map(|a| x.dims[a - 1])
        .collect();
    if dims.len() == 1 && x.dims.len() == 3 && x.dims == ctx.shape(x.node) {
        to_vector(ctx, node, x)
    } else if dims == ctx.shape(x.node) || dims == x.dims {
        ctx.define_act(node, x.node, dims)
    } else {
        Err(node.unsupported(format!(
            "squeeze of per-sample dims {:?} to {dims:?}",
            x.dims
        )))
    }
}

/// Writes `Flatten` with `axis = 1`.
pub(crate) fn export(cx: &mut ExportCtx, node: &Node, inputs: &[String], out: &str) {
    cx.node(
        "Flatten",
        &node.name,
        vec![inputs[0].clone()],
        out,
        vec![AttributeProto::int("axis", 1)],
    );
}
