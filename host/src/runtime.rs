//! Starting, reloading and stopping the host: build the channels and the switchboard from a plan,
//! print the ready line, apply config edits while the show runs, serve until shutdown.
//!
//! A reload is applied as a difference against the running plan. Everything that can fail (binding a
//! new socket, joining a multicast group) happens before anything visible changes, so a failure
//! leaves the running config serving. Then live settings change in place, the switchboard (route
//! table + outputs) is swapped atomically, new channels start and removed ones close.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::channel::datagram::{DatagramOutput, OwnDatagrams, Startup};
use crate::channel::peer::channel::{self as peer, PeerOutput};
use crate::channel::tcp::{self, TcpOutput};
use crate::channel::{broadcast, multicast, udp, ChannelContext, Output, StatusBoard};
use crate::config::{self, ChannelKind, ChannelPlan, ConfigErrors, Plan};
use crate::dispatch::{Dispatcher, SharedSwitchboard, Switchboard};
use crate::metrics::{self, ChannelMetrics, MetricsError, ReloadMetrics};
use crate::plugin::PluginHost;
use crate::ready::Ready;
use crate::reload::{ChannelChange, PlanDiff};
use crate::route::{ChannelId, RouteTable};
use crate::scheduler::Scheduler;
use crate::script::ScriptHost;
use crate::watch::{self, ReloadTrigger};

/// How `patchbay run` was asked to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub ready_file: Option<PathBuf>,
    /// A channel that cannot bind (or a metrics port that is taken) stops the host instead of retrying.
    pub strict: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the config has errors:\n{0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("{0} (--strict makes this fatal)")]
    Strict(String),
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a valid new config was not applied; the running config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("channel `{channel}` cannot bind {addr}: {source}")]
    Bind {
        channel: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("channel `{channel}` cannot change in place: {source}")]
    Live {
        channel: String,
        source: std::io::Error,
    },
}

/// Channel names to ids for the life of the process: a channel keeps its id across reloads.
#[derive(Default)]
pub struct ChannelIds {
    ids: std::collections::HashMap<String, ChannelId>,
}

impl ChannelIds {
    pub fn id(&mut self, name: &str) -> ChannelId {
        let next = ChannelId(self.ids.len() as u32);
        *self.ids.entry(name.to_string()).or_insert(next)
    }
}

/// A channel that is running: its config in force, its output handle and its receive task.
struct Running {
    id: ChannelId,
    kind: ChannelKind,
    output: ChannelOutput,
    cancel: CancellationToken,
    replaced: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// A channel's sending side, by transport family.
#[derive(Clone)]
enum ChannelOutput {
    /// With the memory of what it sent, for kinds whose own datagrams can come back.
    Datagram(Arc<DatagramOutput>, Arc<OwnDatagrams>),
    Tcp(Arc<TcpOutput>),
    Peer(Arc<PeerOutput>),
}

impl ChannelOutput {
    fn as_output(&self) -> Arc<dyn Output> {
        match self {
            ChannelOutput::Datagram(output, _) => output.clone(),
            ChannelOutput::Tcp(output) => output.clone(),
            ChannelOutput::Peer(output) => output.clone(),
        }
    }

    /// Where forwards go, for the ready file.
    fn destination(&self) -> Option<SocketAddr> {
        match self {
            ChannelOutput::Datagram(output, _) => output.destination(),
            ChannelOutput::Tcp(output) => output.connect_address(),
            ChannelOutput::Peer(output) => output.connect_address(),
        }
    }
}

/// What a reload binds before it commits, so a refused port leaves everything as it was.
enum Bound {
    Udp(Arc<crate::channel::datagram::DatagramSocket>),
    /// None for a client-only channel.
    Tcp(Option<tokio::net::TcpListener>),
    Peer(peer::PeerBound),
}

/// How a channel starts: with what a reload bound, or binding (with retries) by itself.
enum ChannelStart {
    Bound(Bound),
    Retry { strict: bool },
}

impl ChannelStart {
    fn strict(&self) -> bool {
        matches!(self, ChannelStart::Retry { strict: true })
    }

    fn udp(self) -> Startup {
        match self {
            ChannelStart::Bound(Bound::Udp(socket)) => Startup::Bound(socket),
            other => Startup::Retry {
                strict: other.strict(),
            },
        }
    }

