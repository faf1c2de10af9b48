//! Import: an ONNX model to a shears graph and its weights, in four named phases.
//!
//! 1. **Parse**: decode the protobuf, find the default-domain opset and the graph.
//! 2. **Convert**: bind initializers and graph inputs, then hand each node, in file order, to
//!    its converter from the [registry](super::registry) after checking the op's spec.
//!    Converters infer the shape of every node they make (so an error names the ONNX node)
//!    and may fold a node into its producer (`MatMul` + `Add`, `Slice` + `Pad`). A node whose
//!    inputs are all constants (a static shape subgraph: `Shape`, `Gather`, `Concat`, ...)
//!    is evaluated instead ([`fold`](super::fold)).
//! 3. **Build**: run the pending nodes through [`GraphBuilder`], which re-infers and checks
//!    every shape, and name the weights after the final nodes.
//! 4. **Finalize**: when the file embeds a shears graph JSON that describes the same
//!    computation, take its node names and op details (those ONNX cannot carry exactly).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use prost::Message;
use shears_ir::{Activation, Graph, GraphBuilder, Node, NodeId, Op, Weights, GRAPH_FORMAT};

use super::channels_last;
use super::context::{bounded_numel, Ctx, Fusion, Value};
use super::fold;
use super::node::NodeView;
use super::proto::{dtype, GraphProto, ModelProto, ValueInfoProto};
use super::registry;
use super::tensor::{decode, MAX_DIM};
use super::{ImportError, MAX_OPSET};
use crate::model::{Format, LoadedModel, GRAPH_KEY};
use crate::IoError;

/// Reads an ONNX model and converts it to a shears graph and weights.
///
/// Accepted are the files [`export_onnx`](super::export_onnx) writes and the common PyTorch
/// export patterns of the same op set (see the [module docs](super)). A file that is not valid
/// protobuf, is truncated or breaks the ONNX specification gives [`IoError::Corrupt`]; a
/// valid model that shears cannot represent (an unknown op, a broadcasting add, ...) gives
/// [`IoError::Unsupported`] naming the op and node. Never panics on any input.
pub fn import_onnx(path: &Path) -> Result<(Graph, Weights), IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    import(&bytes, None)
        .map(|m| (m.graph, m.weights))
        .map_err(|e| e.into_io(path))
}

/// [`import_onnx`] on bytes in memory; `origin` names them in errors.
pub fn import_onnx_bytes(bytes: &[u8], origin: &str) -> Result<(Graph, Weights), IoError> {
    import(bytes, None)
        .map(|m| (m.graph, m.weights))
        .map_err(|e| e.into_io(Path::new(origin)))
}

/// The ONNX side of [`crate::load_with`]: the model with its metadata (`metadata_props` other
/// than the embedded graph, plus `onnx.producer` when the file names one). `input_shape` is
/// the per-sample input shape for symbolic or unknown dims (see [`crate::LoadOptions`]).
pub(crate) fn load(path: &Path, input_shape: Option<&[usize]>) -> Result<LoadedModel, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    let m = import(&bytes, input_shape).map_err(|e| e.into_io(path))?;
    Ok(LoadedModel {
        graph: Some(m.graph),
        weights: m.weights,
        metadata: m.metadata,
        skipped: Vec::new(),
        format: Format::Onnx,
    })
}

struct Imported {
    graph: Graph,
    weights: Weights,
    metadata: BTreeMap<String, String>,
}

fn import(bytes: &[u8], input_shape: Option<&[usize]>) -> Result<Imported, ImportError> {
    let parsed = parse(bytes)?;
    let (ctx, outputs) = convert(parsed.graph, parsed.opset, input_shape)?;
    let (graph, weights) = build(ctx, &outputs)?;
    let (graph, weights) = match &parsed.embedded {
        Some(json) => restore(graph, weights, json),
        None => (graph, weights),
    };
    Ok(Imported {
        graph,
        weights,
        metadata: parsed.metadata,
    })
}

struct Parsed {
    opset: u64,
    graph: GraphProto,
    embedded: Option<String>,
    metadata: BTreeMap<String, String>,
}

