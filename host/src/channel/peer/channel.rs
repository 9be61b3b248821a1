//! The `peer` channel: listening for peerpy offers, connecting to peers, and carrying their data,
//! on the connection machinery TCP channels use ([`crate::channel::stream`]).
//!
//! A connection starts with the handshake (`HELLO` from the connecting side, `ACCEPT` or `DENY`
//! from the listening side), then carries `DATA` headers each followed by its payload, and `PING`
//! headers that are ignored. What arrives is routed by data type: `bytes` payloads are OSC packets;
//! `json` and `raw` payloads become a message at `json_address` / `raw_address` whose arguments are
//! the value (see [`super::values`]), with the full value available to scripts.
//!
//! Sending follows each connection's data type: OSC packets as `bytes`, the arguments of each
//! message as a json value or a pickle. A streaming connection fixes its record size with the
//! first `DATA` header in either direction; records of another size are skipped and counted, and we
//! send no `PING` on it (a streaming reader would take it for a record).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use patchbay_plugin_api::osc::encode::encode_message_into;
use patchbay_plugin_api::osc::{OscArg, OscMessage, PacketRef};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::discovery::{self, DiscoveryEvent, Responder};
use super::pickle::PickleLimits;
use super::values::{self, Decoded};
use super::wire::{self, DataType, Header, Hello, PingPrefix, HEADER_SIZE};
use crate::channel::datagram::{default_retry_ms, BindError};
use crate::channel::stream::{
    self, default_frame_timeout_ms, default_max_age_ms, default_queue, default_reconnect_max_ms,
    default_reconnect_ms, default_true, Closed, ConnSet, HasLink, Link, LinkShared, ReadTimeouts,
};
use crate::channel::{ChannelContext, ChannelStatus, Origin, Output};
use crate::config::NetRange;
use crate::dispatch::{Dispatcher, RateLimitedLog};
use crate::metrics::{ChannelMetrics, PeerMetrics};

/// Event addresses (peerpy's event names). Every event's first two arguments are the channel and
/// the connection's `ip:port` (for `listen` and `stop`: the listening address).
pub const LISTEN_ADDRESS: &str = "/patchbay/peer/listen";
/// `,sssT` / `,sssF`: channel, ip:port, data type, whether the offer was accepted.
pub const OFFER_ADDRESS: &str = "/patchbay/peer/offer";
/// `,ssss`: channel, ip:port, data type, the peer's declared name.
pub const CONNECTION_ADDRESS: &str = "/patchbay/peer/connection";
/// `,sss`: channel, ip:port, reason.
pub const CLOSE_ADDRESS: &str = "/patchbay/peer/close";
pub const STOP_ADDRESS: &str = "/patchbay/peer/stop";

/// A peer to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTarget {
    pub address: SocketAddr,
    /// `json` (peerpy's default), `bytes` (OSC packets) or `raw` (pickles).
    #[serde(default = "default_data_type")]
    pub data_type: DataType,
    /// A strict connection closes when a DATA of another type arrives.
    #[serde(default = "default_true")]
    pub strict: bool,
    /// A streaming connection of fixed-size records.
    #[serde(default)]
    pub stream: bool,
}

/// A script function that decides each offer the allow list and the connection limit let through.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptScript {
    /// The script file, relative to the config file (as for route targets).
    pub script: String,
    /// Gets `#{channel, address, port, peer_name, data_type, strict, stream}`, returns true to
    /// accept.
    #[serde(rename = "fn", default = "default_accept_fn")]
    pub function: String,
}

fn default_accept_fn() -> String {
    "on_offer".into()
}

/// A running decider: the script's handle and the function to ask.
pub struct Decider {
    pub script: Arc<crate::script::ScriptHandle>,
    pub function: Arc<str>,
}

fn default_data_type() -> DataType {
    DataType::Json
}

/// `kind: peer`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub kind: String,
    /// Accept offers here (`ip:port`; port 0 picks a free port).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Peers to keep a connection to, reconnecting with backoff.
    #[serde(default)]
    pub connect: Vec<PeerTarget>,
    /// Source networks whose offers may be accepted (the connection's real address, never the name
    /// a peer declares); empty = all.
    #[serde(default)]
    pub allow: Vec<NetRange>,
    /// Accepted connections open at once; more offers are denied.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A script function that decides offers (after `allow` and `max_connections`).
    #[serde(default)]
    pub accept: Option<AcceptScript>,
    /// Where json values arrive (default `/peer/CHANNEL/json`).
    #[serde(default)]
    pub json_address: Option<String>,
    /// Where raw (pickle) values arrive (default `/peer/CHANNEL/raw`).
    #[serde(default)]
    pub raw_address: Option<String>,
    /// Largest `data_size` accepted, in bytes; a larger one closes the connection.
    #[serde(default = "default_max_data")]
    pub max_data: usize,
    /// Largest decoded pickle: values (every memo copy counted) and bytes of text.
    #[serde(default = "default_max_items")]
    pub max_pickle_items: usize,
    /// How long the other side may take to send its HELLO or answer ours.
    #[serde(default = "default_handshake_ms")]
    pub handshake_timeout_ms: u64,
    #[serde(default)]
    pub idle_timeout_ms: u64,
    /// A header or payload started but not finished within this time closes the connection.
    #[serde(default = "default_frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default = "default_max_age_ms")]
    pub max_age_ms: u64,
    #[serde(default = "default_reconnect_ms")]
    pub reconnect_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    #[serde(default = "default_true")]
    pub events: bool,
    /// Answer peerpy discovery PINGs on this UDP address (peerpy uses port 1024).
    #[serde(default)]
    pub discovery: Option<SocketAddr>,
    /// Stay silent to discovery PINGs (peerpy's `invisible`).
    #[serde(default)]
    pub invisible: bool,
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
}

