//! The trust chain against real parts: Debian's `docker-registry` (distribution 2.8), cosign 2.5 and
//! oras 1.2. Publish → index → sign → verify round trip, interop both ways with cosign, byte-identical
//! `oras pull`, and every bad-input case, each expecting its own error and no verified index.
//!
//! Each test needs the registry (and some cosign or oras): without them it fails when env `CI` is set and
//! reports itself skipped elsewhere; `e2e/tools/install-deps.sh` installs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pollen_e2e::registry::Registry as TestRegistry;
use pollen_e2e::tools;
use pollen_trust::cosign;
use pollen_trust::index::{ChunkError, IndexError, build_index};
use pollen_trust::keys::{PublicKey, SigningKey};
use pollen_trust::oci::{self, Descriptor, INDEX_ARTIFACT_TYPE, Manifest, OCI_MANIFEST_MEDIA_TYPE};
use pollen_trust::publish::{self, IndexRequest, PublishOptions, Published};
use pollen_trust::registry::{Registry, RegistryOptions, at_digest, at_tag, parse_reference};
use pollen_trust::testing::{test_meta, test_request};
use pollen_trust::verify::{self, TrustPolicy, VerifyContext, VerifyError};
use pollen_trust::{TargetSpec, VerifiedIndex};

const PASSWORD: &str = "pollen-test-password";

/// A running registry, a Pollen client for it, keys, and a scratch directory.
struct Env {
    registry: TestRegistry,
    client: Registry,
    dir: tempfile::TempDir,
    publisher: SigningKey,
    director: SigningKey,
}

