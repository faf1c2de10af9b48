//! The closed op set: configuration, shape inference, parameters, cost and channel maps.
//!
//! Shapes here are per sample: the batch axis is implicit. A feature map is `[C, H, W]`, a
//! feature vector `[F]`. For the purpose of channel maps a vector's features are its channels.

use serde::{Deserialize, Serialize};

use crate::binary::Binary;
use crate::channel::ChannelOp;
use crate::layer_norm::LayerNorm;
use crate::{Activation, IrError};

/// 2-D convolution, PyTorch semantics (cross-correlation), weight `[c_out, c_in / groups, kh, kw]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (filters).
    pub out_channels: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`; default 1.
    pub stride: [usize; 2],
    /// Zero padding `[top, left, bottom, right]`; asymmetric padding expresses TensorFlow `same`.
    pub padding: [usize; 4],
    /// Dilation `[dh, dw]`; default 1.
    pub dilation: [usize; 2],
    /// Groups; `in_channels` and `out_channels` must both be divisible by it.
    pub groups: usize,
    /// Whether a bias `[c_out]` is added.
    pub bias: bool,
}

impl Conv2d {
    /// A square `k`x`k` convolution with stride 1, no padding, no bias, one group.
    pub fn new(in_channels: usize, out_channels: usize, k: usize) -> Self {
        Conv2d {
            in_channels,
            out_channels,
            kernel: [k, k],
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: 1,
            bias: false,
        }
    }

    /// Sets the same stride on both axes.
    pub fn with_stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }

    /// Sets symmetric padding `p` on all four sides.
    pub fn with_padding(mut self, p: usize) -> Self {
        self.padding = [p; 4];
        self
    }

    /// Sets explicit `[top, left, bottom, right]` padding.
    pub fn with_padding4(mut self, p: [usize; 4]) -> Self {
        self.padding = p;
        self
    }

    /// Sets the same dilation on both axes.
    pub fn with_dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }

    /// Sets the number of groups.
    pub fn with_groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }

    /// Enables or disables the bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Output spatial size for an input of `h` x `w`, or `None` if the kernel does not fit.
    pub fn output_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let ekh = self.dilation[0].checked_mul(self.kernel[0].checked_sub(1)?)? + 1;
        let ekw = self.dilation[1].checked_mul(self.kernel[1].checked_sub(1)?)? + 1;
        let ph = h
            .checked_add(self.padding[0])?
            .checked_add(self.padding[2])?;
        let pw = w
            .checked_add(self.padding[1])?
            .checked_add(self.padding[3])?;
        if ph < ekh || pw < ekw || self.stride.contains(&0) {
            return None;
        }
        Some((
            (ph - ekh) / self.stride[0] + 1,
            (pw - ekw) / self.stride[1] + 1,
        ))
    }

    /// Shape of the weight tensor, OIHW.
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![
            self.out_channels,
            self.in_channels / self.groups,
            self.kernel[0],
            self.kernel[1],
        ]
    }
}

/// Batch normalisation over the channel axis (inference: `(x - mean) / sqrt(var + eps) * w + b`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm2d {
    /// Number of channels.
    pub num_features: usize,
    /// Added to the variance; PyTorch default 1e-5, Keras 1e-3.
    pub eps: f32,
    /// Running-statistics update factor in training mode (PyTorch convention); default 0.1.
    pub momentum: f32,
}

impl BatchNorm2d {
    /// PyTorch defaults: eps 1e-5, momentum 0.1.
    pub fn new(num_features: usize) -> Self {
        BatchNorm2d {
            num_features,
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Sets eps.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }
}

/// Max or average pooling window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool2d {
    /// Window `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]`: ignored by max pooling, counted as zeros by average
    /// pooling when `count_include_pad` is set.
    pub padding: [usize; 4],
    /// Average pooling only: whether padded cells count in the divisor (PyTorch default true).
    /// As in PyTorch, a window is clipped to the padded extent before counting.
    pub count_include_pad: bool,
    /// Whether the output size rounds up (PyTorch / ONNX `ceil_mode`): a last, partial window
    /// is added where it starts inside the image or its top / left padding. Default false.
    #[serde(default)]
    pub ceil_mode: bool,
}

impl Pool2d {
    /// A square window `k` with stride `s` and no padding.
    pub fn new(k: usize, s: usize) -> Self {
        Pool2d {
            kernel: [k, k],
            stride: [s, s],
            padding: [0; 4],
            count_include_pad: true,
            ceil_mode: false,
        }
    }

    /// Sets symmetric padding.
    pub fn with_padding(mut self, p: usize) -> Self {
        self.padding = [p; 4];
        self
    }

    /// Sets whether the output size rounds up.
    pub fn with_ceil_mode(mut self, ceil: bool) -> Self {
        self.ceil_mode = ceil;
        self
    }

    /// Output spatial size, or `None` if the window does not fit.
    pub fn output_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        Some((self.output_len(0, h)?, self.output_len(1, w)?))
    }

    /// Output length along axis `a` (0 rows, 1 columns) for an input of length `n`: PyTorch's
    /// `pooling_output_shape`, where in ceil mode a last window that would start in the
    /// bottom / right padding is dropped.
    fn output_len(&self, a: usize, n: usize) -> Option<usize> {
        let (k, s) = (self.kernel[a], self.stride[a]);
        let (before, after) = (self.padding[a], self.padding[a + 2]);
        let span = n.checked_add(before)?.checked_add(after)?;
        if span < k || s == 0 {
            return None;
        }
        let mut out = if self.ceil_mode {
            (span - k).div_ceil(s) + 1
        } else {
            (span - k) / s + 1
        };
        if self.ceil_mode && (out - 1) * s >= n + before {
            out -= 1;
        }
        Some(out)
    }
}

/// Fully connected layer, weight `[out_features, in_features]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Linear {
    /// Input features.
    pub in_features: usize,
    /// Output features (neurons).
    pub out_features: usize,
    /// Whether a bias `[out_features]` is added.
    pub bias: bool,
}

