//! The in-memory [`Dataset`] and the names of the built-in datasets.

use std::fmt;
use std::str::FromStr;

use rand_chacha::ChaCha8Rng;

use crate::error::DataError;
use crate::rng::{derive_rng, Domain};

/// A dataset held in memory: raw `u8` pixels in NCHW order plus `u8` class labels.
///
/// Pixels are stored exactly as they are on disk (0..=255); conversion to `f32` model input
/// happens in [`crate::Loader`] / [`crate::to_f32`] through a [`crate::Normalize`].
/// CIFAR records are already planar (all R, then all G, then all B), so they are NCHW as read.
///
/// The fields are public for easy construction; [`crate::Loader::new`] checks that
/// `images.len() == n * c * h * w` and `labels.len() == n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Human-readable name, e.g. `"mnist-test"`.
    pub name: String,
    /// Raw pixels, `n * c * h * w` bytes in NCHW order.
    pub images: Vec<u8>,
    /// One class index per example, each `< classes.len()`.
    pub labels: Vec<u8>,
    /// Number of examples.
    pub n: usize,
    /// Channels per image (1 for grey, 3 for RGB).
    pub c: usize,
    /// Image height in pixels.
    pub h: usize,
    /// Image width in pixels.
    pub w: usize,
    /// Class names; label `i` is `classes[i]`.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the dataset has no examples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Number of classes (`classes.len()`).
    pub fn n_classes(&self) -> usize {
        self.classes.len()
    }

    /// Bytes per image (`c * h * w`).
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The raw pixels of example `i`, `c * h * w` bytes in CHW order.
    ///
    /// # Panics
    /// If `i >= self.len()` (a programmer error, like slice indexing).
    pub fn image_u8(&self, i: usize) -> &[u8] {
        assert!(
            i < self.n,
            "image index {i} out of range for {} examples",
            self.n
        );
        let sz = self.image_len();
        &self.images[i * sz..(i + 1) * sz]
    }

    /// A new dataset holding copies of the examples at `idxs`, in that order (repeats allowed).
    ///
    /// # Panics
    /// If any index is `>= self.len()` (a programmer error, like slice indexing).
    pub fn subset(&self, idxs: &[usize]) -> Dataset {
        let sz = self.image_len();
        let mut images = Vec::with_capacity(idxs.len() * sz);
        let mut labels = Vec::with_capacity(idxs.len());
        for &i in idxs {
            images.extend_from_slice(self.image_u8(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            name: self.name.clone(),
            images,
            labels,
            n: idxs.len(),
            c: self.c,
            h: self.h,
            w: self.w,
            classes: self.classes.clone(),
        }
    }

    /// The first `n` examples (all of them if `n >= self.len()`).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.n);
        let idxs: Vec<usize> = (0..n).collect();
        self.subset(&idxs)
    }

    /// `n` examples (all of them if `n >= self.len()`) spread as evenly as possible over the
    /// classes, chosen at random but deterministically from `seed`.
    ///
    /// Every class gets `n / n_classes` examples, the remainder going one each to classes
    /// picked at random; a class with too few examples gives its share to the others. The
    /// result keeps dataset order (indices ascending).
    ///
    /// ```
    /// # use shears_data::Dataset;
    /// let ds = Dataset {
    ///     name: "toy".into(), images: vec![0; 10], labels: vec![0, 0, 0, 0, 0, 0, 1, 1, 2, 2],
    ///     n: 10, c: 1, h: 1, w: 1, classes: vec!["a".into(), "b".into(), "c".into()],
    /// };
    /// let sub = ds.class_balanced_subset(6, 7);
    /// assert_eq!(sub.labels, vec![0, 0, 1, 1, 2, 2]);
    /// assert_eq!(sub, ds.class_balanced_subset(6, 7));
    /// ```
    pub fn class_balanced_subset(&self, n: usize, seed: u64) -> Dataset {
        let idxs = self.class_balanced_idxs(n, seed);
        self.subset(&idxs)
    }

    /// The dataset indices [`Dataset::class_balanced_subset`] selects, ascending.
    pub fn class_balanced_idxs(&self, n: usize, seed: u64) -> Vec<usize> {
        let labels = &self.labels[..self.n.min(self.labels.len())];
        let n_buckets = labels
            .iter()
            .map(|&l| l as usize + 1)
            .max()
            .unwrap_or(0)
            .max(self.classes.len());
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_buckets];
        for (i, &l) in labels.iter().enumerate() {
            by_class[l as usize].push(i);
        }
        let mut rng = derive_rng(seed, 0, Domain::Balance);
        for members in by_class.iter_mut() {
            crate::rng::shuffle(members, &mut rng);
        }
        let quotas = balanced_quotas(&by_class, n.min(labels.len()), &mut rng);
        let mut out: Vec<usize> = by_class
            .iter()
            .zip(&quotas)
            .flat_map(|(members, &q)| members[..q].iter().copied())
            .collect();
        out.sort_unstable();
        out
    }
}

