//! Metric names (one place, so the README and the code cannot drift) and the handles the hot path
//! increments. Handles are registered once per channel or route, so counting a packet is one atomic
//! add: no name lookup, no label allocation per message. Labels are channel and route names only,
//! never addresses.

use std::net::SocketAddr;

use metrics::{counter, gauge, Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const CHANNEL_PACKETS_IN: &str = "patchbay_channel_packets_in_total";
pub const CHANNEL_MESSAGES_IN: &str = "patchbay_channel_messages_in_total";
pub const CHANNEL_BYTES_IN: &str = "patchbay_channel_bytes_in_total";
pub const CHANNEL_PACKETS_OUT: &str = "patchbay_channel_packets_out_total";
pub const CHANNEL_BYTES_OUT: &str = "patchbay_channel_bytes_out_total";
pub const CHANNEL_DECODE_ERRORS: &str = "patchbay_channel_decode_errors_total";
pub const CHANNEL_DISALLOWED: &str = "patchbay_channel_disallowed_total";
pub const CHANNEL_DROPS: &str = "patchbay_channel_drops_total";
pub const CHANNEL_SEND_ERRORS: &str = "patchbay_channel_send_errors_total";
pub const CHANNEL_UP: &str = "patchbay_channel_up";
pub const CHANNEL_CONNECTIONS: &str = "patchbay_channel_connections";
pub const CHANNEL_ACCEPTED: &str = "patchbay_channel_connections_accepted_total";
pub const CHANNEL_REFUSED: &str = "patchbay_channel_connections_refused_total";
pub const CHANNEL_FRAMES_IN: &str = "patchbay_channel_frames_in_total";
pub const CHANNEL_FRAMES_OUT: &str = "patchbay_channel_frames_out_total";
pub const CHANNEL_FRAMING_ERRORS: &str = "patchbay_channel_framing_errors_total";
pub const CHANNEL_RECONNECTS: &str = "patchbay_channel_reconnects_total";
pub const CHANNEL_EXPIRED: &str = "patchbay_channel_expired_total";
pub const PEER_OFFERS: &str = "patchbay_peer_offers_total";
pub const PEER_DATA_IN: &str = "patchbay_peer_data_in_total";
pub const PEER_DATA_OUT: &str = "patchbay_peer_data_out_total";
pub const PEER_PROTOCOL_ERRORS: &str = "patchbay_peer_protocol_errors_total";
pub const PEER_SKIPPED: &str = "patchbay_peer_skipped_total";
pub const PEER_PONGS: &str = "patchbay_peer_pongs_total";
pub const ROUTE_MATCHES: &str = "patchbay_route_matches_total";
pub const UNMATCHED: &str = "patchbay_unmatched_total";
pub const RELOADS: &str = "patchbay_reloads_total";
pub const CONFIG_GENERATION: &str = "patchbay_config_generation";
pub const RELOAD_SECONDS: &str = "patchbay_reload_save_to_applied_seconds";
pub const SCRIPT_CALLS: &str = "patchbay_script_calls_total";
pub const SCRIPT_ERRORS: &str = "patchbay_script_errors_total";
pub const SCRIPT_QUEUE_DROPS: &str = "patchbay_script_queue_drops_total";
pub const SCRIPT_CALL_SECONDS: &str = "patchbay_script_call_seconds";
pub const PLUGIN_CALLS: &str = "patchbay_plugin_calls_total";
pub const PLUGIN_ERRORS: &str = "patchbay_plugin_errors_total";
pub const PLUGIN_PANICS: &str = "patchbay_plugin_panics_total";
pub const PLUGIN_DROPS: &str = "patchbay_plugin_drops_total";
pub const PLUGIN_CALL_SECONDS: &str = "patchbay_plugin_call_seconds";
pub const PLUGIN_STUCK: &str = "patchbay_plugin_stuck";
pub const PLUGIN_COUNTER: &str = "patchbay_plugin_counter_total";
pub const BUNDLES_SCHEDULED: &str = "patchbay_bundles_scheduled_total";
pub const BUNDLES_LATE: &str = "patchbay_bundles_late_total";
pub const BUNDLES_FAR_FUTURE: &str = "patchbay_bundles_far_future_total";
pub const BUNDLES_DROPPED: &str = "patchbay_bundles_dropped_total";

/// Every metric with its meaning: served as the `# HELP` line of each family (and mirrored in the
/// README's table).
pub const ALL: &[(&str, &str)] = &[
    (CHANNEL_PACKETS_IN, "datagrams received on a channel (before decoding)"),
    (CHANNEL_MESSAGES_IN, "OSC messages received on a channel (bundle elements count one each)"),
    (CHANNEL_BYTES_IN, "bytes received on a channel"),
    (CHANNEL_PACKETS_OUT, "packets sent by a channel (forwards and replies)"),
    (CHANNEL_BYTES_OUT, "bytes sent by a channel"),
    (CHANNEL_DECODE_ERRORS, "datagrams dropped because they are not valid OSC (or are oversize)"),
    (CHANNEL_DISALLOWED, "datagrams dropped because the sender is not in the channel's allow list"),
    (CHANNEL_DROPS, "outgoing packets dropped: channel down, no destination, or socket buffer full"),
    (CHANNEL_SEND_ERRORS, "outgoing packets the operating system refused"),
    (CHANNEL_UP, "1 while the channel's socket is bound, else 0"),
    (CHANNEL_CONNECTIONS, "open connections of a stream channel (tcp: accepted ones plus its client connection)"),
    (CHANNEL_ACCEPTED, "connections a stream channel accepted"),
    (CHANNEL_REFUSED, "connections a stream channel refused: source not in its allow list, or max_connections reached"),
    (CHANNEL_FRAMES_IN, "frames read from a stream channel's connections (OSC packets, lines or raw chunks)"),
    (CHANNEL_FRAMES_OUT, "frames written to a stream channel's connections"),
    (CHANNEL_FRAMING_ERRORS, "connections closed because their byte stream did not parse under the channel's framing"),
    (CHANNEL_RECONNECTS, "connection attempts of a client channel after its first"),
    (CHANNEL_EXPIRED, "queued outgoing messages dropped because they waited longer than max_age_ms"),
    (PEER_OFFERS, "peer offers by result: accepted, denied (by us, or by the peer we offered to)"),
    (PEER_DATA_IN, "peer payloads received, by data type (json, bytes, raw)"),
    (PEER_DATA_OUT, "peer payloads sent, by data type"),
    (PEER_PROTOCOL_ERRORS, "peer protocol errors: bad headers, payloads that do not decode, handshakes that time out, bad discovery datagrams"),
    (PEER_SKIPPED, "peer messages skipped: a strict connection's other-type DATA, a connection whose type cannot carry the message, a record of the wrong size for a stream"),
    (PEER_PONGS, "discovery PINGs answered with a PONG"),
    (ROUTE_MATCHES, "messages a route matched"),
    (UNMATCHED, "messages no route matched"),
    (RELOADS, "config reloads by result: applied, invalid (kept the running config), rolled_back (applying failed)"),
    (CONFIG_GENERATION, "generation of the config in force: 1 at start, +1 per applied reload"),
    (RELOAD_SECONDS, "time from the config file's save (or SIGHUP) to the new config being applied"),
    (SCRIPT_CALLS, "calls into a script: messages, timers, init and on_reload"),
    (SCRIPT_ERRORS, "script errors by kind: compile, runtime, limit (operations, deadline, sizes, depth)"),
    (SCRIPT_QUEUE_DROPS, "messages dropped because a script's queue was full"),
    (SCRIPT_CALL_SECONDS, "how long script calls take"),
    (PLUGIN_CALLS, "calls into a plugin instance: messages and timers"),
    (PLUGIN_ERRORS, "plugin calls that returned an error"),
    (PLUGIN_PANICS, "plugin calls that panicked (caught; the host keeps serving)"),
    (PLUGIN_DROPS, "messages not given to a plugin instance: stuck, disabled, unloaded or queue full"),
    (PLUGIN_CALL_SECONDS, "how long plugin calls take"),
    (PLUGIN_STUCK, "1 while a plugin instance is stuck in a call past call_timeout_ms"),
    (PLUGIN_COUNTER, "counters a plugin counts through the host (label counter: the plugin's name for it)"),
    (BUNDLES_SCHEDULED, "messages held until their bundle's time tag (unbundle forwards, scripts, plugins)"),
    (BUNDLES_LATE, "bundles whose time tag had already passed on arrival (dispatched at once)"),
    (BUNDLES_FAR_FUTURE, "bundles whose time tag lay beyond bundles.horizon_ms (dispatched at once or dropped)"),
    (BUNDLES_DROPPED, "time-tagged messages dropped because the bundle queue was full or by the far-future policy"),
];

/// The per-channel handles.
#[derive(Clone)]
pub struct ChannelMetrics {
    pub packets_in: Counter,
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub packets_out: Counter,
    pub bytes_out: Counter,
    pub decode_errors: Counter,
    pub disallowed: Counter,
    pub drops: Counter,
    pub send_errors: Counter,
    pub up: Gauge,
}

impl ChannelMetrics {
    pub fn new(channel: &str) -> Self {
        let label = || [("channel", channel.to_string())];
        ChannelMetrics {
            packets_in: counter!(CHANNEL_PACKETS_IN, &label()),
            messages_in: counter!(CHANNEL_MESSAGES_IN, &label()),
            bytes_in: counter!(CHANNEL_BYTES_IN, &label()),
            packets_out: counter!(CHANNEL_PACKETS_OUT, &label()),
            bytes_out: counter!(CHANNEL_BYTES_OUT, &label()),
            decode_errors: counter!(CHANNEL_DECODE_ERRORS, &label()),
            disallowed: counter!(CHANNEL_DISALLOWED, &label()),
            drops: counter!(CHANNEL_DROPS, &label()),
            send_errors: counter!(CHANNEL_SEND_ERRORS, &label()),
            up: gauge!(CHANNEL_UP, &label()),
        }
    }
}

/// The extra handles of stream (connection-based) channels.
#[derive(Clone)]
pub struct StreamMetrics {
    pub connections: Gauge,
    pub accepted: Counter,
    pub refused: Counter,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub framing_errors: Counter,
    pub reconnects: Counter,
    pub expired: Counter,
}

impl StreamMetrics {
    pub fn new(channel: &str) -> Self {
        let label = || [("channel", channel.to_string())];
        StreamMetrics {
            connections: gauge!(CHANNEL_CONNECTIONS, &label()),
            accepted: counter!(CHANNEL_ACCEPTED, &label()),
            refused: counter!(CHANNEL_REFUSED, &label()),
            frames_in: counter!(CHANNEL_FRAMES_IN, &label()),
            frames_out: counter!(CHANNEL_FRAMES_OUT, &label()),
            framing_errors: counter!(CHANNEL_FRAMING_ERRORS, &label()),
            reconnects: counter!(CHANNEL_RECONNECTS, &label()),
            expired: counter!(CHANNEL_EXPIRED, &label()),
        }
    }
}

/// The extra handles of peer channels.
#[derive(Clone)]
pub struct PeerMetrics {
    pub accepted: Counter,
    pub denied: Counter,
    data_in: [Counter; 3],
    data_out: [Counter; 3],
    pub protocol_errors: Counter,
    pub skipped: Counter,
    pub pongs: Counter,
}

/// The data types in the order [`PeerMetrics`] keeps them.
const DATA_TYPES: [&str; 3] = ["json", "bytes", "raw"];

impl PeerMetrics {
    pub fn new(channel: &str) -> Self {
        let ch = || channel.to_string();
        let by_type = |name: &'static str| {
            DATA_TYPES.map(|t| counter!(name, "channel" => ch(), "data_type" => t))
        };
        PeerMetrics {
            accepted: counter!(PEER_OFFERS, "channel" => ch(), "result" => "accepted"),
            denied: counter!(PEER_OFFERS, "channel" => ch(), "result" => "denied"),
            data_in: by_type(PEER_DATA_IN),
            data_out: by_type(PEER_DATA_OUT),
            protocol_errors: counter!(PEER_PROTOCOL_ERRORS, "channel" => ch()),
            skipped: counter!(PEER_SKIPPED, "channel" => ch()),
            pongs: counter!(PEER_PONGS, "channel" => ch()),
        }
    }

    pub fn data_in(&self, data_type: &str) -> &Counter {
        &self.data_in[type_index(data_type)]
    }

    pub fn data_out(&self, data_type: &str) -> &Counter {
        &self.data_out[type_index(data_type)]
    }
}

