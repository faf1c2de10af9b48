//! Backward passes: gradients of parameters and activations from the tape.

use shears_ir::{NodeId, Op, ParamKind, Tensor};

use crate::error::{EngineError, Result};
use crate::kernels::bn::{BnBackward, BnDx};

use super::step::{step_label, Step};
use super::tape::{Saved, Tape};
use super::{BackwardOptions, Geo, Gradients, Mode, Network};

impl Network {
    /// Backpropagates `grad_output` (the gradient of the loss with respect to the first graph
    /// output, NCHW) through the recorded forward pass. Consumes the tape.
    pub fn backward(&mut self, grad_output: &Tensor, opts: &BackwardOptions) -> Result<Gradients> {
        let out = self.graph.outputs()[0];
        self.backward_from(&[(out, grad_output)], opts)
    }

    /// Backpropagates gradients seeded at any nodes of the recorded forward pass that were
    /// outputs or captured (several seeds, or seeds at inner nodes, when the loss is computed
    /// outside). Seeds at the same node add up. Consumes the tape.
    pub fn backward_from(
        &mut self,
        seeds: &[(NodeId, &Tensor)],
        opts: &BackwardOptions,
    ) -> Result<Gradients> {
        let tape = self.tape.take().ok_or(EngineError::NoTape)?;
        if let Err(e) = self.check_backward(&tape, seeds, opts) {
            self.tape = Some(tape);
            return Err(e);
        }
        let threads = self.threads.clone();
        match threads {
            Some(p) => p.install(|| self.backward_inner(tape, seeds, opts)),
            None => self.backward_inner(tape, seeds, opts),
        }
    }

    fn check_backward(
        &self,
        tape: &Tape,
        seeds: &[(NodeId, &Tensor)],
        opts: &BackwardOptions,
    ) -> Result<()> {
        if seeds.is_empty() {
            return Err(EngineError::Config(
                "backward needs at least one gradient seed".into(),
            ));
        }
        for &(id, t) in seeds {
            self.check_node(id)?;
            let name = &self.graph.node(id).name;
            if !tape.computed[id.0] {
                return Err(EngineError::NotRecorded { node: name.clone() });
            }
            let expected = self.batch_shape(tape.n, id);
            if t.shape() != expected.as_slice() {
                return Err(EngineError::GradShape {
                    node: name.clone(),
                    expected,
                    found: t.shape().to_vec(),
                });
            }
        }
        for &id in &opts.activations {
            self.check_node(id)?;
            if !tape.computed[id.0] && !tape.absorbed[id.0] {
                return Err(EngineError::NotRecorded {
                    node: self.graph.node(id).name.clone(),
                });
            }
        }
        Ok(())
    }

