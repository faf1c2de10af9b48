//! PyTorch checkpoints (`torch.save` files), zip and legacy, through the restricted unpickler.
//!
//! **Zip** (PyTorch 1.6 and later): `<prefix>/data.pkl` holds the object; every storage it
//! references through a persistent id `('storage', torch.FloatStorage, key, location, numel)`
//! lives raw in `<prefix>/data/<key>`; `<prefix>/byteorder` says `little` or `big`.
//!
//! **Legacy** (before 1.6): one file holding, back to back, a pickle of the magic number
//! `0x1950a86a20f9469cfc6c`, one of the protocol version (1001), one of `sys_info`, the object
//! pickle (persistent ids `('storage', type, root_key, location, numel, view_metadata)`), a
//! pickle of the list of storage keys, then for each key in that order an 8-byte
//! little-endian element count followed by the raw elements.
//!
//! Tensors are rebuilt from `(storage, storage_offset, size, stride)`, which may describe any
//! strided view (it is materialised in row-major order), and converted to f32. Only float
//! tensors are loaded; integer and boolean ones (such as `num_batches_tracked`) are skipped
//! with a note. Every size and offset is checked against the bytes actually present, and the
//! elements materialised in total are capped at four per byte of input, so no input can make
//! the reader allocate far beyond the file's own size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Cursor, Read};
use std::path::Path;
use std::rc::Rc;

use shears_ir::{Tensor, Weights};

use crate::pickle::{unpickle, Arena, Obj, PickleError, StorageDtype, TensorRef, Value};
use crate::IoError;

/// The number a legacy `torch.save` file starts with.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The only legacy protocol version there is.
const LEGACY_PROTOCOL: i128 = 1001;
/// Keys under which training scripts commonly nest the state dict, in order of preference.
const STATE_DICT_KEYS: [&str; 4] = ["state_dict", "model_state_dict", "model", "net"];
/// Materialised elements allowed per byte of input (a zip's decompressed size counts too).
const ELEMENTS_PER_BYTE: u64 = 4;
/// Decompressed bytes a zip archive may expand to, per byte of archive.
const ZIP_EXPANSION: u64 = 64;

/// Options for [`read_pytorch`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PthOptions {
    /// The top-level key holding the state dict. `None` (the default) tries the whole object,
    /// then `state_dict`, `model_state_dict`, `model` and `net`.
    pub key: Option<String>,
}

impl PthOptions {
    /// Default options: find the state dict automatically.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the state dict from the top-level entry `key`.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// The float tensors of a checkpoint's state dict, and what else it held.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PthCheckpoint {
    /// Float tensors by state-dict key, converted to f32 (names exactly as in the file).
    pub tensors: Weights,
    /// State-dict entries not loaded, with the reason (integer tensors, non-tensor values).
    pub skipped: Vec<(String, String)>,
    /// The other top-level entries beside the state dict, as text (e.g. `best_prec1` →
    /// `91.78000183105469`; containers are described, not expanded).
    pub extra: BTreeMap<String, String>,
}

/// Reads a `torch.save` file (zip or legacy format) without executing any of its code.
///
/// Finds the state dict: the top-level dict when it holds tensors itself, or the dict under
/// `state_dict` / `model` / `model_state_dict` / `net` (or under [`PthOptions::key`]).
/// A pickle that names any Python global outside the tensor-rebuilding allow-list fails with
/// [`IoError::UnsafePickle`]; malformed files fail with [`IoError::Corrupt`].
pub fn read_pytorch(path: &Path, opts: &PthOptions) -> Result<PthCheckpoint, IoError> {
    let bytes = std::fs::read(path).map_err(|e| IoError::io(path, e))?;
    parse(&bytes, path, opts)
}

/// [`read_pytorch`] on bytes held in memory; `origin` names them in errors.
pub fn read_pytorch_bytes(
    bytes: &[u8],
    origin: &str,
    opts: &PthOptions,
) -> Result<PthCheckpoint, IoError> {
    parse(bytes, Path::new(origin), opts)
}

fn parse(bytes: &[u8], path: &Path, opts: &PthOptions) -> Result<PthCheckpoint, IoError> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes, path, opts)
    } else if bytes.first() == Some(&0x80) {
        read_legacy(bytes, path, opts)
    } else {
        Err(IoError::corrupt(
            path,
            format!(
                "not a torch.save file: starts with {:02x?}, neither a zip archive nor a pickle",
                &bytes[..bytes.len().min(4)]
            ),
        ))
    }
}

