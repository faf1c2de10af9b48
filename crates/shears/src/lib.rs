//! shears: prune trained CNNs.
//!
//! This is the library users call. It builds on [`shears_ir`], whose [`Graph`](shears_ir::Graph)
//! is the one model representation every part of shears reads and rewrites.
//!
//! - [`zoo`]: reference CNNs (CIFAR and torchvision ResNets, VGG, DenseNet, LeNet-5, Conv-4,
//!   MLPerf Tiny ResNet-8) built as IR graphs whose parameter names are those of the reference
//!   checkpoints, with their input preprocessing and seeded weight initialisations.
//!
//! ```
//! use shears::zoo::{build, init_weights, Arch};
//! let arch: Arch = "resnet20".parse().unwrap();
//! let graph = build(arch, &arch.default_config()).unwrap();
//! assert_eq!(graph.n_params(), 269_722);
//! assert_eq!(graph.shape(graph.outputs()[0]), &[10]);
//! let weights = init_weights(&graph, Some(arch), 0);
//! assert_eq!(weights.get("layer1.0.conv1.weight").unwrap().shape(), &[16, 16, 3, 3]);
//! ```
#![deny(missing_docs)]

pub mod analyze;
pub mod bench;
mod error;
pub mod eval;
pub mod model;
pub mod progress;
pub mod prune;
pub mod recover;
pub mod report;
pub mod runtime;
pub mod sparse;
pub mod train;
pub mod zoo;

pub use error::Error;
