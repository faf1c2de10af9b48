//! `Conv` (2-D) and [`Conv2d`].
//!
//! ONNX `pads` for two spatial axes are `[x1_begin, x2_begin, x1_end, x2_end]`, which is
//! exactly shears' `[top, left, bottom, right]`; weights are OIHW in both.

use shears_ir::{Conv2d, Node, ParamKind};

use super::super::context::Ctx;
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::proto::AttributeProto;
use super::super::registry::OpSpec;
use super::super::ImportError;
use super::{i64s, pair, spatial_pads, to_dim};

/// `Conv(X, W[, B])` with constant weight and bias.
pub(crate) const CONV: OpSpec = OpSpec {
    op_type: "Conv",
    min_opset: 1,
    inputs: (2, 3),
    outputs: (1, 1),
    convert,
};

fn convert(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let x = ctx.feature_map(node, 0)?;
    let w = ctx.constant(node, 1)?;
    let b = ctx.opt_constant(node, 2)?;
    let &[m, cg, kh, kw] = w.dims.as_slice() else {
        return Err(node.unsupported(format!(
            "weight of shape {:?}; only 2-D convolutions are supported",
            w.dims
        )));
    };
    for &d in &w.dims {
        to_dim(node, d as i64, "weight dimension")?;
    }
    let groups = to_dim(node, node.attr_int("group", 1)?, "group")?;
    let c_in = x.dims[0];
    if groups == 0 || cg.checked_mul(groups) != Some(c_in) {
        return Err(node.corrupt(format!(
            "weight {:?} with {groups} group(s) does not fit {c_in} input channels",
            w.dims
        )));
    }
    if let Some(ks) = node.attr_ints("kernel_shape")? {
        if ks != [kh as i64, kw as i64] {
            return Err(node.corrupt(format!(
                "kernel_shape {ks:?} disagrees with weight {:?}",
                w.dims
            )));
        }
    }
    let stride = pair(node, "strides", 1)?;
    let dilation = pair(node, "dilations", 1)?;
    let effective = [
        dilation[0] * (kh.max(1) - 1) + 1,
        dilation[1] * (kw.max(1) - 1) + 1,
    ];
    let padding = spatial_pads(node, &x.dims[1..], effective, stride)?;
    let conv = Conv2d {
        in_channels: c_in,
        out_channels: m,
        kernel: [kh, kw],
        stride,
        padding,
        dilation,
        groups,
        bias: b.is_some(),
    };
    let mut params = vec![(
        ParamKind::Weight,
        w.to_tensor(&conv.weight_shape(), "conv weight")?,
    )];
    if let Some(b) = &b {
        params.push((ParamKind::Bias, b.to_tensor(&[m], "conv bias")?));
    }
    let idx = ctx.push(node, node.input(1), conv.into(), &[x.node], params)?;
    let dims = ctx.shape(idx).to_vec();
    ctx.define_act(node, idx, dims)
}

/// Writes `Conv`.
pub(crate) fn export(cx: &mut ExportCtx, node: &Node, c: &Conv2d, inputs: &[String], out: &str) {
    let mut ins = vec![inputs[0].clone(), node.param_name(ParamKind::Weight)];
    if c.bias {
        ins.push(node.param_name(ParamKind::Bias));
    }
    let attrs = vec![
        AttributeProto::ints("kernel_shape", &i64s(c.kernel)),
        AttributeProto::ints("strides", &i64s(c.stride)),
        AttributeProto::ints("pads", &i64s(c.padding)),
        AttributeProto::ints("dilations", &i64s(c.dilation)),
        AttributeProto::int("group", c.groups as i64),
    ];
    cx.node("Conv", &node.name, ins, out, attrs);
}
