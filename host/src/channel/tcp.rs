//! The `tcp` channel: OSC (or text lines, or raw chunks) over TCP, as a server (`listen`), a client
//! (`connect`), or both.
//!
//! Each accepted connection is an origin of its own: replies, a script's `peer` and a plugin's reply
//! go back on it with its framing. Outgoing packets are written straight from the routing task when
//! the connection can take them (no queue hop, like the datagram outputs); only what the socket
//! cannot take at once waits in the connection's bounded queue, which one writer task per
//! connection drains. So a slow connection fills its own queue and drops (counted) without holding
//! up the others or the routing task.
//!
//! A client keeps its queue across reconnects: messages routed while the server is away are sent
//! when it is back, unless they are older than `max_age_ms` (a stale `/go` must not fire late).
//!
//! Connection events: opening and closing arrive as messages from the connection itself at
//! [`OPEN_ADDRESS`] and [`CLOSE_ADDRESS`], so ordinary routes can send them to scripts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use patchbay_plugin_api::osc::OscArg;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::channel::datagram::{default_retry_ms, payloads, BindError};
use crate::channel::framing::{self, Decoder, Framing};
use crate::channel::stream::{
    self, default_frame_timeout_ms, default_max_age_ms, default_queue, default_reconnect_max_ms,
    default_reconnect_ms, default_true, Closed, ConnSet, HasLink, Link, LinkShared, ReadTimeouts,
};
use crate::channel::{ChannelContext, ChannelStatus, Origin, Output};
use crate::config::NetRange;
use crate::dispatch::{Dispatcher, RateLimitedLog};
use crate::metrics::ChannelMetrics;

/// Where a connection opening arrives: `,ss` channel, remote `ip:port`.
pub const OPEN_ADDRESS: &str = "/patchbay/tcp/open";
/// Where a connection closing arrives: `,sss` channel, remote `ip:port`, reason.
pub const CLOSE_ADDRESS: &str = "/patchbay/tcp/close";

/// `kind: tcp`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Always "tcp"; kept so one entry deserializes as a whole.
    pub kind: String,
    /// Accept connections here (`ip:port`; port 0 picks a free port).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Keep one connection open to this server, reconnecting with backoff.
    #[serde(default)]
    pub connect: Option<SocketAddr>,
    /// `slip`, `length`, `auto` (servers), `lines` or `raw`. Default `auto` for a server-only
    /// channel; required with `connect`.
    #[serde(default)]
    pub framing: Option<Framing>,
    /// `lines`: what ends a line (default "\n"; a "\r" before it is dropped too).
    #[serde(default)]
    pub terminator: Option<String>,
    /// `lines` / `raw`: the address incoming lines or chunks get (default `/raw/CHANNEL`).
    #[serde(default)]
    pub raw_address: Option<String>,
    /// Largest frame (or line) accepted, in bytes; a larger one closes the connection.
    #[serde(default = "default_max_frame")]
    pub max_frame: usize,
    /// Accepted connections open at once; more are closed at once and counted as refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Close a connection that sends nothing for this long (0: never).
    #[serde(default)]
    pub idle_timeout_ms: u64,
    /// Close a connection that started a frame and did not finish it within this time.
    #[serde(default = "default_frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    /// Source networks allowed to connect; empty = all.
    #[serde(default)]
    pub allow: Vec<NetRange>,
    /// Messages waiting per connection (and for the client while it is disconnected); past it the
    /// new message is dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// A queued message older than this when it could be written is dropped, not sent late.
    #[serde(default = "default_max_age_ms")]
    pub max_age_ms: u64,
    /// Client: the first retry delay, doubled after each failure up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_ms")]
    pub reconnect_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Connection open/close events routed as messages.
    #[serde(default = "default_true")]
    pub events: bool,
    /// How long to wait before binding again when the listening port is taken.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
}

pub fn default_max_frame() -> usize {
    1 << 20
}
fn default_max_connections() -> usize {
    64
}

/// Changing these needs a new listener or connection; every other setting changes in place.
pub const REBIND_KEYS: &[&str] = &["kind", "listen", "connect", "framing", "terminator"];

