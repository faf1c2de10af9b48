//! `shears bench engine --onnx FILE...`: whole ONNX models on shears' engine against ONNX
//! Runtime (the same files), rendered as text, markdown and JSON.

use anyhow::Result;
use serde::Serialize;
use shears::bench::onnx::{onnx_vs_ort, OnnxBench, OnnxBenchConfig};
use shears::runtime::OrtLibrary;

use crate::args::BenchEngineArgs;

/// Every model at every batch size, and the summary per batch size.
#[derive(Debug, Serialize)]
pub struct OnnxReport {
    /// The ONNX Runtime library the comparison ran against.
    pub ort: OrtLibrary,
    /// Per model and batch size.
    pub models: Vec<OnnxBench>,
    /// Per batch size: geometric mean and minimum of the ratios.
    pub summary: Vec<BatchSummary>,
}

/// The ratios of one batch size over the models.
#[derive(Debug, Serialize)]
pub struct BatchSummary {
    /// Batch size.
    pub batch: usize,
    /// Geometric mean of shears / ONNX Runtime throughput.
    pub geomean_ratio: f64,
    /// The smallest ratio.
    pub min_ratio: f64,
    /// The model with the smallest ratio.
    pub min_model: String,
}

/// Runs every `--onnx` model through [`onnx_vs_ort`].
pub fn run(a: &BenchEngineArgs) -> Result<OnnxReport> {
    // As a library error, so that a missing library is bad input (exit code 2).
    let lib = OrtLibrary::load(a.ort_lib.as_deref()).map_err(shears::Error::from)?;
    let cfg = OnnxBenchConfig {
        threads: a.threads,
        batches: a.batches.clone(),
        iters: a.iters,
        iters_batch1: a.iters_batch1,
        warmup: a.warmup,
        rounds: a.rounds,
        ort_spin: !a.ort_no_spin,
    };
    let mut models = Vec::new();
    for path in &a.onnx {
        if !a.json {
            eprintln!(
                "onnx: {} against ONNX Runtime {}",
                path.display(),
                lib.version
            );
        }
        models.extend(onnx_vs_ort(path, &lib, &cfg)?);
    }
    let summary = a
        .batches
        .iter()
        .filter_map(|&b| summarize(&models, b))
        .collect();
    Ok(OnnxReport {
        ort: lib,
        models,
        summary,
    })
}

fn summarize(models: &[OnnxBench], batch: usize) -> Option<BatchSummary> {
    let rs: Vec<&OnnxBench> = models.iter().filter(|m| m.batch == batch).collect();
    let min = rs.iter().min_by(|x, y| x.ratio.total_cmp(&y.ratio))?;
    let log_mean = rs.iter().map(|m| m.ratio.ln()).sum::<f64>() / rs.len() as f64;
    Some(BatchSummary {
        batch,
        geomean_ratio: log_mean.exp(),
        min_ratio: min.ratio,
        min_model: min.model.clone(),
    })
}

/// `a / b / c.onnx` -> `c`.
fn short(model: &str) -> &str {
    let file = model.rsplit('/').next().unwrap_or(model);
    file.strip_suffix(".onnx").unwrap_or(file)
}

/// One line per model and batch size, then the summaries.
pub fn text(r: &OnnxReport) -> String {
    let mut s = String::new();
    for m in &r.models {
        s.push_str(&format!(
            "{:<20} batch {:>4}  shears {:>9.1} img/s  onnxruntime {:>9.1} img/s  {:.2}x\n",
            short(&m.model),
            m.batch,
            m.shears_img_s,
            m.ort_img_s,
            m.ratio
        ));
    }
    for b in &r.summary {
        s.push_str(&format!(
            "batch {:>4}: geometric mean {:.2}x, lowest {:.2}x ({})\n",
            b.batch,
            b.geomean_ratio,
            b.min_ratio,
            short(&b.min_model)
        ));
    }
    s
}

/// The markdown section: settings, one row per model and batch size with every round, the
/// summaries.
pub fn markdown(r: &OnnxReport, a: &BenchEngineArgs) -> String {
    let mut md = String::from("## Whole models against ONNX Runtime\n\n");
    md.push_str(&format!(
        "The same ONNX file in shears' engine and in ONNX Runtime {} (`{}`; intra-op threads = \
         {} = shears' threads, one inter-op thread, all graph optimisations, spin-waiting {}), the same \
         pseudo-random input. {} rounds per model and batch size, alternating which side runs \
         first; each round the median of {} timed passes ({} at batch 1) after {} warm-up. The \
         ratio is shears' images/s over ONNX Runtime's, of the median rounds (> 1: shears is \
         faster). `max diff` is the largest absolute difference of the two outputs.\n\n",
        r.ort.version,
        r.ort.path.display(),
        a.threads,
        if a.ort_no_spin { "off" } else { "on (the default)" },
        a.rounds,
        a.iters,
        a.iters_batch1,
        a.warmup
    ));
    md.push_str(
        "| model | batch | shears img/s | ONNX Runtime img/s | ratio | shears ms per round | \
         ONNX Runtime ms per round | max diff |\n|---|---|---|---|---|---|---|---|\n",
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for m in &r.models {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.2}x | {} | {} | {:.1e} |\n",
            short(&m.model),
            m.batch,
            m.shears_img_s,
            m.ort_img_s,
            m.ratio,
            list(&m.shears_ms),
            list(&m.ort_ms),
            m.max_abs_diff
        ));
    }
    md.push_str(
        "\n| batch | geometric mean ratio | lowest ratio | lowest model |\n|---|---|---|---|\n",
    );
    for b in &r.summary {
        md.push_str(&format!(
            "| {} | {:.2}x | {:.2}x | {} |\n",
            b.batch,
            b.geomean_ratio,
            b.min_ratio,
            short(&b.min_model)
        ));
    }
    md.push('\n');
    md
}
