//! A compromised device against a real fleet: the `pollen-operator` binary, a Kubernetes API server,
//! the registry and `pollen-edge-node agent` processes (see [`pollen_e2e::fleet`]).
//!
//! The attacker is `gw-evil`: a fleet member (an administrator created its EdgeNode with the fleet's
//! role label) whose agent was replaced. It holds what a compromised device holds: a real node
//! certificate from the fleet CA, and the agent's ServiceAccount token bound to its node (the API
//! server is started with the chart's agent admission policy, rendered by helm and enforced by the
//! server's own ValidatingAdmissionPolicy plugin, and a token user with the device's node-name
//! extra). It writes through the API with the project's own CRD types, and on the wire it speaks the
//! project's own protocol over QUIC with mutual TLS. Each test runs one attack and checks the same
//! four things: nothing is installed where it should not be, the other rollouts are unaffected, the
//! operator keeps running, and the rollout's status says what happened.
//!
//! Needs helm, `docker-registry`, `crd-apiserver` and `etcd` (`e2e/tools/install-deps.sh`); fails under `CI`
//! without them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use pollen_crds::conditions::{reasons, types};
use pollen_crds::{
    AssignmentPhase, AssignmentStatus, CertificateInfo, EdgeNode, EdgeNodeStatus, REVOCATION_LIST_NAME,
    RevocationList, RolloutPhase, UpdateRollout, UpdateRolloutStatus, Wave, labels,
};
use pollen_e2e::apiserver::{ApiServerOptions, TokenUser, retry_throttled};
use pollen_e2e::fleet::{self, LocalFleet, ROLE};
use pollen_e2e::tools;
use pollen_edge_node::protocol::{self, ErrorCode, Message};
use pollen_edge_node::tls::{TlsIdentity, TransportLimits};

const EVIL: &str = "gw-evil";
/// The agent's ServiceAccount in the chart's default render, and the device's stolen token.
const AGENT: &str = tools::CHART_AGENT_USER;
const TOKEN: &str = "stolen-agent-token-gw-evil";

/// A fleet of `nodes` honest agents on an API server that enforces the chart's agent admission
/// policy and knows the attacker's token; `None` when the tools are missing outside CI.
async fn hostile_fleet(nodes: usize) -> Option<LocalFleet> {
    let helm = tools::require("helm")?;
    let policy = tools::agent_admission_policy(&helm);
    let api = ApiServerOptions::default()
        .admission_policy(policy)
        .token_user(TokenUser::new(TOKEN, AGENT).extra("authentication.kubernetes.io/node-name", EVIL));
    LocalFleet::start_for_test_api(nodes, None, Some(api)).await
}

fn f_nodes(f: &LocalFleet) -> Api<EdgeNode> {
    Api::all(f.client.clone())
}

fn all() -> Vec<Wave> {
    vec![Wave {
        count: None,
        percent: Some(100),
        pause: None,
    }]
}

fn complete(s: &UpdateRolloutStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == types::COMPLETE && c.status == "True")
}

/// The compromised device: its EdgeNode (created by an administrator, with the fleet's role label)
/// and its real identity.
struct Attacker {
    nodes: Api<EdgeNode>,
    identity: TlsIdentity,
    cert_pem: String,
}

impl Attacker {
    async fn join(f: &LocalFleet) -> Self {
        f.label_node(EVIL, &[(ROLE.0, ROLE.1)])
            .await
            .expect("EdgeNode gw-evil");
        let (cert, key, ca) = f.issue_identity(EVIL).expect("identity");
        let identity = TlsIdentity::load(&cert, &key, &ca).expect("load identity");
        let client = f.api.client_with_token(TOKEN).await.expect("the device's client");
        let attacker = Self {
            nodes: Api::all(client),
            identity,
            cert_pem: std::fs::read_to_string(&cert).unwrap(),
        };
        // What its agent would report: an endpoint (nobody listens there) and its certificate.
        attacker
            .write_status(|s| {
                s.endpoint = Some("127.0.0.1:9".into());
                s.site = Some("lab".into());
                s.certificate = Some(attacker.real_certificate());
            })
            .await;
        attacker
    }

