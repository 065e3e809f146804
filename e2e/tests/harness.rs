//! Tests of the real-part harnesses: the registry, oras, cosign, helm (and the API server).
//!
//! Each test needs outside tools. Without them it fails in CI (env `CI` set) and reports itself
//! skipped elsewhere; `e2e/tools/install-deps.sh` installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use pollen_e2e::registry::Registry;
use pollen_e2e::tools;

/// Runs `cmd` in `dir`, failing the test with its output when it does not succeed.
fn run_ok(mut cmd: Command, dir: &Path) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An oras command that keeps its credentials store inside `dir`.
fn oras(bin: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args).env("DOCKER_CONFIG", dir).env("HOME", dir);
    c
}

fn pull_file(oras_bin: &Path, dir: &Path, reference: &str, name: &str) -> Vec<u8> {
    let out_dir: PathBuf = dir.join(format!("pulled-{}", rand_suffix()));
    std::fs::create_dir_all(&out_dir).unwrap();
    run_ok(
        oras(
            oras_bin,
            dir,
            &["pull", "--plain-http", "-o", out_dir.to_str().unwrap(), reference],
        ),
        dir,
    );
    std::fs::read(out_dir.join(name)).expect("pulled file present")
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn registry_serves_oras_push_and_pull_and_survives_restart() {
    let Some([_, oras_bin]) = tools::require_all(["docker-registry", "oras"]) else {
        return;
    };
    let t0 = Instant::now();
    let mut reg = Registry::start().await.expect("registry starts");
    eprintln!("registry ready on {} after {:?}", reg.host(), t0.elapsed());
    assert_eq!(reg.v2_status().await.expect("/v2/ answers"), 200);
    assert_eq!(reg.url(), format!("http://{}", reg.host()));
    assert!(reg.host().starts_with("127.0.0.1:"));

    // A payload that is not all one byte value, so a truncation or reordering shows.
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..100_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("payload.bin"), &payload).unwrap();
    let reference = format!("{}/pollen/harness:v1", reg.host());
    run_ok(
        oras(
            &oras_bin,
            dir.path(),
            &[
                "push",
                "--plain-http",
                &reference,
                "payload.bin:application/octet-stream",
            ],
        ),
        dir.path(),
    );
    assert_eq!(
        pull_file(&oras_bin, dir.path(), &reference, "payload.bin"),
        payload
    );

    // Origin down: /v2/ refuses connections.
    reg.stop().await.expect("registry stops");
    assert!(!reg.is_running());
    let refused = reg.v2_status().await;
    assert!(refused.is_err(), "stopped registry still answers: {refused:?}");

    // Origin back: same address, same content.
    let host_before = reg.host();
    let t1 = Instant::now();
    reg.restart().await.expect("registry restarts");
    eprintln!("registry restarted after {:?}", t1.elapsed());
    assert_eq!(reg.host(), host_before);
    assert_eq!(reg.v2_status().await.unwrap(), 200);
    assert_eq!(
        pull_file(&oras_bin, dir.path(), &reference, "payload.bin"),
        payload
    );
}

#[tokio::test]
async fn registry_start_fails_clearly_with_a_broken_binary() {
    // `false` exits at once: start must report the early exit, not hang until the timeout.
    let Some(f) = tools::require("false") else {
        return;
    };
    let t0 = Instant::now();
    let err = Registry::builder()
        .program(f)
        .start()
        .await
        .expect_err("a registry that exits cannot be ready");
    assert!(err.to_string().contains("exited before it was ready"), "{err}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn two_registries_get_distinct_ports_and_storage() {
    if tools::require("docker-registry").is_none() {
        return;
    }
    let a = Registry::start().await.expect("first registry");
    let b = Registry::start().await.expect("second registry");
    assert_ne!(a.host(), b.host());
    assert_ne!(a.storage_dir(), b.storage_dir());
    let dir = a.storage_dir();
    drop(a);
    assert!(!dir.exists(), "storage removed on drop");
    assert_eq!(b.v2_status().await.unwrap(), 200);
}

#[test]
fn cosign_generates_a_key_pair() {
    let Some(cosign) = tools::require("cosign") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(cosign);
    c.args(["generate-key-pair"])
        .env("COSIGN_PASSWORD", "pollen-test");
    run_ok(c, dir.path());
    let key = std::fs::read_to_string(dir.path().join("cosign.key")).expect("cosign.key");
    let public = std::fs::read_to_string(dir.path().join("cosign.pub")).expect("cosign.pub");
    assert!(
        key.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"),
        "{key}"
    );
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
}

#[test]
fn helm_runs() {
    let Some(helm) = tools::require("helm") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(helm);
    c.args(["version", "--short"]).env("HOME", dir.path());
    let out = run_ok(c, dir.path());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("v3."), "unexpected helm version: {v}");
}

