//! Forwarding end to end: every OSC type byte-exact, golden packets, bundles, rewrite with captures,
//! reply, `from`, `stop`, `unmatched`, the pattern table through real routes (both directions) and
//! hostile patterns that must not stall the host.

use std::collections::BTreeSet;
use std::f64::consts::PI;

use patchbay_plugin_api::osc::{self as api, OscArg, OscBundle, OscPacket, TimeTag};
use patchbay_tests::osc::{self, golden, msg};
use patchbay_tests::*;

const SEED_TIME: TimeTag = TimeTag {
    seconds: 0xd2c3_e04f,
    fraction: 0x455a_9000,
};

fn s(v: &str) -> OscArg {
    OscArg::String(v.to_string())
}

/// One message per type (and edge values), arrays, and everything at once.
fn every_type_messages() -> Vec<OscPacket> {
    use OscArg::*;
    let everything = vec![
        Int(-7),
        Float(0.5),
        s("go"),
        Blob(vec![1, 2, 3, 4, 5]),
        Long(-5_000_000_000),
        Double(0.25),
        Time(SEED_TIME),
        Symbol("sym".into()),
        Char('x'),
        Rgba(api::Rgba {
            r: 0x11,
            g: 0x22,
            b: 0x33,
            a: 0x44,
        }),
        Midi(api::Midi {
            port: 1,
            status: 0x90,
            data1: 0x3c,
            data2: 0x7f,
        }),
        True,
        False,
        Nil,
        Inf,
        Array(vec![Int(1), s("in"), Array(vec![True, Float(2.0)])]),
    ];
    vec![
        msg("/t/i", vec![Int(0), Int(-1), Int(i32::MAX), Int(i32::MIN)]),
        msg(
            "/t/f",
            vec![
                Float(0.5),
                Float(-0.0),
                Float(f32::INFINITY),
                Float(f32::from_bits(0x7fc0_0001)),
            ],
        ),
        msg("/t/s", vec![s(""), s("abc"), s("abcd"), s("héllo wörld")]),
        msg(
            "/t/b",
            vec![
                Blob(vec![]),
                Blob(vec![0xff]),
                Blob(vec![0, 1, 2, 3]),
                Blob(vec![9; 5]),
            ],
        ),
        msg(
            "/t/h",
            vec![Long(i64::MIN), Long(5_000_000_000), Long(i64::MAX)],
        ),
        msg(
            "/t/d",
            vec![Double(0.25), Double(PI), Double(f64::NEG_INFINITY)],
        ),
        msg("/t/t", vec![Time(SEED_TIME), Time(TimeTag::IMMEDIATELY)]),
        msg("/t/S", vec![Symbol("sym".into()), Symbol("".into())]),
        msg("/t/c", vec![Char('x'), Char('A'), Char(' ')]),
        msg(
            "/t/r",
            vec![Rgba(api::Rgba {
                r: 0xff,
                g: 0,
                b: 0x80,
                a: 0x01,
            })],
        ),
        msg(
            "/t/m",
            vec![Midi(api::Midi {
                port: 0,
                status: 0xb0,
                data1: 7,
                data2: 100,
            })],
        ),
        msg("/t/TFNI", vec![True, False, Nil, Inf]),
        msg("/t/array", vec![Array(vec![Int(1), Int(2)]), Array(vec![])]),
        msg(
            "/t/nested-array",
            vec![
                Int(1),
                Array(vec![s("a"), Array(vec![Float(1.5), True]), Long(3)]),
                Nil,
            ],
        ),
        msg("/t/none", vec![]),
        msg("/t/everything", everything),
    ]
}

#[test]
fn oracle_agrees_with_seed_golden_bytes() {
    use OscArg::*;
    // The hand encoder the tests use is itself checked against the seed document's hex dumps.
    assert_bytes(
        &osc::message("/my/pattern", &[Int(1), Int(3), s("a string"), Float(11.3)]),
        &golden::my_pattern(),
        "/my/pattern",
    );
    assert_bytes(
        &osc::message(
            "/shortcut/with/typedetection",
            &[True, Inf, Int(12), Float(11.3)],
        ),
        &golden::shortcut_typedetection(),
        "/shortcut/with/typedetection",
    );
    let bundle = osc::bundle(
        SEED_TIME,
        &[
            osc::message("/first/message", &[Int(1), Int(2)]),
            osc::message("/second/message", &[Float(4.5), True]),
        ],
    );
    assert_bytes(&bundle, &golden::bundle_two_messages(), "seed bundle");
}

