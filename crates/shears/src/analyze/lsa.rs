//! Local sensitivity analysis (LSA) of high-level features with p-norm aggregation, after
//! Jeczmionek & Kowalski (2023); methods §1.
//!
//! The sensitivity of output `k` to feature `i` at sample `n` is
//! `S[n][k][i] = d y_k / d z_i`, evaluated at `z_n`, where `y` are the softmax probabilities
//! ([`Outputs::Softmax`], the default) or the logits ([`Outputs::Logits`]) and `z` the
//! activation under study: by default the classifier input ([`classifier_input`]: the flatten
//! or global-pool output feeding the first dense layer), or any conv activation, whose channels
//! are then aggregated over space ([`Spatial::Sum`]: `sum_hw dy/da[c,h,w]`, the sensitivity to
//! a uniform shift of channel `c`; for the map feeding a global average pool this equals the
//! sensitivity to the pooled feature).
//!
//! Sensitivities come from the engine's autodiff in batches ([`jacobian`]): every sample is
//! repeated once per output in one batch and each copy is seeded with one output's gradient,
//! so a single forward and backward pass yields the whole `K x d` Jacobian of a batch. For a
//! linear + softmax head [`linear_head_jacobian`] is the closed form
//! `S[k][i] = y_k (W[k][i] - sum_j y_j W[j][i])`, a fast path and a cross-check.
//!
//! Aggregation ([`Jacobian::scores`]): over samples with the power mean of `|S|` for any real
//! `p >= 1` or the maximum (`p = inf`) ([`PNorm`]), then over outputs by max (Zurada's
//! convention, default), sum or the same p-norm ([`OutputAgg`]). The least sensitive features
//! are removed first ([`least_sensitive`]).
//!
//! [`LsaImportance`] makes LSA a pruning criterion (channel scores from precomputed Jacobians
//! of the activations every group's consumers read). [`run_study`] is the paper's experiment:
//! features cached once from a frozen backbone ([`cache_features`]), the least sensitive
//! fraction `r` removed, a new head (linear or one hidden dense layer) retrained on the kept
//! features ([`train_head`]) and evaluated, over a grid of `p`, `r` and seeds, with magnitude
//! and random feature selection as baselines.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use shears_data::{Dataset, Loader, LoaderConfig};
use shears_engine::{BackwardOptions, ForwardRequest, Mode, Network};
use shears_ir::{Graph, NodeId, Op, Tensor};

use crate::eval::{batch_tensor, input_transforms, normalize_for};
use crate::progress::{Progress, Verbosity};
use crate::prune::depgraph::{Group, Role};
use crate::prune::importance::{Importance, ScoreContext};
use crate::prune::PruneError;
use crate::zoo::Preprocess;
use crate::Error;

/// The `p` of a p-norm aggregation over samples: any real `p >= 1`, or infinity (the maximum).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PNorm(f64);

impl PNorm {
    /// `p = inf`: the maximum over samples.
    pub const INF: PNorm = PNorm(f64::INFINITY);

    /// A p-norm; an error unless `p` is a number in `[1, inf]`.
    pub fn new(p: f64) -> Result<Self, Error> {
        if p.is_nan() || p < 1.0 {
            return Err(Error::invalid(format!(
                "p-norm p = {p} is not in [1, inf] (use a number >= 1 or inf)"
            )));
        }
        Ok(PNorm(p))
    }

    /// The value of `p` (`f64::INFINITY` for the maximum).
    pub fn value(self) -> f64 {
        self.0
    }

    /// Whether this is `p = inf`.
    pub fn is_inf(self) -> bool {
        self.0.is_infinite()
    }

    /// The power mean `((1/N) sum |v|^p)^(1/p)` of the absolute values, or their maximum for
    /// `p = inf`; 0 for no values. Computed relative to the largest value, so large `p` does
    /// not overflow.
    pub fn power_mean(self, values: impl IntoIterator<Item = f64>) -> f64 {
        let abs: Vec<f64> = values.into_iter().map(f64::abs).collect();
        let m = abs.iter().fold(0.0f64, |a, &b| a.max(b));
        if abs.is_empty() || m == 0.0 {
            return 0.0;
        }
        if self.is_inf() {
            return m;
        }
        let n = abs.len() as f64;
        if self.0 == 1.0 {
            return abs.iter().sum::<f64>() / n;
        }
        let s: f64 = abs.iter().map(|&v| (v / m).powf(self.0)).sum::<f64>() / n;
        m * s.powf(1.0 / self.0)
    }

