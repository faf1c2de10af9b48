//! Unary activations, to and from [`Op::Act`]: `Clip`, `HardSwish`, `HardSigmoid`,
//! `Sigmoid`, `LeakyRelu` and `Gelu`, and the patterns exporters write instead of one op.
//!
//! | pattern | becomes |
//! |---|---|
//! | `Clip(x, 0, 6)` | `relu6` |
//! | `Mul(x, Sigmoid(x))` | `silu` (how PyTorch exports SiLU) |
//! | `Mul(x, HardSigmoid(x))`, `alpha = 1/6`, `beta = 1/2` | `hard_swish` (before opset 14) |
//! | `Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)` | `gelu` (PyTorch's exact GELU before opset 20) |
//!
//! A pattern folds only where each intermediate value has no other consumer. A `Sigmoid`
//! that feeds a `Mul` with anything else stays a `sigmoid`, and that `Mul` is refused naming
//! its node: shears has no general (broadcasting) product. A `Div` or `Erf` outside the GELU
//! pattern is refused too (at the end of the import, naming the node, when the pattern
//! does not complete).
//!
//! The export writes opset 13, which has neither `HardSwish` nor `Gelu`: `hard_swish`
//! becomes `HardSigmoid` + `Mul`, `silu` `Sigmoid` + `Mul`, `gelu` the Erf chain above, and
//! the tanh GELU its explicit formula (which the import does not read back).

use shears_ir::{Activation, Node, Op};

use super::super::context::{Act, Ctx, Fusion, GeluStage};
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::proto::AttributeProto;
use super::super::registry::OpSpec;
use super::super::tensor::ConstTensor;
use super::super::ImportError;

/// `Clip(X[, min[, max]])` (bounds as constant inputs from opset 11, attributes before).
pub(crate) const CLIP: OpSpec = OpSpec {
    op_type: "Clip",
    min_opset: 6,
    inputs: (1, 3),
    outputs: (1, 1),
    convert: convert_clip,
};

/// `HardSwish(X)`.
pub(crate) const HARD_SWISH: OpSpec = OpSpec {
    op_type: "HardSwish",
    min_opset: 14,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: convert_hard_swish,
};

/// `HardSigmoid(X)` with `alpha`, `beta`.
pub(crate) const HARD_SIGMOID: OpSpec = OpSpec {
    op_type: "HardSigmoid",
    min_opset: 6,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: convert_hard_sigmoid,
};

/// `Sigmoid(X)`.
pub(crate) const SIGMOID: OpSpec = OpSpec {
    op_type: "Sigmoid",
    min_opset: 6,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: convert_sigmoid,
};

/// `LeakyRelu(X)` with `alpha`.
pub(crate) const LEAKY_RELU: OpSpec = OpSpec {
    op_type: "LeakyRelu",
    min_opset: 6,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: convert_leaky_relu,
};

/// `Gelu(X)` with `approximate` `none` or `tanh`.
pub(crate) const GELU: OpSpec = OpSpec {
    op_type: "Gelu",
    min_opset: 20,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: convert_gelu,
};

/// `Erf(X)`: only inside the GELU pattern.
pub(crate) const ERF: OpSpec = OpSpec {
    op_type: "Erf",
    min_opset: 9,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: convert_erf,
};

/// PyTorch's hard sigmoid inside `hardswish`: `alpha = 1/6`, `beta = 1/2`.
const HARD_SWISH_GATE: Activation = Activation::HardSigmoid {
    alpha: 1.0 / 6.0,
    beta: 0.5,
};

fn push_act(ctx: &mut Ctx, node: NodeView<'_>, op: Op) -> Result<(), ImportError> {
    let x = ctx.act(node, 0)?;
    let idx = ctx.push(node, None, op, &[x.node], Vec::new())?;
    ctx.define_act(node, idx, x.dims)
}

fn convert_clip(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let (min, max) = if node.opset >= 11 {
        let bound = |i: usize| -> Result<Option<f32>, ImportError> {
            ctx.opt_constant(node, i)?
                .map(|t| t.scalar_f32("Clip bound"))
                .transpose()
        };
        (bound(1)?, bound(2)?)
    } else {
        (
            Some(node.attr_float("min", f32::MIN)?),
            Some(node.attr_float("max", f32::MAX)?),
        )
    };
    // An infinite bound, or the float range (opset 6's defaults), is no bound.
    let bound = |b: Option<f32>| b.filter(|v| v.is_nan() || v.abs() < f32::MAX);
    let (min, max) = (bound(min), bound(max));
    let op = match (min, max) {
        (Some(lo), Some(hi)) if lo == 0.0 && hi == 6.0 => Op::Act(Activation::Relu6),
        _ => Op::Act(Activation::Clip { min, max }),
    };
    push_act(ctx, node, op)
}

