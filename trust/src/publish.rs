//! Publishing: the publisher pushes a payload as an OCI 1.1 artifact and signs it, with a version claim
//! (`pollen.dev/version` in the simple-signing payload, as `cosign sign -a` writes it: the version given,
//! else the tag when it is a semantic version, else publishing refuses); the director (operator)
//! streams that payload back, builds its chunk index, pushes the index as a referrer of the payload manifest
//! and signs it.
//!
//! Payload files are streamed: one pass to hash, one pass to upload, memory bounded by a read buffer.
//! The index is found by its digest (printed and returned), by the OCI 1.1 referrers of the payload
//! manifest (the referrers tag schema `sha256-<hex>` is kept up to date, for registries such as
//! distribution 2.8 that lack the referrers API), and by the tag `sha256-<payload hex>.pollen-index`,
//! which names the latest index pushed for the payload.
//!
//! Non-goals: multi-layer payloads, compression, garbage collection of old indexes.

use std::collections::BTreeMap;
use std::path::Path;

use oci_client::Reference;
use sha2::Digest as _;
use tokio::io::AsyncReadExt as _;

use crate::cosign::{self, SignError};
use crate::index::{
    ChunkIndex, FixedChunker, IndexBuilder, IndexError, IndexMeta, TargetSpec, chunk_size_for,
};
use crate::keys::{PublicKey, SigningKey};
use crate::oci::{
    self, DEFAULT_PAYLOAD_MEDIA_TYPE, Descriptor, FormatError, INDEX_ARTIFACT_TYPE, ImageIndex, Manifest,
    OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, PAYLOAD_ARTIFACT_TYPE, TITLE_ANNOTATION,
};
use crate::registry::{Registry, RegistryError, at_digest, at_tag, parse_reference};
use crate::verify::{self, SignedManifest};

/// Annotation on the index manifest naming its rollout (informational; the signed index is authoritative).
pub const ROLLOUT_ANNOTATION: &str = "dev.pollen.rollout";
/// Annotation on the index manifest giving its sequence (informational).
pub const SEQUENCE_ANNOTATION: &str = "dev.pollen.sequence";

/// Why publishing or indexing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The payload file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The payload manifest is not a single-layer artifact.
    #[error("payload manifest: {0}")]
    Format(#[from] FormatError),
    /// The index could not be built from the given values.
    #[error("chunk index: {0}")]
    Index(#[from] IndexError),
    /// The payload blob streamed from the registry does not match its manifest layer.
    #[error(
        "payload blob is {actual} ({actual_size} bytes), manifest layer says {expected} ({expected_size} bytes)"
    )]
    PayloadDigest {
        /// The layer digest.
        expected: String,
        /// Its size.
        expected_size: u64,
        /// The digest of the bytes received.
        actual: String,
        /// Bytes received.
        actual_size: u64,
    },
    /// No version was given and the tag is not a semantic version.
    #[error(
        "no version to claim: give one (`pollen publish --version`); the tag {tag:?} is not a semantic version such as 1.4.2"
    )]
    NoVersion {
        /// The tag published to (empty when publishing by digest).
        tag: String,
    },
    /// The payload is not signed by any of the publisher keys given.
    #[error("payload is not signed by a trusted publisher: {0}")]
    Unverified(#[source] Box<verify::VerifyError>),
}

/// A published payload.
#[derive(Clone, Debug)]
pub struct Published {
    /// The pinned reference, `registry/repo@sha256:…`.
    pub reference: String,
    /// The payload manifest digest.
    pub manifest_digest: String,
    /// The payload layer.
    pub layer: Descriptor,
}

/// Options for [`publish_file`].
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// Layer media type; default `application/octet-stream`.
    pub media_type: Option<String>,
    /// Name in the `org.opencontainers.image.title` annotation; default the file name.
    pub title: Option<String>,
    /// The version the signature claims; default the tag, when it is a semantic version.
    pub version: Option<semver::Version>,
}

/// The version a publish to `target` claims: `opts.version`, else the tag when it is a semantic version.
pub fn claimed_version(target: &Reference, opts: &PublishOptions) -> Result<semver::Version, PublishError> {
    if let Some(v) = &opts.version {
        return Ok(v.clone());
    }
    let tag = target.tag().unwrap_or_default();
    semver::Version::parse(tag).map_err(|_| PublishError::NoVersion { tag: tag.into() })
}

async fn hash_file(path: &Path) -> Result<(String, u64), PublishError> {
    let io = |source| PublishError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = tokio::fs::File::open(path).await.map_err(io)?;
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(sha.finalize())), size))
}

