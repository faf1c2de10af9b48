//! Tests of the restricted unpickler on hand-built pickles.

use super::*;

fn run(bytes: &[u8]) -> R<(Value, Arena, usize)> {
    unpickle(bytes, 0, 0)
}

#[test]
fn os_system_is_refused_before_anything_runs() {
    let p = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.";
    assert_eq!(run(p).unwrap_err(), PickleError::Unsafe("os.system".into()));
    let stack_global = b"\x80\x04\x8c\x05posix\x8c\x06system\x93X\x02\x00\x00\x00ls\x85R.";
    assert_eq!(
        run(stack_global).unwrap_err(),
        PickleError::Unsafe("posix.system".into())
    );
    let builtins_eval = b"\x80\x02c__builtin__\neval\n.";
    assert_eq!(
        run(builtins_eval).unwrap_err(),
        PickleError::Unsafe("__builtin__.eval".into())
    );
}

#[test]
fn containers_and_memo_share_objects() {
    // d = {}; memo[0] = d; l = [d, d]; d['a'] = 1 ; result (l, d)
    let p = b"\x80\x02}q\x00]q\x01(h\x00h\x00eh\x00X\x01\x00\x00\x00aK\x01s\x86.";
    let (v, arena, end) = run(p).unwrap();
    assert_eq!(end, p.len());
    let Some(Obj::Tuple(t)) = arena.obj(&v) else {
        panic!("not a tuple")
    };
    let Some(Obj::List(l)) = arena.obj(&t[0]) else {
        panic!("not a list")
    };
    assert_eq!(l.len(), 2);
    let Some(Obj::Dict(d)) = arena.obj(&l[1]) else {
        panic!("not a dict")
    };
    assert_eq!(d.get_str("a"), Some(&Value::Int(1)));
}

#[test]
fn integers_floats_and_strings_decode() {
    let p = b"\x80\x02(J\xff\xff\xff\xff\x8a\x02\x00\x80G@\t!\xfbTD-\x18\x8c\x02hi\x89t.";
    let (v, arena, _) = run(p).unwrap();
    let Some(Obj::Tuple(t)) = arena.obj(&v) else {
        panic!("not a tuple")
    };
    assert_eq!(t[0], Value::Int(-1));
    assert_eq!(t[1], Value::Int(-32768));
    assert_eq!(t[2], Value::Float(std::f64::consts::PI));
    assert_eq!(t[3], Value::Str(Rc::from("hi")));
    assert_eq!(t[4], Value::Bool(false));
}

#[test]
fn copying_shared_containers_is_capped() {
    // l = [1] * 1000 (memoized), f = builtins.list (memoized), then list(l) 2000 times.
    let mut p = b"\x80\x02(".to_vec();
    p.extend(std::iter::repeat_n(*b"K\x01", 1000).flatten());
    p.extend_from_slice(b"lq\x00cbuiltins\nlist\nq\x01");
    p.extend(std::iter::repeat_n(*b"h\x01h\x00\x85R", 2000).flatten());
    p.push(b'.');
    match run(&p) {
        Err(PickleError::Corrupt { msg, .. }) => assert!(msg.contains("memory bomb"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Copies up to the pickle's own length are fine: two of them here.
    let mut ok = p[..p.len() - 1 - 6 * 1998].to_vec();
    ok.push(b'.');
    assert!(run(&ok).is_ok());
}

#[test]
fn numpy_float_scalars_decode() {
    // numpy.float64(91.5) at protocol 2: scalar(dtype('f8', False, True), bytes), the bytes
    // spelled as _codecs.encode(latin-1 text).
    let p =
        b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R\
              (K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\
              c_codecs\nencode\nX\x09\x00\x00\x00\x00\x00\x00\x00\x00\xc3\xa0V@\
              X\x06\x00\x00\x00latin1\x86R\x86R.";
    let (v, _, _) = run(p).unwrap();
    assert_eq!(v, Value::Float(91.5));
    // Big-endian or exotic dtypes stay opaque rather than being misread.
    let big = [&p[..64], b">", &p[65..]].concat();
    let (v, arena, _) = run(&big).unwrap();
    assert!(
        matches!(arena.obj(&v), Some(Obj::Opaque("numpy scalar"))),
        "{v:?}"
    );
}

#[test]
fn malformed_pickles_are_errors() {
    for bad in [
        &b""[..],
        b"\x80\x02",
        b"\x80\x02.",
        b"\x80\x02t.",
        b"\x80\x02h\x05.",
        b"\x80\x02X\xff\xff\xff\xffabc",
        b"\x80\x02K\x01a.",
        b"\x80\x09N.",
        b"\x80\x02\xff",
    ] {
        assert!(run(bad).is_err(), "{bad:?}");
    }
}
