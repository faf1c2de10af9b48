//! Layer normalisation over the channels of each row (`[rows, c]`, channels last): forward,
//! and the gradients of the input, the weight and the bias.
//!
//! Each row is one pixel; its mean and biased variance are taken over its `c` values in f64.
//! Rows are independent, so the forward pass and the input gradient split over rows freely;
//! the weight and bias gradients are summed per fixed chunk of rows and the chunks reduced in
//! order, independent of the thread count.

use rayon::prelude::*;

use super::par::{chunk_len, reduce_partials_f64};

/// The mean and `1 / sqrt(var + eps)` of one row.
fn row_stats(x: &[f32], eps: f32) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| {
            let d = v as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps as f64).sqrt())
}

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` per row of `c` values.
pub fn forward(x: &[f32], c: usize, gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) {
    assert!(
        x.len() == y.len() && gamma.len() == c && beta.len() == c && x.len().is_multiple_of(c),
        "layer_norm forward: x {}, y {}, gamma {}, beta {}, c {c}",
        x.len(),
        y.len(),
        gamma.len(),
        beta.len()
    );
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .for_each(|(yr, xr)| {
            let (mean, inv) = row_stats(xr, eps);
            for j in 0..c {
                let xhat = (xr[j] as f64 - mean) * inv;
                yr[j] = (xhat * gamma[j] as f64 + beta[j] as f64) as f32;
            }
        });
}

/// What [`backward`] writes.
pub struct LayerNormGrads<'a> {
    /// The input gradient `[rows, c]`, with whether to add to it, if needed.
    pub dx: Option<(&'a mut [f32], bool)>,
    /// Whether the weight and bias gradients are wanted.
    pub params: bool,
}

/// Backward of [`forward`] from the input `x` and the output gradient `dy`. Writes the input
/// gradient where asked and returns the weight and bias gradients (`[c]` each) when
/// `grads.params`.
pub fn backward(
    x: &[f32],
    c: usize,
    gamma: &[f32],
    eps: f32,
    dy: &[f32],
    grads: LayerNormGrads<'_>,
) -> Option<(Vec<f32>, Vec<f32>)> {
    assert!(
        x.len() == dy.len() && gamma.len() == c && x.len().is_multiple_of(c),
        "layer_norm backward: x {}, dy {}, gamma {}, c {c}",
        x.len(),
        dy.len(),
        gamma.len()
    );
    if let Some((dx, accumulate)) = grads.dx {
        assert_eq!(dx.len(), x.len(), "layer_norm backward: dx length");
        dx.par_chunks_mut(c)
            .zip(x.par_chunks(c).zip(dy.par_chunks(c)))
            .for_each(|(dxr, (xr, dyr))| {
                let (mean, inv) = row_stats(xr, eps);
                // dx = inv * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma.
                let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                for j in 0..c {
                    let g = dyr[j] as f64 * gamma[j] as f64;
                    sg += g;
                    sgx += g * (xr[j] as f64 - mean) * inv;
                }
                let (mg, mgx) = (sg / c as f64, sgx / c as f64);
                for j in 0..c {
                    let xhat = (xr[j] as f64 - mean) * inv;
                    let g = dyr[j] as f64 * gamma[j] as f64;
                    let v = (inv * (g - mg - xhat * mgx)) as f32;
                    if accumulate {
                        dxr[j] += v;
                    } else {
                        dxr[j] = v;
                    }
                }
            });
    }
    if !grads.params {
        return None;
    }
    let rows = x.len() / c;
    let per = chunk_len(rows) * c;
    let parts: Vec<Vec<f64>> = x
        .par_chunks(per.max(c))
        .zip(dy.par_chunks(per.max(c)))
        .map(|(xb, dyb)| {
            let mut s = vec![0.0f64; 2 * c];
            for (xr, dyr) in xb.chunks_exact(c).zip(dyb.chunks_exact(c)) {
                let (mean, inv) = row_stats(xr, eps);
                for j in 0..c {
                    let d = dyr[j] as f64;
                    s[j] += d * (xr[j] as f64 - mean) * inv;
                    s[c + j] += d;
                }
            }
            s
        })
        .collect();
    let tot = reduce_partials_f64(&parts, 2 * c);
    let dgamma = tot[..c].iter().map(|&v| v as f32).collect();
    let dbeta = tot[c..].iter().map(|&v| v as f32).collect();
    Some((dgamma, dbeta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_normalised_then_scaled() {
        // Rows [1, 3] and [6, 4]: variance 1, xhat [-1, 1] and [1, -1].
        let x = [1.0, 3.0, 6.0, 4.0];
        let mut y = [0.0; 4];
        forward(&x, 2, &[2.0, 1.0], &[0.5, 0.0], 0.0, &mut y);
        assert_eq!(y, [-1.5, 1.0, 2.5, -1.0]);
    }

    #[test]
    fn bias_gradient_sums_rows() {
        let x = [1.0, 3.0, 2.0, 7.0, -1.0, 4.0];
        let dy = [0.5, 1.0, 2.0, -1.0, 0.25, 3.0];
        let (_, db) = backward(
            &x,
            2,
            &[1.0, 1.0],
            1e-5,
            &dy,
            LayerNormGrads {
                dx: None,
                params: true,
            },
        )
        .expect("params asked");
        assert_eq!(db, [2.75, 3.0]);
    }
}
