//! Honest accounting: parameters and MACs per layer and in total, and measured latency.

use std::time::Instant;

use serde::Serialize;
use shears_engine::{Mode, Network};
use shears_ir::{Graph, Op, Tensor};

use crate::Error;

/// One row of a model's layer table.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LayerRow {
    /// Node name.
    pub name: String,
    /// Op type.
    pub op: String,
    /// Per-sample output shape.
    pub output: Vec<usize>,
    /// Trainable parameters of this node (weights, biases, BN affine).
    pub params: u64,
    /// Multiply-accumulates per sample (conv and linear).
    pub macs: u64,
}

/// Totals and the per-layer table of a graph.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelSummary {
    /// Per-sample input shape.
    pub input: Vec<usize>,
    /// Per-sample output shape.
    pub output: Vec<usize>,
    /// Trainable parameters (weights, biases, BN affine).
    pub params: u64,
    /// BN running-statistics elements, counted apart from parameters.
    pub buffers: u64,
    /// Multiply-accumulates per sample of conv and linear layers.
    pub macs: u64,
    /// Nodes in the graph.
    pub nodes: usize,
    /// Conv layers.
    pub convs: usize,
    /// Linear layers.
    pub linears: usize,
    /// Every node, in topological order.
    pub layers: Vec<LayerRow>,
}

/// Summarises a graph.
pub fn summarize(graph: &Graph) -> ModelSummary {
    let mut layers = Vec::with_capacity(graph.len());
    for id in graph.ids() {
        let node = graph.node(id);
        let params = node
            .op
            .params()
            .iter()
            .filter(|s| s.kind.is_trainable())
            .map(|s| s.shape.iter().product::<usize>() as u64)
            .sum();
        layers.push(LayerRow {
            name: node.name.clone(),
            op: node.op.type_name().to_string(),
            output: graph.shape(id).to_vec(),
            params,
            macs: graph.node_macs(id),
        });
    }
    let input = graph
        .inputs()
        .first()
        .map(|&i| graph.shape(i).to_vec())
        .unwrap_or_default();
    ModelSummary {
        input,
        output: graph.shape(graph.outputs()[0]).to_vec(),
        params: graph.n_params(),
        buffers: graph.n_buffers(),
        macs: graph.macs(),
        nodes: graph.len(),
        convs: graph
            .nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::Conv2d(_)))
            .count(),
        linears: graph
            .nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::Linear(_)))
            .count(),
        layers,
    }
}

/// Measured latency of one batch size.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latency {
    /// Images per forward pass.
    pub batch: usize,
    /// Timed repetitions (after warm-up).
    pub iters: usize,
    /// Median wall-clock milliseconds per forward pass.
    pub median_ms: f64,
    /// Fastest repetition.
    pub min_ms: f64,
    /// Slowest repetition.
    pub max_ms: f64,
    /// Images per second at the median.
    pub images_per_s: f64,
}

/// A deterministic pseudo-random batch of `batch` inputs in [-1, 1) for `graph`'s first input
/// (xorshift seeded by `seed`): latency measurement and verification without data.
pub fn random_inputs(graph: &Graph, batch: usize, seed: u64) -> Tensor {
    let mut shape = vec![batch];
    shape.extend_from_slice(graph.shape(graph.inputs()[0]));
    let numel: usize = shape.iter().product();
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    let data = (0..numel)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::new(shape, data).expect("shape and data agree by construction")
}

fn check_latency_args(batch: usize, iters: usize) -> Result<(), Error> {
    if batch == 0 || iters == 0 {
        return Err(Error::invalid(format!(
            "latency needs batch >= 1 and iters >= 1 (got batch {batch}, iters {iters})"
        )));
    }
    Ok(())
}

/// Summarises timed runs (milliseconds).
pub(crate) fn latency_of(batch: usize, mut ts: Vec<f64>) -> Latency {
    let iters = ts.len();
    ts.sort_by(f64::total_cmp);
    let median = if iters % 2 == 1 {
        ts[iters / 2]
    } else {
        0.5 * (ts[iters / 2 - 1] + ts[iters / 2])
    };
    Latency {
        batch,
        iters,
        median_ms: median,
        min_ms: ts[0],
        max_ms: ts[iters - 1],
        images_per_s: batch as f64 / (median / 1e3),
    }
}

fn timed(net: &mut Network, x: &Tensor) -> Result<f64, Error> {
    let t0 = Instant::now();
    net.forward(x, Mode::Eval)?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// Measures eval-mode forward latency on a random batch: `warmup` untimed passes, then the
/// median of `iters` timed passes. Inputs are seeded so runs are comparable.
pub fn measure_latency(
    net: &mut Network,
    batch: usize,
    warmup: usize,
    iters: usize,
) -> Result<Latency, Error> {
    check_latency_args(batch, iters)?;
    let x = random_inputs(net.graph(), batch, 0);
    for _ in 0..warmup {
        net.forward(&x, Mode::Eval)?;
    }
    let ts = (0..iters)
        .map(|_| timed(net, &x))
        .collect::<Result<Vec<f64>, Error>>()?;
    Ok(latency_of(batch, ts))
}

/// Timed passes per block of [`compare_latency`].
pub const LATENCY_BLOCK: usize = 10;

/// Measures two networks with the same input shape (a model before and after pruning) the
/// way [`measure_latency`] does, but in alternating blocks: one untimed pass of `a` (its
/// weights back in cache after `b` ran), [`LATENCY_BLOCK`] timed passes of `a`, the same for
/// `b`, and again, until each has `iters` timed passes. Every timed pass runs warm, as in a
/// loop serving one model, and a change in machine load within the run affects both alike,
/// so their ratio stays meaningful on a shared machine. (Alternating single passes would time
/// each model just after the other evicted its weights from the core's caches, which at batch
/// 1 costs the smaller model proportionally more.) Returns `(a, b)`.
pub fn compare_latency(
    a: &mut Network,
    b: &mut Network,
    batch: usize,
    warmup: usize,
    iters: usize,
) -> Result<(Latency, Latency), Error> {
    check_latency_args(batch, iters)?;
    let x = random_inputs(a.graph(), batch, 0);
    if b.graph().shape(b.graph().inputs()[0]) != &x.shape()[1..] {
        return Err(Error::invalid(
            "compare_latency needs two networks with the same input shape",
        ));
    }
    for _ in 0..warmup {
        a.forward(&x, Mode::Eval)?;
        b.forward(&x, Mode::Eval)?;
    }
    let mut ta = Vec::with_capacity(iters);
    let mut tb = Vec::with_capacity(iters);
    while ta.len() < iters {
        let k = LATENCY_BLOCK.min(iters - ta.len());
        for (net, ts) in [(&mut *a, &mut ta), (&mut *b, &mut tb)] {
            net.forward(&x, Mode::Eval)?;
            for _ in 0..k {
                ts.push(timed(net, &x)?);
            }
        }
    }
    Ok((latency_of(batch, ta), latency_of(batch, tb)))
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if available.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
