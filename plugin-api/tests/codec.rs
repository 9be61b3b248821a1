//! The strict OSC codec: golden bytes from the osc4py3 documentation (seed 004), every type, every
//! error kind with its offset, canonical-form and no-panic properties, and rosc as an independent
//! oracle in both directions.

mod common;

use common::*;
use patchbay_plugin_api::osc::decode::{decode_with_limits, ArgRef, BundleRef};
use patchbay_plugin_api::osc::encode::{encode_message, encode_readdressed, encoded_len};
use patchbay_plugin_api::osc::{
    decode, encode, DecodeError, DecodeErrorKind, DecodeLimits, Midi, OscArg, OscBundle,
    OscMessage, OscPacket, PacketRef, Rgba, TimeTag,
};
use proptest::prelude::*;

fn parse(bytes: &[u8]) -> Result<PacketRef<'_>, DecodeError> {
    PacketRef::parse(bytes, &DecodeLimits::default())
}

fn parse_msg(bytes: &[u8]) -> patchbay_plugin_api::osc::MessageRef<'_> {
    match parse(bytes).expect("valid packet") {
        PacketRef::Message(m) => m,
        PacketRef::Bundle(_) => panic!("expected a message"),
    }
}

fn parse_bundle(bytes: &[u8]) -> BundleRef<'_> {
    match parse(bytes).expect("valid packet") {
        PacketRef::Bundle(b) => b,
        PacketRef::Message(_) => panic!("expected a bundle"),
    }
}

fn parse_err(bytes: &[u8]) -> (usize, DecodeErrorKind) {
    let e = parse(bytes).expect_err("packet must be rejected");
    (e.offset, e.kind)
}

fn msg(address: &str, args: Vec<OscArg>) -> OscPacket {
    OscPacket::Message(OscMessage::new(address, args))
}

// ---------------------------------------------------------------------------------------------
// Golden bytes from the seed document's hex dumps.

const SEED_MY_PATTERN: &str = "2f6d792f 70617474 65726e00 2c696973
                               66000000 00000001 00000003 61207374
                               72696e67 00000000 4134cccd";

const SEED_BUNDLE: &str = "2362756e 646c6500 d2c3e04f 455a9000
                           0000001c 2f666972 73742f6d 65737361
                           67650000 2c696900 00000001 00000002
                           00000018 2f736563 6f6e642f 6d657373
                           61676500 2c665400 40900000";

const SEED_SHORTCUT: &str = "2f73686f 72746375 742f7769 74682f74
                             79706564 65746563 74696f6e 00000000
                             2c544969 66000000 0000000c 4134cccd";

#[test]
fn seed_my_pattern_decodes_and_reencodes_byte_exact() {
    let bytes = hex(SEED_MY_PATTERN);
    assert_eq!(bytes.len(), 44);
    let m = parse_msg(&bytes);
    assert_eq!(m.address, "/my/pattern");
    assert_eq!(m.type_tags, "iisf");
    assert_eq!(m.raw_type_tags, b",iisf\0\0\0");
    let expected = msg(
        "/my/pattern",
        vec![
            OscArg::Int(1),
            OscArg::Int(3),
            OscArg::String("a string".into()),
            OscArg::Float(11.3),
        ],
    );
    assert_eq!(decode(&bytes).unwrap(), expected);
    assert_eq!(encode(&expected), bytes);
    assert_eq!(encoded_len(&expected), bytes.len());
}

#[test]
fn seed_bundle_decodes_and_reencodes_byte_exact() {
    let bytes = hex(SEED_BUNDLE);
    assert_eq!(bytes.len(), 76);
    let b = parse_bundle(&bytes);
    // The hex dump's time tag (the doc's printed repr comes from a different run).
    assert_eq!(
        b.timetag,
        TimeTag {
            seconds: 0xd2c3_e04f,
            fraction: 0x455a_9000
        }
    );
    assert_eq!(
        b.timetag.to_unix_nanos().div_euclid(1_000_000_000),
        0xd2c3_e04f - 2_208_988_800
    );
    let elements: Vec<_> = b.elements().collect();
    assert_eq!(elements.len(), 2);
    assert_eq!(elements[0].raw(), &bytes[20..48]);
    assert_eq!(elements[1].raw(), &bytes[52..76]);
    let expected = OscPacket::Bundle(OscBundle {
        timetag: TimeTag {
            seconds: 3_536_052_303,
            fraction: 1_163_563_008,
        },
        content: vec![
            msg("/first/message", vec![OscArg::Int(1), OscArg::Int(2)]),
            msg("/second/message", vec![OscArg::Float(4.5), OscArg::True]),
        ],
    });
    assert_eq!(decode(&bytes).unwrap(), expected);
    assert_eq!(encode(&expected), bytes);
    assert_eq!(encoded_len(&expected), bytes.len());
}

