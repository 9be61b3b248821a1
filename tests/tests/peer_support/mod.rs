//! Helpers for the `kind: peer` end-to-end tests (`peer.rs`, issue 8) that the harness in
//! `tests/src/lib.rs` does not have: peerpy 1.2.2's wire format written from peerpy's code (an oracle
//! independent of the host's `wire.rs`), a raw peer over a plain `TcpStream` that can say anything
//! (good offers and data, and every hostile header), the real peerpy peers of `tests/python/`
//! (`peer_connect.py`, `peer_listen.py`) read as JSON lines, and config pieces.
//!
//! peerpy's wire format (`peerpy/utils/__init__.py`): every header is 128 bytes of UTF-8,
//! `TYPE|key=value&key=value` padded with `|`; `HELLO` carries `peer_name`, `data_type`, `strict` and,
//! for streaming connections, `stream`; the answer is `ACCEPT` or `DENY`; `DATA` carries `data_size`
//! and `data_type` and is followed by exactly `data_size` bytes; `PING` is a keep-alive. A `json`
//! payload is `json.dumps({"data": value})`.
//!
//! Every read waits with a bound and fails with what it saw; nothing sleeps to assert.

#![allow(dead_code)] // not every test uses every helper

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use patchbay_plugin_api::osc::{decode, OscMessage, OscPacket};
use patchbay_tests::{
    osc, python, python_script, yq, LineProc, Patchbay, EXIT_TIMEOUT, READY_TIMEOUT, RECV_TIMEOUT,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------------
// The wire format

/// Every peerpy header is exactly this many bytes.
pub const HEADER_SIZE: usize = 128;

/// `text` padded with `|` to 128 bytes (any text, for hostile headers; panics when longer).
pub fn padded(text: &[u8]) -> Vec<u8> {
    assert!(
        text.len() <= HEADER_SIZE,
        "a header of {} bytes does not fit 128",
        text.len()
    );
    let mut out = text.to_vec();
    out.resize(HEADER_SIZE, b'|');
    out
}

/// A header as peerpy's `build_header` writes it: the type, then `|` and `key=value` joined with
/// `&` (nothing when there are no fields), padded with `|`.
pub fn header(kind: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let text = if body.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}|{}", body.join("&"))
    };
    padded(text.as_bytes())
}

/// Python's `str(bool)`.
pub fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// peerpy's `build_hello_header`: `stream` only when streaming.
pub fn hello(peer_name: &str, data_type: &str, strict: bool, stream: bool) -> Vec<u8> {
    let mut fields = vec![
        ("peer_name", peer_name),
        ("data_type", data_type),
        ("strict", py_bool(strict)),
    ];
    if stream {
        fields.push(("stream", "True"));
    }
    header("HELLO", &fields)
}

/// peerpy's `build_data_header`.
pub fn data_header(size: usize, data_type: &str) -> Vec<u8> {
    header(
        "DATA",
        &[("data_size", &size.to_string()), ("data_type", data_type)],
    )
}

pub fn accept() -> Vec<u8> {
    header("ACCEPT", &[])
}

pub fn deny() -> Vec<u8> {
    header("DENY", &[])
}

pub fn ping() -> Vec<u8> {
    header("PING", &[])
}

/// A discovery `PING|pinger=ADDR` (padded, as peerpy sends it).
pub fn discovery_ping(pinger: SocketAddr) -> Vec<u8> {
    header("PING", &[("pinger", &pinger.to_string())])
}

/// A discovery `PONG|ponger=ADDR` (padded, as peerpy sends it).
pub fn discovery_pong(ponger: SocketAddr) -> Vec<u8> {
    header("PONG", &[("ponger", &ponger.to_string())])
}

