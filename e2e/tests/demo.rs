//! The README's first command stays true: `pollen-demo` (what `make demo` runs) brings up a local
//! fleet, rolls out a signed firmware with a canary wave, and ends with every node's file checked.
//! Small sizes and `--exit`, so it fits the test suite.

use std::process::Command;

use pollen_e2e::tools;

#[test]
fn the_demo_rolls_out_to_every_node_and_checks_the_bytes() {
    if tools::require_all(["docker-registry", "crd-apiserver", "etcd"]).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pollen-demo"))
        .args(["--exit", "--nodes", "3", "--payload-mib", "2", "--dir"])
        .arg(dir.path().join("demo"))
        .output()
        .expect("run pollen-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pollen-demo failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("installed & checked 3/3 nodes"), "{stdout}");
    assert!(stdout.contains("demo-firmware: Complete, 3/3"), "{stdout}");
}
