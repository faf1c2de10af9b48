//! CDP + DTC sparse training (methods §3.3 to §3.5) and pruning from the trained filter
//! skeleton.
//!
//! **The skeleton.** Every convolution gets a filter skeleton `FS` (`[C_out, kh, kw]`, one
//! value per *stripe*: a filter and a kernel position), initialised to 1 and multiplied into the
//! kernel, broadcast over the input channels: the convolution uses `K = W ⊙ FS`.
//!
//! **How it is trained on the engine (exact, no new op).** The network's `<conv>.weight` slot
//! holds the effective kernel `K`, so every forward pass (training, evaluation, a saved model)
//! computes exactly the skeleton network, and a skeleton of ones gives bit-identical outputs
//! (`w * 1.0 == w`). `W` and `FS` live in a [`StepHook`] registered by [`attach`]. Backward
//! gives `∂L/∂K`; before the optimizer step the hook applies the chain rule,
//! `∂L/∂W = ∂L/∂K ⊙ FS` and `∂L/∂FS[c,h,w] = Σ_i ∂L/∂K[c,i,h,w] · W[c,i,h,w]`, adds the CDP
//! penalty gradients ([`penalty`]), applies the threshold ([`dtc`]) to the skeleton values and
//! gradients and to the batch norm of dead filters, and puts `W` and `∂L/∂W` in the kernel's
//! slot; the optimizer updates `W` as `<conv>.weight` and (through
//! [`StepHook::update_own`]) `FS` as `<conv>.skeleton`, with the same learning rate, momentum
//! and weight decay (the released code decays every parameter); after the step the hook writes
//! `K = W ⊙ FS` back. The trainer ([`crate::train::train`]) needs nothing else.
//!
//! **Which convs.** The stem and every conv get a skeleton and the penalty. The threshold
//! applies to every conv except shortcut (downsample) convs, as released; a dead filter's batch
//! norm (and conv bias) is masked only where the filter's channel is its own, i.e. it can be
//! removed: its dependency group has no other producer (in a ResNet, a block's first conv; in
//! VGG, every conv), as released.
//!
//! **After training.** [`prune_from_skeleton`] applies the static threshold, folds the
//! surviving stripes into ordinary dense kernels, collapses residual blocks whose branch is
//! constant into their shortcut, and removes the dead filters with [`crate::prune`] surgery
//! ([`surgery`]).

pub mod dtc;
pub mod penalty;
pub mod surgery;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shears_engine::{Gradients, HookId, Network, Optimizer, ParamStore, StepHook};
use shears_ir::{Graph, NodeId, Op, ParamKind};

use crate::prune::{DepGraph, Role};
use crate::Error;

pub use dtc::{alive_filters, dtc_thresholds, stripe_mask, thresholds, ThresholdMode};
pub use penalty::{
    filter_l1, mean_skeleton, similarities, skeleton_penalty, weight_similarity, CdpConfig,
    PenaltyMode, PenaltyValue,
};
pub use surgery::{
    masked_skeleton_weights, prune_from_skeleton, LayerSparsity, SkeletonPrune, SkeletonPruneReport,
};

/// Metadata key under which a model file carries its [`Skeleton`] (JSON).
pub const META_SKELETON: &str = "shears.skeleton";

/// The skeleton format version this code writes and reads.
pub const SKELETON_VERSION: u32 = 1;

/// One conv's filter skeleton.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkeletonLayer {
    /// The conv node.
    pub conv: String,
    /// Filters (the conv's output channels).
    pub filters: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// `FS`, filter-major (`values[(c * kh + h) * kw + w]`).
    pub values: Vec<f32>,
    /// Whether the threshold applies (false for shortcut convs).
    pub thresholded: bool,
    /// Whether a dead filter's channel is this conv's own (its dependency group has no other
    /// producer and is prunable), so that its batch norm and bias are masked and surgery can
    /// remove it.
    pub removable: bool,
    /// The batch norm right after the conv, if any.
    pub bn: Option<String>,
}

impl SkeletonLayer {
    /// Values per filter (`kh * kw`).
    pub fn kk(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }
}

/// The filter skeletons of a network, as carried in a model file's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skeleton {
    /// Format version ([`SKELETON_VERSION`]).
    pub version: u32,
    /// The threshold the model was trained with, if any.
    pub tau: Option<f32>,
    /// How it was applied during training.
    pub threshold_mode: ThresholdMode,
    /// The CDP coefficients it was trained with.
    pub cdp: Option<CdpConfig>,
    /// One entry per conv, in graph order.
    pub layers: Vec<SkeletonLayer>,
}