fn payload_layer(digest: String, size: u64, opts: &PublishOptions, default_title: &str) -> Descriptor {
    Descriptor {
        media_type: opts
            .media_type
            .clone()
            .unwrap_or_else(|| DEFAULT_PAYLOAD_MEDIA_TYPE.into()),
        digest,
        size,
        artifact_type: None,
        annotations: Some(BTreeMap::from([(
            TITLE_ANNOTATION.to_string(),
            opts.title.clone().unwrap_or_else(|| default_title.to_string()),
        )])),
        data: None,
    }
}

async fn push_payload_manifest(
    reg: &Registry,
    target: &Reference,
    layer: Descriptor,
    key: &SigningKey,
    version: &semver::Version,
) -> Result<Published, PublishError> {
    reg.push_blob(target, oci::EMPTY_CONFIG.to_vec()).await?;
    let manifest = Manifest::artifact(PAYLOAD_ARTIFACT_TYPE, vec![layer.clone()], None);
    let digest = reg
        .push_manifest(target, manifest.to_bytes(), OCI_MANIFEST_MEDIA_TYPE)
        .await?;
    let claim = BTreeMap::from([(oci::VERSION_ANNOTATION.to_string(), version.to_string())]);
    cosign::sign_with(reg, target, &digest, key, &claim).await?;
    Ok(Published {
        reference: format!("{}/{}@{}", target.registry(), target.repository(), digest),
        manifest_digest: digest,
        layer,
    })
}

/// Pushes `path` to `target` (`registry/repo:tag`) as a one-layer OCI 1.1 artifact and signs its manifest
/// with `key`, cosign-style, claiming [`claimed_version`]. `progress(sent, total)` reports the upload.
pub async fn publish_file(
    reg: &Registry,
    target: &Reference,
    path: &Path,
    key: &SigningKey,
    opts: &PublishOptions,
    progress: impl Fn(u64, u64) + Send + Sync + 'static,
) -> Result<Published, PublishError> {
    let version = claimed_version(target, opts)?;
    let (digest, size) = hash_file(path).await?;
    reg.push_blob_file(target, path, &digest, size, move |sent| progress(sent, size))
        .await?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "payload".into());
    push_payload_manifest(
        reg,
        target,
        payload_layer(digest, size, opts, &name),
        key,
        &version,
    )
    .await
}

/// Pushes an in-memory payload (tests, small payloads); otherwise as [`publish_file`].
pub async fn publish_bytes(
    reg: &Registry,
    target: &Reference,
    name: &str,
    bytes: Vec<u8>,
    key: &SigningKey,
    opts: &PublishOptions,
) -> Result<Published, PublishError> {
    let version = claimed_version(target, opts)?;
    let size = bytes.len() as u64;
    let desc = reg.push_blob(target, bytes).await?;
    push_payload_manifest(
        reg,
        target,
        payload_layer(desc.digest, size, opts, name),
        key,
        &version,
    )
    .await
}

/// The director's decisions for a new index (see [`IndexMeta`]), and optionally the chunk size.
#[derive(Clone, Debug)]
pub struct IndexRequest {
    /// Rollout identity, `namespace/name`.
    pub rollout: String,
    /// Sequence, at least 1.
    pub sequence: u64,
    /// Install target.
    pub target: TargetSpec,
    /// Explicit downgrade.
    pub downgrade: bool,
    /// Expiry, unix seconds.
    pub expires_at: Option<u64>,
    /// Authorised node names; empty means any fleet member.
    pub peers: Vec<String>,
    /// Chunk size; `None` picks [`crate::index::auto_chunk_size`].
    pub chunk_size: Option<u32>,
}

/// A pushed and signed chunk index.
#[derive(Clone, Debug)]
pub struct PublishedIndex {
    /// The pinned reference of the index manifest, `registry/repo@sha256:…`.
    pub reference: String,
    /// The index manifest digest.
    pub manifest_digest: String,
    /// The index.
    pub index: ChunkIndex,
}

