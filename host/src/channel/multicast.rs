//! The `multicast` channel: join an IPv4 group on a named interface, receive what is sent to the
//! group's port, send to the group.
//!
//! The interface is required: without `IP_MULTICAST_IF` the kernel picks the default route's card, and
//! a show's cues would leave on the wrong network. Several programs on one machine often listen to
//! the same group and port, so this socket (unlike unicast ones) sets SO_REUSEADDR; each gets a copy.
//! The socket is bound to the wildcard address so the group can change while the show runs (leave
//! the old, join the new). With `loop: true` our own datagrams come back to us and are recognised,
//! not routed again.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::channel::datagram::{
    self, default_max_datagram, default_retry_ms, BindError, DatagramOutput, DatagramSettings,
    Format, OwnCheck, OwnDatagrams, Startup,
};
use crate::channel::{ChannelContext, ChannelStatus};
use crate::config::NetRange;
use crate::metrics::ChannelMetrics;

/// `kind: multicast`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

/// Changing these needs a new socket; every other setting (group included) changes in place.
pub const REBIND_KEYS: &[&str] = &["kind", "port", "interface"];

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

    pub fn needs_rebind(&self, new: &MulticastConfig) -> bool {
        self.port != new.port || self.interface != new.interface
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

    pub fn output(
        &self,
        name: Arc<str>,
        metrics: ChannelMetrics,
        own: Arc<OwnDatagrams>,
    ) -> DatagramOutput {
        DatagramOutput::new(
            name.clone(),
            Some(self.destination()),
            self.settings(&name),
            metrics,
            Some(own),
        )
    }

    /// Applies every setting that does not need a new socket: group membership, ttl, loop, buffers,
    /// allow list, format. A new group was already joined (`DatagramOutput::join_group`) before the
    /// reload committed, so a refused join could roll back; here the old group is left.
    pub fn apply_live(
        &self,
        old: &MulticastConfig,
        channel: &str,
        output: &DatagramOutput,
    ) -> io::Result<()> {
        if let Some(socket) = output.socket() {
            let socket = socket.sock_ref();
            if old.group != self.group {
                // Leaving can only fail if we were not a member; the new membership is what counts.
                let _ = socket.leave_multicast_v4(&old.group, &old.interface);
                tracing::info!(
                    channel, group = %self.group, interface = %self.interface,
                    "Joined multicast group {} on interface {} (left {}).", self.group, self.interface, old.group
                );
            }
            socket.set_multicast_ttl_v4(self.ttl)?;
            socket.set_multicast_loop_v4(self.multicast_loop)?;
            datagram::set_buffers(&socket, self.recv_buffer, self.send_buffer)?;
        }
        output.set_destination(Some(self.destination()));
        output.set_settings(self.settings(channel));
        Ok(())
    }
}

/// Binds the group's port, joins the group on the interface, and pins sending to that interface.
pub fn bind(config: &MulticastConfig) -> io::Result<datagram::DatagramSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    datagram::set_buffers(
        &SockRef::from(&socket),
        config.recv_buffer,
        config.send_buffer,
    )?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.port)).into())?;
    socket.join_multicast_v4(&config.group, &config.interface)?;
    socket.set_multicast_if_v4(&config.interface)?;
    socket.set_multicast_ttl_v4(config.ttl)?;
    socket.set_multicast_loop_v4(config.multicast_loop)?;
    datagram::register(socket)
}

pub async fn run(
    config: MulticastConfig,
    output: Arc<DatagramOutput>,
    own: Arc<OwnDatagrams>,
    mut ctx: ChannelContext,
    startup: Startup,
) -> Result<(), BindError> {
    let destination = config.destination();
    tracing::info!(
        channel = %ctx.name, group = %config.group, port = config.port, interface = %config.interface,
        ttl = config.ttl, multicast_loop = config.multicast_loop,
        "Joining multicast group {} on interface {}.", config.group, config.interface
    );
    let status = ChannelStatus {
        kind: "multicast",
        listen: Some(destination),
        local: None,
        send: Some(destination),
        up: false,
        error: None,
    };
    let own = OwnCheck {
        sent: own,
        ips: vec![IpAddr::V4(config.interface)],
    };
    datagram::serve(
        startup,
        || bind(&config),
        destination,
        config.retry_ms,
        &output,
        Some(own),
        status,
        &mut ctx,
    )
    .await
}
