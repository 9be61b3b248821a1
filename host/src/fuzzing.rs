//! Entry points for the fuzz target (`fuzz/`) and its regression tests: decode + route with no I/O.

use std::sync::OnceLock;

use patchbay_plugin_api::osc::encode::encode_readdressed;
use patchbay_plugin_api::osc::pattern::Captures;
use patchbay_plugin_api::osc::{encode, DecodeLimits, PacketRef, Pattern};

use crate::config::{Rewrite, RewritePart, RouteMatch, RoutePlan, TargetPlan};
use crate::route::{ChannelId, Hits, RouteTable};

/// What the fuzz target runs on every input (and the regression tests on every kept input): the
/// codec refuses or accepts without panicking, accepted packets re-encode canonically, and routing
/// them never panics.
pub fn check_datagram(data: &[u8]) {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    let Ok(packet) = PacketRef::parse(data, &DecodeLimits::default()) else {
        return;
    };
    let once = encode(&packet.to_owned_packet());
    if !has_message_without_type_tags(&packet) {
        assert_eq!(once, data, "an accepted packet re-encodes byte-exact");
    }
    let reparsed =
        PacketRef::parse(&once, &DecodeLimits::default()).expect("our own encoding parses");
    assert_eq!(
        encode(&reparsed.to_owned_packet()),
        once,
        "encoding is stable"
    );
    route_packet(TABLE.get_or_init(sample_table), &packet);
}

fn has_message_without_type_tags(packet: &PacketRef<'_>) -> bool {
    match packet {
        PacketRef::Message(m) => !m.has_type_tags(),
        PacketRef::Bundle(b) => b.elements().any(|e| has_message_without_type_tags(&e)),
    }
}

/// A table with every kind of route: literals, each wildcard, `//`, rewrites, `stop`, `from`,
/// incoming patterns and an unmatched catch-all.
pub fn sample_table() -> RouteTable {
    let patterns = [
        ("/desk/fader/*", true),
        ("/desk/fader/1", false),
        ("/mixer/ch/3/mute", false),
        ("/a/?/[0-9]/{on,off}", true),
        ("//go", true),
        ("/x/[!a-c]*/*y", true),
        ("/cue/{a,bb,ccc}*", true),
    ];
    let mut routes: Vec<RoutePlan> = patterns
        .iter()
        .enumerate()
        .map(|(i, (pattern, rewrite))| {
            let compiled = Pattern::compile(pattern).expect("sample patterns are valid");
            let captures = compiled.capture_count();
            let rewrite = (*rewrite && captures > 0).then(|| Rewrite {
                source: String::new(),
                parts: vec![
                    RewritePart::Literal("/out/".into()),
                    RewritePart::Capture(captures),
                ],
            });
            RoutePlan {
                name: format!("r{i}"),
                matcher: RouteMatch::Pattern(compiled),
                from: (i % 3 == 0).then(|| vec!["desk".to_string()]),
                targets: vec![
                    TargetPlan::Forward {
                        channel: "out".into(),
                        rewrite,
                        unbundle: i == 4,
                    },
                    TargetPlan::Reply { rewrite: None },
                ],
                stop: i == 5,
                incoming_patterns: i == 2,
            }
        })
        .collect();
    routes.push(RoutePlan {
        name: "fallback".into(),
        matcher: RouteMatch::Unmatched,
        from: None,
        targets: vec![TargetPlan::Forward {
            channel: "out".into(),
            rewrite: None,
            unbundle: false,
        }],
        stop: false,
        incoming_patterns: false,
    });
    RouteTable::build(&routes, |name| {
        if name == "desk" {
            ChannelId(0)
        } else {
            ChannelId(1)
        }
    })
}

/// Routes every message of `packet` (recursing into bundles) and renders every rewrite, as the
/// dispatcher would, returning how many target sends it would make.
pub fn route_packet(table: &RouteTable, packet: &PacketRef<'_>) -> usize {
    let mut hits = Hits::default();
    let mut caps = Captures::default();
    let mut address = String::new();
    let mut out = Vec::new();
    let mut sends = 0;
    let mut stack = vec![*packet];
    while let Some(packet) = stack.pop() {
        match packet {
            PacketRef::Bundle(bundle) => stack.extend(bundle.elements()),
            PacketRef::Message(message) => {
                for from in [ChannelId(0), ChannelId(1)] {
                    table.find(message.address, from, &mut hits);
                    for &index in &hits.routes {
                        table.captures(index, message.address, &mut caps);
                        for target in table.route(index).targets.iter() {
                            if let Some(rewrite) = target.rewrite() {
                                rewrite.apply(message.address, &caps, &mut address);
                                out.clear();
                                encode_readdressed(&message, &address, &mut out);
                            }
                            sends += 1;
                        }
                    }
                }
            }
        }
    }
    sends
}

/// The framing property (fuzz target `framing`): for every framing, the frames cut from a stream do
/// not depend on how reads split it, decoding never panics or consumes more than it was given, and
/// what we encode decodes back to the same packets.
pub fn check_framing(data: &[u8]) {
    use crate::channel::framing::{encode, Decoder, Framing};
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let framings = [
        Framing::Slip,
        Framing::Length,
        Framing::Auto,
        Framing::Lines,
        Framing::Raw,
    ];
    let framing = framings[selector as usize % framings.len()];
    let step = 1 + (selector as usize / framings.len()) % 7;
    let max_frame = 64;

    let whole = cut(
        Decoder::new(framing, max_frame, b"\r\n"),
        rest,
        rest.len().max(1),
    );
    let pieces = cut(Decoder::new(framing, max_frame, b"\r\n"), rest, step);
    if framing != Framing::Raw {
        // Raw chunks follow the reads by design; every other framing must not.
        match (&whole, &pieces) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "frames depend on read sizes"),
            // An error may be seen earlier in pieces (e.g. an oversize line), never a different
            // set of good frames before it.
            (Err(a), Err(b)) => assert!(a.starts_with(b) || b.starts_with(a)),
            (a, b) => panic!("whether the stream is refused depends on read sizes: {a:?} vs {b:?}"),
        }
    }

    if framing == Framing::Slip || framing == Framing::Length {
        // OSC packets start with `/` or `#` (the SLIP decoder relies on that to name a length
        // prefix sent to it), whatever bytes follow.
        let packets: Vec<Vec<u8>> = rest
            .chunks(9)
            .map(|p| [b"/".as_slice(), p].concat())
            .collect();
        let mut wire = Vec::new();
        for packet in &packets {
            encode(framing, b"", packet, &mut wire);
        }
        let back = cut(Decoder::new(framing, max_frame, b""), &wire, step)
            .expect("our own encoding decodes");
        assert_eq!(back, packets);
    }
}

/// Feeds `input` in reads of `step` bytes; the frames, or the frames before the error.
fn cut(
    mut decoder: crate::channel::framing::Decoder,
    input: &[u8],
    step: usize,
) -> Result<Vec<Vec<u8>>, Vec<Vec<u8>>> {
    let mut buffer = Vec::new();
    let mut frames = Vec::new();
    for piece in input.chunks(step) {
        buffer.extend_from_slice(piece);
        match decoder.decode(&buffer, &mut |f| frames.push(f.to_vec())) {
            Ok(used) => {
                assert!(used <= buffer.len());
                buffer.drain(..used);
            }
            // The frames before the error; the error's text may differ (it names sizes seen so far).
            Err(_) => return Err(frames),
        }
    }
    Ok(frames)
}
