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

const FORMS_RHAI: &str = r#"
fn on_message(msg) {
    let p = msg.peer;
    switch msg.args[0] {
        "list" => list(p),
        "list_bundle" => list_bundle(p),
        "list_wide" => list_wide(p),
        "list_standard" => list_standard(p),
        "one_bundle" => one_bundle(p),
        "one_bundle_wide" => one_bundle_wide(p),
        "returns" => returns(p),
        "errors" => errors(p),
    }
}

fn list(p) { p.send_osc([["/a", [1]], ["/b", ["x", 2.5]], ["/c"]]); }
fn list_bundle(p) { p.send_osc([["/a", [1]], ["/b", [true]]], #{as_bundle: true}); }
fn list_wide(p) { p.send_osc([["/a", [1, 1.5]]], #{use_64bit_precision: true}); }
fn list_standard(p) { p.send_osc([["/a", [true, ()]], ["/b", ['c']]], #{use_non_standard_types: false}); }
fn one_bundle(p) { p.send_osc("/one", [1], #{as_bundle: true}); }
fn one_bundle_wide(p) { p.send_osc("/one", [1], #{as_bundle: true, use_64bit_precision: true}); }

fn returns(p) {
    let one = p.send_osc("/n", [1]);
    let list = [["/n", [1]], ["/n", []]];
    let two = p.send_osc(list);
    let list = [["/n", [1]]];
    let bundle = p.send_osc(list, #{as_bundle: true});
    p.send_osc("/returned", [one, two, bundle]);
}

fn errors(p) {
    error_0(p);
    error_1(p);
    error_2(p);
    error_3(p);
    error_4(p);
    error_5(p);
    error_6(p);
    error_7(p);
    error_8(p);
    error_9(p);
    p.send_osc("/errors_done", []);
}

fn error_0(p) { try { p.send_osc([5]); } catch (e) { report(p, e); } }
fn error_1(p) { let list = [["/a", 5]]; try { p.send_osc(list); } catch (e) { report(p, e); } }
fn error_2(p) { let list = [[5, []]]; try { p.send_osc(list); } catch (e) { report(p, e); } }
fn error_3(p) { try { p.send_osc("no-slash", []); } catch (e) { report(p, e); } }
fn error_4(p) { try { p.send_osc("/x", [1], #{as_bundel: true}); } catch (e) { report(p, e); } }
fn error_5(p) { try { p.send_osc("/x", [1], #{as_bundle: 1}); } catch (e) { report(p, e); } }
fn error_6(p) { try { p.send_osc("/x", ["a\x00b"]); } catch (e) { report(p, e); } }
fn error_7(p) { try { p.send_osc("/x", [#{a: 1}]); } catch (e) { report(p, e); } }
fn error_8(p) { try { p.send_osc("/x", [Fn("report")]); } catch (e) { report(p, e); } }
fn error_9(p) { try { p.send_osc("/x", [int32(3_000_000_000)]); } catch (e) { report(p, e); } }

fn report(p, e) {
    let text = `${e}`;
    p.send_osc("/error", [text]);
}
"#;

/// The list form sends one datagram per message, or one bundle (time tag "immediately") with
/// `as_bundle: true`; the options apply to every message; `send_osc` returns the bytes sent; bad
/// lists, addresses, options and values are errors that say what is wrong.
#[test]
fn send_osc_list_form_bundles_and_errors() {
    let dir = ScriptDir::new();
    dir.write("forms.rhai", FORMS_RHAI);
    let lights = Receiver::new();
    let routes = script_route("forms", "/form", &dir.name("forms.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));
    let m = |a: &str, args: &[OscArg]| osc::message(a, args);
    let immediately = |elements: &[Vec<u8>]| osc::bundle(TimeTag::IMMEDIATELY, elements);

    client.send("/form", &[s("list")]);
    let a = m("/a", &[OscArg::Int(1)]);
    let b = m("/b", &[s("x"), OscArg::Float(2.5)]);
    client.rx.expect_bytes(&a, "list: /a");
    client.rx.expect_bytes(&b, "list: /b");
    client
        .rx
        .expect_bytes(&m("/c", &[]), "list: /c without values");

    client.send("/form", &[s("list_bundle")]);
    let bundle = immediately(&[a.clone(), m("/b", &[OscArg::True])]);
    client.rx.expect_bytes(&bundle, "list with as_bundle: true");

    client.send("/form", &[s("list_wide")]);
    let wide = m("/a", &[OscArg::Long(1), OscArg::Double(1.5)]);
    client
        .rx
        .expect_bytes(&wide, "list with use_64bit_precision");

    client.send("/form", &[s("list_standard")]);
    let standard = m("/a", &[OscArg::Int(1), OscArg::Int(0)]);
    client
        .rx
        .expect_bytes(&standard, "list without non-standard types: /a");
    client
        .rx
        .expect_bytes(&m("/b", &[s("c")]), "list without non-standard types: /b");

    client.send("/form", &[s("one_bundle")]);
    let one = immediately(&[m("/one", &[OscArg::Int(1)])]);
    client
        .rx
        .expect_bytes(&one, "one message with as_bundle: true");

    client.send("/form", &[s("one_bundle_wide")]);
    let one = immediately(&[m("/one", &[OscArg::Long(1)])]);
    client
        .rx
        .expect_bytes(&one, "as_bundle with use_64bit_precision");

    client.send("/form", &[s("returns")]);
    let n1 = m("/n", &[OscArg::Int(1)]);
    let n0 = m("/n", &[]);
    for (expected, what) in [(&n1, "one"), (&n1, "list 1"), (&n0, "list 2")] {
        client.rx.expect_bytes(expected, what);
    }
    let bundled = immediately(std::slice::from_ref(&n1));
    client.rx.expect_bytes(&bundled, "bundle");
    let lengths = [n1.len(), n1.len() + n0.len(), bundled.len()].map(|n| OscArg::Int(n as i32));
    client
        .rx
        .expect_bytes(&m("/returned", &lengths), "send_osc returns the bytes sent");

    client.send("/form", &[s("errors")]);
    let got = client.until("the error cases", |b| address_is(b, "/errors_done"));
    let errors: Vec<String> = got[..got.len() - 1]
        .iter()
        .map(|b| {
            let e = message_of(b);
            assert_eq!(e.address, "/error", "an error case sent something: {e:?}");
            str_arg(&e, 0).to_string()
        })
        .collect();
    let wanted = [
        "message 1 must be [address, [values]], found i64",
        "the values must be an array",
        "must start with its address string",
        "OSC address `no-slash` must start with `/`",
        "unknown send_osc option `as_bundel`",
        "send_osc option `as_bundle` has type `int`; it must be true or false",
        "string has a NUL byte at byte 1",
        "map #{a} is not an OSC value",
        "cannot send a value of type",
        "int32(3000000000) is out of range",
    ];
    assert_eq!(
        errors.len(),
        wanted.len(),
        "one error per case: {errors:#?}"
    );
    for (got, want) in errors.iter().zip(wanted) {
        assert!(got.contains(want), "error {got:?} does not say {want:?}");
    }
}

/// `peer.send_osc` with a large int without non-standard types, and with 64-bit precision without
/// non-standard types, are runtime errors logged as FILE:LINE:COLUMN with the reason; nothing is
/// sent, the error is counted, and the script keeps answering.
#[test]
fn send_osc_error_rows_are_logged_with_position_and_the_script_keeps_working() {
    let dir = ScriptDir::new();
    let big = "fn on_message(msg) {\n    msg.peer.send_osc(\"/big\", [5_000_000_000], #{use_non_standard_types: false});\n}\n";
    let wide = "fn on_message(msg) {\n    msg.peer.send_osc(\"/wide\", [5], #{use_non_standard_types: false, use_64bit_precision: true});\n}\n";
    dir.write("big.rhai", &format!("{big}{PING_FN}"));
    dir.write("wide.rhai", &format!("{wide}{PING_FN}"));
    let lights = Receiver::new();
    // Two clients, one per script: each pings its own script.
    let routes = script_route("big", "/big", &dir.name("big.rhai"), None)
        + &script_route("wide", "/wide", &dir.name("wide.rhai"), None)
        + &script_route("ping", "/ping", &dir.name("big.rhai"), Some("ping"));
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));

    for (file, text, address, reason) in [
        ("big.rhai", big, "/big", NO_FIT_32),
        ("wide.rhai", wide, "/wide", NEEDS_NON_STANDARD),
    ] {
        client.send(address, &[]);
        let (line, column) = rhai_position(text, "send_osc");
        let at = format!("{}:{line}:{column}: `on_message` failed", dir.name(file));
        let stderr = pb.wait_stderr(RECV_TIMEOUT, |t| t.contains(&at));
        let logged = lines_with(&stderr, &at).join("\n");
        assert!(
            logged.contains(reason),
            "the log line does not say why: {logged}"
        );
        assert!(logged.contains("ERROR"), "logged as an error: {logged}");
    }
    // Nothing was sent for either, and the scripts keep running.
    client.send("/big", &[]);
    assert_eq!(
        client.before_pong(1),
        Vec::<Vec<u8>>::new(),
        "the failed sends sent nothing"
    );
    assert_eq!(client.before_pong(2), Vec::<Vec<u8>>::new());
    let m = wait_metrics(metrics_addr(&pb), "runtime errors", |m| {
        script_metric(m, ERRORS, &dir.name("big.rhai"), &[("kind", "runtime")]) == Some(2.0)
            && script_metric(m, ERRORS, &dir.name("wide.rhai"), &[("kind", "runtime")]) == Some(1.0)
    });
    assert_eq!(
        script_metric(&m, ERRORS, &dir.name("big.rhai"), &[("kind", "limit")]),
        Some(0.0)
    );
}

// ---------------------------------------------------------------------------------------------------
// send, send_bundle, raw sends

const SEND_RHAI: &str = r#"
fn on_message(msg) {
    let a = send("lights", "/s/args", [1, "two", 3.5, int64(4)]);
    let b = send("lights", "/s/none");
    let now = [["/b/now", [1]], ["/b/also", []]];
    let c = send_bundle("lights", 0, now);
    let later = [["/b/later", [2]]];
    let d = send_bundle("lights", 300, later);
    msg.peer.send_osc("/sent", [a, b, c, d]);
}

fn unknown(msg) {
    try { send("nope", "/x", []); } catch (e) { report(msg.peer, e); }
    try { send("lights", "no-slash", []); } catch (e) { report(msg.peer, e); }
    try { send("lights", "/x", [5_000_000_000, 1e39]); } catch (e) { report(msg.peer, e); }
}

fn report(p, e) {
    let text = `${e}`;
    p.send_osc("/error", [text]);
}
"#;

/// `send(channel, address, [args])` and `send(channel, address)` reach the channel's destination
/// with the default type rules; `send_bundle` with 0 is a bundle "immediately", with a delay a bundle
/// time-tagged that far ahead; both return the bytes sent; an unknown channel or a bad address is an
/// error.
#[test]
fn send_and_send_bundle_reach_the_channel() {
    let dir = ScriptDir::new();
    dir.write("send.rhai", SEND_RHAI);
    let lights = Receiver::new();
    let routes = script_route("send", "/send", &dir.name("send.rhai"), None)
        + &script_route(
            "unknown",
            "/unknown",
            &dir.name("send.rhai"),
            Some("unknown"),
        );
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));

    let before = SystemTime::now();
    client.send("/send", &[]);
    let args = osc::message(
        "/s/args",
        &[
            OscArg::Int(1),
            s("two"),
            OscArg::Float(3.5),
            OscArg::Long(4),
        ],
    );
    let none = osc::message("/s/none", &[]);
    let now = osc::bundle(
        TimeTag::IMMEDIATELY,
        &[
            osc::message("/b/now", &[OscArg::Int(1)]),
            osc::message("/b/also", &[]),
        ],
    );
    let (first, from) = lights.expect("send with args");
    assert_bytes(&first, &args, "send with args");
    assert_eq!(
        Some(from.port()),
        pb.channel("lights").local.map(|a| a.port()),
        "sent from the lights channel's socket"
    );
    lights.expect_bytes(&none, "send without args");
    lights.expect_bytes(&now, "send_bundle(_, 0, _)");
    let (later, _) = lights.expect("send_bundle(_, 300, _)");
    let after = SystemTime::now();
    let later_message = osc::message("/b/later", &[OscArg::Int(2)]);
    assert_eq!(
        &later[16..],
        &osc::bundle(TimeTag::IMMEDIATELY, std::slice::from_ref(&later_message))[16..],
        "the delayed bundle's contents"
    );
    let tag = TimeTag::from_be_bytes(later[8..16].try_into().unwrap());
    let lo = TimeTag::after(before, Duration::from_millis(299));
    let hi = TimeTag::after(after, Duration::from_millis(301));
    assert!(
        lo.to_unix_nanos() <= tag.to_unix_nanos() && tag.to_unix_nanos() <= hi.to_unix_nanos(),
        "the time tag is not 300 ms after the send: {tag:?} not in [{lo:?}, {hi:?}]"
    );
    let sent = client.expect("/sent").0;
    let lengths = [args.len(), none.len(), now.len(), later.len()].map(|n| OscArg::Int(n as i32));
    assert_bytes(
        &sent,
        &osc::message("/sent", &lengths),
        "send and send_bundle return the bytes sent",
    );

    client.send("/unknown", &[]);
    let wanted = [
        "no channel named `nope`",
        "OSC address `no-slash` must start with `/`",
        "argument 2: 1e39 does not fit in a 32-bit float",
    ];
    for want in wanted {
        let m = message_of(&client.expect(want).0);
        assert!(
            m.address == "/error" && str_arg(&m, 0).contains(want),
            "expected an error saying {want:?}, got {m:?}"
        );
    }
    // The failed sends sent nothing: the next thing at lights is the next /send's first message.
    client.send("/send", &[]);
    lights.expect_bytes(&args, "nothing reached lights from the failed sends");
}

const RAW_RHAI: &str = r#"
fn on_message(msg) {
    let p = msg.peer;
    let b = blob(2, 0x43);
    let n1 = p.send_bytes(["AB", 0, 255, b, 'd']);
    let n2 = p.send(["a", "bc"]);
    let n3 = p.send(["x", "y"], "");
    let n4 = p.send(["PWR ON"], "\r\n");
    let closed = p.close();
    p.send_osc("/raw", [n1, n2, n3, n4, closed]);
}

fn errors(msg) {
    try { msg.peer.send_bytes([256]); } catch (e) { report(msg.peer, e); }
    try { msg.peer.send_bytes([1.5]); } catch (e) { report(msg.peer, e); }
    try { msg.peer.send([1]); } catch (e) { report(msg.peer, e); }
    msg.peer.send_osc("/errors_done", []);
}

fn report(p, e) {
    let text = `${e}`;
    p.send_osc("/error", [text]);
}
"#;

/// `peer.send_bytes` sends strings, byte values, blobs and chars raw and concatenated;
/// `peer.send` appends a NUL to each string by default, the given terminator otherwise, nothing for
/// `""`; `peer.close()` is false on UDP; each returns what it did; all leave from the receiving socket.
#[test]
fn send_bytes_send_and_close_answer_raw() {
    let dir = ScriptDir::new();
    dir.write("raw.rhai", RAW_RHAI);
    let lights = Receiver::new();
    let routes = script_route("raw", "/raw", &dir.name("raw.rhai"), None)
        + &script_route(
            "raw-errors",
            "/raw/errors",
            &dir.name("raw.rhai"),
            Some("errors"),
        );
    let pb = start(&dir, &lights, "", &routes);
    let desk = pb.addr("desk");
    let client = Client::new(desk);

    client.send("/raw", &[]);
    let expected: [&[u8]; 4] = [b"AB\x00\xffCCd", b"a\0bc\0", b"xy", b"PWR ON\r\n"];
    for (i, bytes) in expected.iter().enumerate() {
        let from = client.rx.expect_bytes(bytes, &format!("raw send {i}"));
        assert_eq!(from, desk, "raw sends leave from the desk socket");
    }
    let lengths = expected.map(|b| OscArg::Int(b.len() as i32));
    let mut args = lengths.to_vec();
    args.push(OscArg::False);
    client.rx.expect_bytes(
        &osc::message("/raw", &args),
        "returned lengths and close() == false",
    );

    client.send("/raw/errors", &[]);
    let got = client.until("raw errors", |b| address_is(b, "/errors_done"));
    let texts: Vec<String> = got[..got.len() - 1]
        .iter()
        .map(|b| str_arg(&message_of(b), 0).to_string())
        .collect();
    let wanted = [
        "send_bytes item at index 0 is 256, not a byte",
        "send_bytes item at index 0 has type `float`",
        "send item at index 0 has type `int`; send takes strings only",
    ];
    assert_eq!(texts.len(), wanted.len(), "{texts:#?}");
    for (got, want) in texts.iter().zip(wanted) {
        assert!(got.contains(want), "error {got:?} does not say {want:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// state, logs, time

const STATE_RHAI: &str = r#"
fn on_message(msg) {
    let key = msg.args[0];
    switch msg.captures[0] {
        "set" => set(key, msg.args[1]),
        "dot" => dot(msg.args[1]),
        "get" => msg.peer.send_osc("/value", [state[key]]),
        "dot_get" => msg.peer.send_osc("/value", [state.dotted]),
        "keys" => keys(msg.peer),
        "key_types" => key_types(msg.peer),
        "contains" => msg.peer.send_osc("/contains", [state.contains(key)]),
        "remove" => msg.peer.send_osc("/removed", [state.remove(key)]),
        "clear" => state.clear(),
    }
}

fn set(key, value) { state[key] = value; }
fn dot(value) { state.dotted = value; }

fn keys(p) {
    let k = state.keys();
    k.sort();
    p.send_osc("/keys", [k]);
}

fn key_types(p) {
    let types = [];
    for k in state.keys() { types.push(type_of(k)); }
    p.send_osc("/key_types", types);
}
"#;

/// `state[key] = v` and `state.key = v` store, `state[key]`/`state.key` read (unknown keys are
/// `()`), `keys()`, `contains`, `remove` (returns the value) and `clear` work, across calls.
#[test]
fn state_indexer_dot_keys_contains_remove_clear() {
    let dir = ScriptDir::new();
    dir.write("state.rhai", STATE_RHAI);
    let lights = Receiver::new();
    let routes = script_route("state", "/state/*", &dir.name("state.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));
    let call = |op: &str, args: &[OscArg]| client.call_msg(&format!("/state/{op}"), args);
    let value = |args: Vec<OscArg>| OscMessage::new("/value", args);

    client.send("/state/set", &[s("cue"), OscArg::Int(12)]);
    client.send("/state/set", &[s("name"), s("house")]);
    client.send("/state/dot", &[s(""), OscArg::Float(0.5)]);
    assert_eq!(call("get", &[s("cue")]), value(vec![OscArg::Int(12)]));
    assert_eq!(call("get", &[s("name")]), value(vec![s("house")]));
    assert_eq!(call("dot_get", &[s("")]), value(vec![OscArg::Float(0.5)]));
    assert_eq!(
        call("get", &[s("dotted")]),
        value(vec![OscArg::Float(0.5)]),
        "state.dotted and state[\"dotted\"] are one entry"
    );
    assert_eq!(
        call("get", &[s("missing")]),
        value(vec![OscArg::Nil]),
        "unknown key is ()"
    );
    assert_eq!(
        call("contains", &[s("cue")]),
        OscMessage::new("/contains", vec![OscArg::True])
    );
    assert_eq!(
        call("contains", &[s("nope")]),
        OscMessage::new("/contains", vec![OscArg::False])
    );
    assert_eq!(
        call("remove", &[s("cue")]),
        OscMessage::new("/removed", vec![OscArg::Int(12)])
    );
    assert_eq!(
        call("get", &[s("cue")]),
        value(vec![OscArg::Nil]),
        "removed"
    );
    assert_eq!(
        call("contains", &[s("cue")]),
        OscMessage::new("/contains", vec![OscArg::False])
    );
    client.send("/state/clear", &[s("")]);
    assert_eq!(
        call("get", &[s("name")]),
        value(vec![OscArg::Nil]),
        "cleared"
    );
    assert_eq!(
        call("get", &[s("dotted")]),
        value(vec![OscArg::Nil]),
        "cleared"
    );

    // keys(): the keys are Rhai strings (so they sort, compare and send like any string).
    client.send("/state/set", &[s("b"), OscArg::Int(2)]);
    client.send("/state/set", &[s("a"), OscArg::Int(1)]);
    assert_eq!(
        call("key_types", &[s("")]),
        OscMessage::new("/key_types", vec![s("string"), s("string")]),
        "type_of each of state.keys()"
    );
    assert_eq!(
        call("keys", &[s("")]),
        OscMessage::new("/keys", vec![OscArg::Array(vec![s("a"), s("b")])]),
        "state.keys(), sorted"
    );
}

const LOG_RHAI: &str = r#"
fn on_message(msg) {
    log_info("info from the script");
    log_warn(`warn ${msg.args[0]}`);
    log_error(int64(5));
    msg.peer.send_osc("/now", [now_ms()]);
}
"#;

/// `log_info/log_warn/log_error` write a line at their level tagged with the script (typed values
/// print as the call that makes them), and `now_ms()` is the wall clock in ms.
#[test]
fn logs_and_now_ms() {
    let dir = ScriptDir::new();
    dir.write("log.rhai", LOG_RHAI);
    let lights = Receiver::new();
    let routes = script_route("log", "/log", &dir.name("log.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));

    let before = now_ms();
    let m = client.call_msg("/log", &[OscArg::Int(42)]);
    let after = now_ms();
    assert_eq!(m.address, "/now");
    let now = int_arg(&m, 0);
    assert!(
        (before..=after).contains(&now),
        "now_ms {now} not in [{before}, {after}]"
    );

    let tag = format!("script={}", dir.name("log.rhai"));
    let stderr = pb.wait_stderr(RECV_TIMEOUT, |t| t.contains("int64(5)"));
    for (level, text) in [
        ("INFO", "info from the script"),
        ("WARN", "warn 42"),
        ("ERROR", "int64(5)"),
    ] {
        let lines = lines_with(&stderr, text);
        assert!(
            lines.len() == 1 && lines[0].contains(level) && lines[0].contains(&tag),
            "expected one {level} line with {text:?} and {tag:?}:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Hot reload

/// A counting script: `/vN [count, inits, reloads]`. The top level logs, to show it never runs per
/// message.
fn counter_version(version: &str) -> String {
    format!(
        r#"log_info("top level ran");

fn init() {{
    state.inits = (state.inits ?? 0) + 1;
    state.count = 0;
}}

fn on_reload() {{
    state.reloads = (state.reloads ?? 0) + 1;
}}

fn on_message(msg) {{
    state.count += 1;
    let reloads = state.reloads ?? 0;
    msg.peer.send_osc("/{version}", [state.count, state.inits, reloads]);
}}
"#
    )
}

/// The answer to one `/count`: (version, count, inits, reloads).
fn count_once(client: &Client) -> (String, i64, i64, i64) {
    let m = client.call_msg("/count", &[]);
    (
        m.address.trim_start_matches('/').to_string(),
        int_arg(&m, 0),
        int_arg(&m, 1),
        int_arg(&m, 2),
    )
}

/// Counts until the answer comes from `version` (bounded); checks the count never skips or restarts.
fn count_until(client: &Client, version: &str, last: &mut i64) -> (i64, i64) {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let (got, count, inits, reloads) = count_once(client);
        assert_eq!(
            count,
            *last + 1,
            "the counter (state) goes on across versions"
        );
        *last = count;
        if got == version {
            return (inits, reloads);
        }
        assert!(
            Instant::now() < deadline,
            "still answering as {got}, not {version}, {RELOAD_TIMEOUT:?} after the save"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Saving a new version swaps it in: new behaviour, state intact (the counter keeps counting),
/// `on_reload` called, `init` not called again, the top level never run per message.
#[test]
fn reload_applies_the_new_version_and_keeps_state() {
    let dir = ScriptDir::new();
    dir.write("count.rhai", &counter_version("v1"));
    let lights = Receiver::new();
    let routes = script_route("count", "/count", &dir.name("count.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));

    let mut last = 0;
    for _ in 0..3 {
        let (version, count, inits, reloads) = count_once(&client);
        assert_eq!(
            (version.as_str(), count, inits, reloads),
            ("v1", last + 1, 1, 0)
        );
        last = count;
    }
    dir.write("count.rhai", &counter_version("v2"));
    let (inits, reloads) = count_until(&client, "v2", &mut last);
    assert_eq!((inits, reloads), (1, 1), "init once, on_reload once");
    let (version, count, ..) = count_once(&client);
    assert_eq!((version.as_str(), count), ("v2", last + 1));

    let stderr = pb.wait_stderr(RELOAD_TIMEOUT, |t| t.contains(RELOADED));
    assert_eq!(
        lines_with(&stderr, RELOADED).len(),
        1,
        "one reload:\n{stderr}"
    );
    assert!(
        lines_with(&stderr, "top level ran").len() <= 1,
        "the top level ran per message:\n{stderr}"
    );
}

/// A save with a syntax error is refused with FILE:LINE:COLUMN and counted as a compile error;
/// the old version keeps running with its state; the fixed save then applies.
#[test]
fn typo_keeps_the_old_version_until_a_fixed_save() {
    let dir = ScriptDir::new();
    dir.write("count.rhai", &counter_version("v1"));
    let lights = Receiver::new();
    let routes = script_route("count", "/count", &dir.name("count.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));
    let mut last = 0;
    count_until(&client, "v1", &mut last);

    let typo = "fn on_message(msg) {\n    let broken = ;\n    msg.peer.send_osc(\"/v2\", []);\n}\n";
    dir.write("count.rhai", typo);
    let (line, column) = rhai_position(typo, ";");
    let at = format!("{}:{line}:{column}", dir.name("count.rhai"));
    let stderr = pb.wait_stderr(RELOAD_TIMEOUT, |t| t.contains(&at));
    let logged = lines_with(&stderr, &at).join("\n");
    assert!(
        logged.contains("does not compile") && logged.contains("last good version keeps running"),
        "{logged}"
    );
    for _ in 0..3 {
        let (version, count, _, reloads) = count_once(&client);
        assert_eq!((version.as_str(), count, reloads), ("v1", last + 1, 0));
        last = count;
    }
    let m = wait_metrics(metrics_addr(&pb), "a compile error", |m| {
        script_metric(m, ERRORS, &dir.name("count.rhai"), &[("kind", "compile")]) == Some(1.0)
    });
    assert_eq!(
        script_metric(&m, ERRORS, &dir.name("count.rhai"), &[("kind", "runtime")]),
        Some(0.0)
    );

    dir.write("count.rhai", &counter_version("v3"));
    let (inits, reloads) = count_until(&client, "v3", &mut last);
    assert_eq!((inits, reloads), (1, 1), "the refused save was no reload");
}

/// Editing a module a script imports (`import "util" as u;` inside the function) reloads the
/// importing script.
#[test]
fn editing_an_imported_module_reloads_the_importer() {
    let dir = ScriptDir::new();
    dir.write("util.rhai", "fn label() { \"one\" }\n");
    dir.write(
        "main.rhai",
        "fn on_message(msg) {\n    import \"util\" as u;\n    msg.peer.send_osc(\"/label\", [u::label()]);\n}\n",
    );
    let lights = Receiver::new();
    let routes = script_route("main", "/label", &dir.name("main.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));
    let label = |text: &str| OscMessage::new("/label", vec![s(text)]);
    assert_eq!(client.call_msg("/label", &[]), label("one"));

    dir.write("util.rhai", "fn label() { \"two\" }\n");
    poll(
        RELOAD_TIMEOUT,
        "the importer answers with the edited module",
        || (client.call_msg("/label", &[]) == label("two")).then_some(()),
    );
    pb.wait_stderr(RELOAD_TIMEOUT, |t| t.contains(RELOADED));
}

/// Scripts beside the config with relative paths (`script: scripts/rel.rhai`, `dir: scripts`, run
/// as `patchbay run cfg.yaml` from the config's folder, as the README shows) reload on save too.
#[test]
fn reload_works_with_relative_script_paths() {
    let dir = show_dir();
    save_script(&dir.path().join("scripts/rel.rhai"), &counter_version("v1"));
    let yaml = format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\nscripts:\n  dir: scripts\nroutes:\n{}",
        script_route("count", "/count", "scripts/rel.rhai", None)
    );
    fs::write(dir.path().join("cfg.yaml"), yaml).unwrap();
    let show = Show::start(dir.path());
    let client = Client::new(show.addr("desk"));
    let mut last = 0;
    count_until(&client, "v1", &mut last);
    save_script(&dir.path().join("scripts/rel.rhai"), &counter_version("v2"));
    let (inits, reloads) = count_until(&client, "v2", &mut last);
    assert_eq!((inits, reloads), (1, 1));
}

// ---------------------------------------------------------------------------------------------------
// Limits

/// `scripts.files.NAME.limits` YAML (under `scripts:`) for one file.
fn file_limits(file: &str, limits: &str) -> String {
    format!("  files:\n    {file}:\n      limits: {{ {limits} }}\n")
}

const LOOP_RHAI: &str = "fn on_message(msg) {\n    loop { }\n}\n\nfn ok(msg) {\n    msg.peer.send_osc(\"/still\", msg.args);\n}\n";

/// An endless loop is stopped by `max_operations` (logged, naming the limit, counted as a limit
/// error) while another route's plain forwards all arrive, and the looping script's next call runs.
#[test]
fn endless_loop_is_stopped_and_other_routes_keep_flowing() {
    let dir = ScriptDir::new();
    dir.write("loop.rhai", LOOP_RHAI);
    let lights = Receiver::new();
    let routes = script_route("loop-ok", "/loop/ok", &dir.name("loop.rhai"), Some("ok"))
        + &script_route("loop", "/loop", &dir.name("loop.rhai"), None)
        + &forward_route("plain", "/plain/*", "lights");
    let extra = file_limits("loop.rhai", "max_operations: 200000");
    let pb = start(&dir, &lights, &extra, &routes);
    let desk = pb.addr("desk");
    let client = Client::new(desk);
    let plain = Receiver::new();

    const PLAIN: i32 = 200;
    for n in 0..PLAIN {
        if n % 20 == 0 {
            client.send("/loop", &[]);
        }
        plain.send_to(
            &osc::message(&format!("/plain/{n}"), &[OscArg::Int(n)]),
            desk,
        );
    }
    let mut seen = vec![false; PLAIN as usize];
    for i in 0..PLAIN {
        let (bytes, _) = lights.expect(&format!("plain message {i} of {PLAIN}"));
        let m = message_of(&bytes);
        let n = int_arg(&m, 0) as usize;
        assert!(!seen[n], "/plain/{n} arrived twice");
        seen[n] = true;
    }
    assert!(seen.iter().all(|s| *s), "every plain message arrived");

    let still = client.call_msg("/loop/ok", &[OscArg::Int(7)]);
    assert_eq!(
        still,
        OscMessage::new("/still", vec![OscArg::Int(7)]),
        "the next call runs"
    );
    let stderr = pb.wait_stderr(RECV_TIMEOUT, |t| t.contains("stopped by a limit"));
    let logged = lines_with(&stderr, "stopped by a limit").join("\n");
    assert!(
        logged.contains(&dir.name("loop.rhai")) && logged.to_lowercase().contains("operations"),
        "the log names the script and the limit (max_operations): {logged}"
    );
    let m = wait_metrics(metrics_addr(&pb), "limit errors", |m| {
        script_metric(m, ERRORS, &dir.name("loop.rhai"), &[("kind", "limit")]) == Some(10.0)
    });
    assert_eq!(
        script_metric(&m, CALLS, &dir.name("loop.rhai"), &[]),
        Some(11.0)
    );
}

/// `timeout_ms` stops a call that runs long in wall-clock time while far below `max_operations`;
/// the next call runs after it, and the log names the deadline.
#[test]
fn timeout_ms_stops_a_long_call() {
    let dir = ScriptDir::new();
    let slow = "fn on_message(msg) {\n    let n = 0;\n    loop { n += 1; }\n}\n\nfn ok(msg) {\n    msg.peer.send_osc(\"/still\", []);\n}\n";
    dir.write("slow.rhai", slow);
    let lights = Receiver::new();
    let routes = script_route("slow-ok", "/slow/ok", &dir.name("slow.rhai"), Some("ok"))
        + &script_route("slow", "/slow", &dir.name("slow.rhai"), None);
    let extra = file_limits(
        "slow.rhai",
        "max_operations: 1000000000000, timeout_ms: 150",
    );
    let pb = start(&dir, &lights, &extra, &routes);
    let client = Client::new(pb.addr("desk"));

    let sent = Instant::now();
    client.send("/slow", &[]);
    client.send("/slow/ok", &[]);
    client.rx.expect_bytes(
        &osc::message("/still", &[]),
        "the call after the stopped one",
    );
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(150),
        "the looping call cannot have ended before its 150 ms deadline: {waited:?}"
    );
    let m = wait_metrics(metrics_addr(&pb), "a limit error", |m| {
        script_metric(m, ERRORS, &dir.name("slow.rhai"), &[("kind", "limit")]) == Some(1.0)
    });
    assert_eq!(
        script_metric(&m, ERRORS, &dir.name("slow.rhai"), &[("kind", "runtime")]),
        Some(0.0)
    );
    let stderr = pb.wait_stderr(RECV_TIMEOUT, |t| t.contains("stopped by a limit"));
    let logged = lines_with(&stderr, "stopped by a limit").join("\n");
    assert!(
        logged.contains("timeout_ms") || logged.contains("deadline"),
        "the log says the deadline (timeout_ms) stopped the call: {logged}"
    );
}

/// While a script works through a backlog its sends are held and sent together
/// (`channel::held`); a send held before a long call still goes out during that call, not at its
/// end: the deadline check sends it.
#[test]
fn sends_held_before_a_long_call_go_out_during_it() {
    let dir = ScriptDir::new();
    let text = "fn on_message(msg) {\n    let n = msg.args[0];\n    if n == 0 {\n        let t = timestamp();\n        while t.elapsed < 0.1 {}\n    }\n    msg.peer.send_osc(\"/answer\", [n]);\n    if n == 2 {\n        loop {}\n    }\n}\n";
    dir.write("backlog.rhai", text);
    let lights = Receiver::new();
    let routes = script_route("backlog", "/backlog", &dir.name("backlog.rhai"), None);
    let extra = file_limits(
        "backlog.rhai",
        "max_operations: 1000000000000, timeout_ms: 5000",
    );
    let pb = start(&dir, &lights, &extra, &routes);
    let client = Client::new(pb.addr("desk"));
    // 1 and 2 queue up while 0 runs for 100 ms, so their answers are held; 2 then loops until its
    // 5 s deadline.
    let sent = Instant::now();
    for n in 0..3 {
        client.send("/backlog", &[OscArg::Int(n)]);
    }
    for n in 0..3 {
        client.rx.expect_bytes(
            &osc::message("/answer", &[OscArg::Int(n)]),
            "each answer, in order",
        );
    }
    // The looping call cannot end before its deadline, 5 s after it started: answers seen sooner
    // were sent while it ran.
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_secs(5) && !pb.stderr_text().contains("stopped by a limit"),
        "the answers came while the looping call still ran, not after its deadline ({waited:?}):\n{}",
        pb.stderr_text()
    );
    pb.wait_stderr(RECV_TIMEOUT, |t| t.contains("stopped by a limit"));
    let m = wait_metrics(metrics_addr(&pb), "three calls", |m| {
        script_metric(m, CALLS, &dir.name("backlog.rhai"), &[]) == Some(3.0)
    });
    assert_eq!(
        script_metric(&m, ERRORS, &dir.name("backlog.rhai"), &[("kind", "limit")]),
        Some(1.0)
    );
}

const DEEP_RHAI: &str = r#"
fn on_message(msg) {
    let d = depth(msg.args[0]);
    msg.peer.send_osc("/depth", [d]);
}

fn depth(n) {
    if n == 0 { 0 } else { 1 + depth(n - 1) }
}

fn forever(msg) {
    down(0);
}

fn down(n) {
    down(n + 1)
}
"#;

/// Deep recursion is stopped at `max_call_depth` (a limit error) while recursion within it works,
/// and the script keeps working.
#[test]
fn deep_recursion_is_contained() {
    let dir = ScriptDir::new();
    dir.write("deep.rhai", &format!("{DEEP_RHAI}{PING_FN}"));
    let lights = Receiver::new();
    let routes = script_route("ping", "/ping", &dir.name("deep.rhai"), Some("ping"))
        + &script_route(
            "forever",
            "/deep/forever",
            &dir.name("deep.rhai"),
            Some("forever"),
        )
        + &script_route("deep", "/deep", &dir.name("deep.rhai"), None);
    let extra = file_limits("deep.rhai", "max_call_depth: 16");
    let pb = start(&dir, &lights, &extra, &routes);
    let client = Client::new(pb.addr("desk"));
    let depth = |n: i32| OscMessage::new("/depth", vec![OscArg::Int(n)]);

    assert_eq!(client.call_msg("/deep", &[OscArg::Int(10)]), depth(10));
    client.send("/deep/forever", &[]);
    client.send("/deep", &[OscArg::Int(40)]);
    assert_eq!(
        client.before_pong(1),
        Vec::<Vec<u8>>::new(),
        "both were stopped"
    );
    assert_eq!(
        client.call_msg("/deep", &[OscArg::Int(10)]),
        depth(10),
        "and it keeps working"
    );
    let m = wait_metrics(metrics_addr(&pb), "limit errors", |m| {
        script_metric(m, ERRORS, &dir.name("deep.rhai"), &[("kind", "limit")]) == Some(2.0)
    });
    assert_eq!(
        script_metric(&m, ERRORS, &dir.name("deep.rhai"), &[("kind", "runtime")]),
        Some(0.0)
    );
    let stderr = pb.wait_stderr(RECV_TIMEOUT, |t| t.contains("stopped by a limit"));
    assert!(
        stderr.contains("Stack overflow"),
        "the log names the stack (call depth):\n{stderr}"
    );
}

const SIZES_RHAI: &str = r#"
fn on_message(msg) {
    let s = "";
    for i in 0..msg.args[0] { s += "x"; }
    msg.peer.send_osc("/len", [s.len()]);
}

fn double(msg) {
    let s = "x";
    loop { s += s; }
}

fn grow(msg) {
    let a = [];
    loop { a.push(1); }
}
"#;

/// A string that keeps doubling is stopped by `max_string_size` (configured and default), an array
/// that keeps growing by `max_array_size`; strings below the limit work and the script goes on.
#[test]
fn huge_strings_and_arrays_are_contained() {
    let dir = ScriptDir::new();
    dir.write("sizes.rhai", &format!("{SIZES_RHAI}{PING_FN}"));
    dir.write("huge.rhai", &format!("{SIZES_RHAI}{PING_FN}"));
    let lights = Receiver::new();
    let routes = script_route("ping", "/ping", &dir.name("sizes.rhai"), Some("ping"))
        + &script_route(
            "double",
            "/str/double",
            &dir.name("sizes.rhai"),
            Some("double"),
        )
        + &script_route("grow", "/str/grow", &dir.name("sizes.rhai"), Some("grow"))
        + &script_route("str", "/str", &dir.name("sizes.rhai"), None)
        + &script_route("huge", "/huge", &dir.name("huge.rhai"), Some("double"))
        + &script_route("huge-len", "/huge/len", &dir.name("huge.rhai"), None);
    let extra = file_limits("sizes.rhai", "max_string_size: 1000, max_array_size: 100");
    let pb = start(&dir, &lights, &extra, &routes);
    let client = Client::new(pb.addr("desk"));
    let len = |n: i32| OscMessage::new("/len", vec![OscArg::Int(n)]);

    assert_eq!(client.call_msg("/str", &[OscArg::Int(500)]), len(500));
    client.send("/str/double", &[]);
    client.send("/str", &[OscArg::Int(2000)]);
    client.send("/str/grow", &[]);
    assert_eq!(
        client.before_pong(1),
        Vec::<Vec<u8>>::new(),
        "all three were stopped"
    );
    assert_eq!(
        client.call_msg("/str", &[OscArg::Int(500)]),
        len(500),
        "and it keeps working"
    );

    // The default limit (1 MiB) contains the doubling too.
    client.send("/huge", &[]);
    assert_eq!(
        client.call_msg("/huge/len", &[OscArg::Int(3000)]),
        len(3000),
        "the default limit allows more than the configured one, and the script goes on"
    );
    let m = wait_metrics(metrics_addr(&pb), "limit errors", |m| {
        script_metric(m, ERRORS, &dir.name("sizes.rhai"), &[("kind", "limit")]) == Some(3.0)
            && script_metric(m, ERRORS, &dir.name("huge.rhai"), &[("kind", "limit")]) == Some(1.0)
    });
    assert_eq!(
        script_metric(&m, ERRORS, &dir.name("sizes.rhai"), &[("kind", "runtime")]),
        Some(0.0)
    );
}

const FULL_RHAI: &str = r#"
fn on_message(msg) {
    let key = msg.args[0];
    try { store(key); msg.peer.send_osc("/stored", [key]); } catch (e) { report(msg.peer, e); }
}

fn store(key) {
    state[key] = 1;
}

fn uncaught(msg) {
    state[msg.args[0]] = 1;
}

fn report(p, e) {
    let text = `${e}`;
    p.send_osc("/error", [text]);
}
"#;

/// `max_state_entries` caps the state: a new key beyond it fails (caught, or logged with its
/// position when uncaught) while existing keys can still be updated.
#[test]
fn state_entries_are_capped() {
    let dir = ScriptDir::new();
    dir.write("full.rhai", FULL_RHAI);
    let lights = Receiver::new();
    let routes = script_route(
        "uncaught",
        "/full/uncaught",
        &dir.name("full.rhai"),
        Some("uncaught"),
    ) + &script_route("full", "/full", &dir.name("full.rhai"), None);
    let extra = file_limits("full.rhai", "max_state_entries: 3");
    let pb = start(&dir, &lights, &extra, &routes);
    let client = Client::new(pb.addr("desk"));
    let stored = |k: &str| OscMessage::new("/stored", vec![s(k)]);

    for key in ["a", "b", "c"] {
        assert_eq!(client.call_msg("/full", &[s(key)]), stored(key));
    }
    let m = client.call_msg("/full", &[s("d")]);
    assert!(
        m.address == "/error"
            && str_arg(&m, 0).contains("the state is full (3 entries, limit max_state_entries)"),
        "{m:?}"
    );
    assert_eq!(
        client.call_msg("/full", &[s("a")]),
        stored("a"),
        "updating a key still works"
    );

    client.send("/full/uncaught", &[s("e")]);
    let (line, column) = rhai_position(FULL_RHAI, "state[msg.args[0]]");
    let at = format!("{}:{line}:", dir.name("full.rhai"));
    let stderr = pb.wait_stderr(RECV_TIMEOUT, |t| t.contains("the state is full"));
    let logged = lines_with(&stderr, "the state is full").join("\n");
    assert!(
        logged.contains(&at),
        "the log names {at}{column} (or another column of that line): {logged}"
    );
}

/// Every limit error names FILE:LINE:COLUMN of the code that broke the limit (the spec: "a call
/// that breaks a limit is aborted with an error naming script:line:column").
#[test]
fn limit_errors_name_line_and_column() {
    let dir = ScriptDir::new();
    let cases = [
        (
            "loop.rhai",
            "fn on_message(msg) {\n    let n = 0;\n    loop { n += 1; }\n}\n",
            "loop",
            "max_operations: 100000",
        ),
        (
            "deadline.rhai",
            "fn on_message(msg) {\n    let n = 0;\n    loop { n += 1; }\n}\n",
            "loop",
            "max_operations: 1000000000000, timeout_ms: 100",
        ),
        (
            "deep.rhai",
            "fn on_message(msg) {\n    down(0);\n}\n\nfn down(n) {\n    down(n + 1)\n}\n",
            "down(n + 1)",
            "max_call_depth: 16",
        ),
        (
            "string.rhai",
            "fn on_message(msg) {\n    let s = \"x\";\n    loop { s += s; }\n}\n",
            "s += s",
            "max_string_size: 1000",
        ),
    ];
    let mut routes = String::new();
    let mut extra = String::from("  files:\n");
    for (file, text, _, limits) in &cases {
        dir.write(file, text);
        let stem = file.trim_end_matches(".rhai");
        routes += &script_route(stem, &format!("/{stem}"), &dir.name(file), None);
        extra += &format!("    {file}:\n      limits: {{ {limits} }}\n");
    }
    let lights = Receiver::new();
    let pb = start(&dir, &lights, &extra, &routes);
    let client = Client::new(pb.addr("desk"));
    for (file, ..) in &cases {
        client.send(&format!("/{}", file.trim_end_matches(".rhai")), &[]);
    }
    let stderr = pb.wait_stderr(RECV_TIMEOUT, |t| {
        cases.iter().all(|(file, ..)| {
            lines_with(t, "stopped by a limit")
                .iter()
                .any(|l| l.contains(&format!("script={}", dir.name(file))))
        })
    });
    let mut missing = Vec::new();
    for (file, text, _needle, _) in &cases {
        // Rhai replaces the position of a limit error (a "system exception") with the caller's,
        // and the caller here is the host: so the host names where the running function is
        // defined (README, Scripts). `_needle` is the statement that actually hit the limit.
        let (line, _) = rhai_position(text, "fn on_message(");
        let at = format!("{}:{line}:", dir.name(file));
        let logged: Vec<&str> = lines_with(&stderr, "stopped by a limit")
            .into_iter()
            .filter(|l| l.contains(&format!("script={}", dir.name(file))))
            .collect();
        if !logged.iter().any(|l| l.contains(&at)) {
            missing.push(format!("{file}: expected {at}COLUMN in {logged:?}"));
        }
    }
    assert!(
        missing.is_empty(),
        "limit errors without their position:\n{}",
        missing.join("\n")
    );
}

/// A script slower than its traffic with `queue: 1` drops the excess and counts it in
/// `patchbay_script_queue_drops_total`; every message is either handled or counted as dropped.
#[test]
fn a_full_queue_drops_and_counts() {
    let dir = ScriptDir::new();
    let slow = "fn on_message(msg) {\n    let end = now_ms() + 100;\n    while now_ms() < end { }\n    msg.peer.send_osc(\"/done\", msg.args);\n}\n";
    dir.write("slow.rhai", slow);
    let lights = Receiver::new();
    let routes = script_route("slow", "/slow", &dir.name("slow.rhai"), None);
    let extra = file_limits(
        "slow.rhai",
        "queue: 1, max_operations: 1000000000000, timeout_ms: 5000",
    );
    let pb = start(&dir, &lights, &extra, &routes);
    let client = Client::new(pb.addr("desk"));
    const SENT: usize = 20;
    for n in 0..SENT {
        client.send("/slow", &[OscArg::Int(n as i32)]);
    }
    let name = dir.name("slow.rhai");
    let m = wait_metrics(metrics_addr(&pb), "every message handled or dropped", |m| {
        let calls = script_metric(m, CALLS, &name, &[]).unwrap_or(0.0);
        let drops = script_metric(m, DROPS, &name, &[]).unwrap_or(0.0);
        calls + drops >= SENT as f64
    });
    let calls = script_metric(&m, CALLS, &name, &[]).unwrap();
    let drops = script_metric(&m, DROPS, &name, &[]).unwrap();
    assert_eq!(calls + drops, SENT as f64, "{}", m.text);
    assert!(
        drops >= 1.0,
        "20 messages at once for a 100 ms script with queue 1 must drop some"
    );
    // The handled ones answered, in arrival order.
    let mut last = -1;
    for _ in 0..calls as usize {
        let m = message_of(&client.expect("/done").0);
        let n = int_arg(&m, 0);
        assert!(n > last, "handled in arrival order: {n} after {last}");
        last = n;
    }
    let stderr = pb.wait_stderr(RECV_TIMEOUT, |t| t.contains("queue is full"));
    assert!(
        lines_with(&stderr, "queue is full")[0].contains(&name),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Timers

const TIMERS_RHAI: &str = r#"
fn on_message(msg) {
    state.ticks = 0;
    let once = after(100, "once", ["a"]);
    let by_pointer = after(120, Fn("once"), ["b"]);
    state.tick = every(50, "tick");
    let none = cancel(999999);
    msg.peer.send_osc("/ids", [once, by_pointer, state.tick, none]);
}

fn once(x) {
    send("lights", "/once", [x]);
}

fn tick() {
    state.ticks += 1;
    send("lights", "/tick", [state.ticks]);
    if state.ticks == 5 { stop(); }
}

fn stop() {
    let cancelled = cancel(state.tick);
    send("lights", "/cancelled", [cancelled]);
    after(300, "fin");
}

fn fin() {
    send("lights", "/fin", []);
}
"#;

/// `after` fires once (by name or `Fn`), `every` repeats until `cancel` stops it (`cancel` is true
/// for a running timer, false for an unknown id); no tick comes after the cancel.
#[test]
fn after_every_and_cancel() {
    let dir = ScriptDir::new();
    dir.write("timers.rhai", TIMERS_RHAI);
    let lights = Receiver::new();
    let routes = script_route("timers", "/timers", &dir.name("timers.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));

    let sent = Instant::now();
    let ids = client.call_msg("/timers", &[]);
    let (a, b, t) = (int_arg(&ids, 0), int_arg(&ids, 1), int_arg(&ids, 2));
    assert!(a != b && b != t && a != t, "distinct timer ids: {ids:?}");
    assert_eq!(ids.args[3], OscArg::False, "cancel of an unknown id");

    let mut got = Vec::new();
    let mut fifth_tick = None;
    let mut cancelled_at = None;
    loop {
        let (bytes, _) = lights.expect("timer sends up to /fin");
        let m = message_of(&bytes);
        if m.address == "/once" && str_arg(&m, 0) == "a" {
            assert!(
                sent.elapsed() >= Duration::from_millis(100),
                "after(100) fired early"
            );
        }
        if m.address == "/tick" && int_arg(&m, 0) == 5 {
            fifth_tick = Some(sent.elapsed());
        }
        if m.address == "/cancelled" {
            cancelled_at = Some(Instant::now());
        }
        let fin = m.address == "/fin";
        got.push(m);
        if fin {
            break;
        }
    }
    let fin_after_cancel = cancelled_at.expect("/cancelled before /fin").elapsed();
    let ticks: Vec<i64> = got
        .iter()
        .filter(|m| m.address == "/tick")
        .map(|m| int_arg(m, 0))
        .collect();
    assert_eq!(
        ticks,
        vec![1, 2, 3, 4, 5],
        "every: five ticks, then none after the cancel: {got:?}"
    );
    let onces: Vec<&str> = got
        .iter()
        .filter(|m| m.address == "/once")
        .map(|m| str_arg(m, 0))
        .collect();
    let mut sorted = onces.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["a", "b"], "each after fired once: {got:?}");
    let cancelled: Vec<&OscMessage> = got.iter().filter(|m| m.address == "/cancelled").collect();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(
        cancelled[0].args,
        vec![OscArg::True],
        "cancel of the running timer"
    );
    let tick_pos = got.iter().rposition(|m| m.address == "/tick").unwrap();
    let cancel_pos = got.iter().position(|m| m.address == "/cancelled").unwrap();
    assert!(tick_pos < cancel_pos, "no tick after the cancel: {got:?}");
    assert!(
        fifth_tick.unwrap() >= Duration::from_millis(250),
        "five 50 ms ticks took at least 250 ms: {fifth_tick:?}"
    );
    assert!(fin_after_cancel < RECV_TIMEOUT);
}

fn ticker_version(version: &str) -> String {
    format!(
        r#"fn init() {{
    state.inits = (state.inits ?? 0) + 1;
    state.timer = every(100, "tick");
}}

fn tick() {{
    send("lights", "/tick/{version}", [state.inits]);
}}

fn on_message(msg) {{}}
"#
    )
}

/// A timer keeps running across a reload and then calls the new version of its function (by
/// name); `init` is not run again, so there is still one timer.
#[test]
fn timers_run_across_a_reload_and_call_the_new_function() {
    let dir = ScriptDir::new();
    dir.write("ticker.rhai", &ticker_version("v1"));
    let lights = Receiver::new();
    let routes = script_route("ticker", "/ticker", &dir.name("ticker.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let v1 = osc::message("/tick/v1", &[OscArg::Int(1)]);
    let v2 = osc::message("/tick/v2", &[OscArg::Int(1)]);
    lights.expect_bytes(&v1, "the v1 timer ticks");

    dir.write("ticker.rhai", &ticker_version("v2"));
    let before = recv_until(&lights, "the first v2 tick", |b| b == v2.as_slice());
    assert!(
        before[..before.len() - 1].iter().all(|b| *b == v1),
        "only v1 ticks before the first v2 tick: {:?}",
        before.iter().map(|b| describe(b)).collect::<Vec<_>>()
    );
    let started = Instant::now();
    for i in 0..5 {
        lights.expect_bytes(&v2, &format!("v2 tick {i} (one timer, new function)"));
    }
    // One timer at 100 ms: the five ticks are due at least 400 ms apart from the first to the last,
    // all after the tick just received (less the moments it took to arrive); two timers (an `init`
    // run again) would bring them in about half the time.
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "ticks came too fast for one 100 ms timer: {:?}",
        started.elapsed()
    );
    pb.wait_stderr(RECV_TIMEOUT, |t| t.contains(RELOADED));
}

const CAP_RHAI: &str = r#"
fn on_message(msg) {
    let results = [];
    for i in 0..4 { results.push(add()); }
    msg.peer.send_osc("/cap", results);
}

fn add() {
    let r = ();
    try { r = after(60000, "never"); } catch (e) { r = `${e}`; }
    r
}

fn never() {}

fn free(msg) {
    let cancelled = cancel(msg.args[0]);
    let again = add();
    msg.peer.send_osc("/freed", [cancelled, again]);
}
"#;

/// `max_timers` caps the timers a script holds: beyond it `after`/`every` fail with a message naming
/// the limit; cancelling one makes room.
#[test]
fn timers_are_capped() {
    let dir = ScriptDir::new();
    dir.write("cap.rhai", CAP_RHAI);
    let lights = Receiver::new();
    let routes = script_route("free", "/cap/free", &dir.name("cap.rhai"), Some("free"))
        + &script_route("cap", "/cap", &dir.name("cap.rhai"), None);
    let extra = file_limits("cap.rhai", "max_timers: 3");
    let pb = start(&dir, &lights, &extra, &routes);
    let client = Client::new(pb.addr("desk"));

    let m = client.call_msg("/cap", &[]);
    assert_eq!(m.args.len(), 4, "{m:?}");
    let first = int_arg(&m, 0);
    let _ = (int_arg(&m, 1), int_arg(&m, 2));
    assert!(
        str_arg(&m, 3).contains("too many timers (3, limit max_timers)"),
        "the fourth timer fails: {m:?}"
    );
    let freed = client.call_msg("/cap/free", &[OscArg::Long(first)]);
    assert_eq!(freed.args[0], OscArg::True, "{freed:?}");
    int_arg(&freed, 1);
}

// ---------------------------------------------------------------------------------------------------
// Bundles at their time

/// A bundle time-tagged ~400 ms ahead reaches the script at its time: the answer comes not before
/// ~350 ms and within a generous bound.
#[test]
fn future_bundles_reach_scripts_at_their_time() {
    let dir = ScriptDir::new();
    dir.write(
        "at.rhai",
        "fn on_message(msg) {\n    msg.peer.send_osc(\"/at\", [now_ms()]);\n}\n",
    );
    let lights = Receiver::new();
    let routes = script_route("at", "/at/*", &dir.name("at.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));

    // A plain message first: the script answers at once.
    let sent = Instant::now();
    client.call_msg("/at/now", &[]);
    let immediate = sent.elapsed();

    let sent_ms = now_ms();
    let sent = Instant::now();
    let tag = TimeTag::after(SystemTime::now(), Duration::from_millis(400));
    client.send_bytes(&osc::bundle(tag, &[osc::message("/at/later", &[])]));
    let m = message_of(&client.expect("the bundled message's answer").0);
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "answered {waited:?} after a bundle due in 400 ms (a plain message took {immediate:?})"
    );
    assert!(waited < RECV_TIMEOUT);
    let ran_at = int_arg(&m, 0);
    assert!(
        ran_at >= sent_ms + 350,
        "the script ran at {ran_at}, sent at {sent_ms}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Persistence, check, metrics, nesting

const PERSIST_COUNTER: &str = "fn on_message(msg) {\n    state.count = (state.count ?? 0) + 1;\n    msg.peer.send_osc(\"/count\", [state.count]);\n}\n";

fn count_msg(n: i32) -> OscMessage {
    OscMessage::new("/count", vec![OscArg::Int(n)])
}

/// The only file under `.patchbay-state/`, parsed.
fn state_file(dir: &std::path::Path) -> Option<serde_json::Value> {
    let entries: Vec<_> = fs::read_dir(dir.join(".patchbay-state"))
        .ok()?
        .flatten()
        .collect();
    let json: Vec<_> = entries
        .iter()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(
        json.len() <= 1,
        "one state file for one persisted script: {entries:?}"
    );
    serde_json::from_str(&fs::read_to_string(json.first()?.path()).ok()?).ok()
}

/// `persist: true` keeps a script's state across a restart (SIGTERM, then a new run on the same
/// folder), and within about a second of a change even when the process is killed; a script without
/// it starts empty.
#[test]
fn persisted_state_survives_a_restart() {
    let dir = show_dir();
    save_script(&dir.path().join("scripts/counter.rhai"), PERSIST_COUNTER);
    save_script(&dir.path().join("scripts/plain.rhai"), PERSIST_COUNTER);
    let yaml = format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\nscripts:\n  dir: scripts\n  files:\n    counter.rhai: {{ persist: true }}\nroutes:\n{}{}",
        script_route("persisted", "/p", "scripts/counter.rhai", None),
        script_route("plain", "/np", "scripts/plain.rhai", None)
    );
    fs::write(dir.path().join("cfg.yaml"), yaml).unwrap();

    let mut show = Show::start(dir.path());
    let client = Client::new(show.addr("desk"));
    for n in 1..=3 {
        assert_eq!(client.call_msg("/p", &[]), count_msg(n));
    }
    for n in 1..=2 {
        assert_eq!(client.call_msg("/np", &[]), count_msg(n));
    }
    let status = show.stop();
    assert!(status.success(), "a clean stop: {status}");
    assert_eq!(
        state_file(dir.path()).map(|v| v["count"].clone()),
        Some(serde_json::json!(3)),
        "the state file after the stop"
    );
    drop(show);

    let mut show = Show::start(dir.path());
    let client = Client::new(show.addr("desk"));
    assert_eq!(
        client.call_msg("/p", &[]),
        count_msg(4),
        "the persisted count goes on"
    );
    assert_eq!(
        client.call_msg("/np", &[]),
        count_msg(1),
        "a script without persist starts empty"
    );

    // Saved while running (at most a second later), so even a kill keeps it.
    poll(RELOAD_TIMEOUT, "the state file shows count 4", || {
        (state_file(dir.path()).map(|v| v["count"].clone()) == Some(serde_json::json!(4)))
            .then_some(())
    });
    let _ = show.child.kill();
    let _ = show.child.wait();
    drop(show);
    let show = Show::start(dir.path());
    let client = Client::new(show.addr("desk"));
    assert_eq!(client.call_msg("/p", &[]), count_msg(5), "survives a kill");
}

/// `patchbay check` reports a script's syntax error at the script's FILE:LINE:COLUMN with exit 1.
#[test]
fn check_reports_a_syntax_error_at_its_position() {
    let dir = show_dir();
    let bad = "fn on_message(msg) {\n    let level = msg.args[0];\n    let x = ;\n}\n";
    save_script(&dir.path().join("scripts/bad.rhai"), bad);
    let yaml = format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\nscripts:\n  dir: scripts\nroutes:\n{}",
        script_route("bad", "/bad", "scripts/bad.rhai", None)
    );
    fs::write(dir.path().join("cfg.yaml"), yaml).unwrap();
    let (code, out) = check_in(dir.path());
    assert_eq!(code, 1, "{out}");
    let (line, column) = rhai_position(bad, "= ;");
    let at = format!("scripts/bad.rhai:{line}:{}: ", column + 2);
    assert!(out.contains(&at), "expected {at:?} in:\n{out}");
    assert!(out.contains("does not compile"), "{out}");
}

/// `patchbay check` reports a missing `fn:` function with the functions the script has (each once:
/// overloads of one name are one function to the author).
#[test]
fn check_reports_a_missing_function_with_the_ones_there_are() {
    let dir = show_dir();
    let text =
        "fn on_message(msg) { }\nfn helper() { }\nfn helper(a) { }\nfn fader(msg, peer) { }\nfn helper(a, b) { }\nfn go_on(msg) { }\nfn helper(a, b, c) { }\n";
    save_script(&dir.path().join("scripts/fns.rhai"), text);
    let yaml = format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\nscripts:\n  dir: scripts\nroutes:\n{}",
        script_route("fns", "/fns", "scripts/fns.rhai", Some("nope"))
    );
    fs::write(dir.path().join("cfg.yaml"), &yaml).unwrap();
    let (code, out) = check_in(dir.path());
    assert_eq!(code, 1, "{out}");
    let line = lines_with(&out, "nope").join("\n");
    let (l, c) = patchbay_tests::position(&yaml, "nope", 0);
    assert!(
        line.contains(&format!("cfg.yaml:{l}:{c}: routes[0].to[0].fn")),
        "{out}"
    );
    assert!(line.contains("has no function `nope`"), "{out}");
    let has = line
        .split("(it has: ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no list in {line}"));
    let mut names: Vec<&str> = has.split(", ").collect();
    names.sort();
    assert_eq!(
        names,
        vec!["fader", "go_on", "helper", "on_message"],
        "each function once: {line}"
    );
}

/// `patchbay check` reports an import of a missing module at the script's FILE:LINE:COLUMN.
#[test]
fn check_reports_a_missing_module_at_the_import() {
    let dir = show_dir();
    let text = "fn on_message(msg) {\n    import \"nope\" as n;\n    n::fire();\n}\n";
    save_script(&dir.path().join("scripts/imp.rhai"), text);
    let yaml = format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\nscripts:\n  dir: scripts\nroutes:\n{}",
        script_route("imp", "/imp", "scripts/imp.rhai", None)
    );
    fs::write(dir.path().join("cfg.yaml"), &yaml).unwrap();
    let (code, out) = check_in(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nope"), "{out}");
    let (line, _) = rhai_position(text, "import");
    assert!(
        out.contains(&format!("scripts/imp.rhai:{line}:")),
        "expected the import's position scripts/imp.rhai:{line}:COLUMN in:\n{out}"
    );
}

/// Show logic nested a few levels deep (a loop, an if, a switch, an if, a call) compiles, passes
/// `check` and runs: scripts are not refused for ordinary nesting.
#[test]
fn nested_show_logic_compiles_and_runs() {
    let dir = ScriptDir::new();
    dir.write(
        "nested.rhai",
        r#"
fn on_message(msg) {
    for cue in msg.args {
        if cue > 0 {
            switch cue {
                1 => {
                    if state.armed ?? true {
                        msg.peer.send_osc("/ack", [cue, "one"]);
                    }
                }
                _ => {
                    log_info(`cue ${cue}`);
                    msg.peer.send_osc("/ack", [cue]);
                }
            }
        }
    }
}
"#,
    );
    let lights = Receiver::new();
    let routes = script_route("nested", "/nested", &dir.name("nested.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));
    client.send("/nested", &[OscArg::Int(1), OscArg::Int(0), OscArg::Int(2)]);
    client
        .rx
        .expect_bytes(&osc::message("/ack", &[OscArg::Int(1), s("one")]), "cue 1");
    client
        .rx
        .expect_bytes(&osc::message("/ack", &[OscArg::Int(2)]), "cue 2");
}

/// The script metrics count by value: calls (messages, `init`), errors by kind (runtime, limit,
/// compile), queue drops (none here) and the call-duration summary, labelled with the script's
/// name as written in the config.
#[test]
fn script_metrics_count() {
    let dir = ScriptDir::new();
    let text = "fn init() { }\nfn on_message(msg) { msg.peer.send_osc(\"/ok\", []); }\nfn fail(msg) { throw \"boom\"; }\nfn spin(msg) { loop { } }\n";
    dir.write("m.rhai", text);
    let lights = Receiver::new();
    let routes = script_route("fail", "/m/fail", &dir.name("m.rhai"), Some("fail"))
        + &script_route("spin", "/m/spin", &dir.name("m.rhai"), Some("spin"))
        + &script_route("ok", "/m", &dir.name("m.rhai"), None);
    let extra = file_limits("m.rhai", "max_operations: 100000");
    let pb = start(&dir, &lights, &extra, &routes);
    let client = Client::new(pb.addr("desk"));
    let name = dir.name("m.rhai");
    let ok = osc::message("/ok", &[]);
    for _ in 0..3 {
        assert_bytes(&client.call("/m", &[]), &ok, "/m");
    }
    client.send("/m/fail", &[]);
    client.send("/m/spin", &[]);
    assert_bytes(&client.call("/m", &[]), &ok, "after the errors");
    dir.write("m.rhai", "fn on_message(msg) { let = 1; }\n");
    pb.wait_stderr(RELOAD_TIMEOUT, |t| t.contains("does not compile"));

    let addr = metrics_addr(&pb);
    let m = wait_metrics(addr, "script metrics", |m| {
        script_metric(m, ERRORS, &name, &[("kind", "compile")]) == Some(1.0)
            && script_metric(m, CALLS, &name, &[]) == Some(7.0)
    });
    let kinds = [("runtime", 1.0), ("limit", 1.0), ("compile", 1.0)];
    for (kind, want) in kinds {
        assert_eq!(
            script_metric(&m, ERRORS, &name, &[("kind", kind)]),
            Some(want),
            "errors{{kind={kind}}}\n{}",
            m.text
        );
    }
    assert_eq!(
        script_metric(&m, CALLS, &name, &[]),
        Some(7.0),
        "init + 6 messages"
    );
    assert_eq!(
        script_metric(&m, DROPS, &name, &[]),
        Some(0.0),
        "no drops, but the series is there"
    );
    assert_eq!(
        script_metric(&m, SECONDS_COUNT, &name, &[]),
        Some(7.0),
        "one duration per call"
    );
    let sum = script_metric(&m, "patchbay_script_call_seconds_sum", &name, &[]).unwrap();
    assert!(sum > 0.0, "call durations add up to something: {sum}");
    let quantiles = m
        .samples
        .iter()
        .filter(|s| {
            s.name == "patchbay_script_call_seconds"
                && s.labels.iter().any(|(k, v)| k == "script" && *v == name)
        })
        .count();
    assert!(
        quantiles > 0,
        "the duration summary has quantiles:\n{}",
        m.text
    );
}

// ---------------------------------------------------------------------------------------------------
// Wrappers, routes coming and going

const WRAPPERS_RHAI: &str = r#"
fn on_message(msg) {
    let big = int64(5);
    let text = `${big} ${symbol("go")} ${nil()}`;
    let same = symbol("a") == symbol("a");
    let differ = int64(5) == int32(5);
    msg.peer.send_osc("/wrappers", [big.tag, big.value, text, same, differ, double(2).tag]);
    msg.peer.send_osc("/later", [timetag_after(500), timetag_after(-500)]);
}
"#;

/// The wrappers' `.tag` and `.value`, `==` (type and value), their printing as the call that makes
/// them, and `timetag_after(ms)` (a time tag that far from now, either way).
#[test]
fn wrappers_tag_value_equality_display_and_timetag_after() {
    let dir = ScriptDir::new();
    dir.write("wrappers.rhai", WRAPPERS_RHAI);
    let lights = Receiver::new();
    let routes = script_route("wrappers", "/wrappers", &dir.name("wrappers.rhai"), None);
    let pb = start(&dir, &lights, "", &routes);
    let client = Client::new(pb.addr("desk"));

    let before = SystemTime::now();
    let m = client.call_msg("/wrappers", &[]);
    assert_eq!(
        m,
        OscMessage::new(
            "/wrappers",
            vec![
                s("h"),
                OscArg::Int(5),
                s("int64(5) symbol(\"go\") nil()"),
                OscArg::True,
                OscArg::False,
                s("d"),
            ]
        )
    );
    let later = message_of(&client.expect("/later").0);
    let after = SystemTime::now();
    let nanos = |t: &OscArg| match t {
        OscArg::Time(t) => t.to_unix_nanos(),
        other => panic!("not a time tag: {other:?}"),
    };
    let bound = |t: SystemTime, ms: i64| {
        TimeTag::from_unix_nanos(
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128
                + i128::from(ms) * 1_000_000,
        )
        .to_unix_nanos()
    };
    let ahead = nanos(&later.args[0]);
    assert!(
        bound(before, 499) <= ahead && ahead <= bound(after, 501),
        "timetag_after(500) is 500 ms after the call"
    );
    let behind = nanos(&later.args[1]);
    assert!(
        bound(before, -501) <= behind && behind <= bound(after, -499),
        "timetag_after(-500) is 500 ms before the call"
    );
}

/// State is keyed by the script's path: removing the route to a script (a live config edit) and
/// adding it back finds the script as it was.
#[test]
fn removing_a_route_and_adding_it_back_keeps_the_state() {
    let dir = ScriptDir::new();
    dir.write("count.rhai", PERSIST_COUNTER);
    let lights = Receiver::new();
    let with = config(
        &dir,
        lights.addr(),
        "",
        &(script_route("count", "/count", &dir.name("count.rhai"), None)
            + &forward_route("other", "/other", "lights")),
    );
    let without = config(
        &dir,
        lights.addr(),
        "",
        &forward_route("other", "/other", "lights"),
    );
    let pb = Patchbay::start(&with);
    let client = Client::new(pb.addr("desk"));
    for n in 1..=2 {
        assert_eq!(client.call_msg("/count", &[]), count_msg(n));
    }
    let applied = |n: usize| move |t: &str| lines_with(t, "Applied the edited config").len() >= n;
    fs::write(pb.dir().join("cfg.yaml"), &without).unwrap();
    pb.wait_stderr(RELOAD_TIMEOUT, applied(1));
    // The route is gone: this /count reaches no script (if it did, the count below would be 4).
    client.send("/count", &[]);
    client.send("/other", &[]);
    lights.expect_bytes(&osc::message("/other", &[]), "the remaining route");

    fs::write(pb.dir().join("cfg.yaml"), &with).unwrap();
    pb.wait_stderr(RELOAD_TIMEOUT, applied(2));
    assert_eq!(
        client.call_msg("/count", &[]),
        count_msg(3),
        "the state was kept"
    );
}
