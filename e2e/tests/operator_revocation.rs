//! Quarantine and deletion revoke a node: the real operator (`pollen_operator::app::run`, with a fleet
//! CA from mounted files) against a REAL API server (the CRD-only `crd-apiserver` + etcd from
//! `ApiServer::start`, or the cluster of `POLLEN_E2E_KUBECONFIG`) and a real registry.
//!
//! - every EdgeNode gets the `pollen.dev/revocation` finalizer;
//! - labelling an EdgeNode `pollen.dev/quarantine=true` makes RevocationList `fleet` appear with the
//!   serial from the node's `status.certificate` (its PEM verifies against the fleet CA and names the
//!   node), in a CRL that verifies against the fleet CA;
//! - the director-signed chunk index lists the selected EdgeNodes as its peers;
//! - the running rollout excludes the node (not targeted, not failed), names it and the label in its
//!   condition message, and takes its assignment away;
//! - the durable ledger of signed certificates (`pollen.dev/issued-certificates`) is written to an
//!   EdgeNode from a stale copy (the write reads again), and deleting that EdgeNode revokes its
//!   reported serial and the recorded one (with its `notAfter`) under a higher CRL number, then the
//!   EdgeNode goes. Numbers never fall behind the unix time in seconds.
//!
//! The CRD-only server serves no CertificateSigningRequests: the operator says so and revokes from
//! `EdgeNode.status.certificate` alone; the CSR path is then covered by the mocked tests in
//! `operator/src/csr.rs`. Against a full cluster (`POLLEN_E2E_KUBECONFIG`) that serves
//! `certificates.k8s.io/v1`, the same test also drives the signer for real: a ServiceAccount token
//! bound to a pod on a real node requests a certificate for that node (approved and signed by the
//! fleet CA), and for another node (denied `NodeMismatch`); the admin's own request is denied
//! `WrongServiceAccount`. Timings are printed (`measured:` lines).
//!
//! Needs `crd-apiserver` + `etcd` (e2e/tools/build-apiserver.sh) and `docker-registry`
//! (e2e/tools/install-deps.sh). Without them: fails under `CI`, skips with a reason otherwise.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use pollen_crds::rollout::{ArtifactSource, InstallSettings};
use pollen_crds::{
    DirectorKey, EdgeNode, EdgeNodeSpec, Publisher, REVOCATION_LIST_NAME, RevocationList, RolloutStrategy,
    TransferSettings, TrustPolicy, TrustPolicySpec, UpdateRollout, UpdateRolloutSpec,
};
use pollen_e2e::apiserver::{ApiServer, KUBECONFIG_ENV, retry_throttled};
use pollen_e2e::registry::Registry as TestRegistry;
use pollen_e2e::tools;
use pollen_operator::revocation;
use pollen_trust::keys::SigningKey;
use pollen_trust::pki::{self, FleetCa};
use pollen_trust::publish::{self, PublishOptions};
use pollen_trust::registry::{Registry, RegistryOptions, parse_reference};
use serde_json::json;

const CRDS: &str = include_str!("../../crds/pollen.dev.yaml");
const NS: &str = "default";
const PASSWORD: &str = "director-test-password";
const PP: PostParams = PostParams {
    dry_run: false,
    field_manager: None,
};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    options: pollen_operator::app::Options,
}

fn suffix() -> String {
    let n = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", (n ^ u128::from(std::process::id())) & 0xff_ffff)
}

async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics endpoint");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// What an agent writes about its certificate (server-side apply on /status): serial, expiry and the
/// certificate itself, which the operator checks against the fleet CA before it revokes the serial.
async fn report_certificate(client: &Client, node: &str, serial: &str, not_after: SystemTime, pem: &str) {
    let ens: Api<EdgeNode> = Api::all(client.clone());
    let not_after = k8s_openapi::jiff::Timestamp::try_from(not_after).unwrap();
    let body = json!({
        "apiVersion": "pollen.dev/v1alpha1",
        "kind": "EdgeNode",
        "status": { "certificate": { "serial": serial, "notAfter": not_after.to_string(), "pem": pem } },
    });
    let pp = PatchParams::apply(&format!("pollen-agent-{node}")).force();
    let patch = Patch::Apply(body);
    retry_throttled(|| ens.patch_status(node, &pp, &patch))
        .await
        .expect("agent status written");
}

