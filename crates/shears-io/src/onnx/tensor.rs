//! `TensorProto` to and from plain data: f32 for parameters, i64 for shapes, axes and pads.
//!
//! Decoding trusts nothing: every dimension is bounded, the element count is computed with
//! checked arithmetic and must match the bytes actually present before anything is
//! allocated, so a tensor never costs more memory than the file spends on it.

use shears_ir::Tensor;

use super::proto::{dtype, TensorProto};
use super::ImportError;

/// Largest dimension accepted anywhere in an imported model (tensor dims, attribute values).
pub(crate) const MAX_DIM: usize = 1 << 24;
/// Largest element count of a tensor or of one sample's activation.
pub(crate) const MAX_NUMEL: usize = 1 << 40;

/// A decoded constant (an initializer or a `Constant` node's value).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ConstTensor {
    /// The ONNX value name.
    pub name: String,
    /// The shape (empty for a scalar).
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: ConstData,
}

/// The elements of a constant, widened to one type per family.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ConstData {
    /// Any floating-point type.
    F32(Vec<f32>),
    /// Any integer or boolean type.
    I64(Vec<i64>),
    /// A type this crate does not read (strings, complex, ...), by its `DataType` value.
    Other(i32),
}

impl ConstTensor {
    /// The elements as f32, or an error naming `what` the tensor is for.
    pub fn f32s(&self, what: &str) -> Result<&[f32], ImportError> {
        match &self.data {
            ConstData::F32(v) => Ok(v),
            _ => Err(ImportError::Unsupported(format!(
                "{what} {:?} is not a floating-point tensor",
                self.name
            ))),
        }
    }

    /// The elements as i64, or an error naming `what` the tensor is for.
    pub fn i64s(&self, what: &str) -> Result<&[i64], ImportError> {
        match &self.data {
            ConstData::I64(v) => Ok(v),
            _ => Err(ImportError::Unsupported(format!(
                "{what} {:?} is not an integer tensor",
                self.name
            ))),
        }
    }

    /// The single element of a one-element float tensor (a scalar or shape `[1]`).
    pub fn scalar_f32(&self, what: &str) -> Result<f32, ImportError> {
        match self.f32s(what)? {
            [x] => Ok(*x),
            v => Err(ImportError::Corrupt(format!(
                "{what} {:?} must hold one value, holds {}",
                self.name,
                v.len()
            ))),
        }
    }

    /// The tensor as a shears [`Tensor`] of shape `shape` (which must have the same size).
    pub fn to_tensor(&self, shape: &[usize], what: &str) -> Result<Tensor, ImportError> {
        let v = self.f32s(what)?;
        Tensor::new(shape.to_vec(), v.to_vec()).map_err(|_| {
            ImportError::Corrupt(format!(
                "{what} {:?} has shape {:?}, expected {shape:?}",
                self.name, self.dims
            ))
        })
    }
}

