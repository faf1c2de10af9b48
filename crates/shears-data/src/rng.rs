//! Seed derivation and the few random primitives the crate needs.
//!
//! Everything is built on `ChaCha8Rng` with our own shuffling and range sampling, so results
//! are identical across platforms and do not depend on `rand`'s algorithm choices.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Separates the random streams used for different purposes under one user seed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Domain {
    /// Epoch order of a [`crate::Loader`].
    Shuffle = 1,
    /// Per-image random transforms.
    Augment = 2,
    /// [`crate::Dataset::class_balanced_subset`].
    Balance = 3,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A generator determined by `(seed, epoch, domain)` only.
pub(crate) fn derive_rng(seed: u64, epoch: u64, domain: Domain) -> ChaCha8Rng {
    let mut state = seed;
    let a = splitmix64(&mut state);
    state ^= epoch.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let b = splitmix64(&mut state);
    state ^= (domain as u64).wrapping_mul(0xA076_1D64_78BD_642F);
    let c = splitmix64(&mut state);
    let d = splitmix64(&mut state);
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([a, b, c, d]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// A generator for one example: independent of batch composition and thread scheduling.
pub(crate) fn example_rng(seed: u64, epoch: u64, idx: usize) -> ChaCha8Rng {
    let mut rng = derive_rng(seed, epoch, Domain::Augment);
    rng.set_stream(idx as u64);
    rng
}

/// Uniform integer in `0..n` (`n > 0`), unbiased (rejection sampling).
pub(crate) fn uniform_below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    debug_assert!(n > 0);
    let n = n as u64;
    let zone = u64::MAX - (u64::MAX - n + 1) % n;
    loop {
        let v = rng.next_u64();
        if v <= zone {
            return (v % n) as usize;
        }
    }
}

/// Fisher-Yates shuffle.
pub(crate) fn shuffle<T>(xs: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..xs.len()).rev() {
        let j = uniform_below(rng, i + 1);
        xs.swap(i, j);
    }
}

/// A fair coin.
pub(crate) fn coin(rng: &mut ChaCha8Rng) -> bool {
    rng.next_u32() & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_below_covers_range() {
        let mut rng = derive_rng(1, 2, Domain::Shuffle);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[uniform_below(&mut rng, 7)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert_eq!(uniform_below(&mut rng, 1), 0);
    }

    #[test]
    fn derived_streams_differ() {
        let a = derive_rng(1, 0, Domain::Shuffle).next_u64();
        let b = derive_rng(1, 1, Domain::Shuffle).next_u64();
        let c = derive_rng(1, 0, Domain::Augment).next_u64();
        let d = derive_rng(2, 0, Domain::Shuffle).next_u64();
        assert!(a != b && a != c && a != d && b != c);
        assert_eq!(a, derive_rng(1, 0, Domain::Shuffle).next_u64());
        assert_ne!(
            example_rng(1, 0, 5).next_u64(),
            example_rng(1, 0, 6).next_u64()
        );
    }
}
