//! Pruning through the activations and the pool variants: the pruned model equals the masked
//! model (exact fold mode, through the engine), and channels that cannot be forced to zero
//! are unprunable with a reason.

mod fixture;

use fixture::{conv_bn_act, input, random_plan, weights};
use shears::prune::{self, verify, DepGraph, Group, Role, VERIFY_TOLERANCE};
use shears_ir::{Activation, Conv2d, Graph, GraphBuilder, Linear, Op, Pool2d};

/// Prunes `g` with several random plans (exact fold mode) and checks pruned == masked through
/// the engine. Returns how many channels were forced to zero and how many constants were
/// folded, in all.
fn masked_equals_pruned(g: &Graph, seeds: std::ops::Range<u64>) -> (usize, usize) {
    let dg = DepGraph::build(g).unwrap();
    assert!(dg.prunable().count() > 0, "nothing to prune");
    let x = input(g, 2, 5);
    let (mut forced, mut folds) = (0, 0);
    for seed in seeds {
        let w = weights(g, seed, false);
        let plan = random_plan(g, &dg, seed);
        let p = prune::prune(g, &w, &plan).unwrap();
        let v = verify(g, &w, &plan, &p, &x, VERIFY_TOLERANCE)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(v.max_abs_diff <= VERIFY_TOLERANCE, "seed {seed}");
        assert!(p.report.is_exact(), "seed {seed}");
        forced += p.report.zeroed_channels;
        folds += p.report.folds.len();
    }
    (forced, folds)
}

/// The inception_v3 branch: conv -> BN -> ReLU -> AvgPool(3, stride 1, pad 1) -> conv.
fn pool_branch(pool: Pool2d, second: Conv2d) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 7, 6]).unwrap();
    let a = conv_bn_act(
        &mut b,
        "a",
        Conv2d::new(3, 6, 3).with_padding(1),
        Some(Op::Relu),
        x,
    );
    let p = b.add("pool", Op::AvgPool2d(pool), &[a]).unwrap();
    let c = b.add("c", second, &[p]).unwrap();
    b.finish(&[c]).unwrap()
}

#[test]
fn average_pool_with_padding_masked_equals_pruned() {
    for include in [true, false] {
        for ceil in [false, true] {
            for second in [Conv2d::new(6, 4, 1), Conv2d::new(6, 4, 3).with_padding(1)] {
                let mut pool = Pool2d::new(3, 1).with_padding(1).with_ceil_mode(ceil);
                pool.count_include_pad = include;
                let strided = Pool2d::new(3, 2).with_padding(1).with_ceil_mode(ceil);
                for p in [pool, strided] {
                    masked_equals_pruned(&pool_branch(p, second.clone()), 0..4);
                }
            }
        }
    }
}

/// conv -> BN -> act -> padded conv -> BN -> act -> global pool -> linear.
fn act_graph(a: Activation) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 6, 6]).unwrap();
    let h = conv_bn_act(
        &mut b,
        "a",
        Conv2d::new(3, 6, 3).with_padding(1),
        Some(a.into()),
        x,
    );
    let h = conv_bn_act(
        &mut b,
        "b",
        Conv2d::new(6, 5, 3).with_padding(1),
        Some(a.into()),
        h,
    );
    let h = b.add("gap", Op::GlobalAvgPool, &[h]).unwrap();
    let fc = Linear {
        in_features: 5,
        out_features: 3,
        bias: true,
    };
    let o = b.add("fc", fc, &[h]).unwrap();
    b.finish(&[o]).unwrap()
}

#[test]
fn activations_keeping_zero_prune_exactly() {
    for a in [
        Activation::Relu6,
        Activation::Clip {
            min: Some(-0.5),
            max: Some(0.5),
        },
        Activation::HardSwish,
        Activation::Silu,
        Activation::Gelu { tanh: false },
        Activation::Gelu { tanh: true },
        Activation::LeakyRelu { alpha: 0.1 },
    ] {
        let (forced, folds) = masked_equals_pruned(&act_graph(a), 0..4);
        // Group a reaches the padded conv b with nonzero constants: forced, not folded; group
        // b's constants fold into the linear layer.
        assert!(
            forced > 0 && folds > 0,
            "{a:?}: {forced} forced, {folds} folds"
        );
    }
}

