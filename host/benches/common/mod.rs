//! What the benchmarks share: placing threads, reading CPU clocks, how busy the neighbours were,
//! and small statistics. Included by `forward.rs` and `tcp.rs` with `#[path]` (not a bench target of
//! its own).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// Pins the calling thread to `cpu` (threads it spawns inherit it). Best effort: the figures are still
/// valid unpinned, only noisier.
pub fn pin_current_thread(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in bounds (cpu < CPU_SETSIZE, it
    // came from sched_getaffinity); pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is inside the workspace")
        .to_path_buf()
}

pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is one Linux always supports.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) of the calling thread.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

pub fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// How much CPU the rest of the machine used over a phase: all CPUs' busy time (`/proc/stat`) minus
/// this process's CPU time.
pub struct Neighbours {
    wall: Instant,
    machine_ns: u64,
    process_ns: u64,
}

impl Neighbours {
    pub fn start() -> Neighbours {
        Neighbours {
            wall: Instant::now(),
            machine_ns: machine_busy_ns(),
            process_ns: process_cpu_ns(),
        }
    }

    /// Average number of cores other processes kept busy since `start` (0 if `/proc/stat` is missing).
    pub fn cores(&self) -> f64 {
        let machine = machine_busy_ns().saturating_sub(self.machine_ns) as f64;
        let ours = (process_cpu_ns() - self.process_ns) as f64;
        ((machine - ours) / self.wall.elapsed().as_nanos() as f64).max(0.0)
    }
}

/// Busy time of all CPUs since boot (user, nice, system, irq, softirq, steal), in ns.
pub fn machine_busy_ns() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    busy * (1_000_000_000 / hz)
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One-way latencies of a paced phase.
pub struct Latency {
    pub received: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub lost: u64,
}

impl Latency {
    /// From each message's send time and arrival time (ns on one clock; `u64::MAX`: never arrived).
    pub fn of(sent_at: &[u64], arrivals: &[u64]) -> Latency {
        let mut latencies: Vec<u64> = sent_at
            .iter()
            .zip(arrivals)
            .filter(|&(_, &at)| at != u64::MAX)
            .map(|(&sent, &at)| at.saturating_sub(sent))
            .collect();
        latencies.sort_unstable();
        Latency {
            received: latencies.len() as u64,
            p50_ns: percentile(&latencies, 0.50),
            p99_ns: percentile(&latencies, 0.99),
            max_ns: latencies.last().copied().unwrap_or(0),
            lost: sent_at.len() as u64 - latencies.len() as u64,
        }
    }
}

/// One relay's sums over the blocks of a run's max-rate phase.
#[derive(Default)]
pub struct Accumulated {
    sent: u64,
    received: u64,
    relay_cpu_ns: u64,
    wall_ns: u64,
    other_cpu_ns: f64,
}

/// What sending one block through a relay saw at the sink.
pub struct Blasted {
    pub received: u64,
    pub first_send_ns: u64,
    pub last_receive_ns: u64,
    pub sink_cpu_ns: u64,
}

impl Accumulated {
    /// Sends one block of `sent` messages with `blast` (on this thread) and adds what it cost: the
    /// relay thread's CPU (`relay_cpu_ns`, read before and after), the wall time from the first send
    /// to the last receive, and the process CPU that was neither the sender's, the sink's nor the
    /// relay's.
    pub fn measure_block(
        &mut self,
        sent: u64,
        relay_cpu_ns: impl Fn() -> u64,
        blast: impl FnOnce() -> Blasted,
    ) {
        let process0 = process_cpu_ns();
        let relay0 = relay_cpu_ns();
        let sender0 = thread_cpu_ns();
        let blasted = blast();
        let sender_cpu = thread_cpu_ns() - sender0;
        let relay_cpu = relay_cpu_ns() - relay0;
        let process_cpu = process_cpu_ns() - process0;
        self.sent += sent;
        self.received += blasted.received;
        self.wall_ns += blasted
            .last_receive_ns
            .saturating_sub(blasted.first_send_ns);
        self.relay_cpu_ns += relay_cpu;
        self.other_cpu_ns +=
            process_cpu as f64 - (sender_cpu + relay_cpu + blasted.sink_cpu_ns) as f64;
    }

