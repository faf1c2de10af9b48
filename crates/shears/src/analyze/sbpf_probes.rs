//! SBPF's damage probes as data: every (group, level, repetition) score, exactly, so that the
//! probes of several shards ([`super::shard`]) assemble into the one-machine report.
//!
//! [`probe`] runs the probes a configuration's shard owns (all without one) and returns them
//! with the baseline; [`SbpfProbes::report`] turns a complete set into the [`SbpfReport`],
//! with the same arithmetic in the same order whether the probes came from one run or from
//! many ([`super::merge`]). Scores are kept as counts and the loss's bits, so they survive JSON
//! unchanged.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use shears_data::Split;
use shears_ir::{Graph, Weights};

use super::sbpf::{check_config, damage_rep, Damage, GroupSensitivity, SbpfConfig, SbpfReport};
use super::shard::{suffix_macs, Assignment};
use super::sweep::{group_start, EvalSet, ProbeStats, Prober, Score};
use crate::progress::Progress;
use crate::prune::{DepGraph, Group};
use crate::Error;

/// A [`Score`] that survives JSON exactly (the loss as its bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactScore {
    /// Images evaluated.
    pub images: usize,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Bits of the mean cross-entropy (`f64::to_bits`).
    pub loss_bits: u64,
}

impl From<Score> for ExactScore {
    fn from(s: Score) -> Self {
        ExactScore {
            images: s.images,
            correct: s.correct,
            loss_bits: s.loss.to_bits(),
        }
    }
}

impl From<ExactScore> for Score {
    fn from(s: ExactScore) -> Self {
        Score {
            images: s.images,
            correct: s.correct,
            loss: f64::from_bits(s.loss_bits),
        }
    }
}

/// A group SBPF damages, in probe order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeGroup {
    /// Group id.
    pub group: usize,
    /// Root node name.
    pub root: String,
    /// Channels in the group.
    pub size: usize,
}

/// One damage probe's score.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbpfProbe {
    /// Group id.
    pub group: usize,
    /// Index of the damage level in the configuration's `deltas`.
    pub level: usize,
    /// Repetition (seed) index.
    pub rep: usize,
    /// The damaged model's score.
    pub score: ExactScore,
}

/// The probes of one run (or one shard), with what their report needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SbpfProbes {
    /// Every analysed group (prunable, at least two channels), in probe order.
    pub groups: Vec<ProbeGroup>,
    /// Repetitions per level (1 for [`Damage::DropL1`], else the seeds).
    pub reps: usize,
    /// The probes computed, in probe order.
    pub probes: Vec<SbpfProbe>,
    /// The undamaged model's score.
    pub baseline: ExactScore,
    /// Images per probe.
    pub images: usize,
    /// The split of the evaluation set.
    pub split: Option<Split>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Prober counters.
    pub stats: ProbeStats,
}

/// Repetitions per level of `cfg`.
fn reps_of(cfg: &SbpfConfig) -> usize {
    if cfg.damage == Damage::DropL1 {
        1
    } else {
        cfg.seeds
    }
}

/// Runs the damage probes of `cfg.shard` (every probe without one): the grid is the analysed
/// groups in probe order (by first damaged node) times the levels times the repetitions, each
/// probe costing its group's suffix MACs (see [`super::shard`]). Returns the probes and the
/// assignment.
pub fn probe(
    graph: &Graph,
    weights: &Weights,
    data: &EvalSet,
    cfg: &SbpfConfig,
) -> Result<(SbpfProbes, Assignment), Error> {
    let t0 = Instant::now();
    check_config(cfg)?;
    let dg = DepGraph::build(graph)?;
    let mut groups: Vec<&Group> = dg.prunable().filter(|g| g.size > 1).collect();
    groups.sort_by_key(|g| (group_start(g), g.id));
    let reps = reps_of(cfg);
    let per_group = cfg.deltas.len() * reps;
    let suffix = suffix_macs(graph);
    let costs: Vec<u64> = groups
        .iter()
        .flat_map(|g| std::iter::repeat_n(suffix[group_start(g)], per_group))
        .collect();
    let mine = Assignment::new(&costs, cfg.shard);
    let mut prober = Prober::new(graph, weights, data, cfg.batch, cfg.prefix_cache)?;
    let base = prober.baseline()?;
    let bar = Progress::new(mine.len() as u64, "sbpf", cfg.verbosity);
    let mut probes = Vec::with_capacity(mine.len());
    for (gi, g) in groups.iter().enumerate() {
        for (li, &delta) in cfg.deltas.iter().enumerate() {
            for rep in 0..reps {
                if !mine.owns(gi * per_group + li * reps + rep) {
                    continue;
                }
                let d = damage_rep(graph, weights, g, cfg.damage, delta, cfg.seed, li, rep)?;
                let s = prober.probe(&d)?;
                probes.push(SbpfProbe {
                    group: g.id,
                    level: li,
                    rep,
                    score: s.into(),
                });
                bar.inc(1);
            }
        }
    }
    bar.finish(&format!(
        "sbpf: {} probes of {} groups, {:.1}s",
        probes.len(),
        groups.len(),
        t0.elapsed().as_secs_f64()
    ));
    let out = SbpfProbes {
        groups: groups
            .iter()
            .map(|g| ProbeGroup {
                group: g.id,
                root: graph.node(g.root).name.clone(),
                size: g.size,
            })
            .collect(),
        reps,
        probes,
        baseline: base.into(),
        images: data.len(),
        split: data.split,
        seconds: t0.elapsed().as_secs_f64(),
        stats: prober.stats(),
    };
    Ok((out, mine))
}

impl SbpfProbes {
    /// The report of a complete set of probes: per group the accuracies `[level][rep]`, their
    /// mean, the mean loss and `s = A0 - mean`, in group id order. Errors name a missing probe.
    pub fn report(&self, cfg: &SbpfConfig) -> Result<SbpfReport, Error> {
        let base = Score::from(self.baseline);
        let mut out = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let mut accs = Vec::with_capacity(cfg.deltas.len());
            let mut loss_sum = 0.0;
            for li in 0..cfg.deltas.len() {
                let mut row = Vec::with_capacity(self.reps);
                for rep in 0..self.reps {
                    let p = self
                        .probes
                        .iter()
                        .find(|p| p.group == g.group && p.level == li && p.rep == rep)
                        .ok_or_else(|| {
                            Error::invalid(format!(
                                "SBPF probe of group {} ({}) at level {li}, repetition {rep} \
                                 is missing",
                                g.group, g.root
                            ))
                        })?;
                    let s = Score::from(p.score);
                    row.push(s.accuracy());
                    loss_sum += s.loss;
                }
                accs.push(row);
            }
            let n = (cfg.deltas.len() * self.reps) as f64;
            let mean = accs.iter().flatten().sum::<f64>() / n;
            out.push(GroupSensitivity {
                group: g.group,
                root: g.root.clone(),
                size: g.size,
                accuracies: accs,
                damaged_accuracy: mean,
                damaged_loss: loss_sum / n,
                sensitiveness: base.accuracy() - mean,
            });
        }
        out.sort_by_key(|g| g.group);
        Ok(SbpfReport {
            config: cfg.clone(),
            images: self.images,
            split: self.split,
            baseline_accuracy: base.accuracy(),
            baseline_loss: base.loss,
            groups: out,
            seconds: self.seconds,
            stats: self.stats,
        })
    }
}
