//! The operator against a REAL Kubernetes API server (etcd + crd-apiserver from `ApiServer::start`, or
//! the cluster of `POLLEN_E2E_KUBECONFIG`) and a real registry with real signed artifacts.
//!
//! - the generated CRDs apply (structurally valid, CEL rules compile) and the server enforces CEL;
//! - the operator, run in-process through `pollen_operator::app::run` with the real trust pipeline,
//!   hands a canary its assignment, then the rest of the fleet once the canary reports `Installed`
//!   (the agents are simulated by writing EdgeNode status here), until `Complete`; the chunk index it
//!   assigned verifies with the director and publisher keys; deleting the rollout removes the
//!   assignments;
//! - unsigned and wrong-key artifacts end `Verified=False` with zero assignments;
//! - signatures are bound to what was published: a tag moved to an older signed build after a newer
//!   one was delivered ends `Verified=False` (`Downgrade`) with zero assignments until the rollout sets
//!   `allowDowngrade` (then it is delivered and `downgradedFrom` recorded; the TrustPolicy's ledger
//!   keeps the highest version); a signed manifest copied, with its signature, into another
//!   repository ends `Verified=False` (`RepositoryMismatch`) with zero assignments.
//!
//! Needs `crd-apiserver` + `etcd` (e2e/tools/build-apiserver.sh) and `docker-registry`
//! (e2e/tools/install-deps.sh). Without them: fails under `CI`, skips with a reason otherwise.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use pollen_crds::conditions::{reasons, types};
use pollen_crds::rollout::{ArtifactSource, InstallSettings};
use pollen_crds::{
    DirectorKey, EdgeNode, EdgeNodeSpec, Publisher, RolloutPhase, RolloutStrategy, TransferSettings,
    TrustPolicy, TrustPolicySpec, UpdateRollout, UpdateRolloutSpec, Wave,
};
use pollen_e2e::apiserver::{ApiServer, KUBECONFIG_ENV, retry_throttled};
use pollen_e2e::registry::Registry as TestRegistry;
use pollen_e2e::tools;
use pollen_trust::keys::SigningKey;
use pollen_trust::oci::{self, Descriptor, Manifest, OCI_MANIFEST_MEDIA_TYPE};
use pollen_trust::publish::{self, PublishOptions};
use pollen_trust::registry::{Registry, RegistryOptions, parse_reference};
use pollen_trust::verify::{self, VerifyContext};
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

fn apiserver_available() -> bool {
    std::env::var_os(KUBECONFIG_ENV).is_some() || tools::require_all(["crd-apiserver", "etcd"]).is_some()
}

fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A short random suffix, so that runs against a shared cluster do not collide.
fn suffix() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", (n ^ u128::from(std::process::id())) & 0xff_ffff)
}

async fn start_apiserver() -> (ApiServer, Client) {
    let server = ApiServer::from_env().await.expect("API server starts");
    let names = server
        .apply_crds_yaml(CRDS)
        .await
        .expect("the generated CRDs apply");
    assert_eq!(
        names,
        vec![
            "updaterollouts.pollen.dev",
            "edgenodes.pollen.dev",
            "trustpolicies.pollen.dev",
            "revocationlists.pollen.dev"
        ]
    );
    let client = server.client().await.expect("client");
    (server, client)
}

fn rollout(name: &str, reference: &str, target: &str, selector: &str, waves: Vec<Wave>) -> UpdateRollout {
    let mut ur = UpdateRollout::new(
        name,
        UpdateRolloutSpec {
            artifact: ArtifactSource {
                reference: reference.into(),
                allow_downgrade: false,
            },
            trust_policy: format!("fleet-{}", selector),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([("fleet".into(), selector.into())])),
                ..LabelSelector::default()
            },
            strategy: RolloutStrategy {
                waves,
                ..RolloutStrategy::default()
            },
            transfer: TransferSettings::default(),
            install: InstallSettings {
                target_path: target.into(),
                keep_versions: 2,
                activation_window: None,
            },
        },
    );
    ur.metadata.namespace = Some(NS.into());
    ur
}

fn wave_count(c: i32) -> Wave {
    Wave {
        count: Some(c),
        percent: None,
        pause: None,
    }
}
fn wave_percent(p: i32) -> Wave {
    Wave {
        count: None,
        percent: Some(p),
        pause: None,
    }
}

