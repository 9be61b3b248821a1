//! Rhai scripts end to end (issue 5): real script files, the real binary, real sockets on 127.0.0.1.
//!
//! Every API function is exercised for its observable effect: bytes at a test socket (answers to the
//! socket that sent the trigger, sends to a `lights` receiver), log lines on stderr, state seen by a
//! later call, return values echoed back with `peer.send_osc`. The send_osc table of
//! `host/src/script/values.rs` (and the README) is checked row by row, byte by byte. Hot reload,
//! limits, the queue, timers, bundles at their time, persistence, `patchbay check` and the script
//! metrics are covered too.
//!
//! Script files live in a [`ScriptDir`] and the config names them by absolute path (the harness
//! creates its folder when the process starts, after the scripts must exist); the tests that need
//! scripts beside the config (relative paths, a restart on the same folder, `check`) use [`Show`].
//!
//! Rhai refuses deeply nested expressions in debug builds (see
//! `nested_show_logic_compiles_and_runs`), so the scripts here keep each function flat and call
//! small helpers instead.

mod script_support;
mod support;

use std::fs;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use patchbay_plugin_api::osc::{decode, Midi, OscArg, OscMessage, OscPacket, Rgba, TimeTag};
use patchbay_tests::{assert_bytes, osc, Patchbay, Receiver, RECV_TIMEOUT};

use script_support::*;
use support::{wait_metrics, Metrics};

const CALLS: &str = "patchbay_script_calls_total";
const ERRORS: &str = "patchbay_script_errors_total";
const DROPS: &str = "patchbay_script_queue_drops_total";
const SECONDS_COUNT: &str = "patchbay_script_call_seconds_count";

/// Starts a show with `desk`, `lights` (to `lights`), scripts in `dir` and `routes`.
fn start(dir: &ScriptDir, lights: &Receiver, scripts_extra: &str, routes: &str) -> Patchbay {
    Patchbay::start(&config(dir, lights.addr(), scripts_extra, routes))
}

fn metrics_addr(pb: &Patchbay) -> SocketAddr {
    pb.ready()
        .metrics
        .expect("the config has a metrics endpoint")
}

/// The metric `name` of script `script` (plus `extra` labels).
fn script_metric(m: &Metrics, name: &str, script: &str, extra: &[(&str, &str)]) -> Option<f64> {
    let mut labels = vec![("script", script)];
    labels.extend_from_slice(extra);
    m.get(name, &labels)
}

/// Everything `rx` receives until `last` holds for a datagram (returned last), within the bound.
fn recv_until(rx: &Receiver, what: &str, last: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + RECV_TIMEOUT;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((bytes, _)) = rx.recv_timeout(left) else {
            panic!(
                "{what}: not there within {RECV_TIMEOUT:?}; got: {:?}",
                got.iter()
                    .map(|b: &Vec<u8>| describe(b))
                    .collect::<Vec<_>>()
            );
        };
        let done = last(&bytes);
        got.push(bytes);
        if done {
            return got;
        }
    }
}

fn address_is(bytes: &[u8], address: &str) -> bool {
    matches!(decode(bytes), Ok(OscPacket::Message(m)) if m.address == address)
}

// ---------------------------------------------------------------------------------------------------
// msg and peer

const FIELDS_RHAI: &str = r#"
fn on_message(msg) {
    let p = msg.peer;
    p.send_osc("/fields", [msg.address, msg.type_tags, msg.channel, msg.route, msg.received_ms, msg.parts, msg.captures]);
    p.send_osc("/peer", [p.address, p.port, p.hostname, p.owner]);
}

fn two(msg, peer) {
    peer.send_osc("/two", [peer.port, peer.owner, msg.address]);
}
"#;