/// Phase 1: protobuf to the parts the later phases need.
fn parse(bytes: &[u8]) -> Result<Parsed, ImportError> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| ImportError::Corrupt(format!("invalid onnx protobuf: {e}")))?;
    if model.ir_version.is_none() {
        return Err(ImportError::Corrupt("model has no ir_version".into()));
    }
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("" | "ai.onnx")))
        .and_then(|o| o.version)
        .ok_or_else(|| ImportError::Corrupt("model imports no default-domain opset".into()))?;
    let opset = u64::try_from(opset)
        .ok()
        .filter(|&v| v >= 1)
        .ok_or_else(|| ImportError::Corrupt(format!("invalid opset version {opset}")))?;
    if opset > MAX_OPSET {
        return Err(ImportError::Unsupported(format!(
            "onnx opset {opset} (this build reads up to {MAX_OPSET})"
        )));
    }
    let graph = model
        .graph
        .ok_or_else(|| ImportError::Corrupt("model has no graph".into()))?;
    let mut metadata = BTreeMap::new();
    let mut embedded = None;
    for p in model.metadata_props {
        let (key, value) = (p.key.unwrap_or_default(), p.value.unwrap_or_default());
        if key == GRAPH_KEY {
            embedded = Some(value);
        } else {
            metadata.insert(key, value);
        }
    }
    if let Some(p) = model.producer_name.filter(|p| !p.is_empty()) {
        let v = model.producer_version.unwrap_or_default();
        metadata.insert(
            "onnx.producer".into(),
            format!("{p} {v}").trim().to_string(),
        );
    }
    Ok(Parsed {
        opset,
        graph,
        embedded,
        metadata,
    })
}

/// The per-sample dims and the batch size (if fixed) of a graph input.
///
/// The batch axis may be symbolic. Other symbolic or unknown dims are taken from
/// `input_shape` (the per-sample shape the caller gives, e.g. `[3, 224, 224]`), which must
/// also agree with every fixed dim; without it they are [`ImportError::UnknownInputShape`].
fn input_dims(
    v: &ValueInfoProto,
    name: &str,
    input_shape: Option<&[usize]>,
) -> Result<(Vec<usize>, Option<usize>), ImportError> {
    let unsupported = |msg: &str| ImportError::Unsupported(format!("graph input {name:?}: {msg}"));
    let t = v
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| unsupported("not a tensor"))?;
    if t.elem_type != Some(dtype::FLOAT) {
        return Err(unsupported(&format!(
            "element type {:?} (only float32)",
            t.elem_type
        )));
    }
    let dims = &t.shape.as_ref().ok_or_else(|| unsupported("no shape"))?.dim;
    if dims.len() < 2 {
        return Err(unsupported(
            "rank below 2 (needs a batch axis and features)",
        ));
    }
    let batch = dims[0]
        .dim_value
        .and_then(|v| usize::try_from(v).ok())
        .filter(|&v| v > 0);
    let shown = || {
        let d: Vec<String> = dims
            .iter()
            .map(|d| match (d.dim_value, d.dim_param.as_deref()) {
                (Some(v), _) => v.to_string(),
                (None, Some(p)) if !p.is_empty() => p.to_string(),
                _ => "?".to_string(),
            })
            .collect();
        format!("[{}]", d.join(", "))
    };
    if let Some(given) = input_shape {
        if given.len() != dims.len() - 1 {
            return Err(unsupported(&format!(
                "dims {} take {} per-sample sizes, the input shape given has {} ({given:?})",
                shown(),
                dims.len() - 1,
                given.len()
            )));
        }
    }
    let mut per_sample = Vec::with_capacity(dims.len() - 1);
    for (i, d) in dims[1..].iter().enumerate() {
        let fixed = match d.dim_value {
            Some(v) => Some(
                usize::try_from(v)
                    .ok()
                    .filter(|&v| v > 0 && v <= MAX_DIM)
                    .ok_or_else(|| unsupported(&format!("dimension {v} is out of range")))?,
            ),
            None => None,
        };
        let v = match (fixed, input_shape.map(|g| g[i])) {
            (Some(f), Some(g)) if f != g => {
                return Err(unsupported(&format!(
                    "dims {}: the input shape given ({:?}) has {g} where the model fixes {f}",
                    shown(),
                    input_shape.unwrap_or_default()
                )))
            }
            (Some(f), _) => f,
            (None, Some(g)) if g > 0 && g <= MAX_DIM => g,
            (None, Some(g)) => {
                return Err(unsupported(&format!(
                    "input shape size {g} is out of range"
                )))
            }
            (None, None) => {
                return Err(ImportError::UnknownInputShape {
                    input: name.to_string(),
                    dims: shown(),
                })
            }
        };
        per_sample.push(v);
    }
    if bounded_numel(&per_sample).is_none() {
        return Err(unsupported("too large"));
    }
    Ok((per_sample, batch))
}

