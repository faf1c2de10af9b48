//! Pruning through ShuffleNetV2's channel ops (issue 14 item 4): channel ranges (the split
//! halves) and channel shuffles. The groups follow the channel maps (a shuffle ties position
//! `j` of every group, so that it stays a shuffle), the branch-internal channels are
//! prunable, and the pruned model equals the masked model for random plans (exact fold mode,
//! through the engine).

mod fixture;

use fixture::{input, weights};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shears::prune::{
    self, predict_cost, verify, AllocConfig, DepGraph, Magnitude, Norm, Plan, PlanGroup,
    ScoreContext, Strategy, VERIFY_TOLERANCE,
};
use shears::recover::channel_maps;
use shears_io::onnx::{export_onnx_bytes, import_onnx_bytes};
use shears_io::OnnxExportOptions;
use shears_ir::{BatchNorm2d, ChannelOp, Conv2d, Graph, GraphBuilder, Linear, NodeId, Op};

fn conv_bn(b: &mut GraphBuilder, name: &str, conv: Conv2d, relu: bool, x: NodeId) -> NodeId {
    let n = conv.out_channels;
    let c = b.add(name, conv, &[x]).unwrap();
    let c = b
        .add(format!("{name}.bn"), BatchNorm2d::new(n), &[c])
        .unwrap();
    if relu {
        b.add(format!("{name}.relu"), Op::Relu, &[c]).unwrap()
    } else {
        c
    }
}

fn depthwise(c: usize, stride: usize) -> Conv2d {
    Conv2d::new(c, c, 3)
        .with_stride(stride)
        .with_padding(1)
        .with_groups(c)
}

/// torchvision's `branch2`: 1x1 conv + BN + ReLU, depthwise 3x3 + BN, 1x1 conv + BN + ReLU.
fn branch2(b: &mut GraphBuilder, p: &str, x: NodeId, ci: usize, h: usize, s: usize) -> NodeId {
    let a = conv_bn(b, &format!("{p}.b2.0"), Conv2d::new(ci, h, 1), true, x);
    let d = conv_bn(b, &format!("{p}.b2.3"), depthwise(h, s), false, a);
    conv_bn(b, &format!("{p}.b2.5"), Conv2d::new(h, h, 1), true, d)
}

/// A ShuffleNetV2 unit from `ci` to `co` channels: stride 2 has two branches; stride 1
/// splits its input in halves and runs `branch2` on the second.
fn unit(b: &mut GraphBuilder, p: &str, x: NodeId, ci: usize, co: usize, s: usize) -> NodeId {
    let h = co / 2;
    let (left, right) = if s == 2 {
        let d = conv_bn(b, &format!("{p}.b1.0"), depthwise(ci, 2), false, x);
        let l = conv_bn(b, &format!("{p}.b1.2"), Conv2d::new(ci, h, 1), true, d);
        (l, branch2(b, p, x, ci, h, 2))
    } else {
        let x1 = ChannelOp::Slice { start: 0, end: h };
        let x1 = b.add(format!("{p}.x1"), x1, &[x]).unwrap();
        let x2 = ChannelOp::Slice { start: h, end: ci };
        let x2 = b.add(format!("{p}.x2"), x2, &[x]).unwrap();
        (x1, branch2(b, p, x2, h, h, 1))
    };
    let cat = b
        .add(format!("{p}.cat"), Op::Concat, &[left, right])
        .unwrap();
    let shuffle = ChannelOp::Shuffle { groups: 2 };
    b.add(format!("{p}.shuffle"), shuffle, &[cat]).unwrap()
}

/// Stem, one stage (a stride-2 unit and `n_units - 1` stride-1 units), conv5, pool, fc.
fn mini_shufflenet(c: usize, n_units: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 8, 8]).unwrap();
    let mut t = conv_bn(
        &mut b,
        "conv1",
        Conv2d::new(3, 6, 3).with_padding(1),
        true,
        x,
    );
    t = unit(&mut b, "stage2.0", t, 6, c, 2);
    for k in 1..n_units {
        t = unit(&mut b, &format!("stage2.{k}"), t, c, c, 1);
    }
    t = conv_bn(&mut b, "conv5", Conv2d::new(c, 10, 1), true, t);
    let p = b.add("pool", Op::GlobalAvgPool, &[t]).unwrap();
    let fc = Linear {
        in_features: 10,
        out_features: 4,
        bias: true,
    };
    let fc = b.add("fc", fc, &[p]).unwrap();
    b.finish(&[fc]).unwrap()
}

