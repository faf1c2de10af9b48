//! Evaluation of a model on a dataset: top-1, top-5, per-class accuracy, loss and throughput.

use std::time::Instant;

use serde::Serialize;
use shears_data::{Dataset, Loader, LoaderConfig, Normalize, Transform};
use shears_engine::{Mode, Network};
use shears_ir::Tensor;

use crate::progress::{Progress, Verbosity};
use crate::zoo::Preprocess;
use crate::Error;

/// How to evaluate.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// Images per batch; default 250.
    pub batch_size: usize,
    /// Evaluate only the first `limit` images; default all.
    pub limit: Option<usize>,
    /// Progress display.
    pub verbosity: Verbosity,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            batch_size: 250,
            limit: None,
            verbosity: Verbosity::Normal,
        }
    }
}

/// Accuracy of one class.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassAccuracy {
    /// Class name.
    pub class: String,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Images of this class.
    pub total: usize,
    /// `correct / total` in percent.
    pub accuracy: f64,
}

/// The result of [`evaluate`].
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Dataset name.
    pub dataset: String,
    /// Images evaluated.
    pub images: usize,
    /// Correct top-1 predictions.
    pub correct: usize,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent.
    pub top5: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Per-class accuracy.
    pub per_class: Vec<ClassAccuracy>,
    /// Wall-clock seconds of the forward passes (input conversion included).
    pub seconds: f64,
    /// Images per second.
    pub images_per_s: f64,
    /// Predicted class of every image, in dataset order.
    #[serde(skip)]
    pub predictions: Vec<u8>,
    /// Transforms applied to fit the dataset to the model input (e.g. grey to RGB, padding).
    pub adapted: Vec<String>,
}

/// The loader normalisation for a model's preprocessing, broadcast to `channels`.
pub fn normalize_for(pre: &Preprocess, channels: usize) -> Normalize {
    let expand = |v: &[f32], default: f32| -> Vec<f32> {
        match v.len() {
            0 => vec![default; channels],
            1 => vec![v[0]; channels],
            _ => v.to_vec(),
        }
    };
    Normalize {
        scale: pre.scale,
        mean: expand(&pre.mean, 0.0),
        std: expand(&pre.std, 1.0),
    }
}

/// Transforms that make a dataset's images fit a model input of shape `[C, H, W]`: grey to RGB
/// when the model wants three channels, centred zero padding when the images are smaller (for
/// example 28x28 MNIST into a 32x32 CIFAR network), bilinear resize when they are larger.
pub fn input_transforms(ds: &Dataset, input: &[usize]) -> Result<Vec<Transform>, Error> {
    let [c, h, w] = input else {
        return Err(Error::invalid(format!(
            "model input shape {input:?} is not an image [C, H, W]"
        )));
    };
    let mut t = Vec::new();
    match (ds.c, *c) {
        (a, b) if a == b => {}
        (1, 3) => t.push(Transform::GreyToRgb),
        (a, b) => {
            return Err(Error::invalid(format!(
                "dataset {} has {a} channels but the model expects {b}",
                ds.name
            )))
        }
    }
    if (ds.h, ds.w) != (*h, *w) {
        if ds.h <= *h && ds.w <= *w {
            t.push(Transform::Pad { to_h: *h, to_w: *w });
        } else {
            t.push(Transform::Resize { h: *h, w: *w });
        }
    }
    Ok(t)
}

/// A short label for a transform, for reports.
pub fn describe_transform(t: &Transform) -> String {
    match t {
        Transform::PadCrop { pad } => format!("pad-crop {pad}"),
        Transform::HFlip => "horizontal flip".into(),
        Transform::GreyToRgb => "grey to rgb".into(),
        Transform::Pad { to_h, to_w } => format!("zero-pad to {to_h}x{to_w}"),
        Transform::Resize { h, w } => format!("resize to {h}x{w}"),
    }
}

