//! The Pollen swarm phase: `pollen-edge-node standalone` in every node namespace, all started at
//! once. A node is done when its install root holds the `current` link (payload verified and
//! installed); it keeps serving its peers until the last node is done, as it would in a fleet.
//!
//! Steps: check the binaries' command lines ([`preflight`]); make a fleet CA and one certificate per
//! node naming it (`openssl`); generate the publisher and director keys, publish the payload and
//! push the signed chunk index to the origin registry (`pollen` CLI, run inside the origin
//! namespace); launch the nodes with every other node as a static peer; time each node until its
//! `current` link appears.
//! The argument lists are built by pure functions ([`node_args`]).
//!
//! [`preflight`] compares the binaries' `--help` with the flags used here, so that a change of
//! command line shows up as a clear "not run" reason rather than as failed nodes.
//!
//! Non-goals: Kubernetes; node restarts during a run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::LabError;
use super::bench::Budget;
use super::cmd::{run, run_in};
use super::counters::LabCounters;
use super::fleet::{Proc, watch};
use super::net::{Lab, LabNode};
use super::origin::{Origin, REPO};
use super::report::{Bounds, NodeResult, PhaseReport, phase_report};

/// QUIC port every node listens on.
pub const PEER_PORT: u16 = 7400;
/// Metrics port every node serves on.
pub const METRICS_PORT: u16 = 9400;

/// Flags of `pollen-edge-node standalone` this launcher uses.
pub const EDGE_FLAGS: &[&str] = &[
    "--name",
    "--site",
    "--listen",
    "--cert",
    "--key",
    "--ca",
    "--peer",
    "--index",
    "--publisher-key",
    "--director-key",
    "--insecure-registry",
    "--data-dir",
    "--install-root",
    "--metrics",
    "--origin-budget",
    "--seed-for",
];

/// How to launch the swarm.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The `pollen-edge-node` binary.
    pub edge_node: PathBuf,
    /// The `pollen` CLI (publishing and indexing).
    pub pollen: PathBuf,
    /// More `standalone` arguments for every node, after the launcher's own (e.g. `--origin-requests 2`).
    pub extra_args: Vec<String>,
}

/// Files every node shares.
#[derive(Debug, Clone)]
pub struct SharedFiles {
    /// Fleet CA certificate.
    pub ca: PathBuf,
    /// Publisher public key.
    pub publisher_pub: PathBuf,
    /// Director public key.
    pub director_pub: PathBuf,
    /// Reference of the signed chunk index at the origin.
    pub index_ref: String,
    /// Per-run directory; node `n<i>` uses `<dir>/n<i>/`.
    pub dir: PathBuf,
}

/// Seconds a node keeps seeding after it installed; the launcher stops the nodes once the last one
/// is done, so this only bounds a node left behind by a killed run.
const SEED_FOR_S: u64 = 3600;

/// The `standalone` arguments of `node`, with every other node as a static peer. With a budget of
/// one copy, each node may read at most `payload_bytes` from the origin (the engine's origin-once
/// rule keeps the fleet's total near one copy either way).
pub fn node_args(
    node: &LabNode,
    all: &[LabNode],
    files: &SharedFiles,
    budget: Budget,
    payload_bytes: u64,
) -> Vec<String> {
    let d = files.dir.join(&node.name);
    let p = |x: &Path| x.display().to_string();
    let mut a = vec![
        "standalone".to_string(),
        "--name".into(),
        node.name.clone(),
        "--site".into(),
        format!("site{}", node.site),
        "--listen".into(),
        format!("{}:{PEER_PORT}", node.addr),
        "--cert".into(),
        p(&d.join("node.pem")),
        "--key".into(),
        p(&d.join("node.key")),
        "--ca".into(),
        p(&files.ca),
        "--index".into(),
        files.index_ref.clone(),
        "--publisher-key".into(),
        p(&files.publisher_pub),
        "--director-key".into(),
        p(&files.director_pub),
        "--insecure-registry".into(),
        Origin::addr().to_string(),
        "--data-dir".into(),
        p(&d.join("data")),
        "--install-root".into(),
        p(&d.join("install")),
        "--metrics".into(),
        format!("{}:{METRICS_PORT}", node.addr),
        "--seed-for".into(),
        SEED_FOR_S.to_string(),
    ];
    a.push("--origin-budget".into());
    a.push(match budget {
        Budget::OneCopy => payload_bytes.to_string(),
        Budget::Unlimited => "unlimited".into(),
    });
    for peer in all.iter().filter(|p| p.name != node.name) {
        a.push("--peer".into());
        a.push(format!("{}@{}:{PEER_PORT}", peer.name, peer.addr));
    }
    a
}

