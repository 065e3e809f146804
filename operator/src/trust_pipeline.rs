//! The real [`ArtifactPipeline`]: `pollen-trust` against OCI registries.
//!
//! - resolve: fetch the payload manifest by tag or digest, pin it, read the payload layer's size;
//! - verify: fetch the cosign signatures stored beside the manifest and check them against each
//!   publisher key of the TrustPolicy, one key at a time, so the condition names the publisher; a
//!   signature must name the artifact's repository, and its version claim is returned;
//! - index: stream the payload, build the chunk index, push it as a referrer of the payload and sign
//!   it with the director key (read once, at start, from a mounted file).
//!
//! Registries are reached over HTTPS (system roots plus an optional CA bundle), except hosts listed as
//! insecure (plain HTTP, for a registry on 127.0.0.1 in tests and labs). Credentials come from a mounted
//! Docker config: the operator's own, with push rights for the index; devices never see it.
//!
//! Non-goals: no cryptography or registry protocol of its own.

use std::sync::Arc;

use futures::future::BoxFuture;
use pollen_crds::Publisher;
use pollen_trust::publish::{self, PublishError};
use pollen_trust::registry::{self as reg, RegistryError};
use pollen_trust::verify::{self, SignedManifest, VerifyError};
use pollen_trust::{PublicKey, Registry, RegistryOptions, SigningKey, TargetSpec, cosign, oci};
use tracing::warn;

use crate::grants::GrantSigner;
use crate::pipeline::{
    ArtifactPipeline, IndexRequest, IndexedArtifact, PinnedArtifact, PipelineError, VerifiedPublisher,
};

/// Why the pipeline could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A registry client could not be built (for example an unreadable Docker config).
    #[error("registry client: {0}")]
    Registry(#[source] RegistryError),
    /// The director key cannot sign peer grants.
    #[error("director key: {0}")]
    Grants(#[source] pollen_trust::grant::GrantError),
}

/// The pipeline backed by `pollen-trust`.
pub struct TrustPipeline {
    registry: Registry,
    director: Arc<SigningKey>,
    grants: GrantSigner,
}

impl TrustPipeline {
    /// Build the registry client; `director` signs every chunk index.
    pub fn new(opts: &RegistryOptions, director: SigningKey) -> Result<Self, SetupError> {
        let director = Arc::new(director);
        Ok(Self {
            grants: GrantSigner::new(director.clone()).map_err(SetupError::Grants)?,
            registry: Registry::new(opts).map_err(SetupError::Registry)?,
            director,
        })
    }
}

fn registry_error(e: RegistryError) -> PipelineError {
    match e {
        RegistryError::Reference { .. } => PipelineError::Invalid(e.to_string()),
        // Wrong or missing credentials, an unknown CA, a refused scope: retried (a rotated Secret or a
        // fixed CA heals it), but named for what it is.
        other if other.is_permanent() => PipelineError::AccessDenied(other.to_string()),
        other => PipelineError::Unavailable(other.to_string()),
    }
}

impl ArtifactPipeline for TrustPipeline {
    fn resolve<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<PinnedArtifact, PipelineError>> {
        Box::pin(async move {
            let registry = &self.registry;
            let r = reg::parse_reference(reference).map_err(registry_error)?;
            let (bytes, digest) = registry.pull_manifest(&r).await.map_err(registry_error)?;
            let manifest = oci::Manifest::parse(&bytes, "payload manifest")
                .map_err(|e| PipelineError::Invalid(format!("{reference}: {e}")))?;
            let [layer] = manifest.layers.as_slice() else {
                return Err(PipelineError::Invalid(format!(
                    "{reference}: a Pollen payload has exactly one layer, this one has {}",
                    manifest.layers.len()
                )));
            };
            Ok(PinnedArtifact {
                reference: format!("{}/{}@{}", r.registry(), r.repository(), digest),
                digest,
                size: layer.size,
            })
        })
    }

    fn verify_publisher<'a>(
        &'a self,
        artifact: &'a PinnedArtifact,
        publishers: &'a [Publisher],
    ) -> BoxFuture<'a, Result<VerifiedPublisher, PipelineError>> {
        Box::pin(async move {
            let registry = &self.registry;
            let r = reg::parse_reference(&artifact.reference).map_err(registry_error)?;
            let (manifest, digest) = registry.pull_manifest(&r).await.map_err(registry_error)?;
            let signatures = cosign::fetch_signatures(registry, &r, &digest)
                .await
                .map_err(|e| match e {
                    cosign::SignError::Registry(e) => registry_error(e),
                    other => PipelineError::Untrusted(other.to_string()),
                })?;
            let signed = SignedManifest {
                digest,
                manifest,
                signatures,
            };
            let mut last = None;
            for p in publishers {
                let key = match PublicKey::from_pem(p.public_key.as_bytes()) {
                    Ok(k) => k,
                    Err(e) => {
                        warn!(publisher = %p.name, "skipping an unreadable publisher key: {e}");
                        continue;
                    }
                };
                match verify::check_publisher(&signed, std::slice::from_ref(&key), &reg::repository_name(&r))
                {
                    Ok(version) => {
                        return Ok(VerifiedPublisher {
                            publisher: p.name.clone(),
                            version,
                        });
                    }
                    Err(VerifyError::PayloadUnsigned { .. }) => return Err(PipelineError::Unsigned),
                    // This publisher's key verified: its signature is the answer.
                    Err(e @ VerifyError::RepositoryMismatch { .. }) => {
                        return Err(PipelineError::RepositoryMismatch(e.to_string()));
                    }
                    Err(e @ VerifyError::VersionClaim { .. }) => {
                        return Err(PipelineError::InvalidVersionClaim(e.to_string()));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(PipelineError::Untrusted(match last {
                Some(e) => e.to_string(),
                None => "the trust policy holds no readable publisher key".into(),
            }))
        })
    }

    fn build_index<'a>(
        &'a self,
        request: &'a IndexRequest,
    ) -> BoxFuture<'a, Result<IndexedArtifact, PipelineError>> {
        Box::pin(async move {
            let registry = &self.registry;
            let req = publish::IndexRequest {
                rollout: request.rollout.clone(),
                sequence: request.sequence.max(1),
                target: TargetSpec {
                    path: request.target_path.clone(),
                    keep_versions: request.keep_versions,
                },
                downgrade: false,
                expires_at: None,
                peers: request.peers.clone(),
                chunk_size: request.chunk_size,
            };
            let published = publish::create_index(
                registry,
                &request.artifact.reference,
                &req,
                &self.director,
                &[],
                |_, _| {},
            )
            .await
            .map_err(|e| match e {
                PublishError::Registry(e) => registry_error(e),
                other => PipelineError::Index(other.to_string()),
            })?;
            Ok(IndexedArtifact {
                reference: published.reference,
            })
        })
    }

    fn peer_grant(
        &self,
        index_reference: &str,
        node: &str,
        existing: Option<&str>,
    ) -> Result<String, PipelineError> {
        Ok(self.grants.grant(index_reference, node, existing)?)
    }
}
