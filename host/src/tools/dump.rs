//! `patchbay dump [--bind ADDR] PORT`: print every OSC packet that arrives on a UDP port, one line
//! per message, in the spirit of liblo's `oscdump`.
//!
//! # Output format
//!
//! Every line starts with the receive time and the sender:
//!
//! ```text
//! HH:MM:SS.mmm IP:PORT ...
//! ```
//!
//! The receive time is the wall clock in **UTC** (no time-zone database is needed that way, and it
//! lines up with the UTC bundle time tags). A message follows as its address, its type tags with
//! the leading comma (so a message without arguments shows a lone `,`), and its values separated
//! by single spaces:
//!
//! ```text
//! 19:04:05.123 127.0.0.1:50123 /mix/fader/1 ,fsi 0.75 "lead vox" 3
//! ```
//!
//! A bundle prints a header line with its time tag (UTC, microseconds, or `immediately`) and, for a
//! scheduled time, how far it lies after (`+`) or before (`-`) the receive time; its elements follow
//! on their own lines, indented two spaces per nesting level. Every line repeats the time and sender,
//! so `grep /cue` still shows who sent what:
//!
//! ```text
//! 19:04:05.123 127.0.0.1:50123 #bundle 2024-06-01T19:04:05.623000Z (+0.500s)
//! 19:04:05.123 127.0.0.1:50123   /cue/go ,i 12
//! 19:04:05.123 127.0.0.1:50123   #bundle immediately
//! 19:04:05.123 127.0.0.1:50123     /lights/blackout ,T true
//! ```
//!
//! Values, by type tag:
//!
//! | tag       | shown as                                          | example              |
//! |-----------|---------------------------------------------------|----------------------|
//! | `i` `h`   | decimal                                           | `-12`                |
//! | `f` `d`   | shortest round-trip decimal, always with a `.` or exponent | `0.5` `1.0` `1e-7` `inf` `NaN` |
//! | `s` `S`   | double-quoted with Rust escapes (`\"` `\\` `\n` `\u{1b}`) | `"say \"go\""` |
//! | `c`       | single-quoted with the same escapes               | `'x'`                |
//! | `b`       | `blob[SIZE]:` and lowercase hex (first 64 bytes, then `...`) | `blob[3]:deadbe` |
//! | `t`       | UTC time tag as in bundle headers, or `immediately` | `2024-06-01T19:04:05.623000Z` |
//! | `r`       | `#RRGGBBAA`                                       | `#ff8000ff`          |
//! | `m`       | `midi:PPSSD1D2`                                   | `midi:00904060`      |
//! | `T` `F` `N` `I` | `true` `false` `nil` `impulse`              |                      |
//! | `[` `]`   | the elements inside `[` `]`                       | `[1 2 "x"]`          |
//!
//! Escaping strings means a hostile sender cannot put terminal control sequences on the crew's
//! screen; an address with control characters or spaces is printed quoted for the same reason.
//!
//! A datagram that does not decode prints one line with its size and the decoder's error, which
//! names the byte offset, and the dump goes on:
//!
//! ```text
//! 19:04:05.123 127.0.0.1:50123 undecodable (7 bytes): at byte 4: packet size 7 is not a multiple of 4
//! ```
//!
//! Before anything else, [`run_dump`] prints `patchbay dump: listening on IP:PORT` to stderr with
//! the address actually bound, so a caller that asked for port 0 learns the port.

use std::io::{ErrorKind, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use patchbay_plugin_api::osc::{self, DecodeError, OscArg, OscMessage, OscPacket, TimeTag};
use tokio_util::sync::CancellationToken;

/// Blob bytes shown before the rest is elided; the size is always shown in full.
const BLOB_PREVIEW_BYTES: usize = 64;

/// Larger than any UDP payload (65 507 bytes over IPv4, 65 527 over IPv6 without jumbograms), so
/// no datagram is ever truncated.
const RECV_BUFFER_BYTES: usize = 65_536;

/// Why `patchbay dump` stopped.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the bound address: {0}")]
    LocalAddr(std::io::Error),
    #[error("receiving failed: {0}")]
    Receive(std::io::Error),
    #[error("writing the output failed: {0}")]
    Output(std::io::Error),
}

