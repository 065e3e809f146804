//! EdgeNode: one device's record (cluster-scoped, one per device).
//!
//! Two writers, two halves: the operator writes `spec.assignments`; the node's
//! agent writes `status` (its QUIC endpoint, certificate facts, inventory, and
//! per-assignment progress). Labels are copied from the Kubernetes Node (or set
//! by flags where the Node API is not readable) and are what rollout selectors match.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A device in the fleet, as Pollen knows it.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "pollen.dev",
    version = "v1alpha1",
    kind = "EdgeNode",
    shortname = "en",
    status = "EdgeNodeStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Site","type":"string","jsonPath":".status.site","description":"The device's site or zone."}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint","description":"The QUIC endpoint peers connect to."}"#,
    printcolumn = r#"{"name":"Assignments","type":"integer","jsonPath":".status.activeAssignments","description":"Assignments not yet installed."}"#,
    printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".status.heartbeat","description":"When the agent last reported."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EdgeNodeSpec {
    /// What this device must fetch and install. Written by the operator only; one entry per rollout.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::keyed_by_rollout::<Assignment>")]
    pub assignments: Vec<Assignment>,
}

/// One rollout's instruction to this device.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// The rollout this assignment belongs to, as `namespace/name`.
    #[schemars(length(min = 3, max = 317))]
    pub rollout: String,

    /// The director-signed chunk index to fetch (`repo@sha256:…`). The node verifies the director
    /// signature on it and the publisher signature on the payload before it fetches a byte.
    #[schemars(length(min = 1, max = 1024))]
    pub chunk_index: String,

    /// The wave this device belongs to, counting from 0.
    #[schemars(range(min = 0))]
    pub wave: i32,

    /// The index's sequence number; the node refuses a lower one for the same install path
    /// unless the index marks an explicit downgrade.
    #[schemars(range(min = 0))]
    pub sequence: i64,

    /// The install path relative to the node's install root (copied from the rollout).
    #[schemars(length(min = 1, max = 512))]
    pub target_path: String,

    /// The trust policy whose keys the node checks (copied from the rollout, resolved by the operator).
    #[schemars(length(min = 1, max = 253))]
    pub trust_policy: String,

    /// Upload limit for this assignment in bytes per second (copied from the rollout); the lower of it
    /// and the agent's own `--upload-limit` applies. Unset: the agent's limit alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub upload_bytes_per_second: Option<i64>,

    /// Download limit for this assignment in bytes per second (copied from the rollout); the lower of it
    /// and the agent's own `--download-limit` applies. Unset: the agent's limit alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub download_bytes_per_second: Option<i64>,

    /// How long the node goes without any chunk arriving before it stops waiting on its peers
    /// (copied from the rollout's `peerWait`). Unset: the node's default (10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::optional_duration")]
    pub peer_wait: Option<String>,

    /// Range GETs the fleet keeps in flight to the origin, and origin readers it elects (copied from
    /// the rollout's `originRequests`). Unset: the node's default (8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub origin_requests: Option<i32>,

    /// Bytes this node may read from the origin registry for this assignment, in total, set from the
    /// rollout's `originBudgetPercent`: what it read plus what the fleet's budget has left, rewritten
    /// by the operator as the budget is spent. The running engine honours a new value at once.
    /// Unset: no cap beyond the node's own (one payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub origin_allowance_bytes: Option<i64>,

    /// The daily window (UTC) in which the node may activate the new version (copied from the
    /// rollout). Outside it the node downloads and verifies, reports `Staged`, keeps serving its
    /// peers, and installs when the window opens. A change applies at once. Unset: install on completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_window: Option<crate::rollout::ActivationWindow>,

    /// The director's peer grant for this node on `chunkIndex` (base64 signature): written by the
    /// operator for every assigned node, so that a node the signed index does not list (it joined
    /// the selection after the index was built) may still trade chunks with its peers, who check the
    /// grant with the director key before they send anything. Unset: listed nodes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub peer_grant: Option<String>,
}

/// What the agent reports about its device.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EdgeNodeStatus {
    /// The QUIC endpoint other nodes connect to, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The device's site or zone; peers of the same site are preferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,

    /// Facts about the device's current peer certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateInfo>,

    /// Hardware and software inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,

    /// Progress of each assignment.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::keyed_by_rollout::<AssignmentStatus>")]
    pub assignments: Vec<AssignmentStatus>,

    /// Assignments not yet installed (for the printer column).
    #[serde(default)]
    pub active_assignments: i32,

    /// Versions installed on the device, newest first.
    #[serde(default)]
    pub installed: Vec<InstalledVersion>,

    /// When the agent last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Time>,
}

/// Facts about a peer certificate.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// When the certificate expires.
    pub not_after: Time,
    /// The certificate itself, PEM. Serial and expiry above are the node's words; the operator
    /// revokes a certificate it did not sign through the CSR API only when this proves that the
    /// fleet CA issued it for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub pem: Option<String>,
}

/// Hardware and software inventory of a device.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// CPU architecture, as Rust names it (`x86_64`, `aarch64`, `arm`).
    pub architecture: String,
    /// Free bytes on the filesystem holding the install root.
    pub free_disk_bytes: i64,
    /// Version of the Pollen agent.
    pub agent_version: String,
}

/// Where one assignment stands on one device.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AssignmentPhase {
    /// Received, not started.
    #[default]
    Pending,
    /// Checking the director and publisher signatures.
    Verifying,
    /// Fetching chunks from peers (and the origin where no peer has them).
    Downloading,
    /// Writing the verified payload into place.
    Installing,
    /// Verified and downloaded, waiting for the activation window.
    Staged,
    /// Installed and active.
    Installed,
    /// Failed; see `lastError`.
    Failed,
    /// The previous version was re-activated.
    RolledBack,
}

impl AssignmentPhase {
    /// Whether the assignment has reached an end state.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Installed | Self::Failed | Self::RolledBack)
    }
}

/// Progress of one assignment on one device.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentStatus {
    /// The rollout, as `namespace/name`.
    pub rollout: String,
    /// The chunk index this status is about (a superseded index is reported no more).
    pub chunk_index: String,
    /// Where the assignment stands.
    pub phase: AssignmentPhase,
    /// Bytes received and verified against the index.
    #[serde(default)]
    pub verified_bytes: i64,
    /// Payload size in bytes.
    #[serde(default)]
    pub total_bytes: i64,
    /// Bytes received from peers.
    #[serde(default)]
    pub bytes_from_peers: i64,
    /// Bytes received from the origin registry.
    #[serde(default)]
    pub bytes_from_origin: i64,
    /// The last error, when the phase is `Failed` (or a retried error while downloading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When this status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// A version installed on the device.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstalledVersion {
    /// Install path relative to the install root.
    pub target_path: String,
    /// Payload digest (`sha256:…`).
    pub digest: String,
    /// The rollout that installed it, as `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// Whether the `current` link points at this version.
    pub current: bool,
    /// When it was installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<Time>,
}
