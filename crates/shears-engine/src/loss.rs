//! Losses and metrics: pure functions on `[N, K]` logit tensors (PyTorch layout).
//!
//! Every loss returns `(loss, d loss / d input)`, the loss averaged over the batch, computed
//! in f64 and returned as f32.

use shears_ir::Tensor;

use crate::error::{EngineError, Result};

/// Checks that `t` is `[N, K]` and returns `(N, K)`.
fn rows(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    match t.shape() {
        [n, k] if *n > 0 && *k > 0 => Ok((*n, *k)),
        s => Err(EngineError::ShapeMismatch {
            what: format!("{what} must be [N, K]"),
            expected: vec![],
            found: s.to_vec(),
        }),
    }
}

fn check_labels(labels: &[usize], n: usize, k: usize) -> Result<()> {
    if labels.len() != n {
        return Err(EngineError::BatchMismatch {
            what: "labels".into(),
            expected: n,
            found: labels.len(),
        });
    }
    for (index, &label) in labels.iter().enumerate() {
        if label >= k {
            return Err(EngineError::BadLabel {
                index,
                label,
                classes: k,
            });
        }
    }
    Ok(())
}

/// Row-wise log-softmax of `x / t` in f64.
fn log_softmax_row(x: &[f32], t: f64) -> Vec<f64> {
    let m = x
        .iter()
        .fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64 / t));
    let lse = x
        .iter()
        .map(|&v| (v as f64 / t - m).exp())
        .sum::<f64>()
        .ln()
        + m;
    x.iter().map(|&v| v as f64 / t - lse).collect()
}

/// Row-wise softmax of `[N, K]` logits.
///
/// ```
/// use shears_ir::Tensor;
/// let p = shears_engine::softmax(&Tensor::new(vec![1, 2], vec![0.0, 0.0]).unwrap()).unwrap();
/// assert_eq!(p.data(), &[0.5, 0.5]);
/// ```
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    let (_, k) = rows(logits, "softmax input")?;
    let data = logits
        .data()
        .chunks_exact(k)
        .flat_map(|r| log_softmax_row(r, 1.0).into_iter().map(|v| v.exp() as f32))
        .collect();
    Ok(Tensor::new(logits.shape().to_vec(), data)?)
}

/// Cross-entropy of `[N, K]` logits against integer labels, averaged over the batch, with
/// optional label smoothing `eps` (PyTorch's: the target is `(1 - eps) * onehot + eps / K`;
/// pass 0 for none). Returns the loss and its gradient with respect to the logits.
///
/// ```
/// use shears_ir::Tensor;
/// let logits = Tensor::new(vec![1, 2], vec![0.0, 0.0]).unwrap();
/// let (loss, grad) = shears_engine::cross_entropy(&logits, &[1], 0.0).unwrap();
/// assert!((loss - std::f32::consts::LN_2).abs() < 1e-6);
/// assert_eq!(grad.data(), &[0.5, -0.5]);
/// ```
pub fn cross_entropy(
    logits: &Tensor,
    labels: &[usize],
    label_smoothing: f32,
) -> Result<(f32, Tensor)> {
    let (n, k) = rows(logits, "cross-entropy logits")?;
    check_labels(labels, n, k)?;
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(EngineError::Config(format!(
            "label smoothing {label_smoothing} must be in [0, 1]"
        )));
    }
    let eps = label_smoothing as f64;
    let mut loss = 0.0f64;
    let mut grad = vec![0.0f32; n * k];
    for (i, (row, &y)) in logits.data().chunks_exact(k).zip(labels).enumerate() {
        let ls = log_softmax_row(row, 1.0);
        for j in 0..k {
            let q = if j == y { 1.0 - eps } else { 0.0 } + eps / k as f64;
            loss -= q * ls[j];
            grad[i * k + j] = ((ls[j].exp() - q) / n as f64) as f32;
        }
    }
    Ok((
        (loss / n as f64) as f32,
        Tensor::new(logits.shape().to_vec(), grad)?,
    ))
}

/// Mean squared error over all elements; returns the loss and its gradient with respect to
/// `pred`.
///
/// ```
/// use shears_ir::Tensor;
/// let p = Tensor::new(vec![2], vec![1.0, 3.0]).unwrap();
/// let t = Tensor::new(vec![2], vec![1.0, 1.0]).unwrap();
/// let (loss, grad) = shears_engine::mse(&p, &t).unwrap();
/// assert_eq!(loss, 2.0);
/// assert_eq!(grad.data(), &[0.0, 2.0]);
/// ```
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<(f32, Tensor)> {
    if pred.shape() != target.shape() {
        return Err(EngineError::ShapeMismatch {
            what: "mse target".into(),
            expected: pred.shape().to_vec(),
            found: target.shape().to_vec(),
        });
    }
    let m = pred.numel().max(1) as f64;
    let mut loss = 0.0f64;
    let grad = pred
        .data()
        .iter()
        .zip(target.data())
        .map(|(&p, &t)| {
            let d = p as f64 - t as f64;
            loss += d * d;
            (2.0 * d / m) as f32
        })
        .collect();
    Ok(((loss / m) as f32, Tensor::new(pred.shape().to_vec(), grad)?))
}

