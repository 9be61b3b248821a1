//! Datagram sends held back on a script's or plugin's thread while it works through a backlog, then
//! sent together: one `sendmmsg` system call per run of sends through one socket (Linux; one
//! `sendto` each elsewhere).
//!
//! Why: on loopback, and to a receiver that waits in `recv`, a send system call does the receiver's
//! work too (the datagram is delivered and the receiving thread woken inside the call). Sent one by
//! one, a worker that answers every message pays that wake-up once per message; sent together, the
//! first datagram wakes the receiver and the rest find it awake. The benchmark's script and plugin
//! routes spent about a sixth of their thread's time in that wake-up (docs/benchmarks.md).
//!
//! When: a worker holds its sends only while more of its messages are already queued, so a send waits
//! for nothing that was not already waiting. It flushes when its queue is empty, after [`MAX_HELD`]
//! sends, and once the oldest held send is [`MAX_HOLD`] old: a script's deadline check flushes during
//! a long call, and the plugin watchdog flushes for a plugin call that does not return. The forward
//! path (the receiving thread) never holds: it sends as it routes.
//!
//! Every held send is counted when it goes out, exactly as a direct send: `packets_out` and
//! `bytes_out`, or a drop (full send buffer) or send error, with the same log lines.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::datagram::{DatagramSocket, SendAccount};

/// Sends held at most before they go out together.
pub const MAX_HELD: usize = 32;
/// How long a send is held at most (checked after each message, by a script's deadline check, and
/// by the plugin watchdog).
pub const MAX_HOLD: Duration = Duration::from_millis(1);

/// One worker's held sends. Shared (behind a lock no one else takes while the worker runs) so the
/// plugin watchdog can flush for a worker stuck in a call.
#[derive(Default)]
pub struct HeldSends {
    inner: Mutex<Held>,
}

/// What a flush sent, and what the system refused (counted and logged per channel).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    pub failed: usize,
}

#[derive(Default)]
struct Held {
    /// The datagrams' bytes, back to back.
    bytes: Vec<u8>,
    sends: Vec<(SocketAddr, Range<usize>)>,
    /// Runs of consecutive sends through one socket: the socket, its channel's counters, and where
    /// the run ends in `sends`.
    runs: Vec<(Arc<DatagramSocket>, Arc<SendAccount>, usize)>,
    since: Option<Instant>,
}

thread_local! {
    /// The held sends of the worker running on this thread, while it holds.
    static HOLDING: RefCell<Option<Arc<HeldSends>>> = const { RefCell::new(None) };
}

impl HeldSends {
    pub fn new() -> Arc<HeldSends> {
        Arc::new(HeldSends::default())
    }

    /// From now on, datagram sends made on this thread are held here until a flush.
    pub fn hold_on_this_thread(self: &Arc<Self>) {
        HOLDING.with(|h| *h.borrow_mut() = Some(self.clone()));
    }

