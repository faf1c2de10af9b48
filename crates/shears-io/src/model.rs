//! Self-describing model files and format dispatch.
//!
//! A model saved by shears is a safetensors file whose metadata carries the graph as JSON under
//! [`GRAPH_KEY`] and the format version under [`FORMAT_KEY`], so it reloads with no code.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use shears_ir::{Graph, Weights};

use crate::pytorch::{read_pytorch, PthOptions};
use crate::report::check_weights;
use crate::safetensors::{read_safetensors, write_safetensors};
use crate::IoError;

/// Metadata key holding the graph JSON ([`Graph::to_json`]).
pub const GRAPH_KEY: &str = "shears.graph";
/// Metadata key holding the shears file-format version.
pub const FORMAT_KEY: &str = "shears.format";
/// The file-format version this crate writes and reads.
pub const FORMAT_VERSION: &str = "1";

/// A weights file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// safetensors (`.safetensors`), possibly a self-describing shears model.
    SafeTensors,
    /// A `torch.save` checkpoint (`.pt`, `.pth`, `.th`, `.bin`), zip or legacy.
    PyTorch,
    /// ONNX (`.onnx`).
    Onnx,
}

impl Format {
    /// The format of `path`: by extension, or for unknown extensions by the first bytes
    /// (zip `PK\x03\x04`; a protocol-2 pickle starting with the legacy torch magic number;
    /// a u64 header length followed by `{` for safetensors).
    pub fn infer(path: &Path) -> Result<Format, IoError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("safetensors") => return Ok(Format::SafeTensors),
            Some("pt" | "pth" | "th" | "bin") => return Ok(Format::PyTorch),
            Some("onnx") => return Ok(Format::Onnx),
            _ => {}
        }
        let mut head = Vec::with_capacity(16);
        let f = std::fs::File::open(path).map_err(|e| IoError::io(path, e))?;
        let len = f.metadata().map_err(|e| IoError::io(path, e))?.len();
        f.take(16)
            .read_to_end(&mut head)
            .map_err(|e| IoError::io(path, e))?;
        Format::sniff(&head, len).ok_or_else(|| {
            IoError::unsupported(
                path,
                format!(
                    "unknown model format (extension {:?}, first bytes {:02x?})",
                    ext.unwrap_or_default(),
                    &head[..head.len().min(8)]
                ),
            )
        })
    }

    /// The format shears writes to `path`, by its extension (case-insensitive): `.safetensors`
    /// (a self-describing model) or `.onnx`.
    ///
    /// # Errors
    /// [`IoError::UnknownOutputFormat`] for any other extension, or none, listing the known
    /// ones.
    pub fn for_output(path: &Path) -> Result<Format, IoError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "safetensors" => Ok(Format::SafeTensors),
            "onnx" => Ok(Format::Onnx),
            _ => Err(IoError::UnknownOutputFormat {
                path: path.to_path_buf(),
                ext,
                known: ".safetensors (self-describing model), .onnx".to_string(),
            }),
        }
    }

    /// Recognises a format from the first bytes of a file of `len` bytes.
    fn sniff(head: &[u8], len: u64) -> Option<Format> {
        // LONG1 of 10 bytes holding 0x1950a86a20f9469cfc6c, little-endian.
        const LEGACY: [u8; 14] = [
            0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
        ];
        if head.starts_with(b"PK\x03\x04") || head.starts_with(&LEGACY) {
            return Some(Format::PyTorch);
        }
        if head.len() >= 9 && head[8] == b'{' {
            let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
            if n.checked_add(8).is_some_and(|end| end <= len) {
                return Some(Format::SafeTensors);
            }
        }
        None
    }
}

/// A model or checkpoint read by [`load`].
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedModel {
    /// The embedded graph, for self-describing shears models; `None` for plain weights.
    pub graph: Option<Graph>,
    /// The tensors, named as in the file. For a self-describing model they match the graph.
    pub weights: Weights,
    /// safetensors metadata without [`GRAPH_KEY`] (parsed into `graph`), or for PyTorch the
    /// checkpoint's other top-level entries as text.
    pub metadata: BTreeMap<String, String>,
    /// Entries not loaded, with the reason (PyTorch integer tensors and non-tensor values).
    pub skipped: Vec<(String, String)>,
    /// The format the file was read as.
    pub format: Format,
}

