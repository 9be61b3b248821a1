//! The TCP benchmark (issue 7, "Performance"): what a `kind: tcp` forward costs per message compared
//! with a raw TCP relay, and what 1,000 idle connections cost in memory.
//!
//! ```text
//! cargo bench -p patchbay --bench tcp                                  # full run, ~1 min
//! cargo bench -p patchbay --bench tcp -- --quick                       # CI smoke run, ~10 s
//! cargo bench -p patchbay --bench tcp -- --write docs/benchmarks.md    # also record the results
//! ```
//!
//! Everything runs in this process, all traffic on 127.0.0.1, the way `benches/forward.rs` measures:
//!
//! - (a) the raw relay: a tokio current-thread runtime on its own OS thread that accepts one
//!   connection, reads length-framed frames from it (big-endian u32 size, then the packet) and writes
//!   each complete frame to one outgoing connection with its own write, as a host that hands each
//!   message on by itself must (the target is measured against it); and (a') the same relay writing
//!   all complete frames of a read with one write (the floor of a byte relay, for what coalescing
//!   writes could save). No OSC parsing, no routing, no metrics.
//! - (b) patchbay: `patchbay::run` on a tokio current-thread runtime on its own OS thread; a server
//!   channel `desk` (`framing: length`) and a client channel `lights` (`connect:` the sink,
//!   `framing: length`), one route `/bench/*/level` forwarding to `lights`.
//!
//!   For each: CPU time per message at max rate (the relay thread's `CLOCK_THREAD_CPUTIME_ID`, read by
//!   a probe task on the relay's own runtime), throughput, and latency and CPU per message at 5,000
//!   msg/s (one message per segment). Runs take turns in blocks (ABC CBA); the summary is the median
//!   over runs. Timings are reported, never asserted.
//! - (c) idle connections: a patchbay server channel, 1,000 connections opened to it from this process
//!   (the file limit raised with `setrlimit`), the process's VmRSS (`/proc/self/status`) before and
//!   after, reported as MB per 1,000 connections; again after each connection sent one message (its
//!   framing detected, buffers touched); and the host thread's CPU per second while they idle.
//!
//! `--write FILE` replaces (or appends) the "TCP (issue 7)" section of FILE between its markers, below
//! the hand-written-notes marker of `benches/forward.rs`, so the forward benchmark's rewrite of the
//! top of the file keeps it and this benchmark keeps everything else. Relative paths resolve against
//! the workspace root.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use patchbay::RunOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[path = "common/mod.rs"]
mod common;
use common::*;

/// `/bench/3/level ,ifh 3 0.75 <seq>`: 40 bytes (the forward benchmark's message), 44 framed.
const TRAFFIC_ADDRESS: &str = "/bench/3/level";
const MESSAGE_LEN: usize = 40;
const FRAME_LEN: usize = MESSAGE_LEN + 4;
const SEQ_OFFSET: usize = 32;
/// At most this many messages in flight (sent, not yet at the sink) at max rate.
const WINDOW: u64 = 1024;
/// The sender writes up to this many frames per `write` at max rate (a busy desk's burst).
const SEND_BATCH: u64 = 32;
/// Larger frames are a broken stream (both relays and the sink refuse them).
const MAX_FRAME: usize = 1 << 20;
/// Section markers in the results file.
const BEGIN: &str = "<!-- tcp benchmark (issue 7): begin; written by `cargo bench -p patchbay --bench tcp -- --write` -->";
const END: &str = "<!-- tcp benchmark (issue 7): end -->";
/// The forward benchmark keeps everything below this line when it rewrites the file.
const NOTES_MARKER: &str =
    "<!-- Hand-written notes below this line are kept when the benchmark rewrites this file. -->";

struct Params {
    runs: usize,
    warmup_msgs: u64,
    throughput_msgs: u64,
    blocks: u64,
    latency_rate: u64,
    latency_secs: u64,
    idle_connections: usize,
    idle_cpu_window: Duration,
}

impl Params {
    fn full() -> Params {
        Params {
            runs: 5,
            warmup_msgs: 5_000,
            throughput_msgs: 200_000,
            blocks: 10,
            latency_rate: 5_000,
            latency_secs: 2,
            idle_connections: 1_000,
            idle_cpu_window: Duration::from_secs(2),
        }
    }

    /// A smoke run for CI: the same phases, fewer messages.
    fn quick() -> Params {
        Params {
            runs: 3,
            warmup_msgs: 1_000,
            throughput_msgs: 20_000,
            blocks: 2,
            latency_rate: 5_000,
            latency_secs: 1,
            idle_connections: 1_000,
            idle_cpu_window: Duration::from_millis(500),
        }
    }
}

