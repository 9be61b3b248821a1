//! OSC encoding: owned packets to bytes, and re-addressing a validated message without touching
//! its arguments.
//!
//! The output is the canonical form
//! [`PacketRef::parse`](super::decode::PacketRef::parse) accepts: strings NUL-terminated and
//! zero-padded, every message with a `,` type-tag string (even without arguments), bundle
//! elements size-prefixed. Two things the owned types allow but OSC cannot carry are handled
//! without failing, so encoding never errors:
//!
//! - a string, symbol or address containing NUL is cut at the first NUL (what any receiver would
//!   read anyway; writing the rest would misalign every following argument);
//! - nothing checks that an address starts with `/`; such a packet encodes, and our decoder
//!   then rejects it.

use super::decode::{pad4, MessageRef};
use super::types::{OscArg, OscBundle, OscMessage, OscPacket};

pub fn encode(packet: &OscPacket) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(packet, &mut out);
    out
}

/// Encodes one message (convenience for the common case).
pub fn encode_message(msg: &OscMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message_into(msg, &mut out);
    out
}

/// Appends the encoding of `packet` to `out`.
pub fn encode_into(packet: &OscPacket, out: &mut Vec<u8>) {
    match packet {
        OscPacket::Message(m) => encode_message_into(m, out),
        OscPacket::Bundle(b) => encode_bundle_into(b, out),
    }
}

/// Appends the encoding of `msg` to `out`.
pub fn encode_message_into(msg: &OscMessage, out: &mut Vec<u8>) {
    write_string(&msg.address, out);
    // Type-tag string, written straight into `out` (no temporary String).
    let tags_start = out.len();
    out.push(b',');
    for arg in &msg.args {
        write_tags(arg, out);
    }
    out.push(0);
    pad_from(tags_start, out);
    for arg in &msg.args {
        write_arg(arg, out);
    }
}

fn encode_bundle_into(bundle: &OscBundle, out: &mut Vec<u8>) {
    out.extend_from_slice(b"#bundle\0");
    out.extend_from_slice(&bundle.timetag.to_be_bytes());
    for element in &bundle.content {
        let size_at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_into(element, out);
        let size = out.len() - size_at - 4;
        // OSC sizes are int32; a >2 GiB element cannot be sent in any transport we support.
        debug_assert!(size <= i32::MAX as usize);
        out[size_at..size_at + 4].copy_from_slice(&(size as u32).to_be_bytes());
    }
}

/// Appends `message` with its address replaced by `address`; the type tags and arguments are copied
/// as they are (no re-encoding). A message without type tags gets an empty `,` tag string.
pub fn encode_readdressed(message: &MessageRef<'_>, address: &str, out: &mut Vec<u8>) {
    write_string(address, out);
    if message.raw_type_tags.is_empty() {
        out.extend_from_slice(b",\0\0\0");
    } else {
        out.extend_from_slice(message.raw_type_tags);
    }
    out.extend_from_slice(message.raw_args);
}

/// Appends a message at `address` with one blob argument, without building an owned message first
/// (how datagrams from non-OSC devices enter routing).
pub fn encode_blob_message(address: &str, blob: &[u8], out: &mut Vec<u8>) {
    write_string(address, out);
    out.extend_from_slice(b",b\0\0");
    out.extend_from_slice(&(blob.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(blob);
    pad_from(start, out);
}

/// The number of bytes [`encode`] produces for `packet`, to size buffers up front.
pub fn encoded_len(packet: &OscPacket) -> usize {
    match packet {
        OscPacket::Message(m) => {
            let tags: usize = m.args.iter().map(tag_count).sum();
            string_len(&m.address) + pad4(1 + tags + 1) + m.args.iter().map(arg_len).sum::<usize>()
        }
        OscPacket::Bundle(b) => 16 + b.content.iter().map(|e| 4 + encoded_len(e)).sum::<usize>(),
    }
}

fn tag_count(arg: &OscArg) -> usize {
    match arg {
        OscArg::Array(items) => 2 + items.iter().map(tag_count).sum::<usize>(),
        _ => 1,
    }
}

fn arg_len(arg: &OscArg) -> usize {
    match arg {
        OscArg::Int(_) | OscArg::Float(_) | OscArg::Char(_) | OscArg::Rgba(_) | OscArg::Midi(_) => {
            4
        }
        OscArg::Long(_) | OscArg::Double(_) | OscArg::Time(_) => 8,
        OscArg::String(s) | OscArg::Symbol(s) => string_len(s),
        OscArg::Blob(b) => 4 + pad4(b.len()),
        OscArg::True | OscArg::False | OscArg::Nil | OscArg::Inf => 0,
        OscArg::Array(items) => items.iter().map(arg_len).sum(),
    }
}

/// The bytes of `s` that go on the wire: up to the first NUL.
fn wire_str(s: &str) -> &[u8] {
    let b = s.as_bytes();
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

fn string_len(s: &str) -> usize {
    pad4(wire_str(s).len() + 1)
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(wire_str(s));
    out.push(0);
    pad_from(start, out);
}

/// Zero-pads `out` so that the bytes written since `start` are a multiple of 4.
fn pad_from(start: usize, out: &mut Vec<u8>) {
    let written = out.len() - start;
    out.resize(start + pad4(written), 0);
}

fn write_tags(arg: &OscArg, out: &mut Vec<u8>) {
    let tag = match arg {
        OscArg::Int(_) => b'i',
        OscArg::Float(_) => b'f',
        OscArg::String(_) => b's',
        OscArg::Blob(_) => b'b',
        OscArg::Long(_) => b'h',
        OscArg::Double(_) => b'd',
        OscArg::Time(_) => b't',
        OscArg::Symbol(_) => b'S',
        OscArg::Char(_) => b'c',
        OscArg::Rgba(_) => b'r',
        OscArg::Midi(_) => b'm',
        OscArg::True => b'T',
        OscArg::False => b'F',
        OscArg::Nil => b'N',
        OscArg::Inf => b'I',
        OscArg::Array(items) => {
            out.push(b'[');
            for item in items {
                write_tags(item, out);
            }
            b']'
        }
    };
    out.push(tag);
}

fn write_arg(arg: &OscArg, out: &mut Vec<u8>) {
    match arg {
        OscArg::Int(v) => out.extend_from_slice(&v.to_be_bytes()),
        OscArg::Float(v) => out.extend_from_slice(&v.to_bits().to_be_bytes()),
        OscArg::String(s) | OscArg::Symbol(s) => write_string(s, out),
        OscArg::Blob(b) => {
            debug_assert!(b.len() <= i32::MAX as usize);
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(b);
            pad_from(start, out);
        }
        OscArg::Long(v) => out.extend_from_slice(&v.to_be_bytes()),
        OscArg::Double(v) => out.extend_from_slice(&v.to_bits().to_be_bytes()),
        OscArg::Time(t) => out.extend_from_slice(&t.to_be_bytes()),
        OscArg::Char(c) => out.extend_from_slice(&u32::from(*c).to_be_bytes()),
        OscArg::Rgba(c) => out.extend_from_slice(&[c.r, c.g, c.b, c.a]),
        OscArg::Midi(m) => out.extend_from_slice(&[m.port, m.status, m.data1, m.data2]),
        OscArg::True | OscArg::False | OscArg::Nil | OscArg::Inf => {}
        OscArg::Array(items) => {
            for item in items {
                write_arg(item, out);
            }
        }
    }
}
