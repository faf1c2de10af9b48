//! The planner: splits the nodes a pass needs into steps, fusing conv + BN (+ ReLU), conv
//! pairs into chains and residual block ends, and links chains that hand over planes.

use shears_ir::{Graph, NodeId, Op};

use crate::kernels::conv::{self, ChainIo, ConvGeom};

use super::step::Step;
use super::{Geo, Mode, Network};

/// The planner's "the only consumer of this value, if it satisfies this predicate".
type OnlyConsumer<'a> = &'a dyn Fn(NodeId, &dyn Fn(&Op) -> bool) -> Option<NodeId>;

/// What a pass's steps are planned from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PlanKey {
    pub(super) needed: Vec<bool>,
    pub(super) fed: Vec<bool>,
    pub(super) keep_out: Vec<bool>,
    pub(super) mode: Mode,
    pub(super) record: bool,
    pub(super) chain_convs: bool,
    pub(super) fuse_residuals: bool,
}

/// The inference geometries of residual blocks' conv pairs (conv, BN, ReLU, conv, BN, add of
/// the first conv's input, ReLU; each feeding only the next) that can run as one chain.
pub(super) fn residual_pair_geos(
    graph: &Graph,
    consumers: &[Vec<NodeId>],
    geo: &[Geo],
) -> Vec<Option<ConvGeom>> {
    let mut out: Vec<Option<ConvGeom>> = vec![None; graph.len()];
    let only = |id: NodeId, pred: &dyn Fn(&Op) -> bool| match consumers[id.0].as_slice() {
        [c] if pred(&graph.node(*c).op) => Some(*c),
        _ => None,
    };
    let is = |want: fn(&Op) -> bool| move |op: &Op| want(op);
    for c1 in graph.ids() {
        let pair = (|| {
            let bn1 = only(c1, &is(|op| matches!(op, Op::BatchNorm2d(_))))?;
            let r1 = only(bn1, &is(|op| matches!(op, Op::Relu)))?;
            let c2 = only(r1, &is(|op| matches!(op, Op::Conv2d(_))))?;
            let bn2 = only(c2, &is(|op| matches!(op, Op::BatchNorm2d(_))))?;
            let add = only(bn2, &is(|op| matches!(op, Op::Add)))?;
            only(add, &is(|op| matches!(op, Op::Relu)))?;
            let x = graph.node(c1).inputs[0];
            let ins = &graph.node(add).inputs;
            (ins.len() == 2 && ins.contains(&x) && ins.contains(&bn2)).then_some(c2)
        })();
        let Some(c2) = pair else { continue };
        if let (Geo::Conv(g1), Geo::Conv(g2)) = (&geo[c1.0], &geo[c2.0]) {
            if let Some((t1, t2)) = conv::residual_pair(g1, g2) {
                out[c1.0] = Some(t1);
                out[c2.0] = Some(t2);
            }
        }
    }
    out
}

/// The state of planning one pass: the nodes fused away so far, the values produced so far,
/// and the steps.
struct Planner<'p> {
    net: &'p Network,
    needed: &'p [bool],
    fed: &'p [bool],
    keep_out: &'p [bool],
    /// Nodes fused into a step already planned.
    absorbed: Vec<bool>,
    /// Values that an earlier step computes.
    produced: Vec<bool>,
    steps: Vec<Step>,
    /// Fused residual-block ends waiting for their other addend: (addend, step).
    pending: Vec<(NodeId, Step)>,
}

fn is_bn(op: &Op) -> bool {
    matches!(op, Op::BatchNorm2d(_))
}

fn is_conv(op: &Op) -> bool {
    matches!(op, Op::Conv2d(_))
}

fn is_relu(op: &Op) -> bool {
    matches!(op, Op::Relu)
}

fn is_add(op: &Op) -> bool {
    matches!(op, Op::Add)
}