fn pickle_error(path: &Path, e: PickleError, entry: Option<&str>) -> IoError {
    match e {
        PickleError::Corrupt { offset, msg } => {
            let at = match entry {
                Some(name) => format!("{name} at byte {offset}"),
                None => format!("at byte {offset}"),
            };
            IoError::corrupt(path, format!("{at}: {msg}"))
        }
        PickleError::Unsafe(global) => IoError::UnsafePickle {
            path: path.to_path_buf(),
            global,
        },
        PickleError::Unsupported(what) => IoError::unsupported(path, format!("unsupported {what}")),
    }
}

/// Storages by key: dtype and element count, checked consistent across references.
fn storage_registry(
    arena: &Arena,
    ids: impl Iterator<Item = usize>,
    path: &Path,
) -> Result<HashMap<Rc<str>, (StorageDtype, u64)>, IoError> {
    let mut reg: HashMap<Rc<str>, (StorageDtype, u64)> = HashMap::new();
    for id in ids {
        let Obj::Storage(s) = arena.get(id) else {
            continue;
        };
        match reg.get(&s.key) {
            Some((d, n)) if *d != s.dtype || *n != s.numel => {
                return Err(IoError::corrupt(
                    path,
                    format!(
                        "storage {:?} is referenced as {} x {} and as {} x {}",
                        s.key,
                        n,
                        d.name(),
                        s.numel,
                        s.dtype.name()
                    ),
                ))
            }
            Some(_) => {}
            None => {
                reg.insert(s.key.clone(), (s.dtype.clone(), s.numel));
            }
        }
    }
    Ok(reg)
}

/// The state dict's entries and the other top-level entries, as chosen by `opts`.
struct Selected {
    entries: Vec<(Value, Value)>,
    extra: BTreeMap<String, String>,
}

fn select(top: &Value, arena: &Arena, opts: &PthOptions, path: &Path) -> Result<Selected, IoError> {
    let Some(Obj::Dict(d)) = arena.obj(top) else {
        return Err(IoError::unsupported(
            path,
            format!(
                "top-level object {} is not a dict of tensors",
                arena.describe(top)
            ),
        ));
    };
    let holds_tensor = |v: &Value| match arena.obj(v) {
        Some(Obj::Dict(d)) => d
            .items()
            .iter()
            .any(|(_, v)| matches!(arena.obj(v), Some(Obj::Tensor(_)))),
        _ => false,
    };
    let chosen: Option<&str> = match &opts.key {
        Some(k) => match d.get_str(k) {
            Some(v) if matches!(arena.obj(v), Some(Obj::Dict(_))) => Some(k.as_str()),
            _ => {
                return Err(IoError::unsupported(
                    path,
                    format!(
                        "no dict under top-level key {k:?} (keys: {})",
                        key_list(d.items(), arena)
                    ),
                ))
            }
        },
        None if holds_tensor(top) => None,
        None => match STATE_DICT_KEYS
            .iter()
            .find(|k| d.get_str(k).is_some_and(holds_tensor))
        {
            Some(k) => Some(*k),
            None => {
                return Err(IoError::unsupported(
                    path,
                    format!(
                        "no state dict of tensors found (top-level keys: {})",
                        key_list(d.items(), arena)
                    ),
                ))
            }
        },
    };
    let Some(k) = chosen else {
        return Ok(Selected {
            entries: d.items().to_vec(),
            extra: BTreeMap::new(),
        });
    };
    let Some(Obj::Dict(sd)) = d.get_str(k).and_then(|v| arena.obj(v)) else {
        unreachable!("the chosen key holds a dict: checked above");
    };
    let extra = d
        .items()
        .iter()
        .filter_map(|(key, v)| match key {
            Value::Str(s) if &**s != k => Some((s.to_string(), arena.describe(v))),
            _ => None,
        })
        .collect();
    Ok(Selected {
        entries: sd.items().to_vec(),
        extra,
    })
}

