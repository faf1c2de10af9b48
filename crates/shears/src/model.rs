//! A model as users hold it: a graph, its weights and how to preprocess its input.
//!
//! [`load_model`] reads any supported file. A self-describing safetensors file (one shears
//! wrote) carries its graph and preprocessing in its metadata; any other file needs the zoo
//! architecture it was trained as (`--arch`), and its tensor names are matched to the graph
//! (a `module.` prefix from `nn.DataParallel` is stripped automatically). Binding is strict: a
//! missing, unexpected or mis-shaped tensor is an error that names it.

use std::collections::BTreeMap;
use std::path::Path;

use shears_io::{bind_weights, LoadReport, Remap, Strictness};
use shears_ir::{Graph, Weights};

use crate::zoo::{self, Arch, Preprocess};
use crate::Error;

/// Metadata key holding the zoo architecture name, when known.
pub const META_ARCH: &str = "shears.arch";
/// Metadata key holding the JSON form of the input preprocessing.
pub const META_PREPROCESS: &str = "shears.preprocess";
/// Metadata key holding the dataset the model was trained or evaluated on.
pub const META_DATASET: &str = "shears.dataset";

/// A graph with bound weights and its input preprocessing.
#[derive(Clone, Debug)]
pub struct Model {
    /// The computation graph.
    pub graph: Graph,
    /// Weights bound to the graph (every parameter present with the right shape).
    pub weights: Weights,
    /// How raw pixels become model input.
    pub preprocess: Preprocess,
    /// The zoo architecture, when known.
    pub arch: Option<Arch>,
    /// Free-form metadata carried in the file (dataset, history, ...).
    pub metadata: BTreeMap<String, String>,
    /// What happened while binding tensors to the graph.
    pub report: LoadReport,
}

impl Model {
    /// A freshly initialised zoo model: `arch` built with `cfg`, weights from
    /// [`zoo::init_weights`] with `seed`, the architecture's preprocessing, no metadata.
    pub fn fresh(arch: Arch, cfg: &zoo::ZooConfig, seed: u64) -> Result<Model, Error> {
        let graph = zoo::build(arch, cfg)?;
        let weights = zoo::init_weights(&graph, Some(arch), seed);
        Ok(Model {
            graph,
            weights,
            preprocess: arch.preprocessing(),
            arch: Some(arch),
            metadata: BTreeMap::new(),
            report: LoadReport::default(),
        })
    }
}

/// Loads a model file. `arch` is required when the file carries no graph; when both are present
/// the file's graph wins and `arch` only fills in the preprocessing if the file has none.
pub fn load_model(path: &Path, arch: Option<Arch>) -> Result<Model, Error> {
    let loaded = shears_io::load(path)?;
    let file_arch = loaded
        .metadata
        .get(META_ARCH)
        .and_then(|s| s.parse::<Arch>().ok());
    let arch = file_arch.or(arch);
    let origin = path.display().to_string();
    let graph = match loaded.graph {
        Some(g) => g,
        None => {
            let arch = arch.ok_or_else(|| Error::NeedArch {
                path: path.to_path_buf(),
            })?;
            zoo::build(arch, &arch.default_config())?
        }
    };
    let names: Vec<String> = loaded.weights.names().cloned().collect();
    let remap = Remap::auto_for(&graph, &names);
    let (weights, report) =
        bind_weights(&graph, loaded.weights, &remap, Strictness::Strict, &origin)?;
    let preprocess = match loaded.metadata.get(META_PREPROCESS) {
        Some(s) => serde_json::from_str(s).map_err(|e| Error::Invalid {
            what: format!("{origin}: metadata {META_PREPROCESS} is not valid: {e}"),
        })?,
        None => match arch {
            Some(a) => a.preprocessing(),
            None => {
                return Err(Error::Invalid {
                    what: format!(
                        "{origin}: the file carries a graph but no preprocessing; give --arch"
                    ),
                })
            }
        },
    };
    Ok(Model {
        graph,
        weights,
        preprocess,
        arch,
        metadata: loaded.metadata,
        report,
    })
}

/// Saves a model as self-describing safetensors (graph, preprocessing and architecture in the
/// metadata), atomically. It reloads with [`load_model`] and no `arch`.
pub fn save_model(path: &Path, model: &Model) -> Result<(), Error> {
    let mut meta = model.metadata.clone();
    meta.insert(
        META_PREPROCESS.to_string(),
        serde_json::to_string(&model.preprocess).expect("preprocess serialises: plain data"),
    );
    if let Some(a) = model.arch {
        meta.insert(META_ARCH.to_string(), a.to_string());
    }
    shears_io::save_model(path, &model.graph, &model.weights, &meta)?;
    Ok(())
}
