//! SBPF invariants (methods §2.6) and sweep properties: prefix caching changes nothing, an
//! interrupted sweep resumes to the same result, ratios meet their budgets.

mod common;

use std::collections::BTreeMap;

use shears::analyze::sbpf::{
    allocate_inverse, analyze, damage, multi_step, rank_stability, spearman, Budget, Damage,
    GroupSensitivity, MultiStepConfig, SbpfConfig,
};
use shears::analyze::sweep::{
    ratio_count, ratios_for_loss, ratios_for_macs, sweep, EvalSet, Prober, SweepConfig,
};
use shears::model::Model;
use shears::prune::{self, AllocConfig, Criterion, DepGraph, Reduction, ScoreContext, Strategy};
use shears::recover::finetune;
use shears::train::{CheckpointConfig, TrainConfig};
use shears_data::{DatasetName, Split};
use shears_engine::Network;

fn eval_set(model: &Model, name: DatasetName, n: usize) -> EvalSet {
    let ds = shears_data::load(&common::data_dir(), name, Split::Test).unwrap();
    let input = model.graph.shape(model.graph.inputs()[0]).to_vec();
    EvalSet::balanced(&ds, n, 0, &model.preprocess, &input).unwrap()
}

fn lenet() -> (Model, EvalSet) {
    let m = common::shared_model("mnist_lenet5_clntrained");
    let d = eval_set(&m, DatasetName::Mnist, 300);
    (m, d)
}

fn resnet20(n: usize) -> (Model, EvalSet) {
    let m = common::shared_model("resnet20");
    let d = eval_set(&m, DatasetName::Cifar10, n);
    (m, d)
}

fn cfg(damage: Damage, delta: f32, seeds: usize) -> SbpfConfig {
    SbpfConfig {
        damage,
        deltas: vec![delta],
        seeds,
        ..SbpfConfig::default()
    }
}

#[test]
fn zero_damage_gives_zero_sensitiveness() {
    let (m, d) = lenet();
    for op in [Damage::DropRandom, Damage::GaussNoise, Damage::DropL1] {
        let r = analyze(&m.graph, &m.weights, &d, &cfg(op, 0.0, 2)).unwrap();
        assert!(r.groups.len() >= 3, "{op}: {} groups", r.groups.len());
        for g in &r.groups {
            assert_eq!(g.sensitiveness, 0.0, "{op} on {}", g.root);
        }
    }
    // Nonzero damage does hurt somewhere (the test can fail).
    let r = analyze(&m.graph, &m.weights, &d, &cfg(Damage::DropRandom, 0.5, 1)).unwrap();
    assert!(r.groups.iter().any(|g| g.sensitiveness > 0.01));
}

#[test]
fn full_damage_collapses_a_chain_layer_to_chance() {
    let (m, d) = lenet();
    let r = analyze(&m.graph, &m.weights, &d, &cfg(Damage::DropRandom, 1.0, 1)).unwrap();
    assert!(r.baseline_accuracy > 0.95);
    for g in &r.groups {
        // Every activation after the layer is constant, so one class is predicted for all
        // images: exactly 1/10 of a class-balanced set.
        assert_eq!(g.damaged_accuracy, 0.1, "{}", g.root);
    }
}

#[test]
fn full_damage_of_a_residual_branch_does_not_collapse() {
    let (m, d) = resnet20(200);
    let r = analyze(&m.graph, &m.weights, &d, &cfg(Damage::DropRandom, 1.0, 1)).unwrap();
    assert!(r.baseline_accuracy > 0.85);
    // Removing a whole branch leaves its second batch norm's shift as a constant on the
    // residual stream; the identity path survives it in the inner blocks. The first block of
    // stages 2 and 3 downsamples through an option-A shortcut whose zero-padded channels only
    // the branch fills, so it suffers more but stays above chance; the network's last block
    // (its shift lands right before pooling and the classifier) is the one exception allowed.
    let mut branches = 0;
    let mut identity = Vec::new();
    for g in &r.groups {
        if g.root.starts_with("layer") && g.root.ends_with(".conv1") {
            branches += 1;
            if g.root.ends_with(".0.conv1") && !g.root.starts_with("layer1") {
                assert!(
                    g.damaged_accuracy > 0.12,
                    "{}: {}",
                    g.root,
                    g.damaged_accuracy
                );
            } else {
                identity.push(g.damaged_accuracy);
            }
        }
    }
    identity.sort_by(f64::total_cmp);
    assert_eq!(identity.len(), 7);
    assert!(identity[3] > 0.5, "median branch accuracy {:?}", identity);
    assert!(
        identity.iter().filter(|&&a| a > 0.3).count() >= 6,
        "branches collapsed: {identity:?}"
    );
    assert_eq!(branches, 9);
    // The stem's trunk carries every stage-1 channel: removing it all is chance.
    let stem = r.groups.iter().find(|g| g.root == "conv1").unwrap();
    assert_eq!(stem.damaged_accuracy, 0.1);
}

