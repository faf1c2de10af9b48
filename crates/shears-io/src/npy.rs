//! NumPy `.npy` files: a validating reader and an atomic writer.
//!
//! Layout: the magic `\x93NUMPY`, a major and a minor version byte, the header length (a
//! little-endian u16 in version 1.0, u32 in 2.0 and 3.0), then the header, a Python dict
//! literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with
//! spaces and a newline, then the raw data. The reader accepts versions 1.0, 2.0 and 3.0, C
//! order and the little-endian element types `<f4`, `<f8`, `<f2` and `|u1` (raw 8-bit
//! pixels), all converted to f32. It refuses Fortran order, big-endian data, object arrays
//! and other types with [`IoError::Unsupported`], and a bad magic, a malformed header or data
//! that is shorter or longer than the shape says with [`IoError::Corrupt`]; every error names
//! the file. The writer writes `<f4` in C order, version 1.0 (2.0 only for a header too long
//! for 1.0), atomically.

use std::path::Path;

use shears_ir::Tensor;

use crate::{write_atomic, IoError};

/// The first six bytes of every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Header lengths are padded so that the data starts at a multiple of this.
const ALIGN: usize = 64;
/// Largest header accepted (numpy itself caps it at 10,000 bytes unless told otherwise).
const MAX_HEADER_LEN: usize = 1 << 20;

/// The element types the reader converts to f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F2,
    F4,
    F8,
    U1,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::U1 => 1,
            Dtype::F2 => 2,
            Dtype::F4 => 4,
            Dtype::F8 => 8,
        }
    }

    /// Parses a `descr` string, or says why it is not supported.
    fn parse(descr: &str) -> Result<Dtype, String> {
        match descr {
            "<f4" => Ok(Dtype::F4),
            "<f8" => Ok(Dtype::F8),
            "<f2" => Ok(Dtype::F2),
            "|u1" | "<u1" | ">u1" | "u1" => Ok(Dtype::U1),
            d if d.starts_with('>') => Err(format!(
                "big-endian dtype {d:?} (save little-endian: arr.astype('<f4'))"
            )),
            d if d.contains('O') => Err(format!(
                "object array (dtype {d:?}); only numeric arrays can be read"
            )),
            d => Err(format!(
                "dtype {d:?} (supported: <f4, <f8, <f2, |u1; convert with arr.astype('<f4'))"
            )),
        }
    }
}

/// The parsed header dict.
#[derive(Debug)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Reads a `.npy` file into an f32 tensor of the file's shape.
///
/// # Errors
/// [`IoError::Io`] when the file cannot be read, [`IoError::Corrupt`] for a file that is not
/// a valid `.npy`, [`IoError::Unsupported`] for a valid one of another layout or type (see
/// the module docs). Every message names the file.
pub fn read_npy(path: &Path) -> Result<Tensor, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    decode(&bytes, path)
}

/// [`read_npy`] on bytes in memory; `origin` names them in errors.
pub fn read_npy_bytes(bytes: &[u8], origin: &str) -> Result<Tensor, IoError> {
    decode(bytes, Path::new(origin))
}

/// Writes `tensor` as a `<f4`, C-order `.npy` file, atomically (temporary file in the same
/// directory, fsync, rename); on error `path` is untouched.
pub fn write_npy(path: &Path, tensor: &Tensor) -> Result<(), IoError> {
    let bytes = npy_bytes(tensor);
    write_atomic(path, |w| w.write_all(&bytes))
}

/// The bytes of `tensor` as a `<f4`, C-order `.npy` file.
pub fn npy_bytes(tensor: &Tensor) -> Vec<u8> {
    let dims: Vec<String> = tensor.shape().iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Version 1.0 has a u16 header length; longer headers need 2.0 (u32).
    let v1 = padded_len(dict.len(), 10) <= usize::from(u16::MAX);
    let prefix = if v1 { 10 } else { 12 };
    let header_len = padded_len(dict.len(), prefix);
    let mut out = Vec::with_capacity(prefix + header_len + 4 * tensor.numel());
    out.extend_from_slice(MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(prefix + header_len - 1, b' ');
    out.push(b'\n');
    for x in tensor.data() {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The header length (dict, padding and newline) that makes `prefix + len` a multiple of
/// [`ALIGN`].
fn padded_len(dict_len: usize, prefix: usize) -> usize {
    (prefix + dict_len + 1).div_ceil(ALIGN) * ALIGN - prefix
}

fn decode(bytes: &[u8], path: &Path) -> Result<Tensor, IoError> {
    let corrupt = |msg: String| IoError::corrupt(path, format!("not a valid .npy file: {msg}"));
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        return Err(corrupt(format!(
            "bad magic {:02x?} (expected \\x93NUMPY)",
            &bytes[..bytes.len().min(6)]
        )));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_size, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => {
            return Err(IoError::unsupported(
                path,
                format!(".npy format version {major}.{minor} (this build reads 1.0, 2.0, 3.0)"),
            ))
        }
    };
    let start = 8 + len_size;
    let len_bytes = bytes
        .get(8..start)
        .ok_or_else(|| corrupt("truncated before the header length".into()))?;
    let header_len = len_bytes
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    if header_len > MAX_HEADER_LEN {
        return Err(corrupt(format!(
            "header of {header_len} bytes (at most {MAX_HEADER_LEN})"
        )));
    }
    let raw = bytes.get(start..start + header_len).ok_or_else(|| {
        corrupt(format!(
            "truncated header: {header_len} bytes announced, {} present",
            bytes.len() - start
        ))
    })?;
    let text = match std::str::from_utf8(raw) {
        Ok(t) if utf8 || t.is_ascii() => t,
        _ => return Err(corrupt("header is not ASCII (UTF-8 in version 3.0)".into())),
    };
    let header = parse_header(text).map_err(|e| corrupt(format!("header {text:?}: {e}")))?;
    let dtype = Dtype::parse(&header.descr).map_err(|e| IoError::unsupported(path, e))?;
    if header.fortran_order && header.shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(IoError::unsupported(
            path,
            "Fortran-order array (save C order: np.ascontiguousarray(arr))",
        ));
    }
    let numel = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| corrupt(format!("shape {:?} overflows", header.shape)))?;
    let data = &bytes[start + header_len..];
    let expected = numel.checked_mul(dtype.size());
    if expected != Some(data.len()) {
        let what = if expected.is_some_and(|e| data.len() < e) {
            "truncated data"
        } else {
            "data of the wrong length"
        };
        return Err(corrupt(format!(
            "{what}: shape {:?} of {} needs {} bytes, the file holds {}",
            header.shape,
            header.descr,
            expected.map_or("too many".into(), |e| e.to_string()),
            data.len()
        )));
    }
    let values: Vec<f32> = match dtype {
        Dtype::F4 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F8 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::F2 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::U1 => data.iter().map(|&b| f32::from(b)).collect(),
    };
    Ok(Tensor::new(header.shape, values).expect("length checked against the shape above"))
}

