//! ShuffleNet's channel shuffle, `Reshape [N, g, C/g, H, W]` → `Transpose (0, 2, 1, 3, 4)` →
//! `Reshape [N, C, H, W]`, to and from [`ChannelOp::Shuffle`].
//!
//! On import the first `Reshape` (of a `[C, H, W]` feature map into `g` groups) makes a
//! placeholder node that already holds the shuffle, with [`Fusion::Shuffle`]; the `Transpose`
//! and the `Reshape` back fold into it. The reshape targets may come from folded
//! `Shape` / `Gather` / `Concat` subgraphs ([`super::super::fold`]). Any other 5-D reshape or
//! transpose is refused naming the node and what is missing, and so is a placeholder whose
//! pattern does not complete. The export writes the same three nodes.

use shears_ir::{ChannelOp, Node};

use super::super::context::{Act, Ctx, Fusion};
use super::super::export::ExportCtx;
use super::super::fold::{self, BATCH_DIM};
use super::super::node::NodeView;
use super::super::proto::AttributeProto;
use super::super::ImportError;

/// `Transpose(X)` with `perm = (0, 2, 1, 3, 4)` inside a channel shuffle.
/// The transpose of a channel shuffle: the group axis and the per-group channel axis swap.
const SHUFFLE_PERM: [i64; 5] = [0, 2, 1, 3, 4];

/// The per-sample dims `target` asks of `x` (the batch entry resolved and dropped), or
/// `None` when entry 0 is not the batch size or the target does not fit `x`.
fn per_sample(ctx: &Ctx, node: NodeView<'_>, x: &Act, target: &[i64]) -> Option<Vec<usize>> {
    let allow_zero = node.attr_int("allowzero", 0).ok()? != 0;
    let (&first, rest) = target.split_first()?;
    let batch = match first {
        BATCH_DIM | -1 => true,
        0 => !allow_zero,
        v => ctx.batch.is_some_and(|b| b as i64 == v),
    };
    if !batch {
        return None;
    }
    let numel: usize = x.dims.iter().product();
    let mut dims = Vec::with_capacity(rest.len());
    let mut infer = None;
    for (i, &v) in rest.iter().enumerate() {
        match v {
            0 if !allow_zero => dims.push(*x.dims.get(i)?),
            -1 if infer.is_none() && first != -1 => {
                infer = Some(i);
                dims.push(1);
            }
            v if v > 0 => dims.push(usize::try_from(v).ok()?),
            _ => return None,
        }
    }
    let known = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            return None;
        }
        dims[i] = numel / known;
    }
    (dims.iter().product::<usize>() == numel).then_some(dims)
}

/// A `Reshape` that is not a flatten: the first or the last node of a channel shuffle, or an
/// error naming what shears supports.
pub(crate) fn convert_reshape(
    ctx: &mut Ctx,
    node: NodeView<'_>,
    x: Act,
    target: &[i64],
) -> Result<(), ImportError> {
    let dims = per_sample(ctx, node, &x, target);
    let fusion = ctx.nodes()[x.node].fusion;
    match (dims.as_deref(), fusion) {
        (Some(&[g, per, h, w]), Fusion::None)
            if x.dims == ctx.shape(x.node) && x.dims == [g * per, h, w] =>
        {
            let op = ChannelOp::Shuffle { groups: g }.into();
            let shape = x.dims.clone();
            let idx = ctx.push_partial(
                node,
                op,
                x.node,
                shape,
                Fusion::Shuffle { transposed: false },
            );
            ctx.define_act(node, idx, vec![g, per, h, w])
        }
        (Some([c, h, w]), Fusion::Shuffle { transposed: true })
            if ctx.shape(x.node) == [*c, *h, *w] =>
        {
            ctx.node_mut(x.node).fusion = Fusion::None;
            ctx.define_act(node, x.node, vec![*c, *h, *w])
        }
        _ => Err(node.unsupported(format!(
            "reshape of per-sample dims {:?} to {}; only flattening to [N, features] and \
             a channel shuffle (Reshape [N, g, C/g, H, W], Transpose (0, 2, 1, 3, 4), \
             Reshape [N, C, H, W]) are supported",
            x.dims,
            fold::show(target)
        ))),
    }
}

