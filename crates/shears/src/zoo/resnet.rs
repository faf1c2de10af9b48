//! ResNets for ImageNet as described in the paper "Deep Residual Learning for Image
//! Recognition", He et al. (2015), in torchvision's form: ResNet-18/34 with BasicBlocks,
//! ResNet-50 with Bottlenecks whose stride sits on the 3x3 conv ("ResNet v1.5"), projection
//! shortcuts `downsample.{0,1}` (1x1 conv + BN), and torchvision's tensor names (`conv1`, `bn1`,
//! `layer{1..4}.{i}.{conv,bn}{1,2,3}`, `layer{k}.0.downsample.{0,1}`, `fc`).

use shears_ir::{BatchNorm2d, Conv2d, Graph, Linear, NodeId, Op, Pool2d};

use super::{Arch, Net, ZooConfig, ZooError};

/// The residual block of a torchvision ResNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    /// Two 3x3 convs, expansion 1.
    Basic,
    /// 1x1 → 3x3 (strided) → 1x1 convs, expansion 4.
    Bottleneck,
}

impl Block {
    fn expansion(self) -> usize {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

fn layout(arch: Arch) -> (Block, [usize; 4]) {
    match arch {
        Arch::ResNet18 => (Block::Basic, [2, 2, 2, 2]),
        Arch::ResNet34 => (Block::Basic, [3, 4, 6, 3]),
        Arch::ResNet50 => (Block::Bottleneck, [3, 4, 6, 3]),
        _ => unreachable!("resnet::build is only called for torchvision ResNets, not {arch}"),
    }
}

/// Builds a torchvision ResNet. The standard stem (7x7 stride-2 conv, 3x3 stride-2 max pool)
/// needs an input of at least 32x32 (five 2x downsamplings); the small-input stem (3x3
/// stride-1 conv, no pool) at least 8x8.
pub(crate) fn build(arch: Arch, cfg: &ZooConfig) -> Result<Graph, ZooError> {
    let (block, depths) = layout(arch);
    let (min, why) = if cfg.small_input_stem {
        (8, "three stride-2 stages")
    } else {
        (
            32,
            "a stride-2 stem conv, a stride-2 max pool and three stride-2 stages",
        )
    };
    let (mut net, x) = Net::start(arch, cfg, min, why)?;
    let stem = if cfg.small_input_stem {
        Conv2d::new(cfg.in_channels, 64, 3).with_padding(1)
    } else {
        Conv2d::new(cfg.in_channels, 64, 7)
            .with_stride(2)
            .with_padding(3)
    };
    let c = net.add("conv1", stem, &[x])?;
    let b = net.add("bn1", BatchNorm2d::new(64), &[c])?;
    let mut x = net.add("relu", Op::Relu, &[b])?;
    if !cfg.small_input_stem {
        x = net.add(
            "maxpool",
            Op::MaxPool2d(Pool2d::new(3, 2).with_padding(1)),
            &[x],
        )?;
    }
    let mut in_planes = 64;
    for (stage, (&depth, planes)) in depths.iter().zip([64, 128, 256, 512]).enumerate() {
        for i in 0..depth {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let prefix = format!("layer{}.{i}", stage + 1);
            x = match block {
                Block::Basic => basic(&mut net, &prefix, x, in_planes, planes, stride)?,
                Block::Bottleneck => bottleneck(&mut net, &prefix, x, in_planes, planes, stride)?,
            };
            in_planes = planes * block.expansion();
        }
    }
    let p = net.add("avgpool", Op::GlobalAvgPool, &[x])?;
    let fc = Linear {
        in_features: in_planes,
        out_features: cfg.num_classes,
        bias: true,
    };
    let out = net.add("fc", fc, &[p])?;
    net.finish(out)
}

/// conv + BN (+ ReLU) named `<prefix>.conv<i>`, `<prefix>.bn<i>`, `<prefix>.relu<i>`.
fn conv_bn(
    net: &mut Net,
    prefix: &str,
    i: usize,
    x: NodeId,
    conv: Conv2d,
    relu: bool,
) -> Result<NodeId, ZooError> {
    let out = conv.out_channels;
    let c = net.add(format!("{prefix}.conv{i}"), conv, &[x])?;
    let b = net.add(format!("{prefix}.bn{i}"), BatchNorm2d::new(out), &[c])?;
    if relu {
        net.add(format!("{prefix}.relu{i}"), Op::Relu, &[b])
    } else {
        Ok(b)
    }
}

/// The shortcut: `x` itself, or `downsample.0` (1x1 conv, stride `stride`) + `downsample.1`
/// (BN) when the shape changes.
fn shortcut(
    net: &mut Net,
    prefix: &str,
    x: NodeId,
    in_planes: usize,
    out_planes: usize,
    stride: usize,
) -> Result<NodeId, ZooError> {
    if stride == 1 && in_planes == out_planes {
        return Ok(x);
    }
    let conv = Conv2d::new(in_planes, out_planes, 1).with_stride(stride);
    let c = net.add(format!("{prefix}.downsample.0"), conv, &[x])?;
    net.add(
        format!("{prefix}.downsample.1"),
        BatchNorm2d::new(out_planes),
        &[c],
    )
}

/// The residual sum and the block's last ReLU.
fn join(net: &mut Net, prefix: &str, y: NodeId, short: NodeId) -> Result<NodeId, ZooError> {
    let sum = net.add(format!("{prefix}.add"), Op::Add, &[y, short])?;
    net.add(format!("{prefix}.relu"), Op::Relu, &[sum])
}

fn basic(
    net: &mut Net,
    prefix: &str,
    x: NodeId,
    in_planes: usize,
    planes: usize,
    stride: usize,
) -> Result<NodeId, ZooError> {
    let c3 = |i, o| Conv2d::new(i, o, 3).with_padding(1);
    let y = conv_bn(
        net,
        prefix,
        1,
        x,
        c3(in_planes, planes).with_stride(stride),
        true,
    )?;
    let y = conv_bn(net, prefix, 2, y, c3(planes, planes), false)?;
    let short = shortcut(net, prefix, x, in_planes, planes, stride)?;
    join(net, prefix, y, short)
}

fn bottleneck(
    net: &mut Net,
    prefix: &str,
    x: NodeId,
    in_planes: usize,
    planes: usize,
    stride: usize,
) -> Result<NodeId, ZooError> {
    let out = planes * Block::Bottleneck.expansion();
    let y = conv_bn(net, prefix, 1, x, Conv2d::new(in_planes, planes, 1), true)?;
    let c2 = Conv2d::new(planes, planes, 3)
        .with_stride(stride)
        .with_padding(1);
    let y = conv_bn(net, prefix, 2, y, c2, true)?;
    let y = conv_bn(net, prefix, 3, y, Conv2d::new(planes, out, 1), false)?;
    let short = shortcut(net, prefix, x, in_planes, out, stride)?;
    join(net, prefix, y, short)
}
