//! Bad datagrams are dropped (never forwarded), logged naming channel and sender, and the next good
//! packet is served.

use std::time::Duration;

use patchbay_plugin_api::osc::{OscArg, TimeTag};
use patchbay_tests::*;

const MAX_DATAGRAM: usize = 256;

fn config(rx: std::net::SocketAddr, channel: &str) -> String {
    format!(
        "version: 1\nchannels:\n  {channel}:\n    kind: udp\n    listen: 127.0.0.1:0\n    max_datagram: {MAX_DATAGRAM}\n  lights:\n    kind: udp\n    send: {rx}\nroutes:\n  - name: all\n    unmatched: true\n    to:\n      - forward: lights\n"
    )
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn nested_bundles(depth: usize) -> Vec<u8> {
    let mut packet = osc::message("/deep", &[]);
    for _ in 0..depth {
        packet = osc::bundle(TimeTag::IMMEDIATELY, &[packet]);
    }
    packet
}

fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut arg = OscArg::Int(1);
    for _ in 0..depth {
        arg = OscArg::Array(vec![arg]);
    }
    osc::message("/deep", &[arg])
}

/// A valid message of exactly `len` bytes (a multiple of 4, at least 16).
fn message_of_len(len: usize) -> Vec<u8> {
    // "/big\0\0\0\0" (8) + ",b\0\0" (4) + size (4) + blob.
    let m = osc::message("/big", &[OscArg::Blob(vec![7; len - 16])]);
    assert_eq!(m.len(), len);
    m
}

/// (what, datagram) for every kind of bad input.
fn bad_packets() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty datagram", vec![]),
        (
            "truncated: second int of ,ii missing",
            cat(&[b"/a\0\0,ii\0", &1i32.to_be_bytes()]),
        ),
        (
            "truncated: cut in the middle of the address",
            b"/abc".to_vec(),
        ),
        (
            "truncated: blob size past the end",
            cat(&[b"/a\0\0,b\0\0", &1000u32.to_be_bytes(), b"xxxx"]),
        ),
        (
            "truncated: string argument without NUL",
            cat(&[b"/a\0\0,s\0\0", b"abcd"]),
        ),
        (
            "truncated: bundle without its time tag",
            b"#bundle\0\0\0\0\0".to_vec(),
        ),
        (
            "truncated: bundle element size past the end",
            cat(&[
                b"#bundle\0",
                &[0, 0, 0, 0, 0, 0, 0, 1],
                &100u32.to_be_bytes(),
                b"/a\0\0,\0\0\0",
            ]),
        ),
        (
            "misaligned: length not a multiple of 4",
            cat(&[&osc::message("/a", &[OscArg::Int(1)]), b"\0"]),
        ),
        (
            "misaligned: bundle element size not a multiple of 4",
            cat(&[
                b"#bundle\0",
                &[0, 0, 0, 0, 0, 0, 0, 1],
                &5u32.to_be_bytes(),
                b"/a\0\0,\0\0\0",
            ]),
        ),
        (
            "non-NUL padding after the address",
            b"/a\0x,\0\0\0".to_vec(),
        ),
        ("garbage: text", b"hello world!".to_vec()),
        ("garbage: 0xff bytes", vec![0xff; 32]),
        (
            "garbage: address without a leading slash",
            b"abc\0,\0\0\0".to_vec(),
        ),
        (
            "type-tag string without its comma",
            cat(&[b"/a\0\0i\0\0\0", &1i32.to_be_bytes()]),
        ),
        (
            "unknown type tag X",
            cat(&[b"/a\0\0,X\0\0", &1i32.to_be_bytes()]),
        ),
        (
            "unknown type tag after good ones",
            cat(&[b"/a\0\0,iQ\0", &1i32.to_be_bytes(), &2i32.to_be_bytes()]),
        ),
        ("unbalanced array ]", b"/a\0\0,]\0\0".to_vec()),
        (
            "unclosed array [",
            cat(&[b"/a\0\0,[i\0", &1i32.to_be_bytes()]),
        ),
        (
            "oversize: valid message above max_datagram",
            message_of_len(MAX_DATAGRAM + 4),
        ),
        ("oversize: well above max_datagram", message_of_len(4000)),
        ("bundles nested too deep", nested_bundles(40)),
        ("arrays nested too deep", nested_arrays(40)),
    ]
}

#[test]
fn each_bad_packet_is_dropped_and_the_next_good_one_served() {
    let rx = Receiver::new();
    let mut pb = Patchbay::start(&config(rx.addr(), "desk"));
    let desk = pb.addr("desk");
    let tx = Receiver::new();
    for (i, (what, bad)) in bad_packets().iter().enumerate() {
        tx.send_to(bad, desk);
        let good = osc::message("/good", &[OscArg::Int(i as i32)]);
        tx.send_to(&good, desk);
        // If the bad packet had been forwarded it would arrive first.
        let (got, _) = rx.expect(&format!("the good message after: {what}"));
        assert_bytes(
            &got,
            &good,
            &format!("first datagram forwarded after [{what}] (the bad one must be dropped)"),
        );
    }
    // The limit is inclusive: a packet of exactly max_datagram bytes is served.
    let exact = message_of_len(MAX_DATAGRAM);
    tx.send_to(&exact, desk);
    rx.expect_bytes(&exact, "a message of exactly max_datagram bytes");
    assert!(
        pb.is_running(),
        "patchbay still runs after all the bad input"
    );
}

#[test]
fn bad_packet_log_names_channel_and_sender() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&config(rx.addr(), "fohdesk"));
    let desk = pb.addr("fohdesk");
    let sender = Receiver::new();
    sender.send_to(b"garbage!", desk);
    let good = osc::message("/good", &[]);
    sender.send_to(&good, desk);
    rx.expect_bytes(&good, "the good message after garbage");
    let who = sender.addr().to_string();
    let text = pb.wait_stderr(RECV_TIMEOUT, |t| {
        t.lines().any(|l| l.contains("fohdesk") && l.contains(&who))
    });
    let line = text
        .lines()
        .find(|l| l.contains("fohdesk") && l.contains(&who))
        .unwrap();
    eprintln!("log line: {line}");
}

#[test]
fn a_flood_of_bad_packets_is_logged_rate_limited_and_the_host_keeps_serving() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&config(rx.addr(), "floodchan"));
    let desk = pb.addr("floodchan");
    let sender = Receiver::new();
    const FLOOD: usize = 300;
    for i in 0..FLOOD {
        sender.send_to(format!("junk{i:04}").as_bytes(), desk);
    }
    // The socket buffer may overflow during the flood, so offer good messages until one arrives;
    // the first datagram forwarded must be one of them.
    let mut got = None;
    for i in 0..100 {
        sender.send_to(&osc::message("/good", &[OscArg::Int(i)]), desk);
        if let Some((bytes, _)) = rx.recv_timeout(Duration::from_millis(200)) {
            got = Some(bytes);
            break;
        }
    }
    let got = got.expect("no good message was forwarded after the flood");
    assert_eq!(
        osc::address_of(&got),
        "/good",
        "first datagram forwarded after the flood: {}",
        osc::hexdump(&got)
    );
    let text = pb.wait_stderr(RECV_TIMEOUT, |t| t.contains("floodchan"));
    let lines = text.lines().filter(|l| l.contains("floodchan")).count();
    assert!(
        lines < FLOOD / 3,
        "{FLOOD} bad datagrams produced {lines} log lines naming the channel: the log is not rate-limited\n{text}"
    );
}
