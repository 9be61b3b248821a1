//! The forward path allocates nothing: `PacketRef::parse` (recursively, bundles included),
//! walking bundle elements, `arg_refs`, and `encode_readdressed` into a buffer with capacity.
//! Its own test binary because it installs a counting global allocator.

use patchbay_plugin_api::osc::decode::ArgRef;
use patchbay_plugin_api::osc::encode::encode_readdressed;
use patchbay_plugin_api::osc::{
    encode, DecodeLimits, OscArg, OscBundle, OscMessage, OscPacket, PacketRef, TimeTag,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // Per thread, so the test harness's own threads do not disturb the count.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCS.with(|c| c.get())
}

fn forward(bytes: &[u8], out: &mut Vec<u8>) -> usize {
    let mut seen = 0;
    let packet = PacketRef::parse(bytes, &DecodeLimits::default()).expect("valid");
    walk(&packet, out, &mut seen);
    seen
}

fn walk(p: &PacketRef<'_>, out: &mut Vec<u8>, seen: &mut usize) {
    match p {
        PacketRef::Message(m) => {
            for a in m.arg_refs() {
                if let ArgRef::Str(s) | ArgRef::Symbol(s) = a {
                    *seen += s.len();
                }
                *seen += 1;
            }
            encode_readdressed(m, "/forwarded/to/here", out);
        }
        PacketRef::Bundle(b) => {
            for e in b.elements() {
                walk(&e, out, seen);
            }
        }
    }
}

#[test]
fn parse_iterate_and_readdress_allocate_nothing() {
    let msg = OscMessage::new(
        "/mixer/ch/1/fader",
        vec![
            OscArg::Float(0.75),
            OscArg::String("lead vox".into()),
            OscArg::Symbol("sym".into()),
            OscArg::Blob(vec![1, 2, 3]),
            OscArg::Array(vec![OscArg::Int(1), OscArg::Array(vec![OscArg::True])]),
            OscArg::Time(TimeTag::IMMEDIATELY),
        ],
    );
    let packet = OscPacket::Bundle(OscBundle {
        timetag: TimeTag::new(3_900_000_000, 0),
        content: vec![
            OscPacket::Message(msg.clone()),
            OscPacket::Bundle(OscBundle {
                timetag: TimeTag::IMMEDIATELY,
                content: vec![
                    OscPacket::Message(msg),
                    OscPacket::Message(OscMessage::new("/x", vec![])),
                ],
            }),
        ],
    });
    let bytes = encode(&packet);
    let mut out = Vec::with_capacity(4096);

    let before = allocations();
    let seen = forward(&bytes, &mut out);
    let after = allocations();

    assert_eq!(after - before, 0, "the forward path allocated");
    assert!(seen > 0);
    // Sanity: the counter does count.
    let v = vec![1u8; 10];
    assert!(allocations() > after);
    drop(v);
    // And the output holds the three re-addressed messages.
    let n = out
        .windows(18)
        .filter(|w| w == b"/forwarded/to/here")
        .count();
    assert_eq!(n, 3);
}
