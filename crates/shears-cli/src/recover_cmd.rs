//! `shears recover bn|casm|finetune`.
//!
//! Each command loads a pruned model (usually written by `shears prune`), evaluates it on the
//! test split, recovers its accuracy with the library ([`shears::recover`]), evaluates again,
//! and saves the result atomically as self-describing safetensors that keep the input file's
//! metadata and add a `shears.recover` record (a JSON array with one entry per recovery step,
//! so chained recoveries keep their history).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::{json, Value};
use shears::eval::{evaluate, EvalConfig, EvalReport};
use shears::model::{save_model_as, Model, META_DATASET};
use shears::progress::Verbosity;
use shears::recover::{
    bn_recalibrate_with, casm, finetune, BnRecalConfig, BnRecalMethod, BnRecalReport, CasmConfig,
    CasmVariant, ResidualTarget, META_CHANNELS,
};
use shears::train::{CheckpointConfig, TrainConfig};
use shears_data::{Dataset, DatasetName, Split};
use shears_engine::{DistillConfig, Network};

use crate::args::{DataOpts, ModelOpts, OptimOpts};
use crate::commands::{bad, data_dir, network, open_model, open_model_for_data, parse_dataset};
use crate::output::{print_json, thousands};

/// Metadata key of the recovery history of a model.
pub const META_RECOVER: &str = "shears.recover";

/// Options every recovery command shares.
#[derive(Args, Debug, Clone)]
pub struct CommonOpts {
    /// The pruned model (self-describing safetensors from `shears prune`, or any model file
    /// with --arch).
    #[arg(value_name = "PRUNED")]
    pub pruned: PathBuf,
    /// Zoo architecture of PRUNED when the file carries no graph.
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    #[command(flatten)]
    /// Input preprocessing (saved with the recovered model).
    pub preprocess: crate::args::PreprocessOpts,
    /// Dataset: mnist, fashion-mnist, cifar10, cifar100 (default: the one recorded in PRUNED).
    #[arg(long, value_name = "NAME")]
    pub data: Option<String>,
    #[command(flatten)]
    /// Where datasets live.
    pub data_opts: DataOpts,
    /// Accuracy before and after on only the first N test images (default: all).
    #[arg(long, value_name = "N")]
    pub eval_limit: Option<usize>,
    /// Skip the accuracy measurement before recovery.
    #[arg(long)]
    pub skip_before_eval: bool,
    /// Augmentation of the samples (pad-crop 4 px, plus flips on CIFAR) for BN statistics and
    /// fine-tuning: default on for CIFAR, off for digits.
    #[arg(long, value_name = "BOOL")]
    pub augment: Option<bool>,
    /// Seed of the sample subsets, data order and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to write the recovered model, atomically (by extension: .safetensors, self-describing, or .onnx).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `shears recover bn` arguments.
#[derive(Args, Debug)]
pub struct BnArgs {
    #[command(flatten)]
    /// Shared options.
    pub common: CommonOpts,
    /// Training images (class-balanced, seeded) to estimate the statistics from.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub samples: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// One train-mode pass (PyTorch's way), or one eval-mode pass per BN in order (each layer
    /// measured with the statistics already re-estimated upstream).
    #[arg(long, value_enum, default_value_t = BnMethodArg::TrainPass)]
    pub method: BnMethodArg,
}

/// `--method` of `recover bn`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMethodArg {
    /// One pass in train mode.
    TrainPass,
    /// One eval-mode pass per BatchNorm, in topological order.
    Sequential,
}

/// `--variant` of `recover casm`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasmVariantArg {
    /// Adam on the reconstruction MSE of each small model (methods §4.3).
    Gradient,
    /// Closed-form least-squares refit of each next layer.
    #[value(alias = "least-squares", alias = "ls")]
    Lstsq,
}

/// `--residual-target` of `recover casm`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResidualTargetArg {
    /// The original block output minus the pruned shortcut: the branch also absorbs the error
    /// earlier layers left in the residual stream.
    Block,
    /// The original branch output (exact only when the shortcut is unchanged).
    Branch,
}