fn convert_hard_swish(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    push_act(ctx, node, Op::Act(Activation::HardSwish))
}

fn convert_hard_sigmoid(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let alpha = node.attr_float("alpha", 0.2)?;
    let beta = node.attr_float("beta", 0.5)?;
    push_act(ctx, node, Op::Act(Activation::HardSigmoid { alpha, beta }))
}

fn convert_sigmoid(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    push_act(ctx, node, Op::Act(Activation::Sigmoid))
}

fn convert_leaky_relu(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let alpha = node.attr_float("alpha", 0.01)?;
    push_act(ctx, node, Op::Act(Activation::LeakyRelu { alpha }))
}

fn convert_gelu(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let tanh = match node.attr_string("approximate")?.unwrap_or("none") {
        "none" => false,
        "tanh" => true,
        other => return Err(node.unsupported(format!("approximate {other:?}"))),
    };
    push_act(ctx, node, Op::Act(Activation::Gelu { tanh }))
}

/// Folds a `Mul` into the activation pattern it completes or continues; `false` when it is
/// none of them (then another converter may take it).
pub(crate) fn fold_mul(ctx: &mut Ctx, node: NodeView<'_>) -> Result<bool, ImportError> {
    match [ctx.is_constant(node, 0), ctx.is_constant(node, 1)] {
        [false, false] => {
            let acts = [ctx.act(node, 0)?, ctx.act(node, 1)?];
            for k in 0..2 {
                let (x, other) = (&acts[k], &acts[1 - k]);
                let other_name = node.input(1 - k).expect("act() found it");
                if x.dims != other.dims || ctx.uses(other_name) != 1 {
                    continue;
                }
                let pending = &ctx.nodes()[other.node];
                if pending.inputs != [x.node] {
                    continue;
                }
                let gated = match (&pending.op, pending.fusion) {
                    (Op::Act(Activation::Sigmoid), Fusion::None) => Some(Activation::Silu),
                    (Op::Act(a), Fusion::None) if *a == HARD_SWISH_GATE => {
                        Some(Activation::HardSwish)
                    }
                    _ => None,
                };
                if let Some(a) = gated {
                    ctx.refit(node, other.node, Op::Act(a), Vec::new())?;
                    ctx.define_act(node, other.node, other.dims.clone())?;
                    return Ok(true);
                }
                if pending.fusion == gelu(x.node, GeluStage::PlusOne) {
                    return advance(ctx, node, other, GeluStage::Doubled);
                }
            }
            Ok(false)
        }
        [false, true] | [true, false] => {
            let xi = usize::from(ctx.is_constant(node, 0));
            let x = ctx.act(node, xi)?;
            let c = ctx.constant(node, 1 - xi)?;
            let x_name = node.input(xi).expect("act() found it");
            let Some(v) = scalar(&c) else {
                return Ok(false);
            };
            let doubled = matches!(
                ctx.nodes()[x.node].fusion,
                Fusion::Gelu {
                    stage: GeluStage::Doubled,
                    ..
                }
            );
            if doubled && v == 0.5 && ctx.uses(x_name) == 1 {
                let gelu = Op::Act(Activation::Gelu { tanh: false });
                ctx.refit(node, x.node, gelu, Vec::new())?;
                ctx.node_mut(x.node).fusion = Fusion::None;
                ctx.define_act(node, x.node, x.dims)?;
                return Ok(true);
            }
            if near(v, std::f64::consts::FRAC_1_SQRT_2) {
                return start_gelu(ctx, node, &x);
            }
            Ok(false)
        }
        [true, true] => Ok(false),
    }
}

/// Folds `x / sqrt(2)`, the start of the Erf GELU pattern; `false` when the division is
/// another one (then the broadcasting `Div` takes it).
pub(crate) fn fold_div(ctx: &mut Ctx, node: NodeView<'_>) -> Result<bool, ImportError> {
    if !ctx.is_constant(node, 0) && ctx.is_constant(node, 1) {
        let c = ctx.constant(node, 1)?;
        if scalar(&c).is_some_and(|v| near(v, std::f64::consts::SQRT_2)) {
            let x = ctx.act(node, 0)?;
            start_gelu(ctx, node, &x)?;
            return Ok(true);
        }
    }
    Ok(false)
}

