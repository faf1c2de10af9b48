//! Whole-graph properties: end-to-end gradients, fusion, determinism, running statistics,
//! weights round trip, capture, feeds, freezing, hooks, dropout and errors.

mod common;

use std::collections::HashMap;

use common::{assert_close, check_graph, random_weights, ref_forward, to_f64, Rng};
use shears_engine::{
    cross_entropy, BackwardOptions, EngineError, ForwardRequest, Gradients, Layout, Mode, Network,
    ParamStore, Sgd, SgdConfig, StepHook,
};
use shears_ir::{
    BatchNorm2d, Conv2d, Graph, GraphBuilder, Linear, NodeId, Op, Pool2d, ShortcutA, Tensor,
};

/// conv-bn-relu-pool-add-concat-flatten-linear, with a shortcut and a max pool.
fn mixed_graph(c: usize, hw: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, hw, hw]).unwrap();
    let c1 = b
        .add("c1", Conv2d::new(3, c, 3).with_padding(1), &[x])
        .unwrap();
    let b1 = b.add("b1", BatchNorm2d::new(c), &[c1]).unwrap();
    let r1 = b.add("r1", Op::Relu, &[b1]).unwrap();
    let c2 = b
        .add("c2", Conv2d::new(c, c, 3).with_padding(1), &[r1])
        .unwrap();
    let b2 = b.add("b2", BatchNorm2d::new(c), &[c2]).unwrap();
    let a = b.add("add", Op::Add, &[b2, r1]).unwrap();
    let r2 = b.add("r2", Op::Relu, &[a]).unwrap();
    let p = b
        .add("pool", Op::MaxPool2d(Pool2d::new(2, 2)), &[r2])
        .unwrap();
    let s = b
        .add(
            "short",
            ShortcutA {
                stride: 2,
                pad_before: 1,
                pad_after: 1,
            },
            &[r2],
        )
        .unwrap();
    let cat = b.add("cat", Op::Concat, &[p, s]).unwrap();
    let ap = b
        .add("avg", Op::AvgPool2d(Pool2d::new(2, 2)), &[cat])
        .unwrap();
    let f = b.add("flat", Op::Flatten, &[ap]).unwrap();
    let q = hw / 4;
    let fc = b
        .add(
            "fc",
            Linear {
                in_features: (2 * c + 2) * q * q,
                out_features: 4,
                bias: true,
            },
            &[f],
        )
        .unwrap();
    b.finish(&[fc]).unwrap()
}

/// A small ResNet-like classifier for training tests.
fn small_cnn(c: usize, hw: usize, classes: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, hw, hw]).unwrap();
    let c1 = b
        .add("c1", Conv2d::new(3, c, 3).with_padding(1), &[x])
        .unwrap();
    let b1 = b.add("b1", BatchNorm2d::new(c), &[c1]).unwrap();
    let r1 = b.add("r1", Op::Relu, &[b1]).unwrap();
    let c2 = b
        .add("c2", Conv2d::new(c, c, 3).with_padding(1), &[r1])
        .unwrap();
    let b2 = b.add("b2", BatchNorm2d::new(c), &[c2]).unwrap();
    let r2 = b.add("r2", Op::Relu, &[b2]).unwrap();
    let c3 = b
        .add("c3", Conv2d::new(c, c, 3).with_padding(1), &[r2])
        .unwrap();
    let b3 = b.add("b3", BatchNorm2d::new(c), &[c3]).unwrap();
    let a = b.add("add", Op::Add, &[b3, r1]).unwrap();
    let r3 = b.add("r3", Op::Relu, &[a]).unwrap();
    let c4 = b
        .add(
            "c4",
            Conv2d::new(c, 2 * c, 3).with_stride(2).with_padding(1),
            &[r3],
        )
        .unwrap();
    let b4 = b.add("b4", BatchNorm2d::new(2 * c), &[c4]).unwrap();
    let r4 = b.add("r4", Op::Relu, &[b4]).unwrap();
    let gp = b.add("gap", Op::GlobalAvgPool, &[r4]).unwrap();
    let fc = b
        .add(
            "fc",
            Linear {
                in_features: 2 * c,
                out_features: classes,
                bias: true,
            },
            &[gp],
        )
        .unwrap();
    b.finish(&[fc]).unwrap()
}

#[test]
fn whole_graph_gradients_train_mode() {
    // 12x12 maps run the shifted-GEMM convolutions, 8x8 ones im2col.
    check_graph(&mixed_graph(4, 12), 3, Mode::Train, 101);
}

