//! 2-D convolution on NHWC activations: forward, backward data and backward weight.
//!
//! The algorithms, chosen from the geometry alone ([`ConvGeom::algo`]):
//! - **shifted GEMMs** (stride 1, any kernel and dilation, enough channels): the input image is
//!   copied into a zero-padded buffer once, then every kernel offset `(kh, kw)` adds
//!   `Xpad[shifted rows, ci] x W[kh, kw][ci, co]` to the output. The output is computed over the
//!   *padded* width so that one shifted view is a plain strided matrix (no im2col copy); the
//!   extra columns are dropped when the result is stored (where bias and ReLU are applied).
//!   With AVX-512 the kernel rows of a merged product are segments of one reduction computed
//!   one output row at a time straight into the destination (no staging buffer, one write).
//!   Backward data is the same routine with the offsets negated and `W^T`; backward weight
//!   multiplies the shifted views transposed with `dY` spread over the padded width.
//! - **im2col** in blocks of output pixels (small maps, strided convs, very few input channels),
//!   laid out tap-major so that at stride 1 each (tap, output row) is one contiguous copy, and
//!   multiplied as the segments of one reduction (forward; the backward passes use the
//!   pixel-major layout).
//!   Same-size stride-1 convs on 8x8 maps (AVX-512) run their forward pass transposed over
//!   unpadded channel-major planes instead (`MaskPlan`): each tap is a shifted view and a
//!   per-(tap, 16-pixel vector) mask stands in for the padding.
//! - **transposed shifted products** ([`ConvAlgo::ShiftedT`], forward only) where a ragged
//!   output-channel count would leave vector lanes idle: pixels in the lanes, over masked
//!   unpadded planes on maps up to 32x32 and zero-padded planes above. [`forward_chain`] runs a
//!   conv pair (a residual block with its shortcut: [`forward_add`]'s sum in the epilogue)
//!   without leaving that layout, and hands planes on to the next block.
//! - **direct loops** for grouped convs with tiny groups (depthwise).
//!
//! Work is split over images (rayon); each product runs single-threaded. Weight gradients are
//! summed per fixed chunk of images and the chunks reduced in order, so results do not depend
//! on the thread count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;
use shears_ir::Conv2d;

use super::gemm::{
    fast_segs, sgemm, sgemm_masked_rhs, sgemm_segs, sgemm_segs_rhs, MatRef, PASS_STEPS,
};
use super::par::{chunk_len, reduce_partials};
use super::scratch::with_scratch;
use super::transpose::{planes_to_rows, rows_to_planes};

/// Geometry of one 2-D convolution, per image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]`.
    pub pad: [usize; 4],
    /// Dilation `[dh, dw]`.
    pub dil: [usize; 2],
    /// Groups.
    pub groups: usize,
    /// The algorithm the kernels run; [`ConvGeom::new`] picks it with
    /// [`ConvGeom::default_algo`], [`ConvGeom::with_algo`] overrides it.
    pub algo: ConvAlgo,
}

/// Which algorithm a convolution runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgo {
    /// `kh * kw` shifted GEMMs over a padded buffer (stride 1).
    Shifted,
    /// The same shifted GEMMs transposed (one group, stride 1): output channels as rows and
    /// pixels as the vectorised columns, over a channel-major copy of the padded input. Used
    /// for the forward pass when the channel count would leave vector lanes idle (pruned
    /// layers: 11 of 16 channels); backward passes run as [`ConvAlgo::Shifted`].
    ShiftedT,
    /// im2col in blocks of output pixels, one GEMM per block and group.
    Im2col,
    /// Plain loops (grouped convs with tiny groups, e.g. depthwise).
    Direct,
}

/// Convolution weights in the kernels' layout.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedConv {
    /// `[groups][kh * kw][c_in / groups][c_out / groups]`.
    pub(crate) w: Vec<f32>,
    /// `[groups][kh][kw (reversed)][c_out / groups][c_in / groups]` (for backward data, whose
    /// kernel taps run right to left over the source).
    pub(crate) wt: Vec<f32>,
    /// `[groups][c_out / groups][kh * kw][c_in / groups]`: the transpose of `w` per group (for
    /// im2col backward data, so that its product reads contiguous rows).
    pub(crate) wc: Vec<f32>,
}

impl ConvAlgo {
    /// Shifted products, plain or transposed.
    pub fn is_shifted(self) -> bool {
        matches!(self, ConvAlgo::Shifted | ConvAlgo::ShiftedT)
    }
}

impl ConvGeom {
    /// The geometry of `conv` applied to an `h` x `w` input, or `None` if the kernel does not fit.
    pub fn new(conv: &Conv2d, h: usize, w: usize) -> Option<Self> {
        let (oh, ow) = conv.output_hw(h, w)?;
        Some(ConvGeom {
            c_in: conv.in_channels,
            c_out: conv.out_channels,
            h,
            w,
            oh,
            ow,
            kh: conv.kernel[0],
            kw: conv.kernel[1],
            stride: conv.stride,
            pad: conv.padding,
            dil: conv.dilation,
            groups: conv.groups,
            algo: ConvAlgo::Direct,
        })
        .map(|mut g: ConvGeom| {
            g.algo = g.default_algo();
            g
        })
    }

    /// Runs with `algo` instead, if it supports this geometry (shifted GEMMs need stride 1).
    pub fn with_algo(mut self, algo: ConvAlgo) -> Option<Self> {
        if algo.is_shifted() && self.stride != [1, 1] {
            return None;
        }
        if algo == ConvAlgo::ShiftedT && self.groups != 1 {
            return None;
        }
        self.algo = algo;
        Some(self)
    }

    /// Input channels per group.
    pub fn cig(&self) -> usize {
        self.c_in / self.groups
    }

    /// Output channels per group.
    pub fn cog(&self) -> usize {
        self.c_out / self.groups
    }

    /// Kernel offsets `kh * kw`.
    pub fn kk(&self) -> usize {
        self.kh * self.kw
    }

    /// Elements of one input image.
    pub fn in_len(&self) -> usize {
        self.h * self.w * self.c_in
    }

    /// Elements of one output image.
    pub fn out_len(&self) -> usize {
        self.oh * self.ow * self.c_out
    }

    /// Elements of the weight.
    pub fn weight_len(&self) -> usize {
        self.c_out * self.cig() * self.kk()
    }

    /// The algorithm that suits this geometry best.
    pub fn default_algo(&self) -> ConvAlgo {
        let mergeable = self.groups == 1 && self.dil[1] == 1;
        if self.groups > 1 && (self.cig() < 4 || self.cog() < 4) {
            ConvAlgo::Direct
        } else if self.stride == [1, 1] && self.oh * self.ow > 100 && (mergeable || self.cig() >= 8)
        {
            // Small maps (8x8 and below) do not run the padded shifted products: their padded
            // width and short reductions cost more than the copy of im2col there.
            if self.groups == 1 && fast_segs() && self.prefer_transposed() {
                ConvAlgo::ShiftedT
            } else {
                ConvAlgo::Shifted
            }
        } else if MaskPlan::fits(self) && self.oh * self.ow >= 64 && self.c_in >= 8 {
            // 8x8 maps: the transposed products over masked planes (pixels in the lanes)
            // match im2col at full lanes and beat it by up to 20% at ragged channel counts
            // (`examples/conv_im2col.rs`); backward passes still run as im2col.
            ConvAlgo::ShiftedT
        } else {
            ConvAlgo::Im2col
        }
    }

    /// Whether the transposed shifted products ([`ConvAlgo::ShiftedT`]) use the vector lanes
    /// better than the plain ones: those vectorise over output channels in 16-lane vectors
    /// (a ragged count leaves lanes idle), the transposed ones over the padded output width
    /// (the padding columns are computed and dropped) and pay two layout copies, which only
    /// pay off with at least 8 input channels.
    fn prefer_transposed(&self) -> bool {
        // With few input channels (a stem conv) the layout copies cost more than the lanes save.
        if self.c_in < 8 {
            return false;
        }
        let lanes = self.c_out.div_ceil(16) * 16;
        let plain = self.c_out as f64 / lanes as f64;
        if MaskPlan::fits(self) {
            // Masked planes compute no padding column: measured (examples/conv_algos, one
            // thread), the transposed products win up to about 7 of 8 lanes in use (16x16,
            // 24 in: 28 of 32 channels 6% faster, 32 of 32 4% slower; 32x32, 16 in: 13 of 16
            // 4% faster, 15 of 16 8% slower).
            return plain < 0.88;
        }
        let wp = self.ow + (self.kw - 1) * self.dil[1];
        // Measured (examples/conv_algos): the transposed products lose about the padding
        // share twice over (computed columns, and layout copies that grow as the map shrinks):
        // break-even near 14 of 16 channels on 32x32 maps and 23 of 32 on 16x16.
        let transposed = (self.ow as f64 / wp as f64).powi(2);
        transposed * 0.95 > plain
    }

