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
//! - **vectorised depthwise loops** ([`ConvAlgo::Depthwise`], `depthwise.rs`) for depthwise convs
//!   (one input channel per group): channels in the vector lanes, split over rows of the batch.
//! - **1x1 products over the batch** ([`ConvAlgo::Pointwise`], `pointwise.rs`) for unpadded
//!   stride-1 1x1 convs on small maps: one GEMM over all images' pixels in fixed row blocks.
//! - **direct loops** for other grouped convs with tiny groups.
//!
//! Work is split over images (rayon); each product runs single-threaded (the depthwise and 1x1
//! kernels split fixed blocks of rows of the whole batch instead). Weight gradients are
//! summed per fixed chunk of images and the chunks reduced in order, so results do not depend
//! on the thread count.
//!
//! One file per algorithm (`shifted.rs`, `transposed.rs`, `im2col.rs`, `direct.rs`), each
//! running on one image at a time through the shared per-image loops of this file; the
//! layouts they run over (`shift_plan.rs`: zero-padded buffers and planes, `mask_plan.rs`:
//! masked unpadded planes), the store epilogues (`epilogue.rs`), the weight packing
//! (`pack.rs`), the conv pairs of residual blocks (`chain.rs`) and the backward entry points
//! (`backward.rs`) have their own files.

mod backward;
mod chain;
pub mod depthwise;
mod direct;
mod epilogue;
mod im2col;
mod mask_plan;
mod pack;
pub mod pointwise;
mod shift_plan;
mod shifted;
mod transposed;

use rayon::prelude::*;
use shears_ir::Conv2d;

use super::gemm::fast_segs;
use epilogue::Epilogue;
use mask_plan::MaskPlan;

pub use backward::{backward_data, backward_weight};
pub use chain::{
    chain_planes_len, chainable, forward_chain, planes_link, residual_chainable, residual_pair,
    ChainIo,
};
pub use pack::{pack_weight, unpack_weight, PackedConv};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
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
    /// Plain loops (grouped convs with tiny groups).
    Direct,
    /// Depthwise convs (`groups == c_in`, any channel multiplier) vectorised over channels
    /// ([`depthwise`]).
    Depthwise,
    /// Unpadded stride-1 1x1 convs with one group as one product over the batch's pixels
    /// ([`pointwise`]).
    Pointwise,
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
        if algo == ConvAlgo::Depthwise && !depthwise::supports(&self) {
            return None;
        }
        if algo == ConvAlgo::Pointwise && !pointwise::supports(&self) {
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
        if self.groups > 1 && depthwise::supports(self) {
            ConvAlgo::Depthwise
        } else if self.groups > 1 && (self.cig() < 4 || self.cog() < 4) {
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
        } else if pointwise::supports(self) {
            // Small maps: one product over all images' pixels instead of one of at most 64
            // rows per image (`examples/pointwise_bench.rs`).
            ConvAlgo::Pointwise
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
    match g.algo {
        ConvAlgo::Shifted => shifted::forward(g, x, w, ep_all, y),
        ConvAlgo::ShiftedT if MaskPlan::fits(g) => transposed::forward_masked(g, x, w, ep_all, y),
        ConvAlgo::ShiftedT => transposed::forward_padded(g, x, w, ep_all, y),
        ConvAlgo::Im2col => im2col::forward(g, x, w, ep_all, y),
        ConvAlgo::Direct => direct::forward(g, x, w, ep_all, y),
        ConvAlgo::Depthwise => depthwise::forward(g, n, x, &w.taps, bias, residual, relu, y),
        ConvAlgo::Pointwise => pointwise::forward(g, n, x, w, bias, residual, relu, y),
    }
}

/// The forward loop over images shared by the algorithms: runs `f(xi, ep, yi)` for every
/// image in parallel, with the image's input, its epilogue (`ep_all` with the residual sliced
/// to the image's output) and its output.
fn per_image<F>(g: &ConvGeom, x: &[f32], ep_all: Epilogue<'_>, y: &mut [f32], f: F)
where
    F: Fn(&[f32], Epilogue<'_>, &mut [f32]) + Send + Sync,
{
    let out_len = g.out_len();
    y.par_chunks_mut(g.out_len())
        .enumerate()
        .for_each(|(i, yi)| {
            let xi = &x[i * g.in_len()..(i + 1) * g.in_len()];
            f(xi, ep_all.part(i * out_len, (i + 1) * out_len), yi);
        });
}

/// The backward-data loop over images shared by the algorithms: runs `f(dyi, dxi)` for every
/// image in parallel, with the image's output gradient and its input gradient.
fn per_image_backward<F>(g: &ConvGeom, dy: &[f32], dx: &mut [f32], f: F)
where
    F: Fn(&[f32], &mut [f32]) + Send + Sync,
{
    dx.par_chunks_mut(g.in_len())
        .enumerate()
        .for_each(|(i, dxi)| {
            let dyi = &dy[i * g.out_len()..(i + 1) * g.out_len()];
            f(dyi, dxi);
        });
}