    fn real_certificate(&self) -> CertificateInfo {
        CertificateInfo {
            serial: self.identity.serial().to_string(),
            not_after: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::try_from(self.identity.not_after()).unwrap(),
            ),
            pem: Some(self.cert_pem.clone()),
        }
    }

    /// Writes its own EdgeNode's status, as its agent may.
    async fn write_status(&self, change: impl FnOnce(&mut EdgeNodeStatus)) {
        let en = self.nodes.get(EVIL).await.expect("own EdgeNode");
        let mut status = en.status.unwrap_or_default();
        change(&mut status);
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        let pp = PatchParams::default();
        retry_throttled(|| self.nodes.patch_status(EVIL, &pp, &patch))
            .await
            .expect("status write");
    }

    /// Its assignment of `rollout`, once the operator wrote one.
    async fn assignment(&self, rollout: &str) -> Option<pollen_crds::Assignment> {
        let en = self.nodes.get(EVIL).await.ok()?;
        en.spec.assignments.into_iter().find(|a| a.rollout == rollout)
    }

    /// Dials `addr` with its real certificate and asks for chunk 0 of whatever the peer serves: the
    /// first answer on the control stream, and how many payload bytes came back.
    async fn probe(&self, addr: SocketAddr) -> (Option<Message>, usize) {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
        ep.set_default_client_config(
            self.identity
                .quic_client(&TransportLimits::default())
                .expect("client config"),
        );
        let conn =
            match tokio::time::timeout(Duration::from_secs(5), ep.connect(addr, "pollen").unwrap()).await {
                Ok(Ok(c)) => c,
                _ => return (None, 0),
            };
        let mut first = None;
        let mut got = 0;
        if let Ok((mut send, mut recv)) = conn.open_bi().await {
            let hello = Message::Hello {
                version: protocol::VERSION,
                site: "lab".into(),
                indexes: vec![[0u8; 32]],
            };
            let mut frame = Vec::new();
            hello.encode(&mut frame);
            let _ = send.write_all(&frame).await;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(5);
            while first.is_none() && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(1), recv.read(&mut chunk)).await {
                    Ok(Ok(Some(n))) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if let Ok(Some((m, _))) = protocol::decode(&buf) {
                            first = Some(m);
                        }
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
        }
        // A request stream for chunk 0 of every index it might serve: whatever comes back is counted.
        if let Ok((mut send, mut recv)) = conn.open_bi().await {
            let req = Message::Request {
                index: [0u8; 32],
                first: 0,
                count: 1,
            };
            let mut frame = Vec::new();
            req.encode(&mut frame);
            let _ = send.write_all(&frame).await;
            let _ = send.finish();
            if let Ok(Ok(bytes)) =
                tokio::time::timeout(Duration::from_secs(3), recv.read_to_end(1 << 20)).await
            {
                got = bytes.len();
            }
        }
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;
        (first, got)
    }
}

/// A node's published endpoint.
async fn endpoint(f: &LocalFleet, node: &str) -> SocketAddr {
    let nodes: Api<EdgeNode> = Api::all(f.client.clone());
    nodes
        .get(node)
        .await
        .unwrap()
        .status
        .and_then(|s| s.endpoint)
        .and_then(|e| e.parse().ok())
        .expect("published endpoint")
}

async fn create(f: &LocalFleet, ur: &UpdateRollout) {
    let rollouts: Api<UpdateRollout> = Api::namespaced(f.client.clone(), "default");
    let pp = PostParams::default();
    retry_throttled(|| rollouts.create(&pp, ur))
        .await
        .expect("UpdateRollout");
}

/// Files named `name` anywhere under `dir`.
fn files_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(files_named(&p, name));
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
    out
}

