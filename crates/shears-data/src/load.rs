//! Finding a built-in dataset in a data directory and loading it.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, DatasetName, Split, VAL_SEED};
use crate::error::DataError;
use crate::idx;
use crate::read::{read_idx, read_maybe_compressed, read_tar_gz_members};

/// Loads one split of a built-in dataset from a data directory.
///
/// The dataset is looked for in `<dir>/<subdir>` (see [`DatasetName::subdir`]: `mnist`,
/// `fashion-mnist`, `cifar-10`, `cifar-100`) and, as a fallback, in `dir` itself. Accepted
/// on-disk forms:
///
/// - MNIST / Fashion-MNIST: the four IDX files gzipped (`train-images-idx3-ubyte.gz`, ...) or
///   uncompressed (`train-images-idx3-ubyte`, or the dotted `train-images.idx3-ubyte`).
/// - CIFAR-10: `data_batch_{1..5}.bin` and `test_batch.bin`, each optionally `.xz` or `.gz`
///   compressed, plus an optional `batches.meta.txt` with the class names, either loose or in
///   `cifar-10-batches-bin/`; or the official `cifar-10-binary.tar.gz`, read as a stream.
/// - CIFAR-100: `train.bin` / `test.bin` (optionally `.xz` / `.gz`; records are coarse label,
///   fine label, 3072 pixels; the fine label is used) plus an optional `fine_label_names.txt`,
///   loose or in `cifar-100-binary/`; or the official `cifar-100-binary.tar.gz`.
///
/// Loose files win over a tarball. Loading the test split reads only the test files.
/// [`Split::Train`] and [`Split::Val`] divide the training files: the validation hold-out is
/// [`DatasetName::val_len`] class-balanced images drawn with [`VAL_SEED`](crate::VAL_SEED),
/// the same on every run, and `Train` is every other training image.
/// Everything is validated: magic numbers, lengths against headers and record sizes, label
/// ranges and image/label counts.
///
/// ```no_run
/// use shears_data::{load, DatasetName, Split};
/// let ds = load("data".as_ref(), DatasetName::Mnist, Split::Test)?;
/// assert_eq!((ds.len(), ds.c, ds.h, ds.w), (10_000, 1, 28, 28));
/// # Ok::<(), shears_data::DataError>(())
/// ```
pub fn load(dir: &Path, name: DatasetName, split: Split) -> Result<Dataset, DataError> {
    let files = if split.from_training_files() {
        Files::Train
    } else {
        Files::Test
    };
    let full = match name {
        DatasetName::Mnist | DatasetName::FashionMnist => load_idx(dir, name, files)?,
        DatasetName::Cifar10 | DatasetName::Cifar100 => load_cifar(dir, name, files)?,
    };
    Ok(match split {
        Split::Test | Split::TrainAll => full,
        Split::Train | Split::Val => hold_out(&full, name, split),
    })
}

/// [`Split::Train`] and [`Split::Val`] together, reading the training files once (two calls
/// of [`load`] would read and decompress them twice).
pub fn load_train_val(dir: &Path, name: DatasetName) -> Result<(Dataset, Dataset), DataError> {
    let full = load(dir, name, Split::TrainAll)?;
    Ok((
        hold_out(&full, name, Split::Train),
        hold_out(&full, name, Split::Val),
    ))
}

/// The official files a split is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Files {
    Train,
    Test,
}

impl Files {
    fn split(self) -> Split {
        match self {
            Files::Train => Split::TrainAll,
            Files::Test => Split::Test,
        }
    }
}

/// The validation hold-out of the training files (`Split::Val`) or the rest (`Split::Train`):
/// [`DatasetName::val_len`] class-balanced images (a tenth of the files when they hold fewer
/// than ten times that, as small fixtures do) drawn with [`VAL_SEED`], in file order.
fn hold_out(full: &Dataset, name: DatasetName, split: Split) -> Dataset {
    let n_val = name.val_len().min(full.len() / 10);
    let val = full.class_balanced_idxs(n_val, VAL_SEED);
    let idxs: Vec<usize> = match split {
        Split::Val => val,
        _ => {
            let mut held = vec![false; full.len()];
            for &i in &val {
                held[i] = true;
            }
            (0..full.len()).filter(|&i| !held[i]).collect()
        }
    };
    let mut ds = full.subset(&idxs);
    ds.name = format!("{name}-{split}");
    ds
}