    /// The run's figures, with what its latency phase measured (`paced_cpu_ns`: the relay thread's
    /// CPU over that phase) and how busy the neighbours were in each phase.
    pub fn result(
        self,
        latency: Latency,
        paced_cpu_ns: u64,
        neighbours_tput: f64,
        neighbours_latency: Option<f64>,
    ) -> RelayRun {
        let received = self.received.max(1) as f64;
        let wall = self.wall_ns.max(1) as f64;
        RelayRun {
            sent: self.sent,
            received: self.received,
            msgs_per_sec: self.received as f64 * 1e9 / wall,
            cpu_ns_per_msg: self.relay_cpu_ns as f64 / received,
            paced_cpu_ns_per_msg: paced_cpu_ns as f64 / latency.received.max(1) as f64,
            relay_busy: self.relay_cpu_ns as f64 / wall,
            other_cpu_ns_per_msg: self.other_cpu_ns / received,
            latency,
            neighbours_tput,
            neighbours_latency,
        }
    }
}

/// What one run of one relay measured.
pub struct RelayRun {
    pub sent: u64,
    pub received: u64,
    /// Received messages per second, first send to last receive.
    pub msgs_per_sec: f64,
    /// Relay thread CPU ns over the max-rate phase, divided by messages received.
    pub cpu_ns_per_msg: f64,
    /// Relay thread CPU ns over the latency phase, per message received: every message pays the
    /// relay's wake-up, as at a show's real rates.
    pub paced_cpu_ns_per_msg: f64,
    /// Relay thread CPU / wall time of the max-rate phase: 1.0 means the relay never waited.
    pub relay_busy: f64,
    /// Process CPU minus sender, sink and relay threads, per message: should be ~0 (nothing else works).
    pub other_cpu_ns_per_msg: f64,
    pub latency: Latency,
    /// CPU used by other processes on the machine during the max-rate phase (and the latency phase,
    /// where a benchmark measures it), in cores: the benchmarks share their machine with builds and
    /// tests, which skews what they measure.
    pub neighbours_tput: f64,
    pub neighbours_latency: Option<f64>,
}

impl RelayRun {
    /// The run's cells of a markdown table: msg/s, loss, CPU/msg, busy, other CPU/msg, paced CPU/msg,
    /// latency p50, p99 and max (each benchmark adds its own columns after these).
    pub fn table_cells(&self) -> String {
        format!(
            "{:.0} | {} | {:.0} ns | {:.2} | {:.0} ns | {:.0} ns | {:.1} µs | {:.1} µs | {:.1} µs",
            self.msgs_per_sec,
            self.sent - self.received,
            self.cpu_ns_per_msg,
            self.relay_busy,
            self.other_cpu_ns_per_msg,
            self.paced_cpu_ns_per_msg,
            self.latency.p50_ns as f64 / 1e3,
            self.latency.p99_ns as f64 / 1e3,
            self.latency.max_ns as f64 / 1e3,
        )
    }

    /// The run on one line, for the progress output.
    pub fn one_line(&self) -> String {
        let neighbours = match self.neighbours_latency {
            Some(latency) => format!("{:.2}/{latency:.2}", self.neighbours_tput),
            None => format!("{:.2}", self.neighbours_tput),
        };
        format!(
            "{:>9.0} msg/s  loss {:>5}  cpu {:>6.0} ns/msg (busy {:.2}, other {:.0} ns, paced {:.0} ns)  latency p50 {:.1} p99 {:.1} max {:.1} µs, loss {}  neighbours {neighbours} cores",
            self.msgs_per_sec,
            self.sent - self.received,
            self.cpu_ns_per_msg,
            self.relay_busy,
            self.other_cpu_ns_per_msg,
            self.paced_cpu_ns_per_msg,
            self.latency.p50_ns as f64 / 1e3,
            self.latency.p99_ns as f64 / 1e3,
            self.latency.max_ns as f64 / 1e3,
            self.latency.lost,
        )
    }
}

