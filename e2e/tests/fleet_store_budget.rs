//! A device that runs 20 rollouts in a row keeps its data dir within `--store-budget`, with every part
//! real (see [`pollen_e2e::fleet`]): one agent, the operator, the API server and the registry.
//!
//! Each rollout installs a new version (about 1 MiB) of the same file. The operator keeps the
//! assignments of complete rollouts, so before the budget every rollout left its whole chunk store in
//! the data dir (20 MiB after 20 rollouts). With a budget of 3 MiB the agent removes the stores of
//! finished assignments, oldest first: once each rollout has installed, the data dir holds the store
//! being seeded and the previous one, and stays within the budget. The install root keeps the current
//! version and the rollout's `keepVersions` before it. Deleting the last rollouts removes their stores
//! too (their assignments are gone), and the installed version stays.
//!
//! Prints the data dir's size after each rollout. Needs `docker-registry`, `crd-apiserver` and `etcd`
//! (`e2e/tools/install-deps.sh`); fails under `CI` without them.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use pollen_crds::{EdgeNode, RolloutPhase, UpdateRollout};
use pollen_e2e::apiserver::retry_throttled;
use pollen_e2e::fleet::{self, LocalFleet};

const NODE: &str = "gw-0";
const ROLLOUTS: u64 = 20;
const PAYLOAD: usize = 1024 * 1024 + 4321;
/// Room for two stores and the rest of the data dir (trust keys per rollout, the revocation list).
const BUDGET: u64 = 3 * 1024 * 1024;
const TARGET: &str = "fw/budget.bin";

/// Bytes on disk under `path` (blocks allocated, directories included; links not followed).
fn disk_usage(path: &Path) -> u64 {
    let meta = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut bytes = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            bytes += disk_usage(&entry.unwrap().path());
        }
    }
    bytes
}

fn count_entries(path: &Path) -> usize {
    std::fs::read_dir(path).map(|rd| rd.count()).unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Waits until the node's EdgeNode carries its endpoint, so that the first rollout selects it.
async fn wait_registered(client: &kube::Client, node: &str) {
    let nodes: Api<EdgeNode> = Api::all(client.clone());
    let start = Instant::now();
    while nodes
        .get_opt(node)
        .await
        .ok()
        .flatten()
        .and_then(|n| n.status?.endpoint)
        .is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{node} did not register"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rollouts_in_a_row_keep_the_data_dir_within_the_budget() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(mut f) = LocalFleet::start_for_test(0).await else {
        return;
    };
    f.add_node_with(NODE, &["--store-budget", &BUDGET.to_string()])
        .await
        .expect("start the node");
    wait_registered(&f.client, NODE).await;
    let data_dir = f.data_dir(NODE);
    let rollouts: Api<UpdateRollout> = Api::namespaced(f.client.clone(), "default");
    let pp = PostParams::default();
    let mut figures = Vec::new();
    for i in 0..ROLLOUTS {
        let bytes = pollen_e2e::lab::payload::bytes(PAYLOAD, i);
        let artifact = f
            .publish("budget-fw", &format!("1.0.{i}"), "budget.bin", bytes.clone())
            .await
            .expect("publish");
        let name = format!("budget-{i:02}");
        let ur = fleet::rollout(&name, &artifact, TARGET, Vec::new());
        retry_throttled(|| rollouts.create(&pp, &ur))
            .await
            .expect("UpdateRollout");
        let (_, took) = f
            .wait_rollout(&name, 120, "the node installed", |s| {
                s.phase == RolloutPhase::Complete && s.nodes.installed == 1
            })
            .await;
        assert!(
            std::fs::read(f.installed_file(NODE, TARGET)).unwrap() == bytes,
            "rollout {i}: the current version is not the payload"
        );

        let size = disk_usage(&data_dir);
        let stores = count_entries(&data_dir.join("chunks"));
        let versions = count_entries(&f.install_roots[NODE].join(TARGET).join("versions"));
        eprintln!(
            "rollout {:2}: data dir {size:>9} bytes ({:.2} MiB), {stores} chunk stores, {versions} installed versions, {:.1} s",
            i + 1,
            mib(size),
            took.as_secs_f64()
        );
        figures.push(size);
        assert!(
            size <= BUDGET,
            "after rollout {}: the data dir holds {size} bytes, over the budget of {BUDGET}\n{}",
            i + 1,
            f.logs_tail(20)
        );
        // Only as many stores go as the budget needs: the one seeding and the last finished one stay.
        assert_eq!(stores, (i as usize + 1).min(2), "after rollout {}", i + 1);
        // The install root keeps the current version and the two before it (keepVersions 2).
        assert_eq!(versions, (i as usize + 1).min(3), "after rollout {}", i + 1);
    }
    eprintln!(
        "data dir after each of {ROLLOUTS} rollouts (budget {BUDGET} bytes): largest {:.2} MiB, last {:.2} MiB",
        mib(figures.iter().copied().max().unwrap_or(0)),
        mib(figures.last().copied().unwrap_or(0))
    );

    // Deleting the rollouts whose stores are left takes their assignments away: the stores go too, the
    // installed version stays.
    let dp = kube::api::DeleteParams::default();
    for i in ROLLOUTS - 2..ROLLOUTS {
        rollouts
            .delete(&format!("budget-{i:02}"), &dp)
            .await
            .expect("delete the rollout");
    }
    let start = Instant::now();
    while count_entries(&data_dir.join("chunks")) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the stores of deleted rollouts are still there\n{}",
            f.logs_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "rollouts deleted: data dir {} bytes, no chunk store",
        disk_usage(&data_dir)
    );
    let last = pollen_e2e::lab::payload::bytes(PAYLOAD, ROLLOUTS - 1);
    assert!(std::fs::read(f.installed_file(NODE, TARGET)).unwrap() == last);
}
