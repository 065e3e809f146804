//! The Helm chart (`charts/pollen`): `helm lint`, `helm template` for the default values and every
//! documented variant (`charts/pollen/ci/*-values.yaml`), and checks on the rendered objects: exact
//! RBAC, probes, pinned images, the security context, the agent's memory limit, node identity and store
//! budget, schema rejection of bad values, drift of the plain manifests in `deploy/manifests/`, the chart's
//! flags against the binaries' `--help`, and the chart's CRDs applied to a real API server.
//!
//! Needs helm (`e2e/tools/install-deps.sh` puts it in `.tools/bin`); without it the tests fail in CI
//! and report themselves skipped elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use pollen_e2e::tools;
use serde::Deserialize;
use serde_yaml::Value;

fn root() -> PathBuf {
    tools::workspace_root()
}

fn chart_dir() -> PathBuf {
    root().join("charts/pollen")
}

/// The documented variants: `None` is the default values, then every `ci/*-values.yaml`.
fn variants() -> Vec<Option<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))
        .expect("charts/pollen/ci exists")
        .map(|e| e.expect("readable ci entry").path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected the documented variants in charts/pollen/ci, found {files:?}"
    );
    std::iter::once(None).chain(files.into_iter().map(Some)).collect()
}

fn variant_name(v: &Option<PathBuf>) -> String {
    v.as_ref()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .unwrap_or_else(|| "default values".to_string())
}

/// Runs `helm template` with `args`; `Ok(stdout)` on success, `Err(stderr)` on failure.
fn helm_template(helm: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm)
        .args(["template", "pollen"])
        .arg(chart_dir())
        .args(["--namespace", "pollen-system"])
        .args(args)
        .output()
        .expect("helm runs");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("helm prints UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn render_variant(helm: &Path, v: &Option<PathBuf>) -> Vec<Value> {
    let mut args: Vec<String> = Vec::new();
    if let Some(f) = v {
        args.push("--values".into());
        args.push(f.to_string_lossy().into_owned());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let yaml = helm_template(helm, &argv)
        .unwrap_or_else(|e| panic!("helm template with {} failed:\n{e}", variant_name(v)));
    documents(&yaml)
}

/// Every non-empty YAML document of a stream.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

fn find<'a>(docs: &'a [Value], k: &str, name_suffix: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| kind(d) == k && name(d).ends_with(name_suffix))
}

