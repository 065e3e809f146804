//! `pollen-edge-node agent`: the flags of the Kubernetes node agent, and its start-up.

use pollen_crds::duration::parse as parse_duration;
use pollen_trust::registry::{Registry, RegistryArgs};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::identity::{self, CertificateSource, CsrIssuer, CsrSettings, IdentityFiles, Issuer};
use super::revocations;
use super::runner::{RunnerConfig, SwarmRunner};
use super::stores::StoreKeeper;
use super::{AgentConfig, AgentError};
use crate::metrics::Metrics;
use crate::tls::FleetTls;

/// Where the node certificate comes from (`--certificate-source`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFlag {
    /// Read `--cert` and `--key`, provisioned on the device.
    Files,
    /// Request the certificate through the Kubernetes CSR API and renew it; `--cert` and `--key` are
    /// where the agent keeps it.
    Csr,
}

/// Flags of the node agent. Each maps one-to-one onto a Helm value of the edge-node DaemonSet.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// This device's name: the Kubernetes Node name (from the downward API `spec.nodeName`). The node
    /// certificate must name it too.
    #[arg(long, env = "POLLEN_NODE_NAME")]
    pub node_name: String,
    /// Site or zone of the device; peers of the same site are preferred.
    #[arg(long, env = "POLLEN_SITE", default_value = "default")]
    pub site: String,
    /// QUIC (UDP) listen address.
    #[arg(long, default_value = "0.0.0.0:7400")]
    pub listen: SocketAddr,
    /// The address peers use to reach this node (published in the EdgeNode status). Defaults to --listen.
    #[arg(long, env = "POLLEN_ADVERTISE")]
    pub advertise: Option<SocketAddr>,
    /// Node certificate chain (PEM). Read with `--certificate-source=files` (required then); written by
    /// the agent with `csr` (default `<data-dir>/identity/tls.crt`).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Node private key (PEM). Read with `files` (required then); with `csr` the agent writes a fresh
    /// key here (mode 0600) for every certificate (default `<data-dir>/identity/tls.key`).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Fleet CA certificate (PEM, mounted): peers and revocation lists are checked against it.
    #[arg(long)]
    pub ca: PathBuf,
    /// Where the node certificate comes from.
    #[arg(long, value_enum, env = "POLLEN_CERTIFICATE_SOURCE", default_value = "files")]
    pub certificate_source: SourceFlag,
    /// Lifetime asked for with `--certificate-source=csr` (`90m`, `24h`, `7d`); renewed at two thirds.
    #[arg(long, value_parser = parse_lifetime, default_value = "24h")]
    pub certificate_lifetime: Duration,
    /// The signerName of the fleet's certificate signer, with `--certificate-source=csr`.
    #[arg(long, default_value = pollen_crds::SIGNER_NAME)]
    pub signer_name: String,
    /// How long to wait for the signer's verdict on one request before retrying (`30s`, `5m`).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub certificate_wait: Duration,
    /// Chunk stores and trust material.
    #[arg(long, default_value = "/var/lib/pollen/data")]
    pub data_dir: PathBuf,
    /// Installed versions (one directory per target path, each with `versions/` and a `current` link).
    #[arg(long, default_value = "/var/lib/pollen/install")]
    pub install_root: PathBuf,
    /// How to reach the registry: `--docker-config FILE` (the node's own read-only pull credential),
    /// `--registry-ca FILE`, `--insecure-registry HOST`.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Metrics and health address (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, default_value = "0.0.0.0:9400")]
    pub metrics: SocketAddr,
    /// Minimum seconds between progress reports to the API server.
    #[arg(long, default_value_t = 10)]
    pub status_interval: u64,
    /// Seconds between heartbeats when nothing changes.
    #[arg(long, default_value_t = 60)]
    pub heartbeat_interval: u64,
    /// Upload limit in bytes per second.
    #[arg(long)]
    pub upload_limit: Option<u64>,
    /// Download limit in bytes per second.
    #[arg(long)]
    pub download_limit: Option<u64>,
    /// Most bytes the data dir should hold, in plain bytes. Above it, the chunk stores of finished
    /// assignments are removed, least recently written first; stores in use are never removed, so
    /// a download may take the data dir over it until its run ends. Unset: no budget (stores still go
    /// when no assignment names their index).
    #[arg(long)]
    pub store_budget: Option<u64>,
}

