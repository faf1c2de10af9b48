//! `--verify` on a model whose outputs are large (the ONNX matrix's randomly initialised
//! inception_v3 has logits near 3e5): the exact prune equals the masked model up to f32
//! rounding at the outputs' magnitude, so the tolerance is relative to the output scale; a
//! real error still fails.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shears::prune::{self, verify, DepGraph, Plan, PlanGroup, PruneError, VERIFY_TOLERANCE};
use shears::zoo::{init_weights_with, InitScheme};
use shears_ir::{Conv2d, Graph, GraphBuilder, Linear, Op, Tensor, Weights};

/// conv 3x3 (padded) -> ReLU -> conv 3x3 (valid) -> ReLU -> conv 3x3 (valid) -> ReLU -> global
/// pool -> linear: the first conv's removed channels fold exactly into the second's bias.
fn graph() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 11, 11]).unwrap();
    let mut t = x;
    for (i, (cin, pad)) in [(3, 1), (24, 0), (24, 0)].into_iter().enumerate() {
        let conv = Conv2d::new(cin, 24, 3).with_padding(pad).with_bias(true);
        t = b.add(format!("conv{i}"), conv, &[t]).unwrap();
        t = b.add(format!("relu{i}"), Op::Relu, &[t]).unwrap();
    }
    let p = b.add("gap", Op::GlobalAvgPool, &[t]).unwrap();
    let fc = Linear {
        in_features: 24,
        out_features: 10,
        bias: true,
    };
    let o = b.add("fc", fc, &[p]).unwrap();
    b.finish(&[o]).unwrap()
}

/// Torch-default weights with the activations blown up layer by layer (each conv's weights
/// times 4, the classifier's times 1e4) and positive first-layer biases, so that removed
/// channels carry nonzero constants and the logits reach about 1e5.
fn weights(g: &Graph) -> Weights {
    let mut w = init_weights_with(g, InitScheme::TorchDefault, 7);
    for (name, factor) in [
        ("conv0.weight", 4.0),
        ("conv1.weight", 4.0),
        ("conv2.weight", 4.0),
        ("fc.weight", 1e4),
    ] {
        for x in w.get_mut(name).unwrap().data_mut() {
            *x *= factor;
        }
    }
    for x in w.get_mut("conv0.bias").unwrap().data_mut() {
        *x = x.abs() + 0.05;
    }
    w
}

fn input(g: &Graph, n: usize) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut shape = vec![n];
    shape.extend_from_slice(g.shape(g.inputs()[0]));
    let numel: usize = shape.iter().product();
    let data = (0..numel)
        .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
        .collect();
    Tensor::new(shape, data).unwrap()
}

fn plan(g: &Graph, dg: &DepGraph, root: &str, removed: Vec<usize>) -> Plan {
    let grp = dg.find_root(g, root).next().unwrap();
    let mut plan = Plan::empty(g);
    plan.groups.push(PlanGroup {
        group_id: grp.id,
        root: root.into(),
        removed,
    });
    plan
}

#[test]
fn large_outputs_verify_relative_to_their_scale() {
    let g = graph();
    let dg = DepGraph::build(&g).unwrap();
    let w = weights(&g);
    let x = input(&g, 4);
    for (root, removed) in [
        ("conv0", (0..24).step_by(2).collect::<Vec<_>>()),
        ("conv1", vec![1, 2, 3, 5, 8, 13, 21]),
        ("conv2", (0..12).collect()),
    ] {
        let plan = plan(&g, &dg, root, removed);
        let p = prune::prune(&g, &w, &plan).unwrap();
        assert!(p.report.is_exact(), "{root}");
        assert!(!p.report.folds.is_empty(), "{root}: constants are folded");
        let v = verify(&g, &w, &plan, &p, &x, VERIFY_TOLERANCE)
            .unwrap_or_else(|e| panic!("{root}: {e}"));
        assert!(v.output_scale > 1e4, "{root}: logits {}", v.output_scale);
        assert_eq!(v.tolerance, VERIFY_TOLERANCE * v.output_scale);
        assert!(v.max_abs_diff <= v.tolerance, "{v:?}");
        assert!(v.note.as_deref().unwrap().contains("relative"), "{v:?}");
    }
}

#[test]
fn large_outputs_still_fail_on_a_wrong_fold() {
    let g = graph();
    let dg = DepGraph::build(&g).unwrap();
    let w = weights(&g);
    let x = input(&g, 4);
    let plan = plan(&g, &dg, "conv0", (0..24).step_by(2).collect());
    let mut p = prune::prune(&g, &w, &plan).unwrap();
    // Undo a tenth of the folded constant of one output channel of conv1.
    let (orig, pruned) = (
        w.get("conv1.bias").unwrap(),
        p.weights.get("conv1.bias").unwrap(),
    );
    let fold = pruned.data()[0] - orig.data()[0];
    assert!(fold.abs() > 1e-3, "a nonzero fold, {fold}");
    p.weights.get_mut("conv1.bias").unwrap().data_mut()[0] -= fold * 0.1;
    let e = verify(&g, &w, &plan, &p, &x, VERIFY_TOLERANCE).unwrap_err();
    assert!(matches!(e, PruneError::Verification { .. }), "{e}");
    assert!(
        e.to_string().contains("relative to the largest |output|"),
        "{e}"
    );
}