/// Knowledge-distillation loss settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DistillConfig {
    /// Softmax temperature `T` (> 0); default 4.
    pub temperature: f32,
    /// Weight of the distillation term; the cross-entropy gets `1 - alpha`; default 0.9.
    pub alpha: f32,
    /// Label smoothing of the cross-entropy term; default 0.
    pub label_smoothing: f32,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            temperature: 4.0,
            alpha: 0.9,
            label_smoothing: 0.0,
        }
    }
}

/// Hinton distillation,
/// `alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)`,
/// the KL averaged over the batch. `labels` may be `None` only when `alpha == 1`. Returns the
/// loss and its gradient with respect to the student logits.
pub fn distillation(
    student: &Tensor,
    teacher: &Tensor,
    labels: Option<&[usize]>,
    cfg: &DistillConfig,
) -> Result<(f32, Tensor)> {
    let (n, k) = rows(student, "distillation student logits")?;
    if teacher.shape() != student.shape() {
        return Err(EngineError::ShapeMismatch {
            what: "distillation teacher logits".into(),
            expected: student.shape().to_vec(),
            found: teacher.shape().to_vec(),
        });
    }
    if !(cfg.temperature > 0.0 && cfg.temperature.is_finite()) {
        return Err(EngineError::Config(format!(
            "temperature {} must be positive",
            cfg.temperature
        )));
    }
    if !(0.0..=1.0).contains(&cfg.alpha) {
        return Err(EngineError::Config(format!(
            "alpha {} must be in [0, 1]",
            cfg.alpha
        )));
    }
    let t = cfg.temperature as f64;
    let a = cfg.alpha as f64;
    let mut kl = 0.0f64;
    let mut grad = vec![0.0f32; n * k];
    for i in 0..n {
        let ls = log_softmax_row(&student.data()[i * k..(i + 1) * k], t);
        let lt = log_softmax_row(&teacher.data()[i * k..(i + 1) * k], t);
        for j in 0..k {
            let pt = lt[j].exp();
            kl += pt * (lt[j] - ls[j]);
            // d/ds of T^2 * KL / N is T * (p_s - p_t) / N.
            grad[i * k + j] = (a * t * (ls[j].exp() - pt) / n as f64) as f32;
        }
    }
    let mut loss = a * t * t * kl / n as f64;
    if a < 1.0 {
        let labels = labels.ok_or_else(|| {
            EngineError::Config("distillation with alpha < 1 needs labels".into())
        })?;
        let (ce, g) = cross_entropy(student, labels, cfg.label_smoothing)?;
        loss += (1.0 - a) * ce as f64;
        for (d, s) in grad.iter_mut().zip(g.data()) {
            *d += ((1.0 - a) * *s as f64) as f32;
        }
    }
    Ok((loss as f32, Tensor::new(student.shape().to_vec(), grad)?))
}

/// Fraction of rows whose largest logit (first on ties) is the label.
pub fn accuracy(logits: &Tensor, labels: &[usize]) -> Result<f32> {
    top_k_accuracy(logits, labels, 1)
}

/// Fraction of rows whose label is among the `k` largest logits. A row counts when fewer
/// than `k` logits are strictly larger than the label's, or, for `k = 1`, when the label is
/// the first maximum.
///
/// ```
/// use shears_ir::Tensor;
/// let l = Tensor::new(vec![2, 3], vec![0.1, 0.7, 0.2, 0.5, 0.3, 0.2]).unwrap();
/// assert_eq!(shears_engine::accuracy(&l, &[1, 1]).unwrap(), 0.5);
/// assert_eq!(shears_engine::top_k_accuracy(&l, &[1, 1], 2).unwrap(), 1.0);
/// ```
pub fn top_k_accuracy(logits: &Tensor, labels: &[usize], k: usize) -> Result<f32> {
    let (n, c) = rows(logits, "accuracy logits")?;
    check_labels(labels, n, c)?;
    if k == 0 {
        return Err(EngineError::Config("top-k accuracy needs k >= 1".into()));
    }
    let mut hits = 0usize;
    for (row, &y) in logits.data().chunks_exact(c).zip(labels) {
        let hit = if k == 1 {
            let mut best = 0;
            for j in 1..c {
                if row[j] > row[best] {
                    best = j;
                }
            }
            best == y
        } else {
            row.iter().filter(|&&v| v > row[y]).count() < k
        };
        hits += hit as usize;
    }
    Ok(hits as f32 / n as f32)
}