/// Formats a decoded packet: one line for a message, a header line plus one line per element
/// (recursively) for a bundle. Lines are joined with `\n`; there is no trailing newline.
pub fn format_packet(packet: &OscPacket, sender: SocketAddr, received: SystemTime) -> String {
    let prefix = format!("{} {sender}", format_clock(received));
    let mut out = String::new();
    push_packet(&mut out, &prefix, packet, 0, received);
    out
}

/// Formats the one line printed for a datagram that does not decode.
pub fn format_undecodable(
    datagram: &[u8],
    error: &DecodeError,
    sender: SocketAddr,
    received: SystemTime,
) -> String {
    format!(
        "{} {sender} undecodable ({} bytes): {error}",
        format_clock(received),
        datagram.len()
    )
}

/// Listens on `bind:port` and writes one formatted line per message to `out` until `shutdown` is
/// cancelled (or `out` is closed, e.g. `patchbay dump 9000 | head`, which ends the dump cleanly).
///
/// Prints `patchbay dump: listening on IP:PORT` to stderr first. `out` is flushed after every
/// datagram so the output can be piped. Pass `std::io::stdout()` (not a lock, which is not `Send`).
pub async fn run_dump(
    bind: IpAddr,
    port: u16,
    out: impl Write + Send,
    shutdown: CancellationToken,
) -> Result<(), DumpError> {
    run_dump_notify(bind, port, out, shutdown, |local| {
        eprintln!("patchbay dump: listening on {local}");
    })
    .await
}

/// [`run_dump`] with the "listening" announcement handed to `on_listening`, so tests can learn the
/// port without scraping their own stderr.
async fn run_dump_notify(
    bind: IpAddr,
    port: u16,
    mut out: impl Write + Send,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> Result<(), DumpError> {
    let addr = SocketAddr::new(bind, port);
    let socket = tokio::net::UdpSocket::bind(addr)
        .await
        .map_err(|source| DumpError::Bind { addr, source })?;
    let local = socket.local_addr().map_err(DumpError::LocalAddr)?;
    on_listening(local);

    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    loop {
        let (len, sender) = tokio::select! {
            // Shutdown first, so a flood of traffic cannot keep the dump from stopping.
            biased;
            () = shutdown.cancelled() => return Ok(()),
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                // Some platforms report an ICMP "port unreachable" for an earlier datagram on the
                // next receive; that says nothing about this socket, so keep listening.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(DumpError::Receive(e)),
            },
        };
        let received = SystemTime::now();
        let datagram = &buf[..len];
        let text = match osc::decode(datagram) {
            Ok(packet) => format_packet(&packet, sender, received),
            Err(error) => format_undecodable(datagram, &error, sender, received),
        };
        // A blocking write on the runtime is fine here: this is a one-task CLI tool, and a reader
        // that stalls should slow the dump down rather than make it buffer without bound.
        match writeln!(out, "{text}").and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`| head`): nobody is left to print for, so stop quietly.
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(DumpError::Output(e)),
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused | ErrorKind::Interrupted
    )
}

fn push_packet(
    out: &mut String,
    prefix: &str,
    packet: &OscPacket,
    depth: usize,
    received: SystemTime,
) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(prefix);
    out.push(' ');
    for _ in 0..depth {
        out.push_str("  ");
    }
    match packet {
        OscPacket::Message(message) => push_message(out, message),
        OscPacket::Bundle(bundle) => {
            out.push_str("#bundle ");
            push_timetag(out, bundle.timetag);
            if !bundle.timetag.is_immediately() {
                out.push_str(&format!(
                    " ({})",
                    format_offset(bundle.timetag.offset_from(received))
                ));
            }
            for element in &bundle.content {
                push_packet(out, prefix, element, depth + 1, received);
            }
        }
    }
}

fn push_message(out: &mut String, message: &OscMessage) {
    let plain = message
        .address
        .chars()
        .all(|c| !c.is_control() && !c.is_whitespace() && c != '"');
    if plain {
        out.push_str(&message.address);
    } else {
        out.push_str(&format!("{:?}", message.address));
    }
    out.push_str(" ,");
    out.push_str(&message.type_tags());
    for arg in &message.args {
        out.push(' ');
        push_arg(out, arg);
    }
}