/// Directories searched for loose files, in order.
fn search_dirs(dir: &Path, name: DatasetName) -> Vec<PathBuf> {
    let base = dir.join(name.subdir());
    let mut dirs = vec![base.clone()];
    if let Some(inner) = cifar_inner_dir(name) {
        dirs.push(base.join(inner));
    }
    dirs.push(dir.to_path_buf());
    if let Some(inner) = cifar_inner_dir(name) {
        dirs.push(dir.join(inner));
    }
    dirs
}

fn cifar_inner_dir(name: DatasetName) -> Option<&'static str> {
    match name {
        DatasetName::Cifar10 => Some("cifar-10-batches-bin"),
        DatasetName::Cifar100 => Some("cifar-100-binary"),
        _ => None,
    }
}

/// The first existing `<d>/<file>` over `dirs` x `names`, or the list of paths tried.
fn find_file(dirs: &[PathBuf], names: &[String]) -> Result<PathBuf, Vec<PathBuf>> {
    let mut tried = Vec::new();
    for d in dirs {
        for n in names {
            let p = d.join(n);
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p);
        }
    }
    Err(tried)
}

fn idx_variants(base: &str) -> Vec<String> {
    let dotted = base.replacen("-idx", ".idx", 1);
    vec![
        format!("{base}.gz"),
        base.to_string(),
        format!("{dotted}.gz"),
        dotted,
    ]
}

fn load_idx(dir: &Path, name: DatasetName, files: Files) -> Result<Dataset, DataError> {
    let split = files.split();
    let prefix = match files {
        Files::Train => "train",
        Files::Test => "t10k",
    };
    let dirs = search_dirs(dir, name);
    let images = find_file(&dirs, &idx_variants(&format!("{prefix}-images-idx3-ubyte")));
    let labels = find_file(&dirs, &idx_variants(&format!("{prefix}-labels-idx1-ubyte")));
    let (images_path, labels_path) = match (images, labels) {
        (Ok(i), Ok(l)) => (i, l),
        (i, l) => {
            let mut tried = i.err().unwrap_or_default();
            tried.extend(l.err().unwrap_or_default());
            return Err(DataError::Missing {
                dataset: name,
                dir: dir.to_path_buf(),
                tried,
            });
        }
    };
    let n_expected = name.split_len(split);
    let n_classes = name.n_classes();
    let (img_bytes, lab_bytes) = std::thread::scope(|s| {
        let img = s.spawn(|| read_idx(&images_path, 16 + n_expected * 784));
        let lab = read_idx(&labels_path, 8 + n_expected);
        (img.join(), lab)
    });
    let img_bytes = img_bytes.map_err(|_| DataError::invalid("image reader thread panicked"))??;
    let im = idx::parse_images(&images_path, img_bytes)?;
    let labels = idx::parse_labels(&labels_path, lab_bytes?, n_classes)?;
    if labels.len() != im.n {
        return Err(DataError::CountMismatch {
            images: images_path,
            labels: labels_path,
            n_images: im.n,
            n_labels: labels.len(),
        });
    }
    Ok(Dataset {
        name: format!("{name}-{split}"),
        images: im.pixels,
        labels,
        n: im.n,
        c: 1,
        h: im.h,
        w: im.w,
        classes: name.default_classes(),
    })
}

/// Layout of one CIFAR binary record.
#[derive(Clone, Copy)]
struct CifarLayout {
    /// Label bytes before the pixels (1 for CIFAR-10; 2 for CIFAR-100: coarse, fine).
    label_bytes: usize,
    /// Which label byte is the class (0 for CIFAR-10, 1 = fine for CIFAR-100).
    label_at: usize,
    n_classes: usize,
}

const CIFAR_PIXELS: usize = 3 * 32 * 32;

