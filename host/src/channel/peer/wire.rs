//! The peerpy header: what every message on a peer connection (and every discovery datagram) starts
//! with. Pure code: parse and build, no sockets.
//!
//! # Format (peerpy 1.2.2, `peerpy/utils/__init__.py` `build_header` / `split_header`)
//!
//! A header is exactly [`HEADER_SIZE`] (128) bytes of UTF-8: the type, then `|` and the fields as
//! `key=value` joined with `&`, then `|` repeated up to 128 bytes. A header without fields is the
//! type followed by padding only.
//!
//! ```text
//! DATA|data_size=54&data_type=json|||||||||||||||||||||||||||||||||||| ... (to 128 bytes)
//! HELLO|peer_name=127.0.0.1:53315&data_type=json&strict=False||||||||| ... (to 128 bytes)
//! ACCEPT|||||||||||||||||||||||||||||||||||||||||||||||||||||||||||||| ... (to 128 bytes)
//! ```
//!
//! Values are Python's `str(value)`: `True`/`False` for booleans, decimal for integers. Nothing is
//! escaped, so a value can never contain `|`, `&` or `=`; [`build`] refuses such values instead of
//! sending a header peerpy would misread.
//!
//! Types peerpy 1.2.2 sends: `HELLO`, `ACCEPT`, `DENY`, `DATA` and `PING` on connections; `PING`
//! (with `pinger`) and `PONG` (with `ponger`) as discovery datagrams (see
//! [`super::discovery`]). peerpy has no other types.
//!
//! | type     | fields                                              | who sends it                  |
//! |----------|-----------------------------------------------------|-------------------------------|
//! | `HELLO`  | `peer_name` (ip:port), `data_type`, `strict`, `stream` (only when streaming) | the connecting side, first |
//! | `ACCEPT` | none                                                | the listening side            |
//! | `DENY`   | none                                                | the listening side, then it closes |
//! | `DATA`   | `data_size`, `data_type`; `data_size` bytes follow  | either side                   |
//! | `PING`   | none on a connection                                | either side, idle every `timeout` (2 s) |
//!
//! # How peerpy reads a header, and how we differ
//!
//! peerpy decodes 128 bytes as UTF-8, recognises the type with `startswith`, takes the text between
//! the first and second `|` as the fields, splits it on `&` and each part on `=` (a part without
//! exactly one `=` raises and kills peerpy's thread), and converts `data_size` with `int()` and
//! `strict` with `bool()`, so `strict=False` is **true** for peerpy (any non-empty string is).
//!
//! [`parse`] keeps that layout but reads what is written and refuses what peerpy would crash on:
//! the type must be exactly one of the known words; after the fields only `|` padding may follow;
//! every field is `key=value` with one `=`, a non-empty key and no duplicate; `strict` and `stream`
//! are the words `True`/`False` (also `true`/`false`/`1`/`0`); `data_size` is ASCII digits within a
//! limit the caller gives. Unknown fields are ignored (peerpy passes them on unread). Every refusal is a
//! [`HeaderError`]; nothing here panics, whatever the bytes.
//!
//! # Streaming connections
//!
//! A `HELLO` with `stream=True` makes the connection a stream of fixed-size records: the first
//! `DATA` header either side sends or receives fixes `data_size` for **both** directions, and
//! after it peerpy sends and reads bare records with no header. peerpy still sends `PING` headers on
//! such a connection whenever its read times out (every 2 s of silence from us), so a streaming
//! reader meets 128-byte `PING` headers between records; [`ping_prefix`] recognises one at a record
//! boundary (a json record starts with `{`, a pickle from protocol 2 on with `0x80`, an OSC packet
//! with `/` or `#`, so none can start with `PING|`). We never send `PING` on a streaming connection.
//!
//! peerpy's streaming has a race of its own: the side that sends first is, in its reading thread,
//! already waiting for a 128-byte header, so the first headerless record coming the other way is
//! read as a (non-`DATA`) header and lost, or, if longer than 128 bytes, cut. Only the first record
//! of the direction that did not send first is at risk.

use std::fmt;
use std::net::SocketAddr;

/// Every header is exactly this many bytes.
pub const HEADER_SIZE: usize = 128;
/// The separator between type and fields, and the padding byte.
pub const SEPARATOR: u8 = b'|';