/// `json.dumps({"data": value})` as Python writes it (`", "` and `": "` separators). patchbay reads
/// any JSON; this keeps the bytes what a real peer would send.
pub fn json_payload(value: &Value) -> Vec<u8> {
    fn py(v: &Value, out: &mut String) {
        match v {
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py(item, out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                out.push('{');
                for (i, (k, item)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push_str(": ");
                    py(item, out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::from("{\"data\": ");
    py(value, &mut out);
    out.push('}');
    out.into_bytes()
}

/// The value of a `json` payload patchbay sent (`{"data": value}`).
pub fn json_value(payload: &[u8]) -> Value {
    let envelope: Value = serde_json::from_slice(payload).unwrap_or_else(|e| {
        panic!(
            "a json payload that does not parse ({e}): {:?}",
            String::from_utf8_lossy(payload)
        )
    });
    envelope
        .get("data")
        .cloned()
        .unwrap_or_else(|| panic!("a json payload without `data`: {envelope}"))
}

/// A header read from patchbay: its type and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: String,
    pub fields: Vec<(String, String)>,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a 128-byte header the way peerpy's `split_header` does, strictly: UTF-8, `|` padding after
/// the fields, `key=value` parts.
pub fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() != HEADER_SIZE {
        return Err(format!("{} bytes, not 128", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| format!("not UTF-8: {bytes:02x?}"))?;
    let (kind, rest) = text.split_once('|').unwrap_or((text, ""));
    let (body, padding) = rest.split_once('|').unwrap_or((rest, ""));
    if padding.bytes().any(|b| b != b'|') {
        return Err(format!("text after the fields: {text:?}"));
    }
    let mut fields = Vec::new();
    if !body.is_empty() {
        for part in body.split('&') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("field {part:?} is not key=value in {text:?}"))?;
            fields.push((k.to_string(), v.to_string()));
        }
    }
    Ok(Header {
        kind: kind.to_string(),
        fields,
    })
}

// ---------------------------------------------------------------------------------------------------
// A raw peer over a plain TcpStream

/// A connection to a peer channel that writes whatever a test gives it and reads with bounds.
pub struct RawPeer {
    pub stream: TcpStream,
    /// Bytes read but not consumed yet.
    pending: Vec<u8>,
}

/// How a connection ended, as the reading side saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// An orderly close (read returned 0).
    Eof,
    /// A reset.
    Reset,
}

impl RawPeer {
    /// Connects to `to` (with a bound); sends nothing.
    pub fn connect(to: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect_timeout(&to, RECV_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to the peer channel {to}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_write_timeout(Some(RECV_TIMEOUT))
            .expect("write timeout");
        RawPeer {
            stream,
            pending: Vec::new(),
        }
    }

    /// Connects and offers (HELLO with our own address as `peer_name`, as a peer that does not
    /// listen would); returns the peer and the answer.
    pub fn offer(to: SocketAddr, data_type: &str, strict: bool, stream: bool) -> (RawPeer, Header) {
        let mut peer = RawPeer::connect(to);
        let name = peer.local_addr().to_string();
        peer.send_raw(&hello(&name, data_type, strict, stream));
        let answer = peer.expect_header("the answer to our HELLO");
        (peer, answer)
    }

    /// Connects, offers and asserts the offer was accepted.
    pub fn accepted(to: SocketAddr, data_type: &str, strict: bool, stream: bool) -> RawPeer {
        let (peer, answer) = RawPeer::offer(to, data_type, strict, stream);
        assert_eq!(
            answer.kind,
            "ACCEPT",
            "the {data_type} offer from {} was not accepted: {answer:?}",
            peer.local_addr()
        );
        peer
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// A write that may fail (the server may already have closed the connection).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// A DATA header and its payload, in one write.
    pub fn send_data(&mut self, data_type: &str, payload: &[u8]) {
        let mut out = data_header(payload.len(), data_type);
        out.extend_from_slice(payload);
        self.send_raw(&out);
    }

    pub fn send_json(&mut self, value: &Value) {
        self.send_data("json", &json_payload(value));
    }

    /// An OSC packet on a bytes connection.
    pub fn send_osc(&mut self, packet: &[u8]) {
        self.send_data("bytes", packet);
    }

    /// Reads until `n` bytes are pending or `deadline`; `Err` with what ended the read.
    fn fill(&mut self, n: usize, deadline: Instant) -> Result<(), String> {
        let mut buf = [0u8; 4096];
        while self.pending.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out".into());
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("read timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => return Err("closed".into()),
                Ok(got) => self.pending.extend_from_slice(&buf[..got]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("error: {e}")),
            }
        }
        Ok(())
    }

    /// Exactly `n` bytes, within [`RECV_TIMEOUT`].
    pub fn expect_bytes(&mut self, n: usize, what: &str) -> Vec<u8> {
        let deadline = Instant::now() + RECV_TIMEOUT;
        if let Err(why) = self.fill(n, deadline) {
            panic!(
                "{what}: wanted {n} bytes from the channel, the read {why} with {} bytes:\n{}",
                self.pending.len(),
                osc::hexdump(&self.pending)
            );
        }
        self.pending.drain(..n).collect()
    }

    /// The next 128-byte header.
    pub fn expect_header(&mut self, what: &str) -> Header {
        let bytes = self.expect_bytes(HEADER_SIZE, what);
        parse_header(&bytes).unwrap_or_else(|e| panic!("{what}: not a header ({e})"))
    }

    /// The next DATA header and its payload: (data_type, payload).
    pub fn expect_data(&mut self, what: &str) -> (String, Vec<u8>) {
        let h = self.expect_header(what);
        assert_eq!(h.kind, "DATA", "{what}: expected a DATA header: {h:?}");
        let size: usize = h
            .get("data_size")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no numeric data_size in {h:?}"));
        let data_type = h
            .get("data_type")
            .unwrap_or_else(|| panic!("{what}: no data_type in {h:?}"))
            .to_string();
        (data_type, self.expect_bytes(size, what))
    }

    /// The next json value (asserting the DATA header says json).
    pub fn expect_json(&mut self, what: &str) -> Value {
        let (data_type, payload) = self.expect_data(what);
        assert_eq!(data_type, "json", "{what}: a {data_type} payload");
        json_value(&payload)
    }

    /// The next OSC packet on a bytes connection.
    pub fn expect_osc(&mut self, what: &str) -> Vec<u8> {
        let (data_type, payload) = self.expect_data(what);
        assert_eq!(data_type, "bytes", "{what}: a {data_type} payload");
        payload
    }

    /// Waits (bounded) until the channel closes the connection; returns how, and every byte that
    /// arrived before the end.
    pub fn expect_closed(&mut self, what: &str) -> (Ended, Vec<u8>) {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: the channel did not close the connection within {RECV_TIMEOUT:?}; got:\n{}",
                osc::hexdump(&self.pending)
            );
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("read timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => return (Ended::Eof, std::mem::take(&mut self.pending)),
                Ok(got) => self.pending.extend_from_slice(&buf[..got]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return (Ended::Reset, std::mem::take(&mut self.pending))
                }
                Err(e) => panic!("{what}: read failed: {e}"),
            }
        }
    }

    /// Half-closes our side (the channel sees the end of the stream).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

// ---------------------------------------------------------------------------------------------------
// Real peerpy peers (tests/python)

/// A `peer_connect.py` or `peer_listen.py` process, its JSON-line events read with bounds. The
/// process is ended on drop (peerpy spins after a remote close and never exits by itself).
pub struct PyPeer {
    pub proc: LineProc,
    /// Every event read so far, in order.
    pub events: Vec<Value>,
    name: &'static str,
}

impl PyPeer {
    /// `peer_connect.py ADDRESS ARGS...`: a peerpy Peer on 127.0.0.1 (invisible) that connects.
    pub fn connect(to: SocketAddr, args: &[&str]) -> PyPeer {
        let proc = LineProc::spawn(
            Command::new(python())
                .arg(python_script("peer_connect.py"))
                .arg(to.to_string())
                .args(args),
        );
        PyPeer {
            proc,
            events: Vec::new(),
            name: "peer_connect.py",
        }
    }

    /// `peer_listen.py ARGS...`: a peerpy Peer listening on 127.0.0.1 (invisible); returns it and its
    /// listening address.
    pub fn listen(args: &[&str]) -> (PyPeer, SocketAddr) {
        let proc = LineProc::spawn(
            Command::new(python())
                .arg(python_script("peer_listen.py"))
                .args(args),
        );
        let mut peer = PyPeer {
            proc,
            events: Vec::new(),
            name: "peer_listen.py",
        };
        let first = peer.wait_event("listen", "peer_listen.py starts listening");
        let addr = first["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("peer_listen.py: no listening address in {first}"));
        (peer, addr)
    }

    /// The next event, or `None` after `timeout` or at the end of the output.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.proc.next_stdout(timeout)?;
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "{}: a stdout line that is not JSON ({e}): {line:?}\nstderr:\n{}",
                self.name,
                self.proc.stderr_text()
            )
        });
        self.events.push(v.clone());
        Some(v)
    }

    /// Reads events until one named `event` (within [`READY_TIMEOUT`]: the first one waits for
    /// Python to start); returns it.
    pub fn wait_event(&mut self, event: &str, what: &str) -> Value {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some(v) if v["event"] == event => return v,
                Some(_) => {}
                None => panic!(
                    "{what}: {} printed no `{event}` event within {READY_TIMEOUT:?}; events: {:#?}\nstderr:\n{}",
                    self.name,
                    self.events,
                    self.proc.stderr_text()
                ),
            }
        }
    }

    /// The values of the next `n` `data` events.
    pub fn data_values(&mut self, n: usize, what: &str) -> Vec<Value> {
        (0..n)
            .map(|i| {
                self.wait_event("data", &format!("{what} (value {} of {n})", i + 1))["value"]
                    .clone()
            })
            .collect()
    }

    /// Waits for the process to exit; returns its exit code and the events printed last.
    pub fn wait_exit(&mut self, what: &str) -> (Option<i32>, Vec<Value>) {
        let (status, rest) = self.proc.wait_exit(EXIT_TIMEOUT);
        let rest: Vec<Value> = rest
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{what}: {}: not JSON ({e}): {l:?}", self.name))
            })
            .collect();
        self.events.extend(rest.iter().cloned());
        (status.code(), rest)
    }

    /// Asserts the process exits with `code`; returns every event it printed.
    pub fn expect_exit(&mut self, code: i32, what: &str) -> Vec<Value> {
        let (got, _) = self.wait_exit(what);
        assert_eq!(
            got,
            Some(code),
            "{what}: {} exited with {got:?}; events: {:#?}\nstderr:\n{}",
            self.name,
            self.events,
            self.proc.stderr_text()
        );
        self.events.clone()
    }
}

