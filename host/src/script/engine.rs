//! The Rhai engine of one script: its limits and the API scripts see.
//!
//! Rhai has no varargs or keyword arguments, so lists are arrays and options are maps. Scripts get
//! nothing else: no file, socket or process access (no `eval`, no file module resolver at run time;
//! imports are resolved when the script is compiled).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use patchbay_plugin_api::osc::{
    encode, encode_message, encode_message_into, DecodeLimits, OscBundle, OscMessage, OscPacket,
    PacketRef, TimeTag,
};
use rhai::module_resolvers::FileModuleResolver;
use rhai::{
    Array, Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, Map, Position, Scope, AST, INT,
};

use super::hostname::Hostnames;
use super::usage::{self, Keys};
use super::values::{self, SendOscOptions};
use super::Limits;
use crate::channel::held::HeldSends;
use crate::channel::Origin;
use crate::dispatch::SharedSwitchboard;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// A compile error with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct CompileError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Compiles a script file into a self-contained AST (its imports resolved and embedded now, so a
/// call never reads a file) and lists the files it imports.
pub fn compile_file(
    path: &Path,
    module_dir: Option<&Path>,
) -> Result<(AST, Vec<PathBuf>), CompileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CompileError {
        file: file.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read the script: {e}"),
    })?;
    let mut engine = Engine::new();
    set_depths(&mut engine);
    values::register(&mut engine);
    let dir = module_dir
        .map(Path::to_path_buf)
        .or_else(|| path.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    engine.set_module_resolver(FileModuleResolver::new_with_path(&dir));
    let mut ast = engine
        .compile_into_self_contained(&Scope::new(), &text)
        .map_err(|e| {
            let (message, position) = innermost(&e);
            let (mut line, mut column) = (
                position.line().unwrap_or(0),
                position.position().unwrap_or(0),
            );
            // Rhai resolves imports without a position: point at the `import` itself.
            if let (0, EvalAltResult::ErrorModuleNotFound(module, _)) = (line, &*e) {
                if let Some((l, c)) = locate(&text, &format!("\"{module}\"")) {
                    (line, column) = (l, c);
                }
            }
            CompileError {
                file: file.clone(),
                line,
                column,
                message,
            }
        })?;
    ast.set_source(file);
    Ok((ast, imports_of(&text, &dir, 0)))
}

/// Nesting allowed in a script's expressions, the same in debug and release builds (Rhai's defaults
/// differ), so `check` and `run` accept the same scripts. Deep enough for show logic; recursion is
/// bounded separately by `max_call_depth`.
fn set_depths(engine: &mut Engine) {
    engine.set_max_expr_depths(256, 128);
}

/// Where `needle` first appears in `text`, as 1-based line and column.
pub fn locate(text: &str, needle: &str) -> Option<(usize, usize)> {
    let at = text.find(needle)?;
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map(|n| n + 1).unwrap_or(0) + 1;
    Some((line, column))
}

/// Files a script imports, found by their `import "name"` statements (recursively), so a save of
/// one of them reloads the scripts that use it.
fn imports_of(text: &str, dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if depth > 8 {
        return found;
    }
    let mut rest = text;
    while let Some(at) = rest.find("import") {
        rest = &rest[at + "import".len()..];
        let trimmed = rest.trim_start();
        let Some(quoted) = trimmed.strip_prefix('"') else {
            continue;
        };
        let Some(end) = quoted.find('"') else { break };
        let name = &quoted[..end];
        let mut file = dir.join(name);
        if file.extension().is_none() {
            file.set_extension("rhai");
        }
        if !found.contains(&file) {
            if let Ok(inner) = std::fs::read_to_string(&file) {
                found.extend(imports_of(&inner, dir, depth + 1));
            }
            found.push(file);
        }
    }
    found
}

