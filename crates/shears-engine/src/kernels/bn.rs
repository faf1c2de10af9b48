//! Batch normalisation on channels-last rows (`[rows, c]`): statistics, the per-channel affine
//! map (optionally followed by ReLU) and the backward pass of both the training-mode
//! normalisation (with the batch-statistic terms) and the inference-mode affine map.
//!
//! Reductions accumulate f32 lanes over blocks of 32 rows, fold the block sums
//! into f64 per fixed chunk of rows, and reduce the chunks in order: vectorised, accurate,
//! and independent of the thread count.

use rayon::prelude::*;

use super::par::{chunk_len, reduce_partials_f64};

/// Rows summed in f32 before folding into f64.
const BLOCK_ROWS: usize = 32;

/// Folds per-block f32 sums into f64 accumulators over `x`'s rows, `f(row, acc_a, acc_b)`
/// adding each row's contributions to the two f32 accumulators.
fn block_sums(rows: usize, c: usize, mut f: impl FnMut(usize, &mut [f32], &mut [f32])) -> Vec<f64> {
    let mut out = vec![0.0f64; 2 * c];
    let mut a = vec![0.0f32; c];
    let mut b = vec![0.0f32; c];
    for r0 in (0..rows).step_by(BLOCK_ROWS) {
        a.fill(0.0);
        b.fill(0.0);
        for r in r0..(r0 + BLOCK_ROWS).min(rows) {
            f(r, &mut a, &mut b);
        }
        let (oa, ob) = out.split_at_mut(c);
        oa.iter_mut().zip(&a).for_each(|(o, v)| *o += *v as f64);
        ob.iter_mut().zip(&b).for_each(|(o, v)| *o += *v as f64);
    }
    out
}

/// Per-channel mean and biased variance over the rows of `x` (`[rows, c]`). The variance is
/// computed around a per-channel shift (the first row) to avoid cancellation.
pub fn stats(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / c;
    if rows == 0 {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let shift: Vec<f32> = x[..c].to_vec();
    let per = chunk_len(rows);
    let parts: Vec<Vec<f64>> = x
        .par_chunks(per * c)
        .map(|blk| {
            block_sums(blk.len() / c, c, |r, s, q| {
                // Slicing everything to `c` lets the compiler drop bounds checks and vectorise.
                let (xr, sh, s, q) = (
                    &blk[r * c..(r + 1) * c],
                    &shift[..c],
                    &mut s[..c],
                    &mut q[..c],
                );
                for j in 0..c {
                    let d = xr[j] - sh[j];
                    s[j] += d;
                    q[j] += d * d;
                }
            })
        })
        .collect();
    let tot = reduce_partials_f64(&parts, 2 * c);
    let n = rows as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for j in 0..c {
        let m = tot[j] / n;
        mean[j] = shift[j] as f64 + m;
        var[j] = (tot[c + j] / n - m * m).max(0.0);
    }
    (mean, var)
}

/// `y = x * scale + shift (+ residual)` per channel, then ReLU if asked. `x`, `residual` and
/// `y` are `[rows, c]`.
pub fn scale_shift(
    x: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    assert_eq!(x.len(), y.len(), "scale_shift lengths");
    let (scale, shift) = (&scale[..c], &shift[..c]);
    let per = c * 256;
    match residual {
        None => y
            .par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .for_each(|(yb, xb)| {
                for (yr, xr) in yb.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
                    let (yr, xr) = (&mut yr[..c], &xr[..c]);
                    if relu {
                        for j in 0..c {
                            yr[j] = (xr[j] * scale[j] + shift[j]).max(0.0);
                        }
                    } else {
                        for j in 0..c {
                            yr[j] = xr[j] * scale[j] + shift[j];
                        }
                    }
                }
            }),
        Some(res) => {
            assert_eq!(res.len(), y.len(), "scale_shift residual length");
            y.par_chunks_mut(per)
                .zip(x.par_chunks(per))
                .zip(res.par_chunks(per))
                .for_each(|((yb, xb), rb)| {
                    for ((yr, xr), rr) in yb
                        .chunks_exact_mut(c)
                        .zip(xb.chunks_exact(c))
                        .zip(rb.chunks_exact(c))
                    {
                        let (yr, xr, rr) = (&mut yr[..c], &xr[..c], &rr[..c]);
                        if relu {
                            for j in 0..c {
                                yr[j] = (xr[j] * scale[j] + shift[j] + rr[j]).max(0.0);
                            }
                        } else {
                            for j in 0..c {
                                yr[j] = xr[j] * scale[j] + shift[j] + rr[j];
                            }
                        }
                    }
                })
        }
    }
}

