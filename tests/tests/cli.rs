//! The command line: `send` into `dump`, the ready line and file, a port taken at start (and
//! `--strict`), clean shutdown on SIGTERM and SIGINT, `--help`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use patchbay_plugin_api::osc::{OscArg, TimeTag};
use patchbay_tests::*;

/// `patchbay dump --bind 127.0.0.1 0`, and the address it reports on stderr.
fn start_dump() -> (LineProc, SocketAddr) {
    let mut dump = LineProc::spawn(patchbay_cmd().args(["dump", "--bind", "127.0.0.1", "0"]));
    let line = dump.wait_stderr(READY_TIMEOUT, |l| {
        l.starts_with("patchbay dump: listening on ")
    });
    let addr: SocketAddr = line["patchbay dump: listening on ".len()..]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("dump's listening line {line:?}: {e}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "dump reports the port it actually bound");
    (dump, addr)
}

/// Splits a dump line `HH:MM:SS.mmm IP:PORT REST` into (time, sender, REST with its indentation).
fn split_dump_line(line: &str) -> (&str, SocketAddr, &str) {
    let (time, rest) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("dump line {line:?}"));
    let (sender, rest) = rest
        .split_once(' ')
        .unwrap_or_else(|| panic!("dump line {line:?}"));
    let sender = sender
        .parse()
        .unwrap_or_else(|e| panic!("sender {sender:?} in dump line {line:?}: {e}"));
    let t: Vec<&str> = time.split([':', '.']).collect();
    assert!(
        t.len() == 4
            && t.iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "dump line does not start with HH:MM:SS.mmm: {line:?}"
    );
    (time, sender, rest)
}

fn send(to: SocketAddr, args: &[&str]) -> Finished {
    let done = run_bounded(
        patchbay_cmd().arg("send").arg(to.to_string()).args(args),
        EXIT_TIMEOUT,
    );
    assert_eq!(
        done.code,
        Some(0),
        "patchbay send {args:?} failed:\n{}",
        done.output()
    );
    done
}

#[test]
fn send_into_dump_every_type() {
    let (mut dump, addr) = start_dump();
    send(
        addr,
        &[
            "/test/all",
            "i:1",
            "f:0.5",
            "s:go",
            "S:sym",
            "h:123",
            "d:0.25",
            "c:x",
            "b:00ff",
            "r:11223344",
            "m:01902040",
            "T",
            "F",
            "N",
            "I",
            "[",
            "i:2",
            "s:in",
            "]",
            "t:immediately",
        ],
    );
    let line = dump
        .next_stdout(RECV_TIMEOUT)
        .expect("dump printed nothing for the message");
    let (_, sender, rest) = split_dump_line(&line);
    assert_eq!(sender.ip().to_string(), "127.0.0.1");
    assert_eq!(
        rest,
        r#"/test/all ,ifsShdcbrmTFNI[is]t 1 0.5 "go" "sym" 123 0.25 'x' blob[2]:00ff #11223344 midi:01902040 true false nil impulse [2 "in"] immediately"#
    );

    send(addr, &["/plain", "42", "2.5", "hello", "5000000000", "-7"]);
    let line = dump
        .next_stdout(RECV_TIMEOUT)
        .expect("dump printed nothing for the inferred message");
    let (_, _, rest) = split_dump_line(&line);
    assert_eq!(
        rest, r#"/plain ,ifshi 42 2.5 "hello" 5000000000 -7"#,
        "plain values are inferred"
    );

    send(addr, &["/none"]);
    let line = dump
        .next_stdout(RECV_TIMEOUT)
        .expect("dump printed nothing for the message without arguments");
    assert_eq!(split_dump_line(&line).2, "/none ,");
}

