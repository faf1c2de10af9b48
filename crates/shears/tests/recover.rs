//! Recovery: BN recalibration, CASM (gradient and least squares) and fine-tuning.

mod common;

use std::collections::BTreeMap;

use shears::eval::{evaluate, EvalConfig};
use shears::progress::Verbosity;
use shears::prune::{self, AllocConfig, Criterion, Reduction, ScoreContext, Strategy};
use shears::recover::{
    bn_recalibrate, bn_recalibrate_with, casm, finetune, BnRecalConfig, CasmConfig, CasmVariant,
    ResidualTarget,
};
use shears::train::{CheckpointConfig, TrainConfig};
use shears::zoo::Preprocess;
use shears_data::{Dataset, DatasetName, Split};
use shears_engine::{DistillConfig, Network};
use shears_ir::{Conv2d, Graph, GraphBuilder, Tensor, Weights};

fn acc(net: &mut Network, ds: &Dataset, pre: &Preprocess, n: usize) -> f64 {
    let cfg = EvalConfig {
        limit: Some(n),
        verbosity: Verbosity::Quiet,
        ..EvalConfig::default()
    };
    evaluate(net, ds, pre, &cfg).unwrap().top1
}

fn mnist(split: Split) -> Dataset {
    shears_data::load(&common::data_dir(), DatasetName::Mnist, split).unwrap()
}

#[test]
fn bn_recalibration_keeps_and_restores_accuracy() {
    let m = common::shared_model("resnet20");
    let dir = common::data_dir();
    let test = shears_data::load(&dir, DatasetName::Cifar10, Split::Test)
        .unwrap()
        .take(500);
    let train = shears_data::load(&dir, DatasetName::Cifar10, Split::Train)
        .unwrap()
        .take(5000);
    let pre = &m.preprocess;
    let mut net = Network::new(m.graph.clone(), &m.weights).unwrap();
    let base = acc(&mut net, &test, pre, 500);
    // The shared weights were trained with pad-crop and flips, so their statistics describe
    // augmented images; recalibrate the same way.
    let cfg = BnRecalConfig {
        augment_pad: Some(4),
        augment_flip: true,
        ..BnRecalConfig::new(500, 100)
    };

    // Recalibrating on the training distribution keeps accuracy.
    let rep = bn_recalibrate_with(&mut net, &train, pre, &cfg).unwrap();
    assert_eq!(rep.layers, 19);
    assert_eq!(rep.samples, 500);
    let recal = acc(&mut net, &test, pre, 500);
    // Only the running statistics changed.
    let w = net.weights();
    for (name, t) in m.weights.iter() {
        if !name.ends_with("running_mean") && !name.ends_with("running_var") {
            assert_eq!(w.get(name).unwrap(), t, "{name} changed");
        }
    }

    // Corrupted statistics destroy accuracy; recalibration restores it.
    let mut bad = m.weights.clone();
    for (name, t) in bad.iter_mut() {
        if name.ends_with("running_mean") {
            t.data_mut().fill(0.0);
        } else if name.ends_with("running_var") {
            t.data_mut().fill(1.0);
        }
    }
    net.set_weights(&bad).unwrap();
    let broken = acc(&mut net, &test, pre, 500);
    bn_recalibrate_with(&mut net, &train, pre, &cfg).unwrap();
    let restored = acc(&mut net, &test, pre, 500);
    // Without augmentation (the plain entry point) the statistics describe clean images.
    net.set_weights(&bad).unwrap();
    bn_recalibrate(&mut net, &train, pre, 500, 100, 0).unwrap();
    let clean = acc(&mut net, &test, pre, 500);
    println!(
        "resnet20, 500 CIFAR-10 test images: original {base:.1}%, recalibrated {recal:.1}%, \
         corrupted {broken:.1}%, restored {restored:.1}% (without augmentation {clean:.1}%)"
    );
    assert!((recal - base).abs() <= 1.5, "{base} -> {recal}");
    assert!(broken < base - 20.0, "corruption should hurt: {broken}");
    assert!((restored - base).abs() <= 1.5, "{base} -> {restored}");
    assert!(clean > base - 6.0, "{base} -> {clean}");
}

