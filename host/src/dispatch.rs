//! Inbound path shared by every transport: decode -> route table -> targets. One `Dispatcher` per
//! receiving task owns its scratch buffers, so routing a message allocates nothing and takes no lock:
//! the switchboard (route table + outputs) is read through `arc-swap`, and every message is routed
//! entirely by the table that was current when its packet arrived.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use patchbay_plugin_api::osc::decode::BundleRef;
use patchbay_plugin_api::osc::encode::{
    encode_blob_message, encode_message_into, encode_readdressed,
};
use patchbay_plugin_api::osc::pattern::Captures;
use patchbay_plugin_api::osc::{DecodeError, DecodeLimits, MessageRef, PacketRef};
use patchbay_plugin_api::osc::{OscArg, OscMessage};

use crate::channel::{Origin, Output};
use crate::metrics::ChannelMetrics;
use crate::route::{ChannelId, Hits, RouteTable, Target};
use crate::scheduler::{classify, FarFuture, Scheduler, Timing};
use crate::script::ScriptMessage;

/// What routing needs at once: the table and the outputs its targets name. Swapped as one unit.
pub struct Switchboard {
    pub generation: u64,
    pub table: RouteTable,
    /// Indexed by `ChannelId`.
    outputs: Vec<Option<Arc<dyn Output>>>,
    /// Channel name to `ChannelId`, for scripts' and plugins' sends by name (one per message when a
    /// script re-sends).
    by_name: rustc_hash::FxHashMap<Box<str>, ChannelId>,
}

impl Switchboard {
    pub fn new(
        generation: u64,
        table: RouteTable,
        outputs: Vec<(ChannelId, Arc<dyn Output>)>,
    ) -> Self {
        let len = outputs
            .iter()
            .map(|(id, _)| id.0 as usize + 1)
            .max()
            .unwrap_or(0);
        let mut by_id: Vec<Option<Arc<dyn Output>>> = vec![None; len];
        let mut by_name = rustc_hash::FxHashMap::default();
        for (id, output) in outputs {
            // The lowest id of two same-named outputs wins, as the scan it replaces did.
            let kept = by_name.entry(output.name().into()).or_insert(id);
            if id.0 < kept.0 {
                *kept = id;
            }
            by_id[id.0 as usize] = Some(output);
        }
        Switchboard {
            generation,
            table,
            outputs: by_id,
            by_name,
        }
    }

    pub fn output(&self, id: ChannelId) -> Option<&Arc<dyn Output>> {
        self.outputs.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// By name, for scripts' `send(channel, ...)` and plugins' sends.
    pub fn output_named(&self, name: &str) -> Option<&Arc<dyn Output>> {
        self.by_name.get(name).and_then(|&id| self.output(id))
    }
}

pub type SharedSwitchboard = Arc<ArcSwap<Switchboard>>;

/// Where a routed message goes inside a bundle being rebuilt per destination.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Destination {
    Forward(ChannelId),
    Reply,
}

pub struct Dispatcher {
    channel: ChannelId,
    name: Arc<str>,
    board: SharedSwitchboard,
    scheduler: Arc<Scheduler>,
    metrics: ChannelMetrics,
    limits: DecodeLimits,
    hits: Hits,
    caps: Captures,
    address: String,
    encoded: Vec<u8>,
    raw: Vec<u8>,
    bad_input_log: RateLimitedLog,
    /// The full value of the peer payload being routed, for scripts.
    value: Option<Arc<serde_json::Value>>,
}

impl Dispatcher {
    pub fn new(
        channel: ChannelId,
        name: Arc<str>,
        board: SharedSwitchboard,
        scheduler: Arc<Scheduler>,
        metrics: ChannelMetrics,
    ) -> Self {
        Dispatcher {
            channel,
            scheduler,
            name,
            board,
            metrics,
            limits: DecodeLimits::default(),
            hits: Hits::default(),
            caps: Captures::default(),
            address: String::new(),
            encoded: Vec::new(),
            raw: Vec::new(),
            bad_input_log: RateLimitedLog::new(Duration::from_secs(1)),
            value: None,
        }
    }

    /// A dispatcher for another receiving task of the same channel (one per TCP connection): same
    /// board and metrics, its own scratch buffers.
    pub fn fork(&self) -> Dispatcher {
        Dispatcher::new(
            self.channel,
            self.name.clone(),
            self.board.clone(),
            self.scheduler.clone(),
            self.metrics.clone(),
        )
    }

