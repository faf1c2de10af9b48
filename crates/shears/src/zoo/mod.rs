//! Reference CNNs built as [`Graph`]s whose parameter names are those of the reference
//! checkpoints.
//!
//! Every architecture is a value of [`Arch`]. [`build`] turns it and a [`ZooConfig`] into a
//! validated graph; node names equal the checkpoint prefixes (the conv node of
//! `layer1.0.conv1.weight` is `layer1.0.conv1`), so a checkpoint loads by name with no mapping.
//! Parameter-free nodes (ReLU, pools, adds, shortcuts, flatten) get descriptive unique names.
//! [`Arch::preprocessing`] gives the input normalisation the reference weights expect, and
//! [`init_weights`] draws fresh weights with the initialisation of the architecture's reference
//! code, seeded and deterministic.
//!
//! | family | archs | reference |
//! |---|---|---|
//! | CIFAR ResNet (option-A shortcuts) | `resnet20/32/44/56/110` | akamaster/pytorch_resnet_cifar10 |
//! | ImageNet ResNet | `resnet18/34/50` | torchvision |
//! | VGG with batch norm | `vgg11/13/16/19` | torchvision `vgg*_bn` |
//! | DenseNet | `densenet121`, `densenet_bc_cifar` | torchvision; Huang et al. DenseNet-BC (L=100, k=12) |
//! | LeNet-5 (advertorch) | `lenet5` | advertorch `LeNet5` |
//! | Conv-4 | `conv4` | the SBPF paper's MNIST model (widths proposed in methods.md) |
//! | MLPerf Tiny ResNet-8 | `mlperf_tiny_resnet8` | mlcommons/tiny (Keras) |
//!
//! ```
//! use shears::zoo::{build, Arch, VggHead};
//! let mut cfg = Arch::Vgg16.default_config();
//! cfg.vgg_head = VggHead::ImageNet;
//! cfg.input_hw = (224, 224);
//! cfg.num_classes = 1000;
//! let g = build(Arch::Vgg16, &cfg).unwrap();
//! assert_eq!(g.n_params(), 138_365_992);
//! ```

mod cifar_resnet;
mod conv4;
mod densenet;
mod init;
mod lenet;
mod mlperf;
mod resnet;
mod vgg;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use shears_ir::{Graph, GraphBuilder, IrError, NodeId, Op};

pub use init::{init_weights, init_weights_with, InitScheme};

/// A zoo architecture.
///
/// Parse one from its name with [`FromStr`] (`"resnet56".parse::<Arch>()`); [`Display`](fmt::Display)
/// prints the canonical name, which parses back. Serialised (serde) as that name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// CIFAR ResNet-20 (3 BasicBlocks per stage, 0.27M parameters).
    ResNet20,
    /// CIFAR ResNet-32 (5 blocks per stage).
    ResNet32,
    /// CIFAR ResNet-44 (7 blocks per stage).
    ResNet44,
    /// CIFAR ResNet-56 (9 blocks per stage).
    ResNet56,
    /// CIFAR ResNet-110 (18 blocks per stage).
    ResNet110,
    /// torchvision ResNet-18 (BasicBlock, 2-2-2-2).
    ResNet18,
    /// torchvision ResNet-34 (BasicBlock, 3-4-6-3).
    ResNet34,
    /// torchvision ResNet-50 (Bottleneck v1.5, 3-4-6-3).
    ResNet50,
    /// torchvision DenseNet-121 (growth 32, blocks 6-12-24-16).
    DenseNet121,
    /// DenseNet-BC for CIFAR (depth 100, growth 12, three blocks of 16 bottleneck layers).
    DenseNetBcCifar,
    /// VGG-11 with batch norm (torchvision config A).
    Vgg11,
    /// VGG-13 with batch norm (config B).
    Vgg13,
    /// VGG-16 with batch norm (config D).
    Vgg16,
    /// VGG-19 with batch norm (config E).
    Vgg19,
    /// Conv-4 for MNIST: four conv-BN-ReLU layers (32-32-64-64) and one linear layer.
    Conv4,
    /// advertorch's MNIST "LeNet5" (two convs, two linear layers).
    LeNet5,
    /// MLPerf Tiny image-classification ResNet-8 (Keras, CIFAR-10).
    MlperfResNet8,
}

const ALL_ARCHS: [Arch; 17] = [
    Arch::ResNet20,
    Arch::ResNet32,
    Arch::ResNet44,
    Arch::ResNet56,
    Arch::ResNet110,
    Arch::ResNet18,
    Arch::ResNet34,
    Arch::ResNet50,
    Arch::DenseNet121,
    Arch::DenseNetBcCifar,
    Arch::Vgg11,
    Arch::Vgg13,
    Arch::Vgg16,
    Arch::Vgg19,
    Arch::Conv4,
    Arch::LeNet5,
    Arch::MlperfResNet8,
];

