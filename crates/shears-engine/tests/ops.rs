//! Every op, forward against a plain NCHW f64 reference and backward against central finite
//! differences of that reference, on small random shapes with non-default configurations.

mod common;

use common::check_graph;
use shears_engine::Mode;
use shears_ir::{BatchNorm2d, Conv2d, GraphBuilder, Linear, Op, Pool2d, ShortcutA};

/// input [c, h, w] -> op -> output.
fn single(shape: &[usize], op: impl Into<Op>) -> shears_ir::Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", shape).unwrap();
    let y = b.add("op", op, &[x]).unwrap();
    b.finish(&[y]).unwrap()
}

fn conv_case(c: Conv2d, h: usize, w: usize) {
    let g = single(&[c.in_channels, h, w], c);
    check_graph(&g, 2, Mode::Eval, 7);
}

#[test]
fn conv_3x3_same_shifted() {
    conv_case(Conv2d::new(8, 6, 3).with_padding(1).with_bias(true), 6, 5);
}

#[test]
fn conv_3x3_valid_shifted() {
    conv_case(Conv2d::new(8, 5, 3), 7, 6);
}

#[test]
fn conv_1x1() {
    conv_case(Conv2d::new(8, 4, 1).with_bias(true), 5, 3);
}

#[test]
fn conv_1x1_padded() {
    conv_case(Conv2d::new(8, 4, 1).with_padding(1), 3, 4);
}

#[test]
fn conv_stride2_few_channels_im2col() {
    conv_case(
        Conv2d::new(3, 4, 3)
            .with_stride(2)
            .with_padding(1)
            .with_bias(true),
        7,
        6,
    );
}

#[test]
fn conv_dilation2_asymmetric_padding() {
    conv_case(
        Conv2d::new(8, 8, 3)
            .with_dilation(2)
            .with_padding4([1, 0, 2, 1]),
        7,
        7,
    );
}

#[test]
fn conv_groups2_shifted() {
    conv_case(Conv2d::new(8, 8, 3).with_padding(1).with_groups(2), 5, 5);
}

#[test]
fn conv_groups2_stride2_im2col() {
    conv_case(
        Conv2d::new(8, 8, 3)
            .with_stride(2)
            .with_padding(1)
            .with_groups(2)
            .with_bias(true),
        7,
        5,
    );
}

#[test]
fn conv_depthwise() {
    conv_case(
        Conv2d::new(6, 6, 3)
            .with_padding(1)
            .with_groups(6)
            .with_bias(true),
        5,
        6,
    );
}

#[test]
fn conv_depthwise_multiplier_stride2() {
    conv_case(
        Conv2d::new(4, 8, 3)
            .with_stride(2)
            .with_padding(1)
            .with_groups(4),
        7,
        7,
    );
}

#[test]
fn conv_5x5() {
    conv_case(Conv2d::new(8, 4, 5).with_padding(2).with_bias(true), 6, 7);
}

#[test]
fn conv_1x1_stride2() {
    conv_case(Conv2d::new(8, 4, 1).with_stride(2), 5, 5);
}

#[test]
fn conv_3x1_kernel() {
    let mut c = Conv2d::new(8, 4, 1).with_padding4([1, 0, 1, 0]);
    c.kernel = [3, 1];
    conv_case(c, 5, 4);
}

#[test]
fn conv_stride2_dilated_asymmetric() {
    let mut c = Conv2d::new(8, 4, 3)
        .with_padding4([2, 1, 0, 1])
        .with_dilation(2);
    c.stride = [2, 1];
    conv_case(c, 9, 6);
}

#[test]
fn batch_norm_eval() {
    check_graph(&single(&[5, 4, 3], BatchNorm2d::new(5)), 3, Mode::Eval, 11);
}

#[test]
fn batch_norm_train() {
    check_graph(
        &single(&[5, 4, 3], BatchNorm2d::new(5).with_eps(1e-3)),
        3,
        Mode::Train,
        12,
    );
}

#[test]
fn batch_norm_train_on_vectors() {
    check_graph(&single(&[6], BatchNorm2d::new(6)), 5, Mode::Train, 13);
}

#[test]
fn batch_norm_relu_fused_train() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[4, 5, 5]).unwrap();
    let bn = b.add("bn", BatchNorm2d::new(4), &[x]).unwrap();
    let r = b.add("relu", Op::Relu, &[bn]).unwrap();
    check_graph(&b.finish(&[r]).unwrap(), 3, Mode::Train, 14);
}