#[test]
fn whole_graph_gradients_eval_mode() {
    check_graph(&mixed_graph(4, 8), 2, Mode::Eval, 102);
}

#[test]
fn eval_fusion_matches_unfused_and_reference() {
    let g = small_cnn(16, 12, 10);
    let mut rng = Rng(5);
    let mut w = random_weights(&g, &mut rng);
    // Realistic BN statistics: running stats far from (0, 1).
    for (name, t) in w.iter_mut() {
        if name.ends_with("running_var") {
            t.data_mut()
                .iter_mut()
                .for_each(|v| *v = 0.05 + 3.0 * v.abs());
        }
        if name.ends_with("running_mean") {
            t.data_mut().iter_mut().for_each(|v| *v *= 4.0);
        }
    }
    let x = rng.tensor(&[4, 3, 12, 12]);
    let mut net = Network::new(g.clone(), &w).unwrap();
    let fused = net.forward(&x, Mode::Eval).unwrap();
    let unfused = net.forward_recorded(&x, Mode::Eval).unwrap();
    let scale = unfused.data().iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
    let expected: Vec<f64> = unfused.data().iter().map(|&v| v as f64).collect();
    assert_close(
        "fused vs unfused",
        fused.data(),
        &expected,
        1e-4 * scale,
        1e-4,
    );
    let feeds = HashMap::from([(g.inputs()[0], x.data().iter().map(|&v| v as f64).collect())]);
    let vals = ref_forward(&g, &to_f64(&w), &feeds, 4, false);
    assert_close(
        "fused vs reference",
        fused.data(),
        &vals[g.outputs()[0].0],
        1e-4 * scale,
        1e-4,
    );
    // The fused cache follows weight changes.
    let mut w2 = net.weights();
    w2.get_mut("b2.weight")
        .unwrap()
        .data_mut()
        .iter_mut()
        .for_each(|v| *v *= -1.0);
    net.set_weights(&w2).unwrap();
    let fused2 = net.forward(&x, Mode::Eval).unwrap();
    let unfused2 = net.forward_recorded(&x, Mode::Eval).unwrap();
    let e2: Vec<f64> = unfused2.data().iter().map(|&v| v as f64).collect();
    assert_close(
        "fused after set_weights",
        fused2.data(),
        &e2,
        1e-4 * scale,
        1e-4,
    );
    assert_ne!(fused.data(), fused2.data());
}

/// Issue 16: an ONNX export folds BN into its conv, so conv -> ReLU and conv -> add -> ReLU
/// run as one step with the ReLU (and the residual sum) in the conv's epilogue; the profile
/// names the fused steps, with their shapes.
#[test]
fn eval_fusion_of_convs_without_bn() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 6, 6]).unwrap();
    let conv = |c_in: usize, c: usize| Conv2d::new(c_in, c, 3).with_padding(1).with_bias(true);
    let c1 = b.add("c1", conv(3, 8), &[x]).unwrap();
    let r1 = b.add("r1", Op::Relu, &[c1]).unwrap();
    let c2 = b.add("c2", conv(8, 8), &[r1]).unwrap();
    let r2 = b.add("r2", Op::Relu, &[c2]).unwrap();
    let c3 = b.add("c3", conv(8, 8), &[r2]).unwrap();
    let a = b.add("add", Op::Add, &[c3, r1]).unwrap();
    let r3 = b.add("r3", Op::Relu, &[a]).unwrap();
    // An add with no ReLU after it stays a separate step.
    let c4 = b.add("c4", conv(8, 8), &[r3]).unwrap();
    let a2 = b.add("add2", Op::Add, &[c4, r3]).unwrap();
    let g = b.finish(&[a2]).unwrap();
    let mut rng = Rng(16);
    let w = random_weights(&g, &mut rng);
    let x = rng.tensor(&[5, 3, 6, 6]);
    let mut net = Network::new(g.clone(), &w).unwrap();
    net.set_profiling_per_step(true);
    let fused = net.forward(&x, Mode::Eval).unwrap();
    let steps = net.profile().unwrap().steps.clone();
    let unfused = net.forward_recorded(&x, Mode::Eval).unwrap();
    let expected: Vec<f64> = unfused.data().iter().map(|&v| v as f64).collect();
    assert_close("fused vs unfused", fused.data(), &expected, 1e-5, 1e-5);
    let feeds = HashMap::from([(g.inputs()[0], x.data().iter().map(|&v| v as f64).collect())]);
    let vals = ref_forward(&g, &to_f64(&w), &feeds, 5, false);
    assert_close(
        "fused vs reference",
        fused.data(),
        &vals[g.outputs()[0].0],
        1e-4,
        1e-4,
    );
    let ops: Vec<(&str, &str)> = steps.iter().map(|s| (s.op, s.node.as_str())).collect();
    assert_eq!(
        ops,
        [
            ("conv2d+relu", "c1"),
            ("conv2d+relu", "c2"),
            ("conv2d+add+relu", "c3"),
            ("conv2d", "c4"),
            ("add", "add2"),
        ]
    );
    assert_eq!(steps[2].inputs, [vec![5, 8, 6, 6], vec![5, 8, 6, 6]]);
    assert_eq!(steps[2].output, [5, 8, 6, 6]);
    assert_eq!(steps[0].macs, 5 * 8 * 3 * 9 * 36);
    assert!(steps.iter().all(|s| s.calls == 1 && s.seconds >= 0.0));
}

