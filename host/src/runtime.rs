//! Starting and stopping the host: build the channels and the switchboard from a plan, print the ready
//! line, serve until shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channel::datagram::OwnDatagrams;
use crate::channel::{broadcast, multicast, udp, ChannelContext, Output, StatusBoard};
use crate::config::{self, ChannelKind, ConfigErrors, Plan};
use crate::dispatch::{Dispatcher, SharedSwitchboard, Switchboard};
use crate::metrics::{self, ChannelMetrics, MetricsError};
use crate::ready::Ready;
use crate::route::{ChannelId, RouteTable};
use crate::scheduler::Scheduler;

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

/// Channel names to ids for the life of the process: a channel keeps its id across reloads.
#[derive(Default)]
pub struct ChannelIds {
    ids: HashMap<String, ChannelId>,
}

impl ChannelIds {
    pub fn id(&mut self, name: &str) -> ChannelId {
        let next = ChannelId(self.ids.len() as u32);
        *self.ids.entry(name.to_string()).or_insert(next)
    }
}

/// Runs the host until `shutdown` is cancelled.
pub async fn run(options: RunOptions, shutdown: CancellationToken) -> Result<(), RunError> {
    let plan = config::load(&options.config).map_err(RunError::Config)?;
    let prometheus = metrics::install()?;
    let status = StatusBoard::default();
    let cancel = shutdown.child_token();
    let mut ids = ChannelIds::default();
    for channel in &plan.channels {
        ids.id(&channel.name);
    }

    let scheduler = Arc::new(Scheduler::new(plan.bundles.clone()));
    // Outputs exist before any socket is bound, so the switchboard is complete from the first packet.
    let mut outputs: Vec<(ChannelId, Arc<dyn Output>)> = Vec::new();
    let mut starts = Vec::new();
    for channel in &plan.channels {
        let id = ids.id(&channel.name);
        let name: Arc<str> = channel.name.as_str().into();
        let channel_metrics = ChannelMetrics::new(&channel.name);
        let own = Arc::new(OwnDatagrams::default());
        let output = Arc::new(match &channel.kind {
            ChannelKind::Udp(cfg) => cfg.output(name.clone(), channel_metrics.clone()),
            ChannelKind::Multicast(cfg) => {
                cfg.output(name.clone(), channel_metrics.clone(), own.clone())
            }
            ChannelKind::Broadcast(cfg) => {
                cfg.output(name.clone(), channel_metrics.clone(), own.clone())
            }
        });
        outputs.push((id, output.clone()));
        starts.push((id, name, channel_metrics, channel.kind.clone(), output, own));
    }
    let table = RouteTable::build(&plan.routes, |name| ids.id(name));
    let board: SharedSwitchboard =
        Arc::new(ArcSwap::from_pointee(Switchboard::new(1, table, outputs)));

    let mut tasks = JoinSet::new();
    {
        let scheduler = scheduler.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            scheduler.run(cancel).await;
            Ok(())
        });
    }
    for (id, name, channel_metrics, kind, output, own) in starts {
        let ctx = ChannelContext {
            inbound: Dispatcher::new(
                id,
                name.clone(),
                board.clone(),
                scheduler.clone(),
                channel_metrics.clone(),
            ),
            name,
            id,
            cancel: cancel.clone(),
            metrics: channel_metrics,
            status: status.clone(),
        };
        let strict = options.strict;
        tasks.spawn(async move {
            let result = match kind {
                ChannelKind::Udp(cfg) => udp::run(cfg, output, ctx, strict).await,
                ChannelKind::Multicast(cfg) => multicast::run(cfg, output, own, ctx, strict).await,
                ChannelKind::Broadcast(cfg) => broadcast::run(cfg, output, own, ctx, strict).await,
            };
            result.map_err(|e| e.to_string())
        });
    }

    // Ready once every channel has tried its first bind.
    let expected = plan.channels.len();
    loop {
        let notified = status.changed();
        if status.snapshot().len() >= expected {
            break;
        }
        tokio::select! {
            _ = notified => {}
            Some(Ok(Err(e))) = tasks.join_next() => {
                cancel.cancel();
                return Err(RunError::Strict(e));
            }
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    if options.strict {
        if let Some((_, down)) = status.snapshot().iter().find(|(_, s)| !s.up) {
            cancel.cancel();
            return Err(RunError::Strict(down.error.clone().unwrap_or_default()));
        }
    }

    let metrics_addr = match start_metrics(&plan, prometheus, &cancel, &mut tasks).await {
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

    let snapshot = status.snapshot();
    let ready = Ready {
        pid: std::process::id(),
        channels: &snapshot,
        metrics: metrics_addr,
    };
    println!("{}", ready.line());
    write_ready(&options, &ready)?;
    tracing::info!(
        config = %options.config.display(), channels = plan.channels.len(), routes = plan.routes.len(),
        "Patchbay is running."
    );

    loop {
        let notified = status.changed();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = notified => {
                // A channel came up (or went down) later: keep the ready file true.
                let snapshot = status.snapshot();
                let ready = Ready { pid: std::process::id(), channels: &snapshot, metrics: metrics_addr };
                if let Err(e) = write_ready(&options, &ready) {
                    tracing::warn!("{e}");
                }
            }
            Some(result) = tasks.join_next() => {
                if let Ok(Err(e)) = result {
                    tracing::error!("A channel stopped: {e}.");
                }
            }
        }
    }
    cancel.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    tracing::info!("Patchbay stopped.");
    Ok(())
}

async fn start_metrics(
    plan: &Plan,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<Result<(), String>>,
) -> Result<Option<SocketAddr>, MetricsError> {
    let Some(metrics_plan) = &plan.metrics else {
        return Ok(None);
    };
    let listener = metrics::bind(metrics_plan.listen).await?;
    let addr = listener.local_addr().ok();
    let cancel = cancel.clone();
    tasks.spawn(async move {
        metrics::serve(listener, prometheus, cancel).await;
        Ok(())
    });
    Ok(addr)
}

fn write_ready(options: &RunOptions, ready: &Ready<'_>) -> Result<(), RunError> {
    match &options.ready_file {
        Some(path) => ready
            .write_file(path)
            .map_err(|source| RunError::ReadyFile {
                path: path.clone(),
                source,
            }),
        None => Ok(()),
    }
}
