//! Prometheus metrics of the operator (prefix `pollen_operator_`).
//!
//! - `pollen_operator_reconciles_total{result}`: reconciles by result (`ok`, `error`);
//! - `pollen_operator_reconcile_duration_seconds`: reconcile duration, measured by a drop guard;
//! - `pollen_operator_rollouts{phase}`: rollouts by phase;
//! - `pollen_operator_rollout_nodes{rollout,phase}`: nodes by phase per rollout;
//! - `pollen_operator_rollout_bytes{rollout,source}`: bytes by source (`peer` or `origin`, the values the edge node uses) per rollout,
//!   summed from the EdgeNode statuses;
//! - `pollen_operator_csr_decisions_total{decision,reason}`: node certificate requests decided
//!   (`approve`, `deny`, `fail`) by condition reason;
//! - `pollen_operator_revoked_certificates`: serials in the fleet's revocation list;
//! - `pollen_operator_revocation_list_number`: the CRL number of the revocation list last written or read.
//!
//! Non-goals: no HTTP here (see [`crate::http`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pollen_crds::{NodeCounts, RolloutPhase};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    rollout: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByteLabels {
    rollout: String,
    source: String,
}

const PHASES: [RolloutPhase; 8] = [
    RolloutPhase::Pending,
    RolloutPhase::Resolving,
    RolloutPhase::Verifying,
    RolloutPhase::Indexing,
    RolloutPhase::Distributing,
    RolloutPhase::Paused,
    RolloutPhase::Complete,
    RolloutPhase::Failed,
];

/// The operator's metrics. Cheap to clone; clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    duration: Histogram,
    rollouts: Family<PhaseLabels, Gauge>,
    nodes: Family<NodeLabels, Gauge>,
    bytes: Family<ByteLabels, Gauge>,
    phases: Arc<Mutex<BTreeMap<String, RolloutPhase>>>,
    csr_decisions: Family<DecisionLabels, Counter>,
    revoked: Gauge,
    revocation_number: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            rollouts: Family::default(),
            nodes: Family::default(),
            bytes: Family::default(),
            phases: Arc::default(),
            csr_decisions: Family::default(),
            revoked: Gauge::default(),
            revocation_number: Gauge::default(),
        }
    }
}

fn phase_name(p: RolloutPhase) -> String {
    format!("{p:?}")
}

impl Metrics {
    /// Register every series in `registry` (give it the `pollen_operator` prefix).
    pub fn register(self, registry: &mut Registry) -> Self {
        registry.register(
            "reconciles",
            "Reconciles of UpdateRollouts by result",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one UpdateRollout reconcile",
            self.duration.clone(),
        );
        registry.register("rollouts", "UpdateRollouts by phase", self.rollouts.clone());
        registry.register(
            "rollout_nodes",
            "Targeted nodes by phase, per rollout",
            self.nodes.clone(),
        );
        registry.register(
            "rollout_bytes",
            "Bytes the nodes of a rollout received, by source (peer or origin)",
            self.bytes.clone(),
        );
        registry.register(
            "csr_decisions",
            "Node certificate signing requests decided, by decision and reason",
            self.csr_decisions.clone(),
        );
        registry.register(
            "revoked_certificates",
            "Certificate serials in the fleet's revocation list",
            self.revoked.clone(),
        );
        registry.register(
            "revocation_list_number",
            "CRL number of the fleet's revocation list",
            self.revocation_number.clone(),
        );
        for p in PHASES {
            self.rollouts
                .get_or_create(&PhaseLabels { phase: phase_name(p) })
                .set(0);
        }
        self
    }

