//! `pollen-edge-node`: the edge-node data plane. `standalone` runs one chunk index from flags; see
//! `pollen-edge-node standalone --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;

use pollen_edge_node::metrics::Metrics;
use pollen_edge_node::standalone::{self, Budget, StandaloneError, StandaloneOptions};
use pollen_trust::registry::{Registry, RegistryArgs};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pollen-edge-node",
    version,
    about = "Pollen edge node: a verified chunk swarm over QUIC with mutual TLS"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "POLLEN_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch, verify and install one chunk index with static peers, no Kubernetes.
    ///
    /// Verifies the director-signed index and the publisher-signed payload (pollen-trust), fetches the
    /// chunks from peers (and from the registry only for chunks no peer has), checks the payload's SHA-256,
    /// installs it atomically under --install-root (versions/<seq>-<digest>/<file>, `current` link) and
    /// then seeds: until SIGINT/SIGTERM by default, for --seed-for seconds, or not at all with
    /// --exit-when-done. Exit status 0 only after a successful install.
    Standalone(StandaloneArgs),
    /// Run as the Kubernetes node agent: register this device's EdgeNode, watch it for assignments,
    /// verify, fetch, install and report progress (the DaemonSet's command).
    Agent(pollen_edge_node::agent::cli::AgentArgs),
}

