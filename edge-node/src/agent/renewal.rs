//! When to renew the node certificate: pure schedule arithmetic, no clock and no I/O.
//!
//! A certificate is renewed at two thirds of its lifetime, which leaves a third of it (8 h of the
//! default 24 h) to retry through an unreachable API server or a busy signer. A certificate whose
//! serial is on the fleet's revocation list is replaced at once. Failed attempts back off
//! exponentially up to a cap.
//!
//! Non-goals: jitter across the fleet (issuance times already spread the renewals), and deciding
//! whether to trust a certificate (the TLS verifiers do).

use std::time::{Duration, SystemTime};

/// The moment to renew a certificate valid from `not_before` to `not_after`: two thirds into its lifetime.
///
/// A certificate with an empty or inverted validity is due at `not_before`.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    match not_after.duration_since(not_before) {
        Ok(life) => {
            let n = life.as_nanos() * 2 / 3;
            let secs = u64::try_from(n / 1_000_000_000).unwrap_or(u64::MAX);
            not_before
                .checked_add(Duration::new(secs, (n % 1_000_000_000) as u32))
                .unwrap_or(not_after)
        }
        Err(_) => not_before,
    }
}

/// How long to wait, from `now`, before the next issuance for a certificate valid from `not_before` to
/// `not_after`; zero when it is due or when its serial is revoked.
pub fn delay_until_renewal(
    now: SystemTime,
    not_before: SystemTime,
    not_after: SystemTime,
    revoked: bool,
) -> Duration {
    if revoked {
        return Duration::ZERO;
    }
    renew_at(not_before, not_after)
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
}

/// Exponential backoff between failed issuance attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt (each call doubles the following one, up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    /// 5 s doubling to 5 min.
    fn default() -> Self {
        Self::new(Duration::from_secs(5), Duration::from_secs(300))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        assert_eq!(renew_at(t(0), t(24 * H)), t(16 * H));
        assert_eq!(renew_at(t(100), t(100 + 3 * H)), t(100 + 2 * H));
        // Ten minutes (the shortest lifetime the signer grants): renewed after 400 s.
        assert_eq!(renew_at(t(0), t(600)), t(400));
        // Not a multiple of three: no overflow, within a nanosecond of the exact point.
        let at = renew_at(t(0), t(0) + Duration::from_nanos(10));
        assert_eq!(at, t(0) + Duration::from_nanos(6));
    }

    #[test]
    fn an_inverted_validity_is_due_at_once() {
        assert_eq!(renew_at(t(10), t(5)), t(10));
        assert_eq!(renew_at(t(10), t(10)), t(10));
    }

    #[test]
    fn the_delay_counts_from_now_and_is_zero_when_due_or_revoked() {
        let (nb, na) = (t(0), t(24 * H));
        assert_eq!(
            delay_until_renewal(t(H), nb, na, false),
            Duration::from_secs(15 * H)
        );
        assert_eq!(delay_until_renewal(t(16 * H), nb, na, false), Duration::ZERO);
        assert_eq!(delay_until_renewal(t(20 * H), nb, na, false), Duration::ZERO);
        assert_eq!(delay_until_renewal(t(H), nb, na, true), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(30));
        let seq: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(seq, vec![5, 10, 20, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(5));
    }
}
