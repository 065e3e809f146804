//! The verified index: a [`ChunkIndex`] whose director and publisher signatures, payload binding, sequence
//! and expiry have all been checked. Only this crate's verifier (and, with the `testing` feature, its test
//! helpers, which run the same verifier) can construct one, so a value of this type is proof of the checks.
//!
//! Non-goals: it does not re-check anything; it carries the result.

use std::ops::Deref;

use crate::index::{ChunkIndex, Hash32};

/// Where the verified payload lives, resolved from the signed objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPayload {
    /// Registry host (and port), e.g. `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path inside the registry, e.g. `fleet/firmware`.
    pub repository: String,
    /// Digest of the publisher-signed payload manifest, `sha256:<hex>`.
    pub manifest_digest: String,
    /// Digest of the payload blob (the manifest's single layer), `sha256:<hex>`; equals the index's payload digest.
    pub blob_digest: String,
    /// The version the publisher's signature claims, if it makes a claim.
    pub version: Option<semver::Version>,
}

impl ResolvedPayload {
    /// The pinned payload manifest reference, `registry/repository@sha256:<hex>`.
    pub fn reference(&self) -> String {
        format!("{}/{}@{}", self.registry, self.repository, self.manifest_digest)
    }

    /// The payload blob, for (range) GETs against the origin through [`crate::Registry::blob_range`].
    pub fn blob_reference(&self) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            self.blob_digest.clone(),
        )
    }
}

/// A chunk index that passed every check of the verifier. Dereferences to the [`ChunkIndex`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedIndex {
    index: ChunkIndex,
    id: Hash32,
    payload: ResolvedPayload,
    index_reference: String,
}

impl VerifiedIndex {
    /// Only the verifier calls this, after every check passed.
    pub(crate) fn new(index: ChunkIndex, payload: ResolvedPayload, index_reference: String) -> Self {
        let id = index.id();
        VerifiedIndex {
            index,
            id,
            payload,
            index_reference,
        }
    }

    /// The index identity (BLAKE3 of its encoding), as used on the wire.
    pub fn id(&self) -> Hash32 {
        self.id
    }

    /// Where the payload lives.
    pub fn payload_location(&self) -> &ResolvedPayload {
        &self.payload
    }

    /// The pinned reference of the director-signed index manifest, `registry/repository@sha256:<hex>`.
    pub fn index_reference(&self) -> &str {
        &self.index_reference
    }

    /// Digest of the index's OCI manifest (`sha256:<hex>`), the part of [`Self::index_reference`]
    /// after `@`; peer grants name the index by it.
    pub fn index_digest(&self) -> &str {
        self.index_reference.rsplit_once('@').map_or("", |(_, d)| d)
    }

    /// The index itself.
    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }
}

impl Deref for VerifiedIndex {
    type Target = ChunkIndex;
    fn deref(&self) -> &ChunkIndex {
        &self.index
    }
}
