//! User-space packet delay: packets queued by iptables `-j NFQUEUE` are held for a fixed time, then
//! accepted. This kernel has no `netem`; this is what adds the lab's round-trip time.
//!
//! [`DelayLine`] is the pure part (a FIFO of deadlines, tested without sockets); [`run`] drives it from
//! an NFQUEUE netlink socket (crate `nfq`). Only packet metadata is copied to user space
//! (copy range 0), so the per-packet cost is one `recv` (batched by the kernel) and one verdict.
//!
//! Non-goals: jitter, reordering, per-flow delays (one constant delay keeps the FIFO order).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// Longest sleep while packets are held. A packet is seen up to this late; its arrival is estimated
/// as the middle of the gap since the previous pass, so the error is about ± half of this.
const POLL: Duration = Duration::from_micros(500);
/// Shortest sleep between passes while packets are held.
const MIN_NAP: Duration = Duration::from_micros(150);
/// Packets due this soon are released in the current pass (centres the release error on zero).
const EARLY: Duration = Duration::from_micros(75);
/// Packets received before releasing due ones.
const RECV_BATCH: usize = 256;

/// Estimated arrival of a packet first seen at `now` when the queue was last found empty at
/// `drained`: the middle of the gap (`now` itself after a blocking wait).
pub fn arrival(drained: Option<Instant>, now: Instant) -> Instant {
    match drained {
        Some(d) if d <= now => d + (now - d) / 2,
        _ => now,
    }
}

/// How long to sleep before the next pass, given when the oldest held packet is due.
pub fn nap(now: Instant, next_due: Option<Instant>) -> Duration {
    match next_due {
        None => Duration::ZERO,
        Some(due) => due.saturating_duration_since(now).max(MIN_NAP).min(POLL),
    }
}

/// Counters of a running delay line.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DelayStats {
    /// Packets delayed.
    pub packets: u64,
    /// Most packets held at once.
    pub max_held: usize,
}

/// Binds NFQUEUE `queue` in the current namespace and delays every packet by `delay` until killed.
/// Calls `ready` once the queue is bound (the lab adds its iptables rule only after that), and
/// `report` with the counters every `report_every` (if set).
pub fn run(
    queue: u16,
    delay: Duration,
    ready: impl FnOnce(),
    report_every: Option<Duration>,
    mut report: impl FnMut(&DelayStats),
) -> Result<(), DelayError> {
    let setup = |what: &'static str| move |source| DelayError::Setup { queue, what, source };
    let mut q = nfq::Queue::open().map_err(setup("open"))?;
    q.bind(queue).map_err(setup("bind"))?;
    q.set_copy_range(queue, 0).map_err(setup("copy range"))?;
    q.set_queue_max_len(queue, 1 << 16)
        .map_err(setup("queue length"))?;
    q.set_fail_open(queue, false).map_err(setup("fail-open"))?;
    q.set_nonblocking(true);
    ready();

    let mut stats = DelayStats::default();
    let mut last_report = Instant::now();
    let mut line = DelayLine::new(delay);
    // When the queue was last found empty; None right after a blocking wait.
    let mut drained: Option<Instant> = None;
    loop {
        let mut got = 0;
        if line.is_empty() {
            // Nothing held: block until a packet arrives (no CPU while the lab is idle).
            q.set_nonblocking(false);
            let first = q.recv();
            q.set_nonblocking(true);
            match first {
                Ok(msg) => {
                    line.push(Instant::now(), msg);
                    got += 1;
                    drained = None;
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
                    line.push(arrival(drained, Instant::now()), msg);
                    got += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    drained = Some(Instant::now());
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(DelayError::Io { what: "recv", source });
                }
            }
        }
        stats.packets += got as u64;
        stats.max_held = stats.max_held.max(line.len());
        let now = Instant::now();
        while let Some(msg) = line.pop_due(now + EARLY) {
            q.verdict(msg).map_err(|source| DelayError::Io {
                what: "verdict",
                source,
            })?;
        }
        if let Some(every) = report_every
            && now - last_report >= every
        {
            report(&stats);
            last_report = now;
        }
        if got == RECV_BATCH {
            continue;
        }
        let pause = nap(now, line.next_due());
        if !pause.is_zero() {
            std::thread::sleep(pause);
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
    fn naps_are_bounded() {
        let now = Instant::now();
        assert_eq!(nap(now, None), Duration::ZERO);
        assert_eq!(nap(now, Some(now + Duration::from_millis(8))), POLL);
        assert_eq!(nap(now, Some(now + Duration::from_micros(10))), MIN_NAP);
        let mid = Duration::from_micros(300);
        assert_eq!(nap(now, Some(now + mid)), mid);
    }

    #[test]
    fn arrival_is_the_middle_of_the_unseen_gap() {
        let t = Instant::now();
        assert_eq!(arrival(None, t), t);
        let d = t - Duration::from_micros(400);
        assert_eq!(arrival(Some(d), t), t - Duration::from_micros(200));
        // A drain time after `now` (clock oddity) falls back to now.
        assert_eq!(arrival(Some(t + Duration::from_micros(1)), t), t);
    }
}
