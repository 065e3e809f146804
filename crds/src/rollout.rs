//! UpdateRollout: "deliver this signed artifact to these nodes, in these waves".
//!
//! The user writes the spec; the operator alone writes the status. The operator
//! pins the artifact to a digest, verifies the publisher's signature against the
//! named TrustPolicy, builds and signs a chunk index, and hands the index to the
//! selected EdgeNodes wave by wave, gated on the success and failure thresholds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Deliver a signed OCI artifact to a set of edge nodes, wave by wave.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pollen.dev",
    version = "v1alpha1",
    kind = "UpdateRollout",
    namespaced,
    shortname = "ur",
    status = "UpdateRolloutStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Where the rollout is in its life cycle."}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress","description":"Nodes installed / nodes targeted."}"#,
    printcolumn = r#"{"name":"Wave","type":"integer","jsonPath":".status.currentWave","description":"The wave being delivered (0-based)."}"#,
    printcolumn = r#"{"name":"Offload","type":"string","jsonPath":".status.offload","priority":10,"description":"Share of bytes that came from peers rather than the origin."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRolloutSpec {
    /// The artifact to deliver: an OCI reference published with `pollen publish` (or pushed and
    /// signed with cosign). The operator pins a tag to its digest when the rollout starts.
    pub artifact: ArtifactSource,

    /// The name of the cluster-scoped TrustPolicy whose publisher keys must have signed the
    /// artifact. A rollout whose artifact does not verify gets `Verified=False` and no assignments.
    #[schemars(length(min = 1, max = 253))]
    pub trust_policy: String,

    /// Which EdgeNodes receive the artifact, by their labels (copied from the Kubernetes Nodes).
    /// An empty selector selects every EdgeNode.
    pub selector: LabelSelector,

    /// How the targeted nodes are split into waves, and when the rollout advances or halts.
    #[serde(default)]
    pub strategy: RolloutStrategy,

    /// How chunks move: chunk size, rate limits, the origin budget and the wait for peers.
    #[serde(default)]
    pub transfer: TransferSettings,

    /// Where and how each node installs the artifact.
    pub install: InstallSettings,
}

/// An OCI artifact reference.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactSource {
    /// OCI reference by tag or by digest, for example `registry.example/fw/gateway:1.4.2` or
    /// `registry.example/fw/gateway@sha256:<64 hex>`.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$')").message("must be an OCI reference such as registry.example/repo:tag or registry.example/repo@sha256:<64 hex>"))]
    pub reference: String,
    // Registry credentials are not named per rollout: the operator uses its own (push) Docker config
    // and every node its own pull-only one, both mounted by the chart. A rollout from another registry
    // needs that registry's entries in those two configs; nothing here gives agents Secret access.
    /// Deliver this artifact even if its signed version (`pollen.dev/version`) is lower than the
    /// highest the operator delivered from this repository to this install path (or equal to it under
    /// another digest). Without it such a rollout gets `Verified=False`, reason `Downgrade` or
    /// `VersionReused`, so that moving a tag to an older build does nothing. When it is used, the
    /// status shows `downgradedFrom` and the operator emits a `DowngradeAllowed` event. Setting or
    /// clearing it makes the operator resolve and verify the artifact again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
}

/// Waves and the thresholds that gate them.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// The waves, in order. Each names a node count or a percentage of the targeted nodes
    /// (cumulative sizes are computed by the operator). Nodes left over after the last wave join
    /// the last wave. Empty means one wave with every targeted node.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub waves: Vec<Wave>,

    /// Percentage of a wave's nodes that must report `Installed` before the next wave starts.
    #[serde(default = "default_success_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold_percent: i32,

    /// How many failed nodes halt the rollout (counted over the whole rollout). `0` halts on the
    /// first failure, which suits a canary wave.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 0, max = 100000))]
    pub failure_threshold: i32,

    /// What the rollout does when the failure threshold is crossed: `Fail` ends it, `Pause` waits
    /// for a person to look (set `paused: false` to go on).
    #[serde(default)]
    pub on_failure: FailureAction,

    /// Pause at the next wave boundary. Nodes already assigned keep going; no new wave starts
    /// until this is false again.
    #[serde(default)]
    pub paused: bool,
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            waves: Vec::new(),
            success_threshold_percent: default_success_threshold(),
            failure_threshold: default_failure_threshold(),
            on_failure: FailureAction::default(),
            paused: false,
        }
    }
}

