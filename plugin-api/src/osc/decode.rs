//! Strict OSC 1.0/1.1 decoding with byte-offset errors and zero-copy views.
//!
//! # Why our own codec and not `rosc`
//!
//! `rosc` 0.11 is a good general-purpose crate, and the tests use it as an independent oracle. For a
//! show-control router it falls short in ways we checked against its source (0.11.4):
//!
//! - **No byte offsets in errors.** `rosc::OscError` variants carry a static message, a `String`
//!   or a nom `ErrorKind`, never a position; an operator looking at a rejected datagram in a
//!   packet dump cannot tell where it went wrong.
//! - **No `S` (symbol) type.** `rosc::OscType` has no symbol variant and its decoder returns
//!   ``BadArg("Type tag \"S\" is not implemented!")``, so a whole message from Max/Pd-style senders
//!   is lost.
//! - **No zero-copy view.** Decoding always builds an owned `OscPacket` (a `String` per address
//!   and string, a `Vec` per blob, argument list and bundle). The forward path here parses,
//!   matches and re-addresses without allocating, via [`PacketRef`] and [`MessageRef::arg_refs`].
//! - **No type-tag-less messages.** After the address it requires another NUL-terminated string,
//!   so `"/ping\0\0\0"` (a message from an old OSC 1.0 sender) is rejected.
//! - **No nesting caps.** Bundles recurse without a depth limit and `[` nests without one.
//! - **Lax validation**, which a strict router must not forward as-is: padding bytes are skipped
//!   without checking they are zero; the type-tag string's first byte is skipped without checking
//!   it is `,`; an unclosed `[` silently drops the arguments before it; trailing bytes after a
//!   message are returned as a "remainder" instead of being an error; bundle element sizes need
//!   not be multiples of 4.
//!
//! # What is validated
//!
//! [`PacketRef::parse`] checks everything once, recursively, without allocating: total size a
//! positive multiple of 4; a message starts with `/`, a bundle with `#bundle\0`; strings are valid
//! UTF-8, NUL-terminated and padded with zero bytes to a 4-byte boundary; the type-tag string
//! starts with `,` and holds only known tags (`i f s b h d t S c r m T F N I [ ]`); arrays are
//! balanced and no deeper than [`DecodeLimits::max_array_depth`]; argument data exactly fills the
//! message; blob sizes are non-negative, inside the message and zero-padded; `c` holds a Unicode
//! scalar value; bundle element sizes are positive multiples of 4 inside the bundle; bundles nest
//! no deeper than [`DecodeLimits::max_bundle_depth`]. Every error carries the offset of the
//! offending byte in the whole datagram.
//!
//! A message whose address is followed by nothing at all (no type-tag string) is accepted as a
//! message without arguments, as OSC 1.0 asks receivers to be robust to old senders.
//!
//! # Canonical form
//!
//! Because padding must be zero, lengths must be exact and nothing may trail, an accepted packet
//! has exactly one encoding: `encode(&parse(bytes)?.to_owned_packet()) == bytes` for every packet
//! `parse` accepts, with one exception: a message without a type-tag string is re-encoded with an
//! empty `,` tag string (4 bytes longer; the owned [`OscMessage`] cannot tell
//! "no tags" from "no arguments"). Floats keep their exact bits, NaN payloads included.

use super::timetag::TimeTag;
use super::types::{Midi, OscArg, OscBundle, OscMessage, OscPacket, Rgba};

const BUNDLE_TAG: &[u8; 8] = b"#bundle\0";

/// Caps that keep hostile packets cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Bundles nested deeper than this are refused (a top-level bundle is depth 1).
    pub max_bundle_depth: usize,
    /// `[` nested deeper than this is refused.
    pub max_array_depth: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_bundle_depth: 8,
            max_array_depth: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {kind}")]
