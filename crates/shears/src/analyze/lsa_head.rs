//! LSA's transfer-learned heads (methods §1.3): a linear (or one-hidden-layer) classifier
//! trained on the cached features of the kept channels, and evaluated on held-out features.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use shears_engine::{
    cross_entropy, Adam, AdamConfig, BackwardOptions, ForwardRequest, Mode, Network,
};
use shears_ir::{Graph, GraphBuilder, Linear, Op, Tensor, Weights};

use super::lsa::{jacobian, linear_head_jacobian, Features, Jacobian, Outputs, Spatial};
use crate::Error;

/// A classification head and how it is trained.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeadConfig {
    /// Width of one hidden dense layer (with ReLU); `None` for a single linear layer (default).
    pub hidden: Option<usize>,
    /// Epochs over the training features; default 20.
    pub epochs: usize,
    /// Samples per step; default 64.
    pub batch: usize,
    /// Adam learning rate; default 1e-3.
    pub lr: f32,
    /// Adam L2 weight decay; default 0.
    pub weight_decay: f32,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            hidden: None,
            epochs: 20,
            batch: 64,
            lr: 1e-3,
            weight_decay: 0.0,
        }
    }
}

/// A trained head over a subset of the features.
#[derive(Debug)]
pub struct Head {
    /// The network: input `features` (`[d_kept]`), `fc1`, optionally `relu1` and `fc2`.
    pub net: Network,
    /// The features it reads, as indices into the full feature vector.
    pub keep: Vec<usize>,
}

/// The head graph: `features [d] -> fc1 -> (relu1 -> fc2)` with `k` outputs.
pub fn head_graph(d: usize, hidden: Option<usize>, k: usize) -> Result<Graph, Error> {
    if d == 0 || k == 0 || hidden == Some(0) {
        return Err(Error::invalid(format!(
            "a head needs features, outputs and hidden units (d = {d}, k = {k}, hidden = {hidden:?})"
        )));
    }
    let mut b = GraphBuilder::new();
    let x = b.input("features", &[d])?;
    let lin = |i, o| Linear {
        in_features: i,
        out_features: o,
        bias: true,
    };
    let out = match hidden {
        None => b.add("fc1", lin(d, k), &[x])?,
        Some(h) => {
            let f = b.add("fc1", lin(d, h), &[x])?;
            let r = b.add("relu1", Op::Relu, &[f])?;
            b.add("fc2", lin(h, k), &[r])?
        }
    };
    Ok(b.finish(&[out])?)
}

/// PyTorch's default dense initialisation, `U(-1/sqrt(in), 1/sqrt(in))` for weight and bias,
/// from a `ChaCha8Rng` seeded with `seed`.
pub fn init_head(graph: &Graph, seed: u64) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = Weights::new();
    for (id, name, spec) in graph.param_specs() {
        let fan_in = match &graph.node(id).op {
            Op::Linear(l) => l.in_features,
            _ => 1,
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
        let len: usize = spec.shape.iter().product();
        let v = (0..len)
            .map(|_| (uniform(&mut rng) * 2.0 - 1.0) * bound)
            .collect();
        w.insert(
            name,
            Tensor::new(spec.shape.clone(), v).expect("spec shape"),
        );
    }
    w
}