    fn backward_inner(
        &mut self,
        tape: Tape,
        seeds: &[(NodeId, &Tensor)],
        opts: &BackwardOptions,
    ) -> Result<Gradients> {
        let Tape {
            n,
            mode,
            steps,
            mut vals,
            saved,
            fed,
            release_after,
            grad_slots,
            ..
        } = tape;
        let nn = self.graph.len();
        let pw: Vec<[bool; 2]> = (0..nn)
            .map(|i| {
                let w = |kind| {
                    opts.param_grads
                        && self
                            .params
                            .slot_of(NodeId(i), kind)
                            .is_some_and(|s| grad_slots[s])
                };
                [w(ParamKind::Weight), w(ParamKind::Bias)]
            })
            .collect();
        let mut req = vec![false; nn];
        for a in &opts.activations {
            req[a.0] = true;
        }
        // Which nodes need their output gradient: upstream of something wanted and downstream
        // (in the reverse sense) of a seed.
        let mut up = vec![false; nn];
        for i in 0..nn {
            let id = NodeId(i);
            let own = req[i] || pw[i][0] || pw[i][1];
            up[i] = own || (!fed[i] && self.graph.node(id).inputs.iter().any(|j| up[j.0]));
        }
        let mut anc = vec![false; nn];
        for (id, _) in seeds {
            anc[id.0] = true;
        }
        for i in (0..nn).rev() {
            if anc[i] && !fed[i] {
                for j in &self.graph.nodes()[i].inputs {
                    anc[j.0] = true;
                }
            }
        }
        let needg: Vec<bool> = (0..nn).map(|i| up[i] && anc[i]).collect();
        for s in &steps {
            if let Step::Op(id) = s {
                if matches!(self.graph.node(*id).op, Op::Conv2d(_)) {
                    self.ensure_pack(*id);
                }
            }
        }
        let mut grads: Vec<Option<Vec<f32>>> = (0..nn).map(|_| None).collect();
        for &(id, t) in seeds {
            let (c, s) = self.cs[id.0];
            match grads[id.0].as_mut() {
                Some(g) => self.backend.to_channels_last(n, s, c, t.data(), g, true),
                None => {
                    let mut g = self.pool.take(n * c * s);
                    self.backend
                        .to_channels_last(n, s, c, t.data(), &mut g, false);
                    grads[id.0] = Some(g);
                }
            }
        }
        let mut out = Gradients::default();
        for (si, step) in steps.iter().enumerate().rev() {
            let o = step.out();
            if let Some(dy) = grads[o.0].take() {
                if req[o.0] {
                    out.activations.insert(o, self.to_tensor(n, o, &dy));
                }
                let bctx = BwdCtx {
                    n,
                    mode,
                    vals: &vals,
                    saved: &saved,
                    needg: &needg,
                    req: &req,
                    pw: &pw,
                };
                let t0 = self.profile.is_some().then(std::time::Instant::now);
                let rest = self.step_backward(*step, &bctx, dy, &mut grads, &mut out)?;
                if let (Some(p), Some(t0)) = (self.profile.as_mut(), t0) {
                    p.add(
                        format!("backward {}", step_label(&self.graph, *step)),
                        t0.elapsed().as_secs_f64(),
                    );
                }
                if let Some(dy) = rest {
                    self.pool.give(dy);
                }
            } else {
                if req[o.0] {
                    out.activations
                        .insert(o, Tensor::zeros(&self.batch_shape(n, o)));
                }
                for a in step.absorbed() {
                    if req[a.0] {
                        out.activations
                            .insert(a, Tensor::zeros(&self.batch_shape(n, a)));
                    }
                }
            }
            for v in &release_after[si] {
                if let Some(b) = vals[v.0].take() {
                    self.pool.give(b);
                }
            }
        }
        for i in 0..nn {
            if fed[i] && req[i] {
                let t = match &grads[i] {
                    Some(g) => self.to_tensor(n, NodeId(i), g),
                    None => Tensor::zeros(&self.batch_shape(n, NodeId(i))),
                };
                out.activations.insert(NodeId(i), t);
            }
        }
        for g in grads.into_iter().flatten() {
            self.pool.give(g);
        }
        self.recycle(vals);
        Ok(out)
    }

    /// Takes the gradient buffer of node `j` to write into: the existing one (accumulate) or
    /// a fresh one (overwrite).
    pub(super) fn grad_dst(
        &mut self,
        grads: &mut [Option<Vec<f32>>],
        n: usize,
        j: NodeId,
    ) -> (Vec<f32>, bool) {
        match grads[j.0].take() {
            Some(g) => (g, true),
            None => (self.pool.take(self.numel(n, j)), false),
        }
    }

    pub(super) fn insert_grad(
        &self,
        out: &mut Gradients,
        id: NodeId,
        kind: ParamKind,
        data: Vec<f32>,
    ) {
        let i = self
            .params
            .slot_of(id, kind)
            .expect("gradient of an existing parameter");
        let slot = &self.params.slots()[i];
        let t = Tensor::new(slot.tensor.shape().to_vec(), data)
            .expect("gradient has the parameter's size");
        out.params.insert(slot.name.clone(), t);
    }

    /// Hands `g` to the gradient slots of `targets` (the inputs that need it, duplicates
    /// included): added where a slot exists, copied or, for the last one, moved where not.
    /// Returns `g` if it was not moved.
    fn distribute(
        &mut self,
        g: Vec<f32>,
        targets: &[NodeId],
        grads: &mut [Option<Vec<f32>>],
    ) -> Option<Vec<f32>> {
        // Slots that already exist first, so the buffer can move into an empty one last.
        let mut order: Vec<NodeId> = targets
            .iter()
            .copied()
            .filter(|j| grads[j.0].is_some())
            .collect();
        order.extend(targets.iter().copied().filter(|j| grads[j.0].is_none()));
        let mut g = Some(g);
        for (k, &j) in order.iter().enumerate() {
            let src = g.as_ref().expect("moved only at the last target");
            match grads[j.0].as_mut() {
                Some(d) => self.backend.copy_or_add(src, d, true),
                None if k + 1 == order.len() => grads[j.0] = g.take(),
                None => {
                    let mut d = self.pool.take(src.len());
                    self.backend.copy_or_add(src, &mut d, false);
                    grads[j.0] = Some(d);
                }
            }
        }
        g
    }

