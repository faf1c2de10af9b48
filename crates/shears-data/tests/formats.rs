//! On-disk forms, tarballs, image folders, and every kind of bad file.

mod common;

use std::path::Path;

use common::*;
use shears_data::{
    load, load_image_folder, ColorMode, Container, DataError, DatasetName, ImageFolderOptions,
    Split,
};

/// Writes a small MNIST-style test split (5 images 4x3) into `<root>/mnist`.
fn write_mnist(root: &Path, compress: bool, dotted: bool) {
    let (img, lab) = (idx_images(5, 4, 3), idx_labels(&[7, 2, 1, 0, 4]));
    let sep = if dotted { "." } else { "-" };
    let (mut ni, mut nl) = (
        format!("t10k-images{sep}idx3-ubyte"),
        format!("t10k-labels{sep}idx1-ubyte"),
    );
    let (img, lab) = if compress {
        ni.push_str(".gz");
        nl.push_str(".gz");
        (gzip(&img), gzip(&lab))
    } else {
        (img, lab)
    };
    write(&root.join("mnist").join(ni), &img);
    write(&root.join("mnist").join(nl), &lab);
}

#[test]
fn idx_gz_raw_and_dotted_load_the_same() {
    let mut loaded = Vec::new();
    for (compress, dotted) in [(true, false), (false, false), (false, true), (true, true)] {
        let t = tempfile::tempdir().unwrap();
        write_mnist(t.path(), compress, dotted);
        let ds = load(t.path(), DatasetName::Mnist, Split::Test).unwrap();
        assert_eq!((ds.n, ds.c, ds.h, ds.w), (5, 1, 4, 3));
        assert_eq!(ds.labels, vec![7, 2, 1, 0, 4]);
        loaded.push(ds);
    }
    assert!(loaded.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(&loaded[0].images[..], &idx_images(5, 4, 3)[16..]);
}

#[test]
fn truncated_idx_names_file_and_sizes() {
    let t = tempfile::tempdir().unwrap();
    let img = idx_images(5, 4, 3);
    let p = t.path().join("mnist/t10k-images-idx3-ubyte");
    write(&p, &img[..img.len() - 2]);
    write(
        &t.path().join("mnist/t10k-labels-idx1-ubyte"),
        &idx_labels(&[0; 5]),
    );
    let err = load(t.path(), DatasetName::Mnist, Split::Test).unwrap_err();
    match &err {
        DataError::Truncated {
            path,
            expected,
            found,
        } => {
            assert_eq!(path, &p);
            assert_eq!((*expected, *found), (76, 74));
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("t10k-images-idx3-ubyte") && msg.contains("76") && msg.contains("74"));
}

#[test]
fn truncated_header_and_trailing_data() {
    let t = tempfile::tempdir().unwrap();
    write(
        &t.path().join("mnist/t10k-images-idx3-ubyte"),
        &[0, 0, 8, 3, 0],
    );
    write(
        &t.path().join("mnist/t10k-labels-idx1-ubyte"),
        &idx_labels(&[0; 5]),
    );
    assert!(matches!(
        load(t.path(), DatasetName::Mnist, Split::Test),
        Err(DataError::Truncated {
            expected: 16,
            found: 5,
            ..
        })
    ));
    let mut img = idx_images(5, 4, 3);
    img.push(0);
    write(&t.path().join("mnist/t10k-images-idx3-ubyte"), &img);
    assert!(matches!(
        load(t.path(), DatasetName::Mnist, Split::Test),
        Err(DataError::TrailingData { .. })
    ));
}

#[test]
fn bad_magic_label_range_and_count_mismatch() {
    let t = tempfile::tempdir().unwrap();
    let ip = t.path().join("mnist/t10k-images-idx3-ubyte");
    let lp = t.path().join("mnist/t10k-labels-idx1-ubyte");
    // Labels where images should be.
    write(&ip, &idx_labels(&[0; 5]));
    write(&lp, &idx_labels(&[0; 5]));
    match load(t.path(), DatasetName::Mnist, Split::Test) {
        Err(DataError::BadMagic {
            path,
            expected: 2051,
            found: 2049,
        }) => assert_eq!(path, ip),
        other => panic!("expected BadMagic, got {other:?}"),
    }
    write(&ip, &idx_images(5, 4, 3));
    write(&lp, &idx_labels(&[0, 1, 10, 3, 4]));
    assert!(matches!(
        load(t.path(), DatasetName::Mnist, Split::Test),
        Err(DataError::LabelOutOfRange {
            idx: 2,
            label: 10,
            n_classes: 10,
            ..
        })
    ));
    write(&lp, &idx_labels(&[0, 1, 2, 3]));
    assert!(matches!(
        load(t.path(), DatasetName::Mnist, Split::Test),
        Err(DataError::CountMismatch {
            n_images: 5,
            n_labels: 4,
            ..
        })
    ));
}

#[test]
fn corrupt_and_truncated_gzip() {
    let t = tempfile::tempdir().unwrap();
    write_mnist(t.path(), true, false);
    let ip = t.path().join("mnist/t10k-images-idx3-ubyte.gz");
    let good = std::fs::read(&ip).unwrap();
    // Cut inside the deflate stream.
    write(&ip, &good[..good.len() / 2]);
    match load(t.path(), DatasetName::Mnist, Split::Test) {
        Err(DataError::Corrupt { path, format, .. }) => {
            assert_eq!((path, format), (ip.clone(), Container::Gzip))
        }
        other => panic!("expected Corrupt gzip, got {other:?}"),
    }
    // Lose only the crc/size trailer.
    write(&ip, &good[..good.len() - 4]);
    assert!(matches!(
        load(t.path(), DatasetName::Mnist, Split::Test),
        Err(DataError::Corrupt {
            format: Container::Gzip,
            ..
        })
    ));
    // Garbage after a valid gzip header.
    let mut bad = good[..10].to_vec();
    bad.extend(std::iter::repeat_n(0xAB, 200));
    write(&ip, &bad);
    let err = load(t.path(), DatasetName::Mnist, Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Corrupt {
                format: Container::Gzip,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("t10k-images-idx3-ubyte.gz"),
        "{err}"
    );
    // Not gzip at all.
    write(&ip, b"hello, not gzip");
    assert!(matches!(
        load(t.path(), DatasetName::Mnist, Split::Test),
        Err(DataError::Corrupt { .. })
    ));
}

#[test]
fn missing_files_list_what_was_tried() {
    let t = tempfile::tempdir().unwrap();
    let err = load(t.path(), DatasetName::FashionMnist, Split::Train).unwrap_err();
    let DataError::Missing { tried, dataset, .. } = &err else {
        panic!("expected Missing, got {err:?}");
    };
    assert_eq!(*dataset, DatasetName::FashionMnist);
    assert!(tried.contains(&t.path().join("fashion-mnist/train-images-idx3-ubyte.gz")));
    assert!(tried.contains(&t.path().join("fashion-mnist/train-labels.idx1-ubyte")));
    assert!(err.to_string().contains("train-labels-idx1-ubyte.gz"));
}

/// Small CIFAR-10 batches: `(file name, records)`.
fn fake_cifar10() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for b in 1..=5u8 {
        let labels: Vec<u8> = (0..3).map(|i| (b + i) % 10).collect();
        files.push((format!("data_batch_{b}.bin"), cifar10_records(&labels, b)));
    }
    files.push(("test_batch.bin".into(), cifar10_records(&[3, 8, 8, 0], 9)));
    files
}

const META: &[u8] = b"a0\na1\na2\na3\na4\na5\na6\na7\na8\na9\n\n";

#[test]
fn cifar10_tarball_loads_like_loose_files() {
    let files = fake_cifar10();
    // Loose, uncompressed, in cifar-10-batches-bin/ with a meta file.
    let loose = tempfile::tempdir().unwrap();
    for (n, d) in &files {
        write(
            &loose.path().join("cifar-10/cifar-10-batches-bin").join(n),
            d,
        );
    }
    write(
        &loose
            .path()
            .join("cifar-10/cifar-10-batches-bin/batches.meta.txt"),
        META,
    );
    // Loose, xz-compressed, directly in cifar-10/.
    let xzd = tempfile::tempdir().unwrap();
    for (n, d) in &files {
        write(&xzd.path().join(format!("cifar-10/{n}.xz")), &xz(d));
    }
    write(&xzd.path().join("cifar-10/batches.meta.txt"), META);
    // The official tarball layout, with an unrelated member first.
    let tgz = tempfile::tempdir().unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|(n, _)| format!("cifar-10-batches-bin/{n}"))
        .collect();
    let mut entries: Vec<(&str, &[u8])> = vec![("cifar-10-batches-bin/readme.html", b"<html>")];
    entries.push(("cifar-10-batches-bin/batches.meta.txt", META));
    for ((_, d), n) in files.iter().zip(&names) {
        entries.push((n, d));
    }
    write(
        &tgz.path().join("cifar-10/cifar-10-binary.tar.gz"),
        &tar_gz(&entries),
    );

    for split in [Split::Train, Split::Val, Split::TrainAll, Split::Test] {
        let a = load(loose.path(), DatasetName::Cifar10, split).unwrap();
        let b = load(xzd.path(), DatasetName::Cifar10, split).unwrap();
        let c = load(tgz.path(), DatasetName::Cifar10, split).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.classes[3], "a3");
        assert_eq!((a.c, a.h, a.w), (3, 32, 32));
    }
    let train = load(tgz.path(), DatasetName::Cifar10, Split::TrainAll).unwrap();
    assert_eq!(train.n, 15);
    // A fixture of 15 images holds out a tenth: 1 image.
    let val = load(tgz.path(), DatasetName::Cifar10, Split::Val).unwrap();
    let fit = load(tgz.path(), DatasetName::Cifar10, Split::Train).unwrap();
    assert_eq!((val.n, fit.n), (1, 14));
    // Reading the training files once gives the same two splits.
    let (fit2, val2) = shears_data::load_train_val(tgz.path(), DatasetName::Cifar10).unwrap();
    assert_eq!((fit2, val2), (fit, val));
    assert_eq!(&train.labels[..4], &[1, 2, 3, 2]);
    // Planar records are copied as is: first pixel of example 1 is (1 + 0 + salt 1).
    assert_eq!(train.image_u8(1)[0], 2);
    let test = load(tgz.path(), DatasetName::Cifar10, Split::Test).unwrap();
    assert_eq!(test.labels, vec![3, 8, 8, 0]);
}

