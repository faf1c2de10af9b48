//! ONNX export and import for the shears op set.
//!
//! [`export_onnx`] writes any shears graph as an opset-13 ONNX model (opset 17 when it has a
//! layer norm) that ONNX runtimes (tract, onnxruntime) run directly: parameters are initializers under their shears names,
//! the batch axis is symbolic (`N`) unless fixed, and the shears graph JSON rides along in
//! `metadata_props` (`shears.graph`). [`import_onnx`] reads such a file back to the same graph,
//! op for op, with bit-identical weights, and also reads what PyTorch's exporters (TorchScript
//! and dynamo) emit for the same ops.
//!
//! | shears op | ONNX written | ONNX also read |
//! |---|---|---|
//! | `Conv2d` | `Conv` (`pads` = `[top, left, bottom, right]`) | `auto_pad` `SAME_*`/`VALID` |
//! | `BatchNorm2d` | `BatchNormalization` (inference) | |
//! | `Relu` | `Relu` | |
//! | `Act` (`relu6`, `clip`) | `Clip` (bounds as inputs) | `Clip` with attributes (opset 6) |
//! | `Act` (`hard_swish`, `silu`) | `HardSigmoid` / `Sigmoid` + `Mul` | `HardSwish` |
//! | `Act` (`hard_sigmoid`, `sigmoid`, `leaky_relu`) | `HardSigmoid`, `Sigmoid`, `LeakyRelu` | |
//! | `Act` (`gelu`) | the Erf chain (`Div`, `Erf`, `Add`, `Mul`, `Mul`); tanh: its formula | `Gelu` (opset 20) |
//! | `MaxPool2d`, `AvgPool2d` | `MaxPool`, `AveragePool` (`count_include_pad`, `ceil_mode`) | `GlobalAveragePool` and `ReduceMean` (`keepdims`) not flattened: a whole-map `AvgPool2d` (`[C, 1, 1]`) |
//! | `GlobalAvgPool` | `GlobalAveragePool` + `Flatten` | `ReduceMean` over axes 2 and 3 |
//! | `Linear` | `Gemm` (`transB = 1`) | `Gemm` with `transB = 0`; `MatMul` + `Add` |
//! | `Flatten` | `Flatten` (`axis = 1`) | `Reshape` to `[N, -1]`; `Squeeze` after a global pool |
//! | `Add` | `Add` (2 inputs), `Sum` (more) | |
//! | `Binary` | `Add`, `Sub`, `Mul`, `Div`; a constant operand is the `weight` initializer | broadcasting operands, constants of shape `[1, C, 1, 1]`, `[C, 1, 1]`, scalars |
//! | `LayerNorm` | `Transpose(0, 2, 3, 1)`, `LayerNormalization(axis = -1)`, `Transpose(0, 3, 1, 2)` (opset 17); a vector's alone | the same inside a channels-last region; axis 1 of `[N, C, 1, 1]` or `[N, F]` |
//! | (channels-last regions) | | `Transpose(0, 2, 3, 1)` … `Transpose(0, 3, 1, 2)` makes no node; inside, `MatMul` by a constant `[C_in, C_out]` (+ `Add` of `[C_out]`) is a 1x1 `Conv2d` with bias, elementwise ops and their constants are translated to NCHW |
//! | `Concat` | `Concat` (`axis = 1`) | |
//! | `Dropout` | `Dropout` with its ratio, inference | `Dropout` without ratio |
//! | `ShortcutA` | `Slice` (steps on H, W) + `Pad` (channels) | one `Slice` per axis |
//! | `Identity` | `Identity` | `Constant`, initializers as inputs |
//! | | | static shape subgraphs, evaluated at import: `Shape`, `Gather`, `Unsqueeze`, `Squeeze`, `Concat`, `Cast`, `Reshape` and `Add` / `Sub` / `Mul` / `Div` of constants |
//!
//! Anything else is refused with [`IoError::Unsupported`]
//! (`onnx op <OpType> (node <name>)` for an unknown operator); a malformed or truncated file
//! gives [`IoError::Corrupt`], never a panic. Without the embedded
//! graph, node names come from the weights (`conv1.weight` names node `conv1`, as PyTorch
//! modules are named), else from the ONNX node names.
//!
//! The import runs in named phases (parse, convert, build, finalize; see `import.rs`); every
//! operator has one file under `ops/` holding both directions, and one registry lists the
//! converters.
//!
//! ```
//! use shears_io::onnx::{export_onnx_bytes, import_onnx_bytes, OnnxExportOptions};
//! use shears_ir::{GraphBuilder, Linear, Op, Tensor, Weights};
//!
//! let mut b = GraphBuilder::new();
//! let x = b.input("input", &[4]).unwrap();
//! let fc = b.add("fc", Linear { in_features: 4, out_features: 2, bias: true }, &[x]).unwrap();
//! let r = b.add("relu", Op::Relu, &[fc]).unwrap();
//! let g = b.finish(&[r]).unwrap();
//! let mut w = Weights::new();
//! w.insert("fc.weight", Tensor::full(&[2, 4], 0.5));
//! w.insert("fc.bias", Tensor::zeros(&[2]));
//!
//! let bytes = export_onnx_bytes(&g, &w, &OnnxExportOptions::new().with_batch(1)).unwrap();
//! let (g2, w2) = import_onnx_bytes(&bytes, "mem.onnx").unwrap();
//! assert_eq!((g2, w2), (g, w));
//! assert!(import_onnx_bytes(&bytes[..bytes.len() - 1], "mem.onnx").is_err());
//! ```

mod channels_last;
mod context;
mod export;
mod fold;
mod import;
mod node;
mod ops;
mod proto;
mod registry;
mod tensor;
#[cfg(test)]
mod test_model;

use std::path::Path;

pub use export::{export_onnx, export_onnx_bytes, OnnxExportOptions};
pub(crate) use import::load;
pub use import::{import_onnx, import_onnx_bytes};

use crate::IoError;

/// The default-domain operator set version the exporter writes.
pub const ONNX_OPSET: u64 = 13;
/// The opset written for a graph with a layer norm (`LayerNormalization` needs 17).
pub const LAYER_NORM_OPSET: u64 = 17;
/// The newest default-domain opset the importer accepts.
pub const MAX_OPSET: u64 = 28;
/// The name of the graph input when there is one.
pub const INPUT_NAME: &str = "input";
/// The name of the graph output when there is one.
pub const OUTPUT_NAME: &str = "logits";

/// Why an import failed, before the file name is attached.
#[derive(Debug)]
pub(crate) enum ImportError {
    /// The bytes are not a valid ONNX model.
    Corrupt(String),
    /// A valid model that shears cannot represent.
    Unsupported(String),
    /// A graph input with symbolic or unknown per-sample dims and no input shape given.
    UnknownInputShape {
        /// The graph input.
        input: String,
        /// Its dims as the file spells them (`[N, 3, H, W]`).
        dims: String,
    },
}

impl ImportError {
    fn into_io(self, path: &Path) -> IoError {
        match self {
            ImportError::Corrupt(msg) => IoError::corrupt(path, msg),
            ImportError::Unsupported(what) => IoError::unsupported(path, what),
            ImportError::UnknownInputShape { input, dims } => IoError::UnknownInputShape {
                path: path.to_path_buf(),
                input,
                dims,
            },
        }
    }
}
