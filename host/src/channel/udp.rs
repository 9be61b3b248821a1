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

use arc_swap::ArcSwap;
use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::channel::datagram::{
    self, bind_with_retry, default_max_datagram, default_retry_ms, BindError, DatagramOutput,
    Format, ReceiveOptions,
};
use crate::channel::{ChannelContext, ChannelStatus};
use crate::config::NetRange;

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
    /// `osc` (default) or `raw` for devices that do not speak OSC.
    #[serde(default)]
    pub format: Format,
    /// With `format: raw`: the address incoming datagrams get (default `/raw/CHANNEL`).
    #[serde(default)]
    pub raw_address: Option<String>,
}

impl UdpConfig {
    /// The local address this channel binds: its `listen`, or an ephemeral port of the destination's
    /// family for a send-only channel (a device's answers to that port are routed too).
    pub fn bind_address(&self) -> SocketAddr {
        match (self.listen, self.send) {
            (Some(listen), _) => listen,
            (None, Some(SocketAddr::V6(_))) => {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
            }
            (None, _) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        }
    }

    pub fn output(
        &self,
        name: Arc<str>,
        metrics: crate::metrics::ChannelMetrics,
    ) -> DatagramOutput {
        DatagramOutput::new(name, self.send, self.format, metrics, None)
    }
}

/// Binds without SO_REUSEPORT, with the configured buffer sizes.
pub fn bind(config: &UdpConfig) -> io::Result<UdpSocket> {
    let addr = config.bind_address();
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    datagram::set_buffers(&socket, config.recv_buffer, config.send_buffer)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Binds (retrying while the port is taken), then receives until cancelled.
pub async fn run(
    config: UdpConfig,
    output: Arc<DatagramOutput>,
    mut ctx: ChannelContext,
    strict: bool,
) -> Result<(), BindError> {
    let bound = bind_with_retry(
        &ctx,
        "udp",
        config.bind_address(),
        config.send,
        config.retry_ms,
        strict,
        || bind(&config),
    )
    .await?;
    let Some(socket) = bound else { return Ok(()) };
    let listen = config.listen.and(socket.local_addr().ok());
    let options = ReceiveOptions {
        allow: Arc::new(ArcSwap::from_pointee(config.allow.clone())),
        max_datagram: config.max_datagram,
        format: config.format,
        raw_address: config
            .raw_address
            .clone()
            .unwrap_or_else(|| format!("/raw/{}", ctx.name)),
        own: None,
    };
    let status = ChannelStatus {
        kind: "udp",
        listen,
        local: None,
        send: config.send,
        up: true,
        error: None,
    };
    datagram::receive(socket, &output, options, status, &mut ctx).await;
    Ok(())
}
