//! Batching, shuffling, augmentation and subsets, on the real MNIST test split.

mod common;

use std::sync::OnceLock;

use shears_data::{
    load, to_f32, Batch, DataError, Dataset, DatasetName, Loader, LoaderConfig, Normalize, Split,
    Transform,
};

fn mnist_test() -> &'static Dataset {
    static DS: OnceLock<Dataset> = OnceLock::new();
    DS.get_or_init(|| load(&common::data_dir(), DatasetName::Mnist, Split::Test).unwrap())
}

fn batches(ds: &Dataset, cfg: LoaderConfig) -> Vec<Batch> {
    Loader::new(ds, cfg).unwrap().collect()
}

fn histogram(labels: &[u8]) -> Vec<usize> {
    let mut h = vec![0; 10];
    for &l in labels {
        h[l as usize] += 1;
    }
    h
}

#[test]
fn class_balanced_subset_is_balanced_and_deterministic() {
    let ds = mnist_test();
    let a = ds.class_balanced_subset(1000, 3);
    assert_eq!(a.len(), 1000);
    assert_eq!(histogram(&a.labels), vec![100; 10]);
    assert_eq!(a, ds.class_balanced_subset(1000, 3));
    let b = ds.class_balanced_subset(1000, 4);
    assert_ne!(a.images, b.images);
    // 1005 = 100 per class plus 5 classes with one more.
    let c = ds.class_balanced_subset(1005, 3);
    let h = histogram(&c.labels);
    assert_eq!(h.iter().sum::<usize>(), 1005);
    assert!(h.iter().all(|&k| k == 100 || k == 101), "{h:?}");
    // Asking for more than there is gives everything.
    assert_eq!(ds.take(50).class_balanced_subset(500, 1).len(), 50);
    // Indices ascend, so the subset keeps dataset order.
    let idxs = ds.class_balanced_idxs(300, 9);
    assert!(idxs.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn balanced_subset_with_a_small_class() {
    // Class 1 has only 2 examples; its missing share goes to the others.
    let mut labels = vec![0u8; 20];
    labels.extend([1, 1]);
    labels.extend([2u8; 20]);
    let ds = Dataset {
        name: "skewed".into(),
        images: vec![0; labels.len()],
        n: labels.len(),
        labels,
        c: 1,
        h: 1,
        w: 1,
        classes: vec!["a".into(), "b".into(), "c".into()],
    };
    let s = ds.class_balanced_subset(12, 0);
    let mut h = [0; 3];
    for &l in &s.labels {
        h[l as usize] += 1;
    }
    assert_eq!(h, [5, 2, 5]);
}

#[test]
fn subset_and_take_copy_examples() {
    let ds = mnist_test();
    let s = ds.subset(&[4, 0, 4]);
    assert_eq!(s.labels, vec![4, 7, 4]);
    assert_eq!(s.image_u8(0), ds.image_u8(4));
    assert_eq!(s.image_u8(1), ds.image_u8(0));
    let t = ds.take(5);
    assert_eq!(t.labels, vec![7, 2, 1, 0, 4]);
    assert_eq!(t.images.len(), 5 * 784);
}

#[test]
fn loader_is_deterministic_per_seed_and_epoch() {
    let ds = mnist_test().take(300);
    let cfg = LoaderConfig::new(64)
        .with_shuffle(11)
        .with_transforms(vec![Transform::PadCrop { pad: 2 }, Transform::HFlip]);
    let a = batches(&ds, cfg.clone());
    let b = batches(&ds, cfg.clone());
    assert_eq!(a, b);
    assert_eq!(a.len(), 5);
    assert_eq!(a[4].n, 300 - 4 * 64);
    let mut seen: Vec<usize> = a.iter().flat_map(|b| b.idxs.clone()).collect();
    assert_ne!(seen, (0..300).collect::<Vec<_>>());
    seen.sort_unstable();
    assert_eq!(seen, (0..300).collect::<Vec<_>>());

    let e1 = batches(&ds, cfg.clone().with_epoch(1));
    assert_ne!(a[0].idxs, e1[0].idxs);
    let s2 = batches(&ds, cfg.clone().with_seed(12));
    assert_ne!(a[0].idxs, s2[0].idxs);

    // Augmentation depends on (seed, epoch, index) only, not on batch composition.
    let by_idx = |bs: &[Batch], i: usize| -> Vec<f32> {
        bs.iter()
            .find_map(|b| {
                b.idxs
                    .iter()
                    .position(|&j| j == i)
                    .map(|p| b.image(p).to_vec())
            })
            .unwrap()
    };
    let other_bs = batches(
        &ds,
        LoaderConfig {
            batch_size: 7,
            ..cfg.clone()
        },
    );
    for i in [0, 17, 299] {
        assert_eq!(by_idx(&a, i), by_idx(&other_bs, i));
    }
    // Across epochs at least some images are augmented differently.
    let differs = (0..300)
        .filter(|&i| by_idx(&a, i) != by_idx(&e1, i))
        .count();
    assert!(differs > 200, "{differs}");
}

#[test]
fn labels_follow_indices_and_drop_last() {
    let ds = mnist_test().take(100);
    let loader = Loader::new(&ds, LoaderConfig::new(32).with_shuffle(5).with_drop_last()).unwrap();
    assert_eq!(loader.n_batches(), 3);
    assert_eq!(loader.len(), 3);
    for b in loader {
        assert_eq!(b.n, 32);
        for (k, &i) in b.idxs.iter().enumerate() {
            assert_eq!(b.labels[k], ds.labels[i]);
        }
    }
    let no_shuffle = batches(&ds, LoaderConfig::new(40));
    assert_eq!(no_shuffle.len(), 3);
    assert_eq!(no_shuffle[0].idxs, (0..40).collect::<Vec<_>>());
    assert_eq!(no_shuffle[2].n, 20);
}

#[test]
fn pad_crop_and_flip_keep_shape_and_content() {
    let ds = mnist_test().take(50);
    let cfg = LoaderConfig::new(50)
        .with_normalize(Normalize::raw())
        .with_shuffle(1)
        .with_transforms(vec![Transform::PadCrop { pad: 4 }, Transform::HFlip]);
    let b = &batches(&ds, cfg)[0];
    assert_eq!((b.n, b.c, b.h, b.w), (50, 1, 28, 28));
    assert_eq!(b.images.len(), 50 * 784);
    let mut changed = 0;
    for (k, &i) in b.idxs.iter().enumerate() {
        let orig: Vec<f32> = ds.image_u8(i).iter().map(|&p| p as f32).collect();
        let out = b.image(k);
        // Shifting can drop ink but never creates it.
        let sum = |v: &[f32]| v.iter().sum::<f32>();
        assert!(sum(out) <= sum(&orig) + 1e-3);
        changed += usize::from(out != orig.as_slice());
    }
    assert!(changed > 40, "{changed}");
    // HFlip alone flips some images exactly.
    let cfg = LoaderConfig::new(50)
        .with_normalize(Normalize::raw())
        .with_transforms(vec![Transform::HFlip]);
    let b = &batches(&ds, cfg)[0];
    let mut flipped = 0;
    for i in 0..50 {
        let orig = ds.image_u8(i);
        let out = b.image(i);
        let mirrored =
            (0..28).all(|y| (0..28).all(|x| out[y * 28 + x] == orig[y * 28 + 27 - x] as f32));
        let same = out.iter().zip(orig).all(|(a, b)| *a == *b as f32);
        assert!(mirrored || same);
        flipped += usize::from(mirrored && !same);
    }
    assert!((10..=40).contains(&flipped), "{flipped}");
}

#[test]
fn grey_to_rgb_and_pad_to_32() {
    let ds = mnist_test().take(10);
    let ts = [Transform::GreyToRgb, Transform::Pad { to_h: 32, to_w: 32 }];
    let b = to_f32(&ds, 0..10, &Normalize::imagenet(), &ts).unwrap();
    assert_eq!((b.n, b.c, b.h, b.w), (10, 3, 32, 32));
    assert_eq!(b.images.len(), 10 * 3 * 32 * 32);
    let img = b.image(0);
    let raw = ds.image_u8(0);
    for ch in 0..3 {
        let n = Normalize::imagenet();
        // Border is the normalized zero, interior is the shifted original.
        assert_eq!(img[ch * 1024], n.apply(0.0, ch));
        assert_eq!(
            img[ch * 1024 + 10 * 32 + 16],
            n.apply(raw[8 * 28 + 14] as f32, ch)
        );
    }
    // The same through a Loader.
    let cfg = LoaderConfig::new(10)
        .with_normalize(Normalize::imagenet())
        .with_transforms(ts.to_vec());
    assert_eq!(batches(&ds, cfg)[0], b);
}

#[test]
fn to_f32_matches_unit_normalization() {
    let ds = mnist_test();
    let b = to_f32(ds, 3..5, &Normalize::unit(), &[]).unwrap();
    assert_eq!((b.n, b.c, b.h, b.w), (2, 1, 28, 28));
    assert_eq!(b.idxs, vec![3, 4]);
    assert_eq!(b.labels, vec![0, 4]);
    for (v, p) in b.image(0).iter().zip(ds.image_u8(3)) {
        assert!((v - *p as f32 / 255.0).abs() < 1e-6);
    }
    let r = to_f32(
        ds,
        0..2,
        &Normalize::imagenet(),
        &[Transform::Resize { h: 14, w: 14 }],
    );
    assert!(
        matches!(r, Err(DataError::Invalid { .. })),
        "imagenet needs 3 channels"
    );
    let r = to_f32(ds, 0..2, &Normalize::unit(), &[Transform::HFlip]);
    assert!(
        matches!(r, Err(DataError::Invalid { .. })),
        "random transform"
    );
    let r = to_f32(ds, 9_999..10_001, &Normalize::unit(), &[]);
    assert!(matches!(r, Err(DataError::Invalid { .. })), "range");
    let b = to_f32(
        ds,
        0..1,
        &Normalize::unit(),
        &[Transform::Resize { h: 14, w: 14 }],
    )
    .unwrap();
    assert_eq!((b.h, b.w), (14, 14));
}

#[test]
fn loader_rejects_bad_configs() {
    let ds = mnist_test().take(4);
    let bad = |cfg: LoaderConfig| matches!(Loader::new(&ds, cfg), Err(DataError::Invalid { .. }));
    assert!(bad(LoaderConfig::new(0)));
    assert!(bad(
        LoaderConfig::new(2).with_normalize(Normalize::cifar10())
    ));
    assert!(bad(
        LoaderConfig::new(2).with_transforms(vec![Transform::Pad { to_h: 20, to_w: 40 }])
    ));
    let ok = LoaderConfig::new(2)
        .with_normalize(Normalize::cifar10())
        .with_transforms(vec![Transform::GreyToRgb]);
    assert!(Loader::new(&ds, ok).is_ok());
    let mut broken = ds.clone();
    broken.images.pop();
    assert!(matches!(
        Loader::new(&broken, LoaderConfig::new(2)),
        Err(DataError::Invalid { .. })
    ));
}

/// Issue 18 defect 2: a resize to a huge model input is refused before a batch is allocated.
#[test]
fn a_batch_over_the_limit_is_refused_up_front() {
    let ds = mnist_test();
    let huge = LoaderConfig::new(10).with_transforms(vec![Transform::Resize {
        h: 100_000,
        w: 100_000,
    }]);
    match Loader::new(ds, huge) {
        Err(DataError::Invalid { what }) => {
            assert!(what.contains("[1, 100000, 100000]"), "{what}");
            assert!(what.contains("400000000000 bytes"), "{what}");
        }
        Err(e) => panic!("expected Invalid, got {e:?}"),
        Ok(_) => panic!("a 400 GB batch was accepted"),
    }
    let fine = LoaderConfig::new(10).with_transforms(vec![Transform::Resize { h: 64, w: 64 }]);
    assert!(Loader::new(ds, fine).is_ok());
}
