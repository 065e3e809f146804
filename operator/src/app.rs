//! The operator process: flags, mounted keys, the HTTP endpoints, leader election and the controller,
//! wired together with one shutdown signal.
//!
//! Every flag maps one-to-one onto a Helm value. Keys come from mounted files only, never from API
//! reads: the director signing key, the registry credentials (a Docker config) and the fleet CA.
//! The core loop needs only the Pollen CRDs; Leases and Events are used where the cluster serves them.
//!
//! Non-goals: building the Kubernetes client (the caller passes one, so tests can point it anywhere).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};
use kube::Client;
use pollen_trust::SigningKey;
use pollen_trust::registry::RegistryArgs;
use prometheus_client::registry::Registry;
use tokio::sync::{RwLock, watch};
use tracing::{error, info, warn};

use crate::controller::{self, Config, Context, Diagnostics};
use crate::csr::{self, SignerContext};
use crate::leader::{self, LeaderElection};
use crate::metrics::Metrics;
use crate::revocation::{self, Issued, Revoker};
use crate::signer::SignerPolicy;
use crate::trust_pipeline::{SetupError, TrustPipeline};
use pollen_trust::pki::{FleetCa, MAX_NODE_LIFETIME, MIN_NODE_LIFETIME};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The operator's flags.
#[derive(Clone, Debug, Args)]
pub struct Options {
    /// The director's private key (cosign format, encrypted PEM), a mounted file. It signs every
    /// chunk index.
    #[arg(long, env = "POLLEN_DIRECTOR_KEY", value_name = "FILE")]
    pub director_key: PathBuf,

    /// Password of the director key. Falls back to `COSIGN_PASSWORD`, then to an empty password.
    #[arg(
        long,
        env = "POLLEN_DIRECTOR_KEY_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub director_key_password: Option<String>,

    /// A mounted file holding the director key's password (trailing newline ignored). Wins over
    /// `--director-key-password`.
    #[arg(long, value_name = "FILE")]
    pub director_key_password_file: Option<PathBuf>,

    /// How to reach registries: `--docker-config` (a mounted `kubernetes.io/dockerconfigjson` Secret
    /// with the push credential), `--registry-ca`, `--insecure-registry HOST`.
    #[command(flatten)]
    pub registry: RegistryArgs,