#[test]
fn cifar100_uses_fine_labels_loose_and_tarball() {
    let train = cifar100_records(&[(0, 99), (19, 5), (3, 42)]);
    let test = cifar100_records(&[(1, 7)]);
    let fine: String = (0..100).map(|i| format!("f{i}\n")).collect();
    let loose = tempfile::tempdir().unwrap();
    write(&loose.path().join("cifar-100/train.bin"), &train);
    write(&loose.path().join("cifar-100/test.bin.xz"), &xz(&test));
    let tgz = tempfile::tempdir().unwrap();
    let entries: Vec<(&str, &[u8])> = vec![
        ("cifar-100-binary/coarse_label_names.txt", b"x\n"),
        ("cifar-100-binary/fine_label_names.txt", fine.as_bytes()),
        ("cifar-100-binary/test.bin", &test),
        ("cifar-100-binary/train.bin", &train),
    ];
    write(
        &tgz.path().join("cifar-100/cifar-100-binary.tar.gz"),
        &tar_gz(&entries),
    );
    let a = load(loose.path(), DatasetName::Cifar100, Split::TrainAll).unwrap();
    assert_eq!(a.labels, vec![99, 5, 42]);
    assert_eq!(a.classes[99], "worm");
    let b = load(tgz.path(), DatasetName::Cifar100, Split::TrainAll).unwrap();
    assert_eq!(b.labels, a.labels);
    assert_eq!(b.images, a.images);
    assert_eq!(b.classes[42], "f42");
    let t = load(tgz.path(), DatasetName::Cifar100, Split::Test).unwrap();
    assert_eq!(t.labels, vec![7]);
    // Coarse labels are validated too.
    write(
        &loose.path().join("cifar-100/train.bin"),
        &cifar100_records(&[(20, 1)]),
    );
    assert!(matches!(
        load(loose.path(), DatasetName::Cifar100, Split::Train),
        Err(DataError::LabelOutOfRange {
            label: 20,
            n_classes: 20,
            ..
        })
    ));
}

