//! What the datagram transports (`udp`, `multicast`, `broadcast`) share: the output handle routes send
//! through, the receive loop, binding with retry, `format: raw`, and recognising our own datagrams.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use patchbay_plugin_api::osc::{ArgRef, PacketRef};
use serde::{Deserialize, Serialize};
#[cfg(unix)]
use tokio::io::unix::AsyncFd;
#[cfg(unix)]
use tokio::io::Interest;

use crate::channel::{ChannelContext, ChannelStatus, Origin, Output};
use crate::config::NetRange;
use crate::dispatch::RateLimitedLog;
use crate::metrics::ChannelMetrics;

/// What a datagram channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// OSC packets.
    #[default]
    Osc,
    /// Anything else (projectors, plain-text show gear): each datagram becomes a message at
    /// `raw_address` with one blob argument; a message forwarded here sends its blob (or string) bytes.
    Raw,
}

pub fn default_max_datagram() -> usize {
    65_507
}

pub fn default_retry_ms() -> u64 {
    1_000
}

/// A bound datagram socket, registered with the runtime for reading only. Sends are plain
/// non-blocking system calls from whichever thread routes (scripts and plugins have their own):
/// a socket also registered for writing would wake the runtime's thread every time its buffer
/// became writable again after such a send, for nothing, once per message. (Elsewhere than Unix,
/// where tokio has no `AsyncFd`, it is tokio's own socket.)
pub struct DatagramSocket {
    #[cfg(unix)]
    inner: AsyncFd<std::net::UdpSocket>,
    #[cfg(not(unix))]
    inner: tokio::net::UdpSocket,
}

impl DatagramSocket {
    /// Registers a bound socket (made non-blocking here).
    pub fn register(socket: socket2::Socket) -> io::Result<DatagramSocket> {
        socket.set_nonblocking(true)?;
        #[cfg(unix)]
        {
            // SAFETY: the std socket owns a valid descriptor, and nothing replaces or closes it
            // while the AsyncFd owns the socket (it is dropped with it).
            let registered = unsafe {
                AsyncFd::register_with_interest(
                    std::net::UdpSocket::from(socket),
                    Interest::READABLE,
                )
            };
            Ok(DatagramSocket { inner: registered? })
        }
        #[cfg(not(unix))]
        {
            let inner = tokio::net::UdpSocket::from_std(socket.into())?;
            Ok(DatagramSocket { inner })
        }
    }

    /// Receives one datagram.
    pub async fn recv_from(&self, buffer: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        #[cfg(unix)]
        loop {
            let mut ready = self.inner.readable().await?;
            match ready.try_io(|inner| inner.get_ref().recv_from(buffer)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
        #[cfg(not(unix))]
        self.inner.recv_from(buffer).await
    }

    /// Sends without waiting: `WouldBlock` when the socket's buffer is full.
    pub fn try_send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<usize> {
        #[cfg(unix)]
        return self.inner.get_ref().send_to(bytes, to);
        #[cfg(not(unix))]
        return self.inner.try_send_to(bytes, to);
    }

    /// The descriptor, for `sendmmsg` (see `held`).
    #[cfg(target_os = "linux")]
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.inner.get_ref().as_raw_fd()
    }

    /// For socket options (buffer sizes, multicast settings, membership).
    pub fn sock_ref(&self) -> socket2::SockRef<'_> {
        #[cfg(unix)]
        return socket2::SockRef::from(self.inner.get_ref());
        #[cfg(not(unix))]
        return socket2::SockRef::from(&self.inner);
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock_ref()
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }
}

/// Registers a bound socket for reading (see [`DatagramSocket`]).
pub fn register(socket: socket2::Socket) -> io::Result<DatagramSocket> {
    DatagramSocket::register(socket)
}

/// The last datagrams a channel sent, so a copy that comes back to us (multicast loop, broadcast to
/// our own port) is recognised and not routed again. Lock-free: senders are other channels' tasks.
pub struct OwnDatagrams {
    hashes: [AtomicU64; 64],
    next: AtomicUsize,
}

impl Default for OwnDatagrams {
    fn default() -> Self {
        OwnDatagrams {
            hashes: std::array::from_fn(|_| AtomicU64::new(0)),
            next: AtomicUsize::new(0),
        }
    }
}

impl OwnDatagrams {
    fn remember(&self, bytes: &[u8]) {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.hashes.len();
        self.hashes[slot].store(fingerprint(bytes), Ordering::Relaxed);
    }

