//! The library's error type: one enum wrapping each crate's typed error, plus its own cases.

use std::path::PathBuf;

/// Errors of the `shears` library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid graph or patch.
    #[error(transparent)]
    Ir(#[from] shears_ir::IrError),
    /// Reading or writing a model file failed.
    #[error(transparent)]
    Io(#[from] shears_io::IoError),
    /// Reading a dataset failed.
    #[error(transparent)]
    Data(#[from] shears_data::DataError),
    /// Running a model failed.
    #[error(transparent)]
    Engine(#[from] shears_engine::EngineError),
    /// Pruning failed (invalid plan, impossible budget, failed verification).
    #[error(transparent)]
    Prune(#[from] crate::prune::PruneError),
    /// A runtime could not be loaded or failed to run a model.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// A zoo architecture could not be built.
    #[error(transparent)]
    Zoo(#[from] crate::zoo::ZooError),
    /// The model file carries no graph and no architecture was named.
    #[error("{path}: the file carries no graph; name its architecture with --arch")]
    NeedArch {
        /// The model file.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A checkpoint does not match the run it should resume.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What does not match.
        msg: String,
    },
    /// A shard could not be chosen, or shard files cannot be merged.
    #[error(transparent)]
    Shard(#[from] crate::analyze::shard::ShardError),
    /// A model whose weights hold NaN or infinite values, which no command can prune or
    /// evaluate meaningfully.
    #[error(
        "{}: weights hold non-finite values: {}",
        path.display(),
        tensors.iter().map(|t| t.to_string()).collect::<Vec<_>>().join("; ")
    )]
    NonFinite {
        /// The model file.
        path: PathBuf,
        /// The tensors at fault.
        tensors: Vec<crate::model::NonFinite>,
    },
    /// A value given by the user is out of range or inconsistent.
    #[error("{what}")]
    Invalid {
        /// What is wrong, naming the value.
        what: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>) -> Self {
        Error::Invalid { what: what.into() }
    }
}