#[test]
fn bad_cifar_files() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("cifar-10/test_batch.bin");
    let good = cifar10_records(&[1, 2, 3], 0);
    write(&p, &good[..good.len() - 1]);
    match load(t.path(), DatasetName::Cifar10, Split::Test) {
        Err(DataError::RecordSize { path, len, record }) => {
            assert_eq!((path, len, record), (p.clone(), 3 * 3073 - 1, 3073))
        }
        other => panic!("expected RecordSize, got {other:?}"),
    }
    write(&p, &[]);
    assert!(matches!(
        load(t.path(), DatasetName::Cifar10, Split::Test),
        Err(DataError::Truncated { .. })
    ));
    write(&p, &cifar10_records(&[1, 12], 0));
    assert!(matches!(
        load(t.path(), DatasetName::Cifar10, Split::Test),
        Err(DataError::LabelOutOfRange {
            idx: 1,
            label: 12,
            ..
        })
    ));
    // Class-name file with the wrong number of names.
    write(&p, &good);
    write(&t.path().join("cifar-10/batches.meta.txt"), b"a\nb\n");
    assert!(matches!(
        load(t.path(), DatasetName::Cifar10, Split::Test),
        Err(DataError::Invalid { .. })
    ));
}

#[test]
fn corrupt_and_truncated_xz() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("cifar-10/test_batch.bin.xz");
    let good = xz(&cifar10_records(&[1, 2, 3, 4, 5, 6], 0));
    write(&p, &good[..good.len() / 2]);
    match load(t.path(), DatasetName::Cifar10, Split::Test) {
        Err(DataError::Corrupt { path, format, .. }) => {
            assert_eq!((path, format), (p.clone(), Container::Xz))
        }
        other => panic!("expected Corrupt xz, got {other:?}"),
    }
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    for b in &mut flipped[mid..mid + 16] {
        *b ^= 0x5A;
    }
    write(&p, &flipped);
    let err = load(t.path(), DatasetName::Cifar10, Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Corrupt {
                format: Container::Xz,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("test_batch.bin.xz"), "{err}");
    write(&p, b"not xz");
    assert!(matches!(
        load(t.path(), DatasetName::Cifar10, Split::Test),
        Err(DataError::Corrupt {
            format: Container::Xz,
            ..
        })
    ));
}

