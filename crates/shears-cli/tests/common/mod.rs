//! Helpers shared by the command-line tests: locate `shared/`, run the built binary, read its
//! one JSON object, check exit code 2.
#![allow(dead_code)] // each test file uses a subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// `shared/` (models and data): `$SHEARS_SHARED`, else the first `<ancestor>/shared` or
/// `<ancestor>/../shared` holding `models/`.
pub fn shared() -> PathBuf {
    if let Some(d) = std::env::var_os("SHEARS_SHARED") {
        return PathBuf::from(d);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for a in manifest.ancestors() {
        for c in [a.join("shared"), a.join("..").join("shared")] {
            if c.join("models").is_dir() {
                return c;
            }
        }
    }
    panic!("no shared/ folder above {}", manifest.display())
}

/// Runs the built `shears` binary with `args`.
pub fn shears(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shears"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// The one JSON object on stdout of a successful run.
pub fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    let s = String::from_utf8(o.stdout.clone()).unwrap();
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {s}"))
}

/// Asserts exit code 2 and a message naming `needle`.
pub fn fails_with_2(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "expected exit 2, stderr: {err}");
    assert!(
        err.contains(needle),
        "stderr does not name {needle:?}: {err}"
    );
}

/// A file under `shared/models`.
pub fn model(name: &str) -> String {
    shared()
        .join("models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// `shared/data`.
pub fn data() -> String {
    shared().join("data").to_string_lossy().into_owned()
}
