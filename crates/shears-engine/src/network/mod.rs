//! The executor: runs a [`Graph`] with its parameters, records the tape, runs backward and
//! applies optimizer steps with hooks.
//!
//! One concept per file, all of them `impl Network` blocks or the types they share:
//! - `mod.rs`: [`Network`], its construction, per-node geometry and layout conversions;
//! - `request.rs`: the public request and response types ([`ForwardRequest`], [`Gradients`]...);
//! - `weights.rs`: reading, replacing and freezing parameters;
//! - `hooks.rs`: gradient and step hooks and [`Network::step`];
//! - `rng.rs`: the dropout random stream;
//! - `step.rs`: `Step`, the unit of execution (a node or a fused chain);
//! - `plan.rs`: the planner, from the needed nodes to steps (fusion, chains, planes);
//! - `fold.rs`: the packed and BN-folded weight caches;
//! - `forward.rs`: a forward pass (feeds, steps, captures, outputs);
//! - `exec.rs`: one forward step's kernels, and batch norm forward;
//! - `tape.rs`: what a recording pass keeps for backward;
//! - `backward.rs`: backward passes, one function per step and op kind;
//! - `profile.rs`: timing.

mod backward;
mod binary;
mod exec;
mod fold;
mod forward;
mod hooks;
mod layer_norm;
mod limits;
mod plan;
mod profile;
mod request;
mod rng;
mod step;
mod tape;
mod weights;

use std::sync::Arc;

use shears_ir::{Graph, NodeId, Op, Tensor, Weights};

use crate::backend::{Backend, CpuBackend};
use crate::error::{EngineError, Result};
use crate::kernels::conv::ConvGeom;
use crate::kernels::elementwise::ShortcutGeom;
use crate::kernels::pool::PoolGeom;
use crate::params::ParamStore;
use crate::pool::BufferPool;

use fold::{FusedCache, PackCache};
use hooks::Hook;
use plan::{residual_pair_geos, PlanKey};
use step::Step;
use tape::Tape;

pub use hooks::{GradHookFn, HookId, StepHook};
pub use limits::{check_activation_sizes, MAX_ACTIVATION_BYTES};
pub use profile::{Profile, StepTime};
pub use request::{BackwardOptions, ForwardOutput, ForwardRequest, Gradients, Layout, Mode};
pub use rng::RngState;

/// Per-node geometry, computed once from the graph.
#[derive(Clone, Debug)]
enum Geo {
    Plain,
    Conv(ConvGeom),
    Pool(PoolGeom),
    Shortcut(ShortcutGeom),
}

/// A graph with its parameters, ready to run forward and backward.
///
/// See the crate documentation for layout, threading, the tape, hooks and fusion.
pub struct Network {
    graph: Graph,
    consumers: Vec<Vec<NodeId>>,
    geo: Vec<Geo>,
    /// Per node `(c, s)`: channels (first per-sample axis) and the product of the others.
    cs: Vec<(usize, usize)>,
    params: ParamStore,
    packs: Vec<Option<PackCache>>,
    fused: Vec<Option<FusedCache>>,
    backend: Arc<dyn Backend>,
    pool: BufferPool,
    threads: Option<Arc<rayon::ThreadPool>>,
    rng: RngState,
    hooks: Vec<(HookId, Hook)>,
    next_hook: u64,
    tape: Option<Tape>,
    profile: Option<Profile>,
    /// Profile entries per step (named by node) rather than per step type.
    profile_steps: bool,
    /// Run chainable transposed conv pairs as one step (inference; on by default).
    chain_convs: bool,
    /// Add residual sums inside conv steps (inference; on by default).
    fuse_residuals: bool,
    /// Per conv of a residual block's pair: the geometry it runs with when the pair runs as
    /// one chain with its shortcut (`conv::residual_pair`; inference only).
    chain_geo: Vec<Option<ConvGeom>>,
    /// The last pass's steps and what they were planned for (a repeated request, such as
    /// every batch of an evaluation, is not planned again).
    plan_cache: Option<(PlanKey, Vec<Step>)>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("nodes", &self.graph.len())
            .field("params", &self.params.len())
            .field("backend", &self.backend.name())
            .field("hooks", &self.hooks.len())
            .field("recorded", &self.tape.is_some())
            .finish()
    }
}

impl Network {
    /// Builds a network on the CPU backend. `weights` must hold exactly the tensors of
    /// `graph.param_specs()` with their shapes; errors name the tensor at fault.
    pub fn new(graph: Graph, weights: &Weights) -> Result<Self> {
        Self::with_backend(graph, weights, Arc::new(CpuBackend))
    }

