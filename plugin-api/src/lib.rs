//! What a patchbay plugin author depends on.
//!
//! - [`osc`]: the OSC vocabulary shared by the host and plugins: argument and packet types, a strict
//!   codec with zero-copy views for the forward path, time tags, and the OSC address-pattern matcher.
//!   It has no tokio, no sockets and no clock of its own (the current time is always passed in), so
//!   plugins can use it without pulling the host's runtime in.
//!
//! The plugin C ABI joins this crate in a later step.

pub mod osc;