/// The model families of the zoo; each has one builder file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    CifarResNet,
    ResNet,
    Vgg,
    DenseNet,
    LeNet5,
    Conv4,
    Mlperf,
}

impl Arch {
    /// Every architecture, in declaration order.
    pub fn all() -> &'static [Arch] {
        &ALL_ARCHS
    }

    /// The canonical name (what [`Display`](fmt::Display) prints and [`FromStr`] accepts).
    pub fn name(&self) -> &'static str {
        match self {
            Arch::ResNet20 => "resnet20",
            Arch::ResNet32 => "resnet32",
            Arch::ResNet44 => "resnet44",
            Arch::ResNet56 => "resnet56",
            Arch::ResNet110 => "resnet110",
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
            Arch::DenseNet121 => "densenet121",
            Arch::DenseNetBcCifar => "densenet_bc_cifar",
            Arch::Vgg11 => "vgg11",
            Arch::Vgg13 => "vgg13",
            Arch::Vgg16 => "vgg16",
            Arch::Vgg19 => "vgg19",
            Arch::Conv4 => "conv4",
            Arch::LeNet5 => "lenet5",
            Arch::MlperfResNet8 => "mlperf_tiny_resnet8",
        }
    }

    fn aliases(&self) -> &'static [&'static str] {
        match self {
            Arch::DenseNetBcCifar => &["densenet-bc", "densenet_bc", "densenet-bc-cifar"],
            Arch::Vgg11 => &["vgg11_bn"],
            Arch::Vgg13 => &["vgg13_bn"],
            Arch::Vgg16 => &["vgg16_bn"],
            Arch::Vgg19 => &["vgg19_bn"],
            Arch::LeNet5 => &["mnist_lenet5"],
            Arch::MlperfResNet8 => &["resnet8", "mlperf_resnet8"],
            _ => &[],
        }
    }

    fn family(&self) -> Family {
        match self {
            Arch::ResNet20 | Arch::ResNet32 | Arch::ResNet44 | Arch::ResNet56 | Arch::ResNet110 => {
                Family::CifarResNet
            }
            Arch::ResNet18 | Arch::ResNet34 | Arch::ResNet50 => Family::ResNet,
            Arch::DenseNet121 | Arch::DenseNetBcCifar => Family::DenseNet,
            Arch::Vgg11 | Arch::Vgg13 | Arch::Vgg16 | Arch::Vgg19 => Family::Vgg,
            Arch::Conv4 => Family::Conv4,
            Arch::LeNet5 => Family::LeNet5,
            Arch::MlperfResNet8 => Family::Mlperf,
        }
    }

    /// The configuration the reference model uses.
    ///
    /// CIFAR models (CIFAR ResNets, DenseNet-BC, VGG, MLPerf ResNet-8): 10 classes, 3x32x32.
    /// torchvision ResNet and DenseNet-121: 1000 classes, 3x224x224. Conv-4 and LeNet-5: 10
    /// classes, 1x28x28. VGG uses the CIFAR head ([`VggHead::Cifar`]); dropout 0.5 and the
    /// standard (ImageNet) stem everywhere.
    pub fn default_config(&self) -> ZooConfig {
        let (num_classes, in_channels, input_hw) = match self.family() {
            Family::ResNet => (1000, 3, (224, 224)),
            Family::DenseNet if *self == Arch::DenseNet121 => (1000, 3, (224, 224)),
            Family::Conv4 | Family::LeNet5 => (10, 1, (28, 28)),
            Family::CifarResNet | Family::DenseNet | Family::Vgg | Family::Mlperf => {
                (10, 3, (32, 32))
            }
        };
        ZooConfig {
            num_classes,
            in_channels,
            input_hw,
            vgg_head: VggHead::Cifar,
            small_input_stem: false,
            dropout: 0.5,
        }
    }

    /// The input preprocessing the reference weights expect:
    /// `x[c] = (pixel * scale - mean[c]) / std[c]`.
    ///
    /// - CIFAR ResNets (akamaster): `1/255`, then the ImageNet mean and std (as the upstream
    ///   trainer does, not the CIFAR statistics).
    /// - LeNet-5 (advertorch): `1/255`, mean 0, std 1.
    /// - MLPerf ResNet-8: raw pixel values (scale 1, mean 0, std 1).
    /// - Conv-4 (MNIST, trained by shears): `1/255` and the usual MNIST statistics (mean
    ///   0.1307, std 0.3081); the ImageNet constants have three channels and do not apply.
    /// - Everything else (torchvision ResNet / DenseNet / VGG, DenseNet-BC): `1/255` and the
    ///   ImageNet mean and std; for the CIFAR-trained ones this is a documented choice that
    ///   matches the shared CIFAR ResNets.
    pub fn preprocessing(&self) -> Preprocess {
        const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
        const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
        match self.family() {
            Family::LeNet5 => Preprocess {
                scale: 1.0 / 255.0,
                mean: vec![0.0],
                std: vec![1.0],
            },
            Family::Mlperf => Preprocess {
                scale: 1.0,
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
            },
            Family::Conv4 => Preprocess {
                scale: 1.0 / 255.0,
                mean: vec![0.1307],
                std: vec![0.3081],
            },
            Family::CifarResNet | Family::ResNet | Family::Vgg | Family::DenseNet => Preprocess {
                scale: 1.0 / 255.0,
                mean: IMAGENET_MEAN.to_vec(),
                std: IMAGENET_STD.to_vec(),
            },
        }
    }

    /// The data set the reference model is trained on: `"cifar10"`, `"mnist"` or
    /// `"imagenet"`.
    pub fn dataset_hint(&self) -> &'static str {
        match self.family() {
            Family::CifarResNet | Family::Vgg | Family::Mlperf => "cifar10",
            Family::DenseNet if *self == Arch::DenseNetBcCifar => "cifar10",
            Family::ResNet | Family::DenseNet => "imagenet",
            Family::Conv4 | Family::LeNet5 => "mnist",
        }
    }

    /// The weight initialisation of the architecture's reference code (see [`InitScheme`]).
    pub fn init_scheme(&self) -> InitScheme {
        match self.family() {
            Family::CifarResNet => InitScheme::AkamasterCifarResNet,
            Family::ResNet => InitScheme::TorchvisionResNet,
            Family::Vgg => InitScheme::TorchvisionVgg,
            Family::DenseNet => InitScheme::TorchvisionDenseNet,
            Family::Conv4 | Family::LeNet5 => InitScheme::TorchDefault,
            Family::Mlperf => InitScheme::KerasHeNormal,
        }
    }

    fn valid_names() -> String {
        let mut v = Vec::new();
        for a in Arch::all() {
            v.push(a.name());
            v.extend_from_slice(a.aliases());
        }
        v.join(", ")
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ZooError;

    /// Parses a canonical name or an alias, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Arch::all()
            .iter()
            .find(|a| a.name() == lower || a.aliases().contains(&lower.as_str()))
            .copied()
            .ok_or_else(|| ZooError::UnknownArch {
                name: s.to_string(),
                valid: Arch::valid_names(),
            })
    }
}

