//! The parameter-free elementwise activations other than ReLU ([`Op::Act`](crate::Op::Act)).
//!
//! Each maps every element through one scalar function and keeps the shape, so each links
//! its input and output channels one to one. The functions themselves (and their derivatives)
//! live in the engine; this file holds only the configuration and its checks.

use serde::{Deserialize, Serialize};

/// A unary activation, PyTorch / ONNX semantics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    /// `min(max(x, 0), 6)` (ONNX `Clip(0, 6)`, MobileNetV2).
    Relu6,
    /// `min(max(x, min), max)`.
    Clip {
        /// Lower bound; `None` when unbounded below.
        min: Option<f32>,
        /// Upper bound; `None` when unbounded above.
        max: Option<f32>,
    },
    /// `x * relu6(x + 3) / 6` (MobileNetV3).
    HardSwish,
    /// `max(0, min(1, alpha * x + beta))`; ONNX defaults `alpha = 0.2`, `beta = 0.5`
    /// (PyTorch's `hardsigmoid` is `alpha = 1/6`).
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `x * sigmoid(x)` (SiLU, swish; EfficientNet).
    Silu,
    /// `0.5 * x * (1 + erf(x / sqrt 2))`, or with `tanh` the approximation
    /// `0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))`.
    Gelu {
        /// Whether the tanh approximation is used.
        tanh: bool,
    },
    /// `x` for `x >= 0`, `alpha * x` otherwise; ONNX default `alpha = 0.01`.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
}

impl Activation {
    /// A short lowercase name (`relu6`, `clip`, `hard_swish`, ...), for messages and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu6 => "relu6",
            Activation::Clip { .. } => "clip",
            Activation::HardSwish => "hard_swish",
            Activation::HardSigmoid { .. } => "hard_sigmoid",
            Activation::Sigmoid => "sigmoid",
            Activation::Silu => "silu",
            Activation::Gelu { .. } => "gelu",
            Activation::LeakyRelu { .. } => "leaky_relu",
        }
    }

    /// Whether the activation maps 0 to 0 (then a channel forced to zero stays zero through
    /// it). False for `sigmoid`, a `hard_sigmoid` with `beta > 0` and a `clip` whose range
    /// excludes 0.
    pub fn keeps_zero(&self) -> bool {
        match *self {
            Activation::Clip { min, max } => {
                min.is_none_or(|m| m <= 0.0) && max.is_none_or(|m| m >= 0.0)
            }
            Activation::HardSigmoid { beta, .. } => beta <= 0.0,
            Activation::Sigmoid => false,
            Activation::Relu6
            | Activation::HardSwish
            | Activation::Silu
            | Activation::Gelu { .. }
            | Activation::LeakyRelu { .. } => true,
        }
    }

    /// Checks the parameters: finite slopes, offsets and bounds, `min <= max`.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            Activation::Clip { min, max } => {
                if min.is_some_and(|m| !m.is_finite()) || max.is_some_and(|m| !m.is_finite()) {
                    return Err(format!(
                        "clip bounds {min:?}, {max:?} must be finite (None for no bound)"
                    ));
                }
                if let (Some(lo), Some(hi)) = (min, max) {
                    if lo > hi {
                        return Err(format!("clip bounds [{lo}, {hi}] must satisfy min <= max"));
                    }
                }
            }
            Activation::HardSigmoid { alpha, beta } => {
                if !alpha.is_finite() || !beta.is_finite() {
                    return Err(format!(
                        "hard_sigmoid alpha {alpha} and beta {beta} must be finite"
                    ));
                }
            }
            Activation::LeakyRelu { alpha } => {
                if !alpha.is_finite() {
                    return Err(format!("leaky_relu alpha {alpha} must be finite"));
                }
            }
            Activation::Relu6
            | Activation::HardSwish
            | Activation::Sigmoid
            | Activation::Silu
            | Activation::Gelu { .. } => {}
        }
        Ok(())
    }
}
