//! `-o json|yaml`: objects printed the way kubectl prints them (pure).
//!
//! One object prints as itself; several print as a `v1` `List`, as `kubectl get a,b -o json` does.
//! `metadata.managedFields` is left out, as kubectl leaves it out unless asked.
//!
//! Non-goals: JSONPath and custom columns (pipe `-o json` into `jq` or use `kubectl get`).

use serde::Serialize;
use serde_json::Value;

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// JSON, indented.
    Json,
    /// YAML.
    Yaml,
}

/// Errors turning objects into text.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// An object did not serialise to JSON.
    #[error("cannot serialise to JSON")]
    Json(#[source] serde_json::Error),
    /// An object did not serialise to YAML.
    #[error("cannot serialise to YAML")]
    Yaml(#[source] serde_yaml::Error),
}

/// One object, without managed fields.
pub fn object<T: Serialize>(obj: &T) -> Result<Value, OutputError> {
    let mut v = serde_json::to_value(obj).map_err(OutputError::Json)?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    Ok(v)
}

/// Several objects as a `v1` `List`.
pub fn list(items: Vec<Value>) -> Value {
    serde_json::json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items })
}

/// The text of `doc` in `format`, ending in a newline.
pub fn render(doc: &Value, format: Format) -> Result<String, OutputError> {
    match format {
        Format::Json => serde_json::to_string_pretty(doc)
            .map(|s| s + "\n")
            .map_err(OutputError::Json),
        Format::Yaml => serde_yaml::to_string(doc).map_err(OutputError::Yaml),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_crds::{EdgeNode, EdgeNodeSpec};

    #[test]
    fn managed_fields_are_left_out_and_lists_look_like_kubectl() {
        let mut n = EdgeNode::new("gw-1", EdgeNodeSpec::default());
        n.metadata.managed_fields = Some(vec![Default::default()]);
        let v = object(&n).unwrap();
        assert!(v["metadata"].get("managedFields").is_none());
        assert_eq!(v["metadata"]["name"], "gw-1");
        assert_eq!(v["kind"], "EdgeNode");
        let doc = list(vec![v.clone(), v]);
        let json = render(&doc, Format::Json).unwrap();
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["kind"], "List");
        assert_eq!(back["items"].as_array().unwrap().len(), 2);
        let yaml = render(&doc, Format::Yaml).unwrap();
        let back: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, doc);
    }
}
