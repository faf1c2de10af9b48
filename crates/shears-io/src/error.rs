//! The one error type of the crate.

use std::path::{Path, PathBuf};

use crate::atomic::FileKind;
use crate::report::LoadReport;

/// Everything that can go wrong reading or writing weights. Every variant names the file (or
/// the origin given for in-memory data) and, where it applies, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused a read, write or rename.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is malformed (truncated, inconsistent offsets, bad pickle, ...). `msg` carries
    /// the byte offset where one is known.
    #[error("{}: corrupt file: {msg}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        msg: String,
    },
    /// A pickle asked for a Python global that is not on the allow-list. Nothing was executed.
    #[error(
        "{}: refusing to load python global `{global}` (only tensor data is unpickled, never code)",
        path.display()
    )]
    UnsafePickle {
        /// The file.
        path: PathBuf,
        /// The global as `module.name`.
        global: String,
    },
    /// A tensor has a data type this crate cannot convert to f32.
    #[error("{}: tensor {tensor:?} has unsupported dtype {dtype}", path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The dtype as the file spells it, possibly with a reason.
        dtype: String,
    },
    /// A tensor does not have the shape its slot needs.
    #[error("tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor name.
        tensor: String,
        /// The shape the slot needs.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// Loaded weights do not match a graph (strict loading, or saving a model).
    #[error("{origin}: weights do not match the graph: {}", report.summary())]
    Load {
        /// The file or other origin of the weights.
        origin: String,
        /// What matched and what did not.
        report: Box<LoadReport>,
    },
    /// The graph embedded in a model file is invalid.
    #[error("{}: invalid embedded graph: {source}", path.display())]
    Graph {
        /// The file.
        path: PathBuf,
        /// The IR's complaint.
        source: shears_ir::IrError,
    },
    /// An ONNX graph input whose per-sample dims are symbolic or unknown (as
    /// `torch.onnx.export(dynamic_axes=...)` writes for H and W) and no input shape was given.
    #[error(
        "{}: graph input {input:?} has dims {dims}, with symbolic or unknown sizes besides the \
         batch; give the per-sample shape with --input-shape C,H,W",
        path.display()
    )]
    UnknownInputShape {
        /// The file.
        path: PathBuf,
        /// The graph input.
        input: String,
        /// Its dims as the file spells them (`[N, 3, H, W]`).
        dims: String,
    },
    /// An output path that exists and is not a regular file (a device node such as `/dev/full`,
    /// a FIFO, a symbolic link, a directory): it is left as it is.
    #[error("{}: is {kind}, not a regular file; refusing to replace it", path.display())]
    NotRegularFile {
        /// The output path.
        path: PathBuf,
        /// What it is.
        kind: FileKind,
    },
    /// An output path that is one of the inputs (same path or same inode): it is left as it is.
    #[error(
        "{}: is the input {}; refusing to write over it (choose another output path)",
        path.display(),
        input.display()
    )]
    OutputIsInput {
        /// The output path.
        path: PathBuf,
        /// The input it names.
        input: PathBuf,
    },
    /// An output path whose extension names no format shears writes.
    #[error("{}: unknown output format {ext:?}; known extensions: {known}", path.display())]
    UnknownOutputFormat {
        /// The output path.
        path: PathBuf,
        /// Its extension (empty when it has none).
        ext: String,
        /// The known extensions, comma-separated.
        known: String,
    },
    /// A valid file that uses a feature this crate does not implement.
    #[error("{}: {what}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        what: String,
    },
}

impl IoError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        IoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, msg: impl Into<String>) -> Self {
        IoError::Corrupt {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn unsupported(path: &Path, what: impl Into<String>) -> Self {
        IoError::Unsupported {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}