#[tokio::test]
async fn crds_apply_and_the_server_enforces_their_cel_rules() {
    if !apiserver_available() {
        return;
    }
    install_provider();
    let (_server, client) = start_apiserver().await;
    let urs: Api<UpdateRollout> = Api::namespaced(client.clone(), NS);
    let s = suffix();

    let good = rollout(
        &format!("good-{s}"),
        "registry.example/fw:1.0",
        "fw.bin",
        "x",
        vec![wave_count(1)],
    );
    retry_throttled(|| urs.create(&PP, &good))
        .await
        .expect("a valid rollout is accepted");

    let mut both = rollout(
        &format!("both-{s}"),
        "registry.example/fw:1.0",
        "fw.bin",
        "x",
        vec![],
    );
    both.spec.strategy.waves = vec![Wave {
        count: Some(1),
        percent: Some(10),
        pause: None,
    }];
    match urs.create(&PostParams::default(), &both).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(
                e.message.contains("exactly one of count or percent"),
                "{}",
                e.message
            );
        }
        other => panic!("a wave with both count and percent must be refused, got {other:?}"),
    }

    let escape = rollout(
        &format!("escape-{s}"),
        "registry.example/fw:1.0",
        "../etc/passwd",
        "x",
        vec![],
    );
    match urs.create(&PostParams::default(), &escape).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{e:?}"),
        other => panic!("a target path with '..' must be refused, got {other:?}"),
    }

    let bad_ref = rollout(&format!("badref-{s}"), "Not A Reference", "fw.bin", "x", vec![]);
    match urs.create(&PostParams::default(), &bad_ref).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{e:?}"),
        other => panic!("a malformed reference must be refused, got {other:?}"),
    }
    urs.delete(&good.name_any(), &DeleteParams::default())
        .await
        .expect("cleanup");
}

/// A real registry, keys, a TrustPolicy, labelled EdgeNodes, and the operator running in-process.
struct Fleet {
    _server: ApiServer,
    client: Client,
    registry: TestRegistry,
    oci: Registry,
    dir: tempfile::TempDir,
    publisher: SigningKey,
    director: SigningKey,
    label: String,
    nodes: Vec<String>,
    metrics_addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<Result<(), pollen_operator::app::AppError>>>,
}

