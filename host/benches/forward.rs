//! The forward benchmark (issue 3, "Performance"): what patchbay costs per forwarded message compared
//! with the floor, a relay that forwards bytes without looking at them.
//!
//! ```text
//! cargo bench -p patchbay --bench forward                                  # full run, ~3 min
//! cargo bench -p patchbay --bench forward -- --quick                       # CI smoke run, ~15 s
//! cargo bench -p patchbay --bench forward -- --write docs/benchmarks.md    # also write the results
//! cargo bench -p patchbay --bench forward -- --wait-quiet 300 --write docs/benchmarks.md
//! ```
//!
//! `--only targets` measures only the script and plugin routes (issues 5 and 6) and the Rhai call,
//! `--only rhai` only the Rhai call, and prints them (no `--write`): for working on those targets.
//!
//! `--wait-quiet SECS` waits (up to SECS before each run) until other processes leave the machine
//! nearly idle: on a 2-core machine shared with builds, a neighbour's compile changes every figure.
//! Each run's row says how busy the neighbours were.
//!
//! One run measures, in this process, with all traffic on 127.0.0.1:
//!
//! - (a) the raw relay: a tokio current-thread runtime on its own OS thread, `recv_from` into a buffer
//!   and `try_send_to` the sink from a second socket; the same socket API and socket layout as a
//!   patchbay udp channel pair (one listening socket, one send-only socket).
//! - (b) patchbay: `patchbay::run` on a tokio current-thread runtime on its own OS thread, so all of
//!   the host's work is on that thread; 50 routes (32 literal, 18 with `*`), the traffic matching one
//!   of the pattern routes (`/bench/*/level`).
//!
//!   For each: throughput at max rate (windowed sender), CPU time per message (the relay thread's
//!   `CLOCK_THREAD_CPUTIME_ID`, read by a probe task on the relay's own runtime), and latency at
//!   5,000 msg/s. Runs alternate raw/patchbay so slow drift of the machine hits both alike; the summary
//!   is the median over runs.
//! - (c) `RouteTable::find` alone at 50, 1,000 and 10,000 routes (64% literal, 36% pattern), and the
//!   whole in-memory dispatch path (decode + route + an output that only counts) at 50 routes: the
//!   host's own cost per message with no system call in it, to compare with (b) minus (a).
//! - (d) live reloads (issue 4): save-to-applied time seen on the wire, and the forward route's CPU
//!   per message while the config is rewritten every 100 ms vs without; (e) a route to a script that
//!   re-sends each message (issue 5) and (f) a route through the `scale` plugin (issue 6), each
//!   against the plain forward route in the same patchbay, with the CPU of the script or plugin
//!   thread counted; and the Rhai call on its own. See `forward/extra.rs`.
//!
//! Relative `--write` paths are resolved against the workspace root (cargo runs benches from the
//! package folder).

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use patchbay::channel::{Origin, Output};
use patchbay::config::{self, Plan};
use patchbay::dispatch::{Dispatcher, Switchboard};
use patchbay::metrics::ChannelMetrics;
use patchbay::route::{ChannelId, Hits, RouteTable};
use patchbay::scheduler::Scheduler;
use patchbay::RunOptions;
use patchbay_plugin_api::osc::{DecodeLimits, PacketRef};
use tokio_util::sync::CancellationToken;

#[path = "common/mod.rs"]
mod common;
use common::*;

#[path = "forward/extra.rs"]
mod extra;

/// The address the traffic uses; it matches the pattern route `/bench/*/level` and nothing else.
const TRAFFIC_ADDRESS: &str = "/bench/3/level";
/// `/bench/3/level ,ifh 3 0.75 <seq>`: 40 bytes, the size of a typical desk fader message with an
/// int64 sequence number the sink reads back (at `SEQ_OFFSET`).
const MESSAGE_LEN: usize = 40;
const SEQ_OFFSET: usize = 32;
/// At most this many messages in flight between sender and sink during the max-rate phase: enough that
/// the relay's input queue never runs dry while the sink catches up (a relay that keeps going idle
/// pays a wake-up per few messages, and the faster relay would idle more: the comparison would then
/// favour the slower one), few enough to fit in `RELAY_RECV_BUFFER`, so the loss counted is the
/// relay's, not the pacing's.
const WINDOW: u64 = 1024;
/// SO_RCVBUF of both relays' input sockets (patchbay: `recv_buffer:`). The default 212,992 bytes holds
/// only ~200 small datagrams on loopback, too few for `WINDOW`; 4 MiB is the usual `rmem_max`.
const RELAY_RECV_BUFFER: usize = 4 << 20;
/// Same size as a patchbay udp channel's receive buffer (max_datagram + 1).
const RELAY_BUFFER: usize = 65_508;

struct Params {
    runs: usize,
    warmup_msgs: u64,
    throughput_msgs: u64,
    /// The max-rate phase is sent in this many blocks per relay, alternating relays.
    blocks: u64,
    latency_rate: u64,
    latency_secs: u64,
    /// Wall time per batch of lookups in (c); five batches, median kept.
    lookup_batch: Duration,
}

impl Params {
    fn full() -> Params {
        Params {
            runs: 5,
            warmup_msgs: 5_000,
            throughput_msgs: 200_000,
            blocks: 10,
            latency_rate: 5_000,
            latency_secs: 3,
            lookup_batch: Duration::from_millis(100),
        }
    }

