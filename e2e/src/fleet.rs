//! A whole Pollen fleet on one machine, every part real: a Kubernetes API server (etcd +
//! crd-apiserver, or the cluster of `POLLEN_E2E_KUBECONFIG`), Debian's docker-registry, the
//! `pollen-operator` binary and N `pollen-edge-node agent` processes on 127.0.0.1, with a
//! throwaway fleet CA, publisher key and director key.
//!
//! The registry is plain HTTP on 127.0.0.1 by default, or, with [`FleetOptions::secure`], TLS with
//! htpasswd or token auth ([`crate::secure_registry`]): then the operator holds the push credential and
//! the CA through `--registry-ca`, and each agent a pull-only credential and the CA through
//! `SSL_CERT_FILE`.
//!
//! Used by the fleet tests (`tests/fleet_apiserver.rs`, `tests/registry_access.rs`,
//! `tests/fleet_store_budget.rs`, …) and by the demo (`pollen-demo`).
//! Non-goals: network shaping (the lab in [`crate::lab`] does that), multi-host fleets.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, Patch, PatchParams, PostParams};
use pollen_crds::rollout::{ArtifactSource, InstallSettings};
use pollen_crds::{
    DirectorKey, EdgeNode, Publisher, RolloutStrategy, TransferSettings, TrustPolicy, TrustPolicySpec,
    UpdateRollout, UpdateRolloutSpec, UpdateRolloutStatus, Wave,
};
use pollen_trust::keys::SigningKey;
use pollen_trust::pki::{self, FleetCa};
use pollen_trust::publish::{self, PublishOptions};
use pollen_trust::registry::{Registry as TrustRegistry, RegistryOptions, parse_reference};

use crate::apiserver::{ApiServer, ApiServerOptions, retry_throttled};
use crate::registry::Registry;
use crate::secure_registry::{PULLER, PUSHER, SecureOptions, SecureParts, SecureRegistry};

/// The CRDs, as generated into the repository.
pub const CRDS: &str = include_str!("../../crds/pollen.dev.yaml");
const PASSWORD: &str = "pollen-local-fleet-director";
/// The label every fleet node carries, and the selector rollouts use.
pub const ROLE: (&str, &str) = ("role", "gateway");

/// Builds the operator, the edge node and the kubectl plugin into this workspace's target directory
/// (`release` picks the profile); returns the folder holding the binaries.
pub fn build_binaries(release: bool) -> anyhow::Result<PathBuf> {
    let root = crate::tools::workspace_root();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "build",
        "--locked",
        "-p",
        "pollen-operator",
        "-p",
        "pollen-edge-node",
        "-p",
        "kubectl-pollen",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.current_dir(&root).status().context("run cargo build")?;
    if !status.success() {
        bail!("building pollen-operator, pollen-edge-node and kubectl-pollen failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join(if release { "release" } else { "debug" }))
}

fn free_udp() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}
fn free_tcp() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A child process with its log file; killed on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running local fleet. Dropping it stops every process and the servers.
pub struct LocalFleet {
    /// The API server.
    pub api: ApiServer,
    /// A client of it.
    pub client: kube::Client,
    /// The registry (the origin).
    pub registry: Registry,
    /// With a secure registry: its CA, stand-ins and credential files.
    pub secure: Option<SecureParts>,
    /// Each node's install root, by node name.
    pub install_roots: BTreeMap<String, PathBuf>,
    /// The folder holding keys, certificates, node data and logs.
    pub dir: PathBuf,
    publisher: SigningKey,
    ca: FleetCa,
    ca_file: PathBuf,
    bin_dir: PathBuf,
    log: String,
    procs: Vec<Proc>,
    _tmp: Option<tempfile::TempDir>,
}

/// How to build a [`LocalFleet`].
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Number of edge nodes.
    pub nodes: usize,
    /// Where the binaries are (see [`build_binaries`]).
    pub bin_dir: PathBuf,
    /// Keep files here instead of a temporary folder removed on drop.
    pub dir: Option<PathBuf>,
    /// `RUST_LOG` of the processes.
    pub log: String,
    /// Run the registry with TLS and auth instead of plain HTTP.
    pub secure: Option<SecureOptions>,
    /// Start a local API server with these options (admission policies, token users) instead of
    /// [`ApiServer::from_env`].
    pub api: Option<ApiServerOptions>,
}

