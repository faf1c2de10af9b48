//! Command-line arguments (clap derive). Every flag has a doc line; `shears <cmd> --help` shows it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
#[derive(Args, Debug, Clone)]
pub struct ModelOpts {
    /// Model file: .safetensors (with or without an embedded graph), .th/.pth/.pt (PyTorch).
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Zoo architecture of the file when it carries no graph (e.g. resnet56, lenet5, vgg16).
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
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
}

/// `shears info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelOpts,
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
    /// Evaluate on the training split instead of the test split.
    #[arg(long)]
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
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
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

/// `shears train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Zoo architecture to train from scratch (ignored when --init is given with a graph).
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// Start from these weights instead of a fresh initialisation.
    #[arg(long, value_name = "MODEL")]
    pub init: Option<PathBuf>,
    /// Dataset: mnist, fashion-mnist, cifar10, cifar100.
    #[arg(long, value_name = "NAME")]
    pub data: String,
    #[command(flatten)]
    /// Where datasets live.
    pub data_opts: DataOpts,
    /// Epochs to train.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    pub optimizer: OptimizerArg,
    /// Learning rate (peak, after warm-up).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f32,
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
    /// Pad-crop (4 px) and horizontal-flip augmentation; default on for CIFAR, off for MNIST.
    #[arg(long)]
    pub augment: Option<bool>,
    /// Stop when validation accuracy has not improved for N epochs.
    #[arg(long, value_name = "N")]
    pub early_stop: Option<usize>,
    /// Train on only the first N training images (a class-balanced subset).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Validate on only N test images (class-balanced).
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
    /// Where to write the trained model (self-describing safetensors).
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
    /// forward/backward, against the PyTorch reference script run in the same invocation.
    Engine {
        /// Threads for both engines.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Timed iterations (median reported).
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Warm-up iterations.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Python interpreter with torch installed (e.g. bench/.venv/bin/python); omit to skip the
        /// PyTorch side.
        #[arg(long, value_name = "PYTHON")]
        torch_python: Option<PathBuf>,
        /// The PyTorch reference script.
        #[arg(long, default_value = "bench/torch_engine.py")]
        torch_script: PathBuf,
        /// Write a markdown report here (e.g. docs/results/engine.md).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}
