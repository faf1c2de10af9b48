//! Accuracy recovery after pruning.
//!
//! * [`bn_recalibrate`] / [`bn_recalibrate_with`] re-estimate every BatchNorm's running
//!   statistics from N samples (exact mean and unbiased variance over all of them), alone or as
//!   the last step of any recovery. Recalibrate with the augmentation the model was trained
//!   with ([`BnRecalConfig::augment_pad`]), or its statistics drift to clean images.
//! * [`casm()`] is CASM (methods §4.3): layer by layer from input to output, a small model made
//!   of a pruned layer, the ops after it and the next conv or linear layer is trained with Adam
//!   on MSE to reproduce the original network's next-layer output from what the
//!   already-recovered pruned prefix produces. [`CasmVariant::LeastSquares`] instead refits the
//!   next layer's weights in closed form.
//! * [`finetune()`] is the trainer ([`crate::train::train_with`]) with knowledge distillation
//!   from the original network and a time budget; [`crate::train::TrainConfig::finetune`]
//!   gives its defaults.

pub(crate) mod bn;
mod casm;
mod finetune;

pub use bn::{bn_recalibrate, bn_recalibrate_with, BnRecalConfig, BnRecalMethod, BnRecalReport};
pub use casm::{
    casm, channel_maps, channel_maps_with, kept_channels, CasmConfig, CasmLayer, CasmReport,
    CasmVariant, ResidualTarget, META_CHANNELS,
};
pub use finetune::finetune;

use shears_data::{Dataset, Loader, LoaderConfig, Transform};
use shears_engine::Network;
use shears_ir::Tensor;

use crate::eval::{batch_tensor, input_transforms, normalize_for};
use crate::zoo::Preprocess;
use crate::Error;

/// The first `n` images of a class-balanced, seeded subset of `ds` (all of `ds` when `n` is at
/// least its size), as model-input batches of at most `batch` images, with their labels.
pub(crate) fn sample_batches(
    net: &Network,
    ds: &Dataset,
    pre: &Preprocess,
    n: usize,
    batch: usize,
    seed: u64,
) -> Result<Vec<(Tensor, Vec<usize>)>, Error> {
    if batch == 0 {
        return Err(Error::invalid("batch size must be at least 1"));
    }
    if n == 0 || ds.is_empty() {
        return Err(Error::invalid("recovery needs at least one sample"));
    }
    let subset;
    let ds = if n < ds.len() {
        subset = ds.class_balanced_subset(n, seed);
        &subset
    } else {
        ds
    };
    let loader = loader_for(net, ds, pre, LoaderConfig::new(batch), Vec::new())?;
    Ok(loader
        .map(|b| {
            let labels = b.labels.iter().map(|&l| l as usize).collect();
            (batch_tensor(&b), labels)
        })
        .collect())
}

/// A loader over `ds` whose images fit `net`'s input and are normalised for `pre`, with
/// `augment` applied after the adapting transforms.
pub(crate) fn loader_for<'d>(
    net: &Network,
    ds: &'d Dataset,
    pre: &Preprocess,
    cfg: LoaderConfig,
    augment: Vec<Transform>,
) -> Result<Loader<'d>, Error> {
    let input_id = net
        .graph()
        .inputs()
        .first()
        .copied()
        .ok_or_else(|| Error::invalid("the graph has no input"))?;
    let shape = net.graph().shape(input_id).to_vec();
    let cfg = cfg
        .with_normalize(normalize_for(pre, shape[0]))
        .with_transforms({
            let mut t = input_transforms(ds, &shape)?;
            t.extend(augment);
            t
        });
    Ok(Loader::new(ds, cfg)?)
}
