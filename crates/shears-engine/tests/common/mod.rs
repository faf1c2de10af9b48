//! Shared test helpers: a seeded RNG, random weights, and a plain NCHW reference executor in
//! f64 used for forward comparisons and finite differences.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use shears_engine::{BackwardOptions, ForwardRequest, Mode, Network};
use shears_ir::{Activation, ChannelOp, Graph, NodeId, Op, ParamKind, Tensor, Weights};

/// A small deterministic generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }

    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        Tensor::new(shape.to_vec(), self.vec(shape.iter().product())).unwrap()
    }
}

/// Random weights for every parameter of `g`: BN scales near 1, variances positive.
pub fn random_weights(g: &Graph, rng: &mut Rng) -> Weights {
    let mut w = Weights::new();
    for (node, name, spec) in g.param_specs() {
        let n: usize = spec.shape.iter().product();
        let is_bn = matches!(g.node(node).op, Op::BatchNorm2d(_));
        let data: Vec<f32> = match (is_bn, spec.kind) {
            (true, ParamKind::Weight) => (0..n).map(|_| 1.0 + 0.5 * rng.uniform()).collect(),
            (true, ParamKind::RunningVar) => (0..n).map(|_| 0.5 + rng.uniform().abs()).collect(),
            (true, _) => (0..n).map(|_| 0.3 * rng.uniform()).collect(),
            (false, _) => {
                let fan_in: usize = spec.shape[1..].iter().product::<usize>().max(1);
                let s = (3.0 / fan_in as f32).sqrt();
                (0..n).map(|_| s * rng.uniform()).collect()
            }
        };
        w.insert(name, Tensor::new(spec.shape.clone(), data).unwrap());
    }
    w
}

pub type RefWeights = BTreeMap<String, Vec<f64>>;

pub fn to_f64(w: &Weights) -> RefWeights {
    w.iter()
        .map(|(k, t)| (k.clone(), t.data().iter().map(|&v| v as f64).collect()))
        .collect()
}

