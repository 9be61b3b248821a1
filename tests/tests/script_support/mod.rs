//! Helpers for the Rhai script end-to-end tests (`scripts.rs`, `script_examples.rs`) that the harness
//! in `tests/src/lib.rs` does not have: a folder of script files saved the way editors save them, a
//! config builder for a `desk` (listens) + `lights` (sends to a test receiver) show with scripts, a
//! client that triggers a script and reads its answers, and a runner for a show folder of our own
//! (scripts beside the config with relative paths, and a restart on the same folder).
//!
//! The harness writes its config into a temp dir it creates when the process starts, but a script
//! must exist before that (it is compiled at start). So harness-started shows refer to scripts by
//! absolute path in a [`ScriptDir`]; [`Show`] covers the relative layout.
//!
//! Every wait polls with a generous bound and fails with what it saw; nothing sleeps to assert.

#![allow(dead_code)] // each test file uses a different part of this module

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use patchbay_plugin_api::osc::{decode, OscArg, OscMessage, OscPacket};
use patchbay_tests::{
    osc, patchbay_cmd, terminate, wait_timeout, yq, Ready, Receiver, EXIT_TIMEOUT, READY_TIMEOUT,
    RECV_TIMEOUT,
};

/// How long a saved script may take to be swapped in (or refused) before a test gives up. The host
/// aims for well under a second; this bound only keeps a broken run from hanging.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The line the script worker logs when a new version is swapped in.
pub const RELOADED: &str = "Reloaded the script";

// ---------------------------------------------------------------------------------------------------
// Script files

/// A temp folder of script files, referred to by absolute path (see the module docs).
pub struct ScriptDir {
    dir: tempfile::TempDir,
}

