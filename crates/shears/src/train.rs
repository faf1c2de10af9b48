//! The trainer: SGD or Adam, step / cosine schedules with warm-up, pad-crop and flip
//! augmentation, evaluation every epoch (and every N batches for a time-to-accuracy curve),
//! early stopping, a time budget, knowledge distillation from a teacher, and checkpoints
//! written atomically after every epoch that `resume` continues from bit-exactly. Fine-tuning
//! recovery ([`crate::recover::finetune()`]) is this trainer with a teacher and a budget.
//!
//! Determinism: the data order and augmentation of epoch `e` come from `(seed, e)`, and the
//! dropout stream is re-seeded from `(seed, e)` at the start of each epoch, so an interrupted
//! run resumed from its last checkpoint reaches the same weights as an uninterrupted one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shears_data::{Dataset, Loader, LoaderConfig, Transform};
use shears_engine::{
    cross_entropy, distillation, Adam, AdamConfig, AdamParamState, AdamState, BackwardOptions,
    DistillConfig, Mode, Network, Optimizer, Sgd, SgdConfig, SgdState,
};
use shears_ir::{Tensor, Weights};

use crate::eval::{batch_tensor, evaluate, input_transforms, normalize_for, EvalConfig};
use crate::progress::{Progress, Verbosity};
use crate::zoo::Preprocess;
use crate::Error;

/// Which optimizer, with its own settings (learning rate and weight decay live in
/// [`TrainConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerKind {
    /// SGD with momentum.
    Sgd {
        /// Momentum factor (0.9 is usual).
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// Adam.
    Adam {
        /// First-moment decay (0.9).
        beta1: f32,
        /// Second-moment decay (0.999).
        beta2: f32,
    },
}

/// Learning-rate schedule over epochs (after warm-up).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Multiply by `gamma` every `step_size` epochs.
    Step {
        /// Epochs between decays.
        step_size: usize,
        /// Decay factor.
        gamma: f32,
    },
    /// Cosine annealing from the peak to 0 at the end of the run, per iteration.
    Cosine,
}

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Epochs in the whole run.
    pub epochs: usize,
    /// Images per batch (the last, smaller batch of an epoch is dropped).
    pub batch_size: usize,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// Linear warm-up epochs (per iteration, from lr/iters to lr).
    pub warmup_epochs: usize,
    /// Pad-crop by this many pixels and flip horizontally (None: no augmentation).
    pub augment_pad: Option<usize>,
    /// Horizontal flips (with `augment_pad`); off for digits.
    pub augment_flip: bool,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f32,
    /// Stop when validation accuracy has not improved for this many epochs.
    pub early_stop: Option<usize>,
    /// Seed of shuffling, augmentation and dropout.
    pub seed: u64,
    /// Validation batch size.
    pub eval_batch_size: usize,
    /// Distillation from the teacher given to [`train_with`] (Hinton loss against its
    /// eval-mode logits on the same batch); ignored without a teacher.
    #[serde(default)]
    pub distill: Option<DistillConfig>,
    /// Stop (after the current batch) once this many seconds of training have passed
    /// (validation excluded). A cosine schedule then anneals over whichever ends first, the
    /// budget or the epochs: its progress at a step is `max(iterations done / all iterations,
    /// training time / budget)`. A run with a budget is not bit-reproducible (where it stops
    /// depends on the machine's speed).
    #[serde(default)]
    pub time_budget: Option<f64>,
    /// Stop each epoch after this many batches (short runs, tests); default all.
    #[serde(default)]
    pub max_batches: Option<usize>,
    /// Validate on only the first this many validation images; default all.
    #[serde(default)]
    pub val_limit: Option<usize>,
    /// Also validate every this many batches (points of [`TrainReport::curve`]); default
    /// only after every epoch.
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// Validate once before training (the first point of [`TrainReport::curve`]).
    #[serde(default)]
    pub eval_at_start: bool,
}

impl TrainConfig {
    /// SGD (momentum 0.9), lr 0.1, weight decay 5e-4, cosine, batch 128, no augmentation.
    pub fn new(epochs: usize) -> Self {
        TrainConfig {
            epochs,
            batch_size: 128,
            optimizer: OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            lr: 0.1,
            weight_decay: 5e-4,
            schedule: Schedule::Cosine,
            warmup_epochs: 0,
            augment_pad: None,
            augment_flip: false,
            label_smoothing: 0.0,
            early_stop: None,
            seed: 0,
            eval_batch_size: 250,
            distill: None,
            time_budget: None,
            max_batches: None,
            val_limit: None,
            eval_every: None,
            eval_at_start: false,
        }
    }

