//! Rollout progress: EdgeNode statuses aggregated into the rollout status, the success and failure
//! thresholds, user pauses, conflicts between rollouts, and the phase machine that decides whether
//! the rollout holds, advances, completes or halts.
//!
//! Everything here is pure: the controller gathers observations, calls [`next`], and acts on the
//! [`Decision`]. Time is an argument, so every transition is tested deterministically.
//!
//! Semantics, in one place:
//! - A node counts as **failed** when its assignment status for the current chunk index is `Failed`
//!   or `RolledBack`.
//! - A **quarantined** node (label `pollen.dev/quarantine=true`) is out of the rollout: not targeted,
//!   not failed, so cutting off a compromised device never fails or holds the rollouts it was in.
//!   Quarantined nodes are named in the condition message, so `kubectl describe` says why.
//! - What a node reports moves only its own entry: its byte counters count at most the payload's size
//!   (see [`plausible_bytes`]), its error is quoted, never acted on.
//! - A status about another (superseded) chunk index counts as **pending** for the current one.
//! - A wave **meets its success threshold** when `installed × 100 ≥ successThresholdPercent ×
//!   targeted`; an empty wave meets it at once and has no pause.
//! - The rollout **halts** when more nodes failed than `failureThreshold` (over the whole rollout):
//!   `onFailure: Fail` ends it in `Failed` (terminal for this generation; edit the spec to retry);
//!   `onFailure: Pause` holds it in `Paused` until the failures drop to the threshold again (a node
//!   recovers, or the user raises the threshold).
//! - `paused: true` stops the rollout at the next wave boundary: nodes already assigned keep going.
//! - The rollout is **complete** when the last wave meets its success threshold.
//!
//! Non-goals: no I/O, no Kubernetes client, no planning (see [`crate::planner`]).

use std::time::Duration;

use jiff::Timestamp;
use pollen_crds::conditions::reasons;
use pollen_crds::rollout::FailureAction;
use pollen_crds::{AssignmentPhase, AssignmentStatus, NodeCounts, RolloutPhase, RolloutStrategy, WaveStatus};

use crate::planner::{self, PlanError};

/// A spec the operator cannot act on, beyond what the schema rejects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The wave list is not valid.
    #[error(transparent)]
    Waves(#[from] PlanError),
    /// A wave's pause is not a duration.
    #[error("wave {index} has an unparsable pause {value:?} (expected e.g. 30s, 10m, 1h30m)")]
    UnparsablePause {
        /// The wave's index, from 0.
        index: usize,
        /// The pause as written.
        value: String,
    },
    /// A threshold is out of range.
    #[error("{field} is out of range: {value}")]
    ThresholdOutOfRange {
        /// The field's name.
        field: &'static str,
        /// The value as written.
        value: i32,
    },
}

/// The strategy of a rollout, checked and parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Percentage of a wave that must be installed before the next wave starts.
    pub success_percent: u32,
    /// How many failed nodes the rollout tolerates.
    pub failure_threshold: u32,
    /// What crossing the failure threshold does.
    pub on_failure: FailureAction,
    /// Whether the user paused the rollout.
    pub paused: bool,
    /// The pause after each wave (one entry per wave; at least one entry).
    pub pauses: Vec<Duration>,
}

impl Gate {
    /// Check and parse a strategy.
    pub fn from_strategy(s: &RolloutStrategy) -> Result<Self, SpecError> {
        planner::wave_sizes(&s.waves)?;
        if !(1..=100).contains(&s.success_threshold_percent) {
            return Err(SpecError::ThresholdOutOfRange {
                field: "successThresholdPercent",
                value: s.success_threshold_percent,
            });
        }
        if s.failure_threshold < 0 {
            return Err(SpecError::ThresholdOutOfRange {
                field: "failureThreshold",
                value: s.failure_threshold,
            });
        }
        let mut pauses = Vec::with_capacity(s.waves.len().max(1));
        for (index, w) in s.waves.iter().enumerate() {
            pauses.push(match &w.pause {
                None => Duration::ZERO,
                Some(p) => pollen_crds::duration::parse(p).map_err(|_| SpecError::UnparsablePause {
                    index,
                    value: p.clone(),
                })?,
            });
        }
        if pauses.is_empty() {
            pauses.push(Duration::ZERO);
        }
        Ok(Self {
            success_percent: s.success_threshold_percent as u32,
            failure_threshold: s.failure_threshold as u32,
            on_failure: s.on_failure,
            paused: s.paused,
            pauses,
        })
    }

    /// How many waves the rollout has.
    pub fn wave_count(&self) -> u32 {
        self.pauses.len() as u32
    }
}

