//! Pollen's trust chain: the chunk index the director signs, cosign-compatible signing and publishing, and
//! the dual (publisher + director) verification every edge node runs before it installs a byte.
//!
//! Layers, each with its own error type:
//! - [`index`]: the chunk index, its canonical encoding and per-chunk verification (pure, no I/O);
//! - [`oci`]: OCI manifests and cosign's signature formats (pure);
//! - [`keys`]: cosign-format keys;
//! - [`registry`]: the registry client: TLS, bearer-token and basic auth, Docker config credentials and
//!   helpers, capped manifest and blob reads, range GETs; plain HTTP only for listed hosts;
//! - [`cosign`]: storing and fetching cosign signatures;
//! - [`publish`]: publishing payloads, building and pushing signed indexes;
//! - [`pki`]: the fleet CA, node certificates from signing requests, the signed revocation list;
//! - [`verify`]: the dual verification, producing [`VerifiedIndex`] ([`verified`]).
//!
//! With the `testing` feature, [`testing`] builds real signed and verified indexes with ephemeral keys.
//!
//! Non-goals: keyless signing (Fulcio), transparency logs (Rekor) and TUF; verification is offline apart
//! from fetching a few small objects from the registry.

pub mod cosign;
pub mod grant;
pub mod index;
pub mod keys;
pub mod oci;
pub mod pki;
pub mod publish;
pub mod registry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod verified;
pub mod verify;

pub use index::{
    ChunkError, ChunkIndex, FixedChunker, IndexBuilder, IndexError, IndexMeta, PayloadRef, TargetSpec,
};
pub use keys::{PublicKey, SigningKey};
pub use registry::{Registry, RegistryOptions};
pub use verified::{ResolvedPayload, VerifiedIndex};
pub use verify::{TrustPolicy, VerifyContext, VerifyError};