/// A token of the header's Python literal.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parses the header dict: exactly the keys `descr`, `fortran_order` and `shape`.
fn parse_header(text: &str) -> Result<Header, String> {
    let mut p = Parser {
        s: text.trim_end().as_bytes(),
        i: 0,
    };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let Value::Str(key) = p.value()? else {
            return Err("a key is not a string".into());
        };
        p.skip_ws();
        p.expect(b':')?;
        let v = p.value()?;
        match (key.as_str(), v) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            (k @ ("descr" | "fortran_order" | "shape"), v) => {
                return Err(format!("key {k:?} has an unexpected value {v:?}"))
            }
            (k, _) => return Err(format!("unexpected key {k:?}")),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.skip_ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err("text after the closing brace".into());
    }
    Ok(Header {
        descr: descr.ok_or("no 'descr' key")?,
        fortran_order: fortran.ok_or("no 'fortran_order' key")?,
        shape: shape.ok_or("no 'shape' key")?,
    })
}

/// A cursor over the header bytes.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.s.get(self.i) == Some(&c);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_ws();
        let rest = &self.s[self.i..];
        match rest.first() {
            Some(&q @ (b'\'' | b'"')) => {
                let end = rest[1..]
                    .iter()
                    .position(|&c| c == q)
                    .ok_or("unterminated string")?;
                let s = String::from_utf8_lossy(&rest[1..1 + end]).into_owned();
                self.i += end + 2;
                Ok(Value::Str(s))
            }
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(b')') {
                        return Ok(Value::Tuple(dims));
                    }
                    let n = self.s[self.i..]
                        .iter()
                        .take_while(|c| c.is_ascii_digit())
                        .count();
                    if n == 0 {
                        return Err(format!("expected a dimension at byte {}", self.i));
                    }
                    let digits =
                        std::str::from_utf8(&self.s[self.i..self.i + n]).expect("ASCII digits");
                    dims.push(digits.parse().map_err(|_| format!("dimension {digits}"))?);
                    self.i += n;
                    self.skip_ws();
                    if !self.eat(b',') {
                        self.skip_ws();
                        self.expect(b')')?;
                        return Ok(Value::Tuple(dims));
                    }
                }
            }
            _ if rest.starts_with(b"True") => {
                self.i += 4;
                Ok(Value::Bool(true))
            }
            _ if rest.starts_with(b"False") => {
                self.i += 5;
                Ok(Value::Bool(false))
            }
            _ => Err(format!("unexpected value at byte {}", self.i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_as_numpy_writes_them() {
        let h = parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }   \n")
            .unwrap();
        assert_eq!((h.descr.as_str(), h.fortran_order), ("<f4", false));
        assert_eq!(h.shape, vec![2, 3]);
        let h =
            parse_header("{\"shape\": (5,), \"descr\": \"<f8\", \"fortran_order\": True}").unwrap();
        assert_eq!((h.shape, h.fortran_order), (vec![5], true));
        assert_eq!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': ()}")
                .unwrap()
                .shape,
            Vec::<usize>::new()
        );
        assert!(parse_header("{'descr': '<f4', 'shape': (2,)}").is_err());
        assert!(parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}").is_err());
        assert!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}")
                .is_err()
        );
    }

    #[test]
    fn written_headers_align_the_data_to_64_bytes() {
        for shape in [vec![], vec![7], vec![2, 3, 4, 5], vec![123_456_789, 0]] {
            let b = npy_bytes(&Tensor::zeros(&shape));
            let header_len = usize::from(u16::from_le_bytes([b[8], b[9]]));
            assert_eq!((10 + header_len) % ALIGN, 0, "{shape:?}");
            assert_eq!(b[10 + header_len - 1], b'\n');
        }
    }
}
