//! `patchbay send HOST:PORT ADDRESS [ARG...]`: build one OSC message from the command line and
//! send it as one UDP datagram.
//!
//! # Arguments
//!
//! Each `ARG` is either `TYPE:VALUE`, a bare type tag, an array bracket, or a plain value whose type
//! is inferred:
//!
//! | `ARG`              | OSC type | notes                                                          |
//! |--------------------|----------|----------------------------------------------------------------|
//! | `i:-12`            | `i`      | 32-bit integer, decimal                                        |
//! | `h:5000000000`     | `h`      | 64-bit integer, decimal                                        |
//! | `f:0.5`            | `f`      | 32-bit float (`1e3`, `inf`, `nan` accepted; overflow refused)  |
//! | `d:0.25`           | `d`      | 64-bit float                                                   |
//! | `s:go`, `s:`       | `s`      | string, taken verbatim (may be empty, may look like a number)  |
//! | `S:sym`            | `S`      | symbol, taken verbatim                                         |
//! | `c:x`              | `c`      | exactly one character (sent as its code point; keep to ASCII for old receivers) |
//! | `b:deadbeef`, `b:` | `b`      | blob from an even number of hex digits (optional `0x`; empty allowed) |
//! | `r:ff8000ff`       | `r`      | RGBA color, 8 hex digits `RRGGBBAA` (optional `#` or `0x`)     |
//! | `m:00904060`       | `m`      | MIDI, 8 hex digits `PPSSD1D2`: port, status, data1, data2 (optional `0x`) |
//! | `t:...`            | `t`      | time tag, see below                                            |
//! | `T` `F` `N` `I`    | same     | true, false, nil, impulse (infinitum): no value                |
//! | `[` ... `]`        | `[` `]`  | separate arguments that open and close an array; may nest      |
//!
//! Time tags (`t:`), all resolved against one clock reading per command:
//!
//! - `t:immediately`: the special value `0x0000000000000001`.
//! - `t:now`, `t:now+500ms`, `t:now+2s`, `t:now-1.5s`, `t:now+250us`: the current time, optionally
//!   shifted by a decimal amount of `s`, `ms` or `us`.
//! - `t:1717243200.25`: seconds since the Unix epoch (1970, UTC) with an optional decimal fraction
//!   (up to nanoseconds), as printed by `date +%s.%N`.
//! - `t:0x83aa7e8000000000`: the raw 64-bit NTP value in hex (high 32 bits seconds since 1900, low
//!   32 bits binary fraction), for exact control.
//!
//! A plain value (no recognised `TYPE:` prefix) is inferred:
//!
//! - an optional sign and digits only: `i` if it fits 32 bits, else `h` if it fits 64 bits, else an
//!   error (say `d:` or `s:` for what you mean);
//! - a decimal number with a `.` and/or an exponent (`-0.5`, `.5`, `1e3`): `f`, or `d` when too
//!   large for a 32-bit float;
//! - anything else (including `inf`, `nan`, `0x10`, `ab:c`, `12:30`, the empty string): a string.
//!
//! A single letter followed by `:` that is not a type above (`x:1`, `T:1`) is refused rather than
//! sent as a string, because it is almost always a typo; write `s:x:1` to send that text.
//!
//! # Example
//!
//! ```text
//! patchbay send 127.0.0.1:9000 /cue/go 1 0.5 s:42 T [ i:1 i:2 ] t:now+500ms
//! ```
//!
//! sends `/cue/go` with type tags `,ifsT[ii]t`.
//!
//! Errors name the argument's 1-based position among the `ARG`s and what was expected:
//! ``argument 2 `i:abc`: not a 32-bit integer``.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime};

use patchbay_plugin_api::osc::{self, Midi, OscArg, OscMessage, OscPacket, Rgba, TimeTag};

