//! Decode + route: any datagram must either be refused with an error or be routed, never panic, and
//! whatever the codec accepts must re-encode to the same bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use patchbay::fuzzing::{route_packet, sample_table};
use patchbay::route::RouteTable;
use patchbay_plugin_api::osc::{encode, DecodeLimits, PacketRef};

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(sample_table)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = PacketRef::parse(data, &DecodeLimits::default()) {
        assert_eq!(encode(&packet.to_owned_packet()), data, "accepted packets re-encode byte-exact");
        route_packet(table(), &packet);
    }
});
