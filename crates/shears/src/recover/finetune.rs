//! Fine-tuning recovery with optional knowledge distillation, checkpoints and resume, a time
//! budget, and a time-to-accuracy curve.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shears_data::{Dataset, LoaderConfig, Transform};
use shears_engine::{
    cross_entropy, distillation, BackwardOptions, DistillConfig, Mode, Network, Optimizer, Sgd,
    SgdConfig, SgdState,
};
use shears_ir::{Tensor, Weights};

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
    /// Peak SGD learning rate, cosine-annealed per iteration to 0 over the run (over the
    /// iterations of all epochs, or over the time budget when that ends first).
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
    /// Stop (after the current batch) once this much *training* time has passed (validation
    /// excluded). The cosine schedule then anneals over whichever ends first, the budget or
    /// the epochs: the learning rate at a step is set by `max(iterations done / all
    /// iterations, training time / budget)`. A run with a budget is therefore not
    /// bit-reproducible (where it stops and its schedule depend on the machine's speed).
    pub time_budget: Option<Duration>,
    /// Stop each epoch after this many batches (for short runs and tests); default all.
    pub max_batches: Option<usize>,
    /// Validation images per evaluation (the first ones); default all.
    pub val_limit: Option<usize>,
    /// Also validate every this many batches (points of the time-to-accuracy curve); default
    /// only at the end of each epoch.
    pub eval_every: Option<usize>,
    /// Directory for `finetune.safetensors`, written atomically after every epoch (weights,
    /// momentum buffers, the log); none: no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from the checkpoint in `checkpoint_dir` if there is one: at most one epoch is
    /// lost, and without a time budget the result is bit-identical to an uninterrupted run.
    pub resume: bool,
    /// Stop (as if killed) after this many epochs of this invocation; for tests of resume.
    pub stop_after: Option<usize>,
    /// Progress display.
    #[serde(skip)]
    pub verbosity: Verbosity,
}

impl FinetuneConfig {
    /// `epochs` of SGD at lr 0.01 (momentum 0.9, weight decay 5e-4, batch 128), no
    /// distillation, no augmentation, seed 0, no time budget, no checkpoints.
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
            eval_every: None,
            checkpoint_dir: None,
            resume: false,
            stop_after: None,
            verbosity: Verbosity::Quiet,
        }
    }

    /// Checks every value, naming the one at fault.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |w: String| Err(Error::invalid(w));
        if self.epochs == 0 {
            return bad("fine-tuning epochs must be at least 1".into());
        }
        if self.batch == 0 {
            return bad("fine-tuning batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {} must be positive", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum {} must be in [0, 1)", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay {} must be non-negative",
                self.weight_decay
            ));
        }
        if let Some(d) = &self.distill {
            if !(d.temperature.is_finite() && d.temperature > 0.0) {
                return bad(format!(
                    "distillation temperature {} must be positive",
                    d.temperature
                ));
            }
            if !(0.0..=1.0).contains(&d.alpha) {
                return bad(format!("distillation weight {} must be in [0, 1]", d.alpha));
            }
        }
        if self.eval_every == Some(0) || self.max_batches == Some(0) {
            return bad("--eval-every and --max-batches must be at least 1".into());
        }
        if self.resume && self.checkpoint_dir.is_none() {
            return bad("resuming needs a checkpoint directory".into());
        }
        Ok(())
    }
}

/// One epoch of [`finetune()`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FinetuneEpoch {
    /// Epoch number, from 0.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Validation top-1 accuracy in percent, when a validation set was given.
    pub val_top1: Option<f64>,
    /// Training seconds (validation excluded) since the start of fine-tuning at the end of
    /// the epoch, summed over resumed invocations.
    pub elapsed: f64,
}

/// One point of the time-to-accuracy curve of [`finetune()`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    /// Batches trained so far.
    pub batches: usize,
    /// Training seconds so far (validation excluded).
    pub seconds: f64,
    /// Validation top-1 in percent.
    pub val_top1: f64,
}

/// The result of [`finetune()`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FinetuneReport {
    /// Per-epoch log (including epochs done before a resume).
    pub epochs: Vec<FinetuneEpoch>,
    /// Validation accuracy over training time: before training (when validating), every
    /// [`FinetuneConfig::eval_every`] batches and at the end of every epoch.
    pub curve: Vec<CurvePoint>,
    /// Training loss of every batch of this invocation, in order.
    pub batch_losses: Vec<f32>,
    /// Whether the time budget stopped the run early.
    pub stopped_by_budget: bool,
    /// Epoch the run resumed after, if it resumed.
    pub resumed_from: Option<usize>,
    /// Training seconds (validation excluded), summed over resumed invocations.
    pub train_seconds: f64,
    /// Wall-clock seconds of this invocation, validation included.
    pub seconds: f64,
}

const CKPT_FILE: &str = "finetune.safetensors";
const CKPT_META: &str = "shears.finetune";

