//! Parts 2 to 4 of the forward benchmark: live reloads (issue 4), a script target (issue 5) and the
//! `scale` plugin (issue 6), each compared with the plain forward route in the same run.
//!
//! - Save to applied: patchbay in-process from a config file; a probe message every
//!   `PROBE_PERIOD` goes through the route `probe`, and each save retargets that route from one sink
//!   to the other. The time is from just before the file is written to the first probe that arrives
//!   at the new sink: the change seen on the wire, debounce, settle reads, parse and swap included.
//! - Forwarding under reloads: the part 1 config, max-rate blocks alternating "no reloads" and "a
//!   background thread rewrites the config every 100 ms" (two versions that differ in an unrelated
//!   route), in ABBA order.
//! - Script and plugin targets: one patchbay with the part 1 routes plus a route to a script that
//!   re-sends each message and a route through `scale`; max-rate blocks rotate between the three
//!   routes. CPU is counted per thread (relay, script worker or plugin instance) and for the whole
//!   host (process CPU minus the sender and the sink).
//! - The Rhai call on its own, with the host's engine (`patchbay::script::engine::build`) and the
//!   worker's call options.

use super::*;

use std::sync::atomic::AtomicI32;

use patchbay::script::engine::{self, MessageBuilder, Peer, ScriptContext, State};
use patchbay::script::hostname::Hostnames;
use patchbay::script::usage;
use patchbay::script::{Limits, ScriptMessage};
use rhai::{CallFnOptions, Dynamic, Scope};

/// How often the save-to-applied probe is sent: the resolution of that measurement.
const PROBE_PERIOD: Duration = Duration::from_millis(2);
/// How often the reloader rewrites the config during "reload" blocks (issue 4).
const RELOAD_EVERY: Duration = Duration::from_millis(100);
/// The script of issue 5: re-sends every message unchanged (as Rhai sees it).
const RESEND_SCRIPT: &str = "fn on_message(msg) { send(\"out\", msg.address, msg.args); }\n";
/// For the Rhai call cost: the same call with nothing in the function.
const EMPTY_SCRIPT: &str = "fn on_message(msg) { }\n";
/// The scale plugin's config (issue 6): MIDI range to 0..1, result to `out`.
const SCALE_CONFIG: &str = "{in_min: 0, in_max: 127, out_min: 0.0, out_max: 1.0, to: out}";

/// The traffic of each target route: same length as `TRAFFIC_ADDRESS`, one route each.
const SCRIPT_ADDRESS: &str = "/scrpt/3/level";
const PLUGIN_ADDRESS: &str = "/plugn/3/level";

pub(super) struct ExtraParams {
    pub(super) reload_runs: usize,
    pub(super) reload_blocks: u64,
    pub(super) reload_block_msgs: u64,
    pub(super) saves: usize,
    pub(super) target_runs: usize,
    pub(super) target_blocks: u64,
    pub(super) target_block_msgs: u64,
}

impl ExtraParams {
    pub(super) fn full() -> ExtraParams {
        ExtraParams {
            reload_runs: 5,
            reload_blocks: 4,
            reload_block_msgs: 100_000,
            saves: 20,
            target_runs: 5,
            target_blocks: 6,
            target_block_msgs: 20_000,
        }
    }