    /// Index of weight element `(o, i, y, x)` in PyTorch's OIHW layout.
    fn oihw(&self, o: usize, i: usize, y: usize, x: usize) -> usize {
        ((o * self.cig() + i) * self.kh + y) * self.kw + x
    }

    /// Index of weight element (group, offset, ci, co) in the packed layout.
    fn packed(&self, g: usize, k: usize, ci: usize, co: usize) -> usize {
        ((g * self.kk() + k) * self.cig() + ci) * self.cog() + co
    }
}

/// Packs an OIHW weight into the kernels' layout.
pub fn pack_weight(g: &ConvGeom, oihw: &[f32]) -> PackedConv {
    assert_eq!(
        oihw.len(),
        g.weight_len(),
        "conv weight length checked by the network"
    );
    let (cig, cog, kk) = (g.cig(), g.cog(), g.kk());
    let mut w = vec![0.0; oihw.len()];
    let mut wt = vec![0.0; oihw.len()];
    let mut wc = vec![0.0; oihw.len()];
    for gi in 0..g.groups {
        for k in 0..kk {
            let (y, x) = (k / g.kw, k % g.kw);
            for ci in 0..cig {
                for co in 0..cog {
                    let v = oihw[g.oihw(gi * cog + co, ci, y, x)];
                    w[g.packed(gi, k, ci, co)] = v;
                    let kr = y * g.kw + (g.kw - 1 - x);
                    wt[((gi * kk + kr) * cog + co) * cig + ci] = v;
                    wc[((gi * cog + co) * kk + k) * cig + ci] = v;
                }
            }
        }
    }
    PackedConv { w, wt, wc }
}

/// Converts a weight (or weight gradient) in the packed layout back to OIHW.
pub fn unpack_weight(g: &ConvGeom, packed: &[f32], oihw: &mut [f32]) {
    assert_eq!(packed.len(), g.weight_len(), "packed conv weight length");
    assert_eq!(oihw.len(), g.weight_len(), "oihw conv weight length");
    let (cig, cog, kk) = (g.cig(), g.cog(), g.kk());
    for gi in 0..g.groups {
        for k in 0..kk {
            let (y, x) = (k / g.kw, k % g.kw);
            for ci in 0..cig {
                for co in 0..cog {
                    oihw[g.oihw(gi * cog + co, ci, y, x)] = packed[g.packed(gi, k, ci, co)];
                }
            }
        }
    }
}

/// How a stride-1 correlation `D[h, w] += sum_k S[h + a_k, w + b_k] * M_k` is laid out over a
/// zero-padded copy `P` of the source, computed over `hd` rows of the padded width `wp`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ShiftPlan {
    hs: usize,
    ws: usize,
    hd: usize,
    wd: usize,
    /// Padding of the source inside `P` (top, left).
    pt: usize,
    pl: usize,
    /// Row length of `P` and of the output over the padded width.
    wp: usize,
    /// Pixels in `P`, slack included, so every shifted view stays in bounds.
    plen: usize,
    /// Flat pixel offset of each kernel offset's view.
    offs: Vec<usize>,
    /// The source can be used as `P` directly (no padding needed).
    direct_src: bool,
    /// The output over the padded width is the output itself (`wp == wd`).
    direct_dst: bool,
}

impl ShiftPlan {
    fn new(hs: usize, ws: usize, hd: usize, wd: usize, a: &[isize], b: &[isize]) -> Self {
        let min_a = *a.iter().min().expect("kernel has at least one offset");
        let max_a = *a.iter().max().expect("kernel has at least one offset");
        let min_b = *b.iter().min().expect("kernel has at least one offset");
        let max_b = *b.iter().max().expect("kernel has at least one offset");
        let pt = (-min_a).max(0) as usize;
        let pl = (-min_b).max(0) as usize;
        let wp = (ws + pl).max((wd as isize + max_b + pl as isize).max(0) as usize);
        let hp = (hs + pt).max((hd as isize + max_a + pt as isize).max(0) as usize);
        let offs: Vec<usize> = a
            .iter()
            .zip(b)
            .map(|(&ai, &bi)| ((ai + pt as isize) as usize) * wp + (bi + pl as isize) as usize)
            .collect();
        let max_off = *offs.iter().max().expect("kernel has at least one offset");
        let plen = (hp * wp).max(hd * wp + max_off);
        let direct_src = pt == 0 && pl == 0 && wp == ws && plen <= hs * ws;
        ShiftPlan {
            hs,
            ws,
            hd,
            wd,
            pt,
            pl,
            wp,
            plen,
            offs,
            direct_src,
            direct_dst: wp == wd,
        }
    }

    /// Plan of the forward pass (and backward weight) of a stride-1 conv.
    fn forward(g: &ConvGeom) -> Self {
        let (a, b) = offsets(
            g,
            |k| (k / g.kw) as isize * g.dil[0] as isize - g.pad[0] as isize,
            |k| (k % g.kw) as isize * g.dil[1] as isize - g.pad[1] as isize,
        );
        ShiftPlan::new(g.h, g.w, g.oh, g.ow, &a, &b)
    }

    /// Plan of backward data of a stride-1 conv (source `dY`, destination `dX`).
    fn backward_data(g: &ConvGeom) -> Self {
        let (a, b) = offsets(
            g,
            |k| g.pad[0] as isize - (k / g.kw) as isize * g.dil[0] as isize,
            |k| g.pad[1] as isize - (k % g.kw) as isize * g.dil[1] as isize,
        );
        ShiftPlan::new(g.oh, g.ow, g.h, g.w, &a, &b)
    }

    /// Rows of the output over the padded width.
    fn m(&self) -> usize {
        self.hd * self.wp
    }

    /// Copies `src` (`hs x ws x c`) into the zero-padded buffer `p`.
    fn fill(&self, src: &[f32], c: usize, p: &mut [f32]) {
        let p = &mut p[..self.plen * c];
        let row = self.ws * c;
        // Zero only what the copies leave: the top rows, each row's margins, the bottom slack.
        let mut z = 0;
        for y in 0..self.hs {
            let d = ((y + self.pt) * self.wp + self.pl) * c;
            p[z..d].fill(0.0);
            p[d..d + row].copy_from_slice(&src[y * row..(y + 1) * row]);
            z = d + row;
        }
        p[z..].fill(0.0);
    }

    /// Copies `src` (`hs x ws x c`, channels last) into `p` as `c` zero-padded planes of
    /// `plen` pixels each (channel-major), for the transposed products.
    fn fill_channel_major(&self, src: &[f32], c: usize, p: &mut [f32]) {
        let p = &mut p[..self.plen * c];
        // One memset is cheaper than zeroing each row's margins apart.
        p.fill(0.0);
        for y in 0..self.hs {
            let row = &src[y * self.ws * c..(y + 1) * self.ws * c];
            let off = (y + self.pt) * self.wp + self.pl;
            rows_to_planes(row, c, self.ws, p, off, self.plen);
        }
    }

    /// Fills this plan's channel-major padded planes `p` from another plan's channel-major
    /// result `d` (its [`Self::m`] pixels per channel over its padded width), adding `bias`
    /// and applying ReLU on the way: the hand-over between two chained transposed convs.
    fn fill_from_planes(&self, d: &[f32], from: &ShiftPlan, bias: &[f32], p: &mut [f32]) {
        let c = bias.len();
        let m = from.m();
        assert_eq!((from.hd, from.wd), (self.hs, self.ws), "chained maps agree");
        let p = &mut p[..self.plen * c];
        // One memset is cheaper than zeroing each row's margins apart.
        p.fill(0.0);
        for ((plane, src), &b) in p
            .chunks_exact_mut(self.plen)
            .zip(d.chunks_exact(m))
            .zip(bias)
        {
            for y in 0..self.hs {
                let o = (y + self.pt) * self.wp + self.pl;
                let s = &src[y * from.wp..y * from.wp + self.ws];
                for (o, v) in plane[o..o + self.ws].iter_mut().zip(s) {
                    *o = (v + b).max(0.0);
                }
            }
        }
    }

    /// Stores the valid columns of the channel-major result `d` (`c` rows of [`Self::m`]
    /// pixels over the padded width) into `dst` (`hd x wd x c`, channels last), adding `bias`
    /// and applying ReLU.
    fn store_channel_major(&self, d: &[f32], c: usize, dst: &mut [f32], ep: Epilogue<'_>) {
        assert!(!ep.accumulate, "channel-major store overwrites");
        let row = self.wd * c;
        for y in 0..self.hd {
            planes_to_rows(
                d,
                y * self.wp,
                self.m(),
                c,
                self.wd,
                &mut dst[y * row..(y + 1) * row],
                ep.bias,
                ep.residual.map(|r| &r[y * row..(y + 1) * row]),
                ep.relu,
            );
        }
    }