    /// A smoke run for CI: same phases, fewer messages, so it proves the benchmark still works.
    fn quick() -> Params {
        Params {
            runs: 3,
            warmup_msgs: 1_000,
            throughput_msgs: 20_000,
            blocks: 2,
            latency_rate: 5_000,
            latency_secs: 1,
            lookup_batch: Duration::from_millis(10),
        }
    }
}

fn main() {
    let mut quick = false;
    let mut write: Option<PathBuf> = None;
    let mut wait_quiet: Option<Duration> = None;
    let mut only: Option<extra::Only> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--write" => write = Some(args.next().expect("--write needs a path").into()),
            "--only" => match args.next().as_deref() {
                Some("targets") => only = Some(extra::Only::Targets),
                Some("rhai") => only = Some(extra::Only::Rhai),
                other => panic!("--only takes `targets` or `rhai`, not {other:?}"),
            },
            "--wait-quiet" => {
                let secs = args.next().and_then(|s| s.parse().ok());
                wait_quiet = Some(Duration::from_secs(
                    secs.expect("--wait-quiet needs seconds"),
                ));
            }
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
    // Before pinning, which would make this thread see one core.
    let machine = Machine::detect();
    // Before any thread is spawned: the sender (this thread) and the sink (spawned from it) inherit it.
    let placement = Placement::detect();
    pin_current_thread(placement.load);
    // The host installs its Prometheus recorder on start; install it first so (c) counts into real
    // counters (as the host does) whatever order the phases run in.
    patchbay::metrics::install().expect("metrics recorder");

    let workdir =
        std::env::temp_dir().join(format!("patchbay-forward-bench-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).expect("temp dir");

    assert!(
        !(only.is_some() && write.is_some()),
        "--only prints its figures; --write needs the full run"
    );
    let mut runs = Vec::new();
    for run in (0..params.runs).filter(|_| only.is_none()) {
        let [raw, patchbay] = measure_run(&params, &workdir, run, placement, wait_quiet);
        for (kind, result) in [(Kind::Raw, raw), (Kind::Patchbay, patchbay)] {
            eprintln!("  run {} {:<8} {}", run + 1, kind.name(), result.one_line());
            runs.push((kind, result));
        }
    }
    let extra_params = if quick {
        extra::ExtraParams::quick()
    } else {
        extra::ExtraParams::full()
    };
    let extras = extra::measure(
        &params,
        &extra_params,
        &workdir,
        placement,
        wait_quiet,
        only,
    );
    if only.is_some() {
        let _ = std::fs::remove_dir_all(&workdir);
        println!("\n{}\n{}", extras.table(), extras.runs_table());
        println!("(took {:.1} s)", started.elapsed().as_secs_f64());
        return;
    }

    eprintln!("  route table and dispatch path (no I/O) ...");
    let lookups = measure_lookups(&params);
    let dispatch = measure_dispatch(&params);
    let _ = std::fs::remove_dir_all(&workdir);

    let report = Report {
        quick,
        wait_quiet,
        params: &params,
        runs: &runs,
        lookups: &lookups,
        dispatch: &dispatch,
        extras: &extras,
        extra_params: &extra_params,
    };
    let text = report.text();
    println!("\n{text}");
    println!("(took {:.1} s)", started.elapsed().as_secs_f64());
    if let Some(path) = write {
        let path = if path.is_relative() {
            workspace_root().join(path)
        } else {
            path
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the results folder");
        }
        // Hand-written notes (profiles, analysis) below the marker survive a rewrite.
        let notes = std::fs::read_to_string(&path)
            .ok()
            .and_then(|old| old.find(NOTES_MARKER).map(|at| old[at..].to_string()))
            .unwrap_or_else(|| format!("{NOTES_MARKER}\n"));
        let text = format!("{}\n{notes}", report.markdown(&machine));
        std::fs::write(&path, text).expect("write the results file");
        println!("wrote {}", path.display());
    }
}

/// Everything from this line on in the results file is kept when the benchmark rewrites the file.
const NOTES_MARKER: &str =
    "<!-- Hand-written notes below this line are kept when the benchmark rewrites this file. -->";

// ---------------------------------------------------------------------------------------------------
// (a) and (b): the relays

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Patchbay,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Patchbay => "patchbay",
        }
    }
}

/// A relay running on its own thread: where to send to it, and how to read its thread's CPU clock.
struct Relay {
    listen: SocketAddr,
    /// Asks the probe task (on the relay's own current-thread runtime, hence on the relay's thread) for
    /// that thread's CPU time. A thread's CPU clock can only be read from that thread (or through
    /// pthread_getcpuclockid, which tokio does not expose), hence the task.
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

async fn probe_task(mut requests: tokio::sync::mpsc::UnboundedReceiver<mpsc::Sender<u64>>) {
    while let Some(reply) = requests.recv().await {
        let _ = reply.send(thread_cpu_ns());
    }
}

/// The raw relay's listening socket, made as patchbay's udp channel makes it (socket2, non-blocking,
/// no SO_REUSEPORT) with the same receive buffer as the patchbay config.
fn bind_relay_input() -> tokio::net::UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .expect("relay socket");
    socket
        .set_recv_buffer_size(RELAY_RECV_BUFFER)
        .expect("recv buffer");
    socket.set_nonblocking(true).expect("non-blocking");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind relay input");
    tokio::net::UdpSocket::from_std(socket.into()).expect("tokio socket")
}

