//! Download verification without network: `verify_files` and `fetch` from a `file://` source.

mod common;

use std::path::Path;

use shears_data::{
    fetch, official_files, sha256_file, verify_files, Checksum, DataError, DatasetName,
    FetchAction, FetchOptions, FileStatus,
};

fn copy_mnist(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in official_files(DatasetName::Mnist) {
        std::fs::copy(
            common::data_dir().join("mnist").join(f.file_name),
            to.join(f.file_name),
        )
        .unwrap();
    }
}

fn no_part_files(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".part"))
}

#[test]
fn official_file_tables() {
    let mnist = official_files(DatasetName::Mnist);
    assert_eq!(mnist.len(), 4);
    assert!(mnist.iter().all(|f| f.url.ends_with(f.file_name)
        && f.url
            .starts_with("https://ossci-datasets.s3.amazonaws.com/mnist/")));
    assert_eq!(official_files(DatasetName::FashionMnist).len(), 4);
    assert_eq!(
        official_files(DatasetName::Cifar10)[0].checksum,
        Checksum::Md5("c32a1d4ab5d03f1284b67883e8d87530")
    );
    assert_eq!(
        official_files(DatasetName::Cifar100)[0].file_name,
        "cifar-100-binary.tar.gz"
    );
}

#[test]
fn sha256_of_a_real_file() {
    let p = common::data_dir().join("mnist/t10k-labels-idx1-ubyte.gz");
    assert_eq!(
        sha256_file(&p).unwrap(),
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    );
    assert!(matches!(
        sha256_file(Path::new("/nonexistent/file")),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn verify_detects_corruption_and_missing_files() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("mnist");
    copy_mnist(&dir);
    let p = dir.join("t10k-labels-idx1-ubyte.gz");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    std::fs::remove_file(dir.join("train-labels-idx1-ubyte.gz")).unwrap();
    let status = verify_files(t.path(), DatasetName::Mnist).unwrap();
    let get = |n: &str| status.iter().find(|(f, _)| f == n).unwrap().1.clone();
    assert_eq!(get("train-images-idx3-ubyte.gz"), FileStatus::Ok);
    assert_eq!(get("train-labels-idx1-ubyte.gz"), FileStatus::Missing);
    match get("t10k-labels-idx1-ubyte.gz") {
        FileStatus::Mismatch { expected, found } => {
            assert_eq!(
                expected,
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            );
            assert_ne!(found, expected);
        }
        other => panic!("expected Mismatch, got {other:?}"),
    }
}

#[test]
fn fetch_from_local_source_verifies_and_renames() {
    let src = tempfile::tempdir().unwrap();
    copy_mnist(src.path());
    let dst = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        base_url_override: Some(format!("file://{}/", src.path().display())),
        progress: false,
        ..Default::default()
    };
    let report = fetch(dst.path(), DatasetName::Mnist, &opts).unwrap();
    assert_eq!(report.dir, dst.path().join("mnist"));
    assert_eq!(report.files.len(), 4);
    assert_eq!(
        report.files[0],
        (
            "train-images-idx3-ubyte.gz".to_string(),
            FetchAction::Downloaded { bytes: 9_912_422 }
        )
    );
    assert!(verify_files(dst.path(), DatasetName::Mnist)
        .unwrap()
        .iter()
        .all(|(_, s)| *s == FileStatus::Ok));
    assert!(no_part_files(&report.dir));

    // Everything present: nothing to do.
    let again = fetch(dst.path(), DatasetName::Mnist, &opts).unwrap();
    assert!(again
        .files
        .iter()
        .all(|(_, a)| *a == FetchAction::AlreadyPresent));

    // A present file with the wrong checksum is an error unless overwrite.
    let target = report.dir.join("t10k-labels-idx1-ubyte.gz");
    std::fs::write(&target, b"junk").unwrap();
    match fetch(dst.path(), DatasetName::Mnist, &opts) {
        Err(DataError::ChecksumMismatch { path, .. }) => assert_eq!(path, target),
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"junk");
    let over = FetchOptions {
        overwrite: true,
        ..opts.clone()
    };
    let replaced = fetch(dst.path(), DatasetName::Mnist, &over).unwrap();
    assert_eq!(replaced.files[3].1, FetchAction::Replaced { bytes: 4_542 });
    assert_eq!(
        sha256_file(&target).unwrap(),
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    );
}

#[test]
fn fetch_rejects_a_corrupt_download_and_leaves_nothing() {
    let src = tempfile::tempdir().unwrap();
    copy_mnist(src.path());
    let bad = src.path().join("t10k-images-idx3-ubyte.gz");
    let mut bytes = std::fs::read(&bad).unwrap();
    bytes[1000] ^= 0xFF;
    std::fs::write(&bad, bytes).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        base_url_override: Some(format!("file://{}", src.path().display())),
        progress: false,
        ..Default::default()
    };
    let err = fetch(dst.path(), DatasetName::Mnist, &opts).unwrap_err();
    match &err {
        DataError::ChecksumMismatch { path, expected, .. } => {
            assert_eq!(path, &dst.path().join("mnist/t10k-images-idx3-ubyte.gz"));
            assert!(expected.starts_with("8d422c7b"));
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    let dir = dst.path().join("mnist");
    assert!(!dir.join("t10k-images-idx3-ubyte.gz").exists());
    assert!(
        dir.join("train-images-idx3-ubyte.gz").exists(),
        "earlier files are kept"
    );
    assert!(no_part_files(&dir));

    // A source that does not exist is a download error naming the url.
    std::fs::remove_file(src.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    std::fs::copy(
        common::data_dir().join("mnist/t10k-images-idx3-ubyte.gz"),
        src.path().join("t10k-images-idx3-ubyte.gz"),
    )
    .unwrap();
    match fetch(dst.path(), DatasetName::Mnist, &opts) {
        Err(DataError::Download { url, .. }) => assert!(url.ends_with("t10k-labels-idx1-ubyte.gz")),
        other => panic!("expected Download error, got {other:?}"),
    }
    let unsupported = FetchOptions {
        base_url_override: Some("ftp://example".into()),
        ..opts
    };
    let fresh = tempfile::tempdir().unwrap();
    assert!(matches!(
        fetch(fresh.path(), DatasetName::Mnist, &unsupported),
        Err(DataError::Download { .. })
    ));
}
