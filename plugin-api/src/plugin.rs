//! The safe layer for Rust plugin authors: implement [`Plugin`], then `export_plugin!`.
//!
//! ```
//! use patchbay_plugin_api::osc::OscMessage;
//! use patchbay_plugin_api::plugin::{Context, Origin, Plugin};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn init(_config: &str, ctx: &mut Context<'_>) -> Result<Self, String> {
//!         ctx.log_info("echo ready");
//!         Ok(Echo)
//!     }
//!
//!     fn on_message(&mut self, msg: &OscMessage, origin: Origin, ctx: &mut Context<'_>) -> Result<(), String> {
//!         ctx.reply(origin, msg)?;
//!         Ok(())
//!     }
//! }
//!
//! patchbay_plugin_api::export_plugin!(Echo, "echo", env!("CARGO_PKG_VERSION"));
//! ```
//!
//! The macro generates the two exported symbols of the ABI and a static [`PluginVtable`] whose
//! functions are the shims below. Every shim runs the author's code inside `catch_unwind`: an
//! error becomes return code 1 and a panic return code 2, each with its message, and no unwind
//! ever crosses the `extern "C"` boundary (that would abort the host).

use std::cell::{Cell, RefCell};
use std::ffi::{c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use crate::abi::{self, borrowed, code, host_code, log_level, HostVtable, PbBuffer, PluginVtable};
use crate::osc::{
    encode_into, encode_message_into, DecodeLimits, MessageRef, OscArg, OscMessage, OscPacket,
    PacketRef,
};

/// A plugin type. One value per route target ("instance"); the host calls one instance at a time,
/// possibly from different threads one after the other (hence `Send`).
///
/// Errors are plain strings: the host logs them with the plugin's name and counts them, and too
/// many in a row disable the instance, so return `Err` for real failures, not for a message the
/// plugin merely ignores.
pub trait Plugin: Send + 'static {
    /// Makes an instance from the route's `config:` map, a JSON object as text (`{}` without
    /// one). Parse it with the JSON crate of your choice.
    fn init(config: &str, ctx: &mut Context<'_>) -> Result<Self, String>
    where
        Self: Sized;

    /// One message routed to this instance. `origin` identifies where it came from; keep it to
    /// answer later.
    fn on_message(
        &mut self,
        msg: &OscMessage,
        origin: Origin,
        ctx: &mut Context<'_>,
    ) -> Result<(), String>;

    /// A timer set with [`Context::schedule`] is due.
    fn on_timer(&mut self, _timer: u64, _ctx: &mut Context<'_>) -> Result<(), String> {
        Ok(())
    }

    /// The instance is being replaced or removed; the host callbacks still work here.
    fn on_unload(&mut self, _ctx: &mut Context<'_>) {}
}

/// The host's opaque token for where a message came from (its Peer). It stays usable after the
/// call, for as long as the host remembers that origin; a forgotten one gives
/// [`HostErrorKind::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin(pub u64);

/// A host callback that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {kind}")]
pub struct HostError {
    /// The operation, e.g. `send to "lights"`.
    pub what: String,
    pub kind: HostErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostErrorKind {
    #[error("no such channel or origin")]
    Unknown,
    #[error("refused by the host")]
    Refused,
    #[error("dropped (queue full or send failed)")]
    Dropped,
    #[error("host returned code {0}")]
    Code(i32),
    #[error("the host does not provide this callback")]
    Missing,
}

/// So `ctx.send(..)?` works inside the trait's methods, which return `Result<_, String>`.
impl From<HostError> for String {
    fn from(e: HostError) -> String {
        e.to_string()
    }
}

/// The host, as seen from inside one call. Only exists during a call into the plugin: the host's
/// callbacks must not be used outside one (hence no `Send`, and no way to keep it).
pub struct Context<'a> {
    host: &'a HostVtable,
    ctx: *mut c_void,
    /// Reused encode buffer, so sending does not allocate once it has grown.
    scratch: &'a mut Vec<u8>,
}

impl<'a> Context<'a> {
    /// Sends a message to the channel named `channel` (its configured destination).
    pub fn send(&mut self, channel: &str, msg: &OscMessage) -> Result<(), HostError> {
        self.scratch.clear();
        encode_message_into(msg, self.scratch);
        self.send_encoded(channel)
    }

    /// Sends a message or bundle to a channel.
    pub fn send_packet(&mut self, channel: &str, packet: &OscPacket) -> Result<(), HostError> {
        self.scratch.clear();
        encode_into(packet, self.scratch);
        self.send_encoded(channel)
    }

    fn send_encoded(&mut self, channel: &str) -> Result<(), HostError> {
        let what = || format!("send to {channel:?}");
        let Some(send) = self.host.send else {
            return Err(missing(what()));
        };
        // SAFETY: the host vtable and ctx are valid during this call; slices outlive it.
        let rc = unsafe {
            send(
                self.ctx,
                channel.as_ptr(),
                channel.len(),
                self.scratch.as_ptr(),
                self.scratch.len(),
            )
        };
        check(rc, what)
    }

    /// Answers `origin` with a message (the Peer's `send_osc` with a built message).
    pub fn reply(&mut self, origin: Origin, msg: &OscMessage) -> Result<(), HostError> {
        self.scratch.clear();
        encode_message_into(msg, self.scratch);
        self.reply_with(origin, true, self.scratch)
    }

    /// Peer `send_osc`: answers `origin` with a message at `address`.
    pub fn send_osc(
        &mut self,
        origin: Origin,
        address: &str,
        args: Vec<OscArg>,
    ) -> Result<(), HostError> {
        self.reply(origin, &OscMessage::new(address, args))
    }

    /// Peer `send_bytes`: answers `origin` with raw bytes, sent as they are.
    pub fn send_bytes(&mut self, origin: Origin, bytes: &[u8]) -> Result<(), HostError> {
        self.reply_with(origin, false, bytes)
    }

    /// Peer `send`: answers `origin` with text, each string followed by a NUL, or by `terminator`
    /// when given (`Some("")`: nothing). The same rule as the scripts' `peer.send`.
    pub fn send_strings(
        &mut self,
        origin: Origin,
        strings: &[&str],
        terminator: Option<&str>,
    ) -> Result<(), HostError> {
        let terminator = terminator.map_or(&b"\0"[..], str::as_bytes);
        self.scratch.clear();
        for s in strings {
            self.scratch.extend_from_slice(s.as_bytes());
            self.scratch.extend_from_slice(terminator);
        }
        self.reply_with(origin, false, self.scratch)
    }

    fn reply_with(&self, origin: Origin, osc: bool, bytes: &[u8]) -> Result<(), HostError> {
        let what = || format!("reply to origin {}", origin.0);
        let f = if osc {
            self.host.reply_osc
        } else {
            self.host.reply_bytes
        };
        let Some(f) = f else {
            return Err(missing(what()));
        };
        // SAFETY: as in `send_encoded`.
        let rc = unsafe { f(self.ctx, origin.0, bytes.as_ptr(), bytes.len()) };
        check(rc, what)
    }

    /// Peer `close`: closes the connection `origin` came in on; `false` when there is none (UDP).
    pub fn close(&mut self, origin: Origin) -> bool {
        match self.host.close {
            // SAFETY: as in `send_encoded`.
            Some(close) => unsafe { close(self.ctx, origin.0) == 1 },
            None => false,
        }
    }

    /// The Peer operations for `origin` under the scripts' names.
    pub fn peer(&mut self, origin: Origin) -> Peer<'_, 'a> {
        Peer { ctx: self, origin }
    }

    pub fn log_error(&mut self, msg: &str) {
        self.log(log_level::ERROR, msg);
    }
    pub fn log_warn(&mut self, msg: &str) {
        self.log(log_level::WARN, msg);
    }
    pub fn log_info(&mut self, msg: &str) {
        self.log(log_level::INFO, msg);
    }
    pub fn log_debug(&mut self, msg: &str) {
        self.log(log_level::DEBUG, msg);
    }

    fn log(&mut self, level: u32, msg: &str) {
        if let Some(log) = self.host.log {
            // SAFETY: as in `send_encoded`.
            unsafe { log(self.ctx, level, msg.as_ptr(), msg.len()) };
        }
    }

    /// Adds `value` to this plugin's counter `name` (exported by the host with the plugin's name).
    pub fn count(&mut self, name: &str, value: u64) {
        if let Some(count) = self.host.count {
            // SAFETY: as in `send_encoded`.
            unsafe { count(self.ctx, name.as_ptr(), name.len(), value) };
        }
    }

    /// Asks for `on_timer(timer)` in `delay_ms` (once). Ids are yours; the same id twice gives two
    /// calls, so a plugin that may re-schedule keeps track of what it is waiting for.
    pub fn schedule(&mut self, delay_ms: u64, timer: u64) -> Result<(), HostError> {
        let what = || format!("schedule timer {timer}");
        let Some(schedule) = self.host.schedule else {
            return Err(missing(what()));
        };
        // SAFETY: as in `send_encoded`.
        let rc = unsafe { schedule(self.ctx, delay_ms, timer) };
        check(rc, what)
    }
}

fn missing(what: String) -> HostError {
    HostError {
        what,
        kind: HostErrorKind::Missing,
    }
}

fn check(rc: i32, what: impl FnOnce() -> String) -> Result<(), HostError> {
    let kind = match rc {
        host_code::OK => return Ok(()),
        host_code::UNKNOWN => HostErrorKind::Unknown,
        host_code::REFUSED => HostErrorKind::Refused,
        host_code::DROPPED => HostErrorKind::Dropped,
        other => HostErrorKind::Code(other),
    };
    Err(HostError { what: what(), kind })
}

/// One origin's Peer operations, named as in the scripts (`peer.send_osc`, `peer.send_bytes`,
/// `peer.send`, `peer.close`).
pub struct Peer<'c, 'a> {
    ctx: &'c mut Context<'a>,
    origin: Origin,
}

impl Peer<'_, '_> {
    pub fn origin(&self) -> Origin {
        self.origin
    }
    pub fn send_osc(&mut self, address: &str, args: Vec<OscArg>) -> Result<(), HostError> {
        self.ctx.send_osc(self.origin, address, args)
    }
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), HostError> {
        self.ctx.send_bytes(self.origin, bytes)
    }
    pub fn send(&mut self, strings: &[&str], terminator: Option<&str>) -> Result<(), HostError> {
        self.ctx.send_strings(self.origin, strings, terminator)
    }
    pub fn close(&mut self) -> bool {
        self.ctx.close(self.origin)
    }
}

// ---------------------------------------------------------------------------------------------
// The shims. `vtable::<P>()` builds the table from them; `export_plugin!` puts it in a static.

/// What the instance pointer handed to the host points to.
struct Instance<P> {
    plugin: P,
    host: *const HostVtable,
    host_ctx: *mut c_void,
    scratch: Vec<u8>,
}

impl<P> Instance<P> {
    /// Splits the instance into the plugin and a context over the rest.
    fn parts(&mut self) -> (&mut P, Context<'_>) {
        // SAFETY: the host keeps its vtable valid until on_unload returns (ABI contract), and
        // `create` checked it is non-null.
        let host = unsafe { &*self.host };
        let ctx = Context {
            host,
            ctx: self.host_ctx,
            scratch: &mut self.scratch,
        };
        (&mut self.plugin, ctx)
    }
}

/// The table for plugin type `P`. `export_plugin!` calls this with `cfg!(panic = "unwind")`
/// evaluated in the plugin crate, which is where the panic strategy is decided.
pub const fn vtable<P: Plugin>(
    name: &'static CStr,
    version: &'static CStr,
    panic_unwind: bool,
) -> PluginVtable {
    PluginVtable {
        abi_version: abi::ABI_VERSION,
        name: name.as_ptr(),
        version: version.as_ptr(),
        panic_unwind: panic_unwind as u32,
        create: Some(create_shim::<P>),
        on_message: Some(on_message_shim::<P>),
        on_timer: Some(on_timer_shim::<P>),
        on_unload: Some(on_unload_shim::<P>),
        free_buffer: Some(free_buffer),
    }
}

/// A NUL-terminated literal as a `CStr`, checked at compile time (used by `export_plugin!`).
pub const fn c_str(with_nul: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(with_nul.as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("plugin name and version must not contain NUL"),
    }
}

unsafe extern "C" fn create_shim<P: Plugin>(
    host: *const HostVtable,
    host_ctx: *mut c_void,
    config_json: *const u8,
    config_len: usize,
    instance_out: *mut *mut c_void,
    error_out: *mut PbBuffer,
) -> i32 {
    guard(error_out, || {
        if host.is_null() || instance_out.is_null() {
            return Err("create called with a null host table or instance_out".to_owned());
        }
        // SAFETY: non-null; valid for the instance's life per the ABI.
        let host_table = unsafe { &*host };
        if host_table.abi_version != abi::ABI_VERSION {
            return Err(format!(
                "host ABI version {}, plugin built for version {}",
                host_table.abi_version,
                abi::ABI_VERSION
            ));
        }
        // SAFETY: the host lends `config_len` bytes for this call.
        let config = unsafe { borrowed(config_json, config_len) };
        let config =
            std::str::from_utf8(config).map_err(|e| format!("config is not valid utf-8: {e}"))?;
        let config = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let mut scratch = Vec::new();
        let mut ctx = Context {
            host: host_table,
            ctx: host_ctx,
            scratch: &mut scratch,
        };
        let plugin = P::init(config, &mut ctx)?;
        let instance = Box::new(Instance {
            plugin,
            host,
            host_ctx,
            scratch,
        });
        // SAFETY: checked non-null above.
        unsafe { *instance_out = Box::into_raw(instance).cast() };
        Ok(())
    })
}

unsafe extern "C" fn on_message_shim<P: Plugin>(
    instance: *mut c_void,
    osc: *const u8,
    len: usize,
    origin: u64,
    error_out: *mut PbBuffer,
) -> i32 {
    guard(error_out, || {
        // SAFETY: the host passes an instance from `create`, one call at a time.
        let instance = unsafe { instance_mut::<P>(instance) }?;
        // SAFETY: the host lends `len` bytes for this call.
        let bytes = unsafe { borrowed(osc, len) };
        let packet = PacketRef::parse(bytes, &DecodeLimits::default())
            .map_err(|e| format!("message is not valid osc: {e}"))?;
        let (plugin, mut ctx) = instance.parts();
        deliver(plugin, packet, Origin(origin), &mut ctx)
    })
}

/// A bundle is delivered as its messages in order, nested bundles flattened; the first error
/// stops the rest (the host gets one error per call).
fn deliver<P: Plugin>(
    plugin: &mut P,
    packet: PacketRef<'_>,
    origin: Origin,
    ctx: &mut Context<'_>,
) -> Result<(), String> {
    match packet {
        PacketRef::Message(m) => deliver_message(plugin, &m, origin, ctx),
        PacketRef::Bundle(b) => b
            .elements()
            .try_for_each(|element| deliver(plugin, element, origin, ctx)),
    }
}

fn deliver_message<P: Plugin>(
    plugin: &mut P,
    msg: &MessageRef<'_>,
    origin: Origin,
    ctx: &mut Context<'_>,
) -> Result<(), String> {
    plugin.on_message(&msg.to_owned_message(), origin, ctx)
}

unsafe extern "C" fn on_timer_shim<P: Plugin>(
    instance: *mut c_void,
    timer: u64,
    error_out: *mut PbBuffer,
) -> i32 {
    guard(error_out, || {
        // SAFETY: as in `on_message_shim`.
        let instance = unsafe { instance_mut::<P>(instance) }?;
        let (plugin, mut ctx) = instance.parts();
        plugin.on_timer(timer, &mut ctx)
    })
}

unsafe extern "C" fn on_unload_shim<P: Plugin>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: the host hands back the pointer `create` made, for the last time.
    let mut instance = unsafe { Box::from_raw(instance.cast::<Instance<P>>()) };
    let host = instance.host;
    let host_ctx = instance.host_ctx;
    // There is no return code here, so a panic (in on_unload or in dropping the plugin) is
    // reported through the host's log instead. Two guards: if on_unload panics, the plugin is
    // still dropped afterwards, outside that unwind (a panic in Drop during an unwind aborts).
    let mut message = PbBuffer::EMPTY;
    let rc = guard(&mut message, || {
        let (plugin, mut ctx) = instance.parts();
        plugin.on_unload(&mut ctx);
        Ok(())
    });
    report_unload_panic(host, host_ctx, rc, message, "on_unload");
    let mut message = PbBuffer::EMPTY;
    let rc = guard(&mut message, move || {
        drop(instance);
        Ok(())
    });
    report_unload_panic(host, host_ctx, rc, message, "dropping the plugin");
}

