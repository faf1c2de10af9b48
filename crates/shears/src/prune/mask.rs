//! The masked model: the reference that surgery must reproduce.
//!
//! **Definition.** For a plan, the *masked model* is the original graph with the original
//! weights, except that every removed channel's *producer* weights are zero: for each removed
//! channel and each member of its group with role [`Role::OutChannels`] or [`Role::Depthwise`],
//! the weight slice on axis 0 (the conv filter, or the linear row) is set to 0. In
//! [`FoldMode::Exact`] (the default) a removed channel whose constant cannot be folded exactly
//! (see below) is moreover *forced to zero*: its producers' biases and its batch norms' `gamma`
//! and `beta` are zeroed too, so that its value is exactly 0 everywhere. Nothing else changes:
//! the kept channels and every consumer keep their values.
//!
//! In the masked model a removed channel is therefore spatially constant wherever it flows:
//! `bias` (or 0) at its producers; `(c - mean) / sqrt(var + eps) * gamma + beta` after a batch
//! norm; `max(0, c)` after ReLU and `f(c)` after any other activation `f`; unchanged through
//! max pooling, global pooling, dropout, identity, flatten, concat, channel shuffles and
//! ranges, and the non-padded part of
//! an option-A shortcut; the sum of the branches' constants after `Add`; 0 at a shortcut's pad
//! slots; `a op b` after a broadcasting [`Op::Binary`] whose operands are constants there (the
//! removed channel, or a constant parameter uniform over H and W). A channel forced to zero
//! (below) is a constant too: 0 at its producers, then what the ops make of 0, e.g. `f(0)`
//! after an activation (0.5 after a sigmoid) and 0 again after a product with a forced factor
//! (a squeeze-excitation gate times its trunk); the dependency graph leaves unprunable the
//! channels that would not be 0 where they must be ([`super::forced_zero`]). Surgery removes
//! the channel and
//! adds its constant contribution to each consumer's bias ([`super::surgery`]), which is
//! exact for linear layers and for convolutions whose window never reads the zero padding, and
//! exact everywhere when the constant is 0 (the common case of a channel whose weights, bias
//! and BN shift are all zero). Two consumers cannot take a nonzero constant exactly:
//! - a padded convolution: at the border the masked model sees the constant only over the taps
//!   inside the image, while a folded bias acts on every tap;
//! - an average pool with zero padding counted in the divisor (`count_include_pad`): the masked
//!   model's value shrinks at the border.
//!
//! **Exactness policy ([`FoldMode`]).** With [`FoldMode::Exact`], a channel whose constant is
//! nonzero where it reaches one of those two consumers is forced to zero (as above) and surgery
//! drops it without folding anything; every other removed channel is folded. The pruned model
//! then equals the masked model by construction, for every plan, up to float rounding, and
//! [`super::verify()`] checks it within [`super::VERIFY_TOLERANCE`]. With
//! [`FoldMode::Interior`] every nonzero constant is folded, also into padded consumers; the
//! pruned model then equals the (unforced) masked model in the interior only, and surgery
//! reports the analytical size of each border deviation in
//! [`super::SurgeryReport::approximations`].
//!
//! A removed channel that meets a binary op's *varying* operand (a channel-broadcast input, or
//! a constant that varies over H and W) is no spatial constant there: `x_c * v`. It is forced
//! to zero in both fold modes (then `0 * v = 0`, and `0 / v = 0`); the dependency graph makes
//! the binary ops where that would not give 0 non-prunable
//! ([`super::depgraph`]). A forced channel's constant-operand slice is zeroed too (except as a
//! divisor), so that `0 + 0`, `0 - 0` and `0 * 0` stay 0.
//!
//! Whether a channel is forced depends only on the channel (its constants and its consumers),
//! not on the rest of the plan, so the masked model, the surgery and the cost prediction agree
//! for every plan.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use shears_engine::kernels::activation;
use shears_ir::{Graph, NodeId, Op, ParamKind, Tensor, Weights};

