//! `kubectl-pollen`: the kubectl plugin (`kubectl pollen status|pause|resume|abort|nodes`).
//! Put the binary on `PATH` and kubectl finds it. See `kubectl pollen --help`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kubectl_pollen::actions::{self, Action};
use kubectl_pollen::cluster::{Cluster, Target};
use kubectl_pollen::output::{self, Format};
use kubectl_pollen::render::{self, RenderOptions};
use pollen_crds::RolloutPhase;

#[derive(Parser)]
#[command(
    name = "kubectl-pollen",
    bin_name = "kubectl pollen",
    version,
    about = "Pollen rollouts and edge nodes, from kubectl"
)]
struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace of the rollout (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a rollout: phase, per-wave and per-node progress bars, bytes from peers and from the origin,
    /// and the failures with their reasons.
    Status {
        /// The UpdateRollout's name.
        rollout: String,
        /// Keep watching; redraw on change; exit when the rollout is Complete (0) or Failed (1).
        #[arg(short = 'w', long)]
        watch: bool,
        /// Print the rollout and its EdgeNodes as JSON or YAML instead.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Format>,
        /// Seconds between polls with --watch.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
        /// At most this many node lines (nodes needing attention first).
        #[arg(long, default_value_t = 50)]
        max_nodes: usize,
    },
    /// Pause a rollout at the next wave boundary (nodes already assigned keep going).
    Pause {
        /// The UpdateRollout's name.
        rollout: String,
    },
    /// Resume a paused rollout.
    Resume {
        /// The UpdateRollout's name.
        rollout: String,
    },
    /// Abort a rollout: delete it, so that the operator withdraws its assignments. Installed versions stay.
    Abort {
        /// The UpdateRollout's name.
        rollout: String,
        /// Confirm; without it nothing is deleted.
        #[arg(long)]
        yes: bool,
    },
    /// List the EdgeNodes: site, endpoint, architecture, agent version, certificate, installed versions.
    Nodes {
        /// Only EdgeNodes whose labels match this selector, e.g. `role=gateway,pollen.dev/site=hall-a`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Print the EdgeNodes as JSON or YAML instead.
        #[arg(short = 'o', long, value_enum)]
        output: Option<Format>,
    },
}

async fn status_text(
    cluster: &Cluster,
    name: &str,
    output: Option<Format>,
    max_nodes: usize,
) -> anyhow::Result<(String, RolloutPhase)> {
    let ur = cluster.rollout(name).await?;
    let nodes = cluster.edge_nodes(None).await?;
    let phase = ur.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let key = render::rollout_key(&ur);
    let text = match output {
        Some(f) => {
            let mut items = vec![output::object(&ur)?];
            for n in nodes.iter().filter(|n| {
                n.spec.assignments.iter().any(|a| a.rollout == key)
                    || n.status
                        .as_ref()
                        .is_some_and(|s| s.assignments.iter().any(|a| a.rollout == key))
            }) {
                items.push(output::object(n)?);
            }
            output::render(&output::list(items), f)?
        }
        None => {
            let rows = render::rollout_nodes(&key, &nodes);
            let opts = RenderOptions {
                max_nodes,
                ..RenderOptions::default()
            };
            render::status(&ur, &rows, &opts)
        }
    };
    Ok((text, phase))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let target = Target {
        kubeconfig: cli.kubeconfig,
        context: cli.context,
        namespace: cli.namespace,
    };
    let cluster = Cluster::connect(&target).await?;
    let mut stdout = std::io::stdout();
    match cli.cmd {
        Cmd::Status {
            rollout,
            watch,
            output,
            interval,
            max_nodes,
        } => {
            if !watch {
                let (text, _) = status_text(&cluster, &rollout, output, max_nodes).await?;
                stdout.write_all(text.as_bytes())?;
                return Ok(ExitCode::SUCCESS);
            }
            let tty = stdout.is_terminal() && output.is_none();
            let mut last = String::new();
            loop {
                let (text, phase) = status_text(&cluster, &rollout, output, max_nodes).await?;
                if text != last {
                    if tty {
                        // Home and clear, then redraw: a live view rather than a scrolling log.
                        stdout.write_all(b"\x1b[H\x1b[2J")?;
                    } else if !last.is_empty() && output.is_none() {
                        stdout.write_all(b"\n")?;
                    }
                    stdout.write_all(text.as_bytes())?;
                    stdout.flush()?;
                    last = text;
                }
                match phase {
                    RolloutPhase::Complete => return Ok(ExitCode::SUCCESS),
                    RolloutPhase::Failed => return Ok(ExitCode::FAILURE),
                    _ => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(interval)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                }
            }
        }
        Cmd::Pause { rollout } => {
            cluster
                .patch_rollout(&rollout, &actions::pause_patch(true))
                .await?;
            println!(
                "{}",
                actions::done_message(Action::Pause, &format!("{}/{rollout}", cluster.namespace()))
            );
        }
        Cmd::Resume { rollout } => {
            cluster
                .patch_rollout(&rollout, &actions::pause_patch(false))
                .await?;
            println!(
                "{}",
                actions::done_message(Action::Resume, &format!("{}/{rollout}", cluster.namespace()))
            );
        }
        Cmd::Abort { rollout, yes } => {
            let key = format!("{}/{rollout}", cluster.namespace());
            if !yes {
                cluster.rollout(&rollout).await?;
                eprintln!(
                    "abort deletes updaterollout {key}: the operator withdraws its assignments from every node \
                     (installed versions stay). Run again with --yes to do it."
                );
                return Ok(ExitCode::FAILURE);
            }
            cluster.delete_rollout(&rollout).await?;
            println!("{}", actions::done_message(Action::Abort, &key));
        }
        Cmd::Nodes { selector, output } => {
            let nodes = cluster.edge_nodes(selector.as_deref()).await?;
            let text = match output {
                Some(f) => {
                    let items = nodes.iter().map(output::object).collect::<Result<Vec<_>, _>>()?;
                    output::render(&output::list(items), f)?
                }
                None if nodes.is_empty() => "No EdgeNodes found.\n".to_string(),
                None => render::nodes(&nodes, &RenderOptions::default()),
            };
            stdout.write_all(text.as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> anyhow::Result<ExitCode> {
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(run(cli))
}
