//! # patchbay
//!
//! A show-control host: OSC arrives on channels, is matched against routes, and leaves on other
//! channels, rewritten or answered, or is handed to Rhai scripts and compiled plugins.
//!
//! # Layout
//!
//! - [`config`]: YAML in two stages, raw serde structs then a validated [`config::Plan`]; every error
//!   with file, YAML path and line:column.
//! - [`channel`]: one module per transport, each a config struct, an output handle and an async `run`
//!   that hands what arrives to the dispatcher: `udp`, `multicast`, `broadcast` (sharing `datagram`),
//!   `tcp` (its cuts of a byte stream in `framing`) and `peer` (peerpy's protocol), the two
//!   connection kinds sharing `stream` (connection links, queues, the read loop); `held` gathers the
//!   datagram sends of a script's or plugin's thread while it works through a backlog.
//! - [`dispatch`]: decode -> route table -> targets, shared by every transport; the switchboard (table +
//!   outputs) is swapped atomically.
//! - [`route`]: the route table; pure code (no sockets, no clock).
//! - [`scheduler`]: holds time-tagged bundle elements until they are due.
//! - [`script`]: Rhai scripts on their own threads, fed by bounded queues, with limits and hot reload;
//!   each handler's `msg` holds only the keys it reads (`script::usage`).
//! - [`plugin`]: compiled plugins loaded from private copies, each route target an instance on its
//!   own thread behind the C ABI of `patchbay-plugin-api`.
//! - [`reload`] and [`watch`]: what an edited config changes, and noticing the edit (and script and
//!   plugin files).
//! - [`metrics`]: metric names and handles, and the Prometheus scrape endpoint.
//! - [`ready`]: the ready line and ready file.
//! - [`runtime`]: building the host from a plan, applying edits, running it until shutdown.
//! - [`tools`]: `patchbay send`, `patchbay dump` and `patchbay peers`.
//!
//! The OSC vocabulary (types, codec, address patterns) lives in `patchbay-plugin-api`, shared with
//! plugin authors.
//!
//! # Data flow
//!
//! ```text
//! socket -> channel run (datagram receive, or a connection's read loop + framing / peer headers)
//!        -> dispatch::Dispatcher (decode, zero-copy)
//!        -> route::RouteTable::find (literal hash, then precompiled patterns, in file order)
//!        -> targets: forward (original bytes, or re-addressed) / reply / script queue / plugin queue
//!        -> channel Output::send / reply (a direct non-blocking write; a stream connection queues
//!           only what its socket cannot take at once; a script or plugin thread with a backlog
//!           sends its datagrams together, `channel::held`) -> socket
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
