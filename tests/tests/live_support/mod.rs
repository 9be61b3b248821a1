//! Helpers for the live-YAML end-to-end tests (`live_yaml.rs`) that the harness in `tests/src/lib.rs`
//! does not have: saving the running config the ways editors do, counting reload outcomes on stderr,
//! scraping Prometheus text, recording every datagram a receiver gets on a thread, and a paced sender.
//!
//! Every wait polls with a generous bound and fails with what it saw; nothing sleeps to assert.

#![allow(dead_code)] // not every test uses every helper

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use patchbay_tests::{osc, Patchbay, Receiver, RECV_TIMEOUT};

/// How long a save may take to be applied (or reported) before a test gives up. The host aims for a
/// quarter of a second; this bound only keeps a broken run from hanging.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The summary line an applied reload logs.
pub const APPLIED: &str = "Applied the edited config: ";
/// The line an invalid save logs.
pub const INVALID: &str = "The edited config is invalid";
/// The line a reload that could not be applied logs.
pub const ROLLED_BACK: &str = "Could not apply the edited config";

// ---------------------------------------------------------------------------------------------------
// Saving the config

/// How an editor writes the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Save {
    /// Truncate and write the same inode (`fs::write`, vim with `backupcopy=yes`, nano).
    InPlace,
    /// Write `cfg.yaml.tmp` next to it, then rename over (most GUI editors, atomic writers).
    Rename,
    /// Remove the file, then create a new one (some sync tools and editors).
    DeleteCreate,
}

/// The config file the running host watches.
pub fn config_path(pb: &Patchbay) -> PathBuf {
    pb.dir().join("cfg.yaml")
}

/// Saves `text` as the running host's config, the way `how` says.
pub fn save(pb: &Patchbay, text: &str, how: Save) {
    save_at(&config_path(pb), text, how);
}

