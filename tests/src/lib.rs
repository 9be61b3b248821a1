//! The end-to-end harness: the real `patchbay` binary driven over real sockets on 127.0.0.1.
//!
//! # Finding the binary
//! This is a separate package, so cargo gives it no `CARGO_BIN_EXE_patchbay`. [`patchbay_bin`] locates
//! the binary deliberately: `$CARGO_TARGET_DIR` (relative paths resolve against the workspace root) or
//! `<workspace>/target`, profile dir `debug`. Once per test process (a [`OnceLock`]) it runs
//! `$CARGO build -p patchbay --bin patchbay` (`$CARGO` is set by `cargo test`; else `cargo`) so the
//! binary is never stale, and takes the path cargo reports for the artifact (`--message-format=json`),
//! which equals the computed one unless a cargo config moves the target dir.
//!
//! The nested build does not deadlock: `cargo test` releases its build-directory lock before it runs
//! the test binaries (checked with cargo 1.95 on a scratch workspace and on this one). If another cargo
//! process holds the lock (a colleague building), the nested build just waits for it. Set
//! `PATCHBAY_BIN=/path/to/patchbay` to skip the build and test a given binary instead.
//!
//! # Timing
//! Nothing here sleeps to assert: every wait polls with a generous bound ([`READY_TIMEOUT`],
//! [`RECV_TIMEOUT`]) and fails with what it saw. Negative checks ("this was not forwarded") send a
//! barrier message along the same path afterwards and look at what arrived before it.

pub mod osc;
pub mod tcp;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a freshly spawned `patchbay run` may take to write its ready file.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long we wait for a datagram that must arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to exit after it was told to (SIGTERM, an error, `check`).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The pinned python-osc release used as the third-party sender and receiver.
pub const PYTHON_OSC_VERSION: &str = "1.10.2";
/// The pinned peerpy release: the third-party peer of `kind: peer` channels (`tests/tests/peer.rs`).
pub const PEERPY_VERSION: &str = "1.2.2";
/// The pinned requests release: peerpy imports it without declaring it as a dependency.
pub const REQUESTS_VERSION: &str = "2.34.2";

/// Every package the harness venv pins: (distribution name, version). `.ci/run` installs the same.
pub const PYTHON_PINS: [(&str, &str); 3] = [
    ("python-osc", PYTHON_OSC_VERSION),
    ("peerpy", PEERPY_VERSION),
    ("requests", REQUESTS_VERSION),
];

// ---------------------------------------------------------------------------------------------------
// Locations and the binary

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo target dir: `$CARGO_TARGET_DIR` (relative to the workspace root) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Where the debug binary is expected: `<target>/debug/patchbay`.
pub fn expected_bin_path() -> PathBuf {
    target_dir()
        .join("debug")
        .join(format!("patchbay{}", std::env::consts::EXE_SUFFIX))
}

/// The `patchbay` binary, built once per test process (see the module docs).
pub fn patchbay_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(build_patchbay)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_patchbay() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("PATCHBAY_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("PATCHBAY_BIN={} is not a file", bin.display()))
        };
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let output = Command::new(&cargo)
        .args([
            "build",
            "-p",
            "patchbay",
            "--bin",
            "patchbay",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {cargo:?} build: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "`cargo build -p patchbay --bin patchbay` failed ({}):\n{stderr}",
            output.status
        ));
    }
    // The artifact message names the executable cargo actually produced.
    let mut reported = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "patchbay" {
            if let Some(exe) = v["executable"].as_str() {
                reported = Some(PathBuf::from(exe));
            }
        }
    }
    let expected = expected_bin_path();
    let bin = reported.unwrap_or_else(|| expected.clone());
    if bin != expected {
        eprintln!(
            "patchbay-tests: cargo built {} (not {}): a cargo config moves the target dir; using cargo's path",
            bin.display(),
            expected.display()
        );
    }
    if !bin.is_file() {
        return Err(format!(
            "patchbay was built but {} does not exist",
            bin.display()
        ));
    }
    eprintln!(
        "patchbay-tests: using {} (build step took {:?})",
        bin.display(),
        started.elapsed()
    );
    Ok(bin)
}

/// A `Command` for the patchbay binary with stdin closed.
pub fn patchbay_cmd() -> Command {
    let mut cmd = Command::new(patchbay_bin());
    cmd.stdin(Stdio::null());
    cmd
}

// ---------------------------------------------------------------------------------------------------
// Processes