/// (a) The floor: bytes in, bytes out, nothing parsed, no routing, no metrics.
fn start_raw(sink: SocketAddr, cpu: Option<usize>) -> Relay {
    let (probe, requests) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let (addr_tx, addr_rx) = mpsc::channel();
    let stop = cancel.clone();
    let thread = thread::Builder::new()
        .name("raw-relay".into())
        .spawn(move || {
            pin_current_thread(cpu);
            current_thread_runtime().block_on(async move {
                tokio::spawn(probe_task(requests));
                // Like a patchbay channel pair: receive on a listening socket, send from the output
                // channel's own (send-only, ephemeral) socket.
                let input = bind_relay_input();
                let output = tokio::net::UdpSocket::bind("0.0.0.0:0")
                    .await
                    .expect("bind relay output");
                addr_tx
                    .send(input.local_addr().expect("local addr"))
                    .expect("main waits");
                let mut buffer = vec![0u8; RELAY_BUFFER];
                let relay = async {
                    loop {
                        if let Ok((len, _from)) = input.recv_from(&mut buffer).await {
                            // A full send buffer drops, as in patchbay's UdpOutput.
                            let _ = output.try_send_to(&buffer[..len], sink);
                        }
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = relay => {}
                }
            })
        })
        .expect("spawn relay thread");
    let listen = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("raw relay binds");
    Relay {
        listen,
        probe,
        cancel,
        thread,
    }
}

/// The 50-route config of (b): channel `desk` in, channel `lights` out, every route forwarding to it.
fn patchbay_config(routes: usize, sink: SocketAddr) -> String {
    let mut yaml = format!(
        "version: 1\nchannels:\n  desk: {{kind: udp, listen: 127.0.0.1:0, recv_buffer: {RELAY_RECV_BUFFER}}}\n  lights: {{kind: udp, send: {sink}}}\nroutes:\n"
    );
    for (i, address) in route_addresses(routes).iter().enumerate() {
        let _ = writeln!(
            yaml,
            "  - {{name: r{i}, match: {address}, to: [{{forward: lights}}]}}"
        );
    }
    yaml
}

/// (b) patchbay in-process, exactly as `patchbay run --ready-file` would start it, minus the CLI.
fn start_patchbay(sink: SocketAddr, workdir: &Path, run: usize, cpu: Option<usize>) -> Relay {
    let config = workdir.join(format!("run{run}.yaml"));
    start_patchbay_with(&config, &patchbay_config(50, sink), cpu)
}

/// Patchbay in-process from `yaml` written to `config` (the ready file goes beside it), its `desk`
/// channel the relay's input.
fn start_patchbay_with(config: &Path, yaml: &str, cpu: Option<usize>) -> Relay {
    let ready_file = config.with_extension("ready.json");
    let _ = std::fs::remove_file(&ready_file);
    std::fs::write(config, yaml).expect("write the config");
    let config = config.to_path_buf();
    let options = RunOptions {
        config,
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
        .expect("spawn patchbay thread");

    // The ready file is written by rename, so once it exists it is complete.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listen = loop {
        if let Ok(text) = std::fs::read_to_string(&ready_file) {
            let ready: serde_json::Value = serde_json::from_str(&text).expect("ready file is JSON");
            let listen = ready["channels"]["desk"]["listen"]
                .as_str()
                .expect("desk has a listen address");
            break listen.parse().expect("listen is ip:port");
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

/// One run: a fresh raw relay and a fresh patchbay, both up at once (the idle one costs nothing), fed
/// alternately. The max-rate phase is cut into blocks sent through one relay then the other (ABBA),
/// because this machine's speed drifts within seconds (other virtual machines, neighbours' builds):
/// interleaving puts both relays under the same conditions, which back-to-back phases did not.
fn measure_run(
    params: &Params,
    workdir: &Path,
    run: usize,
    placement: Placement,
    wait_quiet: Option<Duration>,
) -> [RelayRun; 2] {
    let sink = Sink::bind();
    let relays = [
        start_raw(sink.addr, placement.relay),
        start_patchbay(sink.addr, workdir, run, placement.relay),
    ];
    let sender = StdUdpSocket::bind("127.0.0.1:0").expect("bind sender");

    // Warm-up: caches, the route's counters, the sockets' buffers, the branch predictors.
    for relay in &relays {
        blast(&sink, &sender, relay.listen, params.warmup_msgs);
    }

    // Max rate, with the CPU time of every thread taking part.
    if let Some(patience) = wait_quiet {
        wait_for_quiet(patience);
    }
    let mut acc = [Accumulated::default(), Accumulated::default()];
    let neighbours = Neighbours::start();
    let block = params.throughput_msgs / params.blocks;
    for b in 0..params.blocks {
        let order = if (b + run as u64).is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        };
        for i in order {
            let relay = &relays[i];
            acc[i].measure_block(
                block,
                || relay.thread_cpu_ns(),
                || blast(&sink, &sender, relay.listen, block),
            );
        }
    }
    let neighbours_tput = neighbours.cores();

    // Latency (and CPU per message) at a fixed rate, one relay after the other.
    let mut paced_results: [Option<(Latency, u64, f64)>; 2] = [None, None];
    let order = if run.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    };
    for i in order {
        let relay = &relays[i];
        // p99 on two cores is mostly a measure of the neighbours: wait for quiet before each phase.
        if let Some(patience) = wait_quiet {
            wait_for_quiet(patience);
        }
        let neighbours = Neighbours::start();
        let relay0 = relay.thread_cpu_ns();
        let latency = paced(
            &sink,
            &sender,
            relay.listen,
            params.latency_rate,
            params.latency_secs,
        );
        let cpu = relay.thread_cpu_ns() - relay0;
        paced_results[i] = Some((latency, cpu, neighbours.cores()));
    }
    for relay in relays {
        relay.stop();
    }

    let [raw, patchbay] = acc;
    let [raw_paced, patchbay_paced] = paced_results.map(|r| r.expect("both relays measured"));
    let result = |acc: Accumulated, (latency, cpu, neighbours_latency)| {
        acc.result(latency, cpu, neighbours_tput, Some(neighbours_latency))
    };
    [result(raw, raw_paced), result(patchbay, patchbay_paced)]
}

fn message(seq: u64) -> [u8; MESSAGE_LEN] {
    message_to(TRAFFIC_ADDRESS, seq)
}

/// The bench message with another address of the same padded length (13 to 15 characters), so every
/// route's traffic is the same size.
fn message_to(address: &str, seq: u64) -> [u8; MESSAGE_LEN] {
    assert!(
        (13..16).contains(&address.len()),
        "{address} pads to 16 bytes"
    );
    let mut m = [0u8; MESSAGE_LEN];
    m[..address.len()].copy_from_slice(address.as_bytes()); // padded to 16
    m[16..20].copy_from_slice(b",ifh"); // padded to 8
    m[24..28].copy_from_slice(&3i32.to_be_bytes());
    m[28..32].copy_from_slice(&0.75f32.to_be_bytes());
    m[SEQ_OFFSET..].copy_from_slice(&seq.to_be_bytes());
    m
}

/// Datagrams per `recvmmsg` call in the sink, and the bytes kept of each (the messages are 40).
const SINK_BATCH: usize = 64;
const SINK_SLOT: usize = 64;

/// The receiving end: records, per sequence number, when it arrived.
struct Sink {
    socket: StdUdpSocket,
    addr: SocketAddr,
}

/// What the sink saw in one phase. Times are ns since the phase's epoch; `u64::MAX` = never arrived.
struct Received {
    arrivals: Vec<u64>,
    count: u64,
    sink_cpu_ns: u64,
}

impl Sink {
    fn bind() -> Sink {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("sink socket");
        // A deep buffer, so the sink (not measured) is never where messages are lost.
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind sink");
        let socket: StdUdpSocket = socket.into();
        socket
            .set_read_timeout(Some(Duration::from_millis(10)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("sink addr");
        Sink { socket, addr }
    }

    /// Receives until `expected` messages arrived, or the sender is done and nothing came for 200 ms.
    /// `count` is published for the sender's flow control.
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
        // recvmmsg: up to SINK_BATCH datagrams per system call, so the sink (which shares a core with
        // the sender) keeps up with the relay. MSG_WAITFORONE returns as soon as one has arrived,
        // so at 5,000 msg/s every call returns one message, stamped when it returns.
        let mut buffers = vec![0u8; SINK_BATCH * SINK_SLOT];
        let mut iovecs: Vec<libc::iovec> = (0..SINK_BATCH)
            .map(|i| libc::iovec {
                // Vec::as_mut_ptr does not create a reference, so reading `buffers` later is sound.
                iov_base: buffers.as_mut_ptr().wrapping_add(i * SINK_SLOT).cast(),
                iov_len: SINK_SLOT,
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_iov = iov;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        let fd = self.socket.as_raw_fd();
        while got < expected {
            // SAFETY: every header points at its own iovec, every iovec at its own SINK_SLOT bytes of
            // `buffers`; all outlive the call. The socket's read timeout bounds the wait.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    headers.as_mut_ptr(),
                    SINK_BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n <= 0 {
                // Read timeout: the stragglers are lost once the sender is done and all is quiet.
                if sender_done.load(Ordering::Acquire)
                    && last_activity.elapsed() > Duration::from_millis(200)
                {
                    break;
                }
                continue;
            }
            let at = epoch.elapsed().as_nanos() as u64;
            last_activity = Instant::now();
            for (i, header) in headers[..n as usize].iter().enumerate() {
                let len = (header.msg_len as usize).min(SINK_SLOT);
                let Some(seq) = sequence_number(&buffers[i * SINK_SLOT..][..len]) else {
                    continue;
                };
                if let Some(arrival) = arrivals.get_mut(seq as usize) {
                    if *arrival == u64::MAX {
                        *arrival = at;
                        got += 1;
                    }
                }
            }
            count.store(got, Ordering::Release);
        }
        Received {
            arrivals,
            count: got,
            sink_cpu_ns: thread_cpu_ns() - cpu0,
        }
    }
}

/// The sequence number of a bench message as it reaches the sink: the int64 of `,ifh` (forwarded, or
/// `,ffh` from the scale plugin), or an int32 when a script re-sent it (a script's `send` infers the
/// narrowest integer, so `,ifh` comes back as `,ifi`, 36 bytes).
fn sequence_number(datagram: &[u8]) -> Option<u64> {
    match (datagram.len(), datagram.get(19)) {
        (MESSAGE_LEN, Some(b'h')) => Some(u64::from_be_bytes(
            datagram[SEQ_OFFSET..MESSAGE_LEN].try_into().ok()?,
        )),
        (36, Some(b'i')) => {
            let seq = i32::from_be_bytes(datagram[SEQ_OFFSET..36].try_into().ok()?);
            u64::try_from(seq).ok()
        }
        _ => None,
    }
}

/// Sends `n` messages as fast as the relay takes them: at most `WINDOW` in flight (sent, not yet at the
/// sink). When the window is full the sender sleeps briefly instead of spinning, so it does not take a
/// core away from the relay on a small machine. If nothing arrives for 100 ms the in-flight messages
/// are written off as lost (they are counted as loss at the end), so one drop cannot stall the run;
/// 100 ms, not less, because on a shared machine the relay thread can be descheduled for several ms,
/// and refilling the window behind its back would overflow its socket and create the loss we count.
fn blast(sink: &Sink, sender: &StdUdpSocket, to: SocketAddr, n: u64) -> Blasted {
    blast_address(sink, sender, to, n, TRAFFIC_ADDRESS)
}

/// `blast` with messages to another address (another route).
fn blast_address(
    sink: &Sink,
    sender: &StdUdpSocket,
    to: SocketAddr,
    n: u64,
    address: &str,
) -> Blasted {
    let count = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let epoch = Instant::now();
    thread::scope(|s| {
        let collector = s.spawn(|| sink.collect(n, epoch, &count, &done));
        let first_send_ns = epoch.elapsed().as_nanos() as u64;
        let mut written_off = 0u64;
        for seq in 0..n {
            let mut stalled_since: Option<(Instant, u64)> = None;
            loop {
                let arrived = count.load(Ordering::Acquire);
                if seq.saturating_sub(arrived + written_off) < WINDOW {
                    break;
                }
                match stalled_since {
                    Some((since, at)) if at == arrived => {
                        if since.elapsed() > Duration::from_millis(100) {
                            written_off = seq - arrived;
                            break;
                        }
                    }
                    _ => stalled_since = Some((Instant::now(), arrived)),
                }
                thread::sleep(Duration::from_micros(20));
            }
            let _ = sender.send_to(&message_to(address, seq), to);
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

/// Sends `rate` messages per second for `secs` seconds on an absolute schedule (a late send does not
/// push the later ones back) and returns the one-way latency sender -> relay -> sink. The sender sleeps
/// between messages, as a real desk's traffic leaves the relay idle between messages.
fn paced(sink: &Sink, sender: &StdUdpSocket, to: SocketAddr, rate: u64, secs: u64) -> Latency {
    let n = rate * secs;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let count = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let epoch = Instant::now();
    let mut sent_at = vec![0u64; n as usize];
    let received = thread::scope(|s| {
        let collector = s.spawn(|| sink.collect(n, epoch, &count, &done));
        let start = Instant::now();
        for seq in 0..n {
            let due = start + period * seq as u32;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            // Stamped just before the send: the time a device would have handed it to its network.
            sent_at[seq as usize] = epoch.elapsed().as_nanos() as u64;
            let _ = sender.send_to(&message(seq), to);
        }
        done.store(true, Ordering::Release);
        collector.join().expect("sink thread")
    });
    Latency::of(&sent_at, &received.arrivals)
}

// ---------------------------------------------------------------------------------------------------
// (c): the route table and the dispatch path without I/O

/// The `match:` addresses of an `n`-route table in file order: of every 25 routes, 16 are literal
/// (`/desk/K/fader`) and 9 have a `*` (64% / 36%). Among the pattern routes, the one in the middle of the
/// file is `/bench/*/level` (the traffic's route); two more share its literal prefix (`/bench/*/mute`,
/// `/bench/*/pan`) so the matcher really runs and rejects them, as on a desk with several per-channel
/// controls; the rest are `/fxJ/*/level`, rejected by the prefix check.
fn route_addresses(n: usize) -> Vec<String> {
    let patterns = (0..n).filter(|i| i % 25 >= 16).count();
    let (mut literal, mut pattern) = (0, 0);
    (0..n)
        .map(|i| {
            if i % 25 < 16 {
                literal += 1;
                format!("/desk/{}/fader", literal - 1)
            } else {
                pattern += 1;
                match pattern - 1 {
                    j if j == patterns / 2 => "/bench/*/level".to_string(),
                    1 => "/bench/*/mute".to_string(),
                    2 => "/bench/*/pan".to_string(),
                    j => format!("/fx{j}/*/level"),
                }
            }
        })
        .collect()
}

/// The plan of an `n`-route table, through the YAML contract (as the host loads it), so the benchmark
/// does not depend on how plans are built internally. The sink address is never used here.
fn bench_plan(n: usize) -> Plan {
    let yaml = patchbay_config(n, "127.0.0.1:9".parse().expect("addr"));
    config::parse(&yaml, Path::new("bench.yaml")).expect("the bench config is valid")
}

/// Channel ids as the host gives them: in file order.
fn channel_id(name: &str) -> ChannelId {
    if name == "desk" {
        ChannelId(0)
    } else {
        ChannelId(1)
    }
}

struct Lookups {
    routes: usize,
    literal_ns: f64,
    pattern_ns: f64,
    miss_ns: f64,
}

const LITERAL_HIT: &str = "/desk/7/fader";
const MISS: &str = "/nothing/3/level";

fn measure_lookups(params: &Params) -> Vec<Lookups> {
    [50, 1_000, 10_000]
        .into_iter()
        .map(|routes| {
            let table = RouteTable::build(&bench_plan(routes).routes, channel_id);
            let mut hits = Hits::default();
            for (address, expected) in [(LITERAL_HIT, 1), (TRAFFIC_ADDRESS, 1), (MISS, 0)] {
                table.find(address, ChannelId(0), &mut hits);
                assert_eq!(hits.routes.len(), expected, "{address} at {routes} routes");
            }
            let mut time = |address: &str| {
                time_per_op(params.lookup_batch, || {
                    table.find(black_box(address), ChannelId(0), &mut hits);
                    black_box(&hits);
                })
            };
            Lookups {
                routes,
                literal_ns: time(LITERAL_HIT),
                pattern_ns: time(TRAFFIC_ADDRESS),
                miss_ns: time(MISS),
            }
        })
        .collect()
}

/// An output that only counts: the dispatch path with the system call taken out.
struct CountingOutput(AtomicU64, &'static str);

impl Output for CountingOutput {
    fn name(&self) -> &str {
        self.1
    }
    fn send(&self, packet: &[u8]) {
        self.0.fetch_add(packet.len() as u64, Ordering::Relaxed);
    }
    fn reply(&self, _origin: &Origin, packet: &[u8]) {
        self.send(packet);
    }
}

struct DispatchCost {
    decode_ns: f64,
    dispatch_ns: f64,
}

/// The host's in-memory work per message at 50 routes, built from the same YAML as (b): decode alone,
/// then `Dispatcher::datagram` (metrics, decode, switchboard load, route lookup, output call).
fn measure_dispatch(params: &Params) -> DispatchCost {
    let plan = bench_plan(50);
    let table = RouteTable::build(&plan.routes, channel_id);
    let output = Arc::new(CountingOutput(AtomicU64::new(0), "lights"));
    let board = Switchboard::new(
        1,
        table,
        vec![(ChannelId(1), output.clone() as Arc<dyn Output>)],
    );
    let board = Arc::new(ArcSwap::from_pointee(board));
    let scheduler = Arc::new(Scheduler::new(plan.bundles.clone()));
    let mut dispatcher = Dispatcher::new(
        ChannelId(0),
        "desk".into(),
        board,
        scheduler,
        ChannelMetrics::new("desk"),
    );
    let origin = Origin {
        channel: ChannelId(0),
        addr: "127.0.0.1:5000".parse().expect("addr"),
    };
    let bytes = message(42);
    let limits = DecodeLimits::default();
    assert!(
        PacketRef::parse(&bytes, &limits).is_ok(),
        "the bench message is valid OSC"
    );

    dispatcher.datagram(&bytes, origin);
    assert_eq!(
        output.0.load(Ordering::Relaxed),
        MESSAGE_LEN as u64,
        "one forward per message"
    );
    DispatchCost {
        decode_ns: time_per_op(params.lookup_batch, || {
            black_box(PacketRef::parse(black_box(&bytes), &limits).is_ok());
        }),
        dispatch_ns: time_per_op(params.lookup_batch, || {
            dispatcher.datagram(black_box(&bytes), origin)
        }),
    }
}

/// ns per call of `op`: five batches of about `batch` wall time each, the median batch kept.
fn time_per_op(batch: Duration, mut op: impl FnMut()) -> f64 {
    // Calibrate the batch size on a short first pass (which also warms up).
    let mut iterations = 1_000u64;
    loop {
        let start = Instant::now();
        for _ in 0..iterations {
            op();
        }
        let elapsed = start.elapsed();
        if elapsed >= batch / 10 {
            iterations =
                (iterations as f64 * batch.as_secs_f64() / elapsed.as_secs_f64()).max(1.0) as u64;
            break;
        }
        iterations *= 10;
    }
    let mut per_op: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                op();
            }
            start.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    per_op[2]
}

// ---------------------------------------------------------------------------------------------------
// The report

struct Report<'a> {
    quick: bool,
    wait_quiet: Option<Duration>,
    params: &'a Params,
    runs: &'a [(Kind, RelayRun)],
    lookups: &'a [Lookups],
    dispatch: &'a DispatchCost,
    extras: &'a extra::Extras,
    extra_params: &'a extra::ExtraParams,
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

    /// The target's measure: median patchbay CPU/msg over median raw CPU/msg.
    fn ratio(&self) -> f64 {
        self.summary(Kind::Patchbay).cpu_ns / self.summary(Kind::Raw).cpu_ns
    }

    /// The median of each run's own patchbay/raw ratio: the two relays of a run ran interleaved, so
    /// this cancels the drift between runs; it should agree with `ratio`.
    fn paired_ratio(&self) -> f64 {
        let raw = self.of(Kind::Raw);
        let patchbay = self.of(Kind::Patchbay);
        median(
            raw.zip(patchbay)
                .map(|(r, p)| p.cpu_ns_per_msg / r.cpu_ns_per_msg)
                .collect(),
        )
    }

    /// The summary table, as Markdown (also readable as plain text).
    fn table(&self) -> String {
        let (raw, pb) = (self.summary(Kind::Raw), self.summary(Kind::Patchbay));
        let ratio = self.ratio();
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let mut t = String::new();
        let p = self.params;
        let _ = writeln!(
            t,
            "| forwarding, median of {} runs | raw relay (a) | patchbay (b) | patchbay / raw |",
            p.runs
        );
        let _ = writeln!(t, "|---|---:|---:|---:|");
        let _ = writeln!(
            t,
            "| CPU per message at max rate (relay thread) | {:.2} µs | {:.2} µs | **{ratio:.2}x** (target ≤ 1.25x: {}; per-run ratios' median {:.2}x) |",
            raw.cpu_ns / 1e3,
            pb.cpu_ns / 1e3,
            verdict(ratio <= 1.25),
            self.paired_ratio()
        );
        let _ = writeln!(
            t,
            "| CPU per message at {} msg/s (wake-up included) | {:.2} µs | {:.2} µs | {:.2}x |",
            p.latency_rate,
            raw.paced_cpu_ns / 1e3,
            pb.paced_cpu_ns / 1e3,
            pb.paced_cpu_ns / raw.paced_cpu_ns
        );
        let _ = writeln!(
            t,
            "| throughput at max rate ({} msgs/run) | {:.0} msg/s | {:.0} msg/s | {:.2}x |",
            p.throughput_msgs,
            raw.msgs_per_sec,
            pb.msgs_per_sec,
            pb.msgs_per_sec / raw.msgs_per_sec
        );
        let _ = writeln!(
            t,
            "| loss at max rate (all runs) | {} of {} | {} of {} | |",
            raw.loss, raw.sent, pb.loss, pb.sent
        );
        let _ = writeln!(
            t,
            "| latency p50 at {} msg/s | {:.1} µs | {:.1} µs | +{:.1} µs |",
            p.latency_rate,
            raw.p50_us,
            pb.p50_us,
            pb.p50_us - raw.p50_us
        );
        let _ = writeln!(
            t,
            "| latency p99 | {:.1} µs | {:.1} µs | target < 1000 µs: {} |",
            raw.p99_us,
            pb.p99_us,
            verdict(pb.p99_us < 1000.0)
        );
        let _ = writeln!(
            t,
            "| latency max (worst run) | {:.1} µs | {:.1} µs | |",
            raw.max_us, pb.max_us
        );
        let _ = writeln!(
            t,
            "| loss at {} msg/s (all runs) | {} | {} | |",
            p.latency_rate, raw.latency_lost, pb.latency_lost
        );
        t.push('\n');
        let _ = writeln!(
            t,
            "| `RouteTable::find` (no I/O) | literal hit | pattern hit | miss |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|");
        for l in self.lookups {
            let _ = writeln!(
                t,
                "| {} routes | {:.0} ns | {:.0} ns | {:.0} ns |",
                l.routes, l.literal_ns, l.pattern_ns, l.miss_ns
            );
        }
        t.push('\n');
        let d = self.dispatch;
        let _ = writeln!(t, "| host path without I/O, 50 routes | per message |");
        let _ = writeln!(t, "|---|---:|");
        let _ = writeln!(
            t,
            "| decode only (`PacketRef::parse`) | {:.0} ns |",
            d.decode_ns
        );
        let _ = writeln!(
            t,
            "| `Dispatcher::datagram` (metrics, decode, route, output call) | {:.0} ns |",
            d.dispatch_ns
        );
        let _ = writeln!(
            t,
            "| (b) − (a) CPU per message, for comparison | {:.0} ns |",
            pb.cpu_ns - raw.cpu_ns
        );
        t
    }

    fn runs_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| run | relay | msg/s | loss | CPU/msg | relay busy | other CPU/msg | CPU/msg at {} msg/s | p50 | p99 | max | latency loss | neighbours (cores) |",
            self.params.latency_rate
        );
        let _ = writeln!(
            t,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let per_kind = self.params.runs;
        for (i, (kind, r)) in self.runs.iter().enumerate() {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {:.2} / {:.2} |",
                i / 2 + 1,
                kind.name(),
                r.table_cells(),
                r.latency.lost,
                r.neighbours_tput,
                r.neighbours_latency.unwrap_or_default(),
            );
        }
        debug_assert_eq!(self.runs.len(), 2 * per_kind);
        t
    }

    fn text(&self) -> String {
        let mut t = String::from("patchbay forward benchmark");
        if self.quick {
            t.push_str(" (--quick: fewer messages and runs; not for the record)");
        }
        t.push_str("\n\n");
        t.push_str(&self.table());
        t.push('\n');
        t.push_str(&self.extras.table());
        t.push('\n');
        t.push_str(&self.runs_table());
        t.push('\n');
        t.push_str(&self.extras.runs_table());
        t
    }

    fn markdown(&self, machine: &Machine) -> String {
        let p = self.params;
        let mut md = String::new();
        md.push_str("# Forward benchmark\n\n");
        md.push_str(
            "Generated by `cargo bench -p patchbay --bench forward -- --wait-quiet 300 --write \
             docs/benchmarks.md`: run it again rather than edit the figures; notes go at the end, below \
             the marker, and are kept. `-- --quick` is the short smoke run CI uses; its figures are not \
             for the record.\n\n",
        );
        if self.quick {
            md.push_str("**This file was written by a `--quick` run: fewer messages and runs than the real benchmark.**\n\n");
        }
        md.push_str("## Machine\n\n");
        let _ = writeln!(
            md,
            "- CPU: {} ({} cores available)",
            machine.cpu, machine.cores
        );
        let _ = writeln!(md, "- kernel: {}", machine.kernel);
        let _ = writeln!(md, "- {}", machine.rustc);
        let _ = writeln!(md, "- commit: {}", machine.commit);
        md.push_str("- all traffic on 127.0.0.1; release profile\n\n");
        md.push_str("## Results\n\n");
        md.push_str(&self.table());
        md.push_str("\n### Live reload, script and plugin targets (issues 4, 5, 6)\n\n");
        md.push_str(&self.extras.table());
        md.push_str("\n### Every run\n\n");
        md.push_str(&self.runs_table());
        md.push('\n');
        md.push_str(&self.extras.runs_table());
        md.push_str("\n## Method\n\n");
        let _ = writeln!(
            md,
            "- **(a) raw relay, the floor**: a tokio current-thread runtime on its own OS thread: \
             `recv_from` into a {RELAY_BUFFER}-byte buffer, `try_send_to` the sink from a second, \
             send-only socket. No parsing, no routing, no metrics. The same socket API and socket layout \
             as a patchbay udp channel pair, and the same receive buffer ({RELAY_RECV_BUFFER} bytes)."
        );
        let _ = writeln!(
            md,
            "- **(b) patchbay**: `patchbay::run` in-process on a tokio current-thread runtime on its own \
             OS thread (so all of the host's work is on that thread); config in a temp file, `desk` \
             listening on `127.0.0.1:0` with `recv_buffer: {RELAY_RECV_BUFFER}`, its port read from the \
             ready file; no metrics endpoint (the Prometheus recorder is installed, as always). 50 routes: \
             32 literal (`/desk/K/fader`), 18 with `*`; the traffic (`{TRAFFIC_ADDRESS}`, a \
             {MESSAGE_LEN}-byte message `,ifh` whose int64 is a sequence number) matches \
             `/bench/*/level` only; `/bench/*/mute` and `/bench/*/pan` share its prefix so the matcher \
             runs and rejects them."
        );
        md.push_str(
            "- **Threads**: the relay thread is pinned to one core, the sender and the sink to the other \
             (unpinned, the scheduler's placement changed the relays' CPU per message by up to 2x from run \
             to run). The sink receives with `recvmmsg` (up to 64 per call, returning as soon as one \
             arrived), so it keeps up on the core it shares with the sender.\n",
        );
        let _ = writeln!(
            md,
            "- **Throughput at max rate**: {} messages per relay per run (after {} warm-up messages), sent \
             in {} blocks per relay, the relays taking turns (ABBA): both relays are up at once and the \
             idle one costs nothing; interleaving puts both under the same conditions, as this \
             machine's speed drifts within seconds. The sender keeps at most {WINDOW} messages in flight \
             (sent, not yet at the sink) so the relay's queue never runs dry and never overflows, and \
             sleeps 20 µs when the window is full rather than spin. msg/s = received / (last receive − \
             first send), summed over blocks. Loss = sent − received.",
            p.throughput_msgs, p.warmup_msgs, p.blocks
        );
        md.push_str(
            "- **CPU per message**: the relay thread's `CLOCK_THREAD_CPUTIME_ID` (user + system: the \
             socket system calls and the loopback delivery they do count), read before and after each \
             block by a probe task spawned on the relay's own current-thread runtime (so it runs on that \
             thread), divided by the messages the sink received. \"relay busy\" (relay CPU / wall \
             time) near 1.0 says the relay never waited for input, so wake-ups are not in the figure; \
             \"other\" (process CPU minus the sender, sink and relay threads) near zero says no work hid \
             on another thread. The same probe gives the CPU per message during the latency phase, where \
             every message pays the relay's wake-up (epoll, scheduler) as at a show's real rates.\n",
        );
        let _ = writeln!(
            md,
            "- **Latency**: {} msg/s for {} s per relay on an absolute schedule (the sender sleeps between \
             messages); each message's send time is stamped just before `send_to`, its arrival when the \
             sink's `recvmmsg` returns; one-way sender → relay → sink, nearest-rank percentiles over a \
             sorted list. The table gives the median over runs of p50 and p99 and the worst run's max.",
            p.latency_rate, p.latency_secs
        );
        let _ = writeln!(
            md,
            "- **Runs**: {} runs, each with a fresh sink and fresh relays; the summary takes medians over \
             runs (loss summed). The target's ratio is median patchbay CPU / median raw CPU; the median of \
             each run's own ratio is shown beside it.",
            p.runs
        );
        md.push_str(
            "- **Neighbours**: the CPU other processes used during the max-rate / latency phases \
             (`/proc/stat` busy time minus this process's), in cores. On a shared 2-core machine a \
             neighbour's build inflates every figure, the latency tail most. ",
        );
        match self.wait_quiet {
            Some(patience) => {
                let _ = writeln!(
                    md,
                    "This run waited (up to {} s) before each phase for other processes to use under \
                     0.2 cores (`--wait-quiet`).",
                    patience.as_secs()
                );
            }
            None => md.push_str("This run did not wait for a quiet machine (`--wait-quiet`).\n"),
        }
        md.push_str(
            "- **Route table**: `RouteTable::find` alone, on tables of 50, 1,000 and 10,000 routes with \
             the same 64% literal / 36% `*` mix (the extra pattern routes are `/fxJ/*/level`), built \
             from the same YAML through `config::parse`; a literal hit (`/desk/7/fader`), a pattern hit \
             (`/bench/3/level`) and a miss (`/nothing/3/level`); five timed batches, the median batch. \
             `Dispatcher::datagram` is the whole host path for one message with an output that only \
             counts bytes: what patchbay adds on top of the two system calls.\n",
        );
        md.push_str(&self.extras.method(p, self.extra_params));
        md
    }
}