#[test]
fn seed_shortcut_typedetection_decodes_and_reencodes_byte_exact() {
    let bytes = hex(SEED_SHORTCUT);
    let m = parse_msg(&bytes);
    assert_eq!(m.address, "/shortcut/with/typedetection");
    assert_eq!(m.type_tags, "TIif");
    let refs: Vec<_> = m.arg_refs().collect();
    assert_eq!(
        refs,
        vec![
            ArgRef::True,
            ArgRef::Inf,
            ArgRef::Int(12),
            ArgRef::Float(11.3)
        ]
    );
    let expected = msg(
        "/shortcut/with/typedetection",
        vec![
            OscArg::True,
            OscArg::Inf,
            OscArg::Int(12),
            OscArg::Float(11.3),
        ],
    );
    assert_eq!(decode(&bytes).unwrap(), expected);
    assert_eq!(encode(&expected), bytes);
}

// ---------------------------------------------------------------------------------------------
// Round trips of every type, arrays, bundles, type-tag-less messages, re-addressing.

fn every_type() -> Vec<OscArg> {
    vec![
        OscArg::Int(-7),
        OscArg::Float(-0.5),
        OscArg::String("héllo".into()),
        OscArg::Blob(vec![1, 2, 3, 4, 5]),
        OscArg::Long(i64::MIN),
        OscArg::Double(std::f64::consts::PI),
        OscArg::Time(TimeTag {
            seconds: 0xdead_beef,
            fraction: 0x0123_4567,
        }),
        OscArg::Symbol("sym".into()),
        OscArg::Char('é'),
        OscArg::Rgba(Rgba {
            r: 1,
            g: 2,
            b: 3,
            a: 255,
        }),
        OscArg::Midi(Midi {
            port: 0,
            status: 0x90,
            data1: 60,
            data2: 127,
        }),
        OscArg::True,
        OscArg::False,
        OscArg::Nil,
        OscArg::Inf,
        OscArg::Array(vec![OscArg::Int(1), OscArg::String("x".into())]),
    ]
}

#[test]
fn every_type_round_trips_one_at_a_time_and_together() {
    for arg in every_type() {
        let p = msg("/t", vec![arg.clone()]);
        let bytes = encode(&p);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(encoded_len(&p), bytes.len());
        assert_eq!(decode(&bytes).unwrap(), p, "{arg:?}");
    }
    let all = msg("/all/types", every_type());
    let bytes = encode(&all);
    let m = parse_msg(&bytes);
    assert_eq!(m.type_tags, "ifsbhdtScrmTFNI[is]");
    assert_eq!(PacketRef::Message(m).to_owned_packet(), all);
}

#[test]
fn arg_refs_borrow_from_the_datagram() {
    let p = msg(
        "/b",
        vec![
            OscArg::String("abc".into()),
            OscArg::Symbol("sy".into()),
            OscArg::Blob(vec![9; 5]),
        ],
    );
    let bytes = encode(&p);
    let m = parse_msg(&bytes);
    let refs: Vec<_> = m.arg_refs().collect();
    assert_eq!(
        refs,
        vec![
            ArgRef::Str("abc"),
            ArgRef::Symbol("sy"),
            ArgRef::Blob(&[9; 5])
        ]
    );
    // Borrowed, not copied: the slices point into `bytes`.
    let range = bytes.as_ptr_range();
    match refs[0] {
        ArgRef::Str(s) => assert!(range.contains(&s.as_ptr())),
        _ => unreachable!(),
    }
    match refs[2] {
        ArgRef::Blob(b) => assert!(range.contains(&b.as_ptr())),
        _ => unreachable!(),
    }
    let tags: String = refs.iter().map(ArgRef::tag).collect();
    assert_eq!(tags, m.type_tags);
}

#[test]
fn nested_arrays_round_trip_and_stream_as_start_end() {
    let p = msg(
        "/arr",
        vec![
            OscArg::Int(1),
            OscArg::Array(vec![
                OscArg::Array(vec![]),
                OscArg::Array(vec![OscArg::Float(2.0), OscArg::Array(vec![OscArg::Nil])]),
            ]),
            OscArg::Int(3),
        ],
    );
    let bytes = encode(&p);
    let m = parse_msg(&bytes);
    assert_eq!(m.type_tags, "i[[][f[N]]]i");
    assert_eq!(PacketRef::Message(m).to_owned_packet(), p);
    let refs: Vec<_> = m.arg_refs().collect();
    use ArgRef::*;
    assert_eq!(
        refs,
        vec![
            Int(1),
            ArrayStart,
            ArrayStart,
            ArrayEnd,
            ArrayStart,
            Float(2.0),
            ArrayStart,
            Nil,
            ArrayEnd,
            ArrayEnd,
            ArrayEnd,
            Int(3)
        ]
    );
}