#[test]
fn damage_is_seeded() {
    let (m, d) = lenet();
    let c = cfg(Damage::DropRandom, 0.5, 2);
    let a = analyze(&m.graph, &m.weights, &d, &c).unwrap();
    let b = analyze(&m.graph, &m.weights, &d, &c).unwrap();
    assert_eq!(a.groups, b.groups);
    let other = SbpfConfig { seed: 7, ..c };
    let o = analyze(&m.graph, &m.weights, &d, &other).unwrap();
    assert_ne!(a.groups, o.groups, "another seed must damage other filters");
    let dg = DepGraph::build(&m.graph).unwrap();
    let g = dg.prunable().next().unwrap();
    for op in [Damage::DropRandom, Damage::GaussNoise, Damage::DropL1] {
        let x = damage(&m.graph, &m.weights, g, op, 0.5, 3).unwrap();
        let y = damage(&m.graph, &m.weights, g, op, 0.5, 3).unwrap();
        assert!(!x.is_empty());
        for (n, t) in x.iter() {
            assert_eq!(t.data(), y.get(n).unwrap().data(), "{op} {n}");
        }
    }
    // Prefix caching does not change the analysis.
    let nc = SbpfConfig {
        prefix_cache: false,
        ..cfg(Damage::DropRandom, 0.5, 2)
    };
    let n = analyze(&m.graph, &m.weights, &d, &nc).unwrap();
    assert_eq!(a.groups, n.groups);
}

/// Synthetic sensitiveness for the prunable groups of a graph (seeded, spread over decades).
fn synthetic(m: &Model, seed: u64) -> Vec<GroupSensitivity> {
    let dg = DepGraph::build(&m.graph).unwrap();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    dg.prunable()
        .filter(|g| g.size > 1)
        .map(|g| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            GroupSensitivity {
                group: g.id,
                root: m.graph.node(g.root).name.clone(),
                size: g.size,
                accuracies: vec![],
                damaged_accuracy: 0.0,
                damaged_loss: 0.0,
                sensitiveness: 10f64.powf(-3.0 + 3.0 * u),
            }
        })
        .collect()
}

#[test]
fn allocation_meets_budgets_and_is_monotone() {
    let m = common::shared_model("resnet56");
    for seed in 0..4 {
        let sens = synthetic(&m, seed);
        let layers = sens.len() as f64;
        for &ratio in &[0.1, 0.3, 0.5, 0.7] {
            let r_max = 0.9;
            let a = allocate_inverse(
                &m.graph,
                &m.weights,
                &sens,
                Budget::Filters { ratio },
                r_max,
            )
            .unwrap();
            let want = ratio * a.filters_total as f64;
            assert!(
                (a.filters_removed as f64 - want).abs() <= layers,
                "removed {} for a target of {want}",
                a.filters_removed
            );
            for (x, gx) in sens.iter().zip(&a.groups) {
                assert!(
                    (0.0..=r_max).contains(&gx.ratio),
                    "{}: {}",
                    gx.root,
                    gx.ratio
                );
                for (y, gy) in sens.iter().zip(&a.groups) {
                    if x.sensitiveness > y.sensitiveness {
                        assert!(gx.ratio <= gy.ratio, "{} vs {}", gx.root, gy.root);
                        if gx.size == gy.size {
                            assert!(gx.removed <= gy.removed);
                        }
                    }
                }
            }
        }
        // A MACs budget: the ratios file reproduces the allocation under `prune`.
        let a = allocate_inverse(
            &m.graph,
            &m.weights,
            &sens,
            Budget::Macs { keep_fraction: 0.5 },
            0.9,
        )
        .unwrap();
        assert!(a.macs_after as f64 <= 0.5 * a.macs_before as f64);
        assert!(
            a.macs_after as f64 >= 0.45 * a.macs_before as f64,
            "{}",
            a.macs_after
        );
        let plan = prune::plan(
            &ScoreContext::new(&m.graph, &m.weights),
            Criterion::L1.build(Reduction::Mean, 0).as_ref(),
            &AllocConfig::new(Strategy::PerGroup {
                ratios: a.ratios.clone(),
            }),
        )
        .unwrap();
        let pruned = prune::prune(&m.graph, &m.weights, &plan).unwrap();
        assert_eq!(pruned.graph.macs(), a.macs_after);
        for g in &a.groups {
            let r = a.ratios.get(&g.root).copied().unwrap_or(0.0);
            assert_eq!(ratio_count(r, g.size), g.removed, "{}", g.root);
        }
    }
    // Unreachable budgets are errors, not panics.
    let sens = synthetic(&m, 0);
    let e = allocate_inverse(
        &m.graph,
        &m.weights,
        &sens,
        Budget::Filters { ratio: 0.95 },
        0.9,
    );
    assert!(e.unwrap_err().to_string().contains("out of reach"));
}