    /// The recovery defaults of [`crate::recover::finetune()`] for `epochs`: SGD (momentum
    /// 0.9), lr 0.01 cosine-annealed to 0, weight decay 5e-4, batch 128, distillation with
    /// temperature 4 and weight 0.9 (used when a teacher is given), no augmentation, a
    /// validation before training.
    pub fn finetune(epochs: usize) -> Self {
        TrainConfig {
            lr: 0.01,
            distill: Some(DistillConfig::default()),
            eval_at_start: true,
            ..TrainConfig::new(epochs)
        }
    }

    /// Checks every value, naming the one at fault.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |w: String| Err(Error::invalid(w));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate {} must be positive", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay {} must be non-negative",
                self.weight_decay
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label smoothing {} must be in [0, 1)",
                self.label_smoothing
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
        if let Some(t) = self.time_budget {
            if !(t.is_finite() && t > 0.0) {
                return bad(format!("time budget {t} s must be positive"));
            }
        }
        if self.eval_every == Some(0) || self.max_batches == Some(0) || self.val_limit == Some(0) {
            return bad("eval-every, max-batches and val-limit must be at least 1".into());
        }
        if let Schedule::Step { step_size, gamma } = self.schedule {
            if step_size == 0 || !(gamma > 0.0 && gamma.is_finite()) {
                return bad(format!(
                    "step schedule needs step_size >= 1 and gamma > 0 (got {step_size}, {gamma})"
                ));
            }
        }
        match self.optimizer {
            OptimizerKind::Sgd { momentum, .. } if !(0.0..1.0).contains(&momentum) => {
                bad(format!("momentum {momentum} must be in [0, 1)"))
            }
            OptimizerKind::Adam { beta1, beta2 }
                if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) =>
            {
                bad(format!("adam betas ({beta1}, {beta2}) must be in [0, 1)"))
            }
            _ => Ok(()),
        }
    }

    /// Learning rate at iteration `it` of epoch `epoch` with `iters` iterations per epoch,
    /// after `trained` seconds of training (which matters only with a time budget and the
    /// cosine schedule).
    pub fn lr_at_time(&self, epoch: usize, it: usize, iters: usize, trained: f64) -> f32 {
        let lr = self.lr_at(epoch, it, iters);
        match (self.time_budget, self.schedule) {
            (Some(b), Schedule::Cosine) if epoch >= self.warmup_epochs => {
                let t = (trained / b).min(1.0) as f32;
                lr.min(0.5 * self.lr * (1.0 + (std::f32::consts::PI * t).cos()))
            }
            _ => lr,
        }
    }

    /// Learning rate at iteration `it` of epoch `epoch` with `iters` iterations per epoch.
    pub fn lr_at(&self, epoch: usize, it: usize, iters: usize) -> f32 {
        let iters = iters.max(1);
        if epoch < self.warmup_epochs {
            let done = (epoch * iters + it + 1) as f32;
            return self.lr * done / (self.warmup_epochs * iters) as f32;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Step { step_size, gamma } => {
                self.lr * gamma.powi(((epoch - self.warmup_epochs) / step_size) as i32)
            }
            Schedule::Cosine => {
                let total = ((self.epochs - self.warmup_epochs) * iters).max(1) as f32;
                let t = ((epoch - self.warmup_epochs) * iters + it) as f32;
                0.5 * self.lr * (1.0 + (std::f32::consts::PI * t / total).cos())
            }
        }
    }
}

/// What happened in one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// Epoch index (0-based).
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f32,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (percent, on the augmented batches).
    pub train_acc: f64,
    /// Validation loss, when validating.
    pub val_loss: Option<f64>,
    /// Validation top-1 (percent), when validating.
    pub val_acc: Option<f64>,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
    /// Training images per second.
    pub images_per_s: f64,
    /// Training seconds (validation excluded) from the start of the run to the end of the
    /// epoch, summed over resumed invocations.
    #[serde(default)]
    pub elapsed: f64,
}