fn grads_with_threads(threads: usize) -> (Tensor, Gradients) {
    let g = small_cnn(16, 16, 10);
    let mut rng = Rng(9);
    let w = random_weights(&g, &mut rng);
    let x = rng.tensor(&[24, 3, 16, 16]);
    let labels: Vec<usize> = (0..24).map(|i| i % 10).collect();
    let mut net = Network::new(g.clone(), &w).unwrap();
    net.set_threads(Some(threads)).unwrap();
    let out = net.forward_train(&x).unwrap();
    let (_, dl) = cross_entropy(&out, &labels, 0.1).unwrap();
    let grads = net
        .backward(
            &dl,
            &BackwardOptions::new().with_activations(&[g.inputs()[0], NodeId(5)]),
        )
        .unwrap();
    (out, grads)
}

#[test]
fn deterministic_across_thread_counts() {
    let (o1, g1) = grads_with_threads(1);
    let (o2, g2) = grads_with_threads(2);
    let (o3, g3) = grads_with_threads(3);
    assert_eq!(o1, o2);
    assert_eq!(o1, o3);
    assert!(!g1.params.is_empty());
    for (name, t) in g1.params.iter() {
        assert_eq!(
            t,
            g2.params.get(name).unwrap(),
            "gradient of {name} differs between 1 and 2 threads"
        );
        assert_eq!(
            t,
            g3.params.get(name).unwrap(),
            "gradient of {name} differs between 1 and 3 threads"
        );
    }
    assert_eq!(g1.activations, g2.activations);
    assert_eq!(g1.activations, g3.activations);
}

/// Four classes: a bright square in one of the four quadrants, on noise.
fn quadrant_data(n: usize, hw: usize, rng: &mut Rng) -> (Tensor, Vec<usize>) {
    let mut x = vec![0.0f32; n * 3 * hw * hw];
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let q = (rng.next_u64() % 4) as usize;
        labels.push(q);
        let (y0, x0) = ((q / 2) * hw / 2, (q % 2) * hw / 2);
        for c in 0..3 {
            for y in 0..hw {
                for xx in 0..hw {
                    let inside = y > y0 && y < y0 + hw / 2 - 1 && xx > x0 && xx < x0 + hw / 2 - 1;
                    x[((i * 3 + c) * hw + y) * hw + xx] =
                        0.3 * rng.uniform() + if inside { 1.0 } else { 0.0 };
                }
            }
        }
    }
    (Tensor::new(vec![n, 3, hw, hw], x).unwrap(), labels)
}

#[test]
fn tiny_cnn_learns_separable_data() {
    let g = small_cnn(8, 12, 4);
    let mut rng = Rng(21);
    let w = random_weights(&g, &mut rng);
    let mut net = Network::new(g, &w).unwrap();
    let mut opt = Sgd::new(
        SgdConfig::new(0.05)
            .with_momentum(0.9)
            .with_weight_decay(1e-4),
    )
    .unwrap();
    let (x, labels) = quadrant_data(64, 12, &mut rng);
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..40 {
        let out = net.forward_train(&x).unwrap();
        let (loss, dl) = cross_entropy(&out, &labels, 0.0).unwrap();
        first.get_or_insert(loss);
        last = loss;
        let mut grads = net.backward(&dl, &BackwardOptions::new()).unwrap();
        net.step(&mut opt, &mut grads).unwrap();
    }
    let first = first.unwrap();
    assert!(last < 0.2 * first, "loss went from {first} to {last}");
    let (xt, lt) = quadrant_data(64, 12, &mut rng);
    let acc = shears_engine::accuracy(&net.forward(&xt, Mode::Eval).unwrap(), &lt).unwrap();
    assert!(acc > 0.9, "held-out accuracy {acc}");
}