/// Flags from `wanted` that `help` (a `--help` text) does not mention.
pub fn missing_flags<'a>(help: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|f| {
            !help
                .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
                .any(|w| w == *f)
        })
        .collect()
}

fn help_of(program: &Path, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: format!("{} {}", program.display(), args.join(" ")),
            source,
        })?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Checks that the binaries exist and offer the flags this launcher uses.
pub fn preflight(cfg: &SwarmConfig) -> Result<(), LabError> {
    for bin in [&cfg.edge_node, &cfg.pollen] {
        if !bin.is_file() {
            return Err(LabError::Failed(format!(
                "{} not found (cargo build -p pollen-edge-node -p pollen-trust)",
                bin.display()
            )));
        }
    }
    let help = help_of(&cfg.edge_node, &["standalone", "--help"])?;
    let missing = missing_flags(&help, EDGE_FLAGS);
    if !missing.is_empty() {
        return Err(LabError::Failed(format!(
            "swarm launcher not runnable yet: `{} standalone` lacks {}",
            cfg.edge_node.display(),
            missing.join(" ")
        )));
    }
    for (sub, flags) in PUBLISH_FLAGS {
        let help = help_of(&cfg.pollen, &[sub, "--help"])?;
        let missing = missing_flags(&help, flags);
        if !missing.is_empty() {
            return Err(LabError::Failed(format!(
                "swarm launcher not runnable yet: `pollen {sub}` lacks {}",
                missing.join(" ")
            )));
        }
    }
    Ok(())
}

/// `pollen` subcommands and the flags the launcher uses with them.
const PUBLISH_FLAGS: &[(&str, &[&str])] = &[
    ("keygen", &["--output-prefix"]),
    ("publish", &["--to", "--key", "--version", "--insecure-registry"]),
    (
        "index",
        &[
            "--payload",
            "--key",
            "--rollout",
            "--sequence",
            "--target-path",
            "--publisher-key",
            "--insecure-registry",
        ],
    ),
];

/// Password of the lab's throw-away cosign keys.
const KEY_PASSWORD: &str = "pollen-lab";

fn openssl(dir: &Path, args: &[&str]) -> Result<(), LabError> {
    let mut full = vec!["-C", dir.to_str().unwrap_or(".")];
    full.push("openssl");
    full.extend_from_slice(args);
    run("env", &full).map(drop)
}

/// Makes the fleet CA and one certificate per node (CN and DNS SAN: the node name; IP SAN: its
/// address), with the `openssl` CLI.
pub fn make_pki(dir: &Path, nodes: &[LabNode]) -> Result<PathBuf, LabError> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&[
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pollen-lab-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca)?;
    for node in nodes {
        let nd = dir.join(&node.name);
        std::fs::create_dir_all(&nd).map_err(|e| LabError::io(format!("creating {}", nd.display()), e))?;
        let ext = nd.join("ext.cnf");
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:{},IP:{}\n",
                node.name, node.addr
            ),
        )
        .map_err(|e| LabError::io(format!("writing {}", ext.display()), e))?;
        let key = format!("{}/node.key", node.name);
        let csr = format!("{}/node.csr", node.name);
        let pem = format!("{}/node.pem", node.name);
        let subj = format!("/CN={}", node.name);
        let mut req = vec!["req"];
        req.extend_from_slice(&ec);
        req.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req)?;
        let extf = format!("{}/ext.cnf", node.name);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extf,
            ],
        )?;
    }
    Ok(dir.join("ca.pem"))
}

