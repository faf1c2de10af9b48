//! Depthwise convolutions (`groups == c_in`: every input channel feeds its own
//! `c_out / c_in` output channels) on NHWC activations, vectorised over channels.
//!
//! In NHWC the channel axis is contiguous, so each (destination pixel, kernel tap) pair is one
//! run of `c` multiply-adds: `y[p][c..c + 16] += x[q][c..c + 16] * w[tap][c..c + 16]`, with
//! the weights laid out tap-major (`[kh * kw][c_out]`, see [`taps_from_packed`]). Destination
//! pixels gather from the taps that reach them, so forward and backward data are the same
//! kernel over different tap tables (`Gather`) and no two threads write one element: both are
//! split over rows of the whole batch. The weight gradient sums, per tap, the products over the
//! rectangle of output pixels where that tap lands inside the image; images are split in fixed
//! chunks (`par::chunk_len`) whose partial sums are reduced in chunk order, so the result does
//! not depend on the thread count.
//!
//! A channel multiplier `m > 1` runs on a copy of the input with each channel repeated `m`
//! times (and backward data sums the `m` copies back), so the kernels only see `m == 1`.
//!
//! The kernels are plain Rust over 16-lane arrays, compiled three times: for AVX-512 (with
//! FMA), for AVX2 with FMA (both chosen at run time) and for the baseline target; LLVM turns
//! the array operations into vector instructions of the enabled width.

use rayon::prelude::*;

use super::ConvGeom;
use crate::kernels::par::{chunk_len, reduce_partials};

/// Lanes per vector.
const L: usize = 16;

/// Whether the depthwise kernels run `g`: one input channel per group.
pub fn supports(g: &ConvGeom) -> bool {
    g.groups == g.c_in && g.c_out.is_multiple_of(g.c_in)
}

/// The tap-major weight `[kh * kw][c_out]` of a depthwise conv from PyTorch's OIHW layout
/// (`[c_out][1][kh][kw]`).
pub fn pack_taps(g: &ConvGeom, oihw: &[f32]) -> Vec<f32> {
    assert!(supports(g), "depthwise geometry checked by the caller");
    assert_eq!(oihw.len(), g.weight_len(), "depthwise weight length");
    let kk = g.kk();
    let mut t = vec![0.0; oihw.len()];
    for (o, w) in oihw.chunks_exact(kk).enumerate() {
        for (k, v) in w.iter().enumerate() {
            t[k * g.c_out + o] = *v;
        }
    }
    t
}

/// The tap-major weight `[kh * kw][c_out]` of a depthwise conv from the engine's packed layout
/// (`[groups][kh * kw][1][c_out / groups]`, see [`super::PackedConv`]).
pub fn taps_from_packed(g: &ConvGeom, packed: &[f32]) -> Vec<f32> {
    assert!(supports(g), "depthwise geometry checked by the caller");
    assert_eq!(
        packed.len(),
        g.weight_len(),
        "packed depthwise weight length"
    );
    let (kk, cog) = (g.kk(), g.cog());
    let mut t = vec![0.0; packed.len()];
    for gi in 0..g.groups {
        for k in 0..kk {
            let src = &packed[(gi * kk + k) * cog..(gi * kk + k + 1) * cog];
            t[k * g.c_out + gi * cog..k * g.c_out + (gi + 1) * cog].copy_from_slice(src);
        }
    }
    t
}

/// The inverse of [`taps_from_packed`] (for weight gradients).
pub fn packed_from_taps(g: &ConvGeom, taps: &[f32], packed: &mut [f32]) {
    assert_eq!(
        taps.len(),
        g.weight_len(),
        "tap-major depthwise weight length"
    );
    assert_eq!(
        packed.len(),
        g.weight_len(),
        "packed depthwise weight length"
    );
    let (kk, cog) = (g.kk(), g.cog());
    for gi in 0..g.groups {
        for k in 0..kk {
            packed[(gi * kk + k) * cog..(gi * kk + k + 1) * cog]
                .copy_from_slice(&taps[k * g.c_out + gi * cog..k * g.c_out + (gi + 1) * cog]);
        }
    }
}