/// `ACCEPT` with padding: the answer to an accepted `HELLO`.
pub const ACCEPT: [u8; HEADER_SIZE] = fixed(b"ACCEPT");
/// `DENY` with padding: the answer to a refused `HELLO` (the listener closes right after).
pub const DENY: [u8; HEADER_SIZE] = fixed(b"DENY");
/// `PING` with padding: peerpy's keep-alive on an idle connection; the receiver ignores it.
pub const PING: [u8; HEADER_SIZE] = fixed(b"PING");

/// A header without fields: the type, then padding.
const fn fixed(kind: &[u8]) -> [u8; HEADER_SIZE] {
    let mut out = [SEPARATOR; HEADER_SIZE];
    let mut i = 0;
    while i < kind.len() {
        out[i] = kind[i];
        i += 1;
    }
    out
}

/// How a connection's payloads are encoded (`data_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// `{"data": value}` as UTF-8 JSON.
    Json,
    /// The bytes as they are (OSC packets, for patchbay).
    Bytes,
    /// A Python pickle.
    Raw,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Json => "json",
            DataType::Bytes => "bytes",
            DataType::Raw => "raw",
        }
    }

    /// The word as peerpy writes it; `None` for anything else (peerpy checks case-sensitively too).
    pub fn from_word(word: &str) -> Option<DataType> {
        match word {
            "json" => Some(DataType::Json),
            "bytes" => Some(DataType::Bytes),
            "raw" => Some(DataType::Raw),
            _ => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The header types, as written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Hello,
    Accept,
    Deny,
    Data,
    Ping,
    Pong,
}

impl HeaderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderKind::Hello => "HELLO",
            HeaderKind::Accept => "ACCEPT",
            HeaderKind::Deny => "DENY",
            HeaderKind::Data => "DATA",
            HeaderKind::Ping => "PING",
            HeaderKind::Pong => "PONG",
        }
    }

    fn from_word(word: &str) -> Option<HeaderKind> {
        Some(match word {
            "HELLO" => HeaderKind::Hello,
            "ACCEPT" => HeaderKind::Accept,
            "DENY" => HeaderKind::Deny,
            "DATA" => HeaderKind::Data,
            "PING" => HeaderKind::Ping,
            "PONG" => HeaderKind::Pong,
            _ => return None,
        })
    }
}

/// A connection offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// What the offering peer says its listening address is. Self-declared: never use it to decide
    /// who may connect (use the connection's real source address).
    pub peer_name: String,
    pub data_type: DataType,
    /// As written (`strict=False` is false here; peerpy would read it as true).
    pub strict: bool,
    /// `stream=True`: a streaming connection. Absent means false.
    pub stream: bool,
}

/// Announces a payload of `data_size` bytes that follows at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    pub data_size: usize,
    pub data_type: DataType,
}

/// A header read from a peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    Hello(Hello),
    Accept,
    Deny,
    Data(DataHeader),
    /// Keep-alive; ignore it.
    Ping,
}

/// Why a header was refused. Values quoted in messages are cut to 40 characters and escaped, since
/// they come from the network and end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header is {0} bytes, not 128")]
    Size(usize),
    #[error("header is not UTF-8")]
    NotUtf8,
    #[error("unknown header type {}", Quoted(.0))]
    UnknownType(String),
    #[error("a {0} header does not belong on a peer connection")]
    WrongPlace(&'static str),
    #[error("text after the fields is not `|` padding")]
    TrailingText,
    #[error("empty field (two `&` in a row, or a `&` at an end)")]
    EmptyField,
    #[error("field {} is not key=value with exactly one `=`", Quoted(.0))]
    NotKeyValue(String),
    #[error("field with an empty name")]
    EmptyKey,
    #[error("field `{0}` appears twice")]
    Duplicate(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("`{0}` is empty")]
    EmptyValue(&'static str),
    #[error("unknown data_type {} (expected json, bytes or raw)", Quoted(.0))]
    UnknownDataType(String),
    #[error("data_size {} is negative", Quoted(.0))]
    NegativeSize(String),
    #[error("data_size {} is not a number", Quoted(.0))]
    NotANumber(String),
    #[error("data_size {size} is over the limit of {max} bytes")]
    TooLarge { size: String, max: usize },
    #[error("`{field}` is {}, expected True or False", Quoted(.value))]
    NotABool { field: &'static str, value: String },
    #[error("field {} holds `|`, `&` or `=`, which a header cannot carry", Quoted(.0))]
    Unrepresentable(String),
    #[error("header would be {0} bytes, over 128")]
    TooLong(usize),
}

/// Shows untrusted text escaped, in backquotes, cut to 40 characters.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 40;
        f.write_str("`")?;
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX {
                f.write_str("...")?;
                break;
            }
            write!(f, "{}", c.escape_debug())?;
        }
        f.write_str("`")
    }
}

