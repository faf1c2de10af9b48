//! CDP: the penalty terms of methods §3.4, their values and their analytic gradients.
//!
//! Every function here works on one layer's filter skeleton `fs`, `C` filters of `kk = kh * kw`
//! values each, filter-major (`fs[c * kk + p]`). Sums are accumulated in f64.
//!
//! No term takes the square root of a square: per-filter magnitudes are sums of absolute values
//! (`n_c = Σ |FS[c, h, w]|`), whose gradient is `sign(FS)` with `sign(0) = 0`, so a dead filter
//! gets a zero gradient, never the `0 · ∞ = NaN` of the released code's `sqrt(x²)`. The two
//! genuine norms (`‖FS‖_F` of `R_l2` and `‖n‖_2` of `R_gl`) take a zero gradient when they are
//! zero, and the angular similarity takes the zero subgradient where `|cos| = 1` (where
//! `arccos` is not differentiable).

use serde::{Deserialize, Serialize};

/// How the filter-level and stripe-level terms of `R_prop` are weighted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PenaltyMode {
    /// The released code's behaviour (methods §3.4): the adaptive weights never run, so
    /// `R_prop = Σ_l prop · (G_l + L1_l) = 2 · prop · Σ_l ‖FS_l‖_1`. The default.
    #[default]
    AsReleased,
    /// The paper's intent: per layer, `a_l = prop · S_l(t-1) / S_l(t)` weighs the stripe-level
    /// `L1_l` and `b_l = prop · S_l(t) / S_l(t-1)` the filter-level `G_l`, with `S_l` the
    /// layer's texture similarity; `S_l(t-1)` is a detached copy kept from the previous step
    /// (on the first step, or when either similarity is 0, both weights are `prop`). The
    /// weights are constants for the gradient.
    Adaptive,
}

/// The CDP coefficients (methods §3.4). A zero coefficient switches its term off; like the
/// released code, no term is applied when `prop` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CdpConfig {
    /// Strength of `R_prop`, the CDP term proper.
    pub prop: f32,
    /// Weighting of `R_prop`'s two parts.
    pub mode: PenaltyMode,
    /// `R_var`: angular similarity of every conv weight to its per-input-channel mean filter.
    pub var: f32,
    /// `R_var2`: angular ("texture") similarity of each skeleton to its layer's mean skeleton.
    pub var2: f32,
    /// `R_l2`: Frobenius norm (not squared) of each skeleton.
    pub l2: f32,
    /// `R_gl`: ℓ2 norm of each layer's per-filter ℓ1 norms.
    pub gl: f32,
}

impl CdpConfig {
    /// `R_prop` only, as released, with strength `prop`.
    pub fn new(prop: f32) -> Self {
        CdpConfig {
            prop,
            mode: PenaltyMode::AsReleased,
            var: 0.0,
            var2: 0.0,
            l2: 0.0,
            gl: 0.0,
        }
    }

    /// Checks that every coefficient is finite and non-negative, naming the one at fault.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("prop", self.prop),
            ("var", self.var),
            ("var2", self.var2),
            ("l2", self.l2),
            ("gl", self.gl),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "CDP coefficient {name} = {v} must be finite and non-negative"
                ));
            }
        }
        Ok(())
    }

    /// Whether any penalty is applied (the released code applies none when `prop` is 0).
    pub fn is_active(&self) -> bool {
        self.prop > 0.0
    }
}

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Per-filter ℓ1 norms `n_c = Σ_{h,w} |FS[c, h, w]|`.
pub fn filter_l1(fs: &[f32], kk: usize) -> Vec<f32> {
    assert!(
        kk > 0 && fs.len().is_multiple_of(kk),
        "skeleton length is a multiple of kh*kw"
    );
    fs.chunks(kk)
        .map(|f| f.iter().map(|&x| f64::from(x.abs())).sum::<f64>() as f32)
        .collect()
}

