//! Compiled plugins: shared libraries dropped into the plugins folder, used by routes as
//! `plugin: NAME` targets.
//!
//! Loading runs a library's constructors before any check, so a folder other users can write to is
//! refused, and every library is loaded from a private copy (overwriting a loaded library in place
//! crashes a process, and dlopen caches by path). The ABI version is checked before anything else
//! is called; a `panic = "abort"` build is refused because its panics cannot be contained.
//! Libraries are never unloaded (dlclose with Rust thread-locals is unsound): a replaced plugin's
//! old instances get `on_unload` and stop receiving messages, and its code stays mapped.
//!
//! Each route target gets its own instance, run on its own thread (never a tokio worker) with a
//! bounded queue, so calls to one instance are serialized. A panic is caught in the plugin's shim
//! and counted; a call that overruns the deadline marks the instance stuck (its thread cannot be
//! killed) and routing to it stops; too many errors in a window disable it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use patchbay_plugin_api::abi::{
    self, borrowed, host, host_code, log_level, HostVtable, PluginVtable,
};
use patchbay_plugin_api::osc::{DecodeLimits, PacketRef};
use serde::{Deserialize, Serialize};

use crate::channel::held::HeldSends;
use crate::channel::Origin;
use crate::dispatch::{RateLimitedLog, SharedSwitchboard};
use crate::script::handover::{self, Receiver};

/// `plugins:` at the top level of the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// The plugins folder (relative to the config file); every library in it is loaded and the
    /// folder is watched.
    pub dir: PathBuf,
    /// A call that takes longer marks the instance stuck.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// More errors (or panics) than this within `error_window_ms` disable an instance.
    #[serde(default = "default_error_budget")]
    pub error_budget: u32,
    #[serde(default = "default_error_window_ms")]
    pub error_window_ms: u64,
    /// Messages waiting for one instance; more are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_call_timeout_ms() -> u64 {
    1_000
}
fn default_error_budget() -> u32 {
    20
}
fn default_error_window_ms() -> u64 {
    10_000
}
fn default_queue() -> usize {
    1_024
}

/// The validated `plugins:` section, its folder resolved against the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginsPlan {
    pub dir: PathBuf,
    pub config: PluginsConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("the plugins folder {0} can be written by other users; refusing to load from it (loading runs a library's code): run `chmod o-w` on it")]
    WorldWritable(PathBuf),
    #[error("cannot read the plugins folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a private copy of {file}: {source}")]
    Copy {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} is not a shared library: {reason}")]
    NotLibrary { file: PathBuf, reason: String },
    #[error("{file} is not a patchbay plugin: it has no `{symbol}` function")]
    NotPlugin { file: PathBuf, symbol: &'static str },
    #[error("{file} is refused: {source}")]
    Abi {
        file: PathBuf,
        source: host::AbiError,
    },
}

/// A library that passed every check. Its vtable lives as long as the process (never unloaded).
pub struct LoadedPlugin {
    pub name: String,
    pub version: String,
    pub file: PathBuf,
    /// Bumped when the file is replaced, so route targets get new instances.
    pub generation: u64,
    vtable: &'static PluginVtable,
}