#[test]
fn corrupt_and_truncated_tarball() {
    let files = fake_cifar10();
    let entries: Vec<(String, &[u8])> = files
        .iter()
        .map(|(n, d)| (format!("cifar-10-batches-bin/{n}"), d.as_slice()))
        .collect();
    let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let good = tar_gz(&refs);
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("cifar-10/cifar-10-binary.tar.gz");
    write(&p, &good[..good.len() / 2]);
    match load(t.path(), DatasetName::Cifar10, Split::Test) {
        Err(DataError::Corrupt { path, format, .. }) => {
            assert_eq!((path, format), (p.clone(), Container::TarGz))
        }
        other => panic!("expected Corrupt tar.gz, got {other:?}"),
    }
    write(&p, b"\x1f\x8b\x08\x00garbage garbage garbage");
    assert!(matches!(
        load(t.path(), DatasetName::Cifar10, Split::Test),
        Err(DataError::Corrupt { .. })
    ));
    // A valid tarball without the test batch.
    write(&p, &tar_gz(&refs[..5]));
    match load(t.path(), DatasetName::Cifar10, Split::Test) {
        Err(DataError::Missing { tried, .. }) => {
            assert!(tried[0].ends_with("cifar-10-binary.tar.gz/test_batch.bin"))
        }
        other => panic!("expected Missing, got {other:?}"),
    }
}

fn write_png(
    path: &Path,
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(data).unwrap();
}