    /// True (once) when `bytes` is a datagram we sent recently.
    fn take(&self, bytes: &[u8]) -> bool {
        let wanted = fingerprint(bytes);
        self.hashes.iter().any(|h| {
            h.compare_exchange(wanted, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        })
    }
}

/// FNV-1a, never 0 (0 marks an empty slot).
fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash.max(1)
}

/// The sending half of a datagram channel, shared by every route that forwards to it. The socket
/// appears once `run` has bound it; the destination can change while the show runs.
pub struct DatagramOutput {
    socket: ArcSwapOption<DatagramSocket>,
    destination: ArcSwapOption<SocketAddr>,
    /// `format: raw`, read on every send.
    raw: AtomicBool,
    /// `max_datagram`, read before every receive to size the buffer.
    max_datagram: AtomicUsize,
    /// What the receive loop reads per datagram; swapped whole on a live reload.
    settings: ArcSwap<DatagramSettings>,
    /// Set on channels whose own datagrams can come back to them.
    own: Option<Arc<OwnDatagrams>>,
    /// The channel's name and where its sends are counted; shared with held sends (see `held`),
    /// counted when they go out.
    account: Arc<SendAccount>,
}

/// A datagram channel's outgoing counters and loss log.
pub struct SendAccount {
    name: Arc<str>,
    metrics: ChannelMetrics,
    loss_log: std::sync::Mutex<RateLimitedLog>,
}

impl SendAccount {
    pub fn new(name: Arc<str>, metrics: ChannelMetrics) -> SendAccount {
        SendAccount {
            name,
            metrics,
            loss_log: std::sync::Mutex::new(RateLimitedLog::new(Duration::from_secs(1))),
        }
    }

    pub(super) fn sent(&self, len: usize) {
        self.metrics.packets_out.increment(1);
        self.metrics.bytes_out.increment(len as u64);
    }

    pub(super) fn failed(&self, error: &io::Error, to: SocketAddr) {
        if error.kind() == io::ErrorKind::WouldBlock {
            self.metrics.drops.increment(1);
            self.log_loss(format_args!(
                "the socket's send buffer is full (raise send_buffer)"
            ));
        } else {
            self.metrics.send_errors.increment(1);
            self.log_loss(format_args!("the system refused the send to {to}: {error}"));
        }
    }

    fn dropped(&self, why: std::fmt::Arguments<'_>) {
        self.metrics.drops.increment(1);
        self.log_loss(why);
    }

    // Only reached when a packet is lost, so the lock is off the normal path.
    fn log_loss(&self, why: std::fmt::Arguments<'_>) {
        if let Ok(mut log) = self.loss_log.lock() {
            let name = &self.name;
            log.log(|suppressed| {
                tracing::warn!(channel = %name, suppressed, "Dropped an outgoing packet: {why}.")
            });
        }
    }
}

impl DatagramOutput {
    pub fn new(
        name: Arc<str>,
        destination: Option<SocketAddr>,
        settings: DatagramSettings,
        metrics: ChannelMetrics,
        own: Option<Arc<OwnDatagrams>>,
    ) -> Self {
        DatagramOutput {
            socket: ArcSwapOption::empty(),
            destination: ArcSwapOption::new(destination.map(Arc::new)),
            raw: AtomicBool::new(settings.format == Format::Raw),
            max_datagram: AtomicUsize::new(settings.max_datagram),
            settings: ArcSwap::from_pointee(settings),
            account: Arc::new(SendAccount::new(name, metrics)),
            own,
        }
    }

    pub fn set_destination(&self, destination: Option<SocketAddr>) {
        self.destination.store(destination.map(Arc::new));
    }

    pub fn destination(&self) -> Option<SocketAddr> {
        self.destination.load().as_deref().copied()
    }

    pub fn set_socket(&self, socket: Option<Arc<DatagramSocket>>) {
        self.socket.store(socket);
    }

    /// The bound socket, for settings that change in place (buffer sizes, multicast options).
    pub fn socket(&self) -> Option<Arc<DatagramSocket>> {
        self.socket.load_full()
    }

    /// Joins a multicast group on the bound socket (a reload joins before it commits).
    pub fn join_group(
        &self,
        group: std::net::Ipv4Addr,
        interface: std::net::Ipv4Addr,
    ) -> io::Result<()> {
        match self.socket() {
            Some(socket) => socket.sock_ref().join_multicast_v4(&group, &interface),
            None => Ok(()),
        }
    }

    pub fn leave_group(
        &self,
        group: std::net::Ipv4Addr,
        interface: std::net::Ipv4Addr,
    ) -> io::Result<()> {
        match self.socket() {
            Some(socket) => socket.sock_ref().leave_multicast_v4(&group, &interface),
            None => Ok(()),
        }
    }