/// Where one targeted node stands, for the current chunk index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Not assigned yet (its wave has not started).
    Unassigned,
    /// Assigned, not started (or still reporting on a superseded index).
    Pending,
    /// Verifying, downloading or installing.
    Downloading,
    /// Holds the verified payload and waits for the activation window.
    Staged,
    /// Installed and active.
    Installed,
    /// Failed or rolled back.
    Failed,
    /// Quarantined (label `pollen.dev/quarantine=true`): excluded from the rollout, gets no assignment.
    Quarantined,
}

/// Whether an object's labels quarantine it: `pollen.dev/quarantine` set to `"true"` in any case
/// (`True`, `TRUE` quarantine too: a cut-off must not fail on spelling).
pub fn is_quarantined(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels
        .get(pollen_crds::labels::QUARANTINE)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The value of a `pollen.dev/quarantine` label that neither quarantines nor clearly lifts a
/// quarantine (anything but `true`/`false` in any case), to warn about.
pub fn unclear_quarantine(labels: &std::collections::BTreeMap<String, String>) -> Option<&str> {
    labels
        .get(pollen_crds::labels::QUARANTINE)
        .map(String::as_str)
        .filter(|v| !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false"))
}

/// How many quarantined nodes a condition message names before it says "and N more".
pub const QUARANTINE_NAMES_SHOWN: usize = 10;

/// A byte counter a node reports, as the operator counts it: at least 0 and at most `size`, the
/// payload's size (no node receives more than one payload for one chunk index; a node claiming more
/// would drain the rollout's origin budget or inflate its totals). `size` 0 (not known yet): 0.
pub fn plausible_bytes(reported: i64, size: u64) -> u64 {
    (reported.max(0) as u64).min(size)
}

/// Read one node's state from its assignment status.
pub fn node_state(
    assigned: bool,
    status: Option<&AssignmentStatus>,
    chunk_index: &str,
    quarantined: bool,
) -> NodeState {
    if quarantined {
        return NodeState::Quarantined;
    }
    if !assigned {
        return NodeState::Unassigned;
    }
    match status.filter(|s| s.chunk_index == chunk_index).map(|s| s.phase) {
        None | Some(AssignmentPhase::Pending) => NodeState::Pending,
        Some(AssignmentPhase::Verifying | AssignmentPhase::Downloading | AssignmentPhase::Installing) => {
            NodeState::Downloading
        }
        Some(AssignmentPhase::Staged) => NodeState::Staged,
        Some(AssignmentPhase::Installed) => NodeState::Installed,
        Some(AssignmentPhase::Failed | AssignmentPhase::RolledBack) => NodeState::Failed,
    }
}

/// One targeted node, as the controller observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeObservation {
    /// The EdgeNode's name.
    pub name: String,
    /// The node's wave.
    pub wave: u32,
    /// Its state for the current chunk index.
    pub state: NodeState,
    /// Bytes it received from peers (for the current index).
    pub bytes_from_peers: i64,
    /// Bytes it received from the origin (for the current index).
    pub bytes_from_origin: i64,
    /// The error it reports for the current index, when it failed (its own words: shown, never acted on).
    pub last_error: Option<String>,
}

/// How many failed nodes a condition message names, and how much of each one's error it quotes.
const FAILURES_SHOWN: usize = 3;
const FAILURE_QUOTE: usize = 240;

/// The rollout-wide view of its nodes.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Aggregate {
    /// Node counts by phase.
    pub nodes: NodeCounts,
    /// Per-wave progress.
    pub waves: Vec<WaveStatus>,
    /// Bytes from peers, summed.
    pub bytes_from_peers: i64,
    /// Bytes from the origin, summed.
    pub bytes_from_origin: i64,
    /// The quarantined nodes (excluded: counted in `nodes.quarantined` only), in observation order.
    pub quarantined: Vec<String>,
    /// Failed nodes that said why, with (the start of) their error, in observation order.
    pub failures: Vec<(String, String)>,
}

impl Aggregate {
    /// Why some failed nodes failed, for condition messages: empty without quarantined nodes, else
    /// `"; N node(s) quarantined (pollen.dev/quarantine=true): a, b"`.
    pub fn quarantine_note(&self) -> String {
        if self.quarantined.is_empty() {
            return String::new();
        }
        let mut names: Vec<&str> = self.quarantined.iter().map(String::as_str).collect();
        names.sort_unstable();
        let shown = names
            .iter()
            .take(QUARANTINE_NAMES_SHOWN)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let more = names.len().saturating_sub(QUARANTINE_NAMES_SHOWN);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!(
            "; {} node(s) quarantined ({}=true), excluded: {shown}{more}",
            names.len(),
            pollen_crds::labels::QUARANTINE
        )
    }

