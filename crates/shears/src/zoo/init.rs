//! Seeded weight initialisation with the schemes of each architecture's reference code.
//!
//! Draws come from one `ChaCha8Rng` seeded with the seed, consumed in the order of
//! [`Graph::param_specs`] (topological node order, then weight, bias, running mean, running
//! variance), so the same graph and seed always give the same weights on every platform that
//! rounds `ln`, `cos` and `sqrt` the same way. Normals use the Box–Muller transform, so the draws
//! are not those of PyTorch's generator; only the distributions match.

use std::f64::consts::TAU;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use shears_ir::{BinaryKind, Graph, Op, ParamKind, ParamSpec, Tensor, Weights};

use super::Arch;

/// A weight initialisation scheme. `fan_in` of a conv weight `[c_out, c_in / groups, kh, kw]`
/// is `c_in / groups * kh * kw` and `fan_out` is `c_out * kh * kw` (PyTorch's definition); a
/// linear weight `[out, in]` has `fan_in = in`, `fan_out = out`.
///
/// Every scheme sets BN weight 1, BN bias 0, running mean 0 and running variance 1.
/// "Torch default" below means PyTorch's layer constructor: weight and bias uniform in
/// `±1/sqrt(fan_in)` (`kaiming_uniform_(a=√5)` for the weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// Torch default for conv and linear weights and biases (LeNet-5, Conv-4, and graphs
    /// without an architecture hint).
    TorchDefault,
    /// torchvision ResNet: conv weights `kaiming_normal_(mode="fan_out", relu)`, i.e.
    /// normal with std `sqrt(2 / fan_out)`; `fc` torch default.
    TorchvisionResNet,
    /// torchvision VGG: conv weights as [`InitScheme::TorchvisionResNet`] and conv biases 0;
    /// linear weights normal with std 0.01 and biases 0.
    TorchvisionVgg,
    /// torchvision DenseNet: conv weights `kaiming_normal_()` with its defaults (fan_in, gain
    /// √2: std `sqrt(2 / fan_in)`); linear weight torch default and bias 0. Also used for
    /// DenseNet-BC.
    TorchvisionDenseNet,
    /// akamaster CIFAR ResNet: conv and linear weights `kaiming_normal_()` (std
    /// `sqrt(2 / fan_in)`); the linear bias keeps the torch default.
    AkamasterCifarResNet,
    /// Keras `he_normal` (MLPerf Tiny ResNet-8): conv and dense kernels from a normal truncated
    /// at two standard deviations, scaled so that the variance is `2 / fan_in` (std
    /// `sqrt(2 / fan_in) / 0.87962566`); biases 0.
    KerasHeNormal,
}

/// Fresh weights for every parameter and buffer of `graph`, with the initialisation of
/// `arch_family_hint`'s reference code ([`Arch::init_scheme`]), or PyTorch's layer defaults
/// ([`InitScheme::TorchDefault`]) without a hint. Deterministic for a given graph and seed.
///
/// ```
/// use shears::zoo::{build, init_weights, Arch};
/// let g = build(Arch::LeNet5, &Arch::LeNet5.default_config()).unwrap();
/// let w = init_weights(&g, Some(Arch::LeNet5), 7);
/// assert_eq!(w, init_weights(&g, Some(Arch::LeNet5), 7));
/// assert_eq!(w.get("linear1.weight").unwrap().shape(), &[200, 3136]);
/// ```
pub fn init_weights(graph: &Graph, arch_family_hint: Option<Arch>, seed: u64) -> Weights {
    let scheme = arch_family_hint.map_or(InitScheme::TorchDefault, |a| a.init_scheme());
    init_weights_with(graph, scheme, seed)
}

/// Fresh weights for every parameter and buffer of `graph` with an explicit scheme.
/// Deterministic for a given graph, scheme and seed.
pub fn init_weights_with(graph: &Graph, scheme: InitScheme, seed: u64) -> Weights {
    let mut rng = Draws(ChaCha8Rng::seed_from_u64(seed));
    let mut weights = Weights::new();
    for (id, name, spec) in graph.param_specs() {
        let tensor = init_param(&graph.node(id).op, &spec, scheme, &mut rng);
        weights.insert(name, tensor);
    }
    weights
}