    /// Count one decision on a node certificate request (`approve`, `deny` or `fail`).
    pub fn csr_decided(&self, decision: &str, reason: &str) {
        self.csr_decisions
            .get_or_create(&DecisionLabels {
                decision: decision.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// How many requests were decided so far with `decision` and `reason`.
    pub fn csr_decision_count(&self, decision: &str, reason: &str) -> u64 {
        self.csr_decisions
            .get_or_create(&DecisionLabels {
                decision: decision.into(),
                reason: reason.into(),
            })
            .get()
    }

    /// Record the revocation list's size and CRL number.
    pub fn observe_revocation_list(&self, number: u64, revoked: usize) {
        self.revocation_number.set(number as i64);
        self.revoked.set(revoked as i64);
    }

    /// The recorded CRL number and revoked-serial count.
    pub fn revocation_list(&self) -> (i64, i64) {
        (self.revocation_number.get(), self.revoked.get())
    }

    /// Start timing one reconcile; the duration is recorded when the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.clone(),
        }
    }

    /// Count one reconcile by its result.
    pub fn reconciled(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// How many reconciles ended with `result` so far.
    pub fn reconcile_count(&self, result: &str) -> u64 {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .get()
    }

    /// Record one rollout's phase, node counts and bytes.
    pub fn observe_rollout(
        &self,
        rollout: &str,
        phase: RolloutPhase,
        nodes: &NodeCounts,
        peers: i64,
        origin: i64,
    ) {
        {
            let mut phases = self.phases.lock().expect("metrics lock");
            phases.insert(rollout.to_string(), phase);
            self.publish_phases(&phases);
        }
        for (name, v) in [
            ("targeted", nodes.targeted),
            ("pending", nodes.pending),
            ("downloading", nodes.downloading),
            ("staged", nodes.staged),
            ("installed", nodes.installed),
            ("failed", nodes.failed),
            ("quarantined", nodes.quarantined),
        ] {
            self.nodes
                .get_or_create(&NodeLabels {
                    rollout: rollout.into(),
                    phase: name.into(),
                })
                .set(v as i64);
        }
        for (source, v) in [("peer", peers), ("origin", origin)] {
            self.bytes
                .get_or_create(&ByteLabels {
                    rollout: rollout.into(),
                    source: source.into(),
                })
                .set(v);
        }
    }

    /// Drop a deleted rollout's series.
    pub fn forget_rollout(&self, rollout: &str) {
        let mut phases = self.phases.lock().expect("metrics lock");
        phases.remove(rollout);
        self.publish_phases(&phases);
        for phase in [
            "targeted",
            "pending",
            "downloading",
            "staged",
            "installed",
            "failed",
            "quarantined",
        ] {
            self.nodes.remove(&NodeLabels {
                rollout: rollout.into(),
                phase: phase.into(),
            });
        }
        for source in ["peer", "origin"] {
            self.bytes.remove(&ByteLabels {
                rollout: rollout.into(),
                source: source.into(),
            });
        }
    }

    fn publish_phases(&self, phases: &BTreeMap<String, RolloutPhase>) {
        for p in PHASES {
            let n = phases.values().filter(|q| **q == p).count();
            self.rollouts
                .get_or_create(&PhaseLabels { phase: phase_name(p) })
                .set(n as i64);
        }
    }
}

/// Records the reconcile duration when dropped.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// Render a registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_the_prefix_and_follow_the_rollouts() {
        let mut registry = Registry::with_prefix("pollen_operator");
        let m = Metrics::default().register(&mut registry);
        m.reconciled(true);
        m.reconciled(false);
        m.reconciled(true);
        drop(m.reconcile_timer());
        let counts = NodeCounts {
            targeted: 3,
            pending: 1,
            downloading: 0,
            staged: 0,
            installed: 2,
            failed: 0,
            quarantined: 0,
        };
        m.observe_rollout("ns/a", RolloutPhase::Distributing, &counts, 700, 300);
        m.observe_rollout("ns/b", RolloutPhase::Distributing, &counts, 0, 0);
        m.observe_rollout("ns/b", RolloutPhase::Complete, &counts, 0, 0);
        let text = encode(&registry);
        assert!(
            text.contains("pollen_operator_reconciles_total{result=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("pollen_operator_reconciles_total{result=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pollen_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("pollen_operator_rollouts{phase=\"Distributing\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pollen_operator_rollouts{phase=\"Complete\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pollen_operator_rollout_nodes{rollout=\"ns/a\",phase=\"installed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("pollen_operator_rollout_bytes{rollout=\"ns/a\",source=\"peer\"} 700"),
            "{text}"
        );
        m.forget_rollout("ns/a");
        let text = encode(&registry);
        assert!(!text.contains("rollout=\"ns/a\""), "{text}");
        assert!(
            text.contains("pollen_operator_rollouts{phase=\"Distributing\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn identity_series_are_registered_and_move() {
        let mut registry = Registry::with_prefix("pollen_operator");
        let m = Metrics::default().register(&mut registry);
        let text = encode(&registry);
        assert!(text.contains("pollen_operator_revoked_certificates 0"), "{text}");
        assert!(
            text.contains("pollen_operator_revocation_list_number 0"),
            "{text}"
        );
        m.csr_decided("approve", "NodeIdentityVerified");
        m.csr_decided("deny", "NodeMismatch");
        m.csr_decided("deny", "NodeMismatch");
        m.observe_revocation_list(4, 3);
        let text = encode(&registry);
        assert!(
            text.contains("pollen_operator_csr_decisions_total{decision=\"deny\",reason=\"NodeMismatch\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "pollen_operator_csr_decisions_total{decision=\"approve\",reason=\"NodeIdentityVerified\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("pollen_operator_revoked_certificates 3"), "{text}");
        assert!(
            text.contains("pollen_operator_revocation_list_number 4"),
            "{text}"
        );
        assert_eq!(m.revocation_list(), (4, 3));
    }
}
