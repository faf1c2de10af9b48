//! Per-group prune-and-evaluate sweeps (Distiller, NNI and PaddleSlim style), run from cached
//! prefix activations.
//!
//! For each prunable group and each ratio of a list, the group alone loses
//! `floor(ratio * size)` channels chosen by a criterion, and the model is evaluated (top-1
//! accuracy and mean cross-entropy) on a fixed evaluation set, typically a class-balanced
//! validation subset ([`EvalSet::balanced`]). A probe uses the *masked* model
//! ([`crate::prune::mask_weights`]), which [`crate::prune::prune`] reproduces exactly
//! (default [`FoldMode::Exact`]), so a probe's accuracy is the pruned model's accuracy.
//!
//! **Prefix caching ([`Prober`]).** Damaging a group changes the weights of a few nodes; every
//! node before the first of them computes exactly what it computes in the undamaged model. The
//! prober keeps the activations at the *frontier* of that point (the nodes before it that are
//! read by nodes at or after it; for a ResNet block, the block input) for the whole evaluation
//! set, and each probe runs only the suffix of the network from them. Probes are taken in
//! topological order of their first damaged node, so the frontier walks forward through the
//! network once: the prefixes cost one forward pass in all. With `prefix_cache = false` every
//! probe runs the whole network, as the other toolkits do. Both give bit-identical logits.
//! Cached values are kept channels last, one tensor per batch (the engine's own layout,
//! [`Layout::ChannelsLast`]), which it reads where they lie: no transpose and no copy per probe.
//!
//! **Skipping the damaged conv.** A probe that zeroes filters of a conv changes, up to the next
//! channel-mixing node, only those channels, which become constant. So the prober also caches
//! the undamaged value that mixing node reads (a ResNet block's `relu1`), sets the damaged
//! channels to their constants, and starts the probe after the damaged conv and its batch norm:
//! bit-identical to running them (see `analyze::skip`, which also says why a delta form of the
//! next conv is not used).
//!
//! **Baseline.** The undamaged model is scored after the probes: with prefix caching it then
//! runs only from the last cached frontier.
//!
//! **Resume.** With a cache file, every finished probe is written at once (temporary file, then
//! rename); a later run with the same model, data and settings reuses the cached probes and
//! computes only the missing ones. A cache made for anything else is an error naming the file
//! and what differs.
//!
//! **Ratio selection.** [`ratios_for_loss`] picks, per group, the largest ratio whose
//! interpolated loss increase stays under a threshold (PaddleSlim's `get_ratios_by_loss`, with
//! the curve starting at (0, baseline)); [`ratios_for_macs`] bisects that threshold until the
//! ratios meet a MACs target. Both return `{group root: ratio}`, the format of
//! `shears prune --ratios-from FILE`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shears_data::{Dataset, Loader, LoaderConfig, Split};
use shears_engine::{Backend, CpuBackend, ForwardRequest, Layout, Mode, Network};
use shears_ir::{Graph, NodeId, Tensor, Weights};

pub use super::ratios::{
    macs_with_ratios, max_ratio_for_loss, ratios_for_loss, ratios_for_macs, MacsSelection,
};
use super::shard::{suffix_macs, Assignment, Shard};
use super::skip;
use crate::eval::{batch_tensor, input_transforms, normalize_for};
use crate::progress::{Progress, Verbosity};
use crate::prune::{
    self, fingerprint, mask_weights_with, AllocConfig, Criterion, DepGraph, FoldMode, Reduction,
    Role, ScoreContext, Strategy,
};
use crate::zoo::Preprocess;
use crate::Error;

/// A fixed evaluation set: preprocessed images as one NCHW tensor, and their labels.
#[derive(Clone, Debug)]
pub struct EvalSet {
    /// `[N, C, H, W]`, normalised and adapted to the model input.
    pub images: Tensor,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Number of classes of the dataset.
    pub n_classes: usize,
    /// Where the images come from (for reports), e.g. `cifar10 test, 1000 class-balanced`.
    pub description: String,
    /// The dataset split the images come from, when they come from a built-in dataset's split
    /// (reports carry it in their `split` field).
    pub split: Option<Split>,
}

