//! Sensitivity analysis: where a network can be cut.
//!
//! - [`lsa`]: local sensitivity analysis of high-level features with p-norm aggregation
//!   (methods §1), usable as a pruning criterion and as the feature-pruning study.
//! - [`sbpf`]: damage-based layer sensitiveness and inverse-sensitiveness ratio allocation
//!   (methods §2).
//! - [`sweep`]: per-group prune-and-evaluate sweeps from cached prefix activations.
//! - [`plot`]: dependency-free SVG charts for the reports.

pub mod lsa;
pub mod plot;
pub mod sbpf;
mod skip;
pub mod sweep;
