//! DenseNets as described in the paper "Densely Connected Convolutional Networks", Huang et al.
//! (2017): DenseNet-121 in torchvision's form, and DenseNet-BC for CIFAR (depth 100, growth
//! rate 12), both with torchvision's tensor names (`features.conv0`, `features.norm0`,
//! `features.denseblock{b}.denselayer{l}.{norm1,conv1,norm2,conv2}`,
//! `features.transition{t}.{norm,conv}`, `features.norm5`, `classifier`).
//!
//! A dense layer is BN-ReLU-1x1 conv (`bn_size * growth` filters) then BN-ReLU-3x3 conv
//! (`growth` filters); its output is concatenated to its input
//! (`features.denseblock{b}.denselayer{l}.concat`), which feeds the next layer. This chain of
//! two-input concats computes the same tensors as torchvision's concat of all earlier outputs.
//! A transition is BN-ReLU-1x1 conv (compression 0.5) then a 2x2 average pool.

use shears_ir::{BatchNorm2d, Conv2d, Graph, Linear, NodeId, Op, Pool2d};

use super::{Arch, Net, ZooConfig, ZooError};

/// The first layers of a DenseNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stem {
    /// torchvision ImageNet stem: `conv0` 7x7 stride 2 → `norm0` → ReLU → `pool0` 3x3 stride-2
    /// max pool.
    ImageNet,
    /// torchvision stem with a 3x3 stride-1 `conv0` and no pool (small inputs).
    ImageNetSmall,
    /// Huang et al.'s CIFAR stem: `conv0` 3x3 stride 1 only (no BN, no pool).
    Cifar,
}

/// The shape of a DenseNet.
struct Spec {
    growth: usize,
    blocks: &'static [usize],
    init_features: usize,
    bn_size: usize,
    stem: Stem,
}

/// Builds a DenseNet. DenseNet-121 needs an input of at least 32x32 (8x8 with the small-input
/// stem); DenseNet-BC at least 4x4.
pub(crate) fn build(arch: Arch, cfg: &ZooConfig) -> Result<Graph, ZooError> {
    let spec = match arch {
        Arch::DenseNet121 => Spec {
            growth: 32,
            blocks: &[6, 12, 24, 16],
            init_features: 64,
            bn_size: 4,
            stem: if cfg.small_input_stem {
                Stem::ImageNetSmall
            } else {
                Stem::ImageNet
            },
        },
        Arch::DenseNetBcCifar => Spec {
            growth: 12,
            blocks: &[16, 16, 16],
            init_features: 24,
            bn_size: 4,
            stem: Stem::Cifar,
        },
        _ => unreachable!("densenet::build is only called for DenseNets, not {arch}"),
    };
    let (min, why) = match spec.stem {
        Stem::ImageNet => (
            32,
            "a stride-2 stem conv, a stride-2 max pool and three transitions",
        ),
        Stem::ImageNetSmall => (8, "three transitions with 2x2 average pools"),
        Stem::Cifar => (4, "two transitions with 2x2 average pools"),
    };
    let (mut net, x) = Net::start(arch, cfg, min, why)?;
    let c0 = spec.init_features;
    let mut x = match spec.stem {
        Stem::ImageNet => {
            let conv = Conv2d::new(cfg.in_channels, c0, 7)
                .with_stride(2)
                .with_padding(3);
            let x = net.add("features.conv0", conv, &[x])?;
            let x = net.add("features.norm0", BatchNorm2d::new(c0), &[x])?;
            let x = net.add("features.relu0", Op::Relu, &[x])?;
            let pool = Op::MaxPool2d(Pool2d::new(3, 2).with_padding(1));
            net.add("features.pool0", pool, &[x])?
        }
        Stem::ImageNetSmall => {
            let conv = Conv2d::new(cfg.in_channels, c0, 3).with_padding(1);
            let x = net.add("features.conv0", conv, &[x])?;
            let x = net.add("features.norm0", BatchNorm2d::new(c0), &[x])?;
            net.add("features.relu0", Op::Relu, &[x])?
        }
        Stem::Cifar => {
            let conv = Conv2d::new(cfg.in_channels, c0, 3).with_padding(1);
            net.add("features.conv0", conv, &[x])?
        }
    };
    for (b, &n_layers) in spec.blocks.iter().enumerate() {
        for l in 0..n_layers {
            let prefix = format!("features.denseblock{}.denselayer{}", b + 1, l + 1);
            x = dense_layer(&mut net, &prefix, x, spec.growth, spec.bn_size)?;
        }
        if b + 1 < spec.blocks.len() {
            x = transition(&mut net, &format!("features.transition{}", b + 1), x)?;
        }
    }
    let c = net.channels(x);
    let x = net.add("features.norm5", BatchNorm2d::new(c), &[x])?;
    let x = net.add("relu", Op::Relu, &[x])?;
    let x = net.add("avgpool", Op::GlobalAvgPool, &[x])?;
    let fc = Linear {
        in_features: c,
        out_features: cfg.num_classes,
        bias: true,
    };
    let out = net.add("classifier", fc, &[x])?;
    net.finish(out)
}

/// BN → ReLU (→ conv), named `<prefix>.norm<i>`, `<prefix>.relu<i>`, `<prefix>.conv<i>`.
fn bn_relu_conv(
    net: &mut Net,
    prefix: &str,
    suffix: &str,
    x: NodeId,
    conv: Conv2d,
) -> Result<NodeId, ZooError> {
    let c = net.channels(x);
    let x = net.add(format!("{prefix}.norm{suffix}"), BatchNorm2d::new(c), &[x])?;
    let x = net.add(format!("{prefix}.relu{suffix}"), Op::Relu, &[x])?;
    net.add(format!("{prefix}.conv{suffix}"), conv, &[x])
}

fn dense_layer(
    net: &mut Net,
    prefix: &str,
    x: NodeId,
    growth: usize,
    bn_size: usize,
) -> Result<NodeId, ZooError> {
    let c = net.channels(x);
    let y = bn_relu_conv(net, prefix, "1", x, Conv2d::new(c, bn_size * growth, 1))?;
    let conv2 = Conv2d::new(bn_size * growth, growth, 3).with_padding(1);
    let y = bn_relu_conv(net, prefix, "2", y, conv2)?;
    net.add(format!("{prefix}.concat"), Op::Concat, &[x, y])
}

fn transition(net: &mut Net, prefix: &str, x: NodeId) -> Result<NodeId, ZooError> {
    let c = net.channels(x);
    let y = bn_relu_conv(net, prefix, "", x, Conv2d::new(c, c / 2, 1))?;
    net.add(
        format!("{prefix}.pool"),
        Op::AvgPool2d(Pool2d::new(2, 2)),
        &[y],
    )
}
