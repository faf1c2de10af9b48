//! The MLPerf Tiny image-classification reference model (mlcommons/tiny,
//! `resnet_v1_eembc`): a ResNet-8 with 16/32/64 filters for CIFAR-10, after "Deep Residual
//! Learning for Image Recognition", He et al. (2015). Converted from Keras, so it keeps Keras
//! layer names and conventions:
//!
//! - names `conv2d`, `conv2d_1` … `conv2d_8`, `batch_normalization` … `batch_normalization_6`,
//!   `dense`; parameter-free layers are named as Keras would (`activation_k`, `add_k`,
//!   `average_pooling2d`, `flatten`);
//! - every conv has a bias; BN eps is 1e-3;
//! - padding is TensorFlow `same`, which is asymmetric for a 3x3 stride-2 conv on an even input
//!   (0 at top/left, 1 at bottom/right);
//! - stages 2 and 3 downsample with a 1x1 stride-2 conv shortcut with bias and no BN
//!   (`conv2d_5`, `conv2d_8`);
//! - the head is an 8x8 average pool (stride 8) → flatten → `dense`.

use shears_ir::{BatchNorm2d, Conv2d, Graph, Linear, NodeId, Op, Pool2d};

use super::{Arch, Net, ZooConfig, ZooError};

/// Keras' BatchNormalization epsilon.
const KERAS_BN_EPS: f32 = 1e-3;

/// TensorFlow `same` padding `[before, after]` of one axis of size `n` for kernel `k`, stride
/// `s`: the output has `ceil(n / s)` cells and the extra cell, if any, is padded after.
fn tf_same(n: usize, k: usize, s: usize) -> [usize; 2] {
    let out = n.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(n);
    [total / 2, total - total / 2]
}

/// A conv with TensorFlow `same` padding for an input of `h` x `w`.
fn same_conv(inp: usize, out: usize, k: usize, s: usize, (h, w): (usize, usize)) -> Conv2d {
    let [t, b] = tf_same(h, k, s);
    let [l, r] = tf_same(w, k, s);
    Conv2d::new(inp, out, k)
        .with_stride(s)
        .with_padding4([t, l, b, r])
        .with_bias(true)
}

/// Numbers Keras-style layer names: `base`, `base_1`, `base_2`, ...
#[derive(Default)]
struct Names {
    conv: usize,
    bn: usize,
    act: usize,
    add: usize,
}

fn keras(base: &str, k: &mut usize) -> String {
    let name = if *k == 0 {
        base.to_string()
    } else {
        format!("{base}_{k}")
    };
    *k += 1;
    name
}

impl Names {
    fn conv(&mut self) -> String {
        keras("conv2d", &mut self.conv)
    }
    fn bn(&mut self) -> String {
        keras("batch_normalization", &mut self.bn)
    }
    fn act(&mut self) -> String {
        keras("activation", &mut self.act)
    }
    fn add(&mut self) -> String {
        keras("add", &mut self.add)
    }
}

fn hw(net: &Net, x: NodeId) -> (usize, usize) {
    let s = net.shape(x);
    (s[1], s[2])
}

/// conv (TF `same`, bias) → BN (eps 1e-3), optionally → ReLU.
fn conv_bn(
    net: &mut Net,
    names: &mut Names,
    x: NodeId,
    out: usize,
    stride: usize,
    relu: bool,
) -> Result<NodeId, ZooError> {
    let conv = same_conv(net.channels(x), out, 3, stride, hw(net, x));
    let c = net.add(names.conv(), conv, &[x])?;
    let b = net.add(
        names.bn(),
        BatchNorm2d::new(out).with_eps(KERAS_BN_EPS),
        &[c],
    )?;
    if relu {
        net.add(names.act(), Op::Relu, &[b])
    } else {
        Ok(b)
    }
}

/// Builds the MLPerf Tiny ResNet-8. Needs an input of at least 32x32: two stride-2 stages must
/// leave at least an 8x8 map for the 8x8 average pool.
pub(crate) fn build(arch: Arch, cfg: &ZooConfig) -> Result<Graph, ZooError> {
    let (mut net, x) = Net::start(
        arch,
        cfg,
        32,
        "two stride-2 stages before an 8x8 average pool",
    )?;
    let mut names = Names::default();
    let mut x = conv_bn(&mut net, &mut names, x, 16, 1, true)?;
    for (filters, stride) in [(16, 1), (32, 2), (64, 2)] {
        let y = conv_bn(&mut net, &mut names, x, filters, stride, true)?;
        let y = conv_bn(&mut net, &mut names, y, filters, 1, false)?;
        let short = if stride == 1 {
            x
        } else {
            let conv = same_conv(net.channels(x), filters, 1, stride, hw(&net, x));
            net.add(names.conv(), conv, &[x])?
        };
        let sum = net.add(names.add(), Op::Add, &[short, y])?;
        x = net.add(names.act(), Op::Relu, &[sum])?;
    }
    let x = net.add("average_pooling2d", Op::AvgPool2d(Pool2d::new(8, 8)), &[x])?;
    let x = net.add("flatten", Op::Flatten, &[x])?;
    let fc = Linear {
        in_features: net.numel(x),
        out_features: cfg.num_classes,
        bias: true,
    };
    let out = net.add("dense", fc, &[x])?;
    net.finish(out)
}

#[cfg(test)]
mod tests {
    use super::tf_same;

    #[test]
    fn tf_same_padding() {
        assert_eq!(tf_same(32, 3, 1), [1, 1]);
        assert_eq!(tf_same(32, 3, 2), [0, 1]);
        assert_eq!(tf_same(31, 3, 2), [1, 1]);
        assert_eq!(tf_same(32, 1, 2), [0, 0]);
        assert_eq!(tf_same(31, 1, 2), [0, 0]);
    }
}
