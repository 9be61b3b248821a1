//! `format: raw` end to end, for devices that do not speak OSC: each datagram arriving on a raw channel
//! becomes a message at `raw_address` (default `/raw/CHANNEL`) with one blob holding its bytes; a
//! message forwarded to a raw channel sends its first blob or string argument's bytes, and a message
//! with neither is dropped and counted.

mod support;

use patchbay_plugin_api::osc::{decode, encode, OscArg, OscMessage, OscPacket};
use patchbay_tests::*;
use support::*;

fn message(address: &str, args: Vec<OscArg>) -> Vec<u8> {
    encode(&OscPacket::Message(OscMessage::new(address, args)))
}

/// `proj` (raw, raw_address /projector/in) and `plain` (raw, default address) listen; `desk` (OSC)
/// listens; `osc_out` sends OSC to `osc_rx`; `raw_out` is a raw channel sending to `raw_rx`.
fn config(osc_rx: std::net::SocketAddr, raw_rx: std::net::SocketAddr) -> String {
    format!(
        "version: 1
metrics:
  listen: 127.0.0.1:0
channels:
  proj:
    kind: udp
    listen: 127.0.0.1:0
    format: raw
    raw_address: /projector/in
  plain:
    kind: udp
    listen: 127.0.0.1:0
    format: raw
  desk:
    kind: udp
    listen: 127.0.0.1:0
  osc_out:
    kind: udp
    send: {osc_rx}
  raw_out:
    kind: udp
    send: {raw_rx}
    format: raw
routes:
  - name: from-proj
    match: /projector/in
    from: [proj]
    to:
      - forward: osc_out
  - name: from-plain
    match: /raw/plain
    from: [plain]
    to:
      - forward: osc_out
  - name: to-raw
    match: /to-raw/*
    from: [desk]
    to:
      - forward: raw_out
  - name: rest
    unmatched: true
    to:
      - forward: osc_out
        rewrite: /unmatched
"
    )
}

/// Asserts `got` is an OSC message at `address` with exactly one blob equal to `bytes`.
fn assert_blob_message(got: &[u8], address: &str, bytes: &[u8], what: &str) {
    let decoded = decode(got).unwrap_or_else(|e| panic!("{what}: not OSC ({e}): {got:?}"));
    let OscPacket::Message(m) = decoded else {
        panic!("{what}: expected a message, got {decoded:?}")
    };
    assert_eq!(m.address, address, "{what}: address");
    assert_eq!(
        m.args,
        vec![OscArg::Blob(bytes.to_vec())],
        "{what}: one blob"
    );
    // And byte-exact against the tests' independent encoder.
    assert_bytes(
        got,
        &osc::message(address, &[OscArg::Blob(bytes.to_vec())]),
        what,
    );
}

#[test]
fn a_raw_datagram_becomes_a_message_with_one_blob() {
    // Proves plain text (and arbitrary binary, even bytes that look like OSC) arriving on a raw
    // channel is routed as a message at raw_address whose single blob holds the exact bytes.
    let osc_rx = Receiver::new();
    let raw_rx = Receiver::new();
    let pb = Patchbay::start(&config(osc_rx.addr(), raw_rx.addr()));
    let tx = Receiver::new();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("plain text", b"%1POWR 1\r".to_vec()),
        ("one byte", vec![b'x']),
        ("an empty datagram", vec![]),
        ("binary with NULs", vec![0, 0xff, 0, 0x7f, 0x80, 1, 2]),
        ("four bytes (no padding needed)", b"PING".to_vec()),
        (
            "an OSC message is not parsed",
            message("/looks/like/osc", vec![OscArg::Int(1)]),
        ),
        ("longer text", "Ü lamp hours?\n".repeat(40).into_bytes()),
    ];
    for (what, bytes) in &cases {
        tx.send_to(bytes, pb.addr("proj"));
        let (got, _) = osc_rx.expect(what);
        assert_blob_message(&got, "/projector/in", bytes, what);
    }
}

#[test]
fn the_default_raw_address_is_raw_slash_channel() {
    // Proves a raw channel without raw_address routes its datagrams at /raw/CHANNEL.
    let osc_rx = Receiver::new();
    let raw_rx = Receiver::new();
    let pb = Patchbay::start(&config(osc_rx.addr(), raw_rx.addr()));
    let bytes = b"LAMP?\r\n";
    send_to(bytes, pb.addr("plain"));
    let (got, _) = osc_rx.expect("a datagram on `plain`");
    assert_blob_message(&got, "/raw/plain", bytes, "default raw_address");
}

#[test]
fn a_forward_to_a_raw_channel_sends_the_payload_bytes() {
    // Proves a message forwarded to a raw channel goes out as just its first blob or string argument's
    // bytes, and one with neither is dropped (nothing sent) and counted in drops.
    let osc_rx = Receiver::new();
    let raw_rx = Receiver::new();
    let pb = Patchbay::start(&config(osc_rx.addr(), raw_rx.addr()));
    let metrics = pb.ready().metrics.expect("metrics address");
    let desk = pb.addr("desk");
    let tx = Receiver::new();

    let blob = vec![0x02, b'P', b'O', b'N', 0x03, 0, 0xff];
    tx.send_to(
        &message("/to-raw/blob", vec![OscArg::Blob(blob.clone())]),
        desk,
    );
    raw_rx.expect_bytes(&blob, "a blob's bytes, nothing else");

    tx.send_to(
        &message("/to-raw/string", vec![OscArg::String("PWR OFF\r".into())]),
        desk,
    );
    raw_rx.expect_bytes(b"PWR OFF\r", "a string's bytes, without NUL or padding");

    tx.send_to(
        &message(
            "/to-raw/mixed",
            vec![
                OscArg::Int(7),
                OscArg::Float(0.5),
                OscArg::Blob(b"first".to_vec()),
                OscArg::String("second".into()),
            ],
        ),
        desk,
    );
    raw_rx.expect_bytes(b"first", "the first blob or string argument only");

    let mut sent_payloads = blob.len() + b"PWR OFF\r".len() + b"first".len();

    // Neither blob nor string: dropped. The string barrier after it is the next thing to arrive.
    tx.send_to(
        &message(
            "/to-raw/none",
            vec![OscArg::Int(1), OscArg::Float(2.0), OscArg::True],
        ),
        desk,
    );
    tx.send_to(&message("/to-raw/empty", vec![]), desk);
    tx.send_to(
        &message("/to-raw/barrier", vec![OscArg::String("BARRIER".into())]),
        desk,
    );
    assert_eq!(
        raw_rx.until_barrier(b"BARRIER"),
        Vec::<Vec<u8>>::new(),
        "messages without a blob or string send nothing to a raw device"
    );
    sent_payloads += b"BARRIER".len();

    let m = wait_value(
        metrics,
        "patchbay_channel_drops_total",
        &[("channel", "raw_out")],
        2.0,
    );
    assert_eq!(
        m.channel("patchbay_channel_packets_out_total", "raw_out"),
        Some(4.0),
        "four payloads sent"
    );
    assert_eq!(
        m.channel("patchbay_channel_bytes_out_total", "raw_out"),
        Some(sent_payloads as f64),
        "bytes out are the payload bytes"
    );
    assert_eq!(
        m.route("patchbay_route_matches_total", "to-raw"),
        Some(6.0),
        "all six desk messages matched (the drop happens at the raw output)"
    );
    assert_eq!(
        m.channel("patchbay_channel_send_errors_total", "raw_out"),
        Some(0.0)
    );
}
