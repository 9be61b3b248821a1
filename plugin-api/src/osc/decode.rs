//! Strict OSC decoding. (SKELETON: the codec helper replaces the bodies; signatures are the contract.)

use super::timetag::TimeTag;
use super::types::{OscArg, OscPacket};

/// Caps that keep hostile packets cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Bundles nested deeper than this are refused (a top-level bundle is depth 1).
    pub max_bundle_depth: usize,
    /// `[` nested deeper than this is refused.
    pub max_array_depth: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_bundle_depth: 8, max_array_depth: 8 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {kind}")]
pub struct DecodeError {
    /// Byte offset into the whole packet where the problem is.
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("empty packet")]
    Empty,
    #[error("packet size {0} is not a multiple of 4")]
    Misaligned(usize),
    #[error("{0}")]
    Other(String),
}

/// A validated packet, borrowed from the datagram it arrived in.
#[derive(Debug, Clone, Copy)]
pub enum PacketRef<'a> {
    Message(MessageRef<'a>),
    Bundle(BundleRef<'a>),
}

/// A validated message: address, type tags and argument bytes, all borrowed.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// The whole encoded message.
    pub raw: &'a [u8],
    pub address: &'a str,
    /// Type tags without the leading comma; empty when the message has none (old OSC 1.0 senders).
    pub type_tags: &'a str,
    /// The encoded type-tag string including comma and padding (empty when absent).
    pub raw_type_tags: &'a [u8],
    /// The encoded arguments.
    pub raw_args: &'a [u8],
}

/// A validated bundle.
#[derive(Debug, Clone, Copy)]
pub struct BundleRef<'a> {
    pub raw: &'a [u8],
    pub timetag: TimeTag,
    /// The element bytes (size-prefixed elements), already validated.
    pub raw_elements: &'a [u8],
}

impl<'a> PacketRef<'a> {
    /// Validates the whole packet (recursively) and returns a view. Allocation-free.
    pub fn parse(bytes: &'a [u8], limits: &DecodeLimits) -> Result<PacketRef<'a>, DecodeError> {
        let _ = (bytes, limits);
        todo!()
    }

    pub fn raw(&self) -> &'a [u8] {
        match self {
            PacketRef::Message(m) => m.raw,
            PacketRef::Bundle(b) => b.raw,
        }
    }

    pub fn to_owned_packet(&self) -> OscPacket {
        todo!()
    }
}

impl<'a> BundleRef<'a> {
    /// The elements, in order. The bundle was validated by `parse`, so this cannot fail.
    pub fn elements(&self) -> BundleElements<'a> {
        BundleElements { rest: self.raw_elements }
    }
}

pub struct BundleElements<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for BundleElements<'a> {
    type Item = PacketRef<'a>;
    fn next(&mut self) -> Option<PacketRef<'a>> {
        let _ = self.rest;
        todo!()
    }
}

impl<'a> MessageRef<'a> {
    /// Decodes the arguments into owned values.
    pub fn args(&self) -> Vec<OscArg> {
        todo!()
    }
}

/// Decodes a packet into owned values with the default limits.
pub fn decode(bytes: &[u8]) -> Result<OscPacket, DecodeError> {
    Ok(PacketRef::parse(bytes, &DecodeLimits::default())?.to_owned_packet())
}