/// Plain NCHW forward of the whole graph in f64. `train` uses batch statistics in BN (dropout
/// must not be active). Returns every node's value (empty for nodes not computed).
pub fn ref_forward(
    g: &Graph,
    w: &RefWeights,
    feeds: &HashMap<NodeId, Vec<f64>>,
    n: usize,
    train: bool,
) -> Vec<Vec<f64>> {
    let mut vals: Vec<Vec<f64>> = vec![Vec::new(); g.len()];
    for id in g.ids() {
        if let Some(f) = feeds.get(&id) {
            vals[id.0] = f.clone();
            continue;
        }
        let node = g.node(id);
        let ins: Vec<&[f64]> = node.inputs.iter().map(|i| vals[i.0].as_slice()).collect();
        let in_shape = |k: usize| g.shape(node.inputs[k]).to_vec();
        let out_shape = g.shape(id).to_vec();
        let p = |kind: ParamKind| w.get(&node.param_name(kind)).map(|v| v.as_slice());
        vals[id.0] = match &node.op {
            Op::Input { .. } => panic!("input {} not fed", node.name),
            Op::Conv2d(c) => {
                let (ci, h, wd) = (c.in_channels, in_shape(0)[1], in_shape(0)[2]);
                let (co, oh, ow) = (out_shape[0], out_shape[1], out_shape[2]);
                let (cig, cog) = (ci / c.groups, co / c.groups);
                let wt = p(ParamKind::Weight).unwrap();
                let b = p(ParamKind::Bias);
                let x = ins[0];
                let mut y = vec![0.0; n * co * oh * ow];
                for nn in 0..n {
                    for o in 0..co {
                        let gi = o / cog;
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let mut acc = b.map_or(0.0, |b| b[o]);
                                for i in 0..cig {
                                    for ky in 0..c.kernel[0] {
                                        for kx in 0..c.kernel[1] {
                                            let iy = (oy * c.stride[0] + ky * c.dilation[0])
                                                as isize
                                                - c.padding[0] as isize;
                                            let ix = (ox * c.stride[1] + kx * c.dilation[1])
                                                as isize
                                                - c.padding[1] as isize;
                                            if iy < 0
                                                || ix < 0
                                                || iy as usize >= h
                                                || ix as usize >= wd
                                            {
                                                continue;
                                            }
                                            let wv = wt[((o * cig + i) * c.kernel[0] + ky)
                                                * c.kernel[1]
                                                + kx];
                                            let xv = x[((nn * ci + gi * cig + i) * h
                                                + iy as usize)
                                                * wd
                                                + ix as usize];
                                            acc += wv * xv;
                                        }
                                    }
                                }
                                y[((nn * co + o) * oh + oy) * ow + ox] = acc;
                            }
                        }
                    }
                }
                y
            }
            Op::BatchNorm2d(b) => {
                let c = out_shape[0];
                let s: usize = out_shape[1..].iter().product();
                let x = ins[0];
                let gamma = p(ParamKind::Weight).unwrap();
                let beta = p(ParamKind::Bias).unwrap();
                let mut y = vec![0.0; x.len()];
                for ch in 0..c {
                    let (mean, var) = if train {
                        let mut sum = 0.0;
                        for nn in 0..n {
                            for k in 0..s {
                                sum += x[(nn * c + ch) * s + k];
                            }
                        }
                        let m = sum / (n * s) as f64;
                        let mut v = 0.0;
                        for nn in 0..n {
                            for k in 0..s {
                                v += (x[(nn * c + ch) * s + k] - m).powi(2);
                            }
                        }
                        (m, v / (n * s) as f64)
                    } else {
                        (
                            p(ParamKind::RunningMean).unwrap()[ch],
                            p(ParamKind::RunningVar).unwrap()[ch],
                        )
                    };
                    let inv = 1.0 / (var + b.eps as f64).sqrt();
                    for nn in 0..n {
                        for k in 0..s {
                            let e = (nn * c + ch) * s + k;
                            y[e] = (x[e] - mean) * inv * gamma[ch] + beta[ch];
                        }
                    }
                }
                y
            }
            Op::Relu => ins[0].iter().map(|v| v.max(0.0)).collect(),
            Op::Act(a) => ins[0].iter().map(|&v| ref_act(*a, v)).collect(),
            Op::MaxPool2d(pl) | Op::AvgPool2d(pl) => {
                let is_max = matches!(node.op, Op::MaxPool2d(_));
                let (c, h, wd) = (in_shape(0)[0], in_shape(0)[1], in_shape(0)[2]);
                let (oh, ow) = (out_shape[1], out_shape[2]);
                let x = ins[0];
                let mut y = vec![0.0; n * c * oh * ow];
                for nn in 0..n {
                    for ch in 0..c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let ys = (oy * pl.stride[0]) as isize - pl.padding[0] as isize;
                                let xs = (ox * pl.stride[1]) as isize - pl.padding[1] as isize;
                                let ye = ys + pl.kernel[0] as isize;
                                let xe = xs + pl.kernel[1] as isize;
                                let mut best = f64::NEG_INFINITY;
                                let mut sum = 0.0;
                                let mut cnt = 0usize;
                                for iy in ys.max(0)..ye.min(h as isize) {
                                    for ix in xs.max(0)..xe.min(wd as isize) {
                                        let v =
                                            x[((nn * c + ch) * h + iy as usize) * wd + ix as usize];
                                        best = best.max(v);
                                        sum += v;
                                        cnt += 1;
                                    }
                                }
                                let div = if pl.count_include_pad {
                                    let ype = ye.min((h + pl.padding[2]) as isize);
                                    let xpe = xe.min((wd + pl.padding[3]) as isize);
                                    ((ype - ys) * (xpe - xs)) as f64
                                } else {
                                    cnt as f64
                                };
                                y[((nn * c + ch) * oh + oy) * ow + ox] =
                                    if is_max { best } else { sum / div };
                            }
                        }
                    }
                }
                y
            }
            Op::GlobalAvgPool => {
                let c = in_shape(0)[0];
                let s: usize = in_shape(0)[1..].iter().product();
                (0..n * c)
                    .map(|r| ins[0][r * s..(r + 1) * s].iter().sum::<f64>() / s as f64)
                    .collect()
            }
            Op::Linear(l) => {
                let wt = p(ParamKind::Weight).unwrap();
                let b = p(ParamKind::Bias);
                let mut y = vec![0.0; n * l.out_features];
                for nn in 0..n {
                    for o in 0..l.out_features {
                        let mut acc = b.map_or(0.0, |b| b[o]);
                        for i in 0..l.in_features {
                            acc += wt[o * l.in_features + i] * ins[0][nn * l.in_features + i];
                        }
                        y[nn * l.out_features + o] = acc;
                    }
                }
                y
            }
            Op::Flatten | Op::Identity | Op::Dropout { .. } => ins[0].to_vec(),
            Op::Add => {
                let mut y = ins[0].to_vec();
                for x in &ins[1..] {
                    y.iter_mut().zip(x.iter()).for_each(|(a, b)| *a += *b);
                }
                y
            }
            Op::Concat => {
                let mut y = Vec::new();
                for nn in 0..n {
                    for (k, x) in ins.iter().enumerate() {
                        let per: usize = in_shape(k).iter().product();
                        y.extend_from_slice(&x[nn * per..(nn + 1) * per]);
                    }
                }
                y
            }
            Op::Channel(ch) => {
                // Written out as the ONNX pattern: a shuffle is view [g, C/g] -> swap -> view.
                let (c, hw) = (in_shape(0)[0], in_shape(0)[1] * in_shape(0)[2]);
                let co = out_shape[0];
                let src = |o: usize| match *ch {
                    ChannelOp::Shuffle { groups } => {
                        let (j, i) = (o / groups, o % groups);
                        i * (c / groups) + j
                    }
                    ChannelOp::Slice { start, .. } => start + o,
                };
                let mut y = vec![0.0; n * co * hw];
                for nn in 0..n {
                    for o in 0..co {
                        let from = &ins[0][(nn * c + src(o)) * hw..][..hw];
                        y[(nn * co + o) * hw..][..hw].copy_from_slice(from);
                    }
                }
                y
            }
            Op::ShortcutA(sc) => {
                let (c, h, wd) = (in_shape(0)[0], in_shape(0)[1], in_shape(0)[2]);
                let (co, oh, ow) = (out_shape[0], out_shape[1], out_shape[2]);
                let mut y = vec![0.0; n * co * oh * ow];
                for nn in 0..n {
                    for ch in 0..c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                y[((nn * co + ch + sc.pad_before) * oh + oy) * ow + ox] = ins[0]
                                    [((nn * c + ch) * h + oy * sc.stride) * wd + ox * sc.stride];
                            }
                        }
                    }
                }
                y
            }
            Op::LayerNorm(l) => {
                let (c, gamma, beta) = (
                    l.channels,
                    p(ParamKind::Weight).unwrap(),
                    p(ParamKind::Bias).unwrap(),
                );
                let s: usize = out_shape[1..].iter().product();
                let x = ins[0];
                let mut y = vec![0.0; x.len()];
                for nn in 0..n {
                    for px in 0..s {
                        let at = |ch: usize| (nn * c + ch) * s + px;
                        let mean = (0..c).map(|ch| x[at(ch)]).sum::<f64>() / c as f64;
                        let var =
                            (0..c).map(|ch| (x[at(ch)] - mean).powi(2)).sum::<f64>() / c as f64;
                        let inv = 1.0 / (var + l.eps as f64).sqrt();
                        for ch in 0..c {
                            y[at(ch)] = (x[at(ch)] - mean) * inv * gamma[ch] + beta[ch];
                        }
                    }
                }
                y
            }
            Op::Binary(bin) => {
                // (per-sample shape, data, per-image stride: 0 for a constant).
                let computed = |k: usize| (in_shape(k), ins[k], in_shape(k).iter().product());
                let (a, b) = match &bin.constant {
                    Some(c) => {
                        let k = (c.shape.clone(), p(ParamKind::Weight).unwrap(), 0usize);
                        if c.left {
                            (k, computed(0))
                        } else {
                            (computed(0), k)
                        }
                    }
                    None => (computed(0), computed(1)),
                };
                let per: usize = out_shape.iter().product();
                let at =
                    |(shape, data, stride): &(Vec<usize>, &[f64], usize), nn: usize, i: usize| {
                        let (mut i, mut off, mut step) = (i, 0, 1);
                        for ax in (0..out_shape.len()).rev() {
                            let c = i % out_shape[ax];
                            i /= out_shape[ax];
                            if shape[ax] != 1 {
                                off += c * step;
                            }
                            step *= shape[ax];
                        }
                        data[nn * stride + off]
                    };
                (0..n * per)
                    .map(|e| {
                        bin.kind
                            .apply(at(&a, e / per, e % per), at(&b, e / per, e % per))
                    })
                    .collect()
            }
        };
    }
    vals
}

