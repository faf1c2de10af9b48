//! 1x1 convolutions (stride 1, no padding, one group) as single GEMMs over the whole batch.
//!
//! In NHWC such a conv is a matrix product whose rows are pixels: the batch's input is the
//! `[n * h * w, c_in]` matrix, the output `[n * h * w, c_out]`. The per-image algorithms run one
//! product of `h * w` rows per image, which on small maps (4x4 down to 1x1: 16 to 1 rows) leaves
//! the GEMM kernels starved; here the rows of all images are cut into fixed blocks instead, one
//! single-threaded product per block. Forward and backward data write each output element from
//! exactly one block; the weight gradient sums fixed chunks of images (`par::chunk_len`) and
//! reduces them in chunk order, or on batches of few pixels splits its rows (input channels)
//! into blocks, one product over all pixels each. Results therefore do not depend on the thread
//! count.

use rayon::prelude::*;

use super::{ConvGeom, PackedConv};
use crate::kernels::gemm::{sgemm, MatRef};
use crate::kernels::par::{chunk_len, reduce_partials};

/// Whether `g` is a plain 1x1 conv these kernels run.
pub fn supports(g: &ConvGeom) -> bool {
    g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.pad == [0; 4] && g.groups == 1
}

/// Rows per product: about 32k floats of the wider side per block, and at least two blocks per
/// thread of a 2-thread pool where the batch allows.
fn block_rows(g: &ConvGeom, rows: usize) -> usize {
    let by_size = (32768 / g.c_in.max(g.c_out).max(1)).clamp(16, 1024);
    by_size.min(rows.div_ceil(4).max(16))
}

/// Forward of `n` images: `y = f((x W + bias) + residual)`, `f` a ReLU when `relu`, `residual`
/// laid out like `y`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &PackedConv,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    assert!(supports(g), "1x1 geometry checked by the caller");
    assert_eq!(x.len(), n * g.in_len(), "1x1 conv input length");
    assert_eq!(y.len(), n * g.out_len(), "1x1 conv output length");
    assert_eq!(w.w.len(), g.weight_len(), "1x1 conv weight length");
    let rows = n * g.oh * g.ow;
    let br = block_rows(g, rows);
    let (ci, co) = (g.c_in, g.c_out);
    y.par_chunks_mut(br * co).enumerate().for_each(|(b, yb)| {
        let r0 = b * br;
        let m = yb.len() / co;
        sgemm(
            m,
            co,
            ci,
            yb,
            0,
            co,
            false,
            MatRef::rows(x, r0 * ci, ci),
            MatRef::rows(&w.w, 0, co),
        );
        let res = residual.map(|r| &r[r0 * co..(r0 + m) * co]);
        epilogue(yb, co, bias, res, relu);
    });
}