#[test]
fn relu() {
    check_graph(&single(&[3, 4, 5], Op::Relu), 2, Mode::Eval, 15);
}

#[test]
fn max_pool_2x2() {
    check_graph(
        &single(&[3, 6, 6], Op::MaxPool2d(Pool2d::new(2, 2))),
        2,
        Mode::Eval,
        16,
    );
}

#[test]
fn max_pool_3x3_stride2_padded_odd() {
    check_graph(
        &single(&[3, 7, 5], Op::MaxPool2d(Pool2d::new(3, 2).with_padding(1))),
        2,
        Mode::Eval,
        17,
    );
}

#[test]
fn max_pool_inference_equals_the_recorded_pass_bit_for_bit() {
    // Issue 16: inference runs its own branch-free kernel (no argmax); it must pick the same
    // maxima, NaN and signed-zero ties included.
    let g = single(&[5, 7, 6], Op::MaxPool2d(Pool2d::new(3, 2).with_padding(1)));
    let mut rng = common::Rng(18);
    let w = common::random_weights(&g, &mut rng);
    let mut x = rng.tensor(&[4, 5, 7, 6]);
    for (k, v) in x.data_mut().iter_mut().enumerate() {
        match k % 29 {
            0 => *v = f32::NAN,
            1 | 2 => *v = -0.0,
            3 => *v = 0.0,
            _ => {}
        }
    }
    let mut net = shears_engine::Network::new(g, &w).unwrap();
    let plain = net.forward(&x, Mode::Eval).unwrap();
    let recorded = net.forward_recorded(&x, Mode::Eval).unwrap();
    let bits = |t: &shears_ir::Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&plain), bits(&recorded));
    assert!(plain.data().iter().any(|v| v.is_nan()));
}

#[test]
fn avg_pool_count_include_pad() {
    check_graph(
        &single(&[3, 5, 6], Op::AvgPool2d(Pool2d::new(3, 1).with_padding(1))),
        2,
        Mode::Eval,
        18,
    );
}

#[test]
fn avg_pool_exclude_pad() {
    let mut p = Pool2d::new(3, 2).with_padding(1);
    p.count_include_pad = false;
    check_graph(&single(&[3, 7, 6], Op::AvgPool2d(p)), 2, Mode::Eval, 19);
}

#[test]
fn avg_pool_asymmetric_padding() {
    let mut p = Pool2d::new(2, 2);
    p.padding = [0, 0, 1, 1];
    check_graph(&single(&[2, 5, 5], Op::AvgPool2d(p)), 2, Mode::Eval, 20);
}

#[test]
fn global_avg_pool() {
    check_graph(&single(&[4, 3, 5], Op::GlobalAvgPool), 3, Mode::Eval, 21);
}

#[test]
fn linear() {
    check_graph(
        &single(
            &[7],
            Linear {
                in_features: 7,
                out_features: 5,
                bias: true,
            },
        ),
        3,
        Mode::Eval,
        22,
    );
}

#[test]
fn linear_no_bias() {
    check_graph(
        &single(
            &[6],
            Linear {
                in_features: 6,
                out_features: 4,
                bias: false,
            },
        ),
        2,
        Mode::Eval,
        23,
    );
}

#[test]
fn flatten_then_linear_is_c_major() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 2, 4]).unwrap();
    let f = b.add("flat", Op::Flatten, &[x]).unwrap();
    let l = b
        .add(
            "fc",
            Linear {
                in_features: 24,
                out_features: 5,
                bias: true,
            },
            &[f],
        )
        .unwrap();
    check_graph(&b.finish(&[l]).unwrap(), 2, Mode::Eval, 24);
}

#[test]
fn flatten_alone() {
    check_graph(&single(&[3, 2, 5], Op::Flatten), 2, Mode::Eval, 25);
}

#[test]
fn add_three_inputs() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 4, 4]).unwrap();
    let y = b.input("y", &[3, 4, 4]).unwrap();
    let z = b.input("z", &[3, 4, 4]).unwrap();
    let a = b.add("add", Op::Add, &[x, y, z]).unwrap();
    check_graph(&b.finish(&[a]).unwrap(), 2, Mode::Eval, 26);
}

#[test]
fn add_same_input_twice() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 4, 4]).unwrap();
    let a = b.add("add", Op::Add, &[x, x]).unwrap();
    check_graph(&b.finish(&[a]).unwrap(), 2, Mode::Eval, 27);
}

