//! Compiled plugins end to end (issue 6): real shared libraries built by the test (the example
//! plugins `scale` and `throttle`, the test plugins in `tests/plugins/`, a `panic = "abort"` build,
//! the C example compiled against `patchbay_plugin.h`), dropped into a plugins folder, loaded by
//! the real binary and driven over real sockets on 127.0.0.1.
//!
//! What is checked: messages through each example; the C plugin; a plugin dropped in while traffic
//! flows through another route; a replaced file (new behaviour, old instance unloaded); a removed
//! file; a wrong ABI version; a `panic = "abort"` build; a plugin that panics on every message; a
//! plugin that never returns; files that are not plugin libraries; a folder other users can write
//! to; and the per-plugin metrics (calls, errors, panics, drops, call duration count, stuck) by
//! value over HTTP.
//!
//! The plugins folder is a [`PluginDir`] named by absolute path (see `plugin_support`). Waits poll
//! with generous bounds; negative checks ("nothing was sent") use an ordering that would show the
//! unwanted message first, never a quiet period.

mod plugin_support;
mod support;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use patchbay_plugin_api::osc::OscArg;
use patchbay_tests::{barrier, barrier_route, osc, Patchbay, Receiver};

use plugin_support::*;
use support::{wait_metrics, wait_value, Metrics};

/// The `plugin` label of the per-plugin metrics.
fn plugin(name: &str) -> [(&str, &str); 1] {
    [("plugin", name)]
}

/// A plugin metric that may not be registered yet reads as 0.
fn value_or_zero(m: &Metrics, name: &str, plugin_name: &str) -> f64 {
    m.get(name, &plugin(plugin_name)).unwrap_or(0.0)
}

/// `ADDRESS ,i N`.
fn int_msg(address: &str, n: i32) -> Vec<u8> {
    osc::message(address, &[OscArg::Int(n)])
}

/// `ADDRESS ,f V`.
fn float_msg(address: &str, v: f32) -> Vec<u8> {
    osc::message(address, &[OscArg::Float(v)])
}

/// Sends `/flow ,i n` through the plain forward route and expects it at `lights` next.
fn check_flow(client: &Receiver, desk: SocketAddr, lights: &Receiver, n: i32) {
    client.send_to(&int_msg("/flow", n), desk);
    lights.expect_bytes(
        &int_msg("/flow", n),
        "the plain forward route keeps serving",
    );
}

