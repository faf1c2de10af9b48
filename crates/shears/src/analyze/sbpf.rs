//! SBPF: damage-based layer sensitiveness and inverse-sensitiveness ratio allocation
//! (methods §2.3, interpretation \[I\]).
//!
//! 1. **Damage probe** ([`damage`]): for each prunable group (a layer of a chain network; a
//!    residual block's inner layer or a coupled trunk in a ResNet), a damaged copy of the model
//!    in which only that group is damaged:
//!    - [`Damage::DropRandom`] (default): zero a seeded random `floor(delta * n)` of the group's
//!      channels: every producer filter and bias, and the `gamma` and `beta` of every batch norm
//!      of the channel, so the channel is exactly 0 downstream;
//!    - [`Damage::GaussNoise`]: add `N(0, (delta * std(W))^2)` noise to every producer weight
//!      `W` of the group (per tensor std);
//!    - [`Damage::DropL1`]: zero the `floor(delta * n)` channels of lowest L1 norm (Li et al.'s
//!      scan), as `DropRandom` zeroes them.
//! 2. **Sensitiveness** ([`analyze`]): `s = A0 - mean A(delta)`, the top-1 accuracy drop (as a
//!    fraction), averaged over `seeds` damage seeds and over the damage levels `deltas` (several
//!    levels give the area under the drop curve). Probes run from cached prefix activations
//!    ([`super::sweep::Prober`]).
//! 3. **Allocation** ([`allocate_inverse`]): `r = min(r_max, c / max(s, eps))`, with `c` found
//!    by bisection so that the removed filters (`sum floor(r * n)`) or the removed MACs meet a
//!    [`Budget`]. Larger `s` never gets a larger `r`; the ratios file is the
//!    `shears prune --ratios-from` format, `{group root: ratio}`.
//! 4. **Multi-step** ([`multi_step`]): `T` steps, each re-analysing the current (already pruned)
//!    model, allocating a per-step share of the budget, pruning physically with a criterion,
//!    recalibrating batch norms, and calling an optional fine-tuning hook.
//! 5. **Rank stability** ([`spearman`]): Spearman's rho between two sensitiveness vectors.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use shears_data::{Dataset, Split};
use shears_engine::Network;
use shears_ir::{Graph, Op, ParamKind, Tensor, Weights};

pub use super::sbpf_probes::{probe, ProbeGroup, SbpfProbe, SbpfProbes};
use super::shard::Shard;
use super::sweep::{macs_with_ratios, ratio_count, ratio_for_count, EvalSet, ProbeStats, Prober};
use crate::progress::Verbosity;
use crate::prune::{
    self, AllocConfig, Criterion, DepGraph, Group, Reduction, Role, ScoreContext, Strategy,
};
use crate::recover::bn::{bn_recalibrate_with, BnRecalConfig};
use crate::recover::kept_channels;
use crate::zoo::Preprocess;
use crate::Error;

/// How a group is damaged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Damage {
    /// Zero a seeded random fraction `delta` of the channels (filters, biases, BN gamma/beta).
    #[default]
    DropRandom,
    /// Add Gaussian noise of standard deviation `delta * std(W)` to the producer weights.
    GaussNoise,
    /// Zero the fraction `delta` of channels with the lowest L1 norm.
    DropL1,
}

impl Damage {
    /// `drop-random`, `gauss-noise` or `drop-l1`.
    pub fn name(self) -> &'static str {
        match self {
            Damage::DropRandom => "drop-random",
            Damage::GaussNoise => "gauss-noise",
            Damage::DropL1 => "drop-l1",
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Damage {
    type Err = Error;

    /// `drop-random`, `gauss-noise` or `drop-l1` (`_` accepted for `-`, any case).
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "drop-random" | "random" => Ok(Damage::DropRandom),
            "gauss-noise" | "gauss" | "noise" => Ok(Damage::GaussNoise),
            "drop-l1" | "l1" => Ok(Damage::DropL1),
            _ => Err(Error::invalid(format!(
                "unknown damage {s:?} (valid: drop-random, gauss-noise, drop-l1)"
            ))),
        }
    }
}

