//! The `udp` channel: receive OSC datagrams on `listen`, send to `send`.
//!
//! A channel with both sends from its listening socket, so a device that answers to the source port
//! (many mixing desks do) reaches us. Sockets are made with socket2 so buffer sizes can be set, and
//! without SO_REUSEPORT: a second process on the same port would silently take half the traffic.
//! A port that is taken does not stop the show: the channel reports it and binds again every
//! `retry_ms` (with `--strict` the host stops instead).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::channel::{ChannelContext, ChannelStatus, Origin, Output};
use crate::config::NetRange;
use crate::metrics::ChannelMetrics;

/// `kind: udp`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpConfig {
    /// Always "udp"; kept so one entry deserializes as a whole.
    pub kind: String,
    /// Local address to receive on (`ip:port`; port 0 picks a free port).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Default destination (`ip:port`).
    #[serde(default)]
    pub send: Option<SocketAddr>,
    /// Source networks allowed to send to us (`127.0.0.1/32`, `10.0.0.0/8`, or a bare IP); empty = all.
    #[serde(default)]
    pub allow: Vec<NetRange>,
    /// Largest datagram accepted, in bytes; larger ones are dropped and counted.
    #[serde(default = "default_max_datagram")]
    pub max_datagram: usize,
    /// SO_RCVBUF in bytes (the OS default when absent).
    #[serde(default)]
    pub recv_buffer: Option<usize>,
    /// SO_SNDBUF in bytes (the OS default when absent).
    #[serde(default)]
    pub send_buffer: Option<usize>,
    /// How long to wait before binding again when the port is taken.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
}

pub fn default_max_datagram() -> usize {
    65_507
}

pub fn default_retry_ms() -> u64 {
    1_000
}

impl UdpConfig {
    /// The local address this channel binds: its `listen`, or an ephemeral port of the destination's
    /// family for a send-only channel.
    pub fn bind_address(&self) -> SocketAddr {
        match (self.listen, self.send) {
            (Some(listen), _) => listen,
            (None, Some(SocketAddr::V6(_))) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            (None, _) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        }
    }

    /// The UDP port this channel claims exclusively (none for send-only channels or port 0).
    pub fn claims(&self) -> Option<SocketAddr> {
        self.listen.filter(|a| a.port() != 0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("channel `{channel}` cannot bind udp {addr}: {source}")]
    Bind { channel: String, addr: SocketAddr, source: io::Error },
}

/// The sending half of a udp channel. The socket appears once `run` has bound it; the destination can
/// change while the show runs.
pub struct UdpOutput {
    name: Arc<str>,
    socket: ArcSwapOption<UdpSocket>,
    destination: ArcSwapOption<SocketAddr>,
    metrics: ChannelMetrics,
    down_log: std::sync::Mutex<crate::dispatch::RateLimitedLog>,
}

impl UdpOutput {
    pub fn new(name: Arc<str>, config: &UdpConfig, metrics: ChannelMetrics) -> Self {
        UdpOutput {
            name,
            socket: ArcSwapOption::empty(),
            destination: ArcSwapOption::new(config.send.map(Arc::new)),
            metrics,
            down_log: std::sync::Mutex::new(crate::dispatch::RateLimitedLog::new(Duration::from_secs(1))),
        }
    }

    pub fn set_destination(&self, destination: Option<SocketAddr>) {
        self.destination.store(destination.map(Arc::new));
    }

    fn send_from(&self, packet: &[u8], to: SocketAddr) {
        let guard = self.socket.load();
        let Some(socket) = guard.as_ref() else {
            self.metrics.drops.increment(1);
            self.log_drop(format_args!("its socket is not bound yet"));
            return;
        };
        match socket.try_send_to(packet, to) {
            Ok(_) => {
                self.metrics.packets_out.increment(1);
                self.metrics.bytes_out.increment(packet.len() as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.metrics.drops.increment(1);
                self.log_drop(format_args!("the socket's send buffer is full (raise send_buffer)"));
            }
            Err(e) => {
                self.metrics.send_errors.increment(1);
                self.log_drop(format_args!("the system refused the send: {e}"));
            }
        }
    }

    // Only reached when a packet is lost, so the lock is off the normal path.
    fn log_drop(&self, why: std::fmt::Arguments<'_>) {
        if let Ok(mut log) = self.down_log.lock() {
            let name = &self.name;
            log.log(|suppressed| {
                tracing::warn!(channel = %name, suppressed, "Dropped an outgoing packet because {why}.")
            });
        }
    }
}

impl Output for UdpOutput {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, packet: &[u8]) {
        match self.destination.load().as_deref() {
            Some(&to) => self.send_from(packet, to),
            None => self.metrics.drops.increment(1),
        }
    }