/// A 5-D `Transpose`: the middle node of a channel shuffle (reached from
/// [`super::transpose::TRANSPOSE`], which handles the 4-D channels-last transposes).
pub(crate) fn convert_transpose(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let x = ctx.act(node, 0)?;
    let perm = node.attr_ints("perm")?.unwrap_or(&[]);
    let input = node.input(0).expect("act() found it");
    let fusion = ctx.nodes()[x.node].fusion;
    match (fusion, x.dims.as_slice()) {
        (Fusion::Shuffle { transposed: false }, &[g, per, h, w])
            if perm == SHUFFLE_PERM && ctx.uses(input) == 1 =>
        {
            ctx.node_mut(x.node).fusion = Fusion::Shuffle { transposed: true };
            ctx.define_act(node, x.node, vec![per, g, h, w])
        }
        _ => Err(node.unsupported(format!(
            "transpose with perm {perm:?} of per-sample dims {:?}; only the Transpose \
             (0, 2, 1, 3, 4) of a channel shuffle, right after its Reshape to \
             [N, g, C/g, H, W], is supported",
            x.dims
        ))),
    }
}

/// The error for a placeholder left at the end of the import (`origin`: its ONNX node).
pub(crate) fn incomplete(origin: &str, transposed: bool) -> ImportError {
    let missing = if transposed {
        "the Reshape back to [N, C, H, W]"
    } else {
        "the Transpose (0, 2, 1, 3, 4) and the Reshape back to [N, C, H, W]"
    };
    ImportError::Unsupported(format!(
        "onnx node {origin:?} (Reshape): a channel shuffle's reshape to [N, g, C/g, H, W] \
         without {missing}"
    ))
}

/// Writes `Reshape [N, g, C/g, H, W]`, `Transpose (0, 2, 1, 3, 4)`, `Reshape [N, C, H, W]`
/// (the batch entry 0: copied from the input).
pub(crate) fn export(
    cx: &mut ExportCtx,
    node: &Node,
    groups: usize,
    shape: &[usize],
    inputs: &[String],
    out: &str,
) {
    let [c, h, w] = [shape[0] as i64, shape[1] as i64, shape[2] as i64];
    let g = groups as i64;
    let name = &node.name;
    let split = cx.const_i64(&format!("{name}::groups_shape"), &[0, g, c / g, h, w]);
    let grouped = cx.fresh(&format!("{name}::grouped"));
    cx.node(
        "Reshape",
        name,
        vec![inputs[0].clone(), split],
        &grouped,
        Vec::new(),
    );
    let swapped = cx.fresh(&format!("{name}::swapped"));
    cx.node(
        "Transpose",
        &format!("{name}::transpose"),
        vec![grouped],
        &swapped,
        vec![AttributeProto::ints("perm", &SHUFFLE_PERM)],
    );
    let merge = cx.const_i64(&format!("{name}::shape"), &[0, c, h, w]);
    cx.node(
        "Reshape",
        &format!("{name}::merge"),
        vec![swapped, merge],
        out,
        Vec::new(),
    );
}

#[cfg(test)]
mod tests {
    use shears_ir::{ChannelOp, Graph, Op};

    use super::super::super::proto::{AttributeProto, GraphProto, NodeProto};
    use super::super::super::tensor::{encode_f32, encode_i64};
    use super::super::super::test_model::{info, model, op};
    use crate::onnx::{export_onnx_bytes, import_onnx_bytes};
    use crate::{IoError, OnnxExportOptions};

