//! The Pollen swarm in the fleet lab (needs root; CI runs it as root): 8 edge nodes in two sites
//! fetch a signed 8 MiB payload through shaped links, and must all install it, reading the origin
//! far less than a client-server download would, and finishing faster than any client-server
//! download could. Builds the edge node and the `pollen` CLI first (they live in other crates).

use std::path::PathBuf;
use std::time::Duration;

use pollen_e2e::lab::bench::{self, BenchSpec, Budget};
use pollen_e2e::lab::spec::SiteSpec;
use pollen_e2e::lab::swarm::SwarmConfig;
use pollen_e2e::lab::{LabBinaries, LabSpec, Rate};
use pollen_e2e::tools;

/// Builds `pollen-edge-node` and `pollen` into this workspace's target directory; returns its
/// `target/<profile>` folder.
fn build_fleet_binaries() -> PathBuf {
    let root = tools::workspace_root();
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--locked",
            "-p",
            "pollen-edge-node",
            "-p",
            "pollen-trust",
            "--bins",
        ])
        .current_dir(&root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building pollen-edge-node and pollen failed");
    // This test runs as target/<profile>/deps/lab_swarm-<hash>.
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

#[test]
fn eight_edge_nodes_install_a_signed_payload_through_the_lab() {
    if !tools::require_root()
        || tools::require_all([
            "ip",
            "tc",
            "iptables",
            "ethtool",
            "curl",
            "openssl",
            "docker-registry",
        ])
        .is_none()
    {
        return;
    }
    let target = build_fleet_binaries();
    let bins = LabBinaries {
        delay: PathBuf::from(env!("CARGO_BIN_EXE_pollen-lab-delay")),
        probe: PathBuf::from(env!("CARGO_BIN_EXE_pollen-lab-probe")),
    };
    let mut lab = LabSpec::standard(8);
    lab.sites = vec![SiteSpec { nodes: 4 }; 2];
    lab.wan = Some(Rate::mbit(40));
    let payload = 8u64 << 20;
    let logs = tempfile::tempdir().expect("log dir");
    let spec = BenchSpec {
        lab,
        payload_bytes: payload,
        budget: Budget::OneCopy,
        baseline: false,
        swarm: Some(SwarmConfig {
            edge_node: target.join("pollen-edge-node"),
            pollen: target.join("pollen"),
            extra_args: Vec::new(),
        }),
        timeout: Duration::from_secs(180),
        log_dir: Some(logs.path().to_path_buf()),
    };
    let r = bench::run(&spec, &bins).expect("bench run");
    assert_eq!(r.swarm_skipped, None, "the swarm phase ran");
    let s = r.phases.iter().find(|p| p.phase == "swarm").expect("swarm phase");
    eprintln!("{}", pollen_e2e::lab::report::table(&r.phases, r.bounds));
    assert_eq!(
        s.completed, 8,
        "every node installed the payload: {:?}",
        s.per_node
    );
    // A client-server download sends 8 copies; the swarm must read the origin far less.
    assert!(s.origin_copies < 2.0, "origin copies {}", s.origin_copies);
    // ...and beat the fastest possible client-server download: 8 copies through 20 Mbit/s.
    let client_server_floor = 8.0 * payload as f64 * 8.0 / 20e6;
    let last = s.last_s.expect("all done");
    assert!(
        last < client_server_floor,
        "last node after {last:.1} s, client-server needs at least {client_server_floor:.1} s"
    );
    assert!(
        last >= r.bounds.origin_once_s * 0.95,
        "faster than physics: {last} s"
    );
    assert!(s.node_cpu_s > 0.0);
    assert_eq!(s.lab_drops, 0, "the lab's delay queue never overflowed");
}