    pub(super) fn quick() -> ExtraParams {
        ExtraParams {
            reload_runs: 1,
            reload_blocks: 2,
            reload_block_msgs: 20_000,
            saves: 5,
            target_runs: 1,
            target_blocks: 3,
            target_block_msgs: 5_000,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// CPU time of other threads of this process

/// CPU time of thread `tid` of this process: the kernel's per-thread CPU clock, addressed by id
/// (`MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`, what glibc's `pthread_getcpuclockid` returns), so
/// threads the host spawned (script workers, plugin instances) can be read from here, in ns.
fn tid_cpu_ns(tid: i32) -> Option<u64> {
    let clock: libc::clockid_t = ((!tid) << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; an invalid clock id only makes the call fail.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Ids of this process's threads whose name (`/proc/self/task/*/comm`, 15 bytes) starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let tid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            comm.starts_with(prefix).then_some(tid)
        })
        .collect()
}

/// Summed voluntary context switches of a set of threads (`/proc/self/task/TID/status`): how often
/// they blocked, i.e. parked and needed a wake-up.
fn threads_waits(tids: &[i32]) -> u64 {
    tids.iter()
        .filter_map(|tid| {
            let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Ids of this process's threads named exactly `name`.
fn threads_named_exactly(name: &str) -> Vec<i32> {
    threads_named(name)
        .into_iter()
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// Summed CPU time of a set of threads (threads that ended count as 0).
fn threads_cpu_ns(tids: &[i32]) -> u64 {
    tids.iter().filter_map(|&tid| tid_cpu_ns(tid)).sum()
}

/// Counter or summary fields of the process's Prometheus registry, by exact series name (the text up
/// to the value), summed if it appears more than once.
fn metric(name: &str) -> f64 {
    let Ok(handle) = patchbay::metrics::install() else {
        return 0.0;
    };
    handle
        .render()
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------------
// Issue 4: save to applied

pub(super) struct SaveToApplied {
    /// ms from the write to the first probe at the new destination, one per save.
    pub(super) ms: Vec<f64>,
    /// Saves whose change never showed on the wire within 3 s.
    pub(super) missed: usize,
    /// The host's own `patchbay_reload_save_to_applied_seconds` over the same saves (mean, ms): it
    /// starts at the debounced notice minus the debounce.
    pub(super) host_mean_ms: f64,
    pub(super) applied: f64,
}

/// The reload config: the part 1 routes (so parsing and building cost what a real file does) and the
/// route `probe` forwarding to channel `a` or `b`, whose send destinations are two sinks.
fn probe_config(sink_a: SocketAddr, sink_b: SocketAddr, to: &str) -> String {
    let mut yaml = patchbay_config(50, sink_a);
    yaml = yaml.replace(
        "\nroutes:\n",
        &format!(
            "\n  a: {{kind: udp, send: {sink_a}}}\n  b: {{kind: udp, send: {sink_b}}}\nroutes:\n"
        ),
    );
    let _ = writeln!(
        yaml,
        "  - {{name: probe, match: /probe, to: [{{forward: {to}}}]}}"
    );
    yaml
}

fn probe_message(seq: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..6].copy_from_slice(b"/probe");
    m[8..10].copy_from_slice(b",i");
    m[12..].copy_from_slice(&seq.to_be_bytes());
    m
}

/// `saves` edits of the probe route's target, alternating in-place writes and write-and-rename saves,
/// 250 to 350 ms apart (so saves do not fall at one phase of the watcher's timers).
pub(super) fn measure_save_to_applied(
    extra: &ExtraParams,
    workdir: &Path,
    placement: Placement,
) -> SaveToApplied {
    let sinks = [Sink::bind(), Sink::bind()];
    for sink in &sinks {
        sink.socket
            .set_nonblocking(true)
            .expect("non-blocking sink");
    }
    let (sink_a, sink_b) = (sinks[0].addr, sinks[1].addr);
    let config = workdir.join("reload.yaml");
    let relay = start_patchbay_with(&config, &probe_config(sink_a, sink_b, "a"), placement.relay);

    let stop = AtomicBool::new(false);
    let (arrivals_tx, arrivals) = mpsc::channel::<(usize, Instant)>();
    let result = thread::scope(|s| {
        // The receiver: both sinks, stamped when poll returns.
        s.spawn(|| {
            let mut fds = sinks.each_ref().map(|sink| libc::pollfd {
                fd: sink.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            let mut buffer = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 10) };
                if n <= 0 {
                    continue;
                }
                let at = Instant::now();
                for (i, sink) in sinks.iter().enumerate() {
                    while sink.socket.recv(&mut buffer).is_ok() {
                        let _ = arrivals_tx.send((i, at));
                    }
                }
                for fd in &mut fds {
                    fd.revents = 0;
                }
            }
        });
        // The probe: one message every PROBE_PERIOD on an absolute schedule.
        s.spawn(|| {
            let sender = StdUdpSocket::bind("127.0.0.1:0").expect("bind probe sender");
            let start = Instant::now();
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let due = start + PROBE_PERIOD * seq;
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
                let _ = sender.send_to(&probe_message(seq), relay.listen);
                seq += 1;
            }
        });

        // The probe reaches sink a before the first save.
        let ready = Instant::now() + Duration::from_secs(5);
        while !matches!(
            arrivals.recv_timeout(Duration::from_millis(100)),
            Ok((0, _))
        ) {
            assert!(Instant::now() < ready, "the probe does not reach sink a");
        }
        let host_sum = metric("patchbay_reload_save_to_applied_seconds_sum");
        let host_count = metric("patchbay_reload_save_to_applied_seconds_count");
        let applied0 = metric("patchbay_reloads_total{result=\"applied\"}");
        let mut ms = Vec::new();
        let mut missed = 0;
        for save in 0..extra.saves {
            thread::sleep(Duration::from_millis(250 + (save as u64 * 37) % 100));
            let target = if save % 2 == 0 { 1 } else { 0 };
            let yaml = probe_config(sink_a, sink_b, ["a", "b"][target]);
            while arrivals.try_recv().is_ok() {}
            let written = Instant::now();
            if save % 2 == 0 {
                std::fs::write(&config, &yaml).expect("save in place");
            } else {
                let tmp = config.with_extension("yaml.swp");
                std::fs::write(&tmp, &yaml).expect("write the new version");
                std::fs::rename(&tmp, &config).expect("save by rename");
            }
            let deadline = written + Duration::from_secs(3);
            loop {
                match arrivals.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok((sink, at)) if sink == target && at > written => {
                        ms.push((at - written).as_secs_f64() * 1e3);
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        missed += 1;
                        break;
                    }
                }
            }
        }
        let count = metric("patchbay_reload_save_to_applied_seconds_count") - host_count;
        let sum = metric("patchbay_reload_save_to_applied_seconds_sum") - host_sum;
        stop.store(true, Ordering::Relaxed);
        SaveToApplied {
            ms,
            missed,
            host_mean_ms: if count > 0.0 { sum / count * 1e3 } else { 0.0 },
            applied: metric("patchbay_reloads_total{result=\"applied\"}") - applied0,
        }
    });
    relay.stop();
    result
}

// ---------------------------------------------------------------------------------------------------
// Issue 4: forwarding while the config reloads every 100 ms

/// Sums over the blocks of one kind in one run.
#[derive(Default, Clone, Copy)]
pub(super) struct Sums {
    pub(super) sent: u64,
    pub(super) received: u64,
    /// The relay thread (patchbay's current-thread runtime).
    pub(super) relay_cpu_ns: u64,
    /// The target's own thread: script worker or plugin instance (0 for a forward).
    pub(super) worker_cpu_ns: u64,
    /// Process CPU minus the sender, the sink and the benchmark's own helper threads.
    pub(super) host_cpu_ns: u64,
    pub(super) wall_ns: u64,
    /// Times the target's thread blocked (voluntary context switches): each needed a wake-up.
    pub(super) worker_waits: u64,
    /// Times the relay thread blocked (it ran out of input): each needed a wake-up, and on the
    /// core it shares with the target's thread, a switch away from that thread and back.
    pub(super) relay_waits: u64,
}

impl Sums {
    pub(super) fn waits_per_msg(&self) -> f64 {
        self.worker_waits as f64 / self.received.max(1) as f64
    }
    pub(super) fn relay_waits_per_msg(&self) -> f64 {
        self.relay_waits as f64 / self.received.max(1) as f64
    }
    pub(super) fn relay_per_msg(&self) -> f64 {
        self.relay_cpu_ns as f64 / self.received.max(1) as f64
    }
    pub(super) fn threads_per_msg(&self) -> f64 {
        (self.relay_cpu_ns + self.worker_cpu_ns) as f64 / self.received.max(1) as f64
    }
    pub(super) fn worker_per_msg(&self) -> f64 {
        self.worker_cpu_ns as f64 / self.received.max(1) as f64
    }
    pub(super) fn host_per_msg(&self) -> f64 {
        self.host_cpu_ns as f64 / self.received.max(1) as f64
    }
    pub(super) fn msgs_per_sec(&self) -> f64 {
        self.received as f64 * 1e9 / self.wall_ns.max(1) as f64
    }
    pub(super) fn loss(&self) -> u64 {
        self.sent - self.received
    }
}

/// One max-rate block through `relay` to `address`, CPU counted per thread and for the host.
/// `worker` are the target's thread ids; `helpers` are bench threads other than the sender and the
/// sink that run meanwhile (the reloader), taken out of the host's figure.
#[allow(clippy::too_many_arguments)]
fn measure_block(
    sink: &Sink,
    sender: &StdUdpSocket,
    relay: &Relay,
    address: &str,
    n: u64,
    worker: &[i32],
    helpers: &[i32],
    sums: &mut Sums,
) {
    // Read outside the CPU window (/proc reads are this thread's work, not the host's).
    let relay_tids = threads_named_exactly("patchbay");
    let waits0 = threads_waits(worker);
    let relay_waits0 = threads_waits(&relay_tids);
    let process0 = process_cpu_ns();
    let helpers0 = threads_cpu_ns(helpers);
    let relay0 = relay.thread_cpu_ns();
    let worker0 = threads_cpu_ns(worker);
    let sender0 = thread_cpu_ns();
    let blasted = blast_address(sink, sender, relay.listen, n, address);
    let sender_cpu = thread_cpu_ns() - sender0;
    let worker_cpu = threads_cpu_ns(worker) - worker0;
    let relay_cpu = relay.thread_cpu_ns() - relay0;
    let helpers_cpu = threads_cpu_ns(helpers).saturating_sub(helpers0);
    let process_cpu = process_cpu_ns() - process0;
    let waits = threads_waits(worker).saturating_sub(waits0);
    let relay_waits = threads_waits(&relay_tids).saturating_sub(relay_waits0);
    sums.sent += n;
    sums.received += blasted.received;
    sums.relay_cpu_ns += relay_cpu;
    sums.worker_cpu_ns += worker_cpu;
    sums.worker_waits += waits;
    sums.relay_waits += relay_waits;
    sums.host_cpu_ns += process_cpu.saturating_sub(sender_cpu + blasted.sink_cpu_ns + helpers_cpu);
    sums.wall_ns += blasted
        .last_receive_ns
        .saturating_sub(blasted.first_send_ns);
}

pub(super) struct ReloadRun {
    pub(super) quiet: Sums,
    pub(super) reloading: Sums,
    /// Saves written, and reloads the host applied, during the reload blocks.
    pub(super) writes: u64,
    pub(super) applied: f64,
    /// CPU of the reloader thread (a bench thread, taken out of the host's figure), per save.
    pub(super) reloader_cpu_ns: u64,
    pub(super) neighbours: f64,
}

/// Rewrites `config` every `RELOAD_EVERY` (in place, as an editor that saves in place does),
/// alternating two versions, until `stop`; returns the saves written and its own CPU time.
fn reloader(
    config: &Path,
    versions: &[String; 2],
    next: &mut usize,
    stop: &AtomicBool,
    tid: &AtomicI32,
) -> (u64, u64) {
    // SAFETY: gettid has no preconditions.
    tid.store(unsafe { libc::gettid() }, Ordering::Release);
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let mut writes = 0u64;
    while !stop.load(Ordering::Relaxed) {
        std::fs::write(config, &versions[*next % 2]).expect("rewrite the config");
        *next += 1;
        writes += 1;
        let due = start + RELOAD_EVERY * writes as u32;
        while !stop.load(Ordering::Relaxed) && Instant::now() < due {
            thread::sleep(
                Duration::from_millis(2).min(due.saturating_duration_since(Instant::now())),
            );
        }
    }
    (writes, thread_cpu_ns() - cpu0)
}

/// Runs of max-rate blocks through the part 1 config, ABBA: quiet, reloading, reloading, quiet. A
/// reload block starts the reloader 300 ms before it (reloads in their steady state) and waits 300 ms
/// after it, so a reload still under way never spills into a quiet block.
pub(super) fn measure_reload_cpu(
    params: &Params,
    extra: &ExtraParams,
    workdir: &Path,
    placement: Placement,
    wait_quiet: Option<Duration>,
) -> Vec<ReloadRun> {
    (0..extra.reload_runs)
        .map(|run| {
            let sink = Sink::bind();
            let config = workdir.join(format!("reloading{run}.yaml"));
            let base = patchbay_config(50, sink.addr);
            // The unrelated route: r0 (`/desk/0/fader`, never sent to) changes its address.
            let other = base.replacen("match: /desk/0/fader,", "match: /desk/0/fader2,", 1);
            assert_ne!(base, other, "the two versions differ");
            let versions = [other, base.clone()];
            let relay = start_patchbay_with(&config, &base, placement.relay);
            let sender = StdUdpSocket::bind("127.0.0.1:0").expect("bind sender");
            blast(&sink, &sender, relay.listen, params.warmup_msgs);
            if let Some(patience) = wait_quiet {
                wait_for_quiet(patience);
            }
            let neighbours = Neighbours::start();
            let mut result = ReloadRun {
                quiet: Sums::default(),
                reloading: Sums::default(),
                writes: 0,
                applied: 0.0,
                reloader_cpu_ns: 0,
                neighbours: 0.0,
            };
            let mut next = 0usize;
            let applied0 = metric("patchbay_reloads_total{result=\"applied\"}");
            for b in 0..extra.reload_blocks {
                let reloading = matches!((b + run as u64) % 4, 1 | 2);
                if !reloading {
                    let mut sums = result.quiet;
                    let n = extra.reload_block_msgs;
                    measure_block(
                        &sink,
                        &sender,
                        &relay,
                        TRAFFIC_ADDRESS,
                        n,
                        &[],
                        &[],
                        &mut sums,
                    );
                    result.quiet = sums;
                    continue;
                }
                let stop = AtomicBool::new(false);
                let tid = AtomicI32::new(0);
                let mut sums = result.reloading;
                let (writes, cpu) = thread::scope(|s| {
                    let writer = s.spawn(|| reloader(&config, &versions, &mut next, &stop, &tid));
                    thread::sleep(Duration::from_millis(300));
                    let helpers = [tid.load(Ordering::Acquire)];
                    let n = extra.reload_block_msgs;
                    measure_block(
                        &sink,
                        &sender,
                        &relay,
                        TRAFFIC_ADDRESS,
                        n,
                        &[],
                        &helpers,
                        &mut sums,
                    );
                    stop.store(true, Ordering::Relaxed);
                    writer.join().expect("reloader")
                });
                result.reloading = sums;
                result.writes += writes;
                result.reloader_cpu_ns += cpu;
                thread::sleep(Duration::from_millis(300));
            }
            result.applied = metric("patchbay_reloads_total{result=\"applied\"}") - applied0;
            result.neighbours = neighbours.cores();
            relay.stop();
            result
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Issues 5 and 6: a script target and the scale plugin beside the plain forward

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Forward,
    Script,
    Plugin,
}

impl Target {
    pub(super) const ALL: [Target; 3] = [Target::Forward, Target::Script, Target::Plugin];

    pub(super) fn name(self) -> &'static str {
        match self {
            Target::Forward => "forward",
            Target::Script => "script",
            Target::Plugin => "plugin scale",
        }
    }

    fn address(self) -> &'static str {
        match self {
            Target::Forward => TRAFFIC_ADDRESS,
            Target::Script => SCRIPT_ADDRESS,
            Target::Plugin => PLUGIN_ADDRESS,
        }
    }
}

pub(super) struct TargetRun {
    /// Indexed like `Target::ALL`.
    pub(super) sums: [Sums; 3],
    pub(super) neighbours: f64,
}

/// The scale plugin, built by cargo (release); `install_plugin` copies it into a plugins folder.
fn scale_plugin() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "patchbay-plugin-scale",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace_root())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p patchbay-plugin-scale failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let library = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .flat_map(|v| {
            v["filenames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .find(|f| {
            f.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.contains("patchbay_plugin_scale") && n.ends_with(std::env::consts::DLL_SUFFIX)
            })
        })
        .ok_or("cargo did not name the scale library")?;
    Ok(library)
}

