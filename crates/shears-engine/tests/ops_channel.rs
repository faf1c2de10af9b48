//! Channel gathers ([`ChannelOp`]: ShuffleNet's channel shuffle, channel ranges) and small
//! ShuffleNetV2 units built from them, forward against the plain f64 reference and backward
//! against its finite differences.

mod common;

use common::check_graph;
use shears_engine::Mode;
use shears_ir::{BatchNorm2d, ChannelOp, Conv2d, Graph, GraphBuilder, NodeId, Op};

fn single(shape: &[usize], op: ChannelOp) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", shape).unwrap();
    let y = b.add("op", op, &[x]).unwrap();
    b.finish(&[y]).unwrap()
}

#[test]
fn shuffle_two_and_three_groups() {
    check_graph(
        &single(&[6, 3, 2], ChannelOp::Shuffle { groups: 2 }),
        2,
        Mode::Eval,
        41,
    );
    check_graph(
        &single(&[12, 2, 3], ChannelOp::Shuffle { groups: 3 }),
        2,
        Mode::Eval,
        42,
    );
}

#[test]
fn slice_middle_range() {
    check_graph(
        &single(&[7, 3, 3], ChannelOp::Slice { start: 2, end: 5 }),
        2,
        Mode::Eval,
        43,
    );
}

#[test]
fn slice_gradient_accumulates_over_both_halves() {
    // One value split in two halves that both reach the output: the input gradient is the
    // sum of two scatters into disjoint channel ranges.
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[6, 2, 2]).unwrap();
    let lo = b
        .add("lo", ChannelOp::Slice { start: 0, end: 3 }, &[x])
        .unwrap();
    let hi = b
        .add("hi", ChannelOp::Slice { start: 3, end: 6 }, &[x])
        .unwrap();
    let s = b.add("sum", Op::Add, &[lo, hi]).unwrap();
    check_graph(&b.finish(&[s]).unwrap(), 3, Mode::Eval, 44);
}

/// 1x1 conv + BN + ReLU, depthwise 3x3 (stride `s`) + BN, 1x1 conv + BN + ReLU.
fn branch(b: &mut GraphBuilder, p: &str, x: NodeId, ci: usize, co: usize, s: usize) -> NodeId {
    let c1 = b
        .add(format!("{p}.0"), Conv2d::new(ci, co, 1), &[x])
        .unwrap();
    let n1 = b
        .add(format!("{p}.1"), BatchNorm2d::new(co), &[c1])
        .unwrap();
    let r1 = b.add(format!("{p}.2"), Op::Relu, &[n1]).unwrap();
    let dw = Conv2d::new(co, co, 3)
        .with_stride(s)
        .with_padding(1)
        .with_groups(co);
    let c2 = b.add(format!("{p}.3"), dw, &[r1]).unwrap();
    let n2 = b
        .add(format!("{p}.4"), BatchNorm2d::new(co), &[c2])
        .unwrap();
    let c3 = b
        .add(format!("{p}.5"), Conv2d::new(co, co, 1), &[n2])
        .unwrap();
    let n3 = b
        .add(format!("{p}.6"), BatchNorm2d::new(co), &[c3])
        .unwrap();
    b.add(format!("{p}.7"), Op::Relu, &[n3]).unwrap()
}

/// A stride-2 ShuffleNetV2 unit (two branches) then a stride-1 unit (split, one branch),
/// each ending in concat + shuffle.
fn mini_shufflenet(c_in: usize, c: usize) -> Graph {
    let h = c / 2;
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[c_in, 6, 6]).unwrap();
    let dw = Conv2d::new(c_in, c_in, 3)
        .with_stride(2)
        .with_padding(1)
        .with_groups(c_in);
    let b1 = b.add("u1.b1.0", dw, &[x]).unwrap();
    let b1 = b.add("u1.b1.1", BatchNorm2d::new(c_in), &[b1]).unwrap();
    let b1 = b.add("u1.b1.2", Conv2d::new(c_in, h, 1), &[b1]).unwrap();
    let b1 = b.add("u1.b1.3", BatchNorm2d::new(h), &[b1]).unwrap();
    let b1 = b.add("u1.b1.4", Op::Relu, &[b1]).unwrap();
    let b2 = branch(&mut b, "u1.b2", x, c_in, h, 2);
    let cat = b.add("u1.cat", Op::Concat, &[b1, b2]).unwrap();
    let y = b
        .add("u1.shuffle", ChannelOp::Shuffle { groups: 2 }, &[cat])
        .unwrap();
    let x1 = b
        .add("u2.x1", ChannelOp::Slice { start: 0, end: h }, &[y])
        .unwrap();
    let x2 = b
        .add("u2.x2", ChannelOp::Slice { start: h, end: c }, &[y])
        .unwrap();
    let b2 = branch(&mut b, "u2.b2", x2, h, h, 1);
    let cat = b.add("u2.cat", Op::Concat, &[x1, b2]).unwrap();
    let z = b
        .add("u2.shuffle", ChannelOp::Shuffle { groups: 2 }, &[cat])
        .unwrap();
    b.finish(&[z]).unwrap()
}

#[test]
fn shufflenet_units_eval() {
    check_graph(&mini_shufflenet(3, 4), 2, Mode::Eval, 45);
}

#[test]
fn shufflenet_units_train() {
    check_graph(&mini_shufflenet(2, 4), 2, Mode::Train, 46);
}
