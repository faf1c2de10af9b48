//! ResNets for CIFAR as described in the paper "Deep Residual Learning for Image Recognition",
//! He et al. (2015), section 4.2: depth 6n+2, three stages of n BasicBlocks (16, 32, 64
//! channels) and parameter-free option-A shortcuts, with the tensor names of
//! akamaster/pytorch_resnet_cifar10 (`conv1`, `bn1`, `layer{1,2,3}.{i}.{conv,bn}{1,2}`, `linear`).

use shears_ir::{BatchNorm2d, Conv2d, Graph, Linear, NodeId, Op, ShortcutA};

use super::{Arch, Net, ZooConfig, ZooError};

/// BasicBlocks per stage (`n` in depth `6n + 2`).
fn blocks_per_stage(arch: Arch) -> usize {
    match arch {
        Arch::ResNet20 => 3,
        Arch::ResNet32 => 5,
        Arch::ResNet44 => 7,
        Arch::ResNet56 => 9,
        Arch::ResNet110 => 18,
        _ => unreachable!("cifar_resnet::build is only called for CIFAR ResNets, not {arch}"),
    }
}

/// Builds a CIFAR ResNet. Needs an input of at least 4x4 (two stride-2 stages).
pub(crate) fn build(arch: Arch, cfg: &ZooConfig) -> Result<Graph, ZooError> {
    let n = blocks_per_stage(arch);
    let (mut net, x) = Net::start(arch, cfg, 4, "two stride-2 stages")?;
    let c = net.add(
        "conv1",
        Conv2d::new(cfg.in_channels, 16, 3).with_padding(1),
        &[x],
    )?;
    let b = net.add("bn1", BatchNorm2d::new(16), &[c])?;
    let mut x = net.add("relu", Op::Relu, &[b])?;
    let mut in_planes = 16;
    for (stage, planes) in [16, 32, 64].into_iter().enumerate() {
        for i in 0..n {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let prefix = format!("layer{}.{i}", stage + 1);
            x = basic_block(&mut net, &prefix, x, in_planes, planes, stride)?;
            in_planes = planes;
        }
    }
    let p = net.add("avgpool", Op::GlobalAvgPool, &[x])?;
    let fc = Linear {
        in_features: 64,
        out_features: cfg.num_classes,
        bias: true,
    };
    let out = net.add("linear", fc, &[p])?;
    net.finish(out)
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`; the shortcut is the identity, or
/// option A (subsample, zero-pad `planes / 4` channels on each side) when the shape changes.
fn basic_block(
    net: &mut Net,
    prefix: &str,
    x: NodeId,
    in_planes: usize,
    planes: usize,
    stride: usize,
) -> Result<NodeId, ZooError> {
    let conv = |i, o| Conv2d::new(i, o, 3).with_padding(1);
    let c1 = net.add(
        format!("{prefix}.conv1"),
        conv(in_planes, planes).with_stride(stride),
        &[x],
    )?;
    let b1 = net.add(format!("{prefix}.bn1"), BatchNorm2d::new(planes), &[c1])?;
    let r1 = net.add(format!("{prefix}.relu1"), Op::Relu, &[b1])?;
    let c2 = net.add(format!("{prefix}.conv2"), conv(planes, planes), &[r1])?;
    let b2 = net.add(format!("{prefix}.bn2"), BatchNorm2d::new(planes), &[c2])?;
    let short = if stride != 1 || in_planes != planes {
        let pad = planes / 4;
        let s = ShortcutA {
            stride,
            pad_before: pad,
            pad_after: pad,
        };
        net.add(format!("{prefix}.shortcut"), s, &[x])?
    } else {
        x
    };
    let sum = net.add(format!("{prefix}.add"), Op::Add, &[b2, short])?;
    net.add(format!("{prefix}.relu2"), Op::Relu, &[sum])
}