#[test]
fn spearman_and_rank_stability() {
    assert_eq!(
        spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]).unwrap(),
        1.0
    );
    assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap(), -1.0);
    // Ties get average ranks: ranks (1.5, 1.5, 3) against (1, 2, 3).
    let r = spearman(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0]).unwrap();
    assert!((r - 0.866_025_403_784_438_6).abs() < 1e-12, "{r}");
    assert!(spearman(&[1.0], &[1.0]).is_err());
    assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_err());
    let (m, d) = lenet();
    let a = analyze(&m.graph, &m.weights, &d, &cfg(Damage::DropL1, 0.5, 1)).unwrap();
    let (rho, n) = rank_stability(&a, &a).unwrap();
    assert_eq!((rho, n), (1.0, a.groups.len()));
}

fn sweep_cfg(ratios: Vec<f32>) -> SweepConfig {
    let mut c = SweepConfig::new(ratios);
    c.batch = 64;
    c
}

#[test]
fn prefix_cache_gives_identical_sweeps_and_saves_work() {
    let (m, d) = resnet20(100);
    let c = sweep_cfg(vec![0.25, 0.75]);
    let cached = sweep(&m.graph, &m.weights, &d, &c).unwrap();
    let full = sweep(
        &m.graph,
        &m.weights,
        &d,
        &SweepConfig {
            prefix_cache: false,
            ..c.clone()
        },
    )
    .unwrap();
    assert!(cached.complete && full.complete);
    assert_eq!(cached.groups.len(), 12);
    // Bit-identical probes, and the baseline scored from the last cached frontier too.
    assert_eq!(cached.groups, full.groups);
    assert_eq!(cached.baseline_loss, full.baseline_loss);
    // Every probe zeroes whole filters, so every one skips its damaged conv.
    let st = cached.stats;
    assert_eq!((st.probes, st.skipped), (24, 24), "{st:?}");
    let work = cached.stats.total_macs();
    assert!(
        (work as f64) < 0.6 * full.stats.total_macs() as f64,
        "{work} vs {}",
        full.stats.total_macs()
    );
    // A damage that is not whole zeroed filters runs from the frontier, exactly.
    let conv = "layer2.1.conv1.weight";
    let mut noisy = shears_ir::Weights::new();
    let mut t = m.weights.get(conv).unwrap().clone();
    for (i, v) in t.data_mut().iter_mut().enumerate() {
        *v *= 1.0 + 0.01 * ((i % 7) as f32 - 3.0);
    }
    noisy.insert(conv, t);
    let mut pc = Prober::new(&m.graph, &m.weights, &d, 64, true).unwrap();
    let mut pf = Prober::new(&m.graph, &m.weights, &d, 64, false).unwrap();
    let (a, b) = (pc.probe(&noisy).unwrap(), pf.probe(&noisy).unwrap());
    assert_eq!(a, b);
    assert_eq!(pc.stats().skipped, 0);
    // Each probe equals the pruned model evaluated from scratch.
    let g = &cached.groups[4];
    let p = &g.points[1];
    let mut ratios = BTreeMap::new();
    ratios.insert(g.root.clone(), p.ratio);
    let plan = prune::plan(
        &ScoreContext::new(&m.graph, &m.weights),
        Criterion::L1.build(Reduction::Mean, 0).as_ref(),
        &AllocConfig::new(Strategy::PerGroup { ratios }),
    )
    .unwrap();
    let pruned = prune::prune(&m.graph, &m.weights, &plan).unwrap();
    let mut pr = Prober::new(&pruned.graph, &pruned.weights, &d, 50, false).unwrap();
    let s = pr.baseline().unwrap();
    assert_eq!(s.accuracy(), p.accuracy);
    assert!((s.loss - p.loss).abs() < 1e-4, "{} vs {}", s.loss, p.loss);
    // Larger ratios hurt the trunk more.
    let stem = cached.groups.iter().find(|g| g.root == "conv1").unwrap();
    assert!(stem.points[1].loss > stem.points[0].loss);
}