impl CifarLayout {
    fn of(name: DatasetName) -> Self {
        match name {
            DatasetName::Cifar100 => CifarLayout {
                label_bytes: 2,
                label_at: 1,
                n_classes: 100,
            },
            _ => CifarLayout {
                label_bytes: 1,
                label_at: 0,
                n_classes: 10,
            },
        }
    }

    fn record(self) -> usize {
        self.label_bytes + CIFAR_PIXELS
    }
}

/// Appends the records of one CIFAR file to `images` / `labels`, validating it.
fn parse_cifar(
    path: &Path,
    bytes: &[u8],
    layout: CifarLayout,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<(), DataError> {
    let record = layout.record();
    if bytes.is_empty() {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: record as u64,
            found: 0,
        });
    }
    if !bytes.len().is_multiple_of(record) {
        return Err(DataError::RecordSize {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            record: record as u64,
        });
    }
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        // CIFAR-100's coarse label (20 superclasses) is validated too.
        if layout.label_bytes == 2 && rec[0] >= 20 {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                idx: i,
                label: rec[0],
                n_classes: 20,
            });
        }
        let label = rec[layout.label_at];
        if label as usize >= layout.n_classes {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                idx: i,
                label,
                n_classes: layout.n_classes,
            });
        }
        labels.push(label);
        images.extend_from_slice(&rec[layout.label_bytes..]);
    }
    Ok(())
}

fn cifar_members(name: DatasetName, files: Files) -> (Vec<&'static str>, &'static str) {
    match (name, files) {
        (DatasetName::Cifar100, Files::Train) => (vec!["train.bin"], "fine_label_names.txt"),
        (DatasetName::Cifar100, Files::Test) => (vec!["test.bin"], "fine_label_names.txt"),
        (_, Files::Train) => (
            vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            "batches.meta.txt",
        ),
        (_, Files::Test) => (vec!["test_batch.bin"], "batches.meta.txt"),
    }
}

fn tarball_name(name: DatasetName) -> &'static str {
    match name {
        DatasetName::Cifar100 => "cifar-100-binary.tar.gz",
        _ => "cifar-10-binary.tar.gz",
    }
}

/// Class names from a text file: one per line, blank lines ignored, exactly `n_classes`.
fn parse_class_names(path: &Path, text: &[u8], n_classes: usize) -> Result<Vec<String>, DataError> {
    let text = std::str::from_utf8(text).map_err(|e| DataError::Unsupported {
        path: path.to_path_buf(),
        what: format!("class-name file is not utf-8 ({e})"),
    })?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != n_classes {
        return Err(DataError::invalid(format!(
            "class-name file {}: expected {n_classes} names, found {}",
            path.display(),
            names.len()
        )));
    }
    Ok(names)
}

/// Reads (and decompresses) several files concurrently, one thread per file.
fn read_all(paths: Vec<PathBuf>, size_hint: usize) -> Result<Vec<(PathBuf, Vec<u8>)>, DataError> {
    let results: Vec<Result<Vec<u8>, DataError>> = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .map(|p| s.spawn(move || read_maybe_compressed(p, size_hint)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(DataError::invalid("reader thread panicked")))
            })
            .collect()
    });
    paths
        .into_iter()
        .zip(results)
        .map(|(p, r)| r.map(|b| (p, b)))
        .collect()
}

