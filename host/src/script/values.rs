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
//! `h` whose value fits in 32 bits becomes `i`; `d` becomes `f` (rounded to 32 bits, and an error
//! beyond the 32-bit range); `S` becomes `s`; an `f` holding +infinity becomes `I`. Use the wrappers below (or `use_64bit_precision`) to
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
//! Rust code printing script values (`log_info`) should use [`display`], since `Dynamic`'s own
//! `Display` shows a custom type's Rust path.
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

use patchbay_plugin_api::osc::{ArgRef, ArgRefs, Midi, OscArg, Rgba, TimeTag};
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

/// A script value as `log_info` should print it: like Rhai's `to_string`, except that wrappers
/// (also inside arrays and maps) print as the call that makes them (`int64(5)`), where
/// `Dynamic`'s own `Display` would print the Rust type's path.
pub fn display(value: &Dynamic) -> String {
    let value = value.flatten_clone();
    if value.is_array() || value.is_map() {
        return display_nested(&value);
    }
    if let Some(typed) = value.read_lock::<TypedArg>() {
        return typed.to_string();
    }
    value.to_string()
}

/// Inside arrays and maps: as Rhai prints them (strings quoted), wrappers as calls.
fn display_nested(value: &Dynamic) -> String {
    let value = value.flatten_clone();
    if let Some(typed) = value.read_lock::<TypedArg>() {
        return typed.to_string();
    }
    if let Ok(items) = value.as_array_ref() {
        let items: Vec<String> = items.iter().map(display_nested).collect();
        return format!("[{}]", items.join(", "));
    }
    if let Ok(map) = value.as_map_ref() {
        let fields: Vec<String> = map
            .iter()
            .map(|(k, v)| format!("{:?}: {}", k.as_str(), display_nested(v)))
            .collect();
        return format!("#{{{}}}", fields.join(", "));
    }
    if value.is_char() {
        return value.to_string(); // as Rhai prints chars inside arrays: unquoted
    }
    format!("{value:?}")
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

/// `msg.args` straight from a message's arguments: the values [`osc_to_dynamic`] gives for each
/// decoded argument, without making the owned `OscArg`s first (numbers, the most common arguments,
/// need no allocation at all).
pub fn args_to_dynamic(refs: &mut ArgRefs<'_>) -> Array {
    let mut out = Array::new();
    while let Some(arg) = refs.next() {
        out.push(match arg {
            ArgRef::ArrayStart => Dynamic::from_array(args_to_dynamic(refs)),
            ArgRef::ArrayEnd => break,
            ArgRef::Int(v) => Dynamic::from_int(INT::from(v)),
            ArgRef::Long(v) => Dynamic::from_int(v),
            ArgRef::Float(v) => Dynamic::from_float(FLOAT::from(v)),
            ArgRef::Double(v) => Dynamic::from_float(v),
            scalar => match scalar.to_owned_scalar() {
                Some(owned) => osc_to_dynamic(&owned),
                None => continue,
            },
        });
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_plugin_api::osc::{decode, encode, encode_message, OscMessage, OscPacket};

    const DEFAULT: SendOscOptions = SendOscOptions {
        as_bundle: false,
        use_non_standard_types: true,
        use_64bit_precision: false,
    };
    const STANDARD: SendOscOptions = SendOscOptions {
        as_bundle: false,
        use_non_standard_types: false,
        use_64bit_precision: false,
    };
    const WIDE: SendOscOptions = SendOscOptions {
        as_bundle: false,
        use_non_standard_types: true,
        use_64bit_precision: true,
    };
    const BOTH: SendOscOptions = SendOscOptions {
        as_bundle: false,
        use_non_standard_types: false,
        use_64bit_precision: true,
    };
    /// The columns of the module-doc table, in order.
    const COLUMNS: [SendOscOptions; 4] = [DEFAULT, STANDARD, WIDE, BOTH];

    #[test]
    fn args_from_the_bytes_are_the_decoded_args() {
        let message = OscMessage::new(
            "/all",
            vec![
                OscArg::Int(-3),
                OscArg::Long(1 << 40),
                OscArg::Float(0.5),
                OscArg::Double(0.25),
                OscArg::String("text".into()),
                OscArg::Symbol("sym".into()),
                OscArg::Blob(vec![1, 2, 3]),
                OscArg::True,
                OscArg::False,
                OscArg::Nil,
                OscArg::Inf,
                OscArg::Char('x'),
                OscArg::Time(TimeTag::new(5, 6)),
                OscArg::Midi(Midi {
                    port: 1,
                    status: 0x90,
                    data1: 60,
                    data2: 100,
                }),
                OscArg::Rgba(Rgba {
                    r: 1,
                    g: 2,
                    b: 3,
                    a: 4,
                }),
                OscArg::Array(vec![
                    OscArg::Int(1),
                    OscArg::Array(vec![OscArg::Float(2.0)]),
                ]),
                OscArg::Int(7),
            ],
        );
        let bytes = encode_message(&message);
        let Ok(patchbay_plugin_api::osc::PacketRef::Message(parsed)) =
            patchbay_plugin_api::osc::PacketRef::parse(&bytes, &Default::default())
        else {
            panic!("the message parses");
        };
        let direct = args_to_dynamic(&mut parsed.arg_refs());
        let decoded: Array = parsed.args().iter().map(osc_to_dynamic).collect();
        assert_eq!(format!("{direct:?}"), format!("{decoded:?}"));
        assert_eq!(direct.len(), message.args.len());
    }

    fn engine() -> Engine {
        let mut engine = Engine::new();
        register(&mut engine);
        engine
    }

    fn eval(expr: &str) -> Dynamic {
        engine()
            .eval::<Dynamic>(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    fn eval_err(expr: &str) -> String {
        match engine().eval::<Dynamic>(expr) {
            Ok(v) => panic!("{expr} should fail, gave {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn send(expr: &str, options: SendOscOptions) -> Result<OscArg, ValueError> {
        dynamic_to_osc(&eval(expr), &options)
    }

    fn send_err(expr: &str, options: SendOscOptions) -> String {
        match send(expr, options) {
            Ok(arg) => panic!("{expr} with {options:?} should fail, gave {arg:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// `/a` with one argument, encoded.
    fn wire(arg: OscArg) -> Vec<u8> {
        encode_message(&OscMessage::new("/a", vec![arg]))
    }

    /// Hand-written expected bytes: the address `/a`, then `tags` (comma, tags and padding as
    /// written) and `data`.
    fn expected(tags: &[u8], data: &[u8]) -> Vec<u8> {
        [&b"/a\0\0"[..], tags, data].concat()
    }

    /// One row of the module-doc send table: the Rhai expression and, per column, the type tags or
    /// `None` for "error".
    struct Row {
        expr: String,
        cells: Vec<Option<String>>,
    }

    fn backticked(cell: &str) -> Option<&str> {
        let start = cell.find('`')? + 1;
        let len = cell[start..].find('`')?;
        Some(&cell[start..start + len])
    }

    fn doc_table() -> Vec<Row> {
        let source = include_str!("values.rs");
        let mut lines = source
            .lines()
            .skip_while(|l| !l.starts_with("//! | value (Rhai) |"));
        let header = lines.next().expect("the send table's header");
        assert_eq!(header.matches('|').count(), 6, "{header}");
        lines
            .skip(1) // |---|
            .take_while(|l| l.starts_with("//! |"))
            .map(|line| {
                let cells: Vec<&str> = line["//! ".len()..]
                    .trim()
                    .trim_matches('|')
                    .split('|')
                    .map(str::trim)
                    .collect();
                assert_eq!(cells.len(), 5, "{line}");
                let expr = backticked(cells[0]).unwrap_or_else(|| panic!("no expression: {line}"));
                let cells = cells[1..]
                    .iter()
                    .map(|c| match *c {
                        "error" => None,
                        c => Some(
                            backticked(c)
                                .unwrap_or_else(|| panic!("bad cell {c}: {line}"))
                                .to_owned(),
                        ),
                    })
                    .collect();
                Row {
                    expr: expr.to_owned(),
                    cells,
                }
            })
            .collect()
    }

    #[test]
    fn every_row_of_the_doc_table_holds() {
        let rows = doc_table();
        assert_eq!(rows.len(), 28, "rows parsed from the module docs");
        for row in &rows {
            for (options, cell) in COLUMNS.iter().zip(&row.cells) {
                let result = send(&row.expr, *options);
                let what = format!("`{}` with {options:?}", row.expr);
                match (cell, result) {
                    (None, Err(_)) => {}
                    (None, Ok(arg)) => panic!("{what}: expected an error, got {arg:?}"),
                    (Some(tags), Err(e)) => panic!("{what}: expected `{tags}`, got error: {e}"),
                    (Some(tags), Ok(arg)) => {
                        let message = OscMessage::new("/a", vec![arg]);
                        assert_eq!(&message.type_tags(), tags, "{what}");
                        // The bytes are valid OSC and decode back to the same bytes.
                        let bytes = encode_message(&message);
                        let decoded = decode(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert!(matches!(decoded, OscPacket::Message(_)), "{what}");
                        assert_eq!(encode(&decoded), bytes, "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_64bit_without_non_standard_column_is_all_errors_with_one_message() {
        for row in doc_table() {
            assert_eq!(
                send_err(&row.expr, BOTH),
                "use_64bit_precision needs use_non_standard_types (64-bit types are non-standard \
                 OSC); set use_non_standard_types: true or drop use_64bit_precision",
                "{}",
                row.expr
            );
        }
    }

    /// Every distinct tag and every fallback, byte by byte against hand-written bytes.
    #[test]
    fn bytes_on_the_wire() {
        let cases: Vec<(&str, SendOscOptions, Vec<u8>)> = vec![
            ("5", DEFAULT, expected(b",i\0\0", &[0, 0, 0, 5])),
            (
                "-7",
                DEFAULT,
                expected(b",i\0\0", &[0xff, 0xff, 0xff, 0xf9]),
            ),
            (
                "2147483647",
                STANDARD,
                expected(b",i\0\0", &[0x7f, 0xff, 0xff, 0xff]),
            ),
            (
                "-2147483648",
                STANDARD,
                expected(b",i\0\0", &[0x80, 0, 0, 0]),
            ),
            ("5", WIDE, expected(b",h\0\0", &[0, 0, 0, 0, 0, 0, 0, 5])),
            (
                "5_000_000_000",
                DEFAULT,
                expected(b",h\0\0", &[0, 0, 0, 1, 0x2a, 0x05, 0xf2, 0]),
            ),
            (
                "2147483648",
                DEFAULT,
                expected(b",h\0\0", &[0, 0, 0, 0, 0x80, 0, 0, 0]),
            ),
            (
                "-2147483649",
                DEFAULT,
                expected(b",h\0\0", &[0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]),
            ),
            ("1.5", DEFAULT, expected(b",f\0\0", &[0x3f, 0xc0, 0, 0])),
            ("1.5", STANDARD, expected(b",f\0\0", &[0x3f, 0xc0, 0, 0])),
            (
                "1.5",
                WIDE,
                expected(b",d\0\0", &[0x3f, 0xf8, 0, 0, 0, 0, 0, 0]),
            ),
            (
                "0.0 / 0.0",
                DEFAULT,
                expected(b",f\0\0", &[0xff, 0xc0, 0, 0]),
            ),
            ("1.0 / 0.0", DEFAULT, expected(b",I\0\0", &[])),
            ("1.0 / 0.0", WIDE, expected(b",I\0\0", &[])),
            (
                "1.0 / 0.0",
                STANDARD,
                expected(b",f\0\0", &[0x7f, 0x80, 0, 0]),
            ),
            (
                "-1.0 / 0.0",
                DEFAULT,
                expected(b",f\0\0", &[0xff, 0x80, 0, 0]),
            ),
            (
                "-1.0 / 0.0",
                WIDE,
                expected(b",d\0\0", &[0xff, 0xf0, 0, 0, 0, 0, 0, 0]),
            ),
            ("true", DEFAULT, expected(b",T\0\0", &[])),
            ("false", DEFAULT, expected(b",F\0\0", &[])),
            ("true", STANDARD, expected(b",i\0\0", &[0, 0, 0, 1])),
            ("false", STANDARD, expected(b",i\0\0", &[0, 0, 0, 0])),
            ("()", DEFAULT, expected(b",N\0\0", &[])),
            ("()", STANDARD, expected(b",i\0\0", &[0, 0, 0, 0])),
            ("\"abc\"", DEFAULT, expected(b",s\0\0", b"abc\0")),
            ("\"abcd\"", STANDARD, expected(b",s\0\0", b"abcd\0\0\0\0")),
            ("\"\"", DEFAULT, expected(b",s\0\0", b"\0\0\0\0")),
            ("\"é\"", DEFAULT, expected(b",s\0\0", &[0xc3, 0xa9, 0, 0])),
            (
                "blob(2, 0x41)",
                DEFAULT,
                expected(b",b\0\0", &[0, 0, 0, 2, 0x41, 0x41, 0, 0]),
            ),
            ("blob()", STANDARD, expected(b",b\0\0", &[0, 0, 0, 0])),
            ("'x'", DEFAULT, expected(b",c\0\0", &[0, 0, 0, 0x78])),
            ("'é'", DEFAULT, expected(b",c\0\0", &[0, 0, 0, 0xe9])),
            ("'x'", STANDARD, expected(b",s\0\0", b"x\0\0\0")),
            (
                "[1, 2.5]",
                DEFAULT,
                expected(b",[if]\0\0\0", &[0, 0, 0, 1, 0x40, 0x20, 0, 0]),
            ),
            (
                "[1, 2.5]",
                WIDE,
                expected(
                    b",[hd]\0\0\0",
                    &[0, 0, 0, 0, 0, 0, 0, 1, 0x40, 0x04, 0, 0, 0, 0, 0, 0],
                ),
            ),
            ("[]", DEFAULT, expected(b",[]\0", &[])),
            (
                "[1, [true, ()]]",
                DEFAULT,
                expected(b",[i[TN]]\0\0\0\0", &[0, 0, 0, 1]),
            ),
            (
                "#{seconds: 1, fraction: 2}",
                DEFAULT,
                expected(b",t\0\0", &[0, 0, 0, 1, 0, 0, 0, 2]),
            ),
            (
                "#{seconds: 4294967295, fraction: 4294967295}",
                DEFAULT,
                expected(b",t\0\0", &[0xff; 8]),
            ),
            (
                "#{port: 0, status: 144, data1: 60, data2: 127}",
                DEFAULT,
                expected(b",m\0\0", &[0, 0x90, 0x3c, 0x7f]),
            ),
            (
                "#{r: 255, g: 128, b: 0, a: 255}",
                DEFAULT,
                expected(b",r\0\0", &[0xff, 0x80, 0, 0xff]),
            ),
            ("int32(5)", WIDE, expected(b",i\0\0", &[0, 0, 0, 5])),
            (
                "int32(-2147483648)",
                DEFAULT,
                expected(b",i\0\0", &[0x80, 0, 0, 0]),
            ),
            (
                "int64(5)",
                STANDARD,
                expected(b",h\0\0", &[0, 0, 0, 0, 0, 0, 0, 5]),
            ),
            ("int64(-1)", DEFAULT, expected(b",h\0\0", &[0xff; 8])),
            (
                "float32(1.5)",
                WIDE,
                expected(b",f\0\0", &[0x3f, 0xc0, 0, 0]),
            ),
            ("float32(2)", DEFAULT, expected(b",f\0\0", &[0x40, 0, 0, 0])),
            (
                "float32(1.0 / 0.0)",
                DEFAULT,
                expected(b",f\0\0", &[0x7f, 0x80, 0, 0]),
            ),
            (
                "double(1.5)",
                STANDARD,
                expected(b",d\0\0", &[0x3f, 0xf8, 0, 0, 0, 0, 0, 0]),
            ),
            (
                "double(2)",
                DEFAULT,
                expected(b",d\0\0", &[0x40, 0, 0, 0, 0, 0, 0, 0]),
            ),
            ("symbol(\"abc\")", STANDARD, expected(b",S\0\0", b"abc\0")),
            ("impulse()", STANDARD, expected(b",I\0\0", &[])),
            ("nil()", STANDARD, expected(b",N\0\0", &[])),
            (
                "timetag(1, 2)",
                STANDARD,
                expected(b",t\0\0", &[0, 0, 0, 1, 0, 0, 0, 2]),
            ),
            (
                "midi(0, 144, 60, 127)",
                STANDARD,
                expected(b",m\0\0", &[0, 0x90, 0x3c, 0x7f]),
            ),
            (
                "rgba(255, 128, 0, 255)",
                STANDARD,
                expected(b",r\0\0", &[0xff, 0x80, 0, 0xff]),
            ),
        ];
        for (expr, options, bytes) in cases {
            let arg =
                send(expr, options).unwrap_or_else(|e| panic!("{expr} with {options:?}: {e}"));
            assert_eq!(wire(arg), bytes, "{expr} with {options:?}");
        }
    }

    #[test]
    fn a_whole_message_of_mixed_values() {
        // TouchDesigner's own example: [1, b'abc', 'apple', [6,7,8], True, None, float("infinity")].
        let values = eval(r#"[1, blob(3, 0x61), "apple", [6, 7, 8], true, (), 1.0 / 0.0]"#)
            .into_array()
            .unwrap();
        let args = values
            .iter()
            .map(|v| dynamic_to_osc(v, &DEFAULT))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let bytes = encode_message(&OscMessage::new("/abc", args));
        let mut want = b"/abc\0\0\0\0".to_vec();
        want.extend_from_slice(b",ibs[iii]TNI\0\0\0\0"); // 12 tag bytes + NUL, padded to 16
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&[0, 0, 0, 3, b'a', b'a', b'a', 0]);
        want.extend_from_slice(b"apple\0\0\0");
        want.extend_from_slice(&[0, 0, 0, 6, 0, 0, 0, 7, 0, 0, 0, 8]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn received_arguments_as_script_values() {
        let t = TimeTag::new(3_900_000_000, 123);
        let check = |arg: OscArg, type_name: &str, shown: &str| {
            let v = osc_to_dynamic(&arg);
            assert_eq!(v.type_name(), type_name, "{arg:?}");
            assert_eq!(format!("{v:?}"), shown, "{arg:?}");
        };
        check(OscArg::Int(-5), "i64", "-5");
        check(OscArg::Long(5_000_000_000), "i64", "5000000000");
        check(OscArg::Float(1.5), "f64", "1.5");
        check(OscArg::Double(0.1), "f64", "0.1");
        check(OscArg::String("abc".into()), "string", "\"abc\"");
        check(OscArg::Symbol("sym".into()), "string", "\"sym\"");
        check(OscArg::Blob(vec![1, 2]), "blob", "[0102]");
        check(OscArg::True, "bool", "true");
        check(OscArg::False, "bool", "false");
        check(OscArg::Nil, "()", "()");
        check(OscArg::Inf, "f64", "inf");
        check(OscArg::Char('x'), "char", "'x'");
        check(
            OscArg::Array(vec![OscArg::Int(1), OscArg::Array(vec![OscArg::True])]),
            "array",
            "[1, [true]]",
        );
        check(
            OscArg::Time(t),
            "map",
            "#{\"fraction\": 123, \"seconds\": 3900000000}",
        );
        check(
            OscArg::Midi(Midi {
                port: 1,
                status: 0x90,
                data1: 60,
                data2: 127,
            }),
            "map",
            "#{\"data1\": 60, \"data2\": 127, \"port\": 1, \"status\": 144}",
        );
        check(
            OscArg::Rgba(Rgba {
                r: 1,
                g: 2,
                b: 3,
                a: 4,
            }),
            "map",
            "#{\"a\": 4, \"b\": 3, \"g\": 2, \"r\": 1}",
        );
        // Exact values, not just their printing.
        assert_eq!(osc_to_dynamic(&OscArg::Double(0.1)).as_float(), Ok(0.1));
        assert_eq!(
            osc_to_dynamic(&OscArg::Float(0.1)).as_float(),
            Ok(f64::from(0.1f32))
        );
        assert_eq!(osc_to_dynamic(&OscArg::Inf).as_float(), Ok(f64::INFINITY));
        assert_eq!(
            osc_to_dynamic(&OscArg::Blob(vec![0, 255])).into_blob(),
            Ok(vec![0, 255])
        );
        let map = osc_to_dynamic(&OscArg::Time(TimeTag::new(u32::MAX, u32::MAX))).cast::<Map>();
        assert_eq!(map["seconds"].as_int(), Ok(4_294_967_295));
        assert_eq!(map["fraction"].as_int(), Ok(4_294_967_295));
    }

    #[test]
    fn received_arguments_round_trip_with_the_default_options() {
        let same = [
            OscArg::Int(i32::MIN),
            OscArg::Int(7),
            OscArg::Float(1.25),
            OscArg::Float(f32::NEG_INFINITY),
            OscArg::String("abc".into()),
            OscArg::Blob(vec![1, 2, 3]),
            OscArg::Long(i64::MAX),
            OscArg::Long(-2_147_483_649),
            OscArg::Time(TimeTag::new(3_900_000_000, 42)),
            OscArg::Time(TimeTag::IMMEDIATELY),
            OscArg::Char('x'),
            OscArg::Rgba(Rgba {
                r: 255,
                g: 0,
                b: 128,
                a: 1,
            }),
            OscArg::Midi(Midi {
                port: 0,
                status: 0xb0,
                data1: 7,
                data2: 100,
            }),
            OscArg::True,
            OscArg::False,
            OscArg::Nil,
            OscArg::Inf,
            OscArg::Array(vec![
                OscArg::Int(1),
                OscArg::Array(vec![OscArg::String("x".into())]),
                OscArg::Nil,
            ]),
            OscArg::Array(vec![]),
        ];
        for arg in same {
            assert_eq!(
                dynamic_to_osc(&osc_to_dynamic(&arg), &DEFAULT),
                Ok(arg.clone()),
                "{arg:?}"
            );
        }
        // The documented exceptions.
        let changed = [
            (OscArg::Long(5), OscArg::Int(5)),
            (OscArg::Double(1.5), OscArg::Float(1.5)),
            (OscArg::Double(0.1), OscArg::Float(0.1)),
            (OscArg::Symbol("abc".into()), OscArg::String("abc".into())),
            (OscArg::Float(f32::INFINITY), OscArg::Inf),
        ];
        for (arg, back) in changed {
            assert_eq!(
                dynamic_to_osc(&osc_to_dynamic(&arg), &DEFAULT),
                Ok(back),
                "{arg:?}"
            );
        }
        assert_eq!(
            dynamic_to_osc(&osc_to_dynamic(&OscArg::Double(1e300)), &DEFAULT),
            Err(ValueError::Float32Overflow("1e300".into()))
        );
        assert_eq!(
            dynamic_to_osc(&osc_to_dynamic(&OscArg::Double(1e300)), &WIDE),
            Ok(OscArg::Double(1e300))
        );
        // NaN stays a float NaN.
        let nan = dynamic_to_osc(&osc_to_dynamic(&OscArg::Float(f32::NAN)), &DEFAULT).unwrap();
        assert!(matches!(nan, OscArg::Float(f) if f.is_nan()));
        // `d` keeps its precision with 64-bit precision on.
        assert_eq!(
            dynamic_to_osc(&osc_to_dynamic(&OscArg::Double(0.1)), &WIDE),
            Ok(OscArg::Double(0.1))
        );
    }

    #[test]
    fn shared_values_are_read_through() {
        let shared = Dynamic::from_int(5_000_000_000).into_shared();
        assert_eq!(
            dynamic_to_osc(&shared, &DEFAULT),
            Ok(OscArg::Long(5_000_000_000))
        );
        let typed = Dynamic::from(TypedArg::symbol("x").unwrap()).into_shared();
        assert_eq!(
            dynamic_to_osc(&typed, &STANDARD),
            Ok(OscArg::Symbol("x".into()))
        );
        // A closure capture makes the variable shared inside the script.
        let captured = eval("let x = [1, 'c']; let f = || x.len(); x");
        assert_eq!(
            dynamic_to_osc(&captured, &DEFAULT),
            Ok(OscArg::Array(vec![OscArg::Int(1), OscArg::Char('c')]))
        );
        let bytes = Dynamic::from_int(65).into_shared();
        assert_eq!(bytes_for_send_bytes(&vec![bytes]), Ok(vec![65]));
        let text = Dynamic::from("hi").into_shared();
        assert_eq!(bytes_for_send(&vec![text], Some("")), Ok(b"hi".to_vec()));
    }

    #[test]
    fn conversion_error_messages() {
        let cases: Vec<(&str, SendOscOptions, &str)> = vec![
            (
                "5_000_000_000",
                STANDARD,
                "integer 5000000000 does not fit in 32 bits and use_non_standard_types is false; keep \
                 use_non_standard_types on (it is then sent as a 64-bit `h`) or force `h` with int64(x)",
            ),
            (
                "-2147483649",
                STANDARD,
                "integer -2147483649 does not fit in 32 bits and use_non_standard_types is false; keep \
                 use_non_standard_types on (it is then sent as a 64-bit `h`) or force `h` with int64(x)",
            ),
            (
                "1e39",
                DEFAULT,
                "1e39 does not fit in a 32-bit float; send it as double(x) or with use_64bit_precision: true",
            ),
            (
                "-1.5e300",
                STANDARD,
                "-1.5e300 does not fit in a 32-bit float; send it as double(x) or with use_64bit_precision: true",
            ),
            (
                "[1]",
                STANDARD,
                "an array is a non-standard OSC type and use_non_standard_types is false; spread its \
                 items into the argument list, or turn use_non_standard_types on",
            ),
            (
                "#{seconds: 1, fraction: 2}",
                STANDARD,
                "a time tag map is a non-standard OSC type and use_non_standard_types is false; write \
                 timetag(seconds, fraction) to send a `t` anyway, or turn use_non_standard_types on",
            ),
            (
                "#{port: 0, status: 144, data1: 60, data2: 127}",
                STANDARD,
                "a MIDI map is a non-standard OSC type and use_non_standard_types is false; write \
                 midi(port, status, data1, data2) to send an `m` anyway, or turn use_non_standard_types on",
            ),
            (
                "#{r: 1, g: 2, b: 3, a: 4}",
                STANDARD,
                "a color map is a non-standard OSC type and use_non_standard_types is false; write \
                 rgba(r, g, b, a) to send an `r` anyway, or turn use_non_standard_types on",
            ),
            (
                "\"a\\x00b\"",
                DEFAULT,
                "string has a NUL byte at byte 1; OSC strings end at the first NUL, so send these bytes as a blob",
            ),
            (
                "'\\x00'",
                STANDARD,
                "string has a NUL byte at byte 0; OSC strings end at the first NUL, so send these bytes as a blob",
            ),
            ("#{seconds: 1.5, fraction: 0}", DEFAULT, "time tag field `seconds` has type `float`; it must be an integer"),
            ("#{seconds: -1, fraction: 0}", DEFAULT, "time tag field `seconds` is -1; it must be 0..=4294967295"),
            ("#{seconds: 0, fraction: 4294967296}", DEFAULT, "time tag field `fraction` is 4294967296; it must be 0..=4294967295"),
            ("#{port: 0, status: 256, data1: 0, data2: 0}", DEFAULT, "MIDI field `status` is 256; it must be 0..=255"),
            ("#{port: 0, status: 144, data1: \"x\", data2: 0}", DEFAULT, "MIDI field `data1` has type `string`; it must be an integer"),
            ("#{r: 0, g: 0, b: 0, a: -1}", DEFAULT, "color field `a` is -1; it must be 0..=255"),
            (
                "#{seconds: 1}",
                DEFAULT,
                "map #{seconds} is not an OSC value; a map must have exactly the keys #{seconds, \
                 fraction} (time tag), #{port, status, data1, data2} (MIDI) or #{r, g, b, a} (color)",
            ),
            (
                "#{r: 1, g: 2, b: 3, a: 4, x: 5}",
                STANDARD,
                "map #{a, b, g, r, x} is not an OSC value; a map must have exactly the keys #{seconds, \
                 fraction} (time tag), #{port, status, data1, data2} (MIDI) or #{r, g, b, a} (color)",
            ),
            (
                "#{}",
                DEFAULT,
                "map #{} is not an OSC value; a map must have exactly the keys #{seconds, fraction} \
                 (time tag), #{port, status, data1, data2} (MIDI) or #{r, g, b, a} (color)",
            ),
            (
                "[1, #{x: 1}]",
                DEFAULT,
                "map #{x} is not an OSC value; a map must have exactly the keys #{seconds, fraction} \
                 (time tag), #{port, status, data1, data2} (MIDI) or #{r, g, b, a} (color)",
            ),
            (
                "Fn(\"abs\")",
                DEFAULT,
                "cannot send a value of type `Fn` as an OSC argument; send ints, floats, strings, chars, \
                 bools, (), blobs, arrays, time tag/MIDI/color maps or a wrapper such as int64(x)",
            ),
            (
                "timestamp()",
                DEFAULT,
                "cannot send a value of type `timestamp` as an OSC argument; send ints, floats, strings, \
                 chars, bools, (), blobs, arrays, time tag/MIDI/color maps or a wrapper such as int64(x)",
            ),
            (
                "1.0 / 0.0",
                BOTH,
                "use_64bit_precision needs use_non_standard_types (64-bit types are non-standard OSC); \
                 set use_non_standard_types: true or drop use_64bit_precision",
            ),
        ];
        for (expr, options, message) in cases {
            assert_eq!(send_err(expr, options), message, "{expr} with {options:?}");
        }
        // A custom type nobody taught us about.
        #[derive(Clone)]
        struct Peer;
        let unknown = dynamic_to_osc(&Dynamic::from(Peer), &DEFAULT)
            .unwrap_err()
            .to_string();
        assert!(
            unknown.starts_with("cannot send a value of type `"),
            "{unknown}"
        );
        assert!(unknown.contains("Peer`"), "{unknown}");
        // `Other` passes its text through.
        assert_eq!(
            ValueError::Other("as written".into()).to_string(),
            "as written"
        );
    }

    #[test]
    fn wrappers_in_scripts() {
        let shown = [
            ("int32(5)", "int32(5)", "i", "5"),
            (
                "int32(-2147483648)",
                "int32(-2147483648)",
                "i",
                "-2147483648",
            ),
            ("int64(5)", "int64(5)", "h", "5"),
            ("float32(1.5)", "float32(1.5)", "f", "1.5"),
            ("float32(2)", "float32(2.0)", "f", "2.0"),
            ("double(0.1)", "double(0.1)", "d", "0.1"),
            ("double(2)", "double(2.0)", "d", "2.0"),
            ("symbol(\"a\\\"b\")", "symbol(\"a\\\"b\")", "S", "a\"b"),
            ("impulse()", "impulse()", "I", "inf"),
            ("nil()", "nil()", "N", "()"),
            (
                "timetag(1, 2)",
                "timetag(1, 2)",
                "t",
                "#{\"fraction\": 2, \"seconds\": 1}",
            ),
            (
                "midi(0, 144, 60, 127)",
                "midi(0, 144, 60, 127)",
                "m",
                "#{\"data1\": 60, \"data2\": 127, \"port\": 0, \"status\": 144}",
            ),
            (
                "rgba(255, 128, 0, 255)",
                "rgba(255, 128, 0, 255)",
                "r",
                "#{\"a\": 255, \"b\": 0, \"g\": 128, \"r\": 255}",
            ),
        ];
        let engine = engine();
        for (expr, text, tag, value) in shown {
            let run = |script: String| {
                engine
                    .eval::<String>(&script)
                    .unwrap_or_else(|e| panic!("{script}: {e}"))
            };
            assert_eq!(run(format!("({expr}).to_string()")), text);
            assert_eq!(run(format!("`${{{expr}}}`")), text);
            assert_eq!(run(format!("\"\" + {expr}")), text);
            assert_eq!(run(format!("({expr}).to_debug()")), text);
            assert_eq!(run(format!("({expr}).tag")), tag);
            assert_eq!(run(format!("let v = ({expr}).value; if type_of(v) == \"string\" {{ v }} else {{ v.to_debug() }}")), value);
            assert_eq!(run(format!("type_of({expr})")), "osc_typed");
            // What a wrapper prints is the call that makes it again.
            let again = engine.eval::<TypedArg>(text).unwrap();
            assert_eq!(again, engine.eval::<TypedArg>(expr).unwrap(), "{expr}");
        }
        assert!(engine.eval::<bool>("int32(5) == int32(5)").unwrap());
        assert!(engine.eval::<bool>("int32(5) != int64(5)").unwrap());
        assert!(!engine.eval::<bool>("nil() == impulse()").unwrap());
        assert!(engine
            .eval::<bool>("let x = [nil(), 1]; x[0] == nil()")
            .unwrap());
        assert!(engine
            .eval::<bool>("fn n() { nil() } n() == nil()")
            .unwrap());
        // The Rust side of a wrapper.
        assert_eq!(TypedArg::int64(5).arg(), &OscArg::Long(5));
        assert_eq!(TypedArg::nil().into_arg(), OscArg::Nil);
        assert_eq!(TypedArg::midi(1, 2, 3, 4).unwrap().tag(), "m");
    }

    #[test]
    fn display_prints_wrappers_as_calls_and_everything_else_like_rhai() {
        let engine = engine();
        for script in [
            "5",
            "1.5",
            "\"abc\"",
            "'x'",
            "()",
            "true",
            "blob(2, 1)",
            "[1, \"a\", 'c', (), [2.5]]",
            "#{a: 1, b: \"x\", c: [()]}",
        ] {
            let value = engine.eval::<Dynamic>(script).unwrap();
            let rhai = engine
                .eval::<String>(&format!("({script}).to_string()"))
                .unwrap();
            assert_eq!(display(&value), rhai, "{script}");
        }
        let shown = |script: &str| display(&engine.eval::<Dynamic>(script).unwrap());
        assert_eq!(shown("int64(5)"), "int64(5)");
        assert_eq!(shown("symbol(\"a\")"), "symbol(\"a\")");
        assert_eq!(
            shown("[int32(1), \"s\", [nil()]]"),
            "[int32(1), \"s\", [nil()]]"
        );
        assert_eq!(
            shown("#{x: double(0.5), y: 2}"),
            "#{\"x\": double(0.5), \"y\": 2}"
        );
        assert_eq!(
            display(&Dynamic::from(TypedArg::impulse()).into_shared()),
            "impulse()"
        );
    }

    #[test]
    fn wrapper_range_errors_name_the_script_position() {
        let cases = [
            ("int32(2147483648)", "int32(2147483648) is out of range -2147483648..=2147483647; use int64(x) for larger integers"),
            ("int32(-2147483649)", "int32(-2147483649) is out of range -2147483648..=2147483647; use int64(x) for larger integers"),
            ("float32(1e39)", "1e39 does not fit in a 32-bit float; send it as double(x) or with use_64bit_precision: true"),
            ("symbol(\"a\\x00\")", "string has a NUL byte at byte 1; OSC strings end at the first NUL, so send these bytes as a blob"),
            ("timetag(-1, 0)", "time tag field `seconds` is -1; it must be 0..=4294967295"),
            ("timetag(0, 4294967296)", "time tag field `fraction` is 4294967296; it must be 0..=4294967295"),
            ("midi(256, 0, 0, 0)", "MIDI field `port` is 256; it must be 0..=255"),
            ("midi(0, 0, 0, -1)", "MIDI field `data2` is -1; it must be 0..=255"),
            ("rgba(0, 300, 0, 0)", "color field `g` is 300; it must be 0..=255"),
        ];
        for (expr, message) in cases {
            let err = eval_err(&format!("let x = 1;\n  {expr}"));
            assert_eq!(
                err,
                format!("Runtime error: {message} (line 2, position 3)"),
                "{expr}"
            );
        }
        // Wrong argument types are Rhai's own "function not found" errors.
        assert!(
            eval_err("int32(1.5)").starts_with("Function not found: int32 (f64)"),
            "{}",
            eval_err("int32(1.5)")
        );
        assert!(
            eval_err("nil( )").contains("Expecting '()' for 'nil' expression"),
            "{}",
            eval_err("nil( )")
        );
        // float32(inf) is an explicit request, not an overflow.
        assert_eq!(
            TypedArg::float32(f64::INFINITY).unwrap().into_arg(),
            OscArg::Float(f32::INFINITY)
        );
    }

    #[test]
    fn timetag_after_is_relative_to_the_system_clock() {
        let now = SystemTime::now();
        let tag = |ms| match TypedArg::timetag_after(now, ms).into_arg() {
            OscArg::Time(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(tag(0), TimeTag::from_system_time(now));
        assert_eq!(tag(1500).offset_from(now), 1_500_000_000);
        assert_eq!(tag(-250).offset_from(now), -250_000_000);
        // From a script: within a generous bound of "now + 1 s".
        let before = SystemTime::now();
        let t = match eval("timetag_after(1000)").cast::<TypedArg>().into_arg() {
            OscArg::Time(t) => t,
            other => panic!("{other:?}"),
        };
        let offset = t.offset_from(before);
        assert!(
            (1_000_000_000..61_000_000_000).contains(&offset),
            "{offset}"
        );
    }

    #[test]
    fn send_osc_options_from_a_map() {
        let options = |script: &str| options_from_map(&eval(script).cast::<Map>());
        assert_eq!(options("#{}"), Ok(DEFAULT));
        assert_eq!(
            options("#{as_bundle: true}"),
            Ok(SendOscOptions {
                as_bundle: true,
                ..DEFAULT
            })
        );
        assert_eq!(options("#{use_non_standard_types: false}"), Ok(STANDARD));
        assert_eq!(options("#{use_64bit_precision: true}"), Ok(WIDE));
        assert_eq!(
            options("#{as_bundle: true, use_non_standard_types: true, use_64bit_precision: true}"),
            Ok(SendOscOptions {
                as_bundle: true,
                ..WIDE
            })
        );
        let err = |script: &str| options(script).unwrap_err().to_string();
        assert_eq!(
            err("#{use_non_standard_types: false, use_64bit_precision: true}"),
            "use_64bit_precision needs use_non_standard_types (64-bit types are non-standard OSC); \
             set use_non_standard_types: true or drop use_64bit_precision"
        );
        assert_eq!(
            err("#{asBundle: true}"),
            "unknown send_osc option `asBundle`; the options are as_bundle, use_non_standard_types and \
             use_64bit_precision"
        );
        assert_eq!(
            err("#{as_bundle: 1}"),
            "send_osc option `as_bundle` has type `int`; it must be true or false"
        );
        assert_eq!(
            err("#{use_64bit_precision: \"yes\"}"),
            "send_osc option `use_64bit_precision` has type `string`; it must be true or false"
        );
        assert_eq!(
            SendOscOptions::KEYS,
            ["as_bundle", "use_non_standard_types", "use_64bit_precision"]
        );
        assert_eq!(BOTH.validate(), Err(ValueError::Needs64BitNonStandard));
        assert_eq!(WIDE.validate(), Ok(()));
    }

    #[test]
    fn send_bytes_sequences() {
        let bytes = |script: &str| bytes_for_send_bytes(&eval(script).into_array().unwrap());
        // TouchDesigner's example: n.sendBytes('TYPE', 23, 255, 12, 0x34, b'\x01\x00\x02\x00\x03\x00\x00\x00')
        let mut want = b"TYPE".to_vec();
        want.extend_from_slice(&[23, 255, 12, 0x34, 1, 0, 2, 0, 3, 0, 0, 0]);
        let example = r#"
            let b = blob(8);
            b[0] = 1; b[2] = 2; b[4] = 3;
            ["TYPE", 23, 255, 12, 0x34, b]
        "#;
        assert_eq!(bytes(example), Ok(want));
        assert_eq!(bytes("[]"), Ok(vec![]));
        assert_eq!(
            bytes("[0, \"é\", 'ß', \"\", blob()]"),
            Ok(vec![0, 0xc3, 0xa9, 0xc3, 0x9f])
        );
        assert_eq!(bytes("[\"a\\x00b\"]"), Ok(b"a\0b".to_vec()));
        let err = |script: &str| bytes(script).unwrap_err().to_string();
        assert_eq!(
            err("[1, 2, 256]"),
            "send_bytes item at index 2 is 256, not a byte; single byte values must be 0..=255 (put \
             longer binary data in a blob)"
        );
        assert_eq!(
            err("[-1]"),
            "send_bytes item at index 0 is -1, not a byte; single byte values must be 0..=255 (put \
             longer binary data in a blob)"
        );
        assert_eq!(
            err("[\"a\", 1.5]"),
            "send_bytes item at index 1 has type `float`; send_bytes takes strings, blobs and byte \
             values 0..=255"
        );
        assert_eq!(
            err("[[1, 2]]"),
            "send_bytes item at index 0 has type `array`; send_bytes takes strings, blobs and byte \
             values 0..=255"
        );
        assert_eq!(
            err("[int32(1)]"),
            "send_bytes item at index 0 has type `osc_typed`; send_bytes takes strings, blobs and byte \
             values 0..=255"
        );
    }

    #[test]
    fn send_sequences() {
        let send = |script: &str, terminator| {
            bytes_for_send(&eval(script).into_array().unwrap(), terminator)
        };
        assert_eq!(
            send(r#"["Hello", "World"]"#, None),
            Ok(b"Hello\0World\0".to_vec())
        );
        assert_eq!(
            send(r#"["Hello", "World"]"#, Some("\r\n")),
            Ok(b"Hello\r\nWorld\r\n".to_vec())
        );
        assert_eq!(
            send(r#"["Hello", "World"]"#, Some("")),
            Ok(b"HelloWorld".to_vec())
        );
        assert_eq!(send(r#"["", 'x']"#, None), Ok(b"\0x\0".to_vec()));
        assert_eq!(send("[\"é\"]", Some(";")), Ok(vec![0xc3, 0xa9, b';']));
        assert_eq!(send("[]", None), Ok(vec![]));
        assert_eq!(
            send(r#"["a", 1]"#, None).unwrap_err().to_string(),
            "send item at index 1 has type `int`; send takes strings only (use send_bytes for blobs \
             and byte values)"
        );
        assert_eq!(
            send("[blob(1)]", Some("")).unwrap_err().to_string(),
            "send item at index 0 has type `blob`; send takes strings only (use send_bytes for blobs \
             and byte values)"
        );
    }
}
