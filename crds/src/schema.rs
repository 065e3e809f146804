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

/// A Go-style duration such as `30s`, `10m` or `1h30m`.
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

/// Parse a Go-style duration (`1h30m`, `45s`, `250ms`) into seconds.
///
/// The schema pattern guarantees the shape on the API server; this is the
/// operator's reading of it. Returns `None` for anything the pattern rejects.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        total += value * unit;
        rest = &rest[len..];
    }
    // A value past what a Duration holds (`99999999999999999999h` passes the CRD pattern) is refused,
    // not a panic.
    std::time::Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_too_large_for_a_duration_are_refused_not_a_panic() {
        assert_eq!(parse_duration("99999999999999999999h"), None);
        assert_eq!(parse_duration("1e400s"), None);
        assert_eq!(parse_duration(&format!("{}s", "9".repeat(400))), None);
        assert_eq!(
            parse_duration("1000000h"),
            Some(Duration::from_secs(3_600_000_000))
        );
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
    }

    #[test]
    fn bad_durations_are_rejected() {
        for bad in ["", "10", "s", "10x", "-5s", "1h 30m"] {
            assert_eq!(parse_duration(bad), None, "{bad:?} must not parse");
        }
    }
}