/// Whether `conv` is a shortcut (downsample) conv: its input also feeds another node, and its
/// output reaches an `Add` through batch norms / identities only.
fn is_shortcut_conv(graph: &Graph, consumers: &[Vec<NodeId>], conv: NodeId) -> bool {
    let input = graph.node(conv).inputs[0];
    if consumers[input.0].len() < 2 {
        return false;
    }
    let mut cur = conv;
    loop {
        let next = &consumers[cur.0];
        if next.len() != 1 {
            return false;
        }
        match graph.node(next[0]).op {
            Op::Add => return true,
            Op::BatchNorm2d(_) | Op::Identity => cur = next[0],
            _ => return false,
        }
    }
}

impl Skeleton {
    /// A skeleton of ones for every conv of `graph`.
    pub fn ones(graph: &Graph) -> Result<Skeleton, Error> {
        let dg = DepGraph::build(graph)?;
        let consumers = graph.consumers();
        let mut layers = Vec::new();
        for id in graph.ids() {
            let Op::Conv2d(c) = &graph.node(id).op else {
                continue;
            };
            let bn = match consumers[id.0].as_slice() {
                [n] if matches!(graph.node(*n).op, Op::BatchNorm2d(_)) => {
                    Some(graph.node(*n).name.clone())
                }
                _ => None,
            };
            let chans = dg.channels(id);
            let removable = chans.first().is_some_and(|first| {
                let g = &dg.groups()[first.group];
                g.prunable
                    && chans.iter().all(|ch| ch.group == first.group)
                    && g.members
                        .iter()
                        .filter(|m| matches!(m.role, Role::OutChannels | Role::Depthwise))
                        .all(|m| m.node == id && m.role == Role::OutChannels)
            });
            layers.push(SkeletonLayer {
                conv: graph.node(id).name.clone(),
                filters: c.out_channels,
                kernel: c.kernel,
                values: vec![1.0; c.out_channels * c.kernel[0] * c.kernel[1]],
                thresholded: !is_shortcut_conv(graph, &consumers, id),
                removable,
                bn,
            });
        }
        Ok(Skeleton {
            version: SKELETON_VERSION,
            tau: None,
            threshold_mode: ThresholdMode::Dynamic,
            cdp: None,
            layers,
        })
    }

    /// Parses the JSON form (as stored under [`META_SKELETON`]).
    pub fn from_json(s: &str) -> Result<Skeleton, Error> {
        let sk: Skeleton = serde_json::from_str(s)
            .map_err(|e| Error::invalid(format!("skeleton metadata is not valid: {e}")))?;
        if sk.version != SKELETON_VERSION {
            return Err(Error::invalid(format!(
                "skeleton version {} is not supported (this build reads {SKELETON_VERSION})",
                sk.version
            )));
        }
        Ok(sk)
    }

    /// The JSON form (f32 values round-trip exactly).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }

    /// Checks the skeleton against `graph`: every layer names a conv with that many filters
    /// and that kernel, values are finite, and the batch norm exists. Errors name the layer.
    pub fn check(&self, graph: &Graph) -> Result<(), Error> {
        for l in &self.layers {
            let id = graph.find(&l.conv).ok_or_else(|| {
                Error::invalid(format!(
                    "skeleton layer {:?} is not a node of the graph",
                    l.conv
                ))
            })?;
            let Op::Conv2d(c) = &graph.node(id).op else {
                return Err(Error::invalid(format!(
                    "skeleton layer {:?} is a {}, not a conv",
                    l.conv,
                    graph.node(id).op.type_name()
                )));
            };
            if c.out_channels != l.filters || c.kernel != l.kernel {
                return Err(Error::invalid(format!(
                    "skeleton layer {:?} is for {} filters of {:?}, the conv has {} of {:?}",
                    l.conv, l.filters, l.kernel, c.out_channels, c.kernel
                )));
            }
            if l.values.len() != l.filters * l.kk() {
                return Err(Error::invalid(format!(
                    "skeleton layer {:?} holds {} values, expected {}",
                    l.conv,
                    l.values.len(),
                    l.filters * l.kk()
                )));
            }
            if let Some(p) = l.values.iter().position(|x| !x.is_finite()) {
                return Err(Error::invalid(format!(
                    "skeleton layer {:?} value {p} is {}",
                    l.conv, l.values[p]
                )));
            }
            if let Some(bn) = &l.bn {
                if !graph
                    .find(bn)
                    .is_some_and(|b| matches!(graph.node(b).op, Op::BatchNorm2d(_)))
                {
                    return Err(Error::invalid(format!(
                        "skeleton layer {:?} names batch norm {bn:?}, which the graph lacks",
                        l.conv
                    )));
                }
            }
        }
        Ok(())
    }

