//! The trainer on real data: fitting a 256-image subset, and kill-and-resume reaching the same
//! weights as an uninterrupted run.

mod common;

use common::*;
use shears::progress::Verbosity;
use shears::train::{train, CheckpointConfig, OptimizerKind, Schedule, TrainConfig};
use shears::zoo::{self, Arch};
use shears_data::{DatasetName, Split};
use shears_engine::Network;

fn lenet() -> (shears_ir::Graph, shears_ir::Weights) {
    let g = zoo::build(Arch::LeNet5, &Arch::LeNet5.default_config()).unwrap();
    let w = zoo::init_weights(&g, Some(Arch::LeNet5), 1);
    (g, w)
}

fn adam(epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::new(epochs);
    c.optimizer = OptimizerKind::Adam {
        beta1: 0.9,
        beta2: 0.999,
    };
    c.lr = 1e-3;
    c.weight_decay = 0.0;
    c.batch_size = 32;
    c.schedule = Schedule::Constant;
    c.seed = 7;
    c
}

#[test]
fn fits_a_256_image_subset() {
    let train_set = shears_data::load(&data_dir(), DatasetName::Mnist, Split::Train)
        .unwrap()
        .class_balanced_subset(256, 3);
    let (g, w) = lenet();
    let mut net = Network::new(g, &w).unwrap();
    let r = train(
        &mut net,
        &train_set,
        Some(&train_set),
        &Arch::LeNet5.preprocessing(),
        &adam(15),
        &CheckpointConfig::default(),
        Verbosity::Quiet,
    )
    .unwrap();
    let acc = r.epochs.last().unwrap().val_acc.unwrap();
    assert!(
        acc >= 99.0,
        "training accuracy on the 256 images is only {acc}%"
    );
    assert!(r.epochs[0].train_loss > r.epochs.last().unwrap().train_loss);
}

#[test]
fn kill_and_resume_reaches_the_same_weights() {
    let train_set = shears_data::load(&data_dir(), DatasetName::Mnist, Split::Train)
        .unwrap()
        .class_balanced_subset(320, 5);
    let pre = Arch::LeNet5.preprocessing();
    let mut cfg = adam(3);
    // SGD state is checked too: momentum buffers must survive the checkpoint.
    let sgd = {
        let mut c = cfg.clone();
        c.optimizer = OptimizerKind::Sgd {
            momentum: 0.9,
            nesterov: true,
        };
        c.lr = 0.02;
        c.schedule = Schedule::Cosine;
        c
    };
    for c in [cfg.clone(), sgd] {
        cfg = c;
        let (g, w) = lenet();
        let mut straight = Network::new(g.clone(), &w).unwrap();
        train(
            &mut straight,
            &train_set,
            None,
            &pre,
            &cfg,
            &CheckpointConfig::default(),
            Verbosity::Quiet,
        )
        .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut first = Network::new(g.clone(), &w).unwrap();
        let killed = CheckpointConfig {
            dir: Some(dir.path().into()),
            resume: false,
            stop_after: Some(1),
        };
        let r1 = train(
            &mut first,
            &train_set,
            None,
            &pre,
            &cfg,
            &killed,
            Verbosity::Quiet,
        )
        .unwrap();
        assert_eq!(r1.epochs.len(), 1);
        // A fresh process: new network from the initial weights, resumed from the checkpoint.
        let mut second = Network::new(g, &w).unwrap();
        let resume = CheckpointConfig {
            dir: Some(dir.path().into()),
            resume: true,
            stop_after: None,
        };
        let r2 = train(
            &mut second,
            &train_set,
            None,
            &pre,
            &cfg,
            &resume,
            Verbosity::Quiet,
        )
        .unwrap();
        assert_eq!(r2.resumed_from, Some(1));
        assert_eq!(r2.epochs.len(), 3);
        let (a, b) = (straight.weights(), second.weights());
        for (name, t) in a.iter() {
            assert_eq!(
                t.data(),
                b.get(name).unwrap().data(),
                "{name} differs after resume ({:?})",
                cfg.optimizer
            );
        }
        // No temporary files are left next to the checkpoint.
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            files,
            vec![std::ffi::OsString::from("checkpoint.safetensors")]
        );
    }
}

#[test]
fn resume_refuses_a_checkpoint_of_another_configuration() {
    let train_set = shears_data::load(&data_dir(), DatasetName::Mnist, Split::Train)
        .unwrap()
        .class_balanced_subset(64, 5);
    let pre = Arch::LeNet5.preprocessing();
    let (g, w) = lenet();
    let dir = tempfile::tempdir().unwrap();
    let ck = CheckpointConfig {
        dir: Some(dir.path().into()),
        resume: false,
        stop_after: Some(1),
    };
    let mut net = Network::new(g.clone(), &w).unwrap();
    train(
        &mut net,
        &train_set,
        None,
        &pre,
        &adam(2),
        &ck,
        Verbosity::Quiet,
    )
    .unwrap();
    let mut other = adam(2);
    other.lr = 5e-4;
    let ck = CheckpointConfig {
        dir: Some(dir.path().into()),
        resume: true,
        stop_after: None,
    };
    let mut net = Network::new(g, &w).unwrap();
    let e = train(
        &mut net,
        &train_set,
        None,
        &pre,
        &other,
        &ck,
        Verbosity::Quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("different configuration"), "{e}");
}

#[test]
fn bad_training_values_are_errors() {
    let mut c = adam(1);
    c.lr = -1.0;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("learning rate"));
    let mut c = adam(0);
    c.epochs = 0;
    assert!(c.validate().is_err());
}
