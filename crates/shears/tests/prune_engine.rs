//! Masked versus pruned through the engine (`prune::verify`, eval mode) on zoo models.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shears::prune::{
    self, verify, DepGraph, FoldMode, Group, Plan, PlanGroup, PruneError, VERIFY_TOLERANCE,
};
use shears::zoo::{build, init_weights, Arch};
use shears_ir::{Graph, Op, ParamKind, Tensor, Weights};

fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32)
}

fn zoo(arch: Arch, hw: usize) -> Graph {
    let mut c = arch.default_config();
    c.input_hw = (hw, hw);
    build(arch, &c).unwrap()
}

fn input(g: &Graph, n: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut shape = vec![n];
    shape.extend_from_slice(g.shape(g.inputs()[0]));
    let numel: usize = shape.iter().product();
    Tensor::new(
        shape,
        (0..numel).map(|_| uniform(&mut rng, -1.0, 1.0)).collect(),
    )
    .unwrap()
}

fn randomize_bn(g: &Graph, w: &mut Weights, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for id in g.ids() {
        if let Op::BatchNorm2d(_) = g.node(id).op {
            let n = g.node(id);
            for (kind, lo, hi) in [
                (ParamKind::Weight, 0.5, 1.5),
                (ParamKind::Bias, -0.2, 0.8),
                (ParamKind::RunningMean, -0.3, 0.3),
                (ParamKind::RunningVar, 0.5, 2.0),
            ] {
                for x in w.get_mut(&n.param_name(kind)).unwrap().data_mut() {
                    *x = uniform(&mut rng, lo, hi);
                }
            }
        }
    }
}