impl Env {
    async fn start() -> Option<Env> {
        tools::require("docker-registry")?;
        let registry = TestRegistry::start().await.expect("registry starts");
        let dir = tempfile::tempdir().unwrap();
        // Anonymous access: an empty Docker config, so the host's credentials play no part.
        let docker_config = dir.path().join("docker-config.json");
        std::fs::write(&docker_config, br#"{"auths":{}}"#).unwrap();
        let client = Registry::new(&RegistryOptions {
            docker_config: Some(docker_config),
            ..RegistryOptions::insecure_for(registry.host())
        })
        .expect("client");
        Some(Env {
            registry,
            client,
            dir,
            publisher: SigningKey::generate().unwrap(),
            director: SigningKey::generate().unwrap(),
        })
    }

    fn repo(&self, name: &str) -> String {
        format!("{}/fleet/{name}", self.registry.host())
    }

    fn trust(&self) -> TrustPolicy {
        TrustPolicy {
            publisher_keys: vec![self.publisher.public_key().unwrap()],
            director_key: self.director.public_key().unwrap(),
        }
    }

    async fn publish(&self, name: &str, payload: Vec<u8>) -> Published {
        let target = parse_reference(&format!("{}:v1", self.repo(name))).unwrap();
        publish::publish_bytes(
            &self.client,
            &target,
            "payload.bin",
            payload,
            &self.publisher,
            &PublishOptions {
                version: Some(semver::Version::new(1, 0, 0)),
                ..PublishOptions::default()
            },
        )
        .await
        .expect("publish")
    }

    async fn index(&self, payload_ref: &str, req: &IndexRequest) -> String {
        publish::create_index(&self.client, payload_ref, req, &self.director, &[], |_, _| {})
            .await
            .expect("index")
            .reference
    }

    async fn verify(&self, index_ref: &str, trust: &TrustPolicy) -> Result<VerifiedIndex, VerifyError> {
        verify::verify(&self.client, index_ref, trust, &VerifyContext::now()).await
    }

    /// Publishes a payload and a signed index of it; returns (payload, payload ref, index ref).
    async fn published(&self, name: &str, size: usize) -> (Vec<u8>, Published, String) {
        let payload = pollen_e2e::lab::payload::bytes(size, name.len() as u64);
        let p = self.publish(name, payload.clone()).await;
        let i = self.index(&p.reference, &test_request(Some(64 * 1024))).await;
        (payload, p, i)
    }

    /// The file holding blob `digest` in the registry's storage.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.registry.storage_dir().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }

    /// Runs cosign with its state inside the scratch directory.
    fn cosign(&self, args: &[&str]) -> Output {
        let bin = tools::require("cosign").expect("cosign checked by the caller");
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Command::new(bin)
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", &home)
            .env("DOCKER_CONFIG", &home)
            .env("TUF_ROOT", home.join("tuf"))
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("COSIGN_YES", "true")
            .output()
            .expect("cosign runs")
    }

    /// `cosign sign --key KEY` of `reference` (no transparency log, plain-HTTP registry), with `extra`
    /// arguments such as `-a key=value` before the reference.
    fn cosign_sign(&self, key: &str, reference: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "sign",
            "--key",
            key,
            "--tlog-upload=false",
            "--allow-http-registry",
            "-y",
        ];
        args.extend(extra);
        args.push(reference);
        self.cosign(&args)
    }
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_keys(dir: &Path, prefix: &str, key: &SigningKey) -> (PathBuf, PathBuf) {
    let k = dir.join(format!("{prefix}.key"));
    let p = dir.join(format!("{prefix}.pub"));
    std::fs::write(&k, key.to_encrypted_pem(PASSWORD.as_bytes()).unwrap()).unwrap();
    std::fs::write(&p, key.public_key().unwrap().pem()).unwrap();
    (k, p)
}

/// Pushes `raw` as a chunk-index artifact whose subject is `payload`, signed by `director` when given.
async fn push_raw_index(
    env: &Env,
    payload: &Published,
    raw: Vec<u8>,
    size_override: Option<u64>,
    director: Option<&SigningKey>,
) -> String {
    let r = parse_reference(&payload.reference).unwrap();
    let (pm, pdigest) = env.client.pull_manifest(&r).await.unwrap();
    let mut layer = Descriptor::of(INDEX_ARTIFACT_TYPE, &raw);
    if let Some(s) = size_override {
        layer.size = s;
    }
    env.client.push_blob(&r, raw).await.unwrap();
    env.client
        .push_blob(&r, oci::EMPTY_CONFIG.to_vec())
        .await
        .unwrap();
    let mut subject = Descriptor::of(OCI_MANIFEST_MEDIA_TYPE, &pm);
    subject.digest = pdigest;
    let manifest = Manifest::artifact(INDEX_ARTIFACT_TYPE, vec![layer], Some(subject)).to_bytes();
    let digest = oci::sha256_digest(&manifest);
    env.client
        .push_manifest(&at_digest(&r, &digest), manifest, OCI_MANIFEST_MEDIA_TYPE)
        .await
        .unwrap();
    if let Some(d) = director {
        cosign::sign(&env.client, &r, &digest, d).await.unwrap();
    }
    format!("{}/{}@{digest}", r.registry(), r.repository())
}

#[tokio::test]
async fn round_trip_publish_index_sign_verify() {
    let Some(env) = Env::start().await else { return };
    let payload = pollen_e2e::lab::payload::bytes(3 * 1024 * 1024 + 12345, 7);
    let file = env.dir.path().join("firmware.bin");
    std::fs::write(&file, &payload).unwrap();
    let target = parse_reference(&format!("{}:1.0.0", env.repo("app"))).unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let s2 = sent.clone();
    let p = publish::publish_file(
        &env.client,
        &target,
        &file,
        &env.publisher,
        &PublishOptions::default(),
        move |n, _| s2.store(n, std::sync::atomic::Ordering::Relaxed),
    )
    .await
    .expect("publish");
    assert_eq!(
        sent.load(std::sync::atomic::Ordering::Relaxed),
        payload.len() as u64,
        "progress reached the end"
    );
    let req = IndexRequest {
        rollout: "edge/firmware".into(),
        sequence: 4,
        target: TargetSpec {
            path: "firmware/fw.bin".into(),
            keep_versions: 3,
        },
        downgrade: false,
        expires_at: Some(4_000_000_000),
        peers: vec!["node-b".into(), "node-a".into()],
        chunk_size: None,
    };
    let trust = env.trust();
    let idx = publish::create_index(
        &env.client,
        &p.reference,
        &req,
        &env.director,
        &trust.publisher_keys,
        |_, _| {},
    )
    .await
    .expect("index");
    let v = env.verify(&idx.reference, &trust).await.expect("verified");
    assert_eq!(v.index(), &idx.index);
    assert_eq!(v.rollout, "edge/firmware");
    assert_eq!(v.sequence, 4);
    assert_eq!(v.peers, vec!["node-a".to_string(), "node-b".to_string()]);
    assert_eq!(v.payload.size, payload.len() as u64);
    assert_eq!(v.payload_location().manifest_digest, p.manifest_digest);
    assert_eq!(v.payload_location().blob_digest, oci::sha256_digest(&payload));
    assert_eq!(v.chunk_size, 64 * 1024, "auto chunk size for a few MiB");
    for i in 0..v.chunk_count() {
        let r = v.chunk_range(i);
        v.verify_chunk(i, &payload[r.start as usize..r.end as usize])
            .expect("chunk verifies");
    }
    // The payload blob is reachable where the verified index says, byte-identical.
    let blob = env
        .client
        .pull_blob(
            &at_digest(
                &parse_reference(&p.reference).unwrap(),
                &v.payload_location().blob_digest,
            ),
            &Descriptor::of("application/octet-stream", &payload),
            payload.len(),
        )
        .await
        .unwrap();
    assert_eq!(blob, payload);
    // The index is discoverable by the fallback tag and in the referrers tag-schema list.
    let r = parse_reference(&p.reference).unwrap();
    let (_, by_tag) = env
        .client
        .pull_manifest(&at_tag(&r, &oci::index_fallback_tag(&p.manifest_digest)))
        .await
        .unwrap();
    assert_eq!(by_tag, idx.manifest_digest);
    let (list, _) = env
        .client
        .pull_manifest(&at_tag(&r, &oci::referrers_tag(&p.manifest_digest)))
        .await
        .unwrap();
    let list: oci::ImageIndex = serde_json::from_slice(&list).unwrap();
    assert!(
        list.manifests
            .iter()
            .any(|m| m.digest == idx.manifest_digest
                && m.artifact_type.as_deref() == Some(INDEX_ARTIFACT_TYPE))
    );
}

#[tokio::test]
async fn cosign_signs_pollen_payload_and_cosign_keys_work_with_pollen() {
    let Some(env) = Env::start().await else { return };
    if tools::require("cosign").is_none() {
        return;
    }
    ok(&env.cosign(&["generate-key-pair"]), "cosign generate-key-pair");
    let ckey = SigningKey::from_file(&env.dir.path().join("cosign.key"), PASSWORD.as_bytes())
        .expect("cosign key loads");
    let cpub = PublicKey::from_file(&env.dir.path().join("cosign.pub")).expect("cosign pub loads");
    // Pollen pushes (signed by an unrelated key), cosign signs it.
    let p = env
        .publish("cosigned", pollen_e2e::lab::payload::bytes(200_000, 3))
        .await;
    ok(&env.cosign_sign("cosign.key", &p.reference, &[]), "cosign sign");
    // The cosign-generated key also serves as the director key.
    let idx = publish::create_index(
        &env.client,
        &p.reference,
        &test_request(None),
        &ckey,
        std::slice::from_ref(&cpub),
        |_, _| {},
    )
    .await
    .expect("index, publisher checked against the cosign signature");
    let trust = TrustPolicy {
        publisher_keys: vec![cpub.clone()],
        director_key: cpub.clone(),
    };
    let v = env
        .verify(&idx.reference, &trust)
        .await
        .expect("Pollen verifies cosign's signature");
    assert_eq!(v.payload_location().manifest_digest, p.manifest_digest);
    // Without the cosign key the same payload is refused.
    let other = TrustPolicy {
        publisher_keys: vec![SigningKey::generate().unwrap().public_key().unwrap()],
        director_key: cpub,
    };
    assert!(matches!(
        env.verify(&idx.reference, &other).await,
        Err(VerifyError::PublisherSignature { .. })
    ));
}

#[tokio::test]
async fn cosign_verifies_pollen_signatures_and_uses_pollen_keys() {
    let Some(env) = Env::start().await else { return };
    if tools::require("cosign").is_none() {
        return;
    }
    let (_, ppub) = write_keys(env.dir.path(), "publisher", &env.publisher);
    let (_, dpub) = write_keys(env.dir.path(), "director", &env.director);
    let (_, p, i) = env.published("checked", 300_000).await;
    let verify = |key: &Path, reference: &str| {
        env.cosign(&[
            "verify",
            "--key",
            key.to_str().unwrap(),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            reference,
        ])
    };
    ok(
        &verify(&ppub, &p.reference),
        "cosign verify of the Pollen-signed payload",
    );
    ok(&verify(&dpub, &i), "cosign verify of the Pollen-signed index");
    let wrong = verify(&dpub, &p.reference);
    assert!(
        !wrong.status.success(),
        "cosign must refuse the payload with the director key"
    );
    // A Pollen-written encrypted private key signs with cosign.
    let extra = SigningKey::generate().unwrap();
    let (xkey, xpub) = write_keys(env.dir.path(), "extra", &extra);
    ok(
        &env.cosign_sign(xkey.to_str().unwrap(), &p.reference, &[]),
        "cosign sign with a Pollen key",
    );
    ok(
        &verify(&xpub, &p.reference),
        "cosign verify with the Pollen public key",
    );
}

/// The signatures stored for the manifest at `reference` that `key` verifies, as (payload, claim).
async fn signatures_by(
    env: &Env,
    reference: &str,
    key: &PublicKey,
) -> Vec<(Vec<u8>, Option<semver::Version>)> {
    let r = parse_reference(reference).unwrap();
    let (manifest, digest) = env.client.pull_manifest(&r).await.expect("manifest");
    let signatures = cosign::fetch_signatures(&env.client, &r, &digest)
        .await
        .expect("signatures");
    let mine: Vec<_> = signatures
        .iter()
        .filter(|s| key.verify(&s.signature, &s.payload))
        .cloned()
        .collect();
    let signed = verify::SignedManifest {
        digest,
        manifest,
        signatures: mine.clone(),
    };
    let repository = pollen_trust::registry::repository_name(&r);
    mine.into_iter()
        .map(|s| {
            let one = verify::SignedManifest {
                signatures: vec![s.clone()],
                ..signed.clone()
            };
            let claim = verify::check_publisher(&one, std::slice::from_ref(key), &repository)
                .expect("the signature verifies for this repository");
            (s.payload, claim)
        })
        .collect()
}

#[tokio::test]
async fn version_claims_interoperate_with_cosign_annotations() {
    let Some(env) = Env::start().await else { return };
    if tools::require("cosign").is_none() {
        return;
    }
    ok(&env.cosign(&["generate-key-pair"]), "cosign generate-key-pair");
    let cpub = PublicKey::from_file(&env.dir.path().join("cosign.pub")).expect("cosign pub loads");

    // Real cosign signs a Pollen payload with the claim as an annotation; Pollen reads the claim, and
    // its own payload for the same claim is byte-identical to cosign's.
    let p = env
        .publish("claimed", pollen_e2e::lab::payload::bytes(50_000, 11))
        .await;
    ok(
        &env.cosign_sign("cosign.key", &p.reference, &["-a", "pollen.dev/version=1.4.2"]),
        "cosign sign -a",
    );
    let by_cosign = signatures_by(&env, &p.reference, &cpub).await;
    assert_eq!(by_cosign.len(), 1);
    assert_eq!(by_cosign[0].1, Some(semver::Version::new(1, 4, 2)));
    let repository = env.repo("claimed");
    let ours = oci::simple_signing_payload_with(
        &repository,
        &p.manifest_digest,
        &std::collections::BTreeMap::from([(oci::VERSION_ANNOTATION.to_string(), "1.4.2".to_string())]),
    );
    assert_eq!(
        String::from_utf8(ours).unwrap(),
        String::from_utf8(by_cosign[0].0.clone()).unwrap(),
        "byte-identical to cosign's payload"
    );
    // And the whole verification carries it.
    let idx = publish::create_index(
        &env.client,
        &p.reference,
        &test_request(None),
        &env.director,
        std::slice::from_ref(&cpub),
        |_, _| {},
    )
    .await
    .expect("index");
    let trust = TrustPolicy {
        publisher_keys: vec![cpub.clone()],
        director_key: env.director.public_key().unwrap(),
    };
    let v = env.verify(&idx.reference, &trust).await.expect("verifies");
    assert_eq!(v.payload_location().version, Some(semver::Version::new(1, 4, 2)));

    // Plain `cosign sign` (no -a) makes no claim.
    let q = env
        .publish("plain", pollen_e2e::lab::payload::bytes(20_000, 12))
        .await;
    ok(&env.cosign_sign("cosign.key", &q.reference, &[]), "cosign sign");
    let plain = signatures_by(&env, &q.reference, &cpub).await;
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].1, None, "no claim without -a");

    // The claim Pollen signs verifies with real `cosign verify -a`, and a wrong claim does not.
    let (_, ppub) = write_keys(env.dir.path(), "publisher", &env.publisher);
    let cosign_verify = |claim: &str| {
        env.cosign(&[
            "verify",
            "--key",
            ppub.to_str().unwrap(),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "-a",
            claim,
            &p.reference,
        ])
    };
    let out = cosign_verify("pollen.dev/version=1.0.0");
    ok(&out, "cosign verify -a of Pollen's claim");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"pollen.dev/version\":\"1.0.0\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let wrong = cosign_verify("pollen.dev/version=9.9.9");
    assert!(
        !wrong.status.success(),
        "cosign must refuse a claim Pollen did not sign"
    );
}

