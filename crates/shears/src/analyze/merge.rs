//! Shard files and their merge: what each shard of a sharded analysis writes
//! ([`ShardRecord`], `OUT/shard-IIII-of-NNNN/shard.json`), and how a complete set of them
//! becomes exactly the one-machine result ([`merge_sweep`], [`SbpfProbes`] via [`merge_sbpf`]).
//!
//! A record carries everything that must agree across shards (the analysis, the shard count,
//! the model's graph fingerprint and weights hash, the evaluation set's hash, the settings) and
//! the shard's probes with their scores as counts and bits, so that JSON cannot round them.
//! [`check_set`] refuses a missing, duplicated or mismatched shard, naming the file and what
//! differs; the merge then assembles the probes with the same code the one-machine run uses.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shears_data::Split;

pub use super::lsa_shard::{features_hash, merge_lsa, ExactHead, LsaSettings, LsaShard};
use super::sbpf::{Budget, SbpfConfig};
use super::sbpf_probes::{ExactScore, SbpfProbes};
use super::shard::{ShardError, ShardReport};
use super::sweep::{GroupCurve, ProbeStats, SweepConfig, SweepPoint, SweepResult};

/// The file a shard writes in its directory.
pub const RECORD_FILE: &str = "shard.json";

/// The version of [`ShardRecord`] this shears writes.
pub const RECORD_VERSION: u32 = 1;

/// How to reopen the model a shard analysed (the merge needs its graph for MACs budgets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// The model file as given on the command line.
    pub path: PathBuf,
    /// `--arch`, if given.
    pub arch: Option<String>,
    /// `--input-shape`, if given.
    pub input_shape: Option<Vec<usize>>,
}

/// What identifies the model and data a shard ran on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Graph fingerprint ([`crate::prune::fingerprint`]).
    pub graph: String,
    /// Weights hash ([`super::sweep::weights_hash`]).
    pub weights: String,
    /// Evaluation set hash ([`super::sweep::EvalSet::hash`]).
    pub data: String,
}

/// One shard's file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// The shard, its source and its share of the probes.
    pub shard: ShardReport,
    /// The model.
    pub model: ModelRef,
    /// Model and data identity.
    pub fingerprint: Fingerprint,
    /// The evaluation set's description (reports carry it).
    pub data: String,
    /// Its split.
    pub split: Option<Split>,
    /// The analysis, its settings and the shard's probes.
    pub payload: ShardPayload,
}

/// The analysis-specific part of a [`ShardRecord`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "analysis", rename_all = "snake_case")]
pub enum ShardPayload {
    /// `shears analyze sweep`.
    Sweep(SweepShard),
    /// `shears analyze sbpf`.
    Sbpf(SbpfShard),
    /// `shears analyze lsa`.
    Lsa(LsaShard),
}

impl ShardPayload {
    /// `sweep` or `sbpf`.
    pub fn name(&self) -> &'static str {
        match self {
            ShardPayload::Sweep(_) => "sweep",
            ShardPayload::Sbpf(_) => "sbpf",
            ShardPayload::Lsa(_) => "lsa",
        }
    }
}

/// One measured sweep point, exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactPoint {
    /// Group id.
    pub group: usize,
    /// Index of the ratio in the configuration's ratios.
    pub ratio_index: usize,
    /// Channels removed.
    pub removed: usize,
    /// Bits of the top-1 accuracy.
    pub accuracy_bits: u64,
    /// Bits of the mean cross-entropy.
    pub loss_bits: u64,
}

/// A sweep shard: settings and points.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepShard {
    /// The sweep's settings.
    pub config: SweepConfig,
    /// Bits of `config.ratios` (JSON need not round-trip them).
    pub ratio_bits: Vec<u32>,
    /// Bits of `--max-loss-increase`, if given.
    pub max_loss_increase_bits: Option<u64>,
    /// Bits of the MACs keep fraction (`--target-macs`/`--speedup`), if given.
    pub keep_fraction_bits: Option<u64>,
    /// The shard's result (its own points only), for reading.
    pub result: SweepResult,
    /// The baseline's accuracy and loss bits.
    pub baseline_bits: (u64, u64),
    /// The shard's points, exactly.
    pub points: Vec<ExactPoint>,
}

