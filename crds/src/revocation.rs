//! RevocationList: the fleet CA's signed list of revoked peer certificates (cluster-scoped, one object
//! named [`REVOCATION_LIST_NAME`]).
//!
//! The operator writes it when an EdgeNode is quarantined (label `pollen.dev/quarantine=true`) or
//! deleted: the node's certificate serials go into an X.509 CRL signed by the fleet CA, with a CRL
//! number one higher than the last. Every agent watches this object; nodes also pass the signed CRL to
//! their peers, so that a node cut off from the API server still learns it. The CRL is what nodes
//! trust; `entries` repeats its contents for people and tools.
//!
//! Non-goals: no status; nobody but the operator writes it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The name of the one RevocationList the operator maintains.
pub const REVOCATION_LIST_NAME: &str = "fleet";

/// The fleet's current revocation list.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "pollen.dev",
    version = "v1alpha1",
    kind = "RevocationList",
    shortname = "rl",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Number","type":"integer","jsonPath":".spec.number","description":"The CRL number; a higher one supersedes a lower one."}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RevocationListSpec {
    /// The CRL number of `crl`. Increases with every change.
    #[schemars(range(min = 1))]
    pub number: i64,

    /// The X.509 CRL in PEM (`-----BEGIN X509 CRL-----`), signed by the fleet CA. Nodes check its
    /// signature and number before they use it.
    #[schemars(length(min = 1, max = 1048576))]
    #[x_kube(validation = Rule::new("self.contains('-----BEGIN X509 CRL-----')").message("crl must be a PEM X509 CRL"))]
    pub crl: String,

    /// The revoked certificates, for people and tools (the CRL is authoritative).
    #[serde(default)]
    #[schemars(length(max = 100000))]
    pub entries: Vec<RevocationEntry>,
}

/// One revoked certificate.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevocationEntry {
    /// The node the certificate was issued to.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,

    /// The certificate serial, lowercase hex.
    #[schemars(length(min = 1, max = 64))]
    pub serial: String,

    /// Why it was revoked (`Quarantined`, `Deleted`).
    #[schemars(length(min = 1, max = 63))]
    pub reason: String,

    /// When it was revoked.
    pub revoked_at: Time,

    /// When the certificate expires, where known. The entry is kept until the later of this and a
    /// week (the longest node certificate lifetime the signer grants) after `revokedAt`, so a longer
    /// lived certificate (provisioned as files) stays revoked while it is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
}