/// Generates the publisher and director keys, publishes the payload and pushes the signed index,
/// running `pollen` inside the origin namespace. Returns the two public keys and the index reference.
fn publish(
    lab: &Lab,
    cfg: &SwarmConfig,
    dir: &Path,
    payload: &Path,
) -> Result<(PathBuf, PathBuf, String), LabError> {
    let ns = lab.origin_ns();
    let pollen = cfg.pollen.display().to_string();
    let password = format!("COSIGN_PASSWORD={KEY_PASSWORD}");
    let pollen_cmd = |args: &[&str]| -> Result<String, LabError> {
        let mut full = vec![password.as_str(), pollen.as_str()];
        full.extend_from_slice(args);
        run_in(ns, "env", &full)
    };
    let last_line = |out: String| out.lines().last().unwrap_or_default().trim().to_string();
    let prefix = |who: &str| dir.join(who).display().to_string();
    for who in ["publisher", "director"] {
        pollen_cmd(&["keygen", "--output-prefix", &prefix(who)])?;
    }
    let target = format!("{}/{REPO}:lab", Origin::addr());
    let payload_ref = last_line(pollen_cmd(&[
        "publish",
        &payload.display().to_string(),
        "--to",
        &target,
        "--key",
        &format!("{}.key", prefix("publisher")),
        "--version",
        "1.0.0",
        "--insecure-registry",
        &Origin::addr().to_string(),
    ])?);
    let index_ref = last_line(pollen_cmd(&[
        "index",
        "--payload",
        &payload_ref,
        "--key",
        &format!("{}.key", prefix("director")),
        "--rollout",
        "lab/bench",
        "--sequence",
        "1",
        "--target-path",
        "payload.bin",
        "--publisher-key",
        &format!("{}.pub", prefix("publisher")),
        "--insecure-registry",
        &Origin::addr().to_string(),
    ])?);
    if index_ref.is_empty() {
        return Err(LabError::Failed("pollen index printed no reference".into()));
    }
    Ok((
        PathBuf::from(format!("{}.pub", prefix("publisher"))),
        PathBuf::from(format!("{}.pub", prefix("director"))),
        index_ref,
    ))
}

