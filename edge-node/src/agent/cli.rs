//! `pollen-edge-node agent`: the flags of the Kubernetes node agent, and its start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::runner::{RunnerConfig, SwarmRunner};
use super::{AgentConfig, AgentError};
use crate::metrics::Metrics;

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
    /// Node certificate chain (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// Node private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// Fleet CA certificate (PEM).
    #[arg(long)]
    pub ca: PathBuf,
    /// Chunk stores and trust material.
    #[arg(long, default_value = "/var/lib/pollen/data")]
    pub data_dir: PathBuf,
    /// Installed versions (one directory per target path, each with `versions/` and a `current` link).
    #[arg(long, default_value = "/var/lib/pollen/install")]
    pub install_root: PathBuf,
    /// Reach the registry over plain HTTP (test registries on loopback only).
    #[arg(long)]
    pub insecure_registry: bool,
    /// Docker config.json with registry credentials for origin fallback.
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
    /// Metrics and health address (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, default_value = "0.0.0.0:9400")]
    pub metrics: SocketAddr,
    /// A label KEY=VALUE for the EdgeNode when the Node API cannot be read; repeat for more.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
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
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Start the agent with a client from the kubeconfig (or in-cluster config) and run until `shutdown`.
pub async fn run(args: AgentArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let (bound, _task) = crate::metrics::serve(args.metrics, metrics.clone(), shutdown.clone()).await?;
    info!(%bound, "metrics listening");
    let advertise = args.advertise.unwrap_or(args.listen);
    let cfg = AgentConfig {
        node_name: args.node_name.clone(),
        site: Some(args.site.clone()),
        endpoint: advertise.to_string(),
        fallback_labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        install_root: args.install_root.clone(),
        progress_interval: Duration::from_secs(args.status_interval),
        heartbeat_interval: Duration::from_secs(args.heartbeat_interval),
    };
    std::fs::create_dir_all(&args.install_root)?;
    std::fs::create_dir_all(&args.data_dir)?;
    let runner = SwarmRunner::new(
        client.clone(),
        RunnerConfig {
            node_name: args.node_name,
            site: args.site,
            listen: args.listen,
            cert: args.cert,
            key: args.key,
            ca: args.ca,
            data_dir: args.data_dir,
            install_root: args.install_root,
            insecure_registry: args.insecure_registry,
            docker_config: args.docker_config,
            upload_limit: args.upload_limit,
            download_limit: args.download_limit,
        },
        metrics.clone(),
    );
    metrics.set_ready(true);
    super::run(client, cfg, Arc::new(runner), shutdown)
        .await
        .map_err(|e: AgentError| e.into())
}

#[cfg(test)]
mod tests {
    use super::parse_label;

    #[test]
    fn labels_parse_as_key_value() {
        assert_eq!(
            parse_label("role=gateway").unwrap(),
            ("role".into(), "gateway".into())
        );
        assert_eq!(parse_label("empty=").unwrap(), ("empty".into(), String::new()));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
    }
}
