//! `Mul`, `Sub`, `Div` (and the broadcasting or constant cases of `Add`), to and from
//! [`Op::Binary`].
//!
//! ONNX broadcasts NumPy-style over the full shape, batch axis included; shears holds
//! per-sample shapes of equal rank. A constant operand is right-aligned against the
//! activation's `[N, ...]` dims, padded with leading ones, and must not vary over the batch
//! (its leading axis is 1); what remains is its per-sample shape, stored as the node's
//! `weight`. Two computed operands must have the same rank.

use shears_ir::{broadcast_shape, Binary, BinaryKind, Node, Op, ParamKind};

use super::super::context::{Act, Ctx};
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::registry::OpSpec;
use super::super::tensor::ConstTensor;
use super::super::ImportError;

/// `Mul(A, B)` with broadcasting.
pub(crate) const MUL: OpSpec = OpSpec {
    op_type: "Mul",
    min_opset: 1,
    inputs: (2, 2),
    outputs: (1, 1),
    convert: convert_mul,
};

/// `Sub(A, B)` with broadcasting.
pub(crate) const SUB: OpSpec = OpSpec {
    op_type: "Sub",
    min_opset: 1,
    inputs: (2, 2),
    outputs: (1, 1),
    convert: convert_sub,
};

/// `Div(A, B)` with broadcasting.
pub(crate) const DIV: OpSpec = OpSpec {
    op_type: "Div",
    min_opset: 1,
    inputs: (2, 2),
    outputs: (1, 1),
    convert: convert_div,
};

fn convert_mul(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    // SiLU, hard-swish and GELU arrive as products: those patterns first.
    if super::activation::fold_mul(ctx, node)? {
        return Ok(());
    }
    convert(ctx, node, BinaryKind::Mul)
}

fn convert_sub(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    convert(ctx, node, BinaryKind::Sub)
}

fn convert_div(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    if super::activation::fold_div(ctx, node)? {
        return Ok(());
    }
    convert(ctx, node, BinaryKind::Div)
}

/// A computed operand whose ONNX dims are its shears shape.
fn operand(ctx: &mut Ctx, node: NodeView<'_>, i: usize) -> Result<Act, ImportError> {
    let a = ctx.act(node, i)?;
    if a.dims != ctx.shape(a.node) {
        return Err(node.unsupported(format!(
            "input {i} of per-sample dims {:?} is held as shape {:?}",
            a.dims,
            ctx.shape(a.node)
        )));
    }
    Ok(a)
}

/// The per-sample shape of constant `c` broadcast against an activation of per-sample rank
/// `rank`, or why it cannot be one.
fn per_sample_shape(
    node: NodeView<'_>,
    c: &ConstTensor,
    rank: usize,
) -> Result<Vec<usize>, ImportError> {
    if c.dims.len() > rank + 1 {
        return Err(node.unsupported(format!(
            "constant {:?} of shape {:?} has a higher rank than the input [N, ..{rank} axes]",
            c.name, c.dims
        )));
    }
    let mut full = vec![1; rank + 1 - c.dims.len()];
    full.extend_from_slice(&c.dims);
    if full[0] != 1 {
        return Err(node.unsupported(format!(
            "constant {:?} of shape {:?} varies over the batch axis",
            c.name, c.dims
        )));
    }
    Ok(full.split_off(1))
}

/// Converts `kind` of two computed values, or of a value and a constant.
pub(crate) fn convert(
    ctx: &mut Ctx,
    node: NodeView<'_>,
    kind: BinaryKind,
) -> Result<(), ImportError> {
    let constant = [ctx.is_constant(node, 0), ctx.is_constant(node, 1)];
    let (op, inputs, params) = match constant {
        [true, true] => {
            return Err(node.unsupported(format!(
                "{} of two constants (fold it before export)",
                node.op_type()
            )))
        }
        [false, false] => {
            let (a, b) = (operand(ctx, node, 0)?, operand(ctx, node, 1)?);
            (Binary::new(kind), vec![a.node, b.node], Vec::new())
        }
        _ => {
            let (xi, ci) = if constant[1] { (0, 1) } else { (1, 0) };
            let x = operand(ctx, node, xi)?;
            let c = ctx.constant(node, ci)?;
            let shape = per_sample_shape(node, &c, x.dims.len())?;
            if broadcast_shape(&x.dims, &shape).as_ref() != Ok(&x.dims) {
                return Err(node.unsupported(format!(
                    "constant {:?} of shape {:?} does not broadcast onto the input's per-sample \
                     dims {:?} (a constant may not widen the input)",
                    c.name, c.dims, x.dims
                )));
            }
            let t = c.to_tensor(&shape, &format!("{} operand", node.op_type()))?;
            (
                Binary::with_constant(kind, shape, ci == 0),
                vec![x.node],
                vec![(ParamKind::Weight, t)],
            )
        }
    };
    let idx = ctx.push(node, None, Op::Binary(op), &inputs, params)?;
    let dims = ctx.shape(idx).to_vec();
    ctx.define_act(node, idx, dims)
}