#[test]
fn oracle_agrees_with_plugin_api_codec() {
    // The tests' oracle and the codec under test must encode identically and round-trip.
    let mut packets = every_type_messages();
    packets.push(OscPacket::Bundle(OscBundle {
        timetag: SEED_TIME,
        content: vec![
            msg("/first/message", vec![OscArg::Int(1), OscArg::Int(2)]),
            OscPacket::Bundle(OscBundle {
                timetag: TimeTag::IMMEDIATELY,
                content: vec![msg("/inner", vec![])],
            }),
        ],
    }));
    for p in &packets {
        let ours = osc::encode(p);
        assert_bytes(
            &api::encode(p),
            &ours,
            &format!("plugin-api encode of {p:?}"),
        );
        let decoded =
            api::decode(&ours).unwrap_or_else(|e| panic!("plugin-api decode of {p:?}: {e}"));
        // NaN != NaN, so compare the re-encoding instead of the values.
        assert_bytes(
            &osc::encode(&decoded),
            &ours,
            &format!("decode/encode round trip of {p:?}"),
        );
    }
    let seed = api::decode(&golden::bundle_two_messages()).expect("decode the seed bundle");
    let OscPacket::Bundle(b) = seed else {
        panic!("seed bundle decoded as {seed:?}")
    };
    assert_eq!(b.timetag, SEED_TIME);
    assert_eq!(b.content.len(), 2);
    assert_eq!(
        b.content[1],
        msg("/second/message", vec![OscArg::Float(4.5), OscArg::True])
    );
}

#[test]
fn every_type_round_trips_byte_exact_through_a_forward() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&desk_lights(
        rx.addr(),
        "  - name: all\n    match: //*\n    to:\n      - forward: lights\n",
    ));
    let desk = pb.addr("desk");
    let lights_local = pb
        .channel("lights")
        .local
        .expect("lights has a local (sending) address");
    let tx = Receiver::new();

    let mut packets: Vec<(String, Vec<u8>)> = every_type_messages()
        .iter()
        .map(|p| (format!("{p:?}"), osc::encode(p)))
        .collect();
    packets.push(("seed /my/pattern".into(), golden::my_pattern()));
    packets.push((
        "seed /shortcut/with/typedetection".into(),
        golden::shortcut_typedetection(),
    ));
    packets.push((
        "message without a type-tag string".into(),
        osc::message_without_tags("/t/old-sender"),
    ));
    for (what, bytes) in &packets {
        tx.send_to(bytes, desk);
        let from = rx.expect_bytes(bytes, what);
        assert_eq!(
            from.port(),
            lights_local.port(),
            "{what}: forwarded from the lights socket the ready file names"
        );
    }
}

#[test]
fn seed_bundle_and_nested_bundles_are_forwarded_byte_exact() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&desk_lights(
        rx.addr(),
        "  - name: firsts\n    match: '/{first,second}/message'\n    to:\n      - forward: lights\n  - name: b\n    match: /b/*\n    to:\n      - forward: lights\n",
    ));
    let desk = pb.addr("desk");
    let tx = Receiver::new();

    let seed = golden::bundle_two_messages();
    tx.send_to(&seed, desk);
    rx.expect_bytes(&seed, "the seed document's bundle");

    let innermost = osc::bundle(
        TimeTag {
            seconds: 1,
            fraction: 2,
        },
        &[osc::message("/b/three", &[OscArg::Int(3)])],
    );
    let middle = osc::bundle(
        TimeTag::IMMEDIATELY,
        &[
            osc::message("/b/two", &[s("two"), OscArg::Double(2.0)]),
            innermost,
        ],
    );
    let outer = osc::bundle(
        SEED_TIME,
        &[osc::message("/b/one", &[OscArg::Float(1.0)]), middle],
    );
    tx.send_to(&outer, desk);
    rx.expect_bytes(
        &outer,
        "a bundle nested three deep, every message matching one forward",
    );
}

// ---------------------------------------------------------------------------------------------------
// Rewrite

