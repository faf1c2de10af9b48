//! A read-only view of one ONNX node: its inputs, outputs and typed attribute access.

use super::proto::{attr_type, AttributeProto, NodeProto, TensorProto};
use super::ImportError;

/// One node of the graph being imported, with the model's opset.
#[derive(Clone, Copy)]
pub(crate) struct NodeView<'a> {
    /// The node as decoded.
    pub proto: &'a NodeProto,
    /// The version of the default-domain operator set the model imports.
    pub opset: u64,
}

impl<'a> NodeView<'a> {
    /// The operator type (`Conv`, `Relu`, ...).
    pub fn op_type(&self) -> &'a str {
        self.proto.op_type.as_deref().unwrap_or("")
    }

    /// The node name, or its first output's name when it has none.
    pub fn name(&self) -> &'a str {
        match self.proto.name.as_deref() {
            Some(n) if !n.is_empty() => n,
            _ => self.proto.output.first().map(String::as_str).unwrap_or(""),
        }
    }

    /// The name of input `i`, or `None` when it is omitted (absent or empty).
    pub fn input(&self, i: usize) -> Option<&'a str> {
        self.proto
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Number of input slots, trailing omitted ones excluded.
    pub fn n_inputs(&self) -> usize {
        self.proto
            .input
            .iter()
            .rposition(|s| !s.is_empty())
            .map_or(0, |i| i + 1)
    }

    /// The name of output `i`, or `None` when it is omitted.
    pub fn output(&self, i: usize) -> Option<&'a str> {
        self.proto
            .output
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Number of output slots, trailing omitted ones excluded.
    pub fn n_outputs(&self) -> usize {
        self.proto
            .output
            .iter()
            .rposition(|s| !s.is_empty())
            .map_or(0, |i| i + 1)
    }

    /// An error for a node that breaks the ONNX specification.
    pub fn corrupt(&self, msg: impl std::fmt::Display) -> ImportError {
        ImportError::Corrupt(format!(
            "onnx node {:?} ({}): {msg}",
            self.name(),
            self.op_type()
        ))
    }

    /// An error for a valid node that shears cannot represent.
    pub fn unsupported(&self, msg: impl std::fmt::Display) -> ImportError {
        ImportError::Unsupported(format!(
            "onnx node {:?} ({}): {msg}",
            self.name(),
            self.op_type()
        ))
    }

    fn attr(
        &self,
        name: &str,
        ty: i32,
        is_set: impl Fn(&AttributeProto) -> bool,
    ) -> Result<Option<&'a AttributeProto>, ImportError> {
        let Some(a) = self
            .proto
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
        else {
            return Ok(None);
        };
        if a.ref_attr_name.as_deref().is_some_and(|r| !r.is_empty()) {
            return Err(self.corrupt(format!(
                "attribute `{name}` refers to a function attribute outside a function"
            )));
        }
        match a.r#type {
            Some(t) if t == ty => Ok(Some(a)),
            None if is_set(a) => Ok(Some(a)),
            _ => Err(self.corrupt(format!("attribute `{name}` has the wrong type"))),
        }
    }

    /// An `INT` attribute, or `default` when absent.
    pub fn attr_int(&self, name: &str, default: i64) -> Result<i64, ImportError> {
        Ok(self
            .attr(name, attr_type::INT, |a| a.i.is_some())?
            .map_or(default, |a| a.i.unwrap_or(0)))
    }

    /// An `INTS` attribute, or `None` when absent.
    pub fn attr_ints(&self, name: &str) -> Result<Option<&'a [i64]>, ImportError> {
        Ok(self
            .attr(name, attr_type::INTS, |a| !a.ints.is_empty())?
            .map(|a| a.ints.as_slice()))
    }

    /// A `FLOAT` attribute, or `default` when absent.
    pub fn attr_float(&self, name: &str, default: f32) -> Result<f32, ImportError> {
        Ok(self
            .attr(name, attr_type::FLOAT, |a| a.f.is_some())?
            .map_or(default, |a| a.f.unwrap_or(0.0)))
    }

    /// A `FLOATS` attribute, or `None` when absent.
    pub fn attr_floats(&self, name: &str) -> Result<Option<&'a [f32]>, ImportError> {
        Ok(self
            .attr(name, attr_type::FLOATS, |a| !a.floats.is_empty())?
            .map(|a| a.floats.as_slice()))
    }

    /// A `STRING` attribute as UTF-8, or `None` when absent.
    pub fn attr_string(&self, name: &str) -> Result<Option<&'a str>, ImportError> {
        match self.attr(name, attr_type::STRING, |a| a.s.is_some())? {
            None => Ok(None),
            Some(a) => std::str::from_utf8(a.s.as_deref().unwrap_or_default())
                .map(Some)
                .map_err(|_| self.corrupt(format!("attribute `{name}` is not UTF-8"))),
        }
    }

    /// A `TENSOR` attribute, or `None` when absent.
    pub fn attr_tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, ImportError> {
        Ok(self
            .attr(name, attr_type::TENSOR, |a| a.t.is_some())?
            .and_then(|a| a.t.as_ref()))
    }

    /// Names of all attributes, for rejecting ones a converter cannot honour.
    pub fn attr_names(&self) -> impl Iterator<Item = &'a str> {
        self.proto
            .attribute
            .iter()
            .map(|a| a.name.as_deref().unwrap_or(""))
    }
}