#[tokio::test]
async fn oras_pull_of_published_artifact_is_byte_identical() {
    let Some(env) = Env::start().await else { return };
    let Some(oras) = tools::require("oras") else {
        return;
    };
    let payload = pollen_e2e::lab::payload::bytes(2 * 1024 * 1024 + 1, 11);
    let file = env.dir.path().join("image.raw");
    std::fs::write(&file, &payload).unwrap();
    let target = parse_reference(&format!("{}:2.0.0", env.repo("oras"))).unwrap();
    let p = publish::publish_file(
        &env.client,
        &target,
        &file,
        &env.publisher,
        &PublishOptions::default(),
        |_, _| {},
    )
    .await
    .unwrap();
    let out_dir = env.dir.path().join("pulled");
    let home = env.dir.path().join("oras-home");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(oras)
        .args([
            "pull",
            "--plain-http",
            "-o",
            out_dir.to_str().unwrap(),
            &p.reference,
        ])
        .env("HOME", &home)
        .env("DOCKER_CONFIG", &home)
        .output()
        .unwrap();
    ok(&out, "oras pull");
    assert_eq!(std::fs::read(out_dir.join("image.raw")).unwrap(), payload);
}

#[tokio::test]
async fn wrong_keys_are_refused() {
    let Some(env) = Env::start().await else { return };
    let (_, _, i) = env.published("keys", 100_000).await;
    let stranger = SigningKey::generate().unwrap().public_key().unwrap();
    let mut t = env.trust();
    t.publisher_keys = vec![stranger.clone()];
    assert!(matches!(
        env.verify(&i, &t).await,
        Err(VerifyError::PublisherSignature { .. })
    ));
    let mut t = env.trust();
    t.director_key = stranger.clone();
    assert!(matches!(
        env.verify(&i, &t).await,
        Err(VerifyError::DirectorSignature { .. })
    ));
    // Swapping the roles is refused too: the publisher cannot direct.
    let t = TrustPolicy {
        publisher_keys: vec![env.director.public_key().unwrap()],
        director_key: env.publisher.public_key().unwrap(),
    };
    assert!(matches!(
        env.verify(&i, &t).await,
        Err(VerifyError::DirectorSignature { .. })
    ));
    env.verify(&i, &env.trust())
        .await
        .expect("the right keys still verify");
}

