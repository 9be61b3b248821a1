//! The plugin C ABI, version 1: what crosses between the host and a plugin library.
//!
//! `plugin-api/include/patchbay_plugin.h` declares the same thing for C; a test compares the two
//! layouts field by field. Only C types cross: integers, raw pointers and the three `#[repr(C)]`
//! structs below. Messages cross as OSC-encoded bytes (pointer and length), never as Rust values,
//! because host and plugin are built by different compilers at different times and each links its
//! own copy of std (its own allocator, its own panic runtime).
//!
//! # Loading order
//!
//! 1. The host resolves [`ABI_VERSION_SYMBOL`] and calls it. Anything other than [`ABI_VERSION`]
//!    is refused before any other function of the library is called, since the rest of this
//!    module may not describe that library at all.
//! 2. It resolves [`ENTRY_SYMBOL`] and calls it once; the returned [`PluginVtable`] is static data
//!    of the library, valid for as long as the library stays loaded (patchbay never unloads one).
//! 3. [`host::check_vtable`] checks the table: version again, name, version string, every
//!    function present, and `panic_unwind == 1` (a `panic=abort` plugin aborts the whole host on
//!    its first panic, so it is refused).
//!
//! # Ownership
//!
//! Whatever one side allocates, the same side frees. Host memory passed to the plugin (OSC bytes,
//! config, channel names, the [`HostVtable`]) is borrowed for the duration of that one call; the
//! host vtable and its `ctx` stay valid from `create` until `on_unload` returns. Plugin memory handed
//! to the host ([`PbBuffer`] error messages) is read by the host and given back through the
//! plugin's own [`PluginVtable::free_buffer`].
//!
//! # Calls
//!
//! Calls into one instance are serialized by the host (never two at once, possibly from different
//! threads one after the other). Host callbacks may only be called by the plugin from inside a
//! call the host made into it, on that thread; the host never re-enters the same instance from
//! inside a callback (a `send` that routes back to the plugin is queued).

use std::ffi::{c_char, c_void};

/// The ABI version this crate describes. A change to any struct or function signature below
/// bumps it.
pub const ABI_VERSION: u32 = 1;

/// `uint32_t patchbay_plugin_abi_version(void)`: the first function the host calls.
pub const ABI_VERSION_SYMBOL: &str = "patchbay_plugin_abi_version";
/// `const PbPluginVtable *patchbay_plugin_entry(void)`.
pub const ENTRY_SYMBOL: &str = "patchbay_plugin_entry";

/// Return codes of the plugin's `create`, `on_message` and `on_timer`.
pub mod code {
    /// Success; `error_out` is untouched.
    pub const OK: i32 = 0;
    /// The plugin reports an error; the message is in `error_out`.
    pub const ERROR: i32 = 1;
    /// The plugin panicked and the panic was caught; the panic message is in `error_out`.
    pub const PANIC: i32 = 2;
}

/// Return codes of the host callbacks `send`, `reply_osc`, `reply_bytes` and `schedule`.
pub mod host_code {
    pub const OK: i32 = 0;
    /// No such channel, or the origin is no longer known to the host.
    pub const UNKNOWN: i32 = 1;
    /// The host refused the request: bytes that are not one valid OSC packet, a channel that
    /// cannot send, too many pending timers.
    pub const REFUSED: i32 = 2;
    /// Accepted but dropped: a full queue or a failed send.
    pub const DROPPED: i32 = 3;
}

/// `level` of [`HostVtable::log`].
pub mod log_level {
    pub const ERROR: u32 = 1;
    pub const WARN: u32 = 2;
    pub const INFO: u32 = 3;
    pub const DEBUG: u32 = 4;
}

/// Bytes allocated by the plugin and handed to the host, which gives them back through the
/// plugin's [`PluginVtable::free_buffer`]. `ptr` is null for "no bytes"; `cap` is the plugin's
/// own bookkeeping (a Rust plugin's `Vec` capacity) and means nothing to the host.
#[repr(C)]
#[derive(Debug)]
pub struct PbBuffer {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl PbBuffer {
    /// What the host puts in `error_out` before a call, so an untouched buffer is recognisable.
    pub const EMPTY: PbBuffer = PbBuffer {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };

