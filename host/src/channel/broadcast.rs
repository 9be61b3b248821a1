//! The `broadcast` channel: listen on a port for broadcast (and unicast) datagrams, send to a
//! broadcast address with SO_BROADCAST.
//!
//! A broadcast to our own port comes back to us; those copies are recognised (source port ours, source
//! IP one of this machine's, bytes we just sent) and not routed again, so there is no feedback storm.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::channel::datagram::{
    self, bind_with_retry, default_max_datagram, default_retry_ms, BindError, DatagramOutput,
    Format, OwnCheck, OwnDatagrams, ReceiveOptions,
};
use crate::channel::{ChannelContext, ChannelStatus};
use crate::config::NetRange;
use crate::metrics::ChannelMetrics;

/// `kind: broadcast`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastConfig {
    /// Always "broadcast".
    pub kind: String,
    /// Where to listen, e.g. `0.0.0.0:6000` (a socket bound to one address does not see broadcasts).
    pub listen: SocketAddr,
    /// The broadcast address and port to send to, e.g. `192.168.1.255:6000` (`127.255.255.255:6000`
    /// stays on this machine).
    #[serde(default)]
    pub send: Option<SocketAddr>,
    #[serde(default)]
    pub allow: Vec<NetRange>,
    #[serde(default = "default_max_datagram")]
    pub max_datagram: usize,
    #[serde(default)]
    pub recv_buffer: Option<usize>,
    #[serde(default)]
    pub send_buffer: Option<usize>,
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub raw_address: Option<String>,
}

impl BroadcastConfig {
    pub fn output(
        &self,
        name: Arc<str>,
        metrics: ChannelMetrics,
        own: Arc<OwnDatagrams>,
    ) -> DatagramOutput {
        DatagramOutput::new(name, self.send, self.format, metrics, Some(own))
    }
}

pub fn bind(config: &BroadcastConfig) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(config.listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_broadcast(true)?;
    datagram::set_buffers(&socket, config.recv_buffer, config.send_buffer)?;
    socket.set_nonblocking(true)?;
    socket.bind(&config.listen.into())?;
    UdpSocket::from_std(socket.into())
}

/// This machine's addresses: where our own broadcasts appear to come from.
fn local_ips() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|interfaces| interfaces.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    ips.push(IpAddr::from([127, 0, 0, 1]));
    ips
}

pub async fn run(
    config: BroadcastConfig,
    output: Arc<DatagramOutput>,
    own: Arc<OwnDatagrams>,
    mut ctx: ChannelContext,
    strict: bool,
) -> Result<(), BindError> {
    let bound = bind_with_retry(
        &ctx,
        "broadcast",
        config.listen,
        config.send,
        config.retry_ms,
        strict,
        || bind(&config),
    )
    .await?;
    let Some(socket) = bound else { return Ok(()) };
    let listen = socket.local_addr().ok();
    let options = ReceiveOptions {
        allow: Arc::new(ArcSwap::from_pointee(config.allow.clone())),
        max_datagram: config.max_datagram,
        format: config.format,
        raw_address: config
            .raw_address
            .clone()
            .unwrap_or_else(|| format!("/raw/{}", ctx.name)),
        own: Some(OwnCheck {
            sent: own,
            ips: local_ips(),
        }),
    };
    let status = ChannelStatus {
        kind: "broadcast",
        listen,
        local: None,
        send: config.send,
        up: true,
        error: None,
    };
    datagram::receive(socket, &output, options, status, &mut ctx).await;
    Ok(())
}
