//! Pollen against Debian's `docker-registry` run the way users run registries: TLS with a test CA, and
//! htpasswd basic auth or the distribution token protocol ([`pollen_e2e::secure_registry`]; its token
//! issuer and object store are test stand-ins and say so). Every flow a node and the operator use goes
//! through it: publish, index, dual verification, range GETs (through a 307 redirect to the object
//! store), and whole rollouts whose first node reads everything from the origin.
//!
//! Failures are answers: wrong or missing credentials, an unknown CA, a plain-HTTP token realm and a
//! pull-only credential pushing each end in a clear error at once, and the servers' own request logs
//! show that no credential went over plain HTTP or followed a redirect.
//!
//! Needs `docker-registry` (and, for the rollouts, `crd-apiserver` and `etcd`); fails under `CI`
//! without them.

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use pollen_crds::conditions::{reasons, types};
use pollen_crds::{EdgeNode, UpdateRollout, Wave};
use pollen_e2e::apiserver::retry_throttled;
use pollen_e2e::fleet::{self, LocalFleet};
use pollen_e2e::secure_registry::{AuthMode, PULLER, PUSHER, SecureOptions, SecureRegistry};
use pollen_e2e::tools;
use pollen_trust::keys::SigningKey;
use pollen_trust::publish::{self, IndexRequest, PublishOptions};
use pollen_trust::registry::{Registry, RegistryError, RegistryOptions, parse_reference};
use pollen_trust::verify::{self, TrustPolicy, VerifyContext, VerifyError};
use pollen_trust::{TargetSpec, oci};

fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

async fn start(opts: SecureOptions) -> Option<SecureRegistry> {
    tools::require("docker-registry")?;
    install_provider();
    Some(SecureRegistry::start(opts).await.expect("secure registry starts"))
}

/// A client of `r` with `user`'s credential (or none) and the test CA (or not).
fn client(r: &SecureRegistry, user: Option<(&str, &str)>, trust_ca: bool, name: &str) -> Registry {
    Registry::new(&RegistryOptions {
        ca_file: trust_ca.then(|| r.ca_file.clone()),
        docker_config: Some(r.docker_config(user, name).unwrap()),
        ..Default::default()
    })
    .expect("client")
}

struct Published {
    index_reference: String,
    payload: Vec<u8>,
    trust: TrustPolicy,
}

/// Publishes a payload and a signed index with the push credential, as `pollen publish` and the
/// operator do.
async fn publish_and_index(r: &SecureRegistry) -> Published {
    let pusher = &client(r, Some(PUSHER), true, "pusher.json");
    let publisher = SigningKey::generate().unwrap();
    let director = SigningKey::generate().unwrap();
    let payload = pollen_e2e::lab::payload::bytes(2 * 1024 * 1024 + 4321, 7);
    let target = parse_reference(&format!("{}/fleet/app:1.0.0", r.host())).unwrap();
    let p = publish::publish_bytes(
        pusher,
        &target,
        "app.bin",
        payload.clone(),
        &publisher,
        &PublishOptions::default(),
    )
    .await
    .expect("publish through the secure registry");
    let ix = publish::create_index(
        pusher,
        &p.reference,
        &IndexRequest {
            rollout: "default/app".into(),
            sequence: 1,
            target: TargetSpec {
                path: "app.bin".into(),
                keep_versions: 2,
            },
            downgrade: false,
            expires_at: None,
            peers: Vec::new(),
            chunk_size: Some(256 * 1024),
        },
        &director,
        &[publisher.public_key().unwrap()],
        |_, _| {},
    )
    .await
    .expect("index through the secure registry");
    Published {
        index_reference: ix.reference,
        payload,
        trust: TrustPolicy {
            publisher_keys: vec![publisher.public_key().unwrap()],
            director_key: director.public_key().unwrap(),
        },
    }
}

/// What a node does: verify both signatures, then read the payload with range GETs.
async fn node_reads(device: &Registry, p: &Published) {
    let v = verify::verify(device, &p.index_reference, &p.trust, &VerifyContext::now())
        .await
        .expect("the device verifies through the secure registry");
    let loc = v.payload_location();
    let total = p.payload.len() as u64;
    for (a, b) in [(0, 1000), (300_000, 1_048_576), (total - 777, total), (0, total)] {
        let mut resp = device
            .blob_range(&loc.blob_reference(), &loc.blob_digest, a, b, total)
            .await
            .unwrap_or_else(|e| panic!("range {a}..{b}: {e}"));
        let mut got = Vec::new();
        while let Some(piece) = resp.chunk().await.unwrap() {
            got.extend_from_slice(&piece);
        }
        assert_eq!(got, p.payload[a as usize..b as usize], "range {a}..{b}");
    }
}

