//! Shared helpers of the multi-node edge-node tests (`swarm_*.rs`): a real registry, a really published
//! and signed index, a byte-counting TCP proxy in front of the registry (the "origin" the nodes see), a
//! fleet CA, and standalone node options on 127.0.0.1.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pollen_e2e::registry::Registry;
use pollen_edge_node::metrics::Metrics;
use pollen_edge_node::standalone::{Budget, StandaloneOptions};
use pollen_edge_node::tls::testing::TestCa;
use pollen_trust::registry::RegistryOptions;
use pollen_trust::testing::{publish_and_verify, test_request};
use pollen_trust::verified::VerifiedIndex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether the tests run in CI (missing real parts must fail there).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Starts the real registry, or returns `None` (with the reason printed) outside CI when it is missing.
pub async fn registry() -> Option<Registry> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Logs go to the test's captured output; RUST_LOG selects them (default: warnings).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    match Registry::start().await {
        Ok(r) => Some(r),
        Err(e) if !ci() => {
            eprintln!("SKIPPED: registry unavailable: {e}");
            None
        }
        Err(e) => panic!("registry unavailable under CI: {e}"),
    }
}

/// Deterministic pseudo-random payload.
pub use pollen_e2e::lab::payload::bytes as payload;

/// A published, signed and verified index, with its trust keys written to files.
pub struct Published {
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The pinned index reference at the registry.
    pub index_ref: String,
    /// Publisher public key file.
    pub publisher_pem: PathBuf,
    /// Director public key file.
    pub director_pem: PathBuf,
    /// The verified index.
    pub verified: VerifiedIndex,
}

/// Publishes `payload` to `host/fleet/app:<tag>` as sequence `sequence` in chunks of `chunk` bytes.
pub async fn publish(
    host: &str,
    tag: &str,
    payload: Vec<u8>,
    chunk: u32,
    sequence: u64,
    dir: &Path,
) -> Published {
    let client =
        pollen_trust::registry::Registry::new(&RegistryOptions::insecure_for(host)).expect("registry client");
    let mut req = test_request(Some(chunk));
    req.sequence = sequence;
    let p = publish_and_verify(&client, &format!("{host}/fleet/app:{tag}"), payload.clone(), &req)
        .await
        .expect("publish and verify");
    let publisher_pem = dir.join(format!("publisher-{tag}.pub"));
    let director_pem = dir.join(format!("director-{tag}.pub"));
    std::fs::write(&publisher_pem, p.trust.publisher_keys[0].pem()).unwrap();
    std::fs::write(&director_pem, p.trust.director_key.pem()).unwrap();
    Published {
        payload,
        index_ref: p.index_reference,
        publisher_pem,
        director_pem,
        verified: p.verified,
    }
}

/// A TCP proxy in front of the registry that counts the bytes it sends to clients (the origin's egress
/// at the HTTP level, headers included) and can be taken down.
pub struct Proxy {
    /// Where nodes reach the origin.
    pub addr: SocketAddr,
    /// Bytes sent to clients.
    pub egress: Arc<AtomicU64>,
    /// Set to take the origin down: open connections are cut and new ones are closed at once.
    pub down: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on 127.0.0.1.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let egress = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (e, d) = (egress.clone(), down.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (e, d) = (e.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let d2 = d.clone();
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while !d2.load(Ordering::SeqCst) {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let downstream = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while !d.load(Ordering::SeqCst) {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            e.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, downstream);
                });
            }
        });
        Proxy {
            addr,
            egress,
            down,
            task,
        }
    }

    /// The proxy as a registry host. Publish through it: signatures name their repository, registry
    /// host included, and nodes check that it is the one they fetch from.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A fleet: a CA and a working directory.
pub struct Fleet {
    /// The fleet CA.
    pub ca: TestCa,
    /// CA file.
    pub ca_pem: PathBuf,
    /// Working directory (certs, data, install roots).
    pub dir: tempfile::TempDir,
}

impl Fleet {
    /// A new fleet.
    pub fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("pollen fleet");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, &ca.cert_pem).unwrap();
        Fleet { ca, ca_pem, dir }
    }

    /// Standalone options for node `name` (certificate issued now), listening on `listen`.
    pub fn node(
        &self,
        name: &str,
        listen: SocketAddr,
        peers: &[SocketAddr],
        p: &Published,
        index_ref: &str,
    ) -> StandaloneOptions {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let (cert, key) = self.ca.issue(name).write(&d);
        StandaloneOptions {
            name: Some(name.into()),
            site: "site0".into(),
            listen,
            cert,
            key,
            ca: self.ca_pem.clone(),
            tls: None,
            crl: None,
            peers: peers.iter().copied().filter(|a| *a != listen).collect(),
            index: index_ref.into(),
            evidence: None,
            publisher_keys: vec![p.publisher_pem.clone()],
            director_key: p.director_pem.clone(),
            // The index names the registry (or the proxy in front of it): that host is plain HTTP.
            registry: pollen_trust::registry::Registry::new(&RegistryOptions::insecure_for(
                index_ref.split('/').next().unwrap_or_default(),
            ))
            .expect("registry client"),
            data_dir: d.join("data"),
            install_root: d.join("install"),
            metrics: None,
            upload_limit: None,
            download_limit: None,
            origin_budget: Budget::Unlimited,
            origin_allowance: None,
            peer_wait: None,
            rate_limits: None,
            activation: None,
            peer_grant: None,
            peer_grant_updates: None,
            no_origin: false,
            origin_requests: None,
            control_queue: None,
            seed: Some(name.bytes().map(u64::from).sum()),
            seed_for: None,
        }
    }
}

/// Fraction of chunks present on a node, from its metrics.
pub fn progress(m: &Metrics, p: &Published) -> f64 {
    m.progress
        .get_or_create(&pollen_edge_node::metrics::IndexLabel { index: hex_id(p) })
        .get()
}

/// The index id in hex.
pub fn hex_id(p: &Published) -> String {
    p.verified.id().iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns whether it held.
pub async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