/// Inputs of [`backward`].
pub struct BnBackward<'a> {
    /// The forward input `[rows, c]`.
    pub x: &'a [f32],
    /// Channels.
    pub c: usize,
    /// Mean used in the forward pass.
    pub mean: &'a [f32],
    /// `1 / sqrt(var + eps)` used in the forward pass.
    pub invstd: &'a [f32],
    /// `gamma * invstd` as used in the forward pass.
    pub scale: &'a [f32],
    /// `beta - mean * scale` as used in the forward pass.
    pub shift: &'a [f32],
    /// Whether a ReLU followed the normalisation (its mask is recomputed from `x`).
    pub relu: bool,
    /// Whether the forward used batch statistics (training mode).
    pub batch_stats: bool,
}

/// Where batch norm's input gradient goes.
pub enum BnDx<'a> {
    /// Not needed.
    Skip,
    /// Written to this buffer.
    Overwrite(&'a mut [f32]),
    /// Added to this buffer.
    Accumulate(&'a mut [f32]),
    /// Written over the output gradient `dy`.
    InPlace,
}

/// Per-channel constants of one backward pass, all sliced to `c`.
struct Consts<'a> {
    mean: &'a [f32],
    invstd: &'a [f32],
    scale: &'a [f32],
    shift: &'a [f32],
    /// dx = scale * g + u * xhat + v.
    u: &'a [f32],
    v: &'a [f32],
}

impl Consts<'_> {
    /// The gradient reaching the normalisation's output, masked by the ReLU when there is one
    /// (the mask is recomputed from `x` exactly as the forward pass computed it).
    #[inline(always)]
    fn g<const RELU: bool>(&self, x: f32, dy: f32, j: usize) -> f32 {
        if RELU {
            let mid = x * self.scale[j] + self.shift[j];
            if mid > 0.0 {
                dy
            } else {
                0.0
            }
        } else {
            dy
        }
    }

    #[inline(always)]
    fn xhat(&self, x: f32, j: usize) -> f32 {
        (x - self.mean[j]) * self.invstd[j]
    }

    #[inline(always)]
    fn dx<const RELU: bool>(&self, x: f32, dy: f32, j: usize) -> f32 {
        self.scale[j] * self.g::<RELU>(x, dy, j) + self.u[j] * self.xhat(x, j) + self.v[j]
    }
}

/// Per-chunk sums of `g` and `g * xhat`.
fn sums<const RELU: bool>(k: &Consts<'_>, c: usize, xb: &[f32], db: &[f32]) -> Vec<f64> {
    block_sums(xb.len() / c, c, |r, sg, sgx| {
        let (xr, dr) = (&xb[r * c..(r + 1) * c], &db[r * c..(r + 1) * c]);
        let (sg, sgx) = (&mut sg[..c], &mut sgx[..c]);
        for j in 0..c {
            let gv = k.g::<RELU>(xr[j], dr[j], j);
            sg[j] += gv;
            sgx[j] += gv * k.xhat(xr[j], j);
        }
    })
}

/// `out (+)= dx` for one chunk of rows, or `dy = dx` in place when `out` is `None`.
fn dx_rows<const RELU: bool, const ACC: bool>(
    k: &Consts<'_>,
    c: usize,
    xb: &[f32],
    db: &mut [f32],
    out: Option<&mut [f32]>,
) {
    match out {
        None => {
            for (dr, xr) in db.chunks_exact_mut(c).zip(xb.chunks_exact(c)) {
                let (dr, xr) = (&mut dr[..c], &xr[..c]);
                for j in 0..c {
                    dr[j] = k.dx::<RELU>(xr[j], dr[j], j);
                }
            }
        }
        Some(ob) => {
            for ((or, xr), dr) in ob
                .chunks_exact_mut(c)
                .zip(xb.chunks_exact(c))
                .zip(db.chunks_exact(c))
            {
                let (or, xr, dr) = (&mut or[..c], &xr[..c], &dr[..c]);
                for j in 0..c {
                    let v = k.dx::<RELU>(xr[j], dr[j], j);
                    if ACC {
                        or[j] += v;
                    } else {
                        or[j] = v;
                    }
                }
            }
        }
    }
}