impl EvalSet {
    /// All images of `ds`, preprocessed for a model with input shape `input` (`[C, H, W]`).
    pub fn from_dataset(ds: &Dataset, pre: &Preprocess, input: &[usize]) -> Result<Self, Error> {
        if ds.is_empty() {
            return Err(Error::invalid(format!("dataset {} has no images", ds.name)));
        }
        let transforms = input_transforms(ds, input)?;
        let cfg = LoaderConfig::new(ds.len())
            .with_normalize(normalize_for(pre, input[0]))
            .with_transforms(transforms);
        let mut loader = Loader::new(ds, cfg)?;
        let batch = loader
            .next()
            .ok_or_else(|| Error::invalid(format!("dataset {} gave no batch", ds.name)))?;
        Ok(EvalSet {
            images: batch_tensor(&batch),
            labels: batch.labels.clone(),
            n_classes: ds.n_classes(),
            description: format!("{}, {} images", ds.name, ds.len()),
            split: None,
        })
    }

    /// A seeded class-balanced subset of `n` images of `ds` (all of `ds` if smaller).
    pub fn balanced(
        ds: &Dataset,
        n: usize,
        seed: u64,
        pre: &Preprocess,
        input: &[usize],
    ) -> Result<Self, Error> {
        if n == 0 {
            return Err(Error::invalid(
                "the evaluation set needs at least one image",
            ));
        }
        let sub = if n < ds.len() {
            ds.class_balanced_subset(n, seed)
        } else {
            ds.clone()
        };
        let mut s = Self::from_dataset(&sub, pre, input)?;
        s.description = format!(
            "{}, {} class-balanced images (seed {seed})",
            ds.name,
            sub.len()
        );
        Ok(s)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// FNV-1a hash of the images' bits and the labels (identifies the set in cache files).
    pub fn hash(&self) -> String {
        let mut h = Fnv::new();
        for v in self.images.data() {
            h.add(&v.to_bits().to_le_bytes());
        }
        h.add(&self.labels);
        h.hex()
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn hex(&self) -> String {
        format!("fnv1a64:{:016x}", self.0)
    }
}

/// FNV-1a hash of a set of weights (names, shapes and bits, in name order).
pub fn weights_hash(w: &Weights) -> String {
    let mut names: Vec<&String> = w.names().collect();
    names.sort();
    let mut h = Fnv::new();
    for n in names {
        let t = w.get(n).expect("name listed by the weights");
        h.add(n.as_bytes());
        for &d in t.shape() {
            h.add(&(d as u64).to_le_bytes());
        }
        for v in t.data() {
            h.add(&v.to_bits().to_le_bytes());
        }
    }
    h.hex()
}

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

/// The tensors of `damaged` that differ from `orig` (same names and shapes).
pub fn changed_tensors(orig: &Weights, damaged: &Weights) -> Weights {
    let mut w = Weights::new();
    for (name, t) in damaged.iter() {
        if orig.get(name).is_none_or(|o| o.data() != t.data()) {
            w.insert(name.clone(), t.clone());
        }
    }
    w
}

/// The first node a group's damage can change: its earliest producer, batch norm or shortcut
/// member (input-channel consumers keep their weights). Used to order probes.
pub fn group_start(g: &prune::Group) -> usize {
    g.members
        .iter()
        .filter(|m| m.role != Role::InChannels)
        .map(|m| m.node.0)
        .min()
        .unwrap_or(g.root.0)
}

/// The groups a sweep probes, in group order: every prunable group of two or more channels, or
/// those rooted at `cfg.only` (an unknown root is an error naming it).
fn swept_groups<'d>(
    graph: &Graph,
    dg: &'d DepGraph,
    cfg: &SweepConfig,
) -> Result<Vec<&'d prune::Group>, Error> {
    let mut groups: Vec<&prune::Group> = dg.prunable().filter(|g| g.size > 1).collect();
    if let Some(only) = &cfg.only {
        for name in only {
            if !groups.iter().any(|g| &graph.node(g.root).name == name) {
                let roots: Vec<&str> = groups
                    .iter()
                    .map(|g| graph.node(g.root).name.as_str())
                    .collect();
                return Err(Error::invalid(format!(
                    "no prunable group has root {name:?} (roots: {})",
                    roots.join(", ")
                )));
            }
        }
        groups.retain(|g| only.contains(&graph.node(g.root).name));
    }
    Ok(groups)
}

/// The probes `cfg.shard` owns (see [`sweep_assignment`]), without running them.
pub fn sweep_shard_assignment(graph: &Graph, cfg: &SweepConfig) -> Result<Assignment, Error> {
    let dg = DepGraph::build(graph)?;
    let mut order = swept_groups(graph, &dg, cfg)?;
    order.sort_by_key(|g| (group_start(g), g.id));
    Ok(sweep_assignment(graph, &order, cfg.ratios.len(), cfg.shard))
}

