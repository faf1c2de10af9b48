//! CDP + DTC sparse training (methods §3.3 to §3.5): the worked example of §3.8, the identity
//! of a skeleton of ones, the penalty gradients, the threshold applied before the optimizer
//! step, and the final prune against the masked skeleton network.

mod common;

use shears::prune::input_batch;
use shears::sparse::{
    self, alive_filters, dtc_thresholds, filter_l1, mean_skeleton, prune_from_skeleton,
    similarities, skeleton_penalty, stripe_mask, weight_similarity, CdpConfig, PenaltyMode,
    Skeleton, SparseConfig, ThresholdMode,
};
use shears::zoo::{build, init_weights, Arch};
use shears_data::{DatasetName, Split};
use shears_engine::{cross_entropy, BackwardOptions, Mode, Network, Sgd, SgdConfig};
use shears_ir::{BatchNorm2d, Conv2d, Graph, GraphBuilder, Linear, Op, Tensor, Weights};

/// The skeleton of §3.8: 3 filters of 3x3, row-major.
fn example_fs() -> Vec<f32> {
    let mut fs = vec![1.0; 9];
    fs.extend([0.2, 0.0, 0.2, 0.0, 0.5, 0.0, 0.2, 0.0, 0.2]);
    fs.extend([0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.0, 0.0, 0.0]);
    fs
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn worked_example_of_methods_3_8() {
    let fs = example_fs();
    let n = filter_l1(&fs, 9);
    assert!(close(&n, &[9.0, 1.3, 2.7], 1e-6), "{n:?}");
    let mean = n.iter().sum::<f32>() / 3.0;
    assert!((mean - 4.3333).abs() < 5e-5, "{mean}");
    // T = τ·n̄/n at τ = 0.3, as printed (4 decimals).
    let t = dtc_thresholds(&n, 0.3);
    assert!(close(&t, &[0.1444, 1.0000, 0.4815], 5e-5), "{t:?}");
    let m = stripe_mask(&fs, 9, &t);
    assert!(m[..9].iter().all(|&k| k), "filter 0 keeps all 9 stripes");
    assert!(m[9..18].iter().all(|&k| !k), "filter 1 keeps none");
    let middle_row: Vec<bool> = (0..9).map(|p| (3..6).contains(&p)).collect();
    assert_eq!(
        &m[18..],
        middle_row.as_slice(),
        "filter 2 keeps its middle row"
    );
    assert_eq!(alive_filters(&m, 9), [true, false, true]);
    // A static τ = 0.3 keeps filter 1's centre stripe instead.
    let s = stripe_mask(&fs, 9, &[0.3; 3]);
    let centre: Vec<bool> = (0..9).map(|p| p == 4).collect();
    assert_eq!(&s[9..18], centre.as_slice());
    assert_eq!(alive_filters(&s, 9), [true, true, true]);
    // Texture similarities to the mean skeleton.
    let ms = mean_skeleton(&fs, 9);
    let want = [0.4, 0.3333, 0.4, 0.6333, 0.8, 0.6333, 0.4, 0.3333, 0.4];
    assert!(close(&ms, &want, 5e-5), "{ms:?}");
    let a = similarities(&fs, 9);
    assert!(close(&a, &[0.9005, 0.7655, 0.7879], 5e-5), "{a:?}");
    let s_l: f32 = a.iter().sum();
    assert!((s_l - 2.4539).abs() < 1e-4, "{s_l}");
    // Released R_prop = 2·prop·ℓ1 = 2·prop·13, gradient 2·prop·sign(FS).
    let prop = 1e-3;
    let mut g = vec![0.0; 27];
    let (v, s_now) = skeleton_penalty(&CdpConfig::new(prop), &fs, 9, None, &mut g);
    assert!(
        (v.prop - 2.0 * f64::from(prop) * 13.0).abs() < 1e-8,
        "{}",
        v.prop
    );
    assert!((s_now - 2.4539).abs() < 1e-4);
    for (gr, &x) in g.iter().zip(&fs) {
        let want = if x > 0.0 { 2.0 * prop } else { 0.0 };
        assert_eq!(*gr, want);
    }
}

#[test]
fn dtc_invariants() {
    // Equal norms: T_c = τ for every filter (DTC equals the static threshold).
    assert!(dtc_thresholds(&[2.0, 2.0, 2.0], 0.1)
        .iter()
        .all(|&t| (t - 0.1).abs() < 1e-7));
    // mean T ≥ τ (AM-HM), strictly decreasing in n, ∞ for a dead filter.
    let n = [0.5, 1.0, 3.0, 7.0];
    let t = dtc_thresholds(&n, 0.2);
    assert!(t.iter().sum::<f32>() / 4.0 >= 0.2);
    assert!(t.windows(2).all(|w| w[0] > w[1]));
    let t = dtc_thresholds(&[0.0, 1.0], 0.2);
    assert!(t[0].is_infinite() && t[1].is_finite());
}

#[test]
fn similarity_invariants() {
    let fs = example_fs();
    let a = similarities(&fs, 9);
    assert!(a.iter().all(|&x| (0.0..=1.0).contains(&x)));
    // Scaling the whole layer by λ > 0 changes no a_c.
    let scaled: Vec<f32> = fs.iter().map(|x| x * 3.5).collect();
    assert!(close(&similarities(&scaled, 9), &a, 1e-5));
    // a_c = 1 when FS_c = λ·m: copies of one shape at different scales (so the mean has that
    // shape too) all point the same way as the mean.
    let mut same = Vec::new();
    for l in [0.5f32, 1.0, 4.0] {
        same.extend(fs[9..18].iter().map(|x| x * l));
    }
    assert!(similarities(&same, 9)
        .iter()
        .all(|&x| (x - 1.0).abs() < 1e-3));
    // Orthogonal to the mean: a = 0.5.
    let mut orth = vec![0.0; 18];
    orth[0] = 1.0; // filter 0 = e0
    orth[9 + 1] = 1.0; // filter 1 = e1; mean = (e0 + e1) / 2, at 45° from each
    assert!(similarities(&orth, 9)
        .iter()
        .all(|&x| (x - 0.75).abs() < 1e-5));
}

fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// Every penalty term's analytic gradient matches central finite differences.
#[test]
fn penalty_gradients_match_finite_differences() {
    let kk = 9;
    let fs = rand_vec(4 * kk, 1, 0.1, 1.0);
    let mut cfg = CdpConfig::new(0.01);
    cfg.var2 = 0.3;
    cfg.l2 = 0.2;
    cfg.gl = 0.1;
    let value = |x: &[f32]| {
        let mut g = vec![0.0; x.len()];
        skeleton_penalty(&cfg, x, kk, None, &mut g).0.total()
    };
    let mut g = vec![0.0; fs.len()];
    skeleton_penalty(&cfg, &fs, kk, None, &mut g);
    let h = 1e-3f32;
    for p in 0..fs.len() {
        let (mut up, mut dn) = (fs.clone(), fs.clone());
        up[p] += h;
        dn[p] -= h;
        let fd = (value(&up) - value(&dn)) / (2.0 * f64::from(h));
        assert!(
            (fd - f64::from(g[p])).abs() < 2e-3 * (1.0 + fd.abs()),
            "skeleton {p}: analytic {} fd {fd}",
            g[p]
        );
    }
    // R_var over a conv weight [3, 2, 3, 3].
    let shape = [3, 2, 3, 3];
    let w = rand_vec(54, 2, -1.0, 1.0);
    let mut gw = vec![0.0; 54];
    weight_similarity(&w, shape, Some((1.0, &mut gw)));
    for p in 0..w.len() {
        let (mut up, mut dn) = (w.clone(), w.clone());
        up[p] += h;
        dn[p] -= h;
        let fd = (weight_similarity(&up, shape, None) - weight_similarity(&dn, shape, None))
            / (2.0 * f64::from(h));
        assert!(
            (fd - f64::from(gw[p])).abs() < 2e-3 * (1.0 + fd.abs()),
            "weight {p}: analytic {} fd {fd}",
            gw[p]
        );
    }
}

#[test]
fn no_nan_at_a_dead_filter_or_a_dead_layer() {
    let mut fs = example_fs();
    fs[..9].fill(0.0); // filter 0 dead
    for mode in [PenaltyMode::AsReleased, PenaltyMode::Adaptive] {
        let mut cfg = CdpConfig::new(0.01);
        cfg.mode = mode;
        cfg.var2 = 0.1;
        cfg.l2 = 0.1;
        cfg.gl = 0.1;
        for skel in [fs.clone(), vec![0.0; 27], vec![1.0; 27]] {
            let mut g = vec![0.0; 27];
            let (v, s) = skeleton_penalty(&cfg, &skel, 9, Some(2.0), &mut g);
            assert!(v.total().is_finite() && s.is_finite(), "{mode:?} {v:?}");
            assert!(g.iter().all(|x| x.is_finite()), "{mode:?}: {g:?}");
        }
        let mut g = vec![0.0; 27];
        skeleton_penalty(&cfg, &fs, 9, None, &mut g);
        assert!(g[..9].iter().all(|&x| x.is_finite()));
    }
    let mut gw = vec![0.0; 18];
    let s = weight_similarity(&[0.0; 18], [2, 1, 3, 3], Some((1.0, &mut gw)));
    assert!(s.is_finite() && gw.iter().all(|x| x.is_finite()));
}

#[test]
fn adaptive_weighting_follows_the_similarity_ratio() {
    let fs = example_fs();
    let prop = 0.01f32;
    let mut cfg = CdpConfig::new(prop);
    cfg.mode = PenaltyMode::Adaptive;
    let s_now: f64 = similarities(&fs, 9).iter().map(|&x| f64::from(x)).sum();
    let prev = 2.0 * s_now;
    let mut g = vec![0.0; 27];
    let (v, _) = skeleton_penalty(&cfg, &fs, 9, Some(prev), &mut g);
    let (a, b) = (
        f64::from(prop) * prev / s_now,
        f64::from(prop) * s_now / prev,
    );
    assert!((v.prop - (a + b) * 13.0).abs() < 1e-6, "{}", v.prop);
    assert!((f64::from(g[0]) - (a + b)).abs() < 1e-6);
    // Without history it is the released value.
    let (v0, _) = skeleton_penalty(&cfg, &fs, 9, None, &mut [0.0; 27]);
    assert!((v0.prop - 2.0 * f64::from(prop) * 13.0).abs() < 1e-8);
}

fn weights_for(g: &Graph, seed: u64) -> Weights {
    let mut w = Weights::new();
    for (i, (_, name, spec)) in g.param_specs().into_iter().enumerate() {
        let n: usize = spec.shape.iter().product();
        let data = if name.ends_with("running_var") {
            rand_vec(n, seed + i as u64, 0.5, 1.5)
        } else if name.ends_with("running_mean") {
            rand_vec(n, seed + i as u64, -0.2, 0.2)
        } else {
            rand_vec(n, seed + i as u64, -0.5, 0.5)
        };
        w.insert(name, Tensor::new(spec.shape, data).unwrap());
    }
    w
}

/// `input → conv (3 filters, 3x3) → bn → relu → gap → fc`.
fn tiny() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[2, 6, 6]).unwrap();
    let c = b
        .add("conv", Conv2d::new(2, 3, 3).with_padding(1), &[x])
        .unwrap();
    let n = b.add("bn", BatchNorm2d::new(3), &[c]).unwrap();
    let r = b.add("relu", Op::Relu, &[n]).unwrap();
    let p = b.add("pool", Op::GlobalAvgPool, &[r]).unwrap();
    let fc = b
        .add(
            "fc",
            Linear {
                in_features: 3,
                out_features: 2,
                bias: true,
            },
            &[p],
        )
        .unwrap();
    b.finish(&[fc]).unwrap()
}

