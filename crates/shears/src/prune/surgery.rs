//! Surgery: physically remove a plan's channels, one [`Patch`] per group.
//!
//! Data in, data out: surgery reads the graph and weights and writes a smaller graph and
//! weights; it never runs the model. For each group that loses channels, one patch labelled
//! `prune group <id> (<root>)` shrinks every member (conv in / out channels, depthwise groups,
//! BN features, linear in / out features, option-A pad counts, binary ops' constant operands,
//! channel ranges' start and end;
//! concat, flatten and pass-through ops follow through shape inference), and every member's tensors are sliced on the matching
//! axis.
//!
//! **Constant folding.** A removed channel is a constant `c` in the masked model (see
//! [`super::mask`]). Its contribution to each consumer is added to the consumer's bias before
//! the channel is sliced away: `b[o] += c * sum(W[o, k, :, :])` for a conv, `b[o] += c *
//! sum_j W[o, k_j]` for a linear layer (`k_j` over the flattened features of the channel). A
//! consumer without a bias gets one (zeros plus the fold) when any folded constant is nonzero.
//! This is exact for linear layers and for convolutions without zero padding; a padded
//! convolution sees the constant only over the in-image taps at the border, so there a fold is
//! exact in the interior only. What happens then is the plan's [`FoldMode`] ([`Plan::fold`]):
//!
//! - [`FoldMode::Exact`] (default): such a channel is forced to zero in the masked model
//!   (producer weights and biases, BN `gamma` and `beta`; see [`super::mask`]) and is dropped
//!   without folding. Surgery is then exact for every plan: the pruned model equals the masked
//!   model up to float rounding, and [`SurgeryReport::approximations`] is empty.
//!   [`SurgeryReport::zeroed_channels`] counts the channels treated so.
//! - [`FoldMode::Interior`]: the constant is folded anyway (exact in the interior). The border
//!   deviation is computed analytically (the sum of the out-of-image taps times the constant,
//!   maximised over output channels and border positions) and reported in
//!   [`SurgeryReport::approximations`].
//!
//! A plan that removes nothing returns clones of the graph and weights (bit-identical).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use shears_ir::{ChannelOp, Graph, NodeId, Op, ParamKind, Patch, Tensor, Weights};

use super::cost::Cost;
use super::depgraph::{is_depthwise, DepGraph, Role};
use super::error::{PruneError, Result};
use super::mask::{check_weights, tap_patterns, Constants, FoldMode};
use super::plan::Plan;

/// What surgery did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurgeryReport {
    /// Groups that lost channels, in the order their patches were applied.
    pub groups: Vec<GroupChange>,
    /// MACs and parameters before.
    pub before: Cost,
    /// MACs and parameters after.
    pub after: Cost,
    /// Constant contributions folded into consumer biases.
    pub folds: Vec<Fold>,
    /// Places where the pruned model only approximates the masked model, with the size of the
    /// deviation. Empty when surgery is exact (always in [`FoldMode::Exact`]).
    pub approximations: Vec<Approximation>,
    /// How constants were folded (the plan's [`Plan::fold`]).
    #[serde(default)]
    pub fold: FoldMode,
    /// Removed channels whose nonzero constant could not be folded exactly and that the masked
    /// model therefore forces to zero ([`FoldMode::Exact`]); surgery dropped them unfolded.
    #[serde(default)]
    pub zeroed_channels: usize,
    /// The largest |constant| among those channels, at a consumer that could not take it
    /// exactly (0 when none): how far the masked model departs from merely zeroing weights.
    #[serde(default)]
    pub max_zeroed_constant: f64,
}

impl SurgeryReport {
    /// Whether the pruned model reproduces the masked model exactly (up to float rounding).
    pub fn is_exact(&self) -> bool {
        self.approximations.is_empty()
    }

    /// Largest reported deviation (0 when exact).
    pub fn max_deviation(&self) -> f64 {
        self.approximations
            .iter()
            .map(|a| a.max_abs_delta)
            .fold(0.0, f64::max)
    }
}

/// One group's patch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChange {
    /// The group id.
    pub group_id: usize,
    /// Its root node's name.
    pub root: String,
    /// Channels before.
    pub size: usize,
    /// Channels removed.
    pub removed: usize,
}

