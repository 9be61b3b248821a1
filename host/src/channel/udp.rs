//! The `udp` channel. (SKELETON: config struct is the contract.)

use std::net::SocketAddr;

use serde::Deserialize;

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
}

pub fn default_max_datagram() -> usize {
    65_507
}

pub fn default_retry_ms() -> u64 {
    1_000
}