    /// The fleet CA certificate (PEM) the operator signs node certificates and the revocation list
    /// with. Set (with `--fleet-ca-key`): EdgeNodes get the `pollen.dev/revocation` finalizer,
    /// quarantined and deleted nodes are revoked, and, where the cluster serves
    /// `certificates.k8s.io/v1`, node CertificateSigningRequests are approved and signed.
    #[arg(
        long,
        env = "POLLEN_FLEET_CA_CERT",
        value_name = "FILE",
        requires = "fleet_ca_key"
    )]
    pub fleet_ca_cert: Option<PathBuf>,

    /// The fleet CA private key (PEM), a mounted file.
    #[arg(
        long,
        env = "POLLEN_FLEET_CA_KEY",
        value_name = "FILE",
        requires = "fleet_ca_cert"
    )]
    pub fleet_ca_key: Option<PathBuf>,

    /// The CSR signerName the operator signs node certificates for (node identity issuance).
    #[arg(long, default_value = "pollen.dev/edge-peer", value_name = "NAME")]
    pub signer_name: String,

    /// Lifetime of the node certificates the operator signs when a request sets no
    /// `expirationSeconds`, e.g. `24h`.
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub certificate_lifetime: String,

    /// The longest `expirationSeconds` a node certificate request may ask for (longer ones are
    /// denied with `LifetimeTooLong`); at most 7 days.
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub max_certificate_lifetime: String,

    /// The ServiceAccount of the edge-node agents, `NAME` (in `--lease-namespace`, i.e. the
    /// operator's own namespace) or `NAMESPACE/NAME`. Only its requests are approved; the
    /// requesting pods are looked up in its namespace.
    #[arg(
        long,
        env = "POLLEN_EDGE_NODE_SERVICE_ACCOUNT",
        default_value = "pollen-edge-node",
        value_name = "[NAMESPACE/]NAME"
    )]
    pub edge_node_service_account: String,

    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    #[arg(
        long,
        alias = "metrics",
        env = "POLLEN_METRICS_ADDR",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub metrics_addr: SocketAddr,

    /// Elect a leader through a coordination.k8s.io Lease, so only one replica acts.
    /// `--leader-election=false` turns it off (one replica only!).
    #[arg(long, alias = "leader-elect", default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,

    /// Where the API server does not serve Leases, run without leader election instead of failing.
    #[arg(long)]
    pub leader_election_optional: bool,

    /// The namespace of the Lease.
    #[arg(
        long,
        alias = "leader-election-namespace",
        env = "POD_NAMESPACE",
        default_value = "default",
        value_name = "NAMESPACE"
    )]
    pub lease_namespace: String,

    /// The name of the Lease.
    #[arg(
        long,
        alias = "leader-election-lease-name",
        default_value = "pollen-operator",
        value_name = "NAME"
    )]
    pub lease_name: String,

    /// How long a Lease stays valid without renewal, in seconds.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub lease_duration_seconds: u64,

    /// Copy the labels of each EdgeNode's Kubernetes Node whose key starts with PREFIX (repeat for
    /// more). Rollouts select by these labels, so only prefixes a kubelet cannot set on its own Node
    /// are safe from a compromised device: the default is `node-restriction.kubernetes.io/` and
    /// `node-role.kubernetes.io/`.
    #[arg(
        long = "copy-node-labels",
        value_name = "PREFIX",
        default_values_t = crate::node_labels::DEFAULT_PREFIXES.map(String::from)
    )]
    pub copy_node_labels: Vec<String>,

    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub identity: Option<String>,

    /// Watch UpdateRollouts in this namespace only. Unset: all namespaces. EdgeNodes and
    /// TrustPolicies are cluster-scoped and always watched.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// How many rollouts are reconciled at the same time.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub concurrency: u16,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "POLLEN_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Shorthand for `--log-format json`.
    #[arg(long)]
    pub log_json: bool,
}