#[test]
fn batch_norm_running_stats_follow_pytorch() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 4, 5]).unwrap();
    let mut bn = BatchNorm2d::new(3);
    bn.momentum = 0.3;
    let y = b.add("bn", bn, &[x]).unwrap();
    let g = b.finish(&[y]).unwrap();
    let mut rng = Rng(3);
    let w = random_weights(&g, &mut rng);
    let rm0 = w.get("bn.running_mean").unwrap().data().to_vec();
    let rv0 = w.get("bn.running_var").unwrap().data().to_vec();
    let xt = rng.tensor(&[2, 3, 4, 5]);
    let mut net = Network::new(g, &w).unwrap();
    net.forward(&xt, Mode::Train).unwrap();
    let cnt = 2 * 20;
    for c in 0..3 {
        let vals: Vec<f64> = (0..2)
            .flat_map(|n| {
                xt.data()[(n * 3 + c) * 20..(n * 3 + c + 1) * 20]
                    .iter()
                    .map(|&v| v as f64)
            })
            .collect();
        let mean = vals.iter().sum::<f64>() / cnt as f64;
        let unbiased = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (cnt - 1) as f64;
        let rm = net.params().get("bn.running_mean").unwrap().data()[c] as f64;
        let rv = net.params().get("bn.running_var").unwrap().data()[c] as f64;
        assert!(
            (rm - (0.7 * rm0[c] as f64 + 0.3 * mean)).abs() < 1e-6,
            "running mean {c}"
        );
        assert!(
            (rv - (0.7 * rv0[c] as f64 + 0.3 * unbiased)).abs() < 1e-6,
            "running var {c}"
        );
    }
    // Eval mode leaves them alone.
    let before = net.weights();
    net.forward(&xt, Mode::Eval).unwrap();
    assert_eq!(before, net.weights());
}

#[test]
fn weights_round_trip_bit_exact() {
    let g = mixed_graph(4, 8);
    let w = random_weights(&g, &mut Rng(1));
    let mut net = Network::new(g.clone(), &w).unwrap();
    assert_eq!(net.weights(), w);
    let w2 = random_weights(&g, &mut Rng(2));
    net.set_weights(&w2).unwrap();
    assert_eq!(net.weights(), w2);
}

#[test]
fn strict_weight_checks_name_the_tensor() {
    let g = mixed_graph(4, 8);
    let w = random_weights(&g, &mut Rng(1));
    let mut missing = w.clone();
    missing.remove("b1.running_var");
    match Network::new(g.clone(), &missing) {
        Err(EngineError::MissingWeight { name, expected }) => {
            assert_eq!(name, "b1.running_var");
            assert_eq!(expected, vec![4]);
        }
        other => panic!("expected MissingWeight, got {other:?}"),
    }
    let mut bad = w.clone();
    bad.insert("c2.weight", Tensor::zeros(&[4, 4, 3, 2]));
    let err = Network::new(g.clone(), &bad).unwrap_err();
    assert!(
        matches!(&err, EngineError::WeightShape { name, .. } if name == "c2.weight"),
        "{err}"
    );
    assert!(
        err.to_string().contains("[4, 4, 3, 2]") && err.to_string().contains("[4, 4, 3, 3]"),
        "{err}"
    );
    let mut extra = w.clone();
    extra.insert("b1.num_batches_tracked", Tensor::zeros(&[1]));
    let err = Network::new(g.clone(), &extra).unwrap_err();
    assert!(
        matches!(&err, EngineError::UnexpectedWeights { names } if names == &["b1.num_batches_tracked"])
    );
    let mut net = Network::new(g, &w).unwrap();
    let mut bad_set = shears_ir::Weights::new();
    bad_set.insert("fc.bias", Tensor::zeros(&[5]));
    assert!(matches!(
        net.set_weights(&bad_set),
        Err(EngineError::WeightShape { .. })
    ));
    assert_eq!(net.weights(), w, "a failed set_weights changes nothing");
}