#[test]
fn interrupted_sweep_resumes_to_the_same_result() {
    let (m, d) = resnet20(60);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.json");
    let mut c = sweep_cfg(vec![0.3, 0.6]);
    c.cache_file = Some(file.clone());
    c.max_new_probes = Some(7);
    let first = sweep(&m.graph, &m.weights, &d, &c).unwrap();
    assert!(!first.complete);
    assert_eq!((first.computed, first.reused), (7, 0));
    c.max_new_probes = None;
    let second = sweep(&m.graph, &m.weights, &d, &c).unwrap();
    assert!(second.complete);
    assert_eq!((second.computed, second.reused), (24 - 7, 7));
    let fresh = sweep(&m.graph, &m.weights, &d, &sweep_cfg(vec![0.3, 0.6])).unwrap();
    assert_eq!(second.groups, fresh.groups);
    // A third run computes nothing.
    let third = sweep(&m.graph, &m.weights, &d, &c).unwrap();
    assert_eq!((third.computed, third.reused), (0, 24));
    // A cache made for another criterion is refused, naming the file and the difference.
    c.criterion = Criterion::L2;
    let e = sweep(&m.graph, &m.weights, &d, &c).unwrap_err().to_string();
    assert!(e.contains("cache.json") && e.contains("criterion"), "{e}");
    // A corrupt cache is an error, not a panic.
    std::fs::write(&file, "{not json").unwrap();
    c.criterion = Criterion::L1;
    assert!(sweep(&m.graph, &m.weights, &d, &c).is_err());

    // Ratio selection from the curves.
    let r = ratios_for_loss(&fresh, 0.05);
    for (root, ratio) in &r {
        let g = fresh.groups.iter().find(|g| &g.root == root).unwrap();
        assert!(*ratio > 0.0 && *ratio <= 0.6 + 1e-6, "{root}: {ratio}");
        assert!(ratio_count(*ratio, g.size) < g.size);
    }
    assert!(ratios_for_loss(&fresh, 0.0).len() <= r.len());
    let sel = ratios_for_macs(&m.graph, &m.weights, &fresh, 0.8).unwrap();
    assert!(sel.macs_after as f64 <= 0.8 * sel.macs_before as f64);
    let plan = prune::plan(
        &ScoreContext::new(&m.graph, &m.weights),
        Criterion::L1.build(Reduction::Mean, 0).as_ref(),
        &AllocConfig::new(Strategy::PerGroup { ratios: sel.ratios }),
    )
    .unwrap();
    let pruned = prune::prune(&m.graph, &m.weights, &plan).unwrap();
    assert_eq!(pruned.graph.macs(), sel.macs_after);
    assert!(ratios_for_macs(&m.graph, &m.weights, &fresh, 0.01).is_err());
}

