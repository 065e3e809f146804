//! TrustPolicy: who may sign what a device installs.
//!
//! Two independent keys vouch for every byte (the Uptane split): a publisher key
//! from `publishers` signs the artifact, and the director key signs the chunk
//! index that says which devices get it now. The policy holds public keys only;
//! the operator's director private key is a mounted file, never an API object.
//! Keyless (Fulcio) identities are not supported yet; the list shape leaves room.
//!
//! The status is the operator's version ledger: for each repository and install path, the highest
//! version (the publisher's signed `pollen.dev/version` claim) it delivered under this policy. The
//! operator refuses a lower one unless the rollout sets `artifact.allowDowngrade`. Only the operator
//! writes it (the `trustpolicies/status` subresource; agents may only read TrustPolicies).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The keys a rollout's artifact and chunk index must be signed with.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pollen.dev",
    version = "v1alpha1",
    kind = "TrustPolicy",
    shortname = "tp",
    status = "TrustPolicyStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrustPolicySpec {
    /// Publishers whose signature on the artifact is accepted. An artifact signed by any one of
    /// them verifies.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(schema_with = "crate::schema::keyed_by_name::<Publisher>")]
    pub publishers: Vec<Publisher>,

    /// The director key: the public half of the key the operator signs chunk indexes with.
    pub director: DirectorKey,

    /// Accept artifacts whose publisher signature makes no version claim (`pollen.dev/version`, which
    /// `pollen publish` always signs and `cosign sign -a pollen.dev/version=1.4.2` adds). Such artifacts
    /// skip the operator's version ledger, so a tag moved to an older unversioned build is not noticed.
    /// Default false: an unversioned artifact gets `Verified=False`, reason `Unversioned`.
    #[serde(default)]
    pub allow_unversioned: bool,
}

/// What the operator records under a TrustPolicy.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrustPolicyStatus {
    /// The highest version delivered, one entry per repository and install path, sorted.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub delivered: Vec<DeliveredVersion>,
}

/// The highest version the operator delivered from one repository to one install path.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredVersion {
    /// The repository, `registry/path`, as cosign normalises it.
    pub repository: String,
    /// The install path (`spec.install.targetPath` of the rollouts).
    pub target_path: String,
    /// The semantic version the publisher signed.
    pub version: String,
    /// The manifest digest delivered as this version, `sha256:<hex>`.
    pub digest: String,
    /// The rollout (`namespace/name`) that delivered it.
    pub rollout: String,
}

/// A trusted publisher.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Publisher {
    /// A name for this key, used in conditions and logs (for example `release-team`).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// The publisher's public key in PEM (`-----BEGIN PUBLIC KEY-----`), as written by
    /// `pollen keygen` or `cosign generate-key-pair` (`cosign.pub`).
    #[schemars(length(min = 1, max = 16384))]
    #[x_kube(validation = Rule::new("self.contains('-----BEGIN PUBLIC KEY-----')").message("publicKey must be a PEM public key"))]
    pub public_key: String,
}

/// The director's public key.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DirectorKey {
    /// The director public key in PEM. Its private half is mounted into the operator.
    #[schemars(length(min = 1, max = 16384))]
    #[x_kube(validation = Rule::new("self.contains('-----BEGIN PUBLIC KEY-----')").message("publicKey must be a PEM public key"))]
    pub public_key: String,
}
