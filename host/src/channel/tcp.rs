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

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use patchbay_plugin_api::osc::encode::encode_message_into;
use patchbay_plugin_api::osc::{OscArg, OscMessage};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::channel::datagram::{default_retry_ms, payloads, BindError};
use crate::channel::framing::{self, Decoder, Framing};
use crate::channel::{ChannelContext, ChannelStatus, Origin, Output};
use crate::config::NetRange;
use crate::dispatch::{Dispatcher, RateLimitedLog};
use crate::metrics::{ChannelMetrics, StreamMetrics};

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
fn default_frame_timeout_ms() -> u64 {
    10_000
}
fn default_queue() -> usize {
    1024
}
fn default_max_age_ms() -> u64 {
    1_000
}
fn default_reconnect_ms() -> u64 {
    250
}
fn default_reconnect_max_ms() -> u64 {
    5_000
}
fn default_true() -> bool {
    true
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
        let stream = StreamMetrics::new(&name);
        let settings = self.settings(&name);
        let client = self
            .connect
            .map(|addr| Arc::new(Conn::new(addr, self.framing(), self.terminator(), None)));
        TcpOutput {
            name,
            settings: ArcSwap::from_pointee(settings),
            conns: ArcSwap::from_pointee(ConnSet::default()),
            edit: Mutex::new(()),
            client,
            metrics,
            stream,
            loss_log: Mutex::new(RateLimitedLog::new(Duration::from_secs(1))),
        }
    }

    /// Applies every setting that does not need a new listener or connection.
    pub fn apply_live(&self, channel: &str, output: &TcpOutput) {
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

/// Binds the listening socket (SO_REUSEADDR, so a restart does not wait for TIME_WAIT; Linux still
/// refuses a second listener on the port).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

// ---------------------------------------------------------------------------------------------------
// Connections and the output

/// One connection's sending side. A client's `Conn` outlives its connections: its queue is kept
/// while the server is away.
pub struct Conn {
    pub peer: SocketAddr,
    /// The framing replies use: for `auto`, what the connection's first byte decided.
    framing: AtomicU8,
    terminator: Vec<u8>,
    out: Mutex<Outgoing>,
    /// Wakes the writer task: something was queued, or a connection was attached.
    wake: Notify,
}

struct Outgoing {
    stream: Option<Arc<TcpStream>>,
    /// Cancelled to close the current connection.
    session: Option<CancellationToken>,
    queue: VecDeque<Queued>,
    /// Bytes of the queue's first frame already written.
    head_written: usize,
    /// Encoding buffer reused across sends.
    scratch: Vec<u8>,
}

struct Queued {
    at: Instant,
    frame: Vec<u8>,
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
    fn new(
        peer: SocketAddr,
        framing: Framing,
        terminator: Vec<u8>,
        attached: Option<(Arc<TcpStream>, CancellationToken)>,
    ) -> Self {
        let (stream, session) = match attached {
            Some((stream, session)) => (Some(stream), Some(session)),
            None => (None, None),
        };
        Conn {
            peer,
            framing: AtomicU8::new(framing_code(framing)),
            terminator,
            out: Mutex::new(Outgoing {
                stream,
                session,
                queue: VecDeque::new(),
                head_written: 0,
                scratch: Vec::new(),
            }),
            wake: Notify::new(),
        }
    }

    fn framing(&self) -> Framing {
        FRAMINGS[self.framing.load(Ordering::Relaxed) as usize % FRAMINGS.len()]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outgoing> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the current connection (its reader ends it). False when there is none.
    pub fn close(&self) -> bool {
        match self.lock().session.as_ref() {
            Some(session) => {
                session.cancel();
                true
            }
            None => false,
        }
    }

    fn attach(&self, stream: Arc<TcpStream>, session: CancellationToken, out: &TcpOutput) {
        let mut o = self.lock();
        o.stream = Some(stream);
        o.session = Some(session);
        // A frame half written on the lost connection goes again whole on the new one.
        o.head_written = 0;
        expire(&mut o, self.peer, out);
        drop(o);
        self.wake.notify_one();
    }

    fn detach(&self) {
        let mut o = self.lock();
        o.stream = None;
        o.session = None;
        o.head_written = 0;
    }

    /// Frames `packet` (OSC, or a payload for lines/raw) and writes or queues it.
    fn send(&self, packet: &[u8], out: &TcpOutput, framed: bool) {
        let framing = self.framing();
        if framed && !framing.is_osc() {
            // A text device gets each message's string or blob, not OSC.
            payloads(packet, |payload| match payload {
                Ok(bytes) => self.send_frame(bytes, framing, out),
                Err(address) => {
                    out.metrics.drops.increment(1);
                    out.log_loss(format_args!(
                        "`{address}` has no string or blob argument to send to a {} channel",
                        framing.name()
                    ));
                }
            });
        } else if framed {
            self.send_frame(packet, framing, out);
        } else {
            self.send_frame(packet, Framing::Raw, out);
        }
    }

    fn send_frame(&self, payload: &[u8], framing: Framing, out: &TcpOutput) {
        let mut guard = self.lock();
        let o = &mut *guard;
        o.scratch.clear();
        framing::encode(framing, &self.terminator, payload, &mut o.scratch);
        if o.queue.is_empty() {
            if let Some(stream) = &o.stream {
                match stream.try_write(&o.scratch) {
                    Ok(n) if n == o.scratch.len() => {
                        out.sent(payload.len());
                        return;
                    }
                    Ok(n) => o.head_written = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        // The reader will see the connection end; a client's message waits for
                        // the next connection, a server connection's is lost with it.
                        if let Some(session) = &o.session {
                            session.cancel();
                        }
                        if out
                            .client
                            .as_ref()
                            .is_none_or(|c| !std::ptr::eq(&**c, self))
                        {
                            out.metrics.send_errors.increment(1);
                            out.log_loss(format_args!(
                                "the connection to {} failed: {e}",
                                self.peer
                            ));
                            return;
                        }
                    }
                }
            }
        }
        let settings = out.settings.load();
        if o.queue.len() >= settings.queue {
            expire(o, self.peer, out);
        }
        if o.queue.len() >= settings.queue {
            out.metrics.drops.increment(1);
            let state = if o.stream.is_some() {
                "it is not reading fast enough"
            } else {
                "it is disconnected"
            };
            out.log_loss(format_args!(
                "the queue for {} is full ({} messages; {state}; raise `queue`)",
                self.peer, settings.queue
            ));
            return;
        }
        let frame = o.scratch.clone();
        o.queue.push_back(Queued {
            at: Instant::now(),
            frame,
        });
        drop(guard);
        self.wake.notify_one();
    }

    /// Drains the queue whenever woken, until `stop`.
    async fn writer(&self, out: &TcpOutput, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            loop {
                let stream = {
                    let mut o = self.lock();
                    expire(&mut o, self.peer, out);
                    let Some(stream) = o.stream.clone() else {
                        break;
                    };
                    if !flush(&mut o, &stream, out) {
                        break;
                    }
                    stream
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    ready = stream.writable() => if ready.is_err() { break },
                }
            }
        }
    }
}

