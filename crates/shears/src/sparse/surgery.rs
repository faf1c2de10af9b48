//! The final static-threshold prune of a skeleton network, and the surgery that makes it a
//! smaller dense network (methods §3.5, "final pruning").
//!
//! 1. **Mask** ([`masked_skeleton_weights`]): in every thresholded conv a stripe is kept iff
//!    `|FS| > τ` (the static τ, not `T_c`); the kernel `K = W ⊙ FS` (the model file's conv
//!    weight) keeps its surviving stripes as ordinary dense weights and the others become 0.
//!    A filter with no kept stripe is dead; where its channel is its own
//!    ([`super::SkeletonLayer::removable`]) its batch norm's `gamma` and `beta` and its bias
//!    are zeroed too, exactly as DTC does during training, so the channel is exactly 0. This
//!    is the *masked skeleton network*, the reference the pruned network reproduces.
//! 2. **Collapse**: a residual `Add` one of whose two branches is constant in the masked
//!    network (a branch conv with no surviving stripe, or fed only by dead channels) is
//!    replaced by its other input. The released code drops the branch's constant, which is
//!    not function-preserving (a dead branch still adds `bn2(0) = β₂ − γ₂ μ₂ / √(σ₂² + ε)`);
//!    here the constant is kept as the bias of a depthwise 1×1 conv of weight 1 on the shortcut
//!    (`<add>.shift`, omitted when the constant is 0), so the collapse is exact, and the report
//!    gives its largest magnitude ([`CollapsedBlock::max_abs_shift`]).
//! 3. **Remove dead filters**: every channel whose value is exactly 0 in the masked network
//!    (all its producers' filters and biases zero, all its batch norms' `gamma` and `beta` zero)
//!    is removed with [`crate::prune`] surgery (one plan, [`FoldMode::Exact`], nothing to fold).
//!    A channel shared through a residual sum (a block's second conv) stays, as released.
//!
//! The dense kernels keep zeros at masked stripes: the stripe sparsity is reported
//! ([`SkeletonPruneReport::stripe_macs_after`] counts the MACs of a stripe-wise execution) but
//! not turned into speed, since the IR has no stripe-wise conv op.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use shears_ir::{Conv2d, Graph, NodeId, Op, ParamKind, Patch, Tensor, Weights, Wire};

use super::dtc::{alive_filters, stripe_mask};
use super::Skeleton;
use crate::prune::{self, DepGraph, FoldMode, Plan, PlanGroup, Role};
use crate::Error;

/// Sparsity of one thresholded conv after the final mask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    /// The conv.
    pub conv: String,
    /// Filters.
    pub filters: usize,
    /// Filters with no kept stripe.
    pub dead_filters: usize,
    /// Filters physically removed (dead and removable, or in a collapsed block).
    pub removed_filters: usize,
    /// Stripes.
    pub stripes: usize,
    /// Stripes masked.
    pub dead_stripes: usize,
}

/// A residual block replaced by its shortcut.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollapsedBlock {
    /// The residual `Add`.
    pub add: String,
    /// The branch's nodes, removed.
    pub removed: Vec<String>,
    /// Largest magnitude of the branch's constant (kept as `<add>.shift`).
    pub max_abs_shift: f32,
    /// The depthwise 1×1 conv carrying the constant, when it is not 0.
    pub shift_node: Option<String>,
}

