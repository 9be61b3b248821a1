//! Helpers shared by the issue-3 end-to-end tests (multicast, broadcast, raw, bundles, metrics,
//! config kinds) that the harness in `tests/src/lib.rs` does not have: a Prometheus scrape over plain
//! `TcpStream` and a parser for its text lines, multicast and broadcast test sockets pinned to
//! loopback, free ports, and a poll-until helper.
//!
//! Multicast sockets are made with libc (the tests crate already depends on it) rather than socket2:
//! SO_REUSEADDR must be set before `bind`, and IP_MULTICAST_IF has no std API. Every multicast socket
//! here sends on 127.0.0.1 with ttl 0, so nothing leaves the machine.

#![allow(dead_code)] // each test file uses a different part of this module

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use patchbay_tests::{Receiver, RECV_TIMEOUT};

// ---------------------------------------------------------------------------------------------------
// Polling

/// Polls `f` until it returns `Some`, every 20 ms, for at most `timeout`; panics with `what` and the
/// last value `describe` gave.
pub fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not so within {timeout:?}; last seen:\n{}",
            describe()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------------
// Ports and groups

/// A UDP port that was free on 0.0.0.0 a moment ago (bound and released). Unprivileged.
pub fn free_udp_port() -> u16 {
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind 0.0.0.0:0");
    sock.local_addr().expect("local_addr").port()
}

/// `n` distinct UDP ports that were free on 0.0.0.0 a moment ago (all held while picking).
pub fn free_udp_ports(n: usize) -> Vec<u16> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("0.0.0.0:0").expect("bind 0.0.0.0:0"))
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().expect("local_addr").port())
        .collect()
}

/// A multicast group in 239.255.0.0/16 (administratively scoped) that differs between tests and test
/// processes running at the same time, so their sockets (SO_REUSEADDR on one port) never mix.
pub fn unique_group() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let mixed = pid
        .wrapping_mul(2_654_435_761)
        .wrapping_add(n.wrapping_mul(40_503));
    let x = ((mixed >> 8) & 0xff) as u8;
    let y = (mixed & 0xff) as u8;
    // Avoid .0 and .255 in the last octet (some tools treat them specially).
    Ipv4Addr::new(239, 255, x, y.clamp(1, 254))
}

// ---------------------------------------------------------------------------------------------------
// Multicast sockets (loopback only)

fn check(rc: libc::c_int, what: &str) {
    assert!(
        rc == 0,
        "{what} failed: {}",
        std::io::Error::last_os_error()
    );
}

fn setsockopt<T>(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: &T, what: &str) {
    // SAFETY: `value` points to a live `T` of the size we pass; `fd` is a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(rc, what);
}

fn in_addr(ip: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from_ne_bytes(ip.octets()),
    }
}

/// A UDP socket with SO_REUSEADDR bound to `addr` (so it can share a multicast group's port with
/// patchbay's channel socket, which sets SO_REUSEADDR too).
fn reuse_socket(addr: SocketAddrV4) -> UdpSocket {
    // SAFETY: plain socket(2); the fd is checked and then owned by the UdpSocket. CLOEXEC, like std's
    // sockets, so a patchbay spawned meanwhile does not inherit it.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh socket we own; the UdpSocket closes it on drop.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &one,
        "SO_REUSEADDR",
    );
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: in_addr(*addr.ip()),
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in of the size we pass.
    let rc = unsafe {
        libc::bind(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(rc, &format!("bind {addr}"));
    sock
}

/// Pins a socket's multicast sends to 127.0.0.1 (IP_MULTICAST_IF) with ttl 0 and loop on, so its
/// datagrams to a group never leave this machine.
pub fn pin_multicast_to_loopback(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    setsockopt(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MULTICAST_IF,
        &in_addr(Ipv4Addr::LOCALHOST),
        "IP_MULTICAST_IF 127.0.0.1",
    );
    sock.set_multicast_ttl_v4(0).expect("IP_MULTICAST_TTL 0");
    sock.set_multicast_loop_v4(true).expect("IP_MULTICAST_LOOP");
}

/// A sender on 127.0.0.1 (ephemeral port) whose multicast goes out on loopback only (see
/// [`pin_multicast_to_loopback`]). Wrapped in a [`Receiver`] for its `send_to`/`recv` helpers.
pub fn multicast_sender() -> Receiver {
    let rx = Receiver::new();
    pin_multicast_to_loopback(&rx.sock);
    rx
}

/// A socket bound to `group:port` with SO_REUSEADDR and joined to `group` on 127.0.0.1: it gets a
/// copy of whatever is sent to the group on loopback (patchbay's channel socket gets its own copy).
pub fn multicast_member(group: Ipv4Addr, port: u16) -> Receiver {
    let sock = reuse_socket(SocketAddrV4::new(group, port));
    sock.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
        .unwrap_or_else(|e| panic!("join {group} on 127.0.0.1: {e}"));
    pin_multicast_to_loopback(&sock);
    Receiver { sock }
}

// ---------------------------------------------------------------------------------------------------
// Broadcast sockets (127.255.255.255 only)

/// The loopback broadcast address: a datagram sent there stays on this machine.
pub const LOOPBACK_BROADCAST: Ipv4Addr = Ipv4Addr::new(127, 255, 255, 255);

/// A socket on 0.0.0.0:`port` (a socket bound to one address does not see broadcasts) with
/// SO_BROADCAST, for receiving patchbay's broadcasts and sending ours to 127.255.255.255.
pub fn broadcast_socket(port: u16) -> Receiver {
    let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .unwrap_or_else(|e| panic!("bind 0.0.0.0:{port}: {e}"));
    sock.set_broadcast(true).expect("SO_BROADCAST");
    Receiver { sock }
}

/// `127.255.255.255:port`.
pub fn loopback_broadcast(port: u16) -> SocketAddr {
    SocketAddr::from((LOOPBACK_BROADCAST, port))
}

// ---------------------------------------------------------------------------------------------------
// Receiving

/// Receives datagrams until `n` have arrived (each within [`RECV_TIMEOUT`] of the previous one).
pub fn recv_n(rx: &Receiver, n: usize, what: &str) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < n {
        match rx.recv_timeout(RECV_TIMEOUT) {
            Some((bytes, _)) => got.push(bytes),
            None => panic!(
                "{what}: {} of {n} datagrams arrived at {} within {RECV_TIMEOUT:?} each: {:?}",
                got.len(),
                rx.addr(),
                got.iter()
                    .map(|b| patchbay_tests::osc::address_of(b))
                    .collect::<Vec<_>>()
            ),
        }
    }
    got
}