/// The instruction set the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F with FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// The baseline target, no fused multiply-add.
    Portable,
}

impl Isa {
    /// The widest set this CPU runs (the detection is cached by `std`).
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// For each destination coordinate along one axis, the kernel taps that reach it and the
/// source coordinate each one reads: `taps[start[d]..start[d + 1]]` as `(tap, source)`.
#[derive(Clone, Debug)]
struct Axis {
    start: Vec<usize>,
    taps: Vec<(usize, usize)>,
}

impl Axis {
    /// Forward: output `o` reads input `o * s + t * d - p` at tap `t`.
    fn forward(n_out: usize, n_in: usize, k: usize, s: usize, d: usize, p: usize) -> Axis {
        Axis::build(n_out, k, |o, t| {
            let i = (o * s + t * d) as isize - p as isize;
            (i >= 0 && (i as usize) < n_in).then_some(i as usize)
        })
    }

    /// Backward data: input `i` receives from output `o` at tap `t` where `o * s + t * d - p
    /// == i`.
    fn backward(n_in: usize, n_out: usize, k: usize, s: usize, d: usize, p: usize) -> Axis {
        Axis::build(n_in, k, |i, t| {
            let v = (i + p) as isize - (t * d) as isize;
            (v >= 0 && (v as usize).is_multiple_of(s) && v as usize / s < n_out)
                .then_some(v as usize / s)
        })
    }

    fn build(n_dst: usize, k: usize, src: impl Fn(usize, usize) -> Option<usize>) -> Axis {
        let mut start = Vec::with_capacity(n_dst + 1);
        let mut taps = Vec::new();
        start.push(0);
        for o in 0..n_dst {
            taps.extend((0..k).filter_map(|t| src(o, t).map(|i| (t, i))));
            start.push(taps.len());
        }
        Axis { start, taps }
    }

    fn of(&self, d: usize) -> &[(usize, usize)] {
        &self.taps[self.start[d]..self.start[d + 1]]
    }
}

/// One direction of the gather: destination pixels of `dst_h x dst_w`, each summing
/// `src[source pixel][c] * w[tap][c]` over its taps, `c` channels in both.
#[derive(Clone, Debug)]
struct Gather {
    rows: Axis,
    cols: Axis,
    dst_h: usize,
    dst_w: usize,
    src_h: usize,
    src_w: usize,
    kw: usize,
    c: usize,
}

impl Gather {
    fn forward(g: &ConvGeom, c: usize) -> Gather {
        Gather {
            rows: Axis::forward(g.oh, g.h, g.kh, g.stride[0], g.dil[0], g.pad[0]),
            cols: Axis::forward(g.ow, g.w, g.kw, g.stride[1], g.dil[1], g.pad[1]),
            dst_h: g.oh,
            dst_w: g.ow,
            src_h: g.h,
            src_w: g.w,
            kw: g.kw,
            c,
        }
    }

    fn backward_data(g: &ConvGeom, c: usize) -> Gather {
        Gather {
            rows: Axis::backward(g.h, g.oh, g.kh, g.stride[0], g.dil[0], g.pad[0]),
            cols: Axis::backward(g.w, g.ow, g.kw, g.stride[1], g.dil[1], g.pad[1]),
            dst_h: g.h,
            dst_w: g.w,
            src_h: g.oh,
            src_w: g.ow,
            kw: g.kw,
            c,
        }
    }

    fn src_len(&self) -> usize {
        self.src_h * self.src_w * self.c
    }

    fn row_len(&self) -> usize {
        self.dst_w * self.c
    }