impl LocalFleet {
    /// Starts the API server (applying Pollen's CRDs), the registry, a TrustPolicy named `fleet`,
    /// `nodes` agents and the operator; waits until every node has registered its endpoint.
    /// `step` is told what happens, for people watching.
    pub async fn start(opts: FleetOptions, step: impl Fn(&str)) -> anyhow::Result<Self> {
        let (tmp, dir) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        step("starting the Kubernetes API server (etcd + crd-apiserver)");
        let api = match &opts.api {
            Some(o) => ApiServer::start_with(o.clone()).await,
            None => ApiServer::from_env().await,
        }
        .context("API server")?;
        api.apply_crds_yaml(CRDS).await.context("apply Pollen's CRDs")?;
        let client = api.client().await.context("API client")?;
        step("starting the OCI registry (docker-registry on 127.0.0.1)");
        let (registry, secure) = match &opts.secure {
            None => (Registry::start().await.context("registry")?, None),
            Some(s) => {
                let (r, parts) = SecureRegistry::start(s.clone()).await?.into_parts();
                (r, Some(parts))
            }
        };

        step("making the publisher key, the director key and the fleet CA");
        let publisher = SigningKey::generate()?;
        let director = SigningKey::generate()?;
        let director_file = dir.join("director.key");
        std::fs::write(&director_file, director.to_encrypted_pem(PASSWORD.as_bytes())?)?;
        let policies: Api<TrustPolicy> = Api::all(client.clone());
        let tp = TrustPolicy::new(
            "fleet",
            TrustPolicySpec {
                publishers: vec![Publisher {
                    name: "release".into(),
                    public_key: publisher.public_key()?.pem().to_string(),
                }],
                director: DirectorKey {
                    public_key: director.public_key()?.pem().to_string(),
                },
                allow_unversioned: false,
            },
        );
        let pp = PostParams::default();
        retry_throttled(|| policies.create(&pp, &tp))
            .await
            .context("create TrustPolicy")?;
        let ca = FleetCa::generate("pollen local fleet CA", Duration::from_secs(30 * 86400))?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem())?;
        let ca_key_file = dir.join("ca.key");
        std::fs::write(&ca_key_file, ca.key_pem())?;

        let mut fleet = LocalFleet {
            api,
            client,
            registry,
            secure,
            install_roots: BTreeMap::new(),
            dir: dir.clone(),
            publisher,
            ca,
            ca_file,
            bin_dir: opts.bin_dir.clone(),
            log: opts.log.clone(),
            procs: Vec::new(),
            _tmp: tmp,
        };
        step(&format!(
            "starting {} edge-node agents (QUIC with mutual TLS on 127.0.0.1)",
            opts.nodes
        ));
        for i in 0..opts.nodes {
            fleet.add_node(&format!("gw-{i}")).await?;
        }
        step("starting the operator");
        let mut op = Command::new(fleet.bin_dir.join("pollen-operator"));
        op.arg("--director-key")
            .arg(&director_file)
            .env("POLLEN_DIRECTOR_KEY_PASSWORD", PASSWORD)
            .args(fleet.operator_registry_args()?)
            .arg("--leader-election=false")
            .arg("--fleet-ca-cert")
            .arg(&fleet.ca_file)
            .arg("--fleet-ca-key")
            .arg(&ca_key_file)
            .arg("--metrics-addr")
            .arg(free_tcp()?.to_string());
        let log = fleet.log.clone();
        fleet.spawn("operator", op, &log)?;

