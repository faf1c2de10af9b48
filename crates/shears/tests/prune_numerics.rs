//! Surgery numerics without the engine: a naive f64 reference forward (below) runs the masked
//! and the pruned model on random inputs, on hand-made graphs covering every op and on zoo
//! models, through `prune::verify_with`.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shears::prune::{
    self, mask_weights, verify_with, DepGraph, FoldMode, Plan, PlanGroup, PruneError, Role,
    VERIFY_TOLERANCE,
};
use shears::zoo::{build, init_weights, init_weights_with, Arch, InitScheme};
use shears_engine::kernels::activation::apply_f64;
use shears_ir::{
    BatchNorm2d, Conv2d, Graph, GraphBuilder, Linear, Op, ParamKind, Pool2d, ShortcutA, Tensor,
    Weights,
};

// ---------------------------------------------------------------------------------------------
// reference forward (f64, NCHW, one sample at a time)

fn param(g: &Graph, w: &Weights, id: shears_ir::NodeId, k: ParamKind) -> Vec<f64> {
    let name = g.node(id).param_name(k);
    w.get(&name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .data()
        .iter()
        .map(|&x| f64::from(x))
        .collect()
}

fn forward_one(g: &Graph, w: &Weights, x: &[f64]) -> Vec<f64> {
    let mut vals: Vec<Vec<f64>> = Vec::with_capacity(g.len());
    for id in g.ids() {
        let n = g.node(id);
        let out_shape = g.shape(id);
        let ins = g.input_shapes(id);
        let inp = |k: usize| -> &Vec<f64> { &vals[n.inputs[k].0] };
        let v: Vec<f64> = match &n.op {
            Op::Input { .. } => x.to_vec(),
            Op::Conv2d(c) => {
                let (ci, h, wd) = (ins[0][0], ins[0][1], ins[0][2]);
                let (o_n, oh, ow) = (out_shape[0], out_shape[1], out_shape[2]);
                let wt = param(g, w, id, ParamKind::Weight);
                let bias = if c.bias {
                    param(g, w, id, ParamKind::Bias)
                } else {
                    vec![0.0; o_n]
                };
                let (ipg, opg) = (ci / c.groups, o_n / c.groups);
                let [kh, kw] = c.kernel;
                let src = inp(0);
                let mut out = vec![0.0; o_n * oh * ow];
                for o in 0..o_n {
                    let grp = o / opg;
                    let plane = &mut out[o * oh * ow..(o + 1) * oh * ow];
                    plane.fill(bias[o]);
                    for i in 0..ipg {
                        let cin = grp * ipg + i;
                        for a in 0..kh {
                            for b in 0..kw {
                                let wv = wt[((o * ipg + i) * kh + a) * kw + b];
                                for y in 0..oh {
                                    let iy = (y * c.stride[0] + a * c.dilation[0]) as isize
                                        - c.padding[0] as isize;
                                    if iy < 0 || iy as usize >= h {
                                        continue;
                                    }
                                    for xx in 0..ow {
                                        let ix = (xx * c.stride[1] + b * c.dilation[1]) as isize
                                            - c.padding[1] as isize;
                                        if ix < 0 || ix as usize >= wd {
                                            continue;
                                        }
                                        plane[y * ow + xx] +=
                                            wv * src[(cin * h + iy as usize) * wd + ix as usize];
                                    }
                                }
                            }
                        }
                    }
                }
                out
            }
            Op::BatchNorm2d(b) => {
                let (ga, be, m, var) = (
                    param(g, w, id, ParamKind::Weight),
                    param(g, w, id, ParamKind::Bias),
                    param(g, w, id, ParamKind::RunningMean),
                    param(g, w, id, ParamKind::RunningVar),
                );
                let per: usize = out_shape[1..].iter().product();
                inp(0)
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| {
                        let c = i / per;
                        (x - m[c]) / (var[c] + f64::from(b.eps)).sqrt() * ga[c] + be[c]
                    })
                    .collect()
            }
            Op::Relu => inp(0).iter().map(|&x| x.max(0.0)).collect(),
            Op::Act(a) => inp(0).iter().map(|&x| apply_f64(*a, x)).collect(),
            Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                let is_max = matches!(n.op, Op::MaxPool2d(_));
                let (c, h, wd) = (ins[0][0], ins[0][1], ins[0][2]);
                let (oh, ow) = (out_shape[1], out_shape[2]);
                let src = inp(0);
                let mut out = Vec::with_capacity(c * oh * ow);
                for ch in 0..c {
                    for y in 0..oh {
                        for xx in 0..ow {
                            let mut acc = if is_max { f64::NEG_INFINITY } else { 0.0 };
                            let mut cnt = 0;
                            for a in 0..p.kernel[0] {
                                for b in 0..p.kernel[1] {
                                    let iy = (y * p.stride[0] + a) as isize - p.padding[0] as isize;
                                    let ix =
                                        (xx * p.stride[1] + b) as isize - p.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= wd {
                                        continue;
                                    }
                                    let v = src[(ch * h + iy as usize) * wd + ix as usize];
                                    cnt += 1;
                                    acc = if is_max { acc.max(v) } else { acc + v };
                                }
                            }
                            out.push(if is_max {
                                acc
                            } else if p.count_include_pad {
                                // PyTorch clips the window to the padded extent first.
                                let span = |o: usize, a: usize, n: usize| {
                                    let start = (o * p.stride[a]) as isize - p.padding[a] as isize;
                                    let end = (start + p.kernel[a] as isize)
                                        .min((n + p.padding[a + 2]) as isize);
                                    (end - start) as f64
                                };
                                acc / (span(y, 0, h) * span(xx, 1, wd))
                            } else {
                                acc / cnt as f64
                            });
                        }
                    }
                }
                out
            }
            Op::GlobalAvgPool => {
                let per: usize = ins[0][1..].iter().product();
                inp(0)
                    .chunks(per)
                    .map(|c| c.iter().sum::<f64>() / per as f64)
                    .collect()
            }
            Op::Linear(l) => {
                let wt = param(g, w, id, ParamKind::Weight);
                let bias = if l.bias {
                    param(g, w, id, ParamKind::Bias)
                } else {
                    vec![0.0; l.out_features]
                };
                let src = inp(0);
                (0..l.out_features)
                    .map(|o| {
                        bias[o]
                            + wt[o * l.in_features..(o + 1) * l.in_features]
                                .iter()
                                .zip(src)
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                    })
                    .collect()
            }
            Op::Flatten | Op::Dropout { .. } | Op::Identity => inp(0).clone(),
            Op::Add => {
                let mut acc = inp(0).clone();
                for k in 1..n.inputs.len() {
                    for (a, b) in acc.iter_mut().zip(inp(k)) {
                        *a += b;
                    }
                }
                acc
            }
            Op::Concat => (0..n.inputs.len()).flat_map(|k| inp(k).clone()).collect(),
            Op::Channel(ch) => {
                let per: usize = ins[0][1..].iter().product();
                let src = inp(0);
                ch.sources(ins[0][0])
                    .iter()
                    .flat_map(|&c| src[c * per..(c + 1) * per].iter().copied())
                    .collect()
            }
            Op::ShortcutA(s) => {
                let (c, h, wd) = (ins[0][0], ins[0][1], ins[0][2]);
                let (oh, ow) = (out_shape[1], out_shape[2]);
                let src = inp(0);
                let mut out = vec![0.0; out_shape[0] * oh * ow];
                for ch in 0..c {
                    for y in 0..oh {
                        for xx in 0..ow {
                            out[((s.pad_before + ch) * oh + y) * ow + xx] =
                                src[(ch * h + y * s.stride) * wd + xx * s.stride];
                        }
                    }
                }
                out
            }
            Op::LayerNorm(l) => {
                let (c, src) = (l.channels, inp(0));
                let s = src.len() / c;
                let (gm, bt) = (
                    param(g, w, id, ParamKind::Weight),
                    param(g, w, id, ParamKind::Bias),
                );
                let mut out = vec![0.0; src.len()];
                for p in 0..s {
                    let mean = (0..c).map(|k| src[k * s + p]).sum::<f64>() / c as f64;
                    let var =
                        (0..c).map(|k| (src[k * s + p] - mean).powi(2)).sum::<f64>() / c as f64;
                    for k in 0..c {
                        out[k * s + p] = (src[k * s + p] - mean) / (var + f64::from(l.eps)).sqrt()
                            * gm[k]
                            + bt[k];
                    }
                }
                out
            }
            Op::Binary(bin) => {
                let konst = bin
                    .constant
                    .as_ref()
                    .map(|k| (k.shape.clone(), param(g, w, id, ParamKind::Weight)));
                let operand =
                    |k: usize| -> (Vec<usize>, Vec<f64>) { (ins[k].to_vec(), inp(k).clone()) };
                let (a, b) = match &konst {
                    Some(c) if bin.constant.as_ref().unwrap().left => (c.clone(), operand(0)),
                    Some(c) => (operand(0), c.clone()),
                    None => (operand(0), operand(1)),
                };
                broadcast_apply(bin.kind, out_shape, &a, &b)
            }
        };
        assert_eq!(v.len(), out_shape.iter().product::<usize>(), "{}", n.name);
        vals.push(v);
    }
    vals.swap_remove(g.outputs()[0].0)
}

