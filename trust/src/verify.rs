//! Dual verification: the edge node's gate before it fetches or installs a byte.
//!
//! Given a chunk-index reference and the trust material, [`verify`] fetches the few small objects (the index
//! manifest and its signatures, the index blob, the payload manifest and its signatures) and runs, in this
//! order, each check with its own error:
//!
//! 1. the index manifest matches the digest it was asked for ([`VerifyError::IndexManifestTampered`]);
//! 2. the director signed it, for this repository ([`VerifyError::IndexUnsigned`],
//!    [`VerifyError::DirectorSignature`], [`VerifyError::DirectorSignedOther`],
//!    [`VerifyError::RepositoryMismatch`]);
//! 3. it is a Pollen chunk-index artifact with a subject ([`VerifyError::IndexManifestFormat`]);
//! 4. the index blob matches the signed manifest and decodes ([`VerifyError::IndexTampered`],
//!    [`VerifyError::IndexDecode`]);
//! 5. the payload manifest is the subject ([`VerifyError::PayloadManifestTampered`]) and the publisher signed
//!    it for this repository ([`VerifyError::PayloadUnsigned`], [`VerifyError::PublisherSignature`],
//!    [`VerifyError::PublisherSignedOther`], [`VerifyError::RepositoryMismatch`]), with at most one
//!    well-formed version claim ([`VerifyError::VersionClaim`]), which the result carries;
//! 6. the index describes that manifest's only layer ([`VerifyError::PayloadManifestFormat`],
//!    [`VerifyError::PayloadMismatch`]);
//! 7. sequence and expiry ([`VerifyError::Rollback`], [`VerifyError::Expired`]).
//!
//! A signature binds a digest to the repository it was published in: the signed `docker-reference` must
//! name the repository being verified (both normalised as cosign does, [`oci::normalize_repository`]), so a
//! digest signed for one product cannot be copied into, or tagged in, another product's repository.
//!
//! The checks themselves are pure ([`verify_evidence`] over fetched [`Evidence`]); the network part only
//! fetches. Nothing else is contacted: no Fulcio, Rekor or TUF.
//!
//! Non-goals: deciding which sequence was last seen (the caller keeps that per target), fetching the payload.

use std::collections::BTreeMap;

use oci_client::Reference;

use crate::cosign::{self, SignError, StoredSignature};
use crate::index::{ChunkIndex, IndexError, MAX_ENCODED_LEN};
use crate::keys::PublicKey;
use crate::oci::{self, Descriptor, FormatError, INDEX_ARTIFACT_TYPE, Manifest};
use crate::registry::{Registry, RegistryError, at_digest, parse_reference, repository_name};
use crate::verified::{ResolvedPayload, VerifiedIndex};

/// The keys a node trusts.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    /// Publisher keys (from the TrustPolicy); a payload signed by any of them is accepted.
    pub publisher_keys: Vec<PublicKey>,
    /// The director (operator) key.
    pub director_key: PublicKey,
}

/// What the node knows besides the keys: the time and the sequences it has installed.
#[derive(Clone, Debug, Default)]
pub struct VerifyContext {
    /// Now, in unix seconds.
    pub now: u64,
    /// Highest sequence accepted so far per target path.
    pub last_sequence: BTreeMap<String, u64>,
}

impl VerifyContext {
    /// A context at the current system time with no history.
    pub fn now() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        VerifyContext {
            now,
            last_sequence: BTreeMap::new(),
        }
    }
}

/// Which of the two signatures a failure concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The director's signature on the index manifest.
    Director,
    /// The publisher's signature on the payload manifest.
    Publisher,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Director => "director",
            Role::Publisher => "publisher",
        })
    }
}

