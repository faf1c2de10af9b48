//! A validating reader and an atomic writer for the safetensors format.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}`),
//! then the data buffer; offsets are relative to the start of the buffer. The reader checks
//! everything the reference implementation checks (header bounds, JSON, dtype sizes, offsets
//! that tile the buffer exactly with no gap or overlap) and converts every tensor to f32.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use shears_ir::{Tensor, Weights};

use crate::{write_atomic, IoError};

/// Largest JSON header accepted, as in the reference implementation.
const MAX_HEADER_LEN: u64 = 100_000_000;

/// The contents of a safetensors file, every tensor converted to f32.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SafeTensors {
    /// The tensors by name.
    pub tensors: Weights,
    /// The `__metadata__` string map (empty when the file has none).
    pub metadata: BTreeMap<String, String>,
}

/// Element types of the format that convert to f32 (the integer ones only when every value is
/// exactly representable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F64,
    F32,
    F16,
    Bf16,
    I64,
    I32,
    I16,
    I8,
    U16,
    U8,
    Bool,
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F64" => Dtype::F64,
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::Bf16,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "I16" => Dtype::I16,
            "I8" => Dtype::I8,
            "U16" => Dtype::U16,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::Bf16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }
}

#[derive(Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// The header's top-level entries in file order, rejecting duplicate keys (serde_json alone
/// would silently keep the last one).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut seen = HashSet::new();
                let mut v = Vec::new();
                while let Some((k, val)) = map.next_entry::<String, serde_json::Value>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    v.push((k, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads and validates a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<SafeTensors, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    parse(&bytes, path)
}

/// Parses safetensors data held in memory; `origin` names it in errors.
///
/// ```
/// let header = br#"{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
/// let mut file = (header.len() as u64).to_le_bytes().to_vec();
/// file.extend_from_slice(header);
/// file.extend_from_slice(&[0x00, 0x3c, 0x00, 0xc0]); // f16 1.0 and -2.0, little-endian
/// let st = shears_io::read_safetensors_bytes(&file, "mem").unwrap();
/// assert_eq!(st.tensors.get("w").unwrap().data(), [1.0, -2.0]);
///
/// file.pop();
/// let err = shears_io::read_safetensors_bytes(&file, "mem").unwrap_err();
/// assert!(err.to_string().starts_with("mem: corrupt file: tensor \"w\""), "{err}");
/// ```
pub fn read_safetensors_bytes(bytes: &[u8], origin: &str) -> Result<SafeTensors, IoError> {
    parse(bytes, Path::new(origin))
}

fn parse(bytes: &[u8], path: &Path) -> Result<SafeTensors, IoError> {
    let corrupt = |msg: String| IoError::corrupt(path, msg);
    if bytes.len() < 8 {
        return Err(corrupt(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("slice of 8 bytes"));
    let avail = (bytes.len() - 8) as u64;
    if n > avail || n > MAX_HEADER_LEN {
        return Err(corrupt(format!(
            "header length {n} at byte 0 exceeds the {avail} bytes after it (or the {MAX_HEADER_LEN} limit)"
        )));
    }
    let n = n as usize;
    let header = &bytes[8..8 + n];
    let buffer = &bytes[8 + n..];
    if header.first() != Some(&b'{') {
        return Err(corrupt("header at byte 8 does not start with '{'".into()));
    }
    let text = std::str::from_utf8(header).map_err(|e| {
        corrupt(format!(
            "header is not utf-8 (byte {})",
            8 + e.valid_up_to()
        ))
    })?;
    let Entries(entries) = serde_json::from_str(text).map_err(|e| {
        corrupt(format!(
            "header json (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })?;

    let mut metadata = BTreeMap::new();
    let mut infos = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            let serde_json::Value::Object(m) = value else {
                return Err(corrupt("__metadata__ is not a json object".into()));
            };
            for (k, v) in m {
                let serde_json::Value::String(s) = v else {
                    return Err(corrupt(format!(
                        "__metadata__ value of {k:?} is not a string"
                    )));
                };
                metadata.insert(k, s);
            }
            continue;
        }
        let info: TensorInfo = serde_json::from_value(value)
            .map_err(|e| corrupt(format!("tensor {name:?}: bad header entry: {e}")))?;
        let dtype = Dtype::parse(&info.dtype).ok_or_else(|| IoError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.clone(),
            dtype: info.dtype.clone(),
        })?;
        let [begin, end] = info.data_offsets;
        let nbytes = info
            .shape
            .iter()
            .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| corrupt(format!("tensor {name:?}: shape {:?} overflows", info.shape)))?;
        if begin > end || end > buffer.len() as u64 {
            return Err(corrupt(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] outside the {}-byte data buffer",
                buffer.len()
            )));
        }
        if end - begin != nbytes as u64 {
            return Err(corrupt(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] span {} bytes but {} {:?} needs {nbytes}",
                end - begin,
                info.dtype,
                info.shape
            )));
        }
        infos.push((name, dtype, info.shape, begin as usize, end as usize));
    }

    // The reference implementation requires the tensors to tile the buffer exactly.
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by_key(|&i| (infos[i].3, infos[i].4));
    let mut cursor = 0usize;
    for &i in &order {
        let (name, _, _, begin, end) = &infos[i];
        if *begin != cursor {
            let what = if *begin < cursor {
                "overlaps the previous tensor"
            } else {
                "leaves a gap"
            };
            return Err(corrupt(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] {what} (expected start {cursor})"
            )));
        }
        cursor = *end;
    }
    if cursor != buffer.len() {
        return Err(corrupt(format!(
            "data buffer is {} bytes but the tensors cover {cursor} (bytes {} to {} are unaccounted for)",
            buffer.len(),
            8 + n + cursor,
            bytes.len()
        )));
    }

    let mut tensors = Weights::new();
    for (name, dtype, shape, begin, end) in infos {
        let data =
            convert(dtype, &buffer[begin..end]).map_err(|why| IoError::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: name.clone(),
                dtype: why,
            })?;
        let t = Tensor::new(shape, data).expect("byte length checked against dtype and shape");
        tensors.insert(name, t);
    }
    Ok(SafeTensors { tensors, metadata })
}

