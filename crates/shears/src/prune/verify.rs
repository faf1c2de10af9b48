//! Verification: the pruned model must reproduce the masked model on real inputs.
//!
//! The masked model is the plan's ([`super::mask`], under [`Plan::fold`]). In
//! [`FoldMode::Exact`] the surgery is exact by construction, so verification uses the given
//! tolerance ([`VERIFY_TOLERANCE`], 1e-4) and fails only on a real bug.
//!
//! **The tolerance is relative to the output's scale** once that exceeds 1: the check allows
//! `tolerance * max(1, max |masked output|)`. Both models run in f32, and surgery changes the
//! order of the sums (a folded constant enters a bias once instead of tap by tap) and stores
//! folded biases rounded to f32, so the two outputs differ by a few units in the last place of
//! f32 at the outputs' magnitude, more in a deep network that amplifies its activations. An
//! absolute 1e-4 is below one such unit for outputs above about 1e3, and a few dozen units
//! exceed it already near 1e2: the randomly initialised torchvision inception_v3 of the ONNX
//! matrix has logits up to 7e2 on the verification inputs, and its exact prune differed from
//! the masked model by 2e-3 (a relative 2.8e-6, the size of the difference between shears and
//! ONNX Runtime on the unpruned model, 3.6e-6), which an absolute tolerance rejected; in f64
//! the same fold is exact. Outputs up to 1 keep the absolute tolerance. In
//! [`FoldMode::Interior`] the surgery may approximate the masked model at image borders; the
//! tolerance is then widened by the largest deviation surgery reported
//! ([`super::SurgeryReport::max_deviation`]), and [`Verification::note`] says so. That bound is
//! per layer (the deviation at the approximating layer's output): later layers can grow or
//! shrink it, so an interior-mode verification can still fail, and the error says why.
//!
//! [`verify`] runs both models with the engine's executor ([`shears_engine::Network`], eval
//! mode). [`verify_with`] takes any forward function instead (a reference implementation in
//! tests, another backend), so the check itself does not depend on one engine.

use std::fmt;

use serde::{Deserialize, Serialize};
use shears_ir::{Graph, Tensor, Weights};

use super::error::{PruneError, Result};
use super::mask::{mask_weights, FoldMode};
use super::plan::Plan;
use super::Pruned;

/// The default tolerance of [`verify_with`]: largest difference allowed between the masked and
/// the pruned model's outputs, in units of the output scale `max(1, max |masked output|)` (see
/// the module docs).
pub const VERIFY_TOLERANCE: f64 = 1e-4;

/// The outcome of a successful verification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Largest absolute difference between the masked and pruned outputs.
    pub max_abs_diff: f64,
    /// Number of output values compared.
    pub n_values: usize,
    /// The absolute tolerance used: the requested one times [`Verification::output_scale`],
    /// plus the reported surgery deviation in [`FoldMode::Interior`].
    pub tolerance: f64,
    /// `max(1, max |masked output|)`, the scale the requested tolerance was multiplied by.
    #[serde(default = "unit_scale")]
    pub output_scale: f64,
    /// Whether surgery reported itself exact (no border approximations).
    pub surgery_exact: bool,
    /// The plan's fold mode.
    #[serde(default)]
    pub fold: FoldMode,
    /// How the tolerance was chosen, when it is not the requested one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn unit_scale() -> f64 {
    1.0
}

/// Runs the masked model ([`super::mask`]) and the pruned model on `input` (an NCHW batch) with
/// the engine in eval mode, and fails with [`PruneError::Verification`] if any output differs
/// by more than `tolerance` times the output scale (use [`VERIFY_TOLERANCE`]; widened in
/// [`FoldMode::Interior`], see the module docs).
pub fn verify(
    graph: &Graph,
    weights: &Weights,
    plan: &Plan,
    pruned: &Pruned,
    input: &Tensor,
    tolerance: f64,
) -> Result<Verification> {
    verify_with(
        graph,
        weights,
        plan,
        pruned,
        input,
        tolerance,
        engine_forward,
    )
}