use super::depgraph::{is_depthwise, operand_classes, DepGraph, OperandClass, Role};
use super::error::{PruneError, Result};
use super::plan::Plan;

/// How surgery treats the constant contribution of removed channels (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldMode {
    /// Fold a removed channel's constant only where the fold is exact (linear layers, convs
    /// whose window never reads padding, or a zero constant); force every other removed
    /// channel to zero in the masked model and drop it without folding. The pruned model equals
    /// the masked model for every plan. The default.
    #[default]
    Exact,
    /// Fold every nonzero constant, also into zero-padded convs (exact in the interior only);
    /// the border deviation is reported per consumer.
    Interior,
}

impl FoldMode {
    /// `exact` or `interior`.
    pub fn name(self) -> &'static str {
        match self {
            FoldMode::Exact => "exact",
            FoldMode::Interior => "interior",
        }
    }
}

impl fmt::Display for FoldMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FoldMode {
    type Err = PruneError;

    /// `exact` or `interior` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "exact" => Ok(FoldMode::Exact),
            "interior" => Ok(FoldMode::Interior),
            _ => Err(PruneError::Invalid(format!(
                "unknown fold mode {s:?} (valid: exact, interior)"
            ))),
        }
    }
}

/// The masked model's weights for `plan` (see the module docs for the exact definition; the
/// fold mode is the plan's, [`Plan::fold`]).
///
/// ```
/// use shears::prune::{mask_weights, FoldMode, Plan, PlanGroup};
/// use shears::zoo::{build, init_weights, Arch};
/// let g = build(Arch::LeNet5, &Arch::LeNet5.default_config()).unwrap();
/// let w = init_weights(&g, Some(Arch::LeNet5), 0);
/// let bias = w.get("conv1.bias").unwrap().data();
/// // A channel with a positive bias: its constant relu(bias) reaches conv2, a padded 3x3 conv.
/// let r = bias.iter().position(|&b| b > 0.0).unwrap();
/// let mut plan = Plan::empty(&g);
/// plan.groups.push(PlanGroup { group_id: 1, root: "conv1".into(), removed: vec![r] });
/// let m = mask_weights(&g, &w, &plan).unwrap();
/// let filter = &m.get("conv1.weight").unwrap().data()[r * 9..(r + 1) * 9];
/// assert!(filter.iter().all(|&x| x == 0.0));
/// // Exact mode (the default) cannot fold that constant exactly, so it forces the channel to
/// // zero, bias included; interior mode keeps the bias (and folds it into conv2's bias).
/// assert_eq!(m.get("conv1.bias").unwrap().data()[r], 0.0);
/// plan.fold = FoldMode::Interior;
/// let m = mask_weights(&g, &w, &plan).unwrap();
/// assert_eq!(m.get("conv1.bias"), w.get("conv1.bias"));
/// ```
pub fn mask_weights(graph: &Graph, weights: &Weights, plan: &Plan) -> Result<Weights> {
    let dg = DepGraph::build(graph)?;
    mask_weights_with(graph, weights, &dg, plan)
}