/// DTC runs after backward and before the optimizer: with plain SGD (no momentum, no decay)
/// the masked stripes, the dead filter's skeleton and its batch norm are exactly 0 after the
/// step, which only happens if values *and* gradients were masked before it.
#[test]
fn dtc_masks_values_gradients_and_bn_before_the_step() {
    let g = tiny();
    let w = weights_for(&g, 3);
    let mut net = Network::new(g.clone(), &w).unwrap();
    let mut sk = Skeleton::ones(&g).unwrap();
    assert_eq!(sk.layers.len(), 1);
    assert!(sk.layers[0].removable && sk.layers[0].thresholded);
    assert_eq!(sk.layers[0].bn.as_deref(), Some("bn"));
    sk.layers[0].values = example_fs();
    let cfg = SparseConfig::new(1e-3, Some(0.3));
    let st = sparse::attach_skeleton(&mut net, &cfg, sk).unwrap();
    let x = Tensor::new(vec![4, 2, 6, 6], rand_vec(288, 9, -1.0, 1.0)).unwrap();
    let mut opt = Sgd::new(SgdConfig::new(0.05)).unwrap();
    let out = net.forward_train(&x).unwrap();
    let (_, d) = cross_entropy(&out, &[0, 1, 0, 1], 0.0).unwrap();
    let mut grads = net.backward(&d, &BackwardOptions::new()).unwrap();
    net.step(&mut opt, &mut grads).unwrap();
    let after = st.skeleton().layers[0].values.clone();
    let m = stripe_mask(&example_fs(), 9, &[0.1444, 1.0, 0.4815]);
    for (p, (&v, &keep)) in after.iter().zip(&m).enumerate() {
        if keep {
            assert_ne!(v, 0.0, "kept stripe {p} was zeroed");
        } else {
            assert_eq!(v, 0.0, "masked stripe {p} moved to {v}");
        }
    }
    let p = net.params();
    assert_eq!(p.get("bn.weight").unwrap().data()[1], 0.0);
    assert_eq!(p.get("bn.bias").unwrap().data()[1], 0.0);
    assert_ne!(p.get("bn.weight").unwrap().data()[0], 0.0);
    // The network's kernel is W ⊙ FS, and filter 1's kernel is all zero.
    let k = p.get("conv.weight").unwrap().data();
    let (_, wf) = &st.factors()[0];
    for (i, (&kv, &wv)) in k.iter().zip(wf).enumerate() {
        assert_eq!(kv, wv * after[(i / 18) * 9 + i % 9]);
    }
    assert!(k[18..36].iter().all(|&v| v == 0.0));
    assert!(st.stats().last_dead_filters == 1 && st.stats().last_dead_stripes == 15);
}