/// The probes of `shard` (all with none) among `groups` (in probe order, by
/// [`group_start`]) times `n_ratios`, probe `gi * n_ratios + ri`, balanced by their suffix MACs
/// (see [`super::shard`]).
pub fn sweep_assignment(
    graph: &Graph,
    groups: &[&prune::Group],
    n_ratios: usize,
    shard: Option<Shard>,
) -> Assignment {
    let suffix = suffix_macs(graph);
    let costs: Vec<u64> = groups
        .iter()
        .flat_map(|g| std::iter::repeat_n(suffix[group_start(g)], n_ratios))
        .collect();
    Assignment::new(&costs, shard)
}

/// `floor(ratio * n)` as allocation computes it.
pub fn ratio_count(ratio: f32, n: usize) -> usize {
    ((f64::from(ratio) * n as f64) + 1e-6).floor() as usize
}

/// The f32 ratio nearest `k / n` that `shears prune` turns back into exactly `k` of `n`
/// channels (`floor(ratio * n)`).
pub fn ratio_for_count(k: usize, n: usize) -> f32 {
    if n == 0 {
        return 0.0;
    }
    let mut r = (k as f64 / n as f64) as f32;
    for _ in 0..64 {
        match ratio_count(r, n).cmp(&k) {
            std::cmp::Ordering::Equal => return r,
            std::cmp::Ordering::Less => r = f32::from_bits(r.to_bits() + 1),
            std::cmp::Ordering::Greater => r = f32::from_bits(r.to_bits() - 1),
        }
    }
    r
}

/// Settings of [`sweep`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepConfig {
    /// Ratios (fractions of a group's channels removed), each in `(0, 1)`.
    pub ratios: Vec<f32>,
    /// Criterion choosing the removed channels within a group.
    pub criterion: Criterion,
    /// Member reduction of the criterion.
    pub reduction: Reduction,
    /// Seed of the criterion (random criterion only).
    pub seed: u64,
    /// How the masked model treats removed channels (as `shears prune --fold`).
    pub fold: FoldMode,
    /// Images per forward batch (does not change results).
    #[serde(skip)]
    pub batch: usize,
    /// Run each probe from cached prefix activations (does not change results).
    #[serde(skip)]
    pub prefix_cache: bool,
    /// Cache file: finished probes are written there and reused by a later run.
    #[serde(skip)]
    pub cache_file: Option<PathBuf>,
    /// Stop after computing this many new probes (to test resuming). Default none.
    #[serde(skip)]
    pub max_new_probes: Option<usize>,
    /// Only these group roots (default: every prunable group).
    pub only: Option<Vec<String>>,
    /// Compute only this shard's probes ([`sweep_assignment`]); default all.
    #[serde(skip)]
    pub shard: Option<Shard>,
    /// Progress display.
    #[serde(skip)]
    pub verbosity: Verbosity,
}

impl SweepConfig {
    /// The given ratios with the L1 criterion, mean reduction, seed 0, exact fold, batches of
    /// 250, prefix caching on, no cache file.
    pub fn new(ratios: Vec<f32>) -> Self {
        SweepConfig {
            ratios,
            criterion: Criterion::L1,
            reduction: Reduction::Mean,
            seed: 0,
            fold: FoldMode::Exact,
            batch: 250,
            prefix_cache: true,
            cache_file: None,
            max_new_probes: None,
            only: None,
            shard: None,
            verbosity: Verbosity::Quiet,
        }
    }
}

/// One measured point of a group's curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// The requested ratio.
    pub ratio: f32,
    /// Channels removed (`floor(ratio * size)`, at least one kept).
    pub removed: usize,
    /// Top-1 accuracy in `[0, 1]`.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
}

/// A group's measured curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupCurve {
    /// Group id.
    pub group: usize,
    /// Root node name (the key of `--ratios-from`).
    pub root: String,
    /// Channels in the group.
    pub size: usize,
    /// Points in the order of the configured ratios.
    pub points: Vec<SweepPoint>,
}