/// What the final prune did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkeletonPruneReport {
    /// The static threshold.
    pub tau: f32,
    /// Per thresholded conv.
    pub layers: Vec<LayerSparsity>,
    /// Filters over the thresholded convs.
    pub filters: usize,
    /// Dead filters.
    pub dead_filters: usize,
    /// Filters physically removed.
    pub removed_filters: usize,
    /// Stripes over the thresholded convs.
    pub stripes: usize,
    /// Stripes masked.
    pub dead_stripes: usize,
    /// Residual blocks collapsed into their shortcut.
    pub collapsed: Vec<CollapsedBlock>,
    /// Dead filters whose channel is shared through a residual sum, so not removed.
    pub kept_dead_filters: usize,
    /// Parameters (graph count, no skeleton) before and after.
    pub params_before: u64,
    /// Parameters after.
    pub params_after: u64,
    /// MACs per image before.
    pub macs_before: u64,
    /// MACs per image of the pruned dense network.
    pub macs_after: u64,
    /// MACs per image if each conv ran stripe-wise (only surviving stripes; SWP's counting,
    /// multiply-add as 1).
    pub stripe_macs_after: u64,
}

/// The result of [`prune_from_skeleton`].
#[derive(Clone, Debug)]
pub struct SkeletonPrune {
    /// The smaller graph.
    pub graph: Graph,
    /// Its weights (dense kernels with the surviving stripes).
    pub weights: Weights,
    /// The masked skeleton network's weights, on the original graph (the reference).
    pub masked: Weights,
    /// What was done.
    pub report: SkeletonPruneReport,
}

fn check_tau(tau: f32) -> Result<(), Error> {
    if tau.is_finite() && tau >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "threshold tau {tau} must be finite and non-negative"
        )))
    }
}

/// The masked skeleton network's weights (step 1 of the module docs) for `graph` and
/// `weights` (whose conv kernels are the effective `W ⊙ FS`), with the per-layer stripe masks.
pub fn masked_skeleton_weights(
    graph: &Graph,
    weights: &Weights,
    skeleton: &Skeleton,
    tau: f32,
) -> Result<(Weights, Vec<LayerSparsity>), Error> {
    check_tau(tau)?;
    skeleton.check(graph)?;
    prune::mask::check_weights(graph, weights)?;
    let mut out = weights.clone();
    let mut stats = Vec::new();
    for l in skeleton.layers.iter().filter(|l| l.thresholded) {
        let kk = l.kk();
        let m = stripe_mask(&l.values, kk, &vec![tau; l.filters]);
        let alive = alive_filters(&m, kk);
        let k = out
            .get_mut(&format!("{}.weight", l.conv))
            .expect("weights were checked against the graph");
        let per_filter = k.numel() / l.filters;
        for (o, f) in k.data_mut().chunks_mut(per_filter).enumerate() {
            for fi in f.chunks_mut(kk) {
                for (x, &keep) in fi.iter_mut().zip(&m[o * kk..(o + 1) * kk]) {
                    if !keep {
                        *x = 0.0;
                    }
                }
            }
        }
        if l.removable {
            let mut names = vec![format!("{}.bias", l.conv)];
            if let Some(bn) = &l.bn {
                names.push(format!("{bn}.weight"));
                names.push(format!("{bn}.bias"));
            }
            for n in names {
                if let Some(t) = out.get_mut(&n) {
                    for (v, &a) in t.data_mut().iter_mut().zip(&alive) {
                        if !a {
                            *v = 0.0;
                        }
                    }
                }
            }
        }
        stats.push(LayerSparsity {
            conv: l.conv.clone(),
            filters: l.filters,
            dead_filters: alive.iter().filter(|&&a| !a).count(),
            removed_filters: 0,
            stripes: m.len(),
            dead_stripes: m.iter().filter(|&&k| !k).count(),
        });
    }
    Ok((out, stats))
}

fn param<'a>(g: &Graph, w: &'a Weights, id: NodeId, kind: ParamKind) -> Option<&'a [f32]> {
    w.get(&g.node(id).param_name(kind)).map(Tensor::data)
}

