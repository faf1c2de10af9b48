//! Pixel transforms (augmentation, padding, resizing) and normalization to model input.

use rand_chacha::ChaCha8Rng;

use crate::error::DataError;
use crate::rng::{coin, uniform_below};

/// Turns pixels into `f32` model input: `x = (pixel * scale - mean[c]) / std[c]`.
///
/// `mean` and `std` have one entry per channel of the (transformed) image, or a single entry
/// that is used for every channel.
///
/// ```
/// use shears_data::Normalize;
/// let n = Normalize::imagenet();
/// assert!((n.apply(255.0, 0) - (1.0 - 0.485) / 0.229).abs() < 1e-6);
/// assert_eq!(Normalize::raw().apply(17.0, 2), 17.0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    /// Multiplier applied to the raw pixel first (e.g. `1/255`).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling (length 1 or the channel count).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by last (length 1 or the channel count, non-zero).
    pub std: Vec<f32>,
}

impl Normalize {
    /// ImageNet statistics, used by the akamaster CIFAR ResNets: `pixel/255`, mean
    /// (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225). Needs 3 channels.
    pub fn imagenet() -> Self {
        Normalize {
            scale: 1.0 / 255.0,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// `pixel/255` into `[0, 1]`, no mean/std (any channel count).
    pub fn unit() -> Self {
        Normalize {
            scale: 1.0 / 255.0,
            mean: vec![0.0],
            std: vec![1.0],
        }
    }

    /// The raw pixel value as `f32` (0..=255), e.g. for the MLPerf Tiny ResNet-8.
    pub fn raw() -> Self {
        Normalize {
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
        }
    }

    /// The usual CIFAR-10 statistics: `pixel/255`, mean (0.4914, 0.4822, 0.4465), std
    /// (0.2470, 0.2435, 0.2616). Needs 3 channels.
    pub fn cifar10() -> Self {
        Normalize {
            scale: 1.0 / 255.0,
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2470, 0.2435, 0.2616],
        }
    }

    /// Checks that `mean` and `std` fit `c` channels and that `std` has no zero.
    pub fn validate(&self, c: usize) -> Result<(), DataError> {
        for (what, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != c {
                return Err(DataError::invalid(format!(
                    "normalize: {what} has {} entries but images have {c} channels",
                    v.len()
                )));
            }
        }
        if let Some(s) = self.std.iter().find(|s| **s == 0.0 || !s.is_finite()) {
            return Err(DataError::invalid(format!("normalize: std value {s}")));
        }
        if !self.scale.is_finite() || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(DataError::invalid("normalize: non-finite scale or mean"));
        }
        Ok(())
    }

    /// Normalizes one value of channel `ch` (assumes [`Normalize::validate`] passed).
    pub fn apply(&self, pixel: f32, ch: usize) -> f32 {
        let m = self.mean[if self.mean.len() == 1 { 0 } else { ch }];
        let s = self.std[if self.std.len() == 1 { 0 } else { ch }];
        (pixel * self.scale - m) / s
    }
}

/// A pixel-level transform applied to the raw image (as `f32`, 0..=255) before
/// [`Normalize`]. Padding always uses the value 0 (black).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Random crop of the original size from the image zero-padded by `pad` pixels on every
    /// side (offsets uniform in `0..=2*pad`). Random.
    PadCrop {
        /// Padding on each side, in pixels.
        pad: usize,
    },
    /// Horizontal flip with probability 0.5. Random.
    HFlip,
    /// Replicates a single grey channel into three (RGB); a 3-channel image is left as is.
    GreyToRgb,
    /// Centered zero padding to `to_h x to_w` (e.g. 28x28 -> 32x32); must not shrink.
    Pad {
        /// Output height in pixels.
        to_h: usize,
        /// Output width in pixels.
        to_w: usize,
    },
    /// Bilinear resize to `h x w` (half-pixel centers, like PyTorch's `align_corners=False`,
    /// no antialiasing).
    Resize {
        /// Output height in pixels.
        h: usize,
        /// Output width in pixels.
        w: usize,
    },
}

/// A `(c, h, w)` image shape.
pub(crate) type Shape = (usize, usize, usize);

impl Transform {
    /// Whether the transform draws random numbers ([`Transform::PadCrop`], [`Transform::HFlip`]).
    pub fn is_random(&self) -> bool {
        matches!(self, Transform::PadCrop { .. } | Transform::HFlip)
    }

