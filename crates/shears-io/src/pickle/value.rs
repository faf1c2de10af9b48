//! The values a pickle builds: scalars, containers in an arena, torch storage and tensor
//! references, and the unpickler's errors.

use std::collections::HashMap;
use std::rc::Rc;

/// Index of an object in the [`Arena`].
pub(crate) type ObjId = usize;

/// A pickled value: scalars inline, containers and other objects by reference.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i128),
    /// An integer wider than 128 bits (its two's complement little-endian bytes).
    HugeInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Obj(ObjId),
}

/// Element type of a torch storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StorageDtype {
    F32,
    F64,
    F16,
    Bf16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// `torch.UntypedStorage`: raw bytes; the tensor supplies the dtype.
    Untyped,
    /// A storage type we know the element size of but do not convert (complex, quantized).
    Other {
        name: String,
        size: usize,
    },
}

impl StorageDtype {
    /// Element size in bytes.
    pub(crate) fn size(&self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::Bf16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool | StorageDtype::Untyped => 1,
            StorageDtype::Other { size, .. } => *size,
        }
    }

    /// Whether tensors of this type convert to f32.
    pub(crate) fn is_float(&self) -> bool {
        matches!(
            self,
            StorageDtype::F32 | StorageDtype::F64 | StorageDtype::F16 | StorageDtype::Bf16
        )
    }

    /// The torch name (`float32`, `int64`, ...).
    pub(crate) fn name(&self) -> &str {
        match self {
            StorageDtype::F32 => "float32",
            StorageDtype::F64 => "float64",
            StorageDtype::F16 => "float16",
            StorageDtype::Bf16 => "bfloat16",
            StorageDtype::I64 => "int64",
            StorageDtype::I32 => "int32",
            StorageDtype::I16 => "int16",
            StorageDtype::I8 => "int8",
            StorageDtype::U8 => "uint8",
            StorageDtype::Bool => "bool",
            StorageDtype::Untyped => "untyped",
            StorageDtype::Other { name, .. } => name,
        }
    }

    /// From a storage class name of module `torch` (`FloatStorage`, `UntypedStorage`, ...).
    pub(super) fn from_storage_class(name: &str) -> Option<StorageDtype> {
        let other = |n: &str, size| StorageDtype::Other {
            name: n.to_string(),
            size,
        };
        Some(match name {
            "FloatStorage" => StorageDtype::F32,
            "DoubleStorage" => StorageDtype::F64,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::Bf16,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            "UntypedStorage" => StorageDtype::Untyped,
            "ComplexFloatStorage" => other("complex64", 8),
            "ComplexDoubleStorage" => other("complex128", 16),
            "QInt8Storage" => other("qint8", 1),
            "QUInt8Storage" => other("quint8", 1),
            "QInt32Storage" => other("qint32", 4),
            "QUInt4x2Storage" => other("quint4x2", 1),
            "QUInt2x4Storage" => other("quint2x4", 1),
            _ => return None,
        })
    }

    /// From a dtype attribute of module `torch` (`float32`, `float`, `long`, ...).
    pub(super) fn from_torch_dtype(name: &str) -> Option<StorageDtype> {
        let other = |n: &str, size| StorageDtype::Other {
            name: n.to_string(),
            size,
        };
        Some(match name {
            "float32" | "float" => StorageDtype::F32,
            "float64" | "double" => StorageDtype::F64,
            "float16" | "half" => StorageDtype::F16,
            "bfloat16" => StorageDtype::Bf16,
            "int64" | "long" => StorageDtype::I64,
            "int32" | "int" => StorageDtype::I32,
            "int16" | "short" => StorageDtype::I16,
            "int8" => StorageDtype::I8,
            "uint8" => StorageDtype::U8,
            "bool" => StorageDtype::Bool,
            "complex64" | "cfloat" => other("complex64", 8),
            "complex128" | "cdouble" => other("complex128", 16),
            _ => return None,
        })
    }
}

/// A storage reference produced by a persistent id
/// `('storage', type, key, location, numel[, view_metadata])`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StorageRef {
    pub dtype: StorageDtype,
    pub key: Rc<str>,
    /// Elements of the (root) storage.
    pub numel: u64,
    /// Legacy format: this is a view `(offset, size)` in elements into the root storage.
    pub view: Option<(u64, u64)>,
}

/// A tensor to be rebuilt from a storage: `storage[offset + sum(i_k * stride_k)]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorRef {
    /// The storage object (an [`Obj::Storage`]).
    pub storage: ObjId,
    /// The tensor's dtype when it differs from the storage's (`_rebuild_tensor_v3`).
    pub dtype: Option<StorageDtype>,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum HKey {
    None,
    Bool(bool),
    Int(i128),
    Float(u64),
    Obj(ObjId),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Plain(HKey),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
}