/// The option-A residual shortcut of the CIFAR ResNets: keep every `stride`-th row and column
/// (`x[:, :, ::s, ::s]`) and zero-pad the channel axis with `pad_before` channels in front and
/// `pad_after` behind. Parameter-free.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShortcutA {
    /// Spatial subsampling step.
    pub stride: usize,
    /// Zero channels added before the input's channels.
    pub pad_before: usize,
    /// Zero channels added after the input's channels.
    pub pad_after: usize,
}

/// The closed set of operations. Each node holds exactly one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A graph input with per-sample shape `shape` (e.g. `[3, 32, 32]`).
    Input {
        /// Per-sample shape.
        shape: Vec<usize>,
    },
    /// 2-D convolution.
    Conv2d(Conv2d),
    /// Batch normalisation.
    BatchNorm2d(BatchNorm2d),
    /// Rectified linear unit.
    Relu,
    /// Any other unary activation.
    Act(Activation),
    /// Max pooling.
    MaxPool2d(Pool2d),
    /// Average pooling.
    AvgPool2d(Pool2d),
    /// Mean over the spatial axes: `[C, H, W]` to `[C]`.
    GlobalAvgPool,
    /// Fully connected layer on a `[F]` vector.
    Linear(Linear),
    /// `[C, H, W]` to `[C*H*W]` in C, H, W order.
    Flatten,
    /// Elementwise sum of two or more inputs of equal shape.
    Add,
    /// Concatenation of two or more inputs along the channel axis.
    Concat,
    /// Dropout with probability `p` (identity in eval mode).
    Dropout {
        /// Drop probability in `[0, 1)`.
        p: f32,
    },
    /// Option-A shortcut (subsample + channel zero-padding).
    ShortcutA(ShortcutA),
    /// Identity.
    Identity,
    /// Broadcasting elementwise arithmetic (`Add`, `Sub`, `Mul`, `Div`), with an optional
    /// constant operand held as the `weight` parameter.
    Binary(Binary),
    /// A channel gather: ShuffleNet's channel shuffle or a channel range.
    Channel(ChannelOp),
    /// Layer normalisation over the channels of each pixel, weight and bias `[C]`.
    LayerNorm(LayerNorm),
}