/// Per node and channel, the value of channels that are spatially constant in the network
/// (`None`: not known constant). Conservative: only what is exact is marked.
fn constant_channels(g: &Graph, w: &Weights) -> Vec<Vec<Option<f32>>> {
    let mut out: Vec<Vec<Option<f32>>> = Vec::with_capacity(g.len());
    for id in g.ids() {
        let node = g.node(id);
        let c = g.shape(id)[0];
        let inp = |k: usize| &out[node.inputs[k].0];
        let v: Vec<Option<f32>> = match &node.op {
            Op::Conv2d(cv) => {
                let k = param(g, w, id, ParamKind::Weight).expect("conv weight");
                let bias = param(g, w, id, ParamKind::Bias);
                let ipg = cv.in_channels / cv.groups;
                let opg = cv.out_channels / cv.groups;
                let kk = cv.kernel[0] * cv.kernel[1];
                let x = inp(0);
                (0..cv.out_channels)
                    .map(|o| {
                        let grp = o / opg;
                        let f = &k[o * ipg * kk..(o + 1) * ipg * kk];
                        let silent = (0..ipg).all(|i| {
                            f[i * kk..(i + 1) * kk].iter().all(|&v| v == 0.0)
                                || x[grp * ipg + i] == Some(0.0)
                        });
                        silent.then(|| bias.map_or(0.0, |b| b[o]))
                    })
                    .collect()
            }
            Op::BatchNorm2d(bn) => {
                let gamma = param(g, w, id, ParamKind::Weight).expect("bn weight");
                let beta = param(g, w, id, ParamKind::Bias).expect("bn bias");
                let mean = param(g, w, id, ParamKind::RunningMean).expect("bn mean");
                let var = param(g, w, id, ParamKind::RunningVar).expect("bn var");
                inp(0)
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        x.map(|x| {
                            let s = f64::from(gamma[i])
                                / (f64::from(var[i]) + f64::from(bn.eps)).sqrt();
                            ((f64::from(x) - f64::from(mean[i])) * s + f64::from(beta[i])) as f32
                        })
                    })
                    .collect()
            }
            Op::Relu => inp(0).iter().map(|x| x.map(|v| v.max(0.0))).collect(),
            Op::Act(a) => inp(0)
                .iter()
                .map(|x| x.map(|v| shears_engine::kernels::activation::apply(*a, v)))
                .collect(),
            Op::Identity | Op::Dropout { .. } | Op::MaxPool2d(_) | Op::GlobalAvgPool => {
                inp(0).clone()
            }
            Op::Add => (0..c)
                .map(|i| {
                    node.inputs
                        .iter()
                        .map(|n| out[n.0][i])
                        .try_fold(0f32, |acc, x| x.map(|x| acc + x))
                })
                .collect(),
            Op::ShortcutA(s) => {
                let x = inp(0);
                (0..c)
                    .map(|j| {
                        if j < s.pad_before || j >= s.pad_before + x.len() {
                            Some(0.0)
                        } else {
                            x[j - s.pad_before]
                        }
                    })
                    .collect()
            }
            _ => vec![None; c],
        };
        out.push(v);
    }
    out
}

fn ancestors(g: &Graph, start: NodeId) -> Vec<bool> {
    let mut mark = vec![false; g.len()];
    mark[start.0] = true;
    for i in (0..=start.0).rev() {
        if mark[i] {
            for p in &g.nodes()[i].inputs {
                mark[p.0] = true;
            }
        }
    }
    mark
}