pub struct DecodeError {
    /// Byte offset into the whole packet where the problem is.
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

/// What is wrong. The offset in [`DecodeError`] says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// Zero-length datagram.
    #[error("empty packet")]
    Empty,
    /// Total size not a multiple of 4; the offset is where the incomplete last word starts.
    #[error("packet size {0} is not a multiple of 4")]
    Misaligned(usize),
    /// Neither `/` (message) nor `#bundle\0` (bundle) at the start of a packet or bundle element.
    #[error("expected a message address starting with '/' or \"#bundle\", found byte 0x{0:02x}")]
    BadPacketStart(u8),
    /// A string runs to the end of its message without a NUL.
    #[error("string is not NUL-terminated")]
    UnterminatedString,
    /// A padding byte (after a string's NUL or a blob's data) is not zero.
    #[error("padding byte is 0x{0:02x}, not zero")]
    NonZeroPadding(u8),
    /// An address, string, symbol or type-tag string is not valid UTF-8.
    #[error("invalid utf-8")]
    InvalidUtf8,
    /// Something follows the address but it does not start with ','.
    #[error("type tag string must start with ',', found byte 0x{0:02x}")]
    MissingTypeTagComma(u8),
    #[error("unknown type tag {0:?}")]
    UnknownTypeTag(char),
    /// `]` without a matching `[`.
    #[error("']' without a matching '['")]
    UnexpectedArrayEnd,
    /// `[` never closed; the offset is the outermost unclosed `[`.
    #[error("'[' is never closed")]
    UnclosedArray,
    #[error("arrays nested deeper than {max}")]
    ArrayTooDeep { max: usize },
    #[error("bundles nested deeper than {max}")]
    BundleTooDeep { max: usize },
    /// Fixed-size data (an argument, a time tag, a size prefix) runs past the end of its message
    /// or bundle.
    #[error("need {needed} bytes, only {available} left")]
    Truncated { needed: usize, available: usize },
    /// Argument data ends before the message does.
    #[error("{0} trailing bytes after the last argument")]
    TrailingBytes(usize),
    #[error("negative blob size {0}")]
    NegativeBlobSize(i32),
    #[error("blob of {size} bytes overruns the message ({available} bytes left)")]
    BlobOverrun { size: usize, available: usize },
    /// A bundle element size that is zero, negative or not a multiple of 4.
    #[error("bundle element size {0} is not a positive multiple of 4")]
    BadElementSize(i32),
    #[error("bundle element of {size} bytes overruns the bundle ({available} bytes left)")]
    ElementOverrun { size: usize, available: usize },
    /// A `c` argument that is not a Unicode scalar value.
    #[error("char argument 0x{0:08x} is not a unicode scalar value")]
    InvalidChar(u32),
}

/// A validated packet, borrowed from the datagram it arrived in.
#[derive(Debug, Clone, Copy)]
pub enum PacketRef<'a> {
    Message(MessageRef<'a>),
    Bundle(BundleRef<'a>),
}

/// A validated message: address, type tags and argument bytes, all borrowed.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// The whole encoded message.
    pub raw: &'a [u8],
    pub address: &'a str,
    /// Type tags without the leading comma; empty when the message has none (old OSC 1.0 senders).
    pub type_tags: &'a str,
    /// The encoded type-tag string including comma and padding (empty when absent).
    pub raw_type_tags: &'a [u8],
    /// The encoded arguments.
    pub raw_args: &'a [u8],
}

/// A validated bundle.
#[derive(Debug, Clone, Copy)]
pub struct BundleRef<'a> {
    pub raw: &'a [u8],
    pub timetag: TimeTag,
    /// The element bytes (size-prefixed elements), already validated.
    pub raw_elements: &'a [u8],
}