#[test]
fn rewrite_substitutes_captures_and_keeps_arguments() {
    let rx = Receiver::new();
    let routes = [
        ("faders", "/desk/fader/*", "/lx/sub/$1"),
        ("multi", "/desk/{fader,knob}/[0-9]/?", "/x/$3/$2/$1"),
        ("levels", "/mixer//gain", "/desk$1level"),
        ("greedy", "/g/*-*", "/first/$1/second/$2"),
        ("empty-star", "/fx*", "/got$1"),
        ("old", "/old/*", "/new/$1"),
    ];
    let mut yaml = String::new();
    for (name, pattern, rewrite) in routes {
        yaml.push_str(&format!(
            "  - name: {name}\n    match: {}\n    stop: true\n    to:\n      - forward: lights\n        rewrite: {}\n",
            yq(pattern),
            yq(rewrite)
        ));
    }
    let pb = Patchbay::start(&desk_lights(rx.addr(), &yaml));
    let desk = pb.addr("desk");
    let tx = Receiver::new();

    let args = vec![
        OscArg::Float(0.75),
        s("x"),
        OscArg::Blob(vec![1, 2, 3]),
        OscArg::Array(vec![OscArg::Int(1)]),
    ];
    let cases = [
        ("/desk/fader/12", "/lx/sub/12"),
        ("/desk/knob/4/z", "/x/z/4/knob"),
        ("/desk/fader/0/a", "/x/a/0/fader"),
        ("/mixer/ch/1/gain", "/desk/ch/1/level"),
        ("/mixer/gain", "/desk/level"),
        ("/g/a-b-c", "/first/a-b/second/c"),
        ("/fx", "/got"),
        ("/fxab", "/gotab"),
    ];
    for (address, rewritten) in cases {
        tx.send_to(&osc::message(address, &args), desk);
        rx.expect_bytes(
            &osc::message(rewritten, &args),
            &format!("{address} rewritten to {rewritten}"),
        );
    }
    // A message without a type-tag string gets an empty `,` one when it is re-encoded.
    tx.send_to(&osc::message_without_tags("/old/thing"), desk);
    rx.expect_bytes(
        &osc::message("/new/thing", &[]),
        "/old/thing (no type tags) rewritten",
    );
    // Every type survives a rewrite (the arguments are copied as they are).
    for p in every_type_messages() {
        let OscPacket::Message(m) = &p else {
            unreachable!()
        };
        let tail = m.address.trim_start_matches("/t/").replace('/', "-");
        let original = osc::message(&format!("/desk/fader/{tail}"), &m.args);
        tx.send_to(&original, desk);
        rx.expect_bytes(
            &osc::message(&format!("/lx/sub/{tail}"), &m.args),
            &format!("rewrite of {p:?}"),
        );
    }
}

