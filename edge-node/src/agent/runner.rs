//! The agent's [`AssignmentRunner`](super::AssignmentRunner) over the real swarm.
//!
//! For one assignment: read the TrustPolicy the operator named, verify the index (director and
//! publisher signatures, payload digest, sequence), find peers among the EdgeNodes that carry the
//! same rollout, then run the standalone pipeline (swarm → whole-payload check → atomic install)
//! and keep seeding so that later waves can fetch from this node. Progress comes from the
//! engine's metrics; `Installed` is reported once the install root's `current` link points at
//! the new version.
//!
//! One engine runs at a time: it owns the node's single QUIC endpoint, which peers learn from
//! the EdgeNode status. The agent stops a finished (seeding) assignment when a new one arrives.
//! Non-goals: several concurrent swarms per node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use pollen_crds::rollout::ActivationWindow;
use pollen_crds::{Assignment, AssignmentPhase, AssignmentStatus, EdgeNode, InstalledVersion, TrustPolicy};
use pollen_trust::keys::PublicKey;
use pollen_trust::registry::Registry;
use pollen_trust::verify::{self, VerifyContext};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::activation;
use crate::engine::EngineError;
use crate::install::Installer;
use crate::metrics::{IndexLabel, Metrics, SourceLabel};
use crate::ratelimit::RateLimits;
use crate::standalone::{self, Budget, StandaloneError, StandaloneOptions};
use crate::tls::FleetTls;

/// What the runner needs besides the assignment.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// This node's name (its certificate names it too).
    pub node_name: String,
    /// Site label.
    pub site: String,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// The live TLS handle: the node's current certificate (rotated by the identity loop) and the
    /// fleet's revocation list. Every engine the runner starts uses it.
    pub tls: FleetTls,
    /// Node certificate, key and fleet CA (PEM files; `tls` is what the engines use).
    pub cert: PathBuf,
    /// Node private key.
    pub key: PathBuf,
    /// Fleet CA certificate.
    pub ca: PathBuf,
    /// Chunk stores and key material live here.
    pub data_dir: PathBuf,
    /// Installed versions live here, one subdirectory per target path.
    pub install_root: PathBuf,
    /// The registry client (TLS, credentials, insecure hosts), shared by every assignment so that
    /// tokens are fetched once.
    pub registry: Registry,
    /// Per-node rate limits in bytes per second.
    pub upload_limit: Option<u64>,
    /// Per-node download limit.
    pub download_limit: Option<u64>,
}

/// Runs assignments through the swarm engine.
pub struct SwarmRunner {
    client: kube::Client,
    cfg: RunnerConfig,
    metrics: Arc<Metrics>,
    engine: Arc<Mutex<()>>,
}

impl SwarmRunner {
    /// A runner reporting into the process-wide `metrics` (served on `/metrics`).
    pub fn new(client: kube::Client, cfg: RunnerConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            cfg,
            metrics,
            engine: Arc::new(Mutex::new(())),
        }
    }
}

/// The install directory of one target path: the path itself under the install root (it then holds
/// `current` and `versions/`). The path comes from the director-signed index, never from the
/// unsigned assignment, and is checked again here: relative, plain components, no reserved name, so
/// it stays under the install root and out of any other target's directory.
fn target_root(install_root: &std::path::Path, target_path: &str) -> Result<PathBuf, String> {
    pollen_trust::index::check_target_path(target_path)
        .map_err(|e| format!("the index's target path {target_path:?}: {e}"))?;
    Ok(install_root.join(target_path))
}

