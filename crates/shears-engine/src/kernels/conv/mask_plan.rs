//! Unpadded channel-major planes with per-tap masks: the transposed products of same-size
//! stride-1 convs on maps of at most 32x32.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::kernels::gemm::{fast_segs, sgemm_masked_rhs, MatRef};

use super::epilogue::{residual_row, BlockEnd};
use super::ConvGeom;

/// The transposed products of a stride-1 conv whose output has its input's size, over
/// *unpadded* channel-major planes: each kernel tap is the planes shifted by a fixed offset,
/// and a per-(tap, 16-pixel vector) mask drops the pixels whose tap falls outside the image
/// (those lanes are never read). Unlike the padded planes of [`ShiftPlan`] no padding column
/// is computed and no margin is zeroed.
pub(super) struct MaskPlan {
    /// Pixels per plane (`h * w`).
    pub(super) npix: usize,
    /// Floats from one plane to the next, in the input planes and the result: `npix`, plus
    /// 16 where the planes would otherwise lie a multiple of 1 KiB apart (all at the same
    /// cache-set offset, which costs 10% on 32x32 maps).
    pub(super) stride: usize,
    /// Floats before the first plane, so that every tap's offset is non-negative.
    pub(super) lead: usize,
    /// Floats after the last plane that a tap's view may reach (never read).
    pub(super) trail: usize,
    /// Per tap: the offset of its view, `lead + dy * w + dx`, and the input channels it
    /// reduces over (the segments of the product).
    pub(super) segs: Vec<(usize, usize)>,
    /// Per tap and 16-pixel vector: the pixels whose tap lies inside the image.
    pub(super) masks: Vec<u16>,
}

impl MaskPlan {
    /// Whether `g`'s transposed forward runs with masked planes: one group, stride 1, output
    /// the size of the input, maps of at most 32x32, AVX-512. Measured on this engine's
    /// kernels (`examples/conv_im2col.rs`, one thread, 2026-11-30): masked planes are 7-13%
    /// faster than padded ones on 16x16 maps (23>23: 46.1 against 43.2 GMAC/s), equal or up
    /// to 3% faster on 32x32 (11>11: 39.8 against 39.2), 19-27% faster on 8x8, and slower on
    /// larger maps (11>11 on 64x64: 35.0 against 41.4; 24>20 on 56x56: 45.2 against 48.1).
    pub(super) fn fits(g: &ConvGeom) -> bool {
        g.groups == 1
            && g.stride == [1, 1]
            && (g.oh, g.ow) == (g.h, g.w)
            && g.h * g.w <= 1024
            && fast_segs()
    }

    pub(super) fn new(g: &ConvGeom) -> Self {
        let npix = g.h * g.w;
        let nvec = npix.div_ceil(16);
        let shift = |t: usize, d: usize| {
            let (k, dil, pad) = if d == 0 {
                (t / g.kw, g.dil[0], g.pad[0])
            } else {
                (t % g.kw, g.dil[1], g.pad[1])
            };
            (k * dil) as isize - pad as isize
        };
        let taps: Vec<isize> = (0..g.kk())
            .map(|t| shift(t, 0) * g.w as isize + shift(t, 1))
            .collect();
        let lead = taps.iter().map(|&o| (-o).max(0)).max().unwrap_or(0) as usize;
        let trail = taps.iter().map(|&o| o.max(0)).max().unwrap_or(0) as usize + 16;
        let mut masks = vec![0u16; g.kk() * nvec];
        for t in 0..g.kk() {
            let (dy, dx) = (shift(t, 0), shift(t, 1));
            for p in 0..npix {
                let (iy, ix) = ((p / g.w) as isize + dy, (p % g.w) as isize + dx);
                if iy >= 0 && iy < g.h as isize && ix >= 0 && ix < g.w as isize {
                    masks[t * nvec + p / 16] |= 1 << (p % 16);
                }
            }
        }
        MaskPlan {
            npix,
            stride: if npix.is_multiple_of(256) {
                npix + 16
            } else {
                npix
            },
            lead,
            trail,
            segs: taps
                .iter()
                .map(|&o| ((lead as isize + o) as usize, g.c_in))
                .collect(),
            masks,
        }
    }

    /// Whether `other` lays its planes out as this plan does and reads them with the same
    /// taps (the channel counts of the two convs aside).
    pub(super) fn same_layout(&self, other: &MaskPlan) -> bool {
        let offsets = |p: &MaskPlan| p.segs.iter().map(|s| s.0).collect::<Vec<_>>();
        (self.npix, self.stride, self.lead, self.trail)
            == (other.npix, other.stride, other.lead, other.trail)
            && self.masks == other.masks
            && offsets(self) == offsets(other)
    }

    /// Floats of the planes buffer for `c` channels.
    pub(super) fn len(&self, c: usize) -> usize {
        self.lead + c * self.stride + self.trail
    }

    /// `d[co][p] = sum over taps and input channels` from the planes `p` (filled at
    /// [`Self::lead`]) with the packed forward weight `w`.
    pub(super) fn products(&self, g: &ConvGeom, p: &[f32], w: &[f32], d: &mut [f32]) {
        sgemm_masked_rhs(
            g.c_out,
            self.npix,
            d,
            self.stride,
            MatRef::cols(w, 0, g.c_out),
            &self.segs,
            &self.masks,
            MatRef::rows(&p[..self.len(g.c_in)], 0, self.stride),
        );
    }

    /// Writes the result `d` (`c` planes [`Self::stride`] apart) as this plan's input planes
    /// `dst` ([`Self::len`] floats), each pixel summed as `end` says: the hand-over between
    /// two chained residual blocks. The floats around the planes are left as they are (the
    /// masks never read them).
    pub(super) fn store_planes(&self, d: &[f32], c: usize, end: BlockEnd<'_>, dst: &mut [f32]) {
        let BlockEnd {
            bias,
            residual: r,
            stride: r_stride,
            relu,
        } = end;
        let n = self.npix;
        let planes = &mut dst[self.lead..self.lead + c * self.stride];
        for (ci, out) in planes.chunks_exact_mut(self.stride).enumerate() {
            let b = bias.map_or(0.0, |b| b[ci]);
            let (s, rr) = (&d[ci * self.stride..][..n], &r[ci * r_stride..][..n]);
            residual_row(&mut out[..n], s, rr, b, relu);
        }
    }

    /// Floats of the result of `c` output channels (planes [`Self::stride`] apart).
    pub(super) fn out_len(&self, c: usize) -> usize {
        c * self.stride
    }
}

/// The [`MaskPlan`] of `g`, built once per geometry and shared (building one walks every
/// pixel and tap, which at batch 1 costs as much as a small conv).
pub(super) fn mask_plan(g: &ConvGeom) -> Arc<MaskPlan> {
    type Key = (usize, usize, usize, usize, usize, [usize; 4], [usize; 2]);
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<MaskPlan>>>> = OnceLock::new();
    let key = (g.c_in, g.h, g.w, g.kh, g.kw, g.pad, g.dil);
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if cache.len() > 1024 {
        cache.clear();
    }
    Arc::clone(
        cache
            .entry(key)
            .or_insert_with(|| Arc::new(MaskPlan::new(g))),
    )
}
