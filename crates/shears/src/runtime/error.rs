//! The typed error of [`crate::runtime`].

use std::path::PathBuf;

/// Errors of loading a runtime, running a model in it, and of the latency-table cache.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No ONNX Runtime shared library could be loaded.
    #[error(
        "no usable ONNX Runtime library: {tried}; install the `onnxruntime` Python wheel (it \
         ships capi/libonnxruntime.so*) or a system ONNX Runtime, and name the library with \
         --ort-lib PATH or ORT_DYLIB_PATH"
    )]
    LibraryNotFound {
        /// Every place looked at and why it failed, joined with "; ".
        tried: String,
    },
    /// ONNX Runtime is already loaded from another library in this process.
    #[error(
        "ONNX Runtime is already loaded from {loaded} in this process; cannot also load {asked}"
    )]
    OtherLibraryLoaded {
        /// The library in use.
        loaded: PathBuf,
        /// The library asked for now.
        asked: PathBuf,
    },
    /// ONNX Runtime rejected a model or failed to run it.
    #[error("onnxruntime: {what}: {msg}")]
    Ort {
        /// What was being done (creating a session, running batch 8, ...).
        what: String,
        /// ONNX Runtime's message.
        msg: String,
    },
    /// A latency table in the cache could not be read or written.
    #[error("latency cache {path}: {msg}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

impl RuntimeError {
    /// Whether the error is the user's to fix (a missing library, a bad cache file) rather
    /// than a failure of a model run: the CLI exits 2 for these, 1 otherwise.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, RuntimeError::Ort { .. })
    }

    pub(crate) fn ort(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        RuntimeError::Ort {
            what: what.into(),
            msg: e.to_string(),
        }
    }
}
