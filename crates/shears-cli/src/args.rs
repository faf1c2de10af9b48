//! Command-line arguments (clap derive). Every flag has a doc line; `shears <cmd> --help` shows it.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use shears_data::Split;

/// shears: make trained CNNs smaller and faster while keeping their accuracy.
#[derive(Parser, Debug)]
#[command(name = "shears", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by commands that read datasets.
#[derive(Args, Debug, Clone)]
pub struct DataOpts {
    /// Directory holding the datasets (`mnist/`, `fashion-mnist/`, `cifar-10/`, `cifar-100/`);
    /// defaults to $SHEARS_DATA, then ./data, then ../shared/data.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Options shared by commands that load a model.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelOpts {
    /// Model file: .safetensors (with or without an embedded graph), .onnx, .th/.pth/.pt
    /// (PyTorch).
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Zoo architecture of the file when it carries no graph (e.g. resnet56, lenet5, vgg16).
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// Per-sample input shape, for an ONNX model whose input dims are symbolic (as
    /// `torch.onnx.export(dynamic_axes=...)` writes); the batch dim may stay symbolic.
    #[arg(long, value_name = "C,H,W", value_delimiter = ',')]
    pub input_shape: Option<Vec<usize>>,
    #[command(flatten)]
    /// Input preprocessing.
    pub preprocess: PreprocessOpts,
}

/// Input preprocessing, `x[c] = (pixel * scale - mean[c]) / std[c]`, for commands that feed
/// images to a model. Each flag overrides the model file's `shears.preprocess` metadata, which
/// overrides its zoo architecture's; with none of them the default is scale 1/255 and the
/// ImageNet mean and std (what torchvision models expect), and a note on stderr says so.
#[derive(Args, Debug, Clone, Default)]
pub struct PreprocessOpts {
    /// Per-channel means subtracted after scaling: comma-separated, one per input channel, or
    /// one value for all channels (e.g. 0.485,0.456,0.406).
    #[arg(
        long,
        value_name = "M,...",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviations divided by after the mean: comma-separated or one
    /// value (e.g. 0.229,0.224,0.225); finite and non-zero.
    #[arg(long, value_name = "S,...", value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
    /// Factor on raw pixel values (0..255) before the mean: 1/255 or 0.00392 maps them to
    /// 0..1, 1 keeps them raw.
    #[arg(long, value_name = "F", value_parser = parse_scale, allow_hyphen_values = true)]
    pub scale: Option<f32>,
}

impl PreprocessOpts {
    /// The library's form of these flags.
    pub fn to_override(&self) -> shears::model::PreprocessOverride {
        shears::model::PreprocessOverride {
            scale: self.scale,
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }
}

/// `--scale`: a number or a fraction `A/B`.
fn parse_scale(s: &str) -> Result<f32, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not a number or a fraction like 1/255"))
    };
    let v = match s.split_once('/') {
        Some((a, b)) => num(a)? / num(b)?,
        None => num(s)?,
    };
    Ok(v as f32)
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show a model's layers, parameters, MACs and output shape.
    Info(InfoArgs),
    /// Evaluate a model on a dataset's test split: top-1, top-5, per-class accuracy, images/s.
    Eval(EvalArgs),
    /// Train a model (from scratch or from weights) with checkpoints and resume.
    Train(TrainArgs),
    /// Run the main pipeline on the shipped default (MNIST and the LeNet-5).
    Demo(DemoArgs),
    /// Datasets: download official files and verify checksums.
    Data(DataArgs),
    /// Benchmarks whose results go to docs/results/.
    Bench(BenchArgs),
    /// Physically remove channels: score, allocate under a budget, cut, verify, measure, save.
    ///
    /// Ratios and targets mean different things, on purpose: --ratio R is the fraction of
    /// channels REMOVED (0.3 removes 30% of each group's channels); --target-macs F and
    /// --target-params F are the fraction KEPT (0.47 keeps 47% of the MACs, a 2.13x reduction);
    /// --speedup X is --target-macs 1/X. The output is a smaller dense model (self-describing
    /// safetensors: `shears eval OUT --data ...` reloads it with no --arch).
    #[command(verbatim_doc_comment)]
    Prune(PruneArgs),
    /// Write a model as ONNX (--onnx) and/or as self-describing safetensors (--safetensors).
    Export(ExportArgs),
    /// Run a model on your own tensor: --input X.npy (NCHW, already preprocessed unless
    /// --preprocess), --output Y.npy (the model's output, f32).
    Run(RunArgs),
    /// Sensitivity analysis: LSA feature study, SBPF damage-based layer sensitiveness, sweeps.
    Analyze(AnalyzeArgs),
    /// Recover a pruned model's accuracy: BN recalibration, CASM reconstruction, fine-tuning.
    Recover(RecoverArgs),
}