fn cifar_batch(g: &Graph, arch: Arch, n: usize) -> Tensor {
    let ds = shears_data::load(&common::data_dir(), DatasetName::Cifar10, Split::Test).unwrap();
    input_batch(&ds, &arch.preprocessing(), g.shape(g.inputs()[0]), n).unwrap()
}

#[test]
fn skeleton_of_ones_reproduces_the_plain_network_bit_exactly() {
    let m = common::shared_model("resnet20");
    let x = cifar_batch(&m.graph, Arch::ResNet20, 16);
    let mut plain = Network::new(m.graph.clone(), &m.weights).unwrap();
    let mut skel = Network::new(m.graph.clone(), &m.weights).unwrap();
    let st = sparse::attach(&mut skel, &SparseConfig::new(1e-4, Some(0.05))).unwrap();
    assert_eq!(st.skeleton().layers.len(), 19);
    for mode in [Mode::Eval, Mode::Train] {
        let a = plain.forward(&x, mode).unwrap();
        let b = skel.forward(&x, mode).unwrap();
        assert_eq!(a.data(), b.data(), "{mode:?}");
    }
    // A training forward/backward: the kernel gradients are the same bits too.
    let la = plain.forward_train(&x).unwrap();
    let lb = skel.forward_train(&x).unwrap();
    assert_eq!(la.data(), lb.data());
    let labels: Vec<usize> = (0..16).map(|i| i % 10).collect();
    let (_, da) = cross_entropy(&la, &labels, 0.0).unwrap();
    let ga = plain.backward(&da, &BackwardOptions::new()).unwrap();
    let gb = skel.backward(&da, &BackwardOptions::new()).unwrap();
    assert_eq!(ga.params.get("conv1.weight"), gb.params.get("conv1.weight"));
}