/// Sends SIGTERM (or SIGINT, ...) to a child.
pub fn signal(child: &Child, sig: libc::c_int) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits up to `timeout` for the child to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => return Some(status),
            None if Instant::now() >= deadline => return None,
            None => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// SIGTERM, then SIGKILL if it does not exit in time. Returns the exit status.
pub fn terminate(child: &mut Child) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    // Not `signal()`: this runs in Drop, possibly while unwinding, so it must not panic.
    // SAFETY: kill(2) on our own child, which `try_wait` above has not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    if let Some(status) = wait_timeout(child, Duration::from_secs(5)) {
        return status;
    }
    let _ = child.kill();
    child.wait().expect("wait after kill")
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Finished {
    /// `None` when it was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// stdout then stderr.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs a command to completion, with a bound; panics (after killing it) if it does not finish.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Finished {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = wait_timeout(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let finished = Finished {
        code: status.and_then(|s| s.code()),
        stdout: out.join(),
        stderr: err.join(),
    };
    assert!(
        status.is_some(),
        "{cmd:?} did not finish within {timeout:?}; output so far:\n{}",
        finished.output()
    );
    finished
}

/// Reads a pipe to its end on a thread.
struct Drain(thread::JoinHandle<String>);

fn drain(mut r: impl Read + Send + 'static) -> Drain {
    Drain(thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }))
}

impl Drain {
    fn join(self) -> String {
        self.0.join().unwrap_or_default()
    }
}

/// A child whose stdout and stderr are read line by line on threads (for `dump` and Python helpers).
pub struct LineProc {
    pub child: Child,
    stdout_rx: mpsc::Receiver<String>,
    stderr_rx: mpsc::Receiver<String>,
    stdout_seen: Vec<String>,
    stderr_all: Arc<Mutex<String>>,
    name: String,
}

impl LineProc {
    pub fn spawn(cmd: &mut Command) -> LineProc {
        let name = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stderr_all = Arc::new(Mutex::new(String::new()));
        let stdout_rx = lines(child.stdout.take().expect("stdout"), None);
        let stderr_rx = lines(
            child.stderr.take().expect("stderr"),
            Some(stderr_all.clone()),
        );
        LineProc {
            child,
            stdout_rx,
            stderr_rx,
            stdout_seen: Vec::new(),
            stderr_all,
            name,
        }
    }

    /// The next stdout line, or `None` after `timeout` or at end of output.
    pub fn next_stdout(&mut self, timeout: Duration) -> Option<String> {
        let line = self.stdout_rx.recv_timeout(timeout).ok()?;
        self.stdout_seen.push(line.clone());
        Some(line)
    }

    /// Waits for a stderr line satisfying `pred`.
    pub fn wait_stderr(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{}: no matching stderr line within {timeout:?}; stderr so far:\n{}",
                    self.name,
                    self.stderr_text()
                ),
            }
        }
    }

    /// Collects stdout lines until `pred` holds for the collected lines, or panics after `timeout`.
    pub fn collect_stdout_until(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while !pred(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_stdout(left) {
                Some(line) => got.push(line),
                None => panic!(
                    "{}: stdout did not satisfy the condition within {timeout:?}; got {got:#?}\nstderr:\n{}",
                    self.name,
                    self.stderr_text()
                ),
            }
        }
        got
    }

    /// Everything read from stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr_all.lock().unwrap().clone()
    }

    /// Waits for exit and returns the remaining stdout lines.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let status = wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr_text()
            )
        });
        let mut rest = Vec::new();
        // The pipe closes shortly after exit; wait for the reader to hit the end.
        while let Ok(line) = self.stdout_rx.recv_timeout(Duration::from_secs(5)) {
            self.stdout_seen.push(line.clone());
            rest.push(line);
        }
        (status, rest)
    }
}

impl Drop for LineProc {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn lines(
    r: impl Read + Send + 'static,
    keep: Option<Arc<Mutex<String>>>,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some(keep) = &keep {
                let mut k = keep.lock().unwrap();
                k.push_str(&line);
                k.push('\n');
            }
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the child never blocks on a full pipe.
                continue;
            }
        }
    });
    rx
}

// ---------------------------------------------------------------------------------------------------
// patchbay run

/// One channel as the ready file describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelInfo {
    pub kind: String,
    pub listen: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub send: Option<SocketAddr>,
    pub up: bool,
    pub error: Option<String>,
}