impl Planner<'_> {
    /// The only consumer of `id`, if it runs in this pass, is neither fed nor fused yet and
    /// satisfies `pred`, and `id` itself is not returned.
    fn only_consumer(&self, id: NodeId, pred: &dyn Fn(&Op) -> bool) -> Option<NodeId> {
        match self.net.consumers[id.0].as_slice() {
            [c] if self.needed[c.0]
                && !self.fed[c.0]
                && !self.absorbed[c.0]
                && !self.keep_out[id.0]
                && pred(&self.net.graph.node(*c).op) =>
            {
                Some(*c)
            }
            _ => None,
        }
    }

    /// An inference conv: alone, fused with its BN (and ReLU), chained with the next conv, or
    /// with the add and ReLU ending its residual block.
    fn conv_step(&mut self, id: NodeId) -> Step {
        let Some(bn) = self.only_consumer(id, &is_bn) else {
            return self.conv_act_step(id);
        };
        let relu = self.only_consumer(bn, &is_relu);
        self.absorbed[bn.0] = true;
        if let Some(r) = relu {
            self.absorbed[r.0] = true;
        }
        let chain = relu
            .filter(|_| self.net.chain_convs)
            .and_then(|r| self.chain_step(id, bn, r));
        if let Some(
            step @ Step::ConvChain {
                conv2,
                bn2,
                relu2,
                res,
                ..
            },
        ) = chain
        {
            let fused = [conv2, bn2]
                .into_iter()
                .chain(relu2)
                .chain(res.into_iter().flat_map(|(a, r)| [a, r]));
            for a in fused {
                self.absorbed[a.0] = true;
            }
            return step;
        }
        self.conv_bn_step(id, bn, relu)
    }

    /// Conv `id` + BN `bn` + ReLU `r` chained with the conv that is `r`'s only consumer, if
    /// any: a transposed conv feeding only another one. A residual block's pair chains with
    /// its shortcut (in the geometries of `conv::residual_pair`), else only where both convs
    /// run transposed by themselves.
    fn chain_step(&self, id: NodeId, bn: NodeId, r: NodeId) -> Option<Step> {
        let net = self.net;
        let c2 = self.only_consumer(r, &is_conv)?;
        let b2 = self.only_consumer(c2, &is_bn)?;
        let relu2 = self.only_consumer(b2, &is_relu);
        let res = if relu2.is_none() && net.fuse_residuals {
            net.chain_residual(id, c2, b2, &|v, p| self.only_consumer(v, p))
        } else {
            None
        };
        let own = match (&net.geo[id.0], &net.geo[c2.0]) {
            (Geo::Conv(g1), Geo::Conv(g2)) => conv::chainable(g1, g2),
            _ => false,
        };
        (own || res.is_some()).then_some(Step::ConvChain {
            conv: id,
            bn,
            relu: r,
            conv2: c2,
            bn2: b2,
            relu2,
            res,
            io: ChainIo::default(),
        })
    }

    /// Conv `id` + BN `bn` (+ ReLU `relu`) as one folded conv; without a ReLU, the add and
    /// ReLU of a residual block's end join it when the other addend is already computed.
    fn conv_bn_step(&mut self, id: NodeId, bn: NodeId, relu: Option<NodeId>) -> Step {
        let net = self.net;
        let add = if relu.is_none() && net.fuse_residuals {
            net.conv_residual(bn, &|v| self.produced[v.0] || self.fed[v.0], &|v, p| {
                self.only_consumer(v, p)
            })
        } else {
            None
        };
        let relu = match add {
            Some((a, _, r)) => {
                self.absorbed[a.0] = true;
                self.absorbed[r.0] = true;
                Some(r)
            }
            None => relu,
        };
        Step::ConvBn {
            conv: id,
            bn,
            relu,
            add: add.map(|(a, o, _)| (a, o)),
        }
    }

    /// An inference conv with no BN: fused with its ReLU, or with the add and ReLU ending a
    /// residual block when the other addend is already computed; else alone.
    fn conv_act_step(&mut self, id: NodeId) -> Step {
        let net = self.net;
        if let Some(r) = self.only_consumer(id, &is_relu) {
            self.absorbed[r.0] = true;
            return Step::ConvAct {
                conv: id,
                relu: r,
                add: None,
            };
        }
        let add = if net.fuse_residuals {
            net.conv_residual(id, &|v| self.produced[v.0] || self.fed[v.0], &|v, p| {
                self.only_consumer(v, p)
            })
        } else {
            None
        };
        match add {
            Some((a, other, r)) => {
                self.absorbed[a.0] = true;
                self.absorbed[r.0] = true;
                Step::ConvAct {
                    conv: id,
                    relu: r,
                    add: Some((a, other)),
                }
            }
            None => Step::Op(id),
        }
    }

    /// A batch norm: alone, fused with its ReLU, or with the add and ReLU ending a residual
    /// block.
    fn bn_step(&mut self, id: NodeId) -> Step {
        let g = &self.net.graph;
        let block_end = self.only_consumer(id, &is_add).and_then(|add| {
            let ins = &g.node(add).inputs;
            if ins.len() != 2 || ins.iter().filter(|j| **j == id).count() != 1 {
                return None;
            }
            let other = if ins[0] == id { ins[1] } else { ins[0] };
            self.only_consumer(add, &is_relu).map(|r| (add, r, other))
        });
        if let Some(r) = self.only_consumer(id, &is_relu) {
            self.absorbed[r.0] = true;
            Step::BnRelu { bn: id, relu: r }
        } else if let Some((add, relu, other)) = block_end {
            self.absorbed[add.0] = true;
            self.absorbed[relu.0] = true;
            Step::BnAddRelu {
                bn: id,
                add,
                relu,
                other,
            }
        } else {
            Step::Op(id)
        }
    }

    /// An add: alone or fused with its ReLU.
    fn add_step(&mut self, id: NodeId) -> Step {
        match self.only_consumer(id, &is_relu) {
            Some(r) => {
                self.absorbed[r.0] = true;
                Step::AddRelu { add: id, relu: r }
            }
            None => Step::Op(id),
        }
    }

    /// Appends `step`, then the fused steps that were waiting for its value (and, in turn,
    /// theirs).
    fn push(&mut self, step: Step) {
        self.steps.push(step);
        let mut k = self.steps.len() - 1;
        while k < self.steps.len() {
            let out = self.steps[k].out();
            self.produced[out.0] = true;
            while let Some(pos) = self.pending.iter().position(|(t, _)| *t == out) {
                self.steps.push(self.pending.remove(pos).1);
            }
            k += 1;
        }
    }
}

