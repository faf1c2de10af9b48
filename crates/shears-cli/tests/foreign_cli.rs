//! A foreign model (an ONNX file with no shears metadata, as `torch.onnx.export` writes it)
//! needs no zoo name: `info`, `prune` with a data-free criterion, `export` and `run` work with
//! no flags, data commands take `--mean/--std/--scale` or say which default they use, and
//! `shears run` computes what the library computes. See issue 14 ("Any CNN from ONNX").
//!
//! The ONNX files are built here byte by byte (a few protobuf fields), with fixed or
//! symbolic (`H`, `W`) spatial dims.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{data, fails_with_2, json_of, shears};
use shears_engine::{Mode, Network};
use shears_io::{read_npy, write_npy};
use shears_ir::Tensor;

/// Protobuf wire format, the handful of encodings an ONNX model needs.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Field `tag` holding a varint.
    pub fn int(out: &mut Vec<u8>, tag: u64, v: i64) {
        varint(out, tag << 3);
        varint(out, v as u64);
    }

    /// Field `tag` holding bytes (a string or a nested message).
    pub fn bytes(out: &mut Vec<u8>, tag: u64, b: &[u8]) {
        varint(out, (tag << 3) | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

/// A float initializer: `TensorProto { dims, data_type = FLOAT, name, raw_data }`.
fn initializer(name: &str, dims: &[usize], data: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        pb::int(&mut t, 1, d as i64);
    }
    pb::int(&mut t, 2, 1);
    pb::bytes(&mut t, 8, name.as_bytes());
    let raw: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    pb::bytes(&mut t, 9, &raw);
    t
}

/// `NodeProto { input, output, name, op_type }` (no attributes).
fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        pb::bytes(&mut n, 1, i.as_bytes());
    }
    pb::bytes(&mut n, 2, output.as_bytes());
    pb::bytes(&mut n, 3, name.as_bytes());
    pb::bytes(&mut n, 4, op.as_bytes());
    n
}

/// A dim: a size or a symbol.
enum Dim {
    Fixed(usize),
    Symbol(&'static str),
}

/// `ValueInfoProto` of a float tensor with `dims`.
fn value_info(name: &str, dims: &[Dim]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            Dim::Fixed(v) => pb::int(&mut dim, 1, *v as i64),
            Dim::Symbol(s) => pb::bytes(&mut dim, 2, s.as_bytes()),
        }
        pb::bytes(&mut shape, 1, &dim);
    }
    let mut tensor_type = Vec::new();
    pb::int(&mut tensor_type, 1, 1);
    pb::bytes(&mut tensor_type, 2, &shape);
    let mut ty = Vec::new();
    pb::bytes(&mut ty, 1, &tensor_type);
    let mut v = Vec::new();
    pb::bytes(&mut v, 1, name.as_bytes());
    pb::bytes(&mut v, 2, &ty);
    v
}