fn load_cifar(dir: &Path, name: DatasetName, files: Files) -> Result<Dataset, DataError> {
    let split = files.split();
    let layout = CifarLayout::of(name);
    let (members, meta_name) = cifar_members(name, files);
    let dirs = search_dirs(dir, name);
    let mut tried = Vec::new();
    let mut loose = Vec::new();
    for m in &members {
        let variants = [m.to_string(), format!("{m}.xz"), format!("{m}.gz")];
        match find_file(&dirs, &variants) {
            Ok(p) => loose.push(p),
            Err(t) => tried.extend(t),
        }
    }

    let (blobs, class_names) = if loose.len() == members.len() {
        let blobs = read_all(loose, 10_000 * layout.record())?;
        let names = match find_file(&dirs, &[meta_name.to_string()]) {
            Ok(p) => {
                let text = std::fs::read(&p).map_err(|e| DataError::io(&p, e))?;
                parse_class_names(&p, &text, layout.n_classes)?
            }
            Err(_) => name.default_classes(),
        };
        (blobs, names)
    } else {
        let tarballs: Vec<PathBuf> = [dir.join(name.subdir()), dir.to_path_buf()]
            .iter()
            .map(|d| d.join(tarball_name(name)))
            .collect();
        let Some(tarball) = tarballs.iter().find(|p| p.is_file()) else {
            tried.extend(tarballs);
            return Err(DataError::Missing {
                dataset: name,
                dir: dir.to_path_buf(),
                tried,
            });
        };
        let mut wanted = members.clone();
        wanted.push(meta_name);
        let mut found = read_tar_gz_members(tarball, &wanted)?;
        let meta = found.pop().flatten();
        let mut blobs = Vec::with_capacity(members.len());
        for (m, f) in members.iter().zip(found) {
            let Some(member) = f else {
                return Err(DataError::Missing {
                    dataset: name,
                    dir: dir.to_path_buf(),
                    tried: vec![tarball.join(m)],
                });
            };
            blobs.push((member.path, member.data));
        }
        let names = match meta {
            Some(m) => parse_class_names(&m.path, &m.data, layout.n_classes)?,
            None => name.default_classes(),
        };
        (blobs, names)
    };

    let total: usize = blobs.iter().map(|(_, b)| b.len() / layout.record()).sum();
    let mut images = Vec::with_capacity(total * CIFAR_PIXELS);
    let mut labels = Vec::with_capacity(total);
    for (p, b) in &blobs {
        parse_cifar(p, b, layout, &mut images, &mut labels)?;
    }
    Ok(Dataset {
        name: format!("{name}-{split}"),
        n: labels.len(),
        images,
        labels,
        c: 3,
        h: 32,
        w: 32,
        classes: class_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_variant_names() {
        assert_eq!(
            idx_variants("train-images-idx3-ubyte"),
            vec![
                "train-images-idx3-ubyte.gz",
                "train-images-idx3-ubyte",
                "train-images.idx3-ubyte.gz",
                "train-images.idx3-ubyte"
            ]
        );
    }

    #[test]
    fn cifar_record_checks() {
        let l10 = CifarLayout::of(DatasetName::Cifar10);
        let (mut im, mut lab) = (Vec::new(), Vec::new());
        let p = Path::new("b.bin");
        let mut rec = vec![0u8; 3073];
        rec[0] = 9;
        assert!(parse_cifar(p, &rec, l10, &mut im, &mut lab).is_ok());
        assert_eq!((im.len(), lab.as_slice()), (3072, &[9u8][..]));
        assert!(matches!(
            parse_cifar(p, &rec[..3000], l10, &mut im, &mut lab),
            Err(DataError::RecordSize { len: 3000, .. })
        ));
        rec[0] = 10;
        assert!(matches!(
            parse_cifar(p, &rec, l10, &mut im, &mut lab),
            Err(DataError::LabelOutOfRange { label: 10, .. })
        ));
        let l100 = CifarLayout::of(DatasetName::Cifar100);
        let mut rec = vec![0u8; 3074];
        rec[0] = 19;
        rec[1] = 99;
        let (mut im, mut lab) = (Vec::new(), Vec::new());
        parse_cifar(p, &rec, l100, &mut im, &mut lab).unwrap();
        assert_eq!(lab, vec![99]);
        rec[0] = 20;
        assert!(parse_cifar(p, &rec, l100, &mut im, &mut lab).is_err());
    }

    #[test]
    fn class_name_file() {
        let p = Path::new("meta");
        let names = parse_class_names(p, b"a\nb\n\n", 2).unwrap();
        assert_eq!(names, vec!["a", "b"]);
        assert!(matches!(
            parse_class_names(p, b"a\n", 2),
            Err(DataError::Invalid { .. })
        ));
    }
}