/// The message and position of the error that actually happened (Rhai wraps errors raised inside
/// function calls and modules).
pub fn innermost(error: &EvalAltResult) -> (String, Position) {
    match error {
        EvalAltResult::ErrorInFunctionCall(name, _, inner, _) => {
            let (message, position) = innermost(inner);
            (format!("{message} (in `{name}`)"), position)
        }
        EvalAltResult::ErrorInModule(_, inner, _) => innermost(inner),
        // The deadline's own words (the token on_progress returned), not Rhai's "terminated".
        EvalAltResult::ErrorTerminated(token, position) => (token.to_string(), *position),
        other => (
            other
                .to_string()
                .split(" (line ")
                .next()
                .unwrap_or_default()
                .to_string(),
            other.position(),
        ),
    }
}

/// Whether an error came from a limit (operations, deadline, sizes, depth) rather than the script's
/// own logic.
pub fn is_limit(error: &EvalAltResult) -> bool {
    match error {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => is_limit(inner),
        EvalAltResult::ErrorTooManyOperations(_)
        | EvalAltResult::ErrorTerminated(..)
        | EvalAltResult::ErrorStackOverflow(_)
        | EvalAltResult::ErrorDataTooLarge(..)
        | EvalAltResult::ErrorTooManyModules(_)
        | EvalAltResult::ErrorTooManyVariables(_) => true,
        _ => false,
    }
}

/// The script's state: one map per script, kept across reloads (and restarts with `persist`).
#[derive(Clone)]
pub struct State {
    map: Arc<Mutex<Map>>,
    max_entries: usize,
    dirty: Arc<AtomicBool>,
}

