//! ONNX export and import: round trips over graphs covering every op, PyTorch-exported
//! fixtures (`fixtures/make_onnx.py`), unsupported ops and corruption sweeps.
//!
//! The io crate has no engine, so these tests check structure and weights; the numeric checks
//! (against tract and against PyTorch's outputs) live in `crates/shears/tests/onnx_tract.rs`.

mod common;

use std::path::Path;

use common::{fixtures, sweep, Rng};
use shears_io::onnx::{export_onnx, export_onnx_bytes, import_onnx, import_onnx_bytes};
use shears_io::{load, Format, IoError, OnnxExportOptions};
use shears_ir::{
    BatchNorm2d, Conv2d, Graph, GraphBuilder, Linear, Op, ParamKind, Pool2d, ShortcutA, Tensor,
    Weights,
};

/// Every op of the set: asymmetric padding, groups, depthwise, dilation, a 3-input add, a
/// padded max pool, an average pool without padded cells, an option-A shortcut, a concat,
/// dropout, identity, global pool and a linear head; non-square input.
fn every_op() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", &[3, 12, 11]).unwrap();
    let stem = Conv2d::new(3, 8, 3)
        .with_padding4([0, 1, 1, 2])
        .with_bias(true);
    let c = b.add("stem.conv", stem, &[x]).unwrap();
    let bn = b
        .add("stem.bn", BatchNorm2d::new(8).with_eps(1e-3), &[c])
        .unwrap();
    let r = b.add("stem.relu", Op::Relu, &[bn]).unwrap();
    let pool = Pool2d::new(3, 2).with_padding(1);
    let mp = b.add("stem.pool", Op::MaxPool2d(pool), &[r]).unwrap();
    let grouped = Conv2d::new(8, 8, 3)
        .with_padding(2)
        .with_dilation(2)
        .with_groups(4);
    let g = b.add("block.grouped", grouped, &[mp]).unwrap();
    let dw = Conv2d {
        stride: [1, 1],
        ..Conv2d::new(8, 8, 3).with_padding(1).with_groups(8)
    };
    let d = b.add("block.dw", dw, &[mp]).unwrap();
    let sum = b.add("block.add", Op::Add, &[mp, g, d]).unwrap();
    let avg = Pool2d {
        count_include_pad: false,
        ..Pool2d::new(3, 1).with_padding(1)
    };
    let a = b.add("block.avg", Op::AvgPool2d(avg), &[sum]).unwrap();
    let s = ShortcutA {
        stride: 2,
        pad_before: 4,
        pad_after: 4,
    };
    let sc = b.add("down.shortcut", s, &[a]).unwrap();
    let down = Conv2d::new(8, 16, 3).with_stride(2).with_padding(1);
    let dc = b.add("down.conv", down, &[sum]).unwrap();
    let cat = b.add("down.cat", Op::Concat, &[sc, dc]).unwrap();
    let drop = b.add("head.drop", Op::Dropout { p: 0.2 }, &[cat]).unwrap();
    let id = b.add("head.id", Op::Identity, &[drop]).unwrap();
    let gap = b.add("head.gap", Op::GlobalAvgPool, &[id]).unwrap();
    let fc = Linear {
        in_features: 32,
        out_features: 10,
        bias: true,
    };
    let fc = b.add("head.fc", fc, &[gap]).unwrap();
    b.finish(&[fc]).unwrap()
}

