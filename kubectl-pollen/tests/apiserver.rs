//! The plugin binary against a real Kubernetes API server (the e2e harness's CRD-only server, or the
//! cluster in env `POLLEN_E2E_KUBECONFIG`): objects are written as the operator and the agents would
//! write them, then `status`, `nodes`, `pause`, `resume`, `abort` and `-o json` run as a user would run
//! them, with `--kubeconfig`.
//!
//! Needs crd-apiserver and etcd (`e2e/tools/build-apiserver.sh`); without them the test fails in CI and
//! reports itself skipped elsewhere.

use std::process::{Command, Output};

use kube::api::{Api, Patch, PatchParams, PostParams};
use pollen_crds::{EdgeNode, UpdateRollout};
use pollen_e2e::apiserver::ApiServer;
use pollen_e2e::tools;
use serde_json::json;

fn plugin(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-pollen"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", "default"])
        .args(args)
        .output()
        .expect("kubectl-pollen runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_shows_and_steers_a_rollout_on_a_real_api_server() {
    if std::env::var_os(pollen_e2e::apiserver::KUBECONFIG_ENV).is_none()
        && tools::require_all(["crd-apiserver", "etcd"]).is_none()
    {
        return;
    }
    let mut server = ApiServer::from_env().await.expect("API server");
    let crds = std::fs::read_to_string(tools::workspace_root().join("crds/pollen.dev.yaml")).unwrap();
    server.apply_crds_yaml(&crds).await.expect("CRDs apply");
    let client = server.client().await.unwrap();
    let kc = server.kubeconfig_path().to_path_buf();

    // The user's rollout, and the status the operator would write.
    let rollouts: Api<UpdateRollout> = Api::namespaced(client.clone(), "default");
    let ur: UpdateRollout = serde_json::from_value(json!({
        "apiVersion": "pollen.dev/v1alpha1", "kind": "UpdateRollout",
        "metadata": {"name": "plugin-fw"},
        "spec": {
            "artifact": {"reference": "registry.example/fleet/fw:1.0.0"},
            "trustPolicy": "fleet", "selector": {},
            "strategy": {"waves": [{"count": 1}, {"percent": 100}]},
            "install": {"targetPath": "firmware/fw.bin"}
        }
    }))
    .unwrap();
    let pp = PostParams::default();
    pollen_e2e::apiserver::retry_throttled(|| rollouts.create(&pp, &ur))
        .await
        .unwrap();
    let status = json!({"status": {
        "phase": "Distributing", "currentWave": 1, "artifactSize": 4096,
        "waves": [
            {"index": 0, "targeted": 1, "installed": 1, "failed": 0, "started": true},
            {"index": 1, "targeted": 2, "installed": 0, "failed": 1, "started": true}
        ],
        "nodes": {"targeted": 3, "pending": 0, "downloading": 1, "installed": 1, "failed": 1},
        "bytesFromPeers": 6144, "bytesFromOrigin": 2048
    }});
    rollouts
        .patch_status("plugin-fw", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status written");

    // Three EdgeNodes: assignments as the operator writes them, status as the agents report it.
    let nodes: Api<EdgeNode> = Api::all(client.clone());
    for (name, wave, phase, verified, error) in [
        ("plugin-gw-1", 0, "Installed", 4096, None),
        ("plugin-gw-2", 1, "Downloading", 1024, None),
        (
            "plugin-gw-3",
            1,
            "Failed",
            512,
            Some("chunk 3 failed verification from plugin-gw-9"),
        ),
    ] {
        let en: EdgeNode = serde_json::from_value(json!({
            "apiVersion": "pollen.dev/v1alpha1", "kind": "EdgeNode",
            "metadata": {"name": name},
            "spec": {"assignments": [{
                "rollout": "default/plugin-fw", "chunkIndex": "registry.example/fleet/fw-index@sha256:1",
                "wave": wave, "sequence": 1, "targetPath": "firmware/fw.bin", "trustPolicy": "fleet"
            }]}
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &en).await.unwrap();
        let mut st = json!({"status": {
            "endpoint": format!("10.0.0.{}:7400", wave + 1), "site": "hall-a",
            "inventory": {"architecture": "aarch64", "freeDiskBytes": 1000000, "agentVersion": "0.1.0"},
            "assignments": [{
                "rollout": "default/plugin-fw", "chunkIndex": "registry.example/fleet/fw-index@sha256:1",
                "phase": phase, "verifiedBytes": verified, "totalBytes": 4096,
                "bytesFromPeers": verified * 3 / 4, "bytesFromOrigin": verified / 4
            }]
        }});
        if let Some(e) = error {
            st["status"]["assignments"][0]["lastError"] = json!(e);
        }
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&st))
            .await
            .unwrap();
    }

    let out = plugin(&kc, &["status", "plugin-fw"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    eprintln!("kubectl pollen status plugin-fw:\n{shown}");
    for want in [
        "default/plugin-fw",
        "Distributing",
        "1/3",
        "75.0%",
        "<- current",
        "plugin-gw-3 (wave 1): Failed: chunk 3 failed verification from plugin-gw-9",
        "plugin-gw-2",
        "Downloading",
    ] {
        assert!(shown.contains(want), "status lacks {want:?}:\n{shown}");
    }

    let out = plugin(&kc, &["status", "plugin-fw", "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status -o json is JSON");
    assert_eq!(doc["kind"], "List");
    assert_eq!(doc["items"][0]["kind"], "UpdateRollout");
    assert_eq!(
        doc["items"].as_array().unwrap().len(),
        4,
        "the rollout and its three nodes"
    );

    let out = plugin(&kc, &["nodes"]);
    let shown = text(&out);
    assert!(
        out.status.success() && shown.contains("plugin-gw-1") && shown.contains("aarch64"),
        "{shown}"
    );
    nodes
        .patch(
            "plugin-gw-2",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"role": "canary"}}})),
        )
        .await
        .unwrap();
    let out = plugin(&kc, &["nodes", "-l", "role=canary", "-o", "yaml"]);
    let listed: serde_json::Value = serde_yaml::from_slice(&out.stdout).expect("nodes -o yaml is YAML");
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plugin-gw-2"], "-l selects by label");

    let out = plugin(&kc, &["pause", "plugin-fw"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(rollouts.get("plugin-fw").await.unwrap().spec.strategy.paused);
    assert!(text(&plugin(&kc, &["status", "plugin-fw"])).contains("paused:   yes"));
    let out = plugin(&kc, &["resume", "plugin-fw"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!rollouts.get("plugin-fw").await.unwrap().spec.strategy.paused);

    // --watch exits 0 once the rollout is Complete.
    rollouts
        .patch_status(
            "plugin-fw",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Complete"}})),
        )
        .await
        .unwrap();
    let out = plugin(&kc, &["status", "plugin-fw", "--watch", "--interval", "1"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = plugin(&kc, &["abort", "plugin-fw"]);
    assert!(!out.status.success(), "abort without --yes must refuse");
    assert!(
        rollouts.get_opt("plugin-fw").await.unwrap().is_some(),
        "nothing deleted without --yes"
    );
    let out = plugin(&kc, &["abort", "plugin-fw", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let gone = rollouts.get_opt("plugin-fw").await.unwrap();
    assert!(
        gone.is_none_or(|r| r.metadata.deletion_timestamp.is_some()),
        "rollout deleted (or finalizing)"
    );

    let out = plugin(&kc, &["status", "no-such-rollout"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot get updaterollout default/no-such-rollout"),
        "{}",
        text(&out)
    );

    for n in ["plugin-gw-1", "plugin-gw-2", "plugin-gw-3"] {
        let _ = nodes.delete(n, &Default::default()).await;
    }
    server.stop().await;
}