/// A seeded generator for one (group, level, repetition).
fn rng_for(seed: u64, group: usize, level: usize, rep: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (i, v) in [seed, group as u64, level as u64, rep as u64]
        .into_iter()
        .enumerate()
    {
        key[i * 8..(i + 1) * 8].copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Standard normal by Box-Muller.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = uniform(rng).max(f64::MIN_POSITIVE);
    let u2 = uniform(rng);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn check_delta(delta: f32) -> Result<(), Error> {
    if !(delta.is_finite() && delta >= 0.0) {
        return Err(Error::invalid(format!(
            "damage level delta {delta} must be a non-negative number"
        )));
    }
    Ok(())
}

/// The damaged tensors (only those that change) of group `g` at level `delta` with
/// `seed` (see the module docs). `delta` is a fraction in `[0, 1]` for the drop operators
/// and a noise scale `>= 0` for [`Damage::GaussNoise`].
pub fn damage(
    graph: &Graph,
    weights: &Weights,
    g: &Group,
    op: Damage,
    delta: f32,
    seed: u64,
) -> Result<Weights, Error> {
    damage_rep(graph, weights, g, op, delta, seed, 0, 0)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn damage_rep(
    graph: &Graph,
    weights: &Weights,
    g: &Group,
    op: Damage,
    delta: f32,
    seed: u64,
    level: usize,
    rep: usize,
) -> Result<Weights, Error> {
    check_delta(delta)?;
    let mut out = Weights::new();
    let get = |node: shears_ir::NodeId, kind: ParamKind| -> Option<(String, Tensor)> {
        let name = graph.node(node).param_name(kind);
        weights.get(&name).map(|t| (name, t.clone()))
    };
    let mut rng = rng_for(seed, g.id, level, rep);
    match op {
        Damage::GaussNoise => {
            for m in &g.members {
                if !matches!(m.role, Role::OutChannels | Role::Depthwise) {
                    continue;
                }
                let Some((name, mut t)) = get(m.node, ParamKind::Weight) else {
                    continue;
                };
                let d = t.data();
                let n = d.len().max(1) as f64;
                let mean = d.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = d
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                let sd = f64::from(delta) * var.sqrt();
                if sd == 0.0 {
                    continue;
                }
                for v in t.data_mut() {
                    *v = (f64::from(*v) + sd * normal(&mut rng)) as f32;
                }
                out.insert(name, t);
            }
        }
        Damage::DropRandom | Damage::DropL1 => {
            if delta > 1.0 {
                return Err(Error::invalid(format!(
                    "damage level delta {delta} of {op} must be in [0, 1] (the fraction of \
                     channels zeroed)"
                )));
            }
            let k = ratio_count(delta, g.size);
            if k == 0 {
                return Ok(out);
            }
            let chosen: Vec<usize> = if op == Damage::DropRandom {
                // Partial Fisher-Yates.
                let mut idx: Vec<usize> = (0..g.size).collect();
                for i in 0..k {
                    let j = i + (rng.next_u64() % (g.size - i) as u64) as usize;
                    idx.swap(i, j);
                }
                idx.truncate(k);
                idx
            } else {
                let l1 = Criterion::L1.build(Reduction::Mean, 0);
                let scores = l1.score(&ScoreContext::new(graph, weights), g)?;
                let mut order: Vec<usize> = (0..g.size).collect();
                order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
                order.truncate(k);
                order
            };
            let mut zero = |node, kind, idxs: &[usize]| {
                let name = graph.node(node).param_name(kind);
                let t = match out.get_mut(&name) {
                    Some(t) => t,
                    None => {
                        let Some(t) = weights.get(&name) else { return };
                        out.insert(name.clone(), t.clone());
                        out.get_mut(&name).expect("just inserted")
                    }
                };
                let row: usize = t.shape()[1..].iter().product();
                for &o in idxs {
                    t.data_mut()[o * row..(o + 1) * row].fill(0.0);
                }
            };
            for m in &g.members {
                let idxs: Vec<usize> = chosen.iter().flat_map(|&r| m.idxs[r].clone()).collect();
                match m.role {
                    Role::OutChannels | Role::Depthwise | Role::BnChannels => {
                        zero(m.node, ParamKind::Weight, &idxs);
                        zero(m.node, ParamKind::Bias, &idxs);
                    }
                    Role::InChannels | Role::ShortcutPad | Role::Operand | Role::SliceInput => {}
                }
            }
        }
    }
    Ok(out)
}

/// Settings of [`analyze`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SbpfConfig {
    /// The damage operator.
    pub damage: Damage,
    /// Damage levels; `s` is averaged over them. Default `[0.5]`.
    pub deltas: Vec<f32>,
    /// Damage repetitions (seeds) per level; default 3.
    pub seeds: usize,
    /// Base seed.
    pub seed: u64,
    /// Images per forward batch (does not change results).
    #[serde(skip)]
    pub batch: usize,
    /// Run probes from cached prefix activations (does not change results).
    #[serde(skip)]
    pub prefix_cache: bool,
    /// Compute only this shard's probes ([`probe`]); default all.
    #[serde(skip)]
    pub shard: Option<Shard>,
    /// Progress display.
    #[serde(skip)]
    pub verbosity: Verbosity,
}

impl Default for SbpfConfig {
    fn default() -> Self {
        SbpfConfig {
            damage: Damage::DropRandom,
            deltas: vec![0.5],
            seeds: 3,
            seed: 0,
            batch: 250,
            prefix_cache: true,
            shard: None,
            verbosity: Verbosity::Quiet,
        }
    }
}

/// The sensitiveness of one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupSensitivity {
    /// Group id.
    pub group: usize,
    /// Root node name (the key of `--ratios-from`).
    pub root: String,
    /// Channels in the group.
    pub size: usize,
    /// Damaged top-1 accuracy in `[0, 1]` per level and seed (`[level][seed]`).
    pub accuracies: Vec<Vec<f64>>,
    /// Mean damaged accuracy.
    pub damaged_accuracy: f64,
    /// Mean damaged cross-entropy.
    pub damaged_loss: f64,
    /// `s = baseline accuracy - mean damaged accuracy` (a fraction; may be slightly negative).
    pub sensitiveness: f64,
}

/// The result of [`analyze`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SbpfReport {
    /// The settings.
    pub config: SbpfConfig,
    /// Images evaluated per probe.
    pub images: usize,
    /// The split the evaluation set was drawn from (`val` unless asked otherwise).
    #[serde(default)]
    pub split: Option<Split>,
    /// Baseline top-1 accuracy in `[0, 1]`.
    pub baseline_accuracy: f64,
    /// Baseline mean cross-entropy.
    pub baseline_loss: f64,
    /// One entry per prunable group with at least two channels, in group order.
    pub groups: Vec<GroupSensitivity>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Prober counters.
    pub stats: ProbeStats,
}

