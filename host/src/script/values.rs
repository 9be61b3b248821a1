//! Rhai values <-> OSC arguments: what scripts see in `msg.args`, and how `peer.send_osc`, `send`,
//! `peer.send_bytes` and `peer.send` turn script values into bytes.
//!
//! # Received arguments (`msg.args`)
//!
//! | OSC type | Rhai value |
//! |---|---|
//! | `i`, `h` | int |
//! | `f`, `d` | float |
//! | `s`, `S` | string |
//! | `b` | blob |
//! | `T`, `F` | bool |
//! | `N` | `()` |
//! | `I` (infinitum) | float infinity (`1.0 / 0.0`), so re-sending it gives `I` back |
//! | `c` | char |
//! | `[` ... `]` | array |
//! | `t` | `#{seconds: int, fraction: int}` |
//! | `m` | `#{port: int, status: int, data1: int, data2: int}` |
//! | `r` | `#{r: int, g: int, b: int, a: int}` |
//!
//! Re-sending received arguments with the default options gives the same bytes back, except:
//! `h` whose value fits in 32 bits becomes `i`; `d` becomes `f` (rounded to 32 bits); `S` becomes
//! `s`; an `f` holding +infinity becomes `I`. Use the wrappers below (or `use_64bit_precision`) to
//! keep those types.
//!
//! # Sending: `peer.send_osc` options and type inference
//!
//! The options follow TouchDesigner's `Peer.sendOSC`: `#{as_bundle: false,
//! use_non_standard_types: true, use_64bit_precision: false}` are the defaults. The type tag each
//! value is sent as:
//!
//! | value (Rhai) | default | `use_non_standard_types: false` | `use_64bit_precision: true` | `use_non_standard_types: false, use_64bit_precision: true` |
//! |---|---|---|---|---|
//! | small int `5` | `i` | `i` | `h` | error |
//! | small negative int `-7` | `i` | `i` | `h` | error |
//! | large int `5_000_000_000` | `h` | error | `h` | error |
//! | float `1.5` | `f` | `f` | `d` | error |
//! | float beyond 32 bits `1e39` | error | error | `d` | error |
//! | NaN `0.0 / 0.0` | `f` | `f` | `d` | error |
//! | infinity `1.0 / 0.0` | `I` | `f` | `I` | error |
//! | negative infinity `-1.0 / 0.0` | `f` | `f` | `d` | error |
//! | bool `true` | `T` | `i` (1) | `T` | error |
//! | bool `false` | `F` | `i` (0) | `F` | error |
//! | unit `()` | `N` | `i` (0) | `N` | error |
//! | string `"abc"` | `s` | `s` | `s` | error |
//! | blob `blob(2, 0x41)` | `b` | `b` | `b` | error |
//! | char `'x'` | `c` | `s` | `c` | error |
//! | array `[1, 2.5]` | `[if]` | error | `[hd]` | error |
//! | time tag map `#{seconds: 1, fraction: 2}` | `t` | error | `t` | error |
//! | MIDI map `#{port: 0, status: 144, data1: 60, data2: 127}` | `m` | error | `m` | error |
//! | color map `#{r: 255, g: 128, b: 0, a: 255}` | `r` | error | `r` | error |
//! | `int32(5)` | `i` | `i` | `i` | error |
//! | `int64(5)` | `h` | `h` | `h` | error |
//! | `float32(1.5)` | `f` | `f` | `f` | error |
//! | `double(1.5)` | `d` | `d` | `d` | error |
//! | `symbol("abc")` | `S` | `S` | `S` | error |
//! | `impulse()` | `I` | `I` | `I` | error |
//! | `nil()` | `N` | `N` | `N` | error |
//! | `timetag(1, 2)` | `t` | `t` | `t` | error |
//! | `midi(0, 144, 60, 127)` | `m` | `m` | `m` | error |
//! | `rgba(255, 128, 0, 255)` | `r` | `r` | `r` | error |
//!
//! The rules, and the decisions behind the rows TouchDesigner leaves open:
//!
//! - **Integers** (TouchDesigner): 32-bit `i` when the value fits; otherwise 64-bit `h` with
//!   non-standard types, or an error without them. With 64-bit precision always `h`.
//! - **Floats** (TouchDesigner): 32-bit `f`, or `d` with 64-bit precision. A finite float too large
//!   for 32 bits is an error rather than silently becoming infinity (send it as `double(x)` or with
//!   64-bit precision). NaN is sent as a float.
//! - **Infinity**: +infinity is `I` with non-standard types, else a 32-bit float infinity
//!   (TouchDesigner). -infinity is always a float (`f`, or `d` with 64-bit precision): infinitum has
//!   no sign, and a received `I` reads back as +infinity.
//! - **Booleans and `()`** (TouchDesigner): `T`/`F` and `N` with non-standard types, else `i` 1/0 and
//!   `i` 0.
//! - **Strings**: always `s`. A string holding a NUL byte is an error: OSC strings end at the first
//!   NUL, so the receiver would see a cut string (send such bytes as a blob).
//! - **Chars** (TouchDesigner has none; in Python a char is a one-character string): `c` with
//!   non-standard types (the Unicode code point in 32 bits; OSC says ASCII, so receivers may only
//!   understand ASCII), else a one-character `s`.
//! - **Arrays and maps** have no standard OSC type, so without non-standard types they are an error
//!   (like a large integer) rather than being flattened or reinterpreted: type inference never
//!   produces a non-standard tag once `use_non_standard_types` is false. Array elements follow the
//!   same rules as top-level values. A map must have exactly one of the key sets shown, with integer
//!   values in range (seconds and fraction 0..=4294967295, the others 0..=255); any other map is an
//!   error naming its keys.
//! - **Wrappers** are explicit: they are sent as written whatever the options say, so
//!   `int64(x)` is an `h` even without non-standard types. Their ranges are checked when the script
//!   calls them (`int32(3_000_000_000)` is a runtime error at that line).
//! - **64-bit precision without non-standard types** is an error for every value, raised when the
//!   options map is read and again by every conversion: TouchDesigner says 64-bit precision
//!   *requires* non-standard types (`h` and `d` are non-standard OSC), so the combination asks for
//!   something it cannot have. Failing loudly at the first send while the show is programmed beats
//!   guessing which of the two options the programmer meant.
//! - Anything else (functions, timestamps, other custom types) is an error naming the type.
//!
//! # Wrappers
//!
//! Registered by [`register`] as the custom type `osc_typed`:
//! `int32(int)`, `int64(int)`, `float32(int or float)`, `double(int or float)`, `symbol(string)`,
//! `impulse()` (infinitum), `nil()`, `timetag(seconds, fraction)`, `timetag_after(ms)` (the time tag
//! `ms` milliseconds from now on the system clock), `midi(port, status, data1, data2)` and
//! `rgba(r, g, b, a)`. `nil` is a Rhai reserved word, so `nil()` is custom syntax: write it exactly
//! `nil()` (no space between the brackets). Each prints as the call that makes it (`int64(5)`,
//! `symbol("abc")`) in `print`, `${...}` and `to_string()`; `x.tag` is its type tag (`"h"`) and
//! `x.value` the plain value (`5`); `==` compares type and value. Native chars (`'x'`) need no
//! wrapper.
//!
//! # Raw sends
//!
//! - [`bytes_for_send_bytes`] (`peer.send_bytes([...])`): any mix of strings (their UTF-8 bytes),
//!   chars (likewise), blobs and single byte values (ints 0..=255), concatenated with no
//!   terminators.
//! - [`bytes_for_send`] (`peer.send([strings], terminator)`): strings (and chars), each followed by
//!   the terminator; without one a NUL is appended to each, `""` appends nothing.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use patchbay_plugin_api::osc::{Midi, OscArg, Rgba, TimeTag};
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, FLOAT, INT};