#[test]
fn user_errors_are_errors_not_panics() {
    let g = small_cnn(4, 8, 3);
    let w = random_weights(&g, &mut Rng(1));
    let mut net = Network::new(g.clone(), &w).unwrap();
    let err = net
        .forward(&Tensor::zeros(&[2, 3, 8, 7]), Mode::Eval)
        .unwrap_err();
    assert!(matches!(err, EngineError::BadInput { .. }), "{err}");
    assert!(matches!(
        net.forward(&Tensor::zeros(&[3, 8, 8]), Mode::Eval),
        Err(EngineError::BadInput { .. })
    ));
    assert!(matches!(
        net.backward(&Tensor::zeros(&[2, 3]), &BackwardOptions::new()),
        Err(EngineError::NoTape)
    ));
    net.forward_train(&Tensor::zeros(&[2, 3, 8, 8])).unwrap();
    let err = net
        .backward(&Tensor::zeros(&[2, 4]), &BackwardOptions::new())
        .unwrap_err();
    assert!(matches!(err, EngineError::GradShape { .. }), "{err}");
    // The tape survives a rejected backward.
    net.backward(&Tensor::zeros(&[2, 3]), &BackwardOptions::new())
        .unwrap();
    // BN in training mode with one value per channel (batch 1, 1x1 map after the strided conv? no: GAP'd vector BN).
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3]).unwrap();
    let bn = b.add("bn", BatchNorm2d::new(3), &[x]).unwrap();
    let g1 = b.finish(&[bn]).unwrap();
    let mut n1 = Network::new(g1.clone(), &random_weights(&g1, &mut Rng(1))).unwrap();
    assert!(matches!(
        n1.forward(&Tensor::zeros(&[1, 3]), Mode::Train),
        Err(EngineError::BatchNormSingleValue { .. })
    ));
    assert!(n1.forward(&Tensor::zeros(&[1, 3]), Mode::Eval).is_ok());
    assert!(matches!(
        n1.freeze(["nope.weight"]),
        Err(EngineError::UnknownParam(_))
    ));
    assert!(n1.set_threads(Some(0)).is_err());
}

#[test]
fn capture_returns_nchw_activations() {
    let g = mixed_graph(4, 8);
    let mut rng = Rng(44);
    let w = random_weights(&g, &mut rng);
    let x = rng.tensor(&[2, 3, 8, 8]);
    let mut net = Network::new(g.clone(), &w).unwrap();
    let ids: Vec<NodeId> = ["c1", "b1", "r2", "cat", "flat"]
        .iter()
        .map(|n| g.find(n).unwrap())
        .collect();
    let (outs, cap) = net.forward_capture(&x, Mode::Eval, &ids).unwrap();
    let feeds = HashMap::from([(g.inputs()[0], x.data().iter().map(|&v| v as f64).collect())]);
    let vals = ref_forward(&g, &to_f64(&w), &feeds, 2, false);
    for id in &ids {
        let t = &cap[id];
        let mut shape = vec![2];
        shape.extend_from_slice(g.shape(*id));
        assert_eq!(t.shape(), shape.as_slice());
        assert_close(&g.node(*id).name, t.data(), &vals[id.0], 1e-4, 1e-4);
    }
    assert_close(
        "output",
        outs[0].data(),
        &vals[g.outputs()[0].0],
        1e-4,
        1e-4,
    );
}

/// `t` (`[N, C, H, W]`) in the engine's channels-last layout (`[N, H, W, C]`).
fn nhwc(t: &Tensor) -> Tensor {
    let s = t.shape();
    let (n, c, hw) = (s[0], s[1], s[2] * s[3]);
    let mut d = vec![0f32; t.numel()];
    for i in 0..n {
        for ch in 0..c {
            for x in 0..hw {
                d[(i * hw + x) * c + ch] = t.data()[(i * c + ch) * hw + x];
            }
        }
    }
    Tensor::new(vec![n, s[2], s[3], c], d).unwrap()
}