#[derive(Serialize, Deserialize)]
struct CkptMeta {
    version: u32,
    epochs_done: usize,
    /// The configuration that must match on resume, as JSON (epochs, budget, evaluation and
    /// checkpoint settings excluded).
    config: String,
    epochs: Vec<FinetuneEpoch>,
    curve: Vec<CurvePoint>,
    train_seconds: f64,
    batches: usize,
}

/// The part of the configuration a resumed run must share.
fn resume_key(cfg: &FinetuneConfig) -> String {
    let key = FinetuneConfig {
        epochs: 0,
        time_budget: None,
        val_limit: None,
        eval_every: None,
        checkpoint_dir: None,
        resume: false,
        stop_after: None,
        ..cfg.clone()
    };
    serde_json::to_string(&key).expect("plain data")
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn write_checkpoint(dir: &Path, net: &Network, opt: &Sgd, meta: &CkptMeta) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::File {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut all = Weights::new();
    for (k, v) in net.weights() {
        all.insert(format!("model.{k}"), v);
    }
    for (k, v) in &opt.state().momentum_buffers {
        all.insert(
            format!("optim.momentum.{k}"),
            Tensor::new(vec![v.len()], v.clone())?,
        );
    }
    let mut m = BTreeMap::new();
    m.insert(
        CKPT_META.to_string(),
        serde_json::to_string(meta).expect("plain data"),
    );
    shears_io::write_safetensors(&dir.join(CKPT_FILE), &all, &m)?;
    Ok(())
}

/// Loads the checkpoint in `dir` into `net` and `opt`, if there is one.
fn read_checkpoint(
    dir: &Path,
    net: &mut Network,
    opt: &mut Sgd,
    cfg: &FinetuneConfig,
) -> Result<Option<CkptMeta>, Error> {
    let path = dir.join(CKPT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let st = shears_io::read_safetensors(&path)?;
    let meta: CkptMeta = st
        .metadata
        .get(CKPT_META)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| Error::Checkpoint {
            path: path.clone(),
            msg: format!("no readable {CKPT_META} metadata (not a fine-tuning checkpoint?)"),
        })?;
    if meta.config != resume_key(cfg) {
        return Err(Error::Checkpoint {
            path,
            msg: "it was written by a fine-tuning run with a different configuration (only \
                  epochs, time budget, validation and checkpoint settings may change on resume)"
                .into(),
        });
    }
    let mut w = Weights::new();
    let mut st_opt = SgdState::default();
    for (k, v) in st.tensors.iter() {
        if let Some(name) = k.strip_prefix("model.") {
            w.insert(name.to_string(), v.clone());
        } else if let Some(name) = k.strip_prefix("optim.momentum.") {
            st_opt
                .momentum_buffers
                .insert(name.to_string(), v.data().to_vec());
        }
    }
    net.set_weights(&w).map_err(|e| Error::Checkpoint {
        path: path.clone(),
        msg: format!("weights do not fit this model: {e}"),
    })?;
    opt.load_state(st_opt);
    Ok(Some(meta))
}

/// Fine-tunes `student` on `train_ds` (BatchNorm in train mode), with SGD and a cosine
/// schedule, validating on `val_ds` before training, every [`FinetuneConfig::eval_every`]
/// batches and after every epoch.
///
/// With a `teacher` and [`FinetuneConfig::distill`], the loss is Hinton distillation against
/// the teacher's logits (teacher run in eval mode on the same batch); otherwise cross-entropy
/// on the labels. The data order and augmentation of epoch `e` come from `(seed, e)` and the
/// student's random stream is re-seeded from them every epoch, so a run resumed from its
/// checkpoint reaches the same weights as an uninterrupted one (without a time budget).
pub fn finetune(
    student: &mut Network,
    mut teacher: Option<&mut Network>,
    train_ds: &Dataset,
    val_ds: Option<&Dataset>,
    pre: &Preprocess,
    cfg: &FinetuneConfig,
) -> Result<FinetuneReport, Error> {
    let start = Instant::now();
    cfg.validate()?;
    if train_ds.len() < cfg.batch {
        return Err(Error::invalid(format!(
            "fine-tuning needs a positive batch size of at most {} images (the training set \
             size); got {}",
            train_ds.len(),
            cfg.batch
        )));
    }
    let mut opt = Sgd::new(
        SgdConfig::new(cfg.lr)
            .with_momentum(cfg.momentum)
            .with_weight_decay(cfg.weight_decay),
    )?;
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
    let mut report = FinetuneReport {
        epochs: Vec::new(),
        curve: Vec::new(),
        batch_losses: Vec::new(),
        stopped_by_budget: false,
        resumed_from: None,
        train_seconds: 0.0,
        seconds: 0.0,
    };
    let mut start_epoch = 0;
    // Training time before this invocation and batches trained in all.
    let mut prior = 0.0f64;
    let mut it = 0usize;
    if let (Some(dir), true) = (&cfg.checkpoint_dir, cfg.resume) {
        if let Some(meta) = read_checkpoint(dir, student, &mut opt, cfg)? {
            start_epoch = meta.epochs_done;
            report.epochs = meta.epochs;
            report.curve = meta.curve;
            prior = meta.train_seconds;
            it = meta.batches;
            report.resumed_from = Some(start_epoch);
        }
    }
    if report.curve.is_empty() && start_epoch == 0 {
        if let Some(a) = validate(student, val_ds, pre, cfg)? {
            report.curve.push(CurvePoint {
                batches: 0,
                seconds: 0.0,
                val_top1: a,
            });
        }
    }
    let remaining = (per_epoch * cfg.epochs.saturating_sub(start_epoch)) as u64;
    let bar = Progress::new(remaining.max(1), "finetune", cfg.verbosity);
    // Training time of this invocation, validation excluded.
    let mut trained = Duration::ZERO;
    let budget_left = |trained: Duration| {
        cfg.time_budget
            .map(|b| b.as_secs_f64() - prior - trained.as_secs_f64())
    };
    'epochs: for (ran, epoch) in (start_epoch..cfg.epochs).enumerate() {
        if cfg.stop_after.is_some_and(|s| ran >= s) {
            break;
        }
        if budget_left(trained).is_some_and(|b| b <= 0.0) {
            report.stopped_by_budget = true;
            break;
        }
        student.set_seed(mix(cfg.seed, epoch as u64));
        let lc = LoaderConfig::new(cfg.batch)
            .with_shuffle(cfg.seed)
            .with_epoch(epoch as u64)
            .with_drop_last();
        let loader = loader_for(student, train_ds, pre, lc, aug.clone())?;
        let (mut sum, mut count) = (0.0f64, 0usize);
        let mut stop = false;
        let mut t_batch = Instant::now();
        for batch in loader.take(per_epoch) {
            let x = batch_tensor(&batch);
            let labels: Vec<usize> = batch.labels.iter().map(|&l| l as usize).collect();
            let mut frac = it as f64 / total as f64;
            if let Some(b) = cfg.time_budget {
                let t = (prior + trained.as_secs_f64()) / b.as_secs_f64().max(1e-9);
                frac = frac.max(t.min(1.0));
            }
            let lr = 0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * frac).cos() as f32);
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
            if !loss.is_finite() {
                student.discard_tape();
                return Err(Error::invalid(format!(
                    "fine-tuning diverged at epoch {} batch {count}: loss is {loss} (lower the \
                     learning rate {})",
                    epoch + 1,
                    cfg.lr
                )));
            }
            let mut grads = student.backward(&grad, &BackwardOptions::new())?;
            student.step(&mut opt, &mut grads)?;
            trained += t_batch.elapsed();
            report.batch_losses.push(loss);
            sum += loss as f64;
            count += 1;
            bar.inc(1);
            bar.set_message(format!("loss {:.4} lr {lr:.4}", sum / count as f64));
            stop = budget_left(trained).is_some_and(|b| b <= 0.0);
            let last = stop || count == per_epoch;
            if !last && cfg.eval_every.is_some_and(|e| it.is_multiple_of(e)) {
                if let Some(a) = validate(student, val_ds, pre, cfg)? {
                    let secs = prior + trained.as_secs_f64();
                    report.curve.push(CurvePoint {
                        batches: it,
                        seconds: secs,
                        val_top1: a,
                    });
                    bar.println(&format!("  {it} batches, {secs:.0} s: val top-1 {a:.2}%"));
                }
            }
            if stop {
                break;
            }
            t_batch = Instant::now();
        }
        let secs = prior + trained.as_secs_f64();
        let val = validate(student, val_ds, pre, cfg)?;
        if let Some(a) = val {
            report.curve.push(CurvePoint {
                batches: it,
                seconds: secs,
                val_top1: a,
            });
        }
        report.epochs.push(FinetuneEpoch {
            epoch,
            train_loss: sum / count.max(1) as f64,
            val_top1: val,
            elapsed: secs,
        });
        bar.println(&format!(
            "  epoch {}/{}: loss {:.4}{}, {secs:.0} s",
            epoch + 1,
            cfg.epochs,
            sum / count.max(1) as f64,
            val.map(|a| format!(", val top-1 {a:.2}%"))
                .unwrap_or_default()
        ));
        if stop {
            // A partial epoch is not checkpointed: a resume restarts it.
            report.stopped_by_budget = true;
            break 'epochs;
        }
        if let Some(dir) = &cfg.checkpoint_dir {
            let meta = CkptMeta {
                version: 1,
                epochs_done: epoch + 1,
                config: resume_key(cfg),
                epochs: report.epochs.clone(),
                curve: report.curve.clone(),
                train_seconds: secs,
                batches: it,
            };
            write_checkpoint(dir, student, &opt, &meta)?;
        }
    }
    bar.finish("");
    report.train_seconds = prior + trained.as_secs_f64();
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