/// `peer.send_osc` options (TouchDesigner's keyword arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOscOptions {
    pub as_bundle: bool,
    pub use_non_standard_types: bool,
    pub use_64bit_precision: bool,
}

impl Default for SendOscOptions {
    fn default() -> Self {
        SendOscOptions {
            as_bundle: false,
            use_non_standard_types: true,
            use_64bit_precision: false,
        }
    }
}

impl SendOscOptions {
    /// The option names, as scripts write them.
    pub const KEYS: [&'static str; 3] =
        ["as_bundle", "use_non_standard_types", "use_64bit_precision"];

    /// Errors for the one invalid combination: 64-bit precision without non-standard types.
    pub fn validate(&self) -> Result<(), ValueError> {
        if self.use_64bit_precision && !self.use_non_standard_types {
            return Err(ValueError::Needs64BitNonStandard);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0}")]
    Other(String),
    #[error(
        "use_64bit_precision needs use_non_standard_types (64-bit types are non-standard OSC); set \
         use_non_standard_types: true or drop use_64bit_precision"
    )]
    Needs64BitNonStandard,
    #[error(
        "integer {0} does not fit in 32 bits and use_non_standard_types is false; keep \
         use_non_standard_types on (it is then sent as a 64-bit `h`) or force `h` with int64(x)"
    )]
    IntNeedsNonStandard(i64),
    #[error(
        "int32({0}) is out of range -2147483648..=2147483647; use int64(x) for larger integers"
    )]
    Int32OutOfRange(i64),
    /// The value as written by `{:e}` (`1e39`).
    #[error(
        "{0} does not fit in a 32-bit float; send it as double(x) or with use_64bit_precision: true"
    )]
    Float32Overflow(String),
    #[error("{what} is a non-standard OSC type and use_non_standard_types is false; {instead}")]
    NeedsNonStandard {
        what: &'static str,
        instead: &'static str,
    },
    #[error("string has a NUL byte at byte {index}; OSC strings end at the first NUL, so send these bytes as a blob")]
    StringHasNul { index: usize },
    #[error("{kind} field `{field}` has type `{type_name}`; it must be an integer")]
    FieldNotInt {
        kind: &'static str,
        field: &'static str,
        type_name: String,
    },
    #[error("{kind} field `{field}` is {value}; it must be 0..={max}")]
    FieldOutOfRange {
        kind: &'static str,
        field: &'static str,
        value: i64,
        max: u32,
    },
    #[error(
        "map {0} is not an OSC value; a map must have exactly the keys #{{seconds, fraction}} (time \
         tag), #{{port, status, data1, data2}} (MIDI) or #{{r, g, b, a}} (color)"
    )]
    UnknownMap(String),
    #[error(
        "cannot send a value of type `{0}` as an OSC argument; send ints, floats, strings, chars, \
         bools, (), blobs, arrays, time tag/MIDI/color maps or a wrapper such as int64(x)"
    )]
    Unsupported(String),
    #[error(
        "unknown send_osc option `{0}`; the options are as_bundle, use_non_standard_types and \
         use_64bit_precision"
    )]
    UnknownOption(String),
    #[error("send_osc option `{key}` has type `{type_name}`; it must be true or false")]
    OptionNotBool { key: String, type_name: String },
    #[error(
        "send_bytes item at index {index} is {value}, not a byte; single byte values must be \
         0..=255 (put longer binary data in a blob)"
    )]
    ByteOutOfRange { index: usize, value: i64 },
    #[error(
        "send_bytes item at index {index} has type `{type_name}`; send_bytes takes strings, blobs \
         and byte values 0..=255"
    )]
    SendBytesType { index: usize, type_name: String },
    #[error(
        "send item at index {index} has type `{type_name}`; send takes strings only (use \
         send_bytes for blobs and byte values)"
    )]
    SendType { index: usize, type_name: String },
}