impl TcpConfig {
    /// The framing in force (`auto` when a server-only channel does not say).
    pub fn framing(&self) -> Framing {
        self.framing.unwrap_or(Framing::Auto)
    }

    pub fn terminator(&self) -> Vec<u8> {
        self.terminator
            .as_deref()
            .filter(|t| !t.is_empty())
            .unwrap_or("\n")
            .as_bytes()
            .to_vec()
    }

    pub fn needs_rebind(&self, new: &TcpConfig) -> bool {
        self.listen != new.listen
            || self.connect != new.connect
            || self.framing() != new.framing()
            || self.terminator() != new.terminator()
    }

    pub fn settings(&self, channel: &str) -> TcpSettings {
        TcpSettings {
            raw_address: self
                .raw_address
                .clone()
                .unwrap_or_else(|| format!("/raw/{channel}")),
            max_frame: self.max_frame,
            max_connections: self.max_connections,
            idle_timeout: ms(self.idle_timeout_ms),
            frame_timeout: ms(self.frame_timeout_ms).or(Some(Duration::from_secs(3600))),
            allow: self.allow.clone(),
            queue: self.queue,
            max_age: Duration::from_millis(self.max_age_ms),
            reconnect: Duration::from_millis(self.reconnect_ms.max(10)),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms.max(self.reconnect_ms)),
            events: self.events,
        }
    }

    pub fn output(&self, name: Arc<str>, metrics: ChannelMetrics) -> TcpOutput {
        let settings = self.settings(&name);
        let client = self.connect.map(|addr| {
            Arc::new(Conn::new(
                Link::client(addr),
                self.framing(),
                self.terminator().into(),
            ))
        });
        TcpOutput {
            shared: LinkShared::new(name, metrics, self.queue, self.max_age_ms),
            settings: ArcSwap::from_pointee(settings),
            conns: ArcSwap::from_pointee(ConnSet::default()),
            edit: Mutex::new(()),
            client,
        }
    }

    /// Applies every setting that does not need a new listener or connection.
    pub fn apply_live(&self, channel: &str, output: &TcpOutput) {
        output.shared.set_limits(self.queue, self.max_age_ms);
        output.settings.store(Arc::new(self.settings(channel)));
    }
}

fn ms(value: u64) -> Option<Duration> {
    (value > 0).then(|| Duration::from_millis(value))
}

/// What connections read per read (or per write) and a reload swaps whole.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    pub raw_address: String,
    pub max_frame: usize,
    pub max_connections: usize,
    pub idle_timeout: Option<Duration>,
    pub frame_timeout: Option<Duration>,
    pub allow: Vec<NetRange>,
    pub queue: usize,
    pub max_age: Duration,
    pub reconnect: Duration,
    pub reconnect_max: Duration,
    pub events: bool,
}

// ---------------------------------------------------------------------------------------------------
// Connections and the output

/// One connection: its link and the framing replies use (for `auto`, what its first byte decided).
pub struct Conn {
    link: Link,
    framing: AtomicU8,
    terminator: Arc<[u8]>,
}

impl HasLink for Conn {
    fn link(&self) -> &Link {
        &self.link
    }
}

const FRAMINGS: [Framing; 5] = [
    Framing::Slip,
    Framing::Length,
    Framing::Auto,
    Framing::Lines,
    Framing::Raw,
];

fn framing_code(framing: Framing) -> u8 {
    FRAMINGS.iter().position(|f| *f == framing).unwrap_or(0) as u8
}

impl Conn {
    fn new(link: Link, framing: Framing, terminator: Arc<[u8]>) -> Self {
        Conn {
            link,
            framing: AtomicU8::new(framing_code(framing)),
            terminator,
        }
    }

    fn framing(&self) -> Framing {
        FRAMINGS[self.framing.load(Ordering::Relaxed) as usize % FRAMINGS.len()]
    }

