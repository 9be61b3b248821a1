//! What the connection-based kinds (`tcp`, `peer`) share: a connection's sending side ([`Link`]:
//! direct writes, a bounded queue for what the socket cannot take at once, `max_age_ms`), the set
//! of open connections that forwards iterate without a lock, the read loop with its idle and
//! mid-frame timeouts, and binding a listener with retries.
//!
//! Writes go straight to the socket from the routing task when nothing is queued before them (no
//! queue hop, like the datagram outputs); only the rest waits in the link's queue, which one writer
//! task per connection drains when the socket is writable again. A slow connection fills its own
//! queue and drops (counted) without holding up the others or the routing task.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::channel::ChannelContext;
use crate::dispatch::RateLimitedLog;
use crate::metrics::{ChannelMetrics, StreamMetrics};

// Defaults of the keys every stream kind (`tcp`, `peer`) has, named by serde.
pub fn default_frame_timeout_ms() -> u64 {
    10_000
}
pub fn default_queue() -> usize {
    1024
}
pub fn default_max_age_ms() -> u64 {
    1_000
}
pub fn default_reconnect_ms() -> u64 {
    250
}
pub fn default_reconnect_max_ms() -> u64 {
    5_000
}
pub fn default_true() -> bool {
    true
}

/// What every link of one channel shares: counters, the queue bound and age limit (live settings),
/// and the rate-limited loss log.
pub struct LinkShared {
    pub name: Arc<str>,
    pub metrics: ChannelMetrics,
    pub stream: StreamMetrics,
    queue: AtomicUsize,
    max_age_ms: AtomicU64,
    loss_log: Mutex<RateLimitedLog>,
}

impl LinkShared {
    pub fn new(name: Arc<str>, metrics: ChannelMetrics, queue: usize, max_age_ms: u64) -> Self {
        LinkShared {
            stream: StreamMetrics::new(&name),
            name,
            metrics,
            queue: AtomicUsize::new(queue),
            max_age_ms: AtomicU64::new(max_age_ms),
            loss_log: Mutex::new(RateLimitedLog::new(Duration::from_secs(1))),
        }
    }

    /// A live reload of `queue` / `max_age_ms`.
    pub fn set_limits(&self, queue: usize, max_age_ms: u64) {
        self.queue.store(queue, Ordering::Relaxed);
        self.max_age_ms.store(max_age_ms, Ordering::Relaxed);
    }

    fn max_age(&self) -> Duration {
        Duration::from_millis(self.max_age_ms.load(Ordering::Relaxed))
    }

    fn sent(&self, bytes: usize) {
        self.metrics.packets_out.increment(1);
        self.metrics.bytes_out.increment(bytes as u64);
        self.stream.frames_out.increment(1);
    }

    /// Counts a message that is not sent and says why (at most once a second per channel).
    pub fn drop_message(&self, why: std::fmt::Arguments<'_>) {
        self.metrics.drops.increment(1);
        self.log_loss(why);
    }

    pub fn log_loss(&self, why: std::fmt::Arguments<'_>) {
        if let Ok(mut log) = self.loss_log.lock() {
            let name = &self.name;
            log.log(|suppressed| {
                tracing::warn!(channel = %name, suppressed, "Dropped an outgoing message: {why}.")
            });
        }
    }
}

/// One connection's sending side. A client's link outlives its connections: its queue is kept
/// while the server is away (`keep_while_down`).
pub struct Link {
    pub peer: SocketAddr,
    keep_while_down: bool,
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

impl Link {
    /// An accepted connection's link, attached from the start.
    pub fn accepted(peer: SocketAddr, stream: Arc<TcpStream>, session: CancellationToken) -> Self {
        Link::new(peer, false, Some(stream), Some(session))
    }

    /// A client's link: queues while disconnected, attached on each connection.
    pub fn client(server: SocketAddr) -> Self {
        Link::new(server, true, None, None)
    }