    /// Backward of one step from its output gradient `dy`; returns `dy` if it was not reused
    /// as an input gradient.
    fn step_backward(
        &mut self,
        step: Step,
        b: &BwdCtx<'_>,
        mut dy: Vec<f32>,
        grads: &mut [Option<Vec<f32>>],
        out: &mut Gradients,
    ) -> Result<Option<Vec<f32>>> {
        let n = b.n;
        let inputs = self.graph.node(step.first()).inputs.clone();
        let in0 = inputs[0];
        match step {
            Step::ConvBn { .. } | Step::ConvChain { .. } | Step::ConvAct { .. } => {
                unreachable!("fused inference steps are never recorded")
            }
            Step::BnRelu { bn, .. } => self.bn_backward(bn, b, dy, true, false, in0, grads, out),
            Step::BnAddRelu {
                bn,
                add,
                relu,
                other,
            } => {
                self.backend.relu_mask_in_place(kept(b, relu), &mut dy);
                for a in [add, bn] {
                    if b.req[a.0] {
                        out.activations.insert(a, self.to_tensor(n, a, &dy));
                    }
                }
                if !b.needg[other.0] {
                    return self.bn_backward(bn, b, dy, false, false, in0, grads, out);
                }
                let dy = self
                    .bn_backward(bn, b, dy, false, true, in0, grads, out)?
                    .expect("bn_backward keeps dy when asked to");
                Ok(self.distribute(dy, &[other], grads))
            }
            Step::AddRelu { add, relu } => {
                self.backend.relu_mask_in_place(kept(b, relu), &mut dy);
                if b.req[add.0] {
                    out.activations.insert(add, self.to_tensor(n, add, &dy));
                }
                let targets: Vec<NodeId> =
                    inputs.iter().copied().filter(|j| b.needg[j.0]).collect();
                Ok(self.distribute(dy, &targets, grads))
            }
            Step::Op(id) => self.op_backward(id, b, dy, grads, out),
        }
    }

    /// Backward of node `id` run by itself; returns `dy` if it was not reused as an input
    /// gradient.
    fn op_backward(
        &mut self,
        id: NodeId,
        b: &BwdCtx<'_>,
        mut dy: Vec<f32>,
        grads: &mut [Option<Vec<f32>>],
        out: &mut Gradients,
    ) -> Result<Option<Vec<f32>>> {
        let n = b.n;
        let inputs = self.graph.node(id).inputs.clone();
        let backend = self.backend.clone();
        let be = &*backend;
        let in0 = inputs[0];
        let need0 = b.needg[in0.0];
        let op = self.graph.node(id).op.clone();
        match &op {
            Op::Input { .. } => {}
            Op::Conv2d(_) => self.conv_backward(id, b, &dy, grads, out),
            Op::BatchNorm2d(_) => {
                return self.bn_backward(id, b, dy, false, false, in0, grads, out)
            }
            Op::Relu => {
                if need0 {
                    if grads[in0.0].is_none() {
                        be.relu_mask_in_place(kept(b, id), &mut dy);
                        grads[in0.0] = Some(dy);
                        return Ok(None);
                    }
                    let (mut dx, acc) = self.grad_dst(grads, n, in0);
                    be.relu_backward(kept(b, id), &dy, &mut dx, acc);
                    grads[in0.0] = Some(dx);
                }
            }
            Op::Linear(_) => self.linear_backward(id, b, &dy, grads, out),
            Op::Add | Op::Identity => {
                let targets: Vec<NodeId> =
                    inputs.iter().copied().filter(|j| b.needg[j.0]).collect();
                return Ok(self.distribute(dy, &targets, grads));
            }
            Op::Concat => {
                let ct = self.cs[id.0].0;
                let mut off = 0;
                for &j in &inputs {
                    let c = self.cs[j.0].0;
                    if b.needg[j.0] {
                        let (mut dx, acc) = self.grad_dst(grads, n, j);
                        be.concat_backward(&dy, ct, off, c, &mut dx, acc);
                        grads[j.0] = Some(dx);
                    }
                    off += c;
                }
            }
            Op::Act(_)
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::GlobalAvgPool
            | Op::Flatten
            | Op::Dropout { .. }
            | Op::ShortcutA(_) => {
                if need0 {
                    self.unary_backward(id, b, &dy, grads);
                }
            }
            Op::Binary(_) => self.binary_backward(id, b, &dy, grads, out),
            Op::Channel(c) => {
                if need0 {
                    let c_in = self.cs[in0.0].0;
                    let (mut dx, acc) = self.grad_dst(grads, n, in0);
                    be.channel_gather_backward(&c.sources(c_in), c_in, &dy, &mut dx, acc);
                    grads[in0.0] = Some(dx);
                }
            }
            Op::LayerNorm(_) => self.layer_norm_backward(id, b, &dy, grads, out),
        }
        Ok(Some(dy))
    }