fn uniform(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

/// A seeded permutation of `0..n` (Fisher-Yates).
pub(crate) fn permutation(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Trains a new head on the features `keep` of `train` with Adam and cross-entropy, shuffling
/// with `seed` each epoch; initialised from `seed`.
pub fn train_head(
    train: &Features,
    keep: &[usize],
    cfg: &HeadConfig,
    seed: u64,
) -> Result<Head, Error> {
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(Error::invalid(format!(
            "head training needs a batch size and epochs of at least 1 (batch {}, epochs {})",
            cfg.batch, cfg.epochs
        )));
    }
    if train.n == 0 {
        return Err(Error::invalid("no training features"));
    }
    if let Some(&bad) = keep.iter().find(|&&i| i >= train.d) {
        return Err(Error::invalid(format!(
            "kept feature {bad} is outside the {} features",
            train.d
        )));
    }
    let graph = head_graph(keep.len(), cfg.hidden, train.classes)?;
    let weights = init_head(&graph, seed);
    let input = graph.inputs()[0];
    let mut net = Network::new(graph, &weights)?;
    let mut opt = Adam::new(AdamConfig::new(cfg.lr).with_weight_decay(cfg.weight_decay))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_f4ea);
    for _ in 0..cfg.epochs {
        let order = permutation(train.n, &mut rng);
        for rows in order.chunks(cfg.batch) {
            let x = train.tensor(rows, keep);
            let labels: Vec<usize> = rows.iter().map(|&r| train.labels[r]).collect();
            let out = net.run(
                &ForwardRequest::new(Mode::Train)
                    .with_feed(input, &x)
                    .recording(),
            )?;
            let (_, dl) = cross_entropy(&out.outputs[0], &labels, 0.0)?;
            let mut g = net.backward(&dl, &BackwardOptions::new())?;
            net.step(&mut opt, &mut g)?;
        }
    }
    Ok(Head {
        net,
        keep: keep.to_vec(),
    })
}

impl Head {
    /// Top-1 accuracy in percent on `test`.
    pub fn accuracy(&mut self, test: &Features) -> Result<f64, Error> {
        if test.n == 0 {
            return Ok(0.0);
        }
        let input = self.net.graph().inputs()[0];
        let mut correct = 0usize;
        let rows: Vec<usize> = (0..test.n).collect();
        for chunk in rows.chunks(1024) {
            let x = test.tensor(chunk, &self.keep);
            let out = self
                .net
                .run(&ForwardRequest::new(Mode::Eval).with_feed(input, &x))?;
            let k = self.net.graph().shape(self.net.graph().outputs()[0])[0];
            for (row, &r) in out.outputs[0].data().chunks(k).zip(chunk) {
                correct += usize::from(crate::eval::argmax(row) == test.labels[r]);
            }
        }
        Ok(100.0 * correct as f64 / test.n as f64)
    }

    /// Whether the head is a single linear layer.
    pub fn is_linear(&self) -> bool {
        self.net.graph().find("relu1").is_none()
    }

    /// Sensitivities of the head's outputs to its (kept) features at the samples `rows` of
    /// `feats`: closed form for a linear head when `closed_form` is set, autodiff otherwise.
    pub fn jacobian(
        &mut self,
        feats: &Features,
        rows: &[usize],
        outputs: Outputs,
        closed_form: bool,
    ) -> Result<Jacobian, Error> {
        let z = feats.tensor(rows, &self.keep);
        if closed_form && self.is_linear() {
            let w = self
                .net
                .params()
                .get("fc1.weight")
                .expect("the head has fc1");
            let b = self.net.params().get("fc1.bias");
            return linear_head_jacobian(w, b, &z, outputs);
        }
        let input = self.net.graph().inputs()[0];
        let j = jacobian(
            &mut self.net,
            input,
            &z,
            &[input],
            outputs,
            Spatial::Elements,
            2048,
        )?;
        Ok(j.into_iter().next().expect("one target"))
    }

    /// The L2 norm of each input column of the first dense layer (one per kept feature): the
    /// magnitude criterion for removing dense-layer inputs.
    pub fn column_norms(&self) -> Vec<f64> {
        let w = self
            .net
            .params()
            .get("fc1.weight")
            .expect("the head has fc1");
        let (o, d) = (w.shape()[0], w.shape()[1]);
        (0..d)
            .map(|i| {
                (0..o)
                    .map(|r| f64::from(w.data()[r * d + i]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    }

    /// Trainable parameters of the head.
    pub fn n_params(&self) -> u64 {
        self.net.graph().n_params()
    }
}
