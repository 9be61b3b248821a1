//! peerpy's discovery over UDP: answering `PING` datagrams, and the pure pieces `patchbay peers`
//! uses to ask.
//!
//! # What peerpy 1.2.2 does (`Peer.get_local_peers`, `Peer._listen_pings`)
//!
//! - The asking peer binds a UDP socket to its own address on port 1024 ([`PEERPY_PORT`]), with
//!   SO_REUSEADDR and SO_BROADCAST, and sends one header-format datagram, padded with `|` to 128
//!   bytes, to `255.255.255.255:1024`: `PING|pinger=IP:1024|||...`. It then reads 128-byte answers
//!   until 0.5 s pass without one, keeping those that start with `PONG` (`PONG|ponger=IP:PORT|||...`,
//!   also padded to 128 bytes), and lists each `ponger` except its own.
//! - Every visible peer binds `("", 1024)` with SO_REUSEADDR and SO_BROADCAST, reads datagrams of up
//!   to 512 bytes, and answers one starting with `PING` by sending `PONG|ponger=<its listening
//!   address>` **to the address written in `pinger`**. An invisible peer does not answer.
//!
//! # What we do differently
//!
//! We send the `PONG` to the datagram's real source address, never to the address written inside it:
//! answering the written address would let anyone aim our answers at a third party. peerpy's own
//! asker sends from the address it writes, so it still gets the answer. A datagram that is not a
//! well-formed `PING` (not UTF-8, over 512 bytes, another type, no `pinger`, a `pinger` that is not
//! IP:PORT) is counted and ignored; peerpy's responder would crash on some of these.
//! A `PONG` is as long as a `PING`, so answering amplifies nothing.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::wire::{self, HeaderError, HeaderKind, HEADER_SIZE};

/// The port peerpy pings and listens for pings on.
pub const PEERPY_PORT: u16 = 1024;
/// The longest datagram peerpy's responder reads; longer ones are refused.
pub const MAX_DATAGRAM: usize = 512;

/// Why a discovery datagram was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("datagram is over {MAX_DATAGRAM} bytes")]
    TooLong,
    #[error("datagram is not UTF-8")]
    NotUtf8,
    #[error("datagram is a {found} header, not {expected}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("datagram: {0}")]
    Header(HeaderError),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("`{field}` is not IP:PORT")]
    NotAnAddress { field: &'static str },
}

/// Reads a `PING` datagram; returns the `pinger` address written in it (for logs only: answers go
/// to the datagram's real source). Padding is optional; up to [`MAX_DATAGRAM`] bytes.
pub fn parse_ping(datagram: &[u8]) -> Result<SocketAddr, DiscoveryError> {
    parse_addressed(datagram, HeaderKind::Ping, "pinger")
}

/// Reads a `PONG` datagram; returns the `ponger` address written in it (the peer's listening
/// address, as it says).
pub fn parse_pong(datagram: &[u8]) -> Result<SocketAddr, DiscoveryError> {
    parse_addressed(datagram, HeaderKind::Pong, "ponger")
}

fn parse_addressed(
    datagram: &[u8],
    expected: HeaderKind,
    field: &'static str,
) -> Result<SocketAddr, DiscoveryError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(DiscoveryError::TooLong);
    }
    let text = std::str::from_utf8(datagram).map_err(|_| DiscoveryError::NotUtf8)?;
    let raw = wire::split(text).map_err(DiscoveryError::Header)?;
    let kind = raw.header_kind().map_err(DiscoveryError::Header)?;
    if kind != expected {
        return Err(DiscoveryError::WrongType {
            expected: expected.as_str(),
            found: kind.as_str(),
        });
    }
    let value = raw.get(field).ok_or(DiscoveryError::MissingField(field))?;
    value
        .parse()
        .map_err(|_| DiscoveryError::NotAnAddress { field })
}

