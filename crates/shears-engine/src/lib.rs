//! The compute engine of shears: runs a [`shears_ir::Graph`] forward and backward on the CPU.
//!
//! A [`Network`] pairs a graph with its parameters and runs it in [`Mode::Eval`] or
//! [`Mode::Train`]. It knows nothing of pruning or files: analysis reaches activations and
//! gradients only through capture ([`Network::forward_capture`], [`ForwardRequest`]),
//! backward ([`Network::backward`], [`Network::backward_from`]) and hooks
//! ([`Network::add_grad_hook`], [`StepHook`]).
//!
//! # Layout
//! Tensors at the boundary are PyTorch's: activations NCHW (`[N, F]` for vectors), conv
//! weights OIHW, linear weights `[out, in]`, and every parameter keeps its IR name
//! (`<node>.weight`, `.bias`, `.running_mean`, `.running_var`). Inside, activations are
//! channels-last: a node with per-sample shape `[C, rest...]` is stored as `[N, prod(rest), C]`
//! (NHWC for feature maps). Inputs are transposed on the way in and outputs, captures and
//! activation gradients on the way out. `Flatten` produces PyTorch's C-major feature order by
//! transposing, so a following `Linear` uses its weight unchanged. Parameters are kept in
//! PyTorch layout (what [`Network::weights`], hooks and optimizers see, bit-exact); conv
//! weights are additionally packed into the kernels' layout on demand and the packs are cached
//! until the weight changes.
//!
//! # Kernels and threads
//! Stride-1 convolutions run as shifted GEMMs over a zero-padded NHWC copy of each image (no
//! im2col; with one group, the taps of a kernel row merge into one product over overlapping
//! rows); strided convolutions and small maps use blocked im2col; depthwise-like convolutions
//! use direct loops (see [`kernels::conv`]). Every kernel goes through the [`Backend`] trait;
//! [`CpuBackend`] is the only implementation. Work is split across the batch with rayon, and
//! each GEMM runs single-threaded. [`Network::set_threads`] runs on a private pool of a given
//! size; by default rayon's global pool is used, which honours `RAYON_NUM_THREADS`.
//!
//! # Determinism
//! Results are bit-identical for any thread count: reductions over the batch (weight and bias
//! gradients, batch-norm statistics) are summed per fixed chunk of images or rows, whose
//! boundaries depend only on the batch size, and the chunks are then added in order. Nothing
//! uses atomics or a scheduling-dependent order. Dropout masks are a counter-based function of
//! the seed ([`Network::set_seed`]), the step and the element index.
//!
//! # The tape
//! The graph is the tape. A recording forward ([`Network::forward_train`],
//! [`Network::forward_recorded`], or [`ForwardRequest::recording`]) keeps only what backward
//! needs: a conv's or linear's input (only when its weight is trainable and not frozen), a
//! batch norm's input and statistics, a ReLU's output, max-pool argmaxes. Values nobody needs
//! are returned to a workspace as soon as their last consumer has run, and kept values as soon
//! as backward has consumed them; buffers are reused across steps. Backward computes the
//! gradients of every trainable, unfrozen parameter and of any requested activation (an input
//! node gives d loss / d input), and can be seeded at several outputs or captured inner nodes
//! when the loss is computed outside. Frozen parameters get no gradient and no weight-gradient
//! work, but input gradients still flow through their layers. Feeding an inner node
//! ([`ForwardRequest::with_feed`]) starts the pass there, so features computed once can train
//! a head cheaply.
//!
//! # Hooks and optimizers
//! [`Network::step`] runs the registered hooks, which may change gradients and parameters
//! (e.g. mask pruned filters), then an [`Optimizer`] ([`Sgd`], [`Adam`]) on each trainable,
//! unfrozen parameter, then the hooks' `after_step`. Batch-norm running statistics are never
//! touched by optimizers. Optimizer state is keyed by parameter name and serialisable.
//!
//! # Fusion
//! In [`Mode::Eval`] without a tape, a conv whose only consumer is a batch norm (itself
//! optionally followed by its only consumer, a ReLU) runs as one convolution with the BN folded
//! into its weights and bias and the ReLU in the store epilogue; the folded weights are cached
//! until any of the tensors involved changes. In every mode a batch norm or an add followed by
//! its only consumer, a ReLU, runs as one pass. A captured node is never fused away.
//!
//! ```
//! use shears_engine::{cross_entropy, BackwardOptions, Mode, Network, Sgd, SgdConfig};
//! use shears_ir::{BatchNorm2d, Conv2d, GraphBuilder, Linear, Op, Tensor, Weights};
//!
//! let mut b = GraphBuilder::new();
//! let x = b.input("input", &[3, 8, 8]).unwrap();
//! let c = b.add("conv", Conv2d::new(3, 4, 3).with_padding(1), &[x]).unwrap();
//! let n = b.add("bn", BatchNorm2d::new(4), &[c]).unwrap();
//! let r = b.add("relu", Op::Relu, &[n]).unwrap();
//! let p = b.add("pool", Op::GlobalAvgPool, &[r]).unwrap();
//! let fc = b.add("fc", Linear { in_features: 4, out_features: 2, bias: true }, &[p]).unwrap();
//! let graph = b.finish(&[fc]).unwrap();
//!
//! // One tensor per parameter and buffer, PyTorch layout.
//! let mut w = Weights::new();
//! for (_, name, spec) in graph.param_specs() {
//!     let len: usize = spec.shape.iter().product();
//!     let fill = if name.ends_with("running_var") || name == "bn.weight" { 1.0 } else { 0.1 };
//!     w.insert(name, Tensor::full(&spec.shape, fill));
//! }
//! let mut net = Network::new(graph, &w).unwrap();
//!
//! let x = Tensor::full(&[2, 3, 8, 8], 0.5);
//! let logits = net.forward(&x, Mode::Eval).unwrap();
//! assert_eq!(logits.shape(), &[2, 2]);
//!
//! // One training step.
//! let mut opt = Sgd::new(SgdConfig::new(0.1).with_momentum(0.9)).unwrap();
//! let out = net.forward_train(&x).unwrap();
//! let (loss, dlogits) = cross_entropy(&out, &[0, 1], 0.0).unwrap();
//! let mut grads = net.backward(&dlogits, &BackwardOptions::new()).unwrap();
//! assert_eq!(grads.params.get("conv.weight").unwrap().shape(), &[4, 3, 3, 3]);
//! net.step(&mut opt, &mut grads).unwrap();
//! assert!(loss > 0.0);
//! ```
#![deny(missing_docs)]

pub mod backend;
mod error;
pub mod kernels;
mod loss;
mod network;
pub mod optim;
mod params;
mod pool;

pub use backend::{Backend, CpuBackend};
pub use error::{EngineError, Result};
pub use loss::{
    accuracy, cross_entropy, distillation, mse, softmax, top_k_accuracy, DistillConfig,
};
pub use network::{
    check_activation_sizes, BackwardOptions, ForwardOutput, ForwardRequest, GradHookFn, Gradients,
    HookId, Layout, Mode, Network, Profile, RngState, StepHook, StepTime, MAX_ACTIVATION_BYTES,
};
pub use optim::{Adam, AdamConfig, AdamParamState, AdamState, Optimizer, Sgd, SgdConfig, SgdState};
pub use params::ParamStore;
