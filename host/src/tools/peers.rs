//! `patchbay peers [ADDRESS] [--port PORT] [--wait-ms MS] [--bind IP]`: send one peerpy discovery
//! `PING` and list who answers.
//!
//! `ADDRESS` is an IP (the port is `--port`, default 1024 as peerpy uses) or `IP:PORT`; the default
//! is `127.255.255.255`, this machine only. On a show network use the broadcast address,
//! `patchbay peers 255.255.255.255` (what peerpy's `get_local_peers` pings) or the subnet's.
//!
//! The `PING` (`PING|pinger=IP:PORT`, padded to 128 bytes) comes from a socket bound to `--bind`
//! (default 0.0.0.0) on a free port, with SO_BROADCAST; its `pinger` is the address the machine
//! sends from toward `ADDRESS`, and that socket's port, because peerpy answers the address written
//! in the `PING`. Answers are read until `--wait-ms` (default 500, peerpy's own wait) have passed.
//!
//! # Output
//!
//! One line per peer that answered, on standard output: the listening address it declares
//! (`ponger`), and where the answer really came from:
//!
//! ```text
//! 192.168.1.20:50123 from 192.168.1.20:1024
//! 127.0.0.1:9100 from 127.0.0.1:41234
//! ```
//!
//! The same answer twice is listed once. Datagrams that are not a well-formed `PONG` are counted
//! and reported on standard error, never printed (a hostile answer cannot put text on the crew's
//! screen). Standard error also says what was sent; exit status 0 whether or not anyone answered.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::channel::peer::discovery::{self, PEERPY_PORT};

/// What to ask and how long to listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeersOptions {
    pub target: SocketAddr,
    pub bind: IpAddr,
    pub wait: Duration,
}

impl Default for PeersOptions {
    fn default() -> Self {
        PeersOptions {
            target: (Ipv4Addr::new(127, 255, 255, 255), PEERPY_PORT).into(),
            bind: Ipv4Addr::UNSPECIFIED.into(),
            wait: Duration::from_millis(500),
        }
    }
}

/// One answer: the address the peer declares, and the answer's real source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub ponger: SocketAddr,
    pub source: SocketAddr,
}

/// What one round of discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The `pinger` we wrote (our socket's address as peers should see it).
    pub pinger: SocketAddr,
    /// Distinct answers, in arrival order.
    pub answers: Vec<Answer>,
    /// Datagrams that were not a well-formed `PONG`.
    pub ignored: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("`{0}` is not an IP address or IP:PORT")]
    Address(String),
    #[error("cannot bind a UDP socket on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot send the PING to {target}: {source}")]
    Send {
        target: SocketAddr,
        source: io::Error,
    },
    #[error("cannot receive answers: {0}")]
    Recv(io::Error),
}

/// `IP` (with `port`) or `IP:PORT`.
pub fn parse_target(text: &str, port: u16) -> Result<SocketAddr, PeersError> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    text.parse()
        .map_err(|_| PeersError::Address(text.to_string()))
}

/// Sends one `PING` and collects the answers for `options.wait`.
pub fn discover(options: &PeersOptions) -> Result<Found, PeersError> {
    let bind = SocketAddr::new(options.bind, 0);
    let socket = UdpSocket::bind(bind).map_err(|source| PeersError::Bind { addr: bind, source })?;
    socket
        .set_broadcast(true)
        .map_err(|source| PeersError::Bind { addr: bind, source })?;
    let local = socket
        .local_addr()
        .map_err(|source| PeersError::Bind { addr: bind, source })?;
    let ip = if options.bind.is_unspecified() {
        discovery::local_ip_towards(options.target)
    } else {
        options.bind
    };
    let pinger = SocketAddr::new(ip, local.port());
    socket
        .send_to(&discovery::ping_datagram(pinger), options.target)
        .map_err(|source| PeersError::Send {
            target: options.target,
            source,
        })?;

    let mut found = Found {
        pinger,
        answers: Vec::new(),
        ignored: 0,
    };
    let deadline = Instant::now() + options.wait;
    let mut buf = [0u8; discovery::MAX_DATAGRAM + 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(found);
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(PeersError::Recv)?;
        let (len, source) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(found)
            }
            // An ICMP error for the PING (nobody on a unicast target's port), or a signal.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(PeersError::Recv(e)),
        };
        match discovery::parse_pong(&buf[..len]) {
            Ok(ponger) => {
                let answer = Answer { ponger, source };
                if !found.answers.contains(&answer) {
                    found.answers.push(answer);
                }
            }
            Err(_) => found.ignored += 1,
        }
    }
}

/// The output line for one answer.
pub fn format_answer(answer: &Answer) -> String {
    format!("{} from {}", answer.ponger, answer.source)
}