#[test]
fn concat_three_inputs() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 3, 4]).unwrap();
    let y = b.input("y", &[3, 3, 4]).unwrap();
    let z = b.input("z", &[1, 3, 4]).unwrap();
    let c = b.add("cat", Op::Concat, &[x, y, z]).unwrap();
    check_graph(&b.finish(&[c]).unwrap(), 2, Mode::Eval, 28);
}

#[test]
fn shortcut_a_odd() {
    let op = ShortcutA {
        stride: 2,
        pad_before: 2,
        pad_after: 3,
    };
    check_graph(&single(&[3, 5, 7], op), 2, Mode::Eval, 29);
}

#[test]
fn identity_and_eval_dropout() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 2, 2]).unwrap();
    let i = b.add("id", Op::Identity, &[x]).unwrap();
    let d = b.add("drop", Op::Dropout { p: 0.5 }, &[i]).unwrap();
    check_graph(&b.finish(&[d]).unwrap(), 2, Mode::Eval, 30);
}

#[test]
fn conv_bias_only_trainable_path() {
    // A conv feeding two consumers: gradients accumulate into its output.
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[8, 5, 5]).unwrap();
    let c = b
        .add(
            "conv",
            Conv2d::new(8, 8, 3).with_padding(1).with_bias(true),
            &[x],
        )
        .unwrap();
    let r = b.add("relu", Op::Relu, &[c]).unwrap();
    let a = b.add("add", Op::Add, &[c, r]).unwrap();
    check_graph(&b.finish(&[a]).unwrap(), 2, Mode::Eval, 31);
}

/// Squeeze-excitation: whole-map average pool, 1x1 convs on the `[C, 1, 1]` map, a broadcast
/// `Mul` with the trunk; a one-channel map broadcast over channels; the trunk `Add`ed to its
/// own `[C, 1, 1]` squeeze; in eval and train mode.
#[test]
fn binary_broadcast_computed_operands() {
    use shears_ir::{Binary, BinaryKind};
    for (mode, seed) in [(Mode::Eval, 32), (Mode::Train, 33)] {
        let mut b = GraphBuilder::new();
        let x = b.input("x", &[6, 4, 5]).unwrap();
        let t = b
            .add("trunk", Conv2d::new(6, 6, 3).with_padding(1), &[x])
            .unwrap();
        let whole = Pool2d {
            kernel: [4, 5],
            stride: [1, 1],
            padding: [0; 4],
            count_include_pad: true,
            ceil_mode: false,
        };
        let s = b.add("squeeze", Op::AvgPool2d(whole), &[t]).unwrap();
        let s = b
            .add("reduce", Conv2d::new(6, 3, 1).with_bias(true), &[s])
            .unwrap();
        let s = b.add("gate", Op::Relu, &[s]).unwrap();
        let s = b
            .add("expand", Conv2d::new(3, 6, 1).with_bias(true), &[s])
            .unwrap();
        let y = b
            .add("scale", Binary::new(BinaryKind::Mul), &[s, t])
            .unwrap();
        let a = b.add("att", Conv2d::new(6, 1, 1), &[y]).unwrap();
        let y = b
            .add("attend", Binary::new(BinaryKind::Mul), &[y, a])
            .unwrap();
        let y = b
            .add("shift", Binary::new(BinaryKind::Sub), &[y, s])
            .unwrap();
        let y = b
            .add("plus", Binary::new(BinaryKind::Add), &[a, y])
            .unwrap();
        check_graph(&b.finish(&[y]).unwrap(), 2, mode, seed);
    }
}

/// Constant operands on either side, per channel, shared, varying over the map, and on a
/// vector; `Div` by a constant.
#[test]
fn binary_constant_operands() {
    use shears_ir::{Binary, BinaryKind};
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[5, 3, 4]).unwrap();
    let mul = Binary::with_constant(BinaryKind::Mul, vec![5, 1, 1], false);
    let y = b.add("gamma", mul, &[x]).unwrap();
    let sub = Binary::with_constant(BinaryKind::Sub, vec![1, 1, 1], true);
    let y = b.add("shift", sub, &[y]).unwrap();
    let add = Binary::with_constant(BinaryKind::Add, vec![5, 3, 4], false);
    let y = b.add("plane", add, &[y]).unwrap();
    let div = Binary::with_constant(BinaryKind::Div, vec![1, 3, 4], false);
    let y = b.add("div", div, &[y]).unwrap();
    let f = b.add("flat", Op::Flatten, &[y]).unwrap();
    let v = Binary::with_constant(BinaryKind::Mul, vec![60], false);
    let v = b.add("vec", v, &[f]).unwrap();
    check_graph(&b.finish(&[v]).unwrap(), 2, Mode::Eval, 34);
}