fn must<'a>(docs: &'a [Value], k: &str, name_suffix: &str) -> &'a Value {
    find(docs, k, name_suffix).unwrap_or_else(|| {
        let have: Vec<String> = docs.iter().map(|d| format!("{}/{}", kind(d), name(d))).collect();
        panic!("no {k} named *{name_suffix} in {have:?}")
    })
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn strs(v: &Value) -> Vec<String> {
    seq(v)
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// Every container and init container of every workload (and bare Pod) in `docs`.
fn containers(docs: &[Value]) -> Vec<(String, &Value, &Value)> {
    let mut out = Vec::new();
    for d in docs {
        let pod_spec = match kind(d) {
            "Deployment" | "DaemonSet" | "StatefulSet" | "Job" => &d["spec"]["template"]["spec"],
            "Pod" => &d["spec"],
            _ => continue,
        };
        for list in ["initContainers", "containers"] {
            for c in seq(&pod_spec[list]) {
                out.push((
                    format!("{}/{}:{}", kind(d), name(d), c["name"].as_str().unwrap_or("?")),
                    pod_spec,
                    c,
                ));
            }
        }
    }
    out
}

/// One RBAC rule as a comparable string: `group|resource|resourceNames|verbs` (sorted).
fn rules(role: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in seq(&role["rules"]) {
        let mut verbs = strs(&r["verbs"]);
        verbs.sort();
        let names = strs(&r["resourceNames"]).join(",");
        for g in strs(&r["apiGroups"]) {
            for res in strs(&r["resources"]) {
                out.insert(format!("{g}|{res}|{names}|{}", verbs.join(",")));
            }
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn args_of(c: &Value) -> Vec<String> {
    strs(&c["args"])
}

fn flag_names(args: &[String]) -> BTreeSet<String> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect()
}

#[test]
fn helm_lint_is_clean_for_every_variant() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    for v in variants() {
        let mut cmd = Command::new(&helm);
        cmd.args(["lint", "--strict", "--namespace", "pollen-system"])
            .arg(chart_dir());
        if let Some(f) = &v {
            cmd.arg("--values").arg(f);
        }
        let out = cmd.output().expect("helm runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "helm lint --strict with {} failed:\n{text}",
            variant_name(&v)
        );
        assert!(
            !text.contains("[ERROR]") && !text.contains("[WARNING]"),
            "helm lint with {}:\n{text}",
            variant_name(&v)
        );
    }
}

#[test]
fn every_variant_renders_pinned_non_root_read_only_containers() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    for v in variants() {
        let docs = render_variant(&helm, &v);
        let all = containers(&docs);
        assert!(!all.is_empty(), "{}: no containers rendered", variant_name(&v));
        for (what, pod, c) in &all {
            let image = c["image"].as_str().unwrap_or_else(|| panic!("{what}: no image"));
            let last = image.rsplit('/').next().unwrap();
            assert!(
                last.contains(':') || last.contains('@'),
                "{what}: image {image} has no tag"
            );
            assert!(!image.ends_with(":latest"), "{what}: image {image} uses latest");
            let sc = &c["securityContext"];
            assert_eq!(
                sc["readOnlyRootFilesystem"],
                Value::Bool(true),
                "{what}: root filesystem not read-only"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"],
                Value::Bool(false),
                "{what}: privilege escalation allowed"
            );
            assert_eq!(
                strs(&sc["capabilities"]["drop"]),
                vec!["ALL"],
                "{what}: capabilities not dropped"
            );
            assert!(
                c["resources"]["limits"]["memory"].as_str().is_some(),
                "{what}: no memory limit"
            );
            if c["name"] == "volume-permissions" {
                // The one root container: it only chowns the hostPath directories.
                assert_eq!(
                    strs(&sc["capabilities"]["add"]),
                    vec!["CHOWN", "FOWNER"],
                    "{what}"
                );
            } else {
                let non_root = sc["runAsNonRoot"] == Value::Bool(true)
                    || (sc["runAsNonRoot"].is_null()
                        && pod["securityContext"]["runAsNonRoot"] == Value::Bool(true));
                assert!(non_root, "{what}: may run as root");
                assert_ne!(
                    pod["securityContext"]["runAsUser"],
                    Value::from(0),
                    "{what}: runs as UID 0"
                );
            }
        }
        // The test Pod is a hook, not a resource of the release.
        for d in docs.iter().filter(|d| kind(d) == "Pod") {
            assert_eq!(
                d["metadata"]["annotations"]["helm.sh/hook"],
                Value::from("test"),
                "{}: bare Pod",
                name(d)
            );
        }
    }
}

#[test]
fn operator_deployment_has_leader_election_probes_and_mounted_keys() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let docs = render_variant(&helm, &None);
    let dep = must(&docs, "Deployment", "-operator");
    assert_eq!(dep["spec"]["replicas"], Value::from(2));
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args = args_of(c);
    for want in [
        "--leader-election=true",
        "--director-key=/etc/pollen/director/cosign.key",
        "--fleet-ca-cert=/etc/pollen/fleet-ca/tls.crt",
        "--fleet-ca-key=/etc/pollen/fleet-ca/tls.key",
        "--signer-name=pollen.dev/edge-peer",
        "--certificate-lifetime=24h",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "operator args lack {want}: {args:?}"
        );
    }
    // The key's password comes from the key's own Secret, as an env var the binary reads.
    let pw = seq(&c["env"])
        .iter()
        .find(|e| e["name"] == "POLLEN_DIRECTOR_KEY_PASSWORD")
        .expect("director key password env");
    assert_eq!(
        pw["valueFrom"]["secretKeyRef"]["name"],
        Value::from("pollen-director")
    );
    assert_eq!(
        pw["valueFrom"]["secretKeyRef"]["key"],
        Value::from("cosign.password")
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], Value::from("/healthz"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], Value::from("/readyz"));
    assert_eq!(c["startupProbe"]["httpGet"]["path"], Value::from("/healthz"));
    // Keys are mounted files: the director key and fleet CA Secrets, nothing read through the API.
    let secrets: BTreeSet<String> = seq(&pod["volumes"])
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str().map(str::to_string))
        .collect();
    assert_eq!(secrets, set(&["pollen-director", "pollen-fleet-ca"]));
    // The generated fleet CA has the cert-manager layout and survives uninstall.
    let ca = must(&docs, "Secret", "-fleet-ca");
    assert_eq!(ca["type"], Value::from("kubernetes.io/tls"));
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            ca["data"][key].as_str().is_some_and(|s| !s.is_empty()),
            "fleet CA lacks {key}"
        );
    }
    assert_eq!(
        ca["metadata"]["annotations"]["helm.sh/resource-policy"],
        Value::from("keep")
    );
    assert!(find(&docs, "PodDisruptionBudget", "-operator").is_some());
    // The operator holds the keys: it is kept off every node the edge agent runs on.
    let ds = must(&docs, "DaemonSet", "-edge-node");
    let edge_selector = ds["spec"]["template"]["spec"]["nodeSelector"]
        .as_mapping()
        .expect("the agent has a nodeSelector")
        .clone();
    assert!(!edge_selector.is_empty());
    let terms = seq(
        &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
    );
    assert_eq!(terms.len(), 1, "{:?}", pod["affinity"]);
    for (k, v) in &edge_selector {
        assert!(
            seq(&terms[0]["matchExpressions"])
                .iter()
                .any(|e| e["key"] == *k && e["operator"] == "NotIn" && seq(&e["values"]).contains(v)),
            "the operator may land on a device labelled {k:?}={v:?}: {:?}",
            pod["affinity"]
        );
    }
    assert!(
        pod["tolerations"].is_null(),
        "the operator tolerates no taint by default, so tainted devices keep it off"
    );
    for prefix in ["node-restriction.kubernetes.io/", "node-role.kubernetes.io/"] {
        assert!(args.contains(&format!("--copy-node-labels={prefix}")), "{args:?}");
    }
    let test = must(&docs, "Pod", "-test-ready");
    let script = test["spec"]["containers"][0]["command"][2].as_str().unwrap();
    assert!(
        script.contains("/readyz"),
        "helm test does not check /readyz: {script}"
    );
}

