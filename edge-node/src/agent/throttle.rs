//! When the agent writes its EdgeNode status: on every phase change at once, and
//! progress at most every `progress_interval` (default 10 s), plus a heartbeat.
//!
//! Pure logic, no clock of its own: the caller passes `now`.
//!
//! # Write rate at 1,000 nodes
//! Every write is one server-side-apply PATCH of the node's own `/status`.
//! - Heartbeat every 60 s with nothing to report: 1,000 / 60 ≈ 17 writes/s.
//! - While a wave downloads, each downloading node writes progress at most every 10 s
//!   (`progress_interval`), and the heartbeat is folded into those writes: at most
//!   1,000 / 10 = 100 writes/s if the whole fleet downloads at once (a single wave
//!   with every node), less in practice because waves stagger the fleet.
//! - Phase changes (Pending → Verifying → Downloading → Installing → Installed) add
//!   about 5 writes per node per rollout, spread over the rollout.
//!
//! A kube-apiserver handles a few hundred small PATCHes per second comfortably;
//! fleets much larger than 1,000 nodes should raise `progress_interval` (the flag
//! `--status-interval`), and the interval is also stretched by a per-node jitter so
//! that nodes that started together do not write together.

use std::time::{Duration, Instant};

use pollen_crds::AssignmentPhase;

/// Decides whether a status write is due.
#[derive(Debug, Clone)]
pub struct ReportThrottle {
    progress_interval: Duration,
    heartbeat_interval: Duration,
    last_write: Option<Instant>,
    last_phases: Vec<(String, AssignmentPhase)>,
}

impl ReportThrottle {
    /// A throttle writing progress at most every `progress_interval` and a heartbeat every
    /// `heartbeat_interval`.
    pub fn new(progress_interval: Duration, heartbeat_interval: Duration) -> Self {
        Self {
            progress_interval,
            heartbeat_interval,
            last_write: None,
            last_phases: Vec::new(),
        }
    }

    /// Whether to write now, given each assignment's current phase (by rollout) and whether any
    /// progress counter moved since the last write.
    pub fn due(&self, now: Instant, phases: &[(String, AssignmentPhase)], progressed: bool) -> bool {
        let Some(last) = self.last_write else { return true };
        if phases != self.last_phases.as_slice() {
            return true;
        }
        let since = now.saturating_duration_since(last);
        (progressed && since >= self.progress_interval) || since >= self.heartbeat_interval
    }

    /// Record that a write with these phases happened at `now`.
    pub fn wrote(&mut self, now: Instant, phases: &[(String, AssignmentPhase)]) {
        self.last_write = Some(now);
        self.last_phases = phases.to_vec();
    }
}

/// A per-node jitter (0–20 % of `interval`) derived from the node name, so that a fleet
/// started together spreads its writes.
pub fn jittered(interval: Duration, node_name: &str) -> Duration {
    let h = blake3::hash(node_name.as_bytes());
    let frac = u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]]) as f64 / u16::MAX as f64;
    interval + interval.mul_f64(0.2 * frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(phase: AssignmentPhase) -> Vec<(String, AssignmentPhase)> {
        vec![("default/r".to_string(), phase)]
    }

    #[test]
    fn first_write_is_always_due() {
        let t = ReportThrottle::new(Duration::from_secs(10), Duration::from_secs(60));
        assert!(t.due(Instant::now(), &p(AssignmentPhase::Pending), false));
    }

    #[test]
    fn phase_changes_write_at_once_progress_waits_for_the_interval() {
        let mut t = ReportThrottle::new(Duration::from_secs(10), Duration::from_secs(60));
        let t0 = Instant::now();
        t.wrote(t0, &p(AssignmentPhase::Downloading));
        assert!(!t.due(
            t0 + Duration::from_secs(3),
            &p(AssignmentPhase::Downloading),
            true
        ));
        assert!(t.due(
            t0 + Duration::from_secs(3),
            &p(AssignmentPhase::Installing),
            false
        ));
        assert!(t.due(
            t0 + Duration::from_secs(10),
            &p(AssignmentPhase::Downloading),
            true
        ));
        // No progress: only the heartbeat is due.
        assert!(!t.due(
            t0 + Duration::from_secs(30),
            &p(AssignmentPhase::Downloading),
            false
        ));
        assert!(t.due(
            t0 + Duration::from_secs(60),
            &p(AssignmentPhase::Downloading),
            false
        ));
    }

    #[test]
    fn a_thousand_nodes_write_at_most_a_hundred_times_a_second_while_downloading() {
        // Simulate 1,000 nodes downloading for 120 s with progress every second of simulated time.
        let t0 = Instant::now();
        let mut writes = 0u32;
        for n in 0..1000 {
            let name = format!("node-{n}");
            let mut t =
                ReportThrottle::new(jittered(Duration::from_secs(10), &name), Duration::from_secs(60));
            let phases = p(AssignmentPhase::Downloading);
            for s in 0..120 {
                let now = t0 + Duration::from_secs(s);
                if t.due(now, &phases, true) {
                    t.wrote(now, &phases);
                    writes += 1;
                }
            }
        }
        let per_second = f64::from(writes) / 120.0;
        assert!(per_second <= 100.0, "{per_second} writes/s");
        assert!(
            per_second >= 50.0,
            "progress must still be reported ({per_second} writes/s)"
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_differs_between_nodes() {
        let base = Duration::from_secs(10);
        let a = jittered(base, "node-a");
        let b = jittered(base, "node-b");
        for j in [a, b] {
            assert!(j >= base && j <= base.mul_f64(1.2));
        }
        assert_ne!(a, b);
    }
}