/// Constants of one group's removed channels folded into one consumer's bias.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fold {
    /// The group id.
    pub group_id: usize,
    /// The consumer (conv or linear) whose bias received the fold.
    pub consumer: String,
    /// Input indices with a nonzero constant that were folded.
    pub n_folded: usize,
    /// Largest |constant| folded.
    pub max_abs_constant: f64,
    /// Whether the consumer had no bias and got one.
    pub bias_added: bool,
}

/// Where an approximation arises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApproxKind {
    /// A zero-padded conv consumes a nonzero constant: exact in the interior only.
    ConvBorder,
    /// An average pool that counts padding averages a nonzero constant: exact in the interior
    /// only.
    AvgPoolBorder,
}

/// A reported approximation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approximation {
    /// The group whose removal causes it.
    pub group_id: usize,
    /// The node whose output deviates.
    pub node: String,
    /// What kind.
    pub kind: ApproxKind,
    /// Largest |pruned − masked| at that node's output (before later layers propagate it).
    pub max_abs_delta: f64,
}

impl fmt::Display for Approximation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ApproxKind::ConvBorder => "border approximation",
            ApproxKind::AvgPoolBorder => "average-pool border approximation",
        };
        write!(
            f,
            "{what} at {} (group {}): max |delta| = {:e}",
            self.node, self.group_id, self.max_abs_delta
        )
    }
}

/// Applies `plan` to `graph` and `weights` (see the module docs), folding constants as
/// [`Plan::fold`] says.
///
/// ```
/// use shears::prune::{apply_plan, Plan, PlanGroup};
/// use shears::zoo::{build, init_weights, Arch};
/// let g = build(Arch::LeNet5, &Arch::LeNet5.default_config()).unwrap();
/// let w = init_weights(&g, Some(Arch::LeNet5), 0);
/// let mut plan = Plan::empty(&g);
/// plan.groups.push(PlanGroup { group_id: 2, root: "conv2".into(), removed: vec![0, 1] });
/// let (pg, pw, report) = apply_plan(&g, &w, &plan).unwrap();
/// assert_eq!(pw.get("conv2.weight").unwrap().shape(), &[62, 32, 3, 3]);
/// assert_eq!(pw.get("linear1.weight").unwrap().shape(), &[200, 62 * 49]);
/// assert_eq!(report.before.params - report.after.params, 2 * (32 * 9 + 1) + 2 * 49 * 200);
/// assert_eq!(pg.n_params(), report.after.params);
/// ```
pub fn apply_plan(
    graph: &Graph,
    weights: &Weights,
    plan: &Plan,
) -> Result<(Graph, Weights, SurgeryReport)> {
    let dg = DepGraph::build(graph)?;
    apply_plan_with(graph, weights, &dg, plan)
}

#[derive(Default)]
struct Edit {
    /// Original output slots to drop (out channels, BN features, depthwise channels).
    out: Vec<usize>,
    /// Original input slots to drop (consumer in-channels).
    inp: Vec<usize>,
    /// Original output slots of a shortcut's padding to drop.
    pad: Vec<usize>,
}

