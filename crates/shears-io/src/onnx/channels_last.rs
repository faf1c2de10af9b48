//! Channels-last regions: the stretch between `Transpose(0, 2, 3, 1)` and
//! `Transpose(0, 3, 1, 2)` that PyTorch exports for per-pixel layers applied to `[N, H, W, C]`
//! (torchvision's ConvNeXt: `LayerNorm`, `Linear`, GELU).
//!
//! shears keeps every activation NCHW. The importer remembers instead that ONNX holds a value
//! transposed ([`Value::ChannelsLast`]), makes no node for either transpose, and translates each
//! node of the region to its NCHW equivalent:
//!
//! - `LayerNormalization` over the last axis: a layer norm over channels ([`super::ops::layer_norm`]);
//! - `MatMul` by a constant `[C_in, C_out]`: a 1x1 convolution, and an `Add` of a `[C_out]`
//!   constant right after it becomes that convolution's bias ([`fuse_bias`]);
//! - elementwise operators ([`ELEMENTWISE`]): their own converters, run on NCHW aliases of the
//!   computed inputs and on constants transposed the same way (a `[C]` constant broadcast over
//!   the last axis is `[C, 1, 1]` in NCHW), so every pattern they fold (GELU, biases) still
//!   folds.
//!
//! Anything else that reads a channels-last value (a reduction, a reshape, another transpose)
//! is refused, naming the node, the op and the value: nothing in a region is translated
//! unless it is exact.

use std::rc::Rc;

use shears_ir::{Conv2d, Op, ParamKind, Tensor};

use super::context::{Act, Ctx, Fusion, Value};
use super::node::NodeView;
use super::proto::NodeProto;
use super::registry::OpSpec;
use super::tensor::{ConstData, ConstTensor};
use super::ImportError;

/// Operators that act on each element alone (with broadcasting), so that they commute with a
/// transpose once their constants are transposed too.
const ELEMENTWISE: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sum",
    "Erf",
    "Relu",
    "Sigmoid",
    "Clip",
    "HardSwish",
    "HardSigmoid",
    "LeakyRelu",
    "Gelu",
    "Identity",
    "Dropout",
];

/// Operators whose converters read channels-last inputs themselves.
const AWARE: &[&str] = &["Transpose", "LayerNormalization"];

/// The internal name under which the NCHW activation behind channels-last value `name` (or
/// the NCHW form of constant `name`) is bound.
fn alias(name: &str) -> String {
    format!("{name} (as NCHW)")
}

/// Binds output 0 of `node` to `x` held channels-last (and its NCHW alias).
pub(crate) fn define(ctx: &mut Ctx, node: NodeView<'_>, x: Act) -> Result<(), ImportError> {
    let out = node
        .output(0)
        .ok_or_else(|| node.corrupt("output 0 is missing"))?;
    let uses = ctx.uses(out);
    ctx.bind_alias(alias(out), Value::Act(x.clone()), uses);
    ctx.define(node, 0, Value::ChannelsLast(x))
}

/// Converts `node` if it reads a channels-last value and is not one of the [`AWARE`]
/// operators; returns whether it did. A node there that is not translated exactly is an
/// error.
pub(crate) fn try_convert(
    ctx: &mut Ctx,
    node: NodeView<'_>,
    spec: &OpSpec,
) -> Result<bool, ImportError> {
    let op_type = node.op_type();
    let Some(first) = (0..node.n_inputs())
        .filter_map(|i| node.input(i))
        .find(|n| ctx.channels_last(n).is_some())
    else {
        return Ok(false);
    };
    if AWARE.contains(&op_type) {
        return Ok(false);
    }
    if op_type == "MatMul" {
        mat_mul(ctx, node)?;
    } else if ELEMENTWISE.contains(&op_type) {
        elementwise(ctx, node, spec)?;
    } else {
        return Err(node.unsupported(format!(
            "input {first:?} is channels-last (NHWC, after a Transpose(0, 2, 3, 1)); {op_type} \
             is not translated to NCHW there (only elementwise ops, LayerNormalization over \
             the last axis, MatMul by a constant and the Transpose back are)"
        )));
    }
    Ok(true)
}