/// What identifies a sweep in a cache file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepKey {
    /// Graph fingerprint.
    pub graph: String,
    /// Weights hash.
    pub weights: String,
    /// Evaluation set hash.
    pub data: String,
    /// Criterion name.
    pub criterion: String,
    /// Member reduction.
    pub reduction: String,
    /// Criterion seed.
    pub seed: u64,
    /// Fold mode.
    pub fold: FoldMode,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    key: SweepKey,
    baseline: Option<Score>,
    /// The baseline loss's bits (JSON decimals need not round-trip exactly).
    #[serde(default)]
    baseline_loss_bits: Option<u64>,
    entries: Vec<CacheEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheEntry {
    root: String,
    group: usize,
    ratio: f32,
    removed: usize,
    accuracy: f64,
    loss: f64,
    /// Exact values: accuracy is `correct / images`, loss is `f64::from_bits(loss_bits)`.
    correct: usize,
    images: usize,
    loss_bits: u64,
}

impl CacheEntry {
    fn accuracy(&self) -> f64 {
        Score {
            images: self.images,
            correct: self.correct,
            loss: 0.0,
        }
        .accuracy()
    }
    fn loss(&self) -> f64 {
        f64::from_bits(self.loss_bits)
    }
}

/// The result of [`sweep`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepResult {
    /// What was swept.
    pub key: SweepKey,
    /// Images in the evaluation set.
    pub images: usize,
    /// The split the evaluation set was drawn from (`val` unless asked otherwise).
    #[serde(default)]
    pub split: Option<Split>,
    /// Baseline top-1 accuracy in `[0, 1]`.
    pub baseline_accuracy: f64,
    /// Baseline mean cross-entropy.
    pub baseline_loss: f64,
    /// One curve per swept group, in group order. Incomplete when stopped early.
    pub groups: Vec<GroupCurve>,
    /// Probes computed by this run.
    pub computed: usize,
    /// Probes taken from the cache file.
    pub reused: usize,
    /// Whether every probe is done.
    pub complete: bool,
    /// Wall-clock seconds of this run.
    pub seconds: f64,
    /// Prober counters.
    pub stats: ProbeStats,
}

const CACHE_VERSION: u32 = 1;

/// Writes `text` to `path` atomically ([`shears_io::write_atomic`]), creating its directory.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(shears_io::write_atomic(path, |w| {
        w.write_all(text.as_bytes())
    })?)
}

fn load_cache(path: &Path, key: &SweepKey) -> Result<Option<CacheFile>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::File {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let c: CacheFile = serde_json::from_str(&text).map_err(|e| {
        Error::invalid(format!(
            "sweep cache {}: not a sweep cache file ({e}); delete it or choose another path",
            path.display()
        ))
    })?;
    if c.version != CACHE_VERSION {
        return Err(Error::invalid(format!(
            "sweep cache {}: version {} (this shears writes {CACHE_VERSION})",
            path.display(),
            c.version
        )));
    }
    if &c.key != key {
        let a = serde_json::to_value(&c.key).expect("plain data");
        let b = serde_json::to_value(key).expect("plain data");
        let diff: Vec<String> = a
            .as_object()
            .expect("struct")
            .iter()
            .filter(|(k, v)| b.get(k.as_str()) != Some(v))
            .map(|(k, v)| format!("{k} {v} (now {})", b[k.as_str()]))
            .collect();
        return Err(Error::invalid(format!(
            "sweep cache {} was made for another sweep: {}; delete it or choose another path",
            path.display(),
            diff.join(", ")
        )));
    }
    Ok(Some(c))
}