impl<'a> PacketRef<'a> {
    /// Validates the whole packet (recursively) and returns a view. Allocation-free.
    pub fn parse(bytes: &'a [u8], limits: &DecodeLimits) -> Result<PacketRef<'a>, DecodeError> {
        if bytes.is_empty() {
            return Err(err(0, DecodeErrorKind::Empty));
        }
        if !bytes.len().is_multiple_of(4) {
            return Err(err(
                bytes.len() & !3,
                DecodeErrorKind::Misaligned(bytes.len()),
            ));
        }
        let parser = Parser { buf: bytes, limits };
        parser.packet(0, bytes.len(), 0)
    }

    pub fn raw(&self) -> &'a [u8] {
        match self {
            PacketRef::Message(m) => m.raw,
            PacketRef::Bundle(b) => b.raw,
        }
    }

    pub fn to_owned_packet(&self) -> OscPacket {
        match self {
            PacketRef::Message(m) => OscPacket::Message(m.to_owned_message()),
            PacketRef::Bundle(b) => OscPacket::Bundle(b.to_owned_bundle()),
        }
    }
}

impl<'a> BundleRef<'a> {
    /// The elements, in order. The bundle was validated by `parse`, so this cannot fail.
    pub fn elements(&self) -> BundleElements<'a> {
        BundleElements {
            rest: self.raw_elements,
        }
    }

    pub fn to_owned_bundle(&self) -> OscBundle {
        OscBundle {
            timetag: self.timetag,
            content: self.elements().map(|p| p.to_owned_packet()).collect(),
        }
    }
}

/// Iterator over a bundle's elements.
///
/// It trusts the validation done by [`PacketRef::parse`] and only re-finds boundaries. On a
/// hand-built `BundleRef` with malformed bytes it stops early rather than panicking.
pub struct BundleElements<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for BundleElements<'a> {
    type Item = PacketRef<'a>;
    fn next(&mut self) -> Option<PacketRef<'a>> {
        let size = read_i32(self.rest, 0)?;
        let size = usize::try_from(size).ok()?;
        let element = self.rest.get(4..4 + size)?;
        self.rest = &self.rest[4 + size..];
        let view = view_packet(element);
        if view.is_none() {
            self.rest = &[];
        }
        view
    }
}

impl<'a> MessageRef<'a> {
    /// Decodes the arguments into owned values.
    pub fn args(&self) -> Vec<OscArg> {
        let mut refs = self.arg_refs();
        collect_args(&mut refs)
    }

    /// The arguments as borrowed values, in type-tag order, without allocating. Arrays appear as
    /// [`ArgRef::ArrayStart`] ... [`ArgRef::ArrayEnd`].
    pub fn arg_refs(&self) -> ArgRefs<'a> {
        ArgRefs {
            tags: self.type_tags.as_bytes(),
            data: self.raw_args,
        }
    }

    /// Whether the message had a type-tag string at all (old OSC 1.0 senders omit it).
    pub fn has_type_tags(&self) -> bool {
        !self.raw_type_tags.is_empty()
    }

    pub fn to_owned_message(&self) -> OscMessage {
        OscMessage {
            address: self.address.to_owned(),
            args: self.args(),
        }
    }
}