/// `a op b` with per-axis broadcasting (operands of the output's rank), row-major.
fn broadcast_apply(
    kind: shears_ir::BinaryKind,
    out: &[usize],
    a: &(Vec<usize>, Vec<f64>),
    b: &(Vec<usize>, Vec<f64>),
) -> Vec<f64> {
    let numel: usize = out.iter().product();
    let at = |(shape, data): &(Vec<usize>, Vec<f64>), mut i: usize| -> f64 {
        let mut off = 0;
        let mut stride = 1;
        for ax in (0..out.len()).rev() {
            let c = i % out[ax];
            i /= out[ax];
            if shape[ax] != 1 {
                off += c * stride;
            }
            stride *= shape[ax];
        }
        data[off]
    };
    (0..numel).map(|i| kind.apply(at(a, i), at(b, i))).collect()
}

/// The reference forward over a batch `[N, ...]`, in the shape `verify_with` expects.
fn reference(g: &Graph, w: &Weights, x: &Tensor) -> Result<Tensor, String> {
    let n = x.shape()[0];
    let per = x.numel() / n;
    let mut out = Vec::new();
    for i in 0..n {
        let xi: Vec<f64> = x.data()[i * per..(i + 1) * per]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        out.extend(forward_one(g, w, &xi).into_iter().map(|v| v as f32));
    }
    let per_out = out.len() / n;
    Tensor::new(vec![n, per_out], out).map_err(|e| e.to_string())
}

/// The reference forward in f64 end to end (for comparisons finer than f32).
fn reference64(g: &Graph, w: &Weights, x: &[f64]) -> Vec<f64> {
    forward_one(g, w, x)
}

// ---------------------------------------------------------------------------------------------
// helpers

struct Rng(ChaCha8Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.0.next_u32() >> 8) as f32 / (1u32 << 24) as f32)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
}