    /// The norm `(sum |v|^p)^(1/p)` (not divided by the count), or the maximum for `p = inf`.
    pub fn norm(self, values: impl IntoIterator<Item = f64>) -> f64 {
        let abs: Vec<f64> = values.into_iter().map(f64::abs).collect();
        let n = abs.len() as f64;
        if self.is_inf() {
            return self.power_mean(abs);
        }
        self.power_mean(abs) * n.powf(1.0 / self.0)
    }
}

impl fmt::Display for PNorm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_inf() {
            f.write_str("inf")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl FromStr for PNorm {
    type Err = Error;

    /// A number `>= 1`, or `inf` / `infinity` / `max`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let t = s.trim().to_ascii_lowercase();
        if matches!(t.as_str(), "inf" | "infinity" | "max" | "∞") {
            return Ok(PNorm::INF);
        }
        let p: f64 = t.parse().map_err(|_| {
            Error::invalid(format!(
                "p-norm {s:?} is not a number >= 1 or inf (e.g. 1, 2, 3.5, inf)"
            ))
        })?;
        if p.is_infinite() {
            return Ok(PNorm::INF);
        }
        PNorm::new(p)
    }
}

impl Serialize for PNorm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Which outputs the sensitivities are taken of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outputs {
    /// Softmax probabilities (default). The sensitivities of one feature sum to 0 over the
    /// outputs, since the probabilities sum to 1.
    #[default]
    Softmax,
    /// The logits (the graph's output).
    Logits,
}

impl FromStr for Outputs {
    type Err = Error;

    /// `softmax` or `logits`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "softmax" | "probabilities" | "probs" => Ok(Outputs::Softmax),
            "logits" => Ok(Outputs::Logits),
            _ => Err(Error::invalid(format!(
                "unknown LSA outputs {s:?} (valid: softmax, logits)"
            ))),
        }
    }
}

/// How the per-output aggregated sensitivities `A[k][i]` become one score per feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputAgg {
    /// `max_k A[k][i]` (Zurada's convention; default).
    #[default]
    Max,
    /// `sum_k A[k][i]`.
    Sum,
    /// The same p-norm over outputs: `(sum_k A[k][i]^p)^(1/p)` (the maximum for `p = inf`).
    PNorm,
}

impl FromStr for OutputAgg {
    type Err = Error;

    /// `max`, `sum` or `pnorm`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "max" => Ok(OutputAgg::Max),
            "sum" => Ok(OutputAgg::Sum),
            "pnorm" | "p_norm" | "p" => Ok(OutputAgg::PNorm),
            _ => Err(Error::invalid(format!(
                "unknown output aggregation {s:?} (valid: max, sum, pnorm)"
            ))),
        }
    }
}

/// How the positions of a feature-map activation `[C, H, W]` become features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Spatial {
    /// One feature per channel: `sum_hw dy/da[c,h,w]`, the sensitivity to a uniform shift of
    /// the channel (default).
    #[default]
    Sum,
    /// One feature per element, in PyTorch's C, H, W order (as `Flatten` produces).
    Elements,
}

/// Per-sample sensitivities `S[n][k][i]` of `k` outputs to `d` features at `n` samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Jacobian {
    /// Samples.
    pub n: usize,
    /// Outputs.
    pub k: usize,
    /// Features.
    pub d: usize,
    /// `S[n][k][i]` at `(n * k + k) * d + i`.
    pub data: Vec<f64>,
}

impl Jacobian {
    /// A Jacobian from its values; an error when `data` does not hold `n * k * d` values.
    pub fn new(n: usize, k: usize, d: usize, data: Vec<f64>) -> Result<Self, Error> {
        if n.checked_mul(k).and_then(|v| v.checked_mul(d)) != Some(data.len()) {
            return Err(Error::invalid(format!(
                "Jacobian of {n} samples x {k} outputs x {d} features needs {} values, got {}",
                n.saturating_mul(k).saturating_mul(d),
                data.len()
            )));
        }
        Ok(Jacobian { n, k, d, data })
    }

