//! Seeded batching of a [`Dataset`] into normalized `f32` NCHW batches.

use std::ops::Range;

use crate::dataset::Dataset;
use crate::error::DataError;
use crate::rng::{derive_rng, example_rng, shuffle, Domain};
use crate::transform::{apply_pipeline, pipeline_shape, Normalize, Shape, Transform};

/// The largest batch a [`Loader`] builds, in bytes of f32 pixels: 16 GiB. A model whose input
/// shape (from its file) makes the resized batch larger is refused by [`Loader::new`] instead of
/// aborting on the allocation.
pub const MAX_BATCH_BYTES: u64 = 16 << 30;

/// How a [`Loader`] batches, shuffles, augments and normalizes.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Examples per batch (> 0). Default 128.
    pub batch_size: usize,
    /// Visit examples in a seeded random order instead of dataset order. Default `false`.
    pub shuffle: bool,
    /// Seed of the order and of the random transforms. Default 0.
    pub seed: u64,
    /// Drop a final batch smaller than `batch_size`. Default `false`.
    pub drop_last: bool,
    /// Conversion of the transformed pixels to model input. Default [`Normalize::unit`].
    pub normalize: Normalize,
    /// Applied in order to each raw image before `normalize`; the random ones
    /// ([`Transform::PadCrop`], [`Transform::HFlip`]) draw from a generator derived from
    /// `(seed, epoch, dataset index)`. Default empty.
    pub transforms: Vec<Transform>,
    /// Epoch number, mixed into the seed so each epoch shuffles and augments differently but
    /// deterministically. Default 0.
    pub epoch: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 128,
            shuffle: false,
            seed: 0,
            drop_last: false,
            normalize: Normalize::unit(),
            transforms: Vec::new(),
            epoch: 0,
        }
    }
}

impl LoaderConfig {
    /// The defaults with the given batch size.
    pub fn new(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            ..Default::default()
        }
    }

    /// Sets `shuffle` to true with the given seed.
    pub fn with_shuffle(mut self, seed: u64) -> Self {
        self.shuffle = true;
        self.seed = seed;
        self
    }

    /// Sets the seed (order and augmentation).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the epoch.
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// Sets `drop_last` to true.
    pub fn with_drop_last(mut self) -> Self {
        self.drop_last = true;
        self
    }

    /// Sets the normalization.
    pub fn with_normalize(mut self, normalize: Normalize) -> Self {
        self.normalize = normalize;
        self
    }

    /// Sets the transforms.
    pub fn with_transforms(mut self, transforms: Vec<Transform>) -> Self {
        self.transforms = transforms;
        self
    }
}

/// A batch of model input.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Normalized pixels, `n * c * h * w` values in NCHW order.
    pub images: Vec<f32>,
    /// Class index of each example.
    pub labels: Vec<u8>,
    /// Number of examples in this batch.
    pub n: usize,
    /// Channels (after transforms).
    pub c: usize,
    /// Height in pixels (after transforms).
    pub h: usize,
    /// Width in pixels (after transforms).
    pub w: usize,
    /// Index in the dataset of each example.
    pub idxs: Vec<usize>,
}

impl Batch {
    /// The `f32` values of example `i` of the batch (`c * h * w` values, CHW).
    ///
    /// # Panics
    /// If `i >= self.n`.
    pub fn image(&self, i: usize) -> &[f32] {
        let sz = self.c * self.h * self.w;
        &self.images[i * sz..(i + 1) * sz]
    }
}