/// Runs the converter of elementwise `node` on NCHW aliases of its inputs and binds its
/// output channels-last.
fn elementwise(ctx: &mut Ctx, node: NodeView<'_>, spec: &OpSpec) -> Result<(), ImportError> {
    let mut proto: NodeProto = node.proto.clone();
    if proto.name.as_deref().is_none_or(str::is_empty) {
        proto.name = Some(node.name().to_string());
    }
    for (i, name) in proto.input.iter_mut().enumerate() {
        if name.is_empty() {
            continue;
        }
        match ctx.value(name) {
            Some(Value::ChannelsLast(_)) => *name = alias(name),
            Some(Value::Const(c)) if c.dims.is_empty() => {}
            Some(Value::Const(c)) => {
                let t = to_nchw(node, c)?;
                let a = alias(name);
                ctx.bind_alias(a.clone(), Value::Const(Rc::new(t)), 0);
                *name = a;
            }
            None => {}
            Some(_) => {
                return Err(node.unsupported(format!(
                    "input {i} ({name:?}) is NCHW while another input is channels-last (NHWC)"
                )))
            }
        }
    }
    let out = node
        .output(0)
        .ok_or_else(|| node.corrupt("output 0 is missing"))?
        .to_string();
    for o in proto.output.iter_mut().filter(|o| !o.is_empty()) {
        ctx.set_uses(alias(o), ctx.uses(o));
        *o = alias(o);
    }
    let inner = NodeView {
        proto: &proto,
        opset: node.opset,
    };
    (spec.convert)(ctx, inner)?;
    match ctx.value(&alias(&out)) {
        Some(Value::Act(a)) => {
            let a = a.clone();
            ctx.define(node, 0, Value::ChannelsLast(a))
        }
        _ => Err(node.unsupported("its result in a channels-last region is not an activation")),
    }
}

/// A constant broadcast against `[N, H, W, C]`, transposed to broadcast the same way against
/// `[N, C, H, W]`: rank 4 stays rank 4, a lower rank becomes `[C', H', W']`.
fn to_nchw(node: NodeView<'_>, c: &ConstTensor) -> Result<ConstTensor, ImportError> {
    if c.dims.len() > 4 {
        return Err(node.unsupported(format!(
            "constant {:?} of shape {:?} has a higher rank than the [N, H, W, C] input",
            c.name, c.dims
        )));
    }
    let mut d = vec![1; 4 - c.dims.len()];
    d.extend_from_slice(&c.dims);
    let (n, h, w, ch) = (d[0], d[1], d[2], d[3]);
    let data = c.f32s("elementwise constant")?;
    let mut t = vec![0.0; data.len()];
    for (i, v) in data.iter().enumerate() {
        let (k, y, x, b) = (i % ch, (i / ch) % w, (i / (ch * w)) % h, i / (ch * w * h));
        t[((b * ch + k) * h + y) * w + x] = *v;
    }
    let dims = if c.dims.len() == 4 {
        vec![n, ch, h, w]
    } else {
        vec![ch, h, w]
    };
    Ok(ConstTensor {
        name: c.name.clone(),
        dims,
        data: ConstData::F32(t),
    })
}

/// `MatMul(x, B)` of a channels-last `x` and a constant `B` of `[C_in, C_out]`: a 1x1
/// convolution, bias to follow.
fn mat_mul(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let name = node.input(0).expect("a MatMul has two inputs");
    let Some(x) = ctx.channels_last(name).cloned() else {
        return Err(node.unsupported(format!(
            "input 1 ({:?}) is channels-last; only a channels-last input 0 times a constant \
             is translated",
            node.input(1).unwrap_or_default()
        )));
    };
    let b = ctx.constant(node, 1)?;
    let &[cin, cout] = b.dims.as_slice() else {
        return Err(node.unsupported(format!(
            "weight of shape {:?} is not 2-D [C_in, C_out]",
            b.dims
        )));
    };
    let c = x.dims[0];
    if cin != c {
        return Err(node.corrupt(format!("weight {:?} does not fit {c} channels", b.dims)));
    }
    let data = b.f32s("MatMul weight")?;
    let mut w = vec![0.0; data.len()];
    for i in 0..cin {
        for o in 0..cout {
            w[o * cin + i] = data[i * cout + o];
        }
    }
    let w = Tensor::new(vec![cout, cin, 1, 1], w).map_err(|e| node.corrupt(e))?;
    let op = Op::Conv2d(Conv2d::new(cin, cout, 1));
    let idx = ctx.push(
        node,
        node.input(1),
        op,
        &[x.node],
        vec![(ParamKind::Weight, w)],
    )?;
    ctx.node_mut(idx).fusion = Fusion::LinearBias;
    let dims = ctx.shape(idx).to_vec();
    define(ctx, node, Act { node: idx, dims })
}

