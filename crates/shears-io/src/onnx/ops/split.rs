//! `Split` on the channel axis, and `Slice` of a channel range, to and from
//! [`ChannelOp::Slice`].
//!
//! Shears nodes have one output, so a k-way split becomes k channel-range nodes, named like
//! the ONNX node (`name`, `name_1`, ...); outputs nothing reads make no node. The split sizes
//! come from the `split` input (opset 13+), the `split` attribute (before 13), or are equal
//! (`num_outputs` from opset 18, or the number of outputs; the last part is smaller when the
//! channels do not divide). A `Slice` whose only non-whole axis is the channel axis, with step
//! 1, is a channel range ([`channel_range`]; `shortcut.rs` hands it over); other slices are
//! the option-A shortcut's. The export writes one `Slice` per range.

use shears_ir::{ChannelOp, Node};

use super::super::context::{Act, Ctx, Value};
use super::super::export::ExportCtx;
use super::super::node::NodeView;
use super::super::registry::OpSpec;
use super::super::ImportError;
use super::{axis, to_dim};

/// `Split(X[, split])` along the channel axis.
pub(crate) const SPLIT: OpSpec = OpSpec {
    op_type: "Split",
    min_opset: 2,
    inputs: (1, 2),
    outputs: (1, usize::MAX),
    convert: convert_split,
};

fn convert_split(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let x = ctx.feature_map(node, 0)?;
    let a = axis(node, node.attr_int("axis", 0)?, 4)?;
    if a != 1 {
        return Err(node.unsupported(format!(
            "split along axis {a}; only the channel axis (1) is supported"
        )));
    }
    let c = x.dims[0];
    let n_out = node.n_outputs();
    let given: Option<Vec<i64>> = if node.opset >= 13 {
        ctx.opt_constant(node, 1)?
            .map(|t| t.i64s("Split split").map(<[i64]>::to_vec))
            .transpose()?
    } else {
        node.attr_ints("split")?.map(<[i64]>::to_vec)
    };
    let sizes: Vec<usize> = match given {
        Some(s) => s
            .iter()
            .map(|&v| to_dim(node, v, "split size"))
            .collect::<Result<_, _>>()?,
        None => {
            let parts = match node.attr_int("num_outputs", 0)? {
                0 => n_out,
                k => to_dim(node, k, "num_outputs")?,
            };
            let each = c.div_ceil(parts.max(1));
            (0..parts)
                .map(|k| each.min(c.saturating_sub(k * each)))
                .collect()
        }
    };
    if sizes.len() != n_out || sizes.iter().sum::<usize>() != c {
        return Err(node.corrupt(format!(
            "split sizes {sizes:?} for {n_out} outputs do not sum to the {c} channels"
        )));
    }
    if sizes.contains(&0) {
        return Err(node.unsupported(format!(
            "split sizes {sizes:?}; an empty part is not supported"
        )));
    }
    let mut start = 0;
    for (k, &size) in sizes.iter().enumerate() {
        let end = start + size;
        if node.output(k).is_some_and(|o| ctx.uses(o) > 0) {
            let act = push_range(ctx, node, &x, start, end)?;
            ctx.define(node, k, Value::Act(act))?;
        }
        start = end;
    }
    Ok(())
}

/// Adds the channel range `start..end` of `x`.
fn push_range(
    ctx: &mut Ctx,
    node: NodeView<'_>,
    x: &Act,
    start: usize,
    end: usize,
) -> Result<Act, ImportError> {
    let op = ChannelOp::Slice { start, end }.into();
    let idx = ctx.push(node, None, op, &[x.node], Vec::new())?;
    Ok(Act {
        node: idx,
        dims: ctx.shape(idx).to_vec(),
    })
}

/// The channel range of a `Slice` of feature map `x` (per-sample dims `dims`) when the
/// channel axis is its only non-whole axis; `None` when the channel axis is whole (the
/// option-A shortcut's slices); an error when the channels are sliced with a step or
/// together with H or W. `starts`, ..., `steps` have equal lengths.
pub(crate) fn channel_range(
    node: NodeView<'_>,
    dims: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
) -> Result<Option<(usize, usize)>, ImportError> {
    let mut range = None;
    let mut other = false;
    for k in 0..starts.len() {
        let a = axis(node, axes[k], 4)?;
        let whole_batch = a == 0 && starts[k] == 0 && ends[k] >= i64::from(i32::MAX);
        if a == 0 {
            other |= !whole_batch || steps[k] != 1;
            continue;
        }
        let dim = dims[a - 1] as i64;
        let clamp = |v: i64| if v < 0 { v.saturating_add(dim) } else { v }.clamp(0, dim);
        let (s, e) = (clamp(starts[k]), clamp(ends[k]));
        let whole = s == 0 && e == dim && steps[k] == 1;
        if a == 1 && !whole {
            if steps[k] != 1 || s >= e {
                return Err(node.unsupported(format!(
                    "channel slice [{}:{}:{}]; only a non-empty range with step 1 is supported",
                    starts[k], ends[k], steps[k]
                )));
            }
            range = Some((s as usize, e as usize));
        } else if !whole {
            other = true;
        }
    }
    match (range, other) {
        (Some(_), true) => Err(node.unsupported(
            "a slice of the channels together with other axes; only one of a channel range \
             and strided H / W subsampling is supported",
        )),
        (r, _) => Ok(r),
    }
}

/// Imports a `Slice` that [`channel_range`] recognised.
pub(crate) fn convert_channel_slice(
    ctx: &mut Ctx,
    node: NodeView<'_>,
    x: Act,
    (start, end): (usize, usize),
) -> Result<(), ImportError> {
    let act = push_range(ctx, node, &x, start, end)?;
    ctx.define(node, 0, Value::Act(act))
}

/// Writes `Slice(X, [start], [end], axes = [1])`.
pub(crate) fn export(
    cx: &mut ExportCtx,
    node: &Node,
    (start, end): (usize, usize),
    inputs: &[String],
    out: &str,
) {
    let name = &node.name;
    let ins = vec![
        inputs[0].clone(),
        cx.const_i64(&format!("{name}::starts"), &[start as i64]),
        cx.const_i64(&format!("{name}::ends"), &[end as i64]),
        cx.const_i64(&format!("{name}::axes"), &[1]),
    ];
    cx.node("Slice", name, ins, out, Vec::new());
}