/// One point of the time-to-accuracy curve of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    /// Batches trained so far.
    pub batches: usize,
    /// Training seconds so far (validation excluded), summed over resumed invocations.
    pub seconds: f64,
    /// Validation top-1 in percent.
    pub val_top1: f64,
}

/// The result of [`train`].
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// Every epoch of the run, including those done before a resume.
    pub epochs: Vec<EpochLog>,
    /// Epoch the run resumed after, if it resumed.
    pub resumed_from: Option<usize>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Whether the time budget ended the run.
    pub stopped_by_budget: bool,
    /// Best validation accuracy seen.
    pub best_val_acc: Option<f64>,
    /// Validation accuracy over training time: before training and every
    /// [`TrainConfig::eval_every`] batches (when set), and after every epoch.
    pub curve: Vec<CurvePoint>,
    /// Training loss of every batch of this invocation, in order.
    pub batch_losses: Vec<f32>,
    /// Training seconds (validation excluded), summed over resumed invocations.
    pub train_seconds: f64,
    /// Wall-clock seconds of this invocation, validation included.
    pub seconds: f64,
}

/// Where and how to checkpoint.
#[derive(Clone, Debug, Default)]
pub struct CheckpointConfig {
    /// Directory for `checkpoint.safetensors`; none: no checkpoints.
    pub dir: Option<PathBuf>,
    /// Continue from the checkpoint in `dir` if there is one.
    pub resume: bool,
    /// Stop (as if killed) after this many epochs of this invocation; for tests of resume.
    pub stop_after: Option<usize>,
}

/// The file a run keeps its latest checkpoint in, inside its checkpoint directory.
pub const CKPT_FILE: &str = "checkpoint.safetensors";
const CKPT_META: &str = "shears.checkpoint";

#[derive(Serialize, Deserialize)]
struct CkptMeta {
    version: u32,
    epochs_done: usize,
    config: TrainConfig,
    history: Vec<EpochLog>,
    adam_steps: BTreeMap<String, u64>,
    best_val_acc: Option<f64>,
    since_best: usize,
    #[serde(default)]
    curve: Vec<CurvePoint>,
    #[serde(default)]
    train_seconds: f64,
    #[serde(default)]
    batches: usize,
}

enum Opt {
    Sgd(Sgd),
    Adam(Adam),
}

impl Opt {
    fn new(cfg: &TrainConfig) -> Result<Self, Error> {
        Ok(match cfg.optimizer {
            OptimizerKind::Sgd { momentum, nesterov } => {
                let mut c = SgdConfig::new(cfg.lr)
                    .with_momentum(momentum)
                    .with_weight_decay(cfg.weight_decay);
                if nesterov {
                    c = c.with_nesterov();
                }
                Opt::Sgd(Sgd::new(c)?)
            }
            OptimizerKind::Adam { beta1, beta2 } => Opt::Adam(Adam::new(
                AdamConfig::new(cfg.lr)
                    .with_betas(beta1, beta2)
                    .with_weight_decay(cfg.weight_decay),
            )?),
        })
    }

    fn as_dyn(&mut self) -> &mut dyn Optimizer {
        match self {
            Opt::Sgd(o) => o,
            Opt::Adam(o) => o,
        }
    }

    /// Optimizer state as named tensors plus Adam step counts.
    fn export(&self) -> (Vec<(String, Tensor)>, BTreeMap<String, u64>) {
        let vec_t = |v: &Vec<f32>| Tensor::new(vec![v.len()], v.clone()).expect("1-d");
        match self {
            Opt::Sgd(o) => (
                o.state()
                    .momentum_buffers
                    .iter()
                    .map(|(k, v)| (format!("optim.momentum.{k}"), vec_t(v)))
                    .collect(),
                BTreeMap::new(),
            ),
            Opt::Adam(o) => {
                let mut t = Vec::new();
                let mut steps = BTreeMap::new();
                for (k, s) in &o.state().params {
                    t.push((format!("optim.exp_avg.{k}"), vec_t(&s.exp_avg)));
                    t.push((format!("optim.exp_avg_sq.{k}"), vec_t(&s.exp_avg_sq)));
                    steps.insert(k.clone(), s.step);
                }
                (t, steps)
            }
        }
    }

