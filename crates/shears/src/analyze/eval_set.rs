//! The fixed evaluation sets sweeps and SBPF probe on, and the hashes that identify them
//! (and a model's weights) in cache and shard files.

use shears_data::{Dataset, Loader, LoaderConfig, Split};
use shears_ir::{Tensor, Weights};

use crate::eval::{batch_tensor, input_transforms, normalize_for};
use crate::zoo::Preprocess;
use crate::Error;

/// A fixed evaluation set: preprocessed images as one NCHW tensor, and their labels.
#[derive(Clone, Debug)]
pub struct EvalSet {
    /// `[N, C, H, W]`, normalised and adapted to the model input.
    pub images: Tensor,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Number of classes of the dataset.
    pub n_classes: usize,
    /// Where the images come from (for reports), e.g. `cifar10 test, 1000 class-balanced`.
    pub description: String,
    /// The dataset split the images come from, when they come from a built-in dataset's split
    /// (reports carry it in their `split` field).
    pub split: Option<Split>,
}

impl EvalSet {
    /// All images of `ds`, preprocessed for a model with input shape `input` (`[C, H, W]`).
    pub fn from_dataset(ds: &Dataset, pre: &Preprocess, input: &[usize]) -> Result<Self, Error> {
        if ds.is_empty() {
            return Err(Error::invalid(format!("dataset {} has no images", ds.name)));
        }
        let transforms = input_transforms(ds, input)?;
        let cfg = LoaderConfig::new(ds.len())
            .with_normalize(normalize_for(pre, input[0]))
            .with_transforms(transforms);
        let mut loader = Loader::new(ds, cfg)?;
        let batch = loader
            .next()
            .ok_or_else(|| Error::invalid(format!("dataset {} gave no batch", ds.name)))?;
        Ok(EvalSet {
            images: batch_tensor(&batch),
            labels: batch.labels.clone(),
            n_classes: ds.n_classes(),
            description: format!("{}, {} images", ds.name, ds.len()),
            split: None,
        })
    }

    /// A seeded class-balanced subset of `n` images of `ds` (all of `ds` if smaller).
    pub fn balanced(
        ds: &Dataset,
        n: usize,
        seed: u64,
        pre: &Preprocess,
        input: &[usize],
    ) -> Result<Self, Error> {
        if n == 0 {
            return Err(Error::invalid(
                "the evaluation set needs at least one image",
            ));
        }
        let sub = if n < ds.len() {
            ds.class_balanced_subset(n, seed)
        } else {
            ds.clone()
        };
        let mut s = Self::from_dataset(&sub, pre, input)?;
        s.description = format!(
            "{}, {} class-balanced images (seed {seed})",
            ds.name,
            sub.len()
        );
        Ok(s)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// FNV-1a hash of the images' bits and the labels (identifies the set in cache files).
    pub fn hash(&self) -> String {
        let mut h = Fnv::new();
        for v in self.images.data() {
            h.add(&v.to_bits().to_le_bytes());
        }
        h.add(&self.labels);
        h.hex()
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn hex(&self) -> String {
        format!("fnv1a64:{:016x}", self.0)
    }
}

/// FNV-1a hash of a set of weights (names, shapes and bits, in name order).
pub fn weights_hash(w: &Weights) -> String {
    let mut names: Vec<&String> = w.names().collect();
    names.sort();
    let mut h = Fnv::new();
    for n in names {
        let t = w.get(n).expect("name listed by the weights");
        h.add(n.as_bytes());
        for &d in t.shape() {
            h.add(&(d as u64).to_le_bytes());
        }
        for v in t.data() {
            h.add(&v.to_bits().to_le_bytes());
        }
    }
    h.hex()
}