/// A header split into its type and fields, before any field is interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader<'a> {
    /// The text before the first `|`, unchecked.
    pub kind: &'a str,
    pub fields: Vec<(&'a str, &'a str)>,
}

impl<'a> RawHeader<'a> {
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn require(&self, key: &'static str) -> Result<&'a str, HeaderError> {
        self.get(key).ok_or(HeaderError::MissingField(key))
    }

    /// The type, if it is one peerpy knows.
    pub fn header_kind(&self) -> Result<HeaderKind, HeaderError> {
        HeaderKind::from_word(self.kind)
            .ok_or_else(|| HeaderError::UnknownType(self.kind.to_string()))
    }
}

/// Splits header text of any length (padding optional) into type and fields; see the module docs
/// for the rules. Discovery datagrams use this directly; connection headers go through [`parse`].
pub fn split(text: &str) -> Result<RawHeader<'_>, HeaderError> {
    let Some((kind, rest)) = text.split_once('|') else {
        return Ok(RawHeader {
            kind: text,
            fields: Vec::new(),
        });
    };
    let (body, padding) = rest.split_once('|').unwrap_or((rest, ""));
    if padding.bytes().any(|b| b != SEPARATOR) {
        return Err(HeaderError::TrailingText);
    }
    let mut fields: Vec<(&str, &str)> = Vec::new();
    if !body.is_empty() {
        for part in body.split('&') {
            if part.is_empty() {
                return Err(HeaderError::EmptyField);
            }
            let mut pieces = part.split('=');
            let (Some(key), Some(value), None) = (pieces.next(), pieces.next(), pieces.next())
            else {
                return Err(HeaderError::NotKeyValue(part.to_string()));
            };
            if key.is_empty() {
                return Err(HeaderError::EmptyKey);
            }
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(HeaderError::Duplicate(key.to_string()));
            }
            fields.push((key, value));
        }
    }
    Ok(RawHeader { kind, fields })
}

/// Parses one 128-byte header read from a peer connection. `max_data_size` caps `data_size` (the
/// caller's memory limit for one payload).
pub fn parse(bytes: &[u8], max_data_size: usize) -> Result<Header, HeaderError> {
    if bytes.len() != HEADER_SIZE {
        return Err(HeaderError::Size(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| HeaderError::NotUtf8)?;
    let raw = split(text)?;
    match raw.header_kind()? {
        HeaderKind::Hello => {
            let peer_name = raw.require("peer_name")?;
            if peer_name.is_empty() {
                return Err(HeaderError::EmptyValue("peer_name"));
            }
            Ok(Header::Hello(Hello {
                peer_name: peer_name.to_string(),
                data_type: parse_data_type(raw.require("data_type")?)?,
                strict: parse_bool("strict", raw.require("strict")?)?,
                stream: match raw.get("stream") {
                    Some(value) => parse_bool("stream", value)?,
                    None => false,
                },
            }))
        }
        HeaderKind::Data => Ok(Header::Data(DataHeader {
            data_size: parse_size(raw.require("data_size")?, max_data_size)?,
            data_type: parse_data_type(raw.require("data_type")?)?,
        })),
        HeaderKind::Accept => Ok(Header::Accept),
        HeaderKind::Deny => Ok(Header::Deny),
        HeaderKind::Ping => Ok(Header::Ping),
        HeaderKind::Pong => Err(HeaderError::WrongPlace("PONG")),
    }
}

fn parse_data_type(word: &str) -> Result<DataType, HeaderError> {
    DataType::from_word(word).ok_or_else(|| HeaderError::UnknownDataType(word.to_string()))
}

/// `True`/`False` as Python writes them, also `true`/`false`/`1`/`0`.
pub fn parse_bool(field: &'static str, value: &str) -> Result<bool, HeaderError> {
    match value {
        "True" | "true" | "1" => Ok(true),
        "False" | "false" | "0" => Ok(false),
        _ => Err(HeaderError::NotABool {
            field,
            value: value.to_string(),
        }),
    }
}

/// ASCII digits only (leading zeros allowed), at most `max`.
pub fn parse_size(value: &str, max: usize) -> Result<usize, HeaderError> {
    if let Some(digits) = value.strip_prefix('-') {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HeaderError::NegativeSize(value.to_string()));
        }
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::NotANumber(value.to_string()));
    }
    let too_large = || HeaderError::TooLarge {
        size: value.to_string(),
        max,
    };
    let size: usize = value.parse().map_err(|_| too_large())?;
    if size > max {
        return Err(too_large());
    }
    Ok(size)
}

