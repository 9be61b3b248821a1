//! `kind: multicast` end to end, on loopback only: every channel and test socket joins and sends on
//! interface 127.0.0.1 with ttl 0 or 1, in a group of 239.255.0.0/16 chosen per test.
//!
//! Covered: a datagram sent to the group is routed; a forward to the channel reaches group members;
//! with `loop: true` our own datagrams that come back are not routed again (while identical bytes
//! from another sender are); the log names the group and the interface joined.

mod support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use patchbay_plugin_api::osc::{encode, OscArg, OscMessage, OscPacket};
use patchbay_tests::*;
use support::*;

fn message(address: &str, args: Vec<OscArg>) -> Vec<u8> {
    encode(&OscPacket::Message(OscMessage::new(address, args)))
}

/// A multicast channel `cues` (group:port on 127.0.0.1), a listening udp channel `desk`, and a udp
/// channel `out` sending to `out`. Routes: what arrives on `cues` goes to `out`; what arrives on
/// `desk` goes to `cues`.
fn config(group: Ipv4Addr, port: u16, ttl: u8, extra: &str, out: SocketAddr) -> String {
    format!(
        "version: 1
{extra}channels:
  cues:
    kind: multicast
    group: {group}
    port: {port}
    interface: 127.0.0.1
    ttl: {ttl}
    loop: true
  desk:
    kind: udp
    listen: 127.0.0.1:0
  out:
    kind: udp
    send: {out}
routes:
  - name: from-group
    match: //*
    from: [cues]
    to:
      - forward: out
  - name: to-group
    match: //*
    from: [desk]
    to:
      - forward: cues
"
    )
}

#[test]
fn a_datagram_sent_to_the_group_is_routed() {
    // Proves the channel joined the group on 127.0.0.1 and routes what members send to it.
    let (group, port) = (unique_group(), free_udp_port());
    let out = Receiver::new();
    let pb = Patchbay::start(&config(group, port, 0, "", out.addr()));
    assert_eq!(pb.channel("cues").kind, "multicast");
    assert!(
        pb.channel("cues").up,
        "cues is up: {:?}",
        pb.channel("cues")
    );

    let sender = multicast_sender();
    let to = SocketAddr::V4(SocketAddrV4::new(group, port));
    for i in 0..3 {
        let cue = message(
            "/cue/go",
            vec![OscArg::Int(i), OscArg::String("fade".into())],
        );
        sender.send_to(&cue, to);
        out.expect_bytes(&cue, &format!("cue #{i} sent to {to}, forwarded to out"));
    }
}

#[test]
fn a_forward_to_the_channel_reaches_group_members() {
    // Proves a forward to a multicast channel is sent to group:port on the loopback interface.
    let (group, port) = (unique_group(), free_udp_port());
    let out = Receiver::new();
    let member = multicast_member(group, port);
    let pb = Patchbay::start(&config(group, port, 0, "", out.addr()));

    let tx = Receiver::new();
    for i in 0..3 {
        let cue = message("/lx/cue", vec![OscArg::Float(i as f32 + 0.5)]);
        tx.send_to(&cue, pb.addr("desk"));
        let from = member.expect_bytes(&cue, &format!("cue #{i} forwarded to the group"));
        assert_eq!(
            from,
            SocketAddr::from(([127, 0, 0, 1], port)),
            "sent on interface 127.0.0.1 from the channel's socket (the group port)"
        );
    }
}

#[test]
fn own_datagrams_that_loop_back_are_not_routed_again() {
    // Proves that with loop: true patchbay's own group datagrams are not routed by the same channel,
    // while the same bytes from another sender are (positive control), by datagrams and by metrics.
    let (group, port) = (unique_group(), free_udp_port());
    let out = Receiver::new();
    let member = multicast_member(group, port);
    let pb = Patchbay::start(&config(
        group,
        port,
        1,
        "metrics:\n  listen: 127.0.0.1:0\n",
        out.addr(),
    ));
    let metrics = pb
        .ready()
        .metrics
        .expect("the ready file names the metrics address");
    let desk = pb.addr("desk");
    let tx = Receiver::new();
    let sender = multicast_sender();
    let to = SocketAddr::V4(SocketAddrV4::new(group, port));

    let rounds = 5;
    for i in 0..rounds {
        let cue = message("/own/cue", vec![OscArg::Int(i)]);
        tx.send_to(&cue, desk);
        // The member's copy proves the datagram went out and came back on loopback: patchbay's own
        // channel socket got its copy in the same kernel delivery, so it is queued there now.
        member.expect_bytes(&cue, &format!("cue #{i} on the group"));
        // A barrier on the group queues behind it on the channel's socket; `from-group` forwards the
        // barrier to `out`, and patchbay's own cue must not have come before it.
        let b = barrier(i as usize);
        sender.send_to(&b, to);
        assert_eq!(
            out.until_barrier(&b),
            Vec::<Vec<u8>>::new(),
            "round {i}: patchbay's own cue, looped back to `cues`, was routed again"
        );
        member.expect_bytes(&b, "the barrier on the group");
        // Positive control: the identical bytes from another sender on the group are routed.
        sender.send_to(&cue, to);
        out.expect_bytes(&cue, &format!("round {i}: the same cue from a test sender"));
        member.expect_bytes(&cue, &format!("round {i}: the test sender's copy"));
    }
    // Received and routed: only the test sender's barriers and cues; sent: one per desk cue.
    let from_test = 2.0 * rounds as f64;
    let m = wait_value(
        metrics,
        "patchbay_channel_messages_in_total",
        &[("channel", "cues")],
        from_test,
    );
    assert_eq!(
        m.channel("patchbay_channel_packets_in_total", "cues"),
        Some(from_test),
        "cues counts only the test sender's datagrams as received"
    );
    assert_eq!(
        m.route("patchbay_route_matches_total", "from-group"),
        Some(from_test),
        "from-group matched only the test sender's datagrams"
    );
    assert_eq!(
        m.channel("patchbay_channel_packets_out_total", "cues"),
        Some(rounds as f64),
        "cues sent exactly one datagram per desk cue"
    );
    assert_eq!(
        m.channel("patchbay_channel_packets_out_total", "out"),
        Some(from_test),
        "out forwarded exactly the test sender's datagrams"
    );
}

#[test]
fn the_log_names_the_joined_group_and_interface() {
    // Proves the operator can see in the log which interface the channel joined the group on.
    let (group, port) = (unique_group(), free_udp_port());
    let out = Receiver::new();
    let pb = Patchbay::start(&config(group, port, 0, "", out.addr()));
    let text = pb.wait_stderr(RECV_TIMEOUT, |t| {
        t.lines().any(|l| {
            l.contains(&group.to_string())
                && l.contains("127.0.0.1")
                && l.to_lowercase().contains("interface")
                && l.contains("cues")
        })
    });
    let line = text
        .lines()
        .find(|l| l.contains(&group.to_string()) && l.to_lowercase().contains("interface"))
        .unwrap();
    assert!(
        line.to_lowercase().contains("join"),
        "the line says it joined: {line}"
    );
}