impl Default for ScriptDir {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptDir {
    pub fn new() -> ScriptDir {
        let dir = tempfile::Builder::new()
            .prefix("patchbay-scripts-")
            .tempdir()
            .expect("tempdir for scripts");
        ScriptDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The absolute path of `name` in this folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The absolute path of `name` as the config writes it (and the host names the script in logs
    /// and metrics).
    pub fn name(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }

    /// Saves `text` as `name` (see [`save_script`]).
    pub fn write(&self, name: &str, text: &str) {
        save_script(&self.file(name), text);
    }
}

/// Saves a script the way atomic editors do: write a temp file beside it (not `.rhai`, so the
/// watcher ignores it), then rename over. The watcher never sees a half-written script.
pub fn save_script(path: &Path, text: &str) {
    let tmp = path.with_extension("rhai.saving");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------------
// Configs

/// A show with `desk` (listens on 127.0.0.1:0), `lights` (sends to `lights`), a metrics endpoint on
/// 127.0.0.1:0, `scripts: { dir: DIR, <scripts_extra> }` and `routes`.
///
/// `scripts_extra` is YAML for the rest of the `scripts:` map, each line indented by two spaces
/// (e.g. `"  limits: { queue: 1 }\n"`); `routes` are YAML list items indented by two spaces.
pub fn config(dir: &ScriptDir, lights: SocketAddr, scripts_extra: &str, routes: &str) -> String {
    format!(
        "version: 1\nmetrics:\n  listen: 127.0.0.1:0\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n  lights:\n    kind: udp\n    send: {lights}\nscripts:\n  dir: {}\n{scripts_extra}routes:\n{routes}",
        yq(&dir.path().display().to_string())
    )
}

/// A route (YAML list item) handing `pattern` to `script` (an absolute path or one relative to the
/// config), optionally to function `function`.
pub fn script_route(name: &str, pattern: &str, script: &str, function: Option<&str>) -> String {
    let function = function
        .map(|f| format!("\n        fn: {f}"))
        .unwrap_or_default();
    format!(
        "  - name: {name}\n    match: {}\n    to:\n      - script: {}{function}\n",
        yq(pattern),
        yq(script)
    )
}

/// A route (YAML list item) forwarding `pattern` unchanged to `channel`.
pub fn forward_route(name: &str, pattern: &str, channel: &str) -> String {
    format!(
        "  - name: {name}\n    match: {}\n    to:\n      - forward: {channel}\n",
        yq(pattern)
    )
}

// ---------------------------------------------------------------------------------------------------
// Talking to scripts

/// A test socket on 127.0.0.1 that sends triggers to a channel and receives the script's answers
/// (`peer.send_osc` and friends answer the socket a message came from).
pub struct Client {
    pub rx: Receiver,
    pub to: SocketAddr,
}

impl Client {
    pub fn new(to: SocketAddr) -> Client {
        Client {
            rx: Receiver::new(),
            to,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.rx.addr()
    }

    /// Sends `address` with `args` (encoded by the tests' own oracle).
    pub fn send(&self, address: &str, args: &[OscArg]) {
        self.rx.send_to(&osc::message(address, args), self.to);
    }

    pub fn send_bytes(&self, bytes: &[u8]) {
        self.rx.send_to(bytes, self.to);
    }

    /// One datagram that must arrive within [`RECV_TIMEOUT`], with its sender.
    pub fn expect(&self, what: &str) -> (Vec<u8>, SocketAddr) {
        self.rx.expect(what)
    }

    /// Sends and returns the one answer (bytes).
    pub fn call(&self, address: &str, args: &[OscArg]) -> Vec<u8> {
        self.send(address, args);
        self.expect(&format!("the answer to {address}")).0
    }

    /// Sends and returns the one answer decoded as a message.
    pub fn call_msg(&self, address: &str, args: &[OscArg]) -> OscMessage {
        message_of(&self.call(address, args))
    }

    /// Everything that arrives before a datagram for which `last` holds (which is returned last).
    pub fn until(&self, what: &str, last: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((bytes, _)) = self.rx.recv_timeout(left) else {
                panic!(
                    "{what}: the closing datagram did not arrive at {} within {RECV_TIMEOUT:?}; got: {:?}",
                    self.addr(),
                    got.iter().map(|b: &Vec<u8>| describe(b)).collect::<Vec<_>>()
                );
            };
            let done = last(&bytes);
            got.push(bytes);
            if done {
                return got;
            }
        }
    }

    /// Sends `/ping N` (routed to a script's `ping` function, which answers `/pong N`) and returns
    /// what arrived before the pong. Messages to one script are handled in order, so this is
    /// everything the script sent this socket for the messages before the ping.
    pub fn before_pong(&self, n: i32) -> Vec<Vec<u8>> {
        self.send("/ping", &[OscArg::Int(n)]);
        let pong = osc::message("/pong", &[OscArg::Int(n)]);
        let mut got = self.until(&format!("/pong {n}"), |b| b == pong.as_slice());
        got.pop();
        got
    }
}

/// Rhai for the `ping` function [`Client::before_pong`] relies on.
pub const PING_FN: &str = "fn ping(msg) { msg.peer.send_osc(\"/pong\", msg.args); }\n";

/// Decodes a datagram that must be one OSC message.
pub fn message_of(bytes: &[u8]) -> OscMessage {
    match decode(bytes) {
        Ok(OscPacket::Message(m)) => m,
        Ok(other) => panic!("expected a message, got {other:?}"),
        Err(e) => panic!("not OSC ({e}):\n{}", osc::hexdump(bytes)),
    }
}

/// A datagram in a line: its decoded packet, or a hex dump.
pub fn describe(bytes: &[u8]) -> String {
    match decode(bytes) {
        Ok(packet) => format!("{packet:?}"),
        Err(_) => format!("raw {:?}", String::from_utf8_lossy(bytes)),
    }
}

/// `/ADDRESS` with args, encoded by the tests' own oracle.
pub fn message(address: &str, args: &[OscArg]) -> Vec<u8> {
    osc::message(address, args)
}

pub fn s(text: &str) -> OscArg {
    OscArg::String(text.to_string())
}

/// The string argument at `i`, or a panic naming the message.
pub fn str_arg(m: &OscMessage, i: usize) -> &str {
    match m.args.get(i) {
        Some(OscArg::String(text)) => text,
        other => panic!("argument {i} of {m:?} is not a string: {other:?}"),
    }
}

/// The integer argument (`i` or `h`) at `i`.
pub fn int_arg(m: &OscMessage, i: usize) -> i64 {
    match m.args.get(i) {
        Some(OscArg::Int(v)) => i64::from(*v),
        Some(OscArg::Long(v)) => *v,
        other => panic!("argument {i} of {m:?} is not an integer: {other:?}"),
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `timeout`; panics with `what`.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not so within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of `text` containing `needle`.
pub fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

/// The 1-based (line, column) of the first `needle` in `text`, as Rhai counts positions (columns in
/// characters, 1-based).
pub fn rhai_position(text: &str, needle: &str) -> (usize, usize) {
    patchbay_tests::position(text, needle, 0)
}

// ---------------------------------------------------------------------------------------------------
// A show folder of our own

/// `patchbay run cfg.yaml --ready-file ready.json` in a folder the test owns (so scripts can sit
/// beside the config with relative paths, and a second run can use the same folder). SIGTERM on
/// drop. Each run writes `stderr-N.txt` (N counts runs in the folder).
pub struct Show {
    pub child: Child,
    pub dir: PathBuf,
    pub ready: Ready,
    stderr: PathBuf,
}

impl Show {
    /// Starts `patchbay run cfg.yaml` in `dir` (which must hold `cfg.yaml`) and waits for the ready
    /// file.
    pub fn start(dir: &Path) -> Show {
        let ready_path = dir.join("ready.json");
        let _ = fs::remove_file(&ready_path);
        let mut n = 1;
        while dir.join(format!("stderr-{n}.txt")).exists() {
            n += 1;
        }
        let stderr = dir.join(format!("stderr-{n}.txt"));
        let mut cmd = patchbay_cmd();
        cmd.current_dir(dir)
            .args(["run", "cfg.yaml", "--ready-file", "ready.json"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("stderr file"));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = loop {
            if let Ok(text) = fs::read_to_string(&ready_path) {
                if let Ok(ready) = Ready::parse(&text) {
                    break ready;
                }
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "patchbay run exited ({status}) before it was ready; stderr:\n{}",
                    fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "patchbay run not ready within {READY_TIMEOUT:?}; stderr:\n{}",
                    fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        Show {
            child,
            dir: dir.to_path_buf(),
            ready,
            stderr,
        }
    }

    pub fn addr(&self, channel: &str) -> SocketAddr {
        let info = self.ready.channel(channel);
        info.listen
            .unwrap_or_else(|| panic!("channel {channel:?} has no listen address: {info:?}"))
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls stderr until `pred` holds; returns the text.
    pub fn wait_stderr(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr_text();
            if pred(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "stderr did not show what was expected within {timeout:?}:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and the exit status (bounded).
    pub fn stop(&mut self) -> ExitStatus {
        patchbay_tests::signal(&self.child, libc::SIGTERM);
        wait_timeout(&mut self.child, EXIT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "patchbay did not exit within {EXIT_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr_text()
            )
        })
    }
}

impl Drop for Show {
    fn drop(&mut self) {
        terminate(&mut self.child);
        if thread::panicking() {
            eprintln!(
                "---- patchbay stderr ({}) ----\n{}\n---- end ----",
                self.stderr.display(),
                self.stderr_text()
            );
        }
    }
}

/// A temp folder for a [`Show`]: `cfg.yaml` and `scripts/` inside.
pub fn show_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("patchbay-show-")
        .tempdir()
        .expect("tempdir");
    fs::create_dir(dir.path().join("scripts")).expect("mkdir scripts");
    dir
}

/// Runs `patchbay check cfg.yaml` in `dir`: (exit code, stdout + stderr).
pub fn check_in(dir: &Path) -> (i32, String) {
    let done = patchbay_tests::run_bounded(
        patchbay_cmd().current_dir(dir).args(["check", "cfg.yaml"]),
        EXIT_TIMEOUT,
    );
    (done.code.unwrap_or(-1), done.output())
}