/// A plugins folder (mode 0755; patchbay refuses a folder other users can write to) holding the
/// library.
fn install_plugin(library: &Path, workdir: &Path) -> Result<PathBuf, String> {
    let dir = workdir.join("plugins");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let copy = dir.join(library.file_name().ok_or("the library has a file name")?);
    std::fs::copy(library, &copy).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    Ok(dir)
}

/// The part 1 routes, plus `scripted` (`/scrpt/*/level` to the re-send script) and `scaled`
/// (`/plugn/*/level` through `scale`), all to channel `out`. Queues of 4096 (default 1024, the same
/// as the sender's window) so a burst never drops at the queue.
fn targets_config(sink: SocketAddr, script: &Path, plugins: &Path) -> String {
    let base = patchbay_config(50, sink).replace("lights", "out");
    let (head, routes) = base.split_once("routes:\n").expect("routes");
    format!(
        "{head}scripts: {{limits: {{queue: 4096}}}}\nplugins: {{dir: {}, queue: 4096}}\nroutes:\n{routes}  \
         - {{name: scripted, match: /scrpt/*/level, to: [{{script: {}}}]}}\n  \
         - {{name: scaled, match: /plugn/*/level, to: [{{plugin: scale, config: {SCALE_CONFIG}}}]}}\n",
        plugins.display(),
        script.display()
    )
}

