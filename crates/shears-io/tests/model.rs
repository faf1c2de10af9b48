//! Self-describing models, format inference, and binding loaded weights to graphs.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fixtures, shared_dir};
use shears_io::{
    bind_weights, load, read_safetensors, save_model, write_safetensors, Format, IoError,
    LoadReport, Remap, RemapRule, Strictness, FORMAT_KEY, GRAPH_KEY,
};
use shears_ir::{BatchNorm2d, Conv2d, Graph, GraphBuilder, Linear, Op, Tensor, Weights};

/// input [3, 8, 8] → conv (3→4, 3x3, p1) → bn → relu → global pool → fc (4→2, bias).
fn tiny_graph() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 8, 8]).unwrap();
    let c = b
        .add("conv1", Conv2d::new(3, 4, 3).with_padding(1), &[x])
        .unwrap();
    let n = b.add("bn1", BatchNorm2d::new(4), &[c]).unwrap();
    let r = b.add("relu", Op::Relu, &[n]).unwrap();
    let p = b.add("pool", Op::GlobalAvgPool, &[r]).unwrap();
    let fc = b
        .add(
            "fc",
            Linear {
                in_features: 4,
                out_features: 2,
                bias: true,
            },
            &[p],
        )
        .unwrap();
    b.finish(&[fc]).unwrap()
}

/// Weights for `g` with distinct values everywhere.
fn weights_for(g: &Graph) -> Weights {
    let mut k = 0.0f32;
    g.param_specs()
        .into_iter()
        .map(|(_, name, spec)| {
            let n: usize = spec.shape.iter().product();
            let data = (0..n).map(|_| {
                k += 1.0;
                k * 0.01 - 0.3
            });
            (name, Tensor::new(spec.shape, data.collect()).unwrap())
        })
        .collect()
}

#[test]
fn save_then_load_carries_graph_weights_and_metadata() {
    let g = tiny_graph();
    let w = weights_for(&g);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let meta = BTreeMap::from([
        ("shears.arch".to_string(), "tiny".to_string()),
        (
            "shears.preprocess".to_string(),
            r#"{"scale":255,"mean":[0.5],"std":[0.25]}"#.to_string(),
        ),
        (GRAPH_KEY.to_string(), "overwritten".to_string()),
    ]);
    save_model(&path, &g, &w, &meta).unwrap();
    let m = load(&path).unwrap();
    assert_eq!(m.format, Format::SafeTensors);
    assert_eq!(m.graph.as_ref(), Some(&g));
    assert_eq!(m.weights, w);
    assert!(m.skipped.is_empty());
    assert_eq!(m.metadata[FORMAT_KEY], "1");
    assert_eq!(m.metadata["shears.arch"], "tiny");
    assert_eq!(m.metadata["shears.preprocess"], meta["shears.preprocess"]);
    assert!(
        !m.metadata.contains_key(GRAPH_KEY),
        "the graph is parsed, not repeated"
    );
    // The raw file holds the graph JSON.
    let raw = read_safetensors(&path).unwrap();
    assert_eq!(Graph::from_json(&raw.metadata[GRAPH_KEY]).unwrap(), g);
}

