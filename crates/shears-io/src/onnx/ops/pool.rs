//! Pooling: `MaxPool`, `AveragePool`, `GlobalAveragePool` and `ReduceMean` over H and W, to
//! and from [`Pool2d`] and [`Op::GlobalAvgPool`].
//!
//! A shears global pool yields a `[C]` vector where ONNX keeps `[C, 1, 1]`; the export
//! therefore writes `GlobalAveragePool` followed by `Flatten`. On import `GlobalAveragePool`
//! (and `ReduceMean` with `keepdims`) first becomes an average pool whose window is the whole
//! map, `[C, 1, 1]` as in ONNX, so that a squeeze-excitation block can run 1x1 convs and a
//! broadcasting `Mul` on it; a flatten, reshape or squeeze that is its only consumer turns it
//! into a global pool ([`collapse_keepdims`]) and makes no node.

use shears_ir::{Node, Op, Pool2d};

use super::super::context::{Act, Ctx};
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::proto::AttributeProto;
use super::super::registry::OpSpec;
use super::super::ImportError;
use super::{axis, i64s, pair, spatial_pads};

/// `MaxPool(X)` without dilation; the indices output must be unused.
pub(crate) const MAX_POOL: OpSpec = OpSpec {
    op_type: "MaxPool",
    min_opset: 1,
    inputs: (1, 1),
    outputs: (1, 2),
    convert: convert_max,
};

/// `AveragePool(X)` without dilation.
pub(crate) const AVERAGE_POOL: OpSpec = OpSpec {
    op_type: "AveragePool",
    min_opset: 1,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: convert_avg,
};

/// `GlobalAveragePool(X)`.
pub(crate) const GLOBAL_AVERAGE_POOL: OpSpec = OpSpec {
    op_type: "GlobalAveragePool",
    min_opset: 1,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: convert_global,
};

/// `ReduceMean(X[, axes])` over exactly the two spatial axes (what PyTorch's
/// `adaptive_avg_pool2d(x, 1)` and `x.mean((2, 3))` export to).
pub(crate) const REDUCE_MEAN: OpSpec = OpSpec {
    op_type: "ReduceMean",
    min_opset: 1,
    inputs: (1, 2),
    outputs: (1, 1),
    convert: convert_reduce_mean,
};