fn input(g: &Graph, n: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let mut shape = vec![n];
    shape.extend_from_slice(g.shape(g.inputs()[0]));
    let numel: usize = shape.iter().product();
    Tensor::new(shape, (0..numel).map(|_| rng.uniform(-1.0, 1.0)).collect()).unwrap()
}

/// Random BN statistics with positive shifts, so that most removed channels carry a nonzero
/// constant through the ReLUs.
fn randomize_bn(g: &Graph, w: &mut Weights, seed: u64) {
    let mut rng = Rng::new(seed);
    for id in g.ids() {
        if let Op::BatchNorm2d(_) = g.node(id).op {
            let n = g.node(id);
            for (kind, lo, hi) in [
                (ParamKind::Weight, 0.5, 1.5),
                (ParamKind::Bias, -0.2, 0.8),
                (ParamKind::RunningMean, -0.3, 0.3),
                (ParamKind::RunningVar, 0.5, 2.0),
            ] {
                for x in w.get_mut(&n.param_name(kind)).unwrap().data_mut() {
                    *x = rng.uniform(lo, hi);
                }
            }
        }
    }
}

fn random_plan(
    g: &Graph,
    dg: &DepGraph,
    seed: u64,
    keep_group: impl Fn(&prune::Group) -> bool,
) -> Plan {
    let mut rng = Rng::new(seed);
    let mut plan = Plan::empty(g);
    for grp in dg.prunable().filter(|x| keep_group(x)) {
        if rng.below(10) >= 7 {
            continue;
        }
        let k = rng.below(grp.size);
        let mut idx: Vec<usize> = (0..grp.size).collect();
        for i in 0..k {
            let j = i + rng.below(grp.size - i);
            idx.swap(i, j);
        }
        let mut removed = idx[..k].to_vec();
        removed.sort_unstable();
        if !removed.is_empty() {
            plan.groups.push(PlanGroup {
                group_id: grp.id,
                root: g.node(grp.root).name.clone(),
                removed,
            });
        }
    }
    plan
}

/// Masked vs pruned through `verify_with` and the reference forward. Exact surgery must pass
/// the tolerance; inexact surgery must say so (never a silent approximation). In exact fold
/// mode (the default) every plan must verify.
fn check(g: &Graph, w: &Weights, plan: &Plan, x: &Tensor) -> (prune::Pruned, f64) {
    let p = prune::prune(g, w, plan).unwrap();
    match verify_with(g, w, plan, &p, x, VERIFY_TOLERANCE, reference) {
        Ok(v) => {
            assert_eq!(v.surgery_exact, p.report.is_exact());
            assert_eq!(v.fold, plan.fold);
            let d = v.max_abs_diff;
            (p, d)
        }
        Err(e) if plan.fold == FoldMode::Exact => panic!("exact fold mode must verify: {e}"),
        Err(PruneError::Verification { max_abs_diff, .. }) => {
            assert!(
                !p.report.is_exact(),
                "outputs differ by {max_abs_diff:e} but surgery claims to be exact"
            );
            (p, max_abs_diff)
        }
        Err(e) => panic!("{e}"),
    }
}

fn conv(i: usize, o: usize, k: usize) -> Conv2d {
    Conv2d::new(i, o, k)
}

fn torch_init(g: &Graph, seed: u64) -> Weights {
    init_weights_with(g, InitScheme::TorchDefault, seed)
}

// ---------------------------------------------------------------------------------------------
// hand-made graphs

/// conv 3x3 → BN → ReLU → 1x1 conv (no bias) → BN → ReLU → global pool → linear (no bias).
fn fold_graph() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 6, 6]).unwrap();
    let a = b.add("a", conv(3, 6, 3).with_padding(1), &[x]).unwrap();
    let a = b.add("a_bn", BatchNorm2d::new(6), &[a]).unwrap();
    let a = b.add("a_relu", Op::Relu, &[a]).unwrap();
    let c = b.add("b", conv(6, 5, 1), &[a]).unwrap();
    let c = b.add("b_bn", BatchNorm2d::new(5), &[c]).unwrap();
    let c = b.add("b_relu", Op::Relu, &[c]).unwrap();
    let p = b.add("gap", Op::GlobalAvgPool, &[c]).unwrap();
    let fc = Linear {
        in_features: 5,
        out_features: 4,
        bias: false,
    };
    let o = b.add("fc", fc, &[p]).unwrap();
    b.finish(&[o]).unwrap()
}

#[test]
fn constant_fold_into_1x1_conv_and_linear_is_exact() {
    let g = fold_graph();
    let mut w = torch_init(&g, 1);
    randomize_bn(&g, &mut w, 2);
    for bn in ["a_bn", "b_bn"] {
        w.get_mut(&format!("{bn}.bias"))
            .unwrap()
            .data_mut()
            .fill(0.7);
        w.get_mut(&format!("{bn}.running_mean"))
            .unwrap()
            .data_mut()
            .fill(0.0);
    }
    let mut plan = Plan::empty(&g);
    plan.groups.push(PlanGroup {
        group_id: 1,
        root: "a".into(),
        removed: vec![1, 4],
    });
    plan.groups.push(PlanGroup {
        group_id: 2,
        root: "b".into(),
        removed: vec![0, 3],
    });
    let (p, d) = check(&g, &w, &plan, &input(&g, 3, 7));
    assert!(p.report.is_exact());
    assert!(d <= 1e-5, "max diff {d:e}");
    let consumers: Vec<(&str, bool)> = p
        .report
        .folds
        .iter()
        .map(|f| (f.consumer.as_str(), f.bias_added))
        .collect();
    assert_eq!(consumers, [("b", true), ("fc", true)]);
    assert!(p.report.folds.iter().all(|f| f.max_abs_constant > 0.1));
    // Without the fold the outputs would differ: the constants matter.
    let mut unfolded = p.weights.clone();
    unfolded.get_mut("fc.bias").unwrap().data_mut().fill(0.0);
    let x = input(&g, 1, 7);
    let masked = reference(&g, &mask_weights(&g, &w, &plan).unwrap(), &x).unwrap();
    let bad = reference(&p.graph, &unfolded, &x).unwrap();
    let diff = masked
        .data()
        .iter()
        .zip(bad.data())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff > 1e-3, "the fold should matter, diff {diff}");
}