/// The lower of the agent's own rate limit and the assignment's (bytes per second; `None`: unlimited).
fn lower_limit(agent: Option<u64>, assignment: Option<i64>) -> Option<u64> {
    let assignment = assignment.map(|b| b.max(1) as u64);
    match (agent, assignment) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The rate limits an assignment gives, with the agent's own flags.
fn limits_of(a: &Assignment, upload: Option<u64>, download: Option<u64>) -> RateLimits {
    RateLimits {
        upload: lower_limit(upload, a.upload_bytes_per_second),
        download: lower_limit(download, a.download_bytes_per_second),
    }
}

/// What the running engine follows of an assignment.
struct Followed {
    /// The origin cap (`EngineConfig::origin_allowance`).
    allowance: watch::Receiver<Option<u64>>,
    /// The rate limits (`EngineConfig::rate_limits`).
    limits: watch::Receiver<RateLimits>,
    /// The activation window (`StandaloneOptions::activation`).
    window: watch::Receiver<Option<ActivationWindow>>,
    /// The peer grant, decoded (`EngineConfig::grant_updates`; a malformed one counts as none).
    grant: watch::Receiver<Option<Vec<u8>>>,
}

/// The raw peer grant of an assignment (`None` when it has none or it is malformed).
fn grant_of(a: &Assignment) -> Option<Vec<u8>> {
    a.peer_grant
        .as_deref()
        .and_then(|g| pollen_trust::grant::decode(g).ok())
}

/// The fleet's origin requests of an assignment. The CRD bounds them to 1–64; anything else (an object
/// written around the schema) counts as unset.
fn origin_requests_of(a: &Assignment) -> Option<u32> {
    a.origin_requests
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (1..=64).contains(n))
}

/// Follows the assignment as the operator changes it, until `cancel` or until the agent drops it: its
/// origin cap, its rate limits (the lower of the agent's flags and the assignment's), its
/// activation window and its peer grant, as the engine takes them.
fn follow(
    mut updates: watch::Receiver<Assignment>,
    upload: Option<u64>,
    download: Option<u64>,
    cancel: CancellationToken,
) -> Followed {
    let a = updates.borrow_and_update().clone();
    let (cap_tx, allowance) = watch::channel(super::allowance_of(&a));
    let (limits_tx, limits) = watch::channel(limits_of(&a, upload, download));
    let (window_tx, window) = watch::channel(a.activation_window.clone());
    let (grant_tx, grant) = watch::channel(grant_of(&a));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = updates.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let a = updates.borrow_and_update().clone();
                    cap_tx.send_if_modified(|c| super::replace(c, super::allowance_of(&a)));
                    limits_tx.send_if_modified(|l| super::replace(l, limits_of(&a, upload, download)));
                    window_tx.send_if_modified(|w| super::replace(w, a.activation_window.clone()));
                    grant_tx.send_if_modified(|g| super::replace(g, grant_of(&a)));
                }
                _ = cancel.cancelled() => return,
            }
        }
    });
    Followed {
        allowance,
        limits,
        window,
        grant,
    }
}

pub(super) fn short(s: &str) -> String {
    hex::encode(&blake3::hash(s.as_bytes()).as_bytes()[..8])
}