fn default_success_threshold() -> i32 {
    100
}
fn default_failure_threshold() -> i32 {
    0
}

/// What a crossed failure threshold does to the rollout.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailureAction {
    /// The rollout ends in phase `Failed`.
    #[default]
    Fail,
    /// The rollout enters phase `Paused` and waits.
    Pause,
}

/// One wave: a node count or a percentage of the targeted nodes, and an optional pause after it.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.count) != has(self.percent)").message("a wave sets exactly one of count or percent"))]
pub struct Wave {
    /// Number of nodes in this wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub count: Option<i32>,

    /// Percentage of the targeted nodes in this wave (rounded up, at least one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<i32>,

    /// How long to wait after this wave meets its success threshold before the next wave starts,
    /// for example `10m`. Use it to watch a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::optional_duration")]
    pub pause: Option<String>,
}

/// How chunks move between nodes and from the origin.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TransferSettings {
    /// Chunk size in bytes. Unset: automatic (between 256 KiB and 4 MiB, so that a payload has
    /// roughly one to four thousand chunks). Must be a power of two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 65536, max = 67108864))]
    #[x_kube(validation = Rule::new("self in [65536, 131072, 262144, 524288, 1048576, 2097152, 4194304, 8388608, 16777216, 33554432, 67108864]").message("chunkSizeBytes must be a power of two"))]
    pub chunk_size_bytes: Option<i64>,

    /// Per-node upload limit in bytes per second, applied where lower than the agent's own limit
    /// (a change reaches running nodes without a restart). Unset: the agents' limits alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub upload_bytes_per_second: Option<i64>,

    /// Per-node download limit in bytes per second, applied where lower than the agent's own limit
    /// (a change reaches running nodes without a restart). Unset: the agents' limits alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub download_bytes_per_second: Option<i64>,

    /// How long a node goes without any chunk arriving before it stops waiting on its peers: it then
    /// fetches what it lacks from the origin (and across sites) even where another node was to do
    /// so, for example `30s`. Unset: `10s`. Copied into each assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::optional_duration")]
    pub peer_wait: Option<String>,

    /// Range GETs the fleet keeps in flight to the origin at once. Of the nodes that read from the
    /// origin, the fleet elects this many (a hash of each node name salted with the index, so each
    /// rollout elects others); they share the GETs, this number divided by the elected readers,
    /// rounded up. Fewer parallel flows through the origin's uplink lose fewer packets, each of which
    /// is sent (and paid for) again; too few leave the uplink idle. Unset: `8`. Copied into each
    /// assignment; a node takes it when it starts the assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub origin_requests: Option<i32>,

    /// Bytes the whole fleet may read from the origin, as a percentage of the payload size.
    /// Unset: no fleet-wide cap (each node still reads at most one payload, and the nodes'
    /// origin-once rule keeps the fleet at about one copy). When set, the operator writes each
    /// working node a cap (`originAllowanceBytes` in its EdgeNode assignment): what it read plus
    /// what the budget has left, so no share sits idle. When the budget is spent, nodes fetch from
    /// peers only and the rollout shows `OriginBudgetSpent`. The cap is soft: nodes reading at the
    /// same moment, and reads not yet reported, can go over it by a little. A budget of exactly 100
    /// leaves no room for a chunk read twice; 110 or more is the practical floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 100000))]
    pub origin_budget_percent: Option<i32>,
}

/// Where and how each node installs the artifact.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstallSettings {
    /// Path of the installed file, relative to the node's install root (for example
    /// `firmware/gateway.bin`). The node writes versions beside it and flips a `current` link.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.endsWith('/') && !self.contains('..') && !self.contains('//') && !self.matches('(^|/)([.]|current|versions)(/|$)')").message("targetPath must be relative, must not contain '..', '//' or a '.' component, and must not use the reserved names 'current' or 'versions' as a component"))]
    pub target_path: String,

    /// How many previous versions each node keeps for rollback.
    #[serde(default = "default_keep_versions")]
    #[schemars(range(min = 0, max = 10))]
    pub keep_versions: i32,

    /// An optional daily window (UTC) in which nodes may activate the new version. Outside it they
    /// download and verify, report `Staged` (still serving their peers), and install when it opens.
    /// A staged node does not count as installed, so the next wave waits for the window too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_window: Option<ActivationWindow>,
}

