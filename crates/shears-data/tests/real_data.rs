//! Loading the real shared datasets (`shared/data`, or `$SHEARS_DATA`).

mod common;

use common::data_dir;
use shears_data::{load, verify_files, DatasetName, FileStatus, Split};

fn histogram(labels: &[u8], k: usize) -> Vec<usize> {
    let mut h = vec![0; k];
    for &l in labels {
        h[l as usize] += 1;
    }
    h
}

#[test]
fn mnist_test_split() {
    let ds = load(&data_dir(), DatasetName::Mnist, Split::Test).unwrap();
    assert_eq!((ds.len(), ds.c, ds.h, ds.w), (10_000, 1, 28, 28));
    assert_eq!(ds.images.len(), 10_000 * 784);
    assert_eq!(&ds.labels[..5], &[7, 2, 1, 0, 4]);
    assert_eq!(ds.name, "mnist-test");
    assert_eq!(ds.n_classes(), 10);
    // The first test digit (a 7) has ink in the middle and a blank top row.
    let img = ds.image_u8(0);
    assert!(img[..28].iter().all(|&p| p == 0));
    assert!(img.contains(&255));
}

#[test]
fn mnist_train_split() {
    let ds = load(&data_dir(), DatasetName::Mnist, Split::TrainAll).unwrap();
    assert_eq!((ds.len(), ds.c, ds.h, ds.w), (60_000, 1, 28, 28));
    assert_eq!(&ds.labels[..5], &[5, 0, 4, 1, 9]);
}

#[test]
fn fashion_mnist_splits() {
    let dir = data_dir();
    let test = load(&dir, DatasetName::FashionMnist, Split::Test).unwrap();
    assert_eq!((test.len(), test.c, test.h, test.w), (10_000, 1, 28, 28));
    assert_eq!(histogram(&test.labels, 10), vec![1000; 10]);
    assert_eq!(test.classes[9], "Ankle boot");
    let train = load(&dir, DatasetName::FashionMnist, Split::TrainAll).unwrap();
    assert_eq!(train.len(), 60_000);
    assert_eq!(histogram(&train.labels, 10), vec![6000; 10]);
    let fit = load(&dir, DatasetName::FashionMnist, Split::Train).unwrap();
    assert_eq!(histogram(&fit.labels, 10), vec![5500; 10]);
    assert_eq!(fit.name, "fashion-mnist-train");
}

#[test]
fn cifar10_test_split() {
    let ds = load(&data_dir(), DatasetName::Cifar10, Split::Test).unwrap();
    assert_eq!((ds.len(), ds.c, ds.h, ds.w), (10_000, 3, 32, 32));
    assert_eq!(&ds.labels[..10], &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    assert_eq!(histogram(&ds.labels, 10), vec![1000; 10]);
    assert_eq!(ds.classes[0], "airplane");
    assert_eq!(ds.classes[9], "truck");
    assert_eq!(ds.name, "cifar10-test");
}

#[test]
fn cifar10_train_split() {
    let ds = load(&data_dir(), DatasetName::Cifar10, Split::TrainAll).unwrap();
    assert_eq!((ds.len(), ds.c, ds.h, ds.w), (50_000, 3, 32, 32));
    assert_eq!(&ds.labels[..10], &[6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    assert_eq!(histogram(&ds.labels, 10), vec![5000; 10]);
    assert_eq!(
        histogram(&ds.labels[..10_000], 10),
        vec![1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    );
}

/// The validation hold-out: 500 images per class, disjoint from `Split::Train`, the two
/// together exactly the training files, and the same on every load.
#[test]
fn cifar10_validation_hold_out() {
    let dir = data_dir();
    let all = load(&dir, DatasetName::Cifar10, Split::TrainAll).unwrap();
    let val = load(&dir, DatasetName::Cifar10, Split::Val).unwrap();
    let train = load(&dir, DatasetName::Cifar10, Split::Train).unwrap();
    assert_eq!((val.len(), train.len()), (5_000, 45_000));
    assert_eq!(histogram(&val.labels, 10), vec![500; 10]);
    assert_eq!(histogram(&train.labels, 10), vec![4500; 10]);
    assert_eq!(
        (val.name.as_str(), train.name.as_str()),
        ("cifar10-val", "cifar10-train")
    );
    // Every training image is in exactly one of the two, in file order.
    let len = all.image_len();
    let (mut v, mut t) = (0, 0);
    for i in 0..all.len() {
        let img = all.image_u8(i);
        if v < val.len() && val.image_u8(v) == img && val.labels[v] == all.labels[i] {
            v += 1;
        } else {
            assert_eq!(train.image_u8(t), img, "training image {i}");
            assert_eq!(train.labels[t], all.labels[i]);
            t += 1;
        }
    }
    assert_eq!((v, t), (5_000, 45_000));
    assert_eq!(len, 3 * 32 * 32);
    assert_eq!(load(&dir, DatasetName::Cifar10, Split::Val).unwrap(), val);
}

#[test]
fn cifar100_is_missing_with_a_useful_error() {
    let dir = data_dir();
    let err = load(&dir, DatasetName::Cifar100, Split::Test).unwrap_err();
    match &err {
        shears_data::DataError::Missing { dataset, tried, .. } => {
            assert_eq!(*dataset, DatasetName::Cifar100);
            assert!(tried.iter().any(|p| p.ends_with("cifar-100/test.bin")));
            assert!(tried
                .iter()
                .any(|p| p.ends_with("cifar-100/cifar-100-binary.tar.gz")));
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("cifar100 not found") && msg.contains("test.bin"),
        "{msg}"
    );
}

#[test]
fn verify_real_mnist_files() {
    let status = verify_files(&data_dir(), DatasetName::Mnist).unwrap();
    assert_eq!(status.len(), 4);
    for (name, s) in &status {
        assert_eq!(*s, FileStatus::Ok, "{name}");
    }
}