#[test]
fn edge_node_daemonset_fits_small_devices_and_knows_its_node() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let docs = render_variant(&helm, &None);
    let ds = must(&docs, "DaemonSet", "-edge-node");
    let pod = &ds["spec"]["template"]["spec"];
    let c = seq(&pod["containers"])
        .iter()
        .find(|c| c["name"] == "edge-node")
        .expect("edge-node container");
    assert_eq!(c["resources"]["limits"]["memory"], Value::from("64Mi"));
    assert!(c["resources"]["requests"]["memory"].as_str().is_some());
    assert_eq!(
        pod["nodeSelector"]["pollen.dev/edge"],
        Value::from("true"),
        "the user chooses the nodes"
    );
    assert!(seq(&pod["tolerations"]).len() >= 3, "edge tolerations missing");
    let node_env = seq(&c["env"])
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME env");
    assert_eq!(
        node_env["valueFrom"]["fieldRef"]["fieldPath"],
        Value::from("spec.nodeName")
    );
    assert!(args_of(c).contains(&"--node-name=$(NODE_NAME)".to_string()));
    let quic = seq(&c["ports"])
        .iter()
        .find(|p| p["name"] == "quic")
        .expect("quic port");
    assert_eq!(quic["protocol"], Value::from("UDP"));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], Value::from("/healthz"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], Value::from("/readyz"));
    let data = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == "data")
        .expect("data volume");
    assert_eq!(data["hostPath"]["path"], Value::from("/var/lib/pollen/data"));
    // The agents get the CA certificate from a ConfigMap: a kubelet can read every Secret its pods
    // mount, and no edge device may hold the fleet CA key.
    for v in seq(&pod["volumes"]) {
        if let Some(s) = v["secret"]["secretName"].as_str() {
            assert!(
                !s.contains("fleet-ca"),
                "the agent mounts the fleet CA Secret {s}"
            );
        }
    }
    let bundle = must(&docs, "ConfigMap", "-fleet-ca-bundle");
    let pem = bundle["data"]["ca.crt"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----") && !pem.contains("PRIVATE KEY"));
    let svc = must(&docs, "Service", "-edge-node-peers");
    assert_eq!(svc["spec"]["clusterIP"], Value::from("None"));
    assert!(seq(&svc["spec"]["ports"]).iter().any(|p| p["protocol"] == "UDP"));

    // Identity: by default the agent makes its key on the device and asks the operator's signer,
    // so the identity folder is writable; with provisioned files it is read-only.
    let args = args_of(c);
    for want in [
        "--certificate-source=csr",
        "--signer-name=pollen.dev/edge-peer",
        "--certificate-lifetime=24h",
    ] {
        assert!(args.contains(&want.to_string()), "{want} missing from {args:?}");
    }
    let identity_mount = |c: &Value| {
        seq(&c["volumeMounts"])
            .iter()
            .find(|m| m["name"] == "identity")
            .expect("identity mount")
            .clone()
    };
    assert_eq!(identity_mount(c)["readOnly"], Value::from(false));
    // hostPath folders are created root-owned: the init container hands the identity folder to the
    // agent's (non-root) user, or the agent could not write its key.
    let init = seq(&pod["initContainers"])
        .iter()
        .find(|c| c["name"] == "volume-permissions")
        .expect("volume-permissions init container");
    let script = strs(&init["command"]).join(" ");
    assert!(script.contains("/identity"), "{script}");
    assert!(seq(&init["volumeMounts"]).iter().any(|m| m["name"] == "identity"));
    let files = documents(
        &helm_template(&helm, &["--set", "edgeNode.certificateSource=files"]).expect("files variant"),
    );
    let ds = must(&files, "DaemonSet", "-edge-node");
    let c = seq(&ds["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"] == "edge-node")
        .expect("edge-node container");
    assert_eq!(identity_mount(c)["readOnly"], Value::from(true));
    let args = args_of(c);
    assert!(args.contains(&"--certificate-source=files".to_string()));
    assert!(!args.iter().any(|a| a.starts_with("--signer-name")), "{args:?}");
    // The operator approves only the agents' ServiceAccount.
    let op = must(&docs, "Deployment", "-operator");
    let op_c = &seq(&op["spec"]["template"]["spec"]["containers"])[0];
    assert!(
        args_of(op_c).contains(&"--edge-node-service-account=pollen-system/pollen-edge-node".to_string()),
        "{:?}",
        args_of(op_c)
    );
}