fn push_arg(out: &mut String, arg: &OscArg) {
    use std::fmt::Write as _;
    // Writing into a String cannot fail.
    let _ = match arg {
        OscArg::Int(v) => write!(out, "{v}"),
        OscArg::Long(v) => write!(out, "{v}"),
        // Debug keeps the `.0` on whole numbers and prints the shortest round-trip form.
        OscArg::Float(v) => write!(out, "{v:?}"),
        OscArg::Double(v) => write!(out, "{v:?}"),
        OscArg::String(s) | OscArg::Symbol(s) => write!(out, "{s:?}"),
        OscArg::Char(c) => write!(out, "{c:?}"),
        OscArg::Blob(bytes) => {
            let _ = write!(out, "blob[{}]:", bytes.len());
            for b in bytes.iter().take(BLOB_PREVIEW_BYTES) {
                let _ = write!(out, "{b:02x}");
            }
            if bytes.len() > BLOB_PREVIEW_BYTES {
                out.push_str("...");
            }
            Ok(())
        }
        OscArg::Time(tag) => {
            push_timetag(out, *tag);
            Ok(())
        }
        OscArg::Rgba(c) => write!(out, "#{:02x}{:02x}{:02x}{:02x}", c.r, c.g, c.b, c.a),
        OscArg::Midi(m) => write!(
            out,
            "midi:{:02x}{:02x}{:02x}{:02x}",
            m.port, m.status, m.data1, m.data2
        ),
        OscArg::True => write!(out, "true"),
        OscArg::False => write!(out, "false"),
        OscArg::Nil => write!(out, "nil"),
        OscArg::Inf => write!(out, "impulse"),
        OscArg::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                push_arg(out, item);
            }
            out.push(']');
            Ok(())
        }
    };
}

/// `2024-06-01T19:04:05.623000Z`, or `immediately`. Goes through [`TimeTag::to_unix_nanos`] so the
/// dump reads the NTP era exactly as the runtime does.
fn push_timetag(out: &mut String, tag: TimeTag) {
    if tag.is_immediately() {
        out.push_str("immediately");
        return;
    }
    let nanos = tag.to_unix_nanos();
    let secs = nanos.div_euclid(1_000_000_000);
    let micros = nanos.rem_euclid(1_000_000_000) / 1_000;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400) as i64);
    let of_day = secs.rem_euclid(86_400);
    out.push_str(&format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    ));
}