    /// Why nodes failed, in their own words, for condition messages: empty when none said, else
    /// `"; node a failed: <error>; node b failed: <error>"` for the first few (each error cut short).
    pub fn failure_note(&self) -> String {
        let mut out = String::new();
        for (node, error) in self.failures.iter().take(FAILURES_SHOWN) {
            let mut e: String = error.chars().take(FAILURE_QUOTE).collect();
            if e.len() < error.len() {
                e.push('…');
            }
            out.push_str(&format!("; node {node} failed: {e}"));
        }
        let more = self.failures.len().saturating_sub(FAILURES_SHOWN);
        if more > 0 {
            out.push_str(&format!("; and {more} more failed node(s)"));
        }
        out
    }

    /// `installed/targeted`.
    pub fn progress(&self) -> String {
        format!("{}/{}", self.nodes.installed, self.nodes.targeted)
    }

    /// The share of bytes that came from peers, as a whole percentage (`-` before any byte moved).
    pub fn offload(&self) -> String {
        let total = self.bytes_from_peers.saturating_add(self.bytes_from_origin);
        if total <= 0 {
            return "-".into();
        }
        format!("{}%", (self.bytes_from_peers as i128 * 100 / total as i128))
    }
}

/// Sum node observations into counts and per-wave progress. Waves up to `current_wave` are started.
pub fn aggregate(obs: &[NodeObservation], wave_count: u32, current_wave: u32) -> Aggregate {
    let mut a = Aggregate {
        waves: (0..wave_count.max(1))
            .map(|i| WaveStatus {
                index: i as i32,
                started: i <= current_wave,
                ..WaveStatus::default()
            })
            .collect(),
        ..Aggregate::default()
    };
    for o in obs {
        if o.state == NodeState::Quarantined {
            a.nodes.quarantined += 1;
            a.quarantined.push(o.name.clone());
            continue;
        }
        a.nodes.targeted += 1;
        let w = &mut a.waves[(o.wave as usize).min(wave_count.max(1) as usize - 1)];
        w.targeted += 1;
        match o.state {
            NodeState::Unassigned | NodeState::Pending => a.nodes.pending += 1,
            NodeState::Downloading => a.nodes.downloading += 1,
            NodeState::Staged => a.nodes.staged += 1,
            NodeState::Installed => {
                a.nodes.installed += 1;
                w.installed += 1;
            }
            NodeState::Failed => {
                a.nodes.failed += 1;
                w.failed += 1;
                if let Some(e) = o.last_error.as_deref().filter(|e| !e.is_empty()) {
                    a.failures.push((o.name.clone(), e.to_string()));
                }
            }
            NodeState::Quarantined => {} // counted above, outside any wave
        }
        a.bytes_from_peers = a.bytes_from_peers.saturating_add(o.bytes_from_peers.max(0));
        a.bytes_from_origin = a.bytes_from_origin.saturating_add(o.bytes_from_origin.max(0));
    }
    a
}

/// The distribution state carried in the rollout status between reconciles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistState {
    /// The phase recorded in the status.
    pub phase: RolloutPhase,
    /// The wave being delivered.
    pub current_wave: u32,
    /// When the current wave met its success threshold.
    pub wave_completed_at: Option<Timestamp>,
    /// Whether the recorded status describes the current generation (a terminal phase is kept only then).
    pub same_generation: bool,
}

/// What the rollout does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The new phase.
    pub phase: RolloutPhase,
    /// The wave to deliver (waves up to it get assignments).
    pub current_wave: u32,
    /// When the current wave met its success threshold.
    pub wave_completed_at: Option<Timestamp>,
    /// The condition reason that explains the phase.
    pub reason: &'static str,
    /// A human-readable explanation.
    pub message: String,
    /// When to look again even if nothing changes (a pause running out).
    pub requeue_after: Option<Duration>,
}

fn wave_met(w: &WaveStatus, success_percent: u32) -> bool {
    w.targeted == 0 || (w.installed as i64) * 100 >= (success_percent as i64) * (w.targeted as i64)
}

/// The phase machine of a distributing rollout.
///
/// Called with the aggregate for the plan as it will stand once the assignments of waves up to
/// `state.current_wave` are written. When the decision advances the wave, the controller writes the
/// next wave's assignments, aggregates again and calls `next` once more (an empty wave advances at
/// once), so one reconcile can cross several boundaries.
///
/// Quarantined nodes are out of the rollout; every message then names them and the label that put
/// them there (see [`Aggregate::quarantine_note`]), and the first failed nodes with their own errors
/// ([`Aggregate::failure_note`]): a registry that refuses the nodes' credential shows on the rollout.
pub fn next(state: &DistState, agg: &Aggregate, gate: &Gate, now: Timestamp) -> Decision {
    let mut d = decide(state, agg, gate, now);
    d.message.push_str(&agg.quarantine_note());
    d.message.push_str(&agg.failure_note());
    d
}