/// The agent's arguments with `args` given to `helm template`.
fn edge_node_args(helm: &Path, args: &[&str]) -> Vec<String> {
    let docs = documents(&helm_template(helm, args).expect("renders"));
    let ds = must(&docs, "DaemonSet", "-edge-node");
    let c = seq(&ds["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"] == "edge-node")
        .expect("edge-node container");
    args_of(c)
}

#[test]
fn the_store_budget_reaches_the_agent_as_plain_bytes() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let budget = |args: &[&str]| -> Vec<String> {
        edge_node_args(&helm, args)
            .into_iter()
            .filter(|a| a.starts_with("--store-budget"))
            .collect()
    };
    // The default bounds the data dir (1 GiB).
    assert_eq!(budget(&[]), ["--store-budget=1073741824"]);
    // Large values stay integers; zero is a budget (keep only the stores in use), null is none.
    assert_eq!(
        budget(&["--set", "edgeNode.storeBudgetBytes=5368709120"]),
        ["--store-budget=5368709120"]
    );
    assert_eq!(
        budget(&["--set", "edgeNode.storeBudgetBytes=0"]),
        ["--store-budget=0"]
    );
    assert!(budget(&["--set", "edgeNode.storeBudgetBytes=null"]).is_empty());
}

#[test]
fn rbac_is_exactly_the_least_privilege_set() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let docs = render_variant(&helm, &None);
    let operator = rules(must(&docs, "ClusterRole", "-operator"));
    assert_eq!(
        operator,
        set(&[
            "pollen.dev|updaterollouts||get,list,patch,update,watch",
            "pollen.dev|updaterollouts/status||get,patch,update",
            "pollen.dev|updaterollouts/finalizers||update",
            "pollen.dev|edgenodes||get,list,patch,update,watch",
            "pollen.dev|trustpolicies||get,list,watch",
            // Node labels copied onto EdgeNodes.
            "|nodes||get,list,watch",
            // The version ledger in the TrustPolicy status; the agent has no such rule.
            "pollen.dev|trustpolicies/status||get,patch",
            "pollen.dev|revocationlists||create,get,list,patch,watch",
            "events.k8s.io|events||create,patch",
            "certificates.k8s.io|certificatesigningrequests||get,list,watch",
            "certificates.k8s.io|certificatesigningrequests/approval||update",
            "certificates.k8s.io|certificatesigningrequests/status||update",
            "certificates.k8s.io|signers|pollen.dev/edge-peer|approve,sign",
        ])
    );
    let operator_ns = rules(must(&docs, "Role", "-operator"));
    assert_eq!(
        operator_ns,
        set(&[
            "coordination.k8s.io|leases||create,get,patch,update",
            "|pods||get,list"
        ])
    );
    let agent = rules(must(&docs, "ClusterRole", "-edge-node"));
    assert_eq!(
        agent,
        set(&[
            // No patch or update on the EdgeNode itself: its labels select rollouts.
            "pollen.dev|edgenodes||create,get,list,watch",
            "pollen.dev|edgenodes/status||get,patch",
            "pollen.dev|trustpolicies||get,list,watch",
            "pollen.dev|revocationlists||get,list,watch",
            "certificates.k8s.io|certificatesigningrequests||create,get,list,watch",
        ])
    );
    for role in docs.iter().filter(|d| matches!(kind(d), "ClusterRole" | "Role")) {
        for rule in rules(role) {
            assert!(
                !rule.contains("|secrets|"),
                "{} may read Secrets: {rule}",
                name(role)
            );
            assert!(!rule.contains('*'), "{} has a wildcard: {rule}", name(role));
        }
    }
    // Every binding names this chart's roles and ServiceAccounts.
    for b in docs
        .iter()
        .filter(|d| matches!(kind(d), "ClusterRoleBinding" | "RoleBinding"))
    {
        assert_eq!(b["roleRef"]["name"], b["metadata"]["name"]);
        assert_eq!(b["subjects"][0]["namespace"], Value::from("pollen-system"));
    }
    // RBAC cannot name "my own EdgeNode"; the admission policy does, keyed on the token's node name.
    let vap = must(&docs, "ValidatingAdmissionPolicy", "-own-edgenode");
    let text = serde_yaml::to_string(vap).unwrap();
    assert!(text.contains("authentication.kubernetes.io/node-name"));
    assert!(text.contains("system:serviceaccount:pollen-system:pollen-edge-node"));
    assert_eq!(vap["spec"]["failurePolicy"], Value::from("Fail"));
    let binding = must(&docs, "ValidatingAdmissionPolicyBinding", "-own-edgenode");
    assert_eq!(binding["spec"]["policyName"], vap["metadata"]["name"]);
    assert_eq!(strs(&binding["spec"]["validationActions"]), vec!["Deny"]);
}

