//! Fully connected layers over a batch of feature vectors (`[n, in]` to `[n, out]`).
//!
//! Large products are split over fixed blocks of output rows (never over the reduction axis),
//! each block one single-threaded GEMM, so results do not depend on the thread count.

use rayon::prelude::*;

use super::gemm::{sgemm, MatRef};

/// Products smaller than this many multiply-adds run as one GEMM.
const PAR_WORK: usize = 1 << 22;

/// Rows per parallel block for an output with `rows` rows of `work_per_row` multiply-adds.
fn row_block(rows: usize, work_per_row: usize) -> usize {
    if rows * work_per_row < PAR_WORK {
        rows.max(1)
    } else {
        16
    }
}

/// `y[n, o] = x[n, i] * w[o, i]^T + b`.
pub fn forward(
    n: usize,
    i: usize,
    o: usize,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
) {
    assert_eq!(x.len(), n * i, "linear input length");
    assert_eq!(w.len(), o * i, "linear weight length");
    assert_eq!(y.len(), n * o, "linear output length");
    if n * o == 0 {
        return;
    }
    let rb = row_block(n, i * o);
    y.par_chunks_mut(rb * o).enumerate().for_each(|(bi, yb)| {
        let m = yb.len() / o;
        sgemm(
            m,
            o,
            i,
            yb,
            0,
            o,
            false,
            MatRef::rows(x, bi * rb * i, i),
            MatRef::cols(w, 0, i),
        );
        if let Some(b) = b {
            for r in yb.chunks_exact_mut(o) {
                r.iter_mut().zip(b).for_each(|(v, bv)| *v += *bv);
            }
        }
    });
}

/// `dx[n, i] (+)= dy[n, o] * w[o, i]`.
pub fn backward_data(
    n: usize,
    i: usize,
    o: usize,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(dy.len(), n * o, "linear output gradient length");
    assert_eq!(dx.len(), n * i, "linear input gradient length");
    if n * i == 0 {
        return;
    }
    let rb = row_block(n, i * o);
    dx.par_chunks_mut(rb * i).enumerate().for_each(|(bi, db)| {
        let m = db.len() / i;
        sgemm(
            m,
            i,
            o,
            db,
            0,
            i,
            accumulate,
            MatRef::rows(dy, bi * rb * o, o),
            MatRef::rows(w, 0, i),
        );
    });
}

/// `dw[o, i] = dy^T * x` and `db = sum_rows dy` (both overwritten).
pub fn backward_weight(
    n: usize,
    i: usize,
    o: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    assert_eq!(dw.len(), o * i, "linear weight gradient length");
    if o * i > 0 {
        let rb = row_block(o, n * i);
        dw.par_chunks_mut(rb * i).enumerate().for_each(|(bi, wb)| {
            let m = wb.len() / i;
            sgemm(
                m,
                i,
                n,
                wb,
                0,
                i,
                false,
                MatRef::cols(dy, bi * rb, o),
                MatRef::rows(x, 0, i),
            );
        });
    }
    if let Some(db) = db {
        db.fill(0.0);
        for r in dy.chunks_exact(o) {
            db.iter_mut().zip(r).for_each(|(v, d)| *v += *d);
        }
    }
}
