//! advertorch's MNIST "LeNet5" (`advertorch/test_utils.py`). Despite the name it is not the
//! LeNet-5 of LeCun et al. (1998) but a small CNN: `conv1` (32 filters, 3x3, padding 1) →
//! ReLU → 2x2 max pool → `conv2` (64 filters) → ReLU → 2x2 max pool → flatten → `linear1` (200)
//! → ReLU → `linear2` (classes). Every conv and linear layer has a bias.

use shears_ir::{Conv2d, Graph, Linear, Op, Pool2d};

use super::{Arch, Net, ZooConfig, ZooError};

/// Builds the advertorch LeNet-5. Needs an input of at least 4x4 (two 2x2 max pools); a
/// 28x28 input gives 64x7x7 = 3136 features.
pub(crate) fn build(arch: Arch, cfg: &ZooConfig) -> Result<Graph, ZooError> {
    let (mut net, x) = Net::start(arch, cfg, 4, "two 2x2 max pools")?;
    let conv = |i, o| Conv2d::new(i, o, 3).with_padding(1).with_bias(true);
    let pool = || Op::MaxPool2d(Pool2d::new(2, 2));
    let x = net.add("conv1", conv(cfg.in_channels, 32), &[x])?;
    let x = net.add("relu1", Op::Relu, &[x])?;
    let x = net.add("pool1", pool(), &[x])?;
    let x = net.add("conv2", conv(32, 64), &[x])?;
    let x = net.add("relu2", Op::Relu, &[x])?;
    let x = net.add("pool2", pool(), &[x])?;
    let x = net.add("flatten", Op::Flatten, &[x])?;
    let f = net.numel(x);
    let x = net.add(
        "linear1",
        Linear {
            in_features: f,
            out_features: 200,
            bias: true,
        },
        &[x],
    )?;
    let x = net.add("relu3", Op::Relu, &[x])?;
    let l2 = Linear {
        in_features: 200,
        out_features: cfg.num_classes,
        bias: true,
    };
    let out = net.add("linear2", l2, &[x])?;
    net.finish(out)
}