/// Options of [`load_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The per-sample input shape (e.g. `[3, 224, 224]`) for an ONNX model whose input has
    /// symbolic or unknown dims besides the batch; it must agree with the dims the file
    /// fixes. Default `None`: such a model is [`IoError::UnknownInputShape`]. Other formats
    /// ignore it (their graph, if any, fixes the shape).
    pub input_shape: Option<Vec<usize>>,
}

/// Loads weights, and the graph when the file embeds one, from any supported format.
///
/// A self-describing model is checked strictly against its own graph, so a `LoadedModel` with
/// a graph always has exactly the weights that graph needs. An ONNX model is converted by
/// [`crate::onnx::import_onnx`]; its metadata holds the file's `metadata_props`.
pub fn load(path: &Path) -> Result<LoadedModel, IoError> {
    load_with(path, &LoadOptions::default())
}

/// [`load`] with options (the input shape of an ONNX model with dynamic dims).
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<LoadedModel, IoError> {
    let format = Format::infer(path)?;
    match format {
        Format::SafeTensors => {
            let st = read_safetensors(path)?;
            let mut metadata = st.metadata;
            let graph = match metadata.remove(GRAPH_KEY) {
                None => None,
                Some(json) => {
                    match metadata.get(FORMAT_KEY).map(String::as_str) {
                        Some(FORMAT_VERSION) | None => {}
                        Some(v) => {
                            return Err(IoError::unsupported(
                                path,
                                format!("shears model format version {v:?} (this build reads {FORMAT_VERSION:?})"),
                            ))
                        }
                    }
                    let g = Graph::from_json(&json).map_err(|source| IoError::Graph {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    let report = check_weights(&g, &st.tensors);
                    if !report.is_clean() {
                        return Err(IoError::Load {
                            origin: path.display().to_string(),
                            report: Box::new(report),
                        });
                    }
                    Some(g)
                }
            };
            Ok(LoadedModel {
                graph,
                weights: st.tensors,
                metadata,
                skipped: Vec::new(),
                format,
            })
        }
        Format::PyTorch => {
            let ck = read_pytorch(path, &PthOptions::default())?;
            Ok(LoadedModel {
                graph: None,
                weights: ck.tensors,
                metadata: ck.extra,
                skipped: ck.skipped,
                format,
            })
        }
        Format::Onnx => crate::onnx::load(path, opts.input_shape.as_deref()),
    }
}

/// Saves a self-describing model: `weights` as F32 safetensors, the graph JSON under
/// [`GRAPH_KEY`], [`FORMAT_KEY`] = `"1"`, plus `extra_metadata` (e.g. `shears.arch`,
/// `shears.preprocess`, `shears.dataset`, `shears.history`; the two reserved keys are
/// overwritten).
///
/// The weights are first checked strictly against `graph.param_specs()`; on any missing,
/// unexpected or wrongly shaped tensor nothing is written and [`IoError::Load`] says why. The
/// write is atomic (see [`write_safetensors`]).
pub fn save_model(
    path: &Path,
    graph: &Graph,
    weights: &Weights,
    extra_metadata: &BTreeMap<String, String>,
) -> Result<(), IoError> {
    let report = check_weights(graph, weights);
    if !report.is_clean() {
        return Err(IoError::Load {
            origin: path.display().to_string(),
            report: Box::new(report),
        });
    }
    let mut metadata = extra_metadata.clone();
    metadata.insert(GRAPH_KEY.to_string(), graph.to_json());
    metadata.insert(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string());
    write_safetensors(path, weights, &metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_recognises_each_magic() {
        assert_eq!(Format::sniff(b"PK\x03\x04rest", 100), Some(Format::PyTorch));
        let legacy = [
            0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
        ];
        assert_eq!(Format::sniff(&legacy, 100), Some(Format::PyTorch));
        let mut st = 16u64.to_le_bytes().to_vec();
        st.push(b'{');
        assert_eq!(Format::sniff(&st, 24), Some(Format::SafeTensors));
        assert_eq!(Format::sniff(&st, 23), None, "header longer than the file");
        assert_eq!(
            Format::sniff(b"\x80\x02}q\x00", 100),
            None,
            "a plain pickle is not torch"
        );
        assert_eq!(Format::sniff(b"", 0), None);
    }
}
