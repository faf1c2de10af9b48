//! The one list of ONNX operators the importer understands, each with a declarative spec.
//!
//! The import pipeline looks an operator up here, checks the spec (opset, number of inputs
//! and outputs) and hands the node to the converter. It never looks at an op type itself.

use super::context::Ctx;
use super::node::NodeView;
use super::ops;
use super::ImportError;

/// Turns one ONNX node into shears nodes (or binds its outputs to existing values).
pub(crate) type ConvertFn = fn(&mut Ctx, NodeView<'_>) -> Result<(), ImportError>;

/// What an ONNX operator converter accepts.
pub(crate) struct OpSpec {
    /// The ONNX `op_type`, default domain.
    pub op_type: &'static str,
    /// The lowest default-domain opset whose definition the converter implements.
    pub min_opset: u64,
    /// Allowed number of inputs, `(min, max)`, counting omitted optional ones in between.
    pub inputs: (usize, usize),
    /// Allowed number of outputs, `(min, max)`.
    pub outputs: (usize, usize),
    /// The converter.
    pub convert: ConvertFn,
}

/// Every supported operator.
pub(crate) const REGISTRY: &[OpSpec] = &[
    ops::conv::CONV,
    ops::batch_norm::BATCH_NORMALIZATION,
    ops::relu::RELU,
    ops::activation::CLIP,
    ops::activation::HARD_SWISH,
    ops::activation::HARD_SIGMOID,
    ops::activation::SIGMOID,
    ops::activation::LEAKY_RELU,
    ops::activation::GELU,
    ops::activation::ERF,
    ops::pool::MAX_POOL,
    ops::pool::AVERAGE_POOL,
    ops::pool::GLOBAL_AVERAGE_POOL,
    ops::pool::REDUCE_MEAN,
    ops::linear::GEMM,
    ops::linear::MAT_MUL,
    ops::flatten::FLATTEN,
    ops::flatten::RESHAPE,
    ops::flatten::SQUEEZE,
    ops::add::ADD,
    ops::add::SUM,
    ops::binary::MUL,
    ops::binary::SUB,
    ops::binary::DIV,
    ops::concat::CONCAT,
    ops::identity::IDENTITY,
    ops::identity::DROPOUT,
    ops::shortcut::SLICE,
    ops::shortcut::PAD,
    ops::split::SPLIT,
    ops::transpose::TRANSPOSE,
    ops::layer_norm::LAYER_NORMALIZATION,
    ops::constant::CONSTANT,
    ops::constant::SHAPE,
    ops::constant::GATHER,
    ops::constant::UNSQUEEZE,
    ops::constant::CAST,
];

/// The spec of `op_type`, if supported.
pub(crate) fn lookup(op_type: &str) -> Option<&'static OpSpec> {
    REGISTRY.iter().find(|s| s.op_type == op_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_types_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for s in REGISTRY {
            assert!(seen.insert(s.op_type), "{} registered twice", s.op_type);
            assert!(s.inputs.0 <= s.inputs.1 && s.outputs.0 <= s.outputs.1);
        }
    }
}
