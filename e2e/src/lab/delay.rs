//! User-space packet delay: packets queued by iptables `-j NFQUEUE` are held for a fixed time, then
//! accepted. This kernel has no `netem`; this is what adds the lab's round-trip time.
//!
//! [`DelayLine`] is the pure part (a FIFO of deadlines, tested without sockets); [`run`] drives it from
//! an NFQUEUE netlink socket (crate `nfq`). Only packet metadata is copied to user space
//! (copy range 0), so the per-packet cost is one `recv` (batched by the kernel) and one verdict.
//!
//! Non-goals: jitter, reordering, per-flow delays (one constant delay keeps the FIFO order).

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// Errors of the delay daemon.
#[derive(Debug, thiserror::Error)]
pub enum DelayError {
    /// Opening or configuring the queue failed (needs root/CAP_NET_ADMIN in the namespace).
    #[error("setting up NFQUEUE {queue}: {what}")]
    Setup {
        /// The queue number.
        queue: u16,
        /// The step that failed.
        what: &'static str,
        /// The netlink error.
        #[source]
        source: std::io::Error,
    },
    /// Receiving or giving a verdict failed.
    #[error("NFQUEUE {what}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The netlink error.
        #[source]
        source: std::io::Error,
    },
}

/// A FIFO of items, each released a fixed delay after it arrived.
#[derive(Debug)]
pub struct DelayLine<T> {
    delay: Duration,
    items: VecDeque<(Instant, T)>,
}

impl<T> DelayLine<T> {
    /// An empty line delaying by `delay`.
    pub fn new(delay: Duration) -> Self {
        DelayLine {
            delay,
            items: VecDeque::new(),
        }
    }

    /// Adds an item that arrived at `arrived`. Arrival times must not go backwards by more than the
    /// caller accepts as reordering; the line keeps FIFO order regardless.
    pub fn push(&mut self, arrived: Instant, item: T) {
        let due = arrived + self.delay;
        // Keep deadlines monotone, so FIFO order and deadline order agree.
        let due = match self.items.back() {
            Some((last, _)) if *last > due => *last,
            _ => due,
        };
        self.items.push_back((due, item));
    }

    /// Removes and returns the oldest item if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.items.front() {
            Some((due, _)) if *due <= now => self.items.pop_front().map(|(_, t)| t),
            _ => None,
        }
    }

    /// When the oldest item falls due.
    pub fn next_due(&self) -> Option<Instant> {
        self.items.front().map(|(d, _)| *d)
    }

    /// Number of items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Longest sleep while packets are held (bounds how late a newly queued packet is seen).
const BUSY_POLL: Duration = Duration::from_micros(100);
/// Packets received before releasing due ones.
const RECV_BATCH: usize = 256;

/// Arrival instant of a packet the kernel stamped at `stamp`, seen now; `now` if unstamped or odd.
fn arrival(stamp: Option<SystemTime>, now: Instant) -> Instant {
    let Some(stamp) = stamp else { return now };
    match SystemTime::now().duration_since(stamp) {
        Ok(age) if age < Duration::from_millis(20) => now.checked_sub(age).unwrap_or(now),
        _ => now,
    }
}

/// Binds NFQUEUE `queue` in the current namespace and delays every packet by `delay` until killed.
/// Calls `ready` once the queue is bound (the lab adds its iptables rule only after that).
pub fn run(queue: u16, delay: Duration, ready: impl FnOnce()) -> Result<(), DelayError> {
    let setup = |what: &'static str| move |source| DelayError::Setup { queue, what, source };
    let mut q = nfq::Queue::open().map_err(setup("open"))?;
    q.bind(queue).map_err(setup("bind"))?;
    q.set_copy_range(queue, 0).map_err(setup("copy range"))?;
    q.set_queue_max_len(queue, 1 << 16)
        .map_err(setup("queue length"))?;
    q.set_fail_open(queue, false).map_err(setup("fail-open"))?;
    q.set_nonblocking(true);
    ready();

    let mut line = DelayLine::new(delay);
    loop {
        let mut got = 0;
        if line.is_empty() {
            // Nothing held: block until a packet arrives (no CPU while the lab is idle).
            q.set_nonblocking(false);
            let first = q.recv();
            q.set_nonblocking(true);
            match first {
                Ok(msg) => {
                    line.push(arrival(msg.get_timestamp(), Instant::now()), msg);
                    got += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(DelayError::Io { what: "recv", source });
                }
            }
        }
        while got < RECV_BATCH {
            match q.recv() {
                Ok(msg) => {
                    let at = arrival(msg.get_timestamp(), Instant::now());
                    line.push(at, msg);
                    got += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(DelayError::Io { what: "recv", source });
                }
            }
        }
        let now = Instant::now();
        while let Some(msg) = line.pop_due(now) {
            q.verdict(msg).map_err(|source| DelayError::Io {
                what: "verdict",
                source,
            })?;
        }
        if got == RECV_BATCH {
            continue;
        }
        let nap = match line.next_due() {
            Some(due) => due.saturating_duration_since(now).min(BUSY_POLL),
            None => Duration::ZERO,
        };
        if !nap.is_zero() {
            std::thread::sleep(nap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_leave_after_the_delay_in_order() {
        let t0 = Instant::now();
        let d = Duration::from_millis(10);
        let mut l = DelayLine::new(d);
        l.push(t0, 1);
        l.push(t0 + Duration::from_millis(1), 2);
        assert_eq!(l.pop_due(t0 + Duration::from_millis(9)), None);
        assert_eq!(l.next_due(), Some(t0 + d));
        assert_eq!(l.pop_due(t0 + d), Some(1));
        assert_eq!(l.pop_due(t0 + d), None);
        assert_eq!(l.pop_due(t0 + Duration::from_millis(11)), Some(2));
        assert!(l.is_empty());
    }

    #[test]
    fn deadlines_never_go_backwards() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut l = DelayLine::new(Duration::from_millis(5));
        l.push(t0, 'a');
        l.push(t0 - Duration::from_millis(2), 'b');
        assert_eq!(l.len(), 2);
        // 'b' arrived "earlier" but stays behind 'a' and is not released before it.
        assert_eq!(l.pop_due(t0 + Duration::from_millis(4)), None);
        assert_eq!(l.pop_due(t0 + Duration::from_millis(5)), Some('a'));
        assert_eq!(l.pop_due(t0 + Duration::from_millis(5)), Some('b'));
    }

    #[test]
    fn arrival_uses_recent_kernel_stamps_only() {
        let now = Instant::now();
        assert_eq!(arrival(None, now), now);
        let old = SystemTime::now() - Duration::from_secs(5);
        assert_eq!(arrival(Some(old), now), now);
        let recent = SystemTime::now() - Duration::from_millis(3);
        let a = arrival(Some(recent), now);
        assert!(a < now && now - a >= Duration::from_millis(2));
    }
}
