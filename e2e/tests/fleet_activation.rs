//! The activation window end to end, with every part real (see [`pollen_e2e::fleet`]): the operator
//! copies the rollout's window into the assignments, and `pollen-edge-node agent` processes download
//! and verify, report `Staged` and install nothing while the window is closed. Removing the window from
//! the rollout (`kubectl edit`) lets them install without a restart, and the rollout completes. A new
//! artifact while the fleet is staged replaces the staged version.
//!
//! Needs `docker-registry`, `crd-apiserver` and `etcd` (`e2e/tools/install-deps.sh`); fails under `CI`
//! without them.

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
    let (staged, took) = f
        .wait_rollout("night-fw", 180, "the fleet was staged", |s| {
            s.nodes.staged == NODES as i32
        })
        .await;
    assert_eq!(staged.nodes.installed, 0, "{staged:?}");
    let nodes: Api<EdgeNode> = Api::all(f.client.clone());
    for n in &nodes.list(&Default::default()).await.unwrap().items {
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
        let st = n
            .status
            .as_ref()
            .and_then(|s| s.assignments.iter().find(|s| s.rollout == a.rollout));
        assert!(
            st.is_some_and(|s| s.phase == AssignmentPhase::Staged && s.verified_bytes == bytes.len() as i64),
            "{:?} staged with the whole payload verified: {st:?}",
            n.metadata.name
        );
    }
    nothing_installed(&f);
    eprintln!("staged in {:.1} s", took.as_secs_f64());

    // A new artifact while staged: the node drops the staged index for the new one (its run ends after
    // the new run started, which must not take the new run's place) and stages that in turn.
    let bytes = pollen_e2e::lab::payload::bytes(2 * 1024 * 1024 + 999, 4);
    let artifact = f
        .publish("night-fw", "2.0.1", "night.bin", bytes.clone())
        .await
        .expect("publish the second version");
    let change = serde_json::json!({"spec": {"artifact": {"reference": artifact}}});
    rollouts
        .patch("night-fw", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("a new artifact");
    f.wait_rollout("night-fw", 120, "the new version was staged", |s| {
        s.chunk_index != staged.chunk_index && s.nodes.staged == NODES as i32
    })
    .await;
    nothing_installed(&f);

    // The window is lifted: the nodes install without a restart, and the rollout completes.
    let lift = serde_json::json!({"spec": {"install": {"activationWindow": null}}});
    rollouts
        .patch("night-fw", &PatchParams::default(), &Patch::Merge(&lift))
        .await
        .expect("lift the window");
    let (complete, took) = f
        .wait_rollout("night-fw", 90, "the fleet installed after the lift", |s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == types::COMPLETE && c.status == "True")
        })
        .await;
    assert_eq!(complete.nodes.installed, NODES as i32, "{complete:?}");
    assert_eq!(complete.nodes.staged, 0, "{complete:?}");
    eprintln!("installed {:.1} s after the lift", took.as_secs_f64());
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

/// No node has a current version of the target.
fn nothing_installed(f: &LocalFleet) {
    for node in f.install_roots.keys() {
        let file = f.installed_file(node, "fw/night.bin");
        assert!(!file.exists(), "{} installed outside the window", file.display());
    }
}