/// Runs the swarm phase and reports it.
#[allow(clippy::too_many_arguments)]
pub fn run_phase(
    lab: &Lab,
    origin: &Origin,
    cfg: &SwarmConfig,
    payload: &Path,
    budget: Budget,
    log_dir: &Path,
    timeout: Duration,
    bounds: Bounds,
) -> Result<PhaseReport, LabError> {
    preflight(cfg)?;
    let dir = log_dir.join("swarm");
    std::fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let ca = make_pki(&dir, lab.nodes())?;
    let (publisher_pub, director_pub, index_ref) = publish(lab, cfg, &dir, payload)?;
    let files = SharedFiles {
        ca,
        publisher_pub,
        director_pub,
        index_ref,
        dir: dir.clone(),
    };
    let before = LabCounters::read(lab)?;
    let cpu_before = super::baseline::delay_cpu(lab);
    let start = Instant::now();
    let mut procs = Vec::new();
    for node in lab.nodes() {
        let mut cmd = lab.command(&node.ns, &cfg.edge_node);
        cmd.args(node_args(node, lab.nodes(), &files, budget, origin.size));
        cmd.args(&cfg.extra_args);
        procs.push(Proc::spawn(&format!("swarm-{}", node.name), cmd, log_dir)?);
    }
    let installed: Vec<PathBuf> = lab
        .nodes()
        .iter()
        .map(|n| dir.join(&n.name).join("install").join("current"))
        .collect();
    let watched = watch(procs, start, timeout, |i| installed[i].exists());
    let traffic = LabCounters::read(lab)?.since(&before);
    let delay_cpu_s = super::baseline::delay_cpu(lab) - cpu_before;
    let nodes = lab
        .nodes()
        .iter()
        .zip(watched)
        .map(|(node, w)| {
            if w.done_after.is_none() {
                eprintln!(
                    "swarm: {} did not finish ({}), log {}",
                    node.name,
                    w.exited.as_deref().unwrap_or("still running at the timeout"),
                    w.stderr_path.display()
                );
            }
            NodeResult {
                node: node.name.clone(),
                done_s: w.done_after.map(|d| d.as_secs_f64()),
                cpu_s: w.cpu_s,
                site: node.site,
                data: std::fs::read_to_string(&w.stderr_path)
                    .ok()
                    .and_then(|log| super::report::data_from_log(&log)),
            }
        })
        .collect();
    Ok(phase_report(
        "swarm",
        origin.size,
        nodes,
        &traffic,
        delay_cpu_s,
        bounds,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::spec::LabSpec;

    fn nodes() -> Vec<LabNode> {
        (0..3)
            .map(|i| LabNode {
                name: format!("n{i}"),
                ns: format!("x-n{i}"),
                addr: LabSpec::node_addr(i / 2, i % 2),
                site: i / 2,
                port: format!("e{i}"),
            })
            .collect()
    }

    #[test]
    fn node_args_name_every_other_peer_and_the_budget() {
        let all = nodes();
        let files = SharedFiles {
            ca: "/r/ca.pem".into(),
            publisher_pub: "/r/publisher.pub".into(),
            director_pub: "/r/director.pub".into(),
            index_ref: "10.200.0.1:5000/lab/payload@sha256:ab".into(),
            dir: "/r".into(),
        };
        let a = node_args(&all[2], &all, &files, Budget::OneCopy, 1000);
        assert_eq!(a[0], "standalone");
        let after = |f: &str| a[a.iter().position(|x| x == f).unwrap() + 1].clone();
        assert_eq!(after("--name"), "n2");
        assert_eq!(after("--site"), "site1");
        assert_eq!(after("--listen"), "10.200.2.1:7400");
        assert_eq!(after("--cert"), "/r/n2/node.pem");
        assert_eq!(after("--origin-budget"), "1000");
        assert_eq!(after("--insecure-registry"), Origin::addr().to_string());
        let peers: Vec<_> = a
            .iter()
            .enumerate()
            .filter(|(_, x)| *x == "--peer")
            .map(|(i, _)| a[i + 1].clone())
            .collect();
        assert_eq!(peers, vec!["n0@10.200.1.1:7400", "n1@10.200.1.2:7400"]);
        for f in EDGE_FLAGS {
            assert!(a.iter().any(|x| x == f), "{f} unused");
        }
        let u = node_args(&all[0], &all, &files, Budget::Unlimited, 1000);
        assert_eq!(
            u[u.iter().position(|x| x == "--origin-budget").unwrap() + 1],
            "unlimited"
        );
    }

    #[test]
    fn pki_certificates_verify_against_the_fleet_ca() {
        if crate::tools::require("openssl").is_none() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let all = nodes();
        let ca = make_pki(d.path(), &all).expect("pki");
        for n in &all {
            let pem = d.path().join(&n.name).join("node.pem");
            let out = run(
                "openssl",
                &["verify", "-CAfile", ca.to_str().unwrap(), pem.to_str().unwrap()],
            )
            .expect("verify");
            assert!(out.contains("OK"), "{out}");
            let text = run(
                "openssl",
                &[
                    "x509",
                    "-noout",
                    "-ext",
                    "subjectAltName",
                    "-in",
                    pem.to_str().unwrap(),
                ],
            )
            .unwrap();
            assert!(
                text.contains(&format!("DNS:{}", n.name)) && text.contains(&format!("IP Address:{}", n.addr)),
                "{text}"
            );
        }
    }

    #[test]
    fn missing_flags_reads_help_texts() {
        let help =
            "Usage: x standalone [OPTIONS]\n  --name <NAME>\n  --peer=<ADDR>  peers\n  -s, --site <S>\n";
        assert_eq!(
            missing_flags(help, &["--name", "--peer", "--site", "--ca"]),
            vec!["--ca"]
        );
        assert_eq!(missing_flags("--named", &["--name"]), vec!["--name"]);
    }
}