#[test]
fn skeleton_structure_follows_the_release() {
    // ResNet-20 (option-A shortcuts): every conv thresholded; only block conv1s removable.
    let g = build(Arch::ResNet20, &Arch::ResNet20.default_config()).unwrap();
    let sk = Skeleton::ones(&g).unwrap();
    assert_eq!(sk.layers.len(), 19);
    assert!(sk.layers.iter().all(|l| l.thresholded));
    let removable: Vec<&str> = sk
        .layers
        .iter()
        .filter(|l| l.removable)
        .map(|l| l.conv.as_str())
        .collect();
    assert_eq!(removable.len(), 9);
    assert!(removable
        .iter()
        .all(|n| n.ends_with("conv1") && n.starts_with("layer")));
    // torchvision ResNet-18: the downsample convs carry a skeleton but no threshold.
    let mut cfg = Arch::ResNet18.default_config();
    cfg.input_hw = (32, 32);
    cfg.small_input_stem = true;
    cfg.num_classes = 10;
    let g = build(Arch::ResNet18, &cfg).unwrap();
    let sk = Skeleton::ones(&g).unwrap();
    let unthresholded: Vec<&str> = sk
        .layers
        .iter()
        .filter(|l| !l.thresholded)
        .map(|l| l.conv.as_str())
        .collect();
    assert_eq!(unthresholded.len(), 3, "{unthresholded:?}");
    assert!(unthresholded.iter().all(|n| n.contains("downsample")));
    // The JSON form round-trips exactly; a wrong graph is an error naming the layer.
    let back = Skeleton::from_json(&sk.to_json()).unwrap();
    assert_eq!(back, sk);
    let other = build(Arch::ResNet20, &Arch::ResNet20.default_config()).unwrap();
    let e = sk.check(&other).unwrap_err().to_string();
    assert!(e.contains("skeleton layer"), "{e}");
}

