//! TCP peers for the `kind: tcp` end-to-end tests (issue 7): the framings written straight from the
//! specs (an oracle independent of the host's codec), a blocking client that reads frames with a bound,
//! accept with a bound for the test-side servers a client channel connects to, a connection from a
//! chosen loopback source address (for allow lists), and the third-party TCP senders (liblo's
//! `oscsend`, python-osc's TCP client).
//!
//! Framings:
//! - slip (OSC 1.1): each packet is END (0xC0), the packet with END -> ESC ESC_END and ESC -> ESC
//!   ESC_ESC, then END. The leading END ("double END" style) is what python-osc and most senders write;
//!   the reader skips any number of ENDs between packets.
//! - length (OSC 1.0): a big-endian u32 byte count, then the packet.
//! - lines: the text, then the terminator.
//!
//! Every read waits with a bound and fails with what it saw; nothing sleeps to assert.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    osc, python, python_script, run_bounded, ChannelInfo, Finished, Patchbay, EXIT_TIMEOUT,
    READY_TIMEOUT, RECV_TIMEOUT,
};

pub const SLIP_END: u8 = 0xC0;
pub const SLIP_ESC: u8 = 0xDB;
pub const SLIP_ESC_END: u8 = 0xDC;
pub const SLIP_ESC_ESC: u8 = 0xDD;

/// How packets are cut out of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    Slip,
    Length,
    /// Text lines ending in the given terminator.
    Lines(Vec<u8>),
}

impl Framing {
    /// `packet` framed (lines: the text and the terminator).
    pub fn encode(&self, packet: &[u8]) -> Vec<u8> {
        match self {
            Framing::Slip => slip_encode(packet),
            Framing::Length => length_encode(packet),
            Framing::Lines(terminator) => [packet, terminator.as_slice()].concat(),
        }
    }
}

/// END, the escaped packet, END.
pub fn slip_encode(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packet.len() + 2);
    out.push(SLIP_END);
    for &b in packet {
        match b {
            SLIP_END => out.extend_from_slice(&[SLIP_ESC, SLIP_ESC_END]),
            SLIP_ESC => out.extend_from_slice(&[SLIP_ESC, SLIP_ESC_ESC]),
            _ => out.push(b),
        }
    }
    out.push(SLIP_END);
    out
}