impl Network {
    /// Splits the needed nodes into steps, fusing where allowed. Steps stay in an order where
    /// every value is produced before it is read.
    pub(super) fn plan(
        &self,
        needed: &[bool],
        fed: &[bool],
        keep_out: &[bool],
        mode: Mode,
        record: bool,
    ) -> Vec<Step> {
        let nn = self.graph.len();
        let mut p = Planner {
            net: self,
            needed,
            fed,
            keep_out,
            absorbed: vec![false; nn],
            produced: vec![false; nn],
            steps: Vec::new(),
            pending: Vec::new(),
        };
        for i in 0..nn {
            let id = NodeId(i);
            if !needed[i] || fed[i] || p.absorbed[i] {
                continue;
            }
            let step = match &self.graph.node(id).op {
                Op::Conv2d(_) if mode == Mode::Eval && !record => p.conv_step(id),
                Op::BatchNorm2d(_) => {
                    let st = p.bn_step(id);
                    if let Step::BnAddRelu { other, .. } = st {
                        if other.0 > i && !fed[other.0] {
                            p.pending.push((other, st));
                            continue;
                        }
                    }
                    st
                }
                Op::Add => p.add_step(id),
                _ => Step::Op(id),
            };
            p.push(step);
        }
        assert!(
            p.pending.is_empty(),
            "every fused step's addend is produced by some step"
        );
        let mut steps = p.steps;
        self.link_planes(&mut steps, needed, keep_out);
        steps
    }