#[derive(clap::Args)]
struct StandaloneArgs {
    /// Node name; must equal the name in --cert (first DNS SAN, else CN). Checked when given.
    #[arg(long)]
    name: Option<String>,
    /// Site label; same-site peers are preferred and each site pulls about one copy across the WAN.
    #[arg(long, default_value = "default")]
    site: String,
    /// QUIC (UDP) listen address.
    #[arg(long, default_value = "0.0.0.0:7400")]
    listen: SocketAddr,
    /// Node certificate chain (PEM), with serverAuth and clientAuth usages.
    #[arg(long)]
    cert: PathBuf,
    /// Node private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Fleet CA certificate (PEM); peers must present certificates it issued.
    #[arg(long)]
    ca: PathBuf,
    /// Initial fleet revocation list: an X.509 CRL (PEM or DER) signed by --ca. Certificates whose serials
    /// it lists are refused; newer lists learned from peers replace it.
    #[arg(long)]
    crl: Option<PathBuf>,
    /// A peer's QUIC address, ADDR:PORT or NAME@ADDR:PORT; repeat for more. More are learned by peer
    /// exchange. Identity always comes from the peer's certificate; a given name lets the origin-once rule
    /// count that peer before its connection is up.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(Option<String>, SocketAddr)>,
    /// Pinned chunk-index reference, REGISTRY/REPO@sha256:HEX.
    #[arg(long)]
    index: String,
    /// Publisher public key (PEM); repeat to trust several.
    #[arg(long = "publisher-key", required = true)]
    publisher_keys: Vec<PathBuf>,
    /// Director public key (PEM).
    #[arg(long)]
    director_key: PathBuf,
    /// How to reach the registry: `--insecure-registry HOST`, `--registry-ca FILE`, `--docker-config FILE`.
    #[command(flatten)]
    registry: RegistryArgs,
    /// Chunk store directory (resumable).
    #[arg(long)]
    data_dir: PathBuf,
    /// Install root.
    #[arg(long)]
    install_root: PathBuf,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Upload limit in bytes per second.
    #[arg(long)]
    upload_limit: Option<u64>,
    /// Download limit in bytes per second.
    #[arg(long)]
    download_limit: Option<u64>,
    /// Most bytes this node reads from the origin for this rollout: a byte count, `one-copy` (the payload
    /// size) or `unlimited` (the default). The origin-once rule applies either way.
    #[arg(long, value_parser = Budget::parse)]
    origin_budget: Option<Budget>,
    /// Seconds without any chunk arriving before the node stops waiting on its peers and fetches what
    /// it lacks from the origin regardless of who was to (default: 10).
    #[arg(long)]
    peer_wait: Option<u64>,
    /// Install only inside this daily window, HH:MM-HH:MM in UTC (an end before the start spans
    /// midnight). Outside it the node downloads and verifies, keeps serving, and installs when it opens.
    #[arg(long, value_parser = pollen_crds::rollout::ActivationWindow::parse)]
    activation_window: Option<pollen_crds::rollout::ActivationWindow>,
    /// The director's peer grant for this node on the index (base64, as the operator writes it into
    /// the assignment): lets a node the signed index does not list trade with its peers.
    #[arg(long)]
    peer_grant: Option<String>,
    /// Never read from the origin (peers only).
    #[arg(long)]
    no_origin: bool,
    /// Range GETs the fleet keeps in flight to the origin at once (default: 8). The fleet elects this
    /// many of the nodes that read from the origin; they share the GETs, rounded up.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    origin_requests: Option<u32>,
    /// Seed for the piece picker's random choices (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Exit as soon as the payload is installed.
    #[arg(long, conflicts_with = "seed_for")]
    exit_when_done: bool,
    /// After installing, keep serving peers this many seconds, then exit.
    #[arg(long)]
    seed_for: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Agent(a) => {
                let shutdown = CancellationToken::new();
                spawn_signal_handler(shutdown.clone());
                pollen_edge_node::agent::cli::run(a, shutdown).await
            }
            Cmd::Standalone(a) => {
                let shutdown = CancellationToken::new();
                spawn_signal_handler(shutdown.clone());
                let peer_names: Vec<String> = a.peers.iter().filter_map(|(n, _)| n.clone()).collect();
                let opts = StandaloneOptions {
                    name: a.name,
                    site: a.site,
                    listen: a.listen,
                    cert: a.cert,
                    key: a.key,
                    ca: a.ca,
                    tls: None,
                    crl: a.crl,
                    peers: a.peers.iter().map(|(_, a)| *a).collect(),
                    index: a.index,
                    evidence: None,
                    publisher_keys: a.publisher_keys,
                    director_key: a.director_key,
                    registry: Registry::new(&a.registry.options()).map_err(StandaloneError::Registry)?,
                    data_dir: a.data_dir,
                    install_root: a.install_root,
                    metrics: a.metrics,
                    upload_limit: a.upload_limit,
                    download_limit: a.download_limit,
                    origin_budget: a.origin_budget.unwrap_or(Budget::Unlimited),
                    origin_allowance: None,
                    peer_wait: a.peer_wait.map(Duration::from_secs),
                    rate_limits: None,
                    activation: a
                        .activation_window
                        .map(|w| tokio::sync::watch::channel(Some(w)).1),
                    peer_grant: a.peer_grant,
                    peer_grant_updates: None,
                    no_origin: a.no_origin,
                    origin_requests: a.origin_requests,
                    control_queue: None,
                    seed: a.seed,
                    seed_for: if a.exit_when_done {
                        Some(Duration::ZERO)
                    } else {
                        a.seed_for.map(Duration::from_secs)
                    },
                };
                let out =
                    standalone::run_with_members(opts, peer_names, Arc::new(Metrics::default()), shutdown)
                        .await?;
                println!(
                    "installed {} version {} origin_bytes {} seconds {:.3}",
                    out.installed.display(),
                    out.version,
                    out.origin_bytes,
                    out.seconds
                );
                Ok(())
            }
        }
    })
}

fn parse_peer(s: &str) -> Result<(Option<String>, SocketAddr), String> {
    let (name, addr) = match s.rsplit_once('@') {
        Some((n, a)) if !n.is_empty() => (Some(n.to_owned()), a),
        _ => (None, s),
    };
    let addr = addr
        .parse()
        .map_err(|e| format!("{s:?}: expected ADDR:PORT or NAME@ADDR:PORT ({e})"))?;
    Ok((name, addr))
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
        }
        shutdown.cancel();
    });
}