fn default_max_connections() -> usize {
    16
}
fn default_max_data() -> usize {
    1 << 20
}
fn default_max_items() -> usize {
    100_000
}
fn default_handshake_ms() -> u64 {
    2_000
}

impl PeerConfig {
    pub fn needs_rebind(&self, new: &PeerConfig) -> bool {
        self.listen != new.listen || self.connect != new.connect || self.discovery != new.discovery
    }

    pub fn settings(&self, channel: &str) -> PeerSettings {
        PeerSettings {
            allow: self.allow.clone(),
            max_connections: self.max_connections,
            json_address: self
                .json_address
                .clone()
                .unwrap_or_else(|| format!("/peer/{channel}/json")),
            raw_address: self
                .raw_address
                .clone()
                .unwrap_or_else(|| format!("/peer/{channel}/raw")),
            max_data: self.max_data,
            pickle: PickleLimits {
                max_items: self.max_pickle_items,
                max_bytes: self.max_data.saturating_mul(16),
                ..PickleLimits::default()
            },
            handshake: Duration::from_millis(self.handshake_timeout_ms.max(1)),
            idle_timeout: (self.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(self.idle_timeout_ms)),
            frame_timeout: Some(Duration::from_millis(self.frame_timeout_ms.max(1))),
            reconnect: Duration::from_millis(self.reconnect_ms.max(10)),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms.max(self.reconnect_ms)),
            events: self.events,
            invisible: self.invisible,
        }
    }

    pub fn output(&self, name: Arc<str>, metrics: ChannelMetrics) -> PeerOutput {
        let clients = self
            .connect
            .iter()
            .map(|target| {
                Arc::new(PeerConn::new(
                    Link::client(target.address),
                    target.data_type,
                    target.strict,
                    target.stream,
                    String::new(),
                ))
            })
            .collect();
        PeerOutput {
            peer: PeerMetrics::new(&name),
            settings: ArcSwap::from_pointee(self.settings(&name)),
            shared: LinkShared::new(name, metrics, self.queue, self.max_age_ms),
            conns: ArcSwap::from_pointee(ConnSet::default()),
            edit: Mutex::new(()),
            clients,
            invisible: AtomicBool::new(self.invisible),
            decider: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Applies every setting that does not need a new listener or connection.
    pub fn apply_live(&self, channel: &str, output: &PeerOutput) {
        output.shared.set_limits(self.queue, self.max_age_ms);
        output.settings.store(Arc::new(self.settings(channel)));
        output.invisible.store(self.invisible, Ordering::Relaxed);
    }
}

/// What connections read and a reload swaps whole.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    pub allow: Vec<NetRange>,
    pub max_connections: usize,
    pub json_address: String,
    pub raw_address: String,
    pub max_data: usize,
    pub pickle: PickleLimits,
    pub handshake: Duration,
    pub idle_timeout: Option<Duration>,
    pub frame_timeout: Option<Duration>,
    pub reconnect: Duration,
    pub reconnect_max: Duration,
    pub events: bool,
    pub invisible: bool,
}

// ---------------------------------------------------------------------------------------------------
// Connections and the output

/// One peer connection: its link and what the handshake agreed.
pub struct PeerConn {
    link: Link,
    pub data_type: DataType,
    pub strict: bool,
    pub stream: bool,
    /// The name the other side declared (its listening address, by its own word).
    pub declared: String,
    /// Streaming: the record size the first DATA header fixed (0: not yet). Set under the link's
    /// lock when we send first, or by the reader when the other side does.
    record_size: AtomicUsize,
    /// Streaming: whether our one DATA header has gone out.
    header_sent: AtomicBool,
}

impl HasLink for PeerConn {
    fn link(&self) -> &Link {
        &self.link
    }
}

impl PeerConn {
    fn new(link: Link, data_type: DataType, strict: bool, stream: bool, declared: String) -> Self {
        PeerConn {
            link,
            data_type,
            strict,
            stream,
            declared,
            record_size: AtomicUsize::new(0),
            header_sent: AtomicBool::new(false),
        }
    }