    /// The identity-shortcut residual end of a chain of `conv` and `conv2` (`conv2`'s BN
    /// `bn2` feeding only an add of `conv`'s own input, feeding only a ReLU): `(add, relu)`.
    fn chain_residual(
        &self,
        conv: NodeId,
        conv2: NodeId,
        bn2: NodeId,
        only_consumer: OnlyConsumer<'_>,
    ) -> Option<(NodeId, NodeId)> {
        let (Some(g1), Some(g2)) = (self.chain_geom(conv), self.chain_geom(conv2)) else {
            return None;
        };
        if !conv::residual_chainable(g1, g2) {
            return None;
        }
        let add = only_consumer(bn2, &|op| matches!(op, Op::Add))?;
        let x = self.graph.node(conv).inputs[0];
        let ins = &self.graph.node(add).inputs;
        let pair = ins.len() == 2 && (ins[..] == [bn2, x] || ins[..] == [x, bn2]);
        if !pair {
            return None;
        }
        let relu = only_consumer(add, &|op| matches!(op, Op::Relu))?;
        Some((add, relu))
    }

    /// The residual end of a conv + BN (`bn` feeding only a two-input add of a value that
    /// is `ready`, the add feeding only a ReLU): `(add, other addend, relu)`.
    fn conv_residual(
        &self,
        bn: NodeId,
        ready: &dyn Fn(NodeId) -> bool,
        only_consumer: OnlyConsumer<'_>,
    ) -> Option<(NodeId, NodeId, NodeId)> {
        let add = only_consumer(bn, &|op| matches!(op, Op::Add))?;
        let ins = &self.graph.node(add).inputs;
        if ins.len() != 2 || ins[0] == ins[1] {
            return None;
        }
        let other = if ins[0] == bn { ins[1] } else { ins[0] };
        if !ready(other) || self.cs[other.0] != self.cs[bn.0] {
            return None;
        }
        let relu = only_consumer(add, &|op| matches!(op, Op::Relu))?;
        Some((add, other, relu))
    }

    /// Marks consecutive residual chains that hand their map over as padded channel-major
    /// planes: a chain's output whose every consumer is inside the next chain (its first conv
    /// and its add), on the same planes, and that nobody captures.
    fn link_planes(&self, steps: &mut [Step], needed: &[bool], keep_out: &[bool]) {
        let geo = |id: NodeId| self.chain_geom(id).expect("conv geometry");
        // The residual chain (step index) that each conv starts, if any.
        let mut chain_at: Vec<Option<usize>> = vec![None; self.graph.len()];
        for (i, s) in steps.iter().enumerate() {
            if let Step::ConvChain {
                conv, res: Some(_), ..
            } = *s
            {
                chain_at[conv.0] = Some(i);
            }
        }
        for si in 0..steps.len() {
            let Step::ConvChain {
                conv,
                conv2,
                res: Some(_),
                ..
            } = steps[si]
            else {
                continue;
            };
            let out = steps[si].out();
            if keep_out[out.0] || conv::chain_planes_len(geo(conv), geo(conv2)).is_none() {
                continue;
            }
            let users: Vec<NodeId> = self.consumers[out.0]
                .iter()
                .copied()
                .filter(|u| needed[u.0])
                .collect();
            // The next chain reads `out` with its first conv and its add, and nothing else does.
            let next = users.iter().find_map(|u| chain_at[u.0]).filter(|&ti| {
                let Step::ConvChain {
                    conv: c,
                    conv2: c2,
                    res: Some((add, _)),
                    ..
                } = steps[ti]
                else {
                    unreachable!("chain_at holds residual chains")
                };
                users.iter().all(|u| *u == c || *u == add)
                    && conv::chain_planes_len(geo(c), geo(c2)).is_some()
                    && conv::planes_link(geo(conv), geo(c))
            });
            if let Some(ti) = next {
                if let Step::ConvChain { io, .. } = &mut steps[si] {
                    io.y_planes = true;
                }
                if let Step::ConvChain { io, .. } = &mut steps[ti] {
                    io.x_planes = true;
                }
            }
        }
    }

    /// The geometry conv `id` runs with inside a chain: its residual-pair geometry where it
    /// has one, else its own.
    pub(super) fn chain_geom(&self, id: NodeId) -> Option<&ConvGeom> {
        match (&self.chain_geo[id.0], &self.geo[id.0]) {
            (Some(g), _) | (None, Geo::Conv(g)) => Some(g),
            _ => None,
        }
    }
}
