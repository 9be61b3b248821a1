//! # patchbay
//!
//! A show-control host: OSC arrives on channels, is matched against routes, and leaves on other
//! channels, rewritten, answered, or (later) handed to scripts and plugins.
//!
//! # Layout
//!
//! - [`config`]: YAML in two stages, raw serde structs then a validated [`config::Plan`]; every error
//!   with file, YAML path and line:column.
//! - [`channel`]: one module per transport (`udp` ...), each a config struct, an output handle and an
//!   async `run` that receives and hands datagrams to the dispatcher.
//! - [`dispatch`]: decode -> route table -> targets, shared by every transport; the switchboard (table +
//!   outputs) is swapped atomically.
//! - [`route`]: the route table; pure code (no sockets, no clock).
//! - [`metrics`]: metric names and handles, and the Prometheus scrape endpoint.
//! - [`ready`]: the ready line and ready file.
//! - [`runtime`]: building the host from a plan, running it until shutdown.
//! - [`tools`]: `patchbay send` and `patchbay dump`.
//!
//! The OSC vocabulary (types, codec, address patterns) lives in `patchbay-plugin-api`, shared with
//! plugin authors.
//!
//! # Data flow
//!
//! ```text
//! socket -> channel::udp::run -> dispatch::Dispatcher::datagram (decode, zero-copy)
//!        -> route::RouteTable::find (literal hash, then precompiled patterns, in file order)
//!        -> targets: forward (original bytes, or re-addressed) / reply
//!        -> channel Output::send (direct non-blocking socket write, no queue hop) -> socket
//! ```

pub mod channel;
pub mod config;
pub mod dispatch;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod plugin;
pub mod ready;
pub mod reload;
pub mod route;
pub mod runtime;
pub mod scheduler;
pub mod script;
pub mod tools;
pub mod watch;

pub use runtime::{run, RunError, RunOptions};