async fn quick<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let t0 = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 20 s"));
    eprintln!("{what}: answered in {:?}", t0.elapsed());
    out
}

/// The error `device` gets verifying `p`'s index, within [`quick`]'s limit; panics if it verifies.
async fn refused(what: &str, device: &Registry, p: &Published) -> VerifyError {
    quick(
        what,
        verify::verify(device, &p.index_reference, &p.trust, &VerifyContext::now()),
    )
    .await
    .expect_err("verification through a refused registry access")
}

#[tokio::test]
async fn htpasswd_over_tls_with_redirects_serves_every_read_and_credentials_never_follow_a_redirect() {
    let Some(r) = start(SecureOptions {
        redirect: true,
        ..SecureOptions::new(AuthMode::Htpasswd)
    })
    .await
    else {
        return;
    };
    let p = publish_and_index(&r).await;
    let device = client(&r, Some(PULLER), true, "puller.json");
    node_reads(&device, &p).await;

    // Blob GETs went to the object store through a 307, and no credential went with them.
    let store = r.store.as_ref().unwrap().seen();
    let blob_gets = store.iter().filter(|s| s.target.contains("/blobs/")).count();
    assert!(blob_gets >= 4, "the registry redirected blob GETs: {store:?}");
    assert!(
        store.iter().all(|s| s.authorization.is_none()),
        "a credential followed a redirect: {store:?}"
    );

    // Wrong password, no credential, unknown CA: clear errors, at once.
    let wrong = Registry::new(&RegistryOptions {
        ca_file: Some(r.ca_file.clone()),
        docker_config: Some(
            r.docker_config(Some((PULLER.0, "not-the-password")), "wrong.json")
                .unwrap(),
        ),
        ..Default::default()
    })
    .unwrap();
    let e = refused("wrong password", &wrong, &p).await;
    assert!(
        matches!(
            &e,
            VerifyError::Fetch {
                source: RegistryError::Unauthorized { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("refused the configured credentials"),
        "{e}"
    );

    let anonymous = client(&r, None, true, "none.json");
    let e = refused("no credentials", &anonymous, &p).await;
    assert!(
        e.to_string()
            .contains("asks for a user and password and none is configured"),
        "{e}"
    );

    let untrusting = client(&r, Some(PULLER), false, "puller2.json");
    let e = refused("unknown CA", &untrusting, &p).await;
    match &e {
        VerifyError::Fetch { source, .. } => {
            assert!(
                source.is_permanent(),
                "an unknown CA does not heal by retrying: {source}"
            );
            assert!(source.to_string().contains("certificate"), "{source}");
        }
        other => panic!("unknown CA: {other}"),
    }
}

#[tokio::test]
async fn token_auth_gets_scoped_tokens_caches_them_and_a_pull_credential_cannot_push() {
    let Some(r) = start(SecureOptions::new(AuthMode::Token)).await else {
        return;
    };
    let p = publish_and_index(&r).await;
    let device = client(&r, Some(PULLER), true, "puller.json");
    node_reads(&device, &p).await;
    let issuer = r.issuer.as_ref().unwrap();
    let asked = issuer.seen().len();
    assert!(
        issuer.seen().iter().all(|s| s
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic "))),
        "every token request carried the configured credential"
    );
    // A second round of reads with the same client: the cached pull token serves it.
    node_reads(&device, &p).await;
    assert_eq!(issuer.seen().len(), asked, "tokens are cached per scope");

    // The device's pull-only credential cannot write: the registry refuses the push scope.
    let target = parse_reference(&format!("{}/fleet/app:evil", r.host())).unwrap();
    let e = quick(
        "pull credential pushing",
        device.push_blob(&target, b"not allowed".to_vec()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            RegistryError::Unauthorized { .. } | RegistryError::Forbidden { .. }
        ),
        "{e}"
    );

    let wrong = client(&r, Some((PULLER.0, "nope")), true, "wrong.json");
    let e = refused("wrong password", &wrong, &p).await;
    assert!(e.to_string().contains("answered 401"), "{e}");
    let anonymous = client(&r, None, true, "none.json");
    let e = refused("no credentials", &anonymous, &p).await;
    assert!(
        e.to_string()
            .contains("answered 401 Unauthorized for no credentials"),
        "{e}"
    );
}

#[tokio::test]
async fn tokens_are_renewed_when_they_expire_and_when_the_registry_refuses_them() {
    // Tokens the issuer says live 2 s: renewed before they run out, without a refusal.
    let Some(r) = start(SecureOptions {
        token_lifetime: Duration::from_secs(2),
        token_exp: Duration::from_secs(2),
        ..SecureOptions::new(AuthMode::Token)
    })
    .await
    else {
        return;
    };
    let p = publish_and_index(&r).await;
    let device = client(&r, Some(PULLER), true, "puller.json");
    node_reads(&device, &p).await;
    let before = r.issuer.as_ref().unwrap().seen().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    node_reads(&device, &p).await;
    assert!(
        r.issuer.as_ref().unwrap().seen().len() > before,
        "an expired token was renewed"
    );
    drop(r);

    // Tokens announced for 5 minutes that the registry stops accepting (the token server's key was
    // rotated): the refusal renews them.
    let Some(mut r) = start(SecureOptions::new(AuthMode::Token)).await else {
        return;
    };
    let p = publish_and_index(&r).await;
    let device = client(&r, Some(PULLER), true, "puller.json");
    node_reads(&device, &p).await;
    let before = r.issuer.as_ref().unwrap().seen().len();
    node_reads(&device, &p).await;
    assert_eq!(
        r.issuer.as_ref().unwrap().seen().len(),
        before,
        "cached while valid"
    );
    r.rotate_token_key().await.unwrap();
    node_reads(&device, &p).await;
    assert!(
        r.issuer.as_ref().unwrap().seen().len() > before,
        "a token the registry refused was renewed"
    );
}

#[tokio::test]
async fn a_plain_http_token_realm_never_receives_credentials() {
    let Some(r) = start(SecureOptions {
        plain_http_realm: true,
        ..SecureOptions::new(AuthMode::Token)
    })
    .await
    else {
        return;
    };
    let device = client(&r, Some(PULLER), true, "puller.json");
    let reference = parse_reference(&format!("{}/fleet/app:1.0.0", r.host())).unwrap();
    let e = quick("plain-HTTP realm", device.pull_manifest(&reference))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::InsecureCredentials { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("refusing to send credentials over plain HTTP"),
        "{e}"
    );
    assert!(
        r.issuer.as_ref().unwrap().seen().is_empty(),
        "nothing reached the realm"
    );
}

/// A whole rollout through the operator, the real API server and agents, against a registry with TLS
/// and `auth`: the canary reads every byte from the origin (it has no peer yet), the second node from
/// its peer or the origin; the operator holds the push credential and `--registry-ca`, the agents a
/// pull-only credential and the CA through `SSL_CERT_FILE`.
async fn rollout_through(auth: AuthMode) {
    install_provider();
    let Some(mut f) = LocalFleet::start_for_test_with(2, Some(SecureOptions::new(auth))).await else {
        return;
    };
    let bytes = pollen_e2e::lab::payload::bytes(3 * 1024 * 1024 + 999, 3);
    let artifact = f
        .publish("fw", "1.0.0", "fw.bin", bytes.clone())
        .await
        .expect("publish");
    let waves = fleet::canary_then_all();
    let ur = fleet::rollout("fw", &artifact, "fw/fw.bin", waves);
    let rollouts: Api<UpdateRollout> = Api::namespaced(f.client.clone(), "default");
    let pp = PostParams::default();
    retry_throttled(|| rollouts.create(&pp, &ur))
        .await
        .expect("UpdateRollout");
    let (status, took) = f
        .wait_rollout("fw", 240, "rollout complete", |s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == types::COMPLETE && c.status == "True")
        })
        .await;
    eprintln!("{auth:?}: complete in {took:?}: {:?}", status.phase);
    for node in ["gw-0", "gw-1"] {
        let got = std::fs::read(f.installed_file(node, "fw/fw.bin")).expect("installed file");
        assert!(got == bytes, "{node}: installed bytes differ from the payload");
    }
    // The canary had no peer: it read the whole payload from the origin, through the auth'd registry.
    let nodes: Api<EdgeNode> = Api::all(f.client.clone());
    let origin: Vec<i64> = nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|n| Some(n.status.as_ref()?.assignments.first()?.bytes_from_origin))
        .collect();
    assert!(
        origin.iter().any(|&b| b >= bytes.len() as i64),
        "one node read the whole payload from the origin: {origin:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_completes_through_a_token_auth_registry() {
    rollout_through(AuthMode::Token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_completes_through_an_htpasswd_registry() {
    rollout_through(AuthMode::Htpasswd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_condition_and_a_node_status_not_a_hang() {
    install_provider();
    let Some(mut f) = LocalFleet::start_for_test_with(1, Some(SecureOptions::new(AuthMode::Token))).await
    else {
        return;
    };
    let bytes = pollen_e2e::lab::payload::bytes(256 * 1024, 5);
    let artifact = f.publish("fw", "1.0.0", "fw.bin", bytes).await.expect("publish");
    // Break the operator's credential: the rollout names the refusal within one retry.
    f.secure
        .as_ref()
        .unwrap()
        .docker_config(Some((PUSHER.0, "rotated-away")), "operator.json")
        .unwrap();
    let ur = fleet::rollout(
        "fw",
        &artifact,
        "fw/fw.bin",
        vec![Wave {
            count: None,
            percent: Some(100),
            pause: None,
        }],
    );
    let rollouts: Api<UpdateRollout> = Api::namespaced(f.client.clone(), "default");
    let pp = PostParams::default();
    retry_throttled(|| rollouts.create(&pp, &ur))
        .await
        .expect("UpdateRollout");
    let (status, took) = f
        .wait_rollout("fw", 60, "a RegistryAccessDenied condition", |s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == types::RESOLVED && c.reason == reasons::REGISTRY_ACCESS_DENIED)
        })
        .await;
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == types::RESOLVED)
        .unwrap();
    eprintln!("condition after {took:?}: {}", c.message);
    assert!(c.message.contains("unauthorized"), "{}", c.message);
    // Restoring the credential heals it without a restart (the file is read again on the next challenge).
    f.secure
        .as_ref()
        .unwrap()
        .docker_config(Some(PUSHER), "operator.json")
        .unwrap();
    f.wait_rollout(
        "fw",
        240,
        "rollout complete after the credential came back",
        |s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == types::COMPLETE && c.status == "True")
        },
    )
    .await;

    // Break the node's pull credential: a new repository means a new scope, so a new challenge, and
    // the node's own status and the rollout's conditions say why it failed.
    f.secure
        .as_ref()
        .unwrap()
        .docker_config(Some((PULLER.0, "rotated-away")), "agent.json")
        .unwrap();
    let artifact = f
        .publish(
            "fw2",
            "1.0.0",
            "fw.bin",
            pollen_e2e::lab::payload::bytes(100_000, 6),
        )
        .await
        .expect("publish");
    let ur = fleet::rollout(
        "fw2",
        &artifact,
        "fw2/fw.bin",
        vec![Wave {
            count: None,
            percent: Some(100),
            pause: None,
        }],
    );
    retry_throttled(|| rollouts.create(&pp, &ur))
        .await
        .expect("UpdateRollout");
    let (status, took) = f
        .wait_rollout("fw2", 90, "a condition naming the node's registry error", |s| {
            s.conditions
                .iter()
                .any(|c| c.message.contains("node gw-0 failed") && c.message.contains("unauthorized"))
        })
        .await;
    let c = status
        .conditions
        .iter()
        .find(|c| c.message.contains("node gw-0 failed"))
        .unwrap();
    eprintln!("after {took:?}: {} {}: {}", c.type_, c.reason, c.message);
    let node = Api::<EdgeNode>::all(f.client.clone()).get("gw-0").await.unwrap();
    let last = node
        .status
        .unwrap()
        .assignments
        .into_iter()
        .find(|a| a.rollout == "default/fw2")
        .and_then(|a| a.last_error)
        .unwrap_or_default();
    assert!(last.contains("unauthorized"), "EdgeNode lastError: {last}");
}

/// A `pollen-edge-node standalone` command for node `n0` with a fresh fleet CA and identity written
/// into `d`, verifying `index` with `trust`'s keys, trusting the registry CA `registry_ca`.
fn standalone(
    d: &std::path::Path,
    index: &str,
    trust: &TrustPolicy,
    registry_ca: &std::path::Path,
) -> tokio::process::Command {
    let bin = fleet::build_binaries(false)
        .expect("build")
        .join("pollen-edge-node");
    let ca = pollen_trust::pki::FleetCa::generate("ca", Duration::from_secs(3600)).unwrap();
    let node = ca
        .issue("n0", std::time::SystemTime::now(), Duration::from_secs(3600))
        .unwrap();
    std::fs::write(d.join("fleet-ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(d.join("n0.pem"), &node.cert.cert_pem).unwrap();
    std::fs::write(d.join("n0.key"), &node.key_pem).unwrap();
    std::fs::write(d.join("pub.pem"), trust.publisher_keys[0].pem()).unwrap();
    std::fs::write(d.join("dir.pem"), trust.director_key.pem()).unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("standalone")
        .args(["--name", "n0", "--listen", "127.0.0.1:0", "--index", index])
        .arg("--cert")
        .arg(d.join("n0.pem"))
        .arg("--key")
        .arg(d.join("n0.key"))
        .arg("--ca")
        .arg(d.join("fleet-ca.pem"))
        .arg("--publisher-key")
        .arg(d.join("pub.pem"))
        .arg("--director-key")
        .arg(d.join("dir.pem"))
        .arg("--registry-ca")
        .arg(registry_ca)
        .arg("--data-dir")
        .arg(d.join("data"))
        .arg("--install-root")
        .arg(d.join("install"));
    cmd
}

#[tokio::test]
async fn a_standalone_node_with_a_wrong_password_exits_non_zero_with_the_registry_error() {
    let Some(r) = start(SecureOptions::new(AuthMode::Htpasswd)).await else {
        return;
    };
    let p = publish_and_index(&r).await;
    let wrong = r.docker_config(Some((PULLER.0, "wrong")), "wrong.json").unwrap();
    let t0 = Instant::now();
    let out = standalone(r.dir(), &p.index_reference, &p.trust, &r.ca_file)
        .arg("--docker-config")
        .arg(&wrong)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the node exits instead of hanging")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "exit {:?} after {:?}: {}",
        out.status.code(),
        t0.elapsed(),
        stderr.trim()
    );
    assert!(!out.status.success());
    assert!(stderr.contains("unauthorized"), "{stderr}");
}

/// The peak resident memory (VmHWM) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test]
async fn oversized_manifests_and_blobs_are_cut_off_at_the_cap_not_buffered() {
    install_provider();
    // Claims and streams 1 GiB per object.
    for omit_length in [false, true] {
        let h = pollen_e2e::secure_registry::HostileRegistry::start(1 << 30, omit_length)
            .await
            .unwrap();
        let reg = Registry::new(&RegistryOptions {
            ca_file: Some(h.ca_file.clone()),
            ..Default::default()
        })
        .unwrap();
        let r = parse_reference(&format!("{}/fleet/app:1.0.0", h.host())).unwrap();
        let e = quick("oversized manifest", reg.pull_manifest(&r))
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::TooLarge { .. }), "{e}");
        // The index blob: never more than its (director-signed) descriptor names.
        let desc = oci::Descriptor {
            size: 4096,
            ..oci::Descriptor::of("application/octet-stream", b"x")
        };
        let e = quick("oversized blob", reg.pull_blob(&r, &desc, 64 << 20))
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::TooLarge { .. }), "{e}");
        let sent = h.sent.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "content-length omitted: {omit_length}; the server wrote {sent} bytes before the client hung up"
        );
    }

    // The agent binary, verifying against it: a clear error, and its peak RSS stays far under the
    // agent's 64 Mi limit.
    let h = pollen_e2e::secure_registry::HostileRegistry::start(1 << 30, true)
        .await
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap().public_key().unwrap();
    let trust = TrustPolicy {
        publisher_keys: vec![key.clone()],
        director_key: key,
    };
    let index = format!("{}/fleet/app@sha256:{}", h.host(), "ab".repeat(32));
    // Without backtraces: symbolising one for the exit error loads the debug binary's DWARF (tens of MiB),
    // which would measure the error report, not the read.
    let mut child = standalone(d.path(), &index, &trust, &h.ca_file)
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    eprintln!("agent: exit {status}, peak RSS {peak} KiB: {}", stderr.trim());
    assert!(!status.success());
    assert!(stderr.contains("larger than"), "{stderr}");
    assert!(peak > 0 && peak < 48 * 1024, "peak RSS {peak} KiB");
}
