//! The engine on the real shared checkpoints: logits of the first 8 test images against the
//! sidecars' reference logits, and whole-test-set predictions against the reference prediction
//! strings (only images listed as fragile may flip, at most one).

mod common;

use common::*;
use shears::eval::{evaluate, input_transforms, normalize_for, EvalConfig};
use shears::progress::Verbosity;
use shears_data::{DatasetName, Split};
use shears_engine::{Mode, Network};
use shears_ir::Tensor;

fn dataset_of(name: &str) -> DatasetName {
    if name.starts_with("mnist") {
        DatasetName::Mnist
    } else {
        DatasetName::Cifar10
    }
}

#[test]
fn first_eight_logits_match_every_sidecar() {
    let names = shared_model_names();
    assert!(
        names.len() >= 7,
        "expected the 7 shared models, found {names:?}"
    );
    let mut checked = 0;
    for name in names {
        let side = sidecar(&name);
        let model = shared_model(&name);
        let test = shears_data::load(&data_dir(), dataset_of(&name), Split::Test).unwrap();
        let input = model.graph.shape(model.graph.inputs()[0]).to_vec();
        let t = input_transforms(&test, &input).unwrap();
        let b = shears_data::to_f32(&test, 0..8, &normalize_for(&model.preprocess, input[0]), &t)
            .unwrap();
        let x = Tensor::new(vec![8, b.c, b.h, b.w], b.images).unwrap();
        let mut net = Network::new(model.graph.clone(), &model.weights).unwrap();
        let logits = net.forward(&x, Mode::Eval).unwrap();
        let reference = side["reference_logits_first8_test_images"]
            .as_array()
            .unwrap();
        let mut max_diff = 0f32;
        for (i, row) in reference.iter().enumerate() {
            for (j, v) in row.as_array().unwrap().iter().enumerate() {
                let d = (logits.data()[i * 10 + j] - v.as_f64().unwrap() as f32).abs();
                max_diff = max_diff.max(d);
            }
        }
        assert!(
            max_diff < 1e-3,
            "{name}: max |logit - reference| = {max_diff}"
        );
        checked += 1;
    }
    assert!(checked >= 7);
}

/// Evaluates the whole test set (or its first `limit` images) and checks the predictions.
fn check_predictions(name: &str, model: shears::model::Model, limit: Option<usize>) -> f64 {
    let side = sidecar(name);
    let test = shears_data::load(&data_dir(), dataset_of(name), Split::Test).unwrap();
    let mut net = Network::new(model.graph.clone(), &model.weights).unwrap();
    let cfg = EvalConfig {
        batch_size: 500,
        limit,
        verbosity: Verbosity::Quiet,
    };
    let r = evaluate(&mut net, &test, &model.preprocess, &cfg).unwrap();
    let reference = side["reference_predictions_all_test_images"]
        .as_str()
        .unwrap()
        .as_bytes();
    let fragile: Vec<usize> = side["fragile_test_images"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_u64().unwrap() as usize)
        .collect();
    let flips: Vec<usize> = r
        .predictions
        .iter()
        .enumerate()
        .filter(|(i, &p)| reference[*i] - b'0' != p)
        .map(|(i, _)| i)
        .collect();
    assert!(
        flips.len() <= 1 && flips.iter().all(|i| fragile.contains(i)),
        "{name}: predictions differ from the reference at {flips:?} (fragile: {fragile:?})"
    );
    if limit.is_none() {
        let correct = side["measured"]["correct"].as_u64().unwrap() as i64;
        assert!((r.correct as i64 - correct).abs() <= flips.len() as i64);
    }
    r.top1
}

#[test]
fn resnet20_reproduces_its_reference_accuracy() {
    let top1 = check_predictions("resnet20", shared_model("resnet20"), None);
    assert!((top1 - 91.73).abs() <= 0.011, "{top1}");
}

#[test]
fn lenet5_clean_and_adversarial_reproduce_their_accuracy() {
    let top1 = check_predictions(
        "mnist_lenet5_clntrained",
        shared_model("mnist_lenet5_clntrained"),
        None,
    );
    assert!((top1 - 98.89).abs() <= 0.011, "{top1}");
    let top1 = check_predictions(
        "mnist_lenet5_advtrained",
        shared_model("mnist_lenet5_advtrained"),
        None,
    );
    assert!((top1 - 98.64).abs() <= 0.011, "{top1}");
}

#[test]
fn mlperf_resnet8_reproduces_its_accuracy_with_tf_padding() {
    let top1 = check_predictions(
        "mlperf_tiny_resnet8",
        shared_model("mlperf_tiny_resnet8"),
        None,
    );
    assert!((top1 - 87.19).abs() <= 0.011, "{top1}");
}

#[test]
fn legacy_th_original_of_resnet56_predicts_like_the_reference() {
    // The first 2,000 test images keep this test short; `shears eval` covers all 10,000.
    let path = shared_dir().join("models/original/resnet56-4bfd9763.th");
    let model = shears::model::load_model(&path, Some(shears::zoo::Arch::ResNet56)).unwrap();
    check_predictions("resnet56", model, Some(2000));
}
