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
//! [`shears_engine::Layout::ChannelsLast`]), which it reads where they lie: no transpose and no copy per probe.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shears_data::Split;
use shears_ir::{Graph, Weights};

pub use super::ratios::{
    macs_with_ratios, max_ratio_for_loss, ratios_for_loss, ratios_for_macs, MacsSelection,
};
use super::shard::{suffix_macs, Assignment, Shard};
use crate::progress::{Progress, Verbosity};
use crate::prune::{
    self, fingerprint, mask_weights_with, AllocConfig, Criterion, DepGraph, FoldMode, Reduction,
    Role, ScoreContext, Strategy,
};
use crate::Error;

pub use super::eval_set::{weights_hash, EvalSet};
pub use super::prober::{ProbeStats, Prober, Score};

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