/// One argument borrowed from a validated message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArgRef<'a> {
    Int(i32),
    Float(f32),
    Str(&'a str),
    Blob(&'a [u8]),
    Long(i64),
    Double(f64),
    Time(TimeTag),
    Symbol(&'a str),
    Char(char),
    Rgba(Rgba),
    Midi(Midi),
    True,
    False,
    Nil,
    Inf,
    /// `[`: the following arguments, up to the matching [`ArgRef::ArrayEnd`], form an array.
    ArrayStart,
    /// `]`.
    ArrayEnd,
}

impl ArgRef<'_> {
    /// The type tag this argument came from.
    pub fn tag(&self) -> char {
        match self {
            ArgRef::Int(_) => 'i',
            ArgRef::Float(_) => 'f',
            ArgRef::Str(_) => 's',
            ArgRef::Blob(_) => 'b',
            ArgRef::Long(_) => 'h',
            ArgRef::Double(_) => 'd',
            ArgRef::Time(_) => 't',
            ArgRef::Symbol(_) => 'S',
            ArgRef::Char(_) => 'c',
            ArgRef::Rgba(_) => 'r',
            ArgRef::Midi(_) => 'm',
            ArgRef::True => 'T',
            ArgRef::False => 'F',
            ArgRef::Nil => 'N',
            ArgRef::Inf => 'I',
            ArgRef::ArrayStart => '[',
            ArgRef::ArrayEnd => ']',
        }
    }

    /// The owned value of a non-array argument; `None` for `ArrayStart` / `ArrayEnd`.
    pub fn to_owned_scalar(&self) -> Option<OscArg> {
        Some(match *self {
            ArgRef::Int(v) => OscArg::Int(v),
            ArgRef::Float(v) => OscArg::Float(v),
            ArgRef::Str(s) => OscArg::String(s.to_owned()),
            ArgRef::Blob(b) => OscArg::Blob(b.to_vec()),
            ArgRef::Long(v) => OscArg::Long(v),
            ArgRef::Double(v) => OscArg::Double(v),
            ArgRef::Time(t) => OscArg::Time(t),
            ArgRef::Symbol(s) => OscArg::Symbol(s.to_owned()),
            ArgRef::Char(c) => OscArg::Char(c),
            ArgRef::Rgba(c) => OscArg::Rgba(c),
            ArgRef::Midi(m) => OscArg::Midi(m),
            ArgRef::True => OscArg::True,
            ArgRef::False => OscArg::False,
            ArgRef::Nil => OscArg::Nil,
            ArgRef::Inf => OscArg::Inf,
            ArgRef::ArrayStart | ArgRef::ArrayEnd => return None,
        })
    }
}

/// Zero-allocation iterator over a message's arguments (see [`MessageRef::arg_refs`]).
///
/// Trusts `parse`'s validation; on a hand-built `MessageRef` with malformed bytes it ends early
/// instead of panicking.
#[derive(Debug, Clone)]
pub struct ArgRefs<'a> {
    tags: &'a [u8],
    data: &'a [u8],
}

impl<'a> Iterator for ArgRefs<'a> {
    type Item = ArgRef<'a>;
    fn next(&mut self) -> Option<ArgRef<'a>> {
        let (&tag, tags) = self.tags.split_first()?;
        let decoded = decode_arg(tag, self.data);
        match decoded {
            Some((arg, used)) => {
                self.tags = tags;
                self.data = &self.data[used..];
                Some(arg)
            }
            None => {
                self.tags = &[];
                None
            }
        }
    }
}

/// Decodes one argument from the front of `data`; returns it and the bytes consumed.
fn decode_arg(tag: u8, data: &[u8]) -> Option<(ArgRef<'_>, usize)> {
    let word = |n: usize| -> Option<&[u8]> { data.get(..n) };
    Some(match tag {
        b'i' => (ArgRef::Int(read_i32(data, 0)?), 4),
        b'f' => (ArgRef::Float(f32::from_bits(read_u32(data, 0)?)), 4),
        b'h' => (
            ArgRef::Long(i64::from_be_bytes(word(8)?.try_into().ok()?)),
            8,
        ),
        b'd' => (
            ArgRef::Double(f64::from_bits(u64::from_be_bytes(
                word(8)?.try_into().ok()?,
            ))),
            8,
        ),
        b't' => (
            ArgRef::Time(TimeTag::from_be_bytes(word(8)?.try_into().ok()?)),
            8,
        ),
        b'c' => (ArgRef::Char(char::from_u32(read_u32(data, 0)?)?), 4),
        b'r' => {
            let w = word(4)?;
            (
                ArgRef::Rgba(Rgba {
                    r: w[0],
                    g: w[1],
                    b: w[2],
                    a: w[3],
                }),
                4,
            )
        }
        b'm' => {
            let w = word(4)?;
            (
                ArgRef::Midi(Midi {
                    port: w[0],
                    status: w[1],
                    data1: w[2],
                    data2: w[3],
                }),
                4,
            )
        }
        b's' | b'S' => {
            let nul = data.iter().position(|&b| b == 0)?;
            let s = std::str::from_utf8(&data[..nul]).ok()?;
            let used = pad4(nul + 1);
            if used > data.len() {
                return None;
            }
            (
                if tag == b's' {
                    ArgRef::Str(s)
                } else {
                    ArgRef::Symbol(s)
                },
                used,
            )
        }
        b'b' => {
            let size = usize::try_from(read_i32(data, 0)?).ok()?;
            let blob = data.get(4..4 + size)?;
            let used = 4 + pad4(size);
            if used > data.len() {
                return None;
            }
            (ArgRef::Blob(blob), used)
        }
        b'T' => (ArgRef::True, 0),
        b'F' => (ArgRef::False, 0),
        b'N' => (ArgRef::Nil, 0),
        b'I' => (ArgRef::Inf, 0),
        b'[' => (ArgRef::ArrayStart, 0),
        b']' => (ArgRef::ArrayEnd, 0),
        _ => return None,
    })
}