/// A device outside a rollout, with a real certificate of the fleet, dials the node that holds the
/// payload: it is refused before it learns anything, and no payload byte comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_outside_a_rollout_gets_nothing_from_its_peers() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(mut f) = hostile_fleet(2).await else {
        return;
    };
    let evil = Attacker::join(&f).await;
    f.label_node("gw-0", &[(ROLE.0, ROLE.1), ("tier", "camera")])
        .await
        .unwrap();
    // Label forging: the API server refuses every way the device could claim the camera label.
    let forged = serde_json::json!({"metadata": {"labels": {"tier": "camera"}}});
    let merge = Patch::Merge(&forged);
    let apply = Patch::Apply(serde_json::json!({
        "apiVersion": "pollen.dev/v1alpha1", "kind": "EdgeNode",
        "metadata": {"name": EVIL, "labels": {"tier": "camera"}}, "spec": {},
    }));
    let twin: EdgeNode = serde_json::from_value(serde_json::json!({
        "apiVersion": "pollen.dev/v1alpha1", "kind": "EdgeNode",
        "metadata": {"name": "gw-evil-twin", "labels": {"tier": "camera"}}, "spec": {},
    }))
    .unwrap();
    let pp = PatchParams::default();
    let refusals = [
        (
            "merge patch of its labels",
            evil.nodes.patch(EVIL, &pp, &merge).await.err(),
        ),
        (
            "apply of its labels",
            evil.nodes
                .patch(EVIL, &PatchParams::apply("pollen-agent").force(), &apply)
                .await
                .err(),
        ),
        (
            "a second EdgeNode with the label",
            evil.nodes.create(&PostParams::default(), &twin).await.err(),
        ),
        ("gw-0's labels", evil.nodes.patch("gw-0", &pp, &merge).await.err()),
    ];
    for (what, err) in refusals {
        match err {
            Some(kube::Error::Api(e)) if e.code == 403 => eprintln!("refused: {what}: {}", e.message),
            other => panic!("{what}: expected 403 from the admission policy, got {other:?}"),
        }
    }
    let own = f_nodes(&f).get(EVIL).await.unwrap();
    assert_eq!(own.labels().get("tier"), None, "the forged label landed");

    let payload = pollen_e2e::lab::payload::bytes(512 * 1024 + 3, 11);
    let artifact = f
        .publish("camera-model", "1.0.0", "model.bin", payload.clone())
        .await
        .unwrap();
    let mut ur = fleet::rollout("camera-model", &artifact, "models/camera.bin", all());
    ur.spec.selector.match_labels = Some(BTreeMap::from([("tier".into(), "camera".into())]));
    create(&f, &ur).await;
    let (st, _) = f
        .wait_rollout("camera-model", 180, "the camera rollout completes", complete)
        .await;
    assert_eq!((st.nodes.targeted, st.nodes.installed), (1, 1), "{st:?}");
    assert!(evil.assignment("default/camera-model").await.is_none());

    // gw-0 seeds the model now. The attacker dials it with its real certificate.
    let addr = endpoint(&f, "gw-0").await;
    let (first, bytes) = evil.probe(addr).await;
    assert!(
        matches!(
            first,
            None | Some(Message::Error {
                code: ErrorCode::NotAuthorised,
                ..
            })
        ),
        "gw-0 answered the unlisted device with {first:?}"
    );
    assert_eq!(bytes, 0, "payload bytes reached a device outside the rollout");

    // Nothing installed where it should not be: only gw-0 holds the model.
    assert_eq!(
        std::fs::read(f.installed_file("gw-0", "models/camera.bin")).unwrap(),
        payload
    );
    assert!(!f.installed_file("gw-1", "models/camera.bin").exists());
    f.check_alive().expect("operator and agents running");
}

