//! `Slice` (every `s`-th row and column) and channel `Pad` (zeros), to and from the option-A
//! shortcut [`ShortcutA`].
//!
//! The export writes one `Slice` over H and W with steps `[s, s]`, then one `Pad` of the
//! channel axis. On import a `Slice` starts a shortcut node; a second `Slice` (PyTorch slices
//! one axis at a time) and a following channel `Pad` fold into it when they are its only
//! consumer. A shortcut whose row and column steps still differ at the end is refused.

use shears_ir::{Node, Op, ShortcutA};

use super::super::context::{Ctx, Fusion};
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::proto::AttributeProto;
use super::super::registry::OpSpec;
use super::super::ImportError;
use super::{axis, split, to_dim};

/// `Slice(X, starts, ends[, axes[, steps]])` keeping whole axes, with positive steps on H
/// and W only.
pub(crate) const SLICE: OpSpec = OpSpec {
    op_type: "Slice",
    min_opset: 1,
    inputs: (1, 5),
    outputs: (1, 1),
    convert: convert_slice,
};

/// `Pad(X, pads[, constant_value[, axes]])` with zeros on the channel axis only.
pub(crate) const PAD: OpSpec = OpSpec {
    op_type: "Pad",
    min_opset: 2,
    inputs: (1, 4),
    outputs: (1, 1),
    convert: convert_pad,
};

/// An end index that means "to the end of the axis" whatever its size.
const TO_END: i64 = i32::MAX as i64;

fn convert_slice(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let list = |i: usize, attr: &str| -> Result<Option<Vec<i64>>, ImportError> {
        if node.opset >= 10 {
            ctx.opt_constant(node, i)?
                .map(|t| t.i64s(&format!("Slice {attr}")).map(<[i64]>::to_vec))
                .transpose()
        } else {
            Ok(node.attr_ints(attr)?.map(<[i64]>::to_vec))
        }
    };
    let starts = list(1, "starts")?.ok_or_else(|| node.corrupt("starts are required"))?;
    let ends = list(2, "ends")?.ok_or_else(|| node.corrupt("ends are required"))?;
    let axes = list(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = list(4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(node.corrupt("starts, ends, axes and steps differ in length"));
    }
    let x = ctx.feature_map(node, 0)?;
    if let Some(r) = split::channel_range(node, &x.dims, &starts, &ends, &axes, &steps)? {
        return split::convert_channel_slice(ctx, node, x, r);
    }
    let mut step_hw = [1usize; 2];
    let mut seen = [false; 4];
    for k in 0..starts.len() {
        let a = axis(node, axes[k], 4)?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(node.corrupt(format!("axis {a} is sliced twice")));
        }
        let step = steps[k];
        if step <= 0 {
            return Err(node.unsupported(format!("step {step}; only positive steps")));
        }
        let whole = if a == 0 {
            starts[k] == 0 && ends[k] >= TO_END
        } else {
            let dim = x.dims[a - 1] as i64;
            let clamp = |v: i64| if v < 0 { v.saturating_add(dim) } else { v }.clamp(0, dim);
            clamp(starts[k]) == 0 && clamp(ends[k]) == dim
        };
        if !whole || (a < 2 && step != 1) {
            return Err(node.unsupported(format!(
                "slice [{}:{}:{step}] of axis {a}; only strided subsampling of H and W is supported",
                starts[k], ends[k]
            )));
        }
        if a >= 2 {
            step_hw[a - 2] = to_dim(node, step, "step")?;
        }
    }
    let input = node.input(0).expect("feature_map() found it");
    let (source, [sh, sw]) = match ctx.nodes()[x.node].fusion {
        Fusion::Shortcut { sh, sw } if ctx.uses(input) == 1 => {
            let steps = [sh.saturating_mul(step_hw[0]), sw.saturating_mul(step_hw[1])];
            (Some(x.node), steps)
        }
        _ => (None, step_hw),
    };
    to_dim(node, sh.max(sw) as i64, "accumulated step")?;
    let origin = match source {
        Some(idx) => ctx.nodes()[idx].inputs[0],
        None => x.node,
    };
    let o = ctx.shape(origin).to_vec();
    let shape = vec![o[0], o[1].div_ceil(sh), o[2].div_ceil(sw)];
    let fusion = Fusion::Shortcut { sh, sw };
    let op = ShortcutA {
        stride: sh,
        pad_before: 0,
        pad_after: 0,
    };
    let idx = match (source, sh == sw) {
        (Some(idx), true) => {
            ctx.refit(node, idx, op.into(), Vec::new())?;
            idx
        }
        (Some(idx), false) => {
            ctx.set_partial_shape(idx, shape.clone());
            idx
        }
        (None, true) => ctx.push(node, None, op.into(), &[origin], Vec::new())?,
        (None, false) => ctx.push_partial(node, op.into(), origin, shape.clone(), fusion),
    };
    ctx.node_mut(idx).fusion = fusion;
    let dims = ctx.shape(idx).to_vec();
    ctx.define_act(node, idx, dims)
}

