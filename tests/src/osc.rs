//! A deliberately small, independent OSC encoder used as the tests' oracle.
//!
//! It is written straight from the OSC 1.0/1.1 spec and checked against the golden hex dumps of the
//! osc4py3 documentation (`shared/seeds/004_…`), so that a packet the tests build does not depend on
//! the codec under test. Tests also compare it with `patchbay_plugin_api::osc::encode`.

use patchbay_plugin_api::osc::{OscArg, OscMessage, OscPacket, TimeTag};

/// Appends `s` as an OSC string: the bytes, a NUL, then NULs up to a multiple of 4.
pub fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
    pad(out);
}

/// Appends NULs until `out.len()` is a multiple of 4.
pub fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn push_arg_data(out: &mut Vec<u8>, arg: &OscArg) {
    match arg {
        OscArg::Int(v) => out.extend_from_slice(&v.to_be_bytes()),
        OscArg::Float(v) => out.extend_from_slice(&v.to_bits().to_be_bytes()),
        OscArg::String(s) | OscArg::Symbol(s) => push_str(out, s.as_bytes()),
        OscArg::Blob(b) => {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
            pad(out);
        }
        OscArg::Long(v) => out.extend_from_slice(&v.to_be_bytes()),
        OscArg::Double(v) => out.extend_from_slice(&v.to_bits().to_be_bytes()),
        OscArg::Time(t) => {
            out.extend_from_slice(&t.seconds.to_be_bytes());
            out.extend_from_slice(&t.fraction.to_be_bytes());
        }
        OscArg::Char(c) => out.extend_from_slice(&(*c as u32).to_be_bytes()),
        OscArg::Rgba(c) => out.extend_from_slice(&[c.r, c.g, c.b, c.a]),
        OscArg::Midi(m) => out.extend_from_slice(&[m.port, m.status, m.data1, m.data2]),
        OscArg::True | OscArg::False | OscArg::Nil | OscArg::Inf => {}
        OscArg::Array(items) => {
            for item in items {
                push_arg_data(out, item);
            }
        }
    }
}

/// Encodes a message with a type-tag string (always present, `,` alone when there are no arguments).
pub fn message(address: &str, args: &[OscArg]) -> Vec<u8> {
    let mut out = Vec::new();
    push_str(&mut out, address.as_bytes());
    let mut tags = String::from(",");
    for arg in args {
        arg.push_type_tags(&mut tags);
    }
    push_str(&mut out, tags.as_bytes());
    for arg in args {
        push_arg_data(&mut out, arg);
    }
    out
}

/// Encodes a message with no type-tag string at all (old OSC 1.0 senders).
pub fn message_without_tags(address: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_str(&mut out, address.as_bytes());
    out
}

/// Encodes a bundle of already encoded elements.
pub fn bundle(timetag: TimeTag, elements: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"#bundle\0".to_vec();
    out.extend_from_slice(&timetag.seconds.to_be_bytes());
    out.extend_from_slice(&timetag.fraction.to_be_bytes());
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Encodes an owned packet with this oracle.
pub fn encode(packet: &OscPacket) -> Vec<u8> {
    match packet {
        OscPacket::Message(m) => message(&m.address, &m.args),
        OscPacket::Bundle(b) => {
            let elements: Vec<Vec<u8>> = b.content.iter().map(encode).collect();
            bundle(b.timetag, &elements)
        }
    }
}

/// Shorthand for an owned message packet.
pub fn msg(address: &str, args: Vec<OscArg>) -> OscPacket {
    OscPacket::Message(OscMessage::new(address, args))
}

/// Parses a hex dump such as `"2f6d792f 70617474"` (whitespace ignored).
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {text:?}"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex {s:?} in {text:?}"))
        })
        .collect()
}

/// A hex dump in 4-byte groups with an ASCII column, 16 bytes a line, for assertion messages.
pub fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:04x}:", i * 16));
        for group in line.chunks(4) {
            out.push(' ');
            for b in group {
                out.push_str(&format!("{b:02x}"));
            }
        }
        out.push_str("  ");
        for b in line {
            out.push(if b.is_ascii_graphic() {
                *b as char
            } else {
                '.'
            });
        }
        out.push('\n');
    }
    out
}

/// The address at the start of an encoded message (up to its first NUL), for readable assertions.
pub fn address_of(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Golden packets from the osc4py3 documentation's hex dumps (`shared/seeds/004_…`).
pub mod golden {
    use super::unhex;

    /// `OSCMessage('/my/pattern', ',iisf', [1, 3, "a string", 11.3])`
    pub fn my_pattern() -> Vec<u8> {
        unhex(
            "2f6d792f 70617474 65726e00 2c696973 66000000 00000001 00000003 61207374 \
             72696e67 00000000 4134cccd",
        )
    }

    /// `OSCBundle(timetag d2c3e04f.455a9000, [/first/message ,ii 1 2; /second/message ,fT 4.5 True])`
    pub fn bundle_two_messages() -> Vec<u8> {
        unhex(
            "2362756e 646c6500 d2c3e04f 455a9000 0000001c 2f666972 73742f6d 65737361 \
             67650000 2c696900 00000001 00000002 00000018 2f736563 6f6e642f 6d657373 \
             61676500 2c665400 40900000",
        )
    }

    /// `OSCMessage('/shortcut/with/typedetection', ',TIif', [True, OSC_BANG, 12, 11.3])`
    pub fn shortcut_typedetection() -> Vec<u8> {
        unhex(
            "2f73686f 72746375 742f7769 74682f74 79706564 65746563 74696f6e 00000000 \
             2c544969 66000000 0000000c 4134cccd",
        )
    }
}
