//! CEL rules and schema constraints, evaluated offline with kube-cel against the
//! generated schema. The same rules are compiled for real by the API server in the
//! e2e suite; here each rule is shown to accept the good case and reject the bad one.

use kube::CustomResourceExt;
use kube_cel::Validator;
use pollen_crds::UpdateRollout;
use serde_json::{Value, json};

fn rollout_schema() -> Value {
    let crd = UpdateRollout::crd();
    serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap()
}

fn good_rollout() -> Value {
    json!({
        "apiVersion": "pollen.dev/v1alpha1", "kind": "UpdateRollout",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {
            "artifact": {"reference": "registry.example.com/fleet/fw:1.0"},
            "trustPolicy": "fleet",
            "selector": {"matchLabels": {"role": "gateway"}},
            "strategy": {"waves": [{"count": 1, "pause": "5m"}, {"percent": 100}]},
            "transfer": {"chunkSizeBytes": 1048576},
            "install": {"targetPath": "fw/gateway.bin", "activationWindow": {"start": "02:00", "end": "04:00"}}
        }
    })
}

fn errors_for(mutate: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut obj = good_rollout();
    mutate(&mut obj);
    match Validator::new().validate(&rollout_schema(), &obj, None) {
        Ok(()) => vec![],
        Err(errs) => errs
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn the_good_rollout_passes_every_rule() {
    assert_eq!(errors_for(|_| {}), Vec::<String>::new());
}

#[test]
fn a_wave_needs_exactly_one_of_count_or_percent() {
    let both = errors_for(|o| o["spec"]["strategy"]["waves"][0] = json!({"count": 1, "percent": 10}));
    assert!(
        both.iter().any(|e| e.contains("exactly one of count or percent")),
        "{both:?}"
    );
    let neither = errors_for(|o| o["spec"]["strategy"]["waves"][0] = json!({"pause": "1m"}));
    assert!(
        neither
            .iter()
            .any(|e| e.contains("exactly one of count or percent")),
        "{neither:?}"
    );
}

#[test]
fn target_path_must_stay_under_the_install_root() {
    for bad in [
        "/etc/passwd",
        "fw/../../etc/shadow",
        "fw//x",
        "fw/",
        "./fw",
        "fw/current",
        "current",
        "fw/versions/x.bin",
    ] {
        let errs = errors_for(|o| o["spec"]["install"]["targetPath"] = json!(bad));
        assert!(
            errs.iter().any(|e| e.contains("targetPath must be relative")),
            "{bad}: {errs:?}"
        );
    }
    for good in ["fw/gateway.bin", "current.bin", "fw/my-versions/x", "a.b/c"] {
        let errs = errors_for(|o| o["spec"]["install"]["targetPath"] = json!(good));
        assert!(errs.is_empty(), "{good}: {errs:?}");
    }
}

#[test]
fn chunk_size_must_be_a_power_of_two() {
    let errs = errors_for(|o| o["spec"]["transfer"]["chunkSizeBytes"] = json!(1_000_000));
    assert!(errs.iter().any(|e| e.contains("power of two")), "{errs:?}");
    assert!(errors_for(|o| o["spec"]["transfer"]["chunkSizeBytes"] = json!(4_194_304)).is_empty());
}

#[test]
fn artifact_reference_must_look_like_an_oci_reference() {
    for bad in [
        "not a reference",
        "UPPER/case:tag",
        "registry.example.com/repo@sha256:abc",
    ] {
        let errs = errors_for(|o| o["spec"]["artifact"]["reference"] = json!(bad));
        assert!(
            errs.iter().any(|e| e.contains("OCI reference")),
            "{bad}: {errs:?}"
        );
    }
    for good in [
        "127.0.0.1:5000/fleet/fw:v1",
        "registry.example.com/fleet/fw@sha256:5d41402abc4b2a76b9719d911017c592ae3d1e4f3c4b2a76b9719d911017c592",
    ] {
        assert!(
            errors_for(|o| o["spec"]["artifact"]["reference"] = json!(good)).is_empty(),
            "{good}"
        );
    }
}

#[test]
fn an_activation_window_must_not_be_empty() {
    let errs =
        errors_for(|o| o["spec"]["install"]["activationWindow"] = json!({"start": "03:00", "end": "03:00"}));
    assert!(errs.iter().any(|e| e.contains("must not be empty")), "{errs:?}");
}

#[test]
fn every_rule_in_every_crd_compiles() {
    for crd in pollen_crds::render::crds() {
        let schema =
            serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        let compiled = kube_cel::compile_schema(&schema);
        assert!(
            !compiled.has_errors(),
            "{}: {:?}",
            crd.metadata.name.unwrap(),
            compiled.compilation_errors()
        );
    }
}