    fn reply(&self, origin: &Origin, packet: &[u8]) {
        self.send_from(packet, origin.addr);
    }
}

/// Binds without SO_REUSEPORT, with the configured buffer sizes.
pub fn bind(config: &UdpConfig) -> io::Result<UdpSocket> {
    let addr = config.bind_address();
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(size) = config.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = config.send_buffer {
        socket.set_send_buffer_size(size)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Binds (retrying while the port is taken), then receives until cancelled.
pub async fn run(config: UdpConfig, output: Arc<UdpOutput>, mut ctx: ChannelContext, strict: bool) -> Result<(), UdpError> {
    let allow: Arc<ArcSwap<Vec<NetRange>>> = Arc::new(ArcSwap::from_pointee(config.allow.clone()));
    let socket = loop {
        match bind(&config) {
            Ok(socket) => break Arc::new(socket),
            Err(source) => {
                let addr = config.bind_address();
                let error = UdpError::Bind { channel: ctx.name.to_string(), addr, source };
                ctx.metrics.up.set(0.0);
                ctx.status.set(
                    &ctx.name,
                    ChannelStatus {
                        kind: "udp",
                        listen: None,
                        local: None,
                        send: config.send,
                        up: false,
                        error: Some(format!("{error}; retrying every {} ms", config.retry_ms)),
                    },
                );
                if strict {
                    return Err(error);
                }
                tracing::error!(
                    channel = %ctx.name, port = addr.port(), retry_ms = config.retry_ms,
                    "Channel cannot bind its port: {error}. The other channels keep running; \
                     this one retries. Free the port or change `listen`."
                );
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(config.retry_ms.max(10))) => {}
                }
            }
        }
    };
    let local = socket.local_addr().ok();
    output.socket.store(Some(socket.clone()));
    ctx.metrics.up.set(1.0);
    ctx.status.set(
        &ctx.name,
        ChannelStatus {
            kind: "udp",
            listen: config.listen.and(local),
            local,
            send: config.send,
            up: true,
            error: None,
        },
    );
    tracing::info!(channel = %ctx.name, local = ?local, send = ?config.send, "Channel is up.");
    let max = config.max_datagram;
    // One byte more than the limit tells an oversize datagram from one that fits exactly.
    let mut buffer = vec![0u8; max + 1];
    let cancel = ctx.cancel.clone();
    let receive = async {
        loop {
            match socket.recv_from(&mut buffer).await {
                Ok((len, from)) => {
                    let origin = Origin { channel: ctx.id, addr: from };
                    let allowed = allow.load();
                    if !allowed.is_empty() && !allowed.iter().any(|net| net.contains(from.ip())) {
                        ctx.metrics.disallowed.increment(1);
                        tracing::debug!(channel = %ctx.name, sender = %from, "Dropped a datagram from a sender outside the allow list.");
                        continue;
                    }
                    if len > max {
                        ctx.metrics.packets_in.increment(1);
                        ctx.inbound.reject(&origin, format_args!("oversize datagram (more than max_datagram = {max} bytes)"));
                        continue;
                    }
                    ctx.inbound.datagram(&buffer[..len], origin);
                }
                Err(e) => {
                    // Errors here are transient (e.g. ICMP reports on some systems): keep serving.
                    tracing::debug!(channel = %ctx.name, error = %e, "Receive failed; continuing.");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = receive => {}
    }
    output.socket.store(None);
    ctx.metrics.up.set(0.0);
    Ok(())
}
