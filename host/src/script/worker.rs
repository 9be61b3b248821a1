//! One thread per script: it owns the engine, the current AST and the timers, takes jobs (messages,
//! new versions) from a bounded queue in arrival order, and fires timers on the monotonic clock.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, FuncArgs, Map, Scope, AST};
use rustc_hash::FxHashMap;

use super::engine::{self, MessageBuilder, Peer, ScriptContext, State};
use super::handover::Receiver;
use super::hostname::Hostnames;
use super::usage::{self, Keys};
use super::{Job, Limits, ScriptHandle, ScriptMessage};
use crate::dispatch::{RateLimitedLog, SharedSwitchboard};

pub(crate) struct WorkerSetup {
    pub handle: Arc<ScriptHandle>,
    pub inbox: Receiver<Job>,
    pub limits: Limits,
    pub module_dir: Option<PathBuf>,
    /// Where `state` is saved, when the script has `persist: true`.
    pub persist: Option<PathBuf>,
    pub board: SharedSwitchboard,
    pub hostnames: Arc<Hostnames>,
}

pub(crate) fn spawn(setup: WorkerSetup) -> Option<std::thread::JoinHandle<()>> {
    let name = format!("script {}", setup.handle.name);
    let script = setup.handle.name.clone();
    match std::thread::Builder::new()
        .name(name)
        .spawn(move || Worker::start(setup).run())
    {
        Ok(thread) => Some(thread),
        Err(e) => {
            tracing::error!(script = %script, "Cannot start the script's thread: {e}. Its routes do nothing.");
            None
        }
    }
}

/// What the worker knows of one of the script's functions.
#[derive(Clone, Copy)]
struct Function {
    params: usize,
    /// The keys of `msg` it can read when `msg` is its first parameter (`usage::msg_keys`).
    msg_keys: Keys,
}

/// How often a changed `state` is written to disk at most.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

struct Worker {
    handle: Arc<ScriptHandle>,
    inbox: Receiver<Job>,
    engine: Engine,
    ctx: ScriptContext,
    ast: Option<AST>,
    /// The current version's functions: parameter count, and the keys of `msg` each can read.
    functions: FxHashMap<String, Function>,
    scope: Scope<'static>,
    persist: Option<PathBuf>,
    saved: Instant,
    error_log: RateLimitedLog,
    init_asked: bool,
    init_done: bool,
    /// The text of the version running, to place errors that come without a position.
    source: String,
    /// Builds each message's `msg`.
    messages: MessageBuilder,
    /// When the last call returned.
    last_call_end: Instant,
    /// When the next timer is due, as of the last look at the timers (re-read when a script edits
    /// them, see `ScriptContext::timers_edited`).
    next_due: Option<Instant>,
}

impl Worker {
    fn start(setup: WorkerSetup) -> Worker {
        let state = State::new(
            load_state(setup.persist.as_deref(), &setup.handle.name),
            setup.limits.max_state_entries,
        );
        let ctx = ScriptContext::new(
            setup.handle.name.clone(),
            setup.board,
            setup.hostnames,
            state,
            setup.limits,
        );
        let mut worker = Worker {
            engine: engine::build(&ctx),
            handle: setup.handle,
            inbox: setup.inbox,
            ctx,
            ast: None,
            functions: FxHashMap::default(),
            scope: Scope::new(),
            persist: setup.persist,
            saved: Instant::now(),
            error_log: RateLimitedLog::new(Duration::from_secs(1)),
            init_asked: false,
            init_done: false,
            source: String::new(),
            messages: MessageBuilder::new(),
            next_due: None,
            last_call_end: Instant::now(),
        };
        match engine::compile_file(&worker.handle.path, setup.module_dir.as_deref()) {
            Ok((ast, imports)) => {
                *worker
                    .handle
                    .imports
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = imports;
                worker.install(ast);
            }
            Err(e) => {
                worker.handle.metrics.compile_errors.increment(1);
                tracing::error!(
                    script = %worker.handle.name,
                    "The script does not compile: {e}. Its routes do nothing until a good version is saved."
                );
            }
        }
        worker
    }