#[test]
fn activations_moving_zero_block_padded_consumers_only() {
    for a in [
        Activation::Sigmoid,
        Activation::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        Activation::Clip {
            min: Some(0.5),
            max: None,
        },
    ] {
        // Group a, forced to zero, is f(0) != 0 at the padded conv b: not prunable. Group b
        // reaches only the linear layer, where its constant f(c) (or f(0)) folds exactly.
        let g = act_graph(a);
        let dg = DepGraph::build(&g).unwrap();
        let roots: Vec<&str> = dg
            .prunable()
            .map(|x| g.node(x.root).name.as_str())
            .collect();
        assert_eq!(roots, ["b"], "{a:?}");
        let why = dg.groups()[1].why_not.as_deref().unwrap();
        assert!(why.contains(a.name()) && why.contains("\"a_act\""), "{why}");
        assert!(why.contains("zero-padded conv \"b\""), "{why}");
        let (forced, folds) = masked_equals_pruned(&g, 0..4);
        assert!(
            forced == 0 && folds > 0,
            "{a:?}: {forced} forced, {folds} folds"
        );
    }
}

/// A stem and one MobileNetV2 inverted residual (expand 1x1, depthwise 3x3, project 1x1,
/// residual add), then a head.
fn mobilenet_v2_block() -> Graph {
    let mut b = GraphBuilder::new();
    let relu6 = || Some(Op::Act(Activation::Relu6));
    let x = b.input("input", &[3, 8, 8]).unwrap();
    let s = conv_bn_act(
        &mut b,
        "stem",
        Conv2d::new(3, 8, 3).with_padding(1).with_stride(2),
        relu6(),
        x,
    );
    let e = conv_bn_act(&mut b, "expand", Conv2d::new(8, 24, 1), relu6(), s);
    let dw = Conv2d::new(24, 24, 3).with_padding(1).with_groups(24);
    let d = conv_bn_act(&mut b, "dw", dw, relu6(), e);
    let p = conv_bn_act(&mut b, "project", Conv2d::new(24, 8, 1), None, d);
    let r = b.add("add", Op::Add, &[s, p]).unwrap();
    let h = conv_bn_act(&mut b, "head", Conv2d::new(8, 16, 1), relu6(), r);
    let h = b.add("gap", Op::GlobalAvgPool, &[h]).unwrap();
    let fc = Linear {
        in_features: 16,
        out_features: 4,
        bias: true,
    };
    let o = b.add("fc", fc, &[h]).unwrap();
    b.finish(&[o]).unwrap()
}

#[test]
fn mobilenet_v2_block_groups_and_exact_pruning() {
    let g = mobilenet_v2_block();
    let dg = DepGraph::build(&g).unwrap();
    let name = |grp: &Group, role: Role| -> Vec<String> {
        grp.members_with(role)
            .map(|m| g.node(m.node).name.clone())
            .collect()
    };
    let roots: Vec<&str> = dg
        .prunable()
        .map(|x| g.node(x.root).name.as_str())
        .collect();
    assert_eq!(roots, ["stem", "expand", "head"]);
    // The depthwise conv couples its input and output: one group from expand to project.
    let expand = dg
        .prunable()
        .find(|x| g.node(x.root).name == "expand")
        .unwrap();
    assert_eq!(name(expand, Role::Depthwise), ["dw"]);
    assert_eq!(name(expand, Role::OutChannels), ["expand"]);
    assert_eq!(name(expand, Role::InChannels), ["project"]);
    // The residual add couples the stem with the projection.
    let stem = dg
        .prunable()
        .find(|x| g.node(x.root).name == "stem")
        .unwrap();
    assert_eq!(name(stem, Role::OutChannels), ["stem", "project"]);
    assert_eq!(name(stem, Role::InChannels), ["expand", "head"]);
    // Every consumer of a removed channel is a 1x1 conv or the depthwise conv that loses the
    // same channel: the constants all fold, none is forced.
    let (forced, folds) = masked_equals_pruned(&g, 0..6);
    assert_eq!(forced, 0);
    assert!(folds > 0);
}
