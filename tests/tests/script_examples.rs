//! The example scripts in `scripts/` (issue 5: "each exercised by a test"), run as shipped through a
//! config like `configs/scripts-demo.yaml` that points at the repo's `scripts/` folder, with loopback
//! test receivers in place of the desk, the lights, the sound desk and the X32.
//!
//! Every wait polls with a generous bound; timings are asserted as bounds only.

mod script_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use patchbay_plugin_api::osc::{OscArg, OscMessage};
use patchbay_tests::{osc, patchbay_cmd, run_bounded, yq, Patchbay, Receiver, EXIT_TIMEOUT};

use script_support::*;

/// How long a log line may take to appear.
const RECV_TIMEOUT_LOG: Duration = Duration::from_secs(10);

/// The repo's `scripts/` folder.
fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
}

fn script(name: &str) -> String {
    scripts_dir().join(name).display().to_string()
}

/// The demo's receivers: lights, sound and the X32 desk.
struct Devices {
    lights: Receiver,
    sound: Receiver,
    x32: Receiver,
}

/// A config like `configs/scripts-demo.yaml`: the same channels (ports on loopback, the receivers
/// as destinations), scripts folder, limits and routes, with the repo's scripts by absolute path.
/// One more route forwards what the X32 answers (`/xinfo`) to the lights, to show answers come back
/// in on the channel's listening port.
fn start_demo() -> (Patchbay, Devices) {
    let devices = Devices {
        lights: Receiver::new(),
        sound: Receiver::new(),
        x32: Receiver::new(),
    };
    let yaml = format!(
        "version: 1
channels:
  desk:   {{ kind: udp, listen: 127.0.0.1:0 }}
  lights: {{ kind: udp, send: {lights} }}
  sound:  {{ kind: udp, send: {sound} }}
  x32:    {{ kind: udp, listen: 127.0.0.1:0, send: {x32} }}
scripts:
  dir: {dir}
  limits:
    max_operations: 1000000
    timeout_ms: 250
routes:
  - name: cues
    match: '/cue/{{go,back,stop}}'
    to: [ {{ script: {cue_stack} }} ]
  - name: faders
    match: /desk/fader/*
    to: [ {{ script: {fader_curve} }} ]
  - name: fades
    match: /fade/*
    to: [ {{ script: {fade} }} ]
  - name: x32
    match: /x32/connect
    to: [ {{ script: {x32_keepalive} }} ]
  - name: x32-answers
    match: /xinfo
    to: [ {{ forward: lights }} ]
",
        lights = devices.lights.addr(),
        sound = devices.sound.addr(),
        x32 = devices.x32.addr(),
        dir = yq(&scripts_dir().display().to_string()),
        cue_stack = yq(&script("cue_stack.rhai")),
        fader_curve = yq(&script("fader_curve.rhai")),
        fade = yq(&script("fade.rhai")),
        x32_keepalive = yq(&script("x32_keepalive.rhai")),
    );
    (Patchbay::start(&yaml), devices)
}

/// `patchbay check configs/scripts-demo.yaml` accepts the demo as shipped (every example compiles
/// and has the functions its routes name).
#[test]
fn the_demo_config_checks() {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/scripts-demo.yaml");
    let done = run_bounded(patchbay_cmd().arg("check").arg(&config), EXIT_TIMEOUT);
    assert_eq!(done.code, Some(0), "{}", done.output());
    assert!(done.stdout.contains("ok: "), "{}", done.output());
}

/// cue_stack.rhai: `/cue/go` fires the next cue's messages on lights and sound and answers the
/// position; at the end GO warns and sends nothing; `/cue/back` refires the previous cue; `/cue/stop`
/// clears the position so GO starts again at cue 1.
#[test]
fn cue_stack_goes_backs_and_stops() {
    let (pb, devices) = start_demo();
    let client = Client::new(pb.addr("desk"));
    let position = |n: i32| osc::message("/cue/position", &[OscArg::Int(n)]);
    let lights = |address: &str, args: &[OscArg]| {
        devices
            .lights
            .expect_bytes(&osc::message(address, args), &format!("lights {address}"))
    };
    let sound = |address: &str, args: &[OscArg]| {
        devices
            .sound
            .expect_bytes(&osc::message(address, args), &format!("sound {address}"))
    };
    let cue1 = || {
        lights("/lx/preset", &[OscArg::Int(1)]);
        sound("/mix/house", &[OscArg::Float(0.5)]);
    };
    let cue2 = || {
        lights("/lx/blackout", &[OscArg::True]);
        sound("/play", &[OscArg::Int(3)]);
    };

    assert_eq!(client.call("/cue/go", &[]), position(1));
    cue1();
    assert_eq!(client.call("/cue/go", &[]), position(2));
    cue2();
    assert_eq!(client.call("/cue/go", &[]), position(3));
    lights("/lx/preset", &[OscArg::Int(2)]);
    sound("/play", &[OscArg::Int(4)]);
    sound("/mix/house", &[OscArg::Float(1.0)]);

    // At the end: a warning, the position again, nothing sent (the next sends are cue 2's).
    assert_eq!(client.call("/cue/go", &[]), position(3));
    pb.wait_stderr(RECV_TIMEOUT_LOG, |t| {
        t.contains("GO pressed at the end of the cue stack")
    });
    assert_eq!(client.call("/cue/back", &[]), position(2));
    cue2();
    assert_eq!(client.call("/cue/stop", &[]), position(0));
    assert_eq!(
        client.call("/cue/go", &[]),
        position(1),
        "after STOP, GO is cue 1"
    );
    cue1();
    let stderr = pb.wait_stderr(RECV_TIMEOUT_LOG, |t| t.contains("cue 3 fired"));
    assert_eq!(lines_with(&stderr, "cue 1 fired").len(), 2, "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("GO pressed at the end")),
        "{stderr}"
    );
}

/// fader_curve.rhai: a fader 0.0..=1.0 (float or int) becomes a 0..=255 dimmer through the 2.2
/// gamma curve, clamped, on `/dimmer/N` for fader N.
#[test]
fn fader_curve_scales_through_the_curve() {
    let (pb, devices) = start_demo();
    let client = Client::new(pb.addr("desk"));
    let dimmer = |x: f64| (x.clamp(0.0, 1.0).powf(2.2) * 255.0).round() as i32;
    let cases: [(&str, OscArg, f64); 7] = [
        ("3", OscArg::Float(0.5), 0.5),
        ("3", OscArg::Float(0.75), 0.75_f32 as f64),
        ("12", OscArg::Float(1.0), 1.0),
        ("12", OscArg::Float(0.0), 0.0),
        ("7", OscArg::Int(1), 1.0),
        ("7", OscArg::Float(1.7), 1.7),
        ("7", OscArg::Float(-0.2), -0.2),
    ];
    for (fader, arg, x) in cases {
        client.send(&format!("/desk/fader/{fader}"), std::slice::from_ref(&arg));
        let expected = osc::message(&format!("/dimmer/{fader}"), &[OscArg::Int(dimmer(x))]);
        devices
            .lights
            .expect_bytes(&expected, &format!("fader {fader} at {arg:?}"));
    }
    assert_eq!(
        dimmer(0.5),
        55,
        "the curve bends: half the fader is about a fifth"
    );
}

/// x32_keepalive.rhai: `/xremote` goes to the X32 from the x32 channel's listening port at once
/// on start (`init`) and again at once on `/x32/connect` (not only every 9 s); what the X32 sends
/// back to that port comes in on the x32 channel.
#[test]
fn x32_keepalive_sends_xremote_from_its_listening_port() {
    let (pb, devices) = start_demo();
    let x32_port = pb.addr("x32");
    let xremote = osc::message("/xremote", &[]);
    let from = devices.x32.expect_bytes(&xremote, "/xremote from init");
    assert_eq!(
        from, x32_port,
        "sent from the port the x32 channel listens on"
    );

    let client = Client::new(pb.addr("desk"));
    let asked = Instant::now();
    client.send("/x32/connect", &[]);
    let from = devices
        .x32
        .expect_bytes(&xremote, "/xremote on /x32/connect");
    assert_eq!(from, x32_port);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "sent at once, not by the 9 s timer: {:?}",
        asked.elapsed()
    );

    // The desk answers to the port we send from; that is the x32 channel's listening socket.
    let info = osc::message("/xinfo", &[OscArg::String("X32".into())]);
    devices.x32.send_to(&info, from);
    devices
        .lights
        .expect_bytes(&info, "the X32's answer came in on the x32 channel");
}

/// The `/level/dim` values `lights` receives until one for which `last` holds.
fn levels_until(devices: &Devices, last: impl Fn(f32) -> bool) -> Vec<f32> {
    let mut levels = Vec::new();
    loop {
        let (bytes, _) = devices.lights.expect("a fade step");
        let m = message_of(&bytes);
        assert_eq!(m.address, "/level/dim", "{m:?}");
        let level = match m.args.as_slice() {
            [OscArg::Float(level)] => *level,
            other => panic!("a fade step is one float: {other:?}"),
        };
        levels.push(level);
        if last(level) {
            return levels;
        }
    }
}

/// fade.rhai: `/fade/dim [goal, seconds]` sends 40 ms steps that rise monotonically and end exactly
/// at the goal (0.5 s: 13 steps); a second fade on the same target replaces the running one: the
/// level turns toward the new goal and ends there, at one timer's pace.
#[test]
fn fade_steps_to_the_goal_and_a_new_fade_cancels_the_old() {
    let (pb, devices) = start_demo();
    let client = Client::new(pb.addr("desk"));

    let started = Instant::now();
    client.send("/fade/dim", &[OscArg::Float(1.0), OscArg::Float(0.5)]);
    let levels = levels_until(&devices, |l| l == 1.0);
    let expected: Vec<f32> = (1..=13)
        .map(|k| (0.0 + (1.0 - 0.0) * f64::from(k) / 13.0) as f32)
        .collect();
    assert_eq!(levels, expected, "13 steps from 0 to 1");
    assert!(levels.windows(2).all(|w| w[0] < w[1]), "monotonic");
    assert!(
        started.elapsed() >= Duration::from_millis(13 * 40),
        "13 steps of 40 ms: {:?}",
        started.elapsed()
    );
    pb.wait_stderr(RECV_TIMEOUT_LOG, |t| t.contains("fade on dim done at 1"));

    // A slow fade down to 0, interrupted by a quick one to 0.95.
    client.send("/fade/dim", &[OscArg::Float(0.0), OscArg::Float(2.0)]);
    let first = levels_until(&devices, |l| l < 0.9);
    assert!(
        first.windows(2).all(|w| w[0] > w[1]),
        "the slow fade goes down: {first:?}"
    );
    let replaced = Instant::now();
    client.send("/fade/dim", &[OscArg::Float(0.95), OscArg::Float(0.2)]);
    let second = levels_until(&devices, |l| (l - 0.95).abs() < 1e-6);
    let took = replaced.elapsed();
    // Steps of the slow fade still in flight may come first (going down); from the lowest level on,
    // only the new fade's steps, rising to 0.95.
    let all: Vec<f32> = first.iter().chain(&second).copied().collect();
    let lowest = (0..all.len())
        .min_by(|a, b| all[*a].total_cmp(&all[*b]))
        .unwrap();
    assert!(
        all[..=lowest].windows(2).all(|w| w[0] > w[1]),
        "down, then up: {all:?}"
    );
    let rising = &all[lowest + 1..];
    assert!(
        rising.windows(2).all(|w| w[0] < w[1]),
        "rising to 0.95: {all:?}"
    );
    // As the script counts them: ceil(seconds * 1000 / 40), seconds as received (a 32-bit float).
    let steps = (f64::from(0.2_f32) * 1000.0 / 40.0).ceil() as usize;
    assert_eq!(
        rising.len(),
        steps,
        "the new fade's steps after the turn: {all:?}"
    );
    // One timer at 40 ms: the steps take at least 40 ms each after the new fade arrived. The old
    // timer left running would step the same fade too and finish it in about half the time.
    assert!(
        took >= Duration::from_millis(40 * steps as u64 - 10),
        "the new fade finished in {took:?}: is the old fade's timer still stepping it?"
    );
    // The goal arrived as a 32-bit float: "done at 0.949999988...".
    let stderr = pb.wait_stderr(RECV_TIMEOUT_LOG, |t| t.contains("fade on dim done at 0.94"));
    assert_eq!(
        lines_with(&stderr, "fade on dim done").len(),
        2,
        "the slow fade never finished:\n{stderr}"
    );
    // Nothing more from either fade: a fade on another target is the next thing at lights.
    client.send("/fade/other", &[OscArg::Float(1.0), OscArg::Float(0.04)]);
    let (bytes, _) = devices.lights.expect("the other fade's only step");
    assert_eq!(
        message_of(&bytes),
        OscMessage::new("/level/other", vec![OscArg::Float(1.0)]),
        "no /level/dim after the replaced fade finished"
    );
}
