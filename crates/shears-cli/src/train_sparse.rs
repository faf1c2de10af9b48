//! The sparse-training part of `shears train` (`--cdp`, `--dtc`): the hook on the network and
//! the skeleton stored in the model's metadata at the end.

use anyhow::Result;
use serde_json::{json, Value};
use shears::model::Model;

use crate::commands::bad;

/// `shears train --cdp PROP --dtc TAU`: the sparse-training hook on `net`, when asked for.
pub(crate) fn sparse_attach(
    a: &crate::args::TrainArgs,
    net: &mut shears_engine::Network,
) -> Result<Option<shears::sparse::SparseTraining>> {
    use shears::sparse::{CdpConfig, PenaltyMode, SparseConfig, ThresholdMode};
    if a.cdp.is_none() && a.dtc.is_none() {
        return Ok(None);
    }
    if a.resume {
        return Err(bad(
            "--resume cannot continue a --cdp/--dtc run: trainer checkpoints hold the kernels, \
             not the filter skeleton; start the sparse run again",
        ));
    }
    let mut cdp = CdpConfig::new(a.cdp.unwrap_or(0.0));
    if a.cdp_adaptive {
        cdp.mode = PenaltyMode::Adaptive;
    }
    let cfg = SparseConfig {
        cdp,
        tau: a.dtc,
        threshold_mode: if a.static_threshold {
            ThresholdMode::Static
        } else {
            ThresholdMode::Dynamic
        },
    };
    cfg.validate()
        .map_err(|e| bad(format!("--cdp/--dtc: {e}")))?;
    Ok(Some(shears::sparse::attach(net, &cfg)?))
}

/// Ends sparse training: stores the skeleton in `model`'s metadata and returns a summary
/// (JSON null when there was none), also printed to stderr unless `quiet`.
pub(crate) fn sparse_finish(
    sparse: Option<shears::sparse::SparseTraining>,
    net: &mut shears_engine::Network,
    model: &mut Model,
    quiet: bool,
) -> Value {
    use shears::sparse::{ThresholdMode, META_SKELETON};
    let Some(st) = sparse else {
        return Value::Null;
    };
    let stats = st.stats();
    let sk = st.detach(net);
    model.metadata.insert(META_SKELETON.into(), sk.to_json());
    let at = |mode: ThresholdMode| {
        sk.tau.map(|t| {
            let s = sk.sparsity(t, mode);
            json!({
                "filters": s.filters,
                "dead_filters": s.dead_filters,
                "filter_sparsity": s.filter_sparsity(),
                "stripes": s.stripes,
                "dead_stripes": s.dead_stripes,
                "stripe_sparsity": s.stripe_sparsity(),
            })
        })
    };
    let summary = json!({
        "tau": sk.tau,
        "threshold_mode": sk.threshold_mode,
        "cdp": sk.cdp,
        "steps": stats.steps,
        "last_penalty": stats.last_penalty,
        "dynamic": at(ThresholdMode::Dynamic),
        "static": at(ThresholdMode::Static),
    });
    if !quiet {
        if let Some(t) = sk.tau {
            for mode in [ThresholdMode::Dynamic, ThresholdMode::Static] {
                let s = sk.sparsity(t, mode);
                eprintln!(
                    "skeleton under {} tau {t}: {}/{} filters dead ({:.2}%), {}/{} stripes \
                     dead ({:.2}%)",
                    mode.name(),
                    s.dead_filters,
                    s.filters,
                    100.0 * s.filter_sparsity(),
                    s.dead_stripes,
                    s.stripes,
                    100.0 * s.stripe_sparsity()
                );
            }
        }
    }
    summary
}