#[test]
fn nested_bundles_round_trip() {
    let inner = OscPacket::Bundle(OscBundle {
        timetag: TimeTag::IMMEDIATELY,
        content: vec![msg("/inner", vec![OscArg::Int(5)]), msg("/inner2", vec![])],
    });
    let outer = OscPacket::Bundle(OscBundle {
        timetag: TimeTag {
            seconds: 3_900_000_000,
            fraction: 7,
        },
        content: vec![
            msg("/a", vec![]),
            inner.clone(),
            OscPacket::Bundle(OscBundle {
                timetag: TimeTag::IMMEDIATELY,
                content: vec![],
            }),
        ],
    });
    let bytes = encode(&outer);
    let b = parse_bundle(&bytes);
    let kinds: Vec<bool> = b
        .elements()
        .map(|e| matches!(e, PacketRef::Bundle(_)))
        .collect();
    assert_eq!(kinds, vec![false, true, true]);
    match b.elements().nth(1).unwrap() {
        PacketRef::Bundle(ib) => {
            assert!(ib.timetag.is_immediately());
            assert_eq!(ib.elements().count(), 2);
        }
        PacketRef::Message(_) => unreachable!(),
    }
    assert_eq!(decode(&bytes).unwrap(), outer);
}

#[test]
fn typetagless_message_is_a_message_without_arguments() {
    let bytes = b"/ping\0\0\0";
    let m = parse_msg(bytes);
    assert_eq!(m.address, "/ping");
    assert_eq!(m.type_tags, "");
    assert!(m.raw_type_tags.is_empty());
    assert!(m.raw_args.is_empty());
    assert!(!m.has_type_tags());
    assert_eq!(m.arg_refs().count(), 0);
    assert_eq!(decode(bytes).unwrap(), msg("/ping", vec![]));
    // Re-encoding always writes a type-tag string: the one documented canonical-form exception.
    assert_eq!(encode(&decode(bytes).unwrap()), b"/ping\0\0\0,\0\0\0");
    // Re-addressing gives it an empty ',' tag string too.
    let mut out = Vec::new();
    encode_readdressed(&m, "/pong/x", &mut out);
    assert_eq!(out, b"/pong/x\0,\0\0\0");
    // Also inside a bundle, where its element size is 8.
    let mut bundle = b"#bundle\0\0\0\0\0\0\0\0\x01\0\0\0\x08".to_vec();
    bundle.extend_from_slice(bytes);
    match parse(&bundle).unwrap() {
        PacketRef::Bundle(b) => match b.elements().next().unwrap() {
            PacketRef::Message(m) => assert_eq!((m.address, m.type_tags), ("/ping", "")),
            PacketRef::Bundle(_) => unreachable!(),
        },
        PacketRef::Message(_) => unreachable!(),
    }
}

#[test]
fn zero_argument_message_always_gets_a_comma() {
    assert_eq!(
        encode_message(&OscMessage::new("/go", vec![])),
        b"/go\0,\0\0\0"
    );
    let bytes = b"/go\0,\0\0\0";
    let m = parse_msg(bytes);
    assert!(m.has_type_tags());
    assert_eq!(m.raw_type_tags, b",\0\0\0");
}

#[test]
fn readdressing_copies_tags_and_args_verbatim() {
    let p = msg("/old", every_type());
    let bytes = encode(&p);
    let m = parse_msg(&bytes);
    let mut out = b"prefix".to_vec(); // appends, does not clear
    encode_readdressed(&m, "/a/much/longer/address", &mut out);
    assert_eq!(&out[..6], b"prefix");
    let re = parse_msg(&out[6..]);
    assert_eq!(re.address, "/a/much/longer/address");
    assert_eq!(re.raw_type_tags, m.raw_type_tags);
    assert_eq!(re.raw_args, m.raw_args);
    assert_eq!(re.args(), m.args());
}

#[test]
fn strings_with_nul_are_cut_at_the_nul_so_the_packet_stays_valid() {
    let p = msg("/s", vec![OscArg::String("ab\0cd".into()), OscArg::Int(9)]);
    let bytes = encode(&p);
    assert_eq!(encoded_len(&p), bytes.len());
    assert_eq!(
        decode(&bytes).unwrap(),
        msg("/s", vec![OscArg::String("ab".into()), OscArg::Int(9)])
    );
}