fn main() {
    let mut quick = false;
    let mut write: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--write" => write = Some(args.next().expect("--write needs a path").into()),
            // cargo bench passes `--bench`; filters and other harness flags mean nothing here.
            _ => {}
        }
    }
    let params = if quick {
        Params::quick()
    } else {
        Params::full()
    };
    let started = Instant::now();
    let machine = Machine::detect();
    let placement = Placement::detect();
    pin_current_thread(placement.load);
    // The recorder the host installs on start; installed first so the idle phase can read gauges.
    let metrics = patchbay::metrics::install().expect("metrics recorder");

    let workdir = std::env::temp_dir().join(format!("patchbay-tcp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).expect("temp dir");

    let mut runs = Vec::new();
    for run in 0..params.runs {
        for (kind, result) in measure_run(&params, &workdir, run, placement) {
            eprintln!(
                "  run {} {:<11} {}",
                run + 1,
                kind.name(),
                result.one_line()
            );
            runs.push((kind, result));
        }
    }
    eprintln!("  {} idle connections ...", params.idle_connections);
    let idle = measure_idle(&params, &workdir, placement, &metrics);
    let _ = std::fs::remove_dir_all(&workdir);

    let report = Report {
        quick,
        params: &params,
        runs: &runs,
        idle: &idle,
    };
    println!("\n{}", report.table());
    println!("(took {:.1} s)", started.elapsed().as_secs_f64());
    if let Some(path) = write {
        let path = if path.is_relative() {
            workspace_root().join(path)
        } else {
            path
        };
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let section = format!("{BEGIN}\n{}{END}\n", report.markdown(&machine));
        std::fs::write(&path, replace_section(&old, &section)).expect("write the results file");
        println!("wrote {}", path.display());
    }
}

/// `old` with its TCP section replaced by `section`, or `section` appended below the notes marker
/// (the marker added first when the file has none).
fn replace_section(old: &str, section: &str) -> String {
    if let (Some(b), Some(e)) = (old.find(BEGIN), old.find(END)) {
        if b < e {
            let after = &old[e + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            return format!("{}{section}{after}", &old[..b]);
        }
    }
    let mut text = old.to_string();
    if !text.contains(NOTES_MARKER) {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(NOTES_MARKER);
        text.push('\n');
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    text.push_str(section);
    text
}

// ---------------------------------------------------------------------------------------------------
// Threads, clocks, placement (as in benches/forward.rs)

async fn probe_task(mut requests: tokio::sync::mpsc::UnboundedReceiver<mpsc::Sender<u64>>) {
    while let Some(reply) = requests.recv().await {
        let _ = reply.send(thread_cpu_ns());
    }
}

// ---------------------------------------------------------------------------------------------------
// (a) and (b): the relays

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// (a) The raw relay writing each frame as it cuts it out: one write per message, as a host
    /// that hands each message on by itself must.
    Raw,
    /// (a') The raw relay writing all complete frames of a read at once: the floor of a byte relay.
    RawBatched,
    /// (b) patchbay.
    Patchbay,
}

const KINDS: [Kind; 3] = [Kind::Raw, Kind::RawBatched, Kind::Patchbay];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::RawBatched => "raw-batched",
            Kind::Patchbay => "patchbay",
        }
    }
}

/// A relay on its own thread: where to connect to it, and its thread's CPU clock.
struct Relay {
    listen: SocketAddr,
    probe: tokio::sync::mpsc::UnboundedSender<mpsc::Sender<u64>>,
    cancel: CancellationToken,
    thread: JoinHandle<()>,
}

impl Relay {
    fn thread_cpu_ns(&self) -> u64 {
        let (tx, rx) = mpsc::channel();
        self.probe.send(tx).expect("relay is running");
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the probe answers")
    }

    fn stop(self) {
        self.cancel.cancel();
        self.thread.join().expect("relay thread");
    }
}

