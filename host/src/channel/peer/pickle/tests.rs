//! Pickles made by Python (testdata/pickles.json, see testdata/make_pickles.py) and by hand.

use super::*;
use serde_json::json;

#[derive(serde::Deserialize)]
struct Vectors {
    python: String,
    vectors: Vec<Vector>,
}

#[derive(serde::Deserialize)]
struct Vector {
    name: String,
    protocol: u8,
    hex: String,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("../testdata/pickles.json")).unwrap()
}

/// Equal, with floats allowed one unit in the last place apart: serde_json (without its
/// float_roundtrip feature) may read Python's shortest float text one ULP off.
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= x.abs().max(y.abs()) * f64::EPSILON
        }
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn limits() -> PickleLimits {
    PickleLimits::default()
}

#[test]
fn python_pickles_of_plain_data_decode_at_every_protocol() {
    let all = vectors();
    let mut seen = [0usize; 6];
    for v in all.vectors.iter().filter(|v| v.value.is_some()) {
        let bytes = unhex(&v.hex);
        let decoded = decode(&bytes, &limits()).unwrap_or_else(|e| {
            panic!(
                "{} at protocol {} (Python {}): {e}",
                v.name, v.protocol, all.python
            )
        });
        let expected = v.value.as_ref().unwrap();
        assert!(
            same(&to_json(&decoded), expected),
            "{} at protocol {}: {} != {expected}",
            v.name,
            v.protocol,
            to_json(&decoded)
        );
        seen[v.protocol as usize] += 1;
    }
    assert!(seen.iter().all(|&n| n >= 15), "{seen:?}");
}

#[test]
fn python_pickles_that_need_code_or_explode_are_refused_at_every_protocol() {
    let all = vectors();
    let mut count = 0;
    for v in all.vectors.iter() {
        let Some(expected) = &v.error else { continue };
        let bytes = unhex(&v.hex);
        let started = std::time::Instant::now();
        let err = decode(&bytes, &limits()).expect_err(&v.name).to_string();
        assert!(
            err.starts_with(expected.as_str()),
            "{} at protocol {}: {err}",
            v.name,
            v.protocol
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{} is slow",
            v.name
        );
        count += 1;
    }
    assert_eq!(count, 8 * 6);
}

#[test]
fn refusals_name_what_the_pickle_asked_for() {
    let all = vectors();
    let find = |name: &str, protocol: u8| {
        let v = all
            .vectors
            .iter()
            .find(|v| v.name == name && v.protocol == protocol)
            .unwrap();
        decode(&unhex(&v.hex), &limits()).unwrap_err()
    };
    assert_eq!(
        find("os_system", 0),
        PickleError::Global("posix.system".into())
    );
    assert_eq!(
        find("os_system", 4),
        PickleError::Global("posix.system".into())
    );
    assert_eq!(
        find("instance", 0),
        PickleError::Global("copy_reg._reconstructor".into())
    );
    assert_eq!(
        find("instance", 2),
        PickleError::Global("__main__.Point".into())
    );
    assert_eq!(
        find("instance", 5),
        PickleError::Global("__main__.Point".into())
    );
    assert_eq!(
        find("os_system", 1).to_string(),
        "pickle needs the global `posix.system`: only plain data is accepted (no classes, functions or objects)"
    );
}

#[test]
fn memo_references_count_every_copy() {
    let all = vectors();
    for v in all.vectors.iter().filter(|v| v.name == "memo_small") {
        let bytes = unhex(&v.hex);
        // 10 x 10 references to [b"xy"]: 100 copies of a list and its bytes, 10 lists, 1 outer.
        let decoded = to_json(&decode(&bytes, &limits()).unwrap());
        assert_eq!(decoded.as_array().unwrap().len(), 10);
        let tight = PickleLimits {
            max_items: 200,
            ..limits()
        };
        assert_eq!(
            decode(&bytes, &tight).unwrap_err(),
            PickleError::TooManyItems(200)
        );
        let enough = PickleLimits {
            max_items: 211,
            ..limits()
        };
        decode(&bytes, &enough).unwrap_or_else(|e| panic!("protocol {}: {e}", v.protocol));
        let few_bytes = PickleLimits {
            max_bytes: 199,
            ..limits()
        };
        assert_eq!(
            decode(&bytes, &few_bytes).unwrap_err(),
            PickleError::TooManyBytes(199)
        );
    }
}