    /// Writes the channel-major result `d` (`c` rows of [`Self::m`] pixels over the padded
    /// width) as this plan's zero-padded planes `dst` (`c` planes of `plen`), each valid pixel
    /// summed as `end` says (its residual planes from pixel `(0, 0)` on, rows `wp` apart): the
    /// hand-over between two chained residual blocks. Needs a same-size plan (`hd x wd` is
    /// `hs x ws`).
    fn store_planes(&self, d: &[f32], c: usize, end: BlockEnd<'_>, dst: &mut [f32]) {
        let BlockEnd {
            bias,
            residual: r,
            stride: r_stride,
            relu,
        } = end;
        assert_eq!((self.hd, self.wd), (self.hs, self.ws), "same-size plan");
        let m = self.m();
        let origin = self.pt * self.wp + self.pl;
        for (ci, plane) in dst[..c * self.plen].chunks_exact_mut(self.plen).enumerate() {
            let b = bias.map_or(0.0, |b| b[ci]);
            let src = &d[ci * m..(ci + 1) * m];
            let res = &r[ci * r_stride..];
            plane[..origin].fill(0.0);
            for y in 0..self.hd {
                let o = origin + y * self.wp;
                let (s, rr) = (
                    &src[y * self.wp..][..self.wd],
                    &res[y * self.wp..][..self.wd],
                );
                residual_row(&mut plane[o..o + self.wd], s, rr, b, relu);
                // The margin to the next row's first pixel (or to the end of the plane).
                let next = (o + self.wp).min(self.plen);
                plane[o + self.wd..next].fill(0.0);
            }
            let tail = origin + self.hd * self.wp;
            if tail < self.plen {
                plane[tail..].fill(0.0);
            }
        }
    }

    /// Spreads `src` (`hd x wd x c`) over the padded width with zero extra columns.
    fn spread(&self, src: &[f32], c: usize, d: &mut [f32]) {
        let d = &mut d[..self.m() * c];
        let row = self.wd * c;
        for y in 0..self.hd {
            let o = y * self.wp * c;
            d[o..o + row].copy_from_slice(&src[y * row..(y + 1) * row]);
            d[o + row..o + self.wp * c].fill(0.0);
        }
    }

    /// Stores the valid columns of `d` (over the padded width) into `dst`, adding `bias`,
    /// applying ReLU, or accumulating.
    fn store(&self, d: &[f32], c: usize, dst: &mut [f32], ep: Epilogue<'_>) {
        let row = self.wd * c;
        for y in 0..self.hd {
            let s = &d[y * self.wp * c..y * self.wp * c + row];
            ep.part(y * row, (y + 1) * row)
                .store(s, &mut dst[y * row..(y + 1) * row], c);
        }
    }
}

/// The transposed products of a stride-1 conv whose output has its input's size, over
/// *unpadded* channel-major planes: each kernel tap is the planes shifted by a fixed offset,
/// and a per-(tap, 16-pixel vector) mask drops the pixels whose tap falls outside the image
/// (those lanes are never read). Unlike the padded planes of [`ShiftPlan`] no padding column
/// is computed and no margin is zeroed.
struct MaskPlan {
    /// Pixels per plane (`h * w`).
    npix: usize,
    /// Floats from one plane to the next, in the input planes and the result: `npix`, plus
    /// 16 where the planes would otherwise lie a multiple of 1 KiB apart (all at the same
    /// cache-set offset, which costs 10% on 32x32 maps).
    stride: usize,
    /// Floats before the first plane, so that every tap's offset is non-negative.
    lead: usize,
    /// Floats after the last plane that a tap's view may reach (never read).
    trail: usize,
    /// Per tap: the offset of its view, `lead + dy * w + dx`, and the input channels it
    /// reduces over (the segments of the product).
    segs: Vec<(usize, usize)>,
    /// Per tap and 16-pixel vector: the pixels whose tap lies inside the image.
    masks: Vec<u16>,
}

impl MaskPlan {
    /// Whether `g`'s transposed forward runs with masked planes: one group, stride 1, output
    /// the size of the input, maps of at most 32x32, AVX-512. Measured on this engine's
    /// kernels (`examples/conv_im2col.rs`, one thread, 2026-11-30): masked planes are 7-13%
    /// faster than padded ones on 16x16 maps (23>23: 46.1 against 43.2 GMAC/s), equal or up
    /// to 3% faster on 32x32 (11>11: 39.8 against 39.2), 19-27% faster on 8x8, and slower on
    /// larger maps (11>11 on 64x64: 35.0 against 41.4; 24>20 on 56x56: 45.2 against 48.1).
    fn fits(g: &ConvGeom) -> bool {
        g.groups == 1
            && g.stride == [1, 1]
            && (g.oh, g.ow) == (g.h, g.w)
            && g.h * g.w <= 1024
            && fast_segs()
    }

    fn new(g: &ConvGeom) -> Self {
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
    fn same_layout(&self, other: &MaskPlan) -> bool {
        let offsets = |p: &MaskPlan| p.segs.iter().map(|s| s.0).collect::<Vec<_>>();
        (self.npix, self.stride, self.lead, self.trail)
            == (other.npix, other.stride, other.lead, other.trail)
            && self.masks == other.masks
            && offsets(self) == offsets(other)
    }

    /// Floats of the planes buffer for `c` channels.
    fn len(&self, c: usize) -> usize {
        self.lead + c * self.stride + self.trail
    }

    /// `d[co][p] = sum over taps and input channels` from the planes `p` (filled at
    /// [`Self::lead`]) with the packed forward weight `w`.
    fn products(&self, g: &ConvGeom, p: &[f32], w: &[f32], d: &mut [f32]) {
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
    fn store_planes(&self, d: &[f32], c: usize, end: BlockEnd<'_>, dst: &mut [f32]) {
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
    fn out_len(&self, c: usize) -> usize {
        c * self.stride
    }
}

/// The [`MaskPlan`] of `g`, built once per geometry and shared (building one walks every
/// pixel and tap, which at batch 1 costs as much as a small conv).
fn mask_plan(g: &ConvGeom) -> Arc<MaskPlan> {
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

fn offsets(
    g: &ConvGeom,
    fa: impl Fn(usize) -> isize,
    fb: impl Fn(usize) -> isize,
) -> (Vec<isize>, Vec<isize>) {
    (
        (0..g.kk()).map(&fa).collect(),
        (0..g.kk()).map(&fb).collect(),
    )
}

/// What happens to a result row when it is stored.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
    pub accumulate: bool,
    /// Added after the bias and before the ReLU, laid out like the destination (the end of a
    /// residual block: `f((conv + bias) + residual)`, the order of a separate add).
    pub residual: Option<&'a [f32]>,
}

impl<'a> Epilogue<'a> {
    const PLAIN: Epilogue<'static> = Epilogue {
        bias: None,
        relu: false,
        accumulate: false,
        residual: None,
    };

    fn is_plain(&self) -> bool {
        self.bias.is_none() && !self.relu && !self.accumulate && self.residual.is_none()
    }

    /// The epilogue of the destination's elements `from..to` (the residual sliced to them).
    fn part(&self, from: usize, to: usize) -> Epilogue<'a> {
        Epilogue {
            residual: self.residual.map(|r| &r[from..to]),
            ..*self
        }
    }

    /// `dst = f(src)` for rows of `c` channels.
    fn store(&self, src: &[f32], dst: &mut [f32], c: usize) {
        if let Some(res) = self.residual {
            assert!(!self.accumulate, "a residual epilogue overwrites");
            let zero = vec![0.0f32; if self.bias.is_none() { c } else { 0 }];
            let bias = match self.bias {
                Some(b) => &b[..c],
                None => &zero[..c],
            };
            for ((dr, sr), rr) in dst
                .chunks_exact_mut(c)
                .zip(src.chunks_exact(c))
                .zip(res.chunks_exact(c))
            {
                let (dr, sr, rr) = (&mut dr[..c], &sr[..c], &rr[..c]);
                if self.relu {
                    (0..c).for_each(|j| dr[j] = ((sr[j] + bias[j]) + rr[j]).max(0.0));
                } else {
                    (0..c).for_each(|j| dr[j] = (sr[j] + bias[j]) + rr[j]);
                }
            }
            return;
        }
        if self.bias.is_none() && !self.relu {
            if self.accumulate {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s);
            } else {
                dst.copy_from_slice(src);
            }
            return;
        }
        let zero = vec![0.0f32; if self.bias.is_none() { c } else { 0 }];
        // Slicing every row to `c` lets the compiler drop bounds checks and vectorise.
        let bias = match self.bias {
            Some(b) => &b[..c],
            None => &zero[..c],
        };
        for (dr, sr) in dst.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
            let (dr, sr) = (&mut dr[..c], &sr[..c]);
            match (self.relu, self.accumulate) {
                (true, false) => (0..c).for_each(|j| dr[j] = (sr[j] + bias[j]).max(0.0)),
                (false, false) => (0..c).for_each(|j| dr[j] = sr[j] + bias[j]),
                (true, true) => (0..c).for_each(|j| dr[j] += (sr[j] + bias[j]).max(0.0)),
                (false, true) => (0..c).for_each(|j| dr[j] += sr[j] + bias[j]),
            }
        }
    }

    /// Applies bias, residual and ReLU in place.
    fn in_place(&self, y: &mut [f32], c: usize) {
        assert!(!self.accumulate, "in-place epilogue cannot accumulate");
        if let Some(res) = self.residual {
            let zero = vec![0.0f32; if self.bias.is_none() { c } else { 0 }];
            let bias = match self.bias {
                Some(b) => &b[..c],
                None => &zero[..c],
            };
            for (r, rr) in y.chunks_exact_mut(c).zip(res.chunks_exact(c)) {
                let (r, rr) = (&mut r[..c], &rr[..c]);
                if self.relu {
                    (0..c).for_each(|j| r[j] = ((r[j] + bias[j]) + rr[j]).max(0.0));
                } else {
                    (0..c).for_each(|j| r[j] = (r[j] + bias[j]) + rr[j]);
                }
            }
            return;
        }
        match (self.bias, self.relu) {
            (None, false) => {}
            (None, true) => y.iter_mut().for_each(|v| *v = v.max(0.0)),
            (Some(b), relu) => {
                let b = &b[..c];
                for r in y.chunks_exact_mut(c) {
                    let r = &mut r[..c];
                    if relu {
                        (0..c).for_each(|j| r[j] = (r[j] + b[j]).max(0.0));
                    } else {
                        (0..c).for_each(|j| r[j] += b[j]);
                    }
                }
            }
        }
    }
}