/// Why the operator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The director key could not be read or decrypted.
    #[error("director key {path}: {source}")]
    DirectorKey {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: pollen_trust::keys::KeyError,
    },
    /// A mounted file could not be read.
    #[error("{what} {path}: {source}")]
    File {
        /// Which file.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The registry clients could not be built.
    #[error(transparent)]
    Pipeline(#[from] SetupError),
    /// Leader election was asked for, and the API server does not serve Leases.
    #[error(
        "leader election is on, but the API server does not serve coordination.k8s.io/v1 Leases; \
         pass --leader-election-optional to run without it, or --leader-election=false"
    )]
    LeasesNotServed,
    /// The Lease could not be taken or was lost.
    #[error("leader election: {0}")]
    Lease(#[source] kube::Error),
    /// This replica lost the Lease and stopped.
    #[error("lost the leader lease; stopping so that a restart rejoins as a follower")]
    LeaseLost,
    /// The CRDs are not installed or the API server is unreachable.
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// The fleet CA could not be loaded.
    #[error("fleet CA: {0}")]
    FleetCa(#[source] pollen_trust::pki::PkiError),
    /// A flag has a value the operator cannot use.
    #[error("--{flag}: {detail}")]
    Flag {
        /// The flag, without dashes.
        flag: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The HTTP endpoint could not bind.
    #[error("metrics endpoint {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn check_readable(what: &'static str, path: &Option<PathBuf>) -> Result<(), AppError> {
    if let Some(path) = path {
        std::fs::metadata(path)
            .and_then(|_| std::fs::File::open(path).map(|_| ()))
            .map_err(|source| AppError::File {
                what,
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The node identity settings: the fleet CA and the signer's rules.
struct Identity {
    ca: Arc<FleetCa>,
    policy: SignerPolicy,
}

fn lifetime_flag(flag: &'static str, value: &str) -> Result<Duration, AppError> {
    let d = pollen_crds::duration::parse(value).map_err(|e| AppError::Flag {
        flag,
        detail: e.to_string(),
    })?;
    if !(MIN_NODE_LIFETIME..=MAX_NODE_LIFETIME).contains(&d) {
        return Err(AppError::Flag {
            flag,
            detail: format!(
                "{value} is outside {}s..={}s",
                MIN_NODE_LIFETIME.as_secs(),
                MAX_NODE_LIFETIME.as_secs()
            ),
        });
    }
    Ok(d)
}

/// The signer's rules from the flags (checked even without a CA, so a typo fails early).
fn signer_policy(opts: &Options) -> Result<SignerPolicy, AppError> {
    let default_lifetime = lifetime_flag("certificate-lifetime", &opts.certificate_lifetime)?;
    let max_lifetime = lifetime_flag("max-certificate-lifetime", &opts.max_certificate_lifetime)?;
    if default_lifetime > max_lifetime {
        return Err(AppError::Flag {
            flag: "certificate-lifetime",
            detail: format!(
                "{} is longer than --max-certificate-lifetime {}",
                opts.certificate_lifetime, opts.max_certificate_lifetime
            ),
        });
    }
    let sa = opts.edge_node_service_account.trim();
    let (namespace, name) = match sa.split_once('/') {
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (opts.lease_namespace.clone(), sa.to_owned()),
    };
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return Err(AppError::Flag {
            flag: "edge-node-service-account",
            detail: format!("{sa:?} is not NAME or NAMESPACE/NAME"),
        });
    }
    if opts.signer_name.is_empty() {
        return Err(AppError::Flag {
            flag: "signer-name",
            detail: "empty".into(),
        });
    }
    Ok(SignerPolicy {
        signer_name: opts.signer_name.clone(),
        service_account_namespace: namespace,
        service_account_name: name,
        max_lifetime,
        default_lifetime,
    })
}

fn load_identity(opts: &Options) -> Result<Option<Identity>, AppError> {
    let policy = signer_policy(opts)?;
    let (Some(cert), Some(key)) = (&opts.fleet_ca_cert, &opts.fleet_ca_key) else {
        return Ok(None);
    };
    let read = |what: &'static str, path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|source| AppError::File {
            what,
            path: path.clone(),
            source,
        })
    };
    let ca = FleetCa::from_pem(&read("fleet CA certificate", cert)?, &read("fleet CA key", key)?)
        .map_err(AppError::FleetCa)?;
    Ok(Some(Identity {
        ca: Arc::new(ca),
        policy,
    }))
}

/// Start the identity tasks: revocation always, the CSR signer where the API is served.
async fn start_identity(
    identity: Identity,
    client: &Client,
    metrics: &Metrics,
    stopped: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let issued = Arc::new(Issued::default());
    let revoker = Arc::new(Revoker::new(
        client.clone(),
        identity.ca.clone(),
        issued.clone(),
        metrics.clone(),
    ));
    let mut tasks = vec![tokio::spawn(revocation::run(revoker, stopped()))];
    if csr::served(client).await {
        let ctx = Arc::new(SignerContext::new(
            client.clone(),
            identity.ca,
            identity.policy,
            issued,
            metrics.clone(),
        ));
        tasks.push(tokio::spawn(csr::run(ctx, stopped())));
    } else {
        warn!(
            "the API server does not serve certificates.k8s.io/v1 CertificateSigningRequests: node certificates \
             are not signed here (revocation from EdgeNode.status.certificate still works)"
        );
    }
    tasks
}

/// Run the operator until `shutdown` resolves (or the Lease is lost).
pub async fn run(
    opts: Options,
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let password = match &opts.director_key_password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AppError::File {
                what: "director key password file",
                path: path.clone(),
                source,
            })?;
            text.trim_end_matches(['\n', '\r']).as_bytes().to_vec()
        }
        None => pollen_trust::keys::password(opts.director_key_password.as_deref()),
    };
    let director =
        SigningKey::from_file(&opts.director_key, &password).map_err(|source| AppError::DirectorKey {
            path: opts.director_key.clone(),
            source,
        })?;
    check_readable("docker config", &opts.registry.docker_config)?;
    check_readable("registry CA bundle", &opts.registry.registry_ca)?;
    check_readable("fleet CA certificate", &opts.fleet_ca_cert)?;
    check_readable("fleet CA key", &opts.fleet_ca_key)?;
    let identity = load_identity(&opts)?;
    if identity.is_none() {
        info!("no fleet CA mounted: node certificate issuance and revocation are off");
    }
    let pipeline = TrustPipeline::new(&opts.registry.options(), director)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            info!("shutting down");
            let _ = stop_tx.send(true);
        });
    }
    let stopped = move || -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>> {
        let mut rx = stop_rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    };

    let mut registry = Registry::with_prefix("pollen_operator");
    let metrics = Metrics::default().register(&mut registry);
    let diagnostics = Arc::new(RwLock::new(Diagnostics::default()));
    let listener = tokio::net::TcpListener::bind(opts.metrics_addr)
        .await
        .map_err(|source| AppError::Http {
            addr: opts.metrics_addr,
            source,
        })?;
    let router = crate::http::router(Arc::new(registry), diagnostics.clone());
    let http_stop = stopped();
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(http_stop)
            .await
        {
            error!("metrics endpoint failed: {e}");
        }
    });
    info!(addr = %opts.metrics_addr, "serving /metrics, /healthz and /readyz");

    let mut election = None;
    if opts.leader_election {
        if leader::leases_served(&client).await {
            let identity = opts
                .identity
                .clone()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("pollen-operator-{}", std::process::id()));
            let le = Arc::new(LeaderElection::new(
                client.clone(),
                &opts.lease_namespace,
                &opts.lease_name,
                &identity,
                Duration::from_secs(opts.lease_duration_seconds.max(3)),
            ));
            // A standby is ready once the CRDs answer (so both replicas count as available); the
            // leader is ready again once its caches synced.
            let probe: kube::Api<pollen_crds::UpdateRollout> = kube::Api::all(client.clone());
            probe
                .list(&kube::api::ListParams::default().limit(1))
                .await
                .map_err(AppError::Kube)?;
            diagnostics.write().await.ready = true;
            tokio::select! {
                r = le.acquire() => r.map_err(AppError::Lease)?,
                _ = stopped() => { let _ = http.await; return Ok(()); }
            }
            diagnostics.write().await.ready = false;
            election = Some(le);
        } else if opts.leader_election_optional {
            warn!(
                "the API server does not serve coordination.k8s.io/v1 Leases: running WITHOUT leader election \
                 (--leader-election-optional); run a single replica"
            );
        } else {
            let _ = stop_tx.send(true);
            let _ = http.await;
            return Err(AppError::LeasesNotServed);
        }
    } else {
        info!("leader election is off (--leader-election=false); run a single replica");
    }

    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(le) = election.clone() {
        let stop_tx = stop_tx.clone();
        let lost = lost.clone();
        let mut rx = stop_tx.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = le.hold() => {
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = stop_tx.send(true);
                }
                _ = rx.wait_for(|s| *s) => {}
            }
        });
    }

    let labels_task = tokio::spawn(crate::node_labels::run(
        client.clone(),
        opts.copy_node_labels.clone(),
        stopped(),
    ));
    let identity_tasks = match identity {
        Some(identity) => start_identity(identity, &client, &metrics, &stopped).await,
        None => {
            if let Err(e) = revocation::release_finalizers(client.clone()).await {
                warn!(
                    "could not release EdgeNodes from the {} finalizer: {e}",
                    revocation::FINALIZER
                );
            }
            Vec::new()
        }
    };
    let ctx = Arc::new(
        Context::new(
            client,
            Arc::new(pipeline),
            metrics,
            diagnostics,
            Config::default(),
        )
        .await,
    );
    let result = controller::run(ctx, opts.namespace.as_deref(), opts.concurrency.max(1), stopped()).await;
    let _ = stop_tx.send(true);
    for t in identity_tasks {
        let _ = t.await;
    }
    let _ = labels_task.await;
    let _ = http.await;
    if let Some(le) = election {
        le.release().await;
    }
    result.map_err(AppError::Kube)?;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(AppError::LeaseLost);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    fn opts(extra: &[&str]) -> Options {
        let mut args = vec![
            "pollen-operator",
            "--director-key=/dev/null",
            "--lease-namespace=pollen-system",
        ];
        args.extend_from_slice(extra);
        Cli::parse_from(args).options
    }

    #[test]
    fn the_signer_policy_comes_from_the_flags() {
        let p = signer_policy(&opts(&[])).unwrap();
        assert_eq!(p.signer_name, pollen_crds::SIGNER_NAME);
        assert_eq!(
            p.username(),
            "system:serviceaccount:pollen-system:pollen-edge-node"
        );
        assert_eq!(p.default_lifetime, Duration::from_secs(86400));
        assert_eq!(p.max_lifetime, Duration::from_secs(86400));
        let p = signer_policy(&opts(&[
            "--edge-node-service-account=edge/agent",
            "--certificate-lifetime=2h",
            "--max-certificate-lifetime=48h",
        ]))
        .unwrap();
        assert_eq!(p.username(), "system:serviceaccount:edge:agent");
        assert_eq!(p.default_lifetime, Duration::from_secs(7200));
        assert_eq!(p.max_lifetime, Duration::from_secs(48 * 3600));
    }

    #[test]
    fn unusable_identity_flags_are_typed_errors() {
        for (args, flag) in [
            (&["--certificate-lifetime=soon"][..], "certificate-lifetime"),
            (&["--certificate-lifetime=1m"][..], "certificate-lifetime"),
            (
                &["--max-certificate-lifetime=30d"][..],
                "max-certificate-lifetime",
            ),
            (
                &["--certificate-lifetime=48h", "--max-certificate-lifetime=24h"][..],
                "certificate-lifetime",
            ),
            (
                &["--edge-node-service-account=a/b/c"][..],
                "edge-node-service-account",
            ),
            (
                &["--edge-node-service-account=/x"][..],
                "edge-node-service-account",
            ),
        ] {
            match signer_policy(&opts(args)) {
                Err(AppError::Flag { flag: f, .. }) => assert_eq!(f, flag, "{args:?}"),
                other => panic!(
                    "{args:?}: expected a flag error, got {:?}",
                    other.map(|p| p.username())
                ),
            }
        }
    }

    #[test]
    fn the_fleet_ca_loads_from_the_mounted_files_or_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::generate("test fleet", Duration::from_secs(3600)).unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, ca.cert_pem()).unwrap();
        std::fs::write(&key, ca.key_pem()).unwrap();
        let args = [
            format!("--fleet-ca-cert={}", cert.display()),
            format!("--fleet-ca-key={}", key.display()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = load_identity(&opts(&args)).unwrap().expect("a CA is configured");
        assert_eq!(id.ca.cert_pem(), ca.cert_pem());
        assert!(load_identity(&opts(&[])).unwrap().is_none());
        let other = FleetCa::generate("other fleet", Duration::from_secs(3600)).unwrap();
        std::fs::write(&key, other.key_pem()).unwrap();
        assert!(matches!(load_identity(&opts(&args)), Err(AppError::FleetCa(_))));
    }
}
