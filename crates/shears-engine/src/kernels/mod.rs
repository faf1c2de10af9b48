//! CPU kernels on channels-last (NHWC) activations, one file per op family.
//!
//! Every activation is a batch of `[n, s, c]` rows: `c` is the IR's channel axis (the first
//! per-sample axis) and `s` the product of the remaining axes (`h * w` for feature maps, 1 for
//! vectors). Kernels split work over images with rayon and never reduce in a
//! scheduling-dependent order.

pub mod activation;
pub mod binary;
pub mod bn;
pub mod channels;
pub mod conv;
pub mod elementwise;
pub(crate) mod gemm;
pub mod layer_norm;
pub mod linear;
pub(crate) mod par;
pub mod pool;
pub(crate) mod scratch;
pub(crate) mod transpose;