/// Streams the payload at `payload_reference` from the registry, builds its chunk index, pushes it as a
/// referrer of the payload manifest and signs it with `director`. If `publisher_keys` is not empty, the
/// payload's publisher signature is checked first. `progress(bytes_hashed, total)` reports the build.
pub async fn create_index(
    reg: &Registry,
    payload_reference: &str,
    req: &IndexRequest,
    director: &SigningKey,
    publisher_keys: &[PublicKey],
    progress: impl Fn(u64, u64),
) -> Result<PublishedIndex, PublishError> {
    let pref = parse_reference(payload_reference)?;
    let (pbytes, pdigest) = reg.pull_manifest(&pref).await?;
    if !publisher_keys.is_empty() {
        let signatures = cosign::fetch_signatures(reg, &pref, &pdigest).await?;
        let signed = SignedManifest {
            digest: pdigest.clone(),
            manifest: pbytes.clone(),
            signatures,
        };
        verify::check_publisher(&signed, publisher_keys, &crate::registry::repository_name(&pref))
            .map_err(|e| PublishError::Unverified(Box::new(e)))?;
    }
    let pm = Manifest::parse(&pbytes, "payload manifest")?;
    let [layer] = <[Descriptor; 1]>::try_from(pm.layers.clone()).map_err(|_| FormatError::Shape {
        what: "payload manifest",
        reason: "not exactly one layer".into(),
    })?;
    let chunk_size = chunk_size_for(req.chunk_size, layer.size);
    let chunker = FixedChunker::new(chunk_size).ok_or(IndexError::ChunkSize(chunk_size))?;
    let mut builder = IndexBuilder::new(chunker);
    let total = layer.size;
    let mut last_report = 0u64;
    let streamed = reg
        .stream_blob(&at_digest(&pref, &layer.digest), &layer, |piece| {
            builder.update(piece);
            let seen = builder.bytes_seen();
            if seen - last_report >= 64 << 20 || seen == total {
                last_report = seen;
                progress(seen, total);
            }
            seen <= total
        })
        .await;
    match streamed {
        Ok(()) | Err(RegistryError::TooLarge { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let index = builder.finish(IndexMeta {
        media_type: layer.media_type.clone(),
        target: req.target.clone(),
        rollout: req.rollout.clone(),
        sequence: req.sequence,
        downgrade: req.downgrade,
        expires_at: req.expires_at,
        peers: req.peers.clone(),
    })?;
    if index.payload.oci_digest() != layer.digest || index.payload.size != layer.size {
        return Err(PublishError::PayloadDigest {
            expected: layer.digest,
            expected_size: layer.size,
            actual: index.payload.oci_digest(),
            actual_size: index.payload.size,
        });
    }
    push_index(reg, &pref, &pdigest, &pbytes, index, director).await
}

/// Pushes an already built `index` for the payload manifest `payload_digest` (whose bytes are
/// `payload_manifest`) and signs it. [`create_index`] calls this; tests use it to push crafted indexes.
pub async fn push_index(
    reg: &Registry,
    repo: &Reference,
    payload_digest: &str,
    payload_manifest: &[u8],
    index: ChunkIndex,
    director: &SigningKey,
) -> Result<PublishedIndex, PublishError> {
    let encoded = index.encode();
    let mut layer = Descriptor::of(INDEX_ARTIFACT_TYPE, &encoded);
    reg.push_blob(repo, encoded).await?;
    reg.push_blob(repo, oci::EMPTY_CONFIG.to_vec()).await?;
    layer.media_type = INDEX_ARTIFACT_TYPE.into();
    let mut subject = Descriptor::of(OCI_MANIFEST_MEDIA_TYPE, payload_manifest);
    subject.digest = payload_digest.to_string();
    let mut manifest = Manifest::artifact(INDEX_ARTIFACT_TYPE, vec![layer], Some(subject));
    manifest.annotations = Some(BTreeMap::from([
        (ROLLOUT_ANNOTATION.to_string(), index.rollout.clone()),
        (SEQUENCE_ANNOTATION.to_string(), index.sequence.to_string()),
    ]));
    let bytes = manifest.to_bytes();
    let digest = oci::sha256_digest(&bytes);
    reg.push_manifest(
        &at_tag(repo, &oci::index_fallback_tag(payload_digest)),
        bytes.clone(),
        OCI_MANIFEST_MEDIA_TYPE,
    )
    .await?;
    add_referrer(reg, repo, payload_digest, &manifest, &bytes).await?;
    cosign::sign(reg, repo, &digest, director).await?;
    Ok(PublishedIndex {
        reference: format!("{}/{}@{}", repo.registry(), repo.repository(), digest),
        manifest_digest: digest,
        index,
    })
}

/// Adds the index manifest to the referrers tag-schema index of the payload manifest.
async fn add_referrer(
    reg: &Registry,
    repo: &Reference,
    payload_digest: &str,
    manifest: &Manifest,
    bytes: &[u8],
) -> Result<(), PublishError> {
    let tag_ref = at_tag(repo, &oci::referrers_tag(payload_digest));
    let mut list = match reg.pull_manifest_opt(&tag_ref).await? {
        Some((b, _)) => serde_json::from_slice::<ImageIndex>(&b).unwrap_or(ImageIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX_MEDIA_TYPE.into()),
            manifests: Vec::new(),
        }),
        None => ImageIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX_MEDIA_TYPE.into()),
            manifests: Vec::new(),
        },
    };
    let mut d = Descriptor::of(OCI_MANIFEST_MEDIA_TYPE, bytes);
    if list.manifests.iter().any(|m| m.digest == d.digest) {
        return Ok(());
    }
    d.artifact_type = manifest.artifact_type.clone();
    d.annotations = manifest.annotations.clone();
    list.manifests.push(d);
    let body = serde_json::to_vec(&list).expect("index serialises");
    reg.push_manifest(&tag_ref, body, OCI_INDEX_MEDIA_TYPE).await?;
    Ok(())
}