/// Multi-step SBPF (methods §2.3): each step re-analyses the model it is given, takes the
/// geometric share of the budget, and calls the fine-tuning hook, whose weights the next
/// step analyses.
#[test]
fn multi_step_meets_the_budget_and_fine_tunes_between_steps() {
    let (m, d) = lenet();
    let train = shears_data::load(&common::data_dir(), DatasetName::Mnist, Split::Train)
        .unwrap()
        .class_balanced_subset(1000, 0);
    let filters = |g: &shears_ir::Graph| -> usize {
        DepGraph::build(g)
            .unwrap()
            .groups()
            .iter()
            .map(|gr| gr.size)
            .sum()
    };
    let before = filters(&m.graph);
    let cfg = MultiStepConfig {
        steps: 2,
        budget: Budget::Filters { ratio: 0.5 },
        r_max: 0.9,
        criterion: Criterion::L1,
        sbpf: cfg(Damage::DropRandom, 0.5, 1),
        bn_recal: None,
    };
    let mut calls = Vec::new();
    let mut hook = |step: usize, g: &shears_ir::Graph, w: &mut shears_ir::Weights| {
        let mut net = Network::new(g.clone(), w)?;
        let fc = TrainConfig {
            max_batches: Some(5),
            ..TrainConfig::finetune(1)
        };
        finetune(
            &mut net,
            None,
            &train,
            None,
            &m.preprocess,
            &fc,
            &CheckpointConfig::default(),
            shears::progress::Verbosity::Quiet,
        )?;
        let tuned = net.weights();
        calls.push((step, tuned != *w));
        *w = tuned;
        Ok(())
    };
    let res = multi_step(
        &m.graph,
        &m.weights,
        &d,
        None,
        &cfg,
        Some(&mut hook as &mut shears::analyze::sbpf::FinetuneHook<'_>),
    )
    .unwrap();
    let (g, records) = (&res.graph, &res.steps);
    assert_eq!(calls, vec![(1, true), (2, true)]);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].macs, g.macs());
    // Each step analyses the model the previous one left, and takes 1 - sqrt(0.5) of its
    // filters (within one per group), so about half of the analysed filters remain.
    let (a0, a1) = (&records[0].allocation, &records[1].allocation);
    assert_eq!(a1.filters_total, a0.filters_total - a0.filters_removed);
    let share = 1.0 - 0.5f64.sqrt();
    for a in [a0, a1] {
        let slack = a.groups.len() as f64;
        assert!(
            (a.filters_removed as f64 - share * a.filters_total as f64).abs() <= slack,
            "{a:?}"
        );
    }
    let kept = (a1.filters_total - a1.filters_removed) as f64 / a0.filters_total as f64;
    assert!((kept - 0.5).abs() < 0.05, "kept {kept}");
    assert!(filters(g) < before);
    assert!(records[1].accuracy_recovered > 0.9, "{records:?}");
    // The kept channels are composed over both steps: one strictly increasing list of
    // original indices per pruned layer, as long as the layer's final width.
    assert!(!res.kept_channels.is_empty());
    for (name, idx) in &res.kept_channels {
        let now = g.shape(g.find(name).expect("a pruned layer"))[0];
        let orig = m
            .graph
            .shape(m.graph.find(name).expect("an original layer"))[0];
        assert_eq!(idx.len(), now, "{name}");
        assert!(
            idx.windows(2).all(|p| p[0] < p[1]) && idx[now - 1] < orig,
            "{name}: {idx:?}"
        );
    }
}

#[test]
fn bad_input_is_an_error() {
    let (m, d) = lenet();
    assert!(analyze(&m.graph, &m.weights, &d, &cfg(Damage::DropRandom, 1.5, 1)).is_err());
    assert!(analyze(
        &m.graph,
        &m.weights,
        &d,
        &cfg(Damage::DropRandom, f32::NAN, 1)
    )
    .is_err());
    assert!(analyze(&m.graph, &m.weights, &d, &cfg(Damage::DropRandom, 0.5, 0)).is_err());
    assert!("bogus".parse::<Damage>().is_err());
    assert!(sweep(&m.graph, &m.weights, &d, &sweep_cfg(vec![1.0])).is_err());
    assert!(sweep(&m.graph, &m.weights, &d, &sweep_cfg(vec![])).is_err());
    let mut c = sweep_cfg(vec![0.5]);
    c.only = Some(vec!["nope".into()]);
    let e = sweep(&m.graph, &m.weights, &d, &c).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
    let sens = synthetic(&m, 1);
    assert!(allocate_inverse(
        &m.graph,
        &m.weights,
        &sens,
        Budget::Filters { ratio: 0.5 },
        1.5
    )
    .is_err());
}