fn report_unload_panic(
    host: *const HostVtable,
    host_ctx: *mut c_void,
    rc: i32,
    message: PbBuffer,
    during: &str,
) {
    // SAFETY: our own buffer from `guard` (or EMPTY).
    let text = unsafe { message.into_vec() };
    if rc == code::OK {
        return;
    }
    let text = format!("{during} panicked: {}", String::from_utf8_lossy(&text));
    // SAFETY: the host table and ctx are valid until on_unload returns.
    if let Some(log) = unsafe { &*host }.log {
        unsafe { log(host_ctx, log_level::ERROR, text.as_ptr(), text.len()) };
    }
}

/// Frees a buffer this library handed out (error messages).
unsafe extern "C" fn free_buffer(buffer: PbBuffer) {
    // SAFETY: the host gives back a buffer from `PbBuffer::from_vec` in this library, once.
    drop(unsafe { buffer.into_vec() });
}

unsafe fn instance_mut<'a, P>(instance: *mut c_void) -> Result<&'a mut Instance<P>, String> {
    if instance.is_null() {
        return Err("called with a null instance".to_owned());
    }
    // SAFETY: the caller guarantees it is a live instance of `P` used by one call at a time.
    Ok(unsafe { &mut *instance.cast::<Instance<P>>() })
}

