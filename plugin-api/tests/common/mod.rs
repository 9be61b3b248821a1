//! Helpers for the codec tests: hex literals, proptest strategies, bit-exact comparison (floats by
//! bits, so NaN payloads count) and conversions to/from rosc's types for the oracle tests.

use patchbay_plugin_api::osc::decode::ArgRef;
use patchbay_plugin_api::osc::encode::encode_readdressed;
use patchbay_plugin_api::osc::{
    Midi, OscArg, OscBundle, OscMessage, OscPacket, PacketRef, Rgba, TimeTag,
};
use proptest::prelude::*;

/// Bytes from a hex dump ("2f6d792f 70617474 ..."), whitespace ignored.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// "#bundle\0" + IMMEDIATELY: 16 bytes, elements follow.
pub fn bundle_header() -> Vec<u8> {
    let mut b = b"#bundle\0".to_vec();
    b.extend_from_slice(&TimeTag::IMMEDIATELY.to_be_bytes());
    b
}

// ---------------------------------------------------------------------------------------------
// Strategies. Nesting stays below the default caps (8) so every generated packet is valid.

fn arb_string() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

pub fn arb_arg(symbols: bool) -> impl Strategy<Value = OscArg> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(OscArg::Int),
        any::<f32>().prop_map(OscArg::Float),
        arb_string().prop_map(OscArg::String),
        proptest::collection::vec(any::<u8>(), 0..10).prop_map(OscArg::Blob),
        any::<i64>().prop_map(OscArg::Long),
        any::<f64>().prop_map(OscArg::Double),
        any::<(u32, u32)>().prop_map(|(s, f)| OscArg::Time(TimeTag::new(s, f))),
        arb_string().prop_map(move |s| if symbols {
            OscArg::Symbol(s)
        } else {
            OscArg::String(s)
        }),
        any::<char>().prop_map(OscArg::Char),
        any::<[u8; 4]>().prop_map(|[r, g, b, a]| OscArg::Rgba(Rgba { r, g, b, a })),
        any::<[u8; 4]>().prop_map(|[port, status, data1, data2]| OscArg::Midi(Midi {
            port,
            status,
            data1,
            data2
        })),
        Just(OscArg::True),
        Just(OscArg::False),
        Just(OscArg::Nil),
        Just(OscArg::Inf),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        proptest::collection::vec(inner, 0..4).prop_map(OscArg::Array)
    })
}

pub fn arb_message(symbols: bool) -> impl Strategy<Value = OscMessage> {
    (
        "/[a-z0-9_/]{0,16}",
        proptest::collection::vec(arb_arg(symbols), 0..6),
    )
        .prop_map(|(address, args)| OscMessage { address, args })
}

pub fn arb_packet(symbols: bool) -> impl Strategy<Value = OscPacket> {
    arb_message(symbols)
        .prop_map(OscPacket::Message)
        .prop_recursive(3, 12, 4, |inner| {
            (any::<(u32, u32)>(), proptest::collection::vec(inner, 0..4)).prop_map(
                |((s, f), content)| {
                    OscPacket::Bundle(OscBundle {
                        timetag: TimeTag::new(s, f),
                        content,
                    })
                },
            )
        })
}

// ---------------------------------------------------------------------------------------------
// Bit-exact equality.

pub fn args_bit_eq(a: &[OscArg], b: &[OscArg]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (OscArg::Float(x), OscArg::Float(y)) => x.to_bits() == y.to_bits(),
            (OscArg::Double(x), OscArg::Double(y)) => x.to_bits() == y.to_bits(),
            (OscArg::Array(x), OscArg::Array(y)) => args_bit_eq(x, y),
            _ => x == y,
        })
}

