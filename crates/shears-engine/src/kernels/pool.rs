//! Max and average pooling (with padding, floor or ceil mode) and global average pooling, on NHWC.

use rayon::prelude::*;
use shears_ir::Pool2d;

/// Geometry of a pooling window over one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Window `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]`.
    pub pad: [usize; 4],
    /// Whether padded cells count in an average's divisor.
    pub count_include_pad: bool,
}

impl PoolGeom {
    /// The geometry of `p` on a `c x h x w` input, or `None` if the window does not fit.
    pub fn new(p: &Pool2d, c: usize, h: usize, w: usize) -> Option<Self> {
        let (oh, ow) = p.output_hw(h, w)?;
        Some(PoolGeom {
            c,
            h,
            w,
            oh,
            ow,
            kernel: p.kernel,
            stride: p.stride,
            pad: p.padding,
            count_include_pad: p.count_include_pad,
        })
    }

    /// Elements of one input image.
    pub fn in_len(&self) -> usize {
        self.h * self.w * self.c
    }

    /// Elements of one output image.
    pub fn out_len(&self) -> usize {
        self.oh * self.ow * self.c
    }

    /// The window of output pixel `(oy, ox)` clipped to the image: `(y0, y1, x0, x1, count)`
    /// where `count` is the average's divisor.
    fn window(&self, oy: usize, ox: usize) -> (usize, usize, usize, usize, usize) {
        let ys = (oy * self.stride[0]) as isize - self.pad[0] as isize;
        let xs = (ox * self.stride[1]) as isize - self.pad[1] as isize;
        let ye = ys + self.kernel[0] as isize;
        let xe = xs + self.kernel[1] as isize;
        let y0 = ys.max(0) as usize;
        let x0 = xs.max(0) as usize;
        let y1 = (ye.min(self.h as isize)).max(0) as usize;
        let x1 = (xe.min(self.w as isize)).max(0) as usize;
        let count = if self.count_include_pad {
            // PyTorch clips the window to the padded extent before counting.
            let ype = ye.min((self.h + self.pad[2]) as isize);
            let xpe = xe.min((self.w + self.pad[3]) as isize);
            ((ype - ys) * (xpe - xs)) as usize
        } else {
            (y1.saturating_sub(y0)) * (x1.saturating_sub(x0))
        };
        (y0, y1.max(y0), x0, x1.max(x0), count)
    }
}

/// Max pooling of `n` images. `argmax` receives, per output element, the input pixel index
/// (`y * w + x`) of the first maximum in row-major window order (NaN propagates).
pub fn max_forward(g: &PoolGeom, n: usize, x: &[f32], y: &mut [f32], argmax: Option<&mut [u32]>) {
    assert_eq!(x.len(), n * g.in_len(), "max pool input length");
    assert_eq!(y.len(), n * g.out_len(), "max pool output length");
    let c = g.c;
    let run = |xi: &[f32], yi: &mut [f32], mut ai: Option<&mut [u32]>| {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let p = oy * g.ow + ox;
                let (y0, y1, x0, x1, _) = g.window(oy, ox);
                let yr = &mut yi[p * c..(p + 1) * c];
                yr.fill(f32::NEG_INFINITY);
                let mut ar = ai.as_deref_mut().map(|a| &mut a[p * c..(p + 1) * c]);
                if let Some(a) = ar.as_deref_mut() {
                    a.fill(u32::MAX);
                }
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let q = iy * g.w + ix;
                        let xr = &xi[q * c..(q + 1) * c];
                        for j in 0..c {
                            let v = xr[j];
                            if v > yr[j]
                                || v.is_nan()
                                || ar.as_deref().is_some_and(|a| a[j] == u32::MAX)
                            {
                                yr[j] = v;
                                if let Some(a) = ar.as_deref_mut() {
                                    a[j] = q as u32;
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    match argmax {
        Some(a) => y
            .par_chunks_mut(g.out_len())
            .zip(a.par_chunks_mut(g.out_len()))
            .enumerate()
            .for_each(|(i, (yi, ai))| run(&x[i * g.in_len()..(i + 1) * g.in_len()], yi, Some(ai))),
        None => y
            .par_chunks_mut(g.out_len())
            .enumerate()
            .for_each(|(i, yi)| max_plain(g, &x[i * g.in_len()..(i + 1) * g.in_len()], yi)),
    }
}

/// Max pooling of one image without the argmax (inference): the same maxima as the recorded
/// path (a NaN wins, ties keep the first), as a branch-free select over whole channel rows so
/// that it vectorises (issue 16: the branchy loop cost resnet18's stem pool 40x ONNX Runtime).
fn max_plain(g: &PoolGeom, xi: &[f32], yi: &mut [f32]) {
    let c = g.c;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let p = oy * g.ow + ox;
            let (y0, y1, x0, x1, _) = g.window(oy, ox);
            let yr = &mut yi[p * c..(p + 1) * c];
            yr.fill(f32::NEG_INFINITY);
            for iy in y0..y1 {
                for ix in x0..x1 {
                    let q = iy * g.w + ix;
                    for (d, &v) in yr.iter_mut().zip(&xi[q * c..(q + 1) * c]) {
                        *d = if v > *d || v.is_nan() { v } else { *d };
                    }
                }
            }
        }
    }
}

/// Backward of max pooling: routes each output gradient to its argmax (`dx` overwritten or
/// accumulated).
pub fn max_backward(
    g: &PoolGeom,
    n: usize,
    argmax: &[u32],
    dy: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(dy.len(), n * g.out_len(), "max pool output gradient length");
    assert_eq!(dx.len(), n * g.in_len(), "max pool input gradient length");
    let c = g.c;
    dx.par_chunks_mut(g.in_len())
        .enumerate()
        .for_each(|(i, dxi)| {
            if !accumulate {
                dxi.fill(0.0);
            }
            let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
            let ai = &argmax[i * g.out_len()..(i + 1) * g.out_len()];
            for (e, (&a, &d)) in ai.iter().zip(dyi).enumerate() {
                if a != u32::MAX {
                    dxi[a as usize * c + e % c] += d;
                }
            }
        });
}

/// Average pooling of `n` images.
pub fn avg_forward(g: &PoolGeom, n: usize, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), n * g.in_len(), "avg pool input length");
    assert_eq!(y.len(), n * g.out_len(), "avg pool output length");
    let c = g.c;
    y.par_chunks_mut(g.out_len())
        .enumerate()
        .for_each(|(i, yi)| {
            let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let p = oy * g.ow + ox;
                    let (y0, y1, x0, x1, count) = g.window(oy, ox);
                    let yr = &mut yi[p * c..(p + 1) * c];
                    yr.fill(0.0);
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let q = iy * g.w + ix;
                            for (o, v) in yr.iter_mut().zip(&xi[q * c..(q + 1) * c]) {
                                *o += *v;
                            }
                        }
                    }
                    let inv = if count > 0 { 1.0 / count as f32 } else { 0.0 };
                    yr.iter_mut().for_each(|v| *v *= inv);
                }
            }
        });
}