/// Sweeps every prunable group (or `cfg.only`) over `cfg.ratios`; see the module docs.
pub fn sweep(
    graph: &Graph,
    weights: &Weights,
    data: &EvalSet,
    cfg: &SweepConfig,
) -> Result<SweepResult, Error> {
    let start_t = Instant::now();
    if cfg.ratios.is_empty() {
        return Err(Error::invalid("the sweep needs at least one ratio"));
    }
    for &r in &cfg.ratios {
        if !(r > 0.0 && r < 1.0) {
            return Err(Error::invalid(format!(
                "sweep ratio {r} is outside (0, 1) (the fraction of a group's channels removed)"
            )));
        }
    }
    if cfg.criterion == Criterion::Taylor {
        return Err(Error::invalid(
            "the taylor criterion needs gradients; sweep with l1, l2, bn_scale, fpgm or random",
        ));
    }
    let dg = DepGraph::build(graph)?;
    let groups = swept_groups(graph, &dg, cfg)?;
    let key = SweepKey {
        graph: fingerprint(graph),
        weights: weights_hash(weights),
        data: data.hash(),
        criterion: cfg.criterion.name().into(),
        reduction: format!("{:?}", cfg.reduction).to_lowercase(),
        seed: cfg.seed,
        fold: cfg.fold,
    };
    let mut file = match &cfg.cache_file {
        Some(p) => load_cache(p, &key)?,
        None => None,
    }
    .unwrap_or(CacheFile {
        version: CACHE_VERSION,
        key: key.clone(),
        baseline: None,
        baseline_loss_bits: None,
        entries: Vec::new(),
    });
    let save = |file: &CacheFile| -> Result<(), Error> {
        if let Some(p) = &cfg.cache_file {
            let text = serde_json::to_string_pretty(file).expect("plain data");
            write_atomic(p, &text)?;
        }
        Ok(())
    };
    let mut prober = Prober::new(graph, weights, data, cfg.batch, cfg.prefix_cache)?;
    let crit = cfg.criterion.build(cfg.reduction, cfg.seed);
    let ctx = ScoreContext::new(graph, weights);
    let mut order: Vec<&prune::Group> = groups.clone();
    order.sort_by_key(|g| (group_start(g), g.id));
    let mine = sweep_assignment(graph, &order, cfg.ratios.len(), cfg.shard);
    let bar = Progress::new(mine.len() as u64, "sweep", cfg.verbosity);
    let (mut computed, mut reused) = (0usize, 0usize);
    let mut complete = true;
    'outer: for (gi, g) in order.iter().enumerate() {
        let root = graph.node(g.root).name.clone();
        for (ri, &r) in cfg.ratios.iter().enumerate() {
            if !mine.owns(gi * cfg.ratios.len() + ri) {
                continue;
            }
            if file
                .entries
                .iter()
                .any(|e| e.group == g.id && e.root == root && e.ratio == r)
            {
                reused += 1;
                bar.inc(1);
                continue;
            }
            if cfg.max_new_probes.is_some_and(|m| computed >= m) {
                complete = false;
                break 'outer;
            }
            let mut ratios = BTreeMap::new();
            ratios.insert(root.clone(), r);
            let mut ac = AllocConfig::new(Strategy::PerGroup { ratios }).with_fold(cfg.fold);
            ac.min_channels = 1;
            let plan = prune::plan_with(&ctx, &dg, crit.as_ref(), &ac)?;
            let removed = plan.n_removed();
            let masked = mask_weights_with(graph, weights, &dg, &plan)?;
            let changed = changed_tensors(weights, &masked);
            let s = prober.probe(&changed)?;
            computed += 1;
            file.entries.push(CacheEntry {
                root: root.clone(),
                group: g.id,
                ratio: r,
                removed,
                accuracy: s.accuracy(),
                loss: s.loss,
                correct: s.correct,
                images: s.images,
                loss_bits: s.loss.to_bits(),
            });
            save(&file)?;
            bar.inc(1);
            bar.set_message(format!("{root} r={r}: {:.2}%", 100.0 * s.accuracy()));
        }
    }
    // The baseline last: with prefix caching it then runs from the last cached frontier.
    let base = match (file.baseline, file.baseline_loss_bits) {
        (Some(b), Some(bits)) => Score {
            loss: f64::from_bits(bits),
            ..b
        },
        _ => {
            let b = prober.baseline()?;
            file.baseline = Some(b);
            file.baseline_loss_bits = Some(b.loss.to_bits());
            save(&file)?;
            b
        }
    };
    bar.finish(&format!(
        "sweep: {computed} probes computed, {reused} reused, {:.1}s",
        start_t.elapsed().as_secs_f64()
    ));
    let curves = groups
        .iter()
        .map(|g| {
            let root = graph.node(g.root).name.clone();
            let points = cfg
                .ratios
                .iter()
                .filter_map(|&r| {
                    file.entries
                        .iter()
                        .find(|e| e.group == g.id && e.root == root && e.ratio == r)
                        .map(|e| SweepPoint {
                            ratio: r,
                            removed: e.removed,
                            accuracy: e.accuracy(),
                            loss: e.loss(),
                        })
                })
                .collect();
            GroupCurve {
                group: g.id,
                root,
                size: g.size,
                points,
            }
        })
        .collect();
    Ok(SweepResult {
        key,
        images: data.len(),
        split: data.split,
        baseline_accuracy: base.accuracy(),
        baseline_loss: base.loss,
        groups: curves,
        computed,
        reused,
        complete,
        seconds: start_t.elapsed().as_secs_f64(),
        stats: prober.stats(),
    })
}
