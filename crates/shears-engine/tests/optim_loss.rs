//! Optimizers against PyTorch's update rules (re-derived in f64), checkpoint round trips,
//! and losses against plain f64 formulas and finite differences.

use shears_engine::{
    accuracy, cross_entropy, distillation, mse, softmax, top_k_accuracy, Adam, AdamConfig,
    AdamState, DistillConfig, Optimizer, Sgd, SgdConfig, SgdState,
};
use shears_ir::Tensor;

const GRADS: [[f32; 3]; 4] = [
    [0.5, -1.0, 0.25],
    [0.1, 0.3, -0.7],
    [-0.4, 0.2, 0.9],
    [1.5, -0.5, 0.05],
];
const P0: [f32; 3] = [1.0, -2.0, 0.5];

/// PyTorch SGD (dampening 0) in f64.
fn sgd_ref(lr: f64, mom: f64, wd: f64, nesterov: bool) -> Vec<f64> {
    let mut p: Vec<f64> = P0.iter().map(|&v| v as f64).collect();
    let mut buf: Option<Vec<f64>> = None;
    for g in GRADS {
        let d: Vec<f64> = g.iter().zip(&p).map(|(&g, &p)| g as f64 + wd * p).collect();
        let step = if mom != 0.0 {
            let b = match buf.take() {
                None => d.clone(),
                Some(b) => b.iter().zip(&d).map(|(b, d)| mom * b + d).collect(),
            };
            let s = if nesterov {
                d.iter().zip(&b).map(|(d, b)| d + mom * b).collect()
            } else {
                b.clone()
            };
            buf = Some(b);
            s
        } else {
            d
        };
        p.iter_mut().zip(&step).for_each(|(p, s)| *p -= lr * s);
    }
    p
}

fn run_opt(opt: &mut dyn Optimizer, steps: std::ops::Range<usize>, p: &mut [f32]) {
    for g in &GRADS[steps] {
        opt.begin_step();
        opt.update("w", p, g).unwrap();
    }
}

fn close(a: &[f32], e: &[f64], tol: f64) {
    for (x, y) in a.iter().zip(e) {
        assert!(
            (*x as f64 - y).abs() <= tol * (1.0 + y.abs()),
            "{a:?} vs {e:?}"
        );
    }
}

#[test]
fn sgd_matches_pytorch_rules() {
    for (mom, wd, nesterov) in [
        (0.0, 0.0, false),
        (0.0, 0.1, false),
        (0.9, 0.0, false),
        (0.9, 5e-4, false),
        (0.9, 0.1, true),
    ] {
        let mut cfg = SgdConfig::new(0.1).with_momentum(mom).with_weight_decay(wd);
        cfg.nesterov = nesterov;
        let mut opt = Sgd::new(cfg).unwrap();
        let mut p = P0;
        run_opt(&mut opt, 0..4, &mut p);
        close(&p, &sgd_ref(0.1, mom as f64, wd as f64, nesterov), 1e-6);
    }
    assert!(
        Sgd::new(SgdConfig::new(0.1).with_nesterov()).is_err(),
        "nesterov without momentum"
    );
    assert!(Sgd::new(SgdConfig::new(-1.0)).is_err());
}

/// PyTorch Adam / AdamW in f64.
fn adam_ref(lr: f64, b1: f64, b2: f64, eps: f64, wd: f64, decoupled: bool) -> Vec<f64> {
    let mut p: Vec<f64> = P0.iter().map(|&v| v as f64).collect();
    let mut m = [0.0f64; 3];
    let mut v = [0.0f64; 3];
    for (t, g) in GRADS.iter().enumerate() {
        let t = (t + 1) as i32;
        for i in 0..3 {
            let mut gi = g[i] as f64;
            if decoupled {
                p[i] *= 1.0 - lr * wd;
            } else {
                gi += wd * p[i];
            }
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let mh = m[i] / (1.0 - b1.powi(t));
            let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
            p[i] -= lr * mh / denom;
        }
    }
    p
}

