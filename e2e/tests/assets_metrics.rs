//! The observability assets in `deploy/`: the Grafana dashboard is valid and complete, the alert rules
//! pass `promtool check rules` and their unit tests, and every metric a panel or a rule uses is listed in
//! `deploy/metrics-used.txt`, registered in the source of the binary that exposes it, and (with the
//! binaries built) really served on their `/metrics`.
//!
//! Needs promtool (Debian's `prometheus` package, installed by `e2e/tools/install-deps.sh`) for the rule
//! checks, and the built `pollen-operator` / `pollen-edge-node` plus the test API server for the live
//! scrape; without them the tests fail in CI and report themselves skipped elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use pollen_e2e::tools;

fn root() -> PathBuf {
    tools::workspace_root()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/pollen-fleet.json")).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard (panel targets and variable queries) with where it is.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {:?}", p["title"]),
                t["expr"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// Every alert expression of the rule file, by alert name.
fn rule_exprs() -> Vec<(String, String)> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/prometheus/pollen-alerts.yaml")).expect("the rules are YAML");
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"]
                .as_str()
                .or(r["record"].as_str())
                .expect("alert or record name");
            out.push((
                format!("rule {name}"),
                r["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    out
}

/// Metric names in a PromQL expression. Pollen's metrics all start with `pollen_`; `up` is the one
/// series Prometheus makes that the assets use. String literals, label matchers (`{…}`) and ranges
/// (`[…]`) are removed first, so label names and values never count as metrics.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_string = false;
    let mut prev = '\0';
    for ch in expr.chars() {
        let keep = if in_string {
            if ch == '"' && prev != '\\' {
                in_string = false;
            }
            false
        } else {
            match ch {
                '"' => {
                    in_string = true;
                    false
                }
                '{' => {
                    depth_brace += 1;
                    false
                }
                '}' => {
                    depth_brace -= 1;
                    false
                }
                '[' => {
                    depth_bracket += 1;
                    false
                }
                ']' => {
                    depth_bracket -= 1;
                    false
                }
                _ => depth_brace == 0 && depth_bracket == 0,
            }
        };
        cleaned.push(if keep { ch } else { ' ' });
        prev = ch;
    }
    let mut names = BTreeSet::new();
    let chars: Vec<char> = cleaned.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '$'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let rest = chars[i..].iter().find(|c| !c.is_whitespace());
            let is_call = rest == Some(&'(');
            if !is_call && (word.starts_with("pollen_") || word == "up") {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// `deploy/metrics-used.txt`: series name -> which binary exposes it.
fn metrics_list() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (n, line) in read("deploy/metrics-used.txt").lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields.len(),
            3,
            "metrics-used.txt line {}: want `name exposed-by labels`: {line}",
            n + 1
        );
        assert!(
            matches!(fields[1], "operator" | "edge-node" | "prometheus"),
            "metrics-used.txt line {}: unknown exposer {}",
            n + 1,
            fields[1]
        );
        assert!(
            out.insert(fields[0].to_string(), fields[1].to_string()).is_none(),
            "{} listed twice",
            fields[0]
        );
    }
    out
}

/// The metric family a series belongs to, as registered (`_total` and `_bucket` are added on exposition).
fn family(series: &str) -> &str {
    series
        .strip_suffix("_total")
        .or_else(|| series.strip_suffix("_bucket"))
        .unwrap_or(series)
}

#[test]
fn promql_names_are_found_and_labels_are_not() {
    let names = metric_names(
        r#"sum by (rollout) (rate(pollen_edge_received_bytes_total{node=~"$node", source="pollen_fake"}[$__rate_interval])) / up{job="x"} unless on (rollout) label_values(pollen_operator_rollouts, phase)"#,
    );
    let want: BTreeSet<String> = [
        "pollen_edge_received_bytes_total",
        "up",
        "pollen_operator_rollouts",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want);
    assert_eq!(
        family("pollen_operator_reconcile_duration_seconds_bucket"),
        "pollen_operator_reconcile_duration_seconds"
    );
    assert_eq!(family("pollen_edge_bans_total"), "pollen_edge_bans");
}

#[test]
fn dashboard_is_valid_and_answers_the_fleet_questions() {
    let d = dashboard();
    assert_eq!(d["uid"], "pollen-fleet");
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        let pos = &p["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(x + w <= 24, "panel {:?} is wider than the grid", p["title"]);
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("title").to_string();
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: data source not the variable"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                !metric_names(expr).is_empty(),
                "{title}: query {expr:?} uses no metric"
            );
        }
        titles.push(title);
    }
    let joined = titles.join(" | ");
    for topic in [
        "Rollout progress",
        "Nodes by phase",
        "peers vs origin",
        "Offload",
        "Per-node throughput",
        "p50 / p95 / p100",
        "Verification failures by peer",
        "Bans by peer",
        "Operator reconciles",
    ] {
        assert!(
            joined.contains(topic),
            "no panel about {topic:?}; panels: {joined}"
        );
    }
}