/// Phase 2: constants, inputs, then every node through its converter. Returns the context
/// and the pending-node index of each graph output.
fn convert(
    graph: GraphProto,
    opset: u64,
    input_shape: Option<&[usize]>,
) -> Result<(Ctx, Vec<usize>), ImportError> {
    let mut values = HashMap::new();
    for t in graph.initializer {
        let t = decode(t)?;
        if t.name.is_empty() {
            return Err(ImportError::Corrupt("an initializer has no name".into()));
        }
        if values.contains_key(&t.name) {
            return Err(ImportError::Corrupt(format!(
                "initializer {:?} is defined twice",
                t.name
            )));
        }
        values.insert(t.name.clone(), Value::Const(Rc::new(t)));
    }
    let mut batch = None;
    let mut input_names = Vec::new();
    for v in &graph.input {
        let name = v.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(ImportError::Corrupt("a graph input has no name".into()));
        }
        if values.contains_key(&name) {
            // An initializer listed as an input too (IR < 4): it stays a constant.
            continue;
        }
        let (dims, b) = input_dims(v, &name, input_shape)?;
        batch = match (input_names.is_empty(), batch, b) {
            (true, _, b) => b,
            (false, Some(x), Some(y)) if x == y => Some(x),
            _ => None,
        };
        values.insert(name.clone(), Value::Input(dims));
        input_names.push(name);
    }
    if input_names.is_empty() {
        return Err(ImportError::Unsupported("model has no float input".into()));
    }
    let mut uses: HashMap<String, usize> = HashMap::new();
    let output_names: Vec<String> = graph
        .output
        .iter()
        .map(|o| o.name.clone().unwrap_or_default())
        .collect();
    let consumed = graph.node.iter().flat_map(|n| n.input.iter());
    for name in consumed.chain(&output_names).filter(|n| !n.is_empty()) {
        *uses.entry(name.clone()).or_default() += 1;
    }
    let mut ctx = Ctx::new(values, uses, batch);
    for proto in &graph.node {
        let node = NodeView { proto, opset };
        let op_type = node.op_type();
        let spec = match proto.domain.as_deref() {
            None | Some("" | "ai.onnx") => registry::lookup(op_type),
            Some(_) => None,
        };
        let Some(spec) = spec else {
            let what = match proto.domain.as_deref() {
                None | Some("" | "ai.onnx") => op_type.to_string(),
                Some(d) => format!("{d}::{op_type}"),
            };
            return Err(ImportError::Unsupported(format!(
                "onnx op {what} (node {})",
                node.name()
            )));
        };
        if opset < spec.min_opset {
            return Err(node.unsupported(format!(
                "opset {opset} predates the supported definition (opset {}+)",
                spec.min_opset
            )));
        }
        let (n_in, n_out) = (node.n_inputs(), node.n_outputs());
        if n_in < spec.inputs.0 || n_in > spec.inputs.1 {
            return Err(node.corrupt(format!("{n_in} inputs")));
        }
        if n_out < spec.outputs.0.max(1) || n_out > spec.outputs.1 {
            return Err(node.corrupt(format!("{n_out} outputs")));
        }
        if !fold::try_fold(&mut ctx, node)? && !channels_last::try_convert(&mut ctx, node, spec)? {
            (spec.convert)(&mut ctx, node)?;
        }
    }
    for name in &input_names {
        ctx.resolve_act(name);
    }
    let mut outputs = Vec::with_capacity(output_names.len());
    for name in &output_names {
        if ctx.channels_last(name).is_some() {
            return Err(ImportError::Unsupported(format!(
                "graph output {name:?} is channels-last (NHWC, after a Transpose(0, 2, 3, 1))"
            )));
        }
        match ctx.resolve_act(name) {
            None => {
                return Err(ImportError::Corrupt(format!(
                    "graph output {name:?} is not computed by any node"
                )))
            }
            Some(Err(_)) => {
                return Err(ImportError::Unsupported(format!(
                    "graph output {name:?} is a constant"
                )))
            }
            Some(Ok(a)) => outputs.push(a.node),
        }
    }
    if outputs.is_empty() {
        return Err(ImportError::Corrupt("graph has no outputs".into()));
    }
    Ok((ctx, outputs))
}