    /// Hands a `Vec` over; only [`PbBuffer::into_vec`] in the same library may take it back.
    pub fn from_vec(bytes: Vec<u8>) -> PbBuffer {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        PbBuffer {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }

    /// Takes back a buffer made by [`PbBuffer::from_vec`].
    ///
    /// # Safety
    /// `self` must come from [`PbBuffer::from_vec`] in this same library (same allocator), not be
    /// freed yet, and be unchanged; or have a null `ptr`.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: guaranteed by the caller: these are the raw parts of a Vec from this allocator.
        unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
    }
}

/// `int32_t (*send)(void *ctx, const uint8_t *channel, size_t channel_len, const uint8_t *osc, size_t len)`:
/// sends one OSC packet (message or bundle) to the channel named by the UTF-8 `channel`.
pub type SendFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    channel: *const u8,
    channel_len: usize,
    osc: *const u8,
    len: usize,
) -> i32;
/// Answers `origin` (the Peer of the message) with bytes: `reply_osc` with one OSC packet,
/// `reply_bytes` with raw bytes sent as they are.
pub type ReplyFn =
    unsafe extern "C" fn(ctx: *mut c_void, origin: u64, bytes: *const u8, len: usize) -> i32;
/// Closes the connection of `origin`: 1 closed, 0 not (UDP has no connection).
pub type CloseFn = unsafe extern "C" fn(ctx: *mut c_void, origin: u64) -> i32;
/// A UTF-8 log line at a [`log_level`], tagged by the host with the plugin's name.
pub type LogFn = unsafe extern "C" fn(ctx: *mut c_void, level: u32, msg: *const u8, len: usize);
/// Adds `value` to the plugin's counter called `name` (UTF-8).
pub type CountFn =
    unsafe extern "C" fn(ctx: *mut c_void, name: *const u8, name_len: usize, value: u64);
/// Calls the instance's `on_timer(timer)` once, `delay_ms` from now. Timer ids are the plugin's
/// own; scheduling the same id twice gives two calls.
pub type ScheduleFn = unsafe extern "C" fn(ctx: *mut c_void, delay_ms: u64, timer: u64) -> i32;

/// What the host hands to each instance at `create`. Every function receives the `ctx` that came
/// with it. The table and `ctx` stay valid until `on_unload` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostVtable {
    pub abi_version: u32,
    pub send: Option<SendFn>,
    pub reply_osc: Option<ReplyFn>,
    pub reply_bytes: Option<ReplyFn>,
    pub close: Option<CloseFn>,
    pub log: Option<LogFn>,
    pub count: Option<CountFn>,
    pub schedule: Option<ScheduleFn>,
}

/// Makes one instance. `config_json` is the route's `config:` map as a UTF-8 JSON object (`{}`
/// without one). On success writes the instance pointer to `instance_out` and returns 0.
pub type CreateFn = unsafe extern "C" fn(
    host: *const HostVtable,
    host_ctx: *mut c_void,
    config_json: *const u8,
    config_len: usize,
    instance_out: *mut *mut c_void,
    error_out: *mut PbBuffer,
) -> i32;
/// One OSC packet for the instance. `origin` is the host's opaque token for where it came from;
/// the plugin may keep it to reply later (it stays usable while the host remembers the origin).
pub type OnMessageFn = unsafe extern "C" fn(
    instance: *mut c_void,
    osc: *const u8,
    len: usize,
    origin: u64,
    error_out: *mut PbBuffer,
) -> i32;
/// A timer the instance scheduled is due.
pub type OnTimerFn =
    unsafe extern "C" fn(instance: *mut c_void, timer: u64, error_out: *mut PbBuffer) -> i32;
/// The last call for an instance: it says goodbye (it may still use the host callbacks) and
/// frees itself. The host never uses the instance pointer again.
pub type OnUnloadFn = unsafe extern "C" fn(instance: *mut c_void);
/// Frees a buffer this plugin handed out. A null `ptr` is a no-op.
pub type FreeBufferFn = unsafe extern "C" fn(buffer: PbBuffer);

/// The plugin's table, returned by [`ENTRY_SYMBOL`]. Static data of the library.
///
/// The functions are `Option`s because a C plugin can leave a slot NULL and a null `fn` pointer
/// is undefined behaviour in Rust; [`host::check_vtable`] refuses a table with a missing one.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PluginVtable {
    pub abi_version: u32,
    /// Static NUL-terminated UTF-8.
    pub name: *const c_char,
    /// Static NUL-terminated UTF-8.
    pub version: *const c_char,
    /// 1 if panics inside the plugin unwind (and are therefore caught by its shims); 0 for a
    /// Rust plugin built with `panic = "abort"`. C plugins set 1: C code does not unwind.
    pub panic_unwind: u32,
    pub create: Option<CreateFn>,
    pub on_message: Option<OnMessageFn>,
    pub on_timer: Option<OnTimerFn>,
    pub on_unload: Option<OnUnloadFn>,
    pub free_buffer: Option<FreeBufferFn>,
}

// SAFETY: the two pointers point to immutable static strings and the rest is plain data, so a
// vtable can live in a `static` and be read from any thread.
unsafe impl Sync for PluginVtable {}
unsafe impl Send for PluginVtable {}