/// Backward of average pooling (`dx` overwritten or accumulated).
pub fn avg_backward(g: &PoolGeom, n: usize, dy: &[f32], dx: &mut [f32], accumulate: bool) {
    assert_eq!(dy.len(), n * g.out_len(), "avg pool output gradient length");
    assert_eq!(dx.len(), n * g.in_len(), "avg pool input gradient length");
    let c = g.c;
    dx.par_chunks_mut(g.in_len())
        .enumerate()
        .for_each(|(i, dxi)| {
            if !accumulate {
                dxi.fill(0.0);
            }
            let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let p = oy * g.ow + ox;
                    let (y0, y1, x0, x1, count) = g.window(oy, ox);
                    let inv = if count > 0 { 1.0 / count as f32 } else { 0.0 };
                    let dr = &dyi[p * c..(p + 1) * c];
                    for iy in y0..y1 {
                        for ix in x0..x1 {
                            let q = iy * g.w + ix;
                            for (o, v) in dxi[q * c..(q + 1) * c].iter_mut().zip(dr) {
                                *o += *v * inv;
                            }
                        }
                    }
                }
            }
        });
}

/// Mean over the `s` spatial positions of `n` images: `[n, s, c]` to `[n, c]`.
pub fn global_avg_forward(n: usize, s: usize, c: usize, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), n * s * c, "global pool input length");
    assert_eq!(y.len(), n * c, "global pool output length");
    let inv = 1.0 / s as f32;
    y.par_chunks_mut(c).enumerate().for_each(|(i, yi)| {
        yi.fill(0.0);
        for r in x[i * s * c..(i + 1) * s * c].chunks_exact(c) {
            for (o, v) in yi.iter_mut().zip(r) {
                *o += *v;
            }
        }
        yi.iter_mut().for_each(|v| *v *= inv);
    });
}

/// Backward of global average pooling (`dx` overwritten or accumulated).
pub fn global_avg_backward(
    n: usize,
    s: usize,
    c: usize,
    dy: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(dx.len(), n * s * c, "global pool input gradient length");
    assert_eq!(dy.len(), n * c, "global pool output gradient length");
    let inv = 1.0 / s as f32;
    dx.par_chunks_mut(s * c).enumerate().for_each(|(i, dxi)| {
        let d = &dy[i * c..(i + 1) * c];
        for r in dxi.chunks_exact_mut(c) {
            for (o, v) in r.iter_mut().zip(d) {
                if accumulate {
                    *o += *v * inv;
                } else {
                    *o = *v * inv;
                }
            }
        }
    });
}
