//! Channel kinds: the one place that knows each `kind:`. Adding a kind is one row in [`KINDS`] and
//! one builder function that returns a [`BuiltChannel`]; the cross-channel checks (port clashes,
//! forwarding to a channel that cannot send) only look at what the builder reports.

use std::net::SocketAddr;

use super::build::Errors;
use super::de::deserialize_all;
use super::plan::ChannelKind;
use super::yaml::{join, Node};
use crate::channel::broadcast::BroadcastConfig;
use crate::channel::datagram::Format;
use crate::channel::framing::Framing;
use crate::channel::multicast::MulticastConfig;
use crate::channel::peer::channel::PeerConfig;
use crate::channel::tcp::TcpConfig;
use crate::channel::udp::UdpConfig;

/// A builder checks one channel entry (`node`, the whole map including `kind`) at `path`.
type Builder = fn(node: &Node, path: &str, name: &str, errs: &mut Errors) -> Option<BuiltChannel>;

/// Every `kind:` there is, in the order they are listed to operators.
pub(crate) const KINDS: &[(&str, Builder)] = &[
    ("udp", udp),
    ("multicast", multicast),
    ("broadcast", broadcast),
    ("tcp", tcp),
    ("peer", peer),
];

pub(crate) fn builder(kind: &str) -> Option<Builder> {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, b)| *b)
}

pub(crate) fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|(k, _)| *k).collect()
}

/// A valid channel plus what the cross-channel checks need to know about it.
pub(crate) struct BuiltChannel {
    pub kind: ChannelKind,
    /// Local ports this channel binds.
    pub claims: Vec<PortClaim>,
    /// `Err(what to add)` when a route cannot `forward:` to this channel.
    pub forwardable: Result<(), String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// A local port a channel binds, and where in the file it says so.
pub(crate) struct PortClaim {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub path: String,
    pub line: usize,
    pub column: usize,
}

impl PortClaim {
    /// The port `addr` that the entry `node` (at `path`) claims under `key`.
    fn at(node: &Node, path: &str, key: &str, proto: Proto, addr: SocketAddr) -> PortClaim {
        let (line, column) = pos(node, key);
        PortClaim {
            proto,
            addr,
            path: join(path, key),
            line,
            column,
        }
    }

    /// Two binds that cannot both succeed: same protocol and port (port 0 picks a free one), and
    /// the same IP or either one the wildcard address.
    pub fn clashes_with(&self, other: &PortClaim) -> bool {
        self.proto == other.proto
            && self.addr.port() != 0
            && self.addr.port() == other.addr.port()
            && (self.addr.ip() == other.addr.ip()
                || self.addr.ip().is_unspecified()
                || other.addr.ip().is_unspecified())
    }