/// `y = f((y + bias) + residual)` on rows of `c` channels, the order of the other algorithms'
/// epilogues.
fn epilogue(y: &mut [f32], c: usize, bias: Option<&[f32]>, res: Option<&[f32]>, relu: bool) {
    if bias.is_none() && res.is_none() && !relu {
        return;
    }
    for (p, row) in y.chunks_exact_mut(c).enumerate() {
        if let Some(b) = bias {
            row.iter_mut().zip(&b[..c]).for_each(|(v, b)| *v += *b);
        }
        if let Some(r) = res {
            row.iter_mut()
                .zip(&r[p * c..(p + 1) * c])
                .for_each(|(v, r)| *v += *r);
        }
        if relu {
            row.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
}

/// Backward data of `n` images: `dx (+)= dy W^T`.
pub fn backward_data(
    g: &ConvGeom,
    n: usize,
    dy: &[f32],
    w: &PackedConv,
    dx: &mut [f32],
    accumulate: bool,
) {
    assert!(supports(g), "1x1 geometry checked by the caller");
    assert_eq!(dy.len(), n * g.out_len(), "1x1 conv output gradient length");
    assert_eq!(dx.len(), n * g.in_len(), "1x1 conv input gradient length");
    let rows = n * g.h * g.w;
    let br = block_rows(g, rows);
    let (ci, co) = (g.c_in, g.c_out);
    dx.par_chunks_mut(br * ci).enumerate().for_each(|(b, dxb)| {
        let r0 = b * br;
        let m = dxb.len() / ci;
        // `wt` of a 1x1 conv is `W^T`, `[c_out][c_in]`.
        sgemm(
            m,
            ci,
            co,
            dxb,
            0,
            ci,
            accumulate,
            MatRef::rows(dy, r0 * co, co),
            MatRef::rows(&w.wt, 0, ci),
        );
    });
}

/// Backward weight of `n` images: `dw = x^T dy` in the packed layout (`[c_in][c_out]`), and
/// `db = sum dy` when asked. Both overwrite their outputs.
pub fn backward_weight(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    assert!(supports(g), "1x1 geometry checked by the caller");
    assert_eq!(x.len(), n * g.in_len(), "1x1 conv input length");
    assert_eq!(dy.len(), n * g.out_len(), "1x1 conv output gradient length");
    assert_eq!(dw.len(), g.weight_len(), "1x1 conv weight gradient length");
    let (ci, co, npix) = (g.c_in, g.c_out, g.oh * g.ow);
    if n * npix <= 2048 {
        return weight_grad_by_rows(g, n, x, dy, dw, db);
    }
    let wl = g.weight_len();
    let bl = if db.is_some() { co } else { 0 };
    let part = wl + bl;
    let per = chunk_len(n);
    let n_chunks = n.div_ceil(per);
    let mut partials = vec![0.0f32; n_chunks * part];
    partials
        .par_chunks_mut(part)
        .enumerate()
        .for_each(|(c, pw)| {
            let (pw, pb) = pw.split_at_mut(wl);
            let (i0, i1) = (c * per, ((c + 1) * per).min(n));
            let (r0, m) = (i0 * npix, (i1 - i0) * npix);
            sgemm(
                ci,
                co,
                m,
                pw,
                0,
                co,
                false,
                MatRef::cols(x, r0 * ci, ci),
                MatRef::rows(dy, r0 * co, co),
            );
            if bl > 0 {
                for r in dy[r0 * co..(r0 + m) * co].chunks_exact(co) {
                    pb.iter_mut().zip(r).for_each(|(b, v)| *b += *v);
                }
            }
        });
    let mut wparts = Vec::with_capacity(n_chunks * wl);
    for c in 0..n_chunks {
        wparts.extend_from_slice(&partials[c * part..c * part + wl]);
    }
    reduce_partials(&wparts, wl, dw, false);
    if let Some(db) = db {
        db.fill(0.0);
        for c in 0..n_chunks {
            for (b, v) in db.iter_mut().zip(&partials[c * part + wl..(c + 1) * part]) {
                *b += *v;
            }
        }
    }
}

/// [`backward_weight`] for batches of few pixels: the images' partial sums would be tiny
/// products followed by a reduction larger than the work, so the rows of `dw` (input channels)
/// are split instead, each block one product over all the batch's pixels (no reduction).
fn weight_grad_by_rows(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    let (ci, co) = (g.c_in, g.c_out);
    let m = n * g.oh * g.ow;
    let rb = ci.div_ceil(4).next_multiple_of(16).min(ci).max(1);
    dw.par_chunks_mut(rb * co).enumerate().for_each(|(b, dwb)| {
        let rows = dwb.len() / co;
        sgemm(
            rows,
            co,
            m,
            dwb,
            0,
            co,
            false,
            MatRef::cols(x, b * rb, ci),
            MatRef::rows(dy, 0, co),
        );
    });
    if let Some(db) = db {
        db.fill(0.0);
        for r in dy.chunks_exact(co) {
            db.iter_mut().zip(r).for_each(|(b, v)| *b += *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use shears_ir::Conv2d;

    use super::*;
    use crate::kernels::conv::{self, ConvAlgo};

    /// Relative tolerance against the per-image im2col products: different blocking of the
    /// same sums.
    const ALGO_TOL: f32 = 1e-5;

    fn rand_vec(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1.0f32, |a, v| a.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= ALGO_TOL * scale,
                "{what}: element {i}: {a} vs {b} (scale {scale})"
            );
        }
    }

    #[test]
    fn matches_per_image_im2col() {
        let mut seed = 5;
        for (c_in, c_out, hw, n) in [
            (8, 4, 1, 19),
            (64, 96, 2, 9),
            (17, 33, 4, 5),
            (40, 8, 3, 1),
            (24, 20, 8, 40),
        ] {
            let g = ConvGeom::new(&Conv2d::new(c_in, c_out, 1), hw, hw)
                .unwrap()
                .with_algo(ConvAlgo::Im2col)
                .unwrap();
            let x = rand_vec(&mut seed, n * g.in_len());
            let oihw = rand_vec(&mut seed, g.weight_len());
            let bias = rand_vec(&mut seed, c_out);
            let res = rand_vec(&mut seed, n * g.out_len());
            let dy = rand_vec(&mut seed, n * g.out_len());
            let prior = rand_vec(&mut seed, n * g.in_len());
            let p = conv::pack_weight(&g, &oihw);
            let what = format!("{c_in}->{c_out} on {hw}x{hw}, batch {n}");

            let mut want = vec![0.0; n * g.out_len()];
            conv::forward_add(&g, n, &x, &p, Some(&bias), Some(&res), true, &mut want);
            let mut y = vec![f32::NAN; want.len()];
            forward(&g, n, &x, &p, Some(&bias), Some(&res), true, &mut y);
            assert_close(&format!("forward {what}"), &y, &want);

            let mut want = prior.clone();
            conv::backward_data(&g, n, &dy, &p, &mut want, true);
            let mut dx = prior.clone();
            backward_data(&g, n, &dy, &p, &mut dx, true);
            assert_close(&format!("dx (+) {what}"), &dx, &want);

            let (mut want_w, mut want_b) = (vec![0.0; g.weight_len()], vec![0.0; c_out]);
            conv::backward_weight(&g, n, &x, &dy, &mut want_w, Some(&mut want_b));
            let (mut dw, mut db) = (vec![f32::NAN; g.weight_len()], vec![f32::NAN; c_out]);
            backward_weight(&g, n, &x, &dy, &mut dw, Some(&mut db));
            assert_close(&format!("dw {what}"), &dw, &want_w);
            assert_close(&format!("db {what}"), &db, &want_b);
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let g = ConvGeom::new(&Conv2d::new(32, 48, 1), 2, 2).unwrap();
        let n = 41;
        let mut seed = 9;
        let x = rand_vec(&mut seed, n * g.in_len());
        let p = conv::pack_weight(&g, &rand_vec(&mut seed, g.weight_len()));
        let dy = rand_vec(&mut seed, n * g.out_len());
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut y = vec![0.0; n * g.out_len()];
                forward(&g, n, &x, &p, None, None, false, &mut y);
                let mut dx = vec![0.0; n * g.in_len()];
                backward_data(&g, n, &dy, &p, &mut dx, false);
                let mut dw = vec![0.0; g.weight_len()];
                backward_weight(&g, n, &x, &dy, &mut dw, None);
                (y, dx, dw)
            })
        };
        let one = run(1);
        for t in [2, 3] {
            assert!(one == run(t), "{t} threads differ from one thread");
        }
    }
}