fn convert_pad(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let mode = node.attr_string("mode")?.unwrap_or("constant");
    if mode != "constant" {
        return Err(node.unsupported(format!("mode {mode:?}; only constant zeros")));
    }
    let (pads, value, axes) = if node.opset >= 11 {
        let pads = ctx.constant(node, 1)?.i64s("Pad pads")?.to_vec();
        let value = match ctx.opt_constant(node, 2)? {
            None => 0.0,
            Some(t) => match t.i64s("") {
                Ok(&[v]) => v as f32,
                _ => t.scalar_f32("Pad constant_value")?,
            },
        };
        let axes = ctx
            .opt_constant(node, 3)?
            .map(|t| t.i64s("Pad axes").map(<[i64]>::to_vec))
            .transpose()?;
        (pads, value, axes)
    } else {
        let attr = if node.opset >= 2 { "pads" } else { "paddings" };
        let pads = node
            .attr_ints(attr)?
            .ok_or_else(|| node.corrupt("pads are required"))?
            .to_vec();
        (pads, node.attr_float("value", 0.0)?, None)
    };
    if value != 0.0 {
        return Err(node.unsupported(format!("padding with {value}; only zeros")));
    }
    let axes: Vec<usize> = match axes {
        Some(a) => a
            .iter()
            .map(|&a| axis(node, a, 4))
            .collect::<Result<_, _>>()?,
        None => (0..4).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(node.corrupt(format!("{} pads for {} axes", pads.len(), axes.len())));
    }
    let mut full = [0i64; 8];
    for (k, &a) in axes.iter().enumerate() {
        full[a] = pads[k];
        full[a + 4] = pads[k + axes.len()];
    }
    if full.iter().enumerate().any(|(i, &p)| i % 4 != 1 && p != 0) {
        return Err(node.unsupported(format!(
            "pads {full:?}; only zero channels before and after"
        )));
    }
    let before = to_dim(node, full[1], "channel pad")?;
    let after = to_dim(node, full[5], "channel pad")?;
    let x = ctx.feature_map(node, 0)?;
    let input = node.input(0).expect("feature_map() found it");
    let fold = match (&ctx.nodes()[x.node].fusion, &ctx.nodes()[x.node].op) {
        (Fusion::Shortcut { sh, sw }, Op::ShortcutA(s))
            if sh == sw && s.pad_before == 0 && s.pad_after == 0 && ctx.uses(input) == 1 =>
        {
            Some((x.node, s.stride))
        }
        _ => None,
    };
    let idx = match fold {
        Some((idx, stride)) => {
            let op = ShortcutA {
                stride,
                pad_before: before,
                pad_after: after,
            };
            ctx.refit(node, idx, op.into(), Vec::new())?;
            ctx.node_mut(idx).fusion = Fusion::None;
            idx
        }
        None => {
            let op = ShortcutA {
                stride: 1,
                pad_before: before,
                pad_after: after,
            };
            ctx.push(node, None, op.into(), &[x.node], Vec::new())?
        }
    };
    let dims = ctx.shape(idx).to_vec();
    ctx.define_act(node, idx, dims)
}

/// Writes `Slice` over H and W (when subsampling, or for a shortcut that does nothing) and
/// `Pad` of the channel axis (when padding).
pub(crate) fn export(cx: &mut ExportCtx, node: &Node, s: &ShortcutA, inputs: &[String], out: &str) {
    let pads = s.pad_before > 0 || s.pad_after > 0;
    let mut cur = inputs[0].clone();
    if s.stride != 1 || !pads {
        let sliced = if pads {
            cx.fresh(&format!("{}::sliced", node.name))
        } else {
            out.to_string()
        };
        let stride = s.stride as i64;
        let ins = vec![
            cur,
            cx.const_i64(&format!("{}::starts", node.name), &[0, 0]),
            cx.const_i64(&format!("{}::ends", node.name), &[i64::MAX, i64::MAX]),
            cx.const_i64(&format!("{}::axes", node.name), &[2, 3]),
            cx.const_i64(&format!("{}::steps", node.name), &[stride, stride]),
        ];
        cx.node("Slice", &node.name, ins, &sliced, Vec::new());
        cur = sliced;
    }
    if pads {
        let name = if s.stride != 1 {
            format!("{}::pad", node.name)
        } else {
            node.name.clone()
        };
        let (b, a) = (s.pad_before as i64, s.pad_after as i64);
        let p = cx.const_i64(&format!("{}::pads", node.name), &[0, b, 0, 0, 0, a, 0, 0]);
        cx.node(
            "Pad",
            &name,
            vec![cur, p],
            out,
            vec![AttributeProto::string("mode", "constant")],
        );
    }
}