pub(super) fn key_of(v: &Value) -> Key {
    match v {
        Value::None => Key::Plain(HKey::None),
        Value::Bool(b) => Key::Plain(HKey::Bool(*b)),
        Value::Int(i) => Key::Plain(HKey::Int(*i)),
        Value::HugeInt(b) | Value::Bytes(b) => Key::Bytes(b.clone()),
        Value::Float(f) => Key::Plain(HKey::Float(f.to_bits())),
        Value::Str(s) => Key::Str(s.clone()),
        Value::Obj(id) => Key::Plain(HKey::Obj(*id)),
    }
}

/// A dict in insertion order; a repeated key replaces the value as in Python.
#[derive(Clone, Debug, Default)]
pub(crate) struct Dict {
    pub(super) items: Vec<(Value, Value)>,
    pub(super) index: HashMap<Key, usize>,
}

impl Dict {
    pub(super) fn insert(&mut self, k: Value, v: Value) {
        match self.index.get(&key_of(&k)) {
            Some(&i) => self.items[i].1 = v,
            None => {
                self.index.insert(key_of(&k), self.items.len());
                self.items.push((k, v));
            }
        }
    }

    /// Entries in insertion order.
    pub(crate) fn items(&self) -> &[(Value, Value)] {
        &self.items
    }

    /// The value under string key `k`.
    pub(crate) fn get_str(&self, k: &str) -> Option<&Value> {
        self.index
            .get(&Key::Str(Rc::from(k)))
            .map(|&i| &self.items[i].1)
    }
}

/// An object in the arena.
#[derive(Clone, Debug)]
pub(crate) enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Dict),
    Set(Vec<Value>),
    /// An allow-listed global, by name.
    Global {
        module: Rc<str>,
        name: Rc<str>,
    },
    Storage(StorageRef),
    Tensor(TensorRef),
    /// `numpy.dtype(descr)`, with the byte order a later `BUILD` supplies.
    NumpyDtype {
        descr: Rc<str>,
        byteorder: Option<char>,
    },
    /// A harmless object we do not model, with a short description.
    Opaque(&'static str),
}

/// Why unpickling failed.
#[derive(Debug, PartialEq)]
pub(crate) enum PickleError {
    /// Malformed input; `offset` is the byte position in the file.
    Corrupt { offset: usize, msg: String },
    /// A global outside the allow-list (`module.name`).
    Unsafe(String),
    /// A feature we do not implement.
    Unsupported(String),
}

/// The objects built while unpickling.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    pub(super) objs: Vec<Obj>,
}

impl Arena {
    /// Number of objects.
    pub(crate) fn len(&self) -> usize {
        self.objs.len()
    }

    pub(crate) fn get(&self, id: ObjId) -> &Obj {
        &self.objs[id]
    }

    pub(super) fn push(&mut self, o: Obj) -> Value {
        self.objs.push(o);
        Value::Obj(self.objs.len() - 1)
    }

    /// The object a value refers to, if it is one.
    pub(crate) fn obj(&self, v: &Value) -> Option<&Obj> {
        match v {
            Value::Obj(id) => Some(&self.objs[*id]),
            _ => None,
        }
    }

    /// A short human description (`91.78`, `"text"`, `<dict of 3 entries>`), for reports.
    pub(crate) fn describe(&self, v: &Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(b) => if *b { "True" } else { "False" }.into(),
            Value::Int(i) => i.to_string(),
            Value::HugeInt(_) => "<huge int>".into(),
            Value::Float(f) => format!("{f:?}"),
            Value::Str(s) => s.to_string(),
            Value::Bytes(b) => format!("<{} bytes>", b.len()),
            Value::Obj(id) => match &self.objs[*id] {
                Obj::Tuple(v) => format!("<tuple of {} items>", v.len()),
                Obj::List(v) => format!("<list of {} items>", v.len()),
                Obj::Set(v) => format!("<set of {} items>", v.len()),
                Obj::Dict(d) => format!("<dict of {} entries>", d.items.len()),
                Obj::Global { module, name } => format!("<{module}.{name}>"),
                Obj::Storage(_) => "<storage>".into(),
                Obj::Tensor(t) => format!("<tensor {:?}>", t.size),
                Obj::NumpyDtype { descr, .. } => format!("<numpy dtype {descr}>"),
                Obj::Opaque(what) => format!("<{what}>"),
            },
        }
    }
}