fn is_library(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

/// Refuses a folder other users can write to.
pub fn check_folder(dir: &Path) -> Result<(), PluginError> {
    let metadata = std::fs::metadata(dir).map_err(|source| PluginError::Folder {
        path: dir.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if metadata.permissions().mode() & 0o002 != 0 {
            return Err(PluginError::WorldWritable(dir.to_path_buf()));
        }
    }
    #[cfg(not(unix))]
    let _ = metadata;
    Ok(())
}

/// Where private copies go: a fresh folder only this process can write (created with a random
/// name, mode 0700), so nobody can plant a file or a symlink where a copy is about to be loaded.
/// Made on first use and removed at shutdown (made anew if the host runs again in this process).
static COPIES: Mutex<Option<tempfile::TempDir>> = Mutex::new(None);

fn copies_dir() -> std::io::Result<PathBuf> {
    let mut dir = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    if dir.is_none() {
        *dir = Some(
            tempfile::Builder::new()
                .prefix("patchbay-plugins-")
                .tempdir()?,
        );
    }
    Ok(dir
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .unwrap_or_default())
}

/// Loads `file` from a private copy and checks it (ABI version first).
pub fn load(file: &Path, generation: u64) -> Result<LoadedPlugin, PluginError> {
    let copy_error = |source| PluginError::Copy {
        file: file.to_path_buf(),
        source,
    };
    let copies = copies_dir().map_err(copy_error)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let copy = copies.join(format!("{generation}-{name}"));
    // create_new: never write through something that is already there.
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&copy)
        .map_err(copy_error)?;
    let mut source = std::fs::File::open(file).map_err(copy_error)?;
    std::io::copy(&mut source, &mut target).map_err(copy_error)?;
    drop(target);
    // SAFETY: loading runs the library's constructors; the folder was checked not to be writable by
    // others, which is as far as a host can vouch for code it is asked to run.
    let library =
        unsafe { libloading::Library::new(&copy) }.map_err(|e| PluginError::NotLibrary {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?;
    // The mapping stays after the name is gone (Unix), so nothing is left behind even after a kill.
    #[cfg(unix)]
    let _ = std::fs::remove_file(&copy);
    // Never unloaded: the vtable and every instance point into it.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the symbol's type is fixed by the ABI; a library without it is refused here.
    let abi_version =
        unsafe { library.get::<unsafe extern "C" fn() -> u32>(b"patchbay_plugin_abi_version\0") }
            .map_err(|_| PluginError::NotPlugin {
            file: file.to_path_buf(),
            symbol: abi::ABI_VERSION_SYMBOL,
        })?;
    // SAFETY: as above; the function takes nothing and returns a number.
    let version = unsafe { abi_version() };
    host::check_abi_version(version).map_err(|source| PluginError::Abi {
        file: file.to_path_buf(),
        source,
    })?;
    // SAFETY: the ABI version matched, so the entry symbol has this type.
    let entry = unsafe {
        library.get::<unsafe extern "C" fn() -> *const PluginVtable>(b"patchbay_plugin_entry\0")
    }
    .map_err(|_| PluginError::NotPlugin {
        file: file.to_path_buf(),
        symbol: abi::ENTRY_SYMBOL,
    })?;
    // SAFETY: the entry function of a checked library; the library is never unloaded.
    let (vtable, info) =
        unsafe { host::check_vtable(entry()) }.map_err(|source| PluginError::Abi {
            file: file.to_path_buf(),
            source,
        })?;
    Ok(LoadedPlugin {
        name: info.name,
        version: info.version,
        file: file.to_path_buf(),
        generation,
        vtable,
    })
}

/// Per-instance metric handles (label: the plugin's name).
#[derive(Clone)]
pub struct PluginMetrics {
    pub calls: Counter,
    pub errors: Counter,
    pub panics: Counter,
    pub drops: Counter,
    pub duration: Histogram,
    pub stuck: Gauge,
}

impl PluginMetrics {
    fn new(plugin: &str) -> Self {
        use crate::metrics::*;
        let p = plugin.to_string();
        PluginMetrics {
            calls: metrics::counter!(PLUGIN_CALLS, "plugin" => p.clone()),
            errors: metrics::counter!(PLUGIN_ERRORS, "plugin" => p.clone()),
            panics: metrics::counter!(PLUGIN_PANICS, "plugin" => p.clone()),
            drops: metrics::counter!(PLUGIN_DROPS, "plugin" => p.clone()),
            duration: metrics::histogram!(PLUGIN_CALL_SECONDS, "plugin" => p.clone()),
            stuck: metrics::gauge!(PLUGIN_STUCK, "plugin" => p),
        }
    }
}

enum Job {
    Message(Vec<u8>, Origin),
    Unload,
}

/// One plugin instance serving one route target.
pub struct PluginInstance {
    pub plugin: Arc<str>,
    pub route: Arc<str>,
    jobs: handover::Sender<Job>,
    /// Nanoseconds after `epoch` when the running call started; 0 when idle.
    busy_since: AtomicU64,
    epoch: Instant,
    stuck: AtomicBool,
    disabled: AtomicBool,
    unloaded: AtomicBool,
    metrics: PluginMetrics,
    drop_log: Mutex<RateLimitedLog>,
    /// The datagram sends its thread holds back while it has a backlog (`channel::held`); the
    /// watchdog sends them when a call does not return.
    held: Arc<HeldSends>,
}

impl PluginInstance {
    /// Queues a packet for the instance; dropped and counted when it is stuck, disabled, unloaded
    /// or its queue is full.
    pub fn deliver(&self, packet: Vec<u8>, origin: Origin) {
        let why = if self.unloaded.load(Ordering::Relaxed) {
            Some("its plugin was replaced or removed")
        } else if self.stuck.load(Ordering::Relaxed) {
            Some("it is stuck in a call")
        } else if self.disabled.load(Ordering::Relaxed) {
            Some("it was disabled after too many errors")
        } else {
            match self.jobs.try_send(Job::Message(packet, origin)) {
                Ok(()) => None,
                Err(TrySendError::Full(_)) => Some("its queue is full"),
                Err(TrySendError::Disconnected(_)) => Some("its thread has stopped"),
            }
        };
        if let Some(why) = why {
            self.metrics.drops.increment(1);
            if let Ok(mut log) = self.drop_log.lock() {
                log.log(|suppressed| {
                    tracing::warn!(
                        plugin = %self.plugin, route = %self.route, suppressed,
                        "Dropped a message for a plugin instance: {why}."
                    )
                });
            }
        }
    }

    fn unload(&self) {
        if !self.unloaded.swap(true, Ordering::Relaxed) {
            // Never blocks (the caller is the host's main loop, and the instance may hang with a
            // full queue): the runner also sees the flag and skips what is still queued.
            let _ = self.jobs.try_send_now(Job::Unload);
        }
    }
}

/// What the host callbacks reach, behind the `host_ctx` pointer a plugin passes back.
struct HostContext {
    plugin: Arc<str>,
    board: SharedSwitchboard,
    /// The last `REMEMBERED_ORIGINS` origins, token `t` in slot `t % REMEMBERED_ORIGINS`: tokens
    /// count up, so each new one overwrites the oldest (no map, no eviction list).
    origins: Mutex<Box<[Remembered]>>,
    next_origin: AtomicU64,
    timers: Mutex<Vec<(Instant, u64)>>,
    /// How many timers are set, kept beside the list so the runner skips the lock while none is.
    timer_count: AtomicUsize,
    counters: Mutex<HashMap<String, Counter>>,
}

/// A slot of `HostContext::origins`: a token and its origin.
type Remembered = Option<(u64, Origin)>;

/// Origins a plugin may answer later (a throttle's trailing send); the oldest are forgotten.
const REMEMBERED_ORIGINS: usize = 4_096;
const MAX_TIMERS: usize = 4_096;

impl HostContext {
    fn new(plugin: Arc<str>, board: SharedSwitchboard) -> HostContext {
        HostContext {
            plugin,
            board,
            origins: Mutex::new(vec![None; REMEMBERED_ORIGINS].into_boxed_slice()),
            next_origin: AtomicU64::new(0),
            timers: Mutex::new(Vec::new()),
            timer_count: AtomicUsize::new(0),
            counters: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, origin: Origin) -> u64 {
        let token = self.next_origin.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut origins) = self.origins.lock() {
            origins[(token % REMEMBERED_ORIGINS as u64) as usize] = Some((token, origin));
        }
        token
    }

    fn origin(&self, token: u64) -> Option<Origin> {
        let origins = self.origins.lock().ok()?;
        match origins[(token % REMEMBERED_ORIGINS as u64) as usize] {
            Some((kept, origin)) if kept == token => Some(origin),
            _ => None,
        }
    }
}

/// Runs a host callback body; a panic in our own code must not unwind into the plugin.
fn guarded(body: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(host_code::REFUSED)
}

/// # Safety (all callbacks)
/// `ctx` is the `HostContext` the host passed to `create`; it outlives the instance.
unsafe fn context<'a>(ctx: *mut c_void) -> &'a HostContext {
    // SAFETY: see above.
    unsafe { &*(ctx as *const HostContext) }
}

fn valid_osc(bytes: &[u8]) -> bool {
    PacketRef::parse(bytes, &DecodeLimits::default()).is_ok()
}

unsafe extern "C" fn cb_send(
    ctx: *mut c_void,
    channel: *const u8,
    channel_len: usize,
    osc: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: pointers valid for the call, per the ABI.
    let (ctx, channel, osc) = unsafe {
        (
            context(ctx),
            borrowed(channel, channel_len),
            borrowed(osc, len),
        )
    };
    guarded(|| {
        let Ok(channel) = std::str::from_utf8(channel) else {
            return host_code::REFUSED;
        };
        if !valid_osc(osc) {
            return host_code::REFUSED;
        }
        let board = ctx.board.load();
        match board.output_named(channel) {
            Some(output) => {
                output.send(osc);
                host_code::OK
            }
            None => host_code::UNKNOWN,
        }
    })
}

unsafe extern "C" fn cb_reply_osc(
    ctx: *mut c_void,
    origin: u64,
    osc: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: pointers valid for the call, per the ABI.
    let (ctx, osc) = unsafe { (context(ctx), borrowed(osc, len)) };
    guarded(|| {
        if !valid_osc(osc) {
            return host_code::REFUSED;
        }
        let Some(origin) = ctx.origin(origin) else {
            return host_code::UNKNOWN;
        };
        let board = ctx.board.load();
        match board.output(origin.channel) {
            Some(output) => {
                output.reply(&origin, osc);
                host_code::OK
            }
            None => host_code::UNKNOWN,
        }
    })
}

unsafe extern "C" fn cb_reply_bytes(
    ctx: *mut c_void,
    origin: u64,
    bytes: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: pointers valid for the call, per the ABI.
    let (ctx, bytes) = unsafe { (context(ctx), borrowed(bytes, len)) };
    guarded(|| {
        let Some(origin) = ctx.origin(origin) else {
            return host_code::UNKNOWN;
        };
        let board = ctx.board.load();
        match board.output(origin.channel) {
            Some(output) => {
                output.reply_raw(&origin, bytes);
                host_code::OK
            }
            None => host_code::UNKNOWN,
        }
    })
}

unsafe extern "C" fn cb_close(ctx: *mut c_void, origin: u64) -> i32 {
    // SAFETY: per the ABI.
    let ctx = unsafe { context(ctx) };
    guarded(|| {
        let Some(origin) = ctx.origin(origin) else {
            return 0;
        };
        let board = ctx.board.load();
        i32::from(
            board
                .output(origin.channel)
                .is_some_and(|o| o.close(&origin)),
        )
    })
}

unsafe extern "C" fn cb_log(ctx: *mut c_void, level: u32, msg: *const u8, len: usize) {
    // SAFETY: pointers valid for the call, per the ABI.
    let (ctx, msg) = unsafe { (context(ctx), borrowed(msg, len)) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let text = String::from_utf8_lossy(msg);
        let plugin = &ctx.plugin;
        match level {
            log_level::ERROR => tracing::error!(plugin = %plugin, "{text}"),
            log_level::WARN => tracing::warn!(plugin = %plugin, "{text}"),
            log_level::INFO => tracing::info!(plugin = %plugin, "{text}"),
            _ => tracing::debug!(plugin = %plugin, "{text}"),
        }
    }));
}

unsafe extern "C" fn cb_count(ctx: *mut c_void, name: *const u8, len: usize, value: u64) {
    // SAFETY: pointers valid for the call, per the ABI.
    let (ctx, name) = unsafe { (context(ctx), borrowed(name, len)) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let name = String::from_utf8_lossy(name).into_owned();
        if let Ok(mut counters) = ctx.counters.lock() {
            let counter = counters.entry(name.clone()).or_insert_with(|| {
                metrics::counter!(crate::metrics::PLUGIN_COUNTER, "plugin" => ctx.plugin.to_string(), "counter" => name)
            });
            counter.increment(value);
        }
    }));
}

