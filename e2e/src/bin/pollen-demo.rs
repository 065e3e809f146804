//! `pollen-demo`: a signed update rolled out to a local fleet, every part real.
//!
//! Brings up a Kubernetes API server (etcd + crd-apiserver built from Debian's archive), an OCI
//! registry, N edge-node agents on 127.0.0.1 and the operator; publishes a signed sample firmware;
//! applies an UpdateRollout with a canary wave; shows live progress with `kubectl pollen status
//! --watch`; prints a summary; then keeps the fleet up (until Ctrl-C) with a kubeconfig for
//! `kubectl get ur,edgenodes`. `--exit` ends right after the summary.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use kube::api::{Api, PostParams};
use pollen_crds::conditions::types;
use pollen_crds::{UpdateRollout, Wave};
use pollen_e2e::apiserver::retry_throttled;
use pollen_e2e::fleet::{self, FleetOptions, LocalFleet};
use sha2::{Digest, Sha256};

/// Roll out a signed update to a local Pollen fleet.
#[derive(Parser)]
struct Args {
    /// Number of edge nodes.
    #[arg(long, default_value_t = 6)]
    nodes: usize,
    /// Size of the sample firmware in MiB.
    #[arg(long, default_value_t = 16)]
    payload_mib: usize,
    /// End after the summary instead of keeping the fleet up.
    #[arg(long)]
    exit: bool,
    /// Where keys, logs, node data and the kubeconfig go.
    #[arg(long, default_value = ".demo")]
    dir: PathBuf,
}

const ROLLOUT: &str = "demo-firmware";
const TARGET: &str = "firmware/gateway.bin";

fn say(s: &str) {
    println!("\x1b[1m==>\x1b[0m {s}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let t0 = Instant::now();
    let root = pollen_e2e::tools::workspace_root();
    let dir = if args.dir.is_absolute() {
        args.dir.clone()
    } else {
        root.join(&args.dir)
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clean {}", dir.display()))?;
    }

    say(
        "building pollen-operator, pollen-edge-node and kubectl-pollen (the first build takes several minutes)",
    );
    let bin_dir = fleet::build_binaries(false)?;
    let opts = FleetOptions {
        nodes: args.nodes,
        bin_dir: bin_dir.clone(),
        dir: Some(dir.clone()),
        log: "info".into(),
        secure: None,
        api: None,
    };
    let f = LocalFleet::start(opts, say).await?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(f.api.kubeconfig_path(), &kubeconfig)?;

    let bytes = pollen_e2e::lab::payload::bytes(args.payload_mib << 20, 1);
    let digest = hex::encode(Sha256::digest(&bytes));
    say(&format!(
        "publishing a signed {} MiB firmware (sha256 {}…)",
        args.payload_mib,
        &digest[..16]
    ));
    let artifact = f.publish("gateway-fw", "1.4.2", "gateway.bin", bytes).await?;
    say(&format!("published {artifact}"));

    let waves = vec![
        Wave {
            count: Some(1),
            percent: None,
            pause: Some("3s".into()),
        },
        Wave {
            count: None,
            percent: Some(50),
            pause: None,
        },
        Wave {
            count: None,
            percent: Some(100),
            pause: None,
        },
    ];
    let rollouts: Api<UpdateRollout> = Api::namespaced(f.client.clone(), "default");
    let ur = fleet::rollout(ROLLOUT, &artifact, TARGET, waves);
    let pp = PostParams::default();
    retry_throttled(|| rollouts.create(&pp, &ur))
        .await
        .context("apply UpdateRollout")?;
    say("applied UpdateRollout demo-firmware: a canary of 1 node (then a 3 s pause), 50 %, then everyone");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let status = Command::new(bin_dir.join("kubectl-pollen"))
        .args(["status", ROLLOUT, "-n", "default", "--watch", "--interval", "1"])
        .env("KUBECONFIG", &kubeconfig)
        .status()
        .context("run kubectl-pollen status --watch")?;
    let ur = rollouts.get(ROLLOUT).await?;
    let st = ur.status.clone().unwrap_or_default();
    let complete = st
        .conditions
        .iter()
        .any(|c| c.type_ == types::COMPLETE && c.status == "True");
    if !status.success() || !complete {
        bail!(
            "the rollout did not complete (phase {:?})\n{}",
            st.phase,
            f.logs_tail(15)
        );
    }

    // Summary: every node's installed file checked against the published digest.
    let mut ok = 0;
    for node in f.install_roots.keys() {
        let got = std::fs::read(f.installed_file(node, TARGET)).map(|b| hex::encode(Sha256::digest(&b)));
        match got {
            Ok(d) if d == digest => ok += 1,
            Ok(d) => println!("   {node}: installed file has sha256 {d}, expected {digest}"),
            Err(e) => println!("   {node}: {e}"),
        }
    }
    let total = (st.bytes_from_peers + st.bytes_from_origin).max(1) as f64;
    println!();
    say("summary");
    println!(
        "   rollout            {ROLLOUT}: {:?}, {}",
        st.phase,
        st.progress.as_deref().unwrap_or("-")
    );
    println!(
        "   delivery time      {:.1} s for {} nodes",
        started.elapsed().as_secs_f64(),
        args.nodes
    );
    println!(
        "   installed & checked {ok}/{} nodes (sha256 of the file on disk)",
        args.nodes
    );
    println!(
        "   bytes from peers   {:>12}  ({:.0} %)",
        st.bytes_from_peers,
        100.0 * st.bytes_from_peers as f64 / total
    );
    println!(
        "   bytes from origin  {:>12}  ({:.2} copies of the payload)",
        st.bytes_from_origin,
        st.bytes_from_origin as f64 / (args.payload_mib << 20) as f64
    );
    println!(
        "   wall time          {:.1} s (including start-up)",
        t0.elapsed().as_secs_f64()
    );
    if ok != args.nodes {
        bail!("{} nodes do not hold the published payload", args.nodes - ok);
    }
    if args.exit {
        return Ok(());
    }
    println!();
    say("the fleet stays up until Ctrl-C. In another terminal:");
    println!("   export KUBECONFIG={}", kubeconfig.display());
    println!("   kubectl get ur,edgenodes");
    println!("   {} status {ROLLOUT}", bin_dir.join("kubectl-pollen").display());
    println!("   logs: {}", dir.display());
    tokio::signal::ctrl_c().await?;
    say("stopping");
    drop(f);
    Ok(())
}
