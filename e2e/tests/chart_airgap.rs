//! The k3s air-gap bundle (`deploy/airgap/make-bundle.sh`): without a container engine
//! (`--skip-images`) it still lays out the chart archive, the CRDs, and a k3s `HelmChart` manifest
//! whose embedded chart is byte-for-byte the packaged chart, with checksums of every file.
//!
//! Needs helm (`e2e/tools/install-deps.sh`); without it the test fails in CI and reports itself
//! skipped elsewhere.

use std::process::Command;

use base64::Engine as _;
use pollen_e2e::tools;

#[test]
fn bundle_lays_out_k3s_directories_with_the_chart_embedded() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let root = tools::workspace_root();
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("bundle");
    let run = Command::new("sh")
        .arg(root.join("deploy/airgap/make-bundle.sh"))
        .args(["-a", "arm64", "--skip-images", "-o"])
        .arg(&bundle)
        .env("HELM", &helm)
        .output()
        .expect("sh runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "make-bundle.sh failed: {stderr}");
    // Without images it says which images the bundle needs, pinned.
    for image in [
        "pollen-operator:0.1.0",
        "pollen-edge-node:0.1.0",
        "busybox:1.37.0",
    ] {
        assert!(stderr.contains(image), "the image list lacks {image}: {stderr}");
    }

    let tgz = std::fs::read(bundle.join("charts/pollen-0.1.0.tgz")).expect("chart archive");
    let crds = std::fs::read(bundle.join("crds/pollen.dev.yaml")).unwrap();
    assert_eq!(crds, std::fs::read(root.join("crds/pollen.dev.yaml")).unwrap());
    assert!(
        bundle.join("agent/images").is_dir(),
        "agent/images exists for the image tarball"
    );

    let manifest = std::fs::read_to_string(bundle.join("server/manifests/pollen.yaml")).unwrap();
    let helmchart: serde_yaml::Value = serde_yaml::from_str(&manifest).expect("HelmChart YAML");
    assert_eq!(helmchart["kind"], "HelmChart");
    assert_eq!(helmchart["apiVersion"], "helm.cattle.io/v1");
    assert_eq!(helmchart["metadata"]["namespace"], "kube-system");
    assert_eq!(helmchart["spec"]["targetNamespace"], "pollen-system");
    let embedded = base64::engine::general_purpose::STANDARD
        .decode(helmchart["spec"]["chartContent"].as_str().expect("chartContent"))
        .expect("chartContent is base64");
    assert!(
        embedded == tgz,
        "the embedded chart differs from the packaged chart"
    );
    let values: serde_yaml::Value =
        serde_yaml::from_str(helmchart["spec"]["valuesContent"].as_str().unwrap()).unwrap();
    assert_eq!(
        values["image"]["pullPolicy"], "IfNotPresent",
        "air-gapped nodes must not pull"
    );

    // The packaged chart renders (helm reads the archive the bundle carries).
    let rendered = Command::new(&helm)
        .arg("template")
        .arg("pollen")
        .arg(bundle.join("charts/pollen-0.1.0.tgz"))
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );

    let sums = std::fs::read_to_string(bundle.join("SHA256SUMS")).unwrap();
    for f in [
        "./charts/pollen-0.1.0.tgz",
        "./crds/pollen.dev.yaml",
        "./server/manifests/pollen.yaml",
    ] {
        assert!(
            sums.lines().any(|l| l.ends_with(f)),
            "SHA256SUMS lacks {f}:\n{sums}"
        );
    }
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&bundle)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn bundle_refuses_an_unknown_architecture() {
    let root = tools::workspace_root();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new("sh")
        .arg(root.join("deploy/airgap/make-bundle.sh"))
        .args(["-a", "sparc", "--skip-images", "-o"])
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("unsupported architecture sparc"));
}