    /// Backward of conv `id`: its weight and bias gradients where wanted, and its input's
    /// gradient where needed.
    fn conv_backward(
        &mut self,
        id: NodeId,
        b: &BwdCtx<'_>,
        dy: &[f32],
        grads: &mut [Option<Vec<f32>>],
        out: &mut Gradients,
    ) {
        let n = b.n;
        let in0 = self.graph.node(id).inputs[0];
        let Op::Conv2d(c) = &self.graph.node(id).op else {
            unreachable!("conv_backward on a conv node")
        };
        let out_channels = c.out_channels;
        let backend = self.backend.clone();
        let be = &*backend;
        let Geo::Conv(g) = self.geo[id.0].clone() else {
            unreachable!("conv geometry")
        };
        let [want_w, want_b] = b.pw[id.0];
        if want_w {
            let mut dwp = vec![0.0; g.weight_len()];
            let mut db = want_b.then(|| vec![0.0; out_channels]);
            be.conv2d_backward_weight(&g, n, kept(b, in0), dy, &mut dwp, db.as_deref_mut());
            let mut oihw = vec![0.0; g.weight_len()];
            be.unpack_conv(&g, &dwp, &mut oihw);
            self.insert_grad(out, id, ParamKind::Weight, oihw);
            if let Some(db) = db {
                self.insert_grad(out, id, ParamKind::Bias, db);
            }
        } else if want_b {
            self.insert_grad(out, id, ParamKind::Bias, column_sums(dy, out_channels));
        }
        if b.needg[in0.0] {
            let (mut dx, acc) = self.grad_dst(grads, n, in0);
            let p = &self.packs[id.0]
                .as_ref()
                .expect("pack cache prepared")
                .packed;
            be.conv2d_backward_data(&g, n, dy, p, &mut dx, acc);
            grads[in0.0] = Some(dx);
        }
    }

    /// Backward of linear `id`: its weight and bias gradients where wanted, and its input's
    /// gradient where needed.
    fn linear_backward(
        &mut self,
        id: NodeId,
        b: &BwdCtx<'_>,
        dy: &[f32],
        grads: &mut [Option<Vec<f32>>],
        out: &mut Gradients,
    ) {
        let n = b.n;
        let in0 = self.graph.node(id).inputs[0];
        let Op::Linear(l) = &self.graph.node(id).op else {
            unreachable!("linear_backward on a linear node")
        };
        let (i, o) = (l.in_features, l.out_features);
        let backend = self.backend.clone();
        let be = &*backend;
        let [want_w, want_b] = b.pw[id.0];
        if want_w {
            let mut dw = vec![0.0; i * o];
            let mut db = want_b.then(|| vec![0.0; o]);
            be.linear_backward_weight(n, i, o, kept(b, in0), dy, &mut dw, db.as_deref_mut());
            self.insert_grad(out, id, ParamKind::Weight, dw);
            if let Some(db) = db {
                self.insert_grad(out, id, ParamKind::Bias, db);
            }
        } else if want_b {
            self.insert_grad(out, id, ParamKind::Bias, column_sums(dy, o));
        }
        if b.needg[in0.0] {
            let (mut dx, acc) = self.grad_dst(grads, n, in0);
            let w = self
                .params
                .data(id, ParamKind::Weight)
                .expect("linear has a weight");
            be.linear_backward_data(n, i, o, dy, w, &mut dx, acc);
            grads[in0.0] = Some(dx);
        }
    }

    /// Backward of node `id`, an op with one input and no parameters (pooling, flatten,
    /// dropout, shortcut), into its input's gradient.
    fn unary_backward(
        &mut self,
        id: NodeId,
        b: &BwdCtx<'_>,
        dy: &[f32],
        grads: &mut [Option<Vec<f32>>],
    ) {
        let n = b.n;
        let in0 = self.graph.node(id).inputs[0];
        let (mut dx, acc) = self.grad_dst(grads, n, in0);
        let be = &*self.backend;
        match (&self.graph.node(id).op, &self.geo[id.0]) {
            (Op::MaxPool2d(_), Geo::Pool(g)) => {
                let Saved::Argmax(am) = &b.saved[id.0] else {
                    unreachable!("argmax recorded")
                };
                be.max_pool_backward(g, n, am, dy, &mut dx, acc);
            }
            (Op::AvgPool2d(_), Geo::Pool(g)) => be.avg_pool_backward(g, n, dy, &mut dx, acc),
            (Op::Act(a), _) => be.act_backward(*a, kept(b, in0), dy, &mut dx, acc),
            (Op::GlobalAvgPool, _) => {
                let (c, s) = self.cs[in0.0];
                be.global_avg_pool_backward(n, s, c, dy, &mut dx, acc);
            }
            (Op::Flatten, _) => {
                let (c, s) = self.cs[in0.0];
                be.to_channels_last(n, s, c, dy, &mut dx, acc);
            }
            (Op::Dropout { p }, _) => match &b.saved[id.0] {
                Saved::Dropout(key) => be.dropout(*key, *p, dy, &mut dx, acc),
                _ => be.copy_or_add(dy, &mut dx, acc),
            },
            (Op::ShortcutA(_), Geo::Shortcut(g)) => be.shortcut_backward(g, n, dy, &mut dx, acc),
            _ => unreachable!("unary_backward on a one-input op without parameters"),
        }
        grads[in0.0] = Some(dx);
    }

