//! `pollen-bench`: runs a fleet-lab scenario and prints a table (and JSON) of the client-server
//! baseline and the Pollen swarm against the lower bounds. Needs root. See `pollen_e2e::lab`.
//!
//! ```text
//! pollen-bench run --scenario n8            # standard scenario, 64 MiB, 8 nodes
//! pollen-bench run --nodes 8 --payload 4MiB --json
//! pollen-bench check --nodes 2              # link shaping accuracy
//! pollen-bench cleanup                      # remove namespaces left by killed runs
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pollen_e2e::lab::bench::{self, BenchSpec, Budget};
use pollen_e2e::lab::spec::{SiteSpec, parse_duration, parse_size};
use pollen_e2e::lab::{Lab, LabBinaries, LabSpec, Rate, check, net, report, swarm};

#[derive(Parser)]
#[command(about = "Pollen fleet lab and swarm benchmark (needs root)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario: the client-server baseline, then the Pollen swarm.
    Run(RunArgs),
    /// Build a lab and measure its links (rate, round-trip time, loss).
    Check(LabArgs),
    /// Delete lab namespaces left behind by runs that were killed.
    Cleanup {
        /// Also delete namespaces of labs whose process still runs.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// 8 nodes, one site.
    N8,
    /// 24 nodes, one site.
    N24,
    /// 3 sites of 8 nodes behind a 20 Mbit/s WAN hop each.
    Sites3x8,
}

#[derive(Args, Clone)]
struct LabArgs {
    /// Standard scenario (origin up 20 Mbit/s, node up 10 / down 50 Mbit/s, RTT 20 ms, loss 0.5 %,
    /// 64 MiB); other flags override its values.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Total number of nodes (split evenly over the sites).
    #[arg(long)]
    nodes: Option<usize>,
    /// Number of sites.
    #[arg(long)]
    sites: Option<usize>,
    /// Origin uplink, e.g. 20mbit.
    #[arg(long)]
    origin_up: Option<Rate>,
    /// Node uplink.
    #[arg(long)]
    node_up: Option<Rate>,
    /// Node downlink.
    #[arg(long)]
    node_down: Option<Rate>,
    /// Each site's WAN hop (both directions); unshaped when absent.
    #[arg(long)]
    wan: Option<Rate>,
    /// Round-trip time between endpoints, e.g. 20ms.
    #[arg(long, value_parser = |s: &str| parse_duration(s))]
    rtt: Option<Duration>,
    /// Random loss per packet and direction, in percent.
    #[arg(long)]
    loss: Option<f64>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    lab: LabArgs,
    /// Payload size, e.g. 64MiB.
    #[arg(long, value_parser = |s: &str| parse_size(s))]
    payload: Option<u64>,
    /// The swarm's origin budget.
    #[arg(long, value_enum, default_value = "one-copy")]
    budget: Budget,
    /// Skip the client-server baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Skip the swarm.
    #[arg(long)]
    no_swarm: bool,
    /// The edge-node binary for the swarm (default: beside this binary).
    #[arg(long)]
    edge_node: Option<PathBuf>,
    /// The `pollen` CLI for publishing (default: beside this binary).
    #[arg(long)]
    pollen: Option<PathBuf>,
    /// Longest a phase may take, e.g. 900s.
    #[arg(long, value_parser = |s: &str| parse_duration(s), default_value = "1200s")]
    timeout: Duration,
    /// Keep node logs (and the swarm's keys and certificates) in this directory.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Also print the report as JSON (after the table).
    #[arg(long)]
    json: bool,
    /// Write the JSON report to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// One more argument for every swarm node's `standalone` command line, after the launcher's own;
    /// repeat it for several, e.g. `--node-arg=--origin-requests --node-arg=2`.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
}

impl LabArgs {
    fn spec(&self) -> anyhow::Result<LabSpec> {
        let (n, s, wan) = match self.scenario {
            Some(Scenario::N8) => (8, 1, None),
            Some(Scenario::N24) => (24, 1, None),
            Some(Scenario::Sites3x8) => (24, 3, Some(Rate::mbit(20))),
            None => (8, 1, None),
        };
        let n = self.nodes.unwrap_or(n);
        let s = self.sites.unwrap_or(s);
        if s == 0 || !n.is_multiple_of(s) {
            bail!("{n} nodes do not split evenly over {s} sites");
        }
        let mut spec = LabSpec::standard(n);
        spec.sites = vec![SiteSpec { nodes: n / s }; s];
        spec.wan = self.wan.or(wan);
        if let Some(r) = self.origin_up {
            spec.origin_up = Some(r);
        }
        if let Some(r) = self.node_up {
            spec.node_up = Some(r);
        }
        if let Some(r) = self.node_down {
            spec.node_down = Some(r);
        }
        if let Some(r) = self.rtt {
            spec.rtt = r;
        }
        if let Some(l) = self.loss {
            spec.loss = l / 100.0;
        }
        spec.validate()?;
        Ok(spec)
    }
}

