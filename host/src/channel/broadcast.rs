//! The `broadcast` channel: listen on a port for broadcast (and unicast) datagrams, send to a
//! broadcast address with SO_BROADCAST.
//!
//! A broadcast to our own port comes back to us; those copies are recognised (source port ours, source
//! IP one of this machine's, bytes we just sent) and not routed again, so there is no feedback storm.

use std::io;
use std::net::{IpAddr, SocketAddr};
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

/// `kind: broadcast`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

/// Changing these needs a new socket; every other setting changes in place.
pub const REBIND_KEYS: &[&str] = &["kind", "listen"];

impl BroadcastConfig {
    pub fn needs_rebind(&self, new: &BroadcastConfig) -> bool {
        self.listen != new.listen
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
            self.send,
            self.settings(&name),
            metrics,
            Some(own),
        )
    }

    pub fn apply_live(&self, channel: &str, output: &DatagramOutput) -> io::Result<()> {
        output.set_destination(self.send);
        output.set_settings(self.settings(channel));
        if let Some(socket) = output.socket() {
            datagram::set_buffers(&socket.sock_ref(), self.recv_buffer, self.send_buffer)?;
        }
        Ok(())
    }
}

pub fn bind(config: &BroadcastConfig) -> io::Result<datagram::DatagramSocket> {
    let socket = Socket::new(
        Domain::for_address(config.listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_broadcast(true)?;
    datagram::set_buffers(
        &SockRef::from(&socket),
        config.recv_buffer,
        config.send_buffer,
    )?;
    socket.set_nonblocking(true)?;
    socket.bind(&config.listen.into())?;
    datagram::register(socket)
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
    startup: Startup,
) -> Result<(), BindError> {
    let status = ChannelStatus {
        kind: "broadcast",
        listen: Some(config.listen),
        local: None,
        send: config.send,
        up: false,
        error: None,
    };
    let own = OwnCheck {
        sent: own,
        ips: local_ips(),
    };
    datagram::serve(
        startup,
        || bind(&config),
        config.listen,
        config.retry_ms,
        &output,
        Some(own),
        status,
        &mut ctx,
    )
    .await
}