    /// The image shape `(c, h, w)` after this transform, or an error if it does not apply.
    pub fn output_shape(&self, shape: (usize, usize, usize)) -> Result<Shape, DataError> {
        let (c, h, w) = shape;
        match *self {
            Transform::PadCrop { pad } if pad > u32::MAX as usize => Err(DataError::invalid(
                format!("transform PadCrop pad {pad} (at most {})", u32::MAX),
            )),
            Transform::PadCrop { .. } => Ok(shape),
            Transform::HFlip => Ok(shape),
            Transform::GreyToRgb => match c {
                1 | 3 => Ok((3, h, w)),
                _ => Err(DataError::invalid(format!(
                    "transform GreyToRgb needs 1 or 3 channels, images have {c}"
                ))),
            },
            Transform::Pad { to_h, to_w } => {
                if to_h < h || to_w < w {
                    Err(DataError::invalid(format!(
                        "transform Pad to {to_h}x{to_w} would shrink {h}x{w} images"
                    )))
                } else {
                    Ok((c, to_h, to_w))
                }
            }
            Transform::Resize { h: rh, w: rw } => {
                if rh == 0 || rw == 0 || h == 0 || w == 0 {
                    Err(DataError::invalid(format!(
                        "transform Resize from {h}x{w} to {rh}x{rw}"
                    )))
                } else {
                    Ok((c, rh, rw))
                }
            }
        }
    }
}

/// The shape after a whole pipeline.
pub(crate) fn pipeline_shape(shape: Shape, transforms: &[Transform]) -> Result<Shape, DataError> {
    let mut cur = shape;
    for t in transforms {
        cur = t.output_shape(cur)?;
        let (c, h, w) = cur;
        if c.checked_mul(h).and_then(|v| v.checked_mul(w)).is_none() {
            return Err(DataError::invalid(format!(
                "transform {t:?} gives an image of {c}x{h}x{w} values"
            )));
        }
    }
    Ok(cur)
}

/// Runs `transforms` on `img` (shape `shape`, CHW) using `tmp` as scratch; the result is left
/// in `img`. `rng` must be given when a transform is random. Shapes must have been checked
/// with [`pipeline_shape`].
pub(crate) fn apply_pipeline(
    img: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
    mut shape: Shape,
    transforms: &[Transform],
    mut rng: Option<&mut ChaCha8Rng>,
) -> Shape {
    for t in transforms {
        let (c, h, w) = shape;
        let out = t
            .output_shape(shape)
            .expect("pipeline shapes are validated before applying");
        match *t {
            Transform::HFlip => {
                let rng = rng.as_deref_mut().expect("random transforms get an rng");
                if coin(rng) {
                    for row in img.chunks_exact_mut(w) {
                        row.reverse();
                    }
                }
                continue;
            }
            Transform::PadCrop { pad } => {
                let rng = rng.as_deref_mut().expect("random transforms get an rng");
                let dy = uniform_below(rng, 2 * pad + 1) as isize - pad as isize;
                let dx = uniform_below(rng, 2 * pad + 1) as isize - pad as isize;
                tmp.clear();
                tmp.resize(c * h * w, 0.0);
                shift(img, tmp, (c, h, w), dy, dx);
            }
            Transform::GreyToRgb => {
                if c == 3 {
                    continue;
                }
                tmp.clear();
                for _ in 0..3 {
                    tmp.extend_from_slice(&img[..h * w]);
                }
            }
            Transform::Pad { to_h, to_w } => {
                let (top, left) = ((to_h - h) / 2, (to_w - w) / 2);
                tmp.clear();
                tmp.resize(c * to_h * to_w, 0.0);
                for ch in 0..c {
                    for y in 0..h {
                        let src = &img[(ch * h + y) * w..][..w];
                        let dst = (ch * to_h + y + top) * to_w + left;
                        tmp[dst..dst + w].copy_from_slice(src);
                    }
                }
            }
            Transform::Resize { h: oh, w: ow } => {
                tmp.clear();
                tmp.resize(c * oh * ow, 0.0);
                resize_bilinear(img, tmp, (c, h, w), oh, ow);
            }
        }
        std::mem::swap(img, tmp);
        shape = out;
    }
    shape
}

/// `dst[y][x] = src[y + dy][x + dx]`, zero outside `src`. `dst` must be zeroed.
fn shift(src: &[f32], dst: &mut [f32], (c, h, w): Shape, dy: isize, dx: isize) {
    let (hi, wi) = (h as isize, w as isize);
    let x0 = (-dx).clamp(0, wi);
    let x1 = (wi - dx).clamp(0, wi);
    if x0 >= x1 {
        return;
    }
    for ch in 0..c {
        for y in 0..hi {
            let sy = y + dy;
            if sy < 0 || sy >= hi {
                continue;
            }
            let d = (ch * h) + y as usize;
            let s = (ch * h) + sy as usize;
            let dst_row = &mut dst[d * w..(d + 1) * w];
            let src_row = &src[s * w..(s + 1) * w];
            dst_row[x0 as usize..x1 as usize]
                .copy_from_slice(&src_row[(x0 + dx) as usize..(x1 + dx) as usize]);
        }
    }
}