    fn tcp(self) -> tcp::Startup {
        match self {
            ChannelStart::Bound(Bound::Tcp(listener)) => tcp::Startup::Bound(listener),
            other => tcp::Startup::Retry {
                strict: other.strict(),
            },
        }
    }

    fn peer(self) -> peer::Startup {
        match self {
            ChannelStart::Bound(Bound::Peer(bound)) => peer::Startup::Bound(bound),
            other => peer::Startup::Retry {
                strict: other.strict(),
            },
        }
    }
}

/// The running host.
pub struct Host {
    options: RunOptions,
    plan: Plan,
    generation: u64,
    ids: ChannelIds,
    channels: BTreeMap<String, Running>,
    board: SharedSwitchboard,
    scheduler: Arc<Scheduler>,
    status: StatusBoard,
    cancel: CancellationToken,
    metrics_addr: Option<SocketAddr>,
    reload_metrics: ReloadMetrics,
    /// Reports channel tasks that stopped with an error (strict start-up).
    failures: mpsc::UnboundedSender<String>,
    /// The last edited text that was invalid, so a save that raises two triggers is reported once.
    last_invalid: Option<String>,
    scripts: Arc<ScriptHost>,
    script_watcher: Option<watch::Watcher>,
    plugins: Arc<PluginHost>,
    plugin_watcher: Option<watch::Watcher>,
    /// Cancelled once the first route table is in place; channel tasks wait for it.
    started: CancellationToken,
    /// Asks the main loop to rebuild the route table (a plugin appeared, changed or went away).
    rebuild: mpsc::Sender<()>,
}

/// Runs the host until `shutdown` is cancelled.
pub async fn run(options: RunOptions, shutdown: CancellationToken) -> Result<(), RunError> {
    let plan = config::load(&options.config).map_err(RunError::Config)?;
    let prometheus = metrics::install()?;
    let cancel = shutdown.child_token();
    let (failures, mut failed) = mpsc::unbounded_channel();
    let scheduler = Arc::new(Scheduler::new(plan.bundles.clone()));
    tokio::spawn(scheduler.clone().run(cancel.clone()));

    let board: SharedSwitchboard = Arc::new(ArcSwap::from_pointee(Switchboard::new(
        0,
        RouteTable::build(&[], |_| ChannelId(0)),
        vec![],
    )));
    let scripts = ScriptHost::new(board.clone(), plan.scripts.clone());
    let plugins = PluginHost::new(board.clone());
    plugins.set_plan(plan.plugins.clone());
    let (rebuild, mut rebuilds) = mpsc::channel::<()>(4);
    let mut host = Host {
        plugins,
        plugin_watcher: None,
        rebuild,
        options: options.clone(),
        generation: 1,
        ids: ChannelIds::default(),
        channels: BTreeMap::new(),
        board,
        scripts,
        script_watcher: None,
        scheduler,
        status: StatusBoard::default(),
        cancel: cancel.clone(),
        started: CancellationToken::new(),
        metrics_addr: None,
        reload_metrics: ReloadMetrics::new(),
        failures,
        last_invalid: None,
        plan,
    };
    host.reload_metrics.generation.set(1.0);

    // Outputs exist before any socket is bound, so the switchboard is complete from the first packet;
    // every socket is bound before any channel starts receiving, so the first thing that arrives
    // (a client connection's open event, say) finds every output able to send. A port that is
    // taken is retried by its channel, the others start regardless.
    let mut starting = Vec::new();
    for channel in host.plan.channels.clone() {
        let running = host.prepare_channel(&channel);
        starting.push((channel, running));
    }
    let names: Vec<String> = starting.iter().map(|(c, _)| c.name.clone()).collect();
    for (channel, (id, output)) in starting {
        let startup = match bind(&channel.kind) {
            Ok(bound) => ChannelStart::Bound(bound),
            Err(_) => ChannelStart::Retry {
                strict: options.strict,
            },
        };
        host.spawn_channel(&channel, id, output, startup);
    }
    host.swap_board();
    host.started.cancel();
    host.watch_scripts();
    host.watch_plugins();

    // Ready once every channel has tried its first bind.
    loop {
        let notified = host.status.changed();
        let snapshot = host.status.snapshot();
        if names.iter().all(|n| snapshot.contains_key(n)) {
            break;
        }
        tokio::select! {
            _ = notified => {}
            Some(e) = failed.recv() => {
                cancel.cancel();
                return Err(RunError::Strict(e));
            }
            _ = shutdown.cancelled() => {
                cancel.cancel();
                return Ok(());
            }
        }
    }
    if options.strict {
        if let Some((_, down)) = host
            .status
            .snapshot()
            .iter()
            .find(|(_, s)| !s.up && s.binds())
        {
            cancel.cancel();
            return Err(RunError::Strict(down.error.clone().unwrap_or_default()));
        }
    }

    host.metrics_addr = match start_metrics(&host.plan, prometheus, &cancel).await {
        Ok(addr) => addr,
        Err(e) if options.strict => {
            cancel.cancel();
            return Err(e.into());
        }
        Err(e) => {
            tracing::error!("{e}. Channels keep running without the metrics endpoint.");
            None
        }
    };

    host.scripts.init_new();
    // Watching starts before the ready line, so an edit made right after it is not missed.
    let (reload_tx, mut reloads) = mpsc::channel::<ReloadTrigger>(16);
    let _watcher = match watch::watch_file(&options.config, reload_tx.clone()) {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!(
                config = %options.config.display(),
                "Cannot watch the config file for edits: {e}. Reload with SIGHUP instead."
            );
            None
        }
    };
    watch::reload_on_sighup(reload_tx, cancel.clone());