/// [`apply_plan`] with a dependency graph already built for `graph`.
pub fn apply_plan_with(
    graph: &Graph,
    weights: &Weights,
    dg: &DepGraph,
    plan: &Plan,
) -> Result<(Graph, Weights, SurgeryReport)> {
    check_weights(graph, weights)?;
    let removal = plan.resolve(graph, dg)?;
    let before = Cost {
        macs: graph.macs(),
        params: graph.n_params(),
    };
    let mut report = SurgeryReport {
        groups: Vec::new(),
        before,
        after: before,
        folds: Vec::new(),
        approximations: Vec::new(),
        fold: plan.fold,
        zeroed_channels: 0,
        max_zeroed_constant: 0.0,
    };
    if removal.is_empty() {
        return Ok((graph.clone(), weights.clone(), report));
    }
    for id in graph.ids() {
        let chs = dg.channels(id);
        if chs.iter().all(|&c| removal.contains(c)) {
            return Err(PruneError::Plan(format!(
                "the plan removes all {} channels of node {:?}",
                chs.len(),
                graph.node(id).name
            )));
        }
    }
    let consts = Constants::compute(graph, weights, dg, plan.fold);
    for group in dg.groups() {
        for r in removal.of(group.id) {
            if let Some(c) = consts.forced[group.id][r] {
                report.zeroed_channels += 1;
                report.max_zeroed_constant = report.max_zeroed_constant.max(c);
            }
        }
    }
    let mut g = graph.clone();
    let mut w = weights.clone();
    let mut gone: Vec<Vec<bool>> = graph
        .ids()
        .map(|id| vec![false; graph.shape(id)[0]])
        .collect();
    for group in dg.groups() {
        let rm = removal.of(group.id);
        if rm.is_empty() {
            continue;
        }
        let root = graph.node(group.root).name.clone();
        let mut patch = Patch::new(format!("prune group {} ({root})", group.id));
        let mut edits: BTreeMap<NodeId, Edit> = BTreeMap::new();
        for m in &group.members {
            let mut orig: Vec<usize> = rm.iter().flat_map(|&r| m.idxs[r].iter().copied()).collect();
            if orig.is_empty() {
                continue;
            }
            orig.sort_unstable();
            let e = edits.entry(m.node).or_default();
            match m.role {
                Role::OutChannels | Role::Depthwise | Role::BnChannels | Role::Operand => {
                    e.out = orig
                }
                Role::InChannels | Role::SliceInput => e.inp = orig,
                Role::ShortcutPad => e.pad = orig,
            }
        }
        for (&id, e) in &edits {
            let op = edit_node(
                graph,
                &g,
                &mut w,
                &consts,
                &gone,
                id,
                e,
                group.id,
                &mut report,
            );
            patch.replace_op(id, op);
        }
        let patched = patch.apply(&g)?;
        assert!(
            patched
                .old_to_new
                .iter()
                .enumerate()
                .all(|(i, n)| *n == Some(NodeId(i))),
            "surgery only replaces ops, so node ids are stable"
        );
        g = patched.graph;
        let mut pool_dev: BTreeMap<NodeId, f64> = BTreeMap::new();
        for &(node, slot, dev) in &consts.pool_border {
            let ch = dg.channels(node)[slot];
            if ch.group == group.id && removal.contains(ch) {
                let d = pool_dev.entry(node).or_insert(0.0);
                *d = d.max(dev);
            }
        }
        for (node, dev) in pool_dev {
            report.approximations.push(Approximation {
                group_id: group.id,
                node: graph.node(node).name.clone(),
                kind: ApproxKind::AvgPoolBorder,
                max_abs_delta: dev,
            });
        }
        for id in graph.ids() {
            for (s, ch) in dg.channels(id).iter().enumerate() {
                if ch.group == group.id && removal.contains(*ch) {
                    gone[id.0][s] = true;
                }
            }
        }
        report.groups.push(GroupChange {
            group_id: group.id,
            root,
            size: group.size,
            removed: rm.len(),
        });
    }
    report.after = Cost {
        macs: g.macs(),
        params: g.n_params(),
    };
    Ok((g, w, report))
}

/// Current positions of the original slots `orig` of a node whose slots `gone` were removed
/// by earlier patches.
fn positions(gone: &[bool], orig: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(orig.len());
    let mut cur = 0;
    let mut it = orig.iter().peekable();
    for (s, &x) in gone.iter().enumerate() {
        if it.peek() == Some(&&s) {
            assert!(!x, "a slot belongs to one group and is removed once");
            out.push(cur);
            it.next();
        }
        if !x {
            cur += 1;
        }
    }
    assert!(
        it.next().is_none(),
        "original slots lie within the node's width"
    );
    out
}

/// `t` without the indices `drop` (sorted) on `axis`.
fn drop_along(t: &Tensor, axis: usize, drop: &[usize]) -> Tensor {
    if drop.is_empty() {
        return t.clone();
    }
    let shape = t.shape();
    let outer: usize = shape[..axis].iter().product();
    let dim = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut keep = vec![true; dim];
    for &d in drop {
        keep[d] = false;
    }
    let mut data = Vec::with_capacity(outer * (dim - drop.len()) * inner);
    for o in 0..outer {
        for (i, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
            let start = (o * dim + i) * inner;
            data.extend_from_slice(&t.data()[start..start + inner]);
        }
    }
    let mut new_shape = shape.to_vec();
    new_shape[axis] = dim - drop.len();
    Tensor::new(new_shape, data).expect("sliced data matches the sliced shape")
}

