//! The unary activations and the ceil-mode pools: forward against the f64 reference and
//! backward against central finite differences, alone and in a MobileNetV2 block.

mod common;

use common::check_graph;
use shears_engine::Mode;
use shears_ir::{Activation, BatchNorm2d, Conv2d, GraphBuilder, Op, Pool2d};

/// input -> conv 1x1 (with bias, so values leave [-1, 1]) -> activation.
fn after_conv(a: Activation) -> shears_ir::Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 4, 5]).unwrap();
    let c = b
        .add("conv", Conv2d::new(3, 6, 1).with_bias(true), &[x])
        .unwrap();
    let y = b.add("act", a, &[c]).unwrap();
    b.finish(&[y]).unwrap()
}

#[test]
fn every_activation_forward_and_backward() {
    for (i, a) in [
        Activation::Relu6,
        Activation::Clip {
            min: Some(-0.4),
            max: Some(0.3),
        },
        Activation::Clip {
            min: None,
            max: Some(0.2),
        },
        Activation::HardSwish,
        Activation::HardSigmoid {
            alpha: 1.0 / 6.0,
            beta: 0.5,
        },
        Activation::HardSigmoid {
            alpha: 2.0,
            beta: 0.2,
        },
        Activation::Sigmoid,
        Activation::Silu,
        Activation::Gelu { tanh: false },
        Activation::Gelu { tanh: true },
        Activation::LeakyRelu { alpha: 0.1 },
    ]
    .into_iter()
    .enumerate()
    {
        check_graph(&after_conv(a), 2, Mode::Eval, 40 + i as u64);
        check_graph(&after_conv(a), 3, Mode::Train, 60 + i as u64);
    }
}

#[test]
fn pools_in_ceil_mode() {
    // 8 x 6, window 3, stride 2: floor gives 3 x 2, ceil 4 x 3 (the last windows are partial).
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[2, 8, 6]).unwrap();
    let m = b
        .add(
            "max",
            Op::MaxPool2d(Pool2d::new(3, 2).with_ceil_mode(true)),
            &[x],
        )
        .unwrap();
    let mut p = Pool2d::new(3, 2).with_padding(1).with_ceil_mode(true);
    let a1 = b.add("avg_incl", Op::AvgPool2d(p.clone()), &[x]).unwrap();
    p.count_include_pad = false;
    let a2 = b.add("avg_excl", Op::AvgPool2d(p), &[x]).unwrap();
    let g = b.finish(&[m, a1, a2]).unwrap();
    assert_eq!(g.shape(m), [2, 4, 3]);
    assert_eq!(g.shape(a1), [2, 5, 4]);
    check_graph(&g, 2, Mode::Eval, 80);
}

/// The MobileNetV2 inverted residual: 1x1 expand -> BN -> ReLU6 -> depthwise 3x3 -> BN ->
/// ReLU6 -> 1x1 project -> BN, plus the block's input.
#[test]
fn mobilenet_v2_block() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[4, 5, 5]).unwrap();
    let e = b.add("expand", Conv2d::new(4, 12, 1), &[x]).unwrap();
    let e = b.add("expand_bn", BatchNorm2d::new(12), &[e]).unwrap();
    let e = b.add("expand_act", Activation::Relu6, &[e]).unwrap();
    let d = b
        .add(
            "dw",
            Conv2d::new(12, 12, 3).with_padding(1).with_groups(12),
            &[e],
        )
        .unwrap();
    let d = b.add("dw_bn", BatchNorm2d::new(12), &[d]).unwrap();
    let d = b.add("dw_act", Activation::Relu6, &[d]).unwrap();
    let p = b.add("project", Conv2d::new(12, 4, 1), &[d]).unwrap();
    let p = b.add("project_bn", BatchNorm2d::new(4), &[p]).unwrap();
    let y = b.add("add", Op::Add, &[p, x]).unwrap();
    let g = b.finish(&[y]).unwrap();
    check_graph(&g, 2, Mode::Eval, 90);
    check_graph(&g, 3, Mode::Train, 91);
}