    println!("{}", host.ready().line());
    host.write_ready()?;
    tracing::info!(
        config = %options.config.display(), channels = host.plan.channels.len(), routes = host.plan.routes.len(),
        "Patchbay is running. Edits to the config file are applied while the show runs (or send SIGHUP)."
    );

    let status = host.status.clone();
    // Armed once and re-armed only when it fires: a channel that comes up while a reload is being
    // applied (a rebind finishing after the reload's own ready write) still rewrites the file.
    let mut notified = Box::pin(status.changed());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(trigger) = reloads.recv() => host.reload(trigger).await,
            Some(()) = rebuilds.recv() => {
                host.swap_board();
                tracing::info!(plugins = %host.plugins.names().join(", "), "Routes rebuilt for the changed plugins folder.");
            }
            _ = &mut notified => {
                // A channel came up (or went down) later: keep the ready file true. Re-armed before
                // the snapshot is read, so a change made meanwhile is not missed.
                notified = Box::pin(status.changed());
                if let Err(e) = host.write_ready() {
                    tracing::warn!("{e}");
                }
            }
            Some(e) = failed.recv() => tracing::error!("A channel stopped: {e}."),
        }
    }
    cancel.cancel();
    host.scripts.shutdown();
    host.plugins.shutdown();
    let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut host.channels)
        .into_values()
        .map(|r| r.task)
        .collect();
    let _ = tokio::time::timeout(Duration::from_secs(5), futures_join(tasks)).await;
    tracing::info!("Patchbay stopped.");
    Ok(())
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

impl Host {
    fn ready(&self) -> ReadyOwned {
        ReadyOwned {
            channels: self.status.snapshot(),
            metrics: self.metrics_addr,
        }
    }

    fn write_ready(&self) -> Result<(), RunError> {
        match &self.options.ready_file {
            Some(path) => {
                self.ready()
                    .as_ready()
                    .write_file(path)
                    .map_err(|source| RunError::ReadyFile {
                        path: path.clone(),
                        source,
                    })
            }
            None => Ok(()),
        }
    }

    /// The output of a channel about to start.
    fn prepare_channel(&mut self, channel: &ChannelPlan) -> (ChannelId, ChannelOutput) {
        let id = self.ids.id(&channel.name);
        let name: Arc<str> = channel.name.as_str().into();
        let channel_metrics = ChannelMetrics::new(&channel.name);
        let own = Arc::new(OwnDatagrams::default());
        let datagram = |output| ChannelOutput::Datagram(Arc::new(output), own.clone());
        let output = match &channel.kind {
            ChannelKind::Udp(cfg) => datagram(cfg.output(name, channel_metrics)),
            ChannelKind::Multicast(cfg) => datagram(cfg.output(name, channel_metrics, own.clone())),
            ChannelKind::Broadcast(cfg) => datagram(cfg.output(name, channel_metrics, own.clone())),
            ChannelKind::Tcp(cfg) => {
                ChannelOutput::Tcp(Arc::new(cfg.output(name, channel_metrics)))
            }
            ChannelKind::Peer(cfg) => {
                let output = cfg.output(name, channel_metrics);
                output.set_decider(self.offer_decider(cfg));
                ChannelOutput::Peer(Arc::new(output))
            }
        };
        (id, output)
    }