    fn new(
        peer: SocketAddr,
        keep_while_down: bool,
        stream: Option<Arc<TcpStream>>,
        session: Option<CancellationToken>,
    ) -> Self {
        Link {
            peer,
            keep_while_down,
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

    fn lock(&self) -> MutexGuard<'_, Outgoing> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_connected(&self) -> bool {
        self.lock().stream.is_some()
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

    /// A client connected: what waited (and is not too old) goes out on it.
    pub fn attach(&self, stream: Arc<TcpStream>, session: CancellationToken, shared: &LinkShared) {
        let mut o = self.lock();
        o.stream = Some(stream);
        o.session = Some(session);
        // A frame half written on the lost connection goes again whole on the new one.
        o.head_written = 0;
        expire(&mut o, self.peer, shared);
        drop(o);
        self.wake.notify_one();
    }

    /// The connection ended. An accepted connection's queue is dropped (counted) with it; a
    /// client's waits for the next connection.
    pub fn detach(&self, shared: &LinkShared) {
        let mut o = self.lock();
        o.stream = None;
        o.session = None;
        o.head_written = 0;
        if !self.keep_while_down && !o.queue.is_empty() {
            shared.metrics.drops.increment(o.queue.len() as u64);
            o.queue.clear();
        }
    }

    /// Writes one frame, made by `encode` into a reused buffer, or queues it behind what waits.
    pub fn send(&self, shared: &LinkShared, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut guard = self.lock();
        let o = &mut *guard;
        o.scratch.clear();
        encode(&mut o.scratch);
        if o.scratch.is_empty() {
            return;
        }
        if o.queue.is_empty() {
            if let Some(stream) = &o.stream {
                match stream.try_write(&o.scratch) {
                    Ok(n) if n == o.scratch.len() => {
                        shared.sent(n);
                        return;
                    }
                    Ok(n) => o.head_written = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        // The reader sees the connection end; a client's message waits for the
                        // next connection, an accepted connection's is lost with it.
                        if let Some(session) = &o.session {
                            session.cancel();
                        }
                        if !self.keep_while_down {
                            shared.metrics.send_errors.increment(1);
                            shared.log_loss(format_args!(
                                "the connection to {} failed: {e}",
                                self.peer
                            ));
                            return;
                        }
                    }
                }
            }
        }
        let bound = shared.queue.load(Ordering::Relaxed);
        if o.queue.len() >= bound {
            expire(o, self.peer, shared);
        }
        if o.queue.len() >= bound {
            let state = if o.stream.is_some() {
                "it is not reading fast enough"
            } else {
                "it is disconnected"
            };
            shared.drop_message(format_args!(
                "the queue for {} is full ({bound} messages; {state}; raise `queue`)",
                self.peer
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
    pub async fn writer(&self, shared: &LinkShared, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            loop {
                let stream = {
                    let mut o = self.lock();
                    expire(&mut o, self.peer, shared);
                    let Some(stream) = o.stream.clone() else {
                        break;
                    };
                    if !flush(&mut o, &stream, shared) {
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
fn flush(o: &mut Outgoing, stream: &TcpStream, shared: &LinkShared) -> bool {
    while let Some(head) = o.queue.front() {
        match stream.try_write(&head.frame[o.head_written..]) {
            Ok(n) => {
                o.head_written += n;
                if o.head_written == head.frame.len() {
                    shared.sent(head.frame.len());
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
fn expire(o: &mut Outgoing, peer: SocketAddr, shared: &LinkShared) {
    let Some(oldest) = o.queue.front() else {
        return;
    };
    let max_age = shared.max_age();
    let now = Instant::now();
    if now.duration_since(oldest.at) <= max_age {
        return;
    }
    let skip = usize::from(o.head_written > 0);
    let before = o.queue.len();
    let mut index = 0;
    o.queue.retain(|q| {
        index += 1;
        index <= skip || now.duration_since(q.at) <= max_age
    });
    let expired = before - o.queue.len();
    if expired > 0 {
        shared.stream.expired.increment(expired as u64);
        shared.log_loss(format_args!(
            "{expired} queued message(s) for {peer} waited longer than max_age_ms ({} ms) and were \
             not sent late",
            max_age.as_millis()
        ));
    }
}

/// Something with a link, kept in a [`ConnSet`].
pub trait HasLink {
    fn link(&self) -> &Link;
}

/// The open accepted connections, read without a lock on every forward; changed copy-on-write.
pub struct ConnSet<C> {
    pub list: Vec<Arc<C>>,
    by_addr: HashMap<SocketAddr, usize>,
}

impl<C> Default for ConnSet<C> {
    fn default() -> Self {
        ConnSet {
            list: Vec::new(),
            by_addr: HashMap::new(),
        }
    }
}

impl<C: HasLink> ConnSet<C> {
    pub fn with(&self, conn: Option<Arc<C>>, without: Option<SocketAddr>) -> ConnSet<C> {
        let mut list: Vec<Arc<C>> = self
            .list
            .iter()
            .filter(|c| Some(c.link().peer) != without)
            .cloned()
            .collect();
        list.extend(conn);
        let by_addr = list
            .iter()
            .enumerate()
            .map(|(i, c)| (c.link().peer, i))
            .collect();
        ConnSet { list, by_addr }
    }

    pub fn get(&self, addr: SocketAddr) -> Option<&Arc<C>> {
        self.by_addr.get(&addr).map(|&i| &self.list[i])
    }
}

/// Why a connection ended.
#[derive(Debug)]
pub enum Closed {
    ByPeer,
    Error(io::Error),
    /// The stream does not follow the channel's framing or protocol.
    Protocol(String),
    Stalled(u128),
    Idle(u128),
    /// Closed on our side: `peer.close()`, a write error, the channel stopping.
    Local,
}

impl Closed {
    pub fn describe(&self) -> String {
        match self {
            Closed::ByPeer => "closed by the other end".into(),
            Closed::Error(e) => format!("connection error: {e}"),
            Closed::Protocol(e) => e.clone(),
            Closed::Stalled(_) => "did not finish a frame within frame_timeout_ms".into(),
            Closed::Idle(_) => "idle for idle_timeout_ms".into(),
            Closed::Local => "closed by patchbay".into(),
        }
    }

    /// The log line for a connection that ended.
    pub fn log(&self, channel: &str, peer: SocketAddr) {
        match self {
            Closed::Protocol(e) => tracing::warn!(channel = %channel, peer = %peer,
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
}

/// The read loop's timeouts, read again before every wait (a reload changes them live).
#[derive(Debug, Clone, Copy)]
pub struct ReadTimeouts {
    pub idle: Option<Duration>,
    pub frame: Option<Duration>,
}

/// Reads until the connection ends. `decode` gets the unconsumed bytes (the start of a frame left
/// from before, then what arrived) and returns how many it consumed, or why to close. A stalled
/// frame counts as a framing error.
pub async fn read_loop(
    stream: &TcpStream,
    session: &CancellationToken,
    stream_metrics: &StreamMetrics,
    mut timeouts: impl FnMut() -> ReadTimeouts,
    mut decode: impl FnMut(&[u8]) -> Result<usize, Closed>,
) -> Closed {
    let mut buffer: Vec<u8> = Vec::new();
    let (mut start, mut filled) = (0usize, 0usize);
    let mut last_input = tokio::time::Instant::now();
    let mut frame_started: Option<tokio::time::Instant> = None;
    loop {
        let limits = timeouts();
        let idle_deadline = limits.idle.map(|t| last_input + t);
        let frame_deadline = frame_started.zip(limits.frame).map(|(s, t)| s + t);
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
            None if frame_deadline.is_some() && frame_deadline == deadline => {
                stream_metrics.framing_errors.increment(1);
                return Closed::Stalled(limits.frame.unwrap_or_default().as_millis());
            }
            None => return Closed::Idle(limits.idle.unwrap_or_default().as_millis()),
            Some(Err(e)) => return Closed::Error(e),
            Some(Ok(())) => {}
        }
        // Allocated on first input: an idle connection costs no buffer.
        if buffer.is_empty() {
            buffer.resize(4096, 0);
        }
        if filled == buffer.len() {
            if start > 0 {
                buffer.copy_within(start..filled, 0);
                filled -= start;
                start = 0;
            } else {
                // The decoder refuses a frame past its limit before the buffer grows much larger.
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
        match decode(&buffer[start..filled]) {
            Ok(used) => start += used,
            Err(closed) => {
                if matches!(closed, Closed::Protocol(_)) {
                    stream_metrics.framing_errors.increment(1);
                }
                return closed;
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

/// Binds a listening socket (SO_REUSEADDR, so a restart does not wait for TIME_WAIT; Linux still
/// refuses a second listener on the port).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Routes a connection event: a message at `address` with the channel's name and the connection's
/// `ip:port`, then `more`, coming from that connection (so a `reply` answers it).
pub fn route_event(
    inbound: &mut crate::dispatch::Dispatcher,
    ctx: &ChannelContext,
    address: &str,
    peer: SocketAddr,
    more: Vec<patchbay_plugin_api::osc::OscArg>,
) {
    use patchbay_plugin_api::osc::{OscArg, OscMessage};
    let mut args = vec![
        OscArg::String(ctx.name.to_string()),
        OscArg::String(peer.to_string()),
    ];
    args.extend(more);
    let mut bytes = Vec::new();
    patchbay_plugin_api::osc::encode::encode_message_into(
        &OscMessage {
            address: address.to_string(),
            args,
        },
        &mut bytes,
    );
    let origin = crate::channel::Origin {
        channel: ctx.id,
        addr: peer,
    };
    inbound.event(&bytes, origin);
}

/// False when cancelled first.
pub async fn sleep_or_cancel(cancel: &CancellationToken, time: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(time) => true,
    }
}

/// Why an accepted connection is refused, if it is: the allow list (checked against the real
/// source address) and the connection limit.
pub fn refusal(
    allow: &[crate::config::NetRange],
    max_connections: usize,
    open: usize,
    peer: SocketAddr,
) -> Option<String> {
    if !allow.is_empty() && !allow.iter().any(|net| net.contains(peer.ip())) {
        Some("its address is not in the channel's allow list".to_string())
    } else if open >= max_connections {
        Some(format!(
            "the channel already has max_connections ({max_connections}) open"
        ))
    } else {
        None
    }
}