/// Why an index was not verified. Each variant names exactly one failed check.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The reference could not be parsed or an object could not be fetched.
    #[error("fetching {what}: {source}")]
    Fetch {
        /// The object.
        what: &'static str,
        /// The registry error.
        #[source]
        source: RegistryError,
    },
    /// The index manifest's bytes do not match the digest asked for.
    #[error("index manifest does not match its digest (tampered)")]
    IndexManifestTampered,
    /// No signature is stored for the index manifest.
    #[error("index manifest {digest} is not signed")]
    IndexUnsigned {
        /// The manifest digest.
        digest: String,
    },
    /// Signatures exist, but none is the director's.
    #[error("index manifest {digest} is not signed by the director key {key}")]
    DirectorSignature {
        /// The manifest digest.
        digest: String,
        /// The director key fingerprint.
        key: String,
    },
    /// The director signed a payload naming another manifest (a signature moved from another object).
    #[error("director signature is for {signed}, not {digest}")]
    DirectorSignedOther {
        /// The manifest digest.
        digest: String,
        /// The digest the signature vouches for.
        signed: String,
    },
    /// The index manifest is not a Pollen chunk-index artifact.
    #[error("index manifest: {0}")]
    IndexManifestFormat(#[source] FormatError),
    /// The index blob does not match the signed manifest's layer digest.
    #[error("chunk index blob does not match the signed manifest (tampered)")]
    IndexTampered,
    /// The index blob is not a valid chunk index.
    #[error("chunk index: {0}")]
    IndexDecode(#[source] IndexError),
    /// The payload manifest does not match the index manifest's subject digest.
    #[error("payload manifest does not match the subject digest (tampered)")]
    PayloadManifestTampered,
    /// No signature is stored for the payload manifest.
    #[error("payload manifest {digest} is not signed")]
    PayloadUnsigned {
        /// The manifest digest.
        digest: String,
    },
    /// Signatures exist, but none is by a trusted publisher key.
    #[error("payload manifest {digest} is not signed by any trusted publisher key")]
    PublisherSignature {
        /// The manifest digest.
        digest: String,
    },
    /// A publisher signed a payload naming another manifest.
    #[error("publisher signature is for {signed}, not {digest}")]
    PublisherSignedOther {
        /// The manifest digest.
        digest: String,
        /// The digest the signature vouches for.
        signed: String,
    },
    /// A trusted key signed this digest, but for another repository (the object was copied or tagged
    /// across repositories).
    #[error("the {role} signature on {digest} is for repository {signed}, not {expected}")]
    RepositoryMismatch {
        /// Whose signature.
        role: Role,
        /// The manifest digest.
        digest: String,
        /// The repository the signature names (`docker-reference`).
        signed: String,
        /// The repository being verified.
        expected: String,
    },
    /// The publisher's version claim is malformed, or its valid signatures claim different versions.
    #[error("publisher version claim on {digest}: {reason}")]
    VersionClaim {
        /// The manifest digest.
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// The payload manifest is not a single-layer artifact.
    #[error("payload manifest: {0}")]
    PayloadManifestFormat(#[source] FormatError),
    /// The index describes another payload than the signed manifest's layer.
    #[error(
        "index describes payload {index} ({index_size} bytes), manifest layer is {layer} ({layer_size} bytes)"
    )]
    PayloadMismatch {
        /// Digest in the index.
        index: String,
        /// Size in the index.
        index_size: u64,
        /// Digest of the manifest's layer.
        layer: String,
        /// Size of the manifest's layer.
        layer_size: u64,
    },
    /// The sequence is lower than one already accepted for the target, and no downgrade is allowed.
    #[error("sequence {sequence} for {target} is lower than {last} already accepted (rollback refused)")]
    Rollback {
        /// Target path.
        target: String,
        /// The index's sequence.
        sequence: u64,
        /// The last accepted sequence.
        last: u64,
    },
    /// The index has expired.
    #[error("index expired at {expires_at} (now {now})")]
    Expired {
        /// Expiry, unix seconds.
        expires_at: u64,
        /// Now, unix seconds.
        now: u64,
    },
}

/// A manifest with its digest and stored signatures.
#[derive(Clone, Debug)]
pub struct SignedManifest {
    /// The digest the manifest was asked for (or computed, when fetched by tag).
    pub digest: String,
    /// The manifest bytes.
    pub manifest: Vec<u8>,
    /// Signatures stored for `digest`.
    pub signatures: Vec<StoredSignature>,
}

/// Everything verification looks at, fetched.
#[derive(Clone, Debug)]
pub struct Evidence {
    /// Registry host.
    pub registry: String,
    /// Repository holding both the payload and the index.
    pub repository: String,
    /// The index manifest.
    pub index: SignedManifest,
    /// The chunk index blob.
    pub index_blob: Vec<u8>,
    /// The payload manifest.
    pub payload: SignedManifest,
}

fn check_signed(
    m: &SignedManifest,
    keys: &[PublicKey],
    role: Role,
    key_name: &str,
    repository: &str,
) -> Result<Option<semver::Version>, VerifyError> {
    if oci::sha256_digest(&m.manifest) != m.digest {
        return Err(match role {
            Role::Director => VerifyError::IndexManifestTampered,
            Role::Publisher => VerifyError::PayloadManifestTampered,
        });
    }
    if m.signatures.is_empty() {
        return Err(match role {
            Role::Director => VerifyError::IndexUnsigned {
                digest: m.digest.clone(),
            },
            Role::Publisher => VerifyError::PayloadUnsigned {
                digest: m.digest.clone(),
            },
        });
    }
    let expected = oci::normalize_repository(repository);
    let mut other = None;
    let mut foreign = None;
    let mut accepted = Vec::new();
    for s in &m.signatures {
        if !keys.iter().any(|k| k.verify(&s.signature, &s.payload)) {
            continue;
        }
        match oci::parse_simple_signing(&s.payload) {
            Ok(p) if p.manifest_digest != m.digest => other = Some(p.manifest_digest),
            Ok(p) if oci::normalize_repository(&p.docker_reference) != expected => {
                foreign = Some(p.docker_reference)
            }
            Ok(p) => accepted.push(p),
            Err(_) => other = Some("<malformed payload>".into()),
        }
    }
    if !accepted.is_empty() {
        if role == Role::Director {
            return Ok(None);
        }
        return version_claim(&m.digest, &accepted);
    }
    Err(match (role, foreign, other) {
        (role, Some(signed), _) => VerifyError::RepositoryMismatch {
            role,
            digest: m.digest.clone(),
            signed,
            expected: repository.into(),
        },
        (Role::Director, None, Some(signed)) => VerifyError::DirectorSignedOther {
            digest: m.digest.clone(),
            signed,
        },
        (Role::Publisher, None, Some(signed)) => VerifyError::PublisherSignedOther {
            digest: m.digest.clone(),
            signed,
        },
        (Role::Director, None, None) => VerifyError::DirectorSignature {
            digest: m.digest.clone(),
            key: key_name.into(),
        },
        (Role::Publisher, None, None) => VerifyError::PublisherSignature {
            digest: m.digest.clone(),
        },
    })
}

/// The one version the valid publisher signatures claim (signatures without a claim add nothing).
fn version_claim(
    digest: &str,
    accepted: &[oci::SimpleSigning],
) -> Result<Option<semver::Version>, VerifyError> {
    let mut claimed: Option<semver::Version> = None;
    for p in accepted {
        let v = p.version().map_err(|e| VerifyError::VersionClaim {
            digest: digest.into(),
            reason: e.to_string(),
        })?;
        match (&claimed, v) {
            (_, None) => {}
            (None, Some(v)) => claimed = Some(v),
            (Some(c), Some(v)) if *c == v => {}
            (Some(c), Some(v)) => {
                return Err(VerifyError::VersionClaim {
                    digest: digest.into(),
                    reason: format!("its signatures claim both {c} and {v}"),
                });
            }
        }
    }
    Ok(claimed)
}

/// Checks that a trusted publisher signed the payload manifest `m` for `repository`
/// (`registry/repository`), and returns the version it claims (used by the operator before indexing).
pub fn check_publisher(
    m: &SignedManifest,
    keys: &[PublicKey],
    repository: &str,
) -> Result<Option<semver::Version>, VerifyError> {
    check_signed(m, keys, Role::Publisher, "", repository)
}

/// Checks the director's signature on the index manifest and returns its (index layer, subject).
fn check_index_manifest(
    ev: &SignedManifest,
    trust: &TrustPolicy,
    repository: &str,
) -> Result<(Descriptor, Descriptor), VerifyError> {
    check_signed(
        ev,
        std::slice::from_ref(&trust.director_key),
        Role::Director,
        trust.director_key.fingerprint(),
        repository,
    )?;
    let m = Manifest::parse(&ev.manifest, "index manifest").map_err(VerifyError::IndexManifestFormat)?;
    let shape = |reason: &str| {
        VerifyError::IndexManifestFormat(FormatError::Shape {
            what: "index manifest",
            reason: reason.into(),
        })
    };
    if m.artifact_type.as_deref() != Some(INDEX_ARTIFACT_TYPE) {
        return Err(shape("artifactType is not a Pollen chunk index"));
    }
    let [layer] = <[Descriptor; 1]>::try_from(m.layers).map_err(|_| shape("not exactly one layer"))?;
    if layer.media_type != INDEX_ARTIFACT_TYPE {
        return Err(shape("layer is not a chunk index"));
    }
    if layer.size > MAX_ENCODED_LEN as u64 {
        return Err(VerifyError::IndexDecode(IndexError::TooLarge {
            len: layer.size as usize,
            max: MAX_ENCODED_LEN,
        }));
    }
    let subject = m.subject.ok_or_else(|| shape("no subject (payload manifest)"))?;
    Ok((layer, subject))
}

/// Runs every check over fetched objects. This is the whole of verification; [`verify`] only fetches.
pub fn verify_evidence(
    ev: &Evidence,
    trust: &TrustPolicy,
    ctx: &VerifyContext,
) -> Result<VerifiedIndex, VerifyError> {
    let repository = format!("{}/{}", ev.registry, ev.repository);
    let (layer, subject) = check_index_manifest(&ev.index, trust, &repository)?;
    if oci::sha256_digest(&ev.index_blob) != layer.digest || ev.index_blob.len() as u64 != layer.size {
        return Err(VerifyError::IndexTampered);
    }
    let index = ChunkIndex::decode(&ev.index_blob).map_err(VerifyError::IndexDecode)?;
    if ev.payload.digest != subject.digest {
        return Err(VerifyError::PayloadManifestTampered);
    }
    let version = check_signed(
        &ev.payload,
        &trust.publisher_keys,
        Role::Publisher,
        "",
        &repository,
    )?;
    let pm = Manifest::parse(&ev.payload.manifest, "payload manifest")
        .map_err(VerifyError::PayloadManifestFormat)?;
    let [player] = <[Descriptor; 1]>::try_from(pm.layers).map_err(|_| {
        VerifyError::PayloadManifestFormat(FormatError::Shape {
            what: "payload manifest",
            reason: "not exactly one layer".into(),
        })
    })?;
    if player.digest != index.payload.oci_digest() || player.size != index.payload.size {
        return Err(VerifyError::PayloadMismatch {
            index: index.payload.oci_digest(),
            index_size: index.payload.size,
            layer: player.digest,
            layer_size: player.size,
        });
    }
    if let Some(&last) = ctx.last_sequence.get(&index.target.path)
        && index.sequence < last
        && !index.downgrade
    {
        return Err(VerifyError::Rollback {
            target: index.target.path.clone(),
            sequence: index.sequence,
            last,
        });
    }
    if let Some(expires_at) = index.expires_at
        && ctx.now >= expires_at
    {
        return Err(VerifyError::Expired {
            expires_at,
            now: ctx.now,
        });
    }
    let payload = ResolvedPayload {
        registry: ev.registry.clone(),
        repository: ev.repository.clone(),
        manifest_digest: ev.payload.digest.clone(),
        blob_digest: player.digest,
        version,
    };
    let index_reference = format!("{}/{}@{}", ev.registry, ev.repository, ev.index.digest);
    Ok(VerifiedIndex::new(index, payload, index_reference))
}

fn fetch_err(what: &'static str) -> impl Fn(RegistryError) -> VerifyError {
    move |source| VerifyError::Fetch { what, source }
}

async fn fetch_signed(
    reg: &Registry,
    r: &Reference,
    what: &'static str,
    tampered: VerifyError,
) -> Result<SignedManifest, VerifyError> {
    let (manifest, digest) = match reg.pull_manifest(r).await {
        Ok(x) => x,
        Err(RegistryError::DigestMismatch { .. }) => return Err(tampered),
        Err(e) => return Err(VerifyError::Fetch { what, source: e }),
    };
    let digest = r.digest().map(str::to_string).unwrap_or(digest);
    let signatures = match cosign::fetch_signatures(reg, r, &digest).await {
        Ok(s) => s,
        // A malformed signature manifest carries no usable signature: the manifest counts as unsigned.
        Err(SignError::Format(_) | SignError::Key(_)) => Vec::new(),
        Err(SignError::Registry(source)) => {
            return Err(VerifyError::Fetch {
                what: "signatures",
                source,
            });
        }
    };
    Ok(SignedManifest {
        digest,
        manifest,
        signatures,
    })
}

/// Fetches the objects behind `index_reference` (`registry/repo@sha256:…` or `registry/repo:tag`).
pub async fn fetch_evidence(
    reg: &Registry,
    index_reference: &str,
    trust: &TrustPolicy,
) -> Result<Evidence, VerifyError> {
    let r = parse_reference(index_reference).map_err(fetch_err("index reference"))?;
    let index = fetch_signed(reg, &r, "index manifest", VerifyError::IndexManifestTampered).await?;
    // Check the director's signature before reading anything the index manifest points at.
    let (layer, subject) = check_index_manifest(&index, trust, &repository_name(&r))?;
    let index_blob = match reg
        .pull_blob(&at_digest(&r, &layer.digest), &layer, MAX_ENCODED_LEN)
        .await
    {
        Ok(b) => b,
        Err(RegistryError::DigestMismatch { .. }) => return Err(VerifyError::IndexTampered),
        Err(e) => {
            return Err(VerifyError::Fetch {
                what: "chunk index",
                source: e,
            });
        }
    };
    let payload = fetch_signed(
        reg,
        &at_digest(&r, &subject.digest),
        "payload manifest",
        VerifyError::PayloadManifestTampered,
    )
    .await?;
    Ok(Evidence {
        registry: r.registry().to_string(),
        repository: r.repository().to_string(),
        index,
        index_blob,
        payload,
    })
}

/// Fetches and verifies the chunk index at `index_reference`. See the module docs for the checks.
pub async fn verify(
    reg: &Registry,
    index_reference: &str,
    trust: &TrustPolicy,
    ctx: &VerifyContext,
) -> Result<VerifiedIndex, VerifyError> {
    let ev = fetch_evidence(reg, index_reference, trust).await?;
    verify_evidence(&ev, trust, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{IndexMeta, build_index};
    use crate::keys::SigningKey;
    use crate::testing::{FIXTURE_VERSION, Fixture, sign_digest, sign_digest_claiming, test_meta};

    const REPO: &str = "127.0.0.1:5000/fleet/app";

    fn payload() -> Vec<u8> {
        (0..50_000u32).map(|i| (i % 253) as u8).collect()
    }

    fn fixture() -> Fixture {
        Fixture::new("127.0.0.1:5000", "fleet/app", &payload(), 4096, test_meta()).unwrap()
    }

    fn check(f: &Fixture, ev: &Evidence) -> Result<VerifiedIndex, VerifyError> {
        verify_evidence(ev, &f.trust, &VerifyContext::now())
    }

    #[test]
    fn fixture_verifies_and_resolves_payload() {
        let f = fixture();
        let v = &f.verified;
        assert_eq!(v.chunk_count(), 13);
        assert_eq!(
            v.payload_location().reference(),
            format!("127.0.0.1:5000/fleet/app@{}", f.evidence.payload.digest)
        );
        assert_eq!(
            v.payload_location().blob_reference().whole(),
            format!("127.0.0.1:5000/fleet/app@{}", oci::sha256_digest(&payload()))
        );
        assert_eq!(v.id(), v.index().id());
    }

    #[test]
    fn wrong_keys() {
        let f = fixture();
        let stranger = SigningKey::generate().unwrap().public_key().unwrap();
        let mut t = f.trust.clone();
        t.director_key = stranger.clone();
        assert!(matches!(
            verify_evidence(&f.evidence, &t, &VerifyContext::now()),
            Err(VerifyError::DirectorSignature { .. })
        ));
        let mut t = f.trust.clone();
        t.publisher_keys = vec![stranger];
        assert!(matches!(
            verify_evidence(&f.evidence, &t, &VerifyContext::now()),
            Err(VerifyError::PublisherSignature { .. })
        ));
        let mut t = f.trust.clone();
        t.publisher_keys.clear();
        assert!(matches!(
            verify_evidence(&f.evidence, &t, &VerifyContext::now()),
            Err(VerifyError::PublisherSignature { .. })
        ));
    }

    #[test]
    fn unsigned() {
        let f = fixture();
        let mut ev = f.evidence.clone();
        ev.index.signatures.clear();
        assert!(matches!(check(&f, &ev), Err(VerifyError::IndexUnsigned { .. })));
        let mut ev = f.evidence.clone();
        ev.payload.signatures.clear();
        assert!(matches!(check(&f, &ev), Err(VerifyError::PayloadUnsigned { .. })));
    }

    #[test]
    fn moved_signature() {
        let f = fixture();
        let mut ev = f.evidence.clone();
        ev.index.signatures =
            vec![sign_digest(&f.director, "127.0.0.1:5000/fleet/app", &ev.payload.digest).unwrap()];
        assert!(matches!(
            check(&f, &ev),
            Err(VerifyError::DirectorSignedOther { .. })
        ));
        let mut ev = f.evidence.clone();
        ev.payload.signatures = vec![sign_digest(&f.publisher, "r", &ev.index.digest).unwrap()];
        assert!(matches!(
            check(&f, &ev),
            Err(VerifyError::PublisherSignedOther { .. })
        ));
        // A signature whose bytes were altered verifies with no key.
        let mut ev = f.evidence.clone();
        ev.index.signatures[0].payload[10] ^= 1;
        assert!(matches!(
            check(&f, &ev),
            Err(VerifyError::DirectorSignature { .. })
        ));
    }

    #[test]
    fn a_signature_for_another_repository_is_refused() {
        let f = fixture();
        assert_eq!(
            f.verified.payload_location().version,
            Some(semver::Version::parse(FIXTURE_VERSION).unwrap())
        );
        // The publisher signed this very digest, but for another product's repository: the manifest was
        // copied (or tagged) across repositories.
        let mut ev = f.evidence.clone();
        ev.payload.signatures =
            vec![sign_digest(&f.publisher, "127.0.0.1:5000/fleet/other", &ev.payload.digest).unwrap()];
        let err = check(&f, &ev).unwrap_err();
        match &err {
            VerifyError::RepositoryMismatch {
                role: Role::Publisher,
                signed,
                expected,
                ..
            } => {
                assert_eq!(signed, "127.0.0.1:5000/fleet/other");
                assert_eq!(expected, REPO);
            }
            other => panic!("expected a repository mismatch, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("fleet/other") && msg.contains("fleet/app"), "{msg}");
        // The same for the director's signature on the index.
        let mut ev = f.evidence.clone();
        ev.index.signatures =
            vec![sign_digest(&f.director, "127.0.0.1:5001/fleet/app", &ev.index.digest).unwrap()];
        assert!(matches!(
            check(&f, &ev),
            Err(VerifyError::RepositoryMismatch {
                role: Role::Director,
                ..
            })
        ));
        // The same bytes, evidence fetched from the other repository.
        let mut ev = f.evidence.clone();
        ev.repository = "fleet/other".into();
        assert!(matches!(
            check(&f, &ev),
            Err(VerifyError::RepositoryMismatch { .. })
        ));
        // A name cosign normalises the same way is the same repository.
        let mut ev = f.evidence.clone();
        ev.registry = "docker.io".into();
        ev.repository = "busybox".into();
        ev.index.signatures =
            vec![sign_digest(&f.director, "index.docker.io/library/busybox", &ev.index.digest).unwrap()];
        ev.payload.signatures = vec![sign_digest(&f.publisher, "busybox", &ev.payload.digest).unwrap()];
        check(&f, &ev).expect("normalised names match");
    }

    #[test]
    fn version_claims_are_carried_and_checked() {
        let f = fixture();
        let pd = f.evidence.payload.digest.clone();
        // A signature without a claim: verified, unversioned.
        let mut ev = f.evidence.clone();
        ev.payload.signatures = vec![sign_digest(&f.publisher, REPO, &pd).unwrap()];
        assert_eq!(check(&f, &ev).unwrap().payload_location().version, None);
        // A claim and a signature without one: the claim counts.
        ev.payload
            .signatures
            .push(sign_digest_claiming(&f.publisher, REPO, &pd, "2.1.0-rc.1").unwrap());
        assert_eq!(
            check(&f, &ev).unwrap().payload_location().version,
            Some(semver::Version::parse("2.1.0-rc.1").unwrap())
        );
        // Two valid signatures claiming different versions.
        ev.payload
            .signatures
            .push(sign_digest_claiming(&f.publisher, REPO, &pd, "2.2.0").unwrap());
        let err = check(&f, &ev).unwrap_err();
        assert!(
            matches!(&err, VerifyError::VersionClaim { reason, .. } if reason.contains("2.1.0-rc.1") && reason.contains("2.2.0")),
            "{err}"
        );
        // A malformed claim.
        let mut ev = f.evidence.clone();
        ev.payload.signatures = vec![sign_digest_claiming(&f.publisher, REPO, &pd, "v2").unwrap()];
        assert!(matches!(check(&f, &ev), Err(VerifyError::VersionClaim { .. })));
        // A claim signed by an untrusted key says nothing.
        let stranger = SigningKey::generate().unwrap();
        let mut ev = f.evidence.clone();
        ev.payload
            .signatures
            .push(sign_digest_claiming(&stranger, REPO, &pd, "9.0.0").unwrap());
        assert_eq!(
            check(&f, &ev).unwrap().payload_location().version,
            Some(semver::Version::parse(FIXTURE_VERSION).unwrap())
        );
    }

    #[test]
    fn tampering() {
        let f = fixture();
        let mut ev = f.evidence.clone();
        ev.index.manifest.push(b' ');
        assert!(matches!(check(&f, &ev), Err(VerifyError::IndexManifestTampered)));
        let mut ev = f.evidence.clone();
        ev.index_blob[60] ^= 1;
        assert!(matches!(check(&f, &ev), Err(VerifyError::IndexTampered)));
        let mut ev = f.evidence.clone();
        ev.payload.manifest.push(b' ');
        assert!(matches!(
            check(&f, &ev),
            Err(VerifyError::PayloadManifestTampered)
        ));
        let mut ev = f.evidence.clone();
        ev.payload.digest = ev.index.digest.clone();
        assert!(matches!(
            check(&f, &ev),
            Err(VerifyError::PayloadManifestTampered)
        ));
    }

    #[test]
    fn index_of_another_payload() {
        // The director signs an index of other bytes over the same (signed) payload manifest.
        let f = fixture();
        let other = build_index(&[1u8; 50_000], 4096, test_meta()).unwrap();
        let mut ev = f.evidence.clone();
        ev.index_blob = other.encode();
        let mut m = Manifest::parse(&ev.index.manifest, "m").unwrap();
        m.layers = vec![Descriptor::of(INDEX_ARTIFACT_TYPE, &ev.index_blob)];
        ev.index.manifest = m.to_bytes();
        ev.index.digest = oci::sha256_digest(&ev.index.manifest);
        ev.index.signatures = vec![sign_digest(&f.director, REPO, &ev.index.digest).unwrap()];
        assert!(matches!(check(&f, &ev), Err(VerifyError::PayloadMismatch { .. })));
    }

    #[test]
    fn sequence_and_expiry() {
        let mut meta = test_meta();
        meta.sequence = 5;
        meta.expires_at = Some(1_000);
        let f = Fixture::new(
            "r:1",
            "a/b",
            &payload(),
            4096,
            IndexMeta {
                expires_at: None,
                ..meta.clone()
            },
        )
        .unwrap();
        let mut ctx = VerifyContext {
            now: 999,
            last_sequence: BTreeMap::from([("payload.bin".into(), 6)]),
        };
        let err = verify_evidence(&f.evidence, &f.trust, &ctx).unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::Rollback {
                    sequence: 5,
                    last: 6,
                    ..
                }
            ),
            "{err}"
        );
        ctx.last_sequence.insert("other.bin".into(), 100);
        ctx.last_sequence.insert("payload.bin".into(), 5);
        verify_evidence(&f.evidence, &f.trust, &ctx).unwrap();
        assert!(
            Fixture::new("r:1", "a/b", &payload(), 4096, meta.clone()).is_err(),
            "expired at build time (now > 1000)"
        );
        meta.expires_at = Some(u64::MAX);
        meta.downgrade = true;
        let f = Fixture::new("r:1", "a/b", &payload(), 4096, meta).unwrap();
        let mut ctx = VerifyContext {
            now: 999,
            last_sequence: BTreeMap::from([("payload.bin".into(), 6)]),
        };
        verify_evidence(&f.evidence, &f.trust, &ctx).expect("explicit downgrade");
        ctx.now = u64::MAX;
        assert!(matches!(
            verify_evidence(&f.evidence, &f.trust, &ctx),
            Err(VerifyError::Expired { .. })
        ));
    }

    #[test]
    fn garbage_index_blob_signed_by_director() {
        let f = fixture();
        let mut ev = f.evidence.clone();
        ev.index_blob = b"PLIX\x01garbage".to_vec();
        let mut m = Manifest::parse(&ev.index.manifest, "m").unwrap();
        m.layers = vec![Descriptor::of(INDEX_ARTIFACT_TYPE, &ev.index_blob)];
        ev.index.manifest = m.to_bytes();
        ev.index.digest = oci::sha256_digest(&ev.index.manifest);
        ev.index.signatures = vec![sign_digest(&f.director, REPO, &ev.index.digest).unwrap()];
        assert!(matches!(
            check(&f, &ev),
            Err(VerifyError::IndexDecode(IndexError::Truncated { .. }))
        ));
        // Not an index artifact at all.
        let mut m = Manifest::parse(&ev.index.manifest, "m").unwrap();
        m.artifact_type = Some("application/x-other".into());
        ev.index.manifest = m.to_bytes();
        ev.index.digest = oci::sha256_digest(&ev.index.manifest);
        ev.index.signatures = vec![sign_digest(&f.director, REPO, &ev.index.digest).unwrap()];
        assert!(matches!(check(&f, &ev), Err(VerifyError::IndexManifestFormat(_))));
    }
}