/// `shears analyze`.
#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// Which analysis.
    #[command(subcommand)]
    pub command: AnalyzeCommand,
}

/// The analyses.
#[derive(Subcommand, Debug)]
pub enum AnalyzeCommand {
    /// LSA p-norm sensitivity of high-level features and the feature-pruning study.
    Lsa(crate::analyze_lsa_cmd::LsaArgs),
    /// Damage-based layer sensitiveness (SBPF) and the per-group ratios it allocates.
    Sbpf(crate::analyze_sbpf_cmd::SbpfArgs),
    /// Per-group prune-and-evaluate sweep over a list of ratios (cached, resumable).
    Sweep(crate::analyze_sweep_cmd::SweepArgs),
    /// Combine the shards of a sharded sweep, SBPF or LSA analysis into the one-machine result.
    Merge(crate::analyze_merge_cmd::MergeArgs),
}

/// `shears recover`.
#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// Which recovery.
    #[command(subcommand)]
    pub command: RecoverCommand,
}

/// The recovery methods.
#[derive(Subcommand, Debug)]
pub enum RecoverCommand {
    /// Re-estimate BatchNorm running statistics from N training samples.
    Bn(crate::recover_cmd::BnArgs),
    /// CASM: fit the remaining kernels layer by layer to the original network's feature maps.
    Casm(crate::recover_cmd::CasmArgs),
    /// Fine-tune end to end, optionally distilling from the original model (--teacher).
    Finetune(crate::recover_cmd::FinetuneArgs),
}

