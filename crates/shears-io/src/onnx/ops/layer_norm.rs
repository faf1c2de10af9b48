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

#[cfg(test)]
mod tests {
    use shears_ir::{Graph, GraphBuilder, Linear, Weights};

    use super::super::super::proto::{AttributeProto, GraphProto};
    use super::super::super::tensor::encode_f32;
    use super::super::super::test_model::{info, model, op};
    use super::*;
    use crate::onnx::{export_onnx_bytes, import_onnx_bytes};
    use crate::OnnxExportOptions;

    /// `GlobalAveragePool` (kept `[N, 4, 1, 1]`), then `LayerNormalization` over axis 1.
    fn pooled_norm(axis: i64) -> Vec<u8> {
        let graph = GraphProto {
            node: vec![
                op("GlobalAveragePool", &["x"], "p", vec![]),
                op(
                    "LayerNormalization",
                    &["p", "g", "b"],
                    "y",
                    vec![AttributeProto::int("axis", axis)],
                ),
            ],
            initializer: vec![
                encode_f32("g", &[4, 1, 1], &[1.0, 2.0, 3.0, 4.0]),
                encode_f32("b", &[4, 1, 1], &[0.5; 4]),
            ],
            input: vec![info("x", &[-1, 4, 3, 3])],
            output: vec![info("y", &[-1, 4, 1, 1])],
            ..Default::default()
        };
        model(graph, 17)
    }

    #[test]
    fn axis_1_reads_only_where_it_is_per_pixel() {
        let (g, w) = import_onnx_bytes(&pooled_norm(1), "t.onnx").unwrap();
        let node = &g.nodes()[2];
        assert_eq!(node.op, Op::LayerNorm(LayerNorm::new(4)));
        let gamma = w.get(&node.param_name(ParamKind::Weight)).unwrap();
        assert_eq!(
            (gamma.shape(), gamma.data()),
            (&[4][..], &[1.0, 2.0, 3.0, 4.0][..])
        );
        // Axis 2 of the pooled map normalises one value alone: not a layer norm over channels.
        let e = import_onnx_bytes(&pooled_norm(2), "t.onnx").unwrap_err();
        assert!(e.to_string().contains("axis 2"), "{e}");
    }

    #[test]
    fn a_vector_layer_norm_round_trips_without_transposes() {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[6]).unwrap();
        let n = b.add("ln", LayerNorm::new(6).with_eps(1e-3), &[x]).unwrap();
        let fc = Linear {
            in_features: 6,
            out_features: 2,
            bias: false,
        };
        let y = b.add("fc", fc, &[n]).unwrap();
        let g: Graph = b.finish(&[y]).unwrap();
        let mut w = Weights::new();
        w.insert("ln.weight", Tensor::full(&[6], 1.5));
        w.insert("ln.bias", Tensor::full(&[6], -0.5));
        w.insert("fc.weight", Tensor::full(&[2, 6], 0.25));
        let opts = OnnxExportOptions::new().with_embed_graph(false);
        let bytes = export_onnx_bytes(&g, &w, &opts).unwrap();
        let (g2, w2) = import_onnx_bytes(&bytes, "t.onnx").unwrap();
        let ops = |g: &Graph| g.nodes().iter().map(|n| n.op.clone()).collect::<Vec<_>>();
        assert_eq!(ops(&g2), ops(&g));
        assert_eq!(w2.len(), w.len());
    }
}
