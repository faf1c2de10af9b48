//! The dropout random stream: a counter-based function of the seed, the pass and the element.

use super::Network;

/// The state of the dropout random stream, for checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// The seed set with [`Network::set_seed`].
    pub seed: u64,
    /// Training forward passes run since the seed was set.
    pub counter: u64,
}

pub(super) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Network {
    /// Seeds the dropout random stream (and resets its counter).
    pub fn set_seed(&mut self, seed: u64) {
        self.rng = RngState { seed, counter: 0 };
    }

    /// The dropout random stream's state, for checkpoints.
    pub fn rng_state(&self) -> RngState {
        self.rng
    }

    /// Restores the dropout random stream's state.
    pub fn set_rng_state(&mut self, state: RngState) {
        self.rng = state;
    }
}