    /// Filter and stripe counts under a threshold `tau` applied as `mode` (thresholded layers
    /// only; see [`SparsityStats`]).
    pub fn sparsity(&self, tau: f32, mode: ThresholdMode) -> SparsityStats {
        let mut s = SparsityStats::default();
        for l in self.layers.iter().filter(|l| l.thresholded) {
            let kk = l.kk();
            let t = thresholds(&l.values, kk, tau, mode);
            let m = stripe_mask(&l.values, kk, &t);
            let alive = alive_filters(&m, kk);
            s.filters += l.filters;
            s.dead_filters += alive.iter().filter(|&&a| !a).count();
            s.stripes += m.len();
            s.dead_stripes += m.iter().filter(|&&k| !k).count();
        }
        s
    }
}

/// Filter and stripe counts over the thresholded convs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparsityStats {
    /// Filters.
    pub filters: usize,
    /// Filters with no kept stripe.
    pub dead_filters: usize,
    /// Stripes.
    pub stripes: usize,
    /// Stripes not kept.
    pub dead_stripes: usize,
}

impl SparsityStats {
    /// Fraction of filters dead.
    pub fn filter_sparsity(&self) -> f64 {
        self.dead_filters as f64 / self.filters.max(1) as f64
    }

    /// Fraction of stripes dead.
    pub fn stripe_sparsity(&self) -> f64 {
        self.dead_stripes as f64 / self.stripes.max(1) as f64
    }
}

/// What sparse training does.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseConfig {
    /// The CDP penalty.
    pub cdp: CdpConfig,
    /// The threshold τ applied every step after backward, if any.
    pub tau: Option<f32>,
    /// Dynamic (DTC) or static.
    pub threshold_mode: ThresholdMode,
}

impl SparseConfig {
    /// CDP with strength `prop` (as released) and DTC with base `tau`.
    pub fn new(prop: f32, tau: Option<f32>) -> Self {
        SparseConfig {
            cdp: CdpConfig::new(prop),
            tau,
            threshold_mode: ThresholdMode::Dynamic,
        }
    }

    /// Checks every value, naming the one at fault.
    pub fn validate(&self) -> Result<(), Error> {
        self.cdp.validate().map_err(Error::invalid)?;
        if let Some(t) = self.tau {
            if !(t.is_finite() && t >= 0.0) {
                return Err(Error::invalid(format!(
                    "threshold tau {t} must be finite and non-negative"
                )));
            }
        }
        Ok(())
    }
}

/// Running totals of the hook, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseStepStats {
    /// Optimizer steps seen.
    pub steps: u64,
    /// The penalty at the last step.
    pub last_penalty: PenaltyValue,
    /// Filters dead under the training threshold at the last step.
    pub last_dead_filters: usize,
    /// Stripes masked at the last step.
    pub last_dead_stripes: usize,
}

struct LayerState {
    layer: SkeletonLayer,
    weight: String,
    shape: [usize; 4],
    w: Vec<f32>,
    grad_fs: Option<Vec<f32>>,
    prev_similarity: Option<f64>,
}

struct State {
    cfg: SparseConfig,
    layers: Vec<LayerState>,
    stats: SparseStepStats,
}

fn broadcast_mul(w: &[f32], fs: &[f32], per_filter: usize, kk: usize, out: &mut [f32]) {
    for (o, (wf, of)) in w
        .chunks(per_filter)
        .zip(out.chunks_mut(per_filter))
        .enumerate()
    {
        let s = &fs[o * kk..(o + 1) * kk];
        for (wi, oi) in wf.chunks(kk).zip(of.chunks_mut(kk)) {
            for ((x, y), f) in wi.iter().zip(oi.iter_mut()).zip(s) {
                *y = x * f;
            }
        }
    }
}