    /// A new connection of a client link starts a new stream.
    fn reset_stream(&self) {
        self.record_size.store(0, Ordering::Relaxed);
        self.header_sent.store(false, Ordering::Relaxed);
    }

    /// Sends one payload of this connection's data type: with a DATA header, or as a bare record
    /// on a streaming connection once its size is fixed. False when a record of another size was
    /// refused.
    fn send_payload(&self, payload: &[u8], output: &PeerOutput) -> bool {
        if self.stream {
            let fixed = self.record_size.load(Ordering::Relaxed);
            if fixed != 0 && fixed != payload.len() {
                output.peer.skipped.increment(1);
                output.shared.drop_message(format_args!(
                    "a {}-byte record does not fit the stream to {} (its records are {fixed} bytes)",
                    payload.len(),
                    self.link.peer
                ));
                return false;
            }
        }
        self.link.send(&output.shared, |out| {
            let header = !self.stream || !self.header_sent.swap(true, Ordering::Relaxed);
            if header {
                if self.stream {
                    let _ = self.record_size.compare_exchange(
                        0,
                        payload.len(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                out.extend_from_slice(&wire::data(payload.len(), self.data_type));
            }
            out.extend_from_slice(payload);
        });
        output.peer.data_out(self.data_type.as_str()).increment(1);
        true
    }

    /// An OSC packet: as it is on a bytes connection, each message's arguments as a value on the
    /// others.
    fn send_osc(&self, packet: &[u8], output: &PeerOutput) {
        if self.data_type == DataType::Bytes {
            self.send_payload(packet, output);
            return;
        }
        let Ok(parsed) = PacketRef::parse(packet, &Default::default()) else {
            return;
        };
        for_each_message(
            parsed,
            &mut |args| match values::encode_osc_args(self.data_type, &args) {
                Ok(payload) => {
                    self.send_payload(&payload, output);
                }
                Err(e) => {
                    output.peer.skipped.increment(1);
                    output.shared.drop_message(format_args!(
                        "a message cannot be sent as {} to {}: {e}",
                        self.data_type, self.link.peer
                    ));
                }
            },
        );
    }
}

fn for_each_message(packet: PacketRef<'_>, each: &mut dyn FnMut(Vec<OscArg>)) {
    match packet {
        PacketRef::Message(message) => each(message.args()),
        PacketRef::Bundle(bundle) => {
            for element in bundle.elements() {
                for_each_message(element, each);
            }
        }
    }
}

/// The sending half of a peer channel, shared by every route that forwards to it.
pub struct PeerOutput {
    shared: LinkShared,
    peer: PeerMetrics,
    settings: ArcSwap<PeerSettings>,
    conns: ArcSwap<ConnSet<PeerConn>>,
    edit: Mutex<()>,
    clients: Vec<Arc<PeerConn>>,
    invisible: AtomicBool,
    decider: arc_swap::ArcSwapOption<Decider>,
}

impl PeerOutput {
    /// Sets (or clears) the script that decides offers; the runtime resolves it.
    pub fn set_decider(&self, decider: Option<Decider>) {
        self.decider.store(decider.map(Arc::new));
    }

    /// Asks the offer decider, if there is one: `None` to accept, `Some(why)` to deny.
    async fn decide(
        &self,
        ctx: &ChannelContext,
        peer: SocketAddr,
        hello: &Hello,
    ) -> Option<String> {
        let decider = self.decider.load_full()?;
        let offer = serde_json::json!({
            "channel": &*ctx.name,
            "address": peer.ip().to_string(),
            "port": peer.port(),
            "peer_name": hello.peer_name,
            "data_type": hello.data_type.as_str(),
            "strict": hello.strict,
            "stream": hello.stream,
        });
        let wait = self.settings.load().handshake;
        let Some(answer) = decider.script.ask(decider.function.clone(), offer) else {
            return Some(format!(
                "script `{}` is busy (its queue is full)",
                decider.script.name
            ));
        };
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(Ok(true))) => None,
            Ok(Ok(Ok(false))) => Some(format!(
                "`{}` in `{}` said no",
                decider.function, decider.script.name
            )),
            Ok(Ok(Err(e))) => Some(format!("script `{}`: {e}", decider.script.name)),
            Ok(Err(_)) => Some(format!("script `{}` stopped", decider.script.name)),
            Err(_) => Some(format!(
                "script `{}` did not answer within handshake_timeout_ms",
                decider.script.name
            )),
        }
    }

    fn add(&self, conn: Arc<PeerConn>) {
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.conns.load().with(Some(conn), None);
        self.conns.store(Arc::new(next));
    }

    fn remove(&self, peer: SocketAddr) {
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.conns.load().with(None, Some(peer));
        self.conns.store(Arc::new(next));
    }

    pub fn connection_count(&self) -> usize {
        self.conns.load().list.len()
    }

    /// The first configured peer, for the ready file.
    pub fn connect_address(&self) -> Option<SocketAddr> {
        self.clients.first().map(|c| c.link.peer)
    }

    fn conn(&self, addr: SocketAddr) -> Option<Arc<PeerConn>> {
        if let Some(conn) = self.conns.load().get(addr) {
            return Some(conn.clone());
        }
        self.clients.iter().find(|c| c.link.peer == addr).cloned()
    }

    fn wrong_type(&self, what: &str, conn: &PeerConn) {
        self.peer.skipped.increment(1);
        self.shared.drop_message(format_args!(
            "{what} needs a bytes connection; the connection to {} carries {}",
            conn.link.peer, conn.data_type
        ));
    }

    /// A script's `peer.send(value)`: a json value, a pickle of plain data, or (bytes connections)
    /// the bytes of a string or byte array.
    pub fn send_value(&self, origin: &Origin, value: &serde_json::Value) -> Result<(), String> {
        let conn = self
            .conn(origin.addr)
            .ok_or_else(|| format!("the connection from {} is closed", origin.addr))?;
        let payload = match conn.data_type {
            DataType::Bytes => match value {
                serde_json::Value::String(text) => text.as_bytes().to_vec(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_u64().filter(|b| *b < 256).map(|b| b as u8))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or("a bytes connection takes a string or an array of byte values")?,
                _ => {
                    return Err(
                        "a bytes connection takes a string or an array of byte values".into(),
                    )
                }
            },
            data_type => values::encode_value(data_type, value).map_err(|e| e.to_string())?,
        };
        if conn.send_payload(&payload, self) {
            Ok(())
        } else {
            Err("the record does not fit the stream's fixed size".into())
        }
    }
}

impl Output for PeerOutput {
    fn name(&self) -> &str {
        &self.shared.name
    }