fn opt_addr(v: &Value, key: &str, channel: &str) -> Option<SocketAddr> {
    match &v[key] {
        Value::Null => None,
        Value::String(s) => Some(s.parse().unwrap_or_else(|e| {
            panic!("ready file: channels.{channel}.{key} = {s:?} is not ip:port: {e}")
        })),
        other => {
            panic!("ready file: channels.{channel}.{key} should be a string or null, got {other}")
        }
    }
}

/// The parsed ready file.
#[derive(Debug, Clone)]
pub struct Ready {
    pub raw: Value,
    pub pid: u32,
    pub channels: Vec<(String, ChannelInfo)>,
    pub metrics: Option<SocketAddr>,
}

impl Ready {
    pub fn parse(text: &str) -> Result<Ready, String> {
        let raw: Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))?;
        let pid = raw["pid"]
            .as_u64()
            .ok_or_else(|| format!("no numeric pid: {text}"))? as u32;
        let map = raw["channels"]
            .as_object()
            .ok_or_else(|| format!("no channels object: {text}"))?;
        let mut channels = Vec::new();
        for (name, v) in map {
            let info = ChannelInfo {
                kind: v["kind"]
                    .as_str()
                    .ok_or_else(|| format!("channels.{name}.kind missing: {text}"))?
                    .to_string(),
                listen: opt_addr(v, "listen", name),
                local: opt_addr(v, "local", name),
                send: opt_addr(v, "send", name),
                up: v["up"]
                    .as_bool()
                    .ok_or_else(|| format!("channels.{name}.up is not a bool: {text}"))?,
                error: v["error"].as_str().map(str::to_string),
            };
            channels.push((name.clone(), info));
        }
        let metrics = match &raw["metrics"] {
            Value::String(s) => Some(s.parse().map_err(|e| format!("metrics {s:?}: {e}"))?),
            _ => None,
        };
        Ok(Ready {
            raw,
            pid,
            channels,
            metrics,
        })
    }

    pub fn channel(&self, name: &str) -> &ChannelInfo {
        self.channels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
            .unwrap_or_else(|| panic!("no channel {name:?} in the ready file: {}", self.raw))
    }
}

/// A running `patchbay run` process with its config in a temp dir. SIGTERM (then kill) on drop.
pub struct Patchbay {
    proc: Spawned,
    ready: Ready,
}

