//! `BatchNormalization` (inference form) and [`BatchNorm2d`].
//!
//! ONNX's `momentum` weighs the old running statistic (PyTorch exports `1 - momentum`), so it
//! is converted both ways; the import rounds it to six decimals, which undoes the f32
//! rounding of `1 - m` for the momentums people use.

use shears_ir::{BatchNorm2d, Node, ParamKind};

use super::super::context::Ctx;
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::proto::AttributeProto;
use super::super::registry::OpSpec;
use super::super::ImportError;

/// `BatchNormalization(X, scale, B, mean, var)` in inference mode, constant statistics.
pub(crate) const BATCH_NORMALIZATION: OpSpec = OpSpec {
    op_type: "BatchNormalization",
    min_opset: 1,
    inputs: (5, 5),
    outputs: (1, 5),
    convert,
};

fn convert(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let x = ctx.act(node, 0)?;
    let Some(&c) = x.dims.first() else {
        return Err(node.unsupported("input has no channel axis"));
    };
    if node.attr_int("training_mode", 0)? != 0 {
        return Err(node.unsupported("training_mode=1 (only inference is supported)"));
    }
    if node.attr_int("spatial", 1)? != 1 {
        return Err(node.unsupported("spatial=0 (per-position statistics)"));
    }
    for i in 1..5 {
        ctx.require_unused_output(node, i)?;
    }
    let eps = node.attr_float("epsilon", 1e-5)?;
    let onnx_momentum = node.attr_float("momentum", 0.9)? as f64;
    let momentum = (((1.0 - onnx_momentum) * 1e6).round() / 1e6).clamp(0.0, 1.0) as f32;
    let mut params = Vec::with_capacity(4);
    let kinds = [
        (ParamKind::Weight, "scale"),
        (ParamKind::Bias, "bias"),
        (ParamKind::RunningMean, "mean"),
        (ParamKind::RunningVar, "variance"),
    ];
    for (i, (kind, what)) in kinds.into_iter().enumerate() {
        let t = ctx.constant(node, i + 1)?;
        params.push((kind, t.to_tensor(&[c], &format!("batch norm {what}"))?));
    }
    let op = BatchNorm2d {
        num_features: c,
        eps,
        momentum,
    };
    let idx = ctx.push(node, node.input(1), op.into(), &[x.node], params)?;
    ctx.define_act(node, idx, x.dims)
}

/// Writes `BatchNormalization` (inference).
pub(crate) fn export(
    cx: &mut ExportCtx,
    node: &Node,
    bn: &BatchNorm2d,
    inputs: &[String],
    out: &str,
) {
    let ins = vec![
        inputs[0].clone(),
        node.param_name(ParamKind::Weight),
        node.param_name(ParamKind::Bias),
        node.param_name(ParamKind::RunningMean),
        node.param_name(ParamKind::RunningVar),
    ];
    let attrs = vec![
        AttributeProto::float("epsilon", bn.eps),
        AttributeProto::float("momentum", 1.0 - bn.momentum),
    ];
    cx.node("BatchNormalization", &node.name, ins, out, attrs);
}