/// Builds a header the way peerpy does: `KIND|k=v&k=v` padded with `|` to 128 bytes. Refuses a
/// key or value holding `|`, `&` or `=` (peerpy would misread it), and a header over 128 bytes.
pub fn build(kind: HeaderKind, fields: &[(&str, &str)]) -> Result<[u8; HEADER_SIZE], HeaderError> {
    let mut text = String::with_capacity(HEADER_SIZE);
    text.push_str(kind.as_str());
    for (i, (key, value)) in fields.iter().enumerate() {
        let bad = |s: &str| s.contains(['|', '&', '=']);
        if key.is_empty() || bad(key) || bad(value) {
            return Err(HeaderError::Unrepresentable(format!("{key}={value}")));
        }
        text.push(if i == 0 { '|' } else { '&' });
        text.push_str(key);
        text.push('=');
        text.push_str(value);
    }
    if text.len() > HEADER_SIZE {
        return Err(HeaderError::TooLong(text.len()));
    }
    let mut out = [SEPARATOR; HEADER_SIZE];
    out[..text.len()].copy_from_slice(text.as_bytes());
    Ok(out)
}

/// Python's `str(bool)`.
fn py_bool(value: bool) -> &'static str {
    if value {
        "True"
    } else {
        "False"
    }
}

/// The `HELLO` patchbay sends when it connects: `peer_name` is our listening address, `stream`
/// appears only when streaming (as peerpy does). Always fits: the longest socket address leaves
/// room (see the tests).
pub fn hello(
    peer_name: SocketAddr,
    data_type: DataType,
    strict: bool,
    stream: bool,
) -> [u8; HEADER_SIZE] {
    let name = peer_name.to_string();
    let mut fields = vec![
        ("peer_name", name.as_str()),
        ("data_type", data_type.as_str()),
        ("strict", py_bool(strict)),
    ];
    if stream {
        fields.push(("stream", "True"));
    }
    build(HeaderKind::Hello, &fields).unwrap_or(DENY_FALLBACK)
}

/// The `DATA` header announcing `data_size` bytes of `data_type`.
pub fn data(data_size: usize, data_type: DataType) -> [u8; HEADER_SIZE] {
    let size = data_size.to_string();
    build(
        HeaderKind::Data,
        &[("data_size", &size), ("data_type", data_type.as_str())],
    )
    .unwrap_or(DENY_FALLBACK)
}

/// Never used: the builders above cannot fail (socket addresses and numbers contain none of
/// `|&=` and fit in 128 bytes, which the tests check at the extremes). A harmless header instead
/// of a panic, should that ever change.
const DENY_FALLBACK: [u8; HEADER_SIZE] = DENY;

/// What the bytes at a record boundary of a streaming connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingPrefix {
    /// The first 128 bytes are a `PING` header: skip them.
    Ping,
    /// Not a `PING` header: a record starts here.
    Record,
    /// What is there so far matches the start of a `PING` header; read more to decide.
    NeedMore,
}