#[test]
fn every_metric_used_is_listed_and_every_listed_metric_is_used() {
    let listed = metrics_list();
    let d = dashboard();
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (wher, expr) in dashboard_exprs(&d).into_iter().chain(rule_exprs()) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{wher}: {expr:?} uses no metric");
        for n in names {
            used.entry(n).or_default().push(wher.clone());
        }
    }
    let unlisted: Vec<String> = used
        .iter()
        .filter(|(n, _)| !listed.contains_key(*n))
        .map(|(n, w)| format!("{n} (in {})", w.join(", ")))
        .collect();
    assert!(
        unlisted.is_empty(),
        "used but not in deploy/metrics-used.txt: {unlisted:?}"
    );
    let unused: Vec<&String> = listed.keys().filter(|n| !used.contains_key(*n)).collect();
    assert!(
        unused.is_empty(),
        "listed in deploy/metrics-used.txt but used by no panel or rule: {unused:?}"
    );
}

/// Every listed metric is registered by the binary that should expose it: its registry prefix and the
/// metric's name (without prefix and exposition suffix) appear in the crate's metrics module.
#[test]
fn every_listed_metric_is_registered_in_its_binary() {
    let sources = [
        (
            "operator",
            "pollen_operator_",
            "operator/src/metrics.rs",
            "operator/src",
        ),
        (
            "edge-node",
            "pollen_edge_",
            "edge-node/src/metrics.rs",
            "edge-node/src",
        ),
    ];
    for (exposer, prefix, metrics_rs, src_dir) in sources {
        let module = read(metrics_rs);
        let prefix_literal = format!("\"{}\"", prefix.trim_end_matches('_'));
        let prefixed = std::fs::read_dir(root().join(src_dir))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
            .any(|text| text.contains(&format!("with_prefix({prefix_literal})")));
        assert!(
            prefixed,
            "{src_dir} never builds a registry with prefix {prefix_literal}"
        );
        for (series, by) in metrics_list().iter().filter(|(_, by)| by.as_str() == exposer) {
            let short = family(series)
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{series} ({by}) lacks the prefix {prefix}"));
            assert!(
                module.contains(&format!("\"{short}\"")),
                "{series} is used by the dashboard or the alerts, but {metrics_rs} registers no {short:?}"
            );
        }
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = tools::require("promtool") else {
        return;
    };
    let dir = root().join("deploy/prometheus");
    for args in [
        &["check", "rules", "pollen-alerts.yaml"][..],
        &["test", "rules", "pollen-alerts.test.yaml"][..],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert the rule file defines is exercised or at least named by the unit tests' file,
    // so a renamed alert cannot silently drop out of them.
    let tests = read("deploy/prometheus/pollen-alerts.test.yaml");
    let tested: Vec<String> = rule_exprs()
        .into_iter()
        .map(|(w, _)| w.trim_start_matches("rule ").to_string())
        .filter(|a| tests.contains(&format!("alertname: {a}")))
        .collect();
    assert!(
        tested.len() >= 4,
        "the unit tests exercise too few alerts: {tested:?}"
    );
}