    fn spawn_channel(
        &mut self,
        channel: &ChannelPlan,
        id: ChannelId,
        output: ChannelOutput,
        start: ChannelStart,
    ) {
        if let (ChannelStart::Bound(Bound::Udp(socket)), ChannelOutput::Datagram(output, _)) =
            (&start, &output)
        {
            // Sendable at once, before the channel's task runs.
            output.set_socket(Some(socket.clone()));
        }
        let name: Arc<str> = channel.name.as_str().into();
        let channel_metrics = ChannelMetrics::new(&channel.name);
        let cancel = self.cancel.child_token();
        let replaced = Arc::new(AtomicBool::new(false));
        let ctx = ChannelContext {
            replaced: replaced.clone(),
            inbound: Dispatcher::new(
                id,
                name.clone(),
                self.board.clone(),
                self.scheduler.clone(),
                channel_metrics.clone(),
            ),
            name,
            id,
            cancel: cancel.clone(),
            metrics: channel_metrics,
            status: self.status.clone(),
        };
        let kind = channel.kind.clone();
        let task_output = output.clone();
        let failures = self.failures.clone();
        let started = self.started.clone();
        let task = tokio::spawn(async move {
            // Nothing is received (no datagram, no connection) before the first route table is in
            // place: a client channel's first messages would otherwise meet an empty table.
            tokio::select! {
                _ = started.cancelled() => {}
                _ = ctx.cancel.cancelled() => return,
            }
            let result = match (kind, task_output) {
                (ChannelKind::Udp(cfg), ChannelOutput::Datagram(output, _)) => {
                    udp::run(cfg, output, ctx, start.udp()).await
                }
                (ChannelKind::Multicast(cfg), ChannelOutput::Datagram(output, own)) => {
                    multicast::run(cfg, output, own, ctx, start.udp()).await
                }
                (ChannelKind::Broadcast(cfg), ChannelOutput::Datagram(output, own)) => {
                    broadcast::run(cfg, output, own, ctx, start.udp()).await
                }
                (ChannelKind::Tcp(cfg), ChannelOutput::Tcp(output)) => {
                    tcp::run(cfg, output, ctx, start.tcp()).await
                }
                (ChannelKind::Peer(cfg), ChannelOutput::Peer(output)) => {
                    peer::run(cfg, output, ctx, start.peer()).await
                }
                _ => unreachable!("prepare_channel makes the output of the channel's kind"),
            };
            if let Err(e) = result {
                let _ = failures.send(e.to_string());
            }
        });
        self.channels.insert(
            channel.name.clone(),
            Running {
                id,
                kind: channel.kind.clone(),
                output,
                cancel,
                replaced,
                task,
            },
        );
    }

    /// Builds the switchboard for the current plan and channels and swaps it in. Messages already
    /// being routed finish on the board they loaded.
    fn swap_board(&mut self) {
        let ids = &mut self.ids;
        let scripts = &self.scripts;
        let plugins = &self.plugins;
        let mut used = Vec::new();
        let table = RouteTable::build_full(
            &self.plan.routes,
            |name| ids.id(name),
            |file, name| Some(scripts.script(file, name)),
            |route, target, plugin, config| {
                let instance = plugins.instance(route, target, plugin, config);
                used.extend(instance.clone());
                instance
            },
        );
        let outputs: Vec<(ChannelId, Arc<dyn Output>)> = self
            .channels
            .values()
            .map(|r| (r.id, r.output.as_output()))
            .collect();
        self.board
            .store(Arc::new(Switchboard::new(self.generation, table, outputs)));
        // Instances the new table no longer uses get on_unload (messages already queued first).
        self.plugins.retain_used(&used);
    }