/// A skeleton with random values in [0, 1], whole filters below τ, one block whose conv1 is
/// entirely dead and one whose conv2 is entirely dead; `W ⊙ FS` as the model's kernels.
fn sparse_model(g: &Graph, w: &Weights, tau: f32, dead_convs: &[&str]) -> (Weights, Skeleton) {
    let mut sk = Skeleton::ones(g).unwrap();
    let mut kw = w.clone();
    for (i, l) in sk.layers.iter_mut().enumerate() {
        let kk = l.kk();
        l.values = rand_vec(l.values.len(), 100 + i as u64, -1.0, 1.0);
        for (c, f) in l.values.chunks_mut(kk).enumerate() {
            if c % 4 == 1 || dead_convs.contains(&l.conv.as_str()) {
                f.iter_mut().for_each(|x| *x *= tau); // every stripe ≤ τ: a dead filter
            }
        }
        let k = kw.get_mut(&format!("{}.weight", l.conv)).unwrap();
        let per = k.numel() / l.filters;
        for (o, f) in k.data_mut().chunks_mut(per).enumerate() {
            for fi in f.chunks_mut(kk) {
                for (x, s) in fi.iter_mut().zip(&l.values[o * kk..(o + 1) * kk]) {
                    *x *= s;
                }
            }
        }
    }
    sk.tau = Some(tau);
    (kw, sk)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.data()
        .iter()
        .zip(b.data())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn masked_skeleton_and_pruned_networks_agree() {
    let tau = 0.3;
    let m = common::shared_model("resnet20");
    let x = cifar_batch(&m.graph, Arch::ResNet20, 24);
    let (kw, sk) = sparse_model(
        &m.graph,
        &m.weights,
        tau,
        &["layer1.1.conv1", "layer2.2.conv2"],
    );
    let pr = prune_from_skeleton(&m.graph, &kw, &sk, tau).unwrap();
    let r = &pr.report;
    assert_eq!(r.collapsed.len(), 2, "{:?}", r.collapsed);
    // The dead branches' constant bn2(0) is nonzero: the BN-bias caveat is real and kept.
    assert!(r
        .collapsed
        .iter()
        .all(|b| b.max_abs_shift > 0.0 && b.shift_node.is_some()));
    assert!(r.removed_filters > 0 && r.dead_filters >= r.removed_filters);
    assert!(
        r.kept_dead_filters > 0,
        "dead filters on the residual trunk stay"
    );
    assert!(r.params_after < r.params_before && r.macs_after < r.macs_before);
    assert!(r.stripe_macs_after < r.macs_after);
    assert!(pr.graph.find("layer1.1.conv1").is_none());
    // layer2.0.conv1 loses its dead filters (every 4th + 1).
    let id = pr.graph.find("layer2.0.conv1").unwrap();
    assert_eq!(pr.graph.shape(id)[0], 32 - 8);
    let mut masked = Network::new(m.graph.clone(), &pr.masked).unwrap();
    let mut pruned = Network::new(pr.graph.clone(), &pr.weights).unwrap();
    let a = masked.forward(&x, Mode::Eval).unwrap();
    let b = pruned.forward(&x, Mode::Eval).unwrap();
    let d = max_diff(&a, &b);
    assert!(d < 1e-4, "max |masked - pruned| = {d}");
    // And the masked network is not trivially the original: the mask changed the outputs.
    let mut orig = Network::new(m.graph.clone(), &kw).unwrap();
    assert!(max_diff(&orig.forward(&x, Mode::Eval).unwrap(), &a) > 1e-3);
}

#[test]
fn vgg_prune_removes_every_dead_filter_exactly() {
    let arch = Arch::Vgg11;
    let g = build(arch, &arch.default_config()).unwrap();
    let w = init_weights(&g, Some(arch), 0);
    let tau = 0.2;
    let (kw, sk) = sparse_model(&g, &w, tau, &[]);
    let pr = prune_from_skeleton(&g, &kw, &sk, tau).unwrap();
    let r = &pr.report;
    assert!(
        r.layers.iter().all(|l| l.removed_filters == l.dead_filters),
        "{:?}",
        r.layers
    );
    assert_eq!(r.kept_dead_filters, 0);
    assert!(r.collapsed.is_empty());
    let x = cifar_batch(&g, arch, 4);
    let a = Network::new(g.clone(), &pr.masked)
        .unwrap()
        .forward(&x, Mode::Eval)
        .unwrap();
    let b = Network::new(pr.graph.clone(), &pr.weights)
        .unwrap()
        .forward(&x, Mode::Eval)
        .unwrap();
    let d = max_diff(&a, &b);
    assert!(d < 1e-4, "max |masked - pruned| = {d}");
    // Bad input is an error, not a panic.
    assert!(prune_from_skeleton(&g, &kw, &sk, f32::NAN).is_err());
    let mut bad = sk.clone();
    bad.layers[0].values.pop();
    let e = prune_from_skeleton(&g, &kw, &bad, tau)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&bad.layers[0].conv), "{e}");
}