/// `PING|pinger=IP:PORT` padded to 128 bytes, as peerpy sends it.
pub fn ping_datagram(pinger: SocketAddr) -> [u8; HEADER_SIZE] {
    addressed(HeaderKind::Ping, "pinger", pinger)
}

/// `PONG|ponger=IP:PORT` padded to 128 bytes, as peerpy sends it.
pub fn pong_datagram(ponger: SocketAddr) -> [u8; HEADER_SIZE] {
    addressed(HeaderKind::Pong, "ponger", ponger)
}

fn addressed(kind: HeaderKind, field: &str, addr: SocketAddr) -> [u8; HEADER_SIZE] {
    let text = addr.to_string();
    // A socket address never holds `|&=` and is at most 64 characters: this cannot fail (tested).
    wire::build(kind, &[(field, &text)]).unwrap_or(wire::PING)
}

/// What the responder did with one datagram, for metrics and logs.
#[derive(Debug)]
pub enum DiscoveryEvent<'a> {
    /// A `PING` was answered with a `PONG` to `from` (its real source).
    Answered {
        from: SocketAddr,
        pinger: SocketAddr,
    },
    /// A `PING` arrived while invisible; no answer.
    Silent {
        from: SocketAddr,
        pinger: SocketAddr,
    },
    /// Not a `PING` we accept: ignored.
    Refused {
        from: SocketAddr,
        error: &'a DiscoveryError,
    },
    /// Sending the answer failed.
    SendFailed {
        to: SocketAddr,
        error: &'a io::Error,
    },
    /// Receiving failed (the loop goes on).
    RecvFailed { error: &'a io::Error },
}

/// Counters for the responder, shareable with a metrics exporter.
#[derive(Debug, Default)]
pub struct DiscoveryCounters {
    pub answered: AtomicU64,
    pub silent: AtomicU64,
    pub refused: AtomicU64,
    pub errors: AtomicU64,
}

