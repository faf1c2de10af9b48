//! `Transpose` into and out of a channels-last region ([`super::super::channels_last`]).
//!
//! `Transpose(0, 2, 3, 1)` of an NCHW feature map makes no node: its output is the same
//! activation, held channels-last. `Transpose(0, 3, 1, 2)` of a channels-last value returns
//! to NCHW, again without a node. A 5-D transpose is the middle of a channel shuffle
//! ([`super::shuffle::convert_transpose`]). shears never writes `Transpose` by itself (its layer norm
//! exports with the pair around it, [`super::layer_norm`]).

use super::super::channels_last;
use super::super::context::{Ctx, Value};
use super::super::node::NodeView;
use super::super::registry::OpSpec;
use super::super::ImportError;

/// `Transpose(X)` with `perm` `(0, 2, 3, 1)` or `(0, 3, 1, 2)` (or the identity).
pub(crate) const TRANSPOSE: OpSpec = OpSpec {
    op_type: "Transpose",
    min_opset: 1,
    inputs: (1, 1),
    outputs: (1, 1),
    convert,
};

/// NCHW to NHWC.
const TO_LAST: [i64; 4] = [0, 2, 3, 1];
/// NHWC to NCHW.
const TO_FIRST: [i64; 4] = [0, 3, 1, 2];

fn convert(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let name = node
        .input(0)
        .ok_or_else(|| node.corrupt("input 0 is missing"))?;
    let perm = node.attr_ints("perm")?.map(<[i64]>::to_vec);
    if perm.as_ref().is_some_and(|p| p.len() == 5) {
        return super::shuffle::convert_transpose(ctx, node);
    }
    if let Some(x) = ctx.channels_last(name).cloned() {
        return match perm.as_deref() {
            Some(p) if p == TO_FIRST => ctx.define(node, 0, Value::Act(x)),
            Some(p) if p == [0, 1, 2, 3] => channels_last::define(ctx, node, x),
            _ => Err(node.unsupported(format!(
                "perm {perm:?} of channels-last {name:?}; only (0, 3, 1, 2) back to NCHW is \
                 supported"
            ))),
        };
    }
    let x = ctx.feature_map(node, 0)?;
    match perm.as_deref() {
        Some(p) if p == TO_LAST => channels_last::define(ctx, node, x),
        Some(p) if p == [0, 1, 2, 3] => ctx.define(node, 0, Value::Act(x)),
        _ => Err(node.unsupported(format!(
            "perm {perm:?}; only (0, 2, 3, 1) into a channels-last region and (0, 3, 1, 2) \
             back are supported"
        ))),
    }
}