    /// `S[n][k][i]`.
    pub fn get(&self, n: usize, k: usize, i: usize) -> f64 {
        self.data[(n * self.k + k) * self.d + i]
    }

    /// `A[k][i]`: the power mean over samples of `|S[n][k][i]|` (`k * d` values, row-major).
    pub fn per_output(&self, p: PNorm) -> Vec<f64> {
        let mut out = vec![0.0; self.k * self.d];
        for k in 0..self.k {
            for i in 0..self.d {
                out[k * self.d + i] = p.power_mean((0..self.n).map(|n| self.get(n, k, i)));
            }
        }
        out
    }

    /// One score per feature: [`Jacobian::per_output`] aggregated over outputs by `agg`.
    pub fn scores(&self, p: PNorm, agg: OutputAgg) -> Vec<f64> {
        let a = self.per_output(p);
        (0..self.d)
            .map(|i| {
                let col = (0..self.k).map(|k| a[k * self.d + i]);
                match agg {
                    OutputAgg::Max => col.fold(0.0f64, f64::max),
                    OutputAgg::Sum => col.sum(),
                    OutputAgg::PNorm => p.norm(col),
                }
            })
            .collect()
    }

    /// The largest absolute difference to another Jacobian of the same size (infinity when
    /// the sizes differ).
    pub fn max_abs_diff(&self, other: &Jacobian) -> f64 {
        if (self.n, self.k, self.d) != (other.n, other.k, other.d) {
            return f64::INFINITY;
        }
        self.data
            .iter()
            .zip(&other.data)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
    }

    /// The Jacobian restricted to the features `keep` (in that order).
    pub fn select(&self, keep: &[usize]) -> Jacobian {
        let mut data = Vec::with_capacity(self.n * self.k * keep.len());
        for row in self.data.chunks(self.d.max(1)) {
            data.extend(keep.iter().map(|&i| row[i]));
        }
        Jacobian {
            n: self.n,
            k: self.k,
            d: keep.len(),
            data,
        }
    }
}

/// Softmax of one row, in f64.
fn softmax64(row: &[f64]) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = row.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// The closed-form Jacobian of a linear head `y = softmax(W z + b)` (or of its logits, which
/// is `W` at every sample) at the samples `z` (`[N, d]`), in f64.
/// `w` is `[K, d]` (PyTorch layout), `b` is `[K]` or absent.
pub fn linear_head_jacobian(
    w: &Tensor,
    b: Option<&Tensor>,
    z: &Tensor,
    outputs: Outputs,
) -> Result<Jacobian, Error> {
    let &[k, d] = w.shape() else {
        return Err(Error::invalid(format!(
            "linear head weight has shape {:?}, expected [outputs, features]",
            w.shape()
        )));
    };
    if let Some(b) = b {
        if b.shape() != [k] {
            return Err(Error::invalid(format!(
                "linear head bias has shape {:?}, expected [{k}]",
                b.shape()
            )));
        }
    }
    let n = match z.shape() {
        [n, dd] if *dd == d => *n,
        s => {
            return Err(Error::invalid(format!(
                "features have shape {s:?}, expected [samples, {d}]"
            )))
        }
    };
    let wd: Vec<f64> = w.data().iter().map(|&v| f64::from(v)).collect();
    let mut data = Vec::with_capacity(n * k * d);
    for zs in z.data().chunks(d.max(1)).take(n) {
        match outputs {
            Outputs::Logits => data.extend_from_slice(&wd),
            Outputs::Softmax => {
                let logits: Vec<f64> = (0..k)
                    .map(|kk| {
                        let dot: f64 = wd[kk * d..(kk + 1) * d]
                            .iter()
                            .zip(zs)
                            .map(|(&a, &x)| a * f64::from(x))
                            .sum();
                        dot + b.map_or(0.0, |b| f64::from(b.data()[kk]))
                    })
                    .collect();
                let y = softmax64(&logits);
                let mean_w: Vec<f64> = (0..d)
                    .map(|i| (0..k).map(|j| y[j] * wd[j * d + i]).sum())
                    .collect();
                for kk in 0..k {
                    for i in 0..d {
                        data.push(y[kk] * (wd[kk * d + i] - mean_w[i]));
                    }
                }
            }
        }
    }
    Jacobian::new(n, k, d, data)
}