#[test]
fn channels_last_feeds_and_captures_only_passes() {
    let g = mixed_graph(4, 8);
    let mut rng = Rng(45);
    let w = random_weights(&g, &mut rng);
    let mut net = Network::new(g.clone(), &w).unwrap();
    let (r1, b2, r2) = (
        g.find("r1").unwrap(),
        g.find("b2").unwrap(),
        g.find("r2").unwrap(),
    );
    // Reference: channels-first captures of a whole pass.
    let x = rng.tensor(&[2, 3, 8, 8]);
    let (outs, cap) = net.forward_capture(&x, Mode::Eval, &[r1, b2, r2]).unwrap();
    // Channels last, fed at the middle of the graph: the same values, transposed, bit for bit.
    let feed_r1 = nhwc(&cap[&r1]);
    let before = feed_r1.clone();
    let req = ForwardRequest::new(Mode::Eval)
        .with_layout(Layout::ChannelsLast)
        .with_feed(r1, &feed_r1)
        .with_capture(&[b2, r2]);
    let out = net.run(&req).unwrap();
    assert_eq!(
        feed_r1, before,
        "a channels-last feed is read, never written"
    );
    assert_eq!(out.outputs[0], outs[0]);
    assert_eq!(out.captured[&b2], nhwc(&cap[&b2]));
    assert_eq!(out.captured[&r2], nhwc(&cap[&r2]));
    assert_eq!(
        net.per_sample_shape(r2, Layout::ChannelsLast),
        vec![8, 8, 4]
    );
    // Captures only: no graph output, the captured value unchanged.
    let req = ForwardRequest::new(Mode::Eval)
        .with_layout(Layout::ChannelsLast)
        .captures_only()
        .with_feed(r1, &feed_r1)
        .with_capture(&[r2]);
    let out = net.run(&req).unwrap();
    assert!(out.outputs.is_empty());
    assert_eq!(out.captured[&r2], nhwc(&cap[&r2]));
    // A channels-first tensor fed as channels last is a shape error naming the node.
    let req = ForwardRequest::new(Mode::Eval)
        .with_layout(Layout::ChannelsLast)
        .with_feed(r1, &cap[&r1]);
    let e = net.run(&req).unwrap_err().to_string();
    assert!(e.contains("r1"), "{e}");
    // A recorded pass must compute the outputs.
    let req = ForwardRequest::new(Mode::Eval)
        .recording()
        .captures_only()
        .with_feed(g.inputs()[0], &x)
        .with_capture(&[r2]);
    assert!(net.run(&req).is_err());
}

#[test]
fn cached_features_train_only_the_head() {
    let g = small_cnn(8, 8, 5);
    let mut rng = Rng(8);
    let w = random_weights(&g, &mut rng);
    let x = rng.tensor(&[6, 3, 8, 8]);
    let labels = [0, 1, 2, 3, 4, 0];
    let gap = g.find("gap").unwrap();
    let mut net = Network::new(g.clone(), &w).unwrap();
    net.freeze_upstream_of(&[gap]).unwrap();
    assert!(net.frozen().contains(&"c1.weight".to_string()));
    assert!(!net.frozen().contains(&"fc.weight".to_string()));
    // Full pass for reference gradients of the head; it also caches the features once.
    let xin = g.inputs()[0];
    let run = net
        .run(
            &ForwardRequest::new(Mode::Eval)
                .with_feed(xin, &x)
                .with_capture(&[gap])
                .recording(),
        )
        .unwrap();
    let full = run.outputs[0].clone();
    let feats = &run.captured[&gap];
    let (_, dl) = cross_entropy(&full, &labels, 0.0).unwrap();
    let gfull = net.backward(&dl, &BackwardOptions::new()).unwrap();
    let names: Vec<&String> = gfull.params.names().collect();
    assert_eq!(
        names,
        ["fc.bias", "fc.weight"],
        "frozen layers get no gradients"
    );
    // The head alone, trained from the cached features.
    let out = net
        .run(
            &ForwardRequest::new(Mode::Eval)
                .with_feed(gap, feats)
                .recording(),
        )
        .unwrap();
    assert_eq!(out.outputs[0], full);
    let ghead = net.backward(&dl, &BackwardOptions::new()).unwrap();
    assert_eq!(ghead.params, gfull.params);
}

#[test]
fn frozen_layers_still_pass_input_gradients() {
    let g = small_cnn(4, 8, 3);
    let mut rng = Rng(12);
    let w = random_weights(&g, &mut rng);
    let x = rng.tensor(&[3, 3, 8, 8]);
    let mut a = Network::new(g.clone(), &w).unwrap();
    let mut b = Network::new(g.clone(), &w).unwrap();
    b.freeze(["c4.weight", "b4.weight", "b4.bias", "c2.weight"])
        .unwrap();
    let oa = a.forward_train(&x).unwrap();
    let ob = b.forward_train(&x).unwrap();
    assert_eq!(oa, ob);
    let r = rng.tensor(oa.shape());
    let ga = a.backward(&r, &BackwardOptions::new()).unwrap();
    let gb = b.backward(&r, &BackwardOptions::new()).unwrap();
    assert!(gb.params.get("c4.weight").is_none() && gb.params.get("b4.bias").is_none());
    assert_eq!(
        gb.params.get("c1.weight"),
        ga.params.get("c1.weight"),
        "gradient flows through frozen layers"
    );
    let mut opt = Sgd::new(SgdConfig::new(0.1)).unwrap();
    let mut all = ga.clone();
    b.step(&mut opt, &mut all).unwrap();
    assert_eq!(
        b.params().get("c4.weight"),
        Some(w.get("c4.weight").unwrap()),
        "frozen weight unchanged"
    );
    assert_ne!(
        b.params().get("c1.weight"),
        Some(w.get("c1.weight").unwrap())
    );
}