/// Runs `f` with panics caught, and turns its outcome into a return code and `error_out`.
fn guard(error_out: *mut PbBuffer, f: impl FnOnce() -> Result<(), String>) -> i32 {
    install_panic_hook();
    let depth = ShimDepth::enter();
    let result = catch_unwind(AssertUnwindSafe(f));
    drop(depth);
    match result {
        Ok(Ok(())) => code::OK,
        Ok(Err(message)) => {
            write_error(error_out, message);
            code::ERROR
        }
        Err(payload) => {
            let mut message = match payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
            {
                Some(text) => text,
                None => "panic with a non-string payload".to_owned(),
            };
            if let Some(location) = LAST_PANIC_LOCATION.with(|l| l.borrow_mut().take()) {
                message = format!("at {location}: {message}");
            }
            // A payload's own Drop may panic, and that second unwind must not leave this
            // function either; leaking it is the lesser evil.
            if let Err(second) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(second);
            }
            write_error(error_out, message);
            code::PANIC
        }
    }
}

fn write_error(error_out: *mut PbBuffer, message: String) {
    if error_out.is_null() {
        return;
    }
    // SAFETY: non-null; the host passes a writable PbBuffer.
    unsafe { error_out.write(PbBuffer::from_vec(message.into_bytes())) };
}