    /// (Re)starts the watch on the plugins folder.
    fn watch_plugins(&mut self) {
        self.plugin_watcher = None;
        let Some(dir) = self.plugins.dir() else {
            return;
        };
        match watch::watch_plugins(&dir, self.plugins.clone(), self.rebuild.clone()) {
            Ok(watcher) => self.plugin_watcher = Some(watcher),
            Err(e) => {
                tracing::warn!(folder = %dir.display(), "Cannot watch the plugins folder: {e}. Restart to load new plugins.")
            }
        }
    }

    /// (Re)starts the watch on the script folders (the set can change with a reload).
    fn watch_scripts(&mut self) {
        let folders = self.scripts.folders();
        self.script_watcher = None;
        if folders.is_empty() {
            return;
        }
        match watch::watch_scripts(&folders, self.scripts.clone()) {
            Ok(watcher) => self.script_watcher = Some(watcher),
            Err(e) => tracing::warn!(
                "Cannot watch the script folders for saves: {e}. Restart to load script edits."
            ),
        }
    }

    /// Reads, validates and applies the config file after an edit or SIGHUP.
    async fn reload(&mut self, trigger: ReloadTrigger) {
        let path = self.options.config.clone();
        let text = match watch::read_settled(&path).await {
            Ok(text) => text,
            Err(e) => {
                self.reload_metrics.invalid.increment(1);
                tracing::error!(
                    config = %path.display(),
                    "Cannot read the edited config: {e}. The running config stays in force."
                );
                return;
            }
        };
        if self.last_invalid.as_deref() == Some(text.as_str()) {
            // One save can raise two triggers; its errors were already reported once.
            return;
        }
        let new = match config::parse(&text, &path) {
            Ok(plan) => {
                self.last_invalid = None;
                plan
            }
            Err(errors) => {
                self.last_invalid = Some(text);
                self.reload_metrics.invalid.increment(1);
                tracing::error!(
                    config = %path.display(), errors = errors.0.len(),
                    "The edited config is invalid; the running config stays in force. Fix and save again:\n{errors}"
                );
                return;
            }
        };
        let diff = PlanDiff::between(&self.plan, &new);
        if diff.is_empty() {
            tracing::debug!(config = %path.display(), "Config saved without changes.");
            return;
        }
        match self.apply(new, &diff).await {
            Ok(()) => {
                self.reload_metrics.applied.increment(1);
                self.reload_metrics.generation.set(self.generation as f64);
                let elapsed = trigger.at.elapsed();
                self.reload_metrics
                    .save_to_applied
                    .record(elapsed.as_secs_f64());
                tracing::info!(
                    generation = self.generation,
                    reason = trigger.reason,
                    ms = elapsed.as_millis() as u64,
                    "Applied the edited config: {diff}."
                );
            }
            Err(e) => {
                self.reload_metrics.rolled_back.increment(1);
                tracing::error!(
                    generation = self.generation,
                    "Could not apply the edited config: {e}. Rolled back; the previous config keeps serving."
                );
            }
        }
        if let Err(e) = self.write_ready() {
            tracing::warn!("{e}");
        }
    }