fn default_keep_versions() -> i32 {
    2
}

/// A daily time window in UTC, `HH:MM` to `HH:MM`. A window whose end is before its start spans midnight.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start != self.end").message("an activation window must not be empty"))]
pub struct ActivationWindow {
    /// Start of the window, `HH:MM` (UTC).
    #[schemars(length(min = 5, max = 5), regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// End of the window, `HH:MM` (UTC).
    #[schemars(length(min = 5, max = 5), regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
}

/// Seconds in a day.
const DAY: u32 = 24 * 60 * 60;

impl ActivationWindow {
    /// Reads `HH:MM-HH:MM` (the form of the edge node's `--activation-window` flag).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (start, end) = s
            .split_once('-')
            .ok_or_else(|| format!("activation window {s:?}: expected HH:MM-HH:MM"))?;
        let w = Self {
            start: start.trim().to_string(),
            end: end.trim().to_string(),
        };
        w.bounds()?;
        Ok(w)
    }

    /// Start and end as seconds after midnight (UTC). An error names a bound that is not `HH:MM` or a
    /// window whose start equals its end.
    pub fn bounds(&self) -> Result<(u32, u32), String> {
        let read = |what: &str, v: &str| -> Result<u32, String> {
            let bad = || format!("activation window {what} {v:?}: expected HH:MM (UTC)");
            let (h, m) = v.split_once(':').ok_or_else(bad)?;
            if h.len() != 2 || m.len() != 2 {
                return Err(bad());
            }
            let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            Ok((h * 60 + m) * 60)
        };
        let (start, end) = (read("start", &self.start)?, read("end", &self.end)?);
        if start == end {
            return Err(format!("activation window {}-{} is empty", self.start, self.end));
        }
        Ok((start, end))
    }

    /// How long a node that is `secs_of_day` seconds past midnight (UTC) waits before it may activate:
    /// zero inside the window (start included, end excluded; a window whose end is before its start
    /// spans midnight), otherwise the time until the next start.
    pub fn wait_at(&self, secs_of_day: u32) -> Result<u32, String> {
        let (start, end) = self.bounds()?;
        let now = secs_of_day % DAY;
        let inside = if start < end {
            (start..end).contains(&now)
        } else {
            now >= start || now < end
        };
        Ok(if inside { 0 } else { (start + DAY - now) % DAY })
    }
}

/// Where a rollout is in its life cycle.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RolloutPhase {
    /// Accepted, not yet looked at.
    #[default]
    Pending,
    /// Pinning the tag to a digest.
    Resolving,
    /// Checking the publisher signature.
    Verifying,
    /// Building, pushing and signing the chunk index.
    Indexing,
    /// Delivering wave by wave.
    Distributing,
    /// Waiting at a wave boundary (user pause or failure pause).
    Paused,
    /// Every targeted node installed the artifact.
    Complete,
    /// Halted: verification failed or the failure threshold was crossed.
    Failed,
}