unsafe extern "C" fn cb_schedule(ctx: *mut c_void, delay_ms: u64, timer: u64) -> i32 {
    // SAFETY: per the ABI.
    let ctx = unsafe { context(ctx) };
    guarded(|| match ctx.timers.lock() {
        Ok(mut timers) if timers.len() < MAX_TIMERS => {
            timers.push((Instant::now() + Duration::from_millis(delay_ms), timer));
            ctx.timer_count.store(timers.len(), Ordering::Release);
            host_code::OK
        }
        _ => host_code::REFUSED,
    })
}

static HOST_VTABLE: HostVtable = HostVtable {
    abi_version: abi::ABI_VERSION,
    send: Some(cb_send),
    reply_osc: Some(cb_reply_osc),
    reply_bytes: Some(cb_reply_bytes),
    close: Some(cb_close),
    log: Some(cb_log),
    count: Some(cb_count),
    schedule: Some(cb_schedule),
};

/// The instance's thread: create, then messages and timers in order, then unload.
struct Runner {
    instance: Arc<PluginInstance>,
    plugin: Arc<LoadedPlugin>,
    ctx: Box<HostContext>,
    handle: *mut c_void,
    errors: VecDeque<Instant>,
    config: PluginsConfig,
    failure_log: RateLimitedLog,
    /// When the last call returned.
    last_call_end: Instant,
}