/// One relay over all runs: medians, except loss (summed) and max latency (the worst run's).
pub struct Summary {
    pub msgs_per_sec: f64,
    pub loss: u64,
    pub sent: u64,
    pub cpu_ns: f64,
    pub paced_cpu_ns: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub latency_lost: u64,
}

impl Summary {
    pub fn of<'a>(runs: impl IntoIterator<Item = &'a RelayRun>) -> Summary {
        let runs: Vec<&RelayRun> = runs.into_iter().collect();
        let med = |f: &dyn Fn(&RelayRun) -> f64| median(runs.iter().map(|r| f(r)).collect());
        Summary {
            msgs_per_sec: med(&|r| r.msgs_per_sec),
            loss: runs.iter().map(|r| r.sent - r.received).sum(),
            sent: runs.iter().map(|r| r.sent).sum(),
            cpu_ns: med(&|r| r.cpu_ns_per_msg),
            paced_cpu_ns: med(&|r| r.paced_cpu_ns_per_msg),
            p50_us: med(&|r| r.latency.p50_ns as f64 / 1e3),
            p99_us: med(&|r| r.latency.p99_ns as f64 / 1e3),
            max_us: runs
                .iter()
                .map(|r| r.latency.max_ns as f64 / 1e3)
                .fold(0.0, f64::max),
            latency_lost: runs.iter().map(|r| r.latency.lost).sum(),
        }
    }
}

pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub rustc: String,
    pub commit: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let run = |program: &str, args: &[&str]| -> Option<String> {
            let out = Command::new(program).args(args).output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let cpu = run("lscpu", &[])
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("Model name:").map(|m| m.trim().to_string()))
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cores: thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| format!("Linux {}", s.trim()))
                .unwrap_or_else(|_| "unknown".into()),
            rustc: run(
                &std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()),
                &["--version"],
            )
            .unwrap_or_else(|| "rustc unknown".into()),
            commit: run(
                "git",
                &[
                    "-C",
                    &workspace_root().to_string_lossy(),
                    "describe",
                    "--always",
                    "--dirty",
                ],
            )
            .unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// Where the threads run. The relay gets a core to itself; the sender and the sink share another.
/// Left to the scheduler, the three threads land differently from run to run, and where the loopback
/// deliveries and wake-ups happen changed the relay's CPU time per message by up to 2x between runs.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub relay: Option<usize>,
    pub load: Option<usize>,
}

impl Placement {
    /// The first allowed CPU for the load, the last for the relay; no pinning with a single CPU.
    pub fn detect() -> Placement {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; pid 0 is the calling thread.
        let allowed: Vec<usize> = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Placement {
                    relay: None,
                    load: None,
                };
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect()
        };
        match (allowed.first(), allowed.last()) {
            (Some(&load), Some(&relay)) if load != relay => Placement {
                relay: Some(relay),
                load: Some(load),
            },
            _ => Placement {
                relay: None,
                load: None,
            },
        }
    }
}

/// On a shared machine (developers' builds, CI), waits up to `patience` for a second in which other
/// processes use less than a fifth of a core, so a run is not measured during someone's compile.
/// Runs start anyway when it never comes; the neighbours column shows what they ran beside.
pub fn wait_for_quiet(patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let neighbours = Neighbours::start();
        thread::sleep(Duration::from_secs(1));
        let busy = neighbours.cores();
        if busy < 0.2 || Instant::now() >= deadline {
            return;
        }
        eprintln!("  waiting for a quiet machine (others use {busy:.2} cores) ...");
    }
}