/// A value whose OSC type the script chose with a wrapper (`int64(x)`, `symbol(s)`, ...). It is
/// sent as written whatever the options say. Rhai type name `osc_typed`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedArg(OscArg);

/// The Rhai name of [`TypedArg`].
pub const TYPED_ARG_NAME: &str = "osc_typed";

const TIME_TAG_KEYS: [&str; 2] = ["seconds", "fraction"];
const MIDI_KEYS: [&str; 4] = ["port", "status", "data1", "data2"];
const RGBA_KEYS: [&str; 4] = ["r", "g", "b", "a"];

impl TypedArg {
    /// The OSC argument this wrapper sends.
    pub fn arg(&self) -> &OscArg {
        &self.0
    }

    pub fn into_arg(self) -> OscArg {
        self.0
    }

    pub fn int32(value: INT) -> Result<TypedArg, ValueError> {
        i32::try_from(value)
            .map(|v| TypedArg(OscArg::Int(v)))
            .map_err(|_| ValueError::Int32OutOfRange(value))
    }

    pub fn int64(value: INT) -> TypedArg {
        TypedArg(OscArg::Long(value))
    }

    pub fn float32(value: FLOAT) -> Result<TypedArg, ValueError> {
        to_f32(value).map(|v| TypedArg(OscArg::Float(v)))
    }

