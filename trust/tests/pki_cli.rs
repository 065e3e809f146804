//! `pollen pki init|issue|revoke`, run as the real binary: files, modes, and that what it writes
//! verifies with the library (the same code nodes and the operator use).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use pollen_trust::pki;

fn pollen(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pollen"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run pollen")
}

fn ok(args: &[&str], dir: &Path) -> String {
    let out = pollen(args, dir);
    assert!(
        out.status.success(),
        "pollen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_issue_revoke_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    ok(&["pki", "init"], &dir);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();

    ok(&["pki", "issue", "node-a", "--lifetime", "2h"], &dir);
    assert_eq!(mode(&dir.join("node-a.key")), 0o600);
    let cert = std::fs::read_to_string(dir.join("node-a.crt")).unwrap();
    let facts = pki::cert_facts(&cert).unwrap();
    assert_eq!(facts.name, "node-a");
    let lifetime = facts
        .not_after
        .duration_since(facts.not_before)
        .unwrap()
        .as_secs();
    // Two hours plus the backdated clock-skew allowance.
    assert_eq!(lifetime, 2 * 3600 + pki::CLOCK_SKEW.as_secs());

    // Revoke by file and by serial; the list verifies against the CA and names both.
    ok(&["pki", "issue", "node-b"], &dir);
    let b = pki::cert_facts(&std::fs::read_to_string(dir.join("node-b.crt")).unwrap()).unwrap();
    let a_path = dir.join("node-a.crt");
    ok(
        &[
            "pki",
            "revoke",
            a_path.to_str().unwrap(),
            &b.serial,
            "--number",
            "5",
        ],
        &dir,
    );
    let crl = std::fs::read(dir.join("revoked.crl")).unwrap();
    let set = pki::verify_revocation_list(&crl, &ca_pem).unwrap();
    assert_eq!(set.number, 5);
    assert!(set.is_revoked(&facts.serial) && set.is_revoked(&b.serial));
    assert_eq!(set.serials.len(), 2);
}

#[test]
fn refuses_overwrites_bad_names_and_bad_serials() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    ok(&["pki", "init"], &dir);
    let ca_before = std::fs::read(dir.join("ca.key")).unwrap();
    let again = pollen(&["pki", "init"], &dir);
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read(dir.join("ca.key")).unwrap(),
        ca_before,
        "the CA key was overwritten"
    );

    let bad = pollen(&["pki", "issue", "Not_A_Name"], &dir);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid node name"));

    let bad = pollen(&["pki", "revoke", "XYZ", "--number", "1"], &dir);
    assert!(!bad.status.success());
    assert!(!dir.join("revoked.crl").exists());

    // --force replaces a world-readable key with a 0600 one, and a link instead of its target.
    let key = dir.join("n1.key");
    std::fs::write(&key, "old").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let target = tmp.path().join("elsewhere");
    std::fs::write(&target, "keep").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("n1.crt")).unwrap();
    ok(&["pki", "issue", "n1", "--force"], &dir);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    assert!(
        !std::fs::symlink_metadata(dir.join("n1.crt"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    let huge = pollen(&["pki", "issue", "n2", "--lifetime", "999999999d"], &dir);
    assert!(!huge.status.success());
    assert!(String::from_utf8_lossy(&huge.stderr).contains("100 years"));

    let missing = pollen(&["pki", "issue", "n"], &tmp.path().join("nowhere"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("ca.crt"));
}