#[test]
fn adam_and_adamw_match_pytorch_rules() {
    let cases = [
        (AdamConfig::new(0.01), 0.0, false),
        (
            AdamConfig::new(0.01)
                .with_weight_decay(0.1)
                .with_betas(0.8, 0.99),
            0.1,
            false,
        ),
        (AdamConfig::adamw(0.01, 0.05), 0.05, true),
    ];
    for (cfg, wd, dec) in cases {
        let (b1, b2, eps) = (cfg.beta1 as f64, cfg.beta2 as f64, cfg.eps as f64);
        let mut opt = Adam::new(cfg.clone()).unwrap();
        let mut p = P0;
        run_opt(&mut opt, 0..4, &mut p);
        close(&p, &adam_ref(0.01, b1, b2, eps, wd, dec), 1e-5);
    }
    assert!(Adam::new(AdamConfig::new(0.1).with_betas(1.0, 0.9)).is_err());
}

#[test]
fn optimizer_state_round_trips_bit_exactly() {
    // SGD: two steps, checkpoint through JSON, two more, equals four uninterrupted.
    let cfg = SgdConfig::new(0.05)
        .with_momentum(0.9)
        .with_nesterov()
        .with_weight_decay(1e-3);
    let mut a = Sgd::new(cfg.clone()).unwrap();
    let mut pa = P0;
    run_opt(&mut a, 0..4, &mut pa);
    let mut b = Sgd::new(cfg.clone()).unwrap();
    let mut pb = P0;
    run_opt(&mut b, 0..2, &mut pb);
    let json = serde_json::to_string(b.state()).unwrap();
    let mut c = Sgd::new(cfg).unwrap();
    c.load_state(serde_json::from_str::<SgdState>(&json).unwrap());
    run_opt(&mut c, 2..4, &mut pb);
    assert_eq!(pa, pb);
    // Adam likewise.
    let cfg = AdamConfig::adamw(3e-3, 1e-2);
    let mut a = Adam::new(cfg.clone()).unwrap();
    let mut pa = P0;
    run_opt(&mut a, 0..4, &mut pa);
    let mut b = Adam::new(cfg.clone()).unwrap();
    let mut pb = P0;
    run_opt(&mut b, 0..2, &mut pb);
    let json = serde_json::to_string(b.state()).unwrap();
    let mut c = Adam::new(cfg).unwrap();
    c.load_state(serde_json::from_str::<AdamState>(&json).unwrap());
    run_opt(&mut c, 2..4, &mut pb);
    assert_eq!(pa, pb);
    let mut lr = Adam::new(AdamConfig::new(0.1)).unwrap();
    lr.set_lr(0.5);
    assert_eq!(lr.lr(), 0.5);
}

fn t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), v.to_vec()).unwrap()
}

const LOGITS: [f32; 8] = [1.0, -0.5, 2.0, 0.3, -1.2, 0.4, 0.0, 2.5];

fn log_softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let l = x.iter().map(|v| (v - m).exp()).sum::<f64>().ln() + m;
    x.iter().map(|v| v - l).collect()
}

/// PyTorch's smoothed cross-entropy: `(1 - eps) * nll + eps * mean_k(-log p_k)`.
fn ce_ref(x: &[f64], labels: &[usize], k: usize, eps: f64) -> f64 {
    let n = labels.len();
    let mut s = 0.0;
    for i in 0..n {
        let ls = log_softmax(&x[i * k..(i + 1) * k]);
        s += (1.0 - eps) * -ls[labels[i]] + eps * ls.iter().map(|v| -v).sum::<f64>() / k as f64;
    }
    s / n as f64
}

fn fd(f: impl Fn(&[f64]) -> f64, x: &[f32]) -> Vec<f64> {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    (0..x.len())
        .map(|i| {
            let h = 1e-6;
            let mut a = x.clone();
            a[i] += h;
            let mut b = x.clone();
            b[i] -= h;
            (f(&a) - f(&b)) / (2.0 * h)
        })
        .collect()
}

