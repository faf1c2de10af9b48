//! The backend seam: every kernel the executor runs goes through [`Backend`].
//!
//! Activations are channels-last batches `[n, s, c]` of f32 in host memory (see
//! [`crate::kernels`]). [`CpuBackend`] is the only implementation; a CUDA backend would
//! implement the same trait behind a cargo feature (and extend the buffer type it is handed).
//! Every method that writes a gradient takes `accumulate`: `true` adds into the destination
//! (an activation consumed by several nodes), `false` overwrites it.

use crate::kernels::binary::{self, BinaryGeom};
use crate::kernels::bn::{BnBackward, BnDx};
use crate::kernels::conv::{ConvGeom, PackedConv};
use crate::kernels::elementwise::ShortcutGeom;
use crate::kernels::layer_norm::{self, LayerNormGrads};
use crate::kernels::pool::PoolGeom;
use crate::kernels::{activation, bn, conv, elementwise as ew, linear, pool};
use shears_ir::Activation;

/// The kernels the executor needs. All slices are host f32, channels-last.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A short name (`"cpu"`).
    fn name(&self) -> &'static str;
    /// Converts an OIHW conv weight into the backend's layout.
    fn pack_conv(&self, g: &ConvGeom, oihw: &[f32]) -> PackedConv;
    /// Converts a conv weight gradient from the backend's layout to OIHW.
    fn unpack_conv(&self, g: &ConvGeom, packed: &[f32], oihw: &mut [f32]);
    /// Convolution forward of `n` images, with optional bias and fused ReLU.
    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &[f32],
        w: &PackedConv,
        bias: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
    );
    /// Convolution forward with a residual laid out like `y` added after the bias and before
    /// the ReLU (see [`conv::forward_add`]): the end of a residual block in one pass.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_forward_add(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &[f32],
        w: &PackedConv,
        bias: Option<&[f32]>,
        residual: &[f32],
        relu: bool,
        y: &mut [f32],
    );
    /// Two chained convolutions (see [`conv::forward_chain`]): `y = conv2(relu(conv1(x) + b1))
    /// (+ b2) (+ x with `io.residual`) (then ReLU)`, input and output channels-last or, as
    /// `io` says, padded channel-major planes; only for [`conv::chainable`] geometries.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_chain_forward(
        &self,
        g1: &ConvGeom,
        g2: &ConvGeom,
        n: usize,
        x: &[f32],
        w1: &PackedConv,
        b1: &[f32],
        w2: &PackedConv,
        b2: Option<&[f32]>,
        relu2: bool,
        io: conv::ChainIo,
        y: &mut [f32],
    );
    /// Convolution backward data.
    fn conv2d_backward_data(
        &self,
        g: &ConvGeom,
        n: usize,
        dy: &[f32],
        w: &PackedConv,
        dx: &mut [f32],
        accumulate: bool,
    );
    /// Convolution backward weight (packed layout) and bias, both overwritten.
    fn conv2d_backward_weight(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        db: Option<&mut [f32]>,
    );
    /// Per-channel mean and biased variance of `[rows, c]`.
    fn channel_stats(&self, x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>);
    /// Per-channel `y = x * scale + shift (+ residual)`, then ReLU if asked.
    fn scale_shift(
        &self,
        x: &[f32],
        c: usize,
        scale: &[f32],
        shift: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
    );
    /// Batch-norm backward from `dy` (changed only by [`BnDx::InPlace`]); returns
    /// `(dgamma, dbeta)`.
    fn batch_norm_backward(
        &self,
        a: &BnBackward<'_>,
        dy: &mut [f32],
        dx: BnDx<'_>,
        dmid: Option<&mut [f32]>,
    ) -> (Vec<f32>, Vec<f32>);
    /// Layer norm over the `c` channels of each row: `y = xhat * gamma + beta`.
    fn layer_norm_forward(
        &self,
        x: &[f32],
        c: usize,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        y: &mut [f32],
    );
    /// Layer-norm backward from its input `x`: the input gradient where asked, and
    /// `(dgamma, dbeta)` when `grads.params`.
    fn layer_norm_backward(
        &self,
        x: &[f32],
        c: usize,
        gamma: &[f32],
        eps: f32,
        dy: &[f32],
        grads: LayerNormGrads<'_>,
    ) -> Option<(Vec<f32>, Vec<f32>)>;
    /// ReLU forward.
    fn relu_forward(&self, x: &[f32], y: &mut [f32]);
    /// ReLU backward from the ReLU's output `y`.
    fn relu_backward(&self, y: &[f32], dy: &[f32], dx: &mut [f32], accumulate: bool);
    /// Forward of another unary activation.
    fn act_forward(&self, a: Activation, x: &[f32], y: &mut [f32]);
    /// Backward of another unary activation, from its input `x`.
    fn act_backward(&self, a: Activation, x: &[f32], dy: &[f32], dx: &mut [f32], accumulate: bool);
    /// Max pooling forward, optionally recording the argmax.
    fn max_pool_forward(
        &self,
        g: &PoolGeom,
        n: usize,
        x: &[f32],
        y: &mut [f32],
        argmax: Option<&mut [u32]>,
    );
    /// Max pooling backward.
    fn max_pool_backward(
        &self,
        g: &PoolGeom,
        n: usize,
        argmax: &[u32],
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    );
    /// Average pooling forward.
    fn avg_pool_forward(&self, g: &PoolGeom, n: usize, x: &[f32], y: &mut [f32]);
    /// Average pooling backward.
    fn avg_pool_backward(
        &self,
        g: &PoolGeom,
        n: usize,
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    );
    /// Global average pooling forward (`[n, s, c]` to `[n, c]`).
    fn global_avg_pool_forward(&self, n: usize, s: usize, c: usize, x: &[f32], y: &mut [f32]);
    /// Global average pooling backward.
    fn global_avg_pool_backward(
        &self,
        n: usize,
        s: usize,
        c: usize,
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    );
    /// Linear forward `y = x w^T + b` (weight `[o, i]`).
    fn linear_forward(
        &self,
        n: usize,
        i: usize,
        o: usize,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        y: &mut [f32],
    );
    /// Linear backward data.
    fn linear_backward_data(
        &self,
        n: usize,
        i: usize,
        o: usize,
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    );
    /// Linear backward weight and bias, overwritten.
    fn linear_backward_weight(
        &self,
        n: usize,
        i: usize,
        o: usize,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        db: Option<&mut [f32]>,
    );
    /// Sum of the inputs, in order, then ReLU if asked.
    fn add_forward(&self, xs: &[&[f32]], relu: bool, y: &mut [f32]);
    /// `g *= (y > 0)` in place, given a ReLU's output `y`.
    fn relu_mask_in_place(&self, y: &[f32], g: &mut [f32]);
    /// `dst (+)= src`.
    fn copy_or_add(&self, src: &[f32], dst: &mut [f32], accumulate: bool);
    /// Channel gather: output channel `o` of each row is input channel `src[o]` of `c_in`.
    fn channel_gather_forward(&self, src: &[usize], c_in: usize, x: &[f32], y: &mut [f32]);
    /// Backward of a channel gather: `dx[.., src[o]] (+)= dy[.., o]`, other channels 0 (or
    /// unchanged when accumulating).
    fn channel_gather_backward(
        &self,
        src: &[usize],
        c_in: usize,
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    );
    /// Channel concatenation of `(data, channels)` parts.
    fn concat_forward(&self, parts: &[(&[f32], usize)], y: &mut [f32]);
    /// Gradient of one concat part (channels `off..off + c` of `ct`).
    fn concat_backward(
        &self,
        dy: &[f32],
        ct: usize,
        off: usize,
        c: usize,
        dx: &mut [f32],
        accumulate: bool,
    );
    /// Dropout with a counter-based mask keyed by `key` (forward and backward alike).
    fn dropout(&self, key: u64, p: f32, x: &[f32], y: &mut [f32], accumulate: bool);
    /// Option-A shortcut forward.
    fn shortcut_forward(&self, g: &ShortcutGeom, n: usize, x: &[f32], y: &mut [f32]);
    /// Option-A shortcut backward.
    fn shortcut_backward(
        &self,
        g: &ShortcutGeom,
        n: usize,
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    );
    /// Broadcasting `a op b` (see [`binary::forward`]).
    fn binary_forward(&self, g: &BinaryGeom, n: usize, a: &[f32], b: &[f32], y: &mut [f32]);
    /// Gradient of one operand of a broadcasting binary op (see [`binary::backward`]).
    #[allow(clippy::too_many_arguments)]
    fn binary_backward(
        &self,
        g: &BinaryGeom,
        side: binary::Side,
        n: usize,
        a: &[f32],
        b: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    );
    /// `[n, s, c]` to `[n, c, s]`.
    fn to_channels_first(
        &self,
        n: usize,
        s: usize,
        c: usize,
        x: &[f32],
        y: &mut [f32],
        accumulate: bool,
    );
    /// `[n, c, s]` to `[n, s, c]`.
    fn to_channels_last(
        &self,
        n: usize,
        s: usize,
        c: usize,
        x: &[f32],
        y: &mut [f32],
        accumulate: bool,
    );
}

