//! ONNX Runtime as a runtime: the shared library loaded at run time through the `ort` crate,
//! and a model exported to ONNX in memory and run in a session.
//!
//! The library is never linked or downloaded at build time: [`OrtLibrary::load`] looks for it
//! where the user says (`--ort-lib PATH`, else `$ORT_DYLIB_PATH`, else `libonnxruntime.so` on
//! the dynamic linker's search path) and fails with [`RuntimeError::LibraryNotFound`] naming
//! every place looked at. One process loads one library.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use shears_io::onnx::{export_onnx_bytes, OnnxExportOptions};
use shears_ir::{Graph, Tensor, Weights};

use super::RuntimeError;
use crate::Error;

/// The environment variable `ort` and shears read for the library path.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The file name looked up on the dynamic linker's search path when no path is given.
pub const DEFAULT_LIBRARY: &str = "libonnxruntime.so";

/// The library this process has loaded, if any.
static LOADED: Mutex<Option<OrtLibrary>> = Mutex::new(None);

/// A loaded ONNX Runtime shared library.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OrtLibrary {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Its version (e.g. `1.32.0`), from its build information.
    pub version: String,
}

/// Where a library path came from, for error messages.
fn candidates(explicit: Option<&Path>) -> Vec<(PathBuf, String)> {
    if let Some(p) = explicit {
        return vec![(p.to_path_buf(), "--ort-lib".into())];
    }
    match std::env::var_os(ORT_DYLIB_ENV) {
        Some(v) if !v.is_empty() => vec![(PathBuf::from(v), format!("${ORT_DYLIB_ENV}"))],
        _ => vec![(
            PathBuf::from(DEFAULT_LIBRARY),
            format!("${ORT_DYLIB_ENV} unset, the dynamic linker's search path"),
        )],
    }
}

impl OrtLibrary {
    /// Loads ONNX Runtime from `explicit` (`--ort-lib`), else from `$ORT_DYLIB_PATH`, else
    /// [`DEFAULT_LIBRARY`] through the dynamic linker. Loading twice returns the library
    /// already loaded; asking for another file then is an error.
    pub fn load(explicit: Option<&Path>) -> Result<OrtLibrary, RuntimeError> {
        let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
        let mut tried = Vec::new();
        for (path, source) in candidates(explicit) {
            let by_name = path.components().count() == 1;
            if !by_name && !path.exists() {
                tried.push(format!("{} ({source}): no such file", path.display()));
                continue;
            }
            if let Some(lib) = loaded.as_ref() {
                if explicit.is_none() || same_file(&path, &lib.path) {
                    return Ok(lib.clone());
                }
                return Err(RuntimeError::OtherLibraryLoaded {
                    loaded: lib.path.clone(),
                    asked: path,
                });
            }
            match try_load(&path) {
                Ok(info) => {
                    let version = version_of(&path, &info);
                    let lib = OrtLibrary { path, version };
                    *loaded = Some(lib.clone());
                    return Ok(lib);
                }
                Err(why) => tried.push(format!("{} ({source}): {why}", path.display())),
            }
        }
        Err(RuntimeError::LibraryNotFound {
            tried: tried.join("; "),
        })
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Loads the library at `path` and returns its version; the `ort` crate may panic on a
/// library it cannot use, which is caught here and reported as an error.
fn try_load(path: &Path) -> Result<String, String> {
    let path = path.to_path_buf();
    let attempt = std::panic::catch_unwind(move || -> Result<String, String> {
        let env = ort::init_from(&path).map_err(|e| e.to_string())?;
        env.with_name("shears").commit();
        Ok(ort::info().to_string())
    });
    match attempt {
        Ok(r) => r,
        Err(panic) => Err(format!(
            "the ort crate panicked loading it: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic")
        )),
    }
}

/// The library's version: from its file name (`libonnxruntime.so.1.32.0`, links followed),
/// else from its build information (`git-branch=rel-1.32.0`); with the build's commit when
/// the build information names one.
fn version_of(path: &Path, info: &str) -> String {
    let field = |key: &str| {
        info.split([',', ' '])
            .find_map(|f| f.trim().strip_prefix(key).map(str::to_string))
    };
    let file = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let from_name = file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once(".so."))
        .map(|(_, v)| v.to_string())
        .filter(|v| v.split('.').all(|p| p.parse::<u32>().is_ok()));
    let from_branch = field("git-branch=").and_then(|b| b.strip_prefix("rel-").map(str::to_string));
    let commit = field("git-commit-id=");
    match (from_name.or(from_branch), commit) {
        (Some(v), Some(c)) => format!("{v}+{c}"),
        (Some(v), None) => v,
        (None, Some(c)) => format!("unknown+{c}"),
        (None, None) => info.split(',').next().unwrap_or(info).trim().to_string(),
    }
}

