//! Parameter-free ops on channels-last activations `[n, s, c]`: ReLU, n-ary add, channel
//! concat, dropout, the option-A shortcut, flatten (to PyTorch's C-major order) and copies.

use rayon::prelude::*;

const BLOCK: usize = 1 << 14;

/// `y = max(x, 0)`.
pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK))
        .for_each(|(yb, xb)| {
            for (o, v) in yb.iter_mut().zip(xb) {
                *o = v.max(0.0);
            }
        });
}

/// `dx (+)= dy * (y > 0)`, given the ReLU's output `y`.
pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32], accumulate: bool) {
    dx.par_chunks_mut(BLOCK)
        .zip(y.par_chunks(BLOCK))
        .zip(dy.par_chunks(BLOCK))
        .for_each(|((ob, yb), db)| {
            if accumulate {
                for ((o, yv), dv) in ob.iter_mut().zip(yb).zip(db) {
                    *o += if *yv > 0.0 { *dv } else { 0.0 };
                }
            } else {
                for ((o, yv), dv) in ob.iter_mut().zip(yb).zip(db) {
                    *o = if *yv > 0.0 { *dv } else { 0.0 };
                }
            }
        });
}

/// `y = sum of xs` (in input order), then ReLU if asked.
pub fn add_forward(xs: &[&[f32]], relu: bool, y: &mut [f32]) {
    y.par_chunks_mut(BLOCK).enumerate().for_each(|(bi, yb)| {
        let o = bi * BLOCK;
        let l = yb.len();
        if xs.len() == 2 {
            let (a, b) = (&xs[0][o..o + l], &xs[1][o..o + l]);
            if relu {
                yb.iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(y, (a, b))| *y = (*a + *b).max(0.0));
            } else {
                yb.iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(y, (a, b))| *y = *a + *b);
            }
            return;
        }
        yb.copy_from_slice(&xs[0][o..o + l]);
        for x in &xs[1..] {
            for (a, b) in yb.iter_mut().zip(&x[o..o + l]) {
                *a += *b;
            }
        }
        if relu {
            yb.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    });
}

/// `g *= (y > 0)` in place, given a ReLU's output `y`.
pub fn relu_mask_in_place(y: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(BLOCK)
        .zip(y.par_chunks(BLOCK))
        .for_each(|(gb, yb)| {
            for (gv, yv) in gb.iter_mut().zip(yb) {
                *gv = if *yv > 0.0 { *gv } else { 0.0 };
            }
        });
}

/// `dst (+)= src`.
pub fn copy_or_add(src: &[f32], dst: &mut [f32], accumulate: bool) {
    dst.par_chunks_mut(BLOCK)
        .zip(src.par_chunks(BLOCK))
        .for_each(|(d, s)| {
            if accumulate {
                d.iter_mut().zip(s).for_each(|(a, b)| *a += *b);
            } else {
                d.copy_from_slice(s);
            }
        });
}

/// Concatenation along channels: each part is `(data [rows, c_k], c_k)`; `y` is `[rows, sum c_k]`.
pub fn concat_forward(parts: &[(&[f32], usize)], y: &mut [f32]) {
    let ct: usize = parts.iter().map(|p| p.1).sum();
    y.par_chunks_mut(ct * 64).enumerate().for_each(|(bi, yb)| {
        for (r, yr) in yb.chunks_exact_mut(ct).enumerate() {
            let row = bi * 64 + r;
            let mut o = 0;
            for (d, c) in parts {
                yr[o..o + c].copy_from_slice(&d[row * c..(row + 1) * c]);
                o += c;
            }
        }
    });
}

/// Backward of concat for one part: `dx (+)= dy[:, off..off + c]`.
pub fn concat_backward(
    dy: &[f32],
    ct: usize,
    off: usize,
    c: usize,
    dx: &mut [f32],
    accumulate: bool,
) {
    dx.par_chunks_mut(c * 64).enumerate().for_each(|(bi, db)| {
        for (r, dr) in db.chunks_exact_mut(c).enumerate() {
            let row = bi * 64 + r;
            let s = &dy[row * ct + off..row * ct + off + c];
            if accumulate {
                dr.iter_mut().zip(s).for_each(|(a, b)| *a += *b);
            } else {
                dr.copy_from_slice(s);
            }
        }
    });
}

/// A counter-based uniform in `[0, 1)` for element `idx` of the stream `key`.
#[inline]
fn uniform(key: u64, idx: u64) -> f32 {
    let mut z = key ^ idx.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// Dropout (`y = x * keep / (1 - p)`), or its backward when `x` is the output gradient: the
/// mask is a pure function of `key` and the element index, so backward recomputes it.
pub fn dropout(key: u64, p: f32, x: &[f32], y: &mut [f32], accumulate: bool) {
    let scale = 1.0 / (1.0 - p);
    y.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK))
        .enumerate()
        .for_each(|(bi, (yb, xb))| {
            for (e, (o, v)) in yb.iter_mut().zip(xb).enumerate() {
                let keep = uniform(key, (bi * BLOCK + e) as u64) >= p;
                let g = if keep { *v * scale } else { 0.0 };
                if accumulate {
                    *o += g;
                } else {
                    *o = g;
                }
            }
        });
}

