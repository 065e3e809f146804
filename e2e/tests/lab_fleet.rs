//! The fleet lab, end to end (needs root; CI runs it as root): an 8-node lab in two sites whose
//! links are measured against the spec (rate, round-trip time, loss), the client-server baseline on a
//! small payload with origin and WAN counters checked, and teardown leaving no namespace behind —
//! also when a panic unwinds through a lab.

use std::path::PathBuf;
use std::time::Duration;

use pollen_e2e::lab::bench::bounds_for;
use pollen_e2e::lab::net::lab_namespaces;
use pollen_e2e::lab::origin::Origin;
use pollen_e2e::lab::spec::SiteSpec;
use pollen_e2e::lab::{Lab, LabBinaries, LabSpec, Rate, baseline, check, payload};
use pollen_e2e::tools;

fn bins() -> LabBinaries {
    LabBinaries {
        delay: PathBuf::from(env!("CARGO_BIN_EXE_pollen-lab-delay")),
        probe: PathBuf::from(env!("CARGO_BIN_EXE_pollen-lab-probe")),
    }
}

fn ready() -> bool {
    tools::require_root()
        && tools::require_all([
            "ip",
            "tc",
            "iptables",
            "ethtool",
            "sysctl",
            "curl",
            "docker-registry",
        ])
        .is_some()
}

fn leftovers(prefix: &str) -> Vec<String> {
    lab_namespaces()
        .expect("ip netns list")
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn within(what: &str, measured: f64, lo: f64, hi: f64) {
    assert!(
        (lo..=hi).contains(&measured),
        "{what}: measured {measured:.3}, expected within [{lo:.3}, {hi:.3}]"
    );
}

#[test]
fn eight_node_lab_shapes_links_and_measures_the_baseline() {
    if !ready() {
        return;
    }
    let bins = bins();
    let mut spec = LabSpec::standard(8);
    spec.sites = vec![SiteSpec { nodes: 4 }; 2];
    spec.wan = Some(Rate::mbit(40));
    spec.loss = 0.0; // measured on its own below
    let lab = Lab::build(spec.clone(), &bins).expect("build the lab");
    let prefix = lab.prefix().to_string();
    assert_eq!(leftovers(&prefix).len(), 8 + 2, "8 nodes, origin, bridge");
    let nodes = lab.nodes().to_vec();
    assert_eq!(nodes.iter().filter(|n| n.site == 1).count(), 4);

    // Rates: a node's uplink (10 Mbit/s) and the origin's (20 Mbit/s), on the sender's wire.
    let up = check::rate(&lab, &bins, &nodes[0].ns, &nodes[1].ns, nodes[1].addr, 3 << 20)
        .expect("node to node transfer");
    eprintln!("node uplink 10 Mbit/s: {up:?}");
    within(
        "node uplink wire rate / configured",
        up.wire_bps / 10e6,
        0.88,
        1.03,
    );
    within(
        "node uplink goodput / configured",
        up.goodput_bps / 10e6,
        0.85,
        1.0,
    );
    let o = check::rate(&lab, &bins, lab.origin_ns(), &nodes[5].ns, nodes[5].addr, 4 << 20)
        .expect("origin to node transfer");
    eprintln!("origin uplink 20 Mbit/s: {o:?}");
    within(
        "origin uplink wire rate / configured",
        o.wire_bps / 20e6,
        0.88,
        1.03,
    );

    // Delay: 20 ms round trip, across the WAN hop.
    let p = check::ping(&lab, &bins, &nodes[0].ns, &nodes[5].ns, nodes[5].addr, 100, 5000).expect("ping");
    eprintln!("rtt 20 ms: {p:?}");
    assert_eq!(p.received, p.sent, "no loss configured yet");
    within("round-trip min, ms", p.rtt_min_ms, 19.8, 22.0);
    within("round-trip median, ms", p.rtt_median_ms, 19.8, 23.0);

    // Loss: 5 % per direction is about 9.75 % of round trips.
    lab.set_loss(0.05).expect("set loss");
    let p = check::ping(&lab, &bins, &nodes[2].ns, &nodes[3].ns, nodes[3].addr, 3000, 300)
        .expect("ping with loss");
    eprintln!("loss 5 % per direction: {p:?}");
    within("round-trip loss", p.round_trip_loss(), 0.06, 0.14);
    lab.set_loss(0.005).expect("set loss");

    // The client-server baseline on a 2 MiB payload.
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 2u64 << 20;
    let sha = payload::write(&dir.path().join("p"), size, 42).expect("payload");
    let origin = Origin::start(&lab, &dir.path().join("p"), &sha).expect("origin registry");
    let bounds = bounds_for(&spec, size);
    let r = baseline::run(&lab, &origin, dir.path(), Duration::from_secs(120), bounds).expect("baseline");
    eprintln!("baseline: {r:#?}");
    assert_eq!(r.completed, 8, "every node got the blob");
    // The origin sends every copy (plus headers and retransmissions).
    within("baseline origin copies", r.origin_copies, 8.0, 8.0 * 1.12);
    for s in &r.sites {
        within("baseline WAN copies into a site", s.in_copies, 4.0, 4.0 * 1.12);
    }
    // 8 copies through a 20 Mbit/s uplink take at least 8·F/u_s.
    let floor = 8.0 * size as f64 * 8.0 / 20e6;
    within(
        "baseline last node, s",
        r.last_s.expect("all done"),
        0.95 * floor,
        2.0 * floor,
    );
    assert!(r.first_s.unwrap() <= r.median_s.unwrap() && r.median_s <= r.last_s);
    assert!(r.delay_cpu_s > 0.0, "the delay daemon handled the traffic");
    assert_eq!(r.lab_drops, 0, "the delay queue never overflowed");

    drop(origin);
    drop(lab);
    assert!(
        leftovers(&prefix).is_empty(),
        "namespaces left: {:?}",
        leftovers(&prefix)
    );
}

#[test]
fn a_panic_inside_a_lab_still_tears_it_down() {
    if !ready() {
        return;
    }
    let bins = bins();
    let mut spec = LabSpec::standard(2);
    spec.rtt = Duration::from_millis(2);
    let prefix = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::build(spec, &bins).expect("build");
        *prefix.lock().unwrap() = lab.prefix().to_string();
        assert_eq!(leftovers(lab.prefix()).len(), 4);
        panic!("deliberate");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert!(
        leftovers(&prefix).is_empty(),
        "namespaces left: {:?}",
        leftovers(&prefix)
    );
}
