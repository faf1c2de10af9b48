//! Fine-tuning recovery with optional knowledge distillation.

use std::time::{Duration, Instant};

use serde::Serialize;
use shears_data::{Dataset, LoaderConfig, Transform};
use shears_engine::{
    cross_entropy, distillation, BackwardOptions, DistillConfig, Mode, Network, Optimizer, Sgd,
    SgdConfig,
};

use super::loader_for;
use crate::eval::{batch_tensor, evaluate, EvalConfig};
use crate::progress::{Progress, Verbosity};
use crate::zoo::Preprocess;
use crate::Error;

/// Fine-tuning settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FinetuneConfig {
    /// Epochs over the training set.
    pub epochs: usize,
    /// Peak SGD learning rate, cosine-annealed per iteration to 0 over the run.
    pub lr: f32,
    /// Images per batch (a final smaller batch is dropped).
    pub batch: usize,
    /// SGD momentum; default 0.9.
    pub momentum: f32,
    /// L2 weight decay; default 5e-4.
    pub weight_decay: f32,
    /// Distillation from the teacher (used only when a teacher is given); `None` trains on the
    /// labels alone.
    pub distill: Option<DistillConfig>,
    /// Pad-crop augmentation by this many pixels; default none.
    pub augment_pad: Option<usize>,
    /// Horizontal flips; default off.
    pub augment_flip: bool,
    /// Seed of shuffling, augmentation and dropout.
    pub seed: u64,
    /// Stop (after the current batch) once this much time has passed.
    pub time_budget: Option<Duration>,
    /// Stop each epoch after this many batches (for short runs and tests); default all.
    pub max_batches: Option<usize>,
    /// Validation images per epoch (the first ones); default all.
    pub val_limit: Option<usize>,
    /// Progress display.
    #[serde(skip)]
    pub verbosity: Verbosity,
}

impl FinetuneConfig {
    /// `epochs` of SGD at lr 0.01 (momentum 0.9, weight decay 5e-4, batch 128), no
    /// distillation, no augmentation, seed 0, no time budget.
    pub fn new(epochs: usize) -> Self {
        FinetuneConfig {
            epochs,
            lr: 0.01,
            batch: 128,
            momentum: 0.9,
            weight_decay: 5e-4,
            distill: None,
            augment_pad: None,
            augment_flip: false,
            seed: 0,
            time_budget: None,
            max_batches: None,
            val_limit: None,
            verbosity: Verbosity::Quiet,
        }
    }
}

/// One epoch of [`finetune()`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FinetuneEpoch {
    /// Epoch number, from 0.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Validation top-1 accuracy in percent, when a validation set was given.
    pub val_top1: Option<f64>,
    /// Seconds since the start of fine-tuning at the end of the epoch.
    pub elapsed: f64,
}

/// The result of [`finetune()`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FinetuneReport {
    /// Per-epoch log.
    pub epochs: Vec<FinetuneEpoch>,
    /// Training loss of every batch, in order.
    pub batch_losses: Vec<f32>,
    /// Whether the time budget stopped the run early.
    pub stopped_by_budget: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Fine-tunes `student` on `train_ds` (BatchNorm in train mode), with SGD and a cosine
/// schedule, validating on `val_ds` after every epoch.
///
/// With a `teacher` and [`FinetuneConfig::distill`], the loss is Hinton distillation against
/// the teacher's logits (teacher run in eval mode on the same batch); otherwise cross-entropy
/// on the labels.
pub fn finetune(
    student: &mut Network,
    mut teacher: Option<&mut Network>,
    train_ds: &Dataset,
    val_ds: Option<&Dataset>,
    pre: &Preprocess,
    cfg: &FinetuneConfig,
) -> Result<FinetuneReport, Error> {
    let start = Instant::now();
    if cfg.batch == 0 || train_ds.len() < cfg.batch {
        return Err(Error::invalid(format!(
            "fine-tuning needs a positive batch size of at most {} images",
            train_ds.len()
        )));
    }
    let mut opt = Sgd::new(
        SgdConfig::new(cfg.lr)
            .with_momentum(cfg.momentum)
            .with_weight_decay(cfg.weight_decay),
    )?;
    student.set_seed(cfg.seed);
    let mut aug = Vec::new();
    if let Some(pad) = cfg.augment_pad {
        aug.push(Transform::PadCrop { pad });
    }
    if cfg.augment_flip {
        aug.push(Transform::HFlip);
    }
    let per_epoch = {
        let n = train_ds.len() / cfg.batch;
        cfg.max_batches.map_or(n, |m| m.min(n))
    };
    let total = (per_epoch * cfg.epochs).max(1);
    let bar = Progress::new(total as u64, "finetune", cfg.verbosity);
    let mut report = FinetuneReport {
        epochs: Vec::new(),
        batch_losses: Vec::new(),
        stopped_by_budget: false,
        seconds: 0.0,
    };
    let mut it = 0usize;
    'epochs: for epoch in 0..cfg.epochs {
        let lc = LoaderConfig::new(cfg.batch)
            .with_shuffle(cfg.seed)
            .with_epoch(epoch as u64)
            .with_drop_last();
        let loader = loader_for(student, train_ds, pre, lc, aug.clone())?;
        let (mut sum, mut count) = (0.0f64, 0usize);
        for batch in loader.take(per_epoch) {
            let x = batch_tensor(&batch);
            let labels: Vec<usize> = batch.labels.iter().map(|&l| l as usize).collect();
            let lr = 0.5 * cfg.lr * (1.0 + (std::f32::consts::PI * it as f32 / total as f32).cos());
            opt.set_lr(lr);
            it += 1;
            let tlogits = match (teacher.as_deref_mut(), &cfg.distill) {
                (Some(t), Some(_)) => Some(t.forward(&x, Mode::Eval)?),
                _ => None,
            };
            let out = student.forward_train(&x)?;
            let (loss, grad) = match (&tlogits, &cfg.distill) {
                (Some(t), Some(d)) => distillation(&out, t, Some(&labels), d)?,
                _ => cross_entropy(&out, &labels, 0.0)?,
            };
            let mut grads = student.backward(&grad, &BackwardOptions::new())?;
            student.step(&mut opt, &mut grads)?;
            report.batch_losses.push(loss);
            sum += loss as f64;
            count += 1;
            bar.inc(1);
            bar.set_message(format!("loss {loss:.4}"));
            if cfg.time_budget.is_some_and(|b| start.elapsed() >= b) {
                report.stopped_by_budget = true;
                report.epochs.push(FinetuneEpoch {
                    epoch,
                    train_loss: sum / count.max(1) as f64,
                    val_top1: validate(student, val_ds, pre, cfg)?,
                    elapsed: start.elapsed().as_secs_f64(),
                });
                break 'epochs;
            }
        }
        report.epochs.push(FinetuneEpoch {
            epoch,
            train_loss: sum / count.max(1) as f64,
            val_top1: validate(student, val_ds, pre, cfg)?,
            elapsed: start.elapsed().as_secs_f64(),
        });
    }
    bar.finish("");
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn validate(
    net: &mut Network,
    val: Option<&Dataset>,
    pre: &Preprocess,
    cfg: &FinetuneConfig,
) -> Result<Option<f64>, Error> {
    let Some(val) = val else { return Ok(None) };
    let ec = EvalConfig {
        limit: cfg.val_limit,
        verbosity: Verbosity::Quiet,
        ..EvalConfig::default()
    };
    Ok(Some(evaluate(net, val, pre, &ec)?.top1))
}