/// Gradients of batch norm from the output gradient `dy` (of the ReLU when `a.relu`). Writes
/// the input gradient as `dx` says, `dmid` (the gradient of the normalisation's output before
/// the ReLU) when given, and returns `(dgamma, dbeta)`. `dy` changes only with
/// [`BnDx::InPlace`].
pub fn backward(
    a: &BnBackward<'_>,
    dy: &mut [f32],
    dx: BnDx<'_>,
    dmid: Option<&mut [f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let c = a.c;
    let rows = a.x.len() / c;
    let per = chunk_len(rows) * c;
    let relu = a.relu;
    let zeros = vec![0.0f32; c];
    let mut k = Consts {
        mean: &a.mean[..c],
        invstd: &a.invstd[..c],
        scale: &a.scale[..c],
        shift: &a.shift[..c],
        u: &zeros[..c],
        v: &zeros[..c],
    };
    let parts: Vec<Vec<f64>> =
        a.x.par_chunks(per)
            .zip(dy.par_chunks(per))
            .map(|(xb, db)| {
                if relu {
                    sums::<true>(&k, c, xb, db)
                } else {
                    sums::<false>(&k, c, xb, db)
                }
            })
            .collect();
    let tot = reduce_partials_f64(&parts, 2 * c);
    let dbeta: Vec<f32> = tot[..c].iter().map(|v| *v as f32).collect();
    let dgamma: Vec<f32> = tot[c..].iter().map(|v| *v as f32).collect();
    if let Some(dm) = dmid {
        dm.par_chunks_mut(per)
            .zip(a.x.par_chunks(per))
            .zip(dy.par_chunks(per))
            .for_each(|((mb, xb), db)| {
                for ((mr, xr), dr) in mb
                    .chunks_exact_mut(c)
                    .zip(xb.chunks_exact(c))
                    .zip(db.chunks_exact(c))
                {
                    let (mr, xr, dr) = (&mut mr[..c], &xr[..c], &dr[..c]);
                    for j in 0..c {
                        mr[j] = if relu {
                            k.g::<true>(xr[j], dr[j], j)
                        } else {
                            dr[j]
                        };
                    }
                }
            });
    }
    if matches!(dx, BnDx::Skip) {
        return (dgamma, dbeta);
    }
    // dx = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat)) in training mode,
    // gamma * invstd * g in inference mode: dx = scale * g + u * xhat + v per channel.
    let n = rows as f64;
    let mut u = vec![0.0f32; c];
    let mut v = vec![0.0f32; c];
    if a.batch_stats {
        for j in 0..c {
            let s = a.scale[j] as f64;
            u[j] = (-s * tot[c + j] / n) as f32;
            v[j] = (-s * tot[j] / n) as f32;
        }
    }
    k.u = &u[..c];
    k.v = &v[..c];
    let k = &k;
    let run = |xb: &[f32], db: &mut [f32], ob: Option<&mut [f32]>, acc: bool| match (relu, acc) {
        (true, false) => dx_rows::<true, false>(k, c, xb, db, ob),
        (true, true) => dx_rows::<true, true>(k, c, xb, db, ob),
        (false, false) => dx_rows::<false, false>(k, c, xb, db, ob),
        (false, true) => dx_rows::<false, true>(k, c, xb, db, ob),
    };
    match dx {
        BnDx::Skip => {}
        BnDx::InPlace => dy
            .par_chunks_mut(per)
            .zip(a.x.par_chunks(per))
            .for_each(|(db, xb)| run(xb, db, None, false)),
        BnDx::Overwrite(dx) => dx
            .par_chunks_mut(per)
            .zip(a.x.par_chunks(per))
            .zip(dy.par_chunks_mut(per))
            .for_each(|((ob, xb), db)| run(xb, db, Some(ob), false)),
        BnDx::Accumulate(dx) => dx
            .par_chunks_mut(per)
            .zip(a.x.par_chunks(per))
            .zip(dy.par_chunks_mut(per))
            .for_each(|((ob, xb), db)| run(xb, db, Some(ob), true)),
    }
    (dgamma, dbeta)
}
