//! Rhai scripts: show logic written and edited live.
//!
//! One script file is one module with one state, shared by every route that targets it. Each script
//! runs on its own worker thread (never on a tokio worker), fed by a bounded queue, so messages to one
//! script are handled in arrival order and a slow or looping script holds up nobody else. Every call
//! is bounded by `max_operations` and a wall-clock deadline; a call that breaks a limit is aborted and
//! reported with script:line:column. A saved script is compiled off the message path and swapped in
//! with its state intact; a compile error keeps the last good version.
//!
//! - [`values`]: Rhai values <-> OSC arguments (TouchDesigner's sendOSC rules).
//! - [`engine`]: the engine, its limits and the script API (`send`, `peer`, `state`, timers, logs).
//! - [`worker`]: the per-script thread: calls, timers, reloads, persistence.
//! - [`hostname`]: reverse lookups for `peer.hostname`, done off the message path.

pub mod engine;
pub(crate) mod handover;
pub mod hostname;
pub mod usage;
pub mod values;
pub mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use serde::{Deserialize, Serialize};

use crate::channel::Origin;
use crate::dispatch::{RateLimitedLog, SharedSwitchboard};

/// `scripts:` at the top level of the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptsConfig {
    /// The scripts folder (relative to the config file); watched for saves, and where `import`
    /// looks for modules.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Limits for every script; each can be overridden per file.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Per-file settings, keyed by the file's path inside `dir`.
    #[serde(default)]
    pub files: BTreeMap<String, FileConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Save `state` to disk so it survives a restart.
    #[serde(default)]
    pub persist: bool,
}

/// Limits as written; absent values fall back to the folder-wide ones, then to the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_operations: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_string_size: Option<usize>,
    pub max_array_size: Option<usize>,
    pub max_map_size: Option<usize>,
    pub max_call_depth: Option<usize>,
    pub max_timers: Option<usize>,
    pub max_state_entries: Option<usize>,
    pub queue: Option<usize>,
}

/// The limits in force for one script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_operations: u64,
    pub timeout: Duration,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub max_call_depth: usize,
    pub max_timers: usize,
    pub max_state_entries: usize,
    pub queue: usize,
}

impl Default for Limits {
    /// Generous for cue logic, small enough that a runaway script is stopped within a frame or two.
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            timeout: Duration::from_millis(250),
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 100_000,
            max_call_depth: 64,
            max_timers: 256,
            max_state_entries: 10_000,
            queue: 1_024,
        }
    }
}

impl Limits {
    fn overridden(mut self, by: &LimitsConfig) -> Limits {
        if let Some(v) = by.max_operations {
            self.max_operations = v;
        }
        if let Some(v) = by.timeout_ms {
            self.timeout = Duration::from_millis(v);
        }
        if let Some(v) = by.max_string_size {
            self.max_string_size = v;
        }
        if let Some(v) = by.max_array_size {
            self.max_array_size = v;
        }
        if let Some(v) = by.max_map_size {
            self.max_map_size = v;
        }
        if let Some(v) = by.max_call_depth {
            self.max_call_depth = v;
        }
        if let Some(v) = by.max_timers {
            self.max_timers = v;
        }
        if let Some(v) = by.max_state_entries {
            self.max_state_entries = v;
        }
        if let Some(v) = by.queue {
            self.queue = v;
        }
        self
    }
}

/// Where scripts live and what each one may do, resolved against the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptsPlan {
    pub base_dir: PathBuf,
    pub dir: Option<PathBuf>,
    pub config: ScriptsConfig,
}

impl ScriptsPlan {
    pub fn new(base_dir: &Path, config: ScriptsConfig) -> Self {
        ScriptsPlan {
            base_dir: base_dir.to_path_buf(),
            dir: config.dir.as_ref().map(|d| base_dir.join(d)),
            config,
        }
    }

    /// The per-file entry for `script` (a path as resolved from a route target), if `files:` has one.
    fn file(&self, script: &Path) -> Option<&FileConfig> {
        let dir = self.dir.as_ref()?;
        self.config
            .files
            .iter()
            .find(|(name, _)| dir.join(name) == script)
            .map(|(_, f)| f)
    }

    pub fn limits(&self, script: &Path) -> Limits {
        let limits = Limits::default().overridden(&self.config.limits);
        match self.file(script) {
            Some(file) => limits.overridden(&file.limits),
            None => limits,
        }
    }

    pub fn persist(&self, script: &Path) -> bool {
        self.file(script).is_some_and(|f| f.persist)
    }

    /// Where a persisted script's state is kept: beside the config, out of the scripts folder so a
    /// state save never looks like a script edit.
    pub fn state_file(&self, script: &Path) -> PathBuf {
        let name = script
            .strip_prefix(&self.base_dir)
            .unwrap_or(script)
            .to_string_lossy()
            .replace(['/', '\\'], "_");
        self.base_dir
            .join(".patchbay-state")
            .join(format!("{name}.json"))
    }
}