/// Output pixels per GEMM block: keeps the block of the output and of each shifted view in L2.
fn block_rows(c_in: usize, c_out: usize) -> usize {
    (32768 / c_in.max(c_out).max(1)).clamp(64, 4096)
}

/// Forward convolution of `n` NHWC images: `y = conv(x, w) (+ bias) (then ReLU)`.
pub fn forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &PackedConv,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    forward_add(g, n, x, w, bias, None, relu, y)
}

/// Forward convolution with a residual laid out like `y` added before the ReLU:
/// `y = f((conv(x, w) + bias) + residual)`, the end of a residual block in one pass, with the
/// sums of [`forward`] followed by a separate add.
#[allow(clippy::too_many_arguments)]
pub fn forward_add(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w: &PackedConv,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    assert_eq!(
        x.len(),
        n * g.in_len(),
        "conv input length checked by the network"
    );
    assert_eq!(
        y.len(),
        n * g.out_len(),
        "conv output length checked by the network"
    );
    if let Some(r) = residual {
        assert_eq!(r.len(), y.len(), "residual length checked by the network");
    }
    assert_eq!(w.w.len(), g.weight_len(), "packed conv weight length");
    if n == 0 {
        return;
    }
    let ep_all = Epilogue {
        bias,
        relu,
        accumulate: false,
        residual,
    };
    let out_len = g.out_len();
    // Image `i`'s epilogue: the residual sliced to its output.
    let ep_of = |i: usize| ep_all.part(i * out_len, (i + 1) * out_len);
    match g.algo {
        ConvAlgo::Shifted => {
            let plan = ShiftPlan::forward(g);
            let p_len = if plan.direct_src {
                0
            } else {
                plan.plen * g.c_in
            };
            let rows_direct = merge_rows(g) && fast_segs();
            let d_len = if plan.direct_dst || rows_direct {
                0
            } else {
                plan.m() * g.c_out
            };
            y.par_chunks_mut(g.out_len())
                .enumerate()
                .for_each(|(i, yi)| {
                    let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
                    let ep = ep_of(i);
                    with_scratch([p_len, d_len, 0], |p, d, _| {
                        let src: &[f32] = if plan.direct_src {
                            xi
                        } else {
                            plan.fill(xi, g.c_in, p);
                            p
                        };
                        if rows_direct {
                            shifted_rows(g, &plan, src, &w.w, Dir::Forward, yi, false);
                            ep.in_place(yi, g.c_out);
                        } else if plan.direct_dst {
                            shifted_products(g, &plan, src, &w.w, Dir::Forward, yi);
                            ep.in_place(yi, g.c_out);
                        } else {
                            shifted_products(g, &plan, src, &w.w, Dir::Forward, d);
                            plan.store(d, g.c_out, yi, ep);
                        }
                    });
                });
        }
        ConvAlgo::ShiftedT if MaskPlan::fits(g) => {
            let mp = mask_plan(g);
            y.par_chunks_mut(g.out_len())
                .enumerate()
                .for_each(|(i, yi)| {
                    let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
                    let ep = ep_of(i);
                    with_scratch([mp.len(g.c_in), mp.out_len(g.c_out), 0], |p, d, _| {
                        rows_to_planes(xi, g.c_in, mp.npix, p, mp.lead, mp.stride);
                        mp.products(g, p, &w.w, d);
                        planes_to_rows(
                            d,
                            0,
                            mp.stride,
                            g.c_out,
                            mp.npix,
                            yi,
                            ep.bias,
                            ep.residual,
                            ep.relu,
                        );
                    });
                });
        }
        ConvAlgo::ShiftedT => {
            let plan = ShiftPlan::forward(g);
            let segs = transposed_segs(g, &plan);
            let m = plan.m();
            y.par_chunks_mut(g.out_len())
                .enumerate()
                .for_each(|(i, yi)| {
                    let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
                    let ep = ep_of(i);
                    with_scratch([plan.plen * g.c_in, m * g.c_out, 0], |p, d, _| {
                        plan.fill_channel_major(xi, g.c_in, p);
                        transposed_products(g, &plan, &segs, p, &w.w, d);
                        plan.store_channel_major(d, g.c_out, yi, ep);
                    });
                });
        }
        ConvAlgo::Im2col => {
            let (nb, kkc) = im2col_block(g);
            y.par_chunks_mut(g.out_len())
                .enumerate()
                .for_each(|(i, yi)| {
                    let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
                    let ep = ep_of(i);
                    with_scratch([nb * kkc, 0, 0], |col, _, _| {
                        let npix = g.oh * g.ow;
                        let mut segs = Vec::new();
                        for p0 in (0..npix).step_by(nb) {
                            let m = nb.min(npix - p0);
                            for gi in 0..g.groups {
                                im2col_taps(g, xi, gi, p0, m, col);
                                taps_product(g, m, col, &w.w, gi, yi, p0, &mut segs);
                            }
                            let (a, b) = (p0 * g.c_out, (p0 + m) * g.c_out);
                            ep.part(a, b).in_place(&mut yi[a..b], g.c_out);
                        }
                    });
                });
        }
        ConvAlgo::Direct => {
            y.par_chunks_mut(g.out_len())
                .enumerate()
                .for_each(|(i, yi)| {
                    let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
                    let ep = ep_of(i);
                    direct_forward(g, xi, &w.w, yi);
                    ep.in_place(yi, g.c_out);
                });
        }
    }
}

/// Whether `g1`'s output can feed `g2` channel-major in [`forward_chain`]: both run as
/// [`ConvAlgo::ShiftedT`] and `g2` reads exactly the map `g1` writes.
pub fn chainable(g1: &ConvGeom, g2: &ConvGeom) -> bool {
    g1.algo == ConvAlgo::ShiftedT
        && g2.algo == ConvAlgo::ShiftedT
        && g2.c_in == g1.c_out
        && (g2.h, g2.w) == (g1.oh, g1.ow)
}

/// Whether a [`chainable`] pair can also add its own input to its output
/// ([`ChainIo::residual`], a residual block with an identity shortcut): the second conv
/// gives back the first one's input shape.
pub fn residual_chainable(g1: &ConvGeom, g2: &ConvGeom) -> bool {
    if !chainable(g1, g2) || g2.c_out != g1.c_in || (g2.oh, g2.ow) != (g1.h, g1.w) {
        return false;
    }
    if MaskPlan::fits(g1) && MaskPlan::fits(g2) {
        return true;
    }
    // The result over the padded width lines up with the input planes from pixel (0, 0) on.
    let (p1, p2) = (ShiftPlan::forward(g1), ShiftPlan::forward(g2));
    p1.wp == p2.wp && p1.pt * p1.wp + p1.pl + p2.m() <= p1.plen
}

/// The geometries a residual block's two convs run with as one chain with its shortcut
/// ([`ChainIo::residual`]), both transposed, where they can be (one group, stride 1,
/// same-size maps of at most 32x32, AVX-512), even where one conv alone would rather run
/// untransposed: measured (`examples/conv_pair.rs`, one thread, batch 16), the chained block
/// handing its planes on is as fast as the two convs apart at full lanes (16>16>16 on 32x32:
/// 1.471 against 1.481 ms; 32>32>32 on 16x16: 1.403 against 1.436) and 15-19% faster where
/// one conv is ragged (15>9>15 on 32x32: 0.798 against 0.939; 15>5>15: 0.492 against 0.609).
pub fn residual_pair(g1: &ConvGeom, g2: &ConvGeom) -> Option<(ConvGeom, ConvGeom)> {
    if !fast_segs() || !MaskPlan::fits(g1) || !MaskPlan::fits(g2) {
        return None;
    }
    let t1 = g1.clone().with_algo(ConvAlgo::ShiftedT)?;
    let t2 = g2.clone().with_algo(ConvAlgo::ShiftedT)?;
    residual_chainable(&t1, &t2).then_some((t1, t2))
}

