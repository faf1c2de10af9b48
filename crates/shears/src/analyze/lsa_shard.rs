//! The LSA study as shards: the settings and heads a shard of `analyze lsa` records, exactly,
//! and their merge into the one-machine [`StudyResult`] (see [`super::merge`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lsa::{
    finish_study, selections, Features, HeadConfig, OutputAgg, Outputs, PNorm, StudyConfig,
    StudyParts, StudyResult, StudyRow,
};
use super::shard::ShardError;
use crate::progress::Verbosity;

/// A study's settings in a form JSON keeps exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LsaSettings {
    /// The p-norms as written (`2`, `inf`).
    pub ps: Vec<String>,
    /// Bits of the reduction levels.
    pub ratio_bits: Vec<u64>,
    /// The seeds.
    pub seeds: Vec<u64>,
    /// Training samples the sensitivities are aggregated over.
    pub lsa_samples: usize,
    /// Softmax or logits.
    pub outputs: Outputs,
    /// Aggregation over outputs.
    pub output_agg: OutputAgg,
    /// Hidden width of the head, if any.
    pub hidden: Option<usize>,
    /// Head training epochs.
    pub epochs: usize,
    /// Head training batch.
    pub batch: usize,
    /// Bits of the learning rate.
    pub lr_bits: u32,
    /// Bits of the weight decay.
    pub weight_decay_bits: u32,
    /// Magnitude and random baselines.
    pub baselines: bool,
}

impl LsaSettings {
    /// The settings of `cfg`.
    pub fn of(cfg: &StudyConfig) -> Self {
        LsaSettings {
            ps: cfg.ps.iter().map(|p| p.to_string()).collect(),
            ratio_bits: cfg.ratios.iter().map(|r| r.to_bits()).collect(),
            seeds: cfg.seeds.clone(),
            lsa_samples: cfg.lsa_samples,
            outputs: cfg.outputs,
            output_agg: cfg.output_agg,
            hidden: cfg.head.hidden,
            epochs: cfg.head.epochs,
            batch: cfg.head.batch,
            lr_bits: cfg.head.lr.to_bits(),
            weight_decay_bits: cfg.head.weight_decay.to_bits(),
            baselines: cfg.baselines,
        }
    }

    /// The study configuration back (no shard, quiet).
    pub fn config(&self) -> Result<StudyConfig, crate::Error> {
        Ok(StudyConfig {
            ps: self
                .ps
                .iter()
                .map(|p| p.parse::<PNorm>())
                .collect::<Result<_, _>>()?,
            ratios: self.ratio_bits.iter().map(|&b| f64::from_bits(b)).collect(),
            seeds: self.seeds.clone(),
            lsa_samples: self.lsa_samples,
            outputs: self.outputs,
            output_agg: self.output_agg,
            head: HeadConfig {
                hidden: self.hidden,
                epochs: self.epochs,
                batch: self.batch,
                lr: f32::from_bits(self.lr_bits),
                weight_decay: f32::from_bits(self.weight_decay_bits),
            },
            baselines: self.baselines,
            shard: None,
            verbosity: Verbosity::Quiet,
        })
    }
}

/// One trained head of the grid, exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactHead {
    /// Its position in the grid ([`super::lsa::study_assignment`]).
    pub probe: usize,
    /// Features kept.
    pub d_kept: usize,
    /// Trainable parameters.
    pub head_params: u64,
    /// Bits of the validation accuracy (percent).
    pub val_bits: u64,
    /// Bits of the test accuracy (percent).
    pub acc_bits: u64,
}

/// An LSA shard: settings, what the report names, and the shard's heads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LsaShard {
    /// The study's settings.
    pub settings: LsaSettings,
    /// The dataset's name.
    pub dataset: String,
    /// The feature node.
    pub target: String,
    /// Features per sample.
    pub d: usize,
    /// Training, validation and test samples.
    pub n: (usize, usize, usize),
    /// The shard's heads.
    pub heads: Vec<ExactHead>,
    /// Seconds of the grid.
    pub seconds: f64,
    /// Seconds of the feature caching.
    pub feature_seconds: f64,
}