#[test]
fn save_refuses_weights_that_would_not_reload() {
    let g = tiny_graph();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let mut w = weights_for(&g);
    w.insert("fc.bias", Tensor::zeros(&[3]));
    w.remove("bn1.running_var");
    w.insert("stray", Tensor::zeros(&[1]));
    match save_model(&path, &g, &w, &BTreeMap::new()) {
        Err(IoError::Load { origin, report }) => {
            assert!(origin.ends_with("bad.safetensors"));
            assert_eq!(report.missing, ["bn1.running_var"]);
            assert_eq!(report.unexpected, ["stray"]);
            assert_eq!(
                report.shape_mismatch,
                [("fc.bias".to_string(), vec![2], vec![3])]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn a_model_file_whose_weights_disagree_with_its_graph_is_rejected() {
    let g = tiny_graph();
    let mut w = weights_for(&g);
    w.insert("fc.weight", Tensor::zeros(&[2, 5]));
    let meta = BTreeMap::from([(GRAPH_KEY.to_string(), g.to_json())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forged.safetensors");
    write_safetensors(&path, &w, &meta).unwrap();
    let err = load(&path).unwrap_err();
    assert!(matches!(&err, IoError::Load { report, .. } if report.shape_mismatch.len() == 1));
    assert!(err.to_string().contains("forged.safetensors"), "{err}");

    let bad_graph = BTreeMap::from([(GRAPH_KEY.to_string(), "{\"format\":\"nope\"}".to_string())]);
    write_safetensors(&path, &w, &bad_graph).unwrap();
    assert!(matches!(load(&path), Err(IoError::Graph { .. })));

    let future = BTreeMap::from([
        (GRAPH_KEY.to_string(), g.to_json()),
        (FORMAT_KEY.to_string(), "2".to_string()),
    ]);
    write_safetensors(&path, &weights_for(&g), &future).unwrap();
    assert!(matches!(load(&path), Err(IoError::Unsupported { .. })));
}

#[test]
fn formats_are_inferred_from_extension_then_content() {
    assert_eq!(
        Format::infer(Path::new("a/b.SafeTensors")).unwrap(),
        Format::SafeTensors
    );
    for ext in ["pt", "pth", "th", "bin"] {
        assert_eq!(
            Format::infer(Path::new(&format!("m.{ext}"))).unwrap(),
            Format::PyTorch
        );
    }
    assert_eq!(Format::infer(Path::new("m.onnx")).unwrap(), Format::Onnx);

    let dir = tempfile::tempdir().unwrap();
    let copy = |src: &Path, name: &str| {
        let p = dir.path().join(name);
        std::fs::copy(src, &p).unwrap();
        p
    };
    let models = shared_dir().join("models");
    let th = std::fs::read_dir(models.join("original"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "th"))
        .unwrap();
    let st = copy(&models.join("resnet20.safetensors"), "weights.data");
    let legacy = copy(&th, "legacy.ckpt");
    let zip = copy(&fixtures().join("tiny_zip.pt"), "zip.ckpt");
    assert_eq!(Format::infer(&st).unwrap(), Format::SafeTensors);
    assert_eq!(Format::infer(&legacy).unwrap(), Format::PyTorch);
    assert_eq!(Format::infer(&zip).unwrap(), Format::PyTorch);
    assert_eq!(load(&st).unwrap().weights.len(), 97);
    let l = load(&legacy).unwrap();
    assert_eq!((l.format, l.graph.is_none()), (Format::PyTorch, true));
    assert!(l.metadata.contains_key("best_prec1"));
    let z = load(&zip).unwrap();
    assert_eq!(z.skipped.len(), 1, "num_batches_tracked is reported");

    let junk = dir.path().join("junk.xyz");
    std::fs::write(&junk, b"hello world, not a model").unwrap();
    let err = Format::infer(&junk).unwrap_err();
    assert!(matches!(err, IoError::Unsupported { .. }) && err.to_string().contains("junk.xyz"));
    let missing = Format::infer(&dir.path().join("missing.xyz")).unwrap_err();
    assert!(matches!(missing, IoError::Io { .. }));
}

#[test]
fn a_missing_onnx_file_is_an_io_error_naming_it() {
    let err = load(Path::new("missing-model.onnx")).unwrap_err();
    assert!(matches!(err, IoError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing-model.onnx"), "{err}");
}

#[test]
fn strict_binding_accepts_exact_matches_and_names_every_problem() {
    let g = tiny_graph();
    let w = weights_for(&g);
    let (bound, report) =
        bind_weights(&g, w.clone(), &Remap::new(), Strictness::Strict, "ok").unwrap();
    assert_eq!(bound, w);
    assert!(report.is_clean());
    assert_eq!(report.applied.len(), 7);

    let mut bad = w.clone();
    bad.remove("conv1.weight");
    bad.insert("bn1.weight", Tensor::zeros(&[5]));
    bad.insert("extra.weight", Tensor::zeros(&[1]));
    bad.insert("bn1.num_batches_tracked", Tensor::zeros(&[]));
    let err = bind_weights(
        &g,
        bad.clone(),
        &Remap::new(),
        Strictness::Strict,
        "ckpt.pth",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert_eq!(
        msg,
        "ckpt.pth: weights do not match the graph: 5 applied; 1 missing (conv1.weight); \
         1 unexpected (extra.weight); 1 with the wrong shape (bn1.weight: expected [4], found [5]); \
         1 skipped (bn1.num_batches_tracked: batch-norm step counter, unused by shears)"
    );

    let (bound, report) =
        bind_weights(&g, bad, &Remap::new(), Strictness::Lenient, "ckpt.pth").unwrap();
    assert!(!report.is_clean());
    assert_eq!(bound.len(), 5);
    assert!(!bound.contains("conv1.weight") && !bound.contains("bn1.weight"));
    assert_eq!(report.missing, ["conv1.weight"]);
    assert_eq!(report.unexpected, ["extra.weight"]);
    assert_eq!(report.skipped.len(), 1);
}

#[test]
fn remapping_renames_before_matching() {
    let g = tiny_graph();
    let w = weights_for(&g);
    let prefixed: Weights = w
        .clone()
        .into_iter()
        .map(|(n, t)| (format!("module.{}", n.replace("fc", "classifier")), t))
        .collect();
    let auto = Remap::auto_for(&g, prefixed.names());
    assert_eq!(auto.rules(), [RemapRule::StripPrefix("module.".into())]);
    assert!(bind_weights(&g, prefixed.clone(), &auto, Strictness::Strict, "x").is_err());

    let remap = auto.with_rule(RemapRule::Replace {
        from: "classifier".into(),
        to: "fc".into(),
    });
    let (bound, _) = bind_weights(&g, prefixed, &remap, Strictness::Strict, "x").unwrap();
    assert_eq!(bound, w);

    let added: Weights = w
        .clone()
        .into_iter()
        .map(|(n, t)| (n.replace("net.", ""), t))
        .collect();
    let remap = Remap::new()
        .with_rule(RemapRule::AddPrefix("net.".into()))
        .with_rule(RemapRule::StripPrefix("net.".into()))
        .with_rule(RemapRule::Replace {
            from: String::new(),
            to: "zzz".into(),
        });
    assert_eq!(
        bind_weights(&g, added, &remap, Strictness::Strict, "x")
            .unwrap()
            .0,
        w
    );

    // Two names landing on one parameter: the second is unexpected.
    let mut dup = w.clone();
    dup.insert("module.fc.bias", Tensor::zeros(&[2]));
    let strip = Remap::new().with_rule(RemapRule::StripPrefix("module.".into()));
    let (_, report) = bind_weights(&g, dup, &strip, Strictness::Lenient, "x").unwrap();
    assert_eq!(report.unexpected, ["module.fc.bias"]);
}

#[test]
fn auto_remap_strips_data_parallel_prefix_for_real_checkpoints() {
    // The akamaster ResNet-20 checkpoint against a graph naming the same parameters.
    let th = std::fs::read_dir(shared_dir().join("models").join("original"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("resnet20")
        })
        .unwrap();
    let ck = shears_io::read_pytorch(&th, &Default::default()).unwrap();
    let st = read_safetensors(&shared_dir().join("models").join("resnet20.safetensors")).unwrap();

    // A graph that needs exactly conv1 + bn1 of the stem; everything else is unexpected.
    let mut b = GraphBuilder::new();
    let x = b.input("input", &[3, 32, 32]).unwrap();
    let c = b
        .add("conv1", Conv2d::new(3, 16, 3).with_padding(1), &[x])
        .unwrap();
    let n = b.add("bn1", BatchNorm2d::new(16), &[c]).unwrap();
    let g = b.finish(&[n]).unwrap();

    let remap = Remap::auto_for(&g, ck.tensors.names());
    assert_eq!(remap.rules(), [RemapRule::StripPrefix("module.".into())]);
    let (bound, report): (Weights, LoadReport) =
        bind_weights(&g, ck.tensors, &remap, Strictness::Lenient, "resnet20.th").unwrap();
    assert_eq!(report.applied.len(), 5);
    assert!(report.missing.is_empty() && report.shape_mismatch.is_empty());
    assert_eq!(report.unexpected.len(), 97 - 5);
    assert!(report.unexpected.iter().all(|n| n.starts_with("module.")));
    for (name, t) in bound.iter() {
        assert_eq!(t, st.tensors.get(name).unwrap(), "{name}");
    }
}