    /// Sends made on this thread go out directly again (and what is held goes out now).
    pub fn release_this_thread(&self) {
        HOLDING.with(|h| h.borrow_mut().take());
        let _ = self.flush();
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many sends are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().sends.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends what is held when there are [`MAX_HELD`] sends or the oldest is [`MAX_HOLD`] old.
    pub fn flush_if_due(&self, now: Instant) {
        let mut held = self.lock();
        let due = held.sends.len() >= MAX_HELD
            || held
                .since
                .is_some_and(|since| now.saturating_duration_since(since) >= MAX_HOLD);
        if due {
            let _ = held.flush();
        }
    }

    /// Sends everything held, in the order it was sent.
    pub fn flush(&self) -> Flushed {
        let mut held = self.lock();
        if held.sends.is_empty() {
            return Flushed::default();
        }
        held.flush()
    }
}

/// Holds the datagram when this thread holds its sends; false when it does not (send it now).
pub(super) fn hold(
    socket: &Arc<DatagramSocket>,
    account: &Arc<SendAccount>,
    bytes: &[u8],
    to: SocketAddr,
) -> bool {
    HOLDING.with(|h| {
        let h = h.borrow();
        let Some(sends) = h.as_ref() else {
            return false;
        };
        let mut held = sends.lock();
        if held.sends.len() >= MAX_HELD {
            let _ = held.flush();
        }
        let start = held.bytes.len();
        held.bytes.extend_from_slice(bytes);
        let range = start..held.bytes.len();
        held.sends.push((to, range));
        let count = held.sends.len();
        match held.runs.last_mut() {
            Some((s, a, end)) if Arc::ptr_eq(s, socket) && Arc::ptr_eq(a, account) => *end = count,
            _ => held.runs.push((socket.clone(), account.clone(), count)),
        }
        if held.since.is_none() {
            held.since = Some(Instant::now());
        }
        true
    })
}

impl Held {
    fn flush(&mut self) -> Flushed {
        let mut flushed = Flushed::default();
        let mut start = 0;
        for (socket, account, end) in self.runs.drain(..) {
            let sends = &self.sends[start..end];
            send_all(&socket, &self.bytes, sends, |i, result| match result {
                Ok(()) => {
                    flushed.sent += 1;
                    account.sent(sends[i].1.len());
                }
                Err(e) => {
                    flushed.failed += 1;
                    account.failed(&e, sends[i].0);
                }
            });
            start = end;
        }
        self.sends.clear();
        self.bytes.clear();
        self.since = None;
        flushed
    }
}

/// Sends each datagram, reporting each one's outcome in order.
#[cfg(target_os = "linux")]
fn send_all(
    socket: &DatagramSocket,
    bytes: &[u8],
    sends: &[(SocketAddr, Range<usize>)],
    mut outcome: impl FnMut(usize, io::Result<()>),
) {
    if let [(to, range)] = sends {
        // One datagram (a worker that keeps up): a plain send, nothing to gather.
        return outcome(
            0,
            socket.try_send_to(&bytes[range.clone()], *to).map(|_| ()),
        );
    }
    let addrs: Vec<socket2::SockAddr> = sends.iter().map(|(to, _)| (*to).into()).collect();
    let mut iovs: Vec<libc::iovec> = sends
        .iter()
        .map(|(_, range)| libc::iovec {
            iov_base: bytes[range.clone()].as_ptr() as *mut libc::c_void,
            iov_len: range.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = addrs
        .iter()
        .zip(iovs.iter_mut())
        .map(|(addr, iov)| {
            // SAFETY: an all-zero msghdr is valid (no name, no control data); the fields set below
            // point into `addrs` and `iovs`, which outlive the system calls.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            header.msg_hdr.msg_namelen = addr.len();
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    let fd = socket.as_raw_fd();
    let mut next = 0;
    while next < headers.len() {
        let rest = &mut headers[next..];
        // SAFETY: `rest` is a valid array of `rest.len()` headers whose pointers are valid (above);
        // MSG_DONTWAIT keeps the call from blocking whatever the socket's mode.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent > 0 {
            for i in next..next + sent as usize {
                outcome(i, Ok(()));
            }
            next += sent as usize;
        } else {
            // The first datagram of the rest failed (a later one's error is seen on the next call).
            let error = if sent == 0 {
                io::Error::from(io::ErrorKind::WriteZero)
            } else {
                io::Error::last_os_error()
            };
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            outcome(next, Err(error));
            next += 1;
        }
    }
}

/// Sends each datagram, reporting each one's outcome in order.
#[cfg(not(target_os = "linux"))]
fn send_all(
    socket: &DatagramSocket,
    bytes: &[u8],
    sends: &[(SocketAddr, Range<usize>)],
    mut outcome: impl FnMut(usize, io::Result<()>),
) {
    for (i, (to, range)) in sends.iter().enumerate() {
        outcome(
            i,
            socket.try_send_to(&bytes[range.clone()], *to).map(|_| ()),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;
    use crate::metrics::ChannelMetrics;

    fn output_socket() -> Arc<DatagramSocket> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("socket");
        let local: SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&local.into()).expect("bind");
        Arc::new(super::super::datagram::register(socket).expect("register"))
    }

    fn receiver() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        socket
    }

    fn next(socket: &UdpSocket) -> Vec<u8> {
        let mut buffer = [0u8; 64];
        let n = socket.recv(&mut buffer).expect("a datagram");
        buffer[..n].to_vec()
    }

    fn nothing_waiting(socket: &UdpSocket) -> bool {
        socket.set_nonblocking(true).expect("non-blocking");
        let mut buffer = [0u8; 64];
        let empty =
            matches!(socket.recv(&mut buffer), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        socket.set_nonblocking(false).expect("blocking");
        empty
    }

    #[tokio::test]
    async fn held_sends_go_out_on_flush_in_order_each_counted() {
        let (a, b) = (receiver(), receiver());
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let (one, two) = (output_socket(), output_socket());
        let account = Arc::new(SendAccount::new("t".into(), ChannelMetrics::new("t")));
        let held = HeldSends::new();
        held.hold_on_this_thread();
        assert!(hold(&one, &account, b"1", to_a));
        assert!(hold(&one, &account, b"2", to_b));
        // Refused by the system (no SO_BROADCAST): counted alone, the rest still go out.
        let broadcast: SocketAddr = format!("127.255.255.255:{}", to_a.port()).parse().unwrap();
        assert!(hold(&one, &account, b"x", broadcast));
        assert!(hold(&two, &account, b"3", to_a));
        assert!(hold(&one, &account, b"4", to_a));
        assert_eq!(held.len(), 5);
        assert!(nothing_waiting(&a) && nothing_waiting(&b), "held, not sent");

        assert_eq!(held.flush(), Flushed { sent: 4, failed: 1 });
        assert_eq!(
            [next(&a), next(&a), next(&a)],
            [b"1".to_vec(), b"3".to_vec(), b"4".to_vec()]
        );
        assert_eq!(next(&b), b"2");
        assert!(held.is_empty());
        assert_eq!(held.flush(), Flushed::default());

        held.release_this_thread();
        assert!(
            !hold(&one, &account, b"5", to_a),
            "released: sends go out directly"
        );
    }

    #[tokio::test]
    async fn a_full_batch_or_an_old_one_goes_out() {
        let a = receiver();
        let to = a.local_addr().unwrap();
        let socket = output_socket();
        let account = Arc::new(SendAccount::new("t".into(), ChannelMetrics::new("t")));
        let held = HeldSends::new();
        held.hold_on_this_thread();
        for i in 0..MAX_HELD {
            assert!(hold(&socket, &account, &[i as u8], to));
        }
        let now = Instant::now();
        // Full: the next hold sends the batch first.
        assert!(hold(&socket, &account, &[99], to));
        assert_eq!(held.len(), 1);
        for i in 0..MAX_HELD {
            assert_eq!(next(&a), [i as u8]);
        }
        held.flush_if_due(now);
        assert_eq!(held.len(), 1, "not due yet");
        held.flush_if_due(Instant::now() + MAX_HOLD);
        assert!(held.is_empty());
        assert_eq!(next(&a), [99]);
        held.release_this_thread();
    }
}