/// How a chained pair ([`forward_chain`]) meets its neighbours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainIo {
    /// Add the chain's input `x` to the second conv's result (after its bias, before its
    /// ReLU): a residual block with an identity shortcut. Needs [`residual_chainable`].
    pub residual: bool,
    /// `x` arrives as the first conv's channel-major planes (zero-padded, or masked on maps of
    /// at most 32x32; [`chain_planes_len`] floats per image), written by a previous chain's
    /// `y_planes`.
    pub x_planes: bool,
    /// Write `y` as such planes for a following chain that reads them with `x_planes`
    /// ([`planes_link`]); only with `residual`.
    pub y_planes: bool,
}

/// Floats per image of the channel-major planes (zero-padded, or masked on maps that run
/// over masked planes) that a residual chain of `g1` and `g2` reads and writes with
/// [`ChainIo::x_planes`] and [`ChainIo::y_planes`], or `None` where it cannot (not
/// [`residual_chainable`], or its two convs would lay their planes out differently).
pub fn chain_planes_len(g1: &ConvGeom, g2: &ConvGeom) -> Option<usize> {
    if !residual_chainable(g1, g2) {
        return None;
    }
    match (MaskPlan::fits(g1), MaskPlan::fits(g2)) {
        (true, true) => {
            let (p1, p2) = (mask_plan(g1), mask_plan(g2));
            p1.same_layout(&p2).then_some(p1.len(g1.c_in))
        }
        (false, false) => {
            let (p1, p2) = (ShiftPlan::forward(g1), ShiftPlan::forward(g2));
            (p1 == p2).then_some(p1.plen * g1.c_in)
        }
        _ => None,
    }
}

/// Whether the planes a residual chain starting with `from` writes are the planes a residual
/// chain starting with `to` reads (same map, kernel, padding and channels, same kind of
/// planes).
pub fn planes_link(from: &ConvGeom, to: &ConvGeom) -> bool {
    if from.c_in != to.c_in {
        return false;
    }
    match (MaskPlan::fits(from), MaskPlan::fits(to)) {
        (true, true) => mask_plan(from).same_layout(&mask_plan(to)),
        (false, false) => ShiftPlan::forward(from) == ShiftPlan::forward(to),
        _ => false,
    }
}

/// Two convolutions in a row, `y = conv2(relu(conv1(x) + b1)) (+ b2) (+ x) (then ReLU)`,
/// where the middle map feeds nothing else: it stays channel-major between the two transposed
/// products (written straight into the second conv's padded planes, with the bias and ReLU),
/// so the two layout copies around it are skipped. With [`ChainIo::residual`] the input is
/// added before the final ReLU (the end of a residual block, no separate pass), and with
/// [`ChainIo::x_planes`] / [`ChainIo::y_planes`] consecutive blocks hand their maps over as
/// planes, skipping the layout copies around the blocks as well. Same sums, in the same
/// order, as [`forward`] calls and a separate add. Needs [`chainable`] geometries.
#[allow(clippy::too_many_arguments)]
pub fn forward_chain(
    g1: &ConvGeom,
    g2: &ConvGeom,
    n: usize,
    x: &[f32],
    w1: &PackedConv,
    b1: &[f32],
    w2: &PackedConv,
    b2: Option<&[f32]>,
    relu2: bool,
    io: ChainIo,
    y: &mut [f32],
) {
    assert!(
        chainable(g1, g2),
        "forward_chain needs chainable geometries"
    );
    assert!(
        !io.residual || residual_chainable(g1, g2),
        "a residual chain gives back its input's shape"
    );
    let planes = chain_planes_len(g1, g2);
    assert!(
        !(io.x_planes || io.y_planes) || (io.residual && planes.is_some()),
        "planes in or out need a residual chain whose convs share a planes layout"
    );
    let x_len = match (io.x_planes, planes) {
        (true, Some(l)) => l,
        _ => g1.in_len(),
    };
    let y_len = match (io.y_planes, planes) {
        (true, Some(l)) => l,
        _ => g2.out_len(),
    };
    assert_eq!(x.len(), n * x_len, "conv input length");
    assert_eq!(y.len(), n * y_len, "conv output length");
    assert_eq!(b1.len(), g1.c_out, "first bias length");
    assert_eq!(w1.w.len(), g1.weight_len(), "packed conv weight length");
    assert_eq!(w2.w.len(), g2.weight_len(), "packed conv weight length");
    if let Some(b) = b2 {
        assert_eq!(b.len(), g2.c_out, "second bias length");
    }
    if n == 0 {
        return;
    }
    if MaskPlan::fits(g1) && MaskPlan::fits(g2) {
        let (mp1, mp2) = (mask_plan(g1), mask_plan(g2));
        // Buffer A holds the first conv's planes, then the second's (in C for a residual
        // chain, which keeps its input for the sum at the end); B the first product, then the
        // second.
        let a_len = if io.x_planes { 0 } else { mp1.len(g1.c_in) };
        let a_len = if io.residual {
            a_len
        } else {
            a_len.max(mp2.len(g2.c_in))
        };
        let b_len = mp1.out_len(g1.c_out).max(mp2.out_len(g2.c_out));
        let c_len = if io.residual { mp2.len(g2.c_in) } else { 0 };
        // The middle map goes straight into the second conv's planes.
        let hand_over = |b: &[f32], mid: &mut [f32]| {
            let planes = &mut mid[mp2.lead..mp2.lead + mp2.stride * g2.c_in];
            for ((dst, src), &bias) in planes
                .chunks_exact_mut(mp2.stride)
                .zip(b.chunks_exact(mp1.stride))
                .zip(b1)
            {
                for (o, v) in dst[..mp2.npix].iter_mut().zip(&src[..mp1.npix]) {
                    *o = (v + bias).max(0.0);
                }
            }
        };
        y.par_chunks_mut(y_len).enumerate().for_each(|(i, yi)| {
            let xi = &x[i * x_len..(i + 1) * x_len];
            with_scratch([a_len, b_len, c_len], |a, b, c| {
                if !io.residual {
                    rows_to_planes(xi, g1.c_in, mp1.npix, a, mp1.lead, mp1.stride);
                    mp1.products(g1, a, &w1.w, b);
                    hand_over(b, a);
                    mp2.products(g2, a, &w2.w, b);
                    planes_to_rows(b, 0, mp2.stride, g2.c_out, mp2.npix, yi, b2, None, relu2);
                    return;
                }
                let p_in: &[f32] = if io.x_planes {
                    xi
                } else {
                    rows_to_planes(xi, g1.c_in, mp1.npix, a, mp1.lead, mp1.stride);
                    a
                };
                mp1.products(g1, p_in, &w1.w, b);
                hand_over(b, c);
                mp2.products(g2, c, &w2.w, b);
                let r = &p_in[mp1.lead..];
                let d = &mut b[..mp2.out_len(g2.c_out)];
                if io.y_planes {
                    let end = BlockEnd {
                        bias: b2,
                        residual: r,
                        stride: mp1.stride,
                        relu: relu2,
                    };
                    mp2.store_planes(d, g2.c_out, end, yi);
                } else {
                    add_bias_and(d, mp2.stride, mp2.npix, b2, r, mp1.stride);
                    planes_to_rows(d, 0, mp2.stride, g2.c_out, mp2.npix, yi, None, None, relu2);
                }
            });
        });
        return;
    }
    let (plan1, plan2) = (ShiftPlan::forward(g1), ShiftPlan::forward(g2));
    let (segs1, segs2) = (transposed_segs(g1, &plan1), transposed_segs(g2, &plan2));
    // Buffer A holds the first conv's planes, then the second's (in C for a residual chain,
    // which keeps its input for the sum at the end); B the first product, then the second.
    let a_len = if io.x_planes { 0 } else { plan1.plen * g1.c_in };
    let a_len = if io.residual {
        a_len
    } else {
        a_len.max(plan2.plen * g2.c_in)
    };
    let b_len = (plan1.m() * g1.c_out).max(plan2.m() * g2.c_out);
    let c_len = if io.residual { plan2.plen * g2.c_in } else { 0 };
    let ep = Epilogue {
        bias: b2,
        relu: relu2,
        accumulate: false,
        residual: None,
    };
    // Offset of pixel (0, 0) in the padded planes.
    let origin = plan1.pt * plan1.wp + plan1.pl;
    y.par_chunks_mut(y_len).enumerate().for_each(|(i, yi)| {
        let xi = &x[i * x_len..(i + 1) * x_len];
        with_scratch([a_len, b_len, c_len], |a, b, c| {
            if !io.residual {
                plan1.fill_channel_major(xi, g1.c_in, a);
                transposed_products(g1, &plan1, &segs1, a, &w1.w, b);
                plan2.fill_from_planes(&b[..plan1.m() * g1.c_out], &plan1, b1, a);
                transposed_products(g2, &plan2, &segs2, a, &w2.w, b);
                plan2.store_channel_major(b, g2.c_out, yi, ep);
                return;
            }
            let p_in: &[f32] = if io.x_planes {
                xi
            } else {
                plan1.fill_channel_major(xi, g1.c_in, a);
                a
            };
            transposed_products(g1, &plan1, &segs1, p_in, &w1.w, b);
            plan2.fill_from_planes(&b[..plan1.m() * g1.c_out], &plan1, b1, c);
            transposed_products(g2, &plan2, &segs2, c, &w2.w, b);
            let m = plan2.m();
            let d = &mut b[..m * g2.c_out];
            // The residual: the input planes from pixel (0, 0) on, rows `wp` apart like the
            // result's over the padded width.
            let r = &p_in[origin..];
            if io.y_planes {
                let end = BlockEnd {
                    bias: b2,
                    residual: r,
                    stride: plan1.plen,
                    relu: relu2,
                };
                plan2.store_planes(d, g2.c_out, end, yi);
            } else {
                add_bias_and(d, m, m, b2, r, plan1.plen);
                let ep = Epilogue { bias: None, ..ep };
                plan2.store_channel_major(d, g2.c_out, yi, ep);
            }
        });
    });
}

