//! Export: a shears graph and its weights to an ONNX model (opset [`ONNX_OPSET`]).
//!
//! Parameters become initializers under their shears names, raw little-endian f32, so they
//! reload bit for bit. Each shears node lowers to one ONNX node named like it, or to a short
//! chain whose first node carries the name (global pool: `GlobalAveragePool` + `Flatten`;
//! shortcut: `Slice` + `Pad`). The graph JSON goes into `metadata_props` under
//! [`GRAPH_KEY`] so that an import restores names and op details exactly.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use prost::Message;
use shears_ir::{ChannelOp, Graph, Node, Op, Weights};

use super::ops;
use super::proto::{
    dtype, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, TypeTensor, ValueInfoProto,
};
use super::tensor::{encode_f32, encode_i64};
use super::{INPUT_NAME, LAYER_NORM_OPSET, ONNX_OPSET, OUTPUT_NAME};
use crate::model::GRAPH_KEY;
use crate::report::check_weights;
use crate::IoError;

/// The ONNX IR version written (the one that introduced opset 13).
const IR_VERSION: i64 = 7;
/// The symbol written for the batch axis unless a batch size is fixed.
const BATCH_SYMBOL: &str = "N";

/// How [`export_onnx`] writes a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnnxExportOptions {
    /// Batch size written into the input and output shapes; `None` (the default) writes the
    /// symbol `N`, so the file accepts any batch.
    pub batch: Option<usize>,
    /// Whether to embed the shears graph JSON in `metadata_props` under `shears.graph`
    /// (default true), which lets an import restore node names exactly.
    pub embed_graph: bool,
    /// Extra `metadata_props` entries (e.g. `shears.preprocess`), written in key order;
    /// default none. A `shears.graph` entry here is ignored (see `embed_graph`).
    pub metadata: BTreeMap<String, String>,
}

impl Default for OnnxExportOptions {
    fn default() -> Self {
        OnnxExportOptions {
            batch: None,
            embed_graph: true,
            metadata: BTreeMap::new(),
        }
    }
}

impl OnnxExportOptions {
    /// Symbolic batch, graph embedded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fixes the batch size.
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = Some(batch);
        self
    }

    /// Adds these entries to the file's `metadata_props`.
    pub fn with_metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata = metadata;
        self
    }

    /// Chooses whether to embed the graph JSON.
    pub fn with_embed_graph(mut self, embed: bool) -> Self {
        self.embed_graph = embed;
        self
    }
}

/// Writes `graph` with `weights` as an ONNX model at `path`.
///
/// The weights are first checked strictly against the graph; on any missing, unexpected or
/// wrongly shaped tensor nothing is written and [`IoError::Load`] says why. The input is
/// named `input` and the output `logits` when there is one of each (otherwise they take
/// their node names); the batch axis is symbolic unless [`OnnxExportOptions::batch`] is set.
/// The write is atomic: a temporary file in the same directory, fsync, rename.
///
/// ```
/// use shears_io::onnx::{export_onnx, import_onnx, OnnxExportOptions};
/// use shears_ir::{Conv2d, GraphBuilder, Op, Tensor, Weights};
///
/// let mut b = GraphBuilder::new();
/// let x = b.input("input", &[1, 4, 4]).unwrap();
/// let c = b.add("conv", Conv2d::new(1, 2, 3).with_padding4([0, 0, 1, 1]), &[x]).unwrap();
/// let p = b.add("pool", Op::GlobalAvgPool, &[c]).unwrap();
/// let g = b.finish(&[p]).unwrap();
/// let mut w = Weights::new();
/// w.insert("conv.weight", Tensor::full(&[2, 1, 3, 3], 0.25));
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("tiny.onnx");
/// export_onnx(&path, &g, &w, &OnnxExportOptions::new()).unwrap();
/// let (g2, w2) = import_onnx(&path).unwrap();
/// assert_eq!(g2, g);
/// assert_eq!(w2, w);
/// ```
pub fn export_onnx(
    path: &Path,
    graph: &Graph,
    weights: &Weights,
    opts: &OnnxExportOptions,
) -> Result<(), IoError> {
    let bytes = encode(graph, weights, opts, &path.display().to_string())?;
    crate::write_atomic(path, |w| w.write_all(&bytes))
}

