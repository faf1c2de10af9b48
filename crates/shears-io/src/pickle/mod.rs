//! A restricted unpickler: it builds a value tree and never executes code.
//!
//! Python's `pickle` is a small stack machine whose `GLOBAL` and `REDUCE` opcodes import and
//! call arbitrary functions. Here `GLOBAL` is checked against a fixed allow-list (the handful
//! of names `torch.save` emits for tensors and state dicts) and `REDUCE` is interpreted by this
//! module for those names only; anything else is refused with [`PickleError::Unsafe`].
//!
//! Containers live in an arena and values refer to them by index, so memo lookups are cheap
//! copies, shared containers are mutated in place as Python would, and dropping a deeply nested
//! structure cannot overflow the stack. Every opcode consumes at least one input byte and
//! creates at most one arena object, so memory is bounded by the input length.

use std::collections::HashMap;
use std::rc::Rc;

mod value;

pub(crate) use value::*;

/// Whether `module.name` may be named by a pickle. Everything not listed is refused.
fn check_global(module: &str, name: &str) -> Result<(), PickleError> {
    let ok = match module {
        "collections" => name == "OrderedDict",
        "builtins" | "__builtin__" => {
            matches!(name, "set" | "frozenset" | "dict" | "list" | "tuple")
        }
        "torch._utils" => match name {
            "_rebuild_tensor"
            | "_rebuild_tensor_v2"
            | "_rebuild_tensor_v3"
            | "_rebuild_parameter"
            | "_rebuild_parameter_with_state" => true,
            n if n.starts_with("_rebuild_") => {
                return Err(PickleError::Unsupported(format!(
                    "tensor kind torch._utils.{n} (only dense strided tensors are supported)"
                )))
            }
            _ => false,
        },
        "torch" => {
            StorageDtype::from_storage_class(name).is_some()
                || StorageDtype::from_torch_dtype(name).is_some()
                || matches!(name, "Size" | "device" | "Tensor")
        }
        "torch._tensor" => name == "_rebuild_from_type_v2",
        "torch.nn.parameter" => name == "Parameter",
        "torch.storage" => matches!(name, "UntypedStorage" | "TypedStorage" | "_TypedStorage"),
        "numpy.core.multiarray" | "numpy._core.multiarray" => name == "scalar",
        "numpy" => name == "dtype",
        "_codecs" => name == "encode",
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(PickleError::Unsafe(format!("{module}.{name}")))
    }
}