/// Folds `Add(x, c)` into the bias-less 1x1 convolution a channels-last `MatMul` made of `x`
/// when `x` has no other use and `c` is `[C_out, 1, 1]` (the NCHW form of a `[C_out]`
/// vector). Returns whether it did.
pub(crate) fn fuse_bias(
    ctx: &mut Ctx,
    node: NodeView<'_>,
    x: &Act,
    x_name: &str,
    c: &ConstTensor,
) -> Result<bool, ImportError> {
    let pending = &ctx.nodes()[x.node];
    let Op::Conv2d(conv) = &pending.op else {
        return Ok(false);
    };
    let cout = conv.out_channels;
    if pending.fusion != Fusion::LinearBias || ctx.uses(x_name) != 1 || c.dims != [cout, 1, 1] {
        return Ok(false);
    }
    let b = c.to_tensor(&[cout], "MatMul bias")?;
    let op = Op::Conv2d(conv.clone().with_bias(true));
    let mut params = pending.params.clone();
    params.push((ParamKind::Bias, b));
    ctx.refit(node, x.node, op, params)?;
    ctx.node_mut(x.node).fusion = Fusion::None;
    ctx.define_act(node, x.node, x.dims.clone())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use shears_ir::{Activation, BinaryKind, Graph, LayerNorm};

    use super::super::proto::{AttributeProto, GraphProto, NodeProto};
    use super::super::tensor::encode_f32;
    use super::super::test_model::{info, model, op};
    use super::*;
    use crate::onnx::import_onnx_bytes;
    use crate::IoError;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| 0.1 * i as f32 - 0.3).collect()
    }

    fn perm(p: [i64; 4]) -> Vec<AttributeProto> {
        vec![AttributeProto::ints("perm", &p)]
    }

    /// Input `x` `[N, 4, 3, 3]`; `body` reads `x` and writes `y`. Constants: `g`, `b` `[4]`,
    /// `w1` `[4, 8]`, `b1` `[8]`, `w2` `[8, 4]`, `b2` `[4]`, `ls` `[4, 1, 1]`, scalars `r2`,
    /// `one`, `half`.
    fn import(body: Vec<NodeProto>, out_dims: &[i64]) -> Result<(Graph, Weights), IoError> {
        let k =
            |name: &str, shape: &[usize]| encode_f32(name, shape, &ramp(shape.iter().product()));
        let s = |name: &str, v: f32| encode_f32(name, &[], &[v]);
        let graph = GraphProto {
            node: body,
            initializer: vec![
                k("g", &[4]),
                k("b", &[4]),
                k("w1", &[4, 8]),
                k("b1", &[8]),
                k("w2", &[8, 4]),
                k("b2", &[4]),
                k("ls", &[4, 1, 1]),
                s("r2", std::f32::consts::SQRT_2),
                s("one", 1.0),
                s("half", 0.5),
            ],
            input: vec![info("x", &[-1, 4, 3, 3])],
            output: vec![info("y", out_dims)],
            ..Default::default()
        };
        import_onnx_bytes(&model(graph, 17), "t.onnx")
    }

    use shears_ir::Weights;

    fn ln(x: &str, out: &str) -> NodeProto {
        let eps = AttributeProto::float("epsilon", 1e-6);
        op("LayerNormalization", &[x, "g", "b"], out, vec![eps])
    }

    /// torchvision's CNBlock after its depthwise conv, as the TorchScript exporter writes it.
    fn cn_block() -> Vec<NodeProto> {
        vec![
            op("Transpose", &["x"], "t", perm([0, 2, 3, 1])),
            ln("t", "n"),
            op("MatMul", &["n", "w1"], "m1", vec![]),
            op("Add", &["b1", "m1"], "a1", vec![]),
            op("Div", &["a1", "r2"], "d", vec![]),
            op("Erf", &["d"], "e", vec![]),
            op("Add", &["e", "one"], "e1", vec![]),
            op("Mul", &["a1", "e1"], "p", vec![]),
            op("Mul", &["p", "half"], "h", vec![]),
            op("MatMul", &["h", "w2"], "m2", vec![]),
            op("Add", &["b2", "m2"], "a2", vec![]),
            op("Transpose", &["a2"], "back", perm([0, 3, 1, 2])),
            op("Mul", &["ls", "back"], "s", vec![]),
            op("Add", &["s", "x"], "y", vec![]),
        ]
    }

    #[test]
    fn a_convnext_block_imports_without_transposes() {
        let (g, w) = import(cn_block(), &[-1, 4, 3, 3]).unwrap();
        let ops: Vec<Op> = g.nodes()[1..].iter().map(|n| n.op.clone()).collect();
        let scale = shears_ir::Binary::with_constant(BinaryKind::Mul, vec![4, 1, 1], true);
        assert_eq!(
            ops,
            [
                Op::LayerNorm(LayerNorm::new(4).with_eps(1e-6)),
                Op::Conv2d(Conv2d::new(4, 8, 1).with_bias(true)),
                Op::Act(Activation::Gelu { tanh: false }),
                Op::Conv2d(Conv2d::new(8, 4, 1).with_bias(true)),
                Op::Binary(scale),
                Op::Add,
            ]
        );
        // The 1x1 weight is the MatMul's [in, out] constant transposed to [out, in, 1, 1].
        let up = g.nodes()[2].param_name(ParamKind::Weight);
        let (wt, src) = (w.get(&up).unwrap(), ramp(32));
        assert_eq!(wt.shape(), &[8, 4, 1, 1]);
        for i in 0..4 {
            for o in 0..8 {
                assert_eq!(wt.data()[o * 4 + i], src[i * 8 + o]);
            }
        }
        let bias = w.get(&g.nodes()[2].param_name(ParamKind::Bias)).unwrap();
        assert_eq!(bias.data(), ramp(8));
    }

    #[test]
    fn nhwc_constants_broadcast_over_the_channels() {
        // `Mul` by a [4] constant inside the region scales channel c by ls[c]: [4, 1, 1].
        let body = vec![
            op("Transpose", &["x"], "t", perm([0, 2, 3, 1])),
            op("Mul", &["t", "g"], "m", vec![]),
            op("Transpose", &["m"], "y", perm([0, 3, 1, 2])),
        ];
        let (g, w) = import(body, &[-1, 4, 3, 3]).unwrap();
        let Op::Binary(b) = &g.nodes()[1].op else {
            panic!("{:?}", g.nodes()[1].op)
        };
        assert_eq!(b.constant.as_ref().unwrap().shape, [4, 1, 1]);
        let k = w.get(&g.nodes()[1].param_name(ParamKind::Weight)).unwrap();
        assert_eq!(k.data(), ramp(4));
    }

    #[test]
    fn what_a_region_cannot_translate_is_named() {
        let err = |body, dims: &[i64]| import(body, dims).unwrap_err().to_string();
        let into = || op("Transpose", &["x"], "t", perm([0, 2, 3, 1]));
        // A reduction over W of the NHWC value.
        let axes = vec![AttributeProto::ints("axes", &[2])];
        let e = err(
            vec![into(), op("ReduceMean", &["t"], "y", axes)],
            &[-1, 3, 1, 4],
        );
        assert!(e.contains("/y") && e.contains("ReduceMean"), "{e}");
        assert!(e.contains("channels-last"), "{e}");
        // Another permutation.
        let e = err(
            vec![into(), op("Transpose", &["t"], "y", perm([0, 2, 1, 3]))],
            &[-1, 3, 3, 4],
        );
        assert!(e.contains("perm") && e.contains("/y"), "{e}");
        // A layer norm over an axis other than the channels.
        let axis = vec![AttributeProto::int("axis", 2)];
        let e = err(
            vec![
                into(),
                op("LayerNormalization", &["t", "g", "b"], "y", axis),
            ],
            &[-1, 3, 3, 4],
        );
        assert!(
            e.contains("axis 2") && e.contains("LayerNormalization"),
            "{e}"
        );
        // Over C, H and W together in NCHW: not per pixel.
        let axis = vec![AttributeProto::int("axis", 1)];
        let e = err(
            vec![op("LayerNormalization", &["x", "g", "b"], "y", axis)],
            &[-1, 4, 3, 3],
        );
        assert!(e.contains("more than the channels"), "{e}");
        // An NHWC graph output.
        let e = err(
            vec![into(), op("Relu", &["t"], "y", vec![])],
            &[-1, 3, 3, 4],
        );
        assert!(e.contains("channels-last") && e.contains("\"y\""), "{e}");
        // A MatMul whose weight is computed.
        let e = err(
            vec![into(), op("MatMul", &["t", "t"], "y", vec![])],
            &[-1, 3, 3, 3],
        );
        assert!(e.contains("MatMul") && e.contains("constant"), "{e}");
    }
}
