//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// The shared data directory: `$SHEARS_DATA`, else the first `<ancestor>/shared/data` or
/// `<ancestor>/../shared/data` above this crate.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHEARS_DATA") {
        return PathBuf::from(d);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for a in manifest.ancestors() {
        for cand in [a.join("shared/data"), a.join("../shared/data")] {
            if cand.join("mnist").is_dir() {
                return cand;
            }
        }
    }
    panic!(
        "shared data directory not found above {}; set SHEARS_DATA",
        manifest.display()
    );
}

/// An IDX image file: `n` images of `h x w`, pixel values `(i * 7 + k) % 256`.
pub fn idx_images(n: u32, h: u32, w: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [2051, n, h, w] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend((0..(n * h * w) as usize).map(|k| (k * 7 % 256) as u8));
    v
}

/// An IDX label file.
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [2049, labels.len() as u32] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(labels);
    v
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// CIFAR-10 records: label `labels[i]`, pixels `(i + k) % 256`.
pub fn cifar10_records(labels: &[u8], salt: u8) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        v.push(l);
        v.extend((0..3072).map(|k| ((i + k + salt as usize) % 256) as u8));
    }
    v
}

/// CIFAR-100 records: `(coarse, fine)` labels.
pub fn cifar100_records(labels: &[(u8, u8)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, &(c, f)) in labels.iter().enumerate() {
        v.push(c);
        v.push(f);
        v.extend((0..3072).map(|k| ((i * 3 + k) % 251) as u8));
    }
    v
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

/// A `.tar.gz` holding `(member path, bytes)` entries.
pub fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}
