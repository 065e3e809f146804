//! The example manifests in deploy/examples parse into the Rust types and survive a round trip.

use std::path::PathBuf;

use pollen_crds::{EdgeNode, TrustPolicy, UpdateRollout};
use serde::{Serialize, de::DeserializeOwned};

fn example<K: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(file: &str) -> K {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed: K = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let again: K = serde_yaml::from_str(&serde_yaml::to_string(&parsed).unwrap()).unwrap();
    assert_eq!(parsed, again, "{file} does not survive a round trip");
    parsed
}

#[test]
fn update_rollout_example() {
    let ur: UpdateRollout = example("updaterollout.yaml");
    assert_eq!(ur.spec.strategy.waves.len(), 3);
    assert_eq!(ur.spec.strategy.waves[0].count, Some(1));
    assert_eq!(ur.spec.strategy.success_threshold_percent, 95);
    assert_eq!(ur.spec.install.keep_versions, 2);
    assert!(pollen_crds::duration::parse(ur.spec.strategy.waves[0].pause.as_deref().unwrap()).is_ok());
}

#[test]
fn edge_node_example() {
    let en: EdgeNode = example("edgenode.yaml");
    assert_eq!(en.spec.assignments.len(), 1);
    let st = en.status.unwrap();
    assert_eq!(st.assignments[0].phase, pollen_crds::AssignmentPhase::Downloading);
    assert_eq!(st.installed.len(), 1);
}

#[test]
fn trust_policy_example() {
    let tp: TrustPolicy = example("trustpolicy.yaml");
    assert_eq!(tp.spec.publishers.len(), 1);
    assert!(tp.spec.director.public_key.contains("BEGIN PUBLIC KEY"));
}

#[test]
fn defaults_apply_when_fields_are_omitted() {
    let ur: UpdateRollout = serde_yaml::from_str(
        "apiVersion: pollen.dev/v1alpha1\nkind: UpdateRollout\nmetadata: {name: r}\nspec:\n  artifact: {reference: r.example/a:1}\n  trustPolicy: t\n  selector: {}\n  install: {targetPath: a.bin}\n",
    )
    .unwrap();
    assert_eq!(ur.spec.strategy.success_threshold_percent, 100);
    assert_eq!(ur.spec.strategy.failure_threshold, 0);
    assert!(ur.spec.strategy.waves.is_empty());
    assert_eq!(ur.spec.install.keep_versions, 2);
}

#[test]
fn malformed_manifests_are_rejected() {
    // A missing required field, and a wrong type, are parse errors, not silent defaults.
    assert!(serde_yaml::from_str::<UpdateRollout>(
        "apiVersion: pollen.dev/v1alpha1\nkind: UpdateRollout\nmetadata: {name: r}\nspec:\n  trustPolicy: t\n  selector: {}\n  install: {targetPath: a}\n"
    )
    .is_err());
    assert!(serde_yaml::from_str::<UpdateRollout>(
        "apiVersion: pollen.dev/v1alpha1\nkind: UpdateRollout\nmetadata: {name: r}\nspec:\n  artifact: {reference: a/b:1}\n  trustPolicy: t\n  selector: {}\n  install: {targetPath: a, keepVersions: many}\n"
    )
    .is_err());
}