thread_local! {
    /// How many shims are running on this thread (more than one only if a host re-entered).
    static SHIM_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Where the last panic inside a shim happened, for its error message.
    static LAST_PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

struct ShimDepth;

impl ShimDepth {
    fn enter() -> ShimDepth {
        SHIM_DEPTH.with(|d| d.set(d.get() + 1));
        ShimDepth
    }
}

impl Drop for ShimDepth {
    fn drop(&mut self) {
        SHIM_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Inside a shim a panic is reported to the host (with its location, recorded here) instead of
/// printed to stderr, which in a show is the host's log stream. A plugin library links its own
/// std, so this hook only sees the plugin's panics; outside shims (or in a test binary) it defers
/// to the hook that was there before.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_shim = SHIM_DEPTH.try_with(|d| d.get() > 0).unwrap_or(false);
            if !in_shim {
                previous(info);
                return;
            }
            if let Some(location) = info.location() {
                let location = format!(
                    "{}:{}:{}",
                    location.file(),
                    location.line(),
                    location.column()
                );
                let _ = LAST_PANIC_LOCATION.try_with(|l| {
                    if let Ok(mut slot) = l.try_borrow_mut() {
                        *slot = Some(location);
                    }
                });
            }
        }));
    });
}

/// Exports a [`Plugin`] type as a patchbay plugin library: the symbols
/// `patchbay_plugin_abi_version` and `patchbay_plugin_entry`, and a static table of shims.
/// Use it once, in a crate with `crate-type = ["cdylib"]`.
///
/// `name` is what the host logs and labels metrics with; `version` is shown at load. Both are
/// string literals or `env!(..)`, without NUL.
///
/// `export_plugin!(Scale, "scale", env!("CARGO_PKG_VERSION"));` — the [`plugin`](crate::plugin)
/// module documentation has a complete plugin.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty, $name:expr, $version:expr $(,)?) => {
        const _: () = {
            static PATCHBAY_PLUGIN_VTABLE: $crate::abi::PluginVtable =
                $crate::plugin::vtable::<$plugin>(
                    $crate::plugin::c_str(concat!($name, "\0")),
                    $crate::plugin::c_str(concat!($version, "\0")),
                    // Evaluated here, in the plugin crate: its profile decides the strategy.
                    cfg!(panic = "unwind"),
                );

            #[unsafe(no_mangle)]
            pub extern "C" fn patchbay_plugin_abi_version() -> u32 {
                $crate::abi::ABI_VERSION
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn patchbay_plugin_entry() -> *const $crate::abi::PluginVtable {
                &PATCHBAY_PLUGIN_VTABLE
            }
        };
    };
}

