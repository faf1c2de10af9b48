//! Conv-4 for MNIST, the "customised" model of the SBPF paper (Lu et al., 2022), whose exact
//! widths are not published; shears uses the proposal of `docs/methods.md` §2.4: four
//! [3x3 conv (padding 1, no bias) → BN → ReLU] layers of widths 32-32-64-64, a 2x2 max pool
//! after the second and the fourth, then one linear layer.
//!
//! Names follow torchvision's sequential numbering: `features.<i>` counts every conv, BN, ReLU
//! and pool (`features.0` conv, `features.1` BN, `features.2` ReLU, `features.3` conv, ...,
//! `features.6` pool, ..., `features.13` pool), then `flatten` and the `classifier` linear layer
//! (with bias). A 28x28 input gives 64x7x7 = 3136 features.

use shears_ir::{BatchNorm2d, Conv2d, Graph, Linear, NodeId, Op, Pool2d};

use super::{Arch, Net, ZooConfig, ZooError};

/// Builds Conv-4. Needs an input of at least 4x4 (two 2x2 max pools).
pub(crate) fn build(arch: Arch, cfg: &ZooConfig) -> Result<Graph, ZooError> {
    let (mut net, mut x) = Net::start(arch, cfg, 4, "two 2x2 max pools")?;
    let mut idx = 0;
    let mut next = |net: &mut Net, op: Op, x: NodeId| {
        let id = net.add(format!("features.{idx}"), op, &[x]);
        idx += 1;
        id
    };
    let mut channels = cfg.in_channels;
    for (width, pool) in [(32, false), (32, true), (64, false), (64, true)] {
        x = next(
            &mut net,
            Conv2d::new(channels, width, 3).with_padding(1).into(),
            x,
        )?;
        x = next(&mut net, BatchNorm2d::new(width).into(), x)?;
        x = next(&mut net, Op::Relu, x)?;
        if pool {
            x = next(&mut net, Op::MaxPool2d(Pool2d::new(2, 2)), x)?;
        }
        channels = width;
    }
    let x = net.add("flatten", Op::Flatten, &[x])?;
    let fc = Linear {
        in_features: net.numel(x),
        out_features: cfg.num_classes,
        bias: true,
    };
    let out = net.add("classifier", fc, &[x])?;
    net.finish(out)
}