pub fn packets_bit_eq(a: &OscPacket, b: &OscPacket) -> bool {
    match (a, b) {
        (OscPacket::Message(x), OscPacket::Message(y)) => {
            x.address == y.address && args_bit_eq(&x.args, &y.args)
        }
        (OscPacket::Bundle(x), OscPacket::Bundle(y)) => {
            x.timetag == y.timetag
                && x.content.len() == y.content.len()
                && x.content
                    .iter()
                    .zip(&y.content)
                    .all(|(p, q)| packets_bit_eq(p, q))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// View consistency: the zero-copy accessors agree with the owned decoding.

pub fn has_typetagless_message(p: &PacketRef<'_>) -> bool {
    match p {
        PacketRef::Message(m) => !m.has_type_tags(),
        PacketRef::Bundle(b) => b.elements().any(|e| has_typetagless_message(&e)),
    }
}

pub fn check_views_consistent(p: &PacketRef<'_>) {
    match p {
        PacketRef::Message(m) => {
            assert_eq!(m.raw.len(), m.raw.len() / 4 * 4);
            let refs: Vec<ArgRef<'_>> = m.arg_refs().collect();
            let tags: String = refs.iter().map(ArgRef::tag).collect();
            assert_eq!(tags, m.type_tags);
            let scalars: Vec<OscArg> = refs.iter().filter_map(ArgRef::to_owned_scalar).collect();
            let flat = flatten(&m.args());
            assert!(args_bit_eq(&scalars, &flat));
            // Re-addressing keeps tags and args byte for byte.
            let mut out = Vec::new();
            encode_readdressed(m, "/re", &mut out);
            let re = PacketRef::parse(&out, &Default::default()).expect("readdressed parses");
            match re {
                PacketRef::Message(r) => {
                    assert_eq!(r.address, "/re");
                    assert_eq!(r.raw_args, m.raw_args);
                    assert_eq!(r.type_tags, m.type_tags);
                }
                PacketRef::Bundle(_) => panic!("readdressed message became a bundle"),
            }
        }
        PacketRef::Bundle(b) => {
            let mut total = 0;
            for e in b.elements() {
                total += 4 + e.raw().len();
                check_views_consistent(&e);
            }
            assert_eq!(total, b.raw_elements.len());
            assert_eq!(b.raw.len(), 16 + b.raw_elements.len());
        }
    }
}

fn flatten(args: &[OscArg]) -> Vec<OscArg> {
    let mut out = Vec::new();
    for a in args {
        match a {
            OscArg::Array(items) => out.extend(flatten(items)),
            other => out.push(other.clone()),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// rosc conversions (types both codecs support; rosc has no symbol).

pub fn to_rosc_arg(a: &OscArg) -> rosc::OscType {
    use rosc::OscType as R;
    match a {
        OscArg::Int(v) => R::Int(*v),
        OscArg::Float(v) => R::Float(*v),
        OscArg::String(s) => R::String(s.clone()),
        OscArg::Blob(b) => R::Blob(b.clone()),
        OscArg::Long(v) => R::Long(*v),
        OscArg::Double(v) => R::Double(*v),
        OscArg::Time(t) => R::Time(rosc::OscTime {
            seconds: t.seconds,
            fractional: t.fraction,
        }),
        OscArg::Symbol(_) => panic!("rosc has no symbol type"),
        OscArg::Char(c) => R::Char(*c),
        OscArg::Rgba(c) => R::Color(rosc::OscColor {
            red: c.r,
            green: c.g,
            blue: c.b,
            alpha: c.a,
        }),
        OscArg::Midi(m) => R::Midi(rosc::OscMidiMessage {
            port: m.port,
            status: m.status,
            data1: m.data1,
            data2: m.data2,
        }),
        OscArg::True => R::Bool(true),
        OscArg::False => R::Bool(false),
        OscArg::Nil => R::Nil,
        OscArg::Inf => R::Inf,
        OscArg::Array(items) => R::Array(rosc::OscArray {
            content: items.iter().map(to_rosc_arg).collect(),
        }),
    }
}

pub fn from_rosc_arg(a: &rosc::OscType) -> OscArg {
    use rosc::OscType as R;
    match a {
        R::Int(v) => OscArg::Int(*v),
        R::Float(v) => OscArg::Float(*v),
        R::String(s) => OscArg::String(s.clone()),
        R::Blob(b) => OscArg::Blob(b.clone()),
        R::Time(t) => OscArg::Time(TimeTag::new(t.seconds, t.fractional)),
        R::Long(v) => OscArg::Long(*v),
        R::Double(v) => OscArg::Double(*v),
        R::Char(c) => OscArg::Char(*c),
        R::Color(c) => OscArg::Rgba(Rgba {
            r: c.red,
            g: c.green,
            b: c.blue,
            a: c.alpha,
        }),
        R::Midi(m) => OscArg::Midi(Midi {
            port: m.port,
            status: m.status,
            data1: m.data1,
            data2: m.data2,
        }),
        R::Bool(true) => OscArg::True,
        R::Bool(false) => OscArg::False,
        R::Array(arr) => OscArg::Array(arr.content.iter().map(from_rosc_arg).collect()),
        R::Nil => OscArg::Nil,
        R::Inf => OscArg::Inf,
    }
}

pub fn to_rosc_packet(p: &OscPacket) -> rosc::OscPacket {
    match p {
        OscPacket::Message(m) => rosc::OscPacket::Message(rosc::OscMessage {
            addr: m.address.clone(),
            args: m.args.iter().map(to_rosc_arg).collect(),
        }),
        OscPacket::Bundle(b) => rosc::OscPacket::Bundle(rosc::OscBundle {
            timetag: rosc::OscTime {
                seconds: b.timetag.seconds,
                fractional: b.timetag.fraction,
            },
            content: b.content.iter().map(to_rosc_packet).collect(),
        }),
    }
}

pub fn from_rosc_packet(p: &rosc::OscPacket) -> OscPacket {
    match p {
        rosc::OscPacket::Message(m) => OscPacket::Message(OscMessage {
            address: m.addr.clone(),
            args: m.args.iter().map(from_rosc_arg).collect(),
        }),
        rosc::OscPacket::Bundle(b) => OscPacket::Bundle(OscBundle {
            timetag: TimeTag::new(b.timetag.seconds, b.timetag.fractional),
            content: b.content.iter().map(from_rosc_packet).collect(),
        }),
    }
}