/// A certificate lifetime: a duration within what the fleet signer grants.
fn parse_lifetime(s: &str) -> Result<Duration, String> {
    use pollen_trust::pki::{MAX_NODE_LIFETIME, MIN_NODE_LIFETIME};
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if !(MIN_NODE_LIFETIME..=MAX_NODE_LIFETIME).contains(&d) {
        return Err(format!(
            "{s:?}: must be between {}m and {}h",
            MIN_NODE_LIFETIME.as_secs() / 60,
            MAX_NODE_LIFETIME.as_secs() / 3600
        ));
    }
    Ok(d)
}

/// The identity files and source the flags describe.
fn identity_setup(args: &AgentArgs) -> Result<(IdentityFiles, CertificateSource), String> {
    let default_dir = args.data_dir.join("identity");
    match args.certificate_source {
        SourceFlag::Files => {
            let (Some(cert), Some(key)) = (args.cert.clone(), args.key.clone()) else {
                return Err("--certificate-source=files needs --cert and --key".into());
            };
            Ok((
                IdentityFiles {
                    cert,
                    key,
                    ca: args.ca.clone(),
                },
                CertificateSource::Files,
            ))
        }
        SourceFlag::Csr => Ok((
            IdentityFiles {
                cert: args.cert.clone().unwrap_or_else(|| default_dir.join("tls.crt")),
                key: args.key.clone().unwrap_or_else(|| default_dir.join("tls.key")),
                ca: args.ca.clone(),
            },
            CertificateSource::Csr(CsrSettings {
                signer_name: args.signer_name.clone(),
                lifetime: args.certificate_lifetime,
                wait: args.certificate_wait,
            }),
        )),
    }
}

/// Start the agent with a client from the kubeconfig (or in-cluster config) and run until `shutdown`.
pub async fn run(args: AgentArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (files, source) = identity_setup(&args).map_err(anyhow::Error::msg)?;
    // A bad Docker config or CA bundle stops the agent at once, with the file named.
    let registry = Registry::new(&args.registry.options())?;
    let client = kube::Client::try_default().await?;
    std::fs::create_dir_all(&args.data_dir)?;
    // Alive (/healthz) from the start, ready (/readyz) once the node has its identity and runs: the
    // wait for a first certificate must not look like a hung process.
    let metrics = Arc::new(Metrics::default());
    let (bound, _task) = crate::metrics::serve(args.metrics, metrics.clone(), shutdown.clone()).await?;
    info!(%bound, "metrics listening");

    // The node's identity first: nothing talks to peers without it.
    let node = args.node_name.clone();
    let (tls, issuer): (FleetTls, Option<Arc<dyn Issuer>>) = match source {
        CertificateSource::Files => {
            let id = identity::load(&files, &node)?;
            let pem = std::fs::read_to_string(&files.cert)?;
            if let Err(e) =
                identity::check_certificate(&pem, &node, id.ca_pem(), std::time::SystemTime::now())
            {
                tracing::warn!(error = %e, cert = %files.cert.display(), "peers will refuse this certificate");
            }
            (FleetTls::new(id), None)
        }
        CertificateSource::Csr(settings) => {
            let issuer = Arc::new(CsrIssuer {
                api: kube::Api::all(client.clone()),
                node: node.clone(),
                files: files.clone(),
                settings,
            });
            let Some(id) = identity::bootstrap(issuer.as_ref(), &files, &node, &shutdown).await else {
                return Ok(());
            };
            (FleetTls::new(id), Some(issuer))
        }
    };
    let crl_path = args.data_dir.join(revocations::CRL_FILE);
    revocations::load_persisted(&crl_path, &tls);
    let (cert_tx, cert_rx) = watch::channel(Some(identity::certificate_info(&tls.current())));
    tokio::spawn(revocations::watch(client.clone(), tls.clone(), shutdown.clone()));
    tokio::spawn(revocations::persist(tls.clone(), crl_path, shutdown.clone()));
    if let Some(issuer) = issuer {
        tokio::spawn(identity::maintain(tls.clone(), issuer, cert_tx, shutdown.clone()));
    }

    let advertise = args.advertise.unwrap_or(args.listen);
    let cfg = AgentConfig {
        node_name: args.node_name.clone(),
        site: Some(args.site.clone()),
        endpoint: advertise.to_string(),
        install_root: args.install_root.clone(),
        progress_interval: Duration::from_secs(args.status_interval),
        heartbeat_interval: Duration::from_secs(args.heartbeat_interval),
        stores: StoreKeeper::new(args.data_dir.clone(), args.store_budget, metrics.clone()),
    };
    std::fs::create_dir_all(&args.install_root)?;
    tokio::spawn(track_gauges(tls.clone(), metrics.clone(), shutdown.clone()));
    let runner = SwarmRunner::new(
        client.clone(),
        RunnerConfig {
            node_name: args.node_name,
            site: args.site,
            listen: args.listen,
            tls,
            cert: files.cert,
            key: files.key,
            ca: files.ca,
            data_dir: args.data_dir,
            install_root: args.install_root,
            registry,
            upload_limit: args.upload_limit,
            download_limit: args.download_limit,
        },
        metrics.clone(),
    );
    metrics.set_ready(true);
    super::run(client, cfg, Arc::new(runner), cert_rx, shutdown)
        .await
        .map_err(|e: AgentError| e.into())
}