/// A distribution to fill one tensor from.
enum Dist {
    Const(f32),
    Uniform(f64),
    Normal(f64),
    TruncNormal(f64),
}

fn init_param(op: &Op, spec: &ParamSpec, scheme: InitScheme, rng: &mut Draws) -> Tensor {
    use InitScheme as S;
    use ParamKind::{Bias, RunningMean, RunningVar, Weight};
    let (fan_in, fan_out) = fans(op);
    let torch_default = Dist::Uniform(if fan_in > 0 {
        1.0 / (fan_in as f64).sqrt()
    } else {
        0.0
    });
    let kaiming_in = Dist::Normal((2.0 / fan_in.max(1) as f64).sqrt());
    let kaiming_out = Dist::Normal((2.0 / fan_out.max(1) as f64).sqrt());
    let he_trunc = Dist::TruncNormal((2.0 / fan_in.max(1) as f64).sqrt() / 0.879_625_661_034_239_8);
    let dist = match (op, spec.kind) {
        (Op::BatchNorm2d(_), Weight | RunningVar) => Dist::Const(1.0),
        (Op::BatchNorm2d(_), Bias | RunningMean) => Dist::Const(0.0),
        (Op::Conv2d(_), Weight) => match scheme {
            S::TorchDefault => torch_default,
            S::TorchvisionResNet | S::TorchvisionVgg => kaiming_out,
            S::TorchvisionDenseNet | S::AkamasterCifarResNet => kaiming_in,
            S::KerasHeNormal => he_trunc,
        },
        (Op::Linear(_), Weight) => match scheme {
            S::TorchDefault | S::TorchvisionResNet | S::TorchvisionDenseNet => torch_default,
            S::TorchvisionVgg => Dist::Normal(0.01),
            S::AkamasterCifarResNet => kaiming_in,
            S::KerasHeNormal => he_trunc,
        },
        (Op::Conv2d(_) | Op::Linear(_), Bias) => match (scheme, op) {
            (S::TorchvisionVgg | S::KerasHeNormal, _) => Dist::Const(0.0),
            (S::TorchvisionDenseNet, Op::Linear(_)) => Dist::Const(0.0),
            _ => torch_default,
        },
        // A binary op's constant operand starts as the identity of its arithmetic.
        (Op::Binary(b), Weight) => match b.kind {
            BinaryKind::Mul | BinaryKind::Div => Dist::Const(1.0),
            BinaryKind::Add | BinaryKind::Sub => Dist::Const(0.0),
        },
        // PyTorch's LayerNorm starts as the plain normalisation.
        (Op::LayerNorm(_), Weight) => Dist::Const(1.0),
        // Only conv, linear, BN, layer norm and binary ops own tensors; conv / linear only
        // weight and bias.
        _ => Dist::Const(0.0),
    };
    let n: usize = spec.shape.iter().product();
    let data = match dist {
        Dist::Const(v) => vec![v; n],
        Dist::Uniform(b) => (0..n)
            .map(|_| ((2.0 * rng.unit() - 1.0) * b) as f32)
            .collect(),
        Dist::Normal(std) => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
        Dist::TruncNormal(std) => (0..n)
            .map(|_| (rng.trunc_normal(2.0) * std) as f32)
            .collect(),
    };
    Tensor::new(spec.shape.clone(), data).expect("data has the product of the spec's shape")
}

/// `(fan_in, fan_out)` of a conv or linear weight; `(0, 0)` for other ops.
fn fans(op: &Op) -> (usize, usize) {
    match op {
        Op::Conv2d(c) => {
            let k = c.kernel[0] * c.kernel[1];
            (c.in_channels / c.groups * k, c.out_channels * k)
        }
        Op::Linear(l) => (l.in_features, l.out_features),
        _ => (0, 0),
    }
}

/// Uniform and normal draws from a ChaCha8 stream.
struct Draws(ChaCha8Rng);

impl Draws {
    /// Uniform in `[0, 1)` with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller, one value per pair of uniforms).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // in (0, 1], so ln is finite
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
    }

    /// Standard normal conditioned on `|z| <= limit` (rejection).
    fn trunc_normal(&mut self, limit: f64) -> f64 {
        loop {
            let z = self.normal();
            if z.abs() <= limit {
                return z;
            }
        }
    }
}