/// The agent admission policy's CEL, evaluated by cel-python on the admission requests an agent could
/// send (deploy/checks/agent_policy.py: own and other nodes, spec writes, the quarantine label, the
/// revocation finalizer, the issued-certificates ledger, CSR signer names). cel-python is not the API
/// server's cel-go: this checks the policy's logic; the API server compiles it when it is created.
#[test]
fn agent_admission_policy_allows_and_denies_what_it_says() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let Some(cel) = tools::require_cel_python() else {
        return;
    };
    let vap = helm_template(&helm, &["-s", "templates/agent-admission-policy.yaml"]).expect("renders");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vap).unwrap();
    let out = std::process::Command::new("python3")
        .arg(root().join("deploy/checks/agent_policy.py"))
        .arg(file.path())
        .env("PYTHONPATH", cel)
        .output()
        .expect("run python3");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("failures 0"),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.lines().filter(|l| l.starts_with("ok")).count() >= 20,
        "{report}"
    );
}

#[test]
fn variants_change_what_they_document() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let ci = chart_dir().join("ci");
    let monitoring = render_variant(&helm, &Some(ci.join("monitoring-values.yaml")));
    for k in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(
            monitoring.iter().any(|d| kind(d) == k),
            "monitoring variant lacks {k}"
        );
    }
    let rule = must(&monitoring, "PrometheusRule", "");
    assert!(
        seq(&rule["spec"]["groups"]).len() >= 2,
        "PrometheusRule has no rule groups"
    );
    let dash = must(&monitoring, "ConfigMap", "-dashboard");
    assert_eq!(dash["metadata"]["namespace"], Value::from("monitoring"));
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], Value::from("1"));

    let single = render_variant(&helm, &Some(ci.join("single-operator-values.yaml")));
    let dep = must(&single, "Deployment", "-operator");
    assert_eq!(dep["spec"]["replicas"], Value::from(1));
    assert!(
        args_of(&dep["spec"]["template"]["spec"]["containers"][0])
            .contains(&"--leader-election=false".to_string())
    );
    assert!(find(&single, "ValidatingAdmissionPolicy", "").is_none());
    assert!(find(&single, "PodDisruptionBudget", "").is_none());

    let edge_only = render_variant(&helm, &Some(ci.join("edge-only-values.yaml")));
    assert!(find(&edge_only, "Deployment", "").is_none());
    assert!(
        find(&edge_only, "Secret", "").is_none(),
        "no Secret is rendered when the CA is given"
    );

    let lan = render_variant(&helm, &Some(ci.join("site-lan-values.yaml")));
    let ds = must(&lan, "DaemonSet", "-edge-node");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], Value::Bool(true));
    assert!(pod["initContainers"].is_null());
    assert!(
        seq(&pod["volumes"])
            .iter()
            .any(|v| v["hostPath"]["path"] == "/opt/firmware")
    );

    // Least privilege: two Secrets, the push credential mounted into the operator only, the pull
    // credential into the agents only; the CA bundle into both.
    let inline = render_variant(&helm, &Some(ci.join("inline-registry-values.yaml")));
    let push = must(&inline, "Secret", "-registry-operator");
    let pull = must(&inline, "Secret", "-registry-nodes");
    assert_eq!(push["type"], Value::from("kubernetes.io/dockerconfigjson"));
    assert_eq!(pull["type"], Value::from("kubernetes.io/dockerconfigjson"));
    let name = |s: &Value| s["metadata"]["name"].as_str().unwrap().to_string();
    let secrets_of = |pod: &Value| -> Vec<String> {
        seq(&pod["volumes"])
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str().map(str::to_string))
            .collect()
    };
    let op_pod = &must(&inline, "Deployment", "-operator")["spec"]["template"]["spec"];
    let ds_pod = &must(&inline, "DaemonSet", "-edge-node")["spec"]["template"]["spec"];
    assert!(secrets_of(op_pod).contains(&name(push)));
    assert!(!secrets_of(op_pod).contains(&name(pull)));
    assert!(secrets_of(ds_pod).contains(&name(pull)));
    assert!(
        !secrets_of(ds_pod).contains(&name(push)),
        "the push credential never reaches a device"
    );
    for pod in [op_pod, ds_pod] {
        let args = args_of(&pod["containers"][0]);
        assert!(args.contains(&"--docker-config=/etc/pollen/registry/config.json".to_string()));
        assert!(args.contains(&"--registry-ca=/etc/pollen/registry-ca/ca.crt".to_string()));
    }
    let ca = must(&inline, "ConfigMap", "-registry-ca");
    assert!(
        ca["data"]["ca.crt"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    let private = render_variant(&helm, &Some(ci.join("private-registry-values.yaml")));
    let ds = must(&private, "DaemonSet", "-edge-node");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        Value::from("registry.example.internal:5000/pollen/pollen-edge-node:0.1.0")
    );
    assert!(args_of(c).contains(&"--insecure-registry=registry.example.internal:5000".to_string()));
    assert!(args_of(c).contains(&"--registry-ca=/etc/pollen/registry-ca/ca.crt".to_string()));
}

