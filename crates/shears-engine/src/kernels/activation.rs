//! The unary activations of [`Activation`]: the scalar functions and their derivatives (in
//! `f32` for the kernels and `f64` for references and constant folding, from one generic
//! definition), and the elementwise forward and backward passes.
//!
//! The backward pass takes the activation's *input* (not its output, as ReLU's does): every
//! derivative here is a function of the input, and for the saturating ones (clip, hard
//! sigmoid) the output alone cannot tell a saturated value from an interior one at the bound.
//! At the kinks the derivative follows PyTorch: `relu6` and `hard_sigmoid` are flat at their
//! bounds, `clip` passes the gradient at them, `hard_swish` has slope `x / 3 + 1 / 2` on
//! `[-3, 3]` and `leaky_relu` slope `alpha` at 0.

use std::ops::{Add, Mul, Neg, Sub};

use rayon::prelude::*;
use shears_ir::Activation;

const BLOCK: usize = 1 << 14;

/// The arithmetic the activations need, for `f32` and `f64`.
trait Real:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Neg<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn of(v: f64) -> Self;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

/// `sqrt(2 / pi)`, the tanh GELU's scale.
const GELU_K: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh GELU.
const GELU_C: f64 = 0.044_715;

fn clamp<T: Real>(x: T, lo: T, hi: T) -> T {
    // NaN stays NaN: neither comparison holds.
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

fn lower<T: Real>(b: Option<f32>) -> T {
    T::of(b.map_or(f64::NEG_INFINITY, f64::from))
}

fn upper<T: Real>(b: Option<f32>) -> T {
    T::of(b.map_or(f64::INFINITY, f64::from))
}

fn sigmoid<T: Real>(x: T) -> T {
    T::of(1.0) / (T::of(1.0) + (-x).exp())
}

fn value<T: Real>(a: Activation, x: T) -> T {
    let (zero, one) = (T::of(0.0), T::of(1.0));
    match a {
        Activation::Relu6 => clamp(x, zero, T::of(6.0)),
        Activation::Clip { min, max } => clamp(x, lower(min), upper(max)),
        Activation::HardSwish => x * clamp(x + T::of(3.0), zero, T::of(6.0)) / T::of(6.0),
        Activation::HardSigmoid { alpha, beta } => {
            clamp(T::of(alpha.into()) * x + T::of(beta.into()), zero, one)
        }
        Activation::Sigmoid => sigmoid(x),
        Activation::Silu => x * sigmoid(x),
        Activation::Gelu { tanh: false } => {
            T::of(0.5) * x * (one + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf())
        }
        Activation::Gelu { tanh: true } => {
            let u = T::of(GELU_K) * (x + T::of(GELU_C) * x * x * x);
            T::of(0.5) * x * (one + u.tanh())
        }
        Activation::LeakyRelu { alpha } => {
            if x < zero {
                T::of(alpha.into()) * x
            } else {
                x
            }
        }
    }
}

fn derivative<T: Real>(a: Activation, x: T) -> T {
    let (zero, one) = (T::of(0.0), T::of(1.0));
    match a {
        Activation::Relu6 => {
            if x > zero && x < T::of(6.0) {
                one
            } else {
                zero
            }
        }
        Activation::Clip { min, max } => {
            if x >= lower(min) && x <= upper(max) {
                one
            } else {
                zero
            }
        }
        Activation::HardSwish => {
            if x < T::of(-3.0) {
                zero
            } else if x <= T::of(3.0) {
                x / T::of(3.0) + T::of(0.5)
            } else {
                one
            }
        }
        Activation::HardSigmoid { alpha, beta } => {
            let u = T::of(alpha.into()) * x + T::of(beta.into());
            if u > zero && u < one {
                T::of(alpha.into())
            } else {
                zero
            }
        }
        Activation::Sigmoid => {
            let s = sigmoid(x);
            s * (one - s)
        }
        Activation::Silu => {
            let s = sigmoid(x);
            s * (one + x * (one - s))
        }
        Activation::Gelu { tanh: false } => {
            let cdf = T::of(0.5) * (one + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
            let pdf = (-(x * x) * T::of(0.5)).exp() * T::of(0.398_942_280_401_432_7);
            cdf + x * pdf
        }
        Activation::Gelu { tanh: true } => {
            let u = T::of(GELU_K) * (x + T::of(GELU_C) * x * x * x);
            let t = u.tanh();
            let du = T::of(GELU_K) * (one + T::of(3.0 * GELU_C) * x * x);
            T::of(0.5) * (one + t) + T::of(0.5) * x * (one - t * t) * du
        }
        Activation::LeakyRelu { alpha } => {
            if x > zero {
                one
            } else {
                T::of(alpha.into())
            }
        }
    }
}

/// `a(x)` in `f32`, as the kernels compute it.
pub fn apply(a: Activation, x: f32) -> f32 {
    value(a, x)
}

/// `a(x)` in `f64` (references, and the constants of removed channels in pruning).
///
/// ```
/// use shears_engine::kernels::activation::apply_f64;
/// use shears_ir::Activation;
/// assert_eq!(apply_f64(Activation::Relu6, 7.5), 6.0);
/// assert_eq!(apply_f64(Activation::HardSwish, 3.0), 3.0);
/// assert_eq!(apply_f64(Activation::Sigmoid, 0.0), 0.5);
/// ```
pub fn apply_f64(a: Activation, x: f64) -> f64 {
    value(a, x)
}

/// `d a(x) / dx` in `f64`.
pub fn derivative_f64(a: Activation, x: f64) -> f64 {
    derivative(a, x)
}

/// `y = a(x)` elementwise.
pub fn forward(a: Activation, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "activation input and output lengths");
    y.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK))
        .for_each(|(yb, xb)| match a {
            // The piecewise-linear ones get their own loops so that they vectorise.
            Activation::Relu6 => {
                for (o, v) in yb.iter_mut().zip(xb) {
                    *o = clamp(*v, 0.0, 6.0);
                }
            }
            Activation::HardSwish => {
                for (o, v) in yb.iter_mut().zip(xb) {
                    *o = *v * clamp(*v + 3.0, 0.0, 6.0) * (1.0 / 6.0);
                }
            }
            _ => {
                for (o, v) in yb.iter_mut().zip(xb) {
                    *o = value(a, *v);
                }
            }
        });
}