impl LsaShard {
    /// The record of a shard's `res` under `cfg`.
    pub fn new(
        cfg: &StudyConfig,
        dataset: &str,
        target: &str,
        res: &StudyResult,
        feature_seconds: f64,
    ) -> Self {
        let sels = selections(cfg);
        let per_seed = 1 + sels.len() * cfg.ratios.len();
        let seed_index = |s: u64| {
            cfg.seeds
                .iter()
                .position(|&x| x == s)
                .expect("a seed of the study")
        };
        let mut heads = Vec::new();
        for ((seed, acc), (_, val)) in res.base.iter().zip(&res.base_val) {
            heads.push(ExactHead {
                probe: seed_index(*seed) * per_seed,
                d_kept: res.d,
                head_params: 0,
                val_bits: val.to_bits(),
                acc_bits: acc.to_bits(),
            });
        }
        for r in &res.rows {
            let j = sels
                .iter()
                .position(|s| *s == r.selection)
                .expect("a selection of the study");
            let k = cfg
                .ratios
                .iter()
                .position(|&x| x == r.ratio)
                .expect("a ratio of the study");
            heads.push(ExactHead {
                probe: seed_index(r.seed) * per_seed + 1 + j * cfg.ratios.len() + k,
                d_kept: r.d_kept,
                head_params: r.head_params,
                val_bits: r.val_accuracy.to_bits(),
                acc_bits: r.accuracy.to_bits(),
            });
        }
        heads.sort_by_key(|h| h.probe);
        LsaShard {
            settings: LsaSettings::of(cfg),
            dataset: dataset.to_string(),
            target: target.to_string(),
            d: res.d,
            n: (res.n_train, res.n_val, res.n_test),
            heads,
            seconds: res.seconds,
            feature_seconds,
        }
    }

    /// The settings every shard must share, for comparison.
    pub(super) fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "settings": self.settings,
            "dataset": self.dataset,
            "target": self.target,
            "d": self.d,
            "n": self.n,
        })
    }
}

/// FNV-1a hash of feature sets (values' bits, labels, shapes): the LSA study's data identity.
pub fn features_hash(sets: &[&Features]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for f in sets {
        add(&(f.n as u64).to_le_bytes());
        add(&(f.d as u64).to_le_bytes());
        for v in &f.data {
            add(&v.to_bits().to_le_bytes());
        }
        for &l in &f.labels {
            add(&(l as u64).to_le_bytes());
        }
    }
    format!("fnv1a64:{h:016x}")
}

/// The one-machine study of a checked set of LSA shards ([`super::merge::check_set`]): every
/// head of the grid from the shard that trained it, in grid order, the summaries computed as
/// one run computes them; `seconds` summed. Errors name a shard whose head disagrees with
/// another's, or a head no shard has.
pub fn merge_lsa(shards: &[(PathBuf, LsaShard)]) -> Result<(StudyConfig, StudyResult), ShardError> {
    let (p0, s0) = shards
        .first()
        .expect("check_set returns at least one shard");
    let cfg = s0.settings.config().map_err(|e| ShardError::File {
        path: p0.clone(),
        what: e.to_string(),
    })?;
    let sels = selections(&cfg);
    let per_seed = 1 + sels.len() * cfg.ratios.len();
    let total = per_seed * cfg.seeds.len();
    let mut found: Vec<Option<&ExactHead>> = vec![None; total];
    let mut seconds = 0.0;
    for (p, s) in shards {
        for h in &s.heads {
            let bad = |what: String| ShardError::File {
                path: p.clone(),
                what,
            };
            let slot = found
                .get_mut(h.probe)
                .ok_or_else(|| bad(format!("head {} is not in the grid", h.probe)))?;
            match slot {
                Some(prev) if *prev != h => {
                    return Err(bad(format!(
                        "head {} differs from another shard's",
                        h.probe
                    )))
                }
                _ => *slot = Some(h),
            }
        }
        seconds += s.seconds;
    }
    let mut parts = StudyParts {
        d: s0.d,
        n_train: s0.n.0,
        n_val: s0.n.1,
        n_test: s0.n.2,
        base: Vec::new(),
        base_val: Vec::new(),
        rows: Vec::new(),
        seconds,
    };
    for (i, h) in found.iter().enumerate() {
        let h = h.ok_or_else(|| ShardError::File {
            path: p0.clone(),
            what: format!("no shard has head {i} of the grid"),
        })?;
        let (si, off) = (i / per_seed, i % per_seed);
        let seed = cfg.seeds[si];
        let (acc, val) = (f64::from_bits(h.acc_bits), f64::from_bits(h.val_bits));
        if off == 0 {
            parts.base.push((seed, acc));
            parts.base_val.push((seed, val));
        } else {
            let (j, k) = ((off - 1) / cfg.ratios.len(), (off - 1) % cfg.ratios.len());
            parts.rows.push(StudyRow {
                selection: sels[j],
                ratio: cfg.ratios[k],
                seed,
                d_kept: h.d_kept,
                head_params: h.head_params,
                val_accuracy: val,
                accuracy: acc,
            });
        }
    }
    let res = finish_study(parts, &cfg);
    Ok((cfg, res))
}