pub(super) fn measure_targets(
    params: &Params,
    extra: &ExtraParams,
    workdir: &Path,
    placement: Placement,
    wait_quiet: Option<Duration>,
) -> Result<Vec<TargetRun>, String> {
    let library = scale_plugin()?;
    let scripts = workdir.join("scripts");
    std::fs::create_dir_all(&scripts).map_err(|e| e.to_string())?;
    let script = scripts.join("resend.rhai");
    std::fs::write(&script, RESEND_SCRIPT).map_err(|e| e.to_string())?;
    // Orders of the three routes block by block: each route first, middle and last equally often.
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [2, 1, 0],
        [1, 2, 0],
        [0, 2, 1],
        [2, 0, 1],
        [1, 0, 2],
    ];
    // One host for all runs: a host that stops removes the process-wide folder of private plugin
    // copies (`PluginHost::shutdown`), so a second host in this process could not load the plugin.
    let sink = Sink::bind();
    let config = workdir.join("targets.yaml");
    let plugins = install_plugin(&library, workdir)?;
    let relay = start_patchbay_with(
        &config,
        &targets_config(sink.addr, &script, &plugins),
        placement.relay,
    );
    let sender = StdUdpSocket::bind("127.0.0.1:0").expect("bind sender");
    for target in Target::ALL {
        let n = params.warmup_msgs;
        let warm = blast_address(&sink, &sender, relay.listen, n, target.address());
        if warm.received < n {
            relay.stop();
            let (name, got) = (target.name(), warm.received);
            return Err(format!(
                "the {name} route delivered {got} of {n} warm-up messages"
            ));
        }
    }
    // Spawned by the host when it built the routes; the relay thread's name is `patchbay`.
    let workers = [
        Vec::new(),
        threads_named("script "),
        threads_named("plugin scale"),
    ];
    if workers[1].is_empty() || workers[2].is_empty() {
        relay.stop();
        return Err("no script or plugin thread found in /proc/self/task".into());
    }
    let mut runs = Vec::new();
    for run in 0..extra.target_runs {
        if let Some(patience) = wait_quiet {
            wait_for_quiet(patience);
        }
        let neighbours = Neighbours::start();
        let mut sums = [Sums::default(); 3];
        for b in 0..extra.target_blocks {
            for i in ORDERS[(b as usize + run) % ORDERS.len()] {
                let target = Target::ALL[i];
                measure_block(
                    &sink,
                    &sender,
                    &relay,
                    target.address(),
                    extra.target_block_msgs,
                    &workers[i],
                    &[],
                    &mut sums[i],
                );
            }
        }
        runs.push(TargetRun {
            sums,
            neighbours: neighbours.cores(),
        });
    }
    relay.stop();
    Ok(runs)
}

// ---------------------------------------------------------------------------------------------------
// Issue 5: the Rhai call on its own