/// The big-endian u32 size, then the packet.
pub fn length_encode(packet: &[u8]) -> Vec<u8> {
    let mut out = (packet.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(packet);
    out
}

/// Cuts frames out of the bytes a peer sent, as they come in.
#[derive(Debug, Clone)]
pub struct FrameReader {
    framing: Framing,
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new(framing: Framing) -> FrameReader {
        FrameReader {
            framing,
            buf: Vec::new(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received that do not make a whole frame yet.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// The next whole frame, `Ok(None)` if there is none yet, `Err` if the stream is not well framed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, String> {
        match &self.framing {
            Framing::Length => {
                if self.buf.len() < 4 {
                    return Ok(None);
                }
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if len > 16 << 20 {
                    return Err(format!(
                        "length prefix {len} (bytes {:02x?}): not a length-framed stream",
                        &self.buf[..4]
                    ));
                }
                if self.buf.len() < 4 + len {
                    return Ok(None);
                }
                let frame = self.buf[4..4 + len].to_vec();
                self.buf.drain(..4 + len);
                Ok(Some(frame))
            }
            Framing::Slip => {
                // ENDs between packets (a leading END, double ENDs) delimit empty frames: skipped.
                let start = match self.buf.iter().position(|&b| b != SLIP_END) {
                    Some(i) => i,
                    None => {
                        self.buf.clear();
                        return Ok(None);
                    }
                };
                let Some(end) = self.buf[start..].iter().position(|&b| b == SLIP_END) else {
                    self.buf.drain(..start);
                    return Ok(None);
                };
                let raw = &self.buf[start..start + end];
                let mut frame = Vec::with_capacity(raw.len());
                let mut i = 0;
                while i < raw.len() {
                    match raw[i] {
                        SLIP_ESC => {
                            match raw.get(i + 1) {
                                Some(&SLIP_ESC_END) => frame.push(SLIP_END),
                                Some(&SLIP_ESC_ESC) => frame.push(SLIP_ESC),
                                other => {
                                    return Err(format!(
                                        "bad SLIP escape: ESC followed by {other:02x?} in\n{}",
                                        osc::hexdump(raw)
                                    ))
                                }
                            }
                            i += 2;
                        }
                        b => {
                            frame.push(b);
                            i += 1;
                        }
                    }
                }
                self.buf.drain(..start + end + 1);
                Ok(Some(frame))
            }
            Framing::Lines(terminator) => {
                let t = terminator.as_slice();
                assert!(!t.is_empty(), "a lines framing needs a terminator");
                let Some(at) = self.buf.windows(t.len()).position(|w| w == t) else {
                    return Ok(None);
                };
                let line = self.buf[..at].to_vec();
                self.buf.drain(..at + t.len());
                Ok(Some(line))
            }
        }
    }
}

/// What one bounded read of a [`TcpClient`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpRecv {
    Frame(Vec<u8>),
    /// The peer closed the connection: "end of stream" (read returned 0) or the error it gave.
    Closed(String),
    TimedOut,
}

/// One end of a TCP connection on 127.0.0.1 speaking one framing, read with bounds.
pub struct TcpClient {
    pub stream: TcpStream,
    reader: FrameReader,
    framing: Framing,
    closed: Option<String>,
    name: String,
}

impl TcpClient {
    /// Connects to `to` (with [`RECV_TIMEOUT`] as the bound), TCP_NODELAY on.
    pub fn connect(to: SocketAddr, framing: Framing) -> TcpClient {
        let stream = TcpStream::connect_timeout(&to, RECV_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
        TcpClient::from_stream(stream, framing)
    }

    /// Connects to `to` from the loopback address `local` (any port), e.g. 127.0.0.2 to be outside an
    /// allow list of 127.0.0.1/32. All of 127.0.0.0/8 is this machine.
    pub fn connect_from(local: Ipv4Addr, to: SocketAddr, framing: Framing) -> TcpClient {
        TcpClient::from_stream(connect_from(local, to), framing)
    }

    /// Wraps an accepted or connected stream.
    pub fn from_stream(stream: TcpStream, framing: Framing) -> TcpClient {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_write_timeout(Some(RECV_TIMEOUT))
            .expect("write timeout");
        let name = match (stream.local_addr(), stream.peer_addr()) {
            (Ok(l), Ok(p)) => format!("tcp {l} -> {p}"),
            _ => "tcp (unconnected)".to_string(),
        };
        TcpClient {
            stream,
            reader: FrameReader::new(framing.clone()),
            framing,
            closed: None,
            name,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.stream.peer_addr().expect("peer_addr")
    }

    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// Writes `packet` in this connection's framing.
    pub fn send(&mut self, packet: &[u8]) {
        let framed = self.framing.encode(packet);
        self.send_raw(&framed);
    }

    /// Writes bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{}: write {} bytes: {e}", self.name, bytes.len()));
    }

    /// Writes bytes, returning the error instead of failing (the server may have closed on us).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame within `timeout`, or how the connection ended, or `TimedOut`. Panics if the peer
    /// sends something that is not well framed.
    pub fn recv_timeout(&mut self, timeout: Duration) -> TcpRecv {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => return TcpRecv::Frame(frame),
                Ok(None) => {}
                Err(e) => panic!("{}: the peer sent a badly framed stream: {e}", self.name),
            }
            if let Some(how) = &self.closed {
                return TcpRecv::Closed(how.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return TcpRecv::TimedOut;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("read timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => self.closed = Some("end of stream".to_string()),
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(format!("error: {e}")),
            }
        }
    }

    /// A frame that must arrive within [`RECV_TIMEOUT`].
    pub fn expect(&mut self, what: &str) -> Vec<u8> {
        match self.recv_timeout(RECV_TIMEOUT) {
            TcpRecv::Frame(f) => f,
            TcpRecv::Closed(how) => panic!(
                "{what}: {} was closed ({how}) before a frame arrived; unframed bytes: {:02x?}",
                self.name,
                self.reader.pending()
            ),
            TcpRecv::TimedOut => panic!(
                "{what}: no frame on {} within {RECV_TIMEOUT:?}; unframed bytes: {:02x?}",
                self.name,
                self.reader.pending()
            ),
        }
    }

    /// Receives one frame and asserts it is exactly `expected`.
    pub fn expect_bytes(&mut self, expected: &[u8], what: &str) {
        let got = self.expect(what);
        crate::assert_bytes(&got, expected, what);
    }

    /// Frames until one for which `last` holds (returned last), within [`RECV_TIMEOUT`] in all.
    pub fn until(&mut self, what: &str, last: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut got: Vec<Vec<u8>> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left) {
                TcpRecv::Frame(f) => {
                    let done = last(&f);
                    got.push(f);
                    if done {
                        return got;
                    }
                }
                other => panic!(
                    "{what}: on {} the closing frame did not come ({other:?}); got before: {:?}",
                    self.name,
                    got.iter().map(|f| describe(f)).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Frames until one equal to `barrier`; returns those before it.
    pub fn until_barrier(&mut self, barrier: &[u8]) -> Vec<Vec<u8>> {
        let mut got = self.until(&format!("barrier {}", describe(barrier)), |f| f == barrier);
        got.pop();
        got
    }

    /// Waits (within [`RECV_TIMEOUT`]) for the peer to close the connection; returns how (end of
    /// stream or the error) and the frames that came before.
    pub fn expect_closed(&mut self, what: &str) -> (String, Vec<Vec<u8>>) {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left) {
                TcpRecv::Frame(f) => frames.push(f),
                TcpRecv::Closed(how) => return (how, frames),
                TcpRecv::TimedOut => panic!(
                    "{what}: {} is still open after {RECV_TIMEOUT:?}; frames meanwhile: {:?}, unframed bytes: {:02x?}",
                    self.name,
                    frames.iter().map(|f| describe(f)).collect::<Vec<_>>(),
                    self.reader.pending()
                ),
            }
        }
    }

    /// Like [`expect_closed`](Self::expect_closed) for a stream whose framing we do not parse (the
    /// peer may answer in another framing before closing): raw bytes until the close.
    pub fn expect_closed_raw(&mut self, what: &str) -> (String, Vec<u8>) {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut bytes = std::mem::take(&mut self.reader.buf);
        let mut buf = vec![0u8; 65_536];
        loop {
            if let Some(how) = self.closed.clone() {
                return (how, bytes);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what}: {} is still open after {RECV_TIMEOUT:?}; bytes meanwhile: {:02x?}",
                self.name,
                bytes
            );
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("read timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => self.closed = Some("end of stream".to_string()),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(format!("error: {e}")),
            }
        }
    }
}

/// A frame for assertion messages: the OSC address if it looks like one, else a hex dump.
pub fn describe(frame: &[u8]) -> String {
    if frame.first() == Some(&b'/') || frame.starts_with(b"#bundle") {
        osc::address_of(frame)
    } else {
        format!("{:02x?}", &frame[..frame.len().min(32)])
    }
}

/// A connected TCP stream from `local` (any port) to `to`, made with libc: std has no bind before
/// connect. IPv4 only.
pub fn connect_from(local: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let SocketAddr::V4(to) = to else {
        panic!("connect_from: {to} is not IPv4")
    };
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    }
    // SAFETY: plain socket(2); the fd is checked and then owned by the TcpStream (closed on drop).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh socket we own.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let from = sockaddr(SocketAddrV4::new(local, 0));
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `from` is a valid sockaddr_in of the size we pass.
    let rc = unsafe {
        libc::bind(
            fd,
            &from as *const libc::sockaddr_in as *const libc::sockaddr,
            size,
        )
    };
    assert_eq!(rc, 0, "bind {local}:0: {}", std::io::Error::last_os_error());
    let dest = sockaddr(to);
    // SAFETY: `dest` is a valid sockaddr_in of the size we pass; a blocking connect on loopback.
    let rc = unsafe {
        libc::connect(
            fd,
            &dest as *const libc::sockaddr_in as *const libc::sockaddr,
            size,
        )
    };
    assert_eq!(
        rc,
        0,
        "connect {local} -> {to}: {}",
        std::io::Error::last_os_error()
    );
    stream
}

/// Accepts one connection within `timeout` (the listener is left non-blocking; the stream is
/// blocking). `None` when nobody connected in time.
pub fn accept_timeout(
    listener: &TcpListener,
    timeout: Duration,
) -> Option<(TcpStream, SocketAddr)> {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, from)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return Some((stream, from));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return None;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("accept on {:?}: {e}", listener.local_addr()),
        }
    }
}