/// Receive time as `HH:MM:SS.mmm` UTC.
fn format_clock(t: SystemTime) -> String {
    // A clock before 1970 would be a broken machine; print it as midnight rather than fail.
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let of_day = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// `+0.500s` / `-1.250s`, rounded to the millisecond.
fn format_offset(nanos: i128) -> String {
    let sign = if nanos < 0 { '-' } else { '+' };
    let millis = (nanos.unsigned_abs() + 500_000) / 1_000_000;
    format!("{sign}{}.{:03}s", millis / 1000, millis % 1000)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`, valid for any day count a time tag can produce.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_plugin_api::osc::{Midi, OscBundle, Rgba};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// 2024-06-01T19:04:05.123Z.
    fn received() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_717_268_645_123)
    }

    fn sender() -> SocketAddr {
        "127.0.0.1:50123".parse().unwrap()
    }

    fn message(address: &str, args: Vec<OscArg>) -> OscPacket {
        OscPacket::Message(OscMessage::new(address, args))
    }

    #[test]
    fn message_with_every_type() {
        let at = TimeTag::from_unix_nanos(1_717_268_645_623_000_000);
        let packet = message(
            "/all",
            vec![
                OscArg::Int(-12),
                OscArg::Float(0.5),
                OscArg::Float(1.0),
                OscArg::String("say \"go\"\n\u{1b}[2J".into()),
                OscArg::Blob(vec![0xde, 0xad, 0xbe]),
                OscArg::Long(5_000_000_000),
                OscArg::Double(0.25),
                OscArg::Time(at),
                OscArg::Time(TimeTag::IMMEDIATELY),
                OscArg::Symbol("sym".into()),
                OscArg::Char('x'),
                OscArg::Rgba(Rgba {
                    r: 0xff,
                    g: 0x80,
                    b: 0,
                    a: 0xff,
                }),
                OscArg::Midi(Midi {
                    port: 0,
                    status: 0x90,
                    data1: 0x40,
                    data2: 0x60,
                }),
                OscArg::True,
                OscArg::False,
                OscArg::Nil,
                OscArg::Inf,
                OscArg::Array(vec![
                    OscArg::Int(1),
                    OscArg::Array(vec![]),
                    OscArg::String(String::new()),
                ]),
            ],
        );
        assert_eq!(
            format_packet(&packet, sender(), received()),
            "19:04:05.123 127.0.0.1:50123 /all ,iffsbhdttScrmTFNI[i[]s] -12 0.5 1.0 \
             \"say \\\"go\\\"\\n\\u{1b}[2J\" blob[3]:deadbe 5000000000 0.25 \
             2024-06-01T19:04:05.623000Z immediately \"sym\" 'x' #ff8000ff midi:00904060 \
             true false nil impulse [1 [] \"\"]"
        );
    }

    #[test]
    fn message_edge_cases() {
        let line = |packet: OscPacket| format_packet(&packet, sender(), received());
        assert_eq!(
            line(message("/ping", vec![])),
            "19:04:05.123 127.0.0.1:50123 /ping ,"
        );
        assert_eq!(
            line(message("/odd addr\u{7}", vec![])),
            "19:04:05.123 127.0.0.1:50123 \"/odd addr\\u{7}\" ,"
        );
        let long_blob = line(message("/b", vec![OscArg::Blob(vec![0xab; 100])]));
        assert_eq!(
            long_blob,
            format!(
                "19:04:05.123 127.0.0.1:50123 /b ,b blob[100]:{}...",
                "ab".repeat(64)
            )
        );
        assert_eq!(
            line(message("/b", vec![OscArg::Blob(vec![])])),
            "19:04:05.123 127.0.0.1:50123 /b ,b blob[0]:"
        );
        let v6: SocketAddr = "[::1]:9000".parse().unwrap();
        assert_eq!(
            format_packet(&message("/x", vec![]), v6, received()),
            "19:04:05.123 [::1]:9000 /x ,"
        );
    }

    #[test]
    fn nested_bundle_golden() {
        let packet = OscPacket::Bundle(OscBundle {
            timetag: TimeTag::from_unix_nanos(1_717_268_645_623_000_000),
            content: vec![
                message("/cue/go", vec![OscArg::Int(12)]),
                OscPacket::Bundle(OscBundle {
                    timetag: TimeTag::IMMEDIATELY,
                    content: vec![
                        message("/lights/blackout", vec![OscArg::True]),
                        OscPacket::Bundle(OscBundle {
                            // 1.25 s before the receive time: a late bundle.
                            timetag: TimeTag::from_unix_nanos(1_717_268_643_873_000_000),
                            content: vec![],
                        }),
                    ],
                }),
                message("/after", vec![OscArg::String("x".into())]),
            ],
        });
        let expected = "\
19:04:05.123 127.0.0.1:50123 #bundle 2024-06-01T19:04:05.623000Z (+0.500s)
19:04:05.123 127.0.0.1:50123   /cue/go ,i 12
19:04:05.123 127.0.0.1:50123   #bundle immediately
19:04:05.123 127.0.0.1:50123     /lights/blackout ,T true
19:04:05.123 127.0.0.1:50123     #bundle 2024-06-01T19:04:03.873000Z (-1.250s)
19:04:05.123 127.0.0.1:50123   /after ,s \"x\"";
        assert_eq!(format_packet(&packet, sender(), received()), expected);
    }

    #[test]
    fn timetags_across_eras() {
        let show = |tag: TimeTag| {
            let mut s = String::new();
            push_timetag(&mut s, tag);
            s
        };
        assert_eq!(
            show(TimeTag::from_unix_nanos(0)),
            "1970-01-01T00:00:00.000000Z"
        );
        // Top bit clear is era 1 (after the 2036 wrap), exactly like the runtime reads it.
        assert_eq!(show(TimeTag::new(0, 0)), "2036-02-07T06:28:16.000000Z");
        assert_eq!(
            show(TimeTag::new(0x8000_0000, 0)),
            "1968-01-20T03:14:08.000000Z"
        );
        assert_eq!(
            show(TimeTag::new(0x8000_0000, 0x8000_0000)),
            "1968-01-20T03:14:08.500000Z"
        );
        assert_eq!(show(TimeTag::new(0, 2)), "2036-02-07T06:28:16.000000Z");
        assert_eq!(
            show(TimeTag::from_unix_nanos(951_782_400_000_000_000)),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn undecodable_line() {
        let datagram = b"/foo\0\0\0";
        let error = osc::decode(datagram).unwrap_err();
        let line = format_undecodable(datagram, &error, sender(), received());
        assert_eq!(
            line,
            format!("19:04:05.123 127.0.0.1:50123 undecodable (7 bytes): {error}")
        );
        assert!(line.contains("undecodable (7 bytes): at byte "), "{line}");
    }

    /// A `Write` into memory that the test can read while `run_dump` owns the writer.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl SharedBuf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        /// Polls until `lines` complete lines have been written, for at most 5 s.
        async fn wait_for_lines(&self, lines: usize) -> Vec<String> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let text = self.text();
                if text.matches('\n').count() >= lines {
                    return text.lines().map(str::to_string).collect();
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out waiting for {lines} lines, have: {text:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loopback_round_trip() {
        let out = SharedBuf::default();
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run_dump_notify(
            IpAddr::from([127, 0, 0, 1]),
            0,
            out.clone(),
            shutdown.clone(),
            move |local| {
                let _ = tx.send(local);
            },
        ));
        let local = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("dump did not start listening")
            .unwrap();
        assert!(local.ip().is_loopback() && local.port() != 0, "{local}");

        let target = format!("127.0.0.1:{}", local.port());
        let args: Vec<String> = ["1", "s:go", "[", "T", "0.5", "]", "b:beef"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let sent = tokio::task::spawn_blocking(move || {
            crate::tools::send::send(&target, "/cue/go", &args)
        })
        .await
        .unwrap()
        .unwrap();
        assert!(sent > 0);

        let lines = out.wait_for_lines(1).await;
        let line = &lines[0];
        // The time varies; check its shape, then the rest exactly.
        let (clock, rest) = line.split_once(' ').unwrap();
        assert_eq!(clock.len(), "HH:MM:SS.mmm".len(), "{line}");
        assert_eq!(&clock[2..3], ":");
        assert_eq!(&clock[8..9], ".");
        let (from, rest) = rest.split_once(' ').unwrap();
        let from: SocketAddr = from.parse().unwrap();
        assert!(from.ip().is_loopback(), "{line}");
        assert_eq!(rest, "/cue/go ,is[Tf]b 1 \"go\" [true 0.5] blob[2]:beef");

        // Garbage gets one line and the dump keeps going.
        let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.send_to(b"/foo\0\0\0", local).unwrap();
        raw.send_to(b"#bundle\0\0\0\0\0\0\0\0\x01", local).unwrap();
        let lines = out.wait_for_lines(3).await;
        assert!(
            lines[1].contains(" undecodable (7 bytes): at byte "),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with(" #bundle immediately"), "{}", lines[2]);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("dump did not stop on shutdown")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn port_in_use_is_a_bind_error() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = run_dump(
            IpAddr::from([127, 0, 0, 1]),
            port,
            std::io::sink(),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on 127.0.0.1:{port}: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn closed_output_ends_the_dump_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run_dump_notify(
            IpAddr::from([127, 0, 0, 1]),
            0,
            Closed,
            CancellationToken::new(),
            move |local| {
                let _ = tx.send(local);
            },
        ));
        let local = rx.await.unwrap();
        let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.send_to(b"/x\0\0,\0\0\0", local).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("dump did not stop when its output closed")
            .unwrap()
            .unwrap();
    }
}
