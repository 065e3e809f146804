//! Standalone mode: everything from flags, no Kubernetes. Verify the chunk index through pollen-trust,
//! run the swarm, install atomically, then optionally keep seeding.
//!
//! Rollback protection uses the install root: the sequence of the active version is the last one
//! accepted for the target, so an index with a lower sequence is refused unless marked as a downgrade.
//!
//! Identity comes from certificate files (or a live [`FleetTls`] handed in by the agent). An initial
//! fleet revocation list may be given (`--crl`); it must verify against the fleet CA, and a list that
//! revokes this node's own certificate stops the run before anything else. Newer lists learned from
//! peers replace it. A run that is seeding ends with [`EngineError::Revoked`] when its own certificate
//! becomes revoked.
//!
//! Non-goals: several indexes per process, configuration files (flags and environment only).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pollen_trust::keys::PublicKey;
use pollen_trust::registry::Registry;
use pollen_trust::verified::VerifiedIndex;
use pollen_trust::verify::{TrustPolicy, VerifyContext};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::{Engine, EngineConfig, EngineError};
use crate::install::{InstallError, Installer};
use crate::metrics::Metrics;
use crate::picker::PickerConfig;
use crate::tls::{FleetTls, TlsIdentity};

/// Everything standalone mode needs.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// Expected node name; must match the certificate when given.
    pub name: Option<String>,
    /// Site label.
    pub site: String,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Node certificate (PEM).
    pub cert: PathBuf,
    /// Node key (PEM).
    pub key: PathBuf,
    /// Fleet CA (PEM).
    pub ca: PathBuf,
    /// A live TLS handle to use instead of loading `cert`, `key` and `ca` (the agent passes the one it
    /// rotates and installs revocation lists into).
    pub tls: Option<FleetTls>,
    /// An initial CA-signed revocation list (PEM or DER X.509 CRL).
    pub crl: Option<PathBuf>,
    /// Static peers.
    pub peers: Vec<SocketAddr>,
    /// Pinned chunk-index reference, `registry/repo@sha256:…`.
    pub index: String,
    /// The signed objects behind `index`, when the caller fetched them already (the agent does, for its
    /// up-front check): they are verified again here but not fetched again.
    pub evidence: Option<pollen_trust::verify::Evidence>,
    /// Publisher public keys (PEM).
    pub publisher_keys: Vec<PathBuf>,
    /// Director public key (PEM).
    pub director_key: PathBuf,
    /// The registry client (TLS, credentials, insecure hosts) for verification and origin reads.
    pub registry: Registry,
    /// Chunk store directory.
    pub data_dir: PathBuf,
    /// Install root.
    pub install_root: PathBuf,
    /// Metrics listen address.
    pub metrics: Option<SocketAddr>,
    /// Upload limit, bytes/s.
    pub upload_limit: Option<u64>,
    /// Download limit, bytes/s.
    pub download_limit: Option<u64>,
    /// Origin byte budget for this rollout on this node.
    pub origin_budget: Budget,
    /// A live cap on top of the budget, which may change while the run goes (the agent passes the
    /// cap the operator writes from the rollout's origin budget; see `EngineConfig::origin_allowance`).
    pub origin_allowance: Option<tokio::sync::watch::Receiver<Option<u64>>>,
    /// Rate limits that may change while the run goes (the agent passes the assignment's as the
    /// rollout changes; see `EngineConfig::rate_limits`).
    pub rate_limits: Option<tokio::sync::watch::Receiver<crate::ratelimit::RateLimits>>,
    /// How long without any chunk arriving before the node stops waiting on its peers and fetches
    /// from the origin regardless of who was to (`PickerConfig::stall_after`; `None`: its default).
    pub peer_wait: Option<Duration>,
    /// The daily window (UTC) in which the verified payload may be installed; outside it the node
    /// waits, still serving. It may change while the node waits (`None` in the channel: no window).
    pub activation: Option<tokio::sync::watch::Receiver<Option<pollen_crds::rollout::ActivationWindow>>>,
    /// This node's peer grant for the index (base64, `pollen_trust::grant`), for when the signed index
    /// does not list it. A malformed one is logged and ignored: the node then trades with no peer.
    pub peer_grant: Option<String>,
    /// Grants passed while the node runs (the agent: from the assignment), raw; the current one is
    /// the starting grant (in place of `peer_grant`), and each change replaces it
    /// (`EngineConfig::grant_updates`).
    pub peer_grant_updates: Option<tokio::sync::watch::Receiver<Option<Vec<u8>>>>,
    /// Never read from the origin.
    pub no_origin: bool,
    /// Range GETs the fleet keeps in flight to the origin at once, shared among the nodes that read
    /// from it (`PickerConfig::origin_concurrency`; `None`: its default).
    pub origin_requests: Option<u32>,
    /// Control messages queued per peer before one is dropped and the peer resynced
    /// (`EngineConfig::control_queue`; `None`: its default).
    pub control_queue: Option<usize>,
    /// Seed for the picker's random choices.
    pub seed: Option<u64>,
    /// After installing: keep serving this long (`None`: until shutdown; zero: exit at once).
    pub seed_for: Option<Duration>,
}

