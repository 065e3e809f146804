//! The metrics-existence test: runs the real `pollen-operator` (against the test API server) and the
//! real `pollen-edge-node` (standalone), scrapes their `/metrics`, and fails if any metric the Grafana
//! dashboard or the alert rules use (`deploy/metrics-used.txt`) is not served by the binary that should
//! serve it. No panel may point at nothing.
//!
//! The edge node needs no registry here: it is pointed at a local TCP port that accepts and never
//! answers, so it sits verifying its chunk index with its metrics server up; that is enough to see the
//! metric families it registers. The operator needs the CRDs, which the test API server serves.
//!
//! Builds the binaries first (`pollen_e2e::fleet::build_binaries`). The operator's test needs
//! crd-apiserver and etcd (`e2e/tools/build-apiserver.sh`), kubectl and cosign
//! (`e2e/tools/install-deps.sh`); without them it fails in CI and reports itself skipped elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pollen_e2e::apiserver::ApiServer;
use pollen_e2e::tools;

fn root() -> PathBuf {
    tools::workspace_root()
}

/// The operator's and the edge node's binaries, built (or found up to date) in this workspace's target
/// directory by the e2e harness.
fn binaries() -> PathBuf {
    pollen_e2e::fleet::build_binaries(false).expect("cargo build of pollen-operator and pollen-edge-node")
}

/// `deploy/metrics-used.txt`: metric family (as registered) -> whether it has labels, for one exposer.
fn wanted(exposer: &str) -> BTreeMap<String, bool> {
    let text = std::fs::read_to_string(root().join("deploy/metrics-used.txt")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (series, by, labels) = (f.next()?, f.next()?, f.next()?);
            (by == exposer).then(|| {
                let family = series
                    .strip_suffix("_total")
                    .or_else(|| series.strip_suffix("_bucket"))
                    .unwrap_or(series);
                (family.to_string(), labels != "-")
            })
        })
        .collect()
}

/// The metric families a `/metrics` body declares (`# TYPE <family> <type>`), and the series names it has.
fn families(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET on 127.0.0.1; `(status, body)`.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Kills the child on drop, so a failed assertion leaves no process behind.
struct Running(Child, &'static str);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn log(&mut self) -> String {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut out = String::new();
        if let Some(e) = self.0.stderr.as_mut() {
            let _ = e.read_to_string(&mut out);
        }
        out
    }
}