fn key_list(items: &[(Value, Value)], arena: &Arena) -> String {
    let mut keys: Vec<String> = items
        .iter()
        .take(10)
        .map(|(k, _)| arena.describe(k))
        .collect();
    if items.len() > 10 {
        keys.push("...".into());
    }
    keys.join(", ")
}

/// Rebuilds the state dict's float tensors from the storages' bytes.
fn materialize(
    sel: Selected,
    arena: &Arena,
    storages: &HashMap<Rc<str>, &[u8]>,
    big_endian: bool,
    mut budget: u64,
    path: &Path,
) -> Result<PthCheckpoint, IoError> {
    let mut out = PthCheckpoint {
        extra: sel.extra,
        ..Default::default()
    };
    for (k, v) in &sel.entries {
        let Value::Str(name) = k else {
            out.skipped
                .push((arena.describe(k), "state-dict key is not a string".into()));
            continue;
        };
        let Some(Obj::Tensor(t)) = arena.obj(v) else {
            out.skipped.push((
                name.to_string(),
                format!("not a tensor: {}", arena.describe(v)),
            ));
            continue;
        };
        match rebuild(name, t, arena, storages, big_endian, &mut budget, path)? {
            Ok(tensor) => {
                out.tensors.insert(name.to_string(), tensor);
            }
            Err(why) => out.skipped.push((name.to_string(), why)),
        }
    }
    Ok(out)
}

/// One tensor: `Ok(Ok(t))`, `Ok(Err(why))` when deliberately skipped, `Err` when corrupt.
fn rebuild(
    name: &str,
    t: &TensorRef,
    arena: &Arena,
    storages: &HashMap<Rc<str>, &[u8]>,
    big_endian: bool,
    budget: &mut u64,
    path: &Path,
) -> Result<Result<Tensor, String>, IoError> {
    let bad = |msg: String| IoError::corrupt(path, format!("tensor {name:?}: {msg}"));
    let Obj::Storage(s) = arena.get(t.storage) else {
        unreachable!("tensor refs point at storages: checked when the pickle built them");
    };
    let dtype = match (&t.dtype, &s.dtype) {
        (None, d) => d.clone(),
        (Some(d), StorageDtype::Untyped) => d.clone(),
        (Some(d), sd) if d == sd => d.clone(),
        (Some(d), sd) => {
            return Err(bad(format!(
                "dtype {} on a {} storage",
                d.name(),
                sd.name()
            )));
        }
    };
    if !dtype.is_float() {
        return Ok(Err(format!(
            "{} tensor (only floating-point tensors are loaded)",
            dtype.name()
        )));
    }
    let Some(bytes) = storages.get(&s.key) else {
        return Err(bad(format!("storage {:?} is missing from the file", s.key)));
    };
    let es = dtype.size();
    if bytes.len() % es != 0 {
        return Err(bad(format!(
            "storage {:?} holds {} bytes, not a whole number of {} elements",
            s.key,
            bytes.len(),
            dtype.name()
        )));
    }
    let root = (bytes.len() / es) as u64;
    let (base, avail) = match s.view {
        None => (0, root),
        Some((off, size)) if off.checked_add(size).is_some_and(|end| end <= root) => (off, size),
        Some((off, size)) => {
            return Err(bad(format!(
                "storage view [{off}, +{size}) exceeds the {root}-element storage {:?}",
                s.key
            )))
        }
    };
    if t.size.len() != t.stride.len() {
        return Err(bad(format!(
            "size {:?} and stride {:?} differ in rank",
            t.size, t.stride
        )));
    }
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| bad(format!("dimension {v} too large")));
    let shape: Vec<usize> = t
        .size
        .iter()
        .map(|&v| to_usize(v))
        .collect::<Result<_, _>>()?;
    let numel = t.size.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let numel = numel.ok_or_else(|| bad(format!("size {:?} overflows", t.size)))?;
    if numel == 0 {
        return Ok(Ok(
            Tensor::new(shape, Vec::new()).expect("zero elements for a zero-sized shape")
        ));
    }
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&n, &st)| {
            (n - 1).checked_mul(st).and_then(|x| a.checked_add(x))
        });
    match last {
        Some(last) if last < avail => {}
        _ => {
            return Err(bad(format!(
                "offset {} size {:?} stride {:?} reach beyond the {avail}-element storage {:?}",
                t.offset, t.size, t.stride, s.key
            )))
        }
    }
    if numel > *budget {
        return Err(bad(format!(
            "{numel} elements exceed what is left of the {ELEMENTS_PER_BYTE}-elements-per-input-byte budget \
             ({} left); broadcast or heavily shared storages?",
            *budget
        )));
    }
    *budget -= numel;
    let start = (base + t.offset) as usize;
    let data = gather(&bytes[..], es, start, &shape, &t.stride, &dtype, big_endian);
    Ok(Ok(
        Tensor::new(shape, data).expect("gather yields one element per index")
    ))
}