/// Water-filling: as equal as possible, capped by each class's size.
fn balanced_quotas(by_class: &[Vec<usize>], n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut quota = vec![0usize; by_class.len()];
    let mut remaining = n;
    while remaining > 0 {
        let mut open: Vec<usize> = (0..by_class.len())
            .filter(|&k| quota[k] < by_class[k].len())
            .collect();
        if open.is_empty() {
            break;
        }
        let share = remaining / open.len();
        if share == 0 {
            crate::rng::shuffle(&mut open, rng);
            for &k in &open[..remaining] {
                quota[k] += 1;
            }
            break;
        }
        for &k in &open {
            let add = share.min(by_class[k].len() - quota[k]);
            quota[k] += add;
            remaining -= add;
        }
    }
    quota
}

/// The datasets this crate knows how to find, load and download.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DatasetName {
    /// MNIST handwritten digits: 28x28 grey, 10 classes, 60000 train / 10000 test.
    Mnist,
    /// Fashion-MNIST (Zalando): 28x28 grey, 10 classes, 60000 train / 10000 test.
    FashionMnist,
    /// CIFAR-10: 32x32 RGB, 10 classes, 50000 train / 10000 test.
    Cifar10,
    /// CIFAR-100 (fine labels): 32x32 RGB, 100 classes, 50000 train / 10000 test.
    Cifar100,
}

impl DatasetName {
    /// All known datasets.
    pub const ALL: [DatasetName; 4] = [
        DatasetName::Mnist,
        DatasetName::FashionMnist,
        DatasetName::Cifar10,
        DatasetName::Cifar100,
    ];

    /// The canonical name (`mnist`, `fashion-mnist`, `cifar10`, `cifar100`), as printed by
    /// `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
            DatasetName::Cifar100 => "cifar100",
        }
    }

    /// The sub-directory of a data directory that holds this dataset
    /// (`mnist`, `fashion-mnist`, `cifar-10`, `cifar-100`).
    pub fn subdir(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar-10",
            DatasetName::Cifar100 => "cifar-100",
        }
    }

    /// Number of classes.
    pub fn n_classes(self) -> usize {
        match self {
            DatasetName::Cifar100 => 100,
            _ => 10,
        }
    }

    /// Image shape `(c, h, w)`.
    pub fn shape(self) -> (usize, usize, usize) {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => (1, 28, 28),
            DatasetName::Cifar10 | DatasetName::Cifar100 => (3, 32, 32),
        }
    }

    /// Number of examples in a split: the official counts, with the validation hold-out
    /// ([`DatasetName::val_len`]) taken out of [`Split::Train`].
    pub fn split_len(self, split: Split) -> usize {
        let train_all = match self {
            DatasetName::Mnist | DatasetName::FashionMnist => 60_000,
            DatasetName::Cifar10 | DatasetName::Cifar100 => 50_000,
        };
        match split {
            Split::TrainAll => train_all,
            Split::Train => train_all - self.val_len(),
            Split::Val => self.val_len(),
            Split::Test => 10_000,
        }
    }

    /// Size of the validation hold-out drawn from the training files: 5,000 images for every
    /// built-in dataset (500 per class on the 10-class ones).
    pub fn val_len(self) -> usize {
        5_000
    }

    /// The official class names, used when the data directory has no class-name file.
    pub fn default_classes(self) -> Vec<String> {
        let names: &[&str] = match self {
            DatasetName::Mnist => &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetName::FashionMnist => &[
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ],
            DatasetName::Cifar10 => &CIFAR10_CLASSES,
            DatasetName::Cifar100 => &CIFAR100_CLASSES,
        };
        names.iter().map(|s| s.to_string()).collect()
    }
}

pub(crate) const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