/// Collapses constant residual branches (step 2).
fn collapse(g: &Graph, w: &Weights) -> Result<(Graph, Weights, Vec<CollapsedBlock>), Error> {
    let consts = constant_channels(g, w);
    let consumers = g.consumers();
    let mut patch = Patch::new("collapse residual blocks whose branch is constant");
    let mut removed = vec![false; g.len()];
    let mut blocks = Vec::new();
    let mut new_params: Vec<(String, Tensor, Tensor)> = Vec::new();
    for add in g.ids() {
        let node = g.node(add);
        if !matches!(node.op, Op::Add) || node.inputs.len() != 2 || removed[add.0] {
            continue;
        }
        let (a, b) = (node.inputs[0], node.inputs[1]);
        let (dead, live) = if consts[a.0].iter().all(Option::is_some) {
            (a, b)
        } else if consts[b.0].iter().all(Option::is_some) {
            (b, a)
        } else {
            continue;
        };
        let anc_dead = ancestors(g, dead);
        let anc_live = ancestors(g, live);
        let branch: Vec<NodeId> = g
            .ids()
            .filter(|i| anc_dead[i.0] && !anc_live[i.0])
            .collect();
        let in_branch = |n: NodeId| branch.contains(&n);
        let closed = !branch.is_empty()
            && branch.iter().all(|&n| {
                !matches!(g.node(n).op, Op::Input { .. })
                    && !removed[n.0]
                    && !g.outputs().contains(&n)
                    && consumers[n.0].iter().all(|&m| m == add || in_branch(m))
            });
        if !closed {
            continue;
        }
        let shift: Vec<f32> = consts[dead.0]
            .iter()
            .map(|x| x.expect("all known"))
            .collect();
        let max_abs_shift = shift.iter().fold(0f32, |m, x| m.max(x.abs()));
        let shift_node = if max_abs_shift > 0.0 {
            let ch = shift.len();
            let name = format!("{}.shift", node.name);
            let mut op = Conv2d::new(ch, ch, 1);
            op.groups = ch;
            op.bias = true;
            let wire = patch.add_node(name.clone(), op, &[Wire::Old(live)]);
            patch.shunt(add, wire);
            new_params.push((
                name.clone(),
                Tensor::full(&[ch, 1, 1, 1], 1.0),
                Tensor::new(vec![ch], shift).expect("1-d"),
            ));
            Some(name)
        } else {
            patch.shunt(add, Wire::Old(live));
            None
        };
        patch.remove(add);
        removed[add.0] = true;
        for &n in branch.iter().rev() {
            patch.remove(n);
            removed[n.0] = true;
        }
        blocks.push(CollapsedBlock {
            add: node.name.clone(),
            removed: branch.iter().map(|&n| g.node(n).name.clone()).collect(),
            max_abs_shift,
            shift_node,
        });
    }
    if blocks.is_empty() {
        return Ok((g.clone(), w.clone(), blocks));
    }
    let patched = patch.apply(g)?;
    let mut nw = Weights::new();
    for (_, name, _) in patched.graph.param_specs() {
        if let Some(t) = w.get(&name) {
            nw.insert(name, t.clone());
        }
    }
    for (name, k, b) in new_params {
        nw.insert(format!("{name}.weight"), k);
        nw.insert(format!("{name}.bias"), b);
    }
    Ok((patched.graph, nw, blocks))
}

fn zero_at(t: Option<&[f32]>, idxs: &[usize], row: usize) -> bool {
    t.is_none_or(|t| {
        idxs.iter()
            .all(|&o| t[o * row..(o + 1) * row].iter().all(|&x| x == 0.0))
    })
}

/// The plan removing every channel that is exactly 0 (step 3).
fn dead_channel_plan(g: &Graph, w: &Weights, dg: &DepGraph) -> Plan {
    let mut plan = Plan::empty(g);
    plan.fold = FoldMode::Exact;
    plan.criterion = "skeleton".into();
    for grp in dg.prunable() {
        let mut removed = Vec::new();
        for r in 0..grp.size {
            let dead = grp.members.iter().all(|m| {
                let idxs = &m.idxs[r];
                let p = |k| param(g, w, m.node, k);
                match m.role {
                    Role::OutChannels | Role::Depthwise => {
                        let k = p(ParamKind::Weight).expect("weight");
                        let row = k.len() / g.shape(m.node)[0];
                        zero_at(Some(k), idxs, row) && zero_at(p(ParamKind::Bias), idxs, 1)
                    }
                    Role::BnChannels => {
                        zero_at(p(ParamKind::Weight), idxs, 1)
                            && zero_at(p(ParamKind::Bias), idxs, 1)
                    }
                    Role::Operand => {
                        let k = p(ParamKind::Weight).expect("weight");
                        let row = k.len() / g.shape(m.node)[0];
                        zero_at(Some(k), idxs, row)
                    }
                    Role::InChannels | Role::ShortcutPad | Role::SliceInput => true,
                }
            });
            if dead {
                removed.push(r);
            }
        }
        if removed.len() == grp.size {
            removed.remove(0); // a group keeps at least one channel
        }
        if !removed.is_empty() {
            plan.groups.push(PlanGroup {
                group_id: grp.id,
                root: g.node(grp.root).name.clone(),
                removed,
            });
        }
    }
    plan
}