#[tokio::test]
async fn quarantine_and_deletion_revoke_the_node_and_the_rollout_excludes_it() {
    if std::env::var_os(KUBECONFIG_ENV).is_none() && tools::require_all(["crd-apiserver", "etcd"]).is_none() {
        return;
    }
    if tools::require("docker-registry").is_none() {
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let server = ApiServer::from_env().await.expect("API server starts");
    let names = server
        .apply_crds_yaml(CRDS)
        .await
        .expect("the generated CRDs apply");
    assert!(
        names.iter().any(|n| n == "revocationlists.pollen.dev"),
        "{names:?}"
    );
    let client = server.client().await.expect("client");
    let label = format!("rv-{}", suffix());
    let agent_sa = format!("pollen-e2e-agent-{label}");
    let rls: Api<RevocationList> = Api::all(client.clone());
    // A shared cluster may hold a list already: numbers continue from it.
    let baseline = rls
        .get_opt(REVOCATION_LIST_NAME)
        .await
        .expect("RevocationLists readable")
        .map_or(0, |rl| rl.spec.number);
    let dir = tempfile::tempdir().unwrap();

    // A signed artifact in a real registry.
    let registry = TestRegistry::start().await.expect("registry starts");
    let docker_config = dir.path().join("docker-config.json");
    std::fs::write(&docker_config, br#"{"auths":{}}"#).unwrap();
    let oci = Registry::new(&RegistryOptions {
        docker_config: Some(docker_config.clone()),
        ..RegistryOptions::insecure_for(registry.host())
    })
    .expect("registry client");
    let publisher = SigningKey::generate().unwrap();
    let director = SigningKey::generate().unwrap();
    let reference = format!("{}/fleet/gw-{label}:1.0.0", registry.host());
    publish::publish_bytes(
        &oci,
        &parse_reference(&reference).unwrap(),
        "fw.bin",
        (0..50_000u32).map(|i| (i % 251) as u8).collect(),
        &publisher,
        &PublishOptions::default(),
    )
    .await
    .expect("published");

    let tps: Api<TrustPolicy> = Api::all(client.clone());
    let tp = TrustPolicy::new(
        &format!("fleet-{label}"),
        TrustPolicySpec {
            publishers: vec![Publisher {
                name: "release-team".into(),
                public_key: publisher.public_key().unwrap().pem().to_string(),
            }],
            director: DirectorKey {
                public_key: director.public_key().unwrap().pem().to_string(),
            },
            allow_unversioned: false,
        },
    );
    retry_throttled(|| tps.create(&PP, &tp))
        .await
        .expect("TrustPolicy created");

    // The fleet CA, and three nodes holding certificates from it.
    let ca = FleetCa::generate("e2e fleet", Duration::from_secs(7 * 24 * 3600)).unwrap();
    let ens: Api<EdgeNode> = Api::all(client.clone());
    let nodes: Vec<String> = (0..3).map(|i| format!("{label}-gw-{i}")).collect();
    let mut serials = BTreeMap::new();
    let mut not_afters = BTreeMap::new();
    for name in &nodes {
        let mut en = EdgeNode::new(name, EdgeNodeSpec::default());
        en.metadata.labels = Some(BTreeMap::from([("fleet".to_string(), label.clone())]));
        retry_throttled(|| ens.create(&PP, &en))
            .await
            .expect("EdgeNode created");
        let kp = ca
            .issue(name, SystemTime::now(), pki::DEFAULT_NODE_LIFETIME)
            .unwrap();
        report_certificate(
            &client,
            name,
            &kp.cert.facts.serial,
            kp.cert.facts.not_after,
            &kp.cert.cert_pem,
        )
        .await;
        serials.insert(name.clone(), kp.cert.facts.serial);
        not_afters.insert(name.clone(), kp.cert.facts.not_after);
    }

    // The operator, with the fleet CA mounted.
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let key_path = write(
        "director.key",
        director.to_encrypted_pem(PASSWORD.as_bytes()).unwrap().as_bytes(),
    );
    let password_path = write("director.password", format!("{PASSWORD}\n").as_bytes());
    let ca_cert = write("tls.crt", ca.cert_pem().as_bytes());
    let ca_key = write("tls.key", ca.key_pem().as_bytes());
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cli = Cli::parse_from([
        "pollen-operator".to_string(),
        format!("--director-key={key_path}"),
        format!("--director-key-password-file={password_path}"),
        format!("--docker-config={}", docker_config.display()),
        format!("--insecure-registry={}", registry.host()),
        format!("--metrics-addr={metrics_addr}"),
        format!("--fleet-ca-cert={ca_cert}"),
        format!("--fleet-ca-key={ca_key}"),
        format!("--edge-node-service-account={NS}/{agent_sa}"),
        "--leader-election-optional".to_string(),
        format!("--lease-namespace={NS}"),
        format!("--lease-name=pollen-operator-{label}"),
    ]);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(pollen_operator::app::run(
        cli.options,
        client.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Every node gets the revocation finalizer.
    let started = Instant::now();
    for name in &nodes {
        wait_for("the revocation finalizer", Duration::from_secs(30), async || {
            let en = ens.get(name).await.ok()?;
            en.finalizers()
                .iter()
                .any(|f| f == "pollen.dev/revocation")
                .then_some(())
        })
        .await;
    }
    println!(
        "measured: finalizer on {} EdgeNodes {:?} after the operator started",
        nodes.len(),
        started.elapsed()
    );

    // A rollout over the three nodes, tolerating one failure, until every node is assigned.
    let rollout_name = format!("gw-{label}");
    let mut ur = UpdateRollout::new(
        &rollout_name,
        UpdateRolloutSpec {
            artifact: ArtifactSource {
                reference: reference.clone(),
                allow_downgrade: false,
            },
            trust_policy: format!("fleet-{label}"),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([("fleet".into(), label.clone())])),
                ..LabelSelector::default()
            },
            strategy: RolloutStrategy {
                failure_threshold: 1,
                ..RolloutStrategy::default()
            },
            transfer: TransferSettings::default(),
            install: InstallSettings {
                target_path: "firmware/gw.bin".into(),
                keep_versions: 2,
                activation_window: None,
            },
        },
    );
    ur.metadata.namespace = Some(NS.into());
    let urs: Api<UpdateRollout> = Api::namespaced(client.clone(), NS);
    retry_throttled(|| urs.create(&PP, &ur))
        .await
        .expect("rollout created");
    let key = format!("{NS}/{rollout_name}");
    let assigned = |en: &EdgeNode| en.spec.assignments.iter().any(|a| a.rollout == key);
    wait_for("every node assigned", Duration::from_secs(60), async || {
        let lp = kube::api::ListParams::default().labels(&format!("fleet={label}"));
        let listed = ens.list(&lp).await.ok()?.items;
        (listed.len() == nodes.len() && listed.iter().all(assigned)).then_some(())
    })
    .await;
    // The director-signed index authorises exactly the selected nodes.
    let chunk_index = wait_for("the rollout's chunk index", Duration::from_secs(30), async || {
        urs.get(&rollout_name).await.ok()?.status?.chunk_index
    })
    .await;
    let trust = pollen_trust::TrustPolicy {
        publisher_keys: vec![publisher.public_key().unwrap()],
        director_key: director.public_key().unwrap(),
    };
    let verified =
        pollen_trust::verify::verify(&oci, &chunk_index, &trust, &pollen_trust::VerifyContext::now())
            .await
            .expect("the chunk index verifies with the director key");
    let mut expected = nodes.clone();
    expected.sort();
    assert_eq!(
        verified.index().peers,
        expected,
        "the index lists the selected nodes as its peers"
    );
    assert!(!verified.index().authorises("not-in-the-fleet"));
    if baseline == 0 {
        assert!(
            rls.get_opt(REVOCATION_LIST_NAME).await.unwrap().is_none(),
            "nothing is revoked yet, so no list is written"
        );
    }

    // Quarantine node 0.
    let victim = &nodes[0];
    let quarantined_at = Instant::now();
    let clock_before = unix_now();
    ens.patch(
        victim,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "pollen.dev/quarantine": "true" } } })),
    )
    .await
    .expect("labelled");
    let rl = wait_for("the revocation list", Duration::from_secs(30), async || {
        rls.get_opt(REVOCATION_LIST_NAME)
            .await
            .ok()
            .flatten()
            .filter(|rl| rl.spec.number > baseline)
    })
    .await;
    let to_list = quarantined_at.elapsed();
    // Numbers grow from the stored one and never fall behind the clock (unix seconds), so a list
    // deleted from the cluster does not restart the numbering the nodes compare against.
    let first = rl.spec.number;
    assert!(
        first >= (baseline + 1).max(clock_before) && first <= (baseline + 1).max(unix_now()),
        "number {first}, baseline {baseline}, clock {clock_before}"
    );
    let entry = rl
        .spec
        .entries
        .iter()
        .find(|e| e.node == *victim)
        .unwrap_or_else(|| panic!("an entry for {victim}: {:?}", rl.spec.entries));
    assert_eq!(entry.serial, serials[victim]);
    assert_eq!(entry.reason, "Quarantined");
    // The entry keeps the certificate's notAfter (it is pruned no earlier than that).
    let not_after = entry.not_after.as_ref().expect("the entry carries notAfter").0;
    assert!(SystemTime::from(not_after) > SystemTime::now(), "{not_after}");
    let set = pki::verify_revocation_list(rl.spec.crl.as_bytes(), ca.cert_pem()).expect("the CRL verifies");
    assert_eq!(set.number, first as u64);
    assert!(set.is_revoked(&serials[victim]));
    if baseline == 0 {
        assert_eq!(rl.spec.entries.len(), 1, "{:?}", rl.spec.entries);
        assert_eq!(set.serials.len(), 1);
    }
    let foreign = FleetCa::generate("another fleet", Duration::from_secs(3600)).unwrap();
    assert!(pki::verify_revocation_list(rl.spec.crl.as_bytes(), foreign.cert_pem()).is_err());

    let (excluded_ur, to_excluded) = {
        let ur = wait_for(
            "the rollout excluding the quarantined node",
            Duration::from_secs(30),
            async || {
                let ur = urs.get(&rollout_name).await.ok()?;
                let st = ur.status.as_ref()?;
                (st.nodes.quarantined == 1).then_some(ur)
            },
        )
        .await;
        (ur, quarantined_at.elapsed())
    };
    let st = excluded_ur.status.unwrap();
    assert_eq!((st.nodes.failed, st.nodes.targeted), (0, 2), "{:?}", st.nodes);
    let progressing = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .expect("a Progressing condition");
    assert!(
        progressing.message.contains(&format!(
            "quarantined (pollen.dev/quarantine=true), excluded: {victim}"
        )),
        "{}",
        progressing.message
    );
    let victim_node = ens.get(victim).await.unwrap();
    assert!(!assigned(&victim_node), "a quarantined node loses its assignment");
    println!(
        "measured: quarantine label -> RevocationList fleet (higher number) with the serial: {to_list:?}"
    );
    println!("measured: quarantine label -> rollout excludes the node with the reason: {to_excluded:?}");

    // Node 1's certificates as the signer records them, durably on its EdgeNode: the one it reports
    // and an older one it no longer reports. Written from a stale copy of the EdgeNode: the write
    // reads again and lands.
    let doomed = &nodes[1];
    let stale = ens.get(doomed).await.unwrap();
    ens.patch(
        doomed,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "site": "moved" } } })),
    )
    .await
    .expect("a concurrent write");
    let signed = ca
        .issue(doomed, SystemTime::now(), Duration::from_secs(3600))
        .unwrap();
    let signed_not_after = jiff_of(signed.cert.facts.not_after);
    let ledger = revocation::Ledger::from([
        (signed.cert.facts.serial.clone(), signed_not_after),
        (serials[doomed].clone(), jiff_of(not_afters[doomed])),
    ]);
    let written = revocation::record_durably(&ens, doomed, Some(stale), &ledger, jiff_of(SystemTime::now()))
        .await
        .expect("the ledger is written");
    assert!(written);
    let on_node = revocation::ledger_of(&ens.get(doomed).await.unwrap());
    assert_eq!(on_node, ledger, "the annotation holds the signed certificate");

    // Delete node 1: revoked under a higher number, then released.
    let deleted_at = Instant::now();
    ens.delete(doomed, &DeleteParams::default())
        .await
        .expect("delete");
    let rl = wait_for("the next revocation list", Duration::from_secs(30), async || {
        rls.get_opt(REVOCATION_LIST_NAME)
            .await
            .ok()
            .flatten()
            .filter(|rl| rl.spec.number > first)
    })
    .await;
    let to_list2 = deleted_at.elapsed();
    let second = rl.spec.number;
    let set = pki::verify_revocation_list(rl.spec.crl.as_bytes(), ca.cert_pem()).expect("the CRL verifies");
    assert_eq!(set.number, second as u64);
    assert!(set.serials.contains(&serials[doomed]) && set.serials.contains(&serials[victim]));
    assert!(
        set.serials.contains(&signed.cert.facts.serial),
        "the certificate from the durable ledger is revoked too"
    );
    let ledger_entry = rl
        .spec
        .entries
        .iter()
        .find(|e| e.serial == signed.cert.facts.serial)
        .expect("an entry for the signed certificate");
    assert_eq!(
        ledger_entry.not_after.as_ref().map(|t| t.0),
        Some(signed_not_after)
    );
    assert!(!set.serials.contains(&serials[&nodes[2]]));
    let entry = rl
        .spec
        .entries
        .iter()
        .find(|e| e.node == *doomed)
        .expect("an entry");
    assert_eq!(entry.reason, "Deleted");
    wait_for("the EdgeNode to go", Duration::from_secs(30), async || {
        matches!(ens.get_opt(doomed).await, Ok(None)).then_some(())
    })
    .await;
    let to_gone = deleted_at.elapsed();
    println!(
        "measured: delete -> RevocationList fleet (next number) with the serial: {to_list2:?}; EdgeNode gone after {to_gone:?}"
    );

    let metrics = http_get(metrics_addr, "/metrics").await;
    assert!(
        metrics.contains(&format!("pollen_operator_revocation_list_number {second}")),
        "{metrics}"
    );
    if baseline == 0 {
        assert!(
            // Node 0's, and node 1's two (reported and recorded).
            metrics.contains("pollen_operator_revoked_certificates 3"),
            "{metrics}"
        );
    }

    if pollen_operator::csr::served(&client).await {
        csr_path(&server, &client, &ca, &label, &agent_sa).await;
        let metrics = http_get(metrics_addr, "/metrics").await;
        assert!(
            metrics.contains(
                "pollen_operator_csr_decisions_total{decision=\"approve\",reason=\"NodeIdentityVerified\"} 1"
            ),
            "{metrics}"
        );
    } else {
        println!(
            "skipped: the CSR path: this API server does not serve certificates.k8s.io/v1 (the CRD-only \
             server); covered by the mocked tests in operator/src/csr.rs, and by this test against \
             {KUBECONFIG_ENV}"
        );
    }

    // Cleanup: the rollout, the remaining nodes (releasing their finalizers), the operator.
    let _ = urs.delete(&rollout_name, &DeleteParams::default()).await;
    for name in [&nodes[0], &nodes[2]] {
        let _ = ens.delete(name, &DeleteParams::default()).await;
    }
    for name in [&nodes[0], &nodes[2]] {
        wait_for("cleanup", Duration::from_secs(30), async || {
            matches!(ens.get_opt(name).await, Ok(None)).then_some(())
        })
        .await;
    }
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), operator)
        .await
        .expect("the operator stops within 20 s")
        .expect("no panic")
        .expect("the operator stops without error");
    // On a shared cluster, other EdgeNodes got the finalizer from this operator: release them.
    pollen_operator::revocation::release_finalizers(client.clone())
        .await
        .expect("finalizers released");
}