#[tokio::test]
async fn unsigned_artifacts_are_refused() {
    let Some(env) = Env::start().await else { return };
    let Some(oras) = tools::require("oras") else {
        return;
    };
    // An unsigned payload pushed by oras, indexed by the director.
    let file = env.dir.path().join("unsigned.bin");
    std::fs::write(&file, pollen_e2e::lab::payload::bytes(50_000, 5)).unwrap();
    let reference = format!("{}:v1", env.repo("unsigned"));
    let home = env.dir.path().join("oras-home");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(oras)
        .args([
            "push",
            "--plain-http",
            "--artifact-type",
            oci::PAYLOAD_ARTIFACT_TYPE,
            &reference,
            "unsigned.bin",
        ])
        .current_dir(env.dir.path())
        .env("HOME", &home)
        .env("DOCKER_CONFIG", &home)
        .output()
        .unwrap();
    ok(&out, "oras push");
    let i = env.index(&reference, &test_request(None)).await;
    assert!(matches!(
        env.verify(&i, &env.trust()).await,
        Err(VerifyError::PayloadUnsigned { .. })
    ));
    // Indexing with a publisher key check refuses it up front.
    let err = publish::create_index(
        &env.client,
        &reference,
        &test_request(None),
        &env.director,
        &env.trust().publisher_keys,
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, publish::PublishError::Unverified(_)), "{err}");
    // A signed payload with an unsigned index.
    let p = env
        .publish("signed", pollen_e2e::lab::payload::bytes(50_000, 6))
        .await;
    let idx = build_index(&pollen_e2e::lab::payload::bytes(50_000, 6), 4096, test_meta()).unwrap();
    let unsigned = push_raw_index(&env, &p, idx.encode(), None, None).await;
    assert!(matches!(
        env.verify(&unsigned, &env.trust()).await,
        Err(VerifyError::IndexUnsigned { .. })
    ));
    // A signature manifest whose layer carries no signature annotation counts as no signature.
    let r = parse_reference(&unsigned).unwrap();
    let digest = r.digest().unwrap().to_string();
    let payload = oci::simple_signing_payload(&format!("{}/{}", r.registry(), r.repository()), &digest);
    let layer = Descriptor::of(oci::SIMPLESIGNING_MEDIA_TYPE, &payload);
    let (manifest, config) = oci::signature_manifest(vec![layer]);
    env.client.push_blob(&r, payload).await.unwrap();
    env.client.push_blob(&r, config).await.unwrap();
    env.client
        .push_manifest(
            &at_tag(&r, &oci::signature_tag(&digest)),
            manifest.to_bytes(),
            OCI_MANIFEST_MEDIA_TYPE,
        )
        .await
        .unwrap();
    assert!(matches!(
        env.verify(&unsigned, &env.trust()).await,
        Err(VerifyError::IndexUnsigned { .. })
    ));
}