    /// Every connected peer (peerpy's `broadcast`), each in its own data type.
    fn send(&self, packet: &[u8]) {
        let set = self.conns.load();
        if set.list.is_empty() && self.clients.is_empty() {
            self.shared
                .drop_message(format_args!("the channel has no connected peer"));
            return;
        }
        for conn in set.list.iter().chain(self.clients.iter()) {
            conn.send_osc(packet, self);
        }
    }

    /// `reply: true` and `peer.send_osc`: OSC on a bytes connection; an error (counted, logged) on
    /// the others.
    fn reply(&self, origin: &Origin, packet: &[u8]) {
        match self.conn(origin.addr) {
            Some(conn) if conn.data_type == DataType::Bytes => {
                conn.send_payload(packet, self);
            }
            Some(conn) => self.wrong_type("send_osc", &conn),
            None => self.shared.drop_message(format_args!(
                "the connection from {} is closed",
                origin.addr
            )),
        }
    }

    /// `send_bytes` / a plugin's `send`: the bytes on a bytes connection; on json and raw
    /// connections, text is sent as the JSON value it spells, or as a string when it is not JSON
    /// (so a plugin, which has no values of its own, can send any value as JSON text).
    fn reply_raw(&self, origin: &Origin, bytes: &[u8]) {
        match self.conn(origin.addr) {
            Some(conn) if conn.data_type == DataType::Bytes => {
                conn.send_payload(bytes, self);
            }
            Some(conn) => match std::str::from_utf8(bytes) {
                Ok(text) => {
                    let value = serde_json::from_str(text)
                        .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
                    if let Err(e) = PeerOutput::send_value(self, origin, &value) {
                        self.shared.drop_message(format_args!("{e}"));
                    }
                }
                Err(_) => self.wrong_type("send_bytes of bytes that are not text", &conn),
            },
            None => self.shared.drop_message(format_args!(
                "the connection from {} is closed",
                origin.addr
            )),
        }
    }

    fn close(&self, origin: &Origin) -> bool {
        self.conn(origin.addr).is_some_and(|c| c.link.close())
    }

    fn carries_values(&self) -> bool {
        true
    }

    fn carries_osc(&self, origin: &Origin) -> bool {
        self.conn(origin.addr)
            .is_some_and(|c| c.data_type == DataType::Bytes)
    }