fn slice_param(w: &mut Weights, name: &str, axis: usize, drop: &[usize]) {
    if drop.is_empty() {
        return;
    }
    let t = w
        .get(name)
        .unwrap_or_else(|| panic!("weights were checked against the graph, yet {name} is missing"));
    let t = drop_along(t, axis, drop);
    w.insert(name, t);
}

/// Builds the new op of node `id` for one group's edit and slices its tensors in `w`.
fn edit_node(
    orig: &Graph,
    g: &Graph,
    w: &mut Weights,
    consts: &Constants,
    gone: &[Vec<bool>],
    id: NodeId,
    e: &Edit,
    group_id: usize,
    report: &mut SurgeryReport,
) -> Op {
    let node = g.node(id);
    let pname = |k: ParamKind| node.param_name(k);
    let out_cur = positions(&gone[id.0], &e.out);
    match &node.op {
        Op::Conv2d(c) => {
            let mut c = c.clone();
            let dw = is_depthwise(&orig.node(id).op);
            let inp = node.inputs[0];
            let in_cur = positions(&gone[inp.0], &e.inp);
            if !dw && !e.inp.is_empty() {
                let sources = fold_sources(consts, inp, &e.inp, &in_cur);
                if !sources.is_empty() {
                    let wt = w.get(&pname(ParamKind::Weight)).expect("checked");
                    let (fold, dev) =
                        conv_fold(wt, &sources, &c, g.input_shapes(id)[0], g.shape(id));
                    let added = add_bias(w, &pname(ParamKind::Bias), c.bias, &fold);
                    c.bias = true;
                    push_fold(report, group_id, &node.name, &sources, added);
                    if dev > 0.0 {
                        report.approximations.push(Approximation {
                            group_id,
                            node: node.name.clone(),
                            kind: ApproxKind::ConvBorder,
                            max_abs_delta: dev,
                        });
                    }
                }
            }
            slice_param(w, &pname(ParamKind::Weight), 0, &out_cur);
            if c.bias {
                slice_param(w, &pname(ParamKind::Bias), 0, &out_cur);
            }
            c.out_channels -= out_cur.len();
            if dw {
                c.in_channels = c.out_channels;
                c.groups = c.out_channels;
            } else {
                slice_param(w, &pname(ParamKind::Weight), 1, &in_cur);
                c.in_channels -= in_cur.len();
            }
            Op::Conv2d(c)
        }
        Op::Linear(l) => {
            let mut l = l.clone();
            let inp = node.inputs[0];
            let in_cur = positions(&gone[inp.0], &e.inp);
            let sources = fold_sources(consts, inp, &e.inp, &in_cur);
            if !sources.is_empty() {
                let wt = w.get(&pname(ParamKind::Weight)).expect("checked");
                let n_in = wt.shape()[1];
                let fold: Vec<f64> = wt
                    .data()
                    .chunks(n_in)
                    .map(|row| sources.iter().map(|&(k, c)| c * f64::from(row[k])).sum())
                    .collect();
                let added = add_bias(w, &pname(ParamKind::Bias), l.bias, &fold);
                l.bias = true;
                push_fold(report, group_id, &node.name, &sources, added);
            }
            slice_param(w, &pname(ParamKind::Weight), 0, &out_cur);
            slice_param(w, &pname(ParamKind::Weight), 1, &in_cur);
            if l.bias {
                slice_param(w, &pname(ParamKind::Bias), 0, &out_cur);
            }
            l.out_features -= out_cur.len();
            l.in_features -= in_cur.len();
            Op::Linear(l)
        }
        Op::BatchNorm2d(b) => {
            let mut b = b.clone();
            for k in [
                ParamKind::Weight,
                ParamKind::Bias,
                ParamKind::RunningMean,
                ParamKind::RunningVar,
            ] {
                slice_param(w, &pname(k), 0, &out_cur);
            }
            b.num_features -= out_cur.len();
            Op::BatchNorm2d(b)
        }
        Op::ShortcutA(s) => {
            let Op::ShortcutA(s0) = &orig.node(id).op else {
                unreachable!("surgery never changes op types")
            };
            let front = e.pad.iter().filter(|&&i| i < s0.pad_before).count();
            let mut s = s.clone();
            s.pad_before -= front;
            s.pad_after -= e.pad.len() - front;
            Op::ShortcutA(s)
        }
        Op::Binary(b) => {
            let mut b = b.clone();
            slice_param(w, &pname(ParamKind::Weight), 0, &out_cur);
            let k = b
                .constant
                .as_mut()
                .expect("operand members have a constant operand");
            k.shape[0] -= out_cur.len();
            Op::Binary(b)
        }
        Op::Channel(ChannelOp::Slice { start, end }) => {
            let in_cur = positions(&gone[node.inputs[0].0], &e.inp);
            let before = |x: usize| in_cur.iter().filter(|&&k| k < x).count();
            ChannelOp::Slice {
                start: start - before(*start),
                end: end - before(*end),
            }
            .into()
        }
        op => unreachable!(
            "group members are convs, linears, BNs, shortcuts, binary operands and channel \
             ranges, not {}",
            op.type_name()
        ),
    }
}

