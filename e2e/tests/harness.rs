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