pub fn save_at(path: &Path, text: &str, how: Save) {
    match how {
        Save::InPlace => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            f.write_all(text.as_bytes()).expect("write config");
            f.sync_all().expect("sync config");
        }
        Save::Rename => {
            let tmp = path.with_extension("yaml.tmp");
            let mut f = fs::File::create(&tmp).expect("create tmp config");
            f.write_all(text.as_bytes()).expect("write tmp config");
            f.sync_all().expect("sync tmp config");
            drop(f);
            fs::rename(&tmp, path).expect("rename over the config");
        }
        Save::DeleteCreate => {
            fs::remove_file(path).expect("remove config");
            // An editor that deletes first takes a moment before it creates the new file.
            thread::sleep(Duration::from_millis(50));
            let mut f = fs::File::create(path).expect("create config");
            f.write_all(text.as_bytes()).expect("write config");
            f.sync_all().expect("sync config");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Reload outcomes on stderr

/// Every stderr line containing `needle`.
pub fn lines_with(pb: &Patchbay, needle: &str) -> Vec<String> {
    pb.stderr_text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// The applied-reload summary lines so far.
pub fn applied_lines(pb: &Patchbay) -> Vec<String> {
    lines_with(pb, APPLIED)
}

/// Waits until `n` reloads in total have been applied; returns the `n`th summary line. Fails if more
/// than `n` were applied (a save applied twice, or a half save applied).
pub fn wait_applied(pb: &Patchbay, n: usize) -> String {
    let text = pb.wait_stderr(RELOAD_TIMEOUT, |t| {
        t.lines().filter(|l| l.contains(APPLIED)).count() >= n
    });
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(APPLIED)).collect();
    assert_eq!(
        lines.len(),
        n,
        "expected exactly {n} applied reloads so far, stderr:\n{text}"
    );
    lines[n - 1].to_string()
}

/// Waits until at least `n` stderr lines contain `needle`; returns the text.
pub fn wait_count(pb: &Patchbay, needle: &str, n: usize) -> String {
    pb.wait_stderr(RELOAD_TIMEOUT, |t| {
        t.lines().filter(|l| l.contains(needle)).count() >= n
    })
}

/// The summary of an applied-reload line: between `Applied the edited config: ` and the `.` before
/// the fields.
pub fn summary(line: &str) -> &str {
    let start = line
        .find(APPLIED)
        .unwrap_or_else(|| panic!("not an applied line: {line}"))
        + APPLIED.len();
    let rest = &line[start..];
    let end = rest
        .find(". generation=")
        .unwrap_or_else(|| panic!("no `. generation=` after the summary: {line}"));
    &rest[..end]
}

/// A `key=value` field of a log line, as a number.
pub fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Save-to-applied times (the `ms=` field of applied lines) seen by this test process, for the report.
pub fn record_times(test: &str, pb: &Patchbay) {
    let ms: Vec<u64> = applied_lines(pb)
        .iter()
        .filter_map(|l| field(l, "ms"))
        .collect();
    if ms.is_empty() {
        return;
    }
    let mut sorted = ms.clone();
    sorted.sort_unstable();
    eprintln!(
        "live_yaml: {test}: save-to-applied ms (host's own measure) n={} min={} median={} max={} all={ms:?}",
        sorted.len(),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
}

/// Asserts that stderr holds a config error line `FILE:LINE:COLUMN: ...` containing `what`, with
/// LINE and COLUMN positive numbers; returns (line, column).
pub fn error_position(stderr: &str, file: &str, what: &str) -> (usize, usize) {
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix(&format!("{file}:")) else {
            continue;
        };
        if !line.contains(what) {
            continue;
        }
        let mut parts = rest.splitn(3, ':');
        let l = parts.next().and_then(|s| s.parse::<usize>().ok());
        let c = parts.next().and_then(|s| s.parse::<usize>().ok());
        if let (Some(l), Some(c)) = (l, c) {
            assert!(l > 0 && c > 0, "positions are 1-based: {line}");
            return (l, c);
        }
    }
    panic!("no `{file}:LINE:COLUMN: ...{what}...` line on stderr:\n{stderr}");
}

// ---------------------------------------------------------------------------------------------------
// Metrics

/// `GET /metrics` over plain TCP; the body.
pub fn scrape(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect_timeout(&addr, RECV_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to metrics {addr}: {e}"));
    conn.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send the scrape request");
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "metrics response:\n{response}"
    );
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => panic!("no body in the metrics response:\n{response}"),
    }
}

/// The value of the sample whose name-and-labels is exactly `series` (e.g.
/// `patchbay_reloads_total{result="applied"}`), or `None` when absent.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Polls the metrics endpoint until `series` equals `want` (an absent counter counts as 0).
pub fn wait_metric(addr: SocketAddr, series: &str, want: f64) -> String {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let body = scrape(addr);
        let got = sample(&body, series).unwrap_or(0.0);
        if got == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {got}, expected {want} within {RELOAD_TIMEOUT:?}; metrics:\n{body}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------------
// Datagrams

/// A receiver whose datagrams are recorded by a thread until it is stopped.
pub struct Recorder {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let rx = Receiver::new();
        let addr = rx.addr();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (got, stop) = (got.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((bytes, _)) = rx.recv_timeout(Duration::from_millis(50)) {
                        got.lock().unwrap().push(bytes);
                    }
                }
            })
        };
        Recorder {
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    pub fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<Vec<u8>> {
        self.got.lock().unwrap().clone()
    }

    /// Whether any datagram so far satisfies `pred`.
    pub fn any(&self, pred: impl Fn(&[u8]) -> bool) -> bool {
        self.got.lock().unwrap().iter().any(|d| pred(d))
    }

    /// Polls until `pred` holds for everything received so far, at most `timeout`. Returns whether
    /// it held (the caller asserts, with its own account of what is missing).
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Vec<u8>]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.got.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the thread and returns everything received.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.snapshot()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `/ADDRESS ,i N`: the oracle encoding of a message with one int.
pub fn int_message(address: &str, n: i32) -> Vec<u8> {
    osc::message(address, &[patchbay_plugin_api::osc::OscArg::Int(n)])
}

/// The address and int argument of a `,i` message, or `None` for anything else.
pub fn parse_int_message(bytes: &[u8]) -> Option<(String, i32)> {
    let address = osc::address_of(bytes);
    if bytes.len() < 4 {
        return None;
    }
    let (body, arg) = bytes.split_at(bytes.len() - 4);
    let n = i32::from_be_bytes(arg.try_into().ok()?);
    // The body is the padded address then the padded `,i` tag string.
    let rebuilt = int_message(&address, n);
    (rebuilt.len() == bytes.len() && rebuilt[..body.len()] == *body).then_some((address, n))
}

/// A thread sending `/seq ,i N` for N = 0, 1, 2, ... from one socket at a modest pace (about one per
/// millisecond), until stopped or `max` messages are out.
pub struct Stream {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<i32>>,
}

impl Stream {
    pub fn start(to: SocketAddr, max: i32) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the stream sender");
                let mut n = 0;
                while n < max && !stop.load(Ordering::Relaxed) {
                    let bytes = int_message("/seq", n);
                    match sock.send_to(&bytes, to) {
                        Ok(_) => n += 1,
                        // A transient refusal (ICMP from an earlier datagram) is retried, not counted.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                        Err(e) => panic!("stream send_to {to}: {e}"),
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                n
            })
        };
        Stream {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sending; returns how many messages went out (0..N-1).
    pub fn stop(mut self) -> i32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("stream thread")
            .join()
            .expect("stream thread panicked")
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago (bound, read, released).
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Polls until a UDP socket can be bound on `addr` (the host let go of it); returns it.
pub fn wait_bindable(addr: SocketAddr) -> UdpSocket {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        match UdpSocket::bind(addr) {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{addr} is still held within {RELOAD_TIMEOUT:?}: {e}"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