/// The bytes [`export_onnx`] would write.
pub fn export_onnx_bytes(
    graph: &Graph,
    weights: &Weights,
    opts: &OnnxExportOptions,
) -> Result<Vec<u8>, IoError> {
    encode(graph, weights, opts, "onnx export")
}

/// ONNX nodes and initializers being written, and the value names taken.
#[derive(Default)]
pub(crate) struct ExportCtx {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: HashSet<String>,
}

impl ExportCtx {
    /// `base`, or `base_<k>` for the first `k` that makes it unique, reserved.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Appends a node with one output.
    pub fn node(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.to_string()],
            name: Some(name.to_string()),
            op_type: Some(op_type.to_string()),
            attribute,
            ..Default::default()
        });
    }

    /// Adds a 1-D i64 initializer under a fresh name derived from `base`; returns the name.
    pub fn const_i64(&mut self, base: &str, data: &[i64]) -> String {
        let name = self.fresh(base);
        self.initializers.push(encode_i64(&name, data));
        name
    }

    /// Adds a scalar f32 initializer under a fresh name derived from `base`.
    pub fn const_f32_scalar(&mut self, base: &str, v: f32) -> String {
        let name = self.fresh(base);
        self.initializers.push(encode_f32(&name, &[], &[v]));
        name
    }
}

/// Lowers one non-input node of per-sample output shape `shape`; `inputs` are the ONNX names
/// of its producers' values.
fn lower(cx: &mut ExportCtx, node: &Node, shape: &[usize], inputs: &[String], out: &str) {
    match &node.op {
        Op::Input { .. } => unreachable!("inputs are graph inputs, not nodes"),
        Op::Conv2d(c) => ops::conv::export(cx, node, c, inputs, out),
        Op::BatchNorm2d(b) => ops::batch_norm::export(cx, node, b, inputs, out),
        Op::Relu => ops::relu::export(cx, node, inputs, out),
        Op::Act(a) => ops::activation::export(cx, node, *a, inputs, out),
        Op::MaxPool2d(p) => ops::pool::export_max(cx, node, p, inputs, out),
        Op::AvgPool2d(p) => ops::pool::export_avg(cx, node, p, inputs, out),
        Op::GlobalAvgPool => ops::pool::export_global(cx, node, inputs, out),
        Op::Linear(l) => ops::linear::export(cx, node, l, inputs, out),
        Op::Flatten => ops::flatten::export(cx, node, inputs, out),
        Op::Add => ops::add::export(cx, node, inputs, out),
        Op::Concat => ops::concat::export(cx, node, inputs, out),
        Op::Dropout { p } => ops::identity::export_dropout(cx, node, *p, inputs, out),
        Op::ShortcutA(s) => ops::shortcut::export(cx, node, s, inputs, out),
        Op::Identity => ops::identity::export_identity(cx, node, inputs, out),
        Op::Binary(b) => ops::binary::export(cx, node, b, inputs, out),
        Op::Channel(ChannelOp::Shuffle { groups }) => {
            ops::shuffle::export(cx, node, *groups, shape, inputs, out)
        }
        Op::Channel(ChannelOp::Slice { start, end }) => {
            ops::split::export(cx, node, (*start, *end), inputs, out)
        }
        Op::LayerNorm(l) => ops::layer_norm::export(cx, node, l, shape.len() == 3, inputs, out),
    }
}

