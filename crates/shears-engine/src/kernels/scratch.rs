//! Per-thread scratch buffers, reused across images, layers and steps.

use std::cell::RefCell;

thread_local! {
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with three thread-local scratch slices of at least the requested lengths. Their
/// contents are unspecified (stale data from earlier use): callers initialise what they read.
pub(crate) fn with_scratch<R>(
    lens: [usize; 3],
    f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R,
) -> R {
    let mut bufs = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    for (b, &l) in bufs.iter_mut().zip(&lens) {
        if b.len() < l {
            b.resize(l, 0.0);
        }
    }
    let [a, b, c] = &mut bufs;
    let r = f(&mut a[..lens[0]], &mut b[..lens[1]], &mut c[..lens[2]]);
    SCRATCH.with(|s| *s.borrow_mut() = bufs);
    r
}
