//! safetensors: the shared model files, hand-written dtypes, validation and corruption.

mod common;

use std::collections::BTreeMap;

use common::{files_with_ext, shared_dir, sweep};
use shears_io::{read_safetensors, read_safetensors_bytes, write_safetensors, IoError};
use shears_ir::{Tensor, Weights};

/// A safetensors file from a header and a data buffer, the header padded to 8 bytes.
fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

fn read(bytes: &[u8]) -> Result<shears_io::SafeTensors, IoError> {
    read_safetensors_bytes(bytes, "hand.safetensors")
}

/// Asserts `bytes` is rejected as corrupt with a message containing `needle`.
fn check_corrupt(bytes: &[u8], needle: &str) {
    match read(bytes) {
        Err(IoError::Corrupt { path, msg }) => {
            assert_eq!(path.to_str(), Some("hand.safetensors"));
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
        other => panic!("expected a corrupt-file error containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn every_shared_model_matches_its_sidecar() {
    let models = shared_dir().join("models");
    let files = files_with_ext(&models, "safetensors");
    assert!(
        files.len() >= 7,
        "expected the 7 shared models, found {files:?}"
    );
    for f in files {
        let st = read_safetensors(&f).unwrap();
        let sidecar: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.with_extension("json")).unwrap())
                .unwrap();
        let listed: BTreeMap<String, Vec<usize>> = sidecar["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                assert_eq!(t["dtype"], "F32");
                let shape = t["shape"].as_array().unwrap();
                let shape = shape.iter().map(|d| d.as_u64().unwrap() as usize).collect();
                (t["name"].as_str().unwrap().to_string(), shape)
            })
            .collect();
        let loaded: BTreeMap<String, Vec<usize>> = st
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec()))
            .collect();
        assert_eq!(loaded, listed, "{}", f.display());
        if let Some(meta) = sidecar["safetensors_metadata"].as_object() {
            for (k, v) in meta {
                assert_eq!(
                    st.metadata.get(k).map(String::as_str),
                    v.as_str(),
                    "{}",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn write_then_read_is_bit_exact_with_metadata() {
    let mut w = Weights::new();
    let odd = [
        f32::NAN,
        -0.0,
        f32::INFINITY,
        f32::MIN_POSITIVE / 8.0,
        1.0e-45,
        f32::MAX,
    ];
    w.insert("b.odd", Tensor::new(vec![2, 3], odd.to_vec()).unwrap());
    w.insert(
        "a.weight",
        Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap(),
    );
    w.insert("c.empty", Tensor::new(vec![0, 4], vec![]).unwrap());
    w.insert("d.scalar", Tensor::new(vec![], vec![7.5]).unwrap());
    let meta = BTreeMap::from([
        (
            "shears.arch".to_string(),
            "tiny \"quoted\" \\ ünïcode\n".to_string(),
        ),
        ("k".to_string(), String::new()),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    write_safetensors(&path, &w, &meta).unwrap();
    // Overwriting an existing file goes through the same rename.
    write_safetensors(&path, &w, &meta).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["w.safetensors"], "no temporary file left behind");

    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "header padded to 8 bytes");
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let pos = |s: &str| header.find(s).unwrap();
    assert!(pos("\"a.weight\"") < pos("\"b.odd\"") && pos("\"b.odd\"") < pos("\"c.empty\""));

    let back = read_safetensors(&path).unwrap();
    assert_eq!(back.metadata, meta);
    assert_eq!(back.tensors.len(), w.len());
    for (name, t) in w.iter() {
        let b = back.tensors.get(name).unwrap();
        assert_eq!(b.shape(), t.shape(), "{name}");
        let bits = |t: &Tensor| t.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(b), bits(t), "{name}");
    }

    // A shared model file survives a rewrite byte for byte (same writer conventions).
    let src = shared_dir().join("models").join("resnet20.safetensors");
    let orig = read_safetensors(&src).unwrap();
    let copy = dir.path().join("copy.safetensors");
    write_safetensors(&copy, &orig.tensors, &orig.metadata).unwrap();
    assert_eq!(read_safetensors(&copy).unwrap(), orig);
}

#[test]
fn f16_bf16_f64_and_small_integers_convert_to_f32() {
    // f16: 1.0, -2.5, 65504 (max), 2^-14 (min normal), 2^-24 (min subnormal), -inf.
    let f16_bits: [u16; 6] = [0x3c00, 0xc100, 0x7bff, 0x0400, 0x0001, 0xfc00];
    let f16_vals = [
        1.0,
        -2.5,
        65504.0,
        2f32.powi(-14),
        2f32.powi(-24),
        f32::NEG_INFINITY,
    ];
    // bf16: 1.0, -0.5, 3.0, 2^-133 (subnormal), largest finite.
    let bf16_bits: [u16; 5] = [0x3f80, 0xbf00, 0x4040, 0x0001, 0x7f7f];
    let bf16_vals = [1.0, -0.5, 3.0, 2f32.powi(-133), f32::from_bits(0x7f7f_0000)];
    let mut data = Vec::new();
    f16_bits
        .iter()
        .for_each(|b| data.extend_from_slice(&b.to_le_bytes()));
    bf16_bits
        .iter()
        .for_each(|b| data.extend_from_slice(&b.to_le_bytes()));
    data.extend_from_slice(&0.1f64.to_le_bytes());
    data.extend_from_slice(&(-7i64).to_le_bytes());
    data.extend_from_slice(&16_777_216i32.to_le_bytes());
    data.extend_from_slice(&[0, 255]);
    let header = r#"{"h":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},
        "b":{"dtype":"BF16","shape":[5],"data_offsets":[12,22]},
        "d":{"dtype":"F64","shape":[],"data_offsets":[22,30]},
        "l":{"dtype":"I64","shape":[1],"data_offsets":[30,38]},
        "i":{"dtype":"I32","shape":[1],"data_offsets":[38,42]},
        "u":{"dtype":"U8","shape":[2],"data_offsets":[42,44]},
        "z":{"dtype":"BF16","shape":[3,0],"data_offsets":[44,44]}}"#;
    let st = read(&st_bytes(header, &data)).unwrap();
    assert_eq!(st.tensors.get("h").unwrap().shape(), [2, 3]);
    assert_eq!(st.tensors.get("h").unwrap().data(), f16_vals);
    assert_eq!(st.tensors.get("b").unwrap().data(), bf16_vals);
    assert_eq!(st.tensors.get("d").unwrap().data(), [0.1f64 as f32]);
    assert_eq!(st.tensors.get("d").unwrap().shape(), [] as [usize; 0]);
    assert_eq!(st.tensors.get("l").unwrap().data(), [-7.0]);
    assert_eq!(st.tensors.get("i").unwrap().data(), [16_777_216.0]);
    assert_eq!(st.tensors.get("u").unwrap().data(), [0.0, 255.0]);
    assert_eq!(st.tensors.get("z").unwrap().shape(), [3, 0]);
    assert!(st.metadata.is_empty());
}

#[test]
fn unconvertible_dtypes_name_the_tensor() {
    let big = st_bytes(
        r#"{"step":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
        &16_777_217i64.to_le_bytes(),
    );
    match read(&big) {
        Err(IoError::UnsupportedDtype { tensor, dtype, .. }) => {
            assert_eq!(tensor, "step");
            assert!(dtype.starts_with("I64"), "{dtype}");
        }
        other => panic!("{other:?}"),
    }
    let f8 = st_bytes(
        r#"{"q":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}"#,
        &[0],
    );
    let err = read(&f8).unwrap_err();
    assert!(
        matches!(&err, IoError::UnsupportedDtype { tensor, dtype, .. } if tensor == "q" && dtype == "F8_E4M3")
    );
    assert_eq!(
        err.to_string(),
        "hand.safetensors: tensor \"q\" has unsupported dtype F8_E4M3"
    );
}

#[test]
fn inconsistent_headers_are_rejected() {
    let t = |name: &str, b: usize, e: usize| {
        format!(
            r#""{name}":{{"dtype":"F32","shape":[{}],"data_offsets":[{b},{e}]}}"#,
            (e - b) / 4
        )
    };
    let d8 = [0u8; 8];
    check_corrupt(&[1, 2, 3], "shorter than the 8-byte header length");
    check_corrupt(&u64::MAX.to_le_bytes(), "exceeds");
    check_corrupt(&st_bytes("[1, 2]", &[]), "does not start with '{'");
    check_corrupt(&st_bytes("{\"a\": ", &[]), "header json");
    check_corrupt(
        &st_bytes(&format!("{{{},{}}}", t("a", 0, 8), t("b", 4, 8)), &d8),
        "overlaps",
    );
    check_corrupt(&st_bytes(&format!("{{{}}}", t("a", 4, 8)), &d8), "gap");
    check_corrupt(
        &st_bytes(&format!("{{{}}}", t("a", 0, 4)), &d8),
        "unaccounted",
    );
    check_corrupt(&st_bytes(&format!("{{{}}}", t("a", 0, 12)), &d8), "outside");
    check_corrupt(
        &st_bytes(&format!("{{{},{}}}", t("a", 0, 4), t("a", 4, 8)), &d8),
        "duplicate key",
    );
    check_corrupt(
        &st_bytes(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &d8,
        ),
        "span 8 bytes",
    );
    check_corrupt(
        &st_bytes(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
            &d8,
        ),
        "outside",
    );
    check_corrupt(
        &st_bytes(
            r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}"#,
            &d8,
        ),
        "overflows",
    );
    check_corrupt(
        &st_bytes(r#"{"__metadata__":{"k":1}}"#, &[]),
        "not a string",
    );
    check_corrupt(
        &st_bytes(r#"{"a":{"dtype":"F32","shape":[2]}}"#, &d8),
        "bad header entry",
    );
    // Zero-sized tensors may share an offset with their neighbours.
    let ok = format!("{{{},{},{}}}", t("a", 0, 0), t("b", 0, 8), t("c", 8, 8));
    assert_eq!(read(&st_bytes(&ok, &d8)).unwrap().tensors.len(), 3);
}

#[test]
fn truncated_or_corrupted_files_fail_cleanly() {
    let path = shared_dir().join("models").join("resnet20.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let stats = sweep(
        &bytes,
        "resnet20.safetensors",
        997,
        400,
        8 + n,
        0x5eed_0001,
        |b| read_safetensors_bytes(b, "resnet20.safetensors"),
    );
    assert!(stats.err > 1000, "{stats:?}");
    let err = read_safetensors(&path.with_extension("missing")).unwrap_err();
    assert!(matches!(err, IoError::Io { .. }));
    assert!(err.to_string().contains("resnet20.missing"), "{err}");
}
