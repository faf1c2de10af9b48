//! The masked model: the reference that surgery must reproduce.
//!
//! **Definition.** For a plan, the *masked model* is the original graph with the original
//! weights, except that every removed channel's *producer* weights are zero: for each removed
//! channel and each member of its group with role [`Role::OutChannels`] or [`Role::Depthwise`],
//! the weight slice on axis 0 (the conv filter, or the linear row) is set to 0. Nothing else
//! changes: biases, batch-norm parameters and statistics, and every consumer keep their values.
//!
//! In the masked model a removed channel is therefore spatially constant wherever it flows:
//! `bias` (or 0) at its producers; `(c - mean) / sqrt(var + eps) * gamma + beta` after a batch
//! norm; `max(0, c)` after ReLU; unchanged through max pooling, global pooling, dropout,
//! identity, flatten, concat and the non-padded part of an option-A shortcut; the sum of the
//! branches' constants after `Add`; 0 at a shortcut's pad slots. Surgery removes the channel and
//! adds its constant contribution to each consumer's bias ([`super::surgery`]), which is
//! exact for linear layers and for convolutions whose window never reads the zero padding, and
//! exact everywhere when the constant is 0 (the common case of a channel whose weights, bias
//! and BN shift are all zero). Two cases are not exact and are reported, with their size, by
//! [`super::SurgeryReport::approximations`]:
//! - a padded convolution consuming a nonzero constant: at the border the masked model sees
//!   the constant only over the taps inside the image;
//! - an average pool with zero padding counted in the divisor (`count_include_pad`) on a
//!   nonzero constant: the masked model's value shrinks at the border.

use shears_ir::{Graph, NodeId, Op, ParamKind, Tensor, Weights};

use super::depgraph::{DepGraph, Role};
use super::error::{PruneError, Result};
use super::plan::Plan;

/// The masked model's weights for `plan` (see the module docs for the exact definition).
///
/// ```
/// use shears::prune::{mask_weights, Plan, PlanGroup};
/// use shears::zoo::{build, init_weights, Arch};
/// let g = build(Arch::LeNet5, &Arch::LeNet5.default_config()).unwrap();
/// let w = init_weights(&g, Some(Arch::LeNet5), 0);
/// let mut plan = Plan::empty(&g);
/// plan.groups.push(PlanGroup { group_id: 1, root: "conv1".into(), removed: vec![3] });
/// let m = mask_weights(&g, &w, &plan).unwrap();
/// let filter = &m.get("conv1.weight").unwrap().data()[3 * 9..4 * 9];
/// assert!(filter.iter().all(|&x| x == 0.0));
/// assert_eq!(m.get("conv1.bias"), w.get("conv1.bias")); // biases are kept
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
    let mut out = weights.clone();
    for g in dg.groups() {
        let gone = removal.of(g.id);
        if gone.is_empty() {
            continue;
        }
        for m in &g.members {
            if !matches!(m.role, Role::OutChannels | Role::Depthwise) {
                continue;
            }
            let name = graph.node(m.node).param_name(ParamKind::Weight);
            let t = out
                .get_mut(&name)
                .expect("weights were checked against the graph");
            let row: usize = t.shape()[1..].iter().product();
            for &r in &gone {
                for &o in &m.idxs[r] {
                    t.data_mut()[o * row..(o + 1) * row].fill(0.0);
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

/// The value every output slot of every node takes in the masked model if that slot's channel
/// is removed (see the module docs), computed in f64 from the original weights. A removed
/// channel's value depends only on its own slots, so one pass serves every plan.
#[derive(Clone, Debug)]
pub(crate) struct Constants {
    /// `value[node][slot]`.
    pub(crate) value: Vec<Vec<f64>>,
    /// Average pools that count zero padding: `(node, slot, max |delta|)` of the border effect
    /// on a nonzero constant.
    pub(crate) pool_border: Vec<(NodeId, usize, f64)>,
}

impl Constants {
    pub(crate) fn compute(graph: &Graph, weights: &Weights) -> Constants {
        let mut value: Vec<Vec<f64>> = Vec::with_capacity(graph.len());
        let mut pool_border = Vec::new();
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
                Op::Concat => (0..node.inputs.len())
                    .flat_map(|k| input(k).iter().copied())
                    .collect(),
                Op::ShortcutA(s) => {
                    let mut v = vec![0.0; s.pad_before];
                    v.extend_from_slice(input(0));
                    v.extend(std::iter::repeat_n(0.0, s.pad_after));
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
        Constants { value, pool_border }
    }
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