/// For every shuffle, input channel `i * C/g + j` of each group `i` holds the same group
/// channel, and the output holds the input's channels permuted.
fn assert_shuffles_tied(g: &Graph, dg: &DepGraph) {
    for id in g.ids() {
        let Op::Channel(op @ ChannelOp::Shuffle { groups }) = &g.node(id).op else {
            continue;
        };
        let inp = dg.channels(g.node(id).inputs[0]);
        let per = inp.len() / groups;
        for j in 0..per {
            for i in 1..*groups {
                assert_eq!(inp[i * per + j], inp[j], "{} position {j}", g.node(id).name);
            }
        }
        let out = dg.channels(id);
        for (o, &s) in op.sources(inp.len()).iter().enumerate() {
            assert_eq!(out[o], inp[s]);
        }
    }
}

#[test]
fn branch_channels_are_prunable_and_shuffles_tie_their_groups() {
    let g = mini_shufflenet(16, 3);
    let dg = DepGraph::build(&g).unwrap();
    assert_shuffles_tied(&g, &dg);
    for root in [
        "stage2.0.b2.0",
        "stage2.1.b2.0",
        "stage2.2.b2.0",
        "conv1",
        "conv5",
    ] {
        let grp = dg.find_root(&g, root).next().unwrap();
        assert!(grp.prunable, "{root}: {:?}", grp.why_not);
    }
    assert_eq!(dg.find_root(&g, "stage2.1.b2.0").next().unwrap().size, 8);
    // The trunk: unit 0's 8 branch-pair channels (each one slot of both branches, two
    // adjacent slots after the shuffle) merge pairwise in unit 1 and again in unit 2.
    let trunk = dg.channels(g.find("stage2.2.shuffle").unwrap());
    let mut distinct = trunk.to_vec();
    distinct.sort_unstable_by_key(|c| (c.group, c.idx));
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "{trunk:?}");
    let b1 = dg.find_root(&g, "stage2.0.b1.2").next().unwrap();
    assert!(b1.prunable && b1.size == 8, "{b1:?}");
    let text = dg.describe(&g);
    assert!(text.contains("slice"), "{text}");
}

/// Random removals in every prunable group, skipping channels whose removal would leave a
/// node with no channels (a split half can hold only a few trunk channels).
fn random_plan(g: &Graph, dg: &DepGraph, seed: u64) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut left: Vec<usize> = g.ids().map(|id| dg.channels(id).len()).collect();
    let mut plan = Plan::empty(g);
    for grp in dg.prunable() {
        if grp.size < 2 || rng.next_u32() % 4 == 0 {
            continue;
        }
        let k = 1 + (rng.next_u64() % (grp.size as u64 - 1)) as usize;
        let mut removed = Vec::new();
        for _ in 0..k {
            let r = (rng.next_u64() % grp.size as u64) as usize;
            if removed.contains(&r) {
                continue;
            }
            let held: Vec<(usize, usize)> = g
                .ids()
                .map(|id| {
                    let n = dg
                        .channels(id)
                        .iter()
                        .filter(|c| c.group == grp.id && c.idx == r);
                    (id.0, n.count())
                })
                .filter(|&(_, n)| n > 0)
                .collect();
            if held.iter().all(|&(id, n)| left[id] > n) {
                held.iter().for_each(|&(id, n)| left[id] -= n);
                removed.push(r);
            }
        }
        removed.sort_unstable();
        if !removed.is_empty() {
            plan.groups.push(PlanGroup {
                group_id: grp.id,
                root: g.node(grp.root).name.clone(),
                removed,
            });
        }
    }
    plan
}

