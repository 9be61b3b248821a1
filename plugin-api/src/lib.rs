//! What a patchbay plugin author depends on.
//!
//! - [`osc`]: the OSC vocabulary shared by the host and plugins: argument and packet types, a strict
//!   codec with zero-copy views for the forward path, time tags, and the OSC address-pattern matcher.
//!   It has no tokio, no sockets and no clock of its own (the current time is always passed in), so
//!   plugins can use it without pulling the host's runtime in.
//! - [`abi`]: the plugin C ABI (version 1): the `#[repr(C)]` tables of `extern "C"` functions that
//!   cross between the host and a plugin library, their return codes and ownership rules, and
//!   [`abi::host`], the checks and call helpers the host's loader uses. `include/patchbay_plugin.h`
//!   is the same ABI for C.
//! - [`plugin`]: the safe layer for Rust authors: the [`plugin::Plugin`] trait, the
//!   [`plugin::Context`] of host callbacks, and [`export_plugin!`], which generates the exported
//!   symbols with every call guarded by `catch_unwind`.
//!
//! Plugins get no tokio and no tracing or metrics globals of their own: logging, metrics, timers
//! and sending all go through the host callbacks.

pub mod abi;
pub mod osc;
pub mod plugin;
