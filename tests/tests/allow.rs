//! `allow:` source networks. Senders bind 127.0.0.1 and 127.0.0.2: both are loopback on Linux (all of
//! 127.0.0.0/8 is routed to `lo`), so nothing leaves the machine.

use patchbay_plugin_api::osc::OscArg;
use patchbay_tests::*;

fn config(rx: std::net::SocketAddr, allow: &str) -> String {
    format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n    allow: {allow}\n  open:\n    kind: udp\n    listen: 127.0.0.1:0\n  lights:\n    kind: udp\n    send: {rx}\nroutes:\n  - name: all\n    unmatched: true\n    to:\n      - forward: lights\n"
    )
}

fn peer(ip: &str) -> Receiver {
    Receiver::bind(format!("{ip}:0").parse().unwrap())
}

#[test]
fn allow_list_drops_other_sources_and_passes_allowed_ones() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&config(rx.addr(), "[127.0.0.2/32]"));
    let desk = pb.addr("desk");
    let stranger = peer("127.0.0.1");
    let friend = peer("127.0.0.2");

    // The stranger's message is dropped; the friend's, sent after it, is the first thing to arrive.
    let dropped = osc::message("/from/stranger", &[OscArg::Int(1)]);
    let passed = osc::message("/from/friend", &[OscArg::Int(2)]);
    stranger.send_to(&dropped, desk);
    friend.send_to(&passed, desk);
    rx.expect_bytes(
        &passed,
        "the allowed sender's message (and nothing before it)",
    );

    // Again, several times, interleaved: still only the friend's get through.
    for i in 0..5 {
        stranger.send_to(&osc::message("/from/stranger", &[OscArg::Int(i)]), desk);
        let ok = osc::message("/from/friend", &[OscArg::Int(i)]);
        friend.send_to(&ok, desk);
        rx.expect_bytes(&ok, &format!("allowed message #{i}"));
    }

    // A channel without allow: takes everyone, including the stranger.
    let open = osc::message("/open", &[]);
    stranger.send_to(&open, pb.addr("open"));
    rx.expect_bytes(&open, "a channel without allow: accepts 127.0.0.1");
}

#[test]
fn allow_accepts_bare_addresses_and_several_networks() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&config(rx.addr(), "[127.0.0.3, 127.0.0.1]"));
    let desk = pb.addr("desk");
    let stranger = peer("127.0.0.2");
    let friend = peer("127.0.0.1");
    let other_friend = peer("127.0.0.3");

    stranger.send_to(&osc::message("/from/stranger", &[]), desk);
    let a = osc::message("/from/friend", &[]);
    friend.send_to(&a, desk);
    rx.expect_bytes(
        &a,
        "bare address 127.0.0.1 is allowed (and 127.0.0.2 was dropped before it)",
    );
    let b = osc::message("/from/other-friend", &[]);
    other_friend.send_to(&b, desk);
    rx.expect_bytes(&b, "bare address 127.0.0.3 is allowed");
}

#[test]
fn allow_with_a_wide_network() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&config(rx.addr(), "[127.0.0.0/30]"));
    let desk = pb.addr("desk");
    // 127.0.0.0/30 covers .0 to .3; .4 is outside.
    let outside = peer("127.0.0.4");
    let inside = peer("127.0.0.2");
    outside.send_to(&osc::message("/outside", &[]), desk);
    let m = osc::message("/inside", &[]);
    inside.send_to(&m, desk);
    rx.expect_bytes(
        &m,
        "127.0.0.2 is inside 127.0.0.0/30 (127.0.0.4 was dropped before it)",
    );
}