/// A short sparse training run on the real trainer kills filters, with no NaN, and the dead
/// filters' stripes and batch norms stay exactly zero under the threshold.
#[test]
fn sparse_training_with_the_trainer_kills_filters() {
    use shears::progress::Verbosity;
    use shears::train::{train, CheckpointConfig, Schedule, TrainConfig};
    let m = common::shared_model("resnet20");
    let ds = shears_data::load(&common::data_dir(), DatasetName::Cifar10, Split::Train).unwrap();
    let ds = ds.class_balanced_subset(256, 0);
    for mode in [ThresholdMode::Dynamic, ThresholdMode::Static] {
        let mut net = Network::new(m.graph.clone(), &m.weights).unwrap();
        // prop is large on purpose: 4 steps must move skeleton values from 1 below τ
        // (each step moves them by about lr · 2 · prop, plus momentum).
        let mut cfg = SparseConfig::new(2.0, Some(0.6));
        cfg.threshold_mode = mode;
        let st = sparse::attach(&mut net, &cfg).unwrap();
        let mut tc = TrainConfig::new(1);
        tc.batch_size = 64;
        tc.lr = 0.05;
        tc.schedule = Schedule::Constant;
        let rep = train(
            &mut net,
            &ds,
            None,
            &m.preprocess,
            &tc,
            &CheckpointConfig::default(),
            Verbosity::Quiet,
        )
        .unwrap();
        assert!(rep.epochs[0].train_loss.is_finite());
        let stats = st.stats();
        assert_eq!(stats.steps, 4);
        assert!(stats.last_penalty.prop > 0.0);
        let sk = st.detach(&mut net);
        assert!(sk
            .layers
            .iter()
            .flat_map(|l| &l.values)
            .all(|v| v.is_finite()));
        // Every value shrank from 1 (penalty 2·prop·lr per step, plus momentum).
        assert!(sk.layers.iter().flat_map(|l| &l.values).all(|&v| v < 1.0));
        assert!(stats.last_dead_stripes > 0, "{mode:?}: {stats:?}");
        let w = net.weights();
        let s = sk.sparsity(0.6, mode);
        assert!(s.dead_stripes > 0);
        // Whole filters die (not only stripes): prop is large, so here all of them do.
        assert!(s.dead_filters > 0, "{mode:?}: {s:?}");
        // A weights file of the trained network prunes and reproduces it.
        let pr = prune_from_skeleton(&m.graph, &w, &sk, 0.6).unwrap();
        // ... and they are removed for real: a smaller dense model.
        assert!(pr.report.removed_filters > 0, "{mode:?}");
        assert!(pr.graph.macs() < m.graph.macs(), "{mode:?}");
        let x = cifar_batch(&m.graph, Arch::ResNet20, 8);
        let a = Network::new(m.graph.clone(), &pr.masked)
            .unwrap()
            .forward(&x, Mode::Eval)
            .unwrap();
        let b = Network::new(pr.graph.clone(), &pr.weights)
            .unwrap()
            .forward(&x, Mode::Eval)
            .unwrap();
        assert!(max_diff(&a, &b) < 1e-4, "{mode:?}");
    }
}