/// Source sample positions for one axis: `(i0, i1, frac)` per output index.
fn bilinear_axis(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, (src - i0 as f64) as f32)
        })
        .collect()
}

/// Bilinear resize with half-pixel centers.
pub(crate) fn resize_bilinear(
    src: &[f32],
    dst: &mut [f32],
    (c, h, w): Shape,
    oh: usize,
    ow: usize,
) {
    let ys = bilinear_axis(h, oh);
    let xs = bilinear_axis(w, ow);
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
            let r0 = &plane[y0 * w..(y0 + 1) * w];
            let r1 = &plane[y1 * w..(y1 + 1) * w];
            let out = &mut dst[(ch * oh + oy) * ow..][..ow];
            for (o, &(x0, x1, fx)) in out.iter_mut().zip(&xs) {
                let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
                let bot = r1[x0] + (r1[x1] - r1[x0]) * fx;
                *o = top + (bot - top) * fy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::example_rng;

    fn run(img: &[f32], shape: Shape, ts: &[Transform], seed: u64) -> (Vec<f32>, Shape) {
        let mut a = img.to_vec();
        let mut b = Vec::new();
        let mut rng = example_rng(seed, 0, 0);
        let s = apply_pipeline(&mut a, &mut b, shape, ts, Some(&mut rng));
        (a, s)
    }

    #[test]
    fn pad_is_centered() {
        let (out, s) = run(
            &[1.0; 4],
            (1, 2, 2),
            &[Transform::Pad { to_h: 4, to_w: 5 }],
            0,
        );
        assert_eq!(s, (1, 4, 5));
        #[rustfmt::skip]
        assert_eq!(out, vec![
            0., 0., 0., 0., 0.,
            0., 1., 1., 0., 0.,
            0., 1., 1., 0., 0.,
            0., 0., 0., 0., 0.,
        ]);
    }

    #[test]
    fn shift_moves_content() {
        let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut dst = vec![0.0; 9];
        shift(&src, &mut dst, (1, 3, 3), 1, -1);
        assert_eq!(dst, vec![0., 4., 5., 0., 7., 8., 0., 0., 0.]);
        let mut dst = vec![0.0; 9];
        shift(&src, &mut dst, (1, 3, 3), 0, 5);
        assert_eq!(dst, vec![0.0; 9]);
    }

    #[test]
    fn pad_crop_keeps_pixels_or_zero() {
        let img: Vec<f32> = (1..=16).map(|v| v as f32).collect();
        for seed in 0..20 {
            let (out, s) = run(&img, (1, 4, 4), &[Transform::PadCrop { pad: 2 }], seed);
            assert_eq!(s, (1, 4, 4));
            assert!(out.iter().all(|v| *v == 0.0 || img.contains(v)));
        }
    }

    #[test]
    fn resize_identity_and_constant() {
        let img: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let (out, _) = run(&img, (1, 3, 4), &[Transform::Resize { h: 3, w: 4 }], 0);
        assert_eq!(out, img);
        let (out, s) = run(&[5.0; 6], (1, 2, 3), &[Transform::Resize { h: 7, w: 2 }], 0);
        assert_eq!(s, (1, 7, 2));
        assert!(out.iter().all(|v| (*v - 5.0).abs() < 1e-6));
        let (out, _) = run(
            &[0.0, 10.0],
            (1, 1, 2),
            &[Transform::Resize { h: 1, w: 4 }],
            0,
        );
        assert_eq!(out, vec![0.0, 2.5, 7.5, 10.0]);
    }

    #[test]
    fn shape_errors() {
        assert!(Transform::GreyToRgb.output_shape((2, 4, 4)).is_err());
        assert!(Transform::PadCrop { pad: usize::MAX }
            .output_shape((1, 4, 4))
            .is_err());
        assert!(pipeline_shape(
            (3, 4, 4),
            &[Transform::Pad {
                to_h: usize::MAX,
                to_w: usize::MAX
            }]
        )
        .is_err());
        assert!(Transform::Pad { to_h: 3, to_w: 8 }
            .output_shape((1, 4, 4))
            .is_err());
        assert!(Transform::Resize { h: 0, w: 3 }
            .output_shape((1, 4, 4))
            .is_err());
        assert!(Normalize::imagenet().validate(1).is_err());
        assert!(Normalize::imagenet().validate(3).is_ok());
        assert!(Normalize::unit().validate(7).is_ok());
        let bad = Normalize {
            std: vec![0.0],
            ..Normalize::unit()
        };
        assert!(bad.validate(1).is_err());
    }
}
