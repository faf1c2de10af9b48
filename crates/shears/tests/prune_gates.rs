//! Squeeze-excitation gates with `f(0) != 0` (sigmoid, hard sigmoid): the channels a gate
//! multiplies are prunable, and the pruned model equals the masked model (exact fold mode,
//! through the engine). A removed trunk channel times its gate is a constant (folded), or,
//! forced to zero before a padded conv, `0 * f(0) = 0`; channels that would reach a padded
//! consumer as `f(0) != 0` stay unprunable with a reason that names the nodes.

mod fixture;

use fixture::{conv_bn_act, input, random_plan, weights};
use shears::prune::{self, verify, DepGraph, Role, VERIFY_TOLERANCE};
use shears_ir::{
    Activation, Binary, BinaryKind, Conv2d, Graph, GraphBuilder, Linear, NodeId, Op, Pool2d,
};

/// Prunes `g` with random plans (exact fold mode) and checks pruned == masked through the
/// engine; returns how many channels were forced to zero and how many constants were folded.
fn masked_equals_pruned(g: &Graph, seeds: std::ops::Range<u64>) -> (usize, usize) {
    let dg = DepGraph::build(g).unwrap();
    let x = input(g, 2, 5);
    let (mut forced, mut folds) = (0, 0);
    for seed in seeds {
        let w = weights(g, seed, true);
        let plan = random_plan(g, &dg, seed);
        let p = prune::prune(g, &w, &plan).unwrap();
        let v = verify(g, &w, &plan, &p, &x, VERIFY_TOLERANCE)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(v.max_abs_diff <= 1e-5, "seed {seed}: {v:?}");
        assert!(p.report.is_exact(), "seed {seed}");
        forced += p.report.zeroed_channels;
        folds += p.report.folds.len();
    }
    (forced, folds)
}

/// `x * gate(conv(relu(conv(gap(x)))))`, the squeeze-excitation of EfficientNet and
/// MobileNetV3 (`gate` a sigmoid or a hard sigmoid).
fn se(b: &mut GraphBuilder, x: NodeId, c: usize, gate: Activation) -> NodeId {
    // The whole 8x8 map, keeping `[C, 1, 1]` for the 1x1 convs.
    let squeeze = Op::AvgPool2d(Pool2d::new(8, 1));
    let s = b.add("se.pool", squeeze, &[x]).unwrap();
    let s = b
        .add("se.reduce", Conv2d::new(c, 4, 1).with_bias(true), &[s])
        .unwrap();
    let s = b.add("se.relu", Op::Relu, &[s]).unwrap();
    let s = b
        .add("se.expand", Conv2d::new(4, c, 1).with_bias(true), &[s])
        .unwrap();
    let s = b.add("se.gate", gate, &[s]).unwrap();
    b.add("se.scale", Binary::new(BinaryKind::Mul), &[x, s])
        .unwrap()
}

fn head(b: &mut GraphBuilder, x: NodeId, c: usize) -> Graph {
    let p = b.add("gap", Op::GlobalAvgPool, &[x]).unwrap();
    let fc = Linear {
        in_features: c,
        out_features: 3,
        bias: true,
    };
    let o = b.add("fc", fc, &[p]).unwrap();
    std::mem::take(b).finish(&[o]).unwrap()
}

/// The MBConv of EfficientNet / MobileNetV3: stem -> expand 1x1 -> depthwise 3x3 -> SE ->
/// `consumer` (the 1x1 projection, or a padded 3x3 in the variant) -> BN -> head.
fn mbconv(gate: Activation, consumer: Conv2d) -> Graph {
    let mut b = GraphBuilder::new();
    let silu = || Some(Op::Act(Activation::Silu));
    let x = b.input("input", &[3, 8, 8]).unwrap();
    let s = conv_bn_act(
        &mut b,
        "stem",
        Conv2d::new(3, 8, 3).with_padding(1),
        silu(),
        x,
    );
    let e = conv_bn_act(&mut b, "expand", Conv2d::new(8, 16, 1), silu(), s);
    let dw = Conv2d::new(16, 16, 3).with_padding(1).with_groups(16);
    let d = conv_bn_act(&mut b, "dw", dw, silu(), e);
    let y = se(&mut b, d, 16, gate);
    let c_out = consumer.out_channels;
    let p = conv_bn_act(&mut b, "project", consumer, None, y);
    head(&mut b, p, c_out)
}

/// RegNetY's block: 1x1 -> 3x3 (padded) -> SE -> 1x1 -> BN, plus the shortcut, then ReLU.
fn regnet_y_block(gate: Activation) -> Graph {
    let mut b = GraphBuilder::new();
    let relu = || Some(Op::Relu);
    let x = b.input("input", &[3, 8, 8]).unwrap();
    let s = conv_bn_act(
        &mut b,
        "stem",
        Conv2d::new(3, 8, 3).with_padding(1),
        relu(),
        x,
    );
    let a = conv_bn_act(&mut b, "a", Conv2d::new(8, 16, 1), relu(), s);
    let m = conv_bn_act(
        &mut b,
        "b",
        Conv2d::new(16, 16, 3).with_padding(1),
        relu(),
        a,
    );
    let y = se(&mut b, m, 16, gate);
    let c = conv_bn_act(&mut b, "c", Conv2d::new(16, 8, 1), None, y);
    let r = b.add("add", Op::Add, &[s, c]).unwrap();
    let r = b.add("out_relu", Op::Relu, &[r]).unwrap();
    head(&mut b, r, 8)
}