    /// Applies a valid new plan as a difference against the running one (see the module doc).
    pub async fn apply(&mut self, new: Plan, diff: &PlanDiff) -> Result<(), ApplyError> {
        if let Some(lost) = diff.large_removal(&self.plan) {
            tracing::warn!("The edited config removes {lost}. Applying it; if the save was cut short, save again.");
        }
        let by_name = |plan: &Plan, name: &str| plan.channel(name).cloned();

        // 1. Bind what is new while nothing has changed yet.
        let mut fresh: Vec<(ChannelPlan, Bound)> = Vec::new();
        let mut release_first: Vec<ChannelPlan> = Vec::new();
        let rebinds: Vec<&String> = diff
            .channels_changed
            .iter()
            .filter(|(_, c)| matches!(c, ChannelChange::Rebind(_)))
            .map(|(n, _)| n)
            .collect();
        for name in diff.channels_added.iter().chain(rebinds.iter().copied()) {
            let Some(channel) = by_name(&new, name) else {
                continue;
            };
            match bind(&channel.kind) {
                Ok(socket) => fresh.push((channel, socket)),
                Err(e) if self.holds_port_of(name, &channel.kind) => {
                    tracing::debug!(channel = %name, error = %e, "The old socket holds the port; it is released first.");
                    release_first.push(channel);
                }
                Err(source) => {
                    return Err(ApplyError::Bind {
                        channel: name.clone(),
                        addr: bind_address(&channel.kind),
                        source,
                    })
                }
            }
        }
        // Group changes are joined before anything else changes, so a refused join leaves all as it was.
        let mut joined: Vec<(Arc<DatagramOutput>, std::net::Ipv4Addr, std::net::Ipv4Addr)> =
            Vec::new();
        for (name, change) in &diff.channels_changed {
            let (ChannelChange::Live(_), Some(running), Some(channel)) =
                (change, self.channels.get(name), new.channel(name))
            else {
                continue;
            };
            if let (
                ChannelKind::Multicast(old),
                ChannelKind::Multicast(cfg),
                ChannelOutput::Datagram(output, _),
            ) = (&running.kind, &channel.kind, &running.output)
            {
                if old.group != cfg.group {
                    if let Err(source) = output.join_group(cfg.group, cfg.interface) {
                        for (output, group, interface) in joined {
                            let _ = output.leave_group(group, interface);
                        }
                        return Err(ApplyError::Live {
                            channel: name.clone(),
                            source,
                        });
                    }
                    joined.push((output.clone(), cfg.group, cfg.interface));
                }
            }
        }

        // 2. Rebinds whose old socket holds the very port: release it, bind, or restore the old one.
        for channel in release_first {
            let Some(old) = self.channels.remove(&channel.name) else {
                continue;
            };
            old.cancel.cancel();
            let _ = old.task.await;
            match bind(&channel.kind) {
                Ok(socket) => fresh.push((channel, socket)),
                Err(source) => {
                    let previous = ChannelPlan {
                        name: channel.name.clone(),
                        kind: old.kind.clone(),
                    };
                    let startup = match bind(&old.kind) {
                        Ok(bound) => ChannelStart::Bound(bound),
                        Err(_) => ChannelStart::Retry { strict: false },
                    };
                    self.spawn_channel(&previous, old.id, old.output, startup);
                    for (output, group, interface) in joined {
                        let _ = output.leave_group(group, interface);
                    }
                    return Err(ApplyError::Bind {
                        channel: channel.name.clone(),
                        addr: bind_address(&channel.kind),
                        source,
                    });
                }
            }
        }

        // 3. Commit: live settings in place, new channels in, the board swapped, the old closed.
        for (name, change) in &diff.channels_changed {
            let ChannelChange::Live(_) = change else {
                continue;
            };
            let (Some(running), Some(channel)) = (self.channels.get_mut(name), new.channel(name))
            else {
                continue;
            };
            let result = match (&running.kind, &channel.kind, &running.output) {
                (
                    ChannelKind::Udp(_),
                    ChannelKind::Udp(cfg),
                    ChannelOutput::Datagram(output, _),
                ) => cfg.apply_live(name, output),
                (
                    ChannelKind::Multicast(old),
                    ChannelKind::Multicast(cfg),
                    ChannelOutput::Datagram(output, _),
                ) => cfg.apply_live(old, name, output),
                (
                    ChannelKind::Broadcast(_),
                    ChannelKind::Broadcast(cfg),
                    ChannelOutput::Datagram(output, _),
                ) => cfg.apply_live(name, output),
                (ChannelKind::Tcp(_), ChannelKind::Tcp(cfg), ChannelOutput::Tcp(output)) => {
                    cfg.apply_live(name, output);
                    Ok(())
                }
                (ChannelKind::Peer(_), ChannelKind::Peer(cfg), ChannelOutput::Peer(output)) => {
                    cfg.apply_live(name, output);
                    output.set_decider(decider(&self.scripts, &new, cfg));
                    Ok(())
                }
                _ => Ok(()),
            };
            if let Err(e) = result {
                // Socket options that the OS refused (e.g. a buffer size) are not worth a rollback.
                tracing::warn!(channel = %name, "Some live settings were not applied: {e}.");
            }
            running.kind = channel.kind.clone();
            let send = running.output.destination();
            self.status.update(name, |status| status.send = send);
        }
        let mut retired: Vec<Running> = Vec::new();
        for (channel, socket) in fresh {
            if let Some(old) = self.channels.remove(&channel.name) {
                old.replaced.store(true, Ordering::Relaxed);
                retired.push(old);
            }
            let (id, output) = self.prepare_channel(&channel);
            self.spawn_channel(&channel, id, output, ChannelStart::Bound(socket));
        }
        for name in &diff.channels_removed {
            if let Some(old) = self.channels.remove(name) {
                self.status.remove(name);
                retired.push(old);
            }
        }
        self.plan = new;
        self.generation += 1;
        self.scheduler.set_config(self.plan.bundles.clone());
        self.scripts.set_plan(self.plan.scripts.clone());
        let plugin_dir = self.plugins.dir();
        self.plugins.set_plan(self.plan.plugins.clone());
        self.swap_board();
        self.watch_scripts();
        if self.plugins.dir() != plugin_dir {
            self.watch_plugins();
        }
        self.scripts.init_new();
        // Messages routed on the old board may still be sending through these (datagram outputs have
        // no queue of their own): give them a moment before the sockets close.
        for old in retired {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                old.cancel.cancel();
            });
        }
        Ok(())
    }

    /// The script that decides a peer channel's offers, when it has one.
    fn offer_decider(&self, cfg: &peer::PeerConfig) -> Option<peer::Decider> {
        decider(&self.scripts, &self.plan, cfg)
    }

    /// Whether the running channel `name` is bound to the port `kind` wants.
    fn holds_port_of(&self, name: &str, kind: &ChannelKind) -> bool {
        let Some(running) = self.channels.get(name) else {
            return false;
        };
        let (old, new) = (bind_address(&running.kind), bind_address(kind));
        new.port() != 0
            && old.port() == new.port()
            && (old.ip() == new.ip() || old.ip().is_unspecified() || new.ip().is_unspecified())
    }
}