/// Reads elements `start + sum(i_k * stride_k)` in row-major order of `shape`. All indices
/// were checked to lie within `bytes`.
fn gather(
    bytes: &[u8],
    es: usize,
    start: usize,
    shape: &[usize],
    stride: &[u64],
    dtype: &StorageDtype,
    big_endian: bool,
) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    let elem = |i: usize| decode(&bytes[i * es..(i + 1) * es], dtype, big_endian);
    let mut contiguous = true;
    let mut expect = 1u64;
    for (&n, &st) in shape.iter().zip(stride).rev() {
        if n != 1 && st != expect {
            contiguous = false;
        }
        expect *= n as u64;
    }
    if contiguous {
        return (start..start + numel).map(elem).collect();
    }
    // A size-1 axis never moves, whatever its stride says; with that, every step below stays
    // within twice the checked extent of the view.
    let stride: Vec<usize> = stride
        .iter()
        .zip(shape)
        .map(|(&s, &n)| if n == 1 { 0 } else { s as usize })
        .collect();
    let mut idx = vec![0usize; shape.len()];
    let mut pos = start;
    let mut out = Vec::with_capacity(numel);
    for _ in 0..numel {
        out.push(elem(pos));
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            pos += stride[d];
            if idx[d] < shape[d] {
                break;
            }
            pos -= stride[d] * shape[d];
            idx[d] = 0;
        }
    }
    out
}

fn decode(b: &[u8], dtype: &StorageDtype, big_endian: bool) -> f32 {
    let mut buf = [0u8; 8];
    buf[..b.len()].copy_from_slice(b);
    if big_endian {
        buf[..b.len()].reverse();
    }
    match dtype {
        StorageDtype::F32 => f32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
        StorageDtype::F64 => f64::from_le_bytes(buf) as f32,
        StorageDtype::F16 => half::f16::from_bits(u16::from_le_bytes([buf[0], buf[1]])).to_f32(),
        StorageDtype::Bf16 => half::bf16::from_bits(u16::from_le_bytes([buf[0], buf[1]])).to_f32(),
        _ => unreachable!("only float dtypes are decoded"),
    }
}

