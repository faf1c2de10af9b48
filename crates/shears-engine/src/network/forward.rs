//! Forward passes: validating a request, running its planned steps, captures and outputs.

use std::collections::HashMap;

use shears_ir::{NodeId, Op, ParamKind, Tensor};

use crate::error::{EngineError, Result};

use super::plan::PlanKey;
use super::rng::mix;
use super::step::Step;
use super::tape::Saved;
use super::{ForwardOutput, ForwardRequest, Layout, Mode, Network};

/// A value during a forward pass: a buffer of the pass, or a caller's channels-last feed read
/// where it lies.
pub(super) enum Val<'a> {
    Own(Vec<f32>),
    Ref(&'a [f32]),
}

impl Val<'_> {
    pub(super) fn as_slice(&self) -> &[f32] {
        match self {
            Val::Own(b) => b,
            Val::Ref(r) => r,
        }
    }
}

/// The state of one forward pass between its steps.
pub(super) struct Pass<'a> {
    /// The batch size.
    pub(super) n: usize,
    pub(super) mode: Mode,
    /// Whether the pass records the tape.
    pub(super) record: bool,
    /// The pass's dropout key (training passes only).
    pub(super) dropout_base: u64,
    /// Per node, its value while a later step, the tape or a held capture needs it.
    pub(super) vals: Vec<Option<Val<'a>>>,
    /// Per node, what backward needs besides values.
    pub(super) saved: Vec<Saved>,
    pub(super) bn_updates: Vec<BnUpdate>,
    /// Per node, the steps still to run that read its value.
    remaining: Vec<usize>,
    /// Values the tape keeps.
    keep: Vec<bool>,
    /// Channels-last captures, kept to the end of the pass and handed out without a copy.
    hold: Vec<bool>,
}

/// What a forward pass returns, while it runs: the output less the graph outputs, and the
/// graph outputs in the graph's order as they are computed.
struct PassOutput {
    out: ForwardOutput,
    slots: Vec<Option<Tensor>>,
}

/// Batch-norm running statistics to apply after a training forward: `(node, mean, unbiased var)`.
pub(super) type BnUpdate = (NodeId, Vec<f32>, Vec<f32>);