/// Builds owned arguments up to the end of the stream or the `]` closing the current array.
fn collect_args(refs: &mut ArgRefs<'_>) -> Vec<OscArg> {
    let mut out = Vec::new();
    while let Some(arg) = refs.next() {
        match arg {
            ArgRef::ArrayStart => out.push(OscArg::Array(collect_args(refs))),
            ArgRef::ArrayEnd => break,
            scalar => out.extend(scalar.to_owned_scalar()),
        }
    }
    out
}

/// Decodes a packet into owned values with the default limits.
pub fn decode(bytes: &[u8]) -> Result<OscPacket, DecodeError> {
    Ok(PacketRef::parse(bytes, &DecodeLimits::default())?.to_owned_packet())
}

/// Decodes a packet into owned values with the given limits.
pub fn decode_with_limits(bytes: &[u8], limits: &DecodeLimits) -> Result<OscPacket, DecodeError> {
    Ok(PacketRef::parse(bytes, limits)?.to_owned_packet())
}

// ---------------------------------------------------------------------------------------------
// Validation. Positions are absolute offsets into the datagram so errors in nested elements
// still point at the right byte.

struct Parser<'a, 'l> {
    buf: &'a [u8],
    limits: &'l DecodeLimits,
}

fn err(offset: usize, kind: DecodeErrorKind) -> DecodeError {
    DecodeError { offset, kind }
}

