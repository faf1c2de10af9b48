//! ONNX export checked numerically: zoo models exported by shears run in `tract-onnx` and
//! must agree with shears' own engine, and PyTorch-exported fixtures imported by shears must
//! agree with PyTorch's recorded outputs.
//!
//! Tolerance ([`CLOSE`]): `|ours - theirs| <= 1e-4 * max(1, |theirs|)`, i.e. 1e-4 absolute
//! for logits up to 1 in magnitude and 1e-4 relative beyond. Re-importing the exported file
//! must give bit-identical engine outputs.

use std::path::{Path, PathBuf};

use shears::zoo::{build, init_weights, Arch};
use shears_engine::{Mode, Network};
use shears_io::onnx::{export_onnx, import_onnx, OnnxExportOptions};
use shears_io::{bind_weights, load, Remap, Strictness};
use shears_ir::{Graph, Tensor, Weights};
// A glob, for tract's extension traits; the explicit shears imports above take precedence.
use tract_onnx::prelude::{Tensor as TractTensor, *};

/// Relative tolerance with an absolute floor of the same size (see the module docs).
const CLOSE: f32 = 1e-4;

/// The project's `shared/` directory: `$SHEARS_SHARED`, else the first ancestor `a` of this
/// crate with `a/shared/models` or `a/../shared/models`.
fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHEARS_SHARED") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for a in manifest.ancestors() {
        for cand in [a.join("shared"), a.join("..").join("shared")] {
            if cand.join("models").is_dir() {
                return cand;
            }
        }
    }
    panic!(
        "shared/ not found above {}; set SHEARS_SHARED",
        manifest.display()
    );
}

fn io_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shears-io/tests/fixtures")
}

/// A seeded batch of `n` samples uniform in [-2, 2).
fn random_batch(per_sample: &[usize], n: usize, seed: u64) -> Tensor {
    let mut s = seed;
    let mut shape = vec![n];
    shape.extend_from_slice(per_sample);
    let numel: usize = shape.iter().product();
    let data = (0..numel)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 22) as f32 - 2.0
        })
        .collect();
    Tensor::new(shape, data).unwrap()
}

fn run_shears(graph: &Graph, weights: &Weights, x: &Tensor) -> Tensor {
    let mut net = Network::new(graph.clone(), weights).unwrap();
    net.forward(x, Mode::Eval).unwrap()
}

fn run_tract(path: &Path, x: &Tensor) -> (Vec<usize>, Vec<f32>) {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .with_input_fact(0, f32::fact(x.shape()).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = TractTensor::from_shape(x.shape(), x.data()).unwrap();
    let out = model.run(tvec!(input.into_tvalue())).unwrap();
    let view = out[0].to_plain_array_view::<f32>().unwrap();
    (view.shape().to_vec(), view.iter().copied().collect())
}

/// The largest difference, after asserting every element is within [`CLOSE`].
fn assert_close(what: &str, ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{what}: output sizes differ");
    let mut max = 0f32;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let d = (a - b).abs();
        assert!(
            d <= CLOSE * b.abs().max(1.0),
            "{what}: element {i}: shears {a}, reference {b}"
        );
        max = max.max(d);
    }
    max
}

/// Exports, runs in tract, compares with the engine; re-imports and checks the engine gives
/// the very same outputs. Returns the largest difference to tract.
fn check_against_tract(what: &str, graph: &Graph, weights: &Weights, batch: usize) -> f32 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    export_onnx(&path, graph, weights, &OnnxExportOptions::new()).unwrap();
    let x = random_batch(graph.shape(graph.inputs()[0]), batch, 0x5eed);
    let ours = run_shears(graph, weights, &x);
    let (shape, theirs) = run_tract(&path, &x);
    assert_eq!(shape, ours.shape(), "{what}: output shapes differ");
    let max = assert_close(what, ours.data(), &theirs);
    let (g2, w2) = import_onnx(&path).unwrap();
    assert_eq!(&g2, graph, "{what}: graph round trip");
    let again = run_shears(&g2, &w2, &x);
    assert!(
        again.data() == ours.data(),
        "{what}: re-imported model differs"
    );
    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("{what}: max |shears - tract| = {max:.3e} (max |logit| {scale:.3})");
    max
}

fn zoo_case(arch: Arch, seed: u64) -> (Graph, Weights) {
    let graph = build(arch, &arch.default_config()).unwrap();
    let weights = init_weights(&graph, Some(arch), seed);
    (graph, weights)
}

/// A zoo graph with the pretrained weights from `shared/models/<file>`.
fn pretrained(arch: Arch, file: &str) -> (Graph, Weights) {
    let graph = build(arch, &arch.default_config()).unwrap();
    let m = load(&shared_dir().join("models").join(file)).unwrap();
    let remap = Remap::auto_for(&graph, m.weights.names());
    let (weights, _) = bind_weights(&graph, m.weights, &remap, Strictness::Strict, file).unwrap();
    (graph, weights)
}

#[test]
fn zoo_models_run_in_tract_like_in_shears() {
    let cases = [
        ("resnet20 (init)", zoo_case(Arch::ResNet20, 1), 4),
        (
            "resnet20 (pretrained)",
            pretrained(Arch::ResNet20, "resnet20.safetensors"),
            4,
        ),
        ("lenet5", zoo_case(Arch::LeNet5, 2), 4),
        ("mlperf resnet8 (init)", zoo_case(Arch::MlperfResNet8, 3), 4),
        (
            "mlperf resnet8 (pretrained)",
            pretrained(Arch::MlperfResNet8, "mlperf_tiny_resnet8.safetensors"),
            4,
        ),
        ("vgg11", zoo_case(Arch::Vgg11, 4), 2),
        ("densenet-bc", zoo_case(Arch::DenseNetBcCifar, 5), 2),
    ];
    for (what, (graph, weights), batch) in &cases {
        check_against_tract(what, graph, weights, *batch);
    }
}

/// One case recorded by `make_onnx.py`: input, PyTorch output.
fn torch_case(case: &str) -> (Tensor, Tensor) {
    let text = std::fs::read_to_string(io_fixtures().join("onnx_expected.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tensor = |key: &str| {
        let shape: Vec<usize> =
            serde_json::from_value(json[case][format!("{key}_shape")].clone()).unwrap();
        let data: Vec<f64> = serde_json::from_value(json[case][key].clone()).unwrap();
        Tensor::new(shape, data.into_iter().map(|v| v as f32).collect()).unwrap()
    };
    (tensor("input"), tensor("output"))
}

#[test]
fn pytorch_exports_imported_by_shears_match_pytorch() {
    let cases = [
        ("onnx_tiny_legacy.onnx", "tiny"),
        ("onnx_tiny_dynamo.onnx", "tiny"),
        ("onnx_shortcut_dynamo.onnx", "shortcut"),
        ("onnx_matmul_legacy.onnx", "matmul"),
        ("onnx_matmul_dynamo.onnx", "matmul"),
    ];
    for (file, case) in cases {
        let (graph, weights) = import_onnx(&io_fixtures().join(file)).unwrap();
        let (x, expected) = torch_case(case);
        let ours = run_shears(&graph, &weights, &x);
        assert_eq!(ours.shape(), expected.shape(), "{file}");
        let max = assert_close(file, ours.data(), expected.data());
        eprintln!("{file}: max |shears - pytorch| = {max:.3e}");
    }
}