/// Why a `patchbay send` could not be done.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// One argument did not parse. `position` is 1-based among the `ARG`s; `None` when the
    /// argument was parsed on its own ([`parse_arg`]).
    #[error("argument {}`{text}`: {problem}", position_prefix(*.position))]
    Arg {
        position: Option<usize>,
        text: String,
        problem: ArgProblem,
    },
    #[error("address `{0}` must start with `/`")]
    Address(String),
    #[error("cannot resolve target `{target}` (expected HOST:PORT): {source}")]
    Resolve {
        target: String,
        source: std::io::Error,
    },
    #[error("target `{0}` resolved to no address")]
    NoAddress(String),
    #[error("cannot open a local udp socket on {local}: {source}")]
    Bind {
        local: SocketAddr,
        source: std::io::Error,
    },
    #[error("sending {bytes} bytes to {target} failed: {source}")]
    Send {
        target: SocketAddr,
        bytes: usize,
        source: std::io::Error,
    },
}

fn position_prefix(position: Option<usize>) -> String {
    position.map(|p| format!("{p} ")).unwrap_or_default()
}

/// What was wrong with one argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgProblem {
    #[error("not a 32-bit integer")]
    NotInt,
    #[error("not a 64-bit integer")]
    NotLong,
    #[error("not a 32-bit float")]
    NotFloat,
    #[error("not a 64-bit float")]
    NotDouble,
    #[error("out of range for a 32-bit float")]
    FloatOverflow,
    #[error("out of range for a 64-bit float")]
    DoubleOverflow,
    #[error("integer does not fit 64 bits (write `d:` for a double or `s:` for a string)")]
    IntegerTooLarge,
    #[error("not a single character")]
    NotChar,
    #[error("not a blob: expected an even number of hex digits")]
    NotBlob,
    #[error("not a color: expected 8 hex digits RRGGBBAA")]
    NotColor,
    #[error("not a midi message: expected 8 hex digits PPSSD1D2")]
    NotMidi,
    #[error(
        "not a time tag: expected `immediately`, `now`, `now+N` or `now-N` with unit s, ms or us, \
         unix seconds like `1717243200.25`, or `0x` and up to 16 hex digits"
    )]
    NotTime,
    #[error("time tag is outside what this clock can represent")]
    TimeOutOfRange,
    #[error("type `{0}` takes no value; write a bare `{0}`")]
    ValueForBareType(char),
    #[error(
        "unknown type `{0}`: expected one of i h f d s S c b r m t, or a bare T F N I \
         (write `s:` to send this text as a string)"
    )]
    UnknownType(char),
    #[error("`]` without a matching `[`")]
    UnmatchedClose,
    #[error("`[` is never closed")]
    Unclosed,
}

/// Parses one `ARG` on its own (time tags relative to the current clock). Array brackets are not
/// values and are refused here; [`parse_args`] handles them.
pub fn parse_arg(text: &str) -> Result<OscArg, SendError> {
    parse_scalar(text, SystemTime::now()).map_err(|problem| SendError::Arg {
        position: None,
        text: text.to_string(),
        problem,
    })
}

/// Parses all `ARG`s, turning `[` ... `]` into (possibly nested) arrays. Every `t:now...` is
/// resolved against the same clock reading, so `t:now t:now+1s` are exactly one second apart.
pub fn parse_args(args: &[String]) -> Result<Vec<OscArg>, SendError> {
    parse_args_at(args, SystemTime::now())
}

/// Builds the message `patchbay send` would send, without sending it.
pub fn build_packet(address: &str, args: &[String]) -> Result<OscPacket, SendError> {
    if !address.starts_with('/') {
        return Err(SendError::Address(address.to_string()));
    }
    let args = parse_args(args)?;
    Ok(OscPacket::Message(OscMessage::new(address, args)))
}

/// Resolves `target` (`HOST:PORT`), builds the message and sends it as one datagram from an
/// ephemeral local port. Returns the number of bytes sent.
pub fn send(target: &str, address: &str, args: &[String]) -> Result<usize, SendError> {
    // Parse before resolving so a typo in an argument is reported without a DNS round trip.
    let packet = build_packet(address, args)?;
    let bytes = osc::encode(&packet);

    let resolve_err = |source| SendError::Resolve {
        target: target.to_string(),
        source,
    };
    let dest = target
        .to_socket_addrs()
        .map_err(resolve_err)?
        .next()
        .ok_or_else(|| SendError::NoAddress(target.to_string()))?;

    // Bind the wildcard address of the destination's family: an IPv4 socket cannot send to an
    // IPv6 destination and vice versa, and the kernel picks the right source address.
    let local: SocketAddr = if dest.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).map_err(|source| SendError::Bind { local, source })?;
    socket
        .send_to(&bytes, dest)
        .map_err(|source| SendError::Send {
            target: dest,
            bytes: bytes.len(),
            source,
        })
}