#[test]
fn image_folder_roundtrip() {
    use png::{BitDepth::Eight, ColorType::*};
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("shapes");
    // 2x3 RGB images: pixel (y, x) channel ch = 10*ch + 3*y + x + k.
    let rgb = |k: u8| -> Vec<u8> {
        (0..2u8)
            .flat_map(|y| {
                (0..3u8).flat_map(move |x| (0..3u8).map(move |ch| 10 * ch + 3 * y + x + k))
            })
            .collect()
    };
    write_png(&root.join("b_square/0.png"), 3, 2, Rgb, Eight, &rgb(1));
    write_png(&root.join("b_square/1.PNG"), 3, 2, Rgb, Eight, &rgb(2));
    let rgba: Vec<u8> = rgb(3)
        .chunks(3)
        .flat_map(|p| [p[0], p[1], p[2], 128])
        .collect();
    write_png(&root.join("a_circle/x.png"), 3, 2, Rgba, Eight, &rgba);
    write_png(
        &root.join("a_circle/y.png"),
        3,
        2,
        Grayscale,
        Eight,
        &[9, 8, 7, 6, 5, 4],
    );
    std::fs::write(root.join("a_circle/notes.txt"), b"ignored").unwrap();
    std::fs::write(root.join("stray.png"), b"ignored too").unwrap();

    let ds = load_image_folder(&root, &ImageFolderOptions::default()).unwrap();
    assert_eq!(ds.classes, vec!["a_circle", "b_square"]);
    assert_eq!(ds.labels, vec![0, 0, 1, 1]);
    assert_eq!((ds.n, ds.c, ds.h, ds.w), (4, 3, 2, 3));
    assert_eq!(ds.name, "shapes");
    // Planar: R plane of x.png (k = 3) is 3*y + x + 3.
    assert_eq!(&ds.image_u8(0)[..6], &[3, 4, 5, 6, 7, 8]);
    assert_eq!(&ds.image_u8(0)[6..12], &[13, 14, 15, 16, 17, 18]);
    // Grey replicated to RGB.
    assert_eq!(
        ds.image_u8(1),
        &[9, 8, 7, 6, 5, 4, 9, 8, 7, 6, 5, 4, 9, 8, 7, 6, 5, 4]
    );

    let grey = ImageFolderOptions {
        color: ColorMode::Grey,
        ..Default::default()
    };
    let g = load_image_folder(&root, &grey).unwrap();
    assert_eq!((g.c, g.h, g.w), (1, 2, 3));
    assert_eq!(g.image_u8(1), &[9, 8, 7, 6, 5, 4]);

    let resized = ImageFolderOptions {
        resize_to: Some((4, 6)),
        ..Default::default()
    };
    let r = load_image_folder(&root, &resized).unwrap();
    assert_eq!((r.n, r.c, r.h, r.w), (4, 3, 4, 6));
}

#[test]
fn image_folder_errors() {
    use png::{BitDepth, ColorType::*};
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write_png(
        &root.join("a/0.png"),
        2,
        2,
        Grayscale,
        BitDepth::Eight,
        &[1, 2, 3, 4],
    );
    let odd = root.join("b/1.png");
    write_png(&odd, 3, 2, Grayscale, BitDepth::Eight, &[1; 6]);
    match load_image_folder(root, &ImageFolderOptions::default()) {
        Err(DataError::ImageShape {
            path,
            found_w: 3,
            expected_w: 2,
            ..
        }) => assert_eq!(path, odd),
        other => panic!("expected ImageShape, got {other:?}"),
    }
    let opts = ImageFolderOptions {
        resize_to: Some((2, 2)),
        ..Default::default()
    };
    assert_eq!(load_image_folder(root, &opts).unwrap().n, 2);

    let deep = root.join("c/2.png");
    write_png(&deep, 2, 2, Grayscale, BitDepth::Sixteen, &[0; 8]);
    match load_image_folder(root, &opts) {
        Err(DataError::Unsupported { path, .. }) => assert_eq!(path, deep),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    std::fs::write(&deep, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    match load_image_folder(root, &opts) {
        Err(DataError::Corrupt {
            path,
            format: Container::Png,
            ..
        }) => assert_eq!(path, deep),
        other => panic!("expected Corrupt png, got {other:?}"),
    }
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_image_folder(empty.path(), &opts),
        Err(DataError::Invalid { .. })
    ));
    assert!(matches!(
        load_image_folder(&root.join("nope"), &opts),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn every_truncation_and_bit_flip_is_an_error_not_a_panic() {
    let t = tempfile::tempdir().unwrap();
    write_mnist(t.path(), true, false);
    let ip = t.path().join("mnist/t10k-images-idx3-ubyte.gz");
    let good = std::fs::read(&ip).unwrap();
    for cut in 0..good.len() {
        write(&ip, &good[..cut]);
        assert!(
            load(t.path(), DatasetName::Mnist, Split::Test).is_err(),
            "cut {cut}"
        );
    }
    for pos in 0..good.len() {
        let mut bad = good.clone();
        bad[pos] ^= 0x10;
        write(&ip, &bad);
        // Flips in the gzip header's mtime/os/xfl fields still decode: any outcome but a panic.
        let _ = load(t.path(), DatasetName::Mnist, Split::Test);
    }
    let tp = t.path().join("cifar-10/test_batch.bin.xz");
    let good = xz(&cifar10_records(&[1, 2], 0));
    for cut in (0..good.len()).step_by(7) {
        write(&tp, &good[..cut]);
        assert!(
            load(t.path(), DatasetName::Cifar10, Split::Test).is_err(),
            "cut {cut}"
        );
    }
}
