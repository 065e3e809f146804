//! Token-bucket rate limits for upload and download: a pure bucket plus a small async wrapper.
//!
//! Non-goals: fairness between flows (QUIC's congestion control and the upload slots handle sharing).

use std::sync::Mutex;
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

/// An optional shared limiter: `None` rate means unlimited.
#[derive(Debug)]
pub struct Limiter {
    bucket: Option<Mutex<TokenBucket>>,
    epoch: Instant,
}

impl Limiter {
    /// A limiter at `rate` bytes/s (burst of a quarter second, at least 256 KiB), or unlimited.
    pub fn new(rate: Option<u64>) -> Self {
        Limiter {
            bucket: rate
                .filter(|r| *r > 0)
                .map(|r| Mutex::new(TokenBucket::new(r, (r / 4).max(256 * 1024)))),
            epoch: Instant::now(),
        }
    }

    /// Waits until `n` bytes may pass.
    pub async fn acquire(&self, n: usize) {
        let Some(b) = &self.bucket else { return };
        let wait = b
            .lock()
            .expect("limiter lock")
            .take(n as u64, self.epoch.elapsed());
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
}