#[tokio::test]
async fn tampered_manifests_and_index_are_refused() {
    let Some(env) = Env::start().await else { return };
    let (_, p, i) = env.published("tamper", 200_000).await;
    let trust = env.trust();
    let index_digest = i.rsplit('@').next().unwrap().to_string();

    // 1. The index manifest re-pushed with a change (rollout annotation) and the original signature copied:
    //    the signature names the original digest.
    let r = parse_reference(&i).unwrap();
    let (im, _) = env.client.pull_manifest(&r).await.unwrap();
    let mut m = Manifest::parse(&im, "index").unwrap();
    m.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("dev.pollen.rollout".into(), "evil/rollout".into());
    let forged = m.to_bytes();
    let forged_digest = oci::sha256_digest(&forged);
    env.client
        .push_manifest(&at_digest(&r, &forged_digest), forged, OCI_MANIFEST_MEDIA_TYPE)
        .await
        .unwrap();
    let (sig, _) = env
        .client
        .pull_manifest(&at_tag(&r, &oci::signature_tag(&index_digest)))
        .await
        .unwrap();
    env.client
        .push_manifest(
            &at_tag(&r, &oci::signature_tag(&forged_digest)),
            sig,
            OCI_MANIFEST_MEDIA_TYPE,
        )
        .await
        .unwrap();
    let forged_ref = format!("{}/{}@{forged_digest}", r.registry(), r.repository());
    assert!(matches!(
        env.verify(&forged_ref, &trust).await,
        Err(VerifyError::DirectorSignedOther { .. })
    ));

    // 2. The index blob changed in the registry's storage (same length, one chunk hash altered).
    let (_, idx_desc) = {
        let m = Manifest::parse(&im, "index").unwrap();
        (m.clone(), m.layers[0].clone())
    };
    let blob_path = env.blob_file(&idx_desc.digest);
    let original_blob = std::fs::read(&blob_path).unwrap();
    let mut bad = original_blob.clone();
    bad[80] ^= 0x55;
    std::fs::write(&blob_path, &bad).unwrap();
    assert!(matches!(
        env.verify(&i, &trust).await,
        Err(VerifyError::IndexTampered)
    ));
    std::fs::write(&blob_path, &original_blob).unwrap();
    env.verify(&i, &trust).await.expect("restored index verifies");

    // 3. The index manifest changed in storage.
    let mpath = env.blob_file(&index_digest);
    let mut bad = im.clone();
    let pos = bad
        .windows(7)
        .position(|w| w == b"default")
        .expect("rollout annotation");
    bad[pos] = b'x';
    std::fs::write(&mpath, &bad).unwrap();
    assert!(matches!(
        env.verify(&i, &trust).await,
        Err(VerifyError::IndexManifestTampered)
    ));
    std::fs::write(&mpath, &im).unwrap();

    // 4. The payload manifest changed in storage.
    let ppath = env.blob_file(&p.manifest_digest);
    let pm = std::fs::read(&ppath).unwrap();
    let mut bad = pm.clone();
    let pos = bad.windows(11).position(|w| w == b"payload.bin").expect("title");
    bad[pos] = b'P';
    std::fs::write(&ppath, &bad).unwrap();
    assert!(matches!(
        env.verify(&i, &trust).await,
        Err(VerifyError::PayloadManifestTampered)
    ));
    std::fs::write(&ppath, &pm).unwrap();
    env.verify(&i, &trust).await.expect("restored objects verify");
}

