//! Helpers for the compiled-plugin end-to-end tests (`plugins.rs`, issue 6) that the harness in
//! `tests/src/lib.rs` does not have: building real plugin libraries (the workspace's cdylib crates,
//! a `panic = "abort"` build, the C example compiled with the system C compiler), a plugins folder
//! to drop them into, a config builder, a recorder thread for receivers that must not lose a
//! datagram, and a paced sender.
//!
//! # Building
//! The plugins are built the way the harness builds the `patchbay` binary: `$CARGO build -p ...`
//! (`$CARGO` is set by `cargo test`, else `cargo`) from the workspace root, once per test process
//! (a [`OnceLock`]), taking the library paths cargo reports (`--message-format=json`). The
//! `panic = "abort"` build goes to its own target dir (`<target>/panic-abort`) so it never replaces
//! the normal build's artifacts. The C plugin is compiled into `<target>/patchbay-tests-plugins/`
//! under a temporary name and renamed into place, so test processes running at once never see a
//! half-written library.
//!
//! # The plugins folder
//! The harness writes its config into a temp dir it creates when the process starts, but plugins
//! must be in their folder before that (they are loaded at start). So shows refer to a
//! [`PluginDir`] by absolute path. The folder is mode 0755: the host refuses one that other users can
//! write to.
//!
//! Every wait polls with a generous bound and fails with what it saw; nothing sleeps to assert.

#![allow(dead_code)] // not every test uses every helper

use std::collections::HashMap;
use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use patchbay_plugin_api::osc::{decode, OscArg, OscMessage, OscPacket};
use patchbay_tests::{osc, target_dir, workspace_root, yq, Patchbay, Receiver};
use serde_json::Value;

/// How long a plugin file may take to be loaded (or refused) after it is dropped into the folder,
/// and a log line to appear. The host's watcher debounces for tens of milliseconds; this bound only
/// keeps a broken run from hanging.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(20);

/// The cdylib packages the tests load, by package name.
pub const SCALE: &str = "patchbay-plugin-scale";
pub const THROTTLE: &str = "patchbay-plugin-throttle";
pub const PANICKY: &str = "patchbay-test-plugin-panicky";
pub const SLEEPY: &str = "patchbay-test-plugin-sleepy";
pub const WRONG_ABI: &str = "patchbay-test-plugin-wrong-abi";
pub const VARIANT_A: &str = "patchbay-test-plugin-variant-a";
pub const VARIANT_B: &str = "patchbay-test-plugin-variant-b";

const PACKAGES: &[&str] = &[
    SCALE, THROTTLE, PANICKY, SLEEPY, WRONG_ABI, VARIANT_A, VARIANT_B,
];

// Log lines of host/src/plugin.rs and host/src/runtime.rs the tests wait for.
pub const LOADED: &str = "Loaded plugin";
pub const NOT_LOADED: &str = "Plugin not loaded:";
pub const REBUILT: &str = "Routes rebuilt for the changed plugins folder";
pub const UNLOADED: &str = "Plugin instance unloaded";
pub const REMOVED: &str = "Plugin file removed: its routes do nothing";
pub const NAMES_MISSING: &str = "which is not loaded";
pub const CALL_FAILED: &str = "Plugin call failed:";
pub const DISABLED: &str = "Plugin instance disabled";
pub const STUCK: &str = "marked stuck";
pub const RESUMED: &str = "The stuck plugin call returned; routing to it resumes";
pub const APPLIED: &str = "Applied the edited config";

// Metric names (host/src/metrics.rs).
pub const CALLS: &str = "patchbay_plugin_calls_total";
pub const ERRORS: &str = "patchbay_plugin_errors_total";
pub const PANICS: &str = "patchbay_plugin_panics_total";
pub const DROPS: &str = "patchbay_plugin_drops_total";
pub const SECONDS_COUNT: &str = "patchbay_plugin_call_seconds_count";
pub const STUCK_GAUGE: &str = "patchbay_plugin_stuck";
pub const COUNTER: &str = "patchbay_plugin_counter_total";

