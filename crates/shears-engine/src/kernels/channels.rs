//! Channel gathers ([`shears_ir::ChannelOp`]: channel shuffle, channel range) on NHWC rows.
//!
//! Output channel `o` of every row is input channel `src[o]`; the backward pass scatters the
//! gradient back. `src` has no repeated channel (a permutation or a range), so the scatter of
//! one row writes each input channel at most once and the result does not depend on the order.

use rayon::prelude::*;

/// Rows per parallel task.
const ROWS: usize = 64;

/// `y[r, o] = x[r, src[o]]` for rows of `c_in` input and `src.len()` output channels.
pub fn gather_forward(src: &[usize], c_in: usize, x: &[f32], y: &mut [f32]) {
    let c_out = src.len();
    assert_eq!(x.len() / c_in, y.len() / c_out, "same number of rows");
    y.par_chunks_mut(c_out * ROWS)
        .enumerate()
        .for_each(|(bi, yb)| {
            for (r, yr) in yb.chunks_exact_mut(c_out).enumerate() {
                let xr = &x[(bi * ROWS + r) * c_in..][..c_in];
                for (v, &s) in yr.iter_mut().zip(src) {
                    *v = xr[s];
                }
            }
        });
}

/// `dx[r, src[o]] (+)= dy[r, o]`; without `accumulate`, channels no output reads get 0.
pub fn gather_backward(src: &[usize], c_in: usize, dy: &[f32], dx: &mut [f32], accumulate: bool) {
    let c_out = src.len();
    assert_eq!(dx.len() / c_in, dy.len() / c_out, "same number of rows");
    dx.par_chunks_mut(c_in * ROWS)
        .enumerate()
        .for_each(|(bi, db)| {
            for (r, dr) in db.chunks_exact_mut(c_in).enumerate() {
                let gr = &dy[(bi * ROWS + r) * c_out..][..c_out];
                if !accumulate {
                    dr.fill(0.0);
                }
                for (&g, &s) in gr.iter().zip(src) {
                    dr[s] += g;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_and_scatter_two_rows() {
        let x = [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0];
        let mut y = [0.0; 4];
        gather_forward(&[3, 1], 4, &x, &mut y);
        assert_eq!(y, [3.0, 1.0, 13.0, 11.0]);
        let mut dx = [5.0; 8];
        gather_backward(&[3, 1], 4, &y, &mut dx, false);
        assert_eq!(dx, [0.0, 1.0, 0.0, 3.0, 0.0, 11.0, 0.0, 13.0]);
        gather_backward(&[3, 1], 4, &y, &mut dx, true);
        assert_eq!(dx, [0.0, 2.0, 0.0, 6.0, 0.0, 22.0, 0.0, 26.0]);
    }
}