#[test]
fn promtool_runs() {
    let Some(promtool) = tools::require("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n- name: t\n  rules:\n  - alert: Up\n    expr: up == 0\n",
    )
    .unwrap();
    let mut c = Command::new(&promtool);
    c.args(["check", "rules", "rules.yml"]);
    run_ok(c, dir.path());
    // and it rejects a broken expression
    std::fs::write(
        dir.path().join("bad.yml"),
        "groups:\n- name: t\n  rules:\n  - alert: Up\n    expr: up ==\n",
    )
    .unwrap();
    let bad = Command::new(&promtool)
        .args(["check", "rules", "bad.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

mod apiserver {
    use std::time::Instant;

    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, ApiResource, DynamicObject, PostParams};
    use pollen_e2e::apiserver::{ApiServer, KUBECONFIG_ENV, parse_crds, retry_throttled};
    use pollen_e2e::tools;

    const WIDGET_CRD: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.harness.pollen.dev}
spec:
  group: harness.pollen.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties: {size: {type: integer}, color: {type: string}}
          status: {type: object, properties: {phase: {type: string}}}
";

    fn available() -> bool {
        std::env::var_os(KUBECONFIG_ENV).is_some() || tools::require_all(["crd-apiserver", "etcd"]).is_some()
    }

    #[tokio::test]
    async fn api_server_serves_a_crd_and_its_objects() {
        if !available() {
            return;
        }
        let t0 = Instant::now();
        let mut server = ApiServer::from_env().await.expect("API server starts");
        eprintln!(
            "API server ready after {:?} (local: {})",
            t0.elapsed(),
            server.is_local()
        );
        let client = server.client().await.expect("client");

        let crd: CustomResourceDefinition = parse_crds(WIDGET_CRD).unwrap().remove(0);
        let t1 = Instant::now();
        server.apply_crd(&crd).await.expect("CRD applied and served");
        eprintln!("CRD established and served after {:?}", t1.elapsed());
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let got = crds
            .get("widgets.harness.pollen.dev")
            .await
            .expect("CRD readable");
        let established = got
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD not Established");

        let ar = ApiResource {
            group: "harness.pollen.dev".into(),
            version: "v1".into(),
            api_version: "harness.pollen.dev/v1".into(),
            kind: "Widget".into(),
            plural: "widgets".into(),
        };
        let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "team-a", &ar);
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "harness.pollen.dev/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": "team-a"},
            "spec": {"size": 3, "color": "red"},
        }))
        .unwrap();
        let pp = PostParams::default();
        let created = retry_throttled(|| widgets.create(&pp, &obj))
            .await
            .expect("widget created");
        assert!(created.metadata.uid.is_some());
        let back = widgets.get("w1").await.expect("widget readable");
        assert_eq!(back.data["spec"]["size"], 3);
        assert_eq!(back.data["spec"]["color"], "red");

        // schema validation is real: a widget without the required size is refused
        let bad: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "harness.pollen.dev/v1",
            "kind": "Widget",
            "metadata": {"name": "w2", "namespace": "team-a"},
            "spec": {"color": "blue"},
        }))
        .unwrap();
        let err = widgets
            .create(&pp, &bad)
            .await
            .expect_err("invalid widget refused");
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 422), "{err:?}");

        if server.is_local() {
            // the kubeconfig works for kubectl too, when it is installed
            if let Some(kubectl) = tools::find("kubectl") {
                let out = std::process::Command::new(kubectl)
                    .args(["--kubeconfig", server.kubeconfig_path().to_str().unwrap()])
                    .args(["get", "widgets", "-n", "team-a", "-o", "name"])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    "widget.harness.pollen.dev/w1"
                );
            }
            assert!(server.token().is_some());
            server.stop().await;
            assert!(server.client().await.unwrap().apiserver_version().await.is_err());
        } else {
            widgets.delete("w1", &Default::default()).await.expect("cleanup");
        }
    }
}

/// Deletes the network namespace it names on drop (also when the test panics).
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

#[tokio::test]
async fn registry_runs_inside_a_network_namespace_through_the_command_prefix() {
    if !tools::require_root() {
        return;
    }
    let Some([_, ip, _]) = tools::require_all(["docker-registry", "ip", "curl"]) else {
        return;
    };
    let ns = format!("pollen-reg-{}", std::process::id());
    let st = Command::new(&ip).args(["netns", "add", &ns]).status().unwrap();
    assert!(st.success(), "ip netns add {ns}");
    let _guard = NetnsGuard(ns.clone());
    let st = Command::new(&ip)
        .args(["-n", &ns, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success());

    let mut reg = Registry::builder()
        .command_prefix(["ip", "netns", "exec", ns.as_str()])
        .port(5000)
        .start()
        .await
        .expect("registry starts inside the namespace");
    assert_eq!(reg.host(), "127.0.0.1:5000");
    // Inside the namespace it answers; the host's loopback is a different one.
    let inside = Command::new(&ip)
        .args([
            "netns",
            "exec",
            &ns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("{}/v2/", reg.url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&inside.stdout), "200");
    reg.stop().await.unwrap();
    assert!(!reg.is_running());
}