/// conv 3x3 → BN → ReLU → padded conv (the graph output).
fn border_graph(second: Conv2d) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[2, 5, 7]).unwrap();
    let a = b.add("a", conv(2, 4, 3).with_padding(1), &[x]).unwrap();
    let a = b.add("a_bn", BatchNorm2d::new(4), &[a]).unwrap();
    let a = b.add("a_relu", Op::Relu, &[a]).unwrap();
    let c = b.add("c", second, &[a]).unwrap();
    b.finish(&[c]).unwrap()
}

#[test]
fn border_approximation_is_reported_exactly() {
    for second in [
        conv(4, 3, 3).with_padding(1),
        conv(4, 3, 3).with_padding4([1, 2, 0, 1]).with_stride(2),
        conv(4, 3, 3)
            .with_padding(2)
            .with_dilation(2)
            .with_bias(true),
        conv(4, 3, 1).with_padding(1),
    ] {
        let g = border_graph(second);
        let mut w = torch_init(&g, 3);
        randomize_bn(&g, &mut w, 4);
        w.get_mut("a_bn.bias").unwrap().data_mut().fill(0.9);
        let mut plan = Plan::empty(&g);
        plan.groups.push(PlanGroup {
            group_id: 1,
            root: "a".into(),
            removed: vec![0, 2],
        });
        // Exact mode: forced to zero, dropped unfolded, exact.
        let (p, d) = check(&g, &w, &plan, &input(&g, 2, 1));
        assert!(p.report.is_exact() && p.report.folds.is_empty() && d <= 1e-5);
        assert_eq!(p.report.zeroed_channels, 2);
        // Interior mode: folded, and the border deviation reported to the digit.
        plan.fold = FoldMode::Interior;
        let p = prune::prune(&g, &w, &plan).unwrap();
        let masked = mask_weights(&g, &w, &plan).unwrap();
        let mut rng = Rng::new(5);
        let x: Vec<f64> = (0..70).map(|_| f64::from(rng.uniform(-1.0, 1.0))).collect();
        let a = reference64(&g, &masked, &x);
        let b = reference64(&p.graph, &p.weights, &x);
        let observed = a
            .iter()
            .zip(&b)
            .map(|(u, v)| (u - v).abs())
            .fold(0.0, f64::max);
        assert_eq!(p.report.approximations.len(), 1);
        let reported = p.report.approximations[0].max_abs_delta;
        assert!(observed > 1e-3, "the border effect is real: {observed}");
        assert!(
            (observed - reported).abs() <= 1e-5 * reported.max(1.0),
            "observed {observed}, reported {reported}"
        );
    }
    // An unpadded consumer is exact.
    let g = border_graph(conv(4, 3, 3));
    let mut w = torch_init(&g, 3);
    randomize_bn(&g, &mut w, 4);
    let plan = {
        let mut p = Plan::empty(&g);
        p.groups.push(PlanGroup {
            group_id: 1,
            root: "a".into(),
            removed: vec![1],
        });
        p
    };
    let (p, d) = check(&g, &w, &plan, &input(&g, 2, 1));
    assert!(p.report.is_exact() && d <= 1e-5);
}

/// Every op: option-A shortcut, add, depthwise conv, concat, max and average pools, flatten,
/// linear → linear; all consumers of prunable channels are exact (1x1 or unpadded convs,
/// linear layers), so every random plan must be exact with nonzero constants everywhere.
fn every_op_graph() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 8, 8]).unwrap();
    let s = b.add("s", conv(3, 4, 1), &[x]).unwrap();
    let s = b.add("s_bn", BatchNorm2d::new(4), &[s]).unwrap();
    let s = b.add("s_relu", Op::Relu, &[s]).unwrap();
    let b1 = b.add("b1", conv(4, 8, 1).with_stride(2), &[s]).unwrap();
    let b1 = b.add("b1_bn", BatchNorm2d::new(8), &[b1]).unwrap();
    let b1 = b.add("b1_relu", Op::Relu, &[b1]).unwrap();
    let b2 = b.add("b2", conv(8, 8, 1), &[b1]).unwrap();
    let b2 = b.add("b2_bn", BatchNorm2d::new(8), &[b2]).unwrap();
    let sc = ShortcutA {
        stride: 2,
        pad_before: 3,
        pad_after: 1,
    };
    let sc = b.add("shortcut", sc, &[s]).unwrap();
    let y = b.add("add", Op::Add, &[b2, sc]).unwrap();
    let y = b.add("add_relu", Op::Relu, &[y]).unwrap();
    let d = b.add("d", conv(8, 6, 1).with_bias(true), &[y]).unwrap();
    let d = b.add("d_relu", Op::Relu, &[d]).unwrap();
    let dw = b
        .add(
            "dw",
            conv(6, 6, 3).with_padding(1).with_groups(6).with_bias(true),
            &[d],
        )
        .unwrap();
    let dw = b.add("dw_bn", BatchNorm2d::new(6), &[dw]).unwrap();
    let dw = b.add("dw_relu", Op::Relu, &[dw]).unwrap();
    let cat = b.add("cat", Op::Concat, &[y, dw]).unwrap();
    let mp = b
        .add(
            "mp",
            Op::MaxPool2d(Pool2d::new(2, 2).with_padding(1)),
            &[cat],
        )
        .unwrap();
    let e = b.add("e", conv(14, 5, 2).with_bias(true), &[mp]).unwrap();
    let e = b.add("e_relu", Op::Relu, &[e]).unwrap();
    let ap = b.add("ap", Op::AvgPool2d(Pool2d::new(2, 1)), &[e]).unwrap();
    let f = b.add("flat", Op::Flatten, &[ap]).unwrap();
    let h = Linear {
        in_features: 5,
        out_features: 7,
        bias: false,
    };
    let h = b.add("hidden", h, &[f]).unwrap();
    let h = b.add("hidden_relu", Op::Relu, &[h]).unwrap();
    let h = b.add("drop", Op::Dropout { p: 0.5 }, &[h]).unwrap();
    let out = Linear {
        in_features: 7,
        out_features: 3,
        bias: true,
    };
    let o = b.add("out", out, &[h]).unwrap();
    b.finish(&[o]).unwrap()
}

