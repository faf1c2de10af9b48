//! One file per operator family, each holding both directions: the import converter(s) with
//! their [`OpSpec`](super::registry::OpSpec), and the export of the matching shears op.
//! Helpers shared by several families (bounded integers, spatial attributes) live here.

pub(crate) mod activation;
pub(crate) mod add;
pub(crate) mod batch_norm;
pub(crate) mod binary;
pub(crate) mod concat;
pub(crate) mod constant;
pub(crate) mod conv;
pub(crate) mod flatten;
pub(crate) mod identity;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod pool;
pub(crate) mod relu;
pub(crate) mod shortcut;
pub(crate) mod shuffle;
pub(crate) mod split;
pub(crate) mod transpose;

use super::node::NodeView;
use super::tensor::MAX_DIM;
use super::ImportError;

/// `v` as a size in `0..=MAX_DIM`.
pub(crate) fn to_dim(node: NodeView<'_>, v: i64, what: &str) -> Result<usize, ImportError> {
    usize::try_from(v)
        .ok()
        .filter(|&d| d <= MAX_DIM)
        .ok_or_else(|| node.corrupt(format!("{what} {v} is out of range")))
}

/// A two-element positive INTS attribute (strides, dilations, kernel_shape), `[default; 2]`
/// when absent.
pub(crate) fn pair(
    node: NodeView<'_>,
    attr: &str,
    default: usize,
) -> Result<[usize; 2], ImportError> {
    match node.attr_ints(attr)? {
        None => Ok([default; 2]),
        Some(&[a, b]) => {
            let a = to_dim(node, a, attr)?;
            let b = to_dim(node, b, attr)?;
            if a == 0 || b == 0 {
                return Err(node.corrupt(format!("`{attr}` must be positive")));
            }
            Ok([a, b])
        }
        Some(v) => Err(node.unsupported(format!(
            "`{attr}` {v:?} has {} values; only 2-D (NCHW) is supported",
            v.len()
        ))),
    }
}

/// The `[top, left, bottom, right]` padding of a 2-D window op from `auto_pad` and `pads`,
/// for an input of `hw`, window `kernel` (already dilated) and stride `stride`.
pub(crate) fn spatial_pads(
    node: NodeView<'_>,
    hw: &[usize],
    kernel: [usize; 2],
    stride: [usize; 2],
) -> Result<[usize; 4], ImportError> {
    let auto = node.attr_string("auto_pad")?.unwrap_or("NOTSET");
    match auto {
        "NOTSET" | "" => match node.attr_ints("pads")? {
            None => Ok([0; 4]),
            Some(&[t, l, b, r]) => Ok([
                to_dim(node, t, "pad")?,
                to_dim(node, l, "pad")?,
                to_dim(node, b, "pad")?,
                to_dim(node, r, "pad")?,
            ]),
            Some(v) => Err(node.unsupported(format!(
                "`pads` {v:?} has {} values; only 2-D (NCHW) is supported",
                v.len()
            ))),
        },
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = [0; 4];
            for a in 0..2 {
                let out = hw[a].div_ceil(stride[a]);
                let total = ((out - 1) * stride[a] + kernel[a]).saturating_sub(hw[a]);
                let small = total / 2;
                let (begin, end) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                p[a] = begin;
                p[a + 2] = end;
            }
            Ok(p)
        }
        other => Err(node.corrupt(format!("unknown auto_pad {other:?}"))),
    }
}

/// Normalises an axis of a tensor of rank `rank` (negative counts from the end).
pub(crate) fn axis(node: NodeView<'_>, a: i64, rank: usize) -> Result<usize, ImportError> {
    let r = rank as i64;
    let n = if a < 0 { a + r } else { a };
    if (0..r).contains(&n) {
        Ok(n as usize)
    } else {
        Err(node.corrupt(format!("axis {a} is out of range for rank {rank}")))
    }
}

/// `[a, b]` as the `i64` list ONNX attributes hold.
pub(crate) fn i64s<const N: usize>(v: [usize; N]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}