#[test]
fn cross_entropy_value_and_gradient() {
    let logits = t(&[2, 4], &LOGITS);
    let labels = [2, 3];
    for eps in [0.0, 0.1] {
        let (loss, g) = cross_entropy(&logits, &labels, eps as f32).unwrap();
        let x: Vec<f64> = LOGITS.iter().map(|&v| v as f64).collect();
        assert!((loss as f64 - ce_ref(&x, &labels, 4, eps)).abs() < 1e-6);
        close(g.data(), &fd(|x| ce_ref(x, &labels, 4, eps), &LOGITS), 1e-5);
    }
    assert!(
        cross_entropy(&logits, &[0, 4], 0.0).is_err(),
        "label out of range"
    );
    assert!(cross_entropy(&logits, &[0], 0.0).is_err(), "label count");
}

#[test]
fn mse_value_and_gradient() {
    let p = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let q = t(&[2, 2], &[0.5, 2.0, 1.0, 5.0]);
    let (l, g) = mse(&p, &q).unwrap();
    assert!((l - (0.25 + 0.0 + 4.0 + 1.0) / 4.0).abs() < 1e-7);
    assert_eq!(g.data(), &[0.25, 0.0, 1.0, -0.5]);
    assert!(mse(&p, &t(&[4], &[0.0; 4])).is_err());
}

#[test]
fn distillation_value_and_gradient() {
    let s = t(&[2, 4], &LOGITS);
    let tl: Vec<f32> = LOGITS.iter().rev().map(|v| v * 0.7).collect();
    let te = t(&[2, 4], &tl);
    let labels = [1, 0];
    let cfg = DistillConfig {
        temperature: 3.0,
        alpha: 0.7,
        label_smoothing: 0.0,
    };
    let reference = |x: &[f64]| {
        let tt = 3.0;
        let mut kl = 0.0;
        for i in 0..2 {
            let ls = log_softmax(
                &x[i * 4..(i + 1) * 4]
                    .iter()
                    .map(|v| v / tt)
                    .collect::<Vec<_>>(),
            );
            let lt = log_softmax(
                &tl[i * 4..(i + 1) * 4]
                    .iter()
                    .map(|&v| v as f64 / tt)
                    .collect::<Vec<_>>(),
            );
            for k in 0..4 {
                kl += lt[k].exp() * (lt[k] - ls[k]);
            }
        }
        0.7 * tt * tt * kl / 2.0 + 0.3 * ce_ref(x, &labels, 4, 0.0)
    };
    let (l, g) = distillation(&s, &te, Some(&labels), &cfg).unwrap();
    let x: Vec<f64> = LOGITS.iter().map(|&v| v as f64).collect();
    assert!((l as f64 - reference(&x)).abs() < 1e-5);
    close(g.data(), &fd(reference, &LOGITS), 1e-5);
    // Distilling a model into itself costs nothing (pure KL).
    let (l0, g0) = distillation(
        &s,
        &s,
        None,
        &DistillConfig {
            alpha: 1.0,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert!(l0.abs() < 1e-6 && g0.data().iter().all(|v| v.abs() < 1e-6));
    assert!(
        distillation(&s, &s, None, &cfg).is_err(),
        "alpha < 1 needs labels"
    );
}

#[test]
fn softmax_and_accuracy() {
    let p = softmax(&t(&[2, 4], &LOGITS)).unwrap();
    for r in p.data().chunks(4) {
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
    let l = t(&[2, 4], &LOGITS);
    assert_eq!(accuracy(&l, &[2, 3]).unwrap(), 1.0);
    assert_eq!(accuracy(&l, &[0, 3]).unwrap(), 0.5);
    assert_eq!(top_k_accuracy(&l, &[0, 0], 2).unwrap(), 0.5);
    assert_eq!(top_k_accuracy(&l, &[0, 1], 4).unwrap(), 1.0);
    // Ties: the first maximum wins.
    assert_eq!(accuracy(&t(&[1, 3], &[1.0, 1.0, 0.0]), &[1]).unwrap(), 0.0);
}