    pub fn double(value: FLOAT) -> TypedArg {
        TypedArg(OscArg::Double(value))
    }

    pub fn symbol(value: &str) -> Result<TypedArg, ValueError> {
        check_no_nul(value)?;
        Ok(TypedArg(OscArg::Symbol(value.to_owned())))
    }

    pub fn impulse() -> TypedArg {
        TypedArg(OscArg::Inf)
    }

    pub fn nil() -> TypedArg {
        TypedArg(OscArg::Nil)
    }

    pub fn timetag(seconds: INT, fraction: INT) -> Result<TypedArg, ValueError> {
        Ok(TypedArg(OscArg::Time(TimeTag::new(
            field_u32("time tag", "seconds", seconds)?,
            field_u32("time tag", "fraction", fraction)?,
        ))))
    }

    /// The time tag `ms` milliseconds after `now` (before it when negative).
    pub fn timetag_after(now: SystemTime, ms: INT) -> TypedArg {
        let now_nanos = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        TypedArg(OscArg::Time(TimeTag::from_unix_nanos(
            now_nanos + i128::from(ms) * 1_000_000,
        )))
    }

    pub fn midi(port: INT, status: INT, data1: INT, data2: INT) -> Result<TypedArg, ValueError> {
        Ok(TypedArg(OscArg::Midi(Midi {
            port: field_u8("MIDI", "port", port)?,
            status: field_u8("MIDI", "status", status)?,
            data1: field_u8("MIDI", "data1", data1)?,
            data2: field_u8("MIDI", "data2", data2)?,
        })))
    }

    pub fn rgba(r: INT, g: INT, b: INT, a: INT) -> Result<TypedArg, ValueError> {
        Ok(TypedArg(OscArg::Rgba(Rgba {
            r: field_u8("color", "r", r)?,
            g: field_u8("color", "g", g)?,
            b: field_u8("color", "b", b)?,
            a: field_u8("color", "a", a)?,
        })))
    }

    /// The type tag(s) this wrapper is sent as.
    pub fn tag(&self) -> String {
        let mut tag = String::new();
        self.0.push_type_tags(&mut tag);
        tag
    }
}

/// Prints the call that makes the value: `int64(5)`, `symbol("abc")`, `nil()`.
impl fmt::Display for TypedArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            OscArg::Int(v) => write!(f, "int32({v})"),
            OscArg::Long(v) => write!(f, "int64({v})"),
            OscArg::Float(v) => write!(f, "float32({v:?})"),
            OscArg::Double(v) => write!(f, "double({v:?})"),
            OscArg::Symbol(s) => write!(f, "symbol({s:?})"),
            OscArg::Inf => f.write_str("impulse()"),
            OscArg::Nil => f.write_str("nil()"),
            OscArg::Time(t) => write!(f, "timetag({}, {})", t.seconds, t.fraction),
            OscArg::Midi(m) => write!(
                f,
                "midi({}, {}, {}, {})",
                m.port, m.status, m.data1, m.data2
            ),
            OscArg::Rgba(c) => write!(f, "rgba({}, {}, {}, {})", c.r, c.g, c.b, c.a),
            other => write!(f, "{other:?}"),
        }
    }
}