fn decide(state: &DistState, agg: &Aggregate, gate: &Gate, now: Timestamp) -> Decision {
    let last = gate.wave_count() - 1;
    let w = state.current_wave.min(last);
    let hold = |phase, reason, message: String, requeue_after| Decision {
        phase,
        current_wave: w,
        wave_completed_at: state.wave_completed_at,
        reason,
        message,
        requeue_after,
    };
    if state.same_generation && matches!(state.phase, RolloutPhase::Complete | RolloutPhase::Failed) {
        let reason = if state.phase == RolloutPhase::Complete {
            reasons::ALL_NODES_INSTALLED
        } else {
            reasons::FAILURE_THRESHOLD_CROSSED
        };
        return hold(
            state.phase,
            reason,
            format!("{} (terminal until the spec changes)", agg.progress()),
            None,
        );
    }
    let failed = agg.nodes.failed.max(0) as u32;
    if failed > gate.failure_threshold {
        let msg = format!(
            "{failed} node(s) failed, more than the failure threshold of {}",
            gate.failure_threshold
        );
        return match gate.on_failure {
            FailureAction::Fail => hold(
                RolloutPhase::Failed,
                reasons::FAILURE_THRESHOLD_CROSSED,
                msg,
                None,
            ),
            FailureAction::Pause => hold(
                RolloutPhase::Paused,
                reasons::FAILURE_THRESHOLD_CROSSED,
                format!("{msg}; paused until failures drop to the threshold"),
                None,
            ),
        };
    }
    let ws = agg.waves.get(w as usize).cloned().unwrap_or_default();
    if !wave_met(&ws, gate.success_percent) {
        let mut msg = format!(
            "wave {w}: {}/{} installed, {}% needed",
            ws.installed, ws.targeted, gate.success_percent
        );
        if gate.paused {
            msg.push_str("; paused: no new wave starts after this one");
        }
        return Decision {
            wave_completed_at: None,
            ..hold(RolloutPhase::Distributing, reasons::WAVE_IN_PROGRESS, msg, None)
        };
    }
    if w == last {
        let reason = if agg.nodes.installed == agg.nodes.targeted {
            reasons::ALL_NODES_INSTALLED
        } else {
            reasons::SUCCESS_THRESHOLD_MET
        };
        return Decision {
            wave_completed_at: Some(state.wave_completed_at.unwrap_or(now)),
            ..hold(
                RolloutPhase::Complete,
                reason,
                format!("{} nodes installed", agg.progress()),
                None,
            )
        };
    }
    let completed_at = state.wave_completed_at.unwrap_or(now);
    let pause = if ws.targeted == 0 {
        Duration::ZERO
    } else {
        gate.pauses[w as usize]
    };
    let elapsed = now.duration_since(completed_at);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    if elapsed < pause {
        let left = pause - elapsed;
        return Decision {
            wave_completed_at: Some(completed_at),
            ..hold(
                RolloutPhase::Distributing,
                reasons::WAVE_PAUSE,
                format!("wave {w} met its threshold; next wave in {}s", left.as_secs()),
                Some(left),
            )
        };
    }
    if gate.paused {
        return Decision {
            wave_completed_at: Some(completed_at),
            ..hold(
                RolloutPhase::Paused,
                reasons::PAUSED_BY_USER,
                format!("paused by the user after wave {w}; set spec.strategy.paused=false to go on"),
                None,
            )
        };
    }
    Decision {
        phase: RolloutPhase::Distributing,
        current_wave: w + 1,
        wave_completed_at: None,
        reason: reasons::WAVE_IN_PROGRESS,
        message: format!("wave {w} done; starting wave {}", w + 1),
        requeue_after: None,
    }
}

/// A rollout as another rollout's conflict check sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name`.
    pub key: String,
    /// Its creation time.
    pub created: Timestamp,
    /// Its install path.
    pub target_path: String,
    /// The EdgeNodes it selects.
    pub nodes: std::collections::BTreeSet<String>,
    /// Whether it has finished (`Complete` or `Failed`); a finished rollout blocks nobody.
    pub finished: bool,
}

impl Claim {
    fn age_key(&self) -> (Timestamp, &str) {
        (self.created, &self.key)
    }
}

