//! Time-tagged bundles for targets that act on messages themselves (an `unbundle` forward now;
//! scripts and plugins later): each message is held until its bundle's time, in a bounded queue.
//!
//! Show networks often lack NTP and a device's clock may run ahead, so time tags far in the future are
//! not refused by default: past the horizon they are dispatched at once (or dropped, by policy) and
//! counted. Late bundles are dispatched at once and counted. The deciding is pure ([`classify`], with
//! the current time passed in); the waiting is one task per host.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use metrics::Counter;
use patchbay_plugin_api::osc::TimeTag;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::channel::Output;

/// What to do with a bundle whose time tag lies beyond the horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FarFuture {
    /// Dispatch at once (a device clock running ahead must not hold cues back).
    #[default]
    Dispatch,
    /// Drop the bundle's scheduled messages.
    Drop,
}

/// `bundles:` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    /// Time tags further ahead than this count as far-future.
    #[serde(default = "default_horizon_ms")]
    pub horizon_ms: u64,
    #[serde(default)]
    pub far_future: FarFuture,
    /// Most messages waiting for their time at once; more are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

impl Default for BundleConfig {
    fn default() -> Self {
        BundleConfig {
            horizon_ms: default_horizon_ms(),
            far_future: FarFuture::default(),
            queue: default_queue(),
        }
    }
}

fn default_horizon_ms() -> u64 {
    60_000
}

fn default_queue() -> usize {
    4_096
}

/// When a bundle's messages are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// `immediately`, or no later than now.
    Now { late: bool },
    /// This far ahead, within the horizon.
    After(Duration),
    /// Beyond the horizon.
    FarFuture(Duration),
}

/// Where a time tag lies relative to `now`.
pub fn classify(timetag: TimeTag, now: SystemTime, horizon: Duration) -> Timing {
    if timetag.is_immediately() {
        return Timing::Now { late: false };
    }
    let ahead = timetag.offset_from(now);
    if ahead <= 0 {
        return Timing::Now { late: ahead < 0 };
    }
    let ahead = Duration::from_nanos(u64::try_from(ahead).unwrap_or(u64::MAX));
    if ahead > horizon {
        Timing::FarFuture(ahead)
    } else {
        Timing::After(ahead)
    }
}

pub struct SchedulerMetrics {
    pub scheduled: Counter,
    pub late: Counter,
    pub far_future: Counter,
    pub dropped: Counter,
}

impl SchedulerMetrics {
    pub fn new() -> Self {
        use crate::metrics::*;
        SchedulerMetrics {
            scheduled: metrics::counter!(BUNDLES_SCHEDULED),
            late: metrics::counter!(BUNDLES_LATE),
            far_future: metrics::counter!(BUNDLES_FAR_FUTURE),
            dropped: metrics::counter!(BUNDLES_DROPPED),
        }
    }
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A message waiting for its time: what to do with it when it is due.
struct Entry {
    due: Instant,
    seq: u64,
    action: Box<dyn FnOnce() + Send>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Same due time: arrival order, so a bundle's messages keep their order.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

/// The host's scheduler: shared by every dispatcher, drained by [`Scheduler::run`].
pub struct Scheduler {
    config: ArcSwap<BundleConfig>,
    queue: Mutex<Queue>,
    wake: Notify,
    pub metrics: SchedulerMetrics,
}

impl Scheduler {
    pub fn new(config: BundleConfig) -> Self {
        Scheduler {
            config: ArcSwap::from_pointee(config),
            queue: Mutex::new(Queue {
                heap: BinaryHeap::new(),
                seq: 0,
            }),
            wake: Notify::new(),
            metrics: SchedulerMetrics::new(),
        }
    }

    /// A reload's new `bundles:` settings; messages already waiting keep their time.
    pub fn set_config(&self, config: BundleConfig) {
        self.config.store(Arc::new(config));
    }

    pub fn horizon(&self) -> Duration {
        Duration::from_millis(self.config.load().horizon_ms)
    }

    pub fn far_future_policy(&self) -> FarFuture {
        self.config.load().far_future
    }

    /// Queues `packet` for `output` at `due`. False (and counted) when the queue is full.
    pub fn schedule(&self, due: Instant, output: Arc<dyn Output>, packet: Vec<u8>) -> bool {
        self.schedule_action(due, Box::new(move || output.send(&packet)))
    }

    /// Queues any delivery (a script's or plugin's message) at `due`.
    pub fn schedule_action(&self, due: Instant, action: Box<dyn FnOnce() + Send>) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.config.load().queue;
        if queue.heap.len() >= limit {
            drop(queue);
            self.metrics.dropped.increment(1);
            tracing::warn!(
                queue = limit,
                "Dropped a time-tagged message: the bundle queue is full (raise bundles.queue)."
            );
            return false;
        }
        queue.seq += 1;
        let seq = queue.seq;
        let earliest = queue.heap.peek().map(|Reverse(e)| e.due);
        queue.heap.push(Reverse(Entry { due, seq, action }));
        drop(queue);
        if earliest.is_none_or(|earliest| due < earliest) {
            self.wake.notify_one();
        }
        true
    }

    /// Sends each message when it is due, until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let next_due = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let mut due_now = Vec::new();
                while queue.heap.peek().is_some_and(|Reverse(e)| e.due <= now) {
                    if let Some(Reverse(entry)) = queue.heap.pop() {
                        due_now.push(entry);
                    }
                }
                let next = queue.heap.peek().map(|Reverse(e)| e.due);
                drop(queue);
                for entry in due_now {
                    (entry.action)();
                }
                next
            };
            let sleep = async {
                match next_due {
                    Some(due) => tokio::time::sleep_until(due.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_places_time_tags() {
        let now = SystemTime::now();
        let horizon = Duration::from_secs(60);
        assert_eq!(
            classify(TimeTag::IMMEDIATELY, now, horizon),
            Timing::Now { late: false }
        );
        assert_eq!(
            classify(TimeTag::from_system_time(now), now, horizon),
            Timing::Now { late: false }
        );
        let past = TimeTag::from_system_time(now - Duration::from_secs(2));
        assert_eq!(classify(past, now, horizon), Timing::Now { late: true });
        match classify(
            TimeTag::after(now, Duration::from_millis(500)),
            now,
            horizon,
        ) {
            Timing::After(d) => {
                assert!(d > Duration::from_millis(499) && d <= Duration::from_millis(500))
            }
            other => panic!("expected After, got {other:?}"),
        }
        assert!(matches!(
            classify(TimeTag::after(now, Duration::from_secs(3600)), now, horizon),
            Timing::FarFuture(_)
        ));
    }
}
