//! PyTorch checkpoints: the legacy originals of the CIFAR ResNets, the zip fixtures written by
//! `fixtures/make_zip_pth.py`, malicious pickles and corruption sweeps.

mod common;

use std::path::PathBuf;

use common::{files_with_ext, fixtures, shared_dir, sweep, Rng};
use shears_io::{
    read_pytorch, read_pytorch_bytes, read_safetensors, IoError, PthCheckpoint, PthOptions, Remap,
    RemapRule,
};
use shears_ir::{Tensor, Weights};

fn originals() -> Vec<PathBuf> {
    let v = files_with_ext(&shared_dir().join("models").join("original"), "th");
    assert!(!v.is_empty(), "no .th originals found");
    v
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.data().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn legacy_originals_equal_the_safetensors_bit_for_bit() {
    let models = shared_dir().join("models");
    let mut seen = Vec::new();
    for th in originals() {
        let stem = th.file_stem().unwrap().to_str().unwrap();
        let arch = stem.split('-').next().unwrap();
        seen.push(arch.to_string());
        let ck = read_pytorch(&th, &PthOptions::default()).unwrap();
        assert!(ck.skipped.is_empty(), "{stem}: {:?}", ck.skipped);
        // Compared as text: serde_json's default float parsing is not correctly rounded.
        let sidecar = std::fs::read_to_string(models.join(format!("{arch}.json"))).unwrap();
        let field = "\"checkpoint_best_prec1\":";
        let at = sidecar.find(field).unwrap() + field.len();
        let text: String = sidecar[at..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let best: f64 = ck.extra["best_prec1"].parse().unwrap();
        assert_eq!(best, text.parse::<f64>().unwrap(), "{stem}");
        assert!(ck.tensors.names().all(|n| n.starts_with("module.")));

        let remap = Remap::new().with_rule(RemapRule::StripPrefix("module.".into()));
        let stripped: Weights = ck
            .tensors
            .into_iter()
            .map(|(n, t)| (remap.apply(&n), t))
            .collect();
        let st = read_safetensors(&models.join(format!("{arch}.safetensors"))).unwrap();
        assert_eq!(stripped.len(), st.tensors.len(), "{stem}");
        for (name, t) in st.tensors.iter() {
            let got = stripped
                .get(name)
                .unwrap_or_else(|| panic!("{stem}: {name} missing"));
            assert_eq!(got.shape(), t.shape(), "{stem}: {name}");
            assert_eq!(bits(got), bits(t), "{stem}: {name}");
        }
    }
    for want in ["resnet20", "resnet32", "resnet44", "resnet56"] {
        assert!(
            seen.iter().any(|s| s == want),
            "{want}.th not checked (found {seen:?})"
        );
    }
}

fn tiny_zip() -> PthCheckpoint {
    read_pytorch(&fixtures().join("tiny_zip.pt"), &PthOptions::default()).unwrap()
}

fn values(ck: &PthCheckpoint, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = ck
        .tensors
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing"));
    (t.shape().to_vec(), t.data().to_vec())
}

#[test]
fn zip_checkpoint_loads_every_layout_and_dtype() {
    let ck = tiny_zip();
    let conv: Vec<f32> = (0..24).map(|i| (i as f32 - 12.0) * 0.25).collect();
    assert_eq!(values(&ck, "conv.weight"), (vec![2, 3, 2, 2], conv));
    // fc.weight is the transpose of a [4, 3] storage s[j] = j / 2 + 1/8.
    let s1 = |j: usize| j as f32 * 0.5 + 0.125;
    let fc: Vec<f32> = (0..3)
        .flat_map(|i| (0..4).map(move |k| s1(k * 3 + i)))
        .collect();
    assert_eq!(values(&ck, "fc.weight"), (vec![3, 4], fc));
    assert_eq!(
        values(&ck, "fc2.weight"),
        (vec![4, 3], (0..12).map(s1).collect())
    );
    assert_eq!(values(&ck, "fc.bias"), (vec![3], vec![0.5, 1.5, 2.5]));
    assert_eq!(
        values(&ck, "expand.weight"),
        (vec![2, 3], vec![-1.5, -0.5, 0.5, -1.5, -0.5, 0.5])
    );
    assert_eq!(
        values(&ck, "bn.running_var"),
        (vec![2], vec![0.1f64 as f32, 2.75])
    );
    assert_eq!(values(&ck, "bn.weight"), (vec![2], vec![1.5, -0.25]));
    assert_eq!(values(&ck, "bn.bias"), (vec![2], vec![3.0, -0.5]));
    assert_eq!(values(&ck, "bn.running_mean"), (vec![2], vec![0.75, -2.0]));
    assert_eq!(
        values(&ck, "head.weight"),
        (vec![2, 2], vec![-2.0, -1.75, -1.5, -1.25])
    );
    assert_eq!(ck.tensors.len(), 10);
    assert_eq!(ck.skipped.len(), 1);
    assert_eq!(ck.skipped[0].0, "bn.num_batches_tracked");
    assert!(ck.skipped[0].1.contains("int64"), "{:?}", ck.skipped);
    assert_eq!(ck.extra["epoch"], "7");
    assert_eq!(ck.extra["best_prec1"], "91.5");
    assert_eq!(ck.extra["arch"], "tiny");
    assert_eq!(ck.extra.len(), 3);
}

#[test]
fn state_dict_key_can_be_given() {
    let path = fixtures().join("tiny_zip.pt");
    let ck = read_pytorch(&path, &PthOptions::new().with_key("state_dict")).unwrap();
    assert_eq!(ck, tiny_zip());
    let err = read_pytorch(&path, &PthOptions::new().with_key("optimizer")).unwrap_err();
    assert!(matches!(err, IoError::Unsupported { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("tiny_zip.pt") && msg.contains("\"optimizer\""),
        "{msg}"
    );
    assert!(
        msg.contains("state_dict"),
        "lists the keys there are: {msg}"
    );
}

#[test]
fn malicious_pickles_are_refused_without_running() {
    for name in ["malicious_zip.pt", "malicious_legacy.pt"] {
        let path = fixtures().join(name);
        match read_pytorch(&path, &PthOptions::default()) {
            Err(IoError::UnsafePickle { path: p, global }) => {
                assert_eq!(global, "os.system", "{name}");
                assert_eq!(p, path);
            }
            other => panic!("{name}: expected UnsafePickle, got {other:?}"),
        }
        let msg = read_pytorch(&path, &PthOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(name) && msg.contains("os.system"), "{msg}");
    }
}

#[test]
fn non_checkpoints_are_rejected() {
    let opts = PthOptions::default();
    for (bytes, needle) in [
        (&b""[..], "not a torch.save file"),
        (b"GIF89a", "not a torch.save file"),
        (b"PK\x03\x04garbage", "zip archive"),
        (b"\x80\x02K\x07.", "magic number"),
    ] {
        let err = read_pytorch_bytes(bytes, "x.pt", &opts).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.pt: ") && msg.contains(needle), "{msg}");
    }
}

/// A legacy checkpoint with one storage key renamed in the key table, and one whose element
/// count disagrees with the pickle: both corrupt, not a panic.
#[test]
fn legacy_storage_table_is_checked() {
    let th = &originals()[0];
    let bytes = std::fs::read(th).unwrap();
    let key_pos = bytes
        .windows(15)
        .rposition(|w| w.starts_with(b"X\x0e\x00\x00\x00"))
        .unwrap();
    let mut renamed = bytes.clone();
    renamed[key_pos + 5] = b'x';
    let msg = read_pytorch_bytes(&renamed, "r.th", &PthOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not referenced"), "{msg}");

    // The first storage's element count follows the key-list pickle's STOP.
    let keys_end = bytes[key_pos..].iter().position(|&b| b == b'.').unwrap() + key_pos + 1;
    let mut miscounted = bytes.clone();
    miscounted[keys_end] ^= 1;
    let msg = read_pytorch_bytes(&miscounted, "m.th", &PthOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("the pickle says"), "{msg}");
}

#[test]
fn truncated_or_corrupted_legacy_checkpoints_fail_cleanly() {
    let th = &originals()[0];
    let bytes = std::fs::read(th).unwrap();
    let origin = th.file_name().unwrap().to_str().unwrap();
    let opts = PthOptions::default();
    // The pickles fill the first ~14 KB; the rest is raw float data.
    let stats = sweep(&bytes, origin, 997, 600, 14_100, 0x7e57_0002, |b| {
        read_pytorch_bytes(b, origin, &opts)
    });
    assert!(stats.err > 1100 && stats.ok > 50, "{stats:?}");
}

#[test]
fn truncated_or_corrupted_zip_checkpoints_fail_cleanly() {
    let opts = PthOptions::default();
    for name in ["tiny_zip.pt", "malicious_zip.pt", "malicious_legacy.pt"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        // Small files: cut at every byte, and flip every byte once.
        let stats = sweep(&bytes, name, 1, 2000, bytes.len(), 0x21b_0003, |b| {
            read_pytorch_bytes(b, name, &opts)
        });
        assert!(stats.err > bytes.len(), "{name}: {stats:?}");
        let mut buf = bytes.clone();
        let mut rng = Rng(9);
        for i in 0..bytes.len() {
            buf[i] ^= 1 + rng.below(255) as u8;
            if let Err(e) = read_pytorch_bytes(&buf, name, &opts) {
                assert!(e.to_string().contains(name), "{e}");
            }
            buf[i] = bytes[i];
        }
    }
}

/// Checkpoints written by real `torch.save` (zip and legacy) by `fixtures/make_torch_pt.py`.
#[test]
fn real_torch_save_files_load_with_exact_values() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("torch_expected.json")).unwrap(),
    )
    .unwrap();
    for (file, opts) in [
        ("torch_zip.pt", PthOptions::default()),
        ("torch_legacy.pt", PthOptions::default()),
    ] {
        let ck = read_pytorch(&fixtures().join(file), &opts).unwrap();
        assert!(
            ck.skipped
                .iter()
                .any(|(n, _)| n == "bn.num_batches_tracked"),
            "{file}: {:?}",
            ck.skipped
        );
        let values = expected["values"].as_object().unwrap();
        assert_eq!(ck.tensors.len(), values.len(), "{file}");
        for (name, vals) in values {
            let t = ck
                .tensors
                .get(name)
                .unwrap_or_else(|| panic!("{file}: missing {name}"));
            let shape: Vec<usize> = expected["shapes"][name]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.shape(), shape.as_slice(), "{file}: {name}");
            for (a, b) in t.data().iter().zip(vals.as_array().unwrap()) {
                // JSON holds the f32 values widened to f64, so they round-trip exactly.
                assert_eq!(*a, b.as_f64().unwrap() as f32, "{file}: {name}");
            }
        }
    }
}