/// A spawned `patchbay run` that may or may not become ready.
pub struct Spawned {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Spawned {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cfg.yaml")
    }
    pub fn ready_path(&self) -> PathBuf {
        self.dir.path().join("ready.json")
    }
    pub fn stdout_text(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout.txt")).unwrap_or_default()
    }
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default()
    }

    /// Polls for the ready file. Fails early if the process exits first.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready, String> {
        let deadline = Instant::now() + timeout;
        let path = self.ready_path();
        let mut last_err = String::from("the ready file was never written");
        loop {
            if let Ok(text) = fs::read_to_string(&path) {
                match Ready::parse(&text) {
                    Ok(r) => return Ok(r),
                    Err(e) => last_err = e,
                }
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!(
                    "patchbay run exited ({status}) before it was ready\nstdout:\n{}\nstderr:\n{}",
                    self.stdout_text(),
                    self.stderr_text()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "patchbay run not ready within {timeout:?}: {last_err}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout_text(),
                    self.stderr_text()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_timeout(&mut self.child, timeout)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

impl Patchbay {
    /// Writes `yaml` to a temp dir, runs `patchbay run cfg.yaml --ready-file ready.json` and waits
    /// for the ready file. Panics (with the process output) if it does not become ready.
    pub fn start(yaml: &str) -> Patchbay {
        Patchbay::start_with(yaml, &[])
    }

    /// [`Patchbay::start`] with extra arguments after `run CONFIG --ready-file PATH`.
    pub fn start_with(yaml: &str, extra: &[&str]) -> Patchbay {
        let mut spawned = Patchbay::spawn(yaml, extra);
        let ready = spawned
            .wait_ready(READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\nconfig:\n{yaml}"));
        Patchbay {
            proc: spawned,
            ready,
        }
    }

    /// Spawns `patchbay run` without waiting for anything (for startup failures and `--strict`).
    pub fn spawn(yaml: &str, extra: &[&str]) -> Spawned {
        let dir = tempfile::Builder::new()
            .prefix("patchbay-e2e-")
            .tempdir()
            .expect("tempdir");
        let cfg = dir.path().join("cfg.yaml");
        fs::write(&cfg, yaml).expect("write config");
        let stdout = fs::File::create(dir.path().join("stdout.txt")).expect("stdout file");
        let stderr = fs::File::create(dir.path().join("stderr.txt")).expect("stderr file");
        let mut cmd = patchbay_cmd();
        cmd.current_dir(dir.path())
            .arg("run")
            .arg("cfg.yaml")
            .arg("--ready-file")
            .arg(dir.path().join("ready.json"))
            .args(extra)
            .stdout(stdout)
            .stderr(stderr);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Spawned { child, dir }
    }

    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Reads the ready file again (it may be rewritten, e.g. when a channel comes up).
    pub fn reread_ready(&self) -> Result<Ready, String> {
        let text = fs::read_to_string(self.proc.dir.path().join("ready.json"))
            .map_err(|e| e.to_string())?;
        Ready::parse(&text)
    }

    pub fn channel(&self, name: &str) -> &ChannelInfo {
        self.ready.channel(name)
    }

    /// The actual bound listen address of a channel. Panics when it has none.
    pub fn addr(&self, channel: &str) -> SocketAddr {
        let info = self.channel(channel);
        info.listen
            .unwrap_or_else(|| panic!("channel {channel:?} has no listen address: {info:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.proc.dir.path()
    }

    pub fn stdout_text(&self) -> String {
        fs::read_to_string(self.proc.dir.path().join("stdout.txt")).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.proc.dir.path().join("stderr.txt")).unwrap_or_default()
    }

    /// Polls stderr until `pred` holds; returns the text. Panics with the text after `timeout`.
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

    /// Sends a signal and waits for the exit status (bounded).
    pub fn signal_and_wait(&mut self, sig: libc::c_int) -> ExitStatus {
        signal(&self.proc.child, sig);
        wait_timeout(&mut self.proc.child, EXIT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "patchbay did not exit within {EXIT_TIMEOUT:?} of signal {sig}; stderr:\n{}",
                self.stderr_text()
            )
        })
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Patchbay {
    fn drop(&mut self) {
        terminate(&mut self.proc.child);
        if thread::panicking() {
            let err = self.stderr_text();
            let tail: String = err
                .chars()
                .rev()
                .take(6000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!("---- patchbay stderr (tail) ----\n{tail}\n---- end of patchbay stderr ----");
        }
    }
}

/// Runs `patchbay check cfg.yaml` in a temp dir holding `yaml`. Returns (exit code, stdout+stderr).
/// The file is passed as the relative path `cfg.yaml`, so errors start with `cfg.yaml:LINE:COL:`.
pub fn check(yaml: &str) -> (i32, String) {
    let dir = tempfile::Builder::new()
        .prefix("patchbay-check-")
        .tempdir()
        .expect("tempdir");
    fs::write(dir.path().join("cfg.yaml"), yaml).expect("write config");
    let done = run_bounded(
        patchbay_cmd()
            .current_dir(dir.path())
            .args(["check", "cfg.yaml"]),
        EXIT_TIMEOUT,
    );
    (done.code.unwrap_or(-1), done.output())
}

/// Runs `patchbay run cfg.yaml [extra...]` and waits for it to exit by itself (bounded).
pub fn run_to_exit(yaml: &str, extra: &[&str]) -> Finished {
    let mut spawned = Patchbay::spawn(yaml, extra);
    let status = spawned.wait_exit(EXIT_TIMEOUT);
    let stdout = spawned.stdout_text();
    let stderr = spawned.stderr_text();
    assert!(
        status.is_some(),
        "patchbay run was expected to exit by itself but still runs after {EXIT_TIMEOUT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    Finished {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    }
}

// ---------------------------------------------------------------------------------------------------
// UDP

/// A UDP socket on 127.0.0.1 that receives with a bound and sends.
pub struct Receiver {
    pub sock: UdpSocket,
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    /// Bound to 127.0.0.1 on a free port.
    pub fn new() -> Receiver {
        Receiver::bind("127.0.0.1:0".parse().unwrap())
    }

    pub fn bind(addr: SocketAddr) -> Receiver {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        Receiver { sock }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local_addr")
    }

    pub fn send_to(&self, bytes: &[u8], to: SocketAddr) {
        let n = self
            .sock
            .send_to(bytes, to)
            .unwrap_or_else(|e| panic!("send_to {to}: {e}"));
        assert_eq!(n, bytes.len(), "short send");
    }

    /// One datagram, or `None` after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let timeout = timeout.max(Duration::from_millis(1));
        self.sock
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
        let mut buf = vec![0u8; 65_536];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    buf.truncate(n);
                    return Some((buf, from));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                // An ICMP port-unreachable from an earlier send of ours surfaces here on Linux.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => panic!("recv_from: {e}"),
            }
        }
    }

    /// A datagram that must arrive within [`RECV_TIMEOUT`].
    pub fn expect(&self, what: &str) -> (Vec<u8>, SocketAddr) {
        self.recv_timeout(RECV_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "{what}: nothing arrived at {} within {RECV_TIMEOUT:?}",
                self.addr()
            )
        })
    }

    /// Receives one datagram and asserts it is exactly `expected`.
    pub fn expect_bytes(&self, expected: &[u8], what: &str) -> SocketAddr {
        let (got, from) = self.expect(what);
        assert_bytes(&got, expected, what);
        from
    }

    /// Receives until a datagram equal to `barrier` arrives; returns everything that came before it.
    pub fn until_barrier(&self, barrier: &[u8]) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + RECV_TIMEOUT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((got, _)) = self.recv_timeout(left) else {
                panic!(
                    "barrier {:?} did not arrive at {} within {RECV_TIMEOUT:?}; got before it: {:?}",
                    osc::address_of(barrier),
                    self.addr(),
                    before.iter().map(|b: &Vec<u8>| osc::address_of(b)).collect::<Vec<_>>()
                );
            };
            if got == barrier {
                return before;
            }
            before.push(got);
        }
    }
}

