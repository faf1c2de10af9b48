//! Datasets for shears: loading, batching, augmentation and downloading.
//!
//! This crate knows nothing of graphs or the engine. It turns dataset files into a
//! [`Dataset`] (raw `u8` pixels in NCHW order plus `u8` labels), and a dataset into batches of
//! `f32` model input through a [`Loader`] or [`to_f32`].
//!
//! - [`load`] reads MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from a data directory, in
//!   their official forms (gzipped IDX, CIFAR binary batches loose, xz-compressed or inside the
//!   official `.tar.gz`). Every file is validated (magic numbers, lengths, label ranges); bad
//!   input gives a [`DataError`] naming the file, never a panic.
//! - [`load_image_folder`] reads `root/<class>/*.png`.
//! - [`Loader`] shuffles, applies [`Transform`]s (random crops and flips seeded per example)
//!   and [`Normalize`]s, deterministically from a seed and an epoch number.
//! - [`fetch`] downloads the official files with checksum verification; [`verify_files`]
//!   checks them offline.
//!
//! ```
//! use shears_data::{Dataset, Loader, LoaderConfig, Normalize, Transform};
//!
//! // A toy dataset of four 2x2 grey images; real code would call `shears_data::load`.
//! let ds = Dataset {
//!     name: "toy".into(),
//!     images: (0..16).map(|v| v * 16).collect(),
//!     labels: vec![0, 1, 0, 1],
//!     n: 4, c: 1, h: 2, w: 2,
//!     classes: vec!["even".into(), "odd".into()],
//! };
//! let train = ds.class_balanced_subset(2, 7);
//! assert_eq!(train.labels.iter().filter(|&&l| l == 0).count(), 1);
//!
//! let cfg = LoaderConfig::new(2)
//!     .with_shuffle(42)
//!     .with_normalize(Normalize::unit())
//!     .with_transforms(vec![Transform::GreyToRgb, Transform::PadCrop { pad: 1 }, Transform::HFlip]);
//! for batch in Loader::new(&ds, cfg)? {
//!     assert_eq!((batch.n, batch.c, batch.h, batch.w), (2, 3, 2, 2));
//!     assert_eq!(batch.images.len(), 2 * 3 * 2 * 2);
//!     assert!(batch.images.iter().all(|v| (0.0..=1.0).contains(v)));
//! }
//! # Ok::<(), shears_data::DataError>(())
//! ```
#![deny(missing_docs)]

mod dataset;
mod error;
mod fetch;
mod folder;
mod idx;
mod load;
mod loader;
mod read;
mod rng;
mod transform;

pub use dataset::{Dataset, DatasetName, Split, VAL_SEED};
pub use error::{Container, DataError};
pub use fetch::{
    fetch, md5_file, official_files, sha256_file, verify_files, Checksum, FetchAction,
    FetchOptions, FetchReport, FileStatus, RemoteFile,
};
pub use folder::{load_image_folder, ColorMode, ImageFolderOptions};
pub use idx::{IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC};
pub use load::{load, load_train_val};
pub use loader::{to_f32, Batch, Loader, LoaderConfig, MAX_BATCH_BYTES};
pub use transform::{Normalize, Transform};