/// `msg.address/type_tags/channel/route/received_ms/parts/captures` and `peer.address/port/hostname/
/// owner` carry what arrived; a `(msg, peer)` handler gets the peer as its 2nd parameter; answers
/// leave from the socket that received the message.
#[test]
fn msg_fields_and_peer_describe_the_message() {
    let dir = ScriptDir::new();
    dir.write("fields.rhai", FIELDS_RHAI);
    let lights = Receiver::new();
    let routes = script_route("fields", "/in/*/{go,stop}", &dir.name("fields.rhai"), None)
        + &script_route("two-params", "/two", &dir.name("fields.rhai"), Some("two"));
    let pb = start(&dir, &lights, "", &routes);
    let desk = pb.addr("desk");
    let client = Client::new(desk);

    let before = now_ms();
    client.send("/in/7/go", &[OscArg::Int(1), OscArg::Float(0.5), s("x")]);
    let (fields, from) = client.expect("/fields");
    let after = now_ms();
    assert_eq!(from, desk, "the answer leaves from the desk socket");
    let m = message_of(&fields);
    let received = int_arg(&m, 4);
    assert!(
        (before..=after).contains(&received),
        "received_ms {received} not within [{before}, {after}]"
    );
    let expected = osc::message(
        "/fields",
        &[
            s("/in/7/go"),
            s("ifs"),
            s("desk"),
            s("fields"),
            OscArg::Long(received),
            OscArg::Array(vec![s("in"), s("7"), s("go")]),
            OscArg::Array(vec![s("7"), s("go")]),
        ],
    );
    assert_bytes(&fields, &expected, "msg fields");

    let (peer, from) = client.expect("/peer");
    assert_eq!(from, desk);
    let expected = osc::message(
        "/peer",
        &[
            s("127.0.0.1"),
            OscArg::Int(i32::from(client.addr().port())),
            s("localhost"),
            s("desk"),
        ],
    );
    assert_bytes(&peer, &expected, "peer.address/port/hostname/owner");

    let two = client.call("/two", &[]);
    let expected = osc::message(
        "/two",
        &[
            OscArg::Int(i32::from(client.addr().port())),
            s("desk"),
            s("/two"),
        ],
    );
    assert_bytes(&two, &expected, "fn two(msg, peer)");
}

const ARGS_RHAI: &str = r#"
fn on_message(msg) {
    let types = [];
    for a in msg.args { types.push(type_of(a)); }
    msg.peer.send_osc("/types", types);
    msg.peer.send_osc("/tags", [msg.type_tags]);
    msg.peer.send_osc("/echo", msg.args);
    msg.peer.send_osc("/checks", checks(msg.args));
}

fn checks(a) {
    let c = [];
    c.push(a[0] == 7);
    c.push(a[1] == 5_000_000_000);
    c.push(a[2] == 9);
    c.push(a[3] == 1.5);
    c.push(a[4] == 0.1);
    c.push(a[5] == "str");
    c.push(a[6] == "sym");
    c.push(a[7].len() == 3 && a[7][0] == 1 && a[7][2] == 255);
    c.push(a[8] == true);
    c.push(a[9] == false);
    c.push(a[10] == ());
    c.push(a[11].is_infinite); // Rhai compares infinities oddly (`inf == inf` is false)
    c.push(a[12] == 'z');
    c.push(a[13] == [1, "in"]);
    c.push(a[14].seconds == 1 && a[14].fraction == 2);
    c.push(a[15].port == 0 && a[15].status == 144 && a[15].data1 == 60 && a[15].data2 == 127);
    c.push(a[16].r == 255 && a[16].g == 128 && a[16].b == 0 && a[16].a == 255);
    c
}
"#;

fn every_type() -> Vec<OscArg> {
    vec![
        OscArg::Int(7),
        OscArg::Long(5_000_000_000),
        OscArg::Long(9),
        OscArg::Float(1.5),
        OscArg::Double(0.1),
        s("str"),
        OscArg::Symbol("sym".into()),
        OscArg::Blob(vec![1, 2, 255]),
        OscArg::True,
        OscArg::False,
        OscArg::Nil,
        OscArg::Inf,
        OscArg::Char('z'),
        OscArg::Array(vec![OscArg::Int(1), s("in")]),
        OscArg::Time(TimeTag::new(1, 2)),
        OscArg::Midi(Midi {
            port: 0,
            status: 144,
            data1: 60,
            data2: 127,
        }),
        OscArg::Rgba(Rgba {
            r: 255,
            g: 128,
            b: 0,
            a: 255,
        }),
    ]
}