/// What a parameter or buffer tensor of an op is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// Conv / linear weight, or BN scale (gamma).
    Weight,
    /// Conv / linear bias, or BN shift (beta).
    Bias,
    /// BN running mean (a buffer, not trained by gradient).
    RunningMean,
    /// BN running variance (a buffer, not trained by gradient).
    RunningVar,
}

impl ParamKind {
    /// The suffix used in tensor names (`weight`, `bias`, `running_mean`, `running_var`).
    pub fn suffix(self) -> &'static str {
        match self {
            ParamKind::Weight => "weight",
            ParamKind::Bias => "bias",
            ParamKind::RunningMean => "running_mean",
            ParamKind::RunningVar => "running_var",
        }
    }

    /// Whether gradient descent trains it (false for BN running statistics).
    pub fn is_trainable(self) -> bool {
        matches!(self, ParamKind::Weight | ParamKind::Bias)
    }
}

/// A parameter an op expects, with its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// Which tensor.
    pub kind: ParamKind,
    /// Its shape (PyTorch layout).
    pub shape: Vec<usize>,
}

/// How an op links the channel axis of its inputs to the channel axis of its output.
///
/// The pruning dependency graph walks these; no model is special-cased. For a `[F]` vector the
/// "channels" are its features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelMap {
    /// The graph input: channels come from outside and can never be removed.
    Source,
    /// Conv2d / Linear: input channels are consumed by weight axis 1, output channels are
    /// created by weight axis 0. With `groups > 1` input channel `i` belongs to group
    /// `i / (c_in / groups)` and only feeds that group's filters; a depthwise conv
    /// (`groups == c_in`) links its input and output channel groups.
    Transform {
        /// Conv groups (1 for Linear).
        groups: usize,
    },
    /// Output channel `i` is input channel `i` of every input (BN, ReLU and the other
    /// activations, pooling, global pool,
    /// dropout, identity, and `Add`, which thereby couples all its inputs). Layer norm maps
    /// channel to channel too, but its statistics read all of them, so pruning blocks them.
    Elementwise,
    /// Output channels are the inputs' channels laid end to end; input `k` starts at
    /// `offsets[k]`.
    Concat {
        /// Start of each input in the output channel axis.
        offsets: Vec<usize>,
    },
    /// Input channel `c` becomes output features `c * per_channel .. (c + 1) * per_channel`.
    Flatten {
        /// Features per input channel (`H * W`).
        per_channel: usize,
    },
    /// Elementwise with channel broadcasting ([`Op::Binary`]): output channel `i` is channel `i`
    /// of every input whose flag is false; an input whose flag is true has one channel that
    /// every output channel reads, so it links to none of them.
    Broadcast {
        /// Per input, whether its single channel is broadcast over the output's channels.
        channel_broadcast: Vec<bool>,
    },
    /// Output channel `offset + i` is input channel `i`; the other output channels are constant
    /// zero (option-A shortcut).
    Pad {
        /// Zero channels in front.
        offset: usize,
        /// Output channels in total.
        out_channels: usize,
    },
    /// Output channel `o` is input channel `sources[o]` ([`Op::Channel`]); input channels not
    /// listed are dropped. The input channels of each `tied` set must be removed together.
    Select {
        /// The input channel of each output channel.
        sources: Vec<usize>,
        /// Sets of input channels that only go together.
        tied: Vec<Vec<usize>>,
    },
}

