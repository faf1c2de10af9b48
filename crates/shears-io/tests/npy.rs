//! NumPy `.npy` reading and writing: round trips, every header version and element type the
//! reader accepts (files built byte by byte as numpy writes them), and malformed files, which
//! must give an error naming the file, never a panic.

mod common;

use common::sweep;
use shears_io::{npy_bytes, read_npy, read_npy_bytes, write_npy, IoError};
use shears_ir::Tensor;

/// A `.npy` file as numpy writes it: `version` 1, 2 or 3, the header dict padded to 64 bytes,
/// then `data`.
fn npy(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let prefix = if version == 1 { 10 } else { 12 };
    let header_len = (prefix + dict.len() + 1).div_ceil(64) * 64 - prefix;
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(prefix + header_len - 1, b' ');
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

fn dict(descr: &str, fortran: bool, shape: &str) -> String {
    let f = if fortran { "True" } else { "False" };
    format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}")
}

/// Values with a sign, a fraction, a negative zero and a subnormal.
fn values() -> Vec<f32> {
    vec![1.5, -2.25, 0.0, -0.0, f32::from_bits(1), 1e30]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn f32_round_trips_bit_for_bit_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    for shape in [vec![6], vec![2, 3], vec![1, 2, 1, 3]] {
        let t = Tensor::new(shape.clone(), values()).unwrap();
        let path = dir.path().join("x.npy");
        write_npy(&path, &t).unwrap();
        let back = read_npy(&path).unwrap();
        assert_eq!(back.shape(), &shape[..]);
        assert_eq!(bits(back.data()), bits(t.data()));
    }
    let scalar = Tensor::new(vec![], vec![7.0]).unwrap();
    let back = read_npy_bytes(&npy_bytes(&scalar), "s.npy").unwrap();
    assert_eq!((back.shape(), back.data()), (&[][..], &[7.0][..]));
    // Only the renamed file is left: the write went through a temporary file.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn every_version_and_accepted_dtype_reads() {
    let v = values();
    let f4: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let f8: Vec<u8> = v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect();
    for version in [1, 2, 3] {
        for (descr, data) in [("<f4", &f4), ("<f8", &f8)] {
            let bytes = npy(version, &dict(descr, false, "(2, 3)"), data);
            let t = read_npy_bytes(&bytes, "v.npy").unwrap_or_else(|e| panic!("{descr}: {e}"));
            assert_eq!(t.shape(), &[2, 3]);
            assert_eq!(bits(t.data()), bits(&v), "v{version} {descr}");
        }
    }
    // f64 values that f32 cannot hold exactly round to nearest.
    let bytes = npy(1, &dict("<f8", false, "(1,)"), &0.1f64.to_le_bytes());
    assert_eq!(read_npy_bytes(&bytes, "x.npy").unwrap().data(), &[0.1f32]);
    let halves = [0x3c00u16, 0xc000, 0x3555];
    let f2: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
    let t = read_npy_bytes(&npy(1, &dict("<f2", false, "(3,)"), &f2), "h.npy").unwrap();
    assert_eq!(&t.data()[..2], &[1.0, -2.0]);
    assert!((t.data()[2] - 1.0 / 3.0).abs() < 1e-3);
    let t = read_npy_bytes(
        &npy(1, &dict("|u1", false, "(1, 3)"), &[0, 128, 255]),
        "p.npy",
    );
    assert_eq!(t.unwrap().data(), &[0.0, 128.0, 255.0]);
    // A dict with keys in another order and no trailing comma, as other writers produce.
    let other = "{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}";
    let t = read_npy_bytes(&npy(1, other, &f4[..8]), "o.npy").unwrap();
    assert_eq!(t.data(), &v[..2]);
}

/// Asserts that `bytes` read as `name` fail with `kind` and a message naming the file and
/// containing `needle`.
fn refused(bytes: &[u8], needle: &str, corrupt: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad_input.npy");
    std::fs::write(&path, bytes).unwrap();
    let e = read_npy(&path).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bad_input.npy"), "{msg}");
    assert!(msg.contains(needle), "{msg} lacks {needle:?}");
    match (&e, corrupt) {
        (IoError::Corrupt { .. }, true) | (IoError::Unsupported { .. }, false) => {}
        _ => panic!("wrong kind of error: {e:?}"),
    }
}

#[test]
fn malformed_and_unsupported_files_are_refused_naming_the_file() {
    let f4: Vec<u8> = values().iter().flat_map(|x| x.to_le_bytes()).collect();
    let good = npy(1, &dict("<f4", false, "(2, 3)"), &f4);
    refused(&good[..good.len() - 1], "truncated data", true);
    refused(&good[..20], "truncated header", true);
    refused(&[good.clone(), vec![0; 4]].concat(), "wrong length", true);
    refused(b"PK\x03\x04 this is a zip, not npy", "bad magic", true);
    refused(b"", "bad magic", true);
    refused(&npy(1, &dict("<f4", true, "(2, 3)"), &f4), "Fortran", false);
    refused(&npy(1, &dict("<i4", false, "(2, 3)"), &f4), "<i4", false);
    refused(
        &npy(1, &dict(">f4", false, "(2, 3)"), &f4),
        "big-endian",
        false,
    );
    refused(&npy(1, &dict("|O", false, "(2, 3)"), &f4), "object", false);
    refused(
        &npy(1, "{'descr': '<f4', 'shape': (2, 3)}", &f4),
        "fortran_order",
        true,
    );
    refused(
        &npy(1, &dict("<f4", false, "(2, -3)"), &f4),
        "dimension",
        true,
    );
    let huge = "(4294967296, 4294967296, 4294967296)";
    refused(&npy(1, &dict("<f4", false, huge), &f4), "overflows", true);
    let mut v4 = good.clone();
    v4[6] = 4;
    refused(&v4, "version 4.0", false);
    // Fortran order of a vector is C order: numpy would write False, but True is no lie.
    let t = read_npy_bytes(&npy(1, &dict("<f4", true, "(6,)"), &f4), "f.npy").unwrap();
    assert_eq!(bits(t.data()), bits(&values()));
}

#[test]
fn truncations_and_flipped_bytes_never_panic() {
    let t = Tensor::new(vec![2, 3], values()).unwrap();
    let bytes = npy_bytes(&t);
    sweep(&bytes, "sweep.npy", 1, 400, 80, 7, |b| {
        read_npy_bytes(b, "sweep.npy")
    });
}