/// Writes `Add`, `Sub`, `Mul` or `Div`; a constant operand is the node's `weight`
/// initializer, whose per-sample shape broadcasts against `[N, ...]` from the right.
pub(crate) fn export(cx: &mut ExportCtx, node: &Node, b: &Binary, inputs: &[String], out: &str) {
    let op_type = match b.kind {
        BinaryKind::Add => "Add",
        BinaryKind::Sub => "Sub",
        BinaryKind::Mul => "Mul",
        BinaryKind::Div => "Div",
    };
    let ins = match &b.constant {
        Some(k) if k.left => vec![node.param_name(ParamKind::Weight), inputs[0].clone()],
        Some(_) => vec![inputs[0].clone(), node.param_name(ParamKind::Weight)],
        None => inputs.to_vec(),
    };
    cx.node(op_type, &node.name, ins, out, Vec::new());
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use shears_ir::{Pool2d, Weights};

    use super::super::super::proto::{AttributeProto, GraphProto, ModelProto, NodeProto};
    use super::super::super::tensor::encode_f32;
    use super::super::super::test_model::{info, model, op};
    use super::*;
    use crate::onnx::{export_onnx_bytes, import_onnx_bytes};
    use crate::{IoError, OnnxExportOptions};

    fn ramp(n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| scale * (i as f32 - n as f32 / 2.0))
            .collect()
    }

    /// What PyTorch exports for a squeeze-excitation block and a layer scale: conv → ReLU →
    /// `GlobalAveragePool` (kept `[N, 4, 1, 1]`) → 1x1 conv → ReLU → 1x1 conv → `Mul` with the
    /// trunk → `Mul` by a `[1, 4, 1, 1]` initializer → `Sub` of a scalar → `Div` by a `[4, 1,
    /// 1]` initializer → `ReduceMean` (keepdims) → `Flatten` → `Gemm`.
    fn se_model(extra: Option<NodeProto>) -> Vec<u8> {
        let k = |name: &str, shape: &[usize], scale: f32| {
            encode_f32(name, shape, &ramp(shape.iter().product(), scale))
        };
        let conv = |w: &str, b: &str, x: &str, out: &str| {
            op(
                "Conv",
                &[x, w, b],
                out,
                vec![AttributeProto::ints("pads", &[0; 4])],
            )
        };
        let mut node = vec![
            op(
                "Conv",
                &["x", "stem.weight"],
                "t0",
                vec![AttributeProto::ints("pads", &[1; 4])],
            ),
            op("Relu", &["t0"], "t", Vec::new()),
            op("GlobalAveragePool", &["t"], "s0", Vec::new()),
            conv("se.reduce.weight", "se.reduce.bias", "s0", "s1"),
            op("Relu", &["s1"], "s2", Vec::new()),
            conv("se.expand.weight", "se.expand.bias", "s2", "s3"),
            op("Mul", &["t", "s3"], "y0", Vec::new()),
            op("Mul", &["y0", "gamma"], "y1", Vec::new()),
            op("Sub", &["y1", "shift"], "y2", Vec::new()),
            op("Div", &["y2", "std"], "y3", Vec::new()),
            op(
                "ReduceMean",
                &["y3"],
                "p",
                vec![AttributeProto::ints("axes", &[2, 3])],
            ),
            op("Flatten", &["p"], "f", Vec::new()),
            op(
                "Gemm",
                &["f", "fc.weight", "fc.bias"],
                "out",
                vec![AttributeProto::int("transB", 1)],
            ),
        ];
        node.extend(extra);
        let mut std = ramp(4, 0.1);
        std.iter_mut().for_each(|v| *v = v.abs() + 0.5);
        let graph = GraphProto {
            node,
            name: Some("se".into()),
            initializer: vec![
                k("stem.weight", &[4, 3, 3, 3], 0.01),
                k("se.reduce.weight", &[2, 4, 1, 1], 0.1),
                k("se.reduce.bias", &[2], 0.1),
                k("se.expand.weight", &[4, 2, 1, 1], 0.1),
                k("se.expand.bias", &[4], 0.1),
                k("gamma", &[1, 4, 1, 1], 0.3),
                k("shift", &[], 1.0),
                encode_f32("std", &[4, 1, 1], &std),
                k("fc.weight", &[3, 4], 0.1),
                k("fc.bias", &[3], 0.1),
            ],
            input: vec![info("x", &[2, 3, 6, 6])],
            output: vec![info("out", &[2, 3])],
            ..Default::default()
        };
        model(graph, 13)
    }

    #[test]
    fn squeeze_excitation_and_constant_operands_import() {
        let (g, w) = import_onnx_bytes(&se_model(None), "se.onnx").unwrap();
        let ops: Vec<(&str, &str)> = g
            .nodes()
            .iter()
            .map(|n| (n.name.as_str(), n.op.type_name()))
            .collect();
        assert_eq!(
            ops,
            [
                ("x", "input"),
                ("stem", "conv2d"),
                ("/t", "relu"),
                ("/s0", "avg_pool2d"),
                ("se.reduce", "conv2d"),
                ("/s2", "relu"),
                ("se.expand", "conv2d"),
                ("/y0", "binary"),
                ("/y1", "binary"),
                ("/y2", "binary"),
                ("/y3", "binary"),
                ("/p", "global_avg_pool"),
                ("fc", "linear"),
            ]
        );
        let node = |name: &str| &g.node(g.find(name).unwrap()).op;
        assert_eq!(node("/s0"), &Op::AvgPool2d(Pool2d::new(6, 1)));
        assert_eq!(g.shape(g.find("/s0").unwrap()), &[4, 1, 1]);
        assert_eq!(node("/y0"), &Op::Binary(Binary::new(BinaryKind::Mul)));
        let gamma = Binary::with_constant(BinaryKind::Mul, vec![4, 1, 1], false);
        assert_eq!(node("/y1"), &Op::Binary(gamma));
        let shift = Binary::with_constant(BinaryKind::Sub, vec![1, 1, 1], false);
        assert_eq!(node("/y2"), &Op::Binary(shift));
        let std = Binary::with_constant(BinaryKind::Div, vec![4, 1, 1], false);
        assert_eq!(node("/y3"), &Op::Binary(std));
        assert_eq!(w.get("/y1.weight").unwrap().data(), &ramp(4, 0.3)[..]);
        assert_eq!(w.get("/y2.weight").unwrap().data(), &[1.0 * -0.5]);

        // Export and import again: the same graph (embedded) or op for op (not embedded).
        for embed in [true, false] {
            let opts = OnnxExportOptions::new().with_embed_graph(embed);
            let bytes = export_onnx_bytes(&g, &w, &opts).unwrap();
            let (g2, w2) = import_onnx_bytes(&bytes, "again.onnx").unwrap();
            let ops2: Vec<&Op> = g2.nodes().iter().map(|n| &n.op).collect();
            let ops1: Vec<&Op> = g.nodes().iter().map(|n| &n.op).collect();
            assert_eq!(ops2, ops1, "embed {embed}");
            let same = |a: &Weights, b: &Weights| {
                a.iter().zip(b.iter()).all(|((_, x), (_, y))| x == y) && a.len() == b.len()
            };
            assert!(same(&w, &w2), "embed {embed}");
        }
    }

    #[test]
    fn unsupported_broadcasts_name_the_node() {
        let batch = op("Mul", &["t", "per_batch"], "bad", Vec::new());
        let mut bytes = se_model(Some(batch));
        // The extra node reads an initializer that varies over the batch axis.
        let mut m = ModelProto::decode(&bytes[..]).unwrap();
        let g = m.graph.as_mut().unwrap();
        g.initializer
            .push(encode_f32("per_batch", &[2, 4, 1, 1], &[1.0; 8]));
        bytes = m.encode_to_vec();
        let err = import_onnx_bytes(&bytes, "bad.onnx").unwrap_err();
        let IoError::Unsupported { what, .. } = &err else {
            panic!("{err}")
        };
        assert!(what.contains("/bad") && what.contains("batch"), "{what}");

        let wide = op("Add", &["s3", "wide"], "bad2", Vec::new());
        let mut m = ModelProto::decode(&se_model(Some(wide))[..]).unwrap();
        m.graph
            .as_mut()
            .unwrap()
            .initializer
            .push(encode_f32("wide", &[4, 6, 6], &[0.5; 144]));
        let err = import_onnx_bytes(&m.encode_to_vec(), "bad.onnx").unwrap_err();
        assert!(matches!(err, IoError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("/bad2"), "{err}");
    }
}