    fn send_value(&self, origin: &Origin, value: &serde_json::Value) -> Option<Result<(), String>> {
        Some(PeerOutput::send_value(self, origin, value))
    }
}

// ---------------------------------------------------------------------------------------------------
// Running

/// What a reload binds before it commits: the offer listener and the discovery socket.
pub struct PeerBound {
    pub listener: Option<TcpListener>,
    pub discovery: Option<tokio::net::UdpSocket>,
}

pub enum Startup {
    Bound(PeerBound),
    Retry { strict: bool },
}

/// Binds the listener and the discovery socket.
pub fn bind(config: &PeerConfig) -> std::io::Result<PeerBound> {
    Ok(PeerBound {
        listener: config.listen.map(stream::bind).transpose()?,
        discovery: config.discovery.map(discovery::bind_socket).transpose()?,
    })
}

/// Serves until cancelled: offers, configured peers and discovery.
pub async fn run(
    config: PeerConfig,
    output: Arc<PeerOutput>,
    ctx: ChannelContext,
    startup: Startup,
) -> Result<(), BindError> {
    let connect_addr = config.connect.first().map(|t| t.address);
    let (listener, discovery_socket) = match startup {
        Startup::Bound(bound) => (bound.listener, bound.discovery),
        Startup::Retry { strict } => {
            let listener = match config.listen {
                None => None,
                Some(addr) => match crate::channel::datagram::bind_with_retry(
                    &ctx,
                    "peer",
                    addr,
                    connect_addr,
                    config.retry_ms,
                    strict,
                    || stream::bind(addr),
                )
                .await?
                {
                    Some(listener) => Some(listener),
                    None => return Ok(()),
                },
            };
            let discovery = match config.discovery.map(discovery::bind_socket).transpose() {
                Ok(socket) => socket,
                Err(source) => {
                    let error = BindError {
                        channel: ctx.name.to_string(),
                        kind: "udp (peer discovery)",
                        addr: config.discovery.unwrap_or(([0, 0, 0, 0], 0).into()),
                        source,
                    };
                    if strict {
                        return Err(error);
                    }
                    tracing::error!(channel = %ctx.name, "Peer discovery is off: {error}. Connections are not affected.");
                    None
                }
            };
            (listener, discovery)
        }
    };
    let ctx = Arc::new(ctx);
    let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    let status = ChannelStatus {
        kind: "peer",
        listen: listen_addr,
        local: discovery_socket.as_ref().and_then(|s| s.local_addr().ok()),
        send: connect_addr,
        up: listener.is_some(),
        error: (listener.is_none()).then(|| "connecting to its peers".to_string()),
    };
    if listener.is_some() {
        ctx.metrics.up.set(1.0);
    }
    ctx.status.set(&ctx.name, status);

    let mut tasks = Vec::new();
    for conn in &output.clients {
        let (conn, output, ctx) = (conn.clone(), output.clone(), ctx.clone());
        tasks.push(tokio::spawn(async move {
            client(conn, output, ctx, listen_addr).await
        }));
    }
    if let Some(socket) = discovery_socket {
        let (output, ctx) = (output.clone(), ctx.clone());
        let ponger = listen_addr.unwrap_or(([127, 0, 0, 1], 0).into());
        tasks.push(tokio::spawn(async move {
            discovery_loop(socket, ponger, output, ctx).await
        }));
    }
    if let Some(listener) = listener {
        let addr = listen_addr.unwrap_or(([0, 0, 0, 0], 0).into());
        tracing::info!(channel = %ctx.name, listen = %addr, "Channel is up: accepting peer offers.");
        let mut inbound = ctx.inbound.fork();
        simple_event(&mut inbound, &output, &ctx, LISTEN_ADDRESS, addr);
        accept_loop(listener, &output, &ctx).await;
        simple_event(&mut inbound, &output, &ctx, STOP_ADDRESS, addr);
    } else {
        ctx.cancel.cancelled().await;
    }
    for task in tasks {
        let _ = task.await;
    }
    if !ctx.is_replaced() {
        ctx.metrics.up.set(0.0);
    }
    Ok(())
}

async fn discovery_loop(
    socket: tokio::net::UdpSocket,
    ponger: SocketAddr,
    output: Arc<PeerOutput>,
    ctx: Arc<ChannelContext>,
) {
    let mut log = RateLimitedLog::new(Duration::from_secs(1));
    // `invisible` is live: the responder is restarted when it changes.
    loop {
        let invisible = output.invisible.load(Ordering::Relaxed);
        let stop = ctx.cancel.child_token();
        let watch = {
            let (stop, output) = (stop.clone(), output.clone());
            async move {
                while output.invisible.load(Ordering::Relaxed) == invisible {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                stop.cancel();
            }
        };
        let responder = discovery::respond(
            &socket,
            Responder { ponger, invisible },
            stop.clone(),
            |event| match event {
                DiscoveryEvent::Answered { .. } => output.peer.pongs.increment(1),
                DiscoveryEvent::Refused { from, error } => {
                    output.peer.protocol_errors.increment(1);
                    let name = &ctx.name;
                    log.log(|suppressed| {
                        tracing::warn!(channel = %name, sender = %from, suppressed,
                        "Ignored a discovery datagram: {error}.")
                    });
                }
                _ => {}
            },
        );
        tokio::select! {
            _ = responder => {}
            _ = watch => {}
        }
        if ctx.cancel.is_cancelled() {
            return;
        }
    }
}

async fn accept_loop(listener: TcpListener, output: &Arc<PeerOutput>, ctx: &Arc<ChannelContext>) {
    let mut refusals = RateLimitedLog::new(Duration::from_secs(1));
    loop {
        let accepted = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(channel = %ctx.name, error = %e, "Cannot accept a connection; retrying shortly.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let settings = output.settings.load_full();
        let refusal = stream::refusal(
            &settings.allow,
            settings.max_connections,
            output.connection_count(),
            peer,
        );
        let _ = stream.set_nodelay(true);
        let (output, ctx) = (output.clone(), ctx.clone());
        if refusal.is_some() {
            // Said once per offer when its HELLO has arrived; this only keeps a flood visible.
            refusals.log(|suppressed| {
                if suppressed > 0 {
                    tracing::warn!(channel = %ctx.name, suppressed, "Denying offers at a high rate.")
                }
            });
        }
        tokio::spawn(async move {
            offer(stream, peer, refusal, settings, output, ctx).await;
        });
    }
}

/// Reads the HELLO, answers ACCEPT or DENY, and serves an accepted connection until it ends.
async fn offer(
    mut stream: TcpStream,
    peer: SocketAddr,
    refusal: Option<String>,
    settings: Arc<PeerSettings>,
    output: Arc<PeerOutput>,
    ctx: Arc<ChannelContext>,
) {
    let mut header = [0u8; HEADER_SIZE];
    let read = tokio::time::timeout(settings.handshake, stream.read_exact(&mut header)).await;
    let hello = match read {
        Ok(Ok(_)) => match wire::parse(&header, settings.max_data) {
            Ok(Header::Hello(hello)) => hello,
            Ok(other) => {
                output.peer.protocol_errors.increment(1);
                tracing::warn!(channel = %ctx.name, peer = %peer,
                    "Closed a connection: it sent a {} header where a HELLO offer belongs.", header_name(&other));
                return;
            }
            Err(e) => {
                output.peer.protocol_errors.increment(1);
                tracing::warn!(channel = %ctx.name, peer = %peer,
                    "Closed a connection: its offer is not a valid HELLO header: {e}.");
                let _ = stream.write_all(&wire::DENY).await;
                return;
            }
        },
        Ok(Err(e)) => {
            tracing::debug!(channel = %ctx.name, peer = %peer, error = %e, "A connection closed before its offer.");
            return;
        }
        Err(_) => {
            output.peer.protocol_errors.increment(1);
            tracing::warn!(channel = %ctx.name, peer = %peer,
                "Closed a connection: no complete 128-byte HELLO within handshake_timeout_ms ({} ms).",
                settings.handshake.as_millis());
            return;
        }
    };
    let mut inbound = ctx.inbound.fork();
    let refusal = match refusal {
        Some(why) => Some(why),
        None => output.decide(&ctx, peer, &hello).await,
    };
    if let Some(why) = &refusal {
        tracing::warn!(channel = %ctx.name, peer = %peer, declared = %hello.peer_name, "Denied an offer: {why}.");
    }
    let accepted = refusal.is_none();
    offer_event(&mut inbound, &output, &ctx, peer, &hello, accepted);
    if !accepted {
        output.peer.denied.increment(1);
        let _ = stream.write_all(&wire::DENY).await;
        return;
    }
    if stream.write_all(&wire::ACCEPT).await.is_err() {
        return;
    }
    output.peer.accepted.increment(1);
    output.shared.stream.accepted.increment(1);
    tracing::info!(channel = %ctx.name, peer = %peer, declared = %hello.peer_name, data_type = %hello.data_type,
        strict = hello.strict, stream = hello.stream, "Accepted a peer offer.");
    let stream = Arc::new(stream);
    let session = ctx.cancel.child_token();
    let conn = Arc::new(PeerConn::new(
        Link::accepted(peer, stream.clone(), session.clone()),
        hello.data_type,
        hello.strict,
        hello.stream,
        hello.peer_name.clone(),
    ));
    output.add(conn.clone());
    output.shared.stream.connections.increment(1.0);
    connection_event(&mut inbound, &output, &ctx, &conn);
    let reading = async {
        let reason = read_data(&stream, &conn, &session, &mut inbound, &output, &ctx).await;
        session.cancel();
        reason
    };
    let (reason, ()) = tokio::join!(reading, conn.link.writer(&output.shared, session.clone()));
    count_protocol_error(&output, &reason);
    output.remove(peer);
    output.shared.stream.connections.decrement(1.0);
    conn.link.detach(&output.shared);
    reason.log(&ctx.name, peer);
    close_event(&mut inbound, &output, &ctx, peer, &reason);
}

/// A configured peer: connect, offer (HELLO), and on ACCEPT serve; reconnect with backoff.
async fn client(
    conn: Arc<PeerConn>,
    output: Arc<PeerOutput>,
    ctx: Arc<ChannelContext>,
    listen: Option<SocketAddr>,
) {
    let mut inbound = ctx.inbound.fork();
    let server = conn.link.peer;
    let mut backoff = output.settings.load().reconnect;
    let mut attempts = 0u64;
    let mut failures = RateLimitedLog::new(Duration::from_secs(10));
    let writer = {
        let (conn, output, stop) = (conn.clone(), output.clone(), ctx.cancel.clone());
        tokio::spawn(async move { conn.link.writer(&output.shared, stop).await })
    };
    loop {
        if attempts > 0 {
            output.shared.stream.reconnects.increment(1);
            if !stream::sleep_or_cancel(&ctx.cancel, backoff).await {
                break;
            }
            backoff = (backoff * 2).min(output.settings.load().reconnect_max);
        }
        attempts += 1;
        let settings = output.settings.load_full();
        let connecting = async {
            let mut stream = TcpStream::connect(server).await?;
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr()?;
            // peerpy keys its connections by this name: our listening address, or this
            // connection's own address when we do not listen.
            let name = listen.filter(|l| !l.ip().is_unspecified()).unwrap_or(local);
            stream
                .write_all(&wire::hello(name, conn.data_type, conn.strict, conn.stream))
                .await?;
            let mut answer = [0u8; HEADER_SIZE];
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>((stream, answer))
        };
        let result = tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            r = tokio::time::timeout(settings.handshake + Duration::from_secs(3), connecting) => r,
        };
        let (stream, answer) = match result {
            Ok(Ok(done)) => done,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer to our offer in time".to_string(),
                };
                failures.log(|suppressed| tracing::warn!(channel = %ctx.name, peer = %server, suppressed,
                    "Cannot connect to the peer: {why}. Retrying with backoff; messages are queued meanwhile."));
                continue;
            }
        };
        match wire::parse(&answer, settings.max_data) {
            Ok(Header::Accept) => {}
            Ok(Header::Deny) => {
                output.peer.denied.increment(1);
                failures.log(|suppressed| tracing::warn!(channel = %ctx.name, peer = %server, suppressed,
                    "The peer denied our offer (data_type {}). Retrying with backoff.", conn.data_type));
                continue;
            }
            other => {
                output.peer.protocol_errors.increment(1);
                let what = match other {
                    Ok(header) => format!("a {} header", header_name(&header)),
                    Err(e) => e.to_string(),
                };
                failures.log(|suppressed| tracing::warn!(channel = %ctx.name, peer = %server, suppressed,
                    "The peer answered our offer with something else than ACCEPT or DENY ({what}). Retrying."));
                continue;
            }
        }
        backoff = settings.reconnect;
        let stream = Arc::new(stream);
        let session = ctx.cancel.child_token();
        conn.reset_stream();
        conn.link
            .attach(stream.clone(), session.clone(), &output.shared);
        output.shared.stream.connections.increment(1.0);
        ctx.status.update(&ctx.name, |s| {
            if s.listen.is_none() {
                s.up = true;
                s.error = None;
            }
        });
        tracing::info!(channel = %ctx.name, peer = %server, data_type = %conn.data_type, "Connected to the peer.");
        connection_event(&mut inbound, &output, &ctx, &conn);
        let reason = read_data(&stream, &conn, &session, &mut inbound, &output, &ctx).await;
        count_protocol_error(&output, &reason);
        session.cancel();
        conn.link.detach(&output.shared);
        output.shared.stream.connections.decrement(1.0);
        if ctx.cancel.is_cancelled() {
            break;
        }
        ctx.status.update(&ctx.name, |s| {
            if s.listen.is_none() {
                s.up = output.clients.iter().any(|c| c.link.is_connected());
            }
        });
        tracing::warn!(channel = %ctx.name, peer = %server,
            "Lost the connection to the peer: {}. Reconnecting; messages are queued meanwhile.", reason.describe());
        close_event(&mut inbound, &output, &ctx, server, &reason);
    }
    let _ = writer.await;
}