/// Shortcuts that only pad, only subsample or do nothing; flatten of a feature map and of a
/// vector; a linear layer without bias; batch norm of a vector; a concat of pooled vectors;
/// two outputs.
fn odd_corners() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[2, 5, 5]).unwrap();
    let pad_only = ShortcutA {
        stride: 1,
        pad_before: 1,
        pad_after: 0,
    };
    let s1 = b.add("pad_only", pad_only, &[x]).unwrap();
    let noop = ShortcutA {
        stride: 1,
        pad_before: 0,
        pad_after: 0,
    };
    let s2 = b.add("noop", noop, &[s1]).unwrap();
    let sub = ShortcutA {
        stride: 3,
        pad_before: 0,
        pad_after: 0,
    };
    let s3 = b.add("subsample", sub, &[s2]).unwrap();
    let g1 = b.add("gap1", Op::GlobalAvgPool, &[s2]).unwrap();
    let g2 = b.add("gap2", Op::GlobalAvgPool, &[s3]).unwrap();
    let pooled = b.add("pooled", Op::Concat, &[g1, g2]).unwrap();
    let bn = b.add("pooled_bn", BatchNorm2d::new(6), &[pooled]).unwrap();
    let flat = b.add("flat", Op::Flatten, &[s3]).unwrap();
    let fc1 = Linear {
        in_features: 12,
        out_features: 6,
        bias: false,
    };
    let fc1 = b.add("fc1", fc1, &[flat]).unwrap();
    let sum = b.add("mix", Op::Add, &[fc1, bn]).unwrap();
    let r = b.add("relu", Op::Relu, &[sum]).unwrap();
    let flat2 = b.add("flat_vec", Op::Flatten, &[r]).unwrap();
    let drop = b.add("drop", Op::Dropout { p: 0.5 }, &[flat2]).unwrap();
    let fc2 = Linear {
        in_features: 6,
        out_features: 4,
        bias: true,
    };
    let fc2 = b.add("fc2", fc2, &[drop]).unwrap();
    b.finish(&[fc2, flat]).unwrap()
}

/// Seeded weights in [-1, 1) (variances in [0.5, 1.5)), with a negative zero and a subnormal
/// in the first tensor to prove the bits survive.
fn weights_for(g: &Graph, seed: u64) -> Weights {
    let mut rng = Rng(seed);
    let mut w = Weights::new();
    for (i, (_, name, spec)) in g.param_specs().into_iter().enumerate() {
        let n: usize = spec.shape.iter().product();
        let mut data: Vec<f32> = (0..n)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect();
        if spec.kind == ParamKind::RunningVar {
            data.iter_mut().for_each(|v| *v = v.abs() + 0.5);
        }
        if i == 0 {
            data[0] = -0.0;
            data[1] = f32::from_bits(1);
        }
        w.insert(name, Tensor::new(spec.shape, data).unwrap());
    }
    w
}

fn assert_bits_eq(a: &Weights, b: &Weights) {
    let names = |w: &Weights| w.names().cloned().collect::<Vec<_>>();
    assert_eq!(names(a), names(b));
    for (name, t) in a.iter() {
        let u = b.get(name).unwrap();
        assert_eq!(t.shape(), u.shape(), "{name}");
        let bits = |t: &Tensor| t.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(t) == bits(u), "{name}: values differ");
    }
}

/// Same ops, wiring and outputs; same names except graph inputs (named `input` by the
/// export).
fn assert_same_ops(a: &Graph, b: &Graph) {
    assert_eq!(a.len(), b.len());
    assert_eq!(a.outputs(), b.outputs());
    for (x, y) in a.nodes().iter().zip(b.nodes()) {
        assert_eq!(x.op, y.op, "node {}", x.name);
        assert_eq!(x.inputs, y.inputs, "node {}", x.name);
        if !matches!(x.op, Op::Input { .. }) {
            assert_eq!(x.name, y.name);
        }
    }
}

fn round_trip(g: &Graph, w: &Weights, opts: &OnnxExportOptions) -> (Graph, Weights) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    export_onnx(&path, g, w, opts).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "the temporary file is gone");
    import_onnx(&path).unwrap()
}