/// The attacker, a member of one rollout, reports absurd counters for it and a forged failure for
/// a rollout it is not in: the operator counts at most one payload for it, the honest nodes still
/// get their origin budget, and the other rollout does not notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflated_counters_and_forged_statuses_reach_no_other_rollout() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(mut f) = hostile_fleet(2).await else {
        return;
    };
    let evil = Attacker::join(&f).await;
    f.label_node("gw-1", &[(ROLE.0, ROLE.1), ("tier", "camera")])
        .await
        .unwrap();
    let size = 768 * 1024 + 5;
    let fw = pollen_e2e::lab::payload::bytes(size, 3);
    let artifact = f.publish("gw-fw", "3.0.0", "fw.bin", fw.clone()).await.unwrap();
    let mut ur = fleet::rollout("gw-fw", &artifact, "fw/gw.bin", all());
    // Two copies from the origin for the fleet: the attacker's claim may take one at most.
    ur.spec.transfer.origin_budget_percent = Some(200);
    create(&f, &ur).await;
    let cam = pollen_e2e::lab::payload::bytes(256 * 1024, 4);
    let cam_artifact = f
        .publish("cam-fw", "1.0.0", "cam.bin", cam.clone())
        .await
        .unwrap();
    let mut cam_ur = fleet::rollout("cam-fw", &cam_artifact, "fw/cam.bin", all());
    cam_ur.spec.selector.match_labels = Some(BTreeMap::from([("tier".into(), "camera".into())]));

    // As soon as it holds its assignment, the attacker claims it read 2^62 bytes from the origin
    // and from peers, and says it installed.
    let start = Instant::now();
    let mine = loop {
        if let Some(a) = evil.assignment("default/gw-fw").await {
            break a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no assignment for the attacker\n{}",
            f.logs_tail(20)
        );
        f.check_alive().expect("fleet alive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let huge = 1i64 << 62;
    let forged = |rollout: &str, index: &str, phase| AssignmentStatus {
        rollout: rollout.into(),
        chunk_index: index.into(),
        phase,
        verified_bytes: huge,
        total_bytes: huge,
        bytes_from_peers: huge,
        bytes_from_origin: huge,
        last_error: Some("forged by the attacker".into()),
        updated_at: None,
    };
    evil.write_status(|s| {
        s.assignments = vec![forged(
            "default/gw-fw",
            &mine.chunk_index,
            AssignmentPhase::Installed,
        )];
    })
    .await;
    create(&f, &cam_ur).await;
    // And a failure for the camera rollout it is not part of, with that rollout's real index.
    let (cam_st, _) = f
        .wait_rollout("cam-fw", 120, "the camera index is built", |s| {
            s.chunk_index.is_some()
        })
        .await;
    let cam_index = cam_st.chunk_index.expect("the camera index");
    evil.write_status(|s| {
        s.assignments
            .push(forged("default/cam-fw", &cam_index, AssignmentPhase::Failed));
    })
    .await;

    let (st, _) = f
        .wait_rollout("gw-fw", 180, "the firmware rollout completes", complete)
        .await;
    let (cam_st, _) = f
        .wait_rollout("cam-fw", 180, "the camera rollout completes", complete)
        .await;
    // The attacker's own entry counts as installed (its word about itself); its counters count as
    // one payload at most, so the status stays within what three nodes can have received.
    assert_eq!((st.nodes.targeted, st.nodes.installed), (3, 3), "{st:?}");
    let bound = 3 * size as i64;
    assert!(
        st.bytes_from_origin <= bound && st.bytes_from_peers <= bound,
        "forged counters reached the rollout status: {st:?}"
    );
    assert!(
        !st.conditions
            .iter()
            .any(|c| c.reason == reasons::BUDGET_SPENT || c.type_ == types::ORIGIN_BUDGET_SPENT),
        "the attacker's claim spent the origin budget: {:?}",
        st.conditions
    );
    assert_eq!((cam_st.nodes.targeted, cam_st.nodes.failed), (1, 0), "{cam_st:?}");
    // The honest nodes hold the firmware; only gw-1 holds the camera payload.
    for node in ["gw-0", "gw-1"] {
        assert_eq!(
            std::fs::read(f.installed_file(node, "fw/gw.bin")).unwrap(),
            fw,
            "{node}"
        );
    }
    assert_eq!(
        std::fs::read(f.installed_file("gw-1", "fw/cam.bin")).unwrap(),
        cam
    );
    assert!(!f.installed_file("gw-0", "fw/cam.bin").exists());
    f.check_alive().expect("operator and agents running");
}

/// The attacker stalls a rollout it is in, then floods the revocation list once quarantined: it
/// rewrites its status certificate 300 times with made-up serials and far-future expiry, half of
/// them with a certificate of a CA of its own making. The list holds its one real certificate, and
/// the rollout it stalled completes without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_device_flooding_serials_changes_nothing() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(mut f) = hostile_fleet(2).await else {
        return;
    };
    let evil = Attacker::join(&f).await;
    let fw = pollen_e2e::lab::payload::bytes(512 * 1024 + 9, 5);
    let artifact = f.publish("gw-fw", "4.0.0", "fw.bin", fw.clone()).await.unwrap();
    create(&f, &fleet::rollout("gw-fw", &artifact, "fw/gw.bin", all())).await;
    // The honest nodes install; the attacker never does, so the rollout waits on it.
    let (st, _) = f
        .wait_rollout("gw-fw", 180, "the honest nodes install", |s| {
            s.nodes.installed == 2
        })
        .await;
    assert_eq!(st.nodes.targeted, 3, "{st:?}");
    assert!(
        !complete(&st),
        "the rollout completed without the attacker: {st:?}"
    );

    // Quarantine.
    let nodes: Api<EdgeNode> = Api::all(f.client.clone());
    let q = serde_json::json!({"metadata": {"labels": {labels::QUARANTINE: "true"}}});
    nodes
        .patch(EVIL, &PatchParams::default(), &Patch::Merge(&q))
        .await
        .expect("quarantine");

    // The flood.
    let rogue = pollen_trust::pki::FleetCa::generate("pollen fleet", Duration::from_secs(3600)).unwrap();
    let far = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::from_second(4_000_000_000).unwrap(),
    );
    for i in 0..300u32 {
        let pem = (i % 2 == 0).then(|| {
            rogue
                .issue(
                    EVIL,
                    std::time::SystemTime::now(),
                    Duration::from_secs(3650 * 86400),
                )
                .unwrap()
                .cert
                .cert_pem
        });
        let cert = CertificateInfo {
            serial: format!("{:08x}{:08x}", i.wrapping_mul(2_654_435_761), i),
            not_after: far.clone(),
            pem,
        };
        evil.write_status(|s| s.certificate = Some(cert)).await;
    }
    f.check_alive().expect("operator survives the flood");

    // The rollout completes without the quarantined node, and says why.
    let (st, _) = f
        .wait_rollout(
            "gw-fw",
            120,
            "the rollout completes without the quarantined node",
            complete,
        )
        .await;
    assert_eq!(st.phase, RolloutPhase::Complete, "{st:?}");
    assert_eq!(
        (
            st.nodes.targeted,
            st.nodes.installed,
            st.nodes.failed,
            st.nodes.quarantined
        ),
        (2, 2, 0, 1),
        "{st:?}"
    );
    assert!(
        st.conditions
            .iter()
            .any(|c| c.message.contains("quarantined") && c.message.contains(EVIL)),
        "no condition names the quarantine: {:?}",
        st.conditions
    );

    // The list: its one real certificate, nothing else, however long we wait.
    let rls: Api<RevocationList> = Api::all(f.client.clone());
    let start = Instant::now();
    loop {
        let listed: Vec<(String, String)> = rls
            .get_opt(REVOCATION_LIST_NAME)
            .await
            .unwrap()
            .map(|rl| rl.spec.entries.into_iter().map(|e| (e.node, e.serial)).collect())
            .unwrap_or_default();
        assert!(
            listed
                .iter()
                .all(|(n, s)| n == EVIL && s == evil.identity.serial()),
            "the flood reached the revocation list: {listed:?}"
        );
        if !listed.is_empty() && start.elapsed() > Duration::from_secs(5) {
            assert_eq!(listed.len(), 1);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the real certificate was never revoked\n{}",
            f.logs_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    f.check_alive().expect("operator and agents running");
}

/// Hostile values in rollouts: each is refused by the API server's schema, or accepted and then
/// failed by the operator with a condition on that rollout alone, while a good rollout completes
/// beside them and nothing lands outside the install roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rollout_values_are_refused_or_contained() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(mut f) = hostile_fleet(2).await else {
        return;
    };
    let payload = pollen_e2e::lab::payload::bytes(256 * 1024 + 1, 8);
    let artifact = f.publish("evil", "1.0.0", "evil", payload.clone()).await.unwrap();
    let rollouts: Api<UpdateRollout> = Api::namespaced(f.client.clone(), "default");

    // Refused by the schema: the install path escapes the install root or collides with another
    // target's layout; an impossible window; a chunk size that is not a power of two.
    let mut refused = Vec::new();
    for (i, path) in [
        "../../evil",
        "/tmp/evil",
        "fw/current",
        "fw/versions/evil",
        "fw/./evil",
    ]
    .iter()
    .enumerate()
    {
        let ur = fleet::rollout(&format!("path-{i}"), &artifact, path, all());
        let err = rollouts
            .create(&PostParams::default(), &ur)
            .await
            .expect_err(path);
        refused.push(format!("targetPath {path:?}: {err}"));
        assert!(err.to_string().contains("targetPath"), "{path}: {err}");
    }
    let mut ur = fleet::rollout("window", &artifact, "fw/w.bin", all());
    ur.spec.install.activation_window = Some(pollen_crds::rollout::ActivationWindow {
        start: "25:00".into(),
        end: "99:99".into(),
    });
    refused.push(format!(
        "window 25:00-99:99: {}",
        rollouts
            .create(&PostParams::default(), &ur)
            .await
            .expect_err("window")
    ));
    let mut ur = fleet::rollout("chunk", &artifact, "fw/c.bin", all());
    ur.spec.transfer.chunk_size_bytes = Some(1_000_001);
    refused.push(format!(
        "chunk size 1000001: {}",
        rollouts
            .create(&PostParams::default(), &ur)
            .await
            .expect_err("chunk")
    ));

    // Accepted by the schema, refused by the operator with a condition.
    let mut contained: Vec<&str> = Vec::new();
    let mut ur = fleet::rollout("pause-overflow", &artifact, "fw/p.bin", fleet::canary_then_all());
    ur.spec.strategy.waves[0].pause = Some("99999999999999999999h".into());
    create(&f, &ur).await;
    contained.push("pause-overflow");
    let mut ur = fleet::rollout("pause-century", &artifact, "fw/q.bin", fleet::canary_then_all());
    ur.spec.strategy.waves[0].pause = Some("1000000h".into());
    create(&f, &ur).await;
    contained.push("pause-century");
    let mut ur = fleet::rollout("selector", &artifact, "fw/s.bin", all());
    ur.spec.selector.match_expressions = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
            key: "role".into(),
            operator: "Resembles".into(),
            values: Some(vec!["gateway".into()]),
        },
    ]);
    if rollouts.create(&PostParams::default(), &ur).await.is_ok() {
        contained.push("selector");
    } else {
        refused.push("selector operator Resembles".into());
    }

    // A good rollout beside them.
    let good = pollen_e2e::lab::payload::bytes(300 * 1024, 9);
    let good_artifact = f
        .publish("good", "1.0.0", "good.bin", good.clone())
        .await
        .unwrap();
    create(&f, &fleet::rollout("good", &good_artifact, "fw/good.bin", all())).await;
    f.wait_rollout(
        "good",
        180,
        "the good rollout completes beside the hostile ones",
        complete,
    )
    .await;
    for name in &contained {
        let (st, _) = f
            .wait_rollout(name, 60, "a condition on the hostile rollout", |s| {
                s.conditions.iter().any(|c| {
                    c.type_ == types::FAILED && c.status == "True" && c.reason == reasons::INVALID_SPEC
                })
            })
            .await;
        let c = st.conditions.iter().find(|c| c.type_ == types::FAILED).unwrap();
        eprintln!("{name}: {} ({})", c.reason, c.message);
        assert!(!c.message.is_empty());
    }
    for r in &refused {
        eprintln!("refused: {r}");
    }
    for node in ["gw-0", "gw-1"] {
        assert_eq!(
            std::fs::read(f.installed_file(node, "fw/good.bin")).unwrap(),
            good,
            "{node}"
        );
    }
    let stray = files_named(&f.dir, "evil");
    let stray_tmp = files_named(std::path::Path::new("/tmp/evil"), "evil");
    assert!(
        stray.is_empty() && stray_tmp.is_empty(),
        "{stray:?} {stray_tmp:?}"
    );
    f.check_alive().expect("operator and agents running");
}