fn parse_args_at(args: &[String], now: SystemTime) -> Result<Vec<OscArg>, SendError> {
    // `stack[0]` collects the top-level arguments; every open `[` pushes a level and remembers
    // its position for the "never closed" error.
    let mut stack: Vec<(Vec<OscArg>, usize)> = vec![(Vec::new(), 0)];
    for (index, text) in args.iter().enumerate() {
        let position = index + 1;
        let arg_err = |problem| SendError::Arg {
            position: Some(position),
            text: text.clone(),
            problem,
        };
        match text.as_str() {
            "[" => stack.push((Vec::new(), position)),
            "]" => {
                if stack.len() == 1 {
                    return Err(arg_err(ArgProblem::UnmatchedClose));
                }
                let (items, _) = stack.pop().expect("more than one level");
                stack
                    .last_mut()
                    .expect("top level")
                    .0
                    .push(OscArg::Array(items));
            }
            _ => {
                let arg = parse_scalar(text, now).map_err(arg_err)?;
                stack.last_mut().expect("top level").0.push(arg);
            }
        }
    }
    if stack.len() > 1 {
        let (_, position) = stack.pop().expect("more than one level");
        return Err(SendError::Arg {
            position: Some(position),
            text: "[".to_string(),
            problem: ArgProblem::Unclosed,
        });
    }
    Ok(stack.pop().expect("top level").0)
}

fn parse_scalar(text: &str, now: SystemTime) -> Result<OscArg, ArgProblem> {
    match text {
        "T" => return Ok(OscArg::True),
        "F" => return Ok(OscArg::False),
        "N" => return Ok(OscArg::Nil),
        "I" => return Ok(OscArg::Inf),
        "]" => return Err(ArgProblem::UnmatchedClose),
        "[" => return Err(ArgProblem::Unclosed),
        _ => {}
    }
    let bytes = text.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        let value = &text[2..];
        return match bytes[0] {
            b'i' => value
                .parse()
                .map(OscArg::Int)
                .map_err(|_| ArgProblem::NotInt),
            b'h' => value
                .parse()
                .map(OscArg::Long)
                .map_err(|_| ArgProblem::NotLong),
            b'f' => parse_f32(value).map(OscArg::Float),
            b'd' => parse_f64(value).map(OscArg::Double),
            b's' => Ok(OscArg::String(value.to_string())),
            b'S' => Ok(OscArg::Symbol(value.to_string())),
            b'c' => parse_char(value).map(OscArg::Char),
            b'b' => parse_blob(value).map(OscArg::Blob),
            b'r' => {
                let value = value.strip_prefix('#').unwrap_or(value);
                let [r, g, b, a] = parse_hex4(value).ok_or(ArgProblem::NotColor)?;
                Ok(OscArg::Rgba(Rgba { r, g, b, a }))
            }
            b'm' => {
                let [port, status, data1, data2] = parse_hex4(value).ok_or(ArgProblem::NotMidi)?;
                Ok(OscArg::Midi(Midi {
                    port,
                    status,
                    data1,
                    data2,
                }))
            }
            b't' => parse_time(value, now).map(OscArg::Time),
            tag @ (b'T' | b'F' | b'N' | b'I') => Err(ArgProblem::ValueForBareType(tag as char)),
            other => Err(ArgProblem::UnknownType(other as char)),
        };
    }
    infer(text)
}