impl super::AssignmentRunner for SwarmRunner {
    fn run(
        &self,
        a: Assignment,
        progress: watch::Sender<AssignmentStatus>,
        updates: watch::Receiver<Assignment>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Option<InstalledVersion>> {
        let client = self.client.clone();
        let cfg = self.cfg.clone();
        let metrics = self.metrics.clone();
        let engine = self.engine.clone();
        Box::pin(async move {
            let fail = |msg: String| {
                warn!(rollout = %a.rollout, error = %msg, "assignment failed");
                progress.send_modify(|s| {
                    s.phase = AssignmentPhase::Failed;
                    s.last_error = Some(msg);
                    s.updated_at = Some(Time(jiff::Timestamp::now()));
                });
                None
            };
            progress.send_modify(|s| s.phase = AssignmentPhase::Verifying);

            // Trust material from the named TrustPolicy, written where the pipeline reads it.
            let tp = match Api::<TrustPolicy>::all(client.clone()).get(&a.trust_policy).await {
                Ok(tp) => tp,
                Err(e) => return fail(format!("TrustPolicy {}: {e}", a.trust_policy)),
            };
            let keys_dir = cfg.data_dir.join("keys").join(short(&a.rollout));
            let mut publisher_keys = Vec::new();
            let write = |name: String, pem: &str| -> Result<PathBuf, String> {
                std::fs::create_dir_all(&keys_dir).map_err(|e| format!("{}: {e}", keys_dir.display()))?;
                let p = keys_dir.join(name);
                std::fs::write(&p, pem).map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(p)
            };
            for (i, p) in tp.spec.publishers.iter().enumerate() {
                match write(format!("publisher-{i}.pem"), &p.public_key) {
                    Ok(path) => publisher_keys.push(path),
                    Err(e) => return fail(e),
                }
            }
            let director_key = match write("director.pem".into(), &tp.spec.director.public_key) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };

            // Verify up front, so a bad signature is reported as such before any byte moves.
            let policy = verify::TrustPolicy {
                publisher_keys: match tp
                    .spec
                    .publishers
                    .iter()
                    .map(|p| PublicKey::from_pem(p.public_key.as_bytes()))
                    .collect()
                {
                    Ok(k) => k,
                    Err(e) => return fail(format!("publisher key: {e}")),
                },
                director_key: match PublicKey::from_pem(tp.spec.director.public_key.as_bytes()) {
                    Ok(k) => k,
                    Err(e) => return fail(format!("director key: {e}")),
                },
            };
            let reg = &cfg.registry;
            // Fetched once: the engine's own check (with the rollback rule) reuses these objects.
            let evidence = match verify::fetch_evidence(reg, &a.chunk_index, &policy).await {
                Ok(ev) => ev,
                Err(e) => return fail(format!("verification failed: {e}")),
            };
            let index = match verify::verify_evidence(&evidence, &policy, &VerifyContext::now()) {
                Ok(ix) => ix,
                Err(e) => return fail(format!("verification failed: {e}")),
            };
            let size = index.payload.size;
            let index_label = IndexLabel {
                index: hex::encode(index.id()),
            };
            let version = format!(
                "{:020}-{}",
                index.sequence,
                &hex::encode(index.payload.digest)[..12]
            );
            progress.send_modify(|s| {
                s.total_bytes = size as i64;
                s.phase = AssignmentPhase::Downloading;
            });

            // Peers: the endpoints of other EdgeNodes carrying this rollout; peer exchange finds more.
            let peers: Vec<SocketAddr> = match Api::<EdgeNode>::all(client.clone())
                .list(&ListParams::default())
                .await
            {
                Ok(list) => list
                    .items
                    .into_iter()
                    .filter(|en| en.metadata.name.as_deref() != Some(cfg.node_name.as_str()))
                    .filter(|en| en.spec.assignments.iter().any(|x| x.rollout == a.rollout))
                    .filter_map(|en| en.status?.endpoint?.parse().ok())
                    .collect(),
                Err(e) => {
                    warn!(error = %e, "cannot list EdgeNodes; relying on peer exchange and the origin");
                    Vec::new()
                }
            };
            info!(rollout = %a.rollout, peers = peers.len(), "peers found");

            // One engine at a time: wait for the endpoint, or give up when cancelled.
            let _engine = tokio::select! {
                g = engine.clone().lock_owned() => g,
                _ = cancel.cancelled() => return None,
            };
            let install_root = match target_root(&cfg.install_root, &index.target.path) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            if index.target.path != a.target_path {
                warn!(rollout = %a.rollout, signed = %index.target.path, assigned = %a.target_path,
                      "the assignment names another target path than the signed index; installing where the index says");
            }
            let followed = follow(updates, cfg.upload_limit, cfg.download_limit, cancel.clone());
            let limits_now = *followed.limits.borrow();
            let opts = StandaloneOptions {
                name: Some(cfg.node_name.clone()),
                site: cfg.site.clone(),
                listen: cfg.listen,
                cert: cfg.cert.clone(),
                key: cfg.key.clone(),
                ca: cfg.ca.clone(),
                tls: Some(cfg.tls.clone()),
                crl: None,
                peers,
                index: a.chunk_index.clone(),
                evidence: Some(evidence),
                publisher_keys,
                director_key,
                registry: cfg.registry.clone(),
                data_dir: super::stores::dir_of(&cfg.data_dir, &a.chunk_index),
                install_root: install_root.clone(),
                metrics: None,
                upload_limit: limits_now.upload,
                download_limit: limits_now.download,
                origin_budget: Budget::OneCopy,
                origin_allowance: Some(followed.allowance),
                rate_limits: Some(followed.limits),
                peer_wait: a.peer_wait.as_deref().and_then(|w| {
                    pollen_crds::duration::parse(w)
                        .inspect_err(|e| warn!(rollout = %a.rollout, error = %e, "unreadable peerWait; using the default"))
                        .ok()
                }),
                activation: Some(followed.window.clone()),
                peer_grant: None,
                peer_grant_updates: Some(followed.grant.clone()),
                no_origin: false,
                origin_requests: origin_requests_of(&a),
                control_queue: None,
                seed: None,
                seed_for: None,
            };
            let peer_base = metrics
                .received_bytes
                .get_or_create(&SourceLabel { source: "peer" })
                .get();
            let origin_base = metrics
                .received_bytes
                .get_or_create(&SourceLabel { source: "origin" })
                .get();
            let mut run = Box::pin(standalone::run_with_metrics(
                opts.clone(),
                metrics.clone(),
                cancel.clone(),
            ));
            let installer = Installer::new(&install_root, 0);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut installed_reported = false;
            let result = loop {
                tokio::select! {
                    r = &mut run => {
                        let revoked = matches!(&r, Err(StandaloneError::Engine(EngineError::Revoked { .. })));
                        if !revoked || cancel.is_cancelled() {
                            break r;
                        }
                        // This node's certificate was revoked: the identity loop is getting a new one.
                        // Take part again once it has, instead of failing the assignment.
                        let msg = format!("{}; waiting for a new certificate", r.err().map(|e| e.to_string()).unwrap_or_default());
                        warn!(rollout = %a.rollout, error = %msg, "paused");
                        progress.send_modify(|s| s.last_error = Some(msg));
                        if !wait_for_new_identity(&cfg.tls, &cancel).await {
                            info!(rollout = %a.rollout, "assignment cancelled while waiting for a new certificate");
                            return None;
                        }
                        info!(rollout = %a.rollout, serial = %cfg.tls.current().serial(), "new certificate; resuming");
                        progress.send_modify(|s| s.last_error = None);
                        run = Box::pin(standalone::run_with_metrics(opts.clone(), metrics.clone(), cancel.clone()));
                    }
                    _ = tick.tick() => {
                        let frac = metrics.progress.get_or_create(&index_label).get();
                        let from_peers = metrics.received_bytes.get_or_create(&SourceLabel { source: "peer" }).get() - peer_base;
                        let from_origin = metrics.received_bytes.get_or_create(&SourceLabel { source: "origin" }).get() - origin_base;
                        let done = installer.current().as_deref() == Some(version.as_str());
                        progress.send_modify(|s| {
                            s.verified_bytes = ((frac * size as f64) as i64).min(size as i64);
                            s.bytes_from_peers = from_peers as i64;
                            s.bytes_from_origin = from_origin as i64;
                            if done && !installed_reported {
                                s.phase = AssignmentPhase::Installed;
                                s.verified_bytes = size as i64;
                                s.updated_at = Some(Time(jiff::Timestamp::now()));
                            } else if frac >= 1.0 && !done {
                                // Complete but not installed: staged while the window is closed.
                                let closed = activation::wait_now(followed.window.borrow().as_ref())
                                    .is_ok_and(|w| !w.is_zero());
                                let phase = if closed { AssignmentPhase::Staged } else { AssignmentPhase::Installing };
                                if s.phase != phase {
                                    s.phase = phase;
                                    s.updated_at = Some(Time(jiff::Timestamp::now()));
                                }
                            }
                        });
                        if done && !installed_reported {
                            installed_reported = true;
                            info!(rollout = %a.rollout, %version, "installed; seeding for later waves");
                        }
                    }
                }
            };
            match result {
                Ok(outcome) => {
                    progress.send_modify(|s| {
                        s.phase = AssignmentPhase::Installed;
                        s.verified_bytes = size as i64;
                    });
                    Some(InstalledVersion {
                        target_path: index.target.path.clone(),
                        digest: index.payload.oci_digest(),
                        rollout: Some(a.rollout.clone()),
                        current: true,
                        installed_at: Some(Time(jiff::Timestamp::now())),
                    })
                    .filter(|_| outcome.version == version)
                }
                Err(e) if cancel.is_cancelled() && !installed_reported => {
                    info!(rollout = %a.rollout, error = %e, "assignment cancelled");
                    None
                }
                Err(e) => fail(e.to_string()),
            }
        })
    }
}