#[test]
fn schema_and_guards_reject_bad_values_with_a_clear_message() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "operator.replicas=-1"], "operator.replicas"),
        (&["--set", "operator.replicas=0"], "operator.replicas"),
        (&["--set", "log.format=xml"], "log.format"),
        (&["--set", "image.tag=latest"], "image.tag"),
        (&["--set", "edgeNode.quicPort=70000"], "edgeNode.quicPort"),
        (&["--set", "edgeNode.dataDir=relative/path"], "edgeNode.dataDir"),
        (
            &["--set", "edgeNode.storeBudgetBytes=-1"],
            "edgeNode.storeBudgetBytes",
        ),
        (
            &["--set-string", "edgeNode.storeBudgetBytes=2GiB"],
            "edgeNode.storeBudgetBytes",
        ),
        (
            &["--set", "operator.certificateLifetime=1day"],
            "operator.certificateLifetime",
        ),
        (
            &["--set", "operator.leaderElection.leaseDurationSeconds=1"],
            "operator.leaderElection.leaseDurationSeconds",
        ),
        (
            &["--set", "edgeNode.volumePermissions.image=busybox"],
            "edgeNode.volumePermissions.image",
        ),
        (
            &["--set", "edgeNode.volumePermissions.image=busybox:latest"],
            "edgeNode.volumePermissions.image",
        ),
        (&["--set", "edgeNode.resources.limits=null"], "limits"),
        (&["--set", "replicaCount=3"], "replicaCount"),
        (&["--set", "director.existingSecret="], "director.existingSecret"),
        (
            &[
                "--set",
                "fleetCA.existingSecret=a",
                "--set",
                "fleetCA.certManager.enabled=true",
            ],
            "either existingSecret or certManager",
        ),
        (&["--set", "fleetCA.existingSecret=a"], "fleetCA.caBundle"),
        (
            &[
                "--set",
                "registry.nodes.existingSecret=a",
                "--set-string",
                "registry.nodes.dockerConfigJson=not-empty",
            ],
            "either existingSecret or dockerConfigJson",
        ),
        (
            &[
                "--set",
                "registry.operator.existingSecret=push",
                "--set",
                "registry.nodes.existingSecret=push",
            ],
            "must not share the operator's Secret",
        ),
        (&["--set", "registry.insecure={*}"], "registry.insecure"),
    ];
    for (args, expect) in cases {
        match helm_template(&helm, args) {
            Ok(_) => panic!("helm template {args:?} rendered; it must be refused"),
            Err(stderr) => assert!(
                stderr.contains(expect),
                "helm template {args:?}: message lacks {expect:?}:\n{stderr}"
            ),
        }
    }
    // The same values, well-formed, render: the refusals above are about the bad value alone.
    helm_template(
        &helm,
        &["--set", "operator.replicas=3", "--set", "log.format=json"],
    )
    .expect("good values render");
}

#[test]
fn plain_manifests_and_chart_copies_match_their_sources() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg(root().join("deploy/render.sh"))
        .env("RENDER_OUT", dir.path())
        .env("HELM", &helm)
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "render.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = std::fs::read_to_string(dir.path().join("pollen.yaml")).unwrap();
    let checked_in = std::fs::read_to_string(root().join("deploy/manifests/pollen.yaml")).unwrap();
    assert!(
        fresh == checked_in,
        "deploy/manifests/pollen.yaml is stale: run deploy/render.sh"
    );
    for (src, copy) in [
        (
            "deploy/grafana/pollen-fleet.json",
            "charts/pollen/files/pollen-fleet.json",
        ),
        (
            "deploy/prometheus/pollen-alerts.yaml",
            "charts/pollen/files/pollen-alerts.yaml",
        ),
    ] {
        let a = std::fs::read(root().join(src)).unwrap();
        let b = std::fs::read(root().join(copy)).unwrap();
        assert!(a == b, "{copy} differs from {src}: run deploy/render.sh");
    }
    // The plain manifests render nothing random and no helm test Pod.
    let docs = documents(&checked_in);
    assert!(find(&docs, "Pod", "").is_none());
    assert!(
        find(&docs, "Secret", "").is_none(),
        "plain manifests must not embed a generated CA"
    );
    let dash = must(&docs, "ConfigMap", "-dashboard");
    let json = dash["data"]["pollen-fleet.json"].as_str().unwrap();
    let shipped: serde_json::Value = serde_json::from_str(json).expect("dashboard in the ConfigMap is JSON");
    let source: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("deploy/grafana/pollen-fleet.json")).unwrap())
            .unwrap();
    assert_eq!(shipped, source);
}

