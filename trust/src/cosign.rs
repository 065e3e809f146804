//! Signing and fetching signatures the way cosign stores them: a simple-signing payload per signature, as a
//! layer of the signature manifest tagged `sha256-<hex>.sig` beside the signed manifest.
//!
//! Signing appends to an existing signature manifest (as cosign does), so cosign and Pollen signatures can
//! sit side by side. The payload names the repository (`docker-reference`) and may carry annotations, such as
//! the publisher's version claim. Nothing here decides trust: the verify module does.
//!
//! Non-goals: transparency-log entries, certificates, bundles, attestations.

use std::collections::BTreeMap;

use oci_client::Reference;

use crate::keys::{KeyError, SigningKey};
use crate::oci::{self, FormatError, Manifest, OCI_MANIFEST_MEDIA_TYPE};
use crate::registry::{Registry, RegistryError, at_digest, at_tag, repository_name};

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key could not sign.
    #[error("signing: {0}")]
    Key(#[from] KeyError),
    /// Reading or writing the signature manifest failed.
    #[error("signature storage: {0}")]
    Registry(#[from] RegistryError),
    /// The existing signature manifest is malformed.
    #[error("existing signature manifest: {0}")]
    Format(#[from] FormatError),
}

/// A signature as stored: the simple-signing payload and the signature over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSignature {
    /// The simple-signing payload bytes.
    pub payload: Vec<u8>,
    /// The DER signature over `payload`.
    pub signature: Vec<u8>,
}

/// Signs `manifest_digest` in `repo` with `key`, appending to its signature manifest. Returns the digest of
/// the new signature manifest.
pub async fn sign(
    reg: &Registry,
    repo: &Reference,
    manifest_digest: &str,
    key: &SigningKey,
) -> Result<String, SignError> {
    sign_with(reg, repo, manifest_digest, key, &BTreeMap::new()).await
}

/// As [`sign`], with `annotations` in the payload's `optional` map (what `cosign sign -a KEY=VALUE` does).
pub async fn sign_with(
    reg: &Registry,
    repo: &Reference,
    manifest_digest: &str,
    key: &SigningKey,
    annotations: &BTreeMap<String, String>,
) -> Result<String, SignError> {
    let payload = oci::simple_signing_payload_with(&repository_name(repo), manifest_digest, annotations);
    let signature = key.sign(&payload)?;
    let sig_ref = at_tag(repo, &oci::signature_tag(manifest_digest));
    let mut layers = match reg.pull_manifest_opt(&sig_ref).await? {
        Some((bytes, _)) => Manifest::parse(&bytes, "signature manifest")?.layers,
        None => Vec::new(),
    };
    let layer = oci::signature_layer(&payload, &signature);
    reg.push_blob(repo, payload).await?;
    layers.push(layer);
    let (manifest, config) = oci::signature_manifest(layers);
    reg.push_blob(repo, config).await?;
    Ok(reg
        .push_manifest(&sig_ref, manifest.to_bytes(), OCI_MANIFEST_MEDIA_TYPE)
        .await?)
}

/// Fetches every signature stored for `manifest_digest` in `repo` (none if there is no signature manifest).
/// Payload blobs are size-limited and checked against their descriptors.
pub async fn fetch_signatures(
    reg: &Registry,
    repo: &Reference,
    manifest_digest: &str,
) -> Result<Vec<StoredSignature>, SignError> {
    let sig_ref = at_tag(repo, &oci::signature_tag(manifest_digest));
    let Some((bytes, _)) = reg.pull_manifest_opt(&sig_ref).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for s in oci::parse_signature_manifest(&bytes)? {
        let blob_ref = at_digest(repo, &s.payload.digest);
        let payload = match reg
            .pull_blob(&blob_ref, &s.payload, oci::MAX_SIGNATURE_PAYLOAD_LEN)
            .await
        {
            Ok(p) => p,
            // A missing or corrupt signature blob is no signature; others may still verify.
            Err(
                RegistryError::NotFound { .. }
                | RegistryError::DigestMismatch { .. }
                | RegistryError::TooLarge { .. },
            ) => {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if oci::sha256_digest(&payload) != s.payload.digest {
            continue;
        }
        out.push(StoredSignature {
            payload,
            signature: s.signature,
        });
    }
    Ok(out)
}
