//! The `udp` channel: receive OSC datagrams on `listen`, send to `send`.
//!
//! A channel with both sends from its listening socket, so a device that answers to the source port
//! (many mixing desks do) reaches us. Sockets are made with socket2 so buffer sizes can be set, and
//! without SO_REUSEPORT: a second process on the same port would silently take half the traffic.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::channel::datagram::{
    self, default_max_datagram, default_retry_ms, BindError, DatagramOutput, DatagramSettings,
    Format, Startup,
};
use crate::channel::{ChannelContext, ChannelStatus};
use crate::config::NetRange;
use crate::metrics::ChannelMetrics;

/// `kind: udp`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

/// Changing these needs a new socket; every other setting changes in place.
pub const REBIND_KEYS: &[&str] = &["kind", "listen"];

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

    /// A send-only channel's socket is of its destination's family, so a new family needs a rebind.
    pub fn needs_rebind(&self, new: &UdpConfig) -> bool {
        self.listen != new.listen
            || (self.listen.is_none() && self.bind_address() != new.bind_address())
    }

    pub fn settings(&self, channel: &str) -> DatagramSettings {
        DatagramSettings::new(
            channel,
            &self.allow,
            self.max_datagram,
            self.format,
            self.raw_address.as_deref(),
        )
    }

    pub fn output(&self, name: Arc<str>, metrics: ChannelMetrics) -> DatagramOutput {
        DatagramOutput::new(name.clone(), self.send, self.settings(&name), metrics, None)
    }

    /// Applies every setting that does not need a new socket.
    pub fn apply_live(&self, channel: &str, output: &DatagramOutput) -> io::Result<()> {
        output.set_destination(self.send);
        output.set_settings(self.settings(channel));
        if let Some(socket) = output.socket() {
            datagram::set_buffers(&socket.sock_ref(), self.recv_buffer, self.send_buffer)?;
        }
        Ok(())
    }
}

/// Binds without SO_REUSEPORT, with the configured buffer sizes.
pub fn bind(config: &UdpConfig) -> io::Result<datagram::DatagramSocket> {
    let addr = config.bind_address();
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    datagram::set_buffers(
        &SockRef::from(&socket),
        config.recv_buffer,
        config.send_buffer,
    )?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    datagram::register(socket)
}

/// Receives until cancelled.
pub async fn run(
    config: UdpConfig,
    output: Arc<DatagramOutput>,
    mut ctx: ChannelContext,
    startup: Startup,
) -> Result<(), BindError> {
    let status = ChannelStatus {
        kind: "udp",
        listen: config.listen,
        local: None,
        send: config.send,
        up: false,
        error: None,
    };
    let what = config.bind_address();
    datagram::serve(
        startup,
        || bind(&config),
        what,
        config.retry_ms,
        &output,
        None,
        status,
        &mut ctx,
    )
    .await
}