/// `(current input index, constant)` of the removed input slots whose constant is nonzero.
fn fold_sources(
    consts: &Constants,
    inp: NodeId,
    orig: &[usize],
    cur: &[usize],
) -> Vec<(usize, f64)> {
    orig.iter()
        .zip(cur)
        .map(|(&s, &k)| (k, consts.value[inp.0][s]))
        .filter(|&(_, c)| c != 0.0)
        .collect()
}

fn push_fold(
    report: &mut SurgeryReport,
    group_id: usize,
    consumer: &str,
    sources: &[(usize, f64)],
    bias_added: bool,
) {
    report.folds.push(Fold {
        group_id,
        consumer: consumer.to_string(),
        n_folded: sources.len(),
        max_abs_constant: sources.iter().map(|s| s.1.abs()).fold(0.0, f64::max),
        bias_added,
    });
}

/// Adds `fold` to the bias `name` (creating it if `has_bias` is false); returns whether it was
/// created.
fn add_bias(w: &mut Weights, name: &str, has_bias: bool, fold: &[f64]) -> bool {
    if has_bias {
        let b = w.get_mut(name).expect("checked");
        for (x, &f) in b.data_mut().iter_mut().zip(fold) {
            *x = (f64::from(*x) + f) as f32;
        }
        false
    } else {
        let data = fold.iter().map(|&f| f as f32).collect();
        w.insert(
            name,
            Tensor::new(vec![fold.len()], data).expect("one bias per output"),
        );
        true
    }
}

/// The bias fold of constant input channels into a conv (one entry per output channel), and
/// the largest |deviation| at border positions (0 if the window never leaves the image).
fn conv_fold(
    wt: &Tensor,
    sources: &[(usize, f64)],
    c: &shears_ir::Conv2d,
    in_shape: &[usize],
    out_shape: &[usize],
) -> (Vec<f64>, f64) {
    let [o_n, i_n, kh, kw] = [wt.shape()[0], wt.shape()[1], wt.shape()[2], wt.shape()[3]];
    let data = wt.data();
    let tap =
        |o: usize, k: usize, a: usize, b: usize| f64::from(data[((o * i_n + k) * kh + a) * kw + b]);
    let fold: Vec<f64> = (0..o_n)
        .map(|o| {
            sources
                .iter()
                .map(|&(k, cst)| {
                    let mut s = 0.0;
                    for a in 0..kh {
                        for b in 0..kw {
                            s += tap(o, k, a, b);
                        }
                    }
                    cst * s
                })
                .sum()
        })
        .collect();
    let rows = tap_patterns(
        in_shape[1],
        out_shape[1],
        kh,
        c.stride[0],
        c.padding[0],
        c.dilation[0],
    );
    let cols = tap_patterns(
        in_shape[2],
        out_shape[2],
        kw,
        c.stride[1],
        c.padding[1],
        c.dilation[1],
    );
    let all_valid = |p: &Vec<Vec<bool>>| p.iter().all(|v| v.iter().all(|&x| x));
    if all_valid(&rows) && all_valid(&cols) {
        return (fold, 0.0);
    }
    let mut dev: f64 = 0.0;
    for o in 0..o_n {
        for r in &rows {
            for cpat in &cols {
                let mut d = 0.0;
                for &(k, cst) in sources {
                    let mut s = 0.0;
                    for a in 0..kh {
                        for b in 0..kw {
                            if !(r[a] && cpat[b]) {
                                s += tap(o, k, a, b);
                            }
                        }
                    }
                    d += cst * s;
                }
                dev = dev.max(d.abs());
            }
        }
    }
    (fold, dev)
}