/// Where the reader is in the stream.
enum Reading {
    Header,
    Payload { size: usize, data_type: DataType },
}

/// Reads headers and payloads until the connection ends; routes what arrives.
async fn read_data(
    stream: &TcpStream,
    conn: &PeerConn,
    session: &CancellationToken,
    inbound: &mut Dispatcher,
    output: &PeerOutput,
    ctx: &ChannelContext,
) -> Closed {
    let origin = Origin {
        channel: ctx.id,
        addr: conn.link.peer,
    };
    let mut state = Reading::Header;
    let mut message = Vec::new();
    let timeouts = || {
        let settings = output.settings.load();
        ReadTimeouts {
            idle: settings.idle_timeout,
            frame: settings.frame_timeout,
        }
    };
    stream::read_loop(stream, session, &output.shared.stream, timeouts, |input| {
        let settings = output.settings.load();
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match state {
                Reading::Header => {
                    let fixed = conn.record_size.load(Ordering::Relaxed);
                    if conn.stream && fixed != 0 {
                        // A bare record, or a PING peerpy sends between records when idle.
                        match wire::ping_prefix(rest) {
                            PingPrefix::Ping => {
                                at += HEADER_SIZE;
                                continue;
                            }
                            PingPrefix::NeedMore => return Ok(at),
                            PingPrefix::Record => {
                                state = Reading::Payload {
                                    size: fixed,
                                    data_type: conn.data_type,
                                };
                                continue;
                            }
                        }
                    }
                    if rest.len() < HEADER_SIZE {
                        return Ok(at);
                    }
                    let header = wire::parse(&rest[..HEADER_SIZE], settings.max_data)
                        .map_err(|e| Closed::Protocol(format!("bad header: {e}")))?;
                    at += HEADER_SIZE;
                    match header {
                        Header::Ping => {}
                        Header::Data(data) => {
                            if conn.strict && data.data_type != conn.data_type {
                                output.peer.skipped.increment(1);
                                return Err(Closed::Protocol(format!(
                                    "the strict {} connection received {} data",
                                    conn.data_type, data.data_type
                                )));
                            }
                            if conn.stream {
                                let _ = conn.record_size.compare_exchange(
                                    0,
                                    data.data_size,
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                );
                            }
                            state = Reading::Payload {
                                size: data.data_size,
                                data_type: data.data_type,
                            };
                        }
                        other => {
                            return Err(Closed::Protocol(format!(
                                "a {} header after the handshake",
                                header_name(&other)
                            )))
                        }
                    }
                }
                Reading::Payload { size, data_type } => {
                    if rest.len() < size {
                        return Ok(at);
                    }
                    let payload = &rest[..size];
                    at += size;
                    state = Reading::Header;
                    output.shared.stream.frames_in.increment(1);
                    output.peer.data_in(data_type.as_str()).increment(1);
                    deliver(
                        payload,
                        data_type,
                        &settings,
                        origin,
                        inbound,
                        output,
                        &mut message,
                    );
                }
            }
        }
    })
    .await
}