// ---------------------------------------------------------------------------------------------------
// Building plugins

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Runs `$CARGO build <args> --message-format=json-render-diagnostics` in the workspace root and
/// returns the shared library of every cdylib artifact, by package name.
fn cargo_build(args: &[&str]) -> Result<HashMap<String, PathBuf>, String> {
    let started = Instant::now();
    let output = Command::new(cargo())
        .arg("build")
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run cargo build {args:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build {args:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut libs = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let is_cdylib = v["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if v["reason"] != "compiler-artifact" || !is_cdylib {
            continue;
        }
        // The package id ends in `name@version` (or `#name@version` for a path package).
        let id = v["package_id"].as_str().unwrap_or_default();
        let name = id
            .rsplit(['#', '/'])
            .next()
            .and_then(|s| s.split('@').next())
            .unwrap_or_default()
            .to_string();
        let lib = v["filenames"].as_array().and_then(|files| {
            files
                .iter()
                .filter_map(Value::as_str)
                .find(|f| f.ends_with(std::env::consts::DLL_SUFFIX))
        });
        if let Some(lib) = lib {
            libs.insert(name, PathBuf::from(lib));
        }
    }
    eprintln!(
        "patchbay-tests: built plugins {:?} in {:?}",
        libs.keys().collect::<Vec<_>>(),
        started.elapsed()
    );
    Ok(libs)
}

/// The shared library of one of [`PACKAGES`], built (with all of them) once per test process.
pub fn plugin_lib(package: &str) -> PathBuf {
    static BUILT: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let mut args = Vec::new();
        for p in PACKAGES {
            args.extend(["-p", p]);
        }
        cargo_build(&args)
    });
    let libs = built.as_ref().unwrap_or_else(|e| panic!("{e}"));
    let lib = libs
        .get(package)
        .unwrap_or_else(|| panic!("cargo reported no library for {package}: {libs:?}"));
    assert!(lib.is_file(), "{} does not exist", lib.display());
    lib.clone()
}