    /// Routes a message made from a peer's json or raw payload; scripts also get the full value.
    pub fn value_message(&mut self, bytes: &[u8], origin: Origin, value: Arc<serde_json::Value>) {
        self.metrics.packets_in.increment(1);
        self.metrics.bytes_in.increment(bytes.len() as u64);
        match PacketRef::parse(bytes, &self.limits) {
            Ok(packet) => {
                self.value = Some(value);
                self.packet(packet, origin);
                self.value = None;
            }
            Err(error) => self.bad_packet(bytes.len(), &origin, &error),
        }
    }

    /// Routes a message the host made itself (a connection event): not counted as received.
    pub fn event(&mut self, bytes: &[u8], origin: Origin) {
        if let Ok(packet) = PacketRef::parse(bytes, &self.limits) {
            self.packet(packet, origin);
        }
    }

    /// Routes a text line from a non-OSC device as a message at `address` with one string argument
    /// (bytes that are not UTF-8 are replaced, so a noisy line still arrives).
    pub fn text_line(&mut self, line: &[u8], address: &str, origin: Origin) {
        self.metrics.packets_in.increment(1);
        self.metrics.bytes_in.increment(line.len() as u64);
        let mut encoded = std::mem::take(&mut self.raw);
        encoded.clear();
        let text = String::from_utf8_lossy(line);
        encode_message_into(
            &OscMessage {
                address: address.to_string(),
                args: vec![OscArg::String(text.into_owned())],
            },
            &mut encoded,
        );
        match PacketRef::parse(&encoded, &self.limits) {
            Ok(packet) => self.packet(packet, origin),
            Err(error) => self.bad_packet(line.len(), &origin, &error),
        }
        self.raw = encoded;
    }

    /// Routes one received datagram. Bad packets are counted and logged (rate-limited), never fatal.
    pub fn datagram(&mut self, bytes: &[u8], origin: Origin) {
        self.metrics.packets_in.increment(1);
        self.metrics.bytes_in.increment(bytes.len() as u64);
        match PacketRef::parse(bytes, &self.limits) {
            Ok(packet) => self.packet(packet, origin),
            Err(error) => self.bad_packet(bytes.len(), &origin, &error),
        }
    }

    /// Counts and logs a packet the channel could not take (decode error, oversize, ...).
    pub fn reject(&mut self, origin: &Origin, reason: std::fmt::Arguments<'_>) {
        self.metrics.decode_errors.increment(1);
        let name = &self.name;
        self.bad_input_log.log(|suppressed| {
            tracing::warn!(
                channel = %name, sender = %origin.addr, suppressed,
                "Dropped a packet that is not valid OSC: {reason}. The channel keeps serving."
            )
        });
    }

    /// Counts and logs a peer payload that does not decode (bad json, a refused pickle).
    pub fn reject_payload(&mut self, origin: &Origin, reason: std::fmt::Arguments<'_>) {
        self.metrics.decode_errors.increment(1);
        let name = &self.name;
        self.bad_input_log.log(|suppressed| {
            tracing::warn!(
                channel = %name, sender = %origin.addr, suppressed,
                "Dropped a payload that does not decode: {reason}. The connection stays open."
            )
        });
    }

    /// Counts and logs a datagram larger than the channel's `max_datagram`.
    pub fn reject_oversize(&mut self, origin: &Origin, max: usize) {
        self.metrics.packets_in.increment(1);
        self.reject(
            origin,
            format_args!("oversize datagram (more than max_datagram = {max} bytes)"),
        );
    }

    /// Routes a datagram from a non-OSC device as a message at `address` with the bytes as one blob.
    pub fn raw_datagram(&mut self, bytes: &[u8], address: &str, origin: Origin) {
        self.metrics.packets_in.increment(1);
        self.metrics.bytes_in.increment(bytes.len() as u64);
        let mut encoded = std::mem::take(&mut self.raw);
        encoded.clear();
        encode_blob_message(address, bytes, &mut encoded);
        match PacketRef::parse(&encoded, &self.limits) {
            Ok(packet) => self.packet(packet, origin),
            // Only an address that is not OSC could fail here; config validation refuses those.
            Err(error) => self.bad_packet(bytes.len(), &origin, &error),
        }
        self.raw = encoded;
    }