/// (a) and (a'), the floor: connects to `sink`, accepts one connection, relays its complete length
/// frames: each with its own write, or (`batched`) all complete frames of a read with one write (they
/// are contiguous in the buffer).
fn start_raw(sink: SocketAddr, cpu: Option<usize>, batched: bool) -> Relay {
    let (probe, requests) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let (addr_tx, addr_rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name("raw-tcp-relay".into())
        .spawn(move || {
            pin_current_thread(cpu);
            current_thread_runtime().block_on(async move {
                tokio::spawn(probe_task(requests));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the raw relay");
                addr_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("main waits");
                let relay = async {
                    let mut output = tokio::net::TcpStream::connect(sink)
                        .await
                        .expect("the raw relay connects to the sink");
                    output.set_nodelay(true).expect("TCP_NODELAY");
                    let (mut input, _) = listener.accept().await.expect("accept");
                    input.set_nodelay(true).expect("TCP_NODELAY");
                    let mut buf = vec![0u8; 65_536];
                    let mut filled = 0;
                    loop {
                        let n = match input.read(&mut buf[filled..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        filled += n;
                        let mut complete = 0;
                        while filled - complete >= 4 {
                            let len =
                                u32::from_be_bytes(buf[complete..complete + 4].try_into().unwrap())
                                    as usize;
                            assert!(len <= MAX_FRAME, "raw relay: frame of {len} bytes");
                            if filled - complete < 4 + len {
                                break;
                            }
                            if !batched
                                && output
                                    .write_all(&buf[complete..complete + 4 + len])
                                    .await
                                    .is_err()
                            {
                                return;
                            }
                            complete += 4 + len;
                        }
                        if complete > 0 {
                            if batched && output.write_all(&buf[..complete]).await.is_err() {
                                return;
                            }
                            buf.copy_within(complete..filled, 0);
                            filled -= complete;
                        }
                        if filled == buf.len() {
                            buf.resize(buf.len() * 2, 0);
                        }
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = relay => {}
                }
            })
        })
        .expect("spawn the raw relay thread");
    let listen = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the raw relay binds");
    Relay {
        listen,
        probe,
        cancel,
        thread,
    }
}

/// (b)'s config: `desk` (server, length) -> one route -> `lights` (client of the sink, length).
fn patchbay_config(sink: SocketAddr) -> String {
    format!(
        "version: 1\nchannels:\n  desk: {{kind: tcp, listen: 127.0.0.1:0, framing: length}}\n  lights: {{kind: tcp, connect: {sink}, framing: length, queue: 8192}}\nroutes:\n  - {{name: level, match: /bench/*/level, to: [{{forward: lights}}]}}\n"
    )
}

/// Patchbay in-process from `yaml` (written to `config`; the ready file beside it), exactly as
/// `patchbay run --ready-file` starts it minus the CLI; `listen_channel`'s address is the relay's.
fn start_patchbay(config: &Path, yaml: &str, listen_channel: &str, cpu: Option<usize>) -> Relay {
    let ready_file = config.with_extension("ready.json");
    let _ = std::fs::remove_file(&ready_file);
    std::fs::write(config, yaml).expect("write the config");
    let options = RunOptions {
        config: config.to_path_buf(),
        ready_file: Some(ready_file.clone()),
        strict: false,
    };
    let (probe, requests) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let shutdown = cancel.clone();
    let thread = thread::Builder::new()
        .name("patchbay".into())
        .spawn(move || {
            pin_current_thread(cpu);
            current_thread_runtime().block_on(async move {
                tokio::spawn(probe_task(requests));
                if let Err(e) = patchbay::run(options, shutdown).await {
                    panic!("patchbay did not run: {e}");
                }
            })
        })
        .expect("spawn the patchbay thread");
    // The ready file is written by rename: once it exists it is complete.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listen = loop {
        if let Ok(text) = std::fs::read_to_string(&ready_file) {
            let ready: serde_json::Value = serde_json::from_str(&text).expect("ready file is JSON");
            if let Some(listen) = ready["channels"][listen_channel]["listen"].as_str() {
                break listen.parse().expect("listen is ip:port");
            }
        }
        assert!(
            !thread.is_finished(),
            "patchbay stopped before it was ready"
        );
        assert!(
            Instant::now() < deadline,
            "patchbay was not ready within 20 s"
        );
        thread::sleep(Duration::from_millis(5));
    };
    Relay {
        listen,
        probe,
        cancel,
        thread,
    }
}

// ---------------------------------------------------------------------------------------------------
// Traffic

fn message(seq: u64) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[..TRAFFIC_ADDRESS.len()].copy_from_slice(TRAFFIC_ADDRESS.as_bytes()); // padded to 16
    m[16..20].copy_from_slice(b",ifh");
    m[24..28].copy_from_slice(&3i32.to_be_bytes());
    m[28..32].copy_from_slice(&0.75f32.to_be_bytes());
    m[SEQ_OFFSET..].copy_from_slice(&seq.to_be_bytes());
    m
}

fn push_frame(out: &mut Vec<u8>, seq: u64) {
    out.extend_from_slice(&(MESSAGE_LEN as u32).to_be_bytes());
    out.extend_from_slice(&message(seq));
}

fn sequence_number(frame: &[u8]) -> Option<u64> {
    (frame.len() == MESSAGE_LEN && frame[19] == b'h')
        .then(|| u64::from_be_bytes(frame[SEQ_OFFSET..].try_into().unwrap()))
}

/// The receiving end: a listener a relay connects to, and the accepted connection.
struct Sink {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Sink {
    fn bind() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        let addr = listener.local_addr().expect("sink addr");
        Sink { listener, addr }
    }

    /// The relay's connection (within 20 s).
    fn accept(&self) -> SinkConn {
        self.listener.set_nonblocking(true).expect("non-blocking");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).expect("blocking");
                    stream
                        .set_read_timeout(Some(Duration::from_millis(10)))
                        .expect("read timeout");
                    return SinkConn {
                        stream,
                        pending: Mutex::new(Vec::new()),
                    };
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "the relay never connected to the sink"
                    );
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("sink accept: {e}"),
            }
        }
    }
}