/// `shears info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelOpts,
    /// List the pruning dependency groups (channels that must be cut together): id, root,
    /// size, members with their roles, and whether each group is prunable.
    #[arg(long)]
    pub groups: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `shears eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelOpts,
    /// Dataset: mnist, fashion-mnist, cifar10, cifar100.
    #[arg(long, value_name = "NAME")]
    pub data: String,
    #[command(flatten)]
    /// Where datasets live.
    pub data_opts: DataOpts,
    /// Split to evaluate on: `test` (final reports), `val` (the hold-out of the training files
    /// that selection uses), `train` (the training files without it) or `train-all`.
    #[arg(long, default_value = "test", value_name = "test|val|train|train-all")]
    pub split: Split,
    /// Same as `--split train` (kept for old scripts).
    #[arg(long, conflicts_with = "split", hide = true)]
    pub train_split: bool,
    /// Evaluate only the first N images.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 250)]
    pub batch_size: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Time every forward step (op type, node, input and output shapes, conv algorithm, ms,
    /// share) and print the profile after the results (--json: `profile`).
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A MACs budget as `--target-macs F` (the fraction KEPT) or `--speedup X` (= 1/X), shared by
/// `analyze sbpf` and `analyze sweep`.
#[derive(Args, Debug, Clone, Default)]
pub struct MacsBudgetOpts {
    /// Budget: keep this fraction of the MACs (0.5 = 2x fewer).
    #[arg(long, value_name = "F", conflicts_with = "speedup")]
    pub target_macs: Option<f64>,
    /// Budget: --target-macs 1/X (the factor by which MACs shrink).
    #[arg(long, value_name = "X")]
    pub speedup: Option<f64>,
}

impl MacsBudgetOpts {
    /// The fraction of MACs to keep, if a budget was given.
    ///
    /// # Errors
    /// A fraction outside (0, 1] or a speed-up below 1.
    pub fn keep_fraction(&self) -> Result<Option<f64>, String> {
        match (self.target_macs, self.speedup) {
            (Some(f), _) if !(f > 0.0 && f <= 1.0) => Err(format!(
                "--target-macs {f} is outside (0, 1]: it is the fraction of MACs KEPT"
            )),
            (Some(f), _) => Ok(Some(f)),
            (None, Some(x)) if !(x.is_finite() && x >= 1.0) => {
                Err(format!("--speedup {x} must be a number >= 1"))
            }
            (None, Some(x)) => Ok(Some(1.0 / x)),
            (None, None) => Ok(None),
        }
    }
}

/// VGG classifier form (`shears train --vgg-head`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VggHeadArg {
    /// One Linear from the flattened features to the classes.
    Cifar,
    /// torchvision's three-Linear head (4096, 4096, classes) with ReLU and dropout.
    Imagenet,
}

/// Optimizer choice.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerArg {
    /// SGD with momentum (Nesterov with --nesterov).
    Sgd,
    /// Adam.
    Adam,
}

/// Learning-rate schedule.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleArg {
    /// Constant learning rate.
    Constant,
    /// Multiply by --gamma every --step-size epochs.
    Step,
    /// Cosine annealing to 0 over the run.
    Cosine,
}

/// Optimizer and schedule flags, shared by `shears train` and `shears recover finetune`.
#[derive(Args, Debug, Clone)]
pub struct OptimOpts {
    /// Epochs (default: 10 for train, 1 for recover finetune).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    pub optimizer: OptimizerArg,
    /// Peak learning rate, after warm-up (default: 0.1 for train, 0.01 for recover finetune).
    #[arg(long)]
    pub lr: Option<f32>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// Use Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay (L2, as PyTorch's SGD/Adam).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f32,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    pub schedule: ScheduleArg,
    /// Step schedule: epochs between decays.
    #[arg(long, default_value_t = 30)]
    pub step_size: usize,
    /// Step schedule: decay factor.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f32,
    /// Linear warm-up epochs.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Stop after this many seconds of training (validation excluded); the cosine schedule
    /// then anneals over the budget, and --epochs is only an upper bound.
    #[arg(long, value_name = "SECS")]
    pub time_budget: Option<f64>,
}

impl OptimOpts {
    /// `base` (a command's defaults) with these flags applied; epochs and learning rate only
    /// where given.
    ///
    /// # Errors
    /// A --time-budget that is not a positive number of seconds.
    pub fn apply(
        &self,
        base: shears::train::TrainConfig,
    ) -> Result<shears::train::TrainConfig, String> {
        use shears::train::{OptimizerKind, Schedule, TrainConfig};
        if let Some(t) = self.time_budget.filter(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(format!(
                "--time-budget {t}: it must be a positive number of seconds"
            ));
        }
        Ok(TrainConfig {
            epochs: self.epochs.unwrap_or(base.epochs),
            batch_size: self.batch_size,
            optimizer: match self.optimizer {
                OptimizerArg::Sgd => OptimizerKind::Sgd {
                    momentum: self.momentum,
                    nesterov: self.nesterov,
                },
                OptimizerArg::Adam => OptimizerKind::Adam {
                    beta1: 0.9,
                    beta2: 0.999,
                },
            },
            lr: self.lr.unwrap_or(base.lr),
            weight_decay: self.weight_decay,
            schedule: match self.schedule {
                ScheduleArg::Constant => Schedule::Constant,
                ScheduleArg::Step => Schedule::Step {
                    step_size: self.step_size,
                    gamma: self.gamma,
                },
                ScheduleArg::Cosine => Schedule::Cosine,
            },
            warmup_epochs: self.warmup,
            time_budget: self.time_budget.or(base.time_budget),
            ..base
        })
    }
}

/// `shears train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Zoo architecture to train from scratch (ignored when --init is given with a graph).
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// Start from these weights instead of a fresh initialisation.
    #[arg(long, value_name = "MODEL")]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    /// Input preprocessing (saved with the model).
    pub preprocess: PreprocessOpts,
    /// VGG classifier when training a VGG from scratch (--arch vgg11/13/16/19, no --init):
    /// `cifar` (one Linear, the default) or `imagenet` (torchvision's Linear-ReLU-Dropout x2
    /// then Linear, 4096 wide).
    #[arg(long, value_enum)]
    pub vgg_head: Option<VggHeadArg>,
    /// Dataset: mnist, fashion-mnist, cifar10, cifar100.
    #[arg(long, value_name = "NAME")]
    pub data: String,
    #[command(flatten)]
    /// Where datasets live.
    pub data_opts: DataOpts,
    #[command(flatten)]
    /// Optimizer and schedule.
    pub optim: OptimOpts,
    /// Pad-crop (4 px) and horizontal-flip augmentation; default on for CIFAR, off for MNIST.
    #[arg(long)]
    pub augment: Option<bool>,
    /// Stop when validation accuracy has not improved for N epochs.
    #[arg(long, value_name = "N")]
    pub early_stop: Option<usize>,
    /// Train on only the first N training images (a class-balanced subset).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Validate on only N images of the validation hold-out (class-balanced).
    #[arg(long, value_name = "N")]
    pub val_limit: Option<usize>,
    /// Seed for initialisation, shuffling, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Directory for per-epoch checkpoints (written atomically).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Resume from the latest checkpoint in --checkpoint-dir.
    #[arg(long)]
    pub resume: bool,
    /// CDP + DTC sparse training (methods §3): give every conv a filter skeleton (one value
    /// per filter and kernel position, starting at 1) and add the CDP penalty of strength PROP
    /// (as released: 2 * PROP * sum |skeleton|). The skeleton is saved in the model's
    /// metadata for `shears prune --from-skeleton`.
    #[arg(long, value_name = "PROP")]
    pub cdp: Option<f32>,
    /// Threshold the skeleton after every backward pass with DTC base TAU (per filter
    /// T_c = TAU * mean_norm / norm_c; masked stripes and dead filters' batch norms are zeroed
    /// before the optimizer step).
    #[arg(long, value_name = "TAU")]
    pub dtc: Option<f32>,
    /// With --dtc: apply TAU as one static threshold (SWP's rule) instead of DTC.
    #[arg(long, requires = "dtc")]
    pub static_threshold: bool,
    /// With --cdp: weight the filter- and stripe-level terms by the layers' texture
    /// similarity ratio (the paper's intent) instead of as released.
    #[arg(long, requires = "cdp")]
    pub cdp_adaptive: bool,
    /// Where to write the trained model (by extension: .safetensors, self-describing, or .onnx).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `shears demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    /// Where datasets live (MNIST is downloaded there if missing).
    pub data_opts: DataOpts,
    /// Use these LeNet-5 weights instead of training them first.
    #[arg(long, value_name = "MODEL")]
    pub weights: Option<PathBuf>,
    /// Training images for the demo's one epoch (default: all 60,000).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Class-balanced training images the sensitivity sweep evaluates each probe on.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub sensitivity_images: usize,
    /// Training images in CASM's sample set.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub casm_samples: usize,
    /// Also save the pruned and recovered model here (by extension: .safetensors, self-describing, or .onnx).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `shears data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// What to do with datasets.
    #[command(subcommand)]
    pub command: DataCommand,
}

