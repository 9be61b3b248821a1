//! Decode + route: any datagram must either be refused with an error or be routed, never panic, and
//! whatever the codec accepts must re-encode to the same bytes (a message without a type-tag string
//! gains an empty `,` one, and is then stable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    patchbay::fuzzing::check_datagram(data);
});