pub(super) struct RhaiCost {
    /// `engine::MessageBuilder::build_keys`: the OSC message as the `msg` map with the keys the
    /// re-send handler reads (what the worker builds per call).
    pub(super) message_map_ns: f64,
    /// The whole `msg` map, every key (what a script that passes `msg` on gets).
    pub(super) whole_map_ns: f64,
    /// `msg` map plus a call of an empty `on_message(msg)`.
    pub(super) empty_call_ns: f64,
    /// `msg` map plus a call of the re-send script (`send`: Rhai values to OSC, encode, output).
    pub(super) resend_call_ns: f64,
}

/// The worker's per-message work without its queue: the host's engine (`engine::build`, with the
/// default limits and the on-progress deadline check), the script compiled by `engine::compile_file`,
/// `engine::MessageBuilder`, and `call_fn_with_options` with `eval_ast(false)` and `rewind_scope(true)`,
/// as `script/worker.rs` calls it. `send` goes to an output that only counts.
pub(super) fn measure_rhai(params: &Params, workdir: &Path) -> Result<RhaiCost, String> {
    let output = Arc::new(CountingOutput(AtomicU64::new(0), "out"));
    let board = Switchboard::new(
        1,
        RouteTable::build(&[], channel_id),
        vec![(ChannelId(1), output.clone() as Arc<dyn Output>)],
    );
    let board = Arc::new(ArcSwap::from_pointee(board));
    let limits = Limits::default();
    let ctx = ScriptContext::new(
        "bench".into(),
        board,
        Arc::new(Hostnames::start()),
        State::new(rhai::Map::new(), limits.max_state_entries),
        limits,
    );
    let engine = engine::build(&ctx);
    let compile = |name: &str, text: &str| {
        let path = workdir.join(name);
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        engine::compile_file(&path, None)
            .map(|(ast, _)| ast)
            .map_err(|e| e.to_string())
    };
    let resend = compile("resend-micro.rhai", RESEND_SCRIPT)?;
    let empty = compile("empty-micro.rhai", EMPTY_SCRIPT)?;
    let origin = Origin {
        channel: ChannelId(0),
        addr: "127.0.0.1:5000".parse().expect("addr"),
    };
    // What the relay thread hands over: the bench traffic's bytes, `$1` = the `3` of the address.
    let message = ScriptMessage {
        raw: message_to(SCRIPT_ADDRESS, 42).to_vec(),
        channel: "desk".into(),
        route: "scripted".into(),
        received_ms: 0,
        captures: vec![(7, 8)],
        origin,
        value: None,
    };
    let peer = Peer::new(origin, "desk".into(), &ctx);
    let mut scope = Scope::new();
    let options = || CallFnOptions::new().eval_ast(false).rewind_scope(true);
    let builder = std::cell::RefCell::new(MessageBuilder::new());
    // The keys the re-send handler reads (`address`, `args`), as the worker finds them.
    let keys = usage::msg_keys(&resend, "msg");
    let build_keys = |keys| {
        builder
            .borrow_mut()
            .build_keys(&message, keys, || peer.clone())
            .expect("the bench message decodes")
    };
    let build = || build_keys(keys);
    let mut call = |ast: &rhai::AST| {
        let msg = Dynamic::from_map(build());
        engine
            .call_fn_with_options::<Dynamic>(options(), &mut scope, ast, "on_message", (msg,))
            .map(|_| ())
    };
    call(&resend).map_err(|e| format!("the re-send script fails: {e}"))?;
    call(&empty).map_err(|e| format!("the empty script fails: {e}"))?;
    let sent = output.0.load(Ordering::Relaxed);
    if sent != 36 {
        return Err(format!(
            "the re-send script sent {sent} bytes, not one 36-byte message"
        ));
    }
    Ok(RhaiCost {
        message_map_ns: time_per_op(params.lookup_batch, || {
            black_box(build());
        }),
        whole_map_ns: time_per_op(params.lookup_batch, || {
            black_box(build_keys(usage::ALL));
        }),
        empty_call_ns: time_per_op(params.lookup_batch, || {
            let _ = black_box(call(&empty));
        }),
        resend_call_ns: time_per_op(params.lookup_batch, || {
            let _ = black_box(call(&resend));
        }),
    })
}

// ---------------------------------------------------------------------------------------------------
// The report of parts 2 to 4

pub(super) struct Extras {
    /// `None` with `--only targets`.
    pub(super) save: Option<SaveToApplied>,
    pub(super) reload: Vec<ReloadRun>,
    pub(super) targets: Result<Vec<TargetRun>, String>,
    pub(super) rhai: Result<RhaiCost, String>,
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn summed<'a>(sums: impl Iterator<Item = &'a Sums>) -> Sums {
    sums.fold(Sums::default(), |mut a, s| {
        a.sent += s.sent;
        a.received += s.received;
        a.relay_cpu_ns += s.relay_cpu_ns;
        a.worker_cpu_ns += s.worker_cpu_ns;
        a.host_cpu_ns += s.host_cpu_ns;
        a.wall_ns += s.wall_ns;
        a.worker_waits += s.worker_waits;
        a.relay_waits += s.relay_waits;
        a
    })
}

