//! Helpers shared by the integration tests: locating `shared/`, a seeded PRNG and the
//! corruption sweep.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The project's `shared/` directory: `$SHEARS_SHARED`, else the first ancestor `a` of this
/// crate with `a/shared/models` or `a/../shared/models`.
pub fn shared_dir() -> PathBuf {
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
        "shared/ with models/ not found above {}; set SHEARS_SHARED",
        manifest.display()
    );
}

/// Files in `dir` with extension `ext`, sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
        .collect();
    v.sort();
    v
}

/// The directory of this crate's committed fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// splitmix64: a tiny deterministic generator, enough to pick corruption sites.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// What a sweep saw.
#[derive(Debug, Default)]
pub struct SweepStats {
    pub ok: usize,
    pub err: usize,
}

/// Feeds `read` every truncation of `bytes` at multiples of `step` and at each of the first 64
/// lengths, then `flips` copies with 1 to 3 random bytes changed (half of them within the
/// first `hot` bytes, where the structure lives). A panic fails the calling test; every error
/// must mention `origin`. Truncations must all fail.
pub fn sweep<T, E: std::fmt::Display>(
    bytes: &[u8],
    origin: &str,
    step: usize,
    flips: usize,
    hot: usize,
    seed: u64,
    read: impl Fn(&[u8]) -> Result<T, E>,
) -> SweepStats {
    let mut stats = SweepStats::default();
    let mut check = |r: Result<T, E>, what: &str, must_fail: bool| match r {
        Ok(_) => {
            assert!(!must_fail, "{what}: a truncated file was accepted");
            stats.ok += 1;
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(origin),
                "{what}: error does not name the file: {msg}"
            );
            stats.err += 1;
        }
    };
    let mut cuts: Vec<usize> = (0..64.min(bytes.len())).collect();
    cuts.extend((64..bytes.len()).step_by(step));
    for cut in cuts {
        check(read(&bytes[..cut]), &format!("truncated at {cut}"), true);
    }
    let mut rng = Rng(seed);
    let mut buf = bytes.to_vec();
    for i in 0..flips {
        let n = 1 + rng.below(3);
        let span = if i % 2 == 0 {
            hot.min(bytes.len())
        } else {
            bytes.len()
        };
        let sites: Vec<usize> = (0..n).map(|_| rng.below(span)).collect();
        for &s in &sites {
            buf[s] ^= 1 + rng.below(255) as u8;
        }
        check(read(&buf), &format!("flip {i} at {sites:?}"), false);
        buf.copy_from_slice(bytes);
    }
    stats
}