/// A model in an ONNX Runtime session: exported to ONNX in memory (symbolic batch), intra-op
/// threads as given, one inter-op thread, every graph optimisation on (what users deploy with).
pub struct OrtModel {
    session: Session,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel").finish_non_exhaustive()
    }
}

impl OrtModel {
    /// Exports `graph` with `weights` to ONNX and creates a session on `threads` intra-op
    /// threads. `_lib` proves the library is loaded.
    pub fn new(
        _lib: &OrtLibrary,
        graph: &Graph,
        weights: &Weights,
        threads: usize,
    ) -> Result<OrtModel, Error> {
        let opts = OnnxExportOptions {
            batch: None,
            embed_graph: false,
            ..OnnxExportOptions::default()
        };
        let bytes = export_onnx_bytes(graph, weights, &opts)?;
        let what = "creating a session";
        let session = builder(threads)?
            .commit_from_memory(&bytes)
            .map_err(|e| RuntimeError::ort(what, e))?;
        Ok(OrtModel { session })
    }

    /// A session on the ONNX file at `path` as it is (not imported and exported by shears):
    /// the same file shears' engine loads, for side-by-side timing. Same options as
    /// [`OrtModel::new`].
    /// `spin: false` stops the intra-op threads from spin-waiting between kernels
    /// (`session.intra_op.allow_spinning = 0`; ONNX Runtime spins by default), which costs
    /// ONNX Runtime time on an oversubscribed machine.
    pub fn from_file(
        _lib: &OrtLibrary,
        path: &Path,
        threads: usize,
        spin: bool,
    ) -> Result<OrtModel, Error> {
        let what = format!("creating a session on {}", path.display());
        let session = builder(threads)?
            .with_config_entry(
                "session.intra_op.allow_spinning",
                if spin { "1" } else { "0" },
            )
            .map_err(|e| RuntimeError::ort(what.clone(), e))?
            .commit_from_file(path)
            .map_err(|e| RuntimeError::ort(what, e))?;
        Ok(OrtModel { session })
    }

    /// Runs a batch `x` (NCHW or NC) and returns the first output.
    pub fn run(&mut self, x: &Tensor) -> Result<Tensor, Error> {
        let what = || format!("running a batch of shape {:?}", x.shape());
        let input = TensorRef::from_array_view((x.shape().to_vec(), x.data()))
            .map_err(|e| RuntimeError::ort(what(), e))?;
        let outputs = self
            .session
            .run(ort::inputs![input])
            .map_err(|e| RuntimeError::ort(what(), e))?;
        let (shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| RuntimeError::ort(what(), e))?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok(Tensor::new(shape, data.to_vec())?)
    }
}

/// A session builder: `threads` intra-op threads, one inter-op thread, sequential execution,
/// every graph optimisation.
fn builder(threads: usize) -> Result<ort::session::builder::SessionBuilder, Error> {
    let what = "creating a session";
    Ok(Session::builder()
        .map_err(|e| RuntimeError::ort(what, e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| RuntimeError::ort(what, e))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| RuntimeError::ort(what, e))?
        .with_inter_threads(1)
        .map_err(|e| RuntimeError::ort(what, e))?
        .with_parallel_execution(false)
        .map_err(|e| RuntimeError::ort(what, e))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_file_name_or_build_info() {
        let wheel = Path::new("/x/capi/libonnxruntime.so.1.32.0");
        let info = "ORT Build Info: git-branch=HEAD, git-commit-id=fab30a4, build type=Release";
        assert_eq!(version_of(wheel, info), "1.32.0+fab30a4");
        let system = Path::new("/nonexistent/libonnxruntime.so");
        let rel = "ORT Build Info: git-branch=rel-1.22.0, build type=Release";
        assert_eq!(version_of(system, rel), "1.22.0");
        assert_eq!(version_of(system, info), "unknown+fab30a4");
        assert_eq!(version_of(system, "something else"), "something else");
    }

    #[test]
    fn explicit_path_wins_over_the_environment() {
        let c = candidates(Some(Path::new("/x/libonnxruntime.so")));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, PathBuf::from("/x/libonnxruntime.so"));
        assert_eq!(c[0].1, "--ort-lib");
    }
}