/// `shears recover casm` arguments.
#[derive(Args, Debug)]
pub struct CasmArgs {
    #[command(flatten)]
    /// Shared options.
    pub common: CommonOpts,
    /// The original (unpruned) model whose feature maps are reconstructed.
    #[arg(long, value_name = "ORIGINAL")]
    pub original: PathBuf,
    /// Zoo architecture of ORIGINAL when the file carries no graph (e.g. resnet56).
    #[arg(long, value_name = "NAME")]
    pub original_arch: Option<String>,
    /// Training images in the sample set D_s (class-balanced, seeded).
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub samples: usize,
    /// Adam epochs over D_s per small model (gradient variant).
    #[arg(long, value_name = "E", default_value_t = 5)]
    pub epochs_per_layer: usize,
    /// Peak Adam learning rate (cosine-annealed over each layer's steps).
    #[arg(long, value_name = "LR", default_value_t = 3e-3)]
    pub lr: f32,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Gradient training of each small model, or the closed-form least-squares refit.
    #[arg(long, value_enum, default_value_t = CasmVariantArg::Gradient)]
    pub variant: CasmVariantArg,
    /// Gradient variant: train only the next layer, not the pruned layer and its BN.
    #[arg(long)]
    pub next_only: bool,
    /// Do not refit layers that only lost input channels (readers of a pruned residual
    /// stream, the classifier).
    #[arg(long)]
    pub no_refit_inputs: bool,
    /// Most im2col rows per least-squares refit of a convolution.
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    pub ls_max_rows: usize,
    /// Finish with a BN recalibration on N training images (0: none).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bn_recal: usize,
    /// What the last conv (and BN) of a residual branch is fit to.
    #[arg(long, value_enum, default_value_t = ResidualTargetArg::Block)]
    pub residual_target: ResidualTargetArg,
}

/// `shears recover finetune` arguments.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    #[command(flatten)]
    /// Shared options.
    pub common: CommonOpts,
    /// Distil from this model (usually the original, unpruned one).
    #[arg(long, value_name = "ORIGINAL")]
    pub teacher: Option<PathBuf>,
    /// Zoo architecture of --teacher when the file carries no graph.
    #[arg(long, value_name = "NAME")]
    pub teacher_arch: Option<String>,
    /// Distillation softmax temperature.
    #[arg(long, value_name = "T", default_value_t = 4.0)]
    pub kd_temperature: f32,
    /// Weight of the distillation term (the label cross-entropy gets 1 - W).
    #[arg(long, value_name = "W", default_value_t = 0.9)]
    pub kd_weight: f32,
    #[command(flatten)]
    /// Optimizer and schedule (`shears train`'s flags; defaults: 1 epoch, SGD lr 0.01, cosine).
    pub optim: OptimOpts,
    /// Train on only N training images (class-balanced, seeded).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Validate (curve points, and early stopping when asked) on only the first N images of the
    /// validation hold-out (default 1000); the test split is evaluated before and after only.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub val_limit: usize,
    /// Also validate every N batches (points of the time-to-accuracy curve).
    #[arg(long, value_name = "N")]
    pub eval_every: Option<usize>,
    /// Directory for per-epoch checkpoints (written atomically).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Resume from the checkpoint in --checkpoint-dir (losing at most one epoch).
    #[arg(long)]
    pub resume: bool,
    /// Stop after N epochs of this invocation, as if killed (to test --resume).
    #[arg(long, value_name = "N", hide = true)]
    pub stop_after: Option<usize>,
}

/// What the command loaded: the pruned model, its dataset and test split.
struct Setup {
    model: Model,
    name: DatasetName,
    dir: PathBuf,
    test: Dataset,
    net: Network,
    eval_cfg: EvalConfig,
    augment: bool,
}

fn setup(c: &CommonOpts) -> Result<Setup> {
    crate::commands::check_model_out(&c.output, &[&c.pruned])?;
    let model = open_model_for_data(&ModelOpts {
        model: c.pruned.clone(),
        arch: c.arch.clone(),
        preprocess: c.preprocess.clone(),
        ..Default::default()
    })?;
    let data = match (&c.data, model.metadata.get(META_DATASET)) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => {
            return Err(bad(format!(
                "{}: the file records no dataset; give --data NAME",
                c.pruned.display()
            )))
        }
    };
    let name = parse_dataset(&data)?;
    let dir = data_dir(&c.data_opts);
    let test = shears_data::load(&dir, name, Split::Test)?;
    if c.eval_limit == Some(0) {
        return Err(bad("--eval-limit 0: evaluate at least one image"));
    }
    let net = network(&model, c.threads)?;
    let eval_cfg = EvalConfig {
        limit: c.eval_limit,
        verbosity: verbosity(c.json),
        ..EvalConfig::default()
    };
    let is_cifar = matches!(name, DatasetName::Cifar10 | DatasetName::Cifar100);
    Ok(Setup {
        augment: c.augment.unwrap_or(is_cifar),
        model,
        name,
        dir,
        test,
        net,
        eval_cfg,
    })
}