impl Extras {
    /// The summary tables, as Markdown.
    pub(super) fn table(&self) -> String {
        let mut t = String::new();
        // Save to applied.
        if let Some(s) = &self.save {
            let mut sorted: Vec<u64> = s.ms.iter().map(|ms| (ms * 1e3) as u64).collect();
            sorted.sort_unstable();
            let p = |q: f64| percentile(&sorted, q) as f64 / 1e3;
            let _ = writeln!(
                t,
                "| live reload (issue 4), {} saves | p50 | p95 | max | target |",
                s.ms.len() + s.missed
            );
            let _ = writeln!(t, "|---|---:|---:|---:|---|");
            let _ = writeln!(
            t,
            "| save to applied, seen on the wire | {:.1} ms | {:.1} ms | {:.1} ms | < 250 ms: {} ({} never applied; host applied {:.0}) |",
            p(0.50),
            p(0.95),
            p(1.0),
            verdict(s.missed == 0 && p(1.0) < 250.0),
            s.missed,
            s.applied
        );
            let _ = writeln!(
                t,
                "| host's own `patchbay_reload_save_to_applied_seconds` (mean) | {:.1} ms | | | |",
                s.host_mean_ms
            );
            t.push('\n');
        }

        // Forwarding under reloads.
        let r = &self.reload;
        if !r.is_empty() {
            let relay = |f: &dyn Fn(&ReloadRun) -> &Sums| {
                median(r.iter().map(|x| f(x).relay_per_msg()).collect())
            };
            let host = |f: &dyn Fn(&ReloadRun) -> &Sums| {
                median(
                    r.iter()
                        .map(|x| {
                            let s = f(x);
                            s.host_per_msg()
                        })
                        .collect(),
                )
            };
            let (rq, rr) = (relay(&|x| &x.quiet), relay(&|x| &x.reloading));
            let (hq, hr) = (host(&|x| &x.quiet), host(&|x| &x.reloading));
            let paired = |f: &dyn Fn(&Sums) -> f64| {
                median(r.iter().map(|x| f(&x.reloading) / f(&x.quiet)).collect())
            };
            let writes: u64 = r.iter().map(|x| x.writes).sum();
            let applied: f64 = r.iter().map(|x| x.applied).sum();
            let _ = writeln!(
                t,
                "| forward route at max rate, median of {} runs | no reloads | a reload every {} ms | reloads / none |",
                r.len(),
                RELOAD_EVERY.as_millis()
            );
            let _ = writeln!(t, "|---|---:|---:|---:|");
            let _ = writeln!(
                t,
                "| CPU per message, relay thread | {:.2} µs | {:.2} µs | **{:.3}x** (target ≤ 1.05x: {}; per-run ratios' median {:.3}x) |",
                rq / 1e3,
                rr / 1e3,
                rr / rq,
                verdict(rr / rq <= 1.05),
                paired(&Sums::relay_per_msg)
            );
            let _ = writeln!(
                t,
                "| CPU per message, whole host (process − sender, sink, reloader) | {:.2} µs | {:.2} µs | {:.3}x ({}; per-run ratios' median {:.3}x) |",
                hq / 1e3,
                hr / 1e3,
                hr / hq,
                verdict(hr / hq <= 1.05),
                paired(&Sums::host_per_msg)
            );
            let (q, l) = (
                summed(r.iter().map(|x| &x.quiet)),
                summed(r.iter().map(|x| &x.reloading)),
            );
            let _ = writeln!(
                t,
                "| throughput | {:.0} msg/s | {:.0} msg/s | {:.2}x |",
                median(r.iter().map(|x| x.quiet.msgs_per_sec()).collect()),
                median(r.iter().map(|x| x.reloading.msgs_per_sec()).collect()),
                l.msgs_per_sec() / q.msgs_per_sec()
            );
            let _ = writeln!(
                t,
                "| loss (all runs) | {} of {} | {} of {} | saves written {writes}, reloads applied {applied:.0} |",
                q.loss(),
                q.sent,
                l.loss(),
                l.sent
            );
            t.push('\n');
        }

        // Targets.
        match &self.targets {
            Err(e) => {
                let _ = writeln!(t, "Script and plugin targets: not measured ({e}).\n");
            }
            Ok(runs) => {
                let med = |i: usize, f: &dyn Fn(&Sums) -> f64| {
                    median(runs.iter().map(|r| f(&r.sums[i])).collect())
                };
                let ratio = |i: usize, f: &dyn Fn(&Sums) -> f64| med(i, f) / med(0, f);
                let paired = |i: usize, f: &dyn Fn(&Sums) -> f64| {
                    median(runs.iter().map(|r| f(&r.sums[i]) / f(&r.sums[0])).collect())
                };
                let _ = writeln!(
                    t,
                    "| route targets at max rate, median of {} runs | forward | script (re-send) | plugin `scale` |",
                    runs.len()
                );
                let _ = writeln!(t, "|---|---:|---:|---:|");
                let row = |t: &mut String, label: &str, f: &dyn Fn(&Sums) -> f64| {
                    let _ = writeln!(
                        t,
                        "| {label} | {:.2} µs | {:.2} µs | {:.2} µs |",
                        med(0, f) / 1e3,
                        med(1, f) / 1e3,
                        med(2, f) / 1e3
                    );
                };
                row(
                    &mut t,
                    "CPU per message, relay thread",
                    &Sums::relay_per_msg,
                );
                row(
                    &mut t,
                    "CPU per message, script / plugin thread",
                    &Sums::worker_per_msg,
                );
                row(
                    &mut t,
                    "CPU per message, relay + target thread",
                    &Sums::threads_per_msg,
                );
                row(
                    &mut t,
                    "CPU per message, whole host (process − sender, sink)",
                    &Sums::host_per_msg,
                );
                let _ = writeln!(
                    t,
                    "| **ratio to forward**, whole host | 1.00x | **{:.2}x** (target ≤ 2x: {}; per-run {:.2}x) | **{:.2}x** (target ≤ 1.5x: {}; per-run {:.2}x) |",
                    ratio(1, &Sums::host_per_msg),
                    verdict(ratio(1, &Sums::host_per_msg) <= 2.0),
                    paired(1, &Sums::host_per_msg),
                    ratio(2, &Sums::host_per_msg),
                    verdict(ratio(2, &Sums::host_per_msg) <= 1.5),
                    paired(2, &Sums::host_per_msg),
                );
                let _ = writeln!(
                    t,
                    "| relay thread blocked (out of input), per message | {:.3} | {:.3} | {:.3} |",
                    med(0, &Sums::relay_waits_per_msg),
                    med(1, &Sums::relay_waits_per_msg),
                    med(2, &Sums::relay_waits_per_msg)
                );
                let _ = writeln!(
                    t,
                    "| script / plugin thread parked (queue empty), per message | | {:.3} | {:.3} |",
                    med(1, &Sums::waits_per_msg),
                    med(2, &Sums::waits_per_msg)
                );
                let _ = writeln!(
                    t,
                    "| ratio to forward, relay + target thread | 1.00x | {:.2}x | {:.2}x |",
                    ratio(1, &Sums::threads_per_msg),
                    ratio(2, &Sums::threads_per_msg)
                );
                let _ = writeln!(
                    t,
                    "| throughput | {:.0} msg/s | {:.0} msg/s | {:.0} msg/s |",
                    med(0, &Sums::msgs_per_sec),
                    med(1, &Sums::msgs_per_sec),
                    med(2, &Sums::msgs_per_sec)
                );
                let loss = |i: usize| {
                    let s = summed(runs.iter().map(|r| &r.sums[i]));
                    format!("{} of {}", s.loss(), s.sent)
                };
                let _ = writeln!(
                    t,
                    "| loss (all runs) | {} | {} | {} |",
                    loss(0),
                    loss(1),
                    loss(2)
                );
                t.push('\n');
            }
        }

        match &self.rhai {
            Err(e) => {
                let _ = writeln!(t, "Rhai call cost: not measured ({e}).");
            }
            Ok(c) => {
                let _ = writeln!(t, "| Rhai call (no I/O, no queue), per message | time |");
                let _ = writeln!(t, "|---|---:|");
                let _ = writeln!(
                    t,
                    "| `engine::MessageBuilder::build_keys` (the handed-over bytes to the `msg` map, the keys the handler reads: `address`, `args`) | {:.0} ns |",
                    c.message_map_ns
                );
                let _ = writeln!(
                    t,
                    "| the whole `msg` map (every key; a handler that passes `msg` on) | {:.0} ns |",
                    c.whole_map_ns
                );
                let _ = writeln!(
                    t,
                    "| `call_fn_with_options` of an empty `on_message(msg)` | {:.0} ns |",
                    c.empty_call_ns - c.message_map_ns
                );
                let _ = writeln!(
                    t,
                    "| `call_fn_with_options` of the re-send `on_message` (`send`: values to OSC, encode, output) | {:.0} ns |",
                    c.resend_call_ns - c.message_map_ns
                );
                let _ = writeln!(
                    t,
                    "| message map + re-send call, what the worker does per message | {:.0} ns |",
                    c.resend_call_ns
                );
            }
        }
        t
    }

