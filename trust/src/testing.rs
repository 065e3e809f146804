//! Test helpers (cargo feature `testing`): real signed and verified indexes with ephemeral keys, so that
//! other crates' tests go through the real signing and the real verifier instead of a bypass.
//!
//! [`Fixture::new`] builds everything in memory (payload manifest, cosign signatures, index manifest, index
//! blob) and runs [`verify::verify_evidence`]; [`publish_and_verify`] does the same against a real registry.
//!
//! Non-goals: anything for production use.

use std::collections::BTreeMap;

use crate::cosign::StoredSignature;
use crate::index::{IndexError, IndexMeta, TargetSpec, build_index};
use crate::keys::{KeyError, SigningKey};
use crate::oci::{self, Descriptor, INDEX_ARTIFACT_TYPE, Manifest, PAYLOAD_ARTIFACT_TYPE, TITLE_ANNOTATION};
use crate::publish::{self, IndexRequest, PublishError, PublishOptions};
use crate::registry::{Registry, parse_reference};
use crate::verified::VerifiedIndex;
use crate::verify::{self, Evidence, SignedManifest, TrustPolicy, VerifyContext, VerifyError};

/// Default index decisions for tests: rollout `default/test`, sequence 1, target `payload.bin`, no expiry,
/// any peer.
pub fn test_meta() -> IndexMeta {
    IndexMeta {
        media_type: oci::DEFAULT_PAYLOAD_MEDIA_TYPE.into(),
        target: TargetSpec {
            path: "payload.bin".into(),
            keep_versions: 2,
        },
        rollout: "default/test".into(),
        sequence: 1,
        downgrade: false,
        expires_at: None,
        peers: Vec::new(),
    }
}

/// The version the publisher of a [`Fixture`] claims.
pub const FIXTURE_VERSION: &str = "1.0.0";

/// A signature over `digest` as cosign makes it.
pub fn sign_digest(key: &SigningKey, repository: &str, digest: &str) -> Result<StoredSignature, KeyError> {
    let payload = oci::simple_signing_payload(repository, digest);
    let signature = key.sign(&payload)?;
    Ok(StoredSignature { payload, signature })
}

/// A signature over `digest` claiming `version`, as `cosign sign -a pollen.dev/version=<version>` makes it.
pub fn sign_digest_claiming(
    key: &SigningKey,
    repository: &str,
    digest: &str,
    version: &str,
) -> Result<StoredSignature, KeyError> {
    let claim = BTreeMap::from([(oci::VERSION_ANNOTATION.to_string(), version.to_string())]);
    let payload = oci::simple_signing_payload_with(repository, digest, &claim);
    let signature = key.sign(&payload)?;
    Ok(StoredSignature { payload, signature })
}

/// Why a fixture could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Key generation or signing failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The index values are invalid.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The verifier refused the fixture (a bug).
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// A complete, really signed and verified chunk index with its keys and evidence.
pub struct Fixture {
    /// The publisher's ephemeral key.
    pub publisher: SigningKey,
    /// The director's ephemeral key.
    pub director: SigningKey,
    /// The trust policy holding both public keys.
    pub trust: TrustPolicy,
    /// The objects as a registry would hold them; tamper with a clone to test refusals.
    pub evidence: Evidence,
    /// The verified index.
    pub verified: VerifiedIndex,
}