/// Borrows `len` bytes at `ptr`; a null `ptr` or zero `len` is the empty slice (building a slice
/// from a null pointer is undefined behaviour even with length 0, and C callers pass NULL for
/// "nothing").
///
/// # Safety
/// Unless null or `len == 0`, `ptr` must point to `len` readable bytes that stay unchanged for `'a`.
pub unsafe fn borrowed<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// What the host needs on its side of the ABI: checking a plugin's table and calling it with the
/// error buffers handled. The loader itself (finding, copying and opening libraries) is the
/// host's; nothing here opens a library.
pub mod host {
    use super::*;
    use std::ffi::CStr;

    /// A plugin whose table passed [`check_vtable`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct PluginInfo {
        pub name: String,
        pub version: String,
    }

    /// Why a library is refused. Each message says what differs.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum AbiError {
        #[error("plugin ABI version {found}, this host speaks version {expected}")]
        Version { found: u32, expected: u32 },
        #[error("{ENTRY_SYMBOL} returned a null table")]
        NullVtable,
        #[error("{ENTRY_SYMBOL} returned a misaligned table")]
        Misaligned,
        #[error("plugin table says ABI version {found}, but {ABI_VERSION_SYMBOL} said {expected}")]
        VtableVersion { found: u32, expected: u32 },
        #[error("plugin {field} is null")]
        NullString { field: &'static str },
        #[error("plugin {field} is not valid utf-8")]
        NotUtf8 { field: &'static str },
        #[error("plugin name is empty")]
        EmptyName,
        #[error("plugin {name} {version} was built with panic = \"abort\": one panic would abort the whole host; build it with panic = \"unwind\" (the default)")]
        PanicAbort { name: String, version: String },
        #[error("plugin table has no {0} function")]
        MissingFunction(&'static str),
    }

    /// The outcome of a call into a plugin that did not return 0.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum CallError {
        #[error("{0}")]
        Failed(String),
        #[error("panicked: {0}")]
        Panicked(String),
        #[error("unknown return code {code}: {message}")]
        UnknownCode { code: i32, message: String },
    }

    impl CallError {
        pub fn is_panic(&self) -> bool {
            matches!(self, CallError::Panicked(_))
        }
    }

    /// Step 1 of loading: the value `patchbay_plugin_abi_version()` returned.
    pub fn check_abi_version(found: u32) -> Result<(), AbiError> {
        if found == ABI_VERSION {
            Ok(())
        } else {
            Err(AbiError::Version {
                found,
                expected: ABI_VERSION,
            })
        }
    }

    /// Step 3 of loading: checks the table `patchbay_plugin_entry()` returned.
    ///
    /// # Safety
    /// `vtable` must be what the entry function of a library that passed [`check_abi_version`]
    /// returned (null is detected); the library must stay loaded for `'a`.
    pub unsafe fn check_vtable<'a>(
        vtable: *const PluginVtable,
    ) -> Result<(&'a PluginVtable, PluginInfo), AbiError> {
        if vtable.is_null() {
            return Err(AbiError::NullVtable);
        }
        if !vtable.is_aligned() {
            return Err(AbiError::Misaligned);
        }
        // SAFETY: non-null and aligned; the caller vouches it is the plugin's static table.
        let table = unsafe { &*vtable };
        if table.abi_version != ABI_VERSION {
            return Err(AbiError::VtableVersion {
                found: table.abi_version,
                expected: ABI_VERSION,
            });
        }
        // SAFETY: the ABI says these are static NUL-terminated strings (or null, checked).
        let name = unsafe { c_string(table.name, "name") }?;
        let version = unsafe { c_string(table.version, "version") }?;
        if name.is_empty() {
            return Err(AbiError::EmptyName);
        }
        if table.panic_unwind != 1 {
            return Err(AbiError::PanicAbort { name, version });
        }
        let missing = [
            ("create", table.create.is_none()),
            ("on_message", table.on_message.is_none()),
            ("on_timer", table.on_timer.is_none()),
            ("on_unload", table.on_unload.is_none()),
            ("free_buffer", table.free_buffer.is_none()),
        ];
        if let Some((field, _)) = missing.iter().find(|(_, none)| *none) {
            return Err(AbiError::MissingFunction(field));
        }
        Ok((table, PluginInfo { name, version }))
    }

    unsafe fn c_string(ptr: *const c_char, field: &'static str) -> Result<String, AbiError> {
        if ptr.is_null() {
            return Err(AbiError::NullString { field });
        }
        // SAFETY: non-null; NUL-terminated per the ABI.
        let s = unsafe { CStr::from_ptr(ptr) };
        s.to_str()
            .map(str::to_owned)
            .map_err(|_| AbiError::NotUtf8 { field })
    }

    /// Copies a plugin buffer into a `String` (invalid UTF-8 replaced) and gives the buffer back
    /// to the plugin's `free_buffer`.
    ///
    /// # Safety
    /// `buffer` must be [`PbBuffer::EMPTY`] or come from this plugin and not be freed yet.
    pub unsafe fn read_buffer(vtable: &PluginVtable, buffer: PbBuffer) -> String {
        if buffer.ptr.is_null() {
            return String::new();
        }
        // SAFETY: the plugin wrote `len` bytes at `ptr`.
        let text =
            String::from_utf8_lossy(unsafe { borrowed(buffer.ptr, buffer.len) }).into_owned();
        if let Some(free) = vtable.free_buffer {
            // SAFETY: the plugin's own buffer, handed back exactly once.
            unsafe { free(buffer) };
        }
        text
    }

    /// Turns a return code and its error buffer into a `Result`, freeing the buffer.
    ///
    /// # Safety
    /// As [`read_buffer`].
    pub unsafe fn outcome(
        vtable: &PluginVtable,
        code: i32,
        error: PbBuffer,
    ) -> Result<(), CallError> {
        // SAFETY: forwarded from the caller.
        let message = unsafe { read_buffer(vtable, error) };
        match code {
            code::OK => Ok(()),
            code::ERROR => Err(CallError::Failed(message)),
            code::PANIC => Err(CallError::Panicked(message)),
            code => Err(CallError::UnknownCode { code, message }),
        }
    }

    /// Calls `create`. Returns the instance pointer to pass to the other calls.
    ///
    /// # Safety
    /// `vtable` passed [`check_vtable`]; `host` and `host_ctx` stay valid until `on_unload` of
    /// this instance returns.
    pub unsafe fn create(
        vtable: &PluginVtable,
        host: &HostVtable,
        host_ctx: *mut c_void,
        config_json: &str,
    ) -> Result<*mut c_void, CallError> {
        let Some(create) = vtable.create else {
            return Err(CallError::Failed("plugin has no create function".into()));
        };
        let mut instance = std::ptr::null_mut();
        let mut error = PbBuffer::EMPTY;
        // SAFETY: valid pointers for the duration of the call; the caller vouches for the rest.
        let code = unsafe {
            create(
                host,
                host_ctx,
                config_json.as_ptr(),
                config_json.len(),
                &mut instance,
                &mut error,
            )
        };
        // SAFETY: `error` is EMPTY or the plugin's.
        unsafe { outcome(vtable, code, error) }?;
        if instance.is_null() {
            return Err(CallError::Failed("create returned no instance".into()));
        }
        Ok(instance)
    }

    /// Calls `on_message` with one OSC packet.
    ///
    /// # Safety
    /// `instance` came from [`create`] with this `vtable` and was not unloaded; no other call to
    /// it runs at the same time.
    pub unsafe fn on_message(
        vtable: &PluginVtable,
        instance: *mut c_void,
        osc: &[u8],
        origin: u64,
    ) -> Result<(), CallError> {
        let Some(on_message) = vtable.on_message else {
            return Err(CallError::Failed(
                "plugin has no on_message function".into(),
            ));
        };
        let mut error = PbBuffer::EMPTY;
        // SAFETY: see the function's contract.
        let code = unsafe { on_message(instance, osc.as_ptr(), osc.len(), origin, &mut error) };
        // SAFETY: `error` is EMPTY or the plugin's.
        unsafe { outcome(vtable, code, error) }
    }

    /// Calls `on_timer`.
    ///
    /// # Safety
    /// As [`on_message`].
    pub unsafe fn on_timer(
        vtable: &PluginVtable,
        instance: *mut c_void,
        timer: u64,
    ) -> Result<(), CallError> {
        let Some(on_timer) = vtable.on_timer else {
            return Err(CallError::Failed("plugin has no on_timer function".into()));
        };
        let mut error = PbBuffer::EMPTY;
        // SAFETY: see the function's contract.
        let code = unsafe { on_timer(instance, timer, &mut error) };
        // SAFETY: `error` is EMPTY or the plugin's.
        unsafe { outcome(vtable, code, error) }
    }

    /// Calls `on_unload`; `instance` is gone afterwards.
    ///
    /// # Safety
    /// As [`on_message`], and `instance` is never used again.
    pub unsafe fn on_unload(vtable: &PluginVtable, instance: *mut c_void) {
        if let Some(on_unload) = vtable.on_unload {
            // SAFETY: see the function's contract.
            unsafe { on_unload(instance) };
        }
    }
}
