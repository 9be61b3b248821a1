//! The example configs in `configs/` are valid as shipped, and the TCP/peer demo does what its
//! comments say when its fixed ports are swapped for test ones (everything on 127.0.0.1).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use patchbay_plugin_api::osc::OscArg;
use patchbay_tests::tcp::*;
use patchbay_tests::*;

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// Proves: `patchbay check` accepts every file in `configs/` (a broken example is a defect).
#[test]
fn every_shipped_config_checks() {
    let mut checked = 0;
    for entry in std::fs::read_dir(configs_dir()).expect("configs/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let done = run_bounded(patchbay_cmd().arg("check").arg(&path), EXIT_TIMEOUT);
        assert_eq!(done.code, Some(0), "{}: {}", path.display(), done.output());
        checked += 1;
    }
    assert!(
        checked >= 3,
        "expected the shipped configs, checked {checked}"
    );
}

/// A 128-byte peerpy header.
fn header(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(128, b'|');
    bytes
}

/// Proves: the TCP/peer demo as shipped (ports swapped): a console that connects is greeted on its
/// connection, its `/desk/go` reaches the lights and, rewritten to `/go`, the QLab-style server over
/// SLIP; a peerpy json value reaches the lights as `/lx/from-tools`.
#[test]
fn the_tcp_and_peer_demo_routes_as_its_comments_say() {
    let text = std::fs::read_to_string(configs_dir().join("tcp-peers-demo.yaml")).expect("demo");
    let lights = Receiver::new();
    let qlab = TcpListener::bind("127.0.0.1:0").expect("qlab stand-in");
    let qlab_addr: SocketAddr = qlab.local_addr().expect("addr");
    let text = text
        .replace("127.0.0.1:3032", "127.0.0.1:0")
        .replace("127.0.0.1:5050", "127.0.0.1:0")
        .replace("127.0.0.1:7000", &lights.addr().to_string())
        .replace("127.0.0.1:53000", &qlab_addr.to_string());
    let pb = Patchbay::start(&text);
    let (server, _) = accept_timeout(&qlab, READY_TIMEOUT).expect("the qlab channel connects");
    let mut qlab_side = TcpClient::from_stream(server, Framing::Slip);

    let mut console = TcpClient::connect(pb.addr("console"), Framing::Slip);
    let hello = console.expect("the greeting on the console's connection");
    assert!(
        hello.starts_with(b"/patchbay/hello\0"),
        "greeting: {:?}",
        String::from_utf8_lossy(&hello)
    );
    let go = osc::message("/desk/go", &[OscArg::Int(1)]);
    console.send(&go);
    lights.expect_bytes(&go, "the console's /desk/go on the lights");
    qlab_side.expect_bytes(
        &osc::message("/go", &[OscArg::Int(1)]),
        "/go on the QLab-style server, over SLIP",
    );

    let mut tool = std::net::TcpStream::connect(pb.addr("tools")).expect("peer connects");
    use std::io::{Read, Write};
    tool.write_all(&header(
        "HELLO|peer_name=127.0.0.1:1&data_type=json&strict=True",
    ))
    .expect("hello");
    let mut answer = [0u8; 128];
    tool.set_read_timeout(Some(RECV_TIMEOUT)).expect("timeout");
    tool.read_exact(&mut answer).expect("answer");
    assert!(
        answer.starts_with(b"ACCEPT"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let payload = br#"{"data": [3, "fade"]}"#;
    let mut data = header(&format!("DATA|data_size={}&data_type=json", payload.len()));
    data.extend_from_slice(payload);
    tool.write_all(&data).expect("data");
    lights.expect_bytes(
        &osc::message(
            "/lx/from-tools",
            &[OscArg::Int(3), OscArg::String("fade".into())],
        ),
        "the tool's json value on the lights",
    );
}