/// A peer channel's `accept:` script, resolved like a route's script target (relative to the
/// config file) and loaded by the script host (one state per file, shared with routes).
fn decider(scripts: &ScriptHost, plan: &Plan, cfg: &peer::PeerConfig) -> Option<peer::Decider> {
    let accept = cfg.accept.as_ref()?;
    let file = plan.scripts.base_dir.join(&accept.script);
    Some(peer::Decider {
        script: scripts.script(&file, &accept.script),
        function: accept.function.as_str().into(),
    })
}

fn bind(kind: &ChannelKind) -> std::io::Result<Bound> {
    match kind {
        ChannelKind::Udp(cfg) => udp::bind(cfg).map(|s| Bound::Udp(Arc::new(s))),
        ChannelKind::Multicast(cfg) => multicast::bind(cfg).map(|s| Bound::Udp(Arc::new(s))),
        ChannelKind::Broadcast(cfg) => broadcast::bind(cfg).map(|s| Bound::Udp(Arc::new(s))),
        ChannelKind::Tcp(cfg) => cfg
            .listen
            .map(crate::channel::stream::bind)
            .transpose()
            .map(Bound::Tcp),
        ChannelKind::Peer(cfg) => peer::bind(cfg).map(Bound::Peer),
    }
}

fn bind_address(kind: &ChannelKind) -> SocketAddr {
    match kind {
        ChannelKind::Udp(cfg) => cfg.bind_address(),
        ChannelKind::Multicast(cfg) => SocketAddr::from(([0, 0, 0, 0], cfg.port)),
        ChannelKind::Broadcast(cfg) => cfg.listen,
        ChannelKind::Tcp(cfg) => cfg
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        ChannelKind::Peer(cfg) => cfg
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
    }
}

struct ReadyOwned {
    channels: BTreeMap<String, crate::channel::ChannelStatus>,
    metrics: Option<SocketAddr>,
}

impl ReadyOwned {
    fn as_ready(&self) -> Ready<'_> {
        Ready {
            pid: std::process::id(),
            channels: &self.channels,
            metrics: self.metrics,
        }
    }

    fn line(&self) -> String {
        self.as_ready().line()
    }
}

async fn start_metrics(
    plan: &Plan,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    cancel: &CancellationToken,
) -> Result<Option<SocketAddr>, MetricsError> {
    let Some(metrics_plan) = &plan.metrics else {
        return Ok(None);
    };
    let listener = metrics::bind(metrics_plan.listen).await?;
    let addr = listener.local_addr().ok();
    tokio::spawn(metrics::serve(listener, prometheus, cancel.clone()));
    Ok(addr)
}
