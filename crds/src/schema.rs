//! Hand-written schema fragments where the derived one cannot say enough.
//!
//! Kubernetes wants list-maps and a few string formats declared explicitly so
//! that server-side apply merges lists by key and `kubectl explain` shows the
//! constraint. Everything else is derived from the Rust types.

use schemars::{Schema, SchemaGenerator, json_schema};

/// `status.conditions`: the standard `metav1.Condition` list, as a list-map keyed by `type`.
pub fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The latest observations of the object's state, as standard Kubernetes conditions keyed by `type` (for example `Ready`, `Verified`, `Complete`).",
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": { "type": "string", "format": "date-time", "description": "When the condition last changed status." },
                "message": { "type": "string", "maxLength": 32768, "description": "A human-readable explanation of the transition." },
                "observedGeneration": { "type": "integer", "format": "int64", "minimum": 0, "description": "The `metadata.generation` this condition was computed from." },
                "reason": { "type": "string", "maxLength": 1024, "minLength": 1, "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", "description": "A machine-readable CamelCase reason for the last transition." },
                "status": { "type": "string", "enum": ["True", "False", "Unknown"], "description": "Status of the condition." },
                "type": { "type": "string", "maxLength": 316, "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$", "description": "The condition type, in CamelCase." }
            }
        }
    })
}

/// A Go-style duration such as `30s`, `10m` or `1h30m` (read with [`crate::duration::parse`]).
pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$",
        "maxLength": 32,
        "description": "A duration such as `30s`, `10m` or `1h30m`."
    })
}

/// Same as [`duration`], but nullable (for optional fields).
pub fn optional_duration(g: &mut SchemaGenerator) -> Schema {
    duration(g)
}

/// A list-map keyed by `rollout` (assignments and their statuses on an EdgeNode).
pub fn keyed_by_rollout<T: schemars::JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    let mut s = g.subschema_for::<Vec<T>>();
    s.insert("x-kubernetes-list-type".into(), "map".into());
    s.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["rollout"]),
    );
    s
}

/// A list-map keyed by `name` (publishers of a TrustPolicy).
pub fn keyed_by_name<T: schemars::JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    let mut s = g.subschema_for::<Vec<T>>();
    s.insert("x-kubernetes-list-type".into(), "map".into());
    s.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["name"]));
    s
}
