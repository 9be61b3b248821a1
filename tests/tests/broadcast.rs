//! `kind: broadcast` end to end. Every broadcast goes to 127.255.255.255 (loopback only); the channel
//! listens on 0.0.0.0:PORT because a socket bound to one address does not see broadcasts.
//!
//! Covered: a broadcast to the channel's port is routed; a forward to the channel is broadcast to its
//! `send` address; broadcasting to our own port does not feed back (our copies are recognised and not
//! routed again, counts stay bounded) while a test sender's identical bytes from another port are.

mod support;

use std::net::SocketAddr;

use patchbay_plugin_api::osc::{encode, OscArg, OscMessage, OscPacket};
use patchbay_tests::*;
use support::*;

fn message(address: &str, args: Vec<OscArg>) -> Vec<u8> {
    encode(&OscPacket::Message(OscMessage::new(address, args)))
}

/// A sender on 127.0.0.1 (ephemeral port) allowed to broadcast.
fn broadcaster() -> Receiver {
    let rx = Receiver::new();
    rx.sock.set_broadcast(true).expect("SO_BROADCAST");
    rx
}

#[test]
fn round_trip_both_ways() {
    // Proves a broadcast to the channel's port is routed, and a forward to the channel is broadcast
    // to its send address (127.255.255.255:P2) from the channel's port.
    let ports = free_udp_ports(2);
    let (p, p2) = (ports[0], ports[1]);
    let out = Receiver::new();
    let listener = broadcast_socket(p2);
    let yaml = format!(
        "version: 1
channels:
  bc:
    kind: broadcast
    listen: 0.0.0.0:{p}
    send: 127.255.255.255:{p2}
  desk:
    kind: udp
    listen: 127.0.0.1:0
  out:
    kind: udp
    send: {}
routes:
  - name: from-bc
    match: //*
    from: [bc]
    to:
      - forward: out
  - name: to-bc
    match: //*
    from: [desk]
    to:
      - forward: bc
",
        out.addr()
    );
    let pb = Patchbay::start(&yaml);
    let bc = pb.channel("bc");
    assert_eq!(bc.kind, "broadcast");
    assert!(bc.up, "bc is up: {bc:?}");
    assert_eq!(bc.listen, Some(SocketAddr::from(([0, 0, 0, 0], p))));

    // In: a broadcast to 127.255.255.255:P reaches the channel and is routed to out.
    let tx = broadcaster();
    for i in 0..3 {
        let m = message("/scene/recall", vec![OscArg::Int(i)]);
        tx.send_to(&m, loopback_broadcast(p));
        out.expect_bytes(&m, &format!("broadcast #{i} routed to out"));
    }

    // Out: a desk message forwarded to bc is broadcast to 127.255.255.255:P2.
    let desk_tx = Receiver::new();
    for i in 0..3 {
        let m = message("/lx/go", vec![OscArg::Float(i as f32)]);
        desk_tx.send_to(&m, pb.addr("desk"));
        let from = listener.expect_bytes(&m, &format!("forward #{i} broadcast to port {p2}"));
        assert_eq!(
            from.port(),
            p,
            "broadcast from the channel's own socket (port {p})"
        );
        assert!(
            from.ip().is_loopback(),
            "broadcast on loopback, from {from}"
        );
    }
}

#[test]
fn broadcasting_to_our_own_port_does_not_feed_back() {
    // Proves own broadcasts that come back to our port are not routed again (no feedback storm: the
    // route below would re-broadcast every routed message), while a test sender's identical bytes
    // from another port are routed exactly once.
    let p = free_udp_port();
    let out = Receiver::new();
    let yaml = format!(
        "version: 1
metrics:
  listen: 127.0.0.1:0
channels:
  bc:
    kind: broadcast
    listen: 0.0.0.0:{p}
    send: 127.255.255.255:{p}
  desk:
    kind: udp
    listen: 127.0.0.1:0
  out:
    kind: udp
    send: {}
routes:
  - name: echo
    match: //*
    from: [bc]
    to:
      - forward: out
      - forward: bc
  - name: to-bc
    match: //*
    from: [desk]
    to:
      - forward: bc
",
        out.addr()
    );
    let pb = Patchbay::start(&yaml);
    let metrics = pb
        .ready()
        .metrics
        .expect("metrics address in the ready file");
    let desk = pb.addr("desk");
    let desk_tx = Receiver::new();
    let tx = broadcaster();
    let to = loopback_broadcast(p);

    let rounds = 4usize;
    let mut bc_out = 0.0;
    for i in 0..rounds {
        let cue = message("/own/cue", vec![OscArg::Int(i as i32)]);
        desk_tx.send_to(&cue, desk);
        // Once bc counts the send, its own copy is queued on its socket (loopback delivers in the
        // send call).
        bc_out += 1.0;
        wait_value(
            metrics,
            "patchbay_channel_packets_out_total",
            &[("channel", "bc")],
            bc_out,
        );
        // A barrier broadcast by the test queues behind it; nothing may reach out before it.
        let b = barrier(i);
        tx.send_to(&b, to);
        assert_eq!(
            out.until_barrier(&b),
            Vec::<Vec<u8>>::new(),
            "round {i}: patchbay's own broadcast came back and was routed"
        );
        bc_out += 1.0; // echo re-broadcast the barrier (and recognised that copy)
                       // Positive control: the identical bytes from the test's port are routed (once).
        tx.send_to(&cue, to);
        out.expect_bytes(&cue, &format!("round {i}: the same cue from a test sender"));
        bc_out += 1.0;
    }
    let last = barrier(rounds);
    tx.send_to(&last, to);
    assert_eq!(
        out.until_barrier(&last),
        Vec::<Vec<u8>>::new(),
        "no copy of anything arrived twice"
    );
    bc_out += 1.0;

    // Bounded counts: bc received only what the test broadcast, and sent one datagram per desk cue
    // plus one re-broadcast per routed test datagram.
    let from_test = (2 * rounds + 1) as f64;
    let m = wait_value(
        metrics,
        "patchbay_channel_packets_out_total",
        &[("channel", "bc")],
        bc_out,
    );
    assert_eq!(
        m.channel("patchbay_channel_packets_in_total", "bc"),
        Some(from_test),
        "bc received only the test's datagrams"
    );
    assert_eq!(
        m.route("patchbay_route_matches_total", "echo"),
        Some(from_test)
    );
    assert_eq!(
        m.channel("patchbay_channel_packets_out_total", "out"),
        Some(from_test)
    );
    // Still the same a moment later: a storm would keep counting (the barrier round trip is the
    // moment; no sleep).
    let again = barrier(rounds + 1);
    tx.send_to(&again, to);
    assert_eq!(out.until_barrier(&again), Vec::<Vec<u8>>::new());
    let m = wait_value(
        metrics,
        "patchbay_channel_packets_in_total",
        &[("channel", "bc")],
        from_test + 1.0,
    );
    assert_eq!(
        m.channel("patchbay_channel_packets_out_total", "bc"),
        Some(bc_out + 1.0)
    );
}