/// [`mask_weights`] with a dependency graph already built for `graph`.
pub fn mask_weights_with(
    graph: &Graph,
    weights: &Weights,
    dg: &DepGraph,
    plan: &Plan,
) -> Result<Weights> {
    check_weights(graph, weights)?;
    let removal = plan.resolve(graph, dg)?;
    let consts = Constants::compute(graph, weights, dg, plan.fold);
    let mut out = weights.clone();
    let mut zero = |node: NodeId, kind: ParamKind, idxs: &[usize]| {
        let name = graph.node(node).param_name(kind);
        if let Some(t) = out.get_mut(&name) {
            let row: usize = t.shape()[1..].iter().product();
            for &o in idxs {
                t.data_mut()[o * row..(o + 1) * row].fill(0.0);
            }
        }
    };
    for g in dg.groups() {
        let gone = removal.of(g.id);
        if gone.is_empty() {
            continue;
        }
        for m in &g.members {
            for &r in &gone {
                let forced = consts.forced[g.id][r].is_some();
                match m.role {
                    Role::OutChannels | Role::Depthwise => {
                        zero(m.node, ParamKind::Weight, &m.idxs[r]);
                        if forced {
                            zero(m.node, ParamKind::Bias, &m.idxs[r]);
                        }
                    }
                    Role::BnChannels if forced => {
                        zero(m.node, ParamKind::Weight, &m.idxs[r]);
                        zero(m.node, ParamKind::Bias, &m.idxs[r]);
                    }
                    Role::Operand if forced && !is_divisor(&graph.node(m.node).op) => {
                        zero(m.node, ParamKind::Weight, &m.idxs[r]);
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

/// Checks that `weights` holds every tensor `graph` needs, with the right shape.
pub(crate) fn check_weights(graph: &Graph, weights: &Weights) -> Result<()> {
    for (_, name, spec) in graph.param_specs() {
        let t = weights
            .get(&name)
            .ok_or_else(|| PruneError::MissingTensor { name: name.clone() })?;
        if t.shape() != spec.shape.as_slice() {
            return Err(PruneError::TensorShape {
                name,
                expected: spec.shape,
                found: t.shape().to_vec(),
            });
        }
    }
    Ok(())
}

/// The tensor of `node`'s parameter `kind` (weights were checked against the graph).
pub(crate) fn param<'a>(
    graph: &Graph,
    weights: &'a Weights,
    node: NodeId,
    kind: ParamKind,
) -> &'a Tensor {
    let name = graph.node(node).param_name(kind);
    weights
        .get(&name)
        .unwrap_or_else(|| panic!("weights were checked against the graph, yet {name} is missing"))
}

/// Per group and channel, the forced channels' largest constant ([`Constants::forced`]).
type Forced = Vec<Vec<Option<f64>>>;

/// The value every output slot of every node takes in the masked model if that slot's channel
/// is removed (see the module docs), computed in f64 from the original weights. A removed
/// channel's value depends only on its own slots, so one pass serves every plan.
#[derive(Clone, Debug)]
pub(crate) struct Constants {
    /// `value[node][slot]`; for the channels that are forced to zero, their value in the forced
    /// masked model (0 at the producers, `f(0)` after an activation, ...).
    pub(crate) value: Vec<Vec<f64>>,
    /// Average pools that count zero padding: `(node, slot, max |delta|)` of the border effect
    /// on a nonzero constant (none for forced channels).
    pub(crate) pool_border: Vec<(NodeId, usize, f64)>,
    /// `forced[group][idx]`: for a channel that the masked model forces to zero when it is
    /// removed, the largest |constant| it would have had at a consumer that cannot take it
    /// exactly.
    pub(crate) forced: Vec<Vec<Option<f64>>>,
    /// Binary ops where a removed channel meets a varying operand: `(node, slot, |constant of
    /// the removed operand|)`; forced to zero in both fold modes.
    pub(crate) varying: Vec<(NodeId, usize, f64)>,
}

impl Constants {
    /// The constants under `mode`: [`Constants::raw`], then every channel that meets a varying
    /// binary operand, and in [`FoldMode::Exact`] every channel with a nonzero constant at a
    /// padded conv or a padding-counting average pool, is forced to zero.
    pub(crate) fn compute(graph: &Graph, weights: &Weights, dg: &DepGraph, mode: FoldMode) -> Self {
        let mut c = Self::raw(graph, weights);
        c.forced = dg.groups().iter().map(|g| vec![None; g.size]).collect();
        let force = |forced: &mut Vec<Vec<Option<f64>>>, node: NodeId, slot: usize, v: f64| {
            let ch = dg.channels(node)[slot];
            let f = &mut forced[ch.group][ch.idx];
            *f = Some(f.unwrap_or(0.0).max(v.abs()));
        };
        for &(node, slot, v) in &c.varying {
            force(&mut c.forced, node, slot, v);
        }
        if mode == FoldMode::Exact {
            c.force_unfoldable(graph, &force);
        }
        if c.forced.iter().flatten().any(Option::is_some) {
            // The forced channels' values: 0 at their producers, then what the ops make of 0
            // (f(0) after an activation, 0 after a product with a forced factor).
            let zeroed = forced_params(graph, weights, dg, &c.forced);
            let f = Self::raw(graph, &zeroed);
            for id in graph.ids() {
                for (s, ch) in dg.channels(id).iter().enumerate() {
                    if c.forced[ch.group][ch.idx].is_some() {
                        c.value[id.0][s] = f.value[id.0][s];
                    }
                }
            }
        }
        let forced = &c.forced;
        c.pool_border.retain(|&(node, slot, _)| {
            let ch = dg.channels(node)[slot];
            forced[ch.group][ch.idx].is_none()
        });
        c
    }

    /// Forces the channels whose nonzero constant reaches a padded conv or a padding-counting
    /// average pool ([`FoldMode::Exact`]).
    fn force_unfoldable(&mut self, graph: &Graph, force: &dyn Fn(&mut Forced, NodeId, usize, f64)) {
        let c = self;
        for id in graph.ids() {
            let node = graph.node(id);
            let Op::Conv2d(cv) = &node.op else { continue };
            if is_depthwise(&node.op)
                || !conv_reads_padding(cv, graph.input_shapes(id)[0], graph.shape(id))
            {
                continue;
            }
            let inp = node.inputs[0];
            for (s, &v) in c.value[inp.0].iter().enumerate() {
                if v != 0.0 {
                    force(&mut c.forced, inp, s, v);
                }
            }
        }
        for &(node, slot, _) in &c.pool_border {
            let v = c.value[graph.node(node).inputs[0].0][slot];
            force(&mut c.forced, node, slot, v);
        }
    }

    /// The constants of the unforced masked model (only producer weights zeroed).
    fn raw(graph: &Graph, weights: &Weights) -> Constants {
        let mut value: Vec<Vec<f64>> = Vec::with_capacity(graph.len());
        let mut pool_border = Vec::new();
        let mut varying = Vec::new();
        for id in graph.ids() {
            let node = graph.node(id);
            let c = graph.shape(id)[0];
            let input = |k: usize| -> &Vec<f64> { &value[node.inputs[k].0] };
            let v: Vec<f64> = match &node.op {
                Op::Input { .. } => vec![0.0; c],
                Op::Conv2d(cv) if cv.bias => to_f64(param(graph, weights, id, ParamKind::Bias)),
                Op::Linear(l) if l.bias => to_f64(param(graph, weights, id, ParamKind::Bias)),
                Op::Conv2d(_) | Op::Linear(_) => vec![0.0; c],
                Op::BatchNorm2d(bn) => {
                    let g = param(graph, weights, id, ParamKind::Weight).data();
                    let b = param(graph, weights, id, ParamKind::Bias).data();
                    let m = param(graph, weights, id, ParamKind::RunningMean).data();
                    let var = param(graph, weights, id, ParamKind::RunningVar).data();
                    input(0)
                        .iter()
                        .enumerate()
                        .map(|(i, &x)| {
                            (x - f64::from(m[i])) / (f64::from(var[i]) + f64::from(bn.eps)).sqrt()
                                * f64::from(g[i])
                                + f64::from(b[i])
                        })
                        .collect()
                }
                Op::Relu => input(0).iter().map(|&x| x.max(0.0)).collect(),
                Op::Act(a) => input(0)
                    .iter()
                    .map(|&x| activation::apply_f64(*a, x))
                    .collect(),
                Op::AvgPool2d(p) => {
                    if p.count_include_pad && p.padding.iter().any(|&x| x > 0) {
                        let s = graph.input_shapes(id)[0];
                        let frac = min_valid_fraction(p, s[1], s[2]);
                        for (i, &x) in input(0).iter().enumerate() {
                            if x != 0.0 {
                                pool_border.push((id, i, x.abs() * (1.0 - frac)));
                            }
                        }
                    }
                    input(0).clone()
                }
                Op::MaxPool2d(_) | Op::GlobalAvgPool | Op::Dropout { .. } | Op::Identity => {
                    input(0).clone()
                }
                Op::Flatten => {
                    let per = c / input(0).len();
                    input(0)
                        .iter()
                        .flat_map(|&x| std::iter::repeat_n(x, per))
                        .collect()
                }
                Op::Add => {
                    let mut acc = input(0).clone();
                    for k in 1..node.inputs.len() {
                        for (a, &b) in acc.iter_mut().zip(input(k)) {
                            *a += b;
                        }
                    }
                    acc
                }
                Op::Channel(ch) => {
                    let x = input(0);
                    ch.sources(x.len()).iter().map(|&s| x[s]).collect()
                }
                Op::Concat => (0..node.inputs.len())
                    .flat_map(|k| input(k).iter().copied())
                    .collect(),
                Op::ShortcutA(s) => {
                    let mut v = vec![0.0; s.pad_before];
                    v.extend_from_slice(input(0));
                    v.extend(std::iter::repeat_n(0.0, s.pad_after));
                    v
                }
                // Never read: depgraph blocks every channel of a layer norm, so none is removed.
                Op::LayerNorm(_) => vec![0.0; c],
                Op::Binary(b) => {
                    let ins: Vec<&[f64]> = (0..node.inputs.len()).map(|k| &input(k)[..]).collect();
                    let (v, vary) = binary_constants(graph, weights, id, b, &ins);
                    varying.extend(vary.into_iter().map(|(s, x)| (id, s, x)));
                    v
                }
            };
            assert_eq!(
                v.len(),
                c,
                "constants follow the shapes of node {:?}",
                node.name
            );
            value.push(v);
        }
        Constants {
            value,
            pool_border,
            forced: Vec::new(),
            varying,
        }
    }
}

/// The parameters [`Constants::raw`] reads (biases, batch norms, binary constants) with the
/// forced channels' slices zeroed as [`mask_weights_with`] zeroes them.
fn forced_params(graph: &Graph, weights: &Weights, dg: &DepGraph, forced: &Forced) -> Weights {
    let mut out: Weights = graph
        .param_specs()
        .into_iter()
        .filter(|(id, _, spec)| {
            spec.kind != ParamKind::Weight
                || matches!(graph.node(*id).op, Op::BatchNorm2d(_) | Op::Binary(_))
        })
        .filter_map(|(_, name, _)| weights.get(&name).map(|t| (name, t.clone())))
        .collect();
    for g in dg.groups() {
        let gone: Vec<usize> = (0..g.size).filter(|&r| forced[g.id][r].is_some()).collect();
        for m in &g.members {
            let kinds: &[ParamKind] = match m.role {
                Role::OutChannels | Role::Depthwise => &[ParamKind::Bias],
                Role::BnChannels => &[ParamKind::Weight, ParamKind::Bias],
                Role::Operand if !is_divisor(&graph.node(m.node).op) => &[ParamKind::Weight],
                _ => &[],
            };
            for &kind in kinds {
                if let Some(t) = out.get_mut(&graph.node(m.node).param_name(kind)) {
                    let row: usize = t.shape()[1..].iter().product();
                    for &r in &gone {
                        for &o in &m.idxs[r] {
                            t.data_mut()[o * row..(o + 1) * row].fill(0.0);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Whether a binary op divides by its constant operand.
fn is_divisor(op: &Op) -> bool {
    matches!(op, Op::Binary(b) if b.kind == shears_ir::BinaryKind::Div)
}

/// The removed-channel values at a binary op's output, and the slots where a removed channel
/// meets a varying operand (with the removed operand's |constant|; their value is 0, what
/// forcing gives).
fn binary_constants(
    graph: &Graph,
    weights: &Weights,
    id: NodeId,
    b: &shears_ir::Binary,
    ins: &[&[f64]],
) -> (Vec<f64>, Vec<(usize, f64)>) {
    let c = graph.shape(id)[0];
    let shapes = graph.input_shapes(id);
    let (lc, rc) = operand_classes(b, &shapes);
    let konst = b
        .constant
        .as_ref()
        .map(|_| to_f64(param(graph, weights, id, ParamKind::Weight)));
    // The computed inputs in operand order.
    let (li, ri) = match &b.constant {
        Some(k) if k.left => (None, Some(0)),
        Some(_) => (Some(0), None),
        None => (Some(0), Some(1)),
    };
    let at = |class: OperandClass, inp: Option<usize>, ch: usize| -> Option<f64> {
        match (class, inp) {
            (OperandClass::Removed, Some(k)) => Some(ins[k][ch]),
            (OperandClass::Fixed, None) => {
                let k = konst.as_ref().expect("a constant operand has a weight");
                Some(if k.len() == 1 { k[0] } else { k[ch] })
            }
            _ => None,
        }
    };
    let mut value = Vec::with_capacity(c);
    let mut varying = Vec::new();
    for ch in 0..c {
        match (at(lc, li, ch), at(rc, ri, ch)) {
            (Some(x), Some(y)) => value.push(b.kind.apply(x, y)),
            (x, y) => {
                varying.push((ch, x.or(y).unwrap_or(0.0).abs()));
                value.push(0.0);
            }
        }
    }
    (value, varying)
}

/// Whether a conv's window ever reads its zero padding (then a constant input is not a
/// constant contribution at the border).
pub(crate) fn conv_reads_padding(
    c: &shears_ir::Conv2d,
    in_shape: &[usize],
    out_shape: &[usize],
) -> bool {
    let rows = tap_patterns(
        in_shape[1],
        out_shape[1],
        c.kernel[0],
        c.stride[0],
        c.padding[0],
        c.dilation[0],
    );
    let cols = tap_patterns(
        in_shape[2],
        out_shape[2],
        c.kernel[1],
        c.stride[1],
        c.padding[1],
        c.dilation[1],
    );
    let all_valid = |p: &Vec<Vec<bool>>| p.iter().all(|v| v.iter().all(|&x| x));
    !(all_valid(&rows) && all_valid(&cols))
}

/// For each tap index along one axis, which output positions read inside the input; returns
/// the distinct validity patterns.
pub(crate) fn tap_patterns(
    n_in: usize,
    n_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
) -> Vec<Vec<bool>> {
    let mut pats: Vec<Vec<bool>> = Vec::new();
    for o in 0..n_out {
        let p: Vec<bool> = (0..k)
            .map(|t| {
                let i = (o * stride + t * dil) as isize - pad as isize;
                i >= 0 && (i as usize) < n_in
            })
            .collect();
        if !pats.contains(&p) {
            pats.push(p);
        }
    }
    pats
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&x| f64::from(x)).collect()
}

/// The smallest fraction of an average-pool window that lies inside an `h` x `w` input.
fn min_valid_fraction(p: &shears_ir::Pool2d, h: usize, w: usize) -> f64 {
    let axis = |n: usize, k: usize, s: usize, pb: usize, pa: usize| -> usize {
        let Some(out) = (n + pb + pa).checked_sub(k).map(|x| x / s + 1) else {
            return k;
        };
        (0..out)
            .map(|o| {
                (0..k)
                    .filter(|&t| {
                        let i = (o * s + t) as isize - pb as isize;
                        i >= 0 && (i as usize) < n
                    })
                    .count()
            })
            .min()
            .unwrap_or(k)
    };
    let vh = axis(h, p.kernel[0], p.stride[0], p.padding[0], p.padding[2]);
    let vw = axis(w, p.kernel[1], p.stride[1], p.padding[1], p.padding[3]);
    (vh * vw) as f64 / (p.kernel[0] * p.kernel[1]) as f64
}
