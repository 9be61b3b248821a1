//! TCP framings: read-size independence, no panics, encode/decode round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    patchbay::fuzzing::check_framing(data);
});