/// LeNet-5 with about half of conv2's and linear1's channels removed by L1 norm.
fn pruned_lenet() -> (shears::model::Model, prune::Pruned) {
    let m = common::shared_model("mnist_lenet5_clntrained");
    let p = prune_groups(&m, &[("conv2", 0.5), ("linear1", 0.5)]);
    let (c2, l1n) = (
        p.graph.find("conv2").unwrap(),
        p.graph.find("linear1").unwrap(),
    );
    assert_eq!(p.graph.shape(c2)[0], 32);
    assert_eq!(p.graph.shape(l1n)[0], 100);
    (m, p)
}

#[test]
fn casm_without_pruning_is_a_fixed_point() {
    let m = common::shared_model("mnist_lenet5_clntrained");
    let train = mnist(Split::Train).take(2000);
    let cfg = CasmConfig {
        samples: 200,
        include_unpruned: true,
        ..CasmConfig::default()
    };
    for variant in [CasmVariant::Gradient, CasmVariant::LeastSquares] {
        let cfg = CasmConfig {
            variant,
            ..cfg.clone()
        };
        let (w, rep) = casm(
            (&m.graph, &m.weights),
            (&m.graph, &m.weights),
            &train,
            &m.preprocess,
            &cfg,
        )
        .unwrap();
        // conv1, conv2 and linear1 have a next layer; linear2 is the output.
        let done: Vec<&str> = rep
            .layers
            .iter()
            .filter(|l| l.skipped.is_none())
            .map(|l| l.layer.as_str())
            .collect();
        assert_eq!(done, ["conv1", "conv2", "linear1"], "{variant:?}");
        for l in &rep.layers {
            assert!(l.initial_mse < 1e-10, "{}: {}", l.layer, l.initial_mse);
            assert!(l.final_mse <= l.initial_mse);
            assert_eq!(l.epochs, 0);
        }
        assert_eq!(w, m.weights, "{variant:?} changed the weights");
    }
}

/// Random raw images for the toy cases.
fn toy_dataset(n: usize, c: usize, hw: usize, seed: u64) -> Dataset {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let images = (0..n * c * hw * hw)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect();
    Dataset {
        name: "toy".into(),
        images,
        labels: (0..n).map(|i| (i % 2) as u8).collect(),
        n,
        c,
        h: hw,
        w: hw,
        classes: vec!["a".into(), "b".into()],
    }
}

fn rand_tensor(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

/// `input → a (3x3) → b (3x3)`, both with bias and no non-linearity; `a` has `mid` filters.
fn linear_toy(mid: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 6, 6]).unwrap();
    let conv = |i, o| Conv2d::new(i, o, 3).with_padding(1).with_bias(true);
    let a = b.add("a", conv(3, mid), &[x]).unwrap();
    let c = b.add("b", conv(mid, 4), &[a]).unwrap();
    b.finish(&[c]).unwrap()
}