/// `shears data <cmd>`.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Download a dataset's official files into the data directory, verifying checksums.
    Fetch {
        /// Dataset: mnist, fashion-mnist, cifar10, cifar100.
        name: String,
        #[command(flatten)]
        /// Where datasets live.
        data_opts: DataOpts,
        /// Replace present files whose checksum does not match.
        #[arg(long)]
        overwrite: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check the checksums of a dataset's files already in the data directory.
    Verify {
        /// Dataset: mnist, fashion-mnist, cifar10, cifar100.
        name: String,
        #[command(flatten)]
        /// Where datasets live.
        data_opts: DataOpts,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `shears bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// `shears bench <cmd>`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Engine throughput: ResNet-20 inference and training at batch 128, and one 3x3 conv layer
    /// forward/backward, against the PyTorch reference script run in the same invocation; and
    /// with --onnx, whole ONNX models against ONNX Runtime on the same files.
    Engine(BenchEngineArgs),
}

/// `shears bench engine`.
#[derive(Args, Debug)]
pub struct BenchEngineArgs {
    /// Threads for both engines.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed iterations (median reported).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Warm-up iterations.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Alternating rounds (shears, then PyTorch, N times); each side reports the median
    /// of its rounds, so a burst of load on a shared machine hits both sides alike.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Python interpreter with torch installed (e.g. bench/.venv/bin/python); omit to skip the
    /// PyTorch side.
    #[arg(long, value_name = "PYTHON")]
    pub torch_python: Option<PathBuf>,
    /// The PyTorch reference script.
    #[arg(long, default_value = "bench/torch_engine.py")]
    pub torch_script: PathBuf,
    /// ONNX models to run in shears' engine and in ONNX Runtime (the same file, input and
    /// threads; rounds alternate which side runs first).
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub onnx: Vec<PathBuf>,
    /// Batch sizes of the --onnx models.
    #[arg(long, value_name = "N,N", value_delimiter = ',', default_values_t = [1, 128])]
    pub batches: Vec<usize>,
    /// Timed iterations at batch 1 of the --onnx models (cheap passes need more to settle).
    #[arg(long, default_value_t = 50)]
    pub iters_batch1: usize,
    /// The ONNX Runtime shared library (default $ORT_DYLIB_PATH).
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Stop ONNX Runtime's intra-op threads from spin-waiting between kernels (it spins by
    /// default, which costs it time when the machine is oversubscribed).
    #[arg(long)]
    pub ort_no_spin: bool,
    /// Only the --onnx models: skip the ResNet-20, conv and PyTorch workloads.
    #[arg(long)]
    pub only_onnx: bool,
    /// Write a markdown report here (e.g. docs/results/engine.md).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `--criterion`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CriterionArg {
    /// L1 norm of the channel's weights in every member (filters and consumer slices).
    L1,
    /// L2 norm of the same.
    L2,
    /// Batch-norm scale |gamma| (Network Slimming); needs a batch norm in every group.
    #[value(alias = "bn_scale", alias = "bn-scale")]
    Bn,
    /// First-order Taylor |sum w * grad|; gradients from --taylor-images training images of
    /// --data.
    Taylor,
    /// Distance to the geometric median of the group's filters (FPGM).
    Fpgm,
    /// Seeded random scores (--seed).
    Random,
    /// LSA p-norm sensitivity of the outputs to each channel (methods §1), from --lsa-images
    /// training images of --data, aggregated over samples with --p.
    Lsa,
}

/// `--reduction`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReductionArg {
    /// Mean over the members that hold the channel.
    Mean,
    /// Sum over them.
    Sum,
    /// Maximum over them.
    Max,
}

/// `--fold`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoldArg {
    /// Fold a removed channel's constant only where the fold is exact (linear layers, unpadded
    /// convs); channels whose constant reaches a zero-padded conv are zeroed in the masked
    /// reference and dropped. The pruned model equals the masked model exactly.
    Exact,
    /// Fold every constant, also into zero-padded convs: exact in the image interior only; the
    /// border deviation is reported and --verify widens its tolerance by it.
    Interior,
}

/// `shears prune`.
#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("amount")
        .args(["ratio", "target_macs", "target_params", "speedup", "ratios_from", "target_latency"])
        .multiple(false)
))]
pub struct PruneArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelOpts,
    /// Channel-importance criterion (not needed with --plan-in or --from-skeleton).
    #[arg(long, value_enum, required_unless_present_any = ["plan_in", "from_skeleton"])]
    pub criterion: Option<CriterionArg>,
    /// Prune a model trained with `shears train --cdp/--dtc` from its filter skeleton: keep
    /// the stripes with |skeleton| > TAU as dense kernel weights, remove the dead filters,
    /// collapse residual blocks whose branch died (methods §3.5). --verify checks the pruned
    /// model against the masked skeleton network.
    #[arg(long, conflicts_with_all = ["criterion", "plan_in", "plan_out"])]
    pub from_skeleton: bool,
    /// With --from-skeleton: the static threshold (default: the TAU the model was trained
    /// with).
    #[arg(long, value_name = "TAU", requires = "from_skeleton")]
    pub skeleton_tau: Option<f32>,
    /// Fraction of each group's channels REMOVED, in [0, 1): 0.3 removes floor(0.3 * n) of a
    /// group's n channels (with --global: 30% of all prunable channels, lowest scores first).
    #[arg(long, value_name = "R")]
    pub ratio: Option<f32>,
    /// Fraction of the MACs KEPT, in (0, 1]: 0.47 keeps 47% of the MACs (2.13x fewer). Solved
    /// by bisection to within 2%.
    #[arg(long, value_name = "F")]
    pub target_macs: Option<f64>,
    /// Fraction of the parameters KEPT, in (0, 1].
    #[arg(long, value_name = "F")]
    pub target_params: Option<f64>,
    /// MACs reduction factor, at least 1: the same as --target-macs 1/X (2 halves the MACs).
    #[arg(long, value_name = "X")]
    pub speedup: Option<f64>,
    /// Per-group ratios (fractions REMOVED) from a JSON file `{"<group root>": ratio, ...}`;
    /// `shears info MODEL --groups` lists the roots. Unlisted groups are not pruned.
    #[arg(long, value_name = "FILE")]
    pub ratios_from: Option<PathBuf>,
    /// Rank channels across all groups (scores divided by their group's mean) instead of
    /// cutting the same fraction of every group.
    #[arg(long)]
    pub global: bool,
    /// Largest fraction of any one group's channels removed, in [0, 1] (default 1; a group
    /// always keeps at least one channel).
    #[arg(long, value_name = "R")]
    pub max_ratio: Option<f32>,
    /// Round each group's kept channel count up to a multiple of N.
    #[arg(long, value_name = "N")]
    pub round_to: Option<usize>,
    /// Layers (node names, comma-separated) whose channels are never removed; the classifier
    /// output is never pruned anyway.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub ignore: Vec<String>,
    /// How a channel's scores over the group's members are combined.
    #[arg(long, value_enum, default_value_t = ReductionArg::Mean)]
    pub reduction: ReductionArg,
    /// Write the pruning plan (JSON: per group, the channels removed) to this file.
    #[arg(long, value_name = "FILE", conflicts_with = "plan_in")]
    pub plan_out: Option<PathBuf>,
    /// Replay a plan written by --plan-out instead of scoring (bit-identical weights); it must
    /// have been made for this model's graph.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["criterion", "amount", "global"])]
    pub plan_in: Option<PathBuf>,
    /// How removed channels' constant contributions are folded (default exact; with
    /// --plan-in, default: the plan's).
    #[arg(long, value_enum)]
    pub fold: Option<FoldArg>,
    /// Check that the pruned model reproduces the masked model (the original with the removed
    /// channels zeroed) within 1e-4 times max(1, largest |output|), on --verify-images test
    /// images of --data (random inputs without --data); fail loudly otherwise.
    #[arg(long)]
    pub verify: bool,
    /// Images used by --verify.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub verify_images: usize,
    /// Dataset (mnist, fashion-mnist, cifar10, cifar100): accuracy before and right after
    /// pruning on its test split, Taylor gradients on its train split, --verify inputs.
    #[arg(long, value_name = "NAME")]
    pub data: Option<String>,
    #[command(flatten)]
    /// Where datasets live.
    pub data_opts: DataOpts,
    /// Evaluate accuracy on only the first N test images (default: the whole test set).
    #[arg(long, value_name = "N")]
    pub eval_limit: Option<usize>,
    /// Evaluate only the pruned model, not the original (its accuracy does not depend on the
    /// pruning; saves time over repeated runs).
    #[arg(long)]
    pub skip_before_eval: bool,
    /// Training images (class-balanced, seeded) whose gradients the Taylor criterion uses.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub taylor_images: usize,
    /// LSA: the p of the p-norm over samples (any real >= 1, or inf).
    #[arg(long, value_name = "P", default_value = "2")]
    pub p: String,
    /// LSA: training images whose sensitivities are aggregated.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub lsa_images: usize,
    /// At most N timed runs per model and batch size (default: as many as --latency-budget
    /// allows).
    #[arg(long, value_name = "N")]
    pub latency_iters: Option<usize>,
    #[command(flatten)]
    /// Where latency is measured: runtime, library, budget, batch.
    pub runtime: crate::runtime_opts::RuntimeOpts,
    /// Skip the latency measurements.
    #[arg(long)]
    pub no_latency: bool,
    /// Seed (random criterion, Taylor image subset, random verification inputs).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads for inference (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to write the pruned model (by extension: .safetensors, self-describing, or .onnx).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `shears run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelOpts,
    /// Input tensor (.npy: <f4, <f8, <f2 or |u1, C order) of shape [N, C, H, W], or [C, H, W]
    /// for one sample: NCHW as the model's input expects, already preprocessed unless
    /// --preprocess is given.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Where to write the model's output tensor (.npy, <f4, batch axis first), atomically.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// The input holds raw pixels: apply the model's preprocessing first (--scale, --mean,
    /// --std, else the file's, else the default).
    #[arg(long)]
    pub preprocess: bool,
    /// Samples per forward pass.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub batch: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Time every forward step (op type, node, input and output shapes, conv algorithm, ms,
    /// share) after one untimed warm-up pass, and print the profile (--json: `profile`).
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON object (shapes, time) instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// `shears export`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").args(["onnx", "safetensors"]).multiple(true).required(true)))]
pub struct ExportArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelOpts,
    /// Write ONNX here (opset and ops as the io crate's exporter writes them; preprocessing,
    /// architecture and dataset go into its metadata_props).
    #[arg(long, value_name = "FILE")]
    pub onnx: Option<PathBuf>,
    /// Fix the batch size in the ONNX input and output shapes (default: a symbolic batch `N`).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Write self-describing safetensors here (graph and preprocessing in the metadata; reloads
    /// with no --arch).
    #[arg(long, value_name = "FILE")]
    pub safetensors: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}
