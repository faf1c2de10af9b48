//! Fixed work partitions, so that reductions do not depend on the thread count.

use rayon::prelude::*;

/// Most partial sums a batch reduction is split into.
pub(crate) const MAX_CHUNKS: usize = 16;

/// Length of each chunk when `total` items are split into at most `MAX_CHUNKS` chunks. Depends
/// only on `total`, never on the number of threads: this is what makes reductions bit-exact
/// across thread counts.
pub(crate) fn chunk_len(total: usize) -> usize {
    total.div_ceil(MAX_CHUNKS).max(1)
}

/// Sums `parts` (consecutive blocks of `len`) into `out` in block order, parallel over elements.
pub(crate) fn reduce_partials(parts: &[f32], len: usize, out: &mut [f32], accumulate: bool) {
    assert_eq!(out.len(), len, "reduce_partials output length");
    let n_parts = parts.len().checked_div(len).unwrap_or(0);
    out.par_chunks_mut(4096).enumerate().for_each(|(bi, o)| {
        let base = bi * 4096;
        if !accumulate {
            o.fill(0.0);
        }
        for p in 0..n_parts {
            let src = &parts[p * len + base..p * len + base + o.len()];
            for (a, b) in o.iter_mut().zip(src) {
                *a += *b;
            }
        }
    });
}

/// Sums f64 per-chunk partials of `len` values in chunk order.
pub(crate) fn reduce_partials_f64(parts: &[Vec<f64>], len: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; len];
    for p in parts {
        for (a, b) in out.iter_mut().zip(p) {
            *a += *b;
        }
    }
    out
}