fn verbosity(json: bool) -> Verbosity {
    if json {
        Verbosity::Quiet
    } else {
        Verbosity::Normal
    }
}

/// Accuracy before and after, and the time the recovery itself took.
#[derive(Serialize)]
struct Outcome {
    dataset: String,
    /// The split of `before_top1` and `after_top1`: always the test split (final reports).
    split: Split,
    test_images: usize,
    before_top1: Option<f64>,
    after_top1: f64,
    before_loss: Option<f64>,
    after_loss: f64,
    recovery_seconds: f64,
    params: u64,
    macs: u64,
    threads: usize,
    load_average: Option<String>,
}

/// The 1-, 5- and 15-minute load averages (Linux), recorded with every timing.
fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn before_eval(s: &mut Setup, c: &CommonOpts) -> Result<Option<EvalReport>> {
    if c.skip_before_eval {
        return Ok(None);
    }
    Ok(Some(evaluate(
        &mut s.net,
        &s.test,
        &s.model.preprocess,
        &s.eval_cfg,
    )?))
}

/// Evaluates after recovery, saves the model with its history and prints the result.
fn finish(
    mut s: Setup,
    c: &CommonOpts,
    before: Option<EvalReport>,
    seconds: f64,
    method: &str,
    record: Value,
    extra: Value,
) -> Result<()> {
    let after = evaluate(&mut s.net, &s.test, &s.model.preprocess, &s.eval_cfg)?;
    let outcome = Outcome {
        dataset: s.name.to_string(),
        split: Split::Test,
        test_images: after.images,
        before_top1: before.as_ref().map(|r| r.top1),
        after_top1: after.top1,
        before_loss: before.as_ref().map(|r| r.loss),
        after_loss: after.loss,
        recovery_seconds: seconds,
        params: s.model.graph.n_params(),
        macs: s.model.graph.macs(),
        threads: s.net.num_threads(),
        load_average: load_average(),
    };
    let mut history: Vec<Value> = s
        .model
        .metadata
        .get(META_RECOVER)
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    history.push(json!({
        "method": method,
        "source": c.pruned,
        "config": record,
        "before_top1": outcome.before_top1,
        "after_top1": outcome.after_top1,
        "test_images": outcome.test_images,
        "seconds": seconds,
    }));
    s.model.weights = s.net.weights();
    s.model
        .metadata
        .insert(META_RECOVER.to_string(), Value::from(history).to_string());
    s.model
        .metadata
        .entry(META_DATASET.to_string())
        .or_insert_with(|| s.name.to_string());
    save_model_as(&c.output, &s.model)?;
    if c.json {
        print_json(&json!({
            "model": c.pruned,
            "output": c.output,
            "method": method,
            "accuracy": outcome,
            "details": extra,
        }));
        return Ok(());
    }
    println!(
        "{method} recovery of {} ({} parameters, {} MACs)",
        c.pruned.display(),
        thousands(outcome.params),
        thousands(outcome.macs)
    );
    match outcome.before_top1 {
        Some(b) => println!(
            "top-1        {b:.2}% -> {:.2}%  ({} {} test images)",
            outcome.after_top1, outcome.test_images, outcome.dataset
        ),
        None => println!(
            "top-1        {:.2}% after  ({} {} test images)",
            outcome.after_top1, outcome.test_images, outcome.dataset
        ),
    }
    println!(
        "time         {seconds:.1} s of recovery ({} threads, load average {})",
        outcome.threads,
        outcome.load_average.as_deref().unwrap_or("?")
    );
    println!("wrote        {}", c.output.display());
    Ok(())
}

fn bn_config(samples: usize, batch: usize, augment: bool, seed: u64) -> BnRecalConfig {
    BnRecalConfig {
        seed,
        augment_pad: augment.then_some(4),
        augment_flip: augment,
        ..BnRecalConfig::new(samples, batch)
    }
}

fn check_positive(flag: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(bad(format!("{flag} 0: it must be at least 1")));
    }
    Ok(())
}

