//! Whole-model inference of one ONNX file on shears' engine and on ONNX Runtime, side by side:
//! the same file, the same input, the same threads, alternating rounds.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use shears_engine::{Mode, Network};
use shears_ir::Tensor;

use super::{median, pseudo_random};
use crate::model::load_model;
use crate::runtime::{OrtLibrary, OrtModel};
use crate::Error;

/// Settings of [`onnx_vs_ort`].
#[derive(Clone, Debug)]
pub struct OnnxBenchConfig {
    /// Threads of both engines (ONNX Runtime: intra-op threads, one inter-op thread).
    pub threads: usize,
    /// Batch sizes to time.
    pub batches: Vec<usize>,
    /// Timed passes per round and side at batches above 1; the round's time is their median.
    pub iters: usize,
    /// Timed passes per round and side at batch 1.
    pub iters_batch1: usize,
    /// Untimed passes before each round's timed ones.
    pub warmup: usize,
    /// Alternating rounds: shears then ONNX Runtime in even rounds, the other way in odd ones.
    pub rounds: usize,
    /// Whether ONNX Runtime's intra-op threads spin-wait between kernels (its default).
    pub ort_spin: bool,
}

/// One model at one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct OnnxBench {
    /// The ONNX file.
    pub model: String,
    /// Batch size.
    pub batch: usize,
    /// Input shape, batch axis first.
    pub input_shape: Vec<usize>,
    /// shears' median ms per pass, per round.
    pub shears_ms: Vec<f64>,
    /// ONNX Runtime's median ms per pass, per round.
    pub ort_ms: Vec<f64>,
    /// Images per second of shears' median round.
    pub shears_img_s: f64,
    /// Images per second of ONNX Runtime's median round.
    pub ort_img_s: f64,
    /// `shears_img_s / ort_img_s`: above 1, shears is faster.
    pub ratio: f64,
    /// Largest absolute difference between the two outputs on the benchmark input.
    pub max_abs_diff: f32,
}

/// Times inference of the ONNX file at `path` in shears' engine and in ONNX Runtime (`lib`).
///
/// # Errors
/// A file either side cannot load or run, or a zero in the settings.
pub fn onnx_vs_ort(
    path: &Path,
    lib: &OrtLibrary,
    cfg: &OnnxBenchConfig,
) -> Result<Vec<OnnxBench>, Error> {
    if cfg.iters == 0
        || cfg.iters_batch1 == 0
        || cfg.rounds == 0
        || cfg.threads == 0
        || cfg.batches.contains(&0)
    {
        return Err(Error::invalid(
            "the ONNX benchmark needs iters, rounds, threads and batches of at least 1",
        ));
    }
    let model = load_model(path, None)?;
    let [input] = model.graph.inputs()[..] else {
        return Err(Error::invalid(format!(
            "{}: the benchmark feeds one input, the model has {}",
            path.display(),
            model.graph.inputs().len()
        )));
    };
    let per_sample = model.graph.shape(input).to_vec();
    let mut net = Network::new(model.graph, &model.weights)?;
    net.set_threads(Some(cfg.threads))?;
    let mut ort = OrtModel::from_file(lib, path, cfg.threads, cfg.ort_spin)?;
    let mut out = Vec::new();
    for &b in &cfg.batches {
        let mut shape = vec![b];
        shape.extend_from_slice(&per_sample);
        let n: usize = shape.iter().product();
        let x = Tensor::new(shape.clone(), pseudo_random(n, 7)).expect("sizes agree");
        let ours = net.forward(&x, Mode::Eval)?;
        let theirs = ort.run(&x)?;
        let max_abs_diff = ours
            .data()
            .iter()
            .zip(theirs.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let iters = if b == 1 { cfg.iters_batch1 } else { cfg.iters };
        let mut shears_ms = Vec::new();
        let mut ort_ms = Vec::new();
        for round in 0..cfg.rounds {
            for side in [round % 2, 1 - round % 2] {
                if side == 0 {
                    shears_ms.push(time_ms(iters, cfg.warmup, || {
                        net.forward(&x, Mode::Eval).map(drop)
                    })?);
                } else {
                    ort_ms.push(time_ms(iters, cfg.warmup, || ort.run(&x).map(drop))?);
                }
            }
        }
        let s = median(shears_ms.clone());
        let o = median(ort_ms.clone());
        out.push(OnnxBench {
            model: path.display().to_string(),
            batch: b,
            input_shape: shape,
            shears_img_s: b as f64 / (s / 1e3),
            ort_img_s: b as f64 / (o / 1e3),
            ratio: o / s,
            shears_ms,
            ort_ms,
            max_abs_diff,
        });
    }
    Ok(out)
}

/// Median ms of `iters` calls of `f` after `warmup` untimed ones.
fn time_ms<E, F: FnMut() -> Result<(), E>>(
    iters: usize,
    warmup: usize,
    mut f: F,
) -> Result<f64, Error>
where
    Error: From<E>,
{
    for _ in 0..warmup {
        f()?;
    }
    let mut ts = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(ts))
}