/// A message with every OSC type reaches `msg.args` as the documented Rhai values (types, values
/// and `msg.type_tags`), and re-sending `msg.args` gives the documented bytes back.
#[test]
fn args_of_every_osc_type_become_rhai_values() {
    let dir = ScriptDir::new();
    dir.write("args.rhai", ARGS_RHAI);
    let lights = Receiver::new();
    let routes = script_route("args", "/args", &dir.name("args.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));

    client.send("/args", &every_type());
    let types = client.expect("/types").0;
    let names = [
        "i64", "i64", "i64", "f64", "f64", "string", "string", "blob", "bool", "bool", "()", "f64",
        "char", "array", "map", "map", "map",
    ];
    let expected = osc::message("/types", &names.map(s));
    assert_bytes(&types, &expected, "type_of each argument");

    let tags = client.expect("/tags").0;
    assert_bytes(
        &tags,
        &osc::message("/tags", &[s("ihhfdsSbTFNIc[is]tmr")]),
        "msg.type_tags",
    );

    // Re-sent with the default rules: h that fits becomes i, d becomes f, S becomes s, +inf is I.
    let echo = client.expect("/echo").0;
    let mut back = every_type();
    back[2] = OscArg::Int(9);
    back[4] = OscArg::Float(0.1_f64 as f32);
    back[6] = s("sym");
    assert_bytes(&echo, &osc::message("/echo", &back), "msg.args re-sent");

    let checks = client.expect("/checks").0;
    let m = message_of(&checks);
    let failed: Vec<usize> = m
        .args
        .iter()
        .enumerate()
        .filter(|(_, a)| **a != OscArg::True)
        .map(|(i, _)| i)
        .collect();
    assert!(
        failed.is_empty() && m.args.len() == 17,
        "value checks failed for arguments {failed:?}: {m:?}"
    );
}

// ---------------------------------------------------------------------------------------------------
// The send_osc table

const TABLE_RHAI: &str = r#"
fn values() {
    [
        5, -7, 5_000_000_000, 1.5, 1e39, 0.0 / 0.0, 1.0 / 0.0, -1.0 / 0.0, true, false, (), "abc",
        blob(2, 0x41), 'x', [1, 2.5],
        #{seconds: 1, fraction: 2}, #{port: 0, status: 144, data1: 60, data2: 127}, #{r: 255, g: 128, b: 0, a: 255},
        int32(5), int64(5), float32(1.5), double(1.5), symbol("abc"), impulse(), nil(),
        timetag(1, 2), midi(0, 144, 60, 127), rgba(255, 128, 0, 255)
    ]
}

fn options() {
    [
        (),
        #{as_bundle: false, use_non_standard_types: true, use_64bit_precision: false},
        #{use_non_standard_types: false},
        #{use_64bit_precision: true},
        #{use_non_standard_types: false, use_64bit_precision: true},
        (),
        #{as_bundle: true},
    ]
}

fn on_message(msg) {
    let column = msg.args[0];
    let value = values()[msg.args[1]];
    switch column {
        0 => plain(msg.peer, value),
        5 => to_lights(msg.peer, value),
        _ => with_options(msg.peer, value, options()[column]),
    }
}

fn plain(peer, value) {
    try { peer.send_osc("/cell", [value]); } catch (e) { report(peer, e); }
}

fn with_options(peer, value, opts) {
    try { peer.send_osc("/cell", [value], opts); } catch (e) { report(peer, e); }
}

fn to_lights(peer, value) {
    try { send("lights", "/cell", [value]); peer.send_osc("/sent", []); } catch (e) { report(peer, e); }
}

fn report(peer, e) {
    let text = `${e}`;
    peer.send_osc("/error", [text]);
}
"#;

/// What a table cell sends: one argument, or an error whose message contains the text.
#[derive(Debug, Clone)]
enum Cell {
    Arg(OscArg),
    Err(&'static str),
}

use Cell::{Arg, Err as Error};

const NO_FIT_32: &str = "does not fit in 32 bits and use_non_standard_types is false";
const NO_FIT_F32: &str = "does not fit in a 32-bit float";
const NON_STANDARD: &str = "non-standard OSC type and use_non_standard_types is false";
const NEEDS_NON_STANDARD: &str = "use_64bit_precision needs use_non_standard_types";

/// The rows of the table in values.rs / the README: (value as written in TABLE_RHAI, default,
/// `use_non_standard_types: false`, `use_64bit_precision: true`). The last column (both) is an error
/// on every row.
#[rustfmt::skip]
fn table() -> Vec<(&'static str, Cell, Cell, Cell)> {
    use OscArg::{Array, Double, Float, Inf, Int, Long};
    let midi = OscArg::Midi(Midi { port: 0, status: 144, data1: 60, data2: 127 });
    let rgba = OscArg::Rgba(Rgba { r: 255, g: 128, b: 0, a: 255 });
    let time = OscArg::Time(TimeTag::new(1, 2));
    let row = |v, a, b, c| (v, a, b, c);
    let same = |v, a: OscArg| (v, Arg(a.clone()), Arg(a.clone()), Arg(a));
    vec![
        row("5",             Arg(Int(5)),               Arg(Int(5)),             Arg(Long(5))),
        row("-7",            Arg(Int(-7)),              Arg(Int(-7)),            Arg(Long(-7))),
        row("5_000_000_000", Arg(Long(5_000_000_000)),  Error(NO_FIT_32),        Arg(Long(5_000_000_000))),
        row("1.5",           Arg(Float(1.5)),           Arg(Float(1.5)),         Arg(Double(1.5))),
        row("1e39",          Error(NO_FIT_F32),         Error(NO_FIT_F32),       Arg(Double(1e39))),
        row("0.0 / 0.0",     Arg(Float(f32::NAN)),      Arg(Float(f32::NAN)),    Arg(Double(f64::NAN))),
        row("1.0 / 0.0",     Arg(Inf),                  Arg(Float(f32::INFINITY)), Arg(Inf)),
        row("-1.0 / 0.0",    Arg(Float(f32::NEG_INFINITY)), Arg(Float(f32::NEG_INFINITY)), Arg(Double(f64::NEG_INFINITY))),
        row("true",          Arg(OscArg::True),         Arg(Int(1)),             Arg(OscArg::True)),
        row("false",         Arg(OscArg::False),        Arg(Int(0)),             Arg(OscArg::False)),
        row("()",            Arg(OscArg::Nil),          Arg(Int(0)),             Arg(OscArg::Nil)),
        same("\"abc\"",      s("abc")),
        same("blob(2, 0x41)", OscArg::Blob(vec![0x41, 0x41])),
        row("'x'",           Arg(OscArg::Char('x')),    Arg(s("x")),             Arg(OscArg::Char('x'))),
        row("[1, 2.5]",      Arg(Array(vec![Int(1), Float(2.5)])), Error(NON_STANDARD), Arg(Array(vec![Long(1), Double(2.5)]))),
        row("#{seconds: 1, fraction: 2}", Arg(time.clone()), Error(NON_STANDARD), Arg(time.clone())),
        row("#{port: 0, status: 144, data1: 60, data2: 127}", Arg(midi.clone()), Error(NON_STANDARD), Arg(midi.clone())),
        row("#{r: 255, g: 128, b: 0, a: 255}", Arg(rgba.clone()), Error(NON_STANDARD), Arg(rgba.clone())),
        same("int32(5)",      Int(5)),
        same("int64(5)",      Long(5)),
        same("float32(1.5)",  Float(1.5)),
        same("double(1.5)",   Double(1.5)),
        same("symbol(\"abc\")", OscArg::Symbol("abc".into())),
        same("impulse()",     Inf),
        same("nil()",         OscArg::Nil),
        same("timetag(1, 2)", time),
        same("midi(0, 144, 60, 127)", midi),
        same("rgba(255, 128, 0, 255)", rgba),
    ]
}

fn is_nan_arg(arg: &OscArg) -> bool {
    matches!(arg, OscArg::Float(f) if f.is_nan()) || matches!(arg, OscArg::Double(d) if d.is_nan())
}

/// `got` is exactly `/cell` with `arg` (a NaN may be any NaN: the table does not say which, so
/// for NaN the type tag and length are exact and the value must be a NaN).
fn assert_cell_bytes(got: &[u8], arg: &OscArg, what: &str) {
    let expected = osc::message("/cell", std::slice::from_ref(arg));
    if is_nan_arg(arg) {
        let m = message_of(got);
        assert_eq!(
            got.len(),
            expected.len(),
            "{what}: length\n{}",
            osc::hexdump(got)
        );
        assert_eq!(got[..12], expected[..12], "{what}: address and type tag");
        assert!(
            m.args.len() == 1
                && is_nan_arg(&m.args[0])
                && std::mem::discriminant(&m.args[0]) == std::mem::discriminant(arg),
            "{what}: expected a NaN of the same type, got {m:?}"
        );
    } else {
        assert_bytes(got, &expected, what);
    }
}

/// Every row of the send_osc table, in every column, byte by byte through `peer.send_osc` (no
/// options, explicit defaults, `use_non_standard_types: false`, `use_64bit_precision: true`, both,
/// and `as_bundle: true`) and through `send` to a channel (the default rules); error cells send
/// nothing and raise an error saying why.
#[test]
fn send_osc_table_every_row_byte_by_byte() {
    let dir = ScriptDir::new();
    dir.write("table.rhai", TABLE_RHAI);
    let lights = Receiver::new();
    let routes = script_route("table", "/cell", &dir.name("table.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));
    let rows = table();
    // The README's table and this one list the same values (a row added there must be added here).
    assert_eq!(rows.len(), 28, "rows in the table");
    // The script's values() lists the rows' values in the same order.
    let mut at = 0;
    for (value, ..) in &rows {
        let found = TABLE_RHAI[at..].find(value);
        at +=
            found.unwrap_or_else(|| panic!("`{value}` is not in values() in order")) + value.len();
    }
    let mut errors = 0;
    for (row, (value, default, no_nst, wide)) in rows.iter().enumerate() {
        let both = Error(NEEDS_NON_STANDARD);
        let columns: [(&str, &Cell); 7] = [
            ("no options", default),
            ("explicit default options", default),
            ("use_non_standard_types: false", no_nst),
            ("use_64bit_precision: true", wide),
            ("both", &both),
            ("send(\"lights\", ...)", default),
            ("as_bundle: true", default),
        ];
        for (column, (name, cell)) in columns.iter().enumerate() {
            let what = format!("row `{value}`, column {name}");
            let got = client.call(
                "/cell",
                &[OscArg::Int(column as i32), OscArg::Int(row as i32)],
            );
            match cell {
                Error(text) => {
                    errors += 1;
                    let m = message_of(&got);
                    assert_eq!(m.address, "/error", "{what}: expected an error, got {m:?}");
                    assert!(
                        str_arg(&m, 0).contains(text),
                        "{what}: the error {m:?} does not say {text:?}"
                    );
                }
                Arg(arg) if column == 5 => {
                    assert_bytes(&got, &osc::message("/sent", &[]), &what);
                    let (sent, _) = lights.expect(&what);
                    assert_cell_bytes(&sent, arg, &what);
                }
                Arg(arg) if column == 6 => {
                    // A bundle, time tag "immediately", holding the one message.
                    assert_eq!(
                        &got[..16],
                        &osc::bundle(TimeTag::IMMEDIATELY, &[])[..],
                        "{what}: bundle header"
                    );
                    let len = u32::from_be_bytes(got[16..20].try_into().unwrap()) as usize;
                    assert_eq!(
                        len,
                        got.len() - 20,
                        "{what}: one element filling the bundle"
                    );
                    assert_cell_bytes(&got[20..], arg, &what);
                }
                Arg(arg) => assert_cell_bytes(&got, arg, &what),
            }
        }
    }
    // Every error cell raised a runtime error (caught by the script) and nothing else went out.
    // Both options: 28; without non-standard types: 6; `1e39` in the four default-rule columns: 4.
    assert_eq!(errors, 28 + 6 + 4, "error cells in the table");
    let last = client.call("/cell", &[OscArg::Int(5), OscArg::Int(0)]);
    assert_bytes(&last, &osc::message("/sent", &[]), "the script still sends");
    let (sent, _) = lights.expect("the last send");
    assert_bytes(
        &sent,
        &osc::message("/cell", &[OscArg::Int(5)]),
        "nothing but the sends reached lights",
    );
    // A few cells by hand, independent of any encoder.
    let hand = [
        (0, 0, "2f63656c6c000000 2c690000 00000005"),
        (3, 2, "2f63656c6c000000 2c680000 000000012a05f200"),
        (2, 8, "2f63656c6c000000 2c690000 00000001"),
        (0, 13, "2f63656c6c000000 2c630000 00000078"),
        (0, 6, "2f63656c6c000000 2c490000"),
        (3, 3, "2f63656c6c000000 2c640000 3ff8000000000000"),
    ];
    for (column, row, hex) in hand {
        let got = client.call("/cell", &[OscArg::Int(column), OscArg::Int(row)]);
        assert_bytes(
            &got,
            &osc::unhex(hex),
            &format!("row {row}, column {column} by hand"),
        );
    }
}