/// The CPU backend: `gemm`-based kernels, rayon across the batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn pack_conv(&self, g: &ConvGeom, oihw: &[f32]) -> PackedConv {
        conv::pack_weight(g, oihw)
    }
    fn unpack_conv(&self, g: &ConvGeom, packed: &[f32], oihw: &mut [f32]) {
        conv::unpack_weight(g, packed, oihw)
    }
    fn conv2d_forward(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &[f32],
        w: &PackedConv,
        bias: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
    ) {
        conv::forward(g, n, x, w, bias, relu, y)
    }
    fn conv2d_forward_add(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &[f32],
        w: &PackedConv,
        bias: Option<&[f32]>,
        residual: &[f32],
        relu: bool,
        y: &mut [f32],
    ) {
        conv::forward_add(g, n, x, w, bias, Some(residual), relu, y)
    }
    fn conv2d_chain_forward(
        &self,
        g1: &ConvGeom,
        g2: &ConvGeom,
        n: usize,
        x: &[f32],
        w1: &PackedConv,
        b1: &[f32],
        w2: &PackedConv,
        b2: Option<&[f32]>,
        relu2: bool,
        io: conv::ChainIo,
        y: &mut [f32],
    ) {
        conv::forward_chain(g1, g2, n, x, w1, b1, w2, b2, relu2, io, y)
    }
    fn conv2d_backward_data(
        &self,
        g: &ConvGeom,
        n: usize,
        dy: &[f32],
        w: &PackedConv,
        dx: &mut [f32],
        accumulate: bool,
    ) {
        conv::backward_data(g, n, dy, w, dx, accumulate)
    }
    fn conv2d_backward_weight(
        &self,
        g: &ConvGeom,
        n: usize,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        db: Option<&mut [f32]>,
    ) {
        conv::backward_weight(g, n, x, dy, dw, db)
    }
    fn channel_stats(&self, x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
        bn::stats(x, c)
    }
    fn scale_shift(
        &self,
        x: &[f32],
        c: usize,
        scale: &[f32],
        shift: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
    ) {
        bn::scale_shift(x, c, scale, shift, residual, relu, y)
    }
    fn batch_norm_backward(
        &self,
        a: &BnBackward<'_>,
        dy: &mut [f32],
        dx: BnDx<'_>,
        dmid: Option<&mut [f32]>,
    ) -> (Vec<f32>, Vec<f32>) {
        bn::backward(a, dy, dx, dmid)
    }
    fn layer_norm_forward(
        &self,
        x: &[f32],
        c: usize,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        y: &mut [f32],
    ) {
        layer_norm::forward(x, c, gamma, beta, eps, y)
    }
    fn layer_norm_backward(
        &self,
        x: &[f32],
        c: usize,
        gamma: &[f32],
        eps: f32,
        dy: &[f32],
        grads: LayerNormGrads<'_>,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        layer_norm::backward(x, c, gamma, eps, dy, grads)
    }
    fn relu_forward(&self, x: &[f32], y: &mut [f32]) {
        ew::relu_forward(x, y)
    }
    fn relu_backward(&self, y: &[f32], dy: &[f32], dx: &mut [f32], accumulate: bool) {
        ew::relu_backward(y, dy, dx, accumulate)
    }
    fn act_forward(&self, a: Activation, x: &[f32], y: &mut [f32]) {
        activation::forward(a, x, y)
    }
    fn act_backward(&self, a: Activation, x: &[f32], dy: &[f32], dx: &mut [f32], accumulate: bool) {
        activation::backward(a, x, dy, dx, accumulate)
    }
    fn max_pool_forward(
        &self,
        g: &PoolGeom,
        n: usize,
        x: &[f32],
        y: &mut [f32],
        argmax: Option<&mut [u32]>,
    ) {
        pool::max_forward(g, n, x, y, argmax)
    }
    fn max_pool_backward(
        &self,
        g: &PoolGeom,
        n: usize,
        argmax: &[u32],
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) {
        pool::max_backward(g, n, argmax, dy, dx, accumulate)
    }
    fn avg_pool_forward(&self, g: &PoolGeom, n: usize, x: &[f32], y: &mut [f32]) {
        pool::avg_forward(g, n, x, y)
    }
    fn avg_pool_backward(
        &self,
        g: &PoolGeom,
        n: usize,
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) {
        pool::avg_backward(g, n, dy, dx, accumulate)
    }
    fn global_avg_pool_forward(&self, n: usize, s: usize, c: usize, x: &[f32], y: &mut [f32]) {
        pool::global_avg_forward(n, s, c, x, y)
    }
    fn global_avg_pool_backward(
        &self,
        n: usize,
        s: usize,
        c: usize,
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) {
        pool::global_avg_backward(n, s, c, dy, dx, accumulate)
    }
    fn linear_forward(
        &self,
        n: usize,
        i: usize,
        o: usize,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        y: &mut [f32],
    ) {
        linear::forward(n, i, o, x, w, b, y)
    }
    fn linear_backward_data(
        &self,
        n: usize,
        i: usize,
        o: usize,
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) {
        linear::backward_data(n, i, o, dy, w, dx, accumulate)
    }
    fn linear_backward_weight(
        &self,
        n: usize,
        i: usize,
        o: usize,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        db: Option<&mut [f32]>,
    ) {
        linear::backward_weight(n, i, o, x, dy, dw, db)
    }
    fn add_forward(&self, xs: &[&[f32]], relu: bool, y: &mut [f32]) {
        ew::add_forward(xs, relu, y)
    }
    fn relu_mask_in_place(&self, y: &[f32], g: &mut [f32]) {
        ew::relu_mask_in_place(y, g)
    }
    fn copy_or_add(&self, src: &[f32], dst: &mut [f32], accumulate: bool) {
        ew::copy_or_add(src, dst, accumulate)
    }
    fn channel_gather_forward(&self, src: &[usize], c_in: usize, x: &[f32], y: &mut [f32]) {
        crate::kernels::channels::gather_forward(src, c_in, x, y)
    }
    fn channel_gather_backward(
        &self,
        src: &[usize],
        c_in: usize,
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) {
        crate::kernels::channels::gather_backward(src, c_in, dy, dx, accumulate)
    }
    fn concat_forward(&self, parts: &[(&[f32], usize)], y: &mut [f32]) {
        ew::concat_forward(parts, y)
    }
    fn concat_backward(
        &self,
        dy: &[f32],
        ct: usize,
        off: usize,
        c: usize,
        dx: &mut [f32],
        accumulate: bool,
    ) {
        ew::concat_backward(dy, ct, off, c, dx, accumulate)
    }
    fn dropout(&self, key: u64, p: f32, x: &[f32], y: &mut [f32], accumulate: bool) {
        ew::dropout(key, p, x, y, accumulate)
    }
    fn shortcut_forward(&self, g: &ShortcutGeom, n: usize, x: &[f32], y: &mut [f32]) {
        ew::shortcut_forward(g, n, x, y)
    }
    fn shortcut_backward(
        &self,
        g: &ShortcutGeom,
        n: usize,
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) {
        ew::shortcut_backward(g, n, dy, dx, accumulate)
    }
    fn binary_forward(&self, g: &BinaryGeom, n: usize, a: &[f32], b: &[f32], y: &mut [f32]) {
        binary::forward(g, n, a, b, y)
    }
    fn binary_backward(
        &self,
        g: &BinaryGeom,
        side: binary::Side,
        n: usize,
        a: &[f32],
        b: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) {
        binary::backward(g, side, n, a, b, dy, dx, accumulate)
    }
    fn to_channels_first(
        &self,
        n: usize,
        s: usize,
        c: usize,
        x: &[f32],
        y: &mut [f32],
        accumulate: bool,
    ) {
        ew::to_channels_first(n, s, c, x, y, accumulate)
    }
    fn to_channels_last(
        &self,
        n: usize,
        s: usize,
        c: usize,
        x: &[f32],
        y: &mut [f32],
        accumulate: bool,
    ) {
        ew::to_channels_last(n, s, c, x, y, accumulate)
    }
}
