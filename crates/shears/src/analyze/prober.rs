//! Evaluates damaged copies of one model on one [`EvalSet`], optionally from cached prefix
//! activations: only the network after the first damaged node runs per probe.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use shears_engine::{Backend, CpuBackend, ForwardRequest, Layout, Mode, Network};
use shears_ir::{Graph, NodeId, Tensor, Weights};

use crate::Error;

use super::eval_set::EvalSet;
use super::skip;

/// Top-1 correct count and summed cross-entropy of one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Images evaluated.
    pub images: usize,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Mean cross-entropy.
    pub loss: f64,
}

impl Score {
    /// Top-1 accuracy as a fraction in `[0, 1]`.
    pub fn accuracy(&self) -> f64 {
        if self.images == 0 {
            0.0
        } else {
            self.correct as f64 / self.images as f64
        }
    }
}

/// Counters of a [`Prober`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeStats {
    /// Probes run (baseline excluded).
    pub probes: usize,
    /// MACs per image run by the probes (suffixes), summed over probes.
    pub probe_macs: u64,
    /// MACs per image run to fill the prefix caches.
    pub prefix_macs: u64,
    /// MACs per image of one full forward pass.
    pub full_macs: u64,
    /// MACs per image run to score the undamaged model (a full pass, or only the suffix after
    /// the cached frontier when prefix caching is on and the cache is already filled).
    #[serde(default)]
    pub baseline_macs: u64,
    /// Probes that skipped their damaged conv (see the module docs).
    #[serde(default)]
    pub skipped: usize,
}

impl ProbeStats {
    /// All MACs per image run: baseline, prefixes and probes.
    pub fn total_macs(&self) -> u64 {
        self.baseline_macs + self.prefix_macs + self.probe_macs
    }
}

/// Activations of every image as channels-last tensors, one per batch (the layout the engine
/// computes in, so feeding them back costs no conversion).
type Chunks = Vec<Tensor>;

/// Evaluates damaged copies of one model on one [`EvalSet`], optionally from cached prefix
/// activations (see the module docs).
pub struct Prober<'a> {
    graph: Graph,
    weights: Weights,
    net: Network,
    data: &'a EvalSet,
    /// The images, channels last, one tensor per batch.
    input_cl: Chunks,
    prefix_cache: bool,
    owner: HashMap<String, NodeId>,
    needed: Vec<bool>,
    consumers: Vec<Vec<NodeId>>,
    /// Cached frontier: the position it is for, and its node values over all images (plus the
    /// undamaged values a probe along the chain at that position reads).
    cache: Option<(usize, Vec<(NodeId, Chunks)>)>,
    /// A buffer for the damaged value a probe feeds.
    scratch: Vec<f32>,
    baseline: Option<Score>,
    stats: ProbeStats,
}

