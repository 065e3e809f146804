//! Pollen's Kubernetes API, group `pollen.dev`, version `v1alpha1`.
//!
//! Four kinds make up the whole contract between the user, the operator and the
//! edge-node agents:
//!
//! | kind | scope | spec written by | status written by |
//! |---|---|---|---|
//! | [`UpdateRollout`] (`ur`) | namespaced | the user | the operator |
//! | [`EdgeNode`] (`en`) | cluster | the operator (`spec.assignments`) | the node's agent |
//! | [`TrustPolicy`] (`tp`) | cluster | the user | nobody (no status) |
//! | [`RevocationList`] (`rl`) | cluster | the operator (one object, `fleet`) | nobody (no status) |
//!
//! The doc comments on every field become the CRD descriptions that
//! `kubectl explain` shows, so they are written for the fleet operator.
//! Validation the API server can enforce lives in the schema (required fields,
//! enums, ranges, CEL rules); the operator re-checks what a schema cannot say.
//!
//! Non-goals: no client, no runtime, no I/O. This crate holds types, their
//! constants, the duration parser their fields use, and the `crdgen` binary that renders the YAML.
//!
//! # Layout
//! - [`rollout`]: UpdateRollout, its strategy, transfer and install settings, and status.
//! - [`edgenode`]: EdgeNode, assignments and the agent-reported status.
//! - [`trustpolicy`]: TrustPolicy, the trusted publisher keys and the director key.
//! - [`revocation`]: RevocationList, the fleet CA's signed list of revoked peer certificates.
//! - [`conditions`]: condition types and reasons shared by operator and tools.
//! - [`duration`]: the one duration parser of the workspace (CR fields, flags, lab scenarios).
//! - [`render`]: the generated CRD YAML, used by `crdgen` and the drift test.
#![warn(missing_docs)]

pub mod conditions;
pub mod duration;
pub mod edgenode;
pub mod render;
pub mod revocation;
pub mod rollout;
pub mod schema;
pub mod trustpolicy;

pub use edgenode::{
    Assignment, AssignmentPhase, AssignmentStatus, CertificateInfo, EdgeNode, EdgeNodeSpec, EdgeNodeStatus,
    InstalledVersion, Inventory,
};
pub use revocation::{REVOCATION_LIST_NAME, RevocationEntry, RevocationList, RevocationListSpec};
pub use rollout::{
    ActivationWindow, ArtifactSource, InstallSettings, NodeCounts, RolloutPhase, RolloutStrategy,
    TransferSettings, UpdateRollout, UpdateRolloutSpec, UpdateRolloutStatus, Wave, WaveStatus,
};
pub use trustpolicy::{
    DeliveredVersion, DirectorKey, Publisher, TrustPolicy, TrustPolicySpec, TrustPolicyStatus,
};

/// The API group of every Pollen kind.
pub const GROUP: &str = "pollen.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// The signerName of Pollen's node certificates.
pub const SIGNER_NAME: &str = "pollen.dev/edge-peer";

/// Labels and annotations with a meaning to Pollen.
pub mod labels {
    /// Set to `"true"` on an EdgeNode to revoke its certificate and keep it out of rollouts.
    pub const QUARANTINE: &str = "pollen.dev/quarantine";
    /// The site (or zone) of a device; peers prefer peers of the same site.
    pub const SITE: &str = "pollen.dev/site";
    /// The name of the Kubernetes Node the EdgeNode stands for.
    pub const NODE_NAME: &str = "pollen.dev/node-name";
}