    /// Every run of parts 2 to 4.
    pub(super) fn runs_table(&self) -> String {
        let mut t = String::new();
        if let Some(save) = &self.save {
            let _ = writeln!(
                t,
                "| saves (ms, in order; even: in place, odd: write and rename) |\n|---|\n| {} |\n",
                save.ms
                    .iter()
                    .map(|ms| format!("{ms:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !self.reload.is_empty() {
            let _ = writeln!(
                t,
                "| run | relay CPU/msg, none / reloading | host CPU/msg, none / reloading | msg/s, none / reloading | saves | applied | reloader CPU per save | neighbours (cores) |"
            );
            let _ = writeln!(t, "|---:|---:|---:|---:|---:|---:|---:|---:|");
            for (i, r) in self.reload.iter().enumerate() {
                let _ = writeln!(
                    t,
                    "| {} | {:.0} / {:.0} ns | {:.0} / {:.0} ns | {:.0} / {:.0} | {} | {:.0} | {:.0} µs | {:.2} |",
                    i + 1,
                    r.quiet.relay_per_msg(),
                    r.reloading.relay_per_msg(),
                    r.quiet.host_per_msg(),
                    r.reloading.host_per_msg(),
                    r.quiet.msgs_per_sec(),
                    r.reloading.msgs_per_sec(),
                    r.writes,
                    r.applied,
                    r.reloader_cpu_ns as f64 / r.writes.max(1) as f64 / 1e3,
                    r.neighbours
                );
            }
            t.push('\n');
        }
        if let Ok(runs) = &self.targets {
            let _ = writeln!(
                t,
                "| run | route | msg/s | loss | relay CPU/msg | target thread CPU/msg | host CPU/msg | neighbours (cores) |"
            );
            let _ = writeln!(t, "|---:|---|---:|---:|---:|---:|---:|---:|");
            for (i, r) in runs.iter().enumerate() {
                for (target, s) in Target::ALL.iter().zip(&r.sums) {
                    let _ = writeln!(
                        t,
                        "| {} | {} | {:.0} | {} | {:.0} ns | {:.0} ns | {:.0} ns | {:.2} |",
                        i + 1,
                        target.name(),
                        s.msgs_per_sec(),
                        s.loss(),
                        s.relay_per_msg(),
                        s.worker_per_msg(),
                        s.host_per_msg(),
                        r.neighbours
                    );
                }
            }
        }
        t
    }

    /// Method notes for parts 2 to 4.
    pub(super) fn method(&self, params: &Params, extra: &ExtraParams) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "- **Save to applied (issue 4)**: patchbay in-process from a config file holding the part 1 \
             routes plus channels `a` and `b` (sending to two sinks) and a route `probe` (`/probe`, \
             forward to `a`). A probe message is sent to `desk` every {} ms on an absolute schedule; a \
             receiver polls both sinks and stamps each arrival. {} saves, {} to {} ms apart, each \
             retargets `probe` to the other channel; even saves write the file in place \
             (`std::fs::write`: truncate and write), odd saves write a sibling file and rename it over \
             the config (as many editors do). The time is from just before the write to the first \
             probe that arrives at the new sink: what an operator sees, including the watcher's \
             debounce, the settle reads, parse, diff and swap. It overstates by up to one probe period \
             plus the one-way latency (about 0.05 ms). The host's own histogram \
             (`patchbay_reload_save_to_applied_seconds`, from the debounced notice minus the debounce to \
             the swap) is shown for comparison.",
            PROBE_PERIOD.as_millis(),
            extra.saves,
            250,
            350
        );
        let _ = writeln!(
            md,
            "- **Forwarding under reloads (issue 4)**: the part 1 patchbay (50 routes, traffic on \
             `/bench/*/level`), max-rate blocks of {} messages (the part 1 sender), {} blocks per run \
             in ABBA order: no reloads, or a bench thread rewriting the config in place every {} ms, \
             alternating two versions that differ only in route `r0` (`/desk/0/fader` ↔ \
             `/desk/0/fader2`, never sent to). The reloader starts 300 ms before a reload block and \
             stops at its end, then 300 ms pass before the next block, so reloads are in their steady \
             state and none spills into a quiet block. The relay-thread figure includes the reload \
             work done on that thread (the in-process host runs on one current-thread runtime: \
             reading, parsing, diffing, building the table and writing the ready file all happen \
             there); the whole-host figure adds the watcher and tokio's blocking-pool threads \
             (process CPU minus the sender, the sink and the reloader thread).",
            extra.reload_block_msgs,
            extra.reload_blocks,
            RELOAD_EVERY.as_millis()
        );
        let _ = writeln!(
            md,
            "- **Script and plugin targets (issues 5 and 6)**: one patchbay with the part 1 routes (the \
             output channel named `out`) plus `scripted` (`/scrpt/*/level` → `script:` a file in a temp \
             folder holding `{}`) and `scaled` (`/plugn/*/level` → `plugin: scale, config: {}`; the \
             library built by `cargo build --release -p patchbay-plugin-scale` and copied with mode \
             0755 into a private 0755 plugins folder); script and plugin queues set to 4096 (the \
             default 1024 equals the sender's window). Each address is 14 characters like \
             `{TRAFFIC_ADDRESS}`, so every route gets the same 40-byte `,ifh` message; the script's \
             `send` infers `,ifi` (36 bytes), the plugin sends `,ffh`. {} runs on one patchbay (a \
             host that stops deletes the process-wide folder of private plugin copies, so a second \
             host in one process cannot load plugins: `host/src/plugin.rs` `PluginHost::shutdown`); \
             per run {} rounds of one max-rate block of {} messages per route, the order \
             rotating so each route is first, middle and last equally often; {} warm-up messages per \
             route first. The host spawns the script worker (`script …`) and the plugin instance \
             (`plugin scale`) threads from the relay thread, so they share its core (the sender and \
             the sink have the other).",
            RESEND_SCRIPT.trim(),
            SCALE_CONFIG,
            extra.target_runs,
            extra.target_blocks,
            extra.target_block_msgs,
            params.warmup_msgs
        );
        md.push_str(
            "- **CPU of other threads**: a thread's CPU clock can be read from any thread of the same \
             process through the clock id `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)` = `(~tid << 3) | 6` \
             (what glibc's `pthread_getcpuclockid` builds), with `clock_gettime` (ns, user + system). The \
             worker threads are found by name in `/proc/self/task/*/comm`. \"relay + target thread\" sums \
             the relay thread and the script worker or plugin instance thread; \"whole host\" is \
             `CLOCK_PROCESS_CPUTIME_ID` minus the sender's and the sink's thread clocks over the block, so \
             every other patchbay thread (watchers, the plugin watchdog, the hostname resolver) counts; \
             the ratios to forward use it. \"Relay thread blocked\" and \"script / plugin thread parked\" \
             are the threads' voluntary context switches over the block (`voluntary_ctxt_switches` in \
             `/proc/self/task/TID/status`, read outside the CPU window), per message: each is a wait \
             that a wake-up ended.\n",
        );
        md.push_str(
            "- **Rhai call cost (issue 5)**: no sockets and no queue: an engine made by \
             `patchbay::script::engine::build` (default limits, the per-call deadline check), scripts \
             compiled by `engine::compile_file`, the `msg` map built by `engine::MessageBuilder` from a \
             `ScriptMessage` like the bench traffic (`,ifh`), called with \
             `call_fn_with_options(CallFnOptions::new().eval_ast(false).rewind_scope(true), …)` as \
             `script/worker.rs` does; `send` goes to an output that only counts bytes. The call rows \
             subtract the map row; same batches as the route table.\n",
        );
        md
    }
}

/// `--only`: a part of the run, for working on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Only {
    /// The script and plugin routes and the Rhai call.
    Targets,
    /// The Rhai call.
    Rhai,
}

