//! `kind: peer` channels: patchbay as a peer of peerpy 1.2.2 (Python), wire-compatible with its code
//! (where peerpy's documentation and code disagree, these modules follow the code).
//!
//! What is here so far is the part that needs no sockets of a connection, pure and unit-tested; the
//! channel itself (listening, offers, connecting, streaming) builds on the TCP channel core.
//!
//! - [`wire`]: the 128-byte `TYPE|key=value&...|||` header: parsing hostile input without panics,
//!   building what patchbay sends, and the facts of the protocol (handshake, streaming, PINGs).
//! - [`values`]: payloads by data type (`json` envelopes, `raw` pickles, `bytes`) and values as OSC
//!   arguments and back.
//! - [`pickle`]: a small unpickler for plain data that runs nothing, refuses globals and objects, and
//!   counts the decoded size (memo references included) before building anything.
//! - [`discovery`]: the UDP `PING`/`PONG` responder (answering the real source, never the address
//!   written in the datagram) and the pieces `patchbay peers` uses.

pub mod channel;
pub mod discovery;
pub mod pickle;
pub mod values;
pub mod wire;