pub(crate) const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = DataError;

    /// Accepts `mnist`, `fashion-mnist` / `fashion_mnist` / `fmnist`, `cifar10` / `cifar-10`,
    /// `cifar100` / `cifar-100`, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mnist" => Ok(DatasetName::Mnist),
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" | "fmnist" => {
                Ok(DatasetName::FashionMnist)
            }
            "cifar10" | "cifar-10" | "cifar_10" => Ok(DatasetName::Cifar10),
            "cifar100" | "cifar-100" | "cifar_100" => Ok(DatasetName::Cifar100),
            _ => Err(DataError::UnknownDataset {
                name: s.to_string(),
            }),
        }
    }
}

/// Which part of a dataset to load.
///
/// The official training files are divided once and for all into a validation hold-out
/// ([`DatasetName::val_len`] images, class-balanced, drawn with the fixed seed [`VAL_SEED`])
/// and the rest. [`Split::Train`] is the rest: training, fine-tuning, CASM samples and BN
/// recalibration draw from it. [`Split::Val`] is the hold-out: every step that *selects*
/// something (ratios, learning rates, checkpoints, `(p, r)`, defaults) measures on it.
/// [`Split::Test`] is for final reports only. [`Split::TrainAll`] is every training image
/// (the hold-out included), for reproducing a setting that trained on all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// The training files without the validation hold-out.
    Train,
    /// The validation hold-out of the training files.
    Val,
    /// The test split.
    Test,
    /// Every image of the training files, the validation hold-out included.
    TrainAll,
}

/// The seed that draws the validation hold-out from the training files. Fixed, so that every
/// command and every run agree on which images are held out.
pub const VAL_SEED: u64 = 0x7a1d;

impl Split {
    /// `"train"`, `"val"`, `"test"` or `"train-all"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
            Split::TrainAll => "train-all",
        }
    }

    /// Whether the split's images come from the official training files.
    pub fn from_training_files(self) -> bool {
        !matches!(self, Split::Test)
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = DataError;

    /// Accepts `train`, `val` (also `validation`), `test` (also `t10k`) and `train-all`,
    /// case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "validation" => Ok(Split::Val),
            "test" | "t10k" => Ok(Split::Test),
            "train-all" | "train_all" => Ok(Split::TrainAll),
            _ => Err(DataError::UnknownSplit {
                name: s.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_parse_and_print() {
        for (s, n) in [
            ("mnist", DatasetName::Mnist),
            ("fashion-mnist", DatasetName::FashionMnist),
            ("fashion_mnist", DatasetName::FashionMnist),
            ("fmnist", DatasetName::FashionMnist),
            ("cifar10", DatasetName::Cifar10),
            ("CIFAR-10", DatasetName::Cifar10),
            ("cifar100", DatasetName::Cifar100),
            ("cifar-100", DatasetName::Cifar100),
        ] {
            assert_eq!(s.parse::<DatasetName>().unwrap(), n, "{s}");
        }
        for n in DatasetName::ALL {
            assert_eq!(n.to_string().parse::<DatasetName>().unwrap(), n);
            assert_eq!(n.default_classes().len(), n.n_classes());
        }
        assert!(matches!(
            "imagenet".parse::<DatasetName>(),
            Err(DataError::UnknownDataset { .. })
        ));
        assert_eq!("t10k".parse::<Split>().unwrap(), Split::Test);
        assert_eq!(Split::Train.to_string(), "train");
        assert_eq!("val".parse::<Split>().unwrap(), Split::Val);
        assert_eq!("Train-All".parse::<Split>().unwrap(), Split::TrainAll);
        for s in [Split::Train, Split::Val, Split::Test, Split::TrainAll] {
            assert_eq!(s.to_string().parse::<Split>().unwrap(), s);
            let json = format!("\"{s}\"");
            assert_eq!(serde_json::to_string(&s).unwrap(), json);
        }
        assert!("dev".parse::<Split>().is_err());
    }

    #[test]
    fn empty_dataset_subsets() {
        let ds = Dataset {
            name: "empty".into(),
            images: vec![],
            labels: vec![],
            n: 0,
            c: 1,
            h: 2,
            w: 2,
            classes: vec!["a".into()],
        };
        assert!(ds.is_empty());
        assert_eq!(ds.class_balanced_subset(10, 0).len(), 0);
        assert_eq!(ds.take(3).len(), 0);
    }
}
