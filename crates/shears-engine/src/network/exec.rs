//! Running one forward step: the kernels of each op and fused step, and batch norm.

use shears_ir::{NodeId, Op, ParamKind};

use crate::error::{EngineError, Result};
use crate::kernels::conv::{self, ChainIo};

use super::forward::{BnUpdate, Pass, Val};
use super::rng::mix;
use super::step::Step;
use super::tape::{BnSaved, Saved};
use super::{Geo, Mode, Network};

impl Network {
    /// Floats of step `s`'s output for `n` images: its planes when it writes planes.
    pub(super) fn step_out_len(&self, n: usize, s: Step) -> usize {
        match s {
            Step::ConvChain {
                conv, conv2, io, ..
            } if io.y_planes => {
                let (Some(g1), Some(g2)) = (self.chain_geom(conv), self.chain_geom(conv2)) else {
                    unreachable!("conv geometry")
                };
                n * conv::chain_planes_len(g1, g2).expect("planes are linked only where they fit")
            }
            _ => self.numel(n, s.out()),
        }
    }

    /// Runs `step` of `pass` and returns its output (planes where it writes planes).
    pub(super) fn exec_step(&mut self, step: Step, pass: &mut Pass<'_>) -> Result<Vec<f32>> {
        let len = self.step_out_len(pass.n, step);
        let mut y = self.pool.take(len);
        let node = self.graph.node(step.first());
        let x0 = node.inputs[0];
        match step {
            Step::ConvChain { .. } => self.exec_conv_chain(step, pass, &mut y),
            Step::ConvBn {
                conv, relu, add, ..
            } => self.exec_conv_bn(conv, relu, add, pass, &mut y),
            Step::ConvAct { conv, add, .. } => self.exec_conv_act(conv, add, pass, &mut y),
            Step::BnRelu { bn, relu: _ } => {
                self.bn_forward(
                    bn,
                    pass.n,
                    pass.mode,
                    pass.record,
                    value(&pass.vals, x0, INPUT_READY),
                    None,
                    true,
                    &mut y,
                    &mut pass.saved,
                    &mut pass.bn_updates,
                )?;
            }
            Step::BnAddRelu { bn, other, .. } => {
                let r = value(&pass.vals, other, "addend computed before the add");
                self.bn_forward(
                    bn,
                    pass.n,
                    pass.mode,
                    pass.record,
                    value(&pass.vals, x0, INPUT_READY),
                    Some(r),
                    true,
                    &mut y,
                    &mut pass.saved,
                    &mut pass.bn_updates,
                )?;
            }
            Step::AddRelu { .. } => {
                let xs: Vec<&[f32]> = node
                    .inputs
                    .iter()
                    .map(|i| value(&pass.vals, *i, INPUT_READY))
                    .collect();
                self.backend.add_forward(&xs, true, &mut y);
            }
            Step::Op(id) => self.exec_op(id, pass, &mut y)?,
        }
        Ok(y)
    }

    /// A chain of two folded convs, with its residual sum where it has one.
    fn exec_conv_chain(&self, step: Step, pass: &Pass<'_>, y: &mut [f32]) {
        let Step::ConvChain {
            conv,
            conv2,
            relu2,
            res,
            io,
            ..
        } = step
        else {
            unreachable!("a conv chain step")
        };
        let (Some(g1), Some(g2)) = (self.chain_geom(conv), self.chain_geom(conv2)) else {
            unreachable!("conv geometry")
        };
        let f1 = self.fused[conv.0].as_ref().expect("fused cache prepared");
        let f2 = self.fused[conv2.0].as_ref().expect("fused cache prepared");
        let x = value(&pass.vals, self.graph.node(conv).inputs[0], INPUT_READY);
        self.backend.conv2d_chain_forward(
            g1,
            g2,
            pass.n,
            x,
            &f1.packed,
            &f1.bias,
            &f2.packed,
            Some(&f2.bias),
            relu2.is_some() || res.is_some(),
            ChainIo {
                residual: res.is_some(),
                ..io
            },
            y,
        );
    }