/// Phase 3: pending nodes to a validated graph and its weights.
fn build(ctx: Ctx, outputs: &[usize]) -> Result<(Graph, Weights), ImportError> {
    let nodes = ctx.into_nodes();
    if let Some(n) = nodes
        .iter()
        .find(|n| matches!(n.fusion, Fusion::Shortcut { sh, sw } if sh != sw))
    {
        return Err(ImportError::Unsupported(format!(
            "onnx node {:?} (Slice): rows and columns subsampled with different steps",
            n.origin
        )));
    }
    if let Some(n) = nodes
        .iter()
        .find(|n| matches!(n.fusion, Fusion::Gelu { .. }))
    {
        return Err(ImportError::Unsupported(format!(
            "onnx node {:?}: the start of an Erf GELU pattern that does not complete \
             (shears has no general Div, Erf or Mul)",
            n.origin
        )));
    }
    if let Some((n, transposed)) = nodes.iter().find_map(|n| match n.fusion {
        Fusion::Shuffle { transposed } => Some((n, transposed)),
        _ => None,
    }) {
        return Err(super::ops::shuffle::incomplete(&n.origin, transposed));
    }
    let mut b = GraphBuilder::new();
    let mut weights = Weights::new();
    for n in nodes {
        let inputs: Vec<NodeId> = n.inputs.iter().map(|&i| NodeId(i)).collect();
        b.add(n.name.clone(), n.op, &inputs)
            .map_err(|e| ImportError::Corrupt(format!("onnx node {:?}: {e}", n.origin)))?;
        for (kind, t) in n.params {
            weights.insert(format!("{}.{}", n.name, kind.suffix()), t);
        }
    }
    let outputs: Vec<NodeId> = outputs.iter().map(|&i| NodeId(i)).collect();
    let graph = b
        .finish(&outputs)
        .map_err(|e| ImportError::Corrupt(format!("converted graph: {e}")))?;
    Ok((graph, weights))
}

/// Whether two ops compute the same thing (fields ONNX cannot carry exactly may differ).
fn same_computation(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::BatchNorm2d(x), Op::BatchNorm2d(y)) => {
            x.num_features == y.num_features
                && x.eps == y.eps
                && (x.momentum - y.momentum).abs() <= 1e-6
        }
        (Op::Act(x), Op::Act(y)) => canonical(*x) == canonical(*y),
        (Op::MaxPool2d(x), Op::MaxPool2d(y)) => {
            x.kernel == y.kernel && x.stride == y.stride && x.padding == y.padding
        }
        _ => a == b,
    }
}

/// `relu6` for `clip` to `[0, 6]` (the import reads `Clip(0, 6)` as `relu6`).
fn canonical(a: Activation) -> Activation {
    match a {
        Activation::Clip {
            min: Some(lo),
            max: Some(hi),
        } if lo == 0.0 && hi == 6.0 => Activation::Relu6,
        a => a,
    }
}

/// The embedded graph JSON, deserialised but not yet validated.
#[derive(serde::Deserialize)]
struct Embedded {
    format: String,
    nodes: Vec<Node>,
    outputs: Vec<NodeId>,
}

/// Phase 4: adopts the embedded graph (names, exact op fields) when it describes the same
/// computation node for node; otherwise keeps the converted graph, so a file edited by another
/// tool still imports, under the ONNX names.
///
/// The embedded nodes are compared with the converted graph before they are validated, so
/// shape inference only ever runs on ops already known to be sound (a hostile JSON cannot
/// reach it with absurd sizes).
fn restore(graph: Graph, weights: Weights, json: &str) -> (Graph, Weights) {
    let Ok(embedded) = serde_json::from_str::<Embedded>(json) else {
        return (graph, weights);
    };
    let same = embedded.format == GRAPH_FORMAT
        && embedded.nodes.len() == graph.len()
        && embedded.outputs == graph.outputs()
        && graph
            .nodes()
            .iter()
            .zip(&embedded.nodes)
            .all(|(a, b)| a.inputs == b.inputs && same_computation(&a.op, &b.op));
    if !same {
        return (graph, weights);
    }
    // Only names can still be invalid (empty or repeated); then keep the converted graph.
    let Ok(restored) = Graph::new(embedded.nodes, embedded.outputs) else {
        return (graph, weights);
    };
    let mut weights = weights;
    let mut renamed = Weights::new();
    for (a, b) in graph.nodes().iter().zip(restored.nodes()) {
        for spec in a.op.params() {
            if let Some(t) = weights.remove(&a.param_name(spec.kind)) {
                renamed.insert(b.param_name(spec.kind), t);
            }
        }
    }
    (restored, renamed)
}