struct SinkConn {
    stream: TcpStream,
    /// Bytes of a frame cut by the end of the previous phase.
    pending: Mutex<Vec<u8>>,
}

struct Received {
    arrivals: Vec<u64>,
    count: u64,
    sink_cpu_ns: u64,
}

impl SinkConn {
    /// Reads frames until `expected` arrived, or the sender is done and nothing came for 500 ms.
    fn collect(
        &self,
        expected: u64,
        epoch: Instant,
        count: &AtomicU64,
        sender_done: &AtomicBool,
    ) -> Received {
        let cpu0 = thread_cpu_ns();
        let mut arrivals = vec![u64::MAX; expected as usize];
        let mut got = 0u64;
        let mut last_activity = Instant::now();
        let mut pending = self.pending.lock().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        while got < expected {
            let n = match (&self.stream).read(&mut buf) {
                Ok(0) => panic!("the relay closed its connection to the sink"),
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if sender_done.load(Ordering::Acquire)
                        && last_activity.elapsed() > Duration::from_millis(500)
                    {
                        break;
                    }
                    continue;
                }
                Err(e) => panic!("sink read: {e}"),
            };
            let at = epoch.elapsed().as_nanos() as u64;
            last_activity = Instant::now();
            pending.extend_from_slice(&buf[..n]);
            let mut used = 0;
            while pending.len() - used >= 4 {
                let len = u32::from_be_bytes(pending[used..used + 4].try_into().unwrap()) as usize;
                assert!(len <= MAX_FRAME, "sink: frame of {len} bytes");
                if pending.len() - used < 4 + len {
                    break;
                }
                if let Some(seq) = sequence_number(&pending[used + 4..used + 4 + len]) {
                    if let Some(arrival) = arrivals.get_mut(seq as usize) {
                        if *arrival == u64::MAX {
                            *arrival = at;
                            got += 1;
                        }
                    }
                }
                used += 4 + len;
            }
            pending.drain(..used);
            count.store(got, Ordering::Release);
        }
        Received {
            arrivals,
            count: got,
            sink_cpu_ns: thread_cpu_ns() - cpu0,
        }
    }
}

/// Sends `n` messages as fast as the relay takes them, at most `WINDOW` in flight, up to `SEND_BATCH`
/// frames per write; the sender sleeps 20 µs when the window is full. In-flight messages are written
/// off as lost when nothing arrives for 1 s (TCP loses nothing; a relay that drops would stall us).
fn blast(sink: &SinkConn, sender: &mut TcpStream, n: u64) -> Blasted {
    let count = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let epoch = Instant::now();
    thread::scope(|s| {
        let collector = s.spawn(|| sink.collect(n, epoch, &count, &done));
        let first_send_ns = epoch.elapsed().as_nanos() as u64;
        let mut written_off = 0u64;
        let mut seq = 0u64;
        let mut batch = Vec::with_capacity(SEND_BATCH as usize * FRAME_LEN);
        let mut stalled_since: Option<(Instant, u64)> = None;
        while seq < n {
            let arrived = count.load(Ordering::Acquire);
            let in_flight = seq.saturating_sub(arrived + written_off);
            if in_flight >= WINDOW {
                match stalled_since {
                    Some((since, at)) if at == arrived => {
                        if since.elapsed() > Duration::from_secs(1) {
                            written_off = seq - arrived;
                        }
                    }
                    _ => stalled_since = Some((Instant::now(), arrived)),
                }
                thread::sleep(Duration::from_micros(20));
                continue;
            }
            stalled_since = None;
            let k = (WINDOW - in_flight).min(SEND_BATCH).min(n - seq);
            batch.clear();
            for i in 0..k {
                push_frame(&mut batch, seq + i);
            }
            sender.write_all(&batch).expect("send to the relay");
            seq += k;
        }
        done.store(true, Ordering::Release);
        let received = collector.join().expect("sink thread");
        let last_receive_ns = received
            .arrivals
            .iter()
            .copied()
            .filter(|&t| t != u64::MAX)
            .max()
            .unwrap_or(0);
        Blasted {
            received: received.count,
            first_send_ns,
            last_receive_ns,
            sink_cpu_ns: received.sink_cpu_ns,
        }
    })
}