impl Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which classifier head a VGG gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VggHead {
    /// The usual CIFAR head: flatten the final map (512x1x1 for a 32x32 input) and one
    /// `classifier` Linear(512 * h * w, classes).
    #[default]
    Cifar,
    /// torchvision's head: flatten → `classifier.0` Linear(512 * h * w, 4096) → ReLU → Dropout →
    /// `classifier.3` Linear(4096, 4096) → ReLU → Dropout → `classifier.6` Linear(4096,
    /// classes). torchvision puts an adaptive 7x7 average pool before the flatten; the zoo does
    /// not: a 224x224 input already ends in a 512x7x7 map (25088 inputs, same as torchvision),
    /// and a 32x32 input ends in 512x1x1, so the first dense layer is 512 → 4096 instead of
    /// upsampling the map to 7x7.
    ImageNet,
}

/// How to build a zoo architecture. Start from [`Arch::default_config`] and change fields.
///
/// Fields that do not apply to an architecture are ignored by it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZooConfig {
    /// Output classes (logits); at least 1. Default 10, or 1000 for ImageNet architectures.
    pub num_classes: usize,
    /// Input channels; at least 1. Default 3, or 1 for MNIST architectures.
    pub in_channels: usize,
    /// Input `(height, width)` in pixels. Default (32, 32), (224, 224) for ImageNet
    /// architectures, (28, 28) for MNIST ones. Each builder states its minimum.
    pub input_hw: (usize, usize),
    /// VGG only: the classifier head. Default [`VggHead::Cifar`].
    pub vgg_head: VggHead,
    /// torchvision ResNet and DenseNet-121 only: replace the 7x7 stride-2 stem conv and its
    /// max pool with a 3x3 stride-1 conv (padding 1) and no pool, for 32x32 inputs. Default
    /// false.
    pub small_input_stem: bool,
    /// VGG ImageNet head only: dropout probability in `[0, 1)`. Default 0.5.
    pub dropout: f32,
}

/// Input normalisation: `x[c] = (pixel * scale - mean[c]) / std[c]`, one `mean`/`std` entry
/// per input channel. Stored in model metadata, hence serde.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Factor applied to the raw pixel value (`1/255` maps 0..255 to 0..1; 1 keeps raw values).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Vec<f32>,
}

