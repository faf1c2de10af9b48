//! Pruning trained weights (the shared ResNet-20) through the engine: the exactness policy on
//! real batch-norm statistics, Taylor gradients, and save / reload of the pruned model.

mod common;

use shears::model::{load_model, save_model, Model};
use shears::prune::{
    self, input_batch, taylor_grads, verify, AllocConfig, Criterion, FoldMode, GradConfig, Plan,
    Reduction, ScoreContext, Strategy, VERIFY_TOLERANCE,
};
use shears::zoo::Arch;
use shears_data::{DatasetName, Split};
use shears_engine::{Mode, Network};
use shears_ir::Tensor;

fn resnet20() -> Model {
    let path = common::shared_dir().join("models/resnet20.safetensors");
    load_model(&path, Some(Arch::ResNet20)).unwrap()
}

/// The first `n` CIFAR-10 test images, preprocessed for `model`.
fn test_images(model: &Model, n: usize) -> Tensor {
    let ds = shears_data::load(&common::data_dir(), DatasetName::Cifar10, Split::Test).unwrap();
    let input = model.graph.shape(model.graph.inputs()[0]).to_vec();
    input_batch(&ds, &model.preprocess, &input, n).unwrap()
}

fn l1_half_macs(model: &Model, fold: FoldMode) -> Plan {
    let l1 = Criterion::L1.build(Reduction::Mean, 0);
    let cfg = AllocConfig::new(Strategy::TargetMacs { keep_fraction: 0.5 })
        .with_global_ranking()
        .with_fold(fold);
    prune::plan(
        &ScoreContext::new(&model.graph, &model.weights),
        l1.as_ref(),
        &cfg,
    )
    .unwrap()
}

#[test]
fn trained_resnet20_global_l1_half_macs_verifies_in_exact_mode() {
    let model = resnet20();
    let x = test_images(&model, 32);
    let plan = l1_half_macs(&model, FoldMode::Exact);
    assert_eq!(plan.fold, FoldMode::Exact);
    let p = prune::prune(&model.graph, &model.weights, &plan).unwrap();
    let kept = p.graph.macs() as f64 / model.graph.macs() as f64;
    assert!((kept - 0.5).abs() <= 0.5 * 0.02, "kept {kept}");
    assert!(p.report.is_exact());
    // Trained batch norms have nonzero shifts: channels reaching padded 3x3 convs are forced
    // to zero rather than folded inexactly.
    assert!(p.report.zeroed_channels > 0);
    let v = verify(
        &model.graph,
        &model.weights,
        &plan,
        &p,
        &x,
        VERIFY_TOLERANCE,
    )
    .unwrap();
    assert!(v.max_abs_diff <= VERIFY_TOLERANCE, "{v:?}");
    assert_eq!(v.tolerance, VERIFY_TOLERANCE * v.output_scale);
    assert_eq!(v.note.is_none(), v.output_scale == 1.0);

    // The same removal in interior mode folds those constants too, reports its border
    // approximations, and verifies against its own (unforced) masked model with the widened
    // tolerance.
    let mut interior = plan.clone();
    interior.fold = FoldMode::Interior;
    let q = prune::prune(&model.graph, &model.weights, &interior).unwrap();
    assert!(!q.report.is_exact());
    assert_eq!(q.report.zeroed_channels, 0);
    assert_eq!(q.graph.macs(), p.graph.macs());
    // Deterministic: interior mode verifies within its widened tolerance, and really is
    // inexact (border windows of padded convs see the folded constants).
    let v = verify(
        &model.graph,
        &model.weights,
        &interior,
        &q,
        &x,
        VERIFY_TOLERANCE,
    )
    .unwrap();
    assert!(v.tolerance > VERIFY_TOLERANCE, "{v:?}");
    assert!(v.max_abs_diff <= v.tolerance, "{v:?}");
    assert!(v.max_abs_diff > VERIFY_TOLERANCE, "{v:?}");
    assert!(v.note.as_deref().unwrap().contains("interior"));
}

#[test]
fn taylor_gradients_score_trained_resnet20() {
    let model = resnet20();
    let ds = shears_data::load(&common::data_dir(), DatasetName::Cifar10, Split::Train).unwrap();
    let mut net = Network::new(model.graph.clone(), &model.weights).unwrap();
    let before = net.weights();
    let cfg = GradConfig {
        n_images: 64,
        batch_size: 32,
        seed: 0,
    };
    let grads = taylor_grads(&mut net, &ds, &model.preprocess, &cfg).unwrap();
    // Parameters and BN statistics are untouched; every trainable tensor has a gradient.
    assert_eq!(net.weights(), before);
    for (_, name, spec) in model.graph.param_specs() {
        if spec.kind.is_trainable() {
            let g = grads
                .get(&name)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            assert_eq!(g.shape(), spec.shape.as_slice());
        }
    }
    assert!(grads
        .get("layer1.0.conv1.weight")
        .unwrap()
        .data()
        .iter()
        .any(|&x| x != 0.0));
    // Deterministic.
    let again = taylor_grads(&mut net, &ds, &model.preprocess, &cfg).unwrap();
    assert_eq!(again, grads);
    let taylor = Criterion::Taylor.build(Reduction::Mean, 0);
    let ctx = ScoreContext::new(&model.graph, &model.weights).with_grads(&grads);
    let plan = prune::plan(
        &ctx,
        taylor.as_ref(),
        &AllocConfig::new(Strategy::Uniform { ratio: 0.3 }),
    )
    .unwrap();
    assert_eq!(plan.criterion, "taylor");
    let p = prune::prune(&model.graph, &model.weights, &plan).unwrap();
    let x = test_images(&model, 8);
    verify(
        &model.graph,
        &model.weights,
        &plan,
        &p,
        &x,
        VERIFY_TOLERANCE,
    )
    .unwrap();
}

#[test]
fn pruned_model_saves_self_describing_and_reloads() {
    let model = resnet20();
    let plan = l1_half_macs(&model, FoldMode::Exact);
    let p = prune::prune(&model.graph, &model.weights, &plan).unwrap();
    let pruned = Model {
        graph: p.graph.clone(),
        weights: p.weights.clone(),
        ..model.clone()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r20_pruned.safetensors");
    save_model(&path, &pruned).unwrap();
    let back = load_model(&path, None).unwrap();
    assert_eq!(back.graph, p.graph);
    assert_eq!(back.weights, p.weights);
    assert_eq!(back.arch, Some(Arch::ResNet20));
    let x = test_images(&model, 4);
    let a = Network::new(p.graph.clone(), &p.weights)
        .unwrap()
        .forward(&x, Mode::Eval)
        .unwrap();
    let b = Network::new(back.graph, &back.weights)
        .unwrap()
        .forward(&x, Mode::Eval)
        .unwrap();
    assert_eq!(a, b);
}
