//! Exact MACs and parameter counts of a pruned graph, without building it.
//!
//! The widths of every node after pruning follow from the removed channels alone (each removed
//! channel removes its slots at every node), so MACs and parameters are computed analytically
//! with the same formulas as [`Graph::macs`] and [`Graph::n_params`], including the biases that
//! surgery adds to bias-free consumers when it folds a nonzero constant.

use serde::{Deserialize, Serialize};
use shears_ir::{Graph, NodeId, Op};

use shears_ir::Weights;

use super::depgraph::{is_depthwise, Channel, DepGraph};
use super::error::Result;
use super::mask::{check_weights, Constants};
use super::plan::{Plan, Removal};

/// MACs per sample and trainable parameters of a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Multiply-accumulates per sample (conv and linear), as [`Graph::macs`].
    pub macs: u64,
    /// Trainable parameters, as [`Graph::n_params`].
    pub params: u64,
}

/// The exact MACs and parameters of the graph that [`super::prune()`] would produce for `plan`,
/// computed without building it (biases added by constant folding, under the plan's
/// [`super::FoldMode`], included).
///
/// ```
/// use shears::prune::{predict_cost, prune, DepGraph, Plan, PlanGroup};
/// use shears::zoo::{build, init_weights, Arch};
/// let g = build(Arch::Conv4, &Arch::Conv4.default_config()).unwrap();
/// let w = init_weights(&g, Some(Arch::Conv4), 0);
/// let dg = DepGraph::build(&g).unwrap();
/// let mut plan = Plan::empty(&g);
/// plan.groups.push(PlanGroup { group_id: 2, root: "features.3".into(), removed: vec![1, 2, 3] });
/// let c = predict_cost(&g, &w, &dg, &plan).unwrap();
/// let p = prune(&g, &w, &plan).unwrap();
/// assert_eq!((c.macs, c.params), (p.graph.macs(), p.graph.n_params()));
/// ```
pub fn predict_cost(graph: &Graph, weights: &Weights, dg: &DepGraph, plan: &Plan) -> Result<Cost> {
    check_weights(graph, weights)?;
    let removal = plan.resolve(graph, dg)?;
    let consts = Constants::compute(graph, weights, dg, plan.fold);
    Ok(CostModel::new(graph, dg, &consts).cost(&removal))
}

/// Evaluates [`Cost`] for many candidate removals of one graph (used by the budget solver).
pub(crate) struct CostModel {
    layers: Vec<Layer>,
    /// Per node, its slots' channels (only nodes some layer reads the width of).
    widths: Vec<Option<Vec<Channel>>>,
}

struct Layer {
    node: NodeId,
    input: Option<NodeId>,
    kind: LayerKind,
    /// Channels at the input that carry a nonzero constant (a bias appears if one is removed).
    fold_channels: Vec<Channel>,
}

enum LayerKind {
    Conv {
        k: u64,
        spatial: u64,
        groups: u64,
        depthwise: bool,
        bias: bool,
    },
    Linear {
        bias: bool,
    },
    Bn,
    /// A binary op's constant operand: `per_channel` values per output channel when it follows
    /// the channels, else `total` values whatever is removed.
    Operand {
        per_channel: u64,
        total: u64,
        follows: bool,
    },
}

impl CostModel {
    pub(crate) fn new(graph: &Graph, dg: &DepGraph, consts: &Constants) -> CostModel {
        let mut layers = Vec::new();
        let mut widths: Vec<Option<Vec<Channel>>> = vec![None; graph.len()];
        for id in graph.ids() {
            let node = graph.node(id);
            let fold_channels = |input: NodeId| -> Vec<Channel> {
                let mut v: Vec<Channel> = dg
                    .channels(input)
                    .iter()
                    .zip(&consts.value[input.0])
                    .filter(|(_, &c)| c != 0.0)
                    .map(|(&ch, _)| ch)
                    .collect();
                v.sort_unstable_by_key(|c| (c.group, c.idx));
                v.dedup();
                v
            };
            let (kind, input, folds) = match &node.op {
                Op::Conv2d(c) => {
                    let dw = is_depthwise(&node.op);
                    let inp = node.inputs[0];
                    let s = graph.shape(id);
                    let folds = if c.bias || dw {
                        Vec::new()
                    } else {
                        fold_channels(inp)
                    };
                    (
                        LayerKind::Conv {
                            k: (c.kernel[0] * c.kernel[1]) as u64,
                            spatial: (s[1] * s[2]) as u64,
                            groups: c.groups as u64,
                            depthwise: dw,
                            bias: c.bias,
                        },
                        Some(inp),
                        folds,
                    )
                }
                Op::Linear(l) => {
                    let inp = node.inputs[0];
                    let folds = if l.bias {
                        Vec::new()
                    } else {
                        fold_channels(inp)
                    };
                    (LayerKind::Linear { bias: l.bias }, Some(inp), folds)
                }
                Op::BatchNorm2d(_) => (LayerKind::Bn, None, Vec::new()),
                Op::Binary(b) => {
                    let Some(k) = &b.constant else { continue };
                    let total: usize = k.shape.iter().product();
                    let kind = LayerKind::Operand {
                        per_channel: (total / k.shape[0]) as u64,
                        total: total as u64,
                        follows: k.shape[0] == graph.shape(id)[0],
                    };
                    (kind, None, Vec::new())
                }
                _ => continue,
            };
            widths[id.0] = Some(dg.channels(id).to_vec());
            if let Some(i) = input {
                widths[i.0] = Some(dg.channels(i).to_vec());
            }
            layers.push(Layer {
                node: id,
                input,
                kind,
                fold_channels: folds,
            });
        }
        CostModel { layers, widths }
    }

    pub(crate) fn cost(&self, removal: &Removal) -> Cost {
        let width = |n: NodeId| -> u64 {
            let chs = self.widths[n.0]
                .as_ref()
                .expect("widths are recorded for every layer and its input");
            chs.iter().filter(|&&c| !removal.contains(c)).count() as u64
        };
        let mut macs = 0u64;
        let mut params = 0u64;
        for l in &self.layers {
            let out = width(l.node);
            let folded = || l.fold_channels.iter().any(|&c| removal.contains(c));
            match l.kind {
                LayerKind::Conv {
                    k,
                    spatial,
                    groups,
                    depthwise,
                    bias,
                } => {
                    let per_group_in = if depthwise {
                        1
                    } else {
                        width(l.input.expect("convs have an input")) / groups
                    };
                    let w = out * per_group_in * k;
                    macs += w * spatial;
                    params += w + if bias || folded() { out } else { 0 };
                }
                LayerKind::Linear { bias } => {
                    let inp = width(l.input.expect("linears have an input"));
                    macs += inp * out;
                    params += inp * out + if bias || folded() { out } else { 0 };
                }
                LayerKind::Bn => params += 2 * out,
                LayerKind::Operand {
                    per_channel,
                    total,
                    follows,
                } => params += if follows { out * per_channel } else { total },
            }
        }
        Cost { macs, params }
    }
}
