//! python-osc (from PyPI, pinned) as a real third-party sender and receiver on both sides of
//! patchbay: `tests/python/sender.py` → patchbay → `tests/python/receiver.py`.

use serde_json::{json, Value};

use patchbay_tests::*;

fn config(rx: std::net::SocketAddr) -> String {
    format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n  lights:\n    kind: udp\n    send: {rx}\nroutes:\n  - name: py\n    match: /py/*\n    stop: true\n    to:\n      - forward: lights\n        rewrite: /fwd/$1\n  - name: rest\n    unmatched: true\n    to:\n      - forward: lights\n"
    )
}

/// Runs the receiver for `count` messages, patchbay between, and the sender with `spec`.
fn through_patchbay(count: usize, spec: Value) -> Vec<Value> {
    let (mut receiver, rx) = python_receiver(count, 60);
    let pb = Patchbay::start(&config(rx));
    python_send(pb.addr("desk"), &spec);
    let (status, lines) = receiver.wait_exit(std::time::Duration::from_secs(90));
    assert!(
        status.success(),
        "receiver.py: {status}, got {lines:#?}\nstderr:\n{}\npatchbay stderr:\n{}",
        receiver.stderr_text(),
        pb.stderr_text()
    );
    let lights = pb.channel("lights").local.expect("lights local address");
    lines
        .iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("receiver line {l:?}: {e}"));
            let from: std::net::SocketAddr = v["from"].as_str().unwrap().parse().unwrap();
            assert_eq!(
                from.port(),
                lights.port(),
                "python-osc saw patchbay's lights socket as the sender"
            );
            v
        })
        .collect()
}

/// Compares a received float (JSON number) with an f32 value sent.
fn f32_of(v: &Value) -> f32 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number")) as f32
}

#[test]
fn python_osc_simple_client_through_patchbay_to_python_osc_server() {
    let spec = json!([
        {"simple": "/py/simple", "values": [1, 2.5, "go", true, false, null, {"blob": "00ff10"}, 5_000_000_000i64]},
        {"simple": "/other/simple", "values": [[1, 2], "x"]},
        {"simple": "/py/single", "values": [-3]},
    ]);
    let got = through_patchbay(3, spec);
    assert_eq!(
        got[0]["address"], "/fwd/simple",
        "rewritten by the py route: {}",
        got[0]
    );
    assert_eq!(got[0]["args"][0], 1);
    assert_eq!(f32_of(&got[0]["args"][1]), 2.5);
    assert_eq!(got[0]["args"][2], "go");
    assert_eq!(got[0]["args"][3], true);
    assert_eq!(got[0]["args"][4], false);
    assert_eq!(got[0]["args"][5], Value::Null);
    assert_eq!(got[0]["args"][6], json!({"blob": "00ff10"}));
    assert_eq!(got[0]["args"][7], 5_000_000_000i64);
    assert_eq!(got[0]["args"].as_array().unwrap().len(), 8);
    assert_eq!(got[0]["bundle"], false);

    assert_eq!(
        got[1]["address"], "/other/simple",
        "forwarded unchanged by the unmatched route"
    );
    assert_eq!(got[1]["args"], json!([[1, 2], "x"]), "an array survives");

    assert_eq!(got[2]["address"], "/fwd/single");
    assert_eq!(got[2]["args"], json!([-3]));
}

#[test]
fn python_osc_message_builder_types_through_patchbay() {
    let spec = json!([
        {"message": "/py/typed", "args": [
            ["i", -7], ["f", 0.1], ["d", 0.1], ["h", -9_000_000_000i64], ["s", "héllo"],
            ["b", {"blob": "00"}], ["r", 0x1122_3344u32], ["m", {"midi": [1, 0x90, 60, 127]}],
            ["T", true], ["F", false], ["N", null], [["i", "s", "d"], [1, "in", 2.5]]
        ]},
        {"message": "/untouched", "args": [["d", 1e300], ["s", ""]]},
    ]);
    let got = through_patchbay(2, spec);
    let a = &got[0]["args"];
    assert_eq!(got[0]["address"], "/fwd/typed");
    assert_eq!(a[0], -7);
    assert_eq!(f32_of(&a[1]), 0.1f32, "f keeps its 32-bit value");
    assert_eq!(a[2].as_f64(), Some(0.1), "d keeps its 64-bit value");
    assert_eq!(a[3], -9_000_000_000i64);
    assert_eq!(a[4], "héllo");
    assert_eq!(a[5], json!({"blob": "00"}));
    assert_eq!(a[6], 0x1122_3344u32);
    assert_eq!(a[7], json!({"midi": [1, 0x90, 60, 127]}));
    assert_eq!(a[8], true);
    assert_eq!(a[9], false);
    assert_eq!(a[10], Value::Null);
    assert_eq!(a[11], json!([1, "in", 2.5]));
    assert_eq!(a.as_array().unwrap().len(), 12);

    assert_eq!(got[1]["address"], "/untouched");
    assert_eq!(got[1]["args"], json!([1e300, ""]));
}

#[test]
fn python_osc_bundle_through_patchbay() {
    // The bundle's messages match no route that rewrites, so the unmatched route forwards the bundle
    // as it is; the python-osc server must see the messages in order, delivered in a bundle.
    let spec = json!([
        {"bundle": [
            {"message": "/b/1", "args": [["i", 1]]},
            {"message": "/b/2", "args": [["s", "two"]]},
            {"bundle": [{"message": "/b/3", "args": [["f", 3.5]]}]},
        ]},
        {"message": "/py/after", "args": []},
    ]);
    let got = through_patchbay(4, spec);
    let addresses: Vec<&str> = got.iter().map(|v| v["address"].as_str().unwrap()).collect();
    assert_eq!(addresses, vec!["/b/1", "/b/2", "/b/3", "/fwd/after"]);
    assert_eq!(got[0]["args"], json!([1]));
    assert_eq!(got[1]["args"], json!(["two"]));
    assert_eq!(f32_of(&got[2]["args"][0]), 3.5);
    for (i, v) in got[..3].iter().enumerate() {
        assert_eq!(
            v["bundle"], true,
            "message {i} of the bundle arrived in a bundle: {v}"
        );
    }
    assert_eq!(got[3]["bundle"], false);
}

#[test]
fn patchbay_send_into_python_osc_server() {
    // Our encoder (via the CLI) decoded by a third party. python-osc skips S, c, I and t, so those
    // are left out.
    let (mut receiver, rx) = python_receiver(1, 60);
    let done = run_bounded(
        patchbay_cmd().args([
            "send",
            &rx.to_string(),
            "/cli/all",
            "i:1",
            "f:0.5",
            "s:go",
            "h:123",
            "d:0.25",
            "b:00ff",
            "r:11223344",
            "m:01902040",
            "T",
            "F",
            "N",
            "[",
            "i:2",
            "s:in",
            "]",
        ]),
        EXIT_TIMEOUT,
    );
    assert_eq!(done.code, Some(0), "{}", done.output());
    let (status, lines) = receiver.wait_exit(std::time::Duration::from_secs(90));
    assert!(
        status.success(),
        "receiver.py: {status}\n{}",
        receiver.stderr_text()
    );
    let v: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["address"], "/cli/all");
    assert_eq!(
        v["args"],
        json!([1, 0.5, "go", 123, 0.25, {"blob": "00ff"}, 0x1122_3344u32, {"midi": [1, 0x90, 0x20, 0x40]}, true, false, null, [2, "in"]])
    );
}