    /// Frames `packet` (OSC, or each message's payload for lines/raw) and writes or queues it;
    /// `framed: false` writes the bytes as they are (a script's `peer.send_bytes`).
    fn send(&self, packet: &[u8], shared: &LinkShared, framed: bool) {
        let framing = if framed { self.framing() } else { Framing::Raw };
        if framed && !framing.is_osc() {
            // A text device gets each message's string or blob, not OSC.
            payloads(packet, |payload| match payload {
                Ok(bytes) => self.send_frame(bytes, framing, shared),
                Err(address) => shared.drop_message(format_args!(
                    "`{address}` has no string or blob argument to send to a {} channel",
                    framing.name()
                )),
            });
        } else {
            self.send_frame(packet, framing, shared);
        }
    }

    fn send_frame(&self, payload: &[u8], framing: Framing, shared: &LinkShared) {
        self.link.send(shared, |out| {
            framing::encode(framing, &self.terminator, payload, out)
        });
    }
}

/// The sending half of a TCP channel, shared by every route that forwards to it.
pub struct TcpOutput {
    shared: LinkShared,
    settings: ArcSwap<TcpSettings>,
    conns: ArcSwap<ConnSet<Conn>>,
    /// Serialises changes to `conns` (copy on write).
    edit: Mutex<()>,
    client: Option<Arc<Conn>>,
}

impl TcpOutput {
    pub fn connect_address(&self) -> Option<SocketAddr> {
        self.client.as_ref().map(|c| c.link.peer)
    }

    fn add(&self, conn: Arc<Conn>) {
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

    fn conn(&self, addr: SocketAddr) -> Option<Arc<Conn>> {
        if let Some(conn) = self.conns.load().get(addr) {
            return Some(conn.clone());
        }
        self.client
            .as_ref()
            .filter(|c| c.link.peer == addr)
            .cloned()
    }

    fn no_connection(&self, origin: &Origin) {
        self.shared.drop_message(format_args!(
            "the connection from {} is closed",
            origin.addr
        ));
    }
}

impl Output for TcpOutput {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn send(&self, packet: &[u8]) {
        let set = self.conns.load();
        if set.list.is_empty() && self.client.is_none() {
            self.shared
                .drop_message(format_args!("the channel has no open connection"));
            return;
        }
        for conn in &set.list {
            conn.send(packet, &self.shared, true);
        }
        if let Some(client) = &self.client {
            client.send(packet, &self.shared, true);
        }
    }

    fn reply(&self, origin: &Origin, packet: &[u8]) {
        match self.conn(origin.addr) {
            Some(conn) => conn.send(packet, &self.shared, true),
            None => self.no_connection(origin),
        }
    }

    fn reply_raw(&self, origin: &Origin, bytes: &[u8]) {
        match self.conn(origin.addr) {
            Some(conn) => conn.send(bytes, &self.shared, false),
            None => self.no_connection(origin),
        }
    }