#[tokio::test]
async fn tampered_chunk_is_refused() {
    let Some(env) = Env::start().await else { return };
    let (payload, _, i) = env.published("chunk", 300_000).await;
    let v = env.verify(&i, &env.trust()).await.unwrap();
    let r = v.chunk_range(2);
    let mut chunk = payload[r.start as usize..r.end as usize].to_vec();
    v.verify_chunk(2, &chunk).unwrap();
    chunk[17] ^= 1;
    assert_eq!(
        v.verify_chunk(2, &chunk),
        Err(ChunkError::HashMismatch { index: 2 })
    );
    assert!(matches!(
        v.verify_chunk(2, &chunk[1..]),
        Err(ChunkError::Length { .. })
    ));
    assert!(matches!(
        v.verify_chunk(v.chunk_count(), &chunk),
        Err(ChunkError::OutOfRange { .. })
    ));
}

#[tokio::test]
async fn index_pointing_at_another_payload_is_refused() {
    let Some(env) = Env::start().await else { return };
    let a = pollen_e2e::lab::payload::bytes(100_000, 1);
    let _pa = env.publish("pair", a.clone()).await;
    let target_b = parse_reference(&format!("{}:2.0.0", env.repo("pair"))).unwrap();
    let pb = publish::publish_bytes(
        &env.client,
        &target_b,
        "b.bin",
        pollen_e2e::lab::payload::bytes(100_000, 2),
        &env.publisher,
        &PublishOptions::default(),
    )
    .await
    .unwrap();
    // The director signs an index of A whose subject is B (both payloads properly signed).
    let index_a = build_index(&a, 4096, test_meta()).unwrap();
    let r = parse_reference(&pb.reference).unwrap();
    let (pm_b, _) = env.client.pull_manifest(&r).await.unwrap();
    let bad = publish::push_index(
        &env.client,
        &r,
        &pb.manifest_digest,
        &pm_b,
        index_a,
        &env.director,
    )
    .await
    .unwrap();
    assert!(matches!(
        env.verify(&bad.reference, &env.trust()).await,
        Err(VerifyError::PayloadMismatch { .. })
    ));
}

