//! `kind: peer` channels end to end (issue 8): the real binary, a real peerpy 1.2.2 (the
//! `tests/python/peer_*.py` helpers, peers bound to 127.0.0.1 and invisible), and a raw peer over a
//! plain `TcpStream` for what peerpy never sends (`peer_support`, written from peerpy's code, not
//! from the host's). Covered: Python peers connecting to patchbay and patchbay connecting to Python
//! peers, json / bytes / raw payloads both ways (routes, replies, scripts with `msg.value` and
//! `peer.send`), offers denied by the allow list, `max_connections` and the offer decider script,
//! strict and streaming connections, pickles that need a global, every hostile header (each followed
//! by a good message on a new connection), discovery (answers at the real source only, `invisible`,
//! `patchbay peers`), the Peer object in scripts, and the peer events.
//!
//! Only 127.0.0.1 (discovery: 127.255.255.255) and unprivileged ports. Counted, never timed: every
//! wait is a bounded poll that fails with what it saw; a negative check looks after a barrier that
//! went the same way (the same connection, the same socket, or a counter the same task moves).

mod live_support;
mod peer_support;
mod script_support;
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use patchbay_plugin_api::osc::OscArg;
use patchbay_tests::*;
use peer_support::*;
use script_support::ScriptDir;
use serde_json::{json, Value};
use support::{broadcast_socket, loopback_broadcast, wait_metrics, wait_value};

const OFFERS: &str = "patchbay_peer_offers_total";
const DATA_IN: &str = "patchbay_peer_data_in_total";
const DATA_OUT: &str = "patchbay_peer_data_out_total";
const PROTOCOL_ERRORS: &str = "patchbay_peer_protocol_errors_total";
const SKIPPED: &str = "patchbay_peer_skipped_total";
const PONGS: &str = "patchbay_peer_pongs_total";
const CONNECTIONS: &str = "patchbay_channel_connections";
const DECODE_ERRORS: &str = "patchbay_channel_decode_errors_total";

// ---------------------------------------------------------------------------------------------------
// Helpers

fn s(text: &str) -> OscArg {
    OscArg::String(text.to_string())
}

/// Waits until the gauge `name{channel}` is exactly `value` (gauges go both ways).
fn wait_gauge(pb: &Patchbay, name: &str, channel: &str, value: f64) {
    wait_metrics(
        metrics_addr(pb),
        &format!("{name}{{channel={channel}}} == {value}"),
        |m| m.channel(name, channel) == Some(value),
    );
}

/// Waits until the counter `name{channel, extra...}` reaches `value`, and asserts it is exactly that.
fn wait_counter(pb: &Patchbay, name: &str, channel: &str, extra: &[(&str, &str)], value: f64) {
    let mut labels = vec![("channel", channel)];
    labels.extend_from_slice(extra);
    wait_value(metrics_addr(pb), name, &labels, value);
}

/// A counter's value now (0 when absent).
fn counter_now(pb: &Patchbay, name: &str, labels: &[(&str, &str)]) -> f64 {
    support::Metrics::scrape(metrics_addr(pb))
        .get(name, labels)
        .unwrap_or(0.0)
}

/// Receives `expected.len()` datagrams and asserts they are `expected`, in any order (they come by
/// different paths), byte for byte.
fn expect_unordered(rx: &Receiver, expected: &[Vec<u8>], what: &str) {
    let mut got = support::recv_n(rx, expected.len(), what);
    let mut want = expected.to_vec();
    got.sort();
    want.sort();
    if got != want {
        let show = |packets: &[Vec<u8>]| -> Vec<String> {
            packets
                .iter()
                .map(|p| match patchbay_plugin_api::osc::decode(p) {
                    Ok(packet) => format!("{packet:?}"),
                    Err(_) => osc::hexdump(p),
                })
                .collect()
        };
        panic!("{what}: got {:#?}\nexpected {:#?}", show(&got), show(&want));
    }
}

/// Asserts a json value list holds exactly `expected`, in any order.
fn assert_values_unordered(got: &[Value], expected: &[Value], what: &str) {
    let key = |v: &Value| v.to_string();
    let mut g: Vec<String> = got.iter().map(key).collect();
    let mut w: Vec<String> = expected.iter().map(key).collect();
    g.sort();
    w.sort();
    assert_eq!(g, w, "{what}");
}

/// Reads what arrived on a UDP socket so far without waiting (after a barrier that guarantees
/// anything that was going to be sent has been).
fn drain(rx: &Receiver) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut got = Vec::new();
    while let Some(d) = rx.recv_timeout(Duration::from_millis(1)) {
        got.push(d);
    }
    got
}

// ---------------------------------------------------------------------------------------------------
// 1. A Python peer connects to patchbay: json and bytes both ways