    fn import(&mut self, tensors: &Weights, steps: &BTreeMap<String, u64>) {
        match self {
            Opt::Sgd(o) => {
                let mut st = SgdState::default();
                for (k, v) in tensors.iter() {
                    if let Some(p) = k.strip_prefix("optim.momentum.") {
                        st.momentum_buffers.insert(p.to_string(), v.data().to_vec());
                    }
                }
                o.load_state(st);
            }
            Opt::Adam(o) => {
                let mut st = AdamState::default();
                for (k, &step) in steps {
                    let get =
                        |pre: &str| tensors.get(&format!("{pre}{k}")).map(|t| t.data().to_vec());
                    if let (Some(m), Some(v)) = (get("optim.exp_avg."), get("optim.exp_avg_sq.")) {
                        st.params.insert(
                            k.clone(),
                            AdamParamState {
                                step,
                                exp_avg: m,
                                exp_avg_sq: v,
                            },
                        );
                    }
                }
                o.load_state(st);
            }
        }
    }
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn write_checkpoint(dir: &Path, net: &Network, opt: &Opt, meta: &CkptMeta) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::File {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut all = Weights::new();
    for (k, v) in net.weights() {
        all.insert(format!("model.{k}"), v);
    }
    let (ot, steps) = opt.export();
    for (k, v) in ot {
        all.insert(k, v);
    }
    let mut m = BTreeMap::new();
    let meta = CkptMeta {
        adam_steps: steps,
        ..clone_meta(meta)
    };
    m.insert(
        CKPT_META.to_string(),
        serde_json::to_string(&meta).expect("plain data"),
    );
    shears_io::write_safetensors(&dir.join(CKPT_FILE), &all, &m)?;
    Ok(())
}

fn clone_meta(m: &CkptMeta) -> CkptMeta {
    CkptMeta {
        version: m.version,
        epochs_done: m.epochs_done,
        config: m.config.clone(),
        history: m.history.clone(),
        adam_steps: m.adam_steps.clone(),
        best_val_acc: m.best_val_acc,
        since_best: m.since_best,
        curve: m.curve.clone(),
        train_seconds: m.train_seconds,
        batches: m.batches,
    }
}

/// Trains `net` on `train_set`, validating on `val_set` after every epoch.
///
/// `pre` is the model's input preprocessing; images are adapted to the model input (grey to
/// RGB, padding) as in evaluation.
pub fn train(
    net: &mut Network,
    train_set: &Dataset,
    val_set: Option<&Dataset>,
    pre: &Preprocess,
    cfg: &TrainConfig,
    ckpt: &CheckpointConfig,
    verbosity: Verbosity,
) -> Result<TrainReport, Error> {
    train_with(net, None, train_set, val_set, pre, cfg, ckpt, verbosity)
}

/// [`train`] with an optional `teacher`: with one and [`TrainConfig::distill`], the loss is
/// Hinton distillation against the teacher's logits (teacher in eval mode, same batch);
/// otherwise cross-entropy on the labels.
#[allow(clippy::too_many_arguments)]
pub fn train_with(
    net: &mut Network,
    mut teacher: Option<&mut Network>,
    train_set: &Dataset,
    val_set: Option<&Dataset>,
    pre: &Preprocess,
    cfg: &TrainConfig,
    ckpt: &CheckpointConfig,
    verbosity: Verbosity,
) -> Result<TrainReport, Error> {
    let start = Instant::now();
    cfg.validate()?;
    if train_set.len() < cfg.batch_size {
        return Err(Error::invalid(format!(
            "training set {} has {} images, fewer than one batch of {}",
            train_set.name,
            train_set.len(),
            cfg.batch_size
        )));
    }
    let input_id = net.graph().inputs()[0];
    let input_shape = net.graph().shape(input_id).to_vec();
    let mut transforms = input_transforms(train_set, &input_shape)?;
    if let Some(pad) = cfg.augment_pad {
        transforms.push(Transform::PadCrop { pad });
        if cfg.augment_flip {
            transforms.push(Transform::HFlip);
        }
    }
    let normalize = normalize_for(pre, input_shape[0]);
    let n_out: usize = net.graph().shape(net.graph().outputs()[0]).iter().product();
    let mut opt = Opt::new(cfg)?;
    let mut history = Vec::new();
    let mut curve = Vec::new();
    let mut start_epoch = 0;
    let mut best: Option<f64> = None;
    let mut since_best = 0usize;
    let mut resumed_from = None;
    // Training time before this invocation, and batches trained in all.
    let mut prior = 0.0f64;
    let mut batches = 0usize;
    if let (Some(dir), true) = (&ckpt.dir, ckpt.resume) {
        let path = dir.join(CKPT_FILE);
        if path.exists() {
            let st = shears_io::read_safetensors(&path)?;
            let meta: CkptMeta = st
                .metadata
                .get(CKPT_META)
                .and_then(|s| serde_json::from_str(s).ok())
                .ok_or_else(|| Error::Checkpoint {
                    path: path.clone(),
                    msg: format!("no readable {CKPT_META} metadata"),
                })?;
            if resume_key(&meta.config) != resume_key(cfg) {
                return Err(Error::Checkpoint {
                    path,
                    msg: "it was written by a run with a different configuration (only epochs, \
                          early stopping, the time budget and validation settings may change \
                          on resume)"
                        .into(),
                });
            }
            let mut w = Weights::new();
            for (k, v) in st.tensors.iter() {
                if let Some(name) = k.strip_prefix("model.") {
                    w.insert(name.to_string(), v.clone());
                }
            }
            net.set_weights(&w).map_err(|e| Error::Checkpoint {
                path: path.clone(),
                msg: format!("weights do not fit this model: {e}"),
            })?;
            opt.import(&st.tensors, &meta.adam_steps);
            start_epoch = meta.epochs_done;
            history = meta.history;
            best = meta.best_val_acc;
            since_best = meta.since_best;
            curve = meta.curve;
            prior = meta.train_seconds;
            batches = meta.batches;
            resumed_from = Some(start_epoch);
        }
    }
    let validate = |net: &mut Network| -> Result<Option<(f64, f64)>, Error> {
        let Some(v) = val_set else { return Ok(None) };
        let r = evaluate(
            net,
            v,
            pre,
            &EvalConfig {
                batch_size: cfg.eval_batch_size,
                limit: cfg.val_limit,
                verbosity: Verbosity::Quiet,
            },
        )?;
        Ok(Some((r.loss, r.top1)))
    };
    if cfg.eval_at_start && start_epoch == 0 && curve.is_empty() {
        if let Some((_, a)) = validate(net)? {
            curve.push(CurvePoint {
                batches: 0,
                seconds: 0.0,
                val_top1: a,
            });
        }
    }
    // Training time of this invocation, validation excluded.
    let mut trained = Duration::ZERO;
    let over_budget = |trained: Duration| {
        cfg.time_budget
            .is_some_and(|b| prior + trained.as_secs_f64() >= b)
    };
    let mut batch_losses = Vec::new();
    let mut stopped_early = false;
    let mut stopped_by_budget = false;
    for (ran, epoch) in (start_epoch..cfg.epochs).enumerate() {
        if let Some(limit) = ckpt.stop_after {
            if ran >= limit {
                break;
            }
        }
        if let (Some(patience), true) = (cfg.early_stop, since_best > 0) {
            if since_best >= patience {
                stopped_early = true;
                break;
            }
        }
        if over_budget(trained) {
            stopped_by_budget = true;
            break;
        }
        let t0 = Instant::now();
        net.set_seed(mix(cfg.seed, epoch as u64));
        let loader_cfg = LoaderConfig::new(cfg.batch_size)
            .with_shuffle(cfg.seed)
            .with_epoch(epoch as u64)
            .with_drop_last()
            .with_normalize(normalize.clone())
            .with_transforms(transforms.clone());
        let loader = Loader::new(train_set, loader_cfg)?;
        let iters = cfg
            .max_batches
            .map_or(loader.n_batches(), |m| m.min(loader.n_batches()));
        let bar = Progress::new(
            iters as u64,
            &format!("epoch {}/{}", epoch + 1, cfg.epochs),
            verbosity,
        );
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        let mut stop = false;
        let mut train_secs = 0.0;
        let mut t_batch = Instant::now();
        for (it, batch) in loader.take(iters).enumerate() {
            lr = cfg.lr_at_time(epoch, it, iters, prior + trained.as_secs_f64());
            opt.as_dyn().set_lr(lr);
            let x = batch_tensor(&batch);
            let labels: Vec<usize> = batch.labels.iter().map(|&l| l as usize).collect();
            let tlogits = match (teacher.as_deref_mut(), &cfg.distill) {
                (Some(t), Some(_)) => Some(t.forward(&x, Mode::Eval)?),
                _ => None,
            };
            let logits = net.forward_train(&x)?;
            let (loss, grad) = match (&tlogits, &cfg.distill) {
                (Some(t), Some(d)) => distillation(&logits, t, Some(&labels), d)?,
                _ => cross_entropy(&logits, &labels, cfg.label_smoothing)?,
            };
            if !loss.is_finite() {
                net.discard_tape();
                return Err(Error::invalid(format!(
                    "training diverged at epoch {} iteration {it}: loss is {loss} (lower the \
                     learning rate {lr})",
                    epoch + 1
                )));
            }
            let mut grads = net.backward(&grad, &BackwardOptions::new())?;
            net.step(opt.as_dyn(), &mut grads)?;
            let dt = t_batch.elapsed();
            trained += dt;
            train_secs += dt.as_secs_f64();
            batches += 1;
            batch_losses.push(loss);
            loss_sum += loss as f64 * batch.n as f64;
            seen += batch.n;
            let l = logits.data();
            for (i, &y) in labels.iter().enumerate() {
                correct += usize::from(crate::eval::argmax(&l[i * n_out..(i + 1) * n_out]) == y);
            }
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% lr {lr:.4}",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64
            ));
            stop = over_budget(trained);
            let last = stop || it + 1 == iters;
            if !last && cfg.eval_every.is_some_and(|e| batches.is_multiple_of(e)) {
                if let Some((_, a)) = validate(net)? {
                    let secs = prior + trained.as_secs_f64();
                    curve.push(CurvePoint {
                        batches,
                        seconds: secs,
                        val_top1: a,
                    });
                    bar.println(&format!(
                        "  {batches} batches, {secs:.0} s: val top-1 {a:.2}%"
                    ));
                }
            }
            if stop {
                break;
            }
            t_batch = Instant::now();
        }
        bar.finish("");
        let (val_loss, val_acc) = match validate(net)? {
            Some((l, a)) => {
                curve.push(CurvePoint {
                    batches,
                    seconds: prior + trained.as_secs_f64(),
                    val_top1: a,
                });
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let log = EpochLog {
            epoch,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: 100.0 * correct as f64 / seen.max(1) as f64,
            val_loss,
            val_acc,
            seconds: t0.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_secs.max(1e-9),
            elapsed: prior + trained.as_secs_f64(),
        };
        if verbosity != Verbosity::Quiet {
            eprintln!(
                "epoch {:>3}/{}  lr {:.4}  loss {:.4}  train {:.2}%{}  {:.0} img/s  {:.1}s",
                epoch + 1,
                cfg.epochs,
                log.lr,
                log.train_loss,
                log.train_acc,
                log.val_acc
                    .map(|a| format!("  val {a:.2}%"))
                    .unwrap_or_default(),
                log.images_per_s,
                log.seconds
            );
        }
        if let Some(a) = val_acc {
            if best.is_none_or(|b| a > b) {
                best = Some(a);
                since_best = 0;
            } else {
                since_best += 1;
            }
        }
        history.push(log);
        if stop {
            // A partial epoch is not checkpointed: a resume restarts it.
            stopped_by_budget = true;
            break;
        }
        if let Some(dir) = &ckpt.dir {
            let meta = CkptMeta {
                version: 1,
                epochs_done: epoch + 1,
                config: cfg.clone(),
                history: history.clone(),
                adam_steps: BTreeMap::new(),
                best_val_acc: best,
                since_best,
                curve: curve.clone(),
                train_seconds: prior + trained.as_secs_f64(),
                batches,
            };
            write_checkpoint(dir, net, &opt, &meta)?;
        }
    }
    Ok(TrainReport {
        epochs: history,
        resumed_from,
        stopped_early,
        stopped_by_budget,
        best_val_acc: best,
        curve,
        batch_losses,
        train_seconds: prior + trained.as_secs_f64(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The part of a configuration a resumed run must share: everything but the epochs, early
/// stopping, the time budget and the validation settings.
fn resume_key(cfg: &TrainConfig) -> TrainConfig {
    TrainConfig {
        epochs: 0,
        early_stop: None,
        time_budget: None,
        val_limit: None,
        eval_every: None,
        eval_at_start: false,
        eval_batch_size: 0,
        ..cfg.clone()
    }
}