/// Writes queued frames until the queue is empty (false) or the socket is full (true: wait for it
/// to be writable).
fn flush(o: &mut Outgoing, stream: &TcpStream, out: &TcpOutput) -> bool {
    while let Some(head) = o.queue.front() {
        match stream.try_write(&head.frame[o.head_written..]) {
            Ok(n) => {
                o.head_written += n;
                if o.head_written == head.frame.len() {
                    out.sent(head.frame.len());
                    o.queue.pop_front();
                    o.head_written = 0;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => {
                if let Some(session) = &o.session {
                    session.cancel();
                }
                return false;
            }
        }
    }
    false
}

/// Drops queued frames older than `max_age` that have not started to go out.
fn expire(o: &mut Outgoing, peer: SocketAddr, out: &TcpOutput) {
    let max_age = out.settings.load().max_age;
    let now = Instant::now();
    let skip = usize::from(o.head_written > 0);
    let before = o.queue.len();
    let mut index = 0;
    o.queue.retain(|q| {
        index += 1;
        index <= skip || now.duration_since(q.at) <= max_age
    });
    let expired = before - o.queue.len();
    if expired > 0 {
        out.stream.expired.increment(expired as u64);
        out.log_loss(format_args!(
            "{expired} queued message(s) for {peer} waited longer than max_age_ms ({} ms) and were \
             not sent late",
            max_age.as_millis()
        ));
    }
}

/// The accepted connections, read without a lock on every forward.
#[derive(Default)]
struct ConnSet {
    list: Vec<Arc<Conn>>,
    by_addr: HashMap<SocketAddr, usize>,
}

impl ConnSet {
    fn with(&self, conn: Option<Arc<Conn>>, without: Option<SocketAddr>) -> ConnSet {
        let mut list: Vec<Arc<Conn>> = self
            .list
            .iter()
            .filter(|c| Some(c.peer) != without)
            .cloned()
            .collect();
        list.extend(conn);
        let by_addr = list.iter().enumerate().map(|(i, c)| (c.peer, i)).collect();
        ConnSet { list, by_addr }
    }
}

/// The sending half of a TCP channel, shared by every route that forwards to it.
pub struct TcpOutput {
    name: Arc<str>,
    settings: ArcSwap<TcpSettings>,
    conns: ArcSwap<ConnSet>,
    /// Serialises changes to `conns` (copy on write).
    edit: Mutex<()>,
    client: Option<Arc<Conn>>,
    metrics: ChannelMetrics,
    stream: StreamMetrics,
    loss_log: Mutex<RateLimitedLog>,
}

impl TcpOutput {
    pub fn connect_address(&self) -> Option<SocketAddr> {
        self.client.as_ref().map(|c| c.peer)
    }

    fn sent(&self, bytes: usize) {
        self.metrics.packets_out.increment(1);
        self.metrics.bytes_out.increment(bytes as u64);
        self.stream.frames_out.increment(1);
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
        let set = self.conns.load();
        if let Some(&i) = set.by_addr.get(&addr) {
            return Some(set.list[i].clone());
        }
        self.client.as_ref().filter(|c| c.peer == addr).cloned()
    }

    fn log_loss(&self, why: std::fmt::Arguments<'_>) {
        if let Ok(mut log) = self.loss_log.lock() {
            let name = &self.name;
            log.log(|suppressed| {
                tracing::warn!(channel = %name, suppressed, "Dropped an outgoing message: {why}.")
            });
        }
    }

    fn no_connection(&self, origin: &Origin) {
        self.metrics.drops.increment(1);
        self.log_loss(format_args!(
            "the connection from {} is closed",
            origin.addr
        ));
    }
}

impl Output for TcpOutput {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, packet: &[u8]) {
        let set = self.conns.load();
        if set.list.is_empty() && self.client.is_none() {
            self.metrics.drops.increment(1);
            self.log_loss(format_args!("the channel has no open connection"));
            return;
        }
        for conn in &set.list {
            conn.send(packet, self, true);
        }
        if let Some(client) = &self.client {
            client.send(packet, self, true);
        }
    }

    fn reply(&self, origin: &Origin, packet: &[u8]) {
        match self.conn(origin.addr) {
            Some(conn) => conn.send(packet, self, true),
            None => self.no_connection(origin),
        }
    }

    fn reply_raw(&self, origin: &Origin, bytes: &[u8]) {
        match self.conn(origin.addr) {
            Some(conn) => conn.send(bytes, self, false),
            None => self.no_connection(origin),
        }
    }

    fn close(&self, origin: &Origin) -> bool {
        self.conn(origin.addr).is_some_and(|conn| conn.close())
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
        (Startup::Retry { strict }, Some(addr)) => {
            match bind_with_retry(&ctx, addr, config.connect, config.retry_ms, strict).await? {
                Some(listener) => Some(listener),
                None => return Ok(()),
            }
        }
    };
    let ctx = Arc::new(ctx);
    if let Some(listener) = &listener {
        status.listen = listener.local_addr().ok();
        status.up = true;
        ctx.metrics.up.set(1.0);
        tracing::info!(channel = %ctx.name, listen = ?status.listen, framing = config.framing().name(), "Channel is up: accepting TCP connections.");
    }
    ctx.status.set(&ctx.name, status.clone());

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

async fn bind_with_retry(
    ctx: &ChannelContext,
    addr: SocketAddr,
    send: Option<SocketAddr>,
    retry_ms: u64,
    strict: bool,
) -> Result<Option<TcpListener>, BindError> {
    loop {
        match bind(addr) {
            Ok(listener) => return Ok(Some(listener)),
            Err(source) => {
                let error = BindError {
                    channel: ctx.name.to_string(),
                    kind: "tcp",
                    addr,
                    source,
                };
                ctx.metrics.up.set(0.0);
                ctx.status.set(
                    &ctx.name,
                    ChannelStatus {
                        kind: "tcp",
                        listen: None,
                        local: None,
                        send,
                        up: false,
                        error: Some(format!("{error}; retrying every {retry_ms} ms")),
                    },
                );
                if strict {
                    return Err(error);
                }
                tracing::error!(
                    channel = %ctx.name, port = addr.port(), retry_ms,
                    "Channel cannot listen: {error}. The other channels keep running and this one retries; \
                     free the port or change the channel's address."
                );
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_millis(retry_ms.max(10))) => {}
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: &TcpConfig,
    output: &Arc<TcpOutput>,
    ctx: &Arc<ChannelContext>,
) {
    let mut refusals = RateLimitedLog::new(Duration::from_secs(1));
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
        let refusal = if !settings.allow.is_empty()
            && !settings.allow.iter().any(|net| net.contains(peer.ip()))
        {
            Some("its address is not in the channel's allow list".to_string())
        } else if output.connection_count() >= settings.max_connections {
            Some(format!(
                "the channel already has max_connections ({}) open",
                settings.max_connections
            ))
        } else {
            None
        };
        if let Some(why) = refusal {
            output.stream.refused.increment(1);
            refusals.log(|suppressed| {
                tracing::warn!(channel = %ctx.name, peer = %peer, suppressed, "Refused a connection: {why}.")
            });
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        output.stream.accepted.increment(1);
        let (output, ctx) = (output.clone(), ctx.clone());
        let framing = config.framing();
        let terminator = config.terminator();
        tokio::spawn(async move {
            let stream = Arc::new(stream);
            let session = ctx.cancel.child_token();
            let conn = Arc::new(Conn::new(
                peer,
                framing,
                terminator.clone(),
                Some((stream.clone(), session.clone())),
            ));
            output.add(conn.clone());
            output.stream.connections.increment(1.0);
            tracing::info!(channel = %ctx.name, peer = %peer, "Accepted a connection.");
            let decoder = Decoder::new(framing, output.settings.load().max_frame, &terminator);
            let mut inbound = ctx.inbound.fork();
            let reason = serve_connection(
                &stream,
                &conn,
                &session,
                decoder,
                &mut inbound,
                &output,
                &ctx,
            )
            .await;
            output.remove(peer);
            output.stream.connections.decrement(1.0);
            let dropped = {
                let mut o = conn.lock();
                o.stream = None;
                let n = o.queue.len();
                o.queue.clear();
                n
            };
            if dropped > 0 {
                output.metrics.drops.increment(dropped as u64);
            }
            log_close(&ctx.name, peer, &reason);
            event_close(&mut inbound, &output, &ctx, peer, &reason);
        });
    }
}

fn log_close(channel: &str, peer: SocketAddr, reason: &Closed) {
    match reason {
        Closed::Framing(e) => tracing::warn!(channel = %channel, peer = %peer,
            "Closed the connection: {e}. Other connections are not affected."),
        Closed::Stalled(ms) => tracing::warn!(channel = %channel, peer = %peer,
            "Closed the connection: it did not finish a frame within frame_timeout_ms ({ms} ms)."),
        Closed::Idle(ms) => tracing::info!(channel = %channel, peer = %peer,
            "Closed the connection: nothing arrived for idle_timeout_ms ({ms} ms)."),
        other => {
            tracing::info!(channel = %channel, peer = %peer, "Connection closed: {}.", other.describe())
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum Closed {
    ByPeer,
    Error(io::Error),
    Framing(framing::FramingError),
    Stalled(u128),
    Idle(u128),
    /// Closed on our side: `peer.close()`, a write error, the channel stopping.
    Local,
}

impl Closed {
    fn describe(&self) -> String {
        match self {
            Closed::ByPeer => "closed by the other end".into(),
            Closed::Error(e) => format!("connection error: {e}"),
            Closed::Framing(e) => format!("framing error: {e}"),
            Closed::Stalled(_) => "did not finish a frame within frame_timeout_ms".into(),
            Closed::Idle(_) => "idle for idle_timeout_ms".into(),
            Closed::Local => "closed by patchbay".into(),
        }
    }
}

fn event_message(address: &str, channel: &str, peer: SocketAddr, reason: Option<&str>) -> Vec<u8> {
    let mut args = vec![
        OscArg::String(channel.to_string()),
        OscArg::String(peer.to_string()),
    ];
    args.extend(reason.map(|r| OscArg::String(r.to_string())));
    let mut bytes = Vec::new();
    encode_message_into(
        &OscMessage {
            address: address.to_string(),
            args,
        },
        &mut bytes,
    );
    bytes
}

fn event_open(
    inbound: &mut Dispatcher,
    output: &TcpOutput,
    ctx: &ChannelContext,
    peer: SocketAddr,
) {
    if output.settings.load().events {
        let bytes = event_message(OPEN_ADDRESS, &ctx.name, peer, None);
        inbound.event(
            &bytes,
            Origin {
                channel: ctx.id,
                addr: peer,
            },
        );
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
        let bytes = event_message(CLOSE_ADDRESS, &ctx.name, peer, Some(&reason.describe()));
        inbound.event(
            &bytes,
            Origin {
                channel: ctx.id,
                addr: peer,
            },
        );
    }
}

/// The open event, then reading and writing until the connection ends.
async fn serve_connection(
    stream: &TcpStream,
    conn: &Conn,
    session: &CancellationToken,
    decoder: Decoder,
    inbound: &mut Dispatcher,
    output: &TcpOutput,
    ctx: &ChannelContext,
) -> Closed {
    event_open(inbound, output, ctx, conn.peer);
    let reading = async {
        let reason = read_frames(stream, conn, session, decoder, inbound, output, ctx).await;
        session.cancel();
        reason
    };
    let (reason, ()) = tokio::join!(reading, conn.writer(output, session.clone()));
    reason
}

/// Reads and routes frames until the connection ends.
async fn read_frames(
    stream: &TcpStream,
    conn: &Conn,
    session: &CancellationToken,
    mut decoder: Decoder,
    inbound: &mut Dispatcher,
    output: &TcpOutput,
    ctx: &ChannelContext,
) -> Closed {
    let origin = Origin {
        channel: ctx.id,
        addr: conn.peer,
    };
    let mut buffer: Vec<u8> = Vec::new();
    let (mut start, mut filled) = (0usize, 0usize);
    let mut last_input = tokio::time::Instant::now();
    let mut frame_started: Option<tokio::time::Instant> = None;
    let mut decided = decoder.framing().is_some();
    let kind = match conn.framing() {
        Framing::Lines => FrameKind::Line,
        Framing::Raw => FrameKind::Chunk,
        _ => FrameKind::Osc,
    };
    loop {
        let settings = output.settings.load_full();
        decoder.set_max_frame(settings.max_frame);
        let idle_deadline = settings.idle_timeout.map(|t| last_input + t);
        let frame_deadline = frame_started
            .zip(settings.frame_timeout)
            .map(|(s, t)| s + t);
        let deadline = match (idle_deadline, frame_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ready = async {
            match deadline {
                Some(at) => tokio::time::timeout_at(at, stream.readable()).await.ok(),
                None => Some(stream.readable().await),
            }
        };
        let ready = tokio::select! {
            _ = session.cancelled() => return Closed::Local,
            ready = ready => ready,
        };
        match ready {
            None if frame_deadline == deadline => {
                output.stream.framing_errors.increment(1);
                return Closed::Stalled(settings.frame_timeout.unwrap_or_default().as_millis());
            }
            None => return Closed::Idle(settings.idle_timeout.unwrap_or_default().as_millis()),
            Some(Err(e)) => return Closed::Error(e),
            Some(Ok(())) => {}
        }
        if buffer.is_empty() {
            buffer.resize(4096, 0);
        }
        if filled == buffer.len() {
            if start > 0 {
                buffer.copy_within(start..filled, 0);
                filled -= start;
                start = 0;
            } else {
                // The decoder refuses a frame past max_frame before the buffer gets much larger.
                buffer.resize(buffer.len() * 2, 0);
            }
        }
        let n = match stream.try_read(&mut buffer[filled..]) {
            Ok(0) => return Closed::ByPeer,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Closed::Error(e),
        };
        filled += n;
        last_input = tokio::time::Instant::now();
        if !decided {
            // Replies to the first frames must already use the framing this connection speaks.
            if let Some(framing) = decoder.decide(&buffer[start..filled]) {
                conn.framing.store(framing_code(framing), Ordering::Relaxed);
                decided = true;
            }
        }
        let mut frames = 0u64;
        let result = decoder.decode(&buffer[start..filled], &mut |frame| {
            frames += 1;
            match kind {
                FrameKind::Osc => inbound.datagram(frame, origin),
                FrameKind::Line => inbound.text_line(frame, &settings.raw_address, origin),
                FrameKind::Chunk => inbound.raw_datagram(frame, &settings.raw_address, origin),
            }
        });
        output.stream.frames_in.increment(frames);
        match result {
            Ok(used) => start += used,
            Err(e) => {
                output.stream.framing_errors.increment(1);
                return Closed::Framing(e);
            }
        }
        if start == filled {
            (start, filled) = (0, 0);
            frame_started = None;
            // A large frame is over: an idle connection keeps only a small buffer.
            if buffer.len() > 64 * 1024 {
                buffer = vec![0; 4096];
            }
        } else if frame_started.is_none() {
            frame_started = Some(last_input);
        }
    }
}

enum FrameKind {
    Osc,
    Line,
    Chunk,
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
    let mut backoff = output.settings.load().reconnect;
    let mut attempts = 0u64;
    let mut failures = RateLimitedLog::new(Duration::from_secs(10));
    let writer = {
        let (conn, output, stop) = (conn.clone(), output.clone(), ctx.cancel.clone());
        tokio::spawn(async move { conn.writer(&output, stop).await })
    };
    loop {
        if attempts > 0 {
            output.stream.reconnects.increment(1);
        }
        attempts += 1;
        let connecting =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(conn.peer));
        let result = tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            result = connecting => result,
        };
        let stream = match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let settings = output.settings.load();
                failures.log(|suppressed| tracing::warn!(
                    channel = %ctx.name, server = %conn.peer, suppressed,
                    "Cannot connect: {e}. Retrying with backoff; messages are queued meanwhile (up to {} for {} ms).",
                    settings.queue, settings.max_age.as_millis()
                ));
                if !sleep_or_cancel(&ctx.cancel, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(settings.reconnect_max);
                continue;
            }
            Err(_) => {
                failures.log(|suppressed| {
                    tracing::warn!(channel = %ctx.name, server = %conn.peer, suppressed,
                    "Cannot connect: no answer within 5 s. Retrying with backoff.")
                });
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let stream = Arc::new(stream);
        let session = ctx.cancel.child_token();
        conn.attach(stream.clone(), session.clone(), &output);
        output.stream.connections.increment(1.0);
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
        tracing::info!(channel = %ctx.name, server = %conn.peer, local = ?local, "Connected.");
        backoff = output.settings.load().reconnect;
        event_open(&mut inbound, &output, &ctx, conn.peer);
        let decoder = Decoder::new(
            conn.framing(),
            output.settings.load().max_frame,
            &conn.terminator,
        );
        let reason = read_frames(
            &stream,
            &conn,
            &session,
            decoder,
            &mut inbound,
            &output,
            &ctx,
        )
        .await;
        session.cancel();
        conn.detach();
        output.stream.connections.decrement(1.0);
        if ctx.cancel.is_cancelled() {
            break;
        }
        ctx.status.update(&ctx.name, |s| {
            s.local = None;
            if !server_part {
                s.up = false;
                s.error = Some(format!("connection to {} lost; reconnecting", conn.peer));
            }
        });
        if !server_part && !ctx.is_replaced() {
            ctx.metrics.up.set(0.0);
        }
        tracing::warn!(channel = %ctx.name, server = %conn.peer,
            "Lost the connection: {}. Reconnecting; messages are queued meanwhile.", reason.describe());
        event_close(&mut inbound, &output, &ctx, conn.peer, &reason);
        if !sleep_or_cancel(&ctx.cancel, backoff).await {
            break;
        }
    }
    let _ = writer.await;
}

/// False when cancelled.
async fn sleep_or_cancel(cancel: &CancellationToken, time: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(time) => true,
    }
}
