//! `kind: tcp` channels end to end (issue 7): the real binary, real TCP connections on 127.0.0.1,
//! third-party peers (python-osc's TCP client in both modes, liblo's `oscsend`), and test-side servers
//! and text devices written against the framings' specs (`patchbay_tests::tcp`). What is tested is the
//! README's `kind: tcp` section: framings (slip, length, auto, lines, raw), replies on the connection
//! a message came from, client reconnects with a bounded queue and `max_age_ms`, per-connection
//! failures that close only that connection, limits, connection events, live reloads, and the stream
//! metrics by value.
//!
//! Counted, never timed: every wait is a bounded poll that fails with what it saw; a negative check
//! ("this was not delivered") sends a barrier along the same path afterwards. The only pauses are part
//! of a scenario (a server that stays away for a second, a talker's pace), never an assertion.

mod live_support;
mod script_support;
mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use patchbay_plugin_api::osc::{decode, OscArg, OscPacket, TimeTag};
use patchbay_tests::tcp::*;
use patchbay_tests::*;
use serde_json::json;
use support::{wait_metrics, wait_value, Metrics};

const CONNECTIONS: &str = "patchbay_channel_connections";
const ACCEPTED: &str = "patchbay_channel_connections_accepted_total";
const REFUSED: &str = "patchbay_channel_connections_refused_total";
const FRAMES_IN: &str = "patchbay_channel_frames_in_total";
const FRAMES_OUT: &str = "patchbay_channel_frames_out_total";
const FRAMING_ERRORS: &str = "patchbay_channel_framing_errors_total";
const RECONNECTS: &str = "patchbay_channel_reconnects_total";
const EXPIRED: &str = "patchbay_channel_expired_total";
const DROPS: &str = "patchbay_channel_drops_total";
const DECODE_ERRORS: &str = "patchbay_channel_decode_errors_total";
const ROUTE_MATCHES: &str = "patchbay_route_matches_total";

const METRICS: &str = "metrics:\n  listen: 127.0.0.1:0\n";

/// The log text every framing or limit close starts with (the contract's example warning).
const CLOSED: &str = "Closed the connection";

// ---------------------------------------------------------------------------------------------------
// Helpers

fn s(text: &str) -> OscArg {
    OscArg::String(text.to_string())
}

fn metrics_addr(pb: &Patchbay) -> SocketAddr {
    pb.ready()
        .metrics
        .expect("the config has a metrics endpoint")
}

/// A channel-labelled metric, 0 when absent.
fn channel_metric(m: &Metrics, name: &str, channel: &str) -> f64 {
    m.channel(name, channel).unwrap_or(0.0)
}

/// Waits until the gauge `name{channel}` is exactly `value` (gauges go both ways).
fn wait_gauge(pb: &Patchbay, name: &str, channel: &str, value: f64) -> Metrics {
    wait_metrics(
        metrics_addr(pb),
        &format!("{name}{{channel={channel}}} == {value}"),
        |m| m.channel(name, channel) == Some(value),
    )
}

/// A route (YAML list item): `pattern` from `from` (if given) forwarded to `to`.
fn forward(name: &str, pattern: &str, from: Option<&str>, to: &str) -> String {
    let from = from
        .map(|f| format!("    from: [{f}]\n"))
        .unwrap_or_default();
    format!(
        "  - name: {name}\n    match: {}\n{from}    to:\n      - forward: {to}\n",
        yq(pattern)
    )
}

/// A route (YAML list item): `pattern` from `from` answered on the connection it came from as
/// `rewrite`.
fn reply(name: &str, pattern: &str, from: &str, rewrite: &str) -> String {
    format!(
        "  - name: {name}\n    match: {}\n    from: [{from}]\n    to:\n      - reply: true\n        rewrite: {rewrite}\n",
        yq(pattern)
    )
}

/// `version`, a metrics endpoint, `channels` (YAML map entries indented by two spaces), a udp channel
/// `out` sending to `out`, and `routes`.
fn show(channels: &str, out: SocketAddr, routes: &str) -> String {
    format!(
        "version: 1\n{METRICS}channels:\n{channels}  out:\n    kind: udp\n    send: {out}\nroutes:\n{routes}"
    )
}

/// A tcp server channel `name` on 127.0.0.1:0 with extra keys (YAML, each line indented by four).
fn server(name: &str, keys: &str) -> String {
    format!("  {name}:\n    kind: tcp\n    listen: 127.0.0.1:0\n{keys}")
}

/// A udp channel `in` listening on 127.0.0.1:0 (a way into the show that is not TCP).
const UDP_IN: &str = "  in:\n    kind: udp\n    listen: 127.0.0.1:0\n";

/// Every stderr line holding all `needles`; waits (bounded) until there is at least one.
fn wait_log_line(pb: &Patchbay, needles: &[&str]) -> String {
    let text = pb.wait_stderr(RECV_TIMEOUT, |t| {
        t.lines().any(|l| needles.iter().all(|n| l.contains(n)))
    });
    text.lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap()
        .to_string()
}

/// The message in `bytes` (panics naming `what` if it is not one).
fn message_of(bytes: &[u8], what: &str) -> patchbay_plugin_api::osc::OscMessage {
    match decode(bytes) {
        Ok(OscPacket::Message(m)) => m,
        other => panic!(
            "{what}: not an OSC message: {other:?}\n{}",
            osc::hexdump(bytes)
        ),
    }
}