impl SbpfReport {
    /// `{root: s}`.
    pub fn sensitiveness(&self) -> BTreeMap<String, f64> {
        self.groups
            .iter()
            .map(|g| (g.root.clone(), g.sensitiveness))
            .collect()
    }
}

/// Measures the sensitiveness of every prunable group of `graph` on `data` (module docs):
/// [`probe`] then [`SbpfProbes::report`].
pub fn analyze(
    graph: &Graph,
    weights: &Weights,
    data: &EvalSet,
    cfg: &SbpfConfig,
) -> Result<SbpfReport, Error> {
    let (probes, _) = probe(graph, weights, data, cfg)?;
    probes.report(cfg)
}

/// Checks `cfg` (errors name the value).
pub(super) fn check_config(cfg: &SbpfConfig) -> Result<(), Error> {
    if cfg.deltas.is_empty() {
        return Err(Error::invalid("SBPF needs at least one damage level delta"));
    }
    if cfg.seeds == 0 {
        return Err(Error::invalid("SBPF needs at least one damage seed"));
    }
    for &d in &cfg.deltas {
        check_delta(d)?;
        if d > 1.0 && cfg.damage != Damage::GaussNoise {
            return Err(Error::invalid(format!(
                "damage level delta {d} of {} must be in [0, 1]",
                cfg.damage
            )));
        }
    }
    Ok(())
}

/// What an SBPF allocation must remove.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Budget {
    /// Remove this fraction of the analysed groups' channels (filters), in `[0, 1)`.
    Filters {
        /// Fraction removed.
        ratio: f64,
    },
    /// Keep this fraction of the model's MACs, in `(0, 1]` (0.5 = 2x fewer MACs).
    Macs {
        /// Fraction kept.
        keep_fraction: f64,
    },
}

/// One group's share of an allocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupRatio {
    /// Root node name.
    pub root: String,
    /// Channels in the group.
    pub size: usize,
    /// Sensitiveness used (clamped at `eps`).
    pub sensitiveness: f64,
    /// The continuous ratio `min(r_max, c / s)`.
    pub ratio: f64,
    /// Channels removed: `floor(ratio * size)`, at most `size - 1`.
    pub removed: usize,
}

