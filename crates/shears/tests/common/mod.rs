//! Helpers shared by the integration tests: locating `shared/` and loading its models.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use shears::model::{load_model, Model};
use shears::zoo::Arch;

/// The shared folder: `$SHEARS_SHARED`, else the first `<ancestor>/shared` or
/// `<ancestor>/../shared` above this crate that holds `models/`.
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
        "no shared/ folder with models/ above {}; set SHEARS_SHARED",
        manifest.display()
    )
}

/// The data folder inside `shared/`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("SHEARS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared_dir().join("data"))
}

/// The zoo architecture of a shared model.
pub fn arch_of(name: &str) -> Arch {
    if name.starts_with("mnist_lenet5") {
        Arch::LeNet5
    } else if name == "mlperf_tiny_resnet8" {
        Arch::MlperfResNet8
    } else {
        name.parse().unwrap()
    }
}

/// Loads `shared/models/<name>.safetensors` bound to its zoo graph.
pub fn shared_model(name: &str) -> Model {
    let path = shared_dir()
        .join("models")
        .join(format!("{name}.safetensors"));
    load_model(&path, Some(arch_of(name))).unwrap()
}

/// The JSON sidecar of a shared model.
pub fn sidecar(name: &str) -> serde_json::Value {
    let p = shared_dir().join("models").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Names of the shared models (sidecar stems).
pub fn shared_model_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(shared_dir().join("models"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "json")
                .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    v.sort();
    v
}