#[tokio::test]
async fn replayed_older_sequence_and_expired_index_are_refused() {
    let Some(env) = Env::start().await else { return };
    let p = env
        .publish("seq", pollen_e2e::lab::payload::bytes(80_000, 9))
        .await;
    let trust = env.trust();
    let mut req = test_request(None);
    req.sequence = 5;
    let old = env.index(&p.reference, &req).await;
    let mut ctx = VerifyContext::now();
    ctx.last_sequence.insert(req.target.path.clone(), 6);
    let err = verify::verify(&env.client, &old, &trust, &ctx).await.unwrap_err();
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
    // The same sequence again is fine (re-verification), a different target is unaffected.
    ctx.last_sequence.insert(req.target.path.clone(), 5);
    verify::verify(&env.client, &old, &trust, &ctx)
        .await
        .expect("same sequence");
    // An explicit downgrade passes.
    req.downgrade = true;
    let down = env.index(&p.reference, &req).await;
    ctx.last_sequence.insert(req.target.path.clone(), 6);
    verify::verify(&env.client, &down, &trust, &ctx)
        .await
        .expect("explicit downgrade");
    // Expired.
    let mut req = test_request(None);
    req.expires_at = Some(VerifyContext::now().now - 10);
    let expired = env.index(&p.reference, &req).await;
    assert!(matches!(
        env.verify(&expired, &trust).await,
        Err(VerifyError::Expired { .. })
    ));
}

