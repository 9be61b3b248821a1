//! The Prometheus endpoint end to end: after known traffic, every metric the README lists is checked
//! by value over HTTP (a plain `TcpStream` GET and a parser for the text format's sample lines), and
//! labels are channel and route names only, never addresses.

mod support;

use std::collections::{BTreeMap, BTreeSet};
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

/// The metric names in README.md's metrics table (rows starting with `| \`patchbay_`).
fn readme_metric_names() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `patchbay_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("patchbay_{name}"))
        .collect()
}

/// The routing core's metrics (this issue's): per channel, per route, unmatched, bundles.
/// The stream-channel (tcp, peer) families: checked by value in tcp.rs and peer.rs.
const STREAM_FAMILIES: &[&str] = &[
    "patchbay_channel_connections",
    "patchbay_channel_connections_accepted_total",
    "patchbay_channel_connections_refused_total",
    "patchbay_channel_frames_in_total",
    "patchbay_channel_frames_out_total",
    "patchbay_channel_framing_errors_total",
    "patchbay_channel_reconnects_total",
    "patchbay_channel_expired_total",
];

fn routing_core(names: &BTreeSet<String>) -> BTreeSet<String> {
    names
        .iter()
        .filter(|n| !STREAM_FAMILIES.contains(&n.as_str()))
        .filter(|n| {
            [
                "patchbay_channel_",
                "patchbay_route_",
                "patchbay_unmatched",
                "patchbay_bundles_",
            ]
            .iter()
            .any(|prefix| n.starts_with(prefix))
        })
        .cloned()
        .collect()
}

#[test]
fn prometheus_parser_reads_the_text_format() {
    // Proves the tests' own parser handles labels, escapes, comments, unlabelled samples and
    // timestamps, and refuses malformed lines (so the by-value checks below can be trusted).
    let text = "# HELP x y\n# TYPE a_total counter\na_total{channel=\"desk\"} 3\n\nb 1.5\nc{route=\"a,b\",x=\"q\\\"\\\\\"} 0 1700000000\n";
    let s = parse_prometheus(text);
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].name, "a_total");
    assert_eq!(s[0].labels, vec![("channel".into(), "desk".into())]);
    assert_eq!(s[0].value, 3.0);
    assert_eq!(
        (s[1].name.as_str(), s[1].labels.len(), s[1].value),
        ("b", 0, 1.5)
    );
    assert_eq!(
        s[2].labels,
        vec![
            ("route".to_string(), "a,b".to_string()),
            ("x".to_string(), "q\"\\".to_string())
        ]
    );
    for bad in [
        "x{a=\"1\" 2",
        "x{a=1} 2",
        "x",
        "x 1 2 3",
        "x{a=\"1\"} notanumber",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_prometheus(bad)).is_err(),
            "{bad:?} should not parse"
        );
    }
}

/// A metric name and its one label (`channel=...`, `route=...`) or none.
type Key = (String, Option<(&'static str, String)>);

/// Expected value per metric and label.
#[derive(Default)]
struct Expect {
    values: BTreeMap<Key, f64>,
}

impl Expect {
    fn channel(&mut self, name: &str, channel: &str, value: f64) {
        self.values.insert(
            (name.to_string(), Some(("channel", channel.to_string()))),
            value,
        );
    }
    fn route(&mut self, name: &str, route: &str, value: f64) {
        self.values.insert(
            (name.to_string(), Some(("route", route.to_string()))),
            value,
        );
    }
    fn plain(&mut self, name: &str, value: f64) {
        self.values.insert((name.to_string(), None), value);
    }
    fn names(&self) -> BTreeSet<String> {
        self.values.keys().map(|(n, _)| n.clone()).collect()
    }
    fn mismatches(&self, m: &Metrics) -> Vec<String> {
        let mut out = Vec::new();
        for ((name, label), want) in &self.values {
            let got = match label {
                Some((k, v)) => m.get(name, &[(k, v.as_str())]),
                None => m.plain(name),
            };
            if got != Some(*want) {
                out.push(format!("{name}{label:?}: expected {want}, got {got:?}"));
            }
        }
        out
    }
}

#[test]
fn every_metric_is_counted_by_value_after_known_traffic() {
    // Proves each metric in the README's table has the value the traffic below implies, per channel
    // and per route, and that labels never carry addresses.
    let lights_rx = Receiver::new();
    let proj_rx = Receiver::new();
    // A port we hold, so channel `taken` cannot bind it (up 0, and forwards to it are drops).
    let holder = Receiver::new();
    let taken_rx = Receiver::new();
    let refused_port = free_udp_port();
    let yaml = format!(
        "version: 1
metrics:
  listen: 127.0.0.1:0
bundles:
  horizon_ms: 5000
  queue: 2
channels:
  desk:
    kind: udp
    listen: 127.0.0.1:0
  guarded:
    kind: udp
    listen: 127.0.0.1:0
    allow: [127.0.0.1]
  lights:
    kind: udp
    send: {lights}
  proj:
    kind: udp
    send: {proj}
    format: raw
  refused:
    kind: udp
    send: 127.255.255.255:{refused_port}
  taken:
    kind: udp
    listen: {held}
    send: {taken_rx}
    retry_ms: 60000
routes:
  - name: faders
    match: /fader/*
    from: [desk]
    to:
      - forward: lights
  - name: proj-cmd
    match: /proj/*
    from: [desk]
    to:
      - forward: proj
  - name: refuse
    match: /refuse
    to:
      - forward: refused
  - name: to-taken
    match: /taken
    to:
      - forward: taken
  - name: cues
    match: /cue/*
    to:
      - forward: lights
        unbundle: true
  - name: never
    match: /never/matches
    to:
      - forward: lights
  - name: rest
    unmatched: true
    to:
      - forward: lights
",
        lights = lights_rx.addr(),
        proj = proj_rx.addr(),
        held = holder.addr(),
        taken_rx = taken_rx.addr(),
    );
    let pb = Patchbay::start(&yaml);
    let metrics = pb
        .ready()
        .metrics
        .expect("the ready file names the metrics address");
    assert!(metrics.ip().is_loopback() && metrics.port() != 0);
    assert!(!pb.channel("taken").up, "taken cannot bind the held port");
    let desk = pb.addr("desk");
    let tx = Receiver::new();
    let stranger = Receiver::bind("127.0.0.2:0".parse().unwrap());

    // --- Traffic to desk (from 127.0.0.1) ---------------------------------------------------------
    let mut desk_in: Vec<Vec<u8>> = Vec::new();
    let mut desk_messages = 0.0;
    let mut lights_out: Vec<Vec<u8>> = Vec::new();
    let mut send_desk = |bytes: Vec<u8>, messages: f64| {
        tx.send_to(&bytes, desk);
        desk_in.push(bytes);
        desk_messages += messages;
    };

    // Two faders and a bundle of two more: the bundle goes to lights intact.
    let m1 = encode(&msg("/fader/1", vec![OscArg::Float(0.5)]));
    let m2 = encode(&msg("/fader/2", vec![OscArg::Int(7)]));
    let b1 = encode(&bundle(
        TimeTag::IMMEDIATELY,
        vec![
            msg("/fader/3", vec![OscArg::Float(0.25)]),
            msg("/fader/4", vec![OscArg::String("x".into())]),
        ],
    ));
    lights_out.extend([m1.clone(), m2.clone(), b1.clone()]);
    send_desk(m1, 1.0);
    send_desk(m2, 1.0);
    send_desk(b1, 2.0);
    // Raw projector: a string is sent as its bytes; an int-only message is a drop.
    send_desk(
        encode(&msg("/proj/on", vec![OscArg::String("PWR ON".into())])),
        1.0,
    );
    send_desk(encode(&msg("/proj/bad", vec![OscArg::Int(1)])), 1.0);
    // Unmatched: to lights through `rest`.
    let nothing = encode(&msg("/nothing/here", vec![OscArg::True]));
    lights_out.push(nothing.clone());
    send_desk(nothing, 1.0);
    // Garbage: a decode error (counted as a packet and bytes in, not as a message).
    send_desk(b"\x00\x01garbage".to_vec(), 0.0);
    // A send the OS refuses: a udp socket without SO_BROADCAST sending to 127.255.255.255 gets
    // EACCES, so nothing is sent at all.
    send_desk(encode(&msg("/refuse", vec![OscArg::Int(1)])), 1.0);
    // A forward to a channel that is not bound: a drop.
    send_desk(encode(&msg("/taken", vec![])), 1.0);
    // Bundles for an unbundle target: one late, one beyond the horizon (dispatched at once), and one
    // due shortly with three messages for a queue of two (two scheduled, one dropped).
    let late = msg("/cue/late", vec![OscArg::Int(1)]);
    let far = msg("/cue/far", vec![OscArg::Int(2)]);
    let q: Vec<OscPacket> = (1..=3)
        .map(|i| msg(&format!("/cue/q{i}"), vec![OscArg::Int(i)]))
        .collect();
    lights_out.extend([encode(&late), encode(&far), encode(&q[0]), encode(&q[1])]);
    let now = SystemTime::now();
    send_desk(
        encode(&bundle(
            TimeTag::from_system_time(now - Duration::from_secs(5)),
            vec![late],
        )),
        1.0,
    );
    send_desk(
        encode(&bundle(
            TimeTag::after(now, Duration::from_secs(60)),
            vec![far],
        )),
        1.0,
    );
    send_desk(
        encode(&bundle(
            TimeTag::after(now, Duration::from_millis(300)),
            q.clone(),
        )),
        3.0,
    );

    // --- Traffic to guarded ------------------------------------------------------------------------
    let outsider = encode(&msg("/guarded/no", vec![]));
    stranger.send_to(&outsider, pb.addr("guarded"));
    let insider = encode(&msg("/guarded/ok", vec![OscArg::Int(3)]));
    tx.send_to(&insider, pb.addr("guarded"));
    lights_out.push(insider.clone());

    // --- What must arrive --------------------------------------------------------------------------
    let got_lights = recv_n(&lights_rx, lights_out.len(), "lights");
    let sorted = |v: &[Vec<u8>]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    assert_eq!(
        sorted(&got_lights),
        sorted(&lights_out),
        "lights got exactly the expected packets"
    );
    proj_rx.expect_bytes(b"PWR ON", "the projector's payload");

    // --- Expected values ---------------------------------------------------------------------------
    let len = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() as f64;
    let mut e = Expect::default();
    let channels = ["desk", "guarded", "lights", "proj", "refused", "taken"];
    for c in channels {
        for name in [
            "patchbay_channel_packets_in_total",
            "patchbay_channel_messages_in_total",
            "patchbay_channel_bytes_in_total",
            "patchbay_channel_packets_out_total",
            "patchbay_channel_bytes_out_total",
            "patchbay_channel_decode_errors_total",
            "patchbay_channel_disallowed_total",
            "patchbay_channel_drops_total",
            "patchbay_channel_send_errors_total",
        ] {
            e.channel(name, c, 0.0);
        }
        e.channel("patchbay_channel_up", c, 1.0);
    }
    e.channel(
        "patchbay_channel_packets_in_total",
        "desk",
        desk_in.len() as f64,
    );
    e.channel("patchbay_channel_messages_in_total", "desk", desk_messages);
    e.channel("patchbay_channel_bytes_in_total", "desk", len(&desk_in));
    e.channel("patchbay_channel_decode_errors_total", "desk", 1.0);
    // The stranger's datagram is refused before it counts as received.
    e.channel("patchbay_channel_packets_in_total", "guarded", 1.0);
    e.channel("patchbay_channel_messages_in_total", "guarded", 1.0);
    e.channel(
        "patchbay_channel_bytes_in_total",
        "guarded",
        insider.len() as f64,
    );
    e.channel("patchbay_channel_disallowed_total", "guarded", 1.0);
    e.channel(
        "patchbay_channel_packets_out_total",
        "lights",
        lights_out.len() as f64,
    );
    e.channel(
        "patchbay_channel_bytes_out_total",
        "lights",
        len(&lights_out),
    );
    e.channel("patchbay_channel_packets_out_total", "proj", 1.0);
    e.channel("patchbay_channel_bytes_out_total", "proj", 6.0);
    e.channel("patchbay_channel_drops_total", "proj", 1.0);
    e.channel("patchbay_channel_send_errors_total", "refused", 1.0);
    e.channel("patchbay_channel_drops_total", "taken", 1.0);
    e.channel("patchbay_channel_up", "taken", 0.0);
    for (route, n) in [
        ("faders", 4.0),
        ("proj-cmd", 2.0),
        ("refuse", 1.0),
        ("to-taken", 1.0),
        ("cues", 5.0),
        ("never", 0.0),
        ("rest", 2.0),
    ] {
        e.route("patchbay_route_matches_total", route, n);
    }
    e.plain("patchbay_unmatched_total", 2.0);
    e.plain("patchbay_bundles_scheduled_total", 2.0);
    e.plain("patchbay_bundles_late_total", 1.0);
    e.plain("patchbay_bundles_far_future_total", 1.0);
    e.plain("patchbay_bundles_dropped_total", 1.0);

    // Every routing-core metric the README lists (channels, routes, unmatched, bundles; later issues
    // add other families) is checked here: a new one in the table without a check fails this.
    let readme = routing_core(&readme_metric_names());
    assert!(
        readme.len() >= 16,
        "README lists the metrics in a table: {readme:?}"
    );
    assert_eq!(
        e.names(),
        readme,
        "the metrics checked here are exactly the README's routing-core ones"
    );

    // --- Scrape until the counters settle (bounded), then compare all ------------------------------
    let deadline = Instant::now() + RECV_TIMEOUT;
    let m = loop {
        let m = Metrics::scrape(metrics);
        let wrong = e.mismatches(&m);
        if wrong.is_empty() {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "metrics that do not have the expected value after {RECV_TIMEOUT:?}:\n{}\n\nscrape:\n{}",
            wrong.join("\n"),
            m.text
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // --- Labels: names only ------------------------------------------------------------------------
    let known: BTreeSet<&str> = channels
        .iter()
        .copied()
        .chain([
            "faders", "proj-cmd", "refuse", "to-taken", "cues", "never", "rest",
        ])
        .collect();
    for s in &m.samples {
        for (k, v) in &s.labels {
            assert!(
                !v.contains("127.0.0.1") && v.parse::<SocketAddr>().is_err(),
                "{}: label {k}={v:?} is an address",
                s.name
            );
        }
        if !readme.contains(&s.name) {
            continue; // other families (e.g. reloads, labelled by result) have their own labels
        }
        for (k, v) in &s.labels {
            assert!(
                k == "channel" || k == "route",
                "{}: label {k:?} (only channel and route are allowed)",
                s.name
            );
            assert!(
                known.contains(v.as_str()),
                "{}: label {k}={v:?} is not a channel or route name",
                s.name
            );
        }
    }
    assert!(
        !m.text.contains("127.0.0.1"),
        "the scrape mentions an address:\n{}",
        m.text
    );

    // The metrics answer only GET /metrics (and /): anything else is a 404, and the endpoint keeps
    // serving.
    let (status, _) = http_get(metrics, "/nope");
    assert_eq!(status, 404);
    let (status, body) = http_get(metrics, "/");
    assert_eq!(status, 200);
    assert!(body.contains("patchbay_channel_up"));
    // And nothing moved since: no counter changed without traffic (no feedback, no stray sends).
    let wrong = e.mismatches(&Metrics::scrape(metrics));
    assert!(
        wrong.is_empty(),
        "counters moved without traffic: {wrong:?}"
    );
    drop(holder);
}

#[test]
fn every_served_metric_is_in_the_readme() {
    // Proves the README's metrics table lists every metric family the endpoint serves (the issue:
    // "The README lists every metric with its meaning").
    let pb = Patchbay::start(
        // One channel of each family, so every family in the table is registered from the start.
        "version: 1\nmetrics:\n  listen: 127.0.0.1:0\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n  console:\n    kind: tcp\n    listen: 127.0.0.1:0\n  tools:\n    kind: peer\n    listen: 127.0.0.1:0\nroutes:\n  - name: r\n    match: /x\n    to:\n      - reply: true\n",
    );
    let metrics = pb.ready().metrics.expect("metrics address");
    let m = Metrics::scrape(metrics);
    let readme = readme_metric_names();
    // Histogram and summary samples carry suffixes; the family name is what a table lists.
    let family = |name: &str| -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if !readme.contains(name) {
                    return base.to_string();
                }
            }
        }
        name.to_string()
    };
    let served: BTreeSet<String> = m
        .samples
        .iter()
        .filter(|s| s.name.starts_with("patchbay_"))
        .map(|s| family(&s.name))
        .collect();
    let missing: Vec<&String> = served.difference(&readme).collect();
    assert!(
        missing.is_empty(),
        "served but not in README.md's metrics table: {missing:?}\nscrape:\n{}",
        m.text
    );
    // And the other way: everything the table lists is served from the start (registered at 0),
    // except the per-script and per-plugin families, which exist once a script or plugin is loaded
    // (their own tests check them by value).
    let absent: Vec<&String> = readme
        .difference(&served)
        .filter(|name| {
            !name.starts_with("patchbay_script_") && !name.starts_with("patchbay_plugin_")
        })
        .collect();
    assert!(
        absent.is_empty(),
        "in the README but not served before any traffic: {absent:?}\nscrape:\n{}",
        m.text
    );
}