fn type_index(data_type: &str) -> usize {
    DATA_TYPES.iter().position(|t| *t == data_type).unwrap_or(0)
}

pub fn route_matches(route: &str) -> Counter {
    counter!(ROUTE_MATCHES, "route" => route.to_string())
}

pub fn unmatched() -> Counter {
    counter!(UNMATCHED)
}

/// Reload outcomes; `result` is one of three fixed words.
pub struct ReloadMetrics {
    pub applied: Counter,
    pub invalid: Counter,
    pub rolled_back: Counter,
    pub generation: Gauge,
    pub save_to_applied: metrics::Histogram,
}

impl ReloadMetrics {
    pub fn new() -> Self {
        ReloadMetrics {
            applied: counter!(RELOADS, "result" => "applied"),
            invalid: counter!(RELOADS, "result" => "invalid"),
            rolled_back: counter!(RELOADS, "result" => "rolled_back"),
            generation: gauge!(CONFIG_GENERATION),
            save_to_applied: metrics::histogram!(RELOAD_SECONDS),
        }
    }
}

impl Default for ReloadMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Installs the process-wide Prometheus recorder on first use and returns its handle. Must run before
/// any handle is created (handles made earlier would count into nothing). Idempotent, so a process
/// that runs the host more than once (benchmarks) shares one recorder.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    // The exporter keeps descriptions by name whatever the kind, so one call describes them all.
    for (name, help) in ALL {
        metrics::describe_counter!(*name, *help);
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
    #[error("cannot listen for metrics scrapes on {addr}: {source} (is another program using that port?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the scrape endpoint; serving happens in [`serve`]. Split so the bound address can go into the
/// ready line before the first scrape.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves Prometheus text on `GET /metrics` (and `/`). Scrapes are rare and tiny, so a minimal
/// HTTP/1.1 responder avoids pulling a whole HTTP stack into the host.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, cancel: CancellationToken) {
    let upkeep = {
        let handle = handle.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        })
    };
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        answer(stream, &handle),
                    )
                    .await;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "Metrics endpoint could not accept a scrape connection.");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    upkeep.abort();
}

async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || request.len() > 8192 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = if method == "GET" && (path == "/metrics" || path == "/") {
        ("200 OK", "text/plain; version=0.0.4", handle.render())
    } else {
        (
            "404 Not Found",
            "text/plain",
            "try GET /metrics\n".to_string(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