/// Seeded values in [-1, 1).
fn seeded(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A small CNN as a PyTorch export names it, for 3-channel inputs of 28x28 (or symbolic
/// `H x W` when `dynamic`): conv 3->8 (3x3, no padding), ReLU, conv 8->8, ReLU, global
/// average pool, flatten, linear 8->10 (`Gemm`, weight stored `[in, out]`). No metadata.
fn foreign_onnx(path: &Path, dynamic: bool) {
    let mut g = Vec::new();
    for n in [
        node(
            "Conv",
            "/conv1/Conv",
            &["input", "conv1.weight", "conv1.bias"],
            "a",
        ),
        node("Relu", "/relu1/Relu", &["a"], "b"),
        node(
            "Conv",
            "/conv2/Conv",
            &["b", "conv2.weight", "conv2.bias"],
            "c",
        ),
        node("Relu", "/relu2/Relu", &["c"], "d"),
        node("GlobalAveragePool", "/pool/GlobalAveragePool", &["d"], "e"),
        node("Flatten", "/flatten/Flatten", &["e"], "f"),
        node("Gemm", "/fc/Gemm", &["f", "fc.weight", "fc.bias"], "logits"),
    ] {
        pb::bytes(&mut g, 1, &n);
    }
    pb::bytes(&mut g, 2, b"main_graph");
    for (i, (name, dims)) in [
        ("conv1.weight", vec![8, 3, 3, 3]),
        ("conv1.bias", vec![8]),
        ("conv2.weight", vec![8, 8, 3, 3]),
        ("conv2.bias", vec![8]),
        ("fc.weight", vec![8, 10]),
        ("fc.bias", vec![10]),
    ]
    .into_iter()
    .enumerate()
    {
        let n = dims.iter().product();
        pb::bytes(
            &mut g,
            5,
            &initializer(name, &dims, &seeded(n, i as u64 + 1)),
        );
    }
    let spatial = if dynamic {
        [Dim::Symbol("H"), Dim::Symbol("W")]
    } else {
        [Dim::Fixed(28), Dim::Fixed(28)]
    };
    let [h, w] = spatial;
    let input = [Dim::Symbol("batch"), Dim::Fixed(3), h, w];
    pb::bytes(&mut g, 11, &value_info("input", &input));
    let output = [Dim::Symbol("batch"), Dim::Fixed(10)];
    pb::bytes(&mut g, 12, &value_info("logits", &output));
    let mut m = Vec::new();
    pb::int(&mut m, 1, 8);
    pb::bytes(&mut m, 2, b"pytorch");
    pb::bytes(&mut m, 7, &g);
    let mut opset = Vec::new();
    pb::bytes(&mut opset, 1, b"");
    pb::int(&mut opset, 2, 17);
    pb::bytes(&mut m, 8, &opset);
    std::fs::write(path, m).unwrap();
}

struct Fixture {
    dir: tempfile::TempDir,
    onnx: String,
    dynamic: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join("foreign.onnx");
        let dynamic = dir.path().join("dynamic.onnx");
        foreign_onnx(&onnx, false);
        foreign_onnx(&dynamic, true);
        Fixture {
            onnx: s(&onnx),
            dynamic: s(&dynamic),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const NOTE: &str = "names no input preprocessing";

#[test]
fn a_foreign_onnx_model_needs_no_arch_for_data_free_commands() {
    let f = Fixture::new();
    let o = shears(&["info", &f.onnx, "--json"]);
    assert!(
        !stderr(&o).contains(NOTE),
        "info uses no data: {}",
        stderr(&o)
    );
    let v = json_of(&o);
    assert_eq!(v["summary"]["input"], serde_json::json!([3, 28, 28]));
    assert_eq!(v["summary"]["output"], serde_json::json!([10]));
    assert_eq!(v["preprocess_origin"]["mean"], "default");

    let pruned = f.path("pruned.safetensors");
    let o = shears(&[
        "prune",
        &f.onnx,
        "--criterion",
        "l1",
        "--ratio",
        "0.5",
        "--no-latency",
        "-o",
        &s(&pruned),
        "--json",
    ]);
    assert!(
        !stderr(&o).contains(NOTE),
        "l1 uses no data: {}",
        stderr(&o)
    );
    json_of(&o);
    // The pruned model keeps the (default) preprocessing, marked as a default.
    let st = shears_io::read_safetensors(&pruned).unwrap();
    let pre: serde_json::Value = serde_json::from_str(&st.metadata["shears.preprocess"]).unwrap();
    assert_eq!(pre["mean"], serde_json::json!([0.485, 0.456, 0.406]));
    assert_eq!(st.metadata["shears.preprocess.defaulted"], "scale,mean,std");
    let v = json_of(&shears(&["info", &s(&pruned), "--json"]));
    assert_eq!(v["preprocess_origin"]["std"], "default");

    let out_onnx = f.path("out.onnx");
    let out_st = f.path("out.safetensors");
    json_of(&shears(&[
        "export",
        &f.onnx,
        "--onnx",
        &s(&out_onnx),
        "--safetensors",
        &s(&out_st),
        "--json",
    ]));
    for p in [&out_onnx, &out_st] {
        json_of(&shears(&["info", &s(p), "--json"]));
    }
}

#[test]
fn explicit_preprocessing_is_kept_by_prune_and_export() {
    let f = Fixture::new();
    let pruned = f.path("pruned.safetensors");
    json_of(&shears(&[
        "prune",
        &f.onnx,
        "--criterion",
        "l2",
        "--ratio",
        "0.25",
        "--no-latency",
        "--mean",
        "0.5",
        "--std",
        "0.25,0.5,1",
        "--scale",
        "1/255",
        "-o",
        &s(&pruned),
        "--json",
    ]));
    let onnx = f.path("pruned.onnx");
    json_of(&shears(&[
        "export",
        &s(&pruned),
        "--onnx",
        &s(&onnx),
        "--json",
    ]));
    for p in [&pruned, &onnx] {
        let v = json_of(&shears(&["info", &s(p), "--json"]));
        assert_eq!(v["preprocess"]["mean"], serde_json::json!([0.5, 0.5, 0.5]));
        assert_eq!(v["preprocess"]["std"], serde_json::json!([0.25, 0.5, 1.0]));
        let scale = v["preprocess"]["scale"].as_f64().unwrap();
        assert!((scale - 1.0 / 255.0).abs() < 1e-9, "{scale}");
        assert_eq!(v["preprocess_origin"]["mean"], "metadata shears.preprocess");
    }
}

#[test]
fn eval_takes_preprocessing_flags_or_says_which_default_it_uses() {
    let f = Fixture::new();
    let common = [
        "--data",
        "mnist",
        "--data-dir",
        &data(),
        "--limit",
        "50",
        "--json",
    ];
    let o = shears(&[&["eval", &f.onnx][..], &common].concat());
    let v = json_of(&o);
    assert_eq!(v["result"]["images"], 50);
    let err = stderr(&o);
    assert!(
        err.contains(NOTE) && err.contains("0.485,0.456,0.406") && err.contains("--mean"),
        "{err}"
    );
    let flags = ["--mean", "0.1307", "--std", "0.3081", "--scale", "0.00392"];
    let o = shears(&[&["eval", &f.onnx][..], &common, &flags].concat());
    json_of(&o);
    assert!(!stderr(&o).contains(NOTE), "{}", stderr(&o));

    fails_with_2(
        &shears(&[&["eval", &f.onnx][..], &common, &["--mean", "0.1,0.2"]].concat()),
        "3 channels",
    );
    fails_with_2(
        &shears(&[&["eval", &f.onnx][..], &common, &["--std", "0"]].concat()),
        "--std",
    );
    fails_with_2(
        &shears(&[&["info", &f.onnx][..], &["--scale", "1/0"]].concat()),
        "--scale",
    );
}

/// The input batch as the library sees it, and the library's forward pass on it.
fn library_forward(model: &str, input_shape: Option<Vec<usize>>, x: &Tensor) -> Tensor {
    let opts = shears::model::ModelLoadOptions {
        input_shape,
        ..Default::default()
    };
    let m = shears::model::load_model_with(Path::new(model), &opts).unwrap();
    let mut net = Network::new(m.graph, &m.weights).unwrap();
    net.forward(x, Mode::Eval).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn run_writes_what_the_library_computes_bit_for_bit() {
    let f = Fixture::new();
    let x = Tensor::new(vec![5, 3, 28, 28], seeded(5 * 3 * 28 * 28, 42)).unwrap();
    let input = f.path("x.npy");
    write_npy(&input, &x).unwrap();
    let out = f.path("y.npy");
    let o = shears(&[
        "run",
        &f.onnx,
        "--input",
        &s(&input),
        "--output",
        &s(&out),
        "--batch",
        "2",
        "--json",
    ]);
    assert!(
        !stderr(&o).contains(NOTE),
        "run uses no preprocessing: {}",
        stderr(&o)
    );
    let v = json_of(&o);
    assert_eq!(v["output_shape"], serde_json::json!([5, 10]));
    let y = read_npy(&out).unwrap();
    let want = library_forward(&f.onnx, None, &x);
    assert_eq!(y.shape(), want.shape());
    assert_eq!(bits(&y), bits(&want));

    // One sample without the batch axis is batch 1.
    let one = Tensor::new(vec![3, 28, 28], x.data()[..3 * 28 * 28].to_vec()).unwrap();
    write_npy(&input, &one).unwrap();
    json_of(&shears(&[
        "run",
        &f.onnx,
        "--input",
        &s(&input),
        "-o",
        &s(&out),
        "--json",
    ]));
    let y1 = read_npy(&out).unwrap();
    assert_eq!(y1.shape(), &[1, 10]);
    assert_eq!(bits(&y1)[..], bits(&want)[..10]);

    // --preprocess applies the flags' preprocessing to raw pixels.
    let raw = Tensor::new(
        vec![2, 3, 28, 28],
        (0..2 * 3 * 784).map(|i| (i % 256) as f32).collect(),
    )
    .unwrap();
    write_npy(&input, &raw).unwrap();
    let pre = [
        "--preprocess",
        "--scale",
        "1/255",
        "--mean",
        "0.5",
        "--std",
        "0.25",
    ];
    json_of(&shears(
        &[
            &[
                "run",
                &f.onnx,
                "--input",
                &s(&input),
                "-o",
                &s(&out),
                "--json",
            ][..],
            &pre,
        ]
        .concat(),
    ));
    let normalized: Vec<f32> = raw
        .data()
        .iter()
        .map(|p| (p * (1.0 / 255.0) - 0.5) / 0.25)
        .collect();
    let want = library_forward(
        &f.onnx,
        None,
        &Tensor::new(vec![2, 3, 28, 28], normalized).unwrap(),
    );
    assert_eq!(bits(&read_npy(&out).unwrap()), bits(&want));
}

/// Issue 16: `--profile` times every forward step (op, node, shapes, ms, share) without
/// changing the output.
#[test]
fn run_profile_names_every_step_with_its_shapes() {
    let f = Fixture::new();
    let x = Tensor::new(vec![3, 3, 28, 28], seeded(3 * 3 * 28 * 28, 7)).unwrap();
    let input = f.path("x.npy");
    write_npy(&input, &x).unwrap();
    let out = f.path("y.npy");
    let args = [
        "run",
        &f.onnx,
        "--input",
        &s(&input),
        "-o",
        &s(&out),
        "--batch",
        "2",
    ];
    let v = json_of(&shears(&[&args[..], &["--profile", "--json"]].concat()));
    assert_eq!(
        bits(&read_npy(&out).unwrap()),
        bits(&library_forward(&f.onnx, None, &x))
    );
    let p = &v["profile"];
    let steps = p["steps"].as_array().unwrap();
    assert!(!steps.is_empty());
    // Batches of 2 and 1: each step once per batch size, its shapes batch axis first.
    for st in steps {
        let n = st["output"][0].as_u64().unwrap();
        assert!(n == 2 || n == 1, "{st}");
        assert_eq!(st["calls"], 1, "{st}");
        assert!(st["inputs"].as_array().unwrap().iter().all(|i| i[0] == n));
        assert!(!st["node"].as_str().unwrap().is_empty());
    }
    let convs = steps
        .iter()
        .filter(|st| st["op"].as_str().unwrap().starts_with("conv2d"))
        .count();
    assert!(convs >= 2 && steps.iter().any(|st| st["algo"].is_string()));
    let share: f64 = steps.iter().map(|st| st["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-6, "shares sum to {share}");
    assert!(!p["by_op"].as_array().unwrap().is_empty());
    // Without --json, the two tables.
    let o = shears(&[&args[..], &["--profile"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("profile:") && text.contains("GMAC/s"),
        "{text}"
    );
    // Without --profile, no profile.
    let v = json_of(&shears(&[&args[..], &["--json"]].concat()));
    assert!(v["profile"].is_null());
}

#[test]
fn run_refuses_bad_inputs_naming_the_file() {
    let f = Fixture::new();
    let out = f.path("y.npy");
    let run = |input: &Path| shears(&["run", &f.onnx, "--input", &s(input), "-o", &s(&out)]);
    let wrong = f.path("wrong_shape.npy");
    write_npy(&wrong, &Tensor::zeros(&[2, 1, 28, 28])).unwrap();
    fails_with_2(&run(&wrong), "wrong_shape.npy");
    let good = shears_io::npy_bytes(&Tensor::zeros(&[1, 3, 28, 28]));
    let cut = f.path("truncated.npy");
    std::fs::write(&cut, &good[..good.len() - 3]).unwrap();
    fails_with_2(&run(&cut), "truncated.npy");
    let magic = f.path("bad_magic.npy");
    std::fs::write(&magic, b"not an npy file at all").unwrap();
    fails_with_2(&run(&magic), "bad_magic.npy");
    let mut fortran = good.clone();
    let at = fortran.windows(5).position(|w| w == b"False").unwrap();
    fortran.splice(at..at + 5, b"True ".iter().copied());
    let fpath = f.path("fortran.npy");
    std::fs::write(&fpath, &fortran).unwrap();
    fails_with_2(&run(&fpath), "fortran.npy");
    let mut int = good.clone();
    let at = int.windows(3).position(|w| w == b"<f4").unwrap();
    int[at + 1..at + 3].copy_from_slice(b"i4");
    let ipath = f.path("int_dtype.npy");
    std::fs::write(&ipath, &int).unwrap();
    fails_with_2(&run(&ipath), "int_dtype.npy");
    assert!(!out.exists(), "no output is written on error");
}

#[test]
fn dynamic_spatial_dims_need_input_shape_and_then_run() {
    let f = Fixture::new();
    fails_with_2(&shears(&["info", &f.dynamic]), "--input-shape");
    fails_with_2(
        &shears(&["info", &f.dynamic, "--input-shape", "1,28,28"]),
        "fixes 3",
    );
    let v = json_of(&shears(&[
        "info",
        &f.dynamic,
        "--input-shape",
        "3,20,24",
        "--json",
    ]));
    assert_eq!(v["summary"]["input"], serde_json::json!([3, 20, 24]));
    let x = Tensor::new(vec![3, 3, 20, 24], seeded(3 * 3 * 20 * 24, 9)).unwrap();
    let input = f.path("x.npy");
    write_npy(&input, &x).unwrap();
    let out = f.path("y.npy");
    json_of(&shears(&[
        "run",
        &f.dynamic,
        "--input-shape",
        "3,20,24",
        "--input",
        &s(&input),
        "-o",
        &s(&out),
        "--json",
    ]));
    let want = library_forward(&f.dynamic, Some(vec![3, 20, 24]), &x);
    assert_eq!(bits(&read_npy(&out).unwrap()), bits(&want));
    // The same weights at the fixed size compute the same function.
    let x28 = Tensor::new(vec![1, 3, 28, 28], seeded(3 * 28 * 28, 3)).unwrap();
    let a = library_forward(&f.dynamic, Some(vec![3, 28, 28]), &x28);
    let b = library_forward(&f.onnx, None, &x28);
    assert_eq!(bits(&a), bits(&b));
}