struct ZeroFilter {
    after_calls: usize,
}

impl StepHook for ZeroFilter {
    fn before_step(&mut self, params: &mut ParamStore, grads: &mut Gradients) {
        // Kill filter 0 of c1 and its BN parameters.
        let per = 3 * 9;
        grads.params.get_mut("c1.weight").unwrap().data_mut()[..per].fill(0.0);
        params.get_mut("c1.weight").unwrap().data_mut()[..per].fill(0.0);
        params.get_mut("b1.weight").unwrap().data_mut()[0] = 0.0;
        params.get_mut("b1.bias").unwrap().data_mut()[0] = 0.0;
        if let Some(g) = grads.params.get_mut("b1.weight") {
            g.data_mut()[0] = 0.0;
        }
        if let Some(g) = grads.params.get_mut("b1.bias") {
            g.data_mut()[0] = 0.0;
        }
    }

    fn after_step(&mut self, _params: &mut ParamStore) {
        self.after_calls += 1;
    }
}

#[test]
fn hooks_mask_gradients_and_parameters() {
    let g = small_cnn(4, 8, 3);
    let mut rng = Rng(13);
    let w = random_weights(&g, &mut rng);
    let x = rng.tensor(&[4, 3, 8, 8]);
    let mut net = Network::new(g, &w).unwrap();
    net.add_step_hook(ZeroFilter { after_calls: 0 });
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let id = net.add_grad_hook(move |name, grad, param| {
        assert_eq!(grad.len(), param.len());
        seen2.lock().unwrap().push(name.to_string());
        if name == "fc.bias" {
            grad.fill(0.0);
        }
    });
    let mut opt = Sgd::new(SgdConfig::new(0.1).with_momentum(0.9)).unwrap();
    for _ in 0..3 {
        let out = net.forward_train(&x).unwrap();
        let (_, dl) = cross_entropy(&out, &[0, 1, 2, 0], 0.0).unwrap();
        let mut grads = net.backward(&dl, &BackwardOptions::new()).unwrap();
        net.step(&mut opt, &mut grads).unwrap();
    }
    let p = net.params();
    assert!(p.get("c1.weight").unwrap().data()[..27]
        .iter()
        .all(|&v| v == 0.0));
    assert_eq!(p.get("b1.weight").unwrap().data()[0], 0.0);
    assert_eq!(p.get("b1.bias").unwrap().data()[0], 0.0);
    assert_eq!(
        p.get("fc.bias"),
        w.get("fc.bias"),
        "grad hook zeroed the bias gradient"
    );
    assert!(seen.lock().unwrap().contains(&"c3.weight".to_string()));
    assert!(!seen.lock().unwrap().iter().any(|n| n.contains("running")));
    assert!(net.remove_hook(id));
    assert!(!net.remove_hook(id));
}

#[test]
fn dropout_masks_are_consistent_and_seeded() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[16, 8, 8]).unwrap();
    let d = b.add("drop", Op::Dropout { p: 0.25 }, &[x]).unwrap();
    let g = b.finish(&[d]).unwrap();
    let mut rng = Rng(2);
    let xt = Tensor::new(
        vec![4, 16, 8, 8],
        (0..4 * 16 * 64)
            .map(|_| 1.0 + rng.uniform().abs())
            .collect(),
    )
    .unwrap();
    let mut net = Network::new(g.clone(), &shears_ir::Weights::new()).unwrap();
    net.set_seed(42);
    let y = net.forward_train(&xt).unwrap();
    let r = Tensor::full(y.shape(), 1.0);
    let gx = &net
        .backward(&r, &BackwardOptions::new().with_activations(&[x]))
        .unwrap()
        .activations[&x];
    let mut dropped = 0;
    for ((yv, xv), gv) in y.data().iter().zip(xt.data()).zip(gx.data()) {
        if *yv == 0.0 {
            dropped += 1;
            assert_eq!(*gv, 0.0);
        } else {
            assert!((yv - xv / 0.75).abs() < 1e-6);
            assert!((gv - 1.0 / 0.75).abs() < 1e-6);
        }
    }
    let frac = dropped as f64 / y.numel() as f64;
    assert!((frac - 0.25).abs() < 0.03, "dropped fraction {frac}");
    let y2 = net.forward(&xt, Mode::Train).unwrap();
    assert_ne!(y, y2, "a new step draws a new mask");
    net.set_seed(42);
    assert_eq!(
        net.forward(&xt, Mode::Train).unwrap(),
        y,
        "same seed, same mask"
    );
    assert_eq!(
        net.forward(&xt, Mode::Eval).unwrap(),
        xt,
        "eval dropout is the identity"
    );
}