#[test]
fn round_trip_restores_every_graph_exactly() {
    for (g, seed) in [(every_op(), 1), (odd_corners(), 2)] {
        let w = weights_for(&g, seed);
        let (g2, w2) = round_trip(&g, &w, &OnnxExportOptions::new());
        assert_eq!(g2, g);
        assert_bits_eq(&w2, &w);
        let (g3, w3) = round_trip(&g, &w, &OnnxExportOptions::new().with_batch(3));
        assert_eq!(g3, g);
        assert_bits_eq(&w3, &w);
    }
}

#[test]
fn round_trip_without_the_embedded_graph_is_op_for_op() {
    for (g, seed) in [(every_op(), 3), (odd_corners(), 4)] {
        let w = weights_for(&g, seed);
        let opts = OnnxExportOptions::new().with_embed_graph(false);
        let (g2, w2) = round_trip(&g, &w, &opts);
        assert_same_ops(&g2, &g);
        assert_bits_eq(&w2, &w);
    }
}

#[test]
fn an_embedded_graph_that_disagrees_is_ignored() {
    let g = every_op();
    let w = weights_for(&g, 5);
    let mut bytes = export_onnx_bytes(&g, &w, &OnnxExportOptions::new()).unwrap();
    // Still a valid graph, but its dropout no longer matches the ONNX one.
    let at = find(&bytes, b"\"p\":0.2").expect("graph json is embedded");
    bytes[at..at + 7].copy_from_slice(b"\"p\":0.3");
    let (g2, w2) = import_onnx_bytes(&bytes, "edited.onnx").unwrap();
    assert_same_ops(&g2, &g);
    assert_eq!(
        g2.node(g2.inputs()[0]).name,
        "input",
        "names come from the ONNX graph"
    );
    assert_bits_eq(&w2, &w);
}

#[test]
fn load_reads_onnx_with_its_graph() {
    let g = every_op();
    let w = weights_for(&g, 6);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    export_onnx(&path, &g, &w, &OnnxExportOptions::new()).unwrap();
    let m = load(&path).unwrap();
    assert_eq!(m.format, Format::Onnx);
    assert_eq!(m.graph.as_ref(), Some(&g));
    assert_bits_eq(&m.weights, &w);
    assert!(m.metadata["onnx.producer"].starts_with("shears"));
    assert!(!m.metadata.contains_key("shears.graph"));
}

