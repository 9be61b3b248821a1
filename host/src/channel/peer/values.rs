//! Payloads of peer connections: decoding what arrives and encoding what we send, by data type,
//! and converting values to and from OSC arguments. Pure code.
//!
//! # What peerpy sends (peerpy 1.2.2, `peerpy/data.py`)
//!
//! - `json`: `json.dumps({"data": value}).encode("utf-8")`, e.g. `{"data": [1, 2.5, null]}`. The
//!   receiver takes `json.loads(payload)["data"]` (other keys ignored). Python writes `NaN`,
//!   `Infinity` and `-Infinity` for such floats, which JSON has no words for: we read them as
//!   `null` rather than refuse the whole message. A UTF-8 byte order mark is skipped, as Python does.
//! - `raw`: `pickle.dumps(value)`, see [`super::pickle`].
//! - `bytes`: the bytes as they are. For patchbay these are OSC packets, routed like any other;
//!   this module does not touch them.
//!
//! # Values as OSC arguments
//!
//! A value arriving on a json or raw connection becomes one message (at an address the channel
//! configures) whose arguments are:
//!
//! | value                        | OSC                                                       |
//! |------------------------------|-----------------------------------------------------------|
//! | array (list, tuple, set) at the top | one argument per element (`{"data": [1, "a"]}` is `,is`; `[]` is no argument) |
//! | array inside an array        | an OSC array `[` ... `]`                                  |
//! | integer                      | `i` if it fits 32 bits, else `h` (64 bits), else `d`       |
//! | float                        | `d` (float64)                                             |
//! | true / false / null          | `T` / `F` / `N`                                           |
//! | string                       | `s` (a NUL cuts it, as in any OSC string)                 |
//! | bytes (pickles only)         | `b`                                                       |
//! | object (dict)                | `s` holding the object's compact JSON text                |
//!
//! The top-level array is flattened because that is how OSC senders think of a message ("this
//! address with these arguments", as python-osc sends a list); nested arrays keep their shape. The
//! full value stays available to scripts as a [`serde_json::Value`] ([`Decoded::value`]).
//!
//! The other way ([`osc_args_to_json`], for forwarding an OSC message to a json or raw peer): the
//! arguments as a JSON array; `i h f d` numbers (NaN and infinities null), `s S c` strings, `T F`
//! booleans, `N I` null, `b` an array of byte values, `t` seconds since the Unix epoch, `r` the
//! 32-bit RGBA number, `m` `[port, status, data1, data2]`, arrays as arrays. [`json_to_osc_args`]
//! of that array gives back the arguments for `i h d s T F N` and arrays.

use patchbay_plugin_api::osc::OscArg;

use super::pickle::{self, PickleError, PickleLimits};
use super::wire::DataType;

/// Why a payload could not be decoded, or a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("json payload does not parse: {0}")]
    Json(String),
    #[error("json payload is not an object like {{\"data\": ...}}")]
    NotAnObject,
    #[error("json payload has no `data` key")]
    NoData,
    #[error(transparent)]
    Pickle(#[from] PickleError),
    #[error("a bytes connection carries bytes, not values")]
    BytesConnection,
}

/// A value from a json or raw payload: for scripts, and as the routed message's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub value: serde_json::Value,
    pub args: Vec<OscArg>,
}

/// Decodes a `json` payload to the value under `data`.
pub fn decode_json(payload: &[u8]) -> Result<serde_json::Value, ValueError> {
    let payload = payload.strip_prefix(b"\xef\xbb\xbf").unwrap_or(payload);
    let envelope: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(first) => match python_floats_as_null(payload) {
            Some(rewritten) => {
                serde_json::from_str(&rewritten).map_err(|_| ValueError::Json(first.to_string()))?
            }
            None => return Err(ValueError::Json(first.to_string())),
        },
    };
    match envelope {
        serde_json::Value::Object(mut map) => map.remove("data").ok_or(ValueError::NoData),
        _ => Err(ValueError::NotAnObject),
    }
}