/// Scrapes `/metrics` until every wanted family is there (or 30 s pass); returns the missing ones.
fn scrape_until(proc: &mut Running, addr: SocketAddr, want: &BTreeSet<String>) -> (BTreeSet<String>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if let Ok(Some(status)) = proc.0.try_wait() {
            let log = proc.log();
            panic!(
                "{} exited ({status}) before its metrics could be scraped:\n{log}",
                proc.1
            );
        }
        if let Ok((200, body)) = http_get(addr, "/metrics") {
            let have = families(&body);
            let missing: BTreeSet<String> = want.difference(&have).cloned().collect();
            if missing.is_empty() || Instant::now() > deadline {
                return (missing, body);
            }
            last = body;
        }
        if Instant::now() > deadline {
            return (want.clone(), last);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A fleet CA and one node certificate (DNS SAN `node-a`, serverAuth + clientAuth), as PEM files.
fn node_identity(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let node_key = KeyPair::generate().unwrap();
    let mut node = CertificateParams::new(vec!["node-a".to_string()]).unwrap();
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    node.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let node_cert = node.signed_by(&node_key, &issuer).unwrap();
    (
        write(dir, "node.crt", &node_cert.pem()),
        write(dir, "node.key", &node_key.serialize_pem()),
        write(dir, "ca.crt", &ca_cert.pem()),
    )
}

#[test]
fn edge_node_serves_every_metric_the_assets_use() {
    let bin = binaries().join("pollen-edge-node");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = node_identity(dir.path());
    let publisher = write(
        dir.path(),
        "publisher.pub",
        &rcgen::KeyPair::generate().unwrap().public_key_pem(),
    );
    let director = write(
        dir.path(),
        "director.pub",
        &rcgen::KeyPair::generate().unwrap().public_key_pem(),
    );
    // A "registry" that accepts connections and never answers: verification waits, metrics are up.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(&bin)
        .arg("standalone")
        .args(["--name", "node-a", "--listen", "127.0.0.1:0"])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--ca")
        .arg(&ca)
        .arg("--index")
        .arg(format!("{silent_addr}/pollen/index@sha256:{}", "ab".repeat(32)))
        .arg("--publisher-key")
        .arg(&publisher)
        .arg("--director-key")
        .arg(&director)
        .arg("--insecure-registry")
        .arg(silent_addr.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--install-root")
        .arg(dir.path().join("install"))
        .arg("--metrics")
        .arg(metrics.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pollen-edge-node starts");
    let mut proc = Running(child, "pollen-edge-node");
    // A family with labels has no series (and prometheus-client prints no `# TYPE` line for it) until
    // a first observation: bytes by source, failures and bans by peer, progress by index need a swarm.
    // Here every family without labels must be served; the labelled ones are checked when present,
    // and their registration in the source is checked by assets_metrics.rs.
    let wanted = wanted("edge-node");
    let required: BTreeSet<String> = wanted
        .iter()
        .filter(|(_, l)| !**l)
        .map(|(f, _)| f.clone())
        .collect();
    assert!(!required.is_empty());
    let (missing, body) = scrape_until(&mut proc, metrics, &required);
    assert!(
        missing.is_empty(),
        "pollen-edge-node does not serve {missing:?}; its /metrics:\n{body}"
    );
    let served = families(&body);
    let unseen: Vec<&String> = wanted
        .iter()
        .filter(|(f, l)| **l && !served.contains(*f))
        .map(|(f, _)| f)
        .collect();
    eprintln!(
        "pollen-edge-node serves {} families; labelled ones not observed without traffic: {unseen:?}",
        served.len()
    );
    for f in served.iter().filter(|f| f.starts_with("pollen_edge_")) {
        assert!(body.contains(&format!("# HELP {f} ")), "{f} has no help text");
    }
    let (status, _) = http_get(metrics, "/healthz").unwrap();
    assert_eq!(status, 200, "/healthz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_serves_every_metric_the_assets_use() {
    let bin = binaries().join("pollen-operator");
    let Some([cosign, kubectl, _, _]) = tools::require_all(["cosign", "kubectl", "crd-apiserver", "etcd"])
    else {
        return;
    };
    let mut server = ApiServer::start().await.expect("API server starts");
    let crds = std::fs::read_to_string(root().join("charts/pollen/crds/pollen.dev.yaml")).unwrap();
    server.apply_crds_yaml(&crds).await.expect("CRDs apply");
    let dir = tempfile::tempdir().unwrap();
    let keygen = Command::new(&cosign)
        .args(["generate-key-pair"])
        .current_dir(dir.path())
        .env("COSIGN_PASSWORD", "metrics-test")
        .output()
        .expect("cosign runs");
    assert!(
        keygen.status.success(),
        "cosign generate-key-pair: {}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(&bin)
        .arg("--director-key")
        .arg(dir.path().join("cosign.key"))
        .env("POLLEN_DIRECTOR_KEY_PASSWORD", "metrics-test")
        .arg("--leader-election=false")
        .arg(format!("--metrics-addr={metrics}"))
        .env("KUBECONFIG", server.kubeconfig_path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pollen-operator starts");
    let mut proc = Running(child, "pollen-operator");
    // One rollout for the operator to work on (its registry is a closed local port, so it never gets
    // far), so that the per-rollout families have series.
    let manifest = dir.path().join("rollout.yaml");
    std::fs::write(
        &manifest,
        rollout_manifest(
            &std::fs::read_to_string(dir.path().join("cosign.pub")).unwrap(),
            free_port(),
        ),
    )
    .unwrap();
    let applied = Command::new(&kubectl)
        .arg("apply")
        .arg("-f")
        .arg(&manifest)
        .env("KUBECONFIG", server.kubeconfig_path())
        .output()
        .expect("kubectl runs");
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let want: BTreeSet<String> = wanted("operator").into_keys().collect();
    assert!(!want.is_empty());
    let (missing, body) = tokio::task::block_in_place(|| scrape_until(&mut proc, metrics, &want));
    let ready = tokio::task::block_in_place(|| http_get(metrics, "/healthz"));
    drop(proc);
    server.stop().await;
    assert!(
        missing.is_empty(),
        "pollen-operator does not serve {missing:?}; its /metrics:\n{body}"
    );
    assert_eq!(ready.expect("/healthz answers").0, 200);
}

/// A TrustPolicy and an UpdateRollout whose registry is a closed port on 127.0.0.1.
fn rollout_manifest(director_pub: &str, registry_port: u16) -> String {
    let key = director_pub
        .trim()
        .lines()
        .map(|l| format!("        {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "apiVersion: pollen.dev/v1alpha1
kind: TrustPolicy
metadata:
  name: metrics-test
spec:
  publishers:
    - name: release
      publicKey: |
{key}
  director:
    publicKey: |
{key}
---
apiVersion: pollen.dev/v1alpha1
kind: UpdateRollout
metadata:
  name: metrics-test
  namespace: default
spec:
  artifact:
    reference: 127.0.0.1:{registry_port}/fleet/fw:1.0.0
  trustPolicy: metrics-test
  selector: {{}}
  install:
    targetPath: firmware/fw.bin
"
    )
}