#[cfg(test)]
mod tests {
    //! Drives the shims through the table, as the host will, with a test host whose callbacks
    //! record what the plugin did.

    use super::*;
    use crate::abi::host::{self as h, AbiError, CallError};
    use crate::osc::{decode, encode, encode_message, OscBundle, TimeTag};

    #[derive(Default)]
    struct TestHost {
        sent: Vec<(String, OscPacket)>,
        osc_replies: Vec<(u64, OscPacket)>,
        byte_replies: Vec<(u64, Vec<u8>)>,
        logs: Vec<(u32, String)>,
        counts: Vec<(String, u64)>,
        timers: Vec<(u64, u64)>,
        send_rc: i32,
    }

    unsafe fn test_host<'a>(ctx: *mut c_void) -> &'a mut TestHost {
        unsafe { &mut *ctx.cast::<TestHost>() }
    }

    fn text(ptr: *const u8, len: usize) -> String {
        String::from_utf8(unsafe { borrowed(ptr, len) }.to_vec()).unwrap()
    }

    unsafe extern "C" fn t_send(
        ctx: *mut c_void,
        channel: *const u8,
        channel_len: usize,
        osc: *const u8,
        len: usize,
    ) -> i32 {
        let host = unsafe { test_host(ctx) };
        let packet = decode(unsafe { borrowed(osc, len) }).expect("plugin sent valid osc");
        host.sent.push((text(channel, channel_len), packet));
        host.send_rc
    }
    unsafe extern "C" fn t_reply_osc(
        ctx: *mut c_void,
        origin: u64,
        osc: *const u8,
        len: usize,
    ) -> i32 {
        let host = unsafe { test_host(ctx) };
        let packet = decode(unsafe { borrowed(osc, len) }).expect("plugin replied valid osc");
        host.osc_replies.push((origin, packet));
        host_code::OK
    }
    unsafe extern "C" fn t_reply_bytes(
        ctx: *mut c_void,
        origin: u64,
        b: *const u8,
        len: usize,
    ) -> i32 {
        let host = unsafe { test_host(ctx) };
        host.byte_replies
            .push((origin, unsafe { borrowed(b, len) }.to_vec()));
        host_code::OK
    }
    unsafe extern "C" fn t_close(_ctx: *mut c_void, origin: u64) -> i32 {
        (origin == 99) as i32
    }
    unsafe extern "C" fn t_log(ctx: *mut c_void, level: u32, msg: *const u8, len: usize) {
        unsafe { test_host(ctx) }.logs.push((level, text(msg, len)));
    }
    unsafe extern "C" fn t_count(ctx: *mut c_void, name: *const u8, name_len: usize, value: u64) {
        unsafe { test_host(ctx) }
            .counts
            .push((text(name, name_len), value));
    }
    unsafe extern "C" fn t_schedule(ctx: *mut c_void, delay_ms: u64, timer: u64) -> i32 {
        unsafe { test_host(ctx) }.timers.push((delay_ms, timer));
        host_code::OK
    }

    static HOST: HostVtable = HostVtable {
        abi_version: abi::ABI_VERSION,
        send: Some(t_send),
        reply_osc: Some(t_reply_osc),
        reply_bytes: Some(t_reply_bytes),
        close: Some(t_close),
        log: Some(t_log),
        count: Some(t_count),
        schedule: Some(t_schedule),
    };

    /// Does something different per address, so each test picks a behaviour by message.
    struct Recorder {
        calls: u64,
    }

    impl Plugin for Recorder {
        fn init(config: &str, ctx: &mut Context<'_>) -> Result<Self, String> {
            if config.contains("fail") {
                return Err("config says fail".into());
            }
            if config.contains("panic") {
                panic!("init panicked");
            }
            ctx.log_info(&format!("init {config}"));
            Ok(Recorder { calls: 0 })
        }

        fn on_message(
            &mut self,
            msg: &OscMessage,
            origin: Origin,
            ctx: &mut Context<'_>,
        ) -> Result<(), String> {
            self.calls += 1;
            ctx.count("calls", 1);
            match msg.address.as_str() {
                "/panic" => panic!("boom {}", self.calls),
                "/panic_any" => std::panic::panic_any(42_u32),
                "/err" => Err("not this one".into()),
                "/timer" => Ok(ctx.schedule(25, 7)?),
                "/text" => {
                    let mut peer = ctx.peer(origin);
                    peer.send(&["PWR ON"], Some("\r"))?;
                    peer.send(&["a", "b"], None)?;
                    peer.send(&["x"], Some(""))?;
                    peer.send_bytes(&[1, 2, 255])?;
                    peer.send_osc("/ack", vec![OscArg::Int(1)])?;
                    let closed = ctx.close(origin);
                    ctx.log_warn(&format!("closed {closed}"));
                    Ok(())
                }
                _ => {
                    ctx.send("out", msg)?;
                    ctx.reply(origin, msg)?;
                    Ok(())
                }
            }
        }

