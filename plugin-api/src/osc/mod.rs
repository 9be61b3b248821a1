//! The OSC 1.0/1.1 vocabulary: types, codec, time tags and address patterns.
//!
//! - [`types`]: owned messages, bundles and arguments.
//! - [`mod@decode`]: strict validation and zero-copy views ([`PacketRef`]) plus owned decoding.
//! - [`mod@encode`]: encoding owned packets, and re-addressing a message without re-encoding its
//!   arguments.
//! - [`timetag`]: NTP time tags <-> system time, and "immediately".
//! - [`pattern`]: the OSC address-pattern matcher, spec-exact and linear in the address.

pub mod decode;
pub mod encode;
pub mod pattern;
pub mod timetag;
pub mod types;

pub use decode::{
    decode, decode_with_limits, ArgRef, ArgRefs, BundleElements, BundleRef, DecodeError,
    DecodeErrorKind, DecodeLimits, MessageRef, PacketRef,
};
pub use encode::{
    encode, encode_blob_message, encode_into, encode_message, encode_message_into,
    encode_readdressed, encoded_len,
};
pub use pattern::{Captures, Pattern, PatternError};
pub use timetag::TimeTag;
pub use types::{Midi, OscArg, OscBundle, OscMessage, OscPacket, Rgba};
