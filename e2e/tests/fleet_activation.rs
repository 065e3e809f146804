//! The activation window end to end, with every part real (see [`pollen_e2e::fleet`]): the operator
//! copies the rollout's window into the assignments, and `pollen-edge-node agent` processes download
//! and verify, report `Staged` and install nothing while the window is closed. Removing the window from
//! the rollout (`kubectl edit`) lets them install without a restart, and the rollout completes. A new
//! artifact while the fleet is staged replaces the staged version.
//!
//! Needs `docker-registry`, `crd-apiserver` and `etcd` (`e2e/tools/install-deps.sh`); fails under `CI`
//! without them.

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use pollen_crds::conditions::types;
use pollen_crds::{AssignmentPhase, EdgeNode, UpdateRollout};
use pollen_e2e::apiserver::retry_throttled;
use pollen_e2e::fleet::{self, LocalFleet};

const NODES: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_window_stages_the_fleet_and_lifting_it_installs() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(mut f) = LocalFleet::start_for_test(NODES).await else {
        return;
    };
    let bytes = pollen_e2e::lab::payload::bytes(2 * 1024 * 1024 + 777, 3);
    let artifact = f
        .publish("night-fw", "2.0.0", "night.bin", bytes.clone())
        .await
        .expect("publish");
    let rollouts: Api<UpdateRollout> = Api::namespaced(f.client.clone(), "default");
    let mut ur = fleet::rollout("night-fw", &artifact, "fw/night.bin", Vec::new());
    let window = fleet::window_opening_in(180);
    ur.spec.install.activation_window = Some(window.clone());
    let pp = PostParams::default();
    retry_throttled(|| rollouts.create(&pp, &ur))
        .await
        .expect("UpdateRollout");

    // Every node downloads, verifies and reports Staged; the rollout counts them as staged.
    let nodes: Api<EdgeNode> = Api::all(f.client.clone());
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the fleet was not staged within 180 s\n{}",
            f.logs_tail(25)
        );
        f.check_alive().expect("fleet processes alive");
        let list = nodes.list(&Default::default()).await.unwrap();
        let staged = list
            .items
            .iter()
            .filter(|n| {
                n.status.as_ref().is_some_and(|s| {
                    s.assignments
                        .iter()
                        .any(|a| a.phase == AssignmentPhase::Staged && a.verified_bytes == bytes.len() as i64)
                })
            })
            .count();
        let status = rollouts.get("night-fw").await.unwrap().status.unwrap_or_default();
        if staged == NODES && status.nodes.staged == NODES as i32 {
            assert_eq!(status.nodes.installed, 0, "{status:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let list = nodes.list(&Default::default()).await.unwrap();
    for n in &list.items {
        let a = n
            .spec
            .assignments
            .iter()
            .find(|a| a.rollout == "default/night-fw")
            .expect("assigned");
        assert_eq!(
            a.activation_window.as_ref(),
            Some(&window),
            "the window reaches the node"
        );
    }
    for node in f.install_roots.keys() {
        let file = f.installed_file(node, "fw/night.bin");
        assert!(!file.exists(), "{} installed outside the window", file.display());
    }
    eprintln!("staged in {:.1} s", start.elapsed().as_secs_f64());

    // A new artifact while staged: the node drops the staged index for the new one (its run ends after
    // the new run started, which must not take the new run's place) and stages that in turn.
    let bytes = pollen_e2e::lab::payload::bytes(2 * 1024 * 1024 + 999, 4);
    let artifact = f
        .publish("night-fw", "2.0.1", "night.bin", bytes.clone())
        .await
        .expect("publish the second version");
    let first_index = rollouts
        .get("night-fw")
        .await
        .unwrap()
        .status
        .unwrap_or_default()
        .chunk_index;
    let change = serde_json::json!({"spec": {"artifact": {"reference": artifact}}});
    rollouts
        .patch("night-fw", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("a new artifact");
    let restaged = Instant::now();
    loop {
        f.check_alive().expect("fleet processes alive");
        let status = rollouts.get("night-fw").await.unwrap().status.unwrap_or_default();
        assert!(
            restaged.elapsed() < Duration::from_secs(120),
            "the new version was not staged within 120 s: {status:?}\n{}",
            f.logs_tail(25)
        );
        if status.chunk_index != first_index && status.nodes.staged == NODES as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for node in f.install_roots.keys() {
        let file = f.installed_file(node, "fw/night.bin");
        assert!(!file.exists(), "{} installed outside the window", file.display());
    }

    // The window is lifted: the nodes install without a restart, and the rollout completes.
    let lift = serde_json::json!({"spec": {"install": {"activationWindow": null}}});
    rollouts
        .patch("night-fw", &PatchParams::default(), &Patch::Merge(&lift))
        .await
        .expect("lift the window");
    let lifted = Instant::now();
    loop {
        f.check_alive().expect("fleet processes alive");
        let status = rollouts.get("night-fw").await.unwrap().status.unwrap_or_default();
        assert!(
            lifted.elapsed() < Duration::from_secs(90),
            "the fleet did not install within 90 s of the lift: {status:?}\n{}",
            f.logs_tail(25)
        );
        if status
            .conditions
            .iter()
            .any(|c| c.type_ == types::COMPLETE && c.status == "True")
        {
            assert_eq!(status.nodes.installed, NODES as i32, "{status:?}");
            assert_eq!(status.nodes.staged, 0, "{status:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("installed {:.1} s after the lift", lifted.elapsed().as_secs_f64());
    for node in f.install_roots.keys() {
        let file = f.installed_file(node, "fw/night.bin");
        let got = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            got == bytes,
            "{} differs from the published payload",
            file.display()
        );
    }
}