    pub fn describe(&self) -> String {
        format!("{} port {}", self.proto.name(), self.addr.port())
    }
}

/// Where a key's value sits, falling back to the entry itself.
fn pos(node: &Node, key: &str) -> (usize, usize) {
    node.get(key)
        .map(|v| (v.line, v.column))
        .unwrap_or((node.line, node.column))
}

fn udp(node: &Node, path: &str, name: &str, errs: &mut Errors) -> Option<BuiltChannel> {
    let cfg = typed::<UdpConfig>(node, path, errs)?;
    let mut ok = check_raw_address(node, path, cfg.format, cfg.raw_address.as_deref(), errs);
    if cfg.listen.is_none() && cfg.send.is_none() {
        errs.at(
            node,
            path,
            format!(
                "udp channel `{name}` needs `listen: ip:port` to receive, `send: ip:port` to \
                 transmit, or both"
            ),
        );
        ok = false;
    }
    if let (Some(listen), Some(send)) = (cfg.listen, cfg.send) {
        let same_port = listen.port() == send.port() && listen.port() != 0;
        let to_self = listen == send
            || (same_port
                && listen.ip().is_unspecified()
                && (send.ip().is_loopback() || send.ip().is_unspecified()));
        if to_self {
            let (line, column) = pos(node, "send");
            errs.at_pos(
                line,
                column,
                &join(path, "send"),
                format!(
                    "`send: {send}` is this channel's own `listen: {listen}` address: everything it \
                     sends would come straight back in (a feedback loop); send to another address"
                ),
            );
            ok = false;
        }
    }
    let mut claims = Vec::new();
    if let Some(addr) = cfg.listen {
        claims.push(PortClaim::at(node, path, "listen", Proto::Udp, addr));
    }
    let forwardable = match cfg.send {
        Some(_) => Ok(()),
        None => Err(format!(
            "udp channel `{name}` has no `send:` destination (it only listens); add `send: ip:port` \
             to it, or use `reply: true` to answer whoever sent the message"
        )),
    };
    ok.then_some(BuiltChannel {
        kind: ChannelKind::Udp(cfg),
        claims,
        forwardable,
    })
}

/// `raw_address` must be a plain OSC address, and only means something with `format: raw`.
fn check_raw_address(
    node: &Node,
    path: &str,
    format: Format,
    raw_address: Option<&str>,
    errs: &mut Errors,
) -> bool {
    let Some(address) = raw_address else {
        return true;
    };
    let (line, column) = pos(node, "raw_address");
    let problem = if format != Format::Raw {
        Some(
            "`raw_address` only applies with `format: raw`; add `format: raw` or remove it"
                .to_string(),
        )
    } else if !address.starts_with('/') {
        Some(format!(
            "`raw_address: {address}` must be an OSC address starting with `/`"
        ))
    } else if patchbay_plugin_api::osc::pattern::has_pattern_syntax(address) {
        Some(format!(
            "`raw_address: {address}` must be a plain address, without wildcards"
        ))
    } else {
        None
    };
    match problem {
        Some(message) => {
            errs.at_pos(line, column, &join(path, "raw_address"), message);
            false
        }
        None => true,
    }
}

fn multicast(node: &Node, path: &str, _name: &str, errs: &mut Errors) -> Option<BuiltChannel> {
    let cfg = typed::<MulticastConfig>(node, path, errs)?;
    let mut ok = check_raw_address(node, path, cfg.format, cfg.raw_address.as_deref(), errs);
    if !cfg.group.is_multicast() {
        let (line, column) = pos(node, "group");
        errs.at_pos(
            line,
            column,
            &join(path, "group"),
            format!(
                "`group: {}` is not a multicast address (use one in 224.0.0.0/4, e.g. 239.255.0.1)",
                cfg.group
            ),
        );
        ok = false;
    }
    if cfg.interface.is_multicast() || cfg.interface.is_broadcast() {
        let (line, column) = pos(node, "interface");
        errs.at_pos(
            line,
            column,
            &join(path, "interface"),
            format!(
                "`interface: {}` must be the IPv4 address of a network card (127.0.0.1 for this machine only)",
                cfg.interface
            ),
        );
        ok = false;
    }
    if cfg.ttl > 255 {
        let (line, column) = pos(node, "ttl");
        errs.at_pos(
            line,
            column,
            &join(path, "ttl"),
            format!("`ttl: {}` is more than 255", cfg.ttl),
        );
        ok = false;
    }
    let claims = vec![PortClaim::at(
        node,
        path,
        "port",
        Proto::Udp,
        std::net::SocketAddr::new(cfg.group.into(), cfg.port),
    )];
    ok.then_some(BuiltChannel {
        kind: ChannelKind::Multicast(cfg),
        claims,
        forwardable: Ok(()),
    })
}

fn broadcast(node: &Node, path: &str, name: &str, errs: &mut Errors) -> Option<BuiltChannel> {
    let cfg = typed::<BroadcastConfig>(node, path, errs)?;
    let ok = check_raw_address(node, path, cfg.format, cfg.raw_address.as_deref(), errs);
    let claims = vec![PortClaim::at(node, path, "listen", Proto::Udp, cfg.listen)];
    let forwardable = match cfg.send {
        Some(_) => Ok(()),
        None => Err(format!(
            "broadcast channel `{name}` has no `send:` broadcast address (it only listens); add e.g. \
             `send: 192.168.1.255:{}`",
            cfg.listen.port()
        )),
    };
    ok.then_some(BuiltChannel {
        kind: ChannelKind::Broadcast(cfg),
        claims,
        forwardable,
    })
}

fn tcp(node: &Node, path: &str, name: &str, errs: &mut Errors) -> Option<BuiltChannel> {
    let cfg = typed::<TcpConfig>(node, path, errs)?;
    let mut ok = true;
    let mut problem = |key: &str, message: String| {
        let (line, column) = pos(node, key);
        errs.at_pos(line, column, &join(path, key), message);
        ok = false;
    };
    if cfg.listen.is_none() && cfg.connect.is_none() {
        problem(
            "kind",
            format!(
                "tcp channel `{name}` needs `listen: ip:port` to accept connections, `connect: ip:port` \
                 to connect to a server, or both"
            ),
        );
    }
    if cfg.connect.is_some() {
        match cfg.framing {
            None => problem(
                "connect",
                format!(
                    "tcp channel `{name}` connects to a server, so say how that server frames OSC: add \
                     `framing: slip` (OSC 1.1) or `framing: length` (OSC 1.0), or `lines` / `raw` for \
                     devices that do not speak OSC"
                ),
            ),
            Some(Framing::Auto) => problem(
                "framing",
                "`framing: auto` only works for accepted connections (it reads the first byte the other \
                 side sends); with `connect:` choose `slip` or `length`"
                    .to_string(),
            ),
            Some(_) => {}
        }
    }
    let framing = cfg.framing();
    if cfg.terminator.is_some() && framing != Framing::Lines {
        problem(
            "terminator",
            "`terminator` only applies with `framing: lines`; add it or remove the terminator"
                .to_string(),
        );
    }
    if let Some(address) = cfg.raw_address.as_deref() {
        if framing.is_osc() {
            problem(
                "raw_address",
                "`raw_address` only applies with `framing: lines` or `framing: raw`".to_string(),
            );
        } else if !address.starts_with('/') {
            problem(
                "raw_address",
                format!("`raw_address: {address}` must be an OSC address starting with `/`"),
            );
        } else if patchbay_plugin_api::osc::pattern::has_pattern_syntax(address) {
            problem(
                "raw_address",
                format!("`raw_address: {address}` must be a plain address, without wildcards"),
            );
        }
    }
    for (key, value) in [("max_frame", cfg.max_frame), ("queue", cfg.queue)] {
        if value == 0 {
            problem(
                key,
                format!("`{key}: 0` would refuse everything; use a positive number"),
            );
        }
    }
    if cfg.max_frame > 256 << 20 {
        problem(
            "max_frame",
            format!("`max_frame: {}` is more than 256 MiB; one frame that large would be buffered whole", cfg.max_frame),
        );
    }
    if let (Some(listen), Some(connect)) = (cfg.listen, cfg.connect) {
        if listen == connect {
            problem(
                "connect",
                format!("`connect: {connect}` is this channel's own `listen` address (a loop); connect to another server"),
            );
        }
    }
    let mut claims = Vec::new();
    if let Some(addr) = cfg.listen {
        claims.push(PortClaim::at(node, path, "listen", Proto::Tcp, addr));
    }
    ok.then_some(BuiltChannel {
        kind: ChannelKind::Tcp(cfg),
        claims,
        forwardable: Ok(()),
    })
}

fn peer(node: &Node, path: &str, name: &str, errs: &mut Errors) -> Option<BuiltChannel> {
    let cfg = typed::<PeerConfig>(node, path, errs)?;
    let mut ok = true;
    let mut problem = |key: &str, message: String| {
        let (line, column) = pos(node, key);
        errs.at_pos(line, column, &join(path, key), message);
        ok = false;
    };
    if cfg.listen.is_none() && cfg.connect.is_empty() {
        problem(
            "kind",
            format!(
                "peer channel `{name}` needs `listen: ip:port` to accept offers, `connect:` with the \
                 peers to connect to (`- {{ address: ip:port, data_type: json }}`), or both"
            ),
        );
    }
    for key in ["json_address", "raw_address"] {
        let address = match key {
            "json_address" => cfg.json_address.as_deref(),
            _ => cfg.raw_address.as_deref(),
        };
        if let Some(address) = address {
            if !address.starts_with('/')
                || patchbay_plugin_api::osc::pattern::has_pattern_syntax(address)
            {
                problem(
                    key,
                    format!("`{key}: {address}` must be a plain OSC address starting with `/`"),
                );
            }
        }
    }
    for (key, value) in [
        ("max_data", cfg.max_data),
        ("queue", cfg.queue),
        ("max_pickle_items", cfg.max_pickle_items),
    ] {
        if value == 0 {
            problem(
                key,
                format!("`{key}: 0` would refuse everything; use a positive number"),
            );
        }
    }
    if cfg.max_data > 256 << 20 {
        problem(
            "max_data",
            format!("`max_data: {}` is more than 256 MiB; one payload that large would be buffered whole", cfg.max_data),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, target) in cfg.connect.iter().enumerate() {
        if !seen.insert(target.address) {
            problem(
                "connect",
                format!(
                    "`{}` is listed twice (item {i}); one connection per peer",
                    target.address
                ),
            );
        }
        if Some(target.address) == cfg.listen {
            problem(
                "connect",
                format!(
                    "`{}` is this channel's own `listen` address",
                    target.address
                ),
            );
        }
    }
    let mut claims = Vec::new();
    if let Some(addr) = cfg.listen {
        claims.push(PortClaim::at(node, path, "listen", Proto::Tcp, addr));
    }
    if let Some(addr) = cfg.discovery {
        claims.push(PortClaim::at(node, path, "discovery", Proto::Udp, addr));
    }
    ok.then_some(BuiltChannel {
        kind: ChannelKind::Peer(cfg),
        claims,
        forwardable: Ok(()),
    })
}

/// A channel entry read into its transport's config struct, every problem reported.
fn typed<T: serde::de::DeserializeOwned>(node: &Node, path: &str, errs: &mut Errors) -> Option<T> {
    match deserialize_all::<T>(node) {
        Ok(cfg) => Some(cfg),
        Err(problems) => {
            for p in problems {
                errs.de(p, path, node);
            }
            None
        }
    }
}