/// `dx (+)= dy * a'(x)`, given the activation's input `x`.
pub fn backward(a: Activation, x: &[f32], dy: &[f32], dx: &mut [f32], accumulate: bool) {
    assert_eq!(x.len(), dy.len(), "activation input and gradient lengths");
    assert_eq!(
        x.len(),
        dx.len(),
        "activation input and input gradient lengths"
    );
    dx.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK))
        .zip(dy.par_chunks(BLOCK))
        .for_each(|((ob, xb), db)| {
            if accumulate {
                for ((o, xv), dv) in ob.iter_mut().zip(xb).zip(db) {
                    *o += *dv * derivative(a, *xv);
                }
            } else {
                for ((o, xv), dv) in ob.iter_mut().zip(xb).zip(db) {
                    *o = *dv * derivative(a, *xv);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Activation; 9] = [
        Activation::Relu6,
        Activation::Clip {
            min: Some(-0.5),
            max: Some(1.5),
        },
        Activation::HardSwish,
        Activation::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        Activation::Sigmoid,
        Activation::Silu,
        Activation::Gelu { tanh: false },
        Activation::Gelu { tanh: true },
        Activation::LeakyRelu { alpha: 0.1 },
    ];

    #[test]
    fn derivative_matches_central_differences_away_from_kinks() {
        let kinks = [-3.0, -2.5, -0.5, 0.0, 1.5, 2.5, 3.0, 6.0];
        for a in ALL {
            for i in -80..=80 {
                let x = f64::from(i) * 0.1 + 0.013;
                if kinks.iter().any(|k| (x - k).abs() < 1e-3) {
                    continue;
                }
                let h = 1e-6;
                let fd = (apply_f64(a, x + h) - apply_f64(a, x - h)) / (2.0 * h);
                let d = derivative_f64(a, x);
                assert!((fd - d).abs() < 1e-6, "{a:?} at {x}: {d} vs {fd}");
            }
        }
    }

    #[test]
    fn f32_kernels_follow_the_f64_definition() {
        let x: Vec<f32> = (-100..100).map(|i| i as f32 * 0.09 - 0.004).collect();
        let dy: Vec<f32> = x.iter().map(|v| 1.0 - 0.01 * v).collect();
        for a in ALL {
            let mut y = vec![0.0; x.len()];
            forward(a, &x, &mut y);
            let mut dx = vec![1.0; x.len()];
            backward(a, &x, &dy, &mut dx, true);
            for (((&xv, &yv), &dyv), &dxv) in x.iter().zip(&y).zip(&dy).zip(&dx) {
                let xv = f64::from(xv);
                let want = apply_f64(a, xv);
                assert!((f64::from(yv) - want).abs() <= 1e-6 * (1.0 + want.abs()));
                let dwant = 1.0 + f64::from(dyv) * derivative_f64(a, xv);
                assert!((f64::from(dxv) - dwant).abs() <= 1e-5, "{a:?} at {xv}");
            }
        }
    }

    #[test]
    fn known_values() {
        let gelu = Activation::Gelu { tanh: false };
        // Reference values from the closed forms: 0.5 * x * (1 + erf(x / sqrt 2)).
        assert!((apply_f64(gelu, 1.0) - 0.841_344_746_068_542_9).abs() < 1e-12);
        assert!((apply_f64(Activation::Silu, 2.0) - 2.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-15);
        assert_eq!(apply_f64(Activation::HardSwish, -3.5), 0.0);
        assert_eq!(apply(Activation::LeakyRelu { alpha: 0.1 }, -2.0), -0.2);
        assert!(apply(Activation::Relu6, f32::NAN).is_nan());
    }
}
