//! Running `analyze sweep`, `analyze sbpf` and `analyze lsa` as one shard: the probes (LSA: heads) of the shard go to
//! `OUT/shard-IIII-of-NNNN/` (its cache and its `shard.json`), for `shears analyze merge`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;
use shears::analyze::lsa::{run_study, study_assignment, Features, StudyConfig};
use shears::analyze::merge::{
    features_hash, Fingerprint, LsaShard, ModelRef, SbpfShard, ShardPayload, ShardRecord,
    SweepShard, RECORD_FILE, RECORD_VERSION,
};
use shears::analyze::sbpf::{probe, Budget, SbpfConfig};
use shears::analyze::shard::{ShardChoice, ShardReport};
use shears::analyze::sweep::{
    sweep, sweep_shard_assignment, weights_hash, write_atomic, EvalSet, SweepConfig,
};
use shears::model::Model;
use shears::prune::fingerprint;

use crate::args::ModelOpts;
use crate::output::print_json;

/// How to reopen `m`.
fn model_ref(m: &ModelOpts) -> ModelRef {
    ModelRef {
        path: m.model.clone(),
        arch: m.arch.clone(),
        input_shape: m.input_shape.clone(),
    }
}

/// The identity of `model` and `data`.
fn fingerprint_of(model: &Model, data: &EvalSet) -> Fingerprint {
    Fingerprint {
        graph: fingerprint(&model.graph),
        weights: weights_hash(&model.weights),
        data: data.hash(),
    }
}

/// The directory of `choice`'s shard under `out`, created.
fn shard_dir(out: &Path, choice: &ShardChoice) -> Result<PathBuf> {
    let dir = out.join(choice.shard.dir_name());
    crate::commands::create_out_dir("--out", &dir)?;
    Ok(dir)
}

/// Writes `record` to `dir/shard.json` and reports it (one JSON object, or lines of text).
fn finish(dir: &Path, record: &ShardRecord, as_json: bool) -> Result<()> {
    let p = dir.join(RECORD_FILE);
    write_atomic(&p, &serde_json::to_string_pretty(record)?)?;
    let s = &record.shard;
    if as_json {
        print_json(&json!({
            "analysis": record.payload.name(),
            "shard": s,
            "model": record.model.path,
            "data": record.data,
            "split": record.split,
            "record": p,
        }));
        return Ok(());
    }
    println!(
        "{} shard {} (source {}: {}): {} of {} probes, {:.1}% of the grid's estimated cost",
        record.payload.name(),
        s.choice.shard,
        s.choice.source.name(),
        s.choice.detail,
        s.probes,
        s.probes_total,
        100.0 * s.estimated_cost as f64 / (s.estimated_cost_total.max(1)) as f64
    );
    println!("wrote {}", p.display());
    println!(
        "when every shard has finished: shears analyze merge {}",
        dir.parent().unwrap_or(dir).display()
    );
    Ok(())
}

/// What a sweep shard needs from its command line.
pub(crate) struct SweepShardRun<'a> {
    /// The model flags.
    pub model_opts: &'a ModelOpts,
    /// `--out`.
    pub out: &'a Path,
    /// `--max-loss-increase`.
    pub max_loss_increase: Option<f64>,
    /// The MACs keep fraction.
    pub keep_fraction: Option<f64>,
    /// `--json`.
    pub json: bool,
}

/// Runs the probes of `choice`'s shard of the sweep `cfg` (prefix caching as set in `cfg`).
pub(crate) fn run_sweep_shard(
    run: &SweepShardRun<'_>,
    model: &Model,
    data: &EvalSet,
    mut cfg: SweepConfig,
    choice: ShardChoice,
) -> Result<()> {
    let dir = shard_dir(run.out, &choice)?;
    cfg.shard = Some(choice.shard);
    cfg.cache_file = Some(dir.join("sweep_cache.json"));
    let mine = sweep_shard_assignment(&model.graph, &cfg)?;
    let result = sweep(&model.graph, &model.weights, data, &cfg)?;
    let record = ShardRecord {
        version: RECORD_VERSION,
        shard: ShardReport::new(choice, &mine),
        model: model_ref(run.model_opts),
        fingerprint: fingerprint_of(model, data),
        data: data.description.clone(),
        split: data.split,
        payload: ShardPayload::Sweep(SweepShard::new(
            &cfg,
            run.max_loss_increase,
            run.keep_fraction,
            &result,
        )),
    };
    if !run.json {
        println!(
            "{} probes computed, {} reused from the cache, {:.1}s{}",
            result.computed,
            result.reused,
            result.seconds,
            if result.complete { "" } else { " (incomplete)" }
        );
    }
    finish(&dir, &record, run.json)
}

