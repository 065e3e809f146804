//! The artifact pipeline seam: pin a reference to a digest, verify the publisher signature (and read
//! its version claim), and
//! build, push and sign the chunk index.
//!
//! The reconciler only sees [`ArtifactPipeline`]. The binary plugs in the implementation backed by
//! `pollen-trust` and a real registry ([`crate::trust_pipeline`]); the controller's unit tests plug
//! in a scripted stand-in, so the reconciler is tested without a registry.
//!
//! Non-goals: no cryptography or registry protocol here; those live in `pollen-trust`.

use futures::future::BoxFuture;
use pollen_crds::Publisher;

/// An artifact pinned to a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedArtifact {
    /// `registry/repo@sha256:<hex>`.
    pub reference: String,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Payload size in bytes.
    pub size: u64,
}

/// What a verified publisher signature says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPublisher {
    /// The name of the publisher whose key verified.
    pub publisher: String,
    /// The version the signature claims (`pollen.dev/version`), if it makes a claim.
    pub version: Option<semver::Version>,
}

/// What the chunk index must say besides the payload.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexRequest {
    /// The pinned payload.
    pub artifact: PinnedArtifact,
    /// The rollout, as `namespace/name`.
    pub rollout: String,
    /// The rollout's uid (part of the rollout identity in the index).
    pub rollout_uid: String,
    /// Install path relative to the node's install root.
    pub target_path: String,
    /// Versions to keep.
    pub keep_versions: u32,
    /// Chunk size; `None` for automatic.
    pub chunk_size: Option<u32>,
    /// The monotonic sequence number for this install path.
    pub sequence: u64,
    /// The EdgeNode names allowed to exchange chunks of this index, sorted and unique, never empty
    /// (an empty list in a chunk index means "any fleet member").
    pub peers: Vec<String>,
}

/// The signed chunk index, pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedArtifact {
    /// `registry/repo@sha256:<hex>` of the index artifact.
    pub reference: String,
}

/// Why a pipeline step failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The registry could not be reached or refused the request (retried with backoff).
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry refused the operator's credentials or scope, or its certificate is not trusted
    /// (retried with backoff: a rotated Secret or a mounted CA heals it without a restart).
    #[error("registry access denied: {0}")]
    AccessDenied(String),
    /// The reference or a registry object is malformed (not retried until the spec changes).
    #[error("invalid artifact: {0}")]
    Invalid(String),
    /// The artifact carries no signature.
    #[error("the artifact is not signed")]
    Unsigned,
    /// The artifact is signed, but by no key of the trust policy.
    #[error("untrusted signature: {0}")]
    Untrusted(String),
    /// A trusted key signed the digest for another repository (copied or tagged across repositories).
    #[error("signed for another repository: {0}")]
    RepositoryMismatch(String),
    /// The signed version claim is malformed, or the signatures claim different versions.
    #[error("invalid version claim: {0}")]
    InvalidVersionClaim(String),
    /// Building, pushing or signing the index failed.
    #[error("indexing failed: {0}")]
    Index(String),
    /// A peer grant could not be made (an unpinned index reference, a signing failure).
    #[error("peer grant: {0}")]
    Grant(#[from] pollen_trust::grant::GrantError),
}

/// The three registry-facing steps of a rollout.
pub trait ArtifactPipeline: Send + Sync + 'static {
    /// Pin a tag (or check a digest) and learn the payload size.
    fn resolve<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<PinnedArtifact, PipelineError>>;

    /// Check the publisher signature on the pinned manifest against the trusted publishers: signed by
    /// one of their keys, for the artifact's repository. Returns the publisher whose key verified and
    /// the version its signature claims.
    fn verify_publisher<'a>(
        &'a self,
        artifact: &'a PinnedArtifact,
        publishers: &'a [Publisher],
    ) -> BoxFuture<'a, Result<VerifiedPublisher, PipelineError>>;

    /// Build the chunk index from the payload, push it and sign it with the director key.
    fn build_index<'a>(
        &'a self,
        request: &'a IndexRequest,
    ) -> BoxFuture<'a, Result<IndexedArtifact, PipelineError>>;

    /// The director's peer grant (base64) for `node` on the index at the pinned `index_reference`;
    /// `existing`, the one the node's assignment holds, is kept while it verifies.
    fn peer_grant(
        &self,
        index_reference: &str,
        node: &str,
        existing: Option<&str>,
    ) -> Result<String, PipelineError>;
}