/// The classifier input of a graph: the input of its first dense (`Linear`) layer, i.e. the
/// flatten or global-pool output. An error when the graph has no dense layer.
pub fn classifier_input(graph: &Graph) -> Result<NodeId, Error> {
    graph
        .ids()
        .find(|&id| matches!(graph.node(id).op, Op::Linear(_)))
        .map(|id| graph.node(id).inputs[0])
        .ok_or_else(|| {
            Error::invalid(
                "the graph has no dense (linear) layer, so it has no classifier input; \
                 name the LSA target node instead",
            )
        })
}

/// Finds a node by name, or an error listing what went wrong.
pub fn find_node(graph: &Graph, name: &str) -> Result<NodeId, Error> {
    graph
        .find(name)
        .ok_or_else(|| Error::invalid(format!("the graph has no node named {name:?}")))
}

/// The number of features of `target` under `spatial`.
fn n_features(graph: &Graph, target: NodeId, spatial: Spatial) -> usize {
    let s = graph.shape(target);
    match (s.len(), spatial) {
        (3, Spatial::Sum) => s[0],
        _ => s.iter().product(),
    }
}

/// Per-sample sensitivities of the graph's (first) output to the activations `targets`, by
/// autodiff, for a batch of values fed to `feed` (NCHW, `[N, ...]`): the graph input (images)
/// or any inner node (e.g. cached features, so only the head runs).
///
/// Every sample is repeated `K` times and copy `k` is seeded with the gradient of output `k`
/// (for softmax, `y_k (e_k - y)` at the logits), so one recorded forward and one backward pass
/// give the Jacobian of `max(1, batch / K)` samples. Runs in [`Mode::Eval`]. Feature-map targets
/// are reduced per `spatial`.
pub fn jacobian(
    net: &mut Network,
    feed: NodeId,
    values: &Tensor,
    targets: &[NodeId],
    outputs: Outputs,
    spatial: Spatial,
    batch: usize,
) -> Result<Vec<Jacobian>, Error> {
    let graph = net.graph().clone();
    let out = graph.outputs()[0];
    let k: usize = graph.shape(out).iter().product();
    if graph.shape(out).len() != 1 || k == 0 {
        return Err(Error::invalid(format!(
            "LSA needs a vector output, but output {} has shape {:?}",
            graph.node(out).name,
            graph.shape(out)
        )));
    }
    let per: Vec<usize> = graph.shape(feed).to_vec();
    let per_len: usize = per.iter().product();
    let n = match values.shape().split_first() {
        Some((&n, rest)) if rest == per.as_slice() => n,
        _ => {
            return Err(Error::invalid(format!(
                "values fed to {} have shape {:?}, expected [N, {}]",
                graph.node(feed).name,
                values.shape(),
                per.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    let dims: Vec<usize> = targets
        .iter()
        .map(|&t| n_features(&graph, t, spatial))
        .collect();
    let mut data: Vec<Vec<f64>> = dims
        .iter()
        .map(|&d| Vec::with_capacity(n * k * d))
        .collect();
    let chunk = (batch / k).max(1);
    let mut start = 0;
    while start < n {
        let m = chunk.min(n - start);
        let mut rep = Vec::with_capacity(m * k * per_len);
        for s in start..start + m {
            let row = &values.data()[s * per_len..(s + 1) * per_len];
            for _ in 0..k {
                rep.extend_from_slice(row);
            }
        }
        let mut shape = vec![m * k];
        shape.extend_from_slice(&per);
        let x = Tensor::new(shape, rep).expect("m*k rows of the fed shape");
        let fwd = net.run(
            &ForwardRequest::new(Mode::Eval)
                .with_feed(feed, &x)
                .with_capture(targets)
                .recording(),
        )?;
        let logits = &fwd.outputs[0];
        let mut seed = vec![0.0f32; m * k * k];
        for r in 0..m * k {
            let kk = r % k;
            let row = &logits.data()[r * k..(r + 1) * k];
            let dst = &mut seed[r * k..(r + 1) * k];
            match outputs {
                Outputs::Logits => dst[kk] = 1.0,
                Outputs::Softmax => {
                    let y = softmax64(&row.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
                    for j in 0..k {
                        let delta = if j == kk { 1.0 } else { 0.0 };
                        dst[j] = (y[kk] * (delta - y[j])) as f32;
                    }
                }
            }
        }
        let seed = Tensor::new(vec![m * k, k], seed).expect("m*k rows of k outputs");
        let grads = net.backward_from(
            &[(out, &seed)],
            &BackwardOptions::new()
                .without_param_grads()
                .with_activations(targets),
        )?;
        for (ti, &t) in targets.iter().enumerate() {
            let g = grads.activations.get(&t).ok_or_else(|| {
                Error::invalid(format!(
                    "no gradient reached {} (is it upstream of the output?)",
                    graph.node(t).name
                ))
            })?;
            let s = graph.shape(t);
            let len: usize = s.iter().product();
            for row in g.data().chunks(len.max(1)) {
                if s.len() == 3 && spatial == Spatial::Sum {
                    let hw = s[1] * s[2];
                    data[ti].extend(
                        row.chunks(hw.max(1))
                            .map(|c| c.iter().map(|&v| f64::from(v)).sum::<f64>()),
                    );
                } else {
                    data[ti].extend(row.iter().map(|&v| f64::from(v)));
                }
            }
        }
        start += m;
    }
    targets
        .iter()
        .zip(data)
        .zip(dims)
        .map(|((_, d), dim)| Jacobian::new(n, k, dim, d))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// LSA as a pruning criterion.

/// LSA as a channel-importance criterion: the score of a group's channel is the LSA score of
/// the activation slices its consumers read (each conv consumer's input channels, spatially
/// summed; a dense consumer's input features, summed over the features a channel expands to
/// after `Flatten`), aggregated over samples with `p` and over outputs with `agg`, then
/// averaged over the consumers. Channels nothing reads score 0.
///
/// Build it with [`LsaImportance::compute`], which runs the engine on data once.
#[derive(Clone, Debug)]
pub struct LsaImportance {
    /// The p-norm over samples.
    pub p: PNorm,
    /// The aggregation over outputs.
    pub agg: OutputAgg,
    /// Per-sample sensitivities of each activation read by a conv or dense layer, keyed by
    /// the activation's node name (channels of feature maps spatially summed).
    pub jacobians: HashMap<String, Jacobian>,
    name: String,
}

impl LsaImportance {
    /// Runs the network on `images` (NCHW, already preprocessed) and keeps the sensitivities of
    /// every activation that a conv or dense layer reads. `batch` bounds the rows of one pass
    /// (each image is repeated once per output).
    pub fn compute(
        net: &mut Network,
        images: &Tensor,
        p: PNorm,
        agg: OutputAgg,
        outputs: Outputs,
        batch: usize,
    ) -> Result<Self, Error> {
        let graph = net.graph().clone();
        let input = graph.inputs()[0];
        let mut targets: Vec<NodeId> = Vec::new();
        for id in graph.ids() {
            let node = graph.node(id);
            if matches!(node.op, Op::Conv2d(_) | Op::Linear(_)) {
                let src = node.inputs[0];
                if src != input && !targets.contains(&src) {
                    targets.push(src);
                }
            }
        }
        let jac = jacobian(net, input, images, &targets, outputs, Spatial::Sum, batch)?;
        let jacobians = targets
            .iter()
            .zip(jac)
            .map(|(&t, j)| (graph.node(t).name.clone(), j))
            .collect();
        Ok(LsaImportance {
            p,
            agg,
            jacobians,
            name: format!("lsa_p{p}"),
        })
    }

    /// [`LsaImportance::compute`] on `n_images` class-balanced images of `ds` (seeded by
    /// `seed`), preprocessed and adapted to the model input as for evaluation; softmax
    /// outputs, batches of 256 rows. This is what `shears prune --criterion lsa` needs.
    pub fn on_dataset(
        net: &mut Network,
        ds: &Dataset,
        pre: &Preprocess,
        n_images: usize,
        p: PNorm,
        agg: OutputAgg,
        seed: u64,
    ) -> Result<Self, Error> {
        if n_images == 0 || ds.is_empty() {
            return Err(Error::invalid(format!(
                "LSA needs at least one image ({n_images} requested of {} in {})",
                ds.len(),
                ds.name
            )));
        }
        let sub = ds.class_balanced_subset(n_images.min(ds.len()), seed);
        let shape = net.graph().shape(net.graph().inputs()[0]).to_vec();
        let cfg = LoaderConfig::new(sub.len())
            .with_normalize(normalize_for(pre, shape[0]))
            .with_transforms(input_transforms(&sub, &shape)?);
        let batch = Loader::new(&sub, cfg)?
            .next()
            .expect("a non-empty dataset gives one batch");
        let x = batch_tensor(&batch);
        Self::compute(net, &x, p, agg, Outputs::Softmax, 256)
    }
}

impl Importance for LsaImportance {
    fn name(&self) -> &str {
        &self.name
    }

    fn score(&self, ctx: &ScoreContext, group: &Group) -> crate::prune::Result<Vec<f32>> {
        let mut sum = vec![0.0f64; group.size];
        let mut count = vec![0u32; group.size];
        let mut any = false;
        for m in group.members_with(Role::InChannels) {
            let src = ctx.graph.node(m.node).inputs[0];
            let src_name = &ctx.graph.node(src).name;
            let Some(j) = self.jacobians.get(src_name) else {
                return Err(PruneError::Unscorable {
                    criterion: self.name.clone(),
                    group: group.id,
                    root: ctx.graph.node(group.root).name.clone(),
                    why: format!("no LSA sensitivities for activation {src_name}"),
                });
            };
            any = true;
            for (r, idxs) in m.idxs.iter().enumerate() {
                if idxs.is_empty() {
                    continue;
                }
                if let Some(&bad) = idxs.iter().find(|&&i| i >= j.d) {
                    return Err(PruneError::Unscorable {
                        criterion: self.name.clone(),
                        group: group.id,
                        root: ctx.graph.node(group.root).name.clone(),
                        why: format!(
                            "feature {bad} of {src_name} is outside its {} LSA features",
                            j.d
                        ),
                    });
                }
                let per_k: Vec<f64> = (0..j.k)
                    .map(|k| {
                        self.p.power_mean(
                            (0..j.n).map(|n| idxs.iter().map(|&i| j.get(n, k, i)).sum::<f64>()),
                        )
                    })
                    .collect();
                let s = match self.agg {
                    OutputAgg::Max => per_k.iter().copied().fold(0.0, f64::max),
                    OutputAgg::Sum => per_k.iter().sum(),
                    OutputAgg::PNorm => self.p.norm(per_k),
                };
                sum[r] += s;
                count[r] += 1;
            }
        }
        if !any {
            return Err(PruneError::Unscorable {
                criterion: self.name.clone(),
                group: group.id,
                root: ctx.graph.node(group.root).name.clone(),
                why: "no conv or dense layer reads the group's channels".into(),
            });
        }
        Ok(sum
            .iter()
            .zip(&count)
            .map(|(&s, &c)| {
                if c == 0 {
                    0.0
                } else {
                    (s / f64::from(c)) as f32
                }
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Ranking.

/// Feature indices in ascending order of score (least sensitive first); ties keep index order.
/// Non-finite scores rank last.
pub fn ascending(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let key = |i: usize| {
        let v = scores[i];
        if v.is_finite() {
            v
        } else {
            f64::INFINITY
        }
    };
    idx.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
    idx
}

/// The `floor(r * d)` least sensitive features (ascending score), for a reduction level `r`
/// in `[0, 1)`. An error for `r` outside that range.
pub fn least_sensitive(scores: &[f64], r: f64) -> Result<Vec<usize>, Error> {
    if !(0.0..1.0).contains(&r) {
        return Err(Error::invalid(format!(
            "reduction level r = {r} is not in [0, 1)"
        )));
    }
    let n = (r * scores.len() as f64 + 1e-9).floor() as usize;
    Ok(ascending(scores).into_iter().take(n).collect())
}

/// The features kept after removing `removed` from `d`, in increasing index order.
pub fn kept(d: usize, removed: &[usize]) -> Vec<usize> {
    let mut gone = vec![false; d];
    for &i in removed {
        if i < d {
            gone[i] = true;
        }
    }
    (0..d).filter(|&i| !gone[i]).collect()
}

// ---------------------------------------------------------------------------------------------
// Cached features and heads.

/// Features of a set of samples, `n x d` row-major, with their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// Samples.
    pub n: usize,
    /// Features per sample.
    pub d: usize,
    /// `n * d` values.
    pub data: Vec<f32>,
    /// Class of each sample.
    pub labels: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
}

impl Features {
    /// Features from values; an error when the sizes or labels disagree.
    pub fn new(
        n: usize,
        d: usize,
        data: Vec<f32>,
        labels: Vec<usize>,
        classes: usize,
    ) -> Result<Self, Error> {
        if n.checked_mul(d) != Some(data.len()) || labels.len() != n {
            return Err(Error::invalid(format!(
                "features: {} values and {} labels for {n} samples of {d} features",
                data.len(),
                labels.len()
            )));
        }
        if let Some(&l) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::invalid(format!(
                "features: label {l} is not below the class count {classes}"
            )));
        }
        Ok(Features {
            n,
            d,
            data,
            labels,
            classes,
        })
    }

    /// The samples `rows` restricted to the features `cols`, as an `[rows, cols]` tensor.
    pub fn tensor(&self, rows: &[usize], cols: &[usize]) -> Tensor {
        let mut v = Vec::with_capacity(rows.len() * cols.len());
        for &r in rows {
            let row = &self.data[r * self.d..(r + 1) * self.d];
            v.extend(cols.iter().map(|&c| row[c]));
        }
        Tensor::new(vec![rows.len(), cols.len()], v).expect("rows x cols values")
    }

    /// The first `n` samples after a class-interleaved ordering (sample `j` of every class
    /// before sample `j + 1` of any), so a prefix is close to class-balanced.
    pub fn balanced_prefix(&self, n: usize) -> Vec<usize> {
        let mut per: Vec<Vec<usize>> = vec![Vec::new(); self.classes.max(1)];
        for (i, &l) in self.labels.iter().enumerate() {
            per[l].push(i);
        }
        let mut out = Vec::with_capacity(n.min(self.n));
        let mut j = 0;
        while out.len() < n.min(self.n) {
            for c in &per {
                if let Some(&i) = c.get(j) {
                    if out.len() < n {
                        out.push(i);
                    }
                }
            }
            j += 1;
        }
        out
    }
}

/// Runs the frozen backbone once over `ds` (eval mode, the model's preprocessing, grey-to-RGB
/// and padding as the input needs) and keeps the activation of `target` for every image,
/// flattened in C, H, W order.
pub fn cache_features(
    net: &mut Network,
    ds: &Dataset,
    pre: &Preprocess,
    target: NodeId,
    batch: usize,
    verbosity: Verbosity,
) -> Result<Features, Error> {
    if batch == 0 {
        return Err(Error::invalid("batch size must be at least 1"));
    }
    let graph = net.graph();
    let input = graph.inputs()[0];
    let shape = graph.shape(input).to_vec();
    let d: usize = graph.shape(target).iter().product();
    let transforms = input_transforms(ds, &shape)?;
    let cfg = LoaderConfig::new(batch)
        .with_normalize(normalize_for(pre, shape[0]))
        .with_transforms(transforms);
    let loader = Loader::new(ds, cfg)?;
    let bar = Progress::new(ds.len() as u64, "features", verbosity);
    let mut data = Vec::with_capacity(ds.len() * d);
    let mut labels = Vec::with_capacity(ds.len());
    for b in loader {
        let x = batch_tensor(&b);
        let out = net.run(
            &ForwardRequest::new(Mode::Eval)
                .with_feed(input, &x)
                .with_capture(&[target]),
        )?;
        data.extend_from_slice(out.captured[&target].data());
        labels.extend(b.labels.iter().map(|&l| l as usize));
        bar.inc(b.n as u64);
    }
    bar.finish(&format!(
        "features: {} images -> {} features each at {}",
        ds.len(),
        d,
        net.graph().node(target).name
    ));
    Features::new(labels.len(), d, data, labels, ds.n_classes())
}

pub(crate) use super::lsa_head::permutation;
pub use super::lsa_head::{head_graph, init_head, train_head, Head, HeadConfig};
pub use super::lsa_study::{
    curve, finish_study, run_study, selections, study_assignment, study_csv, Selection,
    SelectionSummary, StudyConfig, StudyParts, StudyResult, StudyRow,
};