fn convert_erf(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let x = ctx.act(node, 0)?;
    let x_name = node.input(0).expect("act() found it");
    let scaled = matches!(
        ctx.nodes()[x.node].fusion,
        Fusion::Gelu {
            stage: GeluStage::Scaled,
            ..
        }
    );
    if scaled && ctx.uses(x_name) == 1 {
        advance(ctx, node, &x, GeluStage::Erf)?;
        return Ok(());
    }
    Err(node.unsupported("erf outside the Erf GELU pattern"))
}

/// Folds `Add(erf, 1)` of the GELU pattern; `false` when `x` is not such an erf.
pub(crate) fn fold_add(
    ctx: &mut Ctx,
    node: NodeView<'_>,
    x: &Act,
    x_name: &str,
    c: &ConstTensor,
) -> Result<bool, ImportError> {
    let is_erf = matches!(
        ctx.nodes()[x.node].fusion,
        Fusion::Gelu {
            stage: GeluStage::Erf,
            ..
        }
    );
    if !is_erf || ctx.uses(x_name) != 1 || scalar(c) != Some(1.0) {
        return Ok(false);
    }
    advance(ctx, node, x, GeluStage::PlusOne)?;
    Ok(true)
}

fn gelu(x: usize, stage: GeluStage) -> Fusion {
    Fusion::Gelu { x, stage }
}

/// Starts the GELU pattern at `x / sqrt 2` with a placeholder node (an identity of `x`)
/// that the following nodes of the pattern fold into.
fn start_gelu(ctx: &mut Ctx, node: NodeView<'_>, x: &Act) -> Result<bool, ImportError> {
    let shape = ctx.shape(x.node).to_vec();
    let idx = ctx.push_partial(
        node,
        Op::Identity,
        x.node,
        shape,
        gelu(x.node, GeluStage::Scaled),
    );
    ctx.define_act(node, idx, x.dims.clone())?;
    Ok(true)
}

/// Moves the placeholder `p` of a GELU pattern on to `stage` and binds `node`'s output to it.
fn advance(
    ctx: &mut Ctx,
    node: NodeView<'_>,
    p: &Act,
    stage: GeluStage,
) -> Result<bool, ImportError> {
    let Fusion::Gelu { x, .. } = ctx.nodes()[p.node].fusion else {
        unreachable!("advance() on a GELU placeholder")
    };
    ctx.node_mut(p.node).fusion = gelu(x, stage);
    ctx.define_act(node, p.node, p.dims.clone())?;
    Ok(true)
}

/// The value of a one-element float constant.
fn scalar(c: &ConstTensor) -> Option<f64> {
    match c.f32s("").ok()? {
        [v] => Some(f64::from(*v)),
        _ => None,
    }
}

/// Whether `v` is `want` up to f32 rounding (exporters write these constants in f32 or f64).
fn near(v: f64, want: f64) -> bool {
    (v - want).abs() <= 1e-6 * want.abs()
}

/// Writes the ONNX nodes of activation `a`.
pub(crate) fn export(cx: &mut ExportCtx, node: &Node, a: Activation, inputs: &[String], out: &str) {
    let x = inputs[0].clone();
    let name = node.name.as_str();
    let one = |cx: &mut ExportCtx, op: &str, attrs: Vec<AttributeProto>| {
        cx.node(op, name, vec![x.clone()], out, attrs)
    };
    match a {
        Activation::Relu6 => export_clip(cx, name, &x, Some(0.0), Some(6.0), out),
        Activation::Clip { min, max } => export_clip(cx, name, &x, min, max, out),
        Activation::HardSwish => gated(
            cx,
            name,
            &x,
            "HardSigmoid",
            hard_sigmoid_attrs(1.0 / 6.0, 0.5),
            out,
        ),
        Activation::HardSigmoid { alpha, beta } => {
            one(cx, "HardSigmoid", hard_sigmoid_attrs(alpha, beta))
        }
        Activation::Sigmoid => one(cx, "Sigmoid", Vec::new()),
        Activation::Silu => gated(cx, name, &x, "Sigmoid", Vec::new(), out),
        Activation::LeakyRelu { alpha } => {
            one(cx, "LeakyRelu", vec![AttributeProto::float("alpha", alpha)])
        }
        Activation::Gelu { tanh: false } => export_gelu_erf(cx, name, &x, out),
        Activation::Gelu { tanh: true } => export_gelu_tanh(cx, name, &x, out),
    }
}