#[test]
fn every_op_random_plans_are_exact() {
    let g = every_op_graph();
    let dg = DepGraph::build(&g).unwrap();
    let roots: Vec<&str> = dg
        .prunable()
        .map(|x| g.node(x.root).name.as_str())
        .collect();
    assert_eq!(roots, ["s", "b1", "b2", "d", "e", "hidden"]);
    let dwg = dg.prunable().find(|x| g.node(x.root).name == "d").unwrap();
    assert!(dwg.members.iter().any(|m| m.role == Role::Depthwise));
    let mut w = torch_init(&g, 11);
    randomize_bn(&g, &mut w, 12);
    let x = input(&g, 3, 13);
    let mut n_folds = 0;
    for seed in 0..25 {
        let plan = random_plan(&g, &dg, seed, |_| true);
        let (p, d) = check(&g, &w, &plan, &x);
        assert!(
            p.report.is_exact(),
            "seed {seed}: {:?}",
            p.report.approximations
        );
        assert!(d <= 1e-5, "seed {seed}: max diff {d:e}");
        n_folds += p.report.folds.len();
    }
    assert!(
        n_folds > 10,
        "the plans exercise constant folding ({n_folds} folds)"
    );
}

#[test]
fn padded_average_pool_on_a_constant_is_reported() {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[2, 6, 6]).unwrap();
    let a = b.add("a", conv(2, 4, 1).with_bias(true), &[x]).unwrap();
    let mut pool = Pool2d::new(3, 1).with_padding(1);
    pool.count_include_pad = true;
    let ap = b.add("ap", Op::AvgPool2d(pool), &[a]).unwrap();
    let c = b.add("c", conv(4, 2, 1), &[ap]).unwrap();
    let g = b.finish(&[c]).unwrap();
    let mut w = torch_init(&g, 1);
    w.get_mut("a.bias").unwrap().data_mut().fill(0.5);
    let mut plan = Plan::empty(&g);
    plan.groups.push(PlanGroup {
        group_id: 1,
        root: "a".into(),
        removed: vec![2],
    });
    let (p, d) = check(&g, &w, &plan, &input(&g, 2, 3));
    assert!(p.report.is_exact() && d <= 1e-5 && p.report.zeroed_channels == 1);
    plan.fold = FoldMode::Interior;
    let p = prune::prune(&g, &w, &plan).unwrap();
    let a = &p.report.approximations[0];
    assert_eq!(a.node, "ap");
    // A corner window holds 4 of 9 cells: the masked value is 0.5 * 4/9 instead of 0.5.
    assert!((a.max_abs_delta - 0.5 * 5.0 / 9.0).abs() < 1e-12);
}

// ---------------------------------------------------------------------------------------------
// zoo models through the reference forward

fn zoo(arch: Arch, hw: usize) -> Graph {
    let mut c = arch.default_config();
    c.input_hw = (hw, hw);
    build(arch, &c).unwrap()
}

#[test]
fn zoo_models_masked_equals_pruned() {
    for (arch, hw, n_plans) in [
        (Arch::ResNet20, 8, 6),
        (Arch::Vgg11, 32, 2),
        (Arch::DenseNetBcCifar, 8, 3),
        (Arch::LeNet5, 28, 6),
        (Arch::Conv4, 28, 4),
        (Arch::MlperfResNet8, 32, 4),
    ] {
        let g = zoo(arch, hw);
        let w = init_weights(&g, Some(arch), 1);
        let dg = DepGraph::build(&g).unwrap();
        let x = input(&g, 2, 3);
        let mut n_exact = 0;
        for seed in 0..n_plans {
            let mut plan = random_plan(&g, &dg, seed, |_| true);
            let (p, d) = check(&g, &w, &plan, &x);
            assert!(p.report.is_exact(), "{arch} seed {seed}: exact mode");
            assert!(d <= VERIFY_TOLERANCE, "{arch} seed {seed}: {d:e}");
            plan.fold = FoldMode::Interior;
            let (p, d) = check(&g, &w, &plan, &x);
            if p.report.is_exact() {
                n_exact += 1;
                assert!(d <= VERIFY_TOLERANCE, "{arch} seed {seed}: {d:e}");
            }
        }
        // Fresh BN layers (beta = mean = 0) give zero constants: only models whose convs have
        // biases (LeNet-5, MLPerf) fold nonzero constants into padded convs in interior mode.
        if !matches!(arch, Arch::LeNet5 | Arch::MlperfResNet8) {
            assert_eq!(n_exact, n_plans, "{arch}");
        }
    }
}