fn read_legacy(bytes: &[u8], path: &Path, opts: &PthOptions) -> Result<PthCheckpoint, IoError> {
    let perr = |e| pickle_error(path, e, None);
    let (magic, _, p) = unpickle(bytes, 0, 0).map_err(perr)?;
    if magic != Value::Int(LEGACY_MAGIC) {
        return Err(IoError::corrupt(
            path,
            "not a torch.save file: the first pickle is not the legacy magic number",
        ));
    }
    let (proto, _, p) = unpickle(bytes, p, 0).map_err(perr)?;
    if proto != Value::Int(LEGACY_PROTOCOL) {
        return Err(IoError::unsupported(
            path,
            format!("unsupported legacy torch.save protocol version {proto:?} (expected 1001)"),
        ));
    }
    let (sys_info, sys_arena, p) = unpickle(bytes, p, 0).map_err(perr)?;
    let big_endian = match sys_arena.obj(&sys_info) {
        Some(Obj::Dict(d)) => matches!(d.get_str("little_endian"), Some(Value::Bool(false))),
        _ => {
            return Err(IoError::corrupt(
                path,
                "legacy sys_info pickle is not a dict",
            ))
        }
    };
    let obj_start = p;
    let (top, arena, p) = unpickle(bytes, p, 0).map_err(perr)?;
    let keys_start = p;
    let (keys, keys_arena, mut p) = unpickle(bytes, p, 0).map_err(perr)?;
    let Some(Obj::List(keys)) = keys_arena.obj(&keys) else {
        return Err(IoError::corrupt(
            path,
            format!("storage key list at byte {keys_start} is not a list"),
        ));
    };
    let reg = storage_registry(&arena, 0..arena.len(), path)?;
    let mut storages: HashMap<Rc<str>, &[u8]> = HashMap::new();
    for k in keys {
        let Value::Str(key) = k else {
            return Err(IoError::corrupt(
                path,
                format!("storage key list at byte {keys_start} holds a non-string"),
            ));
        };
        let Some((dtype, numel)) = reg.get(key) else {
            return Err(IoError::corrupt(
                path,
                format!("storage {key:?} in the key list is not referenced by the object pickle at byte {obj_start}"),
            ));
        };
        if storages.contains_key(key) {
            return Err(IoError::corrupt(
                path,
                format!("storage {key:?} is listed twice"),
            ));
        }
        let Some(head) = bytes.get(p..p + 8) else {
            return Err(IoError::corrupt(
                path,
                format!("truncated: storage {key:?} element count expected at byte {p}, file ends at {}", bytes.len()),
            ));
        };
        let count = u64::from_le_bytes(head.try_into().expect("8 bytes"));
        if count != *numel {
            return Err(IoError::corrupt(
                path,
                format!(
                    "storage {key:?} at byte {p} holds {count} elements, the pickle says {numel}"
                ),
            ));
        }
        p += 8;
        let nbytes = count
            .checked_mul(dtype.size() as u64)
            .filter(|&n| n <= (bytes.len() - p) as u64)
            .ok_or_else(|| {
                IoError::corrupt(
                    path,
                    format!(
                        "truncated: storage {key:?} needs {count} x {} bytes at byte {p}, {} left",
                        dtype.size(),
                        bytes.len() - p
                    ),
                )
            })? as usize;
        storages.insert(key.clone(), &bytes[p..p + nbytes]);
        p += nbytes;
    }
    let sel = select(&top, &arena, opts, path)?;
    let budget = ELEMENTS_PER_BYTE * bytes.len() as u64;
    materialize(sel, &arena, &storages, big_endian, budget, path)
}

/// Reads a zip entry completely, refusing to decompress beyond `budget` bytes in total.
fn read_entry(
    ar: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    budget: &mut u64,
    path: &Path,
) -> Result<Vec<u8>, IoError> {
    let mut f = ar.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => {
            IoError::corrupt(path, format!("zip entry {name} is missing"))
        }
        e => IoError::corrupt(path, format!("zip entry {name}: {e}")),
    })?;
    let declared = f.size();
    if declared > *budget {
        return Err(IoError::corrupt(
            path,
            format!("zip entry {name} declares {declared} bytes, beyond the {budget} bytes left to decompress"),
        ));
    }
    let mut v = Vec::new();
    // Reading one byte past the declared size reaches the entry's end, where the CRC is checked.
    (&mut f)
        .take(declared + 1)
        .read_to_end(&mut v)
        .map_err(|e| IoError::corrupt(path, format!("zip entry {name}: {e}")))?;
    if v.len() as u64 != declared {
        return Err(IoError::corrupt(
            path,
            format!(
                "zip entry {name} holds {} bytes, its header says {declared}",
                v.len()
            ),
        ));
    }
    *budget -= declared;
    Ok(v)
}