/// A message handed to a script: owned, because it crosses to the script's thread. It stays in its
/// encoded form (one copy of the bytes) and is decoded on the script's thread, so the receiving
/// thread does not allocate every string and argument only for the script's thread to convert them
/// again (see `engine::MessageBuilder`).
#[derive(Debug, Clone)]
pub struct ScriptMessage {
    /// One OSC message, validated by the receiving thread.
    pub raw: Vec<u8>,
    pub channel: Arc<str>,
    pub route: Arc<str>,
    /// Milliseconds since the Unix epoch when the packet arrived.
    pub received_ms: i64,
    /// What each wildcard of the route's pattern matched, as byte ranges of the address.
    pub captures: Vec<(usize, usize)>,
    pub origin: Origin,
    /// The full value of a json or raw peer payload (the message's arguments are its OSC form).
    pub value: Option<Arc<serde_json::Value>>,
}

pub(crate) enum Job {
    Call {
        function: Arc<str>,
        message: ScriptMessage,
    },
    Swap {
        ast: Box<rhai::AST>,
        imports: Vec<PathBuf>,
    },
    /// Call `function` with one map and send back whether it returned `true` (a peer channel's
    /// offer decider). An error, another value or a limit is an `Err` saying what happened.
    Ask {
        function: Arc<str>,
        arg: serde_json::Value,
        reply: tokio::sync::oneshot::Sender<Result<bool, String>>,
    },
    /// Run `init()`: sent once the host is ready (channels bound, routes in place), so what `init`
    /// sends has somewhere to go.
    Init,
    /// Save the state and end the thread (patchbay is stopping).
    Stop,
}

/// Metric handles of one script.
#[derive(Clone)]
pub struct ScriptMetrics {
    pub calls: Counter,
    pub compile_errors: Counter,
    pub runtime_errors: Counter,
    pub limit_errors: Counter,
    pub queue_drops: Counter,
    pub duration: Histogram,
}

impl ScriptMetrics {
    pub fn new(script: &str) -> Self {
        use crate::metrics::*;
        let name = script.to_string();
        ScriptMetrics {
            calls: metrics::counter!(SCRIPT_CALLS, "script" => name.clone()),
            compile_errors: metrics::counter!(SCRIPT_ERRORS, "script" => name.clone(), "kind" => "compile"),
            runtime_errors: metrics::counter!(SCRIPT_ERRORS, "script" => name.clone(), "kind" => "runtime"),
            limit_errors: metrics::counter!(SCRIPT_ERRORS, "script" => name.clone(), "kind" => "limit"),
            queue_drops: metrics::counter!(SCRIPT_QUEUE_DROPS, "script" => name.clone()),
            duration: metrics::histogram!(SCRIPT_CALL_SECONDS, "script" => name),
        }
    }
}

/// The sending end of a running script, shared by every route that targets it.
pub struct ScriptHandle {
    /// The script's name in logs and metrics: its path as written in the config.
    pub name: Arc<str>,
    pub path: PathBuf,
    jobs: handover::Sender<Job>,
    pub metrics: ScriptMetrics,
    drop_log: Mutex<RateLimitedLog>,
    /// Files this script's current version imports (so saving one of them reloads it).
    imports: Mutex<Vec<PathBuf>>,
    /// `init()` has been asked for.
    initialised: std::sync::atomic::AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ScriptHandle {
    /// Queues a message; a full queue drops it and counts (the script is too slow for its traffic).
    pub fn deliver(&self, function: Arc<str>, message: ScriptMessage) {
        match self.jobs.try_send(Job::Call { function, message }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.queue_drops.increment(1);
                if let Ok(mut log) = self.drop_log.lock() {
                    log.log(|suppressed| {
                        tracing::warn!(
                            script = %self.name, suppressed,
                            "Dropped a message for a script whose queue is full: it is slower than its traffic \
                             (raise scripts.limits.queue or make the script faster)."
                        )
                    });
                }
            }
        }
    }

    /// Asks `function(arg)` for a yes or no; `None` when the script's queue is full (then the
    /// caller treats it as a no).
    pub fn ask(
        &self,
        function: Arc<str>,
        arg: serde_json::Value,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<bool, String>>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        match self.jobs.try_send(Job::Ask {
            function,
            arg,
            reply,
        }) {
            Ok(()) => Some(answer),
            Err(_) => {
                self.metrics.queue_drops.increment(1);
                None
            }
        }
    }

    fn uses(&self, file: &Path) -> bool {
        self.path == file
            || self
                .imports
                .lock()
                .map(|i| i.iter().any(|p| p == file))
                .unwrap_or(false)
    }
}