fn hard_sigmoid_attrs(alpha: f32, beta: f32) -> Vec<AttributeProto> {
    vec![
        AttributeProto::float("alpha", alpha),
        AttributeProto::float("beta", beta),
    ]
}

fn export_clip(
    cx: &mut ExportCtx,
    name: &str,
    x: &str,
    min: Option<f32>,
    max: Option<f32>,
    out: &str,
) {
    let mut inputs = vec![x.to_string()];
    for (v, what) in [(min, "min"), (max, "max")] {
        inputs.push(match v {
            Some(v) => cx.const_f32_scalar(&format!("{name}::{what}"), v),
            None => String::new(),
        });
    }
    while inputs.last().is_some_and(String::is_empty) {
        inputs.pop();
    }
    cx.node("Clip", name, inputs, out, Vec::new());
}

/// `x * gate(x)`: the gate carries the node's name.
fn gated(
    cx: &mut ExportCtx,
    name: &str,
    x: &str,
    gate: &str,
    attrs: Vec<AttributeProto>,
    out: &str,
) {
    let g = cx.fresh(&format!("{name}::gate"));
    cx.node(gate, name, vec![x.to_string()], &g, attrs);
    let mul = format!("{name}::mul");
    cx.node("Mul", &mul, vec![x.to_string(), g], out, Vec::new());
}

/// Appends `op(a, b)` named `<name>::<what>` and returns its output (or writes `out`).
fn binary(
    cx: &mut ExportCtx,
    name: &str,
    what: &str,
    op: &str,
    a: String,
    b: String,
    out: Option<&str>,
) -> String {
    let o = match out {
        Some(o) => o.to_string(),
        None => cx.fresh(&format!("{name}::{what}")),
    };
    cx.node(op, &format!("{name}::{what}"), vec![a, b], &o, Vec::new());
    o
}

/// `Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)`, PyTorch's form; the `Div` carries the name.
fn export_gelu_erf(cx: &mut ExportCtx, name: &str, x: &str, out: &str) {
    let sqrt2 = cx.const_f32_scalar(&format!("{name}::sqrt2"), std::f32::consts::SQRT_2);
    let scaled = cx.fresh(&format!("{name}::scaled"));
    cx.node("Div", name, vec![x.to_string(), sqrt2], &scaled, Vec::new());
    let erf = cx.fresh(&format!("{name}::erf"));
    cx.node(
        "Erf",
        &format!("{name}::erf"),
        vec![scaled],
        &erf,
        Vec::new(),
    );
    let c1 = cx.const_f32_scalar(&format!("{name}::one"), 1.0);
    let p1 = binary(cx, name, "plus_one", "Add", erf, c1, None);
    let xm = binary(cx, name, "times_x", "Mul", x.to_string(), p1, None);
    let half = cx.const_f32_scalar(&format!("{name}::half"), 0.5);
    binary(cx, name, "half", "Mul", xm, half, Some(out));
}