    fn bad_packet(&mut self, len: usize, origin: &Origin, error: &DecodeError) {
        self.reject(origin, format_args!("{error} ({len} bytes)"));
    }

    /// Routes a packet that is already validated (also the entry point for framed transports).
    pub fn packet(&mut self, packet: PacketRef<'_>, origin: Origin) {
        let board = self.board.load();
        match packet {
            PacketRef::Message(message) => self.message(&board, &message, &origin),
            PacketRef::Bundle(bundle) => {
                let now = (SystemTime::now(), Instant::now());
                let mut per_destination: Vec<(Destination, Vec<u8>)> = Vec::new();
                self.collect_bundle(&board, &bundle, &origin, now, &mut per_destination);
                for (destination, elements) in &per_destination {
                    if elements.as_slice() == bundle.raw_elements {
                        // Everything went one way unchanged: the original bytes, no re-encoding.
                        send_to(&board, *destination, &origin, bundle.raw);
                    } else {
                        let mut rebuilt = Vec::with_capacity(16 + elements.len());
                        rebuilt.extend_from_slice(&bundle.raw[..16]);
                        rebuilt.extend_from_slice(elements);
                        send_to(&board, *destination, &origin, &rebuilt);
                    }
                }
            }
        }
    }

    fn message(&mut self, board: &Switchboard, message: &MessageRef<'_>, origin: &Origin) {
        self.metrics.messages_in.increment(1);
        board
            .table
            .find(message.address, self.channel, &mut self.hits);
        for &index in &self.hits.routes {
            let route = board.table.route(index);
            if route.needs_captures {
                board.table.captures(index, message.address, &mut self.caps);
            }
            for target in route.targets.iter() {
                if let Target::Script { script, function } = target {
                    let message = script_message(
                        message,
                        &self.name,
                        &route.name,
                        &self.caps,
                        origin,
                        &self.value,
                    );
                    script.deliver(function.clone(), message);
                    continue;
                }
                if let Target::Plugin { instance } = target {
                    instance.deliver(message.raw.to_vec(), *origin);
                    continue;
                }
                let bytes = render(
                    target,
                    message,
                    &self.caps,
                    &mut self.address,
                    &mut self.encoded,
                );
                send_to(board, destination(target), origin, bytes);
            }
        }
    }

    /// Routes each message of a bundle and gathers, per destination, the elements that go there, so a
    /// forward passes a bundle on as a bundle with its time tag (nested bundles stay nested). Targets
    /// that act on messages one by one (`unbundle`) get them at the bundle's time instead.
    fn collect_bundle(
        &mut self,
        board: &Switchboard,
        bundle: &BundleRef<'_>,
        origin: &Origin,
        now: (SystemTime, Instant),
        out: &mut Vec<(Destination, Vec<u8>)>,
    ) {
        let timing = classify(bundle.timetag, now.0, self.scheduler.horizon());
        match timing {
            Timing::Now { late: true } => self.scheduler.metrics.late.increment(1),
            Timing::FarFuture(_) => self.scheduler.metrics.far_future.increment(1),
            _ => {}
        }
        for element in bundle.elements() {
            match element {
                PacketRef::Message(message) => {
                    self.metrics.messages_in.increment(1);
                    board
                        .table
                        .find(message.address, self.channel, &mut self.hits);
                    let hits = std::mem::take(&mut self.hits.routes);
                    for &index in &hits {
                        let route = board.table.route(index);
                        if route.needs_captures {
                            board.table.captures(index, message.address, &mut self.caps);
                        }
                        for target in route.targets.iter() {
                            if let Target::Script { script, function } = target {
                                let message = script_message(
                                    &message,
                                    &self.name,
                                    &route.name,
                                    &self.caps,
                                    origin,
                                    &self.value,
                                );
                                let (script, function) = (script.clone(), function.clone());
                                when_due(&self.scheduler, timing, now.1, move || {
                                    script.deliver(function, message)
                                });
                                continue;
                            }
                            if let Target::Plugin { instance } = target {
                                let (instance, packet, origin) =
                                    (instance.clone(), message.raw.to_vec(), *origin);
                                when_due(&self.scheduler, timing, now.1, move || {
                                    instance.deliver(packet, origin)
                                });
                                continue;
                            }
                            let bytes = render(
                                target,
                                &message,
                                &self.caps,
                                &mut self.address,
                                &mut self.encoded,
                            );
                            match target {
                                Target::Forward {
                                    channel,
                                    unbundle: true,
                                    ..
                                } => {
                                    if let Some(output) = board.output(*channel) {
                                        let (output, bytes) = (output.clone(), bytes.to_vec());
                                        when_due(&self.scheduler, timing, now.1, move || {
                                            output.send(&bytes)
                                        });
                                    }
                                }
                                _ => append_element(out, destination(target), bytes),
                            }
                        }
                    }
                    self.hits.routes = hits;
                }
                PacketRef::Bundle(inner) => {
                    let mut nested = Vec::new();
                    self.collect_bundle(board, &inner, origin, now, &mut nested);
                    for (destination, elements) in nested {
                        let mut bytes = Vec::with_capacity(16 + elements.len());
                        bytes.extend_from_slice(&inner.raw[..16]);
                        bytes.extend_from_slice(&elements);
                        append_element(out, destination, &bytes);
                    }
                }
            }
        }
    }
}