/// Every script this process has loaded, by path. A script keeps its thread, state and timers for
/// the life of the process: removing a route and adding it back finds it as it was.
pub struct ScriptHost {
    scripts: Mutex<BTreeMap<PathBuf, Arc<ScriptHandle>>>,
    board: SharedSwitchboard,
    hostnames: Arc<hostname::Hostnames>,
    plan: Mutex<ScriptsPlan>,
}

impl ScriptHost {
    pub fn new(board: SharedSwitchboard, plan: ScriptsPlan) -> Arc<ScriptHost> {
        Arc::new(ScriptHost {
            scripts: Mutex::new(BTreeMap::new()),
            board,
            hostnames: Arc::new(hostname::Hostnames::start()),
            plan: Mutex::new(plan),
        })
    }

    pub fn set_plan(&self, plan: ScriptsPlan) {
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = plan;
    }

    /// The running script at `path`, starting it (compile, load state, `init()`) if needed.
    pub fn script(&self, path: &Path, name: &str) -> Arc<ScriptHandle> {
        let mut scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = scripts.get(path) {
            return handle.clone();
        }
        let plan = self.plan.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let limits = plan.limits(path);
        let (jobs, inbox) = handover::channel(limits.queue);
        let handle = Arc::new(ScriptHandle {
            name: name.into(),
            path: path.to_path_buf(),
            jobs,
            metrics: ScriptMetrics::new(name),
            drop_log: Mutex::new(RateLimitedLog::new(Duration::from_secs(1))),
            imports: Mutex::new(Vec::new()),
            initialised: std::sync::atomic::AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let persist = plan.persist(path).then(|| plan.state_file(path));
        let thread = worker::spawn(worker::WorkerSetup {
            handle: handle.clone(),
            inbox,
            limits,
            module_dir: plan
                .dir
                .clone()
                .or_else(|| path.parent().map(Path::to_path_buf)),
            persist,
            board: self.board.clone(),
            hostnames: self.hostnames.clone(),
        });
        *handle.thread.lock().unwrap_or_else(|e| e.into_inner()) = thread;
        scripts.insert(path.to_path_buf(), handle.clone());
        handle
    }

    /// A `.rhai` file was saved: every script that is it or imports it is compiled off the message
    /// path and, if it compiles, swapped in (its state kept). A compile error keeps the last good
    /// version and is logged with script:line:column.
    pub fn file_changed(&self, file: &Path) {
        let handles: Vec<Arc<ScriptHandle>> = {
            let scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
            scripts.values().filter(|h| h.uses(file)).cloned().collect()
        };
        let module_dir = self
            .plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dir
            .clone();
        for handle in handles {
            let started = Instant::now();
            let dir = module_dir
                .clone()
                .or_else(|| handle.path.parent().map(Path::to_path_buf));
            match engine::compile_file(&handle.path, dir.as_deref()) {
                Ok((ast, imports)) => {
                    *handle.imports.lock().unwrap_or_else(|e| e.into_inner()) = imports.clone();
                    // Blocking send: a reload must not be lost behind a full message queue.
                    let _ = handle.jobs.send(Job::Swap {
                        ast: Box::new(ast),
                        imports,
                    });
                    tracing::debug!(script = %handle.name, ms = started.elapsed().as_millis() as u64, "Compiled the saved script.");
                }
                Err(e) => {
                    handle.metrics.compile_errors.increment(1);
                    tracing::error!(
                        script = %handle.name,
                        "The saved script does not compile: {e}. The last good version keeps running; fix and save again."
                    );
                }
            }
        }
    }

    /// Runs `init()` of every script started since the last call. The host calls this once its
    /// channels are bound and the routes to the scripts are in place.
    pub fn init_new(&self) {
        let scripts = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        for handle in scripts.values() {
            if !handle
                .initialised
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let _ = handle.jobs.send(Job::Init);
            }
        }
    }

    /// Stops every script and waits (a bounded time) for each to save its state.
    pub fn shutdown(&self) {
        let scripts: Vec<Arc<ScriptHandle>> = self
            .scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for handle in &scripts {
            // A full queue means the script is busy; it saves within a second anyway.
            let _ = handle.jobs.try_send_now(Job::Stop);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for handle in &scripts {
            let thread = handle
                .thread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(thread) = thread {
                while !thread.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    pub fn folders(&self) -> Vec<PathBuf> {
        let mut folders: Vec<PathBuf> = Vec::new();
        let plan = self.plan.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(dir) = plan.dir {
            folders.push(dir);
        }
        for handle in self
            .scripts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            if let Some(parent) = handle.path.parent() {
                if !folders.iter().any(|f| parent.starts_with(f)) {
                    folders.push(parent.to_path_buf());
                }
            }
        }
        folders
    }
}