/// Geometry of the option-A shortcut on one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortcutGeom {
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Subsampling step.
    pub stride: usize,
    /// Zero channels in front.
    pub pad_before: usize,
    /// Zero channels behind.
    pub pad_after: usize,
}

impl ShortcutGeom {
    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        (self.h.div_ceil(self.stride), self.w.div_ceil(self.stride))
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        self.c + self.pad_before + self.pad_after
    }

    fn in_len(&self) -> usize {
        self.h * self.w * self.c
    }

    fn out_len(&self) -> usize {
        let (oh, ow) = self.out_hw();
        oh * ow * self.c_out()
    }
}

/// Option-A shortcut forward of `n` images.
pub fn shortcut_forward(g: &ShortcutGeom, n: usize, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), n * g.in_len(), "shortcut input length");
    assert_eq!(y.len(), n * g.out_len(), "shortcut output length");
    let (oh, ow) = g.out_hw();
    let co = g.c_out();
    y.par_chunks_mut(g.out_len())
        .enumerate()
        .for_each(|(i, yi)| {
            let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
            for oy in 0..oh {
                for ox in 0..ow {
                    let r = &mut yi[(oy * ow + ox) * co..(oy * ow + ox + 1) * co];
                    r[..g.pad_before].fill(0.0);
                    r[g.pad_before + g.c..].fill(0.0);
                    let q = (oy * g.stride * g.w + ox * g.stride) * g.c;
                    r[g.pad_before..g.pad_before + g.c].copy_from_slice(&xi[q..q + g.c]);
                }
            }
        });
}

/// Option-A shortcut backward (`dx` overwritten or accumulated).
pub fn shortcut_backward(g: &ShortcutGeom, n: usize, dy: &[f32], dx: &mut [f32], accumulate: bool) {
    assert_eq!(dx.len(), n * g.in_len(), "shortcut input gradient length");
    assert_eq!(dy.len(), n * g.out_len(), "shortcut output gradient length");
    let (oh, ow) = g.out_hw();
    let co = g.c_out();
    dx.par_chunks_mut(g.in_len())
        .enumerate()
        .for_each(|(i, dxi)| {
            let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
            if !accumulate {
                dxi.fill(0.0);
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let r = &dyi[(oy * ow + ox) * co + g.pad_before
                        ..(oy * ow + ox) * co + g.pad_before + g.c];
                    let q = (oy * g.stride * g.w + ox * g.stride) * g.c;
                    dxi[q..q + g.c]
                        .iter_mut()
                        .zip(r)
                        .for_each(|(a, b)| *a += *b);
                }
            }
        });
}

/// Per-sample transpose `[n, s, c]` to `[n, c, s]` (channels-last to PyTorch's channels-first;
/// also Flatten's forward). Overwrites or accumulates into `y`.
pub fn to_channels_first(n: usize, s: usize, c: usize, x: &[f32], y: &mut [f32], accumulate: bool) {
    assert_eq!(x.len(), n * s * c, "transpose input length");
    assert_eq!(y.len(), n * s * c, "transpose output length");
    if n * s * c == 0 {
        return;
    }
    y.par_chunks_mut(s * c)
        .zip(x.par_chunks(s * c))
        .for_each(|(yi, xi)| transpose(xi, s, c, yi, accumulate));
}

/// Per-sample transpose `[n, c, s]` to `[n, s, c]` (PyTorch's channels-first to channels-last;
/// also Flatten's backward). Overwrites or accumulates into `y`.
pub fn to_channels_last(n: usize, s: usize, c: usize, x: &[f32], y: &mut [f32], accumulate: bool) {
    assert_eq!(x.len(), n * s * c, "transpose input length");
    assert_eq!(y.len(), n * s * c, "transpose output length");
    if n * s * c == 0 {
        return;
    }
    y.par_chunks_mut(s * c)
        .zip(x.par_chunks(s * c))
        .for_each(|(yi, xi)| transpose(xi, c, s, yi, accumulate));
}

/// `y[j, i] = x[i, j]` for an `r x c` matrix `x`, in cache blocks.
fn transpose(x: &[f32], r: usize, c: usize, y: &mut [f32], accumulate: bool) {
    const B: usize = 32;
    for i0 in (0..r).step_by(B) {
        for j0 in (0..c).step_by(B) {
            for i in i0..(i0 + B).min(r) {
                for j in j0..(j0 + B).min(c) {
                    if accumulate {
                        y[j * r + i] += x[i * c + j];
                    } else {
                        y[j * r + i] = x[i * c + j];
                    }
                }
            }
        }
    }
}