impl SweepShard {
    /// The record of a sweep shard's `result` under `config`.
    pub fn new(
        config: &SweepConfig,
        max_loss_increase: Option<f64>,
        keep_fraction: Option<f64>,
        result: &SweepResult,
    ) -> Self {
        let points = result
            .groups
            .iter()
            .flat_map(|c| {
                c.points.iter().map(|p| ExactPoint {
                    group: c.group,
                    ratio_index: config
                        .ratios
                        .iter()
                        .position(|&r| r == p.ratio)
                        .expect("a point's ratio is one of the sweep's"),
                    removed: p.removed,
                    accuracy_bits: p.accuracy.to_bits(),
                    loss_bits: p.loss.to_bits(),
                })
            })
            .collect();
        SweepShard {
            config: config.clone(),
            ratio_bits: config.ratios.iter().map(|r| r.to_bits()).collect(),
            max_loss_increase_bits: max_loss_increase.map(f64::to_bits),
            keep_fraction_bits: keep_fraction.map(f64::to_bits),
            result: result.clone(),
            baseline_bits: (
                result.baseline_accuracy.to_bits(),
                result.baseline_loss.to_bits(),
            ),
            points,
        }
    }

    /// The settings every shard must share, for comparison.
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "config": self.config,
            "ratio_bits": self.ratio_bits,
            "max_loss_increase_bits": self.max_loss_increase_bits,
            "keep_fraction_bits": self.keep_fraction_bits,
            "key": self.result.key,
            "images": self.result.images,
        })
    }
}

/// An SBPF shard: settings and probes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SbpfShard {
    /// The analysis settings.
    pub config: SbpfConfig,
    /// Bits of `config.deltas`.
    pub delta_bits: Vec<u32>,
    /// The allocation budget, if given.
    pub budget: Option<Budget>,
    /// Bits of the budget's value (the ratio or the keep fraction).
    pub budget_bits: Option<u64>,
    /// Bits of `--r-max`.
    pub r_max_bits: u64,
    /// The shard's probes.
    pub probes: SbpfProbes,
}

impl SbpfShard {
    /// The settings every shard must share, for comparison.
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "config": self.config,
            "delta_bits": self.delta_bits,
            "budget": self.budget,
            "budget_bits": self.budget_bits,
            "r_max_bits": self.r_max_bits,
            "groups": self.probes.groups,
            "reps": self.probes.reps,
            "images": self.probes.images,
        })
    }

    /// The config with its exact deltas.
    pub fn exact_config(&self) -> SbpfConfig {
        let mut c = self.config.clone();
        c.deltas = self.delta_bits.iter().map(|&b| f32::from_bits(b)).collect();
        c
    }

    /// The budget with its exact value.
    pub fn exact_budget(&self) -> Option<Budget> {
        let v = f64::from_bits(self.budget_bits?);
        self.budget.map(|b| match b {
            Budget::Filters { .. } => Budget::Filters { ratio: v },
            Budget::Macs { .. } => Budget::Macs { keep_fraction: v },
        })
    }
}

