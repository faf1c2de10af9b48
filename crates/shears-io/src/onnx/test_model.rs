//! Hand-built ONNX models for the importer's unit tests (no Python, no fixture files).

use prost::Message;

use super::proto::{
    dtype, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorShapeProto, TypeProto, TypeTensor, ValueInfoProto,
};

/// A float graph input or output with these full dims (batch included); a negative dim is
/// symbolic (`N`).
pub(crate) fn info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            dim_value: (d >= 0).then_some(d),
            dim_param: (d < 0).then(|| "N".to_string()),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type: Some(dtype::FLOAT),
                shape: Some(TensorShapeProto { dim }),
            }),
            denotation: None,
        }),
        doc_string: None,
    }
}

/// Node `/<out>` of `op_type` reading `ins` and writing `out`.
pub(crate) fn op(
    op_type: &str,
    ins: &[&str],
    out: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: Some(format!("/{out}")),
        op_type: Some(op_type.into()),
        attribute,
        ..Default::default()
    }
}

/// `graph` as the bytes of a model importing default-domain opset `opset`.
pub(crate) fn model(graph: GraphProto, opset: i64) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: None,
            version: Some(opset),
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}