#[test]
fn gradient_casm_reaches_the_least_squares_solution_on_a_linear_toy() {
    let og = linear_toy(6);
    let mut ow = Weights::new();
    ow.insert("a.weight", rand_tensor(&[6, 3, 3, 3], 1, 0.5));
    ow.insert("a.bias", rand_tensor(&[6], 2, 0.1));
    ow.insert("b.weight", rand_tensor(&[4, 6, 3, 3], 3, 0.5));
    ow.insert("b.bias", rand_tensor(&[4], 4, 0.1));
    // Prune filters 1, 3 and 5 of `a` (and the matching inputs of `b`).
    let keep = [0usize, 2, 4];
    let pg = linear_toy(3);
    let mut pw = Weights::new();
    let pick = |t: &Tensor, axis: usize| -> Tensor {
        let s = t.shape();
        let inner: usize = s[axis + 1..].iter().product();
        let outer: usize = s[..axis].iter().product();
        let mut d = Vec::new();
        for o in 0..outer {
            for &k in &keep {
                let base = (o * s[axis] + k) * inner;
                d.extend_from_slice(&t.data()[base..base + inner]);
            }
        }
        let mut sh = s.to_vec();
        sh[axis] = keep.len();
        Tensor::new(sh, d).unwrap()
    };
    pw.insert("a.weight", pick(ow.get("a.weight").unwrap(), 0));
    pw.insert("a.bias", pick(ow.get("a.bias").unwrap(), 0));
    pw.insert("b.weight", pick(ow.get("b.weight").unwrap(), 1));
    pw.insert("b.bias", ow.get("b.bias").unwrap().clone());
    let ds = toy_dataset(256, 3, 6, 7);
    let pre = Preprocess {
        scale: 1.0 / 255.0,
        mean: vec![0.5],
        std: vec![0.25],
    };
    let base = CasmConfig {
        samples: 256,
        batch_size: 64,
        ..CasmConfig::default()
    };
    let ls_cfg = CasmConfig {
        variant: CasmVariant::LeastSquares,
        ridge: 1e-12,
        ..base.clone()
    };
    let (ls, ls_rep) = casm((&og, &ow), (&pg, &pw), &ds, &pre, &ls_cfg).unwrap();
    let gd_cfg = CasmConfig {
        variant: CasmVariant::Gradient,
        train_first: false,
        epochs_per_layer: 400,
        lr: 0.02,
        ..base
    };
    let (gd, gd_rep) = casm((&og, &ow), (&pg, &pw), &ds, &pre, &gd_cfg).unwrap();
    // `a` is unchanged by both.
    assert_eq!(ls.get("a.weight"), pw.get("a.weight"));
    assert_eq!(gd.get("a.weight"), pw.get("a.weight"));
    let flat = |w: &Weights| -> Vec<f64> {
        let mut v: Vec<f64> = w
            .get("b.weight")
            .unwrap()
            .data()
            .iter()
            .map(|&x| x as f64)
            .collect();
        v.extend(w.get("b.bias").unwrap().data().iter().map(|&x| x as f64));
        v
    };
    let (a, b) = (flat(&ls), flat(&gd));
    let diff: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    println!(
        "linear toy: mse {:.3e} -> ls {:.3e}, gradient {:.3e}; relative weight error {:.2e}",
        ls_rep.layers[0].initial_mse,
        ls_rep.layers[0].final_mse,
        gd_rep.layers[0].final_mse,
        diff / norm
    );
    assert!(ls_rep.layers[0].final_mse < ls_rep.layers[0].initial_mse);
    assert!(diff / norm < 1e-3, "relative error {}", diff / norm);
}