/// Sends one datagram from a fresh socket on 127.0.0.1.
pub fn send_to(bytes: &[u8], to: SocketAddr) {
    Receiver::new().send_to(bytes, to);
}

/// `assert_eq!` for packets, with hex dumps on failure.
pub fn assert_bytes(got: &[u8], expected: &[u8], what: &str) {
    assert!(
        got == expected,
        "{what}: bytes differ\nexpected ({} bytes):\n{}got ({} bytes):\n{}",
        expected.len(),
        osc::hexdump(expected),
        got.len(),
        osc::hexdump(got)
    );
}

// ---------------------------------------------------------------------------------------------------
// Config text helpers

/// The 1-based (line, column) of the `nth` (0-based) occurrence of `needle` in `text`.
pub fn position(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let mut from = 0;
    let mut found = None;
    for _ in 0..=nth {
        let i = text[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} (#{nth}) not in:\n{text}"));
        found = Some(from + i);
        from += i + needle.len();
    }
    let at = found.unwrap();
    let line = text[..at].matches('\n').count() + 1;
    let line_start = text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = text[line_start..at].chars().count() + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------------------
// Python (python-osc and peerpy as the third-party peers)

/// `<workspace>/tests/python/NAME`.
pub fn python_script(name: &str) -> PathBuf {
    workspace_root().join("tests").join("python").join(name)
}

/// The venv interpreter `<workspace>/.venv/bin/python` with every pin of [`PYTHON_PINS`] installed
/// (python-osc [`PYTHON_OSC_VERSION`], peerpy [`PEERPY_VERSION`], requests [`REQUESTS_VERSION`]).
/// Creates the venv (with `$PYTHON` or `python3`) and installs the pins when any is missing or at
/// another version, under an in-process [`OnceLock`] and a file lock in the target dir (other test
/// processes, `.ci/run` and colleagues may do the same at once). `.ci/run` does the same install up
/// front.
pub fn python() -> PathBuf {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(ensure_venv)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn venv_python() -> PathBuf {
    workspace_root().join(".venv").join("bin").join("python")
}

/// The installed version of each package of [`PYTHON_PINS`] (`None`: not installed, or no venv).
fn installed_pins(py: &Path) -> Vec<Option<String>> {
    let none = || vec![None; PYTHON_PINS.len()];
    // One line per name: its version, or an empty line when it is not installed.
    let script = "import importlib.metadata as m, sys\nfor name in sys.argv[1:]:\n    try:\n        print(m.version(name))\n    except m.PackageNotFoundError:\n        print()\n";
    let Ok(out) = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(PYTHON_PINS.map(|(name, _)| name))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return none();
    };
    if !out.status.success() {
        return none();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut versions: Vec<Option<String>> = text
        .lines()
        .map(|l| Some(l.trim().to_string()).filter(|v| !v.is_empty()))
        .collect();
    versions.resize(PYTHON_PINS.len(), None);
    versions
}

/// `Ok` when every pin is installed at its version, else what differs.
fn pins_satisfied(py: &Path) -> Result<(), String> {
    let installed = installed_pins(py);
    let wrong: Vec<String> = PYTHON_PINS
        .iter()
        .zip(&installed)
        .filter(|((_, want), have)| have.as_deref() != Some(*want))
        .map(|((name, want), have)| format!("{name} {have:?} (want {want})"))
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join(", "))
    }
}

fn ensure_venv() -> Result<PathBuf, String> {
    let py = venv_python();
    if pins_satisfied(&py).is_ok() {
        return Ok(py);
    }
    let lock_dir = target_dir();
    fs::create_dir_all(&lock_dir).map_err(|e| format!("create {}: {e}", lock_dir.display()))?;
    let lock_path = lock_dir.join("patchbay-tests-venv.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    // Someone else may have finished while we waited for the lock.
    if pins_satisfied(&py).is_ok() {
        return Ok(py);
    }
    let venv = workspace_root().join(".venv");
    if !py.is_file() {
        let base = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
        eprintln!(
            "patchbay-tests: creating {} with {:?}",
            venv.display(),
            base
        );
        run_setup(Command::new(&base).args([
            OsStr::new("-m"),
            OsStr::new("venv"),
            venv.as_os_str(),
        ]))?;
    }
    let pins: Vec<String> = PYTHON_PINS
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    eprintln!(
        "patchbay-tests: installing {} into {}",
        pins.join(" "),
        venv.display()
    );
    run_setup(
        Command::new(&py)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
            .args(&pins),
    )?;
    pins_satisfied(&py).map(|()| py.clone()).map_err(|wrong| {
        format!(
            "after installing {}, {} reports {wrong}",
            pins.join(" "),
            py.display()
        )
    })
}

fn run_setup(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts `tests/python/receiver.py` (a python-osc `BlockingOSCUDPServer` on 127.0.0.1:0) that exits
/// after `count` messages or `timeout_s` seconds. Returns the process and its bound address.
pub fn python_receiver(count: usize, timeout_s: u32) -> (LineProc, SocketAddr) {
    let mut proc = LineProc::spawn(
        Command::new(python())
            .arg(python_script("receiver.py"))
            .args([
                "--count",
                &count.to_string(),
                "--timeout",
                &timeout_s.to_string(),
            ]),
    );
    let first = proc.next_stdout(READY_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "receiver.py printed nothing; stderr:\n{}",
            proc.stderr_text()
        )
    });
    let v: Value = serde_json::from_str(&first)
        .unwrap_or_else(|e| panic!("receiver.py first line {first:?}: {e}"));
    let addr: SocketAddr = v["listening"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("receiver.py first line has no listening address: {first}"));
    (proc, addr)
}

/// Runs `tests/python/sender.py` sending `spec` (see the script) to `to`; panics if it fails.
pub fn python_send(to: SocketAddr, spec: &Value) -> Finished {
    let done = run_bounded(
        Command::new(python())
            .arg(python_script("sender.py"))
            .arg(to.to_string())
            .arg(spec.to_string())
            .stdin(Stdio::null()),
        EXIT_TIMEOUT,
    );
    assert_eq!(done.code, Some(0), "sender.py failed:\n{}", done.output());
    done
}

/// `s` as a YAML single-quoted scalar (OSC patterns contain `{`, `[`, `*` that YAML would read).
pub fn yq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A config with a listening channel `desk` (127.0.0.1:0), a sending channel `lights` (to `rx`) and
/// the given routes (YAML list items, indented by two spaces).
pub fn desk_lights(rx: SocketAddr, routes: &str) -> String {
    format!(
        "version: 1\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n  lights:\n    kind: udp\n    send: {rx}\nroutes:\n{routes}"
    )
}

/// A route (YAML list item) that forwards `/barrier/...` unchanged to `channel` and stops, so the
/// barrier fires nothing else. Put it first.
pub fn barrier_route(channel: &str) -> String {
    format!("  - name: barrier\n    match: /barrier/*\n    stop: true\n    to:\n      - forward: {channel}\n")
}

/// A barrier message: `/barrier/N` with no arguments.
pub fn barrier(n: usize) -> Vec<u8> {
    osc::message(&format!("/barrier/{n}"), &[])
}