/// What the chart runs, per binary: the subcommand (the arguments before the first flag) and the flag
/// names, from the default rendering plus every variant.
fn chart_command_lines(helm: &Path) -> BTreeMap<&'static str, (Vec<String>, BTreeSet<String>)> {
    let mut out: BTreeMap<&'static str, (Vec<String>, BTreeSet<String>)> = BTreeMap::new();
    for v in variants() {
        let docs = render_variant(helm, &v);
        let mut record = |bin: &'static str, c: &Value| {
            let args = args_of(c);
            let sub: Vec<String> = args
                .iter()
                .take_while(|a| !a.starts_with("--"))
                .cloned()
                .collect();
            let entry = out.entry(bin).or_insert_with(|| (sub.clone(), BTreeSet::new()));
            assert_eq!(entry.0, sub, "{bin}: the subcommand differs between variants");
            entry.1.extend(flag_names(&args));
        };
        if let Some(d) = find(&docs, "Deployment", "-operator") {
            record("pollen-operator", &d["spec"]["template"]["spec"]["containers"][0]);
        }
        if let Some(d) = find(&docs, "DaemonSet", "-edge-node") {
            let c = seq(&d["spec"]["template"]["spec"]["containers"])
                .iter()
                .find(|c| c["name"] == "edge-node")
                .unwrap();
            record("pollen-edge-node", c);
        }
    }
    out
}

/// The chart's flags must exist in the binaries' command lines (built first). A binary without a
/// command line (or without the subcommand) is reported and skipped; once it has one, every flag the
/// chart passes must appear in its `--help`.
#[test]
fn chart_flags_exist_in_the_binaries() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let lines = chart_command_lines(&helm);
    let bins = pollen_e2e::fleet::build_binaries(false).expect("cargo build of the binaries");
    assert!(lines["pollen-operator"].1.contains("--leader-election"));
    assert_eq!(lines["pollen-edge-node"].0, ["agent"]);
    assert!(lines["pollen-edge-node"].1.contains("--node-name"));
    for (bin, (sub, wanted)) in lines {
        let path = bins.join(bin);
        assert!(path.is_file(), "{} missing after the build", path.display());
        let out = Command::new(&path)
            .args(&sub)
            .arg("--help")
            .output()
            .expect("binary runs");
        let help = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !help.contains("Usage") {
            eprintln!(
                "skipped: `{bin} {} --help` shows no command line yet; the chart passes {wanted:?}\n{help}",
                sub.join(" ")
            );
            continue;
        }
        let missing: Vec<&String> = wanted.iter().filter(|f| !help.contains(f.as_str())).collect();
        assert!(
            missing.is_empty(),
            "{bin} {sub:?} lacks flags the chart passes: {missing:?}\n{help}"
        );
    }
}

#[tokio::test]
async fn chart_crds_apply_to_a_real_api_server() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let Some(_) = tools::require_all(["crd-apiserver", "etcd"]) else {
        return;
    };
    let rendered = helm_template(&helm, &["--include-crds"]).expect("renders with CRDs");
    let crds: Vec<String> = documents(&rendered)
        .into_iter()
        .filter(|d| kind(d) == "CustomResourceDefinition")
        .map(|d| serde_yaml::to_string(&d).unwrap())
        .collect();
    assert_eq!(
        crds.len(),
        4,
        "the chart ships UpdateRollout, EdgeNode, TrustPolicy and RevocationList"
    );
    let mut server = pollen_e2e::apiserver::ApiServer::start()
        .await
        .expect("API server starts");
    let applied = server.apply_crds_yaml(&crds.join("---\n")).await;
    server.stop().await;
    let mut names = applied.expect("the chart's CRDs apply and are served");
    names.sort();
    assert_eq!(
        names,
        [
            "edgenodes.pollen.dev",
            "revocationlists.pollen.dev",
            "trustpolicies.pollen.dev",
            "updaterollouts.pollen.dev"
        ]
    );
}

