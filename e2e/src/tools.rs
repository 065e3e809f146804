//! Locating the outside tools that real-part tests need (cosign, oras, helm, docker-registry, etcd, …).
//!
//! Tools come from `.tools/bin` at the workspace root (filled by `e2e/tools/install-deps.sh` and
//! `e2e/tools/build-apiserver.sh`) and then from `PATH`. When a tool is missing, a test either fails
//! (in CI, where env `CI` is set) or reports itself skipped with the reason (on a developer machine).
//!
//! Non-goals: installing anything. The scripts in `e2e/tools/` do that.

use std::path::{Path, PathBuf};

/// The script that installs the tools the tests use, relative to the workspace root.
pub const INSTALL_SCRIPT: &str = "e2e/tools/install-deps.sh";

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The folder holding installed tools: `<workspace>/.tools/bin`.
pub fn tools_bin_dir() -> PathBuf {
    workspace_root().join(".tools").join("bin")
}

/// True when running under CI (env `CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
        .unwrap_or(false)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds tool `name`: `.tools/bin/NAME` first, then each directory of `PATH`. No side effects.
pub fn find(name: &str) -> Option<PathBuf> {
    let local = tools_bin_dir().join(name);
    if is_executable(&local) {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// What a test does when a needed part is absent: panic in CI, else print a skip line.
fn missing(what: &str, reason: &str) {
    missing_with(in_ci(), what, reason)
}

fn missing_with(ci: bool, what: &str, reason: &str) {
    if ci {
        panic!("{what}: {reason} — CI must provide it (run {INSTALL_SCRIPT} as root before the tests)");
    }
    eprintln!("skipped: {what} {reason} (run {INSTALL_SCRIPT})");
}

/// Finds tool `name` for a test.
///
/// Missing tool: panics when env `CI` is set (a CI run must not silently skip), otherwise prints
/// `skipped: NAME not installed (run e2e/tools/install-deps.sh)` to stderr and returns `None`, so the
/// test can `return` early:
///
/// ```no_run
/// let Some(oras) = pollen_e2e::tools::require("oras") else { return };
/// ```
pub fn require(name: &str) -> Option<PathBuf> {
    match find(name) {
        Some(p) => Some(p),
        None => {
            missing(name, "not installed");
            None
        }
    }
}

/// Finds every tool in `names`; `None` (after the skip/panic of [`require`]) if any is missing.
pub fn require_all<const N: usize>(names: [&str; N]) -> Option<[PathBuf; N]> {
    let mut out: [PathBuf; N] = std::array::from_fn(|_| PathBuf::new());
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = require(name)?;
    }
    Some(out)
}

/// The folder holding cel-python (installed with `pip --target` by the install script), for tests that
/// evaluate the chart's admission-policy CEL: `Some(dir)` when `celpy` imports from it; otherwise the
/// skip/panic of [`require`].
pub fn require_cel_python() -> Option<PathBuf> {
    let dir = workspace_root().join(".tools/cel");
    let ok = std::process::Command::new("python3")
        .args(["-c", "import celpy, yaml"])
        .env("PYTHONPATH", &dir)
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(dir)
    } else {
        missing("cel-python", "not installed in .tools/cel");
        None
    }
}

/// The effective user id of this process, read from `/proc/self/status`.
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved fs
    line.split_whitespace().nth(2)?.parse().ok()
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// For tests that need root (network namespaces, tc, iptables).
///
/// Not root: panics when env `CI` is set, otherwise prints `skipped: needs root` and returns false.
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    if in_ci() {
        panic!("this test needs root and CI must run it as root");
    }
    eprintln!("skipped: needs root (run the tests as root)");
    false
}

/// The edge agent's ServiceAccount in the chart's default render (release `pollen`, namespace
/// `pollen-system`): the user the agent admission policy matches.
pub const CHART_AGENT_USER: &str = "system:serviceaccount:pollen-system:pollen-edge-node";

/// `helm template` of the chart's agent admission policy (the ValidatingAdmissionPolicy and its
/// binding) with the default values, for an API server to enforce.
pub fn agent_admission_policy(helm: &Path) -> String {
    let out = std::process::Command::new(helm)
        .args(["template", "pollen"])
        .arg(workspace_root().join("charts/pollen"))
        .args(["--namespace", "pollen-system"])
        .args(["-s", "templates/agent-admission-policy.yaml"])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    assert!(
        yaml.contains("kind: ValidatingAdmissionPolicyBinding") && yaml.contains(CHART_AGENT_USER),
        "the default render has the policy and its binding for {CHART_AGENT_USER}:\n{yaml}"
    );
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_tool_on_path() {
        // `sh` exists on every system this project targets.
        let sh = find("sh").expect("sh on PATH");
        assert!(sh.ends_with("sh"));
        assert!(is_executable(&sh));
    }

    #[test]
    fn unknown_tool_is_not_found() {
        assert_eq!(find("pollen-no-such-tool-3f9a"), None);
    }

    #[test]
    fn workspace_root_holds_the_install_script() {
        assert!(workspace_root().join(INSTALL_SCRIPT).is_file());
    }

    #[test]
    #[should_panic(expected = "CI must provide it")]
    fn missing_part_fails_in_ci() {
        missing_with(true, "oras", "not installed");
    }

    #[test]
    fn missing_part_skips_outside_ci() {
        missing_with(false, "oras", "not installed");
    }

    #[test]
    fn effective_uid_is_read() {
        assert!(effective_uid().is_some());
    }
}