/// The opset written: [`ONNX_OPSET`], or [`LAYER_NORM_OPSET`] for a graph with a layer norm
/// (`LayerNormalization` is an opset-17 operator).
fn opset(graph: &Graph) -> u64 {
    let has_ln = graph
        .ids()
        .any(|id| matches!(graph.node(id).op, Op::LayerNorm(_)));
    if has_ln {
        LAYER_NORM_OPSET
    } else {
        ONNX_OPSET
    }
}

fn value_info(name: &str, batch: Option<usize>, shape: &[usize]) -> ValueInfoProto {
    let batch_dim = match batch {
        Some(n) => Dimension {
            dim_value: Some(n as i64),
            ..Default::default()
        },
        None => Dimension {
            dim_param: Some(BATCH_SYMBOL.to_string()),
            ..Default::default()
        },
    };
    let dims = std::iter::once(batch_dim).chain(shape.iter().map(|&d| Dimension {
        dim_value: Some(d as i64),
        ..Default::default()
    }));
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type: Some(dtype::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: dims.collect(),
                }),
            }),
            denotation: None,
        }),
        doc_string: None,
    }
}

fn encode(
    graph: &Graph,
    weights: &Weights,
    opts: &OnnxExportOptions,
    origin: &str,
) -> Result<Vec<u8>, IoError> {
    let report = check_weights(graph, weights);
    if !report.is_clean() {
        return Err(IoError::Load {
            origin: origin.to_string(),
            report: Box::new(report),
        });
    }
    let mut cx = ExportCtx::default();
    for (_, name, _) in graph.param_specs() {
        let t = weights.get(&name).expect("checked against the graph above");
        let name = cx.fresh(&name);
        cx.initializers.push(encode_f32(&name, t.shape(), t.data()));
    }
    let inputs = graph.inputs();
    let outputs = graph.outputs();
    let mut values: Vec<Option<String>> = vec![None; graph.len()];
    if let [i] = inputs.as_slice() {
        values[i.0] = Some(cx.fresh(INPUT_NAME));
    }
    if let [o] = outputs {
        if values[o.0].is_none() {
            values[o.0] = Some(cx.fresh(OUTPUT_NAME));
        }
    }
    for id in graph.ids() {
        if values[id.0].is_none() {
            values[id.0] = Some(cx.fresh(&graph.node(id).name));
        }
    }
    let values: Vec<String> = values.into_iter().map(|v| v.expect("set above")).collect();
    for id in graph.ids() {
        let node = graph.node(id);
        if matches!(node.op, Op::Input { .. }) {
            continue;
        }
        let ins: Vec<String> = node.inputs.iter().map(|i| values[i.0].clone()).collect();
        lower(&mut cx, node, graph.shape(id), &ins, &values[id.0]);
    }
    let g = GraphProto {
        node: cx.nodes,
        name: Some("shears".to_string()),
        initializer: cx.initializers,
        doc_string: None,
        input: inputs
            .iter()
            .map(|&i| value_info(&values[i.0], opts.batch, graph.shape(i)))
            .collect(),
        output: outputs
            .iter()
            .map(|&o| value_info(&values[o.0], opts.batch, graph.shape(o)))
            .collect(),
    };
    let mut metadata_props = Vec::new();
    if opts.embed_graph {
        metadata_props.push(StringStringEntryProto {
            key: Some(GRAPH_KEY.to_string()),
            value: Some(graph.to_json()),
        });
    }
    for (k, v) in opts
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != GRAPH_KEY)
    {
        metadata_props.push(StringStringEntryProto {
            key: Some(k.clone()),
            value: Some(v.clone()),
        });
    }
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("shears".to_string()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset(graph) as i64),
        }],
        metadata_props,
        ..Default::default()
    };
    // The graph goes last (protobuf fields may come in any order): a file cut anywhere then
    // either lacks the graph or ends inside it, so truncation is always detected.
    let mut buf = model.encode_to_vec();
    prost::encoding::message::encode(7, &g, &mut buf);
    Ok(buf)
}