/// What scripts see in `msg.args` (see the module docs for the mapping).
pub fn osc_to_dynamic(arg: &OscArg) -> Dynamic {
    match arg {
        OscArg::Int(v) => Dynamic::from_int(INT::from(*v)),
        OscArg::Long(v) => Dynamic::from_int(*v),
        OscArg::Float(v) => Dynamic::from_float(FLOAT::from(*v)),
        OscArg::Double(v) => Dynamic::from_float(*v),
        OscArg::String(s) | OscArg::Symbol(s) => Dynamic::from(s.clone()),
        OscArg::Blob(b) => Dynamic::from_blob(b.clone()),
        OscArg::True => Dynamic::TRUE,
        OscArg::False => Dynamic::FALSE,
        OscArg::Nil => Dynamic::UNIT,
        OscArg::Inf => Dynamic::from_float(FLOAT::INFINITY),
        OscArg::Char(c) => Dynamic::from_char(*c),
        OscArg::Array(items) => Dynamic::from_array(items.iter().map(osc_to_dynamic).collect()),
        OscArg::Time(t) => int_map(&TIME_TAG_KEYS, &[t.seconds.into(), t.fraction.into()]),
        OscArg::Midi(m) => int_map(
            &MIDI_KEYS,
            &[m.port, m.status, m.data1, m.data2].map(INT::from),
        ),
        OscArg::Rgba(c) => int_map(&RGBA_KEYS, &[c.r, c.g, c.b, c.a].map(INT::from)),
    }
}

fn int_map(keys: &[&str], values: &[INT]) -> Dynamic {
    let map: Map = keys
        .iter()
        .zip(values)
        .map(|(k, v)| ((*k).into(), Dynamic::from_int(*v)))
        .collect();
    Dynamic::from_map(map)
}

/// A script value as an OSC argument, following TouchDesigner's `sendOSC` rules (see the module
/// docs for the table).
pub fn dynamic_to_osc(value: &Dynamic, options: &SendOscOptions) -> Result<OscArg, ValueError> {
    options.validate()?;
    convert(value, options)
}

fn convert(value: &Dynamic, options: &SendOscOptions) -> Result<OscArg, ValueError> {
    if value.is_shared() {
        return convert(&value.flatten_clone(), options);
    }
    let non_standard = options.use_non_standard_types;
    let wide = options.use_64bit_precision;
    if let Some(typed) = value.read_lock::<TypedArg>() {
        return Ok(typed.0.clone());
    }
    if let Ok(v) = value.as_int() {
        return match i32::try_from(v) {
            _ if wide => Ok(OscArg::Long(v)),
            Ok(small) => Ok(OscArg::Int(small)),
            Err(_) if non_standard => Ok(OscArg::Long(v)),
            Err(_) => Err(ValueError::IntNeedsNonStandard(v)),
        };
    }
    if let Ok(v) = value.as_float() {
        return if v == FLOAT::INFINITY && non_standard {
            Ok(OscArg::Inf)
        } else if wide {
            Ok(OscArg::Double(v))
        } else {
            to_f32(v).map(OscArg::Float)
        };
    }
    if let Ok(v) = value.as_bool() {
        return Ok(match (v, non_standard) {
            (true, true) => OscArg::True,
            (false, true) => OscArg::False,
            (v, false) => OscArg::Int(i32::from(v)),
        });
    }
    if value.is_unit() {
        return Ok(if non_standard {
            OscArg::Nil
        } else {
            OscArg::Int(0)
        });
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        check_no_nul(&s)?;
        return Ok(OscArg::String(s.to_string()));
    }
    if let Ok(c) = value.as_char() {
        if non_standard {
            return Ok(OscArg::Char(c));
        }
        let s = c.to_string();
        check_no_nul(&s)?;
        return Ok(OscArg::String(s));
    }
    if let Ok(b) = value.as_blob_ref() {
        return Ok(OscArg::Blob(b.clone()));
    }
    if let Ok(items) = value.as_array_ref() {
        if !non_standard {
            return Err(ValueError::NeedsNonStandard {
                what: "an array",
                instead:
                    "spread its items into the argument list, or turn use_non_standard_types on",
            });
        }
        return items
            .iter()
            .map(|v| convert(v, options))
            .collect::<Result<_, _>>()
            .map(OscArg::Array);
    }
    if let Ok(map) = value.as_map_ref() {
        return map_to_osc(&map, non_standard);
    }
    Err(ValueError::Unsupported(type_name(value)))
}

