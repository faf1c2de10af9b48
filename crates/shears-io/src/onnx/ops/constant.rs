//! `Constant`: binds its output to a constant tensor, for other converters to read; and the
//! shape operators (`Shape`, `Gather`, `Unsqueeze`, `Cast`) that only exist in static shape
//! subgraphs, which the import evaluates before any converter sees them.

use std::rc::Rc;

use super::super::context::{Ctx, Value};
use super::super::node::NodeView;
use super::super::registry::OpSpec;
use super::super::tensor::{decode, ConstData, ConstTensor};
use super::super::ImportError;

/// `Constant` with a `value`, `value_float(s)` or `value_int(s)` attribute.
pub(crate) const CONSTANT: OpSpec = OpSpec {
    op_type: "Constant",
    min_opset: 1,
    inputs: (0, 0),
    outputs: (1, 1),
    convert,
};

/// `Shape(x)`: evaluated at import ([`crate::onnx`]'s `fold`), never a node.
pub(crate) const SHAPE: OpSpec = OpSpec {
    op_type: "Shape",
    min_opset: 1,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: not_static,
};

/// `Gather(data, indices)` of constants: evaluated at import.
pub(crate) const GATHER: OpSpec = OpSpec {
    op_type: "Gather",
    min_opset: 1,
    inputs: (2, 2),
    outputs: (1, 1),
    convert: not_static,
};

/// `Unsqueeze(data[, axes])` of constants: evaluated at import.
pub(crate) const UNSQUEEZE: OpSpec = OpSpec {
    op_type: "Unsqueeze",
    min_opset: 1,
    inputs: (1, 2),
    outputs: (1, 1),
    convert: not_static,
};

/// `Cast(x)` of a constant: evaluated at import.
pub(crate) const CAST: OpSpec = OpSpec {
    op_type: "Cast",
    min_opset: 1,
    inputs: (1, 1),
    outputs: (1, 1),
    convert: not_static,
};

/// The converter of the shape operators, reached only when their inputs are not all known.
fn not_static(_: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    Err(node.unsupported(format!(
        "{} of a computed value (only static shape subgraphs, evaluated at import, are supported)",
        node.op_type()
    )))
}

fn convert(ctx: &mut Ctx, node: NodeView<'_>) -> Result<(), ImportError> {
    let name = node.output(0).unwrap_or_default().to_string();
    let c = |dims: Vec<usize>, data: ConstData| ConstTensor {
        name: name.clone(),
        dims,
        data,
    };
    let t = if let Some(t) = node.attr_tensor("value")? {
        let mut t = decode(t.clone())?;
        t.name = name.clone();
        t
    } else if let Some(v) = node.attr_floats("value_floats")? {
        c(vec![v.len()], ConstData::F32(v.to_vec()))
    } else if let Some(v) = node.attr_ints("value_ints")? {
        c(vec![v.len()], ConstData::I64(v.to_vec()))
    } else if node.attr_names().any(|a| a == "value_float") {
        c(
            Vec::new(),
            ConstData::F32(vec![node.attr_float("value_float", 0.0)?]),
        )
    } else if node.attr_names().any(|a| a == "value_int") {
        c(
            Vec::new(),
            ConstData::I64(vec![node.attr_int("value_int", 0)?]),
        )
    } else {
        let names: Vec<&str> = node.attr_names().collect();
        return Err(node.unsupported(format!("constant given as {names:?}")));
    };
    ctx.define(node, 0, Value::Const(Rc::new(t)))
}