/// Origin byte budget per rollout and node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// No cap (the origin-once rule still applies).
    Unlimited,
    /// At most one payload size.
    OneCopy,
    /// At most this many bytes.
    Bytes(u64),
}

impl Budget {
    /// Reads the `--origin-budget` flag: a byte count, `one-copy` or `unlimited`.
    pub fn parse(s: &str) -> Result<Budget, String> {
        match s {
            "one-copy" => Ok(Budget::OneCopy),
            "unlimited" => Ok(Budget::Unlimited),
            n => n
                .parse()
                .map(Budget::Bytes)
                .map_err(|_| format!("{s:?}: expected bytes, one-copy or unlimited")),
        }
    }

    /// The cap in bytes for a payload of `size` bytes.
    pub fn bytes(self, size: u64) -> Option<u64> {
        match self {
            Budget::Unlimited => None,
            Budget::OneCopy => Some(size),
            Budget::Bytes(b) => Some(b),
        }
    }
}

/// What a standalone run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The installed file.
    pub installed: PathBuf,
    /// The installed version name.
    pub version: String,
    /// Bytes this node read from the origin.
    pub origin_bytes: u64,
    /// Seconds from start to complete.
    pub seconds: f64,
}

/// Standalone errors, each saying which step failed.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// Certificates or keys could not be loaded.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The certificate names another node.
    #[error("certificate names {cert:?}, but --name is {flag:?}")]
    NameMismatch {
        /// Name in the certificate.
        cert: String,
        /// Name from the flag.
        flag: String,
    },
    /// A trust key could not be loaded.
    #[error("key {path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: pollen_trust::keys::KeyError,
    },
    /// The registry client could not be built.
    #[error("registry: {0}")]
    Registry(#[source] pollen_trust::registry::RegistryError),
    /// The index failed verification.
    #[error("index verification: {0}")]
    Verify(#[source] pollen_trust::verify::VerifyError),
    /// The metrics server could not listen.
    #[error("metrics listen {addr}: {source}")]
    Metrics {
        /// Address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The revocation list given with `--crl` could not be read or is not signed by the fleet CA.
    #[error("revocation list {path}: {detail}")]
    Crl {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The swarm failed.
    #[error("swarm: {0}")]
    Engine(#[from] EngineError),
    /// Installing failed; the previous version stays active.
    #[error("install: {0}")]
    Install(#[from] InstallError),
    /// The activation window cannot be read; nothing is installed.
    #[error("activation: {0}")]
    Activation(String),
    /// Shut down while the verified payload waited for the activation window; nothing is installed.
    #[error("stopped while waiting for the activation window")]
    StoppedStaged,
    /// The active version has the index's sequence but another payload: one sequence names one payload.
    #[error(
        "sequence {sequence} is already installed with payload {active_digest}; the index names another \
         payload for the same sequence, refused"
    )]
    SequenceReused {
        /// The sequence.
        sequence: u64,
        /// The first hex digits of the active payload's digest.
        active_digest: String,
    },
}

/// Refuses an index whose sequence equals the active version's but whose payload differs. The active
/// version is named `<sequence:020>-<first 12 hex digits of the payload digest>`.
pub fn check_active(active: Option<&str>, sequence: u64, digest: &[u8; 32]) -> Result<(), StandaloneError> {
    let Some((seq, prefix)) = active.and_then(|a| a.split_once('-')) else {
        return Ok(());
    };
    if seq.parse::<u64>().ok() == Some(sequence) && !hex::encode(digest).starts_with(prefix) {
        return Err(StandaloneError::SequenceReused {
            sequence,
            active_digest: prefix.to_owned(),
        });
    }
    Ok(())
}

/// Refuses to activate a payload whose index has expired by `now` (unix seconds): a payload staged
/// while its window was closed is checked again when the window opens.
pub fn check_unexpired(expires_at: Option<u64>, now: u64) -> Result<(), StandaloneError> {
    match expires_at {
        Some(expires_at) if now >= expires_at => Err(StandaloneError::Verify(
            pollen_trust::verify::VerifyError::Expired { expires_at, now },
        )),
        _ => Ok(()),
    }
}

/// The sequence of the active version, from its name `<sequence:020>-<digest>`.
fn active_sequence(installer: &Installer) -> Option<u64> {
    installer.current()?.split('-').next()?.parse().ok()
}

fn target_file(index: &VerifiedIndex) -> String {
    Path::new(&index.target.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .unwrap_or_else(|| "payload".into())
}

/// Verifies the index, runs the swarm until complete, installs, then seeds per the options. Ends early
/// with [`EngineError::Stopped`] when `shutdown` fires before completion.
pub async fn run(opts: StandaloneOptions, shutdown: CancellationToken) -> Result<Outcome, StandaloneError> {
    run_with_metrics(opts, Arc::new(Metrics::default()), shutdown).await
}

/// [`run`] recording into the given metrics (tests read them directly).
pub async fn run_with_metrics(
    opts: StandaloneOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Outcome, StandaloneError> {
    run_with_members(opts, Vec::new(), metrics, shutdown).await
}

/// [`run_with_metrics`] with the names of the static peers (from `--peer NAME@ADDR`): they count in the
/// origin-once ownership from the start, before their connections are up.
pub async fn run_with_members(
    opts: StandaloneOptions,
    peer_names: Vec<String>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Outcome, StandaloneError> {
    let tls = match &opts.tls {
        Some(t) => t.clone(),
        None => FleetTls::new(TlsIdentity::load(&opts.cert, &opts.key, &opts.ca)?),
    };
    if let Some(flag) = &opts.name
        && *flag != tls.name()
    {
        return Err(StandaloneError::NameMismatch {
            cert: tls.name(),
            flag: flag.clone(),
        });
    }
    if let Some(path) = &opts.crl {
        let crl_err = |detail: String| StandaloneError::Crl {
            path: path.clone(),
            detail,
        };
        let bytes = std::fs::read(path).map_err(|e| crl_err(e.to_string()))?;
        let set = pollen_trust::pki::verify_revocation_list(&bytes, tls.ca_pem())
            .map_err(|e| crl_err(e.to_string()))?;
        let number = set.number;
        if tls.install_revocations(set) {
            info!(number, "revocation list loaded");
        }
    }
    if tls.own_revoked() {
        return Err(StandaloneError::Engine(EngineError::Revoked {
            serial: tls.current().serial().to_owned(),
            list: *tls.revocation_updates().borrow(),
        }));
    }
    let key = |p: &PathBuf| {
        PublicKey::from_file(p).map_err(|source| StandaloneError::Key {
            path: p.clone(),
            source,
        })
    };
    let trust = TrustPolicy {
        publisher_keys: opts.publisher_keys.iter().map(key).collect::<Result<_, _>>()?,
        director_key: key(&opts.director_key)?,
    };
    if let Some(addr) = opts.metrics {
        let (bound, _task) = crate::metrics::serve(addr, metrics.clone(), shutdown.clone())
            .await
            .map_err(|source| StandaloneError::Metrics { addr, source })?;
        info!(%bound, "metrics listening");
    }
    let reg = &opts.registry;
    // Rollback protection: the active version's sequence is the last accepted one for its target.
    let probe = Installer::new(&opts.install_root, 0);
    // Fetched once; verified (a pure check) without, then with, the active version's sequence.
    let evidence = match &opts.evidence {
        Some(ev) => ev.clone(),
        None => pollen_trust::verify::fetch_evidence(reg, &opts.index, &trust)
            .await
            .map_err(StandaloneError::Verify)?,
    };
    let mut ctx = VerifyContext::now();
    let index = pollen_trust::verify::verify_evidence(&evidence, &trust, &ctx);
    let index = match (index, active_sequence(&probe)) {
        (Ok(ix), Some(seq)) => {
            ctx.last_sequence.insert(ix.target.path.clone(), seq);
            pollen_trust::verify::verify_evidence(&evidence, &trust, &ctx).map_err(StandaloneError::Verify)?
        }
        (r, _) => r.map_err(StandaloneError::Verify)?,
    };
    check_active(probe.current().as_deref(), index.sequence, &index.payload.digest)?;
    info!(index = %hex::encode(index.id()), rollout = %index.rollout, sequence = index.sequence,
          size = index.payload.size, chunks = index.chunk_count(), "index verified");

    let mut cfg = EngineConfig::new(tls, opts.listen, opts.data_dir.clone());
    cfg.site = opts.site.clone();
    cfg.peers = opts.peers.clone();
    cfg.peer_names = peer_names;
    cfg.upload_limit = opts.upload_limit;
    cfg.download_limit = opts.download_limit;
    cfg.origin = !opts.no_origin;
    cfg.registry = Some(reg.clone());
    cfg.origin_allowance = opts.origin_allowance.clone();
    cfg.rate_limits = opts.rate_limits.clone();
    let defaults = PickerConfig::default();
    cfg.picker = PickerConfig {
        origin_budget: opts.origin_budget.bytes(index.payload.size),
        stall_after: opts.peer_wait.unwrap_or(defaults.stall_after),
        origin_concurrency: opts.origin_requests.unwrap_or(defaults.origin_concurrency),
        ..defaults
    };
    if let Some(s) = opts.seed {
        cfg.seed = s;
    }
    if let Some(q) = opts.control_queue {
        cfg.control_queue = q;
    }
    cfg.director_key = Some(trust.director_key.clone());
    cfg.grant_updates = opts.peer_grant_updates.clone();
    cfg.grant = match &opts.peer_grant_updates {
        Some(rx) => rx.borrow().clone(),
        None => opts
            .peer_grant
            .as_deref()
            .and_then(|g| match pollen_trust::grant::decode(g) {
                Ok(raw) => Some(raw),
                Err(e) => {
                    warn!(error = %e, "ignoring the peer grant");
                    None
                }
            }),
    };
    if !index.authorises(&cfg.tls.name()) {
        if cfg.grant.is_some() {
            info!("this node is not listed by the index; it presents its peer grant to its peers");
        } else {
            warn!("this node is not listed by the index and holds no peer grant: its peers will refuse it");
        }
    }
    let mut engine = Engine::start(cfg, index.clone(), metrics.clone(), shutdown.clone()).await?;
    let res = engine.wait_complete().await;
    if let Err(e) = res {
        engine.shutdown().await;
        return Err(e.into());
    }
    let seconds = metrics
        .time_to_complete
        .get_or_create(&crate::metrics::IndexLabel {
            index: hex::encode(index.id()),
        })
        .get();
    // Outside the activation window: keep serving, install when it opens.
    if let Some(window) = opts.activation.clone() {
        let failed = tokio::select! {
            r = crate::activation::wait_open(window) => r.err().map(StandaloneError::Activation),
            _ = shutdown.cancelled() => Some(StandaloneError::StoppedStaged),
            e = engine.wait_failed() => Some(e.into()),
        };
        if let Some(e) = failed {
            engine.shutdown().await;
            return Err(e);
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fresh = check_unexpired(index.expires_at, now)
        .and_then(|()| check_active(probe.current().as_deref(), index.sequence, &index.payload.digest));
    if let Err(e) = fresh {
        engine.shutdown().await;
        return Err(e);
    }
    let installer = Installer::new(&opts.install_root, index.target.keep_versions);
    let version = format!(
        "{:020}-{}",
        index.sequence,
        &hex::encode(index.payload.digest)[..12]
    );
    let file = target_file(&index);
    let payload = engine.payload_path();
    let digest = index.payload.digest;
    let v2 = version.clone();
    let installed = tokio::task::spawn_blocking(move || installer.install(&payload, &digest, &v2, &file))
        .await
        .expect("install task");
    let installed = match installed {
        Ok(p) => p,
        Err(e) => {
            engine.shutdown().await;
            return Err(e.into());
        }
    };
    let origin_bytes = engine.origin_bytes();
    info!(path = %installed.display(), %version, origin_bytes, seconds, "installed");
    // Seed until the time is up or shutdown; a failure while seeding (this node's certificate revoked)
    // ends the run with that error.
    let seed_until = async {
        match opts.seed_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let failed = match opts.seed_for {
        Some(d) if d.is_zero() => None,
        _ => tokio::select! {
            _ = seed_until => None,
            _ = shutdown.cancelled() => None,
            e = engine.wait_failed() => match e {
                EngineError::Stopped => None,
                e => Some(e),
            },
        },
    };
    engine.shutdown().await;
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(Outcome {
        installed,
        version,
        origin_bytes,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use pollen_trust::pki::FleetCa;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// Options with real certificate files and a CRL file; everything after the TLS setup points nowhere,
    /// since these tests end before the index is fetched.
    fn options(dir: &Path, ca: &FleetCa, crl: &[u8]) -> (StandaloneOptions, String) {
        let kp = ca.issue("node-a", SystemTime::now(), DAY).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let opts = StandaloneOptions {
            name: None,
            site: "default".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: write("cert.pem", kp.cert.cert_pem.as_bytes()),
            key: write("key.pem", kp.key_pem.as_bytes()),
            ca: write("ca.pem", ca.cert_pem().as_bytes()),
            tls: None,
            crl: Some(write("fleet.crl", crl)),
            peers: Vec::new(),
            index: "127.0.0.1:1/none@sha256:00".into(),
            evidence: None,
            publisher_keys: Vec::new(),
            director_key: dir.join("missing-director.pem"),
            registry: Registry::new(&pollen_trust::RegistryOptions::insecure_for("127.0.0.1:1")).unwrap(),
            data_dir: dir.join("data"),
            install_root: dir.join("root"),
            metrics: None,
            upload_limit: None,
            download_limit: None,
            origin_budget: Budget::Unlimited,
            peer_wait: None,
            rate_limits: None,
            origin_allowance: None,
            activation: None,
            peer_grant: None,
            peer_grant_updates: None,
            no_origin: true,
            origin_requests: None,
            control_queue: None,
            seed: None,
            seed_for: Some(Duration::ZERO),
        };
        (opts, kp.cert.facts.serial)
    }

    fn crl(ca: &FleetCa, serials: &[&str]) -> String {
        crate::tls::testing::crl_pem(ca, 5, serials)
    }

    #[tokio::test]
    async fn a_crl_that_does_not_verify_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::generate("fleet", DAY).unwrap();
        let other = FleetCa::generate("other", DAY).unwrap();
        for bad in [b"not a list".to_vec(), crl(&other, &[]).into_bytes()] {
            let (opts, _) = options(dir.path(), &ca, &bad);
            let r = run(opts, CancellationToken::new()).await;
            assert!(matches!(r, Err(StandaloneError::Crl { .. })), "{r:?}");
        }
    }

    #[tokio::test]
    async fn a_crl_revoking_this_node_stops_it_before_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::generate("fleet", DAY).unwrap();
        // First a list revoking someone else: the run gets past the TLS setup and fails later, at the
        // missing director key.
        let (opts, _) = options(dir.path(), &ca, crl(&ca, &["abcd"]).as_bytes());
        let r = run(opts, CancellationToken::new()).await;
        assert!(matches!(r, Err(StandaloneError::Key { .. })), "{r:?}");
        // Then one naming this node's own serial.
        let (mut opts, serial) = options(dir.path(), &ca, b"");
        std::fs::write(opts.crl.as_ref().unwrap(), crl(&ca, &[&serial])).unwrap();
        opts.name = Some("node-a".into());
        let r = run(opts, CancellationToken::new()).await;
        match r {
            Err(StandaloneError::Engine(EngineError::Revoked { serial: s, list })) => {
                assert_eq!(s, serial);
                assert_eq!(list, 5);
            }
            other => panic!("expected a revoked error, got {other:?}"),
        }
    }

    #[test]
    fn one_sequence_names_one_payload() {
        let d = [0xabu8; 32];
        let active = format!("{:020}-{}", 7, &hex::encode(d)[..12]);
        assert!(check_active(None, 7, &d).is_ok());
        assert!(check_active(Some(&active), 7, &d).is_ok());
        assert!(check_active(Some(&active), 8, &[1; 32]).is_ok());
        assert!(matches!(
            check_active(Some(&active), 7, &[1; 32]),
            Err(StandaloneError::SequenceReused { sequence: 7, .. })
        ));
    }

    #[test]
    fn an_expired_index_is_not_activated() {
        assert!(check_unexpired(None, u64::MAX).is_ok());
        assert!(check_unexpired(Some(100), 99).is_ok());
        assert!(matches!(
            check_unexpired(Some(100), 100),
            Err(StandaloneError::Verify(
                pollen_trust::verify::VerifyError::Expired { .. }
            ))
        ));
    }
}