/// How a residual block's result pixel is finished: `f((d + bias[c]) + residual)`, with the
/// residual channel-major (channel `c` at `c * stride`) and `f` ReLU or the identity.
#[derive(Clone, Copy)]
struct BlockEnd<'a> {
    bias: Option<&'a [f32]>,
    residual: &'a [f32],
    stride: usize,
    relu: bool,
}

/// `out = f((s + b) + r)` element by element, `f` ReLU or the identity (a residual block's end,
/// in the order of a conv's epilogue followed by a separate add).
fn residual_row(out: &mut [f32], s: &[f32], r: &[f32], b: f32, relu: bool) {
    if relu {
        for ((o, v), r) in out.iter_mut().zip(s).zip(r) {
            *o = ((v + b) + r).max(0.0);
        }
    } else {
        for ((o, v), r) in out.iter_mut().zip(s).zip(r) {
            *o = (v + b) + r;
        }
    }
}

/// `d[c * d_stride + j] = (d[..] + bias[c]) + r[c * r_stride + j]` for `j < m` over the rows
/// of `d` (the residual sum of a chain, in the order of a conv's epilogue and a separate add).
fn add_bias_and(
    d: &mut [f32],
    d_stride: usize,
    m: usize,
    bias: Option<&[f32]>,
    r: &[f32],
    r_stride: usize,
) {
    for (ci, row) in d.chunks_exact_mut(d_stride).enumerate() {
        let row = &mut row[..m];
        let b = bias.map_or(0.0, |b| b[ci]);
        let rr = &r[ci * r_stride..ci * r_stride + m];
        if bias.is_some() {
            row.iter_mut().zip(rr).for_each(|(v, r)| *v = (*v + b) + r);
        } else {
            row.iter_mut().zip(rr).for_each(|(v, r)| *v += r);
        }
    }
}

/// The algorithm of the backward passes: a transposed conv on small maps (at most 100 pixels,
/// where the untransposed pick is im2col too) runs them as im2col, which suits small maps
/// better than the shifted products; on larger maps they run shifted.
fn backward_algo(g: &ConvGeom) -> ConvAlgo {
    if g.algo == ConvAlgo::ShiftedT && MaskPlan::fits(g) && g.h * g.w <= 100 {
        ConvAlgo::Im2col
    } else {
        g.algo
    }
}

/// Backward data of `n` images: `dx (+)= conv^T(dy, w)`.
pub fn backward_data(
    g: &ConvGeom,
    n: usize,
    dy: &[f32],
    w: &PackedConv,
    dx: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(dy.len(), n * g.out_len(), "conv output gradient length");
    assert_eq!(dx.len(), n * g.in_len(), "conv input gradient length");
    if n == 0 {
        return;
    }
    let ep = Epilogue {
        accumulate,
        ..Epilogue::PLAIN
    };
    match backward_algo(g) {
        ConvAlgo::Shifted | ConvAlgo::ShiftedT => {
            let plan = ShiftPlan::backward_data(g);
            let p_len = if plan.direct_src {
                0
            } else {
                plan.plen * g.c_out
            };
            let direct_dst = plan.direct_dst && ep.is_plain();
            let rows_direct = merge_rows(g) && fast_segs();
            let d_len = if direct_dst || rows_direct {
                0
            } else {
                plan.m() * g.c_in
            };
            dx.par_chunks_mut(g.in_len())
                .enumerate()
                .for_each(|(i, dxi)| {
                    let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
                    with_scratch([p_len, d_len, 0], |p, d, _| {
                        let src: &[f32] = if plan.direct_src {
                            dyi
                        } else {
                            plan.fill(dyi, g.c_out, p);
                            p
                        };
                        if rows_direct {
                            shifted_rows(g, &plan, src, &w.wt, Dir::BackwardData, dxi, accumulate);
                        } else if direct_dst {
                            shifted_products(g, &plan, src, &w.wt, Dir::BackwardData, dxi);
                        } else {
                            shifted_products(g, &plan, src, &w.wt, Dir::BackwardData, d);
                            plan.store(d, g.c_in, dxi, ep);
                        }
                    });
                });
        }
        ConvAlgo::Im2col => {
            let (nb, kkc) = im2col_block(g);
            dx.par_chunks_mut(g.in_len())
                .enumerate()
                .for_each(|(i, dxi)| {
                    let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
                    if !accumulate {
                        dxi.fill(0.0);
                    }
                    with_scratch([nb * kkc, 0, 0], |col, _, _| {
                        let npix = g.oh * g.ow;
                        for p0 in (0..npix).step_by(nb) {
                            let m = nb.min(npix - p0);
                            for gi in 0..g.groups {
                                sgemm(
                                    m,
                                    kkc,
                                    g.cog(),
                                    col,
                                    0,
                                    kkc,
                                    false,
                                    MatRef::rows(dyi, p0 * g.c_out + gi * g.cog(), g.c_out),
                                    MatRef::rows(&w.wc, gi * g.cog() * kkc, kkc),
                                );
                                col2im(g, col, gi, p0, m, dxi);
                            }
                        }
                    });
                });
        }
        ConvAlgo::Direct => {
            dx.par_chunks_mut(g.in_len())
                .enumerate()
                .for_each(|(i, dxi)| {
                    let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
                    if !accumulate {
                        dxi.fill(0.0);
                    }
                    direct_backward_data(g, dyi, &w.w, dxi);
                });
        }
    }
}

/// Backward weight of `n` images: `dw = sum_images x^T * dy` in the packed layout, and
/// `db = sum dy` when asked. Both overwrite their outputs.
pub fn backward_weight(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    assert_eq!(x.len(), n * g.in_len(), "conv input length");
    assert_eq!(dy.len(), n * g.out_len(), "conv output gradient length");
    assert_eq!(dw.len(), g.weight_len(), "conv weight gradient length");
    let wl = g.weight_len();
    let bl = if db.is_some() { g.c_out } else { 0 };
    let part = wl + bl;
    let per = chunk_len(n);
    let n_chunks = n.div_ceil(per);
    let mut partials = vec![0.0f32; n_chunks * part];
    let algo = backward_algo(g);
    let plan = algo.is_shifted().then(|| ShiftPlan::forward(g));
    partials
        .par_chunks_mut(part)
        .enumerate()
        .for_each(|(ci, pw)| {
            pw.fill(0.0);
            let (pw, pb) = pw.split_at_mut(wl);
            let (i0, i1) = (ci * per, ((ci + 1) * per).min(n));
            if let Some(plan) = plan.as_ref() {
                // Several small images per product: their padded buffers laid end to end make one
                // longer reduction (rows between images carry a zero gradient).
                let group = (2048 / plan.plen.max(1)).clamp(1, 16);
                for j0 in (i0..i1).step_by(group) {
                    let j1 = (j0 + group).min(i1);
                    shifted_weight_grad(
                        g,
                        plan,
                        &x[j0 * g.in_len()..j1 * g.in_len()],
                        &dy[j0 * g.out_len()..j1 * g.out_len()],
                        j1 - j0,
                        pw,
                    );
                }
            }
            for i in i0..i1 {
                let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
                let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
                match algo {
                    ConvAlgo::Shifted | ConvAlgo::ShiftedT => {}
                    ConvAlgo::Im2col => im2col_weight_grad(g, xi, dyi, pw),
                    ConvAlgo::Direct => direct_weight_grad(g, xi, dyi, pw),
                }
                if bl > 0 {
                    for r in dyi.chunks_exact(g.c_out) {
                        for (b, v) in pb.iter_mut().zip(r) {
                            *b += *v;
                        }
                    }
                }
            }
        });
    if n_chunks == 0 {
        dw.fill(0.0);
        if let Some(db) = db {
            db.fill(0.0);
        }
        return;
    }
    // Reduce the weight and bias parts separately, each in chunk order.
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Forward,
    BackwardData,
}