/// `panicky` built with `panic = "abort"` into `<target>/panic-abort` (once per test process).
pub fn panic_abort_lib() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = target_dir().join("panic-abort");
            let dir = dir.to_string_lossy();
            let libs = cargo_build(&[
                "-p",
                PANICKY,
                "--config",
                "profile.dev.panic=\"abort\"",
                "--target-dir",
                &dir,
            ])?;
            libs.get(PANICKY)
                .cloned()
                .ok_or_else(|| format!("cargo reported no library for {PANICKY}: {libs:?}"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `<target>/patchbay-tests-plugins/NAME`.
fn c_output(name: &str) -> PathBuf {
    target_dir().join("patchbay-tests-plugins").join(name)
}

/// Compiles C `source` into the shared library `<target>/patchbay-tests-plugins/NAME` with
/// `cc -shared -fPIC -I plugin-api/include` (`$CC` if set), atomically (see the module docs).
fn compile_c(source: &Path, name: &str) -> Result<PathBuf, String> {
    let out = c_output(name);
    let dir = out.parent().expect("output has a parent");
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let include = workspace_root().join("plugin-api").join("include");
    let output = Command::new(&cc)
        .args(["-shared", "-fPIC", "-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg(source)
        .arg("-o")
        .arg(&tmp)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {cc:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{cc:?} failed to compile {} ({}):\n{}{}",
            source.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    fs::rename(&tmp, &out).map_err(|e| format!("rename to {}: {e}", out.display()))?;
    Ok(out)
}

/// `plugin-api/examples/c/echo_plugin.c` compiled against `patchbay_plugin.h` (once per process).
pub fn c_echo_lib() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let source = workspace_root()
                .join("plugin-api")
                .join("examples")
                .join("c")
                .join("echo_plugin.c");
            compile_c(&source, "libc_echo.so")
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A real shared library that is not a patchbay plugin (it exports only `plain_answer`).
pub fn plain_c_lib() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let source = c_output("plain.c");
            fs::create_dir_all(source.parent().unwrap()).map_err(|e| e.to_string())?;
            let tmp = source.with_extension(format!("c.{}.tmp", std::process::id()));
            fs::write(&tmp, "int plain_answer(void) { return 42; }\n")
                .and_then(|()| fs::rename(&tmp, &source))
                .map_err(|e| format!("write {}: {e}", source.display()))?;
            compile_c(&source, "libplain.so")
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------------
// The plugins folder

/// A temp plugins folder (mode 0755), referred to by absolute path (see the module docs).
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl Default for PluginDir {
    fn default() -> Self {
        Self::new()
    }
}

impl PluginDir {
    pub fn new() -> PluginDir {
        let dir = tempfile::Builder::new()
            .prefix("patchbay-test-plugins-")
            .tempdir()
            .expect("tempdir for plugins");
        set_mode(dir.path(), 0o755);
        PluginDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Drops the library `from` into the folder as `name` the way a deploy step does: copy to a
    /// name the host ignores (`NAME.part`), make it 0755, rename over. The host never sees a
    /// half-written file.
    pub fn install(&self, name: &str, from: &Path) {
        let tmp = self.file(&format!("{name}.part"));
        fs::copy(from, &tmp)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), tmp.display()));
        set_mode(&tmp, 0o755);
        let to = self.file(name);
        fs::rename(&tmp, &to).unwrap_or_else(|e| panic!("rename to {}: {e}", to.display()));
    }

    /// Overwrites `name` in place with the library `from`, as `cp` does (same inode, truncated
    /// and rewritten): what crashes a process that mapped the file itself.
    pub fn overwrite_in_place(&self, name: &str, from: &Path) {
        let bytes = fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        let to = self.file(name);
        fs::write(&to, bytes).unwrap_or_else(|e| panic!("write {}: {e}", to.display()));
    }

    /// Writes `bytes` as `name` (through a temp name, like [`PluginDir::install`]).
    pub fn write(&self, name: &str, bytes: &[u8]) {
        let tmp = self.file(&format!("{name}.part"));
        fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        let to = self.file(name);
        fs::rename(&tmp, &to).unwrap_or_else(|e| panic!("rename to {}: {e}", to.display()));
    }

    pub fn remove(&self, name: &str) {
        let path = self.file(name);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }

    pub fn set_mode(&self, mode: u32) {
        set_mode(self.path(), mode);
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------------
// Configs

/// A show with `desk` (listens on 127.0.0.1:0), `lights` (sends to `lights`), a metrics endpoint on
/// 127.0.0.1:0, `plugins: { dir: DIR, <plugins_extra> }` and `routes`.
///
/// `plugins_extra` is YAML for the rest of the `plugins:` map, each line indented by two spaces
/// (e.g. `"  error_budget: 3\n"`); `routes` are YAML list items indented by two spaces.
pub fn config(dir: &PluginDir, lights: SocketAddr, plugins_extra: &str, routes: &str) -> String {
    format!(
        "version: 1\nmetrics:\n  listen: 127.0.0.1:0\nchannels:\n  desk:\n    kind: udp\n    listen: 127.0.0.1:0\n  lights:\n    kind: udp\n    send: {lights}\nplugins:\n  dir: {}\n{plugins_extra}routes:\n{routes}",
        yq(&dir.path().display().to_string())
    )
}

/// A route (YAML list item) handing `pattern` to plugin `plugin`, with `config` (a YAML flow map
/// such as `{ to: lights }`, or empty for none).
pub fn plugin_route(name: &str, pattern: &str, plugin: &str, config: &str) -> String {
    let config = if config.is_empty() {
        String::new()
    } else {
        format!("\n        config: {config}")
    };
    format!(
        "  - name: {name}\n    match: {}\n    to:\n      - plugin: {plugin}{config}\n",
        yq(pattern)
    )
}

/// A route (YAML list item) forwarding `pattern` unchanged to `channel`.
pub fn forward_route(name: &str, pattern: &str, channel: &str) -> String {
    format!(
        "  - name: {name}\n    match: {}\n    to:\n      - forward: {channel}\n",
        yq(pattern)
    )
}

/// Saves `text` as the running show's config the way atomic editors do (a temp file beside it,
/// renamed over), so the host reloads it.
pub fn save_config(pb: &Patchbay, text: &str) {
    let path = pb.dir().join("cfg.yaml");
    let tmp = pb.dir().join("cfg.yaml.saving");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// The metrics endpoint of a show started with [`config`].
pub fn metrics_addr(pb: &Patchbay) -> SocketAddr {
    pb.ready()
        .metrics
        .unwrap_or_else(|| panic!("no metrics address in the ready file: {}", pb.ready().raw))
}

// ---------------------------------------------------------------------------------------------------
// Logs

/// How many lines of `text` contain every one of `needles`.
pub fn count_lines(text: &str, needles: &[&str]) -> usize {
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Waits until at least `n` stderr lines contain every one of `needles`; returns the stderr text.
pub fn wait_lines(pb: &Patchbay, needles: &[&str], n: usize) -> String {
    pb.wait_stderr(PLUGIN_TIMEOUT, |t| count_lines(t, needles) >= n)
}

/// Whether a log line has the field `key=value` (tracing quotes some string fields).
pub fn has_field(line: &str, key: &str, value: &str) -> bool {
    line.contains(&format!("{key}={value}")) || line.contains(&format!("{key}=\"{value}\""))
}

/// The first stderr line containing every one of `needles` (which must be there).
pub fn line_with(text: &str, needles: &[&str]) -> String {
    text.lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no line with {needles:?} in:\n{text}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------------
// Messages

/// Decodes a datagram that must be one OSC message.
pub fn message_of(bytes: &[u8]) -> OscMessage {
    match decode(bytes) {
        Ok(OscPacket::Message(m)) => m,
        other => panic!(
            "expected one OSC message, got {other:?}:\n{}",
            osc::hexdump(bytes)
        ),
    }
}

/// The next datagram at `rx` (within [`RECV_TIMEOUT`]), decoded as a message.
pub fn expect_message(rx: &Receiver, what: &str) -> OscMessage {
    message_of(&rx.expect(what).0)
}

/// Asserts `arg` is a float (`f`) within `tol` of `want`.
pub fn assert_float(arg: &OscArg, want: f64, tol: f64, what: &str) {
    match arg {
        OscArg::Float(v) => assert!(
            (f64::from(*v) - want).abs() <= tol,
            "{what}: got f {v}, expected {want} ± {tol}"
        ),
        other => panic!("{what}: expected a float near {want}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------
// A receiver that records on a thread

/// A receiver on 127.0.0.1 whose datagrams a thread records until it is dropped, so a burst never
/// overflows the socket buffer while the test does something else.
pub struct Recorder {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::start()
    }
}

impl Recorder {
    pub fn start() -> Recorder {
        let rx = Receiver::new();
        let addr = rx.addr();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (got, stop) = (got.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((bytes, _)) = rx.recv_timeout(Duration::from_millis(50)) {
                        got.lock().unwrap().push(bytes);
                    }
                }
            });
        }
        Recorder { addr, got, stop }
    }

    pub fn snapshot(&self) -> Vec<Vec<u8>> {
        self.got.lock().unwrap().clone()
    }

    /// The decoded messages received so far whose address is `address`.
    pub fn messages_at(&self, address: &str) -> Vec<OscMessage> {
        self.snapshot()
            .iter()
            .map(|b| message_of(b))
            .filter(|m| m.address == address)
            .collect()
    }

    /// Polls until `pred` holds for everything received so far (bounded by `timeout`); panics
    /// with `what` and the addresses received otherwise.
    pub fn wait_until(&self, timeout: Duration, what: &str, pred: impl Fn(&[Vec<u8>]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.snapshot();
            if pred(&got) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not so within {timeout:?}; received {} datagrams, the last ones: {:?}",
                got.len(),
                got.iter()
                    .rev()
                    .take(20)
                    .map(|b| osc::address_of(b))
                    .collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------------
// A paced sender

/// A thread sending `ADDRESS ,i N` for N = 0, 1, 2, ... from one socket, one every `pace`, until
/// stopped or `max` are out.
pub struct Flow {
    stop: Arc<AtomicBool>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<thread::JoinHandle<usize>>,
}

impl Flow {
    pub fn start(to: SocketAddr, address: &'static str, pace: Duration, max: usize) -> Flow {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the flow sender");
                let mut n = 0;
                while n < max && !stop.load(Ordering::Relaxed) {
                    let bytes = osc::message(address, &[OscArg::Int(n as i32)]);
                    sock.send_to(&bytes, to)
                        .unwrap_or_else(|e| panic!("flow send_to {to}: {e}"));
                    n += 1;
                    sent.store(n, Ordering::Relaxed);
                    thread::sleep(pace);
                }
                n
            })
        };
        Flow {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// How many messages are out so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops sending and returns how many messages went out (N = 0 .. that - 1).
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("flow thread")
            .join()
            .expect("flow thread panicked")
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The `i` arguments of the messages at `address` among `datagrams`.
pub fn ints_at(datagrams: &[Vec<u8>], address: &str) -> Vec<i32> {
    datagrams
        .iter()
        .map(|b| message_of(b))
        .filter(|m| m.address == address)
        .filter_map(|m| match m.args.first() {
            Some(OscArg::Int(n)) => Some(*n),
            _ => None,
        })
        .collect()
}