    /// How the unit's two halves are taken.
    #[derive(Clone, Copy)]
    enum Halves {
        /// `Split` with explicit sizes (input from opset 13, attribute before).
        Sizes,
        /// `Split` with no sizes (equal parts).
        Equal,
        /// Two `Slice`s of the channel axis, the second to "the end".
        Slices,
    }

    /// A stride-1 ShuffleNetV2 unit as PyTorch exports it, batch symbolic: `x.chunk(2, 1)`,
    /// a 1x1 conv on the second half, `Concat`, then the channel shuffle with both reshape
    /// targets computed from `Shape` (batch) and constants; `tail` replaces the shuffle's
    /// `Transpose` and last `Reshape` when given.
    fn unit(opset: i64, halves: Halves, tail: Option<Vec<NodeProto>>) -> Vec<u8> {
        let ax = |v: &[i64]| AttributeProto::ints("axes", v);
        let axis1 = || vec![AttributeProto::int("axis", 1)];
        let mut node = match halves {
            Halves::Sizes if opset >= 13 => {
                vec![split_node(&["x", "sizes"], opset, axis1())]
            }
            Halves::Sizes => {
                let mut a = axis1();
                a.push(AttributeProto::ints("split", &[3, 3]));
                vec![split_node(&["x"], opset, a)]
            }
            Halves::Equal => vec![split_node(&["x"], opset, axis1())],
            Halves::Slices => vec![
                op("Slice", &["x", "s0", "e0", "ax1"], "x1", Vec::new()),
                op("Slice", &["x", "e0", "end", "ax1"], "x2", Vec::new()),
            ],
        };
        let unsqueeze = if opset >= 13 {
            op("Unsqueeze", &["n", "zero"], "n1", Vec::new())
        } else {
            op("Unsqueeze", &["n"], "n1", vec![ax(&[0])])
        };
        node.extend([
            op("Conv", &["x2", "b.weight"], "b", Vec::new()),
            op("Concat", &["x1", "b"], "cat", axis1()),
            op("Shape", &["cat"], "s", Vec::new()),
            op(
                "Gather",
                &["s", "zero_scalar"],
                "n",
                vec![AttributeProto::int("axis", 0)],
            ),
            unsqueeze,
            op(
                "Concat",
                &["n1", "grouped_dims"],
                "t5",
                vec![AttributeProto::int("axis", 0)],
            ),
            op("Reshape", &["cat", "t5"], "grouped", Vec::new()),
        ]);
        node.extend(tail.unwrap_or_else(|| {
            vec![
                op(
                    "Transpose",
                    &["grouped"],
                    "swapped",
                    vec![AttributeProto::ints("perm", &[0, 2, 1, 3, 4])],
                ),
                op(
                    "Concat",
                    &["n1", "flat_dims"],
                    "t4",
                    vec![AttributeProto::int("axis", 0)],
                ),
                op("Reshape", &["swapped", "t4"], "out", Vec::new()),
            ]
        }));
        let mut zero_scalar = encode_i64("zero_scalar", &[0]);
        zero_scalar.dims.clear();
        let graph = GraphProto {
            node,
            name: Some("unit".into()),
            initializer: vec![
                encode_f32("b.weight", &[3, 3, 1, 1], &[0.5; 9]),
                encode_i64("sizes", &[3, 3]),
                encode_i64("s0", &[0]),
                encode_i64("e0", &[3]),
                encode_i64("end", &[i64::from(i32::MAX)]),
                encode_i64("ax1", &[1]),
                zero_scalar,
                encode_i64("zero", &[0]),
                encode_i64("grouped_dims", &[2, 3, 2, 2]),
                encode_i64("flat_dims", &[6, 2, 2]),
            ],
            input: vec![info("x", &[-1, 6, 2, 2])],
            output: vec![info("out", &[-1, 6, 2, 2])],
            ..Default::default()
        };
        model(graph, opset)
    }

