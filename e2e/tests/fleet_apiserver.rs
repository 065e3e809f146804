//! From `kubectl apply` to an installed fleet, with every part real (see [`pollen_e2e::fleet`]): a
//! Kubernetes API server (etcd + crd-apiserver, or the cluster of `POLLEN_E2E_KUBECONFIG`), Debian's
//! docker-registry, the `pollen-operator` binary and three `pollen-edge-node agent` processes talking
//! QUIC with mutual TLS on 127.0.0.1.
//!
//! The rollout has a canary wave of one node, then the rest. The test checks that only the canary is
//! assigned until it reports `Installed`, that the rollout reaches `Complete`, and that every node's
//! installed file is byte-identical to the published payload.
//!
//! Builds the binaries first (they live in other crates). Needs `docker-registry`, `crd-apiserver` and
//! `etcd` (`e2e/tools/install-deps.sh`); fails under `CI` without them.

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use pollen_crds::conditions::types;
use pollen_crds::{AssignmentPhase, EdgeNode, UpdateRollout};
use pollen_e2e::apiserver::retry_throttled;
use pollen_e2e::fleet::{self, LocalFleet};

const NODES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_canary_first_then_fleet_to_complete_with_bytes_on_disk() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(mut f) = LocalFleet::start_for_test(NODES).await else {
        return;
    };
    let bytes = pollen_e2e::lab::payload::bytes(3 * 1024 * 1024 + 12345, 1);
    let artifact = f
        .publish("gateway-fw", "1.0.0", "gateway.bin", bytes.clone())
        .await
        .expect("publish");

    let rollouts: Api<UpdateRollout> = Api::namespaced(f.client.clone(), "default");
    let waves = fleet::canary_then_all();
    let mut ur = fleet::rollout("gateway-fw", &artifact, "fw/gateway.bin", waves);
    ur.spec.transfer.origin_budget_percent = Some(150);
    let pp = PostParams::default();
    retry_throttled(|| rollouts.create(&pp, &ur))
        .await
        .expect("UpdateRollout");

    // Canary first: while no node has installed, at most one node carries an assignment.
    let nodes: Api<EdgeNode> = Api::all(f.client.clone());
    let start = Instant::now();
    let mut saw_canary_alone = false;
    let complete = loop {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "rollout did not complete within 240 s\n{}",
            f.logs_tail(25)
        );
        f.check_alive().expect("fleet processes alive");
        let list = nodes.list(&Default::default()).await.unwrap();
        let assigned = list
            .items
            .iter()
            .filter(|n| !n.spec.assignments.is_empty())
            .count();
        let installed = list
            .items
            .iter()
            .filter(|n| {
                n.status.as_ref().is_some_and(|s| {
                    s.assignments
                        .iter()
                        .any(|a| a.phase == AssignmentPhase::Installed)
                })
            })
            .count();
        if installed == 0 {
            assert!(
                assigned <= 1,
                "{assigned} nodes assigned before the canary installed"
            );
            saw_canary_alone |= assigned == 1;
        }
        let status = rollouts
            .get("gateway-fw")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        if let Some(c) = status
            .conditions
            .iter()
            .find(|c| c.type_ == types::VERIFIED && c.status == "False")
        {
            panic!("rollout not verified: {} {}", c.reason, c.message);
        }
        if status
            .conditions
            .iter()
            .any(|c| c.type_ == types::COMPLETE && c.status == "True")
        {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(saw_canary_alone, "never saw the canary assigned on its own");
    assert_eq!(complete.nodes.installed, NODES as i32, "{complete:?}");
    eprintln!(
        "complete in {:.1} s: bytes from peers {}, from origin {}",
        start.elapsed().as_secs_f64(),
        complete.bytes_from_peers,
        complete.bytes_from_origin
    );

    // The origin budget (150 % of the payload): every assignment carries a cap on origin reads, each
    // node read no more than its cap, and the fleet no more than the budget.
    let budget = bytes.len() as i64 * 3 / 2;
    let list = nodes.list(&Default::default()).await.unwrap();
    for n in &list.items {
        let name = n.metadata.name.clone().unwrap_or_default();
        let Some(a) = n
            .spec
            .assignments
            .iter()
            .find(|a| a.rollout == "default/gateway-fw")
        else {
            continue;
        };
        let cap = a
            .origin_allowance_bytes
            .unwrap_or_else(|| panic!("{name}: assignment without an origin cap"));
        let used = n
            .status
            .as_ref()
            .and_then(|s| s.assignments.iter().find(|s| s.rollout == a.rollout))
            .map_or(0, |s| s.bytes_from_origin);
        assert!(used <= cap, "{name} read {used} origin bytes, cap {cap}");
    }
    assert!(complete.bytes_from_origin <= budget, "{complete:?}");

    // Bytes on disk: every node's current version is the payload.
    for node in f.install_roots.keys() {
        let file = f.installed_file(node, "fw/gateway.bin");
        let got = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            got == bytes,
            "{} differs from the published payload",
            file.display()
        );
    }
}