/// What an SBPF shard needs from its command line.
pub(crate) struct SbpfShardRun<'a> {
    /// The model flags.
    pub model_opts: &'a ModelOpts,
    /// `--out`.
    pub out: &'a Path,
    /// The allocation budget, if given.
    pub budget: Option<Budget>,
    /// `--r-max`.
    pub r_max: f64,
    /// `--json`.
    pub json: bool,
}

/// Runs the damage probes of `choice`'s shard of the SBPF analysis `cfg`.
pub(crate) fn run_sbpf_shard(
    run: &SbpfShardRun<'_>,
    model: &Model,
    data: &EvalSet,
    mut cfg: SbpfConfig,
    choice: ShardChoice,
) -> Result<()> {
    let dir = shard_dir(run.out, &choice)?;
    cfg.shard = Some(choice.shard);
    let (probes, mine) = probe(&model.graph, &model.weights, data, &cfg)?;
    let budget_bits = run.budget.map(|b| match b {
        Budget::Filters { ratio } => ratio.to_bits(),
        Budget::Macs { keep_fraction } => keep_fraction.to_bits(),
    });
    let record = ShardRecord {
        version: RECORD_VERSION,
        shard: ShardReport::new(choice, &mine),
        model: model_ref(run.model_opts),
        fingerprint: fingerprint_of(model, data),
        data: data.description.clone(),
        split: data.split,
        payload: ShardPayload::Sbpf(SbpfShard {
            config: cfg.clone(),
            delta_bits: cfg.deltas.iter().map(|d| d.to_bits()).collect(),
            budget: run.budget,
            budget_bits,
            r_max_bits: run.r_max.to_bits(),
            probes,
        }),
    };
    finish(&dir, &record, run.json)
}

/// What an LSA shard needs from its command line.
pub(crate) struct LsaShardRun<'a> {
    /// The model flags.
    pub model_opts: &'a ModelOpts,
    /// `--out`.
    pub out: &'a Path,
    /// The dataset's name.
    pub dataset: &'a str,
    /// The feature node.
    pub target: &'a str,
    /// Seconds the feature caching took.
    pub feature_seconds: f64,
    /// `--json`.
    pub json: bool,
}

/// Trains and evaluates the heads of `choice`'s shard of the LSA study `cfg` on the cached
/// `[train, val, test]` features.
pub(crate) fn run_lsa_shard(
    run: &LsaShardRun<'_>,
    model: &Model,
    features: [&Features; 3],
    mut cfg: StudyConfig,
    choice: ShardChoice,
) -> Result<()> {
    let dir = shard_dir(run.out, &choice)?;
    cfg.shard = Some(choice.shard);
    let [train, val, test] = features;
    let mine = study_assignment(train.d, &cfg);
    let res = run_study(train, val, test, &cfg)?;
    let record = ShardRecord {
        version: RECORD_VERSION,
        shard: ShardReport::new(choice, &mine),
        model: model_ref(run.model_opts),
        fingerprint: Fingerprint {
            graph: fingerprint(&model.graph),
            weights: weights_hash(&model.weights),
            data: features_hash(&features),
        },
        data: run.dataset.to_string(),
        split: None,
        payload: ShardPayload::Lsa(LsaShard::new(
            &cfg,
            run.dataset,
            run.target,
            &res,
            run.feature_seconds,
        )),
    };
    finish(&dir, &record, run.json)
}