fn window(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(usize, Pool2d), ImportError> {
    let x = ctx.feature_map(node, 0)?;
    if node.attr_ints("kernel_shape")?.is_none() {
        return Err(node.corrupt("kernel_shape is required"));
    }
    let kernel = pair(node, "kernel_shape", 1)?;
    let stride = pair(node, "strides", 1)?;
    if pair(node, "dilations", 1)? != [1, 1] {
        return Err(node.unsupported("dilated pooling"));
    }
    let padding = spatial_pads(node, &x.dims[1..], kernel, stride)?;
    let ceil_mode = match node.attr_int("ceil_mode", 0)? {
        0 => false,
        1 => true,
        v => return Err(node.corrupt(format!("ceil_mode {v} is neither 0 nor 1"))),
    };
    Ok((
        x.node,
        Pool2d {
            kernel,
            stride,
            padding,
            count_include_pad: true,
            ceil_mode,
        },
    ))
}

fn convert_max(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    ctx.require_unused_output(node, 1)?;
    let (x, pool) = window(ctx, node)?;
    let idx = ctx.push(node, None, Op::MaxPool2d(pool), &[x], Vec::new())?;
    let dims = ctx.shape(idx).to_vec();
    ctx.define_act(node, idx, dims)
}

fn convert_avg(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let (x, mut pool) = window(ctx, node)?;
    pool.count_include_pad = node.attr_int("count_include_pad", 0)? != 0;
    let idx = ctx.push(node, None, Op::AvgPool2d(pool), &[x], Vec::new())?;
    let dims = ctx.shape(idx).to_vec();
    ctx.define_act(node, idx, dims)
}

/// The average pool over the whole `h` x `w` map: `[C, H, W]` to `[C, 1, 1]`.
fn whole_map(h: usize, w: usize) -> Pool2d {
    Pool2d {
        kernel: [h, w],
        stride: [1, 1],
        padding: [0; 4],
        count_include_pad: true,
        ceil_mode: false,
    }
}

/// Pushes the keep-dims global pool of feature map `x`.
fn push_keepdims(ctx: &mut Ctx, node: NodeView<'_>, x: &Act) -> Result<(), ImportError> {
    let pool = whole_map(x.dims[1], x.dims[2]);
    let idx = ctx.push(node, None, Op::AvgPool2d(pool), &[x.node], Vec::new())?;
    ctx.define_act(node, idx, vec![x.dims[0], 1, 1])
}

/// If `x` is a keep-dims global pool ([`whole_map`]) whose value `name` has no other use,
/// turns it into an [`Op::GlobalAvgPool`] (`[C]`) and returns its node.
pub(crate) fn collapse_keepdims(
    ctx: &mut Ctx,
    node: NodeView<'_>,
    x: &Act,
    name: &str,
) -> Result<Option<usize>, ImportError> {
    let pending = &ctx.nodes()[x.node];
    let Op::AvgPool2d(p) = &pending.op else {
        return Ok(None);
    };
    let in_shape = ctx.shape(pending.inputs[0]);
    let whole = in_shape.len() == 3 && *p == whole_map(in_shape[1], in_shape[2]);
    if !whole || ctx.uses(name) != 1 {
        return Ok(None);
    }
    ctx.refit(node, x.node, Op::GlobalAvgPool, Vec::new())?;
    Ok(Some(x.node))
}

fn convert_global(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let x = ctx.feature_map(node, 0)?;
    push_keepdims(ctx, node, &x)
}

fn convert_reduce_mean(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let axes: Vec<i64> = if node.opset >= 18 {
        match ctx.opt_constant(node, 1)? {
            Some(t) => t.i64s("ReduceMean axes")?.to_vec(),
            None => Vec::new(),
        }
    } else {
        node.attr_ints("axes")?
            .map(<[i64]>::to_vec)
            .unwrap_or_default()
    };
    let mut norm = axes
        .iter()
        .map(|&a| axis(node, a, 4))
        .collect::<Result<Vec<_>, _>>()?;
    norm.sort_unstable();
    if norm != [2, 3] {
        return Err(node.unsupported(format!(
            "mean over axes {axes:?}; only the spatial axes (2, 3) map to a global pool"
        )));
    }
    let x = ctx.feature_map(node, 0)?;
    if node.attr_int("keepdims", 1)? != 0 {
        return push_keepdims(ctx, node, &x);
    }
    let idx = ctx.push(node, None, Op::GlobalAvgPool, &[x.node], Vec::new())?;
    ctx.define_act(node, idx, vec![x.dims[0]])
}

fn window_attrs(p: &Pool2d) -> Vec<AttributeProto> {
    let mut attrs = vec![
        AttributeProto::ints("kernel_shape", &i64s(p.kernel)),
        AttributeProto::ints("strides", &i64s(p.stride)),
        AttributeProto::ints("pads", &i64s(p.padding)),
    ];
    if p.ceil_mode {
        attrs.push(AttributeProto::int("ceil_mode", 1));
    }
    attrs
}

/// Writes `MaxPool`.
pub(crate) fn export_max(
    cx: &mut ExportCtx,
    node: &Node,
    p: &Pool2d,
    inputs: &[String],
    out: &str,
) {
    cx.node(
        "MaxPool",
        &node.name,
        vec![inputs[0].clone()],
        out,
        window_attrs(p),
    );
}

/// Writes `AveragePool` with an explicit `count_include_pad`.
pub(crate) fn export_avg(
    cx: &mut ExportCtx,
    node: &Node,
    p: &Pool2d,
    inputs: &[String],
    out: &str,
) {
    let mut attrs = window_attrs(p);
    attrs.push(AttributeProto::int(
        "count_include_pad",
        p.count_include_pad as i64,
    ));
    cx.node(
        "AveragePool",
        &node.name,
        vec![inputs[0].clone()],
        out,
        attrs,
    );
}

/// Writes `GlobalAveragePool` and a `Flatten` to `[N, C]`.
pub(crate) fn export_global(cx: &mut ExportCtx, node: &Node, inputs: &[String], out: &str) {
    let pooled = cx.fresh(&format!("{}::pooled", node.name));
    cx.node(
        "GlobalAveragePool",
        &node.name,
        vec![inputs[0].clone()],
        &pooled,
        Vec::new(),
    );
    cx.node(
        "Flatten",
        &format!("{}::flatten", node.name),
        vec![pooled],
        out,
        vec![AttributeProto::int("axis", 1)],
    );
}