/// Waits until the node's own certificate is no longer revoked (the identity loop rotated it). False
/// when `cancel` fires first.
async fn wait_for_new_identity(tls: &FleetTls, cancel: &CancellationToken) -> bool {
    let mut rotations = tls.identity_updates();
    while tls.own_revoked() {
        tokio::select! {
            r = rotations.changed() => if r.is_err() { return false },
            _ = cancel.cancelled() => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::{RateLimits, follow, origin_requests_of, target_root, wait_for_new_identity};
    use crate::agent::desired::test_assignment;
    use crate::tls::{FleetTls, TlsIdentity};
    use pollen_trust::pki::FleetCa;
    use std::path::Path;
    use std::time::{Duration, SystemTime};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    fn identity(ca: &FleetCa) -> TlsIdentity {
        let kp = ca
            .issue("gw-7", SystemTime::now(), Duration::from_secs(3600))
            .unwrap();
        TlsIdentity::from_pem(
            kp.cert.cert_pem.as_bytes(),
            kp.key_pem.as_bytes(),
            ca.cert_pem().as_bytes(),
        )
        .unwrap()
    }

    fn revoke(ca: &FleetCa, tls: &FleetTls) {
        let set = crate::tls::testing::revocation_set(ca, 1, &[tls.current().serial()]);
        assert!(tls.install_revocations(set));
    }

    #[tokio::test]
    async fn a_revoked_node_resumes_once_its_certificate_is_rotated() {
        let ca = FleetCa::generate("fleet", Duration::from_secs(3600)).unwrap();
        let tls = FleetTls::new(identity(&ca));
        let cancel = CancellationToken::new();
        assert!(wait_for_new_identity(&tls, &cancel).await, "not revoked: no wait");
        revoke(&ca, &tls);
        let waiting = tokio::spawn({
            let (tls, cancel) = (tls.clone(), cancel.clone());
            async move { wait_for_new_identity(&tls, &cancel).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits while the own serial is revoked");
        tls.rotate(identity(&ca)).unwrap();
        let resumed = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("resumes after rotation")
            .unwrap();
        assert!(resumed);
    }

    #[tokio::test]
    async fn cancelling_ends_the_wait_for_a_new_certificate() {
        let ca = FleetCa::generate("fleet", Duration::from_secs(3600)).unwrap();
        let tls = FleetTls::new(identity(&ca));
        revoke(&ca, &tls);
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!wait_for_new_identity(&tls, &cancel).await);
    }

    #[test]
    fn the_origin_requests_of_an_assignment_within_bounds_only() {
        let mut a = test_assignment("ns/r", "idx");
        assert_eq!(origin_requests_of(&a), None);
        for (v, want) in [
            (8, Some(8)),
            (1, Some(1)),
            (64, Some(64)),
            (0, None),
            (65, None),
            (-3, None),
        ] {
            a.origin_requests = Some(v);
            assert_eq!(origin_requests_of(&a), want, "{v}");
        }
    }

    #[test]
    fn each_target_path_gets_its_own_install_directory() {
        let root = Path::new("/var/lib/pollen/install");
        assert_eq!(
            target_root(root, "firmware/gateway.bin").unwrap(),
            root.join("firmware/gateway.bin")
        );
        assert_eq!(target_root(root, "model.onnx").unwrap(), root.join("model.onnx"));
        assert_ne!(target_root(root, "a/x.bin"), target_root(root, "b/x.bin"));
        // Nothing escapes the install root or lands in another target's layout.
        for bad in [
            "/etc/shadow",
            "../../etc/shadow",
            "a/../../x",
            "a/current",
            "versions/x",
            "",
        ] {
            assert!(target_root(root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_lower_of_the_agent_and_assignment_limits_applies() {
        use super::lower_limit;
        assert_eq!(lower_limit(None, None), None);
        assert_eq!(lower_limit(Some(5000), None), Some(5000));
        assert_eq!(lower_limit(None, Some(2048)), Some(2048));
        assert_eq!(lower_limit(Some(5000), Some(2048)), Some(2048));
        assert_eq!(lower_limit(Some(1024), Some(2048)), Some(1024));
    }

    /// A running assignment follows the operator's changes: its origin cap, its rate limits (the
    /// lower of the agent's flag and the assignment's), its activation window and its peer grant reach
    /// the engine's channels, until cancelled.
    #[tokio::test]
    async fn assignment_changes_reach_the_running_engine() {
        let mut a = test_assignment("ns/r", "i");
        a.download_bytes_per_second = Some(1_000_000);
        let (tx, rx) = watch::channel(a.clone());
        let cancel = CancellationToken::new();
        let super::Followed {
            allowance: mut cap,
            mut limits,
            mut window,
            mut grant,
        } = follow(rx, Some(500_000), None, cancel.clone());
        assert_eq!(*cap.borrow(), None);
        assert_eq!(*grant.borrow(), None);
        assert_eq!(*window.borrow(), None);
        assert_eq!(
            *limits.borrow(),
            RateLimits {
                upload: Some(500_000),
                download: Some(1_000_000)
            }
        );
        a.origin_allowance_bytes = Some(4096);
        a.upload_bytes_per_second = Some(100_000);
        a.download_bytes_per_second = None;
        let night = pollen_crds::rollout::ActivationWindow::parse("01:00-04:00").unwrap();
        a.activation_window = Some(night.clone());
        a.peer_grant = Some("AQID".into());
        tx.send_replace(a.clone());
        let wait = Duration::from_secs(5);
        tokio::time::timeout(wait, cap.changed()).await.unwrap().unwrap();
        assert_eq!(*cap.borrow_and_update(), Some(4096));
        tokio::time::timeout(wait, limits.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            *limits.borrow_and_update(),
            RateLimits {
                upload: Some(100_000),
                download: None
            }
        );
        tokio::time::timeout(wait, window.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*window.borrow_and_update(), Some(night));
        tokio::time::timeout(wait, grant.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*grant.borrow_and_update(), Some(vec![1, 2, 3]), "decoded");
        // A malformed grant counts as none.
        a.peer_grant = Some("not base64!".into());
        tx.send_replace(a);
        tokio::time::timeout(wait, grant.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*grant.borrow_and_update(), None);
        cancel.cancel();
        assert!(
            tokio::time::timeout(wait, cap.changed()).await.unwrap().is_err(),
            "the follower stops when cancelled"
        );
    }
}