/// Whether the taps of one kernel row can be merged into one product: with one group and unit
/// horizontal dilation the `kw` taps of a kernel row read adjacent pixels of the padded
/// buffer, so the rows of a shifted view over `kw * c` channels overlap into an implicit
/// im2col along the width (no copy).
fn merge_rows(g: &ConvGeom) -> bool {
    g.groups == 1 && g.dil[1] == 1
}

/// Runs the shifted products of one image into `d` (over the padded width), in blocks of
/// output rows so that the block stays in cache across the kernel offsets.
fn shifted_products(
    g: &ConvGeom,
    plan: &ShiftPlan,
    src: &[f32],
    w: &[f32],
    dir: Dir,
    d: &mut [f32],
) {
    let (cs, cd, kin, kout) = match dir {
        Dir::Forward => (g.c_in, g.c_out, g.cig(), g.cog()),
        Dir::BackwardData => (g.c_out, g.c_in, g.cog(), g.cig()),
    };
    let m_total = plan.m();
    let blk = block_rows(cs, cd);
    let kk = g.kk();
    for m0 in (0..m_total).step_by(blk) {
        let m = blk.min(m_total - m0);
        if merge_rows(g) {
            // One product per kernel row; backward data's taps run right to left, so its row
            // starts at the last tap (the weights are stored with kw reversed to match).
            // All kernel rows run as segments of one product, so the block is written once.
            let segs: Vec<(usize, usize)> = (0..g.kh)
                .map(|ky| {
                    let first = match dir {
                        Dir::Forward => ky * g.kw,
                        Dir::BackwardData => ky * g.kw + g.kw - 1,
                    };
                    ((m0 + plan.offs[first]) * cs, g.kw * kin)
                })
                .collect();
            sgemm_segs(
                m,
                kout,
                d,
                m0 * cd,
                cd,
                false,
                MatRef::rows(src, 0, cs),
                &segs,
                MatRef::rows(w, 0, kout),
            );
            continue;
        }
        for gi in 0..g.groups {
            for k in 0..kk {
                // Backward data reads the weights with kw reversed.
                let kw_idx = match dir {
                    Dir::Forward => k,
                    Dir::BackwardData => (k / g.kw) * g.kw + (g.kw - 1 - k % g.kw),
                };
                sgemm(
                    m,
                    kout,
                    kin,
                    d,
                    m0 * cd + gi * kout,
                    cd,
                    k > 0,
                    MatRef::rows(src, (m0 + plan.offs[k]) * cs + gi * kin, cs),
                    MatRef::rows(w, (gi * kk + kw_idx) * kin * kout, kout),
                );
            }
        }
    }
}

/// The shifted products of one image transposed: `d[co][pixel]` over the padded width
/// (`c_out` rows of [`ShiftPlan::m`] pixels) from the channel-major padded input `p`. Each kernel
/// offset is one segment of the reduction, reading all input planes shifted by that offset.
/// `segs` is [`transposed_segs`] of the same geometry.
fn transposed_products(
    g: &ConvGeom,
    plan: &ShiftPlan,
    segs: &[(usize, usize)],
    p: &[f32],
    w: &[f32],
    d: &mut [f32],
) {
    sgemm_segs_rhs(
        g.c_out,
        plan.m(),
        d,
        0,
        plan.m(),
        false,
        MatRef::cols(w, 0, g.c_out),
        segs,
        MatRef::rows(p, 0, plan.plen),
    );
}

/// The reduction segments of [`transposed_products`]: one per kernel offset, all input planes.
fn transposed_segs(g: &ConvGeom, plan: &ShiftPlan) -> Vec<(usize, usize)> {
    plan.offs.iter().map(|&o| (o, g.c_in)).collect()
}

/// The merged-row shifted products of one image computed one destination row at a time
/// straight into `dst` (`hd x wd x cd`, overwritten or accumulated): no staging buffer over the
/// padded width and no copy out. Same sums in the same order as [`shifted_products`].
fn shifted_rows(
    g: &ConvGeom,
    plan: &ShiftPlan,
    src: &[f32],
    w: &[f32],
    dir: Dir,
    dst: &mut [f32],
    accumulate: bool,
) {
    let (cs, cd, kin, kout) = match dir {
        Dir::Forward => (g.c_in, g.c_out, g.cig(), g.cog()),
        Dir::BackwardData => (g.c_out, g.c_in, g.cog(), g.cig()),
    };
    let first: Vec<usize> = (0..g.kh)
        .map(|ky| match dir {
            Dir::Forward => plan.offs[ky * g.kw],
            Dir::BackwardData => plan.offs[ky * g.kw + g.kw - 1],
        })
        .collect();
    let mut segs = vec![(0usize, g.kw * kin); g.kh];
    for y in 0..plan.hd {
        for (s, f) in segs.iter_mut().zip(&first) {
            s.0 = (y * plan.wp + f) * cs;
        }
        sgemm_segs(
            plan.wd,
            kout,
            dst,
            y * plan.wd * cd,
            cd,
            accumulate,
            MatRef::rows(src, 0, cs),
            &segs,
            MatRef::rows(w, 0, kout),
        );
    }
}

/// Adds the weight gradient of `imgs` consecutive images to `pw`.
fn shifted_weight_grad(
    g: &ConvGeom,
    plan: &ShiftPlan,
    x: &[f32],
    dy: &[f32],
    imgs: usize,
    pw: &mut [f32],
) {
    // Unpadded 1x1-like geometries: the images are already laid end to end.
    let direct = plan.direct_src && plan.direct_dst && plan.plen == plan.m();
    // Per image: `plen` pixels of padded input, and its gradient spread over the same rows.
    let stride = plan.plen;
    let max_off = *plan
        .offs
        .iter()
        .max()
        .expect("kernel has at least one offset");
    let p_len = if direct {
        0
    } else {
        (imgs * stride + max_off) * g.c_in
    };
    let d_len = if direct { 0 } else { imgs * stride * g.c_out };
    with_scratch([p_len, d_len, 0], |p, d, _| {
        let (src, dys, k): (&[f32], &[f32], usize) = if direct {
            (x, dy, imgs * plan.m())
        } else {
            p[imgs * stride * g.c_in..].fill(0.0);
            for i in 0..imgs {
                let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
                plan.fill(xi, g.c_in, &mut p[i * stride * g.c_in..]);
                let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
                let di = &mut d[i * stride * g.c_out..(i + 1) * stride * g.c_out];
                plan.spread(dyi, g.c_out, di);
                di[plan.m() * g.c_out..].fill(0.0);
            }
            // The last image's rows past `m` carry zero gradient: stop the reduction there.
            (&*p, &*d, (imgs - 1) * stride + plan.m())
        };
        let (cig, cog, kk) = (g.cig(), g.cog(), g.kk());
        if merge_rows(g) {
            for ky in 0..g.kh {
                sgemm(
                    g.kw * cig,
                    cog,
                    k,
                    pw,
                    ky * g.kw * cig * cog,
                    cog,
                    true,
                    MatRef::cols(src, plan.offs[ky * g.kw] * g.c_in, g.c_in),
                    MatRef::rows(dys, 0, g.c_out),
                );
            }
            return;
        }
        for gi in 0..g.groups {
            for kx in 0..kk {
                sgemm(
                    cig,
                    cog,
                    k,
                    pw,
                    (gi * kk + kx) * cig * cog,
                    cog,
                    true,
                    MatRef::cols(src, plan.offs[kx] * g.c_in + gi * cig, g.c_in),
                    MatRef::rows(dys, gi * cog, g.c_out),
                );
            }
        }
    });
}

/// Pixels per im2col block and the block's row length (`kh * kw * c_in / groups`).
fn im2col_block(g: &ConvGeom) -> (usize, usize) {
    let kkc = g.kk() * g.cig();
    let nb = (65536 / kkc.max(1)).clamp(16, 1024).min(g.oh * g.ow).max(1);
    (nb, kkc)
}

/// Input coordinate of output coordinate `o` at kernel tap `t`, if inside the image.
#[inline]
fn in_coord(
    o: usize,
    t: usize,
    stride: usize,
    dil: usize,
    pad: usize,
    size: usize,
) -> Option<usize> {
    let v = (o * stride + t * dil) as isize - pad as isize;
    (v >= 0 && (v as usize) < size).then_some(v as usize)
}

fn im2col(g: &ConvGeom, xi: &[f32], gi: usize, p0: usize, m: usize, col: &mut [f32]) {
    let (cig, kk) = (g.cig(), g.kk());
    let kkc = kk * cig;
    for r in 0..m {
        let p = p0 + r;
        let (oy, ox) = (p / g.ow, p % g.ow);
        let row = &mut col[r * kkc..(r + 1) * kkc];
        for k in 0..kk {
            let dst = &mut row[k * cig..(k + 1) * cig];
            match (
                in_coord(oy, k / g.kw, g.stride[0], g.dil[0], g.pad[0], g.h),
                in_coord(ox, k % g.kw, g.stride[1], g.dil[1], g.pad[1], g.w),
            ) {
                (Some(iy), Some(ix)) => {
                    let s = (iy * g.w + ix) * g.c_in + gi * cig;
                    dst.copy_from_slice(&xi[s..s + cig]);
                }
                _ => dst.fill(0.0),
            }
        }
    }
}

