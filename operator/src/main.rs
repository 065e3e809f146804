//! `pollen-operator`: delivers signed artifacts to EdgeNodes, wave by wave. See `--help` for the flags;
//! each maps onto a Helm value. The Kubernetes client comes from the in-cluster config or `KUBECONFIG`.

use clap::Parser;
use pollen_operator::app::{self, LogFormat, Options};

#[derive(Parser)]
#[command(
    name = "pollen-operator",
    version,
    about = "Pollen's operator: signed updates for edge fleets, wave by wave"
)]
struct Cli {
    #[command(flatten)]
    options: Options,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let format = if cli.options.log_json {
        LogFormat::Json
    } else {
        cli.options.log_format
    };
    match format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let client = kube::Client::try_default().await?;
    app::run(cli.options, client, shutdown_signal()).await?;
    Ok(())
}