        let nodes: Api<EdgeNode> = Api::all(fleet.client.clone());
        let start = Instant::now();
        loop {
            let registered = nodes
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|n| n.status.as_ref().and_then(|s| s.endpoint.as_ref()).is_some())
                        .count()
                })
                .unwrap_or(0);
            if registered == opts.nodes {
                break;
            }
            fleet.check_alive()?;
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "only {registered} of {} EdgeNodes registered within 60 s\n{}",
                    opts.nodes,
                    fleet.logs_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        step(&format!("{} EdgeNodes registered", opts.nodes));
        Ok(fleet)
    }

    /// For tests: `nodes` agents with debug binaries in a temporary folder, progress on stderr. `None`
    /// (after the skip, or the panic under `CI`, of [`crate::tools::require_all`]) when the registry or
    /// the API server binaries are missing.
    pub async fn start_for_test(nodes: usize) -> Option<Self> {
        Self::start_for_test_with(nodes, None).await
    }

    /// [`Self::start_for_test`] with a registry run with TLS and auth (`secure`), or plain.
    pub async fn start_for_test_with(nodes: usize, secure: Option<SecureOptions>) -> Option<Self> {
        Self::start_for_test_api(nodes, secure, None).await
    }

    /// [`Self::start_for_test_with`] on a local API server started with `api` (admission policies,
    /// token users) when given.
    pub async fn start_for_test_api(
        nodes: usize,
        secure: Option<SecureOptions>,
        api: Option<ApiServerOptions>,
    ) -> Option<Self> {
        crate::tools::require_all(["docker-registry", "crd-apiserver", "etcd"])?;
        let opts = FleetOptions {
            nodes,
            bin_dir: build_binaries(false).expect("build the fleet binaries"),
            dir: None,
            log: "info".into(),
            secure,
            api,
        };
        Some(
            Self::start(opts, |s| eprintln!("fleet: {s}"))
                .await
                .expect("local fleet"),
        )
    }

    /// Starts the agent of a new edge node `name` (certificate from the fleet CA, site `lab`). As an
    /// administrator would, the harness first creates its EdgeNode with the fleet's role label (a
    /// device never writes labels); the agent finds it and reports its status. A node started after
    /// a rollout began joins its selection late.
    pub async fn add_node(&mut self, name: &str) -> anyhow::Result<()> {
        self.add_node_with(name, &[]).await
    }

    /// [`Self::add_node`] with more agent flags (`--store-budget BYTES`, …).
    pub async fn add_node_with(&mut self, name: &str, agent_args: &[&str]) -> anyhow::Result<()> {
        self.label_node(name, &[(ROLE.0, ROLE.1)]).await?;
        let ndir = self.dir.join(name);
        std::fs::create_dir_all(&ndir)?;
        let (cert, key) = issue_node(&self.ca, name, &ndir)?;
        let install_root = ndir.join("install");
        let mut cmd = Command::new(self.bin_dir.join("pollen-edge-node"));
        cmd.arg("agent")
            .args(["--node-name", name, "--site", "lab"])
            .arg("--listen")
            .arg(free_udp()?.to_string())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--ca")
            .arg(&self.ca_file)
            .arg("--data-dir")
            .arg(self.data_dir(name))
            .arg("--install-root")
            .arg(&install_root)
            .arg("--metrics")
            .arg(free_tcp()?.to_string())
            .args(self.agent_registry_args()?)
            .args(["--status-interval", "1"])
            .args(agent_args);
        let log = self.log.clone();
        self.spawn(name, cmd, &log)?;
        self.install_roots.insert(name.to_string(), install_root);
        Ok(())
    }

    /// A real identity of the fleet for `name` with no agent behind it (certificate from the fleet CA
    /// in `<dir>/<name>/`, the CA in `<dir>/ca.pem`): what a compromised device holds.
    pub fn issue_identity(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
        let ndir = self.dir.join(name);
        std::fs::create_dir_all(&ndir)?;
        let (cert, key) = issue_node(&self.ca, name, &ndir)?;
        Ok((cert, key, self.ca_file.clone()))
    }

    /// Creates the EdgeNode `name` if absent and sets `labels` on it, as an administrator (the API
    /// server's admin client) does with `kubectl label edgenode`.
    pub async fn label_node(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        let api: Api<EdgeNode> = Api::all(self.client.clone());
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let obj = serde_json::json!({
            "apiVersion": "pollen.dev/v1alpha1", "kind": "EdgeNode",
            "metadata": { "name": name, "labels": labels },
            "spec": {},
        });
        api.patch(name, &PatchParams::apply("fleet-admin"), &Patch::Apply(&obj))
            .await
            .with_context(|| format!("label EdgeNode {name}"))?;
        Ok(())
    }

    /// How the publisher (this harness) reaches the registry: the push credential.
    pub fn publisher_options(&self) -> anyhow::Result<RegistryOptions> {
        Ok(match &self.secure {
            None => RegistryOptions::insecure_for(self.registry.host()),
            Some(s) => RegistryOptions {
                ca_file: Some(s.ca_file.clone()),
                docker_config: Some(s.docker_config(Some(PUSHER), "pusher.json")?),
                ..Default::default()
            },
        })
    }

    /// The operator's registry flags: the push credential and the CA, or plain HTTP to the registry.
    fn operator_registry_args(&self) -> anyhow::Result<Vec<String>> {
        Ok(match &self.secure {
            None => vec![format!("--insecure-registry={}", self.registry.host())],
            Some(s) => vec![
                format!("--registry-ca={}", s.ca_file.display()),
                format!(
                    "--docker-config={}",
                    s.docker_config(Some(PUSHER), "operator.json")?.display()
                ),
            ],
        })
    }

    /// An agent's registry flags: the pull-only credential (the CA comes through `SSL_CERT_FILE`, see
    /// [`Self::spawn`]), or plain HTTP to the registry.
    fn agent_registry_args(&self) -> anyhow::Result<Vec<String>> {
        Ok(match &self.secure {
            None => vec![format!("--insecure-registry={}", self.registry.host())],
            Some(s) => vec![format!(
                "--docker-config={}",
                s.docker_config(Some(PULLER), "agent.json")?.display()
            )],
        })
    }

    fn spawn(&mut self, name: &str, mut cmd: Command, log_level: &str) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        cmd.stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f))
            .stdin(Stdio::null())
            .env("RUST_LOG", log_level)
            .env("NO_COLOR", "1")
            .env("KUBECONFIG", self.api.kubeconfig_path());
        if let Some(s) = &self.secure
            && name != "operator"
        {
            // Agents trust the registry CA the way a device image would: as the system's bundle.
            cmd.env("SSL_CERT_FILE", &s.ca_file);
        }
        let child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
        });
        Ok(())
    }

    /// Fails when a fleet process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited ({status})\n{}", p.name, tail(&p.log, 20));
            }
        }
        Ok(())
    }

    /// The last `n` lines of every process log, for failure messages.
    pub fn logs_tail(&self, n: usize) -> String {
        self.procs
            .iter()
            .map(|p| format!("---- {} ----\n{}", p.name, tail(&p.log, n)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Publishes `bytes` as `fleet/<repo>:<tag>` signed by the fleet's publisher key; returns the reference.
    pub async fn publish(
        &self,
        repo: &str,
        tag: &str,
        file_name: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<String> {
        let reg = TrustRegistry::new(&self.publisher_options()?)?;
        let reference = format!("{}/fleet/{repo}:{tag}", self.registry.host());
        let target = parse_reference(&reference)?;
        publish::publish_bytes(
            &reg,
            &target,
            file_name,
            bytes,
            &self.publisher,
            &PublishOptions::default(),
        )
        .await?;
        Ok(reference)
    }

    /// Polls the status of rollout `default/<name>` until `done` holds; returns it and the time it took.
    /// Panics (with the processes' last log lines) when a process died or `limit_s` passed.
    pub async fn wait_rollout(
        &mut self,
        name: &str,
        limit_s: u64,
        what: &str,
        done: impl Fn(&UpdateRolloutStatus) -> bool,
    ) -> (UpdateRolloutStatus, Duration) {
        let rollouts: Api<UpdateRollout> = Api::namespaced(self.client.clone(), "default");
        let start = Instant::now();
        loop {
            self.check_alive().expect("fleet processes alive");
            let status = rollouts.get(name).await.unwrap().status.unwrap_or_default();
            if done(&status) {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < Duration::from_secs(limit_s),
                "not within {limit_s} s: {what}. {status:?}\n{}",
                self.logs_tail(25)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// A node's data dir (`--data-dir`: chunk stores and trust material).
    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("data")
    }

    /// The file a node installed for `target_path` (its `current` version).
    pub fn installed_file(&self, node: &str, target_path: &str) -> PathBuf {
        let file = Path::new(target_path)
            .file_name()
            .expect("target path names a file");
        self.install_roots[node]
            .join(target_path)
            .join("current")
            .join(file)
    }
}

/// A daily activation window (UTC) that opens `minutes` from now and lasts an hour: closed now when
/// `minutes` is above zero and below 23 hours.
pub fn window_opening_in(minutes: u64) -> pollen_crds::rollout::ActivationWindow {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let start = (now / 60 + minutes) % 1440;
    let hm = |m: u64| format!("{:02}:{:02}", m / 60, m % 60);
    pollen_crds::rollout::ActivationWindow {
        start: hm(start),
        end: hm((start + 60) % 1440),
    }
}

/// A canary wave of one node, then every other node.
pub fn canary_then_all() -> Vec<Wave> {
    vec![
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
    ]
}

/// An UpdateRollout of `artifact` to every fleet node, in `waves`, installing at `target_path`.
pub fn rollout(name: &str, artifact: &str, target_path: &str, waves: Vec<Wave>) -> UpdateRollout {
    UpdateRollout::new(
        name,
        UpdateRolloutSpec {
            artifact: ArtifactSource {
                reference: artifact.to_string(),
                allow_downgrade: false,
            },
            trust_policy: "fleet".into(),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(ROLE.0.to_string(), ROLE.1.to_string())])),
                ..Default::default()
            },
            strategy: RolloutStrategy {
                waves,
                ..Default::default()
            },
            transfer: TransferSettings::default(),
            install: InstallSettings {
                target_path: target_path.into(),
                keep_versions: 2,
                activation_window: None,
            },
        },
    )
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("  ")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Issues a node certificate from the fleet CA into `dir` (`cert.pem`, and `key.pem` with mode 0600);
/// returns their paths.
fn issue_node(ca: &FleetCa, node: &str, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let kp = ca.issue(node, std::time::SystemTime::now(), pki::DEFAULT_NODE_LIFETIME)?;
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, &kp.cert.cert_pem)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&k)?;
    std::io::Write::write_all(&mut f, kp.key_pem.as_bytes())?;
    Ok((c, k))
}
