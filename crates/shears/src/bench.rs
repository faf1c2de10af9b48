//! Engine benchmark: the workloads of `bench/torch_engine.py`, timed the same way (median of
//! `iters` after `warmup`), so that the two can be compared as ratios in one run; and
//! ([`onnx`]) whole ONNX models on shears' engine against ONNX Runtime.

pub mod onnx;

use std::time::Instant;

use serde::Serialize;
use shears_engine::{cross_entropy, BackwardOptions, Mode, Network, Sgd, SgdConfig};
use shears_ir::{Conv2d, GraphBuilder, Tensor};

use crate::zoo::{self, Arch};
use crate::Error;

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct EngineBenchConfig {
    /// Threads.
    pub threads: usize,
    /// Batch size of the ResNet-20 workloads.
    pub batch: usize,
    /// Timed iterations.
    pub iters: usize,
    /// Untimed warm-up iterations.
    pub warmup: usize,
}

/// Results, in the same units as the PyTorch script's JSON.
#[derive(Clone, Debug, Serialize)]
pub struct EngineBench {
    /// Threads used.
    pub threads: usize,
    /// Batch size.
    pub batch: usize,
    /// ResNet-20 eval-mode forward, median ms.
    pub resnet20_infer_ms: f64,
    /// Images per second of the above.
    pub resnet20_infer_img_s: f64,
    /// ResNet-20 training step (forward, cross-entropy, backward, SGD momentum), median ms.
    pub resnet20_train_ms: f64,
    /// Images per second of the above.
    pub resnet20_train_img_s: f64,
    /// 3x3 conv 128x64x32x32 (64 to 64, pad 1) forward, median ms.
    pub conv_fwd_ms: f64,
    /// Its backward (input and weight gradients), median ms.
    pub conv_bwd_ms: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn time<F: FnMut() -> Result<(), Error>>(
    iters: usize,
    warmup: usize,
    mut f: F,
) -> Result<f64, Error> {
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

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Runs the engine benchmark.
pub fn engine(cfg: &EngineBenchConfig) -> Result<EngineBench, Error> {
    if cfg.iters == 0 || cfg.batch == 0 || cfg.threads == 0 {
        return Err(Error::invalid(
            "bench needs iters, batch and threads of at least 1",
        ));
    }
    let arch = Arch::ResNet20;
    let graph = zoo::build(arch, &arch.default_config())?;
    let weights = zoo::init_weights(&graph, Some(arch), 0);
    let mut net = Network::new(graph, &weights)?;
    net.set_threads(Some(cfg.threads))?;
    let b = cfg.batch;
    let x =
        Tensor::new(vec![b, 3, 32, 32], pseudo_random(b * 3 * 32 * 32, 1)).expect("sizes agree");
    let labels: Vec<usize> = (0..b).map(|i| i % 10).collect();
    let infer = time(cfg.iters, cfg.warmup, || {
        net.forward(&x, Mode::Eval)?;
        Ok(())
    })?;
    let mut opt = Sgd::new(
        SgdConfig::new(0.01)
            .with_momentum(0.9)
            .with_weight_decay(1e-4),
    )?;
    let train = time(cfg.iters, cfg.warmup, || {
        let logits = net.forward_train(&x)?;
        let (_, g) = cross_entropy(&logits, &labels, 0.0)?;
        let mut grads = net.backward(&g, &BackwardOptions::new())?;
        net.step(&mut opt, &mut grads)?;
        Ok(())
    })?;
    drop(net);

    let mut gb = GraphBuilder::new();
    let inp = gb.input("input", &[64, 32, 32])?;
    let conv = gb.add("conv", Conv2d::new(64, 64, 3).with_padding(1), &[inp])?;
    let g = gb.finish(&[conv])?;
    let cw = zoo::init_weights(&g, None, 0);
    let mut cnet = Network::new(g, &cw)?;
    cnet.set_threads(Some(cfg.threads))?;
    let xc = Tensor::new(vec![128, 64, 32, 32], pseudo_random(128 * 64 * 32 * 32, 2))
        .expect("sizes agree");
    let dy = Tensor::new(vec![128, 64, 32, 32], pseudo_random(128 * 64 * 32 * 32, 3))
        .expect("sizes agree");
    let fwd = time(cfg.iters, cfg.warmup, || {
        cnet.forward(&xc, Mode::Eval)?;
        Ok(())
    })?;
    // Backward alone: record a forward (untimed), then time backward.
    let opts = BackwardOptions::new().with_activations(&[inp]);
    for _ in 0..cfg.warmup {
        cnet.forward_recorded(&xc, Mode::Train)?;
        cnet.backward(&dy, &opts)?;
    }
    let mut ts = Vec::with_capacity(cfg.iters);
    for _ in 0..cfg.iters {
        cnet.forward_recorded(&xc, Mode::Train)?;
        let t0 = Instant::now();
        cnet.backward(&dy, &opts)?;
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let bwd = median(ts);
    Ok(EngineBench {
        threads: cfg.threads,
        batch: b,
        resnet20_infer_ms: infer,
        resnet20_infer_img_s: b as f64 / (infer / 1e3),
        resnet20_train_ms: train,
        resnet20_train_img_s: b as f64 / (train / 1e3),
        conv_fwd_ms: fwd,
        conv_bwd_ms: bwd,
        peak_rss_mib: crate::report::peak_rss_mib(),
    })
}