fn read_zip(bytes: &[u8], path: &Path, opts: &PthOptions) -> Result<PthCheckpoint, IoError> {
    let mut ar = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| IoError::corrupt(path, format!("zip archive: {e}")))?;
    let pkl_name = ar
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .min()
        .map(str::to_string)
        .ok_or_else(|| {
            IoError::corrupt(
                path,
                "zip archive has no <name>/data.pkl: not a torch.save file",
            )
        })?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let mut budget = ZIP_EXPANSION * bytes.len() as u64;
    let order_name = format!("{prefix}byteorder");
    let big_endian = if ar.index_for_name(&order_name).is_some() {
        match String::from_utf8_lossy(&read_entry(&mut ar, &order_name, &mut budget, path)?).trim()
        {
            "little" => false,
            "big" => true,
            other => {
                return Err(IoError::corrupt(
                    path,
                    format!("{order_name} says {other:?}, not little or big"),
                ))
            }
        }
    } else {
        false
    };
    let pkl = read_entry(&mut ar, &pkl_name, &mut budget, path)?;
    let (top, arena, _) =
        unpickle(&pkl, 0, 0).map_err(|e| pickle_error(path, e, Some(&pkl_name)))?;
    let sel = select(&top, &arena, opts, path)?;
    let reg = storage_registry(&arena, 0..arena.len(), path)?;

    let mut needed: Vec<Rc<str>> = Vec::new();
    let mut seen = HashSet::new();
    for (_, v) in &sel.entries {
        if let Some(Obj::Tensor(t)) = arena.obj(v) {
            if let Obj::Storage(s) = arena.get(t.storage) {
                if seen.insert(s.key.clone()) {
                    needed.push(s.key.clone());
                }
            }
        }
    }
    let mut owned: Vec<(Rc<str>, Vec<u8>)> = Vec::with_capacity(needed.len());
    let mut total = 0u64;
    for key in needed {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            || &*key == ".."
        {
            return Err(IoError::corrupt(
                path,
                format!("storage key {key:?} is not a plain name"),
            ));
        }
        let (dtype, numel) = &reg[&key];
        let name = format!("{prefix}data/{key}");
        let data = read_entry(&mut ar, &name, &mut budget, path)?;
        let want = numel.checked_mul(dtype.size() as u64);
        if want != Some(data.len() as u64) {
            return Err(IoError::corrupt(
                path,
                format!(
                    "zip entry {name} holds {} bytes, the pickle says {numel} x {}",
                    data.len(),
                    dtype.name()
                ),
            ));
        }
        total += data.len() as u64;
        owned.push((key, data));
    }
    let storages: HashMap<Rc<str>, &[u8]> = owned
        .iter()
        .map(|(k, v)| (k.clone(), v.as_slice()))
        .collect();
    let budget = ELEMENTS_PER_BYTE * (bytes.len() as u64).max(total);
    materialize(sel, &arena, &storages, big_endian, budget, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal pickle assembler for hand-made legacy checkpoints.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn s(&mut self, s: &str) -> &mut Self {
            self.0.push(b'X');
            self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.op(s.as_bytes())
        }
        fn int(&mut self, i: i64) -> &mut Self {
            self.op(&[0x8a, 8]).op(&i.to_le_bytes())
        }
        fn ints(&mut self, v: &[i64]) -> &mut Self {
            self.op(b"(");
            v.iter().for_each(|&i| {
                self.int(i);
            });
            self.op(b"t")
        }
        /// `name: _rebuild_tensor(storage(key, numel, view), offset, size, stride)`.
        fn tensor(
            &mut self,
            name: &str,
            key: &str,
            numel: i64,
            view: Option<(i64, i64)>,
            offset: i64,
            size: &[i64],
            stride: &[i64],
        ) -> &mut Self {
            self.s(name)
                .op(b"ctorch._utils\n_rebuild_tensor\n(")
                .op(b"(")
                .s("storage");
            self.op(b"ctorch\nFloatStorage\n")
                .s(key)
                .s("cpu")
                .int(numel);
            match view {
                None => self.op(b"N"),
                Some((o, n)) => self.op(b"(").s("view").int(o).int(n).op(b"t"),
            };
            self.op(b"tQ").int(offset).ints(size).ints(stride).op(b"tR")
        }
    }

    /// A legacy file: header pickles, `{entries}`, the key list, then each storage.
    fn legacy(little: bool, entries: impl FnOnce(&mut P), storages: &[(&str, &[f32])]) -> Vec<u8> {
        let mut p = P::default();
        p.op(b"\x80\x02\x8a\x0a")
            .op(&LEGACY_MAGIC.to_le_bytes()[..10])
            .op(b".");
        p.op(b"\x80\x02M\xe9\x03.");
        p.op(b"\x80\x02}")
            .s("little_endian")
            .op(if little { b"\x88s." } else { b"\x89s." });
        p.op(b"\x80\x02}(");
        entries(&mut p);
        p.op(b"u.\x80\x02(");
        storages.iter().for_each(|(k, _)| {
            p.s(k);
        });
        p.op(b"l.");
        for (_, data) in storages {
            p.op(&(data.len() as u64).to_le_bytes());
            for x in *data {
                let b = if little {
                    x.to_le_bytes()
                } else {
                    x.to_be_bytes()
                };
                p.op(&b);
            }
        }
        p.0
    }

    fn read(bytes: &[u8]) -> Result<PthCheckpoint, IoError> {
        read_pytorch_bytes(bytes, "hand.th", &PthOptions::default())
    }

    const DATA: &[f32] = &[1.0, 2.0, 3.0, 4.0];

    #[test]
    fn views_offsets_and_odd_strides_are_materialised() {
        let f = legacy(
            true,
            |p| {
                p.tensor("view", "a", 4, Some((1, 2)), 0, &[2], &[1]);
                p.tensor(
                    "huge_stride_on_unit_axis",
                    "a",
                    4,
                    None,
                    1,
                    &[1, 2],
                    &[i64::MAX, 1],
                );
                p.tensor("backwards", "a", 4, None, 0, &[2, 2], &[1, 2]);
                p.tensor(
                    "strided_unit_axis",
                    "a",
                    4,
                    None,
                    0,
                    &[2, 1, 2],
                    &[1, i64::MAX, 2],
                );
                p.tensor("scalar", "a", 4, None, 3, &[], &[]);
            },
            &[("a", DATA)],
        );
        let ck = read(&f).unwrap();
        assert_eq!(ck.tensors.get("view").unwrap().data(), [2.0, 3.0]);
        assert_eq!(
            ck.tensors.get("huge_stride_on_unit_axis").unwrap().data(),
            [2.0, 3.0]
        );
        assert_eq!(
            ck.tensors.get("backwards").unwrap().data(),
            [1.0, 3.0, 2.0, 4.0]
        );
        assert_eq!(
            ck.tensors.get("strided_unit_axis").unwrap().data(),
            [1.0, 3.0, 2.0, 4.0]
        );
        assert_eq!(ck.tensors.get("scalar").unwrap().data(), [4.0]);
        assert_eq!(ck.tensors.get("scalar").unwrap().shape(), [] as [usize; 0]);

        let big = legacy(
            false,
            |p| {
                p.tensor("w", "a", 4, None, 0, &[4], &[1]);
            },
            &[("a", DATA)],
        );
        assert_eq!(read(&big).unwrap().tensors.get("w").unwrap().data(), DATA);
    }

    #[test]
    fn views_reaching_outside_their_storage_are_corrupt() {
        /// (what, storage numel, view, offset, size, stride)
        type Case<'a> = (&'a str, i64, Option<(i64, i64)>, i64, &'a [i64], &'a [i64]);
        let cases: [Case; 6] = [
            ("past the end", 4, None, 2, &[3], &[1]),
            ("stride past the end", 4, None, 0, &[2], &[4]),
            ("view past the end", 4, Some((3, 2)), 0, &[1], &[1]),
            ("broadcast bomb", 4, None, 0, &[1 << 20, 1 << 20], &[0, 0]),
            (
                "overflowing size",
                4,
                None,
                0,
                &[i64::MAX, i64::MAX, 2],
                &[0, 0, 0],
            ),
            ("rank mismatch", 4, None, 0, &[2, 2], &[1]),
        ];
        for (what, numel, view, offset, size, stride) in cases {
            let f = legacy(
                true,
                |p| {
                    p.tensor("t", "a", numel, view, offset, size, stride);
                },
                &[("a", DATA)],
            );
            match read(&f) {
                Err(IoError::Corrupt { msg, .. }) => {
                    assert!(msg.contains("\"t\""), "{what}: {msg}")
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        let negative = legacy(
            true,
            |p| {
                p.tensor("t", "a", 4, None, -1, &[1], &[1]);
            },
            &[("a", DATA)],
        );
        assert!(matches!(read(&negative), Err(IoError::Corrupt { .. })));
        let missing = legacy(
            true,
            |p| {
                p.tensor("t", "a", 4, None, 0, &[1], &[1]);
            },
            &[],
        );
        let msg = read(&missing).unwrap_err().to_string();
        assert!(msg.contains("storage \"a\" is missing"), "{msg}");
        let conflicting = legacy(
            true,
            |p| {
                p.tensor("t", "a", 4, None, 0, &[1], &[1]);
                p.tensor("u", "a", 3, None, 0, &[1], &[1]);
            },
            &[("a", DATA)],
        );
        assert!(read(&conflicting)
            .unwrap_err()
            .to_string()
            .contains("referenced as"));
    }
}