/// The signer on a full cluster: a token bound to a pod on a real node asks for that node's
/// certificate (signed), and for another node's (denied); the admin's own request is denied.
async fn csr_path(server: &ApiServer, admin: &Client, ca: &FleetCa, label: &str, sa: &str) {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
    use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        ..ObjectMeta::default()
    };
    let node = Api::<Node>::all(admin.clone())
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .expect("Nodes listed")
        .items
        .into_iter()
        .next()
        .expect("the cluster has a node")
        .name_any();

    // The agent's identity: a ServiceAccount allowed to create CSRs, a pod on `node` (never started:
    // its image is never pulled), and a token bound to that pod.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    let account = ServiceAccount {
        metadata: meta(sa),
        ..ServiceAccount::default()
    };
    sas.create(&PP, &account).await.expect("ServiceAccount created");
    let role = format!("pollen-e2e-csr-{label}");
    let cluster_role = ClusterRole {
        metadata: meta(&role),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["certificates.k8s.io".into()]),
            resources: Some(vec!["certificatesigningrequests".into()]),
            verbs: vec!["create".into(), "get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    };
    Api::<ClusterRole>::all(admin.clone())
        .create(&PP, &cluster_role)
        .await
        .expect("ClusterRole created");
    let binding = ClusterRoleBinding {
        metadata: meta(&role),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa.into(),
            namespace: Some(NS.into()),
            ..Subject::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PP, &binding)
        .await
        .expect("ClusterRoleBinding created");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let pod_name = format!("agent-{label}");
    let pod = Pod {
        metadata: meta(&pod_name),
        spec: Some(PodSpec {
            node_name: Some(node.clone()),
            service_account_name: Some(sa.into()),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "agent".into(),
                image: Some("pollen.invalid/e2e-never-pulled:0".into()),
                image_pull_policy: Some("Never".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let pod = pods.create(&PP, &pod).await.expect("Pod created");
    let token_request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let token = sas
        .create_token_request(sa, &PP, &token_request)
        .await
        .expect("a bound token")
        .status
        .expect("a token")
        .token;
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig_path()).unwrap();
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..kube::config::AuthInfo::default()
    };
    let agent = Client::try_from(config).expect("the agent's client");

    let request = |name: &str, for_node: &str| CertificateSigningRequest {
        metadata: meta(name),
        spec: CertificateSigningRequestSpec {
            signer_name: pollen_crds::SIGNER_NAME.into(),
            request: ByteString(pki::new_request(for_node).unwrap().request_pem.into_bytes()),
            usages: Some(vec![
                "digital signature".into(),
                "server auth".into(),
                "client auth".into(),
            ]),
            expiration_seconds: Some(3600),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let admin_csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let agent_csrs: Api<CertificateSigningRequest> = Api::all(agent);
    let verdict = async |name: &str| -> Result<String, (String, String)> {
        wait_for("the signer's verdict", Duration::from_secs(30), async || {
            let csr = admin_csrs.get(name).await.ok()?;
            let st = csr.status?;
            if let Some(cert) = st.certificate.filter(|c| !c.0.is_empty()) {
                return Some(Ok(String::from_utf8(cert.0).unwrap()));
            }
            st.conditions
                .into_iter()
                .flatten()
                .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
                .map(|c| Err((c.type_, c.reason.unwrap_or_default())))
        })
        .await
    };

    let good = format!("pollen-edge-{label}-good");
    let asked = Instant::now();
    agent_csrs
        .create(&PP, &request(&good, &node))
        .await
        .expect("the agent creates its CSR");
    let pem = verdict(&good).await.expect("signed");
    println!(
        "measured: CSR created -> certificate in status.certificate: {:?}",
        asked.elapsed()
    );
    let facts = pki::cert_facts(&pem).unwrap();
    assert_eq!(facts.name, node);
    assert_eq!(
        facts.not_after.duration_since(facts.not_before).unwrap(),
        Duration::from_secs(3600) + pki::CLOCK_SKEW
    );
    let approved = admin_csrs.get(&good).await.unwrap();
    let cond = approved
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Approved")
        .expect("Approved");
    assert_eq!(cond.reason.as_deref(), Some("NodeIdentityVerified"));
    assert!(
        verifies_with(&pem, ca.cert_pem()),
        "the certificate chains to the fleet CA"
    );

    let wrong = format!("pollen-edge-{label}-wrong");
    agent_csrs
        .create(&PP, &request(&wrong, &format!("not-{node}")))
        .await
        .unwrap();
    assert_eq!(
        verdict(&wrong).await,
        Err(("Denied".to_string(), "NodeMismatch".to_string()))
    );
    let stranger = format!("pollen-edge-{label}-stranger");
    admin_csrs.create(&PP, &request(&stranger, &node)).await.unwrap();
    assert_eq!(
        verdict(&stranger).await,
        Err(("Denied".to_string(), "WrongServiceAccount".to_string()))
    );

    for name in [&good, &wrong, &stranger] {
        let _ = admin_csrs.delete(name, &DeleteParams::default()).await;
    }
    let _ = pods.delete(&pod_name, &DeleteParams::default()).await;
    let _ = Api::<ClusterRoleBinding>::all(admin.clone())
        .delete(&role, &DeleteParams::default())
        .await;
    let _ = Api::<ClusterRole>::all(admin.clone())
        .delete(&role, &DeleteParams::default())
        .await;
    let _ = sas.delete(sa, &DeleteParams::default()).await;
}

/// Whether `cert_pem` chains to `ca_pem` (rustls' WebPKI client-certificate verifier).
fn verifies_with(cert_pem: &str, ca_pem: &str) -> bool {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, UnixTime};
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .unwrap();
    verifier.verify_client_cert(&leaf, &[], UnixTime::now()).is_ok()
}

/// A system time as the timestamp type the Kubernetes types use.
fn jiff_of(t: SystemTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::try_from(t).expect("a representable time")
}

/// The current unix time in seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}