/// The activations' closed forms, written out independently of the engine's kernels.
pub fn ref_act(a: Activation, x: f64) -> f64 {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    match a {
        Activation::Relu6 => x.clamp(0.0, 6.0),
        Activation::Clip { min, max } => x.clamp(
            min.map_or(f64::NEG_INFINITY, f64::from),
            max.map_or(f64::INFINITY, f64::from),
        ),
        Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::HardSigmoid { alpha, beta } => (alpha as f64 * x + beta as f64).clamp(0.0, 1.0),
        Activation::Sigmoid => sig(x),
        Activation::Silu => x * sig(x),
        Activation::Gelu { tanh: false } => 0.5 * x * (1.0 + libm::erf(x / 2f64.sqrt())),
        Activation::Gelu { tanh: true } => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())
        }
        Activation::LeakyRelu { alpha } => {
            if x < 0.0 {
                alpha as f64 * x
            } else {
                x
            }
        }
    }
}

/// `sum(out * r)` over all graph outputs.
pub fn ref_loss(
    g: &Graph,
    w: &RefWeights,
    feeds: &HashMap<NodeId, Vec<f64>>,
    n: usize,
    train: bool,
    r: &[Vec<f64>],
) -> f64 {
    let vals = ref_forward(g, w, feeds, n, train);
    g.outputs()
        .iter()
        .zip(r)
        .map(|(o, rr)| vals[o.0].iter().zip(rr).map(|(a, b)| a * b).sum::<f64>())
        .sum()
}