fn map_to_osc(map: &Map, non_standard: bool) -> Result<OscArg, ValueError> {
    let has_keys =
        |keys: &[&str]| map.len() == keys.len() && keys.iter().all(|k| map.contains_key(*k));
    let field = |kind: &'static str, key: &'static str| -> Result<INT, ValueError> {
        let v = &map[key];
        v.as_int().map_err(|_| ValueError::FieldNotInt {
            kind,
            field: key,
            type_name: type_name(v),
        })
    };
    if has_keys(&TIME_TAG_KEYS) {
        if !non_standard {
            return Err(ValueError::NeedsNonStandard {
                what: "a time tag map",
                instead: "write timetag(seconds, fraction) to send a `t` anyway, or turn use_non_standard_types on",
            });
        }
        return TypedArg::timetag(
            field("time tag", "seconds")?,
            field("time tag", "fraction")?,
        )
        .map(TypedArg::into_arg);
    }
    if has_keys(&MIDI_KEYS) {
        if !non_standard {
            return Err(ValueError::NeedsNonStandard {
                what: "a MIDI map",
                instead: "write midi(port, status, data1, data2) to send an `m` anyway, or turn use_non_standard_types on",
            });
        }
        let f = |key| field("MIDI", key);
        return TypedArg::midi(f("port")?, f("status")?, f("data1")?, f("data2")?)
            .map(TypedArg::into_arg);
    }
    if has_keys(&RGBA_KEYS) {
        if !non_standard {
            return Err(ValueError::NeedsNonStandard {
                what: "a color map",
                instead: "write rgba(r, g, b, a) to send an `r` anyway, or turn use_non_standard_types on",
            });
        }
        let f = |key| field("color", key);
        return TypedArg::rgba(f("r")?, f("g")?, f("b")?, f("a")?).map(TypedArg::into_arg);
    }
    let keys: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
    Err(ValueError::UnknownMap(format!("#{{{}}}", keys.join(", "))))
}

fn to_f32(v: FLOAT) -> Result<f32, ValueError> {
    let f = v as f32;
    if f.is_infinite() && v.is_finite() {
        return Err(ValueError::Float32Overflow(format!("{v:e}")));
    }
    Ok(f)
}

fn check_no_nul(s: &str) -> Result<(), ValueError> {
    match s.bytes().position(|b| b == 0) {
        Some(index) => Err(ValueError::StringHasNul { index }),
        None => Ok(()),
    }
}

fn field_u32(kind: &'static str, field: &'static str, value: INT) -> Result<u32, ValueError> {
    u32::try_from(value).map_err(|_| ValueError::FieldOutOfRange {
        kind,
        field,
        value,
        max: u32::MAX,
    })
}

fn field_u8(kind: &'static str, field: &'static str, value: INT) -> Result<u8, ValueError> {
    u8::try_from(value).map_err(|_| ValueError::FieldOutOfRange {
        kind,
        field,
        value,
        max: 255,
    })
}

/// The type name a script author knows (`int`, `float`, `string`, `osc_typed`, ...).
fn type_name(value: &Dynamic) -> String {
    if value.is::<TypedArg>() {
        return TYPED_ARG_NAME.to_owned();
    }
    match value.type_name() {
        "i64" => "int",
        "f64" => "float",
        other => other,
    }
    .to_owned()
}

/// `peer.send_osc`'s options map: `#{as_bundle, use_non_standard_types, use_64bit_precision}`, each
/// optional and boolean. Rejects unknown keys and 64-bit precision without non-standard types.
pub fn options_from_map(map: &Map) -> Result<SendOscOptions, ValueError> {
    let mut options = SendOscOptions::default();
    for (key, value) in map {
        let slot = match key.as_str() {
            "as_bundle" => &mut options.as_bundle,
            "use_non_standard_types" => &mut options.use_non_standard_types,
            "use_64bit_precision" => &mut options.use_64bit_precision,
            other => return Err(ValueError::UnknownOption(other.to_owned())),
        };
        *slot = value.as_bool().map_err(|_| ValueError::OptionNotBool {
            key: key.to_string(),
            type_name: type_name(value),
        })?;
    }
    options.validate()?;
    Ok(options)
}

fn rhai_error(e: ValueError) -> Box<EvalAltResult> {
    e.to_string().into()
}