    fn split_node(ins: &[&str], opset: i64, mut attribute: Vec<AttributeProto>) -> NodeProto {
        if opset >= 18 && ins.len() == 1 {
            attribute.push(AttributeProto::int("num_outputs", 2));
        }
        NodeProto {
            output: vec!["x1".into(), "x2".into()],
            ..op("Split", ins, "x1", attribute)
        }
    }

    fn ops(g: &Graph) -> Vec<Op> {
        g.nodes().iter().map(|n| n.op.clone()).collect()
    }

    fn expected() -> Vec<Op> {
        vec![
            Op::Input {
                shape: vec![6, 2, 2],
            },
            ChannelOp::Slice { start: 0, end: 3 }.into(),
            ChannelOp::Slice { start: 3, end: 6 }.into(),
            Op::Conv2d(shears_ir::Conv2d::new(3, 3, 1)),
            Op::Concat,
            ChannelOp::Shuffle { groups: 2 }.into(),
        ]
    }

    #[test]
    fn shuffle_unit_imports_every_way_pytorch_writes_it() {
        let cases = [
            (11, Halves::Sizes),
            (13, Halves::Sizes),
            (13, Halves::Equal),
            (18, Halves::Equal),
            (13, Halves::Slices),
        ];
        for (opset, halves) in cases {
            let (g, _) = import_onnx_bytes(&unit(opset, halves, None), "u.onnx")
                .unwrap_or_else(|e| panic!("opset {opset}: {e}"));
            assert_eq!(ops(&g), expected(), "opset {opset}");
        }
    }

    #[test]
    fn shuffle_and_slices_round_trip_through_export() {
        let (g, w) = import_onnx_bytes(&unit(13, Halves::Sizes, None), "u.onnx").unwrap();
        let bare = OnnxExportOptions::new().with_embed_graph(false);
        let bytes = export_onnx_bytes(&g, &w, &bare).unwrap();
        let (g2, w2) = import_onnx_bytes(&bytes, "exported.onnx").unwrap();
        assert_eq!(ops(&g2), expected());
        assert_eq!(w2.len(), w.len());
        let fixed = export_onnx_bytes(&g, &w, &bare.with_batch(3)).unwrap();
        assert_eq!(
            ops(&import_onnx_bytes(&fixed, "b3.onnx").unwrap().0),
            expected()
        );
        let embedded = export_onnx_bytes(&g, &w, &OnnxExportOptions::new()).unwrap();
        assert_eq!(import_onnx_bytes(&embedded, "e.onnx").unwrap().0, g);
    }

    fn unsupported(bytes: &[u8]) -> String {
        match import_onnx_bytes(bytes, "u.onnx").unwrap_err() {
            IoError::Unsupported { what, .. } => what,
            e => panic!("not an unsupported-op error: {e}"),
        }
    }

    #[test]
    fn other_reshapes_and_transposes_are_refused_by_name() {
        // A transpose that is not the shuffle's.
        let tail = vec![op(
            "Transpose",
            &["grouped"],
            "out",
            vec![AttributeProto::ints("perm", &[0, 1, 2, 4, 3])],
        )];
        let what = unsupported(&unit(13, Halves::Sizes, Some(tail)));
        assert!(
            what.contains("/out") && what.contains("[0, 1, 2, 4, 3]"),
            "{what}"
        );
        // The grouped view reaches the graph's output: the pattern never completes.
        let tail = vec![op("Identity", &["grouped"], "out", Vec::new())];
        let what = unsupported(&unit(13, Halves::Sizes, Some(tail)));
        assert!(
            what.contains("/grouped") && what.contains("without the Transpose"),
            "{what}"
        );
        // A reshape into no known pattern names the symbolic batch as N.
        let tail = vec![op("Reshape", &["grouped", "t5"], "out", Vec::new())];
        let what = unsupported(&unit(13, Halves::Sizes, Some(tail)));
        assert!(
            what.contains("/out") && what.contains("[N, 2, 3, 2, 2]"),
            "{what}"
        );
        assert!(!what.contains("1099511627776"), "{what}");
    }
}