const ECHO_RHAI: &str = r#"
// A json value: the script sees the whole value (the dict stays a map; the OSC arguments carry it as
// text) and answers the peer with it.
fn on_value(msg) {
    send("out", "/script/seen", [type_of(msg.value), msg.args.len(), type_of(msg.value[6])]);
    msg.peer.send(#{echo: msg.value, args: msg.args.len()});
}
"#;

/// Proves: a real peerpy peer connecting with `data_type=json` gets its value routed as
/// `/peer/tools/json` with the documented arguments (a top-level list one argument each, a nested
/// list an OSC array, a dict its JSON text), forwarded by a route to a UDP receiver; a script sees
/// `msg.value` as the whole value and answers with `peer.send(value)`, which peerpy receives as json;
/// a second peerpy peer on `data_type=bytes` has its OSC packet routed byte for byte and gets a
/// `reply: true` answer as bytes; a forward from a udp channel reaches both peers at once, each in
/// its own data type (the json peer gets the arguments as a list, the bytes peer the packet).
#[test]
fn a_python_peer_connects_and_exchanges_json_and_bytes_both_ways() {
    let dir = ScriptDir::new();
    dir.write("echo.rhai", ECHO_RHAI);
    let rx = Receiver::new();
    let routes = forward("json-out", "/peer/tools/json", Some("tools"), "out")
        + &script(
            "json-script",
            "/peer/tools/json",
            "tools",
            &dir.name("echo.rhai"),
            "on_value",
        )
        + &forward("osc-out", "/osc/*", Some("tools"), "out")
        + &reply("osc-ack", "/osc/*", "tools", "/ack")
        + &forward("to-peers", "/to/peers", Some("in"), "tools");
    let pb = Patchbay::start(&show(
        &listener("tools", ""),
        rx.addr(),
        &scripts_dir(dir.path()),
        &routes,
    ));
    let tools = pb.addr("tools");

    let value = json!([1, 2.5, "x", true, null, [3, 4], {"k": "v"}]);
    let mut json_peer = PyPeer::connect(
        tools,
        &[
            "--data-type",
            "json",
            "--send",
            &value.to_string(),
            "--expect",
            "2",
            "--timeout",
            "30",
        ],
    );
    let hello = osc::message("/osc/hello", &[OscArg::Int(5)]);
    let mut bytes_peer = PyPeer::connect(
        tools,
        &[
            "--data-type",
            "bytes",
            "--send",
            &tagged_bytes(&hello).to_string(),
            "--expect",
            "2",
            "--timeout",
            "30",
        ],
    );
    for (peer, data_type) in [(&mut json_peer, "json"), (&mut bytes_peer, "bytes")] {
        let c = peer.wait_event("connection", "peerpy connects to the peer channel");
        assert_eq!(c["data_type"], data_type, "{c}");
        assert_eq!(c["peer"], tools.to_string(), "{c}");
    }

    expect_unordered(
        &rx,
        &[
            osc::message(
                "/peer/tools/json",
                &[
                    OscArg::Int(1),
                    OscArg::Double(2.5),
                    s("x"),
                    OscArg::True,
                    OscArg::Nil,
                    OscArg::Array(vec![OscArg::Int(3), OscArg::Int(4)]),
                    s(r#"{"k":"v"}"#),
                ],
            ),
            osc::message("/script/seen", &[s("array"), OscArg::Int(7), s("map")]),
            hello.clone(),
        ],
        "the json value as OSC, what the script saw, and the bytes peer's packet as it was",
    );

    // Both peers are connected now; a forward from udp reaches each in its data type.
    wait_gauge(&pb, CONNECTIONS, "tools", 2.0);
    let to_peers = osc::message("/to/peers", &[OscArg::Int(7), s("x")]);
    send_to(&to_peers, pb.addr("in"));

    let got = json_peer.data_values(2, "the json peer");
    assert_values_unordered(
        &got,
        &[json!({"echo": value, "args": 7}), json!([7, "x"])],
        "the json peer gets the script's answer (the whole value) and the forward as a list",
    );
    let got = bytes_peer.data_values(2, "the bytes peer");
    assert_values_unordered(
        &got,
        &[
            tagged_bytes(&osc::message("/ack", &[OscArg::Int(5)])),
            tagged_bytes(&to_peers),
        ],
        "the bytes peer gets the reply and the forwarded packet, as bytes",
    );
    json_peer.expect_exit(0, "the json peer got both values");
    bytes_peer.expect_exit(0, "the bytes peer got both values");

    let json_t = [("data_type", "json")];
    let bytes_t = [("data_type", "bytes")];
    wait_counter(&pb, DATA_IN, "tools", &json_t, 1.0);
    wait_counter(&pb, DATA_IN, "tools", &bytes_t, 1.0);
    wait_counter(&pb, DATA_OUT, "tools", &json_t, 2.0);
    wait_counter(&pb, DATA_OUT, "tools", &bytes_t, 2.0);
    wait_counter(&pb, OFFERS, "tools", &[("result", "accepted")], 2.0);
}

// ---------------------------------------------------------------------------------------------------
// 2. patchbay connects to Python peers

/// A TCP port on 127.0.0.1 that was free a moment ago (bound and released).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Proves: a channel with `connect: [{address, data_type, strict}]` keeps trying peers that are not
/// there yet (backoff) and offers itself to real peerpy peers once they listen (the HELLO peerpy
/// reads names the data type and patchbay's address); both directions work on each: what peerpy
/// sends on the new connection (a json value, an OSC packet as bytes) is routed; a forward reaches
/// the json peer as a list and the bytes peer as the packet, and their echoes come back and are
/// routed. (The peers start after patchbay is ready, so what they send at once cannot meet a
/// channel that is still binding; see `the_listen_event_reaches_a_route_at_start`.)
#[test]
fn patchbay_connects_to_python_peers_and_both_directions_work() {
    let json_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let bytes_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let rx = Receiver::new();
    let channel = format!(
        "  py:\n    kind: peer\n    reconnect_ms: 50\n    reconnect_max_ms: 400\n    connect:\n      - {{ address: {json_addr}, data_type: json }}\n      - {{ address: {bytes_addr}, data_type: bytes, strict: false }}\n"
    );
    let routes = forward("to-py", "/to/py", Some("in"), "py")
        + &forward("json-back", "/peer/py/json", Some("py"), "out")
        + &forward("from-py", "/from/py", Some("py"), "out")
        + &forward("echo-back", "/to/py", Some("py"), "out");
    let pb = Patchbay::start(&show(&channel, rx.addr(), "", &routes));
    wait_log_line(&pb, &["Cannot connect to the peer", "channel=py"]);

    let (mut json_peer, _) = PyPeer::listen(&[
        "--port",
        &json_addr.port().to_string(),
        "--echo",
        "--reply",
        r#"{"hello": [1, 2]}"#,
        "--expect",
        "1",
        "--timeout",
        "30",
    ]);
    let from_py = osc::message("/from/py", &[s("hello")]);
    let (mut bytes_peer, _) = PyPeer::listen(&[
        "--port",
        &bytes_addr.port().to_string(),
        "--echo",
        "--reply",
        &tagged_bytes(&from_py).to_string(),
        "--expect",
        "1",
        "--timeout",
        "30",
    ]);

    for (peer, data_type) in [(&mut json_peer, "json"), (&mut bytes_peer, "bytes")] {
        let offer = peer.wait_event("offer", "patchbay offers itself to the Python peer");
        assert_eq!(offer["data_type"], data_type, "{offer}");
        assert_eq!(offer["stream"], false, "{offer}");
        let name: SocketAddr = offer["peer_name"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the HELLO's peer_name is not ip:port: {offer}"));
        assert_eq!(name.ip(), Ipv4Addr::LOCALHOST, "{offer}");
        peer.wait_event("connection", "the Python peer accepted patchbay");
    }
    wait_gauge(&pb, CONNECTIONS, "py", 2.0);

    expect_unordered(
        &rx,
        &[
            osc::message("/peer/py/json", &[s(r#"{"hello":[1,2]}"#)]),
            from_py.clone(),
        ],
        "what each Python peer sent on its new connection",
    );

    let to_py = osc::message("/to/py", &[OscArg::Int(5), s("hi")]);
    send_to(&to_py, pb.addr("in"));
    assert_eq!(
        json_peer.data_values(1, "the json peer")[0],
        json!([5, "hi"])
    );
    assert_eq!(
        bytes_peer.data_values(1, "the bytes peer")[0],
        tagged_bytes(&to_py)
    );
    expect_unordered(
        &rx,
        &[
            osc::message("/peer/py/json", &[OscArg::Int(5), s("hi")]),
            to_py.clone(),
        ],
        "the echoes of both Python peers",
    );
    json_peer.expect_exit(0, "the json peer");
    bytes_peer.expect_exit(0, "the bytes peer");
    wait_counter(&pb, DATA_OUT, "py", &[("data_type", "json")], 1.0);
    wait_counter(&pb, DATA_OUT, "py", &[("data_type", "bytes")], 1.0);
    wait_counter(&pb, DATA_IN, "py", &[("data_type", "json")], 2.0);
    wait_counter(&pb, DATA_IN, "py", &[("data_type", "bytes")], 2.0);
}

// ---------------------------------------------------------------------------------------------------
// 3. Denied offers

/// Proves: with `allow: [10.0.0.0/8]` an offer from 127.0.0.1 is denied by its real source: peerpy
/// gets the DENY (peer_connect.py exits 3), the offer event says F, the log names the allow list,
/// and `patchbay_peer_offers_total{result="denied"}` counts it; nothing is connected.
#[test]
fn an_offer_from_outside_the_allow_list_is_denied_and_python_sees_the_deny() {
    let rx = Receiver::new();
    let routes = forward("events", "/patchbay/peer/offer", Some("tools"), "out");
    let pb = Patchbay::start(&show(
        &listener("tools", "    allow: [10.0.0.0/8]\n"),
        rx.addr(),
        "",
        &routes,
    ));
    let mut py = PyPeer::connect(pb.addr("tools"), &["--timeout", "20"]);
    let events = py.expect_exit(3, "peerpy is denied");
    assert!(events.iter().any(|e| e["event"] == "denied"), "{events:#?}");
    let (bytes, _) = rx.expect("the offer event");
    let m = message_of(&bytes, "the offer event");
    assert_eq!(m.address, "/patchbay/peer/offer");
    assert_eq!(m.args.len(), 4, "{m:?}");
    assert_eq!(m.args[0], s("tools"), "{m:?}");
    assert!(
        matches!(&m.args[1], OscArg::String(a) if a.starts_with("127.0.0.1:")),
        "{m:?}"
    );
    assert_eq!(&m.args[2..], &[s("json"), OscArg::False], "{m:?}");
    wait_log_line(&pb, &["Denied an offer", "allow list", "channel=tools"]);
    wait_counter(&pb, OFFERS, "tools", &[("result", "denied")], 1.0);
    assert_eq!(
        counter_now(&pb, OFFERS, &[("channel", "tools"), ("result", "accepted")]),
        0.0
    );
    wait_gauge(&pb, CONNECTIONS, "tools", 0.0);
}

/// Proves: with `max_connections: 1` and one connection open, peerpy's offer is denied (exit 3,
/// counted, logged naming max_connections); the open connection is still served, and once it closes
/// a new peerpy offer is accepted.
#[test]
fn an_offer_past_max_connections_is_denied_and_the_slot_frees_on_close() {
    let rx = Receiver::new();
    let routes = forward("json", "/peer/tools/json", Some("tools"), "out");
    let pb = Patchbay::start(&show(
        &listener("tools", "    max_connections: 1\n"),
        rx.addr(),
        "",
        &routes,
    ));
    let tools = pb.addr("tools");
    let mut first = RawPeer::accepted(tools, "json", true, false);
    wait_gauge(&pb, CONNECTIONS, "tools", 1.0);

    let mut py = PyPeer::connect(tools, &["--timeout", "20"]);
    py.expect_exit(3, "peerpy is denied while the one slot is taken");
    wait_log_line(
        &pb,
        &["Denied an offer", "max_connections (1)", "channel=tools"],
    );
    wait_counter(&pb, OFFERS, "tools", &[("result", "denied")], 1.0);

    first.send_json(&json!("still here"));
    rx.expect_bytes(
        &osc::message("/peer/tools/json", &[s("still here")]),
        "the open connection after the denial",
    );
    drop(first);
    wait_gauge(&pb, CONNECTIONS, "tools", 0.0);
    let mut py = PyPeer::connect(tools, &["--send", "\"second\"", "--timeout", "20"]);
    py.expect_exit(0, "peerpy is accepted once the slot is free");
    rx.expect_bytes(
        &osc::message("/peer/tools/json", &[s("second")]),
        "the second peerpy peer's value",
    );
    wait_counter(&pb, OFFERS, "tools", &[("result", "accepted")], 2.0);
}

// ---------------------------------------------------------------------------------------------------
// 4. Strict connections

/// Proves: on a strict json connection a DATA of type bytes closes that connection (log names the
/// mismatch, `patchbay_peer_skipped_total` counts it, nothing of it is routed), another strict
/// connection is untouched, and a lenient connection (`strict=False`) routes a bytes payload as OSC
/// and a json one as a value.
#[test]
fn a_strict_connection_closes_on_another_data_type_and_a_lenient_one_routes_it() {
    let rx = Receiver::new();
    let routes = forward("json", "/peer/tools/json", Some("tools"), "out")
        + &forward("osc", "/osc/*", Some("tools"), "out");
    let pb = Patchbay::start(&show(&listener("tools", ""), rx.addr(), "", &routes));
    let tools = pb.addr("tools");
    let mut other = RawPeer::accepted(tools, "json", true, false);
    let mut strict = RawPeer::accepted(tools, "json", true, false);
    let peer = strict.local_addr().to_string();
    strict.send_osc(&osc::message("/osc/strict", &[OscArg::Int(1)]));
    let (_, bytes) = strict.expect_closed("the strict connection after a bytes DATA");
    assert!(
        bytes.is_empty(),
        "the strict connection got {bytes:02x?} before the close"
    );
    wait_log_line(
        &pb,
        &[
            "the strict json connection received bytes data",
            "channel=tools",
            &format!("peer={peer}"),
        ],
    );
    wait_counter(&pb, SKIPPED, "tools", &[], 1.0);

    // The other strict connection is untouched; nothing of the mismatched payload was routed.
    other.send_json(&json!("after"));
    let before = rx.until_barrier(&osc::message("/peer/tools/json", &[s("after")]));
    assert!(
        before.is_empty(),
        "routed from the closed strict connection: {:?}",
        before
            .iter()
            .map(|b| osc::address_of(b))
            .collect::<Vec<_>>()
    );

    let mut lenient = RawPeer::accepted(tools, "json", false, false);
    let packet = osc::message("/osc/lenient", &[OscArg::Int(2)]);
    lenient.send_osc(&packet);
    rx.expect_bytes(&packet, "a bytes payload on a lenient json connection");
    lenient.send_json(&json!([3]));
    rx.expect_bytes(
        &osc::message("/peer/tools/json", &[OscArg::Int(3)]),
        "a json payload on the same lenient connection",
    );
    wait_gauge(&pb, CONNECTIONS, "tools", 2.0);
}

// ---------------------------------------------------------------------------------------------------
// 5. Streaming connections

/// Proves: a real peerpy peer streaming json (`stream=True`: its first DATA header fixes the record
/// size, the records after it come bare) has every record routed, in order.
#[test]
fn a_python_peer_streams_fixed_size_records_into_patchbay() {
    let rx = Receiver::new();
    let routes = forward("json", "/peer/tools/json", Some("tools"), "out");
    let pb = Patchbay::start(&show(&listener("tools", ""), rx.addr(), "", &routes));
    // `{"data": 10001}` is 15 bytes, as are the others.
    let mut py = PyPeer::connect(
        pb.addr("tools"),
        &[
            "--stream",
            "--send",
            "10001",
            "--send",
            "10002",
            "--send",
            "10003",
            "--send-delay",
            "0.05",
            "--timeout",
            "20",
        ],
    );
    let c = py.wait_event("connection", "the streaming peer connects");
    assert_eq!(c["stream"], true, "{c}");
    for n in [10001, 10002, 10003] {
        rx.expect_bytes(
            &osc::message("/peer/tools/json", &[OscArg::Int(n)]),
            &format!("record {n}"),
        );
    }
    let events = py.expect_exit(0, "the streaming peer sent three records");
    let sent: Vec<&Value> = events.iter().filter(|e| e["event"] == "sent").collect();
    assert_eq!(sent.len(), 3, "{events:#?}");
    assert!(sent.iter().all(|e| e["ok"] == true), "{events:#?}");
    wait_counter(&pb, DATA_IN, "tools", &[("data_type", "json")], 3.0);
}

/// Proves: patchbay connecting with `stream: true` to a real peerpy peer sends first: its first
/// record (with the DATA header) fixes the size, records of that size go through both ways (peerpy
/// echoes each), and a forward whose record has another size is skipped, counted in
/// `patchbay_peer_skipped_total` and logged, while the next right-size record still goes through.
#[test]
fn patchbay_streams_to_a_python_peer_and_skips_a_record_of_another_size() {
    let (mut py, addr) = PyPeer::listen(&["--echo", "--expect", "3", "--timeout", "30"]);
    let rx = Receiver::new();
    let channel = format!(
        "  s:\n    kind: peer\n    connect:\n      - {{ address: {addr}, data_type: json, stream: true }}\n"
    );
    let routes = forward("to-s", "/to/s", Some("in"), "s")
        + &forward("back", "/peer/s/json", Some("s"), "out");
    let pb = Patchbay::start(&show(&channel, rx.addr(), "", &routes));
    let offer = py.wait_event("offer", "patchbay offers a stream");
    assert_eq!(offer["stream"], true, "{offer}");
    assert_eq!(offer["data_type"], "json", "{offer}");
    py.wait_event("connection", "the stream is accepted");
    wait_gauge(&pb, CONNECTIONS, "s", 1.0);
    let input = pb.addr("in");

    // `{"data": [300]}` is 15 bytes: the first record fixes the size.
    for n in [300, 301] {
        send_to(&osc::message("/to/s", &[OscArg::Int(n)]), input);
        assert_eq!(
            py.data_values(1, &format!("record {n}"))[0],
            json!([n]),
            "record {n} reaches peerpy"
        );
        rx.expect_bytes(
            &osc::message("/peer/s/json", &[OscArg::Int(n)]),
            &format!("peerpy's echo of record {n}"),
        );
    }
    send_to(
        &osc::message("/to/s", &[s("a record far longer than fifteen bytes")]),
        input,
    );
    send_to(&osc::message("/to/s", &[OscArg::Int(302)]), input);
    assert_eq!(
        py.data_values(1, "the record after the skipped one")[0],
        json!([302]),
        "the first value peerpy gets after the wrong-size record is the next right-size one"
    );
    let before = rx.until_barrier(&osc::message("/peer/s/json", &[OscArg::Int(302)]));
    assert!(before.is_empty(), "echoes before 302: {before:?}");
    wait_counter(&pb, SKIPPED, "s", &[], 1.0);
    wait_log_line(&pb, &["does not fit the stream", "15 bytes", "channel=s"]);
    py.expect_exit(0, "peerpy got three records");
    wait_counter(&pb, DATA_OUT, "s", &[("data_type", "json")], 3.0);
    wait_counter(&pb, DATA_IN, "s", &[("data_type", "json")], 3.0);
}

/// Proves: on a streaming connection a PING header between records (what peerpy sends when a read
/// times out) is skipped, not read as a record; and what patchbay sends on the stream has the
/// stream's record size.
#[test]
fn a_stream_skips_pings_between_records() {
    let rx = Receiver::new();
    let routes = forward("json", "/peer/tools/json", Some("tools"), "out")
        + &forward("to-tools", "/to/tools", Some("in"), "tools");
    let pb = Patchbay::start(&show(&listener("tools", ""), rx.addr(), "", &routes));
    let mut peer = RawPeer::accepted(pb.addr("tools"), "json", true, true);
    let first = json_payload(&json!(10001));
    assert_eq!(first.len(), 15);
    peer.send_data("json", &first);
    peer.send_raw(&ping());
    peer.send_raw(&json_payload(&json!(10002)));
    peer.send_raw(&ping());
    peer.send_raw(&ping());
    peer.send_raw(&json_payload(&json!(10003)));
    for n in [10001, 10002, 10003] {
        rx.expect_bytes(
            &osc::message("/peer/tools/json", &[OscArg::Int(n)]),
            &format!("record {n}"),
        );
    }
    // `{"data": [300]}`: 15 bytes. The first record we get may come with a DATA header (patchbay
    // has sent none yet on this stream) or bare.
    wait_gauge(&pb, CONNECTIONS, "tools", 1.0);
    send_to(
        &osc::message("/to/tools", &[OscArg::Int(300)]),
        pb.addr("in"),
    );
    let mut record = peer.expect_bytes(15, "patchbay's record");
    if record.starts_with(b"DATA|") {
        record.extend(peer.expect_bytes(HEADER_SIZE, "the rest of the header"));
        let h = parse_header(&record[..HEADER_SIZE]).expect("patchbay's DATA header");
        assert_eq!(h.get("data_size"), Some("15"), "{h:?}");
        assert_eq!(h.get("data_type"), Some("json"), "{h:?}");
        record = record[HEADER_SIZE..].to_vec();
    }
    assert_eq!(json_value(&record), json!([300]));
    assert_eq!(
        counter_now(&pb, PROTOCOL_ERRORS, &[("channel", "tools")]),
        0.0
    );
}

// ---------------------------------------------------------------------------------------------------
// 6. Raw pickles

const RAW_RHAI: &str = r#"
fn on_raw(msg) {
    msg.peer.send(#{got: msg.value, big: 5000000000, f: 0.25, nothing: (), yes: true});
}
"#;

/// Proves: a real peerpy peer on `data_type=raw` has its pickle of plain data (ints, float, str,
/// bool, None, bytes, tuple, set, dict) routed as `/peer/tools/raw` (bytes a blob, tuple and set
/// arrays, the dict its JSON text); a script gets the whole value and answers with `peer.send`, which
/// peerpy unpickles (a dict with a 64-bit int, a float, None, True); a forward with a blob reaches
/// peerpy as bytes.
#[test]
fn raw_pickles_of_plain_data_go_both_ways() {
    let dir = ScriptDir::new();
    dir.write("raw.rhai", RAW_RHAI);
    let rx = Receiver::new();
    let routes = forward("raw-out", "/peer/tools/raw", Some("tools"), "out")
        + &script(
            "raw-script",
            "/peer/tools/raw",
            "tools",
            &dir.name("raw.rhai"),
            "on_raw",
        )
        + &forward("to-peers", "/to/peers", Some("in"), "tools");
    let pb = Patchbay::start(&show(
        &listener("tools", ""),
        rx.addr(),
        &scripts_dir(dir.path()),
        &routes,
    ));
    let value = json!([
        1,
        2.5,
        "s",
        true,
        null,
        {"$bytes": "00ff"},
        {"$tuple": [1, 2]},
        {"$set": [3]},
        {"k": [1]}
    ]);
    let mut py = PyPeer::connect(
        pb.addr("tools"),
        &[
            "--data-type",
            "raw",
            "--send",
            &value.to_string(),
            "--expect",
            "2",
            "--timeout",
            "30",
        ],
    );
    py.wait_event("connection", "the raw peer connects");
    rx.expect_bytes(
        &osc::message(
            "/peer/tools/raw",
            &[
                OscArg::Int(1),
                OscArg::Double(2.5),
                s("s"),
                OscArg::True,
                OscArg::Nil,
                OscArg::Blob(vec![0, 255]),
                OscArg::Array(vec![OscArg::Int(1), OscArg::Int(2)]),
                OscArg::Array(vec![OscArg::Int(3)]),
                s(r#"{"k":[1]}"#),
            ],
        ),
        "the pickle as OSC",
    );
    let answer = &py.data_values(1, "the script's answer")[0];
    assert_eq!(
        answer,
        &json!({
            "got": [1, 2.5, "s", true, null, [0, 255], [1, 2], [3], {"k": [1]}],
            "big": 5_000_000_000i64,
            "f": 0.25,
            "nothing": null,
            "yes": true
        }),
        "peerpy unpickles the script's answer"
    );
    wait_gauge(&pb, CONNECTIONS, "tools", 1.0);
    send_to(
        &osc::message(
            "/to/peers",
            &[OscArg::Int(7), OscArg::Blob(vec![1, 2]), s("x")],
        ),
        pb.addr("in"),
    );
    assert_eq!(
        py.data_values(1, "the forward")[0],
        json!([7, {"$bytes": "0102"}, "x"]),
        "a forward reaches the raw peer as a pickled list, the blob as bytes"
    );
    py.expect_exit(0, "the raw peer got both values");
    wait_counter(&pb, DATA_OUT, "tools", &[("data_type", "raw")], 2.0);
}

/// Proves: a pickle that needs a global (`pickle.dumps(os.system)`, made by Python) is refused
/// without running anything: the log names the global, `patchbay_peer_protocol_errors_total`
/// counts it, nothing is routed, and the connection stays open: a plain pickle on it still arrives.
#[test]
fn a_pickle_that_needs_a_global_is_refused_and_the_connection_kept() {
    let evil = python_bytes("__import__('pickle').dumps(__import__('os').system)");
    let plain = python_bytes("__import__('pickle').dumps(['after', 1])");
    let rx = Receiver::new();
    let routes = forward("raw", "/peer/tools/raw", Some("tools"), "out");
    let pb = Patchbay::start(&show(&listener("tools", ""), rx.addr(), "", &routes));
    let mut peer = RawPeer::accepted(pb.addr("tools"), "raw", true, false);
    peer.send_data("raw", &evil);
    let line = wait_log_line(&pb, &["needs the global", "system", "channel=tools"]);
    eprintln!("refused: {line}");
    wait_counter(&pb, PROTOCOL_ERRORS, "tools", &[], 1.0);
    peer.send_data("raw", &plain);
    let before = rx.until_barrier(&osc::message(
        "/peer/tools/raw",
        &[s("after"), OscArg::Int(1)],
    ));
    assert!(
        before.is_empty(),
        "routed from the refused pickle: {before:?}"
    );
    wait_gauge(&pb, CONNECTIONS, "tools", 1.0);
}

// ---------------------------------------------------------------------------------------------------
// 7. Hostile input

/// Short timeouts and a small `max_data` for the hostile cases.
const HOSTILE_KEYS: &str =
    "    handshake_timeout_ms: 400\n    frame_timeout_ms: 400\n    max_data: 4096\n";

/// A `tools` channel with a good bytes connection that stays open through a hostile one.
struct Hostile {
    pb: Patchbay,
    rx: Receiver,
    tools: SocketAddr,
    good: RawPeer,
    sent: i32,
}

impl Hostile {
    fn start() -> Hostile {
        let rx = Receiver::new();
        let routes = forward("good", "/good/*", Some("tools"), "out")
            + &forward("json", "/peer/tools/json", Some("tools"), "out");
        let pb = Patchbay::start(&show(
            &listener("tools", HOSTILE_KEYS),
            rx.addr(),
            "",
            &routes,
        ));
        let tools = pb.addr("tools");
        let good = RawPeer::accepted(tools, "bytes", true, false);
        let mut h = Hostile {
            pb,
            rx,
            tools,
            good,
            sent: 0,
        };
        h.good_on_open("the good connection, before anything hostile");
        wait_gauge(&h.pb, CONNECTIONS, "tools", 1.0);
        h
    }

    fn next_good(&mut self) -> Vec<u8> {
        self.sent += 1;
        osc::message(&format!("/good/{}", self.sent), &[OscArg::Int(self.sent)])
    }

    /// A message on the connection that stays open; it must be routed.
    fn good_on_open(&mut self, what: &str) {
        let m = self.next_good();
        self.good.send_osc(&m);
        self.rx.expect_bytes(&m, what);
    }

    /// A message on a new connection; it must be routed.
    fn good_on_new(&mut self, what: &str) {
        let m = self.next_good();
        let mut fresh = RawPeer::accepted(self.tools, "bytes", true, false);
        fresh.send_osc(&m);
        self.rx.expect_bytes(&m, what);
    }

    /// A new connection that has sent nothing yet.
    fn bad(&self) -> RawPeer {
        RawPeer::connect(self.tools)
    }

    /// A new connection whose json offer was accepted.
    fn bad_accepted(&self) -> RawPeer {
        RawPeer::accepted(self.tools, "json", true, false)
    }

    /// The bad connection is closed by the channel (after nothing, or a DENY when `deny_ok`); a log
    /// line holds `needles`, the channel and the bad peer's address; the open good connection and a
    /// new one are still served. (The counter is checked once per test, by [`Hostile::errors`], so a
    /// miscount does not hide the other checks of the later cases.)
    fn closed_only(&mut self, bad: &mut RawPeer, needles: &[&str], deny_ok: bool) {
        let peer = format!("peer={}", bad.local_addr());
        let (how, bytes) = bad.expect_closed("the hostile connection");
        assert!(
            bytes.is_empty() || (deny_ok && bytes == deny()),
            "the hostile connection got {} ({how:?}):\n{}",
            if deny_ok {
                "something other than a DENY"
            } else {
                "bytes"
            },
            osc::hexdump(&bytes)
        );
        let mut all = vec!["channel=tools", peer.as_str()];
        all.extend_from_slice(needles);
        let line = wait_log_line(&self.pb, &all);
        eprintln!("closed ({how:?}): {line}");
        wait_gauge(&self.pb, CONNECTIONS, "tools", 1.0);
        self.good_on_open("the open good connection, after the hostile one was closed");
        self.good_on_new("a new connection, after the hostile one was closed");
    }

    /// `patchbay_peer_protocol_errors_total{channel="tools"}` is exactly `n`.
    fn errors(&self, n: f64) {
        wait_counter(&self.pb, PROTOCOL_ERRORS, "tools", &[], n);
    }
}

/// Proves: an offer whose 128 bytes are not UTF-8 closes that connection (at most a DENY is sent),
/// logged and counted; other connections are untouched.
#[test]
fn hostile_a_hello_that_is_not_utf8() {
    let mut h = Hostile::start();
    let mut bad = h.bad();
    let mut text = b"HELLO|peer_name=127.0.0.1:1&data_type=json&strict=True&x=".to_vec();
    text.extend_from_slice(&[0xff, 0xfe, 0xc0]);
    bad.send_raw(&padded(&text));
    h.closed_only(&mut bad, &["not a valid HELLO", "not UTF-8"], true);
    h.errors(1.0);
}

/// Proves: fewer than 128 bytes of an offer and then silence is closed after
/// `handshake_timeout_ms`, logged and counted; other connections are untouched.
#[test]
fn hostile_a_hello_shorter_than_128_bytes_then_silence() {
    let mut h = Hostile::start();
    let mut bad = h.bad();
    bad.send_raw(b"HELLO|peer_name=127.0.0.1:1&data_type=json");
    h.closed_only(
        &mut bad,
        &["no complete 128-byte HELLO", "handshake_timeout_ms"],
        true,
    );
    h.errors(1.0);
}

/// Proves: an offer missing `data_type`, and then one missing `peer_name`, are each closed, logged
/// naming the field, and counted; other connections are untouched.
#[test]
fn hostile_a_hello_missing_fields() {
    let mut h = Hostile::start();
    let mut bad = h.bad();
    bad.send_raw(&header(
        "HELLO",
        &[("peer_name", "127.0.0.1:1"), ("strict", "True")],
    ));
    h.closed_only(&mut bad, &["missing field `data_type`"], true);
    let mut bad = h.bad();
    bad.send_raw(&header(
        "HELLO",
        &[("data_type", "json"), ("strict", "True")],
    ));
    h.closed_only(&mut bad, &["missing field `peer_name`"], true);
    h.errors(2.0);
}

/// Proves: an offer with an unknown data type is closed, logged naming it, and counted.
#[test]
fn hostile_a_hello_with_an_unknown_data_type() {
    let mut h = Hostile::start();
    let mut bad = h.bad();
    bad.send_raw(&hello("127.0.0.1:1", "xml", true, false));
    h.closed_only(&mut bad, &["unknown data_type `xml`"], true);
    h.errors(1.0);
}

/// Proves: a DATA header where the HELLO belongs is closed, logged and counted.
#[test]
fn hostile_data_where_the_hello_belongs() {
    let mut h = Hostile::start();
    let mut bad = h.bad();
    let mut out = data_header(2, "json");
    out.extend_from_slice(b"{}");
    bad.send_raw(&out);
    h.closed_only(&mut bad, &["where a HELLO offer belongs"], true);
    h.errors(1.0);
}

/// Proves: after the handshake, a header that is not UTF-8 closes that connection, logged and
/// counted in `patchbay_peer_protocol_errors_total`.
#[test]
fn hostile_a_data_header_that_is_not_utf8() {
    let mut h = Hostile::start();
    let mut bad = h.bad_accepted();
    let mut text = b"DATA|data_size=2&data_type=json&x=".to_vec();
    text.extend_from_slice(&[0xff, 0xfe]);
    bad.send_raw(&padded(&text));
    let _ = bad.try_send_raw(b"{}");
    h.closed_only(&mut bad, &["Closed the connection", "not UTF-8"], false);
    h.errors(1.0);
}

/// Proves: after the handshake, fewer than 128 bytes of a header and then silence are closed after
/// `frame_timeout_ms`, logged and counted in `patchbay_peer_protocol_errors_total`.
#[test]
fn hostile_a_data_header_shorter_than_128_bytes_then_silence() {
    let mut h = Hostile::start();
    let mut bad = h.bad_accepted();
    bad.send_raw(b"DATA|data_size=2&data_type=json");
    h.closed_only(&mut bad, &["frame_timeout_ms"], false);
    h.errors(1.0);
}

/// Proves: a DATA header without `data_size` closes that connection, logged naming the field and
/// counted.
#[test]
fn hostile_a_data_header_missing_data_size() {
    let mut h = Hostile::start();
    let mut bad = h.bad_accepted();
    bad.send_raw(&header("DATA", &[("data_type", "json")]));
    h.closed_only(&mut bad, &["missing field `data_size`"], false);
    h.errors(1.0);
}

/// Proves: a DATA header with an unknown data type closes that connection, logged and counted.
#[test]
fn hostile_a_data_header_with_an_unknown_data_type() {
    let mut h = Hostile::start();
    let mut bad = h.bad_accepted();
    bad.send_raw(&header(
        "DATA",
        &[("data_size", "2"), ("data_type", "yaml")],
    ));
    let _ = bad.try_send_raw(b"{}");
    h.closed_only(&mut bad, &["unknown data_type `yaml`"], false);
    h.errors(1.0);
}

/// Proves: a negative `data_size` closes that connection, logged and counted.
#[test]
fn hostile_a_negative_data_size() {
    let mut h = Hostile::start();
    let mut bad = h.bad_accepted();
    bad.send_raw(&header(
        "DATA",
        &[("data_size", "-5"), ("data_type", "json")],
    ));
    h.closed_only(&mut bad, &["data_size `-5` is negative"], false);
    h.errors(1.0);
}

/// Proves: a `data_size` over `max_data` (4097 with 4096), and one far beyond any integer, close
/// their connections before anything is buffered, logged and counted.
#[test]
fn hostile_a_data_size_over_max_data() {
    let mut h = Hostile::start();
    let mut bad = h.bad_accepted();
    bad.send_raw(&data_header(4097, "json"));
    h.closed_only(&mut bad, &["over the limit of 4096"], false);
    let mut bad = h.bad_accepted();
    bad.send_raw(&header(
        "DATA",
        &[
            ("data_size", "99999999999999999999999999999999"),
            ("data_type", "json"),
        ],
    ));
    h.closed_only(&mut bad, &["over the limit of 4096"], false);
    h.errors(2.0);
}

/// Proves: payloads that do not decode (json that does not parse, json that is not an object, an
/// object without `data`) are dropped, logged and counted in `patchbay_peer_protocol_errors_total`,
/// and the connection stays open (a good value on it still arrives); a bytes payload that is not
/// OSC is dropped and counted as a decode error. Nothing of them is routed.
#[test]
fn hostile_payloads_that_do_not_decode_are_dropped_and_the_connection_kept() {
    let mut h = Hostile::start();
    let mut bad = h.bad_accepted();
    bad.send_data("json", b"{\"data\": [1,");
    wait_log_line(
        &h.pb,
        &[
            "json payload does not parse",
            "does not decode",
            "channel=tools",
        ],
    );
    bad.send_data("json", b"[1, 2]");
    bad.send_data("json", b"{\"value\": 1}");
    wait_counter(&h.pb, PROTOCOL_ERRORS, "tools", &[], 3.0);
    bad.send_json(&json!("after"));
    let before =
        h.rx.until_barrier(&osc::message("/peer/tools/json", &[s("after")]));
    assert!(before.is_empty(), "routed from bad payloads: {before:?}");

    let mut lenient = RawPeer::accepted(h.tools, "bytes", false, false);
    lenient.send_data("bytes", b"not OSC at all");
    wait_counter(&h.pb, DECODE_ERRORS, "tools", &[], 4.0);
    lenient.send_json(&json!("lenient"));
    h.rx.expect_bytes(
        &osc::message("/peer/tools/json", &[s("lenient")]),
        "the lenient connection after its garbage bytes",
    );
    wait_gauge(&h.pb, CONNECTIONS, "tools", 3.0);
    h.good_on_open("the open good connection");
    h.good_on_new("a new connection");
}

/// Proves: after the handshake, a HELLO, an ACCEPT, a PONG and an unknown header type each close
/// their connection, logged and counted; other connections are untouched.
#[test]
fn hostile_an_unexpected_header_after_the_handshake() {
    let mut h = Hostile::start();
    let mut bad = h.bad_accepted();
    bad.send_raw(&hello("127.0.0.1:1", "json", true, false));
    h.closed_only(&mut bad, &["after the handshake"], false);
    let mut bad = h.bad_accepted();
    bad.send_raw(&accept());
    h.closed_only(&mut bad, &["after the handshake"], false);
    let mut bad = h.bad_accepted();
    bad.send_raw(&header("PONG", &[("ponger", "127.0.0.1:1")]));
    h.closed_only(&mut bad, &["PONG header does not belong"], false);
    let mut bad = h.bad_accepted();
    bad.send_raw(&header("FOO", &[("data_size", "2")]));
    h.closed_only(&mut bad, &["unknown header type `FOO`"], false);
    h.errors(4.0);
}

// ---------------------------------------------------------------------------------------------------
// 8. Discovery

/// Runs `patchbay peers 127.255.255.255 --port PORT` and returns its stdout lines.
fn patchbay_peers(port: u16) -> Vec<String> {
    let done = run_bounded(
        patchbay_cmd().args(["peers", "127.255.255.255", "--port", &port.to_string()]),
        EXIT_TIMEOUT,
    );
    assert_eq!(done.code, Some(0), "patchbay peers:\n{}", done.output());
    let mut lines: Vec<String> = done.stdout.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Two peer channels, each answering discovery on its own port (one port per channel, as `check`
/// requires): `visible` on `ports[0]`, and `hidden` on `ports[1]` with `invisible` as given.
fn discovery_show(ports: [u16; 2], hidden_invisible: bool) -> String {
    let channels = format!(
        "{}{}",
        listener("visible", &format!("    discovery: 0.0.0.0:{}\n", ports[0])),
        listener(
            "hidden",
            &format!(
                "    discovery: 0.0.0.0:{}\n    invisible: {hidden_invisible}\n",
                ports[1]
            )
        ),
    );
    show(
        &channels,
        "127.0.0.1:9".parse().unwrap(),
        "",
        &forward("none", "/nothing/here", Some("in"), "out"),
    )
}

/// Proves: a channel with `discovery: 0.0.0.0:PORT` answers a PING broadcast to
/// 127.255.255.255:PORT with `PONG|ponger=<its listening address>` sent to the datagram's real source
/// (from the discovery port); a PING whose `pinger` names another address is still answered at the
/// real source only (the named socket gets nothing); an `invisible` channel answers nothing.
/// Negative checks read after a barrier: a bad datagram the responder counts, sent after the PING to
/// the same socket, so once the counter moved any answer would already be there. `patchbay peers`
/// lists the visible channel and nobody on the invisible one's port; once a reload clears `invisible`
/// the hidden channel answers and `patchbay peers` lists it.
#[test]
fn discovery_answers_at_the_real_source_and_invisible_stays_silent() {
    let ports = {
        let p = support::free_udp_ports(2);
        [p[0], p[1]]
    };
    let pb = Patchbay::start(&discovery_show(ports, true));
    let visible = pb.addr("visible");
    let hidden = pb.addr("hidden");
    let from_visible = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0]));
    let from_hidden = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[1]));

    let asker = broadcast_socket(0);
    let me = SocketAddr::from((Ipv4Addr::LOCALHOST, asker.addr().port()));
    let mut refused = [0.0, 0.0];
    // A datagram the responder on `ports[i]` refuses and counts: once its counter moved, it has
    // dealt with everything sent to it before.
    let mut barrier = |i: usize| {
        refused[i] += 1.0;
        asker.send_to(b"NOT A PING", loopback_broadcast(ports[i]));
        wait_counter(
            &pb,
            PROTOCOL_ERRORS,
            ["visible", "hidden"][i],
            &[],
            refused[i],
        );
    };
    let shown = |got: &[(Vec<u8>, SocketAddr)]| -> Vec<(String, SocketAddr)> {
        got.iter()
            .map(|(b, f)| {
                (
                    String::from_utf8_lossy(b).trim_end_matches('|').to_string(),
                    *f,
                )
            })
            .collect()
    };

    asker.send_to(&discovery_ping(me), loopback_broadcast(ports[0]));
    let (pong, source) = asker.expect("the visible channel's PONG");
    assert_bytes(
        &pong,
        &discovery_pong(visible),
        "the PONG names the listening address",
    );
    assert_eq!(
        source, from_visible,
        "the PONG comes from the discovery port"
    );
    barrier(0);
    let extra = drain(&asker);
    assert!(extra.is_empty(), "a second answer: {:?}", shown(&extra));

    // A PING naming another socket as its pinger: the answer goes to the real source only.
    let decoy = Receiver::new();
    asker.send_to(&discovery_ping(decoy.addr()), loopback_broadcast(ports[0]));
    let (pong, source) = asker.expect("the answer to a PING naming another pinger");
    assert_bytes(
        &pong,
        &discovery_pong(visible),
        "the answer at the real source",
    );
    assert_eq!(source, from_visible);
    barrier(0);
    let aimed = drain(&decoy);
    assert!(
        aimed.is_empty(),
        "the socket named in `pinger` got an answer: {:?}",
        shown(&aimed)
    );
    assert!(drain(&asker).is_empty());
    wait_counter(&pb, PONGS, "visible", &[], 2.0);

    // The invisible channel reads the PING and stays silent.
    asker.send_to(&discovery_ping(me), loopback_broadcast(ports[1]));
    barrier(1);
    let answered = drain(&asker);
    assert!(
        answered.is_empty(),
        "the invisible channel answered: {:?}",
        shown(&answered)
    );
    assert_eq!(
        counter_now(&pb, PONGS, &[("channel", "hidden")]),
        0.0,
        "the invisible channel counted an answer"
    );

    assert_eq!(
        patchbay_peers(ports[0]),
        vec![format!("{visible} from {from_visible}")],
        "patchbay peers lists the visible channel"
    );
    assert_eq!(
        patchbay_peers(ports[1]),
        Vec::<String>::new(),
        "patchbay peers finds nobody on the invisible channel's port"
    );

    // `invisible` is live: the hidden channel answers once a reload clears it.
    live_support::save(
        &pb,
        &discovery_show(ports, false),
        live_support::Save::Rename,
    );
    live_support::wait_applied(&pb, 1);
    let want = discovery_pong(hidden);
    let deadline = Instant::now() + RECV_TIMEOUT;
    'answered: loop {
        assert!(
            Instant::now() < deadline,
            "the hidden channel did not answer within {RECV_TIMEOUT:?} of being made visible"
        );
        asker.send_to(&discovery_ping(me), loopback_broadcast(ports[1]));
        while let Some((pong, source)) = asker.recv_timeout(Duration::from_millis(200)) {
            if pong == want {
                assert_eq!(source, from_hidden);
                break 'answered;
            }
        }
    }
    assert_eq!(
        patchbay_peers(ports[1]),
        vec![format!("{hidden} from {from_hidden}")],
        "patchbay peers lists the channel made visible"
    );
}

// ---------------------------------------------------------------------------------------------------
// 9. The Peer object in scripts

const PEER_RHAI: &str = r#"
fn who(msg) {
    msg.peer.send_osc("/you", [msg.peer.address, msg.peer.port, msg.peer.owner]);
}

fn on_json(msg) {
    let what = msg.value;
    if what == "send_osc" {
        try {
            let sent = msg.peer.send_osc("/nope", [1]);
            send("out", "/json/send_osc", ["returned", sent]);
        } catch (e) {
            send("out", "/json/send_osc", ["error", `${e}`]);
        }
    } else if what == "close" {
        let closed = msg.peer.close();
        send("out", "/closed", [closed, msg.peer.port]);
    } else {
        msg.peer.send(#{address: msg.peer.address, port: msg.peer.port, owner: msg.peer.owner});
    }
}
"#;

/// Proves: on peer connections a script's Peer object names the connection (`peer.address`,
/// `peer.port`, `peer.owner`); `peer.send_osc` answers a bytes connection with the OSC packet; on a
/// json connection it sends nothing (the next thing the peer gets is the following value), is counted
/// in `patchbay_peer_skipped_total` and logged; `peer.send` answers the json connection with a map;
/// `peer.close()` returns true and closes that connection, and the other one is still answered.
#[test]
fn the_peer_object_in_scripts_on_peer_connections() {
    let dir = ScriptDir::new();
    dir.write("peer.rhai", PEER_RHAI);
    let path = dir.name("peer.rhai");
    let rx = Receiver::new();
    let routes = script("who", "/who", "tools", &path, "who")
        + &script("json", "/peer/tools/json", "tools", &path, "on_json");
    let pb = Patchbay::start(&show(
        &listener("tools", ""),
        rx.addr(),
        &scripts_dir(dir.path()),
        &routes,
    ));
    let tools = pb.addr("tools");
    let mut b = RawPeer::accepted(tools, "bytes", true, false);
    let mut j = RawPeer::accepted(tools, "json", true, false);
    let you = |p: &RawPeer| {
        osc::message(
            "/you",
            &[
                s("127.0.0.1"),
                OscArg::Int(i32::from(p.local_addr().port())),
                s("tools"),
            ],
        )
    };
    let map = |p: &RawPeer| json!({"address": "127.0.0.1", "port": p.local_addr().port(), "owner": "tools"});

    b.send_osc(&osc::message("/who", &[]));
    assert_bytes(&b.expect_osc("peer.send_osc on bytes"), &you(&b), "/you");
    j.send_json(&json!("who"));
    assert_eq!(j.expect_json("peer.send on json"), map(&j));

    j.send_json(&json!("send_osc"));
    let (report, _) = rx.expect("what send_osc did on the json connection");
    let report = message_of(&report, "the send_osc report");
    eprintln!("send_osc on a json connection: {report:?}");
    wait_counter(&pb, SKIPPED, "tools", &[], 1.0);
    wait_log_line(
        &pb,
        &[
            "send_osc needs a bytes connection",
            "carries json",
            "channel=tools",
        ],
    );
    // Nothing went to the json peer: the next thing it gets is the answer to the next value.
    j.send_json(&json!("who"));
    assert_eq!(
        j.expect_json("the next answer on json after send_osc"),
        map(&j)
    );

    j.send_json(&json!("close"));
    let port = i32::from(j.local_addr().port());
    let (_, bytes) = j.expect_closed("peer.close() on the json connection");
    assert!(bytes.is_empty(), "got {bytes:02x?} before the close");
    rx.expect_bytes(
        &osc::message("/closed", &[OscArg::True, OscArg::Int(port)]),
        "peer.close() returned true",
    );
    b.send_osc(&osc::message("/who", &[]));
    assert_bytes(
        &b.expect_osc("the bytes connection after the close of the other"),
        &you(&b),
        "/you",
    );
    wait_gauge(&pb, CONNECTIONS, "tools", 1.0);
}

// ---------------------------------------------------------------------------------------------------
// 10. Events

/// Proves: `/patchbay/peer/listen ,ss CHANNEL ADDR` (the listening address) reaches a route that
/// forwards it to a udp channel when the show starts.
#[test]
fn the_listen_event_reaches_a_route_at_start() {
    let rx = Receiver::new();
    let routes = forward("events", "/patchbay/peer/*", Some("tools"), "out");
    let pb = Patchbay::start(&show(&listener("tools", ""), rx.addr(), "", &routes));
    rx.expect_bytes(
        &osc::message(
            "/patchbay/peer/listen",
            &[s("tools"), s(&pb.addr("tools").to_string())],
        ),
        "the listen event",
    );
}

/// Proves: the events arrive as messages a route forwards, with the documented arguments:
/// `/patchbay/peer/offer ,sssT` and `/patchbay/peer/connection
/// ,ssss` (the declared name as given) for an accepted offer, `/patchbay/peer/offer ,sssF` for a
/// denied one (no connection or close event for it), and `/patchbay/peer/close ,sss` with the reason
/// when the peer goes away.
#[test]
fn offer_connection_and_close_events_reach_a_route() {
    let rx = Receiver::new();
    // Not the listen event: whether it gets out depends on when `out` is bound (see
    // `the_listen_event_reaches_a_route_at_start`).
    let routes = forward(
        "events",
        "/patchbay/peer/{offer,connection,close}",
        Some("tools"),
        "out",
    );
    let pb = Patchbay::start(&show(
        &listener("tools", "    max_connections: 1\n"),
        rx.addr(),
        "",
        &routes,
    ));
    let tools = pb.addr("tools");
    let mut a = RawPeer::connect(tools);
    let a_addr = a.local_addr().to_string();
    a.send_raw(&hello("127.0.0.1:4242", "raw", false, false));
    assert_eq!(a.expect_header("the answer").kind, "ACCEPT");
    rx.expect_bytes(
        &osc::message(
            "/patchbay/peer/offer",
            &[s("tools"), s(&a_addr), s("raw"), OscArg::True],
        ),
        "the accepted offer event",
    );
    rx.expect_bytes(
        &osc::message(
            "/patchbay/peer/connection",
            &[s("tools"), s(&a_addr), s("raw"), s("127.0.0.1:4242")],
        ),
        "the connection event",
    );

    let (mut b, answer) = RawPeer::offer(tools, "json", true, false);
    let b_addr = b.local_addr().to_string();
    assert_eq!(answer.kind, "DENY", "{answer:?}");
    b.expect_closed("the denied connection");
    rx.expect_bytes(
        &osc::message(
            "/patchbay/peer/offer",
            &[s("tools"), s(&b_addr), s("json"), OscArg::False],
        ),
        "the denied offer event",
    );

    a.shutdown_write();
    let close = osc::message(
        "/patchbay/peer/close",
        &[s("tools"), s(&a_addr), s("closed by the other end")],
    );
    let before = rx.until_barrier(&close);
    assert!(
        before.is_empty(),
        "events before the close (for the denied offer?): {:?}",
        before
            .iter()
            .map(|b| message_of(b, "an event"))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------------
// 11. The offer decider

const DECIDER_RHAI: &str = r#"
fn on_offer(offer) {
    let name = offer.peer_name;
    if name == "127.0.0.1:1" { throw "port 1 is not welcome"; }
    if name == "127.0.0.1:2" { return 42; }
    if name == "127.0.0.1:3" { loop { } }
    offer.channel == "tools" && offer.address == "127.0.0.1"
        && name == `${offer.address}:${offer.port}`
        && offer.data_type == "json" && offer.strict == true && offer.stream == false
}
"#;

/// Proves: `accept: { script, fn }` decides offers the allow list lets through: the function gets
/// `#{channel, address, port, peer_name, data_type, strict, stream}` (an offer matching every field
/// is accepted, one differing in any of data_type, strict, stream or peer_name is denied); an error,
/// a value that is not a bool and a call over its limits deny, each with a log line; peerpy, which
/// declares its listening address and not its source, is denied (exit 3); every denial is counted.
#[test]
fn an_offer_decider_script_accepts_and_denies() {
    let dir = ScriptDir::new();
    dir.write("decider.rhai", DECIDER_RHAI);
    let rx = Receiver::new();
    let keys = format!(
        "    accept: {{ script: {}, fn: on_offer }}\n",
        yq(&dir.name("decider.rhai"))
    );
    let routes = forward("json", "/peer/tools/json", Some("tools"), "out");
    let pb = Patchbay::start(&show(
        &listener("tools", &keys),
        rx.addr(),
        &scripts_dir(dir.path()),
        &routes,
    ));
    let tools = pb.addr("tools");

    let offer = |name: Option<&str>, data_type: &str, strict: bool, stream: bool| {
        let mut p = RawPeer::connect(tools);
        let own = p.local_addr().to_string();
        p.send_raw(&hello(name.unwrap_or(&own), data_type, strict, stream));
        let answer = p.expect_header("the answer to the offer");
        (p, answer.kind)
    };

    let (mut good, kind) = offer(None, "json", true, false);
    assert_eq!(kind, "ACCEPT", "the offer matching every field");
    good.send_json(&json!("decided"));
    rx.expect_bytes(
        &osc::message("/peer/tools/json", &[s("decided")]),
        "the accepted connection carries data",
    );

    let mut denied = 0.0;
    // (declared name, or our own address; data_type; strict; stream; in the log; what).
    type Case = (
        Option<&'static str>,
        &'static str,
        bool,
        bool,
        &'static str,
        &'static str,
    );
    let cases: [Case; 7] = [
        (None, "bytes", true, false, "said no", "data_type bytes"),
        (None, "json", false, false, "said no", "strict False"),
        (None, "json", true, true, "said no", "stream True"),
        (
            Some("127.0.0.1:9"),
            "json",
            true,
            false,
            "said no",
            "another peer_name",
        ),
        (
            Some("127.0.0.1:1"),
            "json",
            true,
            false,
            "failed",
            "a throw",
        ),
        (
            Some("127.0.0.1:2"),
            "json",
            true,
            false,
            "not true or false",
            "42",
        ),
        (
            Some("127.0.0.1:3"),
            "json",
            true,
            false,
            "failed",
            "an endless loop",
        ),
    ];
    for (name, data_type, strict, stream, needle, what) in cases {
        let (mut p, kind) = offer(name, data_type, strict, stream);
        assert_eq!(kind, "DENY", "{what}");
        let peer = format!("peer={}", p.local_addr());
        p.expect_closed(what);
        let line = wait_log_line(
            &pb,
            &["Denied an offer", "channel=tools", peer.as_str(), needle],
        );
        eprintln!("{what}: {line}");
        denied += 1.0;
        wait_counter(&pb, OFFERS, "tools", &[("result", "denied")], denied);
    }
    wait_log_line(&pb, &["port 1 is not welcome"]);

    let mut py = PyPeer::connect(tools, &["--timeout", "20"]);
    py.expect_exit(3, "peerpy declares its listening address, not its source");
    wait_counter(&pb, OFFERS, "tools", &[("result", "denied")], denied + 1.0);
    wait_counter(&pb, OFFERS, "tools", &[("result", "accepted")], 1.0);

    good.send_json(&json!("still"));
    rx.expect_bytes(
        &osc::message("/peer/tools/json", &[s("still")]),
        "the accepted connection, after every denial",
    );
}
