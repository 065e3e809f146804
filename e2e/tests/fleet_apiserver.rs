//! From `kubectl apply` to an installed fleet, with every part real: a Kubernetes API server
//! (etcd + crd-apiserver, or the cluster of `POLLEN_E2E_KUBECONFIG`), Debian's docker-registry, the
//! `pollen-operator` binary and three `pollen-edge-node agent` processes talking QUIC with mutual TLS
//! on 127.0.0.1.
//!
//! The rollout has a canary wave of one node, then the rest. The test checks that only the canary is
//! assigned until it reports `Installed`, that the rollout reaches `Complete`, and that every node's
//! installed file is byte-identical to the published payload.
//!
//! Builds the two binaries first (they live in other crates). Needs `docker-registry`,
//! `crd-apiserver` and `etcd` (`e2e/tools/install-deps.sh`); fails under `CI` without them.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, PostParams};
use pollen_crds::conditions::types;
use pollen_crds::rollout::{ArtifactSource, InstallSettings};
use pollen_crds::{
    DirectorKey, EdgeNode, Publisher, RolloutStrategy, TransferSettings, TrustPolicy, TrustPolicySpec,
    UpdateRollout, UpdateRolloutSpec, Wave,
};
use pollen_e2e::apiserver::{ApiServer, retry_throttled};
use pollen_e2e::registry::Registry as TestRegistry;
use pollen_e2e::tools;
use pollen_edge_node::tls::testing::TestCa;
use pollen_trust::keys::SigningKey;
use pollen_trust::publish::{self, PublishOptions};
use pollen_trust::registry::{Registry, RegistryOptions, parse_reference};

const CRDS: &str = include_str!("../../crds/pollen.dev.yaml");
const PASSWORD: &str = "fleet-test-director";
const NODES: usize = 3;

/// Builds the operator and the edge node into this workspace's target directory; returns `target/<profile>`.
fn build_binaries() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--locked",
            "-p",
            "pollen-operator",
            "-p",
            "pollen-edge-node",
            "--bins",
        ])
        .current_dir(tools::workspace_root())
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "building pollen-operator and pollen-edge-node failed"
    );
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}
fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Child processes killed when the test ends, whatever way it ends; their logs are printed on failure.
struct Procs(Vec<(String, Child, PathBuf)>);
impl Drop for Procs {
    fn drop(&mut self) {
        for (name, child, log) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.starts_with("  "))
                    .rev()
                    .take(25)
                    .collect();
                eprintln!("---- {name} (last lines) ----");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn spawn(procs: &mut Procs, name: &str, dir: &Path, mut cmd: Command) {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    cmd.stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .env("RUST_LOG", "info");
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    procs.0.push((name.to_string(), child, log));
}

fn payload(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x243f_6a88_85a3_08d3;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_canary_first_then_fleet_to_complete_with_bytes_on_disk() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if tools::require_all(["docker-registry"]).is_none() {
        return;
    }
    let api = match ApiServer::from_env().await {
        Ok(a) => a,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: no API server ({e}); run e2e/tools/install-deps.sh");
            return;
        }
        Err(e) => panic!("API server unavailable under CI: {e}"),
    };
    let bin = build_binaries();
    api.apply_crds_yaml(CRDS).await.expect("CRDs apply");
    let client = api.client().await.expect("client");
    let reg = TestRegistry::start().await.expect("registry");
    let dir = tempfile::tempdir().unwrap();

    // Publisher and director keys; the publisher signs the payload, the director key is the operator's file.
    let publisher = SigningKey::generate().unwrap();
    let director = SigningKey::generate().unwrap();
    let director_file = dir.path().join("director.key");
    std::fs::write(
        &director_file,
        director.to_encrypted_pem(PASSWORD.as_bytes()).unwrap(),
    )
    .unwrap();
    let bytes = payload(3 * 1024 * 1024 + 12345);
    let trust_reg = Registry::new(&RegistryOptions {
        insecure: true,
        docker_config: None,
    })
    .unwrap();
    let target = parse_reference(&format!("{}/fleet/gateway-fw:1.0.0", reg.host())).unwrap();
    publish::publish_bytes(
        &trust_reg,
        &target,
        "gateway.bin",
        bytes.clone(),
        &publisher,
        &PublishOptions::default(),
    )
    .await
    .expect("publish");

    let policies: Api<TrustPolicy> = Api::all(client.clone());
    let tp = TrustPolicy::new(
        "fleet",
        TrustPolicySpec {
            publishers: vec![Publisher {
                name: "release".into(),
                public_key: publisher.public_key().unwrap().pem().to_string(),
            }],
            director: DirectorKey {
                public_key: director.public_key().unwrap().pem().to_string(),
            },
        },
    );
    let pp = PostParams::default();
    retry_throttled(|| policies.create(&pp, &tp))
        .await
        .expect("TrustPolicy");