    /// A conv with its BN folded in (and its ReLU, and the residual sum of `add`).
    fn exec_conv_bn(
        &self,
        conv: NodeId,
        relu: Option<NodeId>,
        add: Option<(NodeId, NodeId)>,
        pass: &Pass<'_>,
        y: &mut [f32],
    ) {
        let Geo::Conv(g) = &self.geo[conv.0] else {
            unreachable!("conv geometry")
        };
        let f = self.fused[conv.0].as_ref().expect("fused cache prepared");
        let x = value(&pass.vals, self.graph.node(conv).inputs[0], INPUT_READY);
        let be = &*self.backend;
        match add {
            Some((_, other)) => {
                let r = value(&pass.vals, other, "addend computed before the conv");
                be.conv2d_forward_add(g, pass.n, x, &f.packed, Some(&f.bias), r, relu.is_some(), y);
            }
            None => be.conv2d_forward(g, pass.n, x, &f.packed, Some(&f.bias), relu.is_some(), y),
        }
    }

    /// Conv `conv` (its own weights and bias) with a ReLU, after adding `add`'s other addend.
    fn exec_conv_act(
        &self,
        conv: NodeId,
        add: Option<(NodeId, NodeId)>,
        pass: &Pass<'_>,
        y: &mut [f32],
    ) {
        let Geo::Conv(g) = &self.geo[conv.0] else {
            unreachable!("conv geometry")
        };
        let p = &self.packs[conv.0]
            .as_ref()
            .expect("pack cache prepared")
            .packed;
        let bias = self.params.data(conv, ParamKind::Bias);
        let x = value(&pass.vals, self.graph.node(conv).inputs[0], INPUT_READY);
        let be = &*self.backend;
        match add {
            Some((_, other)) => {
                let r = value(&pass.vals, other, "addend computed before the conv");
                be.conv2d_forward_add(g, pass.n, x, p, bias, r, true, y);
            }
            None => be.conv2d_forward(g, pass.n, x, p, bias, true, y),
        }
    }