#[test]
fn export_refuses_weights_that_do_not_fit() {
    let g = every_op();
    let mut w = weights_for(&g, 7);
    w.remove("head.fc.bias");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let err = export_onnx(&path, &g, &w, &OnnxExportOptions::new()).unwrap_err();
    assert!(matches!(err, IoError::Load { .. }), "{err}");
    assert!(err.to_string().contains("head.fc.bias"), "{err}");
    assert!(!path.exists());
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn unknown_ops_are_named() {
    let g = every_op();
    let w = weights_for(&g, 8);
    let mut bytes = export_onnx_bytes(&g, &w, &OnnxExportOptions::new()).unwrap();
    // The op type is the only place "Relu" is spelled with a capital R.
    let at = find(&bytes, b"Relu").unwrap();
    assert_eq!(find(&bytes[at + 1..], b"Relu"), None);
    bytes[at..at + 4].copy_from_slice(b"Celu");
    let err = import_onnx_bytes(&bytes, "m.onnx").unwrap_err();
    match &err {
        IoError::Unsupported { path, what } => {
            assert_eq!(path, Path::new("m.onnx"));
            assert_eq!(what, "onnx op Celu (node stem.relu)");
        }
        e => panic!("expected Unsupported, got {e}"),
    }
}

#[test]
fn not_onnx_is_corrupt() {
    for bytes in [
        &b""[..],
        b"\x08",
        b"PK\x03\x04 not protobuf",
        b"{\"json\": 1}",
    ] {
        let err = import_onnx_bytes(bytes, "x.onnx").unwrap_err();
        assert!(matches!(err, IoError::Corrupt { .. }), "{err}");
    }
    let err = import_onnx(Path::new("does/not/exist.onnx")).unwrap_err();
    assert!(matches!(err, IoError::Io { .. }), "{err}");
}

#[test]
fn truncated_or_corrupted_exports_fail_cleanly() {
    let g = every_op();
    let w = weights_for(&g, 9);
    let bytes = export_onnx_bytes(&g, &w, &OnnxExportOptions::new()).unwrap();
    let stats = sweep(
        &bytes,
        "sweep.onnx",
        3,
        3000,
        bytes.len(),
        0x0_1e55_0001,
        |b| import_onnx_bytes(b, "sweep.onnx"),
    );
    assert!(stats.err > 1000, "{stats:?}");
}

#[test]
fn truncated_or_corrupted_pytorch_exports_fail_cleanly() {
    for name in FIXTURES {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let stats = sweep(&bytes, name, 1, 2000, bytes.len(), 0x0_1e55_0002, |b| {
            import_onnx_bytes(b, name)
        });
        assert!(stats.err > bytes.len(), "{name}: {stats:?}");
    }
}

const FIXTURES: [&str; 5] = [
    "onnx_tiny_legacy.onnx",
    "onnx_tiny_dynamo.onnx",
    "onnx_shortcut_dynamo.onnx",
    "onnx_matmul_legacy.onnx",
    "onnx_matmul_dynamo.onnx",
];

/// The state dict `make_onnx.py` saved for `case`.
fn torch_params(case: &str) -> Weights {
    let text = std::fs::read_to_string(fixtures().join("onnx_expected.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut w = Weights::new();
    for (name, t) in json[case]["params"].as_object().unwrap() {
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
        let data: Vec<f64> = serde_json::from_value(t["data"].clone()).unwrap();
        let data = data.into_iter().map(|x| x as f32).collect();
        w.insert(name.clone(), Tensor::new(shape, data).unwrap());
    }
    w
}

/// `(name, op type)` of every node.
fn layout(g: &Graph) -> Vec<(&str, &'static str)> {
    g.nodes()
        .iter()
        .map(|n| (n.name.as_str(), n.op.type_name()))
        .collect()
}

/// Checks that the named tensors equal PyTorch's bit for bit.
fn assert_params_from_torch(w: &Weights, torch: &Weights, names: &[(&str, &str)]) {
    for (ours, theirs) in names {
        let a = w.get(ours).unwrap_or_else(|| panic!("{ours} missing"));
        let b = torch
            .get(theirs)
            .unwrap_or_else(|| panic!("{theirs} not in the state dict"));
        assert_eq!(a, b, "{ours} vs {theirs}");
    }
}

#[test]
fn pytorch_torchscript_export_imports() {
    let (g, w) = import_onnx(&fixtures().join("onnx_tiny_legacy.onnx")).unwrap();
    assert_eq!(
        layout(&g),
        [
            ("input", "input"),
            ("conv1", "conv2d"),
            ("bn1", "batch_norm2d"),
            ("/Relu", "relu"),
            ("/pool/MaxPool", "max_pool2d"),
            ("conv2", "conv2d"),
            ("/Add", "add"),
            ("/avg/AveragePool", "avg_pool2d"),
            ("/Concat", "concat"),
            ("/GlobalAveragePool", "global_avg_pool"),
            ("fc", "linear"),
        ]
    );
    assert_eq!(g.shape(g.inputs()[0]), &[3, 8, 8]);
    assert_eq!(g.shape(g.outputs()[0]), &[10]);
    let conv2 = &g.node(g.find("conv2").unwrap()).op;
    let expected = Conv2d::new(8, 8, 3)
        .with_padding(2)
        .with_dilation(2)
        .with_groups(2)
        .with_bias(true);
    assert_eq!(conv2, &Op::Conv2d(expected));
    let bn = &g.node(g.find("bn1").unwrap()).op;
    assert_eq!(bn, &Op::BatchNorm2d(BatchNorm2d::new(8)));
    let avg = &g.node(g.find("/avg/AveragePool").unwrap()).op;
    let Op::AvgPool2d(avg) = avg else { panic!() };
    assert!(!avg.count_include_pad);
    let torch = torch_params("tiny");
    let same: Vec<(&str, &str)> = torch.names().map(|n| (n.as_str(), n.as_str())).collect();
    assert_params_from_torch(&w, &torch, &same);
    assert_eq!(w.len(), torch.len());
}

#[test]
fn pytorch_dynamo_export_imports() {
    let (g, w) = import_onnx(&fixtures().join("onnx_tiny_dynamo.onnx")).unwrap();
    // The dynamo exporter folds the batch norm into conv1 and spells the global pool as
    // ReduceMean, the flatten as a Reshape (which makes no node) and drops the dropout.
    assert_eq!(
        layout(&g),
        [
            ("x", "input"),
            ("conv1", "conv2d"),
            ("node_relu", "relu"),
            ("node_max_pool2d", "max_pool2d"),
            ("conv2", "conv2d"),
            ("node_add", "add"),
            ("node_avg_pool2d", "avg_pool2d"),
            ("node_cat", "concat"),
            ("node_mean", "global_avg_pool"),
            ("fc", "linear"),
        ]
    );
    let torch = torch_params("tiny");
    let names = [
        ("conv2.weight", "conv2.weight"),
        ("conv2.bias", "conv2.bias"),
        ("fc.weight", "fc.weight"),
        ("fc.bias", "fc.bias"),
    ];
    assert_params_from_torch(&w, &torch, &names);
    assert!(w.contains("conv1.bias"), "the folded batch norm's shift");
}

#[test]
fn pytorch_option_a_shortcut_imports() {
    let (g, w) = import_onnx(&fixtures().join("onnx_shortcut_dynamo.onnx")).unwrap();
    assert_eq!(
        layout(&g),
        [
            ("x", "input"),
            ("conv1", "conv2d"),
            ("node_slice_1", "shortcut_a"),
            ("node_add", "add"),
            ("node_relu", "relu"),
            ("node_mean", "global_avg_pool"),
            ("fc", "linear"),
        ]
    );
    let s = &g.node(g.find("node_slice_1").unwrap()).op;
    let expected = ShortcutA {
        stride: 2,
        pad_before: 2,
        pad_after: 2,
    };
    assert_eq!(s, &Op::ShortcutA(expected));
    let torch = torch_params("shortcut");
    assert_params_from_torch(
        &w,
        &torch,
        &[("fc.weight", "fc.weight"), ("fc.bias", "fc.bias")],
    );
}

#[test]
fn pytorch_matmul_and_gemm_without_transpose_import() {
    for name in ["onnx_matmul_legacy.onnx", "onnx_matmul_dynamo.onnx"] {
        let (g, w) = import_onnx(&fixtures().join(name)).unwrap();
        let ops: Vec<&str> = g.nodes().iter().map(|n| n.op.type_name()).collect();
        assert_eq!(
            ops,
            ["input", "flatten", "linear", "relu", "linear"],
            "{name}"
        );
        let torch = torch_params("matmul");
        let linears: Vec<_> = g
            .nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::Linear(_)))
            .collect();
        for (node, (wn, bn)) in linears.iter().zip([("w", "b"), ("w2", "b2")]) {
            let weight = w.get(&node.param_name(ParamKind::Weight)).unwrap();
            let t = torch.get(wn).unwrap();
            let (rows, cols) = (t.shape()[0], t.shape()[1]);
            assert_eq!(weight.shape(), &[cols, rows], "{name}: stored [out, in]");
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(weight.data()[c * rows + r], t.data()[r * cols + c]);
                }
            }
            let bias = w.get(&node.param_name(ParamKind::Bias)).unwrap();
            assert_eq!(bias, torch.get(bn).unwrap(), "{name}");
        }
    }
}