    // The fleet: a CA, three agents with their certificates, and the operator.
    let ca = TestCa::new("pollen-fleet-test");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let mut procs = Procs(Vec::new());
    let mut install_roots = Vec::new();
    for i in 0..NODES {
        let name = format!("gw-{i}");
        let ndir = dir.path().join(&name);
        std::fs::create_dir_all(&ndir).unwrap();
        let (cert, key) = ca.issue(&name).write(&ndir);
        let install_root = ndir.join("install");
        let mut cmd = Command::new(bin.join("pollen-edge-node"));
        cmd.arg("agent")
            .args(["--node-name", &name, "--site", "lab"])
            .arg("--listen")
            .arg(free_udp().to_string())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--ca")
            .arg(&ca_file)
            .arg("--data-dir")
            .arg(ndir.join("data"))
            .arg("--install-root")
            .arg(&install_root)
            .arg("--metrics")
            .arg(free_tcp().to_string())
            .args([
                "--insecure-registry",
                "--label",
                "role=gateway",
                "--status-interval",
                "1",
            ])
            .env("KUBECONFIG", api.kubeconfig_path());
        spawn(&mut procs, &name, dir.path(), cmd);
        install_roots.push(install_root);
    }
    let mut op = Command::new(bin.join("pollen-operator"));
    op.arg("--director-key")
        .arg(&director_file)
        .env("POLLEN_DIRECTOR_KEY_PASSWORD", PASSWORD)
        .arg(format!("--insecure-registry={}", reg.host()))
        .arg("--leader-election=false")
        .arg("--metrics-addr")
        .arg(free_tcp().to_string())
        .env("KUBECONFIG", api.kubeconfig_path());
    spawn(&mut procs, "operator", dir.path(), op);

    let nodes: Api<EdgeNode> = Api::all(client.clone());
    wait_for(
        "three registered EdgeNodes",
        Duration::from_secs(60),
        async || {
            let l = nodes.list(&Default::default()).await.ok()?;
            (l.items
                .iter()
                .filter(|n| n.status.as_ref().and_then(|s| s.endpoint.as_ref()).is_some())
                .count()
                == NODES)
                .then_some(())
        },
    )
    .await;

    // The rollout: canary of one, then everyone.
    let rollouts: Api<UpdateRollout> = Api::namespaced(client.clone(), "default");
    let ur = UpdateRollout::new(
        "gateway-fw",
        UpdateRolloutSpec {
            artifact: ArtifactSource {
                reference: format!("{}/fleet/gateway-fw:1.0.0", reg.host()),
                pull_secret: None,
            },
            trust_policy: "fleet".into(),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([("role".to_string(), "gateway".to_string())])),
                ..Default::default()
            },
            strategy: RolloutStrategy {
                waves: vec![
                    Wave {
                        count: Some(1),
                        percent: None,
                        pause: None,
                    },
                    Wave {
                        count: None,
                        percent: Some(100),
                        pause: None,
                    },
                ],
                ..Default::default()
            },
            transfer: TransferSettings::default(),
            install: InstallSettings {
                target_path: "fw/gateway.bin".into(),
                keep_versions: 2,
                activation_window: None,
            },
        },
    );
    retry_throttled(|| rollouts.create(&pp, &ur))
        .await
        .expect("UpdateRollout");

    // Canary first: while no node has installed, at most one node carries an assignment.
    let start = Instant::now();
    let mut saw_canary_alone = false;
    let complete = loop {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "rollout did not complete within 240 s"
        );
        let list = nodes.list(&Default::default()).await.unwrap();
        let assigned = list
            .items
            .iter()
            .filter(|n| !n.spec.assignments.is_empty())
            .count();
        let installed = list
            .items
            .iter()
            .filter(|n| {
                n.status.as_ref().is_some_and(|s| {
                    s.assignments
                        .iter()
                        .any(|a| a.phase == pollen_crds::AssignmentPhase::Installed)
                })
            })
            .count();
        if installed == 0 {
            assert!(
                assigned <= 1,
                "{assigned} nodes assigned before the canary installed"
            );
            saw_canary_alone |= assigned == 1;
        }
        let r = rollouts.get("gateway-fw").await.unwrap();
        let status = r.status.clone().unwrap_or_default();
        if let Some(c) = status
            .conditions
            .iter()
            .find(|c| c.type_ == types::VERIFIED && c.status == "False")
        {
            panic!("rollout not verified: {} {}", c.reason, c.message);
        }
        if status
            .conditions
            .iter()
            .any(|c| c.type_ == types::COMPLETE && c.status == "True")
        {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(saw_canary_alone, "never saw the canary assigned on its own");
    assert_eq!(complete.nodes.installed, NODES as i32, "{complete:?}");
    eprintln!(
        "complete in {:.1} s: bytes from peers {}, from origin {}",
        start.elapsed().as_secs_f64(),
        complete.bytes_from_peers,
        complete.bytes_from_origin
    );

    // Bytes on disk: every node's current version is the payload.
    for root in &install_roots {
        let file = root.join("fw/gateway.bin/current/gateway.bin");
        let got = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            got == bytes,
            "{} differs from the published payload",
            file.display()
        );
    }
    drop(procs);
}
