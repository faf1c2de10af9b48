//! The crate's single error type.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::dataset::DatasetName;

/// A compressed or archived container format, named in decoding errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// A gzip stream (`.gz`).
    Gzip,
    /// An xz stream (`.xz`).
    Xz,
    /// A gzip-compressed tar archive (`.tar.gz`).
    TarGz,
    /// A PNG image.
    Png,
}

impl fmt::Display for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Container::Gzip => "gzip",
            Container::Xz => "xz",
            Container::TarGz => "tar.gz",
            Container::Png => "png",
        })
    }
}

/// Everything that can go wrong while loading, transforming or downloading data.
///
/// Every variant that concerns a file names it, together with the expected and found values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// Reading, writing or listing a file failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A compressed stream, archive or image could not be decoded.
    #[error("corrupt {format} data in {}: {source}", path.display())]
    Corrupt {
        /// The file being decoded.
        path: PathBuf,
        /// The container format that failed to decode.
        format: Container,
        /// The decoder's error.
        source: std::io::Error,
    },
    /// A file does not start with the magic number of its format.
    #[error("bad magic number in {}: expected {expected}, found {found}", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number the format requires.
        expected: u32,
        /// The magic number read from the file.
        found: u32,
    },
    /// A file (after decompression) is shorter than its header or format requires.
    #[error("{} is truncated: expected {expected} bytes, found {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Expected length in bytes (after decompression).
        expected: u64,
        /// Actual length in bytes (after decompression).
        found: u64,
    },
    /// A file (after decompression) is longer than its header declares.
    #[error("{} has trailing data: expected {expected} bytes, found {found}", path.display())]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Expected length in bytes (after decompression).
        expected: u64,
        /// Actual length in bytes (after decompression).
        found: u64,
    },
    /// A file inflates beyond the length its header declares (a decompression bomb, or data
    /// appended); reading stopped there.
    #[error(
        "{} inflates beyond the {expected} bytes its header declares; stopped reading there",
        path.display()
    )]
    Oversize {
        /// The file.
        path: PathBuf,
        /// The length its header declares, in bytes (after decompression).
        expected: u64,
    },
    /// A file of fixed-size records has a length that is not a whole number of records.
    #[error(
        "{} has {len} bytes, which is not a multiple of the record size {record}",
        path.display()
    )]
    RecordSize {
        /// The file.
        path: PathBuf,
        /// Length in bytes (after decompression).
        len: u64,
        /// The record size in bytes.
        record: u64,
    },
    /// A label is not a valid class index.
    #[error(
        "label {label} of example {idx} in {} is out of range (dataset has {n_classes} classes)",
        path.display()
    )]
    LabelOutOfRange {
        /// The file holding the label.
        path: PathBuf,
        /// Index of the example within the file.
        idx: usize,
        /// The label found.
        label: u8,
        /// Number of classes of the dataset.
        n_classes: usize,
    },
    /// An image file and its label file disagree on the number of examples.
    #[error(
        "{} holds {n_images} images but {} holds {n_labels} labels",
        images.display(),
        labels.display()
    )]
    CountMismatch {
        /// The image file.
        images: PathBuf,
        /// The label file.
        labels: PathBuf,
        /// Number of images.
        n_images: usize,
        /// Number of labels.
        n_labels: usize,
    },
    /// Image dimensions in a file are not the ones required.
    #[error(
        "{} has shape {found_h}x{found_w}, expected {expected_h}x{expected_w}",
        path.display()
    )]
    ImageShape {
        /// The file.
        path: PathBuf,
        /// Required height.
        expected_h: usize,
        /// Required width.
        expected_w: usize,
        /// Height found.
        found_h: usize,
        /// Width found.
        found_w: usize,
    },
    /// A file uses a feature of its format that this crate does not support.
    #[error("unsupported content in {}: {what}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported.
        what: String,
    },
    /// A file's checksum is not the expected one.
    #[error("checksum mismatch for {}: expected {expected}, found {found}", path.display())]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// Expected digest (lowercase hex).
        expected: String,
        /// Digest computed from the file (lowercase hex).
        found: String,
    },
    /// Files of a dataset could not be found.
    #[error(
        "{dataset} not found under {}; looked for: {}",
        dir.display(),
        join_paths(tried)
    )]
    Missing {
        /// The dataset being loaded.
        dataset: DatasetName,
        /// The data directory searched.
        dir: PathBuf,
        /// Every path that was tried.
        tried: Vec<PathBuf>,
    },
    /// A download failed.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A dataset name that is not known.
    #[error("unknown dataset {name:?} (expected mnist, fashion-mnist, cifar10 or cifar100)")]
    UnknownDataset {
        /// The name given.
        name: String,
    },
    /// A split name that is not known.
    #[error("unknown split {name:?} (expected train or test)")]
    UnknownSplit {
        /// The name given.
        name: String,
    },
    /// An argument or in-memory value is invalid (configs, shapes, ranges).
    #[error("invalid {what}")]
    Invalid {
        /// A description of the problem.
        what: String,
    },
}

fn join_paths(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(", ")
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        DataError::Invalid { what: what.into() }
    }
}