fn require_root() -> anyhow::Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!("the fleet lab needs root (network namespaces, tc, iptables)");
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let bins = LabBinaries::beside_current_exe()?;
    let lab = args.lab.spec()?;
    let beside = |name: &str| {
        bins.delay
            .parent()
            .map(|d| d.join(name))
            .unwrap_or_else(|| PathBuf::from(name))
    };
    let swarm = (!args.no_swarm).then(|| swarm::SwarmConfig {
        edge_node: args
            .edge_node
            .clone()
            .unwrap_or_else(|| beside("pollen-edge-node")),
        pollen: args.pollen.clone().unwrap_or_else(|| beside("pollen")),
        extra_args: args.node_args.clone(),
    });
    let spec = BenchSpec {
        lab,
        payload_bytes: args.payload.unwrap_or(64 << 20),
        budget: args.budget,
        baseline: !args.no_baseline,
        swarm,
        timeout: args.timeout,
        log_dir: args.log_dir.clone(),
    };
    let r = bench::run(&spec, &bins)?;
    println!(
        "lab: {} nodes in {} site(s); origin up {}, node up {} / down {}, WAN {}, RTT {:?}, loss {:.2} %; payload {} bytes; budget {:?}",
        spec.lab.node_count(),
        spec.lab.sites.len(),
        show(spec.lab.origin_up),
        show(spec.lab.node_up),
        show(spec.lab.node_down),
        show(spec.lab.wan),
        spec.lab.rtt,
        spec.lab.loss * 100.0,
        spec.payload_bytes,
        spec.budget
    );
    println!(
        "machine: {} × {} ({})",
        r.machine.cpus, r.machine.cpu, r.machine.kernel
    );
    print!("{}", report::table(&r.phases, r.bounds));
    if let Some(why) = &r.swarm_skipped {
        println!("swarm: not run: {why}");
    }
    let json = serde_json::to_string_pretty(&r)?;
    if args.json {
        println!("{json}");
    }
    if let Some(p) = &args.json_out {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn show(r: Option<Rate>) -> String {
    r.map_or_else(|| "unshaped".into(), |r| r.to_string())
}

fn check_links(args: LabArgs) -> anyhow::Result<()> {
    let bins = LabBinaries::beside_current_exe()?;
    let mut spec = args.spec()?;
    let loss = spec.loss;
    spec.loss = 0.0;
    let lab = Lab::build(spec.clone(), &bins)?;
    let nodes = lab.nodes();
    if nodes.len() < 2 {
        bail!("check needs at least 2 nodes");
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let r = check::rate(&lab, &bins, &a.ns, &b.ns, b.addr, 4 << 20)?;
    println!(
        "node up {}: goodput {:.2} Mbit/s, wire {:.2} Mbit/s",
        show(spec.node_up),
        r.goodput_bps / 1e6,
        r.wire_bps / 1e6
    );
    let o = check::rate(&lab, &bins, lab.origin_ns(), &a.ns, a.addr, 8 << 20)?;
    println!(
        "origin up {}: goodput {:.2} Mbit/s, wire {:.2} Mbit/s",
        show(spec.origin_up),
        o.goodput_bps / 1e6,
        o.wire_bps / 1e6
    );
    let p = check::ping(&lab, &bins, &a.ns, &b.ns, b.addr, 200, 5000)?;
    println!(
        "rtt {:?}: UDP round trip min {:.2} ms, median {:.2} ms ({} of {} answered)",
        spec.rtt, p.rtt_min_ms, p.rtt_median_ms, p.received, p.sent
    );
    let each = 2u64 << 20;
    let ring = check::ring(&lab, &bins, each)?;
    println!(
        "ring load ({} nodes each sending {} bytes to the next at once): {:.1} Mbit/s aggregate in {:.1} s; delay daemon {:.2} CPU s ({:.0} % of one core)",
        ring.nodes,
        each,
        ring.aggregate_goodput_bps / 1e6,
        ring.secs,
        ring.delay_cpu_s,
        ring.delay_cpu_s / ring.secs * 100.0
    );
    println!(
        "delay queue drops so far (loss beyond the spec): {}",
        lab.delay_drops()?
    );
    let idle0 = pollen_e2e::lab::baseline::delay_cpu(&lab);
    std::thread::sleep(Duration::from_secs(5));
    println!(
        "delay daemon idle: {:.0} % of one core",
        (pollen_e2e::lab::baseline::delay_cpu(&lab) - idle0) / 5.0 * 100.0
    );
    if loss > 0.0 {
        lab.set_loss(loss)?;
        let p = check::ping(&lab, &bins, &a.ns, &b.ns, b.addr, 5000, 400)?;
        println!(
            "loss {:.2} % per direction: round-trip loss measured {:.2} % (expected {:.2} %), {} probes",
            loss * 100.0,
            p.round_trip_loss() * 100.0,
            (1.0 - (1.0 - loss) * (1.0 - loss)) * 100.0,
            p.sent
        );
    }
    Ok(())
}

/// On SIGINT or SIGTERM: delete this run's namespaces (which ends the processes in them), then exit.
fn teardown_on_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("pollen-bench: interrupted, tearing the lab down");
        match net::cleanup_own() {
            Ok(gone) => eprintln!("pollen-bench: deleted {} namespaces", gone.len()),
            Err(e) => eprintln!("pollen-bench: teardown failed: {e} (run `pollen-bench cleanup`)"),
        }
        std::process::exit(130);
    });
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    teardown_on_signal()?;
    match cli.cmd {
        Cmd::Cleanup { all } => {
            require_root()?;
            for ns in net::cleanup_leftovers(all)? {
                println!("deleted {ns}");
            }
            Ok(())
        }
        Cmd::Check(a) => {
            require_root()?;
            check_links(a)
        }
        Cmd::Run(a) => {
            require_root()?;
            run(a)
        }
    }
}
