//! Layer normalisation over the channel axis: [`LayerNorm`], the configuration of
//! [`Op::LayerNorm`].
//!
//! Each pixel (each `(h, w)` position of a `[C, H, W]` map, or the one position of a `[F]`
//! vector) is normalised over its channels:
//! `y[c] = (x[c] - mean(x)) / sqrt(var(x) + eps) * weight[c] + bias[c]`, with the biased
//! variance. This is PyTorch's `LayerNorm(C)` applied channels-last, as torchvision's ConvNeXt
//! (`LayerNorm2d`) does, and ONNX's `LayerNormalization(axis = -1)` between the transposes
//! `(0, 2, 3, 1)` and `(0, 3, 1, 2)`.
//!
//! Because the mean and the variance read every channel, no channel of its input can be
//! removed without changing all the others: pruning treats its channels as coupled and not
//! prunable.
//!
//! [`Op::LayerNorm`]: crate::Op::LayerNorm

use serde::{Deserialize, Serialize};

/// Layer normalisation over the channels of each pixel, with weight and bias `[channels]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerNorm {
    /// Number of channels normalised together.
    pub channels: usize,
    /// Added to the variance; PyTorch default 1e-5, torchvision's ConvNeXt 1e-6.
    pub eps: f32,
}

impl LayerNorm {
    /// Normalisation over `channels` channels with PyTorch's default eps 1e-5.
    pub fn new(channels: usize) -> Self {
        LayerNorm {
            channels,
            eps: 1e-5,
        }
    }

    /// Sets eps.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Checks the configuration.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.channels == 0 {
            return Err("layer_norm channels must be positive".into());
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(format!(
                "layer_norm eps {} must be positive and finite",
                self.eps
            ));
        }
        Ok(())
    }

    /// The output shape for input `s` (`[C, H, W]` or `[C]`): the same.
    pub(crate) fn output_shape(&self, s: &[usize]) -> Result<Vec<usize>, String> {
        match s {
            [c] | [c, _, _] if *c == self.channels => Ok(s.to_vec()),
            _ => Err(format!(
                "layer_norm expects a [{0}, H, W] or [{0}] input, got {s:?}",
                self.channels
            )),
        }
    }
}