/// Converts a loader batch to an NCHW tensor.
pub fn batch_tensor(b: &shears_data::Batch) -> Tensor {
    Tensor::new(vec![b.n, b.c, b.h, b.w], b.images.clone())
        .expect("a loader batch holds n*c*h*w values")
}

/// Evaluates `net` on `ds` in eval mode.
pub fn evaluate(
    net: &mut Network,
    ds: &Dataset,
    pre: &Preprocess,
    cfg: &EvalConfig,
) -> Result<EvalReport, Error> {
    if cfg.batch_size == 0 {
        return Err(Error::invalid("batch size must be at least 1"));
    }
    let input_id = net.graph().inputs()[0];
    let input_shape = net.graph().shape(input_id).to_vec();
    let out_shape = net.graph().shape(net.graph().outputs()[0]).to_vec();
    let n_out = out_shape.iter().product::<usize>();
    if n_out < ds.n_classes() {
        return Err(Error::invalid(format!(
            "the model has {n_out} outputs but dataset {} has {} classes",
            ds.name,
            ds.n_classes()
        )));
    }
    let subset;
    let ds = match cfg.limit {
        Some(n) if n < ds.len() => {
            subset = ds.take(n);
            &subset
        }
        _ => ds,
    };
    net.check_batch(cfg.batch_size.min(ds.len()).max(1))?;
    let transforms = input_transforms(ds, &input_shape)?;
    let loader_cfg = LoaderConfig::new(cfg.batch_size)
        .with_normalize(normalize_for(pre, input_shape[0]))
        .with_transforms(transforms.clone());
    let loader = Loader::new(ds, loader_cfg)?;
    let bar = Progress::new(ds.len() as u64, "eval", cfg.verbosity);
    let mut correct = 0usize;
    let mut top5 = 0usize;
    let mut loss = 0f64;
    let k = ds.n_classes();
    let mut per_class = vec![(0usize, 0usize); k];
    let mut predictions = Vec::with_capacity(ds.len());
    let start = Instant::now();
    for batch in loader {
        let x = batch_tensor(&batch);
        let logits = net.forward(&x, Mode::Eval)?;
        let l = logits.data();
        for (i, &label) in batch.labels.iter().enumerate() {
            let row = &l[i * n_out..(i + 1) * n_out];
            let label = label as usize;
            let pred = argmax(row);
            predictions.push(pred as u8);
            let target = row[label];
            let rank = row.iter().filter(|&&v| v > target).count();
            correct += usize::from(pred == label);
            top5 += usize::from(rank < 5);
            loss += log_softmax_at(row, label);
            per_class[label].1 += 1;
            per_class[label].0 += usize::from(pred == label);
        }
        bar.inc(batch.n as u64);
        bar.set_message(format!(
            "top-1 {:.2}%",
            100.0 * correct as f64 / predictions.len() as f64
        ));
    }
    let seconds = start.elapsed().as_secs_f64();
    let n = predictions.len();
    bar.finish("");
    let pct = |a: usize, b: usize| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    Ok(EvalReport {
        dataset: ds.name.clone(),
        images: n,
        correct,
        top1: pct(correct, n),
        top5: pct(top5, n),
        loss: if n == 0 { 0.0 } else { loss / n as f64 },
        per_class: per_class
            .iter()
            .enumerate()
            .map(|(c, &(ok, tot))| ClassAccuracy {
                class: ds.classes.get(c).cloned().unwrap_or_else(|| c.to_string()),
                correct: ok,
                total: tot,
                accuracy: pct(ok, tot),
            })
            .collect(),
        seconds,
        images_per_s: if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        },
        predictions,
        adapted: transforms.iter().map(describe_transform).collect(),
    })
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// `-log softmax(row)[label]`, computed stably in f64.
fn log_softmax_at(row: &[f32], label: usize) -> f64 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
    -(row[label] as f64 - m - s.ln())
}