#[test]
fn densenet_bc_growth_channels_fold_exactly() {
    // Growth, stem and transition channels only reach 1x1 convs and the classifier, so they
    // fold exactly even with nonzero constants; bottleneck channels reach 3x3 convs.
    let g = zoo(Arch::DenseNetBcCifar, 8);
    let mut w = init_weights(&g, Some(Arch::DenseNetBcCifar), 2);
    randomize_bn(&g, &mut w, 3);
    let dg = DepGraph::build(&g).unwrap();
    let x = input(&g, 1, 4);
    let exact_group = |grp: &prune::Group| !g.node(grp.root).name.ends_with(".conv1");
    for seed in 0..2 {
        let plan = random_plan(&g, &dg, seed, exact_group);
        let (p, d) = check(&g, &w, &plan, &x);
        assert!(p.report.is_exact(), "{:?}", p.report.approximations);
        assert!(!p.report.folds.is_empty());
        assert!(d <= VERIFY_TOLERANCE, "{d:e}");
    }
    let mut plan = random_plan(&g, &dg, 9, |grp| !exact_group(grp));
    let (p, d) = check(&g, &w, &plan, &x);
    assert!(p.report.is_exact() && p.report.zeroed_channels > 0 && d <= VERIFY_TOLERANCE);
    plan.fold = FoldMode::Interior;
    let (p, _) = check(&g, &w, &plan, &x);
    assert!(!p.report.is_exact());
    assert!(p
        .report
        .approximations
        .iter()
        .all(|a| a.node.ends_with(".conv2")));
}

#[test]
fn zero_weight_channels_are_removed_exactly() {
    // Channels whose producer weights (and biases) are already zero: the pruned model equals
    // the ORIGINAL model, not just the masked one.
    for (arch, hw) in [(Arch::ResNet20, 8), (Arch::LeNet5, 28), (Arch::Vgg11, 32)] {
        let g = zoo(arch, hw);
        let mut w = init_weights(&g, Some(arch), 5);
        let dg = DepGraph::build(&g).unwrap();
        let plan = random_plan(&g, &dg, 42, |_| true);
        assert!(!plan.is_empty());
        w = mask_weights(&g, &w, &plan).unwrap();
        for pg in &plan.groups {
            for m in dg.groups()[pg.group_id].members.iter() {
                if m.role != Role::OutChannels {
                    continue;
                }
                let name = g.node(m.node).param_name(ParamKind::Bias);
                if let Some(b) = w.get_mut(&name) {
                    for &r in &pg.removed {
                        for &i in &m.idxs[r] {
                            b.data_mut()[i] = 0.0;
                        }
                    }
                }
            }
        }
        let p = prune::prune(&g, &w, &plan).unwrap();
        assert!(p.report.is_exact(), "{arch}: {:?}", p.report.approximations);
        let x = input(&g, 2, 8);
        let a = reference(&g, &w, &x).unwrap();
        let b = reference(&p.graph, &p.weights, &x).unwrap();
        let d = a
            .data()
            .iter()
            .zip(b.data())
            .map(|(u, v)| (u - v).abs())
            .fold(0.0f32, f32::max);
        assert!(f64::from(d) <= VERIFY_TOLERANCE, "{arch}: {d:e}");
    }
}