/// Python's `NaN`, `Infinity` and `-Infinity` outside strings replaced by `null`; `None` when the
/// text has none of them (or is not UTF-8), so the first parse error stands.
fn python_floats_as_null(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else {
            let word = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|w| rest.starts_with(w));
            if let Some(word) = word {
                out.push_str("null");
                rest = &rest[word.len()..];
                changed = true;
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    changed.then_some(out)
}

/// Decodes a `json` payload to a value and its OSC arguments.
pub fn decode_json_payload(payload: &[u8]) -> Result<Decoded, ValueError> {
    let value = decode_json(payload)?;
    let args = json_to_osc_args(&value);
    Ok(Decoded { value, args })
}

/// Decodes a `raw` payload (a pickle of plain data) to a value and its OSC arguments.
pub fn decode_raw_payload(payload: &[u8], limits: &PickleLimits) -> Result<Decoded, ValueError> {
    let value = pickle::decode(payload, limits)?;
    Ok(Decoded {
        value: pickle::to_json(&value),
        args: pickle::to_osc_args(&value),
    })
}

/// `{"data": value}` as peerpy writes it (`json.dumps` puts a space after `:`).
pub fn encode_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = b"{\"data\": ".to_vec();
    // Writing a Value to a Vec cannot fail (its keys are strings).
    let _ = serde_json::to_writer(&mut out, value);
    out.push(b'}');
    out
}

/// The payload for sending `value` on a connection of `data_type`: the json envelope, a pickle,
/// or an error for bytes connections (they carry OSC packets or bytes, sent as they are).
pub fn encode_value(data_type: DataType, value: &serde_json::Value) -> Result<Vec<u8>, ValueError> {
    match data_type {
        DataType::Json => Ok(encode_json(value)),
        DataType::Raw => Ok(pickle::encode(&pickle::from_json(value))?),
        DataType::Bytes => Err(ValueError::BytesConnection),
    }
}

/// The payload for forwarding an OSC message's arguments to a json or raw peer (see the module
/// docs); bytes connections get the OSC packet itself instead.
pub fn encode_osc_args(data_type: DataType, args: &[OscArg]) -> Result<Vec<u8>, ValueError> {
    match data_type {
        DataType::Json => Ok(encode_json(&osc_args_to_json(args))),
        DataType::Raw => Ok(pickle::encode(&pickle::from_osc_args(args))?),
        DataType::Bytes => Err(ValueError::BytesConnection),
    }
}

/// A value as OSC arguments: a top-level array is one argument per element, anything else one
/// argument (see the module docs).
pub fn json_to_osc_args(value: &serde_json::Value) -> Vec<OscArg> {
    match value {
        serde_json::Value::Array(items) => items.iter().map(json_to_osc_arg).collect(),
        other => vec![json_to_osc_arg(other)],
    }
}