impl<'a> Parser<'a, '_> {
    /// Validates the packet occupying `buf[start..end]`; `bundle_depth` is the depth of the
    /// enclosing bundle (0 at top level).
    fn packet(
        &self,
        start: usize,
        end: usize,
        bundle_depth: usize,
    ) -> Result<PacketRef<'a>, DecodeError> {
        let bytes = &self.buf[start..end];
        if bytes.starts_with(BUNDLE_TAG) {
            self.bundle(start, end, bundle_depth + 1)
                .map(PacketRef::Bundle)
        } else if bytes.first() == Some(&b'/') {
            self.message(start, end).map(PacketRef::Message)
        } else {
            Err(err(
                start,
                DecodeErrorKind::BadPacketStart(bytes.first().copied().unwrap_or(0)),
            ))
        }
    }

    fn bundle(&self, start: usize, end: usize, depth: usize) -> Result<BundleRef<'a>, DecodeError> {
        if depth > self.limits.max_bundle_depth {
            return Err(err(
                start,
                DecodeErrorKind::BundleTooDeep {
                    max: self.limits.max_bundle_depth,
                },
            ));
        }
        let tt_at = start + BUNDLE_TAG.len();
        let timetag = TimeTag::from_be_bytes(self.fixed::<8>(tt_at, end)?);
        let elements_start = tt_at + 8;
        let mut pos = elements_start;
        while pos < end {
            let size = i32::from_be_bytes(self.fixed::<4>(pos, end)?);
            if size <= 0 || size % 4 != 0 {
                return Err(err(pos, DecodeErrorKind::BadElementSize(size)));
            }
            let size = size as usize;
            let available = end - pos - 4;
            if size > available {
                return Err(err(
                    pos,
                    DecodeErrorKind::ElementOverrun { size, available },
                ));
            }
            self.packet(pos + 4, pos + 4 + size, depth)?;
            pos += 4 + size;
        }
        Ok(BundleRef {
            raw: &self.buf[start..end],
            timetag,
            raw_elements: &self.buf[elements_start..end],
        })
    }

    fn message(&self, start: usize, end: usize) -> Result<MessageRef<'a>, DecodeError> {
        let (address, tags_start) = self.string(start, end)?;
        if tags_start == end {
            // No type-tag string at all: an OSC 1.0 message without arguments.
            return Ok(MessageRef {
                raw: &self.buf[start..end],
                address,
                type_tags: "",
                raw_type_tags: &[],
                raw_args: &[],
            });
        }
        let first = self.buf[tags_start];
        if first != b',' {
            return Err(err(tags_start, DecodeErrorKind::MissingTypeTagComma(first)));
        }
        let (tag_string, args_start) = self.string(tags_start, end)?;
        self.args(tags_start + 1, &tag_string.as_bytes()[1..], args_start, end)?;
        Ok(MessageRef {
            raw: &self.buf[start..end],
            address,
            type_tags: &tag_string[1..],
            raw_type_tags: &self.buf[tags_start..args_start],
            raw_args: &self.buf[args_start..end],
        })
    }

    /// Checks the argument data `buf[pos..end]` against `tags` (which start at `tags_at`).
    fn args(
        &self,
        tags_at: usize,
        tags: &[u8],
        mut pos: usize,
        end: usize,
    ) -> Result<(), DecodeError> {
        let mut depth = 0usize;
        let mut outermost_open = 0usize;
        for (i, &tag) in tags.iter().enumerate() {
            let tag_at = tags_at + i;
            match tag {
                b'i' | b'f' | b'r' | b'm' => {
                    self.fixed::<4>(pos, end)?;
                    pos += 4;
                }
                b'c' => {
                    let v = u32::from_be_bytes(self.fixed::<4>(pos, end)?);
                    if char::from_u32(v).is_none() {
                        return Err(err(pos, DecodeErrorKind::InvalidChar(v)));
                    }
                    pos += 4;
                }
                b'h' | b'd' | b't' => {
                    self.fixed::<8>(pos, end)?;
                    pos += 8;
                }
                b's' | b'S' => pos = self.string(pos, end)?.1,
                b'b' => {
                    let size = i32::from_be_bytes(self.fixed::<4>(pos, end)?);
                    let Ok(size) = usize::try_from(size) else {
                        return Err(err(pos, DecodeErrorKind::NegativeBlobSize(size)));
                    };
                    let available = end - pos - 4;
                    if size > available {
                        return Err(err(pos, DecodeErrorKind::BlobOverrun { size, available }));
                    }
                    let data_end = pos + 4 + size;
                    let padded_end = pos + 4 + pad4(size);
                    if padded_end > end {
                        // Unreachable while `pos` and `end` are 4-aligned; kept as a guard.
                        return Err(err(pos, DecodeErrorKind::BlobOverrun { size, available }));
                    }
                    self.zero_padding(data_end, padded_end)?;
                    pos = padded_end;
                }
                b'T' | b'F' | b'N' | b'I' => {}
                b'[' => {
                    if depth == 0 {
                        outermost_open = tag_at;
                    }
                    depth += 1;
                    if depth > self.limits.max_array_depth {
                        return Err(err(
                            tag_at,
                            DecodeErrorKind::ArrayTooDeep {
                                max: self.limits.max_array_depth,
                            },
                        ));
                    }
                }
                b']' => {
                    if depth == 0 {
                        return Err(err(tag_at, DecodeErrorKind::UnexpectedArrayEnd));
                    }
                    depth -= 1;
                }
                _ => {
                    // The tag string is valid UTF-8, so decode the whole char for the message.
                    let tag_str = std::str::from_utf8(&tags[i..]).unwrap_or("\u{fffd}");
                    let c = tag_str.chars().next().unwrap_or('\u{fffd}');
                    return Err(err(tag_at, DecodeErrorKind::UnknownTypeTag(c)));
                }
            }
        }
        if depth != 0 {
            return Err(err(outermost_open, DecodeErrorKind::UnclosedArray));
        }
        if pos != end {
            return Err(err(pos, DecodeErrorKind::TrailingBytes(end - pos)));
        }
        Ok(())
    }

    /// `N` bytes at `pos`, or `Truncated` if they run past `end`.
    fn fixed<const N: usize>(&self, pos: usize, end: usize) -> Result<[u8; N], DecodeError> {
        let available = end.saturating_sub(pos);
        if available < N {
            return Err(err(
                pos,
                DecodeErrorKind::Truncated {
                    needed: N,
                    available,
                },
            ));
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[pos..pos + N]);
        Ok(out)
    }

    /// A NUL-terminated, zero-padded UTF-8 string at `pos`; returns it and the position after
    /// its padding.
    fn string(&self, pos: usize, end: usize) -> Result<(&'a str, usize), DecodeError> {
        let region = &self.buf[pos..end];
        let Some(nul) = region.iter().position(|&b| b == 0) else {
            return Err(err(pos, DecodeErrorKind::UnterminatedString));
        };
        let s = std::str::from_utf8(&region[..nul])
            .map_err(|e| err(pos + e.valid_up_to(), DecodeErrorKind::InvalidUtf8))?;
        let next = pos + pad4(nul + 1);
        if next > end {
            // Unreachable while `pos` and `end` are 4-aligned; kept so the check cannot be lost.
            return Err(err(
                pos,
                DecodeErrorKind::Truncated {
                    needed: next - pos,
                    available: end - pos,
                },
            ));
        }
        self.zero_padding(pos + nul + 1, next)?;
        Ok((s, next))
    }

    fn zero_padding(&self, from: usize, to: usize) -> Result<(), DecodeError> {
        match self.buf[from..to].iter().position(|&b| b != 0) {
            Some(i) => Err(err(
                from + i,
                DecodeErrorKind::NonZeroPadding(self.buf[from + i]),
            )),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Non-validating views over already-validated bytes (used by `BundleElements`).

fn view_packet(bytes: &[u8]) -> Option<PacketRef<'_>> {
    if bytes.starts_with(BUNDLE_TAG) {
        let timetag = TimeTag::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        return Some(PacketRef::Bundle(BundleRef {
            raw: bytes,
            timetag,
            raw_elements: &bytes[16..],
        }));
    }
    let (address, tags_start) = view_string(bytes, 0)?;
    if tags_start == bytes.len() {
        return Some(PacketRef::Message(MessageRef {
            raw: bytes,
            address,
            type_tags: "",
            raw_type_tags: &[],
            raw_args: &[],
        }));
    }
    let (tag_string, args_start) = view_string(bytes, tags_start)?;
    Some(PacketRef::Message(MessageRef {
        raw: bytes,
        address,
        type_tags: tag_string.get(1..)?,
        raw_type_tags: &bytes[tags_start..args_start],
        raw_args: &bytes[args_start..],
    }))
}

fn view_string(bytes: &[u8], pos: usize) -> Option<(&str, usize)> {
    let region = bytes.get(pos..)?;
    let nul = region.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&region[..nul]).ok()?;
    let next = pos + pad4(nul + 1);
    (next <= bytes.len()).then_some((s, next))
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn read_i32(data: &[u8], at: usize) -> Option<i32> {
    read_u32(data, at).map(|v| v as i32)
}

/// `n` rounded up to a multiple of 4.
pub(crate) const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}