#[test]
fn verification_fails_loudly() {
    let g = fold_graph();
    let mut w = torch_init(&g, 1);
    randomize_bn(&g, &mut w, 2);
    let mut plan = Plan::empty(&g);
    plan.groups.push(PlanGroup {
        group_id: 1,
        root: "a".into(),
        removed: vec![0],
    });
    let mut p = prune::prune(&g, &w, &plan).unwrap();
    // Corrupt the pruned model.
    p.weights.get_mut("b.weight").unwrap().data_mut()[0] += 1.0;
    let e = verify_with(
        &g,
        &w,
        &plan,
        &p,
        &input(&g, 2, 1),
        VERIFY_TOLERANCE,
        reference,
    )
    .unwrap_err();
    assert!(matches!(e, PruneError::Verification { .. }));
    assert!(e.to_string().starts_with("verification failed"), "{e}");
    let e = verify_with(
        &g,
        &w,
        &plan,
        &p,
        &input(&g, 2, 1),
        1e-4,
        |_: &Graph, _: &Weights, _: &Tensor| Err::<Tensor, _>("engine exploded"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("engine exploded"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// broadcasting binary ops: squeeze-excitation, layer scale, spatial attention

/// Sets every binary op's constant operand to random values in `[lo, hi]`.
fn randomize_operands(g: &Graph, w: &mut Weights, seed: u64, lo: f32, hi: f32) {
    let mut rng = Rng::new(seed);
    for id in g.ids() {
        if let Op::Binary(b) = &g.node(id).op {
            if b.constant.is_some() {
                let name = g.node(id).param_name(ParamKind::Weight);
                for x in w.get_mut(&name).unwrap().data_mut() {
                    *x = rng.uniform(lo, hi);
                }
            }
        }
    }
}

/// conv 3x3 → BN → ReLU → squeeze-excitation (whole-map average pool `[8, 1, 1]` → 1x1 conv →
/// ReLU → 1x1 conv → ReLU, standing in for the gate) → `Mul` with the trunk → `consumer` → BN
/// → ReLU → global pool → linear.
fn se_graph(consumer: Conv2d) -> Graph {
    use shears_ir::{Binary, BinaryKind};
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 6, 6]).unwrap();
    let t = b.add("stem", conv(3, 8, 3).with_padding(1), &[x]).unwrap();
    let t = b.add("stem_bn", BatchNorm2d::new(8), &[t]).unwrap();
    let t = b.add("stem_relu", Op::Relu, &[t]).unwrap();
    let squeeze = Op::AvgPool2d(Pool2d::new(6, 1));
    let s = b.add("se.pool", squeeze, &[t]).unwrap();
    let s = b
        .add("se.reduce", conv(8, 4, 1).with_bias(true), &[s])
        .unwrap();
    let s = b.add("se.relu", Op::Relu, &[s]).unwrap();
    let s = b
        .add("se.expand", conv(4, 8, 1).with_bias(true), &[s])
        .unwrap();
    let s = b.add("se.gate", Op::Relu, &[s]).unwrap();
    let y = b
        .add("se.scale", Binary::new(BinaryKind::Mul), &[t, s])
        .unwrap();
    let c_out = consumer.out_channels;
    let y = b.add("head", consumer, &[y]).unwrap();
    let y = b.add("head_bn", BatchNorm2d::new(c_out), &[y]).unwrap();
    let y = b.add("head_relu", Op::Relu, &[y]).unwrap();
    let p = b.add("gap", Op::GlobalAvgPool, &[y]).unwrap();
    let fc = Linear {
        in_features: c_out,
        out_features: 3,
        bias: true,
    };
    let o = b.add("fc", fc, &[p]).unwrap();
    b.finish(&[o]).unwrap()
}

/// `(role, node)` of a group's members.
fn roles(g: &Graph, grp: &prune::Group) -> Vec<(Role, String)> {
    grp.members
        .iter()
        .map(|m| (m.role, g.node(m.node).name.clone()))
        .collect()
}

#[test]
fn squeeze_excitation_couples_the_gate_with_the_trunk() {
    let g = se_graph(conv(8, 6, 3).with_padding(1));
    let dg = DepGraph::build(&g).unwrap();
    let trunk = dg.find_root(&g, "stem").next().unwrap();
    assert!(trunk.prunable && trunk.size == 8);
    assert_eq!(
        roles(&g, trunk),
        [
            (Role::OutChannels, "stem".to_string()),
            (Role::BnChannels, "stem_bn".into()),
            (Role::InChannels, "se.reduce".into()),
            (Role::OutChannels, "se.expand".into()),
            (Role::InChannels, "head".into()),
        ]
    );
    let inner = dg.find_root(&g, "se.reduce").next().unwrap();
    assert!(inner.prunable);
    assert_eq!(
        roles(&g, inner),
        [
            (Role::OutChannels, "se.reduce".to_string()),
            (Role::InChannels, "se.expand".into()),
        ]
    );
    let text = dg.describe(&g);
    assert!(text.contains("out  se.expand  0..8"), "{text}");
}

#[test]
fn squeeze_excitation_pruned_equals_masked() {
    // A padded consumer forces the trunk's nonzero constants to zero; a valid one folds the
    // product of the trunk's and the gate's constants exactly.
    for (consumer, forced) in [
        (conv(8, 6, 3).with_padding(1), true),
        (conv(8, 6, 3), false),
    ] {
        let g = se_graph(consumer);
        let dg = DepGraph::build(&g).unwrap();
        let mut w = torch_init(&g, 3);
        randomize_bn(&g, &mut w, 4);
        for b in ["se.reduce.bias", "se.expand.bias"] {
            w.get_mut(b).unwrap().data_mut().fill(0.4);
        }
        let x = input(&g, 3, 5);
        let (mut n_zeroed, mut n_folds) = (0, 0);
        for seed in 0..12 {
            let mut plan = random_plan(&g, &dg, seed, |_| true);
            let (p, d) = check(&g, &w, &plan, &x);
            assert!(p.report.is_exact(), "seed {seed}");
            assert!(d <= 1e-5, "seed {seed}: max diff {d:e}");
            n_zeroed += p.report.zeroed_channels;
            n_folds += p.report.folds.len();
            plan.fold = FoldMode::Interior;
            check(&g, &w, &plan, &x);
        }
        assert_eq!(n_zeroed > 0, forced, "forced channels");
        assert!(n_folds > 0, "the plans fold constants");
    }
}

/// conv 3x3 → BN → ReLU → `x * gamma` (`gamma` `[8, 1, 1]`, a layer scale) → `+ beta`
/// (`[8, 1, 1]`) → consumer conv 1x1 → global pool → linear.
fn layer_scale_graph() -> Graph {
    use shears_ir::{Binary, BinaryKind};
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 5, 5]).unwrap();
    let t = b.add("stem", conv(3, 8, 3).with_padding(1), &[x]).unwrap();
    let t = b.add("stem_bn", BatchNorm2d::new(8), &[t]).unwrap();
    let t = b.add("stem_relu", Op::Relu, &[t]).unwrap();
    let mul = Binary::with_constant(BinaryKind::Mul, vec![8, 1, 1], false);
    let t = b.add("gamma", mul, &[t]).unwrap();
    let add = Binary::with_constant(BinaryKind::Add, vec![8, 1, 1], true);
    let t = b.add("beta", add, &[t]).unwrap();
    let t = b.add("head", conv(8, 4, 1), &[t]).unwrap();
    let p = b.add("gap", Op::GlobalAvgPool, &[t]).unwrap();
    let fc = Linear {
        in_features: 4,
        out_features: 3,
        bias: false,
    };
    let o = b.add("fc", fc, &[p]).unwrap();
    b.finish(&[o]).unwrap()
}