/// The engine's eval-mode forward, given only the tensors the graph needs.
fn engine_forward(
    graph: &Graph,
    weights: &Weights,
    x: &Tensor,
) -> std::result::Result<Tensor, shears_engine::EngineError> {
    let needed: Weights = graph
        .param_specs()
        .into_iter()
        .filter_map(|(_, name, _)| weights.get(&name).map(|t| (name, t.clone())))
        .collect();
    let mut net = shears_engine::Network::new(graph.clone(), &needed)?;
    net.forward(x, shears_engine::Mode::Eval)
}

/// Runs `forward` on the masked model ([`super::mask`]) and on the pruned model with the same
/// `input`, and fails with [`PruneError::Verification`] if any output differs by more than
/// `tolerance` (widened in [`FoldMode::Interior`], see the module docs).
///
/// `forward(graph, weights, input)` returns the graph's (first) output for the batch `input`.
pub fn verify_with<E: fmt::Display>(
    graph: &Graph,
    weights: &Weights,
    plan: &Plan,
    pruned: &Pruned,
    input: &Tensor,
    tolerance: f64,
    mut forward: impl FnMut(&Graph, &Weights, &Tensor) -> std::result::Result<Tensor, E>,
) -> Result<Verification> {
    let masked = mask_weights(graph, weights, plan)?;
    let a = forward(graph, &masked, input).map_err(|e| PruneError::Forward {
        which: "masked",
        msg: e.to_string(),
    })?;
    let b = forward(&pruned.graph, &pruned.weights, input).map_err(|e| PruneError::Forward {
        which: "pruned",
        msg: e.to_string(),
    })?;
    if a.shape() != b.shape() {
        return Err(PruneError::Forward {
            which: "pruned",
            msg: format!(
                "output shape {:?} differs from the masked model's {:?}",
                b.shape(),
                a.shape()
            ),
        });
    }
    let max_abs_diff = a
        .data()
        .iter()
        .zip(b.data())
        .map(|(&x, &y)| {
            let d = (f64::from(x) - f64::from(y)).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max);
    let output_scale = a
        .data()
        .iter()
        .map(|&x| f64::from(x).abs())
        .filter(|x| x.is_finite())
        .fold(1.0, f64::max);
    let requested = tolerance;
    let tolerance = requested * output_scale;
    let surgery_exact = pruned.report.is_exact();
    let (tolerance, mut tol_note) = if plan.fold == FoldMode::Interior && !surgery_exact {
        let dev = pruned.report.max_deviation();
        (
            tolerance + dev,
            Some(format!(
                "fold mode interior: tolerance {tolerance:.1e} plus the largest border deviation \
                 surgery reported, {dev:.3e} (a per-layer bound; later layers may change it)"
            )),
        )
    } else {
        (tolerance, None)
    };
    if output_scale > 1.0 {
        let scaled = format!(
            "tolerance {requested:.1e} relative to the largest |output|, {output_scale:.3e}"
        );
        tol_note = Some(match tol_note {
            Some(n) => format!("{scaled}; {n}"),
            None => scaled,
        });
    }
    if max_abs_diff > tolerance {
        let mut note = match pruned.report.approximations.first() {
            Some(a) => format!(
                "; surgery reported {} approximation(s), e.g. {a}",
                pruned.report.approximations.len()
            ),
            None => String::new(),
        };
        if let Some(t) = &tol_note {
            note.push_str(&format!("; {t}"));
            if plan.fold == FoldMode::Interior && !surgery_exact {
                note.push_str("; fold mode exact (the default) makes surgery exact");
            }
        }
        return Err(PruneError::Verification {
            max_abs_diff,
            tolerance,
            note,
        });
    }
    Ok(Verification {
        max_abs_diff,
        n_values: a.numel(),
        tolerance,
        output_scale,
        surgery_exact,
        fold: plan.fold,
        note: tol_note,
    })
}
