//! VGG with batch norm as described in the paper "Very Deep Convolutional Networks for
//! Large-Scale Image Recognition", Simonyan and Zisserman (2014), configurations A, B, D and E,
//! in torchvision's `vgg*_bn` form: `features.<i>` numbers conv (3x3, padding 1, with bias),
//! BN, ReLU and max pool as separate indices, and the head is chosen by [`VggHead`].

use shears_ir::{BatchNorm2d, Conv2d, Graph, Linear, NodeId, Op, Pool2d};

use super::{invalid, Arch, Net, VggHead, ZooConfig, ZooError};

/// One entry of a VGG configuration: a 3x3 conv with this many filters, or a 2x2 max pool.
#[derive(Clone, Copy)]
enum Layer {
    Conv(usize),
    Pool,
}

use Layer::{Conv as C, Pool as M};

/// Configuration A (VGG-11).
#[rustfmt::skip]
const CFG_A: &[Layer] = &[
    C(64), M, C(128), M, C(256), C(256), M, C(512), C(512), M, C(512), C(512), M,
];
/// Configuration B (VGG-13).
#[rustfmt::skip]
const CFG_B: &[Layer] = &[
    C(64), C(64), M, C(128), C(128), M, C(256), C(256), M,
    C(512), C(512), M, C(512), C(512), M,
];
/// Configuration D (VGG-16).
#[rustfmt::skip]
const CFG_D: &[Layer] = &[
    C(64), C(64), M, C(128), C(128), M, C(256), C(256), C(256), M,
    C(512), C(512), C(512), M, C(512), C(512), C(512), M,
];
/// Configuration E (VGG-19).
#[rustfmt::skip]
const CFG_E: &[Layer] = &[
    C(64), C(64), M, C(128), C(128), M, C(256), C(256), C(256), C(256), M,
    C(512), C(512), C(512), C(512), M, C(512), C(512), C(512), C(512), M,
];

fn layers(arch: Arch) -> &'static [Layer] {
    match arch {
        Arch::Vgg11 => CFG_A,
        Arch::Vgg13 => CFG_B,
        Arch::Vgg16 => CFG_D,
        Arch::Vgg19 => CFG_E,
        _ => unreachable!("vgg::build is only called for VGGs, not {arch}"),
    }
}

/// Builds a VGG with batch norm. Needs an input of at least 32x32 (five 2x2 max pools).
pub(crate) fn build(arch: Arch, cfg: &ZooConfig) -> Result<Graph, ZooError> {
    if cfg.vgg_head == VggHead::ImageNet && !(0.0..1.0).contains(&cfg.dropout) {
        return Err(invalid(arch, "dropout", cfg.dropout, "must be in [0, 1)"));
    }
    let (mut net, mut x) = Net::start(arch, cfg, 32, "five 2x2 max pools")?;
    let mut idx = 0;
    let mut channels = cfg.in_channels;
    let mut next = |net: &mut Net, op: Op, x: NodeId| {
        let id = net.add(format!("features.{idx}"), op, &[x]);
        idx += 1;
        id
    };
    for layer in layers(arch) {
        match *layer {
            Layer::Conv(out) => {
                let conv = Conv2d::new(channels, out, 3)
                    .with_padding(1)
                    .with_bias(true);
                x = next(&mut net, conv.into(), x)?;
                x = next(&mut net, BatchNorm2d::new(out).into(), x)?;
                x = next(&mut net, Op::Relu, x)?;
                channels = out;
            }
            Layer::Pool => x = next(&mut net, Op::MaxPool2d(Pool2d::new(2, 2)), x)?,
        }
    }
    let x = net.add("flatten", Op::Flatten, &[x])?;
    let features = net.numel(x);
    let linear = |i, o| Linear {
        in_features: i,
        out_features: o,
        bias: true,
    };
    let out = match cfg.vgg_head {
        VggHead::Cifar => net.add("classifier", linear(features, cfg.num_classes), &[x])?,
        VggHead::ImageNet => {
            let mut x = net.add("classifier.0", linear(features, 4096), &[x])?;
            x = net.add("classifier.1", Op::Relu, &[x])?;
            x = net.add("classifier.2", Op::Dropout { p: cfg.dropout }, &[x])?;
            x = net.add("classifier.3", linear(4096, 4096), &[x])?;
            x = net.add("classifier.4", Op::Relu, &[x])?;
            x = net.add("classifier.5", Op::Dropout { p: cfg.dropout }, &[x])?;
            net.add("classifier.6", linear(4096, cfg.num_classes), &[x])?
        }
    };
    net.finish(out)
}
