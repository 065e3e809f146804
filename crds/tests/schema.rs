//! The generated CRDs: names, printer columns, documentation and list-maps.

use kube::CustomResourceExt;
use pollen_crds::{EdgeNode, RevocationList, TrustPolicy, UpdateRollout};
use serde_json::Value;

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap()
}

/// Every property under `spec` and `status` carries a description (what `kubectl explain` shows).
fn undocumented(path: &str, schema: &Value, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let p = format!("{path}.{name}");
            let described = sub
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            // metadata/apiVersion/kind come from Kubernetes itself.
            if !described && !matches!(name.as_str(), "metadata" | "apiVersion" | "kind") {
                out.push(p.clone());
            }
            undocumented(&p, sub, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(&format!("{path}[]"), items, out);
    }
}

#[test]
fn every_field_is_documented() {
    for (kind, schema) in [
        ("UpdateRollout", schema_of::<UpdateRollout>()),
        ("EdgeNode", schema_of::<EdgeNode>()),
        ("TrustPolicy", schema_of::<TrustPolicy>()),
        ("RevocationList", schema_of::<RevocationList>()),
    ] {
        let mut missing = Vec::new();
        // LabelSelector internals are documented by Kubernetes' own types; our fields must be.
        undocumented(kind, &schema, &mut missing);
        missing.retain(|p| !p.contains(".selector."));
        assert!(missing.is_empty(), "fields without a description: {missing:#?}");
    }
}

#[test]
fn names_scopes_and_short_names() {
    let ur = UpdateRollout::crd();
    assert_eq!(ur.metadata.name.as_deref(), Some("updaterollouts.pollen.dev"));
    assert_eq!(ur.spec.scope, "Namespaced");
    assert_eq!(
        ur.spec.names.short_names.as_deref(),
        Some(&["ur".to_string()][..])
    );
    let en = EdgeNode::crd();
    assert_eq!(en.spec.scope, "Cluster");
    assert_eq!(
        en.spec.names.short_names.as_deref(),
        Some(&["en".to_string()][..])
    );
    let tp = TrustPolicy::crd();
    assert_eq!(tp.spec.scope, "Cluster");
    assert_eq!(
        tp.spec.names.short_names.as_deref(),
        Some(&["tp".to_string()][..])
    );
    let rl = RevocationList::crd();
    assert_eq!(rl.spec.scope, "Cluster");
    assert_eq!(
        rl.spec.names.short_names.as_deref(),
        Some(&["rl".to_string()][..])
    );
}

#[test]
fn rollout_printer_columns_show_phase_progress_wave_and_age() {
    let crd = UpdateRollout::crd();
    let cols = crd.spec.versions[0].additional_printer_columns.clone().unwrap();
    let names: Vec<_> = cols.iter().map(|c| c.name.as_str()).collect();
    for want in ["Phase", "Progress", "Wave", "Age"] {
        assert!(names.contains(&want), "missing printer column {want}: {names:?}");
    }
    assert!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .status
            .is_some()
    );
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    let s = schema_of::<UpdateRollout>();
    let conds = &s["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conds["x-kubernetes-list-type"], "map");
    assert_eq!(conds["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
    let en = schema_of::<EdgeNode>();
    assert_eq!(
        en["properties"]["spec"]["properties"]["assignments"]["x-kubernetes-list-map-keys"],
        serde_json::json!(["rollout"])
    );
}

#[test]
fn required_fields_are_required() {
    let s = schema_of::<UpdateRollout>();
    let required = s["properties"]["spec"]["required"].as_array().unwrap();
    for f in ["artifact", "trustPolicy", "selector", "install"] {
        assert!(required.contains(&Value::from(f)), "spec.{f} must be required");
    }
}
