//! Regression tests for issue 18's defects 1, 2, 3, 4, 5 and 7 (hardening outputs and inputs),
//! each named after its defect. `SHEARS_TEST_BIN=/path/to/shears` runs them against another
//! build, which is how each was checked to fail on the behaviour before the fix.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{model, shared};

/// Runs `$SHEARS_TEST_BIN`, else the built `shears` binary, with `args`.
fn shears(args: &[&str]) -> Output {
    let bin = std::env::var_os("SHEARS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_shears")));
    Command::new(bin)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code 2 and a message naming every one of `needles`.
fn exits_2_naming(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2, stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr does not name {n:?}: {err}");
    }
}

/// `shears prune` of the small LeNet-5 by L1 to 70% of its MACs, writing `out`.
fn prune_lenet(input: &str, out: &Path) -> Output {
    shears(&[
        "prune",
        input,
        "--arch",
        "lenet5",
        "--criterion",
        "l1",
        "--target-macs",
        "0.7",
        "--no-latency",
        "-o",
        s(out),
    ])
}

fn lenet() -> String {
    model("mnist_lenet5_clntrained.safetensors")
}

/// Issue 18 defect 1: `prune -o /dev/full` (a device node), a FIFO or a symbolic link is
/// refused with exit 2 and left as it is, instead of being replaced by a regular file; so is
/// `export --onnx` to such a path.
#[cfg(unix)]
#[test]
fn defect_1_output_that_is_not_a_regular_file_is_refused() {
    use std::os::unix::fs::FileTypeExt;
    let dev = Path::new("/dev/full");
    // Never against another build: one with the defect replaces the device node (as root).
    if dev.exists() && std::env::var_os("SHEARS_TEST_BIN").is_none() {
        exits_2_naming(
            &prune_lenet(&lenet(), dev),
            &["/dev/full", "character device"],
        );
        assert!(dev.metadata().unwrap().file_type().is_char_device());
        let o = shears(&["export", &lenet(), "--arch", "lenet5", "--onnx", s(dev)]);
        exits_2_naming(&o, &["/dev/full", "character device"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.safetensors");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|st| st.success()) {
        exits_2_naming(&prune_lenet(&lenet(), &fifo), &["pipe.safetensors", "FIFO"]);
        assert!(fifo.symlink_metadata().unwrap().file_type().is_fifo());
    }
    let target = dir.path().join("real.safetensors");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    exits_2_naming(
        &prune_lenet(&lenet(), &link),
        &["link.safetensors", "symbolic link"],
    );
    let link_onnx = dir.path().join("link.onnx");
    std::os::unix::fs::symlink(&target, &link_onnx).unwrap();
    let o = shears(&[
        "export",
        &lenet(),
        "--arch",
        "lenet5",
        "--onnx",
        s(&link_onnx),
    ]);
    exits_2_naming(&o, &["link.onnx", "symbolic link"]);
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
}

/// Issue 18 defect 5: `-o` naming the input is refused (exit 2, naming both) and the input is
/// untouched, instead of being silently replaced.
#[test]
fn defect_5_output_equal_to_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("m.safetensors");
    std::fs::copy(lenet(), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    // The same file by another spelling of its path.
    let same = dir.path().join(".").join("m.safetensors");
    let o = prune_lenet(s(&input), &same);
    exits_2_naming(&o, &["m.safetensors", "is the input"]);
    assert_eq!(std::fs::read(&input).unwrap(), before);
    let o = shears(&[
        "export",
        s(&input),
        "--arch",
        "lenet5",
        "--safetensors",
        s(&input),
    ]);
    exits_2_naming(&o, &["is the input"]);
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

/// Issue 18 defect 5: the output format follows the extension: `prune -o x.onnx` writes ONNX
/// that shears reads back (it wrote safetensors bytes under the `.onnx` name, which it then
/// could not read), and an unknown extension is refused listing the known ones.
#[test]
fn defect_5_output_format_follows_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("x.onnx");
    let o = prune_lenet(&lenet(), &onnx);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = shears(&["info", s(&onnx), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // An ONNX ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    assert_eq!(std::fs::read(&onnx).unwrap()[0], 0x08);
    let bin = dir.path().join("x.bin");
    exits_2_naming(
        &prune_lenet(&lenet(), &bin),
        &["x.bin", ".safetensors", ".onnx"],
    );
    assert!(!bin.exists());
    let o = shears(&[
        "export",
        &lenet(),
        "--arch",
        "lenet5",
        "--onnx",
        s(&dir.path().join("y.safetensors")),
    ]);
    exits_2_naming(&o, &["--onnx", "y.safetensors"]);
}

/// Issue 18 defect 7: temporary files left by a killed write (`X.tmp-<pid>`) are removed by
/// the next write to the same target, which says so.
#[cfg(target_os = "linux")]
#[test]
fn defect_7_stale_temp_files_are_removed_by_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.safetensors");
    // Pids above the kernel's pid_max (at most 2^22) are never running.
    let old_style = dir.path().join("p.safetensors.tmp-99999999");
    let new_style = dir.path().join(".p.safetensors.tmp-99999998-0");
    let unrelated = dir.path().join("q.safetensors.tmp-99999999");
    for f in [&old_style, &new_style, &unrelated] {
        std::fs::write(f, "half a model").unwrap();
    }
    let o = prune_lenet(&lenet(), &out);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!old_style.exists() && !new_style.exists());
    assert!(unrelated.exists(), "only the target's temporary files go");
    assert!(
        stderr(&o).contains("removed") && stderr(&o).contains("p.safetensors.tmp-99999999"),
        "{}",
        stderr(&o)
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

/// A copy of the LeNet-5 in `dir` whose `conv2.weight` holds 3 NaN and 1 infinite value.
fn lenet_with_nan(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(lenet()).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let begin = header["conv2.weight"]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    for (i, x) in [f32::NAN, f32::NAN, f32::INFINITY, f32::NAN]
        .iter()
        .enumerate()
    {
        bytes[begin + 4 * i..begin + 4 * i + 4].copy_from_slice(&x.to_le_bytes());
    }
    let path = dir.join("nan.safetensors");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Issue 18 defect 3: NaN or infinite weights: `info` and `eval` warn naming the tensor and how
/// many values (they said nothing, and eval reported "loss NaN"); `prune` refuses naming the
/// tensor.
#[test]
fn defect_3_non_finite_weights_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let m = lenet_with_nan(dir.path());
    let o = shears(&["info", s(&m), "--arch", "lenet5", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("\"conv2.weight\" has 3 NaN and 1 infinite"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["non_finite"][0]["tensor"], "conv2.weight");
    assert_eq!(v["non_finite"][0]["nan"], 3);
    let data = shared().join("data");
    let o = shears(&[
        "eval",
        s(&m),
        "--arch",
        "lenet5",
        "--data",
        "mnist",
        "--data-dir",
        s(&data),
        "--limit",
        "20",
    ]);
    assert!(stderr(&o).contains("conv2.weight"), "{}", stderr(&o));
    let out = dir.path().join("p.safetensors");
    exits_2_naming(
        &prune_lenet(s(&m), &out),
        &["conv2.weight", "3 NaN and 1 infinite"],
    );
    assert!(!out.exists());
}

/// Issue 18 defect 4: a small `.gz` dataset file that inflates far beyond what its IDX header
/// declares is stopped at the declared size, naming the file (it was inflated whole, then
/// refused as trailing data).
#[test]
fn defect_4_gz_bomb_stops_at_the_idx_header_size() {
    use std::io::Write;
    let gz = |path: &Path, bytes: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        std::fs::write(path, e.finish().unwrap()).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let mnist = dir.path().join("mnist");
    std::fs::create_dir(&mnist).unwrap();
    // Two 28x28 images declared (1,584 bytes with the header), 16 MiB inflated.
    let mut images = Vec::new();
    for word in [2051u32, 2, 28, 28] {
        images.extend_from_slice(&word.to_be_bytes());
    }
    images.resize(16 << 20, 0);
    let bomb = mnist.join("t10k-images-idx3-ubyte.gz");
    gz(&bomb, &images);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 64 << 10);
    let mut labels = Vec::new();
    for word in [2049u32, 2] {
        labels.extend_from_slice(&word.to_be_bytes());
    }
    labels.extend_from_slice(&[3, 4]);
    gz(&mnist.join("t10k-labels-idx1-ubyte.gz"), &labels);
    let o = shears(&[
        "eval",
        &lenet(),
        "--arch",
        "lenet5",
        "--data",
        "mnist",
        "--data-dir",
        s(dir.path()),
    ]);
    exits_2_naming(&o, &["t10k-images-idx3-ubyte.gz", "beyond the 1584 bytes"]);
}

/// Issue 18 defect 2: a model whose input shape is huge but valid (`[3, 100000, 100000]` in
/// the embedded graph of a safetensors model) is refused with exit 2 naming the node, its
/// shape and the bytes needed, instead of aborting on a 1.2 TB allocation (SIGABRT).
#[test]
fn defect_2_huge_input_shape_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("r20.safetensors");
    let o = shears(&[
        "export",
        &model("resnet20.safetensors"),
        "--arch",
        "resnet20",
        "--safetensors",
        s(&small),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let bytes = std::fs::read(&small).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = &mut header["__metadata__"]["shears.graph"];
    let mut graph: serde_json::Value = serde_json::from_str(meta.as_str().unwrap()).unwrap();
    graph["nodes"][0]["shape"] = serde_json::json!([3, 100000, 100000]);
    *meta = serde_json::Value::String(graph.to_string());
    let mut h = header.to_string().into_bytes();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut huge = (h.len() as u64).to_le_bytes().to_vec();
    huge.extend_from_slice(&h);
    huge.extend_from_slice(&bytes[8 + n..]);
    let path = dir.path().join("huge.safetensors");
    std::fs::write(&path, huge).unwrap();
    let o = shears(&["info", s(&path)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let data = shared().join("data");
    let o = shears(&[
        "eval",
        s(&path),
        "--data",
        "cifar10",
        "--data-dir",
        s(&data),
        "--limit",
        "10",
    ]);
    exits_2_naming(
        &o,
        &["\"input\"", "[1, 3, 100000, 100000]", "120000000000 bytes"],
    );
}