/// A header's type as it is written on the wire, for logs.
fn header_name(header: &Header) -> &'static str {
    match header {
        Header::Hello(_) => "HELLO",
        Header::Accept => "ACCEPT",
        Header::Deny => "DENY",
        Header::Data(_) => "DATA",
        Header::Ping => "PING",
    }
}

/// Counts a connection that ended on bad input as a protocol error.
fn count_protocol_error(output: &PeerOutput, reason: &Closed) {
    if matches!(reason, Closed::Protocol(_) | Closed::Stalled(_)) {
        output.peer.protocol_errors.increment(1);
    }
}

/// Routes one payload: OSC as it is; values as a message at the channel's address, the full
/// value alongside for scripts. A payload that does not decode is dropped and counted.
fn deliver(
    payload: &[u8],
    data_type: DataType,
    settings: &PeerSettings,
    origin: Origin,
    inbound: &mut Dispatcher,
    output: &PeerOutput,
    message: &mut Vec<u8>,
) {
    let (decoded, address) = match data_type {
        DataType::Bytes => return inbound.datagram(payload, origin),
        DataType::Json => (values::decode_json_payload(payload), &settings.json_address),
        DataType::Raw => (
            values::decode_raw_payload(payload, &settings.pickle),
            &settings.raw_address,
        ),
    };
    match decoded {
        Ok(Decoded { value, args }) => {
            message.clear();
            encode_message_into(
                &OscMessage {
                    address: address.clone(),
                    args,
                },
                message,
            );
            inbound.value_message(message, origin, Arc::new(value));
        }
        Err(e) => {
            output.peer.protocol_errors.increment(1);
            inbound.reject_payload(
                &origin,
                format_args!(
                    "a {data_type} payload of {} bytes does not decode: {e}",
                    payload.len()
                ),
            );
        }
    }
}