/// Accepts one connection that must come within [`READY_TIMEOUT`] (a client channel connecting or
/// reconnecting), wrapped in the given framing.
pub fn expect_accept(listener: &TcpListener, framing: Framing, what: &str) -> TcpClient {
    let (stream, _) = accept_timeout(listener, READY_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "{what}: nobody connected to {:?} within {READY_TIMEOUT:?}",
            listener.local_addr()
        )
    });
    TcpClient::from_stream(stream, framing)
}

impl Patchbay {
    /// Polls the ready file until `pred` holds for channel `channel`; returns that channel's entry.
    /// Panics with the last ready file after `timeout`.
    pub fn wait_channel(
        &self,
        channel: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&ChannelInfo) -> bool,
    ) -> ChannelInfo {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.reread_ready() {
                Ok(ready) => {
                    let info = ready.channel(channel).clone();
                    if pred(&info) {
                        return info;
                    }
                    ready.raw.to_string()
                }
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "{what}: the ready file's channel {channel:?} did not get there within {timeout:?}; last: {last}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Third-party TCP senders

/// `program` found on `$PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Runs liblo's `oscsend URL ADDRESS TYPES ARGS...` (bounded) and asserts it succeeded. Fails (never
/// skips) when `oscsend` is missing: it comes from Debian's liblo-tools, which `.ci/run` installs.
pub fn oscsend(url: &str, address: &str, types: &str, args: &[&str]) -> Finished {
    let Some(bin) = find_in_path("oscsend") else {
        panic!(
            "`oscsend` is not installed. It comes from Debian's liblo-tools, which .ci/run installs \
             (`apt-get install -y liblo-tools`); run .ci/run or install it, then run the tests again."
        );
    };
    let done = run_bounded(
        Command::new(bin)
            .arg(url)
            .arg(address)
            .arg(types)
            .args(args),
        EXIT_TIMEOUT,
    );
    assert_eq!(
        done.code,
        Some(0),
        "oscsend {url} {address} {types} {args:?} failed:\n{}",
        done.output()
    );
    done
}

/// Runs `tests/python/tcp_sender.py`: python-osc's `SimpleTCPClient` in `mode` ("1.0": length
/// prefix, "1.1": SLIP) connects to `to`, sends `spec` (the format of `sender.py`), then waits for
/// `replies` messages on the same connection. Returns the replies (JSON lines: address and args).
pub fn python_tcp_send(to: SocketAddr, mode: &str, spec: &Value, replies: usize) -> Vec<Value> {
    let done = run_bounded(
        Command::new(python())
            .arg(python_script("tcp_sender.py"))
            .arg(to.to_string())
            .arg(mode)
            .arg(spec.to_string())
            .arg(replies.to_string())
            .stdin(std::process::Stdio::null()),
        EXIT_TIMEOUT,
    );
    assert_eq!(
        done.code,
        Some(0),
        "tcp_sender.py (mode {mode}) failed:\n{}",
        done.output()
    );
    done.stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("tcp_sender.py line {l:?}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slip_round_trips_with_escapes_and_skips_extra_ends() {
        let packet = [b'/', SLIP_END, 0, SLIP_ESC, 7, SLIP_ESC_END];
        let framed = slip_encode(&packet);
        assert_eq!(
            framed,
            vec![
                SLIP_END,
                b'/',
                SLIP_ESC,
                SLIP_ESC_END,
                0,
                SLIP_ESC,
                SLIP_ESC_ESC,
                7,
                SLIP_ESC_END,
                SLIP_END
            ]
        );
        let mut r = FrameReader::new(Framing::Slip);
        // Fed a byte at a time, with extra ENDs around: the same packet, then nothing.
        let mut stream = vec![SLIP_END, SLIP_END];
        stream.extend_from_slice(&framed);
        stream.extend_from_slice(&framed[1..]);
        let mut frames = Vec::new();
        for b in stream {
            r.push(&[b]);
            while let Some(f) = r.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames, vec![packet.to_vec(), packet.to_vec()]);
        let mut bad = FrameReader::new(Framing::Slip);
        bad.push(&[SLIP_END, b'/', SLIP_ESC, b'A', SLIP_END]);
        assert!(bad.next_frame().is_err());
    }

    #[test]
    fn length_and_lines_cut_frames_across_reads() {
        let mut r = FrameReader::new(Framing::Length);
        let framed = [length_encode(b"/a\0\0,\0\0\0"), length_encode(b"")].concat();
        r.push(&framed[..3]);
        assert_eq!(r.next_frame().unwrap(), None);
        r.push(&framed[3..]);
        assert_eq!(r.next_frame().unwrap(), Some(b"/a\0\0,\0\0\0".to_vec()));
        assert_eq!(r.next_frame().unwrap(), Some(Vec::new()));
        assert_eq!(r.next_frame().unwrap(), None);

        let mut l = FrameReader::new(Framing::Lines(b"\r\n".to_vec()));
        l.push(b"PLAY 1\r");
        assert_eq!(l.next_frame().unwrap(), None);
        l.push(b"\nSTOP\r\n");
        assert_eq!(l.next_frame().unwrap(), Some(b"PLAY 1".to_vec()));
        assert_eq!(l.next_frame().unwrap(), Some(b"STOP".to_vec()));
        assert_eq!(l.next_frame().unwrap(), None);
    }
}