/// Checks whether `buffered` (the unread bytes at a record boundary) starts with a `PING` header.
pub fn ping_prefix(buffered: &[u8]) -> PingPrefix {
    let n = buffered.len().min(HEADER_SIZE);
    if buffered[..n] != PING[..n] {
        PingPrefix::Record
    } else if n == HEADER_SIZE {
        PingPrefix::Ping
    } else {
        PingPrefix::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 << 20;

    /// peerpy 1.2.2's own bytes, captured from a real peerpy connecting to a Python socket server.
    fn padded(text: &str) -> Vec<u8> {
        let mut v = text.as_bytes().to_vec();
        v.resize(HEADER_SIZE, b'|');
        v
    }

    #[test]
    fn parses_what_peerpy_sends() {
        let h = parse(
            &padded("HELLO|peer_name=127.0.0.1:53315&data_type=json&strict=False"),
            MAX,
        )
        .unwrap();
        assert_eq!(
            h,
            Header::Hello(Hello {
                peer_name: "127.0.0.1:53315".into(),
                data_type: DataType::Json,
                strict: false,
                stream: false,
            })
        );
        let h = parse(
            &padded("HELLO|peer_name=127.0.0.1:39563&data_type=raw&strict=True&stream=True"),
            MAX,
        )
        .unwrap();
        assert!(matches!(
            h,
            Header::Hello(Hello {
                strict: true,
                stream: true,
                data_type: DataType::Raw,
                ..
            })
        ));
        assert_eq!(
            parse(&padded("DATA|data_size=54&data_type=json"), MAX).unwrap(),
            Header::Data(DataHeader {
                data_size: 54,
                data_type: DataType::Json
            })
        );
        assert_eq!(parse(&PING, MAX).unwrap(), Header::Ping);
        assert_eq!(parse(&ACCEPT, MAX).unwrap(), Header::Accept);
        assert_eq!(parse(&DENY, MAX).unwrap(), Header::Deny);
        // Fields order does not matter; unknown fields are ignored.
        assert_eq!(
            parse(&padded("DATA|data_type=bytes&x=1&data_size=007"), MAX).unwrap(),
            Header::Data(DataHeader {
                data_size: 7,
                data_type: DataType::Bytes
            })
        );
    }

    #[test]
    fn builds_byte_for_byte_like_peerpy() {
        // Expected bytes from peerpy.utils.build_header / build_hello_header / build_data_header.
        assert_eq!(
            hello(
                "127.0.0.1:53315".parse().unwrap(),
                DataType::Json,
                false,
                false
            )
            .to_vec(),
            padded("HELLO|peer_name=127.0.0.1:53315&data_type=json&strict=False")
        );
        assert_eq!(
            hello("127.0.0.1:9".parse().unwrap(), DataType::Raw, true, true).to_vec(),
            padded("HELLO|peer_name=127.0.0.1:9&data_type=raw&strict=True&stream=True")
        );
        assert_eq!(
            data(54, DataType::Json).to_vec(),
            padded("DATA|data_size=54&data_type=json")
        );
        assert_eq!(ACCEPT.to_vec(), padded("ACCEPT"));
        assert_eq!(DENY.to_vec(), padded("DENY"));
        assert_eq!(PING.to_vec(), padded("PING"));
        assert_eq!(
            build(HeaderKind::Pong, &[("ponger", "10.0.0.2:7000")])
                .unwrap()
                .to_vec(),
            padded("PONG|ponger=10.0.0.2:7000")
        );
    }

    #[test]
    fn builders_fit_at_the_extremes() {
        let longest: SocketAddr =
            "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535"
                .parse()
                .unwrap();
        let h = hello(longest, DataType::Bytes, false, true);
        assert_ne!(h, DENY_FALLBACK);
        match parse(&h, MAX).unwrap() {
            Header::Hello(hello) => {
                assert_eq!(hello.peer_name.parse::<SocketAddr>().unwrap(), longest);
                assert!(hello.stream && !hello.strict);
            }
            other => panic!("{other:?}"),
        }
        let d = data(usize::MAX, DataType::Bytes);
        assert_ne!(d, DENY_FALLBACK);
        assert!(matches!(
            parse(&d, usize::MAX).unwrap(),
            Header::Data(DataHeader {
                data_size: usize::MAX,
                ..
            })
        ));
    }

    #[test]
    fn round_trips() {
        for dt in [DataType::Json, DataType::Bytes, DataType::Raw] {
            for size in [0usize, 1, 127, 128, 8192, 1 << 24] {
                assert_eq!(
                    parse(&data(size, dt), usize::MAX).unwrap(),
                    Header::Data(DataHeader {
                        data_size: size,
                        data_type: dt
                    })
                );
            }
            for (strict, stream) in [(false, false), (true, false), (false, true), (true, true)] {
                let addr: SocketAddr = "192.168.1.20:5001".parse().unwrap();
                assert_eq!(
                    parse(&hello(addr, dt, strict, stream), MAX).unwrap(),
                    Header::Hello(Hello {
                        peer_name: addr.to_string(),
                        data_type: dt,
                        strict,
                        stream
                    })
                );
            }
        }
    }

    #[test]
    fn strict_and_stream_read_as_written() {
        for (word, expected) in [
            ("True", true),
            ("true", true),
            ("1", true),
            ("False", false),
            ("false", false),
            ("0", false),
        ] {
            let h = parse(
                &padded(&format!(
                    "HELLO|peer_name=a:1&data_type=json&strict={word}&stream={word}"
                )),
                MAX,
            )
            .unwrap();
            assert_eq!(
                h,
                Header::Hello(Hello {
                    peer_name: "a:1".into(),
                    data_type: DataType::Json,
                    strict: expected,
                    stream: expected
                })
            );
        }
        for word in ["", "yes", "TRUE", "False ", "2", "none"] {
            let err = parse(
                &padded(&format!("HELLO|peer_name=a:1&data_type=json&strict={word}")),
                MAX,
            )
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    HeaderError::NotABool {
                        field: "strict",
                        ..
                    }
                ),
                "{word:?}: {err}"
            );
        }
    }

    fn refusal(text: &str) -> HeaderError {
        parse(&padded(text), 1000).unwrap_err()
    }

    #[test]
    fn refuses_hostile_headers_with_clear_messages() {
        let cases: &[(&str, &str)] = &[
            (
                "HELLOX|peer_name=a:1&data_type=json&strict=True",
                "unknown header type `HELLOX`",
            ),
            (
                "hello|peer_name=a:1&data_type=json&strict=True",
                "unknown header type `hello`",
            ),
            ("", "unknown header type ``"),
            (
                "PONG|ponger=1.2.3.4:5",
                "a PONG header does not belong on a peer connection",
            ),
            (
                "HELLO|data_type=json&strict=True",
                "missing field `peer_name`",
            ),
            (
                "HELLO|peer_name=a:1&strict=True",
                "missing field `data_type`",
            ),
            (
                "HELLO|peer_name=a:1&data_type=json",
                "missing field `strict`",
            ),
            (
                "HELLO|peer_name=&data_type=json&strict=True",
                "`peer_name` is empty",
            ),
            (
                "HELLO|peer_name=a:1&data_type=xml&strict=True",
                "unknown data_type `xml` (expected json, bytes or raw)",
            ),
            (
                "HELLO|peer_name=a:1&data_type=JSON&strict=True",
                "unknown data_type `JSON` (expected json, bytes or raw)",
            ),
            ("DATA|data_type=json", "missing field `data_size`"),
            ("DATA|data_size=5", "missing field `data_type`"),
            (
                "DATA|data_size=-5&data_type=json",
                "data_size `-5` is negative",
            ),
            (
                "DATA|data_size=5.0&data_type=json",
                "data_size `5.0` is not a number",
            ),
            (
                "DATA|data_size=&data_type=json",
                "data_size `` is not a number",
            ),
            (
                "DATA|data_size= 5&data_type=json",
                "data_size ` 5` is not a number",
            ),
            (
                "DATA|data_size=+5&data_type=json",
                "data_size `+5` is not a number",
            ),
            (
                "DATA|data_size=1_000&data_type=json",
                "data_size `1_000` is not a number",
            ),
            (
                "DATA|data_size=0x10&data_type=json",
                "data_size `0x10` is not a number",
            ),
            (
                "DATA|data_size=-&data_type=json",
                "data_size `-` is not a number",
            ),
            (
                "DATA|data_size=١٢&data_type=json",
                "data_size `١٢` is not a number",
            ),
            (
                "DATA|data_size=1001&data_type=json",
                "data_size 1001 is over the limit of 1000 bytes",
            ),
            (
                "DATA|data_size=99999999999999999999999999&data_type=json",
                "data_size 99999999999999999999999999 is over the limit of 1000 bytes",
            ),
            (
                "DATA|data_size=5&data_type=json|junk",
                "text after the fields is not `|` padding",
            ),
            (
                "DATA|data_size=5&&data_type=json",
                "empty field (two `&` in a row, or a `&` at an end)",
            ),
            (
                "DATA|data_size=5&data_type=json&",
                "empty field (two `&` in a row, or a `&` at an end)",
            ),
            (
                "DATA|data_size=5&data_type",
                "field `data_type` is not key=value with exactly one `=`",
            ),
            (
                "DATA|data_size=5=6&data_type=json",
                "field `data_size=5=6` is not key=value with exactly one `=`",
            ),
            ("DATA|=5&data_type=json", "field with an empty name"),
            (
                "DATA|data_size=5&data_size=6&data_type=json",
                "field `data_size` appears twice",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(refusal(text).to_string(), *message, "{text:?}");
        }
    }

    #[test]
    fn refuses_wrong_sizes_and_encodings() {
        assert_eq!(parse(b"", MAX).unwrap_err(), HeaderError::Size(0));
        assert_eq!(
            parse(&[b'|'; 127], MAX).unwrap_err().to_string(),
            "header is 127 bytes, not 128"
        );
        assert_eq!(
            parse(&[b'|'; 129], MAX).unwrap_err(),
            HeaderError::Size(129)
        );
        let mut h = padded("DATA|data_size=5&data_type=json");
        h[40] = 0xff;
        assert_eq!(
            parse(&h, MAX).unwrap_err().to_string(),
            "header is not UTF-8"
        );
        // A multi-byte character cut by the 128-byte boundary is not UTF-8 either.
        let mut h = padded("PING");
        h[127] = 0xc3;
        assert_eq!(parse(&h, MAX).unwrap_err(), HeaderError::NotUtf8);
    }

    #[test]
    fn untrusted_text_in_messages_is_escaped_and_cut() {
        let err = refusal("\x1b[2J\u{7}evil-type-that-goes-on-and-on-and-on-and-on-forever|a=1");
        let msg = err.to_string();
        assert!(!msg.contains('\x1b') && !msg.contains('\u{7}'), "{msg}");
        assert!(
            msg.starts_with("unknown header type `\\u{1b}[2J\\u{7}evil"),
            "{msg}"
        );
        assert!(msg.ends_with("...`"), "{msg}");
    }

    #[test]
    fn build_refuses_what_peerpy_would_misread() {
        for value in ["a|b", "a&b", "a=b"] {
            let err = build(HeaderKind::Hello, &[("peer_name", value)]).unwrap_err();
            assert!(matches!(err, HeaderError::Unrepresentable(_)), "{value}");
        }
        assert!(matches!(
            build(HeaderKind::Data, &[("", "x")]).unwrap_err(),
            HeaderError::Unrepresentable(_)
        ));
        let long = "x".repeat(120);
        assert_eq!(
            build(HeaderKind::Pong, &[("ponger", &long)]).unwrap_err(),
            HeaderError::TooLong(4 + 1 + 7 + 120)
        );
        // Exactly 128 bytes is fine, with no padding at all.
        let fits = "x".repeat(128 - 12);
        let h = build(HeaderKind::Pong, &[("ponger", &fits)]).unwrap();
        assert_eq!(h[127], b'x');
        assert_eq!(
            split(std::str::from_utf8(&h).unwrap())
                .unwrap()
                .get("ponger"),
            Some(fits.as_str())
        );
    }

    #[test]
    fn split_is_lenient_about_length_only() {
        let raw = split("PING|pinger=10.0.0.1:1024").unwrap();
        assert_eq!(raw.kind, "PING");
        assert_eq!(raw.get("pinger"), Some("10.0.0.1:1024"));
        let raw = split("PONG").unwrap();
        assert_eq!(raw.kind, "PONG");
        assert!(raw.fields.is_empty());
        assert_eq!(split("PING||||").unwrap().fields, vec![]);
    }

    #[test]
    fn ping_prefix_at_record_boundaries() {
        assert_eq!(ping_prefix(&PING), PingPrefix::Ping);
        let mut more = PING.to_vec();
        more.extend_from_slice(b"{\"data\": 1}");
        assert_eq!(ping_prefix(&more), PingPrefix::Ping);
        assert_eq!(ping_prefix(b""), PingPrefix::NeedMore);
        assert_eq!(ping_prefix(b"PING|||"), PingPrefix::NeedMore);
        assert_eq!(ping_prefix(b"PINGx"), PingPrefix::Record);
        assert_eq!(ping_prefix(b"{\"data\""), PingPrefix::Record);
        assert_eq!(ping_prefix(&[0x80, 4]), PingPrefix::Record);
        let mut almost = PING.to_vec();
        almost[127] = b'x';
        assert_eq!(ping_prefix(&almost), PingPrefix::Record);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse(&bytes, 1 << 20);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = split(text);
            }
        }

        #[test]
        fn parse_never_panics_on_header_like_text(
            kind in "(HELLO|DATA|PING|ACCEPT|DENY|PONG|X)",
            body in "[a-z_=&|0-9:.TFrue-]{0,100}",
        ) {
            let mut v = format!("{kind}|{body}").into_bytes();
            v.resize(HEADER_SIZE, b'|');
            let _ = parse(&v, 1 << 20);
        }
    }
}