/// Keeps the certificate-expiry and revocation-list gauges current between engines.
async fn track_gauges(tls: FleetTls, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut ids = tls.identity_updates();
    let mut lists = tls.revocation_updates();
    loop {
        let expiry = tls
            .current()
            .not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        metrics.certificate_expiry.set(expiry);
        metrics
            .revocation_list_number
            .set(i64::try_from(*lists.borrow_and_update()).unwrap_or(i64::MAX));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Ok(()) = ids.changed() => {}
            Ok(()) = lists.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn args(extra: &[&str]) -> Result<AgentArgs, clap::Error> {
        let mut v = vec![
            "agent",
            "--node-name",
            "gw-7",
            "--ca",
            "/etc/pollen/fleet-ca/ca.crt",
        ];
        v.extend_from_slice(extra);
        Cmd::try_parse_from(v).map(|c| c.agent)
    }

    #[test]
    fn files_mode_is_the_default_and_needs_cert_and_key() {
        let a = args(&[]).unwrap();
        assert_eq!(a.certificate_source, SourceFlag::Files);
        assert!(identity_setup(&a).is_err());
        let a = args(&["--cert", "/id/tls.crt", "--key", "/id/tls.key"]).unwrap();
        let (files, source) = identity_setup(&a).unwrap();
        assert!(matches!(source, CertificateSource::Files));
        assert_eq!(files.cert, PathBuf::from("/id/tls.crt"));
        assert_eq!(files.key, PathBuf::from("/id/tls.key"));
    }

    #[test]
    fn csr_mode_defaults_to_a_day_the_pollen_signer_and_files_under_the_data_dir() {
        let a = args(&[
            "--certificate-source",
            "csr",
            "--data-dir",
            "/var/lib/pollen/data",
        ])
        .unwrap();
        let (files, source) = identity_setup(&a).unwrap();
        let CertificateSource::Csr(s) = source else {
            panic!("csr mode expected")
        };
        assert_eq!(s.lifetime, Duration::from_secs(86400));
        assert_eq!(s.signer_name, "pollen.dev/edge-peer");
        assert_eq!(s.wait, Duration::from_secs(300));
        assert_eq!(files.cert, PathBuf::from("/var/lib/pollen/data/identity/tls.crt"));
        assert_eq!(files.key, PathBuf::from("/var/lib/pollen/data/identity/tls.key"));
        let a = args(&[
            "--certificate-source=csr",
            "--certificate-lifetime=90m",
            "--signer-name=example.com/peer",
            "--key=/id/k.pem",
        ])
        .unwrap();
        let (files, source) = identity_setup(&a).unwrap();
        let CertificateSource::Csr(s) = source else {
            panic!("csr mode expected")
        };
        assert_eq!(s.lifetime, Duration::from_secs(5400));
        assert_eq!(s.signer_name, "example.com/peer");
        assert_eq!(files.key, PathBuf::from("/id/k.pem"));
    }

    #[test]
    fn lifetimes_outside_what_the_signer_grants_are_refused() {
        assert!(args(&["--certificate-lifetime=5m"]).is_err());
        assert!(args(&["--certificate-lifetime=8d"]).is_err());
        assert!(args(&["--certificate-lifetime=24"]).is_err());
        assert_eq!(parse_lifetime("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    }

    #[test]
    fn the_store_budget_is_plain_bytes_and_unset_by_default() {
        assert_eq!(args(&[]).unwrap().store_budget, None);
        assert_eq!(
            args(&["--store-budget", "2147483648"]).unwrap().store_budget,
            Some(2 << 30)
        );
        assert!(args(&["--store-budget", "2GiB"]).is_err());
    }
}
