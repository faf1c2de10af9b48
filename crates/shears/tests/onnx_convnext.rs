//! ConvNeXt through ONNX (issue 14): a small ConvNeXt built from torchvision's own blocks and
//! exported by PyTorch (`make_onnx_convnext.py`) imports with its channels-last regions
//! translated (layer norms over channels, `MatMul`s as 1x1 convs), runs like PyTorch,
//! re-exports to the same graph, and prunes its MLP hidden channels exactly (pruned ==
//! masked) while every channel a layer norm reads stays unprunable.
//!
//! Tolerance against PyTorch ([`CLOSE`]): `|ours - theirs| <= 1e-4 * max(1, |theirs|)`.

use std::path::{Path, PathBuf};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shears::prune::{self, verify, DepGraph, Plan, PlanGroup, Role, VERIFY_TOLERANCE};
use shears_engine::{Mode, Network};
use shears_io::onnx::{export_onnx_bytes, import_onnx, import_onnx_bytes, OnnxExportOptions};
use shears_ir::{Graph, Op, Tensor, Weights};

/// Relative tolerance with an absolute floor of the same size.
const CLOSE: f32 = 1e-4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shears-io/tests/fixtures/onnx_convnext_legacy.onnx")
}

/// The input and PyTorch's output recorded by `make_onnx_convnext.py`.
fn torch_case() -> (Tensor, Tensor) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shears-io/tests/fixtures/onnx_convnext_expected.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tensor = |key: &str| {
        let shape: Vec<usize> =
            serde_json::from_value(json["convnext"][format!("{key}_shape")].clone()).unwrap();
        let data: Vec<f64> = serde_json::from_value(json["convnext"][key].clone()).unwrap();
        Tensor::new(shape, data.into_iter().map(|v| v as f32).collect()).unwrap()
    };
    (tensor("input"), tensor("output"))
}

fn run(graph: &Graph, weights: &Weights, x: &Tensor) -> Tensor {
    let mut net = Network::new(graph.clone(), weights).unwrap();
    net.forward(x, Mode::Eval).unwrap()
}

fn count(g: &Graph, type_name: &str) -> usize {
    g.nodes()
        .iter()
        .filter(|n| n.op.type_name() == type_name)
        .count()
}

#[test]
fn pytorch_convnext_imports_and_matches_pytorch() {
    let (g, w) = import_onnx(&fixture()).unwrap();
    // Stem, 3 blocks, downsampling and head: 6 layer norms; no transpose left anywhere.
    assert_eq!(count(&g, "layer_norm"), 6);
    // Stem, 3 depthwise, 6 MLP 1x1 (from MatMul), downsampling.
    assert_eq!(count(&g, "conv2d"), 11);
    assert_eq!(count(&g, "gelu"), 3);
    assert_eq!(count(&g, "binary"), 3, "the layer scales");
    assert_eq!(count(&g, "add"), 3, "the residuals");
    let pointwise_with_bias = g
        .nodes()
        .iter()
        .filter(|n| matches!(&n.op, Op::Conv2d(c) if c.kernel == [1, 1] && c.bias))
        .count();
    assert_eq!(
        pointwise_with_bias, 6,
        "each MatMul's Add folded into its bias"
    );
    let (x, expected) = torch_case();
    let ours = run(&g, &w, &x);
    assert_eq!(ours.shape(), expected.shape());
    for (i, (a, b)) in ours.data().iter().zip(expected.data()).enumerate() {
        assert!(
            (a - b).abs() <= CLOSE * b.abs().max(1.0),
            "logit {i}: shears {a}, pytorch {b}"
        );
    }
}

#[test]
fn convnext_exports_and_reimports_op_for_op() {
    let (g, w) = import_onnx(&fixture()).unwrap();
    let (x, _) = torch_case();
    let ours = run(&g, &w, &x);
    // With the embedded graph: exactly the same graph and weights.
    let bytes = export_onnx_bytes(&g, &w, &OnnxExportOptions::new()).unwrap();
    let (g2, w2) = import_onnx_bytes(&bytes, "convnext.onnx").unwrap();
    assert_eq!((&g2, &w2), (&g, &w));
    // Without it: the transposes around each layer norm are read back, op for op.
    let bare = OnnxExportOptions::new().with_embed_graph(false);
    let bytes = export_onnx_bytes(&g, &w, &bare).unwrap();
    let (g3, w3) = import_onnx_bytes(&bytes, "convnext.onnx").unwrap();
    let ops = |g: &Graph| g.nodes().iter().map(|n| n.op.clone()).collect::<Vec<_>>();
    assert_eq!(ops(&g3), ops(&g));
    assert!(run(&g3, &w3, &x).data() == ours.data());
}

/// A random plan removing some channels of every prunable group.
fn random_plan(g: &Graph, dg: &DepGraph, seed: u64) -> Plan {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut plan = Plan::empty(g);
    for grp in dg.prunable() {
        let mut removed: Vec<usize> = (0..grp.size)
            .filter(|_| rng.next_u32() % 3 == 0)
            .take(grp.size - 1)
            .collect();
        if removed.is_empty() {
            removed.push(seed as usize % grp.size);
        }
        plan.groups.push(PlanGroup {
            group_id: grp.id,
            root: g.node(grp.root).name.clone(),
            removed,
        });
    }
    plan
}

#[test]
fn convnext_prunes_its_mlp_hidden_channels_exactly() {
    let (g, w) = import_onnx(&fixture()).unwrap();
    let dg = DepGraph::build(&g).unwrap();
    // Prunable: exactly the three MLP hidden layers (4C channels, rooted at the first 1x1).
    let prunable: Vec<(usize, &Op)> = dg
        .prunable()
        .map(|grp| (grp.size, &g.node(grp.root).op))
        .collect();
    assert_eq!(prunable.len(), 3, "{prunable:?}");
    for (size, op) in &prunable {
        assert!(
            matches!(op, Op::Conv2d(c) if c.kernel == [1, 1] && c.out_channels == *size),
            "{op:?}"
        );
        assert!(*size == 32 || *size == 64);
    }
    // Every channel a layer norm reads is unprunable, and says why.
    for grp in dg.groups() {
        let reads_ln = grp
            .members_with(Role::InChannels)
            .any(|m| g.node(g.node(m.node).inputs[0]).op.type_name() == "layer_norm");
        if reads_ln {
            assert!(!grp.prunable);
            let why = grp.why_not.as_deref().unwrap();
            assert!(why.contains("layer norm"), "{why}");
        }
    }
    let (x, _) = torch_case();
    for seed in 0..3 {
        let plan = random_plan(&g, &dg, seed);
        let p = prune::prune(&g, &w, &plan).unwrap();
        let v = verify(&g, &w, &plan, &p, &x, VERIFY_TOLERANCE)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(v.max_abs_diff <= VERIFY_TOLERANCE, "seed {seed}");
        assert!(p.report.is_exact(), "seed {seed}");
        assert!(p.graph.macs() < g.macs());
    }
}
