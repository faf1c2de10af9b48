//! Activation sizes checked before anything is allocated.
//!
//! A graph's shapes come from a file: a valid graph whose input is `[3, 100000, 100000]` asks
//! for activations of hundreds of gigabytes, and an allocation that large aborts the process.
//! [`check_activation_sizes`] computes, for a batch, the bytes of every node's activation
//! (f32) and refuses the first one over the limit with [`EngineError::ActivationTooLarge`],
//! naming the node, its batch shape and the bytes it needs. [`Network::new`] checks one
//! sample, and every forward pass its own batch, before planning or allocating.

use shears_ir::Graph;

use super::Network;
use crate::{EngineError, Result};

/// The largest activation tensor a pass may allocate, in bytes: 16 GiB.
pub const MAX_ACTIVATION_BYTES: u64 = 16 << 30;

/// Checks that every activation of `graph`, for a batch of `n`, needs at most `limit` bytes.
///
/// ```
/// use shears_engine::{check_activation_sizes, EngineError, MAX_ACTIVATION_BYTES};
/// use shears_ir::{Conv2d, GraphBuilder};
///
/// let mut b = GraphBuilder::new();
/// let x = b.input("input", &[3, 100_000, 100_000]).unwrap();
/// let c = b.add("conv", Conv2d::new(3, 16, 3).with_padding(1), &[x]).unwrap();
/// let g = b.finish(&[c]).unwrap();
/// match check_activation_sizes(&g, 1, MAX_ACTIVATION_BYTES) {
///     Err(EngineError::ActivationTooLarge { node, bytes, .. }) => {
///         assert_eq!(node, "input");
///         assert_eq!(bytes, 120_000_000_000);
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
///
/// # Errors
/// [`EngineError::ActivationTooLarge`] for the first node (in graph order) over `limit`.
pub fn check_activation_sizes(graph: &Graph, n: usize, limit: u64) -> Result<()> {
    for id in graph.ids() {
        let shape = graph.shape(id);
        let numel = shape
            .iter()
            .fold(n as u128, |acc, &d| acc.saturating_mul(d as u128));
        let bytes = numel.saturating_mul(4);
        if bytes > u128::from(limit) {
            let mut batch_shape = vec![n];
            batch_shape.extend_from_slice(shape);
            return Err(EngineError::ActivationTooLarge {
                node: graph.node(id).name.clone(),
                shape: batch_shape,
                bytes,
                limit,
            });
        }
    }
    Ok(())
}

impl Network {
    /// Checks that a pass over a batch of `n` needs no activation over
    /// [`MAX_ACTIVATION_BYTES`] (see [`check_activation_sizes`]); callers that allocate a batch
    /// before running it (data loaders) call this first.
    pub fn check_batch(&self, n: usize) -> Result<()> {
        check_activation_sizes(&self.graph, n, MAX_ACTIVATION_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use shears_ir::{GraphBuilder, Op, Weights};

    use super::*;

    #[test]
    fn the_batch_multiplies_the_per_sample_size() {
        let mut b = GraphBuilder::new();
        let x = b.input("input", &[4, 1024, 1024]).unwrap();
        let r = b.add("relu", Op::Relu, &[x]).unwrap();
        let g = b.finish(&[r]).unwrap();
        // 16 MiB per sample.
        assert!(check_activation_sizes(&g, 1024, MAX_ACTIVATION_BYTES).is_ok());
        let e = check_activation_sizes(&g, 1025, MAX_ACTIVATION_BYTES).unwrap_err();
        assert!(e.to_string().contains("[1025, 4, 1024, 1024]"), "{e}");
        assert!(e.is_bad_input());
        let net = Network::new(g, &Weights::new()).unwrap();
        assert!(net.check_batch(1025).is_err());
    }
}
