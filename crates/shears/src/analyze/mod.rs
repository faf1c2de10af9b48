//! Sensitivity analysis: where a network can be cut.
//!
//! - [`lsa`]: local sensitivity analysis of high-level features with p-norm aggregation
//!   (methods §1), usable as a pruning criterion and as the feature-pruning study.
//! - [`sbpf`]: damage-based layer sensitiveness and inverse-sensitiveness ratio allocation
//!   (methods §2).
//! - [`sweep`]: per-group prune-and-evaluate sweeps from cached prefix activations.
//! - [`plot`]: dependency-free SVG charts for the reports.
//! - [`shard`]: which probes one shard of N computes (`--shard I/N`, Slurm arrays, Kubernetes
//!   Indexed Jobs); [`merge`]: shard files and their exact merge.

mod eval_set;
pub mod lsa;
mod lsa_head;
mod lsa_shard;
mod lsa_study;
pub mod merge;
pub mod plot;
mod prober;
mod ratios;
pub mod sbpf;
pub mod sbpf_probes;
pub mod shard;
mod skip;
pub mod sweep;
