//! Transports. One module per kind, all of one shape (Vector's sources are the model): a serde config
//! struct, the ports it claims, an output handle that routes send through, and an async `run` that takes
//! a [`ChannelContext`] (cancel token, where inbound messages go, metric handles, status reporting).
//!
//! The datagram kinds' config structs repeat the keys they share (`allow`, `max_datagram`, ...)
//! instead of flattening one common struct: serde's `flatten` cannot be combined with
//! `deny_unknown_fields`, and an unknown key must be an error.

pub mod broadcast;
pub mod datagram;
pub mod framing;
pub mod held;
pub mod multicast;
pub mod peer;
pub mod stream;
pub mod tcp;
pub mod udp;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Dispatcher;
use crate::metrics::ChannelMetrics;
use crate::route::ChannelId;

/// Where a message came from; targets use it to reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub channel: ChannelId,
    pub addr: SocketAddr,
}

/// The sending side of a channel, shared by every route that forwards to it. Sends are direct
/// (non-blocking) socket writes from the caller's task: no queue hop on the forward path.
pub trait Output: Send + Sync {
    fn name(&self) -> &str;
    /// Sends a packet to the channel's destination. Counts packets and bytes out, drops and errors.
    fn send(&self, packet: &[u8]);
    /// Sends a packet back to `origin`, from the socket that received the message.
    fn reply(&self, origin: &Origin, packet: &[u8]);
    /// Sends bytes that are not OSC back to `origin` as they are (a script's `peer.send_bytes`).
    fn reply_raw(&self, origin: &Origin, bytes: &[u8]) {
        self.reply(origin, bytes)
    }
    /// Closes the connection `origin` came in on. Datagram channels have none: false.
    fn close(&self, _origin: &Origin) -> bool {
        false
    }
    /// Whether OSC can go back to `origin` (a peer connection of type json or raw cannot): a
    /// script's `peer.send_osc` then fails after the output has counted and logged it.
    fn carries_osc(&self, _origin: &Origin) -> bool {
        true
    }
    /// Whether [`Output::send_value`] means anything here (peer channels): asked first, so the
    /// other channels' `peer.send` does not convert its value for nothing.
    fn carries_values(&self) -> bool {
        false
    }
    /// Sends a value (a script's `peer.send(value)`) in the connection's data type. `None` for
    /// channels that carry no values (everything but `peer`): the caller sends text instead.
    fn send_value(
        &self,
        _origin: &Origin,
        _value: &serde_json::Value,
    ) -> Option<Result<(), String>> {
        None
    }
}

/// What `run` of any transport gets.
pub struct ChannelContext {
    pub name: Arc<str>,
    pub id: ChannelId,
    pub cancel: CancellationToken,
    /// Routes what the channel receives.
    pub inbound: Dispatcher,
    pub metrics: ChannelMetrics,
    pub status: StatusBoard,
    /// Set when a reload replaces this channel with a new socket: the replacement owns the `up`
    /// gauge and the status entry from then on, so the old task leaves them alone when it stops.
    pub replaced: Arc<std::sync::atomic::AtomicBool>,
}

impl ChannelContext {
    pub fn is_replaced(&self) -> bool {
        self.replaced.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A channel's state as the ready line and ready file show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChannelStatus {
    pub kind: &'static str,
    /// The bound listening address (the real port when the config said 0).
    pub listen: Option<SocketAddr>,
    /// The socket the channel sends from.
    pub local: Option<SocketAddr>,
    /// Default destination.
    pub send: Option<SocketAddr>,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ChannelStatus {
    /// Whether the channel binds a port of its own (`--strict` start-up requires that it did). A
    /// client-only stream channel binds nothing; it connects, and waits while its server is away.
    pub fn binds(&self) -> bool {
        self.listen.is_some() || !matches!(self.kind, "tcp" | "peer")
    }
}

/// Channel states by name, with a notification on every change (the ready file is rewritten).
#[derive(Clone, Default)]
pub struct StatusBoard {
    inner: Arc<(Mutex<BTreeMap<String, ChannelStatus>>, Notify)>,
}

impl StatusBoard {
    pub fn set(&self, channel: &str, status: ChannelStatus) {
        let mut map = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(channel.to_string(), status);
        drop(map);
        self.inner.1.notify_waiters();
    }

    /// Changes one channel's entry in place (a live reload of its destination).
    pub fn update(&self, channel: &str, change: impl FnOnce(&mut ChannelStatus)) {
        let mut map = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(status) = map.get_mut(channel) {
            change(status);
        }
        drop(map);
        self.inner.1.notify_waiters();
    }

    pub fn remove(&self, channel: &str) {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(channel);
        self.inner.1.notify_waiters();
    }

    pub fn snapshot(&self) -> BTreeMap<String, ChannelStatus> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A future that completes on the next change. It listens from the moment it is created, so
    /// create it before reading the snapshot, or a change in between is missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.1.notified()
    }
}