fn json_to_osc_arg(value: &serde_json::Value) -> OscArg {
    use serde_json::Value as J;
    match value {
        J::Null => OscArg::Nil,
        J::Bool(true) => OscArg::True,
        J::Bool(false) => OscArg::False,
        J::Number(n) => match n.as_i64() {
            Some(i) => int_arg(i),
            None => OscArg::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => OscArg::String(s.clone()),
        J::Array(items) => OscArg::Array(items.iter().map(json_to_osc_arg).collect()),
        J::Object(_) => OscArg::String(value.to_string()),
    }
}

/// `i` when it fits 32 bits, else `h`.
pub(crate) fn int_arg(i: i64) -> OscArg {
    match i32::try_from(i) {
        Ok(small) => OscArg::Int(small),
        Err(_) => OscArg::Long(i),
    }
}

/// OSC arguments as a JSON array (see the module docs).
pub fn osc_args_to_json(args: &[OscArg]) -> serde_json::Value {
    serde_json::Value::Array(args.iter().map(osc_arg_to_json).collect())
}

pub(crate) fn osc_arg_to_json(arg: &OscArg) -> serde_json::Value {
    use serde_json::Value as J;
    match arg {
        OscArg::Int(i) => J::from(*i),
        OscArg::Long(i) => J::from(*i),
        // The shortest decimal that reads back as the same f32 (0.1, not 0.10000000149011612).
        OscArg::Float(f) => float(f.to_string().parse().unwrap_or(f64::NAN)),
        OscArg::Double(d) => float(*d),
        OscArg::String(s) | OscArg::Symbol(s) => J::String(s.clone()),
        OscArg::Char(c) => J::String(c.to_string()),
        OscArg::Blob(b) => J::Array(b.iter().map(|&x| J::from(x)).collect()),
        OscArg::Time(t) => float(t.to_unix_secs_f64()),
        OscArg::Rgba(c) => J::from(u32::from_be_bytes([c.r, c.g, c.b, c.a])),
        OscArg::Midi(m) => J::Array(
            [m.port, m.status, m.data1, m.data2]
                .into_iter()
                .map(J::from)
                .collect(),
        ),
        OscArg::True => J::Bool(true),
        OscArg::False => J::Bool(false),
        OscArg::Nil | OscArg::Inf => J::Null,
        OscArg::Array(items) => J::Array(items.iter().map(osc_arg_to_json).collect()),
    }
}

fn float(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_plugin_api::osc::{Midi, Rgba, TimeTag};
    use serde_json::json;

    #[test]
    fn decodes_what_peerpy_sends() {
        // Captured from peerpy 1.2.2 (Connection.send on a json connection).
        let payload = br#"{"data": {"a": [1, 2.5, null, true, "x"], "nan": NaN}}"#;
        let value = decode_json(payload).unwrap();
        assert_eq!(value, json!({"a": [1, 2.5, null, true, "x"], "nan": null}));
        assert_eq!(
            decode_json(br#"{"data": "second"}"#).unwrap(),
            json!("second")
        );
        assert_eq!(
            decode_json(br#"{"data": null, "other": 1}"#).unwrap(),
            json!(null)
        );
        assert_eq!(decode_json(b"\xef\xbb\xbf{\"data\": 5}").unwrap(), json!(5));
    }

    #[test]
    fn python_float_words_become_null_outside_strings_only() {
        let v =
            decode_json(br#"{"data": [NaN, Infinity, -Infinity, "NaN", "a \"NaN\" Infinity", 1]}"#)
                .unwrap();
        assert_eq!(v, json!([null, null, null, "NaN", "a \"NaN\" Infinity", 1]));
        let v = decode_json(br#"{"data": {"NaN": -Infinity}}"#).unwrap();
        assert_eq!(v, json!({"NaN": null}));
    }

    #[test]
    fn refuses_bad_json_payloads() {
        for (payload, message) in [
            (
                &b"{\"data\": "[..],
                "json payload does not parse: EOF while parsing a value at line 1 column 9",
            ),
            (
                b"",
                "json payload does not parse: EOF while parsing a value at line 1 column 0",
            ),
            (
                b"\xff\xfe",
                "json payload does not parse: expected value at line 1 column 1",
            ),
            (
                b"[1, 2]",
                "json payload is not an object like {\"data\": ...}",
            ),
            (b"{\"dat\": 1}", "json payload has no `data` key"),
            (
                b"{\"data\": NaNa}",
                "json payload does not parse: expected value at line 1 column 10",
            ),
        ] {
            assert_eq!(
                decode_json(payload).unwrap_err().to_string(),
                message,
                "{payload:?}"
            );
        }
        // Deep nesting is refused by serde_json's recursion limit, not by a stack overflow.
        let deep = format!(
            "{{\"data\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(
            decode_json(deep.as_bytes()),
            Err(ValueError::Json(_))
        ));
    }

    #[test]
    fn json_to_osc_arguments() {
        let args = json_to_osc_args(
            &json!([1, -2147483649i64, 2.5, true, false, null, "go", [1, [2]], {"k": 1}, 18446744073709551615u64]),
        );
        assert_eq!(
            args,
            vec![
                OscArg::Int(1),
                OscArg::Long(-2147483649),
                OscArg::Double(2.5),
                OscArg::True,
                OscArg::False,
                OscArg::Nil,
                OscArg::String("go".into()),
                OscArg::Array(vec![OscArg::Int(1), OscArg::Array(vec![OscArg::Int(2)])]),
                OscArg::String("{\"k\":1}".into()),
                OscArg::Double(18446744073709551615.0),
            ]
        );
        assert_eq!(json_to_osc_args(&json!(7)), vec![OscArg::Int(7)]);
        assert_eq!(
            json_to_osc_args(&json!("x")),
            vec![OscArg::String("x".into())]
        );
        assert_eq!(json_to_osc_args(&json!([])), vec![]);
        assert_eq!(
            json_to_osc_args(&json!({"a": [1]})),
            vec![OscArg::String("{\"a\":[1]}".into())]
        );
        assert_eq!(json_to_osc_args(&json!(1.0)), vec![OscArg::Double(1.0)]);
    }

    #[test]
    fn osc_arguments_to_json_and_back() {
        let args = vec![
            OscArg::Int(3),
            OscArg::Long(1 << 40),
            OscArg::Double(-0.25),
            OscArg::String("s".into()),
            OscArg::True,
            OscArg::False,
            OscArg::Nil,
            OscArg::Array(vec![OscArg::Int(1), OscArg::String("x".into())]),
        ];
        assert_eq!(json_to_osc_args(&osc_args_to_json(&args)), args);
        let others = osc_args_to_json(&[
            OscArg::Float(0.1),
            OscArg::Float(f32::NAN),
            OscArg::Double(f64::INFINITY),
            OscArg::Symbol("sym".into()),
            OscArg::Char('c'),
            OscArg::Blob(vec![0, 255]),
            OscArg::Time(TimeTag::from_unix_secs_f64(1.5)),
            OscArg::Rgba(Rgba {
                r: 1,
                g: 2,
                b: 3,
                a: 4,
            }),
            OscArg::Midi(Midi {
                port: 0,
                status: 0x90,
                data1: 64,
                data2: 100,
            }),
            OscArg::Inf,
        ]);
        assert_eq!(
            others,
            json!([
                0.1,
                null,
                null,
                "sym",
                "c",
                [0, 255],
                1.5,
                0x01020304,
                [0, 144, 64, 100],
                null
            ])
        );
    }

    #[test]
    fn encodes_like_peerpy() {
        assert_eq!(
            encode_json(&json!([1, "a"])),
            br#"{"data": [1,"a"]}"#.to_vec()
        );
        assert_eq!(
            encode_value(DataType::Json, &json!(null)).unwrap(),
            br#"{"data": null}"#.to_vec()
        );
        assert_eq!(
            encode_value(DataType::Bytes, &json!(1)).unwrap_err(),
            ValueError::BytesConnection
        );
        assert_eq!(
            encode_osc_args(DataType::Bytes, &[])
                .unwrap_err()
                .to_string(),
            "a bytes connection carries bytes, not values"
        );
        // Round trips through our own decoders.
        let v =
            json!({"list": [1, 2.5, null, true, "é"], "big": 18446744073709551615u64, "neg": -3});
        assert_eq!(
            decode_json(&encode_value(DataType::Json, &v).unwrap()).unwrap(),
            v
        );
        let decoded = decode_raw_payload(
            &encode_value(DataType::Raw, &v).unwrap(),
            &PickleLimits::default(),
        )
        .unwrap();
        assert_eq!(decoded.value, v);
        let args = vec![
            OscArg::Int(1),
            OscArg::Blob(vec![1, 2]),
            OscArg::String("x".into()),
        ];
        let decoded = decode_raw_payload(
            &encode_osc_args(DataType::Raw, &args).unwrap(),
            &PickleLimits::default(),
        )
        .unwrap();
        assert_eq!(decoded.args, args);
        let decoded =
            decode_json_payload(&encode_osc_args(DataType::Json, &args).unwrap()).unwrap();
        assert_eq!(decoded.value, json!([1, [1, 2], "x"]));
    }
}
