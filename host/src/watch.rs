//! Noticing config edits: a debounced watch on the config file's folder (editors save in place, by
//! rename, or by delete-and-create; watching the folder survives all three), and SIGHUP.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify_debouncer_full::notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A request to reload, with when it was noticed (for the save-to-applied time).
#[derive(Debug, Clone, Copy)]
pub struct ReloadTrigger {
    pub at: Instant,
    pub reason: &'static str,
}

/// Short: editors write a file in a burst of events, and a save must go live within a quarter second.
const DEBOUNCE: Duration = Duration::from_millis(40);

/// Two reads this far apart must agree before a file counts as saved (a save caught midway is not
/// taken).
const SETTLE: Duration = Duration::from_millis(30);

pub type Watcher = Debouncer<RecommendedWatcher, RecommendedCache>;

/// Watches `config`'s folder and sends a trigger whenever the config file changes. Keep the returned
/// watcher alive.
pub fn watch_file(
    config: &Path,
    triggers: mpsc::Sender<ReloadTrigger>,
) -> Result<Watcher, notify_debouncer_full::notify::Error> {
    let file = absolute(config);
    let folder = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file.file_name().map(|n| n.to_os_string());
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let Ok(events) = result else { return };
        // Reading the file (as a reload does) raises access events: only writes, creates, renames
        // and removals count, or every reload would trigger the next.
        let touches_config = events.iter().any(|e| {
            !matches!(e.kind, EventKind::Access(_))
                && e.paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        });
        if touches_config {
            // A full queue already holds a pending reload, which will read the newest file.
            let _ = triggers.try_send(ReloadTrigger {
                at: Instant::now() - DEBOUNCE,
                reason: "file saved",
            });
        }
    })?;
    debouncer.watch(&folder, RecursiveMode::NonRecursive)?;
    Ok(debouncer)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// SIGHUP asks for a reload, as daemons do.
pub fn reload_on_sighup(triggers: mpsc::Sender<ReloadTrigger>, cancel: CancellationToken) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("Cannot listen for SIGHUP; reloads come from file edits only.");
            return;
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(()) = hup.recv() => {
                    let _ = triggers.try_send(ReloadTrigger { at: Instant::now(), reason: "SIGHUP" });
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (triggers, cancel);
}

/// Reads the file until two reads `SETTLE` apart agree, so a save that is still being written (or a
/// delete-and-create caught between the two) is not taken half-done.
pub async fn read_settled(path: &Path) -> io::Result<String> {
    let mut last: Option<io::Result<Vec<u8>>> = None;
    for _ in 0..50 {
        let now = tokio::fs::read(path).await;
        if let (Some(Ok(before)), Ok(current)) = (&last, &now) {
            if before == current {
                return String::from_utf8(current.clone()).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8 text")
                });
            }
        }
        last = Some(now);
        tokio::time::sleep(SETTLE).await;
    }
    match last {
        Some(Err(e)) => Err(e),
        _ => Err(io::Error::other("the file kept changing for over a second")),
    }
}

/// Watches the script folders: a saved `.rhai` file is handed to the script host, which compiles it
/// on this (the watcher's) thread, off the message path, and swaps it into every script using it.
pub fn watch_scripts(
    folders: &[PathBuf],
    scripts: std::sync::Arc<crate::script::ScriptHost>,
) -> Result<Watcher, notify_debouncer_full::notify::Error> {
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let Ok(events) = result else { return };
        for file in changed_paths(&events)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        {
            scripts.file_changed(&file);
        }
    })?;
    for folder in folders {
        debouncer.watch(folder, RecursiveMode::Recursive)?;
    }
    Ok(debouncer)
}

/// Watches the plugins folder: a library that appears, is replaced or is removed is (re)loaded or
/// dropped, and the host is asked to rebuild its route table so routes use the change at once.
pub fn watch_plugins(
    folder: &Path,
    plugins: std::sync::Arc<crate::plugin::PluginHost>,
    rebuild: mpsc::Sender<()>,
) -> Result<Watcher, notify_debouncer_full::notify::Error> {
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let Ok(events) = result else { return };
        let mut any = false;
        for file in changed_paths(&events) {
            any |= plugins.load_file(&file);
        }
        if any {
            let _ = rebuild.try_send(());
        }
    })?;
    debouncer.watch(folder, RecursiveMode::NonRecursive)?;
    Ok(debouncer)
}

/// The files a batch of events wrote, created, renamed or removed, each once. Reads (access events)
/// do not count: reading a file is not changing it.
fn changed_paths(events: &[notify_debouncer_full::DebouncedEvent]) -> Vec<PathBuf> {
    let mut changed: Vec<PathBuf> = events
        .iter()
        .filter(|e| !matches!(e.kind, EventKind::Access(_)))
        .flat_map(|e| e.paths.iter())
        .cloned()
        .collect();
    changed.sort();
    changed.dedup();
    changed
}