/// Runs parts 2 to 4, or the part `only` names.
pub(super) fn measure(
    params: &Params,
    extra: &ExtraParams,
    workdir: &Path,
    placement: Placement,
    wait_quiet: Option<Duration>,
    only: Option<Only>,
) -> Extras {
    let (save, reload) = if only.is_some() {
        (None, Vec::new())
    } else {
        eprintln!("  save to applied ...");
        let save = measure_save_to_applied(extra, workdir, placement);
        eprintln!(
            "  save to applied: {:?} ms",
            save.ms.iter().map(|m| m.round() as u64).collect::<Vec<_>>()
        );
        eprintln!("  forwarding while reloading ...");
        let reload = measure_reload_cpu(params, extra, workdir, placement, wait_quiet);
        (Some(save), reload)
    };
    for (i, r) in reload.iter().enumerate() {
        eprintln!(
            "  reload run {}: relay {:.0} / {:.0} ns, host {:.0} / {:.0} ns (none / reloading), {} saves, {:.0} applied",
            i + 1,
            r.quiet.relay_per_msg(),
            r.reloading.relay_per_msg(),
            r.quiet.host_per_msg(),
            r.reloading.host_per_msg(),
            r.writes,
            r.applied
        );
    }
    let targets = if only == Some(Only::Rhai) {
        Err("left out (--only rhai)".to_string())
    } else {
        eprintln!("  script and plugin targets ...");
        measure_targets(params, extra, workdir, placement, wait_quiet)
    };
    match &targets {
        Ok(runs) => {
            for (i, r) in runs.iter().enumerate() {
                let line: Vec<String> = Target::ALL
                    .iter()
                    .zip(&r.sums)
                    .map(|(t, s)| {
                        format!(
                            "{} relay {:.0} + thread {:.0} = {:.0} ns (blocked {:.3} / parked {:.3} per msg), host {:.0} ns, loss {}",
                            t.name(),
                            s.relay_per_msg(),
                            s.worker_per_msg(),
                            s.threads_per_msg(),
                            s.relay_waits_per_msg(),
                            s.waits_per_msg(),
                            s.host_per_msg(),
                            s.loss()
                        )
                    })
                    .collect();
                eprintln!("  targets run {}: {}", i + 1, line.join("; "));
            }
        }
        Err(e) => eprintln!("  script and plugin targets not measured: {e}"),
    }
    let rhai = measure_rhai(params, workdir);
    Extras {
        save,
        reload,
        targets,
        rhai,
    }
}