/// [`im2col`] in tap-major order: `col[(t * m + r) * cig + c]` is input channel `c` of group
/// `gi` seen by kernel tap `t` from output pixel `p0 + r`, zero outside the image. With
/// stride 1 and one group, the output pixels of one row read consecutive input pixels, so
/// each (tap, row) is one contiguous copy instead of one copy per pixel.
fn im2col_taps(g: &ConvGeom, xi: &[f32], gi: usize, p0: usize, m: usize, col: &mut [f32]) {
    let (cig, kk) = (g.cig(), g.kk());
    let runs = g.stride[1] == 1 && g.groups == 1;
    for t in 0..kk {
        let (ky, kx) = (t / g.kw, t % g.kw);
        let tap = &mut col[t * m * cig..(t + 1) * m * cig];
        let mut r = 0;
        while r < m {
            let p = p0 + r;
            let (oy, ox) = (p / g.ow, p % g.ow);
            let run = (g.ow - ox).min(m - r);
            let dst = &mut tap[r * cig..(r + run) * cig];
            match in_coord(oy, ky, g.stride[0], g.dil[0], g.pad[0], g.h) {
                None => dst.fill(0.0),
                Some(iy) if runs => {
                    // Input column of output column `o` is `o + shift`; keep `[lo, hi)`.
                    let shift = (kx * g.dil[1]) as isize - g.pad[1] as isize;
                    let end = (ox + run) as isize;
                    let lo = (ox as isize).max(-shift).min(end);
                    let hi = end.min(g.w as isize - shift).max(lo);
                    let (a, b) = ((lo - ox as isize) as usize, (hi - ox as isize) as usize);
                    dst[..a * cig].fill(0.0);
                    if b > a {
                        let s = (iy * g.w + (lo + shift) as usize) * g.c_in;
                        dst[a * cig..b * cig].copy_from_slice(&xi[s..s + (b - a) * cig]);
                    }
                    dst[b * cig..].fill(0.0);
                }
                Some(iy) => {
                    for (j, d) in dst.chunks_exact_mut(cig).enumerate() {
                        match in_coord(ox + j, kx, g.stride[1], g.dil[1], g.pad[1], g.w) {
                            Some(ix) => {
                                let s = (iy * g.w + ix) * g.c_in + gi * cig;
                                d.copy_from_slice(&xi[s..s + cig]);
                            }
                            None => d.fill(0.0),
                        }
                    }
                }
            }
            r += run;
        }
    }
}

/// `y[p0.., group gi] = col x W_gi` for a tap-major [`im2col_taps`] block of `m` pixels: the
/// reduction runs over the taps' blocks as segments of one product, in passes of
/// [`PASS_STEPS`] steps (as the plain products split theirs). `segs` is reused scratch.
#[allow(clippy::too_many_arguments)]
fn taps_product(
    g: &ConvGeom,
    m: usize,
    col: &[f32],
    w: &[f32],
    gi: usize,
    yi: &mut [f32],
    p0: usize,
    segs: &mut Vec<(usize, usize)>,
) {
    let (cig, cog) = (g.cig(), g.cog());
    let total = g.kk() * cig;
    let mut q = 0;
    while q < total {
        let end = (q + PASS_STEPS).min(total);
        segs.clear();
        let mut s = q;
        while s < end {
            let (t, c0) = (s / cig, s % cig);
            let len = (cig - c0).min(end - s);
            segs.push((t * m * cig + c0, len));
            s += len;
        }
        sgemm_segs(
            m,
            cog,
            yi,
            p0 * g.c_out + gi * cog,
            g.c_out,
            q > 0,
            MatRef::rows(col, 0, cig),
            segs,
            MatRef::rows(w, gi * total * cog + q * cog, cog),
        );
        q = end;
    }
}

fn col2im(g: &ConvGeom, col: &[f32], gi: usize, p0: usize, m: usize, dxi: &mut [f32]) {
    let (cig, kk) = (g.cig(), g.kk());
    let kkc = kk * cig;
    for r in 0..m {
        let p = p0 + r;
        let (oy, ox) = (p / g.ow, p % g.ow);
        let row = &col[r * kkc..(r + 1) * kkc];
        for k in 0..kk {
            if let (Some(iy), Some(ix)) = (
                in_coord(oy, k / g.kw, g.stride[0], g.dil[0], g.pad[0], g.h),
                in_coord(ox, k % g.kw, g.stride[1], g.dil[1], g.pad[1], g.w),
            ) {
                let s = (iy * g.w + ix) * g.c_in + gi * cig;
                for (d, v) in dxi[s..s + cig].iter_mut().zip(&row[k * cig..(k + 1) * cig]) {
                    *d += *v;
                }
            }
        }
    }
}

fn im2col_weight_grad(g: &ConvGeom, xi: &[f32], dyi: &[f32], pw: &mut [f32]) {
    let (nb, kkc) = im2col_block(g);
    with_scratch([nb * kkc, 0, 0], |col, _, _| {
        let npix = g.oh * g.ow;
        for p0 in (0..npix).step_by(nb) {
            let m = nb.min(npix - p0);
            for gi in 0..g.groups {
                im2col(g, xi, gi, p0, m, col);
                sgemm(
                    kkc,
                    g.cog(),
                    m,
                    pw,
                    gi * kkc * g.cog(),
                    g.cog(),
                    true,
                    MatRef::cols(col, 0, kkc),
                    MatRef::rows(dyi, p0 * g.c_out + gi * g.cog(), g.c_out),
                );
            }
        }
    });
}

/// Visits every (output pixel, kernel offset, input pixel) triple inside the image.
#[inline]
fn for_each_tap(g: &ConvGeom, mut f: impl FnMut(usize, usize, usize)) {
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let p = oy * g.ow + ox;
            for k in 0..g.kk() {
                if let (Some(iy), Some(ix)) = (
                    in_coord(oy, k / g.kw, g.stride[0], g.dil[0], g.pad[0], g.h),
                    in_coord(ox, k % g.kw, g.stride[1], g.dil[1], g.pad[1], g.w),
                ) {
                    f(p, k, iy * g.w + ix);
                }
            }
        }
    }
}

fn direct_forward(g: &ConvGeom, xi: &[f32], w: &[f32], yi: &mut [f32]) {
    yi.fill(0.0);
    let (cig, cog) = (g.cig(), g.cog());
    for_each_tap(g, |p, k, q| {
        let xr = &xi[q * g.c_in..(q + 1) * g.c_in];
        let yr = &mut yi[p * g.c_out..(p + 1) * g.c_out];
        for gi in 0..g.groups {
            for ci in 0..cig {
                let xv = xr[gi * cig + ci];
                let wr = &w[g.packed(gi, k, ci, 0)..g.packed(gi, k, ci, 0) + cog];
                for (yv, wv) in yr[gi * cog..(gi + 1) * cog].iter_mut().zip(wr) {
                    *yv += xv * *wv;
                }
            }
        }
    });
}

fn direct_backward_data(g: &ConvGeom, dyi: &[f32], w: &[f32], dxi: &mut [f32]) {
    let (cig, cog) = (g.cig(), g.cog());
    for_each_tap(g, |p, k, q| {
        let dyr = &dyi[p * g.c_out..(p + 1) * g.c_out];
        let dxr = &mut dxi[q * g.c_in..(q + 1) * g.c_in];
        for gi in 0..g.groups {
            for ci in 0..cig {
                let wr = &w[g.packed(gi, k, ci, 0)..g.packed(gi, k, ci, 0) + cog];
                let mut acc = 0.0;
                for (dv, wv) in dyr[gi * cog..(gi + 1) * cog].iter().zip(wr) {
                    acc += *dv * *wv;
                }
                dxr[gi * cig + ci] += acc;
            }
        }
    });
}

fn direct_weight_grad(g: &ConvGeom, xi: &[f32], dyi: &[f32], pw: &mut [f32]) {
    let (cig, cog) = (g.cig(), g.cog());
    for_each_tap(g, |p, k, q| {
        let dyr = &dyi[p * g.c_out..(p + 1) * g.c_out];
        let xr = &xi[q * g.c_in..(q + 1) * g.c_in];
        for gi in 0..g.groups {
            for ci in 0..cig {
                let xv = xr[gi * cig + ci];
                let o = g.packed(gi, k, ci, 0);
                for (wv, dv) in pw[o..o + cog]
                    .iter_mut()
                    .zip(&dyr[gi * cog..(gi + 1) * cog])
                {
                    *wv += xv * *dv;
                }
            }
        }
    });
}