/// Converts little-endian elements to f32; integers only when exact.
fn convert(dtype: Dtype, b: &[u8]) -> Result<Vec<f32>, String> {
    fn exact(v: i128, dt: &str) -> Result<f32, String> {
        let f = v as f32;
        if f as i128 == v {
            Ok(f)
        } else {
            Err(format!(
                "{dt} (value {v} is not exactly representable as f32)"
            ))
        }
    }
    Ok(match dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::Bf16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| exact(i64::from_le_bytes(c.try_into().unwrap()).into(), "I64"))
            .collect::<Result<_, _>>()?,
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| exact(i32::from_le_bytes(c.try_into().unwrap()).into(), "I32"))
            .collect::<Result<_, _>>()?,
        Dtype::I16 => b
            .chunks_exact(2)
            .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::U16 => b
            .chunks_exact(2)
            .map(|c| f32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::I8 => b.iter().map(|&x| f32::from(x as i8)).collect(),
        Dtype::U8 => b.iter().map(|&x| f32::from(x)).collect(),
        Dtype::Bool => b
            .iter()
            .map(|&x| match x {
                0 => Ok(0.0),
                1 => Ok(1.0),
                v => Err(format!("BOOL (byte value {v} is neither 0 nor 1)")),
            })
            .collect::<Result<_, _>>()?,
    })
}

fn header_json(weights: &Weights, metadata: &BTreeMap<String, String>) -> String {
    let js = |s: &str| serde_json::to_string(s).expect("string serialisation cannot fail");
    let mut h = String::from("{");
    let mut first = true;
    let mut sep = |h: &mut String| {
        if !first {
            h.push(',');
        }
        first = false;
    };
    if !metadata.is_empty() {
        sep(&mut h);
        h.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                h.push(',');
            }
            h.push_str(&js(k));
            h.push(':');
            h.push_str(&js(v));
        }
        h.push('}');
    }
    let mut offset = 0usize;
    for (name, t) in weights.iter() {
        sep(&mut h);
        let end = offset + t.numel() * 4;
        let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        h.push_str(&format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            js(name),
            shape.join(",")
        ));
        offset = end;
    }
    h.push('}');
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    h
}

/// Writes `weights` and `metadata` as a safetensors file.
///
/// Writes atomically ([`crate::write_atomic`]: a temporary file in the same directory, fsync,
/// rename; a `path` that exists and is not a regular file is refused). Tensors sorted by name,
/// F32 little-endian, header padded to 8 bytes like the reference implementation. On error the temporary file is removed and `path` is untouched.
pub fn write_safetensors(
    path: &Path,
    weights: &Weights,
    metadata: &BTreeMap<String, String>,
) -> Result<(), IoError> {
    if weights.contains("__metadata__") {
        return Err(IoError::unsupported(
            path,
            "a tensor named \"__metadata__\" (reserved key)",
        ));
    }
    let header = header_json(weights, metadata);
    write_atomic(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        let mut buf = Vec::with_capacity(1 << 16);
        for (_, t) in weights.iter() {
            for chunk in t.data().chunks(1 << 14) {
                buf.clear();
                for x in chunk {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
}