#[test]
fn send_produces_the_exact_bytes() {
    let rx = Receiver::new();
    send(
        rx.addr(),
        &[
            "/x",
            "i:1",
            "f:0.5",
            "s:go",
            "b:0102030405",
            "T",
            "h:-2",
            "d:0.25",
        ],
    );
    rx.expect_bytes(
        &osc::message(
            "/x",
            &[
                OscArg::Int(1),
                OscArg::Float(0.5),
                OscArg::String("go".into()),
                OscArg::Blob(vec![1, 2, 3, 4, 5]),
                OscArg::True,
                OscArg::Long(-2),
                OscArg::Double(0.25),
            ],
        ),
        "patchbay send's datagram",
    );
}

#[test]
fn send_refuses_a_bad_argument() {
    let rx = Receiver::new();
    let done = run_bounded(
        patchbay_cmd().args(["send", &rx.addr().to_string(), "/x", "i:abc"]),
        EXIT_TIMEOUT,
    );
    assert_ne!(
        done.code,
        Some(0),
        "send with i:abc should fail:\n{}",
        done.output()
    );
    assert!(
        done.output().contains("i:abc"),
        "the error names the argument:\n{}",
        done.output()
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_none(),
        "nothing is sent when an argument is bad"
    );
}

#[test]
fn dump_shows_bundles_indented_and_survives_garbage() {
    let (mut dump, addr) = start_dump();
    let tx = Receiver::new();
    let packet = osc::bundle(
        TimeTag::IMMEDIATELY,
        &[
            osc::message("/b/one", &[OscArg::Int(1)]),
            osc::bundle(
                TimeTag::IMMEDIATELY,
                &[osc::message("/b/two", &[OscArg::String("two".into())])],
            ),
            osc::message("/b/three", &[]),
        ],
    );
    tx.send_to(&packet, addr);
    let lines = dump.collect_stdout_until(RECV_TIMEOUT, |l| l.len() >= 5);
    let rests: Vec<&str> = lines.iter().map(|l| split_dump_line(l).2).collect();
    assert_eq!(
        rests,
        vec![
            "#bundle immediately",
            "  /b/one ,i 1",
            "  #bundle immediately",
            r#"    /b/two ,s "two""#,
            "  /b/three ,"
        ],
        "bundle header with its time tag, elements indented by nesting level"
    );
    for l in &lines {
        assert_eq!(
            split_dump_line(l).1,
            tx.addr(),
            "every line names the sender"
        );
    }

    tx.send_to(b"garbage", addr);
    let line = dump
        .next_stdout(RECV_TIMEOUT)
        .expect("dump printed nothing for garbage");
    assert!(
        split_dump_line(&line)
            .2
            .starts_with("undecodable (7 bytes)"),
        "garbage line: {line}"
    );
    tx.send_to(&osc::message("/after", &[]), addr);
    let line = dump
        .next_stdout(RECV_TIMEOUT)
        .expect("dump stopped after garbage");
    assert_eq!(split_dump_line(&line).2, "/after ,");
}