        fn on_timer(&mut self, timer: u64, ctx: &mut Context<'_>) -> Result<(), String> {
            let msg = OscMessage::new("/timer", vec![OscArg::Long(timer as i64)]);
            Ok(ctx.send_packet("out", &OscPacket::Message(msg))?)
        }

        fn on_unload(&mut self, ctx: &mut Context<'_>) {
            ctx.log_info(&format!("bye after {}", self.calls));
        }
    }

    struct PanicsOnUnload;

    impl Plugin for PanicsOnUnload {
        fn init(_: &str, _: &mut Context<'_>) -> Result<Self, String> {
            Ok(PanicsOnUnload)
        }
        fn on_message(
            &mut self,
            _: &OscMessage,
            _: Origin,
            _: &mut Context<'_>,
        ) -> Result<(), String> {
            Ok(())
        }
        fn on_unload(&mut self, _: &mut Context<'_>) {
            panic!("unload went wrong");
        }
    }

    impl Drop for PanicsOnUnload {
        fn drop(&mut self) {
            panic!("drop went wrong");
        }
    }

    static RECORDER: PluginVtable = vtable::<Recorder>(c_str("recorder\0"), c_str("1.2.3\0"), true);

    fn checked(table: &'static PluginVtable) -> &'static PluginVtable {
        let (table, _) = unsafe { h::check_vtable(table) }.expect("valid table");
        table
    }

    fn create(
        table: &PluginVtable,
        host: &mut TestHost,
        config: &str,
    ) -> Result<*mut c_void, CallError> {
        unsafe { h::create(table, &HOST, (host as *mut TestHost).cast(), config) }
    }

    fn message(
        table: &PluginVtable,
        instance: *mut c_void,
        msg: &OscMessage,
        origin: u64,
    ) -> Result<(), CallError> {
        unsafe { h::on_message(table, instance, &encode_message(msg), origin) }
    }

    fn msg(address: &str, args: Vec<OscArg>) -> OscMessage {
        OscMessage::new(address, args)
    }

    #[test]
    fn a_message_is_decoded_sent_and_answered() {
        let table = checked(&RECORDER);
        let mut host = TestHost::default();
        let instance = create(table, &mut host, r#"{"k": 1}"#).unwrap();
        let m = msg(
            "/desk/fader/1",
            vec![OscArg::Float(0.5), OscArg::String("x".into())],
        );
        message(table, instance, &m, 41).unwrap();
        assert_eq!(
            host.sent,
            vec![("out".to_owned(), OscPacket::Message(m.clone()))]
        );
        assert_eq!(host.osc_replies, vec![(41, OscPacket::Message(m))]);
        assert_eq!(host.counts, vec![("calls".to_owned(), 1)]);
        assert_eq!(
            host.logs,
            vec![(log_level::INFO, r#"init {"k": 1}"#.to_owned())]
        );
        unsafe { h::on_unload(table, instance) };
        assert_eq!(host.logs[1], (log_level::INFO, "bye after 1".to_owned()));
    }

    #[test]
    fn an_empty_config_arrives_as_an_empty_object() {
        let table = checked(&RECORDER);
        let mut host = TestHost::default();
        let instance = create(table, &mut host, "").unwrap();
        assert_eq!(host.logs, vec![(log_level::INFO, "init {}".to_owned())]);
        unsafe { h::on_unload(table, instance) };
    }

    #[test]
    fn a_panic_is_code_2_with_its_message_and_the_instance_keeps_working() {
        let table = checked(&RECORDER);
        let mut host = TestHost::default();
        let instance = create(table, &mut host, "{}").unwrap();
        let err = message(table, instance, &msg("/panic", vec![]), 1).unwrap_err();
        let CallError::Panicked(text) = &err else {
            panic!("expected a panic, got {err:?}")
        };
        assert!(text.ends_with("boom 1"), "{text}");
        assert!(text.starts_with("at plugin-api/src/plugin.rs:"), "{text}");
        assert!(err.is_panic());

        let err = message(table, instance, &msg("/panic_any", vec![]), 1).unwrap_err();
        assert!(
            matches!(&err, CallError::Panicked(t) if t.ends_with("panic with a non-string payload")),
            "{err:?}"
        );

        message(table, instance, &msg("/ok", vec![]), 2).unwrap();
        assert_eq!(host.sent.len(), 1);
        unsafe { h::on_unload(table, instance) };
        assert_eq!(host.logs.last().unwrap().1, "bye after 3");
    }

    #[test]
    fn the_raw_codes_and_buffers_are_as_the_abi_says() {
        let table = checked(&RECORDER);
        let mut host = TestHost::default();
        let instance = create(table, &mut host, "{}").unwrap();
        let on_message = table.on_message.unwrap();
        let bytes = encode_message(&msg("/err", vec![]));
        let mut error = PbBuffer::EMPTY;
        let rc = unsafe { on_message(instance, bytes.as_ptr(), bytes.len(), 0, &mut error) };
        assert_eq!(rc, code::ERROR);
        assert_eq!(unsafe { h::read_buffer(table, error) }, "not this one");

        let bytes = encode_message(&msg("/panic", vec![]));
        let mut error = PbBuffer::EMPTY;
        let rc = unsafe { on_message(instance, bytes.as_ptr(), bytes.len(), 0, &mut error) };
        assert_eq!(rc, code::PANIC);
        assert!(unsafe { h::read_buffer(table, error) }.ends_with("boom 2"));

        let bytes = encode_message(&msg("/ok", vec![]));
        let mut error = PbBuffer::EMPTY;
        let rc = unsafe { on_message(instance, bytes.as_ptr(), bytes.len(), 0, &mut error) };
        assert_eq!(rc, code::OK);
        assert!(error.ptr.is_null(), "error_out untouched on success");

        // A null error_out is tolerated: the code still tells what happened.
        let bytes = encode_message(&msg("/err", vec![]));
        let rc = unsafe {
            on_message(
                instance,
                bytes.as_ptr(),
                bytes.len(),
                0,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, code::ERROR);
        // A null instance is an error, not a crash.
        let rc = unsafe {
            on_message(
                std::ptr::null_mut(),
                bytes.as_ptr(),
                bytes.len(),
                0,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, code::ERROR);
        unsafe { (table.free_buffer.unwrap())(PbBuffer::EMPTY) };
        unsafe { h::on_unload(table, instance) };
    }

    #[test]
    fn bytes_that_are_not_osc_are_a_decode_error() {
        let table = checked(&RECORDER);
        let mut host = TestHost::default();
        let instance = create(table, &mut host, "{}").unwrap();
        for (bytes, expected) in [
            (
                &b"/abc"[..],
                "message is not valid osc: at byte 0: string is not NUL-terminated",
            ),
            (
                &b""[..],
                "message is not valid osc: at byte 0: empty packet",
            ),
            (
                &b"abc\0"[..],
                "message is not valid osc: at byte 0: expected a message address",
            ),
        ] {
            let err = unsafe { h::on_message(table, instance, bytes, 0) }.unwrap_err();
            let CallError::Failed(text) = &err else {
                panic!("expected an error, got {err:?}")
            };
            assert!(text.starts_with(expected), "{text}");
        }
        assert!(host.sent.is_empty());
        unsafe { h::on_unload(table, instance) };
    }

    #[test]
    fn a_bundle_arrives_as_its_messages_in_order() {
        let table = checked(&RECORDER);
        let mut host = TestHost::default();
        let instance = create(table, &mut host, "{}").unwrap();
        let a = msg("/a", vec![OscArg::Int(1)]);
        let b = msg("/b", vec![]);
        let c = msg("/c", vec![OscArg::True]);
        let inner = OscPacket::Bundle(OscBundle {
            timetag: TimeTag::IMMEDIATELY,
            content: vec![OscPacket::Message(b.clone())],
        });
        let bundle = OscPacket::Bundle(OscBundle {
            timetag: TimeTag::IMMEDIATELY,
            content: vec![
                OscPacket::Message(a.clone()),
                inner,
                OscPacket::Message(c.clone()),
            ],
        });
        unsafe { h::on_message(table, instance, &encode(&bundle), 5) }.unwrap();
        let sent: Vec<_> = host.sent.iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(sent, [a, b, c].map(OscPacket::Message));
        unsafe { h::on_unload(table, instance) };
    }

    #[test]
    fn init_errors_and_panics_make_no_instance() {
        let table = checked(&RECORDER);
        let mut host = TestHost::default();
        assert_eq!(
            create(table, &mut host, r#"{"fail": 1}"#).unwrap_err(),
            CallError::Failed("config says fail".into())
        );
        let err = create(table, &mut host, r#"{"panic": 1}"#).unwrap_err();
        assert!(
            matches!(&err, CallError::Panicked(t) if t.ends_with("init panicked")),
            "{err:?}"
        );
        let bad_utf8 = [b'{', 0xff, b'}'];
        let mut instance = std::ptr::null_mut();
        let mut error = PbBuffer::EMPTY;
        let rc = unsafe {
            (table.create.unwrap())(
                &HOST,
                (&mut host as *mut TestHost).cast(),
                bad_utf8.as_ptr(),
                3,
                &mut instance,
                &mut error,
            )
        };
        assert_eq!(rc, code::ERROR);
        assert!(instance.is_null());
        assert!(unsafe { h::read_buffer(table, error) }.starts_with("config is not valid utf-8"));
    }

    #[test]
    fn a_host_of_another_abi_version_is_refused_by_the_plugin() {
        let table = checked(&RECORDER);
        let mut host = TestHost::default();
        let other = HostVtable {
            abi_version: 2,
            ..HOST
        };
        let err = unsafe { h::create(table, &other, (&mut host as *mut TestHost).cast(), "{}") }
            .unwrap_err();
        assert_eq!(
            err,
            CallError::Failed("host ABI version 2, plugin built for version 1".into())
        );
    }

    #[test]
    fn timers_go_through_schedule_and_come_back_as_on_timer() {
        let table = checked(&RECORDER);
        let mut host = TestHost::default();
        let instance = create(table, &mut host, "{}").unwrap();
        message(table, instance, &msg("/timer", vec![]), 0).unwrap();
        assert_eq!(host.timers, vec![(25, 7)]);
        unsafe { h::on_timer(table, instance, 7) }.unwrap();
        assert_eq!(
            host.sent,
            vec![(
                "out".to_owned(),
                OscPacket::Message(msg("/timer", vec![OscArg::Long(7)]))
            )]
        );
        unsafe { h::on_unload(table, instance) };
    }

    #[test]
    fn peer_operations_follow_the_script_rules() {
        let table = checked(&RECORDER);
        let mut host = TestHost::default();
        let instance = create(table, &mut host, "{}").unwrap();
        message(table, instance, &msg("/text", vec![]), 99).unwrap();
        assert_eq!(
            host.byte_replies,
            vec![
                (99, b"PWR ON\r".to_vec()),
                (99, b"a\0b\0".to_vec()),
                (99, b"x".to_vec()),
                (99, vec![1, 2, 255]),
            ]
        );
        assert_eq!(
            host.osc_replies,
            vec![(99, OscPacket::Message(msg("/ack", vec![OscArg::Int(1)])))]
        );
        assert_eq!(
            host.logs.last().unwrap(),
            &(log_level::WARN, "closed true".to_owned())
        );
        unsafe { h::on_unload(table, instance) };
    }

    #[test]
    fn host_refusals_reach_the_plugin_as_errors_naming_the_operation() {
        let table = checked(&RECORDER);
        let mut host = TestHost {
            send_rc: host_code::UNKNOWN,
            ..TestHost::default()
        };
        let instance = create(table, &mut host, "{}").unwrap();
        let err = message(table, instance, &msg("/x", vec![]), 0).unwrap_err();
        assert_eq!(
            err,
            CallError::Failed(r#"send to "out": no such channel or origin"#.into())
        );
        host.send_rc = 17;
        let err = message(table, instance, &msg("/x", vec![]), 0).unwrap_err();
        assert_eq!(
            err,
            CallError::Failed(r#"send to "out": host returned code 17"#.into())
        );
        unsafe { h::on_unload(table, instance) };
    }

    #[test]
    fn a_panic_in_on_unload_or_drop_is_logged_not_propagated() {
        static TABLE: PluginVtable = vtable::<PanicsOnUnload>(c_str("p\0"), c_str("0\0"), true);
        let table = checked(&TABLE);
        let mut host = TestHost::default();
        let instance = create(table, &mut host, "{}").unwrap();
        unsafe { h::on_unload(table, instance) };
        let logs: Vec<_> = host.logs.iter().map(|(l, t)| (*l, t.as_str())).collect();
        assert_eq!(logs.len(), 2, "{logs:?}");
        assert_eq!(logs[0].0, log_level::ERROR);
        assert!(
            logs[0].1.starts_with("on_unload panicked: at ")
                && logs[0].1.ends_with("unload went wrong"),
            "{logs:?}"
        );
        assert!(
            logs[1].1.starts_with("dropping the plugin panicked: at ")
                && logs[1].1.ends_with("drop went wrong"),
            "{logs:?}"
        );
    }

    #[test]
    fn the_loader_checks_refuse_what_they_must() {
        assert_eq!(h::check_abi_version(1), Ok(()));
        assert_eq!(
            h::check_abi_version(2).unwrap_err().to_string(),
            "plugin ABI version 2, this host speaks version 1"
        );
        let (_, info) = unsafe { h::check_vtable(&RECORDER) }.unwrap();
        assert_eq!(
            info,
            h::PluginInfo {
                name: "recorder".into(),
                version: "1.2.3".into()
            }
        );

        let abort = vtable::<Recorder>(c_str("recorder\0"), c_str("1.2.3\0"), false);
        let err = unsafe { h::check_vtable(&abort) }.unwrap_err();
        assert!(matches!(err, AbiError::PanicAbort { .. }));
        assert!(
            err.to_string()
                .starts_with("plugin recorder 1.2.3 was built with panic = \"abort\""),
            "{err}"
        );

        let cases = [
            (
                PluginVtable {
                    abi_version: 3,
                    ..RECORDER
                },
                "plugin table says ABI version 3, but patchbay_plugin_abi_version said 1",
            ),
            (
                PluginVtable {
                    name: std::ptr::null(),
                    ..RECORDER
                },
                "plugin name is null",
            ),
            (
                PluginVtable {
                    version: c"\xff".as_ptr(),
                    ..RECORDER
                },
                "plugin version is not valid utf-8",
            ),
            (
                PluginVtable {
                    name: c"".as_ptr(),
                    ..RECORDER
                },
                "plugin name is empty",
            ),
            (
                PluginVtable {
                    on_timer: None,
                    ..RECORDER
                },
                "plugin table has no on_timer function",
            ),
            (
                PluginVtable {
                    free_buffer: None,
                    ..RECORDER
                },
                "plugin table has no free_buffer function",
            ),
        ];
        for (table, expected) in cases {
            assert_eq!(
                unsafe { h::check_vtable(&table) }.unwrap_err().to_string(),
                expected
            );
        }
        assert_eq!(
            unsafe { h::check_vtable(std::ptr::null()) }.unwrap_err(),
            AbiError::NullVtable
        );
    }

    mod exported {
        use super::Recorder;
        crate::export_plugin!(Recorder, "recorder", env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn export_plugin_generates_the_two_symbols() {
        unsafe extern "C" {
            fn patchbay_plugin_abi_version() -> u32;
            fn patchbay_plugin_entry() -> *const PluginVtable;
        }
        let version = unsafe { patchbay_plugin_abi_version() };
        assert_eq!(h::check_abi_version(version), Ok(()));
        let (table, info) = unsafe { h::check_vtable(patchbay_plugin_entry()) }.unwrap();
        assert_eq!(info.name, "recorder");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(table.panic_unwind, 1);
        let mut host = TestHost::default();
        let instance = create(table, &mut host, "{}").unwrap();
        message(table, instance, &msg("/x", vec![]), 3).unwrap();
        assert_eq!(host.sent.len(), 1);
        unsafe { h::on_unload(table, instance) };
    }
}