#[test]
fn depth_is_limited() {
    let all = vectors();
    for v in all.vectors.iter().filter(|v| v.name == "deep_50") {
        let bytes = unhex(&v.hex);
        decode(&bytes, &limits()).unwrap();
        let shallow = PickleLimits {
            max_depth: 49,
            ..limits()
        };
        assert_eq!(
            decode(&bytes, &shallow).unwrap_err(),
            PickleError::TooDeep(49)
        );
        let exact = PickleLimits {
            max_depth: 50,
            ..limits()
        };
        decode(&bytes, &exact).unwrap();
    }
}

/// A pickle assembled from opcodes, protocol 2 unless it says otherwise.
fn p(body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, 2];
    v.extend_from_slice(body);
    v
}

fn refuse(bytes: &[u8]) -> PickleError {
    decode(bytes, &limits()).unwrap_err()
}

#[test]
fn hand_made_refusals() {
    use PickleError as E;
    let m = |at, what| E::Malformed { at, what };
    let cases: Vec<(Vec<u8>, PickleError)> = vec![
        (p(b"Pabc\n."), E::External("a persistent id")),
        (p(b"NQ."), E::External("a persistent id")),
        (p(b"\x82\x01."), E::External("an extension registry code")),
        (p(b"\x97."), E::External("an out-of-band buffer")),
        (p(b"(imod\nCls\n."), E::Instance("mod.Cls".into())),
        (p(b"c__builtin__\nset\n)\x81."), E::Object("NEWOBJ")),
        (p(b"c__builtin__\nset\n)}\x92."), E::Object("NEWOBJ_EX")),
        (p(b"(c__builtin__\nset\no."), E::Object("OBJ")),
        (p(b"]}b."), E::Object("BUILD")),
        (
            p(b"ccopyreg\n_reconstructor\n."),
            E::Global("copyreg._reconstructor".into()),
        ),
        (p(b"cbuiltins\neval\n."), E::Global("builtins.eval".into())),
        (p(b"cbuiltins\nlist\n."), E::Global("builtins.list".into())),
        (
            p(b"\x8c\x08builtins\x8c\x04eval\x93."),
            E::Global("builtins.eval".into()),
        ),
        (
            p(b"K\x01K\x02\x93."),
            E::Global("<not a string>.<not a string>".into()),
        ),
        (p(b"S'abc'\n."), E::Python2String("STRING")),
        (p(b"T\x01\x00\x00\x00a."), E::Python2String("BINSTRING")),
        (p(b"U\x01a."), E::Python2String("SHORT_BINSTRING")),
        (vec![0x80, 6, b'N', b'.'], E::Protocol(6)),
        (p(b"\xff"), E::UnknownOpcode { op: 0xff, at: 2 }),
        (p(b"N"), m(3, "truncated (a length runs past the end)")),
        (p(b"N.."), m(4, "bytes after STOP")),
        (p(b"."), m(2, "stack underflow")),
        (p(b"N(."), m(4, "stack underflow")),
        (p(b"t."), m(2, "no MARK to pop to")),
        (p(b"h\x05."), m(2, "memo get of an index never stored")),
        (p(b"q\x05."), m(2, "stack underflow")),
        (p(b"K"), m(2, "truncated (a length runs past the end)")),
        (
            p(b"K\x01K\x02a."),
            m(6, "appending to something that is not a list"),
        ),
        (
            p(b")K\x02a."),
            m(5, "appending to something that is not a list"),
        ),
        (
            p(b"]K\x01K\x02s."),
            m(7, "setting items of something that is not a dict"),
        ),
        (p(b"}(K\x01u."), m(6, "odd number of items for a dict")),
        (p(b"(K\x01d."), m(5, "odd number of items for a dict")),
        (
            p(b"](K\x01\x90."),
            m(6, "adding items to something that is not a set"),
        ),
        (p(b"K\x01)R."), m(5, "REDUCE without a constructor")),
        (
            p(b"c__builtin__\nset\nK\x01R."),
            m(21, "constructor arguments are not a tuple"),
        ),
        (
            p(b"c__builtin__\nset\nK\x01\x85R."),
            m(22, "constructor called with arguments it does not take"),
        ),
        (
            p(b"c_codecs\nencode\nX\x02\x00\x00\x00abX\x05\x00\x00\x00utf-8\x86R."),
            m(36, "_codecs.encode with an encoding other than latin1"),
        ),
        (
            p(&[
                &b"c_codecs\nencode\nX\x03\x00\x00\x00"[..],
                "\u{2713}".as_bytes(),
                b"X\x06\x00\x00\x00latin1\x86R.",
            ]
            .concat()),
            m(38, "_codecs.encode of something that is not latin-1 text"),
        ),
        (
            p(b"c__builtin__\nbytearray\nK\x01\x85R."),
            m(28, "bytearray of something that is not bytes"),
        ),
        (
            p(b"c__builtin__\nset\n."),
            m(20, "a constructor left uncalled"),
        ),
        (
            p(b"B\xff\xff\xff\xff."),
            m(2, "truncated (a length runs past the end)"),
        ),
        (
            p(b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f."),
            m(2, "truncated (a length runs past the end)"),
        ),
        (p(b"\x8b\xff\xff\xff\xff."), m(2, "negative length")),
        (
            p(b"I12"),
            m(2, "truncated (a text argument has no newline)"),
        ),
        (p(b"Ifoo\n."), m(2, "bad integer")),
        (p(b"Fx\n."), m(2, "float is not a number")),
        (p(b"Np1x\n."), m(3, "memo index is not a number")),
        (
            p(b"X\x01\x00\x00\x00\xff."),
            m(2, "string is not valid UTF-8"),
        ),
        (p(b"V\\ud800\n."), m(2, "string is not valid Unicode")),
        (p(b"V\\u12\n."), m(2, "string is not valid Unicode")),
        (
            p(b"}]K\x01s."),
            m(
                8,
                "a dict key that Python cannot hash (a list, dict or set)",
            ),
        ),
        (
            p(b"\x8f(]\x90."),
            m(
                7,
                "a set element that Python cannot hash (a list, dict or set)",
            ),
        ),
        (p(b"]q\x00h\x00a."), E::Recursive),
        (p(b"]2a."), E::Recursive),
    ];
    let wrong: Vec<String> = cases
        .into_iter()
        .filter_map(|(bytes, expected)| {
            let got = decode(&bytes, &limits());
            (got.as_ref().err() != Some(&expected)).then(|| {
                format!(
                    "{}: {got:?}, expected {expected:?}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn python_semantics_of_references() {
    // A memo reference is the same list: appending to it later shows in both places.
    let later = p(b"(]q\x00h\x00lq\x01h\x00K\x01a0.");
    assert_eq!(
        to_json(&decode(&later, &limits()).unwrap()),
        json!([[1], [1]])
    );
    // DUP pushes the same object again.
    let dup = p(b"N2\x86.");
    assert_eq!(
        decode(&dup, &limits()).unwrap(),
        Value::Tuple(vec![Value::None, Value::None])
    );
    // POP on an empty segment pops the MARK; MEMOIZE numbers entries in order.
    let pop = p(b"K\x07(0\x94h\x00\x86.");
    assert_eq!(to_json(&decode(&pop, &limits()).unwrap()), json!([7, 7]));
    // Protocol 0 text forms: booleans, long integers, floats, raw-unicode-escape strings.
    let text = b"(I01\nI00\nI-12\nL123456789012345678901234567890L\nF-1.5\nFinf\nV\xe9\\u2713\\U0001f39b\\x\nl.";
    assert_eq!(
        to_json(&decode(text, &limits()).unwrap()),
        json!([
            true,
            false,
            -12,
            1.2345678901234568e29,
            -1.5,
            null,
            "\u{e9}\u{2713}\u{1f39b}\\x"
        ])
    );
}

#[test]
fn allowed_constructors_decode_as_data() {
    let set = p(b"c__builtin__\nset\n](K\x01K\x02e\x85R.");
    assert_eq!(to_json(&decode(&set, &limits()).unwrap()), json!([1, 2]));
    let empty = p(b"cbuiltins\nfrozenset\n)R.");
    assert_eq!(
        decode(&empty, &limits()).unwrap(),
        Value::FrozenSet(Default::default())
    );
    // "aÿ" in UTF-8, encoded to latin-1.
    let bytes = p(b"c_codecs\nencode\nX\x03\x00\x00\x00a\xc3\xbfX\x06\x00\x00\x00latin1\x86R.");
    assert_eq!(
        decode(&bytes, &limits()).unwrap(),
        Value::Bytes(vec![b'a', 0xff])
    );
    let bytearray = p(b"cbuiltins\nbytearray\nC\x02hi\x85R.");
    let empty_bytes = p(b"c__builtin__\nbytes\n)R.");
    assert_eq!(
        decode(&empty_bytes, &limits()).unwrap(),
        Value::Bytes(vec![])
    );
    let bytes_with_args = p(b"c__builtin__\nbytes\nK\x01\x85R.");
    assert!(matches!(
        decode(&bytes_with_args, &limits()),
        Err(PickleError::Malformed { .. })
    ));
    assert_eq!(
        decode(&bytearray, &limits()).unwrap(),
        Value::Bytes(b"hi".to_vec())
    );
}

#[test]
fn floods_cost_no_more_than_the_limits() {
    let small = PickleLimits {
        max_items: 10_000,
        max_bytes: 100_000,
        max_depth: 100,
    };
    let work = PickleError::TooMuchWork {
        values: 20_000,
        bytes: 200_000,
    };
    // 30k empty lists pushed and never used.
    let mut flood = p(&[b']'; 30_000]);
    flood.extend_from_slice(b".");
    assert_eq!(decode(&flood, &small).unwrap_err(), work);
    // A memoized list handed to set() again and again (each call copies its elements).
    let mut reduce = p(b"](");
    reduce.extend(std::iter::repeat_n(&b"K\x01"[..], 3000).flatten());
    reduce.extend_from_slice(b"eq\x00c__builtin__\nset\nq\x01");
    for _ in 0..10 {
        reduce.extend_from_slice(b"h\x01h\x00\x85R0");
    }
    reduce.extend_from_slice(b"N.");
    assert_eq!(decode(&reduce, &small).unwrap_err(), work);
    // The same with one call is fine.
    let mut once = p(b"](");
    once.extend(std::iter::repeat_n(&b"K\x01"[..], 3000).flatten());
    once.extend_from_slice(b"eq\x00c__builtin__\nset\nq\x01h\x01h\x00\x85R.");
    assert_eq!(to_json(&decode(&once, &small).unwrap()), json!([1]));
    // Memoized bytes copied by bytearray() again and again.
    let mut copies = p(b"B\x60\xea\x00\x00");
    copies.extend(std::iter::repeat_n(b'x', 60_000));
    copies.extend_from_slice(b"q\x00cbuiltins\nbytearray\nq\x01");
    for _ in 0..3 {
        copies.extend_from_slice(b"h\x01h\x00\x85R0");
    }
    copies.extend_from_slice(b"N.");
    assert_eq!(decode(&copies, &small).unwrap_err(), work);
    // Open MARKs cost nothing here (a stack height each).
    let mut marks = p(&[b'('; 100_000]);
    marks.extend_from_slice(b"N.");
    assert_eq!(decode(&marks, &limits()).unwrap(), Value::None);
}

#[test]
fn serde_pickle_agrees_where_it_can_decode() {
    // Our decoder and serde-pickle's give the same values for every vector serde-pickle decodes.
    let all = vectors();
    let mut compared = 0;
    for v in all.vectors.iter().filter(|v| v.value.is_some()) {
        let bytes = unhex(&v.hex);
        if let Ok(theirs) = serde_pickle::value_from_slice(&bytes, serde_pickle::DeOptions::new()) {
            let ours = decode(&bytes, &limits()).unwrap();
            assert_eq!(
                to_json(&ours),
                to_json(&theirs),
                "{} at protocol {}",
                v.name,
                v.protocol
            );
            compared += 1;
        }
    }
    assert!(compared > 80, "{compared}");
}

#[test]
fn recursion_through_dicts_and_tuples_is_refused() {
    // d = {}; d["self"] = d
    let dict = p(b"}q\x00X\x04\x00\x00\x00selfh\x00s.");
    assert_eq!(refuse(&dict), PickleError::Recursive);
    // A list inside a tuple inside the list.
    let tuple = p(b"]q\x00h\x00\x85a.");
    assert_eq!(refuse(&tuple), PickleError::Recursive);
    // The same list twice is not recursion.
    let twice = p(b"]q\x00h\x00\x86.");
    assert_eq!(
        to_json(&decode(&twice, &limits()).unwrap()),
        json!([[], []])
    );
}

#[test]
fn conversions_to_osc() {
    let value = decode(
        &serde_pickle::value_to_vec(
            &Value::List(vec![
                Value::I64(1),
                Value::I64(1 << 40),
                Value::Int(num_bigint::BigInt::from(u64::MAX) * 2),
                Value::F64(0.5),
                Value::Bool(true),
                Value::None,
                Value::String("go".into()),
                Value::Bytes(vec![1, 2]),
                Value::Tuple(vec![Value::I64(3)]),
                Value::Dict(
                    [(HashableValue::I64(1), Value::Bool(false))]
                        .into_iter()
                        .collect(),
                ),
            ]),
            serde_pickle::SerOptions::new(),
        )
        .unwrap(),
        &limits(),
    )
    .unwrap();
    assert_eq!(
        to_osc_args(&value),
        vec![
            OscArg::Int(1),
            OscArg::Long(1 << 40),
            OscArg::Double(u64::MAX as f64 * 2.0),
            OscArg::Double(0.5),
            OscArg::True,
            OscArg::Nil,
            OscArg::String("go".into()),
            OscArg::Blob(vec![1, 2]),
            OscArg::Array(vec![OscArg::Int(3)]),
            OscArg::String("{\"1\":false}".into()),
        ]
    );
    assert_eq!(to_osc_args(&Value::I64(7)), vec![OscArg::Int(7)]);
    assert_eq!(
        to_osc_args(&Value::Bytes(vec![9])),
        vec![OscArg::Blob(vec![9])]
    );
    assert_eq!(to_osc_args(&Value::Tuple(vec![])), vec![]);
}

/// Our pickles, read by the system python3's `pickle.loads`.
#[test]
fn python_reads_what_we_write() {
    let value = json!({"list": [1, 2.5, null, true, "é"], "big": 18446744073709551615u64, "neg": -3, "nested": {"a": []}});
    let ours = encode(&from_json(&value)).unwrap();
    let blob = encode(&from_osc_args(&[
        OscArg::Blob(vec![0, 255]),
        OscArg::Int(2),
    ]))
    .unwrap();
    let script = format!(
        "import json, pickle\n\
         v = pickle.loads(bytes.fromhex('{}'))\n\
         b = pickle.loads(bytes.fromhex('{}'))\n\
         assert b == [b'\\x00\\xff', 2], b\n\
         print(json.dumps(v, sort_keys=True))",
        hex(&ours),
        hex(&blob)
    );
    let out =
        std::process::Command::new(std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into()))
            .args(["-c", &script])
            .output()
            .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(back, value);
    assert_eq!(&ours[..2], &[0x80, 3], "protocol 3");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

proptest::proptest! {
    #[test]
    fn scan_and_decode_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let small = PickleLimits { max_items: 1000, max_bytes: 10_000, max_depth: 20 };
        let _ = decode(&bytes, &small);
        let mut framed = vec![0x80, 4];
        framed.extend_from_slice(&bytes);
        let _ = decode(&framed, &small);
    }

    #[test]
    fn scan_and_decode_never_panic_on_opcode_soup(
        ops in proptest::collection::vec(proptest::sample::select(b"(.012NKJ]})taeslduq\x00h\x00\x85\x86\x87\x88\x89\x8f\x90\x91\x94RcX\x01\x00\x00\x00".to_vec()), 0..200)
    ) {
        let small = PickleLimits { max_items: 1000, max_bytes: 10_000, max_depth: 20 };
        let mut framed = vec![0x80, 4];
        framed.extend_from_slice(&ops);
        framed.push(b'.');
        let _ = decode(&framed, &small);
    }
}
