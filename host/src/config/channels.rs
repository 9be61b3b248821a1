//! Channel kinds: the one place that knows each `kind:`. Adding a kind is one row in [`KINDS`] and
//! one builder function that returns a [`BuiltChannel`]; the cross-channel checks (port clashes,
//! forwarding to a channel that cannot send) only look at what the builder reports.

use std::net::SocketAddr;

use super::build::Errors;
use super::de::deserialize_all;
use super::plan::ChannelKind;
use super::yaml::{join, Node};
use crate::channel::udp::UdpConfig;

/// A builder checks one channel entry (`node`, the whole map including `kind`) at `path`.
type Builder = fn(node: &Node, path: &str, name: &str, errs: &mut Errors) -> Option<BuiltChannel>;

/// Every `kind:` there is, in the order they are listed to operators.
pub(crate) const KINDS: &[(&str, Builder)] = &[("udp", udp)];

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
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
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
    let cfg = match deserialize_all::<UdpConfig>(node) {
        Ok(cfg) => cfg,
        Err(problems) => {
            for p in problems {
                errs.de(p, path, node);
            }
            return None;
        }
    };
    let mut ok = true;
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
        let (line, column) = pos(node, "listen");
        claims.push(PortClaim {
            proto: Proto::Udp,
            addr,
            path: join(path, "listen"),
            line,
            column,
        });
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