    /// Builds a network on the given backend.
    pub fn with_backend(
        graph: Graph,
        weights: &Weights,
        backend: Arc<dyn Backend>,
    ) -> Result<Self> {
        check_activation_sizes(&graph, 1, MAX_ACTIVATION_BYTES)?;
        let params = ParamStore::new(&graph, weights)?;
        let consumers = graph.consumers();
        let mut geo = Vec::with_capacity(graph.len());
        let mut cs = Vec::with_capacity(graph.len());
        for id in graph.ids() {
            let shape = graph.shape(id);
            cs.push((shape[0], shape[1..].iter().product::<usize>()));
            let node = graph.node(id);
            let in_shape = graph.input_shapes(id).first().map(|s| s.to_vec());
            let chw = || {
                let s = in_shape
                    .as_ref()
                    .expect("op with spatial geometry has an input");
                (s[0], s[1], s[2])
            };
            geo.push(match &node.op {
                Op::Conv2d(c) => {
                    let (_, h, w) = chw();
                    Geo::Conv(ConvGeom::new(c, h, w).expect("conv shape validated by the graph"))
                }
                Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                    let (c, h, w) = chw();
                    Geo::Pool(PoolGeom::new(p, c, h, w).expect("pool shape validated by the graph"))
                }
                Op::ShortcutA(s) => {
                    let (c, h, w) = chw();
                    Geo::Shortcut(ShortcutGeom {
                        c,
                        h,
                        w,
                        stride: s.stride,
                        pad_before: s.pad_before,
                        pad_after: s.pad_after,
                    })
                }
                _ => Geo::Plain,
            });
        }
        let nn = graph.len();
        let chain_geo = residual_pair_geos(&graph, &consumers, &geo);
        Ok(Network {
            graph,
            consumers,
            geo,
            chain_geo,
            cs,
            params,
            packs: (0..nn).map(|_| None).collect(),
            fused: (0..nn).map(|_| None).collect(),
            backend,
            pool: BufferPool::default(),
            threads: None,
            chain_convs: true,
            fuse_residuals: true,
            plan_cache: None,
            rng: RngState {
                seed: 0,
                counter: 0,
            },
            hooks: Vec::new(),
            next_hook: 0,
            tape: None,
            profile: None,
            profile_steps: false,
        })
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The parameters and buffers.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// Mutable access to the parameters and buffers (changes invalidate the weight caches).
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    /// Runs the kernels on a private pool of `threads` threads, or on rayon's global pool
    /// (which honours `RAYON_NUM_THREADS`) with `None`.
    pub fn set_threads(&mut self, threads: Option<usize>) -> Result<()> {
        self.threads = match threads {
            None => None,
            Some(0) => return Err(EngineError::Config("thread count must be positive".into())),
            Some(t) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .map_err(|e| EngineError::Config(format!("thread pool: {e}")))?,
            )),
        };
        Ok(())
    }

    /// The number of threads the kernels run on.
    pub fn num_threads(&self) -> usize {
        self.threads
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    /// Turns the chaining of transposed conv pairs in inference on (the default) or off. Both
    /// give the same sums; off is for measuring what chaining saves and testing it.
    pub fn set_conv_chains(&mut self, on: bool) {
        self.chain_convs = on;
    }

    /// Turns on (the default) or off the residual sums inside conv steps in inference: a
    /// conv + BN whose result is added to an earlier value and rectified runs as one step,
    /// and chained residual blocks hand their maps over as channel-major planes. Both give the same
    /// sums; off is for measuring what the fusion saves and testing it.
    pub fn set_residual_fusion(&mut self, on: bool) {
        self.fuse_residuals = on;
    }

    /// Drops cached buffers and weight caches, returning their memory.
    pub fn release_memory(&mut self) {
        self.tape = None;
        self.pool = BufferPool::default();
        self.packs.iter_mut().for_each(|p| *p = None);
        self.fused.iter_mut().for_each(|p| *p = None);
    }

    fn check_node(&self, id: NodeId) -> Result<()> {
        if id.0 < self.graph.len() {
            Ok(())
        } else {
            Err(EngineError::UnknownNode(id))
        }
    }

    fn first_input(&self) -> Result<NodeId> {
        self.graph
            .inputs()
            .first()
            .copied()
            .ok_or_else(|| EngineError::Config("graph has no input".into()))
    }

    fn recycle(&mut self, vals: Vec<Option<Vec<f32>>>) {
        for v in vals.into_iter().flatten() {
            self.pool.give(v);
        }
    }

    fn batch_shape(&self, n: usize, id: NodeId) -> Vec<usize> {
        let mut s = vec![n];
        s.extend_from_slice(self.graph.shape(id));
        s
    }

    /// The per-sample shape of node `id`'s tensors in `layout`: the graph's shape for channels
    /// first; the channel axis moved last for channels last.
    pub fn per_sample_shape(&self, id: NodeId, layout: Layout) -> Vec<usize> {
        let shape = self.graph.shape(id);
        match layout {
            Layout::ChannelsFirst => shape.to_vec(),
            Layout::ChannelsLast => {
                let mut v = shape.get(1..).unwrap_or(&[]).to_vec();
                v.extend(shape.first().copied());
                v
            }
        }
    }

    /// Node `id`'s channels-last buffer as a tensor in `layout`.
    fn to_tensor_in(&self, n: usize, id: NodeId, buf: &[f32], layout: Layout) -> Tensor {
        match layout {
            Layout::ChannelsFirst => self.to_tensor(n, id, buf),
            Layout::ChannelsLast => {
                let mut shape = vec![n];
                shape.extend(self.per_sample_shape(id, layout));
                Tensor::new(shape, buf.to_vec()).expect("shape and length agree by construction")
            }
        }
    }

    fn numel(&self, n: usize, id: NodeId) -> usize {
        let (c, s) = self.cs[id.0];
        n * c * s
    }

    /// Converts a channels-last buffer of node `id` to a PyTorch-layout tensor.
    fn to_tensor(&self, n: usize, id: NodeId, buf: &[f32]) -> Tensor {
        let (c, s) = self.cs[id.0];
        let mut data = vec![0.0; n * c * s];
        self.backend
            .to_channels_first(n, s, c, buf, &mut data, false);
        Tensor::new(self.batch_shape(n, id), data).expect("shape and length agree by construction")
    }
}