/// The older rollout that blocks `me`, if any: same install path, overlapping nodes, not finished,
/// and older (by creation time, then by `namespace/name`). The oldest blocker is returned.
pub fn blocker<'a>(me: &Claim, others: &'a [Claim]) -> Option<&'a Claim> {
    others
        .iter()
        .filter(|o| o.key != me.key && !o.finished && o.target_path == me.target_path)
        .filter(|o| o.age_key() < me.age_key())
        .filter(|o| !o.nodes.is_disjoint(&me.nodes))
        .min_by(|a, b| a.age_key().cmp(&b.age_key()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_crds::Wave;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn strategy(waves: Vec<Wave>) -> RolloutStrategy {
        RolloutStrategy {
            waves,
            ..RolloutStrategy::default()
        }
    }
    fn count(c: i32, pause: Option<&str>) -> Wave {
        Wave {
            count: Some(c),
            percent: None,
            pause: pause.map(Into::into),
        }
    }

    /// Nodes per wave, each given as a list of states.
    fn agg(waves: &[&[NodeState]], current: u32) -> Aggregate {
        let mut obs = Vec::new();
        for (w, states) in waves.iter().enumerate() {
            for (i, s) in states.iter().enumerate() {
                obs.push(NodeObservation {
                    name: format!("w{w}-n{i}"),
                    wave: w as u32,
                    state: *s,
                    bytes_from_peers: 30,
                    bytes_from_origin: 10,
                    last_error: None,
                });
            }
        }
        aggregate(&obs, waves.len() as u32, current)
    }

    fn state(phase: RolloutPhase, wave: u32, completed: Option<Timestamp>) -> DistState {
        DistState {
            phase,
            current_wave: wave,
            wave_completed_at: completed,
            same_generation: true,
        }
    }

    use NodeState::*;

    #[test]
    fn node_state_reads_only_the_current_index() {
        let st = AssignmentStatus {
            rollout: "ns/r".into(),
            chunk_index: "old@sha256:1".into(),
            phase: AssignmentPhase::Installed,
            ..AssignmentStatus::default()
        };
        assert_eq!(node_state(true, Some(&st), "new@sha256:2", false), Pending);
        assert_eq!(node_state(true, Some(&st), "old@sha256:1", false), Installed);
        assert_eq!(node_state(true, Some(&st), "old@sha256:1", true), Quarantined);
        assert_eq!(node_state(false, None, "x", true), Quarantined);
        assert_eq!(node_state(false, None, "x", false), Unassigned);
        let rb = AssignmentStatus {
            phase: AssignmentPhase::RolledBack,
            ..st.clone()
        };
        assert_eq!(node_state(true, Some(&rb), "old@sha256:1", false), Failed);
        let staged = AssignmentStatus {
            phase: AssignmentPhase::Staged,
            ..st
        };
        assert_eq!(node_state(true, Some(&staged), "old@sha256:1", false), Staged);
    }

    #[test]
    fn aggregate_counts_progress_and_offload() {
        let a = agg(&[&[Installed], &[Installed, Downloading, Failed, Unassigned]], 1);
        assert_eq!(
            a.nodes,
            NodeCounts {
                targeted: 5,
                pending: 1,
                downloading: 1,
                staged: 0,
                installed: 2,
                failed: 1,
                quarantined: 0,
            }
        );
        assert_eq!(a.waves[1].targeted, 4);
        assert_eq!(a.waves[1].installed, 1);
        assert_eq!(a.waves[1].failed, 1);
        assert!(a.waves[1].started);
        assert_eq!(a.progress(), "2/5");
        assert_eq!(a.offload(), "75%");
        assert_eq!(Aggregate::default().offload(), "-");
    }

    #[test]
    fn canary_in_progress_holds_the_first_wave() {
        let gate = Gate::from_strategy(&strategy(vec![count(1, None), count(3, None)])).unwrap();
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &agg(&[&[Downloading], &[Unassigned; 3]], 0),
            &gate,
            t(0),
        );
        assert_eq!(
            (d.phase, d.current_wave, d.reason),
            (RolloutPhase::Distributing, 0, reasons::WAVE_IN_PROGRESS)
        );
    }

    #[test]
    fn canary_installed_advances_without_pause() {
        let gate = Gate::from_strategy(&strategy(vec![count(1, None), count(3, None)])).unwrap();
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &agg(&[&[Installed], &[Unassigned; 3]], 0),
            &gate,
            t(0),
        );
        assert_eq!(
            (d.phase, d.current_wave, d.wave_completed_at),
            (RolloutPhase::Distributing, 1, None)
        );
    }

    #[test]
    fn pause_after_wave_waits_then_advances() {
        let gate = Gate::from_strategy(&strategy(vec![count(1, Some("10m")), count(3, None)])).unwrap();
        let a = agg(&[&[Installed], &[Unassigned; 3]], 0);
        let d = next(&state(RolloutPhase::Distributing, 0, None), &a, &gate, t(0));
        assert_eq!(
            (d.phase, d.current_wave, d.reason),
            (RolloutPhase::Distributing, 0, reasons::WAVE_PAUSE)
        );
        assert_eq!(d.wave_completed_at, Some(t(0)));
        assert_eq!(d.requeue_after, Some(Duration::from_secs(600)));
        // An operator restart 4 minutes later reads the recorded completion time.
        let d = next(
            &state(RolloutPhase::Distributing, 0, Some(t(0))),
            &a,
            &gate,
            t(240),
        );
        assert_eq!(d.requeue_after, Some(Duration::from_secs(360)));
        let d = next(
            &state(RolloutPhase::Distributing, 0, Some(t(0))),
            &a,
            &gate,
            t(600),
        );
        assert_eq!((d.phase, d.current_wave), (RolloutPhase::Distributing, 1));
    }

    #[test]
    fn success_threshold_counts_a_share_of_the_wave() {
        let mut s = strategy(vec![count(4, None), count(4, None)]);
        s.success_threshold_percent = 75;
        s.failure_threshold = 5;
        let gate = Gate::from_strategy(&s).unwrap();
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &agg(
                &[&[Installed, Installed, Downloading, Failed], &[Unassigned; 4]],
                0,
            ),
            &gate,
            t(0),
        );
        assert_eq!(d.current_wave, 0, "2/4 < 75%");
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &agg(&[&[Installed, Installed, Installed, Failed], &[Unassigned; 4]], 0),
            &gate,
            t(0),
        );
        assert_eq!(d.current_wave, 1, "3/4 >= 75%");
    }

    #[test]
    fn failure_threshold_halts_with_fail() {
        let gate = Gate::from_strategy(&strategy(vec![count(1, None), count(3, None)])).unwrap();
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &agg(&[&[Failed], &[Unassigned; 3]], 0),
            &gate,
            t(0),
        );
        assert_eq!(
            (d.phase, d.reason, d.current_wave),
            (RolloutPhase::Failed, reasons::FAILURE_THRESHOLD_CROSSED, 0)
        );
        // Terminal for the same generation, even if the node later reports success.
        let d2 = next(
            &state(RolloutPhase::Failed, 0, None),
            &agg(&[&[Installed], &[Unassigned; 3]], 0),
            &gate,
            t(5),
        );
        assert_eq!(d2.phase, RolloutPhase::Failed);
        // A new generation (the user edited the spec) looks again.
        let mut st = state(RolloutPhase::Failed, 0, None);
        st.same_generation = false;
        let d3 = next(&st, &agg(&[&[Installed], &[Unassigned; 3]], 0), &gate, t(5));
        assert_eq!((d3.phase, d3.current_wave), (RolloutPhase::Distributing, 1));
    }

    #[test]
    fn a_quarantined_node_is_excluded_and_the_message_says_why() {
        let gate = Gate::from_strategy(&strategy(vec![count(1, None), count(3, None)])).unwrap();
        let a = agg(&[&[Quarantined], &[Unassigned; 3]], 0);
        assert_eq!((a.nodes.failed, a.nodes.targeted, a.nodes.quarantined), (0, 3, 1));
        assert_eq!((a.waves[0].failed, a.waves[0].targeted), (0, 0));
        assert_eq!(a.quarantined, vec!["w0-n0".to_string()]);
        // Its wave is empty now: the rollout moves on instead of failing.
        let d = next(&state(RolloutPhase::Distributing, 0, None), &a, &gate, t(0));
        assert_eq!((d.phase, d.current_wave), (RolloutPhase::Distributing, 1));
        assert!(
            d.message
                .contains("1 node(s) quarantined (pollen.dev/quarantine=true), excluded: w0-n0"),
            "{}",
            d.message
        );
        // An ordinary failure says nothing about quarantine.
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &agg(&[&[Failed], &[Unassigned; 3]], 0),
            &gate,
            t(0),
        );
        assert_eq!(d.phase, RolloutPhase::Failed);
        assert!(!d.message.contains("quarantine"), "{}", d.message);
    }

    #[test]
    fn quarantined_nodes_are_named_while_the_rollout_goes_on() {
        let s = strategy(vec![count(2, None), count(3, None)]);
        let gate = Gate::from_strategy(&s).unwrap();
        // With the default 100 % threshold and no failure allowed, three quarantined nodes neither
        // fail the rollout nor hold its waves.
        let d = next(
            &state(RolloutPhase::Distributing, 1, None),
            &agg(
                &[&[Installed, Quarantined], &[Installed, Quarantined, Quarantined]],
                1,
            ),
            &gate,
            t(0),
        );
        assert_eq!(d.phase, RolloutPhase::Complete);
        assert!(
            d.message.ends_with(
                "3 node(s) quarantined (pollen.dev/quarantine=true), excluded: w0-n1, w1-n1, w1-n2"
            ),
            "{}",
            d.message
        );
    }

    #[test]
    fn reported_byte_counters_are_bounded_by_the_payload() {
        assert_eq!(plausible_bytes(-5, 100), 0);
        assert_eq!(plausible_bytes(40, 100), 40);
        assert_eq!(plausible_bytes(i64::MAX, 100), 100);
        assert_eq!(plausible_bytes(40, 0), 0);
    }

    #[test]
    fn a_long_quarantine_list_is_cut_short() {
        let a = agg(&[&[Quarantined; 13]], 0);
        let note = a.quarantine_note();
        assert!(note.starts_with("; 13 node(s) quarantined"), "{note}");
        assert!(note.ends_with(" and 3 more"), "{note}");
        assert_eq!(note.matches("w0-n").count(), QUARANTINE_NAMES_SHOWN);
    }

    #[test]
    fn failed_nodes_say_why_in_the_message_cut_short() {
        let mut a = agg(&[&[Failed, Installed, Failed, Failed, Failed, Downloading]], 0);
        assert_eq!(a.failure_note(), "", "failures without an error add nothing");
        let obs: Vec<NodeObservation> = (0..5)
            .map(|i| NodeObservation {
                name: format!("n{i}"),
                wave: 0,
                state: if i == 1 { Installed } else { Failed },
                bytes_from_peers: 0,
                bytes_from_origin: 0,
                last_error: Some(if i == 0 {
                    "registry r: unauthorized: ".to_string() + &"x".repeat(1000)
                } else {
                    format!("error {i}")
                }),
            })
            .collect();
        a = aggregate(&obs, 1, 0);
        let note = a.failure_note();
        assert!(
            note.starts_with("; node n0 failed: registry r: unauthorized: xxx"),
            "{note}"
        );
        assert!(
            note.contains("…; node n2 failed: error 2; node n3 failed: error 3"),
            "{note}"
        );
        assert!(
            !note.contains("error 1"),
            "an installed node's error is not a failure"
        );
        assert!(note.ends_with("; and 1 more failed node(s)"), "{note}");
        assert!(note.len() < 400, "the quote is bounded: {}", note.len());
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &a,
            &Gate::from_strategy(&strategy(vec![count(5, None)])).unwrap(),
            t(0),
        );
        assert!(
            d.message.contains("node n0 failed: registry r: unauthorized"),
            "{}",
            d.message
        );
    }

    #[test]
    fn only_the_value_true_in_any_case_quarantines() {
        use std::collections::BTreeMap;
        let l = |v: &str| BTreeMap::from([(pollen_crds::labels::QUARANTINE.to_string(), v.to_string())]);
        assert!(is_quarantined(&l("true")));
        assert!(is_quarantined(&l("True")));
        assert!(is_quarantined(&l("TRUE")));
        assert!(!is_quarantined(&l("false")));
        assert!(!is_quarantined(&l("yes")));
        assert!(!is_quarantined(&l("True ")));
        assert!(!is_quarantined(&BTreeMap::new()));
        assert_eq!(unclear_quarantine(&l("yes")), Some("yes"));
        assert_eq!(unclear_quarantine(&l("1")), Some("1"));
        assert_eq!(unclear_quarantine(&l("TRUE")), None);
        assert_eq!(unclear_quarantine(&l("False")), None);
        assert_eq!(unclear_quarantine(&BTreeMap::new()), None);
    }

    #[test]
    fn failure_threshold_with_pause_holds_then_resumes() {
        let mut s = strategy(vec![count(2, None), count(2, None)]);
        s.on_failure = FailureAction::Pause;
        s.failure_threshold = 1;
        let gate = Gate::from_strategy(&s).unwrap();
        let one_failed = agg(&[&[Failed, Installed], &[Unassigned; 2]], 0);
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &one_failed,
            &gate,
            t(0),
        );
        assert_eq!(
            d.phase,
            RolloutPhase::Distributing,
            "one failure is within the threshold of 1"
        );
        let two_failed = agg(&[&[Failed, Failed], &[Unassigned; 2]], 0);
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &two_failed,
            &gate,
            t(0),
        );
        assert_eq!(
            (d.phase, d.reason),
            (RolloutPhase::Paused, reasons::FAILURE_THRESHOLD_CROSSED)
        );
        let mut s2 = s.clone();
        s2.failure_threshold = 2;
        let gate2 = Gate::from_strategy(&s2).unwrap();
        let d = next(&state(RolloutPhase::Paused, 0, None), &two_failed, &gate2, t(1));
        assert_eq!(
            d.phase,
            RolloutPhase::Distributing,
            "raising the threshold resumes"
        );
    }

    #[test]
    fn user_pause_stops_at_the_boundary_only() {
        let mut s = strategy(vec![count(1, None), count(3, None)]);
        s.paused = true;
        let gate = Gate::from_strategy(&s).unwrap();
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &agg(&[&[Downloading], &[Unassigned; 3]], 0),
            &gate,
            t(0),
        );
        assert_eq!(
            d.phase,
            RolloutPhase::Distributing,
            "the current wave keeps going"
        );
        assert!(d.message.contains("paused"));
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &agg(&[&[Installed], &[Unassigned; 3]], 0),
            &gate,
            t(0),
        );
        assert_eq!(
            (d.phase, d.reason, d.current_wave),
            (RolloutPhase::Paused, reasons::PAUSED_BY_USER, 0)
        );
        s.paused = false;
        let gate = Gate::from_strategy(&s).unwrap();
        let d = next(
            &state(RolloutPhase::Paused, 0, d.wave_completed_at),
            &agg(&[&[Installed], &[Unassigned; 3]], 0),
            &gate,
            t(9),
        );
        assert_eq!((d.phase, d.current_wave), (RolloutPhase::Distributing, 1));
    }

    #[test]
    fn last_wave_meeting_its_threshold_completes() {
        let gate = Gate::from_strategy(&strategy(vec![count(1, None), count(2, None)])).unwrap();
        let d = next(
            &state(RolloutPhase::Distributing, 1, None),
            &agg(&[&[Installed], &[Installed, Installed]], 1),
            &gate,
            t(0),
        );
        assert_eq!(
            (d.phase, d.reason),
            (RolloutPhase::Complete, reasons::ALL_NODES_INSTALLED)
        );
        let mut s = strategy(vec![]);
        s.success_threshold_percent = 50;
        let gate = Gate::from_strategy(&s).unwrap();
        s.failure_threshold = 0;
        let d = next(
            &state(RolloutPhase::Distributing, 0, None),
            &agg(&[&[Installed, Downloading]], 0),
            &gate,
            t(0),
        );
        assert_eq!(
            (d.phase, d.reason),
            (RolloutPhase::Complete, reasons::SUCCESS_THRESHOLD_MET)
        );
        // Complete stays complete.
        let d = next(
            &state(RolloutPhase::Complete, 0, None),
            &agg(&[&[Installed, Failed]], 0),
            &gate,
            t(1),
        );
        assert_eq!(d.phase, RolloutPhase::Complete);
    }

    #[test]
    fn empty_waves_pass_at_once_and_skip_their_pause() {
        let gate = Gate::from_strategy(&strategy(vec![
            count(1, Some("1h")),
            count(1, Some("1h")),
            count(1, None),
        ]))
        .unwrap();
        // Only one node: waves 1 and 2 are empty.
        let a = agg(&[&[Installed], &[], &[]], 1);
        let d = next(&state(RolloutPhase::Distributing, 1, None), &a, &gate, t(0));
        assert_eq!((d.phase, d.current_wave), (RolloutPhase::Distributing, 2));
    }

    #[test]
    fn bad_specs_are_typed_errors() {
        let s = strategy(vec![count(1, Some("ten minutes"))]);
        assert_eq!(
            Gate::from_strategy(&s),
            Err(SpecError::UnparsablePause {
                index: 0,
                value: "ten minutes".into()
            })
        );
        let s = strategy(vec![Wave {
            count: Some(1),
            percent: Some(2),
            pause: None,
        }]);
        assert_eq!(
            Gate::from_strategy(&s),
            Err(SpecError::Waves(PlanError::AmbiguousWave { index: 0 }))
        );
        let mut s = strategy(vec![]);
        s.success_threshold_percent = 0;
        assert!(matches!(
            Gate::from_strategy(&s),
            Err(SpecError::ThresholdOutOfRange { .. })
        ));
    }

    fn claim(key: &str, created: i64, path: &str, nodes: &[&str], finished: bool) -> Claim {
        Claim {
            key: key.into(),
            created: t(created),
            target_path: path.into(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            finished,
        }
    }

    #[test]
    fn older_rollout_on_the_same_path_and_nodes_wins() {
        let me = claim("ns/new", 10, "fw.bin", &["a", "b"], false);
        let others = vec![
            claim("ns/old", 5, "fw.bin", &["b", "c"], false),
            claim("ns/oldest-other-path", 1, "other.bin", &["a"], false),
            claim("ns/oldest-done", 1, "fw.bin", &["a"], true),
            claim("ns/older-disjoint", 2, "fw.bin", &["z"], false),
            claim("ns/newer", 20, "fw.bin", &["a"], false),
        ];
        assert_eq!(blocker(&me, &others).map(|c| c.key.as_str()), Some("ns/old"));
        // The older one is not blocked by the newer.
        let old = others[0].clone();
        assert_eq!(blocker(&old, std::slice::from_ref(&me)), None);
        // Same creation time: the name breaks the tie, both ways consistently.
        let twin_a = claim("ns/a", 10, "fw.bin", &["a"], false);
        let twin_b = claim("ns/b", 10, "fw.bin", &["a"], false);
        assert!(blocker(&twin_b, std::slice::from_ref(&twin_a)).is_some());
        assert!(blocker(&twin_a, std::slice::from_ref(&twin_b)).is_none());
    }
}