/// Decodes a tensor held inside the file.
pub(crate) fn decode(t: TensorProto) -> Result<ConstTensor, ImportError> {
    let name = t.name.clone().unwrap_or_default();
    let corrupt = |msg: String| ImportError::Corrupt(format!("tensor {name:?}: {msg}"));
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(ImportError::Unsupported(format!(
            "tensor {name:?} keeps its data in an external file"
        )));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    let mut numel: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d)
            .ok()
            .filter(|&d| d <= MAX_NUMEL)
            .ok_or_else(|| corrupt(format!("invalid dimension {d}")))?;
        numel = numel
            .checked_mul(d)
            .filter(|&n| n <= MAX_NUMEL)
            .ok_or_else(|| corrupt(format!("shape {:?} is too large", t.dims)))?;
        dims.push(d);
    }
    let dt = t.data_type.ok_or_else(|| corrupt("no data type".into()))?;
    let raw = t.raw_data.as_deref();
    let check_len = |found: usize| {
        if found == numel {
            Ok(())
        } else {
            Err(corrupt(format!(
                "shape {dims:?} needs {numel} elements, the file holds {found}"
            )))
        }
    };
    let raw_chunks = |size: usize| -> Result<std::slice::ChunksExact<'_, u8>, ImportError> {
        let r = raw.expect("called only when raw_data is present");
        if !r.len().is_multiple_of(size) {
            return Err(corrupt(format!(
                "raw data of {} bytes is not a whole number of {size}-byte elements",
                r.len()
            )));
        }
        check_len(r.len() / size)?;
        Ok(r.chunks_exact(size))
    };
    let data = match dt {
        dtype::FLOAT => match raw {
            Some(_) => ConstData::F32(
                raw_chunks(4)?
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ),
            None => {
                check_len(t.float_data.len())?;
                ConstData::F32(t.float_data)
            }
        },
        dtype::DOUBLE => match raw {
            Some(_) => ConstData::F32(
                raw_chunks(8)?
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
            None => {
                check_len(t.double_data.len())?;
                ConstData::F32(t.double_data.iter().map(|&x| x as f32).collect())
            }
        },
        dtype::FLOAT16 | dtype::BFLOAT16 => {
            let widen = |bits: u16| {
                if dt == dtype::FLOAT16 {
                    half::f16::from_bits(bits).to_f32()
                } else {
                    half::bf16::from_bits(bits).to_f32()
                }
            };
            match raw {
                Some(_) => ConstData::F32(
                    raw_chunks(2)?
                        .map(|c| widen(u16::from_le_bytes([c[0], c[1]])))
                        .collect(),
                ),
                None => {
                    check_len(t.int32_data.len())?;
                    ConstData::F32(t.int32_data.iter().map(|&x| widen(x as u16)).collect())
                }
            }
        }
        dtype::INT64 => match raw {
            Some(_) => ConstData::I64(
                raw_chunks(8)?
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            None => {
                check_len(t.int64_data.len())?;
                ConstData::I64(t.int64_data)
            }
        },
        dtype::INT32 | dtype::INT16 | dtype::INT8 | dtype::UINT16 | dtype::UINT8 | dtype::BOOL => {
            match raw {
                Some(_) => {
                    let v: Vec<i64> = match dt {
                        dtype::INT32 => raw_chunks(4)?
                            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                            .collect(),
                        dtype::INT16 => raw_chunks(2)?
                            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                            .collect(),
                        dtype::UINT16 => raw_chunks(2)?
                            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                            .collect(),
                        dtype::INT8 => raw_chunks(1)?.map(|c| c[0] as i8 as i64).collect(),
                        _ => raw_chunks(1)?.map(|c| c[0] as i64).collect(),
                    };
                    ConstData::I64(v)
                }
                None => {
                    check_len(t.int32_data.len())?;
                    ConstData::I64(t.int32_data.iter().map(|&x| x as i64).collect())
                }
            }
        }
        dtype::UINT32 | dtype::UINT64 => {
            let v: Vec<u64> = match raw {
                Some(_) if dt == dtype::UINT32 => raw_chunks(4)?
                    .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) as u64)
                    .collect(),
                Some(_) => raw_chunks(8)?
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                None => {
                    check_len(t.uint64_data.len())?;
                    t.uint64_data
                }
            };
            let v = v
                .into_iter()
                .map(|x| i64::try_from(x).map_err(|_| corrupt(format!("value {x} overflows i64"))))
                .collect::<Result<Vec<i64>, _>>()?;
            ConstData::I64(v)
        }
        other => ConstData::Other(other),
    };
    Ok(ConstTensor { name, dims, data })
}

/// Encodes an f32 tensor as little-endian `raw_data`, bit for bit.
pub(crate) fn encode_f32(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 4);
    for x in data {
        raw.extend_from_slice(&x.to_le_bytes());
    }
    TensorProto {
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype::FLOAT),
        name: Some(name.to_string()),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// Encodes a 1-D i64 tensor (shapes, axes, pads) as little-endian `raw_data`.
pub(crate) fn encode_i64(name: &str, data: &[i64]) -> TensorProto {
    let mut raw = Vec::with_capacity(data.len() * 8);
    for x in data {
        raw.extend_from_slice(&x.to_le_bytes());
    }
    TensorProto {
        dims: vec![data.len() as i64],
        data_type: Some(dtype::INT64),
        name: Some(name.to_string()),
        raw_data: Some(raw),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trips_bit_for_bit() {
        let data = [0.1f32, -0.0, f32::MIN_POSITIVE / 2.0, 1e30, f32::NAN];
        let t = decode(encode_f32("w", &[5], &data)).unwrap();
        let ConstData::F32(v) = t.data else {
            panic!("not f32")
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&v), bits(&data));
        assert_eq!(t.dims, [5]);
    }

    #[test]
    fn typed_fields_and_widening() {
        let t = TensorProto {
            dims: vec![2],
            data_type: Some(dtype::INT32),
            int32_data: vec![-3, 7],
            ..Default::default()
        };
        assert_eq!(decode(t).unwrap().data, ConstData::I64(vec![-3, 7]));
        let t = TensorProto {
            dims: vec![1],
            data_type: Some(dtype::FLOAT16),
            raw_data: Some(half::f16::from_f32(1.5).to_le_bytes().to_vec()),
            ..Default::default()
        };
        assert_eq!(decode(t).unwrap().data, ConstData::F32(vec![1.5]));
    }

    #[test]
    fn size_mismatches_and_huge_shapes_are_errors() {
        let mut t = encode_f32("w", &[3], &[1.0, 2.0, 3.0]);
        t.dims = vec![4];
        assert!(matches!(decode(t), Err(ImportError::Corrupt(_))));
        let mut t = encode_f32("w", &[3], &[1.0, 2.0, 3.0]);
        t.dims = vec![1 << 30, 1 << 30, 1 << 30];
        assert!(matches!(decode(t), Err(ImportError::Corrupt(_))));
        let mut t = encode_f32("w", &[3], &[1.0, 2.0, 3.0]);
        t.dims = vec![-1];
        assert!(matches!(decode(t), Err(ImportError::Corrupt(_))));
        let mut t = encode_f32("w", &[3], &[1.0, 2.0, 3.0]);
        t.data_location = Some(1);
        assert!(matches!(decode(t), Err(ImportError::Unsupported(_))));
    }
}
