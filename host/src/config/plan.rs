//! The validated plan the runtime is built from.

use std::net::SocketAddr;
use std::path::PathBuf;

use patchbay_plugin_api::osc::Pattern;

use crate::channel::broadcast::BroadcastConfig;
use crate::channel::multicast::MulticastConfig;
use crate::channel::peer::channel::PeerConfig;
use crate::channel::tcp::TcpConfig;
use crate::channel::udp::UdpConfig;
use crate::plugin::PluginsPlan;
use crate::scheduler::BundleConfig;
use crate::script::ScriptsPlan;

#[derive(Debug, Clone)]
pub struct Plan {
    /// The config file, as given.
    pub source: PathBuf,
    /// Channels in file order; names are unique.
    pub channels: Vec<ChannelPlan>,
    /// Routes in file order; names are unique.
    pub routes: Vec<RoutePlan>,
    pub metrics: Option<MetricsPlan>,
    /// Time-tag handling for targets that act on messages themselves.
    pub bundles: BundleConfig,
    pub scripts: ScriptsPlan,
    pub plugins: Option<PluginsPlan>,
}

#[derive(Debug, Clone)]
pub struct ChannelPlan {
    pub name: String,
    pub kind: ChannelKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChannelKind {
    Udp(UdpConfig),
    Multicast(MulticastConfig),
    Broadcast(BroadcastConfig),
    Tcp(TcpConfig),
    Peer(PeerConfig),
}

impl ChannelKind {
    pub fn kind_name(&self) -> &'static str {
        match self {
            ChannelKind::Udp(_) => "udp",
            ChannelKind::Multicast(_) => "multicast",
            ChannelKind::Broadcast(_) => "broadcast",
            ChannelKind::Tcp(_) => "tcp",
            ChannelKind::Peer(_) => "peer",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RoutePlan {
    pub name: String,
    pub matcher: RouteMatch,
    /// Source channels; `None` = any.
    pub from: Option<Vec<String>>,
    pub targets: Vec<TargetPlan>,
    pub stop: bool,
    /// Also match incoming address *patterns* against this route's literal address.
    pub incoming_patterns: bool,
}

#[derive(Debug, Clone)]
pub enum RouteMatch {
    Pattern(Pattern),
    /// Gets what no route matched.
    Unmatched,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPlan {
    Forward {
        channel: String,
        rewrite: Option<Rewrite>,
        /// Send a bundle's messages one by one, each at its bundle's time, for devices that ignore
        /// time tags (the scheduler holds them).
        unbundle: bool,
    },
    /// Back to the message's origin, from the socket that received it.
    Reply { rewrite: Option<Rewrite> },
    /// A plugin instance of its own, created with `config` (JSON).
    Plugin { name: String, config: String },
    /// A Rhai script's function.
    Script {
        /// Resolved against the config file's folder.
        file: PathBuf,
        /// As written in the config: the script's name in logs and metrics.
        name: String,
        function: String,
    },
}

/// A rewrite template such as `/lx/sub/$1`, split once at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub source: String,
    pub parts: Vec<RewritePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewritePart {
    Literal(String),
    /// `$N`, 1-based.
    Capture(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsPlan {
    pub listen: SocketAddr,
}

impl Plan {
    /// The channel called `name`.
    pub fn channel(&self, name: &str) -> Option<&ChannelPlan> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// The folder relative paths in the config are resolved against: the config file's folder
    /// (`.` for a bare file name).
    pub fn base_dir(&self) -> PathBuf {
        match self.source.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}
