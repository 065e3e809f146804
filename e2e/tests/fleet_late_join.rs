//! A node that joins the rollout's selection after the chunk index was signed, with every part real
//! (see [`pollen_e2e::fleet`]): the index's peer list does not name it, so its peers would refuse it;
//! the operator writes the director's peer grant into its assignment, its peers check the grant, and it
//! fetches the whole payload from them, nothing from the origin.
//!
//! Needs `docker-registry`, `crd-apiserver` and `etcd` (`e2e/tools/install-deps.sh`); fails under `CI`
//! without them.

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use pollen_crds::{AssignmentPhase, EdgeNode, UpdateRollout};
use pollen_e2e::apiserver::retry_throttled;
use pollen_e2e::fleet::{self, LocalFleet};

const NODES: usize = 2;
const TARGET: &str = "fw/late.bin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_after_indexing_fetches_from_its_peers() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(mut f) = LocalFleet::start_for_test(NODES).await else {
        return;
    };
    let bytes = pollen_e2e::lab::payload::bytes(3 * 1024 * 1024 + 321, 5);
    let artifact = f
        .publish("late-fw", "1.0.0", "late.bin", bytes.clone())
        .await
        .expect("publish");
    let rollouts: Api<UpdateRollout> = Api::namespaced(f.client.clone(), "default");
    let ur = fleet::rollout("late-fw", &artifact, TARGET, Vec::new());
    let pp = PostParams::default();
    retry_throttled(|| rollouts.create(&pp, &ur))
        .await
        .expect("UpdateRollout");
    f.wait_rollout("late-fw", 120, "the first nodes installed", |s| {
        s.nodes.installed == NODES as i32
    })
    .await;

    // A new device: its agent registers, the operator assigns it the same index.
    f.add_node("gw-late").await.expect("start the late node");
    let (done, took) = f
        .wait_rollout("late-fw", 120, "the late node installed", |s| {
            s.nodes.installed == NODES as i32 + 1
        })
        .await;
    eprintln!(
        "the late node installed {:.1} s after it started",
        took.as_secs_f64()
    );
    assert_eq!(std::fs::read(f.installed_file("gw-late", TARGET)).unwrap(), bytes);

    let nodes: Api<EdgeNode> = Api::all(f.client.clone());
    let late = nodes.get("gw-late").await.unwrap();
    let a = late
        .spec
        .assignments
        .iter()
        .find(|a| a.rollout == "default/late-fw")
        .expect("assigned");
    let st = wait_reported(&nodes, "gw-late", bytes.len() as i64).await;
    assert_eq!(st.phase, AssignmentPhase::Installed);
    assert_eq!(
        st.bytes_from_origin,
        0,
        "the late node read from the origin: its peers refused it? {st:?}\n{}",
        f.logs_tail(30)
    );
    assert_eq!(st.bytes_from_peers, bytes.len() as i64, "{st:?}");
    assert!(a.peer_grant.is_some(), "the assignment carries a peer grant");
    // The index was not re-signed for the late node (its peers keep their index and their data).
    assert_eq!(
        Some(a.chunk_index.as_str()),
        done.chunk_index.as_deref(),
        "{done:?}"
    );
}

/// The late node's status for the rollout once its byte counters cover the payload (the agent reports
/// every second; the installed phase may be reported before the last counters).
async fn wait_reported(nodes: &Api<EdgeNode>, name: &str, size: i64) -> pollen_crds::AssignmentStatus {
    let start = Instant::now();
    loop {
        let n = nodes.get(name).await.unwrap();
        let st = n
            .status
            .and_then(|s| s.assignments.into_iter().find(|a| a.rollout == "default/late-fw"));
        if let Some(st) = st
            && (st.bytes_from_peers + st.bytes_from_origin >= size
                || start.elapsed() > Duration::from_secs(10))
        {
            return st;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no status from {name}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