#[test]
fn float_bits_survive_including_nan_payloads_and_negative_zero() {
    let nan = f32::from_bits(0x7fc0_1234);
    let p = msg(
        "/f",
        vec![
            OscArg::Float(nan),
            OscArg::Float(-0.0),
            OscArg::Double(f64::from_bits(0x7ff8_0000_0000_beef)),
        ],
    );
    let bytes = encode(&p);
    match decode(&bytes).unwrap() {
        OscPacket::Message(m) => {
            assert!(matches!(m.args[0], OscArg::Float(f) if f.to_bits() == 0x7fc0_1234));
            assert!(matches!(m.args[1], OscArg::Float(f) if f.to_bits() == (-0.0f32).to_bits()));
            assert!(matches!(m.args[2], OscArg::Double(d) if d.to_bits() == 0x7ff8_0000_0000_beef));
        }
        OscPacket::Bundle(_) => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------------
// Every error kind, with its offset.

#[test]
fn error_empty() {
    assert_eq!(parse_err(b""), (0, DecodeErrorKind::Empty));
}

#[test]
fn error_misaligned_points_at_the_incomplete_last_word() {
    assert_eq!(
        parse_err(b"/abc\0\0\0\0,\0\0\0\0"),
        (12, DecodeErrorKind::Misaligned(13))
    );
    assert_eq!(parse_err(b"/ab"), (0, DecodeErrorKind::Misaligned(3)));
}

#[test]
fn error_bad_packet_start() {
    assert_eq!(
        parse_err(b"abc\0"),
        (0, DecodeErrorKind::BadPacketStart(b'a'))
    );
    // "#bundle" without its NUL is neither.
    assert_eq!(
        parse_err(b"#bundleX\0\0\0\0\0\0\0\x01"),
        (0, DecodeErrorKind::BadPacketStart(b'#'))
    );
    // Inside a bundle: offset is the element's first byte.
    let mut b = bundle_header();
    b.extend_from_slice(b"\0\0\0\x04xyz\0");
    assert_eq!(parse_err(&b), (20, DecodeErrorKind::BadPacketStart(b'x')));
}

#[test]
fn error_missing_nul() {
    assert_eq!(parse_err(b"/abc"), (0, DecodeErrorKind::UnterminatedString));
    // A string argument that runs to the end of the message.
    assert_eq!(
        parse_err(b"/a\0\0,s\0\0abcd"),
        (8, DecodeErrorKind::UnterminatedString)
    );
    // A type-tag string without NUL.
    assert_eq!(
        parse_err(b"/a\0\0,iii"),
        (4, DecodeErrorKind::UnterminatedString)
    );
}

#[test]
fn error_nonzero_padding() {
    assert_eq!(
        parse_err(b"/a\0x,\0\0\0"),
        (3, DecodeErrorKind::NonZeroPadding(b'x'))
    );
    assert_eq!(
        parse_err(b"/a\0\0,\0\0\x01"),
        (7, DecodeErrorKind::NonZeroPadding(1))
    );
    // Blob of 1 byte with garbage in its padding.
    assert_eq!(
        parse_err(b"/a\0\0,b\0\0\0\0\0\x01\xaa\0\x07\0"),
        (14, DecodeErrorKind::NonZeroPadding(7))
    );
}

#[test]
fn error_bad_utf8() {
    assert_eq!(parse_err(b"/a\xff\0"), (2, DecodeErrorKind::InvalidUtf8));
    assert_eq!(
        parse_err(b"/a\0\0,S\0\0ok\xc3\0"),
        (10, DecodeErrorKind::InvalidUtf8)
    );
}

#[test]
fn error_type_tags_without_comma() {
    assert_eq!(
        parse_err(b"/a\0\0i\0\0\0\0\0\0\x01"),
        (4, DecodeErrorKind::MissingTypeTagComma(b'i'))
    );
}

#[test]
fn error_unknown_tag() {
    assert_eq!(
        parse_err(b"/a\0\0,ix\0\0\0\0\x01"),
        (6, DecodeErrorKind::UnknownTypeTag('x'))
    );
    assert_eq!(
        parse_err(b"/a\0\0,\xc3\xa9\0"),
        (5, DecodeErrorKind::UnknownTypeTag('é'))
    );
    // ',' is not a tag either.
    assert_eq!(
        parse_err(b"/a\0\0,,\0\0"),
        (5, DecodeErrorKind::UnknownTypeTag(','))
    );
}

#[test]
fn error_unbalanced_array() {
    assert_eq!(
        parse_err(b"/a\0\0,i]\0\0\0\0\x01"),
        (6, DecodeErrorKind::UnexpectedArrayEnd)
    );
    // Offset of the outermost unclosed '['.
    assert_eq!(
        parse_err(b"/a\0\0,i[[i]\0\0\0\0\0\x01\0\0\0\x02"),
        (6, DecodeErrorKind::UnclosedArray)
    );
}

#[test]
fn error_array_depth_over_cap() {
    let limits = DecodeLimits {
        max_bundle_depth: 8,
        max_array_depth: 2,
    };
    let ok = b"/a\0\0,[[]]\0\0\0";
    assert!(PacketRef::parse(ok, &limits).is_ok());
    let deep = b"/a\0\0,[[[]]]\0";
    let e = PacketRef::parse(deep, &limits).unwrap_err();
    assert_eq!(
        (e.offset, e.kind),
        (7, DecodeErrorKind::ArrayTooDeep { max: 2 })
    );
    // The default cap is 8.
    let mut tags = ",".to_string() + &"[".repeat(9) + &"]".repeat(9);
    tags.push('\0');
    let mut p = b"/a\0\0".to_vec();
    p.extend_from_slice(tags.as_bytes());
    p.resize(p.len().div_ceil(4) * 4, 0);
    assert_eq!(
        parse_err(&p),
        (4 + 9, DecodeErrorKind::ArrayTooDeep { max: 8 })
    );
}

#[test]
fn error_bundle_depth_over_cap() {
    fn nest(levels: usize) -> OscPacket {
        let mut p = msg("/x", vec![]);
        for _ in 0..levels {
            p = OscPacket::Bundle(OscBundle {
                timetag: TimeTag::IMMEDIATELY,
                content: vec![p],
            });
        }
        p
    }
    let limits = DecodeLimits {
        max_bundle_depth: 2,
        max_array_depth: 8,
    };
    assert!(PacketRef::parse(&encode(&nest(2)), &limits).is_ok());
    let e = PacketRef::parse(&encode(&nest(3)), &limits).unwrap_err();
    // Bundles start at 0, 20 and 40 (16-byte header + 4-byte size each).
    assert_eq!(
        (e.offset, e.kind),
        (40, DecodeErrorKind::BundleTooDeep { max: 2 })
    );
    assert!(parse(&encode(&nest(8))).is_ok());
    assert_eq!(
        parse_err(&encode(&nest(9))).1,
        DecodeErrorKind::BundleTooDeep { max: 8 }
    );
    // Zero allows no bundle at all, but still messages.
    let none = DecodeLimits {
        max_bundle_depth: 0,
        max_array_depth: 8,
    };
    assert_eq!(
        PacketRef::parse(&encode(&nest(1)), &none)
            .unwrap_err()
            .offset,
        0
    );
    assert!(PacketRef::parse(&encode(&nest(0)), &none).is_ok());
    assert!(decode_with_limits(&encode(&nest(3)), &limits).is_err());
}

#[test]
fn error_truncated_argument_data() {
    assert_eq!(
        parse_err(b"/a\0\0,i\0\0"),
        (
            8,
            DecodeErrorKind::Truncated {
                needed: 4,
                available: 0
            }
        )
    );
    assert_eq!(
        parse_err(b"/a\0\0,ih\0\0\0\0\x01\0\0\0\0"),
        (
            12,
            DecodeErrorKind::Truncated {
                needed: 8,
                available: 4
            }
        )
    );
    // Bundle header cut short after "#bundle\0".
    assert_eq!(
        parse_err(b"#bundle\0\0\0\0\0"),
        (
            8,
            DecodeErrorKind::Truncated {
                needed: 8,
                available: 4
            }
        )
    );
}

#[test]
fn error_trailing_garbage() {
    assert_eq!(
        parse_err(b"/a\0\0,i\0\0\0\0\0\x01\xde\xad\xbe\xef"),
        (12, DecodeErrorKind::TrailingBytes(4))
    );
    // A type-tag-less message may not carry data either (it has no tags to say what it is).
    assert_eq!(
        parse_err(b"/a\0\0\0\0\0\0"),
        (4, DecodeErrorKind::MissingTypeTagComma(0))
    );
}

#[test]
fn error_blob_overruns() {
    assert_eq!(
        parse_err(b"/a\0\0,b\0\0\xff\xff\xff\xff"),
        (8, DecodeErrorKind::NegativeBlobSize(-1))
    );
    assert_eq!(
        parse_err(b"/a\0\0,b\0\0\0\0\0\x64abcd"),
        (
            8,
            DecodeErrorKind::BlobOverrun {
                size: 100,
                available: 4
            }
        )
    );
    // Exactly one byte too many.
    assert_eq!(
        parse_err(b"/a\0\0,b\0\0\0\0\0\x05abcd"),
        (
            8,
            DecodeErrorKind::BlobOverrun {
                size: 5,
                available: 4
            }
        )
    );
}

#[test]
fn error_bundle_element_sizes() {
    for (size, bad) in [(0i32, true), (-4, true), (6, true), (8, false)] {
        let mut b = bundle_header();
        b.extend_from_slice(&size.to_be_bytes());
        b.extend_from_slice(b"/a\0\0,\0\0\0");
        if bad {
            assert_eq!(parse_err(&b), (16, DecodeErrorKind::BadElementSize(size)));
        } else {
            assert!(parse(&b).is_ok());
        }
    }
    let mut b = bundle_header();
    b.extend_from_slice(&64i32.to_be_bytes());
    b.extend_from_slice(b"/a\0\0,\0\0\0");
    assert_eq!(
        parse_err(&b),
        (
            16,
            DecodeErrorKind::ElementOverrun {
                size: 64,
                available: 8
            }
        )
    );
    // A size word itself cut short cannot happen (sizes are aligned), but a second element whose
    // size overruns is reported at its own offset.
    let mut b = bundle_header();
    b.extend_from_slice(&8i32.to_be_bytes());
    b.extend_from_slice(b"/a\0\0,\0\0\0");
    b.extend_from_slice(&12i32.to_be_bytes());
    b.extend_from_slice(b"/b\0\0,\0\0\0");
    assert_eq!(
        parse_err(&b),
        (
            28,
            DecodeErrorKind::ElementOverrun {
                size: 12,
                available: 8
            }
        )
    );
}

#[test]
fn error_invalid_char() {
    assert_eq!(
        parse_err(b"/a\0\0,c\0\0\0\0\xd8\0"),
        (8, DecodeErrorKind::InvalidChar(0xd800))
    );
    assert_eq!(
        parse_err(b"/a\0\0,c\0\0\0\x11\0\0"),
        (8, DecodeErrorKind::InvalidChar(0x11_0000))
    );
    assert!(parse(b"/a\0\0,c\0\0\0\0\0A").is_ok());
}

#[test]
fn errors_in_nested_elements_carry_absolute_offsets() {
    // outer bundle -> inner bundle at 20 -> message at 40 whose int is missing (data at 48).
    let mut inner = bundle_header();
    inner.extend_from_slice(&8i32.to_be_bytes());
    inner.extend_from_slice(b"/a\0\0,i\0\0");
    let mut outer = bundle_header();
    outer.extend_from_slice(&(inner.len() as i32).to_be_bytes());
    outer.extend_from_slice(&inner);
    let e = parse(&outer).unwrap_err();
    assert_eq!(
        (e.offset, e.kind.clone()),
        (
            48,
            DecodeErrorKind::Truncated {
                needed: 4,
                available: 0
            }
        )
    );
    assert_eq!(e.to_string(), "at byte 48: need 4 bytes, only 0 left");
}

#[test]
fn error_display_is_lowercase_and_says_where() {
    let e = parse(b"/a\0\0,x\0\0").unwrap_err();
    assert_eq!(e.to_string(), "at byte 5: unknown type tag 'x'");
    let e = parse(b"/a\0x,\0\0\0").unwrap_err();
    assert_eq!(e.to_string(), "at byte 3: padding byte is 0x78, not zero");
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn prop_owned_encode_parse_equal(p in arb_packet(true)) {
        let bytes = encode(&p);
        prop_assert_eq!(bytes.len(), encoded_len(&p));
        let parsed = parse(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(packets_bit_eq(&parsed.to_owned_packet(), &p), "{:?}", p);
        // The zero-copy path sees the same arguments as the owned one.
        check_views_consistent(&parsed);
    }

    #[test]
    fn prop_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_accepted_is_canonical(&bytes)?;
        let mut framed = b"/a\0\0,".to_vec();
        framed.extend_from_slice(&bytes);
        check_accepted_is_canonical(&framed)?;
    }

    #[test]
    fn prop_mutated_packets_never_panic_and_accepted_is_canonical(
        p in arb_packet(true),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = encode(&p);
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        check_accepted_is_canonical(&bytes)?;
    }

    #[test]
    fn prop_ours_to_rosc(p in arb_packet(false)) {
        let bytes = encode(&p);
        let (rest, decoded) = rosc::decoder::decode_udp(&bytes)
            .map_err(|e| TestCaseError::fail(format!("rosc rejected our bytes: {e}")))?;
        prop_assert!(rest.is_empty());
        prop_assert!(packets_bit_eq(&from_rosc_packet(&decoded), &p));
        // Both encoders are canonical, so they agree byte for byte.
        prop_assert_eq!(rosc::encoder::encode(&to_rosc_packet(&p)).unwrap(), bytes);
    }

    #[test]
    fn prop_rosc_to_ours(p in arb_packet(false)) {
        let rp = to_rosc_packet(&p);
        let bytes = rosc::encoder::encode(&rp).unwrap();
        let ours = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(packets_bit_eq(&ours, &p));
        prop_assert_eq!(encode(&ours), bytes);
    }
}

/// The no-panic + canonical-form property for arbitrary input.
fn check_accepted_is_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(parsed) = parse(bytes) else {
        return Ok(());
    };
    check_views_consistent(&parsed);
    let owned = parsed.to_owned_packet();
    let re = encode(&owned);
    if has_typetagless_message(&parsed) {
        // Documented exception: these gain a ',' tag string. Still a fixed point afterwards.
        let again = decode(&re).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(packets_bit_eq(&again, &owned));
        prop_assert_eq!(encode(&again), re);
    } else {
        prop_assert_eq!(re, bytes);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// rosc as an oracle, and rosc's limitations that justify our codec (see decode.rs module docs).
// If rosc fixes one of these, the corresponding test fails and the docs need updating.

#[test]
fn rosc_decodes_the_seed_packets_like_we_do() {
    for h in [SEED_MY_PATTERN, SEED_BUNDLE, SEED_SHORTCUT] {
        let bytes = hex(h);
        let (_, r) = rosc::decoder::decode_udp(&bytes).unwrap();
        assert!(packets_bit_eq(
            &from_rosc_packet(&r),
            &decode(&bytes).unwrap()
        ));
    }
}

#[test]
fn rosc_has_no_symbol_type() {
    let bytes = encode(&msg("/s", vec![OscArg::Symbol("sym".into())]));
    let e = rosc::decoder::decode_udp(&bytes).unwrap_err();
    assert!(e.to_string().contains("\"S\" is not implemented"), "{e}");
    assert!(parse(&bytes).is_ok());
}

#[test]
fn rosc_rejects_typetagless_messages() {
    assert!(rosc::decoder::decode_udp(b"/ping\0\0\0").is_err());
    assert!(parse(b"/ping\0\0\0").is_ok());
}

#[test]
fn rosc_accepts_what_we_reject() {
    // Non-zero padding, a tag string without ',', trailing bytes and an unclosed '[' (which makes
    // rosc drop the arguments before it) all pass rosc; none pass us.
    let cases: [&[u8]; 4] = [
        b"/a\0x,\0\0\0",
        b"/a\0\0xi\0\0\0\0\0\x01",
        b"/a\0\0,i\0\0\0\0\0\x01\xde\xad\xbe\xef",
        b"/a\0\0,i[i\0\0\0\0\0\0\0\x01\0\0\0\x02",
    ];
    for bytes in cases {
        assert!(rosc::decoder::decode_udp(bytes).is_ok(), "{bytes:?}");
        assert!(parse(bytes).is_err(), "{bytes:?}");
    }
    let (_, dropped) = rosc::decoder::decode_udp(cases[3]).unwrap();
    match dropped {
        rosc::OscPacket::Message(m) => assert_eq!(m.args, vec![rosc::OscType::Int(2)]),
        rosc::OscPacket::Bundle(_) => unreachable!(),
    }
    // A bundle element size that is not a multiple of 4 (9: an 8-byte message plus a junk byte,
    // then 3 bytes rosc returns as "remainder"): rosc decodes the bundle, we refuse the size.
    let mut b = bundle_header();
    b.extend_from_slice(&9i32.to_be_bytes());
    b.extend_from_slice(b"/a\0\0,\0\0\0\xff\0\0\0");
    assert!(rosc::decoder::decode_udp(&b).is_ok());
    assert_eq!(parse_err(&b), (16, DecodeErrorKind::BadElementSize(9)));
    // Its errors have no position: the Display text is all there is.
    let e = rosc::decoder::decode_udp(b"/a\0\0,i\0\0").unwrap_err();
    assert!(!e.to_string().contains('8'), "{e}");
}

#[test]
fn rosc_has_no_nesting_cap() {
    let mut p = msg("/x", vec![]);
    for _ in 0..50 {
        p = OscPacket::Bundle(OscBundle {
            timetag: TimeTag::IMMEDIATELY,
            content: vec![p],
        });
    }
    let bytes = encode(&p);
    assert!(rosc::decoder::decode_udp(&bytes).is_ok());
    assert_eq!(
        parse_err(&bytes).1,
        DecodeErrorKind::BundleTooDeep { max: 8 }
    );
}

// ---------------------------------------------------------------------------------------------
// Time tags.

mod timetags {
    use patchbay_plugin_api::osc::TimeTag;
    use proptest::prelude::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const OFFSET: u32 = 2_208_988_800;

    fn unix(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn known_ntp_unix_pairs() {
        assert_eq!(
            TimeTag::from_system_time(UNIX_EPOCH),
            TimeTag::new(OFFSET, 0)
        );
        assert_eq!(TimeTag::new(OFFSET, 0).to_system_time(), Some(UNIX_EPOCH));
        // 2000-01-01T00:00:00Z.
        assert_eq!(
            TimeTag::from_system_time(unix(946_684_800, 0)),
            TimeTag::new(3_155_673_600, 0)
        );
        // Half a second is exactly 2^31 fraction units.
        assert_eq!(
            TimeTag::from_system_time(unix(1, 500_000_000)),
            TimeTag::new(OFFSET + 1, 1 << 31)
        );
        assert_eq!(
            TimeTag::new(OFFSET + 1, 1 << 31).to_system_time(),
            Some(unix(1, 500_000_000))
        );
        // The seed bundle's tag: 2012-01-20T13:25:03Z plus 0x455a9000 / 2^32 s (270.913124 ms).
        let seed = TimeTag::new(0xd2c3_e04f, 0x455a_9000);
        assert_eq!(
            seed.to_system_time(),
            Some(unix(1_327_063_503, 270_913_124))
        );
        assert_eq!(seed.to_unix_nanos(), 1_327_063_503_270_913_124);
    }

    #[test]
    fn immediately_is_special() {
        let now = unix(1_700_000_000, 123);
        assert!(TimeTag::IMMEDIATELY.is_immediately());
        assert_eq!(TimeTag::IMMEDIATELY.to_be_bytes(), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(TimeTag::IMMEDIATELY.to_system_time(), None);
        assert_eq!(TimeTag::IMMEDIATELY.offset_from(now), 0);
        assert!(!TimeTag::new(0, 0).is_immediately());
        assert!(TimeTag::new(0, 0).to_system_time().is_some());
    }

    #[test]
    fn offset_from_is_signed_nanoseconds() {
        let now = unix(1_700_000_000, 999_999_999);
        let later = TimeTag::after(now, Duration::from_millis(250));
        assert_eq!(later.offset_from(now), 250_000_000);
        let earlier = TimeTag::from_system_time(now - Duration::from_secs(3));
        assert_eq!(earlier.offset_from(now), -3_000_000_000);
    }

    #[test]
    fn before_1970_and_after_2036() {
        // A clock a day before the Unix epoch (top bit still set: NTP era 0).
        let t = UNIX_EPOCH - Duration::from_secs(86_400);
        let tag = TimeTag::from_system_time(t);
        assert_eq!(tag, TimeTag::new(OFFSET - 86_400, 0));
        assert_eq!(tag.to_system_time(), Some(t));
        assert_eq!(tag.to_unix_secs_f64(), -86_400.0);
        // The first NTP wrap, 2036-02-07T06:28:16Z, is seconds == 0 of era 1.
        let wrap = unix((1u64 << 32) - u64::from(OFFSET), 0);
        assert_eq!(TimeTag::from_system_time(wrap), TimeTag::new(0, 0));
        assert_eq!(TimeTag::new(0, 0).to_system_time(), Some(wrap));
        let after = wrap + Duration::from_secs(10);
        assert_eq!(
            TimeTag::from_system_time(after).to_system_time(),
            Some(after)
        );
        assert_eq!(TimeTag::new(10, 0).offset_from(wrap), 10_000_000_000);
        // Across the wrap, a later time has a smaller raw value; offsets still come out right.
        let before_wrap = TimeTag::new(u32::MAX, 0);
        assert_eq!(
            TimeTag::new(1, 0).offset_from(before_wrap.to_system_time().unwrap()),
            2_000_000_000
        );
    }

    #[test]
    fn f64_helpers() {
        assert_eq!(
            TimeTag::from_unix_secs_f64(1.5),
            TimeTag::new(OFFSET + 1, 1 << 31)
        );
        assert_eq!(TimeTag::new(OFFSET + 1, 1 << 31).to_unix_secs_f64(), 1.5);
        assert_eq!(
            TimeTag::from_unix_secs_f64(-0.25),
            TimeTag::new(OFFSET - 1, 3 << 30)
        );
        // Non-finite input does not panic.
        assert_eq!(TimeTag::from_unix_secs_f64(f64::NAN), TimeTag::new(0, 0));
        let _ = TimeTag::from_unix_secs_f64(f64::INFINITY);
        let _ = TimeTag::from_unix_secs_f64(f64::NEG_INFINITY);
        let now = 1_700_000_000.123_456;
        let back = TimeTag::from_unix_secs_f64(now).to_unix_secs_f64();
        assert!((back - now).abs() < 1e-6, "{back} vs {now}");
    }

    #[test]
    fn rosc_time_conversion_panics_before_1970_ours_does_not() {
        // rosc subtracts the 1900->1970 offset from a Duration, which underflows for era-0 tags
        // before 1970 (including IMMEDIATELY): a panic on a value any sender can put on the wire.
        let r = std::panic::catch_unwind(|| {
            SystemTime::from(rosc::OscTime {
                seconds: 0,
                fractional: 1,
            })
        });
        assert!(r.is_err());
        let pre = TimeTag::new(OFFSET - 1, 0);
        assert_eq!(
            pre.to_system_time(),
            Some(UNIX_EPOCH - Duration::from_secs(1))
        );
    }

    proptest! {
        #[test]
        fn any_pair_converts_without_panicking(s in any::<u32>(), f in any::<u32>(), now_ns in any::<i64>()) {
            let tag = TimeTag::new(s, f);
            let now = if now_ns >= 0 {
                UNIX_EPOCH + Duration::from_nanos(now_ns as u64)
            } else {
                UNIX_EPOCH - Duration::from_nanos(now_ns.unsigned_abs())
            };
            let _ = tag.offset_from(now);
            let _ = tag.to_unix_secs_f64();
            prop_assert_eq!(TimeTag::from_be_bytes(tag.to_be_bytes()), tag);
            // Tag -> nanoseconds -> tag is within rounding (1 ns is ~4.3 fraction units).
            let back = TimeTag::from_unix_nanos(tag.to_unix_nanos());
            let raw = |t: TimeTag| (u64::from(t.seconds) << 32) | u64::from(t.fraction);
            let diff = raw(back).wrapping_sub(raw(tag)) as i64;
            prop_assert!(diff.abs() <= 3, "{:?} -> {:?}", tag, back);
            if let Some(st) = tag.to_system_time() {
                prop_assert_eq!(TimeTag::from_system_time(st), back);
            }
        }

        #[test]
        fn from_system_time_agrees_with_rosc(secs in 0u64..2_085_978_496, nanos in 0u32..1_000_000_000) {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            let ours = TimeTag::from_system_time(t);
            let theirs = rosc::OscTime::try_from(t).unwrap();
            prop_assert_eq!(ours.seconds, theirs.seconds);
            // rosc rounds through f64; both are within a fraction unit or two of exact.
            prop_assert!((i64::from(ours.fraction) - i64::from(theirs.fractional)).abs() <= 2);
        }

        #[test]
        fn system_time_round_trips_exactly_in_the_era_window(
            // 1968-01-20 ..= 2104-02-26, the window the top-bit rule maps to.
            secs in -61_505_152i64..4_294_967_295 + 2_147_483_648 - 2_208_988_800,
            nanos in 0u32..1_000_000_000,
        ) {
            let t = if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, nanos)
            } else {
                UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nanos)
            };
            let tag = TimeTag::from_system_time(t);
            prop_assert_eq!(tag.to_system_time(), Some(t));
            prop_assert_eq!(tag.offset_from(t), 0);
        }
    }
}