impl Fleet {
    async fn start(nodes: usize) -> Option<Fleet> {
        if !apiserver_available() {
            return None;
        }
        tools::require("docker-registry")?;
        install_provider();
        let (server, client) = start_apiserver().await;
        let registry = TestRegistry::start().await.expect("registry starts");
        let dir = tempfile::tempdir().unwrap();
        let docker_config = dir.path().join("docker-config.json");
        std::fs::write(&docker_config, br#"{"auths":{}}"#).unwrap();
        let oci = Registry::new(&RegistryOptions {
            docker_config: Some(docker_config),
            ..RegistryOptions::insecure_for(registry.host())
        })
        .expect("registry client");
        let publisher = SigningKey::generate().unwrap();
        let director = SigningKey::generate().unwrap();
        let label = format!("e2e-{}", suffix());

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

        let ens: Api<EdgeNode> = Api::all(client.clone());
        let names: Vec<String> = (0..nodes).map(|i| format!("{label}-gw-{i}")).collect();
        for batch in names.chunks(32) {
            let mut tasks = tokio::task::JoinSet::new();
            for name in batch {
                let (ens, name, label) = (ens.clone(), name.clone(), label.clone());
                tasks.spawn(async move {
                    let mut en = EdgeNode::new(&name, EdgeNodeSpec::default());
                    en.metadata.labels = Some(BTreeMap::from([("fleet".to_string(), label)]));
                    retry_throttled(|| ens.create(&PP, &en))
                        .await
                        .expect("EdgeNode created");
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.expect("EdgeNode creation task");
            }
        }
        let metrics_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut fleet = Fleet {
            _server: server,
            client,
            registry,
            oci,
            dir,
            publisher,
            director,
            label,
            nodes: names,
            metrics_addr,
            stop: None,
            operator: None,
        };
        fleet.run_operator().await;
        Some(fleet)
    }

    async fn run_operator(&mut self) {
        let key_path = self.dir.path().join("director.key");
        std::fs::write(
            &key_path,
            self.director.to_encrypted_pem(PASSWORD.as_bytes()).unwrap(),
        )
        .unwrap();
        let password_path = self.dir.path().join("director.password");
        std::fs::write(&password_path, format!("{PASSWORD}\n")).unwrap();
        let docker_config = self.dir.path().join("docker-config.json");
        let cli = Cli::parse_from([
            "pollen-operator".to_string(),
            format!("--director-key={}", key_path.display()),
            format!("--director-key-password-file={}", password_path.display()),
            format!("--docker-config={}", docker_config.display()),
            format!("--insecure-registry={}", self.registry.host()),
            format!("--metrics-addr={}", self.metrics_addr),
            // On the CRD-only server Leases are not served: run without, saying so.
            "--leader-election-optional".to_string(),
            format!("--lease-namespace={NS}"),
            format!("--lease-name=pollen-operator-{}", self.label),
        ]);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let client = self.client.clone();
        self.operator = Some(tokio::spawn(pollen_operator::app::run(
            cli.options,
            client,
            async move {
                let _ = rx.await;
            },
        )));
        self.stop = Some(tx);
    }

    async fn stop_operator(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.operator.take() {
            let res = tokio::time::timeout(Duration::from_secs(20), h)
                .await
                .expect("the operator shuts down within 20 s")
                .expect("the operator task does not panic");
            res.expect("the operator stops without error");
        }
    }

    fn repo(&self, name: &str) -> String {
        format!("{}/fleet/{name}", self.registry.host())
    }

    /// Publish `bytes` to `repo:tag`, signed by `key` (or unsigned).
    async fn publish(&self, repo: &str, tag: &str, bytes: Vec<u8>, key: Option<&SigningKey>) -> String {
        let target = parse_reference(&format!("{repo}:{tag}")).unwrap();
        match key {
            Some(key) => {
                publish::publish_bytes(
                    &self.oci,
                    &target,
                    "fw.bin",
                    bytes,
                    key,
                    &PublishOptions::default(),
                )
                .await
                .expect("published");
            }
            None => {
                let size = bytes.len() as u64;
                let mut layer = self.oci.push_blob(&target, bytes).await.expect("blob pushed");
                layer.size = size;
                self.oci
                    .push_blob(&target, oci::EMPTY_CONFIG.to_vec())
                    .await
                    .expect("config pushed");
                let manifest =
                    Manifest::artifact(oci::PAYLOAD_ARTIFACT_TYPE, vec![layer], None::<Descriptor>);
                self.oci
                    .push_manifest(&target, manifest.to_bytes(), OCI_MANIFEST_MEDIA_TYPE)
                    .await
                    .expect("manifest pushed");
            }
        }
        format!("{repo}:{tag}")
    }

    fn rollouts(&self) -> Api<UpdateRollout> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Node name → chunk index of `rollout`'s assignment, for this fleet's nodes.
    async fn assignments(&self, rollout: &str) -> BTreeMap<String, String> {
        let key = format!("{NS}/{rollout}");
        let ens: Api<EdgeNode> = Api::all(self.client.clone());
        let lp = kube::api::ListParams::default().labels(&format!("fleet={}", self.label));
        let listed = ens.list(&lp).await.expect("EdgeNodes listed").items;
        assert_eq!(
            listed.len(),
            self.nodes.len(),
            "every EdgeNode of this fleet is listed"
        );
        listed
            .into_iter()
            .filter_map(|en| {
                let a = en
                    .spec
                    .assignments
                    .iter()
                    .find(|a| a.rollout == key)?
                    .chunk_index
                    .clone();
                Some((en.name_any(), a))
            })
            .collect()
    }

    /// The agent of `node` reports `phase` for `rollout` (server-side apply on /status, as an agent would).
    async fn report(&self, node: &str, rollout: &str, index: &str, phase: &str, size: i64) {
        report(&self.client, node, rollout, index, phase, size).await
    }

    /// Every node in `nodes` reports `phase`, 32 at a time.
    async fn report_all(&self, nodes: &[String], rollout: &str, index: &str, phase: &str, size: i64) {
        for batch in nodes.chunks(32) {
            let mut tasks = tokio::task::JoinSet::new();
            for n in batch {
                let (client, n, rollout, index, phase) = (
                    self.client.clone(),
                    n.clone(),
                    rollout.to_string(),
                    index.to_string(),
                    phase.to_string(),
                );
                tasks.spawn(async move { report(&client, &n, &rollout, &index, &phase, size).await });
            }
            while let Some(r) = tasks.join_next().await {
                r.expect("report task");
            }
        }
    }

    async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.http_get("/metrics").await
    }

    async fn http_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .expect("metrics endpoint");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

/// What an agent writes: its status for one assignment (server-side apply on /status).
async fn report(client: &Client, node: &str, rollout: &str, index: &str, phase: &str, size: i64) {
    let ens: Api<EdgeNode> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "pollen.dev/v1alpha1",
        "kind": "EdgeNode",
        "status": {
            "endpoint": "127.0.0.1:7400",
            "assignments": [{
                "rollout": format!("{NS}/{rollout}"),
                "chunkIndex": index,
                "phase": phase,
                "verifiedBytes": size,
                "totalBytes": size,
                "bytesFromPeers": size * 3 / 4,
                "bytesFromOrigin": size - size * 3 / 4,
            }],
        },
    });
    ens.patch_status(
        node,
        &PatchParams::apply(&format!("pollen-agent-{node}")).force(),
        &Patch::Apply(body),
    )
    .await
    .expect("agent status written");
}

fn condition(ur: &UpdateRollout, t: &str) -> Option<(String, String)> {
    ur.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn a_rollout_goes_canary_first_then_the_fleet_until_complete() {
    let Some(mut fleet) = Fleet::start(4).await else {
        return;
    };
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let size = payload.len() as i64;
    let repo = fleet.repo(&format!("gateway-{}", fleet.label));
    let reference = fleet
        .publish(&repo, "1.0.0", payload, Some(&fleet.publisher))
        .await;
    let name = format!("gw-{}", fleet.label);
    let ur = rollout(
        &name,
        &reference,
        "firmware/gw.bin",
        &fleet.label,
        vec![wave_count(1), wave_percent(100)],
    );
    let applied = Instant::now();
    let urs = fleet.rollouts();
    retry_throttled(|| urs.create(&PP, &ur))
        .await
        .expect("rollout created");

    // Only the canary gets an assignment.
    let canary = fleet
        .wait_for("the canary's assignment", Duration::from_secs(60), async || {
            let a = fleet.assignments(&name).await;
            (!a.is_empty()).then_some(a)
        })
        .await;
    let to_canary = applied.elapsed();
    assert_eq!(canary.len(), 1, "exactly one canary: {canary:?}");
    let (canary_node, index) = canary.into_iter().next().unwrap();
    // The status is written after the assignments, in the same reconcile.
    let ur = fleet
        .wait_for(
            "the status naming the index",
            Duration::from_secs(10),
            async || {
                let ur = fleet.rollouts().get(&name).await.ok()?;
                let st = ur.status.as_ref()?;
                (st.chunk_index.as_deref() == Some(index.as_str()) && st.current_wave == Some(0))
                    .then_some(ur)
            },
        )
        .await;
    assert_eq!(
        condition(&ur, types::VERIFIED),
        Some(("True".into(), reasons::SIGNATURE_VERIFIED.into()))
    );
    assert_eq!(condition(&ur, types::INDEXED).map(|c| c.0), Some("True".into()));
    let st = ur.status.clone().unwrap();
    assert_eq!(st.chunk_index.as_deref(), Some(index.as_str()));
    assert_eq!(st.artifact_size, Some(size));
    assert_eq!(st.observed_generation, ur.metadata.generation);
    assert!(st.artifact_digest.as_deref().unwrap().contains("@sha256:"));

    fleet
        .wait_for("/readyz to answer 200", Duration::from_secs(20), async || {
            fleet
                .http_get("/readyz")
                .await
                .starts_with("HTTP/1.1 200")
                .then_some(())
        })
        .await;
    assert!(fleet.http_get("/healthz").await.starts_with("HTTP/1.1 200"));

    // The index the operator built and signed verifies like an edge node would verify it.
    let trust = verify::TrustPolicy {
        publisher_keys: vec![fleet.publisher.public_key().unwrap()],
        director_key: fleet.director.public_key().unwrap(),
    };
    let verified = verify::verify(&fleet.oci, &index, &trust, &VerifyContext::now())
        .await
        .expect("index verifies");
    assert_eq!(verified.index().rollout, format!("{NS}/{name}"));
    assert_eq!(verified.index().target.path, "firmware/gw.bin");
    assert_eq!(verified.index().payload.size, size as u64);

    // The canary is still downloading: nobody else is assigned.
    fleet
        .report(&canary_node, &name, &index, "Downloading", size)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fleet.assignments(&name).await.len(),
        1,
        "no second wave while the canary downloads"
    );

    // The canary installs: the rest of the fleet is assigned.
    fleet.report(&canary_node, &name, &index, "Installed", size).await;
    let all = fleet
        .wait_for(
            "the second wave's assignments",
            Duration::from_secs(30),
            async || {
                let a = fleet.assignments(&name).await;
                (a.len() == fleet.nodes.len()).then_some(a)
            },
        )
        .await;
    assert!(
        all.values().all(|i| *i == index),
        "every node gets the same signed index"
    );
    for n in fleet.nodes.iter().filter(|n| **n != canary_node) {
        fleet.report(n, &name, &index, "Installed", size).await;
    }
    let done = fleet
        .wait_for("Complete", Duration::from_secs(30), async || {
            let ur = fleet.rollouts().get(&name).await.ok()?;
            (condition(&ur, types::COMPLETE).map(|c| c.0).as_deref() == Some("True")).then_some(ur)
        })
        .await;
    let to_complete = applied.elapsed();
    let st = done.status.unwrap();
    assert_eq!(st.phase, RolloutPhase::Complete);
    assert_eq!(st.progress.as_deref(), Some("4/4"));
    assert_eq!(st.offload.as_deref(), Some("75%"));
    assert_eq!(st.nodes.installed, 4);
    eprintln!(
        "operator on a real API server: canary assigned {:?} after apply, Complete {:?} after apply \
         (agents simulated)",
        to_canary, to_complete
    );

    let metrics = fleet.metrics().await;
    assert!(
        metrics.contains("pollen_operator_rollouts{phase=\"Complete\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "pollen_operator_rollout_nodes{{rollout=\"{NS}/{name}\",phase=\"installed\"}} 4"
        )),
        "{metrics}"
    );

    // Deleting the rollout removes its assignments and leaves the agents' statuses alone.
    fleet
        .rollouts()
        .delete(&name, &DeleteParams::default())
        .await
        .expect("rollout deleted");
    fleet
        .wait_for(
            "the rollout and its assignments to go",
            Duration::from_secs(30),
            async || {
                let gone = fleet.rollouts().get_opt(&name).await.ok()?.is_none();
                (gone && fleet.assignments(&name).await.is_empty()).then_some(())
            },
        )
        .await;
    let ens: Api<EdgeNode> = Api::all(fleet.client.clone());
    let en = ens.get(&canary_node).await.unwrap();
    assert_eq!(
        en.status.unwrap().assignments.len(),
        1,
        "the agent's report stays"
    );
    fleet.stop_operator().await;
}

#[tokio::test]
async fn unsigned_and_wrong_key_artifacts_end_verified_false_with_zero_assignments() {
    let Some(mut fleet) = Fleet::start(3).await else {
        return;
    };
    let stranger = SigningKey::generate().unwrap();
    let unsigned_repo = fleet.repo(&format!("unsigned-{}", fleet.label));
    let unsigned = fleet
        .publish(&unsigned_repo, "1.0.0", vec![7u8; 10_000], None)
        .await;
    let foreign_repo = fleet.repo(&format!("foreign-{}", fleet.label));
    let foreign = fleet
        .publish(&foreign_repo, "1.0.0", vec![9u8; 10_000], Some(&stranger))
        .await;

    let a = format!("unsigned-{}", fleet.label);
    let b = format!("foreign-{}", fleet.label);
    let urs = fleet.rollouts();
    for (name, reference, target) in [(&a, &unsigned, "fw/a.bin"), (&b, &foreign, "fw/b.bin")] {
        let ur = rollout(name, reference, target, &fleet.label, vec![]);
        retry_throttled(|| urs.create(&PP, &ur))
            .await
            .expect("rollout created");
    }
    for (name, reason) in [(&a, reasons::UNSIGNED), (&b, reasons::UNTRUSTED_SIGNATURE)] {
        let ur = fleet
            .wait_for(
                &format!("Verified=False on {name}"),
                Duration::from_secs(60),
                async || {
                    let ur = fleet.rollouts().get(name).await.ok()?;
                    (condition(&ur, types::VERIFIED).map(|c| c.0).as_deref() == Some("False")).then_some(ur)
                },
            )
            .await;
        assert_eq!(
            condition(&ur, types::VERIFIED),
            Some(("False".into(), reason.into())),
            "{name}"
        );
        let st = ur.status.unwrap();
        assert_eq!(st.phase, RolloutPhase::Failed);
        assert_eq!(st.chunk_index, None);
    }
    // Give the operator time to do anything it would do; it must not assign.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in [&a, &b] {
        assert!(
            fleet.assignments(name).await.is_empty(),
            "{name} must have zero assignments"
        );
    }
    let ens: Api<EdgeNode> = Api::all(fleet.client.clone());
    for n in &fleet.nodes {
        assert!(
            ens.get(n).await.unwrap().spec.assignments.is_empty(),
            "{n} has no assignment at all"
        );
    }
    fleet.stop_operator().await;
}

/// Points `repo:tag` at the manifest `repo:from` points at (what `oras tag` does); returns its digest.
async fn retag(oci: &Registry, repo: &str, from: &str, tag: &str) -> String {
    let (bytes, digest) = oci
        .pull_manifest(&parse_reference(&format!("{repo}:{from}")).unwrap())
        .await
        .expect("manifest pulled");
    oci.push_manifest(
        &parse_reference(&format!("{repo}:{tag}")).unwrap(),
        bytes,
        OCI_MANIFEST_MEDIA_TYPE,
    )
    .await
    .expect("tag pushed");
    digest
}

/// Copies the manifest at `src`, with its config and layer blobs, to `dst` (what `oras cp` does).
async fn copy_manifest(oci: &Registry, src: &str, dst: &str) {
    let (src, dst) = (parse_reference(src).unwrap(), parse_reference(dst).unwrap());
    let (bytes, _) = oci.pull_manifest(&src).await.expect("manifest pulled");
    let m = Manifest::parse(&bytes, "copied manifest").unwrap();
    for d in std::iter::once(&m.config).chain(&m.layers) {
        let blob = oci
            .pull_blob(&pollen_trust::registry::at_digest(&src, &d.digest), d, 1 << 20)
            .await
            .expect("blob pulled");
        oci.push_blob(&dst, blob).await.expect("blob pushed");
    }
    oci.push_manifest(&dst, bytes, OCI_MANIFEST_MEDIA_TYPE)
        .await
        .expect("manifest pushed");
}

impl Fleet {
    /// Waits until `name`'s `Verified` condition has `status`; returns the rollout.
    async fn verified(&self, name: &str, status: &str) -> UpdateRollout {
        self.wait_for(
            &format!("Verified={status} on {name}"),
            Duration::from_secs(60),
            async || {
                let ur = self.rollouts().get(name).await.ok()?;
                (condition(&ur, types::VERIFIED).map(|c| c.0).as_deref() == Some(status)).then_some(ur)
            },
        )
        .await
    }