/// Type inference for a plain value; see the module docs for the rules.
fn infer(text: &str) -> Result<OscArg, ArgProblem> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(v) = text.parse::<i32>() {
            return Ok(OscArg::Int(v));
        }
        return text
            .parse::<i64>()
            .map(OscArg::Long)
            .map_err(|_| ArgProblem::IntegerTooLarge);
    }
    if looks_decimal(digits) {
        // Both parses succeed for anything `looks_decimal` accepts; only the range differs.
        let single: f32 = text.parse().map_err(|_| ArgProblem::NotFloat)?;
        if single.is_finite() {
            return Ok(OscArg::Float(single));
        }
        return parse_f64(text).map(OscArg::Double);
    }
    Ok(OscArg::String(text.to_string()))
}

/// `digits[.digits][e[+-]digits]` or `.digits[...]` (sign already stripped), with at least one
/// digit in the mantissa and either a `.` or an exponent. Written out by hand because Rust's
/// float parser also accepts `inf`, `nan` and `infinity`, which should stay strings when inferred.
fn looks_decimal(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = all_digits(int_part)
        && frac_part.is_none_or(all_digits)
        && int_part.len() + frac_part.map_or(0, str::len) > 0;
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exponent_ok && (frac_part.is_some() || exponent.is_some())
}

fn parse_f32(value: &str) -> Result<f32, ArgProblem> {
    let v: f32 = value.parse().map_err(|_| ArgProblem::NotFloat)?;
    // Rust rounds `1e40` to infinity silently; only an explicit `inf` should produce one.
    if v.is_infinite() && value.bytes().any(|b| b.is_ascii_digit()) {
        return Err(ArgProblem::FloatOverflow);
    }
    Ok(v)
}

fn parse_f64(value: &str) -> Result<f64, ArgProblem> {
    let v: f64 = value.parse().map_err(|_| ArgProblem::NotDouble)?;
    if v.is_infinite() && value.bytes().any(|b| b.is_ascii_digit()) {
        return Err(ArgProblem::DoubleOverflow);
    }
    Ok(v)
}

fn parse_char(value: &str) -> Result<char, ArgProblem> {
    let mut chars = value.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(ArgProblem::NotChar),
    }
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    let hex = hex
        .strip_prefix("0x")
        .or_else(|| hex.strip_prefix("0X"))
        .unwrap_or(hex);
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // All ASCII hex digits, so byte-indexing pairs is safe.
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

fn parse_blob(value: &str) -> Result<Vec<u8>, ArgProblem> {
    hex_bytes(value).ok_or(ArgProblem::NotBlob)
}

fn parse_hex4(value: &str) -> Option<[u8; 4]> {
    hex_bytes(value)?.try_into().ok()
}

fn parse_time(value: &str, now: SystemTime) -> Result<TimeTag, ArgProblem> {
    if value == "immediately" {
        return Ok(TimeTag::IMMEDIATELY);
    }
    if let Some(rest) = value.strip_prefix("now") {
        if rest.is_empty() {
            return Ok(TimeTag::from_system_time(now));
        }
        let (sign, amount) = rest.split_at(1);
        let delay = parse_duration(amount).ok_or(ArgProblem::NotTime)?;
        let at = match sign {
            "+" => now.checked_add(delay),
            "-" => now.checked_sub(delay),
            _ => return Err(ArgProblem::NotTime),
        };
        return at
            .map(TimeTag::from_system_time)
            .ok_or(ArgProblem::TimeOutOfRange);
    }
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ArgProblem::NotTime);
        }
        let raw = u64::from_str_radix(hex, 16).map_err(|_| ArgProblem::NotTime)?;
        return Ok(TimeTag::new((raw >> 32) as u32, raw as u32));
    }
    parse_unix_nanos(value)
        .map(TimeTag::from_unix_nanos)
        .ok_or(ArgProblem::NotTime)
}