#[test]
fn one_route_fans_out_to_several_targets() {
    let rx1 = Receiver::new();
    let rx2 = Receiver::new();
    let yaml = format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n  a:\n    kind: udp\n    send: {}\n  b:\n    kind: udp\n    send: {}\nroutes:\n  - name: both\n    match: /go/*\n    to:\n      - forward: a\n        rewrite: /a/$1\n      - forward: b\n",
        rx1.addr(),
        rx2.addr()
    );
    let pb = Patchbay::start(&yaml);
    let original = osc::message("/go/7", &[OscArg::Int(7)]);
    send_to(&original, pb.addr("desk"));
    rx1.expect_bytes(
        &osc::message("/a/7", &[OscArg::Int(7)]),
        "rewritten copy to channel a",
    );
    rx2.expect_bytes(&original, "unchanged copy to channel b");
}

#[test]
fn a_channel_with_listen_and_send_sends_from_its_listening_socket() {
    let device_rx = Receiver::new();
    let back_rx = Receiver::new();
    let yaml = format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n  device:\n    kind: udp\n    listen: 127.0.0.1:0\n    send: {}\n  back:\n    kind: udp\n    send: {}\nroutes:\n  - name: to-device\n    match: /cue/*\n    from: [desk]\n    to:\n      - forward: device\n  - name: answers\n    match: /ack/*\n    from: [device]\n    to:\n      - forward: back\n",
        device_rx.addr(),
        back_rx.addr()
    );
    let pb = Patchbay::start(&yaml);
    let device = pb.channel("device");
    assert_eq!(
        device.local, device.listen,
        "ready file: a channel with listen and send sends from its listening socket"
    );
    let cue = osc::message("/cue/1", &[OscArg::Int(1)]);
    send_to(&cue, pb.addr("desk"));
    let from = device_rx.expect_bytes(&cue, "cue forwarded to the device");
    assert_eq!(
        from,
        pb.addr("device"),
        "the device sees patchbay's listening socket as the source"
    );
    // A device that answers to the source port it saw reaches patchbay, and the answer is routed.
    let ack = osc::message("/ack/1", &[s("done")]);
    device_rx.send_to(&ack, from);
    back_rx.expect_bytes(&ack, "the device's answer, routed from channel device");
}

// ---------------------------------------------------------------------------------------------------
// reply, from, stop, unmatched

#[test]
fn reply_goes_back_to_the_sender_from_the_receiving_socket() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&desk_lights(
        rx.addr(),
        &(barrier_route("lights") + "  - name: ping\n    match: /ping/*\n    to:\n      - reply: true\n        rewrite: /pong/$1\n  - name: echo\n    match: /echo\n    to:\n      - reply: true\n"),
    ));
    let desk = pb.addr("desk");
    let client = Receiver::new();
    let args = [OscArg::Int(7), s("seven")];
    client.send_to(&osc::message("/ping/7", &args), desk);
    let from = client.expect_bytes(&osc::message("/pong/7", &args), "rewritten reply");
    assert_eq!(
        from, desk,
        "the reply comes from the socket that received the message"
    );

    let echo = osc::message("/echo", &[OscArg::Double(1.5), OscArg::True]);
    client.send_to(&echo, desk);
    let from = client.expect_bytes(&echo, "unchanged reply (exact bytes)");
    assert_eq!(from, desk);

    // A second client gets its own replies, and the first one none of them: the first client's
    // next datagram is the echo it asks for afterwards.
    let other = Receiver::new();
    other.send_to(&osc::message("/ping/8", &[]), desk);
    other.expect_bytes(&osc::message("/pong/8", &[]), "reply to the second client");
    client.send_to(&echo, desk);
    client.expect_bytes(&echo, "the first client's next datagram is its own echo");
    // Nothing went to lights.
    client.send_to(&barrier(1), desk);
    assert_eq!(
        rx.until_barrier(&barrier(1)),
        Vec::<Vec<u8>>::new(),
        "replies do not go to lights"
    );
}

#[test]
fn from_restricts_a_route_to_its_source_channels() {
    let rx = Receiver::new();
    let yaml = format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n  desk2:\n    kind: udp\n    listen: 127.0.0.1:0\n  lights:\n    kind: udp\n    send: {}\nroutes:\n{}  - name: only-desk2\n    match: /x\n    from: [desk2]\n    to:\n      - forward: lights\n        rewrite: /hit/desk2\n",
        rx.addr(),
        barrier_route("lights")
    );
    let pb = Patchbay::start(&yaml);
    let x = osc::message("/x", &[]);

    send_to(&x, pb.addr("desk"));
    send_to(&barrier(1), pb.addr("desk"));
    assert_eq!(
        rx.until_barrier(&barrier(1)),
        Vec::<Vec<u8>>::new(),
        "/x from desk must not fire a from: [desk2] route"
    );

    send_to(&x, pb.addr("desk2"));
    send_to(&barrier(2), pb.addr("desk2"));
    assert_eq!(
        rx.until_barrier(&barrier(2)),
        vec![osc::message("/hit/desk2", &[])],
        "/x from desk2 fires it"
    );
}

#[test]
fn stop_ends_the_search_and_routes_fire_in_order_without_it() {
    let rx = Receiver::new();
    let routes = format!(
        "{}  - name: s-first\n    match: /s/*\n    stop: true\n    to:\n      - forward: lights\n        rewrite: /first/s\n  - name: s-second\n    match: /s/*\n    to:\n      - forward: lights\n        rewrite: /second/s\n  - name: n-first\n    match: /n/*\n    to:\n      - forward: lights\n        rewrite: /first/n\n  - name: n-second\n    match: /n/*\n    stop: false\n    to:\n      - forward: lights\n        rewrite: /second/n\n",
        barrier_route("lights")
    );
    let pb = Patchbay::start(&desk_lights(rx.addr(), &routes));
    let desk = pb.addr("desk");
    let tx = Receiver::new();

    tx.send_to(&osc::message("/s/1", &[]), desk);
    tx.send_to(&barrier(1), desk);
    assert_eq!(
        rx.until_barrier(&barrier(1)),
        vec![osc::message("/first/s", &[])],
        "stop: true ends the search"
    );

    tx.send_to(&osc::message("/n/1", &[]), desk);
    tx.send_to(&barrier(2), desk);
    assert_eq!(
        rx.until_barrier(&barrier(2)),
        vec![
            osc::message("/first/n", &[]),
            osc::message("/second/n", &[])
        ],
        "without stop both routes fire, in file order"
    );
}

#[test]
fn unmatched_gets_only_what_no_route_matched() {
    let rx = Receiver::new();
    let routes = format!(
        "{}  - name: known\n    match: /known\n    to:\n      - forward: lights\n        rewrite: /hit/known\n  - name: rest\n    unmatched: true\n    to:\n      - forward: lights\n",
        barrier_route("lights")
    );
    let pb = Patchbay::start(&desk_lights(rx.addr(), &routes));
    let desk = pb.addr("desk");
    let tx = Receiver::new();

    let other = osc::message("/other/thing", &[OscArg::Int(5), s("five")]);
    tx.send_to(&other, desk);
    tx.send_to(&barrier(1), desk);
    assert_eq!(
        rx.until_barrier(&barrier(1)),
        vec![other],
        "an unmatched message goes to the unmatched route unchanged"
    );

    tx.send_to(&osc::message("/known", &[]), desk);
    tx.send_to(&barrier(2), desk);
    assert_eq!(
        rx.until_barrier(&barrier(2)),
        vec![osc::message("/hit/known", &[])],
        "a matched message does not also go to the unmatched route"
    );
}

// ---------------------------------------------------------------------------------------------------
// Patterns through real routes

/// (pattern, address, should match)
const PATTERN_CASES: &[(&str, &str, bool)] = &[
    ("/fader/?", "/fader/1", true),
    ("/fader/?", "/fader/12", false),
    ("/fader/?", "/fader/", false),
    ("/mix/*", "/mix/ch1", true),
    ("/mix/*", "/mix/", true),
    ("/mix/*", "/mix/ch/1", false),
    ("/mix/*/gain", "/mix/a/gain", true),
    ("/mix/*/gain", "/mix/a/b/gain", false),
    ("/foo*", "/foo", true),
    ("/a*b*c", "/axxbyyc", true),
    ("/a*b*c", "/axxbyy", false),
    ("/*a?", "/xayab", true),
    ("/*a?", "/xaya", false),
    ("/ch/[0-9]", "/ch/7", true),
    ("/ch/[0-9]", "/ch/77", false),
    ("/ch/[a-z]x", "/ch/qx", true),
    ("/ch/[a-z]x", "/ch/Qx", false),
    ("/ch/[!a-z]", "/ch/Q", true),
    ("/ch/[!a-z]", "/ch/q", false),
    ("/[!a]", "/b/c", false),
    ("/ch/[abc]", "/ch/b", true),
    ("/ch/[abc]", "/ch/d", false),
    ("/{foo,bar}/go", "/foo/go", true),
    ("/{foo,bar}/go", "/bar/go", true),
    ("/{foo,bar}/go", "/baz/go", false),
    ("/{foo,bar}/go", "/foobar/go", false),
    ("/{a,ab}", "/ab", true),
    ("/cue{,s}", "/cue", true),
    ("/cue{,s}", "/cues", true),
    ("//spot", "/spot", true),
    ("//spot", "/a/spot", true),
    ("//spot", "/a/b/c/spot", true),
    ("//spot", "/a/spotx", false),
    ("/a//c", "/a/b/c", true),
    ("/a//c", "/a/x/y/c", true),
    ("/a//c", "/b/c", false),
    ("/Case", "/case", false),
    ("/exact/literal", "/exact/literal", true),
    ("/exact/literal", "/exact/literal/more", false),
];

