//! Random scores: the baseline every criterion should beat.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Importance, ScoreContext};
use crate::prune::depgraph::Group;
use crate::prune::error::Result;

/// Uniform scores in `[0, 1)`, from a `ChaCha8Rng` seeded with `seed` and the group id, so a
/// group's scores do not depend on which other groups are scored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomImportance {
    /// The seed.
    pub seed: u64,
}

impl Importance for RandomImportance {
    fn name(&self) -> &str {
        "random"
    }

    fn score(&self, _ctx: &ScoreContext, group: &Group) -> Result<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ (group.id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        Ok((0..group.size)
            .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32)
            .collect())
    }
}