/// Run `shears recover bn`.
pub fn run_bn(a: BnArgs) -> Result<()> {
    check_positive("--samples", a.samples)?;
    check_positive("--batch-size", a.batch_size)?;
    let c = &a.common;
    let mut s = setup(c)?;
    let train = shears_data::load(&s.dir, s.name, Split::Train)?;
    let before = before_eval(&mut s, c)?;
    let mut cfg = bn_config(a.samples, a.batch_size, s.augment, c.seed);
    // Flips only for CIFAR-like data, as in training.
    cfg.augment_flip = s.augment && matches!(s.name, DatasetName::Cifar10 | DatasetName::Cifar100);
    cfg.method = match a.method {
        BnMethodArg::TrainPass => BnRecalMethod::TrainPass,
        BnMethodArg::Sequential => BnRecalMethod::Sequential,
    };
    let rep = bn_recalibrate_with(&mut s.net, &train, &s.model.preprocess, &cfg)?;
    if rep.layers == 0 && !c.json {
        eprintln!("note: the model has no BatchNorm layers; nothing was recalibrated");
    }
    let secs = rep.seconds;
    finish(s, c, before, secs, "bn", json!(cfg), json!({ "bn": rep }))
}

/// Run `shears recover casm`.
pub fn run_casm(a: CasmArgs) -> Result<()> {
    check_positive("--samples", a.samples)?;
    check_positive("--batch-size", a.batch_size)?;
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(bad(format!("--lr {}: it must be positive", a.lr)));
    }
    let c = &a.common;
    crate::commands::check_out(&c.output, &[&a.original])?;
    let mut s = setup(c)?;
    let orig = open_model(&ModelOpts {
        model: a.original.clone(),
        arch: a.original_arch.clone().or_else(|| c.arch.clone()),
        ..Default::default()
    })?;
    if orig.graph.inputs().len() != 1
        || s.model.graph.shape(s.model.graph.inputs()[0])
            != orig.graph.shape(orig.graph.inputs()[0])
    {
        return Err(bad(format!(
            "--original {}: its input does not match {}'s; it must be the model {} was pruned \
             from",
            a.original.display(),
            c.pruned.display(),
            c.pruned.display()
        )));
    }
    let matched = s
        .model
        .graph
        .nodes()
        .iter()
        .filter(|n| orig.graph.find(&n.name).is_some())
        .count();
    if matched * 2 < s.model.graph.len() {
        return Err(bad(format!(
            "--original {}: only {matched} of {}'s {} nodes have a namesake in it; it must be \
             the model {} was pruned from",
            a.original.display(),
            c.pruned.display(),
            s.model.graph.len(),
            c.pruned.display()
        )));
    }
    let kept_channels = match s.model.metadata.get(META_CHANNELS) {
        Some(j) => serde_json::from_str(j).map_err(|e| {
            bad(format!(
                "{}: its {META_CHANNELS} metadata is not a channel map: {e}",
                c.pruned.display()
            ))
        })?,
        None => Default::default(),
    };
    let train = shears_data::load(&s.dir, s.name, Split::Train)?;
    let before = before_eval(&mut s, c)?;
    let cfg = CasmConfig {
        kept_channels,
        samples: a.samples,
        epochs_per_layer: a.epochs_per_layer,
        lr: a.lr,
        batch_size: a.batch_size,
        seed: c.seed,
        variant: match a.variant {
            CasmVariantArg::Gradient => CasmVariant::Gradient,
            CasmVariantArg::Lstsq => CasmVariant::LeastSquares,
        },
        train_first: !a.next_only,
        refit_inputs: !a.no_refit_inputs,
        ls_max_rows: a.ls_max_rows.max(1),
        residual_target: match a.residual_target {
            ResidualTargetArg::Block => ResidualTarget::Block,
            ResidualTargetArg::Branch => ResidualTarget::Branch,
        },
        verbosity: verbosity(c.json),
        ..CasmConfig::default()
    };
    let t0 = Instant::now();
    let (w, rep) = casm(
        (&orig.graph, &orig.weights),
        (&s.model.graph, &s.model.weights),
        &train,
        &s.model.preprocess,
        &cfg,
    )?;
    s.net.set_weights(&w)?;
    let casm_seconds = t0.elapsed().as_secs_f64();
    let bn: Option<BnRecalReport> = if a.bn_recal > 0 {
        let mut bc = bn_config(a.bn_recal, 100, s.augment, c.seed);
        bc.augment_flip =
            s.augment && matches!(s.name, DatasetName::Cifar10 | DatasetName::Cifar100);
        Some(bn_recalibrate_with(
            &mut s.net,
            &train,
            &s.model.preprocess,
            &bc,
        )?)
    } else {
        None
    };
    let seconds = t0.elapsed().as_secs_f64();
    if !c.json {
        let done = rep.layers.iter().filter(|l| l.skipped.is_none()).count();
        eprintln!(
            "casm: {done} small models reconstructed from {} samples in {casm_seconds:.1} s{}",
            rep.samples,
            bn.as_ref()
                .map(|b| format!(
                    "; BN recalibration of {} layers in {:.1} s",
                    b.layers, b.seconds
                ))
                .unwrap_or_default()
        );
        for l in &rep.layers {
            match &l.skipped {
                Some(why) => eprintln!("  {:<22} skipped: {why}", l.layer),
                None => eprintln!(
                    "  {:<22} -> {:<22} mse {:.4e} -> {:.4e}  {:.1} s",
                    l.layer, l.target, l.initial_mse, l.final_mse, l.seconds
                ),
            }
        }
    }
    finish(
        s,
        c,
        before,
        seconds,
        "casm",
        json!({"original": a.original, "casm": cfg, "bn_recal": a.bn_recal}),
        json!({"casm": rep, "casm_seconds": casm_seconds, "bn": bn}),
    )
}