/// Shard files under `dirs`: `DIR/shard.json` when DIR is a shard's directory, else every
/// `DIR/shard-*-of-*/shard.json`. A directory that does not exist is an error naming it.
pub fn find_records(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ShardError> {
    let mut out = Vec::new();
    for d in dirs {
        let direct = d.join(RECORD_FILE);
        if direct.is_file() {
            out.push(direct);
            continue;
        }
        let entries = std::fs::read_dir(d).map_err(|e| ShardError::File {
            path: d.clone(),
            what: format!("cannot list the directory: {e}"),
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("shard-") && n.contains("-of-"))
            })
            .map(|p| p.join(RECORD_FILE))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// Reads one shard file; errors name it.
pub fn read_record(path: &Path) -> Result<ShardRecord, ShardError> {
    let bad = |what: String| ShardError::File {
        path: path.to_path_buf(),
        what,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let r: ShardRecord =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a shears shard file ({e})")))?;
    if r.version != RECORD_VERSION {
        return Err(bad(format!(
            "version {} (this shears reads {RECORD_VERSION})",
            r.version
        )));
    }
    Ok(r)
}

/// The fields of two JSON objects that differ, as `name A (B in OTHER)`.
fn differences(a: &serde_json::Value, b: &serde_json::Value, other: &Path) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (ao, bo) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = ao.keys().chain(bo.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| ao.get(*k) != bo.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| {
                let s = v.map_or("none".to_string(), |v| v.to_string());
                if s.len() > 200 {
                    format!("{}...", &s[..200])
                } else {
                    s
                }
            };
            format!(
                "{k} {} ({} in {})",
                show(ao.get(k)),
                show(bo.get(k)),
                other.display()
            )
        })
        .collect()
}

/// Checks that `records` are one complete set: the same analysis, shard count, model, data and
/// settings, each shard index exactly once, each shard finished. Returns them in shard order.
/// Errors name the file and what differs (`searched` names the directories, for a missing
/// shard).
pub fn check_set(
    mut records: Vec<(PathBuf, ShardRecord)>,
    searched: &str,
) -> Result<Vec<(PathBuf, ShardRecord)>, ShardError> {
    let Some((p0, r0)) = records.first() else {
        return Err(ShardError::Empty {
            searched: searched.to_string(),
        });
    };
    let (p0, r0) = (p0.clone(), r0.clone());
    let common = |r: &ShardRecord| {
        serde_json::json!({
            "analysis": r.payload.name(),
            "shard_count": r.shard.choice.shard.count,
            "graph_fingerprint": r.fingerprint.graph,
            "weights_hash": r.fingerprint.weights,
            "eval_set_hash": r.fingerprint.data,
            "data": r.data,
            "split": r.split,
        })
    };
    let settings = |r: &ShardRecord| match &r.payload {
        ShardPayload::Sweep(s) => s.settings(),
        ShardPayload::Sbpf(s) => s.settings(),
        ShardPayload::Lsa(s) => s.settings(),
    };
    for (p, r) in &records[1..] {
        let mut diff = differences(&common(r), &common(&r0), &p0);
        if diff.is_empty() {
            diff = differences(&settings(r), &settings(&r0), &p0);
        }
        if !diff.is_empty() {
            return Err(ShardError::File {
                path: p.clone(),
                what: format!("does not match the other shards: {}", diff.join(", ")),
            });
        }
    }
    let n = r0.shard.choice.shard.count;
    let mut slots: Vec<Option<usize>> = vec![None; n];
    for (i, (p, r)) in records.iter().enumerate() {
        let idx = r.shard.choice.shard.index;
        if idx >= n {
            return Err(ShardError::File {
                path: p.clone(),
                what: format!("shard index {idx} is not below its count {n}"),
            });
        }
        if let Some(j) = slots[idx] {
            return Err(ShardError::Duplicate {
                index: idx,
                count: n,
                first: records[j].0.clone(),
                second: p.clone(),
            });
        }
        slots[idx] = Some(i);
        let complete = match &r.payload {
            ShardPayload::Sweep(s) => s.result.complete,
            ShardPayload::Sbpf(_) | ShardPayload::Lsa(_) => true,
        };
        if !complete {
            return Err(ShardError::File {
                path: p.clone(),
                what: "the shard did not finish its probes; rerun it (it resumes from its cache)"
                    .into(),
            });
        }
    }
    if let Some(index) = slots.iter().position(Option::is_none) {
        return Err(ShardError::Missing {
            index,
            count: n,
            searched: searched.to_string(),
        });
    }
    records.sort_by_key(|(_, r)| r.shard.choice.shard.index);
    Ok(records)
}

fn add_stats(a: &mut ProbeStats, b: &ProbeStats) {
    a.probes += b.probes;
    a.probe_macs += b.probe_macs;
    a.prefix_macs += b.prefix_macs;
    a.baseline_macs += b.baseline_macs;
    a.skipped += b.skipped;
}

/// The one-machine [`SweepResult`] of a checked set of sweep shards ([`check_set`]): every
/// group's points in the configured ratio order, the shared baseline; `computed`, `reused`,
/// `seconds` and `stats` are summed over the shards. Errors name a shard whose baseline or
/// points disagree with the others, or a missing probe.
pub fn merge_sweep(
    shards: &[(PathBuf, SweepShard)],
) -> Result<(SweepConfig, SweepResult), ShardError> {
    let (p0, s0) = shards
        .first()
        .expect("check_set returns at least one shard");
    let mut config = s0.config.clone();
    config.ratios = s0.ratio_bits.iter().map(|&b| f32::from_bits(b)).collect();
    let mut found: Vec<Vec<Option<(&Path, &ExactPoint)>>> =
        vec![vec![None; config.ratios.len()]; s0.result.groups.len()];
    let mut result = s0.result.clone();
    result.computed = 0;
    result.reused = 0;
    result.seconds = 0.0;
    result.stats = ProbeStats {
        full_macs: s0.result.stats.full_macs,
        ..ProbeStats::default()
    };
    for (p, s) in shards {
        let shape: Vec<(usize, &str, usize)> = s
            .result
            .groups
            .iter()
            .map(|c| (c.group, c.root.as_str(), c.size))
            .collect();
        let shape0: Vec<(usize, &str, usize)> = s0
            .result
            .groups
            .iter()
            .map(|c| (c.group, c.root.as_str(), c.size))
            .collect();
        if shape != shape0 || s.baseline_bits != s0.baseline_bits {
            return Err(ShardError::File {
                path: p.clone(),
                what: format!(
                    "its groups or its baseline differ from those of {}",
                    p0.display()
                ),
            });
        }
        for pt in &s.points {
            let gi = s0.result.groups.iter().position(|c| c.group == pt.group);
            let slot = gi
                .zip(Some(pt.ratio_index))
                .filter(|&(_, ri)| ri < config.ratios.len())
                .map(|(gi, ri)| &mut found[gi][ri]);
            let Some(slot) = slot else {
                return Err(ShardError::File {
                    path: p.clone(),
                    what: format!(
                        "point of group {} at ratio index {} is not in the sweep",
                        pt.group, pt.ratio_index
                    ),
                });
            };
            if let Some((q, prev)) = *slot {
                if prev != pt {
                    return Err(ShardError::File {
                        path: p.clone(),
                        what: format!(
                            "group {} at ratio index {} differs from {}",
                            pt.group,
                            pt.ratio_index,
                            q.display()
                        ),
                    });
                }
            } else {
                *slot = Some((p.as_path(), pt));
            }
        }
        result.computed += s.result.computed;
        result.reused += s.result.reused;
        result.seconds += s.result.seconds;
        add_stats(&mut result.stats, &s.result.stats);
    }
    result.groups = Vec::with_capacity(s0.result.groups.len());
    for (gi, c) in s0.result.groups.iter().enumerate() {
        let mut points = Vec::with_capacity(config.ratios.len());
        for (ri, &ratio) in config.ratios.iter().enumerate() {
            let (_, pt) = found[gi][ri].ok_or_else(|| ShardError::File {
                path: p0.clone(),
                what: format!(
                    "no shard has the probe of group {} ({}) at ratio {ratio}",
                    c.group, c.root
                ),
            })?;
            points.push(SweepPoint {
                ratio,
                removed: pt.removed,
                accuracy: f64::from_bits(pt.accuracy_bits),
                loss: f64::from_bits(pt.loss_bits),
            });
        }
        result.groups.push(GroupCurve {
            group: c.group,
            root: c.root.clone(),
            size: c.size,
            points,
        });
    }
    result.baseline_accuracy = f64::from_bits(s0.baseline_bits.0);
    result.baseline_loss = f64::from_bits(s0.baseline_bits.1);
    result.complete = true;
    Ok((config, result))
}

/// The probes of a checked set of SBPF shards ([`check_set`]) as one set: the union of their
/// probes in probe order, the shared baseline, `seconds` and `stats` summed. Errors name a
/// shard whose baseline or probe disagrees with another's.
pub fn merge_sbpf(shards: &[(PathBuf, SbpfShard)]) -> Result<SbpfProbes, ShardError> {
    let (p0, s0) = shards
        .first()
        .expect("check_set returns at least one shard");
    let mut all = s0.probes.clone();
    all.probes.clear();
    all.seconds = 0.0;
    all.stats = ProbeStats {
        full_macs: s0.probes.stats.full_macs,
        ..ProbeStats::default()
    };
    let base: ExactScore = s0.probes.baseline;
    for (p, s) in shards {
        if s.probes.baseline != base {
            return Err(ShardError::File {
                path: p.clone(),
                what: format!("its baseline differs from that of {}", p0.display()),
            });
        }
        for pr in &s.probes.probes {
            match all
                .probes
                .iter()
                .find(|q| (q.group, q.level, q.rep) == (pr.group, pr.level, pr.rep))
            {
                Some(q) if q != pr => {
                    return Err(ShardError::File {
                        path: p.clone(),
                        what: format!(
                            "probe of group {} level {} repetition {} differs from another shard's",
                            pr.group, pr.level, pr.rep
                        ),
                    })
                }
                Some(_) => {}
                None => all.probes.push(pr.clone()),
            }
        }
        all.seconds += s.probes.seconds;
        add_stats(&mut all.stats, &s.probes.stats);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::sbpf_probes::{ProbeGroup, SbpfProbe};
    use crate::analyze::shard::{Shard, ShardChoice, ShardSource};

    fn probe(group: usize, rep: usize, correct: usize) -> SbpfProbe {
        SbpfProbe {
            group,
            level: 0,
            rep,
            score: ExactScore {
                images: 10,
                correct,
                loss_bits: (0.1 * correct as f64).to_bits(),
            },
        }
    }

    /// An SBPF shard `index/count` holding `probes` of a 2-group, 2-repetition grid.
    fn rec(index: usize, count: usize, weights: &str, probes: Vec<SbpfProbe>) -> ShardRecord {
        let config = SbpfConfig {
            seeds: 2,
            ..SbpfConfig::default()
        };
        ShardRecord {
            version: RECORD_VERSION,
            shard: ShardReport {
                choice: ShardChoice {
                    shard: Shard { index, count },
                    source: ShardSource::Flag,
                    detail: String::new(),
                },
                probes: probes.len(),
                probes_total: 4,
                estimated_cost: 0,
                estimated_cost_total: 0,
            },
            model: ModelRef {
                path: "m.safetensors".into(),
                arch: None,
                input_shape: None,
            },
            fingerprint: Fingerprint {
                graph: "g".into(),
                weights: weights.into(),
                data: "d".into(),
            },
            data: "test data".into(),
            split: None,
            payload: ShardPayload::Sbpf(SbpfShard {
                delta_bits: config.deltas.iter().map(|d| d.to_bits()).collect(),
                config,
                budget: None,
                budget_bits: None,
                r_max_bits: 0.9f64.to_bits(),
                probes: SbpfProbes {
                    groups: (0..2)
                        .map(|g| ProbeGroup {
                            group: g,
                            root: format!("conv{g}"),
                            size: 8,
                        })
                        .collect(),
                    reps: 2,
                    probes,
                    baseline: ExactScore {
                        images: 10,
                        correct: 9,
                        loss_bits: 0.2f64.to_bits(),
                    },
                    images: 10,
                    split: None,
                    seconds: 1.0,
                    stats: ProbeStats::default(),
                },
            }),
        }
    }

    fn set() -> Vec<(PathBuf, ShardRecord)> {
        vec![
            (
                "b/shard.json".into(),
                rec(1, 2, "w", vec![probe(1, 0, 5), probe(1, 1, 6)]),
            ),
            (
                "a/shard.json".into(),
                rec(0, 2, "w", vec![probe(0, 0, 3), probe(0, 1, 4)]),
            ),
        ]
    }

    #[test]
    fn a_complete_set_comes_back_in_shard_order_and_merges_like_one_run() {
        let checked = check_set(set(), "x").unwrap();
        assert_eq!(checked[0].0, PathBuf::from("a/shard.json"));
        let sbpf: Vec<(PathBuf, SbpfShard)> = checked
            .into_iter()
            .map(|(p, r)| match r.payload {
                ShardPayload::Sbpf(s) => (p, s),
                _ => unreachable!(),
            })
            .collect();
        let merged = merge_sbpf(&sbpf).unwrap();
        let cfg = sbpf[0].1.exact_config();
        // One run holding every probe reports the same groups.
        let mut one = sbpf[0].1.probes.clone();
        one.probes = vec![
            probe(0, 0, 3),
            probe(0, 1, 4),
            probe(1, 0, 5),
            probe(1, 1, 6),
        ];
        let (a, b) = (merged.report(&cfg).unwrap(), one.report(&cfg).unwrap());
        assert_eq!(a.groups, b.groups);
        assert_eq!(a.groups[1].accuracies, vec![vec![0.5, 0.6]]);
        assert_eq!(merged.seconds, 2.0);
        // A shard's probes alone do not make a report.
        let e = sbpf[0].1.probes.report(&cfg).unwrap_err().to_string();
        assert!(e.contains("conv1"), "{e}");
    }

    #[test]
    fn missing_duplicate_and_mismatched_shards_are_named() {
        let mut s = set();
        s.pop();
        let e = check_set(s, "runs/").unwrap_err().to_string();
        assert!(
            e.contains("shard 0/2 is missing") && e.contains("runs/"),
            "{e}"
        );

        let mut s = set();
        s.push(("c/shard.json".into(), rec(1, 2, "w", vec![])));
        let e = check_set(s, "x").unwrap_err().to_string();
        assert!(
            e.contains("b/shard.json") && e.contains("c/shard.json"),
            "{e}"
        );

        let mut s = set();
        s[1].1 = rec(0, 2, "other", vec![]);
        let e = check_set(s, "x").unwrap_err().to_string();
        assert!(
            e.contains("a/shard.json") && e.contains("weights_hash"),
            "{e}"
        );

        let mut s = set();
        s[1].1 = rec(0, 3, "w", vec![]);
        let e = check_set(s, "x").unwrap_err().to_string();
        assert!(e.contains("shard_count"), "{e}");

        let mut s = set();
        if let ShardPayload::Sbpf(x) = &mut s[1].1.payload {
            x.config.seed = 7;
        }
        let e = check_set(s, "x").unwrap_err().to_string();
        assert!(e.contains("a/shard.json") && e.contains("config"), "{e}");

        let e = check_set(vec![], "nowhere").unwrap_err().to_string();
        assert!(e.contains("nowhere"), "{e}");
    }

    #[test]
    fn disagreeing_copies_of_a_probe_are_refused() {
        let mut s = set();
        s[0].1 = rec(1, 2, "w", vec![probe(1, 0, 5), probe(0, 0, 9)]);
        let checked = check_set(s, "x").unwrap();
        let sbpf: Vec<(PathBuf, SbpfShard)> = checked
            .into_iter()
            .map(|(p, r)| match r.payload {
                ShardPayload::Sbpf(s) => (p, s),
                _ => unreachable!(),
            })
            .collect();
        let e = merge_sbpf(&sbpf).unwrap_err().to_string();
        assert!(e.contains("b/shard.json") && e.contains("differs"), "{e}");
    }
}