fn event(
    inbound: &mut Dispatcher,
    output: &PeerOutput,
    ctx: &ChannelContext,
    address: &str,
    peer: SocketAddr,
    more: Vec<OscArg>,
) {
    if output.settings.load().events {
        stream::route_event(inbound, ctx, address, peer, more);
    }
}

fn simple_event(
    inbound: &mut Dispatcher,
    output: &PeerOutput,
    ctx: &ChannelContext,
    address: &str,
    addr: SocketAddr,
) {
    event(inbound, output, ctx, address, addr, vec![]);
}

fn offer_event(
    inbound: &mut Dispatcher,
    output: &PeerOutput,
    ctx: &ChannelContext,
    peer: SocketAddr,
    hello: &Hello,
    accepted: bool,
) {
    let verdict = if accepted {
        OscArg::True
    } else {
        OscArg::False
    };
    event(
        inbound,
        output,
        ctx,
        OFFER_ADDRESS,
        peer,
        vec![OscArg::String(hello.data_type.to_string()), verdict],
    );
}

fn connection_event(
    inbound: &mut Dispatcher,
    output: &PeerOutput,
    ctx: &ChannelContext,
    conn: &PeerConn,
) {
    event(
        inbound,
        output,
        ctx,
        CONNECTION_ADDRESS,
        conn.link.peer,
        vec![
            OscArg::String(conn.data_type.to_string()),
            OscArg::String(conn.declared.clone()),
        ],
    );
}

fn close_event(
    inbound: &mut Dispatcher,
    output: &PeerOutput,
    ctx: &ChannelContext,
    peer: SocketAddr,
    reason: &Closed,
) {
    if !ctx.cancel.is_cancelled() {
        event(
            inbound,
            output,
            ctx,
            CLOSE_ADDRESS,
            peer,
            vec![OscArg::String(reason.describe())],
        );
    }
}