    /// Live reload: the next datagram in either direction uses the new settings.
    pub fn set_settings(&self, settings: DatagramSettings) {
        self.raw
            .store(settings.format == Format::Raw, Ordering::Relaxed);
        self.max_datagram
            .store(settings.max_datagram, Ordering::Relaxed);
        self.settings.store(Arc::new(settings));
    }

    fn send_to(&self, packet: &[u8], to: SocketAddr) {
        if self.raw.load(Ordering::Relaxed) {
            self.send_raw(packet, to)
        } else {
            self.send_datagram(packet, to)
        }
    }

    /// A raw device gets each message's payload: its first blob or string argument.
    fn send_raw(&self, packet: &[u8], to: SocketAddr) {
        payloads(packet, |payload| match payload {
            Ok(bytes) => self.send_datagram(bytes, to),
            Err(address) => self.account.dropped(format_args!(
                "`{address}` has no blob or string argument to send to a raw channel"
            )),
        });
    }

    fn send_datagram(&self, bytes: &[u8], to: SocketAddr) {
        let guard = self.socket.load();
        let Some(socket) = guard.as_ref() else {
            self.account
                .dropped(format_args!("its socket is not bound (yet)"));
            return;
        };
        if let Some(own) = &self.own {
            own.remember(bytes);
        }
        if super::held::hold(socket, &self.account, bytes, to) {
            return;
        }
        match socket.try_send_to(bytes, to) {
            Ok(_) => self.account.sent(bytes.len()),
            Err(e) => self.account.failed(&e, to),
        }
    }
}

impl Output for DatagramOutput {
    fn name(&self) -> &str {
        &self.account.name
    }

    fn send(&self, packet: &[u8]) {
        match self.destination.load().as_deref() {
            Some(&to) => self.send_to(packet, to),
            None => self
                .account
                .dropped(format_args!("the channel has no `send` destination")),
        }
    }

    fn reply(&self, origin: &Origin, packet: &[u8]) {
        self.send_to(packet, origin.addr);
    }

    fn reply_raw(&self, origin: &Origin, bytes: &[u8]) {
        self.send_datagram(bytes, origin.addr);
    }
}

/// What a device that does not speak OSC gets of a packet: each message's first blob or string
/// argument, in order (bundles flattened); `Err(address)` for a message that has neither.
pub fn payloads(packet: &[u8], mut each: impl FnMut(Result<&[u8], &str>)) {
    // Packets reaching an output were validated on the way in (or built by us).
    let Ok(packet) = PacketRef::parse(packet, &Default::default()) else {
        return;
    };
    let mut stack = vec![packet];
    while let Some(packet) = stack.pop() {
        match packet {
            PacketRef::Bundle(bundle) => {
                let mut elements: Vec<_> = bundle.elements().collect();
                elements.reverse();
                stack.extend(elements);
            }
            PacketRef::Message(message) => {
                let payload = message.arg_refs().find_map(|arg| match arg {
                    ArgRef::Blob(bytes) => Some(bytes),
                    ArgRef::Str(text) | ArgRef::Symbol(text) => Some(text.as_bytes()),
                    _ => None,
                });
                each(payload.ok_or(message.address));
            }
        }
    }
}

/// The settings every datagram kind shares that change in place on a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramSettings {
    pub allow: Vec<NetRange>,
    pub max_datagram: usize,
    pub format: Format,
    /// Where `format: raw` datagrams enter routing.
    pub raw_address: String,
}

impl DatagramSettings {
    pub fn new(
        channel: &str,
        allow: &[NetRange],
        max_datagram: usize,
        format: Format,
        raw_address: Option<&str>,
    ) -> Self {
        DatagramSettings {
            allow: allow.to_vec(),
            max_datagram,
            format,
            raw_address: raw_address
                .map(str::to_string)
                .unwrap_or_else(|| format!("/raw/{channel}")),
        }
    }
}

/// How a channel gets its socket: bound already (a reload binds before it commits, so it can roll
/// back), or bound here with retries (at start a taken port must not stop the show).
pub enum Startup {
    Bound(Arc<DatagramSocket>),
    Retry { strict: bool },
}

/// How a channel whose datagrams can come back to it recognises them: the source port is ours, the
/// source IP is one of ours, and the bytes are a datagram we sent recently. All three, so another
/// machine sending the same bytes from the same port number is still routed.
pub struct OwnCheck {
    pub sent: Arc<OwnDatagrams>,
    pub ips: Vec<IpAddr>,
}

