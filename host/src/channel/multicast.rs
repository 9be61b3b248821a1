//! The `multicast` channel: join an IPv4 group on a named interface, receive what is sent to the
//! group's port, send to the group.
//!
//! The interface is required: without `IP_MULTICAST_IF` the kernel picks the default route's card, and
//! a show's cues would leave on the wrong network. Several programs on one machine often listen to
//! the same group and port, so this socket (unlike unicast ones) sets SO_REUSEADDR; each gets a copy.
//! With `loop: true` our own datagrams come back to us and are recognised, not routed again.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
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

/// `kind: multicast`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MulticastConfig {
    /// Always "multicast".
    pub kind: String,
    /// The IPv4 group, 224.0.0.0/4 (e.g. 239.255.0.1).
    pub group: Ipv4Addr,
    /// The group's UDP port: we listen on it and send to it.
    pub port: u16,
    /// The IPv4 address of the network card to join and send on (127.0.0.1 for loopback).
    pub interface: Ipv4Addr,
    /// Hops a datagram may take: 0 stays on this machine, 1 (default) stays on the local network.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Deliver our own datagrams to other programs on this machine (default true).
    #[serde(default = "default_loop", rename = "loop")]
    pub multicast_loop: bool,
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

fn default_ttl() -> u32 {
    1
}

fn default_loop() -> bool {
    true
}

impl MulticastConfig {
    pub fn destination(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.group, self.port))
    }

    pub fn output(
        &self,
        name: Arc<str>,
        metrics: ChannelMetrics,
        own: Arc<OwnDatagrams>,
    ) -> DatagramOutput {
        DatagramOutput::new(
            name,
            Some(self.destination()),
            self.format,
            metrics,
            Some(own),
        )
    }
}

/// Binds the group's port, joins the group on the interface, and pins sending to that interface.
pub fn bind(config: &MulticastConfig) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    datagram::set_buffers(&socket, config.recv_buffer, config.send_buffer)?;
    // Bound to the group (not the wildcard) so unicast datagrams to the same port are not mixed in.
    #[cfg(unix)]
    let local = SocketAddrV4::new(config.group, config.port);
    #[cfg(not(unix))]
    let local = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.port);
    socket.bind(&SocketAddr::V4(local).into())?;
    socket.join_multicast_v4(&config.group, &config.interface)?;
    socket.set_multicast_if_v4(&config.interface)?;
    socket.set_multicast_ttl_v4(config.ttl)?;
    socket.set_multicast_loop_v4(config.multicast_loop)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

pub async fn run(
    config: MulticastConfig,
    output: Arc<DatagramOutput>,
    own: Arc<OwnDatagrams>,
    mut ctx: ChannelContext,
    strict: bool,
) -> Result<(), BindError> {
    let destination = config.destination();
    let bound = bind_with_retry(
        &ctx,
        "multicast",
        destination,
        Some(destination),
        config.retry_ms,
        strict,
        || bind(&config),
    )
    .await?;
    let Some(socket) = bound else { return Ok(()) };
    tracing::info!(
        channel = %ctx.name, group = %config.group, port = config.port, interface = %config.interface,
        ttl = config.ttl, multicast_loop = config.multicast_loop,
        "Joined multicast group {} on interface {}.", config.group, config.interface
    );
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
            ips: vec![IpAddr::V4(config.interface)],
        }),
    };
    let status = ChannelStatus {
        kind: "multicast",
        listen: Some(destination),
        local: None,
        send: Some(destination),
        up: true,
        error: None,
    };
    datagram::receive(socket, &output, options, status, &mut ctx).await;
    Ok(())
}