/// `1.5s`, `500ms`, `250us`: a non-negative decimal amount and a unit. Integer arithmetic, so
/// `now+250us` is exactly 250 000 ns later (a float detour would land a nanosecond off).
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, nanos_per_unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000_000u128)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000_000)
    } else {
        return None;
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    // Digit runs only: no sign, exponent, `inf` or `nan`; the length caps keep u128 from overflow.
    if whole.len() + frac.len() == 0
        || !all_digits(whole)
        || !all_digits(frac)
        || whole.len() > 15
        || frac.len() > 9
    {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let nanos =
        whole * nanos_per_unit + frac_value * nanos_per_unit / 10u128.pow(frac.len() as u32);
    Some(Duration::from_nanos(u64::try_from(nanos).ok()?))
}

/// `[-]SECONDS[.FRACTION]` since the Unix epoch, parsed exactly (no float rounding) to nanoseconds.
fn parse_unix_nanos(text: &str) -> Option<i128> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(frac) || frac.len() > 9 {
        return None;
    }
    // Anything longer cannot be a time tag in the era window anyway; refusing it keeps the i128
    // arithmetic far from overflow.
    if whole.len() > 12 {
        return None;
    }
    let secs: i128 = whole.parse().ok()?;
    let nanos: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let total = secs * 1_000_000_000 + nanos;
    Some(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(text: &str) -> OscArg {
        parse_arg(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        parse_arg(text).expect_err(text).to_string()
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn args_err(args: &[&str]) -> String {
        parse_args(&strings(args))
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn typed_forms() {
        assert_eq!(arg("i:1"), OscArg::Int(1));
        assert_eq!(arg("i:-2147483648"), OscArg::Int(i32::MIN));
        assert_eq!(arg("h:123"), OscArg::Long(123));
        assert_eq!(arg("h:-9223372036854775808"), OscArg::Long(i64::MIN));
        assert_eq!(arg("f:0.5"), OscArg::Float(0.5));
        assert_eq!(arg("f:1e3"), OscArg::Float(1000.0));
        assert_eq!(arg("f:inf"), OscArg::Float(f32::INFINITY));
        assert!(matches!(arg("f:nan"), OscArg::Float(v) if v.is_nan()));
        assert_eq!(arg("d:0.25"), OscArg::Double(0.25));
        assert_eq!(arg("d:1e300"), OscArg::Double(1e300));
        assert_eq!(arg("s:go"), OscArg::String("go".into()));
        assert_eq!(arg("s:"), OscArg::String(String::new()));
        assert_eq!(arg("s:42"), OscArg::String("42".into()));
        assert_eq!(arg("s:a:b c"), OscArg::String("a:b c".into()));
        assert_eq!(arg("S:sym"), OscArg::Symbol("sym".into()));
        assert_eq!(arg("S:"), OscArg::Symbol(String::new()));
        assert_eq!(arg("c:x"), OscArg::Char('x'));
        assert_eq!(arg("c::"), OscArg::Char(':'));
        assert_eq!(arg("c:é"), OscArg::Char('é'));
        assert_eq!(arg("b:"), OscArg::Blob(vec![]));
        assert_eq!(arg("b:DEadbe"), OscArg::Blob(vec![0xde, 0xad, 0xbe]));
        assert_eq!(arg("b:0x0001"), OscArg::Blob(vec![0, 1]));
        let orange = Rgba {
            r: 0xff,
            g: 0x80,
            b: 0,
            a: 0xff,
        };
        assert_eq!(arg("r:ff8000ff"), OscArg::Rgba(orange));
        assert_eq!(arg("r:#FF8000FF"), OscArg::Rgba(orange));
        assert_eq!(
            arg("m:00904060"),
            OscArg::Midi(Midi {
                port: 0,
                status: 0x90,
                data1: 0x40,
                data2: 0x60
            })
        );
    }

    #[test]
    fn bare_tags() {
        assert_eq!(arg("T"), OscArg::True);
        assert_eq!(arg("F"), OscArg::False);
        assert_eq!(arg("N"), OscArg::Nil);
        assert_eq!(arg("I"), OscArg::Inf);
        // Lowercase and longer words are just strings.
        assert_eq!(arg("t"), OscArg::String("t".into()));
        assert_eq!(arg("TRUE"), OscArg::String("TRUE".into()));
    }

    #[test]
    fn time_tags() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_717_243_200);
        let t = |text: &str| match parse_scalar(text, now) {
            Ok(OscArg::Time(tag)) => tag,
            other => panic!("{text}: {other:?}"),
        };
        let base = TimeTag::from_system_time(now);
        assert_eq!(t("t:immediately"), TimeTag::IMMEDIATELY);
        assert_eq!(t("t:now"), base);
        assert_eq!(t("t:now+500ms").offset_from(now), 500_000_000);
        assert_eq!(t("t:now+2s").offset_from(now), 2_000_000_000);
        assert_eq!(t("t:now-1.5s").offset_from(now), -1_500_000_000);
        assert_eq!(t("t:now+250us").offset_from(now), 250_000);
        assert_eq!(t("t:1717243200"), base);
        assert_eq!(t("t:1717243200.25").offset_from(now), 250_000_000);
        assert_eq!(t("t:0x83aa7e8000000001"), TimeTag::new(0x83aa_7e80, 1));
        assert_eq!(t("t:0x1"), TimeTag::IMMEDIATELY);
    }

    #[test]
    fn one_clock_reading_per_command() {
        let args = parse_args(&strings(&["t:now", "t:now+1s"])).unwrap();
        let (OscArg::Time(a), OscArg::Time(b)) = (&args[0], &args[1]) else {
            panic!("{args:?}");
        };
        assert_eq!(b.to_unix_nanos() - a.to_unix_nanos(), 1_000_000_000);
    }

    #[test]
    fn inference() {
        assert_eq!(arg("1"), OscArg::Int(1));
        assert_eq!(arg("+7"), OscArg::Int(7));
        assert_eq!(arg("2147483647"), OscArg::Int(i32::MAX));
        assert_eq!(arg("-2147483648"), OscArg::Int(i32::MIN));
        assert_eq!(arg("2147483648"), OscArg::Long(2_147_483_648));
        assert_eq!(arg("-2147483649"), OscArg::Long(-2_147_483_649));
        assert_eq!(arg("9223372036854775807"), OscArg::Long(i64::MAX));
        assert_eq!(arg("-0.5"), OscArg::Float(-0.5));
        assert_eq!(arg(".5"), OscArg::Float(0.5));
        assert_eq!(arg("5."), OscArg::Float(5.0));
        assert_eq!(arg("1e3"), OscArg::Float(1000.0));
        assert_eq!(arg("2.5E-1"), OscArg::Float(0.25));
        // Too big for f32 but fine for f64: widen rather than send infinity.
        assert_eq!(arg("1e300"), OscArg::Double(1e300));
        for text in [
            "go", "", "inf", "nan", "NaN", "-", ".", "1e", "e5", "0x10", "1.2.3", "1_000", "ab:c",
            "12:30", "-x", " 1",
        ] {
            assert_eq!(arg(text), OscArg::String(text.into()), "{text:?}");
        }
    }

    #[test]
    fn parse_errors() {
        let cases = [
            ("i:abc", "argument `i:abc`: not a 32-bit integer"),
            ("i:", "argument `i:`: not a 32-bit integer"),
            (
                "i:2147483648",
                "argument `i:2147483648`: not a 32-bit integer",
            ),
            ("i:1.5", "argument `i:1.5`: not a 32-bit integer"),
            ("h:1e3", "argument `h:1e3`: not a 64-bit integer"),
            ("f:x", "argument `f:x`: not a 32-bit float"),
            (
                "f:1e40",
                "argument `f:1e40`: out of range for a 32-bit float",
            ),
            ("d:x", "argument `d:x`: not a 64-bit float"),
            (
                "d:1e400",
                "argument `d:1e400`: out of range for a 64-bit float",
            ),
            (
                "99999999999999999999",
                "argument `99999999999999999999`: integer does not fit 64 bits \
                 (write `d:` for a double or `s:` for a string)",
            ),
            ("c:", "argument `c:`: not a single character"),
            ("c:ab", "argument `c:ab`: not a single character"),
            (
                "b:abc",
                "argument `b:abc`: not a blob: expected an even number of hex digits",
            ),
            (
                "b:zz",
                "argument `b:zz`: not a blob: expected an even number of hex digits",
            ),
            (
                "r:ff8000",
                "argument `r:ff8000`: not a color: expected 8 hex digits RRGGBBAA",
            ),
            (
                "r:ff8000ffff",
                "argument `r:ff8000ffff`: not a color: expected 8 hex digits RRGGBBAA",
            ),
            (
                "m:0090406",
                "argument `m:0090406`: not a midi message: expected 8 hex digits PPSSD1D2",
            ),
            (
                "T:1",
                "argument `T:1`: type `T` takes no value; write a bare `T`",
            ),
            (
                "I:",
                "argument `I:`: type `I` takes no value; write a bare `I`",
            ),
            (
                "x:1",
                "argument `x:1`: unknown type `x`: expected one of i h f d s S c b r m t, \
                 or a bare T F N I (write `s:` to send this text as a string)",
            ),
            ("]", "argument `]`: `]` without a matching `[`"),
            ("[", "argument `[`: `[` is never closed"),
        ];
        for (text, expected) in cases {
            assert_eq!(err(text), expected);
        }
        let not_time = ArgProblem::NotTime.to_string();
        for text in [
            "t:",
            "t:later",
            "t:now+",
            "t:now+5",
            "t:now+5m",
            "t:now*5s",
            "t:now+-5s",
            "t:now+.s",
            "t:now+1e3s",
            "t:0x",
            "t:0x12345678123456789",
            "t:0xzz",
            "t:1.2.3",
            "t:1.0000000001",
            "t:+5",
        ] {
            assert_eq!(err(text), format!("argument `{text}`: {not_time}"));
        }
        assert!(not_time.starts_with("not a time tag: expected `immediately`, `now`"));
    }

    #[test]
    fn arrays() {
        let parsed = parse_args(&strings(&["1", "[", "i:2", "[", "]", "s:x", "]", "T"])).unwrap();
        assert_eq!(
            parsed,
            vec![
                OscArg::Int(1),
                OscArg::Array(vec![
                    OscArg::Int(2),
                    OscArg::Array(vec![]),
                    OscArg::String("x".into())
                ]),
                OscArg::True,
            ]
        );
        // `s:[` is how to send a bracket as text.
        assert_eq!(
            parse_args(&strings(&["s:[", "s:]"])).unwrap(),
            vec![OscArg::String("[".into()), OscArg::String("]".into())]
        );
        assert_eq!(parse_args(&[]).unwrap(), vec![]);
    }

    #[test]
    fn parse_args_errors_name_the_position() {
        assert_eq!(
            args_err(&["1", "i:abc"]),
            "argument 2 `i:abc`: not a 32-bit integer"
        );
        assert_eq!(
            args_err(&["1", "]"]),
            "argument 2 `]`: `]` without a matching `[`"
        );
        // The innermost unclosed bracket is the one reported.
        assert_eq!(
            args_err(&["[", "1", "[", "2"]),
            "argument 3 `[`: `[` is never closed"
        );
    }

    #[test]
    fn address_and_target_errors() {
        let e = send("127.0.0.1:9", "cue/go", &[]).unwrap_err();
        assert_eq!(e.to_string(), "address `cue/go` must start with `/`");
        let e = send("127.0.0.1:9", "", &[]).unwrap_err();
        assert_eq!(e.to_string(), "address `` must start with `/`");
        let e = send("127.0.0.1", "/x", &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot resolve target `127.0.0.1` (expected HOST:PORT): "),
            "{e}"
        );
        // An argument error wins over a target error: no resolution is attempted.
        let e = send("no-such-host.invalid:1", "/x", &strings(&["i:x"])).unwrap_err();
        assert_eq!(e.to_string(), "argument 1 `i:x`: not a 32-bit integer");
    }

    #[test]
    fn sends_one_datagram_to_loopback() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let target = receiver.local_addr().unwrap().to_string();
        let sent = send(&target, "/cue/go", &strings(&["1", "s:hi", "[", "T", "]"])).unwrap();
        let mut buf = [0u8; 1024];
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(n, sent);
        assert!(from.ip().is_loopback());
        let expected = OscPacket::Message(OscMessage::new(
            "/cue/go",
            vec![
                OscArg::Int(1),
                OscArg::String("hi".into()),
                OscArg::Array(vec![OscArg::True]),
            ],
        ));
        assert_eq!(osc::decode(&buf[..n]).unwrap(), expected);
    }
}