#[test]
fn seeds_at_inner_nodes_and_fused_bn_gradients() {
    let g = mixed_graph(4, 8);
    let mut rng = Rng(77);
    let w = random_weights(&g, &mut rng);
    let x = rng.tensor(&[2, 3, 8, 8]);
    let r1 = g.find("r1").unwrap();
    let b1 = g.find("b1").unwrap();
    let cat = g.find("cat").unwrap();
    let b2 = g.find("b2").unwrap();
    let add = g.find("add").unwrap();
    let xin = g.inputs()[0];
    // Net A: the fused BN+ReLU tape, gradients seeded at the output and at captured "cat".
    let mut a = Network::new(g.clone(), &w).unwrap();
    let out = a
        .run(
            &ForwardRequest::new(Mode::Train)
                .with_feed(xin, &x)
                .with_capture(&[cat])
                .recording(),
        )
        .unwrap();
    let ro = rng.tensor(out.outputs[0].shape());
    let rc = rng.tensor(out.captured[&cat].shape());
    let opts = BackwardOptions::new().with_activations(&[b1, r1, xin, b2, add]);
    let ga = a
        .backward_from(&[(g.outputs()[0], &ro), (cat, &rc)], &opts)
        .unwrap();
    // Net B: b1, b2 and add captured too, so nothing is fused; same gradients expected.
    let mut bnet = Network::new(g.clone(), &w).unwrap();
    bnet.run(
        &ForwardRequest::new(Mode::Train)
            .with_feed(xin, &x)
            .with_capture(&[cat, b1, b2, add])
            .recording(),
    )
    .unwrap();
    let gb = bnet
        .backward_from(&[(g.outputs()[0], &ro), (cat, &rc)], &opts)
        .unwrap();
    for id in [b1, r1, xin, b2, add] {
        let e: Vec<f64> = gb.activations[&id]
            .data()
            .iter()
            .map(|&v| v as f64)
            .collect();
        assert_close(
            &format!("activation grad {}", g.node(id).name),
            ga.activations[&id].data(),
            &e,
            1e-6,
            1e-5,
        );
    }
    for (name, t) in gb.params.iter() {
        let e: Vec<f64> = t.data().iter().map(|&v| v as f64).collect();
        assert_close(name, ga.params.get(name).unwrap().data(), &e, 1e-6, 1e-5);
    }
    // Seeding a node that was fused away is an error, not a panic.
    a.run(
        &ForwardRequest::new(Mode::Train)
            .with_feed(xin, &x)
            .recording(),
    )
    .unwrap();
    let rb = Tensor::zeros(&[2, 4, 8, 8]);
    assert!(matches!(
        a.backward_from(&[(b1, &rb)], &opts),
        Err(EngineError::NotRecorded { .. })
    ));
}

#[test]
fn multiple_outputs() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[8, 6, 6]).unwrap();
    let c = b
        .add("c", Conv2d::new(8, 8, 3).with_padding(1), &[x])
        .unwrap();
    let bn = b.add("bn", BatchNorm2d::new(8), &[c]).unwrap();
    let r = b.add("r", Op::Relu, &[bn]).unwrap();
    let gp = b.add("gap", Op::GlobalAvgPool, &[r]).unwrap();
    let g = b.finish(&[gp, r]).unwrap();
    check_graph(&g, 2, Mode::Train, 55);
    check_graph(&g, 2, Mode::Eval, 56);
}

#[test]
fn network_and_optimizers_can_move_across_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Network>();
    assert_send::<Sgd>();
    assert_send::<shears_engine::Adam>();
    assert_send::<Gradients>();
}