/// `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))` in elementary ops; the first
/// `Mul` carries the name.
fn export_gelu_tanh(cx: &mut ExportCtx, name: &str, x: &str, out: &str) {
    let xs = x.to_string();
    let sq = cx.fresh(&format!("{name}::square"));
    cx.node("Mul", name, vec![xs.clone(), xs.clone()], &sq, Vec::new());
    let cube = binary(cx, name, "cube", "Mul", sq, xs.clone(), None);
    let c = cx.const_f32_scalar(&format!("{name}::c"), 0.044_715);
    let cc = binary(cx, name, "cubic", "Mul", cube, c, None);
    let inner = binary(cx, name, "inner", "Add", xs.clone(), cc, None);
    let k = cx.const_f32_scalar(&format!("{name}::k"), 0.797_884_6);
    let u = binary(cx, name, "u", "Mul", inner, k, None);
    let t = cx.fresh(&format!("{name}::tanh"));
    cx.node("Tanh", &format!("{name}::tanh"), vec![u], &t, Vec::new());
    let c1 = cx.const_f32_scalar(&format!("{name}::one"), 1.0);
    let p1 = binary(cx, name, "plus_one", "Add", t, c1, None);
    let xm = binary(cx, name, "times_x", "Mul", xs, p1, None);
    let half = cx.const_f32_scalar(&format!("{name}::half"), 0.5);
    binary(cx, name, "half", "Mul", xm, half, Some(out));
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use shears_ir::{Activation, Graph, Op};

    use super::super::super::import_onnx_bytes;
    use super::super::super::proto::{
        dtype, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
        TensorShapeProto, TypeProto, TypeTensor, ValueInfoProto,
    };
    use super::super::super::tensor::encode_f32;
    use crate::IoError;

    fn value(name: &str) -> ValueInfoProto {
        let dim = |v: i64| Dimension {
            dim_value: Some(v),
            ..Default::default()
        };
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeTensor {
                    elem_type: Some(dtype::FLOAT),
                    shape: Some(TensorShapeProto {
                        dim: vec![dim(1), dim(2), dim(3), dim(3)],
                    }),
                }),
                denotation: None,
            }),
            doc_string: None,
        }
    }

    fn node(op: &str, name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            name: Some(name.to_string()),
            op_type: Some(op.to_string()),
            attribute: attrs,
            ..Default::default()
        }
    }

    /// Input `x` `[1, 2, 3, 3]`, scalar constants `c<value>` for each of `consts`, output `y`.
    fn import(opset: i64, nodes: Vec<NodeProto>, consts: &[f32]) -> Result<Graph, IoError> {
        let model = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: None,
                version: Some(opset),
            }],
            graph: Some(GraphProto {
                node: nodes,
                initializer: consts
                    .iter()
                    .map(|v| encode_f32(&format!("c{v}"), &[], &[*v]))
                    .collect(),
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        };
        import_onnx_bytes(&model.encode_to_vec(), "t.onnx").map(|(g, _)| g)
    }

    fn ops(g: &Graph) -> Vec<Op> {
        g.nodes()[1..].iter().map(|n| n.op.clone()).collect()
    }

    #[test]
    fn single_node_activations() {
        let f = AttributeProto::float;
        let cases = [
            (
                14,
                node("HardSwish", "y", &["x"], vec![]),
                Activation::HardSwish,
            ),
            (
                13,
                node("LeakyRelu", "y", &["x"], vec![f("alpha", 0.2)]),
                Activation::LeakyRelu { alpha: 0.2 },
            ),
            (
                13,
                node("HardSigmoid", "y", &["x"], vec![]),
                Activation::HardSigmoid {
                    alpha: 0.2,
                    beta: 0.5,
                },
            ),
            (
                20,
                node(
                    "Gelu",
                    "y",
                    &["x"],
                    vec![AttributeProto::string("approximate", "tanh")],
                ),
                Activation::Gelu { tanh: true },
            ),
            (
                20,
                node("Gelu", "y", &["x"], vec![]),
                Activation::Gelu { tanh: false },
            ),
            (
                6,
                node("Clip", "y", &["x"], vec![f("min", 0.0), f("max", 6.0)]),
                Activation::Relu6,
            ),
            (
                6,
                node("Clip", "y", &["x"], vec![f("max", 2.5)]),
                Activation::Clip {
                    min: None,
                    max: Some(2.5),
                },
            ),
        ];
        for (opset, n, want) in cases {
            let g = import(opset, vec![n], &[]).unwrap();
            assert_eq!(ops(&g), [Op::Act(want)], "{want:?}");
        }
        // Opset 11+: the bounds are constant inputs, either may be omitted.
        let g = import(
            13,
            vec![node("Clip", "y", &["x", "c0", "c6"], vec![])],
            &[0.0, 6.0],
        );
        assert_eq!(ops(&g.unwrap()), [Op::Act(Activation::Relu6)]);
        let g = import(13, vec![node("Clip", "y", &["x", "c0"], vec![])], &[0.0]);
        let clip = Activation::Clip {
            min: Some(0.0),
            max: None,
        };
        assert_eq!(ops(&g.unwrap()), [Op::Act(clip)]);
        let g = import(
            13,
            vec![node("Clip", "y", &["x", "", "c1"], vec![])],
            &[1.0],
        )
        .unwrap();
        let clip = Activation::Clip {
            min: None,
            max: Some(1.0),
        };
        assert_eq!(ops(&g), [Op::Act(clip)]);
    }

    #[test]
    fn patterns_fold_into_one_activation() {
        let silu = vec![
            node("Sigmoid", "s", &["x"], vec![]),
            node("Mul", "y", &["s", "x"], vec![]),
        ];
        assert_eq!(
            ops(&import(13, silu, &[]).unwrap()),
            [Op::Act(Activation::Silu)]
        );
        let hard = vec![
            node(
                "HardSigmoid",
                "s",
                &["x"],
                vec![
                    AttributeProto::float("alpha", 1.0 / 6.0),
                    AttributeProto::float("beta", 0.5),
                ],
            ),
            node("Mul", "y", &["x", "s"], vec![]),
        ];
        assert_eq!(
            ops(&import(13, hard, &[]).unwrap()),
            [Op::Act(Activation::HardSwish)]
        );
        // PyTorch's exact GELU before opset 20, with f64-rounded constants written as f32.
        let r2 = std::f32::consts::SQRT_2;
        let gelu = vec![
            node("Div", "d", &["x", &format!("c{r2}")], vec![]),
            node("Erf", "e", &["d"], vec![]),
            node("Add", "a", &["e", "c1"], vec![]),
            node("Mul", "m", &["x", "a"], vec![]),
            node("Mul", "y", &["m", "c0.5"], vec![]),
        ];
        let g = import(17, gelu, &[r2, 1.0, 0.5]).unwrap();
        assert_eq!(ops(&g), [Op::Act(Activation::Gelu { tanh: false })]);
    }

    #[test]
    fn unsupported_products_and_values_are_named() {
        let err =
            |opset, nodes, consts: &[f32]| import(opset, nodes, consts).unwrap_err().to_string();
        // A sigmoid gating something else stays a sigmoid, and the product is a general
        // (broadcasting) Mul, not a SiLU.
        let is_mul = |op: &Op| matches!(op, Op::Binary(b) if b.kind == shears_ir::BinaryKind::Mul);
        let gate = vec![
            node("Relu", "r", &["x"], vec![]),
            node("Sigmoid", "s", &["x"], vec![]),
            node("Mul", "y", &["s", "r"], vec![]),
        ];
        let g = import(13, gate, &[]).unwrap();
        let o = ops(&g);
        assert!(
            o.contains(&Op::Act(Activation::Sigmoid)) && o.iter().any(is_mul),
            "{o:?}"
        );
        // The sigmoid's value is used twice: no SiLU fold.
        let twice = vec![
            node("Sigmoid", "s", &["x"], vec![]),
            node("Mul", "m", &["s", "x"], vec![]),
            node("Add", "y", &["m", "s"], vec![]),
        ];
        let o = ops(&import(13, twice, &[]).unwrap());
        assert!(!o.contains(&Op::Act(Activation::Silu)), "{o:?}");
        assert!(
            o.contains(&Op::Act(Activation::Sigmoid)) && o.iter().any(is_mul),
            "{o:?}"
        );
        // An incomplete GELU pattern.
        let r2 = std::f32::consts::SQRT_2;
        let half = vec![
            node("Div", "d", &["x", &format!("c{r2}")], vec![]),
            node("Erf", "y", &["d"], vec![]),
        ];
        assert!(err(17, half, &[r2]).contains("\"d\""));
        let e = err(
            20,
            vec![node(
                "Gelu",
                "y",
                &["x"],
                vec![AttributeProto::string("approximate", "fast")],
            )],
            &[],
        );
        assert!(e.contains("\"y\" (Gelu)") && e.contains("\"fast\""), "{e}");
        let e = err(
            13,
            vec![node("Clip", "y", &["x", "c2", "c1"], vec![])],
            &[2.0, 1.0],
        );
        assert!(e.contains("\"y\" (Clip)") && e.contains("[2, 1]"), "{e}");
        let pool = vec![node(
            "MaxPool",
            "y",
            &["x"],
            vec![
                AttributeProto::ints("kernel_shape", &[2, 2]),
                AttributeProto::int("ceil_mode", 2),
            ],
        )];
        assert!(err(13, pool, &[]).contains("ceil_mode 2"));
    }

    #[test]
    fn ceil_mode_pools_import() {
        let pool = |op: &str| {
            node(
                op,
                "y",
                &["x"],
                vec![
                    AttributeProto::ints("kernel_shape", &[2, 2]),
                    AttributeProto::ints("strides", &[2, 2]),
                    AttributeProto::int("ceil_mode", 1),
                ],
            )
        };
        for op in ["MaxPool", "AveragePool"] {
            let g = import(13, vec![pool(op)], &[]).unwrap();
            assert_eq!(g.shape(g.outputs()[0]), [2, 2, 2], "{op}: 3 -> 2 with ceil");
        }
    }
}