// ---------------------------------------------------------------------------------------------------
// Metrics over HTTP

/// One Prometheus sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// `GET /metrics` over a plain TcpStream (HTTP/1.1, `Connection: close`); returns the body. Panics on
/// anything but a 200 with a body.
pub fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(
        status, 200,
        "GET /metrics on {addr}: status {status}\n{body}"
    );
    body
}

/// A bare HTTP GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, RECV_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to the metrics endpoint {addr}: {e}"));
    stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(RECV_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read the response from {addr}: {e}"));
    let text = String::from_utf8(raw).expect("the response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in the response:\n{text}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    if let Some(len) = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    }) {
        assert_eq!(body.len(), len, "Content-Length does not match the body");
    }
    (status, body.to_string())
}

/// Parses Prometheus text exposition: `#` lines and blank lines are skipped, every other line must be
/// `name value` or `name{k="v",...} value` (panics on anything else, naming the line).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_sample(line).unwrap_or_else(|e| panic!("metrics line {line:?}: {e}")));
    }
    out
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value after the name")?;
    let name = line[..name_end].to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let bytes = line.as_bytes();
    let mut i = name_end;
    let mut labels = Vec::new();
    if bytes[i] == b'{' {
        i += 1;
        loop {
            if bytes.get(i) == Some(&b'}') {
                i += 1;
                break;
            }
            let eq = line[i..].find('=').ok_or("label without =")? + i;
            let key = line[i..eq].trim().to_string();
            if bytes.get(eq + 1) != Some(&b'"') {
                return Err("label value is not quoted".into());
            }
            // The value, with the \\ \" \n escapes of the text format.
            let mut value = String::new();
            i = eq + 2;
            loop {
                match *bytes.get(i).ok_or("unterminated label value")? {
                    b'\\' => {
                        let e = *bytes.get(i + 1).ok_or("dangling escape")?;
                        value.push(if e == b'n' { '\n' } else { e as char });
                        i += 2;
                    }
                    b'"' => {
                        i += 1;
                        break;
                    }
                    _ => {
                        let ch = line[i..].chars().next().ok_or("cut label value")?;
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            labels.push((key, value));
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err("expected , or } after a label".into()),
            }
        }
    }
    let mut parts = line[i..].split_whitespace();
    let value_text = parts.next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    // An optional timestamp may follow; nothing else.
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|e| format!("timestamp {ts:?}: {e}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// A parsed scrape with lookups.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn scrape(addr: SocketAddr) -> Metrics {
        let text = scrape(addr);
        let samples = parse_prometheus(&text);
        Metrics { text, samples }
    }

    /// The value of `name` with exactly `labels` (order-insensitive), if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.sort();
        self.samples
            .iter()
            .find(|s| {
                let mut have: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                have.sort();
                s.name == name && have == want
            })
            .map(|s| s.value)
    }

    /// A channel-labelled metric.
    pub fn channel(&self, name: &str, channel: &str) -> Option<f64> {
        self.get(name, &[("channel", channel)])
    }

    /// A route-labelled metric.
    pub fn route(&self, name: &str, route: &str) -> Option<f64> {
        self.get(name, &[("route", route)])
    }

    /// An unlabelled metric.
    pub fn plain(&self, name: &str) -> Option<f64> {
        self.get(name, &[])
    }
}

/// Scrapes until `ok` holds for the scrape (bounded), returning that scrape; panics with the last one.
pub fn wait_metrics(addr: SocketAddr, what: &str, ok: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let m = Metrics::scrape(addr);
        if ok(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the metrics did not get there within {RECV_TIMEOUT:?}; last scrape:\n{}",
            m.text
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the counter `name{labels}` reaches `value` (metrics are counted on other tasks, possibly
/// a moment after the datagram that caused them left), then asserts it is exactly `value` (a counter
/// that overshoots fails at once, e.g. a feedback storm) and returns the scrape.
pub fn wait_value(addr: SocketAddr, name: &str, labels: &[(&str, &str)], value: f64) -> Metrics {
    let m = wait_metrics(addr, &format!("{name}{labels:?} reaches {value}"), |m| {
        m.get(name, labels).is_some_and(|v| v >= value)
    });
    assert_eq!(
        m.get(name, labels),
        Some(value),
        "{name}{labels:?} went past {value}; scrape:\n{}",
        m.text
    );
    m
}