#[test]
fn pattern_table_through_real_routes() {
    let rx = Receiver::new();
    let mut routes = barrier_route("lights");
    for (i, (pattern, _, _)) in PATTERN_CASES.iter().enumerate() {
        routes.push_str(&format!(
            "  - name: case{i}\n    match: {}\n    to:\n      - forward: lights\n        rewrite: /hit/{i}\n",
            yq(pattern)
        ));
    }
    let pb = Patchbay::start(&desk_lights(rx.addr(), &routes));
    let desk = pb.addr("desk");
    let tx = Receiver::new();
    let mut wrong = Vec::new();
    for (i, (pattern, address, expected)) in PATTERN_CASES.iter().enumerate() {
        tx.send_to(&osc::message(address, &[]), desk);
        tx.send_to(&barrier(i), desk);
        let hits: BTreeSet<String> = rx
            .until_barrier(&barrier(i))
            .iter()
            .map(|b| osc::address_of(b))
            .collect();
        let fired = hits.contains(&format!("/hit/{i}"));
        if fired != *expected {
            wrong.push(format!("pattern {pattern:?} vs address {address:?}: expected match={expected}, route fired={fired}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "pattern cases that went wrong:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn incoming_patterns_is_opt_in() {
    let rx = Receiver::new();
    let routes = format!(
        "{}  - name: opted-in\n    match: /mixer/ch/3/mute\n    incoming_patterns: true\n    to:\n      - forward: lights\n        rewrite: /hit/opted-in\n  - name: plain\n    match: /mixer/ch/3/mute\n    to:\n      - forward: lights\n        rewrite: /hit/plain\n",
        barrier_route("lights")
    );
    let pb = Patchbay::start(&desk_lights(rx.addr(), &routes));
    let desk = pb.addr("desk");
    let tx = Receiver::new();
    let hits = |n: usize, address: &str| -> BTreeSet<String> {
        tx.send_to(&osc::message(address, &[OscArg::Int(1)]), desk);
        tx.send_to(&barrier(n), desk);
        rx.until_barrier(&barrier(n))
            .iter()
            .map(|b| osc::address_of(b))
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();

    assert_eq!(
        hits(1, "/mixer/ch/*/mute"),
        set(&["/hit/opted-in"]),
        "an incoming pattern fires only the opted-in route"
    );
    assert_eq!(hits(2, "/mixer/ch/[0-9]/mute"), set(&["/hit/opted-in"]));
    assert_eq!(hits(3, "/mixer/ch/{1,3}/mute"), set(&["/hit/opted-in"]));
    assert_eq!(hits(4, "//mute"), set(&["/hit/opted-in"]));
    assert_eq!(
        hits(5, "/mixer/ch/3/mute"),
        set(&["/hit/opted-in", "/hit/plain"]),
        "a literal address fires both"
    );
    assert_eq!(
        hits(6, "/mixer/ch/[!3]/mute"),
        set(&[]),
        "an incoming pattern that does not cover the route"
    );
    assert_eq!(hits(7, "/mixer/ch/*/solo"), set(&[]));
}

#[test]
fn hostile_patterns_do_not_stall_the_host() {
    let rx = Receiver::new();
    let stars = format!("/{}b", "*a".repeat(20));
    let alternations = format!("/{}b", "{a,aa,aaa}".repeat(12));
    let long_literal = format!("/{}", "a".repeat(3000));
    let routes = format!(
        "{}  - name: stars\n    match: {}\n    to:\n      - forward: lights\n        rewrite: /hit/stars\n  - name: alternations\n    match: {}\n    to:\n      - forward: lights\n        rewrite: /hit/alternations\n  - name: long-literal\n    match: {}\n    incoming_patterns: true\n    to:\n      - forward: lights\n        rewrite: /hit/long-literal\n",
        barrier_route("lights"),
        yq(&stars),
        yq(&alternations),
        yq(&long_literal)
    );
    let pb = Patchbay::start(&desk_lights(rx.addr(), &routes));
    let desk = pb.addr("desk");
    let tx = Receiver::new();
    let mut n = 0;
    let mut hits = |address: &str| -> Vec<String> {
        n += 1;
        tx.send_to(&osc::message(address, &[]), desk);
        tx.send_to(&barrier(n), desk);
        rx.until_barrier(&barrier(n))
            .iter()
            .map(|b| osc::address_of(b))
            .collect()
    };

    // Near misses: a backtracking matcher explores an exponential number of splits on these.
    let many_a = format!("/{}", "a".repeat(3000));
    assert_eq!(
        hits(&many_a),
        vec!["/hit/long-literal".to_string()],
        "only the literal route matches /aaa…"
    );
    assert_eq!(
        hits(&format!("/{}c", "a".repeat(3000))),
        Vec::<String>::new()
    );
    // An incoming hostile pattern against the opted-in long literal route. (Pattern routes match
    // it as a literal address, so `stars` fires on the one ending in `b`.)
    assert_eq!(
        hits(&format!("/{}c", "*a".repeat(40))),
        Vec::<String>::new()
    );
    assert_eq!(
        hits(&format!("/{}b", "*a".repeat(40))),
        vec!["/hit/stars".to_string()]
    );
    assert_eq!(
        hits(&format!("/{}", "*a".repeat(40))),
        vec!["/hit/long-literal".to_string()]
    );
    // And they still match what they should.
    let mut got = hits(&format!("/{}b", "a".repeat(30)));
    got.sort();
    assert_eq!(
        got,
        vec!["/hit/alternations".to_string(), "/hit/stars".to_string()]
    );
    // The host keeps serving: a good message right after arrives.
    let good = osc::message("/barrier/after", &[OscArg::Int(1)]);
    tx.send_to(&good, desk);
    rx.expect_bytes(&good, "a good message right after the hostile ones");
}