#[test]
fn ready_line_and_ready_file_describe_every_channel() {
    let rx = Receiver::new();
    let yaml = format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n  lights:\n    kind: udp\n    send: {}\n  both:\n    kind: udp\n    listen: 127.0.0.1:0\n    send: {}\nroutes:\n  - name: all\n    unmatched: true\n    to:\n      - forward: lights\n",
        rx.addr(),
        rx.addr()
    );
    let pb = Patchbay::start(&yaml);
    let ready = pb.ready();
    assert_eq!(ready.pid, pb.pid(), "ready file pid");
    assert_eq!(
        ready.channels.len(),
        3,
        "every channel is in the ready file: {}",
        ready.raw
    );
    assert_eq!(ready.metrics, None, "no metrics configured");

    let desk = pb.channel("desk");
    assert_eq!(desk.kind, "udp");
    assert!(desk.up, "desk is up");
    assert_eq!(desk.send, None);
    let listen = desk.listen.expect("desk listen");
    assert_eq!(listen.ip().to_string(), "127.0.0.1");
    assert_ne!(listen.port(), 0, "the actual bound port, not 0");
    assert_eq!(desk.error, None);

    let lights = pb.channel("lights");
    assert!(lights.up);
    assert_eq!(lights.listen, None);
    assert_eq!(lights.send, Some(rx.addr()));
    assert!(
        lights.local.is_some_and(|a| a.port() != 0),
        "a sending channel names its socket: {lights:?}"
    );

    let both = pb.channel("both");
    assert_eq!(
        both.local, both.listen,
        "listen+send sends from the listening socket"
    );

    let stdout = {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = pb.stdout_text();
            if text.contains("patchbay ready:") || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let line = stdout
        .lines()
        .find(|l| l.starts_with("patchbay ready:"))
        .unwrap_or_else(|| panic!("no `patchbay ready:` line on stdout:\n{stdout}"));
    for name in ["desk", "lights", "both"] {
        assert!(
            line.contains(name),
            "ready line lacks channel {name}: {line}"
        );
    }
    assert!(
        line.contains(&listen.to_string()),
        "ready line lacks desk's bound address {listen}: {line}"
    );
    assert!(
        line.contains(&pb.addr("both").to_string()),
        "ready line lacks both's bound address: {line}"
    );
    assert_eq!(
        stdout.matches("patchbay ready:").count(),
        1,
        "one ready line:\n{stdout}"
    );
}

fn port_taken_config(port: u16, rx: SocketAddr) -> String {
    format!(
        "version: 1\nchannels:\n  taken:\n    kind: udp\n    listen: 127.0.0.1:{port}\n    retry_ms: 100\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n  lights:\n    kind: udp\n    send: {rx}\nroutes:\n  - name: all\n    unmatched: true\n    to:\n      - forward: lights\n"
    )
}

#[test]
fn a_port_taken_at_start_does_not_stop_the_show() {
    let rx = Receiver::new();
    let blocker = Receiver::new();
    let port = blocker.addr().port();
    let pb = Patchbay::start(&port_taken_config(port, rx.addr()));

    let taken = pb.channel("taken");
    assert!(
        !taken.up,
        "the channel whose port is taken is down: {taken:?}"
    );
    let error = taken
        .error
        .clone()
        .unwrap_or_else(|| panic!("no error for the taken channel: {}", pb.ready().raw));
    assert!(
        error.contains("taken"),
        "the error names the channel: {error}"
    );
    assert!(
        error.contains(&port.to_string()),
        "the error names the port {port}: {error}"
    );
    assert!(
        pb.channel("desk").up && pb.channel("lights").up,
        "the other channels run: {}",
        pb.ready().raw
    );

    let m = osc::message("/via/desk", &[OscArg::Int(1)]);
    send_to(&m, pb.addr("desk"));
    rx.expect_bytes(
        &m,
        "forwarding works on the other channels while one is down",
    );

    // Release the port: the channel binds on a retry and forwards.
    drop(blocker);
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let tx = Receiver::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let probe = osc::message("/via/taken", &[OscArg::Int(n)]);
        tx.send_to(&probe, target);
        if let Some((got, _)) = rx.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(
                osc::address_of(&got),
                "/via/taken",
                "{}",
                osc::hexdump(&got)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the channel did not come up within 30 s of the port being released\nstderr:\n{}",
            pb.stderr_text()
        );
    }
    // The ready file is kept true (runtime.rs rewrites it when a channel comes up).
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let r = pb.reread_ready();
        if let Ok(r) = &r {
            let taken = r.channel("taken");
            if taken.up {
                assert_eq!(taken.listen, Some(target), "{}", r.raw);
                assert_eq!(taken.error, None, "an up channel has no error: {}", r.raw);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the ready file still shows `taken` down after it forwarded: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn strict_makes_a_taken_port_fatal() {
    let rx = Receiver::new();
    let blocker = Receiver::new();
    let port = blocker.addr().port();
    let done = run_to_exit(&port_taken_config(port, rx.addr()), &["--strict"]);
    assert_eq!(
        done.code,
        Some(1),
        "--strict with a taken port exits 1:\n{}",
        done.output()
    );
    assert!(
        done.stderr.contains(&port.to_string()),
        "the error names the port:\n{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("taken"),
        "the error names the channel:\n{}",
        done.stderr
    );
    drop(blocker);
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let rx = Receiver::new();
        let mut pb = Patchbay::start(&desk_lights(
            rx.addr(),
            "  - name: all\n    unmatched: true\n    to:\n      - forward: lights\n",
        ));
        let m = osc::message("/alive", &[]);
        send_to(&m, pb.addr("desk"));
        rx.expect_bytes(&m, "forwarding before the signal");
        let status = pb.signal_and_wait(sig);
        assert_eq!(
            status.code(),
            Some(0),
            "exit status after {name}: {status}\nstderr:\n{}",
            pb.stderr_text()
        );
    }
}

#[test]
fn help_everywhere() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["send", "--help"],
        &["dump", "--help"],
    ] {
        let done = run_bounded(patchbay_cmd().args(args), EXIT_TIMEOUT);
        assert_eq!(done.code, Some(0), "patchbay {args:?}:\n{}", done.output());
        assert!(
            done.stdout.to_lowercase().contains("usage"),
            "patchbay {args:?} prints usage:\n{}",
            done.output()
        );
    }
    // The top-level help names every subcommand.
    let done = run_bounded(patchbay_cmd().arg("--help"), EXIT_TIMEOUT);
    for sub in ["run", "check", "send", "dump"] {
        assert!(
            done.stdout.contains(sub),
            "--help lists {sub}:\n{}",
            done.stdout
        );
    }
}

