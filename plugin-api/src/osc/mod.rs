//! The OSC 1.0/1.1 vocabulary: types, codec, time tags and address patterns.
//!
//! - [`types`]: owned messages, bundles and arguments.
//! - [`decode`]: strict validation and zero-copy views ([`decode::PacketRef`]) plus owned decoding.
//! - [`encode`]: encoding owned packets, and re-addressing a message without re-encoding its arguments.
//! - [`timetag`]: NTP time tags <-> system time, and "immediately".
//! - [`pattern`]: the OSC address-pattern matcher, spec-exact and linear in the address.

pub mod decode;
pub mod encode;
pub mod pattern;
pub mod timetag;
pub mod types;

pub use decode::{decode, DecodeError, DecodeErrorKind, DecodeLimits, MessageRef, PacketRef};
pub use encode::{encode, encode_into};
pub use pattern::{Pattern, PatternError};
pub use timetag::TimeTag;
pub use types::{Midi, OscArg, OscBundle, OscMessage, OscPacket, Rgba};