/// Asserts `|a - e| <= atol + rtol * |e|` element-wise, naming the failing element.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f64], atol: f64, rtol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let d = (a as f64 - e).abs();
        assert!(
            d <= atol + rtol * e.abs(),
            "{what}[{i}]: got {a}, expected {e} (diff {d:e})"
        );
    }
}

/// Named tolerances.
pub const FWD_ATOL: f64 = 1e-4;
pub const FWD_RTOL: f64 = 1e-4;
pub const GRAD_ATOL: f64 = 1e-4;
pub const GRAD_RTOL: f64 = 1e-3;

/// Checks a graph end to end: forward against the reference, then every trainable parameter
/// gradient and every input gradient against central finite differences of the reference
/// loss `sum(out * r)` in f64.
pub fn check_graph(g: &Graph, n: usize, mode: Mode, seed: u64) {
    let mut rng = Rng(seed);
    let weights = random_weights(g, &mut rng);
    let inputs: Vec<(NodeId, Tensor)> = g
        .inputs()
        .into_iter()
        .map(|i| {
            let mut s = vec![n];
            s.extend_from_slice(g.shape(i));
            (i, rng.tensor(&s))
        })
        .collect();
    let train = mode == Mode::Train;
    let mut net = Network::new(g.clone(), &weights).unwrap();
    let mut req = ForwardRequest::new(mode).recording();
    for (i, t) in &inputs {
        req = req.with_feed(*i, t);
    }
    let out = net.run(&req).unwrap();
    let wf = to_f64(&weights);
    let feeds: HashMap<NodeId, Vec<f64>> = inputs
        .iter()
        .map(|(i, t)| (*i, t.data().iter().map(|&v| v as f64).collect()))
        .collect();
    let vals = ref_forward(g, &wf, &feeds, n, train);
    for (k, o) in g.outputs().iter().enumerate() {
        assert_close(
            &format!("forward {}", g.node(*o).name),
            out.outputs[k].data(),
            &vals[o.0],
            FWD_ATOL,
            FWD_RTOL,
        );
    }
    // Backward with random seeds r.
    let r: Vec<Tensor> = out.outputs.iter().map(|t| rng.tensor(t.shape())).collect();
    let rf: Vec<Vec<f64>> = r
        .iter()
        .map(|t| t.data().iter().map(|&v| v as f64).collect())
        .collect();
    let seeds: Vec<(NodeId, &Tensor)> = g.outputs().iter().copied().zip(r.iter()).collect();
    let in_ids: Vec<NodeId> = inputs.iter().map(|(i, _)| *i).collect();
    let grads = net
        .backward_from(&seeds, &BackwardOptions::new().with_activations(&in_ids))
        .unwrap();
    let h = 1e-6;
    for (name, t) in weights.iter() {
        let kind_trainable = name.ends_with(".weight") || name.ends_with(".bias");
        if !kind_trainable {
            continue;
        }
        let gt = grads
            .params
            .get(name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(gt.shape(), t.shape(), "gradient shape of {name}");
        let mut fd = vec![0.0; t.numel()];
        for e in 0..t.numel() {
            let mut wp = wf.clone();
            wp.get_mut(name).unwrap()[e] += h;
            let lp = ref_loss(g, &wp, &feeds, n, train, &rf);
            wp.get_mut(name).unwrap()[e] -= 2.0 * h;
            let lm = ref_loss(g, &wp, &feeds, n, train, &rf);
            fd[e] = (lp - lm) / (2.0 * h);
        }
        assert_close(
            &format!("grad {name}"),
            gt.data(),
            &fd,
            GRAD_ATOL,
            GRAD_RTOL,
        );
    }
    for (i, t) in &inputs {
        let gt = grads.activations.get(i).expect("input gradient");
        assert_eq!(gt.shape(), t.shape());
        let mut fd = vec![0.0; t.numel()];
        for e in 0..t.numel() {
            let mut fp = feeds.clone();
            fp.get_mut(i).unwrap()[e] += h;
            let lp = ref_loss(g, &wf, &fp, n, train, &rf);
            fp.get_mut(i).unwrap()[e] -= 2.0 * h;
            let lm = ref_loss(g, &wf, &fp, n, train, &rf);
            fd[e] = (lp - lm) / (2.0 * h);
        }
        assert_close(
            &format!("input grad {}", g.node(*i).name),
            gt.data(),
            &fd,
            GRAD_ATOL,
            GRAD_RTOL,
        );
    }
}
