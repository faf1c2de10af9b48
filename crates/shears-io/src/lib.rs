//! Reading and writing the weights of shears models.
//!
//! Three kinds of file come in. **safetensors** files are read by a small validating reader of
//! our own ([`read_safetensors`]) that checks every offset against the data actually present
//! and converts F64/F16/BF16 (and exactly representable integers) to f32. **PyTorch
//! checkpoints** (`torch.save`, both the zip format of PyTorch 1.6+ and the older legacy
//! format) are read by [`read_pytorch`] through a restricted unpickler: it interprets only the
//! handful of Python globals that rebuild tensors and state dicts, refuses everything else with
//! [`IoError::UnsafePickle`], and never executes code. **ONNX** models are imported by
//! [`import_onnx`] (the [`onnx`] module), graph and weights together.
//!
//! Two kinds of file go out: a *self-describing model* ([`save_model`]), a safetensors file
//! whose metadata embeds the graph JSON, so that [`load`] gives back both graph and weights
//! with no code; and an ONNX model ([`export_onnx`]) that ONNX runtimes run and [`load`] reads
//! back. Saving checks the weights against the graph first, so it never writes a model
//! that will not reload. Every write goes through [`write_atomic`] (temporary file, fsync,
//! rename; a target that is not a regular file, or is one of the inputs, is refused), and
//! [`Format::for_output`] picks the format of an output from its extension.
//!
//! Checkpoint names rarely match a graph exactly. [`bind_weights`] renames loaded tensors with
//! a [`Remap`] (for instance stripping the `module.` prefix of `nn.DataParallel`, which
//! [`Remap::auto_for`] detects), matches them to `graph.param_specs()` and returns a
//! [`LoadReport`] of what was applied, missing, unexpected, mismatched and skipped. Loading is
//! [`Strictness::Strict`] by default: anything but a clean report is an error.
//!
//! Every reader treats its input as hostile: truncated, corrupted or malicious files give an
//! `Err` naming the file (and the tensor and byte offset where known), never a panic, and no
//! input makes a reader allocate much more than the file's own size.
//!
//! ```
//! use std::collections::BTreeMap;
//! use shears_io::{bind_weights, load, save_model, Remap, Strictness};
//! use shears_ir::{Conv2d, GraphBuilder, Linear, Op, Tensor, Weights};
//!
//! let mut b = GraphBuilder::new();
//! let x = b.input("input", &[1, 8, 8]).unwrap();
//! let c = b.add("conv", Conv2d::new(1, 2, 3).with_padding(1), &[x]).unwrap();
//! let p = b.add("pool", Op::GlobalAvgPool, &[c]).unwrap();
//! let fc = b.add("fc", Linear { in_features: 2, out_features: 3, bias: true }, &[p]).unwrap();
//! let graph = b.finish(&[fc]).unwrap();
//!
//! // Weights as a DataParallel checkpoint would name them.
//! let mut ckpt = Weights::new();
//! ckpt.insert("module.conv.weight", Tensor::full(&[2, 1, 3, 3], 0.5));
//! ckpt.insert("module.fc.weight", Tensor::full(&[3, 2], 1.0));
//! ckpt.insert("module.fc.bias", Tensor::zeros(&[3]));
//! let remap = Remap::auto_for(&graph, ckpt.names());
//! let (weights, report) = bind_weights(&graph, ckpt, &remap, Strictness::Strict, "ckpt").unwrap();
//! assert!(report.is_clean());
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("tiny.safetensors");
//! let meta = BTreeMap::from([("shears.arch".to_string(), "tiny".to_string())]);
//! save_model(&path, &graph, &weights, &meta).unwrap();
//! let model = load(&path).unwrap();
//! assert_eq!(model.graph.as_ref(), Some(&graph));
//! assert_eq!(model.weights, weights);
//! assert_eq!(model.metadata["shears.arch"], "tiny");
//! ```
#![deny(missing_docs)]

pub mod atomic;
mod error;
mod model;
mod npy;
pub mod onnx;
mod pickle;
mod pytorch;
mod remap;
mod report;
mod safetensors;

pub use atomic::{check_output, write_atomic, write_atomic_with, FileKind, WriteOptions};
pub use error::IoError;
pub use model::{
    load, load_with, save_model, Format, LoadOptions, LoadedModel, FORMAT_KEY, FORMAT_VERSION,
    GRAPH_KEY,
};
pub use npy::{npy_bytes, read_npy, read_npy_bytes, write_npy};
pub use onnx::{export_onnx, import_onnx, OnnxExportOptions};
pub use pytorch::{read_pytorch, read_pytorch_bytes, PthCheckpoint, PthOptions};
pub use remap::{Remap, RemapRule};
pub use report::{bind_weights, check_weights, LoadReport, Strictness};
pub use safetensors::{read_safetensors, read_safetensors_bytes, write_safetensors, SafeTensors};