/// MACs if every conv ran stripe-wise: a conv's MACs scaled by its fraction of stripes
/// (filter and kernel position) holding a nonzero weight.
pub fn stripe_macs(g: &Graph, w: &Weights) -> u64 {
    g.ids()
        .map(|id| {
            let macs = g.node_macs(id);
            let Op::Conv2d(c) = &g.node(id).op else {
                return macs;
            };
            let k = param(g, w, id, ParamKind::Weight).expect("conv weight");
            let kk = c.kernel[0] * c.kernel[1];
            let ipg = c.in_channels / c.groups;
            let total = c.out_channels * kk;
            let live = (0..c.out_channels)
                .map(|o| {
                    (0..kk)
                        .filter(|&p| (0..ipg).any(|i| k[(o * ipg + i) * kk + p] != 0.0))
                        .count()
                })
                .sum::<usize>();
            (macs as u128 * live as u128 / total.max(1) as u128) as u64
        })
        .sum()
}

/// The final prune (see the module docs): the masked skeleton network under the static
/// threshold `tau`, residual branches that became constant collapsed into their shortcut, and
/// every dead channel physically removed. `weights` are the model's (conv kernels `W ⊙ FS`).
pub fn prune_from_skeleton(
    graph: &Graph,
    weights: &Weights,
    skeleton: &Skeleton,
    tau: f32,
) -> Result<SkeletonPrune, Error> {
    let (masked, mut layers) = masked_skeleton_weights(graph, weights, skeleton, tau)?;
    let (cg, cw, collapsed) = collapse(graph, &masked)?;
    let dg = DepGraph::build(&cg)?;
    let plan = dead_channel_plan(&cg, &cw, &dg);
    let pruned = prune::prune(&cg, &cw, &plan)?;
    // Removed filters per conv: collapsed convs lose all, others what the plan removed.
    let gone: BTreeSet<&str> = collapsed
        .iter()
        .flat_map(|b| b.removed.iter().map(String::as_str))
        .collect();
    for l in &mut layers {
        l.removed_filters = if gone.contains(l.conv.as_str()) {
            l.filters
        } else {
            let after = pruned
                .graph
                .find(&l.conv)
                .map(|id| pruned.graph.shape(id)[0])
                .unwrap_or(0);
            l.filters - after
        };
    }
    let sum = |f: fn(&LayerSparsity) -> usize| layers.iter().map(f).sum::<usize>();
    let kept_dead = layers
        .iter()
        .map(|l| l.dead_filters.saturating_sub(l.removed_filters))
        .sum();
    let report = SkeletonPruneReport {
        tau,
        filters: sum(|l| l.filters),
        dead_filters: sum(|l| l.dead_filters),
        removed_filters: sum(|l| l.removed_filters),
        stripes: sum(|l| l.stripes),
        dead_stripes: sum(|l| l.dead_stripes),
        kept_dead_filters: kept_dead,
        layers,
        collapsed,
        params_before: graph.n_params(),
        params_after: pruned.graph.n_params(),
        macs_before: graph.macs(),
        macs_after: pruned.graph.macs(),
        stripe_macs_after: stripe_macs(&pruned.graph, &pruned.weights),
    };
    Ok(SkeletonPrune {
        graph: pruned.graph,
        weights: pruned.weights,
        masked,
        report,
    })
}