/// `patchbay peers`: discover, print the answers to `out` and a summary to `err`.
pub fn run_peers(
    options: &PeersOptions,
    mut out: impl Write,
    mut err: impl Write,
) -> anyhow::Result<()> {
    let found = discover(options)?;
    // The PING is already out; say what was sent before the results.
    writeln!(
        err,
        "patchbay peers: PING from {} to {}, waited {} ms",
        found.pinger,
        options.target,
        options.wait.as_millis()
    )?;
    for answer in &found.answers {
        writeln!(out, "{}", format_answer(answer))?;
    }
    out.flush()?;
    let ignored = match found.ignored {
        0 => String::new(),
        n => format!("; ignored {n} datagram(s) that were not a PONG"),
    };
    writeln!(
        err,
        "patchbay peers: {} answer(s){ignored}",
        found.answers.len()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::peer::discovery::{respond, Responder};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("127.255.255.255", 1024).unwrap(),
            "127.255.255.255:1024".parse().unwrap()
        );
        assert_eq!(
            parse_target("127.0.0.1:9000", 1024).unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(
            parse_target("show-pc", 1024).unwrap_err().to_string(),
            "`show-pc` is not an IP address or IP:PORT"
        );
        assert_eq!(
            PeersOptions::default().target,
            "127.255.255.255:1024".parse().unwrap()
        );
    }

    /// Starts a responder on `bind` (port 0) answering with `ponger`; returns its address.
    fn start_responder(
        runtime: &tokio::runtime::Runtime,
        bind: IpAddr,
        ponger: SocketAddr,
        invisible: bool,
        cancel: &CancellationToken,
    ) -> SocketAddr {
        let socket = runtime
            .block_on(async { discovery::bind_socket(SocketAddr::new(bind, 0)) })
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let counters = Arc::new(discovery::DiscoveryCounters::default());
        let cancel = cancel.clone();
        runtime.spawn(async move {
            let responder = Responder { ponger, invisible };
            respond(&socket, responder, cancel, discovery::counting(counters)).await
        });
        addr
    }

    #[test]
    fn lists_responders_by_unicast_and_by_loopback_broadcast() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cancel = CancellationToken::new();
        let ponger_a: SocketAddr = "127.0.0.1:9101".parse().unwrap();
        let ponger_b: SocketAddr = "127.0.0.1:9102".parse().unwrap();
        // A socket bound to one address does not see broadcasts: the broadcast responders bind the
        // wildcard, as peerpy's does.
        let a = start_responder(
            &runtime,
            Ipv4Addr::UNSPECIFIED.into(),
            ponger_a,
            false,
            &cancel,
        );
        let silent = start_responder(
            &runtime,
            Ipv4Addr::UNSPECIFIED.into(),
            ponger_b,
            true,
            &cancel,
        );

        // Unicast to one responder.
        let options = PeersOptions {
            target: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port()),
            wait: Duration::from_millis(300),
            ..PeersOptions::default()
        };
        let found = discover(&options).unwrap();
        assert!(found.pinger.ip().is_loopback(), "{found:?}");
        assert_eq!(
            found.answers,
            vec![Answer {
                ponger: ponger_a,
                source: options.target
            }]
        );
        assert_eq!(found.ignored, 0);

        // The loopback broadcast address reaches the visible one; the invisible one stays silent.
        let broadcast = Ipv4Addr::new(127, 255, 255, 255);
        for (port, expected) in [(a.port(), vec![ponger_a]), (silent.port(), vec![])] {
            let options = PeersOptions {
                target: SocketAddr::new(broadcast.into(), port),
                wait: Duration::from_millis(300),
                ..PeersOptions::default()
            };
            let found = discover(&options).unwrap();
            let pongers: Vec<SocketAddr> = found.answers.iter().map(|a| a.ponger).collect();
            assert_eq!(pongers, expected);
            for answer in &found.answers {
                assert_eq!(answer.source.port(), port);
                assert!(answer.source.ip().is_loopback());
            }
        }

        // The command's output.
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run_peers(&options, &mut out, &mut err).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{ponger_a} from 127.0.0.1:{}\n", a.port())
        );
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.starts_with("patchbay peers: PING from 127.0.0.1:"),
            "{err}"
        );
        assert!(err.ends_with("patchbay peers: 1 answer(s)\n"), "{err}");
        cancel.cancel();
    }

    #[test]
    fn hostile_answers_are_counted_not_printed() {
        // A fake "responder" answering junk, a forged PONG and a real one, to the PING's source.
        let fake = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        fake.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let target = fake.local_addr().unwrap();
        let answering = std::thread::spawn(move || {
            let mut buf = [0u8; 600];
            let (len, from) = fake.recv_from(&mut buf).unwrap();
            let pinger = discovery::parse_ping(&buf[..len]).unwrap();
            for junk in [
                &b"\x1b[2Jgotcha"[..],
                b"PONG|ponger=not-an-address",
                &[b'|'; 600],
            ] {
                fake.send_to(junk, from).unwrap();
            }
            let pong = discovery::pong_datagram("127.0.0.1:9200".parse().unwrap());
            fake.send_to(&pong, from).unwrap();
            fake.send_to(&pong, from).unwrap();
            pinger
        });
        let options = PeersOptions {
            target,
            wait: Duration::from_millis(500),
            ..PeersOptions::default()
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run_peers(&options, &mut out, &mut err).unwrap();
        let pinger = answering.join().unwrap();
        assert!(pinger.ip().is_loopback());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("127.0.0.1:9200 from {target}\n")
        );
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.ends_with("1 answer(s); ignored 3 datagram(s) that were not a PONG\n"),
            "{err}"
        );
        assert!(!err.contains('\x1b'));
    }
}