fn random_plan(g: &Graph, dg: &DepGraph, seed: u64, keep: impl Fn(&Group) -> bool) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut plan = Plan::empty(g);
    for grp in dg.prunable().filter(|x| keep(x)) {
        if rng.next_u32() % 10 >= 7 {
            continue;
        }
        let k = (rng.next_u64() % grp.size as u64) as usize;
        let mut idx: Vec<usize> = (0..grp.size).collect();
        for i in 0..k {
            let j = i + (rng.next_u64() % (grp.size - i) as u64) as usize;
            idx.swap(i, j);
        }
        let mut removed = idx[..k].to_vec();
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

/// Exact surgery must verify (always in exact fold mode); a failure must come with reported
/// approximations.
fn check(g: &Graph, w: &Weights, plan: &Plan, x: &Tensor) -> prune::Pruned {
    let p = prune::prune(g, w, plan).unwrap();
    match verify(g, w, plan, &p, x, VERIFY_TOLERANCE) {
        Ok(v) => assert!(v.max_abs_diff <= v.tolerance),
        Err(e) if plan.fold == FoldMode::Exact => panic!("exact fold mode must verify: {e}"),
        Err(PruneError::Verification { max_abs_diff, .. }) => assert!(
            !p.report.is_exact(),
            "outputs differ by {max_abs_diff:e} but surgery claims to be exact"
        ),
        Err(e) => panic!("{e}"),
    }
    p
}

#[test]
fn engine_masked_equals_pruned_on_zoo_models() {
    for (arch, hw, n_plans) in [
        (Arch::ResNet20, 32, 5),
        (Arch::Vgg11, 32, 3),
        (Arch::DenseNetBcCifar, 16, 3),
        (Arch::LeNet5, 28, 5),
    ] {
        let g = zoo(arch, hw);
        let w = init_weights(&g, Some(arch), 1);
        let dg = DepGraph::build(&g).unwrap();
        let x = input(&g, 4, 2);
        for seed in 0..n_plans {
            let p = check(&g, &w, &random_plan(&g, &dg, seed, |_| true), &x);
            if arch != Arch::LeNet5 {
                assert!(p.report.is_exact(), "{arch}: fresh BN folds zero constants");
            }
        }
    }
}

#[test]
fn engine_nonzero_constants_fold_exactly() {
    // DenseNet-BC growth / stem / transition channels reach only 1x1 convs and the classifier;
    // LeNet-5's conv2 reaches a linear layer through flatten, linear1 another linear layer.
    for (arch, hw) in [(Arch::DenseNetBcCifar, 16), (Arch::LeNet5, 28)] {
        let g = zoo(arch, hw);
        let mut w = init_weights(&g, Some(arch), 3);
        randomize_bn(&g, &mut w, 4);
        let dg = DepGraph::build(&g).unwrap();
        let x = input(&g, 4, 5);
        let exact = |grp: &Group| {
            let root = &g.node(grp.root).name;
            match arch {
                Arch::LeNet5 => root == "conv2" || root == "linear1",
                _ => !root.ends_with(".conv1"),
            }
        };
        let mut n_folds = 0;
        for seed in 0..4 {
            let p = check(&g, &w, &random_plan(&g, &dg, seed, exact), &x);
            assert!(p.report.is_exact(), "{arch}: {:?}", p.report.approximations);
            n_folds += p.report.folds.len();
        }
        assert!(n_folds > 0, "{arch}: the plans fold nonzero constants");
    }
}

#[test]
fn engine_exact_fold_mode_verifies_every_plan_with_nonzero_constants() {
    // Batch norms with nonzero shifts everywhere: in exact mode (the default) every random
    // plan verifies, including channels that reach padded 3x3 convs (forced to zero).
    for (arch, hw, n_plans) in [
        (Arch::ResNet20, 16, 4),
        (Arch::Vgg11, 32, 2),
        (Arch::DenseNetBcCifar, 16, 2),
        (Arch::LeNet5, 28, 4),
        (Arch::MlperfResNet8, 32, 3),
    ] {
        let g = zoo(arch, hw);
        let mut w = init_weights(&g, Some(arch), 7);
        randomize_bn(&g, &mut w, 8);
        let dg = DepGraph::build(&g).unwrap();
        let x = input(&g, 3, 9);
        let mut zeroed = 0;
        for seed in 0..n_plans {
            let plan = random_plan(&g, &dg, seed, |_| true);
            assert_eq!(plan.fold, FoldMode::Exact);
            let p = check(&g, &w, &plan, &x);
            assert!(p.report.is_exact(), "{arch}");
            zeroed += p.report.zeroed_channels;
        }
        assert!(zeroed > 0, "{arch}: the plans force some channels to zero");
    }
}

/// A pruned ResNet's ragged convs run transposed, and each block's first conv hands its map to
/// the second without leaving the channel-major layout (`ConvChain`), the residual sum inside
/// the chain and consecutive blocks handing their maps over as padded planes: same outputs,
/// bit for bit, as running the two convs and the add apart.
#[test]
fn chained_transposed_convs_equal_separate_ones() {
    use shears_engine::{Mode, Network};
    let g = zoo(Arch::ResNet20, 32);
    let w = init_weights(&g, Some(Arch::ResNet20), 7);
    let dg = DepGraph::build(&g).unwrap();
    let x = input(&g, 3, 8);
    // Every group loses 5 channels (16 -> 11, 32 -> 27: all transposed), then random plans.
    let mut every = Plan::empty(&g);
    for grp in dg.prunable() {
        every.groups.push(PlanGroup {
            group_id: grp.id,
            root: g.node(grp.root).name.clone(),
            removed: (0..5).collect(),
        });
    }
    let plans = [every]
        .into_iter()
        .chain((0..3).map(|s| random_plan(&g, &dg, 10 + s, |_| true)));
    for (seed, plan) in plans.enumerate() {
        let p = prune::prune(&g, &w, &plan).unwrap();
        let mut net = Network::new(p.graph.clone(), &p.weights).unwrap();
        net.set_profiling(true);
        let chained = net.forward(&x, Mode::Eval).unwrap();
        let labels: Vec<String> = net
            .profile()
            .unwrap()
            .entries
            .iter()
            .map(|e| e.0.clone())
            .collect();
        net.set_conv_chains(false);
        let apart = net.forward(&x, Mode::Eval).unwrap();
        assert_eq!(chained.data(), apart.data(), "plan {seed}");
        // And with the residual sums as separate adds too.
        net.set_residual_fusion(false);
        let unfused = net.forward(&x, Mode::Eval).unwrap();
        assert_eq!(chained.data(), unfused.data(), "plan {seed}, adds apart");
        net.set_conv_chains(true);
        net.set_residual_fusion(true);
        if seed == 0
            && shears_engine::kernels::conv::ConvAlgo::ShiftedT
                == shears_engine::kernels::conv::ConvGeom::new(
                    &shears_ir::Conv2d::new(16, 11, 3).with_padding(1),
                    32,
                    32,
                )
                .unwrap()
                .algo
        {
            assert!(
                labels.iter().any(|l| l.contains("conv2d+bn+relu+conv2d")),
                "some block ran chained: {labels:?}"
            );
            // Stage 1 (16 -> 11 channels on 32x32): residual blocks hand their maps over
            // as padded planes, the sum inside the chain.
            assert!(
                labels
                    .iter()
                    .any(|l| l.contains("planes>conv2d+bn+relu+conv2d+bn+add+relu>planes")),
                "some block ran planes in and out: {labels:?}"
            );
        }
    }
}