/// Reads one pickle from `data[start..]`, stopping at its `STOP` opcode.
///
/// Returns the value, the arena holding its objects and the position just after `STOP`.
/// `base` is added to positions in error messages (the pickle's offset in its file).
pub(crate) fn unpickle(
    data: &[u8],
    start: usize,
    base: usize,
) -> Result<(Value, Arena, usize), PickleError> {
    let mut m = Machine {
        data,
        pos: start,
        base,
        op_pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena: Arena::default(),
        copied: 0,
    };
    let v = m.run()?;
    Ok((v, m.arena, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
    /// Position of the opcode being executed, for error messages.
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    arena: Arena,
    /// Values copied out of existing containers so far (see [`Machine::spend`]).
    copied: usize,
}

type R<T> = Result<T, PickleError>;

impl<'a> Machine<'a> {
    fn err<T>(&self, msg: impl Into<String>) -> R<T> {
        Err(PickleError::Corrupt {
            offset: self.base + self.op_pos,
            msg: msg.into(),
        })
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let avail = self.data.len() - self.pos;
        if n > avail {
            return Err(PickleError::Corrupt {
                offset: self.base + self.pos,
                msg: format!("pickle truncated: needs {n} more bytes, {avail} left"),
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn take_len(&mut self, n: u64) -> R<&'a [u8]> {
        match usize::try_from(n) {
            Ok(n) => self.take(n),
            Err(_) => self.err(format!("length {n} does not fit in memory")),
        }
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn i32(&mut self) -> R<i32> {
        Ok(i32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("pickle truncated: unterminated text line");
        };
        let s = std::str::from_utf8(&rest[..n]).or_else(|_| self.err("text line is not utf-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> R<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("stack underflow");
        }
        Ok(self.stack.pop().expect("length checked"))
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            return self.err("no MARK on the stack");
        };
        Ok(self.stack.split_off(m))
    }

    fn top_obj(&mut self) -> R<ObjId> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(Value::Obj(id)) if self.stack.len() > floor => Ok(*id),
            Some(_) if self.stack.len() > floor => self.err("expected an object on the stack"),
            _ => self.err("stack underflow"),
        }
    }

    /// Accounts for `n` values or bytes copied out of an existing object. Memo references make
    /// such copies a few input bytes each, so without a cap a small pickle could demand
    /// quadratic memory; legitimate checkpoints copy far less than their own size.
    fn spend(&mut self, n: usize) -> R<()> {
        self.copied = self.copied.saturating_add(n);
        if self.copied > self.data.len() {
            return self.err(format!(
                "pickle copies more than {} values out of shared objects (a memory bomb?)",
                self.data.len()
            ));
        }
        Ok(())
    }

    fn push_obj(&mut self, o: Obj) {
        let v = self.arena.push(o);
        self.stack.push(v);
    }

    fn str_value(&self, s: &[u8]) -> R<Value> {
        match std::str::from_utf8(s) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => self.err("string is not valid utf-8"),
        }
    }

    fn long(bytes: &[u8]) -> Value {
        if bytes.is_empty() {
            return Value::Int(0);
        }
        if bytes.len() > 16 {
            return Value::HugeInt(Rc::from(bytes));
        }
        let fill = if bytes[bytes.len() - 1] & 0x80 != 0 {
            0xff
        } else {
            0
        };
        let mut b = [fill; 16];
        b[..bytes.len()].copy_from_slice(bytes);
        Value::Int(i128::from_le_bytes(b))
    }

    fn global(&mut self, module: &str, name: &str) -> R<Value> {
        check_global(module, name)?;
        Ok(self.arena.push(Obj::Global {
            module: Rc::from(module),
            name: Rc::from(name),
        }))
    }

    fn run(&mut self) -> R<Value> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(PickleError::Unsupported(format!("pickle protocol {v}")));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.stack.len() > self.marks.last().copied().unwrap_or(0) {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.pop()?;
                    self.stack.push(v.clone());
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.i32()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = self.u8()?;
                    let b = self.take(n.into())?;
                    self.stack.push(Self::long(b));
                }
                0x8b => {
                    let n = self.i32()?;
                    if n < 0 {
                        return self.err("LONG4 with negative length");
                    }
                    let b = self.take(n as usize)?;
                    self.stack.push(Self::long(b));
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack
                        .push(Value::Float(f64::from_be_bytes(b.try_into().expect("8"))));
                }
                b'X' => {
                    let n = self.u32()?;
                    let b = self.take_len(n.into())?;
                    let v = self.str_value(b)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()?;
                    let b = self.take(n.into())?;
                    let v = self.str_value(b)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()?;
                    let b = self.take_len(n)?;
                    let v = self.str_value(b)?;
                    self.stack.push(v);
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        let n = self.i32()?;
                        if n < 0 {
                            return self.err("BINSTRING with negative length");
                        }
                        n as usize
                    } else {
                        self.u8()?.into()
                    };
                    // Python 2 str: decoded as latin-1 so every byte maps to one char.
                    let b = self.take(n)?;
                    let s: String = b.iter().map(|&c| c as char).collect();
                    self.stack.push(Value::Str(Rc::from(s)));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n: u64 = match op {
                        b'B' => self.u32()?.into(),
                        b'C' => self.u8()?.into(),
                        _ => self.u64()?,
                    };
                    let b = self.take_len(n)?;
                    self.stack.push(Value::Bytes(Rc::from(b)));
                }
                b')' => self.push_obj(Obj::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_obj(Obj::Tuple(items));
                }
                b']' => self.push_obj(Obj::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_obj(Obj::List(items));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    let id = self.top_obj()?;
                    match &mut self.arena.objs[id] {
                        Obj::List(l) => l.extend(items),
                        _ => return self.err("APPEND to something that is not a list"),
                    }
                }
                b'}' => self.push_obj(Obj::Dict(Dict::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.err("DICT with an odd number of items");
                    }
                    let mut d = Dict::default();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.insert(k, v);
                    }
                    self.push_obj(Obj::Dict(d));
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return self.err("SETITEMS with an odd number of items");
                    }
                    let id = self.top_obj()?;
                    let Obj::Dict(d) = &mut self.arena.objs[id] else {
                        return self.err("SETITEM on something that is not a dict");
                    };
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.insert(k, v);
                    }
                }
                0x8f => self.push_obj(Obj::Set(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let id = self.top_obj()?;
                    match &mut self.arena.objs[id] {
                        Obj::Set(s) => s.extend(items),
                        _ => return self.err("ADDITEMS to something that is not a set"),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_obj(Obj::Set(items));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let v = self.global(module, name)?;
                    self.stack.push(v);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return self.err("STACK_GLOBAL needs two strings");
                    };
                    let v = self.global(&module, &name)?;
                    self.stack.push(v);
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let f = self.global(module, name)?;
                    let args = self.pop_mark()?;
                    let args = self.arena.push(Obj::Tuple(args));
                    let v = self.call(&f, &args)?;
                    self.stack.push(v);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.err("OBJ without a class");
                    }
                    let f = items.remove(0);
                    let args = self.arena.push(Obj::Tuple(items));
                    let v = self.call(&f, &args)?;
                    self.stack.push(v);
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(&f, &args)?;
                    self.stack.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(&f, &args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let id = self.top_obj()?;
                    self.build(id, &state);
                }
                b'q' => {
                    let i = self.u8()?;
                    self.put(i.into())?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).or_else(|_| self.err("memo is full"))?;
                    self.put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.get(i.into())?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.get(i)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.stack.push(v);
                }
                b'P' => {
                    return Err(PickleError::Unsupported(
                        "text persistent ids (PERSID)".into(),
                    ))
                }
                0x82..=0x84 => {
                    return Err(PickleError::Unsupported(
                        "copyreg extension codes (EXT*)".into(),
                    ))
                }
                0x97 | 0x98 => {
                    return Err(PickleError::Unsupported(
                        "out-of-band buffers (protocol 5)".into(),
                    ))
                }
                _ => return self.err(format!("unknown or unsupported opcode 0x{op:02x}")),
            }
        }
    }

    fn put(&mut self, i: u32) -> R<()> {
        let Some(v) = self.stack.last() else {
            return self.err("memo put with an empty stack");
        };
        self.memo.insert(i, v.clone());
        Ok(())
    }

    fn get(&mut self, i: u32) -> R<()> {
        match self.memo.get(&i) {
            Some(v) => {
                self.stack.push(v.clone());
                Ok(())
            }
            None => self.err(format!("memo key {i} not found")),
        }
    }

    fn tuple_items(&self, v: &Value) -> Option<&[Value]> {
        match self.arena.obj(v) {
            Some(Obj::Tuple(t)) | Some(Obj::List(t)) => Some(t),
            _ => None,
        }
    }

    fn int(&self, v: &Value, what: &str) -> R<u64> {
        match v {
            Value::Int(i) => u64::try_from(*i)
                .or_else(|_| self.err(format!("{what} {i} is negative or too large"))),
            _ => self.err(format!("{what} is not an integer")),
        }
    }

    fn int_tuple(&mut self, v: &Value, what: &str) -> R<Vec<u64>> {
        let n = match self.tuple_items(v) {
            Some(items) => items.len(),
            None => return self.err(format!("{what} is not a tuple")),
        };
        self.spend(n)?;
        let items = self.tuple_items(v).expect("checked above");
        items.iter().map(|x| self.int(x, what)).collect()
    }

    /// Interprets `f(*args)` for the allow-listed callables; never runs code.
    fn call(&mut self, f: &Value, args: &Value) -> R<Value> {
        let Some(Obj::Global { module, name }) = self.arena.obj(f) else {
            return self.err("REDUCE on something that is not a global");
        };
        let (module, name) = (module.clone(), name.clone());
        let args = match self.tuple_items(args) {
            // No allow-listed callable takes more than 8 arguments: copying them is cheap.
            Some(a) if a.len() <= 8 => a.to_vec(),
            Some(a) => {
                return self.err(format!("{module}.{name} called with {} arguments", a.len()))
            }
            None => return self.err(format!("arguments of {module}.{name} are not a tuple")),
        };
        let nargs = |lo: usize, hi: usize| -> R<()> {
            if args.len() < lo || args.len() > hi {
                self.err(format!(
                    "{module}.{name} takes {lo} to {hi} arguments, got {}",
                    args.len()
                ))
            } else {
                Ok(())
            }
        };
        match (&*module, &*name) {
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                nargs(0, 1)?;
                let mut d = Dict::default();
                if let Some(a) = args.first() {
                    let Some(n) = self.tuple_items(a).map(<[Value]>::len) else {
                        return self.err(format!("argument of {module}.{name} is not a sequence"));
                    };
                    self.spend(n)?;
                    let pairs = self.tuple_items(a).expect("checked above");
                    for p in pairs {
                        match self.tuple_items(p) {
                            Some([k, v]) => d.insert(k.clone(), v.clone()),
                            _ => return self.err(format!("item of {module}.{name} is not a pair")),
                        }
                    }
                }
                Ok(self.arena.push(Obj::Dict(d)))
            }
            ("builtins" | "__builtin__", "set" | "frozenset" | "list" | "tuple")
            | ("torch", "Size") => {
                nargs(0, 1)?;
                let items = match args.first() {
                    None => Vec::new(),
                    Some(a) => match self.arena.obj(a) {
                        Some(Obj::Tuple(v) | Obj::List(v) | Obj::Set(v)) => {
                            let v = v.clone();
                            self.spend(v.len())?;
                            v
                        }
                        _ => {
                            return self
                                .err(format!("argument of {module}.{name} is not a sequence"))
                        }
                    },
                };
                Ok(self.arena.push(match &*name {
                    "set" | "frozenset" => Obj::Set(items),
                    "list" => Obj::List(items),
                    _ => Obj::Tuple(items),
                }))
            }
            ("torch", "device") => Ok(self.arena.push(Obj::Opaque("torch.device"))),
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3") => {
                let (lo, hi) = match &*name {
                    "_rebuild_tensor" => (4, 4),
                    "_rebuild_tensor_v2" => (6, 7),
                    _ => (7, 8),
                };
                nargs(lo, hi)?;
                let storage = match &args[0] {
                    Value::Obj(id) if matches!(self.arena.get(*id), Obj::Storage(_)) => *id,
                    _ => return self.err(format!("argument 0 of {name} is not a storage")),
                };
                let offset = self.int(&args[1], "storage offset")?;
                let size = self.int_tuple(&args[2], "tensor size")?;
                let stride = self.int_tuple(&args[3], "tensor stride")?;
                let dtype = if &*name == "_rebuild_tensor_v3" {
                    match self.arena.obj(&args[6]) {
                        Some(Obj::Global { module, name }) if &**module == "torch" => {
                            match StorageDtype::from_torch_dtype(name) {
                                Some(d) => Some(d),
                                None => return self.err(format!("torch.{name} is not a dtype")),
                            }
                        }
                        _ => return self.err("argument 6 of _rebuild_tensor_v3 is not a dtype"),
                    }
                } else {
                    None
                };
                Ok(self.arena.push(Obj::Tensor(TensorRef {
                    storage,
                    dtype,
                    offset,
                    size,
                    stride,
                })))
            }
            ("torch._tensor", "_rebuild_from_type_v2") => {
                // (func, type, args, state): `type` is torch.Tensor or Parameter (anything else
                // was refused by GLOBAL), `state` holds Python attributes we do not need.
                nargs(4, 4)?;
                match self.arena.obj(&args[0]) {
                    Some(Obj::Global { module, name })
                        if &**module == "torch._utils" && name.starts_with("_rebuild_tensor") => {}
                    _ => return self.err("_rebuild_from_type_v2 does not wrap a tensor rebuild"),
                }
                self.call(&args[0], &args[2])
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                if &*name == "_rebuild_parameter" {
                    nargs(3, 3)?;
                } else {
                    nargs(4, 4)?;
                }
                match self.arena.obj(&args[0]) {
                    Some(Obj::Tensor(_)) => Ok(args[0].clone()),
                    _ => self.err(format!("argument 0 of {name} is not a tensor")),
                }
            }
            ("numpy", "dtype") => {
                nargs(1, 3)?;
                let Value::Str(descr) = &args[0] else {
                    return self.err("argument 0 of numpy.dtype is not a string");
                };
                Ok(self.arena.push(Obj::NumpyDtype {
                    descr: descr.clone(),
                    byteorder: None,
                }))
            }
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => {
                nargs(1, 2)?;
                Ok(self.numpy_scalar(&args))
            }
            ("_codecs", "encode") => {
                nargs(1, 2)?;
                let Value::Str(s) = &args[0] else {
                    return self.err("argument 0 of _codecs.encode is not a string");
                };
                self.spend(s.len())?;
                let latin1 = match args.get(1) {
                    None => false,
                    Some(Value::Str(e)) => matches!(&**e, "latin1" | "latin-1" | "iso-8859-1"),
                    Some(_) => return self.err("argument 1 of _codecs.encode is not a string"),
                };
                let bytes: Vec<u8> = if latin1 {
                    let mut v = Vec::with_capacity(s.len());
                    for c in s.chars() {
                        match u8::try_from(u32::from(c)) {
                            Ok(b) => v.push(b),
                            Err(_) => return self.err("_codecs.encode: char outside latin-1"),
                        }
                    }
                    v
                } else {
                    s.as_bytes().to_vec()
                };
                Ok(Value::Bytes(Rc::from(bytes)))
            }
            _ => self.err(format!("{module}.{name} cannot be called")),
        }
    }

    /// `numpy.core.multiarray.scalar(dtype, bytes)`: decoded when it is a plain little-endian
    /// number, opaque otherwise.
    fn numpy_scalar(&mut self, args: &[Value]) -> Value {
        let decoded = match (self.arena.obj(&args[0]), args.get(1)) {
            (Some(Obj::NumpyDtype { descr, byteorder }), Some(Value::Bytes(b)))
                if !matches!(byteorder, Some('>')) =>
            {
                Self::decode_scalar(descr, b)
            }
            _ => None,
        };
        decoded.unwrap_or_else(|| self.arena.push(Obj::Opaque("numpy scalar")))
    }

    fn decode_scalar(descr: &str, b: &[u8]) -> Option<Value> {
        Some(match (descr, b.len()) {
            ("f8", 8) => Value::Float(f64::from_le_bytes(b.try_into().expect("8"))),
            ("f4", 4) => Value::Float(f32::from_le_bytes(b.try_into().expect("4")).into()),
            ("i8", 8) => Value::Int(i64::from_le_bytes(b.try_into().expect("8")).into()),
            ("i4", 4) => Value::Int(i32::from_le_bytes(b.try_into().expect("4")).into()),
            ("u8", 8) => Value::Int(u64::from_le_bytes(b.try_into().expect("8")).into()),
            ("b1", 1) => Value::Bool(b[0] != 0),
            _ => return None,
        })
    }

    fn build(&mut self, id: ObjId, state: &Value) {
        // numpy.dtype's state is (version, byteorder, ...); other objects' state is attributes
        // we have no use for, and applying it could not run code anyway.
        let order = match self.tuple_items(state) {
            Some([_, Value::Str(o), ..]) => o.chars().next(),
            _ => None,
        };
        if let Obj::NumpyDtype { byteorder, .. } = &mut self.arena.objs[id] {
            *byteorder = order;
        }
    }

    /// Interprets a torch persistent id `('storage', type, key, location, numel[, view])`.
    fn persistent_load(&mut self, pid: &Value) -> R<Value> {
        let items = match self.tuple_items(pid) {
            Some(t) if t.len() <= 6 => t.to_vec(),
            Some(t) => return self.err(format!("persistent id has {} fields", t.len())),
            None => return self.err("persistent id is not a tuple"),
        };
        match items.first() {
            Some(Value::Str(s)) if &**s == "storage" => {}
            Some(Value::Str(s)) => {
                return Err(PickleError::Unsupported(format!(
                    "persistent id of kind {s:?}"
                )))
            }
            _ => return self.err("persistent id does not start with a string"),
        }
        if items.len() != 5 && items.len() != 6 {
            return self.err(format!("storage persistent id has {} fields", items.len()));
        }
        let dtype = match self.arena.obj(&items[1]) {
            Some(Obj::Global { module, name }) => match (&**module, &**name) {
                ("torch", n) | ("torch.storage", n) => match StorageDtype::from_storage_class(n) {
                    Some(d) => d,
                    None => {
                        return Err(PickleError::Unsupported(format!(
                            "storage type {module}.{name}"
                        )))
                    }
                },
                _ => return self.err(format!("{module}.{name} is not a storage type")),
            },
            _ => return self.err("storage type is not a global"),
        };
        let key: Rc<str> = match &items[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => Rc::from(i.to_string()),
            _ => return self.err("storage key is not a string"),
        };
        let numel = self.int(&items[4], "storage size")?;
        let view = match items.get(5) {
            None | Some(Value::None) => None,
            Some(v) => match self.tuple_items(v) {
                Some([_, off, size]) => {
                    Some((self.int(off, "view offset")?, self.int(size, "view size")?))
                }
                _ => return self.err("storage view metadata is not (key, offset, size)"),
            },
        };
        Ok(self.arena.push(Obj::Storage(StorageRef {
            dtype,
            key,
            numel,
            view,
        })))
    }
}

#[cfg(test)]
mod tests;