/// Binds 127.0.0.1:`port` again (a test-side server coming back), retrying briefly while the port is
/// still held (the listener we just dropped).
fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebind {addr}: {e}; trying again");
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("could not bind {addr} again within {RECV_TIMEOUT:?}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Config and the ready file

/// Proves: tcp config mistakes are refused by `patchbay check` naming the key: `auto` with `connect`,
/// `connect` without `framing`, `terminator` without `lines`, neither `listen` nor `connect`, and an
/// unknown key at its line:column; a config using every documented key passes.
#[test]
fn tcp_config_mistakes_are_refused_naming_the_key() {
    let cases = [
        (
            "auto with connect",
            "version: 1\nchannels:\n  dev:\n    kind: tcp\n    connect: 127.0.0.1:9\n    framing: auto\n",
            "framing",
        ),
        (
            "connect without framing",
            "version: 1\nchannels:\n  dev:\n    kind: tcp\n    connect: 127.0.0.1:9\n",
            "framing",
        ),
        (
            "terminator without lines",
            "version: 1\nchannels:\n  dev:\n    kind: tcp\n    listen: 127.0.0.1:0\n    framing: slip\n    terminator: \"\\r\"\n",
            "terminator",
        ),
        (
            "neither listen nor connect",
            "version: 1\nchannels:\n  dev:\n    kind: tcp\n    framing: slip\n",
            "connect",
        ),
    ];
    for (what, yaml, word) in cases {
        let (code, out) = check(yaml);
        assert_ne!(code, 0, "{what}: `patchbay check` accepted it:\n{out}");
        assert!(
            out.contains("cfg.yaml:"),
            "{what}: no file position:\n{out}"
        );
        assert!(
            out.contains(word),
            "{what}: the error does not name {word:?}:\n{out}"
        );
    }

    let yaml = "version: 1\nchannels:\n  dev:\n    kind: tcp\n    listen: 127.0.0.1:0\n    frame_timout_ms: 50\n";
    let (line, column) = position(yaml, "frame_timout_ms", 0);
    let (code, out) = check(yaml);
    assert_ne!(code, 0, "an unknown key was accepted:\n{out}");
    assert!(
        out.contains(&format!("cfg.yaml:{line}:{column}:")),
        "the unknown key is not reported at cfg.yaml:{line}:{column}:\n{out}"
    );
    assert!(out.contains("frame_timout_ms"), "{out}");

    let good = "version: 1\nchannels:\n  console:\n    kind: tcp\n    listen: 127.0.0.1:0\n    framing: auto\n    max_frame: 4096\n    max_connections: 8\n    idle_timeout_ms: 0\n    frame_timeout_ms: 1000\n    allow: [127.0.0.1/32]\n    queue: 16\n    max_age_ms: 500\n    events: true\n  dev:\n    kind: tcp\n    connect: 127.0.0.1:9\n    framing: lines\n    terminator: \"\\r\"\n    raw_address: /dev/text\n    reconnect_ms: 100\n    reconnect_max_ms: 1000\n";
    let (code, out) = check(good);
    assert_eq!(
        code, 0,
        "a config using every documented key was refused:\n{out}"
    );
}

/// Proves: a server channel's ready-file entry says kind `tcp`, the real listening address (port 0
/// resolved) and up; and it accepts a connection there.
#[test]
fn the_ready_file_names_the_real_listening_address() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&show(
        &server("console", ""),
        rx.addr(),
        &forward("up", "/up", Some("console"), "out"),
    ));
    let info = pb.channel("console");
    assert_eq!(info.kind, "tcp");
    assert!(info.up, "{info:?}");
    let listen = info.listen.expect("a listen address");
    assert_eq!(listen.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(listen.port(), 0, "port 0 resolved");
    let mut c = TcpClient::connect(listen, Framing::Length);
    let up = osc::message("/up", &[]);
    c.send(&up);
    rx.expect_bytes(&up, "/up over TCP");
}

// ---------------------------------------------------------------------------------------------------
// 1. python-osc's TCP client, both modes, into an `auto` server

/// Proves: python-osc's `SimpleTCPClient` in mode "1.0" (length prefix) and "1.1" (SLIP, with a
/// leading END) is understood by a server with the default framing (`auto`): messages (one needing
/// SLIP escapes, one of 20 kB) and a bundle are forwarded byte for byte to a UDP receiver, and a
/// `reply: true` answer comes back on python-osc's connection in its framing (python-osc decodes it).
#[test]
fn python_osc_tcp_client_in_both_modes_into_an_auto_server() {
    let rx = Receiver::new();
    let routes = reply("ask", "/py/ask", "console", "/py/answer")
        + "    stop: true\n"
        + &forward("py", "/py/*", Some("console"), "out");
    // No `framing:` key: a server-only channel defaults to auto.
    let pb = Patchbay::start(&show(&server("console", ""), rx.addr(), &routes));
    let console = pb.addr("console");
    let big = "x".repeat(20_000);
    let escapes = "c0dbdcdd00c0c0db";

    for (n, mode) in ["1.0", "1.1"].into_iter().enumerate() {
        let spec = json!([
            {"simple": format!("/py/m{n}"), "values": [1, 2.5, "hi"]},
            {"simple": "/py/esc", "values": [{"blob": escapes}]},
            {"simple": "/py/big", "values": [big]},
            {"bundle": [
                {"message": "/py/b1", "args": [["i", 1]]},
                {"message": "/py/b2", "args": [["s", "two"]]},
            ]},
            {"simple": "/py/ask", "values": [7 + n as i32]},
        ]);
        let replies = python_tcp_send(console, mode, &spec, 1);
        assert_eq!(
            replies,
            vec![json!({"address": "/py/answer", "args": [7 + n as i32]})],
            "mode {mode}: the reply python-osc read on its connection"
        );
        let what = |m: &str| format!("mode {mode}: {m}");
        rx.expect_bytes(
            &osc::message(
                &format!("/py/m{n}"),
                &[OscArg::Int(1), OscArg::Float(2.5), s("hi")],
            ),
            &what("/py/m ,ifs"),
        );
        rx.expect_bytes(
            &osc::message("/py/esc", &[OscArg::Blob(osc::unhex(escapes))]),
            &what("a blob full of SLIP's special bytes"),
        );
        rx.expect_bytes(&osc::message("/py/big", &[s(&big)]), &what("20 kB string"));
        rx.expect_bytes(
            &osc::bundle(
                TimeTag::IMMEDIATELY,
                &[
                    osc::message("/py/b1", &[OscArg::Int(1)]),
                    osc::message("/py/b2", &[s("two")]),
                ],
            ),
            &what("the bundle, as a bundle"),
        );
    }
    let m = wait_value(
        metrics_addr(&pb),
        FRAMES_IN,
        &[("channel", "console")],
        10.0,
    );
    assert_eq!(m.channel(ACCEPTED, "console"), Some(2.0), "{}", m.text);
    assert_eq!(
        channel_metric(&m, FRAMING_ERRORS, "console"),
        0.0,
        "{}",
        m.text
    );
}

// ---------------------------------------------------------------------------------------------------
// 2. liblo's oscsend over TCP