/// Every rendered object of a built-in kind survives a round trip through the Kubernetes API types
/// (k8s-openapi, v1.33): a misspelt or misplaced field would be dropped by the typed parse, so the
/// round trip differs and the test names the path. This stands in for a schema validator (kubeconform
/// is not available from the package registries).
#[test]
fn rendered_objects_match_the_kubernetes_api_types() {
    use k8s_openapi::api::{admissionregistration, apps, core, policy, rbac};
    let Some(helm) = tools::require("helm") else {
        return;
    };

    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
        doc: &serde_json::Value,
    ) -> serde_json::Value {
        let typed: T = serde_json::from_value(doc.clone()).expect("parses as its API type");
        serde_json::to_value(typed).unwrap()
    }

    fn first_difference(path: &str, a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
        use serde_json::Value as J;
        match (a, b) {
            (J::Object(x), J::Object(y)) => {
                for (k, v) in x {
                    match y.get(k) {
                        Some(w) => {
                            if let Some(d) = first_difference(&format!("{path}.{k}"), v, w) {
                                return Some(d);
                            }
                        }
                        None => return Some(format!("{path}.{k} is not a field of the API type")),
                    }
                }
                y.keys()
                    .find(|k| !x.contains_key(*k))
                    .map(|k| format!("{path}.{k} appeared in the round trip"))
            }
            (J::Array(x), J::Array(y)) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (v, w))| first_difference(&format!("{path}[{i}]"), v, w)),
            _ if a == b => None,
            _ => Some(format!("{path}: {a} became {b}")),
        }
    }

    let mut checked = 0;
    for v in variants() {
        for doc in render_variant(&helm, &v) {
            let json = serde_json::to_value(&doc).unwrap();
            let back = match (json["apiVersion"].as_str().unwrap_or(""), kind(&doc)) {
                ("apps/v1", "Deployment") => round_trip::<apps::v1::Deployment>(&json),
                ("apps/v1", "DaemonSet") => round_trip::<apps::v1::DaemonSet>(&json),
                ("v1", "Service") => round_trip::<core::v1::Service>(&json),
                ("v1", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(&json),
                ("v1", "ConfigMap") => round_trip::<core::v1::ConfigMap>(&json),
                ("v1", "Secret") => round_trip::<core::v1::Secret>(&json),
                ("v1", "Pod") => round_trip::<core::v1::Pod>(&json),
                ("policy/v1", "PodDisruptionBudget") => round_trip::<policy::v1::PodDisruptionBudget>(&json),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<rbac::v1::ClusterRole>(&json),
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    round_trip::<rbac::v1::ClusterRoleBinding>(&json)
                }
                ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<rbac::v1::Role>(&json),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<rbac::v1::RoleBinding>(&json),
                ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                    round_trip::<admissionregistration::v1::ValidatingAdmissionPolicy>(&json)
                }
                ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                    round_trip::<admissionregistration::v1::ValidatingAdmissionPolicyBinding>(&json)
                }
                // prometheus-operator and cert-manager kinds: not in k8s-openapi.
                (_, "ServiceMonitor" | "PodMonitor" | "PrometheusRule" | "Issuer" | "Certificate") => {
                    continue;
                }
                (api, k) => panic!(
                    "{}: rendered {api} {k}, which this test does not know",
                    variant_name(&v)
                ),
            };
            if let Some(d) = first_difference(&format!("{}/{}", kind(&doc), name(&doc)), &json, &back) {
                panic!("{}: {d}", variant_name(&v));
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} objects checked");
}

/// Copies `src` into `dst` recursively.
fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// `NOTES.txt` tells the user what to do next. `helm template` does not render notes, and the CRD-only
/// API server cannot take a `helm install --dry-run` (it serves no core kinds), so a scratch copy of the
/// chart renders the notes through `tpl` into a ConfigMap.
#[test]
fn notes_tell_the_user_what_to_do_next() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("pollen");
    copy_dir(&chart_dir(), &chart);
    std::fs::copy(chart.join("templates/NOTES.txt"), chart.join("files/notes.txt")).unwrap();
    std::fs::write(
        chart.join("templates/zz-notes.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n{{ tpl (.Files.Get \"files/notes.txt\") . | indent 4 }}\n",
    )
    .unwrap();
    let notes = |args: &[&str]| -> String {
        let out = Command::new(&helm)
            .args(["template", "pollen"])
            .arg(&chart)
            .args([
                "--namespace",
                "pollen-system",
                "--show-only",
                "templates/zz-notes.yaml",
            ])
            .args(args)
            .output()
            .expect("helm runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: Value = serde_yaml::from_slice(&out.stdout).unwrap();
        doc["data"]["notes"].as_str().unwrap().to_string()
    };
    let default = notes(&[]);
    for want in [
        "kubectl -n pollen-system rollout status deployment/pollen-operator",
        "helm test pollen -n pollen-system",
        "kubectl label node <node> pollen.dev/edge=true",
        "/var/lib/pollen/identity/tls.crt",
        "get secret pollen-director",
        "kubectl pollen status <rollout> --watch",
        "Back it up",
        "metrics.serviceMonitor.enabled",
    ] {
        assert!(default.contains(want), "NOTES lack {want:?}:\n{default}");
    }
    let monitored = notes(&[
        "--values",
        chart_dir().join("ci/monitoring-values.yaml").to_str().unwrap(),
    ]);
    assert!(
        !monitored.contains("metrics.serviceMonitor.enabled"),
        "{monitored}"
    );
    let given_ca = notes(&[
        "--values",
        chart_dir().join("ci/existing-ca-values.yaml").to_str().unwrap(),
    ]);
    assert!(!given_ca.contains("Back it up"), "{given_ca}");
}
