//! OSC encoding. (SKELETON)

use super::decode::MessageRef;
use super::types::OscPacket;

pub fn encode(packet: &OscPacket) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(packet, &mut out);
    out
}

/// Appends the encoding of `packet` to `out`.
pub fn encode_into(packet: &OscPacket, out: &mut Vec<u8>) {
    let _ = (packet, out);
    todo!()
}

/// Appends `message` with its address replaced by `address`; the type tags and arguments are copied
/// as they are (no re-encoding). A message without type tags gets an empty `,` tag string.
pub fn encode_readdressed(message: &MessageRef<'_>, address: &str, out: &mut Vec<u8>) {
    let _ = (message, address, out);
    todo!()
}
