//! The graph IR of shears.
//!
//! A [`Graph`] is an arena of named [`Node`]s in topological order, each holding one [`Op`] from
//! a closed set (convolution, batch norm, pooling, linear, residual add, concat, the option-A
//! shortcut, ...). Shapes are inferred and checked when a graph is built, so every `Graph` value
//! is valid. Each op declares its [`ChannelMap`], how its input channels relate to its output
//! channels, which is all the pruning dependency analysis needs. Graphs are edited only through
//! [`Patch`], which produces a new validated graph.
//!
//! This crate knows no file format and does no arithmetic beyond shapes; [`Tensor`] and
//! [`Weights`] are plain data containers that travel with a graph.
//!
//! ```
//! use shears_ir::{Conv2d, GraphBuilder, Linear, Op};
//! let mut b = GraphBuilder::new();
//! let x = b.input("input", &[3, 32, 32]).unwrap();
//! let c = b.add("conv", Conv2d::new(3, 8, 3).with_padding(1), &[x]).unwrap();
//! let r = b.add("relu", Op::Relu, &[c]).unwrap();
//! let p = b.add("pool", Op::GlobalAvgPool, &[r]).unwrap();
//! let fc = b.add("fc", Linear { in_features: 8, out_features: 10, bias: true }, &[p]).unwrap();
//! let g = b.finish(&[fc]).unwrap();
//! assert_eq!(g.shape(c), &[8, 32, 32]);
//! assert_eq!(g.n_params(), 8 * 3 * 9 + 8 * 10 + 10);
//! assert_eq!(g.macs(), (8 * 32 * 32 * 27 + 80) as u64);
//! ```
#![deny(missing_docs)]

mod activation;
mod binary;
mod channel;
mod graph;
mod layer_norm;
mod ops;
mod patch;
mod tensor;

pub use activation::Activation;
pub use binary::{broadcast_shape, Binary, BinaryKind, ConstOperand};
pub use channel::ChannelOp;
pub use graph::{Graph, GraphBuilder, Node, NodeId, GRAPH_FORMAT};
pub use layer_norm::LayerNorm;
pub use ops::{
    BatchNorm2d, ChannelMap, Conv2d, Linear, Op, ParamKind, ParamSpec, Pool2d, ShortcutA,
};
pub use patch::{Patch, Patched, Wire};
pub use tensor::{Tensor, Weights};

/// Errors of the IR: invalid graphs, patches and tensors.
#[derive(Debug, thiserror::Error)]
pub enum IrError {
    /// A node is invalid (bad configuration, arity or shapes).
    #[error("node {node:?} ({op}): {msg}")]
    Node {
        /// Node name.
        node: String,
        /// Op type.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The graph as a whole is invalid.
    #[error("invalid graph: {0}")]
    Graph(String),
    /// A patch could not be applied.
    #[error("patch {context:?}: {source}")]
    Patch {
        /// The patch label.
        context: String,
        /// What went wrong.
        source: Box<IrError>,
    },
    /// The JSON form could not be parsed.
    #[error("graph json: {0}")]
    Json(String),
    /// Tensor data does not match its shape.
    #[error("tensor of shape {shape:?} needs {expected} elements, got {found}")]
    TensorSize {
        /// Requested shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements given.
        found: usize,
    },
}
