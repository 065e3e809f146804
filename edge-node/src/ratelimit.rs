//! Token-bucket rate limits for upload and download: a pure bucket plus a small async wrapper.
//!
//! Non-goals: fairness between flows (QUIC's congestion control and the upload slots handle sharing).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A token bucket over bytes. Pure: callers pass the time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// `rate` bytes per second with `burst` bytes of depth; starts full.
    pub fn new(rate: u64, burst: u64) -> Self {
        TokenBucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Duration::ZERO,
        }
    }

    /// Changes the rate and depth at time `now`: tokens earned so far are kept at the old rate (up to
    /// the new depth), and debt already taken stays to be paid at the new rate.
    pub fn set_rate(&mut self, rate: u64, burst: u64, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.rate = rate as f64;
        self.burst = burst as f64;
        self.tokens = self.tokens.min(self.burst);
    }

    /// Takes `n` bytes at time `now` (tokens may go negative) and returns how long the caller must wait
    /// before sending them.
    pub fn take(&mut self, n: u64, now: Duration) -> Duration {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Upload and download limits in bytes per second (`None`: unlimited), as a caller may change them
/// while an engine runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Upload limit.
    pub upload: Option<u64>,
    /// Download limit.
    pub download: Option<u64>,
}

/// A shared limiter whose rate may change: `None` rate means unlimited.
#[derive(Debug)]
pub struct Limiter {
    bucket: Mutex<Option<TokenBucket>>,
    /// Whether `bucket` holds a bucket: unlimited transfers pass without taking the lock.
    limited: AtomicBool,
    epoch: Instant,
}

/// A quarter second of depth, at least 256 KiB.
fn burst(rate: u64) -> u64 {
    (rate / 4).max(256 * 1024)
}

impl Limiter {
    /// A limiter at `rate` bytes/s (burst of a quarter second, at least 256 KiB), or unlimited.
    pub fn new(rate: Option<u64>) -> Self {
        let bucket = rate.filter(|r| *r > 0).map(|r| TokenBucket::new(r, burst(r)));
        Limiter {
            limited: AtomicBool::new(bucket.is_some()),
            bucket: Mutex::new(bucket),
            epoch: Instant::now(),
        }
    }

    /// Changes the rate from now on (`None` or zero: unlimited). Senders already waiting finish their
    /// wait; the next ones pace at the new rate.
    pub fn set_rate(&self, rate: Option<u64>) {
        let now = self.epoch.elapsed();
        let mut b = self.bucket.lock().expect("limiter lock");
        match (b.as_mut(), rate.filter(|r| *r > 0)) {
            (Some(cur), Some(r)) => cur.set_rate(r, burst(r), now),
            (None, Some(r)) => {
                let mut fresh = TokenBucket::new(r, burst(r));
                fresh.last = now;
                *b = Some(fresh);
            }
            (_, None) => *b = None,
        }
        self.limited.store(b.is_some(), Ordering::Release);
    }

    /// Waits until `n` bytes may pass.
    pub async fn acquire(&self, n: usize) {
        if !self.limited.load(Ordering::Acquire) {
            return;
        }
        let wait = match self.bucket.lock().expect("limiter lock").as_mut() {
            Some(b) => b.take(n as u64, self.epoch.elapsed()),
            None => return,
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_the_rate() {
        let mut b = TokenBucket::new(1000, 500);
        assert_eq!(
            b.take(500, Duration::ZERO),
            Duration::ZERO,
            "burst passes at once"
        );
        assert_eq!(b.take(1000, Duration::ZERO), Duration::from_secs(1));
        // One second later the debt is paid; half a second more gives 500 tokens.
        assert_eq!(b.take(500, Duration::from_millis(1500)), Duration::ZERO);
        // Tokens never exceed the burst, however long it idles.
        assert_eq!(b.take(600, Duration::from_secs(100)), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_waits() {
        let l = Limiter::new(Some(1_000_000));
        let t = tokio::time::Instant::now();
        l.acquire(256 * 1024).await;
        l.acquire(1_000_000).await;
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(900), "{waited:?}");
        let unlimited = Limiter::new(None);
        let t = tokio::time::Instant::now();
        unlimited.acquire(usize::MAX).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[test]
    fn a_new_rate_keeps_earned_tokens_and_debt() {
        let mut b = TokenBucket::new(1000, 1000);
        assert_eq!(b.take(3000, Duration::ZERO), Duration::from_secs(2));
        // Half a second later the debt is 1500 bytes; at 3000 B/s it is paid in half a second.
        b.set_rate(3000, 3000, Duration::from_millis(500));
        assert_eq!(b.take(0, Duration::from_millis(500)), Duration::from_millis(500));
        // Tokens earned at the old rate are cut to the new, smaller depth.
        let mut b = TokenBucket::new(1000, 1000);
        b.set_rate(10, 100, Duration::from_secs(5));
        assert_eq!(b.take(100, Duration::from_secs(5)), Duration::ZERO);
        assert_eq!(b.take(10, Duration::from_secs(5)), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limiter_changes_rate_and_turns_on_and_off() {
        let l = Limiter::new(None);
        let t = tokio::time::Instant::now();
        l.acquire(10_000_000).await;
        assert_eq!(t.elapsed(), Duration::ZERO, "unlimited at first");
        l.set_rate(Some(1_000_000));
        let t = tokio::time::Instant::now();
        l.acquire(256 * 1024).await; // the burst
        l.acquire(1_000_000).await;
        assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());
        l.set_rate(None);
        let t = tokio::time::Instant::now();
        l.acquire(usize::MAX).await;
        assert_eq!(t.elapsed(), Duration::ZERO, "unlimited again");
    }
}