/// `{"$bytes": HEX}`: bytes as peer_values.py tags them.
pub fn tagged_bytes(bytes: &[u8]) -> Value {
    serde_json::json!({ "$bytes": hex(bytes) })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a `{"$bytes": HEX}` value.
pub fn untag_bytes(v: &Value) -> Vec<u8> {
    let text = v["$bytes"]
        .as_str()
        .unwrap_or_else(|| panic!("not a {{\"$bytes\": HEX}} value: {v}"));
    osc::unhex(text)
}

/// Runs a Python expression in the venv and returns what it prints as hex, decoded (for pickles
/// made by Python itself).
pub fn python_bytes(expression: &str) -> Vec<u8> {
    let done = patchbay_tests::run_bounded(
        Command::new(python()).arg("-c").arg(format!(
            "import sys; sys.stdout.write(({expression}).hex())"
        )),
        EXIT_TIMEOUT,
    );
    assert_eq!(
        done.code,
        Some(0),
        "python {expression}:\n{}",
        done.output()
    );
    osc::unhex(done.stdout.trim())
}

// ---------------------------------------------------------------------------------------------------
// OSC

/// The message in `bytes` (panics naming `what` if it is not one).
pub fn message_of(bytes: &[u8], what: &str) -> OscMessage {
    match decode(bytes) {
        Ok(OscPacket::Message(m)) => m,
        other => panic!(
            "{what}: not an OSC message: {other:?}\n{}",
            osc::hexdump(bytes)
        ),
    }
}

// ---------------------------------------------------------------------------------------------------
// Configs

/// Channels every peer show has besides its own: a metrics endpoint, a udp `in` listening on
/// 127.0.0.1:0 (a way into the show that is not a peer) and a udp `out` sending to `out`.
pub fn show(channels: &str, out: SocketAddr, extra: &str, routes: &str) -> String {
    format!(
        "version: 1\nmetrics:\n  listen: 127.0.0.1:0\nchannels:\n{channels}  in:\n    kind: udp\n    listen: 127.0.0.1:0\n  out:\n    kind: udp\n    send: {out}\n{extra}routes:\n{routes}"
    )
}

/// A peer channel `name` listening on 127.0.0.1:0 with extra keys (YAML, each line indented by four).
pub fn listener(name: &str, keys: &str) -> String {
    format!("  {name}:\n    kind: peer\n    listen: 127.0.0.1:0\n{keys}")
}

/// A route (YAML list item): `pattern` (from `from`, if given) forwarded to `to`.
pub fn forward(name: &str, pattern: &str, from: Option<&str>, to: &str) -> String {
    let from = from
        .map(|f| format!("    from: [{f}]\n"))
        .unwrap_or_default();
    format!(
        "  - name: {name}\n    match: {}\n{from}    to:\n      - forward: {to}\n",
        yq(pattern)
    )
}

/// A route (YAML list item): `pattern` from `from` answered on its connection as `rewrite`.
pub fn reply(name: &str, pattern: &str, from: &str, rewrite: &str) -> String {
    format!(
        "  - name: {name}\n    match: {}\n    from: [{from}]\n    to:\n      - reply: true\n        rewrite: {rewrite}\n",
        yq(pattern)
    )
}

/// A route (YAML list item): `pattern` from `from` handed to `function` of `script` (a path).
pub fn script(name: &str, pattern: &str, from: &str, script: &str, function: &str) -> String {
    format!(
        "  - name: {name}\n    match: {}\n    from: [{from}]\n    to:\n      - script: {}\n        fn: {function}\n",
        yq(pattern),
        yq(script)
    )
}

/// `scripts: { dir: DIR }` (YAML, top level).
pub fn scripts_dir(dir: &std::path::Path) -> String {
    format!("scripts:\n  dir: {}\n", yq(&dir.display().to_string()))
}

/// The metrics endpoint of a show built with [`show`].
pub fn metrics_addr(pb: &Patchbay) -> SocketAddr {
    pb.ready()
        .metrics
        .expect("the config has a metrics endpoint")
}

/// Every stderr line holding all `needles`; waits (bounded) until there is at least one, and returns
/// the first.
pub fn wait_log_line(pb: &Patchbay, needles: &[&str]) -> String {
    let text = pb.wait_stderr(RECV_TIMEOUT, |t| {
        t.lines().any(|l| needles.iter().all(|n| l.contains(n)))
    });
    text.lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap()
        .to_string()
}