#[test]
fn constant_operands_are_cut_with_their_channels() {
    let g = layer_scale_graph();
    let dg = DepGraph::build(&g).unwrap();
    let trunk = dg.find_root(&g, "stem").next().unwrap();
    let operands: Vec<String> = roles(&g, trunk)
        .into_iter()
        .filter(|(r, _)| *r == Role::Operand)
        .map(|(_, n)| n)
        .collect();
    assert_eq!(operands, ["gamma", "beta"]);
    let mut w = torch_init(&g, 1);
    randomize_bn(&g, &mut w, 2);
    randomize_operands(&g, &mut w, 3, -1.0, 1.5);
    let x = input(&g, 2, 4);
    let mut plan = Plan::empty(&g);
    plan.groups.push(PlanGroup {
        group_id: trunk.id,
        root: "stem".into(),
        removed: vec![1, 5, 6],
    });
    let (p, d) = check(&g, &w, &plan, &x);
    assert!(p.report.is_exact() && d <= 1e-5, "max diff {d:e}");
    assert_eq!(p.weights.get("gamma.weight").unwrap().shape(), &[5, 1, 1]);
    assert_eq!(p.weights.get("beta.weight").unwrap().shape(), &[5, 1, 1]);
    let kept = [0, 2, 3, 4, 7];
    let orig = w.get("gamma.weight").unwrap().data();
    let cut = p.weights.get("gamma.weight").unwrap().data();
    assert!(kept.iter().zip(cut).all(|(&k, &v)| orig[k] == v));
    assert!(
        !p.report.folds.is_empty(),
        "(x_c * gamma_c + beta_c) folds into head"
    );
    let cost = prune::predict_cost(&g, &w, &dg, &plan).unwrap();
    assert_eq!(cost.params, p.graph.n_params());
}

#[test]
fn varying_operands_force_or_block() {
    use shears_ir::{Binary, BinaryKind};
    // Spatial attention: the trunk times a one-channel map. A removed trunk channel times the
    // map is no constant: it is forced to zero, and the map's own channel is not prunable.
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 5, 5]).unwrap();
    let t = b.add("stem", conv(3, 6, 3).with_padding(1), &[x]).unwrap();
    let t = b.add("stem_bn", BatchNorm2d::new(6), &[t]).unwrap();
    let t = b.add("stem_relu", Op::Relu, &[t]).unwrap();
    let a = b.add("att", conv(6, 1, 1).with_bias(true), &[t]).unwrap();
    let y = b
        .add("attend", Binary::new(BinaryKind::Mul), &[t, a])
        .unwrap();
    let y = b.add("head", conv(6, 4, 1), &[y]).unwrap();
    let p = b.add("gap", Op::GlobalAvgPool, &[y]).unwrap();
    let fc = Linear {
        in_features: 4,
        out_features: 2,
        bias: false,
    };
    let o = b.add("fc", fc, &[p]).unwrap();
    let g = b.finish(&[o]).unwrap();
    let dg = DepGraph::build(&g).unwrap();
    let att = dg.find_root(&g, "att").next().unwrap();
    assert!(!att.prunable);
    assert!(
        att.why_not.as_deref().unwrap().contains("broadcast"),
        "{att:?}"
    );
    let trunk = dg.find_root(&g, "stem").next().unwrap();
    assert!(trunk.prunable);
    let mut w = torch_init(&g, 1);
    randomize_bn(&g, &mut w, 2);
    let mut plan = Plan::empty(&g);
    plan.groups.push(PlanGroup {
        group_id: trunk.id,
        root: "stem".into(),
        removed: vec![0, 3],
    });
    for fold in [FoldMode::Exact, FoldMode::Interior] {
        plan.fold = fold;
        let (p, d) = check(&g, &w, &plan, &input(&g, 2, 3));
        assert!(p.report.is_exact() && d <= 1e-5, "{fold}: {d:e}");
        assert_eq!(p.report.zeroed_channels, 2, "{fold}");
    }

    // Where forcing cannot give 0 the channels are not prunable: adding a varying or shared
    // operand, dividing by the channels.
    let blocked = |op: Binary, constant_shape: Option<Vec<usize>>| {
        let mut b = GraphBuilder::new();
        let x = b.input("input", &[3, 4, 4]).unwrap();
        let t = b.add("stem", conv(3, 6, 1), &[x]).unwrap();
        let y = match constant_shape {
            Some(_) => b.add("op", op, &[t]).unwrap(),
            None => {
                let a = b.add("att", conv(3, 1, 1), &[x]).unwrap();
                b.add("op", op, &[t, a]).unwrap()
            }
        };
        let y = b.add("head", conv(6, 2, 1), &[y]).unwrap();
        let g = b.finish(&[y]).unwrap();
        let dg = DepGraph::build(&g).unwrap();
        let grp = dg.find_root(&g, "stem").next().unwrap().clone();
        grp.why_not
    };
    let add = Binary::new(BinaryKind::Add);
    assert!(blocked(add, None).unwrap().contains("varies"));
    let shared = Binary::with_constant(BinaryKind::Sub, vec![1, 1, 1], false);
    assert!(blocked(shared, Some(vec![1, 1, 1]))
        .unwrap()
        .contains("shared"));
    let plane = Binary::with_constant(BinaryKind::Add, vec![6, 4, 4], false);
    assert!(blocked(plane, Some(vec![6, 4, 4]))
        .unwrap()
        .contains("varies"));
    let inv = Binary::with_constant(BinaryKind::Div, vec![6, 1, 1], true);
    assert!(blocked(inv, Some(vec![6, 1, 1]))
        .unwrap()
        .contains("divides"));
    let scale = Binary::with_constant(BinaryKind::Div, vec![6, 1, 1], false);
    assert_eq!(blocked(scale, Some(vec![6, 1, 1])), None);
    let mul = Binary::new(BinaryKind::Mul);
    assert_eq!(blocked(mul, None), None);
}
