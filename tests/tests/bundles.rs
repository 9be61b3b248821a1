//! Time-tagged bundles end to end: a forward passes a bundle on at once as a bundle with its time tag
//! (split per destination, nested bundles kept nested); an `unbundle: true` forward sends the messages
//! one by one at the bundle's time; far-future, late and queue-full bundles are handled and counted as
//! `bundles:` says.
//!
//! Timing is asserted with bounds only: "not before most of the delay" and "within a generous bound".

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use patchbay_plugin_api::osc::{encode, OscArg, OscBundle, OscMessage, OscPacket, TimeTag};
use patchbay_tests::*;
use support::*;

fn msg(address: &str, args: Vec<OscArg>) -> OscPacket {
    OscPacket::Message(OscMessage::new(address, args))
}

fn bundle(timetag: TimeTag, content: Vec<OscPacket>) -> OscPacket {
    OscPacket::Bundle(OscBundle { timetag, content })
}

/// A time tag `delay` from now.
fn in_future(delay: Duration) -> TimeTag {
    TimeTag::after(SystemTime::now(), delay)
}

/// How much earlier than its time tag a scheduled message may arrive (clock granularity).
const SLACK: Duration = Duration::from_millis(50);

/// Channels `desk` (listens), `a` -> `a_rx`, `b` -> `b_rx`; `bundles` and extra routes as given.
/// Routes: barrier (to a), /a/* -> a, /b/* -> b, /cue/* -> a with unbundle.
fn config(a_rx: SocketAddr, b_rx: SocketAddr, bundles: &str) -> String {
    format!(
        "version: 1
metrics:
  listen: 127.0.0.1:0
{bundles}channels:
  desk:
    kind: udp
    listen: 127.0.0.1:0
  a:
    kind: udp
    send: {a_rx}
  b:
    kind: udp
    send: {b_rx}
routes:
{}  - name: to-a
    match: /a/*
    to:
      - forward: a
  - name: to-b
    match: /b/*
    to:
      - forward: b
  - name: both
    match: /both/*
    to:
      - forward: a
      - forward: b
  - name: cues
    match: /cue/*
    to:
      - forward: a
        unbundle: true
",
        barrier_route("a")
    )
}

struct Rig {
    pb: Patchbay,
    a: Receiver,
    b: Receiver,
    tx: Receiver,
    metrics: SocketAddr,
}

impl Rig {
    fn start(bundles: &str) -> Rig {
        let a = Receiver::new();
        let b = Receiver::new();
        let pb = Patchbay::start(&config(a.addr(), b.addr(), bundles));
        let metrics = pb
            .ready()
            .metrics
            .expect("metrics address in the ready file");
        Rig {
            pb,
            a,
            b,
            tx: Receiver::new(),
            metrics,
        }
    }

    fn send(&self, packet: &OscPacket) {
        self.tx.send_to(&encode(packet), self.pb.addr("desk"));
    }

    /// Sends barrier `n` (straight to `a`) and returns what reached `a` before it.
    fn before_barrier(&self, n: usize) -> Vec<Vec<u8>> {
        self.tx.send_to(&barrier(n), self.pb.addr("desk"));
        self.a.until_barrier(&barrier(n))
    }

    fn metrics(&self) -> Metrics {
        Metrics::scrape(self.metrics)
    }
}

fn none() -> Vec<Vec<u8>> {
    Vec::new()
}

// ---------------------------------------------------------------------------------------------------
// Forwarding bundles as bundles

#[test]
fn a_bundle_is_forwarded_at_once_byte_exact_with_its_time_tag() {
    // Proves a forward passes a bundle on as the identical bytes (time tag included) at once, not at
    // its time: a bundle 30 s ahead arrives well before that.
    let rig = Rig::start("");
    let cases = [
        ("30 s ahead", in_future(Duration::from_secs(30))),
        ("immediately", TimeTag::IMMEDIATELY),
        (
            "in the past",
            TimeTag::from_system_time(SystemTime::now() - Duration::from_secs(5)),
        ),
        ("an arbitrary tag", TimeTag::new(0xd2c3_e04f, 0x455a_9000)),
    ];
    for (what, tt) in cases {
        let p = bundle(
            tt,
            vec![
                msg("/a/1", vec![OscArg::Int(1), OscArg::String("one".into())]),
                msg("/a/2", vec![OscArg::Float(2.5)]),
            ],
        );
        let started = Instant::now();
        rig.send(&p);
        rig.a.expect_bytes(&encode(&p), what);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: forwarded at once, not held"
        );
    }
}

#[test]
fn a_bundle_split_between_destinations_keeps_its_time_tag() {
    // Proves each destination gets one bundle with just its messages, in order, with the same tag.
    let rig = Rig::start("");
    let tt = in_future(Duration::from_secs(20));
    let a1 = msg("/a/1", vec![OscArg::Int(1)]);
    let b1 = msg("/b/1", vec![OscArg::String("b one".into())]);
    let a2 = msg("/a/2", vec![OscArg::Blob(vec![1, 2, 3])]);
    let nobody = msg("/nobody/here", vec![]);
    let b2 = msg("/b/2", vec![OscArg::Double(0.25)]);
    let both = msg("/both/x", vec![OscArg::True]);
    rig.send(&bundle(
        tt,
        vec![
            a1.clone(),
            b1.clone(),
            a2.clone(),
            nobody,
            b2.clone(),
            both.clone(),
        ],
    ));
    rig.a.expect_bytes(
        &encode(&bundle(tt, vec![a1, a2, both.clone()])),
        "a's bundle: /a/1, /a/2, /both/x",
    );
    rig.b.expect_bytes(
        &encode(&bundle(tt, vec![b1, b2, both])),
        "b's bundle: /b/1, /b/2, /both/x",
    );
    assert_eq!(rig.before_barrier(1), none(), "a got one bundle only");
}

#[test]
fn nested_bundles_stay_nested() {
    // Proves nested bundles are kept nested (with their own tags) in each destination's bundle, and a
    // nested bundle with nothing for a destination is left out of it.
    let rig = Rig::start("");
    let outer_tt = in_future(Duration::from_secs(20));
    let inner_tt = in_future(Duration::from_secs(25));
    let a1 = msg("/a/1", vec![OscArg::Int(1)]);
    let a2 = msg("/a/2", vec![OscArg::Int(2)]);
    let a3 = msg("/a/3", vec![OscArg::Int(3)]);
    let b1 = msg("/b/1", vec![OscArg::Int(-1)]);
    let b2 = msg("/b/2", vec![OscArg::Int(-2)]);
    let deepest = bundle(TimeTag::IMMEDIATELY, vec![a3.clone()]);
    let sent = bundle(
        outer_tt,
        vec![
            a1.clone(),
            bundle(inner_tt, vec![b1.clone(), a2.clone(), deepest.clone()]),
            b2.clone(),
        ],
    );
    rig.send(&sent);
    rig.a.expect_bytes(
        &encode(&bundle(
            outer_tt,
            vec![a1, bundle(inner_tt, vec![a2, deepest])],
        )),
        "a: /a/1 and the inner bundle with /a/2 and the innermost bundle",
    );
    rig.b.expect_bytes(
        &encode(&bundle(outer_tt, vec![bundle(inner_tt, vec![b1]), b2])),
        "b: the inner bundle with /b/1, then /b/2",
    );

    // All of it one way: the original bytes.
    let all_a = bundle(
        outer_tt,
        vec![
            msg("/a/x", vec![]),
            bundle(
                inner_tt,
                vec![
                    msg("/a/y", vec![]),
                    bundle(TimeTag::IMMEDIATELY, vec![msg("/a/z", vec![])]),
                ],
            ),
        ],
    );
    rig.send(&all_a);
    rig.a
        .expect_bytes(&encode(&all_a), "a bundle nested three deep, all to a");
}

// ---------------------------------------------------------------------------------------------------
// unbundle: messages at the bundle's time

#[test]
fn unbundle_sends_each_message_at_the_bundle_time() {
    // Proves an unbundle forward sends the bundle's messages one by one, in order, not before most of
    // the delay and within a generous bound, while an un-timed message sent after it goes at once.
    let rig = Rig::start("");
    let delay = Duration::from_millis(500);
    let c1 = msg("/cue/1", vec![OscArg::Int(1)]);
    let c2 = msg("/cue/2", vec![OscArg::String("two".into())]);
    let c3 = msg("/cue/3", vec![OscArg::Float(3.0)]);
    let started = Instant::now();
    let tt = in_future(delay);
    rig.send(&bundle(tt, vec![c1.clone(), c2.clone(), c3.clone()]));
    // Sent after the bundle, but due now: it overtakes the held messages.
    let now_msg = msg("/cue/now", vec![]);
    rig.send(&now_msg);

    let (first, _) = rig.a.expect("the un-timed /cue/now");
    assert_bytes(
        &first,
        &encode(&now_msg),
        "first to arrive is the un-timed message",
    );
    for expected in [&c1, &c2, &c3] {
        let (got, _) = rig.a.expect("a held message");
        let at = started.elapsed();
        assert_bytes(
            &got,
            &encode(expected),
            "held messages arrive alone, in order",
        );
        assert!(
            at + SLACK >= delay,
            "{expected:?} arrived after {at:?}, before its time tag ({delay:?} ahead)"
        );
        assert!(at < RECV_TIMEOUT, "{expected:?} arrived after {at:?}");
    }
    assert_eq!(rig.before_barrier(1), none(), "nothing else");
    let m = wait_value(rig.metrics, "patchbay_bundles_scheduled_total", &[], 3.0);
    assert_eq!(m.plain("patchbay_bundles_late_total"), Some(0.0));
    assert_eq!(m.plain("patchbay_bundles_far_future_total"), Some(0.0));
    assert_eq!(m.plain("patchbay_bundles_dropped_total"), Some(0.0));
}

#[test]
fn far_future_bundles_are_dispatched_at_once_by_default_and_counted() {
    // Proves a bundle beyond bundles.horizon_ms goes to an unbundle target at once (the device clock
    // may run ahead) and is counted far-future, not scheduled.
    let rig = Rig::start("bundles:\n  horizon_ms: 1000\n");
    let c1 = msg("/cue/far1", vec![OscArg::Int(1)]);
    let c2 = msg("/cue/far2", vec![OscArg::Int(2)]);
    let started = Instant::now();
    rig.send(&bundle(
        in_future(Duration::from_secs(30)),
        vec![c1.clone(), c2.clone()],
    ));
    rig.a
        .expect_bytes(&encode(&c1), "far-future /cue/far1 at once");
    rig.a
        .expect_bytes(&encode(&c2), "far-future /cue/far2 at once");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "dispatched at once, not at its time 30 s ahead"
    );
    let m = wait_value(rig.metrics, "patchbay_bundles_far_future_total", &[], 1.0);
    assert_eq!(m.plain("patchbay_bundles_scheduled_total"), Some(0.0));
    assert_eq!(m.plain("patchbay_bundles_dropped_total"), Some(0.0));

    // Within the horizon it is still scheduled (positive control for the horizon).
    let near = msg("/cue/near", vec![]);
    rig.send(&bundle(
        in_future(Duration::from_millis(300)),
        vec![near.clone()],
    ));
    rig.a
        .expect_bytes(&encode(&near), "a bundle inside the horizon, at its time");
    let m = wait_value(rig.metrics, "patchbay_bundles_scheduled_total", &[], 1.0);
    assert_eq!(m.plain("patchbay_bundles_far_future_total"), Some(1.0));
}

#[test]
fn far_future_drop_keeps_them_from_unbundle_targets_and_counts_them() {
    // Proves `far_future: drop` delivers nothing of a far-future bundle to an unbundle target (counted
    // per message as dropped), while a plain forward still passes the bundle on intact.
    let rig = Rig::start("bundles:\n  horizon_ms: 1000\n  far_future: drop\n");
    let tt = in_future(Duration::from_secs(30));
    rig.send(&bundle(
        tt,
        vec![msg("/cue/x", vec![OscArg::Int(1)]), msg("/cue/y", vec![])],
    ));
    assert_eq!(
        rig.before_barrier(1),
        none(),
        "the far-future messages were not dispatched to the unbundle target"
    );
    let m = wait_value(rig.metrics, "patchbay_bundles_dropped_total", &[], 2.0);
    assert_eq!(m.plain("patchbay_bundles_far_future_total"), Some(1.0));
    assert_eq!(m.plain("patchbay_bundles_scheduled_total"), Some(0.0));

    // A forward (no unbundle) passes a far-future bundle on: the receiving device decides.
    let kept = bundle(tt, vec![msg("/b/kept", vec![OscArg::Int(5)])]);
    rig.send(&kept);
    rig.b
        .expect_bytes(&encode(&kept), "a plain forward of a far-future bundle");
    let m = wait_value(rig.metrics, "patchbay_bundles_far_future_total", &[], 2.0);
    assert_eq!(m.plain("patchbay_bundles_dropped_total"), Some(2.0));
}

#[test]
fn late_bundles_are_dispatched_at_once_and_counted() {
    // Proves a bundle whose time tag has passed goes to an unbundle target at once and counts as late.
    let rig = Rig::start("");
    let past = TimeTag::from_system_time(SystemTime::now() - Duration::from_secs(5));
    let c1 = msg("/cue/late1", vec![OscArg::Int(1)]);
    let c2 = msg("/cue/late2", vec![OscArg::Int(2)]);
    rig.send(&bundle(past, vec![c1.clone(), c2.clone()]));
    rig.a.expect_bytes(&encode(&c1), "late /cue/late1");
    rig.a.expect_bytes(&encode(&c2), "late /cue/late2");
    let m = wait_value(rig.metrics, "patchbay_bundles_late_total", &[], 1.0);
    assert_eq!(m.plain("patchbay_bundles_scheduled_total"), Some(0.0));
    assert_eq!(m.plain("patchbay_bundles_far_future_total"), Some(0.0));

    // "Immediately" is not late.
    let now = msg("/cue/immediately", vec![]);
    rig.send(&bundle(TimeTag::IMMEDIATELY, vec![now.clone()]));
    rig.a.expect_bytes(&encode(&now), "an immediately bundle");
    assert_eq!(rig.before_barrier(1), none());
    assert_eq!(
        rig.metrics().plain("patchbay_bundles_late_total"),
        Some(1.0)
    );
}

#[test]
fn a_full_queue_drops_and_counts() {
    // Proves `bundles: { queue: 2 }` holds two future messages and drops (and counts) the other three.
    let rig = Rig::start("bundles:\n  queue: 2\n");
    let delay = Duration::from_millis(600);
    let cues: Vec<OscPacket> = (1..=5)
        .map(|i| msg(&format!("/cue/q{i}"), vec![OscArg::Int(i)]))
        .collect();
    let started = Instant::now();
    rig.send(&bundle(in_future(delay), cues.clone()));
    let m = wait_value(rig.metrics, "patchbay_bundles_dropped_total", &[], 3.0);
    assert_eq!(m.plain("patchbay_bundles_scheduled_total"), Some(2.0));
    for expected in &cues[..2] {
        let (got, _) = rig.a.expect("a queued message");
        assert_bytes(&got, &encode(expected), "the first two are kept, in order");
        assert!(
            started.elapsed() + SLACK >= delay,
            "held until its time ({:?} of {delay:?})",
            started.elapsed()
        );
    }
    // The scheduler sends everything due at once, so the others would be here by now.
    assert_eq!(
        rig.before_barrier(1),
        none(),
        "the other three were dropped"
    );
    assert_eq!(
        rig.metrics().plain("patchbay_bundles_dropped_total"),
        Some(3.0)
    );
}