/// Angular similarity of vectors `f_c` (rows of `rows`, each `len` long) to a vector `m`:
/// `a_c = 1 - arccos(cos_c) / π`, `cos_c = <f_c, m> / (|f_c| |m| + eps)`. With `grad` =
/// `Some((coef, d_rows, d_m))`, adds `coef · ∂(Σ a_c)/∂f_c` (with `m` held fixed) to `d_rows`
/// and `coef · ∂(Σ a_c)/∂m` to `d_m`.
fn angular(
    rows: &[f32],
    len: usize,
    m: &[f64],
    eps: f64,
    grad: Option<(f64, &mut [f32], &mut [f64])>,
) -> Vec<f32> {
    let nm = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut out = Vec::with_capacity(rows.len() / len);
    let mut grad = grad;
    for (c, f) in rows.chunks(len).enumerate() {
        let nf = f
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        let u: f64 = f.iter().zip(m).map(|(&x, &y)| f64::from(x) * y).sum();
        let d = nf * nm + eps;
        let cos = (u / d).clamp(-1.0, 1.0);
        out.push((1.0 - cos.acos() / std::f64::consts::PI) as f32);
        if let Some((coef, d_rows, d_m)) = grad.as_mut() {
            let s = 1.0 - cos * cos;
            if s <= 1e-12 {
                continue; // |cos| = 1: arccos has no derivative; take the zero subgradient
            }
            let da = *coef / (std::f64::consts::PI * s.sqrt());
            let row = &mut d_rows[c * len..(c + 1) * len];
            for p in 0..len {
                let x = f64::from(f[p]);
                let mut g_f = m[p] / d;
                if nf > 0.0 {
                    g_f -= u / (d * d) * nm * x / nf;
                }
                row[p] += (da * g_f) as f32;
                let mut g_m = x / d;
                if nm > 0.0 {
                    g_m -= u / (d * d) * nf * m[p] / nm;
                }
                d_m[p] += da * g_m;
            }
        }
    }
    out
}

/// The mean skeleton `m = (1/C) Σ_c FS_c`.
pub fn mean_skeleton(fs: &[f32], kk: usize) -> Vec<f32> {
    mean_f64(fs, kk, fs.len() / kk)
        .iter()
        .map(|&x| x as f32)
        .collect()
}

/// Texture similarities `a_c` of each filter's skeleton to the layer-mean skeleton (eps 1e-7,
/// as released); the layer similarity is `S_l = Σ_c a_c`.
pub fn similarities(fs: &[f32], kk: usize) -> Vec<f32> {
    let c = fs.len() / kk;
    let m = mean_f64(fs, kk, c);
    angular(fs, kk, &m, 1e-7, None)
}

fn mean_f64(fs: &[f32], kk: usize, c: usize) -> Vec<f64> {
    let mut m = vec![0f64; kk];
    for f in fs.chunks(kk) {
        for (a, &x) in m.iter_mut().zip(f) {
            *a += f64::from(x);
        }
    }
    m.iter_mut().for_each(|x| *x /= c as f64);
    m
}

/// `S_l` and, scaled by `coef`, its gradient added to `grad` (through the mean too).
fn similarity_with_grad(fs: &[f32], kk: usize, coef: f64, grad: &mut [f32]) -> f64 {
    let c = fs.len() / kk;
    let m = mean_f64(fs, kk, c);
    let mut d_m = vec![0f64; kk];
    let a = angular(fs, kk, &m, 1e-7, Some((coef, grad, &mut d_m)));
    for row in grad.chunks_mut(kk) {
        for (g, dm) in row.iter_mut().zip(&d_m) {
            *g += (dm / c as f64) as f32;
        }
    }
    a.iter().map(|&x| f64::from(x)).sum()
}