    /// The version ledger of this fleet's TrustPolicy.
    async fn ledger(&self) -> Vec<pollen_crds::DeliveredVersion> {
        let tps: Api<TrustPolicy> = Api::all(self.client.clone());
        let tp = tps
            .get(&format!("fleet-{}", self.label))
            .await
            .expect("TrustPolicy");
        tp.status.unwrap_or_default().delivered
    }
}

fn verified_message(ur: &UpdateRollout) -> String {
    ur.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == types::VERIFIED))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_tag_moved_to_an_older_signed_build_is_refused_until_the_rollout_allows_the_downgrade() {
    let Some(mut fleet) = Fleet::start(3).await else {
        return;
    };
    let repo = fleet.repo(&format!("moved-{}", fleet.label));
    let target = "fw/moved.bin";
    // Both builds are properly signed; each claims the version of its tag.
    fleet
        .publish(&repo, "2.0.0", vec![2u8; 20_000], Some(&fleet.publisher))
        .await;
    fleet
        .publish(&repo, "1.0.0", vec![1u8; 10_000], Some(&fleet.publisher))
        .await;
    let v2 = retag(&fleet.oci, &repo, "2.0.0", "stable").await;

    // 2.0.0 is delivered through the tag `stable`, and installed everywhere.
    let first = format!("moved-a-{}", fleet.label);
    let ur = rollout(&first, &format!("{repo}:stable"), target, &fleet.label, vec![]);
    let urs = fleet.rollouts();
    retry_throttled(|| urs.create(&PP, &ur))
        .await
        .expect("rollout created");
    let assigned = fleet
        .wait_for("2.0.0 assigned", Duration::from_secs(60), async || {
            let a = fleet.assignments(&first).await;
            (a.len() == fleet.nodes.len()).then_some(a)
        })
        .await;
    let index = assigned.values().next().unwrap().clone();
    // The assignments are written before the status of the same reconcile.
    let st = fleet
        .wait_for(
            "the status of the 2.0.0 rollout",
            Duration::from_secs(30),
            async || {
                fleet
                    .rollouts()
                    .get(&first)
                    .await
                    .ok()?
                    .status
                    .filter(|s| s.chunk_index.as_deref() == Some(index.as_str()))
            },
        )
        .await;
    assert_eq!(st.version.as_deref(), Some("2.0.0"));
    let ledger = fleet.ledger().await;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(
        (ledger[0].repository.as_str(), ledger[0].target_path.as_str()),
        (repo.as_str(), target)
    );
    assert_eq!(
        (ledger[0].version.as_str(), ledger[0].digest.as_str()),
        ("2.0.0", v2.as_str())
    );
    fleet
        .report_all(&fleet.nodes, &first, &index, "Installed", 20_000)
        .await;
    fleet
        .wait_for(
            "the first rollout Complete",
            Duration::from_secs(60),
            async || {
                let ur = fleet.rollouts().get(&first).await.ok()?;
                (ur.status?.phase == RolloutPhase::Complete).then_some(())
            },
        )
        .await;

    // Whoever can move the tag points it at the older, signed 1.0.0 build; a rollout of `stable`
    // would index it under a fresh, higher sequence. It is refused.
    let v1 = retag(&fleet.oci, &repo, "1.0.0", "stable").await;
    let second = format!("moved-b-{}", fleet.label);
    let ur = rollout(&second, &format!("{repo}:stable"), target, &fleet.label, vec![]);
    retry_throttled(|| urs.create(&PP, &ur))
        .await
        .expect("rollout created");
    let ur = fleet.verified(&second, "False").await;
    assert_eq!(
        condition(&ur, types::VERIFIED),
        Some(("False".into(), reasons::DOWNGRADE.into()))
    );
    let msg = verified_message(&ur);
    assert!(
        msg.contains("1.0.0") && msg.contains("2.0.0") && msg.contains(&v1),
        "{msg}"
    );
    let st = ur.status.unwrap();
    assert_eq!((st.phase, st.chunk_index), (RolloutPhase::Failed, None));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        fleet.assignments(&second).await.is_empty(),
        "the moved tag must get zero assignments"
    );

    // The rollout says so explicitly: delivered, and recorded as a downgrade.
    let patch = json!({ "spec": { "artifact": { "allowDowngrade": true } } });
    urs.patch(&second, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("allowDowngrade set");
    let ur = fleet.verified(&second, "True").await;
    let st = ur.status.clone().unwrap();
    assert_eq!(st.version.as_deref(), Some("1.0.0"));
    assert_eq!(st.downgraded_from.as_deref(), Some("2.0.0"));
    assert!(
        verified_message(&ur).contains("downgrade from 2.0.0"),
        "{}",
        verified_message(&ur)
    );
    fleet
        .wait_for("1.0.0 assigned", Duration::from_secs(60), async || {
            (fleet.assignments(&second).await.len() == fleet.nodes.len()).then_some(())
        })
        .await;
    let ledger = fleet.ledger().await;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(
        ledger[0].version, "2.0.0",
        "the mark stays at the highest version"
    );
    fleet.stop_operator().await;
}