    /// Destination rows per parallel task: about 64k multiply-adds each.
    fn rows_per_task(&self) -> usize {
        let per_row = self.row_len() * (self.rows.taps.len() / self.dst_h.max(1)).max(1);
        (65536 / per_row.max(1)).max(1)
    }
}

/// What a gathered result does on its way into the destination:
/// `dst = f(((old if accumulate) + sum + bias) + residual)`, `f` a ReLU or the identity.
#[derive(Clone, Copy, Default)]
struct Store<'a> {
    bias: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    relu: bool,
    accumulate: bool,
}

/// Runs the gather `plan` of `n` images from `src` into `dst` (whole batches), split over
/// destination rows; `st.residual` is laid out like `dst`.
fn gather(isa: Isa, plan: &Gather, n: usize, src: &[f32], w: &[f32], dst: &mut [f32], st: Store) {
    assert_eq!(src.len(), n * plan.src_len(), "depthwise source length");
    assert_eq!(
        dst.len(),
        n * plan.dst_h * plan.row_len(),
        "depthwise destination length"
    );
    let rl = plan.row_len();
    let rows = plan.rows_per_task();
    dst.par_chunks_mut(rows * rl)
        .enumerate()
        .for_each(|(ti, chunk)| {
            for (j, row) in chunk.chunks_exact_mut(rl).enumerate() {
                let r = ti * rows + j;
                let (b, y) = (r / plan.dst_h, r % plan.dst_h);
                let img = &src[b * plan.src_len()..(b + 1) * plan.src_len()];
                let st = Store {
                    residual: st.residual.map(|res| &res[r * rl..(r + 1) * rl]),
                    ..st
                };
                gather_row_isa(isa, plan, y, img, w, row, st);
            }
        });
}

fn gather_row_isa(
    isa: Isa,
    plan: &Gather,
    y: usize,
    src: &[f32],
    w: &[f32],
    dst: &mut [f32],
    st: Store,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX-512F and FMA on this CPU.
        Isa::Avx512 => unsafe { x86::gather_row_avx512(plan, y, src, w, dst, st) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX2 and FMA on this CPU.
        Isa::Avx2 => unsafe { x86::gather_row_avx2(plan, y, src, w, dst, st) },
        _ => gather_row::<false>(plan, y, src, w, dst, st),
    }
}