/// `R_var`'s similarity for one conv weight `w` (`[o, i, kh, kw]`, flattened): each filter
/// against the mean filter that holds, per input channel, the mean of `w` over filters and
/// positions (eps 1e-8). With `grad`, adds `coef · ∂/∂w` to it.
pub fn weight_similarity(w: &[f32], shape: [usize; 4], grad: Option<(f64, &mut [f32])>) -> f64 {
    let [o, i, kh, kw] = shape;
    let kk = kh * kw;
    let len = i * kk;
    assert_eq!(w.len(), o * len, "weight matches its shape");
    let mut per_in = vec![0f64; i];
    for f in w.chunks(len) {
        for (ci, s) in per_in.iter_mut().enumerate() {
            *s += f[ci * kk..(ci + 1) * kk]
                .iter()
                .map(|&x| f64::from(x))
                .sum::<f64>();
        }
    }
    let denom = (o * kk) as f64;
    let m: Vec<f64> = (0..len).map(|p| per_in[p / kk] / denom).collect();
    match grad {
        None => angular(w, len, &m, 1e-8, None)
            .iter()
            .map(|&x| f64::from(x))
            .sum(),
        Some((coef, g)) => {
            let mut d_m = vec![0f64; len];
            let a = angular(w, len, &m, 1e-8, Some((coef, g, &mut d_m)));
            let mut d_in = vec![0f64; i];
            for (p, dm) in d_m.iter().enumerate() {
                d_in[p / kk] += dm;
            }
            for row in g.chunks_mut(len) {
                for (p, x) in row.iter_mut().enumerate() {
                    *x += (d_in[p / kk] / denom) as f32;
                }
            }
            a.iter().map(|&x| f64::from(x)).sum()
        }
    }
}

/// The value of each CDP term, summed over layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PenaltyValue {
    /// `R_prop`.
    pub prop: f64,
    /// `R_var`.
    pub var: f64,
    /// `R_var2`.
    pub var2: f64,
    /// `R_l2`.
    pub l2: f64,
    /// `R_gl`.
    pub gl: f64,
}

impl PenaltyValue {
    /// The sum of the terms.
    pub fn total(&self) -> f64 {
        self.prop + self.var + self.var2 + self.l2 + self.gl
    }
}

/// One layer's penalty on its skeleton: adds the gradients of `R_prop`, `R_var2`, `R_l2` and
/// `R_gl` to `grad` and returns their values. `prev_similarity` is `S_l(t-1)` for
/// [`PenaltyMode::Adaptive`]; the layer's current `S_l(t)` is returned for the next step.
pub fn skeleton_penalty(
    cfg: &CdpConfig,
    fs: &[f32],
    kk: usize,
    prev_similarity: Option<f64>,
    grad: &mut [f32],
) -> (PenaltyValue, f64) {
    assert_eq!(fs.len(), grad.len(), "gradient matches the skeleton");
    let mut v = PenaltyValue::default();
    if !cfg.is_active() {
        return (v, similarities(fs, kk).iter().map(|&x| f64::from(x)).sum());
    }
    let norms = filter_l1(fs, kk);
    let l1: f64 = norms.iter().map(|&x| f64::from(x)).sum();
    // G_l = Σ_c n_c, computed from the absolute sums directly (never sqrt(n_c²)).
    let g = l1;
    // S_l(t), with R_var2's gradient when asked.
    let s_now = if cfg.var2 > 0.0 {
        let s = similarity_with_grad(fs, kk, f64::from(cfg.var2), grad);
        v.var2 = f64::from(cfg.var2) * s;
        s
    } else {
        similarities(fs, kk).iter().map(|&x| f64::from(x)).sum()
    };
    let prop = f64::from(cfg.prop);
    let (a, b) = match (cfg.mode, prev_similarity) {
        (PenaltyMode::Adaptive, Some(prev)) if prev > 0.0 && s_now > 0.0 => {
            (prop * prev / s_now, prop * s_now / prev)
        }
        _ => (prop, prop),
    };
    v.prop = b * g + a * l1;
    // d(b·G + a·L1)/dFS = (a + b) · sign(FS).
    let k = (a + b) as f32;
    for (gr, &x) in grad.iter_mut().zip(fs) {
        *gr += k * sign(x);
    }
    if cfg.l2 > 0.0 {
        let n = fs
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        v.l2 = f64::from(cfg.l2) * n;
        if n > 0.0 {
            for (gr, &x) in grad.iter_mut().zip(fs) {
                *gr += (f64::from(cfg.l2) * f64::from(x) / n) as f32;
            }
        }
    }
    if cfg.gl > 0.0 {
        let n = norms
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        v.gl = f64::from(cfg.gl) * n;
        if n > 0.0 {
            for (c, row) in grad.chunks_mut(kk).enumerate() {
                let k = f64::from(cfg.gl) * f64::from(norms[c]) / n;
                for (gr, &x) in row.iter_mut().zip(&fs[c * kk..(c + 1) * kk]) {
                    *gr += (k * f64::from(sign(x))) as f32;
                }
            }
        }
    }
    (v, s_now)
}