    fn install(&mut self, ast: AST) {
        self.source = std::fs::read_to_string(&self.handle.path).unwrap_or_default();
        self.functions = ast
            .iter_functions()
            .map(|f| {
                let function = Function {
                    params: f.params.len(),
                    msg_keys: f
                        .params
                        .first()
                        .map_or(usage::ALL, |param| usage::msg_keys(&ast, param)),
                };
                (f.name.to_string(), function)
            })
            .collect();
        self.ast = Some(ast);
    }

    fn run(mut self) {
        let held = self.ctx.held.clone();
        held.hold_on_this_thread();
        loop {
            let wait = self
                .next_timer()
                .map(|due| due.saturating_duration_since(Instant::now()))
                .unwrap_or(PERSIST_EVERY)
                .min(PERSIST_EVERY);
            match self.inbox.recv_timeout_or(wait, || {
                let _ = held.flush();
            }) {
                Ok(Job::Call { function, message }) => self.call_message(&function, message),
                Ok(Job::Swap { ast, imports }) => {
                    *self
                        .handle
                        .imports
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = imports;
                    self.install(*ast);
                    tracing::info!(script = %self.handle.name, "Reloaded the script; its state and timers are kept.");
                    if self.init_done {
                        self.lifecycle("on_reload");
                    } else if self.init_asked {
                        // The first version did not compile: this is the script's first start.
                        self.init_done = true;
                        self.lifecycle("init");
                    }
                }
                Ok(Job::Ask {
                    function,
                    arg,
                    reply,
                }) => {
                    let answer = self.ask(&function, arg);
                    let _ = reply.send(answer);
                }
                Ok(Job::Init) => {
                    self.init_asked = true;
                    if self.ast.is_some() {
                        self.init_done = true;
                        self.lifecycle("init");
                    }
                }
                Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.fire_timers();
            self.save_state(false);
            // The clock as of the last call's end: no clock read of its own per message.
            held.flush_if_due(self.last_call_end);
        }
        held.release_this_thread();
        self.save_state(true);
    }

    fn next_timer(&mut self) -> Option<Instant> {
        if self.ctx.timers_edited.load(Ordering::Relaxed)
            && self.ctx.timers_edited.swap(false, Ordering::Acquire)
        {
            self.next_due = self.ctx.timers.lock().ok().and_then(|t| t.next_due());
        }
        self.next_due
    }

    /// `init()` / `on_reload()`, when the script defines them.
    fn lifecycle(&mut self, function: &str) {
        if self.functions.get(function).is_some_and(|f| f.params == 0) {
            let _ = self.call(function, (), "lifecycle");
        }
    }

    /// A yes/no question (a peer offer): `function(map)` must return a boolean.
    fn ask(&mut self, function: &str, arg: serde_json::Value) -> Result<bool, String> {
        if self.ast.is_none() {
            return Err("the script has no good version yet (see its compile error)".into());
        }
        if self.functions.get(function).is_none_or(|f| f.params != 1) {
            return Err(format!(
                "the script has no function `{function}(offer)` with one parameter"
            ));
        }
        let arg = rhai::serde::to_dynamic(&arg).map_err(|e| e.to_string())?;
        match self.call(function, (arg,), "offer") {
            Some(answer) => answer
                .as_bool()
                .map_err(|kind| format!("`{function}` returned {kind}, not true or false")),
            None => Err(format!("`{function}` failed (the error is logged above)")),
        }
    }

    fn call_message(&mut self, function: &str, message: ScriptMessage) {
        let Some(&Function { params, msg_keys }) = self.functions.get(function) else {
            if self.ast.is_some() {
                self.handle.metrics.runtime_errors.increment(1);
                let known: Vec<&str> = self.functions.keys().map(String::as_str).collect();
                let name = &self.handle.name;
                self.error_log.log(|suppressed| {
                    tracing::error!(
                        script = %name, suppressed,
                        "The script has no function `{function}` (it has: {}); the message is dropped.",
                        known.join(", ")
                    )
                });
            }
            return;
        };
        let peer = || Peer::new(message.origin, message.channel.clone(), &self.ctx);
        let second = (params == 2).then(|| Dynamic::from(peer()));
        let Some(msg) = self.messages.build_keys(&message, msg_keys, peer) else {
            return;
        };
        let msg = Dynamic::from_map(msg);
        let _ = match second {
            Some(peer) => self.call(function, (msg, peer), &message.route),
            None => self.call(function, (msg,), &message.route),
        };
    }

    fn fire_timers(&mut self) {
        // No lock and no clock read per message while no timer is set.
        let Some(next) = self.next_timer() else {
            return;
        };
        let now = Instant::now();
        if next > now {
            return;
        }
        let due = match self.ctx.timers.lock() {
            Ok(mut timers) => {
                let due = timers.take_due(now);
                self.next_due = timers.next_due();
                due
            }
            Err(_) => return,
        };
        for (_, function, args) in due {
            if self.functions.contains_key(&function) {
                let _ = self.call(&function, args, "timer");
            } else if self.ast.is_some() {
                self.handle.metrics.runtime_errors.increment(1);
                tracing::error!(
                    script = %self.handle.name,
                    "A timer calls `{function}`, which the script does not define (any more)."
                );
            }
        }
    }

    /// One bounded call: `max_operations` and the wall-clock deadline; errors are counted by kind and
    /// logged (at most once a second) with script:line:column.
    fn call(&mut self, function: &str, args: impl FuncArgs, context: &str) -> Option<Dynamic> {
        let ast = self.ast.as_ref()?;
        let started = Instant::now();
        let deadline = started.duration_since(self.ctx.epoch) + self.ctx.limits.timeout;
        self.ctx
            .deadline
            .store(deadline.as_nanos() as u64, Ordering::Relaxed);
        self.handle.metrics.calls.increment(1);
        // Per-message calls never re-run the script's top level.
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let result = self.engine.call_fn_with_options::<Dynamic>(
            options,
            &mut self.scope,
            ast,
            function,
            args,
        );
        self.ctx.deadline.store(u64::MAX, Ordering::Relaxed);
        let ended = Instant::now();
        self.last_call_end = ended;
        self.handle
            .metrics
            .duration
            .record((ended - started).as_secs_f64());
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.report(&error, function, context);
                None
            }
        }
    }

    fn report(&mut self, error: &EvalAltResult, function: &str, context: &str) {
        let limit = engine::is_limit(error);
        if limit {
            self.handle.metrics.limit_errors.increment(1);
        } else {
            self.handle.metrics.runtime_errors.increment(1);
        }
        let (message, position) = engine::innermost(error);
        // Rhai gives limit errors the caller's position, which for our own call is none: then name
        // where the function that was running is defined.
        let (line, column) = match (position.line(), position.position()) {
            (Some(line), column) => (line, column.unwrap_or(1)),
            _ => engine::locate(&self.source, &format!("fn {function}(")).unwrap_or((0, 0)),
        };
        let at = if line > 0 {
            format!("{}:{line}:{column}", self.handle.path.display())
        } else {
            self.handle.path.display().to_string()
        };
        let kind = if limit {
            "stopped by a limit"
        } else {
            "failed"
        };
        let name = &self.handle.name;
        self.error_log.log(|suppressed| {
            tracing::error!(
                script = %name, function, context, suppressed,
                "{at}: `{function}` {kind}: {message}. Other scripts and routes keep running."
            )
        });
    }

    fn save_state(&mut self, now: bool) {
        let Some(path) = &self.persist else { return };
        if !now && self.saved.elapsed() < PERSIST_EVERY {
            return;
        }
        if !self.ctx.state.take_dirty() {
            return;
        }
        self.saved = Instant::now();
        if let Err(e) = write_state(path, &self.ctx.state.snapshot()) {
            tracing::warn!(script = %self.handle.name, "Cannot save the script's state to {}: {e}.", path.display());
        }
    }
}

fn load_state(path: Option<&std::path::Path>, script: &str) -> Map {
    let Some(path) = path else { return Map::new() };
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<Dynamic>(&bytes).map(|d| d.try_cast::<Map>()) {
            Ok(Some(map)) => map,
            Ok(None) => {
                tracing::warn!(
                    script,
                    "Ignoring the saved state in {}: it is not a map.",
                    path.display()
                );
                Map::new()
            }
            Err(e) => {
                tracing::warn!(
                    script,
                    "Ignoring the saved state in {}: {e}.",
                    path.display()
                );
                Map::new()
            }
        },
        Err(_) => Map::new(),
    }
}

/// Written beside and renamed, so a crash mid-write never leaves half a file.
fn write_state(path: &std::path::Path, state: &Map) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(&Dynamic::from_map(state.clone()))
        .map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(tmp, path)
}
