//! Static shape subgraphs, evaluated at import.
//!
//! Exporters often compute a `Reshape` target from the input's shape at run time: `Shape` →
//! `Gather` → `Unsqueeze` → `Concat` (with `Cast`, `Constant` and integer arithmetic along the
//! way). Every per-sample dimension is static here, so such a subgraph is a constant: before a
//! node goes to its converter, the pipeline asks [`try_fold`], which evaluates the node when
//! all its inputs are constants (for `Shape`, when its input's dims are known) and binds the
//! output to the result. The batch axis may be symbolic; `Shape` then writes [`BATCH_DIM`] in
//! its place, which gathers, concatenations and casts carry along, `Reshape` reads as "the
//! batch size", and arithmetic refuses.

use std::rc::Rc;

use super::context::{Ctx, Value};
use super::node::NodeView;
use super::ops::axis;
use super::proto::dtype;
use super::tensor::{ConstData, ConstTensor};
use super::ImportError;

/// Stands for the symbolic batch size in a folded shape tensor.
pub(crate) const BATCH_DIM: i64 = -(1 << 40);

/// Evaluates one node on its constant inputs (omitted optional inputs skipped).
type FoldFn = fn(&Ctx, NodeView<'_>, &[Rc<ConstTensor>]) -> Result<ConstTensor, ImportError>;

/// The operators folded on constant inputs.
const FOLDERS: &[(&str, FoldFn)] = &[
    ("Gather", gather),
    ("Unsqueeze", unsqueeze),
    ("Squeeze", squeeze),
    ("Concat", concat),
    ("Cast", cast),
    ("Reshape", reshape),
    ("Add", arith),
    ("Sub", arith),
    ("Mul", arith),
    ("Div", arith),
];

/// Folds `node` if it is a foldable operator whose inputs are all known; returns whether it
/// did.
pub(crate) fn try_fold(ctx: &mut Ctx, node: NodeView<'_>) -> Result<bool, ImportError> {
    let t = if node.op_type() == "Shape" {
        match shape(ctx, node)? {
            Some(t) => t,
            None => return Ok(false),
        }
    } else {
        let Some(&(_, f)) = FOLDERS.iter().find(|(op, _)| *op == node.op_type()) else {
            return Ok(false);
        };
        let mut ins = Vec::with_capacity(node.n_inputs());
        for i in 0..node.n_inputs() {
            match node.input(i) {
                None => continue,
                Some(_) if !ctx.is_constant(node, i) => return Ok(false),
                Some(_) => ins.push(ctx.constant(node, i)?),
            }
        }
        if ins.is_empty() {
            return Ok(false);
        }
        f(ctx, node, &ins)?
    };
    let name = node.output(0).unwrap_or_default().to_string();
    ctx.define(node, 0, Value::Const(Rc::new(ConstTensor { name, ..t })))?;
    Ok(true)
}

/// A shape target for messages, with [`BATCH_DIM`] written `N`.
pub(crate) fn show(target: &[i64]) -> String {
    let parts: Vec<String> = target
        .iter()
        .map(|&v| match v {
            BATCH_DIM => "N".to_string(),
            v => v.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn int_tensor(dims: Vec<usize>, data: Vec<i64>) -> ConstTensor {
    ConstTensor {
        name: String::new(),
        dims,
        data: ConstData::I64(data),
    }
}

/// `Shape(x)` of an activation or a constant, with `start` / `end` (opset 15).
fn shape(ctx: &Ctx, node: NodeView<'_>) -> Result<Option<ConstTensor>, ImportError> {
    let Some(name) = node.input(0) else {
        return Ok(None);
    };
    let full: Vec<i64> = match ctx.value(name) {
        Some(Value::Const(c)) => c.dims.iter().map(|&d| d as i64).collect(),
        Some(Value::Input(dims)) => batched(ctx, dims),
        Some(Value::Act(a)) => batched(ctx, &a.dims),
        Some(Value::ChannelsLast(a)) => match a.dims.as_slice() {
            [c, h, w] => batched(ctx, &[*h, *w, *c]),
            _ => return Ok(None),
        },
        None => return Ok(None),
    };
    let rank = full.len() as i64;
    let clamp = |v: i64| -> usize { (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize };
    let start = clamp(node.attr_int("start", 0)?);
    let end = clamp(node.attr_int("end", rank)?);
    let part = full[start..end.max(start)].to_vec();
    Ok(Some(int_tensor(vec![part.len()], part)))
}

fn batched(ctx: &Ctx, dims: &[usize]) -> Vec<i64> {
    let n = ctx.batch.map_or(BATCH_DIM, |b| b as i64);
    std::iter::once(n)
        .chain(dims.iter().map(|&d| d as i64))
        .collect()
}

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for a in (0..dims.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * dims[a + 1];
    }
    s
}

/// Picks elements `idx` of either family.
fn pick(data: &ConstData, idx: impl Iterator<Item = usize>) -> ConstData {
    match data {
        ConstData::F32(v) => ConstData::F32(idx.map(|i| v[i]).collect()),
        ConstData::I64(v) => ConstData::I64(idx.map(|i| v[i]).collect()),
        ConstData::Other(t) => ConstData::Other(*t),
    }
}

fn ints<'a>(node: NodeView<'_>, t: &'a ConstTensor, what: &str) -> Result<&'a [i64], ImportError> {
    t.i64s(what)
        .map_err(|_| node.unsupported(format!("{what} {:?} must be an integer tensor", t.name)))
}

fn gather(
    _: &Ctx,
    node: NodeView<'_>,
    ins: &[Rc<ConstTensor>],
) -> Result<ConstTensor, ImportError> {
    let [data, idx] = ins else {
        return Err(node.corrupt("Gather takes data and indices"));
    };
    let rank = data.dims.len();
    let ax = axis(node, node.attr_int("axis", 0)?, rank.max(1))?;
    if rank == 0 {
        return Err(node.corrupt("gathering from a scalar"));
    }
    let n = data.dims[ax] as i64;
    let picks = ints(node, idx, "Gather indices")?
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + n } else { i };
            if (0..n).contains(&j) {
                Ok(j as usize)
            } else {
                Err(node.corrupt(format!("index {i} is out of range for axis of {n}")))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outer: usize = data.dims[..ax].iter().product();
    let inner: usize = data.dims[ax + 1..].iter().product();
    let order = (0..outer).flat_map(|o| {
        picks
            .iter()
            .flat_map(move |&p| (0..inner).map(move |i| (o * data.dims[ax] + p) * inner + i))
    });
    let mut dims = data.dims[..ax].to_vec();
    dims.extend_from_slice(&idx.dims);
    dims.extend_from_slice(&data.dims[ax + 1..]);
    Ok(ConstTensor {
        name: String::new(),
        dims,
        data: pick(&data.data, order),
    })
}

/// The `axes` of `Unsqueeze` / `Squeeze`: input 1 from opset 13, else the attribute.
fn axes_of(node: NodeView<'_>, ins: &[Rc<ConstTensor>]) -> Result<Option<Vec<i64>>, ImportError> {
    if node.opset >= 13 {
        ins.get(1)
            .map(|t| ints(node, t, "axes").map(<[i64]>::to_vec))
            .transpose()
    } else {
        Ok(node.attr_ints("axes")?.map(<[i64]>::to_vec))
    }
}

fn unsqueeze(
    _: &Ctx,
    node: NodeView<'_>,
    ins: &[Rc<ConstTensor>],
) -> Result<ConstTensor, ImportError> {
    let axes = axes_of(node, ins)?.ok_or_else(|| node.corrupt("Unsqueeze needs axes"))?;
    let rank = ins[0].dims.len() + axes.len();
    let mut at = axes
        .iter()
        .map(|&a| axis(node, a, rank))
        .collect::<Result<Vec<_>, _>>()?;
    at.sort_unstable();
    let mut dims = ins[0].dims.clone();
    for a in at {
        dims.insert(a.min(dims.len()), 1);
    }
    Ok(ConstTensor {
        dims,
        ..(*ins[0]).clone()
    })
}

fn squeeze(
    _: &Ctx,
    node: NodeView<'_>,
    ins: &[Rc<ConstTensor>],
) -> Result<ConstTensor, ImportError> {
    let d = &ins[0].dims;
    let drop: Vec<usize> = match axes_of(node, ins)? {
        Some(axes) => axes
            .iter()
            .map(|&a| axis(node, a, d.len()))
            .collect::<Result<_, _>>()?,
        None => (0..d.len()).filter(|&a| d[a] == 1).collect(),
    };
    if drop.iter().any(|&a| d[a] != 1) {
        return Err(node.corrupt(format!("squeezing axes {drop:?} of shape {d:?}")));
    }
    let dims = (0..d.len())
        .filter(|a| !drop.contains(a))
        .map(|a| d[a])
        .collect();
    Ok(ConstTensor {
        dims,
        ..(*ins[0]).clone()
    })
}

fn concat(
    _: &Ctx,
    node: NodeView<'_>,
    ins: &[Rc<ConstTensor>],
) -> Result<ConstTensor, ImportError> {
    let first = &ins[0];
    let rank = first.dims.len();
    let ax = axis(node, node.attr_int("axis", 0)?, rank.max(1))?;
    let same_family =
        |t: &ConstTensor| std::mem::discriminant(&t.data) == std::mem::discriminant(&first.data);
    if ins.iter().any(|t| {
        t.dims.len() != rank
            || t.dims[..ax] != first.dims[..ax]
            || t.dims[ax + 1..] != first.dims[ax + 1..]
            || !same_family(t)
    }) {
        return Err(node.corrupt("concatenated constants differ in rank, shape or type"));
    }
    let outer: usize = first.dims[..ax].iter().product();
    let inner: usize = first.dims[ax + 1..].iter().product();
    let mut dims = first.dims.clone();
    dims[ax] = ins.iter().map(|t| t.dims[ax]).sum();
    let mut data = match &first.data {
        ConstData::F32(_) => ConstData::F32(Vec::new()),
        ConstData::I64(_) => ConstData::I64(Vec::new()),
        ConstData::Other(t) => return Err(node.unsupported(format!("concatenating type {t}"))),
    };
    for o in 0..outer {
        for t in ins {
            let len = t.dims[ax] * inner;
            let part = pick(&t.data, o * len..(o + 1) * len);
            match (&mut data, part) {
                (ConstData::F32(v), ConstData::F32(p)) => v.extend(p),
                (ConstData::I64(v), ConstData::I64(p)) => v.extend(p),
                _ => unreachable!("families checked above"),
            }
        }
    }
    Ok(ConstTensor {
        name: String::new(),
        dims,
        data,
    })
}

fn cast(_: &Ctx, node: NodeView<'_>, ins: &[Rc<ConstTensor>]) -> Result<ConstTensor, ImportError> {
    let to = node.attr_int("to", -1)?;
    use dtype::*;
    let float = [FLOAT, FLOAT16, DOUBLE, BFLOAT16].contains(&(to as i32));
    let int = [
        UINT8, INT8, UINT16, INT16, INT32, INT64, BOOL, UINT32, UINT64,
    ]
    .contains(&(to as i32));
    let data = match (&ins[0].data, float, int) {
        (ConstData::F32(v), true, _) => ConstData::F32(v.clone()),
        (ConstData::I64(v), true, _) => ConstData::F32(v.iter().map(|&x| x as f32).collect()),
        (ConstData::I64(v), _, true) => ConstData::I64(v.clone()),
        (ConstData::F32(v), _, true) => ConstData::I64(v.iter().map(|&x| x as i64).collect()),
        _ => return Err(node.unsupported(format!("cast to element type {to}"))),
    };
    Ok(ConstTensor {
        data,
        ..(*ins[0]).clone()
    })
}

fn reshape(
    _: &Ctx,
    node: NodeView<'_>,
    ins: &[Rc<ConstTensor>],
) -> Result<ConstTensor, ImportError> {
    let [data, target] = ins else {
        return Err(node.unsupported("Reshape of a constant needs a constant shape input"));
    };
    let target = ints(node, target, "Reshape shape")?;
    let numel: usize = data.dims.iter().product();
    let mut dims = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &v) in target.iter().enumerate() {
        match v {
            0 => dims.push(
                *data
                    .dims
                    .get(i)
                    .ok_or_else(|| node.corrupt("0 beyond the rank"))?,
            ),
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            v if v > 0 => dims.push(v as usize),
            v => return Err(node.corrupt(format!("reshape target entry {v}"))),
        }
    }
    let known: usize = dims.iter().product();
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(node.corrupt(format!("cannot reshape {:?} to {target:?}", data.dims)));
        }
        dims[i] = numel / known;
    }
    if dims.iter().product::<usize>() != numel {
        return Err(node.corrupt(format!("cannot reshape {:?} to {target:?}", data.dims)));
    }
    Ok(ConstTensor {
        dims,
        ..(**data).clone()
    })
}

/// `Add`, `Sub`, `Mul`, `Div` of two constants with NumPy broadcasting.
fn arith(_: &Ctx, node: NodeView<'_>, ins: &[Rc<ConstTensor>]) -> Result<ConstTensor, ImportError> {
    let [a, b] = ins else {
        return Err(node.corrupt("takes two inputs"));
    };
    let rank = a.dims.len().max(b.dims.len());
    let pad = |d: &[usize]| -> Vec<usize> {
        let mut v = vec![1; rank - d.len()];
        v.extend_from_slice(d);
        v
    };
    let (da, db) = (pad(&a.dims), pad(&b.dims));
    let mut dims = Vec::with_capacity(rank);
    for (&x, &y) in da.iter().zip(&db) {
        dims.push(match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => {
                return Err(node.corrupt(format!(
                    "shapes {:?} and {:?} do not broadcast",
                    a.dims, b.dims
                )))
            }
        });
    }
    let (sa, sb, so) = (strides(&da), strides(&db), strides(&dims));
    let numel: usize = dims.iter().product();
    let index = |d: &[usize], s: &[usize], e: usize| -> usize {
        (0..rank)
            .map(|ax| {
                if d[ax] == 1 {
                    0
                } else {
                    (e / so[ax]) % dims[ax] * s[ax]
                }
            })
            .sum()
    };
    let op = node.op_type();
    let data = match (&a.data, &b.data) {
        (ConstData::I64(x), ConstData::I64(y)) => {
            let mut out = Vec::with_capacity(numel);
            for e in 0..numel {
                let (p, q) = (x[index(&da, &sa, e)], y[index(&db, &sb, e)]);
                if p == BATCH_DIM || q == BATCH_DIM {
                    return Err(node.unsupported(
                        "arithmetic on the batch size, which is symbolic (export with a fixed batch)",
                    ));
                }
                out.push(
                    match op {
                        "Add" => p.checked_add(q),
                        "Sub" => p.checked_sub(q),
                        "Mul" => p.checked_mul(q),
                        _ => p.checked_div(q),
                    }
                    .ok_or_else(|| {
                        node.corrupt(format!("{op} of {p} and {q} overflows or divides by 0"))
                    })?,
                );
            }
            ConstData::I64(out)
        }
        (ConstData::F32(x), ConstData::F32(y)) => ConstData::F32(
            (0..numel)
                .map(|e| {
                    let (p, q) = (x[index(&da, &sa, e)], y[index(&db, &sb, e)]);
                    match op {
                        "Add" => p + q,
                        "Sub" => p - q,
                        "Mul" => p * q,
                        _ => p / q,
                    }
                })
                .collect(),
        ),
        _ => return Err(node.unsupported(format!("{op} of constants of different element types"))),
    };
    Ok(ConstTensor {
        name: String::new(),
        dims,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::super::proto::{AttributeProto, GraphProto};
    use super::super::tensor::{encode_f32, encode_i64};
    use super::super::test_model::{info, model, op};
    use crate::onnx::import_onnx_bytes;
    use crate::IoError;

    /// conv → `Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]))` → `Gemm`, as the
    /// legacy exporter writes `x.view(x.size(0), -1)`; the shape is also cast to float and
    /// back, and multiplied by 1.
    fn dynamic_flatten(
        batch: i64,
        opset: i64,
        extra: Vec<super::super::proto::NodeProto>,
    ) -> Vec<u8> {
        let axes = |v: &[i64]| AttributeProto::ints("axes", v);
        let unsqueeze = if opset >= 13 {
            op("Unsqueeze", &["n", "zero"], "n1", Vec::new())
        } else {
            op("Unsqueeze", &["n"], "n1", vec![axes(&[0])])
        };
        let mut node = vec![
            op("Conv", &["x", "conv.weight"], "c", Vec::new()),
            op("Shape", &["c"], "s", Vec::new()),
            op(
                "Gather",
                &["s", "zero_scalar"],
                "n",
                vec![AttributeProto::int("axis", 0)],
            ),
            unsqueeze,
            op(
                "Cast",
                &["minus_one"],
                "m1f",
                vec![AttributeProto::int("to", 1)],
            ),
            op("Cast", &["m1f"], "m1", vec![AttributeProto::int("to", 7)]),
            op("Mul", &["m1", "one"], "m1b", Vec::new()),
            op(
                "Concat",
                &["n1", "m1b"],
                "target",
                vec![AttributeProto::int("axis", 0)],
            ),
            op("Reshape", &["c", "target"], "f", Vec::new()),
            op(
                "Gemm",
                &["f", "fc.weight"],
                "out",
                vec![AttributeProto::int("transB", 1)],
            ),
        ];
        node.extend(extra);
        let mut zero_scalar = encode_i64("zero_scalar", &[0]);
        zero_scalar.dims.clear();
        let graph = GraphProto {
            node,
            name: Some("flatten".into()),
            initializer: vec![
                encode_f32("conv.weight", &[2, 3, 1, 1], &[0.5; 6]),
                encode_f32("fc.weight", &[4, 2 * 3 * 3], &[0.25; 72]),
                zero_scalar,
                encode_i64("zero", &[0]),
                encode_i64("minus_one", &[-1]),
                encode_i64("one", &[1]),
            ],
            input: vec![info("x", &[batch, 3, 3, 3])],
            output: vec![info("out", &[batch, 4])],
            ..Default::default()
        };
        model(graph, opset)
    }

    #[test]
    fn shape_subgraphs_fold_into_a_flatten() {
        for (batch, opset) in [(-1, 13), (5, 13), (-1, 11), (2, 17)] {
            let (g, _) = import_onnx_bytes(&dynamic_flatten(batch, opset, Vec::new()), "f.onnx")
                .unwrap_or_else(|e| panic!("batch {batch} opset {opset}: {e}"));
            let ops: Vec<&str> = g.nodes().iter().map(|n| n.op.type_name()).collect();
            assert_eq!(
                ops,
                ["input", "conv2d", "flatten", "linear"],
                "batch {batch}"
            );
        }
    }

    #[test]
    fn arithmetic_on_a_symbolic_batch_is_refused() {
        let extra = vec![op("Add", &["n1", "one"], "bad", Vec::new())];
        let err = import_onnx_bytes(&dynamic_flatten(-1, 13, extra), "f.onnx").unwrap_err();
        let IoError::Unsupported { what, .. } = &err else {
            panic!("{err}")
        };
        assert!(what.contains("/bad") && what.contains("batch"), "{what}");
        // With a fixed batch the same arithmetic is plain integers.
        let extra = vec![op("Add", &["n1", "one"], "ok", Vec::new())];
        assert!(import_onnx_bytes(&dynamic_flatten(3, 13, extra), "f.onnx").is_ok());
        // A shape operator on a computed value is named.
        let extra = vec![op("Gather", &["c", "zero"], "g", Vec::new())];
        let err = import_onnx_bytes(&dynamic_flatten(3, 13, extra), "f.onnx").unwrap_err();
        assert!(
            err.to_string().contains("Gather") && err.to_string().contains("/g"),
            "{err}"
        );
    }
}