    /// One node run by itself.
    fn exec_op(&self, id: NodeId, pass: &mut Pass<'_>, y: &mut [f32]) -> Result<()> {
        let node = self.graph.node(id);
        let n = pass.n;
        let val = |i: usize| -> &[f32] { value(&pass.vals, node.inputs[i], INPUT_READY) };
        let be = &*self.backend;
        match &node.op {
            Op::Input { .. } => unreachable!("input nodes are fed, never executed"),
            Op::Conv2d(_) => {
                let Geo::Conv(g) = &self.geo[id.0] else {
                    unreachable!("conv geometry")
                };
                let p = &self.packs[id.0]
                    .as_ref()
                    .expect("pack cache prepared")
                    .packed;
                be.conv2d_forward(
                    g,
                    n,
                    val(0),
                    p,
                    self.params.data(id, ParamKind::Bias),
                    false,
                    y,
                );
            }
            Op::BatchNorm2d(_) => {
                let x = value(&pass.vals, node.inputs[0], INPUT_READY);
                self.bn_forward(
                    id,
                    n,
                    pass.mode,
                    pass.record,
                    x,
                    None,
                    false,
                    y,
                    &mut pass.saved,
                    &mut pass.bn_updates,
                )?;
            }
            Op::Relu => be.relu_forward(val(0), y),
            Op::Act(a) => be.act_forward(*a, val(0), y),
            Op::MaxPool2d(_) => {
                let Geo::Pool(g) = &self.geo[id.0] else {
                    unreachable!("pool geometry")
                };
                if pass.record {
                    let mut am = vec![0u32; n * g.out_len()];
                    be.max_pool_forward(g, n, val(0), y, Some(&mut am));
                    pass.saved[id.0] = Saved::Argmax(am);
                } else {
                    be.max_pool_forward(g, n, val(0), y, None);
                }
            }
            Op::AvgPool2d(_) => {
                let Geo::Pool(g) = &self.geo[id.0] else {
                    unreachable!("pool geometry")
                };
                be.avg_pool_forward(g, n, val(0), y);
            }
            Op::GlobalAvgPool => {
                let (c, s) = self.cs[node.inputs[0].0];
                be.global_avg_pool_forward(n, s, c, val(0), y);
            }
            Op::Linear(l) => {
                let w = self
                    .params
                    .data(id, ParamKind::Weight)
                    .expect("linear has a weight");
                let b = self.params.data(id, ParamKind::Bias);
                be.linear_forward(n, l.in_features, l.out_features, val(0), w, b, y);
            }
            Op::Flatten => {
                let (c, s) = self.cs[node.inputs[0].0];
                be.to_channels_first(n, s, c, val(0), y, false);
            }
            Op::Add => {
                let xs: Vec<&[f32]> = (0..node.inputs.len()).map(val).collect();
                be.add_forward(&xs, false, y);
            }
            Op::Concat => {
                let parts: Vec<(&[f32], usize)> = node
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(k, i)| (val(k), self.cs[i.0].0))
                    .collect();
                be.concat_forward(&parts, y);
            }
            Op::Dropout { p } => {
                if pass.mode == Mode::Train && *p > 0.0 {
                    let key = mix(pass.dropout_base, id.0 as u64);
                    be.dropout(key, *p, val(0), y, false);
                    pass.saved[id.0] = Saved::Dropout(key);
                } else {
                    be.copy_or_add(val(0), y, false);
                }
            }
            Op::ShortcutA(_) => {
                let Geo::Shortcut(g) = &self.geo[id.0] else {
                    unreachable!("shortcut geometry")
                };
                be.shortcut_forward(g, n, val(0), y);
            }
            Op::Identity => be.copy_or_add(val(0), y, false),
            Op::Channel(c) => {
                let c_in = self.cs[node.inputs[0].0].0;
                be.channel_gather_forward(&c.sources(c_in), c_in, val(0), y);
            }
            Op::Binary(_) => {
                let xs: Vec<&[f32]> = (0..node.inputs.len()).map(val).collect();
                self.binary_forward(id, n, &xs, y);
            }
            Op::LayerNorm(_) => self.layer_norm_forward(id, val(0), y),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn bn_forward(
        &self,
        id: NodeId,
        n: usize,
        mode: Mode,
        record: bool,
        x: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
        saved: &mut [Saved],
        bn_updates: &mut Vec<BnUpdate>,
    ) -> Result<()> {
        let Op::BatchNorm2d(b) = &self.graph.node(id).op else {
            unreachable!("bn_forward on a BN node")
        };
        let (c, s) = self.cs[id.0];
        let gamma = self
            .params
            .data(id, ParamKind::Weight)
            .expect("bn has a weight");
        let beta = self
            .params
            .data(id, ParamKind::Bias)
            .expect("bn has a bias");
        let (mean, var): (Vec<f64>, Vec<f64>) = match mode {
            Mode::Train => {
                let count = n * s;
                if count <= 1 {
                    return Err(EngineError::BatchNormSingleValue {
                        node: self.graph.node(id).name.clone(),
                        count,
                    });
                }
                let (m, v) = self.backend.channel_stats(x, c);
                let unbiased = count as f64 / (count - 1) as f64;
                bn_updates.push((
                    id,
                    m.iter().map(|v| *v as f32).collect(),
                    v.iter().map(|v| (*v * unbiased) as f32).collect(),
                ));
                (m, v)
            }
            Mode::Eval => {
                let rm = self
                    .params
                    .data(id, ParamKind::RunningMean)
                    .expect("bn has a running mean");
                let rv = self
                    .params
                    .data(id, ParamKind::RunningVar)
                    .expect("bn has a running var");
                (
                    rm.iter().map(|v| *v as f64).collect(),
                    rv.iter().map(|v| *v as f64).collect(),
                )
            }
        };
        let mut sv = BnSaved {
            mean: Vec::with_capacity(c),
            invstd: Vec::with_capacity(c),
            scale: Vec::with_capacity(c),
            shift: Vec::with_capacity(c),
        };
        for j in 0..c {
            let inv = 1.0 / (var[j] + b.eps as f64).sqrt();
            let sc = gamma[j] as f64 * inv;
            sv.mean.push(mean[j] as f32);
            sv.invstd.push(inv as f32);
            sv.scale.push(sc as f32);
            sv.shift.push((beta[j] as f64 - mean[j] * sc) as f32);
        }
        self.backend
            .scale_shift(x, c, &sv.scale, &sv.shift, residual, relu, y);
        if record {
            saved[id.0] = Saved::Bn(sv);
        }
        Ok(())
    }
}

/// Why a step's input is there when the step runs.
const INPUT_READY: &str = "inputs are computed before their consumers";

/// The value of node `v` in a pass (`why` says why it is computed by now).
fn value<'v>(vals: &'v [Option<Val<'_>>], v: NodeId, why: &str) -> &'v [f32] {
    vals[v.0].as_ref().expect(why).as_slice()
}