impl Fixture {
    /// Builds and verifies an index of `payload` in `chunk_size` chunks, located at `registry/repository`;
    /// the publisher claims version [`FIXTURE_VERSION`].
    pub fn new(
        registry: &str,
        repository: &str,
        payload: &[u8],
        chunk_size: u32,
        meta: IndexMeta,
    ) -> Result<Fixture, FixtureError> {
        let publisher = SigningKey::generate()?;
        let director = SigningKey::generate()?;
        let repo = format!("{registry}/{repository}");
        let index = build_index(payload, chunk_size, meta)?;

        let mut layer = Descriptor::of(&index.payload.media_type, payload);
        layer.annotations = Some(BTreeMap::from([(
            TITLE_ANNOTATION.to_string(),
            "payload.bin".to_string(),
        )]));
        let pm = Manifest::artifact(PAYLOAD_ARTIFACT_TYPE, vec![layer], None).to_bytes();
        let pdigest = oci::sha256_digest(&pm);
        let psig = sign_digest_claiming(&publisher, &repo, &pdigest, FIXTURE_VERSION)?;

        let blob = index.encode();
        let subject = Descriptor::of(oci::OCI_MANIFEST_MEDIA_TYPE, &pm);
        let im = Manifest::artifact(
            INDEX_ARTIFACT_TYPE,
            vec![Descriptor::of(INDEX_ARTIFACT_TYPE, &blob)],
            Some(subject),
        )
        .to_bytes();
        let idigest = oci::sha256_digest(&im);
        let isig = sign_digest(&director, &repo, &idigest)?;

        let evidence = Evidence {
            registry: registry.into(),
            repository: repository.into(),
            index: SignedManifest {
                digest: idigest,
                manifest: im,
                signatures: vec![isig],
            },
            index_blob: blob,
            payload: SignedManifest {
                digest: pdigest,
                manifest: pm,
                signatures: vec![psig],
            },
        };
        let trust = TrustPolicy {
            publisher_keys: vec![publisher.public_key()?],
            director_key: director.public_key()?,
        };
        let verified = verify::verify_evidence(&evidence, &trust, &VerifyContext::now())?;
        Ok(Fixture {
            publisher,
            director,
            trust,
            evidence,
            verified,
        })
    }
}

/// Everything [`publish_and_verify`] made.
pub struct Published {
    /// The publisher's ephemeral key.
    pub publisher: SigningKey,
    /// The director's ephemeral key.
    pub director: SigningKey,
    /// The trust policy holding both public keys.
    pub trust: TrustPolicy,
    /// The pinned index reference.
    pub index_reference: String,
    /// The index, verified through the registry.
    pub verified: VerifiedIndex,
}

/// Why [`publish_and_verify`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    /// Key generation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Publishing or indexing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Verification failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// Publishes `payload` to `target` (`registry/repo:tag`) as version 1.0.0 with an ephemeral publisher key, indexes it with an
/// ephemeral director key, and verifies it through the registry.
pub async fn publish_and_verify(
    reg: &Registry,
    target: &str,
    payload: Vec<u8>,
    req: &IndexRequest,
) -> Result<Published, PublishedError> {
    let publisher = SigningKey::generate()?;
    let director = SigningKey::generate()?;
    let r = parse_reference(target).map_err(PublishError::from)?;
    let p = publish::publish_bytes(
        reg,
        &r,
        "payload.bin",
        payload,
        &publisher,
        &PublishOptions {
            version: Some(semver::Version::new(1, 0, 0)),
            ..PublishOptions::default()
        },
    )
    .await?;
    let trust = TrustPolicy {
        publisher_keys: vec![publisher.public_key()?],
        director_key: director.public_key()?,
    };
    let idx = publish::create_index(
        reg,
        &p.reference,
        req,
        &director,
        &trust.publisher_keys,
        |_, _| {},
    )
    .await?;
    let verified = verify::verify(reg, &idx.reference, &trust, &VerifyContext::now()).await?;
    Ok(Published {
        publisher,
        director,
        trust,
        index_reference: idx.reference,
        verified,
    })
}

/// A default index request: rollout `default/test`, sequence 1, target `payload.bin`, the given chunk size.
pub fn test_request(chunk_size: Option<u32>) -> IndexRequest {
    let m = test_meta();
    IndexRequest {
        rollout: m.rollout,
        sequence: m.sequence,
        target: m.target,
        downgrade: false,
        expires_at: None,
        peers: Vec::new(),
        chunk_size,
    }
}
