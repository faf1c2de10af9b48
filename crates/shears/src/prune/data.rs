//! Data-dependent inputs of pruning, computed with the engine: the accumulated gradients that
//! [`super::Taylor`] scores, and batches of real images for [`super::verify()`].
//!
//! These run the model; the rest of [`super::prune`] (scoring, allocation, surgery) does not.
//! The engine reaches gradients only through its ordinary forward / backward API.

use shears_data::{Dataset, Loader, LoaderConfig};
use shears_engine::{cross_entropy, BackwardOptions, Mode, Network};
use shears_ir::{Tensor, Weights};

use crate::eval::{batch_tensor, input_transforms, normalize_for};
use crate::zoo::Preprocess;
use crate::Error;

/// How [`taylor_grads`] samples data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GradConfig {
    /// Images used (a class-balanced, seeded subset of the dataset). Default 256.
    pub n_images: usize,
    /// Images per forward / backward pass. Default 64.
    pub batch_size: usize,
    /// Seed of the subset. Default 0.
    pub seed: u64,
}

impl Default for GradConfig {
    fn default() -> Self {
        GradConfig {
            n_images: 256,
            batch_size: 64,
            seed: 0,
        }
    }
}

/// The gradients of the cross-entropy loss with respect to every trainable parameter of `net`,
/// summed over the batches of a class-balanced subset of `ds` (`cfg.n_images` images, each
/// batch's loss averaged over its images), keyed like the weights: what
/// [`super::ScoreContext::with_grads`] takes for the Taylor criterion.
///
/// The forward passes run in eval mode (batch norm uses its running statistics, as in the
/// deployed model, and the running statistics are not touched) with a recorded tape; the
/// network's parameters are not changed. Images are preprocessed with `pre` and adapted to the
/// model input like [`crate::eval::evaluate`] does.
///
/// ```no_run
/// use shears::prune::{taylor_grads, GradConfig};
/// # fn demo(net: &mut shears_engine::Network, ds: &shears_data::Dataset, pre: &shears::zoo::Preprocess) {
/// let grads = taylor_grads(net, ds, pre, &GradConfig::default()).unwrap();
/// assert!(grads.contains("conv1.weight"));
/// # }
/// ```
pub fn taylor_grads(
    net: &mut Network,
    ds: &Dataset,
    pre: &Preprocess,
    cfg: &GradConfig,
) -> Result<Weights, Error> {
    if cfg.n_images == 0 || cfg.batch_size == 0 {
        return Err(Error::invalid(format!(
            "taylor gradients need at least one image and a batch of at least one (got {} \
             images, batch {})",
            cfg.n_images, cfg.batch_size
        )));
    }
    if ds.is_empty() {
        return Err(Error::invalid(format!(
            "dataset {} is empty: taylor gradients need images",
            ds.name
        )));
    }
    let n_out: usize = net.graph().shape(net.graph().outputs()[0]).iter().product();
    if n_out < ds.n_classes() {
        return Err(Error::invalid(format!(
            "the model has {n_out} outputs but dataset {} has {} classes",
            ds.name,
            ds.n_classes()
        )));
    }
    let subset = ds.class_balanced_subset(cfg.n_images.min(ds.len()), cfg.seed);
    let input_shape = net.graph().shape(net.graph().inputs()[0]).to_vec();
    let loader_cfg = LoaderConfig::new(cfg.batch_size)
        .with_normalize(normalize_for(pre, input_shape[0]))
        .with_transforms(input_transforms(&subset, &input_shape)?);
    let mut sum = Weights::new();
    for batch in Loader::new(&subset, loader_cfg)? {
        let x = batch_tensor(&batch);
        let logits = net.forward_recorded(&x, Mode::Eval)?;
        let labels: Vec<usize> = batch.labels.iter().map(|&l| usize::from(l)).collect();
        let (_, dlogits) = cross_entropy(&logits, &labels, 0.0)?;
        let grads = net.backward(&dlogits, &BackwardOptions::new())?;
        for (name, g) in grads.params.iter() {
            match sum.get_mut(name) {
                Some(acc) => {
                    for (a, &b) in acc.data_mut().iter_mut().zip(g.data()) {
                        *a += b;
                    }
                }
                None => {
                    sum.insert(name.clone(), g.clone());
                }
            }
        }
    }
    Ok(sum)
}

/// The first `n` images of `ds` (all if fewer), preprocessed with `pre` and adapted to an input
/// of per-sample shape `input` (`[C, H, W]`), as one NCHW batch: real inputs for
/// [`super::verify()`].
pub fn input_batch(
    ds: &Dataset,
    pre: &Preprocess,
    input: &[usize],
    n: usize,
) -> Result<Tensor, Error> {
    let n = n.min(ds.len());
    if n == 0 {
        return Err(Error::invalid(format!(
            "dataset {} has no images to verify on",
            ds.name
        )));
    }
    let subset = ds.take(n);
    let cfg = LoaderConfig::new(n)
        .with_normalize(normalize_for(pre, input[0]))
        .with_transforms(input_transforms(&subset, input)?);
    let batch = Loader::new(&subset, cfg)?
        .next()
        .expect("a non-empty dataset gives one batch");
    Ok(batch_tensor(&batch))
}