// SAFETY: the instance pointer is only used on the runner's own thread, one call at a time.
unsafe impl Send for Runner {}

impl Runner {
    fn run(mut self, jobs: Receiver<Job>) {
        let held = self.instance.held.clone();
        held.hold_on_this_thread();
        loop {
            // No lock and no clock read per message while no timer is set.
            let timers_set = self.ctx.timer_count.load(Ordering::Acquire) > 0;
            let next = timers_set
                .then(|| {
                    self.ctx
                        .timers
                        .lock()
                        .ok()
                        .and_then(|t| t.iter().map(|(due, _)| *due).min())
                })
                .flatten();
            let wait = next
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1));
            match jobs.recv_timeout_or(wait, || {
                let _ = held.flush();
            }) {
                Ok(Job::Message(_, _)) if self.instance.unloaded.load(Ordering::Relaxed) => break,
                Ok(Job::Message(_, _)) if self.instance.disabled.load(Ordering::Relaxed) => {
                    // Queued before the instance was disabled: not given to it any more.
                    self.instance.metrics.drops.increment(1);
                }
                Ok(Job::Message(packet, origin)) => {
                    let token = self.ctx.remember(origin);
                    let (vtable, handle) = (self.plugin.vtable, self.handle);
                    // SAFETY: our instance, one call at a time, on this thread.
                    self.call(|| unsafe { host::on_message(vtable, handle, &packet, token) });
                }
                Ok(Job::Unload) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let timers_set = self.ctx.timer_count.load(Ordering::Acquire) > 0;
            let due: Vec<u64> = match timers_set.then(|| self.ctx.timers.lock()) {
                Some(Ok(mut timers)) => {
                    let now = Instant::now();
                    let (fire, keep): (Vec<_>, Vec<_>) =
                        timers.drain(..).partition(|(due, _)| *due <= now);
                    *timers = keep;
                    self.ctx.timer_count.store(timers.len(), Ordering::Release);
                    fire.into_iter().map(|(_, id)| id).collect()
                }
                _ => Vec::new(),
            };
            if self.instance.unloaded.load(Ordering::Relaxed) {
                break;
            }
            for timer in due {
                if self.instance.unloaded.load(Ordering::Relaxed)
                    || self.instance.disabled.load(Ordering::Relaxed)
                {
                    break;
                }
                let (vtable, handle) = (self.plugin.vtable, self.handle);
                // SAFETY: as above.
                self.call(|| unsafe { host::on_timer(vtable, handle, timer) });
            }
            // The clock as of the last call's end: no clock read of its own per message.
            held.flush_if_due(self.last_call_end);
        }
        held.release_this_thread();
        // SAFETY: our instance, never used again.
        unsafe { host::on_unload(self.plugin.vtable, self.handle) };
        tracing::info!(plugin = %self.instance.plugin, route = %self.instance.route, "Plugin instance unloaded.");
    }

    fn call(&mut self, call: impl FnOnce() -> Result<(), host::CallError>) {
        let instance = &self.instance;
        let started = Instant::now();
        instance.busy_since.store(
            (started.duration_since(instance.epoch).as_nanos() as u64).max(1),
            Ordering::Relaxed,
        );
        instance.metrics.calls.increment(1);
        let result = call();
        instance.busy_since.store(0, Ordering::Relaxed);
        let ended = Instant::now();
        self.last_call_end = ended;
        let took = ended - started;
        instance.metrics.duration.record(took.as_secs_f64());
        if instance.stuck.swap(false, Ordering::Relaxed) {
            instance.metrics.stuck.set(0.0);
            tracing::warn!(
                plugin = %instance.plugin, route = %instance.route, ms = took.as_millis() as u64,
                "The stuck plugin call returned; routing to it resumes."
            );
        }
        let Err(error) = result else { return };
        if error.is_panic() {
            instance.metrics.panics.increment(1);
        } else {
            instance.metrics.errors.increment(1);
        }
        let (plugin, route) = (&instance.plugin, &instance.route);
        self.failure_log.log(|suppressed| {
            tracing::error!(plugin = %plugin, route = %route, suppressed, "Plugin call failed: {error}. The host keeps serving.")
        });
        let now = Instant::now();
        let window = Duration::from_millis(self.config.error_window_ms);
        self.errors.push_back(now);
        while self
            .errors
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.errors.pop_front();
        }
        if self.errors.len() > self.config.error_budget as usize
            && !instance.disabled.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                plugin = %instance.plugin, route = %instance.route, errors = self.errors.len(),
                window_ms = self.config.error_window_ms,
                "Plugin instance disabled: it failed more than its error budget allows. Fix the plugin and \
                 replace its file (or edit the route) to start a new instance."
            );
        }
    }
}