/// SO_RCVBUF / SO_SNDBUF when configured (the OS default otherwise).
pub fn set_buffers(
    socket: &socket2::Socket,
    recv: Option<usize>,
    send: Option<usize>,
) -> io::Result<()> {
    if let Some(size) = recv {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(size) = send {
        socket.set_send_buffer_size(size)?;
    }
    Ok(())
}

/// Binds with `bind`, retrying every `retry_ms` while it fails (a port that is taken must not stop
/// the show), and reports each attempt on the status board. Returns `None` when cancelled, and the
/// error at once when `strict`. Every kind uses it, whatever it binds.
pub async fn bind_with_retry<T>(
    ctx: &ChannelContext,
    kind: &'static str,
    what: SocketAddr,
    send: Option<SocketAddr>,
    retry_ms: u64,
    strict: bool,
    mut bind: impl FnMut() -> io::Result<T>,
) -> Result<Option<T>, BindError> {
    loop {
        match bind() {
            Ok(socket) => return Ok(Some(socket)),
            Err(source) => {
                let error = BindError {
                    channel: ctx.name.to_string(),
                    kind,
                    addr: what,
                    source,
                };
                ctx.metrics.up.set(0.0);
                ctx.status.set(
                    &ctx.name,
                    ChannelStatus {
                        kind,
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
                    channel = %ctx.name, port = what.port(), retry_ms,
                    "Channel cannot bind: {error}. The other channels keep running and this one retries; \
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

#[derive(Debug, thiserror::Error)]
#[error("channel `{channel}` cannot bind {kind} port {port} on {ip}: {source}", port = addr.port(), ip = addr.ip())]
pub struct BindError {
    pub channel: String,
    pub kind: &'static str,
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// Gets the socket (see [`Startup`]), marks the channel up, receives until cancelled, then marks it
/// down. `what` is the address named in bind errors.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    startup: Startup,
    bind: impl FnMut() -> io::Result<DatagramSocket>,
    what: SocketAddr,
    retry_ms: u64,
    output: &DatagramOutput,
    own: Option<OwnCheck>,
    mut status: ChannelStatus,
    ctx: &mut ChannelContext,
) -> Result<(), BindError> {
    let socket = match startup {
        Startup::Bound(socket) => socket,
        Startup::Retry { strict } => {
            match bind_with_retry(ctx, status.kind, what, status.send, retry_ms, strict, bind)
                .await?
            {
                Some(socket) => Arc::new(socket),
                None => return Ok(()),
            }
        }
    };
    let local = socket.local_addr().ok();
    output.set_socket(Some(socket.clone()));
    ctx.metrics.up.set(1.0);
    if status.listen.is_some_and(|l| l.port() == 0) {
        status.listen = local;
    }
    status.local = local;
    status.up = true;
    status.error = None;
    ctx.status.set(&ctx.name, status);
    tracing::info!(channel = %ctx.name, local = ?local, send = ?output.destination(), "Channel is up.");

    let mut buffer = Vec::new();
    let cancel = ctx.cancel.clone();
    let receiving = async {
        loop {
            // One byte more than the limit tells an oversize datagram from one that fits exactly.
            buffer.resize(output.max_datagram.load(Ordering::Relaxed) + 1, 0);
            let (len, from) = match socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                Err(e) => {
                    // Transient (e.g. an ICMP report on some systems): keep serving.
                    tracing::debug!(channel = %ctx.name, error = %e, "Receive failed; continuing.");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            };
            // Read after the wait, as a guard (no reference count), so a reload applies to the next
            // datagram.
            let settings = output.settings.load();
            let max = settings.max_datagram.min(buffer.len() - 1);
            let datagram = &buffer[..len.min(max + 1)];
            if let (Some(own), Some(local)) = (&own, local) {
                if from.port() == local.port()
                    && own.ips.contains(&from.ip())
                    && own.sent.take(datagram)
                {
                    continue;
                }
            }
            if !settings.allow.is_empty()
                && !settings.allow.iter().any(|net| net.contains(from.ip()))
            {
                ctx.metrics.disallowed.increment(1);
                tracing::debug!(channel = %ctx.name, sender = %from, "Dropped a datagram from outside the allow list.");
                continue;
            }
            let origin = Origin {
                channel: ctx.id,
                addr: from,
            };
            if len > max {
                ctx.inbound.reject_oversize(&origin, max);
                continue;
            }
            match settings.format {
                Format::Osc => ctx.inbound.datagram(datagram, origin),
                Format::Raw => ctx
                    .inbound
                    .raw_datagram(datagram, &settings.raw_address, origin),
            }
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = receiving => {}
    }
    output.set_socket(None);
    if !ctx.is_replaced() {
        ctx.metrics.up.set(0.0);
    }
    Ok(())
}