#[test]
fn many_channels_start_reliably() {
    // Every start must become ready (a lost wake-up between "every channel tried to bind" and the
    // ready line shows up as an occasional start that never gets ready). 40 starts, 4 at a time.
    let rx = Receiver::new();
    let mut yaml = String::from("version: 1\nchannels:\n");
    for i in 0..12 {
        yaml.push_str(&format!(
            "  c{i}:\n    kind: udp\n    listen: 127.0.0.1:0\n"
        ));
    }
    yaml.push_str(&format!(
        "  lights:\n    kind: udp\n    send: {}\nroutes:\n  - name: all\n    unmatched: true\n    to:\n      - forward: lights\n",
        rx.addr()
    ));
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..4 {
            let yaml = &yaml;
            let failures = &failures;
            s.spawn(move || {
                for i in 0..10 {
                    let mut spawned = Patchbay::spawn(yaml, &[]);
                    match spawned.wait_ready(READY_TIMEOUT) {
                        Ok(ready) => assert_eq!(ready.channels.len(), 13),
                        Err(e) => failures.lock().unwrap().push(format!("start {t}/{i}: {e}")),
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of 40 starts never got ready:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn metrics_address_is_in_the_ready_file_and_serves_http() {
    use std::io::{Read, Write};
    let rx = Receiver::new();
    let yaml = format!(
        "{}metrics:\n  listen: 127.0.0.1:0\n",
        desk_lights(
            rx.addr(),
            "  - name: all\n    unmatched: true\n    to:\n      - forward: lights\n"
        )
    );
    // `-v` is accepted by `run` as well.
    let pb = Patchbay::start_with(&yaml, &["-v"]);
    let metrics = pb
        .ready()
        .metrics
        .unwrap_or_else(|| panic!("no metrics address in {}", pb.ready().raw));
    assert_eq!(metrics.ip().to_string(), "127.0.0.1");
    assert_ne!(metrics.port(), 0, "the actual bound metrics port");
    let mut conn = std::net::TcpStream::connect(metrics).expect("connect to the metrics endpoint");
    conn.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "metrics response:\n{response}"
    );
}