/// Identifies a route target's instance: a new plugin file, route or config makes a new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct InstanceKey {
    route: String,
    target: usize,
    plugin: String,
    config: String,
    generation: u64,
}

/// Every loaded plugin and every instance.
pub struct PluginHost {
    plan: Mutex<Option<PluginsPlan>>,
    loaded: Mutex<BTreeMap<String, Arc<LoadedPlugin>>>,
    instances: Mutex<BTreeMap<InstanceKey, Arc<PluginInstance>>>,
    board: SharedSwitchboard,
    generation: AtomicU64,
    watchdog: OnceLock<()>,
    all: Mutex<Vec<Weak<PluginInstance>>>,
}

impl PluginHost {
    pub fn new(board: SharedSwitchboard) -> Arc<PluginHost> {
        Arc::new(PluginHost {
            plan: Mutex::new(None),
            loaded: Mutex::new(BTreeMap::new()),
            instances: Mutex::new(BTreeMap::new()),
            board,
            generation: AtomicU64::new(0),
            watchdog: OnceLock::new(),
            all: Mutex::new(Vec::new()),
        })
    }

    pub fn dir(&self) -> Option<PathBuf> {
        self.plan
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.dir.clone()))
    }

    /// Takes the (new) `plugins:` settings and loads every library in the folder not loaded yet.
    pub fn set_plan(self: &Arc<Self>, plan: Option<PluginsPlan>) {
        let changed_dir = self.dir() != plan.as_ref().map(|p| p.dir.clone());
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = plan.clone();
        let Some(plan) = plan else { return };
        self.start_watchdog();
        if !changed_dir {
            return;
        }
        if let Err(e) = check_folder(&plan.dir) {
            tracing::error!("{e}");
            return;
        }
        let entries = match std::fs::read_dir(&plan.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(folder = %plan.dir.display(), "Cannot read the plugins folder: {e}.");
                return;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_library(p))
            .collect();
        files.sort();
        for file in files {
            self.load_file(&file);
        }
    }

    /// Loads (or reloads) one library file. True if the set of plugins changed.
    pub fn load_file(&self, file: &Path) -> bool {
        if !is_library(file) {
            return false;
        }
        if let Some(dir) = file.parent() {
            if let Err(e) = check_folder(dir) {
                tracing::error!("{e}");
                return false;
            }
        }
        if !file.exists() {
            let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<String> = loaded
                .iter()
                .filter(|(_, p)| p.file == file)
                .map(|(n, _)| n.clone())
                .collect();
            for name in &gone {
                loaded.remove(name);
                tracing::warn!(
                    plugin = %name, file = %file.display(),
                    "Plugin file removed: its routes do nothing until a plugin of that name is back."
                );
            }
            return !gone.is_empty();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o002 != 0) {
                tracing::error!(
                    file = %file.display(),
                    "Plugin not loaded: the file can be written by other users (run `chmod o-w` on it)."
                );
                return false;
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        match load(file, generation) {
            Ok(plugin) => {
                tracing::info!(
                    plugin = %plugin.name, version = %plugin.version, file = %file.display(),
                    "Loaded plugin {} {}.", plugin.name, plugin.version
                );
                let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
                loaded.retain(|_, p| p.file != file);
                loaded.insert(plugin.name.clone(), Arc::new(plugin));
                true
            }
            Err(e) => {
                tracing::error!("Plugin not loaded: {e}. Everything else keeps running.");
                false
            }
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.loaded
            .lock()
            .map(|l| l.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The instance for one route target, reused while the plugin file, route and config are the
    /// same; `None` (with a log line) while no plugin of that name is loaded.
    pub fn instance(
        &self,
        route: &str,
        target: usize,
        plugin: &str,
        config: &str,
    ) -> Option<Arc<PluginInstance>> {
        let loaded = self.loaded.lock().ok()?.get(plugin).cloned();
        let Some(loaded) = loaded else {
            tracing::warn!(
                route, plugin,
                "Route target names plugin `{plugin}`, which is not loaded: it does nothing until the plugin \
                 is dropped into the plugins folder."
            );
            return None;
        };
        let key = InstanceKey {
            route: route.to_string(),
            target,
            plugin: plugin.to_string(),
            config: config.to_string(),
            generation: loaded.generation,
        };
        let mut instances = self.instances.lock().ok()?;
        if let Some(existing) = instances.get(&key) {
            return Some(existing.clone());
        }
        let instance = self.start(loaded, route, config)?;
        instances.insert(key, instance.clone());
        Some(instance)
    }

    fn start(
        &self,
        plugin: Arc<LoadedPlugin>,
        route: &str,
        config: &str,
    ) -> Option<Arc<PluginInstance>> {
        let plan = self.plan.lock().ok()?.clone()?;
        let name: Arc<str> = plugin.name.as_str().into();
        let ctx = Box::new(HostContext::new(name.clone(), self.board.clone()));
        let ctx_ptr = &*ctx as *const HostContext as *mut c_void;
        // SAFETY: the vtable passed its checks; the context box outlives the instance (the runner owns it).
        let handle = match unsafe { host::create(plugin.vtable, &HOST_VTABLE, ctx_ptr, config) } {
            Ok(handle) => handle,
            Err(e) => {
                tracing::error!(plugin = %name, route, "Plugin refused its configuration: {e}. The route target does nothing.");
                return None;
            }
        };
        let (jobs, inbox) = handover::channel(plan.config.queue);
        let instance = Arc::new(PluginInstance {
            plugin: name.clone(),
            route: route.into(),
            jobs,
            busy_since: AtomicU64::new(0),
            epoch: Instant::now(),
            stuck: AtomicBool::new(false),
            disabled: AtomicBool::new(false),
            unloaded: AtomicBool::new(false),
            metrics: PluginMetrics::new(&name),
            drop_log: Mutex::new(RateLimitedLog::new(Duration::from_secs(1))),
            held: HeldSends::new(),
        });
        let runner = Runner {
            instance: instance.clone(),
            plugin,
            ctx,
            handle,
            errors: VecDeque::new(),
            config: plan.config,
            failure_log: RateLimitedLog::new(Duration::from_secs(1)),
            last_call_end: Instant::now(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("plugin {name}"))
            .spawn(move || runner.run(inbox));
        if let Err(e) = spawned {
            tracing::error!(plugin = %name, "Cannot start the plugin's thread: {e}.");
            return None;
        }
        if let Ok(mut all) = self.all.lock() {
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&instance));
        }
        Some(instance)
    }

    /// After a new route table is in place: instances it no longer uses get `on_unload`.
    pub fn retain_used(&self, used: &[Arc<PluginInstance>]) {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        instances.retain(|_, instance| {
            let keep = used.iter().any(|u| Arc::ptr_eq(u, instance));
            if !keep {
                instance.unload();
            }
            keep
        });
    }

    /// Unloads every instance and removes the private copies (patchbay is stopping; the loaded
    /// code stays mapped until the process exits, so removing the files is safe).
    pub fn shutdown(&self) {
        self.retain_used(&[]);
        // Dropping the folder removes it; the loaded code stays mapped until the process exits.
        drop(COPIES.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Marks instances stuck when a call overruns `call_timeout_ms` (checked every 50 ms).
    fn start_watchdog(self: &Arc<Self>) {
        let host = Arc::downgrade(self);
        self.watchdog.get_or_init(|| {
            let _ = std::thread::Builder::new().name("plugin watchdog".into()).spawn(move || loop {
                std::thread::sleep(Duration::from_millis(50));
                let Some(host) = host.upgrade() else { return };
                let timeout = host
                    .plan
                    .lock()
                    .ok()
                    .and_then(|p| p.as_ref().map(|p| p.config.call_timeout_ms))
                    .unwrap_or(default_call_timeout_ms());
                let all: Vec<Arc<PluginInstance>> =
                    host.all.lock().map(|a| a.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default();
                for instance in all {
                    let since = instance.busy_since.load(Ordering::Relaxed);
                    if since == 0 {
                        continue;
                    }
                    // What the instance sent before this long call goes out now.
                    instance.held.flush_if_due(Instant::now());
                    let busy_ms = (instance.epoch.elapsed().as_nanos() as u64).saturating_sub(since) / 1_000_000;
                    if busy_ms > timeout && !instance.stuck.swap(true, Ordering::Relaxed) {
                        instance.metrics.stuck.set(1.0);
                        tracing::error!(
                            plugin = %instance.plugin, route = %instance.route, ms = busy_ms,
                            "Plugin call has not returned for {busy_ms} ms (call_timeout_ms = {timeout}): marked \
                             stuck and no more messages are routed to it. Its thread cannot be stopped; other \
                             routes keep running."
                        );
                    }
                }
            });
        });
    }
}