    fn close(&self, origin: &Origin) -> bool {
        self.conn(origin.addr).is_some_and(|conn| conn.link.close())
    }
}

// ---------------------------------------------------------------------------------------------------
// Running

/// How the channel gets its listener: bound already by a reload (so it can roll back), or bound
/// here with retries. A client-only channel has none.
pub enum Startup {
    Bound(Option<TcpListener>),
    Retry { strict: bool },
}

/// Serves until cancelled: the accept loop, the client connection, or both.
pub async fn run(
    config: TcpConfig,
    output: Arc<TcpOutput>,
    ctx: ChannelContext,
    startup: Startup,
) -> Result<(), BindError> {
    let mut status = ChannelStatus {
        kind: "tcp",
        listen: config.listen,
        local: None,
        send: config.connect,
        up: false,
        error: config
            .connect
            .filter(|_| config.listen.is_none())
            .map(|server| format!("connecting to {server}")),
    };
    let listener = match (startup, config.listen) {
        (Startup::Bound(listener), _) => listener,
        (Startup::Retry { .. }, None) => None,
        (Startup::Retry { strict }, Some(addr)) => match crate::channel::datagram::bind_with_retry(
            &ctx,
            "tcp",
            addr,
            config.connect,
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
    let ctx = Arc::new(ctx);
    if let Some(listener) = &listener {
        status.listen = listener.local_addr().ok();
        status.up = true;
        status.error = None;
        ctx.metrics.up.set(1.0);
        tracing::info!(channel = %ctx.name, listen = ?status.listen, framing = config.framing().name(),
            "Channel is up: accepting TCP connections.");
    }
    ctx.status.set(&ctx.name, status);

    let client = output.client.clone().map(|conn| {
        let (ctx, output) = (ctx.clone(), output.clone());
        let server_part = listener.is_some();
        tokio::spawn(async move { client(conn, output, ctx, server_part).await })
    });
    if let Some(listener) = listener {
        accept_loop(listener, &config, &output, &ctx).await;
    } else {
        ctx.cancel.cancelled().await;
    }
    if let Some(client) = client {
        let _ = client.await;
    }
    if !ctx.is_replaced() {
        ctx.metrics.up.set(0.0);
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    config: &TcpConfig,
    output: &Arc<TcpOutput>,
    ctx: &Arc<ChannelContext>,
) {
    let mut refusals = RateLimitedLog::new(Duration::from_secs(1));
    let terminator: Arc<[u8]> = config.terminator().into();
    loop {
        let accepted = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(channel = %ctx.name, error = %e, "Cannot accept a connection; retrying shortly.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let settings = output.settings.load();
        if let Some(why) = stream::refusal(
            &settings.allow,
            settings.max_connections,
            output.connection_count(),
            peer,
        ) {
            output.shared.stream.refused.increment(1);
            refusals.log(|suppressed| {
                tracing::warn!(channel = %ctx.name, peer = %peer, suppressed, "Refused a connection: {why}.")
            });
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        output.shared.stream.accepted.increment(1);
        let (output, ctx) = (output.clone(), ctx.clone());
        let framing = config.framing();
        let terminator = terminator.clone();
        tokio::spawn(async move {
            let stream = Arc::new(stream);
            let session = ctx.cancel.child_token();
            let conn = Arc::new(Conn::new(
                Link::accepted(peer, stream.clone(), session.clone()),
                framing,
                terminator,
            ));
            output.add(conn.clone());
            output.shared.stream.connections.increment(1.0);
            tracing::info!(channel = %ctx.name, peer = %peer, "Accepted a connection.");
            let mut inbound = ctx.inbound.fork();
            let reason =
                serve_connection(&stream, &conn, &session, &mut inbound, &output, &ctx).await;
            output.remove(peer);
            output.shared.stream.connections.decrement(1.0);
            conn.link.detach(&output.shared);
            reason.log(&ctx.name, peer);
            event_close(&mut inbound, &output, &ctx, peer, &reason);
        });
    }
}

fn event_open(
    inbound: &mut Dispatcher,
    output: &TcpOutput,
    ctx: &ChannelContext,
    peer: SocketAddr,
) {
    if output.settings.load().events {
        stream::route_event(inbound, ctx, OPEN_ADDRESS, peer, vec![]);
    }
}

fn event_close(
    inbound: &mut Dispatcher,
    output: &TcpOutput,
    ctx: &ChannelContext,
    peer: SocketAddr,
    reason: &Closed,
) {
    if output.settings.load().events && !ctx.cancel.is_cancelled() {
        let reason = OscArg::String(reason.describe());
        stream::route_event(inbound, ctx, CLOSE_ADDRESS, peer, vec![reason]);
    }
}

/// The open event, then reading and writing until the connection ends.
async fn serve_connection(
    stream: &TcpStream,
    conn: &Conn,
    session: &CancellationToken,
    inbound: &mut Dispatcher,
    output: &TcpOutput,
    ctx: &ChannelContext,
) -> Closed {
    event_open(inbound, output, ctx, conn.link.peer);
    let reading = async {
        let reason = read_frames(stream, conn, session, inbound, output, ctx).await;
        session.cancel();
        reason
    };
    let (reason, ()) = tokio::join!(reading, conn.link.writer(&output.shared, session.clone()));
    reason
}

/// Reads and routes frames until the connection ends.
async fn read_frames(
    stream: &TcpStream,
    conn: &Conn,
    session: &CancellationToken,
    inbound: &mut Dispatcher,
    output: &TcpOutput,
    ctx: &ChannelContext,
) -> Closed {
    let origin = Origin {
        channel: ctx.id,
        addr: conn.link.peer,
    };
    let mut decoder = Decoder::new(
        conn.framing(),
        output.settings.load().max_frame,
        &conn.terminator,
    );
    let mut decided = decoder.framing().is_some();
    let lines = conn.framing() == Framing::Lines;
    let raw = conn.framing() == Framing::Raw;
    let timeouts = || {
        let settings = output.settings.load();
        ReadTimeouts {
            idle: settings.idle_timeout,
            frame: settings.frame_timeout,
        }
    };
    stream::read_loop(stream, session, &output.shared.stream, timeouts, |input| {
        let settings = output.settings.load();
        decoder.set_max_frame(settings.max_frame);
        if !decided {
            // Replies to the first frames must already use the framing this connection speaks.
            if let Some(framing) = decoder.decide(input) {
                conn.framing.store(framing_code(framing), Ordering::Relaxed);
                decided = true;
            }
        }
        let mut frames = 0u64;
        let result = decoder.decode(input, &mut |frame| {
            frames += 1;
            if lines {
                inbound.text_line(frame, &settings.raw_address, origin)
            } else if raw {
                inbound.raw_datagram(frame, &settings.raw_address, origin)
            } else {
                inbound.datagram(frame, origin)
            }
        });
        output.shared.stream.frames_in.increment(frames);
        result.map_err(|e| Closed::Protocol(e.to_string()))
    })
    .await
}

/// A client channel's connection: connect, serve, and after a loss reconnect with backoff. Messages
/// routed meanwhile wait in the connection's queue.
async fn client(
    conn: Arc<Conn>,
    output: Arc<TcpOutput>,
    ctx: Arc<ChannelContext>,
    server_part: bool,
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
        }
        attempts += 1;
        let connecting = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(server));
        let result = tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            result = connecting => result,
        };
        let stream = match result {
            Ok(Ok(stream)) => stream,
            failed => {
                let settings = output.settings.load();
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 5 s".to_string(),
                };
                failures.log(|suppressed| tracing::warn!(
                    channel = %ctx.name, server = %server, suppressed,
                    "Cannot connect: {why}. Retrying with backoff; messages are queued meanwhile (up to {} for {} ms).",
                    settings.queue, settings.max_age.as_millis()
                ));
                if !stream::sleep_or_cancel(&ctx.cancel, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(settings.reconnect_max);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let stream = Arc::new(stream);
        let session = ctx.cancel.child_token();
        conn.link
            .attach(stream.clone(), session.clone(), &output.shared);
        output.shared.stream.connections.increment(1.0);
        ctx.status.update(&ctx.name, |s| {
            s.local = local;
            if !server_part {
                s.up = true;
                s.error = None;
            }
        });
        if !server_part {
            ctx.metrics.up.set(1.0);
        }
        tracing::info!(channel = %ctx.name, server = %server, local = ?local, "Connected.");
        backoff = output.settings.load().reconnect;
        event_open(&mut inbound, &output, &ctx, server);
        let reason = read_frames(&stream, &conn, &session, &mut inbound, &output, &ctx).await;
        session.cancel();
        conn.link.detach(&output.shared);
        output.shared.stream.connections.decrement(1.0);
        if ctx.cancel.is_cancelled() {
            break;
        }
        ctx.status.update(&ctx.name, |s| {
            s.local = None;
            if !server_part {
                s.up = false;
                s.error = Some(format!("connection to {server} lost; reconnecting"));
            }
        });
        if !server_part && !ctx.is_replaced() {
            ctx.metrics.up.set(0.0);
        }
        tracing::warn!(channel = %ctx.name, server = %server,
            "Lost the connection: {}. Reconnecting; messages are queued meanwhile.", reason.describe());
        event_close(&mut inbound, &output, &ctx, server, &reason);
        if !stream::sleep_or_cancel(&ctx.cancel, backoff).await {
            break;
        }
    }
    let _ = writer.await;
}