#[tokio::test]
async fn truncated_oversized_and_garbage_indexes_are_refused() {
    let Some(env) = Env::start().await else { return };
    let payload = pollen_e2e::lab::payload::bytes(20_000, 4);
    let p = env.publish("garbage", payload.clone()).await;
    let good = build_index(&payload, 4096, test_meta()).unwrap().encode();
    let d = Some(&env.director);
    let check =
        |res: Result<VerifiedIndex, VerifyError>, want: &dyn Fn(&IndexError) -> bool, what: &str| match res {
            Err(VerifyError::IndexDecode(e)) if want(&e) => {}
            other => panic!("{what}: expected a specific decode error, got {other:?}"),
        };

    let truncated = push_raw_index(&env, &p, good[..good.len() - 3].to_vec(), None, d).await;
    check(
        env.verify(&truncated, &env.trust()).await,
        &|e| matches!(e, IndexError::Truncated { .. }),
        "truncated",
    );

    // Oversized: the signed manifest claims a layer over the limit; refused before it is fetched.
    let oversized = push_raw_index(&env, &p, good.clone(), Some(ChunkIndexLimit::over()), d).await;
    check(
        env.verify(&oversized, &env.trust()).await,
        &|e| matches!(e, IndexError::TooLarge { .. }),
        "oversized",
    );

    let mut trailing = good.clone();
    trailing.push(0);
    let r = push_raw_index(&env, &p, trailing, None, d).await;
    check(
        env.verify(&r, &env.trust()).await,
        &|e| matches!(e, IndexError::TrailingBytes(1)),
        "trailing",
    );

    // Garbage in each field, then the whole blob.
    let cases: Vec<GarbageCase> = vec![
        (
            "magic",
            Box::new(|g| g[0] = b'Z'),
            Box::new(|e| *e == IndexError::BadMagic),
        ),
        (
            "version",
            Box::new(|g| g[4] = 0xEE),
            Box::new(|e| *e == IndexError::UnsupportedVersion(0xEE)),
        ),
        (
            "size",
            Box::new(|g| g[37] = 0xFF),
            Box::new(|e| matches!(e, IndexError::ChunkCount { .. })),
        ),
        (
            "media type",
            Box::new(|g| g[47] = 0xC3),
            Box::new(|e| matches!(e, IndexError::InvalidUtf8 { .. })),
        ),
        // Offsets for media type "application/octet-stream": chunk size at 72..76.
        (
            "chunking",
            Box::new(|g| g[71] = 9),
            Box::new(|e| *e == IndexError::UnknownChunking(9)),
        ),
        (
            "chunk size",
            Box::new(|g| g[72] = 0xFF),
            Box::new(|e| *e == IndexError::ChunkSize(0xFF00_1000)),
        ),
        (
            "everything",
            Box::new(|g| g.iter_mut().for_each(|b| *b = b.wrapping_mul(31).wrapping_add(7))),
            Box::new(|e| *e == IndexError::BadMagic),
        ),
    ];
    for (what, mutate, want) in cases {
        let mut g = good.clone();
        mutate(&mut g);
        let r = push_raw_index(&env, &p, g, None, d).await;
        check(env.verify(&r, &env.trust()).await, &*want, what);
    }
    let valid = push_raw_index(&env, &p, good, None, d).await;
    env.verify(&valid, &env.trust())
        .await
        .expect("the unmodified raw index verifies");
}

/// A garbage case: its name, how it spoils the encoding, and the decode error it must give.
type GarbageCase = (
    &'static str,
    Box<dyn Fn(&mut Vec<u8>)>,
    Box<dyn Fn(&IndexError) -> bool>,
);

/// Sizes around the decoder's limit.
struct ChunkIndexLimit;
impl ChunkIndexLimit {
    fn over() -> u64 {
        pollen_trust::index::MAX_ENCODED_LEN as u64 + 1
    }
}