/// Registers the wrapper type and its constructors (see the module docs).
pub fn register(engine: &mut Engine) {
    type R = Result<TypedArg, Box<EvalAltResult>>;
    engine
        .register_type_with_name::<TypedArg>(TYPED_ARG_NAME)
        .register_fn("to_string", |t: &mut TypedArg| t.to_string())
        .register_fn("to_debug", |t: &mut TypedArg| t.to_string())
        .register_get("tag", |t: &mut TypedArg| t.tag())
        .register_get("value", |t: &mut TypedArg| osc_to_dynamic(&t.0))
        .register_fn("==", |a: &mut TypedArg, b: TypedArg| *a == b)
        .register_fn("!=", |a: &mut TypedArg, b: TypedArg| *a != b)
        .register_fn("int32", |v: INT| -> R {
            TypedArg::int32(v).map_err(rhai_error)
        })
        .register_fn("int64", TypedArg::int64)
        .register_fn("float32", |v: FLOAT| -> R {
            TypedArg::float32(v).map_err(rhai_error)
        })
        .register_fn("float32", |v: INT| -> R {
            TypedArg::float32(v as FLOAT).map_err(rhai_error)
        })
        .register_fn("double", TypedArg::double)
        .register_fn("double", |v: INT| TypedArg::double(v as FLOAT))
        .register_fn("symbol", |s: &str| -> R {
            TypedArg::symbol(s).map_err(rhai_error)
        })
        .register_fn("impulse", TypedArg::impulse)
        .register_fn("timetag", |s: INT, f: INT| -> R {
            TypedArg::timetag(s, f).map_err(rhai_error)
        })
        .register_fn("timetag_after", |ms: INT| {
            TypedArg::timetag_after(SystemTime::now(), ms)
        })
        .register_fn("midi", |p: INT, s: INT, d1: INT, d2: INT| -> R {
            TypedArg::midi(p, s, d1, d2).map_err(rhai_error)
        })
        .register_fn("rgba", |r: INT, g: INT, b: INT, a: INT| -> R {
            TypedArg::rgba(r, g, b, a).map_err(rhai_error)
        });
    // `nil` is a reserved word in Rhai, so `nil()` cannot be a function: it is custom syntax
    // (`()` is one token, hence "no space between the brackets").
    engine
        .register_custom_syntax(["nil", "()"], false, |_, _| {
            Ok(Dynamic::from(TypedArg::nil()))
        })
        .expect("`nil()` is valid custom syntax");
}

/// TouchDesigner `sendBytes`: strings and chars (UTF-8), blobs and single byte values (ints
/// 0..=255), concatenated with no terminators.
pub fn bytes_for_send_bytes(values: &Array) -> Result<Vec<u8>, ValueError> {
    let mut out = Vec::new();
    for (index, value) in values.iter().enumerate() {
        let value = value.flatten_clone();
        if let Some(text) = text_bytes(&value) {
            out.extend_from_slice(&text);
        } else if let Ok(v) = value.as_int() {
            out.push(u8::try_from(v).map_err(|_| ValueError::ByteOutOfRange { index, value: v })?);
        } else if value.is_blob() {
            out.extend_from_slice(&value.into_blob().unwrap_or_default());
        } else {
            return Err(ValueError::SendBytesType {
                index,
                type_name: type_name(&value),
            });
        }
    }
    Ok(out)
}

/// TouchDesigner `send`: strings (and chars), each followed by `terminator`; `None` appends a NUL to
/// each, `Some("")` nothing.
pub fn bytes_for_send(strings: &Array, terminator: Option<&str>) -> Result<Vec<u8>, ValueError> {
    let terminator = terminator.map_or(&b"\0"[..], str::as_bytes);
    let mut out = Vec::new();
    for (index, value) in strings.iter().enumerate() {
        let value = value.flatten_clone();
        let text = text_bytes(&value).ok_or_else(|| ValueError::SendType {
            index,
            type_name: type_name(&value),
        })?;
        out.extend_from_slice(&text);
        out.extend_from_slice(terminator);
    }
    Ok(out)
}

/// The UTF-8 bytes of a string or char.
fn text_bytes(value: &Dynamic) -> Option<Vec<u8>> {
    if let Ok(c) = value.as_char() {
        return Some(c.to_string().into_bytes());
    }
    let s = value.as_immutable_string_ref().ok()?;
    Some(s.as_bytes().to_vec())
}