impl Op {
    /// A short lowercase name of the op type, for messages and tables.
    pub fn type_name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv2d(_) => "conv2d",
            Op::BatchNorm2d(_) => "batch_norm2d",
            Op::Relu => "relu",
            Op::Act(a) => a.name(),
            Op::MaxPool2d(_) => "max_pool2d",
            Op::AvgPool2d(_) => "avg_pool2d",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Linear(_) => "linear",
            Op::Flatten => "flatten",
            Op::Add => "add",
            Op::Concat => "concat",
            Op::Dropout { .. } => "dropout",
            Op::ShortcutA(_) => "shortcut_a",
            Op::Identity => "identity",
            Op::Binary(_) => "binary",
            Op::Channel(c) => c.name(),
            Op::LayerNorm(_) => "layer_norm",
        }
    }

    /// Allowed number of inputs `(min, max)`.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Input { .. } => (0, 0),
            Op::Add | Op::Concat => (2, usize::MAX),
            Op::Binary(b) => (b.n_inputs(), b.n_inputs()),
            _ => (1, 1),
        }
    }

    /// Parameters and buffers this op needs, in a fixed order.
    pub fn params(&self) -> Vec<ParamSpec> {
        let p = |kind, shape: Vec<usize>| ParamSpec { kind, shape };
        match self {
            Op::Conv2d(c) => {
                let mut v = vec![p(ParamKind::Weight, c.weight_shape())];
                if c.bias {
                    v.push(p(ParamKind::Bias, vec![c.out_channels]));
                }
                v
            }
            Op::Linear(l) => {
                let mut v = vec![p(ParamKind::Weight, vec![l.out_features, l.in_features])];
                if l.bias {
                    v.push(p(ParamKind::Bias, vec![l.out_features]));
                }
                v
            }
            Op::LayerNorm(l) => vec![
                p(ParamKind::Weight, vec![l.channels]),
                p(ParamKind::Bias, vec![l.channels]),
            ],
            Op::BatchNorm2d(b) => {
                let n = b.num_features;
                vec![
                    p(ParamKind::Weight, vec![n]),
                    p(ParamKind::Bias, vec![n]),
                    p(ParamKind::RunningMean, vec![n]),
                    p(ParamKind::RunningVar, vec![n]),
                ]
            }
            Op::Binary(b) => b
                .constant
                .iter()
                .map(|c| p(ParamKind::Weight, c.shape.clone()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Checks the op's own configuration (independent of input shapes).
    pub fn check_config(&self) -> Result<(), String> {
        self.check_values()?;
        for p in self.params() {
            checked_numel(&p.shape).map_err(|e| format!("{} parameter: {e}", p.kind.suffix()))?;
        }
        Ok(())
    }

    fn check_values(&self) -> Result<(), String> {
        match self {
            Op::Input { shape } => {
                if shape.is_empty() || shape.contains(&0) {
                    return Err(format!(
                        "input shape {shape:?} must be non-empty with no zero axis"
                    ));
                }
            }
            Op::Conv2d(c) => {
                if c.in_channels == 0 || c.out_channels == 0 || c.groups == 0 {
                    return Err(format!(
                        "conv2d channels and groups must be positive (in {}, out {}, groups {})",
                        c.in_channels, c.out_channels, c.groups
                    ));
                }
                if c.in_channels % c.groups != 0 || c.out_channels % c.groups != 0 {
                    return Err(format!(
                        "conv2d groups {} must divide in_channels {} and out_channels {}",
                        c.groups, c.in_channels, c.out_channels
                    ));
                }
                if c.kernel.contains(&0) || c.stride.contains(&0) || c.dilation.contains(&0) {
                    return Err(format!(
                        "conv2d kernel {:?}, stride {:?} and dilation {:?} must be positive",
                        c.kernel, c.stride, c.dilation
                    ));
                }
            }
            Op::BatchNorm2d(b) => {
                if b.num_features == 0 {
                    return Err("batch_norm2d num_features must be positive".into());
                }
                if !(b.eps > 0.0 && b.eps.is_finite()) {
                    return Err(format!(
                        "batch_norm2d eps {} must be positive and finite",
                        b.eps
                    ));
                }
                if !(0.0..=1.0).contains(&b.momentum) {
                    return Err(format!(
                        "batch_norm2d momentum {} must be in [0, 1]",
                        b.momentum
                    ));
                }
            }
            Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                if p.kernel.contains(&0) || p.stride.contains(&0) {
                    return Err(format!(
                        "pool kernel {:?} and stride {:?} must be positive",
                        p.kernel, p.stride
                    ));
                }
            }
            Op::Linear(l) => {
                if l.in_features == 0 || l.out_features == 0 {
                    return Err(format!(
                        "linear features must be positive (in {}, out {})",
                        l.in_features, l.out_features
                    ));
                }
            }
            Op::Dropout { p } => {
                if !(0.0..1.0).contains(p) {
                    return Err(format!("dropout p {p} must be in [0, 1)"));
                }
            }
            Op::ShortcutA(s) => {
                if s.stride == 0 {
                    return Err("shortcut_a stride must be positive".into());
                }
            }
            Op::Act(a) => a.check()?,
            Op::Channel(c) => c.check()?,
            Op::LayerNorm(l) => l.check()?,
            Op::Relu
            | Op::GlobalAvgPool
            | Op::Flatten
            | Op::Add
            | Op::Concat
            | Op::Identity
            | Op::Binary(_) => {}
        }
        Ok(())
    }

    /// Infers the per-sample output shape from the input shapes, or says what is wrong.
    pub fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        let out = self.output_shape_unchecked(inputs)?;
        checked_numel(&out)?;
        Ok(out)
    }

    fn output_shape_unchecked(&self, inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
        self.check_config()?;
        let (lo, hi) = self.arity();
        if inputs.len() < lo || inputs.len() > hi {
            return Err(format!(
                "{} takes {} input(s), got {}",
                self.type_name(),
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("at least {lo}")
                },
                inputs.len()
            ));
        }
        let chw = |s: &[usize]| -> Result<(usize, usize, usize), String> {
            match s {
                [c, h, w] => Ok((*c, *h, *w)),
                _ => Err(format!(
                    "{} expects a [C, H, W] input, got {s:?}",
                    self.type_name()
                )),
            }
        };
        match self {
            Op::Input { shape } => Ok(shape.clone()),
            Op::Conv2d(c) => {
                let (ci, h, w) = chw(inputs[0])?;
                if ci != c.in_channels {
                    return Err(format!(
                        "conv2d expects {} input channels, got {ci}",
                        c.in_channels
                    ));
                }
                let (oh, ow) = c.output_hw(h, w).ok_or_else(|| {
                    format!("conv2d kernel {:?} does not fit input {h}x{w}", c.kernel)
                })?;
                Ok(vec![c.out_channels, oh, ow])
            }
            Op::BatchNorm2d(b) => {
                let s = inputs[0];
                if s.first() != Some(&b.num_features) {
                    return Err(format!(
                        "batch_norm2d expects {} channels, got shape {s:?}",
                        b.num_features
                    ));
                }
                Ok(s.to_vec())
            }
            Op::Relu | Op::Act(_) | Op::Dropout { .. } | Op::Identity => Ok(inputs[0].to_vec()),
            Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                let (c, h, w) = chw(inputs[0])?;
                let (oh, ow) = p.output_hw(h, w).ok_or_else(|| {
                    format!("pool window {:?} does not fit input {h}x{w}", p.kernel)
                })?;
                Ok(vec![c, oh, ow])
            }
            Op::GlobalAvgPool => {
                let (c, _, _) = chw(inputs[0])?;
                Ok(vec![c])
            }
            Op::Linear(l) => match inputs[0] {
                [f] if *f == l.in_features => Ok(vec![l.out_features]),
                s => Err(format!(
                    "linear expects a [{}] input, got {s:?}",
                    l.in_features
                )),
            },
            Op::Flatten => Ok(vec![checked_numel(inputs[0])?]),
            Op::Add => {
                let first = inputs[0];
                for s in &inputs[1..] {
                    if *s != first {
                        return Err(format!("add inputs differ in shape: {first:?} and {s:?}"));
                    }
                }
                Ok(first.to_vec())
            }
            Op::Concat => {
                let first = inputs[0];
                let mut c = 0usize;
                for s in inputs {
                    if s.len() != first.len() || s.is_empty() || s[1..] != first[1..] {
                        return Err(format!(
                            "concat inputs must agree on all but the channel axis: {first:?} and {s:?}"
                        ));
                    }
                    c = c
                        .checked_add(s[0])
                        .ok_or("concat channel count overflows")?;
                }
                let mut out = first.to_vec();
                out[0] = c;
                Ok(out)
            }
            Op::Binary(b) => b.output_shape(inputs),
            Op::Channel(c) => c.output_shape(inputs[0]),
            Op::LayerNorm(l) => l.output_shape(inputs[0]),
            Op::ShortcutA(s) => {
                let (c, h, w) = chw(inputs[0])?;
                Ok(vec![
                    c + s.pad_before + s.pad_after,
                    h.div_ceil(s.stride),
                    w.div_ceil(s.stride),
                ])
            }
        }
    }

    /// The channel map of this op for the given input shapes.
    pub fn channel_map(&self, inputs: &[&[usize]]) -> ChannelMap {
        match self {
            Op::Input { .. } => ChannelMap::Source,
            Op::Conv2d(c) => ChannelMap::Transform { groups: c.groups },
            Op::Linear(_) => ChannelMap::Transform { groups: 1 },
            Op::Concat => {
                let mut offsets = Vec::with_capacity(inputs.len());
                let mut o = 0;
                for s in inputs {
                    offsets.push(o);
                    o += s.first().copied().unwrap_or(0);
                }
                ChannelMap::Concat { offsets }
            }
            Op::Flatten => ChannelMap::Flatten {
                per_channel: inputs.first().map(|s| s[1..].iter().product()).unwrap_or(1),
            },
            Op::ShortcutA(s) => {
                let c = inputs.first().and_then(|s| s.first()).copied().unwrap_or(0);
                ChannelMap::Pad {
                    offset: s.pad_before,
                    out_channels: c + s.pad_before + s.pad_after,
                }
            }
            Op::Channel(c) => {
                c.channel_map(inputs.first().and_then(|s| s.first()).copied().unwrap_or(0))
            }
            Op::Binary(b) => {
                let channel_broadcast = b.channel_broadcast(inputs);
                if channel_broadcast.contains(&true) {
                    ChannelMap::Broadcast { channel_broadcast }
                } else {
                    ChannelMap::Elementwise
                }
            }
            _ => ChannelMap::Elementwise,
        }
    }

    /// Multiply-accumulate count per sample for conv and linear layers (0 for other ops),
    /// given the input and output shapes.
    pub fn macs(&self, output: &[usize]) -> u64 {
        match self {
            Op::Conv2d(c) => [
                c.out_channels,
                output[1..].iter().product(),
                c.in_channels / c.groups,
                c.kernel[0],
                c.kernel[1],
            ]
            .iter()
            .fold(1u64, |a, &d| a.saturating_mul(d as u64)),
            Op::Linear(l) => (l.in_features as u64).saturating_mul(l.out_features as u64),
            _ => 0,
        }
    }
}