/// What the operator observed of a rollout.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRolloutStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Where the rollout is in its life cycle.
    #[serde(default)]
    pub phase: RolloutPhase,

    /// Standard conditions: `Resolved`, `Verified`, `Indexed`, `Progressing`, `Complete`, `Failed`, `Conflict`.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The artifact pinned by digest (`repo@sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_digest: Option<String>,

    /// Size of the payload in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_size: Option<i64>,

    /// The signed chunk index handed to the nodes (`repo@sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_index: Option<String>,

    /// The version the publisher signed (`pollen.dev/version`); unset for an unversioned artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// Set when `artifact.allowDowngrade` let this rollout deliver a version not above the highest
    /// delivered before: that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgraded_from: Option<String>,

    /// The index's sequence number (monotonic per install path; nodes refuse a lower one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,

    /// A fingerprint of the spec fields the chunk index was built from (artifact reference, trust
    /// policy, install settings, chunk size). When these change, the operator resolves, verifies and
    /// indexes again, and the new index supersedes the old assignments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexed_for: Option<String>,

    /// The wave being delivered, counting from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_wave: Option<i32>,

    /// `installed/targeted`, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// Share of bytes that came from peers, as a percentage string, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<String>,

    /// Per-wave progress.
    #[serde(default)]
    pub waves: Vec<WaveStatus>,

    /// Node counts by phase over the whole rollout.
    #[serde(default)]
    pub nodes: NodeCounts,

    /// Bytes the nodes received from peers, summed over the fleet.
    #[serde(default)]
    pub bytes_from_peers: i64,

    /// Bytes the nodes received from the origin registry, summed over the fleet.
    #[serde(default)]
    pub bytes_from_origin: i64,

    /// When the current wave met its success threshold (the pause runs from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_completed_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Progress of one wave.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WaveStatus {
    /// Wave number, counting from 0.
    pub index: i32,
    /// Nodes in this wave.
    pub targeted: i32,
    /// Nodes of this wave that reported the artifact installed.
    pub installed: i32,
    /// Nodes of this wave that failed.
    pub failed: i32,
    /// Whether the wave has been handed its assignments.
    pub started: bool,
}

/// Node counts by phase.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes the selector matched, quarantined nodes excepted.
    pub targeted: i32,
    /// Nodes not yet assigned, or assigned and not yet started.
    pub pending: i32,
    /// Nodes fetching or verifying chunks.
    pub downloading: i32,
    /// Nodes that hold the verified payload and wait for the activation window.
    #[serde(default)]
    pub staged: i32,
    /// Nodes that installed the artifact.
    pub installed: i32,
    /// Nodes that reported a failure.
    pub failed: i32,
    /// Nodes the selector matched that are quarantined: excluded from the rollout (not in
    /// `targeted`), so that cutting off a compromised device does not fail the rollouts it was in.
    #[serde(default)]
    pub quarantined: i32,
}

#[cfg(test)]
mod tests {
    use super::ActivationWindow;

    fn w(start: &str, end: &str) -> ActivationWindow {
        ActivationWindow {
            start: start.into(),
            end: end.into(),
        }
    }

    const H: u32 = 3600;

    #[test]
    fn a_daytime_window_includes_its_start_and_excludes_its_end() {
        let win = w("02:00", "04:30");
        assert_eq!(win.wait_at(2 * H), Ok(0));
        assert_eq!(win.wait_at(4 * H + 29 * 60 + 59), Ok(0));
        assert_eq!(win.wait_at(4 * H + 30 * 60), Ok(21 * H + 30 * 60));
        assert_eq!(win.wait_at(2 * H - 1), Ok(1));
        assert_eq!(win.wait_at(0), Ok(2 * H));
    }

    #[test]
    fn a_window_ending_before_it_starts_spans_midnight() {
        let win = w("22:00", "03:00");
        assert_eq!(win.wait_at(23 * H), Ok(0));
        assert_eq!(win.wait_at(0), Ok(0));
        assert_eq!(win.wait_at(3 * H - 1), Ok(0));
        assert_eq!(win.wait_at(3 * H), Ok(19 * H));
        assert_eq!(win.wait_at(21 * H + 59 * 60), Ok(60));
        // Seconds past a day wrap.
        assert_eq!(win.wait_at(24 * H + 23 * H), Ok(0));
    }

    #[test]
    fn malformed_windows_are_errors() {
        assert!(w("2:00", "04:00").wait_at(0).is_err());
        assert!(w("24:00", "04:00").wait_at(0).is_err());
        assert!(w("02:60", "04:00").wait_at(0).is_err());
        assert!(w("02:00", "02:00").wait_at(0).unwrap_err().contains("empty"));
        assert!(ActivationWindow::parse("02:00").is_err());
        assert!(ActivationWindow::parse("0a:00-03:00").is_err());
        assert_eq!(ActivationWindow::parse("23:15-01:00"), Ok(w("23:15", "01:00")));
    }
}