impl State {
    fn before_step(&mut self, params: &mut ParamStore, grads: &mut Gradients) {
        let cfg = self.cfg;
        let mut pen = PenaltyValue::default();
        let (mut dead_f, mut dead_s) = (0, 0);
        for l in &mut self.layers {
            l.grad_fs = None;
            let Some(dk) = grads.params.get(&l.weight).map(|t| t.data().to_vec()) else {
                continue;
            };
            let kk = l.layer.kk();
            let per_filter = l.shape[1] * kk;
            let fs = &mut l.layer.values;
            // Chain rule through K = W ⊙ FS.
            let mut dfs = vec![0f32; fs.len()];
            for (o, (kf, wf)) in dk
                .chunks(per_filter)
                .zip(l.w.chunks(per_filter))
                .enumerate()
            {
                let mut acc = vec![0f64; kk];
                for (ki, wi) in kf.chunks(kk).zip(wf.chunks(kk)) {
                    for ((a, &g), &w) in acc.iter_mut().zip(ki).zip(wi) {
                        *a += f64::from(g) * f64::from(w);
                    }
                }
                for (d, a) in dfs[o * kk..(o + 1) * kk].iter_mut().zip(acc) {
                    *d = a as f32;
                }
            }
            let mut dw = vec![0f32; dk.len()];
            broadcast_mul(&dk, fs, per_filter, kk, &mut dw);
            if cfg.cdp.is_active() {
                let (v, s) = skeleton_penalty(&cfg.cdp, fs, kk, l.prev_similarity, &mut dfs);
                l.prev_similarity = Some(s);
                pen.prop += v.prop;
                pen.var2 += v.var2;
                pen.l2 += v.l2;
                pen.gl += v.gl;
                if cfg.cdp.var > 0.0 {
                    let s =
                        weight_similarity(&l.w, l.shape, Some((f64::from(cfg.cdp.var), &mut dw)));
                    pen.var += f64::from(cfg.cdp.var) * s;
                }
            }
            if let (Some(tau), true) = (cfg.tau, l.layer.thresholded) {
                let t = thresholds(fs, kk, tau, cfg.threshold_mode);
                let m = stripe_mask(fs, kk, &t);
                for ((x, g), &keep) in fs.iter_mut().zip(dfs.iter_mut()).zip(&m) {
                    if !keep {
                        *x = 0.0;
                        *g = 0.0;
                        dead_s += 1;
                    }
                }
                let alive = alive_filters(&m, kk);
                dead_f += alive.iter().filter(|&&a| !a).count();
                if l.layer.removable {
                    let mut names = Vec::new();
                    if let Some(bn) = &l.layer.bn {
                        names.push(format!("{bn}.weight"));
                        names.push(format!("{bn}.bias"));
                    }
                    names.push(format!("{}.bias", l.layer.conv));
                    for name in names {
                        if let Some(p) = params.get_mut(&name) {
                            mask_channels(p.data_mut(), &alive);
                        }
                        if let Some(g) = grads.params.get_mut(&name) {
                            mask_channels(g.data_mut(), &alive);
                        }
                    }
                }
            }
            grads
                .params
                .get_mut(&l.weight)
                .expect("present above")
                .data_mut()
                .copy_from_slice(&dw);
            params
                .get_mut(&l.weight)
                .expect("checked when attached")
                .data_mut()
                .copy_from_slice(&l.w);
            l.grad_fs = Some(dfs);
        }
        self.stats.steps += 1;
        self.stats.last_penalty = pen;
        self.stats.last_dead_filters = dead_f;
        self.stats.last_dead_stripes = dead_s;
    }

    fn update_own(&mut self, opt: &mut dyn Optimizer) -> shears_engine::Result<()> {
        for l in &mut self.layers {
            if let Some(g) = &l.grad_fs {
                opt.update(
                    &format!("{}.skeleton", l.layer.conv),
                    &mut l.layer.values,
                    g,
                )?;
            }
        }
        Ok(())
    }

    fn after_step(&mut self, params: &mut ParamStore) {
        for l in &mut self.layers {
            if l.grad_fs.take().is_none() {
                continue;
            }
            let k = params.get_mut(&l.weight).expect("checked when attached");
            l.w.copy_from_slice(k.data());
            let kk = l.layer.kk();
            broadcast_mul(&l.w, &l.layer.values, l.shape[1] * kk, kk, k.data_mut());
        }
    }
}