impl From<Conv2d> for Op {
    fn from(c: Conv2d) -> Self {
        Op::Conv2d(c)
    }
}

impl From<BatchNorm2d> for Op {
    fn from(b: BatchNorm2d) -> Self {
        Op::BatchNorm2d(b)
    }
}

impl From<Linear> for Op {
    fn from(l: Linear) -> Self {
        Op::Linear(l)
    }
}

impl From<Binary> for Op {
    fn from(b: Binary) -> Self {
        Op::Binary(b)
    }
}

impl From<Activation> for Op {
    fn from(a: Activation) -> Self {
        Op::Act(a)
    }
}

impl From<ChannelOp> for Op {
    fn from(c: ChannelOp) -> Self {
        Op::Channel(c)
    }
}

impl From<LayerNorm> for Op {
    fn from(l: LayerNorm) -> Self {
        Op::LayerNorm(l)
    }
}

impl From<ShortcutA> for Op {
    fn from(s: ShortcutA) -> Self {
        Op::ShortcutA(s)
    }
}

/// Largest element count of one sample's tensor that a graph may declare (2^40).
pub const MAX_NUMEL: usize = 1 << 40;

/// The element count of a shape, or an error when it overflows or exceeds [`MAX_NUMEL`].
fn checked_numel(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_NUMEL)
        .ok_or_else(|| format!("shape {shape:?} has more than {MAX_NUMEL} elements"))
}

/// Wraps an op-level message into an error naming the node.
pub(crate) fn node_err(node: &str, op: &Op, msg: String) -> IrError {
    IrError::Node {
        node: node.to_string(),
        op: op.type_name(),
        msg,
    }
}