/// `rate` messages per second for `secs` seconds on an absolute schedule, one write (one segment)
/// each; one-way latency sender -> relay -> sink.
fn paced(sink: &SinkConn, sender: &mut TcpStream, rate: u64, secs: u64) -> Latency {
    let n = rate * secs;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let count = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let epoch = Instant::now();
    let mut sent_at = vec![0u64; n as usize];
    let received = thread::scope(|s| {
        let collector = s.spawn(|| sink.collect(n, epoch, &count, &done));
        let start = Instant::now();
        let mut frame = Vec::with_capacity(FRAME_LEN);
        for seq in 0..n {
            let due = start + period * seq as u32;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            frame.clear();
            push_frame(&mut frame, seq);
            sent_at[seq as usize] = epoch.elapsed().as_nanos() as u64;
            sender.write_all(&frame).expect("send to the relay");
        }
        done.store(true, Ordering::Release);
        collector.join().expect("sink thread")
    });
    Latency::of(&sent_at, &received.arrivals)
}

// ---------------------------------------------------------------------------------------------------
// One run

/// One relay with its sink connection and the sender's connection to it.
struct Wired {
    relay: Relay,
    sink: SinkConn,
    sender: TcpStream,
}

fn wire(relay: Relay, sink: &Sink) -> Wired {
    let sink_conn = sink.accept();
    let sender = TcpStream::connect(relay.listen).expect("connect to the relay");
    sender.set_nodelay(true).expect("TCP_NODELAY");
    Wired {
        relay,
        sink: sink_conn,
        sender,
    }
}

