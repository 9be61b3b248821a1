//! The bounded queue that hands messages from the receiving thread to a worker thread (a script's or
//! a plugin instance's), built so that a burst costs one wake-up, not one per message.
//!
//! A plain channel wakes the parked worker on every send. When the worker shares a core with the
//! receiving thread, the woken worker preempts it, handles that one message and parks again: a
//! futex wake and two context switches per message, more than the message's own work. Here the
//! worker drains everything queued before it parks, says so in a flag when it parks, and a sender
//! that finds it parked does not wake it at once: it leaves the wake-up to a task spawned on the
//! sender's tokio runtime, which runs when the receiving task yields (its socket is drained, or its
//! coop budget is spent). The messages of one drain are then handed over with one wake-up. Without
//! a runtime, or once a quarter of the queue (at most [`WAKE_AT_MOST`]) waits, the sender wakes the
//! worker itself, so a sender that never yields cannot starve it.
//!
//! The queue is `std::sync::mpsc::sync_channel`: bounded, a full queue refuses the message (the
//! caller counts it), nothing queued is lost.

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SendError, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// A sender wakes a parked worker itself once this many messages wait for it (or a quarter of the
/// queue, if less).
pub(crate) const WAKE_AT_MOST: usize = 256;

struct Bell {
    /// The worker's thread, known once it first waits.
    worker: OnceLock<Thread>,
    /// The worker is parked or about to park: it needs a wake-up to see new messages.
    sleeping: AtomicBool,
    /// A wake-up task is spawned and has not run yet.
    pending: AtomicBool,
    /// Messages sent since the worker parked.
    held: AtomicUsize,
    wake_at: usize,
    /// The sender is gone: an empty queue means disconnected.
    closed: AtomicBool,
}

impl Bell {
    fn ring(&self) {
        self.pending.store(false, Ordering::Release);
        if let Some(worker) = self.worker.get() {
            worker.unpark();
        }
    }
}

/// Rings when dropped: when the wake-up task runs, and also if its runtime drops it unrun.
struct RingOnDrop(Arc<Bell>);

impl Drop for RingOnDrop {
    fn drop(&mut self) {
        self.0.ring();
    }
}

pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::sync_channel(capacity);
    let bell = Arc::new(Bell {
        worker: OnceLock::new(),
        sleeping: AtomicBool::new(false),
        pending: AtomicBool::new(false),
        held: AtomicUsize::new(0),
        wake_at: (capacity / 4).clamp(1, WAKE_AT_MOST),
        closed: AtomicBool::new(false),
    });
    (
        Sender {
            tx,
            bell: bell.clone(),
        },
        Receiver { rx, bell },
    )
}

pub(crate) struct Sender<T> {
    tx: mpsc::SyncSender<T>,
    bell: Arc<Bell>,
}

impl<T> Sender<T> {
    /// Queues a message, never blocking; the worker is woken when the sending task yields. A full
    /// queue gives the message back.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(item)?;
        // Pairs with the fence in `Receiver::recv_timeout`: either the worker's last look at the
        // queue sees this message, or this sees its `sleeping`.
        fence(Ordering::SeqCst);
        if self.bell.sleeping.load(Ordering::Relaxed) {
            self.wake_later();
        }
        Ok(())
    }

    /// Queues a control job (stop, unload), never blocking, and wakes the worker now.
    pub(crate) fn try_send_now(&self, item: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(item)?;
        self.bell.ring();
        Ok(())
    }

    /// Queues a job that must not be lost (a new script version), waiting while the queue is full.
    pub(crate) fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.tx.send(item)?;
        self.bell.ring();
        Ok(())
    }

    fn wake_later(&self) {
        let bell = &self.bell;
        if bell.held.fetch_add(1, Ordering::Relaxed) + 1 >= bell.wake_at {
            bell.ring();
            return;
        }
        if bell.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let ring = RingOnDrop(bell.clone());
                drop(runtime.spawn(async move { drop(ring) }));
            }
            Err(_) => bell.ring(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.bell.closed.store(true, Ordering::Release);
        self.bell.ring();
    }
}

pub(crate) struct Receiver<T> {
    rx: mpsc::Receiver<T>,
    bell: Arc<Bell>,
}

impl<T> Receiver<T> {
    /// The next message if one is queued, without waiting.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        match self.rx.try_recv() {
            Err(TryRecvError::Empty) if self.bell.closed.load(Ordering::Acquire) => {
                // The sender is dropped after it sets `closed`: look once more.
                self.rx.try_recv().map_err(|_| TryRecvError::Disconnected)
            }
            other => other,
        }
    }

    /// The next message, parking up to `timeout` when none is queued.
    #[cfg(test)]
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_timeout_or(timeout, || {})
    }

    /// As `recv_timeout`, running `on_empty` first when none is queued (a worker sends what it held
    /// back while it had a backlog).
    pub(crate) fn recv_timeout_or(
        &self,
        timeout: Duration,
        on_empty: impl FnOnce(),
    ) -> Result<T, RecvTimeoutError> {
        match self.try_recv() {
            Ok(item) => return Ok(item),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => on_empty(),
        }
        let bell = &self.bell;
        bell.worker.get_or_init(std::thread::current);
        let deadline = Instant::now() + timeout;
        bell.held.store(0, Ordering::Relaxed);
        bell.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let result = loop {
            match self.try_recv() {
                Ok(item) => break Ok(item),
                Err(TryRecvError::Disconnected) => break Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(RecvTimeoutError::Timeout);
            }
            std::thread::park_timeout(deadline - now);
        };
        bell.sleeping.store(false, Ordering::Relaxed);
        // A wake-up task lost with its runtime must not keep later senders from waking us.
        bell.pending.store(false, Ordering::Relaxed);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_and_keeps_what_it_holds() {
        let (tx, rx) = channel(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_parked_worker_is_woken_without_a_runtime() {
        let (tx, rx) = channel::<u32>(1024);
        let worker = std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 1000 {
                got.push(rx.recv_timeout(Duration::from_secs(10)).unwrap());
            }
            got
        });
        for i in 0..1000 {
            while tx.try_send(i).is_err() {
                std::thread::yield_now();
            }
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let started = Instant::now();
        assert_eq!(worker.join().unwrap(), (0..1000).collect::<Vec<_>>());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_parked_worker_is_woken_when_the_sending_task_yields() {
        let (tx, rx) = channel::<u32>(1024);
        let worker = std::thread::spawn(move || {
            let started = Instant::now();
            let first = rx.recv_timeout(Duration::from_secs(10));
            (first, started.elapsed())
        });
        // Let the worker park.
        std::thread::sleep(Duration::from_millis(50));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            tx.try_send(7).unwrap();
            tokio::task::yield_now().await;
        });
        let (first, waited) = worker.join().unwrap();
        assert_eq!(first, Ok(7));
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn a_dropped_sender_ends_the_wait() {
        let (tx, rx) = channel::<u32>(8);
        tx.try_send(1).unwrap();
        let worker = std::thread::spawn(move || {
            let first = rx.recv_timeout(Duration::from_secs(10));
            let started = Instant::now();
            let second = rx.recv_timeout(Duration::from_secs(10));
            (first, second, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(tx);
        let (first, second, waited) = worker.join().unwrap();
        assert_eq!(first, Ok(1));
        assert_eq!(second, Err(RecvTimeoutError::Disconnected));
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}
