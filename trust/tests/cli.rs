//! The `pollen` command line end to end against a real registry (Debian's `docker-registry`): keygen,
//! publish, index, verify, and the refusals a user sees. Fails in CI (env `CI` set) when the registry is
//! missing, skips elsewhere; `e2e/tools/install-deps.sh` installs it.

use std::path::Path;
use std::process::{Command, Output};

mod support;

use support::{TestRegistry, require};

const PASSWORD: &str = "cli-test-password";

fn pollen(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pollen"))
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", PASSWORD)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("pollen runs")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap().trim().to_string()
}

fn fails(out: &Output, what: &str, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what} should fail; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(needle),
        "{what}: stderr lacks {needle:?}:\n{stderr}"
    );
}

#[test]
fn keygen_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    ok(&pollen(dir.path(), &["keygen", "--output-prefix", "k"]), "keygen");
    let key = std::fs::read_to_string(dir.path().join("k.key")).unwrap();
    assert!(key.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"));
    assert!(
        std::fs::read_to_string(dir.path().join("k.pub"))
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(dir.path().join("k.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    fails(
        &pollen(dir.path(), &["keygen", "--output-prefix", "k"]),
        "second keygen",
        "k.key",
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("k.key")).unwrap(),
        key,
        "existing key untouched"
    );
    ok(
        &pollen(dir.path(), &["keygen", "--output-prefix", "k", "--force"]),
        "keygen --force",
    );
    assert_ne!(std::fs::read_to_string(dir.path().join("k.key")).unwrap(), key);
}

#[test]
fn publish_index_verify_from_the_command_line() {
    let Some(registry) = TestRegistry::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("docker.json"), br#"{"auths":{}}"#).unwrap();
    ok(
        &pollen(d, &["keygen", "--output-prefix", "publisher"]),
        "keygen publisher",
    );
    ok(
        &pollen(d, &["keygen", "--output-prefix", "director"]),
        "keygen director",
    );
    let payload: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(d.join("app.bin"), &payload).unwrap();
    let to = format!("{}/cli/app:v1", registry.host());
    let host = registry.host();
    let reg = ["--insecure-registry", host, "--docker-config", "docker.json"];

    // Plain HTTP only for a host listed with --insecure-registry.
    let out = pollen(
        d,
        &[
            "publish",
            "app.bin",
            "--to",
            &to,
            "--key",
            "publisher.key",
            "--docker-config",
            "docker.json",
        ],
    );
    assert!(
        !out.status.success(),
        "publish over https to a plain-HTTP registry must fail"
    );

    // The tag `v1` is not a semantic version: publish wants the version to sign.
    let mut args = vec!["publish", "app.bin", "--to", &to, "--key", "publisher.key"];
    args.extend(reg);
    fails(
        &pollen(d, &args),
        "publish without a version",
        "no version to claim",
    );
    args.extend(["--version", "1.4.2"]);
    let payload_ref = ok(&pollen(d, &args), "publish");
    assert!(
        payload_ref.starts_with(&format!("{}/cli/app@sha256:", registry.host())),
        "{payload_ref}"
    );

    let index_args = |seq: &'static str| {
        let mut a = vec![
            "index",
            "--payload",
            payload_ref.as_str(),
            "--key",
            "director.key",
            "--rollout",
            "default/cli",
            "--sequence",
            seq,
            "--target-path",
            "cli/app.bin",
            "--publisher-key",
            "publisher.pub",
        ];
        a.extend(reg);
        a
    };
    let index_ref = ok(&pollen(d, &index_args("2")), "index");
    assert!(index_ref.contains("@sha256:"), "{index_ref}");

    let verify = |publisher: &'static str, director: &'static str, extra: &[&'static str]| {
        let mut a = vec![
            "verify",
            "--index",
            index_ref.as_str(),
            "--publisher-key",
            publisher,
            "--director-key",
            director,
        ];
        a.extend(reg);
        a.extend(extra);
        pollen(d, &a)
    };
    let summary = ok(&verify("publisher.pub", "director.pub", &[]), "verify");
    assert!(
        summary.contains("rollout    default/cli (sequence 2)"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("({} bytes)", payload.len())),
        "{summary}"
    );
    assert!(summary.contains("23 x 65536 bytes"), "{summary}");
    assert!(
        summary.contains("version    1.4.2 (signed by the publisher)"),
        "{summary}"
    );

    fails(
        &verify("director.pub", "publisher.pub", &[]),
        "swapped keys",
        "not signed by the director key",
    );
    fails(
        &verify("publisher.pub", "director.pub", &["--last-sequence", "3"]),
        "rollback",
        "rollback refused",
    );
    ok(
        &verify("publisher.pub", "director.pub", &["--last-sequence", "2"]),
        "same sequence",
    );

    // A peer grant for a node the index does not list, checked with the director's public key.
    let grant = ok(
        &pollen(
            d,
            &[
                "grant",
                "--index",
                &index_ref,
                "--node",
                "gw-9",
                "--key",
                "director.key",
            ],
        ),
        "grant",
    );
    let director = pollen_trust::PublicKey::from_file(&d.join("director.pub")).unwrap();
    let digest = pollen_trust::grant::index_digest(&index_ref).unwrap();
    let raw = pollen_trust::grant::decode(grant.trim()).unwrap();
    assert!(pollen_trust::grant::verify(&director, digest, "gw-9", &raw));
    assert!(!pollen_trust::grant::verify(&director, digest, "gw-8", &raw));
    fails(
        &pollen(
            d,
            &["grant", "--index", &to, "--node", "gw-9", "--key", "director.key"],
        ),
        "grant for a tag",
        "not pinned by digest",
    );

    // Indexing refuses a payload the given publisher key did not sign.
    let mut a = index_args("3");
    let pos = a.iter().position(|x| *x == "publisher.pub").unwrap();
    a[pos] = "director.pub";
    fails(
        &pollen(d, &a),
        "index with the wrong publisher key",
        "not signed by any trusted publisher",
    );

    // cosign accepts what the CLI signed with the key the CLI generated.
    if let Some(cosign) = require("cosign") {
        let home = d.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let out = Command::new(cosign)
            .args([
                "verify",
                "--key",
                "publisher.pub",
                "--insecure-ignore-tlog=true",
                "--allow-http-registry",
                &payload_ref,
            ])
            .current_dir(d)
            .env("HOME", &home)
            .env("DOCKER_CONFIG", &home)
            .output()
            .unwrap();
        ok(&out, "cosign verify");
    }
}
