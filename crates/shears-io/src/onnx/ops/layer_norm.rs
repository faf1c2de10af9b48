//! `LayerNormalization` to and from [`LayerNorm`] (normalisation over the channels of each
//! pixel).
//!
//! Read where it normalises exactly the channels of each pixel: over the last axis of a
//! channels-last value ([`super::super::channels_last`]), over axis 1 of an `[N, C, 1, 1]` map
//! or of an `[N, F]` matrix. Over axis 1 of a map with more than one pixel it would mix the
//! pixels, which shears does not represent: refused. Written (opset 17) as
//! `Transpose(0, 2, 3, 1)`, `LayerNormalization(axis = -1)`, `Transpose(0, 3, 1, 2)` for a
//! feature map and as one `LayerNormalization(axis = -1)` for a vector.

use shears_ir::{LayerNorm, Node, Op, ParamKind, Tensor};

use super::super::channels_last;
use super::super::context::{Act, Ctx};
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::proto::AttributeProto;
use super::super::registry::OpSpec;
use super::super::ImportError;
use super::axis;

/// `LayerNormalization(X, Scale[, B])` over the channels of each pixel; the mean and
/// inverse-deviation outputs must be unused.
pub(crate) const LAYER_NORMALIZATION: OpSpec = OpSpec {
    op_type: "LayerNormalization",
    min_opset: 17,
    inputs: (2, 3),
    outputs: (1, 3),
    convert,
};

fn convert(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    ctx.require_unused_output(node, 1)?;
    ctx.require_unused_output(node, 2)?;
    let a = node.attr_int("axis", -1)?;
    let eps = node.attr_float("epsilon", 1e-5)?;
    let name = node
        .input(0)
        .ok_or_else(|| node.corrupt("input 0 is missing"))?;
    let last = ctx.channels_last(name).cloned();
    let (x, nhwc) = match last {
        Some(x) => {
            if axis(node, a, 4)? != 3 {
                return Err(node.unsupported(format!(
                    "axis {a} of channels-last {name:?}; only the last axis (the channels) \
                     maps to a layer norm over channels"
                )));
            }
            (x, true)
        }
        None => {
            let x = ctx.act(node, 0)?;
            check_nchw(ctx, node, &x, a)?;
            (x, false)
        }
    };
    let c = x.dims[0];
    let op = LayerNorm { channels: c, eps };
    op_check(node, &op)?;
    let scale = ctx.constant(node, 1)?;
    let weight = param(node, scale.f32s("LayerNormalization scale")?, c, "scale")?;
    let bias = match ctx.opt_constant(node, 2)? {
        Some(b) => param(node, b.f32s("LayerNormalization bias")?, c, "bias")?,
        None => Tensor::zeros(&[c]),
    };
    let params = vec![(ParamKind::Weight, weight), (ParamKind::Bias, bias)];
    let idx = ctx.push(node, node.input(1), Op::LayerNorm(op), &[x.node], params)?;
    let out = Act {
        node: idx,
        dims: x.dims,
    };
    if nhwc {
        channels_last::define(ctx, node, out)
    } else {
        ctx.define_act(node, idx, out.dims)
    }
}

/// Accepts an NCHW input only where axis `a` normalises each pixel's channels alone.
fn check_nchw(ctx: &Ctx, node: NodeView<'_>, x: &Act, a: i64) -> Result<(), ImportError> {
    let rank = x.dims.len() + 1;
    let ax = axis(node, a, rank)?;
    let held = ctx.shape(x.node) == x.dims.as_slice();
    let one_pixel = matches!(x.dims.as_slice(), [_] | [_, 1, 1]);
    if ax == 1 && held && one_pixel {
        return Ok(());
    }
    Err(node.unsupported(format!(
        "axis {a} of per-sample dims {:?}: it normalises over more than the channels of one \
         pixel; only the last axis after Transpose(0, 2, 3, 1), or axis 1 of [N, C, 1, 1] or \
         [N, F], maps to a layer norm over channels",
        x.dims
    )))
}

fn op_check(node: NodeView<'_>, op: &LayerNorm) -> Result<(), ImportError> {
    Op::LayerNorm(op.clone())
        .check_config()
        .map_err(|m| node.unsupported(m))
}

/// A `[c]` parameter from a constant of `c` values (shape `[c]`, `[c, 1, 1]`, ...).
fn param(node: NodeView<'_>, v: &[f32], c: usize, what: &str) -> Result<Tensor, ImportError> {
    if v.len() != c {
        return Err(node.corrupt(format!("{what} of {} values for {c} channels", v.len())));
    }
    Tensor::new(vec![c], v.to_vec()).map_err(|e| node.corrupt(e))
}

/// Writes the layer norm of a feature map as the transposes around `LayerNormalization`, of
/// a vector as `LayerNormalization` alone.
pub(crate) fn export(
    cx: &mut ExportCtx,
    node: &Node,
    l: &LayerNorm,
    map: bool,
    inputs: &[String],
    out: &str,
) {
    let norm = |cx: &mut ExportCtx, name: &str, x: String, y: &str| {
        cx.node(
            "LayerNormalization",
            name,
            vec![
                x,
                node.param_name(ParamKind::Weight),
                node.param_name(ParamKind::Bias),
            ],
            y,
            vec![
                AttributeProto::int("axis", -1),
                AttributeProto::float("epsilon", l.eps),
            ],
        );
    };
    if !map {
        norm(cx, &node.name, inputs[0].clone(), out);
        return;
    }
    let nhwc = cx.fresh(&format!("{}::nhwc", node.name));
    let normed = cx.fresh(&format!("{}::normed", node.name));
    cx.node(
        "Transpose",
        &node.name,
        vec![inputs[0].clone()],
        &nhwc,
        vec![AttributeProto::ints("perm", &[0, 2, 3, 1])],
    );
    norm(cx, &format!("{}::norm", node.name), nhwc, &normed);
    cx.node(
        "Transpose",
        &format!("{}::nchw", node.name),
        vec![normed],
        out,
        vec![AttributeProto::ints("perm", &[0, 3, 1, 2])],
    );
}