/// One run: fresh sinks and relays of every kind, all up at once (an idle relay costs nothing), fed
/// in turns: the max-rate phase in blocks, the relays' order reversed every other block (ABC CBA),
/// so the machine's drift hits them alike.
fn measure_run(
    params: &Params,
    workdir: &Path,
    run: usize,
    placement: Placement,
) -> Vec<(Kind, RelayRun)> {
    let mut relays: Vec<Wired> = KINDS
        .iter()
        .map(|&kind| {
            let sink = Sink::bind();
            let relay = match kind {
                Kind::Raw => start_raw(sink.addr, placement.relay, false),
                Kind::RawBatched => start_raw(sink.addr, placement.relay, true),
                Kind::Patchbay => start_patchbay(
                    &workdir.join(format!("run{run}.yaml")),
                    &patchbay_config(sink.addr),
                    "desk",
                    placement.relay,
                ),
            };
            wire(relay, &sink)
        })
        .collect();

    for w in relays.iter_mut() {
        let b = blast(&w.sink, &mut w.sender, params.warmup_msgs);
        assert_eq!(
            b.received, params.warmup_msgs,
            "warm-up: every message arrives (TCP)"
        );
    }

    let mut acc: Vec<Accumulated> = KINDS.iter().map(|_| Accumulated::default()).collect();
    let neighbours = Neighbours::start();
    let block = params.throughput_msgs / params.blocks;
    let forward: Vec<usize> = (0..KINDS.len()).collect();
    let backward: Vec<usize> = (0..KINDS.len()).rev().collect();
    for b in 0..params.blocks {
        let order = if (b + run as u64).is_multiple_of(2) {
            &forward
        } else {
            &backward
        };
        for &i in order {
            let w = &mut relays[i];
            acc[i].measure_block(
                block,
                || w.relay.thread_cpu_ns(),
                || blast(&w.sink, &mut w.sender, block),
            );
        }
    }
    let neighbours = neighbours.cores();

    let mut paced_results: Vec<Option<(Latency, u64)>> = KINDS.iter().map(|_| None).collect();
    let order = if run.is_multiple_of(2) {
        &forward
    } else {
        &backward
    };
    for &i in order {
        let w = &mut relays[i];
        let relay0 = w.relay.thread_cpu_ns();
        let latency = paced(
            &w.sink,
            &mut w.sender,
            params.latency_rate,
            params.latency_secs,
        );
        let cpu = w.relay.thread_cpu_ns() - relay0;
        paced_results[i] = Some((latency, cpu));
    }
    for w in relays {
        drop(w.sender);
        w.relay.stop();
    }
    KINDS
        .iter()
        .zip(acc)
        .zip(paced_results)
        .map(|((&kind, a), p)| {
            let (latency, cpu) = p.expect("every relay measured");
            (kind, a.result(latency, cpu, neighbours, None))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// (c) idle connections

struct Idle {
    connections: usize,
    nofile: u64,
    rss_before_kb: u64,
    rss_open_kb: u64,
    rss_after_message_kb: u64,
    idle_cpu_ms_per_s: f64,
    accept_secs: f64,
}

impl Idle {
    /// MB (10^6 bytes) per 1,000 connections for an RSS after the connections opened.
    fn mb_per_1000(&self, rss_kb: u64) -> f64 {
        let delta = rss_kb.saturating_sub(self.rss_before_kb) as f64 * 1024.0;
        delta / 1e6 * 1000.0 / self.connections as f64
    }
}

/// VmRSS of this process, kB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Raises the soft RLIMIT_NOFILE to at least `want` (up to the hard limit); returns the new soft one.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    if lim.rlim_cur >= want {
        return lim.rlim_cur;
    }
    let new = libc::rlimit {
        rlim_cur: (want as libc::rlim_t).min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit; raising the soft limit up to the hard one needs no privilege.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    assert!(
        new.rlim_cur >= want,
        "the hard file limit {} is below the {want} descriptors the idle phase needs",
        lim.rlim_max
    );
    new.rlim_cur
}

/// The value of `name{channel="CHANNEL"}` in Prometheus text, 0 if absent.
fn gauge(text: &str, name: &str, channel: &str) -> f64 {
    let prefix = format!("{name}{{channel=\"{channel}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn wait_for_metric(
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
    name: &str,
    value: f64,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics.render();
        let got = gauge(&text, name, "idle");
        if got >= value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{channel=idle}} is {got}, not {value}, after 30 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn measure_idle(
    params: &Params,
    workdir: &Path,
    placement: Placement,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
) -> Idle {
    let n = params.idle_connections;
    // Both ends live in this process, plus patchbay's own descriptors and the relays' leftovers.
    let nofile = raise_nofile(2 * n as u64 + 256);
    let yaml = format!(
        "version: 1\nchannels:\n  idle: {{kind: tcp, listen: 127.0.0.1:0, framing: auto, max_connections: {}}}\n",
        n + 16
    );
    let relay = start_patchbay(&workdir.join("idle.yaml"), &yaml, "idle", placement.relay);
    // One connection first, so whatever a first connection sets up once is not counted per connection.
    {
        let mut warm = TcpStream::connect(relay.listen).expect("connect");
        let mut frame = Vec::new();
        push_frame(&mut frame, 0);
        warm.write_all(&frame).expect("write");
        wait_for_metric(metrics, "patchbay_channel_frames_in_total", 1.0);
    }
    wait_for_metric_exact(metrics, "patchbay_channel_connections", 0.0);
    let rss_before_kb = rss_kb();
    let started = Instant::now();
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(relay.listen).expect("open an idle connection"))
        .collect();
    wait_for_metric(metrics, "patchbay_channel_connections", n as f64);
    let accept_secs = started.elapsed().as_secs_f64();
    let rss_open_kb = rss_kb();

    let cpu0 = relay.thread_cpu_ns();
    thread::sleep(params.idle_cpu_window);
    let idle_cpu = relay.thread_cpu_ns() - cpu0;

    let mut frame = Vec::new();
    push_frame(&mut frame, 1);
    for c in conns.iter_mut() {
        c.write_all(&frame).expect("one message per connection");
    }
    wait_for_metric(metrics, "patchbay_channel_frames_in_total", 1.0 + n as f64);
    let rss_after_message_kb = rss_kb();
    drop(conns);
    relay.stop();
    Idle {
        connections: n,
        nofile,
        rss_before_kb,
        rss_open_kb,
        rss_after_message_kb,
        idle_cpu_ms_per_s: idle_cpu as f64 / 1e6 / params.idle_cpu_window.as_secs_f64(),
        accept_secs,
    }
}

fn wait_for_metric_exact(
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
    name: &str,
    value: f64,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = gauge(&metrics.render(), name, "idle");
        if got == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{channel=idle}} is {got}, not {value}, after 30 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------------
// The report

struct Report<'a> {
    quick: bool,
    params: &'a Params,
    runs: &'a [(Kind, RelayRun)],
    idle: &'a Idle,
}

impl Report<'_> {
    fn of(&self, kind: Kind) -> impl Iterator<Item = &RelayRun> {
        self.runs
            .iter()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, r)| r)
    }

    fn summary(&self, kind: Kind) -> Summary {
        Summary::of(self.of(kind))
    }

    fn paired_ratio(&self) -> f64 {
        median(
            self.of(Kind::Raw)
                .zip(self.of(Kind::Patchbay))
                .map(|(r, p)| p.cpu_ns_per_msg / r.cpu_ns_per_msg)
                .collect(),
        )
    }

    fn table(&self) -> String {
        let (raw, batched, pb) = (
            self.summary(Kind::Raw),
            self.summary(Kind::RawBatched),
            self.summary(Kind::Patchbay),
        );
        let ratio = pb.cpu_ns / raw.cpu_ns;
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let p = self.params;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| TCP forward, length framing, median of {} runs | raw relay, a write per frame (a) | raw relay, a write per read (a') | patchbay (b) | patchbay / (a) | patchbay / (a') |",
            p.runs
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            t,
            "| CPU per message at max rate (relay thread) | {:.2} µs | {:.2} µs | {:.2} µs | **{ratio:.2}x** (target ≤ 1.5x: {}; per-run ratios' median {:.2}x) | {:.2}x |",
            raw.cpu_ns / 1e3,
            batched.cpu_ns / 1e3,
            pb.cpu_ns / 1e3,
            verdict(ratio <= 1.5),
            self.paired_ratio(),
            pb.cpu_ns / batched.cpu_ns
        );
        let _ = writeln!(
            t,
            "| CPU per message at {} msg/s, one message per segment | {:.2} µs | {:.2} µs | {:.2} µs | {:.2}x | {:.2}x |",
            p.latency_rate,
            raw.paced_cpu_ns / 1e3,
            batched.paced_cpu_ns / 1e3,
            pb.paced_cpu_ns / 1e3,
            pb.paced_cpu_ns / raw.paced_cpu_ns,
            pb.paced_cpu_ns / batched.paced_cpu_ns
        );
        let _ = writeln!(
            t,
            "| throughput at max rate ({} msgs/run) | {:.0} msg/s | {:.0} msg/s | {:.0} msg/s | {:.2}x | {:.2}x |",
            p.throughput_msgs,
            raw.msgs_per_sec,
            batched.msgs_per_sec,
            pb.msgs_per_sec,
            pb.msgs_per_sec / raw.msgs_per_sec,
            pb.msgs_per_sec / batched.msgs_per_sec
        );
        let _ = writeln!(
            t,
            "| loss at max rate (all runs) | {} of {} | {} of {} | {} of {} | | |",
            raw.loss, raw.sent, batched.loss, batched.sent, pb.loss, pb.sent
        );
        let _ = writeln!(
            t,
            "| latency p50 / p99 at {} msg/s | {:.1} / {:.1} µs | {:.1} / {:.1} µs | {:.1} / {:.1} µs | | |",
            p.latency_rate,
            raw.p50_us,
            raw.p99_us,
            batched.p50_us,
            batched.p99_us,
            pb.p50_us,
            pb.p99_us
        );
        let _ = writeln!(
            t,
            "| latency max (worst run), loss at {} msg/s | {:.1} µs, {} | {:.1} µs, {} | {:.1} µs, {} | | |",
            p.latency_rate,
            raw.max_us,
            raw.latency_lost,
            batched.max_us,
            batched.latency_lost,
            pb.max_us,
            pb.latency_lost
        );
        t.push('\n');
        let i = self.idle;
        let open = i.mb_per_1000(i.rss_open_kb);
        let _ = writeln!(
            t,
            "| {} idle connections to one server channel | figure | target |",
            i.connections
        );
        let _ = writeln!(t, "|---|---:|---|");
        let _ = writeln!(
            t,
            "| memory (process RSS) per 1,000 connections, opened and silent | {open:.1} MB | < 50 MB: {} |",
            verdict(open < 50.0)
        );
        let _ = writeln!(
            t,
            "| memory per 1,000 connections after one message each | {:.1} MB | |",
            i.mb_per_1000(i.rss_after_message_kb)
        );
        let _ = writeln!(
            t,
            "| host thread CPU while they idle | {:.2} ms per s | |",
            i.idle_cpu_ms_per_s
        );
        let _ = writeln!(
            t,
            "| time to open and accept them all | {:.2} s | |",
            i.accept_secs
        );
        t
    }

    fn runs_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| run | relay | msg/s | loss | CPU/msg | relay busy | other CPU/msg | CPU/msg at {} msg/s | p50 | p99 | max | neighbours (cores) |",
            self.params.latency_rate
        );
        let _ = writeln!(
            t,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (n, (kind, r)) in self.runs.iter().enumerate() {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {:.2} |",
                n / 2 + 1,
                kind.name(),
                r.table_cells(),
                r.neighbours_tput,
            );
        }
        let i = self.idle;
        let _ = writeln!(
            t,
            "\nIdle phase: VmRSS {} kB before, {} kB with {} connections open, {} kB after one message each; RLIMIT_NOFILE raised to {}.",
            i.rss_before_kb, i.rss_open_kb, i.connections, i.rss_after_message_kb, i.nofile
        );
        t
    }

    fn markdown(&self, machine: &Machine) -> String {
        let p = self.params;
        let mut md = String::new();
        md.push_str("## TCP (issue 7)\n\n");
        md.push_str(
            "Generated by `cargo bench -p patchbay --bench tcp -- --write docs/benchmarks.md` (this \
             section only; the forward benchmark keeps it when it rewrites the top of the file). \
             `-- --quick` is the CI smoke run; its figures are not for the record.\n\n",
        );
        if self.quick {
            md.push_str("**Written by a `--quick` run: fewer messages and runs than the real benchmark.**\n\n");
        }
        let _ = writeln!(
            md,
            "Machine: {} ({} cores available), {}, {}, commit {}; all traffic on 127.0.0.1; bench \
             profile.\n",
            machine.cpu, machine.cores, machine.kernel, machine.rustc, machine.commit
        );
        md.push_str(&self.table());
        md.push_str("\n### Every run (TCP)\n\n");
        md.push_str(&self.runs_table());
        md.push_str("\n### Method (TCP)\n\n");
        md.push_str(
            "- **(a) and (a') raw TCP relays, the floor**: a tokio current-thread runtime on its own OS \
             thread accepts one connection and connects to the sink (TCP_NODELAY on both); it reads into \
             a 64 KiB buffer and walks the length prefixes, keeping a cut frame for the next read. (a) \
             writes each complete frame with its own `write_all` as it finds it: one write per message, \
             what a host that hands each message on by itself (to whichever destinations its routes \
             name) does at least; the target is measured against it, as the forward benchmark's raw \
             relay makes the same system calls as patchbay's udp channels. (a') writes all complete \
             frames of a read with one `write_all` (they are contiguous): the floor of a byte relay, \
             shown for what coalescing writes could save. No OSC parsing, no routing, no metrics.\n",
        );
        md.push_str(
            "- **(b) patchbay**: `patchbay::run` in-process on a tokio current-thread runtime on its own \
             OS thread; `desk: {kind: tcp, listen: 127.0.0.1:0, framing: length}`, `lights: {kind: tcp, \
             connect: SINK, framing: length, queue: 8192}`, one route `/bench/*/level` -> `lights`.\n",
        );
        let _ = writeln!(
            md,
            "- **Traffic**: `{TRAFFIC_ADDRESS} ,ifh` ({MESSAGE_LEN} bytes, {FRAME_LEN} framed) whose int64 \
             is a sequence number the sink reads back. Max rate: {} messages per relay per run after {} \
             warm-up messages, in {} blocks per relay taking turns (ABC CBA), at most {WINDOW} in flight, \
             up to {SEND_BATCH} frames per `write` (a busy desk's burst), msg/s = received / (last \
             receive − first send). Paced: {} msg/s for {} s per relay, one frame per `write` (one \
             segment, so every message pays the relay's wake-up).",
            p.throughput_msgs, p.warmup_msgs, p.blocks, p.latency_rate, p.latency_secs
        );
        md.push_str(
            "- **CPU per message**: the relay thread's `CLOCK_THREAD_CPUTIME_ID` (user + system, so the \
             socket calls count), read by a probe task on the relay's own runtime before and after each \
             block, divided by the messages the sink received. The relay thread is pinned to one core, \
             the sender and the sink (a thread reading the sink connection) to the other. \"other\" \
             (process CPU minus sender, sink and relay threads) near zero says no work hid on another \
             thread. The target is median patchbay CPU / median CPU of (a), medians over runs.\n",
        );
        let _ = writeln!(
            md,
            "- **Idle connections**: a patchbay server channel (`framing: auto`, `max_connections` above \
             the count) in-process; after one warm-up connection has come and gone, {} connections are \
             opened from this process (RLIMIT_NOFILE raised with `setrlimit`; both ends are in this \
             process, the test's ends cost no user memory) and the `patchbay_channel_connections` gauge \
             is awaited; the figure is the growth of VmRSS (`/proc/self/status`) scaled to 1,000. Then \
             every connection sends one message (its framing gets detected) and VmRSS is read again. \
             The host thread's CPU is read over {:.1} s while they idle.",
            self.idle.connections,
            p.idle_cpu_window.as_secs_f64()
        );
        md.push_str("- Timings are reported, never asserted.\n");
        md
    }
}