/// Iterates over a [`Dataset`] in seeded batches of normalized `f32` NCHW input.
///
/// Batches are a pure function of the dataset, the config and the batch position: the same
/// config gives bit-identical batches on every platform.
///
/// ```
/// use shears_data::{Dataset, Loader, LoaderConfig, Normalize, Transform};
/// let ds = Dataset {
///     name: "toy".into(), images: vec![255; 5 * 4], labels: vec![0, 1, 0, 1, 0],
///     n: 5, c: 1, h: 2, w: 2, classes: vec!["a".into(), "b".into()],
/// };
/// let cfg = LoaderConfig::new(2).with_shuffle(42).with_normalize(Normalize::raw()).with_transforms(vec![
///     Transform::GreyToRgb,
///     Transform::Pad { to_h: 4, to_w: 4 },
/// ]);
/// let loader = Loader::new(&ds, cfg)?;
/// assert_eq!(loader.n_batches(), 3);
/// let batches: Vec<_> = loader.collect();
/// assert_eq!((batches[0].n, batches[0].c, batches[0].h, batches[0].w), (2, 3, 4, 4));
/// assert_eq!(batches[2].n, 1);
/// assert_eq!(batches[0].images.iter().filter(|v| **v == 255.0).count(), 2 * 3 * 4);
/// # Ok::<(), shears_data::DataError>(())
/// ```
#[derive(Debug)]
pub struct Loader<'a> {
    ds: &'a Dataset,
    cfg: LoaderConfig,
    order: Vec<usize>,
    pos: usize,
    out_shape: Shape,
}

/// Checks that the dataset's buffers match its declared shape.
fn check_dataset(ds: &Dataset) -> Result<(), DataError> {
    let expect =
        ds.n.checked_mul(ds.c)
            .and_then(|v| v.checked_mul(ds.h))
            .and_then(|v| v.checked_mul(ds.w));
    let empty_image = ds.c == 0 || ds.h == 0 || ds.w == 0;
    if empty_image || expect != Some(ds.images.len()) || ds.labels.len() != ds.n {
        return Err(DataError::invalid(format!(
            "dataset {}: {} pixel bytes and {} labels for shape {}x{}x{}x{}",
            ds.name,
            ds.images.len(),
            ds.labels.len(),
            ds.n,
            ds.c,
            ds.h,
            ds.w
        )));
    }
    Ok(())
}

impl<'a> Loader<'a> {
    /// Validates the config against the dataset (batch size, transform shapes, normalization
    /// channels, buffer sizes) and fixes the epoch's order.
    ///
    /// # Errors
    /// [`DataError::Invalid`] for a batch size of 0, transforms that do not fit the images, or
    /// a batch over [`MAX_BATCH_BYTES`] (a huge model input shape), refused before any batch is
    /// allocated.
    pub fn new(ds: &'a Dataset, cfg: LoaderConfig) -> Result<Self, DataError> {
        check_dataset(ds)?;
        if cfg.batch_size == 0 {
            return Err(DataError::invalid("loader batch_size 0"));
        }
        let out_shape = pipeline_shape((ds.c, ds.h, ds.w), &cfg.transforms)?;
        cfg.normalize.validate(out_shape.0)?;
        let (c, h, w) = out_shape;
        let rows = cfg.batch_size.min(ds.n).max(1) as u128;
        let bytes = rows * c as u128 * h as u128 * w as u128 * 4;
        if bytes > u128::from(MAX_BATCH_BYTES) {
            return Err(DataError::invalid(format!(
                "a batch of {rows} images of shape [{c}, {h}, {w}] needs {bytes} bytes of f32, \
                 over the limit of {MAX_BATCH_BYTES} bytes (check the model's input shape and \
                 the batch size)"
            )));
        }
        let mut order: Vec<usize> = (0..ds.n).collect();
        if cfg.shuffle {
            let mut rng = derive_rng(cfg.seed, cfg.epoch, Domain::Shuffle);
            shuffle(&mut order, &mut rng);
        }
        if cfg.drop_last {
            order.truncate(ds.n / cfg.batch_size * cfg.batch_size);
        }
        Ok(Loader {
            ds,
            cfg,
            order,
            pos: 0,
            out_shape,
        })
    }

    /// Number of batches in the epoch (counting a final partial one unless `drop_last`).
    pub fn n_batches(&self) -> usize {
        self.order.len().div_ceil(self.cfg.batch_size)
    }