/// Proves: liblo's `oscsend osc.tcp://...` (Debian's liblo-tools; it writes the OSC 1.0 length
/// prefix) reaches an `auto` server and a `length` server, and the message is forwarded byte for byte.
/// Fails, naming `.ci/run`, when `oscsend` is not installed.
#[test]
fn liblo_oscsend_over_tcp_into_auto_and_length_servers() {
    let rx = Receiver::new();
    let channels = server("auto", "    framing: auto\n") + &server("len", "    framing: length\n");
    let routes = forward("from-auto", "/tcp/*", Some("auto"), "out")
        + &forward("from-len", "/tcp/*", Some("len"), "out");
    let pb = Patchbay::start(&show(&channels, rx.addr(), &routes));
    for channel in ["auto", "len"] {
        let url = format!("osc.tcp://127.0.0.1:{}", pb.addr(channel).port());
        let address = format!("/tcp/{channel}");
        oscsend(&url, &address, "ifs", &["1", "2.5", "hi"]);
        rx.expect_bytes(
            &osc::message(&address, &[OscArg::Int(1), OscArg::Float(2.5), s("hi")]),
            &format!("oscsend into the {channel} server"),
        );
    }
    let addr = metrics_addr(&pb);
    for channel in ["auto", "len"] {
        let m = wait_value(addr, FRAMES_IN, &[("channel", channel)], 1.0);
        assert_eq!(
            channel_metric(&m, FRAMING_ERRORS, channel),
            0.0,
            "{}",
            m.text
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// 3. A client channel reconnecting: the bounded queue and max_age_ms

/// `in` (udp) and a client channel `dev` connecting to `server` with `framing: length` and `keys`;
/// `/q/*` from `in` goes to `dev`.
fn client_show(server: SocketAddr, keys: &str, out: SocketAddr) -> String {
    let channels = format!(
        "{UDP_IN}  dev:\n    kind: tcp\n    connect: {server}\n    framing: length\n    reconnect_ms: 50\n    reconnect_max_ms: 200\n{keys}"
    );
    show(
        &channels,
        out,
        &forward("to-dev", "/q/*", Some("in"), "dev"),
    )
}

/// Waits until the client channel `dev` knows its server went away: no open connection, and at
/// least one reconnect attempt made (so the next messages are queued, not written into a dead
/// socket).
fn wait_disconnected(pb: &Patchbay) {
    wait_metrics(metrics_addr(pb), "dev is disconnected and retrying", |m| {
        m.channel(CONNECTIONS, "dev") == Some(0.0) && channel_metric(m, RECONNECTS, "dev") >= 1.0
    });
    pb.wait_channel("dev", RECV_TIMEOUT, "dev is down", |c| !c.up);
}

fn q(name: &str) -> Vec<u8> {
    osc::message(&format!("/q/{name}"), &[])
}

/// Proves: a client channel (`connect:`) delivers through a test server; when the server goes away
/// the channel retries, queues what is sent meanwhile up to `queue` (the rest dropped and counted),
/// and after the server comes back on the same port delivers the queued messages, in order, and
/// nothing else. The ready file names the server (`send`) and the connection's local address.
#[test]
fn a_client_channel_queues_while_its_server_is_away_and_delivers_after_it_returns() {
    let out = Receiver::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
    let server_addr = listener.local_addr().unwrap();
    let pb = Patchbay::start(&client_show(
        server_addr,
        "    queue: 4\n    max_age_ms: 60000\n",
        out.addr(),
    ));
    let input = pb.addr("in");
    let mut conn = expect_accept(&listener, Framing::Length, "dev connects");
    let info = pb.wait_channel("dev", RECV_TIMEOUT, "dev connected", |c| {
        c.up && c.local == Some(conn.peer_addr())
    });
    assert_eq!(info.kind, "tcp");
    assert_eq!(info.send, Some(server_addr), "send names the server");
    send_to(&q("1"), input);
    conn.expect_bytes(&q("1"), "/q/1 while connected");

    // The server goes away: the connection and the listener both close.
    drop(conn);
    drop(listener);
    wait_disconnected(&pb);
    for n in 2..=7 {
        send_to(&q(&n.to_string()), input);
    }
    // queue: 4 -> /q/2../q/5 wait, /q/6 and /q/7 are dropped (and were the last ones handled).
    wait_value(metrics_addr(&pb), DROPS, &[("channel", "dev")], 2.0);

    let listener = rebind(server_addr);
    let mut conn = expect_accept(&listener, Framing::Length, "dev reconnects");
    // The queued messages first (until they are out the queue is full, and a barrier sent now could
    // be dropped for that), then a barrier: nothing else was waiting.
    for n in 2..=5 {
        conn.expect_bytes(&q(&n.to_string()), &format!("queued /q/{n}, in order"));
    }
    send_to(&q("barrier"), input);
    let before = conn.until_barrier(&q("barrier"));
    assert!(
        before.is_empty(),
        "after the queued messages, before the barrier: {:?} (the two past the bound were dropped)",
        before.iter().map(|f| describe(f)).collect::<Vec<_>>()
    );
    pb.wait_channel("dev", RECV_TIMEOUT, "dev reconnected", |c| {
        c.up && c.local == Some(conn.peer_addr())
    });
    let m = wait_value(metrics_addr(&pb), FRAMES_OUT, &[("channel", "dev")], 6.0);
    assert_eq!(m.channel(DROPS, "dev"), Some(2.0), "{}", m.text);
    assert_eq!(m.channel(CONNECTIONS, "dev"), Some(1.0), "{}", m.text);
    assert_eq!(channel_metric(&m, EXPIRED, "dev"), 0.0, "{}", m.text);
    assert!(channel_metric(&m, RECONNECTS, "dev") >= 1.0, "{}", m.text);
}

/// Proves: a message queued while the server is away and older than `max_age_ms` when the
/// connection is back is dropped and counted (`expired`), not replayed: a stale `/q/go` must not
/// fire late. A message sent after the reconnect is delivered.
#[test]
fn a_queued_message_older_than_max_age_is_dropped_not_replayed() {
    let out = Receiver::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
    let server_addr = listener.local_addr().unwrap();
    let pb = Patchbay::start(&client_show(
        server_addr,
        "    queue: 16\n    max_age_ms: 300\n",
        out.addr(),
    ));
    let input = pb.addr("in");
    let mut conn = expect_accept(&listener, Framing::Length, "dev connects");
    send_to(&q("first"), input);
    conn.expect_bytes(&q("first"), "/q/first while connected");

    drop(conn);
    drop(listener);
    wait_disconnected(&pb);
    send_to(&q("go"), input);
    wait_value(
        metrics_addr(&pb),
        ROUTE_MATCHES,
        &[("route", "to-dev")],
        2.0,
    );
    // The scenario: the server stays away for more than three times max_age_ms.
    thread::sleep(Duration::from_millis(1000));

    let listener = rebind(server_addr);
    let mut conn = expect_accept(&listener, Framing::Length, "dev reconnects");
    send_to(&q("fresh"), input);
    let before = conn.until_barrier(&q("fresh"));
    assert!(
        before.is_empty(),
        "a stale queued message was replayed: {:?}",
        before.iter().map(|f| describe(f)).collect::<Vec<_>>()
    );
    let m = wait_value(metrics_addr(&pb), EXPIRED, &[("channel", "dev")], 1.0);
    assert_eq!(channel_metric(&m, DROPS, "dev"), 0.0, "{}", m.text);
}

// ---------------------------------------------------------------------------------------------------
// 4. Replies on the right connection

const WHO_RHAI: &str = r#"
fn on_message(msg) {
    msg.peer.send_osc("/you", [msg.peer.address, msg.peer.port, msg.args[0]]);
}

fn bye(msg) {
    let closed = msg.peer.close();
    send("out", "/closed", [closed, msg.peer.port]);
}
"#;

/// A `console` server (auto) with `/ask` answered by `reply: true` as `/answer`, `/who` answered by a
/// script's `peer.send_osc`, `/bye` closing the connection from the script.
fn reply_show(dir: &script_support::ScriptDir, out: SocketAddr) -> String {
    dir.write("who.rhai", WHO_RHAI);
    let script = yq(&dir.name("who.rhai"));
    let routes = reply("ask", "/ask", "console", "/answer")
        + &format!("  - name: who\n    match: /who\n    from: [console]\n    to:\n      - script: {script}\n")
        + &format!("  - name: bye\n    match: /bye\n    from: [console]\n    to:\n      - script: {script}\n        fn: bye\n");
    let yaml = show(&server("console", "    framing: auto\n"), out, &routes);
    format!(
        "{yaml}scripts:\n  dir: {}\n",
        yq(&dir.path().display().to_string())
    )
}

fn ask(n: i32) -> Vec<u8> {
    osc::message("/ask", &[OscArg::Int(n)])
}

fn answer(n: i32) -> Vec<u8> {
    osc::message("/answer", &[OscArg::Int(n)])
}

fn who(tag: &str) -> Vec<u8> {
    osc::message("/who", &[s(tag)])
}

fn you(c: &TcpClient, tag: &str) -> Vec<u8> {
    osc::message(
        "/you",
        &[
            s("127.0.0.1"),
            OscArg::Int(i32::from(c.local_addr().port())),
            s(tag),
        ],
    )
}

/// Proves: with two connections on one `auto` server, one speaking SLIP and one length-prefixed,
/// each gets exactly its own `reply: true` answers and its own script `peer.send_osc` answers (with
/// `peer.address`/`peer.port` naming that connection), each in its own framing, nothing of the other's.
#[test]
fn replies_go_back_on_the_connection_they_came_from_in_its_framing() {
    let dir = script_support::ScriptDir::new();
    let out = Receiver::new();
    let pb = Patchbay::start(&reply_show(&dir, out.addr()));
    let console = pb.addr("console");
    let mut a = TcpClient::connect(console, Framing::Slip);
    let mut b = TcpClient::connect(console, Framing::Length);

    a.send(&ask(1));
    b.send(&ask(2));
    a.send(&who("a"));
    b.send(&who("b"));
    a.send(&ask(3));
    b.send(&ask(4));
    // Barriers down both paths (the reply route and the script) on each connection.
    for c in [&mut a, &mut b] {
        c.send(&ask(99));
        c.send(&who("end"));
    }
    for (c, mine) in [(&mut a, [1, 3]), (&mut b, [2, 4])] {
        let tag = if mine[0] == 1 { "a" } else { "b" };
        let mut want = vec![
            answer(mine[0]),
            answer(mine[1]),
            answer(99),
            you(c, tag),
            you(c, "end"),
        ];
        let (end_reply, end_script) = (answer(99), you(c, "end"));
        let mut got = Vec::new();
        let (mut seen_reply, mut seen_script) = (false, false);
        while !(seen_reply && seen_script) {
            let f = c.expect(&format!("the answers on connection {tag}"));
            seen_reply |= f == end_reply;
            seen_script |= f == end_script;
            got.push(f);
        }
        // The reply route answers in order, and so does the script; the two paths may interleave.
        let replies: Vec<&Vec<u8>> = got.iter().filter(|f| describe(f) == "/answer").collect();
        assert_eq!(
            replies,
            vec![&answer(mine[0]), &answer(mine[1]), &answer(99)],
            "connection {tag}: its reply answers in order"
        );
        got.sort();
        want.sort();
        assert_eq!(
            got.iter().map(|f| describe(f)).collect::<Vec<_>>(),
            want.iter().map(|f| describe(f)).collect::<Vec<_>>(),
            "connection {tag}: its own answers and nothing else"
        );
        assert_eq!(got, want, "connection {tag}: byte for byte");
    }
}

/// Proves: a script's `peer.close()` closes that connection (the client sees the close) and returns
/// true; the other connection stays open and is still answered.
#[test]
fn peer_close_closes_only_that_connection_and_returns_true() {
    let dir = script_support::ScriptDir::new();
    let out = Receiver::new();
    let pb = Patchbay::start(&reply_show(&dir, out.addr()));
    let console = pb.addr("console");
    let mut a = TcpClient::connect(console, Framing::Slip);
    let mut b = TcpClient::connect(console, Framing::Length);
    b.send(&ask(1));
    b.expect_bytes(&answer(1), "b is answered before");
    a.send(&osc::message("/bye", &[]));
    let (how, frames) = a.expect_closed("peer.close() on a");
    assert!(
        frames.is_empty(),
        "a got {frames:?} before the close ({how})"
    );
    out.expect_bytes(
        &osc::message(
            "/closed",
            &[OscArg::True, OscArg::Int(i32::from(a.local_addr().port()))],
        ),
        "peer.close() returned true",
    );
    b.send(&ask(2));
    b.expect_bytes(&answer(2), "b is answered after a was closed");
    wait_gauge(&pb, CONNECTIONS, "console", 1.0);
}

// ---------------------------------------------------------------------------------------------------
// 5. lines framing with a text device

/// Proves: on a `lines` server with the default terminator, a text device's lines (`\r\n` and `\n`
/// endings, several in one write, one split over two writes) arrive as one string message each at
/// `raw_address` with the terminator (and the `\r`) removed; a message forwarded to the channel goes
/// out as its string argument and `\n`.
#[test]
fn lines_from_a_text_device_arrive_as_strings_and_forwards_go_out_as_text() {
    let rx = Receiver::new();
    let channels = UDP_IN.to_string()
        + &server(
            "panel",
            "    framing: lines\n    raw_address: /text/panel\n",
        );
    let routes = forward("text-in", "/text/panel", Some("panel"), "out")
        + &forward("text-out", "/say", Some("in"), "panel");
    let pb = Patchbay::start(&show(&channels, rx.addr(), &routes));
    let mut device = TcpClient::connect(pb.addr("panel"), Framing::Lines(b"\n".to_vec()));

    device.send_raw(b"PLAY 1\r\n");
    device.send_raw(b"STOP\nLOAD \"cue 5\"\r\n");
    device.send_raw(b"GO");
    // A line cut across two writes is still one line: wait until the first part was read, then
    // finish it (the first lines' arrival shows the host has read what came before).
    for line in ["PLAY 1", "STOP", "LOAD \"cue 5\""] {
        rx.expect_bytes(
            &osc::message("/text/panel", &[s(line)]),
            &format!("line {line:?}"),
        );
    }
    device.send_raw(b" 2\n");
    rx.expect_bytes(
        &osc::message("/text/panel", &[s("GO 2")]),
        "a line split over writes",
    );

    send_to(&osc::message("/say", &[s("READY")]), pb.addr("in"));
    device.expect_bytes(
        b"READY",
        "a forward to the lines channel: text and terminator",
    );
    let m = wait_value(metrics_addr(&pb), FRAMES_IN, &[("channel", "panel")], 4.0);
    assert_eq!(
        channel_metric(&m, FRAMING_ERRORS, "panel"),
        0.0,
        "{}",
        m.text
    );
}

/// Proves: a `lines` client channel with `terminator: "\r"` connects to a text device (a test-side
/// server, like a projector's control port): a forwarded message goes out as `text\r`, the device's
/// `\r`-terminated answers arrive as string messages at the default raw_address `/raw/CHANNEL`.
#[test]
fn a_lines_client_channel_talks_to_a_text_device_server() {
    let rx = Receiver::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the device");
    let channels = format!(
        "{UDP_IN}  projector:\n    kind: tcp\n    connect: {}\n    framing: lines\n    terminator: \"\\r\"\n",
        listener.local_addr().unwrap()
    );
    let routes = forward("cmd", "/proj/cmd", Some("in"), "projector")
        + &forward("answers", "/raw/projector", Some("projector"), "out");
    let pb = Patchbay::start(&show(&channels, rx.addr(), &routes));
    let mut device = expect_accept(
        &listener,
        Framing::Lines(b"\r".to_vec()),
        "projector connects",
    );

    send_to(&osc::message("/proj/cmd", &[s("PWR ON")]), pb.addr("in"));
    device.expect_bytes(b"PWR ON", "the command as text + \\r");
    send_to(
        &osc::message("/proj/cmd", &[s("INPUT HDMI1")]),
        pb.addr("in"),
    );
    device.expect_bytes(b"INPUT HDMI1", "the second command");

    device.send_raw(b"PWR=1\rINPUT=HDMI1\r");
    rx.expect_bytes(&osc::message("/raw/projector", &[s("PWR=1")]), "answer 1");
    rx.expect_bytes(
        &osc::message("/raw/projector", &[s("INPUT=HDMI1")]),
        "answer 2",
    );
}

/// Exactly `n` bytes as they come (no framing), within [`RECV_TIMEOUT`].
fn read_bytes(c: &mut TcpClient, n: usize) -> Vec<u8> {
    use std::io::Read;
    let deadline = Instant::now() + RECV_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {got:02x?} of {n} bytes within {RECV_TIMEOUT:?}"
        );
        c.stream.set_read_timeout(Some(left)).unwrap();
        match c.stream.read(&mut buf) {
            Ok(0) => panic!("closed after {got:02x?} of {n} bytes"),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read after {got:02x?}: {e}"),
        }
    }
    got
}

/// Proves: a `raw` server delivers what a device sends as one blob at raw_address, and a message
/// forwarded to it sends its blob's bytes as they are (no framing, no terminator).
#[test]
fn raw_framing_passes_bytes_both_ways() {
    let rx = Receiver::new();
    let channels = UDP_IN.to_string() + &server("dev", "    framing: raw\n");
    let routes = forward("raw-in", "/raw/dev", Some("dev"), "out")
        + &forward("raw-out", "/bytes", Some("in"), "dev");
    let pb = Patchbay::start(&show(&channels, rx.addr(), &routes));
    let mut device = TcpClient::connect(pb.addr("dev"), Framing::Length);
    device.send_raw(b"\x02HELLO\x03");
    rx.expect_bytes(
        &osc::message("/raw/dev", &[OscArg::Blob(b"\x02HELLO\x03".to_vec())]),
        "a raw chunk as a blob",
    );
    let bytes = b"\x00\x01\xc0\xdb\r\n".to_vec();
    send_to(
        &osc::message("/bytes", &[OscArg::Blob(bytes.clone())]),
        pb.addr("in"),
    );
    let got = read_bytes(&mut device, bytes.len());
    assert_eq!(got, bytes, "the blob's bytes as they are");
}

// ---------------------------------------------------------------------------------------------------
// 6. Hostile and bad input: each closes only its own connection

/// A show with one tcp server `console` (extra `keys`), `/good/*` and `/raw/console` from it forwarded
/// to `out`, and a good connection already open and proven to work.
struct Hostile {
    pb: Patchbay,
    rx: Receiver,
    good: TcpClient,
    console: SocketAddr,
    sent: usize,
}

impl Hostile {
    fn start(keys: &str, good_framing: Framing) -> Hostile {
        let rx = Receiver::new();
        let routes = forward("good", "/good/*", Some("console"), "out")
            + &forward("text", "/raw/console", Some("console"), "out");
        let pb = Patchbay::start(&show(&server("console", keys), rx.addr(), &routes));
        let console = pb.addr("console");
        let good = TcpClient::connect(console, good_framing);
        let mut h = Hostile {
            pb,
            rx,
            good,
            console,
            sent: 0,
        };
        h.good_message_arrives("the good connection, before");
        wait_gauge(&h.pb, CONNECTIONS, "console", 1.0);
        h
    }

    /// The good connection sends one message; it must be forwarded.
    fn good_message_arrives(&mut self, what: &str) {
        self.sent += 1;
        let n = self.sent;
        let (wire, expected) = match self.good.framing() {
            Framing::Lines(_) => (
                format!("good {n}").into_bytes(),
                osc::message("/raw/console", &[s(&format!("good {n}"))]),
            ),
            _ => {
                let m = osc::message(&format!("/good/{n}"), &[OscArg::Int(n as i32)]);
                (m.clone(), m)
            }
        };
        self.good.send(&wire);
        self.rx.expect_bytes(&expected, what);
    }

    /// A new connection from 127.0.0.1 (its framing is not used: bad connections write raw bytes).
    fn bad(&self) -> TcpClient {
        TcpClient::connect(self.console, Framing::Length)
    }

    /// The bad connection is closed by the server; its log line holds `needles`, the channel and the
    /// bad peer's address; the counter `counter` is exactly 1; the good connection still works.
    fn closed_only(&mut self, bad: &mut TcpClient, needles: &[&str], counter: Option<&str>) {
        let peer = bad.local_addr().to_string();
        let (how, bytes) = bad.expect_closed_raw("the bad connection");
        let mut all = vec![CLOSED, "console", peer.as_str()];
        all.extend_from_slice(needles);
        let line = wait_log_line(&self.pb, &all);
        eprintln!("closed ({how}, {} bytes before): {line}", bytes.len());
        if let Some(counter) = counter {
            wait_value(
                metrics_addr(&self.pb),
                counter,
                &[("channel", "console")],
                1.0,
            );
        }
        wait_gauge(&self.pb, CONNECTIONS, "console", 1.0);
        self.good_message_arrives("the good connection, after the bad one was closed");
    }
}

/// Proves: a length prefix larger than `max_frame` closes that connection ("larger than max_frame",
/// framing_errors 1); the open good connection is still served.
#[test]
fn an_oversize_length_prefix_closes_only_that_connection() {
    let mut h = Hostile::start(
        "    framing: length\n    max_frame: 1024\n",
        Framing::Length,
    );
    let mut bad = h.bad();
    bad.send_raw(&[0, 1, 0, 0]);
    let _ = bad.try_send_raw(&[b'/'; 16]);
    h.closed_only(&mut bad, &["larger than max_frame"], Some(FRAMING_ERRORS));
}

/// Proves: garbage (an HTTP request sent to an `auto` port: read as a length prefix of ~1.2 GB) closes
/// that connection with a framing error; the good (SLIP) connection is still served.
#[test]
fn garbage_bytes_close_only_that_connection() {
    let mut h = Hostile::start("    framing: auto\n", Framing::Slip);
    let mut bad = h.bad();
    bad.send_raw(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    h.closed_only(&mut bad, &["larger than max_frame"], Some(FRAMING_ERRORS));
}

/// Proves: an invalid SLIP escape (ESC followed by a byte that is neither ESC_END nor ESC_ESC) on a
/// `slip` server closes that connection with a framing error; the good connection is still served.
#[test]
fn a_bad_slip_escape_closes_only_that_connection() {
    let mut h = Hostile::start("    framing: slip\n", Framing::Slip);
    let mut bad = h.bad();
    bad.send_raw(&[SLIP_END, b'/', b'x', SLIP_ESC, b'A', SLIP_END]);
    h.closed_only(&mut bad, &[], Some(FRAMING_ERRORS));
}

/// Proves: a SLIP stream sent to a `length` server is named in the log ("looks like SLIP", "expects
/// length"), closes that connection and counts a framing error; the good connection is still served.
#[test]
fn a_slip_stream_to_a_length_server_is_named_and_closed() {
    let mut h = Hostile::start("    framing: length\n", Framing::Length);
    let mut bad = h.bad();
    bad.send_raw(&slip_encode(&osc::message("/good/slip", &[])));
    h.closed_only(
        &mut bad,
        &["looks like SLIP", "expects length"],
        Some(FRAMING_ERRORS),
    );
}

/// Proves: a length-prefixed stream sent to a `slip` server is named in the log ("looks like
/// length-prefixed OSC", "expects slip") and closes that connection; the good one is still served.
#[test]
fn a_length_stream_to_a_slip_server_is_named_and_closed() {
    let mut h = Hostile::start("    framing: slip\n", Framing::Slip);
    let mut bad = h.bad();
    bad.send_raw(&length_encode(&osc::message("/good/length", &[])));
    h.closed_only(
        &mut bad,
        &["looks like length-prefixed OSC", "expects slip"],
        Some(FRAMING_ERRORS),
    );
}

/// Proves: a sender that stops in the middle of a frame is closed after `frame_timeout_ms` ("did not
/// finish a frame"), while the good connection, idle meanwhile but between frames, stays open.
#[test]
fn a_sender_that_stops_mid_frame_is_closed_after_frame_timeout() {
    let mut h = Hostile::start(
        "    framing: length\n    frame_timeout_ms: 300\n",
        Framing::Length,
    );
    let mut bad = h.bad();
    let frame = length_encode(&osc::message("/good/slow", &[OscArg::Int(1)]));
    bad.send_raw(&frame[..10]);
    h.closed_only(&mut bad, &["did not finish a frame"], None);
}

/// Proves: a line longer than `max_frame` on a `lines` server closes that connection (the log names
/// max_frame), counted as a framing error; the good text connection is still served.
#[test]
fn a_line_longer_than_max_frame_closes_only_that_connection() {
    let mut h = Hostile::start(
        "    framing: lines\n    max_frame: 64\n",
        Framing::Lines(b"\n".to_vec()),
    );
    let mut bad = h.bad();
    bad.send_raw(&[b'x'; 200]);
    let _ = bad.try_send_raw(b"\n");
    h.closed_only(&mut bad, &["max_frame"], Some(FRAMING_ERRORS));
}

/// Proves: a connection that sends nothing for `idle_timeout_ms` is closed (its close event says why),
/// while a connection that keeps talking stays open and served.
#[test]
fn an_idle_connection_is_closed_after_idle_timeout_and_a_talking_one_is_not() {
    let rx = Receiver::new();
    let routes = forward("talk", "/talk", Some("console"), "out")
        + &forward("events", "/patchbay/tcp/close", Some("console"), "out");
    let pb = Patchbay::start(&show(
        &server(
            "console",
            "    framing: length\n    idle_timeout_ms: 2000\n",
        ),
        rx.addr(),
        &routes,
    ));
    let console = pb.addr("console");
    let mut talker = TcpClient::connect(console, Framing::Length);
    let mut idle = TcpClient::connect(console, Framing::Length);
    let idle_peer = idle.local_addr().to_string();
    wait_gauge(&pb, CONNECTIONS, "console", 2.0);
    // The talker sends every 100 ms (a twentieth of the timeout) until the idle one is closed.
    let talk = osc::message("/talk", &[]);
    let deadline = Instant::now() + RECV_TIMEOUT;
    let close_event = loop {
        talker.send(&talk);
        let (bytes, _) = rx.expect("the talker's message or the close event");
        if bytes != talk {
            break bytes;
        }
        assert!(
            Instant::now() < deadline,
            "the idle connection was not closed within {RECV_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    let m = message_of(&close_event, "the close event");
    assert_eq!(m.address, "/patchbay/tcp/close", "{m:?}");
    assert_eq!(
        &m.args[..2],
        &[s("console"), s(&idle_peer)],
        "the idle connection ({idle_peer}) was closed, not the talker ({}): {m:?}",
        talker.local_addr()
    );
    assert!(
        matches!(m.args.get(2), Some(OscArg::String(reason)) if reason.contains("idle")),
        "the close reason names the idle timeout: {m:?}"
    );
    let (how, bytes) = idle.expect_closed_raw("the idle connection");
    assert!(
        bytes.is_empty(),
        "the idle connection got {bytes:02x?} ({how})"
    );
    talker.send(&talk);
    rx.expect_bytes(&talk, "the talker, after the idle one was closed");
    wait_gauge(&pb, CONNECTIONS, "console", 1.0);
}

/// Proves: the connection past `max_connections` is accepted and closed at once and counted as
/// refused; the open connections are still served.
#[test]
fn a_connection_past_max_connections_is_refused_and_counted() {
    let mut h = Hostile::start(
        "    framing: length\n    max_connections: 2\n",
        Framing::Length,
    );
    let second = h.bad();
    wait_gauge(&h.pb, CONNECTIONS, "console", 2.0);
    let mut third = h.bad();
    let peer = third.local_addr().to_string();
    let (how, bytes) = third.expect_closed_raw("the third connection");
    assert!(
        bytes.is_empty(),
        "the refused connection got {bytes:02x?} ({how})"
    );
    wait_log_line(&h.pb, &["max_connections", "console", &peer]);
    let m = wait_value(metrics_addr(&h.pb), REFUSED, &[("channel", "console")], 1.0);
    assert_eq!(m.channel(CONNECTIONS, "console"), Some(2.0), "{}", m.text);
    h.good_message_arrives("the first connection, after the refusal");
    drop(second);
    wait_gauge(&h.pb, CONNECTIONS, "console", 1.0);
}

/// Proves: a connection from outside `allow` (127.0.0.2, with 127.0.0.1/32 allowed) is closed at once
/// and counted as refused; the allowed connection is still served.
#[test]
fn a_source_outside_the_allow_list_is_refused_and_counted() {
    let mut h = Hostile::start(
        "    framing: length\n    allow: [127.0.0.1/32]\n",
        Framing::Length,
    );
    let mut outsider =
        TcpClient::connect_from(Ipv4Addr::new(127, 0, 0, 2), h.console, Framing::Length);
    let _ = outsider.try_send_raw(&length_encode(&osc::message("/good/outsider", &[])));
    let (how, bytes) = outsider.expect_closed_raw("the outsider's connection");
    assert!(bytes.is_empty(), "the outsider got {bytes:02x?} ({how})");
    wait_log_line(&h.pb, &["console", "127.0.0.2"]);
    let m = wait_value(metrics_addr(&h.pb), REFUSED, &[("channel", "console")], 1.0);
    assert_eq!(m.channel(CONNECTIONS, "console"), Some(1.0), "{}", m.text);
    h.good_message_arrives("the allowed connection, after the refusal");
    // The outsider's message was never routed: the good route matched only the good messages.
    let m = Metrics::scrape(metrics_addr(&h.pb));
    assert_eq!(m.route(ROUTE_MATCHES, "good"), Some(2.0), "{}", m.text);
}

/// Proves: a well-framed packet that is not OSC is dropped and counted as a decode error, and that
/// connection stays open: its next good message is forwarded.
#[test]
fn a_framed_packet_that_is_not_osc_is_dropped_and_the_connection_stays_open() {
    let mut h = Hostile::start("    framing: length\n", Framing::Length);
    let mut other = h.bad();
    other.send(b"hello world!");
    let fine = osc::message("/good/other", &[]);
    other.send(&fine);
    h.rx.expect_bytes(&fine, "the next message on the same connection");
    let m = wait_value(
        metrics_addr(&h.pb),
        DECODE_ERRORS,
        &[("channel", "console")],
        1.0,
    );
    assert_eq!(
        channel_metric(&m, FRAMING_ERRORS, "console"),
        0.0,
        "{}",
        m.text
    );
    assert_eq!(m.channel(CONNECTIONS, "console"), Some(2.0), "{}", m.text);
    h.good_message_arrives("the first connection too");
}

// ---------------------------------------------------------------------------------------------------
// 7. Connection events

/// Proves: with `events: true` a connection opening arrives as `/patchbay/tcp/open ,ss CHANNEL
/// IP:PORT` (routed by an ordinary route to a UDP receiver), the open event answered with `reply:
/// true` arrives on the new connection (SLIP, as nothing was sent on it yet), and closing arrives as
/// `/patchbay/tcp/close ,sss CHANNEL IP:PORT REASON`.
#[test]
fn connection_open_and_close_arrive_as_messages_and_the_open_event_can_be_answered() {
    let rx = Receiver::new();
    let routes = forward("events", "/patchbay/tcp/*", Some("console"), "out")
        + &reply("greet", "/patchbay/tcp/open", "console", "/hello");
    let pb = Patchbay::start(&show(
        &server("console", "    framing: auto\n    events: true\n"),
        rx.addr(),
        &routes,
    ));
    let mut c = TcpClient::connect(pb.addr("console"), Framing::Slip);
    let peer = c.local_addr().to_string();
    rx.expect_bytes(
        &osc::message("/patchbay/tcp/open", &[s("console"), s(&peer)]),
        "the open event",
    );
    c.expect_bytes(
        &osc::message("/hello", &[s("console"), s(&peer)]),
        "the answer to the open event, on the new connection",
    );
    drop(c);
    let (bytes, _) = rx.expect("the close event");
    let m = message_of(&bytes, "the close event");
    assert_eq!(m.address, "/patchbay/tcp/close");
    assert_eq!(m.args.len(), 3, "{m:?}");
    assert_eq!(m.args[0], s("console"));
    assert_eq!(m.args[1], s(&peer));
    assert!(
        matches!(&m.args[2], OscArg::String(reason) if !reason.is_empty()),
        "a reason: {m:?}"
    );
}

/// Proves: a client channel with `events: true` reports its own connection opening and closing, the
/// remote address being the server's: for the connection it makes at start (while the show starts)
/// and again after a reconnect.
#[test]
fn a_client_channel_reports_its_own_connection_events() {
    let rx = Receiver::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
    let server_addr = listener.local_addr().unwrap().to_string();
    let channels = format!(
        "  dev:\n    kind: tcp\n    connect: {server_addr}\n    framing: slip\n    events: true\n    reconnect_ms: 50\n"
    );
    let pb = Patchbay::start(&show(
        &channels,
        rx.addr(),
        &forward("events", "/patchbay/tcp/*", Some("dev"), "out"),
    ));
    let open = osc::message("/patchbay/tcp/open", &[s("dev"), s(&server_addr)]);
    let conn = expect_accept(&listener, Framing::Slip, "dev connects");
    match rx.recv_timeout(RECV_TIMEOUT) {
        Some((bytes, _)) => {
            assert_bytes(&bytes, &open, "dev's open event (connection made at start)")
        }
        None => {
            let m = Metrics::scrape(metrics_addr(&pb));
            panic!(
                "dev's open event for the connection made at start never arrived; route `events` matched {:?}, unmatched {:?}",
                m.route(ROUTE_MATCHES, "events"),
                m.plain("patchbay_unmatched_total")
            );
        }
    }
    drop(conn);
    let (bytes, _) = rx.expect("dev's close event");
    let m = message_of(&bytes, "dev's close event");
    assert_eq!(m.address, "/patchbay/tcp/close");
    assert_eq!(&m.args[..2], &[s("dev"), s(&server_addr)], "{m:?}");
    let _again = expect_accept(&listener, Framing::Slip, "dev reconnects");
    rx.expect_bytes(&open, "dev's open event after the reconnect");
}

// ---------------------------------------------------------------------------------------------------
// 8. Live YAML

fn live_config(out: SocketAddr, side: SocketAddr, other_rewrite: &str) -> String {
    let channels =
        server("console", "") + UDP_IN + &format!("  side:\n    kind: udp\n    send: {side}\n");
    let routes = forward("up", "/up/*", Some("console"), "out")
        + &forward("down", "/down/*", Some("in"), "console")
        + &format!(
            "  - name: other\n    match: /other\n    from: [in]\n    to:\n      - forward: side\n        rewrite: {other_rewrite}\n"
        );
    show(&channels, out, &routes)
}

/// Proves: editing an unrelated route keeps an accepted connection open and routed both ways (no new
/// accept, same listening address), and the edit itself applies.
#[test]
fn an_accepted_connection_survives_a_reload_of_an_unrelated_route() {
    let (rx, side) = (Receiver::new(), Receiver::new());
    let pb = Patchbay::start(&live_config(rx.addr(), side.addr(), "/other/1"));
    let console = pb.addr("console");
    let input = pb.addr("in");
    let mut c = TcpClient::connect(console, Framing::Length);
    let up = |n: i32| osc::message("/up/x", &[OscArg::Int(n)]);
    let down = |n: i32| osc::message("/down/x", &[OscArg::Int(n)]);
    c.send(&up(1));
    rx.expect_bytes(&up(1), "/up before the edit");
    send_to(&down(1), input);
    c.expect_bytes(&down(1), "/down before the edit");

    live_support::save(
        &pb,
        &live_config(rx.addr(), side.addr(), "/other/2"),
        live_support::Save::Rename,
    );
    let line = live_support::wait_applied(&pb, 1);
    assert!(
        !live_support::summary(&line).contains("console"),
        "the edit did not touch console: {line}"
    );
    send_to(&osc::message("/other", &[]), input);
    side.expect_bytes(&osc::message("/other/2", &[]), "the edited route applies");

    c.send(&up(2));
    rx.expect_bytes(&up(2), "/up after the edit, same connection");
    send_to(&down(2), input);
    c.expect_bytes(&down(2), "/down after the edit, same connection");
    let m = Metrics::scrape(metrics_addr(&pb));
    assert_eq!(m.channel(ACCEPTED, "console"), Some(1.0), "{}", m.text);
    assert_eq!(m.channel(CONNECTIONS, "console"), Some(1.0), "{}", m.text);
    let ready = pb.reread_ready().expect("ready file");
    assert_eq!(ready.channel("console").listen, Some(console));
}

fn max_frame_config(out: SocketAddr, max_frame: usize) -> String {
    show(
        &server(
            "console",
            &format!("    framing: length\n    max_frame: {max_frame}\n"),
        ),
        out,
        &forward("up", "/up/*", Some("console"), "out"),
    )
}

/// Proves: a live edit of `max_frame` (a key that applies live) keeps the open connection and applies
/// to it: a frame the old limit let through now closes it ("max_frame" in the log).
#[test]
fn a_live_max_frame_change_applies_to_an_open_connection() {
    let rx = Receiver::new();
    let pb = Patchbay::start(&max_frame_config(rx.addr(), 4096));
    let mut c = TcpClient::connect(pb.addr("console"), Framing::Length);
    let big = osc::message("/up/big", &[OscArg::Blob(vec![7; 200])]);
    c.send(&big);
    rx.expect_bytes(&big, "a 200-byte frame under max_frame 4096");

    live_support::save(
        &pb,
        &max_frame_config(rx.addr(), 64),
        live_support::Save::Rename,
    );
    let line = live_support::wait_applied(&pb, 1);
    eprintln!("{line}");
    let small = osc::message("/up/small", &[]);
    c.send(&small);
    rx.expect_bytes(&small, "the same connection after the edit");
    let peer = c.local_addr().to_string();
    let _ = c.try_send_raw(&length_encode(&big));
    let (how, _) = c.expect_closed_raw("a 200-byte frame over the new max_frame 64");
    wait_log_line(&pb, &[CLOSED, "console", &peer, "max_frame"]);
    eprintln!("closed: {how}");
}

// ---------------------------------------------------------------------------------------------------
// 9. Forward to a server channel: every open connection

/// Proves: a forward to a server channel reaches every open connection, each in its own framing: one
/// that spoke SLIP, one that spoke length, and one that has sent nothing yet (SLIP by the contract).
#[test]
fn a_forward_to_a_server_channel_reaches_every_open_connection_in_its_framing() {
    let rx = Receiver::new();
    let channels = UDP_IN.to_string() + &server("console", "    framing: auto\n");
    let routes = forward("hello", "/hello/*", Some("console"), "out")
        + &forward("all", "/all/*", Some("in"), "console");
    let pb = Patchbay::start(&show(&channels, rx.addr(), &routes));
    let console = pb.addr("console");
    let mut a = TcpClient::connect(console, Framing::Slip);
    let mut b = TcpClient::connect(console, Framing::Length);
    let mut c = TcpClient::connect(console, Framing::Slip);
    for (conn, name) in [(&mut a, "a"), (&mut b, "b")] {
        let hello = osc::message(&format!("/hello/{name}"), &[]);
        conn.send(&hello);
        rx.expect_bytes(&hello, &format!("{name} is heard (its framing is known)"));
    }
    wait_gauge(&pb, CONNECTIONS, "console", 3.0);
    for n in 1..=2 {
        let msg = osc::message("/all/cue", &[OscArg::Int(n), s("go")]);
        send_to(&msg, pb.addr("in"));
        for (conn, name) in [
            (&mut a, "a (slip)"),
            (&mut b, "b (length)"),
            (&mut c, "c (silent)"),
        ] {
            conn.expect_bytes(&msg, &format!("/all/cue {n} on {name}"));
        }
    }
    wait_value(
        metrics_addr(&pb),
        FRAMES_OUT,
        &[("channel", "console")],
        6.0,
    );
}

/// Proves: a connection that never reads fills its own bounded queue, which then drops (counted),
/// while another connection of the same channel keeps getting every message, in order.
#[test]
fn a_connection_that_never_reads_drops_its_own_queue_and_holds_up_nobody() {
    let rx = Receiver::new();
    let channels = UDP_IN.to_string() + &server("console", "    framing: length\n    queue: 8\n");
    let pb = Patchbay::start(&show(
        &channels,
        rx.addr(),
        &forward("all", "/all", Some("in"), "console"),
    ));
    let console = pb.addr("console");
    let mut reader = TcpClient::connect(console, Framing::Length);
    let stuck = TcpClient::connect(console, Framing::Length);
    wait_gauge(&pb, CONNECTIONS, "console", 2.0);
    let addr = metrics_addr(&pb);
    // 60 kB messages, one at a time (the reader gets each before the next is sent): the stuck
    // connection's socket buffers fill after a few MB, then its queue of 8, then it drops. Bounded.
    let mut sent = 0;
    let mut dropped = 0.0;
    while sent < 400 {
        let mut blob = vec![0u8; 60_000];
        blob[..4].copy_from_slice(&(sent as u32).to_be_bytes());
        let msg = osc::message("/all", &[OscArg::Blob(blob)]);
        send_to(&msg, pb.addr("in"));
        reader.expect_bytes(&msg, &format!("message {sent} on the reading connection"));
        sent += 1;
        if sent % 10 == 0 {
            dropped = channel_metric(&Metrics::scrape(addr), DROPS, "console");
            if dropped >= 1.0 {
                break;
            }
        }
    }
    assert!(
        dropped >= 1.0,
        "after {sent} messages of 60 kB the stuck connection's queue never dropped"
    );
    eprintln!("the stuck connection dropped {dropped} of {sent} messages");
    drop(stuck);
}

fn rebind_config(out: SocketAddr, listen: SocketAddr, framing: &str) -> String {
    show(
        &format!("  console:\n    kind: tcp\n    listen: {listen}\n    framing: {framing}\n"),
        out,
        &forward("up", "/up/*", Some("console"), "out"),
    )
}

/// A free TCP port on 127.0.0.1 (bound and released; the kernel does not hand it out again at once).
fn free_tcp_port() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").expect("probe listener");
    probe.local_addr().expect("probe addr")
}

/// Proves: editing a rebind key moves the channel: a new `listen` port accepts and routes, the old
/// connection is closed and the old port no longer accepts; a `framing` change is a rebind too (the
/// summary says so) and the new listener speaks the new framing.
#[test]
fn a_listen_or_framing_edit_rebinds_the_tcp_channel() {
    let rx = Receiver::new();
    let (first, second) = (free_tcp_port(), free_tcp_port());
    let pb = Patchbay::start(&rebind_config(rx.addr(), first, "length"));
    let mut old = TcpClient::connect(first, Framing::Length);
    let up = |n: i32| osc::message("/up/x", &[OscArg::Int(n)]);
    old.send(&up(1));
    rx.expect_bytes(&up(1), "/up on the first port");

    live_support::save(
        &pb,
        &rebind_config(rx.addr(), second, "length"),
        live_support::Save::Rename,
    );
    let line = live_support::wait_applied(&pb, 1);
    assert!(line.contains("rebind: listen"), "{line}");
    let mut moved = TcpClient::connect(second, Framing::Length);
    moved.send(&up(2));
    rx.expect_bytes(&up(2), "/up on the new port");
    old.expect_closed("the connection to the old listener");
    // The old listener closes with its channel's task; poll (bounded) rather than race it.
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    while std::net::TcpStream::connect(first).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old port still accepts connections"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    live_support::save(
        &pb,
        &rebind_config(rx.addr(), second, "slip"),
        live_support::Save::Rename,
    );
    let line = live_support::wait_applied(&pb, 2);
    assert!(line.contains("rebind: framing"), "{line}");
    let mut slip = TcpClient::connect(second, Framing::Slip);
    slip.send(&up(3));
    rx.expect_bytes(&up(3), "/up in SLIP after the framing edit");
    let ready = pb.reread_ready().expect("ready file");
    assert_eq!(ready.channel("console").listen, Some(second));
}