    /// Backward of batch norm (with its ReLU when `relu`); the input gradient is computed in
    /// place of `dy` when the input has no gradient yet, unless `keep_dy`. Returns `dy` if it
    /// was not reused.
    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        &mut self,
        bn: NodeId,
        b: &BwdCtx<'_>,
        mut dy: Vec<f32>,
        relu: bool,
        keep_dy: bool,
        input: NodeId,
        grads: &mut [Option<Vec<f32>>],
        out: &mut Gradients,
    ) -> Result<Option<Vec<f32>>> {
        let n = b.n;
        let Saved::Bn(sv) = &b.saved[bn.0] else {
            unreachable!("bn statistics recorded")
        };
        let x = b.vals[input.0]
            .as_deref()
            .expect("bn input kept for backward");
        let (c, _) = self.cs[bn.0];
        let args = BnBackward {
            x,
            c,
            mean: &sv.mean,
            invstd: &sv.invstd,
            scale: &sv.scale,
            shift: &sv.shift,
            relu,
            batch_stats: b.mode == Mode::Train,
        };
        let mut dmid = (relu && b.req[bn.0]).then(|| vec![0.0; x.len()]);
        let backend = self.backend.clone();
        let mut rest = None;
        let (dgamma, dbeta) = if !b.needg[input.0] {
            let r = backend.batch_norm_backward(&args, &mut dy, BnDx::Skip, dmid.as_deref_mut());
            rest = Some(dy);
            r
        } else if let Some(mut dx) = grads[input.0].take() {
            let r = backend.batch_norm_backward(
                &args,
                &mut dy,
                BnDx::Accumulate(&mut dx),
                dmid.as_deref_mut(),
            );
            grads[input.0] = Some(dx);
            rest = Some(dy);
            r
        } else if keep_dy {
            let mut dx = self.pool.take(dy.len());
            let r = backend.batch_norm_backward(
                &args,
                &mut dy,
                BnDx::Overwrite(&mut dx),
                dmid.as_deref_mut(),
            );
            grads[input.0] = Some(dx);
            rest = Some(dy);
            r
        } else {
            let r = backend.batch_norm_backward(&args, &mut dy, BnDx::InPlace, dmid.as_deref_mut());
            grads[input.0] = Some(dy);
            r
        };
        if let Some(dm) = dmid {
            out.activations.insert(bn, self.to_tensor(n, bn, &dm));
        }
        if b.pw[bn.0][0] {
            self.insert_grad(out, bn, ParamKind::Weight, dgamma);
        }
        if b.pw[bn.0][1] {
            self.insert_grad(out, bn, ParamKind::Bias, dbeta);
        }
        Ok(rest)
    }
}

/// What every step's backward reads from the tape.
pub(super) struct BwdCtx<'a> {
    pub(super) n: usize,
    mode: Mode,
    vals: &'a [Option<Vec<f32>>],
    saved: &'a [Saved],
    pub(super) needg: &'a [bool],
    req: &'a [bool],
    /// Per node, whether the weight and the bias want gradients.
    pub(super) pw: &'a [[bool; 2]],
}

/// Sums of the rows of a `[rows, c]` matrix, in row order.
fn column_sums(x: &[f32], c: usize) -> Vec<f32> {
    let mut s = vec![0.0f32; c];
    for r in x.chunks_exact(c) {
        s.iter_mut().zip(r).for_each(|(a, b)| *a += *b);
    }
    s
}

/// The value of node `v` that the tape kept for backward.
pub(super) fn kept<'v>(b: &BwdCtx<'v>, v: NodeId) -> &'v [f32] {
    b.vals[v.0].as_deref().expect("value kept for backward")
}