/// Run `shears recover finetune`.
pub fn run_finetune(a: FinetuneArgs) -> Result<()> {
    check_positive("--batch-size", a.optim.batch_size)?;
    check_positive("--epochs", a.optim.epochs.unwrap_or(1))?;
    check_positive("--val-limit", a.val_limit)?;
    if a.resume && a.checkpoint_dir.is_none() {
        return Err(bad("--resume needs --checkpoint-dir DIR"));
    }
    let c = &a.common;
    if let Some(t) = &a.teacher {
        crate::commands::check_out(&c.output, &[t])?;
    }
    let mut s = setup(c)?;
    let mut teacher = match &a.teacher {
        Some(p) => {
            let t = open_model(&ModelOpts {
                model: p.clone(),
                arch: a.teacher_arch.clone(),
                ..Default::default()
            })?;
            if t.graph.outputs().len() != 1
                || t.graph.shape(t.graph.outputs()[0])
                    != s.model.graph.shape(s.model.graph.outputs()[0])
            {
                return Err(bad(format!(
                    "--teacher {}: its output shape does not match {}'s",
                    p.display(),
                    c.pruned.display()
                )));
            }
            Some(network(&t, c.threads)?)
        }
        None => None,
    };
    let (mut train, val) = shears_data::load_train_val(&s.dir, s.name)?;
    if let Some(n) = a.limit {
        check_positive("--limit", n)?;
        train = train.class_balanced_subset(n, c.seed);
    }
    let before = before_eval(&mut s, c)?;
    let is_cifar = matches!(s.name, DatasetName::Cifar10 | DatasetName::Cifar100);
    let cfg = TrainConfig {
        distill: teacher.as_ref().map(|_| DistillConfig {
            temperature: a.kd_temperature,
            alpha: a.kd_weight,
            label_smoothing: 0.0,
        }),
        augment_pad: s.augment.then_some(4),
        augment_flip: s.augment && is_cifar,
        seed: c.seed,
        val_limit: Some(a.val_limit),
        eval_every: a.eval_every,
        ..a.optim.apply(TrainConfig::finetune(1)).map_err(bad)?
    };
    let ckpt = CheckpointConfig {
        dir: a.checkpoint_dir.clone(),
        resume: a.resume,
        stop_after: a.stop_after,
    };
    let rep = finetune(
        &mut s.net,
        teacher.as_mut(),
        &train,
        Some(&val),
        &s.model.preprocess,
        &cfg,
        &ckpt,
        verbosity(c.json),
    )?;
    if !c.json {
        eprintln!(
            "finetune: {} epochs logged, {:.1} s of training{}{}",
            rep.epochs.len(),
            rep.train_seconds,
            if rep.stopped_by_budget {
                " (stopped by the time budget)"
            } else {
                ""
            },
            rep.resumed_from
                .map(|e| format!(", resumed after epoch {e}"))
                .unwrap_or_default()
        );
    }
    let secs = rep.train_seconds;
    finish(
        s,
        c,
        before,
        secs,
        "finetune",
        json!({"teacher": a.teacher, "finetune": cfg, "train_images": train.len()}),
        json!({"finetune": rep, "curve_split": Split::Val}),
    )
}