impl<'a> Prober<'a> {
    /// A prober for `graph` with `weights` on `data`, running `batch` images at a time.
    pub fn new(
        graph: &Graph,
        weights: &Weights,
        data: &'a EvalSet,
        batch: usize,
        prefix_cache: bool,
    ) -> Result<Self, Error> {
        if batch == 0 {
            return Err(Error::invalid("batch size must be at least 1"));
        }
        if data.is_empty() {
            return Err(Error::invalid("the evaluation set is empty"));
        }
        let inputs = graph.inputs();
        if inputs.len() != 1 || graph.outputs().len() != 1 {
            return Err(Error::invalid(format!(
                "probing needs a graph with one input and one output (found {} and {})",
                inputs.len(),
                graph.outputs().len()
            )));
        }
        let want = graph.shape(inputs[0]);
        if &data.images.shape()[1..] != want {
            return Err(Error::invalid(format!(
                "evaluation images have shape {:?} but the model input {:?} expects {:?}",
                &data.images.shape()[1..],
                graph.node(inputs[0]).name,
                want
            )));
        }
        let n_out: usize = graph.shape(graph.outputs()[0]).iter().product();
        if n_out < data.n_classes {
            return Err(Error::invalid(format!(
                "the model has {n_out} outputs but the evaluation set has {} classes",
                data.n_classes
            )));
        }
        let net = Network::new(graph.clone(), weights)?;
        let owner = graph
            .param_specs()
            .into_iter()
            .map(|(id, name, _)| (name, id))
            .collect();
        let mut needed = vec![false; graph.len()];
        let mut stack: Vec<NodeId> = graph.outputs().to_vec();
        while let Some(v) = stack.pop() {
            if !needed[v.0] {
                needed[v.0] = true;
                stack.extend_from_slice(&graph.node(v).inputs);
            }
        }
        let full_macs = graph
            .ids()
            .filter(|i| needed[i.0])
            .map(|i| graph.node_macs(i))
            .sum();
        let input_cl = to_chunks(&data.images, batch);
        Ok(Prober {
            input_cl,
            graph: graph.clone(),
            weights: weights.clone(),
            net,
            data,
            prefix_cache,
            owner,
            needed,
            consumers: graph.consumers(),
            cache: None,
            scratch: Vec::new(),
            baseline: None,
            stats: ProbeStats {
                full_macs,
                ..ProbeStats::default()
            },
        })
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The undamaged weights.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The counters so far.
    pub fn stats(&self) -> ProbeStats {
        self.stats
    }

    /// The undamaged model's score (computed once). With prefix caching it runs from the
    /// cached frontier when there is one, so scoring the baseline after the probes costs only
    /// the end of the network.
    pub fn baseline(&mut self) -> Result<Score, Error> {
        if let Some(s) = self.baseline {
            return Ok(s);
        }
        let input = self.graph.inputs()[0];
        let from = match (&self.cache, self.prefix_cache) {
            (Some((pos, vals)), true)
                if self
                    .frontier(*pos)
                    .iter()
                    .all(|f| vals.iter().any(|(v, _)| v == f)) =>
            {
                *pos
            }
            _ => input.0,
        };
        self.stats.baseline_macs += self.macs_from(from);
        let s = self.run_from(from)?;
        self.baseline = Some(s);
        Ok(s)
    }

    /// The first node whose value changes when the tensors named in `changed` change (the
    /// graph length when nothing changes). Errors name an unknown tensor.
    pub fn start_of(&self, changed: &Weights) -> Result<usize, Error> {
        let mut start = self.graph.len();
        for (name, t) in changed.iter() {
            let Some(&id) = self.owner.get(name) else {
                return Err(Error::invalid(format!(
                    "damaged tensor {name:?} is not a parameter of the graph"
                )));
            };
            let orig = self
                .weights
                .get(name)
                .expect("graph parameters are in the weights");
            if orig.shape() != t.shape() {
                return Err(Error::invalid(format!(
                    "damaged tensor {name:?} has shape {:?}, expected {:?}",
                    t.shape(),
                    orig.shape()
                )));
            }
            if orig.data() != t.data() {
                start = start.min(id.0);
            }
        }
        Ok(start)
    }

    /// The score of the model with the tensors in `changed` replaced (any subset of the
    /// graph's parameters; unchanged ones may be included). The network is restored after.
    pub fn probe(&mut self, changed: &Weights) -> Result<Score, Error> {
        let start = self.start_of(changed)?;
        self.stats.probes += 1;
        if start >= self.graph.len() {
            return self.baseline();
        }
        let input = self.graph.inputs()[0];
        let (from, chain) = if self.prefix_cache && start > input.0 {
            let chain = skip::chain_at(&self.graph, &self.consumers, &self.needed, start);
            let extras: Vec<NodeId> = chain.map(|c| c.p).into_iter().collect();
            self.advance_to(start, &extras)?;
            (start, chain)
        } else {
            (input.0, None)
        };
        self.net.set_weights(changed)?;
        let out = self.probe_set(from, chain, changed);
        let restore = self.original_of(changed);
        self.net.set_weights(&restore)?;
        out
    }

    /// [`Prober::probe`] with the damaged weights set, running from the frontier of `from`
    /// (the input, or the start of the damage with the cache there), or along `chain` when
    /// the damage allows (cached probes only).
    fn probe_set(
        &mut self,
        from: usize,
        chain: Option<skip::Chain>,
        changed: &Weights,
    ) -> Result<Score, Error> {
        if let Some(c) = chain {
            if let Some(dmg) =
                skip::chain_damage(&self.graph, &c, &self.owner, &self.weights, changed)
            {
                if let Some(s) = self.probe_chain(&c, &dmg)? {
                    return Ok(s);
                }
            }
        }
        self.stats.probe_macs += self.macs_from(from);
        self.run_from(from)
    }

    /// A probe along `c` (see [`skip`]) with the damaged weights already set: the damaged conv
    /// and its per-channel nodes are not run. `None` when the cache lacks a value the suffix
    /// reads.
    fn probe_chain(
        &mut self,
        c: &skip::Chain,
        dmg: &skip::ChainDamage,
    ) -> Result<Option<Score>, Error> {
        let after = c.p.0 + 1;
        let front = self.frontier(after);
        let d_front = self.frontier(c.d.0);
        let (_, vals) = self.cache.as_ref().expect("advance_to fills the cache");
        let pos = |id: NodeId| vals.iter().position(|(v, _)| *v == id);
        if front.iter().chain(&d_front).any(|&f| pos(f).is_none()) {
            return Ok(None);
        }
        let ip = pos(c.p).expect("p is read after the chain");
        let front_idx: Vec<(NodeId, usize)> = front
            .iter()
            .filter(|&&f| f != c.p)
            .map(|&f| (f, pos(f).expect("checked above")))
            .collect();
        // The damaged channels' constant maps at `p`, from one image of the damaged model.
        let one: Vec<(NodeId, Tensor)> = d_front
            .iter()
            .map(|&f| (f, rows(&vals[pos(f).expect("checked above")].1[0], 0, 1)))
            .collect();
        let mut req = ForwardRequest::new(Mode::Eval)
            .with_layout(Layout::ChannelsLast)
            .captures_only()
            .with_capture(&[c.p]);
        for (id, t) in &one {
            req = req.with_feed(*id, t);
        }
        let p_one = self
            .net
            .run(&req)?
            .captured
            .remove(&c.p)
            .expect("the captured node is returned");
        let n_ch = *p_one.shape().last().expect("a captured tensor has a shape");
        let hw = p_one.numel() / n_ch;
        let s = dmg.chans.len();
        // consts[x * s + j]: channel chans[j] at pixel x.
        let consts: Vec<f32> = (0..hw)
            .flat_map(|x| dmg.chans.iter().map(move |&ch| (x, ch)))
            .map(|(x, ch)| p_one.data()[x * n_ch + ch])
            .collect();
        self.stats.probe_macs += self.macs_from(after);
        self.stats.skipped += 1;
        let mut logits: Vec<f32> = Vec::new();
        for bi in 0..self.input_cl.len() {
            let (_, vals) = self.cache.as_ref().expect("advance_to fills the cache");
            let p_rows = &vals[ip].1[bi];
            // `p` with the damaged channels' constants, in one pass.
            let mut buf = std::mem::take(&mut self.scratch);
            buf.clear();
            buf.extend_from_slice(p_rows.data());
            for (px, cs) in buf
                .chunks_exact_mut(n_ch)
                .zip(consts.chunks_exact(s).cycle())
            {
                for (&ch, &k) in dmg.chans.iter().zip(cs) {
                    px[ch] = k;
                }
            }
            let new_val = Tensor::new(p_rows.shape().to_vec(), buf).expect("same shape as p");
            let mut req = ForwardRequest::new(Mode::Eval)
                .with_layout(Layout::ChannelsLast)
                .with_feed(c.p, &new_val);
            for &(f, i) in &front_idx {
                req = req.with_feed(f, &vals[i].1[bi]);
            }
            let out = self.net.run(&req);
            self.scratch = new_val.into_data();
            logits.extend_from_slice(out?.outputs[0].data());
        }
        Ok(Some(self.score(&logits)))
    }

    fn original_of(&self, changed: &Weights) -> Weights {
        let mut w = Weights::new();
        for name in changed.names() {
            if let Some(t) = self.weights.get(name) {
                w.insert(name.clone(), t.clone());
            }
        }
        w
    }

    fn macs_from(&self, start: usize) -> u64 {
        self.graph
            .ids()
            .filter(|i| i.0 >= start && self.needed[i.0])
            .map(|i| self.graph.node_macs(i))
            .sum()
    }

    /// Nodes before `start` whose values nodes at or after `start` read.
    fn frontier(&self, start: usize) -> Vec<NodeId> {
        let mut f = vec![false; self.graph.len()];
        for id in self
            .graph
            .ids()
            .filter(|i| i.0 >= start && self.needed[i.0])
        {
            for inp in &self.graph.node(id).inputs {
                if inp.0 < start {
                    f[inp.0] = true;
                }
            }
        }
        for o in self.graph.outputs() {
            if o.0 < start {
                f[o.0] = true;
            }
        }
        (0..f.len()).filter(|&i| f[i]).map(NodeId).collect()
    }

    /// Makes the cache hold the frontier of `start` and the undamaged values of `extras`
    /// (nodes at or after `start`), walking forward from the current cache (or from the input
    /// when `start` lies before it). Values already cached are not recomputed.
    fn advance_to(&mut self, start: usize, extras: &[NodeId]) -> Result<(), Error> {
        let input = self.graph.inputs()[0];
        let vals = match self.cache.take() {
            Some((p, v)) if p <= start => v,
            _ => vec![(input, self.input_cl.clone())],
        };
        let mut want = self.frontier(start);
        for &e in extras {
            if !want.contains(&e) {
                want.push(e);
            }
        }
        let have: Vec<NodeId> = vals.iter().map(|(id, _)| *id).collect();
        let new: Vec<NodeId> = want.iter().copied().filter(|i| !have.contains(i)).collect();
        let mut computed: Vec<(NodeId, Chunks)> = Vec::new();
        if !new.is_empty() {
            // The nodes the new values need, walking back to the cached values.
            let mut reach = vec![false; self.graph.len()];
            let mut fed_used = Vec::new();
            let mut stack = new.clone();
            while let Some(v) = stack.pop() {
                if reach[v.0] {
                    continue;
                }
                reach[v.0] = true;
                if have.contains(&v) {
                    fed_used.push(v);
                    continue;
                }
                stack.extend_from_slice(&self.graph.node(v).inputs);
            }
            let old_vals: Vec<(NodeId, &Chunks)> = vals
                .iter()
                .filter(|(id, _)| fed_used.contains(id))
                .map(|(id, t)| (*id, t))
                .collect();
            self.stats.prefix_macs += self
                .graph
                .ids()
                .filter(|i| reach[i.0] && !have.contains(i))
                .map(|i| self.graph.node_macs(i))
                .sum::<u64>();
            let outs = run_captures(&mut self.net, &old_vals, &new)?;
            computed = new.iter().copied().zip(outs).collect();
        }
        let mut kept: Vec<(NodeId, Chunks)> = vals
            .into_iter()
            .filter(|(id, _)| want.contains(id))
            .chain(computed)
            .collect();
        kept.sort_by_key(|(id, _)| id.0);
        self.cache = Some((start, kept));
        Ok(())
    }

    /// Runs the network from the frontier of `from` (the input, or a cached position) and
    /// scores the logits.
    fn run_from(&mut self, from: usize) -> Result<Score, Error> {
        let input = self.graph.inputs()[0];
        let logits_node = self.graph.outputs().to_vec();
        let outs = if from <= input.0 {
            run_captures(&mut self.net, &[(input, &self.input_cl)], &logits_node)?
        } else {
            let front = self.frontier(from);
            let (_, vals) = self.cache.as_ref().expect("a cached position");
            let feeds: Vec<(NodeId, &Chunks)> = vals
                .iter()
                .filter(|(id, _)| front.contains(id))
                .map(|(id, t)| (*id, t))
                .collect();
            run_captures(&mut self.net, &feeds, &logits_node)?
        };
        let logits: Vec<f32> = outs[0]
            .iter()
            .flat_map(|t| t.data().iter().copied())
            .collect();
        Ok(self.score(&logits))
    }

    /// Top-1 and cross-entropy of `l`, the logits of every image in order.
    fn score(&self, l: &[f32]) -> Score {
        let n_out = l.len() / self.data.len();
        let mut correct = 0usize;
        let mut loss = 0f64;
        for (i, &label) in self.data.labels.iter().enumerate() {
            let row = &l[i * n_out..(i + 1) * n_out];
            let label = label as usize;
            correct += usize::from(crate::eval::argmax(row) == label);
            loss += neg_log_softmax(row, label);
        }
        Score {
            images: self.data.len(),
            correct,
            loss: loss / self.data.len() as f64,
        }
    }
}

/// Runs the part of `net` that computes `nodes` from channels-last `feeds` (all with the same
/// batches), batch by batch, and returns their values, channels last, one tensor per batch.
fn run_captures(
    net: &mut Network,
    feeds: &[(NodeId, &Chunks)],
    nodes: &[NodeId],
) -> Result<Vec<Chunks>, Error> {
    let n_batches = feeds.first().map_or(0, |(_, c)| c.len());
    let mut outs: Vec<Chunks> = nodes.iter().map(|_| Vec::new()).collect();
    for bi in 0..n_batches {
        let mut req = ForwardRequest::new(Mode::Eval)
            .with_layout(Layout::ChannelsLast)
            .captures_only()
            .with_capture(nodes);
        for (id, t) in feeds {
            req = req.with_feed(*id, &t[bi]);
        }
        let mut out = net.run(&req)?;
        for (dst, id) in outs.iter_mut().zip(nodes) {
            dst.push(
                out.captured
                    .remove(id)
                    .expect("captured nodes are returned"),
            );
        }
    }
    Ok(outs)
}

/// `t` (a `[N, C, ...]` batch) as channels-last tensors of `batch` images each.
fn to_chunks(t: &Tensor, batch: usize) -> Chunks {
    let n = t.shape()[0];
    let c = t.shape().get(1).copied().unwrap_or(1);
    let per: usize = t.shape()[1..].iter().product();
    let mut shape: Vec<usize> = t.shape()[1..].to_vec();
    shape.rotate_left(1);
    let mut out = Vec::new();
    let mut a = 0;
    while a < n {
        let b = (a + batch).min(n);
        let mut data = vec![0f32; (b - a) * per];
        CpuBackend.to_channels_last(
            b - a,
            per / c.max(1),
            c,
            &t.data()[a * per..b * per],
            &mut data,
            false,
        );
        let mut s = vec![b - a];
        s.extend_from_slice(&shape);
        out.push(Tensor::new(s, data).expect("chunk shape matches its data"));
        a = b;
    }
    out
}

/// Rows `a..b` of a batch tensor.
fn rows(t: &Tensor, a: usize, b: usize) -> Tensor {
    let per: usize = t.shape()[1..].iter().product();
    let mut shape = t.shape().to_vec();
    shape[0] = b - a;
    Tensor::new(shape, t.data()[a * per..b * per].to_vec()).expect("row slice of a batch")
}

/// `-log softmax(row)[label]` in f64.
fn neg_log_softmax(row: &[f32], label: usize) -> f64 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
    -(row[label] as f64 - m - s.ln())
}