/// `scale`: ranges, inversion, clamping, curves, arg/address/as_int, h/d, answering, skips, calls.
#[test]
fn scale_maps_ranges_with_clamping_curves_and_its_other_settings() {
    let dir = PluginDir::new();
    dir.install("libscale.so", &plugin_lib(SCALE));
    let lights = Receiver::new();
    let routes = [
        plugin_route(
            "lin",
            "/lin",
            "scale",
            "{ in_min: 0, in_max: 127, out_min: 0.0, out_max: 1.0, to: lights }",
        ),
        plugin_route(
            "noclamp",
            "/noclamp",
            "scale",
            "{ in_min: 0, in_max: 100, out_min: 0, out_max: 10, clamp: false, to: lights }",
        ),
        plugin_route(
            "inv",
            "/inv",
            "scale",
            "{ in_min: 0, in_max: 127, out_min: 255, out_max: 0, as_int: true, to: lights }",
        ),
        plugin_route(
            "exp",
            "/exp",
            "scale",
            "{ in_min: 0, in_max: 1, out_min: 0, out_max: 1, curve: exponential, to: lights }",
        ),
        plugin_route(
            "log",
            "/log",
            "scale",
            "{ in_min: 0, in_max: 1, out_min: 0, out_max: 1, curve: logarithmic, to: lights }",
        ),
        plugin_route(
            "pow",
            "/pow",
            "scale",
            "{ in_min: 0, in_max: 1, out_min: 0, out_max: 1, curve: 2, to: lights }",
        ),
        plugin_route(
            "arg",
            "/arg",
            "scale",
            "{ arg: 1, in_min: 0, in_max: 10, out_min: 0, out_max: 100, address: /light/level, to: lights }",
        ),
        plugin_route(
            "answer",
            "/answer",
            "scale",
            "{ in_min: 0, in_max: 1, out_min: 0, out_max: 100 }",
        ),
    ]
    .concat();
    let pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let desk = pb.addr("desk");
    let client = Receiver::new();
    let calls = Cell::new(0u32);
    let send = |bytes: &[u8]| {
        client.send_to(bytes, desk);
        calls.set(calls.get() + 1);
    };
    let through = |input: Vec<u8>, expected: Vec<u8>, what: &str| {
        send(&input);
        lights.expect_bytes(&expected, what);
    };

    // Linear 0..127 -> 0..1, clamped at both ends; T counts as 1; h and d give d.
    through(int_msg("/lin", 0), float_msg("/lin", 0.0), "lin 0");
    through(int_msg("/lin", 127), float_msg("/lin", 1.0), "lin 127");
    through(float_msg("/lin", 63.5), float_msg("/lin", 0.5), "lin 63.5");
    through(
        int_msg("/lin", 254),
        float_msg("/lin", 1.0),
        "lin 254 clamps",
    );
    through(
        int_msg("/lin", -10),
        float_msg("/lin", 0.0),
        "lin -10 clamps",
    );
    through(
        osc::message("/lin", &[OscArg::True]),
        float_msg("/lin", (1.0f64 / 127.0) as f32),
        "lin T is 1",
    );
    through(
        osc::message("/lin", &[OscArg::Long(127)]),
        osc::message("/lin", &[OscArg::Double(1.0)]),
        "lin h gives d",
    );
    through(
        osc::message("/lin", &[OscArg::Double(63.5)]),
        osc::message("/lin", &[OscArg::Double(0.5)]),
        "lin d gives d",
    );
    // Without clamping the mapping continues past both ends.
    through(
        int_msg("/noclamp", 200),
        float_msg("/noclamp", 20.0),
        "noclamp 200",
    );
    through(
        int_msg("/noclamp", -50),
        float_msg("/noclamp", -5.0),
        "noclamp -50",
    );
    // out_min > out_max inverts; as_int rounds to an int.
    through(int_msg("/inv", 0), int_msg("/inv", 255), "inv 0");
    through(int_msg("/inv", 127), int_msg("/inv", 0), "inv 127");
    through(int_msg("/inv", 64), int_msg("/inv", 126), "inv 64 rounds");
    through(int_msg("/inv", 300), int_msg("/inv", 0), "inv 300 clamps");
    // Curves: the ends are fixed points; half travel gives the README's 0.12, 0.83 and 0.25.
    through(float_msg("/exp", 1.0), float_msg("/exp", 1.0), "exp 1");
    through(float_msg("/exp", 0.0), float_msg("/exp", 0.0), "exp 0");
    through(
        float_msg("/pow", 0.5),
        float_msg("/pow", 0.25),
        "pow 2 at 0.5",
    );
    let k = 4.0f64;
    for (address, want, readme) in [
        ("/exp", (k * 0.5).exp_m1() / k.exp_m1(), 0.12),
        ("/log", (0.5 * k.exp_m1()).ln_1p() / k, 0.83),
    ] {
        send(&float_msg(address, 0.5));
        let got = expect_message(&lights, address);
        assert_eq!(got.address, address);
        assert_eq!(got.args.len(), 1, "{got:?}");
        assert_float(&got.args[0], want, 1e-6, &format!("{address} at 0.5"));
        assert_float(
            &got.args[0],
            readme,
            0.005,
            &format!("{address} README value"),
        );
    }
    // `arg: 1` scales the second argument, keeps the first; `address` renames the message.
    send(&osc::message(
        "/arg",
        &[OscArg::String("ch1".into()), OscArg::Int(5)],
    ));
    lights.expect_bytes(
        &osc::message(
            "/light/level",
            &[OscArg::String("ch1".into()), OscArg::Float(50.0)],
        ),
        "arg 1 with a new address",
    );
    // Without `to` the result answers the sender (and nothing goes to lights: the next datagram
    // there is the following /pow).
    send(&float_msg("/answer", 0.25));
    client.expect_bytes(&float_msg("/answer", 25.0), "scale answers the sender");
    // A non-number is skipped (counted, one warning), not an error: the next one still maps.
    send(&osc::message("/pow", &[OscArg::String("x".into())]));
    send(&float_msg("/pow", 1.0));
    lights.expect_bytes(
        &float_msg("/pow", 1.0),
        "after a skipped message (and nothing from /answer)",
    );
    let text = wait_lines(&pb, &["scale", "not a number", "skipped"], 1);
    assert_eq!(count_lines(&text, &[CALL_FAILED]), 0, "{text}");

    let addr = metrics_addr(&pb);
    let m = wait_value(
        addr,
        SECONDS_COUNT,
        &plugin("scale"),
        f64::from(calls.get()),
    );
    assert_eq!(
        m.get(CALLS, &plugin("scale")),
        Some(f64::from(calls.get())),
        "{}",
        m.text
    );
    assert_eq!(m.get(ERRORS, &plugin("scale")), Some(0.0), "{}", m.text);
    assert_eq!(m.get(PANICS, &plugin("scale")), Some(0.0), "{}", m.text);
    assert_eq!(m.get(DROPS, &plugin("scale")), Some(0.0), "{}", m.text);
    assert_eq!(
        m.get(STUCK_GAUGE, &plugin("scale")),
        Some(0.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(COUNTER, &[("plugin", "scale"), ("counter", "skipped")]),
        Some(1.0),
        "{}",
        m.text
    );
}

/// `throttle`: first at once, held ones collapse to the newest trailing send, an unchanged value is not resent.
#[test]
fn throttle_sends_first_at_once_then_the_newest_held_one_and_skips_unchanged() {
    const INTERVAL_MS: u64 = 2_000;
    let dir = PluginDir::new();
    dir.install("libthrottle.so", &plugin_lib(THROTTLE));
    let lights = Receiver::new();
    let routes = plugin_route(
        "thr",
        "/t/*",
        "throttle",
        &format!("{{ to: lights, interval_ms: {INTERVAL_MS} }}"),
    );
    let pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let desk = pb.addr("desk");
    let addr = metrics_addr(&pb);
    let client = Receiver::new();
    let counter = |m: &Metrics, name: &str| {
        m.get(COUNTER, &[("plugin", "throttle"), ("counter", name)])
            .unwrap_or(0.0)
    };

    let started = Instant::now();
    client.send_to(&float_msg("/t/a", 0.1), desk);
    lights.expect_bytes(&float_msg("/t/a", 0.1), "the first message");
    let m = Metrics::scrape(addr);
    assert_eq!(
        counter(&m, "held"),
        0.0,
        "the first message was held:\n{}",
        m.text
    );

    // Within the interval: held, only the newest kept, sent when the interval ends.
    for v in [0.2, 0.3, 0.4, 0.5, 0.6] {
        client.send_to(&float_msg("/t/a", v), desk);
    }
    lights.expect_bytes(
        &float_msg("/t/a", 0.6),
        "only the newest held message, at the end of the interval",
    );
    assert!(
        started.elapsed() >= Duration::from_millis(INTERVAL_MS),
        "the trailing send came {:?} after the first was sent, before the interval ended",
        started.elapsed()
    );
    wait_metrics(addr, "5 held, 1 trailing", |m| {
        counter(m, "held") == 5.0 && counter(m, "trailing") == 1.0
    });

    // Send-on-change: 0.6 again is not sent. /t/b's first goes at once and arrives next; /t/b's
    // held 2.0 is sent at the end of its interval, which ends after /t/a's, so anything still
    // pending for /t/a would arrive before it.
    client.send_to(&float_msg("/t/a", 0.6), desk);
    client.send_to(&float_msg("/t/b", 1.0), desk);
    lights.expect_bytes(
        &float_msg("/t/b", 1.0),
        "another address goes at once (and /t/a 0.6 was not sent again)",
    );
    client.send_to(&float_msg("/t/b", 2.0), desk);
    lights.expect_bytes(
        &float_msg("/t/b", 2.0),
        "/t/b's trailing send (nothing more for /t/a before it)",
    );
    let m = wait_metrics(addr, "1 unchanged, 6 held, 2 trailing", |m| {
        counter(m, "unchanged") == 1.0 && counter(m, "held") == 6.0 && counter(m, "trailing") == 2.0
    });
    assert_eq!(m.get(ERRORS, &plugin("throttle")), Some(0.0), "{}", m.text);
    assert_eq!(m.get(PANICS, &plugin("throttle")), Some(0.0), "{}", m.text);
}

/// The C example built with `cc` against the header echoes; `/fail` is logged and counted; metrics by value.
#[test]
fn c_plugin_echoes_and_its_error_is_logged_and_counted() {
    let dir = PluginDir::new();
    dir.install("libc_echo.so", &c_echo_lib());
    let lights = Receiver::new();
    let routes = [
        plugin_route("echo", "/echo/*", "c-echo", ""),
        plugin_route("fail", "/fail", "c-echo", ""),
    ]
    .concat();
    let pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let text = wait_lines(&pb, &[LOADED, "c-echo 1.0.0"], 1);
    // One instance per route target, each created through the host's log callback.
    wait_lines(&pb, &["c-echo", "c echo ready"], 2);
    assert_eq!(count_lines(&text, &[NOT_LOADED]), 0, "{text}");
    let desk = pb.addr("desk");
    let client = Receiver::new();

    let messages = [
        osc::message("/echo/a", &[OscArg::Int(7), OscArg::String("hi".into())]),
        osc::message(
            "/echo/b",
            &[OscArg::Float(0.5), OscArg::Blob(vec![1, 2, 3])],
        ),
        osc::message("/echo/c", &[]),
    ];
    for msg in &messages {
        client.send_to(msg, desk);
        client.expect_bytes(msg, "the C plugin answers with the same bytes");
    }
    client.send_to(&osc::message("/fail", &[]), desk);
    let addr = metrics_addr(&pb);
    wait_value(addr, ERRORS, &plugin("c-echo"), 1.0);
    let text = wait_lines(&pb, &[CALL_FAILED, "asked to fail", "c-echo"], 1);
    assert!(
        has_field(
            &line_with(&text, &[CALL_FAILED, "asked to fail"]),
            "route",
            "fail"
        ),
        "{text}"
    );
    // Still serving after the error.
    let after = osc::message("/echo/after", &[OscArg::Int(1)]);
    client.send_to(&after, desk);
    client.expect_bytes(&after, "the C plugin after its error");

    let m = wait_value(addr, SECONDS_COUNT, &plugin("c-echo"), 5.0);
    assert_eq!(m.get(CALLS, &plugin("c-echo")), Some(5.0), "{}", m.text);
    assert_eq!(m.get(ERRORS, &plugin("c-echo")), Some(1.0), "{}", m.text);
    assert_eq!(m.get(PANICS, &plugin("c-echo")), Some(0.0), "{}", m.text);
    assert_eq!(m.get(DROPS, &plugin("c-echo")), Some(0.0), "{}", m.text);
    assert_eq!(
        m.get(STUCK_GAUGE, &plugin("c-echo")),
        Some(0.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(COUNTER, &[("plugin", "c-echo"), ("counter", "echoed")]),
        Some(4.0),
        "{}",
        m.text
    );
}

/// A plugin dropped in while another route carries traffic is used at once; that route loses nothing.
#[test]
fn plugin_dropped_in_while_traffic_flows_is_used_at_once_and_other_routes_lose_nothing() {
    let dir = PluginDir::new();
    let lights = Recorder::start();
    let routes = [
        forward_route("flow", "/flow", "lights"),
        plugin_route(
            "sc",
            "/s",
            "scale",
            "{ in_min: 0, in_max: 10, out_min: 0, out_max: 100, to: lights }",
        ),
    ]
    .concat();
    let pb = Patchbay::start(&config(&dir, lights.addr, "", &routes));
    wait_lines(&pb, &[NAMES_MISSING, "scale"], 1);
    let desk = pb.addr("desk");
    let client = Receiver::new();
    // Before the plugin is there its route does nothing.
    client.send_to(&int_msg("/s", 1), desk);

    let flow = Flow::start(desk, "/flow", Duration::from_millis(2), 20_000);
    lights.wait_until(PLUGIN_TIMEOUT, "the flow is under way", |got| {
        ints_at(got, "/flow").len() >= 30
    });
    dir.install("libscale.so", &plugin_lib(SCALE));
    wait_lines(&pb, &[LOADED, "scale"], 1);
    wait_lines(&pb, &[REBUILT, "scale"], 1);
    let sent_at_load = flow.sent();
    client.send_to(&int_msg("/s", 5), desk);
    lights.wait_until(PLUGIN_TIMEOUT, "the new plugin's route works", |got| {
        got.iter().any(|b| *b == float_msg("/s", 50.0))
    });
    // Keep the flow going a while after the load, then check every message of it arrived.
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    while flow.sent() < sent_at_load + 100 {
        assert!(
            Instant::now() < deadline,
            "the flow stalled at {}",
            flow.sent()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = flow.stop();
    assert!(sent < 20_000, "the flow ended before the plugin was loaded");
    lights.wait_until(PLUGIN_TIMEOUT, "every flow message arrived", |got| {
        ints_at(got, "/flow").len() >= sent
    });
    let got = lights.snapshot();
    let flowed: BTreeSet<i32> = ints_at(&got, "/flow").into_iter().collect();
    let want: BTreeSet<i32> = (0..sent as i32).collect();
    assert_eq!(flowed, want, "flow messages lost or changed");
    assert_eq!(
        lights.messages_at("/s").len(),
        1,
        "only the message sent after the load was scaled: {:?}",
        lights.messages_at("/s")
    );
    let m = Metrics::scrape(metrics_addr(&pb));
    assert_eq!(m.get(CALLS, &plugin("scale")), Some(1.0), "{}", m.text);
}

/// A plugin file renamed over brings the new behaviour; the old instance gets `on_unload` and is logged unloaded.
#[test]
fn replaced_plugin_file_brings_new_behaviour_and_unloads_the_old_instance() {
    let dir = PluginDir::new();
    dir.install("libvariant.so", &plugin_lib(VARIANT_A));
    let lights = Receiver::new();
    let routes = plugin_route("v", "/v/*", "variant", "{ to: lights }");
    let pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let desk = pb.addr("desk");
    let client = Receiver::new();
    let answer = |letter: &str, address: &str| {
        osc::message(
            "/variant",
            &[
                OscArg::String(letter.into()),
                OscArg::String(address.into()),
            ],
        )
    };
    client.send_to(&int_msg("/v/1", 1), desk);
    lights.expect_bytes(&answer("a", "/v/1"), "variant a before the replacement");

    dir.install("libvariant.so", &plugin_lib(VARIANT_B));
    wait_lines(&pb, &[LOADED, "variant"], 2);
    wait_lines(&pb, &[REBUILT, "variant"], 1);
    let text = wait_lines(&pb, &["variant a unloaded"], 1);
    let text = if count_lines(&text, &[UNLOADED, "plugin=variant"]) == 0 {
        wait_lines(&pb, &[UNLOADED, "variant"], 1)
    } else {
        text
    };
    assert!(
        has_field(&line_with(&text, &[UNLOADED, "variant"]), "route", "v"),
        "{text}"
    );
    client.send_to(&int_msg("/v/2", 2), desk);
    lights.expect_bytes(&answer("b", "/v/2"), "variant b after the replacement");
    let text = wait_lines(&pb, &["variant b ready"], 1);
    assert_eq!(count_lines(&text, &["variant a ready"]), 1, "{text}");
    assert_eq!(count_lines(&text, &[NOT_LOADED]), 0, "{text}");
}

/// A plugin file overwritten in place (as `cp` does) does not crash the host, and the new library takes over.
#[test]
fn plugin_file_overwritten_in_place_does_not_crash_the_host() {
    let dir = PluginDir::new();
    dir.install("libvariant.so", &plugin_lib(VARIANT_A));
    let lights = Receiver::new();
    let routes = [
        barrier_route("lights"),
        plugin_route("v", "/v/*", "variant", "{ to: lights }"),
    ]
    .concat();
    let mut pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let desk = pb.addr("desk");
    let client = Receiver::new();
    client.send_to(&int_msg("/v/1", 1), desk);
    assert_eq!(
        message_of(&lights.expect("variant a").0).args[0],
        OscArg::String("a".into())
    );

    dir.overwrite_in_place("libvariant.so", &plugin_lib(VARIANT_B));
    wait_lines(&pb, &["variant a unloaded"], 1);
    // Poll: the watcher may load the file more than once while it is being written.
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let mut n = 2;
    loop {
        assert!(pb.is_running(), "patchbay died:\n{}", pb.stderr_text());
        client.send_to(&int_msg("/v/x", n), desk);
        if let Some((bytes, _)) = lights.recv_timeout(Duration::from_millis(500)) {
            if message_of(&bytes).args[0] == OscArg::String("b".into()) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "variant b never answered:\n{}",
            pb.stderr_text()
        );
        n += 1;
    }
    client.send_to(&barrier(1), desk);
    lights.until_barrier(&barrier(1));
    assert!(pb.is_running(), "patchbay died:\n{}", pb.stderr_text());
}

/// A removed plugin file: its route does nothing with a clear log, others run, and dropping it back restores it.
#[test]
fn removed_plugin_file_disables_its_routes_with_a_clear_log_and_others_run() {
    let dir = PluginDir::new();
    dir.install("libscale.so", &plugin_lib(SCALE));
    let lights = Receiver::new();
    let routes = [
        forward_route("flow", "/flow", "lights"),
        plugin_route(
            "sc",
            "/s",
            "scale",
            "{ in_min: 0, in_max: 10, out_min: 0, out_max: 100, to: lights }",
        ),
    ]
    .concat();
    let pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let desk = pb.addr("desk");
    let addr = metrics_addr(&pb);
    let client = Receiver::new();
    client.send_to(&int_msg("/s", 5), desk);
    lights.expect_bytes(&float_msg("/s", 50.0), "scale before the removal");

    dir.remove("libscale.so");
    let text = wait_lines(&pb, &[REMOVED, "scale"], 1);
    assert!(
        line_with(&text, &[REMOVED]).contains("libscale.so"),
        "{text}"
    );
    wait_lines(&pb, &[UNLOADED, "scale"], 1);
    wait_lines(&pb, &[REBUILT], 1);
    wait_lines(&pb, &[NAMES_MISSING, "scale"], 1);

    // The route still matches but hands nothing to a plugin; the forward route runs.
    client.send_to(&int_msg("/s", 5), desk);
    wait_value(
        addr,
        "patchbay_route_matches_total",
        &[("route", "sc")],
        2.0,
    );
    check_flow(&client, desk, &lights, 1);
    let m = Metrics::scrape(addr);
    assert_eq!(m.get(CALLS, &plugin("scale")), Some(1.0), "{}", m.text);

    // Back again: loaded and used.
    dir.install("libscale.so", &plugin_lib(SCALE));
    wait_lines(&pb, &[REBUILT, "scale"], 1);
    client.send_to(&int_msg("/s", 2), desk);
    lights.expect_bytes(
        &float_msg("/s", 20.0),
        "scale after it was dropped back in (nothing from the removed one before)",
    );
    check_flow(&client, desk, &lights, 2);
}

/// ABI version 999 is refused (at start and dropped in) saying what differs, before its entry is called.
#[test]
fn wrong_abi_version_is_refused_saying_what_differs() {
    const WHAT_DIFFERS: &str = "plugin ABI version 999, this host speaks version 1";
    let dir = PluginDir::new();
    dir.install("libwrong_abi.so", &plugin_lib(WRONG_ABI));
    dir.install("libscale.so", &plugin_lib(SCALE));
    let lights = Receiver::new();
    let routes = [
        forward_route("flow", "/flow", "lights"),
        plugin_route(
            "sc",
            "/s",
            "scale",
            "{ in_min: 0, in_max: 10, out_min: 0, out_max: 100, to: lights }",
        ),
    ]
    .concat();
    let mut pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let text = wait_lines(&pb, &[NOT_LOADED, WHAT_DIFFERS], 1);
    assert!(
        line_with(&text, &[WHAT_DIFFERS]).contains("libwrong_abi.so"),
        "the refusal names the file:\n{text}"
    );
    assert_eq!(
        count_lines(&text, &[LOADED]),
        1,
        "only scale loads:\n{text}"
    );
    let desk = pb.addr("desk");
    let client = Receiver::new();
    check_flow(&client, desk, &lights, 1);
    client.send_to(&int_msg("/s", 1), desk);
    lights.expect_bytes(&float_msg("/s", 10.0), "scale next to the refused library");

    // Dropped in while running: refused the same way.
    dir.install("libwrong_abi_2.so", &plugin_lib(WRONG_ABI));
    let text = wait_lines(&pb, &[NOT_LOADED, WHAT_DIFFERS], 2);
    assert!(
        count_lines(&text, &[WHAT_DIFFERS, "libwrong_abi_2.so"]) == 1,
        "{text}"
    );
    check_flow(&client, desk, &lights, 2);
    assert!(pb.is_running(), "patchbay died:\n{}", pb.stderr_text());
    assert!(
        !pb.stderr_text()
            .contains("patchbay_plugin_entry was called"),
        "the entry function of a wrong-ABI library was called"
    );
}

/// A `panic = "abort"` build is refused at load with a message naming it; its route does nothing, the rest runs.
#[test]
fn panic_abort_build_is_refused_at_load() {
    let dir = PluginDir::new();
    dir.install("libpanicky_abort.so", &panic_abort_lib());
    let lights = Receiver::new();
    let routes = [
        forward_route("flow", "/flow", "lights"),
        plugin_route("boom", "/boom", "panicky", ""),
    ]
    .concat();
    let pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let text = wait_lines(&pb, &[NOT_LOADED, "panicky", "panic = \"abort\""], 1);
    assert!(
        line_with(&text, &["panic = \"abort\""]).contains("libpanicky_abort.so"),
        "{text}"
    );
    assert_eq!(count_lines(&text, &[LOADED]), 0, "{text}");
    wait_lines(&pb, &[NAMES_MISSING, "panicky"], 1);
    let desk = pb.addr("desk");
    let client = Receiver::new();
    client.send_to(&int_msg("/boom", 1), desk);
    wait_value(
        metrics_addr(&pb),
        "patchbay_route_matches_total",
        &[("route", "boom")],
        1.0,
    );
    check_flow(&client, desk, &lights, 1);
    let m = Metrics::scrape(metrics_addr(&pb));
    assert_eq!(value_or_zero(&m, CALLS, "panicky"), 0.0, "{}", m.text);
}

/// Panics are caught, logged, counted one by one; other routes run; `error_budget: 3` disables on the 4th.
#[test]
fn panicking_plugin_is_contained_counted_and_disabled_by_its_error_budget() {
    let dir = PluginDir::new();
    dir.install("libpanicky.so", &plugin_lib(PANICKY));
    let lights = Receiver::new();
    let routes = [
        forward_route("flow", "/flow", "lights"),
        plugin_route("boom", "/boom", "panicky", ""),
    ]
    .concat();
    let extra = "  error_budget: 3\n  error_window_ms: 600000\n";
    let mut pb = Patchbay::start(&config(&dir, lights.addr(), extra, &routes));
    let desk = pb.addr("desk");
    let addr = metrics_addr(&pb);
    let client = Receiver::new();

    // One at a time: the 4th panic is still a call, so the budget of 3 allows 3 and disables on
    // the one past it.
    for n in 1..=4 {
        client.send_to(&int_msg("/boom", n), desk);
        wait_value(addr, PANICS, &plugin("panicky"), f64::from(n));
        check_flow(&client, desk, &lights, n);
        assert!(pb.is_running(), "patchbay died:\n{}", pb.stderr_text());
    }
    let text = wait_lines(&pb, &[DISABLED, "plugin=panicky"], 1);
    let failed = [
        CALL_FAILED,
        "plugin=panicky",
        "panicked",
        "panicky: boom on /boom",
    ];
    // Logged with the plugin's name; repeats within a second may be folded into one line (the
    // host rate-limits failure lines per instance), the metric has every one.
    let logged = count_lines(&text, &failed);
    assert!((1..=4).contains(&logged), "{logged} failure lines:\n{text}");
    assert!(
        line_with(&text, &failed).contains("panicky/src/lib.rs"),
        "the panic's location is logged:\n{text}"
    );

    client.send_to(&int_msg("/boom", 5), desk);
    let m = wait_value(addr, DROPS, &plugin("panicky"), 1.0);
    assert_eq!(m.get(PANICS, &plugin("panicky")), Some(4.0), "{}", m.text);
    assert_eq!(m.get(CALLS, &plugin("panicky")), Some(4.0), "{}", m.text);
    assert_eq!(m.get(ERRORS, &plugin("panicky")), Some(0.0), "{}", m.text);
    wait_lines(
        &pb,
        &["Dropped a message", "disabled after too many errors"],
        1,
    );
    check_flow(&client, desk, &lights, 5);
    assert!(pb.is_running(), "patchbay died:\n{}", pb.stderr_text());
}

/// A burst to a panicking plugin: once disabled by its budget, messages still queued are not handed to it.
#[test]
fn plugin_disabled_by_its_error_budget_gets_no_calls_from_its_queue() {
    const BURST: i32 = 40;
    let dir = PluginDir::new();
    dir.install("libpanicky.so", &plugin_lib(PANICKY));
    let lights = Receiver::new();
    let routes = [
        forward_route("flow", "/flow", "lights"),
        plugin_route("boom", "/boom", "panicky", ""),
    ]
    .concat();
    let extra = "  error_budget: 3\n  error_window_ms: 600000\n";
    let pb = Patchbay::start(&config(&dir, lights.addr(), extra, &routes));
    let desk = pb.addr("desk");
    let addr = metrics_addr(&pb);
    let client = Receiver::new();
    for n in 0..BURST {
        client.send_to(&int_msg("/boom", n), desk);
    }
    let m = wait_metrics(addr, "every message of the burst called or dropped", |m| {
        value_or_zero(m, PANICS, "panicky") + value_or_zero(m, DROPS, "panicky") >= f64::from(BURST)
    });
    wait_lines(&pb, &[DISABLED, "plugin=panicky"], 1);
    assert_eq!(
        m.get(PANICS, &plugin("panicky")),
        Some(4.0),
        "a disabled instance was still called with the messages in its queue:\n{}",
        m.text
    );
    check_flow(&client, desk, &lights, 1);
}

/// A call that never returns: marked stuck (log, gauge 1), others served, its messages dropped; clean stop.
#[test]
fn plugin_that_never_returns_is_marked_stuck_and_other_routes_are_served() {
    let dir = PluginDir::new();
    dir.install("libsleepy.so", &plugin_lib(SLEEPY));
    let lights = Receiver::new();
    let routes = [
        forward_route("flow", "/flow", "lights"),
        plugin_route("zz", "/z/*", "sleepy", "{ to: lights }"),
    ]
    .concat();
    let mut pb = Patchbay::start(&config(
        &dir,
        lights.addr(),
        "  call_timeout_ms: 300\n",
        &routes,
    ));
    let desk = pb.addr("desk");
    let addr = metrics_addr(&pb);
    let client = Receiver::new();
    let done = |address: &str| osc::message("/sleepy/done", &[OscArg::String(address.into())]);
    client.send_to(&int_msg("/z/ok", 1), desk);
    lights.expect_bytes(&done("/z/ok"), "sleepy answers before it hangs");
    let m = Metrics::scrape(addr);
    assert_eq!(
        m.get(STUCK_GAUGE, &plugin("sleepy")),
        Some(0.0),
        "{}",
        m.text
    );

    client.send_to(&int_msg("/z/hang", 1), desk);
    let text = wait_lines(&pb, &[STUCK, "plugin=sleepy"], 1);
    let line = line_with(&text, &[STUCK, "plugin=sleepy"]);
    assert!(line.contains("call_timeout_ms = 300"), "{line}");
    assert!(has_field(&line, "route", "zz"), "{line}");
    wait_value(addr, STUCK_GAUGE, &plugin("sleepy"), 1.0);

    for n in 1..=3 {
        check_flow(&client, desk, &lights, n);
    }
    for n in 1..=3 {
        client.send_to(&int_msg("/z/after", n), desk);
    }
    let m = wait_value(addr, DROPS, &plugin("sleepy"), 3.0);
    assert_eq!(m.get(CALLS, &plugin("sleepy")), Some(2.0), "{}", m.text);
    assert_eq!(
        m.get(STUCK_GAUGE, &plugin("sleepy")),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get(SECONDS_COUNT, &plugin("sleepy")),
        Some(1.0),
        "{}",
        m.text
    );
    wait_lines(&pb, &["Dropped a message", "it is stuck in a call"], 1);
    // Nothing from sleepy comes before the next forwarded message.
    check_flow(&client, desk, &lights, 4);
    assert!(pb.is_running(), "patchbay died:\n{}", pb.stderr_text());
    // The stuck thread does not keep patchbay from stopping cleanly (the call lasts 60 s).
    let status = pb.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", pb.stderr_text());
}

/// While a plugin works through a backlog its sends are held and sent together
/// (`channel::held`); sends held before a call that does not return are sent by the watchdog, not
/// kept until the call ends.
#[test]
fn sends_held_before_a_hanging_call_go_out() {
    let dir = PluginDir::new();
    dir.install("libsleepy.so", &plugin_lib(SLEEPY));
    let lights = Receiver::new();
    let routes = plugin_route("zz", "/z/*", "sleepy", "{ to: lights }");
    let mut pb = Patchbay::start(&config(
        &dir,
        lights.addr(),
        "  call_timeout_ms: 5000\n",
        &routes,
    ));
    let desk = pb.addr("desk");
    let client = Receiver::new();
    let done = |address: &str| osc::message("/sleepy/done", &[OscArg::String(address.into())]);
    // `ok` and `hang` queue up while `nap` sleeps 100 ms, so the answers to `nap` and `ok` are held
    // when `hang` starts its 60 s sleep.
    let sent = Instant::now();
    client.send_to(&int_msg("/z/nap", 100), desk);
    client.send_to(&int_msg("/z/ok", 1), desk);
    client.send_to(&int_msg("/z/hang", 1), desk);
    lights.expect_bytes(&done("/z/nap"), "the answer before the hang");
    lights.expect_bytes(&done("/z/ok"), "the second answer before the hang");
    // The hanging call is marked stuck 5 s after it started and lasts 60 s: answers seen sooner
    // were sent while it hung.
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_secs(5) && !pb.stderr_text().contains(STUCK),
        "the answers came during the hanging call ({waited:?}):\n{}",
        pb.stderr_text()
    );
    wait_lines(&pb, &[STUCK, "plugin=sleepy"], 1);
    let status = pb.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", pb.stderr_text());
}

/// A call past `call_timeout_ms` that returns: stuck meanwhile (drops), then resumed with a log and gauge 0.
#[test]
fn stuck_call_that_returns_resumes_routing() {
    let dir = PluginDir::new();
    dir.install("libsleepy.so", &plugin_lib(SLEEPY));
    let lights = Receiver::new();
    let routes = plugin_route("zz", "/z/*", "sleepy", "{ to: lights }");
    let pb = Patchbay::start(&config(
        &dir,
        lights.addr(),
        "  call_timeout_ms: 300\n",
        &routes,
    ));
    let desk = pb.addr("desk");
    let addr = metrics_addr(&pb);
    let client = Receiver::new();
    let done = |address: &str| osc::message("/sleepy/done", &[OscArg::String(address.into())]);

    client.send_to(&int_msg("/z/nap", 2_000), desk);
    wait_lines(&pb, &[STUCK, "plugin=sleepy"], 1);
    client.send_to(&int_msg("/z/during", 1), desk);
    wait_value(addr, DROPS, &plugin("sleepy"), 1.0);
    lights.expect_bytes(&done("/z/nap"), "the long call finishes");
    wait_lines(&pb, &[RESUMED, "plugin=sleepy"], 1);
    wait_value(addr, STUCK_GAUGE, &plugin("sleepy"), 0.0);
    client.send_to(&int_msg("/z/ok", 1), desk);
    lights.expect_bytes(
        &done("/z/ok"),
        "routing resumed (the dropped message never comes)",
    );
}

/// Text, a plain C library and random bytes named `.so` are refused with clear logs (start and live); the rest runs.
#[test]
fn files_that_are_not_plugin_libraries_are_refused_and_the_rest_runs() {
    let dir = PluginDir::new();
    dir.write("notes.so", b"show notes: cue 12 is the blackout\n");
    dir.install("libplain.so", &plain_c_lib());
    dir.install("libscale.so", &plugin_lib(SCALE));
    dir.write("readme.txt", b"not a library and not named like one\n");
    let lights = Receiver::new();
    let routes = [
        forward_route("flow", "/flow", "lights"),
        plugin_route(
            "sc",
            "/s",
            "scale",
            "{ in_min: 0, in_max: 10, out_min: 0, out_max: 100, to: lights }",
        ),
    ]
    .concat();
    let mut pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let text = wait_lines(&pb, &[NOT_LOADED, "notes.so", "is not a shared library"], 1);
    let text = if count_lines(&text, &["libplain.so"]) == 0 {
        wait_lines(&pb, &[NOT_LOADED, "libplain.so"], 1)
    } else {
        text
    };
    assert!(
        line_with(&text, &[NOT_LOADED, "libplain.so"])
            .contains("is not a patchbay plugin: it has no `patchbay_plugin_abi_version` function"),
        "{text}"
    );
    assert_eq!(count_lines(&text, &["readme.txt"]), 0, "{text}");
    assert_eq!(count_lines(&text, &[LOADED, "scale"]), 1, "{text}");
    let desk = pb.addr("desk");
    let client = Receiver::new();
    client.send_to(&int_msg("/s", 3), desk);
    lights.expect_bytes(&float_msg("/s", 30.0), "scale next to the refused files");
    check_flow(&client, desk, &lights, 1);

    // Dropped in while running.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    dir.write("garbage.so", &noise);
    wait_lines(
        &pb,
        &[NOT_LOADED, "garbage.so", "is not a shared library"],
        1,
    );
    check_flow(&client, desk, &lights, 2);
    client.send_to(&int_msg("/s", 4), desk);
    lights.expect_bytes(&float_msg("/s", 40.0), "scale after a refused drop");
    assert!(pb.is_running(), "patchbay died:\n{}", pb.stderr_text());
}

/// A plugins folder other users can write to is refused (at start and for later drops) with a fix hint.
#[test]
fn world_writable_plugins_folder_is_refused() {
    let dir = PluginDir::new();
    dir.install("libscale.so", &plugin_lib(SCALE));
    dir.set_mode(0o777);
    let lights = Receiver::new();
    let routes = [
        forward_route("flow", "/flow", "lights"),
        plugin_route(
            "sc",
            "/s",
            "scale",
            "{ in_min: 0, in_max: 10, out_min: 0, out_max: 100, to: lights }",
        ),
    ]
    .concat();
    let pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let folder = dir.path().display().to_string();
    let text = wait_lines(&pb, &["can be written by other users", &folder], 1);
    assert!(
        line_with(&text, &["can be written by other users"]).contains("chmod o-w"),
        "{text}"
    );
    wait_lines(&pb, &[NAMES_MISSING, "scale"], 1);
    let desk = pb.addr("desk");
    let client = Receiver::new();
    client.send_to(&int_msg("/s", 1), desk);
    check_flow(&client, desk, &lights, 1);

    // A library dropped in later is refused as well.
    dir.install("libthrottle.so", &plugin_lib(THROTTLE));
    let text = wait_lines(&pb, &["can be written by other users", &folder], 2);
    assert_eq!(count_lines(&text, &[LOADED]), 0, "{text}");
    check_flow(&client, desk, &lights, 2);
    let m = Metrics::scrape(metrics_addr(&pb));
    assert_eq!(value_or_zero(&m, CALLS, "scale"), 0.0, "{}", m.text);
    dir.set_mode(0o755);
}

/// A target's instance survives unrelated config edits and is replaced (old one unloaded) when its `config:` changes.
#[test]
fn editing_a_plugin_targets_config_makes_a_new_instance_and_other_edits_keep_it() {
    let dir = PluginDir::new();
    dir.install("libvariant.so", &plugin_lib(VARIANT_A));
    let lights = Receiver::new();
    let stage = Receiver::new();
    let v_route = |to: &str| plugin_route("v", "/v/*", "variant", &format!("{{ to: {to} }}"));
    let stage_channel = format!(
        "  stage:\n    kind: udp\n    send: {}\nplugins:",
        stage.addr()
    );
    let show = |routes: &str| {
        config(&dir, lights.addr(), "", routes).replacen("plugins:", &stage_channel, 1)
    };
    let answer = |address: &str| {
        osc::message(
            "/variant",
            &[OscArg::String("a".into()), OscArg::String(address.into())],
        )
    };
    let pb = Patchbay::start(&show(&v_route("lights")));
    let desk = pb.addr("desk");
    let client = Receiver::new();
    client.send_to(&int_msg("/v/1", 1), desk);
    lights.expect_bytes(&answer("/v/1"), "the first instance");

    // An unrelated edit: the instance is kept (no second init, nothing unloaded).
    save_config(
        &pb,
        &show(&[v_route("lights"), forward_route("flow", "/flow", "lights")].concat()),
    );
    let text = wait_lines(&pb, &[APPLIED], 1);
    assert_eq!(count_lines(&text, &["variant a ready"]), 1, "{text}");
    assert_eq!(count_lines(&text, &[UNLOADED]), 0, "{text}");
    check_flow(&client, desk, &lights, 1);
    client.send_to(&int_msg("/v/2", 2), desk);
    lights.expect_bytes(&answer("/v/2"), "the same instance after an unrelated edit");

    // The target's config changes: a new instance sends to the new channel; the old one goes.
    save_config(
        &pb,
        &show(&[v_route("stage"), forward_route("flow", "/flow", "lights")].concat()),
    );
    let text = wait_lines(&pb, &[APPLIED], 2);
    assert_eq!(count_lines(&text, &["variant a ready"]), 2, "{text}");
    wait_lines(&pb, &["variant a unloaded"], 1);
    wait_lines(&pb, &[UNLOADED, "plugin=variant", "route=v"], 1);
    client.send_to(&int_msg("/v/3", 3), desk);
    stage.expect_bytes(&answer("/v/3"), "the new instance with the edited config");
    check_flow(&client, desk, &lights, 2);
}

/// Messages past a busy instance's `queue` are dropped and counted; the queued ones run in order afterwards.
#[test]
fn messages_beyond_a_full_plugin_queue_are_dropped_and_counted() {
    let dir = PluginDir::new();
    dir.install("libsleepy.so", &plugin_lib(SLEEPY));
    let lights = Receiver::new();
    let routes = plugin_route("zz", "/z/*", "sleepy", "{ to: lights }");
    let extra = "  queue: 2\n  call_timeout_ms: 30000\n";
    let pb = Patchbay::start(&config(&dir, lights.addr(), extra, &routes));
    let desk = pb.addr("desk");
    let addr = metrics_addr(&pb);
    let client = Receiver::new();
    let done = |address: &str| osc::message("/sleepy/done", &[OscArg::String(address.into())]);

    client.send_to(&int_msg("/z/nap", 1_500), desk);
    // The nap is being called (taken off the queue) before the rest is sent.
    wait_value(addr, CALLS, &plugin("sleepy"), 1.0);
    for n in 0..10 {
        client.send_to(&int_msg(&format!("/z/q{n}"), n), desk);
    }
    let m = wait_value(addr, DROPS, &plugin("sleepy"), 8.0);
    assert_eq!(
        m.get(STUCK_GAUGE, &plugin("sleepy")),
        Some(0.0),
        "{}",
        m.text
    );
    wait_lines(&pb, &["Dropped a message", "its queue is full"], 1);
    lights.expect_bytes(&done("/z/nap"), "the long call");
    lights.expect_bytes(&done("/z/q0"), "the first queued message");
    lights.expect_bytes(&done("/z/q1"), "the second queued message");
    client.send_to(&int_msg("/z/last", 1), desk);
    lights.expect_bytes(&done("/z/last"), "nothing else was queued");
    let m = wait_value(addr, SECONDS_COUNT, &plugin("sleepy"), 4.0);
    assert_eq!(m.get(CALLS, &plugin("sleepy")), Some(4.0), "{}", m.text);
    assert_eq!(m.get(DROPS, &plugin("sleepy")), Some(8.0), "{}", m.text);
}

/// A `config:` the plugin refuses leaves that target idle with the plugin's message logged; the rest runs.
#[test]
fn plugin_config_the_plugin_refuses_leaves_that_target_doing_nothing() {
    let dir = PluginDir::new();
    dir.install("libscale.so", &plugin_lib(SCALE));
    let lights = Receiver::new();
    let routes = [
        forward_route("flow", "/flow", "lights"),
        plugin_route(
            "bad",
            "/bad",
            "scale",
            "{ in_max: 10, out_min: 0, out_max: 100, to: lights }",
        ),
        plugin_route(
            "sc",
            "/s",
            "scale",
            "{ in_min: 0, in_max: 10, out_min: 0, out_max: 100, to: lights }",
        ),
    ]
    .concat();
    let pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    let text = wait_lines(
        &pb,
        &["Plugin refused its configuration", "plugin=scale"],
        1,
    );
    let line = line_with(&text, &["Plugin refused its configuration"]);
    assert!(
        line.contains("scale config:") && line.contains("in_min"),
        "{line}"
    );
    assert!(has_field(&line, "route", "bad"), "{line}");
    let desk = pb.addr("desk");
    let client = Receiver::new();
    client.send_to(&int_msg("/bad", 5), desk);
    client.send_to(&int_msg("/s", 5), desk);
    lights.expect_bytes(
        &float_msg("/s", 50.0),
        "the well-configured target (nothing from the refused one before it)",
    );
    check_flow(&client, desk, &lights, 1);
    let m = Metrics::scrape(metrics_addr(&pb));
    assert_eq!(m.get(CALLS, &plugin("scale")), Some(1.0), "{}", m.text);
}

/// Removes a folder when dropped (also when the test fails).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private copy must not follow a symlink planted at a predictable temp path (regression test).
#[test]
fn private_copies_do_not_follow_a_symlink_planted_in_the_temp_dir() {
    const PRECIOUS: &str = "the show file someone else's symlink points at\n";
    let dir = PluginDir::new(); // empty: nothing is copied at start
    let lights = Receiver::new();
    let routes = plugin_route(
        "sc",
        "/s",
        "scale",
        "{ in_min: 0, in_max: 10, out_min: 0, out_max: 100, to: lights }",
    );
    let pb = Patchbay::start(&config(&dir, lights.addr(), "", &routes));
    // What another local user could do once the pid is known, against the pid-named copies
    // folder the host used before ec4988f (`$TMPDIR/patchbay-plugins-<pid>/<generation>-<file>`):
    // a world-writable folder with a symlink named like the first copy pointing at a file of ours.
    let copies = std::env::temp_dir().join(format!("patchbay-plugins-{}", pb.pid()));
    let _cleanup = RemoveOnDrop(copies.clone());
    std::fs::create_dir_all(&copies).expect("create the copies folder first");
    set_mode(&copies, 0o777);
    let victim_dir = tempfile::tempdir().expect("tempdir");
    let victim = victim_dir.path().join("show.txt");
    std::fs::write(&victim, PRECIOUS).expect("write the victim file");
    std::os::unix::fs::symlink(&victim, copies.join("1-libscale.so")).expect("plant the symlink");

    dir.install("libscale.so", &plugin_lib(SCALE));
    let text = pb.wait_stderr(PLUGIN_TIMEOUT, |t| {
        count_lines(t, &[REBUILT]) + count_lines(t, &[NOT_LOADED, "libscale.so"]) > 0
    });
    let after = std::fs::read(&victim).expect("read the victim file");
    assert!(
        after == PRECIOUS.as_bytes(),
        "the host copied the plugin through a symlink planted in its copies folder {}: the \
         victim file now holds {} bytes (the library); log:\n{text}",
        copies.display(),
        after.len()
    );
}

/// A config edit replacing an instance whose call hangs with a full queue is applied without waiting for it.
#[test]
fn config_edit_is_applied_while_a_plugin_hangs_with_a_full_queue() {
    let dir = PluginDir::new();
    dir.install("libsleepy.so", &plugin_lib(SLEEPY));
    let lights = Receiver::new();
    let extra = "  queue: 1\n  call_timeout_ms: 10000\n";
    let show = |sleepy_config: &str| {
        let routes = [
            forward_route("flow", "/flow", "lights"),
            plugin_route("zz", "/z/*", "sleepy", sleepy_config),
        ]
        .concat();
        config(&dir, lights.addr(), extra, &routes)
    };
    let pb = Patchbay::start(&show("{ to: lights }"));
    let desk = pb.addr("desk");
    let addr = metrics_addr(&pb);
    let client = Receiver::new();
    let done = |address: &str| osc::message("/sleepy/done", &[OscArg::String(address.into())]);

    client.send_to(&int_msg("/z/hang", 1), desk);
    wait_value(addr, CALLS, &plugin("sleepy"), 1.0);
    client.send_to(&int_msg("/z/queued", 1), desk);
    client.send_to(&int_msg("/z/over", 1), desk);
    // The queue (1) is full: the third message was dropped.
    wait_value(addr, DROPS, &plugin("sleepy"), 1.0);

    save_config(&pb, &show("{ to: lights, edited: true }"));
    let started = Instant::now();
    let text = pb.wait_stderr(PLUGIN_TIMEOUT, |t| {
        count_lines(t, &[APPLIED]) > 0 || started.elapsed() > Duration::from_secs(15)
    });
    assert_eq!(
        count_lines(&text, &[APPLIED]),
        1,
        "the edit was not applied within 15 s while the old instance hangs with a full queue \
         (the host waits to queue its unload?); log:\n{text}"
    );
    client.send_to(&int_msg("/z/new", 1), desk);
    lights.expect_bytes(&done("/z/new"), "the new instance answers");
    check_flow(&client, desk, &lights, 1);
}

/// Proves: a plugin's reply to a message that came over TCP goes back on that very connection, in
/// its framing (the `scale` plugin without `to` answers the sender), and a second connection gets
/// only its own answers.
#[test]
fn a_plugin_reply_goes_back_on_the_tcp_connection_the_message_came_from() {
    use patchbay_tests::tcp::{Framing, TcpClient};
    let dir = PluginDir::new();
    dir.install("libscale.so", &plugin_lib(SCALE));
    let lights = Receiver::new();
    let text = config(
        &dir,
        lights.addr(),
        "",
        &plugin_route(
            "answer",
            "/level",
            "scale",
            "{ in_min: 0, in_max: 100, out_min: 0.0, out_max: 1.0 }",
        ),
    )
    .replace(
        "channels:\n",
        "channels:\n  console:\n    kind: tcp\n    listen: 127.0.0.1:0\n",
    );
    let pb = Patchbay::start(&text);
    let console = pb.addr("console");
    let mut slip = TcpClient::connect(console, Framing::Slip);
    let mut length = TcpClient::connect(console, Framing::Length);
    slip.send(&int_msg("/level", 50));
    length.send(&int_msg("/level", 25));
    slip.expect_bytes(
        &osc::message("/level", &[OscArg::Float(0.5)]),
        "scale's answer on the SLIP connection",
    );
    length.expect_bytes(
        &osc::message("/level", &[OscArg::Float(0.25)]),
        "scale's answer on the length connection",
    );
}