impl Network {
    /// Runs the graph on `x` (an NCHW batch for the first input node) and returns the first
    /// output. No tape is recorded.
    pub fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let input = self.first_input()?;
        let out = self.run(&ForwardRequest::new(mode).with_feed(input, x))?;
        Ok(out
            .outputs
            .into_iter()
            .next()
            .expect("a graph has at least one output"))
    }

    /// Runs the graph on `x` and also returns the activations of `capture`.
    pub fn forward_capture(
        &mut self,
        x: &Tensor,
        mode: Mode,
        capture: &[NodeId],
    ) -> Result<(Vec<Tensor>, HashMap<NodeId, Tensor>)> {
        let input = self.first_input()?;
        let out = self.run(
            &ForwardRequest::new(mode)
                .with_feed(input, x)
                .with_capture(capture),
        )?;
        Ok((out.outputs, out.captured))
    }

    /// A training-mode forward that records the tape; returns the first output.
    pub fn forward_train(&mut self, x: &Tensor) -> Result<Tensor> {
        self.forward_recorded(x, Mode::Train)
    }

    /// A forward in `mode` that records the tape (e.g. `Mode::Eval` for sensitivity analysis);
    /// returns the first output.
    pub fn forward_recorded(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let input = self.first_input()?;
        let out = self.run(&ForwardRequest::new(mode).with_feed(input, x).recording())?;
        Ok(out
            .outputs
            .into_iter()
            .next()
            .expect("a graph has at least one output"))
    }

    /// Runs a forward pass as described by `req`. A tape left by an earlier recording pass
    /// that was never backpropagated is dropped first.
    pub fn run(&mut self, req: &ForwardRequest<'_>) -> Result<ForwardOutput> {
        let threads = self.threads.clone();
        match threads {
            Some(p) => p.install(|| self.run_inner(req)),
            None => self.run_inner(req),
        }
    }

    fn run_inner(&mut self, req: &ForwardRequest<'_>) -> Result<ForwardOutput> {
        self.discard_tape();
        if req.record && !req.outputs {
            return Err(EngineError::Config(
                "a pass that records the tape must compute the graph outputs".into(),
            ));
        }
        let nn = self.graph.len();
        let (fed, n_batch) = self.check_feeds(req)?;
        for &c in &req.capture {
            self.check_node(c)?;
        }
        let (needed, keep_out) = self.needed_nodes(req, &fed)?;
        let n = n_batch.ok_or_else(|| EngineError::MissingInput {
            node: self
                .graph
                .inputs()
                .first()
                .map_or_else(String::new, |i| self.graph.node(*i).name.clone()),
        })?;
        self.check_batch(n)?;
        let mode = req.mode;
        let record = req.record;
        let key = PlanKey {
            needed,
            fed: fed.clone(),
            keep_out,
            mode,
            record,
            chain_convs: self.chain_convs,
            fuse_residuals: self.fuse_residuals,
        };
        let steps = match self.plan_cache.take() {
            Some((k, steps)) if k == key => steps,
            _ => self.plan(&key.needed, &key.fed, &key.keep_out, mode, record),
        };
        self.prepare_weights(&steps);
        let (keep, release_after) = if record {
            self.tape_release(&steps)
        } else {
            (vec![false; nn], vec![Vec::new(); steps.len()])
        };
        // Channels-last captures keep their buffer to the end of the pass and are handed out
        // without a copy.
        let mut hold = vec![false; nn];
        if req.layout == Layout::ChannelsLast {
            for c in &req.capture {
                if !fed[c.0] {
                    hold[c.0] = true;
                }
            }
        }
        let remaining = self.remaining_uses(&steps);
        let dropout_base = if mode == Mode::Train {
            self.rng.counter += 1;
            mix(self.rng.seed, self.rng.counter)
        } else {
            0
        };
        let mut pass = Pass {
            n,
            mode,
            record,
            dropout_base,
            vals: (0..nn).map(|_| None).collect(),
            saved: (0..nn).map(|_| Saved::None).collect(),
            bn_updates: Vec::new(),
            remaining,
            keep,
            hold,
        };
        let mut out = PassOutput {
            out: ForwardOutput {
                outputs: Vec::with_capacity(self.graph.outputs().len()),
                captured: HashMap::new(),
            },
            slots: vec![None; self.graph.outputs().len()],
        };
        self.load_feeds(req, &key.needed, &mut pass, &mut out);
        for s in &steps {
            self.run_step(req, *s, &mut pass, &mut out)?;
        }
        self.apply_bn_updates(std::mem::take(&mut pass.bn_updates));
        let PassOutput { mut out, slots } = out;
        for c in &req.capture {
            if pass.hold[c.0] {
                let Some(Val::Own(buf)) = pass.vals[c.0].take() else {
                    unreachable!("held captures are computed and stay to the end of the pass")
                };
                let mut shape = vec![n];
                shape.extend(self.per_sample_shape(*c, req.layout));
                let t = Tensor::new(shape, buf).expect("shape and length agree by construction");
                out.captured.insert(*c, t);
            }
        }
        out.outputs = slots
            .into_iter()
            .filter(|_| req.outputs)
            .map(|t| t.expect("every output is computed or fed"))
            .collect();
        if record {
            self.tape = Some(self.make_tape(pass, steps, fed, release_after));
        } else {
            self.recycle(
                pass.vals
                    .into_iter()
                    .map(|v| match v {
                        Some(Val::Own(b)) => Some(b),
                        _ => None,
                    })
                    .collect(),
            );
            self.plan_cache = Some((key, steps));
        }
        Ok(out)
    }

    /// Checks the feeds of `req`: known nodes, each fed once, with the right shapes and one
    /// batch size. Returns which nodes are fed and the batch size.
    fn check_feeds(&self, req: &ForwardRequest<'_>) -> Result<(Vec<bool>, Option<usize>)> {
        let mut fed = vec![false; self.graph.len()];
        let mut n_batch: Option<usize> = None;
        for &(id, t) in &req.feeds {
            self.check_node(id)?;
            if fed[id.0] {
                return Err(EngineError::Config(format!(
                    "node {:?} is fed twice",
                    self.graph.node(id).name
                )));
            }
            fed[id.0] = true;
            let per = self.per_sample_shape(id, req.layout);
            let s = t.shape();
            if s.len() != per.len() + 1 || s[1..] != per[..] || s[0] == 0 {
                return Err(EngineError::BadInput {
                    node: self.graph.node(id).name.clone(),
                    expected: per,
                    found: s.to_vec(),
                });
            }
            match n_batch {
                None => n_batch = Some(s[0]),
                Some(n) if n != s[0] => {
                    return Err(EngineError::BatchMismatch {
                        what: format!("value fed to {:?}", self.graph.node(id).name),
                        expected: n,
                        found: s[0],
                    })
                }
                Some(_) => {}
            }
        }
        Ok((fed, n_batch))
    }

    /// The nodes the pass computes (what the requested outputs and captures depend on, up to
    /// the fed nodes), and those whose values it returns. An input node that is needed and
    /// not fed is an error.
    fn needed_nodes(
        &self,
        req: &ForwardRequest<'_>,
        fed: &[bool],
    ) -> Result<(Vec<bool>, Vec<bool>)> {
        let nn = self.graph.len();
        let mut needed = vec![false; nn];
        let mut keep_out = vec![false; nn];
        let mut stack: Vec<NodeId> = if req.outputs {
            self.graph.outputs().to_vec()
        } else {
            Vec::new()
        };
        stack.extend_from_slice(&req.capture);
        for v in &stack {
            keep_out[v.0] = true;
        }
        while let Some(v) = stack.pop() {
            if needed[v.0] {
                continue;
            }
            needed[v.0] = true;
            if fed[v.0] {
                continue;
            }
            let node = self.graph.node(v);
            if matches!(node.op, Op::Input { .. }) {
                return Err(EngineError::MissingInput {
                    node: node.name.clone(),
                });
            }
            stack.extend_from_slice(&node.inputs);
        }
        Ok((needed, keep_out))
    }

    /// Brings the weight caches that `steps` use up to date.
    fn prepare_weights(&mut self, steps: &[Step]) {
        for s in steps {
            match *s {
                Step::Op(id) if matches!(self.graph.node(id).op, Op::Conv2d(_)) => {
                    self.ensure_pack(id)
                }
                Step::ConvBn { conv, bn, .. } => self.ensure_fused(conv, bn),
                Step::ConvAct { conv, .. } => self.ensure_pack(conv),
                Step::ConvChain {
                    conv,
                    bn,
                    conv2,
                    bn2,
                    ..
                } => {
                    self.ensure_fused(conv, bn);
                    self.ensure_fused(conv2, bn2);
                }
                _ => {}
            }
        }
    }

    /// Per node, how many of `steps` read its value.
    fn remaining_uses(&self, steps: &[Step]) -> Vec<usize> {
        let mut remaining = vec![0usize; self.graph.len()];
        for s in steps {
            let mut ins = s.inputs(&self.graph);
            ins.sort();
            ins.dedup();
            for i in ins {
                remaining[i.0] += 1;
            }
        }
        remaining
    }

    /// Puts the needed feeds of `req` into the pass in the engine's layout; fed nodes that
    /// are captured or are outputs are returned as given.
    fn load_feeds<'a>(
        &mut self,
        req: &ForwardRequest<'a>,
        needed: &[bool],
        pass: &mut Pass<'a>,
        out: &mut PassOutput,
    ) {
        let n = pass.n;
        for &(id, t) in &req.feeds {
            if !needed[id.0] {
                continue;
            }
            let (c, s) = self.cs[id.0];
            // Steps only read their inputs, so a channels-last feed is read where it lies
            // (the tape of a recorded pass owns its values, so those are copied).
            pass.vals[id.0] = Some(match (req.layout, pass.record) {
                (Layout::ChannelsLast, false) => Val::Ref(t.data()),
                (Layout::ChannelsLast, true) => {
                    let mut buf = self.pool.take(n * c * s);
                    buf.copy_from_slice(t.data());
                    Val::Own(buf)
                }
                (Layout::ChannelsFirst, _) => {
                    let mut buf = self.pool.take(n * c * s);
                    self.backend
                        .to_channels_last(n, s, c, t.data(), &mut buf, false);
                    Val::Own(buf)
                }
            });
            if req.capture.contains(&id) {
                out.out.captured.insert(id, t.clone());
            }
            for (k, o) in self.graph.outputs().iter().enumerate() {
                if *o == id {
                    out.slots[k] = Some(t.clone());
                }
            }
        }
    }

    /// Runs step `s` of the pass (timed when profiling), hands out its output where it is
    /// captured or a graph output, and returns to the workspace the values that no later
    /// step reads and that neither the tape nor a held capture keeps.
    fn run_step(
        &mut self,
        req: &ForwardRequest<'_>,
        s: Step,
        pass: &mut Pass<'_>,
        out: &mut PassOutput,
    ) -> Result<()> {
        let n = pass.n;
        let t0 = self.profile.is_some().then(std::time::Instant::now);
        let y = self.exec_step(s, pass)?;
        if let Some(t0) = t0 {
            self.record_step(s, n, t0.elapsed().as_secs_f64());
        }
        let o = s.out();
        if req.capture.contains(&o) && !pass.hold[o.0] {
            out.out
                .captured
                .insert(o, self.to_tensor_in(n, o, &y, req.layout));
        }
        for (k, oo) in self.graph.outputs().iter().enumerate() {
            if *oo == o && req.outputs {
                out.slots[k] = Some(self.to_tensor_in(n, o, &y, req.layout));
            }
        }
        pass.vals[o.0] = Some(Val::Own(y));
        let mut ins = s.inputs(&self.graph);
        ins.sort();
        ins.dedup();
        for i in ins {
            pass.remaining[i.0] -= 1;
            if pass.remaining[i.0] == 0 && !pass.keep[i.0] && !pass.hold[i.0] {
                if let Some(Val::Own(b)) = pass.vals[i.0].take() {
                    self.pool.give(b);
                }
            }
        }
        if pass.remaining[o.0] == 0 && !pass.keep[o.0] && !pass.hold[o.0] {
            if let Some(Val::Own(b)) = pass.vals[o.0].take() {
                self.pool.give(b);
            }
        }
        Ok(())
    }

    /// Applies the running statistics of a training pass's batch norms. They change only
    /// after the pass, which never reads them in training.
    fn apply_bn_updates(&mut self, bn_updates: Vec<BnUpdate>) {
        for (id, mean, var) in bn_updates {
            let Op::BatchNorm2d(b) = &self.graph.node(id).op else {
                unreachable!("bn update on a BN node")
            };
            let m = b.momentum;
            let im = self
                .params
                .slot_of(id, ParamKind::RunningMean)
                .expect("bn has a running mean");
            for (r, v) in self.params.slot_mut(im).data_mut().iter_mut().zip(&mean) {
                *r = (1.0 - m) * *r + m * *v;
            }
            let iv = self
                .params
                .slot_of(id, ParamKind::RunningVar)
                .expect("bn has a running var");
            for (r, v) in self.params.slot_mut(iv).data_mut().iter_mut().zip(&var) {
                *r = (1.0 - m) * *r + m * *v;
            }
        }
    }
}