const GATES: [Activation; 2] = [
    Activation::Sigmoid,
    Activation::HardSigmoid {
        alpha: 1.0 / 6.0,
        beta: 0.5,
    },
];

fn roles(g: &Graph, grp: &prune::Group) -> Vec<(Role, String)> {
    grp.members
        .iter()
        .map(|m| (m.role, g.node(m.node).name.clone()))
        .collect()
}

#[test]
fn se_gated_channels_are_prunable_and_exact() {
    for gate in GATES {
        let g = mbconv(gate, Conv2d::new(16, 8, 1));
        let dg = DepGraph::build(&g).unwrap();
        let gated = dg.find_root(&g, "expand").next().unwrap();
        assert!(gated.prunable, "{gate:?}: {:?}", gated.why_not);
        assert_eq!(
            roles(&g, gated),
            [
                (Role::OutChannels, "expand".to_string()),
                (Role::BnChannels, "expand_bn".into()),
                (Role::Depthwise, "dw".into()),
                (Role::BnChannels, "dw_bn".into()),
                (Role::InChannels, "se.reduce".into()),
                (Role::OutChannels, "se.expand".into()),
                (Role::InChannels, "project".into()),
            ]
        );
        // Every group but the input's and the logits' is prunable.
        assert_eq!(dg.prunable().count(), dg.groups().len() - 2, "{gate:?}");
        let (forced, folds) = masked_equals_pruned(&g, 0..6);
        assert_eq!(
            forced, 0,
            "{gate:?}: the 1x1 projection takes every constant"
        );
        assert!(folds > 0, "{gate:?}");
    }
}

#[test]
fn se_gated_channels_forced_before_a_padded_conv_are_zero() {
    // The product reaches a padded 3x3: a removed channel is forced, trunk 0 times gate f(0).
    for gate in GATES {
        let g = mbconv(gate, Conv2d::new(16, 8, 3).with_padding(1));
        let dg = DepGraph::build(&g).unwrap();
        assert!(dg.find_root(&g, "expand").next().unwrap().prunable);
        let (forced, folds) = masked_equals_pruned(&g, 0..6);
        assert!(
            forced > 0 && folds > 0,
            "{gate:?}: {forced} forced, {folds} folds"
        );
    }
}

#[test]
fn regnet_y_block_prunes_exactly() {
    for gate in GATES {
        let g = regnet_y_block(gate);
        let dg = DepGraph::build(&g).unwrap();
        let roots: Vec<&str> = dg
            .prunable()
            .map(|x| g.node(x.root).name.as_str())
            .collect();
        assert_eq!(roots, ["stem", "a", "b", "se.reduce"], "{gate:?}");
        let (forced, folds) = masked_equals_pruned(&g, 0..6);
        assert!(
            forced > 0 && folds > 0,
            "{gate:?}: {forced} forced, {folds} folds"
        );
    }
}

/// A gate's value used on its own: `t -> s = gate(BN(conv 1x1))` straight into a padded conv
/// `next`, where a removed channel of `s`, forced or not, is `f(.) != 0`.
fn ungated(gate: Activation) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 6, 6]).unwrap();
    let t = conv_bn_act(
        &mut b,
        "t",
        Conv2d::new(3, 8, 3).with_padding(1),
        Some(Op::Relu),
        x,
    );
    let s = conv_bn_act(&mut b, "s", Conv2d::new(8, 8, 1), Some(gate.into()), t);
    let y = b
        .add("next", Conv2d::new(8, 6, 3).with_padding(1), &[s])
        .unwrap();
    head(&mut b, y, 6)
}

#[test]
fn a_gate_value_at_a_padded_conv_stays_unprunable_with_its_reason() {
    for gate in GATES {
        let g = ungated(gate);
        let dg = DepGraph::build(&g).unwrap();
        let s = dg.find_root(&g, "s").next().unwrap();
        assert!(!s.prunable, "{gate:?}");
        let why = s.why_not.as_deref().unwrap();
        assert!(why.contains(gate.name()), "{why}");
        assert!(
            why.contains("\"s_act\"") && why.contains("zero-padded conv \"next\""),
            "{why}"
        );
        // The other groups still prune exactly.
        assert!(dg.find_root(&g, "t").next().unwrap().prunable);
        masked_equals_pruned(&g, 0..4);
    }
}

/// `t = relu(BN(conv))` feeds a padded conv `p` (so its removed channels are forced to zero)
/// and, through a sigmoid, a 1x1 conv `q`: a forced channel is `sigmoid(0) = 0.5` at `q`,
/// which surgery folds.
fn forced_through_a_gate() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 6, 6]).unwrap();
    let t = conv_bn_act(
        &mut b,
        "t",
        Conv2d::new(3, 8, 3).with_padding(1),
        Some(Op::Relu),
        x,
    );
    let p = b
        .add("p", Conv2d::new(8, 6, 3).with_padding(1), &[t])
        .unwrap();
    let s = b.add("gate", Op::Act(Activation::Sigmoid), &[t]).unwrap();
    let q = b.add("q", Conv2d::new(8, 6, 1), &[s]).unwrap();
    let y = b.add("add", Op::Add, &[p, q]).unwrap();
    head(&mut b, y, 6)
}

#[test]
fn forced_channels_fold_their_gate_value() {
    let g = forced_through_a_gate();
    let dg = DepGraph::build(&g).unwrap();
    assert!(dg.find_root(&g, "t").next().unwrap().prunable);
    let (forced, folds) = masked_equals_pruned(&g, 0..6);
    assert!(forced > 0 && folds > 0, "{forced} forced, {folds} folds");
}