/// A bundle's message for a target that acts on it itself (an `unbundle` forward, a script): now, at
/// the bundle's time, or (far-future policy `drop`) never.
fn when_due(
    scheduler: &Scheduler,
    timing: Timing,
    now: Instant,
    deliver: impl FnOnce() + Send + 'static,
) {
    match timing {
        Timing::Now { .. } => deliver(),
        Timing::FarFuture(_) if scheduler.far_future_policy() == FarFuture::Dispatch => deliver(),
        Timing::FarFuture(_) => scheduler.metrics.dropped.increment(1),
        Timing::After(delay) => {
            if scheduler.schedule_action(now + delay, Box::new(deliver)) {
                scheduler.metrics.scheduled.increment(1);
            }
        }
    }
}

/// The owned copy of a message a script gets (decoded on the script's thread).
fn script_message(
    message: &MessageRef<'_>,
    channel: &Arc<str>,
    route: &Arc<str>,
    caps: &Captures,
    origin: &Origin,
    value: &Option<Arc<serde_json::Value>>,
) -> ScriptMessage {
    let received_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    ScriptMessage {
        raw: message.raw.to_vec(),
        channel: channel.clone(),
        route: route.clone(),
        received_ms,
        captures: caps.spans.clone(),
        origin: *origin,
        value: value.clone(),
    }
}

fn destination(target: &Target) -> Destination {
    match target {
        Target::Forward { channel, .. } => Destination::Forward(*channel),
        // Scripts are delivered before this is asked; a reply is the safe reading.
        Target::Reply { .. } | Target::Script { .. } | Target::Plugin { .. } => Destination::Reply,
    }
}

/// The bytes a target sends: the original message when unchanged, else re-addressed (arguments copied).
fn render<'a>(
    target: &Target,
    message: &MessageRef<'a>,
    caps: &Captures,
    address: &mut String,
    encoded: &'a mut Vec<u8>,
) -> &'a [u8] {
    match target.rewrite() {
        None => message.raw,
        Some(rewrite) => {
            rewrite.apply(message.address, caps, address);
            encoded.clear();
            encode_readdressed(message, address, encoded);
            encoded
        }
    }
}

fn append_element(out: &mut Vec<(Destination, Vec<u8>)>, destination: Destination, bytes: &[u8]) {
    let index = match out.iter().position(|(d, _)| *d == destination) {
        Some(i) => i,
        None => {
            out.push((destination, Vec::new()));
            out.len() - 1
        }
    };
    let elements = &mut out[index].1;
    elements.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    elements.extend_from_slice(bytes);
}

fn send_to(board: &Switchboard, destination: Destination, origin: &Origin, bytes: &[u8]) {
    match destination {
        Destination::Forward(channel) => {
            if let Some(output) = board.output(channel) {
                output.send(bytes);
            }
        }
        Destination::Reply => {
            if let Some(output) = board.output(origin.channel) {
                output.reply(origin, bytes);
            }
        }
    }
}

/// At most one line per interval; the next line says how many were held back.
pub struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    pub fn log(&mut self, emit: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return;
        }
        self.last = Some(now);
        emit(std::mem::take(&mut self.suppressed));
    }
}