impl State {
    pub fn new(map: Map, max_entries: usize) -> State {
        State {
            map: Arc::new(Mutex::new(map)),
            max_entries,
            dirty: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn snapshot(&self) -> Map {
        self.map.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// True once since the last call if a script changed the state.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }

    fn get(&self, key: &str) -> Dynamic {
        self.map
            .lock()
            .ok()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or(Dynamic::UNIT)
    }

    fn set(&self, key: ImmutableString, value: Dynamic) -> RhaiResult<()> {
        let mut map = self.map.lock().map_err(|_| "the state is unavailable")?;
        if !map.contains_key(key.as_str()) && map.len() >= self.max_entries {
            return Err(format!(
                "the state is full ({} entries, limit max_state_entries); remove entries or raise the limit",
                map.len()
            )
            .into());
        }
        map.insert(key.into(), value);
        self.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// `state` methods. Marked pure: `state` is a constant (it comes from the variable resolver) and
/// these change the shared map behind it, not the handle.
#[rhai::export_module]
mod state_api {
    use super::*;

    #[rhai_fn(index_get, pure)]
    pub fn get(state: &mut State, key: ImmutableString) -> Dynamic {
        state.get(&key)
    }

    #[rhai_fn(index_set, pure, return_raw)]
    pub fn set(state: &mut State, key: ImmutableString, value: Dynamic) -> RhaiResult<()> {
        state.set(key, value)
    }

    #[rhai_fn(pure)]
    pub fn contains(state: &mut State, key: ImmutableString) -> bool {
        state
            .map
            .lock()
            .map(|m| m.contains_key(key.as_str()))
            .unwrap_or(false)
    }

    #[rhai_fn(pure)]
    pub fn remove(state: &mut State, key: ImmutableString) -> Dynamic {
        state.dirty.store(true, Ordering::Relaxed);
        state
            .map
            .lock()
            .ok()
            .and_then(|mut m| m.remove(key.as_str()))
            .unwrap_or(Dynamic::UNIT)
    }

    #[rhai_fn(pure)]
    pub fn keys(state: &mut State) -> Array {
        state
            .map
            .lock()
            .map(|m| m.keys().map(|k| Dynamic::from(k.to_string())).collect())
            .unwrap_or_default()
    }

    #[rhai_fn(pure)]
    pub fn clear(state: &mut State) {
        state.dirty.store(true, Ordering::Relaxed);
        if let Ok(mut m) = state.map.lock() {
            m.clear();
        }
    }

    #[rhai_fn(global, name = "to_string", name = "to_debug", pure)]
    pub fn to_string(state: &mut State) -> String {
        format!("{:?}", state.snapshot())
    }
}

/// A timer a script asked for.
pub struct Timer {
    pub due: Instant,
    pub period: Option<Duration>,
    pub function: String,
    pub args: Array,
}

/// The script's timers, on the monotonic clock.
#[derive(Default)]
pub struct Timers {
    next_id: INT,
    pub entries: BTreeMap<INT, Timer>,
}

impl Timers {
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.values().map(|t| t.due).min()
    }

    /// Takes the timers due at `now`; repeating ones are put back at their next tick, skipping ticks
    /// that were missed (a late timer fires once, not in a burst).
    pub fn take_due(&mut self, now: Instant) -> Vec<(INT, String, Array)> {
        let due: Vec<INT> = self
            .entries
            .iter()
            .filter(|(_, t)| t.due <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut fire = Vec::with_capacity(due.len());
        for id in due {
            let Some(timer) = self.entries.get_mut(&id) else {
                continue;
            };
            fire.push((id, timer.function.clone(), timer.args.clone()));
            match timer.period {
                Some(period) => {
                    let period = period.max(Duration::from_millis(1));
                    let late = now.duration_since(timer.due);
                    let skipped = late.as_nanos() / period.as_nanos();
                    timer.due += period * (skipped as u32 + 1);
                }
                None => {
                    self.entries.remove(&id);
                }
            }
        }
        fire
    }
}

/// What a script's API functions reach: the switchboard (to send), its timers and state.
#[derive(Clone)]
pub struct ScriptContext {
    pub name: Arc<str>,
    pub board: SharedSwitchboard,
    pub hostnames: Arc<Hostnames>,
    pub timers: Arc<Mutex<Timers>>,
    /// Set whenever the script adds or cancels a timer, so the worker re-reads the next due time
    /// only then, not under the lock after every message.
    pub timers_edited: Arc<AtomicBool>,
    pub state: State,
    pub limits: Limits,
    /// Nanoseconds after `epoch` when the current call must stop.
    pub deadline: Arc<AtomicU64>,
    pub epoch: Instant,
    /// The datagram sends the worker holds back while it has a backlog (`channel::held`).
    pub held: Arc<HeldSends>,
}

impl ScriptContext {
    /// A context with no timers and no call running.
    pub fn new(
        name: Arc<str>,
        board: SharedSwitchboard,
        hostnames: Arc<Hostnames>,
        state: State,
        limits: Limits,
    ) -> ScriptContext {
        ScriptContext {
            name,
            board,
            hostnames,
            timers: Arc::new(Mutex::new(Timers::default())),
            timers_edited: Arc::new(AtomicBool::new(false)),
            state,
            limits,
            deadline: Arc::new(AtomicU64::new(u64::MAX)),
            epoch: Instant::now(),
            held: HeldSends::new(),
        }
    }
}

/// The message's origin, shaped like TouchDesigner's Peer class.
#[derive(Clone)]
pub struct Peer {
    origin: Origin,
    owner: Arc<str>,
    board: SharedSwitchboard,
    hostnames: Arc<Hostnames>,
}

impl Peer {
    pub fn new(origin: Origin, owner: Arc<str>, ctx: &ScriptContext) -> Peer {
        Peer {
            origin,
            owner,
            board: ctx.board.clone(),
            hostnames: ctx.hostnames.clone(),
        }
    }

    fn reply(&self, bytes: &[u8], osc: bool) -> RhaiResult<INT> {
        let board = self.board.load();
        let output = board
            .output(self.origin.channel)
            .ok_or_else(|| format!("channel `{}` is gone; cannot answer the peer", self.owner))?;
        if osc {
            output.reply(&self.origin, bytes);
            if !output.carries_osc(&self.origin) {
                return Err(format!(
                    "peer.send_osc: the connection from {} carries values, not OSC (use peer.send)",
                    self.origin.addr
                )
                .into());
            }
        } else {
            output.reply_raw(&self.origin, bytes);
        }
        Ok(bytes.len() as INT)
    }

    /// `peer.send(value)` on a peer channel: the value in the connection's data type. `None` on
    /// channels that carry no values (the TouchDesigner form, strings as text, applies there).
    fn send_value(&self, value: &Dynamic) -> Option<RhaiResult<INT>> {
        let board = self.board.load();
        let output = board
            .output(self.origin.channel)
            .filter(|o| o.carries_values())?;
        let json: serde_json::Value = match rhai::serde::from_dynamic(value) {
            Ok(json) => json,
            Err(e) => {
                return Some(Err(
                    format!("peer.send: the value cannot be sent: {e}").into()
                ))
            }
        };
        let sent = output.send_value(&self.origin, &json)?;
        Some(
            sent.map(|()| 1)
                .map_err(|e| format!("peer.send to {}: {e}", self.origin.addr).into()),
        )
    }

    /// Whether the message's channel takes values (`peer.send(value)`) rather than text.
    fn carries_values(&self) -> bool {
        self.board
            .load()
            .output(self.origin.channel)
            .is_some_and(|o| o.carries_values())
    }

    fn send_osc_messages(
        &self,
        messages: Vec<OscMessage>,
        options: &SendOscOptions,
    ) -> RhaiResult<INT> {
        if options.as_bundle {
            let bundle = OscPacket::Bundle(OscBundle {
                timetag: TimeTag::IMMEDIATELY,
                content: messages.into_iter().map(OscPacket::Message).collect(),
            });
            return self.reply(&encode(&bundle), true);
        }
        let mut sent = 0;
        for message in &messages {
            sent += self.reply(&encode_message(message), true)?;
        }
        Ok(sent)
    }
}

fn osc_message(address: &str, values: &Array, options: &SendOscOptions) -> RhaiResult<OscMessage> {
    let mut message = OscMessage::new("", Vec::new());
    fill_osc_message(&mut message, address, values, options)?;
    Ok(message)
}

/// `message` made `address` with `values` (its buffers reused).
fn fill_osc_message(
    message: &mut OscMessage,
    address: &str,
    values: &Array,
    options: &SendOscOptions,
) -> RhaiResult<()> {
    if !address.starts_with('/') {
        return Err(format!("OSC address `{address}` must start with `/`").into());
    }
    message.address.clear();
    message.address.push_str(address);
    message.args.clear();
    for (i, v) in values.iter().enumerate() {
        let arg =
            values::dynamic_to_osc(v, options).map_err(|e| format!("argument {}: {e}", i + 1))?;
        message.args.push(arg);
    }
    Ok(())
}

thread_local! {
    /// `send`'s message and bytes, reused: a script's calls all run on its own worker thread.
    static SEND_SCRATCH: std::cell::RefCell<(OscMessage, Vec<u8>)> =
        std::cell::RefCell::new((OscMessage::new("", Vec::new()), Vec::new()));
}

/// `send(channel, address, values)`: the values as OSC arguments (TouchDesigner's rules), encoded
/// into a reused buffer, sent to the channel by name.
fn send_to_channel(
    board: &SharedSwitchboard,
    channel: &str,
    address: &str,
    values: &Array,
) -> RhaiResult<INT> {
    SEND_SCRATCH.with(|scratch| {
        // Never re-entered (`send` calls no script code); a fresh pair if it ever were.
        let mut fresh = None;
        let mut borrowed = scratch.try_borrow_mut().ok();
        let (message, bytes) = match borrowed.as_deref_mut() {
            Some(pair) => pair,
            None => fresh.insert((OscMessage::new("", Vec::new()), Vec::new())),
        };
        fill_osc_message(message, address, values, &SendOscOptions::default())?;
        bytes.clear();
        encode_message_into(message, bytes);
        let board = board.load();
        let output = board
            .output_named(channel)
            .ok_or_else(|| format!("no channel named `{channel}`"))?;
        output.send(bytes);
        Ok(bytes.len() as INT)
    })
}

/// `[[address, [values]], ...]` for several messages at once.
fn osc_messages(list: &Array, options: &SendOscOptions) -> RhaiResult<Vec<OscMessage>> {
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let pair = item.clone().try_cast::<Array>().ok_or_else(|| {
                format!(
                    "message {} must be [address, [values]], found {}",
                    i + 1,
                    item.type_name()
                )
            })?;
            let address = pair
                .first()
                .and_then(|a| a.clone().into_immutable_string().ok())
                .ok_or_else(|| format!("message {} must start with its address string", i + 1))?;
            let values = match pair.get(1) {
                None => Array::new(),
                Some(v) => v.clone().try_cast::<Array>().ok_or_else(|| {
                    format!(
                        "message {}: the values must be an array, found {}",
                        i + 1,
                        v.type_name()
                    )
                })?,
            };
            osc_message(&address, &values, options)
                .map_err(|e| format!("message {}: {e}", i + 1).into())
        })
        .collect()
}

fn options(map: &Map) -> RhaiResult<SendOscOptions> {
    values::options_from_map(map).map_err(|e| e.to_string().into())
}

fn to_rhai_error(e: impl std::fmt::Display) -> Box<EvalAltResult> {
    e.to_string().into()
}

fn unix_ms(t: SystemTime) -> INT {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as INT)
        .unwrap_or(0)
}

fn function_name(f: &Dynamic) -> RhaiResult<String> {
    if let Some(ptr) = f.clone().try_cast::<FnPtr>() {
        return Ok(ptr.fn_name().to_string());
    }
    f.clone()
        .into_immutable_string()
        .map(|s| s.to_string())
        .map_err(|t| {
            format!("a timer needs a function name (a string such as \"tick\"), found {t}").into()
        })
}

/// Builds the engine for one script, with its limits and API.
pub fn build(ctx: &ScriptContext) -> Engine {
    let mut engine = Engine::new();
    set_depths(&mut engine);
    let limits = ctx.limits;
    engine.set_max_operations(limits.max_operations);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.set_max_call_levels(limits.max_call_depth);
    // A wall-clock deadline per call: checked every 1024 operations, so the check costs nothing.
    // A long call also sends what the worker held back before it (see `channel::held`).
    let (deadline, epoch, held) = (ctx.deadline.clone(), ctx.epoch, ctx.held.clone());
    engine.on_progress(move |operations| {
        if operations & 0x3ff != 0 {
            return None;
        }
        let now = Instant::now();
        if now.duration_since(epoch).as_nanos() as u64 > deadline.load(Ordering::Relaxed) {
            return Some(Dynamic::from("the call ran past its deadline (timeout_ms)"));
        }
        held.flush_if_due(now);
        None
    });
    engine.disable_symbol("eval");
    values::register(&mut engine);

    // state
    engine.register_type_with_name::<State>("State");
    engine.register_global_module(rhai::exported_module!(state_api).into());
    let state = ctx.state.clone();
    // Rhai marks `on_var` as volatile, not deprecated; it is the way to give functions `state`.
    #[allow(deprecated)]
    engine.on_var(move |name, _, _| Ok((name == "state").then(|| Dynamic::from(state.clone()))));

    // logs and time
    let name = ctx.name.clone();
    engine.register_fn(
        "log_info",
        move |v: Dynamic| tracing::info!(script = %name, "{}", values::display(&v)),
    );
    let name = ctx.name.clone();
    engine.register_fn(
        "log_warn",
        move |v: Dynamic| tracing::warn!(script = %name, "{}", values::display(&v)),
    );
    let name = ctx.name.clone();
    engine.register_fn(
        "log_error",
        move |v: Dynamic| tracing::error!(script = %name, "{}", values::display(&v)),
    );
    let name = ctx.name.clone();
    engine.on_print(move |text| tracing::info!(script = %name, "{text}"));
    engine.register_fn("now_ms", || unix_ms(SystemTime::now()));

    // send to channels
    let board = ctx.board.clone();
    let send = move |channel: &str, address: &str, values: Array| -> RhaiResult<INT> {
        send_to_channel(&board, channel, address, &values)
    };
    let send_no_args = send.clone();
    engine.register_fn("send", send);
    engine.register_fn("send", move |channel: &str, address: &str| {
        send_no_args(channel, address, Array::new())
    });
    let board = ctx.board.clone();
    engine.register_fn(
        "send_bundle",
        move |channel: &str, delay_ms: INT, list: Array| -> RhaiResult<INT> {
            let messages = osc_messages(&list, &SendOscOptions::default())?;
            let timetag = if delay_ms <= 0 {
                TimeTag::IMMEDIATELY
            } else {
                TimeTag::after(SystemTime::now(), Duration::from_millis(delay_ms as u64))
            };
            let bundle = OscPacket::Bundle(OscBundle {
                timetag,
                content: messages.into_iter().map(OscPacket::Message).collect(),
            });
            let bytes = encode(&bundle);
            let board = board.load();
            let output = board
                .output_named(channel)
                .ok_or_else(|| format!("no channel named `{channel}`"))?;
            output.send(&bytes);
            Ok(bytes.len() as INT)
        },
    );

    // timers
    for (fn_name, repeat) in [("after", false), ("every", true)] {
        let timers = ctx.timers.clone();
        let edited = ctx.timers_edited.clone();
        let max = limits.max_timers;
        let add = move |ms: INT, function: Dynamic, args: Array| -> RhaiResult<INT> {
            let function = function_name(&function)?;
            let mut timers = timers.lock().map_err(|_| "timers are unavailable")?;
            if timers.entries.len() >= max {
                return Err(format!(
                    "too many timers ({max}, limit max_timers); cancel some first"
                )
                .into());
            }
            let period = Duration::from_millis(ms.max(1) as u64);
            timers.next_id += 1;
            let id = timers.next_id;
            let timer = Timer {
                due: Instant::now() + period,
                period: repeat.then_some(period),
                function,
                args,
            };
            timers.entries.insert(id, timer);
            edited.store(true, Ordering::Release);
            Ok(id)
        };
        let add_no_args = add.clone();
        engine.register_fn(fn_name, add);
        engine.register_fn(fn_name, move |ms: INT, function: Dynamic| {
            add_no_args(ms, function, Array::new())
        });
    }
    let timers = ctx.timers.clone();
    let edited = ctx.timers_edited.clone();
    engine.register_fn("cancel", move |id: INT| {
        let removed = timers
            .lock()
            .map(|mut t| t.entries.remove(&id).is_some())
            .unwrap_or(false);
        edited.store(true, Ordering::Release);
        removed
    });

    // peer
    engine.register_type_with_name::<Peer>("Peer");
    engine.register_get("address", |p: &mut Peer| p.origin.addr.ip().to_string());
    engine.register_get("port", |p: &mut Peer| p.origin.addr.port() as INT);
    engine.register_get("hostname", |p: &mut Peer| {
        p.hostnames.get(p.origin.addr.ip()).to_string()
    });
    engine.register_get("owner", |p: &mut Peer| p.owner.to_string());
    engine.register_fn("to_string", |p: &mut Peer| {
        format!("peer {} on {}", p.origin.addr, p.owner)
    });
    engine.register_fn("to_debug", |p: &mut Peer| {
        format!("peer {} on {}", p.origin.addr, p.owner)
    });
    engine.register_fn("send_osc", |p: &mut Peer, address: &str, values: Array| {
        let options = SendOscOptions::default();
        p.send_osc_messages(vec![osc_message(address, &values, &options)?], &options)
    });
    engine.register_fn(
        "send_osc",
        |p: &mut Peer, address: &str, values: Array, opts: Map| {
            let options = options(&opts)?;
            p.send_osc_messages(vec![osc_message(address, &values, &options)?], &options)
        },
    );
    engine.register_fn("send_osc", |p: &mut Peer, list: Array| {
        let options = SendOscOptions::default();
        p.send_osc_messages(osc_messages(&list, &options)?, &options)
    });
    engine.register_fn("send_osc", |p: &mut Peer, list: Array, opts: Map| {
        let options = options(&opts)?;
        p.send_osc_messages(osc_messages(&list, &options)?, &options)
    });
    engine.register_fn("send_bytes", |p: &mut Peer, values: Array| {
        p.reply(
            &values::bytes_for_send_bytes(&values).map_err(to_rhai_error)?,
            false,
        )
    });
    engine.register_fn("send", |p: &mut Peer, strings: Array| {
        if p.carries_values() {
            if let Some(sent) = p.send_value(&Dynamic::from_array(strings)) {
                return sent;
            }
            return Err("peer.send: the connection is gone".into());
        }
        p.reply(
            &values::bytes_for_send(&strings, None).map_err(to_rhai_error)?,
            false,
        )
    });
    engine.register_fn("send", |p: &mut Peer, strings: Array, terminator: &str| {
        p.reply(
            &values::bytes_for_send(&strings, Some(terminator)).map_err(to_rhai_error)?,
            false,
        )
    });
    // Peer channels carry values of any shape; other channels refuse what is not a list of strings.
    engine.register_fn("send", |p: &mut Peer, value: Dynamic| {
        match p.send_value(&value) {
            Some(sent) => sent,
            None => Err(format!(
                "peer.send takes a list of strings on a `{}` channel (values need a peer channel)",
                p.owner
            )
            .into()),
        }
    });
    engine.register_fn("close", |p: &mut Peer| {
        let board = p.board.load();
        board
            .output(p.origin.channel)
            .is_some_and(|o| o.close(&p.origin))
    });
    engine
}

/// The keys of `msg`, in the map's (sorted) order.
pub const MSG_KEYS: [&str; 9] = [
    "address",
    "args",
    "captures",
    "channel",
    "parts",
    "peer",
    "received_ms",
    "route",
    "type_tags",
];

/// Builds the `msg` a script function receives, one per message, on the script's thread.
///
/// Only the keys the function can read are built (`usage::msg_keys`). What repeats from one message
/// to the next (the address and its parts, the captures, the type tags, the channel and route names)
/// is kept from the last message and shared (a reference count, not a copy of the text); the map
/// itself is a clone of a template with the wanted keys, its values then set in key order, so no key
/// is made or looked up per message.
pub struct MessageBuilder {
    /// One template per set of keys asked for (a script has a few handlers at most).
    templates: Vec<(Keys, Map)>,
    address: ImmutableString,
    parts: Array,
    type_tags: ImmutableString,
    captures: Vec<ImmutableString>,
    channel: Option<(Arc<str>, ImmutableString)>,
    route: Option<(Arc<str>, ImmutableString)>,
    limits: DecodeLimits,
}

impl Default for MessageBuilder {
    fn default() -> Self {
        MessageBuilder::new()
    }
}

impl MessageBuilder {
    pub fn new() -> MessageBuilder {
        MessageBuilder {
            templates: Vec::new(),
            address: ImmutableString::new(),
            parts: Array::new(),
            type_tags: ImmutableString::new(),
            captures: Vec::new(),
            channel: None,
            route: None,
            // The receiving thread validated the bytes with its channel's limits.
            limits: DecodeLimits {
                max_bundle_depth: usize::MAX,
                max_array_depth: usize::MAX,
            },
        }
    }

    /// The whole `msg` map; `None` if the bytes are not one OSC message (never: the receiving thread
    /// validated them).
    pub fn build(&mut self, message: &super::ScriptMessage, peer: Peer) -> Option<Map> {
        self.build_keys(message, usage::ALL, || peer)
    }

    /// The `msg` map with the `keys` asked for (`usage::msg_keys`); `peer` is called only when the
    /// peer is one of them.
    pub fn build_keys(
        &mut self,
        message: &super::ScriptMessage,
        keys: Keys,
        peer: impl FnOnce() -> Peer,
    ) -> Option<Map> {
        let Ok(PacketRef::Message(osc)) = PacketRef::parse(&message.raw, &self.limits) else {
            return None;
        };
        let wants = |key: usize| keys & (1 << key) != 0;
        let mut peer = Some(peer);
        let mut map = self.template(keys);
        let mut slots = map.values_mut();
        for key in (0..MSG_KEYS.len()).filter(|&k| wants(k)) {
            let value: Dynamic = match key {
                0 => {
                    self.see_address(osc.address);
                    self.address.clone().into()
                }
                1 => values::args_to_dynamic(&mut osc.arg_refs()).into(),
                2 => {
                    self.see_captures(osc.address, &message.captures);
                    let captures: Array =
                        self.captures.iter().cloned().map(Dynamic::from).collect();
                    captures.into()
                }
                3 => shared_name(&mut self.channel, &message.channel).into(),
                4 => {
                    self.see_address(osc.address);
                    self.parts.clone().into()
                }
                5 => Dynamic::from(peer.take().map(|p| p()).expect("the peer is built once")),
                6 => Dynamic::from(message.received_ms),
                7 => shared_name(&mut self.route, &message.route).into(),
                _ => {
                    if self.type_tags.as_str() != osc.type_tags {
                        self.type_tags = osc.type_tags.into();
                    }
                    self.type_tags.clone().into()
                }
            };
            if let Some(slot) = slots.next() {
                *slot = value;
            }
        }
        if let (Some(value), true) = (&message.value, keys & usage::VALUE != 0) {
            // A json or raw peer payload: the whole value, not only its OSC form.
            map.insert(
                "value".into(),
                rhai::serde::to_dynamic(&**value).unwrap_or(Dynamic::UNIT),
            );
        }
        Some(map)
    }

    /// A map with the keys of `keys` (units for values).
    fn template(&mut self, keys: Keys) -> Map {
        if let Some((_, map)) = self.templates.iter().find(|(k, _)| *k == keys) {
            return map.clone();
        }
        let map: Map = MSG_KEYS
            .iter()
            .enumerate()
            .filter(|(i, _)| keys & (1 << i) != 0)
            .map(|(_, k)| ((*k).into(), Dynamic::UNIT))
            .collect();
        self.templates.push((keys, map.clone()));
        map
    }

    /// Keeps the address and its parts, made again only when the address changes.
    fn see_address(&mut self, address: &str) {
        if self.address.as_str() != address {
            self.address = address.into();
            self.parts = address
                .split('/')
                .filter(|p| !p.is_empty())
                .map(|p| Dynamic::from(ImmutableString::from(p)))
                .collect();
        }
    }

    /// Keeps the captured texts, made again only when they change.
    fn see_captures(&mut self, address: &str, spans: &[(usize, usize)]) {
        let captured = |&(start, end): &(usize, usize)| address.get(start..end).unwrap_or("");
        if self.captures.len() != spans.len()
            || self
                .captures
                .iter()
                .zip(spans)
                .any(|(kept, span)| kept.as_str() != captured(span))
        {
            self.captures = spans.iter().map(|span| captured(span).into()).collect();
        }
    }
}

/// The name as a script string, made once per distinct `Arc` (a route's or channel's name).
fn shared_name(kept: &mut Option<(Arc<str>, ImmutableString)>, name: &Arc<str>) -> ImmutableString {
    match kept {
        Some((arc, text)) if Arc::ptr_eq(arc, name) => text.clone(),
        _ => {
            let text = ImmutableString::from(&**name);
            *kept = Some((name.clone(), text.clone()));
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_keys_are_in_map_order() {
        let map: Map = MSG_KEYS
            .iter()
            .map(|k| ((*k).into(), Dynamic::UNIT))
            .collect();
        let keys: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, MSG_KEYS);
    }
}