#[test]
fn pruned_equals_masked_through_shuffles_and_ranges() {
    let g = mini_shufflenet(16, 3);
    let dg = DepGraph::build(&g).unwrap();
    let x = input(&g, 2, 5);
    let mut trunk_cut = 0;
    for seed in 0..8 {
        let w = weights(&g, seed, false);
        let plan = random_plan(&g, &dg, seed);
        if plan.groups.is_empty() {
            continue;
        }
        let p = prune::prune(&g, &w, &plan).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let v = verify(&g, &w, &plan, &p, &x, VERIFY_TOLERANCE)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(v.max_abs_diff <= VERIFY_TOLERANCE, "seed {seed}");
        assert!(p.report.is_exact(), "seed {seed}");
        let c = predict_cost(&g, &w, &dg, &plan).unwrap();
        assert_eq!((c.macs, c.params), (p.graph.macs(), p.graph.n_params()));
        // The pruned graph keeps a 2-group shuffle after every unit, and the halves of each
        // stride-1 unit still cover its input.
        for id in p.graph.ids() {
            let n = p.graph.node(id);
            if let Op::Channel(ChannelOp::Slice { start, end }) = n.op {
                let c_in = p.graph.shape(n.inputs[0])[0];
                if n.name.ends_with(".x1") {
                    assert_eq!(start, 0, "{}", n.name);
                } else {
                    assert_eq!(end, c_in, "{}", n.name);
                }
            }
        }
        // Recovery's channel maps name, for every pruned node, the original channels it kept;
        // through the shuffles and ranges too.
        let gone = |id: NodeId, s: usize| {
            let ch = dg.channels(id)[s];
            plan.groups
                .iter()
                .any(|pg| pg.group_id == ch.group && pg.removed.contains(&ch.idx))
        };
        let maps = channel_maps(&g, &w, &p.graph, &p.weights);
        for id in p.graph.ids() {
            let oid = g.find(&p.graph.node(id).name).unwrap();
            let kept: Vec<usize> = (0..g.shape(oid)[0]).filter(|&s| !gone(oid, s)).collect();
            match &maps[id.0] {
                Some(m) => assert_eq!(m, &kept, "seed {seed}: {}", g.node(oid).name),
                None => assert!(!matches!(g.node(oid).op, Op::Channel(_)), "seed {seed}"),
            }
        }
        // The pruned graph goes through ONNX (shuffles as Reshape / Transpose / Reshape,
        // ranges as Slice) and comes back with the same ops and shapes.
        let bare = OnnxExportOptions::new().with_embed_graph(false);
        let bytes = export_onnx_bytes(&p.graph, &p.weights, &bare).unwrap();
        let (back, back_w) = import_onnx_bytes(&bytes, "pruned.onnx").unwrap();
        let ops = |g: &Graph| -> Vec<(Op, Vec<usize>)> {
            g.ids()
                .map(|id| (g.node(id).op.clone(), g.shape(id).to_vec()))
                .collect()
        };
        assert_eq!(ops(&back), ops(&p.graph), "seed {seed}");
        assert_eq!(back_w.len(), p.weights.len());
        let before = g.shape(g.find("stage2.2.shuffle").unwrap())[0];
        let after = p.graph.shape(p.graph.find("stage2.2.shuffle").unwrap())[0];
        trunk_cut += before - after;
    }
    assert!(trunk_cut > 0, "some plan removed trunk channels");
}

#[test]
fn allocation_never_empties_a_split_half() {
    // At high ratios a group keeps only a few channels; the second unit's first half holds
    // just 2 of the first unit's 8 branch-pair channels, so the allocator must skip removals
    // that would empty it (surgery refuses such a plan).
    let g = mini_shufflenet(16, 3);
    let x = input(&g, 2, 7);
    for seed in 0..4 {
        let w = weights(&g, seed, false);
        for ratio in [0.5, 0.9, 1.0] {
            let cfg = AllocConfig::new(Strategy::Uniform { ratio }).with_global_ranking();
            let ctx = ScoreContext::new(&g, &w);
            let plan = prune::plan(&ctx, &Magnitude::new(Norm::L1), &cfg).unwrap();
            let p = prune::prune(&g, &w, &plan)
                .unwrap_or_else(|e| panic!("seed {seed} ratio {ratio}: {e}"));
            for id in p.graph.ids() {
                assert!(p.graph.shape(id)[0] > 0);
            }
            let v = verify(&g, &w, &plan, &p, &x, VERIFY_TOLERANCE).unwrap();
            assert!(
                v.max_abs_diff <= VERIFY_TOLERANCE,
                "seed {seed} ratio {ratio}"
            );
        }
    }
}