#[tokio::test]
async fn a_signed_manifest_copied_into_another_repository_is_verified_false_with_zero_assignments() {
    let Some(mut fleet) = Fleet::start(3).await else {
        return;
    };
    // Product A, properly signed by the trusted publisher.
    let repo_a = fleet.repo(&format!("product-a-{}", fleet.label));
    let repo_b = fleet.repo(&format!("product-b-{}", fleet.label));
    fleet
        .publish(&repo_a, "9.0.0", vec![0xa5; 10_000], Some(&fleet.publisher))
        .await;
    // Whoever can push to B copies A's manifest, blobs and cosign signature there and tags it.
    let digest = retag(&fleet.oci, &repo_a, "9.0.0", "9.0.0").await;
    copy_manifest(&fleet.oci, &format!("{repo_a}:9.0.0"), &format!("{repo_b}:9.0.0")).await;
    let sig = oci::signature_tag(&digest);
    copy_manifest(&fleet.oci, &format!("{repo_a}:{sig}"), &format!("{repo_b}:{sig}")).await;

    let name = format!("cross-{}", fleet.label);
    let ur = rollout(
        &name,
        &format!("{repo_b}:9.0.0"),
        "fw/b.bin",
        &fleet.label,
        vec![],
    );
    let urs = fleet.rollouts();
    retry_throttled(|| urs.create(&PP, &ur))
        .await
        .expect("rollout created");
    let ur = fleet.verified(&name, "False").await;
    assert_eq!(
        condition(&ur, types::VERIFIED),
        Some(("False".into(), reasons::REPOSITORY_MISMATCH.into()))
    );
    let msg = verified_message(&ur);
    assert!(
        msg.contains(&repo_a) && msg.contains(&repo_b),
        "names both repositories: {msg}"
    );
    let st = ur.status.unwrap();
    assert_eq!((st.phase, st.chunk_index), (RolloutPhase::Failed, None));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(fleet.assignments(&name).await.is_empty(), "zero assignments");
    assert!(fleet.ledger().await.is_empty(), "nothing recorded");
    fleet.stop_operator().await;
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A fleet of `POLLEN_E2E_SCALE_NODES` EdgeNodes (default 300): how long the operator takes to hand out
/// assignments and to reach `Complete` once every node reports, on a real API server. Prints the
/// figures; asserts only correctness (every node assigned, the first wave alone first, Complete).
#[tokio::test]
async fn a_large_fleet_is_assigned_wave_by_wave() {
    let n: usize = std::env::var("POLLEN_E2E_SCALE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let created = Instant::now();
    let Some(mut fleet) = Fleet::start(n).await else {
        return;
    };
    let setup = created.elapsed();
    let payload: Vec<u8> = vec![42u8; 64 * 1024];
    let size = payload.len() as i64;
    let repo = fleet.repo(&format!("scale-{}", fleet.label));
    let reference = fleet
        .publish(&repo, "1.0.0", payload, Some(&fleet.publisher))
        .await;
    let name = format!("scale-{}", fleet.label);
    let ur = rollout(
        &name,
        &reference,
        "firmware/scale.bin",
        &fleet.label,
        vec![wave_percent(10), wave_percent(100)],
    );
    let urs = fleet.rollouts();
    let applied = Instant::now();
    retry_throttled(|| urs.create(&PP, &ur))
        .await
        .expect("rollout created");
    let first = n.div_ceil(10);
    let wave0 = fleet
        .wait_for(
            "the first wave's assignments",
            Duration::from_secs(120),
            async || {
                let a = fleet.assignments(&name).await;
                (a.len() >= first).then_some(a)
            },
        )
        .await;
    let t_wave0 = applied.elapsed();
    assert_eq!(wave0.len(), first, "the first wave alone");
    let index = wave0.values().next().unwrap().clone();
    let wave0_nodes: Vec<String> = wave0.keys().cloned().collect();
    let reported = Instant::now();
    fleet
        .report_all(&wave0_nodes, &name, &index, "Installed", size)
        .await;
    let t_reports0 = reported.elapsed();
    let mark = Instant::now();
    fleet
        .wait_for("every node's assignment", Duration::from_secs(300), async || {
            (fleet.assignments(&name).await.len() == n).then_some(())
        })
        .await;
    let t_rest = mark.elapsed();
    let rest: Vec<String> = fleet
        .nodes
        .iter()
        .filter(|x| !wave0.contains_key(*x))
        .cloned()
        .collect();
    fleet.report_all(&rest, &name, &index, "Installed", size).await;
    let mark = Instant::now();
    fleet
        .wait_for("Complete", Duration::from_secs(120), async || {
            let ur = fleet.rollouts().get(&name).await.ok()?;
            (condition(&ur, types::COMPLETE).map(|c| c.0).as_deref() == Some("True")).then_some(())
        })
        .await;
    let t_complete = mark.elapsed();
    let st = fleet.rollouts().get(&name).await.unwrap().status.unwrap();
    assert_eq!(st.progress, Some(format!("{n}/{n}")));
    let m = fleet.metrics().await;
    let count = metric(&m, "pollen_operator_reconcile_duration_seconds_count").unwrap_or(0.0);
    let sum = metric(&m, "pollen_operator_reconcile_duration_seconds_sum").unwrap_or(0.0);
    eprintln!(
        "scale: {n} EdgeNodes (setup {setup:?}); first wave ({first}) assigned {t_wave0:?} after apply; \
         {first} status reports took {t_reports0:?}; the other {} assigned {t_rest:?} after those reports; \
         Complete {t_complete:?} after the last reports; {count} reconciles, mean {:.1} ms",
        n - first,
        if count > 0.0 { sum / count * 1000.0 } else { 0.0 }
    );
    fleet.stop_operator().await;
}

/// With leader election on and no Leases served (the CRD-only server), the operator stops with a
/// clear error instead of running unguarded; only `--leader-election-optional` lets it run.
#[tokio::test]
async fn without_leases_leader_election_fails_clearly_unless_optional() {
    if !apiserver_available() {
        return;
    }
    install_provider();
    let (server, client) = start_apiserver().await;
    if !server.is_local() {
        eprintln!("skip: a real cluster serves Leases; this checks the CRD-only server");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("director.key");
    let director = SigningKey::generate().unwrap();
    std::fs::write(&key_path, director.to_encrypted_pem(PASSWORD.as_bytes()).unwrap()).unwrap();
    let cli = Cli::parse_from([
        "pollen-operator".to_string(),
        format!("--director-key={}", key_path.display()),
        format!("--director-key-password={PASSWORD}"),
        "--metrics-addr=127.0.0.1:0".to_string(),
    ]);
    assert!(cli.options.leader_election, "leader election is on by default");
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        pollen_operator::app::run(cli.options, client, std::future::pending()),
    )
    .await
    .expect("fails fast");
    match res {
        Err(e @ pollen_operator::app::AppError::LeasesNotServed) => {
            let msg = e.to_string();
            assert!(msg.contains("--leader-election-optional"), "{msg}");
        }
        other => panic!("expected LeasesNotServed, got {other:?}"),
    }
}

/// On the real server: an older rollout on the same install path wins (creation time, then name);
/// a paused rollout stops at the wave boundary and goes on when resumed (a merge patch, as
/// `kubectl pollen resume` sends).
#[tokio::test]
async fn conflicts_and_pauses_on_a_real_api_server() {
    let Some(mut fleet) = Fleet::start(3).await else {
        return;
    };
    let size = 20_000i64;
    let repo = fleet.repo(&format!("pause-{}", fleet.label));
    let reference = fleet
        .publish(&repo, "1.0.0", vec![5u8; size as usize], Some(&fleet.publisher))
        .await;
    let urs = fleet.rollouts();

    let older = format!("a-{}", fleet.label);
    let newer = format!("b-{}", fleet.label);
    let mut first = rollout(
        &older,
        &reference,
        "firmware/pause.bin",
        &fleet.label,
        vec![wave_count(1), wave_percent(100)],
    );
    first.spec.strategy.paused = true;
    retry_throttled(|| urs.create(&PP, &first))
        .await
        .expect("older rollout created");
    let second = rollout(&newer, &reference, "firmware/pause.bin", &fleet.label, vec![]);
    retry_throttled(|| urs.create(&PP, &second))
        .await
        .expect("newer rollout created");

    let blocked = fleet
        .wait_for(
            "Conflict=True on the newer rollout",
            Duration::from_secs(60),
            async || {
                let ur = fleet.rollouts().get(&newer).await.ok()?;
                (condition(&ur, types::CONFLICT).map(|c| c.0).as_deref() == Some("True")).then_some(ur)
            },
        )
        .await;
    assert_eq!(
        condition(&blocked, types::CONFLICT).unwrap().1,
        reasons::OLDER_ROLLOUT_WINS
    );
    assert!(
        fleet.assignments(&newer).await.is_empty(),
        "the newer rollout assigns nothing"
    );

    // The older one is paused: its canary runs, then it stops at the boundary.
    let canary = fleet
        .wait_for(
            "the canary of the older rollout",
            Duration::from_secs(60),
            async || {
                let a = fleet.assignments(&older).await;
                (a.len() == 1).then_some(a)
            },
        )
        .await;
    let (node, index) = canary.into_iter().next().unwrap();
    fleet.report(&node, &older, &index, "Installed", size).await;
    fleet
        .wait_for(
            "Paused at the wave boundary",
            Duration::from_secs(30),
            async || {
                let ur = fleet.rollouts().get(&older).await.ok()?;
                (ur.status?.phase == RolloutPhase::Paused).then_some(())
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fleet.assignments(&older).await.len(),
        1,
        "no new wave while paused"
    );

    let resume = Patch::Merge(json!({ "spec": { "strategy": { "paused": false } } }));
    urs.patch(&older, &PatchParams::default(), &resume)
        .await
        .expect("resumed");
    let all = fleet
        .wait_for(
            "the second wave after resume",
            Duration::from_secs(30),
            async || {
                let a = fleet.assignments(&older).await;
                (a.len() == fleet.nodes.len()).then_some(a)
            },
        )
        .await;
    let rest: Vec<String> = all.keys().filter(|n| **n != node).cloned().collect();
    fleet.report_all(&rest, &older, &index, "Installed", size).await;
    fleet
        .wait_for(
            "the older rollout Complete",
            Duration::from_secs(30),
            async || {
                let ur = fleet.rollouts().get(&older).await.ok()?;
                (condition(&ur, types::COMPLETE).map(|c| c.0).as_deref() == Some("True")).then_some(())
            },
        )
        .await;
    // Once the older one finished, the newer one goes ahead (single wave: every node). The
    // operator writes the assignments before the status that drops the conflict condition, so
    // both are awaited together.
    fleet
        .wait_for(
            "the newer rollout's assignments, and its conflict condition gone",
            Duration::from_secs(60),
            async || {
                if fleet.assignments(&newer).await.len() != fleet.nodes.len() {
                    return None;
                }
                let ur = fleet.rollouts().get(&newer).await.ok()?;
                condition(&ur, types::CONFLICT).is_none().then_some(())
            },
        )
        .await;
    fleet.stop_operator().await;
}
