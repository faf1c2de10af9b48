//! DTC: the dynamic threshold container (methods §3.5), and the static threshold it is
//! compared with.

use serde::{Deserialize, Serialize};

use super::penalty::filter_l1;

/// How stripes are thresholded during training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMode {
    /// DTC: per filter `T_c = τ · n̄ / n_c` (the default).
    #[default]
    Dynamic,
    /// One static threshold `τ` for every stripe (SWP's rule).
    Static,
}

impl ThresholdMode {
    /// `dynamic` or `static`.
    pub fn name(self) -> &'static str {
        match self {
            ThresholdMode::Dynamic => "dynamic",
            ThresholdMode::Static => "static",
        }
    }
}

/// The DTC thresholds of one layer: `T_c = τ · n̄ / n_c` with `n_c` the per-filter ℓ1 norms and
/// `n̄` their mean; `+∞` where `n_c = 0` (the filter stays dead). Weak filters get a higher
/// threshold.
pub fn dtc_thresholds(norms: &[f32], tau: f32) -> Vec<f32> {
    if norms.is_empty() {
        return Vec::new();
    }
    let mean = norms.iter().map(|&x| f64::from(x)).sum::<f64>() / norms.len() as f64;
    norms
        .iter()
        .map(|&n| {
            if n > 0.0 {
                (f64::from(tau) * mean / f64::from(n)) as f32
            } else {
                f32::INFINITY
            }
        })
        .collect()
}

/// Per-filter thresholds of one layer's skeleton `fs` (`kk` values per filter) under `mode`.
pub fn thresholds(fs: &[f32], kk: usize, tau: f32, mode: ThresholdMode) -> Vec<f32> {
    match mode {
        ThresholdMode::Dynamic => dtc_thresholds(&filter_l1(fs, kk), tau),
        ThresholdMode::Static => vec![tau; fs.len() / kk],
    }
}

/// The stripe mask `|FS[c, h, w]| > T_c`.
pub fn stripe_mask(fs: &[f32], kk: usize, thresholds: &[f32]) -> Vec<bool> {
    assert_eq!(fs.len(), thresholds.len() * kk, "one threshold per filter");
    fs.iter()
        .enumerate()
        .map(|(p, &x)| x.abs() > thresholds[p / kk])
        .collect()
}

/// Per filter, whether any of its stripes is kept.
pub fn alive_filters(mask: &[bool], kk: usize) -> Vec<bool> {
    mask.chunks(kk).map(|m| m.iter().any(|&b| b)).collect()
}