#[test]
fn casm_recovers_pruned_lenet() {
    let (m, p) = pruned_lenet();
    let train = mnist(Split::Train);
    let test = mnist(Split::Test).take(1000);
    let pre = &m.preprocess;
    let mut orig = Network::new(m.graph.clone(), &m.weights).unwrap();
    let a_orig = acc(&mut orig, &test, pre, 1000);
    let mut net = Network::new(p.graph.clone(), &p.weights).unwrap();
    let a_pruned = acc(&mut net, &test, pre, 1000);
    let mut results = Vec::new();
    for variant in [CasmVariant::Gradient, CasmVariant::LeastSquares] {
        let cfg = CasmConfig {
            samples: 500,
            epochs_per_layer: 10,
            batch_size: 50,
            variant,
            ..CasmConfig::default()
        };
        let (w, rep) = casm(
            (&m.graph, &m.weights),
            (&p.graph, &p.weights),
            &train,
            pre,
            &cfg,
        )
        .unwrap();
        let names: Vec<&str> = rep.layers.iter().map(|l| l.layer.as_str()).collect();
        assert_eq!(names, ["conv2", "linear1"]);
        for l in &rep.layers {
            assert!(l.skipped.is_none(), "{l:?}");
            // Never worse than the start.
            assert!(l.final_mse <= l.initial_mse, "{l:?}");
            assert!(l.final_mse < l.initial_mse, "no progress: {l:?}");
        }
        net.set_weights(&w).unwrap();
        let a = acc(&mut net, &test, pre, 1000);
        println!(
            "lenet5 {variant:?}: {} in {:.1}s",
            rep.layers
                .iter()
                .map(|l| format!("{} mse {:.4} -> {:.4}", l.layer, l.initial_mse, l.final_mse))
                .collect::<Vec<_>>()
                .join(", "),
            rep.seconds
        );
        results.push((variant, a));
    }
    println!(
        "lenet5, 1000 MNIST test images: original {a_orig:.1}%, pruned {a_pruned:.1}%, {}",
        results
            .iter()
            .map(|(v, a)| format!("CASM {v:?} {a:.1}%"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (v, a) in &results {
        assert!(*a > a_pruned, "{v:?}: {a_pruned} -> {a}");
    }
}

#[test]
fn finetune_with_distillation_lowers_the_loss() {
    let (m, p) = pruned_lenet();
    let train = mnist(Split::Train).take(4000);
    let test = mnist(Split::Test).take(500);
    let mut teacher = Network::new(m.graph.clone(), &m.weights).unwrap();
    let mut student = Network::new(p.graph.clone(), &p.weights).unwrap();
    let before = acc(&mut student, &test, &m.preprocess, 500);
    let cfg = TrainConfig {
        lr: 0.01,
        batch_size: 64,
        max_batches: Some(30),
        distill: Some(DistillConfig::default()),
        ..TrainConfig::finetune(1)
    };
    let rep = finetune(
        &mut student,
        Some(&mut teacher),
        &train,
        Some(&test),
        &m.preprocess,
        &cfg,
        &CheckpointConfig::default(),
        Verbosity::Quiet,
    )
    .unwrap();
    assert_eq!(rep.batch_losses.len(), 30);
    let head: f32 = rep.batch_losses[..5].iter().sum::<f32>() / 5.0;
    let tail: f32 = rep.batch_losses[25..].iter().sum::<f32>() / 5.0;
    let after = rep.epochs[0].val_acc.unwrap();
    println!(
        "finetune (KD) 30 batches: loss {head:.4} -> {tail:.4}, accuracy {before:.1}% -> {after:.1}%"
    );
    assert!(tail < head, "{head} -> {tail}");
}

/// `m` with the L1-smallest `ratio` of each named group's channels removed.
fn prune_groups(m: &shears::model::Model, ratios: &[(&str, f32)]) -> prune::Pruned {
    let l1 = Criterion::L1.build(Reduction::Mean, 0);
    let ratios: BTreeMap<String, f32> = ratios.iter().map(|(n, r)| (n.to_string(), *r)).collect();
    let cfg = AllocConfig::new(Strategy::PerGroup { ratios });
    let plan = prune::plan(&ScoreContext::new(&m.graph, &m.weights), l1.as_ref(), &cfg).unwrap();
    prune::prune(&m.graph, &m.weights, &plan).unwrap()
}

/// CASM of `p` against `m` with `cfg`.
fn casm_of(
    m: &shears::model::Model,
    p: &prune::Pruned,
    train: &Dataset,
    cfg: &CasmConfig,
) -> (Weights, shears::recover::CasmReport) {
    casm(
        (&m.graph, &m.weights),
        (&p.graph, &p.weights),
        train,
        &m.preprocess,
        cfg,
    )
    .unwrap()
}

#[test]
fn casm_handles_residual_blocks() {
    let m = common::shared_model("resnet20");
    let dir = common::data_dir();
    let train = shears_data::load(&dir, DatasetName::Cifar10, Split::Train)
        .unwrap()
        .take(2000);
    let test = shears_data::load(&dir, DatasetName::Cifar10, Split::Test)
        .unwrap()
        .take(500);
    // Half of every block's inner channels (methods §4.3: the residual stream stays whole).
    let names: Vec<String> = (1..=3)
        .flat_map(|s| (0..3).map(move |b| format!("layer{s}.{b}.conv1")))
        .collect();
    let ratios: Vec<(&str, f32)> = names.iter().map(|n| (n.as_str(), 0.5)).collect();
    let p = prune_groups(&m, &ratios);
    let mut net = Network::new(p.graph.clone(), &p.weights).unwrap();
    let pruned = acc(&mut net, &test, &m.preprocess, 500);
    let ccfg = CasmConfig {
        samples: 200,
        epochs_per_layer: 2,
        batch_size: 100,
        ..CasmConfig::default()
    };
    let (w, rep) = casm_of(&m, &p, &train, &ccfg);
    // Every block's inner conv1 is reconstructed through conv2 and bn2 (the branch output).
    assert_eq!(rep.layers.len(), 9, "{:#?}", rep.layers);
    for l in &rep.layers {
        assert!(l.skipped.is_none(), "{l:?}");
        assert!(l.layer.ends_with(".conv1"), "{l:?}");
        assert!(l.target.ends_with(".bn2"), "{l:?}");
        // CASM keeps the best weights seen, so `<=` holds by construction; every layer must
        // actually improve on its start.
        assert!(l.final_mse < l.initial_mse, "no progress: {l:?}");
    }
    net.set_weights(&w).unwrap();
    let after = acc(&mut net, &test, &m.preprocess, 500);
    println!(
        "resnet20, half of each block's inner channels by L1, 500 CIFAR-10 test images: pruned {pruned:.1}%, CASM (200 \
         samples, 2 epochs/layer, {:.1}s) {after:.1}%",
        rep.seconds
    );
    assert!(after > pruned, "{pruned} -> {after}");
}

/// With the shortcut unchanged (only the first block's inner conv pruned), the block target
/// (original add minus pruned shortcut, taken back through bn2 for least squares) is the
/// branch target up to rounding, so both give the same weights; once the residual stream is
/// pruned too, they differ.
#[test]
fn casm_block_target_equals_branch_target_when_the_shortcut_is_unchanged() {
    let m = common::shared_model("resnet20");
    let train = shears_data::load(&common::data_dir(), DatasetName::Cifar10, Split::Train)
        .unwrap()
        .take(1000);
    let run = |ratios: &[(&str, f32)], variant, target| {
        let ccfg = CasmConfig {
            samples: 100,
            epochs_per_layer: 2,
            batch_size: 50,
            variant,
            residual_target: target,
            ..CasmConfig::default()
        };
        casm_of(&m, &prune_groups(&m, ratios), &train, &ccfg)
    };
    let max_diff = |a: &Weights, b: &Weights| {
        a.iter()
            .map(|(n, t)| {
                let u = b.get(n).unwrap();
                t.data()
                    .iter()
                    .zip(u.data())
                    .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
                    .fold(0.0f32, f32::max)
            })
            .fold(0.0f32, f32::max)
    };
    for variant in [CasmVariant::LeastSquares, CasmVariant::Gradient] {
        let inner = [("layer1.0.conv1", 0.5)];
        let (wb, rb) = run(&inner, variant, ResidualTarget::Block);
        let (wr, rr) = run(&inner, variant, ResidualTarget::Branch);
        assert!(rb.layers.iter().all(|l| l.skipped.is_none()), "{rb:#?}");
        assert!(
            rb.layers.iter().any(|l| l.final_mse < l.initial_mse),
            "{rb:#?}"
        );
        let d = max_diff(&wb, &wr);
        assert!(d < 1e-3, "{variant:?}: block and branch differ by {d}");
        assert!(
            (rb.layers[0].initial_mse - rr.layers[0].initial_mse).abs()
                <= 1e-4 * rr.layers[0].initial_mse,
            "{rb:#?} {rr:#?}"
        );
        // The stem's group is the stage-1 residual stream: every stage-1 shortcut changes.
        let trunk = [("conv1", 0.25), ("layer1.1.conv1", 0.5)];
        let (wb, _) = run(&trunk, variant, ResidualTarget::Block);
        let (wr, _) = run(&trunk, variant, ResidualTarget::Branch);
        assert!(max_diff(&wb, &wr) > 1e-3, "{variant:?}");
    }
}

/// A second CASM pass over a CASM result whose residual trunk was pruned: matching channels by
/// weights fails once the first pass refit them, the channels recorded after surgery
/// (`kept_channels`) still tell them.
#[test]
fn casm_runs_again_on_its_own_output_with_recorded_channels() {
    let m = common::shared_model("resnet20");
    let train = shears_data::load(&common::data_dir(), DatasetName::Cifar10, Split::Train)
        .unwrap()
        .take(500);
    let p = prune_groups(&m, &[("conv1", 0.25), ("layer1.1.conv1", 0.5)]);
    let kept = shears::recover::kept_channels(&m.graph, &m.weights, &p.graph, &p.weights);
    assert_eq!(kept["conv1"].len(), 12, "{kept:?}");
    let ls = CasmConfig {
        samples: 100,
        batch_size: 50,
        variant: CasmVariant::LeastSquares,
        ..CasmConfig::default()
    };
    let (w1, _) = casm_of(&m, &p, &train, &ls);
    let again = prune::Pruned {
        weights: w1,
        ..p.clone()
    };
    let unmatched = |rep: &shears::recover::CasmReport| {
        rep.layers
            .iter()
            .filter(|l| {
                l.skipped
                    .as_deref()
                    .is_some_and(|w| w.contains("cannot tell"))
            })
            .count()
    };
    let gd = CasmConfig {
        samples: 100,
        epochs_per_layer: 1,
        batch_size: 50,
        ..CasmConfig::default()
    };
    let (_, blind) = casm_of(&m, &again, &train, &gd);
    assert!(unmatched(&blind) > 0, "{blind:#?}");
    let (_, told) = casm_of(
        &m,
        &again,
        &train,
        &CasmConfig {
            kept_channels: kept,
            ..gd
        },
    );
    assert_eq!(unmatched(&told), 0, "{told:#?}");
    assert!(told.layers.iter().any(|l| l.final_mse < l.initial_mse));
}

#[test]
fn finetune_kill_and_resume_reaches_the_same_weights() {
    let (m, p) = pruned_lenet();
    let train = mnist(Split::Train).take(640);
    let val = mnist(Split::Test).take(100);
    let dir = tempfile::tempdir().unwrap();
    let base = TrainConfig {
        batch_size: 64,
        distill: Some(DistillConfig::default()),
        seed: 5,
        ..TrainConfig::finetune(3)
    };
    let run = |cfg: &TrainConfig, ck: &CheckpointConfig| {
        let mut teacher = Network::new(m.graph.clone(), &m.weights).unwrap();
        let mut student = Network::new(p.graph.clone(), &p.weights).unwrap();
        let rep = finetune(
            &mut student,
            Some(&mut teacher),
            &train,
            Some(&val),
            &m.preprocess,
            cfg,
            ck,
            Verbosity::Quiet,
        )
        .unwrap();
        (student.weights(), rep)
    };
    let (whole, whole_rep) = run(&base, &CheckpointConfig::default());
    let ck = CheckpointConfig {
        dir: Some(dir.path().to_path_buf()),
        ..CheckpointConfig::default()
    };
    // Killed after the first epoch, then resumed twice (one epoch per invocation).
    let (_, r1) = run(
        &base,
        &CheckpointConfig {
            stop_after: Some(1),
            ..ck.clone()
        },
    );
    assert_eq!(r1.epochs.len(), 1);
    let (_, r2) = run(
        &base,
        &CheckpointConfig {
            resume: true,
            stop_after: Some(1),
            ..ck.clone()
        },
    );
    assert_eq!(r2.resumed_from, Some(1));
    let (resumed, r3) = run(
        &base,
        &CheckpointConfig {
            resume: true,
            ..ck.clone()
        },
    );
    assert_eq!(r3.resumed_from, Some(2));
    assert_eq!(r3.epochs.len(), 3);
    assert_eq!(
        resumed, whole,
        "resumed weights differ from the uninterrupted run"
    );
    assert_eq!(
        r3.epochs.iter().map(|e| e.val_acc).collect::<Vec<_>>(),
        whole_rep
            .epochs
            .iter()
            .map(|e| e.val_acc)
            .collect::<Vec<_>>()
    );
    // Before training, then after each epoch.
    assert_eq!(whole_rep.curve.len(), 4);
    assert!(whole_rep
        .curve
        .windows(2)
        .all(|w| w[0].seconds <= w[1].seconds));
    // A different configuration does not resume from this checkpoint.
    let mut other = Network::new(p.graph.clone(), &p.weights).unwrap();
    let err = finetune(
        &mut other,
        None,
        &train,
        None,
        &m.preprocess,
        &TrainConfig { lr: 0.05, ..base },
        &CheckpointConfig { resume: true, ..ck },
        Verbosity::Quiet,
    )
    .unwrap_err();
    assert!(err.to_string().contains("checkpoint.safetensors"), "{err}");
}