/// Errors of the zoo.
#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    /// A name that is no architecture.
    #[error("unknown architecture {name:?} (valid: {valid})")]
    UnknownArch {
        /// The name given.
        name: String,
        /// The accepted names, comma separated.
        valid: String,
    },
    /// A configuration field has a value the architecture cannot use.
    #[error("{arch}: invalid {field} {value}: {reason}")]
    InvalidConfig {
        /// The architecture being built.
        arch: Arch,
        /// The [`ZooConfig`] field at fault.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        reason: String,
    },
    /// The input is too small for the architecture's downsampling.
    #[error(
        "{arch}: input {}x{} is too small, needs at least {}x{} ({reason})",
        input_hw.0, input_hw.1, min_hw.0, min_hw.1
    )]
    InputTooSmall {
        /// The architecture being built.
        arch: Arch,
        /// The configured input `(height, width)`.
        input_hw: (usize, usize),
        /// The smallest input the architecture accepts.
        min_hw: (usize, usize),
        /// Why.
        reason: &'static str,
    },
    /// The IR rejected a node (a bug in a builder, since configs are validated first).
    #[error("{arch}: building the graph failed: {source}")]
    Graph {
        /// The architecture being built.
        arch: Arch,
        /// The IR error.
        source: IrError,
    },
}

/// Builds the graph of `arch` with configuration `cfg`.
///
/// The graph has one input node `input` of shape `[in_channels, h, w]` and one output, the
/// logits `[num_classes]`. The configuration is validated first; an error names the
/// architecture and the value at fault.
pub fn build(arch: Arch, cfg: &ZooConfig) -> Result<Graph, ZooError> {
    match arch.family() {
        Family::CifarResNet => cifar_resnet::build(arch, cfg),
        Family::ResNet => resnet::build(arch, cfg),
        Family::Vgg => vgg::build(arch, cfg),
        Family::DenseNet => densenet::build(arch, cfg),
        Family::LeNet5 => lenet::build(arch, cfg),
        Family::Conv4 => conv4::build(arch, cfg),
        Family::Mlperf => mlperf::build(arch, cfg),
    }
}

/// A [`GraphBuilder`] that knows which architecture it builds, so IR errors name it.
pub(crate) struct Net {
    arch: Arch,
    b: GraphBuilder,
}

impl Net {
    /// Checks the fields every architecture uses and starts a graph with its `input` node.
    ///
    /// `min_side` is the smallest input side the architecture accepts; `why` says why.
    pub(crate) fn start(
        arch: Arch,
        cfg: &ZooConfig,
        min_side: usize,
        why: &'static str,
    ) -> Result<(Net, NodeId), ZooError> {
        if cfg.num_classes == 0 {
            return Err(invalid(arch, "num_classes", 0, "must be at least 1"));
        }
        if cfg.in_channels == 0 {
            return Err(invalid(arch, "in_channels", 0, "must be at least 1"));
        }
        let (h, w) = cfg.input_hw;
        if h < min_side || w < min_side {
            return Err(ZooError::InputTooSmall {
                arch,
                input_hw: cfg.input_hw,
                min_hw: (min_side, min_side),
                reason: why,
            });
        }
        let mut net = Net {
            arch,
            b: GraphBuilder::new(),
        };
        let x = net.add(
            "input",
            Op::Input {
                shape: vec![cfg.in_channels, h, w],
            },
            &[],
        )?;
        Ok((net, x))
    }

    /// Adds a node.
    pub(crate) fn add(
        &mut self,
        name: impl Into<String>,
        op: impl Into<Op>,
        inputs: &[NodeId],
    ) -> Result<NodeId, ZooError> {
        self.b
            .add(name, op, inputs)
            .map_err(|source| ZooError::Graph {
                arch: self.arch,
                source,
            })
    }

    /// Per-sample shape of an added node.
    pub(crate) fn shape(&self, id: NodeId) -> &[usize] {
        self.b.shape(id)
    }

    /// Channels of an added `[C, H, W]` (or `[F]`) node.
    pub(crate) fn channels(&self, id: NodeId) -> usize {
        self.b.shape(id)[0]
    }

    /// Features of an added node once flattened.
    pub(crate) fn numel(&self, id: NodeId) -> usize {
        self.b.shape(id).iter().product()
    }

    /// Finishes the graph with `output` as its only output.
    pub(crate) fn finish(self, output: NodeId) -> Result<Graph, ZooError> {
        let arch = self.arch;
        self.b
            .finish(&[output])
            .map_err(|source| ZooError::Graph { arch, source })
    }
}

/// An [`ZooError::InvalidConfig`].
pub(crate) fn invalid(
    arch: Arch,
    field: &'static str,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> ZooError {
    ZooError::InvalidConfig {
        arch,
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}