fn wgrad_images_isa(isa: Isa, t: &TapRects, count: usize, x: &[f32], dy: &[f32], part: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX-512F and FMA on this CPU.
        Isa::Avx512 => unsafe { x86::wgrad_images_avx512(t, count, x, dy, part) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX2 and FMA on this CPU.
        Isa::Avx2 => unsafe { x86::wgrad_images_avx2(t, count, x, dy, part) },
        _ => wgrad_images::<false>(t, count, x, dy, part),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{gather_row, wgrad_images, Gather, Store, TapRects};

    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn gather_row_avx512(
        plan: &Gather,
        y: usize,
        src: &[f32],
        w: &[f32],
        dst: &mut [f32],
        st: Store,
    ) {
        gather_row::<true>(plan, y, src, w, dst, st)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gather_row_avx2(
        plan: &Gather,
        y: usize,
        src: &[f32],
        w: &[f32],
        dst: &mut [f32],
        st: Store,
    ) {
        gather_row::<true>(plan, y, src, w, dst, st)
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn wgrad_images_avx512(
        t: &TapRects,
        count: usize,
        x: &[f32],
        dy: &[f32],
        part: &mut [f32],
    ) {
        wgrad_images::<true>(t, count, x, dy, part)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn wgrad_images_avx2(
        t: &TapRects,
        count: usize,
        x: &[f32],
        dy: &[f32],
        part: &mut [f32],
    ) {
        wgrad_images::<true>(t, count, x, dy, part)
    }
}

/// 16 lanes; with `FMA` the multiply-adds are fused (only where the target has FMA: elsewhere
/// `mul_add` would be a library call per lane).
#[derive(Clone, Copy)]
struct V([f32; L]);

impl V {
    #[inline(always)]
    fn zero() -> V {
        V([0.0; L])
    }

    /// The first `n` lanes from `s` (`n == L` when `FULL`), the others zero.
    #[inline(always)]
    fn load<const FULL: bool>(s: &[f32], n: usize) -> V {
        if FULL {
            let a: &[f32; L] = s[..L].try_into().expect("16 lanes");
            V(*a)
        } else {
            let mut r = [0.0; L];
            r[..n].copy_from_slice(&s[..n]);
            V(r)
        }
    }

    #[inline(always)]
    fn store<const FULL: bool>(self, s: &mut [f32], n: usize) {
        if FULL {
            let d: &mut [f32; L] = (&mut s[..L]).try_into().expect("16 lanes");
            *d = self.0;
        } else {
            s[..n].copy_from_slice(&self.0[..n]);
        }
    }

    /// `self + a * b`.
    #[inline(always)]
    fn mul_add<const FMA: bool>(self, a: V, b: V) -> V {
        let mut r = self.0;
        for l in 0..L {
            r[l] = if FMA {
                a.0[l].mul_add(b.0[l], r[l])
            } else {
                r[l] + a.0[l] * b.0[l]
            };
        }
        V(r)
    }

    #[inline(always)]
    fn add(self, b: V) -> V {
        let mut r = self.0;
        for l in 0..L {
            r[l] += b.0[l];
        }
        V(r)
    }

    #[inline(always)]
    fn relu(self) -> V {
        let mut r = self.0;
        for l in 0..L {
            r[l] = r[l].max(0.0);
        }
        V(r)
    }
}

/// Destination row `y` of one image: every pixel gathers from its taps.
#[inline(always)]
fn gather_row<const FMA: bool>(
    plan: &Gather,
    y: usize,
    src: &[f32],
    w: &[f32],
    dst: &mut [f32],
    st: Store,
) {
    let c = plan.c;
    for x in 0..plan.dst_w {
        let taps = PixelTaps {
            rows: plan.rows.of(y),
            cols: plan.cols.of(x),
            src_row: plan.src_w * c,
            w_row: plan.kw * c,
            c,
        };
        let out = &mut dst[x * c..(x + 1) * c];
        let st = Store {
            residual: st.residual.map(|r| &r[x * c..(x + 1) * c]),
            ..st
        };
        let mut c0 = 0;
        while c0 + 4 * L <= c {
            pixel_block::<FMA, 4, true>(&taps, src, w, c0, L, out, st);
            c0 += 4 * L;
        }
        while c0 + L <= c {
            pixel_block::<FMA, 1, true>(&taps, src, w, c0, L, out, st);
            c0 += L;
        }
        if c0 < c {
            pixel_block::<FMA, 1, false>(&taps, src, w, c0, c - c0, out, st);
        }
    }
}

/// The taps of one destination pixel: its row taps times its column taps, with the strides
/// that turn `(tap, source)` pairs into offsets.
struct PixelTaps<'a> {
    rows: &'a [(usize, usize)],
    cols: &'a [(usize, usize)],
    /// Floats per source row.
    src_row: usize,
    /// Floats per kernel row of the tap-major weight.
    w_row: usize,
    c: usize,
}

/// Channels `c0..` of one destination pixel: `NV` vectors, the last one of `last` lanes.
#[inline(always)]
fn pixel_block<const FMA: bool, const NV: usize, const FULL: bool>(
    t: &PixelTaps,
    src: &[f32],
    w: &[f32],
    c0: usize,
    last: usize,
    out: &mut [f32],
    st: Store,
) {
    let mut acc = [V::zero(); NV];
    for &(ky, sy) in t.rows {
        let (sr, wr) = (sy * t.src_row + c0, ky * t.w_row + c0);
        for &(kx, sx) in t.cols {
            let (so, wo) = (sr + sx * t.c, wr + kx * t.c);
            for (v, a) in acc.iter_mut().enumerate() {
                let xv = V::load::<FULL>(&src[so + v * L..], last);
                let wv = V::load::<FULL>(&w[wo + v * L..], last);
                *a = a.mul_add::<FMA>(xv, wv);
            }
        }
    }
    for (v, a) in acc.iter().enumerate() {
        let o = c0 + v * L;
        let mut r = *a;
        if st.accumulate {
            r = V::load::<FULL>(&out[o..], last).add(r);
        }
        if let Some(b) = st.bias {
            r = r.add(V::load::<FULL>(&b[o..], last));
        }
        if let Some(res) = st.residual {
            r = r.add(V::load::<FULL>(&res[o..], last));
        }
        if st.relu {
            r = r.relu();
        }
        r.store::<FULL>(&mut out[o..], last);
    }
}

/// Per kernel tap, the rectangle of output pixels where it reads inside the input, and the
/// geometry to find the input pixel.
#[derive(Clone, Debug)]
struct TapRects {
    /// `(tap, oy0..oy1, ox0..ox1)`.
    rects: Vec<(usize, [usize; 2], [usize; 2])>,
    g: ConvGeom,
    c: usize,
}

impl TapRects {
    fn new(g: &ConvGeom, c: usize) -> TapRects {
        let range = |n_out: usize, n_in: usize, t: usize, s: usize, d: usize, p: usize| {
            let ok = |o: usize| {
                let i = (o * s + t * d) as isize - p as isize;
                i >= 0 && (i as usize) < n_in
            };
            let lo = (0..n_out).find(|&o| ok(o)).unwrap_or(n_out);
            let hi = (lo..n_out).find(|&o| !ok(o)).unwrap_or(n_out);
            [lo, hi]
        };
        let rects = (0..g.kk())
            .map(|k| {
                let (ky, kx) = (k / g.kw, k % g.kw);
                let ys = range(g.oh, g.h, ky, g.stride[0], g.dil[0], g.pad[0]);
                let xs = range(g.ow, g.w, kx, g.stride[1], g.dil[1], g.pad[1]);
                (k, ys, xs)
            })
            .collect();
        TapRects {
            rects,
            g: g.clone(),
            c,
        }
    }
}

/// Adds the weight gradient of `count` consecutive images, `sum_p x[q(p, tap)] * dy[p]`, to
/// `part` (`[kk][c]`). Taps run outermost, so the images should fit in L2 together.
#[inline(always)]
fn wgrad_images<const FMA: bool>(
    t: &TapRects,
    count: usize,
    x: &[f32],
    dy: &[f32],
    part: &mut [f32],
) {
    let c = t.c;
    for &(k, ys, xs) in &t.rects {
        if ys[0] == ys[1] || xs[0] == xs[1] {
            continue;
        }
        let p = &mut part[k * c..(k + 1) * c];
        let b = TapBlock { k, ys, xs, count };
        let mut c0 = 0;
        while c0 + 4 * L <= c {
            wgrad_block::<FMA, 4, true>(t, &b, x, dy, c0, L, p);
            c0 += 4 * L;
        }
        while c0 + L <= c {
            wgrad_block::<FMA, 1, true>(t, &b, x, dy, c0, L, p);
            c0 += L;
        }
        if c0 < c {
            wgrad_block::<FMA, 1, false>(t, &b, x, dy, c0, c - c0, p);
        }
    }
}

/// One tap's rectangle of output pixels (rows `ys`, columns `xs`) over `count` images.
struct TapBlock {
    k: usize,
    ys: [usize; 2],
    xs: [usize; 2],
    count: usize,
}

/// Channels `c0..` of one tap's gradient over its rectangle in every image, in two
/// accumulators per vector (alternate pixels) so that consecutive multiply-adds do not wait on
/// each other.
#[inline(always)]
fn wgrad_block<const FMA: bool, const NV: usize, const FULL: bool>(
    t: &TapRects,
    b: &TapBlock,
    x: &[f32],
    dy: &[f32],
    c0: usize,
    last: usize,
    part: &mut [f32],
) {
    let (g, c) = (&t.g, t.c);
    let (ky, kx) = (b.k / g.kw, b.k % g.kw);
    let (x_len, y_len) = (g.h * g.w * c, g.oh * g.ow * c);
    let mut acc = [[V::zero(); NV]; 2];
    let mut j = 0;
    for i in 0..b.count {
        for oy in b.ys[0]..b.ys[1] {
            let iy = oy * g.stride[0] + ky * g.dil[0] - g.pad[0];
            for ox in b.xs[0]..b.xs[1] {
                let ix = ox * g.stride[1] + kx * g.dil[1] - g.pad[1];
                let xo = i * x_len + (iy * g.w + ix) * c + c0;
                let yo = i * y_len + (oy * g.ow + ox) * c + c0;
                let a = &mut acc[j & 1];
                j += 1;
                for (v, a) in a.iter_mut().enumerate() {
                    let xv = V::load::<FULL>(&x[xo + v * L..], last);
                    let dv = V::load::<FULL>(&dy[yo + v * L..], last);
                    *a = a.mul_add::<FMA>(xv, dv);
                }
            }
        }
    }
    for v in 0..NV {
        let o = c0 + v * L;
        let sum = acc[0][v].add(acc[1][v]);
        V::load::<FULL>(&part[o..], last)
            .add(sum)
            .store::<FULL>(&mut part[o..], last);
    }
}

/// `x` with each channel repeated `m` times (`[.., c]` to `[.., c * m]`).
fn repeat_channels(x: &[f32], c: usize, m: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() * m);
    for v in x {
        out.extend(std::iter::repeat_n(*v, m));
    }
    debug_assert_eq!(out.len() % (c * m).max(1), 0);
    out
}

/// Forward depthwise convolution of `n` NHWC images:
/// `y = f((conv(x, w) + bias) + residual)`, `f` a ReLU when `relu`, `residual` laid out like
/// `y`. `w_taps` is tap-major ([`taps_from_packed`]).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w_taps: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    forward_isa(Isa::detect(), g, n, x, w_taps, bias, residual, relu, y)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_isa(
    isa: Isa,
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    w_taps: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    assert!(supports(g), "depthwise geometry checked by the caller");
    assert_eq!(x.len(), n * g.in_len(), "depthwise input length");
    assert_eq!(y.len(), n * g.out_len(), "depthwise output length");
    assert_eq!(w_taps.len(), g.weight_len(), "depthwise weight length");
    if let Some(b) = bias {
        assert_eq!(b.len(), g.c_out, "depthwise bias length");
    }
    if let Some(r) = residual {
        assert_eq!(r.len(), y.len(), "depthwise residual length");
    }
    let st = Store {
        bias,
        residual,
        relu,
        accumulate: false,
    };
    let m = g.cog();
    let plan = Gather::forward(g, g.c_out);
    if m == 1 {
        gather(isa, &plan, n, x, w_taps, y, st);
    } else {
        let xr = repeat_channels(x, g.c_in, m);
        gather(isa, &plan, n, &xr, w_taps, y, st);
    }
}

/// Backward data of `n` images: `dx (+)= conv^T(dy, w)`, `w_taps` tap-major.
pub fn backward_data(
    g: &ConvGeom,
    n: usize,
    dy: &[f32],
    w_taps: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    backward_data_isa(Isa::detect(), g, n, dy, w_taps, dx, accumulate)
}

pub(crate) fn backward_data_isa(
    isa: Isa,
    g: &ConvGeom,
    n: usize,
    dy: &[f32],
    w_taps: &[f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    assert!(supports(g), "depthwise geometry checked by the caller");
    assert_eq!(
        dy.len(),
        n * g.out_len(),
        "depthwise output gradient length"
    );
    assert_eq!(dx.len(), n * g.in_len(), "depthwise input gradient length");
    assert_eq!(w_taps.len(), g.weight_len(), "depthwise weight length");
    let m = g.cog();
    let plan = Gather::backward_data(g, g.c_out);
    if m == 1 {
        let st = Store {
            accumulate,
            ..Store::default()
        };
        gather(isa, &plan, n, dy, w_taps, dx, st);
        return;
    }
    let mut dxr = vec![0.0; dx.len() * m];
    gather(isa, &plan, n, dy, w_taps, &mut dxr, Store::default());
    dx.par_chunks_mut(g.c_in * 256)
        .zip(dxr.par_chunks(g.c_in * 256 * m))
        .for_each(|(d, s)| {
            for (dv, sv) in d.iter_mut().zip(s.chunks_exact(m)) {
                let sum = sv.iter().fold(0.0, |a, b| a + b);
                *dv = if accumulate { *dv + sum } else { sum };
            }
        });
}

/// Backward weight of `n` images: `dw = sum_images x^T * dy` in the engine's packed layout
/// (as [`super::backward_weight`]), and `db = sum dy` when asked. Both overwrite their
/// outputs; the sums are over fixed chunks of images reduced in order.
pub fn backward_weight(
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    backward_weight_isa(Isa::detect(), g, n, x, dy, dw, db)
}

pub(crate) fn backward_weight_isa(
    isa: Isa,
    g: &ConvGeom,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    assert!(supports(g), "depthwise geometry checked by the caller");
    assert_eq!(x.len(), n * g.in_len(), "depthwise input length");
    assert_eq!(
        dy.len(),
        n * g.out_len(),
        "depthwise output gradient length"
    );
    assert_eq!(dw.len(), g.weight_len(), "depthwise weight gradient length");
    let m = g.cog();
    let c = g.c_out;
    let xr;
    let (x, x_len) = if m == 1 {
        (x, g.in_len())
    } else {
        xr = repeat_channels(x, g.c_in, m);
        (&xr[..], g.in_len() * m)
    };
    let rects = TapRects::new(g, c);
    let wl = g.weight_len();
    let bl = if db.is_some() { c } else { 0 };
    let part = wl + bl;
    let per = chunk_len(n);
    let n_chunks = n.div_ceil(per);
    // Images summed together tap by tap: as many as fit in about 256 KiB.
    let group = (65536 / (x_len + g.out_len()).max(1)).clamp(1, per);
    let mut partials = vec![0.0f32; n_chunks * part];
    partials
        .par_chunks_mut(part)
        .enumerate()
        .for_each(|(ci, pw)| {
            let (pw, pb) = pw.split_at_mut(wl);
            let (i0, i1) = (ci * per, ((ci + 1) * per).min(n));
            for j0 in (i0..i1).step_by(group) {
                let j1 = (j0 + group).min(i1);
                let (xs, dys) = (
                    &x[j0 * x_len..j1 * x_len],
                    &dy[j0 * g.out_len()..j1 * g.out_len()],
                );
                wgrad_images_isa(isa, &rects, j1 - j0, xs, dys, pw);
                if bl > 0 {
                    for r in dys.chunks_exact(c) {
                        pb.iter_mut().zip(r).for_each(|(b, v)| *b += *v);
                    }
                }
            }
        });
    if n_chunks == 1 {
        // One chunk (small batches): its partial is the sum, no reduction pass.
        packed_from_taps(g, &partials[..wl], dw);
    } else {
        let mut dw_taps = vec![0.0f32; wl];
        let mut wparts = Vec::with_capacity(n_chunks * wl);
        for ci in 0..n_chunks {
            wparts.extend_from_slice(&partials[ci * part..ci * part + wl]);
        }
        reduce_partials(&wparts, wl, &mut dw_taps, false);
        packed_from_taps(g, &dw_taps, dw);
    }
    if let Some(db) = db {
        db.fill(0.0);
        for ci in 0..n_chunks {
            for (b, v) in db
                .iter_mut()
                .zip(&partials[ci * part + wl..(ci + 1) * part])
            {
                *b += *v;
            }
        }
    }
}

#[cfg(test)]
mod tests;