fn mask_channels(x: &mut [f32], alive: &[bool]) {
    if x.len() == alive.len() {
        for (v, &a) in x.iter_mut().zip(alive) {
            if !a {
                *v = 0.0;
            }
        }
    }
}

struct Hook(Arc<Mutex<State>>);

impl StepHook for Hook {
    fn before_step(&mut self, params: &mut ParamStore, grads: &mut Gradients) {
        self.0
            .lock()
            .expect("not poisoned")
            .before_step(params, grads);
    }

    fn update_own(&mut self, opt: &mut dyn Optimizer) -> shears_engine::Result<()> {
        self.0.lock().expect("not poisoned").update_own(opt)
    }

    fn after_step(&mut self, params: &mut ParamStore) {
        self.0.lock().expect("not poisoned").after_step(params);
    }
}

/// A network under sparse training: the handle [`attach`] returns.
pub struct SparseTraining {
    state: Arc<Mutex<State>>,
    hook: HookId,
}

/// Gives every conv of `net` a skeleton of ones (the network's kernels become `W ⊙ FS`, which
/// is `W` bit for bit) and registers the hook that trains it with CDP and the threshold of
/// `cfg` on every [`Network::step`] (see the module docs). Every conv weight must be
/// trainable.
pub fn attach(net: &mut Network, cfg: &SparseConfig) -> Result<SparseTraining, Error> {
    let skeleton = Skeleton::ones(net.graph())?;
    attach_skeleton(net, cfg, skeleton)
}

/// [`attach`] with a given skeleton: the network's conv weights are taken as `W`, and its
/// kernels become `W ⊙ FS`. Convs the skeleton does not list train as usual.
pub fn attach_skeleton(
    net: &mut Network,
    cfg: &SparseConfig,
    skeleton: Skeleton,
) -> Result<SparseTraining, Error> {
    cfg.validate()?;
    skeleton.check(net.graph())?;
    let mut layers = Vec::new();
    for layer in skeleton.layers {
        let id = net.graph().find(&layer.conv).expect("checked above");
        let weight = net.graph().node(id).param_name(ParamKind::Weight);
        if !net.params().is_trainable(&weight) {
            return Err(Error::invalid(format!(
                "conv weight {weight} is frozen: sparse training needs every conv trainable"
            )));
        }
        let t = net
            .params_mut()
            .get_mut(&weight)
            .expect("a conv has a weight");
        let s = t.shape();
        let shape = [s[0], s[1], s[2], s[3]];
        let w = t.data().to_vec();
        let kk = layer.kk();
        broadcast_mul(&w, &layer.values, shape[1] * kk, kk, t.data_mut());
        layers.push(LayerState {
            w,
            layer,
            weight,
            shape,
            grad_fs: None,
            prev_similarity: None,
        });
    }
    let state = Arc::new(Mutex::new(State {
        cfg: *cfg,
        layers,
        stats: SparseStepStats::default(),
    }));
    let hook = net.add_step_hook(Hook(state.clone()));
    Ok(SparseTraining { state, hook })
}

impl SparseTraining {
    /// The skeleton as it stands (values after the last step), with the training settings.
    pub fn skeleton(&self) -> Skeleton {
        let st = self.state.lock().expect("not poisoned");
        Skeleton {
            version: SKELETON_VERSION,
            tau: st.cfg.tau,
            threshold_mode: st.cfg.threshold_mode,
            cdp: Some(st.cfg.cdp),
            layers: st.layers.iter().map(|l| l.layer.clone()).collect(),
        }
    }

    /// Per conv, the factor `W` of the kernel `K = W ⊙ FS` (PyTorch layout), by weight name.
    pub fn factors(&self) -> Vec<(String, Vec<f32>)> {
        let st = self.state.lock().expect("not poisoned");
        st.layers
            .iter()
            .map(|l| (l.weight.clone(), l.w.clone()))
            .collect()
    }

    /// The hook's running totals.
    pub fn stats(&self) -> SparseStepStats {
        self.state.lock().expect("not poisoned").stats
    }

    /// Removes the hook from `net` and returns the skeleton. The network keeps the effective
    /// kernels `W ⊙ FS`, so it computes the trained skeleton network.
    pub fn detach(self, net: &mut Network) -> Skeleton {
        net.remove_hook(self.hook);
        self.skeleton()
    }
}