impl DiscoveryCounters {
    pub fn record(&self, event: &DiscoveryEvent<'_>) {
        let counter = match event {
            DiscoveryEvent::Answered { .. } => &self.answered,
            DiscoveryEvent::Silent { .. } => &self.silent,
            DiscoveryEvent::Refused { .. } => &self.refused,
            DiscoveryEvent::SendFailed { .. } | DiscoveryEvent::RecvFailed { .. } => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How the responder answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Responder {
    /// Our listening address, written in every `PONG` (an address peers can reach, not 0.0.0.0).
    pub ponger: SocketAddr,
    /// Stay silent (peerpy's `invisible`): pings are read and counted, never answered.
    pub invisible: bool,
}

/// Answers `PING`s arriving on `socket` until `cancel`. Each datagram is reported to `on_event`.
/// Never returns an error: receive errors (an ICMP error from an earlier answer, say) are reported
/// and the loop goes on, after a short pause so a persistent error cannot spin.
pub async fn respond(
    socket: &UdpSocket,
    responder: Responder,
    cancel: CancellationToken,
    mut on_event: impl FnMut(DiscoveryEvent<'_>),
) {
    let pong = pong_datagram(responder.ponger);
    // One byte more than we accept, to tell an over-long datagram from one that fits exactly.
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let (len, from) = match received {
            Ok(r) => r,
            Err(error) => {
                on_event(DiscoveryEvent::RecvFailed { error: &error });
                if !matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                continue;
            }
        };
        match parse_ping(&buf[..len]) {
            Err(error) => on_event(DiscoveryEvent::Refused {
                from,
                error: &error,
            }),
            Ok(pinger) if responder.invisible => on_event(DiscoveryEvent::Silent { from, pinger }),
            Ok(pinger) => match socket.send_to(&pong, from).await {
                Ok(_) => on_event(DiscoveryEvent::Answered { from, pinger }),
                Err(error) => on_event(DiscoveryEvent::SendFailed {
                    to: from,
                    error: &error,
                }),
            },
        }
    }
}

/// Binds a UDP socket for discovery the way peerpy does: SO_REUSEADDR (so patchbay and a local
/// peerpy can share port 1024 for broadcasts) and SO_BROADCAST. Bind `0.0.0.0:PORT` to see
/// broadcasts: a socket bound to one address does not.
pub fn bind_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The local address this machine would send to `target` from (for the `pinger` field when bound
/// to 0.0.0.0). Falls back to loopback.
pub fn local_ip_towards(target: SocketAddr) -> IpAddr {
    let probe = || -> io::Result<IpAddr> {
        let unspecified: SocketAddr = match target {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = std::net::UdpSocket::bind(unspecified)?;
        socket.set_broadcast(true)?;
        socket.connect(target)?;
        Ok(socket.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => match target {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        },
    }
}

/// Shared counters and a recorder closure for [`respond`].
pub fn counting(counters: Arc<DiscoveryCounters>) -> impl FnMut(DiscoveryEvent<'_>) {
    move |event| counters.record(&event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn padded(text: &str) -> Vec<u8> {
        let mut v = text.as_bytes().to_vec();
        v.resize(HEADER_SIZE, b'|');
        v
    }

    #[test]
    fn reads_and_writes_what_peerpy_does() {
        // peerpy: build_header("PING", {"pinger": "192.168.1.7:1024"}).
        let ping = padded("PING|pinger=192.168.1.7:1024");
        assert_eq!(
            parse_ping(&ping).unwrap(),
            "192.168.1.7:1024".parse().unwrap()
        );
        assert_eq!(
            ping_datagram("192.168.1.7:1024".parse().unwrap()).to_vec(),
            ping
        );
        let pong = padded("PONG|ponger=127.0.0.1:9100");
        assert_eq!(
            pong_datagram("127.0.0.1:9100".parse().unwrap()).to_vec(),
            pong
        );
        assert_eq!(
            parse_pong(&pong).unwrap(),
            "127.0.0.1:9100".parse().unwrap()
        );
        // Padding is optional, as for peerpy's reader.
        assert!(parse_ping(b"PING|pinger=10.0.0.1:1024").is_ok());
        let longest: SocketAddr =
            "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535"
                .parse()
                .unwrap();
        assert_eq!(parse_pong(&pong_datagram(longest)).unwrap(), longest);
        assert_eq!(parse_ping(&ping_datagram(longest)).unwrap(), longest);
    }

    #[test]
    fn refuses_hostile_datagrams() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![b'|'; 513], "datagram is over 512 bytes"),
            (b"PING|pinger=\xff:1".to_vec(), "datagram is not UTF-8"),
            (
                padded("PONG|ponger=1.2.3.4:5"),
                "datagram is a PONG header, not PING",
            ),
            (
                padded("HELLO|peer_name=a"),
                "datagram is a HELLO header, not PING",
            ),
            (
                padded("PINGS|pinger=1.2.3.4:5"),
                "datagram: unknown header type `PINGS`",
            ),
            (padded("PING"), "missing field `pinger`"),
            (
                padded("PING|pinger=localhost:1024"),
                "`pinger` is not IP:PORT",
            ),
            (padded("PING|pinger=1.2.3.4"), "`pinger` is not IP:PORT"),
            (
                padded("PING|pinger=1.2.3.4:99999"),
                "`pinger` is not IP:PORT",
            ),
            (
                padded("PING|pinger=1.2.3.4:5|x"),
                "datagram: text after the fields is not `|` padding",
            ),
            (
                padded("PING|pinger"),
                "datagram: field `pinger` is not key=value with exactly one `=`",
            ),
            (Vec::new(), "datagram: unknown header type ``"),
        ];
        for (datagram, message) in cases {
            assert_eq!(parse_ping(&datagram).unwrap_err().to_string(), message);
        }
        assert_eq!(
            parse_pong(&padded("PING|pinger=1.2.3.4:5"))
                .unwrap_err()
                .to_string(),
            "datagram is a PING header, not PONG"
        );
        // Exactly 512 bytes is read.
        let mut max = b"PING|pinger=1.2.3.4:5".to_vec();
        max.resize(MAX_DATAGRAM, b'|');
        assert!(parse_ping(&max).is_ok());
    }

    /// A socket on 127.0.0.1 that expects nothing, with a short read timeout.
    async fn quiet_socket() -> UdpSocket {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap()
    }

    async fn recv_within(socket: &UdpSocket, ms: u64) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(ms), socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
            _ => None,
        }
    }

    #[tokio::test]
    async fn answers_the_real_source_never_the_written_address() {
        let socket = bind_socket((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let responder_addr = socket.local_addr().unwrap();
        let ponger: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        let counters = Arc::new(DiscoveryCounters::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (cancel, counters) = (cancel.clone(), counters.clone());
            async move {
                respond(
                    &socket,
                    Responder {
                        ponger,
                        invisible: false,
                    },
                    cancel,
                    counting(counters),
                )
                .await
            }
        });

        let asker = quiet_socket().await;
        let victim = quiet_socket().await;
        // The PING names the victim; the answer must come back to the asker.
        asker
            .send_to(&ping_datagram(victim.local_addr().unwrap()), responder_addr)
            .await
            .unwrap();
        let (answer, from) = recv_within(&asker, 5000).await.expect("an answer");
        assert_eq!(from, responder_addr);
        assert_eq!(answer, pong_datagram(ponger).to_vec());
        assert_eq!(parse_pong(&answer).unwrap(), ponger);
        assert!(
            recv_within(&victim, 200).await.is_none(),
            "the written address got an answer"
        );

        // Hostile datagrams are counted and ignored; a good PING afterwards is still answered.
        for bad in [
            &b"\xff\xfe"[..],
            b"PONG|ponger=1.2.3.4:5",
            b"PING",
            &[b'P'; 600],
        ] {
            asker.send_to(bad, responder_addr).await.unwrap();
        }
        asker
            .send_to(b"PING|pinger=127.0.0.1:1", responder_addr)
            .await
            .unwrap();
        let (answer, _) = recv_within(&asker, 5000)
            .await
            .expect("an answer after junk");
        assert_eq!(parse_pong(&answer).unwrap(), ponger);
        assert!(
            recv_within(&asker, 200).await.is_none(),
            "junk was answered"
        );
        assert_eq!(counters.refused.load(Ordering::Relaxed), 4);
        assert_eq!(counters.answered.load(Ordering::Relaxed), 2);

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the responder stops on cancel")
            .unwrap();
    }

    #[tokio::test]
    async fn invisible_stays_silent() {
        let socket = bind_socket((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let addr = socket.local_addr().unwrap();
        let counters = Arc::new(DiscoveryCounters::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (cancel, counters) = (cancel.clone(), counters.clone());
            async move {
                let responder = Responder {
                    ponger: addr,
                    invisible: true,
                };
                respond(&socket, responder, cancel, counting(counters)).await
            }
        });
        let asker = quiet_socket().await;
        asker
            .send_to(&ping_datagram(asker.local_addr().unwrap()), addr)
            .await
            .unwrap();
        assert!(recv_within(&asker, 300).await.is_none());
        // The silent PING was read and counted.
        for _ in 0..100 {
            if counters.silent.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counters.silent.load(Ordering::Relaxed), 1);
        assert_eq!(counters.answered.load(Ordering::Relaxed), 0);
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn local_ip_for_loopback_targets() {
        let ip = local_ip_towards("127.255.255.255:1024".parse().unwrap());
        assert!(ip.is_loopback(), "{ip}");
        assert_eq!(
            local_ip_towards("127.0.0.1:9".parse().unwrap()),
            IpAddr::from(Ipv4Addr::LOCALHOST)
        );
    }
}