/// The result of [`allocate_inverse`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SbpfAllocation {
    /// The budget.
    pub budget: Budget,
    /// The cap on any ratio.
    pub r_max: f64,
    /// The constant `c` found by bisection.
    pub c: f64,
    /// Per group, in the order given.
    pub groups: Vec<GroupRatio>,
    /// `{root: ratio}` reproducing `removed` exactly under `shears prune --ratios-from`.
    pub ratios: BTreeMap<String, f32>,
    /// Channels in the analysed groups.
    pub filters_total: usize,
    /// Channels removed.
    pub filters_removed: usize,
    /// Channels the budget asks to remove (filters budget), or 0.
    pub filters_target: f64,
    /// MACs before.
    pub macs_before: u64,
    /// MACs after `shears prune --ratios-from` with [`SbpfAllocation::ratios`].
    pub macs_after: u64,
}

/// Lower clamp of `s` (methods §2.3 `eps_s`).
pub const EPS_S: f64 = 1e-4;

/// Allocates per-group ratios inversely proportional to sensitiveness under `budget`:
/// `r = min(r_max, c / max(s, EPS_S))`, `c` by bisection (see the module docs). With a
/// filters budget, the removed channels match `ratio * total` within one per group; with a
/// MACs budget the MACs kept are at most the target (as close as the channel granularity
/// allows). Errors name an unreachable budget and the best reachable value.
pub fn allocate_inverse(
    graph: &Graph,
    weights: &Weights,
    sens: &[GroupSensitivity],
    budget: Budget,
    r_max: f64,
) -> Result<SbpfAllocation, Error> {
    if !(0.0..=1.0).contains(&r_max) {
        return Err(Error::invalid(format!(
            "r_max {r_max} must be in [0, 1] (the largest fraction of a group removed)"
        )));
    }
    if sens.is_empty() {
        return Err(Error::invalid("no groups to allocate"));
    }
    for g in sens {
        if !g.sensitiveness.is_finite() {
            return Err(Error::invalid(format!(
                "sensitiveness of group {} is {}",
                g.root, g.sensitiveness
            )));
        }
    }
    let dg = DepGraph::build(graph)?;
    for g in sens {
        if !dg
            .find_root(graph, &g.root)
            .any(|x| x.prunable && x.size == g.size)
        {
            return Err(Error::invalid(format!(
                "group {:?} ({} channels) is not a prunable group of this graph",
                g.root, g.size
            )));
        }
    }
    let s: Vec<f64> = sens.iter().map(|g| g.sensitiveness.max(EPS_S)).collect();
    let total: usize = sens.iter().map(|g| g.size).sum();
    let ratio_of = |c: f64, i: usize| (c / s[i]).min(r_max);
    let counts = |c: f64| -> Vec<usize> {
        sens.iter()
            .enumerate()
            .map(|(i, g)| {
                let k = ((ratio_of(c, i) * g.size as f64) + 1e-9).floor() as usize;
                k.min(g.size - 1)
            })
            .collect()
    };
    let file_ratios = |ks: &[usize]| -> BTreeMap<String, f32> {
        sens.iter()
            .zip(ks)
            .filter(|(_, &k)| k > 0)
            .map(|(g, &k)| (g.root.clone(), ratio_for_count(k, g.size)))
            .collect()
    };
    let macs_before = graph.macs();
    // c large enough that every ratio is capped.
    let c_hi = r_max * s.iter().fold(0.0f64, |a, &b| a.max(b)) * 2.0 + 1e-12;
    let (c, filters_target) = match budget {
        Budget::Filters { ratio } => {
            if !(0.0..1.0).contains(&ratio) {
                return Err(Error::invalid(format!(
                    "filters budget {ratio} must be in [0, 1) (the fraction of filters removed)"
                )));
            }
            let want = ratio * total as f64;
            let cont = |c: f64| -> f64 {
                sens.iter()
                    .enumerate()
                    .map(|(i, g)| ratio_of(c, i) * g.size as f64)
                    .sum()
            };
            if cont(c_hi) + 1e-9 < want {
                return Err(Error::invalid(format!(
                    "a filters budget of {ratio} is out of reach with r_max {r_max}: at most \
                     {:.4} of the filters can go",
                    cont(c_hi) / total as f64
                )));
            }
            let (mut lo, mut hi) = (0.0f64, c_hi);
            for _ in 0..200 {
                let mid = 0.5 * (lo + hi);
                if cont(mid) < want {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            (hi, want)
        }
        Budget::Macs { keep_fraction } => {
            if !(keep_fraction > 0.0 && keep_fraction <= 1.0) {
                return Err(Error::invalid(format!(
                    "MACs budget {keep_fraction} must be in (0, 1] (the fraction of MACs kept)"
                )));
            }
            let target = keep_fraction * macs_before as f64;
            let macs = |c: f64| macs_with_ratios(graph, weights, &dg, &file_ratios(&counts(c)));
            let best = macs(c_hi)?;
            if best as f64 > target {
                return Err(Error::invalid(format!(
                    "a MACs budget of {keep_fraction} is out of reach with r_max {r_max}: the \
                     analysed groups can only bring the MACs down to {:.4}",
                    best as f64 / macs_before as f64
                )));
            }
            let (mut lo, mut hi) = (0.0f64, c_hi);
            for _ in 0..100 {
                let mid = 0.5 * (lo + hi);
                if (macs(mid)? as f64) > target {
                    lo = mid;
                } else {
                    hi = mid;
                }
                if hi - lo <= 1e-15 * hi {
                    break;
                }
            }
            (hi, 0.0)
        }
    };
    let ks = counts(c);
    let ratios = file_ratios(&ks);
    let macs_after = macs_with_ratios(graph, weights, &dg, &ratios)?;
    Ok(SbpfAllocation {
        budget,
        r_max,
        c,
        groups: sens
            .iter()
            .enumerate()
            .map(|(i, g)| GroupRatio {
                root: g.root.clone(),
                size: g.size,
                sensitiveness: s[i],
                ratio: ratio_of(c, i),
                removed: ks[i],
            })
            .collect(),
        ratios,
        filters_total: total,
        filters_removed: ks.iter().sum(),
        filters_target,
        macs_before,
        macs_after,
    })
}

/// Spearman's rank correlation of two equally long vectors (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> Result<f64, Error> {
    if a.len() != b.len() || a.len() < 2 {
        return Err(Error::invalid(format!(
            "Spearman's rho needs two vectors of the same length >= 2 (got {} and {})",
            a.len(),
            b.len()
        )));
    }
    let ra = ranks(a);
    let rb = ranks(b);
    let n = a.len() as f64;
    let ma = ra.iter().sum::<f64>() / n;
    let mb = rb.iter().sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    if saa == 0.0 || sbb == 0.0 {
        return Err(Error::invalid(
            "Spearman's rho is undefined when one vector is constant",
        ));
    }
    Ok(sab / (saa * sbb).sqrt())
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rho between two reports' sensitiveness, over the group roots they share.
pub fn rank_stability(a: &SbpfReport, b: &SbpfReport) -> Result<(f64, usize), Error> {
    let bm = b.sensitiveness();
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for g in &a.groups {
        if let Some(&s) = bm.get(&g.root) {
            xa.push(g.sensitiveness);
            xb.push(s);
        }
    }
    Ok((spearman(&xa, &xb)?, xa.len()))
}

/// Settings of [`multi_step`].
#[derive(Clone, Debug)]
pub struct MultiStepConfig {
    /// Number of steps `T >= 1`.
    pub steps: usize,
    /// The total budget, relative to the model given (each step takes the geometric share
    /// `1 - (1 - R)^(1/T)` of the current model's filters, or keeps `F^(1/T)` of its MACs).
    pub budget: Budget,
    /// Cap on any group's ratio in a step.
    pub r_max: f64,
    /// Within-group criterion of the physical pruning.
    pub criterion: Criterion,
    /// Analysis settings.
    pub sbpf: SbpfConfig,
    /// Batch-norm recalibration after each step (on the recalibration dataset), if any.
    pub bn_recal: Option<BnRecalConfig>,
}

/// One step of [`multi_step`].
#[derive(Clone, Debug, Serialize)]
pub struct StepRecord {
    /// Step number, from 1.
    pub step: usize,
    /// The analysis of the model entering the step.
    pub analysis: SbpfReport,
    /// The allocation applied.
    pub allocation: SbpfAllocation,
    /// MACs after the step.
    pub macs: u64,
    /// Top-1 accuracy on the evaluation set right after pruning.
    pub accuracy_pruned: f64,
    /// Top-1 accuracy after BN recalibration (and fine-tuning, if any).
    pub accuracy_recovered: f64,
}

/// The hook called after each step's pruning and recalibration: `(step, graph, weights)`;
/// it may change the weights (fine-tuning).
pub type FinetuneHook<'h> = dyn FnMut(usize, &Graph, &mut Weights) -> Result<(), Error> + 'h;

/// What [`multi_step`] returns.
#[derive(Clone, Debug)]
pub struct MultiStepResult {
    /// The pruned graph after the last step.
    pub graph: Graph,
    /// Its weights (recalibrated and fine-tuned, if asked).
    pub weights: Weights,
    /// One record per step.
    pub steps: Vec<StepRecord>,
    /// The original output channels each pruned conv / linear layer kept, composed over the
    /// steps ([`crate::recover::kept_channels`]'s format; fine-tuning between steps changes
    /// the weights, so they cannot be matched afterwards).
    pub kept_channels: BTreeMap<String, Vec<usize>>,
}

/// Multi-step SBPF (module docs): returns the final graph and weights, one record per step
/// and the kept channels.
pub fn multi_step(
    graph: &Graph,
    weights: &Weights,
    data: &EvalSet,
    recal: Option<(&Dataset, &Preprocess)>,
    cfg: &MultiStepConfig,
    mut finetune: Option<&mut FinetuneHook<'_>>,
) -> Result<MultiStepResult, Error> {
    if cfg.steps == 0 {
        return Err(Error::invalid("multi-step SBPF needs at least one step"));
    }
    let t = cfg.steps as f64;
    let step_budget = match cfg.budget {
        Budget::Filters { ratio } => Budget::Filters {
            ratio: 1.0 - (1.0 - ratio).powf(1.0 / t),
        },
        Budget::Macs { keep_fraction } => Budget::Macs {
            keep_fraction: keep_fraction.powf(1.0 / t),
        },
    };
    let (mut g, mut w) = (graph.clone(), weights.clone());
    let mut records = Vec::with_capacity(cfg.steps);
    let mut kept: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for step in 1..=cfg.steps {
        let analysis = analyze(&g, &w, data, &cfg.sbpf)?;
        let alloc = allocate_inverse(&g, &w, &analysis.groups, step_budget, cfg.r_max)?;
        let crit = cfg.criterion.build(Reduction::Mean, cfg.sbpf.seed);
        let ac = AllocConfig::new(Strategy::PerGroup {
            ratios: alloc.ratios.clone(),
        });
        let plan = prune::plan(&ScoreContext::new(&g, &w), crit.as_ref(), &ac)?;
        let pruned = prune::prune(&g, &w, &plan)?;
        // This step's kept channels index the previous step's: compose.
        let step_kept = kept_channels(&g, &w, &pruned.graph, &pruned.weights);
        for (name, idx) in step_kept {
            let composed = match kept.get(&name) {
                Some(prev) => idx.iter().map(|&i| prev[i]).collect(),
                None => idx,
            };
            kept.insert(name, composed);
        }
        g = pruned.graph;
        w = pruned.weights;
        let mut pr = Prober::new(&g, &w, data, cfg.sbpf.batch, false)?;
        let accuracy_pruned = pr.baseline()?.accuracy();
        if let (Some(bc), Some((ds, pre))) = (&cfg.bn_recal, recal) {
            if has_bn(&g) {
                let mut net = Network::new(g.clone(), &w)?;
                bn_recalibrate_with(&mut net, ds, pre, bc)?;
                w = net.weights();
            }
        }
        if let Some(f) = finetune.as_mut() {
            f(step, &g, &mut w)?;
        }
        let mut pr = Prober::new(&g, &w, data, cfg.sbpf.batch, false)?;
        let accuracy_recovered = pr.baseline()?.accuracy();
        records.push(StepRecord {
            step,
            analysis,
            allocation: alloc,
            macs: g.macs(),
            accuracy_pruned,
            accuracy_recovered,
        });
    }
    Ok(MultiStepResult {
        graph: g,
        weights: w,
        steps: records,
        kept_channels: kept,
    })
}

fn has_bn(g: &Graph) -> bool {
    g.nodes().iter().any(|n| matches!(n.op, Op::BatchNorm2d(_)))
}