    /// The dataset indices of the epoch, in visiting order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The `(c, h, w)` shape of each example in the batches.
    pub fn output_shape(&self) -> (usize, usize, usize) {
        self.out_shape
    }
}

impl Iterator for Loader<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.cfg.batch_size).min(self.order.len());
        let idxs = self.order[self.pos..end].to_vec();
        self.pos = end;
        Some(make_batch(
            self.ds,
            idxs,
            &self.cfg.normalize,
            &self.cfg.transforms,
            self.out_shape,
            Some((self.cfg.seed, self.cfg.epoch)),
        ))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.pos).div_ceil(self.cfg.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Loader<'_> {}

/// Builds one batch; `seeding` is `(seed, epoch)` when random transforms may run.
fn make_batch(
    ds: &Dataset,
    idxs: Vec<usize>,
    normalize: &Normalize,
    transforms: &[Transform],
    out_shape: Shape,
    seeding: Option<(u64, u64)>,
) -> Batch {
    let (c, h, w) = out_shape;
    let plane = h * w;
    let mut images = Vec::with_capacity(idxs.len() * c * plane);
    let mut labels = Vec::with_capacity(idxs.len());
    let mut img = Vec::new();
    let mut tmp = Vec::new();
    for &i in &idxs {
        img.clear();
        img.extend(ds.image_u8(i).iter().map(|&p| p as f32));
        let mut rng = seeding.map(|(seed, epoch)| example_rng(seed, epoch, i));
        let shape = apply_pipeline(
            &mut img,
            &mut tmp,
            (ds.c, ds.h, ds.w),
            transforms,
            rng.as_mut(),
        );
        debug_assert_eq!(shape, out_shape);
        for (ch, chunk) in img.chunks_exact(plane).enumerate() {
            images.extend(chunk.iter().map(|&p| normalize.apply(p, ch)));
        }
        labels.push(ds.labels[i]);
    }
    Batch {
        images,
        labels,
        n: idxs.len(),
        c,
        h,
        w,
        idxs,
    }
}

/// The examples `idxs` of `ds` as one normalized `f32` NCHW batch, in order.
///
/// Only deterministic transforms ([`Transform::Pad`], [`Transform::GreyToRgb`],
/// [`Transform::Resize`]) are allowed; a random one is an error.
///
/// ```
/// use shears_data::{to_f32, Dataset, Normalize, Transform};
/// let ds = Dataset {
///     name: "toy".into(), images: vec![0, 51, 102, 255], labels: vec![3, 1],
///     n: 2, c: 1, h: 1, w: 2, classes: (0..4).map(|i| i.to_string()).collect(),
/// };
/// let b = to_f32(&ds, 1..2, &Normalize::raw(), &[Transform::GreyToRgb])?;
/// assert_eq!((b.n, b.c, b.h, b.w), (1, 3, 1, 2));
/// assert_eq!(b.images, vec![102.0, 255.0, 102.0, 255.0, 102.0, 255.0]);
/// assert_eq!((b.labels, b.idxs), (vec![1], vec![1]));
/// # Ok::<(), shears_data::DataError>(())
/// ```
pub fn to_f32(
    ds: &Dataset,
    idxs: Range<usize>,
    normalize: &Normalize,
    transforms: &[Transform],
) -> Result<Batch, DataError> {
    check_dataset(ds)?;
    if idxs.start > idxs.end || idxs.end > ds.n {
        return Err(DataError::invalid(format!(
            "range {}..{} for dataset {} of {} examples",
            idxs.start, idxs.end, ds.name, ds.n
        )));
    }
    if let Some(t) = transforms.iter().find(|t| t.is_random()) {
        return Err(DataError::invalid(format!(
            "to_f32 takes deterministic transforms only, got {t:?}"
        )));
    }
    let out_shape = pipeline_shape((ds.c, ds.h, ds.w), transforms)?;
    normalize.validate(out_shape.0)?;
    Ok(make_batch(
        ds,
        idxs.collect(),
        normalize,
        transforms,
        out_shape,
        None,
    ))
}
